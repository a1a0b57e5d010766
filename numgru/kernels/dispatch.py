"""Array-level drivers: allocate outputs, pick the serial or parallel kernel, run it.

Everything here takes and returns NumPy arrays; nothing here validates user input (the layers do).

Choosing a variant
------------------
The recurrent matmul is a BLAS call (threaded by BLAS itself); the parallel variant also spreads the
fused gate loop over batch rows with ``prange``, which opens a parallel region every time step. That
costs tens of microseconds on shared vCPUs, so it is only used when

* Numba has more than one thread (``numba.get_num_threads()``, read at call time),
* the batch has at least ``PARALLEL_MIN_ROWS`` rows,
* and no other Python thread is running a parallel kernel right now.

The last rule makes concurrent use safe under Numba's default ``workqueue`` threading layer, which
aborts the process when two threads enter parallel kernels at once: a module lock is taken without
blocking, and a caller that does not get it runs the serial (GIL-free) variant instead. Concurrent
callers therefore never wait on each other and never crash.

With more than one Numba thread, inference at small and middle batch sizes takes a third route
(:func:`use_columns`): every step is one parallel region over blocks of hidden units, each thread
multiplying its own slice of W_hh (which stays in its core's cache) in Numba, and the input projection
runs on Numba's threads too. No BLAS thread pool is then woken during the call: OpenBLAS's workers spin
for a while after each call, and a per-step parallel region that must wait for a core they hold runs
several times slower. This route, too, runs only while holding the parallel slot.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numba
import numpy as np

from .backward import gru_backward_parallel, gru_backward_serial
from .forward import (gru_forward_cols, gru_forward_parallel, gru_forward_serial,
                      input_projection_kernel, input_projection_parallel)

PARALLEL_MIN_ROWS = 64
COLS_STATE = (1024, 4096)

_PARALLEL_LOCK = threading.Lock()
_EMPTY3 = {np.dtype(np.float32): np.zeros((0, 0, 0), np.float32),
           np.dtype(np.float64): np.zeros((0, 0, 0), np.float64)}


@contextmanager
def parallel_slot(wanted: bool):
    """Yield True when the caller may run a parallel kernel now (and hold the slot meanwhile)."""
    if wanted and numba.get_num_threads() > 1 and _PARALLEL_LOCK.acquire(blocking=False):
        try:
            yield True
        finally:
            _PARALLEL_LOCK.release()
    else:
        yield False


def is_sorted_desc(lengths):
    """True when lengths are non-increasing: the kernels then skip finished rows' GEMM work."""
    return bool(lengths.shape[0] < 2 or np.all(lengths[:-1] >= lengths[1:]))


def use_columns(B, H, reset_after, store):
    """True when a forward should run on Numba's threads alone, split over hidden units.

    That is :func:`numgru.kernels.forward._gru_forward_cols` for the recurrence and
    :func:`~numgru.kernels.forward.input_projection_parallel` for the projection. Taken for inference
    (``store`` False: training keeps BLAS for its large weight-gradient GEMMs) with reset_after=True,
    more than one Numba thread, H ≥ 128 and lo ≤ B·H ≤ hi for ``COLS_STATE`` = (lo, hi). Measured with
    2–16 threads (2-vCPU AMD and 16-core Intel machines): inside that window it beat BLAS-threaded
    steps by 1.1–3× (B = 4–16, H = 256; B = 4, H = 1024). Below it a step holds too little work for a
    parallel region (at B = 1, H = 256 on 2 shared vCPUs, any other busy thread made it 2× slower),
    above it BLAS's GEMM beats the register-blocked one.
    """
    lo, hi = COLS_STATE
    return (bool(reset_after) and not store and numba.get_num_threads() > 1 and H >= 128
            and lo <= B * H <= hi)


