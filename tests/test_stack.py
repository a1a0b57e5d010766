"""The whole forward in one kernel call (numgru/kernels/stack.py): the same values as each direction's
calls, bit for bit, and the weights as they are at each call; and a stream's step of every layer in
one call (gru_step_layers), the same values as each layer's call."""
import copy
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import numgru as ng
from numgru import layers, serving
from numgru.kernels.activations import GATE_HARD_SIGMOID
from numgru.kernels.dispatch import StackPlan, stack_arguments, step_layer_stackable
from numgru.kernels.fused import fused_ready
from numgru.kernels.vnni import vnni_ready

from conftest import TOL
from reference import gru as ref_gru


def _plan(model, T, B):
    return model._plan_for(T, B)


def _reference(model, x, h0=None):
    return ref_gru(x, model.state_dict(), model.num_layers, model.hidden_size,
                   bidirectional=model.bidirectional, h0=h0, reset_after=model.reset_after)


CASES = [
    # (dtype, I, H, layers, bidirectional, T, B, options)
    (np.float32, 10, 20, 3, True, 3, 2, {}),
    (np.float32, 16, 16, 1, False, 1, 1, {}),
    (np.float32, 7, 33, 2, False, 5, 3, dict(reset_after=False)),
    (np.float32, 12, 24, 2, True, 4, 1, dict(bias=False)),
    (np.float32, 5, 18, 1, True, 6, 2, dict(gate_activation="hard_sigmoid", clip=1.5)),
    (np.float32, 9, 17, 2, False, 3, 4, dict(go_backwards=True)),
    (np.float64, 10, 20, 2, True, 3, 2, {}),
    (np.float64, 6, 11, 1, False, 7, 1, dict(reset_after=False, bias=False)),
]


