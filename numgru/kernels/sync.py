"""Atomic operations on int64 arrays and a spin-wait hint, for kernels whose threads meet every step
inside one parallel region (:func:`~numgru.kernels.forward._gru_forward_cols`) instead of entering a
region per step.

Sequentially consistent, so a thread that reads a counter another thread has raised also sees every
value that thread wrote before raising it. Each takes an array and an element index; the callers
check the index (the operations read raw pointers).
"""
import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _int64_array(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64 and a.layout == "C"


def _pointer(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [idx])


@intrinsic
def atomic_load(typingctx, a, i):
    """a[i], read atomically."""
    if not (_int64_array(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], context.cast(builder, args[1], sig.args[1],
                                                                            types.intp))
        return builder.load_atomic(ptr, "seq_cst", 8)
    return types.int64(a, i), codegen


@intrinsic
def atomic_add(typingctx, a, i, v):
    """a[i] += v atomically; returns the value before."""
    if not (_int64_array(a) and isinstance(i, types.Integer) and isinstance(v, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], context.cast(builder, args[1], sig.args[1],
                                                                            types.intp))
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")
    return types.int64(a, i, v), codegen


@intrinsic
def atomic_cas(typingctx, a, i, expected, new):
    """If a[i] == expected, set it to new; atomically. Returns whether it did."""
    if not (_int64_array(a) and all(isinstance(x, types.Integer) for x in (i, expected, new))):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], context.cast(builder, args[1], sig.args[1],
                                                                            types.intp))
        exp = context.cast(builder, args[2], sig.args[2], types.int64)
        new_ = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(ptr, exp, new_, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(a, i, expected, new), codegen


@intrinsic
def spin_pause(typingctx):
    """A hint that the thread is spinning (x86 ``pause``: it yields the core's pipeline to a sibling
    hyperthread and saves power); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if ll.get_process_triple().startswith(("x86_64", "i686", "i386")):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen
