"""The dot-product block on unpacked weights (numgru.kernels.dotblock) against NumPy: row counts
around its blocks of 2, 3, 4 and 5 rows and its groups, columns that end inside a block (masked stores),
inner sizes around a vector, a line and a k-chunk, weights and rows that start anywhere in a 64-byte
line, slices of larger arrays, both float dtypes, bfloat16 weights, W's blocks of rows swept last
first (the same bits); the same compiled for AVX2. Its
use in steps is checked against tests/reference.py by tests/test_step.py and the layer tests."""
import os
import subprocess
import sys

import llvmlite.binding as ll
import numba
import numpy as np
import pytest

from numgru.kernels.bf16 import from_bfloat16, to_bfloat16
from numgru.kernels.dotblock import GROUP_ROWS, aligned_like, dot_rows


@numba.njit(cache=False)
def _dot(x, W, out, n, rev=False):
    dot_rows(x, W, out, n, rev)


@numba.njit(cache=False)
def _aligned(x, W, n):
    return aligned_like(x, W, n)


def _shifted(a, shift):
    """A copy of ``a`` that starts ``shift`` elements past a 64-byte line."""
    per_line = 64 // a.itemsize
    buf = np.zeros(a.size + 2 * per_line, a.dtype)
    off = (-(buf.ctypes.data // a.itemsize)) % per_line + shift
    out = buf[off:off + a.size].reshape(a.shape)
    out[...] = a
    return out


def _check(x, W, n, dtype):
    M, K = W.shape
    rows = x.shape[0]
    # out is the front of a larger buffer: nothing past its rows or its last column may be written
    buf = np.full(rows * (M + 3) + 64, 7.0, dtype)
    out = buf[:rows * (M + 3)].reshape(rows, M + 3)[:, :M]
    _dot(x, W, out, n)
    want = x[:n].astype(np.float64) @ W.T.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[:n], want, rtol=tol, atol=tol * np.sqrt(max(K, 1)))
    assert (out[n:] == 7.0).all()
    assert (buf[:rows * (M + 3)].reshape(rows, M + 3)[:, M:] == 7.0).all() and (buf[rows * (M + 3):] == 7.0).all()
    # the blocks of W's rows last first (a step's alternate sweep): each sum is the same
    forward = out[:n].copy()
    out[:n] = np.nan
    _dot(x, W, out, n, True)
    np.testing.assert_array_equal(out[:n], forward)
    assert (buf[:rows * (M + 3)].reshape(rows, M + 3)[:, M:] == 7.0).all() and (buf[rows * (M + 3):] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(768, 256), (300, 100), (5, 3), (97, 301), (64, 1), (12, 1030), (3, 17)])
def test_dot_rows_matches_numpy(dtype, M, K):
    rng = np.random.default_rng(M * 1000 + K)
    W = rng.standard_normal((M, K)).astype(dtype)
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 15, 25, GROUP_ROWS, GROUP_ROWS + 1, GROUP_ROWS + 5,
              2 * GROUP_ROWS + 3, 40, 96):
        x = rng.standard_normal((n + 2, K)).astype(dtype)
        _check(x, W, n, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [256, 64, 100, 1024])
def test_dot_rows_any_alignment(dtype, K):
    # W's rows start anywhere in a line (a masked first step brings its loads onto lines), x's
    # anywhere else (copied to line up with W's), and both may be slices of larger arrays
    rng = np.random.default_rng(K)
    W0 = rng.standard_normal((50, K)).astype(dtype)
    x0 = rng.standard_normal((6, K)).astype(dtype)
    per_line = 64 // np.dtype(dtype).itemsize
    for sw in range(0, per_line, 3):
        for sx in (0, 1, per_line - 1):
            W = _shifted(W0, sw)
            x = _shifted(x0, sx)
            for n in (2, 5, 6):
                _check(x, W, n, dtype)
    big = rng.standard_normal((60, K + 5)).astype(dtype)
    _check(big[3:9, 2:K + 2], big[10:59, 1:K + 1], 6, dtype)  # rows with gaps between them
    _check(x0, W0[7:40], 4, dtype)  # a block of W's rows


