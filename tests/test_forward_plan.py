"""GRU.forward's planned path: a call whose rows all run every step, on the serial kernels, takes
the kernel arguments the model made for its (T, B, thread count) once, instead of choosing them on
every call.

It must give exactly what the general path gives (the same kernels with the same arguments), follow
weights changed in place, never serve one object's arrays to a copy, and decline every input the
general path would convert or reject. Where gx would leave L2, the plan projects the input a chunk of
steps at a time, just before those steps: the same results as one projection first.
"""
import copy
import pickle

import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
from numgru import layers
from numgru.kernels import dispatch
from reference import gru as ref_gru


def _general_calls(monkeypatch):
    """Count the calls that reach the general path's recurrence (the planned path does not)."""
    calls = []
    fn = layers.gru_direction_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    monkeypatch.setattr(layers, "gru_direction_forward", spy)
    return calls


def _general(monkeypatch, model, *args, **kwargs):
    """model(*args, **kwargs) by the general path: no plan applies for this call."""
    with monkeypatch.context() as m:
        m.setattr(model, "_plan_for", lambda T, B: False)
        m.setattr(model, "_one_step", lambda x, h0: None)
        m.setattr(model, "_run_planned_padded", lambda *a: None)
        return model(*args, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("layout", ["uni", "bi", "backwards", "batch_first"])
@pytest.mark.parametrize("T, B", [(1, 1), (13, 3)])
def test_planned_forward_is_the_general_path(rng, one_thread, monkeypatch, dtype, reset_after, layout, T, B):
    g = ng.GRU(5, 9, 2, bidirectional=layout == "bi", go_backwards=layout == "backwards",
               batch_first=layout == "batch_first", reset_after=reset_after, dtype=dtype, seed=3)
    D = 2 if layout == "bi" else 1
    x = rng.standard_normal((B, T, 5) if layout == "batch_first" else (T, B, 5)).astype(dtype)
    h0 = rng.standard_normal((2 * D, B, 9)).astype(dtype)
    calls = _general_calls(monkeypatch)
    y, h_n = g(x, h0)
    assert not calls  # the plan ran
    y_full, h_full = g(x, h0, lengths=np.full(B, T))  # lengths of T: the plan too
    assert not calls
    y_gen, h_gen = _general(monkeypatch, g, x, h0)
    assert calls
    np.testing.assert_array_equal(y_full, y)
    np.testing.assert_array_equal(h_full, h_n)
    if T == 1 and D == 1:  # one step from h0 runs as a stream's step (tests/test_stack.py): within rounding
        np.testing.assert_allclose(y, y_gen, **TOL[dtype])
        np.testing.assert_allclose(h_n, h_gen, **TOL[dtype])
    else:
        np.testing.assert_array_equal(y, y_gen)
        np.testing.assert_array_equal(h_n, h_gen)
    xt = x.transpose(1, 0, 2) if layout == "batch_first" else x
    if layout == "backwards":
        xt = xt[::-1]
    y_ref, h_ref = ref_gru(xt, g.state_dict(), 2, 9, bidirectional=layout == "bi", h0=h0,
                           reset_after=reset_after)
    if layout == "backwards":
        y_ref = y_ref[::-1]
    if layout == "batch_first":
        y_ref = y_ref.transpose(1, 0, 2)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])


@pytest.mark.parametrize("make", [lambda g: g, lambda g: g.freeze(), lambda g: g.quantize()],
                         ids=["plain", "frozen", "quantized"])
@pytest.mark.parametrize("T, B, H", [(1, 1, 64), (40, 1, 256), (6, 4, 256)])
def test_planned_forward_of_inference_copies(rng, one_thread, monkeypatch, make, T, B, H):
    m = make(ng.GRU(H, H, seed=0, gate_activation="hard_sigmoid", clip=3.0))
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    calls = _general_calls(monkeypatch)
    y, h_n = m(x)
    assert not calls
    y_gen, h_gen = _general(monkeypatch, m, x)
    assert calls or T == 1  # (one step from the zero state: the first-step gates, no recurrence)
    np.testing.assert_array_equal(y, y_gen)
    np.testing.assert_array_equal(h_n, h_gen)


