"""``ng.save`` / ``ng.load``: safetensors files with the configuration as JSON metadata. No pickle.

File layout: a standard safetensors file whose tensors are the object's parameters (PyTorch names;
estimators prefix them with ``gru.`` and ``head.``) and whose ``__metadata__`` holds

    format          "numgru"
    format_version  "1"
    kind            "GRU" | "GRUCell" | "Linear" | "GRUClassifier" | "GRURegressor"
    config          JSON: the constructor arguments (and, for estimators, the fitted state)

Loading reads the 8-byte header length and the JSON header itself, checks both, and hands the tensor
bytes to safetensors; nothing in the file is ever executed.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .._validation import check_path, check_writable_path

FORMAT = "numgru"
FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024

__all__ = ["save", "load", "to_bytes", "from_bytes"]


def _kinds():
    from ..layers import GRU, GRUCell, Linear
    kinds = {"GRU": GRU, "GRUCell": GRUCell, "Linear": Linear}
    try:
        from ..training.estimators import GRUClassifier, GRURegressor
        kinds.update(GRUClassifier=GRUClassifier, GRURegressor=GRURegressor)
    except ImportError:  # scikit-learn missing: estimators cannot exist anyway
        pass
    return kinds


def _encode(obj):
    kinds = _kinds()
    kind = next((k for k, cls in kinds.items() if type(obj) is cls), None)
    if kind is None:
        raise TypeError(f"obj: expected one of {sorted(kinds)}, got {type(obj).__name__}")
    if hasattr(obj, "_to_safetensors"):
        config, tensors = obj._to_safetensors()
    else:
        config, tensors = obj.get_config(), obj.state_dict()
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
            "config": json.dumps(config)}
    return tensors, meta


def to_bytes(obj):
    """The safetensors bytes of ``obj`` (what :func:`save` writes)."""
    from safetensors.numpy import save as st_save
    tensors, meta = _encode(obj)
    return st_save(tensors, metadata=meta)


def save(obj, path):
    """Write a GRU, GRUCell, Linear or fitted estimator to ``path`` (safetensors). Returns the path."""
    path = check_writable_path("path", path)
    data = to_bytes(obj)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _header(data, what):
    if len(data) < 8:
        raise ValueError(f"{what}: not a numgru safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ValueError(f"{what}: not a numgru safetensors file (header of {n} bytes in a file of "
                         f"{len(data)}: truncated or another format)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what}: not a numgru safetensors file (its header is not JSON)") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{what}: not a numgru safetensors file (header is not a JSON object)")
    return header


def from_bytes(data, what="data"):
    """Rebuild the object stored in safetensors bytes ``data``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    header = _header(data, what)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{what}: a safetensors file, but not written by numgru (format "
                         f"{meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{what}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this numgru reads {FORMAT_VERSION!r})")
    kinds = _kinds()
    kind = meta.get("kind")
    if kind not in kinds:
        raise ValueError(f"{what}: unknown kind {kind!r} (expected one of {sorted(kinds)}; "
                         "estimators need scikit-learn)")
    try:
        config = json.loads(meta.get("config", ""))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: its config metadata is not valid JSON") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{what}: its config metadata is not a JSON object")
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, struct.error) as exc:
        raise ValueError(f"{what}: corrupted safetensors data ({exc})") from exc
    cls = kinds[kind]
    _check_counts(cls, config, tensors, what)
    try:
        if hasattr(cls, "_from_safetensors"):
            return cls._from_safetensors(config, tensors)
        obj = cls(**config)
        obj.load_state_dict(tensors)
        return obj
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{what}: the stored {kind} does not match its config: {exc!s}") from exc


def _check_counts(cls, config, tensors, what):
    """Refuse a config that describes more (or fewer) parameter values than the file's tensors hold,
    before anything is built from it: a few bytes of JSON could otherwise ask for gigabytes."""
    from ..layers import GRU, Linear
    if hasattr(cls, "_from_safetensors"):  # an estimator: a GRU and a Linear head, by prefix
        fitted = config.get("fitted")
        parts = ([("gru.", GRU, fitted.get("gru")), ("head.", Linear, fitted.get("head"))]
                 if isinstance(fitted, dict) else [])
    else:
        parts = [("", cls, config)]
    for prefix, part, cfg in parts:
        if not isinstance(cfg, dict):
            continue  # the constructor's own checks name what is wrong
        expected = part._config_count(cfg)
        held = sum(int(t.size) for k, t in tensors.items() if k.startswith(prefix))
        if expected is not None and expected != held:
            raise ValueError(f"{what}: the stored {part.__name__} does not match its config: the "
                             f"config describes {expected} parameter values, the tensors"
                             f"{' ' + prefix + '*' if prefix else ''} hold {held}")


def load(path):
    """Read an object written by :func:`save`. Never unpickles; bad files raise ValueError."""
    path = check_path("path", path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    return from_bytes(data, what=f"path {path!r}")
