"""One state row by W_hh's integer digits on AVX512-VNNI: the one-row recurrence beyond L2.

At B = 1 a step multiplies one state row by all of W_hh, two flops a weight, so once W_hh lies beyond
L2 (12·H² bytes in float32) the step waits on L3. W_hh's integer digits (:func:`~numgru.kernels.amx.
pack_digits`: each row scaled to 24-bit integers held as three int8 digits, 9·H² bytes) carry the
same float32 product in three quarters of the bytes, and ``VPDPBUSD`` (AVX512-VNNI: Intel since Ice
Lake, AMD since Zen 4) multiplies 64 unsigned by 64 signed bytes into 16 int32 sums of four products
an instruction. The digits' AMX layout (16 rows × 4 values of the summed index, 64 bytes a quad) is
that instruction's operand as it lies: one load of W's quad, the state's four digits broadcast.

A step: the state row into its digits (:func:`~numgru.kernels.amx._digits_into`, a power-of-two
scale), the six digit products of weight 2⁻¹⁶ and above summed by weight into three int32 sums a
row of W (:func:`_sums`), those put together into float32 (:func:`~numgru.kernels.amx._combine_digits`),
then the forward's gate loop. ``VPDPBUSD`` takes its first operand unsigned, so a state digit e
(balanced, in [−128, 127]) goes in as e + 128: Σ (e + 128)·d = Σ e·d + 128·Σ d, and each digit
plane's row sums Σ d (:func:`digit_row_sums`, made once per packing by the same instructions) are
taken back out. The instruction's int32 sums wrap rather than saturate, and the true sums fit int32
(:data:`~numgru.kernels.amx.DIGIT_MAX_K`), so the difference is exact: every sum is the AMX tiles'
to the bit, and the step's products those of the AMX digits route. Accuracy: the module docstring
of :mod:`~numgru.kernels.amx` (errors relative to each row's largest value, float32's order).

reset_after=False (:func:`gru_forward_vnni_before`) takes two digit products a step: W_hh's r and z
rows by the state's digits, then its n rows by the digits of r ⊙ h, made after the first half of the
gates.

Where the CPU has no VNNI (or ``NUMGRU_VNNI=0``) :func:`vnni_ready` is false and the dispatch never
calls these kernels, whose code only such a CPU runs.
"""
from __future__ import annotations


import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import cpu_ready, device, inline, kernel, parallel_kernel, wide_vectors
from .activations import sigmoid_fast, tanh_fast
from .amx import DIGITS, _combine_digits, _digits_into, _pieces_of, padded, padded64
from .dotblock import dot_rows
from .forward import _chunk_after, column_blocks, rows_after_fast, rows_before_n, rows_before_rz
from .sync import block_done, claim_block, round_pending, rounds_sync, wait_round, worker_started
from .step import _add_block_bias, step_gates_after, step_gates_n, step_gates_rz

_READY = None


def vnni_ready():
    """Whether the CPU Numba compiles for has AVX512-VNNI (and AVX512-BW) and ``NUMGRU_VNNI`` is not
    ``0``: the kernels here then compile and run."""
    global _READY
    if _READY is None:
        _READY = cpu_ready("NUMGRU_VNNI", ("+avx512f", "+avx512bw", "+avx512vnni"))
    return _READY


def _sums_intrinsic(group):
    """An intrinsic summing ``group`` blocks of 16 rows of W at a time (:func:`_sums`)."""

    @intrinsic
    def sums(typingctx, Wq, plane, Kq, u, S, Np, nb0, nb1):
        if not (isinstance(Wq, types.Array) and Wq.dtype == types.int8 and Wq.layout == "C"
                and isinstance(u, types.Array) and u.dtype == types.uint32 and u.layout == "C"
                and isinstance(S, types.Array) and S.dtype == types.int32 and S.layout == "C"):
            return None

        def codegen(context, builder, sig, args):
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            v64 = ir.VectorType(i8, 64)
            v16 = ir.VectorType(i32, 16)
            dpbusd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16, [v16, v64, v64]), "llvm.x86.avx512.vpdpbusd.512")
            w = context.make_array(sig.args[0])(context, builder, args[0])
            ua = context.make_array(sig.args[3])(context, builder, args[3])
            sa = context.make_array(sig.args[4])(context, builder, args[4])
            plane_, Kq_, Np_, nb0, nb1 = args[1], args[2], args[5], args[6], args[7]

            def const(v):
                return ir.Constant(i64, v)

            KQ = builder.udiv(Kq_, const(4))
            block_bytes = builder.mul(Kq_, const(16))
            accs = [[cgutils.alloca_once(builder, v16) for _ in range(3)] for _ in range(group)]
            zero = ir.Constant(v16, None)

            def broadcast(p, q):  # the state's four digits p of quad q, in every lane
                x = builder.load(builder.gep(ua.data, [builder.add(builder.mul(const(p), KQ), q)]))
                v = builder.insert_element(ir.Constant(v16, ir.Undefined), x, ir.Constant(i32, 0))
                return builder.bitcast(
                    builder.shuffle_vector(v, ir.Constant(v16, ir.Undefined), ir.Constant(v16, None)), v64)

            with cgutils.for_range_slice(builder, nb0, nb1, const(group), i64) as (nb, _):
                for b in range(group):
                    for a in accs[b]:
                        builder.store(zero, a)
                bases = [builder.mul(builder.add(nb, const(b)), block_bytes) for b in range(group)]
                with cgutils.for_range(builder, KQ, intp=i64) as loop:
                    q = loop.index
                    u0, u1, u2 = broadcast(0, q), broadcast(1, q), broadcast(2, q)
                    q64 = builder.mul(q, const(64))
                    for b in range(group):
                        d = []
                        for p in range(3):
                            at = builder.add(builder.add(bases[b], q64), builder.mul(plane_, const(p)))
                            d.append(builder.load(builder.bitcast(builder.gep(w.data, [at]), v64.as_pointer()),
                                                  align=1))
                        a0, a1, a2 = (builder.load(a) for a in accs[b])
                        a0 = builder.call(dpbusd, [a0, u0, d[0]])
                        a1 = builder.call(dpbusd, [builder.call(dpbusd, [a1, u1, d[0]]), u0, d[1]])
                        a2 = builder.call(dpbusd, [builder.call(dpbusd, [builder.call(
                            dpbusd, [a2, u2, d[0]]), u1, d[1]]), u0, d[2]])
                        for a, v in zip(accs[b], (a0, a1, a2)):
                            builder.store(v, a)
                for b in range(group):
                    col = builder.mul(builder.add(nb, const(b)), const(16))
                    for p in range(3):
                        at = builder.add(builder.mul(const(p), Np_), col)
                        builder.store(builder.load(accs[b][p]),
                                      builder.bitcast(builder.gep(sa.data, [at]), v16.as_pointer()), align=4)
            return context.get_dummy_value()
        return types.none(Wq, types.intp, types.intp, u, S, types.intp, types.intp, types.intp), codegen
    return sums


