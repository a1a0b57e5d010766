import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

TOL = {np.float32: dict(atol=1e-5, rtol=0), np.float64: dict(atol=1e-10, rtol=0)}


def count_calls(monkeypatch, module, names):
    """Replace functions of ``module`` by wrappers that count their calls; returns {key: calls so
    far}. ``names`` maps each function's name to its key, or lists names that are their own keys."""
    if not isinstance(names, dict):
        names = {n: n for n in names}
    calls = dict.fromkeys(names.values(), 0)
    for name, key in names.items():
        def counted(*args, _fn=getattr(module, name), _key=key):
            calls[_key] += 1
            return _fn(*args)
        monkeypatch.setattr(module, name, counted)
    return calls


def check_frozen_route(model, x, ry, rh, taken):
    """Run ``model`` and its frozen copy on x: both within float32's 1e-5 of the reference (ry, rh),
    and the route that ``taken(m)`` reports per layer (True where it ran) off for the model, on for
    the copy, which keeps its weights packed and so takes the route from fewer steps."""
    for m, on in ((model, False), (model.freeze(), True)):
        y, h = m(x)
        assert taken(m) == [on] * len(taken(m))
        np.testing.assert_allclose(y, ry, atol=1e-5)
        np.testing.assert_allclose(h, rh, atol=1e-5)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def one_thread():
    """One Numba thread for the test (restored after): every batch below 64 rows then takes the
    serial kernels."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture
def two_threads(monkeypatch):
    """Two Numba threads for the test (restored after), so the multi-threaded routes run, also for the
    small shapes the tests use (which the routes' bound on work would leave to the serial kernels), and
    each bidirectional layer's directions on both threads (not side by side on one each:
    dispatch.directions_apart, which tests/test_forward_plan.py tests)."""
    import numba
    from numgru.kernels import dispatch
    monkeypatch.setattr(dispatch, "NAMED_ROUTE_MIN_WORK", 0)
    monkeypatch.setattr(dispatch, "NAMED_ROUTE_MIN_WORK_FEW_ROWS", 0)
    monkeypatch.setattr(dispatch, "APART_MIN_WORK", 1 << 62)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(before)

# Keras runs on the torch backend in the tests (set before any import of keras)
os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture
def restore_precision():
    """The float32 matmul precision the test found, set again after it (tests that change it)."""
    import numgru as ng
    before = ng.get_float32_matmul_precision()
    yield
    ng.set_float32_matmul_precision(before)
