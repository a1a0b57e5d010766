"""The one-row recurrence on W_hh's integer digits by AVX512-VNNI (numgru.kernels.vnni): the row sums
of the digit planes, the exact int32 sums where the instruction's sums wrap, the forward kernel
against the numpy reference (padding of both sides of W, reverse, a column offset, odd and even step
counts), the layer's route (plain, bidirectional, no bias, frozen), its fall-back to float32 where
the digits refuse a state or a weight, and the dispatch's rule. Skipped where the CPU has no VNNI."""
import numba
import numpy as np
import pytest

import numgru as ng
from numgru.kernels import dispatch, vnni
from numgru.kernels.amx import DIGIT_SCALE, _digits_into, pack_digits, padded, padded64

from conftest import check_frozen_route
from reference import cell as ref_cell
from reference import gru as ref_gru

needs_vnni = pytest.mark.skipif(not vnni.vnni_ready(), reason="no AVX512-VNNI on this CPU")


def _planes(Wv, N, K):
    """W's digits (3, N, K) int64 decoded from pack_digits' layout, and the rows' scales."""
    Np, Kq = padded(N), padded64(K)
    b = Wv[:3 * Np * Kq // 2].view(np.int8).reshape(3, Np // 16, Kq // 4, 16, 4)
    d = b.transpose(0, 1, 3, 2, 4).reshape(3, Np, Kq)[:, :N, :K].astype(np.int64)
    return d, Wv[3 * Np * Kq // 2:].view(np.float32)[:N]


@numba.njit(cache=False)
def _state_digits(h, D):
    return _digits_into(h, h.shape[0], D[0], D[1], D[2], False, np.float32(0.0))


@numba.njit(cache=False)
def _product(h, Wv, R, N, out):
    Kq = padded64(padded(h.shape[0]))
    D = np.zeros((3, Kq), np.int8)
    u = np.zeros(3 * Kq // 4, np.uint32)
    S = np.empty(3 * padded(N), np.int32)
    return vnni._row_product(h, Wv, vnni._offsets(R, N), N, D, u, S, out, np.float32(0.0))


@needs_vnni
@pytest.mark.parametrize("N, K", [(48, 16), (120, 40), (300, 100), (768, 256)])
def test_row_sums_are_the_digit_planes_sums(N, K):
    W = np.random.default_rng(N).standard_normal((N, K)).astype(np.float32)
    Wv = pack_digits(W)
    R = np.full(3 * padded(N), -7, np.int32)
    vnni.digit_row_sums(Wv, N, K, R)
    d, _ = _planes(Wv, N, K)
    Np = padded(N)
    for p in range(3):
        np.testing.assert_array_equal(R[p * Np:p * Np + N], d[p].sum(axis=1))
        assert not R[p * Np + N:(p + 1) * Np].any()  # the padding rows' digits are zero
    with pytest.raises(ValueError, match="shapes"):
        vnni.digit_row_sums(Wv, N, K, R[:-1])
    with pytest.raises(ValueError, match="shapes"):
        vnni.digit_row_sums(Wv, N + 32, K, np.zeros(3 * padded(N + 32), np.int32))


def _exact(Wv, N, K, h):
    """The product as the digits define it: the six sums in int64 from the decoded digits, each
    rounded once to float32 (amx._combine_digits), and the largest sum the instruction wrapped."""
    d, sw = _planes(Wv, N, K)
    e = np.zeros((3, padded64(padded(K))), np.int8)
    sa = _state_digits(h, e)
    e = e[:, :K].astype(np.int64)
    s0 = d[0] @ e[0]
    s1 = d[0] @ e[1] + d[1] @ e[0]
    s2 = d[0] @ e[2] + d[1] @ e[1] + d[2] @ e[0]
    v = (s0 << 16) + (s1 << 8) + s2
    wrapped = d[0] @ (e[2] + 128) + d[1] @ (e[1] + 128) + d[2] @ (e[0] + 128)
    return v.astype(np.float32) * sw * np.float32(sa), np.abs(wrapped).max(), (s0, s1, s2)


@needs_vnni
def test_sums_exact_where_the_instruction_wraps():
    """Rows of 32768 values (DIGIT_MAX_K) whose digits are all large and of one sign, by a state of the
    same kind: the last sum with the state's offset digits passes 2³¹ (the instruction wraps it), the
    true sums fit int32, and the product equals the digits' exact one to the bit."""
    N, K = 16, 32768
    W = np.full((N, K), np.float32(8290175.0 / float(DIGIT_SCALE)), np.float32)
    W[:, 0] = 1.0
    W[1::2] *= -1
    h = np.full(K, np.float32(8290175.0 / 2.0 ** 23), np.float32)
    h[0] = np.float32(0.99)
    Wv = pack_digits(W)
    R = np.empty(3 * padded(N), np.int32)
    vnni.digit_row_sums(Wv, N, K, R)
    out = np.empty(N, np.float32)
    assert _product(h, Wv, R, N, out)
    want, wrapped, sums = _exact(Wv, N, K, h)
    assert wrapped > 2 ** 31 and all(np.abs(s).max() < 2 ** 31 for s in sums)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(out, W.astype(np.float64) @ h.astype(np.float64), rtol=1e-6)


@needs_vnni
@pytest.mark.parametrize("N, K", [(96, 40), (120, 40), (300, 100), (1056, 256), (1536, 512)])
def test_product_is_the_digits_exact_product(N, K):
    rng = np.random.default_rng(K)
    W = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    h = np.tanh(rng.standard_normal(K)).astype(np.float32)
    Wv = pack_digits(W)
    R = np.empty(3 * padded(N), np.int32)
    vnni.digit_row_sums(Wv, N, K, R)
    out = np.empty(N, np.float32)
    assert _product(h, Wv, R, N, out)
    np.testing.assert_array_equal(out, _exact(Wv, N, K, h)[0])
    np.testing.assert_allclose(out, W.astype(np.float64) @ h.astype(np.float64), atol=2e-6)
    h[3] = np.nan
    assert not _product(h, Wv, R, N, out)
    h[3] = np.inf
    assert not _product(h, Wv, R, N, out)


def _direction(H, T):
    rng = np.random.default_rng(H + T)
    G = 3 * H
    W = (rng.uniform(-1, 1, (G, H)) / np.sqrt(H)).astype(np.float32)
    b = rng.uniform(-0.3, 0.3, G).astype(np.float32)
    gx = rng.standard_normal((T, 1, G)).astype(np.float32)
    h0 = np.tanh(rng.standard_normal((1, H))).astype(np.float32)
    return W, b, gx, h0


def _numpy_direction(W, b, gx, h0, reverse):
    """The reset_after recurrence in float64 from its equations."""
    H = h0.shape[1]
    h = h0[0].astype(np.float64)
    ys = np.empty((gx.shape[0], H))
    order = range(gx.shape[0] - 1, -1, -1) if reverse else range(gx.shape[0])
    for t in order:
        a = W.astype(np.float64) @ h + b
        g = gx[t, 0].astype(np.float64)
        r = 1 / (1 + np.exp(-(g[:H] + a[:H])))
        z = 1 / (1 + np.exp(-(g[H:2 * H] + a[H:2 * H])))
        n = np.tanh(g[2 * H:] + r * a[2 * H:])
        h = n + z * (h - n)
        ys[t] = h
    return ys, h


def _numpy_direction_before(W, b, gx, h0, reverse):
    """The reset_after=False recurrence in float64 from its equations."""
    H = h0.shape[1]
    W = W.astype(np.float64)
    h = h0[0].astype(np.float64)
    ys = np.empty((gx.shape[0], H))
    order = range(gx.shape[0] - 1, -1, -1) if reverse else range(gx.shape[0])
    for t in order:
        g = gx[t, 0].astype(np.float64)
        a = W[:2 * H] @ h + b[:2 * H]
        r = 1 / (1 + np.exp(-(g[:H] + a[:H])))
        z = 1 / (1 + np.exp(-(g[H:2 * H] + a[H:])))
        n = np.tanh(g[2 * H:] + W[2 * H:] @ (r * h) + b[2 * H:])
        h = n + z * (h - n)
        ys[t] = h
    return ys, h


_KERNELS = {True: (vnni.gru_forward_vnni, _numpy_direction),
            False: (vnni.gru_forward_vnni_before, _numpy_direction_before)}


@needs_vnni
@pytest.mark.parametrize("reset_after, H, T, reverse, col0, D", [
    (ra, *case) for ra, odd in ((True, 100), (False, 104))  # reset_before's H: a multiple of 8
    for case in ((40, 5, False, 0, 1), (40, 6, True, 40, 2), (odd, 7, False, odd, 2), (512, 4, True, 0, 1))])
def test_forward_kernel_matches_numpy(reset_after, H, T, reverse, col0, D):
    kernel, reference = _KERNELS[reset_after]
    W, b, gx, h0 = _direction(H, T)
    Wv = pack_digits(W)
    R = np.empty(3 * padded(3 * H), np.int32)
    vnni.digit_row_sums(Wv, 3 * H, H, R)
    y = np.full((T, 1, D * H), 5.0, np.float32)
    h_n = np.empty((1, H), np.float32)
    assert kernel(gx, Wv, R, b, h0, reverse, y, col0, h_n)
    ys, hn = reference(W, b, gx, h0, reverse)
    np.testing.assert_allclose(y[:, 0, col0:col0 + H], ys, atol=2e-6)
    np.testing.assert_allclose(h_n[0], hn, atol=2e-6)
    assert (np.delete(y, np.s_[col0:col0 + H], axis=2) == 5.0).all()  # the other direction's columns
    with pytest.raises(ValueError, match="shapes"):
        kernel(gx, Wv, R, b, h0, reverse, y, D * H - H + 1, h_n)
    with pytest.raises(ValueError, match="shapes"):
        kernel(gx[:, :, 1:], Wv, R, b, h0, reverse, y, col0, h_n)
    with pytest.raises(ValueError, match="shapes"):
        kernel(gx, Wv[:-2], R, b, h0, reverse, y, col0, h_n)
    if not reset_after:  # H not a multiple of 8: reset_before's n rows would start mid-block
        W4, b4, gx4, h4 = _direction(44, T)
        Wv4 = pack_digits(W4)
        R4 = np.empty(3 * padded(3 * 44), np.int32)
        vnni.digit_row_sums(Wv4, 3 * 44, 44, R4)
        with pytest.raises(ValueError, match="shapes"):
            kernel(gx4, Wv4, R4, b4, h4, reverse, np.zeros((T, 1, 44), np.float32), 0,
                   np.zeros((1, 44), np.float32))


def _taken(model):
    return [p[5] is not None for p in model._plans[next(iter(model._plans))]]


@needs_vnni
def test_layer_without_reset_after_takes_the_route(one_thread, monkeypatch):
    monkeypatch.setattr(dispatch, "FUSED_MAX_HIDDEN", 0)
    H, T = 512, 64
    g = ng.GRU(9, H, num_layers=2, bidirectional=True, reset_after=False, seed=7)
    x = np.random.default_rng(4).standard_normal((T, 1, 9)).astype(np.float32)
    h0 = np.random.default_rng(5).uniform(-1, 1, (4, 1, H)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 2, H, bidirectional=True, h0=h0, reset_after=False)
    for model in (g, g.freeze()):
        y, h = model(x, h0)
        assert all(_taken(model))
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)
    x[9, 0, 1] = np.nan  # a state the digits refuse: the float32 kernels take the call
    y, _ = g(x, h0)
    assert all(_taken(g))
    monkeypatch.setattr(dispatch, "VNNI_MIN_STEPS", ())
    g2 = ng.GRU(9, H, num_layers=2, bidirectional=True, reset_after=False, seed=7)
    y2, _ = g2(x, h0)
    assert not any(_taken(g2))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y2))
    np.testing.assert_allclose(y[~np.isnan(y)], y2[~np.isnan(y2)], atol=1e-5)


