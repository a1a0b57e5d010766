"""One GRU step for a batch, input projection included: the kernels behind GRUCell and streams.

:func:`gru_step` runs serially, its products by the forward's matmul routes; :func:`gru_step_cols`
splits a step (reset_after=True) over blocks of hidden units on Numba's threads, chosen by
:func:`numgru.kernels.dispatch.step_columns`. Everything is preallocated by the caller, so a step from
Python costs one kernel call per layer.
"""
import numpy as np
from numba import prange
from numba.extending import overload

from ._jit import FASTMATH, device, inline, kernel, parallel_kernel, unwrapped, wide_vectors
from .activations import clip_pre, gate, one_like, sigmoid_fast, tanh_fast
from .bf16 import is_bfloat16_array, wget
from .dotblock import dot_rows
from .forward import (_chunk_after, block_rows, one_row_dot, product_blocks, recurrent_matmul,
                      small_rows_matmul, tiled_matmul, tiled_product)
from .panel import pack_panels, panel_matmul


#: most values of one weight matrix that a one-row step multiplies by the dot-product block rather
#: than BLAS's GEMV (3·256² values, 768 KB in float32): paired ``stream.step``, one thread, B = 1,
#: H = I = 160 / 192 / 256 1.22× / 1.22–1.30× / 1.11–1.33× (W_ih and W_hh in L2, read at the block's
#: rate); H = 320 / 384 / 512 0.98× / 0.98× / 1.00× (from L3 either way); below, at H ≤ 128,
#: ``small_rows_matmul`` stays (the block 0.91–1.01×)
#: (on Zen 4 the block takes larger weights too, :func:`~numgru.kernels.forward.one_row_dot`:
#: ``stream.step`` one thread, B = 1, H = 768 / 1024 198–202 / 577–652 µs against 209–223 / 955–1085
#: by BLAS pinned to one thread)
STEP_DOT_MAX_VALUES = 3 * 256 * 256
#: fewest bytes of weights (W_ih's and W_hh's, as read) for which a reset_after step run ``backwards``
#: takes W_hh's product before W_ih's (:func:`gru_step`): paired ``stream.step``, one thread, B = 1,
#: against one order on every step: float32 H = 256 (1.5 MB) 1.06× (GRUCell 1.21×); bfloat16 panels
#: at H = 256 (0.75 MB, well inside L2) 0.975×
STEP_SWAP_MIN_BYTES = 1 << 20
#: most rows of a step whose products over unpacked float weights beyond L2 run by blocks, as the
#: forward's steps do (:func:`~numgru.kernels.forward.block_rows`); more rows take one sweep. A step
#: reads W_ih and W_hh, so the blocks the step before left in L2 are a smaller share of what it reads
#: than in a time loop over W_hh alone, and at 8 or 16 rows the blocks cost more than that saves:
#: paired ``stream.step``, one thread, one sweep against blocks, µs, four runs in two orders: B = 8,
#: H = 1024 1099–1107 against 1167–1200; B = 16, H = 1024 1761–1806 against 1825–1988; B = 16, H = 768
#: 964–985 against 1054–1122; B = 16, H = 512 426–437 against 455–469; reset_after=False B = 16,
#: H = 1024 1743–1782 against 1913–1938; B = 4, H = 1024 level (890–905). Packed panels (a frozen
#: or quantized model's) keep the forward's rule: at 8 and 16 rows they ran level either way.
STEP_BLOCK_MAX_ROWS = 4


