"""Deployment: ONNX export, int8 quantization behind an accuracy gate, and the runtime that loads the result."""
