"""GRU forward kernel: the time loop of one layer and one direction.

The input projection ``gx = x @ W_ih.T + b_ih`` is hoisted out of the time loop by the caller (one GEMM
over all T·B rows, :func:`input_projection_kernel`: BLAS, packed panels of W_ih on one thread for
I ≤ 128, or for a few dozen rows the dot-product block, as :mod:`~numgru.kernels.dispatch` chooses;
:func:`input_projection_parallel` on Numba's threads; or, where all of gx would leave L2, a chunk of
steps at a time just before those steps, :func:`gru_forward_chunked`). Per time step the kernel makes one recurrent
matmul (two for reset_after=False, which needs r before the n block) on the rows still active at that
step, then runs the gate arithmetic in short fused loops over the step's pre-activations. Workspace is
allocated once, before the time loop.

For sequences of 4+ steps with float weights the kernel packs W_hh once per call into panels of W_hh.T
(:mod:`~numgru.kernels.panel`) and runs each step's product there, a register-blocked outer-product
kernel written in LLVM's vector IR, wherever :func:`use_panels` says it wins: one row while W_hh fits
L2, 2–16 rows at any size, more rows up to H = 512 (the backward's products at any H; on Zen 4, one
thread, at any H). Paired A/B against the routes below (T = 128, one thread, float32, 2-vCPU Intel):
B = 16, H = 256 1.30–1.48×; B = 64, H = 256 1.19–1.20×; B = 16, H = 1024 1.15–1.29×; B = 8, H = 512
1.34×; B = 1, H = 256 1.31×; B = 2–8 at H = 128–256 1.13–1.20×; H = 64 level. Otherwise the
product goes by :func:`recurrent_matmul`, by shape: for B = 2–32 up to H = 512 (and up to
``tiled_max`` rows beyond) the dot-product block on the unpacked weights
(:mod:`~numgru.kernels.dotblock`; bfloat16 weights: :func:`small_rows_matmul`, in tiles once W leaves
L2), for B = 1 while W_hh fits L2 :func:`small_rows_matmul`; a BLAS GEMV at B = 1 for
H > 256; a BLAS GEMM in the orientation BLAS runs fastest beyond (:func:`rows_matmul_T`). (The panels
replaced a route through OpenBLAS's small-matrix kernels, ``h @ W_hh.T`` on a transposed copy of W_hh,
which they beat at every shape it took.) Weights beyond L2 are read block by block, in reverse order
every other step, so that each step starts on what the step before left in L2
(:func:`step_product`). :func:`_gru_forward` is built serial only (a parallel build spread its
gate loops over rows between BLAS-threaded steps, and lost to the serial one: see
:mod:`numgru.kernels.dispatch`). With several threads, inference instead runs
:func:`_gru_forward_rows` (the batch split into row chunks, each a whole sequence on one thread) or
:func:`_gru_forward_cols` (each step split over hidden units; reset_after=False in two halves a step,
:func:`_gru_forward_cols_before`) where :func:`~numgru.kernels.dispatch.forward_route` says.
"""
import numpy as np
from numba import prange
from numba.extending import overload

from ._jit import (FASTMATH, avx512_zen, call_native, device, inline, kernel, parallel_kernel, unwrapped,
                   wide_vectors)
from .activations import clip_pre, clipped, gate, one_like, sigmoid_fast, tanh_fast
from .bf16 import is_bfloat16, is_bfloat16_array, wget
from .dotblock import dot_rows
from .panel import (aligned_empty, fill_panel, fill_panels_of, pack_panels, pack_panels_into, pack_panels_of_transpose,
                    fill_panel_from, packed_depth, panel_block, panel_matmul, panel_rows, panel_slots,
                    panel_width, panels_for, panels_in, put_row, WIDE_GROUP, WIDE_PANELS_BYTES)
from .sync import block_done, claim_block, round_pending, rounds_sync, wait_round, worker_started


@inline
def _row_after(gxb, ab, b_hh, hcb, hnb, wb, kind, alpha, beta, use_clip, clip, H):
    """Gates of one row, reset_after=True. Reads gxb (3H), ab (3H, W_hh h), b_hh, hcb; writes hnb (H)
    and wb (the row's tape: r, z, n, ghn in training, else workspace). Each loop
    touches few arrays so LLVM vectorises it; the common case (sigmoid, no clip) has its own
    branch-free loops. Inference in that case takes :func:`_row_after_fast`."""
    H2 = 2 * H
    if kind == 0 and not use_clip:
        # one output block per loop: with four written blocks in one loop LLVM gave up vectorising
        # (training's forward ran 73 ms against inference's 44 at T=128, B=64, H=256)
        wr = wb[:H]
        wz = wb[H:H2]
        wn = wb[H2:3 * H]
        wg = wb[3 * H:4 * H]
        for j in range(H):
            wr[j] = sigmoid_fast(gxb[j] + ab[j] + b_hh[j])
        for j in range(H):
            wz[j] = sigmoid_fast(gxb[H + j] + ab[H + j] + b_hh[H + j])
        for j in range(H):
            wg[j] = ab[H2 + j] + b_hh[H2 + j]
        for j in range(H):
            wn[j] = tanh_fast(gxb[H2 + j] + wr[j] * wg[j])
    else:
        for j in range(H):
            r = gate(clip_pre(gxb[j] + ab[j] + b_hh[j], use_clip, clip), kind, alpha, beta)
            ghn = ab[H2 + j] + b_hh[H2 + j]
            wb[j] = r
            wb[H + j] = gate(clip_pre(gxb[H + j] + ab[H + j] + b_hh[H + j], use_clip, clip), kind, alpha, beta)
            wb[H2 + j] = tanh_fast(clip_pre(gxb[H2 + j] + r * ghn, use_clip, clip))
            wb[3 * H + j] = ghn
    for j in range(H):
        n = wb[H2 + j]
        hnb[j] = n + wb[H + j] * (hcb[j] - n)


#: :func:`_row_after` compiled once and called: for inference with other gates or clip, its loops
#: inlined into :func:`_gru_forward`'s time loop ran slower (one thread, T = 128, B = 64, H = 64,
#: hard-sigmoid gates: 6.8–6.9 ms against 5.5–5.9 called)
_row_after_called = device(_row_after.py_func)


@kernel
def first_step_gates(gx, b_hh, lengths, reset_after, gate_kind, alpha, beta, use_clip, clip, y, col0, h_n):
    """One step of one direction from the zero state (no h0 given): W_hh h is zero there, so only
    b_hh reaches the gates and W_hh is not read. gx (B, 3H): the step's input projection with b_ih;
    b_hh (3H,); lengths (B,), 0 or 1 (a row of length 0 keeps the zero state). Writes h_1 to h_n
    (B, H) and to y[0, :, col0:col0 + H]: r = g(gx_r + b_hr), z = g(gx_z + b_hz), n = tanh(gx_n +
    r ⊙ b_hn) (reset_after) or tanh(gx_n + b_hn) (reset_before, where r ⊙ h is zero), h_1 = (1 − z) ⊙ n,
    with the step kernels' gates (g, ONNX's clip of every pre-activation) and operation order."""
    wide_vectors()
    B = gx.shape[0]
    H = h_n.shape[1]
    H2 = 2 * H
    zero = h_n.dtype.type(0.0)
    for b in range(B):
        if lengths[b] == 0:
            for j in range(H):
                h_n[b, j] = zero
                y[0, b, unwrapped(col0 + j)] = zero
            continue
        for j in range(H):
            z = gate(clip_pre(gx[b, H + j] + b_hh[H + j], use_clip, clip), gate_kind, alpha, beta)
            if reset_after:
                r = gate(clip_pre(gx[b, j] + b_hh[j], use_clip, clip), gate_kind, alpha, beta)
                n = tanh_fast(clip_pre(gx[b, H2 + j] + r * b_hh[H2 + j], use_clip, clip))
            else:
                n = tanh_fast(clip_pre(gx[b, H2 + j] + b_hh[H2 + j], use_clip, clip))
            v = n + z * (zero - n)
            h_n[b, j] = v
            y[0, b, unwrapped(col0 + j)] = v


@kernel
def step_from_products(gx, gh, h0, lengths, gate_kind, alpha, beta, use_clip, clip, y, col0, h_n):
    """One step of one direction (reset_after) whose products are made: gx (B, 3H) the step's input
    projection with b_ih, gh (B, 3H) = h0 @ W_hh.T + b_hh; h0 (B, H); lengths (B,), 0 or 1 (a row of
    length 0 keeps h0, its output zero). Writes h_1 to h_n (B, H) and to y[0, :, col0:col0 + H]:
    r = g(gx_r + gh_r), z = g(gx_z + gh_z), n = tanh(gx_n + r ⊙ gh_n), h_1 = n + z ⊙ (h0 − n), with the
    step kernels' gates (g, ONNX's clip of every pre-activation)."""
    wide_vectors()
    B = gx.shape[0]
    H = h_n.shape[1]
    H2 = 2 * H
    zero = h_n.dtype.type(0.0)
    for b in range(B):
        if lengths[b] == 0:
            for j in range(H):
                h_n[b, j] = h0[b, j]
                y[0, b, unwrapped(col0 + j)] = zero
            continue
        for j in range(H):
            r = gate(clip_pre(gx[b, j] + gh[b, j], use_clip, clip), gate_kind, alpha, beta)
            z = gate(clip_pre(gx[b, H + j] + gh[b, H + j], use_clip, clip), gate_kind, alpha, beta)
            n = tanh_fast(clip_pre(gx[b, H2 + j] + r * gh[b, H2 + j], use_clip, clip))
            v = n + z * (h0[b, j] - n)
            h_n[b, j] = v
            y[0, b, unwrapped(col0 + j)] = v


@kernel
def first_step_store(gx, b_hh, lengths, reset_after, gate_kind, alpha, beta, use_clip, clip, y, col0, h_n,
                     tape):
    """:func:`first_step_gates` for training: the first step from the zero state, its tape written as
    the step kernel writes it (:func:`_gru_forward`'s ``tape``: r, z, n, W_hn h + b_hn (reset_after)
    or W_hn (r ⊙ h) + b_hn, here b_hn, and with ``use_clip`` the clip flags) to tape (B, 4H or 5H),
    by the kernel's own gate loops with W_hh h = 0 (:func:`_row_after` on zeros, reset_after), so the
    tape and h_1 are those of the kernel's step from h0 = 0 where W_hh is finite. A row of length 0
    keeps the zero state and leaves its tape row unwritten."""
    wide_vectors()
    B = gx.shape[0]
    H = h_n.shape[1]
    H2 = 2 * H
    zero = h_n.dtype.type(0.0)
    acc = np.zeros(3 * H, h_n.dtype)  # W_hh h of the zero state
    h0 = np.zeros(H, h_n.dtype)
    fb = np.empty(H, h_n.dtype)
    for b in range(B):
        hb = h_n[b]
        if lengths[b] == 0:
            for j in range(H):
                hb[j] = zero
                y[0, b, unwrapped(col0 + j)] = zero
            continue
        gxb = gx[b]
        wb = tape[b]
        if reset_after:
            _row_after(gxb, acc, b_hh, h0, hb, wb, gate_kind, alpha, beta, use_clip, clip, H)
        else:
            for j in range(H):
                wb[j] = gate(clip_pre(gxb[j] + acc[j] + b_hh[j], use_clip, clip), gate_kind, alpha, beta)
                wb[H + j] = gate(clip_pre(gxb[H + j] + acc[H + j] + b_hh[H + j], use_clip, clip),
                                 gate_kind, alpha, beta)
            for j in range(H):
                ghn = acc[H2 + j] + b_hh[H2 + j]
                wb[3 * H + j] = ghn
                wb[H2 + j] = tanh_fast(clip_pre(gxb[H2 + j] + ghn, use_clip, clip))
            for j in range(H):
                n = wb[H2 + j]
                hb[j] = n + wb[H + j] * (zero - n)
        if use_clip:
            _clip_flags(gxb, acc, b_hh, wb, fb, clip, H, reset_after)
            for j in range(H):
                wb[4 * H + j] = fb[j]
        for j in range(H):
            y[0, b, unwrapped(col0 + j)] = hb[j]


@inline
def _row_after_fast(gx, t, b, acc, i, b_hh, hc, hn, y, col0, H):
    """:func:`_row_after` for inference with sigmoid gates and no clip, on row b of step t (state row
    i), the new state to hn[i] and y[t, b, col0:col0 + H], indexing the arrays where they lie: each
    row view takes and drops a reference count, atomically (one thread, T = 512, B = 1, H = 64:
    0.74 → 0.70 µs a step without the five views). Both stores in the one loop: a second loop
    copying hn's row to y read 22.2–22.7 µs a step against 20.4–20.9 at B = 64, H = 256 (gx in L2;
    level at H = 64, 4.20–4.39 against 4.14–4.27).

    y's column is indexed by :func:`~numgru.kernels._jit.unwrapped` (col0 + j), which Numba does not
    wrap as a possibly negative index (B = 64, H = 64: 22.2 → 19.7 µs a step)."""
    H2 = 2 * H
    for j in range(H):
        r = sigmoid_fast(gx[t, b, j] + acc[i, j] + b_hh[j])
        z = sigmoid_fast(gx[t, b, H + j] + acc[i, H + j] + b_hh[H + j])
        n = tanh_fast(gx[t, b, H2 + j] + r * (acc[i, H2 + j] + b_hh[H2 + j]))
        v = n + z * (hc[i, j] - n)
        hn[i, j] = v
        y[t, b, unwrapped(col0 + j)] = v


#: rows per call of :func:`rows_after_fast`, :func:`rows_before_rz` and :func:`rows_before_n` (the
#: parallel kernel spreads the blocks over its threads)
GATE_BLOCK_ROWS = 8


@device
def rows_after_fast(gx, t, acc, b_hh, hc, hn, y, col0, b0, i0, i1):
    """:func:`_row_after_fast` for state rows i0 … i1−1 of step t (rows b0 + i of gx and y). Compiled
    on its own and called, not inlined: the same loops inlined into the kernel's time loop, among its
    other branches, ran slower (one thread, T = 128, µs a step, inlined against called: B = 64, H = 64
    16.9 against 13.5; B = 16, H = 64 4.4 against 3.6; B = 1, H = 64 0.57 against 0.52; H = 256
    level)."""
    wide_vectors()
    H = hc.shape[1]
    for i in range(i0, i1):
        _row_after_fast(gx, t, b0 + i, acc, i, b_hh, hc, hn, y, col0, H)


