"""Exports (safetensors, ONNX, TorchScript, int8) and the model card."""