@needs_vnni
@pytest.mark.parametrize("bidirectional, bias", [(False, True), (True, False)])
def test_layer_takes_the_route_and_matches_the_reference(one_thread, bidirectional, bias, monkeypatch):
    monkeypatch.setattr(dispatch, "FUSED_MAX_HIDDEN", 0)  # (the fused forward takes one row up to 768)
    H, T = 512, 64
    g = ng.GRU(9, H, num_layers=2, bidirectional=bidirectional, bias=bias, seed=3)
    x = np.random.default_rng(1).standard_normal((T, 1, 9)).astype(np.float32)
    h0 = np.random.default_rng(2).uniform(-1, 1, (2 * g.num_directions, 1, H)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 2, H, bidirectional=bidirectional, h0=h0)
    for model in (g, g.freeze()):
        y, h = model(x, h0)
        assert all(_taken(model))
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)


@needs_vnni
def test_frozen_copy_takes_the_route_from_one_step(one_thread):
    # it keeps W_hh's digits, so beyond the fused forward's hidden sizes the route runs from one
    # step, where the plain model, which packs them on every call, keeps the float32 routes
    H, T = 800, 5
    g = ng.GRU(16, H, num_layers=2, seed=6)
    x = np.random.default_rng(3).standard_normal((T, 1, 16)).astype(np.float32)
    check_frozen_route(g, x, *ref_gru(x, g.state_dict(), 2, H), _taken)


