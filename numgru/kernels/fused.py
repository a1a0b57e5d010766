"""One-row forwards whose steps also project the next steps' inputs: the two products overlapped.

At B = 1 a step multiplies one state row by all of W_hh: one fused multiply-add per weight read, so
the step waits on the cache that holds W_hh (L2 up to H ≈ 256, then L3) while the FMA units idle
about half the time. The input projection is the opposite: all T rows of x by W_ih, arithmetic-bound.
Run one after the other (the serial plans), a forward takes the sum of the two; here each step's
recurrent product also carries a share of the projection of the next block of steps, interleaved
with it instruction by instruction, so the core does the projection's arithmetic while it waits for
W_hh's lines.

Steps run in blocks of R (the panel block's rows, :func:`~numgru.kernels.panel._shape_for`: 8 with
AVX-512). While the steps of one block run, the R input rows of the next block are multiplied by
W_ih's packed panels, one R-th of the summed index k a step: step s of the block adds the products of
k in [s·I/R, (s+1)·I/R) to the next block's sums, so the next block's projection is whole when its
first step needs it. The first block's projection runs before the first step, by
:func:`~numgru.kernels.panel.panel_rows`. Within one panel of NC columns (:func:`_fused_panel`), every
G = :data:`RECURRENT_PER_PROJECTED` k of the recurrent product (a panel row of W_hh and one state
value a k) go with one k of the projection (a panel row of W_ih and R input values), and whatever is
left of either runs after. Each projection sum adds its k in increasing order from zero, whatever
the block, so a row's projection does not depend on T or on where its block starts.

Measured on Zen 4 (one thread, BLAS pinned to one, T = 128, I = H, float32, W_ih and W_hh packed on
every call), whole forwards against the serial plans' routes (the panels up to H = 384, W_hh's VNNI
digits from H = 512) in alternating processes, three rounds: H = 64 / 128 / 256 / 384 / 512 / 768
1.08–1.18× / 1.18–1.21× / 1.08–1.13× / 1.19–1.21× / 1.12–1.18× / 1.05–1.11×. At H = 256 the two limits
meet (W_hh's 768 KB from L2 at about 32 bytes a cycle; both products' FMAs at one 512-bit FMA a
cycle), so the overlap gains least there. The rule and the shapes where it loses:
:func:`numgru.kernels.dispatch.fused_recurrence_wanted`.

reset_after=False (:func:`gru_forward_fused_before`) has two products a step, W_hr,z h and then
W_hn (r ⊙ h), each waiting on its own share of W_hh: the next block's projection is split the same
way, its r and z columns riding with the first product and its n columns with the second, each share
one R-th of k a step as above. Zen 4, one thread, T = 128, against the serial plans' routes: H = 96 /
128 / 256 / 512 / 768 1.08–1.11× / 1.08–1.10× / 1.09–1.22× / 1.05–1.20× (T = 64) / 1.04–1.25×.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import cpu_ready, device, kernel, unwrapped, wide_vectors
from .activations import sigmoid_fast, tanh_fast
from .panel import (_shape_for, _splat, _vector_calls, by_vectors_filled, pack_panels, panel_block_rows,
                    panel_matmul, panel_rows, panel_width)
from .step import step_gates_after

_READY = None


def fused_ready():
    """Whether the CPU Numba compiles for has AVX-512 (32 vector registers: the block's NV + R·NV
    sums, W_ih's row and a broadcast value fit) and ``NUMGRU_FUSED`` is not ``0``. On AVX2's 16
    registers (6 rows × 2 vectors a panel and the state's 2: 14 sums) the fused forwards ran 0.75–0.80× the serial
    plans' (Zen 4 running AVX2 code, ``NUMBA_CPU_NAME=haswell``, one thread, T = 128, B = 1, H = 64 /
    128 / 256 / 512 / 768)."""
    global _READY
    if _READY is None:
        _READY = cpu_ready("NUMGRU_FUSED", ("+avx512f",))
    return _READY


#: k of the recurrent product per k of the projection within a panel: one k of the projection is
#: R·NV multiply-adds (R input rows against a panel row of W_ih), one k of the recurrent product NV
#: (the state against a panel row of W_hh), and a step takes I/R of the former against H of the
#: latter, so G = R pairs them all off where I equals H
RECURRENT_PER_PROJECTED = 8
#: fewest bytes a step of :func:`gru_forward_fused` reads (W_hh's panels and an R-th of W_ih's) from
#: which every other step runs its panels last first, so that it starts on the panels the step before
#: read last, still in L2 (the weights are summed panel by panel, so the order changes no value).
#: Zen 4, one thread, B = 1, I = H, T = 128, one process taking turns with one order every step,
#: medians of seven or nine rounds: plain H = 256 / 320 / 384 / 448 / 512 / 768 1.05–1.06× / 1.04× /
#: 1.03× / 1.02× / 1.00× / 1.00×, T = 512, H = 256 1.06×; frozen H = 256, T = 128 / 32 1.07× / 1.03×;
#: H = 192 (486 KB) 1.00×. reset_after=False's two products a step gained nothing that way (H = 256
#: 1.03×, H = 384 / 512 / 768 0.98–0.99×), so :func:`gru_forward_fused_before` keeps one order
#: (the serial steps' blocks of rows reversed every other step have their own bound,
#: :data:`~numgru.kernels.forward.ZIGZAG_MIN_BYTES`)
FUSED_ZIGZAG_MIN_BYTES = 1 << 19


#: R, the input rows each step's projection share runs over, for the dtype of a scalar on this target (a
#: constant): the panel block's rows
block_rows_fused = panel_block_rows


@intrinsic
def _fused_panel(typingctx, h, Wh, rec, xb, Wi, gxn, k0, k1, backwards):
    """rec[0, :M] = h[0] @ W_hh.T and gxn[:R, :M] += xb[:R, k0:k1] @ W_ih[:, k0:k1].T, panel by panel,
    the two products' k interleaved (see the module docstring). h (1, K), rec (1, M), xb (R, I),
    gxn (R, M) C-contiguous, one float dtype; Wh (P, K, NC) and Wi (P, I, NC) packed panels
    (:func:`~numgru.kernels.panel.pack_panels`), P·NC ≥ M; 0 ≤ k0 ≤ k1 ≤ I; ``backwards``: the
    panels last first. Unchecked: see :func:`fused_step`."""
    arrays = (h, Wh, rec, xb, Wi, gxn)
    if not all(isinstance(a, types.Array) and a.layout == "C" and a.dtype in (types.float32, types.float64)
               for a in arrays) or len({a.dtype for a in arrays}) != 1:
        return None
    if not (isinstance(k0, types.Integer) and isinstance(k1, types.Integer)) or \
            not isinstance(backwards, types.Boolean):
        return None
    sig = types.void(h, Wh, rec, xb, Wi, gxn, types.intp, types.intp, types.boolean)

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(sig.args[0].dtype)
        size = context.get_abi_sizeof(fty)
        L, R, NV = _shape_for(context, size)
        NC = L * NV
        G = RECURRENT_PER_PROJECTED
        intp = cgutils.intp_t
        i32 = ir.IntType(32)

        def const(v):
            return ir.Constant(intp, v)
        Ha, Wha, RECa, XBa, Wia, GXa = [context.make_array(t)(context, builder, a)
                                        for t, a in zip(sig.args[:6], args[:6])]
        k0, k1, backwards = args[6], args[7], args[8]
        K = cgutils.unpack_tuple(builder, Ha.shape, 2)[1]
        I = cgutils.unpack_tuple(builder, XBa.shape, 2)[1]
        M = cgutils.unpack_tuple(builder, RECa.shape, 2)[1]
        P = cgutils.unpack_tuple(builder, Wha.shape, 3)[0]
        vty, fma, mload, mstore = _vector_calls(builder, fty, L)
        vptr_t = vty.as_pointer()
        zero = ir.Constant(vty, None)
        vint = ir.VectorType(intp, L)
        lane_ids = ir.Constant(vint, list(range(L)))
        # accumulators: allocas in the entry block, which LLVM promotes to registers (NV + R·NV of them:
        # 27 of AVX-512's 32, the rest for W_ih's row and a broadcast value)
        racc = [cgutils.alloca_once(builder, vty) for _ in range(NV)]
        pacc = [[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(R)]

        def vec_mask(j):
            return builder.icmp_signed("<", builder.add(lane_ids, _splat(builder, j, vint)),
                                       _splat(builder, M, vint))

        kp = builder.sub(k1, k0)
        groups = builder.sdiv(K, const(G))
        both = builder.select(builder.icmp_signed("<", kp, groups), kp, groups)  # iterations with both
        with cgutils.for_range(builder, P, intp=intp) as ploop:
            p = builder.select(backwards, builder.sub(builder.sub(P, const(1)), ploop.index), ploop.index)
            wh = builder.gep(Wha.data, [builder.mul(builder.mul(p, K), const(NC))])
            wi = builder.gep(Wia.data, [builder.mul(builder.mul(p, I), const(NC))])
            j0 = builder.mul(p, const(NC))
            full = builder.icmp_signed("<=", builder.add(j0, const(NC)), M)

            def panel(nv):
                """The panel's first nv vectors of columns (nv < NV: a last panel whose columns past
                M − 1, zeros, fill the rest, never whole; see :func:`~numgru.kernels.panel._emit_gemm`)."""
                full_here = full if nv == NV else ir.Constant(ir.IntType(1), 0)
                gptrs = [[builder.bitcast(builder.gep(GXa.data, [builder.add(builder.add(builder.mul(const(r), M), j0),
                                                                             const(v * L))]), vptr_t)
                          for v in range(nv)] for r in range(R)]
                rptrs = [builder.bitcast(builder.gep(RECa.data, [builder.add(j0, const(v * L))]), vptr_t)
                         for v in range(nv)]
                for v in range(nv):
                    builder.store(zero, racc[v])
                with builder.if_else(full_here, likely=True) as (whole, part):
                    with whole:
                        for r in range(R):
                            for v in range(nv):
                                builder.store(builder.load(gptrs[r][v], align=size), pacc[r][v])
                    with part:  # the last panel, past column M − 1
                        for v in range(nv):
                            mask = vec_mask(builder.add(j0, const(v * L)))
                            for r in range(R):
                                builder.store(builder.call(mload, [gptrs[r][v], ir.Constant(i32, size), mask, zero]),
                                              pacc[r][v])

                def recurrent(k):
                    row = builder.gep(wh, [builder.mul(k, const(NC))])
                    b = _splat(builder, builder.load(builder.gep(Ha.data, [k])), vty)
                    for v in range(nv):
                        w = builder.load(builder.bitcast(builder.gep(row, [const(v * L)]), vptr_t), align=size)
                        builder.store(builder.call(fma, [b, w, builder.load(racc[v])]), racc[v])

                def projected(k):
                    row = builder.gep(wi, [builder.mul(k, const(NC))])
                    ws = [builder.load(builder.bitcast(builder.gep(row, [const(v * L)]), vptr_t), align=size)
                          for v in range(nv)]
                    for r in range(R):
                        xk = builder.gep(XBa.data, [builder.add(builder.mul(const(r), I), k)])
                        b = _splat(builder, builder.load(xk), vty)
                        for v in range(nv):
                            builder.store(builder.call(fma, [b, ws[v], builder.load(pacc[r][v])]), pacc[r][v])

                with cgutils.for_range(builder, both, intp=intp) as iloop:
                    i = iloop.index
                    for g in range(G):
                        recurrent(builder.add(builder.mul(i, const(G)), const(g)))
                    projected(builder.add(k0, i))
                with cgutils.for_range_slice(builder, builder.mul(both, const(G)), K, const(1), intp) as (k, _):
                    recurrent(k)
                with cgutils.for_range_slice(builder, builder.add(k0, both), k1, const(1), intp) as (k, _):
                    projected(k)
                with builder.if_else(full_here, likely=True) as (whole, part):
                    with whole:
                        for v in range(nv):
                            builder.store(builder.load(racc[v]), rptrs[v], align=size)
                        for r in range(R):
                            for v in range(nv):
                                builder.store(builder.load(pacc[r][v]), gptrs[r][v], align=size)
                    with part:
                        for v in range(nv):
                            mask = vec_mask(builder.add(j0, const(v * L)))
                            builder.call(mstore, [builder.load(racc[v]), rptrs[v], ir.Constant(i32, size), mask])
                            for r in range(R):
                                builder.call(mstore, [builder.load(pacc[r][v]), gptrs[r][v], ir.Constant(i32, size),
                                                      mask])

            by_vectors_filled(builder, builder.sub(M, j0), L, NV, panel)
        return context.get_dummy_value()
    return sig, codegen


@device
def fused_step(h, Wp_hh, rec, xb, Wp_ih, gxn, k0, k1, backwards=False):
    """rec[0] = h[0] @ W_hh.T and gxn += xb[:, k0:k1] @ W_ih[:, k0:k1].T, the two interleaved.

    h (1, H), rec (1, 3H), xb (R, I), gxn (R, 3H) C-contiguous, one float dtype, R =
    :func:`block_rows_fused`; Wp_hh and Wp_ih = :func:`~numgru.kernels.panel.pack_panels` of W_hh
    (3H, H) and W_ih (3H, I); 0 ≤ k0 ≤ k1 ≤ I. ``backwards``: the panels last first (the same values;
    :data:`FUSED_ZIGZAG_MIN_BYTES`). The shapes are checked here: the block reads raw pointers."""
    M = rec.shape[1]
    R = block_rows_fused(h.dtype.type(0))
    nc = panel_width(h.dtype.type(0))
    if h.shape[0] != 1 or rec.shape[0] != 1 or xb.shape[0] != R or gxn.shape[0] != R or gxn.shape[1] != M or \
            Wp_hh.shape[1] != h.shape[1] or Wp_ih.shape[1] != xb.shape[1] or Wp_hh.shape[2] != nc or \
            Wp_ih.shape[2] != nc or Wp_hh.shape[0] != Wp_ih.shape[0] or M > Wp_hh.shape[0] * nc or \
            not 0 <= k0 <= k1 <= xb.shape[1]:
        raise ValueError("fused_step: shapes do not match")
    _fused_panel(h, Wp_hh, rec, xb, Wp_ih, gxn, k0, k1, backwards)


@device
def _rows_of_steps(x2d, xb, s0, T, reverse):
    """xb[r] = the input row of step s0 + r (time T − 1 − s0 − r when ``reverse``); steps past T − 1
    repeat the last step's row (their sums are never read)."""
    for r in range(xb.shape[0]):
        s = min(T - 1, s0 + r)
        t = T - 1 - s if reverse else s
        src = x2d[t]
        dst = xb[r]
        for k in range(src.shape[0]):
            dst[k] = src[k]


