"""Weight gradients on the panel block with the operands where they lie
(numgru.kernels.panel.gemm_tn, numgru.kernels.backward.weight_gradient_panels) against NumPy in
float64: strips that end inside a vector (masked loads), column offsets, a second block of gate
gradients, sums longer than one k-chunk, ranges of columns that must reproduce the whole call bit for
bit, and the dispatcher's routes (one thread, worker threads side by side) giving equal results."""
import os

import numba
import numpy as np
import pytest

import numgru as ng
from numgru.kernels import dispatch
from numgru.kernels.backward import weight_gradient_panels
from numgru.kernels.forward import PANELS_PAST_L2_MANY_ROWS, TILED_MAX_ONE_THREAD
from numgru.kernels.panel import gemm_tn


@numba.njit(cache=False)
def _tn(a, b, ca, na, cb, nb, out, oi, oj):
    gemm_tn(a, b, ca, na, cb, nb, out, oi, oj)


def _ref(D, X):
    return D.astype(np.float64).T @ X.astype(np.float64)


def _tol(dtype, N):
    return (2e-5 if dtype == np.float32 else 1e-12) * max(1.0, np.sqrt(N))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, Md, I", [(1, 1, 1), (7, 5, 3), (300, 50, 17), (513, 97, 64), (1000, 48, 9),
                                      (64, 80, 40)])
