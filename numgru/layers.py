"""Layers: GRU, GRUCell and Linear. They own parameters, shapes and validation, and call the kernels.

Parameters use PyTorch's names and layout (DESIGN §2) and are stored as C-contiguous arrays in that
layout, which is also what the kernels read (the recurrent matmul hands ``W_hh.T`` to BLAS as a
transposed operand), so ``named_parameters()`` gives the live arrays and an optimizer updating them in
place updates the model; ``state_dict()`` gives copies.
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

import numpy as np

from ._validation import (as_lengths, as_real_array, check_bool, check_dtype, check_float,
                          check_int, untorch)
from .kernels.activations import GATE_HARD_SIGMOID, GATE_SIGMOID
from .kernels.dispatch import (AMX_DIGITS_SPREAD, STEP_AS_PRODUCT_MIN_ROWS, FrozenPieces, aligned,
                               amx_recurrence_wanted, amx_rows_chunks, batch_order, directions_apart,
                               directions_side_by_side, empty_array, forward_route, gate_scalars, gather_pays,
                               gathered, gru_direction_backward, gru_direction_forward, inference_tiled_max,
                               input_gradient, input_projection, keeps_off_blas, layer_output, matmul_order,
                               no_step_panels, on_one_thread, one_step_as_product, one_thread_each, packed_step,
                               padded_gathers, plain_plan, plan_off_blas, recycled, rows_share_panels, run_from_zero,
                               run_padded_direction, run_serial_direction, run_stack, run_step, run_step_digits,
                               scattered, serial_direction_plan, serial_forward, StackPlan, stack_arguments,
                               step_columns, step_columns_workspace, step_digits_columns_work, step_layer_stackable,
                               step_layers_plan, take_batch_rows, thread_count, training_directions_apart,
                               training_tape, valid_steps, vnni_step_inputs, vnni_step_wanted, weight_gradient,
                               weight_gradient_pair, workspace)
from .kernels._jit import ARRAY_KIND, C_CONTIGUOUS, compiled_entry, planned_call
from .kernels.bf16 import from_bfloat16, to_bfloat16
from .kernels.forward import first_step_gates, first_step_store
from .kernels.stack import gru_cell_step, gru_forward_step
from .kernels.step import gru_step, step_panels
from .kernels.vnni import gru_step_vnni, gru_step_vnni_before

__all__ = ["GRU", "GRUCell", "Linear", "GATE_PRESETS"]

#: the empty scratch that lets :func:`~numgru.kernels.vnni.gru_step_vnni` allocate its own (a cell's
#: steps may run on several threads at once)
_NO_DIGIT_WORK = np.zeros(0, np.int32)

#: gate_activation name -> (kind, alpha, beta); alpha/beta None means "take the arguments or defaults"
GATE_PRESETS = {
    "sigmoid": (GATE_SIGMOID, None, None),
    "hard_sigmoid": (GATE_HARD_SIGMOID, None, None),          # ONNX HardSigmoid defaults 0.2, 0.5
    "hard_sigmoid_keras2": (GATE_HARD_SIGMOID, 0.2, 0.5),     # Keras 2: clip(0.2 x + 0.5, 0, 1)
    "hard_sigmoid_keras3": (GATE_HARD_SIGMOID, 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
}


#: A quantized model's kernels read its bfloat16 weights where a step is bound by reading them: at most
#: ``BF16_MAX_ROWS`` batch rows (above, by arithmetic) and more than ``BF16_MIN_BYTES`` of float32
#: weights read per step (below, widening them costs about what it saves). See :meth:`GRU.quantize`.
#: On packed panels (one thread, T = 128, against the float32 model, 2-vCPU Intel machine): H = 64,
#: B = 1 level; H = 256 B = 1 / 2 / 4 / 16 1.20× / 1.07× / 0.95× / 0.96–0.99×; H = 384, B = 1 1.98×;
#: H = 512, B = 4 / 16 1.51× / 1.12×; H = 1024, B = 16 1.13×.
#: Where the float32 step would be a BLAS call free to use several threads, bfloat16 (read by one
#: thread) is taken only up to ``BF16_MAX_BYTES_BLAS_THREADS``: on 2 threads a stream step at H = 256
#: (1.5 MB of weights) ran 20.2 µs on bfloat16 against 29.2 on float32, at H = 512 (6 MB) 64.6 against
#: 52.0, and the forward at B = 1, H = 512 (3 MB of W_hh) 0.85–0.88× float32 (2-vCPU AMD machine).
BF16_MAX_ROWS = 16
BF16_MIN_BYTES = 1 << 19
BF16_MAX_BYTES_BLAS_THREADS = 1 << 21
#: batch rows from which a one-step forward from the zero state (:meth:`GRU._first_step`) projects
#: on Numba's threads when there are several
FIRST_STEP_THREADS_MIN_ROWS = 16
#: B·H² from which a cell's step without h (the zero state) skips W_hh (:meth:`GRU._from_zero`); below,
#: the one fused step kernel's shorter call wins (one thread, float32, µs, skipping against the
#: step with zeros: B = 1, H = 32 / 64 / 128 / 256 5.5 / 6.0 / 7.9 / 15.8 against 3.2 / 4.0 / 6.7 /
#: 23.4; H = 64, B = 4 / 16 7.6 / 13.2 against 6.4 / 14.3; B = 64, H = 32 14.2 against 22.0)
CELL_FROM_ZERO_MIN_WORK = 1 << 16
#: forward plans kept per model (one per (T, B, thread count) seen; all dropped when full)
PLANS_KEPT = 64
#: the tag of :meth:`GRU._one_step`'s keys among a model's plans
ONE_STEP = "one step"
#: most rows a forward of one step from h0 takes as a stream's step (:meth:`GRU._one_step`); from 48
#: rows at H = 32–96 the plan's forward ran faster (one thread, float32, one process taking turns,
#: µs, the step against the plan's forward: B = 48 / 64 / 96, H = 64 48.2 / 62.0–67.5 / 94.0 against
#: 44.6 / 57.5–59.1 / 81.5)
ONE_STEP_MAX_ROWS = 32
#: fewest hidden units from which a frozen model's one step on two or more threads takes its digits
#: split over hidden units as its stream does (:meth:`GRU._one_step`); below, the plan's forward (two
#: threads, B = 1, one process taking turns, µs, the split step against the plan's forward: H = 512
#: 57.5–66.9 against 52.7–57.0; H = 640 / 768 / 1024 67.9 / 90.0 / 166–167 against 74.8 / 102.0 /
#: 249–290)
ONE_STEP_SPLIT_MIN_HIDDEN = 640


def use_bf16(model, B, nbytes, blas_threads):
    """Whether ``model``'s kernels should read its bfloat16 copies for B rows when a step reads
    ``nbytes`` of float32 weights; ``blas_threads``: the float32 step would be a BLAS call that may
    use several threads."""
    if model._bf16 is None or B > BF16_MAX_ROWS or nbytes <= BF16_MIN_BYTES:
        return False
    return not blas_threads or nbytes <= BF16_MAX_BYTES_BLAS_THREADS


def _plain_int(v):
    """Whether ``v`` is an int of at least 1 (not a bool): a size a config may hold."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 1


def _read_only(a):
    a.setflags(write=False)
    return a


def _resolve_gate(gate_activation, alpha, beta):
    if not isinstance(gate_activation, str):
        raise TypeError(f"gate_activation: expected a str, got {type(gate_activation).__name__}")
    if gate_activation not in GATE_PRESETS:
        raise ValueError(f"gate_activation: expected one of {sorted(GATE_PRESETS)}, "
                         f"got {gate_activation!r}")
    kind, a0, b0 = GATE_PRESETS[gate_activation]
    if kind == GATE_SIGMOID:
        if alpha is not None or beta is not None:
            raise ValueError("alpha, beta: only used with a hard_sigmoid gate_activation, "
                             f"got gate_activation={gate_activation!r}")
        return kind, 1.0, 0.0
    if a0 is not None and (alpha is not None or beta is not None):
        raise ValueError(f"alpha, beta: the preset {gate_activation!r} fixes them; use "
                         "gate_activation='hard_sigmoid' to give your own")
    alpha = check_float("alpha", a0 if a0 is not None else (0.2 if alpha is None else alpha))
    beta = check_float("beta", b0 if b0 is not None else (0.5 if beta is None else beta))
    return kind, alpha, beta


def _too_large(name, count, dtype):
    """The ValueError for sizes whose parameters cannot be allocated (numpy's MemoryError)."""
    gib = count * max(dtype.itemsize, 8) / 2**30  # initial values are drawn in float64
    return ValueError(f"{name}: the sizes asked for hold {count:,} parameters ({gib:,.1f} GiB to "
                      f"initialise), more than this machine can allocate")


class _Params:
    """Mixin: named parameters with PyTorch names, state_dict round trips."""

    def _param_items(self):
        raise NotImplementedError

    def named_parameters(self):
        """Yield ``(name, array)`` pairs of live parameter arrays (updating them in place updates the model)."""
        yield from self._param_items()

    def parameters(self):
        return [p for _, p in self._param_items()]

    def num_parameters(self):
        """Total number of scalar parameters."""
        return int(sum(p.size for _, p in self._param_items()))

    def state_dict(self):
        """A dict of C-contiguous copies of every parameter, PyTorch's names and shapes."""
        return {name: np.array(p, order="C", copy=True) for name, p in self._param_items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters from a mapping of name -> array (NumPy arrays, torch tensors, lists, ...).

        With ``strict`` every key must match and every parameter must be given. Shapes must match
        exactly. Nothing is written unless everything checks. Returns ``(missing, unexpected)`` keys.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got "
                            f"{type(state_dict).__name__}")
        own = dict(self._param_items())
        keys = [str(k) for k in state_dict.keys()]
        unexpected = sorted(k for k in keys if k not in own)
        missing = sorted(k for k in own if k not in keys)
        if strict and (unexpected or missing):
            raise ValueError(f"state_dict: keys do not match; missing {missing}, unexpected {unexpected}")
        staged = {}
        for name in keys:
            if name not in own:
                continue
            arr = as_real_array(f"state_dict[{name!r}]", state_dict[name])
            if arr.shape != own[name].shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {own[name].shape}, got {arr.shape}")
            staged[name] = arr
        for name, arr in staged.items():
            own[name][...] = arr
        self._after_load()
        return missing, unexpected

    def _after_load(self):
        pass


