"""Boundary checks shared by the public entry points.

Every message names the argument, what was expected and what was given (STYLE §14).
"""
from __future__ import annotations

import numbers
import os

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_int(name, value, *, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_path(name, path):
    """``path`` (str, bytes or os.PathLike) as a str, or a TypeError naming the argument."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{name}: expected a str or os.PathLike, got {type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def check_writable_path(name, path):
    """``path`` as a str where a file can be written: not a folder, in a folder that exists."""
    path = check_path(name, path)
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a directory; give a file name")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"{name}: no such directory {folder!r}")
    return path


def check_float(name, value, *, low=None, high=None, low_open=False, high_open=False,
                allow_none=False, allow_inf=False):
    """``value`` as a float, or a TypeError/ValueError naming ``name``: a real number (not a bool),
    finite (``allow_inf``: or +inf), within the bounds given; None passes with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value) and not (allow_inf and value == float("inf")):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name}: expected a value {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name}: expected a value {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_dtype(name, dtype):
    """float32 or float64 as a NumPy dtype, from anything ``np.dtype`` takes or a torch dtype.
    None is the default, float32 (as torch's ``dtype=None``; ``np.dtype(None)`` would be float64)."""
    if dtype is None:
        return FLOAT_DTYPES[0]
    if type(dtype).__module__ == "torch" and str(dtype).startswith("torch."):
        dtype = str(dtype)[len("torch."):]  # torch.float32 -> "float32", without importing torch
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def untorch(value):
    """A torch tensor's data as NumPy (without importing torch); anything else unchanged. A float
    dtype NumPy lacks (bfloat16, the float8 types) is widened to float32, as ``tensor.float()``."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:
            if getattr(t, "is_floating_point", lambda: False)():
                return t.float().numpy()
            raise
    return value


def as_real_array(name, value, dtype=None):
    """np.asarray(value) with a real numeric dtype (ints and floats; no bool, complex, object, str)."""
    value = untorch(value)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a real numeric array (int or float), got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def as_lengths(value, B, T):
    """Validate lengths: int array of shape (B,), each in [0, T]. Returns a C-contiguous int64 copy."""
    arr = np.asarray(untorch(value))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != B:
        raise ValueError(f"lengths: expected shape ({B},) (one length per batch row), got {arr.shape}")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths: expected values in [0, {T}] (T = {T}), got min {arr.min()}, "
                         f"max {arr.max()}")
    return np.array(arr, dtype=np.int64, order="C", copy=True)  # owned and writeable: one kernel signature
