"""The multi-threaded inference route split over hidden units (dispatch.forward_route "columns").

Checked against tests/reference.py and against the single-thread route, with more than one Numba
thread so the route really runs (a spy counts its calls).
"""
import itertools
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
from numgru.kernels import dispatch, forward
from reference import gru as ref_gru, random_params

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                reason="needs two Numba threads")


@pytest.fixture
def spy(monkeypatch):
    calls = {"cols": 0, "proj": 0}
    cols, proj = dispatch.gru_forward_cols, dispatch.input_projection_parallel

    def cols_spy(*a):
        calls["cols"] += 1
        return cols(*a)

    def proj_spy(*a):
        calls["proj"] += 1
        return proj(*a)

    monkeypatch.setattr(dispatch, "gru_forward_cols", cols_spy)
    monkeypatch.setattr(dispatch, "input_projection_parallel", proj_spy)
    return calls


def _model(I, H, L, bi, dtype, gate="sigmoid", clip=None, seed=0):
    p = random_params(I, H, L, bi, seed=seed)
    g = ng.GRU(I, H, L, bidirectional=bi, dtype=dtype, gate_activation=gate, clip=clip)
    g.load_state_dict(p)
    return g, p


# batches too small for the rows route (fewer than 4 rows per thread); H = 400 splits into uneven unit
# blocks (208 + 192), H = 256 into equal ones. T = 7 stays off the blocks' panels (too few rows × steps
# to repay packing), T = 40 with B ≥ 2 packs them; one row never does.
CASES = [(7, *c) for c in itertools.product([(3, 400), (4, 256)], [False, True], [np.float32, np.float64],
                                            [False, True])]
CASES += [(40, (4, 256), False, np.float32, True), (40, (3, 400), True, np.float64, False),
          (40, (4, 256), True, np.float32, False), (40, (1, 256), False, np.float32, False),
          (7, (1, 256), True, np.float64, True)]


@pytest.mark.parametrize("T, shape, bi, dtype, with_lengths", CASES)
def test_columns_match_reference(two_threads, spy, rng, T, shape, bi, dtype, with_lengths):
    B, H = shape
    I, L = 5, 2
    g, p = _model(I, H, L, bi, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * (2 if bi else 1), B, H)).astype(dtype)
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, T + 1, B)
        lengths[0], lengths[-1] = 0, T  # unsorted, with an empty and a full row
    y, h_n = g(x, h0, lengths)
    y_ref, h_ref = ref_gru(x, p, L, H, bi, h0=h0, lengths=lengths)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])
    assert spy["cols"] == L * (2 if bi else 1)
    assert spy["proj"] == L * (2 if bi else 1)


@pytest.mark.parametrize("B, frozen", [(1, False), (3, False), (2, True)])
def test_few_rows_below_the_window_match_reference(two_threads, spy, monkeypatch, rng, B, frozen):
    # where BLAS is no wider, 1–5 rows from 160 units take columns (a frozen copy from 64 steps):
    # H = 168 splits into unit blocks of 96 and 72
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    T, I, H = 64, 24, 168
    g, p = _model(I, H, 1, False, np.float32)
    model = g.freeze() if frozen else g
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.full(B, T)
    lengths[0] = T - 5  # unsorted, one row shorter
    y, h_n = model(x, None, lengths)
    y_ref, h_ref = ref_gru(x, p, 1, H, False, lengths=lengths)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    assert spy["cols"] == 1


BEFORE_CASES = [(7, (1, 272), False, np.float32, False), (7, (3, 400), True, np.float64, True),
                (40, (4, 272), False, np.float32, True), (40, (3, 400), True, np.float32, False),
                (40, (1, 256), False, np.float64, True), (40, (12, 256), False, np.float32, True)]


