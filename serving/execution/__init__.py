"""Execution: the repository reader, the dynamic batcher and the backends (embedded ONNX Runtime, Triton)."""