def step_matmul(W, Wp, x, out, buf, n, small, tiled_max, backwards):
    """out[:n] = x[:n] @ W.T. With packed panels ``Wp`` of W (from :func:`step_panels`; an empty
    (0, 0, 0) array otherwise) the panel product. Else one row: the register-blocked matmul when
    ``small``, the dot-product block (:func:`~numgru.kernels.dotblock.dot_rows`) up to
    :data:`STEP_DOT_MAX_VALUES` weights (beyond, where :func:`~numgru.kernels.forward.one_row_dot`),
    else BLAS; several rows:
    :func:`~numgru.kernels.forward.recurrent_matmul`, as the forward's steps (``buf``: at least M·n
    values; ``tiled_max`` as there). bfloat16 weights (``uint16``) without panels, which BLAS cannot
    read, take the Numba matmul, in tiles. Weights beyond L2 in blocks of rows, last first when
    ``backwards``, as :func:`~numgru.kernels.forward.step_product` runs them (on unpacked float
    weights only up to :data:`STEP_BLOCK_MAX_ROWS` rows); the dot-product block's rows too."""
    if Wp.shape[0] > 0:
        panel_matmul.py_func(x, Wp, out, n)
    elif n == 1 and small:
        small_rows_matmul.py_func(W, x, out, n)
    elif n == 1 and (W.shape[0] * W.shape[1] <= STEP_DOT_MAX_VALUES or
                     one_row_dot.py_func(W.shape[1], tiled_max)):
        dot_rows.py_func(x, W, out, 1, backwards)
    elif n == 1:
        np.dot(x, W.T, out)
    else:
        recurrent_matmul.py_func(W, x, out, buf, n, tiled_max)


@overload(step_matmul, jit_options={"fastmath": set(FASTMATH)})
def _ol_step_matmul(W, Wp, x, out, buf, n, small, tiled_max, backwards):
    # one sweep takes the routes inline, on the arrays as they are (a small step's time showed the
    # views and the call of the blocked path: 0.2 µs of 4 at H = 64); weights beyond L2 go by blocks,
    # as the forward's steps (past 1.5 MB the one-row routes are a GEMV either way)
    if is_bfloat16_array(W):
        def impl_bf16(W, Wp, x, out, buf, n, small, tiled_max, backwards):
            if block_rows(W, Wp, Wp.shape[0] > 0, n, tiled_max) < W.shape[0]:
                product_blocks(W, Wp, x, out, buf, n, tiled_max, backwards, Wp.shape[0] > 0)
            elif Wp.shape[0] > 0:
                panel_matmul(x, Wp, out, n)
            else:
                tiled_product(W, x, out, n)
        return impl_bf16

    def impl(W, Wp, x, out, buf, n, small, tiled_max, backwards):
        if (Wp.shape[0] > 0 or n <= STEP_BLOCK_MAX_ROWS) and \
                block_rows(W, Wp, Wp.shape[0] > 0, n, tiled_max) < W.shape[0]:
            product_blocks(W, Wp, x, out, buf, n, tiled_max, backwards, Wp.shape[0] > 0)
        elif Wp.shape[0] > 0:
            panel_matmul(x, Wp, out, n)
        elif n == 1 and small:
            small_rows_matmul(W, x, out, n)
        elif n == 1 and (W.shape[0] * W.shape[1] <= STEP_DOT_MAX_VALUES or one_row_dot(W.shape[1], tiled_max)):
            dot_rows(x, W, out, 1, backwards)
        elif n == 1:
            np.dot(x, W.T, out)
        else:
            # several rows: BLAS's x @ W.T ran 1.6-6x slower than the forward's routes (one thread,
            # per product: B = 4 / 16, H = 256: 74 / 117 µs against 20 / 72 µs in tiles)
            recurrent_matmul(W, x, out, buf, n, tiled_max)
    return impl


@kernel
def step_panels(W_ih, W_hh, reset_after):
    """The packed panels (:func:`~numgru.kernels.panel.pack_panels`) :func:`gru_step` reads for weights
    that never change (a quantized model's bfloat16 copies): ``(Wp_ih, Wp_a, Wp_b)`` with Wp_a the
    panels of W_hh and Wp_b empty (reset_after), or of W_hh's r, z rows and of its n rows."""
    wide_vectors()
    H = W_hh.shape[1]
    if reset_after:
        return pack_panels(W_ih), pack_panels(W_hh), np.empty((0, 0, 0), W_hh.dtype)
    return pack_panels(W_ih), pack_panels(W_hh[:2 * H]), pack_panels(W_hh[2 * H:])


