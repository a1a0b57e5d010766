"""The multi-threaded route that splits the batch into row chunks (dispatch.forward_route "rows").

Inference against tests/reference.py and against the single-thread route, with two Numba threads so
the route really runs (a spy counts its kernel calls).
"""
import itertools

import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
from numgru.kernels import dispatch, forward
from numgru.kernels.panel import WIDE_PANELS_BYTES
from reference import gru as ref_gru, random_params

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                reason="needs two Numba threads")


@pytest.fixture
def spy(monkeypatch):
    calls = {"fwd": 0, "proj": 0}
    originals = {name: getattr(dispatch, name) for name in
                 ("gru_forward_rows", "input_projection_parallel")}

    def counting(name, key):
        def run(*a):
            calls[key] += 1
            return originals[name](*a)
        return run

    monkeypatch.setattr(dispatch, "gru_forward_rows", counting("gru_forward_rows", "fwd"))
    monkeypatch.setattr(dispatch, "input_projection_parallel",
                        counting("input_projection_parallel", "proj"))
    return calls


def _model(I, H, L, bi, dtype, reset_after=True, gate="sigmoid", clip=None, seed=0):
    p = random_params(I, H, L, bi, seed=seed)
    g = ng.GRU(I, H, L, bidirectional=bi, dtype=dtype, reset_after=reset_after,
               gate_activation=gate, clip=clip)
    g.load_state_dict(p)
    return g, p


def _lengths(rng, B, T):
    lengths = rng.integers(0, T + 1, B)
    lengths[0], lengths[-1] = 0, T  # unsorted, with an empty and a full row
    return lengths


# B = 10 on two threads: chunks of 8 and 2 rows (uneven, and a leftover below the 4-row block)
CASES = list(itertools.product([(10, 16), (8, 33)], [False, True], [np.float32, np.float64],
                               [True, False], [False, True]))


def _check_two_layers(rng, T, B, H, bi, dtype, reset_after, lengths):
    """A 2-layer model with a random h0 against tests/reference.py."""
    I, L = 5, 2
    g, p = _model(I, H, L, bi, dtype, reset_after)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * (2 if bi else 1), B, H)).astype(dtype)
    y, h_n = g(x, h0, lengths)
    y_ref, h_ref = ref_gru(x, p, L, H, bi, h0=h0, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])


@pytest.mark.parametrize("shape, bi, dtype, reset_after, with_lengths", CASES)
def test_rows_match_reference(two_threads, spy, rng, shape, bi, dtype, reset_after, with_lengths):
    B, H = shape
    T, L = 7, 2
    _check_two_layers(rng, T, B, H, bi, dtype, reset_after, _lengths(rng, B, T) if with_lengths else None)
    assert spy["fwd"] == L * (2 if bi else 1)
    assert spy["proj"] == L * (2 if bi else 1)


@pytest.mark.parametrize("gate, clip, reset_after", [("hard_sigmoid", None, True),
                                                     ("sigmoid", 0.5, False),
                                                     ("hard_sigmoid_keras3", 2.0, True)])
def test_rows_gate_options(two_threads, spy, rng, gate, clip, reset_after):
    T, B, I, H = 6, 9, 3, 24
    g, p = _model(I, H, 1, False, np.float64, reset_after, gate, clip)
    x = 3 * rng.standard_normal((T, B, I))
    y, h_n = g(x)
    y_ref, _ = ref_gru(x, p, 1, H, reset_after=reset_after, gate=gate.replace("_keras3", ""),
                       alpha=g.alpha, beta=g.beta, clip=clip)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    assert spy["fwd"] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("T, with_lengths", [(1, False), (3, False), (5, True)])
def test_rows_on_shared_panels(two_threads, spy, rng, monkeypatch, dtype, reset_after, T, with_lengths):
    """The rows route's chunks on W_hh's panels packed once on the threads (dispatch.rows_share_panels,
    forced at these sizes and for float32 too) against tests/reference.py."""
    import numgru.kernels.dispatch as dsp
    B, I, H = 12, 5, 40
    g, p = _model(I, H, 1, False, dtype, reset_after)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((1, B, H)).astype(dtype)
    lengths = _lengths(rng, B, T) if with_lengths else None
    packs = []
    real = dsp.packed_panels_on_threads
    monkeypatch.setattr(dsp, "packed_panels_on_threads", lambda W: packs.append(W.shape) or real(W))
    monkeypatch.setattr(dsp, "rows_share_panels", lambda *a: True)
    monkeypatch.setattr(g, "_one_step", lambda x, h0: None)  # (one step from h0: a stream's step otherwise)
    y, h_n = g(x, h0, lengths)
    assert packs == ([(3 * H, H)] if reset_after else [(2 * H, H), (H, H)])
    y_ref, h_ref = ref_gru(x, p, 1, H, h0=h0, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])