@kernel
def gru_forward_fused(x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_hh, b_hh, h0, reverse, y, col0, h_n):
    """One direction of a one-row forward, reset_after with sigmoid gates and no clip, its input
    projection fused into the steps (module docstring).

    x2d (T, I) C-contiguous; W_ih (3H, I), W_hh (3H, H), b_ih, b_hh (3H,) (zeros without bias); Wp_ih
    and Wp_hh their packed panels (:func:`~numgru.kernels.panel.pack_panels`), or empty (0, 0, 0)
    arrays to pack them here; h0 (1, H); y (T, 1, D·H), whose columns col0 … col0+H−1 receive h_t;
    h_n (1, H) the last state. One float dtype throughout. ``reverse``: time runs from T − 1 down."""
    wide_vectors()
    T, I = x2d.shape
    H = h0.shape[1]
    M = 3 * H
    if W_ih.shape[0] != M or W_ih.shape[1] != I or W_hh.shape[0] != M or W_hh.shape[1] != H or \
            b_ih.shape[0] != M or b_hh.shape[0] != M or h0.shape[0] != 1 or h_n.shape[0] != 1 or \
            h_n.shape[1] != H or y.shape[0] != T or y.shape[1] != 1 or \
            not 0 <= col0 <= y.shape[2] - H:
        raise ValueError("gru_forward_fused: shapes do not match")
    if T == 0:
        h_n[0] = h0[0]
        return
    Wi = pack_panels(W_ih) if Wp_ih.shape[0] == 0 else Wp_ih
    Wh = pack_panels(W_hh) if Wp_hh.shape[0] == 0 else Wp_hh
    R = block_rows_fused(x2d.dtype.type(0))
    zig = (Wh.size + Wi.size // R) * Wh.itemsize > FUSED_ZIGZAG_MIN_BYTES
    cur = np.zeros((R, M), x2d.dtype)
    nxt = np.zeros((R, M), x2d.dtype)
    xb = np.empty((R, I), x2d.dtype)
    rec = np.empty((1, M), x2d.dtype)
    ha = h0.copy()
    hb = np.empty((1, H), x2d.dtype)
    _rows_of_steps(x2d, xb, 0, T, reverse)
    panel_rows(xb, Wi, b_ih, False, cur, 0, min(R, T))
    blocks = (T + R - 1) // R
    for blk in range(blocks):
        s0 = blk * R
        more = blk + 1 < blocks  # then this block has all R steps, one share of the next's projection each
        if more:
            _rows_of_steps(x2d, xb, s0 + R, T, reverse)
            nxt[:] = 0
        for s in range(min(R, T - s0)):
            if more:
                fused_step(ha, Wh, rec, xb, Wi, nxt, s * I // R, (s + 1) * I // R, zig and s % 2 == 1)
            else:
                panel_matmul(ha, Wh, rec, 1)
            step_gates_after(cur[s:s + 1], rec, b_ih, b_hh, ha, hb, 1)
            t = T - 1 - (s0 + s) if reverse else s0 + s
            yt = y[t, 0]
            hb0 = hb[0]
            for j in range(H):
                yt[unwrapped(col0 + j)] = hb0[j]
            ha, hb = hb, ha
        cur, nxt = nxt, cur
    h_n[0] = ha[0]


@kernel
def gru_forward_fused_before(x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_rz, Wp_n, b_hh, h0, reverse, y, col0, h_n):
    """:func:`gru_forward_fused` for reset_after=False (sigmoid gates, no clip): a step's two products,
    W_hr,z h and then W_hn (r ⊙ h), each carry a share of the next block's projection, the r and z
    columns' with the first and the n columns' with the second, so both wait on the cache with the
    projection's arithmetic beside them (module docstring).

    x2d (T, I) C-contiguous; W_ih (3H, I), W_hh (3H, H), b_ih, b_hh (3H,) (zeros without bias); Wp_ih
    W_ih's packed panels (:func:`~numgru.kernels.panel.pack_panels`, whole, as a frozen model keeps
    them: taken where 2H columns make whole panels, else W_ih's two parts are packed here) or an empty
    (0, 0, 0) array; Wp_rz and Wp_n the panels of W_hh[:2H] and W_hh[2H:]
    (:func:`~numgru.kernels.step.step_panels`), or empty arrays to pack them here; h0 (1, H); y
    (T, 1, D·H), whose columns col0 … col0+H−1 receive h_t; h_n (1, H) the last state. One float
    dtype throughout. ``reverse``: time runs from T − 1 down."""
    wide_vectors()
    T, I = x2d.shape
    H = h0.shape[1]
    H2 = 2 * H
    M = 3 * H
    if W_ih.shape[0] != M or W_ih.shape[1] != I or W_hh.shape[0] != M or W_hh.shape[1] != H or \
            b_ih.shape[0] != M or b_hh.shape[0] != M or h0.shape[0] != 1 or h_n.shape[0] != 1 or \
            h_n.shape[1] != H or y.shape[0] != T or y.shape[1] != 1 or \
            not 0 <= col0 <= y.shape[2] - H:
        raise ValueError("gru_forward_fused_before: shapes do not match")
    nc = panel_width(x2d.dtype.type(0))
    for Wp, rows, K in ((Wp_ih, M, I), (Wp_rz, H2, H), (Wp_n, H, H)):
        if Wp.shape[0] > 0 and (Wp.shape[0] != (rows + nc - 1) // nc or Wp.shape[1] != K or Wp.shape[2] != nc):
            raise ValueError("gru_forward_fused_before: shapes do not match (panels)")
    if T == 0:
        h_n[0] = h0[0]
        return
    if Wp_ih.shape[0] > 0 and H2 % nc == 0:
        Wi_rz = Wp_ih[:H2 // nc]
        Wi_n = Wp_ih[H2 // nc:]
    else:
        Wi_rz = pack_panels(W_ih[:H2])
        Wi_n = pack_panels(W_ih[H2:])
    Wh_rz = pack_panels(W_hh[:H2]) if Wp_rz.shape[0] == 0 else Wp_rz
    Wh_n = pack_panels(W_hh[H2:]) if Wp_n.shape[0] == 0 else Wp_n
    R = block_rows_fused(x2d.dtype.type(0))
    # the projection of a block's R steps, its r, z columns and its n columns apart (each product's
    # share writes one of them), this block's and the next's
    cur_rz = np.zeros((R, H2), x2d.dtype)
    cur_n = np.zeros((R, H), x2d.dtype)
    nxt_rz = np.zeros((R, H2), x2d.dtype)
    nxt_n = np.zeros((R, H), x2d.dtype)
    xb = np.empty((R, I), x2d.dtype)
    rec_rz = np.empty((1, H2), x2d.dtype)
    rec_n = np.empty((1, H), x2d.dtype)
    rh = np.empty((1, H), x2d.dtype)
    z = np.empty(H, x2d.dtype)
    ha = h0.copy()
    hb = np.empty((1, H), x2d.dtype)
    bi_r, bi_z, bi_n = b_ih[:H], b_ih[H:H2], b_ih[H2:]
    bh_r, bh_z, bh_n = b_hh[:H], b_hh[H:H2], b_hh[H2:]
    _rows_of_steps(x2d, xb, 0, T, reverse)
    panel_rows(xb, Wi_rz, b_ih, False, cur_rz, 0, min(R, T))
    panel_rows(xb, Wi_n, b_ih, False, cur_n, 0, min(R, T))
    blocks = (T + R - 1) // R
    for blk in range(blocks):
        s0 = blk * R
        more = blk + 1 < blocks  # then this block has all R steps, one share of the next's projection each
        if more:
            _rows_of_steps(x2d, xb, s0 + R, T, reverse)
            nxt_rz[:] = 0
            nxt_n[:] = 0
        for s in range(min(R, T - s0)):
            k0 = s * I // R
            k1 = (s + 1) * I // R
            if more:
                fused_step(ha, Wh_rz, rec_rz, xb, Wi_rz, nxt_rz, k0, k1)
            else:
                panel_matmul(ha, Wh_rz, rec_rz, 1)
            h = ha[0]
            g_r = cur_rz[s, :H]
            g_z = cur_rz[s, H:]
            a_r = rec_rz[0, :H]
            a_z = rec_rz[0, H:]
            rh0 = rh[0]
            for j in range(H):
                z[j] = sigmoid_fast(g_z[j] + bi_z[j] + a_z[j] + bh_z[j])
            for j in range(H):
                rh0[j] = sigmoid_fast(g_r[j] + bi_r[j] + a_r[j] + bh_r[j]) * h[j]
            if more:
                fused_step(rh, Wh_n, rec_n, xb, Wi_n, nxt_n, k0, k1)
            else:
                panel_matmul(rh, Wh_n, rec_n, 1)
            g_n = cur_n[s]
            a_n = rec_n[0]
            hb0 = hb[0]
            for j in range(H):
                n = tanh_fast(g_n[j] + bi_n[j] + a_n[j] + bh_n[j])
                hb0[j] = n + z[j] * (h[j] - n)
            t = T - 1 - (s0 + s) if reverse else s0 + s
            yt = y[t, 0]
            for j in range(H):
                yt[unwrapped(col0 + j)] = hb0[j]
            ha, hb = hb, ha
        cur_rz, nxt_rz = nxt_rz, cur_rz
        cur_n, nxt_n = nxt_n, cur_n
    h_n[0] = ha[0]
