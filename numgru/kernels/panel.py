"""A register-blocked matmul on packed weights, written in LLVM's vector IR: the recurrent product of a step.

A GRU step multiplies a few rows of h (B × K) by the same weights (K × M, M = 3H) over and over, so the
weights can be laid out once per call for the product and reused T times. :func:`pack_panels` copies
W (M, K) into panels of W.T, each ``NC`` columns wide and stored whole (K × NC contiguous values, the
last panel padded with zeros); :func:`panel_matmul` multiplies by them with a kernel in the shape of
BLIS's and OpenBLAS's GEMM micro-kernels: a block of ``MR`` rows × ``NC`` columns of the output stays in
vector registers while k runs over the whole inner dimension, each step loading one panel row (``NV``
vectors) and broadcasting one value of each of the MR rows of h — no horizontal sums, one load per
``MR`` fused multiply-adds.

Numba's own loops do not get there: a dot-product kernel needs a horizontal sum per output, and LLVM
does not keep an outer-product block in registers when it is written with arrays. So the block is
generated here as LLVM IR (``<L x float>`` vectors, ``llvm.fma``), with the sizes picked for the
machine Numba compiles for:

- 32 vector registers (AVX-512, AArch64): MR = 8 rows × NV = 3 vectors (24 accumulators);
- 16 (AVX2, SSE): MR = 6 × NV = 2 (12 accumulators);

L lanes per vector: 512-, 256- or 128-bit registers (16, 8 or 4 float32; half as many float64). Rows
left over past the last full block of MR run in blocks of 4, 2 and 1 rows, the small ones with two
accumulator sets over even and odd k to hide the FMA latency. Columns past M are never stored (masked
stores in the last panel). k runs in chunks whose slice of a panel (~24 KB) stays in L1 while every
row block passes over it. Panels start on 64-byte lines: vector loads that straddle two lines ran the
one-row product at half speed.

Measured on the 2-vCPU Intel machine (Emerald Rapids, one thread, float32, per product h @ W.T with
M = 3H, K = H, BLAS pinned to one thread; correctness in tests/test_panel.py): B = 16, H = 256 at
170 GFLOP/s against 69 for Numba's dot-product kernel and 60–79 for OpenBLAS; B = 64, H = 256 168
against 66 and 100–113; B = 1, H = 256 50 against 28 and 22–27. The figures per route are in
:func:`numgru.kernels.forward.use_panels`.
"""
import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import device


def _shape_for(context, itemsize):
    """(L, MR, NV) for the target Numba compiles for and an element size in bytes."""
    features = getattr(context.codegen(), "_tm_features", "") or ""  # the target's "+avx2,-avx512f,…"
    if "+avx512f" in features:
        bits, regs = 512, 32
    elif "+avx" in features:
        bits, regs = 256, 16
    elif "+neon" in features or ll.get_process_triple().startswith(("aarch64", "arm64")):
        bits, regs = 128, 32
    else:
        bits, regs = 128, 16
    lanes = bits // (8 * itemsize)
    if regs == 32:
        return lanes, 8, 3
    return lanes, 6, 2


def _float_type(t):
    return t in (types.float32, types.float64)


@intrinsic
def panel_width(typingctx, x):
    """NC, the width of one panel, for the dtype of the float scalar ``x`` on this target (a constant)."""
    if not _float_type(x):
        return None

    def codegen(context, builder, sig, args):
        lanes, _, nv = _shape_for(context, context.get_abi_sizeof(context.get_value_type(sig.args[0])))
        return ir.Constant(cgutils.intp_t, lanes * nv)
    return types.intp(x), codegen