@pytest.mark.parametrize("batch_first", [False, True])
def test_planned_forward_of_one_unbatched_sequence(rng, one_thread, monkeypatch, batch_first):
    g = ng.GRU(5, 9, 2, bidirectional=True, batch_first=batch_first, seed=3)
    x = rng.standard_normal((11, 5)).astype(np.float32)
    h0 = rng.standard_normal((4, 9)).astype(np.float32)
    calls = _general_calls(monkeypatch)
    y, h_n = g(x, h0)
    assert not calls and y.shape == (11, 18) and h_n.shape == (4, 9)
    y_gen, h_gen = _general(monkeypatch, g, x, h0)
    assert calls
    np.testing.assert_array_equal(y, y_gen)
    np.testing.assert_array_equal(h_n, h_gen)
    y_ref, h_ref = ref_gru(x[:, None], g.state_dict(), 2, 9, bidirectional=True, h0=h0[:, None])
    np.testing.assert_allclose(y, y_ref[:, 0], **TOL[np.float32])
    np.testing.assert_allclose(h_n, h_ref[:, 0], **TOL[np.float32])
    with pytest.raises(ValueError, match="h0:"):
        g(x, h0[:, None])


def test_plan_follows_weights_changed_in_place(rng):
    g = ng.GRU(4, 8, seed=0)
    x = rng.standard_normal((7, 2, 4)).astype(np.float32)
    g(x)  # plan made
    other = ng.GRU(4, 8, seed=1)
    g.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(g(x)[0], other(x)[0])
    y, h_n, tape = g.forward_train(x)
    _, _, grads = g.backward(tape, np.ones_like(y))
    ng.optim.SGD(g.named_parameters(), lr=0.5).step(grads)
    other.load_state_dict(g.state_dict())
    assert not np.array_equal(g(x)[0], ng.GRU(4, 8, seed=1)(x)[0])  # the step changed the weights
    np.testing.assert_array_equal(g(x)[0], other(x)[0])


def test_copies_do_not_share_plans(rng):
    g = ng.GRU(6, 16, seed=0)
    x = rng.standard_normal((9, 2, 6)).astype(np.float32)
    y0 = g(x)[0]
    copies = [g.freeze(), g.quantize(), pickle.loads(pickle.dumps(g)), copy.deepcopy(g)]
    before = [c(x)[0] for c in copies]
    g.load_state_dict(ng.GRU(6, 16, seed=1).state_dict())
    assert not np.array_equal(g(x)[0], y0)
    for c, y in zip(copies, before):
        np.testing.assert_array_equal(c(x)[0], y)
    np.testing.assert_allclose(copies[0](x)[0], y0, **TOL[np.float32])


def test_plans_per_thread_count_and_route(rng, two_threads, monkeypatch):
    g = ng.GRU(8, 32, seed=0)
    calls = _general_calls(monkeypatch)
    for B in (1, 3, 80):  # 80 rows on two threads: the rows route, which the plan leaves alone
        x = rng.standard_normal((11, B, 8)).astype(np.float32)
        for threads in (2, 1):
            numba.set_num_threads(threads)
            del calls[:]
            y, h_n = g(x)
            assert bool(calls) == (B == 80 and threads == 2)
            y_ref, h_ref = ref_gru(x, g.state_dict(), 1, 32)
            np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
            np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
        numba.set_num_threads(2)


def test_plans_kept_are_bounded(rng):
    g = ng.GRU(3, 4, seed=0)
    for T in range(1, layers.PLANS_KEPT + 10):
        g(rng.standard_normal((T, 1, 3)).astype(np.float32))
    assert 0 < len(g._plans) <= layers.PLANS_KEPT


