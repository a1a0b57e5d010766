"""Every gate-order and layout conversion, in one module (round trips in tests/test_layout.py).

numgru (PyTorch): gate blocks r, z, n along the 3H axis; W_ih (3H, I), W_hh (3H, H), b_ih, b_hh (3H,).
Keras: blocks z, r, h along the last axis; kernel (I, 3H), recurrent_kernel (H, 3H); bias (2, 3H)
    = [input bias, recurrent bias] when reset_after=True, (3H,) input bias only when reset_after=False.
ONNX: blocks z, r, h; W (D, 3H, I), R (D, 3H, H), B (D, 6H) = [Wb, Rb].

All three write h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, so no sign flip of z is needed between them; a source
that writes h_t = (1 − z) ⊙ h_{t−1} + z ⊙ n is converted with :func:`flip_z` (negate z's weights and bias).
"""
from __future__ import annotations

import numpy as np


def swap_rz(a, axis=0):
    """Swap the first two H-blocks of the 3H axis: r, z, n ↔ z, r, n (its own inverse)."""
    a = np.asarray(a)
    n3 = a.shape[axis]
    if n3 % 3:
        raise ValueError(f"expected a gate axis of size 3H, got {n3}")
    H = n3 // 3
    idx = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    return np.take(a, idx, axis=axis)


def flip_z(W_ih, W_hh, b_ih, b_hh):
    """Arrays in numgru order for a cell written h = (1 − z) h_prev + z n: negate the z block."""
    H = W_hh.shape[1]
    out = []
    for a in (W_ih, W_hh, b_ih, b_hh):
        if a is None:
            out.append(None)
            continue
        a = np.array(a, copy=True)
        a[H:2 * H] *= -1
        out.append(a)
    return out


# ----------------------------------------------------------------------------------------- Keras
def from_keras_weights(kernel, recurrent_kernel, bias=None, reset_after=True):
    """Keras GRU weights -> (W_ih, W_hh, b_ih, b_hh) in numgru order (b_* may be None: no bias)."""
    kernel = np.asarray(kernel)
    recurrent_kernel = np.asarray(recurrent_kernel)
    if kernel.ndim != 2 or kernel.shape[1] % 3:
        raise ValueError(f"kernel: expected shape (I, 3H), got {kernel.shape}")
    H = kernel.shape[1] // 3
    if recurrent_kernel.shape != (H, 3 * H):
        raise ValueError(f"recurrent_kernel: expected shape ({H}, {3 * H}), got {recurrent_kernel.shape}")
    W_ih = swap_rz(kernel.T, 0)
    W_hh = swap_rz(recurrent_kernel.T, 0)
    if bias is None:
        return W_ih, W_hh, None, None
    bias = np.asarray(bias)
    if reset_after:
        if bias.shape != (2, 3 * H):
            raise ValueError(f"bias: expected shape (2, {3 * H}) for reset_after=True, got {bias.shape}")
        return W_ih, W_hh, swap_rz(bias[0]), swap_rz(bias[1])
    if bias.shape != (3 * H,):
        raise ValueError(f"bias: expected shape ({3 * H},) for reset_after=False, got {bias.shape}")
    return W_ih, W_hh, swap_rz(bias), np.zeros(3 * H, bias.dtype)


def to_keras_weights(W_ih, W_hh, b_ih=None, b_hh=None, reset_after=True):
    """numgru arrays -> [kernel, recurrent_kernel(, bias)] as Keras stores them."""
    out = [swap_rz(W_ih, 0).T.copy(), swap_rz(W_hh, 0).T.copy()]
    if b_ih is not None:
        if reset_after:
            out.append(np.stack([swap_rz(b_ih), swap_rz(b_hh)]))
        else:
            if np.any(np.asarray(b_hh) != 0):
                raise ValueError("b_hh: Keras reset_after=False has no recurrent bias; fold it first")
            out.append(swap_rz(b_ih))
    return out


# ------------------------------------------------------------------------------------------ ONNX
def to_onnx_weights(directions):
    """[(W_ih, W_hh, b_ih, b_hh), ...] per direction (numgru order) -> ONNX W, R, B."""
    W = np.stack([swap_rz(d[0], 0) for d in directions])
    R = np.stack([swap_rz(d[1], 0) for d in directions])
    B = np.stack([np.concatenate([swap_rz(d[2]), swap_rz(d[3])]) for d in directions])
    return W, R, B


def from_onnx_weights(W, R, B=None):
    """ONNX W (D, 3H, I), R (D, 3H, H), B (D, 6H) or None -> per direction (W_ih, W_hh, b_ih, b_hh)."""
    W, R = np.asarray(W), np.asarray(R)
    D, H3, _ = W.shape
    H = H3 // 3
    out = []
    for d in range(D):
        if B is None:
            b_ih = b_hh = np.zeros(3 * H, W.dtype)
        else:
            b_ih, b_hh = np.asarray(B)[d, :3 * H], np.asarray(B)[d, 3 * H:]
        out.append((swap_rz(W[d], 0), swap_rz(R[d], 0), swap_rz(b_ih), swap_rz(b_hh)))
    return out