_sums4 = _sums_intrinsic(4)
_sums2 = _sums_intrinsic(2)
_sums1 = _sums_intrinsic(1)

#: summed indices (padded) of a multiple of which :func:`_sums` takes two blocks of 16 rows at a
#: time rather than four: a block's quads then lie 16·Kq bytes apart, a multiple of 4 KB, and so do
#: the digit planes (Np·Kq bytes), so the twelve streams of four blocks' three planes all fall in one
#: set of L1 (48 KB, 12 ways) and evict each other. One thread, Zen 4, the sums of a step's product
#: alone (W_hh's 9·H² bytes, in a Numba loop), two blocks against four, µs: H = 256 / 512 / 768 /
#: 1024 / 1280 / 1536 6.0 / 29.1 / 66.3 / 118 / 195 / 358 against 13.3 / 49.3 / 111 / 205 / 318 /
#: 523; where Kq is not such a multiple four blocks stay ahead, H = 384 / 640 / 896 / 960 / 1152
#: 17.4 / 42.4 / 85.4 / 98.1 / 147 against 17.3 / 45.1 / 90.8 / 105 / 153
SUMS_PAIRS_KQ = 256


@inline
def _sums(Wq, Np, Kq, u, S, nb0, nb1):
    """For every row n of W's blocks of 16 rows nb0 … nb1 − 1 (digit planes Wq,
    :func:`~numgru.kernels.amx.pack_digits`' bytes), S[p·Np + n] (S: 3·Np int32) = the sums of weight
    2⁻⁸ᵖ of the products of W's digits d by u's (u: three planes of Kq / 4 uint32, each four unsigned
    digits of the summed index): p = 0 d₀u₀, 1 d₀u₁ + d₁u₀, 2 d₀u₂ + d₁u₁ + d₂u₀, modulo 2³². Four
    blocks at a time (twelve sums in registers, so that the chain of three into the last sum does
    not wait on itself), the rest one block at a time; two at a time where Kq is a multiple of
    :data:`SUMS_PAIRS_KQ`. The caller keeps every operand its size."""
    P = Np * Kq
    if Kq % SUMS_PAIRS_KQ == 0:
        n2 = nb0 + (nb1 - nb0) // 2 * 2
        _sums2(Wq, P, Kq, u, S, Np, nb0, n2)
        _sums1(Wq, P, Kq, u, S, Np, n2, nb1)
        return
    n4 = nb0 + (nb1 - nb0) // 4 * 4
    _sums4(Wq, P, Kq, u, S, Np, nb0, n4)
    _sums1(Wq, P, Kq, u, S, Np, n4, nb1)


@inline
def _check_packing(Wv, R, N, K):
    """Wv W's digits (:func:`~numgru.kernels.amx.pack_digits`) for W (N, K), R 3·Np values."""
    if _pieces_of(Wv, padded(N), padded(K)) != DIGITS or R.shape[0] != 3 * padded(N):
        raise ValueError("vnni: shapes do not match")