def test_rows_share_panels_rule():
    # float64 from 512 hidden units and 64 rows a chunk (measured on Zen 4, two threads)
    assert dispatch.rows_share_panels(128, 512, 8, 2)
    assert not dispatch.rows_share_panels(64, 512, 8, 2) and not dispatch.rows_share_panels(128, 384, 8, 2)
    assert not dispatch.rows_share_panels(128, 512, 4, 2)


def test_training_keeps_off_the_rows_route(two_threads, spy, rng):
    """Training keeps BLAS (its weight-gradient GEMMs wake BLAS's threads); results still match the
    inference route's."""
    g, _ = _model(4, 16, 1, False, np.float32)
    x = rng.standard_normal((6, 10, 4)).astype(np.float32)
    y_train, _, tape = g.forward_train(x)
    g.backward(tape, np.ones_like(y_train))
    assert spy["fwd"] == 0 and spy["proj"] == 0
    y, _ = g(x)
    assert spy["fwd"] == 1
    np.testing.assert_allclose(y, y_train, atol=1e-6, rtol=0)


def test_rows_equal_single_thread_route(spy, rng):
    g, _ = _model(8, 64, 1, True, np.float32)
    x = rng.standard_normal((30, 17, 8)).astype(np.float32)
    lengths = _lengths(rng, 17, 30)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1, h1 = g(x, lengths=lengths)
        assert spy["fwd"] == 0
        numba.set_num_threads(2)
        y2, h2 = g(x, lengths=lengths)
        assert spy["fwd"] == 2
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(y2, y1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h2, h1, atol=1e-6, rtol=0)


