"""Products on AMX tiles (numgru.kernels.amx): float32 values split into three bfloat16 pieces, six
tile products, sums to float32 accuracy.

The pieces must add up to the value and be the nearest bfloat16 of what the pieces before them
left; the products must come within float32 rounding of float64 sums (a split that kept fewer
terms, three products, lands 36–64 times float32's rounding off them where the test allows 8);
values the split cannot take
(NaN, ±Inf, beyond 3e38) must leave the work to the float32 kernels; and forwards routed to the
tiles must match the NumPy reference and the float32 route. The kernels run only where the CPU and
the OS allow tiles (``amx.amx_ready``); the rules that route to them are checked everywhere.
"""
import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL, count_calls
from numgru.kernels import amx, dispatch
from reference import gru as ref_gru

needs_amx = pytest.mark.skipif(not amx.amx_ready(), reason="no AMX tiles on this CPU or OS")


def _nearest_bf16(v):
    """float32 v → the nearest bfloat16 (ties to even) as float32, in NumPy."""
    u = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def _unpack(Wv, N, K):
    """pack_amx's layout back to three (N, K) float32 pieces, and the padding."""
    Np, Kp = amx.padded.py_func(N), amx.padded.py_func(K)
    p = Wv.reshape(3, Np // 16, Kp // 2, 16, 2).transpose(0, 1, 3, 2, 4).reshape(3, Np, Kp)
    pieces = (p.astype(np.uint32) << 16).view(np.float32)
    return pieces[:, :N, :K], pieces[:, N:, :], pieces[:, :, K:]


def _sum_bound(x, W, b):
    """float32's rounding, 2⁻²⁴, times the sums of magnitudes |x| @ |W|.T + |b|, in float64."""
    return 2.0 ** -24 * (np.abs(x).astype(np.float64) @ np.abs(W).T.astype(np.float64) + np.abs(b))


@needs_amx
@pytest.mark.parametrize("N, K", [(3, 1), (48, 32), (100, 70)])
def test_pieces_add_up_to_each_weight(rng, N, K):
    W = (rng.standard_normal((N, K)) * np.exp(rng.uniform(-20, 20, (N, K)))).astype(np.float32)
    W[0, 0] = 0.0
    W[-1, -1] = np.float32(3.0e38)
    Wv = amx.pack_amx(W)
    assert Wv.dtype == np.uint16 and Wv.ctypes.data % 64 == 0
    pieces, pad_rows, pad_cols = _unpack(Wv, N, K)
    assert not pad_rows.any() and not pad_cols.any()
    left = W.copy()
    for p in range(3):  # each piece the nearest bfloat16 of what the ones before it left
        np.testing.assert_array_equal(pieces[p], _nearest_bf16(left))
        left = left - pieces[p]
    total = pieces.astype(np.float64).sum(axis=0)
    assert np.all(np.abs(total - W) <= 2.0 ** -26 * np.abs(W))


@needs_amx
@pytest.mark.parametrize("N, K", [(3, 1), (100, 70)])
def test_bfloat16_values_pack_as_one_piece(rng, N, K):
    # a quantized model's weights: their second and third pieces are zero, so the packing is the
    # first alone (a third of the bytes); one value off bfloat16 brings all three back
    W = _nearest_bf16(rng.standard_normal((N, K)).astype(np.float32))
    Np, Kp = amx.padded.py_func(N), amx.padded.py_func(K)
    Wv = amx.pack_amx(W)
    assert Wv.shape == (Np * Kp,) and Wv.ctypes.data % 64 == 0
    piece = Wv.reshape(Np // 16, Kp // 2, 16, 2).transpose(0, 2, 1, 3).reshape(Np, Kp)
    np.testing.assert_array_equal((piece[:N, :K].astype(np.uint32) << 16).view(np.float32), W)
    assert not piece[N:].any() and not piece[:, K:].any()
    np.testing.assert_array_equal(dispatch.amx_pieces("test", W), Wv)
    W[N // 2, K // 2] += np.float32(2.0 ** -20) * max(1.0, abs(W[N // 2, K // 2]))
    assert amx.pack_amx(W).shape == (3 * Np * Kp,)
    assert dispatch.amx_pieces("test", W).shape == (3 * Np * Kp,)


@needs_amx
@pytest.mark.parametrize("where", [(17, 5), (17, 32), (39, 16), (0, 31)])
def test_packing_refuses_values_it_cannot_split(rng, where):
    # rows split 16 values at a time, the last block of 33 holding one: a refused value anywhere in
    # a row, the partial block's included
    W = rng.standard_normal((40, 33)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf, np.float32(3.2e38)):
        Wb = W.copy()
        Wb[where] = bad
        assert amx.pack_amx(Wb).shape == (0,)


@needs_amx
@pytest.mark.parametrize("N, K", [(3, 1), (100, 70), (200, 33)])
@pytest.mark.parametrize("threads", [1, 2, 3, 20])
def test_packing_on_threads_equals_one_thread(rng, N, K, threads):
    """pack_amx_into_parallel splits W's blocks of 16 rows over the threads: the same bytes and the
    same count of pieces (3; 1 for bfloat16 values, though only some ranges see a value off them; 0
    for a refused value in any range)."""
    size = 3 * amx.padded.py_func(N) * amx.padded.py_func(K)
    W = rng.standard_normal((N, K)).astype(np.float32)
    Wb = _nearest_bf16(W)
    Wb1 = Wb.copy()
    Wb1[-1, -1] = np.float32(1.0 + 2.0 ** -20)  # off bfloat16 in the last block only
    Wn = W.copy()
    Wn[-1, 0] = np.nan
    for M in (W, Wb, Wb1, Wn):
        one, par = np.full(size, 7, np.uint16), np.full(size, 7, np.uint16)
        n1 = amx.pack_amx_into(M, one)
        assert amx.pack_amx_into_parallel(M, par, threads) == n1
        if n1:
            np.testing.assert_array_equal(par[:n1 * size // 3], one[:n1 * size // 3])
    assert amx.pack_amx_into(Wb1, np.empty(size, np.uint16)) == 3
    assert amx.pack_amx_into(Wn, np.empty(size, np.uint16)) == 0


@needs_amx
def test_both_roundings_split_alike(rng, monkeypatch):
    # AVX512-BF16's conversion where LLVM lowers it for this CPU, else an integer sequence on the
    # bits: the same pieces for every normal value, the partial 16-value block's included
    def split(native):
        monkeypatch.setattr(amx, "_native_rounding", lambda: native)

        @numba.njit(cache=False)
        def run(v, p):
            return amx._split_into(v.reshape(1, v.shape[0]), 0, v.shape[0], p.reshape(3, 1, p.shape[1]), 0)
        return run

    v = (rng.standard_normal(37) * np.exp(rng.uniform(-30, 30, 37))).astype(np.float32)
    v[:4] = [0.0, -0.0, 1.0 + 2.0 ** -8, np.float32(3.0e38)]
    pieces = []
    for native in (True, False):
        p = np.full((3, 48), 7, np.uint16)
        assert split(native)(v, p)
        pieces.append(p)
    np.testing.assert_array_equal(pieces[0], pieces[1])
    assert not pieces[0][:, 37:].any()  # the block past n written zero
    got = (pieces[0][:, :37].astype(np.uint32) << 16).view(np.float32).astype(np.float64).sum(0)
    assert np.all(np.abs(got - v) <= 2.0 ** -26 * np.abs(v))
    bad = v.copy()
    bad[36] = np.nan  # the partial block
    assert not split(False)(bad, np.zeros((3, 48), np.uint16))


@needs_amx
def test_subnormal_values_count_as_zero(rng):
    # the tiles (and AVX512-BF16's rounding) read subnormal bfloat16 as zero: a product loses at
    # most 2⁻¹²⁶ times the other factor per term, nothing more
    x = rng.standard_normal((33, 40)).astype(np.float32)
    W = rng.standard_normal((20, 40)).astype(np.float32)
    W[3, :8] = np.float32(2.0 ** -130)
    W[5, 8:16] = np.float32(-1.5 * 2.0 ** -127)
    x[7, 20:] = np.float32(2.0 ** -135)
    out = np.empty((33, 20), np.float32)
    assert amx.amx_projection(x, amx.pack_amx(W), 20, np.zeros(20, np.float32), False, out, 3)
    want = x.astype(np.float64) @ W.T.astype(np.float64)
    loss = 2.0 ** -126 * (np.abs(x).astype(np.float64) @ (np.abs(W) < 2.0 ** -126).T
                          + (np.abs(x) < 2.0 ** -126) @ np.abs(W).T.astype(np.float64))
    assert np.all(np.abs(out - want) <= 8 * _sum_bound(x, W, 0.0) + loss)


@needs_amx
@pytest.mark.parametrize("R, N, K, bias", [(1, 3, 1, True), (33, 300, 70, True), (64, 96, 128, False),
                                           (300, 768, 256, True)])
@pytest.mark.parametrize("bf16_weights", [False, True])
def test_projection_within_float32_rounding(rng, R, N, K, bias, bf16_weights):
    # (bfloat16 weights: one piece, three products, the same bound)
    x = rng.standard_normal((R, K)).astype(np.float32)
    W = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    if bf16_weights:
        W = _nearest_bf16(W)
    b = rng.standard_normal(N).astype(np.float32)
    out = np.full((R, N), np.nan, np.float32)
    assert amx.amx_projection(x, amx.pack_amx(W), N, b, bias, out, 3)
    ref = x.astype(np.float64) @ W.T.astype(np.float64) + (b if bias else 0)
    bound = _sum_bound(x, W, b if bias else np.zeros(N))
    err = np.abs(out - ref)
    assert np.all(err <= 8 * bound), (err / bound).max()
    # the bound is tight enough to tell: float32's own GEMM meets it, three products would not
    assert np.all(np.abs(x @ W.T + (b if bias else 0) - ref) <= 8 * bound)


@needs_amx
def test_projection_leaves_refused_rows_to_float32(rng, monkeypatch):
    # NaN, ±Inf and values past the split's limit: the kernel says so, the dispatch recomputes in
    # float32 and NaN / Inf propagate as there
    monkeypatch.setattr(dispatch, "AMX_MIN_ROWS", 1)
    monkeypatch.setattr(dispatch, "AMX_MIN_INPUTS", 1)
    monkeypatch.setattr(dispatch, "thread_count", lambda: 1)
    W = rng.standard_normal((30, 20)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    for bad in (np.nan, np.inf, np.float32(3.1e38)):
        x = rng.standard_normal((40, 20)).astype(np.float32)
        x[35, 3] = bad
        assert not amx.amx_projection(x, amx.pack_amx(W), 30, b, True, np.empty((40, 30), np.float32), 3)
        got = dispatch.input_projection(x, W, b)
        with np.errstate(invalid="ignore", over="ignore"):
            want = (x.astype(np.float64) @ W.T.astype(np.float64) + b).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert np.array_equal(np.isfinite(got), np.isfinite(want))


@needs_amx
def test_projection_checks_its_shapes(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    Wv = amx.pack_amx(rng.standard_normal((6, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="shapes"):
        amx.amx_projection(x, Wv[:-1], 6, np.zeros(6, np.float32), True, np.empty((4, 6), np.float32), 3)
    with pytest.raises(ValueError, match="shapes"):
        amx.amx_projection(x, Wv, 6, np.zeros(5, np.float32), True, np.empty((4, 6), np.float32), 3)


def _tile_calls(monkeypatch):
    """Count the AMX forwards and projections the dispatch runs (one thread and several)."""
    return count_calls(monkeypatch, dispatch, {
        "gru_forward_amx": "steps", "amx_projection": "projection", "gru_forward_amx_rows": "rows",
        "amx_projection_parallel": "projection_parallel", "gru_backward_amx": "backward",
        "gru_backward_amx_rows": "backward_rows", "amx_gradient": "gradient",
        "amx_gradient_parallel": "gradient_parallel", "amx_digit_projection": "digit_projection",
        "amx_digit_projection_parallel": "digit_projection_parallel"})


@needs_amx
@pytest.mark.parametrize("layout", ["uni", "bi", "backwards"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_on_tiles_matches_reference(rng, one_thread, monkeypatch, layout, bias):
    # T·B = 1024 rows, B = 32, I = 130: the projection and the steps on tiles; two layers
    T, B, I, H = 32, 32, 130, 48
    g = ng.GRU(I, H, 2, bias=bias, bidirectional=layout == "bi", go_backwards=layout == "backwards",
               seed=4)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    D = 2 if layout == "bi" else 1
    h0 = rng.standard_normal((2 * D, B, H)).astype(np.float32)
    calls = _tile_calls(monkeypatch)
    y, h_n = g(x, h0)
    assert calls["steps"] == 2 * D and calls["projection"] >= D  # (layer 2's inputs: D·H = 48 or 96)
    xt = x[::-1] if layout == "backwards" else x
    y_ref, h_ref = ref_gru(xt, g.state_dict(), 2, H, bidirectional=layout == "bi", h0=h0)
    if layout == "backwards":
        y_ref = y_ref[::-1]
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    # the float32 kernels agree to rounding
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    y32, h32 = ng.GRU(I, H, 2, bias=bias, bidirectional=layout == "bi",
                      go_backwards=layout == "backwards", seed=4)(x, h0)
    np.testing.assert_allclose(y, y32, rtol=0, atol=2e-6)
    np.testing.assert_allclose(h_n, h32, rtol=0, atol=2e-6)


@needs_amx
def test_forward_on_tiles_with_the_projection_interleaved(rng, one_thread, monkeypatch):
    # steps of projection a chunk at a time inside the AMX kernel (the last chunk shorter), frozen
    # weights too
    monkeypatch.setattr(dispatch, "INTERLEAVE_MIN_BYTES", 0)
    monkeypatch.setattr(dispatch, "INTERLEAVE_CHUNK_BYTES", 3 * 32 * 3 * 40 * 4)
    T, B, I, H = 35, 32, 24, 40
    g = ng.GRU(I, H, bidirectional=True, seed=1)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    assert dispatch.interleave_steps(T, B, 3 * H, I, 4) == 3
    calls = _tile_calls(monkeypatch)
    y, h_n = g(x)
    assert calls["steps"] == 2
    y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H, bidirectional=True)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    np.testing.assert_allclose(g.freeze()(x)[0], y, rtol=0, atol=1e-6)
    assert calls["steps"] == 4


def _bidirectional_forward(rng, monkeypatch, T, B, I, H, seed):
    """A bidirectional layer's forward with h0, the tile routes counted and the result checked
    against the NumPy reference: (g, x, h0, calls)."""
    g = ng.GRU(I, H, bidirectional=True, seed=seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((2, B, H)).astype(np.float32)
    calls = _tile_calls(monkeypatch)
    y, h_n = g(x, h0)
    y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H, bidirectional=True, h0=h0)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    return g, x, h0, calls


@needs_amx
@pytest.mark.parametrize("B", [14, 16])
def test_forward_on_tiles_sixteen_rows(rng, one_thread, monkeypatch, B):
    # one tile of 16 rows (the rows past B zero), each piece's sums apart; H = 100 pads W_hh's
    # pieces to 320 × 128
    calls = _bidirectional_forward(rng, monkeypatch, 32, B, 20, 100, seed=5)[-1]
    assert calls["steps"] == 2


@needs_amx
@pytest.mark.parametrize("B", [8, 32])
def test_quantized_forward_on_tiles(rng, one_thread, monkeypatch, B):
    # a quantized model's W_hh packs as one piece: from 8 rows (one tile of 16) it runs on the
    # tiles, to float32 accuracy for the rounded weights; the copy keeps its packings
    T, I, H = 32, 20, 256
    q = ng.GRU(I, H, bidirectional=True, seed=8).quantize("bfloat16")
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((2, B, H)).astype(np.float32)
    packed = []
    real = dispatch.pack_amx
    monkeypatch.setattr(dispatch, "pack_amx", lambda W: packed.append(W.shape) or real(W))
    calls = _tile_calls(monkeypatch)
    y, h_n = q(x, h0)
    np.testing.assert_array_equal(q(x, h0)[0], y)
    assert calls["steps"] == 4 and packed == [(3 * H, H)] * 2
    y_ref, h_ref = ref_gru(x, q.state_dict(), 1, H, bidirectional=True, h0=h0)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    np.testing.assert_allclose(q.freeze()(x, h0)[0], y, rtol=0, atol=1e-6)
    assert calls["steps"] == 6


@needs_amx
def test_quantized_forward_on_tiles_leaves_nan_to_float32(rng, one_thread, monkeypatch):
    # a NaN and an Inf in the input: the one-piece tiles decline, and the result is the float32
    # model's on the rounded weights, NaN where it has NaN
    T, B, I, H = 32, 16, 20, 256
    q = ng.GRU(I, H, seed=10).quantize("bfloat16")
    r = ng.GRU(I, H)
    r.load_state_dict(q.state_dict())
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[5, 3, 7] = np.nan
    x[9, 11, 2] = np.inf
    calls = _tile_calls(monkeypatch)
    y, h_n = q(x)
    assert calls["steps"] == 1
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    y_r, h_r = r(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_r))
    assert np.isnan(y[:, 3]).any() and not np.isnan(np.delete(y, [3, 11], axis=1)).any()
    np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(y_r), **TOL[np.float32])
    np.testing.assert_allclose(np.nan_to_num(h_n), np.nan_to_num(h_r), **TOL[np.float32])


@needs_amx
@pytest.mark.parametrize("B", [64, 70])
def test_forward_on_tiles_two_threads(rng, two_threads, monkeypatch, B):
    # ranges of rows on each thread's tiles (70 rows: 48 and 22), the projection's rows split too
    H = 128
    g, x, h0, calls = _bidirectional_forward(rng, monkeypatch, 32, B, 130, H, seed=6)
    assert calls["rows"] == 2 and calls["projection_parallel"] == 2
    # a NaN: that call's tiles decline, the float32 routes give the rest exactly as before
    x[4, 9, 0] = np.nan
    y, _ = g(x, h0)
    assert np.isnan(y[:, 9]).any() and not np.isnan(np.delete(y, 9, axis=1)).any()
    y_ref, _ = ref_gru(np.delete(x, 9, axis=1), g.state_dict(), 1, H, bidirectional=True,
                       h0=np.delete(h0, 9, axis=1))
    np.testing.assert_allclose(np.delete(y, 9, axis=1), y_ref, **TOL[np.float32])


@needs_amx
def test_forward_on_tiles_leaves_nan_to_float32(rng, one_thread, monkeypatch):
    # a NaN in the input reaches the state: the tiles decline and the float32 kernels give the
    # result, NaN only where it belongs
    T, B, I, H = 32, 32, 128, 32
    g = ng.GRU(I, H, seed=2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[5, 3, 7] = np.nan
    calls = _tile_calls(monkeypatch)
    y, h_n = g(x)
    assert calls["steps"] == 1
    assert np.isnan(y[5:, 3]).all() and not np.isnan(np.delete(y, 3, axis=1)).any()
    assert not np.isnan(y[:5]).any()
    y_ref, _ = ref_gru(np.delete(x, 3, axis=1), g.state_dict(), 1, H)
    np.testing.assert_allclose(np.delete(y, 3, axis=1), y_ref, **TOL[np.float32])


def test_tile_rules(monkeypatch):
    monkeypatch.setattr(dispatch, "amx_ready", lambda: True)
    f4, f8 = np.dtype(np.float32), np.dtype(np.float64)
    assert dispatch.amx_projection_wanted(256, 128, 1, f4, False)
    assert not dispatch.amx_projection_wanted(255, 128, 1, f4, False)
    assert dispatch.amx_projection_wanted(80, 256, 1, f4, False)  # one thread: fewer rows, 192 < I ≤ 512
    assert not dispatch.amx_projection_wanted(511, 256, 2, f4, False)  # (not several threads)
    assert not dispatch.amx_projection_wanted(79, 256, 1, f4, False)
    assert not dispatch.amx_projection_wanted(255, 256, 1, f4, True)  # (not in training)
    assert dispatch.amx_projection_wanted(64, 512, 1, f4, False)
    assert not dispatch.amx_projection_wanted(255, 192, 1, f4, False)
    assert not dispatch.amx_projection_wanted(255, 1024, 1, f4, False)
    frozen, quantized = dispatch.FrozenPieces(), dispatch.FrozenPieces(bfloat16=True)
    # kept packings (a frozen or quantized model's) pay from fewer rows, on one thread
    assert dispatch.amx_projection_wanted(16, 256, 1, f4, False, pieces=frozen)
    assert not dispatch.amx_projection_wanted(15, 256, 1, f4, False, pieces=frozen)
    assert dispatch.amx_projection_wanted(32, 1024, 1, f4, False, pieces=frozen)
    assert not dispatch.amx_projection_wanted(31, 1024, 1, f4, False, pieces=frozen)
    assert not dispatch.amx_projection_wanted(255, 128, 1, f4, False, pieces=frozen)
    assert not dispatch.amx_projection_wanted(79, 256, 2, f4, False, pieces=frozen)
    assert dispatch.amx_projection_wanted(32, 64, 1, f4, False, pieces=quantized)
    assert not dispatch.amx_projection_wanted(31, 64, 1, f4, False, pieces=quantized)
    assert dispatch.amx_projection_wanted(64, 256, 2, f4, False, pieces=quantized)  # 32 rows a thread
    assert not dispatch.amx_projection_wanted(63, 256, 2, f4, False, pieces=quantized)
    assert not dispatch.amx_projection_wanted(255, 256, 1, f4, True, pieces=quantized)
    assert dispatch.amx_projection_wanted(512, 64, 1, f4, False)  # narrow inputs: more rows
    assert not dispatch.amx_projection_wanted(511, 64, 1, f4, False)
    assert not dispatch.amx_projection_wanted(8192, 63, 1, f4, False)  # too few inputs to repay
    assert not dispatch.amx_projection_wanted(4096, 256, 1, f8, False)
    assert dispatch.amx_projection_wanted(4096, 256, 1, f4, True)
    assert dispatch.amx_projection_wanted(256, 256, 2, f4, True)  # training: whatever the threads
    assert not dispatch.amx_projection_wanted(255, 256, 1, f4, True)
    assert dispatch.amx_projection_wanted(512, 128, 2, f4, False)  # two ranges of 256 rows
    assert not dispatch.amx_projection_wanted(511, 128, 2, f4, False)
    assert dispatch.amx_rows_chunks(32, 64, 256, 2, f4, True, 0, False) == 2
    assert dispatch.amx_rows_chunks(32, 63, 256, 2, f4, True, 0, False) == 0  # 31 rows a range
    assert dispatch.amx_rows_chunks(32, 64, 256, 1, f4, True, 0, False) == 0
    assert dispatch.amx_rows_chunks(32, 128, 256, 4, f4, True, 0, False) == 4
    assert dispatch.amx_rows_chunks(32, 128, 256, 2, f4, False, 0, False) == 0
    assert dispatch.amx_rows_chunks(32, 128, 64, 2, f4, True, 0, False) == 0  # the rows route as fast
    assert dispatch.amx_recurrence_wanted(32, 24, 32, 1, f4, True, 0, False)
    assert dispatch.amx_recurrence_wanted(128, 16, 256, 1, f4, True, 0, False)  # one tile of 16 rows
    assert not dispatch.amx_recurrence_wanted(128, 16, 64, 1, f4, True, 0, False)
    # W_hh's integer digits from H = 128: fewer rows as H grows
    for H, rows in ((128, 12), (256, 10), (384, 8), (512, 8), (1024, 6), (4096, 6)):
        assert dispatch.amx_recurrence_wanted(128, rows, H, 1, f4, True, 0, False), H
        assert not dispatch.amx_recurrence_wanted(128, rows - 1, H, 1, f4, True, 0, False), H
        assert dispatch.digits_wanted(H, 3) and not dispatch.digits_wanted(H, 2)
    assert not dispatch.digits_wanted(127, 3) and not dispatch.digits_wanted(dispatch.DIGIT_MAX_K + 1, 3)
    assert not dispatch.amx_recurrence_wanted(128, 12, 96, 1, f4, True, 0, False)
    assert not dispatch.amx_recurrence_wanted(31, 64, 256, 1, f4, True, 0, False)  # packing unpaid
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 1, f8, True, 0, False)
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 1, np.dtype(np.uint16), True, 0, False)
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 1, f4, False, 0, False)
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 1, f4, True, 1, False)
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 1, f4, True, 0, True)
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 2, f4, True, 0, False)
    # bfloat16 values (one piece): a tile of 16 rows from 8 rows, at any H from 256
    assert dispatch.amx_recurrence_wanted(128, 8, 1024, 1, f4, True, 0, False, bf16_values=True)
    assert dispatch.amx_recurrence_wanted(128, 16, 256, 1, f4, True, 0, False, bf16_values=True)
    assert not dispatch.amx_recurrence_wanted(128, 7, 1024, 1, f4, True, 0, False, bf16_values=True)
    assert not dispatch.amx_recurrence_wanted(128, 8, 128, 1, f4, True, 0, False, bf16_values=True)
    assert not dispatch.amx_recurrence_wanted(128, 8, 256, 2, f4, True, 0, False, bf16_values=True)
    assert dispatch.amx_gradient_wanted(512, 768, 256, f4)
    assert dispatch.amx_gradient_wanted(8192, 384, 128, f4)
    # where OpenBLAS would spread the GEMM over its threads the tiles take it too, faster or not
    # (its idle workers spin on the cores Numba's threads then wait for)
    assert dispatch.amx_gradient_wanted(511, 768, 256, f4)
    assert dispatch.amx_gradient_wanted(8192, 192, 64, f4)
    assert dispatch.amx_gradient_wanted(2048, 3072, 1024, f4)
    assert dispatch.amx_gradient_wanted(8192, 6144, 2048, f4)
    assert dispatch.amx_gradient_wanted(4096, 3072, 1024, f4)
    assert dispatch.amx_gradient_wanted(4096, 96, 32, f4)
    assert not dispatch.amx_gradient_wanted(512, 24, 8, f4)  # one thread in OpenBLAS, and faster there
    assert not dispatch.amx_gradient_wanted(256, 32, 32, f4)
    assert not dispatch.amx_gradient_wanted(8192, 768, 256, f8)
    # too few rows to repay the tiles' fixed cost: the panel block (sums alike on any threads)
    assert dispatch.amx_gradient_wanted(256, 768, 256, f4) and dispatch.amx_gradient_wanted(1024, 1536, 1024, f4)
    for N, M, I in ((255, 768, 256), (160, 1536, 512), (1023, 1536, 1024), (160, 3072, 1024)):
        assert not dispatch.amx_gradient_wanted(N, M, I, f4) and dispatch.few_rows_on_panels(N, M, I, f4)
    assert not dispatch.few_rows_on_panels(256, 768, 256, f4)
    assert not dispatch.few_rows_on_panels(160, 32, 32, f4)  # one thread in OpenBLAS
    assert not dispatch.few_rows_on_panels(160, 1536, 512, f8)
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    assert not dispatch.few_rows_on_panels(160, 1536, 512, f4)
    assert not dispatch.amx_projection_wanted(4096, 256, 1, f4, False)
    assert not dispatch.amx_gradient_wanted(8192, 768, 256, f4)
    assert not dispatch.amx_recurrence_wanted(128, 64, 256, 1, f4, True, 0, False)


def test_environment_turns_tiles_off(monkeypatch):
    monkeypatch.setenv("NUMGRU_AMX", "0")
    assert amx._ask_for_tiles() is False


@needs_amx
@pytest.mark.parametrize("N, M, I, M2", [(1, 1, 1, 0), (37, 70, 45, 0), (600, 100, 130, 0),
                                         (1101, 384, 128, 0), (37, 70, 45, 23), (1101, 384, 128, 128),
                                         (64, 40, 16, 40)])
def test_weight_gradient_within_float32_rounding(rng, N, M, I, M2):
    # G.T @ X over N rows, a block of rows at a time (1101: five blocks of 256 and an odd row); G is
    # D's first M − M2 columns and then D2 (reset_after's dW_hh): D's other columns are not read
    G = rng.standard_normal((N, M)).astype(np.float32)
    X = rng.standard_normal((N, I)).astype(np.float32)
    D = G.copy()
    D[:, M - M2:] = np.nan
    D2 = np.ascontiguousarray(G[:, M - M2:])
    out = np.full((M, I), np.nan, np.float32)
    assert amx.amx_gradient(D, D2, X, out, 3)
    ref = G.T.astype(np.float64) @ X.astype(np.float64)
    bound = 2.0 ** -24 * (np.abs(G).T.astype(np.float64) @ np.abs(X).astype(np.float64))
    err = np.abs(out - ref)
    assert np.all(err <= 8 * bound), (err / bound).max()
    # on two threads (ranges of columns) every sum runs as on one
    par = np.full((M, I), np.nan, np.float32)
    assert amx.amx_gradient_parallel(D, D2, X, par, 2, 3)
    np.testing.assert_array_equal(par, out)
    # the BLAS route takes the same columns
    np.testing.assert_allclose(dispatch.weight_gradient(D, X, np.empty((M, I), np.float32), D2)
                               if M2 else dispatch.weight_gradient(G, X, np.empty((M, I), np.float32)),
                               ref, rtol=1e-4, atol=1e-4)


@needs_amx
def test_weight_gradient_leaves_refused_values_to_float32(rng, monkeypatch):
    monkeypatch.setattr(dispatch, "BLAS_THREADED_MNK", 0)
    none = np.empty((50, 0), np.float32)
    for bad, where in ((np.nan, "D"), (np.inf, "X"), (-np.inf, "D"), (np.float32(3.1e38), "X"), (np.nan, "D2")):
        D = rng.standard_normal((50, 20)).astype(np.float32)
        X = rng.standard_normal((50, 9)).astype(np.float32)
        D2 = rng.standard_normal((50, 7)).astype(np.float32) if where == "D2" else none
        if where == "D":  # the last row (a pair's second) and the 16-value blocks' partial one
            D[49, 17] = bad
        elif where == "D2":
            D2[30, 6] = bad
        else:
            X[41, 3] = bad
        out = np.full((20, 9), 7.0, np.float32)
        assert not amx.amx_gradient(D, D2, X, out, 3) and (out == 7.0).all()
        assert not amx.amx_gradient_parallel(D, D2, X, out, 2, 3) and (out == 7.0).all()
        got = dispatch.weight_gradient(D, X, out, D2 if D2.shape[1] else None)
        G = np.concatenate([D[:, :20 - D2.shape[1]], D2], axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            want = (G.T.astype(np.float64) @ X.astype(np.float64)).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
    with pytest.raises(ValueError, match="shapes"):
        amx.amx_gradient(D, none, X[:-1], np.empty((20, 9), np.float32), 3)
    with pytest.raises(ValueError, match="shapes"):
        amx.amx_gradient(D, none, X, np.empty((20, 8), np.float32), 3)
    with pytest.raises(ValueError, match="shapes"):
        amx.amx_gradient(D, none[:-1], X, np.empty((20, 9), np.float32), 3)
    with pytest.raises(ValueError, match="shapes"):
        amx.amx_gradient(D[:, :10].copy(), np.empty((50, 5), np.float32), X, np.empty((20, 9), np.float32),
                         3)


@needs_amx
def test_gradient_pair_equals_two_gradients(rng, two_threads, monkeypatch):
    # a layer's dW_ih and dW_hh side by side on two threads, each as one thread sums it; a refused
    # value sends only its own gradient to the other routes
    N, M, I, H = 600, 96, 40, 32
    D = rng.standard_normal((N, M)).astype(np.float32)
    X = rng.standard_normal((N, I)).astype(np.float32)
    hp = rng.standard_normal((N, H)).astype(np.float32)
    dn = rng.standard_normal((N, H)).astype(np.float32)
    none = np.empty((N, 0), np.float32)
    want = [np.empty((M, I), np.float32), np.empty((M, H), np.float32)]
    assert amx.amx_gradient(D, none, X, want[0], 3) and amx.amx_gradient(D, dn, hp, want[1], 3)
    got = [np.full_like(w, np.nan) for w in want]
    assert amx.amx_gradient_pair(D, none, X, got[0], D, dn, hp, got[1], 3).all()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    bad = dn.copy()
    bad[7, 3] = np.nan
    got = [np.full_like(w, 7.0) for w in want]
    assert list(amx.amx_gradient_pair(D, none, X, got[0], D, bad, hp, got[1], 3)) == [True, False]
    np.testing.assert_array_equal(got[0], want[0])
    assert (got[1] == 7.0).all()
    # the dispatch: the pair on two threads, the refused gradient through BLAS (NaN where G has it)
    monkeypatch.setattr(dispatch, "BLAS_THREADED_MNK", 0)
    calls = _tile_calls(monkeypatch)
    pair = count_calls(monkeypatch, dispatch, ["amx_gradient_pair"])
    out = [np.empty_like(w) for w in want]
    dispatch.weight_gradient_pair((D, X, out[0], None), (D, hp, out[1], bad))
    assert pair["amx_gradient_pair"] == 1 and calls["gradient_parallel"] == 1  # (the refused one tried
    # its tiles again)
    np.testing.assert_array_equal(out[0], want[0])
    assert np.isnan(out[1][M - H + 3]).all() and np.isfinite(np.delete(out[1], M - H + 3, axis=0)).all()
    dispatch.weight_gradient_pair((D, X, out[0], None), (D, hp, out[1], dn))
    assert pair["amx_gradient_pair"] == 2
    for g, w in zip(out, want):
        np.testing.assert_array_equal(g, w)


def _gradient_error(grads, ref):
    """Each gradient's largest difference to ref's, over ref's largest magnitude."""
    return {k: np.abs(grads[k] - ref[k]).max() / np.abs(ref[k]).max() for k in ref}


@needs_amx
@pytest.mark.parametrize("bf16_weights", [False, True])
def test_training_on_tiles_matches_float64(rng, one_thread, monkeypatch, bf16_weights):
    # T·B = 768 rows, I = H = 128, two bidirectional layers: the projections, the forward's steps
    # (the tape), the backward's steps, the weight gradients and dx (the second direction's added)
    # on tiles; weights holding bfloat16 values pack as one piece (W_ih, W_hh and their transposes)
    T, B, I, H = 32, 24, 128, 128
    g = ng.GRU(I, H, 2, bidirectional=True, seed=7)
    if bf16_weights:
        g.load_state_dict({k: _nearest_bf16(v) for k, v in g.state_dict().items()})
    g64 = ng.GRU(I, H, 2, bidirectional=True, dtype=np.float64)
    g64.load_state_dict({k: v.astype(np.float64) for k, v in g.state_dict().items()})
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((4, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    dh_n = rng.standard_normal((4, B, H)).astype(np.float32)
    calls = _tile_calls(monkeypatch)
    y, h_n, tape = g.forward_train(x, h0)
    dx, dh0, grads = g.backward(tape, dy, dh_n)
    # the forward's and dx's: on W's integer digits where 256 values or more are summed (the second
    # layer's forward, 2H inputs; every dx, 3H gate gradients), the first layer's on its pieces
    assert calls["steps"] == 4 and calls["projection"] == 2 and calls["digit_projection"] == 2 + 4
    assert calls["backward"] == 4 and calls["gradient"] == 8
    y64, h64, tape64 = g64.forward_train(x.astype(np.float64), h0.astype(np.float64))
    dx64, dh064, grads64 = g64.backward(tape64, dy.astype(np.float64), dh_n.astype(np.float64))
    np.testing.assert_allclose(y, y64, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h64, **TOL[np.float32])
    np.testing.assert_allclose(dx, dx64, rtol=0, atol=2e-5 * np.abs(dx64).max())
    np.testing.assert_allclose(dh0, dh064, rtol=0, atol=2e-5 * np.abs(dh064).max())
    on_tiles = _gradient_error(grads, grads64)
    assert max(on_tiles.values()) < 1e-5, on_tiles
    # as close as the float32 kernels come
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    y32, _, tape32 = g.forward_train(x, h0)
    grads32 = g.backward(tape32, dy, dh_n)[2]
    assert calls["steps"] == 4 and calls["backward"] == 4 and calls["gradient"] == 8
    in_float32 = _gradient_error(grads32, grads64)
    for k in grads:
        assert on_tiles[k] <= 4 * in_float32[k] + 1e-7, (k, on_tiles[k], in_float32[k])


@needs_amx
def test_training_on_tiles_leaves_nan_to_float32(rng, one_thread, monkeypatch):
    # a NaN in the input: the forward's tiles decline (the float32 kernels write the tape), the
    # backward's and the weight gradients' tiles decline where the gradients hold NaN
    T, B, I, H = 32, 24, 128, 128
    g = ng.GRU(I, H, seed=8)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[3, 5, 2] = np.nan
    y, _, tape = g.forward_train(x)
    dx, _, grads = g.backward(tape, np.ones_like(y))
    monkeypatch.setattr(dispatch, "amx_ready", lambda: False)
    y32, _, tape32 = g.forward_train(x)
    dx32, _, grads32 = g.backward(tape32, np.ones_like(y32))
    assert np.array_equal(np.isnan(y), np.isnan(y32)) and np.isnan(y[3:, 5]).all()
    assert np.array_equal(np.isnan(dx), np.isnan(dx32))
    for k in grads:
        assert np.array_equal(np.isnan(grads[k]), np.isnan(grads32[k])), k


_TILE_THREADS_PROBE = r"""
import sys, numba, numpy as np, numgru as ng
from numgru.kernels import dispatch
numba.set_num_threads(int(sys.argv[1]))
calls = {}
for name in ("gru_forward_amx", "gru_forward_amx_rows", "gru_backward_amx", "gru_backward_amx_rows",
             "amx_gradient", "amx_gradient_parallel", "amx_gradient_pair", "amx_projection",
             "amx_projection_parallel", "amx_digit_projection", "amx_digit_projection_parallel"):
    def counted(*args, _f=getattr(dispatch, name), _n=name):
        calls[_n] = calls.get(_n, 0) + 1
        return _f(*args)
    setattr(dispatch, name, counted)
g = ng.GRU(128, 128, bidirectional=True, seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 70, 128)).astype(np.float32)
y, h, tape = g.forward_train(x)
dx, dh0, grads = g.backward(tape, np.ones_like(y), np.ones_like(h))
np.savez(sys.argv[2], dx=dx, dh0=dh0, y=y, h=h, **grads)
print(sorted(calls.items()))
"""


@needs_amx
def test_training_on_tiles_identical_with_1_and_2_threads(tmp_path):
    # B = 70: two threads run the forward's and the backward's steps in ranges of 64 and 6 rows, the
    # projection in ranges too, and each direction's two weight gradients side by side; every sum is
    # the same as on one thread
    import ast
    import os
    import subprocess
    import sys
    outs, routes = [], []
    for n in (1, 2):
        path = tmp_path / f"g{n}.npz"
        done = subprocess.run([sys.executable, "-c", _TILE_THREADS_PROBE, str(n), str(path)], check=True,
                              timeout=600, capture_output=True, text=True,
                              env=dict(os.environ, OPENBLAS_NUM_THREADS=str(n)))
        outs.append(np.load(path))
        routes.append(dict(ast.literal_eval(done.stdout.strip().splitlines()[-1])))
    assert routes[0].get("gru_forward_amx") == 2 and routes[0].get("amx_gradient") == 4
    assert routes[1].get("gru_forward_amx_rows") == 2 and routes[1].get("amx_gradient_pair") == 2
    # the forward's two and dx's two (on W's integer digits where there are 2H = 256 inputs)
    assert routes[1].get("amx_projection_parallel", 0) + routes[1].get("amx_digit_projection_parallel", 0) == 4
    assert routes[0].get("gru_backward_amx") == routes[1].get("gru_backward_amx_rows") == 2
    for k in outs[0].files:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)


@needs_amx
@pytest.mark.parametrize("N, K", [(3, 1), (48, 32), (100, 70)])
def test_packing_into_scratch_matches(rng, N, K):
    # a caller's scratch (the plain model's per-call packings) holds what pack_amx gives, old
    # contents and padding overwritten
    W = rng.standard_normal((N, K)).astype(np.float32)
    want = amx.pack_amx(W)
    got = dispatch.amx_pieces("test", W)
    assert got.ctypes.data % 64 == 0
    np.testing.assert_array_equal(got, want)
    got[:] = 0xFFFF
    np.testing.assert_array_equal(dispatch.amx_pieces("test", W), want)
    W[N // 2, K // 2] = np.nan
    assert dispatch.amx_pieces("test", W).shape == (0,)
    with pytest.raises(ValueError, match="shapes"):
        amx.pack_amx_into(W, np.empty(want.size - 1, np.uint16))


@needs_amx
def test_frozen_copy_packs_for_the_tiles_once(rng, one_thread, monkeypatch):
    # the frozen copy's read-only matrices are packed on first use and kept; the plain model packs
    # on every call (an optimizer may have changed them)
    T, B, I, H = 32, 32, 130, 48
    g = ng.GRU(I, H, bidirectional=True, seed=3)
    frozen = g.freeze()
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    packed = {"n": 0}
    real = dispatch.pack_amx

    def counted(W):
        packed["n"] += 1
        return real(W)
    monkeypatch.setattr(dispatch, "pack_amx", counted)
    calls = _tile_calls(monkeypatch)
    y, h_n = g(x)
    for _ in range(3):
        yf, hf = frozen(x)
    assert calls["steps"] == 2 * 4 and calls["projection"] == 2 * 4
    assert packed["n"] == 4  # W_ih and W_hh of two directions, once
    np.testing.assert_array_equal(yf, y)
    np.testing.assert_array_equal(hf, h_n)


@needs_amx
def test_frozen_copy_keeps_its_packings_on_two_threads(rng, two_threads, monkeypatch):
    # the ranges of rows and of the projection on each thread's tiles read the kept packings too
    T, B, I, H = 32, 64, 130, 128
    frozen = ng.GRU(I, H, seed=9).freeze()
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    packed = []
    real, real_digits = dispatch.pack_amx, dispatch.pack_digits
    monkeypatch.setattr(dispatch, "pack_amx", lambda W: packed.append(W.shape) or real(W))
    monkeypatch.setattr(dispatch, "pack_digits", lambda W, *args: packed.append(("digits", *W.shape))
                        or real_digits(W, *args))
    calls = _tile_calls(monkeypatch)
    ys = [frozen(x)[0] for _ in range(3)]
    assert calls["rows"] == 3 and calls["projection_parallel"] == 3
    # W_ih's bfloat16 pieces, W_hh's integer digits (H = 128), each once
    assert sorted(packed, key=str) == [("digits", 3 * H, H), (3 * H, I)]
    y_ref, _ = ref_gru(x, frozen.state_dict(), 1, H)
    np.testing.assert_allclose(ys[0], y_ref, **TOL[np.float32])
    np.testing.assert_array_equal(ys[2], ys[0])


@needs_amx
def test_two_threads_take_the_tiles_ranges_from_768_units(rng, two_threads, monkeypatch):
    # from H = 768 two threads' forward route is the serial kernels', whose forward plan had run them
    # without the tiles' ranges of rows (more slowly than one thread on the tiles); with and without h0
    T, B, I, H = 32, 64, 8, 768
    g = ng.GRU(I, H, seed=3)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, B, H)).astype(np.float32)
    calls = _tile_calls(monkeypatch)
    for h in (None, h0):
        y, h_n = g(x, h)
        y_ref, h_ref = ref_gru(x, g.state_dict(), 1, H, h0=h)
        np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
        np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    assert calls["rows"] == 2