def _check_one_call(g, T, B, seed, tol=None):
    """g's forward over (T, B) from the zero state and from a given h0: bit for bit its plan's calls a
    direction at a time, and within ``tol`` of tests/reference.py (None: not compared). Returns the
    plan."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, g.input_size)).astype(g.dtype)
    h0 = rng.uniform(-1, 1, (g.num_layers * g.num_directions, B, g.hidden_size)).astype(g.dtype)
    plan = _plan(g, T, B)
    assert isinstance(plan, StackPlan)
    for state in (None, h0):
        if state is None:
            y, h = g(x)
        elif T == 1 and g.num_directions == 1:  # (the model's call runs a stream's step: test_one_step_*)
            y, h = g._run_plan(plan, x, state.copy())
        else:
            y, h = g(x, state)
        ry, rh = g._run_plan(tuple(plan), x, None if state is None else state.copy())
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(h, rh)
        if tol is not None:
            fy, fh = _reference(g, x, state)
            np.testing.assert_allclose(y, fy, **tol)
            np.testing.assert_allclose(h, fh, **tol)
    return plan


@pytest.mark.parametrize("dtype, I, H, L, bidirectional, T, B, options", CASES)
def test_one_call_equals_the_directions_calls(one_thread, dtype, I, H, L, bidirectional, T, B, options):
    g = ng.GRU(I, H, num_layers=L, bidirectional=bidirectional, dtype=dtype, seed=3, **options)
    # (the reference has neither hard-sigmoid gates nor go_backwards: tests/test_forward.py checks those)
    plain = not options.get("gate_activation") and not options.get("go_backwards")
    assert _check_one_call(g, T, B, 7, TOL[dtype] if plain else None).kernels == (True, False)


def test_two_threads(two_threads):
    g = ng.GRU(8, 24, num_layers=2, bidirectional=True, seed=1)
    x = np.random.default_rng(2).standard_normal((4, 3, 8)).astype(np.float32)
    y, h = g(x)
    ry, rh = _reference(g, x)
    np.testing.assert_allclose(y, ry, atol=1e-5)
    np.testing.assert_allclose(h, rh, atol=1e-5)


def test_weights_changed_in_place_are_read(one_thread):
    g = ng.GRU(6, 12, num_layers=2, bidirectional=True, seed=4)
    x = np.random.default_rng(3).standard_normal((5, 2, 6)).astype(np.float32)
    g(x)
    assert isinstance(_plan(g, 5, 2), StackPlan)
    for name, p in g.named_parameters():  # live arrays, as an optimizer updates them
        p *= 1.5
    np.testing.assert_allclose(g(x)[0], _reference(g, x)[0], atol=1e-5)
    other = ng.GRU(6, 12, num_layers=2, bidirectional=True, seed=9)
    g.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(g(x)[0], other(x)[0])
    # a training step through the optimizer, then inference
    opt = ng.optim.SGD(g.named_parameters(), lr=0.1)
    y, _, tape = g.forward_train(x)
    opt.step(g.backward(tape, np.ones_like(y))[2])
    np.testing.assert_allclose(g(x)[0], _reference(g, x)[0], atol=1e-5)


def test_copies_read_their_own_weights(one_thread):
    g = ng.GRU(5, 10, num_layers=2, seed=6)
    x = np.random.default_rng(4).standard_normal((3, 1, 5)).astype(np.float32)
    before = g(x)[0].copy()
    copies = [copy.deepcopy(g), pickle.loads(pickle.dumps(g)), g.freeze()]
    for _, p in g.named_parameters():
        p[...] = 0
    np.testing.assert_array_equal(g(x)[0], 0)
    for c in copies:
        np.testing.assert_allclose(c(x)[0], before, atol=1e-6)


def test_inputs_of_every_kind(one_thread):
    g = ng.GRU(4, 8, num_layers=2, batch_first=True, seed=2)
    x = np.random.default_rng(5).standard_normal((3, 6, 4)).astype(np.float32)  # (B, T, I)
    ry = _reference(g, x.transpose(1, 0, 2))[0].transpose(1, 0, 2)
    ro = x.copy()
    ro.flags.writeable = False
    for inp in (x, ro, np.asfortranarray(x)):
        np.testing.assert_allclose(g(inp)[0], ry, atol=1e-5)
    # one sequence without a batch axis
    np.testing.assert_allclose(g(x[1])[0], ry[1], atol=1e-5)


@pytest.mark.parametrize("dtype, L, bidirectional, reset_after", [
    (np.float32, 2, True, True), (np.float32, 1, True, False), (np.float64, 3, False, True)])
def test_padded_rows(one_thread, dtype, L, bidirectional, reset_after):
    g = ng.GRU(5, 12, num_layers=L, bidirectional=bidirectional, reset_after=reset_after, dtype=dtype, seed=4)
    T, B = 6, 5
    rng = np.random.default_rng(10)
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    h0 = rng.uniform(-1, 1, (L * g.num_directions, B, 12)).astype(dtype)
    lengths = np.array([6, 5, 3, 1, 0])  # longest first, as the layer sorts them
    plan = g._plan_for(T, B, apart=False)
    assert isinstance(plan, StackPlan)
    for state in (None, h0):
        y, h = g._run_plan(plan, x, None if state is None else state.copy(), lengths.copy())
        ry, rh = g._run_plan(tuple(plan), x, None if state is None else state.copy(), lengths.copy())
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(h, rh)
    # through the public call, rows in any order
    order = np.array([3, 0, 4, 2, 1])
    for state in (None, h0[:, order]):
        y, h = g(x[:, order], state, lengths=lengths[order])
        fy, fh = ref_gru(x[:, order], g.state_dict(), L, 12, bidirectional=bidirectional, h0=state,
                         lengths=lengths[order], reset_after=reset_after)
        np.testing.assert_allclose(y, fy, **TOL[dtype])
        np.testing.assert_allclose(h, fh, **TOL[dtype])


@pytest.mark.parametrize("reset_after", [True, False])
def test_fused_directions(one_thread, reset_after):
    # one row over enough steps takes the fused forward (AVX-512): in the one call too
    g = ng.GRU(12, 64, num_layers=2, bidirectional=True, reset_after=reset_after, seed=5)
    plan = _check_one_call(g, 40, 1, 9, TOL[np.float32])
    if fused_ready():
        assert plan.kernels == (False, True)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("H, T, B", [(64, 1, 1), (64, 5, 1), (48, 3, 4), (256, 20, 1)])
def test_frozen_copies(one_thread, reset_after, H, T, B):
    # the panels a frozen copy keeps, on the serial kernels or the fused forward
    g = ng.GRU(H // 2, H, num_layers=2, bidirectional=True, reset_after=reset_after, seed=6).freeze()
    plan = _check_one_call(g, T, B, 11, TOL[np.float32])
    assert plan.panel_shapes[:, :, 0].any()  # (some direction reads panels the copy keeps)


def test_one_step_from_zeros_does_not_read_W_hh_on_fused_plans(one_thread):
    # a frozen copy takes the fused forward from one step; from the zero state one step is the gates'
    g = ng.GRU(8, 64, bidirectional=True, seed=2)
    for _, p in g.named_parameters():
        if p.shape == (192, 64):
            p[...] = np.nan
    f = g.freeze()
    x = np.random.default_rng(3).standard_normal((1, 1, 8)).astype(np.float32)
    assert np.isfinite(f(x)[0]).all()
    assert np.isnan(f(x, np.zeros((2, 1, 64), np.float32))[0]).all()  # given h0, W_hh is read


def test_plans_it_does_not_take(one_thread):
    # a quantized copy's bfloat16 W_hh: the directions' own calls
    g = ng.GRU(64, 64, seed=1)
    q = g.quantize()
    x = np.random.default_rng(6).standard_normal((2, 1, 64)).astype(np.float32)
    np.testing.assert_allclose(q(x)[0], g(x)[0], atol=3e-3)
    assert isinstance(_plan(g, 2, 1), StackPlan)
    if any(p[2] is not None and p[2][0][0].dtype == np.uint16 for p in q._plan_for(2, 1)):
        assert not isinstance(_plan(q, 2, 1), StackPlan)


def test_weights_it_cannot_find_by_address_are_refused():
    g = ng.GRU(8, 8, seed=1)
    plan = _plan(g, 2, 1)
    (W_ih, Wp, bias, use_bias), *rest = plan[0]
    args = (2, 1, 1, g._zero_bias, g._kernel_scalars())
    for bad in (W_ih[:, ::2], W_ih.astype(np.float64), W_ih[:-1]):
        assert stack_arguments((((bad, Wp, bias, use_bias), *rest),), *args) is None
    assert stack_arguments((((W_ih, Wp, bias[:-1], use_bias), *rest),), *args) is None
    assert stack_arguments(plan, *args) is not None


def test_first_step_from_the_zero_state_does_not_read_W_hh(one_thread):
    # as each direction's calls: W_hh · 0 is not computed, so a NaN in W_hh shows from the second step
    g = ng.GRU(4, 6, bidirectional=True, seed=2)
    for _, p in g.named_parameters():
        if p.shape == (18, 6):
            p[...] = np.nan
    x = np.random.default_rng(8).standard_normal((3, 2, 4)).astype(np.float32)
    y, h = g(x)
    assert isinstance(_plan(g, 3, 2), StackPlan)
    assert np.isfinite(y[0, :, :6]).all() and np.isnan(y[1:, :, :6]).all()
    assert np.isfinite(y[2, :, 6:]).all() and np.isnan(y[:2, :, 6:]).all()
    ry, rh = g._run_plan(tuple(_plan(g, 3, 2)), x, None)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(h, rh)
    assert np.isfinite(g(x[:1])[0]).all()


STEP_CASES = [
    # (dtype, I, H, layers, B, frozen, options)
    (np.float32, 5, 24, 2, 1, False, {}),
    (np.float32, 7, 33, 3, 3, False, dict(reset_after=False)),
    (np.float32, 12, 20, 2, 2, False, dict(bias=False)),
    (np.float32, 6, 18, 3, 1, False, dict(gate_activation="hard_sigmoid", clip=1.5)),
    (np.float32, 200, 192, 2, 1, False, {}),  # the one-row dot-product block
    (np.float64, 10, 16, 2, 5, False, {}),
    (np.float64, 4, 9, 4, 1, False, dict(reset_after=False, bias=False)),
    (np.float32, 16, 32, 1, 1, False, {}),  # one layer
    (np.float64, 8, 12, 1, 3, False, dict(reset_after=False)),
    # a frozen model's panels: W_ih's and W_hh's, W_hh's r, z rows' and n rows' (reset_after=False)
    (np.float32, 5, 24, 2, 1, True, {}),
    (np.float32, 16, 32, 2, 3, True, dict(reset_after=False)),
    (np.float64, 64, 64, 1, 4, True, dict(reset_after=False, bias=False)),
    (np.float32, 10, 16, 3, 5, True, dict(gate_activation="hard_sigmoid", clip=1.5)),
]


@pytest.mark.parametrize("dtype, I, H, layers, B, frozen, options", STEP_CASES)
def test_stream_steps_every_layer_in_one_call(one_thread, monkeypatch, dtype, I, H, layers, B, frozen, options):
    """A stream on the serial step runs every layer in one kernel call: its outputs and state equal,
    bit for bit, those of a stream that calls each layer from Python, step after step (both parities
    of its state buffers), and the model's forward over the sequence within rounding."""
    g = ng.GRU(I, H, num_layers=layers, dtype=dtype, seed=3, **options)
    if frozen:
        g = g.freeze()
    xs = np.random.default_rng(layers * 10 + B).standard_normal((7, B, I)).astype(dtype)
    stacked = g.stream(B)
    assert stacked._stepper._stacked is not None
    if frozen:  # (the shapes are chosen so that some of the panels are there)
        assert any(p.size for layer in stacked._stepper.layers for p in layer[4])
    monkeypatch.setattr(serving, "step_layer_stackable", lambda layer, dtype: False)
    apart = g.stream(B)
    assert apart._stepper._stacked is None
    ys = []
    for xt in xs:
        ys.append(stacked.step(xt))
        np.testing.assert_array_equal(ys[-1], apart.step(xt))
        np.testing.assert_array_equal(stacked.state, apart.state)
    y_ref, h_ref = g(xs)  # (the forward against tests/reference.py, gate options too: test_forward.py)
    np.testing.assert_allclose(np.stack(ys), y_ref, **TOL[dtype])
    np.testing.assert_allclose(stacked.state, h_ref, **TOL[dtype])
    if B == 1:  # unbatched steps (I,) take the same call
        stacked.reset()
        apart.reset()
        for xt in xs[:3]:
            np.testing.assert_array_equal(stacked.step(xt[0]), apart.step(xt[0]))


