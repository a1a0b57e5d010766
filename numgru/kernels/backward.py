"""GRU backward kernel: backpropagation through time for one layer and one direction.

The kernel produces the gradients of the gate pre-activations at every step; the weight gradients are
then GEMMs over the whole sequence (done by the caller), so their summation order does not depend on the
thread count. Per step: the gate gradients of all rows in one fused loop, then one matmul
``dgh_t @ W_hh`` for the gradient flowing into h_{t−1} (reset_after=False needs an extra one for
d(r ⊙ h) = dn_pre @ W_hn first), by the forward's routes
(:func:`~numgru.kernels.forward.step_product`): on panels of W_hh packed once per call
(:mod:`~numgru.kernels.panel`) where they win, else on a transposed copy of W_hh. Paired A/B of
forward_train + backward against the routes without panels (T = 128, one thread, float32):
B = 16 / 32 / 64, H = 256 1.19× / 1.16× / 1.06×; B = 8, H = 128 1.04×; H = 64 level.

There is one variant, serial. With several threads it runs on ranges of rows side by side on plain
worker threads where :func:`~numgru.kernels.dispatch.training_row_ranges` allows (every row's sums
those of one call; Zen 4, two threads, T = 128, B = 64, H = 256: 48 → 26 ms), on AMX tiles by
ranges in a parallel region, else as one call whose wide per-step matmuls BLAS may thread. A variant
that spread the gate loops over rows with ``prange`` between BLAS-threaded matmuls ran 5–10× slower
on 2 vCPUs (T = 128, B = 64, H = 256: 1125 ms against 108), its parallel regions waiting for cores
that OpenBLAS's idle workers were spinning on.
"""
import numpy as np

from numba import prange
from numba.extending import overload

from ._jit import FASTMATH, inline, kernel, parallel_kernel, unwrapped, wide_vectors
from .activations import gate_grad, kind_is_sigmoid, one_like
from .forward import active_rows, panel_steps, step_product, wants_panels
from .amx import _amx_scratch, _tile_config, _tile_rows_product, tile_config, tile_release
from .dpbf16 import CHUNK_ROWS, product_rows
from .panel import TN_SLAB, aligned_empty, gemm_nn, gemm_tn, pack_panels, prefetch, transpose8, transpose16


#: rows whose bias gradients share an accumulator (the ranges of rows that run side by side are
#: multiples of it): 8, so that 16 rows split over two threads (32 read level on one thread)
BIAS_ROWS = 8
#: rows of each range of :func:`gru_backward_amx_rows` but the last: whole 32-row blocks of the tiles,
#: as the training forward's ranges on tiles take them, and a multiple of ``BIAS_ROWS``
AMX_RANGE_ROWS = 32
#: rows ahead whose lines a step's row loop asks for (:func:`prefetch_row`)
PREFETCH_ROWS = 2


