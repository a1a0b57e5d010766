"""One GRU step for a batch, input projection included: the kernel behind GRUCell and streams.

Everything is preallocated by the caller, so a step from Python costs one kernel call per layer.
"""
import numpy as np
from numba import types
from numba.extending import overload

from ._jit import FASTMATH, kernel
from .activations import clip_pre, gate, tanh_fast
from .bf16 import wget
from .forward import small_rows_matmul, tiled_matmul


def step_matmul(W, x, out, n, small):
    """out[:n] = x[:n] @ W.T: the register-blocked matmul when ``small``, else BLAS. bfloat16 weights
    (``uint16``), which BLAS cannot read, always take the Numba matmul, in tiles."""
    if small:
        small_rows_matmul.py_func(W, x, out, n)
    else:
        np.dot(x, W.T, out)


@overload(step_matmul, jit_options={"fastmath": set(FASTMATH)})
def _ol_step_matmul(W, x, out, n, small):
    if isinstance(W, types.Array) and W.dtype == types.uint16:
        return lambda W, x, out, n, small: tiled_matmul(W, x, out, n)

    def impl(W, x, out, n, small):
        if small:
            small_rows_matmul(W, x, out, n)
        else:
            np.dot(x, W.T, out)
    return impl


@kernel
def gru_step(x, h, W_ih, W_hh, b_ih, b_hh, reset_after, gate_kind, alpha, beta, use_clip, clip,
             h_out, gi, gh):
    """h_out = GRU(x, h) for one step.

    x (B, I), h (B, H) in; W_ih (3H, I), W_hh (3H, H), b_ih (3H,), b_hh (3H,) in (zeros without bias);
    the weights may be bfloat16 (``uint16``, see :mod:`numgru.kernels.bf16`);
    h_out (B, H) out (must not alias h); gi (B, 3H), gh (B, 3H) workspace, the caller must not read them.
    Scalars as in :func:`numgru.kernels.forward._gru_forward`.
    """
    B = x.shape[0]
    H = h.shape[1]
    H2 = 2 * H
    # register-blocked Numba while both weight matrices fit L2 (measured at B = 1, H = I = 128:
    # 4.3 µs for both products against 5.5 µs in BLAS; at H = 256 they come from L3 and BLAS is level)
    small = B <= 16 and W_ih.size + W_hh.size <= 1 << 17
    step_matmul(W_ih, x, gi, B, small)
    if reset_after:
        step_matmul(W_hh, h, gh, B, small)
        for b in range(B):
            gib = gi[b]
            ghb = gh[b]
            hb = h[b]
            ob = h_out[b]
            for j in range(H):
                r = gate(clip_pre(gib[j] + b_ih[j] + ghb[j] + b_hh[j], use_clip, clip), gate_kind, alpha, beta)
                z = gate(clip_pre(gib[H + j] + b_ih[H + j] + ghb[H + j] + b_hh[H + j], use_clip, clip),
                         gate_kind, alpha, beta)
                n = tanh_fast(clip_pre(gib[H2 + j] + b_ih[H2 + j] + r * (ghb[H2 + j] + b_hh[H2 + j]),
                                       use_clip, clip))
                ob[j] = n + z * (hb[j] - n)
        return
    for b in range(B):
        hb = h[b]
        ghb = gh[b]
        # reset_after=False needs r before W_hn (r ⊙ h): row-wise dot products (reassoc vectorises them)
        for j in range(H2):
            s = b_hh[j]
            wj = W_hh[j]
            for k in range(H):
                s += wget(wj, k) * hb[k]
            ghb[j] = s
        gib = gi[b]
        for j in range(H):
            r = gate(clip_pre(gib[j] + b_ih[j] + ghb[j], use_clip, clip), gate_kind, alpha, beta)
            z = gate(clip_pre(gib[H + j] + b_ih[H + j] + ghb[H + j], use_clip, clip), gate_kind, alpha, beta)
            ghb[j] = r * hb[j]
            ghb[H + j] = z
        for j in range(H):
            s = b_hh[H2 + j]
            wj = W_hh[H2 + j]
            for k in range(H):
                s += wget(wj, k) * ghb[k]
            ghb[H2 + j] = s
        ob = h_out[b]
        for j in range(H):
            n = tanh_fast(clip_pre(gib[H2 + j] + b_ih[H2 + j] + ghb[H2 + j], use_clip, clip))
            ob[j] = n + ghb[H + j] * (hb[j] - n)
