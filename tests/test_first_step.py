"""One step from the zero state (T = 1, no h0; a cell without h): W_hh h is zero there, so the layers
skip W_hh (GRU._from_zero). Checked against torch, tests/reference.py and the same call given zeros."""
import itertools

import numpy as np
import pytest

import numgru as ng
import numgru.layers as layers
from numgru.kernels import dispatch
from conftest import TOL, count_calls
from reference import gru as ref_gru, random_params

torch = pytest.importorskip("torch")


def _first_steps(monkeypatch):
    """Counts of the two ways a one-step forward from the zero state runs: by a forward plan (a
    direction at a time, or all of them in one call: ``dispatch.run_stack``, counted per direction),
    or by :meth:`GRU._first_step` (its own projection)."""
    plan = count_calls(monkeypatch, layers, {"run_from_zero": "plan", "run_serial_direction": "steps"})
    _count_stack(monkeypatch, plan)
    own = count_calls(monkeypatch, layers, {"first_step_gates": "own"})
    return plan, own


def _count_stack(monkeypatch, calls, ran=None):
    """Count the directions that ``dispatch.run_stack`` takes from the zero state (``calls["plan"]``,
    and True for each in ``ran``) and from a given h0 (``calls["steps"]``), over rows that all run
    every step."""
    real = layers.run_stack

    def counted(plan, x, h0, y, h_n, lengths=None, others=None):
        if lengths is None and h0 is None:
            calls["plan"] += len(plan)
            if ran is not None:
                ran.extend([True] * len(plan))
        elif lengths is None:
            calls["steps"] += len(plan)
        return real(plan, x, h0, y, h_n, lengths, others)
    monkeypatch.setattr(layers, "run_stack", counted)


@pytest.mark.parametrize("layers_, bidir, bias, batch_first, dtype", list(itertools.product(
    [1, 3], [False, True], [True, False], [False, True], [np.float32, np.float64])))