@needs_vnni
def test_layer_falls_back_where_the_digits_refuse(one_thread, monkeypatch):
    """A NaN in the input (the state turns NaN: the float32 kernels rerun the step and propagate it),
    and a weight the digits cannot scale (Inf: W_hh's packing is empty), give what the float32 route
    gives."""
    monkeypatch.setattr(dispatch, "FUSED_MAX_HIDDEN", 0)
    H, T = 512, 64
    g = ng.GRU(5, H, seed=4)
    x = np.random.default_rng(5).standard_normal((T, 1, 5)).astype(np.float32)
    x[20, 0, 2] = np.nan
    y, h = g(x)
    assert all(_taken(g))
    monkeypatch.setattr(dispatch, "VNNI_MIN_STEPS", ())
    g2 = ng.GRU(5, H, seed=4)
    y2, h2 = g2(x)
    assert not any(_taken(g2))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y2))
    assert np.isnan(y[20:]).all() and not np.isnan(y[:20]).any()
    np.testing.assert_allclose(y[:20], y2[:20], atol=1e-5)
    monkeypatch.undo()
    monkeypatch.setattr(dispatch, "FUSED_MAX_HIDDEN", 0)
    W = g.state_dict()["weight_hh_l0"]
    W[7, 3] = np.inf
    g.load_state_dict({**g.state_dict(), "weight_hh_l0": W})
    g2.load_state_dict(g.state_dict())
    x[20, 0, 2] = 0.5
    # h0 given: without it the serial kernel's first step skips W_hh (W_hh · 0), so the Inf's NaN
    # would start a step later there than on the route that multiplies by it
    h0 = np.zeros((1, 1, H), np.float32)
    ya, ha = g(x, h0)
    monkeypatch.setattr(dispatch, "VNNI_MIN_STEPS", ())
    yb, hb = g2(x, h0)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ha, hb)