@pytest.mark.parametrize("B, H, reset_after, store, want", [
    (8, 64, True, False, "rows"),        # 4 rows per thread
    (10, 16, False, False, "rows"),      # either reset variant
    (10, 16, True, True, None),          # training keeps BLAS
    (6, 64, True, False, None),          # 3 rows per thread: too few
    (256, 128, True, False, "rows"),     # 128 rows × 128 per thread, W_hh in L2
    (256, 256, True, False, "rows"),     # 128 rows × 256 per thread: 64+ rows on Numba's threads
    (48, 1024, True, False, "columns"),  # past the columns' window, under 64 rows: W_hh past 3·512²
    (40, 1024, False, False, "rows"),    # reset_before past the window: rows
    (24, 512, False, False, "rows"),     # reset_before within the window: rows, not BLAS's threads
    (48, 512, True, False, "rows"),      # past the window, W_hh within 3·512²
    (20, 512, True, False, "columns"),   # within the window
    (16, 1024, True, False, "rows"),     # W_hh beyond L2, 8 rows per thread
    (12, 512, True, False, "columns"),   # the rows' chunks of 8 and 4 uneven: columns
    (12, 512, False, False, "columns"),  # (reset_before too, on its two-half kernel)
    (12, 128, True, False, "rows"),      # (below H = 256 rows kept up)
    (32, 512, True, False, "columns"),   # W_hh beyond L2, 16 rows per thread: columns on panels
    (64, 512, True, False, "rows"),      # B·H = 32768, past the columns' window: rows
    (64, 640, True, False, "columns"),   # W_hh beyond 3·512² values: columns
    (128, 1024, True, False, "columns"),
    (64, 1024, False, False, "rows"),    # reset_before past the window: rows
    (64, 1024, True, True, None),        # training keeps BLAS
    (4, 256, True, False, "columns"),
    (2, 256, True, False, "columns"),    # B ≥ 2 with H ≥ 256, below B·H = 1024
    (4, 128, True, False, None),         # B·H = 512 at H = 128: too little work per step
    (1, 512, True, False, "columns"),    # W_hh beyond L2: still ahead of BLAS-threaded steps
    (1, 256, True, False, "columns"),    # one row, 768 KB of W_hh: half in each core's L2
    (1, 192, True, False, None),         # one row, 432 KB of W_hh: serial
    (4, 256, False, False, "columns"),   # reset_before's few rows: columns in two halves
    (1, 512, False, False, "columns"),
    (1, 2048, False, False, "columns"),  # one row past the window
    (1, 192, False, False, None),        # below H = 256 reset_before stays serial
    (4, 128, False, False, None),
    (8, 512, False, False, "rows"),      # even chunks: rows
    (4, 256, True, True, None),          # columns: inference only
])
def test_forward_route_rules(two_threads, monkeypatch, B, H, reset_after, store, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    assert dispatch.forward_route(B, H, reset_after, store) == want


@pytest.mark.parametrize("threads, B, H, itemsize, want", [
    (16, 64, 512, 4, "columns"),         # 16 threads each streaming 3 MB of W_hh a step: too many
    (16, 64, 256, 4, "rows"),
    (16, 64, 512, 2, None),              # bfloat16 steps are not BLAS's
])
def test_many_rows_leave_blas_threaded_steps(monkeypatch, threads, B, H, itemsize, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    monkeypatch.setattr(dispatch, "thread_count", lambda: threads)
    assert dispatch.forward_route(B, H, True, False, itemsize=itemsize) == want


@pytest.mark.parametrize("H, reset_after", [(520, True), (520, False), (160, True)])
def test_many_rows_routes_equal_one_thread(monkeypatch, rng, H, reset_after):
    # 64+ rows past the old windows (W_hh beyond 3·512² values: columns; reset_before: rows; 128 rows
    # × 160 per thread: rows), padded rows included, against the serial kernel on one thread
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    B = 256 if H == 160 else 64
    g, _ = _model(6, H, 1, False, np.float32, reset_after=reset_after)
    x = rng.standard_normal((3, B, 6)).astype(np.float32)
    lengths = _lengths(rng, B, 3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        assert dispatch.forward_route(B, H, reset_after, False, 3) == (
            "columns" if reset_after and H == 520 else "rows")
        y2, h2 = g(x, lengths=lengths)
        numba.set_num_threads(1)
        y1, h1 = g(x, lengths=lengths)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(y2, y1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h2, h1, atol=1e-6, rtol=0)


@pytest.mark.parametrize("reset_after, padded", [(True, False), (False, True)])
def test_rows_share_one_packing_of_a_large_w_hh(monkeypatch, spy, rng, reset_after, padded):
    # W_hh past ROWS_SHARED_PANELS_BYTES (3·448² float32, 2.4 MB) is packed once for both chunks of
    # 8 rows, 16 steps: against the reference, and against one thread (each step on its own panels)
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    T, B, H = 16, 16, 448
    g, p = _model(8, H, 1, False, np.float32, reset_after=reset_after)
    x = rng.standard_normal((T, B, 8)).astype(np.float32)
    lengths = _lengths(rng, B, T) if padded else np.full(B, T)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        assert dispatch.forward_route(B, H, reset_after, False, T) == "rows"
        y2, h2 = g(x, lengths=lengths)
        assert spy["fwd"] == 1
        numba.set_num_threads(1)
        y1, h1 = g(x, lengths=lengths)
    finally:
        numba.set_num_threads(before)
    ry, rh = ref_gru(x, p, 1, H, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y2, ry, **TOL[np.float32])
    np.testing.assert_allclose(h2, rh, **TOL[np.float32])
    np.testing.assert_allclose(y2, y1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h2, h1, atol=1e-6, rtol=0)


def test_inference_keeps_off_blas_threads_rules(monkeypatch):
    rule, tiled = dispatch.keeps_off_blas, dispatch.inference_tiled_max
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    assert tiled(2, 16) == tiled(1, 16) == dispatch.serial_tiled_max(1)  # up to 16 rows on Numba's
    assert tiled(2, 1) == dispatch.serial_tiled_max(2)  # one row beyond L2: BLAS's GEMV on two threads
    assert rule(16, 64, 2, False) and rule(1, 256, 3, False) and rule(2, 512, 2, False)
    assert not rule(1, 257, 2, False)      # one row beyond L2: its GEMV on BLAS's threads, all in BLAS
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2", 0)
    assert not rule(17, 640, 2, False)     # 17 rows' steps take BLAS's GEMM: its threads anyway
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2", 32)  # (Zen 4: the dot-product block to 32 rows)
    assert rule(17, 640, 2, False) and rule(32, 1024, 2, False) and not rule(33, 640, 2, False)
    assert rule(32, 512, 2, False) and not rule(33, 512, 2, False)  # Numba's kernels up to 32 rows
    assert rule(17, 64, 2, False) and rule(64, 32, 2, False)  # GEMMs too small for BLAS to thread
    assert not rule(4, 64, 1, False)       # one thread: the serial kernel's own choice
    assert not rule(4, 64, 2, True)        # training keeps the serial kernel's sums
    monkeypatch.setattr(dispatch, "WIDE_BLAS", True)  # BLAS wider than Numba: its GEMM from 5 rows
    assert tiled(2, 4) == dispatch.serial_tiled_max(2) < tiled(1, 4)
    assert rule(4, 256, 2, False) and not rule(5, 256, 2, False) and rule(5, 64, 2, False)


@pytest.mark.parametrize("I, reset_after, padded, writeable", [
    (300, True, False, True), (300, False, True, True), (300, True, False, False), (64, True, False, True)])
def test_serial_route_keeps_its_projection_off_blas(two_threads, spy, rng, I, reset_after, padded, writeable):
    # a few rows off the named routes run the serial kernels, whose steps stay off BLAS: where their
    # input projection would call BLAS it runs on Numba's threads instead (one pool a call); one
    # thread's panels or dot-product block stay; so does an input array of another kind (read-only
    # here), which keeps the serial kernel rather than compile the parallel one again
    T, B, H = 8, 4, 48
    assert dispatch.forward_route(B, H, reset_after, False, T) is None
    g, p = _model(I, H, 1, False, np.float32, reset_after=reset_after)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x.setflags(write=writeable)
    lengths = np.array([T, 0, T - 1, T]) if padded else None  # unsorted, an empty row
    N = T * B if lengths is None else int(lengths.sum())
    blas = not any(dispatch.serial_projection_choice(N, I, 2, False, False))
    if I == 300 and not blas:
        pytest.skip("the serial kernel keeps this projection off BLAS here")
    y, h = g(x, lengths=lengths)
    assert spy["fwd"] == 0
    assert spy["proj"] == (1 if blas and writeable else 0)
    ry, rh = ref_gru(x, p, 1, H, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y, ry, **TOL[np.float32])
    np.testing.assert_allclose(h, rh, **TOL[np.float32])


def test_small_projection_off_blas_takes_the_dot_block(two_threads, spy, rng):
    # 20 rows of 150 inputs by 144 outputs (432000 multiply-adds): the serial kernel would call BLAS
    # with two threads; a parallel region costs more than the product, so this thread's dot block
    T, B, I, H = 5, 4, 150, 48
    assert not any(dispatch.serial_projection_choice(T * B, I, 2, False, False))
    assert dispatch.off_blas_dot(T * B, I, 3 * H) and not dispatch.off_blas_dot(T * B, 2 * I, 3 * H)
    # one row: weights of up to 3·256² values (one L2's worth of float32), whatever the inputs
    assert dispatch.off_blas_dot(1, 256, 768) and not dispatch.off_blas_dot(1, 257, 768)
    assert dispatch.off_blas_dot(1, 1024, 192) and not dispatch.off_blas_dot(1, 384, 768)
    g, p = _model(I, H, 1, False, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y, h = g(x)
    assert spy["fwd"] == 0 and spy["proj"] == 0
    ry, rh = ref_gru(x, p, 1, H)
    np.testing.assert_allclose(y, ry, **TOL[np.float32])
    np.testing.assert_allclose(h, rh, **TOL[np.float32])


@pytest.mark.parametrize("I, H", [(192, 192), (256, 64), (320, 192)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_one_step_of_one_row_projects_on_this_thread_within_l2(two_threads, spy, rng, I, H, with_h0):
    # a single step of one row on two threads, W_ih within one L2 (more than 128 inputs): this
    # thread's dot block, not a parallel region, which cost more than the product
    g, p = _model(I, H, 1, False, np.float32)
    x = rng.standard_normal((1, 1, I)).astype(np.float32)
    h0 = rng.standard_normal((1, 1, H)).astype(np.float32) if with_h0 else None
    y, h = g(x, h0)
    assert spy["proj"] == 0 and spy["fwd"] == 0
    ry, rh = ref_gru(x, p, 1, H, h0=h0)
    np.testing.assert_allclose(y, ry, **TOL[np.float32])
    np.testing.assert_allclose(h, rh, **TOL[np.float32])


@pytest.mark.parametrize("H, itemsize, want", [
    (384, 4, "columns"),                 # 1.7 MB of W_hh: beyond one L2, 0.85 MB per thread
    (512, 4, "columns"),                 # 3 MB: 1.5 MB per thread, float32 still ahead
    (256, 4, "columns"),                 # 768 KB: halves on two cores run faster
    (192, 4, None),                      # 432 KB: serial
    (256, 2, None),                      # bfloat16, 384 KB: serial
    (384, 2, "columns"),                 # bfloat16
    (512, 2, "columns"),
    (768, 2, None),
    (1024, 4, "columns"),                # B·H = 1024: the general rule
])
def test_columns_at_one_row_by_bytes(two_threads, monkeypatch, H, itemsize, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    assert dispatch.forward_route(1, H, True, False, itemsize=itemsize) == want
    # reset_before: float weights from H = 256 on its two-half kernel, at any size
    assert dispatch.forward_route(1, H, False, False, itemsize=itemsize) == (
        "columns" if itemsize == 4 and H >= 256 else None)
    monkeypatch.setattr(dispatch, "WIDE_BLAS", True)  # not measured there
    assert dispatch.forward_route(1, H, False, False, itemsize=itemsize) is None


@pytest.mark.parametrize("H, T, want", [
    (320, 3, None), (320, 4, "columns"),      # W_hh within the L2s: T·3H² from 2**20
    (384, 2, None), (384, 3, "columns"),
    (448, 1, None), (448, 3, None), (448, 4, "columns"),  # beyond: from 2 steps and 2**21
    (512, 2, None), (512, 3, "columns"),
    (640, 2, "columns"),
])
def test_short_calls_of_one_row_stay_serial(two_threads, monkeypatch, H, T, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    assert dispatch.forward_route(1, H, True, False, T) == want
    # reset_after=False's two-half columns: the same bounds (from two steps, at 256 units and more)
    assert dispatch.forward_route(1, H, False, False, T) == (want if T >= 2 else None)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("H, T", [(320, 2), (448, 3)])
def test_short_one_row_forward_on_two_threads_matches_reference(two_threads, rng, H, T, reset_after):
    g, p = _model(H, H, 1, False, np.float32, reset_after=reset_after)
    x = rng.standard_normal((T, 1, H)).astype(np.float32)
    h0 = rng.standard_normal((1, 1, H)).astype(np.float32)
    for h in (None, h0):
        y, h_n = g(x, h)
        ry, rh = ref_gru(x, p, 1, H, h0=h, reset_after=reset_after)
        np.testing.assert_allclose(y, ry, **TOL[np.float32])
        np.testing.assert_allclose(h_n, rh, **TOL[np.float32])


@pytest.mark.parametrize("H, T, wide, want, want_bf16", [
    (512, 3, False, "columns", "columns"),  # beyond the L2s: float32 columns from two steps and 2**21
    (896, 128, False, "columns", None),     # (bfloat16 keeps its window: 4.8 MB)
    (512, 1, False, None, "columns"),       # one step: the serial kernel
    (256, 8, False, "columns", None),       # within the L2s: float32 from 2**20 multiply-adds of W_hh
    (512, 128, True, None, "columns"),      # BLAS's vectors wider: its GEMV, as measured there
    (384, 128, True, "columns", "columns"),
])
def test_columns_at_one_row_beyond_the_l2s(two_threads, monkeypatch, H, T, wide, want, want_bf16):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.forward_route(1, H, True, False, T) == want
    assert dispatch.forward_route(1, H, True, False, T, itemsize=2) == want_bf16


@pytest.mark.parametrize("threads, B, H, want", [
    (2, 16, 256, "rows"),                # 8 rows × 256 per thread
    (2, 64, 256, "rows"),                # 32 rows × 256 per thread
    (2, 512, 256, "rows"),               # 256 rows × 256 per thread: the cap
    (2, 1024, 256, None),                # 512 rows × 256 per thread: BLAS's threaded GEMM
    (4, 64, 256, "rows"),                # 16 rows × 256
    (2, 16, 1024, "columns"),            # W_hh beyond L2: no rows route, columns on panels
    (2, 32, 1024, None),                 # B·H = 32768, W_hh 12 MB
    (2, 64, 512, "rows"),                # W_hh 3 MB, past the columns' window
    (2, 32, 512, "columns"),             # W_hh 3 MB, within the columns' window
    (2, 64, 64, "rows"),                 # 32 rows × 64
    (2, 256, 64, "rows"),                # 128 rows × 64
    (16, 64, 512, None),                 # 16 threads each streaming 3 MB of W_hh a step: too many
    (16, 256, 256, "rows"),              # 16 × 768 KB
])
def test_forward_route_rules_where_blas_is_wider(monkeypatch, threads, B, H, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", True)
    monkeypatch.setattr(dispatch, "thread_count", lambda: threads)
    assert dispatch.forward_route(B, H, True, False) == want


@pytest.mark.parametrize("B, H", [(32, 512), (16, 1024), (8, 1024)])
def test_columns_window_is_the_same_for_bfloat16(two_threads, monkeypatch, B, H):
    # bfloat16 weights run the columns route on panels of their own, in the same window (WIDE_BLAS:
    # the rows route does not take W_hh beyond L2 for them)
    monkeypatch.setattr(dispatch, "WIDE_BLAS", True)
    assert dispatch.forward_route(B, H, True, False, itemsize=4) == "columns"
    assert dispatch.forward_route(B, H, True, False, itemsize=2) == "columns"


@pytest.mark.parametrize("name, features, want", [
    ("sapphirerapids", "+avx2,+avx512f,+fma", True),
    ("znver4", "+avx2,+avx512f,+fma", False),
    ("haswell", "+avx2,-avx512f,+fma", False),
])
def test_blas_vectors_wider_reads_the_cpu(monkeypatch, name, features, want):
    monkeypatch.setattr(dispatch.numba.config, "CPU_NAME", name)
    monkeypatch.setattr(dispatch.numba.config, "CPU_FEATURES", features)
    assert dispatch.blas_vectors_wider() is want


def test_one_thread_takes_no_threaded_route():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert dispatch.forward_route(16, 64, True, False) is None
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("wide, T, B, H, want", [
    (False, 16, 16, 32, None),        # T·B·H² = 2¹⁸: two parallel regions cost more than they save
    (False, 2, 2, 256, None),
    (False, 32, 16, 32, "rows"),      # 2¹⁹
    (False, 8, 2, 256, "columns"),    # 2²⁰ over fewer rows than the rows route takes
    (False, 4, 2, 256, None),
    (False, 2, 4, 256, None),
    (False, 1, 64, 64, "rows"),       # 64 rows: the serial kernel's steps would take BLAS's threads
    (False, None, 2, 256, "columns"),  # steps unknown
    (True, 16, 16, 32, None),         # BLAS wider (Intel): the same rule, measured there since
    (True, 32, 16, 32, "rows"),
])
def test_named_routes_need_enough_work(two_threads, monkeypatch, wide, T, B, H, want):
    monkeypatch.setattr(dispatch, "NAMED_ROUTE_MIN_WORK", 1 << 19)  # (two_threads sets it to 0)
    monkeypatch.setattr(dispatch, "NAMED_ROUTE_MIN_WORK_FEW_ROWS", 1 << 20)
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    assert dispatch.forward_route(B, H, True, False, T) == want


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("T, B, H", [(128, 1, 192), (2048, 1, 64), (1024, 2, 128), (512, 4, 64)])
def test_smallest_batches_run_serial(two_threads, monkeypatch, wide, T, B, H):
    # B·H ≤ 256 and W_hh within 512 KB: the serial kernel (a route that projected the next chunk of
    # steps on another thread lost to it once the steps ran on packed panels), but from 160 units
    # where BLAS is no wider, columns
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    want = "columns" if H >= 160 and not wide else None
    assert dispatch.forward_route(B, H, True, False, T=T) == want


@pytest.mark.parametrize("threads, T, B, H, kept, itemsize, reset_after, want", [
    (2, 32, 1, 160, False, 4, True, "columns"),   # the fewest units and steps
    (2, 32, 5, 192, False, 4, True, "columns"),   # B·H = 960, below the window
    (2, 32, 3, 224, False, 4, True, "columns"),
    (2, 31, 1, 192, False, 4, True, None),        # too few steps to repay the columns' packing
    (2, 32, 1, 192, True, 4, True, None),         # a frozen copy's kept panels: from 64 steps
    (2, 64, 1, 192, True, 4, True, "columns"),
    (2, 128, 4, 128, False, 4, True, None),       # H = 128: level or lost
    (2, 128, 2, 192, False, 8, True, None),       # float64: not measured
    (2, 128, 2, 192, False, 2, True, None),       # bfloat16 weights: their own window
    (2, 128, 2, 192, False, 4, False, None),      # reset_before: no columns route
    (4, 128, 2, 192, False, 4, True, None),       # more threads: not measured
    (2, None, 2, 192, False, 4, True, None),      # steps unknown
])
def test_few_rows_take_columns_where_blas_is_no_wider(monkeypatch, threads, T, B, H, kept, itemsize,
                                                       reset_after, want):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    monkeypatch.setattr(dispatch, "thread_count", lambda: threads)
    assert dispatch.forward_route(B, H, reset_after, False, T, itemsize, kept) == want
    monkeypatch.setattr(dispatch, "WIDE_BLAS", True)  # not measured there: the serial kernels
    assert dispatch.forward_route(B, H, reset_after, False, T, itemsize, kept) is None


@pytest.mark.parametrize("B, threads", [(10, 2), (64, 2), (17, 4), (33, 3), (5, 16)])
def test_rows_order_balances_sorted_chunks(B, threads):
    lengths = np.random.default_rng(B).integers(0, 50, B)
    order = dispatch.rows_order(lengths, threads)
    assert sorted(order.tolist()) == list(range(B))
    cs, nc = dispatch.row_chunks.py_func(B, threads)
    chunks = [lengths[order][c * cs:(c + 1) * cs] for c in range(nc)]
    assert all(np.all(c[:-1] >= c[1:]) for c in chunks)          # each chunk still skips finished rows
    full = [c.sum() for c in chunks if len(c) == cs]
    ranked = np.sort(lengths)[::-1]
    assert max(full) - min(full) <= ranked[0] - ranked[-1]        # dealt in turn, not in blocks
    assert chunks[0].sum() < ranked[:cs].sum() or B <= cs


def test_rows_order_keeps_equal_lengths():
    assert dispatch.rows_order(np.full(12, 7, np.int64), 2) is None


def test_rows_route_with_dealt_rows_matches_one_thread(two_threads, spy):
    rng = np.random.default_rng(5)
    T, B, H = 9, 24, 16
    g, _ = _model(H, H, 1, True, np.float32)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B)
    y, h_n = g(x, lengths=lengths)
    assert spy["fwd"] == 2
    numba.set_num_threads(1)
    y1, h1 = g(x, lengths=lengths)
    np.testing.assert_allclose(y, y1, atol=1e-6)
    np.testing.assert_allclose(h_n, h1, atol=1e-6)


def test_rows_route_with_busy_slot_runs_chunks_serially(two_threads, spy, monkeypatch):
    """Another thread holds the parallel slot: the dealt rows run on the serial kernel chunk by chunk,
    each chunk told it is sorted (so it skips its finished rows), with the same results as 1 thread."""
    rng = np.random.default_rng(6)
    T, B, H = 9, 24, 16
    g, p = _model(H, H, 1, False, np.float64)
    x = rng.standard_normal((T, B, H))
    lengths = rng.integers(0, T + 1, B)
    seen = []
    serial = dispatch.gru_forward_serial

    def recording(*a):
        seen.append((a[6], a[-2], a[-1]))  # sorted_desc, b0, b1
        return serial(*a)

    monkeypatch.setattr(dispatch, "gru_forward_serial", recording)
    with dispatch._PARALLEL_LOCK:
        y, h_n = g(x, lengths=lengths)
    assert spy["fwd"] == 0
    cs, nc = dispatch.row_chunks.py_func(B, 2)
    assert [(b0, b1) for _, b0, b1 in seen] == [(c * cs, min(B, (c + 1) * cs)) for c in range(nc)]
    assert all(s for s, _, _ in seen)
    y_ref, h_ref = ref_gru(x, p, 1, H, False, lengths=lengths)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float64])


@pytest.mark.parametrize("T, B", [(5, 0), (0, 3), (0, 0)])
def test_empty_batch_or_sequence_on_two_threads(two_threads, T, B):
    """Nothing to split: no route is chosen (an empty batch once divided by zero choosing one)."""
    assert dispatch.forward_route(B, 16, True, False, T) is None
    g = ng.GRU(3, 16, 2, bidirectional=True, seed=0)
    for model in (g, g.quantize()):
        y, h_n = model(np.zeros((T, B, 3), np.float32))
        assert y.shape == (T, B, 32) and h_n.shape == (4, B, 16)
        assert np.all(h_n == 0)


def test_stream_chunks_take_the_routes(two_threads, spy, rng):
    """A stream's chunk of steps runs as a forward does (here the rows route) and continues the state."""
    g, _ = _model(5, 16, 1, False, np.float32)
    s = g.stream(16)
    x = rng.standard_normal((6, 16, 5)).astype(np.float32)
    y1, y2 = s.step(x[:3]), s.step(x[3:])
    assert spy["fwd"] == 2
    y, h_n = g(x)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, **TOL[np.float32])
    np.testing.assert_allclose(s.state, h_n, **TOL[np.float32])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, I, M", [(96, 37, 150), (130, 64, 48), (8, 5, 1), (200, 300, 97)])
def test_threaded_projection_on_panels_the_threads_pack(two_threads, dtype, N, I, M):
    """forward.input_projection_parallel given no panels packs W's panels on the threads (each a
    share, the last panel's columns past M zero) and multiplies on them: as x @ W.T + b, and as on
    panels packed beforehand, bit for bit."""
    from numgru.kernels._jit import native_address
    from numgru.kernels.forward import input_projection_parallel, packed_panels, projection_block
    rng = np.random.default_rng(N + I + M)
    x, W = rng.standard_normal((N, I)).astype(dtype), rng.standard_normal((M, I)).astype(dtype)
    b = rng.standard_normal(M).astype(dtype)
    outs = []
    for Wp in (dispatch.empty_array(dtype, 3), packed_panels(W)):
        out = np.full((N, M), np.nan, dtype)
        args = (x, W, Wp, b, True, out, True)
        input_projection_parallel(x, W, Wp, dispatch.empty_array(dtype, 1), b, True, out, True, 2,
                                  native_address(projection_block, (*args, 0, 0, 0, 0, 0)))
        outs.append(out)
    want = x.astype(np.float64) @ W.T.astype(np.float64) + b
    scale = np.abs(x).astype(np.float64) @ np.abs(W).T.astype(np.float64) + np.abs(b)  # sums' magnitudes
    assert np.all(np.abs(outs[0] - want) <= 4 * I * np.finfo(dtype).eps * scale)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_float64_projection_takes_panels_from_fewer_rows_on_threads():
    # (dispatch.PROJ_PANELS_PARALLEL_F64: measured on Zen 4, two threads)
    assert dispatch.projection_panels(128, 512, 2, 8) and not dispatch.projection_panels(128, 512, 2, 4)
    assert not dispatch.projection_panels(64, 512, 2, 8)
    assert not dispatch.projection_panels(128, 1024, 2, 8) and dispatch.projection_panels(256, 1024, 2, 8)
    # wide ones (split by ranges of panels, each packed by its task) from PROJ_PANELS_PARALLEL_F64_WIDE rows
    for I, M in [(1024, 3072), (512, 1536), (2048, 300)]:
        assert M * I * 8 >= WIDE_PANELS_BYTES
        assert dispatch.projection_panels(32, I, 2, 8, M) and not dispatch.projection_panels(31, I, 2, 8, M)
    assert not dispatch.projection_panels(64, 384, 2, 8, 1152)  # (3.5 MB: the table's)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_step_as_a_rows_forward(two_threads, spy, rng, monkeypatch, dtype, reset_after):
    """A GRUCell step that rows_share_panels gives to the rows route (forced here at a small size)
    equals the step kernels' within rounding, and tests/reference.py's one step."""
    import numgru.layers as layers
    B, I, H = 12, 5, 40
    cell = ng.GRUCell(I, H, reset_after=reset_after, dtype=dtype, seed=3)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    want = cell(x, h)
    assert spy["fwd"] == 0
    monkeypatch.setattr(layers, "rows_share_panels", lambda *a: True)
    cell._plans.clear()
    h.flags.writeable = False  # (a read-only h is copied, as the GRU's own checks copy h0)
    got = cell(x, h)
    assert spy["fwd"] == 1 and got.shape == (B, H)
    np.testing.assert_allclose(got, want, **TOL[dtype])
    p = {k + "_l0": v for k, v in cell.state_dict().items()}
    _, h_ref = ref_gru(x[None], p, 1, H, h0=h[None], reset_after=reset_after)
    np.testing.assert_allclose(got, h_ref[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_step_as_a_rows_forward(two_threads, spy, rng, monkeypatch, dtype):
    """A stream's step that GRU._one_step_on_rows gives to the rows route (forced here at a small size)
    carries the state as the step kernels do: two steps of a two-layer model against the stepper's
    and tests/reference.py's."""
    import numgru.layers as layers
    B, I, H, L = 12, 5, 40, 2
    g, p = _model(I, H, L, False, dtype)
    xs = rng.standard_normal((2, B, I)).astype(dtype)
    plain = g.stream(batch_size=B)
    want = [plain.step(x) for x in xs]
    assert spy["fwd"] == 0
    monkeypatch.setattr(layers, "rows_share_panels", lambda *a: True)
    s = g.stream(batch_size=B)
    got = [s.step(x) for x in xs]
    assert spy["fwd"] == 2 * L
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    np.testing.assert_allclose(s.state, plain.state, **TOL[dtype])
    y_ref, _ = ref_gru(xs, p, L, H)
    np.testing.assert_allclose(got[1], y_ref[1], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_take_batch_rows_equals_numpys_take(dtype, threads, monkeypatch):
    # the batch's rows put in another order (layers' sort by length and back): the kernel on one
    # thread and on two (from any size here), and numpy's take where the kernel does not apply
    monkeypatch.setattr(dispatch, "TAKE_BATCH_PARALLEL_MIN", 0)
    rng = np.random.default_rng(3)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for T, B, K in ((1, 1, 1), (7, 13, 5), (10, 128, 96)):
            a = rng.standard_normal((T, B, K)).astype(dtype)
            perm = rng.permutation(B).astype(np.int64)
            out = dispatch.take_batch_rows(a, perm)
            np.testing.assert_array_equal(out, np.take(a, perm, axis=1))
            inv = np.empty_like(perm)
            inv[perm] = np.arange(B)
            back = np.full_like(a, np.nan)
            assert dispatch.take_batch_rows(out, inv, back) is back
            np.testing.assert_array_equal(back, a)
            # a view that is not C-contiguous, and int32 indices: numpy's take
            view = np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
            np.testing.assert_array_equal(dispatch.take_batch_rows(view, perm), np.take(a, perm, axis=1))
            np.testing.assert_array_equal(dispatch.take_batch_rows(a, perm.astype(np.int32)), out)
    finally:
        numba.set_num_threads(before)
