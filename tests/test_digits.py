"""The recurrence's products on integer digits (numgru.kernels.amx.pack_digits and the int8 tiles).

Each row of W_hh, and each state row at every step, is scaled to 24-bit integers (the state's by a
power of two) held as three signed int8 digits; the tiles sum digit products exactly in int32 and
the three sums are put together as one float32. The digits must add up to each value's rounding,
the padding must be zero, refused rows (NaN, ±Inf, largest magnitudes outside [2⁻⁶⁰, 2⁶⁰]) must
leave the work to the other routes, the products must come within a few float32 roundings of the
largest terms of float64 sums, and each row's result must not depend on the rows beside it (so the
thread count and the batch never change a row's bits). The packing runs everywhere; the products
only where the CPU and the OS allow tiles.
"""
import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL, count_calls
from numgru.kernels import amx, dispatch
from reference import gru as ref_gru

needs_amx = pytest.mark.skipif(not amx.amx_ready(), reason="no AMX tiles on this CPU or OS")


def _unpack_digits(Wd, N, K):
    """pack_digits's layout back to (3, N, K) int64 digits, the row scales, and the padding's digits."""
    Np, Kp = amx.padded.py_func(N), amx.padded.py_func(K)
    Kq = amx.padded64.py_func(Kp)
    raw = Wd.view(np.int8)[:3 * Np * Kq].reshape(3, Np // 16, Kq // 4, 16, 4)
    d = raw.transpose(0, 1, 3, 2, 4).reshape(3, Np, Kq).astype(np.int64)
    scales = Wd[3 * Np * Kq // 2:].view(np.float32)
    assert scales.shape == (Np,)
    return d[:, :N, :K], scales, (d[:, N:, :], d[:, :, K:], scales[N:])


def _values(d, scales):
    """The values the digits stand for, in float64: s·2⁻⁸·(d₀·2¹⁶ + d₁·2⁸ + d₂) by rows."""
    n = (d[0] << 16) + (d[1] << 8) + d[2]
    return n * (scales.astype(np.float64)[:, None] / 256.0)


@pytest.mark.parametrize("N, K", [(3, 1), (48, 64), (100, 70), (33, 130)])
def test_digits_add_up_to_each_weight(rng, N, K):
    W = (rng.standard_normal((N, K)) * np.exp(rng.uniform(-5, 5, (N, 1)))).astype(np.float32)
    W[0] = 0.0  # a row of zeros: scale 0
    Wd = amx.pack_digits(W)
    assert Wd.dtype == np.uint16 and Wd.ctypes.data % 64 == 0
    np.testing.assert_array_equal(amx.pack_digits(np.asfortranarray(W)), Wd)  # any layout
    assert Wd.shape == (amx.digits_size.py_func(amx.padded.py_func(N), amx.padded.py_func(K)),)
    d, scales, (pad_rows, pad_cols, pad_scales) = _unpack_digits(Wd, N, K)
    assert not pad_rows.any() and not pad_cols.any() and not pad_scales.any()
    assert np.abs(d[0]).max() <= 127 and d[1:].min() >= -128 and d[1:].max() <= 127
    assert scales[0] == 0 and not d[:, 0].any()
    m = np.abs(W).max(axis=1).astype(np.float64)
    # each value within half a unit of the integer scale (m / DIGIT_SCALE), plus the scale's rounding
    err = np.abs(_values(d, scales[:N]) - W)
    assert np.all(err <= (0.5 / float(amx.DIGIT_SCALE) + 2.0 ** -23) * m[:, None])
    # the largest magnitude of each row lands at the top of the 24-bit range (to the scale's rounding)
    n = (d[0] << 16) + (d[1] << 8) + d[2]
    assert np.all(np.abs(np.abs(n[1:]).max(axis=1) - int(amx.DIGIT_SCALE)) <= 1)


@pytest.mark.parametrize("N, K", [(3, 1), (100, 70), (200, 33), (40, 256)])
@pytest.mark.parametrize("threads", [1, 2, 3, 20])
def test_digit_packing_on_threads_equals_one_thread(rng, N, K, threads):
    """pack_digits_into_parallel splits W's blocks of 16 rows over the threads: the same bytes (digits,
    padding and scales, every one written) and the same answer (0 for a refused row in any range: a NaN in the last
    block, a row of mixed scales under ``spread``)."""
    size = amx.digits_size.py_func(amx.padded.py_func(N), amx.padded.py_func(K))
    W = (rng.standard_normal((N, K)) * np.exp(rng.uniform(-5, 5, (N, 1)))).astype(np.float32)
    W[N // 2] = 0.0
    Wn = W.copy()
    Wn[-1, -1] = np.nan
    Wm = W.copy()
    Wm[-1] = 1e-3
    Wm[-1, 0] = 1e3
    for M in (W, Wn, Wm):
        for spread in (0.0, 64.0):
            # (different fills: a byte neither packing writes would differ)
            one, par = np.full(size, 7, np.uint16), np.full(size, 9, np.uint16)
            n1 = amx.pack_digits_into(M, one, np.float32(spread))
            assert amx.pack_digits_into_parallel(M, par, np.float32(spread), threads) == n1
            if n1:
                np.testing.assert_array_equal(par, one)
    assert amx.pack_digits_into(Wn, np.empty(size, np.uint16), np.float32(0.0)) == 0
    assert amx.pack_digits_into(Wm, np.empty(size, np.uint16), np.float32(0.0)) == 1
    assert amx.pack_digits_into(Wm, np.empty(size, np.uint16), np.float32(64.0)) == (K < 64)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0 ** 61, 2.0 ** -61])
def test_refused_rows_leave_the_packing_empty(bad):
    W = np.ones((5, 20), np.float32)
    W[3] = 0.0
    W[3, 7] = bad  # (a row whose largest magnitude is below 2⁻⁶⁰ but not zero, too)
    assert amx.pack_digits(W).shape == (0,)
    W[3, 7] = 2.0 ** 59
    assert amx.pack_digits(W).shape[0] > 0


@numba.njit
def _state_digits(x):
    """amx._digits_into on each row of x (float32 (R, K)) as the recurrence splits a state: digits
    (3, R, Kq) int8 and the row scales (−1 where refused)."""
    R, K = x.shape
    d = np.zeros((3, R, amx.padded64(amx.padded(K))), np.int8)
    s = np.empty(R, np.float32)
    for i in range(R):
        s[i] = amx._digits_into(x[i], K, d[0, i], d[1, i], d[2, i], False, np.float32(0.0))
    return d, s


def test_state_digits_scale_by_powers_of_two(rng):
    x = np.tanh(rng.standard_normal((6, 77)) * 3).astype(np.float32)
    x[1] *= np.float32(1e-9)
    x[2] = 0.0
    x[3, 5] = np.nan
    x[4] *= np.float32(2.0 ** 70)
    d, s = _state_digits(x)
    assert s[2] == 0 and not d[:, 2].any()
    assert s[3] < 0 and s[4] < 0  # NaN; a magnitude beyond 2⁶⁰
    for i in (0, 1, 5):
        mant, _ = np.frexp(s[i])
        assert mant == 0.5  # a power of two: the products by it are exact in any order
        n = (d[0, i].astype(np.int64) << 16) + (d[1, i].astype(np.int64) << 8) + d[2, i]
        m = np.abs(x[i]).max()
        assert np.all(np.abs(n[:77] * (s[i] / 256.0) - x[i]) <= 0.5 * s[i] / 256.0)
        assert float(amx.DIGIT_SCALE) / 2 < np.abs(n).max() <= float(amx.DIGIT_SCALE)
        assert m / (s[i] / 256.0) <= float(amx.DIGIT_SCALE)
        assert not n[77:].any()


@numba.njit
def _digits_product(src, nb, Wd, N):
    K = src.shape[1]
    A, A3, acc, acc3 = amx._amx_scratch(nb, K, N, nb <= 16)
    amx.tile_config(amx._tile_config())
    ok = amx._tile_rows_product(src, nb, Wd, A, A3, acc, acc3, 3)
    amx.tile_release()
    return ok, acc[:nb, :N].copy()


@needs_amx
@pytest.mark.parametrize("nb, K, N", [(1, 64, 48), (16, 256, 768), (13, 100, 300), (40, 128, 384),
                                      (37, 512, 1536),  # W's digits past L2, 32 rows a pass
                                      (20, 768, 256)])  # the backward's at H = 256: K in chunks
def test_digit_products_to_float32_accuracy(rng, nb, K, N):
    W = (rng.standard_normal((N, K)) * 0.1).astype(np.float32)
    x = np.tanh(rng.standard_normal((nb, K)) * 2).astype(np.float32)
    x[0, :K // 2] *= np.float32(1e-3)  # a row of mixed magnitudes
    ok, acc = _digits_product(x, nb, amx.pack_digits(W), N)
    assert ok
    ref = x.astype(np.float64) @ W.T.astype(np.float64)
    # each term within about 2⁻²³ of the row's largest |x| times the column's largest |w|, and the
    # sum's rounding
    mx = np.abs(x).max(axis=1, keepdims=True).astype(np.float64)
    mw = np.abs(W).max(axis=1).astype(np.float64)
    bound = 2.0 ** -22 * K * mx * mw[None, :] + 2.0 ** -23 * np.abs(ref)
    assert np.all(np.abs(acc - ref) <= bound)
    # in practice as close as float32's own product: rounding errors of random sign
    f32 = x @ W.T
    assert np.abs(acc - ref).max() <= 4 * max(np.abs(f32 - ref).max(), 2.0 ** -24 * np.abs(ref).max())


@needs_amx
@pytest.mark.parametrize("nb, K, N", [(20, 768, 256), (16, 1000, 96), (5, 300, 40)])
def test_digit_sums_are_exact(rng, nb, K, N):
    # whether the summed index runs in chunks or not (the first two), each product is the one
    # rounding of the digits' exact sums (the three of weights 2⁻⁸ᵖ, in int64) times both scales
    assert amx._digit_chunk.py_func(amx.padded64.py_func(768), 256) < 768  # (the chunks are taken)
    W = (rng.standard_normal((N, K)) * 0.1).astype(np.float32)
    x = np.tanh(rng.standard_normal((nb, K)) * 2).astype(np.float32)
    Wd = amx.pack_digits(W)
    ok, acc = _digits_product(x, nb, Wd, N)
    assert ok
    e, sw, _ = _unpack_digits(Wd, N, K)
    d, sa = _state_digits(x)
    d = d[:, :, :K].astype(np.int64)
    s0 = d[0] @ e[0].T
    s1 = d[0] @ e[1].T + d[1] @ e[0].T
    s2 = d[0] @ e[2].T + d[1] @ e[1].T + d[2] @ e[0].T
    n = ((s0 << 16) + (s1 << 8) + s2).astype(np.float32)
    want = n * sw[:N][None, :] * sa[:, None]
    np.testing.assert_array_equal(acc, want)


@needs_amx
def test_each_rows_product_stands_alone(rng):
    # a row's sums are the same bits alone, in a tile of 16, in 32-row passes, wherever it sits
    K, N = 512, 1536
    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    Wd = amx.pack_digits(W)
    x = np.tanh(rng.standard_normal((40, K))).astype(np.float32)
    _, full = _digits_product(x, 40, Wd, N)
    _, few = _digits_product(x[24:40], 16, Wd, N)
    for i in (0, 17, 39):
        _, alone = _digits_product(x[i:i + 1], 1, Wd, N)
        np.testing.assert_array_equal(alone[0], full[i])
    np.testing.assert_array_equal(few, full[24:40])


@needs_amx
def test_refused_state_row_is_reported(rng):
    W = rng.standard_normal((96, 64)).astype(np.float32)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    x[17, 3] = np.inf
    ok, _ = _digits_product(x, 20, amx.pack_digits(W), 96)
    assert not ok


@needs_amx
@pytest.mark.parametrize("B, H", [(10, 256), (12, 128), (6, 1024), (37, 384)])
def test_forwards_on_digits_match_the_reference(rng, one_thread, monkeypatch, B, H):
    # batches the digits take and the bfloat16 pieces did not (10 rows at H = 256, 6 at 1024)
    T, I = 33, 24
    g = ng.GRU(I, H, seed=B)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((1, B, H))).astype(np.float32)
    packed = []
    real = dispatch.pack_digits_into
    monkeypatch.setattr(dispatch, "pack_digits_into",
                        lambda W, out, spread: packed.append(W.shape) or real(W, out, spread))
    calls = count_calls(monkeypatch, dispatch, ["gru_forward_amx"])
    y, h_n = g(x, h0)
    assert calls["gru_forward_amx"] == 1 and packed == [(3 * H, H)]
    y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H, h0=h0)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])