def _step_operands(I, H, inputs, seed):
    rng = np.random.default_rng(seed)
    W_ih = (rng.uniform(-1, 1, (3 * H, I)) / np.sqrt(I)).astype(np.float32)
    W_hh = (rng.uniform(-1, 1, (3 * H, H)) / np.sqrt(H)).astype(np.float32)
    b_ih, b_hh = (rng.uniform(-0.3, 0.3, 3 * H).astype(np.float32) for _ in range(2))
    Vi = pack_digits(W_ih) if inputs else np.empty(0, np.uint16)
    Vh = pack_digits(W_hh)
    C = np.zeros((2, 3, 3 * H), np.int64)
    for i, (V, K) in enumerate(((Vi, I), (Vh, H))):
        if V.shape[0]:
            R = np.empty(3 * padded(3 * H), np.int32)
            vnni.digit_row_sums(V, 3 * H, K, R)
            C[i] = vnni.digit_offsets(R, 3 * H)
    x = rng.standard_normal((1, I)).astype(np.float32)
    h = np.tanh(rng.standard_normal((1, H))).astype(np.float32)
    return x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh


@needs_vnni
@pytest.mark.parametrize("I, H, inputs", [(200, 192, True), (40, 256, False), (300, 200, True)])
def test_step_kernel_matches_numpy(I, H, inputs):
    """The one-row step on the weights' digits (W_ih's in float32 where none are given), both orders
    of its products, with the caller's scratch and with its own; a NaN input gives NaN, and an input
    row of mixed scales, which the digits refuse, takes W_ih's product in float32."""
    x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh = _step_operands(I, H, inputs, I + H)
    spread = np.float32(16.0)

    def step(x, backwards=False, work=None, gi=None):
        out = np.full((1, H), 7.0, np.float32)
        gi = np.empty((1, 3 * H), np.float32) if gi is None else gi
        work = np.zeros(vnni.step_work_size.py_func(I, H), np.int32) if work is None else work
        vnni.gru_step_vnni(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, spread, out, gi, gi.copy(), work,
                           backwards)
        return out

    def want(x):
        return ref_cell(x.astype(np.float64), h.astype(np.float64), W_ih.astype(np.float64),
                        W_hh.astype(np.float64), b_ih, b_hh)

    out = step(x)
    np.testing.assert_allclose(out, want(x), atol=2e-6)
    np.testing.assert_array_equal(step(x, backwards=True), out)
    np.testing.assert_array_equal(step(x, work=np.zeros(0, np.int32), gi=np.empty((0, 0), np.float32)), out)
    mixed = np.full((1, I), 1e-3, np.float32)
    mixed[0, 0] = 5.0
    np.testing.assert_allclose(step(mixed), want(mixed), atol=2e-6)
    x[0, 3] = np.nan
    assert np.isnan(step(x)).all()
    with pytest.raises(ValueError, match="shapes"):
        step(x, work=np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="digits"):
        vnni.gru_step_vnni(x, h, W_ih, W_hh, Vi, Vh[:-2], C, b_ih, b_hh, spread, np.empty((1, H), np.float32),
                           np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), np.zeros(0, np.int32),
                           False)