@inline
def prefetch_row(a, t, b, c0, n):
    """Ask for the cache lines of a[t, b, c0:c0 + n] (a (T, B, ·) C-contiguous; a hint)."""
    o = (t * a.shape[1] + b) * a.shape[2] + c0
    for q in range(0, n, 64 // a.itemsize):
        prefetch(a, o + q)


def _gru_backward(dy, col0, dh_n, tape, y, h0, W_T, Wp_given, lengths, sorted_desc, reverse, reset_after,
                  gate_kind, alpha, beta, use_clip, clip, dgx, dgh, hprev, rhprev, dh0, db_ih, db_hh,
                  tiled_max, Wv_T, Wd, order, b0, b1):
    """Backward pass of one GRU layer, one direction, in the reverse of the forward's step order.

    Arrays (C-contiguous, one float dtype):

    dy       (T, B, DH)  in.  dLoss/dy of the layer output; columns col0 … col0+H−1 belong here.
    dh_n     (B, H)      in.  dLoss/dh_n for this direction.
    tape     (T, B, 4H)  in.  r, z, n, ghn stored by the forward kernel (``store=True``); 5H with
                              ``use_clip`` (the clip flags).
    y        (T, B, DH)  in.  The forward output of the layer (gives h_{t−1}).
    h0       (B, H)      in.  The forward's initial state.
    W_T      (H, 3H)     in.  W_hh transposed (a C-contiguous copy), so that d @ W_hh = d @ W_T.T.
    Wp_given (P, 3H, NC) in.  W_T's panels as :func:`~numgru.kernels.panel.pack_panels` (W_T) gives
                              them (reset_after, off the tiles), packed by the caller where the steps
                              take them (:func:`~numgru.kernels.dispatch.gru_direction_backward` decides,
                              by the whole batch's rows); or (0, 0, 0): the steps' products off them.
    lengths  (B,) int64  in.  As in the forward; ``sorted_desc`` likewise limits each step's GEMMs to
                              the active prefix of rows.
    dgx      (T, B, 3H)  out. dLoss/d(x W_ih.T + b_ih) per step (zeros past a row's length).
    dgh      (T, B, 3H)  out. reset_after: dLoss/d(W_hh h + b_hh) per step (zeros past a row's
                              length); or (T, B, H), its n block alone, dLoss/d(W_hn h + b_hn):
                              its r and z blocks are dgx's, and a weight gradient on tiles takes
                              them from there (writing them out again cost 2.5–3 ms of 24 at
                              T = 128, B = 64, H = 256), the steps' products reading a scratch of
                              B rows. Pass (0, 0, 0) where not reset_after: dgh is dgx (its n
                              block dLoss/d(W_hn (r ⊙ h) + b_hn)).
    hprev    (T, B, H)   out. h_{t−1} per valid step (zeros past a row's length): the input of dW_hh.
    rhprev   (T, B, H)   out. r ⊙ h_{t−1} (reset_after=False; pass (0, 0, 0) otherwise): input of dW_hn.
    dh0      (B, H)      out. dLoss/dh0.
    db_ih    (⌈B / BIAS_ROWS⌉, 3H) float64  out. Per group of ``BIAS_ROWS`` rows, the Σ over their
                              valid steps of dgx (each step's group summed in the arrays' dtype,
                              then added in float64; the groups summed in order by the caller:
                              dLoss/db_ih); must arrive zeroed.
    db_hh    (⌈B / BIAS_ROWS⌉, H) float64  out. Likewise of dgh's n block (reset_after; dLoss/db_hh's n
                              block: its r and z blocks, and with reset_after=False all of it, are
                              db_ih's, summed in the same order). Summed in float64
                              step by step (NumPy's float32 pairwise sum over the T·B rows
                              afterwards was a second pass over both arrays: 6.4 ms at T = 128,
                              B = 64, H = 256), by groups of rows so that ranges of whole groups may
                              run on several threads with the same result (a sum per row streamed
                              its accumulators through L2: 5.8 ms of the step there).

    Scalars as in the forward kernel; ``reverse`` says which direction the forward ran; ``tiled_max``
    as in :func:`~numgru.kernels.forward.recurrent_matmul`. Only rows b0 … b1−1 are read and written
    (the kernel's scratch and steps' products are theirs), so that disjoint ranges may run at the
    same time (:func:`gru_backward_amx_rows`). ``Wv_T``: None, or (reset_after, float32)
    W_T's pieces for AMX tiles (:func:`~numgru.kernels.amx.pack_amx`), which then take each step's
    product with the pieces' ``order`` (:mod:`~numgru.kernels.amx`; 3: to float32 accuracy)
    (:func:`gru_backward_amx`, compiled only where the CPU runs AMX; in
    :func:`gru_backward_serial` the branch is pruned); a gradient the tiles refuse (NaN, ±Inf)
    sends that step and the rest to the float32 product. ``Wd``: None, or (reset_after, float32,
    "medium" precision) W_T's bfloat16 panels (:func:`~numgru.kernels.dpbf16.pack_pairs`), which then
    take each step's product by AVX512-BF16's bfloat16 products (:func:`gru_backward_dpbf16`; pruned
    elsewhere), a gradient they refuse sending that step and the rest to the float32 product. Per
    step and row the gate gradients run in short loops that each touch few arrays, so LLVM
    vectorises them.
    """
    wide_vectors()
    T = tape.shape[0]
    B = b1 - b0
    H = h0.shape[1]
    lens = lengths[b0:b1]
    H2 = 2 * H
    dt = tape.dtype
    dh = np.empty((B, H), dt)
    dhp = np.empty((B, H), dt)
    tmp = np.empty((B, H), dt)
    dan = np.zeros((B, H), dt)
    drh = np.empty((B, H), dt)
    darz = np.zeros((B, H2), dt)
    full = dgh.shape[2] == 3 * H
    n0 = dgh.shape[2] - H  # where dgh's n block starts
    dgs = np.zeros((B if reset_after and not full else 0, 3 * H), dt)  # the step's dgh rows
    g_all = np.empty((B, H), dt)
    bsum_i = np.zeros(3 * H, dt)
    bsum_h = np.zeros(H, dt)
    buf = np.empty(3 * H * B, dt)
    # reset_after=False multiplies by the r, z and the n columns of W_T separately: C-contiguous copies,
    # on a 64-byte line as W_T is (the dot-product block sums from where W's rows meet a line, so
    # copies placed anywhere in a line gave sums that differed in their last bits from call to call)
    Hs = 0 if reset_after else H
    W_rz_T = aligned_empty(Hs * H2, dt).reshape((Hs, H2))
    W_n_T = aligned_empty(Hs * H, dt).reshape((Hs, H))
    for k in range(Hs):
        for j in range(H2):
            W_rz_T[k, j] = W_T[k, j]
        for j in range(H):
            W_n_T[k, j] = W_T[k, H2 + j]
    # packed panels (:mod:`~numgru.kernels.panel`) of the matrices each step multiplies by, where some
    # step's product takes them; else the forward's other matmul routes. W_T's come from the caller;
    # reset_after=False's blocks are packed here by the whole batch's rows, h0's (a range of rows packs
    # where one call over all rows would, so that its rows sum alike, dispatch.training_row_ranges)
    empty = np.empty((0, 0, 0), dt)
    Ball = h0.shape[0]
    Tp = panel_steps(T, Ball, True)
    Wp_T = Wp_given if reset_after and Wv_T is None else empty
    Wp_n = pack_panels(W_n_T) if not reset_after and wants_panels(H, H, Ball, Tp, tiled_max, False) else empty
    Wp_rz = pack_panels(W_rz_T) if not reset_after and wants_panels(H, H2, Ball, Tp, tiled_max, False) else empty
    for b in range(B):
        for j in range(H):
            dh[b, j] = dh_n[b0 + b, j]
    # (one 16-row tile only where the whole batch takes one, so a range's rows sum as on one thread)
    A, A3, acc, acc3 = _amx_scratch(B, 3 * H, H, h0.shape[0] <= 16) if Wv_T is not None \
        else _amx_scratch(0, 0, 0, False)
    on_tiles = Wv_T is not None
    if Wv_T is not None:
        tile_config(_tile_config())
    on_dp = Wd is not None
    Ad = np.empty((CHUNK_ROWS if Wd is not None else 0, 2 * ((3 * H + 1) // 2)), np.uint16)
    zeros_h = np.zeros(H if Wd is not None else 0, dt)
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            L = lens[b]
            # the lines of the row PREFETCH_ROWS ahead: tape and dy come from memory (written long
            # before), dgx and hprev go to it, and the hardware's prefetchers ran behind (T = 128,
            # B = 64, H = 256, the kernel alone: 18.0–20.1 against 18.3–22.0 ms)
            if b + PREFETCH_ROWS < B:
                bp = b0 + b + PREFETCH_ROWS
                prefetch_row(tape, t, bp, 0, tape.shape[2])
                prefetch_row(dy, t, bp, col0, H)
                prefetch_row(dgx, t, bp, 0, 3 * H)
                prefetch_row(hprev, t, bp, 0, H)
            dhb = dh[b]
            dhpb = dhp[b]
            if t >= L:  # past the row's length: no gradient for this step
                for j in range(H):
                    dhpb[j] = dhb[j]
                dgxb = dgx[t, b0 + b]
                for j in range(3 * H):
                    dgxb[j] = 0.0
                if reset_after:
                    dghb = dgh[t, b0 + b]
                    for j in range(dgh.shape[2]):
                        dghb[j] = 0.0
                    if not full:
                        dgsb = dgs[b]
                        for j in range(3 * H):
                            dgsb[j] = 0.0
                hpb = hprev[t, b0 + b]
                for j in range(H):
                    hpb[j] = 0.0
                if not reset_after:
                    danb = dan[b]
                    rhb = rhprev[t, b0 + b]
                    for j in range(H):
                        danb[j] = 0.0
                        rhb[j] = 0.0
                continue
            hpb = hprev[t, b0 + b]
            if reverse:
                has_prev = t + 1 < L
                tp = t + 1
            else:
                has_prev = t >= 1
                tp = t - 1
            if has_prev:
                src = y[tp, b0 + b, col0:col0 + H]  # slices, as the forward reads y (B = 16, H = 64: 1.03×)
                for j in range(H):
                    hpb[j] = src[j]
            else:
                src = h0[b0 + b]
                for j in range(H):
                    hpb[j] = src[j]
            tb = tape[t, b0 + b]
            dyb = dy[t, b0 + b, col0:col0 + H]
            gb = g_all[b]
            for j in range(H):
                gb[j] = dhb[j] + dyb[j]
            dgxb = dgx[t, b0 + b]
            one = one_like(gb[0])
            if kind_is_sigmoid(gate_kind) and not use_clip:
                for j in range(H):
                    r = tb[j]
                    z = tb[H + j]
                    n = tb[H2 + j]
                    g = gb[j]
                    da_n = g * (one - z) * (one - n * n)
                    dgxb[unwrapped(H + j)] = g * (hpb[j] - n) * z * (one - z)
                    dgxb[unwrapped(H2 + j)] = da_n
                    if reset_after:
                        dgxb[j] = da_n * tb[3 * H + j] * r * (one - r)
            else:
                for j in range(H):
                    r = tb[j]
                    z = tb[H + j]
                    n = tb[H2 + j]
                    g = gb[j]
                    k_r = one
                    k_z = one
                    k_n = one
                    if use_clip:
                        m = int(tb[4 * H + j])
                        k_r = one - (m & 1)
                        k_z = one - ((m >> 1) & 1)
                        k_n = one - ((m >> 2) & 1)
                    da_n = g * (one - z) * (one - n * n) * k_n
                    dgxb[unwrapped(H + j)] = g * (hpb[j] - n) * gate_grad(z, gate_kind, alpha) * k_z
                    dgxb[unwrapped(H2 + j)] = da_n
                    if reset_after:
                        dgxb[j] = da_n * tb[3 * H + j] * gate_grad(r, gate_kind, alpha) * k_r
                    else:
                        # keep k_r for the second half of the step (after d(r ⊙ h))
                        darz[b, j] = k_r
            for j in range(H):
                dhpb[j] = gb[j] * tb[H + j]
            if reset_after:
                dghb = dgh[t, b0 + b]
                for j in range(H):
                    dghb[unwrapped(n0 + j)] = dgxb[H2 + j] * tb[j]
                if full:
                    for j in range(H2):
                        dghb[j] = dgxb[j]
                else:
                    dgsb = dgs[b]
                    for j in range(H2):
                        dgsb[j] = dgxb[j]
                    for j in range(H):
                        dgsb[unwrapped(H2 + j)] = dghb[j]
            else:
                danb = dan[b]
                for j in range(H):
                    danb[j] = dgxb[H2 + j]
                rhb = rhprev[t, b0 + b]
                for j in range(H):
                    rhb[j] = tb[j] * hpb[j]
        n_act = active_rows(lens, t, sorted_desc)
        if reset_after:
            if Wv_T is not None:
                if on_tiles and n_act > 0:
                    if _tile_rows_product(dgh[t, b0:b1] if full else dgs, n_act, Wv_T, A, A3, acc, acc3,
                                          order):
                        for b in range(n_act):
                            ab = acc[b]
                            tmpb = tmp[b]
                            for j in range(H):
                                tmpb[j] = ab[j]
                    else:
                        tile_release()
                        on_tiles = False
            if Wd is not None:
                if on_dp and n_act > 0 and not product_rows(dgh[t, b0:b1] if full else dgs, n_act, Wd, H,
                                                            zeros_h, tmp, Ad):
                    on_dp = False
            if n_act > 0 and not on_tiles and not on_dp:
                step_product(W_T, Wp_T, dgh[t, b0:b1] if full else dgs, tmp, buf, n_act, tiled_max, s % 2 == 1)
        else:
            # d(r ⊙ h_prev) = dn_pre @ W_hn, then the r gate, then the r, z blocks' matmul
            if n_act > 0:
                step_product(W_n_T, Wp_n, dan, drh, buf, n_act, tiled_max, s % 2 == 1)
            for b in range(B):
                darzb = darz[b]
                if t >= lens[b]:
                    for j in range(H2):
                        darzb[j] = 0.0
                    continue
                tb = tape[t, b0 + b]
                hpb = hprev[t, b0 + b]
                drhb = drh[b]
                dgxb = dgx[t, b0 + b]
                dhpb = dhp[b]
                one = one_like(tb[0])
                simple = kind_is_sigmoid(gate_kind) and not use_clip
                for j in range(H):
                    r = tb[j]
                    k_r = one if simple else darzb[j]
                    dhpb[j] += drhb[j] * r
                    da_r = drhb[j] * hpb[j] * gate_grad(r, gate_kind, alpha) * k_r
                    dgxb[j] = da_r
                    darzb[j] = da_r
                for j in range(H):
                    darzb[unwrapped(H + j)] = dgxb[H + j]
            if n_act > 0:
                step_product(W_rz_T, Wp_rz, darz, tmp, buf, n_act, tiled_max, s % 2 == 1)
        for b in range(B):
            dhb = dh[b]
            dhpb = dhp[b]
            if b < n_act:
                tmpb = tmp[b]
                for j in range(H):
                    dhb[j] = dhpb[j] + tmpb[j]
            else:
                for j in range(H):
                    dhb[j] = dhpb[j]
            if t < lens[b]:  # the bias gradients, while the step's rows are in cache
                dgxb = dgx[t, b0 + b]
                for j in range(3 * H):
                    bsum_i[j] += dgxb[j]
                if reset_after:
                    dghb = dgh[t, b0 + b]
                    for j in range(H):
                        bsum_h[j] += dghb[n0 + j]
            if (b0 + b + 1) % BIAS_ROWS == 0 or b == B - 1:  # a group's rows of this step, into float64
                dbi = db_ih[(b0 + b) // BIAS_ROWS]
                dbh = db_hh[(b0 + b) // BIAS_ROWS]
                for j in range(3 * H):
                    dbi[j] += bsum_i[j]
                    bsum_i[j] = 0.0
                for j in range(H):
                    dbh[j] += bsum_h[j]
                    bsum_h[j] = 0.0
    if Wv_T is not None:
        if on_tiles:
            tile_release()
    for b in range(B):
        for j in range(H):
            dh0[b0 + b, j] = dh[b, j]


@kernel
def matmul_into(a, b, out, accumulate):
    """out = a @ b (or out += a @ b with ``accumulate``) in the BLAS Numba links (see
    :func:`numgru.kernels.forward.input_projection_kernel` for why one BLAS).

    a (M, K) and b (K, N) C- or F-contiguous (transposed views are fine); out (M, N) C-contiguous.
    """
    wide_vectors()
    if accumulate:
        tmp = np.empty_like(out)
        np.dot(a, b, tmp)
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += tmp[i, j]
    else:
        np.dot(a, b, out)


#: rows and columns of one tile of :func:`transpose_into`
TRANSPOSE_TILE = 16


@kernel
def transpose_into(W, out):
    """out (K, M) = W (M, K).T, both C-contiguous, one dtype, in tiles of ``TRANSPOSE_TILE`` rows by
    as many columns, whose reads and writes stay in L1: the backward's W_hh.T, made on every call. A
    strided copy (NumPy's, into a fresh array) read each value of a column on a line of its own and
    faulted its pages in: 1536 × 512 float32, the weights at H = 512, 2.3 ms a call, a third of a
    two-step backward's (one thread)."""
    wide_vectors()
    M, K = W.shape
    if out.shape[0] != K or out.shape[1] != M:
        raise ValueError("transpose_into: shapes do not match")
    n = TRANSPOSE_TILE
    for i0 in range(0, M, n):
        i1 = min(M, i0 + n)
        for k0 in range(0, K, n):
            k1 = min(K, k0 + n)
            if i1 - i0 == n and k1 - k0 == n and _transpose_tile(W, out, i0, k0):
                continue
            for k in range(k0, k1):
                row = out[k]
                for i in range(i0, i1):
                    row[i] = W[i, k]


def _transpose_tile(W, out, i0, k0):
    """out[k0 + k, i0 + i] = W[i0 + i, k0 + k] for a whole tile of :func:`transpose_into` (i, k <
    ``TRANSPOSE_TILE``) in vector registers: 32-bit values by :func:`~numgru.kernels.panel.transpose16`
    (1536 × 512 float32 0.64 → 0.15 ms), 64-bit ones in four blocks of
    :func:`~numgru.kernels.panel.transpose8` (1536 × 512 float64 1.18–1.19 → 0.48–0.55 ms): True;
    other values are left to the caller's element loop (False)."""


@overload(_transpose_tile, jit_options={"fastmath": set(FASTMATH)})
def _ol_transpose_tile(W, out, i0, k0):
    if W.dtype.bitwidth == 32 and out.dtype.bitwidth == 32:
        def impl(W, out, i0, k0):
            transpose16(W, i0 * W.shape[1] + k0, W.shape[1], out, k0 * out.shape[1] + i0, out.shape[1])
            return True
        return impl
    if W.dtype.bitwidth == 64 and out.dtype.bitwidth == 64:
        def impl64(W, out, i0, k0):
            for a in range(0, TRANSPOSE_TILE, 8):
                for b in range(0, TRANSPOSE_TILE, 8):
                    transpose8(W, (i0 + a) * W.shape[1] + k0 + b, W.shape[1], out,
                               (k0 + b) * out.shape[1] + i0 + a, out.shape[1])
            return True
        return impl64
    return lambda W, out, i0, k0: False


@inline
def _check_gradient(D, c0, m1, D2, X, out):
    N = X.shape[0]
    if D.shape[0] != N or D2.shape[0] != N or c0 < 0 or m1 < 0 or c0 + m1 > D.shape[1] or \
            out.shape[0] != m1 + D2.shape[1] or out.shape[1] != X.shape[1]:
        raise ValueError("weight_gradient_panels: shapes do not match")


#: rows summed (N) up to which :func:`weight_gradient_panels` writes out directly whatever its size
GRADIENT_DIRECT_ROWS = 32
#: ... and past that while out holds at least this many bytes per summed row (its transpose then costs
#: more than the slab form's better blocks save). Zen 4, one thread, ms, slabs / direct: float32
#: 1536 × 512, N = 6 / 128 / 1024 / 2048 1.23 / 3.18 / 17.0 / 32.8 against 0.11 / 1.84 / 15.3 / 32.6;
#: 768 × 256, N = 4 / 64 / 256 / 512 0.17 / 0.37 / 1.05 / 1.95 against 0.02 / 0.25 / 0.99 / 2.00;
#: 192 × 64, N = 16 / 128 / 2048 0.012 / 0.035 / 0.45 against 0.006 / 0.041 / 0.66; float64
#: 768 × 256, N = 512 / 1024 4.3 / 8.1 against 3.8 / 8.8
GRADIENT_DIRECT_BYTES_PER_ROW = 2048


@kernel
def weight_gradient_panels(D, c0, m1, D2, X, out, r0, r1):
    """out[:, r0:r1] = [D[:, c0:c0 + m1] | D2].T @ X[:, r0:r1]: (columns of) a weight gradient, the
    gate gradients (N, ·) and (N, M2) by the layer's inputs X (N, I) summed over the N rows, on the
    panel block (:func:`~numgru.kernels.panel.gemm_tn`) with the operands where they lie; out
    (m1 + M2, I). All C-contiguous, one float dtype. Each sum's order depends on N and out's shape
    alone (chunks of k), so ranges of columns may run on several threads with the results of one call.

    Over few rows (:data:`GRADIENT_DIRECT_ROWS`, or :data:`GRADIENT_DIRECT_BYTES_PER_ROW` of out a
    row) the block's rows are D's columns and its strips X's, writing out as it lies; else the rows
    are X's columns, TN_SLAB at a time, the strips D's, and each slab of out.T is transposed into
    out, a cost that grows with out (M·I) alone, where the products grow with N too."""
    wide_vectors()
    _check_gradient(D, c0, m1, D2, X, out)
    if r0 < 0 or r1 < r0 or r1 > X.shape[1]:
        raise ValueError("weight_gradient_panels: columns out of range")
    N = X.shape[0]
    m2 = D2.shape[1]
    if N <= GRADIENT_DIRECT_ROWS or N * GRADIENT_DIRECT_BYTES_PER_ROW <= out.size * out.itemsize:
        gemm_tn(D, X, c0, m1, r0, r1 - r0, out, 0, r0)
        gemm_tn(D2, X, 0, m2, r0, r1 - r0, out, m1, r0)
        return
    for s0 in range(r0, r1, TN_SLAB):
        s1 = min(r1, s0 + TN_SLAB)
        oT = np.empty((s1 - s0, m1 + m2), X.dtype)
        gemm_tn(X, D, s0, s1 - s0, c0, m1, oT, 0, 0)
        gemm_tn(X, D2, s0, s1 - s0, 0, m2, oT, 0, m1)
        for j in range(m1 + m2):
            for r in range(s0, s1):
                out[j, r] = oT[r - s0, j]


@kernel
def input_gradient_strips(dG, W, out, c0, c1):
    """out[:, c0:c1] = dG @ W[:, c0:c1]: columns of the gradient flowing into a layer's input, the gate
    gradients dG (N, 3H) by W_ih (3H, I) as it lies (:func:`~numgru.kernels.panel.gemm_nn`), out (N, I);
    all C-contiguous, one float dtype. Each sum's order depends on 3H alone, so ranges of columns may
    run on several threads with the results of one call."""
    wide_vectors()
    gemm_nn(dG, W, out, c0, c1)


gru_backward_serial = kernel(_gru_backward, name="gru_backward_serial")
gru_backward_amx = kernel(_gru_backward, name="gru_backward_amx")
gru_backward_dpbf16 = kernel(_gru_backward, name="gru_backward_dpbf16")


@parallel_kernel(name="gru_backward_amx_rows_parallel")
def gru_backward_amx_rows(dy, col0, dh_n, tape, y, h0, W_T, Wp_given, lengths, sorted_desc, reverse, reset_after,
                          gate_kind, alpha, beta, use_clip, clip, dgx, dgh, hprev, rhprev, dh0, db_ih,
                          db_hh, tiled_max, Wv_T, order, n_chunks):
    """:func:`gru_backward_amx` on Numba's threads: the B rows in ``n_chunks`` ranges (multiples of
    ``AMX_RANGE_ROWS``, 32, but the last), each running every step on its own core's tiles (a row's
    gradients through time never meet another row's but in the weight and bias sums, which the
    caller makes). Each row's arithmetic, and each group's bias sums, are those of one thread's run."""
    wide_vectors()
    B = h0.shape[0]
    per = (B + AMX_RANGE_ROWS * n_chunks - 1) // (AMX_RANGE_ROWS * n_chunks) * AMX_RANGE_ROWS
    nc = (B + per - 1) // per
    for c in prange(nc):
        wide_vectors()
        gru_backward_amx(dy, col0, dh_n, tape, y, h0, W_T, Wp_given, lengths, sorted_desc, reverse, reset_after,
                         gate_kind, alpha, beta, use_clip, clip, dgx, dgh, hprev, rhprev, dh0, db_ih,
                         db_hh, tiled_max, Wv_T, None, order, c * per, min(B, (c + 1) * per))
