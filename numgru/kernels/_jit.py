"""The one place that owns Numba's compilation flags.

Every kernel in :mod:`numgru.kernels` is built by :func:`kernel` (serial, ``nogil``) or
:func:`parallel_kernel` (``parallel=True``, ``nogil``), and registers itself in :data:`REGISTRY`
so that a test can audit the flags of all of them.

Flags
-----
cache
    On unless the environment variable ``NUMGRU_CACHE`` is ``0``.
nogil
    Always: threads run kernels side by side.
fastmath
    A restricted set, never ``True``: ``{"nsz", "arcp", "contract", "reassoc"}``. ``True`` would add
    ``nnan`` and ``ninf`` ("no NaN, no Inf"), which breaks NaN propagation (DESIGN §4). ``contract``
    allows FMA, ``reassoc`` lets LLVM vectorise the dot-product reductions; ``afn`` is left out so
    that ``exp``/``tanh`` keep libm accuracy (float64 parity with torch within 1e-10).
error_model
    ``"numpy"``: division by zero gives IEEE results instead of raising inside a kernel.
"""
from __future__ import annotations

import os

import numba

CACHE: bool = os.environ.get("NUMGRU_CACHE", "1") != "0"
FASTMATH: frozenset = frozenset({"nsz", "arcp", "contract", "reassoc"})
BASE_FLAGS: dict = {"cache": CACHE, "nogil": True, "fastmath": set(FASTMATH), "error_model": "numpy"}

#: name -> compiled dispatcher, for every entry-point kernel
REGISTRY: dict = {}


def kernel(func=None, *, name=None):
    """Compile ``func`` as a serial, GIL-free, cached kernel and register it."""

    def wrap(f):
        disp = numba.njit(**BASE_FLAGS)(f)
        REGISTRY[name or f.__name__] = disp
        return disp

    return wrap(func) if func is not None else wrap


def parallel_kernel(func=None, *, name=None):
    """Compile ``func`` with ``parallel=True`` (prange), GIL-free and cached, and register it."""

    def wrap(f):
        disp = numba.njit(parallel=True, **BASE_FLAGS)(f)
        REGISTRY[name or (f.__name__ + "_parallel")] = disp
        return disp

    return wrap(func) if func is not None else wrap


def inline(func):
    """A device function inlined into kernels (same fastmath; not an entry point, not cached)."""
    return numba.njit(inline="always", nogil=True, fastmath=set(FASTMATH), error_model="numpy")(func)
