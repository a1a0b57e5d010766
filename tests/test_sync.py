"""The atomic operations behind the column route's per-step meeting (numgru.kernels.sync)."""
import numba
import numpy as np
import pytest
from numba import prange

from numgru.kernels.sync import atomic_add, atomic_cas, atomic_load, spin_pause


@numba.njit(cache=False)
def _ops(a):
    old = atomic_add(a, 1, 5)
    got = atomic_load(a, 1)
    took = atomic_cas(a, 2, 0, 7)
    missed = atomic_cas(a, 2, 0, 9)
    spin_pause()
    return old, got, took, missed


def test_atomic_operations():
    a = np.array([0, 3, 0], np.int64)
    assert _ops(a) == (3, 8, True, False)
    assert a.tolist() == [0, 8, 7]


@numba.njit(parallel=True, cache=False)
def _count(a, n):
    for w in prange(2):
        for _ in range(n):
            atomic_add(a, 0, 1)
            if atomic_cas(a, 8, 0, w + 1):  # only the first of both succeeds, once
                atomic_add(a, 16, 1)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_atomics_from_two_threads(two_threads):
    a = np.zeros(24, np.int64)
    _count(a, 20000)
    assert a[0] == 40000 and a[8] in (1, 2) and a[16] == 1


def test_atomics_refuse_other_arrays():
    with pytest.raises(numba.TypingError):
        _ops(np.zeros(3, np.int32))
