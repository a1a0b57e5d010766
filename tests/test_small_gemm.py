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


def test_bfloat16_weights_ignore_the_bound():
    """A quantized model's bfloat16 steps never take BLAS, whatever bound the kernel is given."""
    from numgru.kernels.bf16 import from_bfloat16, to_bfloat16
    from numgru.kernels.forward import gru_forward_serial
    rng = np.random.default_rng(4)
    T, B, H = 9, 3, 8
    W = to_bfloat16(rng.standard_normal((3 * H, H)).astype(np.float32))
    gx = rng.standard_normal((T, B, 3 * H)).astype(np.float32)
    b_hh = np.zeros(3 * H, np.float32)
    h0 = np.zeros((B, H), np.float32)
    lengths = np.full(B, T, np.int64)
    no_tape = np.zeros((0, 0, 0), np.float32)
    outs = []
    for Wm, bound in ((W, 10**6), (np.ascontiguousarray(from_bfloat16(W)), 0)):
        y = np.empty((T, B, H), np.float32)
        h_n = np.empty((B, H), np.float32)
        f32 = np.float32
        gru_forward_serial(gx, Wm, b_hh, h0, lengths, True, False, True, 0, f32(0), f32(0), False,
                           f32(np.inf), y, 0, h_n, False, no_tape, 16, 0, B, bound)
        outs.append(y)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)
