"""Keras 3 (torch backend) -> numgru, for every option from_keras supports; raw Keras 2 weights."""
import numpy as np
import pytest

import numgru as ng
from reference import gru as ref_gru

keras = pytest.importorskip("keras")


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _randomize(layer, seed):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype) for w in layer.get_weights()])


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("act", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_gru_layer(reset_after, act, use_bias, go_backwards):
    layer = keras.layers.GRU(5, return_sequences=True, return_state=True, reset_after=reset_after,
                             recurrent_activation=act, use_bias=use_bias, go_backwards=go_backwards)
    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype(np.float32) * 2
    layer(x)
    _randomize(layer, 1)
    ky, kh = (_np(o) for o in layer(x))
    g = ng.GRU.from_keras(layer)
    assert g.batch_first and g.gate_activation == ("sigmoid" if act == "sigmoid" else "hard_sigmoid_keras3")
    y, h = g(x)
    if go_backwards:
        y = y[:, ::-1]
    np.testing.assert_allclose(y, ky, atol=1e-5)
    np.testing.assert_allclose(h[0], kh, atol=1e-5)


def test_bidirectional_concat():
    layer = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True))
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    layer(x)
    _randomize(layer, 2)
    g = ng.GRU.from_keras(layer)
    np.testing.assert_allclose(g(x)[0], _np(layer(x)), atol=1e-5)
    with pytest.raises(ValueError, match="merge_mode"):
        bad = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True), merge_mode="sum")
        bad(x)
        ng.GRU.from_keras(bad)


def test_sequential_stack_becomes_one_multilayer_gru():
    model = keras.Sequential([keras.Input((7, 3)),
                              keras.layers.GRU(6, return_sequences=True),
                              keras.layers.GRU(6, return_sequences=True),
                              keras.layers.GRU(6)])
    for i, lyr in enumerate(model.layers):
        _randomize(lyr, 10 + i)
    x = np.random.default_rng(0).standard_normal((4, 7, 3)).astype(np.float32)
    g = ng.GRU.from_keras(model)
    assert g.num_layers == 3
    np.testing.assert_allclose(g(x)[1][-1], _np(model(x)), atol=1e-5)


def test_keras2_raw_weights_hard_sigmoid_is_0_2x_plus_0_5():
    """Keras 2 .h5 weights: reset_after=False, hard_sigmoid = clip(0.2x + 0.5) (not Keras 3's x/6)."""
    rng = np.random.default_rng(0)
    I, H = 3, 4
    kernel, rec, bias = rng.standard_normal((I, 3 * H)), rng.standard_normal((H, 3 * H)), rng.standard_normal(3 * H)
    from numgru.interop.keras import gru_from_keras_weights
    m = gru_from_keras_weights([kernel, rec, bias], reset_after=False, keras_version=2, dtype=np.float64)
    assert m.gate_activation == "hard_sigmoid_keras2" and m.alpha == 0.2

    def hs(v):
        return np.clip(0.2 * v + 0.5, 0, 1)
    x = rng.standard_normal((2, 5, I))
    h = np.zeros((2, H))
    for t in range(5):  # Keras 2's GRUCell, written out with its z, r, h gate order
        xz, xr, xh = np.split(x[:, t] @ kernel + bias, 3, axis=1)
        z = hs(xz + h @ rec[:, :H])
        r = hs(xr + h @ rec[:, H:2 * H])
        hh = np.tanh(xh + (r * h) @ rec[:, 2 * H:])
        h = z * h + (1 - z) * hh
    np.testing.assert_allclose(m(x)[1][0], h, atol=1e-12)
    ry, _ = ref_gru(x.transpose(1, 0, 2), m.state_dict(), 1, H, reset_after=False, gate="hard")
    np.testing.assert_allclose(m(x)[0], ry.transpose(1, 0, 2), atol=1e-12)


def test_unsupported_keras_layers():
    with pytest.raises(ValueError, match="activation"):
        lyr = keras.layers.GRU(3, activation="relu")
        lyr(np.zeros((1, 2, 2), np.float32))
        ng.GRU.from_keras(lyr)
    with pytest.raises(TypeError, match="expected a keras GRU"):
        lyr = keras.layers.Dense(3)
        lyr(np.zeros((1, 2), np.float32))
        ng.GRU.from_keras(lyr)
    with pytest.raises(ValueError, match="not built"):
        ng.GRU.from_keras(keras.layers.GRU(3))