def test_stream_steps_in_one_call_read_the_weights_as_they_are(one_thread):
    """The one call finds each layer's weights by address: changes made in place between steps
    (live arrays of named_parameters, load_state_dict) are read by the next step."""
    g = ng.GRU(6, 16, num_layers=3, seed=0)
    s = g.stream(2)
    assert s._stepper._stacked is not None
    rng = np.random.default_rng(5)
    s.step(rng.standard_normal((2, 6)).astype(np.float32))
    dict(g.named_parameters())["weight_hh_l2"][...] *= -0.5
    sd = g.state_dict()
    sd["bias_ih_l1"] = sd["bias_ih_l1"] + 0.25
    sd["weight_ih_l0"] = sd["weight_ih_l0"][::-1].copy()
    g.load_state_dict(sd)
    for _ in range(2):  # both parities
        state = s.state
        x = rng.standard_normal((2, 6)).astype(np.float32)
        y = s.step(x)
        y_ref, h_ref = _reference(g, x[None], state)
        np.testing.assert_allclose(y, y_ref[0], **TOL[np.float32])
        np.testing.assert_allclose(s.state, h_ref, **TOL[np.float32])


def test_stream_steps_in_one_call_only_on_float_layers(one_thread):
    """One layer or several, plain or frozen (panels), step in one call; bfloat16 weights, and weights
    or panels not C-contiguous and aligned, keep their calls a layer at a time."""
    for layers in (1, 2):
        g = ng.GRU(8, 16, num_layers=layers, seed=0)
        assert g.stream(1)._stepper._stacked is not None
        assert g.freeze().stream(1)._stepper._stacked is not None
    q = ng.GRU(256, 256, seed=0).quantize().stream(1)._stepper  # (smaller ones keep float32 weights)
    assert q.layers[0][0].dtype == np.uint16 and q._stacked is None
    layer = (np.zeros((3, 2), np.float32), np.zeros((3, 1), np.float32), np.zeros(3, np.float32),
             np.zeros(3, np.float32), (np.zeros((0, 0, 0), np.float32),) * 3)
    assert step_layer_stackable(layer, np.float32)
    assert not step_layer_stackable(layer, np.float64)
    assert not step_layer_stackable((np.zeros((2, 3), np.float32).T, *layer[1:]), np.float32)
    odd = np.zeros(3 * 2 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(3, 2)
    assert not odd.flags.aligned
    assert not step_layer_stackable((odd, *layer[1:]), np.float32)
    panels = np.zeros((1, 2, 48), np.float32)
    assert step_layer_stackable((*layer[:4], (panels,) + layer[4][1:]), np.float32)
    for bad in (panels.astype(np.float64), panels[:, :, ::2], panels[0], odd.reshape(1, 3, 2)):
        assert not step_layer_stackable((*layer[:4], (bad,) + layer[4][1:]), np.float32)


@pytest.mark.parametrize("layers, frozen", [(3, False), (1, False), (2, True)])
def test_copied_and_unpickled_streams_step_in_one_call_on_their_own_weights(one_thread, layers, frozen):
    """A copy or an unpickled stream, taken after steps, finds its own one-call step: it steps as the
    original would, on the weights (and a frozen model's panels) it holds, whatever happens to the
    original's."""
    g = ng.GRU(5, 12, num_layers=layers, seed=4)
    s = (g.freeze() if frozen else g).stream(2)
    xs = np.random.default_rng(9).standard_normal((4, 2, 5)).astype(np.float32)
    s.step(xs[0])
    copies = [copy.deepcopy(s), pickle.loads(pickle.dumps(s))]
    want = [s.step(xt) for xt in xs[1:]]
    for _, a in g.named_parameters():
        a[...] = np.nan
    for layer in s._stepper.layers:
        for a in (*layer[:4], *layer[4]):
            a[...] = np.nan
    del s
    for c in copies:
        got = np.stack([c.step(xt) for xt in xs[1:]])
        if frozen:  # (a copy's panels lie elsewhere within a line, which may round the last bits apart)
            np.testing.assert_allclose(got, np.stack(want), **TOL[np.float32])
        else:
            np.testing.assert_array_equal(got, np.stack(want))


CELL_CASES = [
    # (dtype, I, H, B, frozen, options)
    (np.float32, 5, 24, 1, False, {}),
    (np.float32, 7, 33, 3, False, dict(reset_after=False)),
    (np.float32, 200, 192, 1, False, {}),  # the one-row dot-product block
    (np.float32, 16, 32, 2, True, dict(reset_after=False)),  # W_hh's two pairs of panels
    (np.float32, 6, 18, 1, True, dict(gate_activation="hard_sigmoid", clip=1.5)),
    (np.float64, 10, 16, 5, False, dict(bias=False)),
    (np.float64, 64, 64, 4, True, {}),
]


def _state_kinds(h):
    """h as the kinds of arrays a caller may hand a cell: owned, read-only, off its alignment, strided."""
    ro = h.copy()
    ro.flags.writeable = False
    odd = np.zeros(h.size * h.itemsize + 1, np.uint8)[1:].view(h.dtype).reshape(h.shape)
    odd[...] = h
    wide = np.zeros((h.shape[0], 2 * h.shape[1]), h.dtype)[:, ::2]
    wide[...] = h
    return [h, ro, odd, wide]


@pytest.mark.parametrize("dtype, I, H, B, frozen, options", CELL_CASES)
def test_cell_steps_in_one_lean_call(one_thread, monkeypatch, dtype, I, H, B, frozen, options):
    """A GRUCell's serial step runs gru_cell_step on a plan of addresses: its outputs equal, bit for
    bit, gru_step's called with the weights (the path before), call after call (both directions of
    the sweep), for every kind of state array and for none, and the forward's within rounding."""
    cell = ng.GRUCell(I, H, dtype=dtype, seed=5, **options)
    if frozen:
        cell = cell.freeze()
    rng = np.random.default_rng(B * 7 + H)
    xs = rng.standard_normal((4, B, I)).astype(dtype)
    h = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    lean = cell(xs[0], h)
    assert cell._step_args(B)[-1]
    monkeypatch.setattr(layers, "step_layer_stackable", lambda layer, dtype: False)
    apart = copy.copy(cell)
    apart._plans = {}
    np.testing.assert_array_equal(apart(xs[0], h), lean)
    assert not apart._step_args(B)[-1]
    for xt in xs:
        for hk in _state_kinds(h):
            np.testing.assert_array_equal(cell(xt, hk), apart(xt, hk))
        np.testing.assert_array_equal(cell(xt), apart(xt))
        h = cell(xt, h)
    # (the forward against tests/reference.py, gate options too: test_forward.py)
    np.testing.assert_allclose(cell(xs[-1], h), cell._gru(xs[-1:], h[None])[1][0], **TOL[dtype])
    if B == 1:  # unbatched (I,), (H,)
        np.testing.assert_array_equal(cell(xs[0, 0], h[0]), apart(xs[0, 0], h[0]))


def test_cell_lean_call_reads_weights_as_they_are_and_copies_their_own(one_thread):
    """The plan holds addresses: weights changed in place are read by the next call; a copy or an
    unpickled cell makes its own plan and steps on its own weights."""
    cell = ng.GRUCell(6, 16, seed=0)
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal((2, 16)).astype(np.float32)
    cell(x, h)
    copies = [copy.deepcopy(cell), pickle.loads(pickle.dumps(cell))]
    want = cell(x, h)
    dict(cell.named_parameters())["weight_hh"][...] *= -0.5
    sd = cell.state_dict()
    sd["bias_ih"] = sd["bias_ih"] + 0.25
    cell.load_state_dict(sd)
    _, h_ref = _reference(cell._gru, x[None], h[None])
    np.testing.assert_allclose(cell(x, h), h_ref[0], **TOL[np.float32])
    for _, a in cell.named_parameters():
        a[...] = np.nan
    for c in copies:  # (a copy's weights lie elsewhere within a line: the last bits may differ)
        np.testing.assert_allclose(c(x, h), want, **TOL[np.float32])


def test_cell_lean_call_from_several_threads(one_thread):
    """Calls from several Python threads at once (each its own gi, gh) give each caller its own step."""
    cell = ng.GRUCell(32, 48, seed=1)
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((8, 3, 32)).astype(np.float32)
    hs = rng.standard_normal((8, 3, 48)).astype(np.float32)
    want = [cell(x, h) for x, h in zip(xs, hs)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: [cell(xs[i], hs[i]) for _ in range(50)][-1], range(8)))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    q = ng.GRUCell(256, 256, seed=0).quantize()  # bfloat16 weights keep gru_step's own call
    q(np.ones((1, 256), np.float32))
    assert not q._step_args(1)[-1]