@pytest.mark.parametrize("M, K", [(768, 256), (97, 301), (5, 3), (48, 1030), (64, 1)])
def test_dot_rows_bfloat16_any_alignment(M, K):
    """bfloat16 weights (uint16 codes) by float32 rows: the float32 product of the widened weights,
    W's rows starting anywhere in a line (32 bytes of them make the first masked step's target)."""
    rng = np.random.default_rng(M + K)
    Wq0 = to_bfloat16(rng.standard_normal((M, K)).astype(np.float32))
    for sw in range(0, 32, 5):
        buf = np.zeros(M * K + 64, np.uint16)
        off = (-(buf.ctypes.data // 2)) % 32 + sw
        Wq = buf[off:off + M * K].reshape(M, K)
        Wq[...] = Wq0
        for n in (1, 2, 3, 5, 6, GROUP_ROWS, GROUP_ROWS + 1):
            x = rng.standard_normal((n + 1, K)).astype(np.float32)
            rows = x.shape[0]
            big = np.full(rows * (M + 3) + 64, 7.0, np.float32)
            out = big[:rows * (M + 3)].reshape(rows, M + 3)[:, :M]
            _dot(x, Wq, out, n)
            want = x[:n].astype(np.float64) @ from_bfloat16(Wq).T.astype(np.float64)
            np.testing.assert_allclose(out[:n], want, rtol=1e-5, atol=1e-5 * np.sqrt(K))
            forward = out[:n].copy()
            _dot(x, Wq, out, n, True)
            np.testing.assert_array_equal(out[:n], forward)
            assert (out[n:] == 7.0).all() and (big[rows * (M + 3):] == 7.0).all()
            assert (big[:rows * (M + 3)].reshape(rows, M + 3)[:, M:] == 7.0).all()


#: an AVX2 machine without AVX-512 (Haswell's features), for Numba's code generation
AVX2_FEATURES = ("+64bit,+avx,+avx2,+fma,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+f16c,+bmi,+bmi2,"
                 "+lzcnt,+movbe,+cx16,+xsave,+cmov,+fxsr,+mmx")


@pytest.mark.skipif(not ll.get_host_cpu_features().get("avx2", False) or "NUMBA_CPU_FEATURES" in os.environ,
                    reason="needs a CPU with AVX2 (and runs the tests above compiled for it)")
def test_dot_rows_compiled_for_avx2(tmp_path):
    """The tests above with the block compiled for an AVX2 target (8 float32 lanes, 32-byte vectors),
    in a fresh process with its own Numba cache: its first masked step once ran up to a 64-byte line,
    more values than one step of 8 lanes holds, and skipped the rest on such machines."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=AVX2_FEATURES, NUMGRU_AMX="0",
               NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "matches_numpy or any_alignment"], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(__file__))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout


def test_aligned_like_lines_rows_up_with_w():
    rng = np.random.default_rng(0)
    W = _shifted(rng.standard_normal((48, 64)).astype(np.float32), 4)
    x = _shifted(rng.standard_normal((5, 64)).astype(np.float32), 9)
    xa = _aligned(x, W, 3)
    assert xa.ctypes.data % 64 == W.ctypes.data % 64 and xa.strides == W.strides
    np.testing.assert_array_equal(xa, x[:3])
    same = _shifted(x, 4)
    assert _aligned(same, W, 5).ctypes.data == same.ctypes.data  # already lined up: no copy


def test_dot_rows_empty_and_zero_depth():
    W = np.ones((9, 0), np.float32)
    out = np.full((3, 9), 7.0, np.float32)
    _dot(np.ones((3, 0), np.float32), W, out, 2)
    assert (out[:2] == 0).all() and (out[2] == 7.0).all()
    out = np.full((3, 9), 7.0, np.float32)
    _dot(np.ones((3, 4), np.float32), np.ones((9, 4), np.float32), out, 0)
    assert (out == 7.0).all()


def test_dot_rows_rejects_bad_shapes():
    W = np.ones((10, 8), np.float32)
    x = np.ones((4, 8), np.float32)
    out = np.empty((4, 10), np.float32)
    for args in [(x, W, out, 5), (x, W, out, -1), (np.ones((4, 9), np.float32), W, out, 4),
                 (x, W, np.empty((4, 9), np.float32), 4), (x, W, np.empty((3, 10), np.float32), 4)]:
        with pytest.raises(ValueError, match="shapes"):
            _dot(*args)
    with pytest.raises(ValueError, match="shapes"):
        _dot(x, np.ones((10, 16), np.float32)[:, ::2], out, 4)  # W's rows not contiguous
