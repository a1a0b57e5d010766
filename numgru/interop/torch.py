"""PyTorch interop. torch is imported inside the functions, never at ``import numgru``."""
from __future__ import annotations

import numpy as np


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("PyTorch interop needs torch: pip install 'numgru[torch]'") from exc
    return torch


def _np_dtype(module, dtype):
    if dtype is not None:
        return dtype
    for p in module.parameters():
        return np.float64 if str(p.dtype) == "torch.float64" else np.float32
    return np.float32


def _numpy_state(module, names):
    """The module's parameters ``names`` as NumPy arrays, read as its forward reads them (by
    attribute: a parametrized weight, e.g. weight_norm's, is computed; its state_dict holds only
    the parametrization's pieces)."""
    import torch
    out = {}
    for k in names:
        with torch.no_grad():
            v = getattr(module, k, None)
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"module: has no tensor {k!r} (got {type(v).__name__})")
        v = v.detach().cpu()
        if v.dtype not in (torch.float32, torch.float64):  # float16 / bfloat16 have no NumPy twin
            v = v.float()
        out[k] = v.numpy()
    return out


def gru_from_torch(cls, module, dtype=None):
    torch = _torch()
    if not isinstance(module, torch.nn.GRU):
        raise TypeError(f"module: expected a torch.nn.GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError("module: GRU with proj_size is not supported")
    gru = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
              batch_first=module.batch_first, dropout=float(module.dropout),
              bidirectional=module.bidirectional, dtype=_np_dtype(module, dtype))
    gru.load_state_dict(_numpy_state(module, [n for n, _ in gru.named_parameters()]))
    return gru


def cell_from_torch(cls, cell, dtype=None):
    torch = _torch()
    if not isinstance(cell, torch.nn.GRUCell):
        raise TypeError(f"cell: expected a torch.nn.GRUCell, got {type(cell).__name__}")
    out = cls(cell.input_size, cell.hidden_size, bias=cell.bias, dtype=_np_dtype(cell, dtype))
    out.load_state_dict(_numpy_state(cell, [n for n, _ in out.named_parameters()]))
    return out


def _check_torch_compatible(model):
    if not model.reset_after:
        raise ValueError("to_torch: torch.nn.GRU computes reset_after=True only; this model has "
                         "reset_after=False")
    if model.gate_activation != "sigmoid":
        raise ValueError(f"to_torch: torch.nn.GRU uses sigmoid gates; this model has "
                         f"gate_activation={model.gate_activation!r}")
    if getattr(model, "go_backwards", False):
        raise ValueError("to_torch: torch.nn.GRU has no reverse-only direction; this model has "
                         "go_backwards=True")
    if model.clip is not None:
        raise ValueError("to_torch: torch.nn.GRU has no clip; this model has clip="
                         f"{model.clip}")


def gru_to_torch(model):
    torch = _torch()
    _check_torch_compatible(model)
    tdtype = torch.float64 if model.dtype == np.float64 else torch.float32
    m = torch.nn.GRU(model.input_size, model.hidden_size, model.num_layers, bias=model.bias,
                     batch_first=model.batch_first, dropout=model.dropout,
                     bidirectional=model.bidirectional, dtype=tdtype)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return m


def cell_to_torch(cell):
    torch = _torch()
    _check_torch_compatible(cell._gru)
    tdtype = torch.float64 if cell.dtype == np.float64 else torch.float32
    m = torch.nn.GRUCell(cell.input_size, cell.hidden_size, bias=cell.bias, dtype=tdtype)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in cell.state_dict().items()})
    return m


def load_torch_state_dict(path):
    """Read a ``torch.save``-d state_dict with ``weights_only=True`` (no arbitrary code runs)."""
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"path: {path!s} is not a weights-only torch file ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ValueError(f"path: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise ValueError(f"path: entry {k!r} is not a tensor ({type(v).__name__})")
        out[str(k)] = v.detach().cpu().numpy()
    return out
