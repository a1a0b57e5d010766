"""Gate-order and layout conversions round-trip."""
import numpy as np

from numgru.interop import layout


def test_swap_rz_is_an_involution():
    a = np.arange(12 * 5).reshape(12, 5)
    b = layout.swap_rz(a)
    np.testing.assert_array_equal(b[:4], a[4:8])
    np.testing.assert_array_equal(layout.swap_rz(b), a)


def test_keras_roundtrip_both_variants():
    rng = np.random.default_rng(0)
    W_ih, W_hh = rng.standard_normal((9, 4)), rng.standard_normal((9, 3))
    b_ih, b_hh = rng.standard_normal(9), rng.standard_normal(9)
    k = layout.to_keras_weights(W_ih, W_hh, b_ih, b_hh, reset_after=True)
    assert k[0].shape == (4, 9) and k[1].shape == (3, 9) and k[2].shape == (2, 9)
    for got, want in zip(layout.from_keras_weights(*k, reset_after=True), (W_ih, W_hh, b_ih, b_hh)):
        np.testing.assert_array_equal(got, want)
    k = layout.to_keras_weights(W_ih, W_hh, b_ih, np.zeros(9), reset_after=False)
    assert k[2].shape == (9,)
    back = layout.from_keras_weights(*k, reset_after=False)
    np.testing.assert_array_equal(back[2], b_ih)
    np.testing.assert_array_equal(back[3], np.zeros(9))


def test_onnx_roundtrip():
    rng = np.random.default_rng(0)
    dirs = [tuple(rng.standard_normal(s) for s in [(9, 4), (9, 3), (9,), (9,)]) for _ in range(2)]
    W, R, B = layout.to_onnx_weights(dirs)
    assert W.shape == (2, 9, 4) and R.shape == (2, 9, 3) and B.shape == (2, 18)
    for got, want in zip(layout.from_onnx_weights(W, R, B), dirs):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_flip_z_matches_the_other_convention():
    """h = (1 - z') h_prev + z' n with z' = σ(a) equals numgru's form with z = σ(-a)."""
    from reference import cell
    rng = np.random.default_rng(1)
    W_ih, W_hh = rng.standard_normal((9, 2)), rng.standard_normal((9, 3))
    b_ih, b_hh = rng.standard_normal(9), rng.standard_normal(9)
    x, h = rng.standard_normal((2, 2)), rng.standard_normal((2, 3))
    H = 3
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    zp = sig(x @ W_ih[H:2 * H].T + b_ih[H:2 * H] + h @ W_hh[H:2 * H].T + b_hh[H:2 * H])
    r = sig(x @ W_ih[:H].T + b_ih[:H] + h @ W_hh[:H].T + b_hh[:H])
    n = np.tanh(x @ W_ih[2 * H:].T + b_ih[2 * H:] + r * (h @ W_hh[2 * H:].T + b_hh[2 * H:]))
    other = (1 - zp) * h + zp * n
    np.testing.assert_allclose(cell(x, h, *layout.flip_z(W_ih, W_hh, b_ih, b_hh)), other, atol=1e-12)