def test_one_step_without_h0_matches_torch_and_reference(monkeypatch, layers_, bidir, bias, batch_first, dtype):
    rng = np.random.default_rng(layers_ * 8 + bidir * 4 + bias * 2 + batch_first)
    B, I, H = 5, 7, 24
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(3)
    tg = torch.nn.GRU(I, H, layers_, bias=bias, batch_first=batch_first, bidirectional=bidir, dtype=tdtype)
    g = ng.GRU.from_torch(tg)
    calls = _first_steps(monkeypatch)
    x = rng.standard_normal((B, 1, I) if batch_first else (1, B, I)).astype(dtype)
    y, h = g(x)
    with torch.no_grad():
        ty, th = tg(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.numpy(), **TOL[dtype])
    np.testing.assert_allclose(h, th.numpy(), **TOL[dtype])
    ry, rh = ref_gru(x.transpose(1, 0, 2) if batch_first else x, g.state_dict(), layers_, H, bidir)
    np.testing.assert_allclose(y, ry.transpose(1, 0, 2) if batch_first else ry, **TOL[dtype])
    np.testing.assert_allclose(h, rh, **TOL[dtype])
    D = 2 if bidir else 1
    assert calls[0]["plan"] + calls[1]["own"] == layers_ * D and calls[0]["steps"] == 0
    # unbatched, and lengths (some 0: those rows keep the zero state and give zeros)
    yu, hu = g(x[0] if batch_first else x[:, 0])
    np.testing.assert_allclose(yu, y[0] if batch_first else y[:, 0], **TOL[dtype])
    np.testing.assert_allclose(hu, h[:, 0], **TOL[dtype])
    lengths = np.array([1, 0, 1, 0, 1])
    yl, hl = g(x, lengths=lengths)
    ry, rh = ref_gru(x.transpose(1, 0, 2) if batch_first else x, g.state_dict(), layers_, H, bidir,
                     lengths=lengths)
    np.testing.assert_allclose(yl, ry.transpose(1, 0, 2) if batch_first else ry, **TOL[dtype])
    np.testing.assert_allclose(hl, rh, **TOL[dtype])
    assert not yl[(1, 3), 0].any() if batch_first else not yl[0, (1, 3)].any()


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid"])
@pytest.mark.parametrize("clip", [None, 0.7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_step_without_h0_variants_against_reference(reset_after, gate, clip, dtype):
    rng = np.random.default_rng(11)
    B, I, H, L = 4, 3, 6, 2
    g = ng.GRU(I, H, L, bidirectional=True, reset_after=reset_after, gate_activation=gate, clip=clip, dtype=dtype)
    params = random_params(I, H, L, bidirectional=True, seed=2)
    g.load_state_dict(params)
    x = (2 * rng.standard_normal((1, B, I))).astype(dtype)
    kind = "sigmoid" if gate == "sigmoid" else "hard"
    for lengths in (None, np.array([1, 0, 1, 1])):
        y, h = g(x, lengths=lengths)
        ry, rh = ref_gru(x, params, L, H, True, None, lengths, reset_after, kind, 0.2, 0.5, clip)
        np.testing.assert_allclose(y, ry, **TOL[dtype])
        np.testing.assert_allclose(h, rh, **TOL[dtype])


@pytest.mark.parametrize("B, H", [(1, 40), (1, 300), (37, 64)])
def test_one_step_without_h0_does_not_read_w_hh(B, H):
    # W_hh h is zero from the zero state: the result is the one given zeros, whatever W_hh holds
    g = ng.GRU(9, H, 2, seed=4)
    x = np.random.default_rng(0).standard_normal((1, B, 9)).astype(np.float32)
    y0, h0 = g(x, np.zeros((2, B, H), np.float32))
    for W in g._W_hh:
        W *= 3.0
    y, h = g(x)
    np.testing.assert_allclose(y, y0, atol=1e-6)
    np.testing.assert_allclose(h, h0, atol=1e-6)
    assert not np.allclose(g(x, np.full((2, B, H), 0.5, np.float32))[0], y0, atol=1e-3)


@pytest.mark.parametrize("make", [lambda g: g.freeze(), lambda g: g.quantize()], ids=["frozen", "quantized"])
@pytest.mark.parametrize("B, H", [(1, 64), (16, 256), (3, 600)])
def test_one_step_without_h0_of_inference_copies(make, B, H):
    g = ng.GRU(32, H, 2, bidirectional=True, seed=5)
    m = make(g)
    x = np.random.default_rng(1).standard_normal((1, B, 32)).astype(np.float32)
    for lengths in (None, np.arange(B) % 2):
        y, h = m(x, lengths=lengths)
        y0, h0 = m(x, np.zeros((4, B, H), np.float32), lengths=lengths)
        np.testing.assert_allclose(y, y0, atol=1e-5)
        np.testing.assert_allclose(h, h0, atol=1e-5)


def test_one_step_without_h0_on_two_threads(two_threads, monkeypatch):
    calls = _first_steps(monkeypatch)
    for B, H, lengths in [(64, 48, None), (64, 48, np.arange(64) % 2), (20, 130, None)]:
        g = ng.GRU(17, H, bidirectional=True, seed=6)
        x = np.random.default_rng(2).standard_normal((1, B, 17)).astype(np.float32)
        y, h = g(x, lengths=lengths)
        ry, rh = ref_gru(x, g.state_dict(), 1, H, True, lengths=lengths)
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)
    assert calls[0]["steps"] == 0 and calls[0]["plan"] + calls[1]["own"] == 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("B, I, H", [(1, 8, 16), (1, 256, 256), (64, 5, 40)])
def test_cell_without_h(dtype, reset_after, B, I, H):
    # below and above CELL_FROM_ZERO_MIN_WORK: the fused step given zeros, or W_hh skipped
    c = ng.GRUCell(I, H, reset_after=reset_after, dtype=dtype, seed=7)
    x = np.random.default_rng(3).standard_normal((B, I)).astype(dtype)
    params = {k + "_l0": v for k, v in c.state_dict().items()}
    ry, _ = ref_gru(x[None], params, 1, H, reset_after=reset_after)
    np.testing.assert_allclose(c(x), ry[0], **TOL[dtype])
    np.testing.assert_allclose(c(x[0]), ry[0, 0], **TOL[dtype])
    np.testing.assert_allclose(c(x.tolist()), ry[0], **TOL[dtype])
    if reset_after:
        tc = torch.nn.GRUCell(I, H, dtype=torch.float64 if dtype == np.float64 else torch.float32)
        c = ng.GRUCell.from_torch(tc)
        with torch.no_grad():
            np.testing.assert_allclose(c(x), tc(torch.from_numpy(x)).numpy(), **TOL[dtype])


@pytest.mark.parametrize("T", [2, 6])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequence_without_h0_skips_the_first_product(one_thread, monkeypatch, T, reset_after, bidir, dtype):
    # a serial plan's recurrence from the zero state: the first step's gates, then the kernel over the
    # other T − 1 steps from that state (both directions, every layer)
    ran = []
    real = layers.run_from_zero
    monkeypatch.setattr(layers, "run_from_zero", lambda *a: ran.append(real(*a)) or ran[-1])
    _count_stack(monkeypatch, {"plan": 0, "steps": 0}, ran)
    B, I, H, L = 3, 5, 24, 2
    g = ng.GRU(I, H, L, bidirectional=bidir, reset_after=reset_after, dtype=dtype, seed=8)
    x = np.random.default_rng(T).standard_normal((T, B, I)).astype(dtype)
    y, h = g(x)
    ry, rh = ref_gru(x, g.state_dict(), L, H, bidir, reset_after=reset_after)
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_allclose(h, rh, **TOL[dtype])
    assert ran == [True] * (L * (2 if bidir else 1))
    for m in (g.freeze(), g.quantize()) if dtype == np.float32 else ():
        y0, h0 = m(x, np.zeros((L * (2 if bidir else 1), B, H), dtype))
        y1, h1 = m(x)
        np.testing.assert_allclose(y1, y0, atol=1e-5)
        np.testing.assert_allclose(h1, h0, atol=1e-5)


@pytest.mark.parametrize("B, H", [(64, 40), (2, 520)])  # the rows route, the columns route
@pytest.mark.parametrize("reset_after", [True, False])
def test_sequence_without_h0_on_the_threaded_routes(two_threads, monkeypatch, B, H, reset_after):
    # the routes' recurrence from the first step's state; with lengths only the forward direction starts
    # there (the reverse one's rows start at steps of their own), rows of length 0 keep the zero state
    from numgru.kernels.dispatch import forward_route
    T, L = 4, 2
    if forward_route(B, H, reset_after, False, T) is None:
        pytest.skip("no threaded route for this shape here")
    g = ng.GRU(6, H, L, bidirectional=True, reset_after=reset_after, seed=9)
    rng = np.random.default_rng(B)
    x = rng.standard_normal((T, B, 6)).astype(np.float32)
    calls = count_calls(monkeypatch, layers, ["first_step_gates"])
    for lengths, firsts in ((None, 2 * L), (rng.integers(0, T + 1, B), L)):
        calls["first_step_gates"] = 0
        y, h = g(x, lengths=lengths)
        ry, rh = ref_gru(x, g.state_dict(), L, H, True, lengths=lengths, reset_after=reset_after)
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)
        assert calls["first_step_gates"] == firsts