@device
def step_gates_after(gi, gh, b_ih, b_hh, h, h_out, B):
    """The gates of a reset_after step with sigmoid gates and no clip: gi (B, 3H) = x W_ih.T and gh
    (B, 3H) = h W_hh.T, without biases; h_out (B, H) receives the new state. Called, not inlined,
    as the forward's :func:`~numgru.kernels.forward.rows_after_fast`."""
    wide_vectors()
    H = h.shape[1]
    H2 = 2 * H
    for b in range(B):
        for j in range(H):
            r = sigmoid_fast(gi[b, j] + b_ih[j] + gh[b, j] + b_hh[j])
            z = sigmoid_fast(gi[b, H + j] + b_ih[H + j] + gh[b, H + j] + b_hh[H + j])
            n = tanh_fast(gi[b, H2 + j] + b_ih[H2 + j] + r * (gh[b, H2 + j] + b_hh[H2 + j]))
            h_out[b, j] = n + z * (h[b, j] - n)


@device
def step_gates_rz(gi, a_rz, b_ih, b_hh, h, gh, rh, B):
    """The first gates of a reset_after=False step with sigmoid gates and no clip: z to gh[:, H:2H]
    and r ⊙ h to rh, from gi (B, 3H) = x W_ih.T and a_rz (B, 2H) = h W_hh[:2H].T, without biases.
    Called, not inlined, as :func:`step_gates_after`."""
    wide_vectors()
    H = h.shape[1]
    for b in range(B):
        for j in range(H):
            gh[b, unwrapped(H + j)] = sigmoid_fast(gi[b, H + j] + b_ih[H + j] + a_rz[b, H + j] + b_hh[H + j])
        for j in range(H):
            rh[b, j] = sigmoid_fast(gi[b, j] + b_ih[j] + a_rz[b, j] + b_hh[j]) * h[b, j]


@device
def step_gates_n(gi, a_n, b_ih, b_hh, h, gh, h_out, B):
    """The rest of :func:`step_gates_rz`'s step: n from a_n (B, H) = (r ⊙ h) W_hh[2H:].T and the new
    state to h_out."""
    wide_vectors()
    H = h.shape[1]
    H2 = 2 * H
    for b in range(B):
        for j in range(H):
            n = tanh_fast(gi[b, H2 + j] + b_ih[H2 + j] + a_n[b, j] + b_hh[H2 + j])
            h_out[b, j] = n + gh[b, H + j] * (h[b, j] - n)


