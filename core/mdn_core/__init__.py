"""mdn-core: what the trainer and the server share, with numpy and ONNX Runtime only.

- contract: tensor names, the metadata schema (kinematics included) and its parser;
- model: `load_model(path)`, the one way to open an exported file;
- mixture: densities, sampling and mode search on mixture parameters;
- kinematics and ik: planar arms and IK solutions seeded from a mixture.
"""