class GRU(_Params):
    r"""Multi-layer gated recurrent unit over whole sequences.

    For each layer and direction, with gate order r, z, n (PyTorch's)::

        r_t = σ(W_ir x_t + b_ir + W_hr h + b_hr)
        z_t = σ(W_iz x_t + b_iz + W_hz h + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h + b_hn))     # reset_after=True (PyTorch, cuDNN)
        n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h) + b_hn)     # reset_after=False (Cho et al. 2014)
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h

    Parameters
    ----------
    input_size, hidden_size : int
        I and H.
    num_layers : int
        L, stacked layers; layer k > 0 takes the D·H outputs of layer k − 1.
    bias : bool
        Learnable b_ih and b_hh.
    batch_first : bool
        Inputs and outputs are (B, T, ·) instead of (T, B, ·).
    dropout : float
        Dropout on the outputs of every layer but the last, in :meth:`forward_train` only.
    bidirectional : bool
        D = 2: a reverse direction whose outputs are concatenated after the forward ones.
    go_backwards : bool
        Unidirectional only: every layer runs t = T−1 … 0 (each row from its own last valid step),
        as ONNX's ``direction="reverse"``; y stays aligned with x (y[t] is the state after x[t]).
        Keras' ``go_backwards`` returns the sequence in processing order: flip y along time for that.
    reset_after : bool
        Where the reset gate acts (see the equations).
    gate_activation : str
        "sigmoid" (default), "hard_sigmoid" (clip(alpha·x + beta, 0, 1), alpha/beta default 0.2/0.5),
        "hard_sigmoid_keras2" (0.2, 0.5) or "hard_sigmoid_keras3" (1/6, 0.5).
    alpha, beta : float, optional
        hard_sigmoid's slope and offset with ``gate_activation="hard_sigmoid"``.
    clip : float, optional
        ONNX's cell clip: gate pre-activations are clipped to [−clip, clip].
    dtype : float32 or float64
        Anything ``np.dtype`` reads as one of them, or ``torch.float32`` / ``torch.float64``;
        None is the default float32 (as torch's ``dtype=None``).
    seed : int, optional
        Seed of the U(−1/√H, 1/√H) initialisation (PyTorch's).

    Shapes
    ------
    x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I). ``lengths``: (B,) ints in [0, T].
    y: (T, B, D·H) (batch_first: (B, T, D·H); unbatched (T, D·H)); h_n: (L·D, B, H) (unbatched (L·D, H)).

    Examples
    --------
    >>> import numpy as np, numgru as ng
    >>> gru = ng.GRU(8, 16, num_layers=2, seed=0)
    >>> y, h_n = gru(np.ones((5, 3, 8), np.float32))
    >>> y.shape, h_n.shape
    ((5, 3, 16), (2, 3, 16))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, reset_after=True, gate_activation="sigmoid",
                 alpha=None, beta=None, clip=None, dtype=np.float32, seed=None, go_backwards=False):
        self.input_size = check_int("input_size", input_size, minimum=1)
        self.hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        self.num_layers = check_int("num_layers", num_layers, minimum=1)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.reset_after = check_bool("reset_after", reset_after)
        self.go_backwards = check_bool("go_backwards", go_backwards)
        if self.go_backwards and self.bidirectional:
            raise ValueError("go_backwards: only for a unidirectional GRU (got bidirectional=True)")
        self.gate_activation = gate_activation
        self._gate_kind, self.alpha, self.beta = _resolve_gate(gate_activation, alpha, beta)
        self.clip = check_float("clip", clip, low=0.0, low_open=True, allow_none=True)
        self.dtype = check_dtype("dtype", dtype)
        self.seed = check_int("seed", seed, minimum=0, allow_none=True)
        self.training_seed = None
        D = self.num_directions
        H = self.hidden_size
        rng = np.random.default_rng(self.seed)
        k = 1.0 / math.sqrt(H)
        self._W_ih, self._W_hh, self._b_ih, self._b_hh = [], [], [], []
        try:
            for layer in range(self.num_layers):
                I_k = self.input_size if layer == 0 else D * H
                for _ in range(D):
                    # on 64-byte lines: load_state_dict and the optimizers write into these in place
                    self._W_ih.append(aligned(rng.uniform(-k, k, (3 * H, I_k)).astype(self.dtype)))
                    self._W_hh.append(aligned(rng.uniform(-k, k, (3 * H, H)).astype(self.dtype)))
                    if self.bias:
                        self._b_ih.append(aligned(rng.uniform(-k, k, 3 * H).astype(self.dtype)))
                        self._b_hh.append(aligned(rng.uniform(-k, k, 3 * H).astype(self.dtype)))
        except MemoryError:
            raise _too_large("input_size, hidden_size", self._config_count(self.get_config()), self.dtype) from None
        self._zero_bias = np.zeros(3 * H, self.dtype)
        self._dropout_rng = np.random.default_rng(None if self.seed is None else self.seed + 1)

    @staticmethod
    def _config_count(config):
        """How many parameter values a GRU built from ``config`` (:meth:`get_config`'s dict) holds,
        counted without building it; None where a size is not an int (the constructor refuses it).
        Lets a loader refuse a file whose config asks for far more than its tensors hold."""
        I, H, L = (config.get(k, d) for k, d in (("input_size", None), ("hidden_size", None),
                                                   ("num_layers", 1)))
        if not all(_plain_int(v) for v in (I, H, L)):
            return None
        D = 2 if config.get("bidirectional") is True else 1
        biases = 6 * H if config.get("bias", True) else 0
        # a direction holds W_ih (3H, I_k), W_hh (3H, H) and the biases; layers past the first take D·H
        return D * (3 * H * (I + H) + biases) + (L - 1) * D * (3 * H * (D * H + H) + biases)

    _bf16 = None  # quantized models: (W_ih, W_hh) lists of bfloat16 (uint16) copies
    _bf16_panels = None  # ... and their step panels per layer and direction, packed on first use
    _packed = None  # frozen models: step_panels of the float weights per layer and direction
    # (T, B, threads, products' order) -> _forward_plan's kernel arguments (made on first use, per object);
    # (ONE_STEP, B, threads) -> the one-step forward's layers, with the kinds of x and h0 -> its call
    _plans = None
    _backwards = False  # the direction the last one-step forward swept the weights (_one_step)
    _amx_pieces = None  # a frozen or quantized model's FrozenPieces

    # ------------------------------------------------------------------ configuration
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def quantized(self):
        """``"bfloat16"`` for a model made by :meth:`quantize`, else None."""
        return None if self._bf16 is None else "bfloat16"

    @property
    def frozen(self):
        """True for a model made by :meth:`freeze` (its weights packed once, read-only to its users)."""
        return self._packed is not None

    def get_config(self):
        """The constructor arguments as a JSON-friendly dict."""
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                   num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   dropout=self.dropout, bidirectional=self.bidirectional, reset_after=self.reset_after,
                   gate_activation=self.gate_activation, clip=self.clip, dtype=self.dtype.name,
                   seed=self.seed)
        if self.go_backwards:
            cfg["go_backwards"] = True
        if self.gate_activation == "hard_sigmoid":
            cfg.update(alpha=self.alpha, beta=self.beta)
        return cfg

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.get_config().items()
                        if k not in ("input_size", "hidden_size"))
        if self._bf16 is not None:
            extra += ", quantized='bfloat16'"
        if self._packed is not None:
            extra += ", frozen=True"
        return f"GRU({self.input_size}, {self.hidden_size}{extra})"

    def _suffix(self, layer, direction):
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _param_items(self):
        D = self.num_directions
        inference_copy = self._packed is not None or self._bf16 is not None

        def live(a):  # an inference copy's (:meth:`freeze`, :meth:`quantize`) as read-only views
            return _read_only(a.view()) if inference_copy else a

        for layer in range(self.num_layers):
            for d in range(D):
                i = layer * D + d
                sfx = self._suffix(layer, d)
                yield f"weight_ih{sfx}", live(self._W_ih[i])
                yield f"weight_hh{sfx}", live(self._W_hh[i])
                if self.bias:
                    yield f"bias_ih{sfx}", live(self._b_ih[i])
                    yield f"bias_hh{sfx}", live(self._b_hh[i])

    def _kernel_scalars(self):
        """(reset_after, gate_kind, alpha, beta, use_clip, clip) typed as the kernels take them."""
        return (self.reset_after,
                *gate_scalars(self.dtype, self._gate_kind, self.alpha, self.beta, self.clip))

    def _weights(self, i):
        b_ih = self._b_ih[i] if self.bias else None
        b_hh = self._b_hh[i] if self.bias else self._zero_bias
        return self._W_ih[i], self._W_hh[i], b_ih, b_hh

    def _one_step_on_rows(self, B, threads):
        """Whether a step of B rows on ``threads`` Numba threads (GRUCell, streams) runs as a forward of
        one step (a plain model's; frozen and quantized ones keep their packed steps): where the
        forward's rows route's chunks multiply on W_hh's panels packed by every thread
        (:func:`~numgru.kernels.dispatch.rows_share_panels`: float64 from H = 512 and 128 rows on two
        threads), or where its columns route takes W_hh h0 as a projection by ranges of W_hh's panels
        (:func:`~numgru.kernels.dispatch.one_step_as_product`: float64 W_hh of 8 MB or more) from
        ``STEP_AS_PRODUCT_MIN_ROWS`` rows, its input projection by W_ih's where they are wide. 2-vCPU
        AMD EPYC, two threads, ms, as a forward against the step kernels split over units: B = 128 /
        256, H = 512 5.07–5.38 / 9.06–9.43 against 5.59–5.73 / 10.2–11.3 (GRUCell), 5.03–5.06 /
        9.39–9.49 against 5.74–5.80 / 11.5–11.7 (``stream.step``); the columns case, GRUCell, medians of
        the per-round ratios of six rounds taking turns in one process, (B, I, H): (128, 768, 768) /
        (128, 1024, 1024) / (128, 300, 640) / (256, 16, 1024) / (512, 768, 768) 1.09× / 1.15× / 1.02× /
        1.19× / 1.14× (an earlier run 1.05× / 1.15× / 0.90× at the first three); from 48 rows, seven
        rounds against b8659ce (128 rows): (48, 640, 640) / (48, 1024, 1024) / (64, 768, 768) / (64, 64,
        1024) / (64, 300, 640) / (96, 300, 768) / (100, 300, 600) 1.21× / 1.30× / 1.22× / 1.02× / 1.11× /
        1.10× / 1.24× (earlier runs at 64 rows 0.99–1.12×; the forward against the split step at 48 /
        64 rows in two further runs 1.11–1.26× / 1.09–1.20×), ``stream.step`` (48, 640, 640) / (64, 768,
        768) / (64, 300, 1024) / (96, 300, 768) 1.16× / 1.29× / 1.29× / 1.06×; but 32 rows 0.93–1.14×
        and 40 rows 1.03×, so fewer keep the split step."""
        if threads < 2 or self._bf16 is not None or self._packed is not None:
            return False
        H, itemsize = self.hidden_size, self.dtype.itemsize
        route = forward_route(B, H, self.reset_after, False, 1, itemsize, False)
        if route == "rows":
            return rows_share_panels(B, H, itemsize, threads)
        return route == "columns" and self._step_as_product(B, threads)

    def _step_as_product(self, B, threads):
        """Whether a step of B rows would take the columns route's one-step product as a forward
        (:meth:`_one_step_on_rows`' second case), the route aside."""
        return self.reset_after and B >= STEP_AS_PRODUCT_MIN_ROWS and \
            one_step_as_product(1, B, self._W_hh[0], threads)

    def _may_step_as_forward(self, B):
        """Whether some thread count might run a step of B rows as a forward of one step
        (:meth:`_one_step_on_rows`; two threads give the largest chunks and the most panels each), so
        that a stream of small steps need not ask on every step."""
        return self._bf16 is None and self._packed is None and (
            rows_share_panels(B, self.hidden_size, self.dtype.itemsize, 2) or self._step_as_product(B, 2))

    def _step_plan(self, B):
        """``(threads, columns)`` for one step of B rows: the Numba thread count, and whether the step
        runs split over hidden units (:func:`~numgru.kernels.dispatch.step_columns`; a quantized model
        counts the bytes of the weights it would read there)."""
        H = self.hidden_size
        threads = thread_count()
        itemsize = self.dtype.itemsize
        if self._bf16 is not None and use_bf16(self, B, 24 * H * H, False):
            itemsize = 2
        return threads, step_columns(B, H, self.reset_after, threads, itemsize, self._packed is not None)

    def _step_weights(self, k, B, threads, columns):
        """``(W_ih, W_hh, b_ih, b_hh, panels)`` of layer k as the step kernels
        (:mod:`numgru.kernels.step`) read them for B rows (``threads``, ``columns`` from
        :meth:`_step_plan`): a quantized model's bfloat16 copies where :func:`use_bf16` says so, zeros
        for b_ih without bias, and for the serial step the packed panels of the weights it reads where
        they never change (a quantized model's bfloat16 copies, packed on first use; a frozen model's
        weights, each matrix where :func:`~numgru.kernels.dispatch.packed_step` says), else none."""
        W_ih, W_hh, b_ih, b_hh = self._weights(k)
        panels = no_step_panels(self.dtype)
        if self._bf16 is not None and use_bf16(self, B, W_ih.nbytes + W_hh.nbytes,
                                               threads > 1 and not columns):
            W_ih, W_hh = self._bf16[0][k], self._bf16[1][k]
            if not columns:
                panels = self._bf16_step_panels(k)
        elif self._packed is not None and not columns:
            Wp_ih, Wp_a, Wp_b = self._packed[k]
            tiled_max = inference_tiled_max(threads, B)
            M, none = 3 * self.hidden_size, panels[0]
            panels = (Wp_ih if packed_step(M, W_ih.shape[1], B, tiled_max) else none,
                      *((Wp_a, Wp_b) if packed_step(M, W_hh.shape[1], B, tiled_max, not self.reset_after)
                        else (none, none)))
        return W_ih, W_hh, self._zero_bias if b_ih is None else b_ih, b_hh, panels

    def _step_digits(self, k, B, threads, columns):
        """:func:`~numgru.kernels.vnni.gru_step_vnni`'s arguments after x and h and before h_out,
        ``(W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, spread)``, for layer and direction k's step of B rows
        where a frozen float model's step takes its weights' integer digits
        (:func:`~numgru.kernels.dispatch.vnni_step_wanted` for ``threads`` and ``columns``, from
        :meth:`_step_plan`; the digits and their offsets kept with the model, Vi empty where W_ih's
        product stays float32), with whether the step is split over hidden units
        (:func:`~numgru.kernels.dispatch.run_step_digits`): ``(split, args)``; else None (also where
        the digits refuse a row of W_hh)."""
        how = None if self._packed is None or self._bf16 is not None else vnni_step_wanted(
            B, self.hidden_size, threads, columns, self.dtype, self.reset_after, self._gate_kind,
            self.clip is not None)
        if how is None:
            return None
        W_ih, W_hh, b_ih, b_hh = self._weights(k)
        pieces = self._amx_pieces
        hh = pieces.step_digits_of(W_hh)
        if hh is None:
            return None
        ih = pieces.step_digits_of(W_ih) if vnni_step_inputs(W_ih.shape[1]) else None
        Vi = np.empty(0, np.uint16) if ih is None else ih[0]
        C = np.zeros((2, *hh[1].shape), np.int64)
        if ih is not None:
            C[0] = ih[1]
        C[1] = hh[1]
        return how == "split", (W_ih, W_hh, Vi, hh[0], C, self._zero_bias if b_ih is None else b_ih, b_hh,
                                np.float32(AMX_DIGITS_SPREAD))

    def _bf16_step_panels(self, k):
        """A quantized model's :func:`~numgru.kernels.step.step_panels` of layer and direction k's
        bfloat16 copies (all packed on first use: the copies never change)."""
        if self._bf16_panels is None:
            self._bf16_panels = [step_panels(*(w[i] for w in self._bf16), self.reset_after)
                                 for i in range(len(self._bf16[0]))]
        return self._bf16_panels[k]

    def _recurrent_weights(self, i, B, route, T=0):
        """W_hh as the recurrence reads it for B rows on ``route`` (:func:`forward_route`): a quantized
        model's bfloat16 copy where :func:`use_bf16` says so, unless the T steps multiply by it on AMX
        tiles (:func:`~numgru.kernels.dispatch.amx_recurrence_wanted` for bfloat16 values; T = 0: not
        known), else the float32 array (which for a quantized model holds the same bfloat16 values, so
        the results agree either way)."""
        if self._bf16 is None:
            return self._W_hh[i]
        threads = thread_count()
        if use_bf16(self, B, self._W_hh[i].nbytes, route is None and threads > 1):
            if T and route is None and amx_recurrence_wanted(
                    T, B, self.hidden_size, threads, self.dtype, self.reset_after, self._gate_kind,
                    self.clip is not None, bf16_values=True):
                return self._W_hh[i]  # its packing for the tiles is one piece, the bfloat16 values
            return self._bf16[1][i]
        return self._W_hh[i]

    def _direction_weights(self, i, B, route, T=0):
        """``(W_ih, b_ih, W_hh, b_hh, Wp_ih, Wp_hh)`` of layer and direction i as the forward of B rows
        on ``route`` reads them: b_ih None without bias, W_hh from :meth:`_recurrent_weights`, and the
        weights packed once (a frozen model's panels of W_ih and the pair of W_hh's, a quantized
        model's of its bfloat16 W_hh where the recurrence reads that copy), else None."""
        W_ih, _, b_ih, b_hh = self._weights(i)
        W_hh = self._recurrent_weights(i, B, route, T)
        Wp_ih = Wp_hh = None
        if self._packed is not None:
            Wp_ih = self._packed[i][0]
            if W_hh is self._W_hh[i]:
                Wp_hh = self._packed[i][1:]
        if W_hh is not self._W_hh[i]:
            Wp_hh = self._bf16_step_panels(i)[1:]
        return W_ih, b_ih, W_hh, b_hh, Wp_ih, Wp_hh

    def quantize(self, weights="bfloat16"):
        """An inference copy of this model with its weight matrices stored as bfloat16.

        At small batches every step reads all of W_hh (and a stream step W_ih too), so the step runs
        at the speed the cache delivers the weights; bfloat16 halves those bytes. The kernels widen
        the weights in registers and compute in float32, so only the weights lose precision: each is
        rounded to the nearest bfloat16 value (8 significant bits, relative error ≤ 2⁻⁸ ≈ 0.4 %).
        Outputs then differ from the float32 model's by about 1e-3 (tests/test_quantize.py measures
        it); they equal, within float32 rounding, the outputs of a float32 model holding the rounded
        weights, which is what this copy's ``state_dict()``, ``to_torch()`` and ONNX export give.

        The copy is for inference (``forward``, ``stream``, :class:`~numgru.BatchingEngine`): its
        parameters are read-only and ``forward_train``, ``backward`` and ``load_state_dict`` raise.
        The original model is unchanged. Biases stay float32. Needs a float32 model. ``ng.save``
        stores the rounded float32 weights; the loaded model is a float32 one (quantize it again).
        The first calls compile the kernels' bfloat16 variants (once; they are cached on disk).

        On CPUs with AMX tiles the rounded weights need one bfloat16 piece each where a float32 weight
        needs three, so the copy's tile products take three products a block instead of six and read
        a third of the bytes: its input projection, and its recurrence from 8 rows at H ≥ 256, run
        there (the copy keeps each matrix's packing, made on first use).

        Example: ``fast = gru.quantize("bfloat16"); y, h_n = fast(x)``.
        """
        if weights != "bfloat16":
            raise ValueError(f"weights: expected 'bfloat16', got {weights!r}")
        if self.dtype != np.float32:
            raise ValueError(f"weights: bfloat16 storage needs a float32 model, this one is "
                             f"{self.dtype.name}")
        q = copy.copy(self)
        q._packed = None
        # writeable inside, as :meth:`_freeze_in_place` keeps them
        bf_ih = [aligned(to_bfloat16(W)) for W in self._W_ih]
        bf_hh = [aligned(to_bfloat16(W)) for W in self._W_hh]
        q._bf16 = (bf_ih, bf_hh)
        q._bf16_panels = None  # (packed from these copies on first use)
        q._amx_pieces = FrozenPieces(True)  # the tiles' one-piece packings of the unchanging weights
        q._W_ih = [aligned(from_bfloat16(b)) for b in bf_ih]
        q._W_hh = [aligned(from_bfloat16(b)) for b in bf_hh]
        q._b_ih = [aligned(b) for b in self._b_ih]
        q._b_hh = [aligned(b) for b in self._b_hh]
        q._zero_bias = self._zero_bias.copy()
        if self._packed is not None:
            q._pack()
        return q

    def freeze(self):
        """An inference copy of this model with its weight matrices packed once for the kernels.

        Every forward of a plain model packs the weights it multiplies by (a transposing pass over
        them) where the steps repay it, and a stream step or a short sequence reads them unpacked, since
        an optimizer or ``load_state_dict`` may change them in place between calls. A frozen copy packs
        them when it is made and keeps the packed copy, as an ONNX Runtime session or
        ``torch.jit.freeze`` does: its input projection and steps then run on the packed weights at
        every length and batch where those are the faster product. That pays most where the packing
        or an unpacked product was a large share of a call: small batches and short sequences at
        H ≤ 256, and stream steps; on CPUs with AMX tiles it also keeps the tiles' packing of each
        matrix, made on first use. Results equal the model's within rounding (the sums run in
        another order, as between the model's own routes).

        The copy is for inference (``forward``, ``stream``, :class:`~numgru.BatchingEngine`): its
        parameters are read-only and ``forward_train``, ``backward`` and ``load_state_dict`` raise.
        The original model is unchanged; ``state_dict()``, ``to_torch()``, ONNX export and ``ng.save``
        give its weights as usual (the loaded model is not frozen). It holds a second copy of the
        weight matrices. :meth:`quantize` of a frozen model is frozen too.

        Example: ``fast = gru.freeze(); y, h_n = fast(x)``.
        """
        q = copy.copy(self)
        if self._packed is None:
            q._freeze_in_place()
        return q

    def _freeze_in_place(self):
        """Give this object its own copies of its parameters and pack them (:meth:`freeze`): writeable
        inside, so the kernels take the plain model's signatures (:func:`~numgru.kernels._jit.kernel`);
        :meth:`named_parameters` hands out read-only views of them."""
        for name in ("_W_ih", "_W_hh", "_b_ih", "_b_hh"):
            setattr(self, name, [aligned(a) for a in getattr(self, name)])
        self._zero_bias = aligned(self._zero_bias)
        self._plans = None
        # AMX packings of the matrices (which never change now), made on first use
        self._amx_pieces = FrozenPieces(self._bf16 is not None)
        self._pack()

    def _pack(self):
        """Pack the float weights of every layer and direction (:meth:`freeze`)."""
        self._packed = [step_panels(W_ih, W_hh, self.reset_after)
                        for W_ih, W_hh in zip(self._W_ih, self._W_hh)]

    def __copy__(self):
        # a shallow copy shares the panels (pickling and deepcopy go through __getstate__ and pack anew)
        q = object.__new__(type(self))
        q.__dict__.update(self.__dict__)
        q._plans = None  # (they hold this object's arrays, which a copy may replace)
        return q

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_plans", None)
        state.pop("_amx_pieces", None)
        if state.pop("_packed", None) is not None:
            state["_frozen"] = True  # packed again on load, where the panels' alignment is kept
        return state

    def __setstate__(self, state):
        frozen = state.pop("_frozen", False)
        self.__dict__.update(state)
        if frozen:
            self._freeze_in_place()
        elif self._bf16 is not None:
            self._amx_pieces = FrozenPieces(True)

    def _check_trainable(self):
        if self._bf16 is not None:
            raise ValueError("model: a quantized (bfloat16) model is for inference only; train the float32 "
                             "model and quantize it again")
        if self._packed is not None:
            raise ValueError("model: a frozen model is for inference only; train the model it was "
                             "frozen from and freeze it again")

    def load_state_dict(self, state_dict, strict=True):
        self._check_trainable()
        return super().load_state_dict(state_dict, strict)

    load_state_dict.__doc__ = _Params.load_state_dict.__doc__

    # ------------------------------------------------------------------ validation
    def _prepare(self, x, h0, lengths):
        x = as_real_array("x", x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected a 2-D (T, I) or 3-D "
                             f"{'(B, T, I)' if self.batch_first else '(T, B, I)'} array, got {x.ndim}-D "
                             f"with shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected input_size {self.input_size} in the last dimension, "
                             f"got {x.shape[-1]} (shape {x.shape})")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        T, B, _ = x.shape
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        if lengths is None:
            lengths = np.empty(B, np.int64)
            lengths.fill(T)  # (half np.full's time)
        elif unbatched:
            arr = np.asarray(untorch(lengths))
            lengths = as_lengths(arr.reshape(1) if arr.ndim == 0 else arr, 1, T)
        else:
            lengths = as_lengths(lengths, B, T)
        if h0 is None:
            h0 = np.zeros((LD, B, H), self.dtype)
        else:
            h0 = as_real_array("h0", h0)
            want = (LD, H) if unbatched else (LD, B, H)
            if h0.shape != want:
                raise ValueError(f"h0: expected shape {want} (num_layers*num_directions, "
                                 f"{'' if unbatched else 'batch, '}hidden_size), got {h0.shape}")
            if unbatched:
                h0 = h0[:, None, :]
            h0 = np.array(h0, dtype=self.dtype, order="C", copy=True)  # owned: one kernel signature
        return x, h0, lengths, unbatched

    def _finish(self, y, h_n, unbatched):
        if unbatched:
            return y[:, 0, :], h_n[:, 0, :]
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n

    # ------------------------------------------------------------------ forward
    def __call__(self, x, h0=None, lengths=None):
        return self.forward(x, h0, lengths)

    def forward(self, x, h0=None, lengths=None):
        """Inference over whole sequences. Returns ``(y, h_n)``; see the class docstring for shapes.

        Without h0 the first step skips W_hh, whose product with the zero state is zero (always at
        T = 1; beyond, where the plan runs the serial kernel or a threaded route takes the call), so a
        NaN or ±Inf in W_hh shows from the second step on there. With h0, one step of one direction
        runs every layer as a stream steps it (:meth:`_one_step`)."""
        if lengths is None and type(x) is np.ndarray and x.dtype == self.dtype and x.ndim in (2, 3):
            out = self._forward_planned(x, h0)
            if out is not None:
                return out
        from_zero = h0 is None
        x, h0, lengths, unbatched = self._prepare(x, h0, lengths)
        padded = _padded(lengths, x.shape[0])
        if from_zero and x.shape[0] == 1 and x.shape[1] > 0:
            return self._finish(*self._from_zero(x, lengths if padded else None), unbatched)
        if padded:
            out = self._run_planned_padded(x, h0, lengths, from_zero)
        else:
            out = self._run_planned(x, None if from_zero else h0)
        y, h_n = self._infer(x, h0, lengths, padded, from_zero) if out is None else out
        return self._finish(y, h_n, unbatched)

    def _forward_planned(self, x, h0):
        """:meth:`forward` of an array x (2-D or 3-D) of this model's dtype, every row running all T
        steps, by the plan :meth:`_forward_plan` made for (T, B, thread count), which the general path
        also runs once it has checked and converted its arguments (:meth:`_run_planned`): that path's
        checks and route choices were a large share of a call at B = 1 and a few steps; one step from
        h0 by :meth:`_one_step` where it runs. None where no plan applies (the general path then
        runs)."""
        unbatched = x.ndim == 2
        if unbatched:
            (T, I), B = x.shape, 1
        elif self.batch_first:
            B, T, I = x.shape
        else:
            T, B, I = x.shape
        LD, H, dtype = self.num_layers * self.num_directions, self.hidden_size, self.dtype
        if I != self.input_size or T == 0 or B == 0 or not (h0 is None or (
                type(h0) is np.ndarray and h0.dtype == dtype
                and h0.shape == ((LD, H) if unbatched else (LD, B, H)))):
            return None
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if T == 1 and h0 is not None:
            out = self._one_step(x[0], h0.reshape(LD, B, H))
            if out is not None:
                return self._finish(*out, unbatched)
        plan = self._plan_for(T, B)
        if not plan:
            return None
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        # h0 copied as the general path does (owned and writeable: one kernel signature); none from
        # the zero state (:meth:`_run_plan`)
        if h0 is not None:
            h0 = np.array(h0, order="C", copy=True).reshape(LD, B, H)
        return self._finish(*self._run_plan(plan, x, h0), unbatched)

    def _from_zero(self, x, lengths=None):
        """Inference over one step from the zero state: x (1, B ≥ 1, I) C-contiguous of the model's
        dtype; ``lengths`` (B,) of 0 or 1, or None (all 1). By the plan for (1, B, thread count) where
        one applies (:meth:`_run_planned`), else :meth:`_first_step`. Returns y (1, B, D·H), h_n
        (L·D, B, H)."""
        out = None if lengths is not None else self._run_planned(x, None)
        if out is None:
            out = self._first_step(x, np.ones(x.shape[1], np.int64) if lengths is None else lengths)
        return out

    def _first_step(self, x, lengths):
        """Inference over one step from the zero state (no h0 given): x (1, B, I) C-contiguous, lengths
        (B,) of 0 or 1. Every layer and direction takes its input projection and the gates of
        :func:`~numgru.kernels.forward.first_step_gates`, where W_hh h is zero: W_hh is not read, and
        with I = H that is half a step's products. Returns y (1, B, D·H), h_n (L·D, B, H)."""
        B = x.shape[1]
        D, H, dtype = self.num_directions, self.hidden_size, self.dtype
        h_n = np.empty((self.num_layers * D, B, H), dtype)
        scalars = self._kernel_scalars()
        threads = thread_count() > 1 and B >= FIRST_STEP_THREADS_MIN_ROWS
        inp = x
        for layer in range(self.num_layers):
            y = np.empty((1, B, D * H), dtype)
            x2d = inp.reshape(B, inp.shape[2])
            for d in range(D):
                i = layer * D + d
                W_ih, _, b_ih, b_hh = self._weights(i)
                gx = input_projection(x2d, W_ih, b_ih, threads, out=workspace("gx", (B, 3 * H), dtype),
                                      packed=None if self._packed is None else self._packed[i][0],
                                      pieces=self._amx_pieces)
                first_step_gates(gx, b_hh, lengths, *scalars, y, d * H, h_n[i])
            inp = y
        return inp, h_n

    def _run_planned(self, x, h0):
        """The general path's inference over x (T, B, I) C-contiguous and h0 (L·D, B, H), both of the
        model's dtype (None: from the zero state), every row running all T steps, by the plan
        for (T, B, thread count) as :meth:`_forward_planned` runs it (one step from h0 by
        :meth:`_one_step` where it runs, so that a model gives the same values for an input in any
        form): ``(y, h_n)``, or None where no plan applies."""
        T, B, _ = x.shape
        if T == 0 or B == 0:
            return None
        if T == 1 and h0 is not None:
            out = self._one_step(x[0], h0)
            if out is not None:
                return out
        plan = self._plan_for(T, B)
        return self._run_plan(plan, x, h0) if plan else None

    def _one_step(self, x, h0):
        """Inference over one step from h0 as a stream steps every layer (:class:`~numgru.serving.Stepper`):
        :func:`~numgru.kernels.stack.gru_forward_step`, one kernel call on a plan of addresses made for
        each kind of x and h0 (:func:`~numgru.kernels.dispatch.step_layers_plan`), each call sweeping
        the weights the other way from the call before, so that it starts on what that one read last
        (a loop of one-step calls, as a PyTorch user decodes, had read them the same way every call);
        or a frozen model's step on its weights' VNNI digits a layer at a time, as its stream takes
        them. x (B, I) and h0 (L, B, H) of the model's dtype, h0 only read; one direction. Returns y
        (1, B, H) and h_n (L, B, H), or None where :meth:`_one_step_layers` says it does not run (the
        plan's forward runs there)."""
        if self.num_directions != 1:
            return None
        B = x.shape[0]
        threads = thread_count()
        plans = self._plans
        if plans is None:
            plans = self._plans = {}
        how = plans.get((ONE_STEP, B, threads))
        if how is None:
            if len(plans) >= PLANS_KEPT:
                plans.clear()
            how = plans[(ONE_STEP, B, threads)] = self._one_step_layers(B, threads)
        if not how:
            return None
        xk = x.flags.num
        if not xk & C_CONTIGUOUS:
            x = np.ascontiguousarray(x)
            xk = x.flags.num
        hk = h0.flags.num
        if not hk & C_CONTIGUOUS:
            h0 = np.ascontiguousarray(h0)
            hk = h0.flags.num
        key = (ONE_STEP, B, threads, (xk & ARRAY_KIND) | (hk & ARRAY_KIND) << 16)
        L, H, dtype = self.num_layers, self.hidden_size, self.dtype
        y, h_n = np.empty((1, B, H), dtype), np.empty((L, B, H), dtype)
        backwards = self._backwards = not self._backwards  # (threads racing on it: only the sweep's way)
        split, layers, entries = how
        if split is not None:
            self._digit_steps(split, layers, entries, key[3], x, h0, h_n, threads, backwards)
            y[0] = h_n[L - 1]
            return y, h_n
        call = plans.get(key)
        if call is not None:
            call[0](x, h0, y, h_n, call[1], call[2], backwards)
            return y, h_n
        plan, values = step_layers_plan(x, h0[0], layers, self._kernel_scalars(), inference_tiled_max(threads, B))
        gru_forward_step(x, h0, y, h_n, plan, values, backwards)
        plans[key] = (compiled_entry(gru_forward_step, (x, h0, y, h_n, plan, values, backwards)) or gru_forward_step,
                      plan, values)
        return y, h_n

    def _one_step_layers(self, B, threads):
        """How :meth:`_one_step` runs B rows on ``threads`` Numba threads, as a stream's step would:
        ``(None, layers, None)``, each layer's ``(W_ih, W_hh, b_ih, b_hh, panels)`` for
        :func:`~numgru.kernels.stack.gru_forward_step`, where it takes gru_step serially on every
        layer; ``(split, digits, entries)`` where it takes every layer on a frozen model's VNNI digits
        (:meth:`_step_digits`' arguments per layer, split over hidden units or not, and the compiled
        entries :meth:`_digit_steps` keeps); False where it does not run: steps on float weights split
        over hidden units or taken as a forward of rows, bfloat16 weights, digits split over hidden
        units below ``ONE_STEP_SPLIT_MIN_HIDDEN``, and from ``ONE_STEP_MAX_ROWS`` rows on, where the
        plan's forward of one step ran level or faster."""
        if B > ONE_STEP_MAX_ROWS:
            return False
        _, columns = self._step_plan(B)
        L = self.num_layers
        digits = [self._step_digits(k, B, threads, columns) for k in range(L)]
        if all(d is not None for d in digits):
            split = digits[0][0]
            if split and self.hidden_size < ONE_STEP_SPLIT_MIN_HIDDEN:
                return False
            return split, [d[1] for d in digits], {}
        if columns or self._one_step_on_rows(B, threads):
            return False
        layers = [self._step_weights(k, B, threads, columns) for k in range(L)]
        return (None, layers, None) if all(step_layer_stackable(layer, self.dtype) for layer in layers) else False

    def _digit_steps(self, split, digits, entries, kinds, x, h0, h_n, threads, backwards):
        """:meth:`_one_step` on a frozen model's VNNI digits: layer k's step of x (or layer k − 1's new
        state) and h0[k] into h_n[k], as a frozen stream steps it (split over hidden units where
        ``split``, :func:`~numgru.kernels.dispatch.run_step_digits`; else by the kernel's compiled
        entry per layer and ``kinds`` of x and h0, kept in ``entries``, its workspaces its own)."""
        H, reset_after = self.hidden_size, self.reset_after
        inp = x
        for k, d in enumerate(digits):
            if split:
                gi, gh = np.empty((1, 3 * H), self.dtype), np.empty((1, 3 * H), self.dtype)
                run_step_digits(inp, h0[k], d, h_n[k], gi, gh, _NO_DIGIT_WORK,
                                step_digits_columns_work(inp.shape[1], H, threads), backwards, reset_after)
            else:
                none = empty_array(self.dtype, 2)
                planned_call(entries, (k, kinds), gru_step_vnni if reset_after else gru_step_vnni_before, inp,
                             h0[k], *d, h_n[k], none, none, _NO_DIGIT_WORK, backwards)
            inp = h_n[k]

    def _run_planned_padded(self, x, h0, lengths, from_zero):
        """The general path's inference over padded rows (x (T, B, I) C-contiguous, h0 (L·D, B, H)
        owned, lengths (B,) checked, some below T; ``from_zero``: h0 is the zeros put for none given)
        by the plan for (T, B, thread count), where it runs the plain serial kernels
        (:func:`~numgru.kernels.dispatch.plain_plan`) and the general path would not gather the valid
        steps (:func:`~numgru.kernels.dispatch.padded_gathers`, which pays for larger calls): the rows
        sorted longest first, each direction by :func:`~numgru.kernels.dispatch.run_padded_direction`,
        the rows put back. Its route choices and checks had doubled a small padded call's time (T = 2,
        B = 7, I = 16, H = 100, bidirectional, one thread, µs: 75–77 against 43 unpadded). None where
        no plan applies."""
        T, B, I = x.shape
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        if T == 0 or B == 0 or padded_gathers(lengths, T, 3 * H, (I, D * H) if L > 1 else (I,)):
            return None
        plan = self._plan_for(T, B, apart=False)
        if not plan or not all(plain_plan(p) for p in plan):
            return None
        x, h0, lengths, perm = _sort_by_length(x, h0, lengths)
        y, h_n = self._run_plan(plan, x, None if from_zero else h0, lengths, scratch_out=perm is not None)
        return _unsort(perm, y, h_n, names=("y_out", "h_n_out"))

    def _plan_for(self, T, B, apart=True):
        """The plan for (T, B, thread count, precision) (:meth:`_forward_plan`), made on first use and
        kept (the precision set by ``set_float32_matmul_precision`` moves the tiles' rules). Where
        ``apart`` and :func:`~numgru.kernels.dispatch.directions_apart` allow it on two threads, one
        thread's plan as an :class:`_ApartPlan` (each direction on a thread of its own), if every
        direction of it projects off BLAS (:func:`~numgru.kernels.dispatch.plan_off_blas`)."""
        threads = thread_count()
        plans = self._plans
        if plans is None:
            plans = self._plans = {}
        apart = apart and self.num_directions == 2  # (one key for both where it cannot apply)
        key = (T, B, threads, matmul_order(), apart)
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= PLANS_KEPT:
                plans.clear()
            plan = None
            if apart and threads == 2 and directions_apart(
                    T, B, self.input_size, self.hidden_size, self.num_layers, self.dtype):
                # one thread's plan, each direction on a thread of its own (:meth:`_run_plan`)
                plan = on_one_thread(self._forward_plan, (T, B, 1))
                plan = _ApartPlan(plan) if plan and all(plan_off_blas(p) for p in plan) else None
            if plan is None:
                plan = self._forward_plan(T, B, threads)
            plans[key] = plan
        return plan

    def _run_plan(self, plan, x, h0, lengths=None, scratch_out=False):
        """All layers by ``plan`` over x (T, B, I) C-contiguous and h0 (L·D, B, H) owned: (y, h_n).
        h0 None: from the zero state, where a direction's first step does not read W_hh
        (:func:`~numgru.kernels.dispatch.run_from_zero`, at T = 1 always, beyond where the plan's
        recurrence allows; else the plan from zeros). ``lengths``: padded rows, longest first, by a
        plan of the plain serial kernels (:func:`~numgru.kernels.dispatch.run_padded_direction`);
        ``scratch_out`` as :meth:`_run`'s (inner layers' outputs are scratch either way)."""
        T, B, _ = x.shape
        L, D, H, dtype = self.num_layers, self.num_directions, self.hidden_size, self.dtype
        h_n = np.empty((L * D, B, H), dtype)
        others = None if lengths is None else np.maximum(lengths - 1, 0)  # (writeable int64, as lengths)
        if isinstance(plan, StackPlan) and (lengths is None or not plan.kernels[1]):  # (no fused padded rows)
            return run_stack(plan, x, h0, h_n, lengths, others, scratch_out), h_n
        inp = x
        for layer in range(L):
            # used up by the next layer, or copied by the caller: scratch
            y = layer_output(layer, L, (T, B, D * H), dtype, scratch_out)
            x2d = inp.reshape(T * B, inp.shape[2])
            jobs = [(plan[layer * D + d], x2d, None if h0 is None else h0[layer * D + d], lengths, others, y, d * H,
                     h_n[layer * D + d]) for d in range(D)]
            if isinstance(plan, _ApartPlan):
                one_thread_each(_run_planned_direction, jobs)
            else:
                for job in jobs:
                    _run_planned_direction(*job)
            inp = y
        return inp, h_n

    def _forward_plan(self, T, B, threads):
        """Per layer and direction, :func:`~numgru.kernels.dispatch.serial_direction_plan` for an
        inference forward of B rows of T steps on ``threads`` Numba threads, where the forward takes
        the serial kernels (:func:`~numgru.kernels.dispatch.serial_forward`) and not the AMX tiles'
        ranges of rows (:func:`~numgru.kernels.dispatch.amx_rows_chunks`, which the general path
        takes), else False."""
        H = self.hidden_size
        bf16 = self._bf16 is not None and use_bf16(self, B, 12 * H * H, False)
        route = forward_route(B, H, self.reset_after, False, T, 2 if bf16 else self.dtype.itemsize,
                              self._packed is not None)
        if not serial_forward(route):
            return False
        if threads > 1 and amx_rows_chunks(T, B, H, threads, self.dtype, self.reset_after, self._gate_kind,
                                           self.clip is not None):
            # (two threads, T = 128, B = 64, H = 1024 on the Intel machine: 398–424 ms by the plan's
            # serial kernels, slower than one thread's tiles, against 175–188 on the ranges)
            return False
        plan = []
        for i in range(self.num_layers * self.num_directions):
            W_ih, b_ih, W_hh, b_hh, Wp_ih, Wp_hh = self._direction_weights(i, B, route, T)
            plan.append(serial_direction_plan(
                W_ih, b_ih, W_hh, b_hh, Wp_ih, Wp_hh, T, B, threads,
                i % self.num_directions == 1 or self.go_backwards, self.reset_after, self._gate_kind,
                self.alpha, self.beta, self.clip, self._amx_pieces, self._bf16 is not None))
        # every direction on the plain serial kernels or the one-row fused forward: all in one kernel call
        return stack_arguments(plan, T, B, self.num_directions, self._zero_bias, self._kernel_scalars()) \
            or tuple(plan)

    def _infer(self, x, h0, lengths, padded, from_zero=False):
        """Inference on checked arrays: x (T, B, I) C-contiguous, h0 (L·D, B, H), lengths (B,) int64
        (``padded``: some may be below T). Picks the route (:func:`forward_route`), orders the rows for
        it and back. ``from_zero``: h0 is the zeros put for none given (see :meth:`_run`). Returns
        y (T, B, D·H), h_n (L·D, B, H)."""
        T, B, _ = x.shape
        H = self.hidden_size
        bf16 = self._bf16 is not None and use_bf16(self, B, 12 * H * H, False)
        route = forward_route(B, H, self.reset_after, False, T, 2 if bf16 else self.dtype.itemsize,
                              self._packed is not None)
        x, h0, lengths, perm = _sort_by_length(x, h0, lengths, route)
        y, h_n, _ = self._run(x, h0, lengths, store=False, padded=padded, route=route,
                              off_blas=route is None and keeps_off_blas(B, H, thread_count(), False),
                              from_zero=from_zero, scratch_out=perm is not None)
        return _unsort(perm, y, h_n, names=("y_out", "h_n_out"))

    def _run(self, x, h0, lengths, store, dropout_rng=None, padded=True, route=None, off_blas=False,
             from_zero=False, scratch_out=False):
        """All layers over (T, B, I) rows already in :func:`_sort_by_length`'s order. ``padded``:
        lengths may be below T; ``route``: from :func:`forward_route` (None for training);
        ``off_blas``: the serial kernels' projection off BLAS's threads (:func:`keeps_off_blas`);
        ``from_zero``: h0 is all zeros (none was given), so in inference over T ≥ 2 steps, and in
        training (``store``) over any, each direction takes its first step by
        :func:`~numgru.kernels.forward.first_step_gates` (training: :func:`~numgru.kernels.forward.
        first_step_store`, which writes that step's tape) with W_hh not read, and its recurrence over
        the other steps from there; the reverse direction only where every row runs all T steps (else
        its rows start at steps of their own). ``scratch_out`` (inference): the caller copies y before
        this thread's next call, so it may be scratch (:func:`~numgru.kernels.dispatch.workspace`)."""
        T, B, _ = x.shape
        D, H = self.num_directions, self.hidden_size
        h_n = np.empty((self.num_layers * D, B, H), self.dtype)
        layers = []
        inp = x
        valid = valid_steps(lengths, T) if padded else None  # padded steps need no projection
        for layer in range(self.num_layers):
            mask = None
            if layer > 0 and dropout_rng is not None and self.dropout > 0.0:
                keep = 1.0 - self.dropout
                mask = (dropout_rng.random(inp.shape) < keep).astype(self.dtype) / self.dtype.type(keep)
                inp = inp * mask
            # training's outputs stay on the tape: a buffer the last steps' tapes let go of, its pages
            # already faulted in; inference's are used up by the next layer (or, ``scratch_out``, copied
            # by the caller): this thread's scratch, two names in turn
            if store:
                y = recycled(f"y{layer}", (T, B, D * H), self.dtype)
            else:
                y = layer_output(layer, self.num_layers, (T, B, D * H), self.dtype, scratch_out)
            x2d = inp.reshape(T * B, inp.shape[2])
            jobs = [(layer, d, x2d, y, h0, h_n, lengths, valid, route, off_blas, store, from_zero, padded)
                    for d in range(D)]
            if store and D == 2 and training_directions_apart(T, B, x2d.shape[1], H, valid, self.dtype):
                # each direction on a thread of its own, one Numba thread each (one thread's sums)
                gate_tapes = one_thread_each(self._direction_forward, jobs)
            else:
                gate_tapes = [self._direction_forward(*job) for job in jobs]
            if store:
                layers.append(_LayerTape(inp, y, gate_tapes, mask))
            inp = y
        return inp, h_n, layers

    def _direction_forward(self, layer, d, x2d, y, h0, h_n, lengths, valid, route, off_blas, store, from_zero,
                           padded):
        """One direction of :meth:`_run`'s ``layer``: its input projection and recurrence, writing its
        columns of y and its h_n; returns its training tape (``store``), else None."""
        T, B = y.shape[0], y.shape[1]
        H = self.hidden_size
        i = layer * self.num_directions + d
        W_ih, b_ih, W_hh, b_hh, Wp_ih, Wp_hh = self._direction_weights(i, B, route)
        # gx is used up by this direction's recurrence: scratch reused between calls
        gx = input_projection(x2d, W_ih, b_ih, route in ("rows", "columns"), valid, training=store,
                              out=workspace("gx", (T * B, 3 * H), self.dtype), packed=Wp_ih,
                              pieces=self._amx_pieces,
                              off_blas=off_blas).reshape(T, B, 3 * H)
        reverse = d == 1 or self.go_backwards
        h_start, steps, steps_lengths, first_taken = h0[i], slice(0, T), lengths, False
        tape = training_tape(T, B, H, self.clip, self.dtype) if store else None
        if from_zero and (store and T > 0 or T > 1) and not (reverse and padded):
            first = T - 1 if reverse else 0
            h_start = np.empty((B, H), self.dtype)
            if store:
                first_step_store(gx[first], b_hh, lengths, *self._kernel_scalars(), y[first:first + 1],
                                 d * H, h_start, tape[first])
            else:
                first_step_gates(gx[first], b_hh, lengths, *self._kernel_scalars(),
                                 y[first:first + 1], d * H, h_start)
            steps = slice(0, T - 1) if reverse else slice(1, T)
            steps_lengths = np.maximum(lengths - 1, 0)
            first_taken = True
        gru_direction_forward(gx[steps], W_hh, b_hh, h_start, steps_lengths, reverse, self.reset_after,
                              self._gate_kind, self.alpha, self.beta, self.clip, y[steps], d * H, h_n[i],
                              store=store, route=route, packed=Wp_hh, pieces=self._amx_pieces,
                              tape=None if tape is None else tape[steps], first_taken=first_taken)
        return tape

    # ------------------------------------------------------------------ training
    def forward_train(self, x, h0=None, lengths=None):
        """Forward pass that keeps what :meth:`backward` needs and applies inter-layer dropout.

        Returns ``(y, h_n, tape)``; y and h_n as in :meth:`forward`. Without h0 each direction's first
        step skips W_hh (its product with the zero state is zero; the reverse direction's where every
        row runs all T steps), so a NaN or ±Inf in W_hh shows from the second step on.
        """
        self._check_trainable()
        from_zero = h0 is None
        x, h0, lengths, unbatched = self._prepare(x, h0, lengths)
        padded = _padded(lengths, x.shape[0])
        if padded:
            # padded steps never enter the outputs, but W_ih's gradient sums over every row of x: a
            # NaN or ±Inf there (padding of any value is allowed) would reach it as 0 · NaN
            x = np.where((np.arange(x.shape[0])[:, None] < lengths)[:, :, None], x, x.dtype.type(0))
        x, h0, lengths, perm = _sort_by_length(x, h0, lengths)
        y, h_n, layers = self._run(x, h0, lengths, store=True, dropout_rng=self._dropout_rng,
                                   padded=padded, from_zero=from_zero)
        tape = GRUTape(model=self, layers=layers, h0=h0, lengths=lengths, unbatched=unbatched,
                       T=x.shape[0], B=x.shape[1], perm=perm)
        y, h_n = _unsort(perm, y, h_n, names=("y_out", "h_n_out"))
        y_out, hn_out = self._finish(y, h_n, unbatched)
        return y_out, hn_out, tape

    def backward(self, tape, dy=None, dh_n=None, *, input_grad=True):
        """Backpropagation through time.

        Parameters
        ----------
        tape : the third value returned by :meth:`forward_train` (of this model).
        dy : dLoss/dy, shaped like y; None means zeros.
        dh_n : dLoss/dh_n, shaped like h_n; None means zeros.
        input_grad : whether to compute dx (keyword only). False skips the first layer's dLoss/dx, one
            GEMM of (T·B, 3H) by (3H, I), a sixth of a one-layer step's arithmetic, and returns None in
            its place: for an input that is data, as PyTorch skips it for a tensor that does not
            require grad.

        Returns
        -------
        dx : shaped like x (None without ``input_grad``); dh0 : shaped like h_n;
        grads : dict with :meth:`state_dict`'s keys.
        """
        if not isinstance(tape, GRUTape) or tape.model is not self:
            raise TypeError("tape: expected the tape returned by this model's forward_train")
        input_grad = check_bool("input_grad", input_grad)
        if dy is None and dh_n is None:
            raise ValueError("dy, dh_n: give at least one upstream gradient")
        T, B, D, H, L = tape.T, tape.B, self.num_directions, self.hidden_size, self.num_layers
        if dy is None:
            dy = np.zeros((T, B, D * H), self.dtype)
        else:
            dy = as_real_array("dy", dy)
            want = (T, D * H) if tape.unbatched else ((B, T, D * H) if self.batch_first else (T, B, D * H))
            if dy.shape != want:
                raise ValueError(f"dy: expected shape {want} (the shape of y), got {dy.shape}")
            if tape.unbatched:
                dy = dy[:, None, :]
            elif self.batch_first:
                dy = dy.transpose(1, 0, 2)
            dy = np.ascontiguousarray(dy, dtype=self.dtype)
        if dh_n is None:
            dh_n = np.zeros((L * D, B, H), self.dtype)
        else:
            dh_n = as_real_array("dh_n", dh_n)
            want = (L * D, H) if tape.unbatched else (L * D, B, H)
            if dh_n.shape != want:
                raise ValueError(f"dh_n: expected shape {want} (the shape of h_n), got {dh_n.shape}")
            if tape.unbatched:
                dh_n = dh_n[:, None, :]
            dh_n = np.ascontiguousarray(dh_n, dtype=self.dtype)
        if tape.perm is not None:  # the forward ran with rows sorted by length
            dy = np.ascontiguousarray(dy[:, tape.perm])
            dh_n = np.ascontiguousarray(dh_n[:, tape.perm])
        grads = {}
        dh0 = np.empty((L * D, B, H), self.dtype)
        dy_layer = dy
        # padded steps add nothing to the weight and input gradients (their gate gradients are zero):
        # where skipping them repays it, the products run over the valid steps' rows gathered
        valid = valid_steps(tape.lengths, T) if _padded(tape.lengths, T) else None
        n = 0 if valid is None else int(np.count_nonzero(valid))
        # the rows of steps [0, t) among the valid ones (a step's valid rows are contiguous)
        before = None if valid is None else np.concatenate(([0], np.cumsum(valid.reshape(T, B).sum(axis=1))))
        for layer in reversed(range(L)):
            lt = tape.layers[layer]
            x2d = lt.x.reshape(T * B, lt.x.shape[2])
            want_dx = layer > 0 or input_grad
            if want_dx:
                # (the first direction's GEMM writes it)
                dx2d = recycled(f"dx{layer}", (T * B, lt.x.shape[2]), self.dtype)
            gather = valid is not None and gather_pays(T * B, n, 3 * H, 2 * x2d.shape[1] + H, gradients=True)
            if gather:
                x2d = gathered(valid, n, x2d, "x_valid")
                dx_rows = workspace("dx_valid", x2d.shape, self.dtype) if want_dx else None
            else:
                dx_rows = dx2d if want_dx else None
            apart = D == 2 and directions_side_by_side(T, B, H, x2d.shape[1], self.dtype)
            # apart, each direction on a thread of its own as one thread runs it (the same sums): the
            # second's dx into scratch, added after as input_gradient adds it
            second = workspace("dx_direction", dx_rows.shape, self.dtype) if apart and want_dx else dx_rows
            jobs = [(tape, layer, d, dy_layer, dh_n, x2d, valid, n, before, gather, (dx_rows, second)[d],
                     d > 0 and not apart) for d in range(D)]
            if apart:
                results = one_thread_each(self._direction_backward, jobs)
                if want_dx:
                    dx_rows += second
            else:
                results = [self._direction_backward(*job) for job in jobs]
            for i, dh0_i, named in results:
                dh0[i] = dh0_i
                grads.update(named)
            if want_dx:
                if gather:
                    scattered(valid, dx_rows, dx2d)
                dx = dx2d.reshape(T, B, lt.x.shape[2])
                if lt.mask is not None:
                    dx *= lt.mask
                dy_layer = dx
            else:  # (layer 0: the loop ends here)
                dy_layer = None
        ordered = {name: grads[name] for name, _ in self._param_items()}
        dx = dy_layer
        if dx is None:
            (dh0,) = _unsort(tape.perm, dh0, names=("dh0_out",))
            return None, (dh0[:, 0, :] if tape.unbatched else dh0), ordered
        dx, dh0 = _unsort(tape.perm, dx, dh0, names=("dx_out", "dh0_out"))
        if tape.unbatched:
            return dx[:, 0, :], dh0[:, 0, :], ordered
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, dh0, ordered

    def _direction_backward(self, tape, layer, d, dy_layer, dh_n, x2d, valid, n, before, gather, dx_rows,
                            accumulate):
        """One direction's part of :meth:`backward` for ``layer``: its recurrence's backward, its weight
        gradients and its share of dx, written into ``dx_rows`` (added with ``accumulate``; None: no
        dx). Returns (i, dh0 of i, {gradient name: array})."""
        T, B, D, H = tape.T, tape.B, self.num_directions, self.hidden_size
        lt = tape.layers[layer]
        i = layer * D + d
        W_ih, W_hh, b_ih, b_hh = self._weights(i)
        dgx, dgh, hprev, rhprev, dh0_i, db_ih, db_hh = gru_direction_backward(
            dy_layer, d * H, dh_n[i], lt.gates[d], lt.y, tape.h0[i], W_hh, tape.lengths,
            d == 1 or self.go_backwards, self.reset_after, self._gate_kind, self.alpha, self.beta, self.clip)
        dgx2 = dgx.reshape(T * B, 3 * H)
        hp2 = hprev.reshape(T * B, H)
        dgh2 = None if dgh is None else dgh.reshape(T * B, dgh.shape[2])
        rh2 = None if rhprev is None else rhprev.reshape(T * B, H)
        sfx = self._suffix(layer, d)
        # gradients on buffers the last steps' gradients let go of (fresh pages faulted in
        # cost 2-3 ms of a 13 ms step at T = 2, B = 8, H = 512, float64)
        dW_ih = recycled(f"dW_ih{i}", W_ih.shape, self.dtype)
        dW_hh = recycled(f"dW_hh{i}", (3 * H, H), self.dtype)
        # dW_hh sums dG_t ⊗ h_{t−1}: the rows whose h_{t−1} is a zero h0 add nothing
        hh_rows = self._state_rows(tape, i, d == 1 or self.go_backwards)
        if gather:
            dgx2, hp2 = gathered(valid, n, dgx2, "dgx_valid"), gathered(valid, n, hp2, "hprev_valid")
            dgh2 = None if dgh2 is None else gathered(valid, n, dgh2, "dgh_valid")
            rh2 = None if rh2 is None else gathered(valid, n, rh2, "rhprev_valid")
            hh_rows = slice(before[hh_rows.start // B], before[hh_rows.stop // B])
        if T * B:
            dgx_h, hp_h = dgx2[hh_rows], hp2[hh_rows]
            if hh_rows.stop == hh_rows.start:  # one step from a zero h0
                dW_hh[...] = 0
                weight_gradient(dgx2, x2d, dW_ih)
            elif self.reset_after:  # (on two threads side by side where both take the tiles)
                if dgh2.shape[1] == H:  # dgh's n block alone: r and z are dgx's
                    hh = (dgx_h, hp_h, dW_hh, dgh2[hh_rows])
                else:
                    hh = (dgh2[hh_rows], hp_h, dW_hh, None)
                weight_gradient_pair((dgx2, x2d, dW_ih, None), hh)
            else:  # dgh is dgx; the n block multiplies r ⊙ h_{t−1}
                weight_gradient(dgx2, x2d, dW_ih)
                weight_gradient(dgx_h, hp_h, dW_hh[: 2 * H])
                weight_gradient(dgx_h, rh2[hh_rows], dW_hh[2 * H:], c0=2 * H)
            if dx_rows is not None:
                input_gradient(dgx2, W_ih, dx_rows, accumulate)
        else:
            dW_ih[...] = 0
            dW_hh[...] = 0
        named = {f"weight_ih{sfx}": dW_ih, f"weight_hh{sfx}": dW_hh}
        if self.bias:
            named[f"bias_ih{sfx}"] = db_ih
            named[f"bias_hh{sfx}"] = db_hh
        return i, dh0_i, named

    @staticmethod
    def _state_rows(tape, i, reverse):
        """The rows (of T·B, time-major) of layer and direction i's h_{t−1} that dW_hh must sum over:
        all but the first step's (the last's in reverse) where the tape's h0 is zero there, since the
        first step reads h0 in every row (in reverse only when every row runs all T steps); all
        rows otherwise."""
        T, B = tape.T, tape.B
        if T * B == 0 or tape.h0[i].any():
            return slice(0, T * B)
        if not reverse:
            return slice(B, T * B)
        if T == 1 or (tape.lengths == T).all():
            return slice(0, (T - 1) * B)
        return slice(0, T * B)

    # ------------------------------------------------------------------ streaming
    def stream(self, batch_size=1):
        """A stateful step-by-step runner; see :class:`numgru.serving.GRUStream`."""
        from .serving import GRUStream
        return GRUStream(self, batch_size)

    # ------------------------------------------------------------------ interop
    @classmethod
    def from_torch(cls, module, dtype=None):
        """Build a GRU from a ``torch.nn.GRU`` (weights copied; torch is not needed afterwards)."""
        from .interop.torch import gru_from_torch
        return gru_from_torch(cls, module, dtype)

    def to_torch(self):
        """An equivalent ``torch.nn.GRU`` (reset_after=True, sigmoid gates, no clip only)."""
        from .interop.torch import gru_to_torch
        return gru_to_torch(self)

    @classmethod
    def from_keras(cls, layer, dtype=None):
        """Build a GRU from a Keras GRU, Bidirectional(GRU) or a Sequential of GRU layers."""
        from .interop.keras import gru_from_keras
        return gru_from_keras(cls, layer, dtype)


class _ApartPlan(tuple):
    """A plan (:meth:`GRU._forward_plan`) for one thread whose two directions run side by side, one
    thread each (:func:`~numgru.kernels.dispatch.directions_apart`)."""

    __slots__ = ()


def _run_planned_direction(plan, x2d, h0, lengths, others, y, col0, h_n):
    """One direction of :meth:`GRU._run_plan` by its ``plan``: x2d (T·B, I) in, y[..., col0:col0 + H]
    and h_n (B, H) out; h0 (B, H) or None (from the zero state); ``lengths`` and ``others`` (each row's
    steps and those past its first) for padded rows, else None."""
    dtype = y.dtype
    gx = workspace("gx", (x2d.shape[0], 3 * h_n.shape[1]), dtype)
    if lengths is not None:
        run_padded_direction(plan, x2d, gx, h0, lengths, others, y, col0, h_n)
    elif h0 is not None:
        run_serial_direction(plan, x2d, gx, h0, y, col0, h_n)
    elif not run_from_zero(plan, x2d, gx, y, col0, h_n):
        run_serial_direction(plan, x2d, gx, np.zeros(h_n.shape, dtype), y, col0, h_n)


def _padded(lengths, T):
    """Whether checked ``lengths`` (B,) leave any row short of T steps: calls whose lengths are all
    T take the unpadded path (the planned one for inference), the same results at its cost."""
    return bool(lengths.shape[0] and lengths.min() < T)


def _sort_by_length(x, h0, lengths, route=None):
    """Rows in the order the kernels want for ``route`` (:func:`~numgru.kernels.dispatch.batch_order`:
    longest first, so they skip finished rows' GEMM work, or dealt to the rows route's chunks).

    Returns x, h0, lengths in that order and the permutation (None when the rows stay as they are)."""
    perm = batch_order(lengths, route)
    if perm is None:
        return x, h0, lengths, None
    return take_batch_rows(x, perm), take_batch_rows(h0, perm), np.ascontiguousarray(lengths[perm]), perm


#: buffers kept per name for the arrays :func:`_unsort` hands out (a caller holding the last result
#: while asking for the next one still finds a free one)
UNSORTED_KEEP = 2


def _unsort(perm, *arrays, names):
    """Undo :func:`_sort_by_length` on (·, B, ·) arrays; returns them as a tuple, on
    :func:`~numgru.kernels.dispatch.recycled` buffers of ``names`` (one per array): fresh pages
    faulted in on every call (T = 100, B = 32, H = 256, bidirectional, padded, two threads: 964
    faults and 3.9 ms of a 14.9 ms call to put y back in order; 0 and 1.5 on recycled buffers)."""
    if perm is None:
        return arrays
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return tuple(take_batch_rows(a, inv, recycled(name, a.shape, a.dtype, UNSORTED_KEEP))
                 for a, name in zip(arrays, names))


@dataclass
class _LayerTape:
    x: np.ndarray            # (T, B, I_k) input of the layer, after dropout
    y: np.ndarray            # (T, B, D·H) output of the layer
    gates: list              # per direction (T, B, 4H): r, z, n, W_hn h + b_hn
    mask: np.ndarray | None  # dropout mask applied to x, or None


@dataclass
class GRUTape:
    """What :meth:`GRU.forward_train` keeps for :meth:`GRU.backward`. Treat as opaque."""
    model: object
    layers: list
    h0: np.ndarray
    lengths: np.ndarray
    unbatched: bool
    T: int
    B: int
    perm: np.ndarray | None = None


class GRUCell(_Params):
    r"""One GRU step (PyTorch's ``nn.GRUCell``): ``h1 = cell(x, h)``.

    Same equations and parameters as :class:`GRU` with one layer (names ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``). x: (B, I) or unbatched (I,); h: (B, H) or (H,), zeros when None.

    Examples
    --------
    >>> import numpy as np, numgru as ng
    >>> cell = ng.GRUCell(4, 8, seed=0)
    >>> cell(np.ones((2, 4), np.float32)).shape
    (2, 8)
    """

    def __init__(self, input_size, hidden_size, *, bias=True, reset_after=True,
                 gate_activation="sigmoid", alpha=None, beta=None, clip=None, dtype=np.float32,
                 seed=None):
        self._gru = GRU(input_size, hidden_size, 1, bias=bias, reset_after=reset_after,
                        gate_activation=gate_activation, alpha=alpha, beta=beta, clip=clip,
                        dtype=dtype, seed=seed)
        self._len1 = np.ones(1, np.int64)
        self._plans = {}  # (B, threads) -> the fast path's kernel arguments; see _step_args
        self._backwards = False  # the direction the last step swept the weights (gru_step)

    @staticmethod
    def _config_count(config):
        """:meth:`GRU._config_count` of one layer and direction."""
        return GRU._config_count({k: v for k, v in config.items()
                                  if k in ("input_size", "hidden_size", "bias")})

    input_size = property(lambda self: self._gru.input_size)
    hidden_size = property(lambda self: self._gru.hidden_size)
    bias = property(lambda self: self._gru.bias)
    reset_after = property(lambda self: self._gru.reset_after)
    dtype = property(lambda self: self._gru.dtype)

    def get_config(self):
        cfg = self._gru.get_config()
        for k in ("num_layers", "batch_first", "dropout", "bidirectional"):
            cfg.pop(k)
        return cfg

    def __repr__(self):
        q = ", quantized='bfloat16'" if self.quantized else ""
        q += ", frozen=True" if self.frozen else ""
        return f"GRUCell({self.input_size}, {self.hidden_size}, reset_after={self.reset_after}{q})"

    @property
    def quantized(self):
        """``"bfloat16"`` for a cell made by :meth:`quantize`, else None."""
        return self._gru.quantized

    def quantize(self, weights="bfloat16"):
        """An inference copy with bfloat16 weights; see :meth:`GRU.quantize`."""
        q = copy.copy(self)
        q._gru = self._gru.quantize(weights)
        q._plans = {}
        return q

    @property
    def frozen(self):
        """True for a cell made by :meth:`freeze`."""
        return self._gru.frozen

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plans"] = {}  # built again on first use, from the arrays the loaded layer holds
        return state

    def freeze(self):
        """An inference copy with its weight matrices packed once for the step kernel; see
        :meth:`GRU.freeze`. Example: ``fast = cell.freeze(); h1 = fast(x, h)``."""
        q = copy.copy(self)
        q._gru = self._gru.freeze()
        q._plans = {}
        return q

    def load_state_dict(self, state_dict, strict=True):
        self._gru._check_trainable()
        return super().load_state_dict(state_dict, strict)

    load_state_dict.__doc__ = _Params.load_state_dict.__doc__

    def _param_items(self):
        for name, p in self._gru._param_items():
            yield name[: -len("_l0")], p

    def _prepare(self, x, h):
        x = as_real_array("x", x)
        if x.ndim not in (1, 2):
            raise ValueError(f"x: expected a 1-D (I,) or 2-D (B, I) array, got {x.ndim}-D")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected input_size {self.input_size} in the last dimension, "
                             f"got {x.shape[-1]}")
        unbatched = x.ndim == 1
        x2 = x[None, :] if unbatched else x
        B = x2.shape[0]
        if h is not None:
            h = as_real_array("h", h)
            want = (self.hidden_size,) if unbatched else (B, self.hidden_size)
            if h.shape != want:
                raise ValueError(f"h: expected shape {want}, got {h.shape}")
            h = h.reshape(1, 1, B, self.hidden_size)[0]
        else:
            h = np.zeros((1, B, self.hidden_size), self.dtype)
        return np.ascontiguousarray(x2[None], dtype=self.dtype), np.ascontiguousarray(h, self.dtype), unbatched

    def __call__(self, x, h=None):
        return self.forward(x, h)

    def forward(self, x, h=None):
        """One step. Returns h1 with h's shape."""
        if type(x) is np.ndarray and x.dtype == self._gru.dtype:
            if x.ndim == 2:
                out = self._fast_step(x, h)
                if out is not None:
                    return out
            elif x.ndim == 1 and (h is None or type(h) is np.ndarray and h.ndim == 1):
                # unbatched (I,) and (H,), as torch's GRUCell takes them: the same fast path on
                # one-row views (the general path below had doubled the step at B = 1, H = 256)
                out = self._fast_step(x[None], None if h is None else h[None])
                if out is not None:
                    return out[0]
        x3, h0, unbatched = self._prepare(x, h)
        B = x3.shape[1]
        if h is None and B * self.hidden_size ** 2 >= CELL_FROM_ZERO_MIN_WORK:
            h_n = self._gru._from_zero(x3)[1]
        else:
            _, h_n, _ = self._gru._run(x3, h0, np.ones(B, np.int64), store=False, scratch_out=True)
        return h_n[0, 0] if unbatched else h_n[0]

    def _fast_step(self, x, h):
        """:meth:`forward` of x (B, I) of the model's dtype and h (B, H) or None by the step kernels
        with no conversion, or None where x or h would need one (or is wrong: the general path says
        how)."""
        g = self._gru
        dtype = g.dtype
        B, I = x.shape
        H = g.hidden_size
        if not (B > 0 and I == g.input_size and (h is None or (
                type(h) is np.ndarray and h.dtype == dtype and h.shape == (B, H)))):
            return None
        # one fused kernel call, workspace allocated per call (thread-safe). Its Python is part of a
        # step's time twice over at H = 256, where the weights fill most of L2: attributes read
        # once, the kernels' arguments kept per batch size.
        xk = x.flags.num
        if not xk & C_CONTIGUOUS:
            x = np.ascontiguousarray(x)
            xk = x.flags.num
        if h is None:
            if B * H * H >= CELL_FROM_ZERO_MIN_WORK:
                return g._from_zero(x[None])[1][0]
            h = np.zeros((B, H), dtype)
        hk = h.flags.num
        if not hk & C_CONTIGUOUS:
            h = np.ascontiguousarray(h)
            hk = h.flags.num
        args, columns, tiled_max, no_work, entries, digits, rows, lean = self._step_args(B)
        if rows:  # as a forward of one step, its chunks of rows on shared panels (h0 owned,
            # as GRU's checks make it: the kernels' one signature for it)
            return g._infer(x[None], np.array(h[None]), np.ones(B, np.int64), padded=False)[1][0]
        out = np.empty((B, H), dtype)
        # successive steps sweep the weights in opposite directions (gru_step's
        # ``backwards``; two threads racing on the flag only change which way a step reads)
        backwards = self._backwards = not self._backwards
        if digits is not None:
            split, digits = digits
            if split:
                gi, gh = np.empty((1, 3 * H), dtype), np.empty((1, 3 * H), dtype)
                run_step_digits(x, h, digits, out, gi, gh, _NO_DIGIT_WORK,
                                step_digits_columns_work(g.input_size, H, thread_count()),
                                backwards, g.reset_after)
                return out
            kind = (xk & ARRAY_KIND) | (hk & ARRAY_KIND) << 16 | 1 << 32
            planned_call(entries, kind, gru_step_vnni if g.reset_after else gru_step_vnni_before, x, h,
                         *digits, out, no_work, no_work, _NO_DIGIT_WORK, backwards)
            return out
        if columns:
            gi, gh = np.empty((B, 3 * H), dtype), np.empty((B, 3 * H), dtype)
            run_step(x, h, args[:5], args[5:], out, gi, gh, step_columns_workspace(B, H, columns, dtype), tiled_max,
                     backwards, entries, (xk & ARRAY_KIND) | (hk & ARRAY_KIND) << 16 | 2 << 32)
            return out
        # x and h are C-contiguous (made so above): their alignment and writeability tell their
        # Numba types apart
        kind = (xk & ARRAY_KIND) | (hk & ARRAY_KIND) << 16
        if lean:  # gru_cell_step: the weights by a plan of addresses, made for each kind of x and h
            call = entries.get(kind)
            if call is None:
                plan, values = step_layers_plan(x, h, [args[:5]], args[5:], tiled_max)
                gru_cell_step(x, h, out, plan, values, backwards)
                entries[kind] = (compiled_entry(gru_cell_step, (x, h, out, plan, values, backwards)) or gru_cell_step,
                                 plan, values)
                return out
            call[0](x, h, out, call[1], call[2], backwards)
            return out
        # (no_work: the kernel allocates its workspace)
        planned_call(entries, kind, gru_step, x, h, *args, out, no_work, no_work, tiled_max,
                     backwards)
        return out

    def _step_args(self, B):
        """``(args, columns, tiled_max, no_work, entries, digits, rows, lean)`` of a step of B rows for the current
        thread count, kept per (B, threads): args the weights and scalars as
        :func:`~numgru.kernels.step.gru_step` takes them (the weight arrays are updated in place, so
        they stay current), columns the thread count where the step is split over hidden units (else
        0), no_work the empty workspace that lets the kernel allocate its own, entries the kernels'
        compiled entries per kind of input (:func:`~numgru.kernels._jit.planned_call`), digits a frozen
        model's arguments for :func:`~numgru.kernels.vnni.gru_step_vnni` where its step takes them
        (:meth:`GRU._step_digits`), else None, rows whether the step runs as a forward of one step
        (:meth:`GRU._one_step_on_rows`), lean whether the serial step runs as
        :func:`~numgru.kernels.stack.gru_cell_step` (float weights and panels,
        :func:`~numgru.kernels.dispatch.step_layer_stackable`; entries then keep ``(entry, plan,
        values)`` per kind of input)."""
        threads = thread_count()
        plan = self._plans.get((B, threads))
        if plan is None:
            g = self._gru
            _, columns = g._step_plan(B)
            rows = g._one_step_on_rows(B, threads)
            weights = g._step_weights(0, B, threads, columns)
            plan = ((*weights, *g._kernel_scalars()),
                    threads if columns else 0, inference_tiled_max(threads, B), empty_array(g.dtype, 2), {},
                    g._step_digits(0, B, threads, columns), rows, step_layer_stackable(weights, g.dtype))
            self._plans[(B, threads)] = plan
        return plan

    def forward_train(self, x, h=None):
        """One step that records a tape. Returns ``(h1, tape)``."""
        self._gru._check_trainable()
        x3, h0, unbatched = self._prepare(x, h)
        B = x3.shape[1]
        _, h_n, layers = self._gru._run(x3, h0, np.ones(B, np.int64), store=True, from_zero=h is None)
        tape = GRUTape(model=self, layers=layers, h0=h0, lengths=np.ones(B, np.int64),
                       unbatched=unbatched, T=1, B=B)
        return (h_n[0, 0] if unbatched else h_n[0]), tape

    def backward(self, tape, dh1, *, input_grad=True):
        """Gradients of one step. Returns ``(dx, dh, grads)``; dx is None with ``input_grad=False``
        (as in :meth:`GRU.backward`)."""
        if not isinstance(tape, GRUTape) or tape.model is not self:
            raise TypeError("tape: expected the tape returned by this cell's forward_train")
        input_grad = check_bool("input_grad", input_grad)
        dh1 = as_real_array("dh1", dh1)
        want = (self.hidden_size,) if tape.unbatched else (tape.B, self.hidden_size)
        if dh1.shape != want:
            raise ValueError(f"dh1: expected shape {want}, got {dh1.shape}")
        inner = GRUTape(model=self._gru, layers=tape.layers, h0=tape.h0, lengths=tape.lengths,
                        unbatched=False, T=1, B=tape.B)
        dh_n = np.ascontiguousarray(dh1.reshape(1, tape.B, self.hidden_size), dtype=self.dtype)
        dx, dh0, grads = self._gru.backward(inner, None, dh_n, input_grad=input_grad)
        grads = {k[: -len("_l0")]: v for k, v in grads.items()}
        row = (0, 0) if tape.unbatched else 0
        return (None if dx is None else dx[row]), dh0[row], grads

    @classmethod
    def from_torch(cls, cell, dtype=None):
        """Build a GRUCell from a ``torch.nn.GRUCell``."""
        from .interop.torch import cell_from_torch
        return cell_from_torch(cls, cell, dtype)

    def to_torch(self):
        """An equivalent ``torch.nn.GRUCell`` (reset_after=True, sigmoid gates, no clip only)."""
        from .interop.torch import cell_to_torch
        return cell_to_torch(self)


class Linear(_Params):
    """Affine map ``y = x @ weight.T + bias`` over the last axis (PyTorch's ``nn.Linear``).

    x: (..., in_features) → y: (..., out_features). Same training protocol as :class:`GRU`:
    ``y, tape = lin.forward_train(x)``; ``dx, grads = lin.backward(tape, dy)``.
    """

    def __init__(self, in_features, out_features, *, bias=True, dtype=np.float32, seed=None):
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        self.bias = check_bool("bias", bias)
        self.dtype = check_dtype("dtype", dtype)
        self.seed = check_int("seed", seed, minimum=0, allow_none=True)
        rng = np.random.default_rng(self.seed)
        k = 1.0 / math.sqrt(self.in_features)
        try:
            self.weight = rng.uniform(-k, k, (self.out_features, self.in_features)).astype(self.dtype)
        except MemoryError:
            raise _too_large("in_features, out_features", self.in_features * self.out_features, self.dtype) from None
        self.b = rng.uniform(-k, k, self.out_features).astype(self.dtype) if self.bias else None

    @staticmethod
    def _config_count(config):
        """How many parameter values a Linear built from ``config`` holds (None: sizes not ints)."""
        n, m = config.get("in_features"), config.get("out_features")
        if not (_plain_int(n) and _plain_int(m)):
            return None
        return m * n + (m if config.get("bias", True) else 0)

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias,
                    dtype=self.dtype.name, seed=self.seed)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias})"

    def _param_items(self):
        yield "weight", self.weight
        if self.bias:
            yield "bias", self.b

    def _prepare(self, x):
        x = as_real_array("x", x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected in_features {self.in_features} in the last dimension, "
                             f"got shape {x.shape}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        x = self._prepare(x)
        y = x @ self.weight.T
        if self.bias:
            y += self.b
        return y

    def forward_train(self, x):
        x = self._prepare(x)
        return self.forward(x), {"model": self, "x": x}

    def backward(self, tape, dy):
        if not isinstance(tape, dict) or tape.get("model") is not self:
            raise TypeError("tape: expected the tape returned by this layer's forward_train")
        x = tape["x"]
        dy = as_real_array("dy", dy)
        want = x.shape[:-1] + (self.out_features,)
        if dy.shape != want:
            raise ValueError(f"dy: expected shape {want}, got {dy.shape}")
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        dy2 = dy.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        grads = {"weight": dy2.T @ x2}
        if self.bias:
            grads["bias"] = dy2.sum(axis=0)
        return (dy2 @ self.weight).reshape(x.shape), grads

