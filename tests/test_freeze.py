"""GRU.freeze() / GRUCell.freeze(): inference copies whose weight matrices are packed once.

A frozen model must give the model's results (the NumPy reference's, within float tolerance) on
every route that reads the packed weights: the serial forward and its input projection, the rows
route, streams and cells; and it must stay frozen: read-only parameters, no training, and the same
after pickling or copying.
"""
import copy
import pickle

import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
import numgru.layers as layers
from numgru.kernels import dispatch
from reference import gru as ref_gru


def _spy(monkeypatch, name, seen, pick):
    fn = getattr(dispatch, name)

    def spy(*args):
        seen.append(pick(args))
        return fn(*args)
    monkeypatch.setattr(dispatch, name, spy)


# ---------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("T, B", [(1, 1), (40, 1), (9, 3)])
def test_frozen_forward_matches_reference(rng, monkeypatch, dtype, reset_after, bi, T, B):
    g = ng.GRU(6, 20, 2, bidirectional=bi, reset_after=reset_after, dtype=dtype, seed=0)
    f = g.freeze()
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    h0 = rng.standard_normal((2 * (2 if bi else 1), B, 20)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    cases = (((x,), {}), ((x, h0, lengths), dict(h0=h0, lengths=lengths)))
    plain = [g(*args)[0] for args, _ in cases]
    packed, panels = [], []
    # each direction's calls from Python, which the spies see (the one-call forward runs the same
    # kernels from inside, on the panels its tables carry: checked below)
    monkeypatch.setattr(layers, "StackPlan", type("NoStack", (), {}))
    _spy(monkeypatch, "gru_forward_serial", packed, lambda a: a[2][0].shape[0])
    for name in ("input_projection_kernel", "input_projection_parallel"):  # (same leading arguments)
        _spy(monkeypatch, name, panels, lambda a: (a[2].shape[0], a[6]))
    for (args, kw), y_plain in zip(cases, plain):
        y, h_n = f(*args)
        y_ref, h_ref = ref_gru(x, g.state_dict(), 2, 20, bidirectional=bi, reset_after=reset_after,
                               **kw)
        np.testing.assert_allclose(y, y_ref, **TOL[dtype])
        np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])
        np.testing.assert_allclose(y, y_plain, **TOL[dtype])
    # the kernels read the frozen model's panels
    assert packed and all(n > 0 for n in packed)
    assert panels and all(n > 0 and used for n, used in panels)
    stack = f._plan_for(T, B)
    if isinstance(stack, dispatch.StackPlan):
        assert (stack.panel_shapes[:, 1, 0] > 0).all()  # every direction's W_hh panels (stack.WP_A)


def test_frozen_model_without_bias_and_gate_options(rng):
    for kw in (dict(bias=False), dict(gate_activation="hard_sigmoid", alpha=0.3, beta=0.4),
               dict(clip=0.7), dict(reset_after=False, clip=0.5)):
        g = ng.GRU(5, 12, seed=1, **kw)
        x = rng.standard_normal((33, 2, 5)).astype(np.float32)
        np.testing.assert_allclose(g.freeze()(x)[0], g(x)[0], **TOL[np.float32])


def test_frozen_wide_input_projection(rng):
    g = ng.GRU(300, 8, seed=0)  # I > 256: the packed projection only up to 128 rows
    f = g.freeze()
    for T in (3, 200):
        x = rng.standard_normal((T, 1, 300)).astype(np.float32)
        np.testing.assert_allclose(f(x)[0], g(x)[0], **TOL[np.float32])


def test_packed_projection_rule():
    assert dispatch.packed_projection(1, 64, 1) and dispatch.packed_projection(8192, 256, 1)
    assert dispatch.packed_projection(128, 512, 1) and not dispatch.packed_projection(129, 512, 1)
    assert not dispatch.packed_projection(8, 1024, 1)
    assert dispatch.packed_projection(64, 256, 2) and not dispatch.packed_projection(65, 256, 2)
    assert dispatch.packed_projection(256, 64, 2) and not dispatch.packed_projection(8, 512, 2)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("T, B, H, route", [(9, 12, 16, "rows"), (9, 4, 256, "columns"), (40, 2, 16, None)])
