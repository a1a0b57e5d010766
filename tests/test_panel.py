"""The packed-panel matmul (numgru.kernels.panel) against NumPy: row counts around the register block
and a whole-sequence-sized one, columns that end inside a panel (masked stores), inner sizes past one
k-chunk, both float dtypes, and bfloat16 panels (``uint16``, widened in registers). The forward's use
of it is checked against tests/reference.py by the layer tests (every sequence of 4+ steps takes it),
a quantized model's by tests/test_quantize.py."""
import numba
import numpy as np
import pytest

from numgru.kernels.bf16 import from_bfloat16, to_bfloat16
from numgru.kernels.panel import (SLAB_ROWS, pack_panels, panel_block, panel_block_rows, panel_matmul, panel_rows,
                                  panel_width)


@numba.njit(cache=False)
def _pack(W):
    return pack_panels(W)


@numba.njit(cache=False)
def _matmul(h, Wp, out, n):
    panel_matmul(h, Wp, out, n)


@numba.njit(cache=False)
def _rows(x, Wp, bias, use_bias, out, r0, r1):
    panel_rows(x, Wp, bias, use_bias, out, r0, r1)


@numba.njit(cache=False)
def _block(x, Wp, p0, p1, col, bias, use_bias, out, r0, r1):
    panel_block(x, Wp, p0, p1, col, bias, use_bias, out, r0, r1)


@numba.njit(cache=False)
def _width(x):
    return panel_width(x)


@numba.njit(cache=False)
def _block_rows(x):
    return panel_block_rows(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(48, 16), (300, 100), (5, 3), (768, 256), (97, 301), (64, 1), (80, 20),
                                  (90, 7), (112, 40)])
def test_panel_matmul_matches_numpy(dtype, M, K):
    rng = np.random.default_rng(M * 1000 + K)
    W = rng.standard_normal((M, K)).astype(dtype)
    Wp = _pack(W)
    for n in (1, 2, 3, 5, 6, 7, 8, 9, 11, 13, 17, 19, 64, 300):
        rows = n + 2
        h = rng.standard_normal((rows, K)).astype(dtype)
        # out is the front of a larger buffer: nothing past its last column may be written
        buf = np.full(rows * M + 64, 7.0, dtype)
        out = buf[:rows * M].reshape(rows, M)
        _matmul(h, Wp, out, n)
        want = h[:n].astype(np.float64) @ W.T.astype(np.float64)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out[:n], want, rtol=tol, atol=tol * np.sqrt(K))
        assert (out[n:] == 7.0).all() and (buf[rows * M:] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(80, 20), (90, 7), (112, 40), (5, 300), (64, 64)])
