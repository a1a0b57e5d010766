"""``numgru convert SRC DST``: ONNX, torch state_dict or Keras files → numgru safetensors."""
from __future__ import annotations

import json
import os
import re

import numpy as np

from .._validation import check_path
from ..layers import GRU, GRUCell
from .persistence import save

_GRU_KEY = re.compile(r"^(.*?)(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")
_CELL_KEY = re.compile(r"^(.*?)(weight|bias)_(ih|hh)$")


def _detect(path, fmt):
    if fmt:
        if fmt not in ("onnx", "torch", "keras", "h5"):
            raise ValueError(f"--format: expected onnx, torch, keras or h5, got {fmt!r}")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    table = {".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".keras": "keras",
             ".h5": "h5", ".hdf5": "h5"}
    if ext not in table:
        raise ValueError(f"src: cannot tell the format of {path!r} from its extension; use --format")
    return table[ext]


def _checked_sizes(W_ih, W_hh, suffix):
    """(H, I) read from the first layer's weights, checked before a model of that size is built:
    W_hh (3H, H), W_ih (3H, I), H and I at least 1 (an empty array could name any size)."""
    if W_hh.ndim != 2 or W_hh.shape[1] < 1 or W_hh.shape[0] != 3 * W_hh.shape[1]:
        raise ValueError(f"state_dict['weight_hh{suffix}']: expected shape (3*H, H), got {W_hh.shape}")
    H = W_hh.shape[1]
    if W_ih.ndim != 2 or W_ih.shape[0] != 3 * H or W_ih.shape[1] < 1:
        raise ValueError(f"state_dict['weight_ih{suffix}']: expected shape ({3 * H}, input_size), got "
                         f"{W_ih.shape}")
    return H, W_ih.shape[1]


def model_from_state_dict(sd):
    """A GRU or GRUCell from a torch-style state_dict (keys may share a module prefix)."""
    prefixes = {m.group(1) for k in sd for m in [_GRU_KEY.match(k)] if m}
    if prefixes:
        if len(prefixes) > 1:
            raise ValueError(f"state_dict: several GRU modules found (prefixes {sorted(prefixes)}); "
                             "save the one to convert on its own")
        p = prefixes.pop()
        own = {k[len(p):]: np.asarray(v) for k, v in sd.items() if k.startswith(p) and _GRU_KEY.match(k)}
        layers = sorted({int(_GRU_KEY.match(k).group(4)) for k in own})
        if layers != list(range(len(layers))):
            raise ValueError(f"state_dict: GRU layers {layers} are not 0..L-1")
        W0 = own.get("weight_ih_l0")
        if W0 is None or "weight_hh_l0" not in own:
            raise ValueError("state_dict: weight_ih_l0 / weight_hh_l0 missing")
        H, I = _checked_sizes(own["weight_ih_l0"], own["weight_hh_l0"], "_l0")
        bidir = any(k.endswith("_reverse") for k in own)
        dtype = np.float64 if W0.dtype == np.float64 else np.float32
        gru = GRU(I, H, len(layers), bias="bias_ih_l0" in own, bidirectional=bidir, dtype=dtype)
        gru.load_state_dict(own)
        return gru
    cell_prefixes = {m.group(1) for k in sd for m in [_CELL_KEY.match(k)] if m}
    if len(cell_prefixes) == 1:
        p = cell_prefixes.pop()
        own = {k[len(p):]: np.asarray(v) for k, v in sd.items() if k.startswith(p) and _CELL_KEY.match(k)}
        if "weight_ih" not in own or "weight_hh" not in own:
            raise ValueError("state_dict: weight_ih / weight_hh missing")
        W = own["weight_ih"]
        H, I = _checked_sizes(W, own["weight_hh"], "")
        cell = GRUCell(I, H, bias="bias_ih" in own,
                       dtype=np.float64 if W.dtype == np.float64 else np.float32)
        cell.load_state_dict(own)
        return cell
    raise ValueError("state_dict: no GRU parameters (weight_ih_l0, weight_hh_l0, ...) found")


