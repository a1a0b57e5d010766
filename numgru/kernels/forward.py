"""GRU forward kernel: the time loop of one layer and one direction.

The input projection ``gx = x @ W_ih.T + b_ih`` is hoisted out of the time loop by the caller (one GEMM
over all T·B rows, :func:`numgru.kernels.dispatch.input_projection`). Per time step the kernel makes one
BLAS call for the recurrent matmul ``h @ W_hh.T`` (two for reset_after=False, which needs r before the
n block), then runs all gate arithmetic fused in one loop over the step's pre-activations. Workspace is
allocated once, before the time loop.

Measured on this project's 2-vCPU machine (float32, one thread, ``benchmarks/``): a BLAS call per step
beat register-blocked Numba loops at every batch size (131 vs 30 GFLOP/s at B=64, H=256; 49 vs 28 at
B=1), so the matmul stays in BLAS; ``parallel=True`` only spreads the gate loop over rows, which pays
when the batch is large (see :mod:`numgru.kernels.dispatch`).

Serial and parallel variants are compiled from the same body (``prange`` is ``range`` when
``parallel=False``).
"""
import numpy as np
from numba import prange

from ._jit import kernel, parallel_kernel
from .activations import clip_pre, clipped, gate, tanh_fast


def _gru_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, alpha, beta,
                 use_clip, clip, y, col0, h_n, store, tape):
    """Run one GRU layer, one direction, over a whole sequence.

    Arrays (C-contiguous, one float dtype; T steps, B ≥ 1 rows, H hidden units, D·H output columns):

    gx        (T, B, 3H)  in.  Input projection x_t @ W_ih.T + b_ih, gate order r, z, n.
    W_hh      (3H, H)     in.  Recurrent weights (PyTorch layout). May be read-only.
    b_hh      (3H,)       in.  Recurrent bias (zeros when the layer has no bias).
    h0        (B, H)      in.  Initial state.
    lengths   (B,) int64  in.  Valid steps per row, 0 ≤ lengths[b] ≤ T (checked by the caller).
    y         (T, B, DH)  out. Columns col0 … col0+H−1 receive h_t; zeros where t ≥ lengths[b].
    h_n       (B, H)      out. State at each row's last valid step (h0 when lengths[b] == 0).
    tape      (T, B, 4H or 5H) out when ``store``: r, z, n and W_hn h + b_hn (reset_after) or
                               W_hn (r ⊙ h) + b_hn (reset_after=False) per valid step, and with
                               ``use_clip`` a fifth block: 1·[r clipped] + 2·[z clipped] + 4·[n clipped]
                               (so backward zeroes exactly the clipped derivatives); entries of
                               invalid steps are not written. Pass a (0, 0, 0) array otherwise.

    Scalars: reverse (bool) runs t = T−1 … 0, each row starting at its own last valid step;
    reset_after (bool) selects r ⊙ (W_hn h + b_hn) (True) or W_hn (r ⊙ h) + b_hn (False);
    gate_kind/alpha/beta select the gate activation; use_clip/clip apply ONNX's clip.
    Aliasing: no output may alias an input.
    """
    T = gx.shape[0]
    B = gx.shape[1]
    H = h0.shape[1]
    H2 = 2 * H
    dt = gx.dtype
    h_a = np.empty((B, H), dt)
    h_b = np.empty((B, H), dt)
    acc = np.empty((B, 3 * H), dt)
    acc_rz = np.empty((B, H2), dt)
    acc_n = np.empty((B, H), dt)
    rh = np.empty((B, H), dt)
    W_T = W_hh.T
    W_rz_T = W_hh[:H2].T
    W_n_T = W_hh[H2:].T
    for b in range(B):
        for j in range(H):
            h_a[b, j] = h0[b, j]
    for s in range(T):
        t = T - 1 - s if reverse else s
        if s % 2 == 0:
            hc = h_a
            hn = h_b
        else:
            hc = h_b
            hn = h_a
        if reset_after:
            np.dot(hc, W_T, acc)
            for b in prange(B):
                if t >= lengths[b]:
                    for j in range(H):
                        hn[b, j] = hc[b, j]
                        y[t, b, col0 + j] = 0.0
                    continue
                for j in range(H):
                    a_r = gx[t, b, j] + acc[b, j] + b_hh[j]
                    a_z = gx[t, b, H + j] + acc[b, H + j] + b_hh[H + j]
                    r = gate(clip_pre(a_r, use_clip, clip), gate_kind, alpha, beta)
                    z = gate(clip_pre(a_z, use_clip, clip), gate_kind, alpha, beta)
                    ghn = acc[b, H2 + j] + b_hh[H2 + j]
                    a_n = gx[t, b, H2 + j] + r * ghn
                    n = tanh_fast(clip_pre(a_n, use_clip, clip))
                    hp = hc[b, j]
                    h = n + z * (hp - n)
                    hn[b, j] = h
                    y[t, b, col0 + j] = h
                    if store:
                        tape[t, b, j] = r
                        tape[t, b, H + j] = z
                        tape[t, b, H2 + j] = n
                        tape[t, b, 3 * H + j] = ghn
                        if use_clip:
                            tape[t, b, 4 * H + j] = (clipped(a_r, use_clip, clip)
                                                     + 2 * clipped(a_z, use_clip, clip)
                                                     + 4 * clipped(a_n, use_clip, clip))
        else:
            np.dot(hc, W_rz_T, acc_rz)
            for b in prange(B):
                for j in range(H):
                    a_r = gx[t, b, j] + acc_rz[b, j] + b_hh[j]
                    a_z = gx[t, b, H + j] + acc_rz[b, H + j] + b_hh[H + j]
                    r = gate(clip_pre(a_r, use_clip, clip), gate_kind, alpha, beta)
                    z = gate(clip_pre(a_z, use_clip, clip), gate_kind, alpha, beta)
                    acc_rz[b, j] = r
                    acc_rz[b, H + j] = z
                    rh[b, j] = r * hc[b, j]
                    if store and use_clip and t < lengths[b]:
                        tape[t, b, 4 * H + j] = (clipped(a_r, use_clip, clip)
                                                 + 2 * clipped(a_z, use_clip, clip))
            np.dot(rh, W_n_T, acc_n)
            for b in prange(B):
                if t >= lengths[b]:
                    for j in range(H):
                        hn[b, j] = hc[b, j]
                        y[t, b, col0 + j] = 0.0
                    continue
                for j in range(H):
                    r = acc_rz[b, j]
                    z = acc_rz[b, H + j]
                    ghn = acc_n[b, j] + b_hh[H2 + j]
                    a_n = gx[t, b, H2 + j] + ghn
                    n = tanh_fast(clip_pre(a_n, use_clip, clip))
                    hp = hc[b, j]
                    h = n + z * (hp - n)
                    hn[b, j] = h
                    y[t, b, col0 + j] = h
                    if store:
                        tape[t, b, j] = r
                        tape[t, b, H + j] = z
                        tape[t, b, H2 + j] = n
                        tape[t, b, 3 * H + j] = ghn
                        if use_clip:
                            tape[t, b, 4 * H + j] += 4 * clipped(a_n, use_clip, clip)
    hl = h_a if T % 2 == 0 else h_b
    for b in range(B):
        for j in range(H):
            h_n[b, j] = hl[b, j]


gru_forward_serial = kernel(_gru_forward, name="gru_forward_serial")
gru_forward_parallel = parallel_kernel(_gru_forward, name="gru_forward_parallel")