@needs_vnni
@pytest.mark.parametrize("I, H, inputs", [(200, 192, True), (40, 256, False), (300, 200, True)])
def test_step_kernel_without_reset_after_matches_numpy(I, H, inputs):
    """reset_after=False's step on the digits (W_hh's n rows by r ⊙ h's digits), both orders, its
    own scratch or the caller's; NaN propagates; H off a multiple of 8 is refused."""
    x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh = _step_operands(I, H, inputs, I + H + 1)

    def step(x, backwards=False, work=None, gi=None):
        out = np.full((1, H), 7.0, np.float32)
        gi = np.empty((1, 3 * H), np.float32) if gi is None else gi
        work = np.zeros(vnni.step_work_size.py_func(I, H), np.int32) if work is None else work
        vnni.gru_step_vnni_before(x, h, W_ih, W_hh, Vi, Vh, C, b_ih, b_hh, np.float32(16.0), out, gi,
                                  gi.copy(), work, backwards)
        return out

    want = ref_cell(x.astype(np.float64), h.astype(np.float64), W_ih.astype(np.float64),
                    W_hh.astype(np.float64), b_ih, b_hh, reset_after=False)
    out = step(x)
    np.testing.assert_allclose(out, want, atol=2e-6)
    np.testing.assert_array_equal(step(x, backwards=True), out)
    np.testing.assert_array_equal(step(x, work=np.zeros(0, np.int32), gi=np.empty((0, 0), np.float32)), out)
    x[0, 3] = np.nan
    assert np.isnan(step(x)).all()
    odd = _step_operands(I, 44, inputs, 3)
    with pytest.raises(ValueError, match="shapes"):
        vnni.gru_step_vnni_before(*odd, np.float32(0.0), np.empty((1, 44), np.float32), np.empty((0, 0), np.float32),
                                  np.empty((0, 0), np.float32), np.zeros(0, np.int32), False)


@needs_vnni
def test_frozen_steps_without_reset_after_on_the_digits(one_thread):
    """From VNNI_STEP_BEFORE_MIN_HIDDEN units a frozen reset_after=False stream (two layers) and
    cell step on the digits, within float32's 1e-5 of the reference; below, the float32 step."""
    for H, on in ((dispatch.VNNI_STEP_BEFORE_MIN_HIDDEN, True), (256, False)):
        T = 5
        g = ng.GRU(24, H, num_layers=2, reset_after=False, seed=8)
        x = np.random.default_rng(6).standard_normal((T, 1, 24)).astype(np.float32)
        ry, rh = ref_gru(x, g.state_dict(), 2, H, reset_after=False)
        st = g.freeze().stream()
        assert (st._stepper._step is vnni.gru_step_vnni_before) == on
        np.testing.assert_allclose(np.stack([st.step(x[t, 0]) for t in range(T)]), ry[:, 0], atol=1e-5)
        np.testing.assert_allclose(st.state, rh, atol=1e-5)
        cell = ng.GRUCell(24, H, reset_after=False, seed=9)
        f = cell.freeze()
        h = np.zeros((1, H), np.float32)
        for t in range(T):
            want = cell(x[t], h)
            got = f(x[t], h)
            np.testing.assert_allclose(got, want, atol=1e-5)
            h = got
        assert (f._step_args(1)[5] is not None) == on


@needs_vnni
@pytest.mark.parametrize("I", [16, 200])
def test_frozen_stream_and_cell_step_on_the_digits(one_thread, I):
    """A frozen model's one-row stream (two layers) and a frozen cell step on the weights' digits
    (W_ih's too from VNNI_STEP_MIN_INPUTS inputs), every step within float32's 1e-5 of the reference;
    the plain model's keep the float32 step."""
    H, T = 256, 6
    g = ng.GRU(I, H, num_layers=2, seed=7)
    x = np.random.default_rng(4).standard_normal((T, 1, I)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 2, H)
    for m, on in ((g, False), (g.freeze(), True)):
        st = m.stream()
        assert (st._stepper._step is vnni.gru_step_vnni) == on
        np.testing.assert_allclose(np.stack([st.step(x[t, 0]) for t in range(T)]), ry[:, 0], atol=1e-5)
        np.testing.assert_allclose(st.state, rh, atol=1e-5)
    cell = ng.GRUCell(I, H)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in g.state_dict().items() if k.endswith("_l0")})
    params = {k: v.astype(np.float64) for k, v in cell.state_dict().items()}
    _check_cell_steps(cell, x, params, T, H)


def _check_cell_steps(cell, x, params, T, H):
    """The plain cell off the digits, its frozen copy on them, every step within 1e-5 of the
    reference."""
    for c, on in ((cell, False), (cell.freeze(), True)):
        h = np.zeros((1, H), np.float32)
        want = np.zeros((1, H))
        for t in range(T):
            h = c(x[t], h)
            want = ref_cell(x[t].astype(np.float64), want, params["weight_ih"], params["weight_hh"],
                            params["bias_ih"], params["bias_hh"])
            np.testing.assert_allclose(h, want, atol=1e-5)
        assert (c._step_args(1)[5] is not None) == on