ONE_STEP_CASES = [
    # (dtype, I, H, layers, B, frozen, options)
    (np.float32, 8, 16, 1, 1, False, {}),
    (np.float32, 10, 20, 3, 4, False, dict(reset_after=False)),
    (np.float32, 200, 192, 1, 1, False, {}),  # the one-row dot-product block
    (np.float32, 7, 33, 2, 32, False, dict(gate_activation="hard_sigmoid", clip=1.5)),
    (np.float64, 6, 12, 2, 2, False, dict(bias=False)),
    (np.float32, 16, 32, 2, 3, True, dict(reset_after=False)),  # a frozen model's panels
    (np.float64, 64, 64, 1, 4, True, {}),
    (np.float32, 256, 256, 1, 1, True, {}),  # a frozen model's VNNI digits (where the CPU has VNNI)
    (np.float32, 200, 192, 2, 1, True, dict(reset_after=False)),
]


def _reference_with_gates(g, x, h0):
    """tests/reference.py's forward of g with its gate function and clip."""
    hard = g._gate_kind == GATE_HARD_SIGMOID
    return ref_gru(x, g.state_dict(), g.num_layers, g.hidden_size, bidirectional=g.bidirectional, h0=h0,
                   reset_after=g.reset_after, gate="hard_sigmoid" if hard else "sigmoid",
                   alpha=g.alpha if hard else 0.2, beta=g.beta if hard else 0.5, clip=g.clip)


