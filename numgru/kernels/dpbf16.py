"""Products at "medium" precision on AVX512-BF16 without AMX: one bfloat16 product a term.

``ng.set_float32_matmul_precision("medium")`` grants what PyTorch's "medium" does: float32 products
may take bfloat16 operands (8 significant bits, a relative error of at most about 2⁻⁸ a term) where
a fast bfloat16 product is there. On CPUs with AMX the tiles take it (:mod:`~numgru.kernels.amx`,
order 1). CPUs with AVX512-BF16 and no AMX (AMD's Zen 4 and Zen 5, Intel's Cooper Lake) have
``VDPBF16PS``: 16 float32 sums, each plus two products of bfloat16 pairs, an instruction, at the rate
of one ``VFMADD231PS`` (twice its products; on Zen 4 one zmm a cycle, 232 against 116 GFLOP/s).

Layout, as the AMX kernels' first piece: B (N outputs by K summed) packed into panels of 16
outputs (:func:`pack_pairs`), (⌈N/16⌉, ⌈K/2⌉, 16, 2) bfloat16, each 64-byte line one instruction's
operand: 16 outputs' pair of consecutive k. A's rows as bfloat16 codes (:func:`codes_into`), a pair
of k one 32-bit word, broadcast to the 16 lanes. The micro-tile (:func:`dp_tile`) keeps R rows by
CB panels of sums in registers over all of K, starting from an initial value (a bias, zeros, or
the output itself to accumulate) and storing masked where N is not a multiple of 16. Every sum runs
over k in the same order whatever the block, chunk or thread, so a row's result does not depend on
the thread count (training's rule).

The same tile serves the weight gradients (:func:`dpbf16_gradient`: both operands packed a chunk of
rows at a time as pairs of consecutive rows, the sums over rows) and the recurrences
(:func:`gru_forward_dpbf16`, and the backward's step product :func:`product_rows`): each step's
state, or gate gradients, rounded to bfloat16 codes and multiplied by W_hh's panels.

Rounding to bfloat16 is to nearest, ties to even; the instruction reads subnormal bfloat16 values as
zero. Values beyond ``SPLIT_LIMIT``, Inf and NaN would round to or produce non-float32 results, so
the kernels report them (False) and the caller takes its float32 route, as for the tiles.
"""
from __future__ import annotations


import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import call_native, cpu_ready, inline, kernel, parallel_kernel, wide_vectors
from .amx import (SPLIT_LIMIT, _BFloat, _bits_of, _in_range16, _mask16, _masked_load16, _masked_store16,
                  _round16)
from .panel import _overloaded, transpose16
from .forward import rows_after_fast, rows_after_store

#: rows of the micro-tile and 16-output panels it keeps: 4 × 4 = 16 sums of 16 in registers
TILE_ROWS = 4
TILE_PANELS = 4
#: rows of A turned into bfloat16 codes at a time (96 rows of K = 1024: 192 KB, in L2)
CHUNK_ROWS = 96
#: float32 bits of SPLIT_LIMIT: magnitudes above it (Inf and NaN included) send the call back
LIMIT_BITS = np.uint32(np.float32(SPLIT_LIMIT).view(np.uint32))

_READY = None


def dpbf16_ready():
    """Whether the CPU Numba compiles for has AVX512-BF16 (and AVX512-F) and ``NUMGRU_DPBF16`` is not
    ``0``: :func:`dp_tile`'s code then runs there."""
    global _READY
    if _READY is None:
        _READY = cpu_ready("NUMGRU_DPBF16", ("+avx512f", "+avx512bf16"))
    return _READY