@needs_vnni
@pytest.mark.parametrize("I", [16, 200])
def test_frozen_steps_split_over_units_on_two_threads(two_threads, I):
    """On two threads a frozen model's one-row stream (two layers) and cell split the digits' step
    over blocks of units, every step within float32's 1e-5 of the reference; the same step with
    the parallel slot taken runs serially and gives the same bits."""
    H, T = 512, 5
    g = ng.GRU(I, H, num_layers=2, seed=8)
    x = np.random.default_rng(5).standard_normal((T, 1, I)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 2, H)
    st = g.freeze().stream()
    assert st._stepper._step is dispatch.run_step_digits
    ys = np.stack([st.step(x[t, 0]) for t in range(T)])
    np.testing.assert_allclose(ys, ry[:, 0], atol=1e-5)
    np.testing.assert_allclose(st.state, rh, atol=1e-5)
    st2 = g.freeze().stream()
    with dispatch._PARALLEL_LOCK:
        serial = np.stack([st2.step(x[t, 0]) for t in range(T)])
    np.testing.assert_array_equal(serial, ys)
    cell = ng.GRUCell(I, H)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in g.state_dict().items() if k.endswith("_l0")})
    _check_cell_steps(cell, x, {k: v.astype(np.float64) for k, v in cell.state_dict().items()}, T, H)


@needs_vnni
def test_split_step_refuses_bad_scratch():
    """The split step's scratch must hold a row for at least one block, each row step_work_size."""
    H = 512
    f = ng.GRU(16, H, seed=2).freeze()
    split, digits = f._step_digits(0, 1, 2, False)
    x, h = np.ones((1, 16), np.float32), np.zeros((1, H), np.float32)
    gi, gh, out = np.empty((1, 3 * H), np.float32), np.empty((1, 3 * H), np.float32), np.empty((1, H), np.float32)
    for work in (np.zeros((0, vnni.step_work_size.py_func(16, H)), np.int32), np.zeros((2, 5), np.int32)):
        with pytest.raises(ValueError, match="shapes"):
            vnni.gru_step_vnni_cols(x, h, *digits, out, gi, gh, work)


def test_the_rule():
    want = vnni.vnni_ready()
    ok = dict(threads=1, dtype=np.float32, reset_after=True, gate_kind=0, use_clip=False)
    rule = dispatch.vnni_recurrence_wanted
    assert rule(T=64, B=1, H=512, **ok) is want
    assert not rule(T=63, B=1, H=512, **ok)
    assert not rule(T=63, B=1, H=768, **ok)
    assert not rule(T=64, B=1, H=511, **ok)
    assert not rule(T=64, B=2, H=512, **ok)
    # beyond the fused forward's hidden sizes from 32 steps
    assert rule(T=32, B=1, H=769, **ok) is want
    assert not rule(T=31, B=1, H=1024, **ok)
    for change in (dict(threads=2), dict(dtype=np.float64), dict(gate_kind=1), dict(use_clip=True)):
        assert not rule(T=64, B=1, H=512, **{**ok, **change})
        assert not rule(T=64, B=1, H=1024, kept=True, **{**ok, **change})
    # reset_after=False on the same tables, H a multiple of 8
    before = {**ok, "reset_after": False}
    assert rule(T=32, B=1, H=1024, **before) is want
    assert rule(T=1, B=1, H=776, kept=True, **before) is want
    assert not rule(T=31, B=1, H=1024, **before)
    assert not rule(T=64, B=1, H=1020, **before)
    assert not rule(T=64, B=1, H=1020, kept=True, **before)
    # digits kept (a frozen model's): from one step beyond the fused forward's hidden sizes
    assert rule(T=1, B=1, H=769, kept=True, **ok) is want
    assert rule(T=64, B=1, H=512, kept=True, **ok) is want
    assert not rule(T=1, B=1, H=768, kept=True, **ok)
    assert not rule(T=15, B=1, H=768, kept=True, **ok)
    assert not rule(T=64, B=2, H=1024, kept=True, **ok)

    # a frozen model's one-row step: serial, or split over units on several threads
    step = dispatch.vnni_step_wanted
    sok = dict(threads=1, columns=False, dtype=np.float32, reset_after=True, gate_kind=0, use_clip=False)
    serial, split = ("serial", "split") if want else (None, None)
    assert step(B=1, H=192, **sok) == serial
    assert step(B=1, H=191, **sok) is None
    assert step(B=2, H=256, **sok) is None
    assert step(B=1, H=256, **{**sok, "threads": 2, "columns": True}) is None  # (the float32 split)
    assert step(B=1, H=512, **{**sok, "threads": 2}) == split
    assert step(B=1, H=520, **{**sok, "threads": 2}) == serial  # (not a multiple of 16)
    for change in (dict(dtype=np.float64), dict(gate_kind=1), dict(use_clip=True)):
        assert step(B=1, H=256, **{**sok, **change}) is None
        assert step(B=1, H=1024, **{**sok, "threads": 2, **change}) is None
    # reset_after=False: H a multiple of 8 from VNNI_STEP_BEFORE_MIN_HIDDEN, split as reset_after's
    before = {**sok, "reset_after": False}
    assert step(B=1, H=320, **before) == serial
    assert step(B=1, H=1024, **{**before, "threads": 2}) == split
    assert step(B=1, H=1024, **{**before, "threads": 2, "columns": True}) == split
    assert step(B=1, H=520, **{**before, "threads": 2}) == serial  # (not a multiple of 16)
    assert step(B=1, H=256, **before) is None
    assert step(B=1, H=324, **before) is None
    assert dispatch.vnni_step_inputs(192) and not dispatch.vnni_step_inputs(191)
    # one row's steps split over units on several threads
    cols = dispatch.vnni_columns_wanted
    cok = dict(dtype=np.float32, reset_after=True, gate_kind=0, use_clip=False)
    assert cols(T=128, B=1, H=1024, threads=2, **cok) is want
    assert cols(T=1, B=1, H=768, threads=2, kept=True, **cok) is want
    assert not cols(T=1, B=1, H=752, threads=2, kept=True, **cok)  # (the float32 route kept up)
    assert not cols(T=512, B=1, H=1008, threads=2, **cok)  # (packed each call: from 1024)
    assert not cols(T=127, B=1, H=1024, threads=2, **cok)
    assert not cols(T=128, B=1, H=1024, threads=1, **cok)
    assert not cols(T=128, B=1, H=1000, threads=2, **cok)  # (not a multiple of 16)
    assert not cols(T=128, B=1, H=496, threads=2, **cok)
    assert not cols(T=128, B=2, H=1024, threads=2, **cok)
    for change in (dict(dtype=np.float64), dict(gate_kind=1), dict(use_clip=True)):
        assert not cols(T=128, B=1, H=1024, threads=2, **{**cok, **change})
    # reset_after=False: the plain model from 256 steps, a frozen one from 1024 units
    bok = {**cok, "reset_after": False}
    assert cols(T=256, B=1, H=1024, threads=2, **bok) is want
    assert not cols(T=255, B=1, H=1024, threads=2, **bok)
    assert cols(T=1, B=1, H=1024, threads=2, kept=True, **bok) is want
    assert not cols(T=128, B=1, H=1008, threads=2, kept=True, **bok)
    assert not cols(T=256, B=1, H=1000, threads=2, **bok)


