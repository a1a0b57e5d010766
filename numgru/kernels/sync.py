"""Atomic operations on int64 arrays and a spin-wait hint, for kernels whose threads meet every step
inside one parallel region (:func:`~numgru.kernels.forward._gru_forward_cols`) instead of entering a
region per step.

Sequentially consistent, so a thread that reads a counter another thread has raised also sees every
value that thread wrote before raising it. Each takes an array and an element index; the callers
check the index (the operations read raw pointers).

On them, the rounds of the kernels whose nc workers split each step into nc blocks
(:func:`rounds_sync`, :func:`worker_started`, :func:`round_pending`, :func:`claim_block`,
:func:`block_done`, :func:`wait_round`): worker w runs its own block of every round and any block
whose worker has not started, so no worker waits on one that is not running.
"""
import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import inline


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


@inline
def rounds_sync(nc):
    """The counters of nc workers' rounds, a 64-byte line each: ``claimed[c]`` (the last round block c
    was taken for, −1 before the first: a worker takes block c of round q by moving it from q − 1 to q,
    so each block runs once a round), ``started[c]`` and the count of blocks done over all rounds
    (round q is complete at (q + 1)·nc)."""
    sync = np.zeros(8 * (2 * nc + 1), np.int64)
    for c in range(nc):
        sync[8 * c] = -1
    return sync


@inline
def worker_started(sync, nc, w):
    """Worker w is running (its blocks are left to it, for its core's cache)."""
    atomic_add(sync, 8 * (nc + w), 1)


@inline
def round_pending(sync, nc, q):
    """Whether round q has blocks not yet done (else the others ran it before this worker started)."""
    return atomic_load(sync, 16 * nc) < (q + 1) * nc


@inline
def claim_block(sync, nc, w, k, q):
    """The k-th block from worker w's own, claimed for round q: its index, or −1 where another worker
    took it or, past w's own, its own worker runs."""
    c = w + k if w + k < nc else w + k - nc
    if k > 0 and atomic_load(sync, 8 * (nc + c)) != 0:
        return -1
    if not atomic_cas(sync, 8 * c, q - 1, q):
        return -1
    return c


@inline
def block_done(sync, nc):
    """One more block of the current round done."""
    atomic_add(sync, 16 * nc, 1)


@inline
def wait_round(sync, nc, q):
    """Spin until every block of round q is done."""
    while atomic_load(sync, 16 * nc) < (q + 1) * nc:
        spin_pause()