@intrinsic
def dp_tile(typingctx, A, a0, sa_m, sa_q, B, b0, sb_j, sb_q, KQ, C, c0, sc_m, init, i0, si_m, left,
            R, CB):
    """C's block of R rows by CB panels of 16 columns = init's + Σ_q A's pairs · B's panels.

    Offsets, unchecked (the caller keeps every access inside its array): A's pair q of row r is the
    32-bit word ``a0 + r·sa_m + q·sa_q`` of A's data; panel j's 16 pairs at q start at word
    ``b0 + j·sb_j + q·sb_q`` of B's; row r's column 16·j + l is element ``c0 + r·sc_m + 16·j + l`` of C
    (and ``i0 + r·si_m + 16·j + l`` of init, stride 0 for a bias). Only columns below ``left`` are read
    from init and written to C. R and CB are literals; the arrays C-contiguous."""
    if not (isinstance(R, types.IntegerLiteral) and isinstance(CB, types.IntegerLiteral)
            and all(isinstance(a, types.Array) and a.layout == "C" for a in (A, B, C, init))
            and C.dtype == init.dtype == types.float32):
        return None
    rows, panels = R.literal_value, CB.literal_value

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vf = ir.VectorType(ir.FloatType(), 16)
        vi = ir.VectorType(i32, 16)
        vb = ir.VectorType(_BFloat(), 32)
        dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vb, vb]),
                                            "llvm.x86.avx512bf16.dpbf16ps.512")
        (A_, a0_, sam, saq, B_, b0_, sbj, sbq, KQ_, C_, c0_, scm, I_, i0_, sim, left_) = args[:16]
        a = builder.bitcast(context.make_array(sig.args[0])(context, builder, A_).data, i32.as_pointer())
        b = builder.bitcast(context.make_array(sig.args[4])(context, builder, B_).data, i32.as_pointer())
        c = context.make_array(sig.args[9])(context, builder, C_).data
        ini = context.make_array(sig.args[12])(context, builder, I_).data

        def const(v):
            return ir.Constant(i64, v)

        masks = [_mask16(builder, const(16 * j), left_) for j in range(panels)]
        accs = [[cgutils.alloca_once(builder, vf) for _ in range(panels)] for _ in range(rows)]
        for r in range(rows):
            row = builder.add(i0_, builder.mul(const(r), sim))
            for j in range(panels):
                at = builder.add(row, const(16 * j))
                builder.store(_masked_load16(builder, builder.gep(ini, [at]), masks[j]), accs[r][j])
        arow = [builder.add(a0_, builder.mul(const(r), sam)) for r in range(rows)]
        bcol = [builder.add(b0_, builder.mul(const(j), sbj)) for j in range(panels)]
        with cgutils.for_range(builder, KQ_, intp=i64) as loop:
            q = loop.index
            bq = builder.mul(q, sbq)
            aq = builder.mul(q, saq)
            ws = [builder.load(builder.bitcast(builder.gep(b, [builder.add(bcol[j], bq)]), vb.as_pointer()),
                               align=4) for j in range(panels)]
            for r in range(rows):
                x = builder.load(builder.gep(a, [builder.add(arow[r], aq)]))
                v = builder.insert_element(ir.Constant(vi, ir.Undefined), x, ir.Constant(i32, 0))
                v = builder.bitcast(builder.shuffle_vector(v, ir.Constant(vi, ir.Undefined),
                                                           ir.Constant(vi, None)), vb)
                for j in range(panels):
                    builder.store(builder.call(dp, [builder.load(accs[r][j]), v, ws[j]]), accs[r][j])
        for r in range(rows):
            row = builder.add(c0_, builder.mul(const(r), scm))
            for j in range(panels):
                at = builder.add(row, const(16 * j))
                _masked_store16(builder, builder.bitcast(builder.load(accs[r][j]), vi),
                                builder.bitcast(builder.gep(c, [at]), vi.as_pointer()), masks[j])
        return context.get_dummy_value()
    return types.none(A, types.intp, types.intp, types.intp, B, types.intp, types.intp, types.intp,
                      types.intp, C, types.intp, types.intp, init, types.intp, types.intp, types.intp,
                      R, CB), codegen


def _row_pointer(context, builder, aty, arr, j, pointee):
    """A pointer to element j of the 1-D array ``arr`` (type ``aty``), as ``pointee``*."""
    a = context.make_array(aty)(context, builder, arr)
    return builder.bitcast(builder.gep(a.data, [j]), pointee.as_pointer())


_VF16 = ir.VectorType(ir.FloatType(), 16)