def test_a_last_panel_sums_as_a_whole_one(dtype, M, K):
    # a last panel whose columns fill only some of its vectors multiplies those alone: its values
    # equal, bit for bit, those of the same weights padded with zero rows to whole panels
    rng = np.random.default_rng(M + K)
    nc = _width(dtype(0))
    W = rng.standard_normal((M, K)).astype(dtype)
    Wz = np.zeros((-(-M // nc) * nc, K), dtype)
    Wz[:M] = W
    Wp, Wpz = _pack(W), _pack(Wz)
    for n in (1, 2, 3, 5, 8, 13):
        h = rng.standard_normal((n, K)).astype(dtype)
        out = np.empty((n, M), dtype)
        outz = np.empty((n, Wz.shape[0]), dtype)
        _matmul(h, Wp, out, n)
        _matmul(h, Wpz, outz, n)
        np.testing.assert_array_equal(out, outz[:, :M])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(768, 256), (97, 33), (48, 1), (5, 300)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_panel_rows_matches_numpy(dtype, M, K, use_bias):
    # the input projection: slabs of rows, bias written first and the product added to it
    rng = np.random.default_rng(M + K)
    N = 3 * SLAB_ROWS + 5
    x = rng.standard_normal((N, K)).astype(dtype)
    W = rng.standard_normal((M, K)).astype(dtype)
    bias = rng.standard_normal(M).astype(dtype)
    Wp = _pack(W)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for r0, r1 in [(0, N), (7, N - 3), (SLAB_ROWS, 2 * SLAB_ROWS + 1), (4, 4)]:
        out = np.full((N, M), 7.0, dtype)
        _rows(x, Wp, bias, use_bias, out, r0, r1)
        want = x[r0:r1].astype(np.float64) @ W.T.astype(np.float64) + (bias if use_bias else 0)
        np.testing.assert_allclose(out[r0:r1], want, rtol=tol, atol=tol * np.sqrt(K))
        assert (out[:r0] == 7.0).all() and (out[r1:] == 7.0).all()


def test_panel_rows_rejects_bad_ranges():
    W = np.ones((48, 8), np.float32)
    Wp = _pack(W)
    x = np.ones((10, 8), np.float32)
    out = np.empty((10, 48), np.float32)
    bias = np.zeros(48, np.float32)
    for r0, r1 in [(-1, 5), (5, 4), (0, 11)]:
        with pytest.raises(ValueError, match="shapes"):
            _rows(x, Wp, bias, True, out, r0, r1)
    with pytest.raises(ValueError, match="shapes"):
        _rows(x, Wp, np.zeros(47, np.float32), True, out, 0, 10)  # bias shorter than out's rows
    with pytest.raises(ValueError, match="shapes"):
        _rows(np.ones((10, 9), np.float32), Wp, bias, True, out, 0, 10)  # K differs
    with pytest.raises(ValueError, match="shapes"):  # out wider than the panels
        _rows(x, Wp, np.zeros(49, np.float32), True, np.empty((10, 49), np.float32), 0, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_bias", [True, False])
def test_panel_block_ranges_equal_the_whole_call(dtype, use_bias):
    # ranges of rows (from multiples of the block's rows) and of panels give the whole call's values bit for bit,
    # and nothing outside the range is written
    rng = np.random.default_rng(11)
    w = _width(dtype(0))
    K, M = 300, 7 * w - 3
    P = -(-M // w)
    N = 3 * SLAB_ROWS + 13
    x = rng.standard_normal((N, K)).astype(dtype)
    W = rng.standard_normal((M, K)).astype(dtype)
    bias = rng.standard_normal(M).astype(dtype)
    Wp = _pack(W)
    whole = np.full((N, M), 7.0, dtype)
    _block(x, Wp, 0, P, 0, bias, use_bias, whole, 0, N)
    want = x.astype(np.float64) @ W.T.astype(np.float64) + (bias if use_bias else 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(whole, want, rtol=tol, atol=tol * np.sqrt(K))
    rows = np.full((N, M), 7.0, dtype)
    _rows(x, Wp, bias, use_bias, rows, 0, N)
    np.testing.assert_array_equal(rows, whole)
    mr = _block_rows(dtype(0))
    s = mr if SLAB_ROWS % mr == 0 else SLAB_ROWS  # 8 on AVX-512, else slabs (AVX2: blocks of 6)
    for r0, r1, p0, p1 in [(0, N, 0, 1), (0, N, P - 1, P), (s, 5 * s, 2, 5), (2 * s, N, 1, P - 1), (0, s, 0, P),
                           (5, 5, 0, P), (0, N, 3, 3)]:
        r1 = min(r1, N)
        out = np.full((N, M), 7.0, dtype)
        _block(x, Wp, p0, p1, p0 * w, bias, use_bias, out, r0, r1)
        c0, c1 = min(M, p0 * w), min(M, p1 * w)
        np.testing.assert_array_equal(out[r0:r1, c0:c1], whole[r0:r1, c0:c1])
        out[r0:r1, c0:c1] = 7.0
        assert (out == 7.0).all()
    # panels packed apart from W's rows col … (the last ones, ending inside a panel) write from col on
    col = (P - 3) * w
    out = np.full((N, M), 7.0, dtype)
    _block(x, _pack(W[col:]), 0, 3, col, bias, use_bias, out, s, N)
    np.testing.assert_array_equal(out[s:, col:], whole[s:, col:])
    out[s:, col:] = 7.0
    assert (out == 7.0).all()


def test_panel_block_rejects_bad_panel_ranges():
    Wp = _pack(np.ones((100, 8), np.float32))
    P = Wp.shape[0]
    x = np.ones((10, 8), np.float32)
    out = np.empty((10, 100), np.float32)
    bias = np.zeros(100, np.float32)
    for p0, p1, col in [(-1, 1, 0), (2, 1, 0), (0, P + 1, 0), (0, 1, -1)]:
        with pytest.raises(ValueError, match="shapes"):
            _block(x, Wp, p0, p1, col, bias, True, out, 0, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(70, 5), (97, 37), (192, 64), (48, 16)])
def test_pack_panels_layout(dtype, M, K):
    # whole 16 × 16 tiles (transposed in registers for float32), k and columns past them
    W = np.arange(M * K, dtype=dtype).reshape(M, K)
    Wp = _pack(W)
    nc = _width(dtype(0))
    assert Wp.shape == (-(-M // nc), K, nc)
    assert Wp.ctypes.data % 64 == 0 and Wp.flags.c_contiguous
    for p in range(Wp.shape[0]):
        for c in range(nc):
            j = p * nc + c
            np.testing.assert_array_equal(Wp[p, :, c], W[j] if j < M else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(5, 70), (37, 97), (64, 192), (48, 16), (768, 512), (512, 768)])
@pytest.mark.parametrize("transposed", [True, False])
def test_packing_into_a_buffer_equals_pack_panels(dtype, M, K, transposed):
    # into a scratch buffer: the input gradient's panels of W_ih.T, dealt out of W_ih's rows
    # (transposed), and the training projection's panels of W_ih (the last panel's pad zeroed there)
    from numgru.kernels.forward import packed_panels, packed_panels_into, packed_panels_of_transpose
    W = np.random.default_rng(1).standard_normal((M, K)).astype(dtype)
    pack, src = (packed_panels_of_transpose, np.ascontiguousarray(W.T)) if transposed else (packed_panels_into, W)
    buf = np.full((M + 48) * K + 16, np.nan, dtype)
    Wp = pack(src, buf)
    assert Wp.ctypes.data % 64 == 0 and np.shares_memory(Wp, buf)
    np.testing.assert_array_equal(Wp, packed_panels(W))
    with pytest.raises(ValueError, match="buf too small"):
        pack(src, buf[:K])


def test_pack_panels_of_row_slices_and_read_only_weights():
    # (panels 48 columns wide with AVX-512: 64 rows end inside the second; 16 with AVX2)
    W = np.random.default_rng(0).standard_normal((96, 48)).astype(np.float32)
    nc = _width(np.float32(0))
    expect = np.zeros((-(-64 // nc), 48, nc), np.float32)
    for p in range(expect.shape[0]):
        rows = W[p * nc:min(64, (p + 1) * nc)]
        expect[p, :, :rows.shape[0]] = rows.T
    np.testing.assert_array_equal(_pack(W[:64]), expect)
    W.flags.writeable = False
    np.testing.assert_array_equal(_pack(W)[1], W[nc:2 * nc].T)


@pytest.mark.parametrize("M, K", [(768, 256), (97, 301), (5, 3), (64, 1), (80, 20), (112, 9)])
def test_bfloat16_panels_equal_float32_panels_of_the_widened_weights(M, K):
    # the bfloat16 block widens each weight exactly, then runs the float32 block's arithmetic in the
    # same order: every output equals the float32 panels' bit for bit
    rng = np.random.default_rng(M + 7 * K)
    Wb = to_bfloat16(rng.standard_normal((M, K)).astype(np.float32))
    Wf = from_bfloat16(Wb)
    Wpb, Wpf = _pack(Wb), _pack(Wf)
    nc = _width(np.float32(0))
    assert _width(np.uint16(0)) == nc
    # k in pairs: K rounded up to even, each column's two values of a pair side by side
    Kp = K + K % 2
    assert Wpb.dtype == np.uint16 and Wpb.shape == (Wpf.shape[0], Kp, nc) and Wpb.ctypes.data % 64 == 0
    pairs = from_bfloat16(Wpb).reshape(Wpf.shape[0], Kp // 2, nc, 2)
    unpaired = pairs.transpose(0, 1, 3, 2).reshape(Wpf.shape[0], Kp, nc)
    np.testing.assert_array_equal(unpaired[:, :K], Wpf)
    assert (unpaired[:, K:] == 0).all()
    for n in (1, 2, 5, 8, 13, 40):
        h = rng.standard_normal((n + 1, K)).astype(np.float32)
        got = np.full((n + 1, M), 7.0, np.float32)
        want = np.full((n + 1, M), 7.0, np.float32)
        _matmul(h, Wpb, got, n)
        _matmul(h, Wpf, want, n)
        np.testing.assert_array_equal(got, want)
        assert (got[n:] == 7.0).all()
    x = rng.standard_normal((2 * SLAB_ROWS + 3, K)).astype(np.float32)
    bias = rng.standard_normal(M).astype(np.float32)
    got = np.zeros((x.shape[0], M), np.float32)
    want = np.zeros_like(got)
    _rows(x, Wpb, bias, True, got, 1, x.shape[0])
    _rows(x, Wpf, bias, True, want, 1, x.shape[0])
    np.testing.assert_array_equal(got, want)


def test_bfloat16_panels_need_float32_rows():
    Wpb = _pack(np.ones((48, 8), np.uint16))
    with pytest.raises(numba.TypingError):
        _matmul(np.ones((2, 8)), Wpb, np.empty((2, 48)), 2)  # float64 rows cannot take bfloat16 panels


def test_panel_matmul_rejects_mismatched_shapes():
    W = np.ones((48, 8), np.float32)
    Wp = _pack(W)
    with pytest.raises(ValueError, match="shapes"):
        _matmul(np.ones((2, 9), np.float32), Wp, np.empty((2, 48), np.float32), 2)  # K differs
    with pytest.raises(ValueError, match="shapes"):
        _matmul(np.ones((2, 8), np.float32), Wp, np.empty((1, 48), np.float32), 2)  # n > rows of out
    with pytest.raises(ValueError, match="shapes"):
        wide = np.empty((2, Wp.shape[0] * Wp.shape[2] + 1), np.float32)
        _matmul(np.ones((2, 8), np.float32), Wp, wide, 2)  # more columns than the panels hold


def test_model_weights_start_on_cache_lines():
    # the kernels' vector loads split over two lines when a weight row starts mid-line
    import numgru as ng
    from numgru.kernels.dispatch import aligned

    g = ng.GRU(5, 24, num_layers=2, seed=0)
    arrays = g._W_ih + g._W_hh + g._b_ih + g._b_hh
    q = g.quantize()
    arrays += q._W_ih + q._W_hh + list(q._bf16[0]) + list(q._bf16[1])
    assert all(a.ctypes.data % 64 == 0 and a.flags.c_contiguous for a in arrays)
    a = np.arange(12.0).reshape(3, 4)[:, 1:]
    b = aligned(a)
    assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous and np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
@pytest.mark.parametrize("H, cs, nc", [(64, 32, 2), (100, 64, 2), (256, 128, 2), (47, 16, 3), (33, 48, 1)])
def test_block_panels_are_each_blocks_rows_packed(dtype, H, cs, nc):
    """The column route's panels (forward.block_panels_empty, each block by pack_block): block c as
    pack_panels of its rows g·H + c·cs + u (gate g, unit u < cs), zero rows past H, whichever dtype
    (bfloat16's k pairs for odd H too)."""
    from numgru.kernels.forward import block_panels_empty, pack_block
    rng = np.random.default_rng(H)
    W = rng.standard_normal((3 * H, H)).astype(np.float32)
    W = to_bfloat16(W) if dtype == np.uint16 else W.astype(dtype)
    Wp = block_panels_empty(W, cs, nc)
    for c in range(nc):
        pack_block(Wp, W, c, cs)
    for c in range(nc):
        rows = np.zeros((3 * cs, H), W.dtype)
        for g in range(3):
            m = max(0, min(cs, H - c * cs))
            rows[g * cs:g * cs + m] = W[g * H + c * cs:g * H + c * cs + m]
        np.testing.assert_array_equal(Wp[c], _pack(rows))