def test_gemm_tn_matches_numpy(dtype, N, Md, I):
    rng = np.random.default_rng(N + Md + I)
    x = rng.standard_normal((N, I)).astype(dtype)
    d = rng.standard_normal((N, Md)).astype(dtype)
    for c0, m in ((0, Md), (Md // 3, Md - Md // 3), (Md - 1, 1)):
        for r0, r1 in ((0, I), (I // 2, I)):
            # x's columns by d's (the transpose of a gradient's block), then d's by x's
            for a, ca, na, b, cb, nb in ((x, r0, r1 - r0, d, c0, m), (d, c0, m, x, r0, r1 - r0)):
                out = np.full((na + 4, nb + 5), 7.0, dtype)
                _tn(a, b, ca, na, cb, nb, out, 2, 3)
                want = _ref(a[:, ca:ca + na], b[:, cb:cb + nb])
                np.testing.assert_allclose(out[2:2 + na, 3:3 + nb], want, rtol=0, atol=_tol(dtype, N))
                # nothing outside the block is written
                inside = np.zeros(out.shape, bool)
                inside[2:2 + na, 3:3 + nb] = True
                assert (out[~inside] == 7).all()


def test_gemm_tn_of_no_rows_writes_zeros():
    out = np.full((4, 6), 3.0, np.float32)
    _tn(np.empty((0, 4), np.float32), np.empty((0, 6), np.float32), 0, 4, 0, 6, out, 0, 0)
    assert (out == 0).all()


def test_gemm_tn_rejects_bounds():
    x = np.ones((5, 4), np.float32)
    d = np.ones((5, 6), np.float32)
    out = np.zeros((4, 6), np.float32)
    for args in ((x, d, 1, 4, 0, 6, out, 0, 0), (x, d, 0, 4, 1, 6, out, 0, 0), (x, d, 0, 4, 0, 6, out, 1, 0),
                 (x, d, 0, 4, 0, 6, out, 0, 1), (x, d, 0, 4, 0, 6, np.zeros((3, 6), np.float32), 0, 0),
                 (x, d[:4].copy(), 0, 4, 0, 6, out, 0, 0), (x, d, -1, 2, 0, 6, out, 0, 0),
                 (x, d, 0, -1, 0, 6, out, 0, 0), (x, d, 0, 4, 0, 6, out, -1, 0)):
        with pytest.raises(ValueError, match="gemm_tn"):
            _tn(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, H, I", [(5, 40, 300), (200, 128, 300), (64, 16, 16), (1030, 40, 300), (4097, 64, 24)])
def test_weight_gradient_panels_matches_numpy(dtype, N, H, I):
    """reset_after's dW_hh: dgx's r and z blocks then dgh's n block, written directly over few rows
    (the first two sizes) or through slabs of its transpose; the column ranges of one call equal the
    whole call bit for bit."""
    rng = np.random.default_rng(N + H)
    D = rng.standard_normal((N, 3 * H)).astype(dtype)
    D2 = rng.standard_normal((N, H)).astype(dtype)
    X = rng.standard_normal((N, I)).astype(dtype)
    out = np.empty((3 * H, I), dtype)
    weight_gradient_panels(D, 0, 2 * H, D2, X, out, 0, I)
    want = _ref(np.concatenate([D[:, :2 * H], D2], axis=1), X)
    np.testing.assert_allclose(out, want, rtol=0, atol=_tol(dtype, N))
    parts = np.full_like(out, np.nan)
    for r0 in range(0, I, 8):
        weight_gradient_panels(D, 0, 2 * H, D2, X, parts, r0, min(I, r0 + 8))
    np.testing.assert_array_equal(parts, out)
    # the n block by itself, from a column offset (reset_before's dW_hn)
    n_block = np.empty((H, I), dtype)
    weight_gradient_panels(D, 2 * H, H, np.empty((N, 0), dtype), X, n_block, 0, I)
    np.testing.assert_allclose(n_block, _ref(D[:, 2 * H:], X), rtol=0, atol=_tol(dtype, N))


def test_weight_gradient_panels_rejects_shapes():
    D = np.ones((8, 6), np.float32)
    X = np.ones((8, 4), np.float32)
    none = np.empty((8, 0), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        weight_gradient_panels(D, 0, 6, none, X, np.empty((5, 4), np.float32), 0, 4)
    with pytest.raises(ValueError, match="shapes"):
        weight_gradient_panels(D, 2, 6, none, X, np.empty((6, 4), np.float32), 0, 4)
    with pytest.raises(ValueError, match="shapes"):
        weight_gradient_panels(D, 0, 6, np.empty((7, 0), np.float32), X, np.empty((6, 4), np.float32), 0, 4)
    with pytest.raises(ValueError, match="columns"):
        weight_gradient_panels(D, 0, 6, none, X, np.empty((6, 4), np.float32), 0, 5)


def _pair_operands(rng, N, H, I):
    """A layer's weight-gradient pair's operands over N rows: the gate gradients (N, 3H), dgh's n block
    (N, H), the inputs (N, I) and the previous states (N, H), float32."""
    return tuple(rng.standard_normal(shape).astype(np.float32) for shape in ((N, 3 * H), (N, H), (N, I), (N, H)))

@pytest.mark.skipif(not dispatch.panels_gradient_wanted(np.float32), reason="BLAS takes the gradients here")
def test_side_by_side_routes_equal_one_thread(monkeypatch):
    """The dispatcher's gradients and projections give the same values with one thread and with
    worker threads side by side (work past the pool's bound)."""
    rng = np.random.default_rng(5)
    N, H, I = 2048, 64, 48
    D, D2, X, Hp = _pair_operands(rng, N, H, I)
    W = rng.standard_normal((3 * H, I)).astype(np.float32)
    b = rng.standard_normal(3 * H).astype(np.float32)
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(dispatch, "thread_count", lambda t=threads: t)
        monkeypatch.setattr(dispatch, "PANEL_GRADIENT_POOL_MIN", 1)
        a = np.empty((3 * H, I), np.float32)
        c = np.empty((3 * H, H), np.float32)
        dispatch.weight_gradient_pair((D, X, a, None), (D, Hp, c, D2))
        gx = dispatch.pool_projection(X, W, b, True, np.empty((N, 3 * H), np.float32))
        dx = dispatch.input_gradient(D, W, np.empty((N, I), np.float32), False)
        results.append((a, c, gx, dx))
    for one, many in zip(*results):
        np.testing.assert_array_equal(one, many)
    a, c, gx, dx = results[0]
    np.testing.assert_allclose(a, _ref(D, X), atol=1e-3)
    np.testing.assert_allclose(c, _ref(np.concatenate([D[:, :2 * H], D2], 1), Hp), atol=1e-3)
    np.testing.assert_allclose(gx, X.astype(np.float64) @ W.T.astype(np.float64) + b, atol=1e-4)
    np.testing.assert_allclose(dx, D.astype(np.float64) @ W.astype(np.float64), atol=1e-4)


@pytest.mark.skipif(not dispatch.panels_gradient_wanted(np.float32), reason="BLAS takes the gradients here")
def test_uneven_gradient_pair_is_split_by_work(monkeypatch):
    """dW_ih of a layer with few inputs beside its dW_hh: the jobs' columns end to end in one run of
    about equal work a thread, cut at whole strips of 32 columns (dW_ih and half of dW_hh, then the
    other half), and the values are one thread's."""
    N, H, I = 512, 64, 3
    D, D2, X, Hp = _pair_operands(np.random.default_rng(6), N, H, I)
    seen = []
    side_by_side = dispatch.side_by_side

    def spy(fn, tasks, threads):
        seen.append([[(p[5].shape, p[6], p[7]) for p in run] for run, in tasks])
        return side_by_side(fn, tasks, threads)
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(dispatch, "thread_count", lambda t=threads: t)
        monkeypatch.setattr(dispatch, "PANEL_GRADIENT_POOL_MIN", 1)
        monkeypatch.setattr(dispatch, "side_by_side", spy)
        a = np.empty((3 * H, I), np.float32)
        c = np.empty((3 * H, H), np.float32)
        dispatch.weight_gradient_pair((D, X, a, None), (D, Hp, c, D2))
        results.append((a, c))
    assert seen == [[[((3 * H, I), 0, 3), ((3 * H, H), 0, 32)], [((3 * H, H), 32, 64)]]]
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_side_by_side_with_more_tasks_than_threads():
    """Each thread takes the next task not begun: every task runs once, the results come back in the
    tasks' order, and the first error is raised once every thread has stopped."""
    import threading
    ran = []

    def task(i):
        ran.append((i, threading.get_ident()))
        return i * i
    assert dispatch.side_by_side(task, [(i,) for i in range(9)], 2) == [i * i for i in range(9)]
    assert sorted(i for i, _ in ran) == list(range(9))

    def bad(i):
        if i == 3:
            raise ValueError("task 3")
        return i
    with pytest.raises(ValueError, match="task 3"):
        dispatch.side_by_side(bad, [(i,) for i in range(6)], 2)


def test_column_runs_cover_every_column_once():
    rng = np.random.default_rng(7)
    jobs = []
    for N, M, I in ((64, 48, 3), (64, 192, 300), (64, 96, 40)):
        jobs.append((None, 0, M, None, rng.standard_normal((N, I)), np.empty((M, I))))
    for threads in (2, 3, 5, 16):
        runs = dispatch._column_runs(jobs, threads)
        assert 1 <= len(runs) <= threads
        covered = [np.zeros(job[4].shape[1], int) for job in jobs]
        for run in runs:
            for piece in run:
                j = next(k for k, job in enumerate(jobs) if job[5] is piece[5])
                covered[j][piece[6]:piece[7]] += 1
                assert piece[6] % 32 == 0
        assert all((c == 1).all() for c in covered)
        work = [sum(p[4].shape[0] * p[5].shape[0] * (p[7] - p[6]) for p in run) for run in runs]
        if threads == 2:  # halves within a strip of the largest job's columns
            assert abs(work[0] - work[1]) <= 2 * 32 * 64 * 192


_FORK_PROBE = r"""
import multiprocessing as mp, sys
import numpy as np
from numgru.kernels import dispatch


def gradients(threads):
    dispatch.thread_count = lambda: threads
    dispatch.PANEL_GRADIENT_POOL_MIN = 1
    rng = np.random.default_rng(0)
    D = rng.standard_normal((256, 48)).astype(np.float32)
    X = rng.standard_normal((256, 32)).astype(np.float32)
    out = np.empty((48, 32), np.float32)
    dispatch.panel_gradients([(D, 0, 48, np.empty((256, 0), np.float32), X, out)])
    return out


if __name__ == "__main__":
    first = gradients(2)  # the pool's threads start here
    with mp.get_context("fork").Pool(1) as p:
        again = p.apply_async(gradients, (2,)).get(timeout=120)
    assert np.array_equal(first, again)
    print("ok")
"""


@pytest.mark.skipif(not dispatch.panels_gradient_wanted(np.float32) or not hasattr(__import__("os"), "fork"),
                    reason="the worker threads serve only the panels' routes; fork needs POSIX")
def test_worker_threads_after_fork(tmp_path):
    """A child forked after the worker threads started gets threads of its own (it would otherwise
    wait forever for tasks no thread takes)."""
    import subprocess
    import sys
    script = tmp_path / "fork_probe.py"
    script.write_text(_FORK_PROBE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def _trained_on_one_and_two_threads(monkeypatch, make, x, h0=None, check=None):
    """A training step of a model from ``make()`` on x (h0) with one thread, then two: the values of
    each, ``(y, h_n, dx, dh0, *grads)``, and the functions that side_by_side ran on two threads
    (``check(fn, tasks)`` sees each call)."""
    seen = []
    side_by_side = dispatch.side_by_side

    def spy(fn, tasks, threads):
        seen.append(fn)
        if check is not None:
            check(fn, tasks)
        return side_by_side(fn, tasks, threads)
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(dispatch, "thread_count", lambda t=threads: t)
        monkeypatch.setattr(dispatch, "side_by_side", spy if threads == 2 else side_by_side)
        g = make()
        y, h, tape = g.forward_train(x, h0)
        dx, dh0, grads = g.backward(tape, np.cos(y), np.ones_like(h))
        results.append((y, h, dx, dh0, *grads.values()))
    return results, seen


@pytest.mark.skipif(not dispatch.panels_gradient_wanted(np.float32), reason="BLAS takes the gradients here")
@pytest.mark.parametrize("reset_after", [True, False])
def test_short_training_ranges_share_the_batchs_panels(monkeypatch, reset_after):
    """Two ranges of 16 rows over 5 steps (80 rows × steps each) would not repay packing W_hh alone,
    where the batch's 160 do: the training forward packs the batch's panels once and hands them to
    both ranges, the backward packs by the batch's rows, and the step's values are one thread's."""
    T, B, H = 5, 32, 256
    lengths = np.full(B, T, np.int64)
    from numgru.kernels.forward import wants_panels
    tm = dispatch.training_tiled_max()
    assert wants_panels.py_func(3 * H, H, B, T, tm, False) and not wants_panels.py_func(3 * H, H, 16, T, tm, False)
    monkeypatch.setattr(dispatch, "thread_count", lambda: 2)
    assert dispatch.training_row_ranges(T, B, H, lengths, np.dtype(np.float32)) == [(0, 16), (16, 32)]
    monkeypatch.setattr(dispatch, "PANEL_GRADIENT_POOL_MIN", 1)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T + 1, B, 8)).astype(np.float32)

    def check(fn, tasks):
        if fn is dispatch.gru_forward_serial:
            assert all(t[2][0].shape[0] > 0 for t in tasks)  # the batch's panels, in every range
    results, seen = _trained_on_one_and_two_threads(
        monkeypatch, lambda: ng.GRU(8, H, reset_after=reset_after, seed=3), x, check=check)
    assert dispatch.gru_forward_serial in seen and dispatch.gru_backward_serial in seen
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.skipif(not dispatch.panels_gradient_wanted(np.float32), reason="BLAS takes the gradients here")
@pytest.mark.parametrize("T", [1, 2])
def test_short_steps_over_many_rows_train_on_panels(monkeypatch, T):
    """Training's steps over 33+ rows at T < 4 take W_hh's panels as longer ones do (inference keeps
    its rule), so their rows split into ranges on two threads; the backward gets its panels packed by
    the caller, and the values are one thread's."""
    from numgru.kernels.forward import PANEL_MIN_T, panel_steps
    B, H = 128, 256
    assert panel_steps.py_func(T, B, True) == panel_steps.py_func(T, 33, True) == PANEL_MIN_T
    assert panel_steps.py_func(T, B, False) == T  # inference
    assert panel_steps.py_func(T, 32, True) == T and panel_steps.py_func(0, B, True) == 0
    lengths = np.full(B, T, np.int64)
    monkeypatch.setattr(dispatch, "thread_count", lambda: 2)
    assert dispatch.training_row_ranges(T, B, H, lengths, np.dtype(np.float32)) == [(0, 64), (64, 128)]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, 8)).astype(np.float32)
    seen = []
    side_by_side = dispatch.side_by_side

    def spy(fn, tasks, threads):
        if fn is dispatch.gru_backward_serial:
            seen.append(all(t[7].shape[0] > 0 for t in tasks))  # W_hhᵀ's panels, packed by the caller
        return side_by_side(fn, tasks, threads)
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(dispatch, "thread_count", lambda t=threads: t)
        monkeypatch.setattr(dispatch, "side_by_side", spy if threads == 2 else side_by_side)
        g = ng.GRU(8, H, seed=5)
        h0 = rng.standard_normal((1, B, H)).astype(np.float32) if threads == 1 else h0
        y, h, tape = g.forward_train(x, h0)
        dx, dh0, grads = g.backward(tape, np.cos(y), np.ones_like(h))
        results.append((y, h, dx, dh0, *grads.values()))
    assert seen and all(seen)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.skipif(not (dispatch.panels_gradient_wanted(np.float32) and
                         dispatch.training_tiled_max() == TILED_MAX_ONE_THREAD and PANELS_PAST_L2_MANY_ROWS),
                    reason="17+ rows beyond K = 512 take the panels only on Zen 4")
@pytest.mark.parametrize("reset_after", [True, False])
def test_wide_training_rows_split_in_ranges(monkeypatch, reset_after):
    """Beyond H = 512, where 17+ rows take the panels at any K (Zen 4), training's forward and backward
    kernels split their rows into ranges on two threads up to ``TRAINING_ROWS_MAX_HIDDEN``, and the
    values are one thread's bit for bit; a wider layer keeps one call."""
    T, B, H = 2, 64, 768
    lengths = np.full(B, T, np.int64)
    monkeypatch.setattr(dispatch, "thread_count", lambda: 2)
    assert dispatch.training_row_ranges(T, B, H, lengths, np.dtype(np.float32)) == [(0, 32), (32, 64)]
    big = dispatch.TRAINING_ROWS_MAX_HIDDEN + 1
    assert dispatch.training_row_ranges(T, B, big, lengths, np.dtype(np.float32)) is None
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, 8)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    results, seen = _trained_on_one_and_two_threads(
        monkeypatch, lambda: ng.GRU(8, H, reset_after=reset_after, seed=6), x, h0)
    assert dispatch.gru_forward_serial in seen and dispatch.gru_backward_serial in seen
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or dispatch._GETCPU is None
                    or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and two CPUs")
def test_pool_worker_runs_off_the_callers_cpu(monkeypatch):
    """side_by_side's workers keep off the CPU the handing thread is on (the scheduler had woken them
    there); the caller's own affinity is left alone, and a task on the caller runs where it was."""
    import threading
    allowed = frozenset(os.sched_getaffinity(0))
    for cpu in sorted(allowed)[:2]:
        monkeypatch.setattr(dispatch, "_cpu_now", lambda c=cpu: c)
        (t0, a0), (t1, a1) = dispatch.side_by_side(
            lambda i: (threading.get_ident(), frozenset(os.sched_getaffinity(0))), [(0,), (1,)], 2)
        assert t0 == threading.get_ident() != t1  # the first task on the caller, the second on a worker
        assert a0 == allowed and a1 == allowed - {cpu}
        assert frozenset(os.sched_getaffinity(0)) == allowed