@kernel
def digit_row_sums(Wv, N, K, R):
    """R (3·Np int32, Np = N rounded up to 32) = the row sums of each digit plane of Wv =
    :func:`~numgru.kernels.amx.pack_digits` (W) for W (N, K): R[p·Np + n] = Σ_k digit p of W[n, k]
    (:func:`_sums` with the state's first digits all 1 and the others 0)."""
    wide_vectors()
    _check_packing(Wv, R, N, K)
    Kq = padded64(K)
    u = np.zeros(3 * (Kq // 4), np.uint32)
    u[:Kq // 4] = 0x01010101
    _sums(Wv.view(np.int8), padded(N), Kq, u, R, 0, padded(N) // 16)


@kernel
def digit_offsets(R, N):
    """(3, N) int64: what a row's offset of 128 adds to each of the three sums of every row of W
    (N rows; :func:`_offsets` of W's :func:`digit_row_sums` R), for a caller that keeps W's digits
    and multiplies by them step after step (:func:`gru_step_vnni`)."""
    wide_vectors()
    if R.shape[0] != 3 * padded(N):
        raise ValueError("vnni: shapes do not match")
    return _offsets(R, N)


@inline
def _offsets(R, N):
    """(3, N) int64: what the state's offset of 128 adds to each of :func:`_sums`' three sums of a row
    of W, 128 times the row sums R (:func:`digit_row_sums`) of the digit planes each sum takes:
    d₀; d₀ and d₁; all three."""
    Np = R.shape[0] // 3
    C = np.empty((3, N), np.int64)
    for j in range(N):
        r = np.int64(0)
        for p in range(3):
            r += np.int64(R[p * Np + j])
            C[p, j] = r << 7
    return C


@inline
def _row_digits(v, K, D, u, spread):
    """The row v[:K]'s digits into D (3, Kq) int8 and their offset bytes (e + 128, the unsigned
    operand of ``VPDPBUSD``) into u (3·Kq / 4 uint32); returns the row's scale, < 0 where the row
    holds a value its digits refuse (NaN, ±Inf, or a largest magnitude outside the digits' range;
    with ``spread`` > 0 a row of mixed scales too, :func:`~numgru.kernels.amx._digit_scale`)."""
    sa = _digits_into(v, K, D[0], D[1], D[2], False, spread)
    if sa >= 0:
        Kq = D.shape[1]
        ub = u.view(np.uint8)
        for p in range(3):
            for k in range(Kq):
                ub[p * Kq + k] = np.uint8(D[p, k]) ^ np.uint8(128)
    return sa


@inline
def _rows_product(Wv, C, N, Kq, u, S, sa, r0, r1, out):
    """out[:r1 − r0] = rows r0 … r1 − 1 of W (N rows; r0 a multiple of 16, r1 too or N) times the row
    whose offset bytes u and scale sa :func:`_row_digits` made, from W's digits Wv and the offsets C
    of their row sums (:func:`_offsets`), by scratch S (3·Np int32): the sums of W's blocks of 16
    rows that hold them, less the offsets (wrapped to int32: the true sums fit it), put together in
    float32 (:func:`~numgru.kernels.amx._combine_digits`)."""
    Np = padded(N)
    _sums(Wv.view(np.int8), Np, Kq, u, S, r0 // 16, (r1 + 15) // 16)
    for p in range(3):
        for j in range(r0, r1):
            S[p * Np + j] = np.int32(np.int64(S[p * Np + j]) - C[p, j])
    sw = Wv[3 * Np * Kq // 2:].view(np.float32)
    _combine_digits(S[r0:r1], S[Np + r0:Np + r1], S[2 * Np + r0:2 * Np + r1], sw[r0:r1], sa, out)


@inline
def _row_product(h, Wv, C, N, D, u, S, out, spread):
    """out[:N] = W @ h for one state row h (K,) from W's digits Wv and the offsets C of their row
    sums (:func:`_offsets`), by scratch D (3, Kq) int8, u (3·Kq / 4) uint32, S (3·Np) int32. False
    where the row's digits are refused (:func:`_row_digits`, ``spread`` its)."""
    sa = _row_digits(h, h.shape[0], D, u, spread)
    if sa < 0:
        return False
    _rows_product(Wv, C, N, D.shape[1], u, S, sa, 0, N, out)
    return True


@inline
def _one_row_shapes(gx, b_hh, h0, y, col0, h_n):
    """Whether a one-row forward's arrays agree: h0 and h_n (1, H), gx (T, 1, 3H) for y (T, 1, ·),
    b_hh (3H,), and columns col0 … col0+H−1 within y's."""
    T = y.shape[0]
    B, H = h0.shape
    G = 3 * H
    return not (B != 1 or gx.shape[0] != T or gx.shape[1] != 1 or gx.shape[2] != G or b_hh.shape[0] != G
                or h_n.shape[0] != 1 or h_n.shape[1] != H or y.shape[1] != 1 or col0 < 0
                or col0 + H > y.shape[2])


@inline
def _columns_shapes(gx, W_hh, Wv, C, b_hh, h0, y, col0, h_n):
    """:func:`_one_row_shapes`, and what the columns kernels also need: H a multiple of 16, W_hh
    (3H, H) with its digits Wv and their offsets C (3, 3H)."""
    H = h0.shape[1]
    G = 3 * H
    return (_one_row_shapes(gx, b_hh, h0, y, col0, h_n) and H % 16 == 0 and W_hh.shape[0] == G and
            W_hh.shape[1] == H and C.shape[0] == 3 and C.shape[1] == G and
            _pieces_of(Wv, padded(G), padded(H)) == DIGITS)


@inline
def _digit_scratch(n, Kq, G):
    """``(D, u, S)`` for n rows' products by G rows of digits: their digits (n, 3, Kq) int8, offset
    bytes (n, 3·Kq / 4) uint32 and sums (n, 3·Np) int32 (:func:`_row_product`'s scratch, a row each)."""
    return (np.zeros((n, 3, Kq), np.int8), np.zeros((n, 3 * Kq // 4), np.uint32),
            np.empty((n, 3 * padded(G)), np.int32))


@kernel
def gru_forward_vnni(gx, Wv, R, b_hh, h0, reverse, y, col0, h_n):
    """One direction of a reset_after GRU layer's inference forward over one row, sigmoid gates and no
    clip, each step's W_hh product on W_hh's integer digits by AVX512-VNNI (module docstring).

    gx (T, 1, 3H) the input projection of every step; Wv = :func:`~numgru.kernels.amx.pack_digits`
    (W_hh) for W_hh (3H, H) and R = :func:`digit_row_sums` of it; b_hh (3H,); h0 (1, H) in; y (T, 1,
    D·H) out, columns col0 … col0+H−1 receive h_t; h_n (1, H) out; ``reverse`` runs t = T−1 … 0. All
    float32, C-contiguous. Returns False, with y and h_n partly written, where a state holds a value
    the digits refuse (NaN from the input, say): the caller then runs the float32 kernels. The caller
    checks :func:`vnni_ready`."""
    wide_vectors()
    T = y.shape[0]
    B, H = h0.shape
    G = 3 * H
    if not _one_row_shapes(gx, b_hh, h0, y, col0, h_n):
        raise ValueError("gru_forward_vnni: shapes do not match")
    _check_packing(Wv, R, G, H)
    C = _offsets(R, G)
    Kq = padded64(H)
    rows = _digit_scratch(1, Kq, G)
    D, u, S = rows[0][0], rows[1][0], rows[2][0]
    acc = np.empty((1, G), np.float32)
    h_a = h0.copy()
    h_b = np.empty_like(h0)
    for s in range(T):
        t = T - 1 - s if reverse else s
        hc = h_a if s % 2 == 0 else h_b
        hn = h_b if s % 2 == 0 else h_a
        if not _row_product(hc[0], Wv, C, G, D, u, S, acc[0], np.float32(0.0)):
            return False
        rows_after_fast(gx, t, acc, b_hh, hc, hn, y, col0, 0, 0, 1)
    h_n[:] = h_a if T % 2 == 0 else h_b
    return True


@kernel
def gru_forward_vnni_before(gx, Wv, R, b_hh, h0, reverse, y, col0, h_n):
    """:func:`gru_forward_vnni` for reset_after=False (sigmoid gates, no clip): each step two digit
    products, W_hh's r and z rows by the state's digits, then its n rows by the digits of r ⊙ h, each
    followed by its half of the forward's gate loops (:func:`~numgru.kernels.forward.rows_before_rz`,
    :func:`~numgru.kernels.forward.rows_before_n`). The same arrays; H a multiple of 8, so that the n
    rows start on a block of 16 rows of the digits. Returns False where a state, or a row r ⊙ h,
    holds a value the digits refuse: the caller then runs the float32 kernels."""
    wide_vectors()
    T = y.shape[0]
    B, H = h0.shape
    G = 3 * H
    H2 = 2 * H
    if not _one_row_shapes(gx, b_hh, h0, y, col0, h_n) or H % 8 != 0:
        raise ValueError("gru_forward_vnni_before: shapes do not match")
    _check_packing(Wv, R, G, H)
    C = _offsets(R, G)
    Kq = padded64(H)
    rows = _digit_scratch(1, Kq, G)
    D, u, S = rows[0][0], rows[1][0], rows[2][0]
    acc_rz = np.empty((1, H2), np.float32)
    acc_n = np.empty((1, H), np.float32)
    work = np.empty((1, H2), np.float32)  # (z in its second half)
    rh = np.empty((1, H), np.float32)
    h_a = h0.copy()
    h_b = np.empty_like(h0)
    zero = np.float32(0.0)
    for s in range(T):
        t = T - 1 - s if reverse else s
        hc = h_a if s % 2 == 0 else h_b
        hn = h_b if s % 2 == 0 else h_a
        sa = _row_digits(hc[0], H, D, u, zero)
        if sa < 0:
            return False
        _rows_product(Wv, C, G, Kq, u, S, sa, 0, H2, acc_rz[0])
        rows_before_rz(gx, t, acc_rz, b_hh, hc, rh, work, 0, 0, 1)
        sa = _row_digits(rh[0], H, D, u, zero)
        if sa < 0:
            return False
        _rows_product(Wv, C, G, Kq, u, S, sa, H2, G, acc_n[0])
        rows_before_n(gx, t, acc_n, b_hh, hc, hn, work, y, col0, 0, 0, 1)
    h_n[:] = h_a if T % 2 == 0 else h_b
    return True


@inline
def step_work_size(I, H):
    """The int32 values of :func:`gru_step_vnni`'s scratch for I inputs and H units: each product's
    row digits (3·Kq int8) and their offset bytes (3·Kq), Kq = I or H rounded up to 64, and the sums
    (3·Np int32, Np = 3H rounded up to 32)."""
    return 3 * (padded64(I) + padded64(H)) // 2 + 3 * padded(3 * H)


@inline
def _step_scratch(work, I, H):
    """``(Di, ui, Dh, uh, S)``: views of ``work`` (:func:`step_work_size` int32) as the two rows'
    digits and offset bytes (x's, Kq = I rounded up to 64, and h's) and the sums, as
    :func:`_row_product` takes them."""
    Kqi = padded64(I)
    Kqh = padded64(H)
    Di = work[:3 * Kqi // 4].view(np.int8).reshape((3, Kqi))
    a = 3 * Kqi // 4
    ui = work[a:a + 3 * Kqi // 4].view(np.uint32)
    a += 3 * Kqi // 4
    Dh = work[a:a + 3 * Kqh // 4].view(np.int8).reshape((3, Kqh))
    a += 3 * Kqh // 4
    uh = work[a:a + 3 * Kqh // 4].view(np.uint32)
    a += 3 * Kqh // 4
    return Di, ui, Dh, uh, work[a:a + 3 * padded(3 * H)]


@device
def _step_product(v, W, Wv, C, N, D, u, S, out, spread):
    """out[0, :N] = v[0] @ W.T: by W's digits Wv where there are some (not empty) and the row's
    digits are not refused, else in float32 (:func:`~numgru.kernels.dotblock.dot_rows`)."""
    if Wv.shape[0] == 0 or not _row_product(v[0], Wv, C, N, D, u, S, out[0], spread):
        dot_rows(v, W, out, 1)


@inline
def _step_shapes(x, h, W_ih, W_hh, C, b_ih, b_hh, h_out, gi, gh):
    """Whether a one-row step's arrays agree (x (1, I), h (1, H), the weights, biases and offsets C
    (2, 3, 3H) for them, h_out (1, H), gi's and gh's rows of 3H with gh holding one), as
    :func:`gru_step_vnni` and :func:`gru_step_vnni_cols` take them."""
    I = x.shape[1]
    H = h.shape[1]
    G = 3 * H
    return not (x.shape[0] != 1 or h.shape[0] != 1 or W_ih.shape[0] != G or W_ih.shape[1] != I
                or W_hh.shape[0] != G or W_hh.shape[1] != H or b_ih.shape[0] != G or b_hh.shape[0] != G
                or h_out.shape[0] != 1 or h_out.shape[1] != H or gi.shape[1] != G
                or gh.shape[0] < 1 or gh.shape[1] != G or C.shape[0] != 2 or C.shape[1] != 3
                or C.shape[2] != G)


@inline
def _step_digits_match(Vi, Vh, I, H):
    """Whether W_ih's and W_hh's digits (either empty: that product in float32) are
    :func:`~numgru.kernels.amx.pack_digits`' of (3H, I) and (3H, H) weights."""
    G = padded(3 * H)
    return not (Vi.shape[0] > 0 and _pieces_of(Vi, G, padded(I)) != DIGITS
                or Vh.shape[0] > 0 and _pieces_of(Vh, G, padded(H)) != DIGITS)


@kernel
def gru_step_vnni(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, spread, h_out, gi, gh, work, backwards):
    """h_out = GRU(x, h) for one row, reset_after with sigmoid gates and no clip, float32: the step of
    :func:`~numgru.kernels.step.gru_step` with its two products on W_ih's and W_hh's integer digits
    by AVX512-VNNI (the products of :func:`gru_forward_vnni`'s steps, 9·H² bytes a matrix where
    float32 reads 12·H²).

    x (1, I), h (1, H) in; W_ih (3H, I), W_hh (3H, H); Vi, Vh their digits
    (:func:`~numgru.kernels.amx.pack_digits`; an empty array: that product in float32); C (2, 3, 3H)
    int64 their :func:`digit_offsets` (Vi's first; either unread where its digits are empty);
    b_ih, b_hh (3H,); ``spread``: x's digits refuse a row of mixed scales past it
    (:func:`~numgru.kernels.amx._digit_scale`; 0: none); h_out (1, H) out (must not alias h);
    gi, gh (1, 3H) workspace and ``work`` (:func:`step_work_size` int32) scratch, the caller must
    not read them (or gi of no rows and an empty work: the kernel allocates its own, as
    ``gru_step``). A row the digits refuse (NaN, ±Inf, beyond their range) takes its product in
    float32, so NaN propagates as on the float32 step. ``backwards``: W_hh's product before W_ih's
    (the caller passes it every other step, so that a step starts on the weights the step before
    read last, still in L2: a stream step at H = I = 256 1.5 µs shorter than in one order). The
    caller checks :func:`vnni_ready`."""
    wide_vectors()
    I = x.shape[1]
    H = h.shape[1]
    G = 3 * H
    if gi.shape[0] < 1:
        gi = np.empty((1, G), np.float32)
        gh = np.empty((1, G), np.float32)
    if work.shape[0] == 0:
        work = np.zeros(step_work_size(I, H), np.int32)
    if (not _step_shapes(x, h, W_ih, W_hh, C, b_ih, b_hh, h_out, gi, gh)
            or work.shape[0] < step_work_size(I, H)):
        raise ValueError("gru_step_vnni: shapes do not match")
    if not _step_digits_match(Vi, Vh, I, H):
        raise ValueError("gru_step_vnni: the digits do not match the weights")
    Di, ui, Dh, uh, S = _step_scratch(work, I, H)
    for q in range(2):
        if (q == 0) != backwards:
            _step_product(x, W_ih, Vi, C[0], G, Di, ui, S, gi, spread)
        else:
            _step_product(h, W_hh, Vh, C[1], G, Dh, uh, S, gh, np.float32(0.0))
    step_gates_after(gi, gh, b_ih, b_hh, h, h_out, 1)


@inline
def _step_rows_product(v, W, Wv, C, N, D, u, S, out, r0, r1):
    """out[0, :r1 − r0] = v[0] @ W[r0:r1].T: by W's digits Wv (N rows, r0 a multiple of 16) where
    there are some and v's digits are not refused, else in float32."""
    if Wv.shape[0] > 0:
        sa = _row_digits(v[0], v.shape[1], D, u, np.float32(0.0))
        if sa >= 0:
            _rows_product(Wv, C, N, D.shape[1], u, S, sa, r0, r1, out[0])
            return
    dot_rows(v, W[r0:r1], out, 1)


@kernel
def gru_step_vnni_before(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, spread, h_out, gi, gh, work, backwards):
    """:func:`gru_step_vnni` for reset_after=False: x's product, then W_hh's r and z rows by h's
    digits, the first half of the gates (z and r ⊙ h, :func:`~numgru.kernels.step.step_gates_rz`),
    W_hh's n rows by the digits of r ⊙ h, and the rest (:func:`~numgru.kernels.step.step_gates_n`).
    The same arguments; H a multiple of 8 (the n rows start on a block of 16 rows of the digits).
    ``backwards``: W_hh's r, z rows before x's product."""
    wide_vectors()
    I = x.shape[1]
    H = h.shape[1]
    G = 3 * H
    H2 = 2 * H
    if gi.shape[0] < 1:
        gi = np.empty((1, G), np.float32)
        gh = np.empty((1, G), np.float32)
    if work.shape[0] == 0:
        work = np.zeros(step_work_size(I, H), np.int32)
    if (not _step_shapes(x, h, W_ih, W_hh, C, b_ih, b_hh, h_out, gi, gh)
            or work.shape[0] < step_work_size(I, H) or H % 8 != 0):
        raise ValueError("gru_step_vnni_before: shapes do not match")
    if not _step_digits_match(Vi, Vh, I, H):
        raise ValueError("gru_step_vnni_before: the digits do not match the weights")
    Di, ui, Dh, uh, S = _step_scratch(work, I, H)
    a_rz = gh[:, :H2]
    a_n = gh[:, H2:]
    rh = np.empty((1, H), np.float32)
    if not backwards:
        _step_product(x, W_ih, Vi, C[0], G, Di, ui, S, gi, spread)
    _step_rows_product(h, W_hh, Vh, C[1], G, Dh, uh, S, a_rz, 0, H2)
    if backwards:
        _step_product(x, W_ih, Vi, C[0], G, Di, ui, S, gi, spread)
    # z to gh[:, H:2H] (a_rz's z half, each value read before it is written there) and r ⊙ h to rh
    step_gates_rz(gi, a_rz, b_ih, b_hh, h, gh, rh, 1)
    _step_rows_product(rh, W_hh, Vh, C[1], G, Dh, uh, S, a_n, H2, G)
    step_gates_n(gi, a_n, b_ih, b_hh, h, gh, h_out, 1)


@parallel_kernel
def gru_forward_vnni_cols(gx, W_hh, Wv, C, b_hh, h0, reverse, y, col0, h_n, n_chunks):
    """:func:`gru_forward_vnni` on Numba's threads, each step split over ``n_chunks`` blocks of hidden
    units as the float32 columns route (:func:`~numgru.kernels.forward._gru_forward_cols`, whose
    workers and their meeting between steps this follows): block c multiplies the state row by its
    units' rows of W_hh's digits (their r, z and n rows, :func:`_block_product`), then runs those
    units' gates, so each thread keeps reading its own share of the digits. W_hh (3H, H) float32,
    H a multiple of 16 (a block of 16 rows of the digits then never holds two gates' rows); C (3, 3H)
    int64 the digits' :func:`digit_offsets`. A state the digits refuse (NaN from the input, say)
    takes that step's products in float32 (NaN propagates as on the float32 route)."""
    wide_vectors()
    T = y.shape[0]
    H = h0.shape[1]
    G = 3 * H
    if not _columns_shapes(gx, W_hh, Wv, C, b_hh, h0, y, col0, h_n):
        raise ValueError("gru_forward_vnni_cols: shapes do not match")
    nc, cs = column_blocks(H, n_chunks)
    Kq = padded64(H)
    h_a = h0.copy()
    h_b = np.empty_like(h0)
    # per block: the row's digits, their offset bytes, the sums (written at the block's rows only);
    # the blocks' products side by side in one row, each at its units' rows
    D, u, S = _digit_scratch(nc, Kq, G)
    acc = np.empty((1, G), np.float32)
    sync = rounds_sync(nc)  # a round a step
    for w in prange(nc):
        wide_vectors()
        # np.int64(w): as in forward._gru_forward_cols
        _vnni_cols_worker(np.int64(w), nc, cs, sync, gx, W_hh, Wv, C, b_hh, h_a, h_b, D, u, S, acc, reverse, y,
                          col0)
    h_n[:] = h_a if T % 2 == 0 else h_b


@device
def _vnni_cols_worker(w, nc, cs, sync, gx, W_hh, Wv, C, b_hh, h_a, h_b, D, u, S, acc, reverse, y, col0):
    """Worker w of :func:`gru_forward_vnni_cols`: its own block of every step, and any block whose
    worker has not started (``sync``: :func:`~numgru.kernels.sync.rounds_sync`'s, a round a step)."""
    wide_vectors()
    T = gx.shape[0]
    H = h_a.shape[1]
    worker_started(sync, nc, w)
    for s in range(T):
        if round_pending(sync, nc, s):
            t = T - 1 - s if reverse else s
            hc = h_a if s % 2 == 0 else h_b
            hn = h_b if s % 2 == 0 else h_a
            for k in range(nc):
                c = claim_block(sync, nc, w, k, s)
                if c < 0:
                    continue
                j0 = c * cs
                m = min(cs, H - j0)
                _block_product(hc, W_hh, Wv, C, D[c], u[c], S[c], acc, np.float32(0.0), j0, m, H, 0, 3)
                a = acc[0]
                _chunk_after(gx[t, 0], a[j0:j0 + m], a[H + j0:H + j0 + m], a[2 * H + j0:2 * H + j0 + m],
                             b_hh, hc[0], hn[0], j0, m, H, 0, np.float32(0.0), np.float32(0.0), False,
                             np.float32(0.0))
                ys = y[t, 0, col0 + j0:col0 + j0 + m]
                hs = hn[0, j0:j0 + m]
                for j in range(m):
                    ys[j] = hs[j]
                block_done(sync, nc)
            wait_round(sync, nc, s)


@parallel_kernel
def gru_forward_vnni_cols_before(gx, W_hh, Wv, C, b_hh, h0, reverse, y, col0, h_n, n_chunks):
    """:func:`gru_forward_vnni_cols` for reset_after=False, each step in two halves as the float32
    route's (:func:`~numgru.kernels.forward._gru_forward_cols_before`): block c multiplies the state's
    digits by its units' r and z rows, then writes z and r ⊙ h for its units; once every block has
    written its share, each makes the digits of the whole r ⊙ h row, multiplies them by its units' n
    rows, then writes n and the new state. The same arguments and conditions (H a multiple of 16). A
    row the digits refuse takes that half's products in float32."""
    wide_vectors()
    T = y.shape[0]
    H = h0.shape[1]
    G = 3 * H
    if not _columns_shapes(gx, W_hh, Wv, C, b_hh, h0, y, col0, h_n):
        raise ValueError("gru_forward_vnni_cols_before: shapes do not match")
    nc, cs = column_blocks(H, n_chunks)
    Kq = padded64(H)
    h_a = h0.copy()
    h_b = np.empty_like(h0)
    rh = np.zeros((1, H), np.float32)
    D, u, S = _digit_scratch(nc, Kq, G)
    acc = np.empty((1, G), np.float32)  # W_hr h, z (in place of W_hz h), W_hn (r ⊙ h)
    sync = rounds_sync(nc)  # two rounds a step
    for w in prange(nc):
        wide_vectors()
        _vnni_cols_before_worker(np.int64(w), nc, cs, sync, gx, W_hh, Wv, C, b_hh, h_a, h_b, rh, D, u, S, acc,
                                 reverse, y, col0)
    h_n[:] = h_a if T % 2 == 0 else h_b


@device
def _vnni_cols_before_worker(w, nc, cs, sync, gx, W_hh, Wv, C, b_hh, h_a, h_b, rh, D, u, S, acc, reverse, y,
                             col0):
    """Worker w of :func:`gru_forward_vnni_cols_before`: its own block of every half step (half q: step
    q // 2, first or second half by q % 2), and any block whose worker has not started."""
    wide_vectors()
    T = gx.shape[0]
    H = h_a.shape[1]
    H2 = 2 * H
    zero = np.float32(0.0)
    worker_started(sync, nc, w)
    for q in range(2 * T):
        if round_pending(sync, nc, q):
            s = q // 2
            t = T - 1 - s if reverse else s
            hc = h_a if s % 2 == 0 else h_b
            hn = h_b if s % 2 == 0 else h_a
            g = gx[t, 0]
            a = acc[0]
            for k in range(nc):
                c = claim_block(sync, nc, w, k, q)
                if c < 0:
                    continue
                j0 = c * cs
                m = min(cs, H - j0)
                hcs = hc[0, j0:j0 + m]  # slices, so the loops' indices start at 0 (see _chunk_after)
                az = a[H + j0:H + j0 + m]
                if q % 2 == 0:
                    _block_product(hc, W_hh, Wv, C, D[c], u[c], S[c], acc, zero, j0, m, H, 0, 2)
                    ar = a[j0:j0 + m]
                    g_r = g[j0:j0 + m]
                    g_z = g[H + j0:H + j0 + m]
                    b_r = b_hh[j0:j0 + m]
                    b_z = b_hh[H + j0:H + j0 + m]
                    rhs = rh[0, j0:j0 + m]
                    for j in range(m):
                        az[j] = sigmoid_fast(g_z[j] + az[j] + b_z[j])
                        rhs[j] = sigmoid_fast(g_r[j] + ar[j] + b_r[j]) * hcs[j]
                else:
                    _block_product(rh, W_hh, Wv, C, D[c], u[c], S[c], acc, zero, j0, m, H, 2, 3)
                    an = a[H2 + j0:H2 + j0 + m]
                    g_n = g[H2 + j0:H2 + j0 + m]
                    b_n = b_hh[H2 + j0:H2 + j0 + m]
                    hs = hn[0, j0:j0 + m]
                    ys = y[t, 0, col0 + j0:col0 + j0 + m]
                    for j in range(m):
                        n = tanh_fast(g_n[j] + an[j] + b_n[j])
                        v = n + az[j] * (hcs[j] - n)
                        hs[j] = v
                        ys[j] = v
                block_done(sync, nc)
            wait_round(sync, nc, q)


@inline
def _split_step_fault(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, h_out, gi, gh, work, cs):
    """What the split digit steps refuse: 1 for shapes (:func:`gru_step_vnni_cols`' conditions on H,
    the blocks of cs units and their scratch rows), 2 for digits that do not match the weights, else
    0."""
    I = x.shape[1]
    H = h.shape[1]
    nc = work.shape[0]
    if (nc < 1 or not _step_shapes(x, h, W_ih, W_hh, C, b_ih, b_hh, h_out, gi, gh) or gi.shape[0] < 1 or H % 16 != 0
            or work.shape[1] < step_work_size(I, H) or (nc - 1) * cs >= H):
        return 1
    return 0 if _step_digits_match(Vi, Vh, I, H) else 2


@parallel_kernel
def gru_step_vnni_cols(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, spread, h_out, gi, gh, work):
    """:func:`gru_step_vnni` split over blocks of hidden units on Numba's threads, as
    :func:`~numgru.kernels.step.gru_step_cols` splits the float32 step: block c multiplies x and h by
    its units' rows of W_ih's and W_hh's digits (each block makes the rows' digits itself), then runs
    those units' gates. Same arguments as :func:`gru_step_vnni` (H a multiple of 16, no
    ``backwards``) but ``work``: (nc, :func:`step_work_size`) int32, one row of scratch a block, for
    nc blocks of cs units (cs a multiple of 16, nc·cs ≥ H, the fewest such blocks). A block whose row
    the digits refuse takes its products in float32."""
    wide_vectors()
    I = x.shape[1]
    H = h.shape[1]
    nc = work.shape[0]
    cs = column_blocks(H, max(nc, 1))[1]
    fault = _split_step_fault(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, h_out, gi, gh, work, cs)
    if fault == 1:
        raise ValueError("gru_step_vnni_cols: shapes do not match")
    if fault == 2:
        raise ValueError("gru_step_vnni_cols: the digits do not match the weights")
    for c in prange(nc):
        wide_vectors()
        j0 = c * cs
        m = min(cs, H - j0)
        Di, ui, Dh, uh, S = _step_scratch(work[c], I, H)
        _block_product(x, W_ih, Vi, C[0], Di, ui, S, gi, spread, j0, m, H, 0, 3)
        _block_product(h, W_hh, Vh, C[1], Dh, uh, S, gh, np.float32(0.0), j0, m, H, 0, 3)
        g0 = gi[0]
        _add_block_bias(g0, b_ih, j0, m, H)
        a0 = gh[0]
        _chunk_after(g0, a0[j0:j0 + m], a0[H + j0:H + j0 + m], a0[2 * H + j0:2 * H + j0 + m], b_hh, h[0],
                     h_out[0], j0, m, H, 0, np.float32(0.0), np.float32(0.0), False, np.float32(0.0))


@parallel_kernel
def gru_step_vnni_cols_before(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, spread, h_out, gi, gh, work):
    """:func:`gru_step_vnni_cols` for reset_after=False, in two parallel regions as
    :func:`~numgru.kernels.step.gru_step_cols_before` splits the float32 step: first each block
    multiplies x by its units' rows of W_ih's digits and h by their r and z rows of W_hh's, and writes
    its units of z (in gh, in place of W_hz h) and r ⊙ h; then each makes the digits of the whole
    r ⊙ h row, multiplies them by its units' n rows and writes their new state. Same arguments."""
    wide_vectors()
    I = x.shape[1]
    H = h.shape[1]
    H2 = 2 * H
    nc = work.shape[0]
    cs = column_blocks(H, max(nc, 1))[1]
    fault = _split_step_fault(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, h_out, gi, gh, work, cs)
    if fault == 1:
        raise ValueError("gru_step_vnni_cols_before: shapes do not match")
    if fault == 2:
        raise ValueError("gru_step_vnni_cols_before: the digits do not match the weights")
    rh = np.empty((1, H), np.float32)
    zero = np.float32(0.0)
    for c in prange(nc):
        wide_vectors()
        j0 = c * cs
        m = min(cs, H - j0)
        Di, ui, Dh, uh, S = _step_scratch(work[c], I, H)
        _block_product(x, W_ih, Vi, C[0], Di, ui, S, gi, spread, j0, m, H, 0, 3)
        _block_product(h, W_hh, Vh, C[1], Dh, uh, S, gh, zero, j0, m, H, 0, 2)
        g0 = gi[0]
        _add_block_bias(g0, b_ih, j0, m, H)
        a0 = gh[0]
        ar = a0[j0:j0 + m]
        az = a0[H + j0:H + j0 + m]
        g_r = g0[j0:j0 + m]
        g_z = g0[H + j0:H + j0 + m]
        b_r = b_hh[j0:j0 + m]
        b_z = b_hh[H + j0:H + j0 + m]
        hs = h[0, j0:j0 + m]
        rhs = rh[0, j0:j0 + m]
        for jj in range(m):
            az[jj] = sigmoid_fast(g_z[jj] + az[jj] + b_z[jj])
            rhs[jj] = sigmoid_fast(g_r[jj] + ar[jj] + b_r[jj]) * hs[jj]
    for c in prange(nc):
        wide_vectors()
        j0 = c * cs
        m = min(cs, H - j0)
        Di, ui, Dh, uh, S = _step_scratch(work[c], I, H)
        _block_product(rh, W_hh, Vh, C[1], Dh, uh, S, gh, zero, j0, m, H, 2, 3)
        a0 = gh[0]
        an = a0[H2 + j0:H2 + j0 + m]
        zs = a0[H + j0:H + j0 + m]
        g_n = gi[0, H2 + j0:H2 + j0 + m]
        b_n = b_hh[H2 + j0:H2 + j0 + m]
        hs = h[0, j0:j0 + m]
        ob = h_out[0, j0:j0 + m]
        for jj in range(m):
            n = tanh_fast(g_n[jj] + an[jj] + b_n[jj])
            ob[jj] = n + zs[jj] * (hs[jj] - n)


@device
def _block_product(v, W, Wv, C, D, u, S, out, spread, j0, m, H, g0, g1):
    """out[0, g·H + j0 … + m] = v[0] @ W[g·H + j0 … + m].T for the gates g0 ≤ g < g1 (W (3H, K), H a
    multiple of 16): by W's digits Wv (offsets C; scratch D, u, S as :func:`_row_product`'s) where
    there are some and v's row is not refused (:func:`_row_digits`, ``spread`` its), else in
    float32."""
    sa = _row_digits(v[0], v.shape[1], D, u, spread) if Wv.shape[0] > 0 else np.float32(-1.0)
    for g in range(g0, g1):
        r0 = g * H + j0
        if sa < 0:
            dot_rows(v, W[r0:r0 + m], out[:, r0:r0 + m], 1)
        else:
            _rows_product(Wv, C, 3 * H, D.shape[1], u, S, sa, r0, r0 + m, out[0, r0:r0 + m])