@device
def rows_after_store(gx, t, acc, b_hh, hc, hn, y, col0, b0, i0, i1, tape):
    """:func:`rows_after_fast` for training: sigmoid gates, no clip, reset_after, each row's r, z, n
    and W_hn h + b_hn written to tape[t, b0 + i] (:func:`_row_after`'s loops)."""
    wide_vectors()
    H = hc.shape[1]
    one = hc.dtype.type(1.0)
    zero = hc.dtype.type(0.0)
    for i in range(i0, i1):
        b = b0 + i
        _row_after(gx[t, b], acc[i], b_hh, hc[i], hn[i], tape[t, b], 0, one, zero, False, zero, H)
        for j in range(H):
            y[t, b, unwrapped(col0 + j)] = hn[i, j]


@inline
def rows_past_length(hc, hn, y, t, col0, b0, n_act):
    """State rows n_act … of a step whose rows are sorted by length, all past theirs: the state kept,
    y[t, b0 + i, col0:col0 + H] zero."""
    H = hc.shape[1]
    for i in range(n_act, hc.shape[0]):
        for j in range(H):
            hn[i, j] = hc[i, j]
            y[t, b0 + i, unwrapped(col0 + j)] = 0.0


@device
def rows_before_rz(gx, t, acc_rz, b_hh, hc, rh, work, b0, i0, i1):
    """reset_after=False, inference with sigmoid gates and no clip, the first half of step t for state
    rows i0 … i1−1: z to work[i, H:2H] and r ⊙ h to rh (the n block's product takes it). Called,
    not inlined, as :func:`rows_after_fast`."""
    wide_vectors()
    H = hc.shape[1]
    for i in range(i0, i1):
        b = b0 + i
        for j in range(H):
            work[i, unwrapped(H + j)] = sigmoid_fast(gx[t, b, H + j] + acc_rz[i, H + j] + b_hh[H + j])
        for j in range(H):
            rh[i, j] = sigmoid_fast(gx[t, b, j] + acc_rz[i, j] + b_hh[j]) * hc[i, j]


@device
def rows_before_n(gx, t, acc_n, b_hh, hc, hn, work, y, col0, b0, i0, i1):
    """The second half of :func:`rows_before_rz`'s step: n from acc_n (W_hn (r ⊙ h)) and the new
    state, to hn and y[t, b0 + i, col0:col0 + H]."""
    wide_vectors()
    H = hc.shape[1]
    H2 = 2 * H
    for i in range(i0, i1):
        b = b0 + i
        for j in range(H):
            n = tanh_fast(gx[t, b, H2 + j] + acc_n[i, j] + b_hh[H2 + j])
            v = n + work[i, H + j] * (hc[i, j] - n)
            hn[i, j] = v
            y[t, b, unwrapped(col0 + j)] = v


@inline
def _clip_flags(gxb, ab, b_hh, wb, fb, clip, H, reset_after):
    """ONNX clip flags of one row (training with clip only): 1·r + 2·z + 4·n clipped."""
    H2 = 2 * H
    for j in range(H):
        a_r = gxb[j] + ab[j] + b_hh[j]
        a_z = gxb[H + j] + ab[H + j] + b_hh[H + j]
        if reset_after:
            a_n = gxb[H2 + j] + wb[j] * wb[3 * H + j]
        else:
            a_n = gxb[H2 + j] + wb[3 * H + j]
        fb[j] = clipped(a_r, True, clip) + 2 * clipped(a_z, True, clip) + 4 * clipped(a_n, True, clip)


@inline
def active_rows(lengths, t, sorted_desc):
    """Rows active at step t: a prefix when lengths are sorted non-increasing, else all rows."""
    B = lengths.shape[0]
    if not sorted_desc:
        return B
    n = 0
    while n < B and lengths[n] > t:
        n += 1
    return n


@inline
def step_states(s, T, reverse, h_a, h_b):
    """Step s of the time loop: the time index t and which state buffer is read (hc) and written (hn)."""
    t = T - 1 - s if reverse else s
    if s % 2 == 0:
        return t, h_a, h_b
    return t, h_b, h_a


@inline
def copy_rows(src, dst):
    """dst[b, j] = src[b, j] for the (B, H) states."""
    for b in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[b, j] = src[b, j]


@inline
def rows_matmul_T(Wm, h, out, buf, n):
    """out[:n] = h[:n] @ Wm.T for Wm (M, K), h (·, K), out (·, M); buf holds at least M·n values.

    For n ≥ 2 the product is computed as Wm @ h[:n].T into buf, then transposed into out: OpenBLAS runs
    that orientation far faster when n is small (measured at n = 16: 69 vs 29 GFLOP/s for H = 1024,
    73 vs 53 for H = 256; equal at n = 64, H = 256), and the blocked transpose costs little; from
    :func:`direct_rows` rows :func:`blas_matmul_T` asks for h @ Wm.T itself.
    """
    M = Wm.shape[0]
    if n == 1:  # a GEMV (measured 10-15 % faster than a one-row GEMM)
        np.dot(Wm, h[0], out[0])
        return
    outT = buf[:M * n].reshape((M, n))
    np.dot(Wm, h[:n].T, outT)
    for j0 in range(0, M, 64):
        j1 = min(M, j0 + 64)
        for b in range(n):
            ob = out[b]
            for j in range(j0, j1):
                ob[j] = outT[j, b]


@inline
def small_rows_matmul(Wm, h, out, n):
    """out[:n] = h[:n] @ Wm.T for a C-contiguous Wm (M, K), register-blocked for small n. Wm may hold
    bfloat16 weights (``uint16``, read through :func:`~numgru.kernels.bf16.wget`).

    Four rows of h and two rows of Wm per inner loop: eight dot products share every load, and with
    ``reassoc`` LLVM keeps them in vector registers. Measured at n = 4, H = 256: 54–61 GFLOP/s against
    32 for BLAS (which re-packs W every call); at n = 16: 78–92 against 67–75. Once W leaves L2
    (H = 1024) callers pass it tiles of :data:`TILE` rows, so each tile is read from L3 once per step
    (B = 4–16, H = 1024, one thread: 1.1–1.5× over a GEMV per row or a skinny BLAS GEMM).
    """
    M = Wm.shape[0]
    K = Wm.shape[1]
    n4 = n - n % 4
    M2 = M - M % 2
    for b in range(0, n4, 4):
        x0 = h[b]
        x1 = h[b + 1]
        x2 = h[b + 2]
        x3 = h[b + 3]
        zero = one_like(x0[0]) - one_like(x0[0])
        for j in range(0, M2, 2):
            w0 = Wm[j]
            w1 = Wm[j + 1]
            s00 = zero
            s01 = zero
            s10 = zero
            s11 = zero
            s20 = zero
            s21 = zero
            s30 = zero
            s31 = zero
            for k in range(K):
                a = wget(w0, k)
                c = wget(w1, k)
                v = x0[k]
                s00 += v * a
                s01 += v * c
                v = x1[k]
                s10 += v * a
                s11 += v * c
                v = x2[k]
                s20 += v * a
                s21 += v * c
                v = x3[k]
                s30 += v * a
                s31 += v * c
            out[b, j] = s00
            out[b, j + 1] = s01
            out[b + 1, j] = s10
            out[b + 1, j + 1] = s11
            out[b + 2, j] = s20
            out[b + 2, j + 1] = s21
            out[b + 3, j] = s30
            out[b + 3, j + 1] = s31
        for j in range(M2, M):
            w0 = Wm[j]
            s00 = zero
            s10 = zero
            s20 = zero
            s30 = zero
            for k in range(K):
                a = wget(w0, k)
                s00 += x0[k] * a
                s10 += x1[k] * a
                s20 += x2[k] * a
                s30 += x3[k] * a
            out[b, j] = s00
            out[b + 1, j] = s10
            out[b + 2, j] = s20
            out[b + 3, j] = s30
    M4 = M - M % 4
    for b in range(n4, n):  # leftover rows (all of them when n = 1): four rows of Wm share each load
        x0 = h[b]
        zero = one_like(x0[0]) - one_like(x0[0])
        for j in range(0, M4, 4):
            w0 = Wm[j]
            w1 = Wm[j + 1]
            w2 = Wm[j + 2]
            w3 = Wm[j + 3]
            s00 = zero
            s01 = zero
            s02 = zero
            s03 = zero
            for k in range(K):
                v = x0[k]
                s00 += v * wget(w0, k)
                s01 += v * wget(w1, k)
                s02 += v * wget(w2, k)
                s03 += v * wget(w3, k)
            out[b, j] = s00
            out[b, j + 1] = s01
            out[b, j + 2] = s02
            out[b, j + 3] = s03
        for j in range(M4, M):
            w0 = Wm[j]
            s00 = zero
            for k in range(K):
                s00 += x0[k] * wget(w0, k)
            out[b, j] = s00


TILE = 32  # rows of W per register-blocked pass over all rows (128 KB at H = 1024)


@inline
def tiled_matmul(Wm, h, out, n):
    """out[:n] = h[:n] @ Wm.T by :func:`small_rows_matmul` on tiles of :data:`TILE` rows of Wm, so each
    tile stays in L1/L2 while all n rows pass (Wm beyond L2)."""
    M = Wm.shape[0]
    for q0 in range(0, M, TILE):
        q1 = min(M, q0 + TILE)
        small_rows_matmul(Wm[q0:q1], h, out[:, q0:q1], n)


@device
def small_rows_product(Wm, h, out, n):
    """:func:`small_rows_matmul` compiled once per signature and called, from the helpers that are
    called functions themselves (:func:`rows_product`; for bfloat16 weights :func:`blas_matmul_T` and
    the step's product), where its copy already ran as a called function's code: the call adds one
    jump per product. Each inlined copy is typed and optimised in every helper that holds it, and
    again in every kernel that links that helper (Numba links a called function's module into its
    caller's and optimises it there once more): a GRUCell's first call after a training run, cold,
    one thread, compiled in 8.1–8.3 s against 9.8–10.1 (three runs each; the quantized forward and
    steps' speed level). Inside a kernel's own code it stays inlined: the one-row product of
    :func:`recurrent_matmul` called ran the forward at B = 1, H = 256, T = 16 2–5 % slower (steps of
    13 µs; six runs each, alternating), and the loops that run it on each tile of a step
    (:func:`tiled_matmul`, the columns routes) or a small step's one product (:mod:`~numgru.kernels.step`,
    under 1 µs at H = 16) would pay a call's cost on each."""
    wide_vectors()
    small_rows_matmul(Wm, h, out, n)


@device
def tiled_product(Wm, h, out, n):
    """:func:`tiled_matmul` compiled once per signature and called (see :func:`small_rows_product`)."""
    wide_vectors()
    tiled_matmul(Wm, h, out, n)


#: rows and inner values up to which :func:`recurrent_matmul` keeps a product in Numba's kernels
#: whatever ``tiled_max`` says (read by :func:`~numgru.kernels.dispatch.keeps_off_blas`)
NUMBA_ROWS_MAX = 32
NUMBA_ROWS_MAX_K = 512
#: float32 rows up to which, from ``ROWS_DOT_MANY_MIN_K`` inner values to ``NUMBA_ROWS_MAX_K``, the
#: dot-product block takes a product on unpacked weights beyond ``NUMBA_ROWS_MAX`` rows: on Zen 4
#: (:func:`many_rows_dot`), else 0
ROWS_DOT_MANY = 96 if avx512_zen() else 0
ROWS_DOT_MANY_MIN_K = 128
#: float32 rows up to which such products take W's panels packed in the call: on Zen 4
#: (:func:`many_rows_packed`), else 0
ROWS_PACKED_MANY = 256 if avx512_zen() else 0


@inline
def recurrent_matmul(Wm, h, out, buf, n, tiled_max):
    """out[:n] = h[:n] @ Wm.T, by the fastest measured route for the shape (Wm C-contiguous): Numba's
    kernels (:func:`rows_product`) for up to 32 rows while K ≤ 512 (float32 on Zen 4 up to
    :data:`ROWS_DOT_MANY` rows from K = 128, :func:`many_rows_dot`, and up to
    :data:`ROWS_PACKED_MANY` on W's panels packed in the call, :func:`many_rows_packed`; beyond K = 512
    up to 64 or 256 rows, :func:`many_rows_past_l2`), BLAS beyond.

    ``tiled_max``: most rows for Numba's kernels past K = 512 (more go to BLAS, which threads itself;
    the caller passes 4 when BLAS has several threads to use, else 16, which on Zen 4 keeps up to
    :data:`ROWS_DOT_PAST_L2` rows: :func:`numba_rows_past_l2`); −1: never BLAS (for callers already
    running on several of Numba's threads). The choice depends on the thread count only past K = 512,
    as :func:`use_panels`'s does."""
    K = Wm.shape[1]
    f32 = Wm.itemsize == 4 and h.itemsize == 4  # (the many-rows routes: float32 only)
    if n == 1 and K <= 256:
        # n = 1 with W_hh in L2 (H ≤ 256): 1.2–1.25× over BLAS's GEMV at H = 64 and 256
        small_rows_matmul(Wm, h, out, n)
    elif (2 <= n <= NUMBA_ROWS_MAX and K <= NUMBA_ROWS_MAX_K) or (f32 and many_rows_dot(n, K)):
        rows_product(Wm, h, out, n, False)
    elif n >= 2 and (numba_rows_past_l2(n, tiled_max) or (f32 and many_rows_past_l2(n, K, tiled_max))):
        rows_product(Wm, h, out, n, True)  # W beyond L2: read once, all rows against each part
    elif f32 and many_rows_packed(n, K):
        packed_in_call(Wm, h, out, n)
    else:
        blas_matmul_T(Wm, h, out, buf, n)


@device
def packed_in_call(Wm, h, out, n):
    """out[:n] = h[:n] @ Wm.T on Wm's panels packed here (:func:`many_rows_packed`)."""
    wide_vectors()
    panel_matmul(h, pack_panels(Wm), out, n)


