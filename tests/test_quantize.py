"""GRU.quantize("bfloat16"): weights stored as bfloat16, widened in the kernels, arithmetic in float32.

The reference for a quantized model is the float32 model holding the rounded weights (its state_dict):
the two must agree within float32 rounding on every route, while the difference from the original
float32 model stays at bfloat16's precision. BF16_MIN_BYTES is set to 0 so that small models take the
bfloat16 kernels too.
"""
import numba
import numpy as np
import pytest

import numgru as ng
import numgru.layers as layers_mod
from conftest import TOL
from numgru.kernels import dispatch
from numgru.kernels.bf16 import from_bfloat16, to_bfloat16

F32 = TOL[np.float32]


@pytest.fixture(autouse=True)
def bf16_everywhere(monkeypatch):
    monkeypatch.setattr(layers_mod, "BF16_MIN_BYTES", 0)


def _pair(I=6, H=20, L=1, seed=0, **kw):
    g = ng.GRU(I, H, L, seed=seed, **kw)
    q = g.quantize("bfloat16")
    r = ng.GRU(I, H, L, **kw)
    r.load_state_dict(q.state_dict())
    return g, q, r


# ---------------------------------------------------------------------------------------- rounding
def test_to_bfloat16_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1); just above goes up
    x = np.array([1.0, 1.0 + 2.0 ** -8, 1.0 + 2.0 ** -8 + 2.0 ** -20, 1.0 + 3 * 2.0 ** -8, -2.5, 0.0, -0.0],
                 np.float32)
    got = from_bfloat16(to_bfloat16(x))
    np.testing.assert_array_equal(got, [1.0, 1.0, 1.0 + 2.0 ** -7, 1.0 + 2.0 ** -6, -2.5, 0.0, -0.0])
    assert np.signbit(got[-1])


def test_to_bfloat16_special_values():
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 3.4e38, 1e-40], np.float32)
    got = from_bfloat16(to_bfloat16(x))
    assert np.isnan(got[:2]).all()
    np.testing.assert_array_equal(got[2:5], [np.inf, -np.inf, np.inf])  # 3.4e38 rounds past bf16's max
    assert 0 < got[5] < 2e-40                                           # subnormals are kept


def test_to_bfloat16_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 10.0 ** np.arange(-20, 20, 0.004)[:10000].astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(from_bfloat16(to_bfloat16(x)), want)


def test_relative_rounding_error_is_bounded(rng):
    x = rng.standard_normal(100000).astype(np.float32)
    rel = np.abs(from_bfloat16(to_bfloat16(x)) - x) / np.abs(x)
    assert rel.max() <= 2.0 ** -8  # 8 significant bits: half an ulp is 2^-8 of the value at most


# ---------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("B", [1, 3, 17])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bi", [False, True])
def test_quantized_equals_rounded_float32_model(rng, B, reset_after, bi):
    g, q, r = _pair(L=2, reset_after=reset_after, bidirectional=bi)
    x = rng.standard_normal((7, B, 6)).astype(np.float32)
    h0 = rng.standard_normal((2 * (2 if bi else 1), B, 20)).astype(np.float32)
    lengths = rng.integers(0, 8, B)
    for args in ((x,), (x, h0, lengths)):
        y, h_n = q(*args)
        y_r, h_r = r(*args)
        np.testing.assert_allclose(y, y_r, **F32)
        np.testing.assert_allclose(h_n, h_r, **F32)
    # and it is a bfloat16 model, not the original: close to it, not equal
    diff = np.abs(q(x)[0] - g(x)[0]).max()
    assert 0 < diff < 2e-2


def test_large_hidden_takes_bfloat16_and_stays_close(rng, monkeypatch):
    monkeypatch.undo()  # the real threshold: H = 256 reads 768 KB of float32 W_hh per step
    g, q, r = _pair(I=8, H=256)
    assert q._recurrent_weights(0, 1, "columns").dtype == np.uint16
    assert q._recurrent_weights(0, 64, "rows").dtype == np.float32   # a big batch is arithmetic-bound
    x = rng.standard_normal((5, 2, 8)).astype(np.float32)
    np.testing.assert_allclose(q(x)[0], r(x)[0], **F32)


def test_quantized_forward_reads_the_panels_packed_once(rng, monkeypatch):
    g, q, r = _pair(H=20)
    seen = []
    serial = dispatch.gru_forward_serial

    def spy(*args):
        seen.append(args[2][0])  # the panels passed in (packed), (0, 0, 0) when none
        return serial(*args)
    x = rng.standard_normal((2, 1, 6)).astype(np.float32)  # 2 steps: too few to pack per call
    expected = r(x)[0]
    monkeypatch.setattr(dispatch, "gru_forward_serial", spy)
    np.testing.assert_allclose(q(x)[0], expected, **F32)
    q(x)
    assert seen[0].dtype == np.uint16 and seen[0].shape[0] > 0
    assert seen[1] is seen[0]  # packed once per model, not per call