def _ran_one_step(g, B):
    """Whether g's forwards of one step of B rows on one thread take gru_forward_step."""
    return bool(g._plans and g._plans.get((layers.ONE_STEP, B, 1)))


@pytest.mark.parametrize("dtype, I, H, L, B, frozen, options", ONE_STEP_CASES)
def test_one_step_forward_is_a_streams_step(one_thread, dtype, I, H, L, B, frozen, options):
    """A forward of one step from h0 runs every layer as a stream steps it: y and h_n equal, bit for
    bit, a stream's step from that state, call after call (the sweep's two ways), whatever form the
    input takes (unbatched, batch-first, lengths of one, a list), and tests/reference.py within
    rounding; h0 is left as it was."""
    g = ng.GRU(I, H, num_layers=L, dtype=dtype, seed=3, **options)
    if frozen:
        g = g.freeze()
    rng = np.random.default_rng(L * 10 + B)
    xs = rng.standard_normal((3, 1, B, I)).astype(dtype)
    h = rng.uniform(-1, 1, (L, B, H)).astype(dtype)
    s = g.stream(B)
    for x in xs:
        h_before = h.copy()
        y, h_n = g(x, h)
        assert _ran_one_step(g, B)
        np.testing.assert_array_equal(h, h_before)
        s._stepper.state[...] = h
        np.testing.assert_array_equal(y[0], s.step(x[0]))
        np.testing.assert_array_equal(h_n, s.state)
        for again in (g(x, h), g(x, h, lengths=np.ones(B, np.int64)), g(x.tolist(), h.tolist())):
            np.testing.assert_array_equal(again[0], y)
            np.testing.assert_array_equal(again[1], h_n)
        y_ref, h_ref = _reference_with_gates(g, x, h)
        np.testing.assert_allclose(y, y_ref, **TOL[dtype])
        np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])
        h = h_n
    if not frozen:  # batch-first (B, 1, I)
        first = ng.GRU(I, H, num_layers=L, dtype=dtype, seed=3, batch_first=True, **options)
        first.load_state_dict(g.state_dict())
        yb, hb = first(xs[0].transpose(1, 0, 2), h)
        np.testing.assert_array_equal(yb, g(xs[0], h)[0].transpose(1, 0, 2))
        np.testing.assert_array_equal(hb, g(xs[0], h)[1])
    if B == 1:  # unbatched (1, I) and (L, H)
        yu, hu = g(xs[0, :, 0], h[:, 0])
        np.testing.assert_array_equal(yu, g(xs[0], h)[0][:, 0])
        np.testing.assert_array_equal(hu, g(xs[0], h)[1][:, 0])


