"""The step kernels behind GRUCell and streams (numgru.kernels.step): the matmul routes of the serial
step, and the step split over hidden units on two threads (dispatch.step_columns), against
tests/reference.py's cell."""
import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
from numgru.kernels import dispatch
from numgru.kernels.bf16 import from_bfloat16, to_bfloat16
from numgru.kernels.dispatch import gate_scalars
from numgru.kernels.step import gru_step, step_panels
from reference import cell as ref_cell, make_gate, random_params

two_threads_only = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")


def _ref(x, h, p, reset_after=True, gate="sigmoid", clip=None, suffix="_l0"):
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    return ref_cell(f(x), f(h), f(p["weight_ih" + suffix]), f(p["weight_hh" + suffix]),
                    f(p["bias_ih" + suffix]), f(p["bias_hh" + suffix]), reset_after=reset_after,
                    gate=make_gate(gate), clip=clip)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("I, H", [(600, 24), (7, 530), (37, 200), (300, 150), (450, 300)])
def test_serial_step_every_matmul_route(dtype, reset_after, I, H):
    """Several rows take the forward's recurrent_matmul routes: the register-blocked matmul (≤ 512
    columns), tiles (rows ≤ tiled_max, or tiled_max = −1; on Zen 4 the dot-product block up to 32
    rows with one thread's tiled_max, forward.numba_rows_past_l2), BLAS beyond (W_ih, then W_hh, past
    512 columns; in either orientation, forward.rows_matmul_T: 70 and 130 rows); one row the dot-product
    block for a matrix up to STEP_DOT_MAX_VALUES (both matrices in the last two shapes, W_ih only in
    the first two), its GEMV beyond (on Zen 4, with one thread's tiled_max, the block there too:
    forward.one_row_dot); W_hh at H = 530 (beyond L2) by blocks for one and two rows, in one sweep
    for five (STEP_BLOCK_MAX_ROWS)."""
    rng = np.random.default_rng(3)
    p = {k: v.astype(dtype) for k, v in random_params(I, H, 1, seed=3).items()}
    scalars = (reset_after, *gate_scalars(np.dtype(dtype), 0, 0.2, 0.5, None))
    for B, tiled_max in [(1, 16), (1, 4), (2, 16), (5, 16), (5, 4), (5, -1), (20, 16), (32, 16), (70, 16), (130, 16)]:
        x = rng.standard_normal((B, I)).astype(dtype)
        h = rng.standard_normal((B, H)).astype(dtype)
        for backwards in (False, True):
            out = np.full((B, H), np.nan, dtype)
            gru_step(x, h, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"],
                     dispatch.no_step_panels(np.dtype(dtype)), *scalars, out, np.empty((B, 3 * H), dtype),
                     np.empty((B, 3 * H), dtype), tiled_max, backwards)
            np.testing.assert_allclose(out, _ref(x, h, p, reset_after), **TOL[dtype],
                                       err_msg=f"B={B} tiled_max={tiled_max} backwards={backwards}")


