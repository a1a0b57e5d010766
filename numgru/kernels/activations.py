"""Scalar activations inlined into the GRU kernels.

Gate activations are selected by an integer code passed as a kernel argument (never a global):

``GATE_SIGMOID = 0``
    σ(x) = 1 / (1 + exp(−x)).
``GATE_HARD_SIGMOID = 1``
    clip(alpha·x + beta, 0, 1).

The candidate activation is tanh. ``clip_pre`` implements ONNX's ``clip`` attribute (applied to the
pre-activations of every gate) without comparisons that would turn NaN into a bound.

float32 uses a rational approximation of tanh (the form Eigen uses for ``ptanh``: odd polynomial of
degree 13 over even polynomial of degree 6 on [−7.9, 7.9], then ±1), and σ(x) = ½ + ½·tanh(x/2). Both
are plain arithmetic, so LLVM vectorises the fused gate loop, where a libm call per element would not
be; the error against float64 stays below 3e-7 absolute for tanh and 2e-7 for σ, and 3e-7 relative
for tanh near 0 down to |x| = 1e-36, below which p leaves the normal range
(``tests/test_activations.py``), with no branch for small |x| (p carries the factor x; the branch cost
a compare and a blend an activation, 0.6 of 5.2 µs a step in the inference gate loop at B = 64,
H = 64). float64 keeps libm's ``exp`` and ``tanh`` for 1e-10 parity with PyTorch. All forms are
finite for |x| up to 1e30 and pass NaN through.
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

from ._jit import FASTMATH, inline

GATE_SIGMOID = 0
GATE_HARD_SIGMOID = 1

_F32 = np.float32


def tanh_fast(x):
    """tanh; float32 via a vectorisable rational approximation (Python fallback: math.tanh)."""
    return math.tanh(x)


def sigmoid_fast(x):
    """Logistic sigmoid; float32 via tanh_fast (Python fallback: exact)."""
    return 1.0 / (1.0 + math.exp(-x))


def one_like(x):
    """1 in x's type (a float literal would promote float32 arithmetic to float64)."""
    return 1.0


@overload(one_like, jit_options={"fastmath": set(FASTMATH)})
def _ol_one_like(x):
    if x == types.float32:
        return lambda x: _F32(1.0)
    return lambda x: 1.0


@overload(tanh_fast, jit_options={"fastmath": set(FASTMATH)})
def _ol_tanh_fast(x):
    if x == types.float32:
        def impl(x):
            c = _F32(7.90531110763549805)
            v = x
            if v > c:
                v = c
            elif v < -c:
                v = -c
            x2 = v * v
            p = _F32(-2.76076847742355e-16)
            p = p * x2 + _F32(2.00018790482477e-13)
            p = p * x2 + _F32(-8.60467152213735e-11)
            p = p * x2 + _F32(5.12229709037114e-08)
            p = p * x2 + _F32(1.48572235717979e-05)
            p = p * x2 + _F32(6.37261928875436e-04)
            p = p * x2 + _F32(4.89352455891786e-03)
            p = p * v
            q = _F32(1.19825839466702e-06)
            q = q * x2 + _F32(1.18534705686654e-04)
            q = q * x2 + _F32(2.26843463243900e-03)
            q = q * x2 + _F32(4.89352518554385e-03)
            res = p / q  # near 0 as well: p = v·(…), so p / q keeps x's relative accuracy there
            if x > c:
                res = _F32(1.0)
            elif x < -c:
                res = _F32(-1.0)
            return res
        return impl
    return lambda x: math.tanh(x)


@overload(sigmoid_fast, jit_options={"fastmath": set(FASTMATH)})
def _ol_sigmoid_fast(x):
    if x == types.float32:
        def impl(x):
            return _F32(0.5) + _F32(0.5) * tanh_fast(_F32(0.5) * x)
        return impl
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@inline
def kind_is_sigmoid(kind):
    return kind == 0


@inline
def gate(x, kind, alpha, beta):
    """Gate activation of one pre-activation ``x`` (alpha, beta of x's dtype)."""
    if kind == 0:
        return sigmoid_fast(x)
    v = alpha * x + beta
    one = one_like(v)
    if v < 0:
        return one - one
    if v > one:
        return one
    return v


@inline
def gate_grad(out, kind, alpha):
    """d gate / d pre-activation, from the gate's output ``out``."""
    one = one_like(out)
    if kind == 0:
        return out * (one - out)
    if out > 0 and out < one:
        return alpha
    return one - one


@inline
def clip_pre(x, use_clip, c):
    """ONNX ``clip``: bound x to [−c, c] when ``use_clip``; NaN stays NaN."""
    if use_clip:
        if x > c:
            return c
        if x < -c:
            return -c
    return x


@inline
def clipped(x, use_clip, c):
    """1 when ONNX's clip changes x (|x| > c), else 0; NaN is never clipped."""
    if use_clip and (x > c or x < -c):
        return 1
    return 0