@needs_amx
@pytest.mark.parametrize("scale", [1e-25, 1e25])
def test_states_the_digits_refuse_fall_back(rng, one_thread, monkeypatch, scale):
    # an initial state whose rows' largest magnitude is below 2⁻⁶⁰ or above 2⁶⁰: the digits refuse
    # it at the first step and the float32 kernels run the whole forward
    T, B, I, H = 33, 16, 8, 256
    g = ng.GRU(I, H, seed=1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = np.full((1, B, H), scale, np.float32)
    calls = count_calls(monkeypatch, dispatch, ["gru_forward_amx"])
    y, h_n = g(x, h0)
    assert calls["gru_forward_amx"] == 1
    with np.errstate(over="ignore"):
        y_ref, _ = ref_gru(x, g.state_dict(), 1, H, h0=h0)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])


@needs_amx
def test_weights_the_digits_refuse_take_the_pieces(rng, one_thread):
    # a row of W_hh of tiny values: the recurrence multiplies by W_hh's bfloat16 pieces instead
    T, B, I, H = 33, 16, 8, 256
    g = ng.GRU(I, H, seed=2)
    sd = g.state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"].copy()
    sd["weight_hh_l0"][5] = np.float32(1e-30)
    g.load_state_dict(sd)
    Wd = dispatch.recurrence_packing(g._W_hh[0])
    assert Wd.shape[0] == 3 * dispatch.padded.py_func(3 * H) * H  # the pieces
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y, _ = g(x)
    y_ref, _ = ref_gru(x, g.state_dict(), 1, H)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])