def test_frozen_threaded_routes_match(two_threads, rng, T, B, H, route):
    g = ng.GRU(5, H, seed=0)
    assert dispatch.forward_route(B, H, True, False, T) == route
    x = rng.standard_normal((T, B, 5)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B)
    np.testing.assert_allclose(g.freeze()(x, lengths=lengths)[0], g(x, lengths=lengths)[0],
                               **TOL[np.float32])


# ---------------------------------------------------------------------------------------- steps
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("B", [1, 4])
def test_frozen_stream_matches_forward(rng, reset_after, B):
    g = ng.GRU(6, 20, 2, reset_after=reset_after, seed=0)
    f = g.freeze()
    s = f.stream(batch_size=B)
    assert s._stepper.layers[0][4][0].shape[0] > 0  # the step's products on the packed panels
    x = rng.standard_normal((5, B, 6)).astype(np.float32)
    steps = np.stack([s.step(x[t]) for t in range(5)])
    np.testing.assert_allclose(steps, g(x)[0], **TOL[np.float32])


def test_frozen_step_reads_panels_where_the_product_takes_them():
    # one row of W_hh beyond L2 stays with BLAS's GEMV (which may use every thread): no panels there
    big = ng.GRU(8, 1024, seed=0).freeze()
    W_ih_p, W_hh_p, _ = big._step_weights(0, 1, 2, False)[4]
    assert W_ih_p.shape[0] > 0 and W_hh_p.shape[0] == 0
    small = ng.GRU(8, 64, seed=0).freeze()
    assert all(p.shape[0] > 0 for p in small._step_weights(0, 1, 1, False)[4][:2])
    assert all(p.shape[0] == 0 for p in small._step_weights(0, 4, 2, True)[4])  # the split step
    # ... and a few rows of it, read from L3 either way, ran faster unpacked (from 8 rows on panels)
    assert big._step_weights(0, 4, 1, False)[4][1].shape[0] == 0
    assert big._step_weights(0, 8, 1, False)[4][1].shape[0] > 0


def test_frozen_one_row_step_without_reset_after_keeps_w_hh_unpacked_on_zen4(rng, monkeypatch):
    # reset_after=False multiplies W_hh's r, z rows and then its n rows: one row of them ran slower on
    # their panels on Zen 4 (dispatch.PACKED_STEP_SPLIT_ONE_ROW); W_ih's panels and more rows stay
    for split_ok in (True, False):
        monkeypatch.setattr(dispatch, "PACKED_STEP_SPLIT_ONE_ROW", split_ok)
        g = ng.GRU(24, 40, reset_after=False, seed=1)
        f = g.freeze()
        W_ih_p, W_rz_p, W_n_p = f._step_weights(0, 1, 1, False)[4]
        assert W_ih_p.shape[0] > 0 and (W_rz_p.shape[0] > 0) is split_ok and (W_n_p.shape[0] > 0) is split_ok
        assert all(p.shape[0] > 0 for p in f._step_weights(0, 4, 1, False)[4])
        assert all(p.shape[0] > 0 for p in ng.GRU(24, 40, seed=1).freeze()._step_weights(0, 1, 1, False)[4][:2])
        x = rng.standard_normal((6, 1, 24)).astype(np.float32)
        s = f.stream()
        steps = np.stack([s.step(x[t]) for t in range(6)])
        np.testing.assert_allclose(steps, g(x)[0], **TOL[np.float32])
        c = ng.GRUCell(24, 40, reset_after=False, seed=2)
        h = rng.standard_normal((1, 40)).astype(np.float32)
        np.testing.assert_allclose(c.freeze()(x[0], h), c(x[0], h), **TOL[np.float32])


