"""bfloat16 weight storage for inference: weights kept as the top 16 bits of their float32 values.

A GEMV at B = 1 reads all of W_hh every step and runs at the speed the cache delivers it: from L3 once
W_hh outgrows L2 (float32, H ≥ ~300 on a 1 MB L2). Storing the weights as bfloat16 halves those bytes.
The kernels widen each value in registers (a shift: bfloat16 is float32 with the low 16 mantissa bits
cut), so every product and sum stays float32; only the weights carry bfloat16's precision (8 significant
bits: a relative rounding error of at most 2⁻⁸ ≈ 0.4 %).

Arrays of bfloat16 values are ``uint16`` arrays here (NumPy has no bfloat16 dtype). Kernels read weight
elements through :func:`wget`, which is ``w[k]`` for float arrays and a widening load for ``uint16`` ones,
so one matmul source serves both storages and each compiles to its own machine code.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import FASTMATH


def to_bfloat16(a):
    """float32 array → uint16 array of the nearest bfloat16 values (ties to even; NaN stays NaN,
    values beyond bfloat16's range become ±inf, as a float32 → bfloat16 cast does)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)  # keep sign, quiet NaN
    return out


def from_bfloat16(b):
    """uint16 array of bfloat16 values → float32 array (exact)."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def is_bfloat16_array(t):
    """Whether the Numba type ``t`` is an array of bfloat16 values (``uint16``), for overloads."""
    return isinstance(t, types.Array) and t.dtype == types.uint16


@intrinsic
def widen(typingctx, u):
    """float32 whose bits are ``u << 16`` (one bfloat16 value, exactly)."""
    if u != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        v = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(types.uint16), codegen


def wget(w, k):
    """w[k] as a float: the element itself, or the widened bfloat16 value of a ``uint16`` array."""
    return w[k]


@overload(wget, jit_options={"fastmath": set(FASTMATH)})
def _ol_wget(w, k):
    if is_bfloat16_array(w):
        return lambda w, k: widen(w[k])
    return lambda w, k: w[k]


def is_bfloat16(w):
    """Whether the array ``w`` holds bfloat16 values (``uint16``); a compile-time constant in kernels."""
    return w.dtype == np.uint16


@overload(is_bfloat16, jit_options={"fastmath": set(FASTMATH)})
def _ol_is_bfloat16(w):
    bf16 = is_bfloat16_array(w)
    return lambda w: bf16
