"""The one-row forward with its input projection fused into the steps (numgru.kernels.fused): the
kernel against the numpy reference (hidden sizes off the panel width, inputs narrower and wider than
H, fewer steps than a block and steps off a block's multiple, reverse, a column offset, panels given
or packed inside), the block product against its two plain products, bad shapes refused, the layer's
route (plain, bidirectional, stacked, no bias, frozen) and the dispatch's rule. Skipped where the
target has no AVX-512 (the route is not dispatched to there)."""
import numba
import numpy as np
import pytest

import numgru as ng
from numgru.kernels import dispatch, fused
from numgru.kernels.panel import pack_panels

from conftest import check_frozen_route
from reference import gru as ref_gru

needs_fused = pytest.mark.skipif(not fused.fused_ready(), reason="no AVX-512 on the target")


def _weights(I, H, seed, bias=True):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    W_ih = rng.uniform(-k, k, (3 * H, I)).astype(np.float32)
    W_hh = rng.uniform(-k, k, (3 * H, H)).astype(np.float32)
    b_ih = rng.uniform(-k, k, 3 * H).astype(np.float32) if bias else np.zeros(3 * H, np.float32)
    b_hh = rng.uniform(-k, k, 3 * H).astype(np.float32) if bias else np.zeros(3 * H, np.float32)
    return W_ih, W_hh, b_ih, b_hh


def _params(W_ih, W_hh, b_ih, b_hh):
    return {"weight_ih_l0": W_ih.astype(np.float64), "weight_hh_l0": W_hh.astype(np.float64),
            "bias_ih_l0": b_ih.astype(np.float64), "bias_hh_l0": b_hh.astype(np.float64)}


@needs_fused
@pytest.mark.parametrize("I, H, T", [(64, 64, 100), (37, 100, 29), (200, 33, 9), (256, 256, 64), (5, 48, 3),
                                     (300, 70, 16), (64, 64, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_matches_the_reference(I, H, T, reverse):
    W_ih, W_hh, b_ih, b_hh = _weights(I, H, I + H)
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, 1, H)).astype(np.float32)
    ry, rh = ref_gru(x[::-1] if reverse else x, _params(W_ih, W_hh, b_ih, b_hh), 1, H, h0=h0)
    if reverse:
        ry = ry[::-1]
    empty = np.empty((0, 0, 0), np.float32)
    outs = []
    for Wp_ih, Wp_hh in ((empty, empty), (pack_panels(W_ih), pack_panels(W_hh))):
        y = np.full((T, 1, 2 * H + 3), 7.0, np.float32)
        h_n = np.empty((1, H), np.float32)
        fused.gru_forward_fused(x.reshape(T, I), W_ih, Wp_ih, b_ih, W_hh, Wp_hh, b_hh, h0[0], reverse, y, H, h_n)
        np.testing.assert_allclose(y[:, :, H:2 * H], ry, atol=2e-6)
        np.testing.assert_allclose(h_n, rh[0], atol=2e-6)
        assert (y[:, :, :H] == 7).all() and (y[:, :, 2 * H:] == 7).all()  # other columns untouched
        outs.append((y, h_n))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])  # panels packed inside or given: same bits


@needs_fused
@pytest.mark.parametrize("I, H, k0, k1", [(64, 64, 0, 64), (40, 100, 5, 17), (256, 32, 32, 64), (24, 200, 3, 3),
                                          (16, 27, 2, 9), (16, 21, 0, 16)])
