""""medium" precision on CPUs with AVX512-BF16 and no AMX (numgru.kernels.dpbf16): the input
projection, dx and the weight gradients as one bfloat16 product a term (VDPBF16PS), summed in
float32.

The kernels must compute exactly the products of the operands rounded to bfloat16 (checked against
those products summed in float64, to float32's rounding of the sums), give the same bits on any
split of rows or columns, refuse values bfloat16 cannot carry, and the layers must take them at
"medium" only, within the error that precision promises.

The recurrences too (inference's and training's forward, the backward's steps): their products
by the same kernels, each step's state or gate gradients rounded to bfloat16.
"""
import numpy as np
import pytest

import numgru as ng
from conftest import count_calls
from numgru.kernels import dispatch, dpbf16
from reference import gru as ref_gru

needs_dpbf16 = pytest.mark.skipif(not dpbf16.dpbf16_ready() or dispatch.amx_ready(),
                                  reason="no AVX512-BF16 on this CPU, or AMX takes its place")


pytestmark = pytest.mark.usefixtures("restore_precision")


def _bf16(v):
    """float32 v rounded to the nearest bfloat16 (ties to even), as float64."""
    u = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32).astype(np.float64)


def _assert_products(out, a, b, bias=None):
    """out (R, N) is a (R, K) @ b (N, K).T of the operands rounded to bfloat16 (+ bias), up to the
    float32 rounding of K sums."""
    ref = _bf16(a) @ _bf16(b).T + (0 if bias is None else bias.astype(np.float64))
    bound = 2.0 ** -23 * (a.shape[1] + 2) * (np.abs(_bf16(a)) @ np.abs(_bf16(b)).T + (
        0 if bias is None else np.abs(bias)))
    assert out.dtype == np.float32
    assert np.all(np.abs(out - ref) <= bound + 1e-30)


def _packed(W):
    N, K = W.shape
    Wp = np.empty(((N + 15) // 16, (K + 1) // 2, 16, 2), np.uint16)
    assert dpbf16.pack_pairs(W, Wp)
    return Wp


@needs_dpbf16
@pytest.mark.parametrize("R, K, N, bias", [(1, 1, 1, False), (7, 5, 17, True), (97, 64, 300, True),
                                           (200, 257, 48, False), (13, 32, 49, True)])
def test_projection_is_the_bfloat16_products(rng, R, K, N, bias):
    # odd K (a zero last pair), N off the panels' 16, rows off the tile's 6 and the chunk's 96
    x = rng.standard_normal((R, K)).astype(np.float32)
    W = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) if bias else np.zeros(N, np.float32)
    Wp = _packed(W)
    out = np.full((R, N), np.nan, np.float32)
    assert dpbf16.dpbf16_projection(x, Wp, N, b, 0, out)
    _assert_products(out, x, W, b)
    for r0 in range(0, R, 5):  # ranges of rows, as threads take them: the same bits
        part = np.full((min(R, r0 + 5) - r0, N), np.nan, np.float32)
        assert dpbf16.dpbf16_projection(x[r0:r0 + 5], Wp, N, b, 0, part)
        np.testing.assert_array_equal(part, out[r0:r0 + 5])


@needs_dpbf16
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, 3.3e38])
def test_values_bfloat16_cannot_carry_are_refused(rng, bad):
    x = rng.standard_normal((20, 10)).astype(np.float32)
    W = rng.standard_normal((33, 10)).astype(np.float32)
    out = np.empty((20, 33), np.float32)
    xb = x.copy()
    xb[13, 7] = bad
    assert not dpbf16.dpbf16_projection(xb, _packed(W), 33, np.zeros(33, np.float32), 0,
                                        out)
    Wb = W.copy()
    Wb[32, 9] = bad
    Wp = np.empty((3, 5, 16, 2), np.uint16)
    assert not dpbf16.pack_pairs(Wb, Wp)
    D = rng.standard_normal((20, 33)).astype(np.float32)
    none = np.empty((20, 0), np.float32)
    g = np.empty((33, 10), np.float32)
    assert not dpbf16.dpbf16_gradient(D, 0, 33, none, xb, g, 0, 1)
    D[19, 0] = bad
    assert not dpbf16.dpbf16_gradient(D, 0, 33, none, x, g, 0, 1)