@needs_vnni
def test_frozen_copy_keeps_the_row_sums(one_thread):
    """The frozen copy's digits of W_hh and their row sums are made on its first call and kept."""
    f = ng.GRU(16, 800, seed=6).freeze()
    x = np.random.default_rng(3).standard_normal((5, 1, 16)).astype(np.float32)
    y1, _ = f(x)
    W = f._W_hh[0]
    Wv, R = f._amx_pieces.row_sums_of(W)
    y2, _ = f(x)
    assert f._amx_pieces.row_sums_of(W)[1] is R
    np.testing.assert_array_equal(y1, y2)
    want = np.empty_like(R)
    vnni.digit_row_sums(Wv, *W.shape, want)
    np.testing.assert_array_equal(R, want)


@needs_vnni
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("H, T, reverse, col0, D, chunks", [(64, 5, False, 0, 1, 2), (96, 6, True, 96, 2, 2),
                                                            (160, 7, False, 0, 2, 3)])
def test_columns_kernel_equals_the_serial_one(two_threads, H, T, reverse, col0, D, chunks, reset_after):
    """The digits' columns route (blocks of units on the threads; reset_after=False in two halves a
    step) gives the serial digits kernel's bits; a state the digits refuse (NaN from the input) takes
    the step, or that half, in float32, so NaN spreads as on the float32 route."""
    serial, reference = _KERNELS[reset_after]
    columns = vnni.gru_forward_vnni_cols if reset_after else vnni.gru_forward_vnni_cols_before
    W, b, gx, h0 = _direction(H, T)
    Wv = pack_digits(W)
    R = np.empty(3 * padded(3 * H), np.int32)
    vnni.digit_row_sums(Wv, 3 * H, H, R)
    C = vnni.digit_offsets(R, 3 * H)
    want_y = np.full((T, 1, D * H), 5.0, np.float32)
    want_h = np.empty((1, H), np.float32)
    assert serial(gx, Wv, R, b, h0, reverse, want_y, col0, want_h)
    ys_ref, _ = reference(W, b, gx, h0, reverse)
    np.testing.assert_allclose(want_y[:, 0, col0:col0 + H], ys_ref, atol=2e-6)
    y = np.full((T, 1, D * H), 5.0, np.float32)
    h_n = np.empty((1, H), np.float32)
    columns(gx, W, Wv, C, b, h0, reverse, y, col0, h_n, chunks)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(h_n, want_h)
    t = T - 3 if reverse else 2
    gx[t, 0, (0 if reset_after else H) + 5] = np.nan  # unit 5's r (z) at step 2, then every unit's state
    columns(gx, W, Wv, C, b, h0, reverse, y, col0, h_n, chunks)
    ys = y[::-1] if reverse else y
    got = np.isnan(ys[:, 0, col0:col0 + H]).sum(axis=1)
    np.testing.assert_array_equal(got, [0, 0, 1] + [H] * (T - 3))
    assert np.isnan(h_n).all()
    np.testing.assert_array_equal(ys[:2], (want_y[::-1] if reverse else want_y)[:2])
    with pytest.raises(ValueError, match="shapes"):
        columns(gx, W, Wv, C[:, 1:], b, h0, reverse, y, col0, h_n, chunks)
    if not reset_after:
        with pytest.raises(ValueError, match="shapes"):
            columns(gx[:, :, :-16], W[:-48, :-16], Wv, C, b, h0, reverse, y, col0, h_n, chunks)


