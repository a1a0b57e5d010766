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
    """Pin numba, BLAS and torch thread counts (numgru.bench.pinned_threads); returns an undo function."""
    from numgru.bench import pinned_threads
    cm = pinned_threads(ALL_THREADS if threads == "all" else int(threads))
    cm.__enter__()
    return lambda: cm.__exit__(None, None, None)


def require_torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed")
    return torch


def data(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


timer = timeit.default_timer


def warm_up(call, calls=4, seconds=0.05):
    """Call ``call()`` once (the JIT compile), then again until ``calls`` calls or ``seconds`` have passed.

    asv's runner re-runs setup before every timed call (asv#966), so each sample times one call right
    after setup. One warm-up call left that call 15–50 % above the steady state for forwards of tens of
    µs (T = 16, B = 1, H = 64); three more bring it within a few per cent. The time bound keeps setup
    cheap where one call takes seconds.
    """
    start = timer()
    call()
    for _ in range(calls - 1):
        if timer() - start > seconds:
            break
        call()
