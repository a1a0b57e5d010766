"""Interop and persistence: PyTorch, Keras, ONNX, safetensors. Sits on top of :mod:`numgru.layers`."""
