"""mdn-serve's trainer: data, MDN fitting, evaluation, plots and ONNX export (needs the `train` extra)."""