def test_block_product_is_both_products(I, H, k0, k1):
    W_ih, W_hh, _, _ = _weights(I, H, 3)
    rng = np.random.default_rng(4)
    R = _rows()
    h = rng.standard_normal((1, H)).astype(np.float32)
    xb = rng.standard_normal((R, I)).astype(np.float32)
    g0 = rng.standard_normal((R, 3 * H)).astype(np.float32)
    # rec and gxn are the fronts of larger buffers: a last panel's columns past 3H are never written
    gbuf = np.full(R * 3 * H + 64, 7.0, np.float32)
    gxn = gbuf[:R * 3 * H].reshape(R, 3 * H)
    gxn[:] = g0
    rbuf = np.full(3 * H + 64, 7.0, np.float32)
    rec = rbuf[:3 * H].reshape(1, 3 * H)
    _step(h, pack_panels(W_hh), rec, xb, pack_panels(W_ih), gxn, k0, k1, False)
    assert (gbuf[R * 3 * H:] == 7).all() and (rbuf[3 * H:] == 7).all()
    # the panels last first (every other step of a forward whose weights pass L2): the same values
    gxn_b = g0.copy()
    rec_b = np.empty((1, 3 * H), np.float32)
    _step(h, pack_panels(W_hh), rec_b, xb, pack_panels(W_ih), gxn_b, k0, k1, True)
    np.testing.assert_array_equal(rec_b, rec)
    np.testing.assert_array_equal(gxn_b, gxn)
    h64, x64 = h.astype(np.float64), xb.astype(np.float64)
    np.testing.assert_allclose(rec, h64 @ W_hh.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    want = g0 + x64[:, k0:k1] @ W_ih[:, k0:k1].T.astype(np.float64)
    np.testing.assert_allclose(gxn, want, rtol=1e-5, atol=1e-5)


@numba.njit(cache=False)
def _rows():
    return fused.block_rows_fused(np.float32(0))


@numba.njit(cache=False)
def _step(h, Wp_hh, rec, xb, Wp_ih, gxn, k0, k1, backwards):
    fused.fused_step(h, Wp_hh, rec, xb, Wp_ih, gxn, k0, k1, backwards)


@needs_fused
def test_bad_shapes_refused():
    I, H, T = 16, 32, 20
    W_ih, W_hh, b_ih, b_hh = _weights(I, H, 5)
    x = np.zeros((T, I), np.float32)
    h0 = np.zeros((1, H), np.float32)
    e = np.empty((0, 0, 0), np.float32)
    good = dict(x2d=x, W_ih=W_ih, Wp_ih=e, b_ih=b_ih, W_hh=W_hh, Wp_hh=e, b_hh=b_hh, h0=h0, reverse=False,
                y=np.zeros((T, 1, H), np.float32), col0=0, h_n=np.zeros((1, H), np.float32))
    for change in (dict(W_ih=W_ih[:, 1:]), dict(W_hh=W_hh[:-1]), dict(b_ih=b_ih[1:]),
                   dict(y=np.zeros((T - 1, 1, H), np.float32)), dict(col0=1), dict(h0=np.zeros((2, H), np.float32)),
                   dict(h_n=np.zeros((1, H + 1), np.float32))):
        with pytest.raises(ValueError, match="shapes"):
            fused.gru_forward_fused(**{**good, **change})
    R = _rows()
    Wp_ih, Wp_hh = pack_panels(W_ih), pack_panels(W_hh)
    args = [h0, Wp_hh, np.zeros((1, 3 * H), np.float32), np.zeros((R, I), np.float32), Wp_ih,
            np.zeros((R, 3 * H), np.float32), 0, I, False]
    for i, bad in ((3, np.zeros((R - 1, I), np.float32)), (5, np.zeros((R, 3 * H - 1), np.float32)),
                   (1, Wp_ih), (6, -1), (7, I + 1)):
        with pytest.raises(ValueError, match="shapes"):
            _step(*[bad if j == i else a for j, a in enumerate(args)])


def _taken(model):
    return [p[8] is not None for p in model._plans[next(iter(model._plans))]]


@needs_fused
@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (2, True, False), (2, False, True)])
def test_layer_takes_the_route_and_matches_the_reference(one_thread, layers, bidirectional, bias):
    H, T, I = 80, 70, 24
    g = ng.GRU(I, H, num_layers=layers, bidirectional=bidirectional, bias=bias, seed=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (layers * g.num_directions, 1, H)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), layers, H, bidirectional=bidirectional, h0=h0)
    for model in (g, g.freeze()):
        y, h = model(x, h0)
        assert all(_taken(model))
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)


@needs_fused
def test_two_threads_take_the_route_where_one_row_runs_serially(two_threads):
    # several threads leave one row of H = 64 to the serial kernels (dispatch.forward_route), where
    # the fused kernel on one of them beat BLAS threading the serial kernels' products
    H, T = 64, 40
    if dispatch.forward_route(1, H, True, False, T) is not None:
        pytest.skip("one row runs a multi-threaded route here")
    g = ng.GRU(12, H, seed=8)
    x = np.random.default_rng(5).standard_normal((T, 1, 12)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), 1, H)
    for model in (g, g.freeze()):
        y, h = model(x)
        assert all(_taken(model))
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)


