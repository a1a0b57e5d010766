"""The activations the kernels inline (:mod:`numgru.kernels.activations`), float32's and float64's,
against libm in float64: accuracy over the whole range, relative accuracy near 0, exact saturation,
NaN and ±Inf."""
import numba
import numpy as np
import pytest

from numgru.kernels.activations import sigmoid_fast, tanh_fast


@numba.njit(cache=False)
def _activate(xs, sigmoid):
    out = np.empty_like(xs)
    for i in range(xs.size):
        out[i] = sigmoid_fast(xs[i]) if sigmoid else tanh_fast(xs[i])
    return out


def _tanh32(xs):
    return _activate(xs, False)


def _sigmoid32(xs):
    return _activate(xs, True)


def _grid():
    dense = np.linspace(-12.0, 12.0, 1_200_001)
    tiny = np.geomspace(1e-45, 1e-2, 20_001)  # subnormals included
    return np.concatenate([dense, tiny, -tiny, [0.0, 7.9053111, -7.9053111, 20.0, -20.0, 1e30, -1e30]]
                          ).astype(np.float32)


def test_tanh_float32_accuracy():
    x = _grid()
    got = _tanh32(x).astype(np.float64)
    want = np.tanh(x.astype(np.float64))
    assert np.abs(got - want).max() < 3e-7
    small = (np.abs(x) < 1e-2) & (np.abs(x) >= 1e-36)  # relative accuracy while v·(…) is a normal
    assert (np.abs(got[small] - want[small]) <= 3e-7 * np.abs(want[small])).all()
    assert np.abs(got).max() <= 1.0
    assert (got[x >= 8] == 1.0).all() and (got[x <= -8] == -1.0).all()
    normal = np.abs(x) >= 1e-36
    assert (np.sign(got[normal]) == np.sign(x[normal])).all()


def test_sigmoid_float32_accuracy():
    x = _grid()
    got = _sigmoid32(x).astype(np.float64)
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.abs(got - want).max() < 2e-7
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert (got[x >= 16] == 1.0).all() and (got[x <= -16] == 0.0).all()


@pytest.mark.parametrize("f", [_tanh32, _sigmoid32], ids=["tanh", "sigmoid"])
def test_float32_nan_and_inf(f):
    out = f(np.array([np.nan, np.inf, -np.inf], np.float32))
    assert np.isnan(out[0])
    want = [1.0, -1.0] if f is _tanh32 else [1.0, 0.0]
    np.testing.assert_array_equal(out[1:], np.array(want, np.float32))


def _grid64():
    dense = np.linspace(-40.0, 40.0, 800_001)
    tiny = np.geomspace(1e-300, 1e-2, 20_001)
    return np.concatenate([dense, tiny, -tiny, [0.0, 19.1, -19.1, 354.0, -354.0, 700.0, -700.0, 745.0, -745.0,
                                                 1e300, -1e300]])


def test_tanh_float64_accuracy():
    x = _grid64()
    got = _activate(x, False)
    want = np.tanh(x)
    assert (np.abs(got - want) <= 1e-15 * np.abs(want)).all()  # relative, near 0 too
    assert np.abs(got).max() <= 1.0
    assert (got[x >= 19.1] == 1.0).all() and (got[x <= -19.1] == -1.0).all()
    assert np.signbit(_activate(np.array([-0.0]), False)[0])


def test_sigmoid_float64_accuracy():
    x = _grid64()
    got = _activate(x, True)
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x))
    assert np.abs(got - want).max() <= 3e-16
    tail = x >= -40.0
    assert (np.abs(got[tail] - want[tail]) <= 3e-15 * want[tail]).all()
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert (got[x >= 37.0] == 1.0).all() and (got[x <= -745.0] == 0.0).all()


@pytest.mark.parametrize("sigmoid", [False, True], ids=["tanh", "sigmoid"])
def test_float64_nan_and_inf(sigmoid):
    out = _activate(np.array([np.nan, np.inf, -np.inf]), sigmoid)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [1.0, 0.0] if sigmoid else [1.0, -1.0])