@needs_amx
def test_lower_precisions_keep_the_pieces(rng, one_thread):
    W = rng.standard_normal((768, 256)).astype(np.float32)
    n_digits = amx.digits_size.py_func(768, 256)
    assert dispatch.recurrence_packing(W).shape == (n_digits,)
    ng.set_float32_matmul_precision("high")
    try:
        assert dispatch.recurrence_packing(W).shape == (3 * 768 * 256,)
    finally:
        ng.set_float32_matmul_precision("highest")
    q = ng.GRU(256, 256, seed=0).quantize("bfloat16")
    assert dispatch.recurrence_packing(q._W_hh[0], q._amx_pieces).shape == (768 * 256,)


@needs_amx
@pytest.mark.parametrize("R", [1, 33, 300])
def test_digit_projection_to_float32_accuracy(rng, R):
    I, M = 256, 100
    x = rng.standard_normal((R, I)).astype(np.float32)
    W = (rng.standard_normal((M, I)) * 0.05).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    spread = np.float32(dispatch.AMX_DIGITS_SPREAD)
    Wd = amx.pack_digits(W, spread)
    out = np.empty((R, M), np.float32)
    assert amx.amx_digit_projection(x, Wd, M, b, True, out, spread)
    ref = x.astype(np.float64) @ W.T.astype(np.float64) + b
    f32_err = np.abs((x @ W.T + b) - ref).max()
    assert np.abs(out - ref).max() <= 4 * max(f32_err, 2.0 ** -24 * np.abs(ref).max())
    par = np.empty_like(out)
    assert amx.amx_digit_projection_parallel(x, Wd, M, b, True, par, spread, 2)
    np.testing.assert_array_equal(par, out)  # each row's bits whatever the ranges
    with pytest.raises(ValueError):
        amx.amx_digit_projection(x, amx.pack_amx(W), M, b, True, out, spread)  # not digits
    with pytest.raises(ValueError):
        amx.amx_projection(x, Wd, M, b, True, out, 3)  # digits are not pieces


