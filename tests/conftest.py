import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

TOL = {np.float32: dict(atol=1e-5, rtol=0), np.float64: dict(atol=1e-10, rtol=0)}


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
def two_threads():
    """Two Numba threads for the test (restored after), so the multi-threaded routes run."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(before)

# Keras runs on the torch backend in the tests (set before any import of keras)
os.environ.setdefault("KERAS_BACKEND", "torch")