@kernel
def gru_step(x, h, W_ih, W_hh, b_ih, b_hh, panels, reset_after, gate_kind, alpha, beta, use_clip, clip,
             h_out, gi, gh, tiled_max, backwards):
    """h_out = GRU(x, h) for one step.

    x (B, I), h (B, H) in; W_ih (3H, I), W_hh (3H, H), b_ih (3H,), b_hh (3H,) in (zeros without bias);
    the weights may be bfloat16 (``uint16``, see :mod:`numgru.kernels.bf16`). ``panels``: three arrays
    of the weights' dtype, from :func:`step_panels` (the products then run on them), or three empty
    (0, 0, 0) arrays (the products by :func:`step_matmul`);
    h_out (B, H) out (must not alias h); gi (B, 3H), gh (B, 3H) workspace, the caller must not read them
    (or two arrays of fewer rows, (0, 0) say: the kernel then allocates its own, cheaper than NumPy
    does from Python for a one-off call).
    Scalars as in :func:`numgru.kernels.forward._gru_forward`; ``tiled_max`` as in
    :func:`~numgru.kernels.forward.recurrent_matmul` (the caller passes
    :func:`~numgru.kernels.dispatch.serial_tiled_max` of the thread count), read only when B > 1.
    ``backwards``: run the products' blocks of weights beyond L2 last first, and with reset_after
    W_hh's before W_ih's; a caller stepping a sequence passes it every other step, so that each
    step starts on the weights the step before read last, still in L2
    (:func:`~numgru.kernels.forward.step_product`).
    """
    wide_vectors()
    B = x.shape[0]
    H = h.shape[1]
    H2 = 2 * H
    if gi.shape[0] < B:
        gi = np.empty((B, 3 * H), x.dtype)
        gh = np.empty((B, 3 * H), x.dtype)
    # one row: register-blocked Numba loops for small weights (measured at H = I = 128: 4.3 µs for
    # both products against 5.5 µs in BLAS), the dot-product block up to STEP_DOT_MAX_VALUES each
    small = W_ih.size + W_hh.size <= 1 << 17
    buf = np.empty(W_ih.shape[0] * B, x.dtype) if B > 1 else gi[0, :0]  # (rows_matmul_T reads it)
    Wp_ih, Wp_a, Wp_b = panels
    if reset_after:
        # the two products are independent: W_ih's first, or W_hh's when backwards and together they
        # take more than STEP_SWAP_MIN_BYTES
        read = (Wp_ih.size * Wp_ih.itemsize if Wp_ih.shape[0] > 0 else W_ih.size * W_ih.itemsize) + \
            (Wp_a.size * Wp_a.itemsize if Wp_a.shape[0] > 0 else W_hh.size * W_hh.itemsize)
        swap = backwards and read > STEP_SWAP_MIN_BYTES
        for q in range(2):
            if (q == 0) != swap:
                step_matmul(W_ih, Wp_ih, x, gi, buf, B, small, tiled_max, backwards)
            else:
                step_matmul(W_hh, Wp_a, h, gh, buf, B, small, tiled_max, backwards)
        if gate_kind == 0 and not use_clip:
            step_gates_after(gi, gh, b_ih, b_hh, h, h_out, B)
            return
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
    # reset_after=False needs r before W_hn (r ⊙ h): the r, z products, then the n ones on r ⊙ h
    step_matmul(W_ih, Wp_ih, x, gi, buf, B, small, tiled_max, backwards)
    a_rz = np.empty((B, H2), x.dtype)
    rh = np.empty((B, H), x.dtype)
    a_n = np.empty((B, H), x.dtype)
    _reset_before_products(W_hh[:H2], Wp_a, h, a_rz, buf, B, small, tiled_max, backwards)
    if gate_kind == 0 and not use_clip:
        step_gates_rz(gi, a_rz, b_ih, b_hh, h, gh, rh, B)
        _reset_before_products(W_hh[H2:], Wp_b, rh, a_n, buf, B, small, tiled_max, backwards)
        step_gates_n(gi, a_n, b_ih, b_hh, h, gh, h_out, B)
        return
    for b in range(B):
        gib = gi[b]
        ab = a_rz[b]
        hb = h[b]
        ghb = gh[b]
        rhb = rh[b]
        for j in range(H):
            r = gate(clip_pre(gib[j] + b_ih[j] + ab[j] + b_hh[j], use_clip, clip), gate_kind, alpha, beta)
            ghb[H + j] = gate(clip_pre(gib[H + j] + b_ih[H + j] + ab[H + j] + b_hh[H + j], use_clip, clip),
                              gate_kind, alpha, beta)
            rhb[j] = r * hb[j]
    _reset_before_products(W_hh[H2:], Wp_b, rh, a_n, buf, B, small, tiled_max, backwards)
    for b in range(B):
        gib = gi[b]
        ghb = gh[b]
        anb = a_n[b]
        hb = h[b]
        ob = h_out[b]
        for j in range(H):
            n = tanh_fast(clip_pre(gib[H2 + j] + b_ih[H2 + j] + anb[j] + b_hh[H2 + j], use_clip, clip))
            ob[j] = n + ghb[H + j] * (hb[j] - n)


