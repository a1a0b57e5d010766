"""BatchingEngine under concurrent load, streams, and thread safety of the kernels."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import numgru as ng
from numgru.serving import EngineOverloaded


@pytest.fixture(scope="module")
def model():
    g = ng.GRU(6, 16, 2, seed=0)
    g(np.zeros((3, 70, 6), np.float32))  # compile serial and parallel variants first
    return g


def test_many_threads_many_sequences(model):
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((int(rng.integers(1, 60)), 6)).astype(np.float32) for _ in range(400)]
    bad_at = {57, 211}
    with ng.BatchingEngine(model, max_batch_size=32, max_delay_ms=1.0) as eng:
        def client(i):
            x = seqs[i] if i not in bad_at else np.zeros((5, 7), np.float32)
            return i, eng.submit(x)

        with ThreadPoolExecutor(8) as pool:
            futures = list(pool.map(client, range(400)))
        for i, fut in futures:
            if i in bad_at:
                with pytest.raises(ValueError, match="x: expected input_size 6"):
                    fut.result(10)
                continue
            y, h = fut.result(10)
            ry, rh = model(seqs[i])
            assert y.shape == ry.shape
            np.testing.assert_allclose(y, ry, atol=1e-5)
            np.testing.assert_allclose(h, rh, atol=1e-5)
        st = eng.stats()
    assert st["completed"] == 398 and st["rejected"] == 2 and st["failed"] == 0
    assert st["batches"] < 398 and st["mean_batch_size"] > 1
    assert 0 <= st["padding_fraction"] <= 0.5 + 1e-9
    assert st["latency_p50_ms"] is not None and st["latency_p99_ms"] >= st["latency_p50_ms"]


def test_nan_is_not_an_error_and_h0_is_used(model):
    x = np.ones((4, 6), np.float32)
    x[1, 2] = np.nan
    h0 = np.full((2, 16), 0.3, np.float32)
    with ng.BatchingEngine(model) as eng:
        y, h = eng.submit(x, h0).result(10)
        ref = eng.submit(np.ones((4, 6), np.float32), h0).result(10)
    assert np.isnan(y[1:]).all()
    np.testing.assert_allclose(ref[0], model(np.ones((4, 6), np.float32), h0)[0], atol=1e-6)


def test_exception_inside_a_batch_fails_only_its_request(model, monkeypatch):
    eng = ng.BatchingEngine(model, max_delay_ms=20)
    real = eng._forward

    def flaky(group):
        if any(r.T == 13 for r in group):
            raise RuntimeError("boom")
        return real(group)

    monkeypatch.setattr(eng, "_forward", flaky)
    futs = [eng.submit(np.ones((t, 6), np.float32)) for t in (5, 13, 7, 9)]
    with pytest.raises(RuntimeError, match="boom"):
        futs[1].result(10)
    for f in (futs[0], futs[2], futs[3]):
        assert f.result(10)[0].shape[1] == 16
    assert eng.submit(np.ones((3, 6), np.float32)).result(10)[0].shape == (3, 16)  # worker alive
    eng.close()


def test_close_under_load_is_prompt_and_loses_nothing(model):
    eng = ng.BatchingEngine(model, max_batch_size=4, max_delay_ms=0.5)
    futs = [eng.submit(np.ones((200, 6), np.float32)) for _ in range(300)]
    t = time.perf_counter()
    eng.close()
    assert time.perf_counter() - t < 5.0
    done = sum(1 for f in futs if f.done() and not f.cancelled())
    cancelled = sum(1 for f in futs if f.cancelled())
    assert done + cancelled == 300
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit(np.ones((2, 6), np.float32))


def test_map_in_order_and_backpressure(model):
    with ng.BatchingEngine(model) as eng:
        seqs = [np.full((t, 6), t / 10, np.float32) for t in range(1, 30)]
        for x, (y, _) in zip(seqs, eng.map(seqs)):
            np.testing.assert_allclose(y, model(x)[0], atol=1e-6)
    # one request per batch: while the worker runs the first long sequence the queue holds the second
    # and the third finds it full (with batches of 64 the worker could drain every submit in time)
    eng = ng.BatchingEngine(model, max_batch_size=1, max_queue=1, block=False, max_delay_ms=50)
    with pytest.raises(EngineOverloaded):
        for _ in range(50):
            eng.submit(np.ones((20000, 6), np.float32))
    eng.close()


def test_stream_random_chunks_equal_full_forward():
    g = ng.GRU(3, 8, 2, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4, 3))
    y_full, h_full = g(x)
    st = g.stream(batch_size=4)
    t, ys = 0, []
    while t < 50:
        n = int(rng.integers(1, 8))
        chunk = x[t:t + n]
        ys.append(st.step(chunk[0])[None] if n == 1 else st.step(chunk))
        t += n
    np.testing.assert_allclose(np.concatenate(ys), y_full, atol=1e-12)
    np.testing.assert_allclose(st.state, h_full, atol=1e-12)
    st.reset(rows=[1])
    assert np.all(st.state[:, 1] == 0) and np.any(st.state[:, 0] != 0)
    st.state = h_full
    np.testing.assert_array_equal(st.state, h_full)
    with pytest.raises(ValueError, match="state"):
        st.state = np.zeros((1, 4, 8))
    with pytest.raises(ValueError, match="rows"):
        st.reset(rows=[9])
    with pytest.raises(ValueError, match="unidirectional"):
        ng.GRU(3, 4, bidirectional=True).stream()
    one = ng.GRU(3, 8, seed=0).stream()
    assert one.step(np.ones(3)).shape == (8,)


def test_stream_steps_read_the_state_last_set():
    """Single steps take turns between two state buffers: after an odd or even number of steps, a
    state set or reset is the one the next step reads, and a returned output is the caller's copy."""
    g = ng.GRU(3, 5, 2, seed=1, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 3))
    st = g.stream(batch_size=2)
    for n in (1, 2, 3):
        h0 = rng.standard_normal((2, 2, 5))
        st.state = h0
        ys = [st.step(x[t]) for t in range(n)]
        y_ref, h_ref = g(x[:n], h0)
        np.testing.assert_allclose(np.stack(ys), y_ref, atol=1e-12)
        np.testing.assert_allclose(st.state, h_ref, atol=1e-12)
        ys[-1][...] = 99.0
        np.testing.assert_allclose(st.state, h_ref, atol=1e-12)
        st.reset(rows=[0])
        h_ref[:, 0] = 0
        np.testing.assert_allclose(st.step(x[n]), g(x[n:n + 1], h_ref)[0][0], atol=1e-12)


