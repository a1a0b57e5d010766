"""Property tests (hypothesis): random shapes, lengths and options against the numpy reference."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import numgru as ng
from reference import gru as ref_gru


@settings(max_examples=40, deadline=None)
@given(T=st.integers(0, 6), B=st.integers(1, 5), I=st.integers(1, 4), H=st.integers(1, 5),
       L=st.integers(1, 2), bidir=st.booleans(), reset_after=st.booleans(), bias=st.booleans(),
       use_h0=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_forward_matches_reference(T, B, I, H, L, bidir, reset_after, bias, use_h0, seed, data):
    rng = np.random.default_rng(seed)
    g = ng.GRU(I, H, L, bidirectional=bidir, reset_after=reset_after, bias=bias, dtype=np.float64,
               seed=seed)
    x = rng.standard_normal((T, B, I))
    D = 2 if bidir else 1
    h0 = rng.standard_normal((L * D, B, H)) if use_h0 else None
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    y, h = g(x, h0, lengths)
    ry, rh = ref_gru(x, g.state_dict(), L, H, bidir, h0, lengths, reset_after)
    np.testing.assert_allclose(y, ry, atol=1e-10)
    np.testing.assert_allclose(h, rh, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 5), B=st.integers(1, 4), reset_after=st.booleans(), bidir=st.booleans(),
       seed=st.integers(0, 2**16), data=st.data())
def test_backward_is_consistent_with_directional_derivative(T, B, reset_after, bidir, seed, data):
    """<grad, v> equals the finite-difference derivative of the loss along a random direction v."""
    rng = np.random.default_rng(seed)
    g = ng.GRU(3, 4, 2, bidirectional=bidir, reset_after=reset_after, dtype=np.float64, seed=seed)
    x = rng.standard_normal((T, B, 3))
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    y, h, tape = g.forward_train(x, lengths=lengths)
    dy, dh = rng.standard_normal(y.shape), rng.standard_normal(h.shape)
    dx, _, grads = g.backward(tape, dy, dh)
    params = dict(g.named_parameters())
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    vx = rng.standard_normal(x.shape)
    analytic = sum(float((grads[k] * v[k]).sum()) for k in params) + float((dx * vx).sum())

    def loss(eps):
        for k, p in params.items():
            p += eps * v[k]
        yy, hh = g(x + eps * vx, None, lengths)
        for k, p in params.items():
            p -= eps * v[k]
        return float((yy * dy).sum() + (hh * dh).sum())

    eps = 1e-6
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))