def test_one_step_forward_takes_inputs_of_every_kind(one_thread):
    """x and h0 owned, read-only, off their alignment, strided or Fortran-ordered give the same values;
    none is written."""
    g = ng.GRU(12, 24, num_layers=2, seed=1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 12)).astype(np.float32)
    h = rng.uniform(-1, 1, (2, 3, 24)).astype(np.float32)
    want = g(x, h)

    def kinds(a):
        ro = a.copy()
        ro.flags.writeable = False
        odd = np.zeros(a.size * a.itemsize + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
        odd[...] = a
        wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)[..., ::2]
        wide[...] = a
        return [a, ro, odd, wide, np.asfortranarray(a)]

    for xk in kinds(x):
        for hk in kinds(h):
            x_before, h_before = xk.copy(), hk.copy()
            got = g(xk, hk)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(xk, x_before)
            np.testing.assert_array_equal(hk, h_before)
    assert _ran_one_step(g, 3)


def test_one_step_forward_where_it_does_not_run(one_thread):
    """Bidirectional models, bfloat16 weights, more than ONE_STEP_MAX_ROWS rows and steps from the zero
    state keep the plan's forward, whose values they give."""
    rng = np.random.default_rng(6)
    B = layers.ONE_STEP_MAX_ROWS + 1
    cases = [(ng.GRU(6, 10, bidirectional=True, seed=0), 2), (ng.GRU(6, 10, seed=0), B),
             (ng.GRU(256, 256, seed=0).quantize(), 1)]
    for g, rows in cases:
        x = rng.standard_normal((1, rows, g.input_size)).astype(np.float32)
        h = rng.uniform(-1, 1, (g.num_layers * g.num_directions, rows, g.hidden_size)).astype(np.float32)
        y, h_n = g(x, h)
        assert not _ran_one_step(g, rows)
        y_ref, h_ref = _reference(g, x, h)
        tol = dict(atol=2e-2) if g.quantized else TOL[np.float32]  # (bfloat16 weights: test_quantize.py)
        np.testing.assert_allclose(y, y_ref, **tol)
        np.testing.assert_allclose(h_n, h_ref, **tol)
    g = ng.GRU(6, 10, seed=0)
    g(rng.standard_normal((1, 2, 6)).astype(np.float32))  # from the zero state: W_hh not read
    assert not _ran_one_step(g, 2)


