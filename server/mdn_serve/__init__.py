"""mdn-serve: serve Mixture Density Networks exported to ONNX (no torch needed)."""

__version__ = "0.1.0"