def input_projection(x2d, W_ih, b_ih, columns=False):
    """gx = x2d @ W_ih.T + b_ih, one GEMM over all rows.  x2d (N, I), W_ih (3H, I) → (N, 3H).

    With ``columns`` (see :func:`use_columns`) the product runs on Numba's threads, otherwise in BLAS.
    """
    N = x2d.shape[0]
    gx = np.empty((N, W_ih.shape[0]), W_ih.dtype)
    if N == 0:
        return gx
    x2d = np.ascontiguousarray(x2d)
    bias = W_ih[0] if b_ih is None else b_ih
    with parallel_slot(columns) as par:
        fn = input_projection_parallel if par else input_projection_kernel
        fn(x2d, W_ih, bias, b_ih is not None, gx)
    return gx


def gru_direction_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, alpha, beta,
                          clip, y, col0, store=False, columns=False):
    """Run one direction of one layer. Shapes as in :func:`numgru.kernels.forward._gru_forward`.

    ``clip`` is None or a positive float; ``columns`` as from :func:`use_columns` (which is False
    whenever ``store`` or not ``reset_after``). Returns ``(h_n, tape)``; tape is None unless ``store``.
    """
    T, B, H3 = gx.shape
    H = H3 // 3
    dtype = gx.dtype
    use_clip = clip is not None
    tape = np.empty((T, B, (5 if use_clip else 4) * H), dtype) if store else _EMPTY3[dtype]
    if B == 0 or T == 0:
        return h0.copy(), (tape if store else None)
    h_n = np.empty((B, H), dtype)
    clip_v = dtype.type(clip if use_clip else np.inf)
    threads = numba.get_num_threads()
    with parallel_slot(columns or B >= PARALLEL_MIN_ROWS) as par:
        if par and columns:
            gru_forward_cols(gx, W_hh, b_hh, h0, lengths, is_sorted_desc(lengths), bool(reverse),
                             int(gate_kind), dtype.type(alpha), dtype.type(beta), use_clip, clip_v, y,
                             int(col0), h_n, threads)
        else:
            fn = gru_forward_parallel if par else gru_forward_serial
            fn(gx, W_hh, b_hh, h0, lengths, is_sorted_desc(lengths), bool(reverse), bool(reset_after),
               int(gate_kind), dtype.type(alpha), dtype.type(beta), use_clip, clip_v, y, int(col0), h_n,
               bool(store), tape, 16 if threads == 1 else 4)
    return h_n, (tape if store else None)


def gru_direction_backward(dy, col0, dh_n, tape, y, h0, W_hh, lengths, reverse, reset_after, gate_kind,
                           alpha, beta, clip):
    """Backward of one direction of one layer.

    Returns ``(dgx, dgh, hprev, rhprev, dh0)`` with shapes (T, B, 3H), (T, B, 3H), (T, B, H),
    (T, B, H) (None when reset_after), (B, H). See :func:`numgru.kernels.backward._gru_backward`.
    """
    T, B, _ = tape.shape
    H = h0.shape[1]
    dtype = tape.dtype
    dgx = np.zeros((T, B, 3 * H), dtype)
    dgh = np.zeros((T, B, 3 * H), dtype)
    hprev = np.zeros((T, B, H), dtype)
    rhprev = np.zeros((T, B, H) if not reset_after else (0, 0, 0), dtype)
    if B == 0 or T == 0:
        return dgx, dgh, hprev, (None if reset_after else rhprev), dh_n.copy()
    dh0 = np.empty((B, H), dtype)
    use_clip = clip is not None
    clip_v = dtype.type(clip if use_clip else np.inf)
    with parallel_slot(B >= PARALLEL_MIN_ROWS) as par:
        fn = gru_backward_parallel if par else gru_backward_serial
        fn(dy, int(col0), dh_n, tape, y, h0, W_hh, lengths, is_sorted_desc(lengths), bool(reverse), bool(reset_after),
           int(gate_kind), dtype.type(alpha), dtype.type(beta), use_clip, clip_v, dgx, dgh, hprev, rhprev, dh0)
    return dgx, dgh, hprev, (None if reset_after else rhprev), dh0
