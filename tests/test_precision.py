"""ng.set_float32_matmul_precision: "highest" (the default, float32 accuracy), "high" and "medium"
let the products on AMX tiles keep fewer bfloat16 products (the pieces' order 2 and 1,
numgru.kernels.amx), as PyTorch's setting of the same name lets its matmuls use bfloat16.

The kernels must take exactly the products of their order (checked against the same products of
the same pieces summed in float64), the layers must pass the setting to every tile route, and the
results must stay within the error each order promises; everything off the tiles (float64, CPUs
without AMX) must not change at all.
"""
import numpy as np
import pytest

import numgru as ng
from conftest import count_calls
from numgru.kernels import amx, dispatch
from reference import gru as ref_gru

needs_amx = pytest.mark.skipif(not amx.amx_ready(), reason="no AMX tiles on this CPU or OS")

#: per order, the kept products (i, j): piece i of the rows' operand by piece j of the other's
KEPT = {3: [(0, 0), (0, 1), (0, 2), (1, 1), (1, 0), (2, 0)], 2: [(0, 0), (0, 1), (1, 0)], 1: [(0, 0)]}


pytestmark = pytest.mark.usefixtures("restore_precision")


def _pieces(v):
    """float32 v → its three bfloat16 pieces as float32 (each the nearest bfloat16, ties to even, of
    what the pieces before it left), in NumPy."""
    out = []
    left = np.asarray(v, np.float32)
    for _ in range(3):
        u = left.view(np.uint32).astype(np.uint64)
        p = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
        out.append(p)
        left = left - p
    return out


def _kept_sum(a, b, order, b_one=False):
    """a (R, K) @ b (N, K).T as the tiles of ``order`` take it, in float64: the kept products of
    the pieces (b's first piece alone where ``b_one``)."""
    pa = [p.astype(np.float64) for p in _pieces(a)]
    pb = [p.astype(np.float64) for p in _pieces(b)]
    kept = [(i, 0) for i in range(order)] if b_one else KEPT[order]
    return sum(pa[i] @ pb[j].T for i, j in kept)


def test_setting_and_its_errors():
    assert ng.get_float32_matmul_precision() == "highest"
    for p in ("high", "medium", "highest"):
        ng.set_float32_matmul_precision(p)
        assert ng.get_float32_matmul_precision() == p
        assert dispatch.matmul_order() == {"highest": 3, "high": 2, "medium": 1}[p]
    with pytest.raises(ValueError, match="precision.*'low'"):
        ng.set_float32_matmul_precision("low")
    with pytest.raises(ValueError, match="precision"):
        ng.set_float32_matmul_precision("HIGH")
    with pytest.raises(TypeError, match="precision.*int"):
        ng.set_float32_matmul_precision(3)
    assert ng.get_float32_matmul_precision() == "highest"


def test_routes_off_the_tiles_do_not_change(rng, one_thread, monkeypatch):
    # float64 models, and float32 ones where the CPU has no tiles and no AVX512-BF16
    # (tests/test_dpbf16.py), compute as before, bit for bit
    T, B, I, H = 40, 32, 130, 96
    x = rng.standard_normal((T, B, I))
    g64 = ng.GRU(I, H, bidirectional=True, dtype=np.float64, seed=2)
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    monkeypatch.setattr(dispatch, "dpbf16_ready", lambda: False)
    g32 = ng.GRU(I, H, bidirectional=True, seed=2)
    before = [m(x)[0] for m in (g64, g32)]
    _, _, tape = g32.forward_train(x)
    grads = g32.backward(tape, np.ones((T, B, 2 * H), np.float32))[2]
    ng.set_float32_matmul_precision("medium")
    for m, y in zip((g64, g32), before):
        np.testing.assert_array_equal(m(x)[0], y)
    _, _, tape = g32.forward_train(x)
    for k, v in g32.backward(tape, np.ones((T, B, 2 * H), np.float32))[2].items():
        np.testing.assert_array_equal(v, grads[k])