@needs_dpbf16
@pytest.mark.parametrize("N, width, c0, m1, m2, I", [(1, 3, 0, 3, 0, 1), (7, 20, 4, 10, 5, 17),
                                                     (301, 96, 0, 64, 32, 40), (513, 60, 20, 40, 0, 50)])
def test_gradient_is_the_bfloat16_products(rng, N, width, c0, m1, m2, I):
    # odd N (a last pair with a zero), more rows than a chunk's 256, D's columns from c0 and D2's
    D = rng.standard_normal((N, width)).astype(np.float32)
    D2 = rng.standard_normal((N, m2)).astype(np.float32)
    X = rng.standard_normal((N, I)).astype(np.float32)
    P = (I + 15) // 16
    out = np.full((m1 + m2, I), np.nan, np.float32)
    args = (D, c0, m1, D2, X)
    assert dpbf16.dpbf16_gradient(*args, out, 0, P)
    G = np.concatenate([D[:, c0:c0 + m1], D2], 1)
    _assert_products(out, G.T.copy(), X.T.copy())
    split = np.full_like(out, np.nan)  # ranges of panels, as threads take them: the same bits
    for p0 in range(P):
        assert dpbf16.dpbf16_gradient(*args, split, p0, p0 + 1)
    np.testing.assert_array_equal(split, out)
    with pytest.raises(ValueError, match="shapes"):
        dpbf16.dpbf16_gradient(*args, np.empty((m1 + m2, I + 1), np.float32), 0, P)


def test_rule(monkeypatch):
    # "medium" only, float32 only, no AMX, enough rows and work a row; the gradients the same
    monkeypatch.setattr(dispatch, "dpbf16_ready", lambda: True)
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    f4, f8 = np.float32, np.float64
    for wanted in (dispatch.dpbf16_projection_wanted, dispatch.dpbf16_gradient_wanted):
        assert not wanted(8192, 256, 768, f4, f4)
        ng.set_float32_matmul_precision("high")
        assert not wanted(8192, 256, 768, f4, f4)
        ng.set_float32_matmul_precision("medium")
        assert wanted(8192, 256, 768, f4, f4) and wanted(128, 64, 64, f4)
        assert not wanted(127, 256, 768, f4) and not wanted(8192, 16, 48, f4)
        assert not wanted(8192, 256, 768, f4, f8)
        monkeypatch.setattr(dispatch, "amx_ready", lambda: True)
        assert not wanted(8192, 256, 768, f4)
        monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
        ng.set_float32_matmul_precision("highest")
    ng.set_float32_matmul_precision("medium")
    wanted = dispatch.dpbf16_projection_wanted  # inference's rows a thread (W's packing is serial)
    assert wanted(256, 256, 768, f4, threads=2) and not wanted(255, 256, 768, f4, threads=2)


@needs_dpbf16
def test_forward_and_training_at_medium(rng, one_thread, monkeypatch):
    # inference's projection and steps, forward_train's, the backward's steps, dx and the weight
    # gradients take the bfloat16 products at "medium" only, within its error; "highest" is back
    # bit for bit after it
    T, B, I, H = 40, 8, 130, 96
    g = ng.GRU(I, H, num_layers=2, bidirectional=True, seed=5)
    g64 = ng.GRU(I, H, num_layers=2, bidirectional=True, dtype=np.float64)
    g64.load_state_dict({k: v.astype(np.float64) for k, v in g.state_dict().items()})
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    calls = count_calls(monkeypatch, dispatch, ["dpbf16_projection", "dpbf16_gradient", "gru_forward_dpbf16",
                                                "gru_backward_dpbf16"])
    y_highest = g(x)[0]
    assert set(calls.values()) == {0}
    ng.set_float32_matmul_precision("medium")
    y = g(x)[0]
    assert calls["dpbf16_projection"] == calls["gru_forward_dpbf16"] == 4  # each layer's directions
    y_ref = ref_gru(x, g.state_dict(), 2, H, bidirectional=True)[0]
    assert np.abs(y - y_ref).max() < 2e-2 and np.abs(y - y_highest).max() > 1e-5
    y, _, tape = g.forward_train(x)
    dx, _, grads = g.backward(tape, dy)
    # projections: 4 forward, dx of both layers' two directions; gradients: dW_ih and dW_hh of each
    assert calls["dpbf16_projection"] == 4 + 4 + 4 and calls["dpbf16_gradient"] == 8
    assert calls["gru_forward_dpbf16"] == 4 + 4 and calls["gru_backward_dpbf16"] == 4
    y64, _, tape64 = g64.forward_train(x.astype(np.float64))
    dx64, _, grads64 = g64.backward(tape64, dy.astype(np.float64))
    assert np.abs(y - y64).max() < 2e-2
    assert np.abs(dx - dx64).max() < 2e-2 * np.abs(dx64).max()
    for k, v in grads.items():
        assert np.abs(v - grads64[k]).max() < 2e-2 * np.abs(grads64[k]).max(), k
    ng.set_float32_matmul_precision("highest")
    np.testing.assert_array_equal(g(x)[0], y_highest)