@needs_amx
def test_inputs_of_mixed_scales_keep_the_pieces(rng, one_thread, monkeypatch):
    # unnormalised features (one column in the thousands): the digits refuse the rows (their largest
    # magnitude is far above their mean) and the projection runs on the bfloat16 pieces, to float32
    # accuracy; normalised inputs take the digits
    T, B, I, H = 16, 32, 256, 64
    g = ng.GRU(I, H, seed=5)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    calls = count_calls(monkeypatch, dispatch, {"amx_digit_projection": "digits", "amx_projection": "pieces"})
    y = g(x)[0]
    assert calls == {"digits": 1, "pieces": 0}
    x[..., 7] *= np.float32(2026.0)
    y = g(x)[0]
    assert calls == {"digits": 2, "pieces": 1}
    np.testing.assert_allclose(y, ref_gru(x, g.state_dict(), 1, H)[0], **TOL[np.float32])
    spread = np.float32(dispatch.AMX_DIGITS_SPREAD)
    Wd = amx.pack_digits(g.state_dict()["weight_ih_l0"], spread)
    out = np.empty((T * B, 3 * H), np.float32)
    assert not amx.amx_digit_projection(x.reshape(T * B, I), Wd, 3 * H, out[0], False, out, spread)
    W = np.ones((4, 300), np.float32)
    W[2, 0] = 100.0  # a weight row of mixed scales is refused at packing
    assert amx.pack_digits(W, spread).shape == (0,) and amx.pack_digits(W).shape[0] > 0