@needs_vnni
@pytest.mark.parametrize("reset_after, kernel_name, min_steps, seed, frozen_T", [
    (True, "gru_forward_vnni_cols", "VNNI_COLUMNS_MIN_STEPS", 9, 1),
    (False, "gru_forward_vnni_cols_before", "VNNI_COLUMNS_BEFORE_MIN_STEPS", 10, 2)])
def test_layer_takes_the_columns_route_on_two_threads(two_threads, monkeypatch, reset_after, kernel_name,
                                                     min_steps, seed, frozen_T):
    """One row on two threads where the forward splits steps over units (H = 1024 on Zen 4): the
    frozen copy's steps on its kept digits from its first steps, the plain model's packing them from
    the route's minimum steps; both within float32's 1e-5 of the reference."""
    calls = []
    kernel = getattr(dispatch, kernel_name)
    monkeypatch.setattr(dispatch, kernel_name, lambda *a: calls.append(1) or kernel(*a))
    H = 1024
    if dispatch.forward_route(1, H, reset_after, False, T=8) != "columns":
        pytest.skip("the forward does not split one row's steps over units here")
    monkeypatch.setattr(dispatch, min_steps, 8)
    g = ng.GRU(12, H, reset_after=reset_after, seed=seed)
    x = np.random.default_rng(seed - 3).standard_normal((8, 1, 12)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 1, H, reset_after=reset_after)
    fz = g.freeze()
    monkeypatch.setattr(fz, "_one_step", lambda x, h0: None)  # (one step from h0: a stream's step otherwise)
    for model, T, taken in ((g, 8, 1), (g, 7, 0), (fz, frozen_T, 1)):
        calls.clear()
        y, h = model(x[:T], np.zeros((1, 1, H), np.float32))  # (no h0 and T = 1 would skip W_hh)
        assert len(calls) == taken
        np.testing.assert_allclose(y, ry[:T], atol=1e-5)
        if T == 8:
            np.testing.assert_allclose(h, rh, atol=1e-5)
    x[3, 0, 2] = np.nan  # the digits refuse the state from step 4: its products in float32
    calls.clear()
    y, _ = g.freeze()(x)
    assert calls and np.isnan(y[3:]).all() and not np.isnan(y[:3]).any()
    np.testing.assert_allclose(y[:3], ry[:3], atol=1e-5)


@needs_vnni
@pytest.mark.parametrize("I", [16, 200])
def test_frozen_steps_without_reset_after_split_over_units_on_two_threads(two_threads, I):
    """reset_after=False's digit step split over blocks of units (two parallel regions): a frozen
    two-layer stream within float32's 1e-5 of the reference, the serial digit step's bits where the
    parallel slot is taken, and a frozen cell as its float32 twin."""
    H, T = 512, 5
    g = ng.GRU(I, H, num_layers=2, reset_after=False, seed=11)
    x = np.random.default_rng(8).standard_normal((T, 1, I)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 2, H, reset_after=False)
    calls = []
    kernel = dispatch.gru_step_vnni_cols_before
    st = g.freeze().stream()
    assert st._stepper._step is dispatch.run_step_digits
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "gru_step_vnni_cols_before", lambda *a: calls.append(1) or kernel(*a))
        ys = np.stack([st.step(x[t, 0]) for t in range(T)])
    assert len(calls) == 2 * T
    np.testing.assert_allclose(ys, ry[:, 0], atol=1e-5)
    np.testing.assert_allclose(st.state, rh, atol=1e-5)
    st2 = g.freeze().stream()
    with dispatch._PARALLEL_LOCK:
        serial = np.stack([st2.step(x[t, 0]) for t in range(T)])
    np.testing.assert_array_equal(serial, ys)
    cell = ng.GRUCell(I, H, reset_after=False, seed=12)
    f = cell.freeze()
    assert f._step_args(1)[5][0]  # split
    h = np.zeros((1, H), np.float32)
    for t in range(T):
        got = f(x[t], h)
        np.testing.assert_allclose(got, cell(x[t], h), atol=1e-5)
        h = got