@inline
def many_rows_dot(n, K):
    """Whether :func:`recurrent_matmul` keeps a float32 product of n rows by unpacked weights of K
    inner values (up to ``NUMBA_ROWS_MAX_K``) in the dot-product block beyond ``NUMBA_ROWS_MAX`` rows:
    up to :data:`ROWS_DOT_MANY` rows from ``ROWS_DOT_MANY_MIN_K`` (Zen 4), where OpenBLAS's SkylakeX
    sgemm, which packs both operands on every call, fell behind it. 2-vCPU AMD EPYC, one thread, the
    product alone, M = 3K, OpenBLAS's time over the block's (three rounds): K = 128, n = 33 / 48 / 64 /
    96 1.34–3.38 / 1.30–1.32 / 1.09–1.38 / 0.96–1.26; K = 256 1.60–1.79 / 1.26–1.44 / 1.37–1.62 /
    1.14–1.18; K = 384 1.26–1.59 / 1.27–1.56 / 1.26–1.41 / 1.15–1.31; K = 512 1.25–4.84 / 1.25–3.41 /
    1.12–1.35 / 1.14–1.25; but K = 16–64 0.32–1.33 (mostly behind), 128+ rows 0.45–2.46 (level or
    mixed), and float64 (OpenBLAS's dgemm) 0.45–1.24 at every such shape. Whole calls, one thread, one
    process taking turns with the code before, medians of five rounds: GRUCell (B, I = H) (48, 128) /
    (64, 200) / (96, 256) / (64, 384) / (48, 512) 1.31× / 1.22× / 1.21× / 1.16× / 1.07×, (64, I = 3,
    H = 200) 1.16×; ``stream.step`` (48, 128) / (64, 200) / (96, 256) / (64, I = 1, H = 512) 1.31× /
    1.21× / 1.21× / 1.15×; forwards given h0, (T, B, I, H) (1, 64, 256, 256) 1.10×, (2, 48, 128, 128)
    1.15×, (3, 64, 300, 384) 1.09×, two layers (2, 96, 256, 256) 1.12×, bidirectional (3, 64, 64, 512)
    1.15×; controls (64 rows at H = 64, 128 rows) 1.00×. Two threads split such steps over units or
    rows, and training packs W_hh's panels from 33 rows: both unchanged (1.00×). The choice depends on
    n and K only, so training's sums stay those of any thread count."""
    return NUMBA_ROWS_MAX < n <= ROWS_DOT_MANY and ROWS_DOT_MANY_MIN_K <= K <= NUMBA_ROWS_MAX_K


@inline
def many_rows_packed(n, K):
    """Whether :func:`recurrent_matmul` takes a float32 product of n rows by unpacked weights of K inner
    values on their panels packed in the call (:func:`packed_in_call`) rather than OpenBLAS: past
    :func:`many_rows_dot`'s rows up to :data:`ROWS_PACKED_MANY` (Zen 4), from ``ROWS_DOT_MANY_MIN_K``
    to ``NUMBA_ROWS_MAX_K``. 2-vCPU AMD EPYC, one thread, M = 3K, the product alone with its packing
    (fresh panels each call), OpenBLAS's time over it (three rounds): K = 128, n = 97 / 128 / 192 /
    256 / 512 1.31–1.33 / 1.27 / 1.20–1.21 / 1.18–1.19 / 1.15–1.16; K = 256 1.25–1.27 / 1.14–1.22 /
    1.12–1.15 / 1.11–1.13 / 1.08–1.14; K = 384 1.23–1.37 / 1.13–1.20 / 1.05–1.40 / 1.06–1.09 /
    1.03–1.05; K = 512 1.13–1.22 / 1.17–1.20 / 1.05–1.20 / 1.08–1.10 / 0.85–1.00 (hence 256). Against
    the dot-product block at 33–96 rows it ran level from K = 256 (0.82–1.22), so those keep the block.
    Whole calls, one thread, one process taking turns with the code before (medians of five rounds):
    GRUCell (B, I = H) (128, 128) / (128, 256) / (192, 200) / (256, 384) 1.15× / 1.11× / 1.06× / 1.04×,
    (128, I = 64, H = 512) 1.05×; ``stream.step`` (128, 256) / (256, 128) 1.10× / 1.12×; forwards given
    h0 (T, B, I = H) (1, 128, 256) / (2, 128, 128) / (3, 256, 256) / (2, 128, 512) 1.06× / 1.07× /
    1.03× / 1.04×."""
    return ROWS_DOT_MANY < n <= ROWS_PACKED_MANY and ROWS_DOT_MANY_MIN_K <= K <= NUMBA_ROWS_MAX_K


@inline
def many_rows_past_l2(n, K, tiled_max):
    """Whether :func:`recurrent_matmul` keeps a float32 product of n rows beyond ``NUMBA_ROWS_MAX_K``
    inner values in the dot-product block past :func:`numba_rows_past_l2`'s rows, with the one-thread
    ``tiled_max``: up to :data:`ROWS_DOT_PAST_L2_MANY` rows, and up to
    :data:`ROWS_DOT_PAST_L2_NARROW` while K ≤ ``ROWS_DOT_PAST_L2_NARROW_MAX_K`` (Zen 4), where OpenBLAS's
    GEMM (h @ Wm.T as (Wm @ h.T).T there, :func:`direct_rows`) fell behind it. 2-vCPU AMD EPYC, one
    thread, the product alone, OpenBLAS's time over the block's (medians of five rounds): M = 3K,
    K = 640, n = 33 / 48 / 64 / 96 / 128 / 192 / 256 1.19 / 1.16 / 1.14 / 1.13 / 1.08 / 1.11 / 1.13;
    K = 768 1.19 / 1.17 / 1.21 / 1.08 / 1.11 / 1.14 / 1.11; K = 1024 1.21 / 1.11 / 1.14, but 96 / 128 /
    192 / 256 rows 0.96 / 0.94 / 0.85 / 0.85; M = 1920, K = 1280 / 2048 (a bidirectional layer's
    input) 33 rows 1.18 / 1.12, 48–64 0.97–1.10, 96+ 0.79–1.09. Whole calls, one thread, medians of
    five rounds taking turns with the code before in one process: GRUCell (B, I = H) (40, 640) /
    (48, 1024) / (96, 768) / (128, 640) / (128, 768) / (192, 640) / (256, 768) 1.22× / 1.06× / 1.06× /
    1.09× / 1.07× / 1.08× / 1.03×, (64, 768) and (96, 1024) 1.00–1.01×; ``stream.step`` (128, 640) /
    (64, I = 64, H = 640) 1.04× / 1.06×; forwards given h0, (T, B, I, H) (2, 64, 640, 640) 1.08×,
    (2, 128, 768, 768) 1.05×, (1, 192, 640, 640) 1.04×, (3, 48, 1024, 1024) 1.02×, (1, 128, 768, 768)
    0.98–1.00×, two bidirectional layers (1, 64, 64, 640) 1.04×, bidirectional (2, 96, 640, 640) 1.07×;
    six steps (on W_hh's panels) 1.00×. Two threads split those steps over units or rows: 0.98–1.01×.
    The choice depends on n and K (and ``tiled_max``, training's fixed) only, so training's sums stay
    those of any thread count."""
    return tiled_max == TILED_MAX_ONE_THREAD and NUMBA_ROWS_MAX_K < K and \
        (n <= ROWS_DOT_PAST_L2_MANY or (n <= ROWS_DOT_PAST_L2_NARROW and K <= ROWS_DOT_PAST_L2_NARROW_MAX_K))


@inline
def numba_rows_past_l2(n, tiled_max):
    """Whether :func:`recurrent_matmul` keeps n ≥ 2 rows in Numba's kernels rather than BLAS where its
    first cases do not (weights beyond ``NUMBA_ROWS_MAX_K`` inputs, or more than ``NUMBA_ROWS_MAX``
    rows): ``tiled_max`` −1 (always) or up to ``tiled_max`` rows, and where :data:`ROWS_DOT_PAST_L2`
    is set up to that many rows when ``tiled_max`` is the one-thread value
    (:data:`TILED_MAX_ONE_THREAD`)."""
    return tiled_max < 0 or n <= tiled_max or (tiled_max == TILED_MAX_ONE_THREAD and n <= ROWS_DOT_PAST_L2)


def rows_product(Wm, h, out, n, tiled):
    """out[:n] = h[:n] @ Wm.T in Numba, for the rows a step multiplies without packed panels. Float
    weights and n ≥ 2: :func:`~numgru.kernels.dotblock.dot_rows` (measured against the alternative in
    :mod:`~numgru.kernels.dotblock`); else :func:`small_rows_matmul`, on tiles of :data:`TILE` rows of
    Wm when ``tiled`` (Wm beyond L2)."""
    if Wm.dtype != np.uint16 and n > 1:
        dot_rows.py_func(h, Wm, out, n)
    elif tiled:
        tiled_matmul.py_func(Wm, h, out, n)
    else:
        small_rows_matmul.py_func(Wm, h, out, n)


@overload(rows_product, jit_options={"fastmath": set(FASTMATH)})
def _ol_rows_product(Wm, h, out, n, tiled):
    bf16 = is_bfloat16_array(Wm)

    def impl(Wm, h, out, n, tiled):
        if not bf16 and n > 1:
            dot_rows(h, Wm, out, n)
        elif tiled:
            tiled_product(Wm, h, out, n)
        else:
            small_rows_product(Wm, h, out, n)
    return impl


#: rows from which :func:`blas_matmul_T` asks BLAS for h @ Wm.T as it stands (:func:`direct_rows`):
#: float64, and float32 while K ≤ :data:`DIRECT_ROWS_MAX_K_32`
DIRECT_ROWS_64 = 64
#: float64 past ``NUMBA_ROWS_MAX_K`` inner values: on Zen 4, else as within
DIRECT_ROWS_64_PAST_L2 = 33 if avx512_zen() else DIRECT_ROWS_64
DIRECT_ROWS_32 = 128
DIRECT_ROWS_MAX_K_32 = 512


@inline
def direct_rows(K, itemsize):
    """The rows from which a product h @ Wm.T in BLAS (Wm (M, K), values of ``itemsize`` bytes) is
    asked for as it stands rather than as (Wm @ h.T).T (:func:`rows_matmul_T`): on the 2-vCPU AMD EPYC
    (Zen 4, OpenBLAS's SkylakeX kernel, M = 3K, time of the transposed route over the direct one)
    float64 K = 256 / 512 / 1024, n = 128 1.20 / 1.20 / 1.18 on one thread, 1.25 / 1.12 / 1.18 on two
    (n = 64 0.95–1.15); float32 K = 256 / 512, n = 128 / 256 1.06–1.27 / 1.15–1.46 (n = 64 / 96
    0.82–1.20), K = 1024 0.82–0.94 up to n = 128. GRUCell, B = 128, I = H = 512, float64, one thread:
    9.99–11.03 → 8.98–9.20 ms (torch 8.9–9.4); float32, B = 128 / 256, H = 256: 1.17–1.19 / 2.37–2.52
    → 1.09–1.25 / 2.11–2.12. float64 beyond K = 512 from 33 rows (:data:`DIRECT_ROWS_64_PAST_L2`;
    fewer keep the dot-product block there, :func:`numba_rows_past_l2`): one thread, M = 3K, the
    transposed route's time over the direct one, K = 768 / 1024, n = 40 / 48 / 64 1.31 / 1.19 / 1.25,
    0.98 / 1.13 / 1.30; two threads 1.34 / 1.35 / 1.23, 1.26 / 1.15 / 1.10 (K = 512 mixed, 0.84–1.11).
    Whole calls, one thread, medians of five rounds taking turns with the code before in one process:
    GRUCell (B, I = H) (33, 640) / (40, 768) / (63, 640) / (36, 1024) / (48, 1024) 1.35× / 1.26× /
    1.31× / 1.20× / 1.14×, (56, I = 300, H = 768) 1.17×; ``stream.step`` (48, 768) 1.28×; forwards
    given h0, (T, B, I, H) (1, 48, 768, 768) / (2, 40, 640, 640) / (3, 33, 1024, 1024) 1.13× / 1.17× /
    1.12×, two bidirectional layers (1, 63, 64, 640) 1.12×; two threads (steps split over units)
    0.99–1.01×."""
    if itemsize == 8:
        return DIRECT_ROWS_64 if K <= NUMBA_ROWS_MAX_K else DIRECT_ROWS_64_PAST_L2
    return DIRECT_ROWS_32 if K <= DIRECT_ROWS_MAX_K_32 else 1 << 62


def blas_matmul_T(Wm, h, out, buf, n):
    """out[:n] = h[:n] @ Wm.T in BLAS for float weights, from :func:`direct_rows` rows as it stands
    (out's rows C-contiguous), else by :func:`rows_matmul_T`; :func:`tiled_matmul` for bfloat16 ones,
    which BLAS cannot read (resolved at compile time by the overload below)."""
    if n >= direct_rows.py_func(Wm.shape[1], Wm.itemsize) and out.flags.c_contiguous:
        np.dot(h[:n], Wm.T, out[:n])
    else:
        rows_matmul_T.py_func(Wm, h, out, buf, n)


@overload(blas_matmul_T, jit_options={"fastmath": set(FASTMATH)})
def _ol_blas_matmul_T(Wm, h, out, buf, n):
    if is_bfloat16_array(Wm):
        return lambda Wm, h, out, buf, n: tiled_product(Wm, h, out, n)
    if out.layout != "C" or Wm.layout != "C":
        # Numba's np.dot would multiply into a C-contiguous copy of a strided ``out`` and drop it
        return lambda Wm, h, out, buf, n: rows_matmul_T(Wm, h, out, buf, n)

    def impl(Wm, h, out, buf, n):
        if n >= direct_rows(Wm.shape[1], Wm.itemsize):
            np.dot(h[:n], Wm.T, out[:n])
        else:
            rows_matmul_T(Wm, h, out, buf, n)
    return impl


#: most bytes of a block's rows of bfloat16 W_hh that the column route packs into panels for one row
#: (float weights: never, see :func:`_gru_forward_cols`)
COLS_B1_PANEL_BYTES = 1 << 21
PANEL_MIN_T = 4  # steps that repay packing W_hh into panels (one pass over it)
PANEL_MIN_ROW_STEPS = 128  # float weights: rows × steps that repay it (see wants_panels)
#: :func:`panel_steps`: fewest rows from which training's kernels pack W_hh at T < PANEL_MIN_T (beyond
#: Numba's rows kernels' 32)
TRAINING_STEP_PANEL_ROWS = 33
#: float weights with K ≤ PANEL_NARROW_K: the rows × steps that repay it (see wants_panels)
PANEL_NARROW_K = 128
PANEL_MIN_ROW_STEPS_NARROW = 32
#: float weights, one row: the steps that repay it, (most K, fewest steps) (use_panels takes K ≤ 256)
PANEL_ONE_ROW_MIN_T = ((64, 16), (128, 32), (192, 96), (256, 128))
#: W_hh bytes beyond which the rows route packs its panels once for all chunks (:func:`_gru_forward_rows`)
ROWS_SHARED_PANELS_BYTES = 1 << 21
PANEL_MAX_VALUES = 1 << 22  # largest weight matrix packed (16 MB in float32: H = 1024 is 3·2²⁰ values)


