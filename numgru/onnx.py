"""``ng.onnx``: export to and import from ONNX (see :mod:`numgru.interop.onnx`)."""
from .interop.onnx import OnnxGRUGraph, export, load

__all__ = ["export", "load", "OnnxGRUGraph"]
