"""Shared set-up for the asv suite: deterministic data, pinned threads, capped grids.

Grids: by default each benchmark class runs a capped subset of its full parameter grid. Set
``NUMGRU_ASV_FULL=1`` for the whole grid, ``NUMGRU_ASV_SMOKE=1`` for one point per benchmark (CI).
The grid is chosen when asv imports the suite, so skipped points cost nothing.
"""
import os
import timeit

import numpy as np

FULL = os.environ.get("NUMGRU_ASV_FULL") == "1"
SMOKE = os.environ.get("NUMGRU_ASV_SMOKE") == "1"
ALL_THREADS = os.cpu_count() or 1


def grid(full, capped, smoke):
    """The parameter lists for the active grid (each argument is a tuple of lists)."""
    return full if FULL else (smoke if SMOKE else capped)


def pin(threads):
    """Pin numba, BLAS and torch thread counts; returns an undo function."""
    import numba
    n = ALL_THREADS if threads == "all" else int(threads)
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    limiter = None
    try:
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(n)
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass

    def undo():
        numba.set_num_threads(old)
        if limiter is not None:
            limiter.restore_original_limits()
    return undo


def require_torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed")
    return torch


def data(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


timer = timeit.default_timer