@pytest.mark.parametrize("T, lengths", [(1, None), (3, None), (3, [3, 1, 0, 2])])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_from_a_zero_h0_leaves_out_its_rows(monkeypatch, T, lengths, reset_after, dtype):
    # dW_hh sums dG_t ⊗ h_{t−1}; the first step's h_{t−1} is h0 (the last step's in reverse), so with a
    # zero h0 those rows are left out (all of them at T = 1): the gradients are the all-rows ones
    g = ng.GRU(5, 12, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, seed=10)
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, 4, 5)).astype(dtype)
    dy = rng.standard_normal((T, 4, 24)).astype(dtype)
    if lengths is not None:
        lengths = np.array(lengths)
    y, _, tape = g.forward_train(x, lengths=lengths)
    dx, dh0, grads = g.backward(tape, dy)
    monkeypatch.setattr(ng.GRU, "_state_rows", staticmethod(lambda tape, i, reverse: slice(0, tape.T * tape.B)))
    y, _, tape = g.forward_train(x, lengths=lengths)
    rdx, rdh0, rgrads = g.backward(tape, dy)
    tol = TOL[dtype]["atol"]
    np.testing.assert_allclose(dx, rdx, atol=tol)
    np.testing.assert_allclose(dh0, rdh0, atol=tol)
    for k in grads:
        np.testing.assert_allclose(grads[k], rgrads[k], atol=tol)
    if T == 1:
        assert not grads["weight_hh_l0"].any() and not grads["weight_hh_l1_reverse"].any()