def test_one_step_forward_on_two_threads(two_threads):
    """On two threads the one step runs as the stream's: a frozen model's digits split over hidden units
    (where the CPU has VNNI), float weights serially where the stream's step is serial; the same values
    as the stream's step, bit for bit."""
    rng = np.random.default_rng(8)
    for g, B in ((ng.GRU(64, 640, seed=0).freeze(), 1), (ng.GRU(16, 32, num_layers=2, seed=0), 2)):
        x = rng.standard_normal((1, B, g.input_size)).astype(np.float32)
        h = rng.uniform(-1, 1, (g.num_layers, B, g.hidden_size)).astype(np.float32)
        y, h_n = g(x, h)
        assert bool(g._plans.get((layers.ONE_STEP, B, 2))) == (not g.frozen or vnni_ready())
        s = g.stream(B)
        s._stepper.state[...] = h
        np.testing.assert_array_equal(y[0], s.step(x[0]))
        np.testing.assert_array_equal(h_n, s.state)
        y_ref, h_ref = _reference(g, x, h)
        np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    g = ng.GRU(64, layers.ONE_STEP_SPLIT_MIN_HIDDEN - 128, seed=0).freeze()  # (the plan's forward below)
    g(np.ones((1, 1, 64), np.float32), np.zeros((1, 1, g.hidden_size), np.float32))
    assert not _ran_one_step(g, 1) and g._plans[(layers.ONE_STEP, 1, 2)] is False