@inline
def use_panels(M, K, n, tiled_max, bf16):
    """Whether n rows times packed weights (M, K) go by :func:`~numgru.kernels.panel.panel_matmul`.
    Always for bfloat16 weights (``bf16``): their panels beat the tiled matmul, the other route for
    them, at every measured shape (:mod:`~numgru.kernels.panel`).

    Measured per product h @ W.T on the 2-vCPU Intel machine (one thread, float32; GFLOP/s; panels
    against the dot-product kernel and BLAS's two orientations). The forward's shape, M = 3K: one row
    at K = 64 / 256 57 / 50 against 29 / 28 (dot-product) and 26 / 27 (BLAS); 2–16 rows at K ≤ 256
    92–170 against 33–69 and 49–100, at K = 1024 (16 rows) 119 against 54 and 75; 64–256 rows at
    K = 256 166–168 against 66–86 and 100–143; 32–128 rows at K = 512 106–149 against 83–121. The
    backward's, M = K / 3: 32 / 64 rows at K = 768 149 / 149 against 97 / 72 and 105 / 114; 64 rows
    at K = 3072 130 against 36 and 123. BLAS stays level or ahead for one row beyond L2 (every kernel
    waits on L3 there) and for 17+ rows at K = 1024 with M = 3072 (64 rows: 87–95 against 106–111).
    ``tiled_max`` as in :func:`recurrent_matmul`: past K = 512, where BLAS may thread a product
    (several threads, ``tiled_max`` 1–15), it keeps the rows it took before. Otherwise the choice does
    not depend on the thread count, so training's sums come out the same with any number of threads.

    On AMD's Zen 4 (:data:`PANELS_PAST_L2_MANY_ROWS`) the panels also take 17+ rows beyond K = 512 on
    one thread (``tiled_max`` ``TILED_MAX_ONE_THREAD``): OpenBLAS's SkylakeX kernel, which it runs
    there, fell behind them (2-vCPU AMD EPYC, one thread, GFLOP/s, panels against BLAS, M = 3K:
    K = 768, 17 / 32 / 64 / 128 / 256 rows 109 / 110 / 102 / 102 / 109 against 64 / 78 / 88 / 95 /
    101; K = 1024 100 / 100 / 101 / 101 / 104 against 43 / 62 / 77 / 90 / 96; K = 2048, 64 rows 96
    against 78, 256 rows 93 against 98, beyond what the panels take: :data:`PANEL_MAX_VALUES`).
    """
    if bf16:
        return True
    if n == 1:
        return K <= 256
    if n <= 16:
        return K <= 512 or tiled_max < 0 or n <= tiled_max
    return K <= 512 or M <= 1024 or (PANELS_PAST_L2_MANY_ROWS and tiled_max == TILED_MAX_ONE_THREAD)


@inline
def wants_panels(M, K, B, T, tiled_max, bf16):
    """Whether a kernel of T steps over B rows packs weights (M, K) into panels: some step's product
    would take them (:func:`use_panels`; with sorted lengths a step may have any row count up to B),
    there are steps enough to repay the packing, and the copy holds at most :data:`PANEL_MAX_VALUES`
    float values (the panels are a second copy of the weights for the call; beyond H = 1024 nothing
    was measured). bfloat16 weights (``bf16``) are packed from :data:`PANEL_MIN_T` steps.

    Packing is a transposing pass over the weights (72 µs for W_hh at H = 256 when these figures
    were taken, 41 µs since :func:`~numgru.kernels.panel.pack_panels` stopped zeroing first, 21–24 µs
    in float32 since it transposes in registers), which a step's gain on panels repays only over many
    rows × steps: float weights are packed for B ≥ 2 from :data:`PANEL_MIN_ROW_STEPS` rows × steps
    (:data:`PANEL_MIN_ROW_STEPS_NARROW` for K ≤ :data:`PANEL_NARROW_K`),
    and for one row from the steps :data:`PANEL_ONE_ROW_MIN_T` gives for K (one row reads W from L2 at
    almost the same rate either way).
    Measured on the 2-vCPU Intel machine (one thread, float32, paired whole forwards), without panels
    against with them, which had been taken from T = 4: B = 4, H = 256 T = 4 / 8 / 16 / 32 / 128
    1.65× / 1.34× / 1.08× / 1.03× / 0.95×; B = 16, H = 256 T = 4 / 8 / 16 / 32 1.15× / 1.02× / 0.96× /
    0.93×. One row, with the registers' transpose, two runs (µs, without panels against with them):
    H = 64 T = 8 / 16 / 32 / 64 / 128 16.2–16.3 / 25.5–26.4 / 42.9–44.0 / 71.5–71.8 / 127–132 against
    16.8–17.2 / 24.3–24.5 / 39.1–40.2 / 57.9–63.5 / 112–114; H = 128 T = 32 / 64 / 128 / 256 / 512
    104–107 / 186–193 / 342–364 / 645–651 / 1243–1287 against 107–108 / 188 / 339–353 / 586–592 /
    1128–1155; H = 256 T = 32 / 64 / 128 / 256 / 512 351–369 / 686–704 / 1336–1386 / 2279–2346 /
    4449–4702 against 389–391 / 723 / 1359–1360 / 2029–2117 / 3967–4056. Whole forwards against the
    rule before (panels from T = 32 for K ≤ 128), two runs: H = 128 T = 64 1.02–1.04× faster without
    them, T = 128 0.97–0.98×. Several rows, with the registers' transpose (three runs, µs, panels
    from 32 rows × steps against from 128): H = 64, (T, B) = (16, 4) 38–42 against 50–51; (8, 4)
    24–25 against 29–31; (4, 8) 23–24 against 26–29; (16, 2) 27 against 29–33; H = 128, (16, 4)
    103–119 against 119–129; (8, 8) 104–110 against 114–119; (32, 2) 119–122 against 131–151; (48, 2)
    176–183 against 192–205; but H = 256 (K = 256), (16, 4) 450–467 against 419–446; (32, 2) 493–523
    against 452–471. One row again, since the one-row product without panels is the dot-product
    block (µs, the time loop alone, its own packing included, paired in one process, unpacked against
    packed): float32 H = 128 T = 32 / 48 / 64 / 96 55.9–58.9 / 81.9–82.4 / 109.6–114.8 / 160.0–161.3
    against 54.5–55.3 / 77.4–78.5 / 99.9–101.8 / 145.4–145.8; H = 192 T = 96 / 128 332.7–344.9 /
    438.3–439.0 against 305.6–306.5 / 401.0–403.4 (T = 32 / 64 105.0–105.4 / 207.2–207.5 against
    109.3–109.6 / 205.8–206.0); H = 256 T = 128 706.3–751.2 against 691.9–708.5 (T = 64 / 96 level);
    float64 H = 128 T = 64 / 96 1.03–1.09×, H = 192 T = 96 / 128 1.02–1.07×, H = 256 T = 128
    1.01–1.03×, H = 128 T = 32 level."""
    if bf16:
        return T >= PANEL_MIN_T
    if M * K > PANEL_MAX_VALUES:
        return False
    if B == 1:
        if not use_panels(M, K, 1, tiled_max, False):
            return False
        for max_k, min_t in PANEL_ONE_ROW_MIN_T:
            if K <= max_k:
                return T >= min_t
        return False
    row_steps = PANEL_MIN_ROW_STEPS_NARROW if K <= PANEL_NARROW_K else PANEL_MIN_ROW_STEPS
    return T >= PANEL_MIN_T and T * B >= row_steps and (
        use_panels(M, K, B, tiled_max, False) or use_panels(M, K, 1, tiled_max, False)
        or use_panels(M, K, min(B, 16), tiled_max, False))


@inline
def panel_steps(T, B, store):
    """The steps :func:`wants_panels` weighs for a kernel of T steps over B rows: T, but for
    training's kernels (``store``: the tape-writing forward, the backward) at least
    :data:`PANEL_MIN_T` from ``TRAINING_STEP_PANEL_ROWS`` rows. Off the panels a step's product of
    more rows than Numba's own routes take went to OpenBLAS, whose threads, spinning for a while after
    the call, took the core from the weight gradients run side by side next
    (:func:`~numgru.kernels.dispatch.side_by_side`), and training's rows could not be split over
    threads (:func:`~numgru.kernels.dispatch.training_row_ranges`). Zen 4, training steps (forward_train,
    backward, Adam), ms, before → after: T = 1, B = 128, I = 1, H = 256, three bidirectional layers, two
    threads 25.5–28.9 → 18.7–19.4, one thread 24.0–24.9 → 23.8–24.2; T = 2, B = 128, I = H = 512, three
    layers, padded, two threads 51–58 → 42–45; T = 1, B = 64, I = 1, H = 512, two bidirectional layers,
    two threads 39.3–39.6 → 22.8–26.9, one thread level (31.6–33.2 / 32.4); smaller products cost a
    few per cent on one thread (T = 1, B = 128, I = H = 200 1.63–1.71 → 1.73–1.75; T = 1, B = 64,
    I = 16, H = 32 0.28 → 0.29) and gained on two (1.86–1.94 against 2.09–2.17; 0.30–0.39 against
    0.41–0.55). Inference keeps T: one thread, T = 3, B = 128, H = 512 and T = 2, B = 128, H = 1024 ran
    1.1–1.5× slower packed. A bound on B·H² was tried first: the one case it kept off the panels,
    H = 200, had lost 5–10 % on one thread while the backward packed a fresh copy each call (1.8
    against 1.6–1.7 ms), 3–6 % since (above). From 33 rows (was 64) since a bidirectional layer's
    directions may run side by side (:func:`~numgru.kernels.dispatch.directions_side_by_side`),
    where a 33–63-row product in OpenBLAS from both threads at once ran several times slower; whole
    steps, Zen 4, ms, 64 → 33 (two rounds): T = 3, B = 48, I = 300, H = 384, bidirectional, two threads
    41–44 → 11.7–13.6, one thread 21.3–23.3 → 20.2–21.2; T = 1, B = 48, H = 512, two layers, level on
    either (16.1–18.6 / 13.8–20.1 one thread); T = 1, B = 36, H = 128 one thread 0.52–0.58 → 0.60–0.64."""
    if store and 0 < T < PANEL_MIN_T and B >= TRAINING_STEP_PANEL_ROWS:
        return PANEL_MIN_T
    return T


@device
def block_panels_empty(W_hh, cs, nc, ng=3):
    """The column route's panels of W_hh (:func:`_gru_forward_cols`), not yet written: (nc, P, Hp,
    NC), 64-byte aligned; :func:`pack_block` fills block c with rows g·H + c·cs + u (gate g, unit u <
    cs) as its panel row g·cs + u (zeros past H), so that ``panel_matmul`` gives the block's W_hr,
    W_hz, W_hn products side by side in one (B, 3·cs) array. Float or bfloat16 (``uint16``) weights,
    packed in their own dtype and layout (:func:`~numgru.kernels.panel.pack_panels`; Hp =
    :func:`~numgru.kernels.panel.packed_depth`). ``ng``: panels for that many gates' rows of a block
    (:func:`pack_block_gates`)."""
    width = panel_width(W_hh.dtype.type(0))
    P = (ng * cs + width - 1) // width
    Hp = packed_depth(W_hh.shape[1], W_hh)
    return aligned_empty(nc * P * Hp * width, W_hh.dtype).reshape((nc, P, Hp, width))


@device
def pack_block(Wp, W_hh, c, cs):
    """Block c of :func:`block_panels_empty`'s panels into Wp[c]: every value written (not zeroed first: the fills
    write all but those zeroed here, and each gate's run of rows within a panel is filled by
    fill_panel's tiles, where a column at a time, a line written per k, took 4.4 ms at H = 1024, two
    blocks, one thread)."""
    pack_block_gates(Wp, W_hh, c, cs, 0, 3)


