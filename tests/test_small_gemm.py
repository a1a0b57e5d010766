"""The steps' products in BLAS's small-matrix kernels (``h @ W_hh.T`` on a transposed copy of W_hh),
taken where OpenBLAS has them (dispatch.small_gemm_bound), against tests/reference.py with the route
forced on and off, so both routes are checked whichever BLAS this machine has (the rows route, which
takes them in its chunks too, is checked in tests/test_rows.py)."""
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
from numgru.kernels import dispatch
from reference import gru as ref_gru, random_params


@pytest.mark.parametrize("bound", [0, 10**6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bi, with_lengths, reset_after", [(False, False, True), (True, True, True),
                                                           (True, True, False)])
def test_small_gemm_route_matches_reference(monkeypatch, bound, dtype, bi, with_lengths, reset_after):
    monkeypatch.setattr(dispatch, "small_gemm_bound", lambda: bound)
    rng = np.random.default_rng(1)
    T, B, I, H, L = 12, 5, 4, 16, 2
    p = random_params(I, H, L, bi, seed=3)
    g = ng.GRU(I, H, L, bidirectional=bi, dtype=dtype, reset_after=reset_after)
    g.load_state_dict(p)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * (2 if bi else 1), B, H)).astype(dtype)
    lengths = np.array([T, 3, 0, T - 1, 8]) if with_lengths else None
    y, h_n = g(x, h0, lengths)
    y_ref, h_ref = ref_gru(x, p, L, H, bi, h0=h0, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(h_n, h_ref, **TOL[dtype])


@pytest.mark.parametrize("reset_after", [True, False])
def test_small_gemm_route_in_training_matches_plain_route(monkeypatch, reset_after):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 4, 3))
    runs = []
    for bound in (0, 10**6):
        monkeypatch.setattr(dispatch, "small_gemm_bound", lambda b=bound: b)
        g = ng.GRU(3, 8, seed=0, dtype=np.float64, reset_after=reset_after)
        y, h_n, tape = g.forward_train(x)
        dx, dh0, grads = g.backward(tape, np.ones_like(y))
        runs.append((y, dx, grads["weight_hh_l0"]))
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch, path, want", [
    ("SkylakeX", "/x/scipy_openblas32/lib/libscipy_openblas.so", 10**6),
    ("SapphireRapids", "/x/scipy.libs/libscipy_openblas.so", 10**6),
    ("Haswell", "/x/scipy.libs/libscipy_openblas.so", 0),
])
def test_small_gemm_bound_reads_scipys_openblas_kernel(monkeypatch, arch, path, want):
    import threadpoolctl
    # NumPy's ILP64 copy comes first and says SkylakeX: it is not the one Numba calls
    info = [{"internal_api": "openblas", "user_api": "blas", "architecture": "SkylakeX",
             "filepath": "/x/numpy.libs/libscipy_openblas64_-32a4b2a6.so"},
            {"internal_api": "openblas", "user_api": "blas", "architecture": arch, "filepath": path}]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: info)
    dispatch.small_gemm_bound.cache_clear()
    try:
        assert dispatch.small_gemm_bound() == want
    finally:
        dispatch.small_gemm_bound.cache_clear()