def test_inputs_the_plan_declines(rng):
    g = ng.GRU(5, 6, 1, seed=0)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    y, h_n = g(x)
    h0 = np.zeros((1, 3, 6))
    for other in (x.astype(np.float64), x.astype(">f4"), x.tolist(), np.asfortranarray(x),
                  np.ascontiguousarray(x[::-1])[::-1]):
        np.testing.assert_allclose(g(other)[0], y, **TOL[np.float32])
    ro = x.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(g(ro)[0], y)
    np.testing.assert_array_equal(g(x, h0)[0], y)  # float64 h0 cast, as the general path does
    np.testing.assert_array_equal(g(x, h0.astype(np.float32)[:, :, ::-1].copy()[:, :, ::-1])[0], y)
    h_ro = h0.astype(np.float32)
    h_ro.setflags(write=False)
    np.testing.assert_array_equal(g(x, h_ro)[0], y)
    with pytest.raises(ValueError, match="x:"):
        g(rng.standard_normal((4, 3, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="h0:"):
        g(x, np.zeros((1, 2, 6), np.float32))
    with pytest.raises(ValueError, match="h0:"):
        g(x, np.zeros((2, 3, 6), np.float32))
    for shape in ((0, 3, 5), (4, 0, 5)):
        y0, h0_out = g(np.zeros(shape, np.float32))
        assert y0.shape == shape[:2] + (6,) and h0_out.shape == (1, shape[1], 6)


def _chunked_calls(monkeypatch):
    calls = []
    fn = dispatch.gru_forward_chunked

    def spy(*args):
        calls.append(args[-3])  # steps per chunk (then the two addresses it calls by)
        return fn(*args)
    monkeypatch.setattr(dispatch, "gru_forward_chunked", spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("layout", ["uni", "bi", "backwards"])
def test_projection_interleaved_with_the_steps(rng, one_thread, monkeypatch, dtype, reset_after, layout):
    # gx of 150 steps × 20 rows × 144 values passes INTERLEAVE_MIN_BYTES: projected a chunk of steps
    # at a time (the last chunk shorter), each direction from its own first step
    T, B, I, H = 150, 20, 40, 48
    kw = dict(bidirectional=layout == "bi", go_backwards=layout == "backwards", reset_after=reset_after,
              dtype=dtype)
    g = ng.GRU(I, H, 2, seed=3, **kw)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2 * (2 if layout == "bi" else 1), B, H)).astype(dtype)
    steps = dispatch.interleave_steps(T, B, 3 * H, I, np.dtype(dtype).itemsize)
    assert 1 < steps < T and T % steps
    calls = _chunked_calls(monkeypatch)
    y, h_n = g(x, h0)
    assert calls and calls[0] == steps
    xt = x[::-1] if layout == "backwards" else x
    y_ref, h_ref = ref_gru(xt, g.state_dict(), 2, H, bidirectional=layout == "bi", h0=h0,
                           reset_after=reset_after)
    if layout == "backwards":
        y_ref = y_ref[::-1]
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])
    # the same forward with the whole projection first
    monkeypatch.setattr(dispatch, "INTERLEAVE_MIN_BYTES", 1 << 40)
    del calls[:]
    whole = ng.GRU(I, H, 2, seed=3, **kw)
    y_whole, h_whole = whole(x, h0)
    assert not calls
    np.testing.assert_allclose(y, y_whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h_n, h_whole, rtol=1e-6, atol=1e-6)


def test_projection_interleaved_one_step_at_a_time(rng, one_thread, monkeypatch):
    monkeypatch.setattr(dispatch, "INTERLEAVE_MIN_BYTES", 0)
    monkeypatch.setattr(dispatch, "INTERLEAVE_CHUNK_BYTES", 1)
    g = ng.GRU(7, 16, bidirectional=True, seed=0)
    calls = _chunked_calls(monkeypatch)
    for T, B in ((9, 5), (2, 1)):
        x = rng.standard_normal((T, B, 7)).astype(np.float32)
        y, h_n = g(x)
        assert calls and set(calls) == {1}
        y_ref, h_ref = ref_gru(x, g.state_dict(), 1, 16, bidirectional=True)
        np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
        np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
        del calls[:]
    # frozen weights (W_ih's and W_hh's panels given) and the general path's converted input;
    # bfloat16 recurrent weights
    x = rng.standard_normal((9, 5, 7))
    np.testing.assert_allclose(g.freeze()(x)[0], g(x.astype(np.float32))[0], rtol=1e-6, atol=1e-6)
    assert calls
    del calls[:]
    q = g.quantize()
    y_q = q(x)[0]
    assert calls
    monkeypatch.setattr(dispatch, "INTERLEAVE_MIN_BYTES", 1 << 40)
    np.testing.assert_allclose(y_q, g.quantize()(x)[0], rtol=1e-6, atol=1e-6)


def test_interleave_steps_rule():
    f4 = 4
    assert dispatch.interleave_steps(128, 64, 192, 64, f4) == dispatch.INTERLEAVE_CHUNK_BYTES // (64 * 192 * f4)
    assert dispatch.interleave_steps(16, 16, 192, 64, f4) == 0  # gx small enough for L2
    assert dispatch.interleave_steps(128, 64, 768, 256, f4) == 0  # W_ih read again per chunk: too big
    assert dispatch.interleave_steps(3, 170, 192, 64, f4) == 0  # one chunk would be the whole
    assert dispatch.interleave_steps(512, 1024, 192, 64, f4) == 1


@pytest.mark.parametrize("T, B, H", [(1, 1, 16), (6, 3, 40), (32, 64, 64)])  # (the last interleaved)
def test_planned_calls_take_inputs_of_every_kind(rng, one_thread, T, B, H):
    """A plan's kernels are called by their compiled entries, found per kind of input: read-only,
    misaligned and plain inputs, in any order, each give what a fresh model gives a plain copy, bit
    for bit (an entry given an input of another Numba type would read it as that type)."""
    g = ng.GRU(H, H, 2, seed=0)
    xs = rng.standard_normal((6, T, B, H)).astype(np.float32)
    raw = np.zeros(xs[0].nbytes + 1, np.uint8)

    def kind(i, x):
        if i % 3 == 1:
            x = x.copy()
            x.setflags(write=False)
        elif i % 3 == 2:
            odd = raw[1:].view(np.float32).reshape(x.shape)
            odd[...] = x
            assert not odd.flags.aligned
            x = odd
        return x

    for i in (0, 1, 2, 2, 1, 0, 1, 2, 0):
        y, h = g(kind(i, xs[i % 6]))
        y_ref, h_ref = ng.GRU(H, H, 2, seed=0)(xs[i % 6].copy())
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(h, h_ref)


