"""Optimizers that update ``named_parameters()`` in place with fused Numba kernels.

Usage::

    opt = ng.optim.Adam(model.named_parameters(), lr=1e-3)
    y, h_n, tape = model.forward_train(x)
    dx, dh0, grads = model.backward(tape, dy)
    ng.optim.clip_grad_norm(grads, 1.0)
    opt.step(grads)

``params`` is an iterable of ``(name, array)`` pairs or a mapping name -> array (arrays updated in
place, so they must be the model's live arrays); ``grads`` in :meth:`step` maps the same names to
gradients. Parameters without a gradient in ``grads`` are left alone (PyTorch skips ``grad is None``).
Several models: ``[*gru.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]``.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import as_real_array, check_bool, check_float
from ..kernels.dispatch import equal_runs, side_by_side, thread_count
from ..kernels.optim import adam_update, rmsprop_update, sgd_update, sum_of_squares

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "clip_grad_norm", "Optimizer"]

#: Fewer bytes of float32 parameters in all than this and a step updates them on the calling thread
#: alone (float64 ones always: their update runs at the memory's rate on one thread). Zen 4, two
#: threads, Adam's update within whole training steps (medians, ms, one thread against two): float32
#: 4.4 M values (17.6 MB) 4.1 against 2.3 (float32 values are updated in float64, so one thread
#: ran at half the memory's rate); float32 1.8 M values (7 MB) 1.7–1.9 against 1.9–2.0; float64
#: 2.4 M values (19 MB) 2.6–6.3 against 2.7–5.8, no better.
UPDATE_PARALLEL_MIN_BYTES = 16 << 20


def _run_pieces(pieces):
    for fn, args in pieces:
        fn(*args)


def _update_shares(updates, threads):
    """The updates cut into at most ``threads`` lists of equal work (:func:`~numgru.kernels.dispatch.
    equal_runs` of the parameters' values, at multiples of 64), each a list of (kernel, args) pieces,
    the slices of the parameters it covers."""
    runs = equal_runs([arrays[0].size for _, arrays, _ in updates], [1] * len(updates), threads, 64)
    return [[(updates[j][0], (*(a[r0:r1] for a in updates[j][1]), *updates[j][2])) for j, r0, r1 in run]
            for run in runs]


class Optimizer:
    """Base class: holds live parameters by name, validates gradients, counts steps."""

    def __init__(self, params, lr, maximize=False):
        try:
            items = list(params.items()) if hasattr(params, "items") else list(params)
        except TypeError:
            raise TypeError(f"params: expected a mapping or an iterable of (name, array) pairs, e.g. "
                            f"model.named_parameters(), got {type(params).__name__}") from None
        if not items:
            raise ValueError("params: expected at least one (name, array) pair, got none")
        self.params = {}
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise TypeError("params: expected (name, array) pairs, e.g. model.named_parameters()")
            name, p = item
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}]: expected a float numpy array, got {type(p).__name__}")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"params[{name!r}]: expected a writeable C-contiguous array (the "
                                 "model's live parameter)")
            if name in self.params:
                raise ValueError(f"params: duplicate name {name!r}")
            self.params[name] = p
        self.lr = check_float("lr", lr, low=0.0)
        self.maximize = check_bool("maximize", maximize)
        # arrays that overlap (a parameter listed twice) are updated in their order, on one thread
        arrays = list(self.params.values())
        self._disjoint = not any(np.may_share_memory(a, b) for k, a in enumerate(arrays) for b in arrays[:k])
        self.state = {name: {} for name in self.params}
        self.step_count = 0

    def _flat_grads(self, grads):
        if not hasattr(grads, "items"):
            raise TypeError(f"grads: expected a dict name -> array, got {type(grads).__name__}")
        out = {}
        for name, g in grads.items():
            if name not in self.params:
                raise ValueError(f"grads: unknown parameter {name!r}; expected names among "
                                 f"{sorted(self.params)[:6]}...")
            p = self.params[name]
            g = as_real_array(f"grads[{name!r}]", g)
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}]: expected shape {p.shape}, got {g.shape}")
            out[name] = np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)
        return out

    def _buf(self, name, key):
        st = self.state[name]
        if key not in st:
            st[key] = np.zeros(self.params[name].size, self.params[name].dtype)
        return st[key]

    def step(self, grads):
        """Apply one update from ``grads`` (name -> gradient).

        Every value's update reads only that value's parameter, gradient and state, so on several
        threads (``numba.set_num_threads``), from ``UPDATE_PARALLEL_MIN_BYTES`` of float32 parameters,
        those are cut in one run of equal length a thread, updated side by side, with the same results
        as on one."""
        flat = self._flat_grads(grads)
        if self.maximize:  # ascend: the gradient's negative from the start, as torch's maximize
            flat = {name: -g for name, g in flat.items()}
        self.step_count += 1
        updates = [self._update(name, self.params[name].reshape(-1), g) for name, g in flat.items()]
        split = [u for u in updates if u[1][0].dtype == np.float32]
        threads = thread_count()
        if threads < 2 or not self._disjoint or \
                sum(arrays[0].nbytes for _, arrays, _ in split) < UPDATE_PARALLEL_MIN_BYTES:
            split = []
        for fn, arrays, scalars in updates:
            if not split or arrays[0].dtype != np.float32:
                fn(*arrays, *scalars)
        if split:
            side_by_side(_run_pieces, [(pieces,) for pieces in _update_shares(split, threads)], threads)

    def _update(self, name, p, g):
        """The update of one parameter: (kernel, arrays, scalars) for ``kernel(*arrays, *scalars)``,
        its arrays 1-D of p's length (p first), advancing any per-parameter count."""
        raise NotImplementedError

    def zero_state(self):
        """Forget momentum/moment buffers and the step count."""
        self.state = {name: {} for name in self.params}
        self.step_count = 0


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay (torch.optim.SGD,
    whose defaults it keeps: lr 1e-3). Every optimizer takes ``maximize`` (keyword only) as torch's do:
    it steps up the gradient."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False):
        super().__init__(params, lr, maximize)
        self.momentum = check_float("momentum", momentum, low=0.0)
        self.dampening = check_float("dampening", dampening)
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.nesterov = check_bool("nesterov", nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening == 0")

    def _update(self, name, p, g):
        first = "momentum_buffer" not in self.state[name]
        buf = self._buf(name, "momentum_buffer")
        return sgd_update, (p, g, buf), (self.lr, self.momentum, self.dampening, self.weight_decay,
                                         self.nesterov, first)


class Adam(Optimizer):
    """Adam (torch.optim.Adam): L2 weight decay added to the gradient; optional AMSGrad."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, maximize)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (check_float("betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
                      check_float("betas[1]", betas[1], low=0.0, high=1.0, high_open=True))
        self.eps = check_float("eps", eps, low=0.0)
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.amsgrad = check_bool("amsgrad", amsgrad)

    def _update(self, name, p, g):
        st = self.state[name]
        st["step"] = st.get("step", 0) + 1
        b1, b2 = self.betas
        m, v = self._buf(name, "exp_avg"), self._buf(name, "exp_avg_sq")
        vmax = self._buf(name, "max_exp_avg_sq") if self.amsgrad else v
        return adam_update, (p, g, m, v, vmax), (self.lr, b1, b2, self.eps, self.weight_decay, self._decoupled,
                                                 self.amsgrad, 1.0 - b1 ** st["step"], 1.0 - b2 ** st["step"])


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): decoupled weight decay, default 1e-2."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop) with optional momentum and centering."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        super().__init__(params, lr, maximize)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        self.eps = check_float("eps", eps, low=0.0)
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.momentum = check_float("momentum", momentum, low=0.0)
        self.centered = check_bool("centered", centered)

    def _update(self, name, p, g):
        sq = self._buf(name, "square_avg")
        gavg = self._buf(name, "grad_avg") if self.centered else sq
        buf = self._buf(name, "momentum_buffer") if self.momentum > 0 else sq
        return rmsprop_update, (p, g, sq, gavg, buf), (self.lr, self.alpha, self.eps, self.weight_decay,
                                                       self.momentum, self.centered)


def clip_grad_norm(grads, max_norm, norm_type=2.0):
    """Scale the gradients in ``grads`` (a dict name -> array, modified in place) so that their joint
    norm is at most ``max_norm``; returns the total norm before clipping (torch's clip_grad_norm_).
    ``norm_type``: p > 0 of the p-norm over all values, or ``inf`` (the largest magnitude).
    """
    if not hasattr(grads, "items"):
        raise TypeError(f"grads: expected a dict name -> array, got {type(grads).__name__}")
    max_norm = check_float("max_norm", max_norm, low=0.0)
    if isinstance(norm_type, str) and norm_type == "inf":
        norm_type = float("inf")
    norm_type = check_float("norm_type", norm_type, low=0.0, low_open=True, allow_inf=True)
    arrays = []
    for name, g in grads.items():
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError(f"grads[{name!r}]: expected a float numpy array")
        arrays.append(g)
    if norm_type == float("inf"):
        total = max((float(np.abs(g).max()) for g in arrays if g.size), default=0.0)
    elif norm_type == 2.0:
        total = math.sqrt(sum(sum_of_squares(np.ascontiguousarray(g).reshape(-1)) for g in arrays))
    else:
        total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in arrays) ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in arrays:
            g *= g.dtype.type(coef)
    return total
