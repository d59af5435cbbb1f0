"""Device support: ONNX Runtime sessions per device."""