@inline
def _reset_before_products(W, Wp, x, out, buf, n, small, tiled_max, backwards):
    """out[:n] = x[:n] @ W.T for the reset_after=False step: on packed panels Wp, or several rows by
    :func:`step_matmul` (one dot product per row and unit had taken 1 thread, B = 4 / 16, H = 256: 76 /
    298 µs a step), one row by dot products over W's rows, which reassoc vectorises (the matmul path
    read slower at H = 1024)."""
    if Wp.shape[0] > 0 or n > 1:
        step_matmul(W, Wp, x, out, buf, n, small, tiled_max, backwards)
        return
    x0 = x[0]
    o = out[0]
    zero = one_like(x0[0]) - one_like(x0[0])
    for j in range(W.shape[0]):
        s = zero
        wj = W[j]
        for k in range(W.shape[1]):
            s += wget(wj, k) * x0[k]
        o[j] = s


@inline
def _block_products(x, h, W_ih, W_hh, gi, a, j0, m, H, B, n_hh):
    """A split step's products for the block of units j0 … j0+m−1: gi[:, g·H + j0 + u] = x · W_ih's row
    for the three gates, a[g, :, u] = h · W_hh's row for the first ``n_hh`` gates; several rows by the
    dot-product block, one by the tiled matmul."""
    for g in range(3):
        r0 = g * H + j0
        if B > 1:
            dot_rows(x, W_ih[r0:r0 + m], gi[:, r0:r0 + m], B)
            if g < n_hh:
                dot_rows(h, W_hh[r0:r0 + m], a[g, :, :m], B)
        else:
            tiled_matmul(W_ih[r0:r0 + m], x, gi[:, r0:r0 + m], B)
            if g < n_hh:
                tiled_matmul(W_hh[r0:r0 + m], h, a[g, :, :m], B)


@inline
def _add_block_bias(gib, b_ih, j0, m, H):
    """b_ih added to one row's three gates of the block's units in gib (3H)."""
    for g in range(3):
        r0 = g * H + j0
        gs = gib[r0:r0 + m]  # slices: an index r0 + jj is checked for wraparound, not vectorised
        bs = b_ih[r0:r0 + m]
        for jj in range(m):
            gs[jj] += bs[jj]


@parallel_kernel
def gru_step_cols(x, h, W_ih, W_hh, b_ih, b_hh, gate_kind, alpha, beta, use_clip, clip, h_out, gi, acc):
    """:func:`gru_step` with reset_after=True, split over blocks of hidden units on Numba's threads.

    Same arguments as :func:`gru_step` (no reset_after, no tiled_max) but the workspace: gi (B, 3H) and
    acc (nc, 3, B, cs) for nc blocks of cs units (cs a multiple of 16, nc·cs ≥ H; see
    :func:`~numgru.kernels.dispatch.step_columns_workspace`). Block c multiplies its own rows of W_ih and W_hh
    (those of its units in the r, z and n blocks), then runs those units' gates: a unit needs only its
    own three pre-activations, so the blocks never wait on each other, and each thread keeps re-reading
    the same slice of the weights, which stays in its core's cache from step to step (the forward's
    columns route, :func:`~numgru.kernels.forward._gru_forward_cols`, splits its steps the same way).
    A block multiplies several rows by its slices of W in the dot-product block
    (:func:`~numgru.kernels.dotblock.dot_rows`, float or bfloat16 weights), one row in the tiled
    matmul. The dot-product block against the tiled matmul for several rows (2-vCPU Intel machine,
    two threads, ``stream.step``, two runs each, µs): float32 B = 2 / 16, H = 256 12.2–12.5 /
    49.8–51.4 against 14.9–15.2 / 64.1–65.6; B = 16, H = 512 234–237 against 293–295; B = 2 / 16,
    H = 1024 474–476 / 888–922 against 555–560 / 1068–1116; B = 4 at H = 512 and 1024 level; a
    quantized model's bfloat16 weights B = 2 / 4 / 16, H = 512 45–47 / 63–64 / 216 against 78–80 /
    91–92 / 325–328; H = 1024 262–270 / 302–305 / 895–921 against 406–413 / 394–400 / 1279–1298.
    """
    wide_vectors()
    B = x.shape[0]
    H = h.shape[1]
    nc = acc.shape[0]
    cs = acc.shape[3]
    for c in prange(nc):
        wide_vectors()
        j0 = c * cs
        m = min(cs, H - j0)
        a = acc[c]
        _block_products(x, h, W_ih, W_hh, gi, a, j0, m, H, B, 3)  # this block's rows of W_r, W_z, W_n
        for b in range(B):
            gib = gi[b]
            _add_block_bias(gib, b_ih, j0, m, H)
            ob = h_out[b]
            _chunk_after(gib, a[0, b], a[1, b], a[2, b], b_hh, h[b], ob, j0, m, H, gate_kind, alpha, beta,
                         use_clip, clip)