@needs_dpbf16
def test_training_at_medium_is_the_same_on_two_threads(rng, monkeypatch):
    import numba
    T, B, I, H = 48, 16, 64, 128
    g = ng.GRU(I, H, seed=6)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    ng.set_float32_matmul_precision("medium")
    monkeypatch.setattr(dispatch, "PANEL_GRADIENT_POOL_MIN", 0)  # columns side by side
    results = []
    before = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            y, _, tape = g.forward_train(x)
            results.append((y, *g.backward(tape, dy)))
    finally:
        numba.set_num_threads(before)
    (y1, dx1, _, g1), (y2, dx2, _, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


@needs_dpbf16
def test_values_bfloat16_cannot_carry_take_the_float32_route(rng, one_thread, monkeypatch):
    # a NaN reaches the state: the whole direction runs again on the float32 kernels, the results
    # the default's; a value beyond bfloat16's range sends its projection back to float32 alone
    T, B, I, H = 20, 8, 64, 64
    g = ng.GRU(I, H, seed=8)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[3, 2, 5] = np.nan
    y_highest = g(x)[0]
    ng.set_float32_matmul_precision("medium")
    np.testing.assert_array_equal(g(x)[0], y_highest)
    x[3, 2, 5] = 3.3e38
    done = []
    fn = dispatch.dpbf16_projection
    monkeypatch.setattr(dispatch, "dpbf16_projection", lambda *a: done.append(fn(*a)) or done[-1])
    y = g(x)[0]
    ng.set_float32_matmul_precision("highest")
    assert done == [False] and np.isfinite(y).all()
    assert np.abs(y - g(x)[0]).max() < 2e-2


@needs_dpbf16
def test_inference_at_medium_splits_rows_on_two_threads(rng, monkeypatch):
    # two threads run the recurrence as two ranges of rows on Numba's threads, each row's sums those
    # of one thread's run: the outputs are one thread's, bit for bit (the directions on both threads,
    # not side by side: dispatch.directions_apart)
    import numba
    monkeypatch.setattr(dispatch, "APART_MIN_WORK", 1 << 62)
    T, B, I, H = 24, 16, 48, 192
    g = ng.GRU(I, H, bidirectional=True, seed=9)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((2, B, H)).astype(np.float32)
    ng.set_float32_matmul_precision("medium")
    serial = dispatch.gru_forward_dpbf16
    calls = count_calls(monkeypatch, dispatch, ["gru_forward_dpbf16", "gru_forward_dpbf16_ranges"])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1, h1 = g(x, h0)
        assert calls["gru_forward_dpbf16"] == 2
        # the ranges kernel calls the serial one by its address, which a counting wrapper has not
        monkeypatch.setattr(dispatch, "gru_forward_dpbf16", serial)
        numba.set_num_threads(2)
        y2, h2 = g(x, h0)
    finally:
        numba.set_num_threads(before)
    assert calls["gru_forward_dpbf16"] == 2 and calls["gru_forward_dpbf16_ranges"] == 2
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(h2, h1)
    y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H, bidirectional=True, h0=h0)
    assert np.abs(y1 - y_ref).max() < 2e-2 and np.abs(h1 - h_ref).max() < 2e-2