@needs_amx
def test_frozen_copy_keeps_the_input_digits(rng, one_thread, monkeypatch):
    T, B, I, H = 16, 32, 256, 64
    g = ng.GRU(I, H, seed=6)
    frozen = g.freeze()
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    packed = []
    real = dispatch.pack_digits
    monkeypatch.setattr(dispatch, "pack_digits", lambda W, *args: packed.append(W.shape) or real(W, *args))
    ys = [frozen(x)[0] for _ in range(3)]
    assert packed == [(3 * H, I)]
    np.testing.assert_array_equal(ys[2], ys[0])
    np.testing.assert_array_equal(ys[0], g(x)[0])


@needs_amx
@pytest.mark.parametrize("I, H, digits", [(1024, 256, True), (512, 512, False), (256, 1024, False)])
def test_long_inputs_take_the_digits_beyond_l2(rng, one_thread, monkeypatch, I, H, digits):
    # W_ih's digits beyond L2 (3·3H·I bytes over 2 MB at all three): from 1024 inputs the projection
    # still takes them (each weight read fewer times than the pieces' twice the bytes), to float32
    # accuracy; shorter rows keep the pieces
    T, B = 8, 32
    g = ng.GRU(I, H, seed=7)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    assert 3 * 3 * H * I > amx.DIGIT_WIDE_BYTES
    calls = count_calls(monkeypatch, dispatch, {"amx_digit_projection": "digits", "amx_projection": "pieces"})
    y, h_n = g(x)
    assert calls == ({"digits": 1, "pieces": 0} if digits else {"digits": 0, "pieces": 1})
    y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