def test_bf16_rule(monkeypatch):
    monkeypatch.undo()
    g = ng.GRU(4, 8)
    q = g.quantize()
    MB = 1 << 20
    assert not layers_mod.use_bf16(g, 1, 8 * MB, False)            # not quantized
    assert layers_mod.use_bf16(q, 1, 8 * MB, False)
    assert layers_mod.use_bf16(q, 16, MB, False)
    assert layers_mod.use_bf16(q, 1, 768 * 1024, False)            # W_hh at H = 256
    assert not layers_mod.use_bf16(q, 17, 8 * MB, False)           # arithmetic-bound
    assert not layers_mod.use_bf16(q, 1, 256 * 1024, False)        # float32 weights sit in L2
    assert layers_mod.use_bf16(q, 1, 3 * MB // 2, True)            # BLAS threads gained nothing here
    assert not layers_mod.use_bf16(q, 1, 3 * MB, True)             # ... and did here


def test_quantized_gate_options(rng):
    for kw in (dict(gate_activation="hard_sigmoid", alpha=0.3, beta=0.4), dict(clip=0.7)):
        _, q, r = _pair(**kw)
        x = rng.standard_normal((6, 2, 6)).astype(np.float32)
        np.testing.assert_allclose(q(x)[0], r(x)[0], **F32)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("T, B, H, route", [(9, 12, 16, "rows"), (9, 4, 256, "columns")])
def test_quantized_threaded_routes_match(two_threads, rng, T, B, H, route):
    _, q, r = _pair(I=5, H=H)
    assert dispatch.forward_route(B, H, True, False, T) == route
    x = rng.standard_normal((T, B, 5)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B)
    np.testing.assert_allclose(q(x, lengths=lengths)[0], r(x, lengths=lengths)[0], **F32)


# ---------------------------------------------------------------------------------------- streams
@pytest.mark.parametrize("reset_after", [True, False])
def test_quantized_stream_matches_forward(rng, reset_after):
    _, q, r = _pair(L=2, reset_after=reset_after)
    x = rng.standard_normal((5, 3, 6)).astype(np.float32)
    s = q.stream(batch_size=3)
    assert s._stepper.layers[0][1].dtype == np.uint16
    assert s._stepper.layers[0][4][0].dtype == np.uint16  # the step's products on packed panels
    steps = np.stack([s.step(x[t]) for t in range(5)])
    np.testing.assert_allclose(steps, r(x)[0], **F32)


def test_quantized_model_in_batching_engine(rng):
    _, q, r = _pair()
    seqs = [rng.standard_normal((T, 6)).astype(np.float32) for T in (3, 7, 1)]
    with ng.BatchingEngine(q, max_delay_ms=1.0) as engine:
        outs = list(engine.map(seqs))
    for x, (y, _) in zip(seqs, outs):
        np.testing.assert_allclose(y, r(x)[0], **F32)


# ---------------------------------------------------------------------------------------- contract
def test_quantize_leaves_the_original_alone():
    g = ng.GRU(4, 8, seed=0)
    before = g.state_dict()
    q = g.quantize()
    assert g.quantized is None and q.quantized == "bfloat16" and "bfloat16" in repr(q)
    for k, v in g.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    for k, v in q.state_dict().items():
        np.testing.assert_array_equal(v, from_bfloat16(to_bfloat16(before[k])) if "weight" in k else before[k])


# (inference only, read-only parameters: tests/test_freeze.py::test_inference_copies_refuse_training)


def test_quantize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        ng.GRU(4, 8).quantize("int8")
    with pytest.raises(ValueError, match="weights"):
        ng.GRU(4, 8, dtype=np.float64).quantize()


def test_quantized_model_saves_its_rounded_weights(tmp_path, rng):
    _, q, r = _pair()
    ng.save(q, tmp_path / "q")
    loaded = ng.load(tmp_path / "q")
    x = rng.standard_normal((4, 2, 6)).astype(np.float32)
    np.testing.assert_allclose(loaded(x)[0], r(x)[0], **F32)


@pytest.mark.parametrize("reset_after", [True, False])
def test_quantized_cell_equals_rounded_cell(rng, reset_after):
    c = ng.GRUCell(6, 20, seed=0, reset_after=reset_after)
    q = c.quantize()
    r = ng.GRUCell(6, 20, reset_after=reset_after)
    r.load_state_dict(q.state_dict())
    assert q.quantized == "bfloat16" and c.quantized is None and "bfloat16" in repr(q)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    h = rng.standard_normal((3, 20)).astype(np.float32)
    np.testing.assert_allclose(q(x, h), r(x, h), **F32)            # fast path
    np.testing.assert_allclose(q(x[0], h[0]), r(x[0], h[0]), **F32)  # unbatched
    assert 0 < np.abs(q(x, h) - c(x, h)).max() < 2e-2
    with pytest.raises(ValueError, match="inference"):
        q.forward_train(x, h)
    with pytest.raises(ValueError, match="inference"):
        q.load_state_dict(q.state_dict())
