"""Keras interop: ``GRU.from_keras(layer)`` and :func:`gru_from_keras_weights` (no Keras needed).

Supported: ``keras.layers.GRU`` (Keras 3) with reset_after True/False, recurrent_activation "sigmoid"
or "hard_sigmoid" (Keras 3's relu6(x + 3)/6, i.e. slope 1/6), use_bias on/off, go_backwards;
``keras.layers.Bidirectional(GRU)`` with merge_mode "concat"; and a ``keras.Sequential`` (or a list of
layers) whose layers are a stack of such GRU layers (an InputLayer is skipped). Keras 2 weights (e.g.
from an .h5 file read with h5py) go through :func:`gru_from_keras_weights`, where Keras 2's
hard_sigmoid (0.2·x + 0.5) is the preset "hard_sigmoid_keras2".

Semantics: numgru returns the whole output sequence and the final states; a Keras layer with
``return_sequences=False`` returns numgru's last state. For ``go_backwards=True`` Keras returns the
sequence in processing order (reversed); numgru keeps y aligned with x — flip y along time to compare.
"""
from __future__ import annotations

import numpy as np

from . import layout

_GATES_KERAS3 = {"sigmoid": "sigmoid", "hard_sigmoid": "hard_sigmoid_keras3"}
_GATES_KERAS2 = {"sigmoid": "sigmoid", "hard_sigmoid": "hard_sigmoid_keras2"}


def _act_name(a):
    if isinstance(a, str):
        return a
    return getattr(a, "__name__", str(a))


def _layer_spec(layer, gates):
    """(config dict, [per-direction weight lists]) for a Keras GRU or Bidirectional(GRU)."""
    cls = type(layer).__name__
    if cls == "Bidirectional":
        if getattr(layer, "merge_mode", "concat") != "concat":
            raise ValueError(f"layer: Bidirectional merge_mode {layer.merge_mode!r} is not supported "
                             "(numgru concatenates directions: use merge_mode='concat')")
        fwd, bwd = layer.forward_layer, layer.backward_layer
        if fwd.go_backwards or not bwd.go_backwards:
            raise ValueError("layer: Bidirectional with a go_backwards forward layer is not supported")
        spec_f, w_f = _layer_spec(fwd, gates)
        spec_b, w_b = _layer_spec(bwd, gates)
        spec_b = dict(spec_b, go_backwards=False)
        if spec_f != spec_b:
            raise ValueError(f"layer: the two directions differ ({spec_f} vs {spec_b})")
        return dict(spec_f, bidirectional=True), w_f + w_b
    if cls != "GRU":
        hint = " (numgru takes no masks: pass the lengths to the forward instead)" if cls == "Masking" else ""
        raise TypeError(f"layer: expected a keras GRU, Bidirectional(GRU) or Sequential of them, got "
                        f"{cls}{hint}")
    cfg = layer.get_config()
    if _act_name(cfg.get("activation", "tanh")) != "tanh":
        raise ValueError(f"layer {layer.name!r}: activation {cfg['activation']!r} is not supported "
                         "(numgru's candidate activation is tanh)")
    ra = _act_name(cfg.get("recurrent_activation", "sigmoid"))
    if ra not in gates:
        raise ValueError(f"layer {layer.name!r}: recurrent_activation {ra!r} is not supported "
                         f"(expected one of {sorted(gates)})")
    spec = dict(hidden_size=int(cfg["units"]), reset_after=bool(cfg.get("reset_after", True)),
                gate_activation=gates[ra], bias=bool(cfg.get("use_bias", True)),
                go_backwards=bool(cfg.get("go_backwards", False)), bidirectional=False)
    weights = layer.get_weights()
    if len(weights) < 2:
        raise ValueError(f"layer {layer.name!r}: not built, it holds no weights yet (build it or call "
                         "it on data first)")
    return spec, [weights]


def _dtype_of(weights):
    return np.float64 if np.asarray(weights[0]).dtype == np.float64 else np.float32


