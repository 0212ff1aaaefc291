"""The protocol-free serving core: repository, dataplane, batching, the inference pipeline, the event loop."""