@pytest.mark.parametrize("T, shape, bi, dtype, with_lengths", BEFORE_CASES)
def test_reset_before_columns_match_reference(two_threads, monkeypatch, rng, T, shape, bi, dtype, with_lengths):
    """reset_before's two-half steps (forward._gru_forward_cols_before): one row on W_hh's tiles as
    it lies, 2+ rows over 40 steps on the blocks' panels; H = 272 / 400 split 144 + 128 / 208 + 192;
    12 rows (chunks of 8 and 4 for the rows route) take columns too."""
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    calls = []
    before = dispatch.gru_forward_cols_before
    monkeypatch.setattr(dispatch, "gru_forward_cols_before", lambda *a: (calls.append(1), before(*a))[1])
    B, H = shape
    I, L = 5, 2
    p = random_params(I, H, L, bi, seed=3)
    g = ng.GRU(I, H, L, bidirectional=bi, dtype=dtype, reset_after=False)
    g.load_state_dict(p)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * (2 if bi else 1), B, H)).astype(dtype)
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, T + 1, B)
        lengths[0], lengths[-1] = 0, T  # unsorted, with an empty and a full row
    y, h_n = g(x, h0, lengths)
    y_ref, h_ref = ref_gru(x, p, L, H, bi, h0=h0, lengths=lengths, reset_after=False)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])
    assert len(calls) == L * (2 if bi else 1)


@pytest.mark.parametrize("gate, clip", [("hard_sigmoid", 0.6), ("sigmoid", 0.5)])
def test_reset_before_columns_gate_options(two_threads, monkeypatch, rng, gate, clip):
    monkeypatch.setattr(dispatch, "WIDE_BLAS", False)
    T, B, I, H = 6, 2, 3, 288
    p = random_params(I, H, 1, False, seed=4)
    g = ng.GRU(I, H, dtype=np.float64, reset_after=False, gate_activation=gate, clip=clip)
    g.load_state_dict(p)
    assert dispatch.forward_route(B, H, False, False, T, 8) == "columns"
    x = 3 * rng.standard_normal((T, B, I))
    y, h_n = g(x)
    y_ref, _ = ref_gru(x, p, 1, H, reset_after=False, gate=gate.replace("_sigmoid", ""), alpha=g.alpha,
                       beta=g.beta, clip=clip)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])


@pytest.mark.parametrize("gate, clip", [("hard_sigmoid", None), ("sigmoid", 0.5),
                                        ("hard_sigmoid_keras3", 2.0)])
def test_columns_gate_options(two_threads, spy, rng, gate, clip):
    T, B, I, H = 6, 6, 3, 200
    g, p = _model(I, H, 1, False, np.float64, gate, clip)
    x = 3 * rng.standard_normal((T, B, I))
    y, h_n = g(x)
    y_ref, h_ref = ref_gru(x, p, 1, H, gate=gate.replace("_keras3", ""), alpha=g.alpha, beta=g.beta,
                           clip=clip)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    assert spy["cols"] == 1