def _build(cls, specs, weight_lists, input_size, dtype):
    first = specs[0]
    for s in specs[1:]:
        if s != first:
            raise ValueError(f"layer: the stacked layers differ ({first} vs {s}); numgru stacks "
                             "identical layers only")
    L = len(specs)
    D = 2 if first["bidirectional"] else 1
    H = first["hidden_size"]
    kernel, recurrent = (np.asarray(a) for a in weight_lists[0][0][:2])
    # checked before a model of that size is built: an empty array could name any size
    if recurrent.shape != (H, 3 * H) or H < 1:
        raise ValueError(f"weights: expected a recurrent kernel of shape (H, 3*H), got {recurrent.shape}")
    if kernel.shape != (input_size, 3 * H) or input_size < 1:
        raise ValueError(f"weights: expected a kernel of shape (input_size, {3 * H}), got {kernel.shape}")
    gru = cls(input_size, first["hidden_size"], L, bias=first["bias"], batch_first=True,
              bidirectional=first["bidirectional"], reset_after=first["reset_after"],
              gate_activation=first["gate_activation"], go_backwards=first["go_backwards"],
              dtype=dtype or _dtype_of(weight_lists[0][0]))
    sd = {}
    for k, per_dir in enumerate(weight_lists):
        for d, w in enumerate(per_dir):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            W_ih, W_hh, b_ih, b_hh = layout.from_keras_weights(
                w[0], w[1], w[2] if first["bias"] else None, first["reset_after"])
            sd[f"weight_ih{sfx}"], sd[f"weight_hh{sfx}"] = W_ih, W_hh
            if first["bias"]:
                sd[f"bias_ih{sfx}"], sd[f"bias_hh{sfx}"] = b_ih, b_hh
        if len(per_dir) != D:
            raise ValueError(f"layer {k}: expected {D} direction(s), got {len(per_dir)}")
    gru.load_state_dict(sd)
    return gru


def gru_from_keras(cls, layer, dtype=None):
    """Build a numgru GRU from a Keras GRU, Bidirectional(GRU), Sequential or list of them."""
    if isinstance(layer, (list, tuple)):
        layers = list(layer)
    elif hasattr(layer, "layers") and type(layer).__name__ in ("Sequential", "Functional", "Model"):
        layers = [lyr for lyr in layer.layers if type(lyr).__name__ != "InputLayer"]
    else:
        layers = [layer]
    if not layers:
        raise ValueError("layer: no GRU layers found")
    specs, weights = [], []
    for lyr in layers:
        s, w = _layer_spec(lyr, _GATES_KERAS3)
        specs.append(s)
        weights.append(w)
    for lyr in layers[:-1]:
        inner = lyr.forward_layer if type(lyr).__name__ == "Bidirectional" else lyr
        if not inner.return_sequences:
            raise ValueError(f"layer {lyr.name!r}: a stacked layer must have return_sequences=True")
    input_size = int(np.asarray(weights[0][0][0]).shape[0])
    return _build(cls, specs, weights, input_size, dtype)


def gru_from_keras_weights(weights, *, reset_after=True, recurrent_activation="hard_sigmoid",
                           keras_version=2, bidirectional=False, go_backwards=False, dtype=None):
    """Build a GRU from raw Keras weight lists, without Keras installed.

    Parameters
    ----------
    weights : for one layer ``[kernel, recurrent_kernel(, bias)]`` (what ``layer.get_weights()`` or an
        .h5 file's datasets give); for a Bidirectional layer the forward list then the backward list
        concatenated (6 or 4 arrays); for a stack, a list of such lists.
    reset_after : Keras 2's default was False, Keras 3's is True.
    recurrent_activation : "sigmoid" or "hard_sigmoid".
    keras_version : 2 or 3; decides what "hard_sigmoid" means (0.2·x + 0.5 or x/6 + 0.5).
    """
    from ..layers import GRU
    if keras_version not in (2, 3):
        raise ValueError(f"keras_version: expected 2 or 3, got {keras_version!r}")
    gates = _GATES_KERAS2 if keras_version == 2 else _GATES_KERAS3
    if recurrent_activation not in gates:
        raise ValueError(f"recurrent_activation: expected one of {sorted(gates)}, got "
                         f"{recurrent_activation!r}")
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TypeError("weights: expected a list of arrays (or a list of such lists for a stack)")
    stack = weights if isinstance(weights[0], (list, tuple)) else [weights]
    D = 2 if bidirectional else 1
    specs, per_layer = [], []
    for k, w in enumerate(stack):
        w = [np.asarray(a) for a in w]
        n = len(w) // D
        if n not in (2, 3) or len(w) != n * D:
            raise ValueError(f"weights[{k}]: expected {2 * D} or {3 * D} arrays, got {len(w)}")
        if any(a.ndim != 2 for d in range(D) for a in w[d * n:d * n + 2]):
            raise ValueError(f"weights[{k}]: expected 2-D kernels, got shapes {[a.shape for a in w]}")
        per_layer.append([w[d * n:(d + 1) * n] for d in range(D)])
        specs.append(dict(hidden_size=int(w[1].shape[0]), reset_after=bool(reset_after),
                          gate_activation=gates[recurrent_activation], bias=n == 3,
                          go_backwards=bool(go_backwards), bidirectional=bool(bidirectional)))
    return _build(GRU, specs, per_layer, int(per_layer[0][0][0].shape[0]), dtype)