@pytest.mark.parametrize("reset_after", [True, False])
def test_frozen_cell_matches_cell(rng, reset_after):
    c = ng.GRUCell(6, 20, seed=0, reset_after=reset_after)
    f = c.freeze()
    assert f.frozen and not c.frozen and "frozen=True" in repr(f)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    h = rng.standard_normal((3, 20)).astype(np.float32)
    np.testing.assert_allclose(f(x, h), c(x, h), **TOL[np.float32])
    np.testing.assert_allclose(f(x[0]), c(x[0]), **TOL[np.float32])  # the general path
    with pytest.raises(ValueError, match="frozen"):
        f.forward_train(x, h)
    g = pickle.loads(pickle.dumps(f))  # a used cell: its kept step arguments are not carried over
    assert g.frozen and g._plans == {}
    np.testing.assert_allclose(g(x, h), c(x, h), **TOL[np.float32])
    assert g._plans and all(a is b for a, b in zip(g._plans[next(iter(g._plans))][0][4],
                                                    g._gru._step_weights(0, 3, numba.get_num_threads(),
                                                                         False)[4]))


def test_frozen_model_in_batching_engine(rng):
    g = ng.GRU(6, 20, seed=0)
    seqs = [rng.standard_normal((T, 6)).astype(np.float32) for T in (3, 7, 1)]
    with ng.BatchingEngine(g.freeze(), max_delay_ms=1.0) as engine:
        outs = list(engine.map(seqs))
    for x, (y, _) in zip(seqs, outs):
        np.testing.assert_allclose(y, g(x)[0], **TOL[np.float32])


# ---------------------------------------------------------------------------------------- contract
def test_freeze_leaves_the_original_alone(rng):
    g = ng.GRU(4, 8, seed=0)
    before = g.state_dict()
    f = g.freeze()
    assert f.frozen and not g.frozen and "frozen=True" in repr(f) and "frozen" not in repr(g)
    for k, v in f.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    for _, p in g.named_parameters():  # the original still trains
        assert p.flags.writeable
        p += 1.0
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    assert np.abs(f(x)[0] - g(x)[0]).max() > 1e-3  # the copy kept its own weights


@pytest.mark.parametrize("make, word", [(ng.GRU.freeze, "frozen"), (ng.GRU.quantize, "quantized")])
def test_inference_copies_refuse_training(rng, make, word):
    f = make(ng.GRU(4, 8, seed=0))
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=f"{word}.*inference only"):
        f.forward_train(x)
    with pytest.raises(ValueError, match=f"{word}.*inference only"):
        f.load_state_dict(f.state_dict())
    for name, p in f.named_parameters():
        assert not p.flags.writeable, name
        with pytest.raises(ValueError):
            p[...] = 0.0


@pytest.mark.parametrize("clone", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy, copy.copy])
def test_frozen_model_stays_frozen_when_copied(rng, clone):
    f = ng.GRU(5, 16, seed=0, bidirectional=True).freeze()
    c = clone(f)
    assert c.frozen
    assert all(not p.flags.writeable for _, p in c.named_parameters())
    x = rng.standard_normal((40, 1, 5)).astype(np.float32)
    np.testing.assert_array_equal(c(x)[0], f(x)[0])
    with pytest.raises(ValueError, match="frozen"):
        c.forward_train(x)


def test_frozen_model_saves_plain_weights(tmp_path, rng):
    g = ng.GRU(6, 20, seed=0)
    ng.save(g.freeze(), tmp_path / "f")
    loaded = ng.load(tmp_path / "f")
    assert not loaded.frozen
    x = rng.standard_normal((4, 2, 6)).astype(np.float32)
    np.testing.assert_allclose(loaded(x)[0], g(x)[0], **TOL[np.float32])


def test_freeze_and_quantize_compose(rng):
    g = ng.GRU(6, 20, seed=0)
    q = g.quantize()
    x = rng.standard_normal((9, 3, 6)).astype(np.float32)
    for m in (g.freeze().quantize(), q.freeze()):
        assert m.frozen and m.quantized == "bfloat16"
        np.testing.assert_allclose(m(x)[0], q(x)[0], **TOL[np.float32])
    f = g.freeze()
    assert f.freeze().frozen