@intrinsic
def codes16(typingctx, src, j, n, dst, jd):
    """dst[jd + l] = the bfloat16 code of src[j + l] for the lanes l < min(n, 16) (one rounding of
    16 values, ``VCVTNEPS2BF16`` where LLVM lowers it; the lanes past n neither read nor written).
    Returns whether those values are all finite with magnitude at most SPLIT_LIMIT. src float32 and
    dst uint16, 1-D with unit stride (unchecked, as every offset)."""
    if not (isinstance(src, types.Array) and src.ndim == 1 and src.dtype == types.float32
            and isinstance(dst, types.Array) and dst.ndim == 1 and dst.dtype == types.uint16):
        return None

    def codegen(context, builder, sig, args):
        mask = _mask16(builder, ir.Constant(ir.IntType(64), 0), args[2])
        v = _masked_load16(builder, _row_pointer(context, builder, sig.args[0], args[0], args[1], _VF16),
                           mask)
        code, _ = _round16(builder, v)
        vh = ir.VectorType(ir.IntType(16), 16)
        half = builder.trunc(code, vh)
        ptr = _row_pointer(context, builder, sig.args[3], args[3], args[4], vh)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vh, ptr.type, ir.IntType(32), mask.type]),
            _overloaded("llvm.masked.store.v16i16", vh))
        builder.call(fn, [half, ptr, ir.Constant(ir.IntType(32), 2), mask])
        return _in_range16(builder, v)
    return types.boolean(src, types.intp, types.intp, dst, types.intp), codegen


@intrinsic
def pairs16(typingctx, a, ja, b, jb, n, dst, jd):
    """dst[jd + l] = code(a[ja + l]) | code(b[jb + l]) << 16 for the lanes l < min(n, 16): bfloat16
    pairs of two rows, as :func:`codes16` rounds them. Returns whether those values are all finite
    with magnitude at most SPLIT_LIMIT. a, b float32 and dst uint32, 1-D with unit stride."""
    if not (all(isinstance(t, types.Array) and t.ndim == 1 for t in (a, b, dst))
            and a.dtype == b.dtype == types.float32 and dst.dtype == types.uint32):
        return None

    def codegen(context, builder, sig, args):
        mask = _mask16(builder, ir.Constant(ir.IntType(64), 0), args[4])
        pa = _row_pointer(context, builder, sig.args[0], args[0], args[1], _VF16)
        pb = _row_pointer(context, builder, sig.args[2], args[2], args[3], _VF16)
        va, vb = _masked_load16(builder, pa, mask), _masked_load16(builder, pb, mask)
        ca, _ = _round16(builder, va)
        cb, _ = _round16(builder, vb)
        vi = ir.VectorType(ir.IntType(32), 16)
        words = builder.or_(ca, builder.shl(cb, ir.Constant(vi, [16] * 16)))
        _masked_store16(builder, words, _row_pointer(context, builder, sig.args[5], args[5], args[6], vi),
                        mask)
        return builder.and_(_in_range16(builder, va), _in_range16(builder, vb))
    return types.boolean(a, types.intp, b, types.intp, types.intp, dst, types.intp), codegen


@inline
def _bits(v):
    """A float32's bits as uint32."""
    return np.uint32(_bits_of(v))


@inline
def _in_range(u):
    """Whether the float32 whose bits are u is finite with magnitude at most SPLIT_LIMIT."""
    return (u & np.uint32(0x7FFFFFFF)) <= LIMIT_BITS


@inline
def _code(u):
    """The bfloat16 code nearest the float32 whose bits are u (ties to even; |u| ≤ LIMIT_BITS)."""
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@inline
def _row_codes(src, K, dst):
    """dst[:K] = the bfloat16 codes of src[:K] (float32, 1-D), 16 an instruction where src has unit
    stride. False as :func:`codes_into`."""
    ok = True
    if src.strides[0] == 4:
        for k in range(0, K, 16):
            ok &= codes16(src, k, K - k, dst, k)
    else:
        for k in range(K):
            u = _bits(src[k])
            ok &= _in_range(u)
            dst[k] = _code(u)
    return ok


@inline
def codes_into(x, r0, r1, dst):
    """Rows r0..r1 of x (float32, (M, K)) as bfloat16 codes into dst's first rows ((·, 2·⌈K/2⌉),
    the odd K's last code zero). False where a magnitude is beyond LIMIT_BITS (Inf and NaN too)."""
    K = x.shape[1]
    ok = True
    for r in range(r1 - r0):
        out = dst[r]
        ok &= _row_codes(x[r0 + r], K, out)
        if K % 2:
            out[K] = np.uint16(0)
    return ok