@pytest.mark.parametrize("reset_after, frozen", [(True, False), (False, False), (True, True)])
def test_steps_with_weights_beyond_l2_equal_the_forward(one_thread, reset_after, frozen):
    """H = 300 in float64 (W_ih and W_hh 2.2 MB each): successive steps of a stream and of a cell
    sweep the weights' blocks in opposite directions (and W_hh's before W_ih's every other step);
    every step still equals the forward's."""
    g = ng.GRU(300, 300, seed=2, reset_after=reset_after, dtype=np.float64)
    m = g.freeze() if frozen else g
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 2, 300))
    y_ref, h_ref = g(x)
    st = m.stream(batch_size=2)
    np.testing.assert_allclose(np.stack([st.step(x[t]) for t in range(5)]), y_ref, atol=1e-12)
    cell = ng.GRUCell(300, 300, reset_after=reset_after, dtype=np.float64)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in g.state_dict().items()})
    cell = cell.freeze() if frozen else cell
    h = np.zeros((1, 300))
    for t in range(5):
        h = cell(x[t, :1], h)
        np.testing.assert_allclose(h[0], y_ref[t, 0], atol=1e-12)


def test_engine_streams_join_and_leave_between_steps(model):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((int(rng.integers(5, 30)), 6)).astype(np.float32) for _ in range(6)]
    with ng.BatchingEngine(model, max_delay_ms=1.0) as eng:
        def run(x):
            s = eng.stream()
            return np.stack([s.step(xt) for xt in x]), s.state

        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(run, xs))
    for x, (y, h) in zip(xs, outs):
        ry, rh = model(x)
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)


def test_direct_calls_from_many_threads_do_not_crash(model):
    """Parallel-sized batches from 8 threads at once: the parallel slot keeps workqueue safe."""
    x = np.random.default_rng(0).standard_normal((20, 80, 6)).astype(np.float32)
    ref = model(x)[0]
    errors = []

    def work():
        try:
            for _ in range(5):
                np.testing.assert_allclose(model(x)[0], ref, atol=1e-6)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


_WORKQUEUE_PROBE = r"""
import threading, numba, numpy as np, numgru as ng
g = ng.GRU(6, 16, seed=0)
x = np.ones((10, 80, 6), np.float32)
ref = g(x)[0]
assert numba.threading_layer() == "workqueue", numba.threading_layer()
def work():
    for _ in range(5):
        assert np.allclose(g(x)[0], ref, atol=1e-6)
ts = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in ts]; [t.join() for t in ts]
print("ok")
"""


def test_concurrent_calls_under_workqueue_layer_do_not_abort():
    """Numba's workqueue layer aborts on concurrent parallel regions: numgru must never make one."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _WORKQUEUE_PROBE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