@pytest.mark.parametrize("weights", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("I, H", [(37, 53), (450, 300)])
def test_serial_step_on_panels(weights, reset_after, I, H):
    """With step_panels the products run on packed panels (W_hh whole, or its r, z and n rows for
    reset_after=False): same result as the reference cell, bfloat16 weights widened exactly. 37, 53:
    neither a multiple of the panel width, nor 2H; 450, 300: panels past ZIGZAG_MIN_BYTES, read in
    blocks either way round."""
    rng = np.random.default_rng(6)
    dtype = np.float64 if weights == "float64" else np.float32
    p = {k: v.astype(dtype) for k, v in random_params(I, H, 1, seed=6).items()}
    W_ih, W_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    if weights == "bfloat16":
        W_ih, W_hh = to_bfloat16(W_ih), to_bfloat16(W_hh)
        p["weight_ih_l0"], p["weight_hh_l0"] = from_bfloat16(W_ih), from_bfloat16(W_hh)
    panels = step_panels(W_ih, W_hh, reset_after)
    assert all(a.dtype == W_hh.dtype for a in panels) and (panels[2].size == 0) == reset_after
    scalars = (reset_after, *gate_scalars(np.dtype(dtype), 0, 0.2, 0.5, None))
    for B in (1, 3, 17):
        x = rng.standard_normal((B, I)).astype(dtype)
        h = rng.standard_normal((B, H)).astype(dtype)
        for backwards in (False, True):
            out = np.full((B, H), np.nan, dtype)
            gru_step(x, h, W_ih, W_hh, p["bias_ih_l0"], p["bias_hh_l0"], panels, *scalars, out,
                     np.empty((B, 3 * H), dtype), np.empty((B, 3 * H), dtype), 16, backwards)
            np.testing.assert_allclose(out, _ref(x, h, p, reset_after), **TOL[dtype], err_msg=f"B={B}")


@pytest.mark.parametrize("B", [1, 3])
def test_serial_step_reset_before_gate_options(B):
    """reset_after=False with a hard-sigmoid gate and clip: one row's dot products, and for several rows
    the r, z product, then the n product on r ⊙ h."""
    rng = np.random.default_rng(5)
    c = ng.GRUCell(6, 40, reset_after=False, gate_activation="hard_sigmoid", clip=0.8, dtype=np.float64)
    p = {k: v.astype(np.float64) for k, v in random_params(6, 40, 1, seed=5).items()}
    c.load_state_dict({k[:-len("_l0")]: v for k, v in p.items()})
    x, h = rng.standard_normal((B, 6)), rng.standard_normal((B, 40))
    np.testing.assert_allclose(c(x, h), _ref(x, h, p, reset_after=False, gate="hard", clip=0.8),
                               **TOL[np.float64])


@pytest.mark.parametrize("B, H, reset_after, threads, itemsize, want", [
    (1, 256, True, 2, 4, True), (16, 192, True, 4, 4, True), (1, 191, True, 2, 4, False),
    (1, 256, True, 1, 4, False), (1, 256, False, 1, 4, False),
    (0, 256, True, 2, 4, False),
    (1, 1024, True, 16, 4, True), (2, 1024, True, 2, 4, True),
    # bfloat16 weights: the serial step on panels while they fit 1 MB, any row count
    (1, 295, True, 2, 2, False), (16, 295, True, 2, 2, False), (1, 296, True, 2, 2, True),
    (4, 1024, True, 2, 2, True), (17, 1024, True, 2, 2, False),
])
@pytest.mark.parametrize("wide", [False, True])
def test_step_columns_rule(monkeypatch, wide, B, H, reset_after, threads, itemsize, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.step_columns(B, H, reset_after, threads, itemsize) is want


@pytest.mark.parametrize("H, itemsize, wide, want", [
    # one row of float32 / float64 weights where BLAS is wider than Numba: up to 2 MB per thread
    (416, 4, True, True), (420, 4, True, False), (295, 8, True, True), (296, 8, True, False),
    (420, 4, False, True), (1024, 4, False, True), (296, 8, False, True),  # elsewhere at any size
])
def test_step_columns_one_row_rule(monkeypatch, H, itemsize, wide, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.step_columns(1, H, True, 2, itemsize) is want


@pytest.mark.parametrize("B, H, itemsize, wide, want", [
    # more than 16 rows: BLAS's threaded GEMM where BLAS is wider, else split from H = 64
    (17, 256, 4, True, False), (17, 256, 4, False, True), (256, 64, 4, False, True),
    (64, 63, 4, False, False), (16, 128, 4, True, False), (17, 1024, 2, False, False),
])
def test_step_columns_many_rows_rule(monkeypatch, B, H, itemsize, wide, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.step_columns(B, H, True, 2, itemsize) is want
    assert dispatch.step_columns(B, H, False, 2, itemsize) is (want and B > 16)  # reset_before alike


@pytest.mark.parametrize("B, H, itemsize, wide, want", [
    # reset_before: two regions a step, where BLAS is no wider, float weights
    (1, 256, 4, False, True), (16, 256, 4, False, True), (4, 192, 4, False, True),
    (2, 192, 4, False, False), (16, 128, 4, False, False), (1, 1024, 8, False, True),
    (64, 64, 4, False, True), (64, 63, 4, False, False),
    (4, 512, 4, True, False),    # BLAS wider: not measured there
    (4, 512, 2, False, False),   # bfloat16 weights
])
def test_step_columns_reset_before_rule(monkeypatch, B, H, itemsize, wide, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.step_columns(B, H, False, 2, itemsize) is want
    assert not dispatch.step_columns(B, H, False, 1, itemsize)  # one thread


@pytest.mark.parametrize("B, H, kept, threads, itemsize, wide, want", [
    # below H = 192, up to 16 rows: split on two threads from B·H² = 65536 (98304 for a frozen copy)
    (16, 64, False, 2, 4, False, True), (8, 64, False, 2, 4, False, False),
    (4, 128, False, 2, 4, False, True), (2, 128, False, 2, 4, False, False),
    (4, 128, True, 2, 4, False, False), (8, 128, True, 2, 4, False, True),
    (4, 160, True, 2, 4, False, True), (1, 191, False, 2, 4, False, False),
    (16, 128, False, 2, 4, True, False),   # BLAS wider: not measured there
    (16, 128, False, 4, 4, False, False),  # more threads: not measured
    (16, 128, False, 2, 8, False, False),  # float64: not measured
    (16, 128, False, 2, 2, False, False),  # bfloat16: the serial step on its panels
])
def test_step_columns_few_units_rule(monkeypatch, B, H, kept, threads, itemsize, wide, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.step_columns(B, H, True, threads, itemsize, kept) is want


@pytest.fixture
def cols_spy(monkeypatch):
    return _rows_spy(monkeypatch, "gru_step_cols")


def _rows_spy(monkeypatch, name):
    """The row counts of the calls to dispatch's ``name``, which still runs."""
    calls = []
    original = getattr(dispatch, name)

    def run(*a):
        calls.append(a[0].shape[0])
        return original(*a)

    monkeypatch.setattr(dispatch, name, run)
    return calls


def _cell(I, H, dtype, gate="sigmoid", clip=None, seed=0):
    p = {k[:-len("_l0")]: v for k, v in random_params(I, H, 1, seed=seed).items()}
    c = ng.GRUCell(I, H, dtype=dtype, gate_activation=gate, clip=clip)
    c.load_state_dict(p)
    return c, {k + "_l0": v for k, v in p.items()}


@two_threads_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 3, 16])
def test_columns_step_matches_reference(two_threads, cols_spy, dtype, B):
    """H = 200: blocks of 112 and 88 units (a last block shorter than the others)."""
    rng = np.random.default_rng(B)
    c, p = _cell(9, 200, dtype)
    x = rng.standard_normal((B, 9)).astype(dtype)
    h = rng.standard_normal((B, 200)).astype(dtype)
    np.testing.assert_allclose(c(x, h), _ref(x, h, p), **TOL[dtype])
    np.testing.assert_allclose(c(x, np.zeros_like(h)), _ref(x, np.zeros_like(h), p), **TOL[dtype])
    assert cols_spy == [B, B]
    np.testing.assert_allclose(c(x), _ref(x, np.zeros_like(h), p), **TOL[dtype])  # (W_hh skipped where large)


@two_threads_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, H", [(40, 64), (17, 200)])
def test_columns_step_of_many_rows(two_threads, cols_spy, monkeypatch, dtype, B, H):
    """More than 16 rows split over units where BLAS is no wider than Numba (from H = 64)."""
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    rng = np.random.default_rng(B)
    c, p = _cell(9, H, dtype)
    x = rng.standard_normal((B, 9)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    np.testing.assert_allclose(c(x, h), _ref(x, h, p), **TOL[dtype])
    assert cols_spy == [B]


@two_threads_only
@pytest.mark.parametrize("B, H, frozen", [(16, 72, False), (8, 120, True)])
def test_columns_step_of_few_units(two_threads, cols_spy, monkeypatch, B, H, frozen):
    """Below 192 units, float32 steps of enough rows split where BLAS is no wider (H = 72 and 120:
    blocks of 48 + 24 and 64 + 56 units), a frozen copy's too."""
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    rng = np.random.default_rng(B)
    c, p = _cell(9, H, np.float32)
    cell = c.freeze() if frozen else c
    x = rng.standard_normal((B, 9)).astype(np.float32)
    h = rng.standard_normal((B, H)).astype(np.float32)
    np.testing.assert_allclose(cell(x, h), _ref(x, h, p), **TOL[np.float32])
    assert cols_spy == [B]


@pytest.fixture
def before_spy(monkeypatch):
    return _rows_spy(monkeypatch, "gru_step_cols_before")


@two_threads_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, H", [(1, 264), (3, 264), (20, 72)])
def test_reset_before_columns_step_matches_reference(two_threads, before_spy, monkeypatch, dtype, B, H):
    """reset_before's split step (two regions: r ⊙ h over every unit, then W_hn's product): H = 264
    in blocks of 144 and 120 units, one row by the tiled matmul, several by the dot-product block."""
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    rng = np.random.default_rng(B)
    p = {k[:-len("_l0")]: v for k, v in random_params(9, H, 1, seed=2).items()}
    c = ng.GRUCell(9, H, dtype=dtype, reset_after=False)
    c.load_state_dict(p)
    p = {k + "_l0": v for k, v in p.items()}
    x = rng.standard_normal((B, 9)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    np.testing.assert_allclose(c(x, h), _ref(x, h, p, reset_after=False), **TOL[dtype])
    assert before_spy == [B]


@two_threads_only
def test_reset_before_columns_stream_and_gate_options(two_threads, before_spy, monkeypatch):
    """A two-layer reset_before stream with a hard-sigmoid gate and clip equals the whole-sequence
    forward, step by step."""
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    rng = np.random.default_rng(3)
    g = ng.GRU(7, 256, 2, reset_after=False, gate_activation="hard_sigmoid", clip=0.9, dtype=np.float64,
               seed=0)
    x = rng.standard_normal((5, 4, 7))
    s = g.stream(4)
    ys = np.stack([s.step(x[t]) for t in range(5)])
    y, h_n = g(x)
    np.testing.assert_allclose(ys, y, **TOL[np.float64])
    np.testing.assert_allclose(s.state, h_n, **TOL[np.float64])
    assert before_spy == [4] * 10


@two_threads_only
def test_columns_step_gate_options(two_threads, cols_spy):
    rng = np.random.default_rng(0)
    c, p = _cell(5, 192, np.float64, gate="hard_sigmoid", clip=0.7)
    x, h = rng.standard_normal((2, 5)), rng.standard_normal((2, 192))
    np.testing.assert_allclose(c(x, h), _ref(x, h, p, gate="hard", clip=0.7), **TOL[np.float64])
    assert cols_spy == [2]


@two_threads_only
def test_columns_stream_two_layers(two_threads, cols_spy):
    """A stream of a 2-layer model (layer 0 reads I = 7 inputs, layer 1 H) equals the whole-sequence
    forward, step by step."""
    rng = np.random.default_rng(1)
    g = ng.GRU(7, 208, 2, seed=0)
    x = rng.standard_normal((6, 3, 7)).astype(np.float32)
    s = g.stream(3)
    ys = np.stack([s.step(x[t]) for t in range(6)])
    y, h_n = g(x)
    np.testing.assert_allclose(ys, y, atol=1e-5)
    np.testing.assert_allclose(s.state, h_n, atol=1e-5)
    assert len(cols_spy) == 12


@two_threads_only
def test_quantized_columns_step(two_threads, cols_spy):
    """A quantized cell's columns step reads bfloat16 weights and equals the float32 cell holding the
    same (rounded) values."""
    rng = np.random.default_rng(2)
    c, _ = _cell(320, 320, np.float32)  # 1.2 MB of bfloat16 weights: split (below 1 MB, serial)
    q = c.quantize("bfloat16")
    r = ng.GRUCell(320, 320)
    r.load_state_dict(q.state_dict())
    x, h = rng.standard_normal((2, 1, 320)).astype(np.float32)
    np.testing.assert_allclose(q(x, h), r(x, h), atol=1e-5)
    assert q._gru._step_weights(0, 1, 2, True)[1].dtype == np.uint16
    assert len(cols_spy) == 2


@two_threads_only
@pytest.mark.parametrize("B", [2, 5, 16])
def test_quantized_columns_step_of_several_rows(two_threads, cols_spy, B):
    """Several rows of a quantized cell's columns step go through the dot-product block on the
    bfloat16 weights: equal to the float32 cell holding the same (rounded) values."""
    rng = np.random.default_rng(B)
    c, _ = _cell(333, 320, np.float32)
    q = c.quantize("bfloat16")
    r = ng.GRUCell(333, 320)
    r.load_state_dict(q.state_dict())
    x, h = rng.standard_normal((B, 333)).astype(np.float32), rng.standard_normal((B, 320)).astype(np.float32)
    np.testing.assert_allclose(q(x, h), r(x, h), atol=1e-5)
    assert cols_spy == [B, B]  # (the float32 cell splits too)


@two_threads_only
def test_quantized_step_within_l2_runs_serially_on_panels(two_threads, cols_spy):
    """Below 1 MB of bfloat16 weights the serial step runs on the model's packed panels, even with two
    threads, and equals the float32 cell holding the rounded values."""
    rng = np.random.default_rng(8)
    c, _ = _cell(256, 256, np.float32)
    q = c.quantize("bfloat16")
    r = ng.GRUCell(256, 256)
    r.load_state_dict(q.state_dict())
    x, h = rng.standard_normal((2, 3, 256)).astype(np.float32)
    got = q(x, h)
    assert cols_spy == []  # (the float32 cell below does split)
    np.testing.assert_allclose(got, r(x, h), atol=1e-5)
    weights = q._gru._step_weights(0, 3, 2, False)
    assert weights[1].dtype == np.uint16 and weights[4][0].dtype == np.uint16


@two_threads_only
def test_columns_step_with_busy_slot_runs_serially(two_threads, cols_spy):
    """Another thread holding the parallel slot: the serial step runs instead, same result."""
    rng = np.random.default_rng(4)
    c, p = _cell(4, 200, np.float32)
    x, h = rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((2, 200)).astype(np.float32)
    assert dispatch._PARALLEL_LOCK.acquire(blocking=False)
    try:
        out = c(x, h)
    finally:
        dispatch._PARALLEL_LOCK.release()
    np.testing.assert_allclose(out, _ref(x, h, p), **TOL[np.float32])
    assert cols_spy == []


def test_one_thread_steps_serially(cols_spy):
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        c, p = _cell(4, 200, np.float32)
        x, h = np.ones((2, 4), np.float32), np.ones((2, 200), np.float32)
        np.testing.assert_allclose(c(x, h), _ref(x, h, p), **TOL[np.float32])
        s = ng.GRU(4, 200).stream(2)
        s.step(x)
    finally:
        numba.set_num_threads(before)
    assert cols_spy == []


def test_cell_keeps_its_step_current():
    """GRUCell keeps its step's kernel arguments per (rows, threads): weights loaded in place after a
    call, another thread count and a quantized copy each give what a new cell gives."""
    rng = np.random.default_rng(5)
    c, p = _cell(6, 40, np.float64, seed=1)
    x, h = rng.standard_normal((3, 6)), rng.standard_normal((3, 40))
    np.testing.assert_allclose(c(x, h), _ref(x, h, p), **TOL[np.float64])
    _, p2 = _cell(6, 40, np.float64, seed=2)
    c.load_state_dict({k[:-len("_l0")]: v for k, v in p2.items()})
    np.testing.assert_allclose(c(x, h), _ref(x, h, p2), **TOL[np.float64])
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        np.testing.assert_allclose(c(x, h), _ref(x, h, p2), **TOL[np.float64])
    finally:
        numba.set_num_threads(before)
    f, _ = _cell(64, 64, np.float32, seed=3)
    xf, hf = rng.standard_normal((2, 1, 64)).astype(np.float32)
    y = f(xf, hf)
    q = f.quantize("bfloat16")
    r = ng.GRUCell(64, 64)
    r.load_state_dict(q.state_dict())
    np.testing.assert_allclose(q(xf, hf), r(xf, hf), atol=1e-5)
    assert np.abs(q(xf, hf) - y).max() > 1e-5  # (the copy's weights are rounded)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("reset_after", [True, False])
def test_unbatched_cell_step_is_the_one_row_step(frozen, reset_after):
    """An unbatched step ((I,) and (H,), or (I,) alone) takes the one-row step: the same values as
    the (1, I) call bit for bit, shaped (H,), and the reference's within rounding; a read-only or
    strided h and an h of another dtype give the same."""
    rng = np.random.default_rng(11)
    p = {k[:-len("_l0")]: v for k, v in random_params(48, 64, 1, seed=4).items()}
    c = ng.GRUCell(48, 64, reset_after=reset_after)
    c.load_state_dict(p)
    p = {k + "_l0": v for k, v in p.items()}
    if frozen:
        c = c.freeze()
    x, h = rng.standard_normal(48).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    y = c(x, h)
    assert y.shape == (64,) and y.dtype == np.float32
    np.testing.assert_array_equal(y, c(x[None], h[None])[0])
    np.testing.assert_allclose(y, _ref(x[None], h[None], p, reset_after)[0], **TOL[np.float32])
    np.testing.assert_array_equal(c(x), c(x[None])[0])
    ro = h.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(c(x, ro), y)
    np.testing.assert_array_equal(c(x, np.repeat(h, 2)[::2]), y)
    np.testing.assert_allclose(c(x, h.astype(np.float64)), y, atol=1e-6)
    with pytest.raises(ValueError, match="h: expected shape"):
        c(x, h[None])
    with pytest.raises(ValueError, match="x: expected input_size"):
        c(x[:-1], h)


@pytest.mark.parametrize("frozen", [False, True])
def test_steps_by_compiled_entry_take_any_input(frozen):
    """Streams and cells call the step kernel's compiled entry once a step has found it, for inputs
    of the type it was found for; inputs that are read-only or off their alignment (another Numba
    type) take the dispatcher. The same machine code runs either way: steps on such inputs equal
    steps on plain copies bit for bit, and both the sequence's forward within rounding."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        rng = np.random.default_rng(7)
        xs = rng.standard_normal((12, 1, 5)).astype(np.float32)
        raw = np.zeros(24 * 4 + 1, np.uint8)  # room for the largest input, one byte in

        def odd_kinds(t, a):
            """a, or a read-only copy, or a copy one byte off its alignment, by step."""
            if t % 3 == 1:
                a = a.copy()
                a.setflags(write=False)
            elif t % 3 == 2:
                odd = raw[1:1 + a.nbytes].view(np.float32).reshape(a.shape)
                odd[...] = a
                assert not odd.flags.aligned
                a = odd
            return a

        g = ng.GRU(5, 24, 2, seed=0)
        g = g.freeze() if frozen else g
        y_ref, _ = g(xs)
        plain, mixed = g.stream(), g.stream()
        ys = [plain.step(xt.copy()) for xt in xs]
        np.testing.assert_array_equal(np.stack([mixed.step(odd_kinds(t, xt)) for t, xt in enumerate(xs)]),
                                      np.stack(ys))
        np.testing.assert_allclose(np.stack(ys), y_ref, **TOL[np.float32])
        cell = ng.GRUCell(5, 24, seed=1)
        cell = cell.freeze() if frozen else cell
        h1 = h2 = np.zeros((1, 24), np.float32)
        for t, xt in enumerate(xs):
            h1 = cell(xt.copy(), h1)
            h2 = cell(odd_kinds(t, xt), odd_kinds(t + 1, h2))
            np.testing.assert_array_equal(h2, h1)
    finally:
        numba.set_num_threads(before)


@two_threads_only
@pytest.mark.parametrize("reset_after", [True, False])
def test_split_steps_call_their_compiled_entries(two_threads, monkeypatch, reset_after):
    """A stream's and a cell's steps split over units call the split kernel by its compiled entry, one
    call site a kind of input and layer (dispatch.run_step's ``entries``): the same bits as the
    dispatcher's call, step after step."""
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    g = ng.GRU(16, 264, 2, reset_after=reset_after, seed=1)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((4, 1, 16)).astype(np.float32)
    s = g.stream(1)
    assert s._stepper._step is dispatch.run_step
    ys = [s.step(x) for x in xs]
    sites = s._stepper._split_entries
    assert len(sites) == 3 and all(callable(e) for e in sites.values())  # layer 0 at either parity, layer 1
    plain = g.stream(1)
    plain._stepper._split_entries = None  # the dispatcher on every call
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(plain.step(x), y)
    c, p = _cell(16, 264, np.float32)
    cell = ng.GRUCell(16, 264, reset_after=reset_after)
    cell.load_state_dict(c.state_dict())
    h = rng.standard_normal((1, 264)).astype(np.float32)
    first = cell(xs[0], h)
    np.testing.assert_allclose(first, _ref(xs[0], h, p, reset_after=reset_after), **TOL[np.float32])
    entries = cell._step_args(1)[4]
    split = [k for k, e in entries.items() if k >> 32 == 2]
    assert len(split) == 1 and callable(entries[split[0]])
    entries[split[0]] = False  # the dispatcher from now on
    np.testing.assert_array_equal(cell(xs[0], h), first)
