"""numgru: fast CPU gated recurrent units in Numba.

Public API (DESIGN §3): layers ``GRU``, ``GRUCell``, ``Linear``; ``losses`` and ``optim``; estimators
``GRUClassifier`` / ``GRURegressor`` (need scikit-learn); ``save`` / ``load`` (safetensors);
``onnx.export`` / ``onnx.load``; ``BatchingEngine`` and ``GRU.stream``; ``dask.predict``;
``set_float32_matmul_precision`` / ``get_float32_matmul_precision`` (as PyTorch's).
Optional dependencies are imported inside the functions that need them.
"""
from . import onnx
from .interop.persistence import load, save
from .kernels.dispatch import get_float32_matmul_precision, set_float32_matmul_precision
from .layers import GRU, GRUCell, Linear
from .serving import BatchingEngine, GRUStream
from .training import losses, optim

__version__ = "0.1.0"
__all__ = ["GRU", "GRUCell", "Linear", "losses", "optim", "GRUClassifier", "GRURegressor", "save",
           "load", "onnx", "BatchingEngine", "GRUStream", "dask", "set_float32_matmul_precision",
           "get_float32_matmul_precision", "__version__"]

_LAZY = {"GRUClassifier": ("numgru.training.estimators", "GRUClassifier"),
         "GRURegressor": ("numgru.training.estimators", "GRURegressor")}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name == "dask":
        import importlib
        return importlib.import_module("numgru.dask")
    raise AttributeError(f"module 'numgru' has no attribute {name!r}")