@pytest.mark.parametrize("T, lengths", [(1, None), (3, None), (3, [3, 1, 0, 2])])
@pytest.mark.parametrize("reset_after, gate, clip", [(True, "sigmoid", None), (False, "sigmoid", None),
                                                     (True, "hard_sigmoid", 0.7), (False, "hard_sigmoid_keras2", 0.7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_without_h0_skips_the_first_product(monkeypatch, T, lengths, reset_after, gate, clip, dtype):
    # forward_train without h0 takes each direction's first step by first_step_store (W_hh not read, the
    # tape written as the kernel writes it): values, tape and gradients are those of the call given zeros
    g = ng.GRU(5, 12, 2, bidirectional=True, reset_after=reset_after, gate_activation=gate, clip=clip,
               dtype=dtype, seed=12)
    rng = np.random.default_rng(T + 7)
    x = (2 * rng.standard_normal((T, 4, 5))).astype(dtype)
    dy = rng.standard_normal((T, 4, 24)).astype(dtype)
    dh_n = rng.standard_normal((4, 4, 12)).astype(dtype)
    if lengths is not None:
        lengths = np.array(lengths)
    calls = count_calls(monkeypatch, layers, ["first_step_store"])
    y0, h0, tape0 = g.forward_train(x, np.zeros((4, 4, 12), dtype), lengths=lengths)
    assert calls["first_step_store"] == 0
    y, h, tape = g.forward_train(x, lengths=lengths)
    # both directions of both layers, but the reverse one where rows start at steps of their own
    assert calls["first_step_store"] == (2 if lengths is not None else 4)
    tol = TOL[dtype]
    np.testing.assert_allclose(y, y0, **tol)
    np.testing.assert_allclose(h, h0, **tol)
    dx0, dhz0, grads0 = g.backward(tape0, dy, dh_n)
    dx, dhz, grads = g.backward(tape, dy, dh_n)
    np.testing.assert_allclose(dx, dx0, **tol)
    np.testing.assert_allclose(dhz, dhz0, **tol)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads0[k], **tol)
    ry, rh = ref_gru(x, g.state_dict(), 2, 12, True, None, lengths, reset_after,
                     "sigmoid" if gate == "sigmoid" else "hard", 0.2, 0.5, clip)
    np.testing.assert_allclose(y, ry, **tol)
    np.testing.assert_allclose(h, rh, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_training_without_h(monkeypatch, dtype):
    cell = ng.GRUCell(6, 20, dtype=dtype, seed=13)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6)).astype(dtype)
    dh1 = rng.standard_normal((3, 20)).astype(dtype)
    calls = count_calls(monkeypatch, layers, ["first_step_store"])
    h1, tape = cell.forward_train(x)
    assert calls["first_step_store"] == 1
    h1z, tapez = cell.forward_train(x, np.zeros((3, 20), dtype))
    np.testing.assert_allclose(h1, h1z, **TOL[dtype])
    dx, dh, grads = cell.backward(tape, dh1)
    dxz, dhz, gradsz = cell.backward(tapez, dh1)
    np.testing.assert_allclose(dx, dxz, **TOL[dtype])
    np.testing.assert_allclose(dh, dhz, **TOL[dtype])
    for k in grads:
        np.testing.assert_allclose(grads[k], gradsz[k], **TOL[dtype])


@pytest.mark.parametrize("store", [False, True])
def test_rules_count_the_step_taken_from_zero(monkeypatch, two_threads, store):
    # the first step from the zero state runs outside the direction's kernels, but the routes'
    # rules (measured on whole forwards) and the backward's count all T steps: the tiles' forward
    # and backward are chosen together (T = 32 had left the forward off the tiles, the backward on)
    seen = []
    for name in ("amx_recurrence_wanted", "amx_rows_chunks", "dpbf16_recurrence_wanted"):
        monkeypatch.setattr(dispatch, name, lambda T, *args, _n=name, **kwargs: seen.append((_n, T)) and 0)
    g = ng.GRU(16, 32, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((32, 4, 16)).astype(np.float32)
    if store:
        y, _, tape = g.forward_train(x)
        g.backward(tape, np.ones_like(y))
    else:
        g(x)
    assert seen and {T for _, T in seen} == {32}