def test_columns_equal_single_thread_route(spy, rng):
    g, _ = _model(8, 256, 1, True, np.float32)
    x = rng.standard_normal((20, 4, 8)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1, h1 = g(x)
        assert spy["cols"] == 0
        numba.set_num_threads(2)
        y2, h2 = g(x)
        assert spy["cols"] == 2
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(y2, y1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(h2, h1, atol=1e-6, rtol=0)


def test_training_keeps_the_blas_route(two_threads, spy, rng):
    x = rng.standard_normal((5, 4, 4)).astype(np.float32)
    g, _ = _model(4, 256, 1, False, np.float32)
    g.forward_train(x)
    ng.GRU(4, 256, reset_after=False, seed=0).forward_train(x)
    assert spy["cols"] == 0 and spy["proj"] == 0


@pytest.mark.parametrize("wide, want", [(False, 1), (True, 0)])
def test_reset_before_takes_its_own_columns_kernel(two_threads, spy, monkeypatch, rng, wide, want):
    # where BLAS is no wider, reset_before's few rows split each step's two halves over units
    monkeypatch.setattr(dispatch, "WIDE_BLAS", wide)
    calls = []
    before = dispatch.gru_forward_cols_before
    monkeypatch.setattr(dispatch, "gru_forward_cols_before", lambda *a: (calls.append(1), before(*a))[1])
    ng.GRU(4, 256, reset_after=False, seed=0)(rng.standard_normal((5, 4, 4)).astype(np.float32))
    assert len(calls) == want and spy["cols"] == 0


@pytest.mark.parametrize("N, I, M, bias", [(1, 3, 390, True), (30, 5, 96, True), (64, 7, 33, False),
                                            (130, 64, 768, False), (300, 257, 129, True)])
@pytest.mark.parametrize("columns", [True, False])
def test_input_projection_routes(two_threads, rng, N, I, M, bias, columns):
    """Numba's threads (the threaded routes) or BLAS: a GEMV for one row, W @ x.T up to 64 rows, x @ W.T beyond."""
    x = rng.standard_normal((N, I))
    W = rng.standard_normal((M, I))
    b = rng.standard_normal(M) if bias else None
    got = dispatch.input_projection(x, W, b, numba_threads=columns)
    want = x @ W.T + (0 if b is None else b)
    np.testing.assert_allclose(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 37, 128, forward.COLUMN_SPLIT_MAX_ROWS + 8])
def test_projection_on_threads_by_panels_equals_one_thread(two_threads, rng, dtype, N):
    """Wide panels over few rows split by ranges of panels (more rows: by blocks of rows); either way
    each value is one thread's panels' bit for bit."""
    from numgru.kernels.panel import WIDE_PANELS_BYTES, panel_width
    I = 700
    w = numba.njit(lambda v: panel_width(v))(dtype(0))
    M = (-(-WIDE_PANELS_BYTES // (I * np.dtype(dtype).itemsize)) // w + 2) * w - 7  # a last panel in part
    x = rng.standard_normal((N, I)).astype(dtype)
    W = rng.standard_normal((M, I)).astype(dtype)
    b = rng.standard_normal(M).astype(dtype)
    none = np.empty((0, 0, 0), dtype)
    one = np.empty((N, M), dtype)
    forward.input_projection_kernel(x, W, none, b, True, one, True, False)
    np.testing.assert_allclose(one, x.astype(np.float64) @ W.T.astype(np.float64) + b,
                               rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-3 if dtype == np.float32 else 1e-10)
    two = np.full((N, M), np.nan, dtype)
    with dispatch.parallel_slot(True) as par:
        assert par
        dispatch.project_on_threads(x, W, none, b, True, two, True, 2)
    np.testing.assert_array_equal(two, one)


@pytest.mark.parametrize("gate, clip, with_lengths", [("sigmoid", None, False), ("sigmoid", None, True),
                                                      ("hard_sigmoid", 0.5, True)])
def test_one_step_as_a_product_matches_reference(two_threads, rng, monkeypatch, gate, clip, with_lengths):
    """A float64 call of one step given h0 over wide W_hh (dispatch.one_step_as_product): W_hh h0 by
    ranges of its panels, then the gates (a row of length 0 keeps h0, its output zero)."""
    calls = []
    step = dispatch.step_from_products
    monkeypatch.setattr(dispatch, "step_from_products", lambda *a: (calls.append(1), step(*a))[1])
    B, I, H = 40, 7, 600
    assert 3 * H * H * 8 >= dispatch.ONE_STEP_PRODUCT_MIN_BYTES
    g, p = _model(I, H, 1, False, np.float64, gate, clip)
    x = rng.standard_normal((1, B, I))
    h0 = rng.standard_normal((1, B, H))
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, 2, B)
        lengths[0], lengths[-1] = 0, 1
    y, h_n = g(x, h0, lengths)
    y_ref, h_ref = ref_gru(x, p, 1, H, h0=h0, lengths=lengths, gate=gate, alpha=g.alpha, beta=g.beta,
                           clip=clip)
    np.testing.assert_allclose(y, y_ref, **TOL[np.float64])
    np.testing.assert_allclose(h_n, h_ref, **TOL[np.float64])
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["cell", "stream"])
def test_float64_step_as_a_one_step_product(two_threads, rng, monkeypatch, kind):
    """A float64 GRUCell or stream step of STEP_AS_PRODUCT_MIN_ROWS rows over wide W_hh on two threads
    runs as a forward of one step whose W_hh h is a projection by ranges of its panels
    (GRU._one_step_on_rows, dispatch.one_step_as_product): against tests/reference.py's, the stream's
    state carried over two steps of a two-layer model; reset_before and fewer rows keep the step
    kernels."""
    calls = []
    step = dispatch.step_from_products
    monkeypatch.setattr(dispatch, "step_from_products", lambda *a: (calls.append(1), step(*a))[1])
    B, I, H = dispatch.STEP_AS_PRODUCT_MIN_ROWS, 7, 600
    assert dispatch.one_step_as_product(1, B, np.empty((3 * H, H)), 2)
    if kind == "cell":
        cell = ng.GRUCell(I, H, dtype=np.float64, seed=5)
        x = rng.standard_normal((B, I))
        h = rng.standard_normal((B, H))
        got = cell(x, h)
        assert len(calls) == 1
        p = {k + "_l0": v for k, v in cell.state_dict().items()}
        _, h_ref = ref_gru(x[None], p, 1, H, h0=h[None])
        np.testing.assert_allclose(got, h_ref[0], **TOL[np.float64])
        ng.GRUCell(I, H, dtype=np.float64, reset_after=False, seed=5)(x, h)
        cell(x[:B - 1], h[:B - 1])
        assert len(calls) == 1
    else:
        g, p = _model(I, H, 2, False, np.float64)
        xs = rng.standard_normal((2, B, I))
        s = g.stream(batch_size=B)
        got = [s.step(x) for x in xs]
        assert len(calls) == 2 * 2  # (each step of each layer: the stream's state starts as zeros given)
        y_ref, h_ref = ref_gru(xs, p, 2, H)
        for t in range(2):
            np.testing.assert_allclose(got[t], y_ref[t], **TOL[np.float64])
        np.testing.assert_allclose(s.state, h_ref, **TOL[np.float64])


def test_one_step_as_a_product_rule():
    W = np.empty((3 * 1024, 1024))
    assert dispatch.one_step_as_product(1, 128, W, 2)
    assert not dispatch.one_step_as_product(2, 128, W, 2)  # one step only
    assert not dispatch.one_step_as_product(1, 128, W, 1)  # several threads
    assert not dispatch.one_step_as_product(1, 128, W.astype(np.float32), 2)  # float64 only
    assert not dispatch.one_step_as_product(1, 16, W, 2)  # rows the threaded projection takes panels for
    assert not dispatch.one_step_as_product(1, 128, np.empty((3 * 512, 512)), 2)  # 6 MB


def test_small_rows_matmul_all_row_counts(rng):
    @numba.njit
    def run(W, h, out, n):
        forward.small_rows_matmul(W, h, out, n)

    W = rng.standard_normal((11, 37))
    h = rng.standard_normal((9, 37))
    for n in range(1, 10):
        out = np.zeros((9, 11))
        run(W, h, out, n)
        np.testing.assert_allclose(out[:n], h[:n] @ W.T, atol=1e-12, rtol=0)
        assert not out[n:].any()


_WORKERS_PROBE = r"""
import sys, numba, numpy as np
from numgru.kernels.dispatch import gate_scalars
from numgru.kernels.forward import gru_forward_cols, gru_forward_serial
numba.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
for B, H, nc in [(1, 200, 3), (4, 200, 3), (5, 96, 2), (2, 48, 4)]:
    T = 9
    gx = rng.standard_normal((T, B, 3 * H)).astype(np.float32)
    W = (rng.standard_normal((3 * H, H)) / np.sqrt(H)).astype(np.float32)
    b = rng.standard_normal(3 * H).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    lengths = np.sort(rng.integers(0, T + 1, B))[::-1].copy()
    gs = gate_scalars(np.dtype(np.float32), 0, 0.2, 0.5, None)
    y1, h1 = np.full((T, B, H), np.nan, np.float32), np.empty((B, H), np.float32)
    y2, h2 = np.full((T, B, H), np.nan, np.float32), np.empty((B, H), np.float32)
    gru_forward_cols(gx, W, b, h0, lengths, True, False, *gs, y1, 0, h1, nc)
    none = np.empty((0, 0, 0), np.float32)
    gru_forward_serial(gx, W, (none, none), b, h0, lengths, True, False, True, *gs, y2, 0, h2, False,
                       np.empty((0, 0, 0), np.float32), 16, 0, B)
    np.testing.assert_allclose(y1, y2, atol=2e-6, rtol=0)
    np.testing.assert_allclose(h1, h2, atol=2e-6, rtol=0)
print("ok")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_columns_with_more_workers_than_threads(threads):
    """The column route's workers meet every step; one whose thread has not started (here: more workers
    than threads, so some run only after others finish) has its blocks taken by the running ones, so
    the call completes, with the serial kernel's results. In a subprocess with a timeout: a worker
    waiting on one that never runs would hang."""
    out = subprocess.run([sys.executable, "-c", _WORKERS_PROBE, str(threads)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