@needs_amx
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("bf16_weights", [False, True])
def test_projection_takes_the_products_of_its_order(rng, order, bf16_weights):
    R, N, K = 70, 40, 100
    x = (rng.standard_normal((R, K)) * np.exp(rng.uniform(-3, 3, (R, K)))).astype(np.float32)
    W = rng.standard_normal((N, K)).astype(np.float32)
    if bf16_weights:
        W = _pieces(W)[0]
    Wv = amx.pack_amx(W)
    assert Wv.shape[0] == (1 if bf16_weights else 3) * 64 * 128
    out = np.empty((R, N), np.float32)
    assert amx.amx_projection(x, Wv, N, np.zeros(N, np.float32), False, out, order)
    expected = _kept_sum(x, W, order, bf16_weights)
    bound = 8 * 2.0 ** -24 * (np.abs(x).astype(np.float64) @ np.abs(W).T)  # the float32 sums' rounding
    assert np.all(np.abs(out - expected) <= bound)
    if order < 3:  # (and the products left out do count: the sums are not the float32 ones)
        exact = x.astype(np.float64) @ W.T.astype(np.float64)
        assert (np.abs(out - exact) > 4 * bound).any()


@needs_amx
@pytest.mark.parametrize("order", [1, 2])
def test_weight_gradient_takes_the_products_of_its_order(rng, order):
    N, M, I = 100, 72, 40
    D = rng.standard_normal((N, M)).astype(np.float32)
    X = rng.standard_normal((N, I)).astype(np.float32)
    out = np.empty((M, I), np.float32)
    assert amx.amx_gradient(D, np.empty((N, 0), np.float32), X, out, order)
    expected = _kept_sum(D.T.copy(), X.T.copy(), order)
    bound = 8 * 2.0 ** -24 * (np.abs(D).T.astype(np.float64) @ np.abs(X))
    assert np.all(np.abs(out - expected) <= bound)
    par = np.empty_like(out)
    assert amx.amx_gradient_parallel(D, D[:, M - 8:].copy(), X, par, 2, order)  # (a second source)
    np.testing.assert_array_equal(par, out)


#: per precision, the largest error against the float64 reference a forward below may show
FORWARD_ATOL = {"high": 1e-5, "medium": 5e-3}


@needs_amx
@pytest.mark.parametrize("precision", ["high", "medium"])
@pytest.mark.parametrize("B, H, quantized", [(16, 128, False), (32, 128, False), (16, 256, True)])
def test_forward_on_tiles_at_lower_precision(rng, one_thread, monkeypatch, precision, B, H, quantized):
    # the steps on tiles: one tile of 16 rows, 32-row blocks, a quantized model's one-piece W_hh
    T, I = 40, 64
    g = ng.GRU(I, H, bidirectional=True, seed=3)
    if quantized:
        g = g.quantize("bfloat16")
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((2, B, H)).astype(np.float32)
    y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H, bidirectional=True, h0=h0)
    calls = count_calls(monkeypatch, dispatch, ["gru_forward_amx"])
    y_highest = g(x, h0)[0]
    ng.set_float32_matmul_precision(precision)
    y, h_n = g(x, h0)
    assert calls["gru_forward_amx"] == 4
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=FORWARD_ATOL[precision])
    np.testing.assert_allclose(h_n, h_ref, rtol=0, atol=FORWARD_ATOL[precision])
    assert np.abs(y - y_highest).max() > 1e-6  # the setting reached the tiles


@needs_amx
@pytest.mark.parametrize("precision, rel", [("high", 5e-5), ("medium", 2e-2)])
def test_training_on_tiles_at_lower_precision(rng, one_thread, monkeypatch, precision, rel):
    # every product of a training step on tiles (projection, steps, backward steps, weight
    # gradients, dx), each with the order the setting asks for
    T, B, I, H = 32, 24, 128, 128
    g = ng.GRU(I, H, bidirectional=True, seed=7)
    g64 = ng.GRU(I, H, bidirectional=True, dtype=np.float64)
    g64.load_state_dict({k: v.astype(np.float64) for k, v in g.state_dict().items()})
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    orders = []  # the order each tile kernel was given (the backward's before its row range)
    for name, at in (("gru_forward_amx", -1), ("amx_projection", -1), ("gru_backward_amx", -3),
                     ("amx_gradient", -1)):
        fn = getattr(dispatch, name)
        monkeypatch.setattr(dispatch, name, lambda *a, _fn=fn, _at=at: orders.append(a[_at]) or _fn(*a))
    ng.set_float32_matmul_precision(precision)
    y, _, tape = g.forward_train(x)
    dx, _, grads = g.backward(tape, dy)
    assert len(orders) == 2 + 2 + 2 + 4 + 2 and set(orders) == {dispatch.MATMUL_ORDERS[precision]}
    y64, _, tape64 = g64.forward_train(x.astype(np.float64))
    dx64, _, grads64 = g64.backward(tape64, dy.astype(np.float64))
    assert np.abs(y - y64).max() < rel
    assert np.abs(dx - dx64).max() < rel * np.abs(dx64).max()
    for k, v in grads.items():
        assert np.abs(v - grads64[k]).max() < rel * np.abs(grads64[k]).max(), k