def _h5_weights(path):
    """Keras .h5: the GRU layers' weight lists (in file order) and their configs when stored."""
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading .h5 needs h5py: pip install 'numgru[keras]'") from exc
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"src: {path!r} is not an HDF5 file") from exc
    with f:
        configs = {}
        raw = f.attrs.get("model_config")
        if raw is not None:
            cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            for lyr in cfg.get("config", {}).get("layers", []):
                if lyr.get("class_name") == "GRU":
                    configs[lyr["config"]["name"]] = lyr["config"]
        root = f["model_weights"] if "model_weights" in f else f
        found = []

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                keys = {k.split(":")[0]: k for k in obj.keys()}
                if "kernel" in keys and "recurrent_kernel" in keys:
                    ws = [obj[keys["kernel"]][()], obj[keys["recurrent_kernel"]][()]]
                    if "bias" in keys:
                        ws.append(obj[keys["bias"]][()])
                    found.append((name.split("/")[0], ws))
        root.visititems(visit)
    if not found:
        raise ValueError(f"src: no GRU weights (kernel, recurrent_kernel) in {path!r}")
    return found, configs


def _from_h5(path):
    from .keras import gru_from_keras_weights
    found, configs = _h5_weights(path)
    layer_cfgs = [configs.get(name, {}) for name, _ in found]
    c0 = layer_cfgs[0]
    reset_after = bool(c0.get("reset_after", False))  # Keras 2's default
    act = c0.get("recurrent_activation", "hard_sigmoid")  # Keras 2's default
    return gru_from_keras_weights([w for _, w in found], reset_after=reset_after,
                                  recurrent_activation=act, keras_version=2,
                                  go_backwards=bool(c0.get("go_backwards", False)))


def _from_keras(path):
    try:
        import keras
    except ImportError as exc:
        raise ImportError("reading .keras needs keras: pip install 'numgru[keras]'") from exc
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise ValueError(f"src: {path!r} could not be loaded as a .keras model safely "
                         f"({exc.__class__.__name__}: {exc})") from exc
    layers = [lyr for lyr in getattr(model, "layers", [model])
              if type(lyr).__name__ in ("GRU", "Bidirectional")]
    if not layers:
        raise ValueError(f"src: no GRU layer in {path!r}")
    return GRU.from_keras(layers)


def load_any(path, fmt=None):
    """Read a GRU model from ONNX, a torch state_dict (weights_only) or Keras; returns a numgru object."""
    path = check_path("src", path)
    if not os.path.isfile(path):
        raise ValueError(f"src: no such file {path!r}")
    fmt = _detect(path, fmt)
    if fmt == "onnx":
        from .onnx import load
        return load(path).to_gru()
    if fmt == "torch":
        from .torch import load_torch_state_dict
        return model_from_state_dict(load_torch_state_dict(path))
    if fmt == "h5":
        return _from_h5(path)
    return _from_keras(path)


def describe(obj):
    if isinstance(obj, GRU):
        variant = "reset_after=True (PyTorch/cuDNN)" if obj.reset_after else "reset_after=False (Cho 2014)"
        return (f"GRU: {obj.num_layers} layer(s), {'bidirectional' if obj.bidirectional else 'unidirectional'}"
                f"{' (go_backwards)' if obj.go_backwards else ''}, input_size={obj.input_size}, "
                f"hidden_size={obj.hidden_size}, {variant}, gates={obj.gate_activation}"
                f"{'' if obj.gate_activation != 'hard_sigmoid' else f'({obj.alpha}, {obj.beta})'}, "
                f"clip={obj.clip}, bias={obj.bias}, dtype={obj.dtype}, parameters={obj.num_parameters()}")
    return repr(obj)


def convert(src, dst, fmt=None):
    """CLI entry: convert and print what was found. Returns the exit status."""
    try:
        obj = load_any(src, fmt)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"numgru convert: {exc}")
        return 2
    print(f"found  {describe(obj)}")
    try:
        save(obj, dst)
    except (ValueError, TypeError) as exc:
        print(f"numgru convert: dst: {exc}")
        return 2
    print(f"wrote  {dst}")
    return 0
