"""GRU backward kernel: backpropagation through time for one layer and one direction.

The kernel produces the gradients of the gate pre-activations at every step; the weight gradients are
then GEMMs over the whole sequence (done by the caller), so their summation order does not depend on the
thread count. Per step: the gate gradients of all rows in one fused loop, then one BLAS call
``dgh_t @ W_hh`` for the gradient flowing into h_{t−1} (reset_after=False needs an extra call for
d(r ⊙ h) = dn_pre @ W_hn first).
"""
import numpy as np
from numba import prange

from ._jit import kernel, parallel_kernel
from .activations import gate_grad, one_like


def _gru_backward(dy, col0, dh_n, tape, y, h0, W_hh, lengths, reverse, reset_after, gate_kind,
                  alpha, beta, use_clip, clip, dgx, dgh, hprev, rhprev, dh0):
    """Backward pass of one GRU layer, one direction, in the reverse of the forward's step order.

    Arrays (C-contiguous, one float dtype):

    dy       (T, B, DH)  in.  dLoss/dy of the layer output; columns col0 … col0+H−1 belong here.
    dh_n     (B, H)      in.  dLoss/dh_n for this direction.
    tape     (T, B, 4H)  in.  r, z, n, ghn stored by the forward kernel (``store=True``); 5H with
                              ``use_clip`` (the clip flags).
    y        (T, B, DH)  in.  The forward output of the layer (gives h_{t−1}).
    h0       (B, H)      in.  The forward's initial state.
    W_hh     (3H, H)     in.  Recurrent weights.
    lengths  (B,) int64  in.  As in the forward.
    dgx      (T, B, 3H)  out. dLoss/d(x W_ih.T + b_ih) per step; zeros at invalid steps.
    dgh      (T, B, 3H)  out. dLoss/d(W_hh h + b_hh) per step (reset_after=False: its n block is
                              dLoss/d(W_hn (r ⊙ h) + b_hn)); zeros at invalid steps.
    hprev    (T, B, H)   out. h_{t−1} per valid step (zeros elsewhere): the input of dW_hh.
    rhprev   (T, B, H)   out. r ⊙ h_{t−1} (reset_after=False; pass (0, 0, 0) otherwise): input of dW_hn.
    dh0      (B, H)      out. dLoss/dh0.

    Scalars as in the forward kernel; ``reverse`` says which direction the forward ran.
    """
    T = tape.shape[0]
    B = h0.shape[0]
    H = h0.shape[1]
    H2 = 2 * H
    H3 = 3 * H
    dt = tape.dtype
    dh = np.empty((B, H), dt)
    dhp = np.empty((B, H), dt)
    tmp = np.empty((B, H), dt)
    dan = np.empty((B, H), dt)
    drh = np.empty((B, H), dt)
    darz = np.empty((B, H2), dt)
    W_rz = W_hh[:H2]
    W_n = W_hh[H2:]
    for b in range(B):
        for j in range(H):
            dh[b, j] = dh_n[b, j]
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in prange(B):
            L = lengths[b]
            if t >= L:
                for j in range(H3):
                    dgx[t, b, j] = 0.0
                    dgh[t, b, j] = 0.0
                for j in range(H):
                    hprev[t, b, j] = 0.0
                    dhp[b, j] = dh[b, j]
                    dan[b, j] = 0.0
                    if not reset_after:
                        rhprev[t, b, j] = 0.0
                continue
            if reverse:
                tp = t + 1
                has_prev = tp < L
            else:
                tp = t - 1
                has_prev = tp >= 0
            for j in range(H):
                hp = y[tp, b, col0 + j] if has_prev else h0[b, j]
                hprev[t, b, j] = hp
                r = tape[t, b, j]
                z = tape[t, b, H + j]
                n = tape[t, b, H2 + j]
                g = dh[b, j] + dy[t, b, col0 + j]
                one = one_like(g)
                dn = g * (one - z)
                dz = g * (hp - n)
                dhp[b, j] = g * z
                k_r = one
                k_z = one
                k_n = one
                if use_clip:
                    m = int(tape[t, b, 4 * H + j])
                    k_r = one - (m & 1)
                    k_z = one - ((m >> 1) & 1)
                    k_n = one - ((m >> 2) & 1)
                da_n = dn * (one - n * n) * k_n
                da_z = dz * gate_grad(z, gate_kind, alpha) * k_z
                dgx[t, b, H + j] = da_z
                dgh[t, b, H + j] = da_z
                dgx[t, b, H2 + j] = da_n
                if reset_after:
                    ghn = tape[t, b, 3 * H + j]
                    dgh[t, b, H2 + j] = da_n * r
                    da_r = da_n * ghn * gate_grad(r, gate_kind, alpha) * k_r
                    dgx[t, b, j] = da_r
                    dgh[t, b, j] = da_r
                else:
                    dgh[t, b, H2 + j] = da_n
                    dan[b, j] = da_n
                    rhprev[t, b, j] = r * hp
                    darz[b, j] = k_r
        if reset_after:
            np.dot(dgh[t], W_hh, tmp)
        else:
            # d(r ⊙ h_prev) = dn_pre @ W_hn, then the r gate, then the r, z blocks' matmul
            np.dot(dan, W_n, drh)
            for b in prange(B):
                if t >= lengths[b]:
                    for j in range(H2):
                        darz[b, j] = 0.0
                    continue
                for j in range(H):
                    r = tape[t, b, j]
                    dr = drh[b, j] * hprev[t, b, j]
                    dhp[b, j] += drh[b, j] * r
                    da_r = dr * gate_grad(r, gate_kind, alpha) * darz[b, j]
                    dgx[t, b, j] = da_r
                    dgh[t, b, j] = da_r
                    darz[b, j] = da_r
                    darz[b, H + j] = dgh[t, b, H + j]
            np.dot(darz, W_rz, tmp)
        for b in range(B):
            for j in range(H):
                dh[b, j] = dhp[b, j] + tmp[b, j]
    for b in range(B):
        for j in range(H):
            dh0[b, j] = dh[b, j]


gru_backward_serial = kernel(_gru_backward, name="gru_backward_serial")
gru_backward_parallel = parallel_kernel(_gru_backward, name="gru_backward_parallel")