def test_lower_orders_take_the_tiles_at_smaller_batches(monkeypatch):
    # the recurrence's rule reads the setting: fewer products pay from fewer rows
    monkeypatch.setattr(dispatch, "amx_ready", lambda: True)

    def wanted(B, H):
        return dispatch.amx_recurrence_wanted(128, B, H, 1, np.float32, True, 0, False)
    assert not wanted(8, 256) and not wanted(4, 1024) and not wanted(1, 512)
    ng.set_float32_matmul_precision("high")
    assert wanted(8, 256) and not wanted(4, 256) and wanted(12, 512) and not wanted(8, 512)
    assert not wanted(4, 64) and wanted(24, 64)  # (the default's rule still holds)
    ng.set_float32_matmul_precision("medium")
    assert wanted(1, 512) and wanted(1, 1024) and wanted(4, 256) and not wanted(2, 256)
    assert wanted(8, 128) and not wanted(4, 128) and wanted(16, 64) and not wanted(8, 64)
    assert not dispatch.amx_recurrence_wanted(128, 4, 256, 1, np.float64, True, 0, False)


def test_projection_rule_reads_the_setting(monkeypatch):
    monkeypatch.setattr(dispatch, "amx_ready", lambda: True)

    def wanted(N, I, threads=1, training=False):
        return dispatch.amx_projection_wanted(N, I, threads, np.float32, training)
    assert not wanted(128, 128) and not wanted(64, 256) and not wanted(256, 64)
    ng.set_float32_matmul_precision("high")
    assert wanted(128, 256) and wanted(128, 64) and not wanted(127, 64) and not wanted(64, 256)
    assert wanted(256, 256, 2) and not wanted(255, 256, 2) and wanted(128, 256, 2, True)
    ng.set_float32_matmul_precision("medium")
    assert wanted(64, 256) and not wanted(64, 64) and wanted(128, 64) and not wanted(32, 1024)


def test_gradient_rule_is_the_same_at_every_precision(monkeypatch):
    # where OpenBLAS would thread the GEMM the tiles take it, whatever the precision (and the threads)
    monkeypatch.setattr(dispatch, "amx_ready", lambda: True)
    wanted = dispatch.amx_gradient_wanted
    f4 = np.float32
    for precision in ("highest", "high", "medium"):
        ng.set_float32_matmul_precision(precision)
        assert wanted(2048, 3072, 1024, f4) and wanted(8192, 192, 64, f4) and wanted(511, 768, 256, f4)
        assert not wanted(512, 24, 8, f4) and not wanted(8192, 768, 256, np.float64)


@needs_amx
def test_plans_follow_the_setting(rng, one_thread, monkeypatch):
    # a model's kept plan for (T, B) is per precision: four rows at H = 256 take the tiles under
    # "medium" only, and the float32 plan is back under "highest"
    T, B, H = 40, 4, 256
    g = ng.GRU(32, H, seed=4)
    x = rng.standard_normal((T, B, 32)).astype(np.float32)
    calls = count_calls(monkeypatch, dispatch, ["gru_forward_amx"])
    y = g(x)[0]
    assert calls["gru_forward_amx"] == 0
    ng.set_float32_matmul_precision("medium")
    y_medium = g(x)[0]
    assert calls["gru_forward_amx"] == 1
    y_ref = ref_gru(x, g.state_dict(), 1, H)[0]
    np.testing.assert_allclose(y_medium, y_ref, rtol=0, atol=FORWARD_ATOL["medium"])
    ng.set_float32_matmul_precision("highest")
    np.testing.assert_array_equal(g(x)[0], y)
    assert calls["gru_forward_amx"] == 1