def _padded_cases():
    rng = np.random.default_rng(11)
    cases = []
    for k in range(24):
        T, B = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        cfg = dict(num_layers=int(rng.integers(1, 3)), bidirectional=bool(rng.random() < 0.5),
                   go_backwards=bool(rng.random() < 0.2), reset_after=bool(rng.random() < 0.7),
                   batch_first=bool(rng.random() < 0.3), dtype=np.float64 if rng.random() < 0.3 else np.float32)
        if cfg["bidirectional"]:
            cfg["go_backwards"] = False
        if rng.random() < 0.3:
            cfg.update(gate_activation="hard_sigmoid", clip=2.5)
        cases.append((k, T, B, cfg, bool(rng.random() < 0.4), bool(rng.random() < 0.3)))
    return cases


@pytest.mark.parametrize("k, T, B, cfg, with_h0, frozen", _padded_cases(), ids=lambda v: "")
@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
def test_padded_plan_is_the_general_path(request, monkeypatch, threads, k, T, B, cfg, with_h0, frozen):
    """A padded call by the plan (small calls, the plain serial kernels) gives the general path's
    bits: rows of any length (0 included, unsorted), h0 or none, either direction."""
    request.getfixturevalue(threads)
    rng = np.random.default_rng(k)
    g = ng.GRU(5, 12, seed=k, **cfg)
    m = g.freeze() if frozen else g
    x = rng.standard_normal((B, T, 5) if cfg["batch_first"] else (T, B, 5)).astype(g.dtype)
    LD = g.num_layers * g.num_directions
    h0 = rng.standard_normal((LD, B, 12)).astype(g.dtype) if with_h0 else None
    lengths = rng.integers(0, T + 1, B)
    lengths[rng.integers(0, B)] = max(0, T - 1)  # at least one row short of T
    calls = []
    run = m._run_planned_padded
    monkeypatch.setattr(m, "_run_planned_padded", lambda *a: calls.append(1) or run(*a))
    y, h_n = m(x, h0, lengths=lengths)
    if T > 1:
        assert calls  # (T = 1 from the zero state takes the first-step path)
    y_gen, h_gen = _general(monkeypatch, m, x, h0, lengths=lengths)
    np.testing.assert_array_equal(y, y_gen)
    np.testing.assert_array_equal(h_n, h_gen)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("start", ["h0", "zeros"])
def test_directions_apart_equal_one_thread(rng, monkeypatch, reset_after, start):
    """Two threads, a bidirectional model within directions_apart's bounds: each layer's directions
    run side by side by one thread's plan, one thread each, and give one thread's outputs bit for
    bit; a plan that projects in BLAS is not run so."""
    if dispatch.WIDE_BLAS:
        pytest.skip("the directions run on both threads here")
    g = ng.GRU(40, 64, 2, bidirectional=True, reset_after=reset_after, seed=4)
    x = rng.standard_normal((24, 6, 40)).astype(np.float32)
    h0 = rng.standard_normal((4, 6, 64)).astype(np.float32) if start == "h0" else None
    monkeypatch.setattr(dispatch, "APART_MIN_WORK", 0)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        y1, h1 = g(x, h0)
        numba.set_num_threads(2)
        calls = []
        taken = layers.one_thread_each
        monkeypatch.setattr(layers, "one_thread_each", lambda *a: calls.append(1) or taken(*a))
        y2, h2 = g(x, h0)
        assert len(calls) == 2  # (a layer each)
        assert isinstance(g._plan_for(24, 6), layers._ApartPlan)
        monkeypatch.setattr(layers, "plan_off_blas", lambda p: False)
        g._plans = None
        assert not isinstance(g._plan_for(24, 6), layers._ApartPlan)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(h2, h1)


def test_directions_apart_bounds():
    assert dispatch.directions_apart(128, 1, 256, 256, 1, np.float32) != dispatch.WIDE_BLAS
    assert not dispatch.directions_apart(128, dispatch.APART_MAX_ROWS + 1, 256, 256, 1, np.float32)
    assert not dispatch.directions_apart(128, 4, 768, dispatch.APART_MAX_HIDDEN + 1, 1, np.float32)
    assert not dispatch.directions_apart(4, 4, 16, 16, 1, np.float32)  # too little work a direction
    assert not dispatch.directions_apart(128, 1, 256, 256, 1, np.float64)  # (measured level)