@needs_fused
@pytest.mark.parametrize("H, T", [(64, 1), (80, 5), (200, 16), (256, 24)])
def test_frozen_copy_takes_the_route_from_fewer_steps(one_thread, H, T):
    # its panels are packed once: the fused forward from one step up to H = 128, from 16 beyond,
    # where the plain model, which packs on every call, keeps the other routes
    g = ng.GRU(H // 2, H, num_layers=2, seed=5)
    x = np.random.default_rng(2).standard_normal((T, 1, H // 2)).astype(np.float32)
    check_frozen_route(g, x, *ref_gru(x, g.state_dict(), 2, H), _taken)


def test_the_rule():
    want = fused.fused_ready()
    ok = dict(dtype=np.float32, reset_after=True, gate_kind=0, use_clip=False)
    rule = dispatch.fused_recurrence_wanted
    assert rule(T=64, B=1, H=768, **ok) is want
    assert rule(T=16, B=1, H=64, **ok) is want
    assert not rule(T=63, B=1, H=768, **ok)
    assert not rule(T=15, B=1, H=128, **ok)
    assert rule(T=32, B=1, H=256, **ok) is want
    assert not rule(T=31, B=1, H=129, **ok)
    assert not rule(T=63, B=1, H=257, **ok)
    assert not rule(T=64, B=1, H=769, **ok)
    assert not rule(T=64, B=1, H=63, **ok)
    assert not rule(T=64, B=2, H=256, **ok)
    for change in (dict(dtype=np.float64), dict(gate_kind=1), dict(use_clip=True)):
        for reset_after in (True, False):
            bad = {**ok, **change, "reset_after": reset_after}
            assert not rule(T=128, B=1, H=256, **bad)
            assert not rule(T=128, B=1, H=256, packed=True, **bad)
    # weights packed once (a frozen model's): from one step up to H = 128, from 16 up to H = 768
    assert rule(T=1, B=1, H=128, packed=True, **ok) is want
    assert rule(T=16, B=1, H=768, packed=True, **ok) is want
    assert not rule(T=15, B=1, H=129, packed=True, **ok)
    assert not rule(T=64, B=1, H=769, packed=True, **ok)
    assert not rule(T=64, B=2, H=256, packed=True, **ok)


def test_the_rule_without_reset_after():
    # from 64 units: from 4 steps up to H = 64, 24 up to 128, 128 up to 256, 48 up to 512, 64 beyond;
    # packed from 4 up to H = 64, from 32 beyond
    want = fused.fused_ready()
    ok = dict(dtype=np.float32, reset_after=False, gate_kind=0, use_clip=False)
    rule = dispatch.fused_recurrence_wanted
    assert rule(T=4, B=1, H=64, **ok) is want
    assert rule(T=24, B=1, H=128, **ok) is want
    assert rule(T=128, B=1, H=256, **ok) is want
    assert rule(T=48, B=1, H=257, **ok) is want
    assert rule(T=64, B=1, H=768, **ok) is want
    assert not rule(T=3, B=1, H=64, **ok)
    assert not rule(T=23, B=1, H=65, **ok)
    assert not rule(T=127, B=1, H=129, **ok)
    assert not rule(T=47, B=1, H=512, **ok)
    assert not rule(T=63, B=1, H=513, **ok)
    assert not rule(T=128, B=1, H=63, **ok)
    assert not rule(T=128, B=1, H=769, **ok)
    assert not rule(T=128, B=2, H=256, **ok)
    assert rule(T=4, B=1, H=64, packed=True, **ok) is want
    assert rule(T=32, B=1, H=768, packed=True, **ok) is want
    assert rule(T=32, B=1, H=96, packed=True, **ok) is want
    assert not rule(T=3, B=1, H=64, packed=True, **ok)
    assert not rule(T=31, B=1, H=65, packed=True, **ok)
    assert not rule(T=128, B=1, H=63, packed=True, **ok)


def _before(x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_rz, Wp_n, b_hh, h0, reverse, y, col0, h_n):
    fused.gru_forward_fused_before(x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_rz, Wp_n, b_hh, h0, reverse, y, col0, h_n)


@needs_fused
@pytest.mark.parametrize("I, H, T", [(64, 96, 100), (37, 100, 29), (200, 33, 9), (256, 256, 64), (5, 48, 3),
                                     (300, 72, 16), (64, 64, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_without_reset_after_matches_the_reference(I, H, T, reverse):
    W_ih, W_hh, b_ih, b_hh = _weights(I, H, I + H + 1)
    rng = np.random.default_rng(T + 1)
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, 1, H)).astype(np.float32)
    ry, rh = ref_gru(x[::-1] if reverse else x, _params(W_ih, W_hh, b_ih, b_hh), 1, H, h0=h0, reset_after=False)
    if reverse:
        ry = ry[::-1]
    empty = np.empty((0, 0, 0), np.float32)
    outs = []
    # panels packed inside, or given: W_ih's whole (a frozen model's; split where 2H columns make
    # whole panels, H = 48 / 72 / 96 here, else packed again in two) and W_hh's two parts
    for given in (False, True):
        panels = (pack_panels(W_ih), pack_panels(W_hh[:2 * H]), pack_panels(W_hh[2 * H:])) if given \
            else (empty, empty, empty)
        y = np.full((T, 1, 2 * H + 3), 7.0, np.float32)
        h_n = np.empty((1, H), np.float32)
        _before(x.reshape(T, I), W_ih, panels[0], b_ih, W_hh, *panels[1:], b_hh, h0[0], reverse, y, H, h_n)
        np.testing.assert_allclose(y[:, :, H:2 * H], ry, atol=2e-6)
        np.testing.assert_allclose(h_n, rh[0], atol=2e-6)
        assert (y[:, :, :H] == 7).all() and (y[:, :, 2 * H:] == 7).all()  # other columns untouched
        outs.append((y, h_n))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])


@needs_fused
def test_kernel_without_reset_after_refuses_bad_shapes():
    I, H, T = 16, 32, 20
    W_ih, W_hh, b_ih, b_hh = _weights(I, H, 6)
    e = np.empty((0, 0, 0), np.float32)
    good = dict(x2d=np.zeros((T, I), np.float32), W_ih=W_ih, Wp_ih=e, b_ih=b_ih, W_hh=W_hh, Wp_rz=e, Wp_n=e,
                b_hh=b_hh, h0=np.zeros((1, H), np.float32), reverse=False, y=np.zeros((T, 1, H), np.float32),
                col0=0, h_n=np.zeros((1, H), np.float32))
    for change in (dict(W_ih=W_ih[:, 1:]), dict(W_hh=W_hh[:-1]), dict(b_hh=b_hh[1:]),
                   dict(y=np.zeros((T - 1, 1, H), np.float32)), dict(col0=1), dict(h0=np.zeros((2, H), np.float32)),
                   dict(h_n=np.zeros((1, H + 1), np.float32)), dict(Wp_n=pack_panels(W_hh)),
                   dict(Wp_ih=pack_panels(W_ih[:, 1:]))):
        with pytest.raises(ValueError, match="shapes"):
            _before(**{**good, **change})


@needs_fused
@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (2, True, False), (2, False, True)])
def test_layer_without_reset_after_takes_the_route(one_thread, monkeypatch, layers, bidirectional, bias):
    # (where the CPU has AMX a frozen copy's 70 rows of 2H inputs take the projection to the tiles
    # instead, as fast there: this test is the fused kernel's, so the tiles are kept out of it)
    monkeypatch.setattr(dispatch, "amx_projection_wanted", lambda *args, **kwargs: False)
    H, T, I = 100, 70, 24
    g = ng.GRU(I, H, num_layers=layers, bidirectional=bidirectional, bias=bias, reset_after=False, seed=4)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (layers * g.num_directions, 1, H)).astype(np.float32)
    ry, rh = ref_gru(x, g.state_dict(), layers, H, bidirectional=bidirectional, h0=h0, reset_after=False)
    for model in (g, g.freeze()):
        y, h = model(x, h0)
        assert all(_taken(model))
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)
