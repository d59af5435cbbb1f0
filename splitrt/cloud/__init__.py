"""The cloud tail service: a ZeroMQ ROUTER gateway in front of ONNX Runtime tails."""
