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
H = 64). float64 builds both from its own exp (:func:`_exp_reduced`: a reduction by ln 2, a Taylor
polynomial and the power of two written into the exponent bits), also plain arithmetic: tanh within
5e-16 relative of libm's over the whole range (near 0 too, through expm1), σ within 2.3e-16
absolute (2e-15 relative for x ≥ −40), each saturating to the exact ±1, 0 and 1 libm gives; libm's
calls, one an element, had made float64's gate loop 5–6× slower (4.5 against 22–29 ns a state
value, one thread, Zen 4) and float64 forwards at B ≥ 16 slower than PyTorch's. All forms are finite
for every finite x and pass NaN through.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import FASTMATH, inline

GATE_SIGMOID = 0
GATE_HARD_SIGMOID = 1

_F32 = np.float32


#: float64 exp's reduction: x = n·ln 2 + r, |r| ≤ ln 2 / 2, with ln 2 in two parts (fdlibm's: the first
#: has 11 trailing zero bits, so n·``_LN2_HI`` is exact for |n| < 2¹¹)
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: float64 tanh's argument is clamped there (tanh is 1 to the last bit from 19.1), σ's exp to
#: [``_F64_EXP_LO``, ``_F64_EXP_HI``]: exp is 0 below the first and overflows to ∞ above the second
_F64_TANH_CLAMP = 354.0
_F64_EXP_LO = -746.0
_F64_EXP_HI = 710.0


@intrinsic
def _f64_of_bits(typingctx, i):
    """The float64 whose bits are the int64 i (a bitcast, which vectorises where ``view`` cannot)."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(i), codegen


@inline
def _pow2(n):
    """2ⁿ for a float64 holding an integer n in [−1022, 1023]."""
    return _f64_of_bits((np.int64(n) + np.int64(1023)) << np.int64(52))


@inline
def _exp_reduced(x):
    """``(n, e)`` with exp(x) = 2ⁿ·(1 + e) for float64 x (|x| ≤ 746): n = round(x / ln 2) (a float64)
    and e = exp(r) − 1, r = x − n·ln 2 (|r| ≤ 0.347), by its Taylor series to r¹³/13! (the first term
    left out is below 2e-16 of e^r), so that expm1(x) = 2ⁿ·e + (2ⁿ − 1) keeps its relative accuracy
    near 0. Plain arithmetic, so a loop of them vectorises (libm's exp did not: a call an element,
    10× the time of tanh and σ here together, 20 against 1.8 ns)."""
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    q = 1.0 / 6227020800.0
    q = q * r + 1.0 / 479001600.0
    q = q * r + 1.0 / 39916800.0
    q = q * r + 1.0 / 3628800.0
    q = q * r + 1.0 / 362880.0
    q = q * r + 1.0 / 40320.0
    q = q * r + 1.0 / 5040.0
    q = q * r + 1.0 / 720.0
    q = q * r + 1.0 / 120.0
    q = q * r + 1.0 / 24.0
    q = q * r + 1.0 / 6.0
    q = q * r + 0.5
    q = q * r + 1.0
    return n, r * q


def tanh_fast(x):
    """tanh; float32 via a vectorisable rational approximation, float64 via :func:`_exp_reduced`
    (Python fallback: math.tanh)."""
    return math.tanh(x)


def sigmoid_fast(x):
    """Logistic sigmoid; float32 via tanh_fast, float64 via :func:`_exp_reduced` (Python fallback:
    exact)."""
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
    if x == types.float64:
        def impl64(x):
            # tanh |x| = −u / (2 + u), u = expm1(−2|x|) ∈ (−1, 0]: the quotient keeps u's relative
            # accuracy near 0, and from |x| = 19.1 it is 1 to the last bit
            a = abs(x)
            if a > _F64_TANH_CLAMP:
                a = _F64_TANH_CLAMP
            n, e = _exp_reduced(-2.0 * a)
            s = _pow2(n)
            u = s * e + (s - 1.0)
            return math.copysign(-u / (2.0 + u), x)
        return impl64
    return lambda x: math.tanh(x)


@overload(sigmoid_fast, jit_options={"fastmath": set(FASTMATH)})
def _ol_sigmoid_fast(x):
    if x == types.float32:
        def impl(x):
            return _F32(0.5) + _F32(0.5) * tanh_fast(_F32(0.5) * x)
        return impl
    if x == types.float64:
        def impl64(x):
            v = -x
            if v > _F64_EXP_HI:
                v = _F64_EXP_HI
            if v < _F64_EXP_LO:
                v = _F64_EXP_LO
            n, e = _exp_reduced(v)
            n1 = n  # 2ⁿ as 2^n1 · 2^(n − n1), each a normal number: exp underflows and overflows as it should
            if n1 > 1023.0:
                n1 = 1023.0
            if n1 < -1022.0:
                n1 = -1022.0
            return 1.0 / (1.0 + (_pow2(n1) * (1.0 + e)) * _pow2(n - n1))
        return impl64
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