@device
def pack_block_gates(Wp, W_hh, c, cs, g0, ng):
    """:func:`pack_block` of the ng gates from gate g0 (their rows g·H + c·cs + u as panel rows
    (g − g0)·cs + u), into panels of :func:`block_panels_empty` (W_hh, cs, nc, ng)."""
    H = W_hh.shape[1]
    width = Wp.shape[3]
    P = Wp.shape[1]
    Hp = Wp.shape[2]
    zero = np.zeros(H, W_hh.dtype)
    j0 = c * cs
    m = min(cs, H - j0)
    if Hp > H:  # bfloat16's k pad (H odd): the last k pair of every column, before the fills
        Wp[c, :, Hp - 2:] = 0
    for q in range(ng * cs, P * width):  # past the last gate's rows
        put_row(Wp[c, q // width], q % width, zero)
    for gg in range(ng):
        g = g0 + gg
        for u in range(m, cs):  # units past H (the last block)
            q = gg * cs + u
            put_row(Wp[c, q // width], q % width, zero)
        u = 0
        while u < m:  # the gate's rows, a run per panel
            q = gg * cs + u
            n = min(m - u, width - q % width)
            fill_panel(Wp[c, q // width], W_hh, g * H + j0 + u, n, q % width)
            u += n


#: most bytes of weights a step's product reads in one sweep (:func:`step_product`); beyond, it runs
#: over blocks of ``ZIGZAG_ROWS`` rows, in reverse order every other step
ZIGZAG_MIN_BYTES = 3 << 19
ZIGZAG_ROWS = 128
#: most rows of a step's product that sweeps its blocks so (more rows: arithmetic-bound)
ZIGZAG_MAX_ROWS = 16
#: whether 17+ rows beyond K = 512 take the panels on one thread (:func:`use_panels`): on Zen 4
PANELS_PAST_L2_MANY_ROWS = avx512_zen()
#: whether weights read as they lie (not packed) go by blocks beyond ``ZIGZAG_MIN_BYTES``: not on
#: Zen 4, whose 1 MB L2 keeps too little of a step's weights for the next one: one thread, BLAS
#: pinned to one, one product a step, µs, by blocks against one sweep: n = 1, H = 512 / 1024 42.5 /
#: 172 against 42.3 / 168; n = 2 / 4, H = 1024 197 / 254 against 185 / 253; H = 384 level; with
#: only Numba's threads pinned, one sweep lets BLAS thread the one-row product (H = 1024: 82.5
#: against 199 on two BLAS threads). Packed panels keep the blocks there (H = 1024, n = 1 / 4 / 16
#: 153 / 234 / 945 against 181 / 244 / 970)
ZIGZAG_UNPACKED = not avx512_zen()
#: whether one row by float weights beyond L2 read as they lie may go by the dot-product block rather
#: than BLAS's GEMV (:func:`one_row_dot`): on Zen 4 (not measured on Intel's cores, which keep the GEMV)
ONE_ROW_DOT_PAST_L2 = avx512_zen()
#: ``tiled_max`` of the serial kernels on one thread (:func:`~numgru.kernels.dispatch.serial_tiled_max`)
TILED_MAX_ONE_THREAD = 16
#: most rows a product beyond ``NUMBA_ROWS_MAX_K`` inputs keeps in the dot-product block, weights read
#: as they lie, when ``tiled_max`` is :data:`TILED_MAX_ONE_THREAD` (:func:`numba_rows_past_l2`): 32 on
#: Zen 4, where OpenBLAS's SkylakeX GEMM packs W for every call and fell behind the block there
#: (2-vCPU AMD EPYC, one thread, the product alone, ms, the block against BLAS: float32 W (3K, K),
#: K = 640, n = 17 / 32 / 48 / 64 / 96 0.49–0.65 / 0.84–1.41 / 1.29–1.88 / 1.72–2.74 / 2.86–4.09
#: against 0.74–0.95 / 1.00–1.51 / 1.48–2.03 / 1.93–2.78 / 2.75–3.04; K = 768, n = 17 / 32 / 64
#: 0.71–0.81 / 1.43–1.49 / 2.56–4.37 against 0.93–1.11 / 1.44–1.72 / 2.97–4.22; K = 1024, n = 17 /
#: 32 / 48 2.06–2.33 / 2.64–2.90 / 5.28–6.09 against 2.85–2.95 / 3.42–4.15 / 4.42–6.15; the
#: backward's W (K / 3, K), K = 1920 / 2304 / 3072, n = 24 0.62–0.67 / 0.87–1.02 / 1.99–2.50 against
#: 0.96–1.18 / 1.41–1.76 / 3.17–4.80; float64 W (3K, K), K = 768 / 1024, n = 17 / 32 2.72–3.27 /
#: 5.23–6.06 and 4.69–5.36 / 7.78–7.99 against 4.15–4.79 / 5.25–6.23 and 6.18–7.73 / 9.30–9.42, but
#: n = 48 level or behind in both); elsewhere 0 (those rows beyond ``tiled_max`` go to BLAS)
ROWS_DOT_PAST_L2 = 32 if avx512_zen() else 0
#: float32 rows past that up to which such products keep in the block (:func:`many_rows_past_l2`)
ROWS_DOT_PAST_L2_MANY = 64 if avx512_zen() else 0
ROWS_DOT_PAST_L2_NARROW = 256 if avx512_zen() else 0
ROWS_DOT_PAST_L2_NARROW_MAX_K = 768


@inline
def one_row_dot(K, tiled_max):
    """Whether one row by float weights (M, K) beyond L2 (K > 256), read as they lie, goes by the
    dot-product block (:func:`~numgru.kernels.dotblock.dot_rows`, its blocks of rows last first every
    other step) rather than BLAS's GEMV, where :data:`ONE_ROW_DOT_PAST_L2` and BLAS would run on one
    thread (``tiled_max`` as in :func:`recurrent_matmul`: the one-thread value, or −1): a GEMV on two
    threads reads W through two cores' caches (``stream.step`` B = 1 on two threads, H = 512 43–52
    against 79 µs by the block on one). Zen 4, one thread, BLAS pinned to one, one product of
    W (3K, K) a step, µs, the block against the GEMV: K = 512 / 768 / 1024 35–36 / 81–84 / 183–204
    against 43–44 / 87–102 / 182–269. So from K = 257 a one-row product's sums, and a training
    step's where one row runs, differ in the last bits between one thread and several (beyond
    K = 512 they did before, :func:`recurrent_matmul`)."""
    return ONE_ROW_DOT_PAST_L2 and K > 256 and (tiled_max < 0 or tiled_max >= TILED_MAX_ONE_THREAD)


@inline
def zigzag_rows(M, nbytes, n, one_thread):
    """Rows (output columns) per block of :func:`step_product`'s sweep over weights (M, K) that take
    ``nbytes`` as it reads them, for n rows of h: ``ZIGZAG_ROWS`` when they are more than
    ``ZIGZAG_MIN_BYTES`` (a step reads them from beyond L2), n ≤ ``ZIGZAG_MAX_ROWS`` and the
    product runs on this thread alone (``one_thread``; a threaded BLAS call per block would pay its
    start-up every block), else M."""
    if nbytes > ZIGZAG_MIN_BYTES and n <= ZIGZAG_MAX_ROWS and one_thread:
        return ZIGZAG_ROWS
    return M


@inline
def block_rows(Wm, Wp, panels, n, tiled_max):
    """Rows of Wm per block of a step's product (:func:`step_product`; ``panels``: the product runs
    on Wp, Wm's packed panels): :func:`zigzag_rows` of the bytes read, in whole panels (unpacked
    weights: only where :data:`ZIGZAG_UNPACKED`)."""
    M = Wm.shape[0]
    if panels:
        w = Wp.shape[2]
        return min(M, (zigzag_rows(M, Wp.size * Wp.itemsize, n, True) + w - 1) // w * w)
    if not ZIGZAG_UNPACKED:
        return M
    return zigzag_rows(M, Wm.size * Wm.itemsize, n,
                       tiled_max < 0 or tiled_max >= TILED_MAX_ONE_THREAD or 2 <= n <= tiled_max)


@inline
def block_bounds(k, nb, rows, M, backwards):
    """Rows [r0, r1) of the k-th of nb blocks of ``rows`` rows (of M) in a sweep, last first when
    ``backwards``."""
    c = nb - 1 - k if backwards else k
    r0 = c * rows
    return r0, min(M, r0 + rows)


@inline
def put_block(out, part, n, r0, r1):
    """out[:n, r0:r1] = part (n, r1 − r0)."""
    for b in range(n):
        ob = out[b]
        pb = part[b]
        for j in range(r1 - r0):
            ob[r0 + j] = pb[j]


@device
def step_product(Wm, Wp, h, out, buf, n, tiled_max, backwards):
    """out[:n] = h[:n] @ Wm.T for one step: by the packed panels Wp (of Wm; (0, 0, 0) when the caller
    has none) where :func:`use_panels` says so, else by :func:`recurrent_matmul`.

    Weights beyond L2 go in blocks of rows (:func:`block_rows`), last block first when
    ``backwards``: a time loop passes it on every other step, so each step starts on the blocks the
    step before read last, which are still in L2 (about 2 MB of them here), and reads only the rest
    from L3. A GEMV by blocks, one thread, against one sweep (µs a step, 2-vCPU Intel machine,
    2 MB L2): H = 448 / 512 / 768 / 1024 / 2048 34.6 / 56.4 / 195 / 386 / 1707 against 46.0 / 96.8 /
    242 / 432 / 1734; H = 320 (1.2 MB) 12.3 against 11.6. Each output value is the same sum either
    way.

    Compiled once per signature and called, not inlined: the kernels call it at three places each, and
    inlining the matmul routes three times cost compile time."""
    wide_vectors()
    panels = Wp.shape[0] > 0 and use_panels(Wm.shape[0], Wm.shape[1], n, tiled_max, is_bfloat16(Wp))
    if block_rows(Wm, Wp, panels, n, tiled_max) < Wm.shape[0]:
        product_blocks(Wm, Wp, h, out, buf, n, tiled_max, backwards, panels)
    elif panels:  # one sweep, on the arrays as they are (views cost a small step's time)
        panel_matmul(h, Wp, out, n)
    elif n == 1 and one_row_dot(Wm.shape[1], tiled_max) and not is_bfloat16(Wm):
        dot_rows(h, Wm, out, 1, backwards)
    else:
        recurrent_matmul(Wm, h, out, buf, n, tiled_max)


@inline
def sweep_rows(Wm, Wp, n, tiled_max):
    """n where :func:`step_product` of n rows runs as one sweep over the panels Wp (no blocks), else
    −1: what a time loop decides once for its full steps (:func:`loop_product`)."""
    if Wp.shape[0] > 0 and use_panels(Wm.shape[0], Wm.shape[1], n, tiled_max, is_bfloat16(Wp)) and \
            block_rows(Wm, Wp, True, n, tiled_max) >= Wm.shape[0]:
        return n
    return -1


@inline
def loop_product(Wm, Wp, h, out, buf, n, tiled_max, backwards, sweep):
    """:func:`step_product` in a time loop that took ``sweep`` = :func:`sweep_rows` (Wm, Wp, B,
    tiled_max) before its first step: steps of that many rows go straight to
    :func:`~numgru.kernels.panel.panel_matmul`. The choice step_product makes on every call cost
    90 ns of a step at B = 1, H = 64 (its gates take ~140): one thread, the time loop alone, 447
    against 538 ns a step, H = 256 5.41–5.51 against 5.64–5.70 µs; whole forwards, four runs
    taking turns: T = 128, H = 64 / 128 99–109 / 318–330 against 102–113 / 331–343 µs, T = 32 and
    H = 256 level."""
    if n == sweep:
        panel_matmul(h, Wp, out, n)
    elif n > 0:
        step_product(Wm, Wp, h, out, buf, n, tiled_max, backwards)


@device
def product_blocks(Wm, Wp, h, out, buf, n, tiled_max, backwards, panels):
    """:func:`step_product` for weights beyond L2: over blocks of rows (:func:`block_rows`), last
    first when ``backwards``."""
    wide_vectors()
    M = Wm.shape[0]
    rows = block_rows(Wm, Wp, panels, n, tiled_max)
    nb = (M + rows - 1) // rows
    flat = np.empty(n * rows, out.dtype)
    w = Wp.shape[2]
    for k in range(nb):
        r0, r1 = block_bounds(k, nb, rows, M, backwards)
        part = flat[:n * (r1 - r0)].reshape((n, r1 - r0))
        if panels:
            panel_matmul(h, Wp[r0 // w:(r1 + w - 1) // w], part, n)
        else:
            recurrent_matmul(Wm[r0:r1], h, part, buf, n, tiled_max)
        put_block(out, part, n, r0, r1)


@inline
def own_panels(W_hh, reset_after, B, T, tiled_max):
    """W_hh packed for a forward of T steps over B rows that was given no panels, as the ``packed``
    pair of :func:`_gru_forward` takes it, where :func:`wants_panels` says the steps repay packing;
    else two empty arrays."""
    empty = np.empty((0, 0, 0), W_hh.dtype)
    H = W_hh.shape[1]
    if not wants_panels(3 * H, H, B, T, tiled_max, is_bfloat16(W_hh)):
        return empty, empty
    if reset_after:
        return pack_panels(W_hh), empty
    return pack_panels(W_hh[:2 * H]), pack_panels(W_hh[2 * H:])


def _gru_forward(gx, W_hh, packed, b_hh, h0, lengths, sorted_desc, reverse, reset_after, gate_kind,
                 alpha, beta, use_clip, clip, y, col0, h_n, store, tape, tiled_max, b0, b1):
    """Run one GRU layer, one direction, over a whole sequence, for batch rows b0 … b1−1.

    Arrays (C-contiguous, one float dtype; T steps, B ≥ 1 rows, H hidden units, D·H output columns):

    gx        (T, B, 3H)  in.  Input projection x_t @ W_ih.T + b_ih, gate order r, z, n.
    W_hh      (3H, H)     in.  Recurrent weights (PyTorch layout). May be read-only.
    packed    two arrays  in.  W_hh packed once by the caller, as :func:`~numgru.kernels.step.step_panels`
                               gives it (reset_after: W_hh's panels and an empty array; else the panels
                               of its r, z rows and of its n rows), or two empty (0, 0, 0) arrays: the
                               kernel then packs W_hh itself where :func:`wants_panels` says so.
    b_hh      (3H,)       in.  Recurrent bias (zeros when the layer has no bias).
    h0        (B, H)      in.  Initial state.
    lengths   (B,) int64  in.  Valid steps per row, 0 ≤ lengths[b] ≤ T (checked by the caller).
                               With ``sorted_desc`` (lengths non-increasing, as the layers arrange)
                               the recurrent GEMM of each step runs on the active prefix of rows only,
                               so padding costs nothing (PyTorch's packed-sequence trick, in place).
    y         (T, B, DH)  out. Columns col0 … col0+H−1 receive h_t; zeros where t ≥ lengths[b].
    h_n       (B, H)      out. State at each row's last valid step (h0 when lengths[b] == 0).
    tape      (T, B, 4H or 5H) out when ``store``: r, z, n and W_hn h + b_hn (reset_after) or
                               W_hn (r ⊙ h) + b_hn (reset_after=False) per valid step, and with
                               ``use_clip`` a fifth block: 1·[r clipped] + 2·[z clipped] + 4·[n clipped]
                               (so backward zeroes exactly the clipped derivatives); entries of
                               invalid steps are not written. Pass a (0, 0, 0) array otherwise.

    Only rows b0 ≤ b < b1 (0 ≤ b0 < b1 ≤ B) are read and written, so disjoint row ranges may run at
    the same time (:func:`_gru_forward_rows`). Scalars: reverse (bool) runs t = T−1 … 0, each row
    starting at its own last valid step; reset_after (bool) selects r ⊙ (W_hn h + b_hn) (True) or
    W_hn (r ⊙ h) + b_hn (False); gate_kind/alpha/beta select the gate activation; use_clip/clip apply
    ONNX's clip; tiled_max as in :func:`recurrent_matmul`.

    Without ``packed``, W_hh (its r, z and n blocks for reset_after=False) is packed into panels once
    per call for the steps' products (:func:`use_panels`) where :func:`wants_panels` says the steps
    repay it, bfloat16 weights as bfloat16.
    Aliasing: no output may alias an input.
    """
    wide_vectors()
    T = gx.shape[0]
    B = b1 - b0
    H = h0.shape[1]
    H2 = 2 * H
    dt = gx.dtype
    h_a = np.empty((B, H), dt)
    h_b = np.empty((B, H), dt)
    # workspace only for the variant that runs (the others get empty arrays)
    Ba = B if reset_after else 0
    Bb = 0 if reset_after else B
    acc = np.empty((Ba, 3 * H), dt)
    acc_rz = np.empty((Bb, H2), dt)
    acc_n = np.empty((Bb, H), dt)
    rh = np.empty((Bb, H), dt)
    work = np.empty((B, 4 * H), dt)
    flags = np.empty((B if store and use_clip else 0, H), dt)
    buf = np.empty(3 * H * B, dt)
    W_rz = W_hh[:H2]
    W_n = W_hh[H2:]
    # packed panels (:mod:`~numgru.kernels.panel`; bfloat16 weights packed as bfloat16) when some
    # step's product takes them
    Wp_a, Wp_b = packed
    if Wp_a.shape[0] == 0:
        Wp_a, Wp_b = own_panels(W_hh, reset_after, B, panel_steps(T, B, store), tiled_max)
    empty = np.empty((0, 0, 0), W_hh.dtype)
    Wp = Wp_a if reset_after else empty
    Wp_rz = empty if reset_after else Wp_a
    Wp_n = empty if reset_after else Wp_b
    copy_rows(h0[b0:b1], h_a)
    lens = lengths[b0:b1]
    # inference with sigmoid gates, no clip, rows sorted: the gates by rows_after_fast (reset_after)
    # or rows_before_rz and rows_before_n, in blocks of GATE_BLOCK_ROWS rows, and rows past the
    # active prefix copied
    fast = not store and gate_kind == 0 and not use_clip and sorted_desc
    sweep = sweep_rows(W_hh, Wp, B, tiled_max)
    sweep_rz = sweep_rows(W_rz, Wp_rz, B, tiled_max)
    sweep_n = sweep_rows(W_n, Wp_n, B, tiled_max)
    for s in range(T):
        t, hc, hn = step_states(s, T, reverse, h_a, h_b)
        n_act = active_rows(lens, t, sorted_desc)
        if reset_after:
            loop_product(W_hh, Wp, hc, acc, buf, n_act, tiled_max, s % 2 == 1, sweep)
            if fast:
                for c in range((n_act + GATE_BLOCK_ROWS - 1) // GATE_BLOCK_ROWS):
                    rows_after_fast(gx, t, acc, b_hh, hc, hn, y, col0, b0, c * GATE_BLOCK_ROWS,
                                    min(n_act, (c + 1) * GATE_BLOCK_ROWS))
                rows_past_length(hc, hn, y, t, col0, b0, n_act)
                continue
            for i in range(B):  # i: row of the workspace, b: row of the arrays passed in
                b = b0 + i
                if t >= lens[i]:
                    for j in range(H):
                        hn[i, j] = hc[i, j]
                        y[t, b, unwrapped(col0 + j)] = 0.0
                    continue
                if store:  # the gates go straight to the tape
                    wb = tape[t, b]
                    _row_after(gx[t, b], acc[i], b_hh, hc[i], hn[i], wb, gate_kind, alpha, beta,
                               use_clip, clip, H)
                    if use_clip:
                        fb = flags[i]
                        _clip_flags(gx[t, b], acc[i], b_hh, wb, fb, clip, H, True)
                        for j in range(H):
                            wb[4 * H + j] = fb[j]
                elif gate_kind == 0 and not use_clip:
                    _row_after_fast(gx, t, b, acc, i, b_hh, hc, hn, y, col0, H)
                    continue
                else:  # other gates, or clip: the general loops, on workspace
                    _row_after_called(gx[t, b], acc[i], b_hh, hc[i], hn[i], work[i], gate_kind, alpha,
                                      beta, use_clip, clip, H)
                for j in range(H):
                    y[t, b, unwrapped(col0 + j)] = hn[i, j]
        elif fast:
            nb = (n_act + GATE_BLOCK_ROWS - 1) // GATE_BLOCK_ROWS
            loop_product(W_rz, Wp_rz, hc, acc_rz, buf, n_act, tiled_max, s % 2 == 1, sweep_rz)
            for c in range(nb):
                rows_before_rz(gx, t, acc_rz, b_hh, hc, rh, work, b0, c * GATE_BLOCK_ROWS,
                               min(n_act, (c + 1) * GATE_BLOCK_ROWS))
            loop_product(W_n, Wp_n, rh, acc_n, buf, n_act, tiled_max, s % 2 == 1, sweep_n)
            for c in range(nb):
                rows_before_n(gx, t, acc_n, b_hh, hc, hn, work, y, col0, b0, c * GATE_BLOCK_ROWS,
                              min(n_act, (c + 1) * GATE_BLOCK_ROWS))
            rows_past_length(hc, hn, y, t, col0, b0, n_act)
        else:
            loop_product(W_rz, Wp_rz, hc, acc_rz, buf, n_act, tiled_max, s % 2 == 1, sweep_rz)
            for i in range(n_act):
                gxb = gx[t, b0 + i]
                ab = acc_rz[i]
                wb = work[i]
                for j in range(H):
                    wb[j] = gate(clip_pre(gxb[j] + ab[j] + b_hh[j], use_clip, clip),
                                 gate_kind, alpha, beta)
                    wb[H + j] = gate(clip_pre(gxb[H + j] + ab[H + j] + b_hh[H + j], use_clip, clip),
                                     gate_kind, alpha, beta)
                rhb = rh[i]
                hcb = hc[i]
                for j in range(H):
                    rhb[j] = wb[j] * hcb[j]
            loop_product(W_n, Wp_n, rh, acc_n, buf, n_act, tiled_max, s % 2 == 1, sweep_n)
            for i in range(B):
                b = b0 + i
                hnb = hn[i]
                yb = y[t, b]
                hcb = hc[i]
                if t >= lens[i]:
                    for j in range(H):
                        hnb[j] = hcb[j]
                        yb[unwrapped(col0 + j)] = 0.0
                    continue
                gxb = gx[t, b]
                ab = acc_n[i]
                wb = work[i]
                for j in range(H):
                    ghn = ab[j] + b_hh[H2 + j]
                    wb[3 * H + j] = ghn
                    wb[H2 + j] = tanh_fast(clip_pre(gxb[H2 + j] + ghn, use_clip, clip))
                for j in range(H):
                    n = wb[H2 + j]
                    hnb[j] = n + wb[H + j] * (hcb[j] - n)
                for j in range(H):
                    yb[unwrapped(col0 + j)] = hnb[j]
                if store:
                    tb = tape[t, b]
                    for j in range(4 * H):
                        tb[j] = wb[j]
                    if use_clip:
                        fb = flags[i]
                        _clip_flags(gxb, acc_rz[i], b_hh, wb, fb, clip, H, False)
                        for j in range(H):
                            tb[4 * H + j] = fb[j]
    copy_rows(h_a if T % 2 == 0 else h_b, h_n[b0:b1])


@inline
def column_blocks(H, n):
    """``(nc, cs)``: H hidden units split into at most n blocks of cs units, cs a multiple of 16,
    nc·cs ≥ H, the fewest such blocks: the blocks of the routes that split a step over hidden units,
    one a worker."""
    cs = ((H + n - 1) // n + 15) // 16 * 16
    return (H + cs - 1) // cs, cs


@inline
def row_chunks(B, n_threads):
    """(chunk size, chunk count) splitting B rows for :func:`_gru_forward_rows`: at most one chunk
    per thread, sizes a multiple of 4 (the register block of :func:`small_rows_matmul`) where B allows."""
    cs = (B + n_threads - 1) // n_threads
    cs = ((cs + 3) // 4) * 4
    return cs, (B + cs - 1) // cs


def _gru_forward_rows(gx, W_hh, packed, b_hh, h0, lengths, sorted_desc, reverse, reset_after, gate_kind,
                      alpha, beta, use_clip, clip, y, col0, h_n, store, tape, n_threads, serial):
    """:func:`_gru_forward` with the batch split into row chunks, one whole sequence per thread.

    Same arrays and results as :func:`_gru_forward` over all rows. Rows of a GRU never interact, so
    each chunk (:func:`row_chunks`) runs the serial kernel on its own rows from the first step to the
    last: one parallel region per call, no synchronisation per step, and each thread keeps W_hh in its
    own core's cache. The chunks' matmuls are Numba's (``tiled_max`` −1: the packed panels or the
    register-blocked kernels), so BLAS's threaded GEMM is never entered from several threads at once.
    A chunk whose lengths are non-increasing skips its finished rows' matmul work even when the whole
    batch is not sorted (see :func:`~numgru.kernels.dispatch.rows_order`). ``packed`` as there: the
    chunks share it; without it each chunk packs W_hh for itself where its rows and the steps repay
    it (:func:`wants_panels`), in its own core's cache, unless W_hh holds more than
    :data:`ROWS_SHARED_PANELS_BYTES`: then it is packed here once for all chunks, whose copies had
    crowded each other out of L3. 2-vCPU AMD EPYC (Zen 4), two threads, the plain model, against
    a copy per chunk, alternating processes, five rounds, ms: B = 16, H = 1024, T = 32 / 128
    34.8–37.6 / 129–133 against 37.6–41.0 / 139–149; T = 64, B = 8, H = 1024 34.4–36.0 against
    38.8–45.0; T = 32, B = 16, H = 768 18.8–19.8 against 19.3–20.2, H = 512 level; but H = 256
    2.19–2.24 against 2.13–2.16 (768 KB: each core packs its copy into its own L2 at the same time).
    ``serial``: the serial kernel's address (:func:`~numgru.kernels._jit.native_address`) for the
    arguments each chunk hands it (these with ``shared`` for ``packed``, a bool for ``sorted_desc``,
    int64 ``tiled_max`` = −1, b0 and b1), called by it rather than by name, so that this kernel's
    compile does not optimise and emit the serial kernel's code once more (cold, two threads: 38 s,
    the serial kernel's 21 among them, against 2 s beside the serial kernel's).
    """
    wide_vectors()
    B = gx.shape[1]
    cs, nc = row_chunks(B, n_threads)
    Wp_a, Wp_b = packed
    if Wp_a.shape[0] == 0 and nc > 1 and W_hh.size * W_hh.itemsize > ROWS_SHARED_PANELS_BYTES:
        Wp_a, Wp_b = own_panels(W_hh, reset_after, cs, gx.shape[0], np.int64(-1))
    shared = (Wp_a, Wp_b)
    for c in prange(nc):
        wide_vectors()
        b0 = c * cs
        b1 = min(B, b0 + cs)
        chunk_sorted = sorted_desc
        if not chunk_sorted:
            chunk_sorted = True
            for b in range(b0 + 1, b1):
                if lengths[b] > lengths[b - 1]:
                    chunk_sorted = False
        call_native(serial, (gx, W_hh, shared, b_hh, h0, lengths, chunk_sorted, reverse, reset_after,
                             gate_kind, alpha, beta, use_clip, clip, y, col0, h_n, store, tape, np.int64(-1),
                             np.int64(b0), np.int64(b1)), None)


@inline
def _chunk_after(gxb, ar, az, an, b_hh, hcb, hnb, j0, m, H, kind, alpha, beta, use_clip, clip):
    """Gates of units j0 … j0+m−1 of one row, reset_after=True; ar/az/an hold (W_hh h) for those units.
    Writes hnb for those units only. The loops index slices that start at the block: an index j0 + jj
    into the whole row is checked for wraparound at every use (j0 could be negative, for all LLVM
    knows), which kept the loop scalar (B = 4, H = 256: 16 µs a step against 1.5)."""
    H2 = 2 * H
    g_r = gxb[j0:j0 + m]
    g_z = gxb[H + j0:H + j0 + m]
    g_n = gxb[H2 + j0:H2 + j0 + m]
    b_r = b_hh[j0:j0 + m]
    b_z = b_hh[H + j0:H + j0 + m]
    b_n = b_hh[H2 + j0:H2 + j0 + m]
    hc = hcb[j0:j0 + m]
    hn = hnb[j0:j0 + m]
    if kind == 0 and not use_clip:
        for j in range(m):
            r = sigmoid_fast(g_r[j] + ar[j] + b_r[j])
            z = sigmoid_fast(g_z[j] + az[j] + b_z[j])
            n = tanh_fast(g_n[j] + r * (an[j] + b_n[j]))
            hn[j] = n + z * (hc[j] - n)
        return
    for j in range(m):
        r = gate(clip_pre(g_r[j] + ar[j] + b_r[j], use_clip, clip), kind, alpha, beta)
        z = gate(clip_pre(g_z[j] + az[j] + b_z[j], use_clip, clip), kind, alpha, beta)
        n = tanh_fast(clip_pre(g_n[j] + r * (an[j] + b_n[j]), use_clip, clip))
        hn[j] = n + z * (hc[j] - n)


@inline
def _block_gate_product(W_hh, h, a, g0, ng, j0, m, cs, n_act, backwards):
    """a[:n_act, (g − g0)·cs + u] = W_hh[g·H + j0 + u] · h for the ng gates from g0 and units u < m, by
    :func:`small_rows_matmul` in tiles (last first when ``backwards``)."""
    H = W_hh.shape[1]
    nt = (m + TILE - 1) // TILE
    for k in range(ng * nt):
        gg, qq = divmod(ng * nt - 1 - k if backwards else k, nt)
        q0 = qq * TILE
        q1 = min(m, q0 + TILE)
        r0 = (g0 + gg) * H + j0
        small_rows_matmul(W_hh[r0 + q0:r0 + q1], h, a[:, gg * cs + q0:gg * cs + q1], n_act)


def _gru_forward_cols(gx, W_hh, b_hh, h0, lengths, sorted_desc, reverse, gate_kind, alpha, beta,
                      use_clip, clip, y, col0, h_n, n_chunks):
    """:func:`_gru_forward` for inference with reset_after=True, parallel over blocks of hidden units.

    Same arrays and results as :func:`_gru_forward` (reset_after=True, no tape). Each time step is split
    into ``n_chunks`` blocks of units (16-unit multiples): a block computes W_hr, W_hz and W_hn times h
    for its units on its own rows of W_hh — packed into panels once per call
    (:func:`block_panels_empty`, each block by the worker that first takes it, :func:`pack_block`)
    from 2 rows and :data:`PANEL_MIN_ROW_STEPS` rows × steps (bfloat16 weights: from 2 rows, or one
    row while a block's rows fit :data:`COLS_B1_PANEL_BYTES`), else by :func:`tiled_matmul` — then
    those units' gates and new state. Packing is a pass over W_hh that one row never repaid and short
    calls did not (2 threads, T = 8 / 32 / 128 / 512, float32, without panels against with them:
    B = 1, H = 256 3.18× / 1.58× / 1.10–1.15× / 0.98×; H = 384 1.65× (T = 32) / 1.15–1.20× / 1.02×;
    T = 8, B = 4, H = 256 / 1024 1.88× / 2.38×; B = 8, H = 512 1.33×; from 128 rows × steps level).
    A unit's gates need only its own three pre-activations, so blocks never wait on each other inside
    a step; each thread keeps re-reading the same slice of W_hh, which stays in its core's cache (ONNX
    Runtime and oneDNN split the step the same way). No BLAS call inside the loop.

    One parallel region for the whole sequence (:func:`_cols_worker`): worker c runs block c of every
    step, and the workers meet between steps on an atomic counter (:mod:`~numgru.kernels.sync`; about
    70 ns on 2 vCPUs, where entering a region per step had cost more than a small step's product:
    T = 128, B = 1, H = 256 ran at 0.81× the serial kernel, 1.05–1.13× now). A worker whose thread
    has not started yet (fewer threads than workers, or a busy pool) has its blocks taken by the
    running ones, so no worker ever waits on one that is not running. Kernel alone, 2 threads, µs a
    step against the serial kernel: B = 1, H = 256 / 512 5.2 / 25 against 7.7 / 105 (W_hh in two
    L2s instead of L3); B = 4 / 16, H = 256 8.7 / 27.5 against 12.7 / 48.8.
    """
    wide_vectors()
    T = gx.shape[0]
    B = gx.shape[1]
    H = h0.shape[1]
    dt = gx.dtype
    nc, cs = column_blocks(H, n_chunks)
    h_a = np.empty((B, H), dt)
    h_b = np.empty((B, H), dt)
    # per block and row: W_hr h, W_hz h, W_hn h for the block's units, side by side (cs values each)
    acc = np.empty((nc, B, 3 * cs), dt)
    # each block's rows of W_hh packed into panels once, one product per block and step, where the
    # steps repay the packing
    if is_bfloat16(W_hh):
        packed = B >= 2 or 3 * cs * H * W_hh.itemsize <= COLS_B1_PANEL_BYTES
    else:
        packed = B >= 2 and T * B >= PANEL_MIN_ROW_STEPS
    # (each block packed by the worker that takes it for the first step: its core's cache keeps it,
    # and the packing is split over the threads)
    Wp = block_panels_empty(W_hh, cs, nc) if packed else np.empty((0, 0, 0, 0), W_hh.dtype)
    copy_rows(h0, h_a)
    sync = rounds_sync(nc)  # a round a step
    for w in prange(nc):
        wide_vectors()
        # np.int64(w): a prange index is int64 where Numba types the loop and uint64 in the body it
        # compiles, which had compiled the worker twice (5 s more, cold)
        _cols_worker(np.int64(w), nc, cs, sync, gx, W_hh, Wp, b_hh, h_a, h_b, acc, lengths, sorted_desc,
                     reverse, gate_kind, alpha, beta, use_clip, clip, y, col0)
    copy_rows(h_a if T % 2 == 0 else h_b, h_n)


@device
def _cols_worker(w, nc, cs, sync, gx, W_hh, Wp, b_hh, h_a, h_b, acc, lengths, sorted_desc, reverse,
                 gate_kind, alpha, beta, use_clip, clip, y, col0):
    """Worker w of :func:`_gru_forward_cols`: its own block of every step, and any block whose worker
    has not started (``sync``: :func:`~numgru.kernels.sync.rounds_sync`'s, a round a step)."""
    wide_vectors()
    T = gx.shape[0]
    B = gx.shape[1]
    H = h_a.shape[1]
    worker_started(sync, nc, w)
    for s in range(T):
        if round_pending(sync, nc, s):
            t, hc, hn = step_states(s, T, reverse, h_a, h_b)
            n_act = active_rows(lengths, t, sorted_desc)
            for k in range(nc):
                c = claim_block(sync, nc, w, k, s)
                if c < 0:
                    continue
                if s == 0 and Wp.shape[0] > 0:  # (every block of step 0 is done before step 1 starts)
                    pack_block(Wp, W_hh, c, cs)
                _cols_block(c, cs, t, n_act, gx, W_hh, Wp, b_hh, hc, hn, acc[c], lengths, gate_kind, alpha,
                            beta, use_clip, clip, y, col0, H, B, s % 2 == 1)
                block_done(sync, nc)
            wait_round(sync, nc, s)


@inline
def _cols_block(c, cs, t, n_act, gx, W_hh, Wp, b_hh, hc, hn, a, lengths, gate_kind, alpha, beta, use_clip,
                clip, y, col0, H, B, backwards):
    """Block c of step t in :func:`_gru_forward_cols`: its units' three products, then their gates.
    Without panels the block's rows of W_hh go tile by tile, last first when ``backwards`` (every
    other step), so that a block beyond its core's L2 starts on the tiles read last
    (:func:`step_product`)."""
    j0 = c * cs
    m = min(cs, H - j0)
    if n_act > 0:
        if Wp.shape[0] > 0:
            panel_matmul(hc, Wp[c], a, n_act)
        else:  # this block's rows of W_hr, W_hz, W_hn, in tiles
            _block_gate_product(W_hh, hc, a, 0, 3, j0, m, cs, n_act, backwards)
    for b in range(B):
        hnb = hn[b]
        hcb = hc[b]
        ys = y[t, b, col0 + j0:col0 + j0 + m]  # slices, so the loops' indices start at 0 (see _chunk_after)
        hs = hnb[j0:j0 + m]
        if t >= lengths[b]:
            hcs = hcb[j0:j0 + m]
            for j in range(m):
                hs[j] = hcs[j]
                ys[j] = 0.0
            continue
        ab = a[b]
        _chunk_after(gx[t, b], ab[:cs], ab[cs:2 * cs], ab[2 * cs:], b_hh, hcb, hnb, j0, m, H, gate_kind,
                     alpha, beta, use_clip, clip)
        for j in range(m):
            ys[j] = hs[j]


def _gru_forward_cols_before(gx, W_hh, b_hh, h0, lengths, sorted_desc, reverse, gate_kind, alpha, beta,
                             use_clip, clip, y, col0, h_n, n_chunks):
    """:func:`_gru_forward_cols` for reset_after=False: the same arrays and results as
    :func:`_gru_forward` (reset_after=False, no tape), each step split into ``n_chunks`` blocks of
    units in two halves. n needs W_hn (r ⊙ h) over all units, so a step's blocks first compute
    their units' W_hr h and W_hz h, then r, z and r ⊙ h; and once every block has written its units
    of r ⊙ h, each computes W_hn (r ⊙ h) for its units, then n and the new state. The workers meet
    after each half (:func:`_cols_before_worker`, the reset_after route's counter over half steps),
    twice a step. A block's rows of W_hr, W_hz and of W_hn go on panels of their own (packed by the
    worker that first takes the half) from 2 rows and :data:`PANEL_MIN_ROW_STEPS` rows × steps, as
    :func:`_gru_forward_cols`'s; float weights only."""
    wide_vectors()
    T = gx.shape[0]
    B = gx.shape[1]
    H = h0.shape[1]
    dt = gx.dtype
    nc, cs = column_blocks(H, n_chunks)
    h_a = np.empty((B, H), dt)
    h_b = np.empty((B, H), dt)
    rh = np.zeros((B, H), dt)  # r ⊙ h of the step (rows past their length keep a finite value)
    # per block and row: W_hr h and W_hz h side by side (z in place of the latter once computed), and
    # W_hn (r ⊙ h), for the block's units
    acc_rz = np.empty((nc, B, 2 * cs), dt)
    acc_n = np.empty((nc, B, cs), dt)
    if B >= 2 and T * B >= PANEL_MIN_ROW_STEPS:
        Wp_rz = block_panels_empty(W_hh, cs, nc, 2)
        Wp_n = block_panels_empty(W_hh, cs, nc, 1)
    else:
        Wp_rz = np.empty((0, 0, 0, 0), W_hh.dtype)
        Wp_n = np.empty((0, 0, 0, 0), W_hh.dtype)
    copy_rows(h0, h_a)
    sync = rounds_sync(nc)  # two rounds a step
    for w in prange(nc):
        wide_vectors()
        # np.int64(w): as in _gru_forward_cols
        _cols_before_worker(np.int64(w), nc, cs, sync, gx, W_hh, Wp_rz, Wp_n, b_hh, h_a, h_b, rh, acc_rz,
                            acc_n, lengths, sorted_desc, reverse, gate_kind, alpha, beta, use_clip, clip, y,
                            col0)
    copy_rows(h_a if T % 2 == 0 else h_b, h_n)


@device
def _cols_before_worker(w, nc, cs, sync, gx, W_hh, Wp_rz, Wp_n, b_hh, h_a, h_b, rh, acc_rz, acc_n, lengths,
                        sorted_desc, reverse, gate_kind, alpha, beta, use_clip, clip, y, col0):
    """Worker w of :func:`_gru_forward_cols_before`: :func:`_cols_worker` over 2T half steps (half q:
    step q // 2, first or second half by q % 2), ``sync`` the same counters counting halves."""
    wide_vectors()
    T = gx.shape[0]
    B = gx.shape[1]
    H = h_a.shape[1]
    worker_started(sync, nc, w)
    for q in range(2 * T):
        if round_pending(sync, nc, q):
            s = q // 2
            t, hc, hn = step_states(s, T, reverse, h_a, h_b)
            n_act = active_rows(lengths, t, sorted_desc)
            for k in range(nc):
                c = claim_block(sync, nc, w, k, q)
                if c < 0:
                    continue
                j0 = c * cs
                m = min(cs, H - j0)
                if q % 2 == 0:
                    if q == 0 and Wp_rz.shape[0] > 0:
                        pack_block_gates(Wp_rz, W_hh, c, cs, 0, 2)
                    _cols_before_rz(c, cs, j0, m, t, n_act, gx, W_hh, Wp_rz, b_hh, hc, rh, acc_rz[c],
                                    lengths, gate_kind, alpha, beta, use_clip, clip, H, B, s % 2 == 1)
                else:
                    if q == 1 and Wp_n.shape[0] > 0:
                        pack_block_gates(Wp_n, W_hh, c, cs, 2, 1)
                    _cols_before_n(c, cs, j0, m, t, n_act, gx, W_hh, Wp_n, b_hh, hc, hn, rh, acc_rz[c],
                                   acc_n[c], lengths, use_clip, clip, y, col0, H, B, s % 2 == 1)
                block_done(sync, nc)
            wait_round(sync, nc, q)


@inline
def _cols_before_rz(c, cs, j0, m, t, n_act, gx, W_hh, Wp_rz, b_hh, hc, rh, a, lengths, gate_kind, alpha,
                    beta, use_clip, clip, H, B, backwards):
    """First half of block c of step t (:func:`_gru_forward_cols_before`): its units' W_hr h and W_hz h,
    then z (into a's second half, in place) and r ⊙ h (into rh) for every row still running."""
    if n_act > 0:
        if Wp_rz.shape[0] > 0:
            panel_matmul(hc, Wp_rz[c], a, n_act)
        else:
            _block_gate_product(W_hh, hc, a, 0, 2, j0, m, cs, n_act, backwards)
    for b in range(B):
        if t >= lengths[b]:
            continue
        gxb = gx[t, b]
        ab = a[b]
        ar = ab[:m]
        az = ab[cs:cs + m]
        g_r = gxb[j0:j0 + m]  # slices, so the loops' indices start at 0 (see _chunk_after)
        g_z = gxb[H + j0:H + j0 + m]
        b_r = b_hh[j0:j0 + m]
        b_z = b_hh[H + j0:H + j0 + m]
        hcs = hc[b, j0:j0 + m]
        rhs = rh[b, j0:j0 + m]
        if gate_kind == 0 and not use_clip:
            for j in range(m):
                az[j] = sigmoid_fast(g_z[j] + az[j] + b_z[j])
                rhs[j] = sigmoid_fast(g_r[j] + ar[j] + b_r[j]) * hcs[j]
        else:
            for j in range(m):
                az[j] = gate(clip_pre(g_z[j] + az[j] + b_z[j], use_clip, clip), gate_kind, alpha, beta)
                rhs[j] = gate(clip_pre(g_r[j] + ar[j] + b_r[j], use_clip, clip), gate_kind, alpha,
                              beta) * hcs[j]


@inline
def _cols_before_n(c, cs, j0, m, t, n_act, gx, W_hh, Wp_n, b_hh, hc, hn, rh, a_rz, a, lengths, use_clip, clip,
                   y, col0, H, B, backwards):
    """Second half of block c of step t: its units' W_hn (r ⊙ h), then n and the new state (rows past
    their length keep theirs, with zeros in y)."""
    if n_act > 0:
        if Wp_n.shape[0] > 0:
            panel_matmul(rh, Wp_n[c], a, n_act)
        else:
            _block_gate_product(W_hh, rh, a, 2, 1, j0, m, cs, n_act, backwards)
    H2 = 2 * H
    for b in range(B):
        ys = y[t, b, col0 + j0:col0 + j0 + m]
        hs = hn[b, j0:j0 + m]
        hcs = hc[b, j0:j0 + m]
        if t >= lengths[b]:
            for j in range(m):
                hs[j] = hcs[j]
                ys[j] = 0.0
            continue
        an = a[b, :m]
        zs = a_rz[b, cs:cs + m]
        g_n = gx[t, b, H2 + j0:H2 + j0 + m]
        b_n = b_hh[H2 + j0:H2 + j0 + m]
        for j in range(m):
            n = tanh_fast(clip_pre(g_n[j] + (an[j] + b_n[j]), use_clip, clip))
            v = n + zs[j] * (hcs[j] - n)
            hs[j] = v
            ys[j] = v


@kernel
def input_projection_kernel(x2d, W_ih, Wp, b_ih, use_bias, out, panels, dot):
    """out = x2d @ W_ih.T (+ b_ih): one GEMM over all T·B rows.

    x2d (N, I), W_ih (3H, I), b_ih (3H,) in; out (N, 3H) out. With ``panels`` (the caller's choice,
    :func:`~numgru.kernels.dispatch.projection_panels`) on W_ih packed into panels
    (:func:`~numgru.kernels.panel.panel_rows`, one thread): ``Wp`` when the caller has packed them
    (:func:`~numgru.kernels.panel.pack_panels`), else packed here (``Wp`` (0, 0, 0)); with ``dot`` (few rows,
    :func:`~numgru.kernels.dispatch.projection_dot`) by the dot-product block on W_ih as it lies
    (:func:`~numgru.kernels.dotblock.dot_rows`); else in the same BLAS as the per-step recurrent calls
    (the one Numba links), so only one BLAS thread pool is ever busy: two OpenBLAS copies (NumPy's and
    SciPy's) spinning side by side made 2-thread runs slower than 1-thread ones.
    """
    wide_vectors()
    N = x2d.shape[0]
    M = W_ih.shape[0]
    if panels:
        panel_rows(x2d, Wp if Wp.shape[0] > 0 else pack_panels(W_ih), b_ih, use_bias, out, 0, N)
        return
    if dot:
        dot_rows(x2d, W_ih, out, N)
    elif N == 1:
        np.dot(W_ih, x2d[0], out[0])
    elif N <= 64:
        # few rows (short sequences, small batches): W_ih @ x.T, then a blocked transpose. OpenBLAS
        # runs that orientation faster when N is small: one thread, whole kernel, N = 8 / 32 at
        # I = H = 256: 1.29× / 1.12×; N = 32 at 1024: 1.58×. From N = 128 the transpose costs more
        # than it saves (0.92× at 256).
        outT = np.empty((M, N), out.dtype)
        np.dot(W_ih, x2d.T, outT)
        for j0 in range(0, M, 64):
            j1 = min(M, j0 + 64)
            for i in range(N):
                row = out[i]
                for j in range(j0, j1):
                    row[j] = outT[j, i]
    else:
        np.dot(x2d, W_ih.T, out)
    if use_bias:
        for i in range(N):
            row = out[i]
            for j in range(M):
                row[j] += b_ih[j]


@inline
def _take_batch_run(a, idx, out, n0, n1):
    """:func:`take_batch`'s rows n0 to n1 of out's (t, j) pairs, t-major."""
    B2 = out.shape[1]
    for n in range(n0, n1):
        t = n // B2
        j = n - t * B2
        src = a[t, idx[j]]
        dst = out[t, j]
        for k in range(dst.shape[0]):
            dst[k] = src[k]


@kernel
def take_batch(a, idx, out):
    """out[t, j] = a[t, idx[j]] for a (T, B, K) and out (T, B', K) C-contiguous and idx (B',) int64
    in [0, B) (the caller's check): a batch's rows put in another order, as ``np.take(a, idx,
    axis=1, out=out)`` (2–3× faster than it at (10, 128, 384) and (100, 32, 512) on the 2-vCPU Intel
    machine)."""
    wide_vectors()
    _take_batch_run(a, idx, out, 0, out.shape[0] * out.shape[1])


@parallel_kernel(name="take_batch_parallel")
def take_batch_on_threads(a, idx, out, n_threads):
    """:func:`take_batch` on ``n_threads`` of Numba's threads, each a run of equal length of out's
    rows (the caller holds the parallel slot)."""
    wide_vectors()
    N = out.shape[0] * out.shape[1]
    nc = max(1, min(N, n_threads))
    per = (N + nc - 1) // nc
    for c in prange(nc):
        wide_vectors()
        _take_batch_run(a, idx, out, np.int64(c * per), np.int64(min(N, (c + 1) * per)))


@kernel
def packed_panels(W):
    """:func:`~numgru.kernels.panel.pack_panels` of W (M, K) as a kernel of its own: panels packed
    once for calls that then share them (:func:`~numgru.kernels.dispatch.pool_projection`)."""
    wide_vectors()
    return pack_panels(W)


@parallel_kernel(name="packed_panels_parallel")
def packed_panels_on_threads(W):
    """:func:`packed_panels` on Numba's threads, each packing a share of the panels (the caller holds
    the parallel slot): W_hh's panels that the rows route's chunks then share
    (:func:`~numgru.kernels.dispatch.rows_share_panels`)."""
    wide_vectors()
    Wp = panels_for(W)
    for p in prange(Wp.shape[0]):
        wide_vectors()
        fill_panels_of(Wp, W, np.int64(p))
    return Wp


@kernel
def packed_panels_of_transpose(W, buf):
    """:func:`~numgru.kernels.panel.pack_panels_of_transpose` of W (K, M) into ``buf`` as a kernel of
    its own: the panels of W.T without W.T copied first (:func:`~numgru.kernels.dispatch.input_gradient`)."""
    wide_vectors()
    return pack_panels_of_transpose(W, buf)


@kernel
def packed_panels_into(W, buf):
    """:func:`~numgru.kernels.panel.pack_panels_into`: W's panels into ``buf``, a caller's scratch
    (:func:`~numgru.kernels.dispatch.pool_projection`)."""
    wide_vectors()
    return pack_panels_into(W, buf)


@kernel
def gru_forward_chunked(x2d, W_ih, Wp_ih, b_ih, use_bias, proj_panels, proj_dot, gx, W_hh, packed, b_hh,
                        h0, lengths, reverse, reset_after, gate_kind, alpha, beta, use_clip, clip, y,
                        col0, h_n, tiled_max, steps, project, serial):
    """An inference forward of one direction whose rows all run every step, the input projection
    taken ``steps`` steps at a time just before the recurrence needs them, so that gx stays in L2.

    x2d (T·B, I) in; gx (≥ steps·B, 3H) scratch; lengths (B,) all T; the projection's arguments as
    :func:`input_projection_kernel` takes them (``proj_panels``, ``proj_dot``: its choice for
    ``steps``·B rows), the recurrence's as :func:`_gru_forward` (rows b0 = 0 … B, sorted, no tape).
    W_ih's and W_hh's panels are packed once here where the kernels would pack them on every call.
    One projection of all T·B rows, written out before the first step, leaves L2 when it passes a
    few MB and the steps then read it back from L3 (one thread, T = 128, B = 64, H = 64: 6 MB).
    ``project`` and ``serial``: :func:`input_projection_kernel`'s and the serial forward's addresses
    (:func:`~numgru.kernels._jit.native_address`) for the arguments given them here, which this
    kernel calls by, rather than by name: linked in, their code was optimised and emitted once more
    in this kernel's compile (its own 5 s of 28 s cold, one thread, H = 128; 1.4 s now)."""
    wide_vectors()
    T = y.shape[0]
    B = h0.shape[0]
    H = h0.shape[1]
    Wp_a, Wp_b = packed
    if Wp_a.shape[0] == 0:
        Wp_a, Wp_b = own_panels(W_hh, reset_after, B, T, tiled_max)
    if proj_panels and Wp_ih.shape[0] == 0:
        Wp_ih = pack_panels(W_ih)
    tape = np.empty((0, 0, 0), gx.dtype)
    state = np.empty((B, H), gx.dtype)
    copy_rows(h0, state)
    nc = (T + steps - 1) // steps
    for k in range(nc):
        c = nc - 1 - k if reverse else k
        t0 = c * steps
        t1 = min(T, t0 + steps)
        g = gx[:(t1 - t0) * B]
        call_native(project, (x2d[t0 * B:t1 * B], W_ih, Wp_ih, b_ih, use_bias, g, proj_panels, proj_dot), None)
        call_native(serial, (g.reshape((t1 - t0, B, 3 * H)), W_hh, (Wp_a, Wp_b), b_hh, state, lengths,
                             np.bool_(True), reverse, reset_after, gate_kind, alpha, beta, use_clip, clip,
                             y[t0:t1], col0, h_n, np.bool_(False), tape, tiled_max, np.int64(0), np.int64(B)),
                    None)
        copy_rows(h_n, state)


@inline
def project_block(x2d, W_ih, b_ih, use_bias, out, r0, r1, c0, c1):
    """out[r0:r1, c0:c1] = x2d[r0:r1] @ W_ih[c0:c1].T (+ b_ih[c0:c1]) by :func:`rows_product` (the
    dot-product block for float weights: 2 threads, against :func:`small_rows_matmul` here, whole
    forwards on the column route, T = 8 / 32, B = 4, H = 256 1.13× / 1.10×; T = 8, B = 8, H = 512
    1.11×; T = 64 / 128, B = 4 / 2, H = 1024 1.05× / 1.03×; other points 1.00–1.04×)."""
    o = out[r0:r1, c0:c1]
    rows_product(W_ih[c0:c1], x2d[r0:r1], o, r1 - r0, False)
    if use_bias:
        for r in range(r1 - r0):
            orow = o[r]
            for j in range(c1 - c0):
                orow[j] += b_ih[c0 + j]


@kernel
def projection_block(x2d, W_ih, Wp, b_ih, use_bias, out, panels, r0, r1, c0, c1, col):
    """One task of :func:`input_projection_parallel`: with ``panels`` rows r0 … r1−1 of out by the
    panels c0 … c1−1 of Wp, which hold W_ih's rows from ``col`` on
    (:func:`~numgru.kernels.panel.panel_block`), else out[r0:r1, c0:c1] (:func:`project_block`)."""
    wide_vectors()
    if panels:
        panel_block(x2d, Wp, c0, c1, col, b_ih, use_bias, out, r0, r1)
    else:
        project_block(x2d, W_ih, b_ih, use_bias, out, r0, r1, c0, c1)


#: most rows for which :func:`input_projection_parallel` splits wide panels (``WIDE_PANELS_BYTES``) by
#: ranges of panels rather than blocks of rows
COLUMN_SPLIT_MAX_ROWS = 1024


@parallel_kernel(name="input_projection_parallel")
def input_projection_parallel(x2d, W_ih, Wp, buf, b_ih, use_bias, out, panels, n_threads, block):
    """:func:`input_projection_kernel` on Numba's threads instead of BLAS's.

    Used together with :func:`_gru_forward_cols` so that only one thread pool is ever awake: OpenBLAS's
    workers keep spinning for a while after each call, and a per-step parallel region that has to wait
    for a core runs several times slower. With ``panels`` (the caller's choice,
    :func:`~numgru.kernels.dispatch.projection_panels`) W_ih is packed into panels once and blocks of
    up to 128 rows run in parallel (:func:`~numgru.kernels.panel.panel_block`), at least four blocks per
    thread (of ``n_threads``) where the rows allow; up to ``COLUMN_SPLIT_MAX_ROWS`` rows by panels of
    ``WIDE_PANELS_BYTES`` or more, ranges of the panels instead, each packed by the task that
    multiplies by it. ``Wp``: the panels when the caller has packed them (as in
    :func:`input_projection_kernel`), else (0, 0, 0) and they are packed into ``buf`` (1-D, W_ih's
    dtype, as :func:`~numgru.kernels.panel.panels_in` takes it: a caller's scratch, whose pages are
    mapped already; fresh ones where it is empty). Else blocks of 128 rows times tiles of 128 rows of
    W_ih (L2-sized for I ≤ 1024) run in parallel (:func:`project_block`; with :func:`small_rows_matmul`
    there they had run at 75–95 % of OpenBLAS's sgemm rate, N = 128–8192, I = 256 and 1024).
    Each task is :func:`projection_block`, called by its address ``block``
    (:func:`~numgru.kernels._jit.native_address`, for these arrays, ``panels`` and four int64
    bounds): a ``prange`` body is compiled as a library of its own that the kernel then links, so
    the product code a body held by name was optimised and emitted twice more.
    """
    wide_vectors()
    N = x2d.shape[0]
    M = W_ih.shape[0]
    if panels:
        fill = Wp.shape[0] == 0
        NC = panel_width(W_ih.dtype.type(0))
        P = (M + NC - 1) // NC
        K = W_ih.shape[1]
        if N <= COLUMN_SPLIT_MAX_ROWS and P * K * NC * W_ih.itemsize >= WIDE_PANELS_BYTES:
            # few rows by wide panels: each thread takes all rows by a range of the panels, so that W
            # streams from memory once, not once per block of rows of each thread; to be packed, a
            # group of panels at a time into the task's own slots, just before it multiplies by
            # them: read back from L2, and nothing the size of W written out (2-vCPU AMD EPYC, two
            # threads, float64, 3I outputs, packing included, ms, two rounds against blocks of rows
            # on panels packed first: I = 1024, N = 32 / 128 / 256 3.46 / 9.68–10.0 / 17.6–18.0
            # against 5.89–7.17 / 15.2–16.2 / 22.9–26.1; I = 768, N = 64 2.91–3.30 against 3.45–3.55)
            per = max(WIDE_GROUP, (P + 4 * n_threads - 1) // (4 * n_threads))
            tasks = (P + per - 1) // per
            slots = panel_slots(buf, tasks * WIDE_GROUP, K) if fill else Wp
            for task in prange(tasks):
                wide_vectors()
                p1 = min(P, task * per + per)
                for g0 in range(task * per, p1, WIDE_GROUP):
                    g1 = min(p1, g0 + WIDE_GROUP)
                    if fill:
                        q0 = task * WIDE_GROUP
                        for p in range(g0, g1):
                            fill_panel_from(slots[q0 + p - g0], W_ih, np.int64(p * NC))
                        q1 = q0 + g1 - g0
                    else:
                        q0, q1 = g0, g1
                    call_native(block, (x2d, W_ih, slots, b_ih, use_bias, out, panels, np.int64(0), np.int64(N),
                                        np.int64(q0), np.int64(q1), np.int64(g0 * NC)), None)
            return
        if fill:
            # each thread packs a share of the panels: one thread packing them all had left the other
            # waiting (2-vCPU AMD EPYC, two threads, 3I outputs, ms, two runs taking turns: float64
            # N = 128, I = 512 2.59–2.63 → 2.22–2.30, N = 64, I = 512 1.59–1.61 → 1.25–1.29; float32
            # N = 128, I = 384 0.70 → 0.60, N = 256, I = 512 2.14 → 1.98; N = 512, I = 1024 level)
            Wp = panels_in(W_ih, buf) if buf.shape[0] > 0 else panels_for(W_ih)
            for p in prange(P):
                wide_vectors()
                fill_panels_of(Wp, W_ih, np.int64(p))
        rows = min(128, max(8, (N // (4 * n_threads) + 7) // 8 * 8))
        for blk in prange((N + rows - 1) // rows):
            wide_vectors()
            r0 = blk * rows
            call_native(block, (x2d, W_ih, Wp, b_ih, use_bias, out, panels, np.int64(r0),
                                np.int64(min(N, r0 + rows)), np.int64(0), np.int64(P), np.int64(0)), None)
        return
    nt = (M + 127) // 128
    nb = (N + 127) // 128
    # row blocks of even size, enough of them that the threads' shares of the tasks are even: prange
    # deals each thread a range of tasks, and 160 rows in blocks of 128 and 32 had given one thread
    # four fifths of the work (two threads, T = 10, B = 16, rows route, alternating against 26d8bc2,
    # ms: H = 256 0.98–1.16 → 0.72–0.86, H = 512 3.8–4.3 → 2.9–3.2, float64 H = 384 5.1–5.9 →
    # 3.5–4.8); 128 rows by 48 outputs had been one task on one thread (float64, T = 1, B = 128,
    # I = 300, H = 16, two bidirectional layers, lengths: 0.38–0.49 → 0.28–0.38 ms)
    most = (N + 7) // 8
    while nb < most and (nb * nt < 2 * n_threads or (nb * nt % n_threads != 0 and nb * nt < 8 * n_threads)):
        nb += 1
    rows = ((N + nb - 1) // nb + 7) // 8 * 8
    nb = (N + rows - 1) // rows
    for task in prange(nb * nt):  # (row block, tile) pairs: enough tasks for every thread at small N
        wide_vectors()
        r0 = (task // nt) * rows
        c0 = (task % nt) * 128
        call_native(block, (x2d, W_ih, Wp, b_ih, use_bias, out, panels, np.int64(r0),
                            np.int64(min(N, r0 + rows)), np.int64(c0), np.int64(min(M, c0 + 128)),
                            np.int64(0)), None)


gru_forward_serial = kernel(_gru_forward, name="gru_forward_serial")
gru_forward_rows = parallel_kernel(_gru_forward_rows, name="gru_forward_rows_parallel")
gru_forward_cols = parallel_kernel(_gru_forward_cols, name="gru_forward_cols_parallel")
gru_forward_cols_before = parallel_kernel(_gru_forward_cols_before, name="gru_forward_cols_before_parallel")