@inline
def _pack_rows_into(W, n0, n1, out):
    """Rows n0..n1 (whole panels of 16 but the last) of W (float32, (N, K)) into ``out``'s panels
    (⌈N/16⌉, ⌈K/2⌉, 16, 2); a short last panel's and an odd K's places zero. A panel's 16 rows are
    rounded 16 values at a time (:func:`codes16`) into rows of codes, whose pairs are turned 16 × 16
    at a time in registers (:func:`~numgru.kernels.panel.transpose16`) into the panel's lines (Zen 4,
    W 3072 × 1024 / 768 × 256: 0.6–0.9 / 0.022 ms, where rounding the bits a pair at a time and storing
    each pair's word took 1.6 / 0.06 ms). False as :func:`codes_into`."""
    N, K = W.shape
    KQ = out.shape[1]
    words = out.view(np.uint32)
    rows = np.zeros((16, 2 * KQ), np.uint16)
    pairs = rows.view(np.uint32)
    ld = pairs.shape[1]
    flat_pairs = pairs.reshape(16 * ld)
    flat_words = words.reshape(words.size)
    ok = True
    for p in range(n0 // 16, (n1 + 15) // 16):
        for lane in range(16):
            n = 16 * p + lane
            if n < n0 or n >= n1:
                pairs[lane, :] = np.uint32(0)
            else:
                ok &= _row_codes(W[n], K, rows[lane])
        for q in range(0, KQ - KQ % 16, 16):  # 16 × 16 words turned in registers
            transpose16(flat_pairs, q, ld, flat_words, (p * KQ + q) * 16, 16)
        for q in range(KQ - KQ % 16, KQ):
            for lane in range(16):
                words[p, q, lane, 0] = pairs[lane, q]
    return ok


@kernel
def pack_pairs(W, out):
    """W (N, K) float32 → its bfloat16 panels ``out`` (⌈N/16⌉, ⌈K/2⌉, 16, 2) uint16, zero where N or
    K is past its end. False (out partly written) where W holds a magnitude beyond ``SPLIT_LIMIT``,
    Inf or NaN."""
    wide_vectors()
    if out.shape[0] != (W.shape[0] + 15) // 16 or out.shape[1] != (W.shape[1] + 1) // 2 or \
            out.shape[2] != 16 or out.shape[3] != 2:
        raise ValueError("pack_pairs: shapes do not match")
    return _pack_rows_into(W, 0, W.shape[0], out)


@inline
def _project_rows(x, Wp, N, init, si_m, out, r0, r1, A):
    """out[r0:r1] = init (+) x[r0:r1]'s codes by Wp's panels, a chunk of rows at a time through the
    scratch A (CHUNK_ROWS, 2·⌈K/2⌉). False at the first chunk holding a value beyond the limit.
    Unchecked: the callers check first (:func:`_check_rows`)."""
    KQ = Wp.shape[1]
    P = Wp.shape[0]
    full = P // TILE_PANELS * TILE_PANELS
    sc = out.shape[1]
    for m0 in range(r0, r1, CHUNK_ROWS):
        m1 = min(m0 + CHUNK_ROWS, r1)
        if not codes_into(x, m0, m1, A):
            return False
        rows = m1 - m0
        most = rows // TILE_ROWS * TILE_ROWS
        for p in range(0, full, TILE_PANELS):
            for r in range(0, most, TILE_ROWS):
                dp_tile(A, r * KQ, KQ, 1, Wp, p * KQ * 16, KQ * 16, 16, KQ, out, (m0 + r) * sc + 16 * p,
                        sc, init, (m0 + r) * si_m + 16 * p, si_m, N - 16 * p, TILE_ROWS, TILE_PANELS)
            for r in range(most, rows):
                dp_tile(A, r * KQ, KQ, 1, Wp, p * KQ * 16, KQ * 16, 16, KQ, out, (m0 + r) * sc + 16 * p,
                        sc, init, (m0 + r) * si_m + 16 * p, si_m, N - 16 * p, 1, TILE_PANELS)
        for p in range(full, P):
            for r in range(0, most, TILE_ROWS):
                dp_tile(A, r * KQ, KQ, 1, Wp, p * KQ * 16, KQ * 16, 16, KQ, out, (m0 + r) * sc + 16 * p,
                        sc, init, (m0 + r) * si_m + 16 * p, si_m, N - 16 * p, TILE_ROWS, 1)
            for r in range(most, rows):
                dp_tile(A, r * KQ, KQ, 1, Wp, p * KQ * 16, KQ * 16, 16, KQ, out, (m0 + r) * sc + 16 * p,
                        sc, init, (m0 + r) * si_m + 16 * p, si_m, N - 16 * p, 1, 1)
    return True


@inline
def _check_rows(x, Wp, N, init, si_m, out, r1, A):
    """Raise unless :func:`_project_rows` keeps inside every array for rows up to r1 (A: the chunk's
    codes, or None for a scratch of CHUNK_ROWS the caller makes)."""
    KQ = Wp.shape[1]
    if (x.shape[1] + 1) // 2 != KQ or Wp.shape[0] != (N + 15) // 16 or Wp.shape[2] != 16 or \
            Wp.shape[3] != 2 or out.shape[1] < N or r1 > x.shape[0] or r1 > out.shape[0] or si_m < 0 or \
            init.size < max(r1 - 1, 0) * si_m + N or (A is not None and (
                A.shape[0] < min(CHUNK_ROWS, r1) or A.shape[1] != 2 * KQ)):
        raise ValueError("dpbf16: shapes do not match")


@kernel
def dpbf16_projection(x, Wp, N, init, si_m, out):
    """out (M, N) = init + x · Wᵀ at one bfloat16 product a term: x (M, K) float32, Wp W's panels
    (:func:`pack_pairs` of W (N, K)), init float32 with row stride si_m (0: one row, a bias or zeros,
    for every row; out's own row stride: accumulate into out). All C-contiguous. False, out partly
    written, where x holds a magnitude beyond ``SPLIT_LIMIT``, Inf or NaN."""
    wide_vectors()
    _check_rows(x, Wp, N, init, si_m, out, x.shape[0], None)
    A = np.empty((CHUNK_ROWS, 2 * Wp.shape[1]), np.uint16)
    return _project_rows(x, Wp, N, init, si_m, out, 0, x.shape[0], A)


@parallel_kernel(name="dpbf16_projection_parallel")
def dpbf16_projection_parallel(x, Wp, N, init, si_m, out, threads):
    """:func:`dpbf16_projection` on ``threads`` of Numba's threads, each a range of whole chunks of
    rows: each row's sums are those of one thread's run."""
    wide_vectors()
    _check_rows(x, Wp, N, init, si_m, out, x.shape[0], None)
    M = x.shape[0]
    chunks = (M + CHUNK_ROWS - 1) // CHUNK_ROWS
    ok = np.ones(threads, np.bool_)
    for t in prange(threads):
        wide_vectors()
        A = np.empty((CHUNK_ROWS, 2 * Wp.shape[1]), np.uint16)
        r0 = min(M, chunks * t // threads * CHUNK_ROWS)
        r1 = min(M, chunks * (t + 1) // threads * CHUNK_ROWS)
        ok[t] = _project_rows(x, Wp, N, init, si_m, out, r0, r1, A)
    return ok.all()


#: rows of the gate gradients (the sum's index) a weight gradient's chunk packs: both operands'
#: pairs (256 rows of 768 and of 256 columns: 384 + 128 KB) stay in L2 while every tile reads them
GRADIENT_CHUNK_ROWS = 256


@inline
def _pairs_into(S, c0, n, r0, r1, dst, d0):
    """Columns c0 … c0+n−1 of S's rows r0 … r1−1 (float32) as bfloat16 pairs of consecutive rows:
    dst[q, d0 + m] (uint32) holds rows r0 + 2q and r0 + 2q + 1 of column c0 + m, the first in its low
    half (an odd count's last pair with a zero). False as :func:`codes_into`."""
    ok = True
    for q in range((r1 - r0 + 1) // 2):
        a = S[r0 + 2 * q]
        out = dst[q]
        if r0 + 2 * q + 1 < r1:
            b = S[r0 + 2 * q + 1]
            for m in range(0, n, 16):
                ok &= pairs16(a, c0 + m, b, c0 + m, n - m, out, d0 + m)
        else:
            for m in range(n):
                u = _bits(a[c0 + m])
                ok &= _in_range(u)
                out[d0 + m] = np.uint32(_code(u))
    return ok


@kernel
def dpbf16_gradient(D, c0, m1, D2, X, out, p0, p1):
    """out[:, 16·p0 : 16·p1] = [D[:, c0:c0+m1] | D2]ᵀ · X over the N rows, at one bfloat16 product a
    term: a weight gradient's panels p0 … p1−1 of 16 columns (X's), D (N, ·), D2 (N, M2) and X (N, I)
    and out (m1 + M2, I) float32, C-contiguous. The rows are summed a chunk of
    ``GRADIENT_CHUNK_ROWS`` at a time into out, each chunk in pairs, so each column's sums run in an
    order that depends on N alone. False, the columns partly written, where D, D2 or X holds a
    magnitude beyond ``SPLIT_LIMIT``, Inf or NaN."""
    wide_vectors()
    N, I = X.shape
    M = out.shape[0]
    m2 = D2.shape[1]
    if D.shape[0] != N or D2.shape[0] != N or c0 < 0 or m1 < 0 or \
            c0 + m1 > D.shape[1] or M != m1 + m2 or out.shape[1] != I or p0 < 0 or p1 < p0 or \
            16 * p0 > I:
        raise ValueError("dpbf16_gradient: shapes do not match")
    if N > 0 and ((m1 > 0 and D.strides[1] != 4) or (m2 > 0 and D2.strides[1] != 4)
                  or (I > 0 and X.strides[1] != 4)):  # (rows are read 16 values a load)
        raise ValueError("dpbf16_gradient: rows must be contiguous")
    i0, i1 = 16 * p0, min(16 * p1, I)
    if i1 <= i0:
        return True
    for m in range(M):
        out[m, i0:i1] = np.float32(0)
    P = (i1 - i0 + 15) // 16
    Gp = np.empty((GRADIENT_CHUNK_ROWS // 2, M), np.uint32)
    Xp = np.zeros((GRADIENT_CHUNK_ROWS // 2, 16 * P), np.uint32)  # (whole panels: a tile reads 16)
    sg, width = M, 16 * P
    full = P // TILE_PANELS * TILE_PANELS
    most = M // TILE_ROWS * TILE_ROWS
    for n0 in range(0, N, GRADIENT_CHUNK_ROWS):
        n1 = min(N, n0 + GRADIENT_CHUNK_ROWS)
        KQ = (n1 - n0 + 1) // 2
        if not (_pairs_into(D, c0, m1, n0, n1, Gp, 0) and _pairs_into(D2, 0, m2, n0, n1, Gp, m1)
                and _pairs_into(X, i0, i1 - i0, n0, n1, Xp, 0)):
            return False
        for p in range(0, full, TILE_PANELS):
            for m in range(0, most, TILE_ROWS):
                dp_tile(Gp, m, 1, sg, Xp, 16 * p, 16, width, KQ, out, m * I + i0 + 16 * p, I, out,
                        m * I + i0 + 16 * p, I, i1 - i0 - 16 * p, TILE_ROWS, TILE_PANELS)
            for m in range(most, M):
                dp_tile(Gp, m, 1, sg, Xp, 16 * p, 16, width, KQ, out, m * I + i0 + 16 * p, I, out,
                        m * I + i0 + 16 * p, I, i1 - i0 - 16 * p, 1, TILE_PANELS)
        for p in range(full, P):
            for m in range(0, most, TILE_ROWS):
                dp_tile(Gp, m, 1, sg, Xp, 16 * p, 16, width, KQ, out, m * I + i0 + 16 * p, I, out,
                        m * I + i0 + 16 * p, I, i1 - i0 - 16 * p, TILE_ROWS, 1)
            for m in range(most, M):
                dp_tile(Gp, m, 1, sg, Xp, 16 * p, 16, width, KQ, out, m * I + i0 + 16 * p, I, out,
                        m * I + i0 + 16 * p, I, i1 - i0 - 16 * p, 1, 1)
    return True


@kernel
def gru_forward_dpbf16(gx, Wp, b_hh, h0, reverse, y, col0, h_n, store, tape, b0, b1):
    """One direction of a reset_after GRU layer's forward for rows b0 … b1−1, sigmoid gates and no
    clip, each step's W_hh product by bfloat16 products: the state rounded to bfloat16 codes, W_hh's
    panels (:func:`pack_pairs` of W_hh, 3H × H), the sums in float32, then the forward's gate loop
    (with ``store``, training's: each row's r, z, n and W_hn h + b_hn to tape[t, b]).

    gx (T, B, 3H) the input projection of every step; b_hh (3H,); h0 (B, H) in; y (T, B, D·H) out,
    columns col0 … col0+H−1 receive h_t; h_n (B, H) out; tape (T, B, 4H) with ``store``, else any;
    ``reverse`` runs t = T−1 … 0. All float32, C-contiguous. A row's sums never depend on the rows
    beside it, so ranges of rows may run side by side with the results of one call. False, with y,
    tape and h_n partly written, where a state holds a value bfloat16 cannot carry (NaN from the
    input, say): the caller then runs the float32 kernels."""
    wide_vectors()
    T = y.shape[0]
    B, H = h0.shape
    G = 3 * H
    if (gx.shape[0] != T or gx.shape[1] != B or gx.shape[2] != G or b_hh.shape[0] != G
            or Wp.shape[0] != (G + 15) // 16 or Wp.shape[1] != (H + 1) // 2 or Wp.shape[2] != 16
            or Wp.shape[3] != 2 or h_n.shape[0] != B
            or h_n.shape[1] != H or y.shape[1] != B or col0 < 0 or col0 + H > y.shape[2]
            or b0 < 0 or b1 < b0 or b1 > B
            or (store and (tape.shape[0] != T or tape.shape[1] != B or tape.shape[2] < 4 * H))):
        raise ValueError("gru_forward_dpbf16: shapes do not match")
    nb = b1 - b0
    A = np.empty((CHUNK_ROWS, 2 * Wp.shape[1]), np.uint16)
    zeros = np.zeros(G, np.float32)
    acc = np.empty((nb, G), np.float32)
    h_a = h0[b0:b1].copy()
    h_b = np.empty_like(h_a)
    for s in range(T):
        t = T - 1 - s if reverse else s
        hc = h_a if s % 2 == 0 else h_b
        hn = h_b if s % 2 == 0 else h_a
        if not _project_rows(hc, Wp, G, zeros, 0, acc, 0, nb, A):
            return False
        if store:
            rows_after_store(gx, t, acc, b_hh, hc, hn, y, col0, b0, 0, nb, tape)
        else:
            rows_after_fast(gx, t, acc, b_hh, hc, hn, y, col0, b0, 0, nb)
    h_n[b0:b1] = h_a if T % 2 == 0 else h_b
    return True


@parallel_kernel(name="gru_forward_dpbf16_ranges_parallel")
def gru_forward_dpbf16_ranges(gx, Wp, b_hh, h0, reverse, y, col0, h_n, n, serial):
    """:func:`gru_forward_dpbf16` for inference as ``n`` ranges of rows on Numba's threads, one a
    thread (each row's sums are those of one call over all rows). False where a range was refused.
    ``serial``: that kernel's address (:func:`~numgru.kernels._jit.native_address`) for the
    arguments each range hands it (these, ``store`` a bool, a (0, 0, 0) float32 tape, int64 b0
    and b1), called by it rather than by name: linked in, its code was optimised and emitted again
    in this kernel's compile (cold, two threads: 11.3 s, the serial kernel's 6.4 among them, against
    0.5 s beside the serial kernel's)."""
    wide_vectors()
    B = h0.shape[0]
    ok = np.ones(n, np.bool_)
    none = np.empty((0, 0, 0), np.float32)
    for i in prange(n):
        wide_vectors()
        ok[i] = call_native(serial, (gx, Wp, b_hh, h0, reverse, y, col0, h_n, np.bool_(False), none,
                                     np.int64(B * i // n), np.int64(B * (i + 1) // n)), np.bool_(True))
    return ok.all()


@inline
def product_rows(rows, n, Wp, N, zeros, out, A):
    """out[:n, :N] = rows[:n] · Wᵀ by bfloat16 products, Wp W's panels (:func:`pack_pairs` of W
    (N, K)), zeros (N,) float32 zeros, A a scratch (CHUNK_ROWS, 2·⌈K/2⌉) uint16; the backward's step
    product (the gate gradients by W_hh). False as :func:`codes_into`."""
    _check_rows(rows, Wp, N, zeros, 0, out, n, A)
    return _project_rows(rows, Wp, N, zeros, 0, out, 0, n, A)
