import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

TOL = {np.float32: dict(atol=1e-5, rtol=0), np.float64: dict(atol=1e-10, rtol=0)}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

# Keras runs on the torch backend in the tests (set before any import of keras)
os.environ.setdefault("KERAS_BACKEND", "torch")