def test_one_step_forward_reads_weights_as_they_are_and_copies_their_own(one_thread):
    """The plan holds addresses: weights changed in place are read by the next call; a copy or an
    unpickled model makes its own plan and steps on its own weights."""
    g = ng.GRU(6, 16, num_layers=2, seed=0)
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal((1, 2, 6)).astype(np.float32), rng.standard_normal((2, 2, 16)).astype(np.float32)
    g(x, h)
    copies = [copy.copy(g), copy.deepcopy(g), pickle.loads(pickle.dumps(g))]
    want = g(x, h)
    dict(g.named_parameters())["weight_hh_l1"][...] *= -0.5
    sd = g.state_dict()
    sd["bias_ih_l0"] = sd["bias_ih_l0"] + 0.25
    g.load_state_dict(sd)
    for _ in range(2):  # both ways of the sweep
        y, h_n = g(x, h)
        y_ref, h_ref = _reference(g, x, h)
        np.testing.assert_allclose(y, y_ref, **TOL[np.float32])
        np.testing.assert_allclose(h_n, h_ref, **TOL[np.float32])
    for c in copies[1:]:
        for _, a in g.named_parameters():
            a[...] = np.nan
        got = c(x, h)
        assert _ran_one_step(c, 2)
        np.testing.assert_allclose(got[0], want[0], **TOL[np.float32])
        np.testing.assert_allclose(got[1], want[1], **TOL[np.float32])


def test_one_step_forward_from_several_threads(one_thread):
    """Calls from several Python threads at once (each its own gi, gh) give each caller its step."""
    g = ng.GRU(32, 48, num_layers=2, seed=1)
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((8, 1, 3, 32)).astype(np.float32)
    hs = rng.standard_normal((8, 2, 3, 48)).astype(np.float32)
    want = [g(x, h) for x, h in zip(xs, hs)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: [g(xs[i], hs[i]) for _ in range(50)][-1], range(8)))
    for (y, h_n), (wy, wh) in zip(got, want):
        np.testing.assert_array_equal(y, wy)
        np.testing.assert_array_equal(h_n, wh)
