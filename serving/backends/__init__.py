"""Inference backends of the gateway: embedded ONNX Runtime (default) and a remote Triton server."""