@device
def pack_panels(W):
    """W (M, K) → panels (P, K, NC) of W.T: panels[p, k, c] = W[p·NC + c, k], zeros past row M − 1.

    P = ceil(M / NC), NC = :func:`panel_width` for W's dtype; the panels start on a 64-byte boundary.
    One pass over W."""
    M = W.shape[0]
    K = W.shape[1]
    nc = panel_width(W.dtype.type(0))
    P = (M + nc - 1) // nc
    # 64-byte aligned (a cache line, one 512-bit vector): NumPy aligns to 16 bytes, and vector loads
    # that straddle two lines ran the one-row product at half speed (B = 1, H = 256: 11.7 against 6.7 µs)
    size = P * K * nc
    item = W.itemsize
    buf = np.zeros(size + 64 // item, W.dtype)
    off = ((64 - buf.ctypes.data % 64) % 64) // item
    Wp = buf[off:off + size].reshape((P, K, nc))
    for p in range(P):
        j0 = p * nc
        j1 = min(M, j0 + nc)
        panel = Wp[p]
        for j in range(j0, j1):
            wj = W[j]
            c = j - j0
            for k in range(K):
                panel[k, c] = wj[k]
    return Wp


@intrinsic
def _panel_gemm(typingctx, h, Wp, out, n):
    """out[:n, :M] = h[:n] @ W.T for Wp = pack_panels(W), M = out.shape[1] (see :func:`panel_matmul`)."""
    arrays = (h, Wp, out)
    if not all(isinstance(a, types.Array) and a.layout == "C" and _float_type(a.dtype) for a in arrays):
        return None
    if h.ndim != 2 or Wp.ndim != 3 or out.ndim != 2 or len({a.dtype for a in arrays}) != 1:
        return None
    if not isinstance(n, types.Integer):
        return None
    sig = types.void(h, Wp, out, types.intp)

    def codegen(context, builder, sig, args):
        intp = cgutils.intp_t
        fty = context.get_value_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(fty)
        L, MR, NV = _shape_for(context, size)
        NC = L * NV
        vty = ir.VectorType(fty, L)
        vptr_t = vty.as_pointer()
        i32 = ir.IntType(32)
        A = context.make_array(sig.args[0])(context, builder, args[0])
        Wa = context.make_array(sig.args[1])(context, builder, args[1])
        O = context.make_array(sig.args[2])(context, builder, args[2])
        n = context.cast(builder, args[3], sig.args[3], types.intp)

        def const(v):
            return ir.Constant(intp, v)

        K = cgutils.unpack_tuple(builder, A.shape, 2)[1]
        P = cgutils.unpack_tuple(builder, Wa.shape, 3)[0]
        M = cgutils.unpack_tuple(builder, O.shape, 2)[1]
        lda = builder.sdiv(cgutils.unpack_tuple(builder, A.strides, 2)[0], const(size))
        ldo = builder.sdiv(cgutils.unpack_tuple(builder, O.strides, 2)[0], const(size))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]),
            "llvm.fma.v%d%s" % (L, "f32" if size == 4 else "f64"))
        mask_t = ir.VectorType(ir.IntType(1), L)
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vty, vptr_t, i32, mask_t]),
            "llvm.masked.store.v%d%s.p0" % (L, "f32" if size == 4 else "f64"))
        mload = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vptr_t, i32, mask_t, vty]),
            "llvm.masked.load.v%d%s.p0" % (L, "f32" if size == 4 else "f64"))
        zero = ir.Constant(vty, None)
        vint = ir.VectorType(intp, L)
        splat0 = ir.Constant(ir.VectorType(i32, L), None)
        lane_ids = ir.Constant(vint, list(range(L)))
        # accumulators: allocas in the entry block, which LLVM promotes to registers
        accs = [[[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(MR)] for _ in range(2)]

        def splat(x, ty):
            v = builder.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, ir.Constant(ty, ir.Undefined), splat0)

        def vec_mask(j):
            """Lanes of the vector at column j that lie inside out (j ≥ 0)."""
            cols = builder.add(lane_ids, splat(j, vint))
            return builder.icmp_signed("<", cols, splat(M, vint))

        def block(wbase, j0, i0, mr, k0, k1, first):
            """Columns j0 … j0+NC−1 of rows i0 … i0+mr−1 of out, over k0 ≤ k < k1 (panel at wbase):
            written when ``first``, else added to what out holds."""
            sets = 2 if mr * NV < 8 else 1
            full = builder.icmp_signed("<=", builder.add(j0, const(NC)), M)
            optrs = [[builder.bitcast(builder.gep(O.data, [builder.add(
                builder.add(builder.mul(builder.add(i0, const(r)), ldo), j0), const(v * L))]), vptr_t)
                for v in range(NV)] for r in range(mr)]
            for s in range(sets):
                for r in range(mr):
                    for v in range(NV):
                        builder.store(zero, accs[s][r][v])
            with cgutils.if_unlikely(builder, builder.not_(first)):
                with builder.if_else(full, likely=True) as (whole, part):
                    with whole:
                        for r in range(mr):
                            for v in range(NV):
                                builder.store(builder.load(optrs[r][v], align=size), accs[0][r][v])
                    with part:
                        for v in range(NV):
                            mask = vec_mask(builder.add(j0, const(v * L)))
                            for r in range(mr):
                                builder.store(builder.call(mload, [optrs[r][v], ir.Constant(i32, size),
                                                                   mask, zero]), accs[0][r][v])
            arows = [builder.mul(builder.add(i0, const(r)), lda) for r in range(mr)]

            def kstep(k, s):
                wrow = builder.gep(wbase, [builder.mul(k, const(NC))])
                ws = [builder.load(builder.bitcast(builder.gep(wrow, [const(v * L)]), vptr_t), align=size)
                      for v in range(NV)]
                for r in range(mr):
                    b = splat(builder.load(builder.gep(A.data, [builder.add(arows[r], k)])), vty)
                    for v in range(NV):
                        acc = accs[s][r][v]
                        builder.store(builder.call(fma, [b, ws[v], builder.load(acc)]), acc)

            if sets == 2:  # two accumulator sets (even and odd k) hide the FMA latency of small blocks
                k2 = builder.sub(k1, builder.srem(builder.sub(k1, k0), const(2)))
                with cgutils.for_range_slice(builder, k0, k2, const(2), intp) as (k, _):
                    kstep(k, 0)
                    kstep(builder.add(k, const(1)), 1)
                with cgutils.if_unlikely(builder, builder.icmp_signed("<", k2, k1)):
                    kstep(k2, 0)
            else:
                with cgutils.for_range_slice(builder, k0, k1, const(1), intp) as (k, _):
                    kstep(k, 0)
            vals = [[builder.load(accs[0][r][v]) for v in range(NV)] for r in range(mr)]
            if sets == 2:
                vals = [[builder.fadd(vals[r][v], builder.load(accs[1][r][v])) for v in range(NV)]
                        for r in range(mr)]
            with builder.if_else(full, likely=True) as (whole, part):
                with whole:
                    for r in range(mr):
                        for v in range(NV):
                            builder.store(vals[r][v], optrs[r][v], align=size)
                with part:  # the last panel, past column M − 1
                    for v in range(NV):
                        mask = vec_mask(builder.add(j0, const(v * L)))
                        for r in range(mr):
                            builder.call(mstore, [vals[r][v], optrs[r][v], ir.Constant(i32, size), mask])

        # k in chunks of KC, so that each panel's chunk (KC × NC values, ~24 KB) stays in L1 while all
        # row blocks pass over it; out is written by the first chunk and added to by the others
        KC = max(16, (24576 // (NC * size)) // 2 * 2)
        n_full = builder.sub(n, builder.srem(n, const(MR)))
        rem = builder.srem(n, const(MR))
        panel_len = builder.mul(K, const(NC))
        with cgutils.for_range_slice(builder, const(0), K, const(KC), intp) as (k0, _):
            k1 = builder.select(builder.icmp_signed("<", builder.add(k0, const(KC)), K),
                                builder.add(k0, const(KC)), K)
            first = builder.icmp_signed("==", k0, const(0))
            with cgutils.for_range(builder, P, intp=intp) as ploop:
                p = ploop.index
                wbase = builder.gep(Wa.data, [builder.mul(p, panel_len)])
                j0 = builder.mul(p, const(NC))
                with cgutils.for_range_slice(builder, const(0), n_full, const(MR), intp) as (i0, _):
                    block(wbase, j0, i0, MR, k0, k1, first)
                # the rows left over (fewer than MR) in blocks of 4, 2 and 1 rows: few block variants
                # to compile, whatever MR is
                i0 = n_full
                for mr in (4, 2, 1):
                    if mr >= MR:
                        continue
                    take = builder.icmp_signed("!=", builder.and_(rem, const(mr)), const(0))
                    with builder.if_then(take):
                        block(wbase, j0, i0, mr, k0, k1, first)
                    i0 = builder.select(take, builder.add(i0, const(mr)), i0)
        return context.get_dummy_value()
    return sig, codegen


@device
def panel_matmul(h, Wp, out, n):
    """out[:n] = h[:n] @ W.T with Wp = :func:`pack_panels` (W) for W (M, K).

    h (≥ n, K), Wp (P, K, NC), out (≥ n, M) C-contiguous, one float dtype, M ≤ P·NC. Rows of out past
    n − 1 are not touched. The shapes are checked here: the block reads raw pointers."""
    if n > h.shape[0] or n > out.shape[0] or h.shape[1] != Wp.shape[1] or \
            out.shape[1] > Wp.shape[0] * Wp.shape[2] or Wp.shape[2] != panel_width(h.dtype.type(0)):
        raise ValueError("panel_matmul: shapes do not match")
    _panel_gemm(h, Wp, out, n)