@parallel_kernel
def gru_step_cols_before(x, h, W_ih, W_hh, b_ih, b_hh, gate_kind, alpha, beta, use_clip, clip, h_out, gi,
                         acc):
    """:func:`gru_step` with reset_after=False, split over blocks of hidden units on Numba's threads in
    two parallel regions: n needs W_hn (r ⊙ h) over all units, so first each block projects x on its
    units' rows of W_ih, multiplies h by its rows of W_hr and W_hz and writes its units of z and
    r ⊙ h; then each multiplies r ⊙ h by its rows of W_hn and writes its units' new state. Same
    arguments and workspace as :func:`gru_step_cols` (acc's three gate slots hold W_hr h, then z in
    place of W_hz h, and W_hn (r ⊙ h)); float or bfloat16 weights."""
    wide_vectors()
    B = x.shape[0]
    H = h.shape[1]
    H2 = 2 * H
    nc = acc.shape[0]
    cs = acc.shape[3]
    rh = np.empty((B, H), h.dtype)
    for c in prange(nc):
        wide_vectors()
        j0 = c * cs
        m = min(cs, H - j0)
        a = acc[c]
        _block_products(x, h, W_ih, W_hh, gi, a, j0, m, H, B, 2)  # W_ir, W_iz, W_in; W_hr and W_hz
        for b in range(B):
            gib = gi[b]
            _add_block_bias(gib, b_ih, j0, m, H)
            g_r = gib[j0:j0 + m]
            g_z = gib[H + j0:H + j0 + m]
            b_r = b_hh[j0:j0 + m]
            b_z = b_hh[H + j0:H + j0 + m]
            ar = a[0, b, :m]
            az = a[1, b, :m]
            hs = h[b, j0:j0 + m]
            rhs = rh[b, j0:j0 + m]
            for jj in range(m):
                az[jj] = gate(clip_pre(g_z[jj] + az[jj] + b_z[jj], use_clip, clip), gate_kind, alpha, beta)
                rhs[jj] = gate(clip_pre(g_r[jj] + ar[jj] + b_r[jj], use_clip, clip), gate_kind, alpha,
                               beta) * hs[jj]
    for c in prange(nc):
        wide_vectors()
        j0 = c * cs
        m = min(cs, H - j0)
        a = acc[c]
        r0 = H2 + j0
        if B > 1:
            dot_rows(rh, W_hh[r0:r0 + m], a[2, :, :m], B)
        else:
            tiled_matmul(W_hh[r0:r0 + m], rh, a[2, :, :m], B)
        for b in range(B):
            g_n = gi[b, r0:r0 + m]
            b_n = b_hh[r0:r0 + m]
            an = a[2, b, :m]
            zs = a[1, b, :m]
            hs = h[b, j0:j0 + m]
            ob = h_out[b, j0:j0 + m]
            for jj in range(m):
                n = tanh_fast(clip_pre(g_n[jj] + (an[jj] + b_n[jj]), use_clip, clip))
                ob[jj] = n + zs[jj] * (hs[jj] - n)
