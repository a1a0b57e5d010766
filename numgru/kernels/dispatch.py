"""Array-level drivers: allocate outputs, pick the serial or parallel kernel, run it.

Everything here takes and returns NumPy arrays; nothing here validates user input (the layers do).

Choosing a variant
------------------
With one Numba thread every layer runs the serial kernel; its recurrent matmul is Numba's
register-blocked one or a BLAS call by shape (BLAS may still thread that call). With more than one
Numba thread, :func:`forward_route` picks by sequence length, batch and hidden size:

* "rows" (inference): the batch is split into one chunk of rows per thread and every chunk runs the
  whole sequence: one parallel region per call, none per step;
* "columns" (inference, small batches): every step is one parallel region over blocks of hidden units,
  each thread multiplying its own slice of W_hh (which stays in its core's cache);
* otherwise the serial kernel, BLAS threading each step's GEMM where the step takes BLAS. Its gate
  loops once ran in ``prange`` for B ≥ 64 between those GEMMs (a parallel build of the same kernel);
  on the 2-vCPU Zen 4 that ran T = 128, B = 64, H = 1024 in 1360–1588 ms on two threads against 632
  with the loops serial, the two pools spinning against each other as in the backward below.

A step of GRUCell or a stream (:func:`run_step`) runs the serial step kernel, or with several threads
the step split over hidden units (:func:`step_columns`).

The named routes run on Numba's threads only, the input projection included: OpenBLAS's workers
spin for a while after each call, and a parallel region that must wait for a core they hold runs
several times slower. The backward once spread its gate loops over rows between BLAS-threaded GEMMs
and ran 5–10× slower on 2 vCPUs for that reason (T = 128, B = 64, H = 256: 1125 ms against 108 with
the gate loops serial); it is serial now, and training never takes the named routes.

Any parallel kernel runs only while holding a module lock, taken without blocking. This makes
concurrent use safe under Numba's default ``workqueue`` threading layer, which aborts the process when
two threads enter parallel kernels at once: a caller that does not get the lock runs the serial
(GIL-free) variant instead. Concurrent callers therefore never wait on each other and never crash.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ._jit import ARRAY_KIND, avx512_zen, native_address, planned_call, target_cpu
from .amx import (amx_gradient, amx_gradient_pair, amx_gradient_parallel, amx_projection,
                  amx_projection_parallel, amx_digit_projection, amx_digit_projection_parallel, amx_ready,
                  DIGIT_MAX_K, DIGIT_WIDE_BYTES, digits_size, gru_forward_amx, gru_forward_amx_rows,
                  pack_amx, pack_amx_into, pack_amx_into_parallel, pack_digits, pack_digits_into,
                  pack_digits_into_parallel, padded)
from .backward import (BIAS_ROWS, gru_backward_amx, gru_backward_amx_rows, gru_backward_dpbf16,
                       gru_backward_serial, input_gradient_strips, matmul_into, transpose_into,
                       weight_gradient_panels)
from .forward import (column_blocks, first_step_gates, gru_forward_chunked, gru_forward_cols,
                      gru_forward_cols_before, gru_forward_rows, gru_forward_serial, input_projection_kernel,
                      input_projection_parallel, own_panels, packed_panels, packed_panels_into,
                      packed_panels_of_transpose, packed_panels_on_threads, panel_steps, projection_block,
                      NUMBA_ROWS_MAX, NUMBA_ROWS_MAX_K, numba_rows_past_l2, row_chunks, take_batch,
                      take_batch_on_threads, one_row_dot, step_from_products, TILED_MAX_ONE_THREAD, use_panels,
                      wants_panels, COLUMN_SPLIT_MAX_ROWS)
from .stack import (ALPHA, B_HH, B_IH, BETA, CLIP, GATE_KIND, GH, GI, HIDDEN, LAYERS, RESET_AFTER, ROWS,
                    STATE_A, STATE_B, STEP_FIRST, STEP_INNER, STEP_LAYER, STEP_PANEL_SHAPES, STEP_TILED_MAX,
                    STEP_WEIGHTS, USE_CLIP, W_HH, W_IH, WP_A, WP_B, WP_IH, gru_stack_forward)
from .step import gru_step, gru_step_cols, gru_step_cols_before
from .dpbf16 import (CHUNK_ROWS, TILE_PANELS, dpbf16_gradient, dpbf16_projection,
                     dpbf16_projection_parallel, dpbf16_ready, gru_forward_dpbf16, gru_forward_dpbf16_ranges,
                     pack_pairs)
from .vnni import (digit_offsets, digit_row_sums, gru_forward_vnni, gru_forward_vnni_before, gru_forward_vnni_cols,
                   gru_forward_vnni_cols_before, gru_step_vnni, gru_step_vnni_before, gru_step_vnni_cols,
                   gru_step_vnni_cols_before, step_work_size, vnni_ready)
from .fused import fused_ready, gru_forward_fused, gru_forward_fused_before
from .panel import WIDE_GROUP, WIDE_PANELS_BYTES

#: rows from which a multi-threaded forward never takes BLAS-threaded steps where BLAS is not wider
#: (:func:`forward_route`)
PARALLEL_MIN_ROWS = 64
OFF_BLAS_PANELS_MIN_ROWS = 64
OFF_BLAS_DOT_MAX_WORK = 1 << 19
OFF_BLAS_DOT_ONE_ROW_MAX_VALUES = 3 * 256 * 256
ROWS_MIN = 4
ROWS_MAX_WEIGHTS = 1 << 18
ROWS_MAX_STATE = 16384
ROWS_MAX_STATE_WIDE_BLAS = 65536
ROWS_MAX_WEIGHTS_WIDE_BLAS = 3 * 512 * 512
ROWS_MAX_STREAM_ROWS = 8
ROWS_MAX_STREAMED = 1 << 23
ROWS_UNEVEN = 1.15
COLS_STATE = (1024, 16384)
COLS_B1_BYTES = (1 << 19, 1 << 20)
COLS_B1_BEYOND_L2_MIN_STEPS = 2
COLS_B1_MIN_WORK = 1 << 20
COLS_B1_BEYOND_L2_MIN_WORK = 1 << 21
COLS_FEW_ROWS_MIN_HIDDEN = 160
COLS_FEW_ROWS_MIN_STEPS = 32
COLS_FEW_ROWS_MIN_STEPS_KEPT = 64
COLS_FEW_ROWS_MAX_THREADS = 2
COLS_BEFORE_MIN_HIDDEN = 256
NAMED_ROUTE_MIN_WORK = 1 << 19
NAMED_ROUTE_MIN_WORK_FEW_ROWS = 1 << 20
PACK_BELOW = 0.9
PACK_MIN_SAVED = 1 << 20
GRADIENT_GATHER_MIN_SAVED = 1 << 22
STEP_COLS_MIN_H = 192
STEP_COLS_MAX_ROWS = 16
STEP_COLS_MIN_H_MANY_ROWS = 64
STEP_COLS_MIN_WORK = 1 << 16
STEP_COLS_MIN_WORK_KEPT = 96 << 10
STEP_COLS_BEFORE_MIN_H = 256
STEP_COLS_BEFORE_MIN_ROWS = 4
STEP_COLS_B1_BYTES = 1 << 21
STEP_COLS_BF16_SERIAL_BYTES = 1 << 20
PROJ_PANELS_MIN_ROWS = ((64, 16), (128, 32), (256, 128))
PROJ_PANELS_MIN_ROWS_PARALLEL = 256
PROJ_PANELS_MAX_INPUTS_PARALLEL = 512
PROJ_PANELS_MIN_ROWS_PARALLEL_WIDE = 512
#: float64 on several threads: (most inputs I, fewest rows N) for the panels (see projection_panels)
PROJ_PANELS_PARALLEL_F64 = ((512, 96), (768, 128), (1 << 62, 256))
PROJ_PANELS_PARALLEL_F64_WIDE = 32
#: smallest W_hh of a one-step float64 call taken as a projection of h0 (see one_step_as_product)
ONE_STEP_PRODUCT_MIN_BYTES = 1 << 23
#: fewest rows of a GRUCell or stream step given to such a forward of one step (``GRU._one_step_on_rows``)
STEP_AS_PRODUCT_MIN_ROWS = 48
PROJ_DOT_MAX_ROWS = 16
#: :func:`projection_dot`: most rows of a float32 training projection where BLAS is no wider than Numba
TRAINING_DOT_MAX_ROWS = 63
PROJ_DOT_MAX_ROWS_ONE_THREAD = 32
PROJ_DOT_MID_INPUTS = (128, 256)
PROJ_DOT_MAX_ROWS_MID_INPUTS = 64
PROJ_DOT_MAX_ROWS_NARROW = 32
PROJ_DOT_NARROW_INPUTS = 128
PROJ_PANELS_BLAS_THREADS = ((64, 128), (128, 64))
#: the serial projection on one thread on Zen 4/5 (:data:`ZEN_PROJECTION`), by the most inputs I of
#: each entry: (most I, most rows for the dot-product block, whether the packed panels take the rows
#: beyond, else BLAS) (see :func:`projection_panels`)
PROJ_ONE_THREAD_ZEN = ((64, 15, True), (128, 23, True), (256, 47, True), (768, 128, True),
                       (1 << 62, 128, False))
#: float64's entry past ``PROJ_ZEN_64_INPUTS`` inputs (fewer: the table above's)
PROJ_ZEN_64 = (1 << 62, 32, False)
PROJ_ZEN_64_INPUTS = 256
PACKED_PROJ_MAX_INPUTS = 256
PACKED_PROJ_MAX_INPUTS_WIDE = 512
PACKED_PROJ_MAX_ROWS_WIDE = 128
PACKED_PROJ_MAX_VALUES_BLAS_THREADS = 16384
PACKED_STEP_WIDE_K = 512
PACKED_STEP_WIDE_MIN_ROWS = 8
#: whether one row's reset_after=False step takes W_hh's two parts on their panels (packed_step): not
#: on Zen 4
PACKED_STEP_SPLIT_ONE_ROW = not avx512_zen()
INTERLEAVE_MIN_BYTES = 1 << 20
INTERLEAVE_CHUNK_BYTES = 3 << 17
INTERLEAVE_MAX_WEIGHT_BYTES = 1 << 19
AMX_MIN_ROWS = 256
AMX_MIN_INPUTS = 128
AMX_MIN_ROWS_NARROW = 512
AMX_MIN_INPUTS_NARROW = 64
AMX_MIN_ROWS_BY_ORDER = {2: (128, 128), 1: (64, 128)}
#: float32 inference on one thread at the default precision, inputs above AMX_MID_MIN_INPUTS: the rows
#: from which the projection takes the tiles, (most I, fewest rows) (see amx_projection_wanted)
AMX_MID_MIN_INPUTS = 192
AMX_MIN_ROWS_MID = ((256, 80), (512, 64))
#: likewise on one thread with a frozen model's packings kept (none made on the call)
AMX_MIN_ROWS_FROZEN = ((256, 16), (1 << 30, 32))
#: a quantized model's kept bfloat16 weights (one piece), any precision: rows per thread from which
#: the projection takes the tiles, for every I from AMX_MIN_INPUTS_NARROW
AMX_MIN_ROWS_QUANTIZED = 32
AMX_STEP_MIN_ROWS = 24
AMX_STEP_MIN_HIDDEN = 32
AMX_STEP_MIN_STEPS = 32
AMX_STEP_FEW_ROWS = (14, 16)
AMX_STEP_FEW_ROWS_HIDDEN = (96, 288)
AMX_STEP_FEW_ROWS_BF16 = (8, 16)
AMX_STEP_FEW_ROWS_BF16_MIN_HIDDEN = 256
AMX_STEP_ROWS_BY_ORDER = {2: ((128, 8), (289, 12)), 1: ((64, 16), (128, 8), (256, 4), (512, 1))}
AMX_DIGITS_MIN_HIDDEN = 128
AMX_DIGIT_ROWS = ((128, 12), (256, 10), (384, 8), (1024, 6))
AMX_DIGITS_MIN_INPUTS = 256
#: inputs from which the projection takes W's digits wherever they lie (amx_digit_projection_wanted)
AMX_DIGITS_WIDE_MIN_INPUTS = 1024
AMX_DIGITS_SPREAD = 16.0
#: the one-row recurrence on W_hh's integer digits by AVX512-VNNI (vnni_recurrence_wanted): the fewest
#: steps by hidden size ((least H, fewest steps) pairs; below the first H, never)
VNNI_MIN_STEPS = ((512, 64), (769, 32))
#: the same where the model keeps W_hh's digits (a frozen model's): no packing for the steps to repay
VNNI_MIN_STEPS_KEPT = ((512, 64), (769, 1))
#: a frozen model's one-row step on its weights' VNNI digits (vnni_step_wanted): the least hidden size,
#: and the least inputs for which W_ih's product takes its digits too (else float32)
VNNI_STEP_MIN_HIDDEN = 192
VNNI_STEP_MIN_INPUTS = 192
#: the least hidden size with reset_after=False, whose second product takes r ⊙ h's digits, made
#: within the step
VNNI_STEP_BEFORE_MIN_HIDDEN = 320
#: the least hidden size for which a step split over hidden units takes the digits
VNNI_STEP_COLUMNS_MIN_HIDDEN = 512
#: the one-row columns route on W_hh's VNNI digits (vnni_columns_wanted): the least hidden size, the
#: fewest steps, and the fewest where the model keeps the digits
VNNI_COLUMNS_MIN_HIDDEN = 1024
VNNI_COLUMNS_MIN_HIDDEN_KEPT = 768
VNNI_COLUMNS_MIN_STEPS = 128
VNNI_COLUMNS_MIN_STEPS_KEPT = 1
#: ... with reset_after=False: the fewest steps where each call packs the digits, and the least hidden
#: size where the model keeps them
VNNI_COLUMNS_BEFORE_MIN_STEPS = 256
VNNI_COLUMNS_BEFORE_MIN_HIDDEN_KEPT = 1024
#: the one-row forward with its input projection fused into the steps (fused_recurrence_wanted): the
#: hidden sizes it takes (either reset variant), and the fewest steps by hidden size ((most H, fewest
#: steps) pairs, the first that holds H)
FUSED_MIN_HIDDEN = 64
FUSED_MAX_HIDDEN = 768
FUSED_MIN_STEPS = ((128, 16), (256, 32), (768, 64))
#: the same where W_ih and W_hh come packed once (a frozen model's): no packing for the steps to repay
FUSED_MIN_STEPS_PACKED = ((128, 1), (768, 16))
#: the same for reset_after=False, whose steps' two products each carry a share of the projection:
#: the fewest steps (plain, packed) by hidden size
FUSED_BEFORE_MIN_STEPS = ((64, 4), (128, 24), (256, 128), (512, 48), (768, 64))
FUSED_BEFORE_MIN_STEPS_PACKED = ((64, 4), (768, 32))
#: rows below which one row's fused forward keeps its own projection where a frozen model's packings
#: would take the projection to AMX tiles (:func:`serial_direction_plan`)
FUSED_OVER_TILES_MAX_ROWS = 32
#: "medium" precision on AVX512-BF16 without AMX (dpbf16_projection_wanted): fewest rows of a
#: product, fewest multiply-adds a row (below, packing W costs more than the bfloat16 products save)
DPBF16_MIN_ROWS = 128
DPBF16_MIN_ROW_WORK = 4096
#: and the fewest steps of a recurrence on them (dpbf16_recurrence_wanted); the fewest rows a range
#: of several threads' inference takes (_dpbf16_forward)
DPBF16_MIN_STEPS = 8
DPBF16_RANGE_ROWS = 4
AMX_ROWS_PER_THREAD = 32
AMX_ROWS_MIN_HIDDEN = 128
#: fewest values of W whose AMX packing is spread over the threads (:func:`amx_pieces`)
PARALLEL_PACK_MIN_VALUES = 1 << 17
#: the product M·N·K above which OpenBLAS spreads a GEMM over its threads (its
#: GEMM_MULTITHREAD_THRESHOLD, 4, times SMP_THRESHOLD_MIN, 65536)
BLAS_THREADED_MNK = 4 * 65536
#: the fewest rows (by inputs I: (most I, rows) pairs, the first that holds) from which a weight
#: gradient runs on AMX tiles (:func:`amx_gradient_wanted`)
AMX_GRADIENT_MIN_ROWS = ((512, 256), (1 << 30, 1024))
#: fewest multiply-adds (about) of a call that :func:`side_by_side` spreads over worker threads
#: (below, one thread: a hand-off costs tens of µs)
PANEL_GRADIENT_POOL_MIN = 1 << 24
#: :func:`training_directions_apart`: fewest rows, and fewest multiply-adds of a direction's layer
TRAINING_APART_MIN_ROWS = 16
TRAINING_APART_MIN_WORK = 1 << 23
#: :func:`training_directions_apart`: most hidden units, and fewest rows T·B beyond
#: ``TRAINING_APART_WIDE_H`` units
TRAINING_APART_MAX_HIDDEN = 1024
TRAINING_APART_WIDE_H = 512
TRAINING_APART_WIDE_MIN_ROWS = 32
#: :func:`directions_apart`: fewest multiply-adds of a direction's layer
APART_MIN_WORK = 1 << 24
#: :func:`directions_apart`: most rows
APART_MAX_ROWS = 32
#: :func:`directions_apart`: most hidden units
APART_MAX_HIDDEN = 512
#: :func:`directions_side_by_side`: most rows (T·B)
DIRECTIONS_MAX_ROWS = 1024
#: :func:`directions_side_by_side`: over up to ``DIRECTIONS_FEW_ROWS`` rows (T·B) and
#: ``DIRECTIONS_FEW_ROWS_MAX_HIDDEN`` units, fewest multiply-adds of a float64 direction's layer,
#: T·B·H·(I + H) (float32's whole training steps ran level either way)
DIRECTIONS_FEW_ROWS = 32
DIRECTIONS_FEW_ROWS_MAX_HIDDEN = 200
DIRECTIONS_MIN_WORK = 1 << 22
#: :func:`strips_input_gradient`: most rows
STRIPS_INPUT_GRADIENT_MAX_ROWS = 256
#: :func:`training_panels`: fewest rows
TRAINING_PANELS_MIN_ROWS = 64
#: :func:`training_row_ranges`: largest H whose training recurrences split their rows (the largest
#: measured; the panels hold W_hh up to H = 1182, forward.PANEL_MAX_VALUES)
TRAINING_ROWS_MAX_HIDDEN = 1024


def blas_vectors_wider():
    """True on Intel cores with AVX-512, where OpenBLAS's kernels run 512-bit vectors and LLVM, left to
    its tuning, 256-bit ones. The kernels now ask for 512-bit code
    (:func:`~numgru.kernels._jit.wide_vectors`), but the routes that keep BLAS asleep still paid off
    there only at smaller shares of the work (see :func:`forward_route`): on 2 Intel vCPUs with
    512-bit kernels, rows against BLAS-threaded steps (T = 128, best of 30 calls in turns): B = 64,
    H = 128 / 256 20.5–21.4 against 15.4–18.6 / 48.5 against 43.1 ms; B = 16, H = 1024 196 against
    172 ms; B = 16 / 32 at H = 256 / 128 drew. AMD's Zen 4/5 get 512-bit code from LLVM either way
    (:func:`~numgru.kernels._jit.avx512_zen`)."""
    name, features = target_cpu()
    return "+avx512f" in features.split(",") and not name.startswith("znver")


def _fast_thread_reader():
    """The module holding Numba's thread-count reader behind ``numba.get_num_threads``, or None where
    this Numba lays it out otherwise (then :func:`thread_count` always takes the public function).
    The reader itself, ``_get_num_threads``, only exists once Numba has launched its threads, so
    :func:`thread_count` looks it up then (checking for it here, at import, found none and left the
    fast path unused)."""
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - layout of another Numba
        return None
    return parallel if hasattr(parallel, "_is_initialized") else None


_NUMBA_PARALLEL = _fast_thread_reader()


def thread_count():
    """``numba.get_num_threads()`` (this thread's setting), read without the two lock acquisitions the
    public function makes on every call once Numba's threads are up: 1.2 µs a call here against 0.15,
    and a forward asks twice. Before the threads are launched, or if the private reader says
    anything but a positive count, the public function answers."""
    p = _NUMBA_PARALLEL
    if p is not None and p._is_initialized:
        reader = getattr(p, "_get_num_threads", None)
        if callable(reader):
            n = reader()
            if n > 0:
                return n
    return numba.get_num_threads()


WIDE_BLAS = blas_vectors_wider()
#: whether the serial projection's routes on one thread follow ``PROJ_ONE_THREAD_ZEN`` (AMD Zen 4/5)
ZEN_PROJECTION = avx512_zen()
_PARALLEL_LOCK = threading.Lock()

#: the products a float32 product on AMX tiles keeps at each precision, as the pieces' ``order``
#: (:mod:`~numgru.kernels.amx`): products aᵢ·wⱼ of bfloat16 pieces with i + j < order
MATMUL_ORDERS = {"highest": 3, "high": 2, "medium": 1}
_matmul_precision = "highest"


def set_float32_matmul_precision(precision):
    """Set how float32 matrix products may be computed where they run on AMX tiles, as PyTorch's
    ``torch.set_float32_matmul_precision``; process-wide, read by every later call.

    - ``"highest"`` (the default): to float32 accuracy. Each float32 value is split into three
      bfloat16 pieces and six products of pieces are kept (:mod:`numgru.kernels.amx`).
    - ``"high"``: each value as the sum of two bfloat16 pieces (16 significant bits), three products
      (a₁w₁ + a₁w₂ + a₂w₁): each term of a sum carries a relative error of at most about 3·2⁻¹⁸
      (1.1e-5), and the products take half the tiles' time.
    - ``"medium"``: one bfloat16 piece each (8 significant bits), one product: relative error per
      term up to about 2⁻⁸ (3.9e-3), a sixth of the time.

    It is a permission, not a demand: it changes only the products that run on AMX tiles (CPUs with
    AMX, float32, shapes where the tiles pay: the input projection, the recurrence of inference and
    training, the backward's steps, the weight and input gradients) and, at "medium", on CPUs with
    AVX512-BF16 and no AMX (AMD's Zen 4 and 5, Intel's Cooper Lake), the float32 products that
    AVX512-BF16's ``VDPBF16PS`` takes as one bfloat16 product a term (:mod:`numgru.kernels.dpbf16`:
    the input projection, dx and the weight gradients from ``DPBF16_MIN_ROWS`` rows, and the
    recurrences of inference, of training's forward and of the backward, reset_after with sigmoid
    gates and no clip); everything else, float64 models and CPUs with neither included, stays
    float32. A quantized model's bfloat16 weights are one piece already: "high" and "medium"
    drop its activations' second and third pieces. Outputs and gradients under "high" or "medium" no
    longer agree with PyTorch's float32 to 1e-5."""
    global _matmul_precision
    if not isinstance(precision, str):
        raise TypeError(f"precision: expected a str ('highest', 'high' or 'medium'), got "
                        f"{type(precision).__name__}")
    if precision not in MATMUL_ORDERS:
        raise ValueError(f"precision: expected 'highest', 'high' or 'medium', got {precision!r}")
    _matmul_precision = precision


def get_float32_matmul_precision():
    """The precision :func:`set_float32_matmul_precision` set: "highest", "high" or "medium"."""
    return _matmul_precision


def matmul_order():
    """The pieces' order the AMX kernels take now (3, 2 or 1; :data:`MATMUL_ORDERS`)."""
    return MATMUL_ORDERS[_matmul_precision]


class parallel_slot:
    """``with parallel_slot(wanted) as par``: par is True when the caller may run a parallel kernel now,
    and the slot is held until the block ends. A small class rather than a ``contextlib`` generator:
    every forward enters it twice, and at B = 1 the generator's ~1.5 µs showed in the call's time."""

    __slots__ = ("_wanted", "_held")

    def __init__(self, wanted: bool):
        self._wanted = wanted
        self._held = False

    def __enter__(self):
        self._held = bool(self._wanted and thread_count() > 1
                          and _PARALLEL_LOCK.acquire(blocking=False))
        return self._held

    def __exit__(self, *exc):
        if self._held:
            self._held = False
            _PARALLEL_LOCK.release()


def aligned(a, boundary=64):
    """A C-contiguous copy of ``a`` whose data start on a ``boundary``-byte line (NumPy aligns to 16).

    The kernels read weights with 512-bit vector loads; a row that starts mid-line splits loads over
    two lines. One thread, B = 1, H = 256, per product h @ W_hh.T in the register-blocked kernel:
    14.7 µs with W_hh 16 or 32 bytes off a line against 9.8 µs on one (the packed panels are aligned
    by :func:`~numgru.kernels.panel.pack_panels`)."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + boundary, np.uint8)
    off = -buf.ctypes.data % boundary
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def is_sorted_desc(lengths):
    """True when lengths are non-increasing: the kernels then skip finished rows' GEMM work."""
    return bool(lengths.shape[0] < 2 or np.all(lengths[:-1] >= lengths[1:]))


def forward_route(B, H, reset_after, store, T=None, itemsize=4, kept=False):
    """Which multi-threaded forward runs a layer (T steps, batch B, hidden size H, W_hh stored with
    ``itemsize`` bytes per value: 4 for float32, 2 for bfloat16; ``kept``: the model keeps its weights
    packed, a frozen copy's): "rows", "columns" or None (T None: unknown; T = 0, like B = 0, gives
    None).

    With one Numba thread, and for training (``store``), the answer is None. Otherwise, for
    ``threads`` Numba threads:

    "rows"
        :func:`~numgru.kernels.forward._gru_forward_rows`: the batch split into one chunk of rows per
        thread, each running the whole sequence alone. Taken when each thread gets ``ROWS_MIN`` rows
        or more and either W_hh holds at most ``ROWS_MAX_WEIGHTS`` values (it then stays in each
        core's L2) and a thread's state (rows × H) at most ``ROWS_MAX_STATE`` values, or W_hh is
        larger but a thread has at most ``ROWS_MAX_STREAM_ROWS`` rows and all threads together stream
        at most ``ROWS_MAX_STREAMED`` weights from L3 per step (every thread reads all of W_hh each
        step; the last bound is a guard for many threads, not a measurement). Either reset variant.
        Where BLAS's vectors are wider than Numba's (:data:`WIDE_BLAS`, Intel AVX-512), a thread's
        state is capped at ``ROWS_MAX_STATE_WIDE_BLAS`` and W_hh must fit L2, or hold at most
        ``ROWS_MAX_WEIGHTS_WIDE_BLAS`` float values when B·H is past the columns' window.
    "columns"
        :func:`~numgru.kernels.forward._gru_forward_cols`: each step split over blocks of hidden units.
        reset_after=True, H ≥ 128 and lo ≤ B·H ≤ hi for ``COLS_STATE`` = (lo, hi), or B ≥ 2 with H ≥ 256
        and B·H ≤ hi, or B = 1 when W_hh takes more than lo bytes but at most hi bytes per thread for
        ``COLS_B1_BYTES`` = (lo, hi): each thread's slice then stays in its core's L2; beyond hi too for
        float32 W_hh from ``COLS_B1_BEYOND_L2_MIN_STEPS`` steps where BLAS's vectors are no wider than
        Numba's (not :data:`WIDE_BLAS`). There, calls of fewer than ``COLS_B1_MIN_WORK`` multiply-adds
        of W_hh (T·3H², W_hh within the L2s) or ``COLS_B1_BEYOND_L2_MIN_WORK`` (beyond) take the serial
        kernels: the region's hand-offs and each thread's packing of its slice cost more than the
        second core saves over so few steps (2-vCPU AMD EPYC, two threads, one process taking turns
        with the rule before, medians of seven rounds, µs, plain unless said): H = 288, T = 1 / 2 / 4
        20.1 / 37.3 / 68.1 against 29.2 / 58.6 / 85.2; H = 320, T = 1 / 2 / 3 24.0 / 43.3 / 63.0 against
        33.0 / 60.0 / 71.3 (T = 4 / 5 / 6 on the serial kernels would have read 0.97× / 0.87× /
        0.82×); H = 384, T = 1 / 2 32.2 / 56.2 against 41.9 / 71.6 (T = 3 / 4 0.97× / 0.86× serial);
        H = 448, T = 2 / 3 57.7 / 79.5 against 133.5 / 115.3; H = 512, T = 2 72.3–75.4 against
        88.8–102.1; frozen H = 384, T = 2 58.4 against 83.2, H = 448, T = 3 80.1 against 103.3; two
        layers of H = 384, T = 2 108.2 against 152.4, bidirectional 108.3 against 133.0. Not measured
        where BLAS is wider (Intel) nor for bfloat16 W_hh, which keep the split within the L2s at
        any T.
        On the 2-vCPU AMD EPYC (Zen 4, two threads, T = 128 / 32,
        frozen, one route per process, three rounds alternating, ms) against BLAS-threaded steps:
        H = 512 3.56–4.26 / 0.85–0.90 against 3.84–4.52 / 1.00–1.26; H = 768 8.03–8.44 / 2.06–2.16
        against 8.48–9.92 / 2.53–2.59; H = 896 11.2–11.9 / 3.02–3.05 against 12.5–13.3 / 3.44–3.97
        (W_hh's digits, where :func:`vnni_columns_wanted`, 3.38–4.19 / 0.85–0.87, 7.59–7.96 / 1.87–2.05,
        10.2–10.3 / 2.51–2.64); one step lost (H = 512 0.075–0.082 against 0.057–0.062), two drew
        (0.095–0.103 against 0.098–0.101). Measured on 2 threads (T = 128, reset_after): float32 H = 384
        (1.7 MB) 3.64 against 5.07 ms for BLAS-threaded steps; bfloat16 H = 384 / 512 2.90 / 4.50
        against 3.79 / 5.11 ms on one thread's bfloat16 steps; at 3 MB and more per thread (float32
        H = 512, bfloat16 H = 768) it drew (within 3 %). Since its workers meet between steps inside one
        parallel region (a region per step had cost more than a small step's product) and a block's
        gates vectorise, on the 2-vCPU Intel machine (2 threads, T = 128, same process, alternating)
        against the region per step: B = 2 / 4, H = 256 1.33× / 1.48×; B = 4, H = 512 1.34×; B = 16,
        H = 512 1.05×; H = 1024 1.02×; and against the serial kernel at B = 1: H = 256 1.05–1.13× (lo
        went from 768 to 512 KB), H = 192 0.89×, H = 128 0.74×. Each block's rows of W_hh are packed
        into panels (from 2 rows and 128 rows × steps; see ``forward._gru_forward_cols``), which raised
        hi from 4096 to 16384: on the 2-vCPU Intel machine (float32, T = 128, same process,
        alternating), columns against the routes taken before: B = 8 / 16, H = 1024 1.43× / 1.13–1.16×;
        B = 16 / 32, H = 512 1.40× / 1.34×; B = 64, H = 256 1.27×; B = 128, H = 128 1.24×; but B = 64,
        H = 512 1.06× and 0.78–0.83× at B·H = 32768 and beyond (B = 32 / 64, H = 1024; B = 128,
        H = 256). bfloat16 weights on their own panels, against the serial kernel the narrower window
        (4096, for the tiled matmul they had) left them: B = 8 / 16, H = 1024 1.69× / 1.43×; B = 16,
        H = 512 1.37×. Where BLAS's vectors are no wider than Numba's, float32 rows too few for the
        rows route below the window (B·H under lo, or W_hh of one row within lo bytes) take columns
        from ``COLS_FEW_ROWS_MIN_HIDDEN`` units and ``COLS_FEW_ROWS_MIN_STEPS`` steps
        (``COLS_FEW_ROWS_MIN_STEPS_KEPT`` for a frozen copy, whose serial kernels read its kept
        panels), on up to ``COLS_FEW_ROWS_MAX_THREADS`` threads (not measured on more): there the
        serial kernels keep one thread's products (:func:`inference_tiled_max`) and the second core
        idles. On the 2-vCPU AMD EPYC (Zen 4, two threads, one process taking turns, medians of five
        rounds, default/columns): plain T = 32, B = 1–5, H = 160 / 192 / 224 (B ≥ 2) 1.08–1.38× /
        1.16–1.30× / 1.12–1.35×; T = 128, H = 160 / 192 1.04–1.43× / 1.20–1.42×; T = 16 0.87–1.66×
        (B = 2 lost); H = 128 0.73–1.14×, H = 96 0.66–1.03× (hence the bound); frozen T = 128,
        H = 160 / 192 / 224 1.23–1.49× / 1.25–1.46× / 1.32–1.40×; T = 64 0.98–1.38×; T = 32
        0.89–1.32×, T = 16 0.62–1.30×. A plain model's A/B against cc72881 (alternating processes,
        three runs, ms): T = 32, B = 1, H = 160 0.120–0.123 against 0.152–0.164; B = 4, H = 224
        0.490–0.498 against 0.673–0.681; T = 128, B = 5, H = 192 1.66–1.69 against 2.47–2.53; frozen
        T = 128, B = 4, H = 192 1.25–1.30 against 1.93–2.58.

        reset_after=False (float weights, where BLAS's vectors are no wider) takes
        :func:`~numgru.kernels.forward._gru_forward_cols_before`, whose steps run in two halves (r ⊙ h
        over every unit before W_hn's product): rows too few for the rows route from
        ``COLS_BEFORE_MIN_HIDDEN`` units, B·H within hi or one row at any size, from
        ``COLS_B1_BEYOND_L2_MIN_STEPS`` steps (one row also from reset_after's bounds of work,
        ``COLS_B1_MIN_WORK`` within the L2s and ``COLS_B1_BEYOND_L2_MIN_WORK`` beyond: two threads,
        one process taking turns with the split, µs, T = 2, H = 320 / 384 / 512 43.5 / 56.5 / 80.0
        against 65.0 / 73.5 / 183.5; T = 3, H = 320 63.6 against 73.2, H = 448 level); and uneven row
        chunks as reset_after's. It had no
        columns route, and its serial kernels left the second core idle, or for one row beyond L2
        ran BLAS's threaded GEMV after Numba's threads had projected, each such call waiting about
        8 ms for the scheduler. Two threads, against cc72881, alternating processes, three runs, ms:
        T = 32, B = 1, H = 256 / 512 0.249–0.259 / 0.918–0.984 against 0.348–0.416 / 8.00–8.03;
        T = 128, B = 1, H = 256 / 1024 0.898–0.929 / 15.5–18.5 against 1.54–1.93 / 30.3–32.5; T = 8,
        B = 1, H = 512 0.254–0.272 against 0.351–0.402; T = 32, B = 2, H = 256 0.425–0.454 against
        0.526–0.849; B = 4, H = 512 2.35–2.45 against 3.55–5.16; B = 12, H = 512 6.79–6.96 against
        7.93–10.5 (rows); frozen T = 32, B = 4, H = 1024 10.0–10.4 against 13.5–13.9. Below 256 units
        it lost at T = 32 (H = 64–128, B = 1–4: 0.56–0.87×) and was mixed at H = 192 (0.89–1.25×).
    None
        The serial kernel (BLAS threading the steps' GEMMs where they take BLAS). Also for calls of
        T·B·H² under ``NAMED_ROUTE_MIN_WORK`` (``NAMED_ROUTE_MIN_WORK_FEW_ROWS`` for 2 rows or more but
        fewer than the rows route takes, ``ROWS_MIN`` a thread) whose serial kernels keep off BLAS's threads
        (:func:`keeps_off_blas`): a named route's two parallel regions (the projection's and the
        steps') cost about 20 µs a call more on the 2-vCPU AMD EPYC (two threads, one process taking
        turns, µs, named against serial: T·B·H² = 2¹⁸: T = 16, B = 16, H = 32 62.8 / 60.1; T = 4,
        B = 16, H = 64 60.0 / 47.7; T = 1, B = 16, H = 128 75.5 / 55.8; T = 1, B = 4, H = 256 85.6 /
        64.0; T = 2, B = 2, H = 256 60.3 / 47.3; reset_before 0.70–0.80×; at 2¹⁹ 0.72–1.17×, at 2²⁰
        0.95–1.30×: T = 16, B = 16, H = 64 122.8 / 147.1; T = 4, B = 1, H = 512 145.7 / 159.6), and
        more on the 2-vCPU Intel machine, where the rule first did not apply (two threads, alternating
        processes, µs, serial against named: T = 2, B = 16, H = 32, two layers 50 against 168–173;
        T = 2, B = 7, I = 16, H = 32, three bidirectional layers, padded 137–139 against 463–478, torch
        377–384; T = 4, B = 16, H = 64 68–69 against 126–131; T = 2, B = 3, H = 256 101–107 against
        135–139; T = 7, B = 16, H = 64, padded 108–109 against 236–238; near the bound level: T = 120,
        B = 4, H = 32 145–147 against 139–141; T = 15, B = 2, H = 128, bidirectional 224–232 against
        218–229). Over few rows the columns route still lost at twice the bound (2-vCPU AMD EPYC, two
        threads, one process taking turns with 2¹⁹ for every batch, medians of seven rounds, µs, serial
        against columns): T = 4 / 6, B = 2, H = 256 71.7–72.0 / 107.7 against 89.0–90.2 / 134.1; T = 2 /
        3, B = 4, H = 256 60.6–63.6 / 92.7 against 78.9–93.8 / 116.6; T = 2, B = 6, H = 256 85.9 against
        100.3; T = 2, B = 2, H = 384 71.6 against 97.1; T = 3, B = 3, H = 320 108.4 against 127.8; T = 1,
        B = 4, H = 384 49.2 against 58.5; frozen T = 2, B = 4 / T = 4, B = 2, H = 256 59.2 / 75.8
        against 103.1 / 135.2; T = 7, B = 2, H = 256 level; where the rows route applies 2²⁰ lost
        (T = 15, B = 16, H = 64 0.91×; T = 12, B = 64, H = 32 0.90×), as at one row (T = 12, H = 256
        0.79×), which keep 2¹⁹. reset_after=False over few rows gained alike: T = 4, B = 2, H = 256 74.3
        against 94.5; T = 2, B = 4 63.3 against 82.8; T = 2, B = 2, H = 384 70.8 against 99.6; T = 3,
        B = 3, H = 320 109.1 against 132.8.
        Calls of more rows keep their named route, which keeps them off BLAS's threads (T = 1,
        B = 64, H = 64: 63.2 against 56.1 serial). (A "pipeline"
        route, the projection of the next chunk of time steps on one thread beside the recurrence
        on another, once won at B·H ≤ 256
        (B = 1, H = 256 1.22–1.28× on 2 AMD vCPUs); with the steps and the projection on packed panels
        the serial kernel beat it on the 2-vCPU Intel machine: T = 128, B = 1, H = 256 1.39×; T = 512,
        B = 1 / 2, H = 256 / 128 1.08× / 1.32×, B = 4, H = 64 1.04×, B = 1, H = 128 0.92×. It went.)

    Rows and columns also run the input projection on Numba's threads
    (:func:`~numgru.kernels.forward.input_projection_parallel`), so no BLAS pool is awake during the
    call. Training keeps BLAS: its weight-gradient GEMMs
    wake OpenBLAS's workers, and the next parallel region then waited for a core they spun on
    (T = 32, B = 16, H = 64, 2 threads: forward 4.0 ms on the rows route against 0.46 serial).

    Measured on 2 vCPUs (AMD, float32, T = 128, A/B runs taking turns with a 0.3 s pause before
    each, so that no BLAS pool still spins from the other route), rows against BLAS-threaded steps or
    the serial kernel: B = 64–256 with H = 64–128 1.2–1.45×; B = 32 / 64 at H = 256 1.25× / 1.10×
    (0.95× at T = 512); B = 8–16 at H = 512 1.27–1.38×, B = 16 at H = 1024 1.15×; but 0.89× at
    B = 32, H = 512 and at B = 64, H = 1024 (16–32 rows per thread, each pass over W_hh from L3).
    Columns beat BLAS-threaded steps by 1.1–3× (B = 4–16, H = 256; B = 4, H = 1024) with 2–16
    threads (2-vCPU AMD and 16-core Intel machines); below its window a step holds too little work
    for a parallel region, above it BLAS's GEMM beats the register-blocked one. Rows, where both
    apply, beat columns (B = 8, H = 512: 24.5 against 27.7 ms; B = 128, H = 128: 27 against 43).
    Below lo, columns won at B = 2–3 with H = 256–512 (1.13–1.5×) but lost at H = 128 (B = 2 / 4:
    0.93× / 0.80×) and drew at B = 1 (H = 256–1024: 0.96–1.06×).

    On a 16-core Intel Xeon (Emerald Rapids, AVX-512; same method, 5 rounds), rows against
    BLAS-threaded steps at T = 128: B = 64, H = 256 0.76× / 0.98× / 1.43× / 2.40× on 2 / 4 / 8 / 16
    threads (32 / 16 / 8 / 4 rows per thread); B = 16, H = 256 1.02× / 1.99× on 2 / 4 threads;
    B = 16, H = 1024 0.77× / 0.86× on 2 / 4 threads. Hence the tighter bounds under ``WIDE_BLAS``:
    W_hh in L2, and a thread's state capped. Since each thread's steps run on packed panels
    (:mod:`~numgru.kernels.panel`) the cap is far higher: on the 2-vCPU Intel machine (2 threads,
    T = 128, same process, alternating), rows against the route the old cap of 4096 left: B = 64,
    H = 256 1.09× (columns); B = 128 / 256, H = 256 1.39× / 1.36×; B = 256 / 512, H = 128 1.55× /
    1.73×; B = 256 / 512 / 1024, H = 64 1.68× / 1.68× / 1.75×; B = 512, H = 256 (65536 values per
    thread) 1.48× (BLAS-threaded steps); B = 128, H = 128 0.97× (columns). W_hh beyond one L2 but
    at most ``ROWS_MAX_WEIGHTS_WIDE_BLAS`` values (H ≤ 512, float weights) also takes rows past the
    columns' window: B = 64 / 128, H = 512 1.29× / 1.26×; B = 128, H = 384 1.38× (BLAS-threaded
    steps); not within it (B = 32, H = 512 0.92× against columns) nor for larger W_hh (B = 64, H = 768
    / 1024 0.94× / 0.91×; B = 16, H = 1024 0.90× against columns; B = 32, H = 1024 1.12×); nor where
    all threads together would stream more than ``ROWS_MAX_STREAMED`` weights a step: on a 16-core
    Intel Xeon (Emerald Rapids, AMX; 16 threads, T = 128, min of two rounds of three) B = 64,
    H = 512 ran 69.6 ms on rows against 42.7 on BLAS-threaded steps (columns 41.7), where B = 256,
    H = 256 (3.1 M weights streamed) kept rows ahead, 19.1 against 23.0 (columns 22.6).

    Where BLAS is no wider than Numba, float rows whose chunks (multiples of 4 rows, :func:`row_chunks`)
    would leave the largest more than ``ROWS_UNEVEN`` times its even share take columns within their
    window from H = 256, with either reset variant (reset_before, T = 32, B = 12, H = 256 / 512 /
    1024, columns against rows, one process taking turns: 1.09× / 1.18× / 1.17×; B = 8 and 16
    0.90–1.04×) (2-vCPU AMD EPYC, two threads, T = 16, one route per process, two rounds, ms,
    columns against rows): B = 10 (chunks of 8 and 2), H = 256 / 512 0.91–0.97 / 3.4–4.4 against
    1.15–1.20 / 4.6–4.8; B = 12, H = 256 / 384 / 512 / 768 / 1024 0.99 / 2.08–2.09 / 3.59–3.60 /
    8.3–8.5 / 15.0–15.3 against 1.12–1.14 / 2.46–2.56 / 4.49–4.59 / 9.98–10.3 / 17.6; B = 20, H = 256
    / 512 / 1024 1.39 / 5.2–6.4 / 24.3–26.1 against 1.51–1.57 / 6.3–6.6 / 26.6–28.6; even chunks
    level (B = 8, H = 512 2.15–2.21 against 2.10–2.21; B = 28, H = 256, T = 64 7.4–8.0 against
    7.9–8.0), and at H = 128 level (B = 12 / 20).

    Elsewhere (AMD, Intel without AVX-512) float weights with B ≥ ``PARALLEL_MIN_ROWS``, or past the
    columns' window (B·H beyond hi), or reset_before (which has no columns route), take rows (H ≤ 512
    within ``ROWS_MAX_STREAMED``, or reset_before) or columns. Past the window below 64 rows they had
    run BLAS-threaded steps (2-vCPU AMD EPYC, two threads, one route per process, two rounds, ms,
    rows / columns against them): T = 16, B = 48, H = 512 12.4–13.3 / 13.0–13.6 against 18.4–19.4;
    T = 64, B = 40, H = 1024 172–173 / 166–177 against 253–254; T = 64, B = 48, H = 768
    109–116 / 105–109 against 164–166; T = 16, B = 24, H = 1024 26.2–26.5 / 26.3–28.7 against 41.1–41.6;
    T = 1 / 4, B = 48, H = 1024 4.0–4.1 / 15.8–15.9 (rows) against 4.5–4.9 / 20.8–21.0; reset_before
    T = 16, B = 40, H = 1024 43.8–46.5 against 64.5–65.7 (rows); B = 8, H = 2048 61–64 against 63–69
    (within the window, B = 20, H = 512, columns stay ahead of rows: 5.31–5.36 against 6.26–6.61);
    reset_before within the window, rows against BLAS-threaded steps (T = 16 unless said): B = 24,
    H = 384 / 512 3.65–3.76 / 6.81–7.19 against 5.27–5.45 / 9.54–9.59; T = 64, B = 32, H = 512 33.5–34.2
    against 50.0–51.4; B = 20, H = 768 15.4–15.5 against 17.4–17.7; B = 17, H = 1024 (chunks of 12 and
    5) level. On the 2-vCPU AMD EPYC (Zen 4; 2 threads, T = 128, min of two rounds of three, ms) they
    first met BLAS-threaded steps with the gates in ``prange`` (the serial kernel's parallel twin, gone
    since; see :mod:`numgru.kernels._jit` on the cache), Numba's OpenMP workers and OpenBLAS's spinning
    against each other: B = 64, H = 512 / 768 / 1024 287–304 / 1188 / 1360–1588 against
    140 / 294 / 658–744; B = 256, H = 256 285 against 143; reset_before B = 64, H = 1024 2376 against
    624 (rows). Against the serial kernel as it runs now: B = 64, H = 1024 629 against 596 (rows) / 600
    (columns); H = 768 338 against 365 / 329; H = 512 198 against 196 / 195; B = 128, H = 1024 1307
    against 1244 / 1229; B = 256, H = 256 212 against 218 / 214: level to 1.06×, the threads kept on
    Numba's side.
    """
    threads = thread_count()
    if threads < 2 or store or B == 0 or T == 0:  # nothing to split (an empty batch or sequence)
        return None
    few_rows = 1 < B < threads * ROWS_MIN  # the rows route's chunks too small: columns or nothing
    if (T is not None and T * B * H * H < (NAMED_ROUTE_MIN_WORK_FEW_ROWS if few_rows else NAMED_ROUTE_MIN_WORK)
            and keeps_off_blas(B, H, threads, False)):
        return None  # too little work to repay two parallel regions
    per_thread = -(-B // threads)
    weights = 3 * H * H
    lo, hi = COLS_STATE
    if (per_thread >= ROWS_MIN and H >= 256 and B * H <= hi and not WIDE_BLAS
            and itemsize >= 4 and row_chunks.py_func(B, threads)[0] * threads > ROWS_UNEVEN * B):
        return "columns"  # the rows route's chunks (multiples of 4 rows) would be uneven
    if per_thread >= ROWS_MIN:
        max_state = ROWS_MAX_STATE_WIDE_BLAS if WIDE_BLAS else ROWS_MAX_STATE
        streamed = threads * weights <= ROWS_MAX_STREAMED  # every thread reads all of W_hh a step
        if weights <= ROWS_MAX_WEIGHTS and per_thread * H <= max_state:
            return "rows"
        if (not WIDE_BLAS and weights > ROWS_MAX_WEIGHTS and per_thread <= ROWS_MAX_STREAM_ROWS
                and streamed):
            return "rows"
        if (WIDE_BLAS and itemsize >= 4 and weights <= ROWS_MAX_WEIGHTS_WIDE_BLAS
                and per_thread * H <= max_state and B * H > COLS_STATE[1] and streamed):
            return "rows"
        if not WIDE_BLAS and itemsize >= 4 and (B >= PARALLEL_MIN_ROWS or B * H > hi or not reset_after):
            # Numba's threads for the whole call rather than OpenBLAS's for each step's product
            if not reset_after or (weights <= ROWS_MAX_WEIGHTS_WIDE_BLAS and streamed):
                return "rows"
            return "columns"
    if reset_after and H >= 128 and (lo <= B * H or B >= 2 and H >= 256) and B * H <= hi:
        return "columns"
    if (not reset_after and not WIDE_BLAS and itemsize >= 4 and H >= COLS_BEFORE_MIN_HIDDEN
            and (B * H <= hi or B == 1) and (T is None or T >= COLS_B1_BEYOND_L2_MIN_STEPS and (
                B > 1 or _one_row_split_pays(T, weights, itemsize, threads)))):
        return "columns"  # too few rows for the rows route: each step's two halves split over units
    if (not WIDE_BLAS and itemsize == 4 and reset_after and H >= COLS_FEW_ROWS_MIN_HIDDEN and B * H <= hi
            and threads <= COLS_FEW_ROWS_MAX_THREADS and T is not None
            and T >= (COLS_FEW_ROWS_MIN_STEPS_KEPT if kept else COLS_FEW_ROWS_MIN_STEPS)):
        return "columns"  # rows too few for the rows route: the second core's share of each step
    b1_lo, b1_hi = COLS_B1_BYTES
    if reset_after and B == 1 and b1_lo < weights * itemsize:
        if weights * itemsize <= threads * b1_hi and (
                WIDE_BLAS or itemsize < 4 or _one_row_split_pays(T, weights, itemsize, threads)):
            return "columns"
        if not WIDE_BLAS and itemsize >= 4 and weights * itemsize > threads * b1_hi and (
                T is None or T >= COLS_B1_BEYOND_L2_MIN_STEPS and _one_row_split_pays(T, weights, itemsize, threads)):
            return "columns"  # float32 beyond the L2s, where BLAS's GEMV is no wider than Numba's
    return None


def _one_row_split_pays(T, weights, itemsize, threads):
    """Whether T steps of one row repay splitting each step over units (:func:`forward_route`): from
    ``COLS_B1_MIN_WORK`` multiply-adds of W_hh (T·weights, weights = 3H² of ``itemsize`` bytes) where
    W_hh fits the threads' L2s (``COLS_B1_BYTES``' hi a thread), from ``COLS_B1_BEYOND_L2_MIN_WORK``
    beyond; T None (unknown): yes."""
    if T is None:
        return True
    in_l2 = weights * itemsize <= threads * COLS_B1_BYTES[1]
    return T * weights >= (COLS_B1_MIN_WORK if in_l2 else COLS_B1_BEYOND_L2_MIN_WORK)


def rows_order(lengths, threads):
    """Order of the batch rows for the rows route with ``threads`` threads: rows dealt longest first,
    in turn, to the chunks of :func:`~numgru.kernels.forward.row_chunks`, so every chunk gets rows of
    every length (about equal work per thread) and is non-increasing within (it still skips its
    finished rows). Sorting the whole batch instead gives the first chunk all the longest rows.

    lengths (B,) int64 → a permutation (B,) of row indices, or None when all lengths are equal.
    """
    B = lengths.shape[0]
    if B < 2 or lengths.min() == lengths.max():
        return None
    cs, nc = row_chunks.py_func(B, threads)
    ranked = np.argsort(-lengths, kind="stable")
    last = B - (nc - 1) * cs                       # rows of the last chunk (≤ cs)
    full = last * nc                               # ranks dealt to every chunk in turn
    rank = np.arange(B)
    chunk = np.where(rank < full, rank % nc, (rank - full) % max(nc - 1, 1))
    slot = np.where(rank < full, rank // nc, last + (rank - full) // max(nc - 1, 1))
    order = np.empty(B, np.int64)
    order[chunk * cs + slot] = ranked
    return order


#: values (of the result) from which :func:`take_batch_rows` runs on Numba's threads
TAKE_BATCH_PARALLEL_MIN = 1 << 17


def take_batch_rows(a, idx, out=None):
    """``np.take(a, idx, axis=1, out=out)`` for a (T, B, K) and idx (B',) a permutation's or its
    inverse's indices (the caller's, trusted in range): a batch's rows put in another order, into
    ``out`` (T, B', K) or a new array. By :func:`~numgru.kernels.forward.take_batch` where a and out
    are writeable C-contiguous float32 or float64 and idx int64 (on Numba's threads from
    ``TAKE_BATCH_PARALLEL_MIN`` values, the parallel slot free), else by numpy. On the 2-vCPU Intel
    machine, ms, numpy's take / the kernel on one thread / on two: (10, 128, 384) float64 0.92 / 0.34
    / 0.17; (100, 32, 512) float32 1.47 / 0.64 / 0.26; (32, 64, 256) float32 0.49 / 0.25 / 0.07."""
    if out is None:
        out = np.empty((a.shape[0], idx.shape[0], a.shape[2]), a.dtype)
    if not (a.ndim == 3 and a.dtype in (np.float32, np.float64) and out.dtype == a.dtype
            and a.flags.c_contiguous and a.flags.writeable and out.flags.c_contiguous
            and out.flags.writeable and idx.dtype == np.int64 and idx.ndim == 1):
        return np.take(a, idx, axis=1, out=out)
    threads = thread_count()
    with parallel_slot(threads > 1 and out.size >= TAKE_BATCH_PARALLEL_MIN) as par:
        if par:
            take_batch_on_threads(a, idx, out, threads)
            return out
    take_batch(a, idx, out)
    return out


def batch_order(lengths, route):
    """The order the kernels want the batch rows in for ``route`` (from :func:`forward_route`):
    :func:`rows_order` for "rows", else longest first (stable), so each step's matmul runs on the
    active prefix only. lengths (B,) int64 → a permutation (B,), or None to keep the rows as they are."""
    if route == "rows":
        return rows_order(lengths, thread_count())
    if is_sorted_desc(lengths):
        return None
    return np.argsort(-lengths, kind="stable")


def mostly_valid(lengths, T):
    """Whether fewer than 1 − ``PACK_BELOW`` of the T·B steps of rows of ``lengths`` (B,) are padding:
    too few to repay gathering the valid ones."""
    return int(lengths.sum()) >= PACK_BELOW * T * lengths.shape[0]


def valid_steps(lengths, T):
    """The (t, b) steps with t < lengths[b], as a (T·B,) bool mask in the kernels' (T, B) layout, for
    :func:`input_projection` to skip the padded ones; None where :func:`mostly_valid`."""
    if mostly_valid(lengths, T):
        return None
    return (np.arange(T)[:, None] < lengths[None, :]).reshape(-1)


def gather_pays(N, n, M, K, gradients=False):
    """Whether products over n of N rows (each M by K multiply-adds) repay gathering the n: where
    they skip ``PACK_MIN_SAVED`` multiply-adds or more (see :func:`input_projection`); for a layer's
    weight and input gradients (``gradients``: five operands gathered, the input gradient put back)
    ``GRADIENT_GATHER_MIN_SAVED``. The backward of one padded layer, 2-vCPU AMD EPYC, float32, about
    half the steps padding, one process taking turns, µs, gathered against not (multiply-adds
    skipped): T = 16, B = 8, I = 16, H = 64 165 / 153 (1.1 M); B = 16 244 / 230 (2.3 M); I = 32,
    H = 96 435 / 457 (6.5 M); T = 32, B = 16, I = 16, H = 96 618 / 613 (10.6 M); I = 32, H = 128
    1056 / 1242 (16.7 M); T = 32, B = 64, I = H = 256 16.4 / 22.9 ms (591 M)."""
    return (N - n) * M * K >= (GRADIENT_GATHER_MIN_SAVED if gradients else PACK_MIN_SAVED)


def projected_rows(N, valid, M, K):
    """(rows, gathered): the rows :func:`input_projection` multiplies for N rows of K inputs into M
    outputs with ``valid`` (the padded steps' mask, or None), and whether it gathers them (then
    the valid ones alone, where :func:`gather_pays`)."""
    if valid is None:
        return N, False
    n = int(np.count_nonzero(valid))
    return (n, True) if gather_pays(N, n, M, K) else (N, False)


def padded_gathers(lengths, T, M, widths):
    """Whether :func:`input_projection` would gather a padded batch's valid steps (lengths (B,) of
    T steps; :func:`valid_steps` and :func:`gather_pays`) for a projection of M outputs from any of
    the input ``widths``."""
    N, n = T * lengths.shape[0], int(lengths.sum())
    return not mostly_valid(lengths, T) and any(gather_pays(N, n, M, K) for K in widths)


def gathered(valid, n, a, name):
    """The n rows of a (N, K) where ``valid`` (N,) bool holds, in order, C-contiguous in this
    thread's :func:`workspace` ``name``."""
    return np.compress(valid, a, axis=0, out=workspace(name, (n, a.shape[1]), a.dtype))


def scattered(valid, rows, out):
    """out's rows where ``valid`` (N,) bool holds = ``rows`` (:func:`gathered`'s, in order), the
    others zero: the products over the valid rows put back."""
    out[valid] = rows
    out[~valid] = 0
    return out


def serial_tiled_max(threads):
    """``tiled_max`` for the serial kernels (:func:`~numgru.kernels.forward.recurrent_matmul`): with one
    thread up to 16 rows take the tiled Numba matmul; with several BLAS may thread the step, so
    from 5 rows on it gets the GEMM."""
    return TILED_MAX_ONE_THREAD if threads == 1 else 4


def inference_tiled_max(threads, B):
    """``tiled_max`` for inference's serial kernels and steps of B rows on ``threads`` threads: where
    BLAS's vectors are no wider than Numba's (not :data:`WIDE_BLAS`) and B > 1 the one-thread value
    whatever the count, so that calls of up to 16 rows keep off OpenBLAS's threads, whose spinning
    after a call stalled the next call's Numba parallel region (and Numba's workers the next BLAS
    call); else :func:`serial_tiled_max` (one row beyond L2 keeps BLAS's GEMV on several threads,
    :func:`~numgru.kernels.forward.one_row_dot`). Two threads, T = 32, calls of 1–8 (H = 192) or
    1–16 rows (H = 64) in random order, as a batching server makes them, ms a call (median in the
    mix / alone): the 5- and 6-row calls, whose steps had taken BLAS's GEMM, 2.33 / 0.61 at
    H = 192, 3.55 / 0.10 and 2.49 / 0.12 at H = 64."""
    return serial_tiled_max(threads) if WIDE_BLAS or B == 1 else TILED_MAX_ONE_THREAD


def training_tiled_max():
    """``tiled_max`` for training's serial kernels (the tape-writing forward and the backward): on a CPU
    with AMX the one-thread value whatever the thread count, so that no step's product goes to
    OpenBLAS's threads there. The projections, weight gradients and tiled recurrences run on Numba's
    threads on such a CPU, and OpenBLAS's idle workers, spinning for a while after each call, held
    the cores those parallel regions waited for: T = 128, B = 8, H = 256 (the steps off the tiles,
    the backward's W_hhᵀ of 768 columns taken by a threaded GEMM from 5 rows) read 37.3 ms a
    training step on two threads against 15.7 on one. Likewise where the weight gradients and
    projections run on panels side by side (:func:`panels_gradient_wanted`, :func:`side_by_side`):
    two threads, T = 128, B = 16, H = 256 (the backward's W_hhᵀ of 768 columns by 16 rows in a
    threaded GEMM), the weight gradients took 16–19 ms each side by side against 8 alone."""
    return serial_tiled_max(1 if amx_ready() or panels_gradient_wanted(np.float32) else thread_count())


def step_columns(B, H, reset_after, threads, itemsize=4, kept=False):
    """Whether one step of B rows (GRUCell, streams) runs split over blocks of hidden units on Numba's
    threads (:func:`~numgru.kernels.step.gru_step_cols`) instead of the serial step kernel, for weights
    stored with ``itemsize`` bytes per value (2: bfloat16; ``kept``: a frozen copy's, whose serial step
    reads its kept panels). With two threads or more, reset_after=True,
    H ≥ ``STEP_COLS_MIN_H`` and B ≤ ``STEP_COLS_MAX_ROWS``; at B = 1 with float weights, where BLAS's
    vectors are wider than Numba's (:data:`WIDE_BLAS`), also only for at most ``STEP_COLS_B1_BYTES``
    of weights per thread (6·H²·itemsize bytes in all, taking I = H): beyond, BLAS's threaded GEMV
    streamed them as fast. Where BLAS is no wider, float steps of more than ``STEP_COLS_MAX_ROWS``
    rows split too from ``STEP_COLS_MIN_H_MANY_ROWS`` units, where BLAS's threaded GEMM had taken them
    (plain ``stream.step``, two threads, two runs, µs, split against the GEMM, alone | after a
    rows-route forward): H = 256, B = 24 / 64 / 128 / 256 131–135 / 284–339 / 529–734 / 1053–1339 |
    134–135 / 301–337 / 535–643 / 1062–1112 against 186 / 371–469 / 715–718 / 1443–1456 | 190–192 /
    3683–3768 / 921–4128 / 4862–4926; H = 512 / 1024, B = 32 571–577 / 2535–2640 | 607–662 /
    2639–2715 against 994–1059 / 3278–3469 | 1052–1118 / 4847–5999; H = 64, B = 64 / 256 36–40 /
    127–138 | 37–41 / 127–141 against 50–82 / 202–409 | 2003–3910 / 4114–4183; H = 128, B = 32 / 64
    46–55 / 82–85 | 50–60 / 86–103 against 69 / 124–126 | 73–75 / 2660–3958.
    Elsewhere one row splits at any H, which keeps it off BLAS's threads:
    the plain model's ``stream.step`` on two threads (Zen 4, alternating processes, three runs, µs,
    split against 202c067's GEMV): alone H = 512 / 768 / 1024 47–57 / 102–115 / 184–356 against
    44–58 / 94–126 / 214–454; taking turns with a forward on the rows route (T = 16, B = 8)
    76–117 / 291–317 / 623–677 against 867–1674 / 672–2602 / 933–2074, the forwards 2.2–2.8 /
    5.3–6.3 / 10.2–11.4 ms against 6.3–12.5 / 13.9–15.5 / 22.9–28.0.

    Below ``STEP_COLS_MIN_H`` float32 steps of up to ``STEP_COLS_MAX_ROWS`` rows split there on two
    threads (not measured on more) from B·H² ≥ ``STEP_COLS_MIN_WORK`` (``STEP_COLS_MIN_WORK_KEPT`` for
    a frozen copy): ``stream.step``, two threads, one process taking turns, two runs, µs, serial
    against split: plain H = 64, B = 16 13.3 / 11.5; H = 96, B = 8 / 16 12.9–13.0 / 11.6–11.8,
    23.0–23.1 / 18.2–18.9; H = 128, B = 4 / 8 / 16 11.2–11.3 / 10.5–10.8, 19.3–19.4 / 15.3–15.4,
    36.2–36.3 / 24.3–26.1; H = 160, B = 4 / 8 / 16 15.6–15.8 / 12.2–12.8, 28.4–28.5 / 18.9–19.7,
    53.2–53.6 / 33.6–34.4; but H = 64, B = 4 / 8 5.3 / 7.1, 8.2 / 8.9, H = 96, B = 4
    7.9–8.1 / 8.6–8.7, H = 128, B = 2 6.8 / 7.5; frozen (its panels) H = 128, B = 8 / 16 17.4 / 14.5,
    32.6 / 24.8; H = 160, B = 4 14.5 / 12.0; H = 96, B = 16 19.8 / 17.6; but H = 128, B = 4
    10.0 / 10.3, H = 96, B = 8 11.1 / 11.6, H = 64, B = 16 10.8 / 12.5.

    reset_after=False splits (:func:`~numgru.kernels.step.gru_step_cols_before`, two parallel
    regions a step, r ⊙ h over every unit before W_hn's product) where BLAS is no wider, for float
    weights: up to ``STEP_COLS_MAX_ROWS`` rows from ``STEP_COLS_BEFORE_MIN_H`` units, or from
    ``STEP_COLS_MIN_H`` with ``STEP_COLS_BEFORE_MIN_ROWS`` rows; more rows from
    ``STEP_COLS_MIN_H_MANY_ROWS``. ``stream.step``, two threads, one process taking turns, µs, serial
    against split: H = 256, B = 1 / 2 / 4 / 16 21.6 / 17.5, 25.6 / 19.7, 36.6 / 34.2, 125.9 / 78.0;
    H = 512 59.6 / 51.6, 86.1 / 59.9, 130.2 / 76.6, 488.1 / 272.3; H = 1024 439.9 / 334.3, 825.7 /
    419.2, 1341.8 / 597.7, 3026.3 / 1481.9; H = 192, B = 4 / 16 22.4 / 19.3, 74.5 / 51.3 (B = 1 / 2
    13.1 / 13.4, 14.5 / 14.0); H = 128, B = 1–4 0.67–0.84×; more rows, H = 64 / 128 / 256, B = 64
    53.5 / 41.2, 131.6 / 94.9, 378.4 / 289.0; a frozen copy H = 256 / 512, B = 1 / 4 / 16
    1.38× / 1.34× / 1.61×, 1.13× / 1.70× / 1.87×.

    Each thread reads its own slice of W_ih and W_hh, which stays in its core's cache from step to
    step. Measured on 2 vCPUs (AMD; kernel calls, best of 25 rounds, the serial and split kernels in
    turns of separate processes, two or three runs), split against serial, float32:

    * B = 1, H = 192 / 256 / 384: 1.05–1.2× / 1.55–1.7× / 1.55–1.85×; but H = 512 0.94–1.17× (0.8×
      through GRUCell and streams) and H = 1024 0.6–1.25×, hence the bytes bound;
    * B = 2 / 4 / 8 / 16 at H = 256: 1.35–1.5× / 1.2–1.7× / 1.4–1.55× / 1.3×; B = 2 / 4 at H = 1024:
      2.4–3.2× / 2.3×; B = 16 at H = 512: 1.55–1.75×;
    * below H = 192 one row's parallel region costs more than it saves (H = 128, B = 1: 6.3 against
      6.6–8.7 µs).

    bfloat16 weights (a quantized model's) split only beyond ``STEP_COLS_BF16_SERIAL_BYTES``: the
    serial step runs them on packed panels, which one core reads fastest while they fit its L2
    (2-vCPU Intel machine, 2 threads, stream steps, serial against split, same process in turns:
    H = 256, B = 1 / 4 / 16 1.49× / 1.25× / 1.31×; beyond, H = 512 / 768, B = 4 0.38× / 0.54×, and
    at B = 1 split and serial stay within the noise of the shared cores, 0.5–1.2×).
    """
    if not (threads > 1 and B >= 1):
        return False
    if not reset_after:  # two regions a step (:func:`~numgru.kernels.step.gru_step_cols_before`)
        if WIDE_BLAS or itemsize < 4:
            return False
        if B > STEP_COLS_MAX_ROWS:
            return H >= STEP_COLS_MIN_H_MANY_ROWS
        return H >= STEP_COLS_BEFORE_MIN_H or (H >= STEP_COLS_MIN_H and B >= STEP_COLS_BEFORE_MIN_ROWS)
    if itemsize >= 4 and not WIDE_BLAS and B > STEP_COLS_MAX_ROWS:
        return H >= STEP_COLS_MIN_H_MANY_ROWS
    if (itemsize == 4 and not WIDE_BLAS and threads == 2 and H < STEP_COLS_MIN_H and B <= STEP_COLS_MAX_ROWS
            and B * H * H >= (STEP_COLS_MIN_WORK_KEPT if kept else STEP_COLS_MIN_WORK)):
        return True
    if not (H >= STEP_COLS_MIN_H and B <= STEP_COLS_MAX_ROWS):
        return False
    if itemsize == 2:
        return 6 * H * H * itemsize > STEP_COLS_BF16_SERIAL_BYTES
    return B > 1 or not WIDE_BLAS or 6 * H * H * itemsize <= STEP_COLS_B1_BYTES * threads


def step_columns_workspace(B, H, threads, dtype):
    """The ``acc`` workspace of :func:`~numgru.kernels.step.gru_step_cols`: (nc, 3, B, cs) for
    :func:`~numgru.kernels.forward.column_blocks`' nc blocks of cs units, one a thread."""
    nc, cs = column_blocks.py_func(H, threads)
    return np.empty((nc, 3, B, cs), dtype)


def run_step(x, h, weights, scalars, h_out, gi, gh, acc, tiled_max, backwards=False, entries=None, key=0):
    """One step of every row: h_out = GRU(x, h). ``weights`` (W_ih, W_hh, b_ih, b_hh, panels) and
    ``scalars`` (reset_after, gate_kind, alpha, beta, use_clip, clip) as
    :func:`~numgru.kernels.step.gru_step` takes them (``panels``: :func:`~numgru.kernels.step.step_panels`
    or :func:`no_step_panels`). With ``acc`` (from :func:`step_columns_workspace`, where
    :func:`step_columns` says so) the step is split over hidden units
    (:func:`~numgru.kernels.step.gru_step_cols`, which reads the weights unpacked) if the parallel
    slot is free; otherwise, or with ``acc`` None, the serial step runs (gi, gh its workspace;
    ``tiled_max`` as in :func:`~numgru.kernels.forward.recurrent_matmul`; ``backwards`` as
    :func:`~numgru.kernels.step.gru_step` takes it). The slot's lock is taken directly: the caller has
    read the thread count already. ``entries``, ``key``: the split kernel's call site for
    :func:`~numgru.kernels._jit.planned_call` (a dict the caller keeps, and a key that tells apart
    the types of x and h it hands here), so that its 14 arguments' types are not resolved on every
    step (0.3 µs of a call: H = 64, 3.94 against 4.28 µs on two threads)."""
    if acc is not None and _PARALLEL_LOCK.acquire(blocking=False):
        try:
            # reset_before: two regions, r ⊙ h over every unit before W_hn's product
            planned_call(entries, key, gru_step_cols if scalars[0] else gru_step_cols_before, x, h, *weights[:4],
                         *scalars[1:], h_out, gi, acc)
        finally:
            _PARALLEL_LOCK.release()
        return
    gru_step(x, h, *weights, *scalars, h_out, gi, gh, tiled_max, backwards)


def run_step_digits(x, h, digits, h_out, gi, gh, work, cols_work, backwards=False, reset_after=True):
    """A frozen model's one-row step on its weights' VNNI digits (:func:`vnni_step_wanted`;
    ``digits``: :func:`~numgru.kernels.vnni.gru_step_vnni`'s arguments after x and h and before
    h_out): split over blocks of hidden units (:func:`~numgru.kernels.vnni.gru_step_vnni_cols`, or
    :func:`~numgru.kernels.vnni.gru_step_vnni_cols_before` without ``reset_after``) with
    ``cols_work`` (:func:`step_digits_columns_work`) where the parallel slot is free, else serially
    (``work``, ``backwards`` as :func:`~numgru.kernels.vnni.gru_step_vnni` takes them)."""
    if cols_work is not None and _PARALLEL_LOCK.acquire(blocking=False):
        try:
            (gru_step_vnni_cols if reset_after else gru_step_vnni_cols_before)(x, h, *digits, h_out, gi, gh,
                                                                               cols_work)
        finally:
            _PARALLEL_LOCK.release()
        return
    (gru_step_vnni if reset_after else gru_step_vnni_before)(x, h, *digits, h_out, gi, gh, work, backwards)


def step_digits_columns_work(I, H, threads):
    """:func:`~numgru.kernels.vnni.gru_step_vnni_cols`' scratch for ``threads`` threads: one row of
    :func:`~numgru.kernels.vnni.step_work_size` int32 for each of
    :func:`~numgru.kernels.forward.column_blocks`' blocks, one a thread."""
    return np.zeros((column_blocks.py_func(H, threads)[0], step_work_size.py_func(I, H)), np.int32)


@functools.lru_cache(maxsize=16)
def empty_array(dtype, ndim):
    """A shared array of ``dtype`` with ``ndim`` axes of length 0, the kernels' "none" for an array
    argument (an absent tape, no panels, a workspace left to the kernel); nothing can be written to it."""
    return np.empty((0,) * ndim, dtype)


@functools.lru_cache(maxsize=8)
def no_step_panels(dtype):
    """Three empty (0, 0, 0) arrays of ``dtype``: :func:`~numgru.kernels.step.gru_step` without panels."""
    empty = empty_array(dtype, 3)
    return empty, empty, empty


@functools.lru_cache(maxsize=64)
def gate_scalars(dtype, gate_kind, alpha, beta, clip):
    """(gate_kind, alpha, beta, use_clip, clip) typed as the kernels take them (clip None: no clip).
    Cached: a model asks for the same few tuples on every call."""
    use_clip = clip is not None
    return (int(gate_kind), dtype.type(alpha), dtype.type(beta), use_clip,
            dtype.type(clip if use_clip else np.inf))


def project_on_threads(x2d, W_ih, Wp, bias, use_bias, gx, panels, threads):
    """gx = x2d @ W_ih.T (+ bias) on ``threads`` of Numba's threads
    (:func:`~numgru.kernels.forward.input_projection_parallel`, on W_ih's panels Wp where ``panels``),
    each task :func:`~numgru.kernels.forward.projection_block` called by its address for these
    arrays; panels packed in the call go to this thread's scratch, as the other packings do (fresh
    arrays fault their pages in on every call). The caller holds the parallel slot."""
    M, I = W_ih.shape
    # room for all the panels, or for the slots of the tasks that pack their own (four groups a thread)
    buf = (_aligned_scratch("projection_panels", max(M + 48, (4 * threads * WIDE_GROUP + 1) * 48) * I,
                            W_ih.dtype)
           if panels and Wp.shape[0] == 0 else empty_array(W_ih.dtype, 1))
    args = (x2d, W_ih, Wp, bias, bool(use_bias), gx, bool(panels))
    input_projection_parallel(x2d, W_ih, Wp, buf, bias, bool(use_bias), gx, bool(panels), threads,
                              native_address(projection_block, (*args, 0, 0, 0, 0, 0)))


def input_projection(x2d, W_ih, b_ih, numba_threads=False, valid=None, training=False, out=None,
                     packed=None, pieces=None, off_blas=False):
    """gx = x2d @ W_ih.T + b_ih, one GEMM over all rows.  x2d (N, I), W_ih (3H, I) → (N, 3H).

    With ``numba_threads`` (a route from :func:`forward_route`) the product runs on Numba's threads (on
    W_ih's panels where :func:`projection_panels` says, and where ``packed`` ones are given and
    :func:`packed_projection` says: a frozen copy's, two threads, µs, panels against the tiled matmul:
    T = 8, B = 8, H = 64 / 128 / 256 51.7 / 102 / 285 against 58.3 / 122 / 299; padded, B = 4,
    H = 64 / 128 50.0 / 89.2 against 54.7 / 98.2; B = 16 level), otherwise on one thread on packed
    panels (:func:`serial_projection_panels`) or by the dot-product block (:func:`projection_dot`), or
    in BLAS. With ``valid`` (a (N,) bool mask from :func:`valid_steps`) only the valid rows are gathered
    and multiplied, where that skips ``PACK_MIN_SAVED`` multiply-adds or more (fewer cost less than
    the gathering: 2-vCPU AMD EPYC, one thread, one process taking turns, µs, gathered against not:
    T = 5, B = 16, I = 16, H = 64 67 / 55; T = 10, B = 8, I = 32, H = 128 131 / 119; T = 20, B = 16,
    I = 64, H = 128 434 / 488; T = 32, B = 32, I = H = 256 5.2 / 6.9 ms); the other rows of gx are
    then zero (the kernels never read them). With ``training`` the
    serial kernel always takes BLAS, whose sums do not depend on its thread count, so that gradients
    come out the same with any number of threads (but for OpenBLAS's choice of kernel, which follows
    its thread count: Limits). ``out``: a C-contiguous (N, 3H) array to write gx
    into. ``packed``: W_ih's panels packed once by the caller (a frozen model's,
    :func:`~numgru.kernels.panel.pack_panels`), or None; they are read where :func:`packed_projection`
    says so, and by Numba's threads wherever those take panels. ``pieces``: the caller's
    :class:`FrozenPieces` (a frozen or quantized model's), which keep W_ih's AMX packing, or None
    (packed on each call that takes the tiles). ``off_blas`` (:func:`keeps_off_blas`): where the serial
    kernel would call BLAS, Numba's threads instead.
    """
    N = x2d.shape[0]
    n, gather = projected_rows(N, valid, W_ih.shape[0], x2d.shape[1])
    if gather:
        # the valid rows gathered, projected and put back, all on this thread's scratch: fresh arrays
        # here (and the zeros' pages) faulted in on every call
        gx = np.empty((N, W_ih.shape[0]), W_ih.dtype) if out is None else out
        xs = gathered(valid, n, x2d, "x_valid")
        return scattered(valid, input_projection(xs, W_ih, b_ih, numba_threads, training=training,
                                                 out=workspace("gx_valid", (n, W_ih.shape[0]), W_ih.dtype),
                                                 packed=packed, pieces=pieces, off_blas=off_blas), gx)
    gx = np.empty((N, W_ih.shape[0]), W_ih.dtype) if out is None else out
    if N == 0:
        return gx
    if not x2d.flags.c_contiguous:
        x2d = np.ascontiguousarray(x2d)
    bias = W_ih[0] if b_ih is None else b_ih
    I = x2d.shape[1]
    threads = thread_count()
    if amx_projection_wanted(N, I, threads, W_ih.dtype, training, W_ih.shape[0], pieces) and (
            amx_project_digits(x2d, W_ih, bias, b_ih is not None, gx, threads, pieces)
            or amx_project(x2d, W_ih, bias, b_ih is not None, gx, threads,
                           tile_packing(W_ih, "amx_ih", pieces, threads))):
        return gx
    if dpbf16_projection_wanted(N, I, W_ih.shape[0], x2d.dtype, W_ih.dtype, bias.dtype,
                                threads=1 if training else threads) and \
            dpbf16_project(x2d, W_ih, bias, b_ih is not None, gx, threads, pool=training):
        return gx
    if training and not numba_threads and training_panels(N, I, W_ih.shape[0], W_ih.dtype) and \
            x2d.dtype == W_ih.dtype == bias.dtype:
        return pool_projection(x2d, W_ih, bias, b_ih is not None, gx)
    Wp = empty_array(W_ih.dtype, 3) if packed is None else packed
    # the serial kernel's choice (panels, dot): asked for on the routes' threads only if they are busy
    choice = None if numba_threads else serial_projection_choice(N, I, threads, packed is not None, training,
                                                                 W_ih.dtype.itemsize)
    off_blas = off_blas and choice is not None and not any(choice)
    if off_blas and off_blas_dot(N, I, W_ih.shape[0]):
        choice, off_blas = (False, True), False
    if numba_threads or off_blas:
        with parallel_slot(True) as par:
            if par:
                panels = (projection_panels(N, I, threads, W_ih.dtype.itemsize, W_ih.shape[0])
                          or (off_blas and N >= OFF_BLAS_PANELS_MIN_ROWS)
                          or (packed is not None and packed_projection(N, I, threads)))
                project_on_threads(x2d, W_ih, Wp, bias, b_ih is not None, gx, panels, threads)
                return gx
    if choice is None:
        choice = serial_projection_choice(N, I, threads, packed is not None, training, W_ih.dtype.itemsize)
    input_projection_kernel(x2d, W_ih, Wp, bias, b_ih is not None, gx, *choice)
    return gx


def amx_projection_wanted(N, I, threads, dtype, training, M=0, pieces=None):
    """Whether the input projection of N rows with I inputs runs on AMX tiles
    (:mod:`~numgru.kernels.amx`, to float32 accuracy), packing W_ih there on every call: float32
    inference from ``AMX_MIN_ROWS`` rows per thread with ``AMX_MIN_INPUTS`` inputs or more, from
    ``AMX_MIN_ROWS_NARROW`` with ``AMX_MIN_INPUTS_NARROW``, where the CPU has AMX
    (:func:`~numgru.kernels.amx.amx_ready`); several threads take ranges of rows
    (:func:`amx_project`). Measured on the 2-vCPU Intel machine (Emerald Rapids), one thread, 3I
    outputs, against the float32 route (panels or OpenBLAS), the packing included, since the split
    takes 16 values an instruction: I = 256, N = 128 / 256 1.11× / 1.35×; I = 1024, N = 64 / 128 /
    256 0.90× / 1.12× / 1.27×; I = 128, N = 128 / 256 1.11× / 1.27×; I = 64, N = 256 / 512 / 2048 /
    8192 0.96× / 1.18× / 1.26× / 1.31× (before it, I = 64 read 0.97× at N = 8192). Two threads,
    N = 8192, I = 256 / 64: 5.9 / 0.50 ms against the float32 route's 10.7 / 0.67 (Numba's threads on
    panels). At a lower precision (:func:`set_float32_matmul_precision`) from the rows
    ``AMX_MIN_ROWS_BY_ORDER`` gives (with the wide, with the narrow inputs): "high" I = 64 / 256 /
    1024, N = 128 1.20× / 1.40× / 1.43×, I = 256, N = 64 0.94×; "medium" I = 256, N = 64 1.29×,
    N = 32 0.72×, I = 64, N = 128 1.28×. Training (forward_train) asks for the rows of one thread
    whatever the thread count, so that its sums, and the gradients, are the same with any number of
    threads (each row's sum on tiles is the same on any thread). Training also takes the tiles for
    any product of M outputs that OpenBLAS would spread over its threads (N·I·M above
    ``BLAS_THREADED_MNK``, narrow inputs included): OpenBLAS's idle workers spin for a while after
    each call, and the tiles' parallel regions that follow wait on the cores they hold (I = 16,
    H = 256, T = 128, B = 64, two threads: the step 94.8 ms against one thread's 75.2, its tiled
    recurrences and weight gradients each slower than on one thread). On one thread the tiles run
    level with OpenBLAS there: N = 8192, 768 outputs, I = 8 / 16 / 32 0.88× / 0.95× / 2.52×; I = 4,
    N = 2048, 192 outputs 0.77×.

    Inference on one thread at the default precision with I above ``AMX_MID_MIN_INPUTS`` and at most
    512 takes them from fewer rows, ``AMX_MIN_ROWS_MID`` (several threads were not measured with
    it): with the integer digits (:func:`amx_project_digits`, I = 256) and the bfloat16 pieces
    (I = 384, 512) the kernel alone ran I = 256, N = 128 245 against 314 µs on panels; I = 512,
    N = 128 1.13 against 1.51 ms; I = 1024, N = 128 4.37 against 5.41 ms. Whole forwards at B = 1,
    one thread, four runs taking turns, the medians' ratio against the tiles from 256 rows:
    I = H = 256, T = 64 / 80 / 96 / 112 / 128 / 192 0.96× / 1.05× / 1.05× / 1.07× / 1.07–1.11× /
    1.08×; I = H = 384, T = 64 / 96 / 128 1.04× / 1.08× / 1.06×; I = H = 512, T = 64 / 96 / 128 /
    160 1.04× / 1.03× / 1.01–1.04× / 1.02×; I = 512, H = 128, T = 64 / 96 / 128 1.07× / 1.12× /
    1.26×; but I = H = 192 1.00×, I = 192, H = 64 0.92×, I = H = 128 0.99×, I = H = 768 1.00× and
    I = H = 1024 0.98× (T = 128; the pieces of a 12 MB W_ih then share L3 with the W_hh each step
    streams). Training keeps the rows above.

    ``pieces``: the caller's :class:`FrozenPieces` (a frozen or quantized model's), which keep
    W_ih's packing, so that the tiles pay from fewer rows still: a frozen model's from
    ``AMX_MIN_ROWS_FROZEN`` on one thread, a quantized model's from ``AMX_MIN_ROWS_QUANTIZED`` per
    thread (W_ih is one piece, so a product per piece of x). Whole forwards at B = 1 against the
    rules above (one thread, four runs taking turns, the medians' ratio): frozen, I = H = 256,
    T = 8 / 16 / 32 / 48 / 64 0.85× / 1.04× / 1.16× / 1.24× / 1.18×; I = H = 512, T = 16 / 32
    0.97× / 1.02–1.07×; I = 512, H = 128, T = 32 1.22×; I = H = 768, T = 64 / 128 1.08× / 1.04×;
    I = H = 1024, T = 16 / 32 / 64 / 128 0.98× / 1.07× / 1.08× / 1.05× (its pieces made once, they
    no longer crowd L3 on every call); but I = H = 64 / 128 / 192 0.96× / 0.99× / 0.90× at T = 32.
    Quantized, from 16 rows against those rules: I = H = 64, T = 16 / 32 / 128 0.87× / 1.05× /
    1.10×; I = H = 128, T = 16 / 32 / 128 1.03× / 1.17× / 1.21×; I = H = 256, T = 16 / 32 1.01× /
    1.19×; I = H = 1024, T = 16 / 32 / 128 1.19× / 1.25× / 1.17×; B = 16, T = 16, I = H = 64 1.15×
    (hence 32 rows: at 16, I = 64 lost). Quantized on two threads (32 rows each), five runs in two
    orders, ms: T = 128, B = 1, I = H = 128 / 256 / 1024 0.25–0.26 / 0.70–0.74 / 10.6–11.5 against
    0.30–0.32 / 0.85–1.04 / 13.2–14.0; T = 64, I = H = 512 1.25–1.36 against 1.59–1.71; T = 16,
    B = 4, I = H = 256 0.34–0.37 against 0.41–0.42. A frozen model's rule drew or lost on two
    threads (T = 64, I = H = 512 1.86–1.90 against 1.77–1.87 ms) and stays on one."""
    order = matmul_order()
    rows, narrow = AMX_MIN_ROWS_BY_ORDER.get(order, (AMX_MIN_ROWS, AMX_MIN_ROWS_NARROW))
    kept = pieces is not None and not training and (threads == 1 or pieces.bfloat16)
    if kept and pieces.bfloat16:  # (rows per thread: several threads take ranges of rows)
        rows = narrow = min(rows, AMX_MIN_ROWS_QUANTIZED)
    elif order == 3 and not training and threads == 1 and I > AMX_MID_MIN_INPUTS:
        for max_i, min_rows in AMX_MIN_ROWS_FROZEN if kept else AMX_MIN_ROWS_MID:
            if I <= max_i:
                rows = min_rows
                break
    per = 1 if training else threads
    return (dtype == np.float32 and ((I >= AMX_MIN_INPUTS and N >= rows * per)
                                     or (I >= AMX_MIN_INPUTS_NARROW and N >= narrow * per)
                                     or (training and N * I * M > BLAS_THREADED_MNK))
            and amx_ready())


def dpbf16_projection_wanted(N, K, M, *dtypes, threads=1):
    """Whether a float32 product of N rows, K summed and M outputs (the input projection, or dx's
    dG · W_ih) takes AVX512-BF16's bfloat16 products (:mod:`~numgru.kernels.dpbf16`): at "medium"
    precision only (:func:`set_float32_matmul_precision`), on CPUs with AVX512-BF16 and no AMX
    (:func:`~numgru.kernels.dpbf16.dpbf16_ready`), every operand float32, from ``DPBF16_MIN_ROWS``
    rows a thread (``threads``: those the rows are split over; training asks for one whatever the
    count, each row's sums being one thread's, so its gradients do not depend on it) with at least
    ``DPBF16_MIN_ROW_WORK`` multiply-adds a row.

    Measured on Zen 4, one thread (the packing of W included): N = 8192, K = 256, M = 768 16.1 ms
    (200 GFLOP/s) against OpenBLAS's 31.3. W's packing runs on one thread (0.022 ms at K = 256,
    M = 768; 0.6–1.0 ms at K = 1024, M = 3072): on two threads, B = 1, T = 128, I = H = 1024, the
    forward with the projection's 128 rows on them read 14.1–14.2 ms against 14.3–14.8 in float32
    (18.4 against 16.0 before the packing was turned in registers), level at H = 256, hence 128 rows
    a thread."""
    return (matmul_order() == 1 and N >= DPBF16_MIN_ROWS * threads and K * M >= DPBF16_MIN_ROW_WORK
            and all(d == np.float32 for d in dtypes) and not amx_ready() and dpbf16_ready())


def dpbf16_project(x2d, W, bias, use_bias, out, threads=1, name="dp_ih", pool=False):
    """out = x2d @ W.T (+ bias) by bfloat16 products
    (:func:`~numgru.kernels.dpbf16.dpbf16_projection`), W packed into this thread's scratch ``name``;
    where ``threads`` > 1, in ranges of whole chunks of rows on Numba's threads (the parallel slot
    free; inference, whose recurrences run there too) or, with ``pool``, side by side on
    :func:`side_by_side`'s sleeping threads (training, whose recurrences and gradients run there:
    Numba's OpenMP workers spin for a while after a region, and the pool's ranges that follow on the
    same cores ran slower, two threads, T = 128, B = 64, H = 256, 24.8–26.0 against 22.4 ms; and
    the other way round, the projection on the pool before the rows route on Numba's threads, B = 16,
    H = 128, 3.7 against 2.8). x2d (N, K), W (M, K), out (N, M) C-contiguous float32. False, with out
    partly written, where x2d or W holds a magnitude beyond 3e38, Inf or NaN: the caller then takes
    its float32 route, which writes all of out."""
    M = W.shape[0]
    Wp = packed_pairs(name, W)
    if Wp is None:
        return False
    init = bias if use_bias else np.zeros(M, np.float32)
    N = x2d.shape[0]
    chunks = -(-N // CHUNK_ROWS)
    if threads < 2 or chunks < 2:
        return dpbf16_projection(x2d, Wp, M, init, 0, out)
    if not pool:
        with parallel_slot(True) as par:
            if par:
                return dpbf16_projection_parallel(x2d, Wp, M, init, 0, out, min(threads, chunks))
        return dpbf16_projection(x2d, Wp, M, init, 0, out)
    n = min(threads, chunks)
    cuts = [min(N, chunks * i // n * CHUNK_ROWS) for i in range(n + 1)]
    return all(side_by_side(lambda a, b: dpbf16_projection(x2d[a:b], Wp, M, init, 0, out[a:b]),
                            list(zip(cuts[:-1], cuts[1:])), n))


def amx_project(x2d, W_ih, bias, use_bias, out, threads=1, Wv=None):
    """out = x2d @ W_ih.T (+ bias) on AMX tiles, W_ih packed here (:func:`~numgru.kernels.amx.pack_amx`)
    unless ``Wv`` is its packing already, on Numba's threads where ``threads`` > 1 and the parallel
    slot is free. x2d (N, I) and out (N, M) C-contiguous float32. False, with out partly written,
    where x2d or W_ih holds a value the tiles cannot take to float32 accuracy (NaN, ±Inf, beyond
    3e38): the caller then takes its float32 route, which writes all of out."""
    if Wv is None:
        Wv = amx_pieces("amx_ih", W_ih, threads)
    if Wv.shape[0] == 0:
        return False
    if threads > 1:
        with parallel_slot(True) as par:
            if par:
                return amx_projection_parallel(x2d, Wv, W_ih.shape[0], bias, use_bias, out, threads,
                                               matmul_order())
    return amx_projection(x2d, Wv, W_ih.shape[0], bias, use_bias, out, matmul_order())


def amx_digit_projection_wanted(M, I):
    """Whether a projection on tiles (:func:`amx_projection_wanted`) of I inputs to M outputs tries
    W's integer digits first (:func:`amx_project_digits`): at the default precision, from
    ``AMX_DIGITS_MIN_INPUTS`` inputs, W's digits within L2 (3·M·I bytes at most
    ``DIGIT_WIDE_BYTES``) or ``AMX_DIGITS_WIDE_MIN_INPUTS`` inputs or more. Measured on the 2-vCPU
    Intel machine (Emerald Rapids), one thread, against the bfloat16 pieces, packing included: I =
    256, M = 768, N = 8192 / 2048 / 256 rows 1.41× / 1.24× / 1.11×; I = 128, M = 384, N = 8192 / 512
    1.00× / 0.64× (each row's split and three sums cost as much as the products they halve). Beyond
    L2 W's digits are read from L3 again for every 32 rows, but so are the pieces, at twice the
    bytes; once W's digits were packed at half the cost (:func:`~numgru.kernels.amx.digit_quads16`),
    whole forwards, paired in one process, digits against pieces: I = H = 1024, T = 32 / 128 / 512,
    B = 16 1.12× / 1.06× / 1.04×, T = 32 / 128, B = 64 1.07× / 1.05× (two threads 1.04–1.06×; frozen
    copies 1.02–1.05×); I = 1024, H = 256 1.20–1.22×; I = 2048, H = 512 1.31–1.35×; training steps
    (dx, 3H summed values, too) I = H = 1024 1.05–1.07×, I = H = 512 1.04×; but I = H = 512 forwards
    0.94–1.04×, I = 256, H = 1024 0.95–1.00×, I = H = 768 1.00–1.04× (so from 1024)."""
    return (matmul_order() == 3 and AMX_DIGITS_MIN_INPUTS <= I <= DIGIT_MAX_K
            and (3 * padded.py_func(M) * padded.py_func(I) <= DIGIT_WIDE_BYTES
                 or I >= AMX_DIGITS_WIDE_MIN_INPUTS))


def amx_project_digits(x2d, W, bias, use_bias, out, threads=1, pieces=None, name="amx_ih_digits",
                       spread=None):
    """out = x2d @ W.T (+ bias) on AMX's int8 tiles from W's integer digits
    (:func:`~numgru.kernels.amx.amx_digit_projection`) where :func:`amx_digit_projection_wanted`
    holds and no row of x2d or W is refused: NaN, ±Inf, a largest magnitude outside [2⁻⁶⁰, 2⁶⁰], or
    a row whose largest magnitude passes ``spread`` (default ``AMX_DIGITS_SPREAD``; 0 for none)
    times its mean (features of mixed scales, whose small values the digits would keep to fewer bits
    than float32; gate gradients, whose error is judged against the largest, take none, as in the
    backward's steps). W packed into this thread's scratch ``name``, or kept by ``pieces`` (a frozen
    model's :class:`FrozenPieces`; a quantized model's bfloat16 weights keep their pieces). False
    where not taken, out then partly written: the caller takes the pieces or the float32 route."""
    M, I = W.shape
    if not amx_digit_projection_wanted(M, I) or (pieces is not None and pieces.bfloat16):
        return False
    spread = np.float32(AMX_DIGITS_SPREAD if spread is None else spread)
    Wd = amx_digits(name, W, spread, threads) if pieces is None else pieces.digits_of(W, spread)
    if Wd.shape[0] == 0:
        return False
    if threads > 1:
        with parallel_slot(True) as par:
            if par:
                return amx_digit_projection_parallel(x2d, Wd, M, bias, use_bias, out, spread, threads)
    return amx_digit_projection(x2d, Wd, M, bias, use_bias, out, spread)


def amx_rows_chunks(T, B, H, threads, dtype, reset_after, gate_kind, use_clip):
    """How many ranges of rows an inference forward on several threads splits its batch into, each
    running every step on its own core's AMX tiles (:func:`~numgru.kernels.amx.gru_forward_amx_rows`),
    or 0 for the other routes: where :func:`amx_recurrence_wanted` holds but for the thread count,
    with at least ``AMX_ROWS_PER_THREAD`` rows per range, two ranges and ``AMX_ROWS_MIN_HIDDEN``
    units. Two threads, T = 128, B = 64, the recurrence alone: H = 64 / 256 / 1024 0.82 / 10.1 / 103 ms
    against one thread's tiles' 1.58 / 16.3 / 182; whole forwards against the float32 routes on two
    threads: H = 256 1.25×, H = 128 1.12× (T = 32), but H = 64 0.97–1.04× (the rows route on packed
    panels runs as fast; 0.60× in one benchmark run, with the peers' pools on the other core)."""
    chunks = amx_row_ranges(B, threads)
    if chunks < 2 or H < AMX_ROWS_MIN_HIDDEN or \
            not amx_recurrence_wanted(T, B, H, 1, dtype, reset_after, gate_kind, use_clip):
        return 0
    return chunks


def amx_row_ranges(B, threads):
    """How many ranges of rows a recurrence on AMX tiles splits B rows into on ``threads`` threads:
    one per thread, at least ``AMX_ROWS_PER_THREAD`` rows each (1: one thread runs them all)."""
    return max(1, min(threads, B // AMX_ROWS_PER_THREAD))


def amx_recurrence_wanted(T, B, H, threads, dtype, reset_after, gate_kind, use_clip, bf16_values=False):
    """Whether a serial inference forward of T steps over B rows (all running every step) multiplies
    each step's state by W_hh on AMX tiles (:func:`~numgru.kernels.amx.gru_forward_amx`), packing
    W_hh on every call: float32 weights, reset_after with sigmoid gates and no clip, one thread, at
    least ``AMX_STEP_MIN_STEPS`` steps, where the CPU has AMX; from ``AMX_STEP_MIN_ROWS`` rows (tile
    products of 32 rows) for H ≥ ``AMX_STEP_MIN_HIDDEN``, and for ``AMX_STEP_FEW_ROWS`` rows (one
    tile of 16) where W_hh's pieces, 18·H² bytes, stay in L2 and the tiles' fixed cost is repaid
    (H in ``AMX_STEP_FEW_ROWS_HIDDEN``). Measured on the 2-vCPU Intel machine (Emerald Rapids), one
    thread, the recurrence alone against the float32 kernel, packing included: T = 128, H = 256, B =
    16 / 32 / 48 / 64 1.26× / 1.30× / 1.10× / 1.27×; B = 8 / 4 0.78× / 0.52× (a tile of 16 rows
    costs the same at any B); H = 128, B = 16 / 32 / 64 1.18× / 1.26× / 1.27×; H = 64, B = 16 / 64
    1.00× / 1.24×; H = 48, B = 16 0.81×; T = 64, H = 256, B = 20 / 24 1.02× / 1.11×; H = 1024, B = 16 /
    24 / 32 0.90× / 1.63× / 1.91×; B = 16, H = 384 / 512 0.80× / 0.74× (W_hh's pieces from L3).

    ``bf16_values``: W_hh holds only bfloat16 values (a quantized model's), so its packing is one
    piece, three products a block and a third of the bytes: then one tile of 16 rows pays from
    ``AMX_STEP_FEW_ROWS_BF16`` rows for every H from ``AMX_STEP_FEW_ROWS_BF16_MIN_HIDDEN``, W_hh's
    piece in L2 or not (against the quantized model's bfloat16 kernels, which widen the weights on
    the vector units; one thread, T = 128, quantized and frozen: H = 256, B = 4 / 8 / 16 0.96× / 1.31×
    / 1.55×; H = 512 0.81× / 1.12× / 1.57×; H = 1024 0.66× / 0.87× / 1.34×; H = 128, B = 8 1.06×;
    B = 1 0.46–0.65×, the tiles' loads from L3 slower than the vector units').

    At the default precision from H = 128 also from the rows :func:`_rows_on_digits` gives (W_hh's
    integer digits, :func:`digits_wanted`); at a lower precision (:func:`set_float32_matmul_precision`)
    from the rows :func:`_rows_at_order` gives (the rule then reads the setting; plans are kept per
    setting)."""
    if not (dtype == np.float32 and reset_after and gate_kind == 0 and not use_clip and threads == 1
            and T >= AMX_STEP_MIN_STEPS and H >= AMX_STEP_MIN_HIDDEN):
        return False
    lo, hi = AMX_STEP_FEW_ROWS_BF16 if bf16_values else AMX_STEP_FEW_ROWS
    h_lo, h_hi = (AMX_STEP_FEW_ROWS_BF16_MIN_HIDDEN, H) if bf16_values else AMX_STEP_FEW_ROWS_HIDDEN
    order = matmul_order()
    if not (B >= AMX_STEP_MIN_ROWS or (lo <= B <= hi and h_lo <= H <= h_hi)
            or B >= _rows_at_order(H, order) or (not bf16_values and B >= _rows_on_digits(H, order))):
        return False
    return amx_ready()


def vnni_recurrence_wanted(T, B, H, threads, dtype, reset_after, gate_kind, use_clip, kept=False):
    """Whether a serial inference forward of T steps over B rows multiplies each step's state by
    W_hh's integer digits on AVX512-VNNI (:func:`~numgru.kernels.vnni.gru_forward_vnni`), packing
    them on every call unless the model keeps them (``kept``): one row, float32 weights, reset_after
    with sigmoid gates and no clip, one thread, at least the steps ``VNNI_MIN_STEPS`` gives for H
    (``VNNI_MIN_STEPS_KEPT`` with ``kept``; none below 512 units, where W_hh lies in L2), where the
    CPU has VNNI. Measured on the 2-vCPU AMD EPYC (Zen 4, 1 MB L2 a core), one thread, the product of
    one row alone, digits (the row's split and the combine included) against the float32 panels:
    H = 64 / 256 0.82× / 0.74× (W_hh in L2: Zen 4 runs a 512-bit ``VPDPBUSD`` every other cycle, and
    six of them a 16 × 4 block cost more than float32's four FMAs), H = 512 / 1024 1.09× / 1.26×;
    whole forwards (``NUMGRU_VNNI`` 0 against 1 in alternating processes, two rounds, packing
    included): H = 1024, T = 64 / 128 / 512 1.11–1.19× / 1.07–1.18× / 1.10–1.23×; H = 640, T = 256
    1.24–1.36×; H = 768, T = 64 / 128 1.00–1.13× / 1.01–1.07×; H = 512, T = 128 / 512 1.02–1.11× /
    1.09×; but T = 32 level at H = 1024 and 0.85–0.94× at H = 512 (the packing, 0.18 ms at H = 512
    and 1.1 ms at H = 1024, and the row sums, 0.03 / 0.13 ms, not repaid). Those figures were taken
    while the digit sums of power-of-two H ran at half speed (:data:`~numgru.kernels.vnni.
    SUMS_PAIRS_KQ`); since, one process taking turns with the routes before (nine rounds, ratio
    theirs over the digits'): H = 1024, T = 16 / 24 / 32 / 48 0.93–1.13× / 0.96–1.05× / 1.05–1.20× /
    1.10–1.17×; H = 896, T = 32 / 48 1.00–1.35× / 1.00–1.10×; at H = 512 / 768, T = 32 / 48, where
    the fused forward takes over from 64 steps, 0.85–1.04× / 0.92–1.41×: so from 32 steps beyond
    ``FUSED_MAX_HIDDEN`` units. Not measured on Intel, where the same route runs (no AMX route takes
    one row): there a step's 12·H² float32 bytes come from L3 at ~30 GB/s and a 512-bit ``VPDPBUSD``
    issues every cycle, so the digits' 9·H² bytes should bound the step.

    A frozen model keeps the digits (``kept``; since, their row sums too), and then the route pays
    from one step where the fused forward does not take over (H > ``FUSED_MAX_HIDDEN``; one step
    with the row sums kept, H = 800 / 1024 / 1536 1.15–1.30× / 1.07–1.47× / 0.97–1.30×, 15 rounds;
    two steps before, when each call remade them): the frozen copy, one process taking
    turns with a copy on the routes before (default over digits, 15 rounds each): H = 1024 T = 2 /
    4 / 8 / 16 / 32 / 48 1.24× / 1.02–1.09× / 1.06–1.15× / 1.08× / 1.15–1.18× / 1.10×, H = 896
    T = 2–32 1.17–1.20×, one step level (1.00–1.05×); but H = 512 / 768 T = 2–12 0.82–0.99×
    (H = 640 0.91–1.13×), where from 16 steps the fused forward runs; with the faster sums still
    H = 512 T = 2 / 8 / 16 / 64 0.87–0.89× / 0.90–1.12× / 0.91–1.03× / 0.91–0.96×, H = 768 0.74–1.07×
    / 0.92–1.39× / 0.95–1.09× / 0.82–1.17× (nine rounds).

    reset_after=False (:func:`~numgru.kernels.vnni.gru_forward_vnni_before`: two digit products a
    step, the second by r ⊙ h's digits) with H a multiple of 8, on the same tables: Zen 4, one
    thread, whole forwards, one process taking turns with the float32 routes (five rounds, ratios of
    their time to the digits'): plain H = 1024, T = 8 / 16 / 32 / 128 0.73–0.84× / 0.88–0.91× /
    1.13–1.17× / 1.23–1.28×; H = 896, T = 32 0.98–1.02×; H = 800, T = 64 1.05–1.09×; frozen H = 1024,
    T = 1 / 4 / 16 / 32 / 128 1.30–1.41× / 1.20–1.34× / 1.23–1.32× / 1.26–1.32× / 1.31–1.32×; H = 800,
    T = 4 / 32 1.09–1.24× / 1.13–1.17×."""
    table = VNNI_MIN_STEPS_KEPT if kept else VNNI_MIN_STEPS
    return (dtype == np.float32 and (reset_after or H % 8 == 0) and gate_kind == 0 and not use_clip
            and threads == 1 and B == 1 and T >= min((s for h_min, s in table if H >= h_min), default=1 << 62)
            and H <= DIGIT_MAX_K and vnni_ready())


def vnni_columns_wanted(T, B, H, threads, dtype, reset_after, gate_kind, use_clip, kept=False):
    """Whether an inference forward of T steps over B rows that takes the columns route on
    ``threads`` threads (:func:`forward_route`) multiplies each step's state by W_hh's integer digits
    (:func:`~numgru.kernels.vnni.gru_forward_vnni_cols`, each thread its units' rows; packed on every
    call unless the model keeps them, ``kept``): one row, float32, reset_after with sigmoid gates and no
    clip, H a multiple of 16 from ``VNNI_COLUMNS_MIN_HIDDEN`` (``VNNI_COLUMNS_MIN_HIDDEN_KEPT`` with
    ``kept``; W_hh beyond the threads' L2s), at least ``VNNI_COLUMNS_MIN_STEPS`` steps
    (``VNNI_COLUMNS_MIN_STEPS_KEPT`` with ``kept``), where the CPU has VNNI. Zen 4, two threads, B = 1,
    the recurrence alone (µs a step, the digits' against the float32 columns route's, 11 rounds):
    H = 512 / 768 / 1024 18 / 43 / 68 against 21 / 52 / 91 (1.09–1.26× / 1.08–1.41× / 1.25–1.36×); whole
    forwards, one process taking turns with the float32 route: frozen H = 1024, T = 8 / 32 / 128
    0.95–1.32× / 0.99–1.45× / 1.09–1.24×, H = 2048, T = 32 1.38–1.69×; plain (the digits packed on the
    threads each call) H = 1024, T = 64 / 128 / 512 0.94–1.19× / 0.94–1.11× / 1.04–1.24×. Below
    H = 1024, where the columns route takes one row on Zen 4 too (:func:`forward_route`), the float32
    route kept up (two runs of nine rounds, ratios of the float32 route's time to the digits'): frozen
    H = 512, T = 8 / 32 0.92–0.94 / 0.93–0.95; H = 768, T = 32 / 128 1.03–1.04 / 1.03–1.06; H = 896,
    T = 32 1.06–1.08; plain (packed each call) H = 512 / 768 / 896, T = 128
    0.80–0.95 / 0.89–1.03 / 0.92–1.07, T = 512 H = 512 / 768 0.94–0.97 / 1.01–1.02.

    reset_after=False (:func:`~numgru.kernels.vnni.gru_forward_vnni_cols_before`, two halves a step,
    the second on the digits of r ⊙ h that every block makes) from ``VNNI_COLUMNS_BEFORE_MIN_STEPS``
    steps, or, where the model keeps the digits, from ``VNNI_COLUMNS_BEFORE_MIN_HIDDEN_KEPT`` units:
    two threads, one process taking turns with the float32 route (five rounds, its time over the
    digits'): plain H = 1024, T = 128 / 256 / 512 0.96–1.10× (two runs) / 0.99–1.16× / 1.07–1.11×;
    frozen H = 1024, T = 1 / 4 / 8 / 32 / 128 0.83–1.67× (median 0.97) / 1.16–1.33× / 1.07–1.53× /
    1.08–1.20× / 1.08–1.15×, H = 768, T = 32 / 128 0.99–1.39× (median 1.05) / 0.97–2.01× (median 0.99)."""
    if reset_after:
        least = VNNI_COLUMNS_MIN_HIDDEN_KEPT if kept else VNNI_COLUMNS_MIN_HIDDEN
        fewest = VNNI_COLUMNS_MIN_STEPS_KEPT if kept else VNNI_COLUMNS_MIN_STEPS
    else:
        least = VNNI_COLUMNS_BEFORE_MIN_HIDDEN_KEPT if kept else VNNI_COLUMNS_MIN_HIDDEN
        fewest = VNNI_COLUMNS_MIN_STEPS_KEPT if kept else VNNI_COLUMNS_BEFORE_MIN_STEPS
    return (B == 1 and threads > 1 and dtype == np.float32 and gate_kind == 0
            and not use_clip and H % 16 == 0 and least <= H <= DIGIT_MAX_K and T >= fewest and vnni_ready())


def vnni_step_wanted(B, H, threads, columns, dtype, reset_after, gate_kind, use_clip):
    """How a frozen model's step of B rows (a stream's, a cell's) on ``threads`` threads runs on its
    weights' integer digits by AVX512-VNNI (the digits made once with the model), or None: one row,
    float32, reset_after with sigmoid gates and no clip, where the CPU has VNNI; W_ih's product from
    ``VNNI_STEP_MIN_INPUTS`` inputs (:func:`vnni_step_inputs`). "split": on several threads, H a
    multiple of 16 from ``VNNI_STEP_COLUMNS_MIN_HIDDEN`` units, split over blocks of hidden units
    (:func:`run_step_digits`); "serial": from ``VNNI_STEP_MIN_HIDDEN`` units where the float32 step
    is not split (``columns``, :func:`step_columns`), :func:`~numgru.kernels.vnni.gru_step_vnni`.
    Zen 4, two threads, the kernels alone, µs, the digits' split against the float32 split: H = 256 /
    512 / 1024 12.7 / 43.8 / 142 against 13.0 / 48.8 / 183, and against one thread's digits (where
    the float32 step is serial from H = 512) 18.0 / 63.4 / 278. A step reads W_ih and
    W_hh, 24·H² bytes at I = H, past L2 from H ≈ 200; their digits read three quarters of that. Zen 4,
    one thread, the step kernel from Python by its compiled entry, odd steps ``backwards``, against
    :func:`~numgru.kernels.step.gru_step` on the same frozen weights, µs: I = H = 192 / 256 / 512 /
    1024 9.9 / 16.6 / 63.7 / 327–372 against 11.0 / 19.3–19.5 / 76–78 / 503–523; but H = 64 / 128 /
    160 2.9 / 5.7 / 8.9 against 2.0 / 4.7 / 7.7 (in L2, where the row's digits and the sums' combine
    cost more than the bytes save); H = 256 with W_ih's product in float32, I = 16 / 64 / 128 9.7 /
    11.6 / 13.9, with its digits 11.4 / 11.6 / 13.9, I = 192 16.3 against 14.7.

    reset_after=False (:func:`~numgru.kernels.vnni.gru_step_vnni_before`: W_hh's n rows by the digits
    of r ⊙ h) with H a multiple of 8 from ``VNNI_STEP_BEFORE_MIN_HIDDEN`` units where the float32 step
    is not split, or split as reset_after's (:func:`~numgru.kernels.vnni.gru_step_vnni_cols_before`,
    two parallel regions; two threads, frozen ``stream.step`` taking turns with the float32 split,
    seven rounds, H = 512 / 768 / 1024 1.10–1.16× / 1.16–1.32× / 2.00–2.57× with the second vCPU
    busy): Zen 4, one thread, frozen ``stream.step``, one
    process taking turns with the float32 step (seven rounds, ratios of its time to the digits'):
    H = 192 / 256 / 320 / 384 / 512 0.91–0.94× / 1.00–1.05× / 1.01–1.06× / 1.04× / 1.06–1.07×; against
    the session before, alternating processes, µs: H = 512 / 1024 70.7–71.8 / 319–364 against
    76.5–77.3 / 527–529 (GRUCell 72.8–73.5 / 302–339 against 82.6–83.2 / 505–515)."""
    if not (B == 1 and dtype == np.float32 and (reset_after or H % 8 == 0) and gate_kind == 0
            and not use_clip and H <= DIGIT_MAX_K and vnni_ready()):
        return None
    if threads > 1 and H % 16 == 0 and H >= VNNI_STEP_COLUMNS_MIN_HIDDEN:
        return "split"
    return "serial" if not columns and H >= (VNNI_STEP_MIN_HIDDEN if reset_after else VNNI_STEP_BEFORE_MIN_HIDDEN) \
        else None


def vnni_step_inputs(I):
    """Whether :func:`vnni_step_wanted`'s step multiplies x by W_ih's digits (I inputs), else in
    float32."""
    return VNNI_STEP_MIN_INPUTS <= I <= DIGIT_MAX_K


def fused_recurrence_wanted(T, B, H, dtype, reset_after, gate_kind, use_clip, packed=False):
    """Whether a serial inference forward of T steps over B rows runs its input projection inside
    the steps (:func:`~numgru.kernels.fused.gru_forward_fused`, W_ih and W_hh packed on every call
    unless the model keeps them: ``packed``): one row, float32 weights, sigmoid gates and no clip,
    with ``FUSED_MIN_HIDDEN`` ≤ H ≤ ``FUSED_MAX_HIDDEN``, and at least
    ``FUSED_MIN_STEPS`` steps for H (``FUSED_MIN_STEPS_PACKED`` with ``packed``). On any number of
    threads: where several threads' forward leaves one row to the serial kernels
    (:func:`forward_route`; on Zen 4 up to H = 192, and single steps), the fused kernel on one of
    them beat the serial kernels with BLAS threading their products (two threads, one process
    taking turns, 11 rounds, µs, fused against serial): plain H = 64, T = 32 / 128 / 512 35 / 113 /
    428 against 41 / 129 / 447; H = 128, T = 32 / 128 101 / 345 against 126 / 382; H = 192, T = 128
    745 against 774; frozen H = 64, T = 32 33 against 39, H = 128 / 192, T = 128 334 / 720 against
    401 / 769; with BLAS on one thread, plain H = 64, T = 16 21 against 25, H = 192, T = 64 392
    against 472, but H = 128, T = 16 60 against 58. Measured on Zen 4
    (one thread, BLAS pinned to one, I = H, whole forwards, packing included, against the routes before
    it: the panels up to H = 384, W_hh's VNNI digits beyond), by T = 8 / 16 / 32 / 64 / 128 / 512: H =
    64 1.43× / 1.36× / 1.25× / 1.19× / 1.17× / 1.14×; H = 128 0.95× / 1.05× / 1.20× / 1.22× / 1.20× /
    1.22×; H = 256 0.77× / 0.93× / 0.97× / 1.11× / 1.09× / 1.12×; H = 384 0.79× / 0.97× / 1.12× / 1.18×
    / 1.21× / 1.28×; H = 512 0.71× / 0.89× / 1.06× / 1.15× / 1.20× / 1.24×; H = 768 0.58× / 0.78× /
    1.01× / 1.03× / 1.12× / 1.14× (short sequences do not repay the packing). H = 32 0.93× at T = 512
    (the panels' per-step overhead); H = 1024 0.90–0.96× (W_hh from L3: the panels' one-row product
    reads it slower than the digits; a software prefetch of W_hh's panel rows 2–8 KB ahead slowed every
    H, 1.05–1.18× longer at H = 256–1024). AVX-512 targets only
    (:func:`~numgru.kernels.fused.fused_ready`). Not measured on Intel, where the same code runs (the
    overlap of an L2- or L3-bound product with an arithmetic-bound one does not depend on the vendor).

    A frozen model's packed weights (``packed``) leave the steps nothing to repay, and the fused
    forward, one kernel on the panels, then wins from fewer steps: the frozen copy, the same
    conditions, one process taking turns with a copy on the routes before (default over fused, 21
    rounds each, two runs): H = 64 T = 1–12 1.07–1.26×; H = 96 / 128 T = 1–12 1.03–1.16× (once
    0.97 at T = 10); H = 192 / 256 T ≤ 8 1.04–1.13× but T = 10 0.95–0.97× (a first block of 8 steps
    and a second of 2), T = 12 1.01–1.05×, T = 16–48 1.04–1.15×; H = 320–768 T ≤ 12 0.96–1.02×
    (H = 768 noisy, 0.98–1.31×), T = 16–48 1.02–1.13×. Hence from one step up to H = 128 and from 16
    beyond.

    Since the fused forward's every other step takes W_hh's panels last first
    (:data:`~numgru.kernels.fused.FUSED_ZIGZAG_MIN_BYTES`), a plain model's from 32 steps up to H = 256:
    one process taking turns with the serial plans, nine rounds, H = 160 / 192 / 256, T = 32 1.11× /
    1.05× / 1.14–1.17×, H = 192, T = 24 1.16×, H = 256, T = 48 1.25–1.30×; but H = 256, T = 16 / 24
    0.92× / 0.97×, and T = 32 at H = 320 / 384 / 512 / 768 1.04× / 0.99× / 0.90× / 0.79× (so 64 there).
    Against a copy of 14509e1's code (the serial plans there), one process, seven rounds: T = 40,
    H = 160 1.14×, T = 48, H = 200 1.09×, T = 32, H = 224 / 256 1.00× / 0.98–1.01× (the serial plans
    at H = 256 ran 385–390 µs against that copy, 450–490 against a copy of this model made in the same
    process: their time at H = 256 moves with the instance, as without reset_after above).

    reset_after=False (:func:`~numgru.kernels.fused.gru_forward_fused_before`, which ONNX's default
    ``linear_before_reset=0`` gives) from the steps ``FUSED_BEFORE_MIN_STEPS``
    (``FUSED_BEFORE_MIN_STEPS_PACKED``) gives (plain H = 256, T = 64, in
    alternating processes against the routes before: 0.799–0.820 against 0.771–0.794 ms, so from 128
    steps there; H = 384 / 512, T = 32 1.03–1.08× / 0.98–1.03×, T = 48, H = 512 1.02–1.06×, H = 640,
    T = 32 0.93–0.96×, nine rounds: so from 48 up to 512 units). Zen 4, one thread, whole
    forwards, one process taking turns with the routes before (seven rounds, ratios of their time to
    the fused forward's): plain H = 96, T = 64 / 128 1.09–1.16× / 1.08–1.11×; H = 128, T = 16 / 32 / 64 /
    128 0.67–0.95× / 1.02–1.05× / 1.07–1.10× / 1.08–1.10×; H = 256, T = 32 / 64 / 128 0.87–0.91× /
    0.95–1.02× / 1.09–1.22×; H = 512, T = 32 / 64 0.94–1.09× / 1.05–1.20×; H = 768, T = 32 / 64 / 128
    0.86–0.98× / 1.00–1.36× / 1.04–1.25×; but H = 64, T = 16–128 0.92–1.02× (the kernel alone, H = 1024,
    T = 128 0.91×). Frozen: H = 128, T = 1 / 8 / 12 / 32 / 64 / 128 0.71–0.74× / 0.89–1.02× /
    0.82–0.91× / 1.02–1.05× / 1.07–1.09× / 1.11–1.12×; H = 256, T = 4 / 16 / 32 / 64 0.76–0.82× /
    0.95–0.98× / 1.01–1.04× / 1.04–1.06×; H = 512, T = 16 / 32 / 64 0.90–1.02× / 0.98–1.12× / 1.08–1.17×;
    H = 768, T = 16 / 32 / 64 1.11–1.25× / 1.17–1.26× / 1.20–1.37×. Two threads, where one row stays
    serial below ``COLS_BEFORE_MIN_HIDDEN`` (:func:`forward_route`): plain H = 96 / 128 / 192, T = 128
    0.84–1.11× / 1.02–1.13× / 0.90–1.43× (medians 1.09 / 1.09 / 1.08). Those figures predate the
    panels' narrow last panel (c6511be: the two products' 2H and H columns end inside a panel at
    H = 64–512, and the padding had cost as much as real columns); again, nine or eleven rounds, two
    or three processes where given as a range: plain H = 64, T = 4 / 8 / 16 / 32 / 64 / 128 / 512
    1.11× / 1.08× / 1.20× / 1.08× / 1.04× / 1.03× / 0.99×; H = 96, T = 12 / 16 / 24 1.07× / 1.17× /
    1.25×; H = 128, T = 8 / 12 / 16 / 24 / 32 0.86× / 0.98× / 0.94–1.05× / 1.01–1.17× / 1.20×; H = 192,
    T = 16 / 32 / 48 0.93× / 1.01–1.08× / 1.05×; H = 256, T = 16 / 24 / 32 / 48 / 64 0.85× / 0.99× /
    0.89–1.15× (the routes before took 407 µs in one process, 505 in another) / 1.17–1.18× /
    1.05–1.07×, but against a copy of 14509e1's code in one process T = 48 0.94× (T = 128 1.04×);
    frozen H = 64, T = 4 / 8 / 16 / 32 / 128 1.12× / 1.18× / 1.06× / 1.09× /
    1.02×, H = 128, T = 8 / 16 0.94× / 1.00×, H = 256, T = 8 / 16 / 24 0.80× / 0.92× / 0.97×, H = 512,
    T = 16 0.86×; two threads H = 64, T = 4 / 32 / 128 1.08× / 1.11× / 1.03×. Hence from 64 units:
    from 4 steps at H = 64, 24 to 128 (H = 129–256 still from 128), 48 to 512 (packed, from 4 at
    H = 64)."""
    if reset_after:
        table = FUSED_MIN_STEPS_PACKED if packed else FUSED_MIN_STEPS
    else:
        table = FUSED_BEFORE_MIN_STEPS_PACKED if packed else FUSED_BEFORE_MIN_STEPS
    return (dtype == np.float32 and gate_kind == 0 and not use_clip
            and B == 1 and FUSED_MIN_HIDDEN <= H <= FUSED_MAX_HIDDEN
            and T >= next((s for h_max, s in table if H <= h_max), 1 << 62)
            and fused_ready())


def dpbf16_recurrence_wanted(T, B, H, threads, dtype, reset_after, gate_kind, use_clip):
    """Whether a recurrence of T steps over B rows on ``threads`` (one: a serial inference forward,
    training's forward and the backward, which ask for one whatever the count, and several
    threads' inference by ranges of rows, :func:`_dpbf16_forward`) multiplies each step's state, or
    gate gradients, by W_hh by AVX512-BF16's bfloat16 products
    (:func:`~numgru.kernels.dpbf16.gru_forward_dpbf16`, :func:`~numgru.kernels.dpbf16.product_rows`;
    W_hh packed on every call): at "medium" precision on CPUs with AVX512-BF16 and no AMX (as
    :func:`dpbf16_projection_wanted`), float32 weights, reset_after with sigmoid gates and no clip,
    from ``DPBF16_MIN_STEPS`` steps. One thread, T = 128, I = H, whole forwards against "highest"
    (``numgru bench --precision medium``): B = 1, H = 64 / 256 / 1024 1.38× / 1.72× / 1.71×; B = 16
    1.41× / 1.69× / 2.26×; B = 64 1.25× / 1.67× / 2.10×."""
    return (dtype == np.float32 and reset_after and gate_kind == 0 and not use_clip and threads == 1
            and T >= DPBF16_MIN_STEPS and matmul_order() == 1 and not amx_ready() and dpbf16_ready())


def digits_wanted(H, order):
    """Whether the recurrence's products on tiles take W_hh's integer digits
    (:func:`~numgru.kernels.amx.pack_digits`) rather than its bfloat16 pieces, at hidden size H and
    products' ``order``: at the default precision from ``AMX_DIGITS_MIN_HIDDEN`` units (below it the
    digits' per-row work, splitting each state and putting three sums together, outweighs the
    halved tile products: one thread, T = 128, the whole forward against the pieces' at B = 64,
    H = 64 4.43–4.46 ms against 3.33–3.40, H = 32 2.15 against 1.19)."""
    return order == 3 and AMX_DIGITS_MIN_HIDDEN <= H <= DIGIT_MAX_K


def _rows_on_digits(H, order):
    """The fewest rows from which the recurrence runs on W_hh's integer digits at hidden size H, by
    ``AMX_DIGIT_ROWS`` ((least H, rows) pairs, the last that H reaches), or a number no batch reaches
    where :func:`digits_wanted` does not hold. Six int8 tile products a block, each twice a bfloat16
    product's work for the same time, and W_hh read at 3 bytes a weight (the pieces' 6, float32's
    4): the tiles pay from fewer rows than on the pieces. Measured on the 2-vCPU Intel machine
    (Emerald Rapids), one thread, T = 128, whole forwards on the digits against the float32 kernels
    (the pieces' in brackets): H = 128, B = 8 / 12 / 16 / 32 0.91× / 1.04× / 1.09× / 1.12× (1.04× /
    1.10× at 16 / 32); H = 192, B = 16 1.26× (1.13×); H = 256, B = 4 / 8 / 10 / 12 / 16 / 32 0.79× /
    1.00× / 1.19× / 1.23× / 1.34× / 1.37× (0.99× at 10); H = 384, B = 8 1.32× (0.65×); H = 512,
    B = 4 / 6 / 8 / 16 0.89× / 1.01× / 1.09× / 1.43×; H = 1024, B = 2 / 4 / 6 / 8 / 16 / 32 0.97× /
    0.99× / 1.14× / 1.16× / 1.41× / 1.30× (1.03× at 16)."""
    return _rows_for(AMX_DIGIT_ROWS if digits_wanted(H, order) else (), H)


def _rows_at_order(H, order):
    """The fewest rows from which the recurrence's product at a lower ``order`` (three or one
    bfloat16 products a float32 one, :func:`set_float32_matmul_precision`) runs on tiles at hidden
    size H, by ``AMX_STEP_ROWS_BY_ORDER`` ((least H, rows) pairs, the last that H reaches), or a
    number no batch reaches. Fewer products make the tiles pay at smaller batches, and at order 1
    W_hh's first piece alone is read, 6·H² bytes against float32's 12·H². Measured on the 2-vCPU
    Intel machine (Emerald Rapids), one thread, T = 128, the whole forward on tiles against the
    float32 kernels: "high", H = 256, B = 2 / 4 / 8 / 12 0.75× / 0.89× / 1.19× / 1.37×; H = 512,
    B = 8 / 12 / 16 0.84× / 1.05× / 1.21×; H = 1024, B = 4 / 8 / 12 / 16 0.86× / 1.04× / 1.41× /
    1.27×; H = 128, B = 4 / 8 0.75× / 1.03×. "medium", H = 1024, B = 1 / 2 / 4 / 16 1.29× / 1.29× /
    1.39× / 1.84×; H = 512, B = 1 / 4 1.78× / 1.82×; H = 256, B = 1 / 2 / 4 / 8 0.90× / 0.98× /
    1.26× / 1.70×; H = 128, B = 4 / 8 0.96× / 1.14×; H = 64, B = 8 / 16 0.94× / 1.10×."""
    return _rows_for(AMX_STEP_ROWS_BY_ORDER.get(order, ()), H)


def _rows_for(table, H):
    """The rows of the last (least H, rows) pair of ``table`` that H reaches, or a number no batch
    reaches."""
    need = 1 << 62
    for h_min, rows in table:
        if H >= h_min:
            need = rows
    return need


def serial_projection_choice(N, I, threads, packed, training, itemsize=4):
    """``(panels, dot)`` for the serial input projection of N rows with I inputs
    (:func:`~numgru.kernels.forward.input_projection_kernel`; ``packed``: the caller has W_ih's panels):
    the panels where :func:`packed_projection` says for packed ones, else where
    :func:`serial_projection_panels` says; otherwise the dot-product block where
    :func:`projection_dot` says, else BLAS. Training always takes BLAS or the block. ``itemsize``: the
    values' bytes (float64's one-thread rule on Zen 4 is its own, :func:`_zen_projection`)."""
    if packed and not training and packed_projection(N, I, threads):
        return True, False
    panels = not training and serial_projection_panels(N, I, threads, itemsize)
    return panels, not panels and projection_dot(N, I, threads, training, itemsize)


def packed_projection(N, I, threads):
    """Whether the serial input projection of N rows with I inputs runs on W_ih's panels when they are
    already packed (a frozen model's, :meth:`numgru.GRU.freeze`), rather than as
    :func:`serial_projection_panels` and :func:`projection_dot` choose with packing to pay for: with
    one thread for I ≤ ``PACKED_PROJ_MAX_INPUTS`` and, for I ≤ ``PACKED_PROJ_MAX_INPUTS_WIDE``, up to
    ``PACKED_PROJ_MAX_ROWS_WIDE`` rows (at I = 1024 a whole forward of T = 128, B = 1 ran 0.98× with
    them); with several BLAS threads, which BLAS then uses, for I ≤ ``PACKED_PROJ_MAX_INPUTS`` up to
    ``PACKED_PROJ_MAX_VALUES_BLAS_THREADS`` values of x (N·I). Measured on the 2-vCPU Intel machine (one thread, float32,
    3I outputs, kernel alone, µs, the panels against the route taken without them): I = 64, N = 1 /
    8 / 32 / 128 / 512 0.75 / 1.73 / 5.44 / 19.3 / 83.4 against 2.52 / 4.86 / 13.6 / 25.3 / 82.0; I =
    128, N = 1 / 32 / 128 / 512 1.73 / 18.5 / 72.6 / 293 against 4.66 / 33.0 / 85.6 / 308; I = 256,
    N = 1 / 32 / 128 / 512 5.42 / 58.4 / 280 / 1130 against 9.71 / 85.6 / 351 / 1214; I = 512, N = 8
    / 32 / 128 / 512 126 / 365 / 1469 / 5850 against 160 / 509 / 1524 / 5225. Two threads, panels
    against the route without them (whole :func:`input_projection`): I = 64, N = 16 / 256 / 512 1.65× /
    1.08× / 0.90×; I = 128, N = 16 / 128 / 256 1.34× / 1.04× / 0.91×; I = 256, N = 16 / 64 / 128
    1.28× / 0.99× / 0.80×; I = 512, N = 8 / 32 1.31× / 0.84×."""
    if threads > 1:
        return I <= PACKED_PROJ_MAX_INPUTS and N * I <= PACKED_PROJ_MAX_VALUES_BLAS_THREADS
    return I <= PACKED_PROJ_MAX_INPUTS or (I <= PACKED_PROJ_MAX_INPUTS_WIDE
                                           and N <= PACKED_PROJ_MAX_ROWS_WIDE)


def packed_step(M, K, B, tiled_max, split=False):
    """Whether a step of B rows (:func:`~numgru.kernels.step.gru_step`) multiplies weights (M, K) on
    their panels when they are already packed (a frozen model's, :meth:`numgru.GRU.freeze`): where the
    forward's rule (:func:`~numgru.kernels.forward.use_panels`) takes panels, and for weights wider
    than ``PACKED_STEP_WIDE_K`` (read from L3) from ``PACKED_STEP_WIDE_MIN_ROWS`` rows. Measured on the
    2-vCPU Intel machine, frozen ``stream.step`` against the model's (paired): one thread, H = 1024,
    B = 2 / 4 / 8 / 16 0.97× / 0.91× / 1.08× / 1.15× on panels; H = 256, B = 1 / 4 / 16 1.24× / 1.22× /
    1.27×; H = 512, B = 4 0.99×; two threads, B = 1, H = 1024, one thread's panels against BLAS's GEMV
    on both 0.53× (which use_panels already declines).

    ``split``: the weights are reset_after=False's W_hh, whose step multiplies its r, z rows and then
    its n rows; one row of them keeps off the panels where ``PACKED_STEP_SPLIT_ONE_ROW`` is false
    (Zen 4: frozen ``stream.step``, one thread, seven rounds taking turns in one process, µs, W_hh's
    panels and W_ih's / W_ih's alone / neither: H = 256 23.5 / 21.5 / 21.9, H = 192 13.1 / 12.7 / 13.0;
    with reset_after, whose steps there run on VNNI digits where the gates allow, hard-sigmoid gates
    at H = 256 21.5 with all panels against 21.8 without; four rows, H = 256, 34.8 on panels against
    37.5)."""
    if not use_panels.py_func(M, K, B, tiled_max, False):
        return False
    if split and B == 1 and not PACKED_STEP_SPLIT_ONE_ROW:
        return False
    return K <= PACKED_STEP_WIDE_K or B >= PACKED_STEP_WIDE_MIN_ROWS


def projection_dot(N, I, threads, training, itemsize=4):
    """Whether the input projection of N rows with I inputs (outside Numba's threads) runs by the
    dot-product block on W_ih as it lies (:func:`~numgru.kernels.dotblock.dot_rows`) instead of BLAS,
    which packs W_ih on every call: for 2 to ``PROJ_DOT_MAX_ROWS`` rows; outside training to
    ``PROJ_DOT_MAX_ROWS_NARROW`` for I ≤ ``PROJ_DOT_NARROW_INPUTS`` with BLAS on several threads, and
    with BLAS on one thread to ``PROJ_DOT_MAX_ROWS_ONE_THREAD``, or ``PROJ_DOT_MAX_ROWS_MID_INPUTS``
    for I in ``PROJ_DOT_MID_INPUTS`` (exclusive, inclusive). Training takes the bound that holds for
    every thread count, so its sums, and its gradients, do not depend on it. Measured on the 2-vCPU
    Intel machine (float32, I = H, 3H outputs,
    kernel alone, µs, BLAS against the block), one thread: H = 256, N = 2 / 8 / 16 / 32 / 64 45.8 /
    51.3 / 65.3 / 104 / 178 against 7.1 / 21.1 / 41.2 / 82.0 / 158; H = 64, N = 2–32 1.16–1.81×, N = 96
    0.69×; H = 1024, N = 8 / 16 / 32 / 48 1.90× / 1.58× / 1.11× / 0.94×; two threads (BLAS threads the
    larger products): H = 256, N = 2 / 8 / 16 / 32 6.45× / 1.47× / 1.01× / 0.83×; H = 1024, N = 8 / 16 /
    32 1.26× / 1.03× / 0.66×. One row stays a GEMV: the block ran level at H = 64 / 512 / 1024 and
    1.35–1.46× at H = 128 / 256 with W_ih alone in L2, not tried in whole forwards. Measured again a
    few sessions later, one thread, against BLAS: H = 256, N = 48 / 64 / 96 / 128 1.32× / 1.15× / 0.97× /
    1.02×; H = 128, N = 48 / 64 1.25× / 1.31× (but the panels are level there, and take I ≤ 128 from
    33 rows: :func:`projection_panels`). Training's float32 projections up to
    ``TRAINING_DOT_MAX_ROWS`` where BLAS's vectors are no wider than Numba's (below the panels'
    :func:`training_panels`): nothing in such a step then calls BLAS, whose threads spin after each call
    beside the directions side by side (:func:`training_directions_apart`); Zen 4, one thread, µs, BLAS
    against the block, (3H, I): (1536, 1024) N = 24 / 32 / 48 / 63 1160 / 1887 / 1869 / 2773 against 847 /
    1704 / 1637 / 2350; (768, 256) 166 / 193 / 272 / 390 against 110 / 154 / 227 / 288; (600, 40) 33 / 48 /
    70 / 96 against 20 / 25 / 53 / 70 (float64 lost from 32 rows: 1536 × 1024 N = 48 5.3 against 7.1 ms)."""
    if training:
        return 2 <= N <= (TRAINING_DOT_MAX_ROWS if itemsize == 4 and not WIDE_BLAS else PROJ_DOT_MAX_ROWS)
    if threads > 1:
        # the block on one thread still beat BLAS on two for I ≤ 128 (µs, I = 64 / 128, N = 17: 6.4 /
        # 18.5 against 9.6 / 22.4; N = 32: 9.1 / 27.5 against 14.0 / 30.4)
        return 2 <= N <= (PROJ_DOT_MAX_ROWS_NARROW if I <= PROJ_DOT_NARROW_INPUTS else PROJ_DOT_MAX_ROWS)
    if ZEN_PROJECTION:  # (see projection_panels)
        return 2 <= N <= _zen_projection(I, itemsize)[1]
    lo, hi = PROJ_DOT_MID_INPUTS
    return 2 <= N <= (PROJ_DOT_MAX_ROWS_MID_INPUTS if lo < I <= hi else PROJ_DOT_MAX_ROWS_ONE_THREAD)


def serial_projection_panels(N, I, threads, itemsize=4):
    """Whether the serial kernel (:func:`~numgru.kernels.forward.input_projection_kernel`) multiplies N
    rows by W_ih (I inputs) on packed panels, on one thread, rather than in BLAS on ``threads``: as
    :func:`projection_panels` says for one thread; with BLAS on several threads only for the few rows
    where one thread's panels still beat it, ``PROJ_PANELS_BLAS_THREADS`` ((most inputs, most rows)
    pairs). Measured on the 2-vCPU Intel machine (float32, 3I outputs, µs, panels against BLAS on two
    threads, packing included): I = 64, N = 64 / 128 / 256 14.7 / 25.0 / 45.3 against 23.4 / 36.7 /
    46.0; I = 128, N = 64 / 128 47.7 / 87.9 against 54.3 / 81.7. (Zen 4's own one-thread table,
    ``PROJ_ONE_THREAD_ZEN``, was not measured against BLAS on several threads: there the rule above
    holds on every CPU.)"""
    if threads == 1:
        return projection_panels(N, I, 1, itemsize)
    if not _panels_one_thread(N, I):
        return False
    for max_inputs, max_rows in PROJ_PANELS_BLAS_THREADS:
        if I <= max_inputs:
            return N <= max_rows
    return False


def _panels_one_thread(N, I):
    """:func:`projection_panels` on one thread by ``PROJ_PANELS_MIN_ROWS`` (measured on Intel)."""
    for max_inputs, min_rows in PROJ_PANELS_MIN_ROWS:
        if I <= max_inputs:
            return N >= min_rows
    return False


def _zen_projection(I, itemsize=4):
    """The entry of ``PROJ_ONE_THREAD_ZEN`` for I inputs; float64 (``itemsize`` 8) past
    ``PROJ_ZEN_64_INPUTS`` inputs ``PROJ_ZEN_64``: the block to 32 rows, BLAS beyond. Measured on the
    2-vCPU AMD EPYC (float64, one thread, 3I outputs, kernel alone, packing included, time over
    BLAS's, panels / block): I = 384, N = 24 / 32 / 96 / 128 / 256 1.21 / 1.04 / 1.06 / 1.00 / 1.04,
    0.86 / 0.93 / 1.17 / 1.18 / 1.22; I = 512, N = 32 / 64 / 128 / 256 / 1024 1.32 / 1.08 / 0.98 /
    0.99–1.14 / 1.03–1.05, 0.94–1.16 / 1.13 / 1.18–1.21 / 1.18–1.32 / 1.46; I = 768 / 1024, N = 32 /
    48 / 128 / 256 1.24–1.70 / 1.06–1.60 / 1.20–1.35 / 1.10–1.30, 1.04–1.11 / 1.06–1.10 / 1.31–1.37 /
    1.47–1.84 (N = 24 0.86–0.87: the block)."""
    if itemsize == 8 and I > PROJ_ZEN_64_INPUTS:
        return PROJ_ZEN_64
    return next(entry for entry in PROJ_ONE_THREAD_ZEN if I <= entry[0])


def projection_panels(N, I, threads, itemsize=4, M=0):
    """Whether the input projection of N rows with I inputs (M outputs) on ``threads`` Numba threads (1:
    the serial kernel) runs on packed panels of W_ih (:func:`~numgru.kernels.panel.panel_rows`): the packing is one
    pass over W_ih, so past a number of rows, and for inputs few enough that the panels beat the
    alternative. Measured on the 2-vCPU Intel machine (float32, H = I):

    - one thread, against OpenBLAS's GEMM (kernel alone, paired): I = 64 1.20–1.23×, I = 128 1.11×,
      I = 256 1.00× (N = 2048–8192) but 0.97× at N = 128–512, I = 512 0.88×, I = 1024 0.74×. Fewer
      rows, packing included, since the panels are transposed in registers (kernel alone, µs, two
      runs, panels against the dot-product block and BLAS): I = 64, N = 8 / 16 / 32 / 64 3.6 / 5.1 /
      7.7–7.9 / 12.8–13.4 against 3.9 / 6.5–6.6 / 12.3 / 22.7–23.9 and 5.6 / 7.1 / 13.5 / 23.4–24.1;
      I = 128, N = 16 / 32 / 64 / 128 16.8–17.1 / 26.4–26.6 / 46.3 / 86.0 against 15.1–15.2 /
      28.6–29.3 / 56.6–58.0 / 116 and 23.0–23.5 / 40.1 / 72.0–72.3 / 106; I = 256, N = 32 / 64 / 128
      / 512 108–109 / 183–190 / 347 / 1327 against 105–106 / 205–216 / 429 / 1768 and 134–136 /
      233–234 / 380 / 1378: panels from the rows that ``PROJ_PANELS_MIN_ROWS`` gives per (most
      inputs, fewest rows), for I = 256 from 128 (whole forwards at B = 1, H = 256, T = 64 ran
      0.97–1.00× with them from 64); fewer rows take :func:`projection_dot`, wider inputs BLAS.
      With several BLAS threads, see :func:`serial_projection_panels`.
    - two Numba threads, against Numba's tiled matmul (whole forward, T = 128, paired): B = 16, H = 256
      1.40×; B = 64, H = 64 / 128 1.65× / 1.50×; B = 4 / 8, H = 256 / 512 1.19× / 1.13×; B = 16,
      H = 512 1.01×; but B = 4 / 1, H = 1024 0.98× / 0.82× (12 MB of W_ih packed for 128–512 rows):
      panels for N ≥ ``PROJ_PANELS_MIN_ROWS_PARALLEL`` and I ≤ ``PROJ_PANELS_MAX_INPUTS_PARALLEL``,
      or any I from ``PROJ_PANELS_MIN_ROWS_PARALLEL_WIDE`` rows. Since the panels are filled in
      L1-sized blocks (:func:`~numgru.kernels.panel.fill_panel`), the kernel alone at I = H = 1024:
      N = 256 / 512 / 2048 1.20× / 1.34–1.47× / 1.40×, N = 128 0.93×; I = H = 768: N = 256 / 512 /
      1024 0.90× / 1.80× / 1.37×; whole forward, paired against 545ae11: B = 4, H = 768 / 1024
      1.10× / 1.11×, B = 8, H = 1024 1.19× (it had taken 2048 rows to repay packing 12 MB).

    float64 on several threads takes wide panels (W_ih (M, I) of ``WIDE_PANELS_BYTES`` or more, which
    few rows multiply by ranges of panels, each packed by its task,
    :func:`~numgru.kernels.forward.input_projection_parallel`) from ``PROJ_PANELS_PARALLEL_F64_WIDE``
    rows: 2-vCPU AMD EPYC, two threads, 3I outputs, ms, the panels packed in the call against the tiled
    matmul (BLAS's two threads): I = 1024, N = 16 / 32 / 64 / 128 1.76 / 3.11 / 5.23 / 9.86 against
    1.86 / 4.00 / 6.98 / 11.1 (2.67 / 3.14 / 5.88 / 9.19); I = 768, N = 32 / 48 / 64 / 128 1.66 / 2.20 /
    2.95 / 5.16 against 1.87 / 2.66 / 3.90 / 6.02; I = 512, N = 16 / 32 / 64 / 96 0.38 / 0.65 / 1.15 /
    1.76 against 0.40 / 0.81 / 1.71 / 2.37. Narrower ones follow ``PROJ_PANELS_PARALLEL_F64`` ((most
    inputs, fewest rows)),
    measured on the 2-vCPU AMD EPYC (two threads, 3I outputs, the panels packed by both threads,
    time of the tiled matmul over the panels', medians of three rounds taking turns in one process):
    I = 64–512 level at N = 64 (0.99–1.21×), 1.05–1.19× at N = 96, 1.14–1.35× at N = 128, 1.21–1.42×
    at N = 256–512; I = 768 0.89× at N = 64, 1.07–1.29× from 96; I = 1024 0.96–0.99× at N = 96–192,
    1.07–1.10× from 256; 32 rows 0.74–0.89× at every I. float32 there read level to 0.82× at
    N = 192–256 beyond I = 256 in the same run (panels ahead only at I ≤ 128) where the rule above
    takes the panels: not changed on one noisy run without whole forwards to confirm it.

    On Zen 4 one thread follows ``PROJ_ONE_THREAD_ZEN`` (:func:`_zen_projection`), measured on the
    2-vCPU AMD EPYC (kernel alone, packing included, 3I outputs, µs, panels / dot-product block /
    BLAS): I = 64, N = 16 / 32 / 96 5.7 / 6.0 / 8.2, 9.5 / 12.7 / 14.5, 24.1 / 36.3 / 28.6; I = 128,
    N = 16 / 24 / 64 19.2 / 18.4 / 24.1, 26.1 / 27.4 / 37.5, 61.4 / 70.9 / 83.5; I = 256, N = 32 / 48 /
    96 / 256 132 / 127 / 154, 188 / 190 / 222, 358 / 379 / 405, 916 / – / 990 (1.07–1.17× BLAS from 16
    rows); I = 512, N = 32 / 96 / 128 / 512 543 / 480 / 585, 1489 / 1441 / 1594, 1948 / 1950 / 2070,
    7488–7711 / 8055–8149 / 7739–8046; I = 768, N = 128 / 256 4641 / 4250–4335 / 4700, 8680 / 8740 /
    8750; I = 1024, N = 128 / 192 / 512 / 2048 9150–9260 / 8730–9130 / 9910–9940, 12500 / 13500 / 13500,
    32200–32400 / 32600 / 32300–32800, 132000–141000 / – / 124000–127000 (the panels' depth, K = 1024,
    no longer in L1). Whole forwards, one thread, against the Intel rules (ms, medians, three rounds
    taking turns): T = 32, B = 4, H = 512 4.41–4.52 against 4.76–4.81; T = 48, B = 2, H = 256
    0.84–0.85 against 0.89–0.94; T = 128, B = 1, H = 384 / 512 4.02–4.12 / 7.08–7.54 against
    4.15–4.29 / 7.18–7.96; H = 640 / 768 and B = 4, H = 512 at 256 / 512 rows level. Wider inputs
    take the block to 128 rows and BLAS beyond (an earlier comparison in whole forwards read the two
    level); measured again with BLAS pinned to one thread, the kernel alone at I = 1024, N = 48 /
    64 / 128 / 256 / 512, ms, block against BLAS: 3.04 / 4.03 / 8.07–9.69 / 16.1–16.6 / 31.8 against
    3.36 / 4.44 / 9.82–10.12 / 17.2–17.5 / 32.2 (panels 8.65–8.79 at 128 rows); I = 2048, N = 32 /
    64 / 128 / 256 9.5 / 18.9 / 37.4 / 75.4 against 12.3 / 20.0 / 40.2 / 70.1. Whole forwards, B = 1,
    H = 1024, three rounds taking turns, against 32 rows: T = 64 / 96 / 128 14.9–15.9 / 22.0–22.6 /
    28.4–29.8 against 15.7–16.0 / 22.9–23.6 / 29.5–30.2; I = 2048 level.
    """
    if threads == 1:
        if ZEN_PROJECTION:
            _, dot_rows_most, panels_beyond = _zen_projection(I, itemsize)
            return panels_beyond and N > dot_rows_most
        return _panels_one_thread(N, I)
    if itemsize == 8:
        if M * I * itemsize >= WIDE_PANELS_BYTES:
            return N >= PROJ_PANELS_PARALLEL_F64_WIDE
        for most_inputs, fewest_rows in PROJ_PANELS_PARALLEL_F64:
            if I <= most_inputs:
                return N >= fewest_rows
    return N >= PROJ_PANELS_MIN_ROWS_PARALLEL and (I <= PROJ_PANELS_MAX_INPUTS_PARALLEL
                                                   or N >= PROJ_PANELS_MIN_ROWS_PARALLEL_WIDE)


def training_tape(T, B, H, clip, dtype):
    """The training forward's tape for T steps of B rows, (T, B, 4H), or 5H with ONNX's ``clip`` (the
    kernel's ``tape``, :func:`~numgru.kernels.forward._gru_forward`), on a :func:`recycled` buffer."""
    return recycled("tape", (T, B, (5 if clip is not None else 4) * H), dtype)


def one_step_as_product(T, B, W_hh, threads):
    """Whether an inference call of one step (given h0, reset_after) on the columns route takes W_hh h0
    + b_hh as a projection of h0's B rows by ranges of W_hh's panels (:func:`project_on_threads`) and
    then the gates (:func:`~numgru.kernels.forward.step_from_products`), rather than the columns
    kernel, whose blocks each pack their rows of W_hh and multiply them apart: float64 weights of
    ``ONE_STEP_PRODUCT_MIN_BYTES`` or more, over the rows where the threaded projection takes panels
    (:func:`projection_panels`) and splits them by panels (up to ``COLUMN_SPLIT_MAX_ROWS``).
    Measured on the 2-vCPU AMD EPYC (two threads, whole calls, I = H, medians of six rounds taking
    turns in one process, the columns kernel's time over this one's): float64 B = 128, H = 1024 / 768 /
    640 1.09× / 1.09× / 1.10×; B = 32, H = 1024 1.20×; B = 256, H = 1024 1.14×; B = 64, H = 768 1.08×;
    H = 512 (6 MB) 0.96–1.09×, B = 48, H = 640 1.01×; float32 B = 512, H = 1024 0.90×, B = 1024,
    H = 768 0.92× (hence float64 only)."""
    H = W_hh.shape[1]
    return T == 1 and threads > 1 and W_hh.dtype == np.float64 and B <= COLUMN_SPLIT_MAX_ROWS and \
        W_hh.size * W_hh.itemsize >= ONE_STEP_PRODUCT_MIN_BYTES and \
        projection_panels(B, H, threads, W_hh.itemsize, W_hh.shape[0])


def gru_direction_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, alpha, beta,
                          clip, y, col0, h_n, store=False, route=None, packed=None, pieces=None, tape=None,
                          first_taken=False):
    """Run one direction of one layer. Shapes as in :func:`numgru.kernels.forward._gru_forward`;
    h_n (B, H) C-contiguous receives the final state.

    ``clip`` is None or a positive float; ``route`` as from :func:`forward_route` (trusted: "columns"
    only for inference, with float weights where reset_after=False). ``packed``: W_hh's panels
    packed once by the caller (a frozen model's: the last two of
    :func:`~numgru.kernels.step.step_panels`), or None; the serial
    kernel and the rows route read them, the columns route packs its own blocks. ``pieces``: the
    caller's :class:`FrozenPieces` (a frozen or quantized model's), which keep W_hh's AMX packing for
    the ranges of rows on tiles, or None. ``tape``: where to write the tape when ``store`` (T, B, 4H or
    5H) C-contiguous, a caller's view of :func:`training_tape`'s, else one made here.
    ``first_taken``: the caller took the direction's first step from the zero state itself (W_hh not
    read), so gx holds the other steps; the routes' rules then count T + 1 steps, the direction's
    whole (they were measured on whole forwards, and the backward's rule counts the tape's T: the
    tiles' forward and backward are then chosen together). Returns the tape, None unless ``store``.
    """
    T, B, H3 = gx.shape
    H = H3 // 3
    dtype = gx.dtype
    if not store:
        tape = empty_array(dtype, 3)
    elif tape is None:
        tape = training_tape(T, B, H, clip, dtype)
    if B == 0 or T == 0:
        h_n[...] = h0
        return tape if store else None
    threads = thread_count()
    T_rule = T + bool(first_taken)
    sorted_desc = is_sorted_desc(lengths)
    tiled_max = training_tiled_max() if store else inference_tiled_max(threads, B)
    gates = (*gate_scalars(dtype, gate_kind, alpha, beta, clip), y, int(col0), h_n)
    if packed is None:
        empty = empty_array(W_hh.dtype, 3)
        packed = (empty, empty)
    if not store and threads > 1 and _amx_rows_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after,
                                                       gate_kind, clip, y, col0, h_n, threads, pieces, T_rule):
        return None
    if store and _amx_training_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, clip,
                                       y, col0, h_n, tape, threads, T_rule):
        return tape
    if (store or threads > 1) and _dpbf16_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after,
                                                  gate_kind, clip, y, col0, h_n, tape, store, threads, T_rule):
        return tape if store else None
    if serial_forward(route):
        # the serial kernel, without the parallel slot (a small call's Python time shows: T = 1,
        # B = 1, H = 8 forward 12.1 µs); training's rows in ranges side by side where they may be
        ranges = training_row_ranges(T, B, W_hh.shape[1], lengths, dtype) if store else None
        if ranges and packed[0].shape[0] == 0:
            # the panels the whole batch would pack, packed once and handed to every range (a range's
            # fewer rows alone might not repay them), so each row sums as in one call over all rows
            Tp = panel_steps.py_func(T, B, True)
            packed = own_panels(W_hh, bool(reset_after), B, Tp, tiled_max)
        args = (gx, W_hh, packed, b_hh, h0, lengths, sorted_desc, bool(reverse), bool(reset_after), *gates,
                bool(store), tape, tiled_max)
        if ranges:
            side_by_side(gru_forward_serial, [(*args, b0, b1) for b0, b1 in ranges], len(ranges))
        else:
            gru_forward_serial(*args, 0, B)
        return tape if store else None
    common = (gx, W_hh, packed, b_hh, h0, lengths, sorted_desc, bool(reverse))
    digits = route == "columns" and lengths.min() == T and vnni_columns_wanted(
        T_rule, B, H, threads, W_hh.dtype, reset_after, gate_kind, clip is not None, pieces is not None)
    with parallel_slot(True) as par:
        if par and route == "columns":
            # one row on W_hh's VNNI digits where they pay, else (or where they refuse) float32
            if not reset_after and W_hh.dtype != np.uint16:
                # its steps in two halves (r ⊙ h over all units before W_hn's product)
                if not (digits and _run_vnni_columns(gx, W_hh, b_hh, h0, reverse, y, col0, h_n, threads, pieces,
                                                     False)):
                    gru_forward_cols_before(gx, W_hh, b_hh, h0, lengths, sorted_desc, bool(reverse), *gates,
                                            threads)
            elif not reset_after:  # (bfloat16 weights: no such kernel; forward_route gives none)
                gru_forward_serial(*common, False, *gates, False, tape, tiled_max, 0, B)
            elif digits and _run_vnni_columns(gx, W_hh, b_hh, h0, reverse, y, col0, h_n, threads, pieces):
                pass
            elif one_step_as_product(T, B, W_hh, threads):
                # W_hh h0 + b_hh as a projection of h0's rows (by ranges of W_hh's panels), then the gates
                gh = workspace("step_product", (B, 3 * H), dtype)
                h0c = np.ascontiguousarray(h0)  # (one layout for both kernels: one signature each)
                project_on_threads(h0c, W_hh, empty_array(dtype, 3), b_hh, True, gh, True, threads)
                step_from_products(gx[0], gh, h0c, lengths, *gates)
            else:
                gru_forward_cols(gx, W_hh, b_hh, h0, lengths, sorted_desc, bool(reverse), *gates, threads)
        elif par and route == "rows":
            if packed[0].shape[0] == 0 and rows_share_panels(B, H, W_hh.dtype.itemsize, threads):
                # (as forward.own_panels packs them: W_hh, or its r, z rows and its n rows)
                packed = ((packed_panels_on_threads(W_hh), packed[1]) if reset_after else
                          (packed_panels_on_threads(W_hh[:2 * H]), packed_panels_on_threads(W_hh[2 * H:])))
                common = (*common[:2], packed, *common[3:])
            args = (*common, bool(reset_after), *gates, bool(store), tape)
            serial = native_address(gru_forward_serial, (*args, -1, 0, B))
            gru_forward_rows(*args, threads, serial)
        elif route == "rows" and not sorted_desc:
            # another thread holds the slot and the rows were dealt for the rows route (not sorted as
            # a whole): run the serial kernel chunk by chunk, so each chunk still skips its finished rows
            cs, nc = row_chunks.py_func(B, threads)
            for c in range(nc):
                b0, b1 = c * cs, min(B, (c + 1) * cs)
                gru_forward_serial(gx, W_hh, packed, b_hh, h0, lengths, is_sorted_desc(lengths[b0:b1]),
                                   bool(reverse), bool(reset_after), *gates, bool(store), tape, tiled_max,
                                   b0, b1)
        else:  # a named route whose parallel slot another thread holds
            gru_forward_serial(*common, bool(reset_after), *gates, bool(store), tape, tiled_max, 0, B)
    return tape if store else None


#: float64 hidden units and rows a chunk from which the rows route's chunks share W_hh's panels
ROWS_SHARED_PANELS_MIN_H = 512
ROWS_SHARED_PANELS_MIN_CHUNK = 64


def rows_share_panels(B, H, itemsize, threads):
    """Whether the rows route's chunks multiply on W_hh's panels packed once on every thread
    (:func:`~numgru.kernels.forward.packed_panels_on_threads`) rather than each on its own terms
    (unpacked over few steps, or each packing a copy of its own, :func:`~numgru.kernels.forward.own_panels`):
    float64 from ``ROWS_SHARED_PANELS_MIN_H`` hidden units and ``ROWS_SHARED_PANELS_MIN_CHUNK`` rows
    a chunk. Measured on the 2-vCPU AMD EPYC (two threads, forwards given h0, I = H, medians of
    three rounds taking turns in one process, time without over time with): float64 H = 512, B = 128
    / 256, T = 1–3 1.07–1.12× / 1.14–1.18×, T = 5–16 1.00–1.03×; but B = 64 (32-row chunks), T = 1–3
    0.72–0.94×, T = 5–8 1.06–1.11×; H = 256 / 384, B = 128, T = 1 0.90–0.91×, beyond level
    (0.95–1.05×). float32 lost or ran level but at H = 512, B = 64, T = 5–16 (1.04–1.11×): T = 1,
    B = 16 / 64 / 128, H = 512 0.42× / 0.63× / 0.80×, H = 256 0.73–0.98×."""
    return itemsize == 8 and H >= ROWS_SHARED_PANELS_MIN_H and \
        row_chunks.py_func(B, threads)[0] >= ROWS_SHARED_PANELS_MIN_CHUNK


def _amx_rows_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, clip, y, col0, h_n,
                      threads, pieces, T_rule):
    """:func:`gru_direction_forward` by ranges of rows on AMX tiles where :func:`amx_rows_chunks` says
    so (for ``T_rule`` steps, the direction's whole), every row running all T steps and
    the parallel slot free; False otherwise (and where the tiles refused a value), the other routes
    then run."""
    T, B, G = gx.shape
    chunks = amx_rows_chunks(T_rule, B, G // 3, threads, W_hh.dtype, reset_after, gate_kind, clip is not None)
    if not chunks or lengths.min() < T:
        return False
    with parallel_slot(True) as par:
        if not par:
            return False
        # (only once the slot is had: a caller without it packs nothing)
        Whv = recurrence_packing(W_hh, pieces, threads=threads, held=True)
        return Whv.shape[0] > 0 and gru_forward_amx_rows(gx.reshape(T * B, G), Whv, b_hh, h0, bool(reverse),
                                                         y, int(col0), h_n, chunks, empty_array(gx.dtype, 3),
                                                         matmul_order())


def _dpbf16_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, clip, y, col0, h_n,
                    tape, store, threads, T_rule):
    """:func:`gru_direction_forward` by AVX512-BF16's bfloat16 products where
    :func:`dpbf16_recurrence_wanted` holds for one thread (for ``T_rule`` steps, the direction's
    whole) and every row runs all T steps: training
    (``store``, the tape written) whatever the thread count, in :func:`training_row_ranges`' ranges
    side by side where it gives some (on the pool's threads, as training's other kernels); inference
    on several threads from ``DPBF16_RANGE_ROWS`` rows a range, one range a thread on Numba's threads
    (:func:`~numgru.kernels.dpbf16.gru_forward_dpbf16_ranges`, the parallel slot free; there as the
    projection before it). A row's sums are the same in any range; one thread's inference takes
    :func:`serial_direction_plan`'s route. False otherwise (and where a value could not be carried):
    the float32 kernels then run, writing everything anew.

    Zen 4, two threads, T = 128, I = H, ``numgru bench --precision medium``, ms against the float32
    routes on both threads: B = 8, H = 64 / 128 0.38–0.44 / 0.93–0.95 against 0.48–0.52 / 1.32–1.36;
    B = 16, H = 64 / 128 / 256 0.59–0.69 / 1.45–1.74 / 5.5–6.6 against 0.89 / 2.43–2.68 / 9.5–10.3;
    B = 64, H = 64 / 256 2.1–3.1 / 21.5–21.9 against 3.4–3.6 / 36.3–36.4. The same ranges on the
    pool's threads lost below about 2¹⁹ multiply-adds a range and step (B = 16, H = 128 3.35 against
    2.7–2.8, the pool's hand-offs and Numba's spinning workers sharing the two cores)."""
    T, B, G = gx.shape
    H = G // 3
    if not dpbf16_recurrence_wanted(T_rule, B, H, 1, W_hh.dtype, reset_after, gate_kind, clip is not None) \
            or gx.dtype != np.float32 or lengths.min() < T:
        return False
    if store:
        ranges = training_row_ranges(T, B, H, lengths, gx.dtype)
    else:
        n = min(threads, B // DPBF16_RANGE_ROWS)
        if n < 2:
            return False
        ranges = [(B * i // n, B * (i + 1) // n) for i in range(n)]
    if not store:
        with parallel_slot(True) as par:  # (W_hh packed only once the slot is had)
            Wp = packed_pairs("dp_hh", W_hh) if par else None
            if Wp is None:
                return False
            args = (gx, Wp, b_hh, h0, bool(reverse), y, int(col0), h_n)
            serial = native_address(gru_forward_dpbf16, (*args, False, empty_array(np.float32, 3), 0, B),
                                    np.bool_(True))
            return gru_forward_dpbf16_ranges(*args, len(ranges), serial)
    Wp = packed_pairs("dp_hh", W_hh)
    if Wp is None:
        return False
    args = (gx, Wp, b_hh, h0, bool(reverse), y, int(col0), h_n, True, tape)
    if not ranges:
        return gru_forward_dpbf16(*args, 0, B)
    return all(side_by_side(gru_forward_dpbf16, [(*args, b0, b1) for b0, b1 in ranges], len(ranges)))


def _amx_training_forward(gx, W_hh, b_hh, h0, lengths, reverse, reset_after, gate_kind, clip, y, col0,
                          h_n, tape, threads, T_rule):
    """:func:`gru_direction_forward` for training (the tape written) on AMX tiles where
    :func:`amx_recurrence_wanted` holds for one thread and every row runs all T steps: whatever the
    thread count, so that the gradients are the same with any; several threads, with the parallel
    slot free, take ranges of at least ``AMX_ROWS_PER_THREAD`` rows, each row's sums those of one
    thread's run. ``T_rule``: the steps the rule counts (:func:`gru_direction_forward`'s). False
    otherwise (and where the tiles refused a value): the float32 kernels then run, writing
    everything anew."""
    T, B, G = gx.shape
    if not amx_recurrence_wanted(T_rule, B, G // 3, 1, W_hh.dtype, reset_after, gate_kind, clip is not None) \
            or lengths.min() < T:
        return False
    Whv = recurrence_packing(W_hh, threads=threads)
    if Whv.shape[0] == 0:
        return False
    gx2 = gx.reshape(T * B, G)
    chunks = amx_row_ranges(B, threads)
    if chunks >= 2:
        with parallel_slot(True) as par:
            if par:
                return gru_forward_amx_rows(gx2, Whv, b_hh, h0, bool(reverse), y, int(col0), h_n, chunks,
                                            tape, matmul_order())
    # the serial kernel with its projection left out (steps 0: gx holds it)
    return gru_forward_amx(gx2, gx2, empty_array(gx.dtype, 3), b_hh, False, False, False, gx2, Whv, b_hh,
                           h0, bool(reverse), y, int(col0), h_n, 0, tape, matmul_order())


def off_blas_dot(N, I, M):
    """Whether a projection of N rows with I inputs and M outputs that :func:`keeps_off_blas` takes off
    BLAS's threads runs on this thread by the dot-product block rather than in a parallel region on
    Numba's: below ``OFF_BLAS_DOT_MAX_WORK`` multiply-adds (N·I·M), one row only for weights of up to
    ``OFF_BLAS_DOT_ONE_ROW_MAX_VALUES`` values (I·M; one L2's worth of float32). Two threads, the kernel
    alone, µs, block against Numba's threads: I = 64, N = 1 / 8 / 32 1.43 / 3.47 / 13.5 against 2.64 /
    4.68 / 14.7; I = 128, N = 2 / 8 4.38 / 11.3 against 6.34 / 12.0; I = 256, N = 2 9.77 against 13.4;
    but I = 128, N = 16 (786432) 19.9 against 18.4, I = 256, N = 4 15.8 against 11.6. One row had
    taken Numba's threads past I = 128 (the kernel alone, I = 256: 9.45 against 6.37), but a whole
    step of one row (T = 1, B = 1: a layer's projection, one step) ran slower that way where W_ih
    fits one L2, the second thread reading its half from L3 and the region's start and end costing
    more than the half saved (2-vCPU AMD EPYC, two threads, one process taking turns with the rule
    before, medians of nine rounds, (I, H) µs): from zero (192, 192) 11.8 against 16.0, (320, 192) 15.8
    against 18.6, (256, 64) 8.2 against 13.5, (1024, 64) 16.9 against 18.5, (256, 256) 17.0 against
    17.6, two layers of (256, 256) 32.7 against 41.6, bidirectional 30.7 against 33.2; from a given
    state (192, 192) 20.1 against 24.7, (256, 256) 30.6 against 33.0. Beyond one L2 the threads kept
    their lead (the block against them: (384, 256) 22.7 against 20.5, (640, 256) 32.3 against 27.2,
    (1024, 128) 29.7 against 28.2)."""
    return N * I * M < OFF_BLAS_DOT_MAX_WORK and (N > 1 or I * M <= OFF_BLAS_DOT_ONE_ROW_MAX_VALUES)


def keeps_off_blas(B, H, threads, store):
    """Whether a serial inference forward of B rows with H hidden units on ``threads`` threads (the
    serial route, :func:`serial_forward`) keeps off OpenBLAS's threads: from two threads where its
    steps' products never reach BLAS (rows that Numba's kernels take with :func:`inference_tiled_max`,
    :func:`~numgru.kernels.forward.numba_rows_past_l2`, and not one row
    beyond L2, H > 256, which keeps its GEMV on several threads,
    :func:`~numgru.kernels.forward.one_row_dot`: with its projection on Numba's threads, each such
    call waited for the scheduler to move Numba's spinning worker off the core OpenBLAS's GEMV wanted,
    T = 1, B = 1, H = 512 / 768 8.0 ms against 0.053 / 0.122 with both in BLAS, two threads, either
    reset variant), or more rows whose steps' GEMMs OpenBLAS runs on the calling thread (3H·H·B
    multiply-adds at most ``BLAS_THREADED_MNK``) or, where BLAS is no wider, that Numba's kernels take
    whatever the thread count (up to ``forward.NUMBA_ROWS_MAX`` rows at H ≤ ``forward.NUMBA_ROWS_MAX_K``,
    :func:`~numgru.kernels.forward.recurrent_matmul`); its input projection then
    runs on Numba's threads where the serial kernel would have called BLAS (the kernel's panels and
    dot-product block, one thread's, stay). OpenBLAS's workers spin for a while after a call, and
    Numba's after a parallel region, so calls that take turns between the pools stall each other: two
    threads, T = 32, H = 192, B = 4 (serial, its projection in BLAS) and 8 (rows route) taking turns
    read 3.7–4.3 ms a call each against 0.6 and 0.7 alone, and after B = 4 calls B = 8 read 16 ms a call
    for about 0.1 s. Numba's threads take W_ih's panels there from ``OFF_BLAS_PANELS_MIN_ROWS`` rows
    (two threads, whole forwards, µs, panels against the tiled matmul: T = 32, B = 4, H = 96 / 128 / 192
    156 / 249 / 508 against 183 / 257 / 525; T = 64, B = 2, H = 128 255 against 266; but T = 16, B = 2,
    H = 192, 32 rows, 188 against 153); products too small to repay a parallel region stay on this
    thread, by the dot-product block (:func:`off_blas_dot`)."""
    if threads < 2 or store:
        return False
    if B > 1 and 3 * H * H * B <= BLAS_THREADED_MNK:  # a step's GEMM too small for OpenBLAS to thread
        return True
    if not WIDE_BLAS and 1 < B <= NUMBA_ROWS_MAX and H <= NUMBA_ROWS_MAX_K:
        return True  # its steps' products in Numba's kernels whatever tiled_max
    if B == 1:
        return H <= 256
    return numba_rows_past_l2.py_func(B, inference_tiled_max(threads, B))


def serial_forward(route):
    """Whether a layer's inference forward of B rows on ``route`` (from :func:`forward_route`) runs
    on the serial kernels (:func:`gru_direction_forward`'s first branch, and the projection outside
    Numba's threads), so that :func:`serial_direction_plan` applies: every forward off the named
    routes."""
    return route is None


class FrozenPieces:
    """The AMX packings (:func:`~numgru.kernels.amx.pack_amx`, :func:`~numgru.kernels.amx.pack_digits`)
    of a frozen model's weight matrices (which never change: its users get read-only views), each made
    on first use and kept with the matrix it came from (a matrix is known by identity; the entry holds
    it, so the identity stays its own)."""

    __slots__ = ("_kept", "bfloat16")

    def __init__(self, bfloat16=False):
        self._kept = {}
        self.bfloat16 = bfloat16  # the matrices hold only bfloat16 values (a quantized model's)

    def of(self, W):
        """W's packing (empty where W holds a value the tiles cannot take)."""
        return self._kept_for(W, "amx", lambda: pack_amx(W))

    def digits_of(self, W, spread=0.0):
        """W's integer digits (:func:`~numgru.kernels.amx.pack_digits`; empty where a row is refused,
        with ``spread`` rows of mixed scales too)."""
        return self._kept_for(W, ("digits", spread), lambda: pack_digits(W, spread))

    def step_digits_of(self, W):
        """``(digits, offsets)``: W's :meth:`digits_of` and the
        :func:`~numgru.kernels.vnni.digit_offsets` of their row sums, as the VNNI step reads them;
        None where a row is refused."""
        def make():
            kept = self.row_sums_of(W)
            return None if kept is None else (kept[0], digit_offsets(kept[1], W.shape[0]))
        return self._kept_for(W, "step digits", make)

    def row_sums_of(self, W):
        """``(digits, row sums)``: W's :meth:`digits_of` and their
        :func:`~numgru.kernels.vnni.digit_row_sums`, as the VNNI recurrence reads them (0.13 ms a
        call at H = 1024 when made on every call); None where a row is refused."""
        def make():
            V = self.digits_of(W)
            if V.shape[0] == 0:
                return None
            R = np.empty(3 * padded.py_func(W.shape[0]), np.int32)
            digit_row_sums(V, *W.shape, R)
            return V, R
        return self._kept_for(W, "row sums", make)

    def _kept_for(self, W, name, make):
        key = (id(W), name)
        entry = self._kept.get(key)
        if entry is None or entry[0] is not W:
            entry = self._kept[key] = (W, make())
        return entry[1]


def serial_direction_plan(W_ih, b_ih, W_hh, b_hh, packed_ih, packed_hh, T, B, threads, reverse,
                          reset_after, gate_kind, alpha, beta, clip, pieces=None, bf16_values=False):
    """The kernel arguments of one direction's inference forward over T ≥ 1 steps of B ≥ 1 rows that
    all run T steps, on the serial kernels (where :func:`serial_forward` holds), for
    :func:`run_serial_direction`: the choices :func:`input_projection` and
    :func:`gru_direction_forward` make on every call, made once. Weights as those two take them
    (``packed_ih``, ``packed_hh``: W_ih's panels and the pair of W_hh's, or None); the arrays are
    kept, not copied, so a plan stays current while they are changed in place. ``pieces``: a frozen
    model's :class:`FrozenPieces`, whose AMX packings the plan then keeps (else each call packs);
    ``bf16_values``: the weights hold only bfloat16 values (a quantized model's), for
    :func:`amx_recurrence_wanted`. Where :func:`fused_recurrence_wanted` holds (one row), the
    plan's last item is :func:`~numgru.kernels.fused.gru_forward_fused`'s arguments,
    which run the projection and the recurrence together in place of the others."""
    dtype = W_ih.dtype  # gx's (W_hh may be a quantized model's bfloat16 copy)
    empty = empty_array(dtype, 3)
    gates = gate_scalars(dtype, gate_kind, alpha, beta, clip)
    dp_steps = None
    if dpbf16_recurrence_wanted(T, B, W_hh.shape[1], threads, W_hh.dtype, reset_after, gate_kind,
                                gates[3]) and dtype == np.float32:
        dp_steps = (W_hh, b_hh, bool(reverse))
    steps = 0 if dp_steps else interleave_steps(T, B, W_ih.shape[0], W_ih.shape[1], dtype.itemsize)
    fused_wanted = W_hh.dtype == dtype and fused_recurrence_wanted(
        T, B, W_hh.shape[1], dtype, reset_after, gate_kind, gates[3], packed_ih is not None and packed_hh is not None)
    # a frozen copy's few rows: one row's fused forward rather than the projection on tiles (Intel
    # with AMX, one thread, I = H, frozen, the tiles' route's time over the fused forward's, five
    # rounds taking turns: T = 16, H = 200 / 256 1.44× / 1.11×; T = 32 1.27× / 1.01×, H = 384 0.79×;
    # reset_after=False T = 32, H = 200 / 256 0.99× / 0.80×; from 32 rows the tiles won or ran level
    # but at H = 200, 1.16–1.27× up to 64 rows)
    amx = threads if not steps and not (fused_wanted and T * B < FUSED_OVER_TILES_MAX_ROWS) and \
        amx_projection_wanted(T * B, W_ih.shape[1], threads, dtype, False, pieces=pieces) else 0
    Wv_ih = pieces.of(W_ih) if amx and pieces is not None else None
    dp = threads if not steps and not amx and dpbf16_projection_wanted(
        T * B, W_ih.shape[1], W_ih.shape[0], dtype, dtype if b_ih is None else b_ih.dtype,
        threads=threads) else 0
    panels, dot = serial_projection_choice((steps or T) * B, W_ih.shape[1], threads,
                                           packed_ih is not None, False, W_ih.dtype.itemsize)
    par = 0  # Numba's threads for the projection the serial kernel would take to BLAS
    if not (steps or amx or dp or panels or dot) and keeps_off_blas(B, W_hh.shape[1], threads, False):
        if off_blas_dot(T * B, W_ih.shape[1], W_ih.shape[0]):
            dot = True
        else:
            par = (threads, T * B >= OFF_BLAS_PANELS_MIN_ROWS
                   or projection_panels(T * B, W_ih.shape[1], threads, W_ih.dtype.itemsize, W_ih.shape[0]))
    projection = (W_ih, empty if packed_ih is None else packed_ih,
                  W_ih[0] if b_ih is None else b_ih, b_ih is not None)
    amx_steps = None
    if amx_recurrence_wanted(T, B, W_hh.shape[1], threads, W_hh.dtype, reset_after, gate_kind,
                             gates[3], bf16_values):
        # the AMX kernel's own arguments; the plan below stays the fallback
        amx_steps = (W_hh, b_hh, bool(reverse), (*projection, panels, dot), steps, amx, Wv_ih,
                     None if pieces is None else recurrence_packing(W_hh, pieces, bf16_values), pieces)
    fused_steps = None
    # the fused forward takes the float32 projection's place: not where the tiles or bfloat16
    # products would run it (nor their recurrences)
    if amx_steps is None and not dp_steps and not amx and not dp and fused_wanted:
        fused_steps = (bool(reset_after), W_ih, empty if packed_ih is None else packed_ih,
                       np.zeros(W_ih.shape[0], dtype) if b_ih is None else b_ih, W_hh,
                       *((empty, empty) if packed_hh is None else packed_hh), b_hh, bool(reverse))
    vnni_steps = None
    if amx_steps is None and not steps and not dp_steps and not fused_steps and vnni_recurrence_wanted(
            T, B, W_hh.shape[1], threads, W_hh.dtype, reset_after, gate_kind, gates[3], pieces is not None):
        vnni_steps = (W_hh, b_hh, bool(reverse), bool(reset_after), pieces)
    if packed_hh is None:
        none = empty_array(W_hh.dtype, 3)
        packed_hh = (none, none)
    lengths = np.full(B, T, np.int64)  # writeable, as the layers' own: one signature for both
    weights = (W_hh, tuple(packed_hh), b_hh)
    tiled_max = inference_tiled_max(threads, B)
    if steps:  # gru_forward_chunked's arguments, in the groups run_serial_direction passes them
        return None, None, None, ((*projection, panels, dot), weights,
                                  (lengths, bool(reverse), bool(reset_after), *gates), (tiled_max, steps)), \
            amx_steps, None, None, {}, fused_steps
    recurrence = (weights, (lengths, True, bool(reverse), bool(reset_after), *gates),
                  (False, empty, tiled_max, 0, B))
    return (projection, (panels, dot, amx, Wv_ih, pieces, dp, par), recurrence, None, amx_steps,
            vnni_steps, dp_steps, {}, fused_steps)


def interleave_steps(T, B, M, I, itemsize):
    """Steps of input projection that a serial inference forward of T steps over B rows (W_ih (M, I),
    M = 3H) computes at a time, just before the steps that read them
    (:func:`~numgru.kernels.forward.gru_forward_chunked`), or 0 to project all T·B rows first: chunks
    of about ``INTERLEAVE_CHUNK_BYTES`` of gx where all of it would take more than
    ``INTERLEAVE_MIN_BYTES`` and W_ih, which each chunk reads again, at most
    ``INTERLEAVE_MAX_WEIGHT_BYTES``."""
    row = M * itemsize
    if T * B * row <= INTERLEAVE_MIN_BYTES or M * I * itemsize > INTERLEAVE_MAX_WEIGHT_BYTES:
        return 0
    steps = max(1, INTERLEAVE_CHUNK_BYTES // (B * row))
    return steps if steps < T else 0


def plan_off_blas(plan):
    """Whether a plan from :func:`serial_direction_plan` projects without BLAS: fused with the
    recurrence, on the tiles, by the panels or the dot-product block (chunked or whole), by bfloat16
    products, or on Numba's threads. (Its recurrence stays off BLAS up to 32 rows of at most 512
    units: :func:`~numgru.kernels.forward.recurrent_matmul`.)"""
    _, choice, _, chunked, amx_steps, _, _, _, fused_steps = plan
    if fused_steps is not None or amx_steps is not None:
        return True
    if chunked is not None:
        return bool(chunked[0][-2] or chunked[0][-1])
    panels, dot, amx, _, _, dp, par = choice
    return bool(panels or dot or amx or dp or par)


def run_serial_direction(plan, x2d, gx, h0, y, col0, h_n):
    """One direction of one layer by a plan from :func:`serial_direction_plan`: x2d (T·B, I) and gx
    (T·B, 3H) scratch, C-contiguous; h0 (B, H) and h_n (B, H) C-contiguous, y (T, B, D·H), whose
    columns col0 … col0+H−1 receive h_t, gx, h0, y and h_n aligned and writeable (the caller's own
    arrays). The plan's kernels are called by their compiled entries (:func:`planned_call`)."""
    _, _, recurrence, chunked, amx_steps, vnni_steps, dp_steps, entries, fused_steps = plan
    if amx_steps is not None and _run_amx_direction(amx_steps, x2d, gx, h0, y, col0, h_n):
        return
    kind = x2d.flags.num & ARRAY_KIND  # x2d alone may be the caller's input as it came: its Numba type
    if fused_steps is not None:
        reset_after, W_ih, Wp_ih, b_ih, W_hh, Wp_a, Wp_b, b_hh, reverse = fused_steps
        if reset_after:
            planned_call(entries, ("fused", kind), gru_forward_fused, x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_a, b_hh,
                         h0, reverse, y, col0, h_n)
        else:
            planned_call(entries, ("fused", kind), gru_forward_fused_before, x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_a,
                         Wp_b, b_hh, h0, reverse, y, col0, h_n)
        return
    if chunked is not None:
        projection, weights, scalars, rest = chunked
        # the kernels it calls by address, for the types it hands them (its slices of x2d, gx, y keep
        # their types; its state and tape are new arrays)
        dtype, B = gx.dtype, h0.shape[0]
        project = native_address(input_projection_kernel, (x2d, *projection[:4], gx, *projection[4:]))
        serial = native_address(gru_forward_serial, (gx[:B].reshape(1, B, gx.shape[1]), *weights,
                                                     empty_array(dtype, 2), scalars[0], True, *scalars[1:], y,
                                                     col0, h_n, False, empty_array(dtype, 3), rest[0], 0, B))
        planned_call(entries, ("chunked", kind), gru_forward_chunked, x2d, *projection, gx, *weights, h0,
                     *scalars, y, col0, h_n, *rest, project, serial)
        return
    weights, scalars, rest = recurrence
    _run_plan_projection(plan, x2d, gx)
    T = y.shape[0]
    if dp_steps is not None and _run_dpbf16_direction(dp_steps, gx.reshape(T, gx.shape[0] // T, gx.shape[1]),
                                                      h0, y, col0, h_n):
        return
    if vnni_steps is not None and _run_vnni_direction(vnni_steps, gx.reshape(T, 1, gx.shape[1]), h0, y,
                                                      col0, h_n):
        return
    planned_call(entries, "recurrence", gru_forward_serial, gx.reshape(T, gx.shape[0] // T, gx.shape[1]),
                 *weights, h0, *scalars, y, col0, h_n, *rest)


def _run_plan_projection(plan, x2d, gx):
    """gx = the input projection of a plan from :func:`serial_direction_plan` (not a chunked one), as
    :func:`run_serial_direction` runs it."""
    projection, flags, entries = plan[0], plan[1], plan[7]
    panels, dot, amx, Wv_ih, pieces, dp, par = flags
    kind = x2d.flags.num & ARRAY_KIND  # x2d alone may be the caller's input as it came: its Numba type
    _planned_projection(x2d, (*projection, panels, dot), amx, gx, Wv_ih, pieces, dp, entries, kind,
                        par if kind == ARRAY_KIND else 0)


def run_from_zero(plan, x2d, gx, y, col0, h_n):
    """:func:`run_serial_direction` from the zero state (no h0 given): the whole projection, the first
    step by :func:`~numgru.kernels.forward.first_step_gates` (W_hh h is zero there, so W_hh is not
    read), then for T ≥ 2 the serial kernel over the other T − 1 steps from that state. T = 1 by any
    plan; beyond, only where the plan's recurrence is the serial kernel's (not the fused, chunked,
    AMX, VNNI or bfloat16 ones): False there, nothing written."""
    T, B = y.shape[0], h_n.shape[0]
    if T > 1 and not plain_plan(plan):
        return False
    _run_plan_projection(plan, x2d, gx)
    # the other steps' lengths: writeable int64, as the plan's (one kernel signature)
    others = np.empty(B, np.int64)
    others.fill(T - 1)
    _steps_from_zero(plan, gx.reshape(T, B, gx.shape[1]), plan[2][1][0], others, y, col0, h_n)
    return True


def _steps_from_zero(plan, g3, lengths, others, y, col0, h_n):
    """A plain plan's recurrence over g3 (T, B, 3H) from the zero state: the first step by
    :func:`~numgru.kernels.forward.first_step_gates` (W_hh h is zero there, so W_hh is not read; the
    last step in reverse, where every row runs all T steps), then the other T − 1 steps by the serial
    kernel from that state, ``others`` (B,) int64 holding max(lengths − 1, 0)."""
    weights, scalars, rest = plan[2]
    _, sorted_desc, reverse, reset_after, *gates = scalars
    entries = plan[7]
    T = y.shape[0]
    first = T - 1 if reverse else 0
    h1 = h_n if T == 1 else np.empty_like(h_n)
    planned_call(entries, "first step", first_step_gates, g3[first], weights[2], lengths, reset_after, *gates,
                 y[first:first + 1], col0, h1)
    if T > 1:
        steps = slice(0, T - 1) if reverse else slice(1, T)
        planned_call(entries, "recurrence", gru_forward_serial, g3[steps], *weights, h1, others, sorted_desc,
                     reverse, reset_after, *gates, y[steps], col0, h_n, *rest)


def plain_plan(plan):
    """Whether a plan from :func:`serial_direction_plan` runs the plain serial kernels (its projection,
    then :func:`~numgru.kernels.forward.gru_forward_serial`), the ones :func:`run_padded_direction`
    runs: not the chunked, fused, AMX, VNNI or bfloat16 recurrences."""
    _, _, _, chunked, amx_steps, vnni_steps, dp_steps, _, fused_steps = plan
    return chunked is None and amx_steps is None and vnni_steps is None and dp_steps is None \
        and fused_steps is None


class StackPlan(tuple):
    """A model's plan (its directions' :func:`serial_direction_plan`, layer by layer) that
    :func:`run_stack` runs in one kernel call (:mod:`~numgru.kernels.stack`), with that call's
    arguments (:func:`stack_arguments`): ``addresses``, ``panel_shapes``, ``flags``, ``scalars``
    (reset_after and the gates), ``lengths`` and ``others`` (B,) all T and T − 1, ``directions``,
    ``no_state`` (h0's place from the zero state), ``kernels`` (whether some direction runs the
    plain serial kernels, whether some runs the fused forward); ``natives`` (the kernels' addresses
    per kind of x) and ``entries`` (:func:`~numgru.kernels._jit.planned_call`'s), filled on use.
    Iterated, the directions' plans, which the other paths run one by one."""


def stack_arguments(plans, T, B, directions, zero_bias, scalars):
    """A :class:`StackPlan` of ``plans`` (every direction of every layer over B rows of T steps, layer
    by layer, ``directions`` a layer) where each runs, on float weights of one dtype and the packed
    panels its plan keeps if any (a frozen model's), either the plain serial kernels (a
    :func:`plain_plan` whose projection is not on tiles, bfloat16 products or Numba's threads) or the
    fused forward (:func:`~numgru.kernels.fused.gru_forward_fused`, one row); else None. ``zero_bias``:
    zeros (3H,) of the weights' dtype, b_ih's place without bias; ``scalars``: (reset_after, *gates) as
    the kernels take them (:func:`gate_scalars`).

    The kernel finds each direction's weights by the addresses read here from the arrays the plans
    keep, so they must stay the plans' (they do: a model that replaces its arrays drops its plans),
    and weights changed in place are read as they are. Measured on Zen 4 (one thread, whole forwards
    ``gru(x)`` from Python, one process, µs, the stack against each direction's calls): (T, B, I, H,
    layers, directions) (1, 1, 64, 64, 1, 1) 6.3 against 7.2; (8, 1, 64, 64, 1, 1) 14.4 / 16.8;
    (3, 2, 10, 20, 3, 2) 19.5 / 52.9; (10, 1, 32, 32, 2, 2) 26.4 / 47.0. The same kernels run in the
    same order: the values are equal bit for bit."""
    n = len(plans)
    addresses = np.empty((n, 7), np.int64)
    panel_shapes = np.empty((n, 3, 3), np.int64)
    flags = np.empty((n, 6), np.int64)
    plain = fused = False
    for i, p in enumerate(plans):
        runs_fused = p[8] is not None and p[4] is None  # (the tiles' recurrence would run first)
        if not (runs_fused or plain_plan(p)):
            return None
        panels = dot = use_bias = False
        tiled_max = 0
        if not runs_fused or T == 1:
            # the plan's projection: its serial kernels', or on a fused plan one step from the zero
            # state, which takes the projection and the first step's gates as run_from_zero does for any
            # plan (W_hh not read)
            (W_ih, Wp_ih, bias, use_bias), (panels, dot, amx, _, _, dp, par) = p[0], p[1]
            if amx or dp or par:
                return None
            b_ih = bias if use_bias else zero_bias
            plain = True
        if runs_fused:
            _, W_ih, Wp_ih, b_ih, W_hh, Wp_a, Wp_b, b_hh, reverse = p[8]  # (b_ih zeros without bias)
            fused = True
        else:
            (W_hh, (Wp_a, Wp_b), b_hh), gates, rest = p[2]
            if rest[0] or rest[3] != 0:
                return None
            reverse, tiled_max = gates[2], rest[2]
        M = W_hh.shape[0]
        panels_kept = (Wp_ih, Wp_a, Wp_b)
        for a, shape in ((W_ih, (M, W_ih.shape[1])), (b_ih, (M,)), (W_hh, (M, M // 3)), (b_hh, (M,)),
                         *((Wp, Wp.shape if Wp.ndim == 3 else None) for Wp in panels_kept)):
            # (the kernel reads these shapes there: what the plans hold, checked once)
            if a.dtype != zero_bias.dtype or a.shape != shape or not a.flags.c_contiguous:
                return None
        addresses[i] = weight_addresses(W_ih, b_ih, W_hh, b_hh, *panels_kept)
        panel_shapes[i] = kept_shapes(panels_kept)
        flags[i] = (bool(panels), bool(dot), bool(use_bias), bool(reverse), tiled_max, runs_fused)
    stack = StackPlan(plans)
    stack.addresses, stack.panel_shapes, stack.flags = addresses, panel_shapes, flags
    stack.scalars, stack.directions = tuple(scalars), directions
    stack.lengths = np.full(B, T, np.int64)
    stack.others = np.full(B, T - 1, np.int64)
    stack.no_state = empty_array(zero_bias.dtype, 3)
    stack.kernels = (plain, fused)
    stack.natives, stack.entries = {}, {}
    return stack


def layer_output(layer, layers, shape, dtype, scratch_out):
    """The array (T, B, D·H) an inference forward's ``layer`` (of ``layers``) writes: this thread's
    scratch, two names in turn, where the next layer uses it up or the caller copies it
    (``scratch_out``), else a new array."""
    if layer < layers - 1 or scratch_out:
        return workspace(f"y{layer % 2}", shape, dtype)
    return np.empty(shape, dtype)


def run_stack(plan, x, h0, h_n, lengths=None, others=None, scratch_out=False):
    """Every layer and direction of a :class:`StackPlan` by :func:`~numgru.kernels.stack.
    gru_stack_forward`: x (T, B, I) C-contiguous in the model's dtype, h0 (L·D, B, H) owned or None
    (the zero state), h_n (L·D, B, H) out; returns y (T, B, D·H) (:func:`layer_output`'s, the inner
    layers' outputs in the same scratch), as the directions' calls one by one
    (:func:`run_serial_direction`, :func:`run_from_zero`) would write them; over padded rows
    (``lengths`` (B,) int64, non-increasing, owned, ``others`` max(lengths − 1, 0); a plan whose
    directions all run the plain serial kernels) as :func:`run_padded_direction` would."""
    T, B, I = x.shape
    H = h_n.shape[2]
    dtype = h_n.dtype
    kind = x.flags.num & ARRAY_KIND
    gx = workspace("gx", (T * B, 3 * H), dtype)
    L = len(plan) // plan.directions
    shape = (T, B, plan.directions * H)
    y = layer_output(L - 1, L, shape, dtype, scratch_out)
    ya = layer_output(0, L, shape, dtype, scratch_out) if L > 1 else y  # the inner layers' (even, odd)
    yb = layer_output(1, L, shape, dtype, scratch_out) if L > 2 else ya
    natives = plan.natives.get(kind)
    if natives is None:
        natives = plan.natives[kind] = _stack_natives(plan, x, gx, ya, np.empty((B, H), dtype), h_n)
    padded = lengths is not None
    planned_call(plan.entries, kind, gru_stack_forward, x, plan.addresses, plan.panel_shapes, plan.flags,
                 plan.no_state if h0 is None else h0, h0 is None, ya, yb, y, gx, h_n,
                 lengths if padded else plan.lengths, others if padded else plan.others, padded, *plan.scalars,
                 plan.directions, natives)
    return y


def _stack_natives(plan, x, gx, y, h1, h_n):
    """The addresses :func:`~numgru.kernels.stack.gru_stack_forward` calls for x's kind of array
    (``natives``, int64, zero for a kernel no direction runs): the projection's for layer 0's input
    and for an inner layer's, the first step's, the serial forward's, the fused forward's for layer
    0's input and an inner layer's, taken for arguments of the types the stack hands them
    (:func:`native_address`)."""
    T, B, I = x.shape
    dtype = y.dtype
    W_ih = plan[0][0][0]
    W_hh = plan.no_state.reshape(0, 0)  # (a 2-D array of the weights' type)
    bias = np.zeros(3 * h_n.shape[2], dtype)
    empty = plan.no_state
    g3 = gx.reshape(T, B, gx.shape[1])
    x2d, inner = x.reshape(T * B, I), y.reshape(T * B, y.shape[2])
    reset_after, *gates = plan.scalars
    plain, fused = plan.kernels
    natives = np.zeros(6, np.int64)
    if plain:
        natives[:4] = (
            native_address(input_projection_kernel, (x2d, W_ih, empty, bias, True, gx, True, True)),
            native_address(input_projection_kernel, (inner, W_ih, empty, bias, True, gx, True, True)),
            native_address(first_step_gates, (g3[0], bias, plan.lengths, reset_after, *gates, y[0:1], np.int64(0),
                                              h1)),
            native_address(gru_forward_serial, (g3, W_hh, (empty, empty), bias, h1, plan.lengths, True, True,
                                                reset_after, *gates, y, np.int64(0), h_n[0], False, empty,
                                                np.int64(1), np.int64(0), np.int64(B))))
    if fused:
        fused_forward, panels = ((gru_forward_fused, (empty,)) if reset_after
                                 else (gru_forward_fused_before, (empty, empty)))
        natives[4:] = [native_address(fused_forward, (inp, W_ih, empty, bias, W_hh, *panels, bias, h1, True, y,
                                                      np.int64(0), h_n[0])) for inp in (x2d, inner)]
    return natives


def weight_addresses(*arrays):
    """Where each array's data start, 0 for an empty one: a row of the ``addresses`` that the stack
    kernels (:mod:`~numgru.kernels.stack`) read weights from, columns :data:`~numgru.kernels.stack.W_IH`,
    ``B_IH``, ``W_HH``, ``B_HH`` (then the panels kept, for the forward's)."""
    return [a.ctypes.data if a.size else 0 for a in arrays]


def kept_shapes(panels):
    """The shapes of packed panels as the stack kernels read them beside their addresses
    (:func:`weight_addresses`): (0, 0, 0) for an empty one."""
    return [Wp.shape if Wp.size else (0, 0, 0) for Wp in panels]


def step_layer_stackable(layer, dtype):
    """Whether a stream's or a cell's layer ``(W_ih, W_hh, b_ih, b_hh, panels)`` (as
    :class:`numgru.serving.Stepper` holds it) can run inside :func:`~numgru.kernels.stack.gru_step_layers`
    or :func:`~numgru.kernels.stack.gru_cell_step`: float weights and any panels (3-D) of ``dtype``,
    C-contiguous and aligned, as the arrays those kernels make of their addresses are typed."""
    return all(a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned for a in (*layer[:4], *layer[4])) \
        and all(p.ndim == 3 for p in layer[4])


def step_layers_plan(x, h, layers, scalars, tiled_max, state=None, work=None):
    """``(plan, values)`` for :func:`~numgru.kernels.stack.gru_step_layers` (a stream's step of its
    layers), :func:`~numgru.kernels.stack.gru_cell_step` (a cell's, one layer) or
    :func:`~numgru.kernels.stack.gru_forward_step` (a forward's one step) on inputs of x's kind and
    states of h's (B, H): where each layer ``(W_ih, W_hh, b_ih, b_hh, panels)`` (each
    :func:`step_layer_stackable`) keeps its weights and panels, the gate scalars ``(reset_after,
    gate_kind, alpha, beta, use_clip, clip)`` and ``tiled_max`` as gru_step takes them, gru_step's
    addresses for the types those kernels hand it (arrays made of addresses or allocated there:
    C-contiguous, aligned, writeable; every layer's state as h), and a stream's two (L, B, H) state
    buffers ``state`` and its workspaces ``work`` (gi, gh (B, 3H)). Addresses are read from the
    arrays as they are, so a copy of the stream, cell or model makes its own plan."""
    reset_after, gate_kind, alpha, beta, use_clip, clip = scalars
    B, H = h.shape
    M = 3 * H

    def e(*shape):  # an array of the type the kernels hand gru_step
        return np.empty(shape, x.dtype)

    def native(inp, state_in, K):
        return native_address(gru_step, (inp, state_in, e(M, K), e(M, H), e(M), e(M), (e(0, 0, 0),) * 3, reset_after,
                                         gate_kind, alpha, beta, use_clip, clip, e(B, H), e(B, M), e(B, M), tiled_max,
                                         False))
    L = len(layers)
    plan = np.zeros(STEP_WEIGHTS + STEP_LAYER * L, np.int64)
    plan[STEP_FIRST] = native(x, h, x.shape[1])
    if L > 1:
        plan[STEP_INNER] = native(e(B, H), h, H)
    if state is not None:
        plan[[STATE_A, STATE_B, GI, GH]] = weight_addresses(*state, *work)
    plan[[STEP_TILED_MAX, RESET_AFTER, GATE_KIND, USE_CLIP, LAYERS, ROWS, HIDDEN]] = \
        tiled_max, reset_after, gate_kind, use_clip, L, B, H
    for k, (W_ih, W_hh, b_ih, b_hh, panels) in enumerate(layers):
        a = STEP_WEIGHTS + STEP_LAYER * k
        plan[a + np.array([W_IH, B_IH, W_HH, B_HH, WP_IH, WP_A, WP_B])] = weight_addresses(W_ih, b_ih, W_hh, b_hh,
                                                                                            *panels)
        plan[a + STEP_PANEL_SHAPES:a + STEP_LAYER] = np.ravel(kept_shapes(panels))
    values = np.empty(3, x.dtype)
    values[[ALPHA, BETA, CLIP]] = alpha, beta, clip
    return plan, values


def run_padded_direction(plan, x2d, gx, h0, lengths, others, y, col0, h_n):
    """:func:`run_serial_direction` over padded rows, by a :func:`plain_plan`: lengths (B,) int64,
    non-increasing, owned; the rows past their lengths as the general path leaves them (zeros in y,
    h_n the state at each row's last step). h0 None: from the zero state, the forward direction's
    first step by :func:`~numgru.kernels.forward.first_step_gates` (W_hh not read) and the others
    from there, ``others`` (B,) int64 holding max(lengths − 1, 0); the reverse direction's rows
    start at steps of their own, so it gets zeros as h0 (as the general path)."""
    weights, scalars, rest = plan[2]
    _, sorted_desc, reverse, reset_after, *gates = scalars
    _run_plan_projection(plan, x2d, gx)
    T, B = y.shape[0], h_n.shape[0]
    g3 = gx.reshape(T, B, gx.shape[1])
    if h0 is None and not reverse:
        _steps_from_zero(plan, g3, lengths, others, y, col0, h_n)
        return
    if h0 is None:
        h0 = np.zeros_like(h_n)
    planned_call(plan[7], "recurrence", gru_forward_serial, g3, *weights, h0, lengths, sorted_desc, reverse,
                 reset_after, *gates, y, col0, h_n, *rest)


def _run_amx_direction(amx_steps, x2d, gx, h0, y, col0, h_n):
    """:func:`run_serial_direction` on AMX tiles (:func:`amx_recurrence_wanted`): W_hh packed here,
    the projection first (on AMX where the plan says so) or interleaved with the steps as the plan's
    ``steps`` says. False where the tiles could not take the weights or a state to float32 accuracy
    (NaN or ±Inf, say): the caller then runs the float32 plan, which writes everything anew."""
    W_hh, b_hh, reverse, projection, steps, amx_projection, Wv_ih, Whv, pieces = amx_steps
    if Whv is None:
        Whv = recurrence_packing(W_hh)
    if Whv.shape[0] == 0:
        return False
    if not steps:
        _planned_projection(x2d, projection, amx_projection, gx, Wv_ih, pieces)
    return gru_forward_amx(x2d, *projection, gx, Whv, b_hh, h0, reverse, y, col0, h_n, steps,
                           empty_array(gx.dtype, 3), matmul_order())


def _run_dpbf16_direction(dp_steps, g3, h0, y, col0, h_n):
    """The recurrence of :func:`run_serial_direction` by AVX512-BF16's bfloat16 products
    (:func:`dpbf16_recurrence_wanted`), g3 (T, B, 3H) the projection: W_hh packed here. False where
    W_hh or a state holds a value bfloat16 cannot carry (NaN or ±Inf, say): the caller then runs the
    float32 kernels, which write everything anew."""
    W_hh, b_hh, reverse = dp_steps
    Wp = packed_pairs("dp_hh", W_hh)
    return Wp is not None and gru_forward_dpbf16(g3, Wp, b_hh, h0, reverse, y, col0, h_n, False,
                                                 empty_array(g3.dtype, 3), 0, h0.shape[0])


def _run_vnni_columns(gx, W_hh, b_hh, h0, reverse, y, col0, h_n, threads, pieces, reset_after=True):
    """:func:`gru_direction_forward`'s columns route on W_hh's integer digits
    (:func:`vnni_columns_wanted`; the caller holds the parallel slot): the digits packed here on the
    threads (or kept by a frozen model's ``pieces``) with their row sums' offsets. False where the
    digits could not take W_hh (a weight they refuse): the caller then runs the float32 columns
    route. ``reset_after``: False for :func:`~numgru.kernels.vnni.gru_forward_vnni_cols_before`."""
    G, H = W_hh.shape
    if pieces is not None:
        kept = pieces.step_digits_of(W_hh)
        if kept is None:
            return False
        Wv, C = kept
    else:
        packed = _digits_with_row_sums(W_hh, threads, held=True)
        if packed is None:
            return False
        Wv, R = packed
        C = digit_offsets(R, G)
    kernel = gru_forward_vnni_cols if reset_after else gru_forward_vnni_cols_before
    kernel(gx, W_hh, Wv, C, b_hh, h0, bool(reverse), y, int(col0), h_n, threads)
    return True


def _run_vnni_direction(vnni_steps, g3, h0, y, col0, h_n):
    """The recurrence of :func:`run_serial_direction` on W_hh's integer digits by AVX512-VNNI
    (:func:`vnni_recurrence_wanted`), g3 (T, 1, 3H) the projection: W_hh's digits packed here (or kept
    by a frozen model's ``pieces``) and their row sums made. False where the digits could not take
    W_hh or a state (NaN or ±Inf, say): the caller then runs the float32 kernels, which write
    everything anew."""
    W_hh, b_hh, reverse, reset_after, pieces = vnni_steps
    kept = _digits_with_row_sums(W_hh) if pieces is None else pieces.row_sums_of(W_hh)
    if kept is None:
        return False
    kernel = gru_forward_vnni if reset_after else gru_forward_vnni_before
    return kernel(g3, *kept, b_hh, h0, reverse, y, col0, h_n)


def _digits_with_row_sums(W_hh, threads=1, held=False):
    """``(digits, row sums)`` of W_hh made for this call in this thread's scratch (:func:`amx_digits`,
    ``threads`` and ``held`` as there; :func:`~numgru.kernels.vnni.digit_row_sums`), as a frozen
    model's :meth:`FrozenPieces.row_sums_of` keeps them; None where a row is refused."""
    Wv = amx_digits("vnni_hh", W_hh, threads=threads, held=held)
    if Wv.shape[0] == 0:
        return None
    G, H = W_hh.shape
    R = workspace("vnni_row_sums", (3 * padded.py_func(G),), np.int32)
    digit_row_sums(Wv, G, H, R)
    return Wv, R


def _planned_projection(x2d, projection, amx, gx, Wv_ih=None, pieces=None, dp=0, entries=None, kind=None,
                        par=0):
    """gx = the whole input projection of a plan: ``projection`` (W_ih, Wp, bias, use_bias, panels,
    dot) as :func:`~numgru.kernels.forward.input_projection_kernel` takes it, on AMX tiles first where
    ``amx`` (the thread count to take them with, 0 for none) and they take x2d: W_ih's digits
    (:func:`amx_project_digits`), else its pieces (``Wv_ih``: W_ih's AMX packing kept by a frozen model,
    or None; ``pieces``: the frozen model's :class:`FrozenPieces`, which keep the digits); by
    AVX512-BF16's bfloat16 products where ``dp`` (the thread count, :func:`dpbf16_projection_wanted`)
    and they take x2d; on Numba's threads where ``par`` ((thread count, panels), for
    :func:`keeps_off_blas`; 0 for none) and the parallel slot is free. ``entries``: a plan's, for
    :func:`~numgru.kernels._jit.planned_call` of the float32 kernel, ``kind`` x2d's kind of array there
    (else the dispatcher runs it)."""
    W_ih, Wp, bias, use_bias, panels, dot = projection
    if amx and (amx_project_digits(x2d, W_ih, bias, use_bias, gx, amx, pieces)
                or amx_project(x2d, W_ih, bias, use_bias, gx, amx, Wv_ih)):
        return
    if dp and x2d.dtype == np.float32 and dpbf16_project(x2d, W_ih, bias, use_bias, gx, dp):
        return
    if par:
        with parallel_slot(True) as free:
            if free:
                project_on_threads(x2d, W_ih, Wp, bias, use_bias, gx, par[1], par[0])
                return
    planned_call(entries, ("projection", kind), input_projection_kernel, x2d, W_ih, Wp, bias, use_bias,
                 gx, panels, dot)


_WORKSPACE = threading.local()
#: smallest workspace (values) kept per thread: 128 KB of float32, glibc's threshold for mapping fresh
#: pages (smaller arrays come from its heap)
WORKSPACE_MIN_VALUES = 1 << 15


def workspace(name, shape, dtype):
    """A scratch array of ``shape`` and ``dtype`` for temporaries that are used up before the next call
    asking for the same ``name`` on this thread (uninitialised; a view of a buffer kept per thread and
    name, grown to the largest size asked for).

    Large arrays come from fresh pages on every allocation (glibc maps them anew; NumPy asks for huge
    pages), and the first write to each page faults: at T = 128, B = 64, H = 256 the backward kernel
    took 50 ms on fresh arrays against 40 on reused ones. Below ``WORKSPACE_MIN_VALUES`` values, where
    glibc reuses its heap, a fresh array is cheaper to get than the kept one's view."""
    size = math.prod(shape)
    if size < WORKSPACE_MIN_VALUES:
        return np.empty(shape, dtype)
    store = _WORKSPACE.__dict__
    key = (name, dtype if isinstance(dtype, np.dtype) else np.dtype(dtype))
    buf = store.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype)
        store[key] = buf
    return buf[:size].reshape(shape)


def amx_pieces(name, W, threads=1, held=False):
    """W's AMX packing (:func:`~numgru.kernels.amx.pack_amx_into`) in this thread's scratch ``name``
    (:func:`workspace`, 64-byte aligned), valid until the thread's next call asking for that name;
    empty where W holds a value the tiles cannot take. Packing into fresh arrays on every call
    faulted their pages in anew (one thread, T = 32, B = 64, H = 1024: W_ih's and W_hh's packings,
    18 MB each, were 28 ms of a 118 ms forward). On ``threads`` Numba threads as
    :func:`packing_slot` says (``held``: the caller holds the parallel slot)."""
    size = padded.py_func(W.shape[0]) * padded.py_func(W.shape[1])
    out = _aligned_scratch(name, 3 * size)
    with packing_slot(threads, W, held) as par:
        if par:
            return out[:pack_amx_into_parallel(W, out, threads) * size]
    return out[:pack_amx_into(W, out) * size]


def amx_digits(name, W, spread=0.0, threads=1, held=False):
    """W's integer digits (:func:`~numgru.kernels.amx.pack_digits_into`) in this thread's scratch
    ``name`` (as :func:`amx_pieces`, on threads alike); empty where a row of W is refused
    (``spread``: rows of mixed scales too). 768 × 256 (W_ih or W_hh at H = 256, packed on every
    plain model's call that multiplies on the digits): 43 µs on one thread, 25 on two."""
    W = np.ascontiguousarray(W)  # (the packing reads W's rows as C-contiguous)
    size = digits_size.py_func(padded.py_func(W.shape[0]), padded.py_func(W.shape[1]))
    out = _aligned_scratch(name, size)
    spread = np.float32(spread)
    with packing_slot(threads, W, held) as par:
        if par:
            return out[:pack_digits_into_parallel(W, out, spread, threads) * size]
    return out[:pack_digits_into(W, out, spread) * size]


class _Held:
    """A parallel slot its caller already holds (:func:`packing_slot`)."""

    __slots__ = ()

    def __enter__(self):
        return True

    def __exit__(self, *exc):
        return None


def packing_slot(threads, W, held=False):
    """``with packing_slot(threads, W, held) as par``: whether a packing of W runs on ``threads``
    Numba threads: more than one, W at least ``PARALLEL_PACK_MIN_VALUES`` values, and the parallel
    slot free (:class:`parallel_slot`) or already the caller's (``held``)."""
    wanted = threads > 1 and W.size >= PARALLEL_PACK_MIN_VALUES
    return _Held() if wanted and held else parallel_slot(wanted)


def packed_pairs(name, W):
    """W (N, K) float32's bfloat16 panels (:func:`~numgru.kernels.dpbf16.pack_pairs`, (⌈N/16⌉,
    ⌈K/2⌉, 16, 2) uint16 on a 64-byte line) in this thread's :func:`workspace` ``name``, valid until
    its next call asking for that name; None where W holds a value bfloat16 cannot carry."""
    N, K = W.shape
    P, KQ = (N + 15) // 16, (K + 1) // 2
    Wp = _aligned_scratch(name, P * KQ * 32).reshape(P, KQ, 16, 2)
    return Wp if pack_pairs(np.ascontiguousarray(W), Wp) else None


def _aligned_scratch(name, size, dtype=np.uint16):
    """``size`` values of ``dtype`` of this thread's :func:`workspace` ``name``, starting on a 64-byte
    boundary."""
    itemsize = np.dtype(dtype).itemsize
    buf = workspace(name, (size + 64 // itemsize,), dtype)
    off = (-buf.ctypes.data % 64) // itemsize
    return buf[off:off + size]


def recurrence_packing(W, pieces=None, bf16_values=False, name="amx_hh", threads=1, held=False):
    """W_hh's (or, ``name`` "amx_hh_T", the backward's W_hh.T's) packing for the recurrence's
    products on AMX tiles: its integer digits (:func:`~numgru.kernels.amx.pack_digits`) where
    :func:`digits_wanted` holds for H (W's shorter side), else, or where a row of W is refused, its
    bfloat16 pieces; a quantized model's (``bf16_values``, or ``pieces.bfloat16``: one piece, three
    products) always its pieces. Kept by ``pieces`` (a frozen or quantized model's
    :class:`FrozenPieces`) where given, else made now in this thread's scratch ``name`` (on
    ``threads``, ``held`` as :func:`packing_slot` takes them)."""
    one_piece = bf16_values or (pieces is not None and pieces.bfloat16)
    if not one_piece and digits_wanted(min(W.shape), matmul_order()):
        Wd = (amx_digits(name + "_digits", W, 0.0, threads, held) if pieces is None
              else pieces.digits_of(W))
        if Wd.shape[0] > 0:
            return Wd
    return tile_packing(W, name, pieces, threads, held)


def tile_packing(W, name, pieces=None, threads=1, held=False):
    """W's AMX packing: the one ``pieces`` (a frozen or quantized model's :class:`FrozenPieces`)
    keeps, else one made now in this thread's scratch ``name`` (:func:`amx_pieces`, on ``threads``)."""
    return amx_pieces(name, W, threads, held) if pieces is None else pieces.of(W)


def _references(pool, k):
    """sys.getrefcount of pool[k] (counting the list's reference and the call's own)."""
    return sys.getrefcount(pool[k])


#: what :func:`_references` reads for a list's element that nothing else refers to, measured here
#: rather than assumed (interpreters differ in the temporary references they count)
_UNREFERENCED = _references([object()], 0)
_RECYCLED = threading.local()
#: buffers :func:`recycled` keeps per thread and name (a forward_train of two bidirectional layers
#: hands out four tapes, and the previous step's four may still be held)
RECYCLED_KEEP = 8


def recycled(name, shape, dtype, keep=None):
    """An uninitialised array of ``shape`` and ``dtype`` that the caller hands out (a training tape),
    on a buffer this thread allocated for ``name`` before and that no array views any more, so that
    its pages are not faulted in anew: the tape of T = 128, B = 64, H = 256, 33 MB, took 6.6 ms more
    on fresh pages (the forward_train's recurrence 26.1 against 19.5 ms). A buffer is free when
    nothing but the pool refers to it (every NumPy view of it holds a reference to it, as its base);
    up to ``keep`` (default ``RECYCLED_KEEP``) are kept per name, the older ones left to the garbage
    collector. Below ``WORKSPACE_MIN_VALUES`` values a fresh array."""
    size = math.prod(shape)
    if size < WORKSPACE_MIN_VALUES:
        return np.empty(shape, dtype)
    dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    pool = _RECYCLED.__dict__.setdefault((name, dtype), [])
    for k in range(len(pool)):
        if pool[k].size >= size and _references(pool, k) == _UNREFERENCED:
            return pool[k][:size].reshape(shape)
    buf = np.empty(size, dtype)
    pool.append(buf)
    del pool[:-(RECYCLED_KEEP if keep is None else keep)]
    return buf.reshape(shape)


def gru_direction_backward(dy, col0, dh_n, tape, y, h0, W_hh, lengths, reverse, reset_after, gate_kind,
                           alpha, beta, clip):
    """Backward of one direction of one layer (the serial kernel; BLAS may thread its matmuls).

    Returns ``(dgx, dgh, hprev, rhprev, dh0, db_ih, db_hh)`` with shapes (T, B, 3H); (T, B, 3H), or
    (T, B, H) where dW_hh runs on tiles (:func:`amx_gradient_wanted`): dgh's n block alone, its r
    and z blocks being dgx's (:func:`weight_gradient` takes both), or None where not reset_after
    (dgh is dgx); (T, B, H), (T, B, H) (None when reset_after), (B, H), (3H,), (3H,). See
    :func:`numgru.kernels.backward._gru_backward`. The first four are this thread's :func:`workspace`:
    valid until its next call.
    """
    T, B, _ = tape.shape
    H = h0.shape[1]
    dtype = tape.dtype
    # scratch reused between calls (the kernel writes every element, zeros past a row's length)
    dgx = workspace("dgx", (T, B, 3 * H), dtype)
    # dgh's r and z blocks are dgx's: stored again only for a GEMM in BLAS (a strided one would copy)
    n_only = reset_after and amx_gradient_wanted(T * B, 3 * H, H, dtype)
    dgh = workspace("dgh", (T, B, (H if n_only else 3 * H) if reset_after else 0), dtype)
    hprev = workspace("hprev", (T, B, H), dtype)
    rhprev = workspace("rhprev", (T, B, H) if not reset_after else (0, 0, 0), dtype)
    groups = (B + BIAS_ROWS - 1) // BIAS_ROWS  # bias sums per group of rows, the same on any threads
    db_ih = np.zeros((groups, 3 * H), np.float64)
    db_hh = np.zeros((groups, H), np.float64)  # (dgh's n block; its r and z sums are db_ih's)
    if B == 0 or T == 0:
        dh0 = dh_n.copy()
    else:
        dh0 = np.empty((B, H), dtype)
        # on a 64-byte line, as the model's own weights are (:func:`aligned`): the dot-product block
        # sums from where W's rows meet a line (:mod:`~numgru.kernels.dotblock`), so a copy placed
        # anywhere in a line made the gradients differ in their last bits from one call to the next
        W_T = _transposed(W_hh, "backward_W_T")
        tiles = amx_recurrence_wanted(T, B, H, 1, dtype, reset_after, gate_kind, clip is not None)
        threads = thread_count()
        Wv_T = recurrence_packing(W_T, name="amx_hh_T", threads=threads) if tiles else None
        Wd = None
        if not tiles and dtype == np.float32 and dpbf16_recurrence_wanted(T, B, H, 1, dtype, reset_after,
                                                                          gate_kind, clip is not None):
            Wd = packed_pairs("dp_hh_T", W_T)
        tiled_max = training_tiled_max()
        off_tiles = Wv_T is None or Wv_T.shape[0] == 0
        Wp_T = empty_array(dtype, 3)
        if reset_after and off_tiles and wants_panels.py_func(H, 3 * H, B, panel_steps.py_func(T, B, True),
                                                              tiled_max, False):
            # W_hhᵀ's panels, where the steps take them (decided here alone, by the whole batch's rows:
            # every range multiplies on them, so its rows sum as one call's), packed once from W_hh's
            # rows into this thread's scratch: the kernel's own fresh copy each call, a copy a range,
            # faulted its pages in (one thread, T = 1, B = 128, I = H = 200, before panel_steps' bound:
            # the training step 2.3 ms, 1.7 with glibc's mmap threshold raised or the product in BLAS)
            Wp_T = packed_panels_of_transpose(W_hh, _aligned_scratch("backward_panels", (H + 48) * 3 * H, dtype))
        args = (dy, int(col0), dh_n, tape, y, h0, W_T, Wp_T, lengths, is_sorted_desc(lengths), bool(reverse),
                bool(reset_after), *gate_scalars(dtype, gate_kind, alpha, beta, clip), dgx, dgh, hprev,
                rhprev, dh0, db_ih, db_hh, tiled_max)
        if off_tiles:
            backward, order = (gru_backward_serial, 3) if Wd is None else (gru_backward_dpbf16, 1)
            ranges = training_row_ranges(T, B, H, lengths, dtype)
            if ranges:
                side_by_side(backward, [(*args, None, Wd, order, b0, b1) for b0, b1 in ranges], len(ranges))
            else:
                backward(*args, None, Wd, order, 0, B)
        else:
            # on tiles whatever the thread count (the gradients stay the same); ranges of rows on
            # several threads as the training forward takes them
            chunks = amx_row_ranges(B, threads)
            with parallel_slot(chunks >= 2) as par:
                if par:
                    gru_backward_amx_rows(*args, Wv_T, matmul_order(), chunks)
                else:
                    gru_backward_amx(*args, Wv_T, None, matmul_order(), 0, B)
    db_ih = db_ih.sum(axis=0).astype(dtype)
    db_hh_all = db_ih.copy()  # r and z (reset_after=False: all three) as db_ih's, summed alike
    if reset_after:
        db_hh_all[2 * H:] = db_hh.sum(axis=0).astype(dtype)
    return (dgx, (dgh if reset_after else None), hprev, (None if reset_after else rhprev), dh0, db_ih,
            db_hh_all)


def _transposed(W, name):
    """W.T, C-contiguous on a 64-byte line, in this thread's scratch ``name`` (:func:`workspace`: valid
    until the thread's next call asking for that name), by :func:`~numgru.kernels.backward.
    transpose_into`."""
    M, K = W.shape
    out = _aligned_scratch(name, M * K, W.dtype).reshape(K, M)
    transpose_into(np.ascontiguousarray(W), out)
    return out


def weight_gradient(D, X, out, D2=None, c0=0):
    """out = G.T @ X: a weight gradient, the gate gradients G (N, M) by the layer's inputs X (N, I)
    summed over all N = T·B rows; out (M, I) C-contiguous. G is D, or with ``D2`` (N, M2) D's first
    M − M2 columns followed by D2's (reset_after's dW_hh: the r and z blocks of dgx, the n block of
    its own); ``c0``: D's columns from c0 on instead (reset_before's dW_hn, dgx's n block). On AMX
    tiles where :func:`amx_gradient_wanted` says so (on Numba's threads where there are several and
    the parallel slot is free), else on the panel block where :func:`panels_gradient_wanted` or
    :func:`few_rows_on_panels` says so (:func:`panel_gradients`: on worker threads side by side
    where there are several), else in BLAS (:func:`~numgru.kernels.backward.matmul_into`: on one
    thread there, below ``BLAS_THREADED_MNK``). Either way each sum runs in an order that does not
    depend on the thread count, except float64 gradients above that bound where BLAS's vectors are
    wider than Numba's (Intel), which OpenBLAS threads."""
    N = D.shape[0]
    M = out.shape[0]
    job = _gradient_job(D, X, out, D2, c0)
    D2, m1 = job[3], job[2]
    threads = thread_count()
    if amx_gradient_wanted(N, M, X.shape[1], D.dtype):
        # (c0: D's block copied, so that reset_before's dW_hn sums as on one thread too: OpenBLAS's
        # threaded sgemm summed it otherwise on two threads, in the last bits, on the Intel machine)
        D = np.ascontiguousarray(D[:, c0:c0 + m1] if c0 else D)
        D2 = np.ascontiguousarray(D2)
        X = np.ascontiguousarray(X)
        with parallel_slot(threads > 1) as par:
            order = matmul_order()
            if amx_gradient_parallel(D, D2, X, out, threads, order) if par else \
                    amx_gradient(D, D2, X, out, order):
                return out
    if dpbf16_gradient_wanted(N, M, X.shape[1], D.dtype, D2.dtype, X.dtype, out.dtype) and \
            dpbf16_gradients([job]):
        return out
    if panels_gradient_wanted(D.dtype, D2.dtype, X.dtype, out.dtype) or (
            few_rows_on_panels(N, M, X.shape[1], D.dtype) and D2.dtype == X.dtype == out.dtype == D.dtype):
        panel_gradients([job])
        return out
    matmul_into(np.ascontiguousarray(D[:, c0:c0 + m1]).T, X, out[:m1], False)  # (a copy only for a D2)
    if m1 < M:
        matmul_into(D2.T, X, out[m1:], False)
    return out


def weight_gradient_pair(a, b):
    """Two :func:`weight_gradient` calls, ``a`` and ``b`` each its (D, X, out, D2) (D2 None or as
    there): a layer's dW_ih and dW_hh. With exactly two Numba threads, the parallel slot free and
    both on tiles, side by side, one thread each (:func:`~numgru.kernels.amx.amx_gradient_pair`):
    each gradient's sums are then those of one thread, as on every other route, so the results do
    not depend on the thread count. On two threads (T = 128, B = 64, H = 256) the pair took
    16.7–17.0 ms against 19.1–19.4 for the two gradients each split over both threads, which split
    all of X twice. Where the CPU has no AMX and both take the panel block
    (:func:`panels_gradient_wanted`), together by :func:`panel_gradients` (one thread each where
    there are two). Otherwise one after the other."""
    (Da, Xa, outa, D2a), (Db, Xb, outb, D2b) = a, b
    # (dW_hh may sum fewer rows than dW_ih: GRU.backward leaves out a zero h0's step)
    if thread_count() == 2 and \
            amx_gradient_wanted(Da.shape[0], outa.shape[0], Xa.shape[1], Da.dtype) and \
            amx_gradient_wanted(Db.shape[0], outb.shape[0], Xb.shape[1], Db.dtype):
        args = [np.ascontiguousarray(v) for v in (Da, np.empty((Da.shape[0], 0), Da.dtype) if D2a is None
                                                  else D2a, Xa)] + [outa]
        args += [np.ascontiguousarray(v) for v in (Db, np.empty((Db.shape[0], 0), Db.dtype) if D2b is None
                                                   else D2b, Xb)] + [outb]
        with parallel_slot(True) as par:
            if par:
                ok = amx_gradient_pair(*args, matmul_order())
                if ok.all():
                    return
                if ok[0]:  # (the refused one takes the other routes, which refuse it again for BLAS)
                    a = None
                elif ok[1]:
                    b = None
    if a is not None and b is not None and not amx_ready():
        jobs = [_gradient_job(*job) for job in (a, b)]
        if all(dpbf16_gradient_wanted(X.shape[0], out.shape[0], X.shape[1], D.dtype, D2.dtype, X.dtype,
                                      out.dtype) for D, _, _, D2, X, out in jobs) and dpbf16_gradients(jobs):
            return
        if all(panels_gradient_wanted(D.dtype, D2.dtype, X.dtype, out.dtype) for D, _, _, D2, X, out in jobs):
            panel_gradients(jobs)
            return
    for job in (a, b):
        if job is not None:
            weight_gradient(job[0], job[1], job[2], job[3])


def _gradient_job(D, X, out, D2=None, c0=0):
    """:func:`weight_gradient`'s arguments as :func:`panel_gradients` takes a job:
    (D, c0, m1, D2, X, out), D2 (N, 0) where None and m1 the gradient's rows that come from D."""
    if D2 is None:
        D2 = np.empty((D.shape[0], 0), D.dtype)
    return D, c0, out.shape[0] - D2.shape[1], D2, X, out


def panel_gradients(jobs):
    """Weight gradients on the panel block: each job (D, c0, m1, D2, X, out) as
    :func:`~numgru.kernels.backward.weight_gradient_panels` takes it. With several threads
    (:func:`thread_count`) and work enough (``PANEL_GRADIENT_POOL_MIN`` multiply-adds in all) runs of
    the jobs' columns, one of about equal work a thread (:func:`_column_runs`), run side by side
    on this thread and plain worker threads (:func:`_gradient_pool`), not in a parallel region: OpenBLAS
    keeps its workers spinning for a while after each threaded call (the projection, the input
    gradient), and Numba's OpenMP workers after each region; a region here and the next threaded
    BLAS call each waited for the cores the other pool held (two threads, T = 32, B = 16, H = 64:
    the training step 8.0 ms against 1.2). A worker here sleeps on a queue when idle. Each column's
    sums are those of one call on one thread, whatever the split."""
    jobs = [(np.ascontiguousarray(D), int(c0), int(m1), np.ascontiguousarray(D2), np.ascontiguousarray(X),
             out) for D, c0, m1, D2, X, out in jobs]
    threads = thread_count()
    work = sum(X.shape[0] * out.shape[0] * X.shape[1] for _, _, _, _, X, out in jobs)
    if threads == 1 or work < PANEL_GRADIENT_POOL_MIN:
        for job in jobs:
            weight_gradient_panels(*job, 0, job[4].shape[1])
        return
    # the jobs' columns, laid end to end, cut into one run of about equal work a thread (at whole
    # strips of 32 columns), each run one task of the pieces of jobs it spans: a layer's dW_ih of few
    # inputs beside its dW_hh had left the whole dW_hh to one thread (two threads, T = 5, B = 128,
    # I = 3, H = 512: the pair 13.5 ms against 7.4 split), and a dW_ih of I = 2H beside dW_hh, one
    # task each, two thirds of the work to one (N = 512, H = 512: 17.0 ms against 14.2); smaller
    # ranges run slower (one thread, N = 512, 1536 × 512 in ranges of 128 / 64 columns 91 / 71
    # GFLOP/s against 104 whole)
    side_by_side(_gradient_pieces, [(run,) for run in _column_runs(jobs, threads)], threads)


def _gradient_pieces(pieces):
    """:func:`~numgru.kernels.backward.weight_gradient_panels` for each (D, c0, m1, D2, X, out, r0, r1)
    of ``pieces``."""
    for piece in pieces:
        weight_gradient_panels(*piece)


def _column_runs(jobs, threads):
    """``threads`` lists of pieces (job…, r0, r1) covering every column of every job (D, c0, m1, D2, X,
    out) once: :func:`equal_runs` of the jobs' columns, a column of a job weighing N·M (its
    multiply-adds), cut at multiples of 32 columns."""
    runs = equal_runs([job[4].shape[1] for job in jobs], [job[4].shape[0] * job[5].shape[0] for job in jobs],
                      threads, 32)
    return [[(*jobs[j], r0, r1) for j, r0, r1 in run] for run in runs]


def equal_runs(sizes, weights, threads, align):
    """Items of ``sizes`` units (a unit of item j weighing ``weights[j]``) laid end to end and cut into
    at most ``threads`` runs of about equal weight, each cut where the weight reaches each k/threads
    of the whole, at the nearest multiple of ``align`` units of the item it falls in: a list of runs,
    each a list of (item, start, stop) pieces, every unit in exactly one piece; runs left empty by the
    rounding are dropped. For work whose results do not depend on where it is cut (the weight
    gradients' columns, the optimizers' values) shared by threads side by side."""
    starts = np.concatenate([[0], np.cumsum([n * w for n, w in zip(sizes, weights)])])
    total = starts[-1]
    bounds = [(0, 0)]
    for k in range(1, threads):
        target = total * k / threads
        j = min(int(np.searchsorted(starts, target, side="right")) - 1, len(sizes) - 1)
        unit = int(round((target - starts[j]) / max(weights[j], 1) / align)) * align
        bounds.append((j, min(max(unit, 0), sizes[j])))
    bounds.append((len(sizes) - 1, sizes[-1]))
    runs = []
    for (j0, u0), (j1, u1) in zip(bounds[:-1], bounds[1:]):
        run = []
        for j in range(j0, j1 + 1):
            r0 = u0 if j == j0 else 0
            r1 = u1 if j == j1 else sizes[j]
            if r1 > r0:
                run.append((j, r0, r1))
        if run:
            runs.append(run)
    return runs


def dpbf16_gradient_wanted(N, M, I, *dtypes):
    """Whether a weight gradient of M by I summed over N rows takes AVX512-BF16's bfloat16 products
    (:func:`~numgru.kernels.dpbf16.dpbf16_gradient`): as :func:`dpbf16_projection_wanted`, from
    ``DPBF16_MIN_ROWS`` rows and ``DPBF16_MIN_ROW_WORK`` multiply-adds a row. Zen 4, one thread,
    N = 8192, M = 768, I = 256: 17.1–17.3 ms (187 GFLOP/s) against OpenBLAS's 32.9–33.2 (the products
    alone run at 218 GFLOP/s; the pairs' rounding 16 values an instruction, :func:`~numgru.kernels.
    dpbf16.pairs16`, where a rounding on the bits took 22.7–23.9 ms in all)."""
    return dpbf16_projection_wanted(N, M, I, *dtypes)


def dpbf16_gradients(jobs):
    """:func:`panel_gradients`' jobs (D, c0, m1, D2, X, out) by bfloat16 products
    (:func:`~numgru.kernels.dpbf16.dpbf16_gradient`), split as there into ranges of whole panels
    of columns side by side where there are several threads and work enough; each column's sums
    are those of one call on one thread. False where an operand holds a magnitude beyond 3e38, Inf
    or NaN: the caller then runs every job on its float32 route, which writes all of each out."""
    jobs = [(np.ascontiguousarray(D), int(c0), int(m1), np.ascontiguousarray(D2), np.ascontiguousarray(X),
             out) for D, c0, m1, D2, X, out in jobs]
    threads = thread_count()
    work = sum(X.shape[0] * out.shape[0] * X.shape[1] for _, _, _, _, X, out in jobs)
    if threads == 1 or work < PANEL_GRADIENT_POOL_MIN:
        return all([dpbf16_gradient(*job, 0, (job[4].shape[1] + 15) // 16) for job in jobs])
    per_job = max(1, -(-threads // len(jobs)))
    tasks = []
    for job in jobs:
        P = (job[4].shape[1] + 15) // 16
        step = -(-P // (TILE_PANELS * per_job)) * TILE_PANELS
        tasks += [(*job, p0, min(P, p0 + step)) for p0 in range(0, P, step)]
    return all(side_by_side(dpbf16_gradient, tasks, threads))


def side_by_side(fn, tasks, threads):
    """fn(*args) for each ``args`` in ``tasks`` on this thread and the :func:`_gradient_pool`'s
    ``threads`` − 1 workers, which sleep on a queue when idle (unlike OpenBLAS's workers and Numba's
    OpenMP ones, which spin for a while after each call). Up to ``threads`` tasks, one a thread; more,
    and each thread takes the next task not yet begun when it is done with one, so a caller that
    lists its tasks largest first keeps the threads about evenly busy (one worker had run every task
    past the first, in turn). Returns once all have run: their results, in the tasks' order; the
    first error is raised. A worker runs off the CPU this thread is on (:func:`_off_cpu`)."""
    pool = _gradient_pool(threads - 1)
    cpu = _cpu_now()
    if len(tasks) <= threads:
        futures = [pool.submit(_off_cpu, cpu, fn, *args) for args in tasks[1:]]
        try:
            first = fn(*tasks[0])
        finally:
            rest = [f.result() for f in futures]
        return [first, *rest]
    results = [None] * len(tasks)
    order = itertools.count()  # (next() on it is atomic under the GIL)
    failed = []

    def drain():
        i = next(order)
        while i < len(tasks) and not failed:
            try:
                results[i] = fn(*tasks[i])
            except BaseException as e:
                failed.append(e)
                return
            i = next(order)

    futures = [pool.submit(_off_cpu, cpu, drain) for _ in range(threads - 1)]
    try:
        drain()
    finally:
        for f in futures:
            f.result()
    if failed:
        raise failed[0]
    return results


def one_thread_each(fn, tasks):
    """fn(*args) for each ``args`` of ``tasks`` side by side (:func:`side_by_side`), one thread a
    task, each thread held to one Numba thread while it runs its task (:func:`thread_count` then
    answers 1, so every route inside takes its one-thread form: the same sums as one thread's, and
    no nested hand-off to the pool). Returns their results in the tasks' order."""
    if len(tasks) < 2:
        return [on_one_thread(fn, args) for args in tasks]
    return side_by_side(on_one_thread, [(fn, args) for args in tasks], len(tasks))


def on_one_thread(fn, args):
    """fn(*args) with this thread's Numba thread count at 1, restored after."""
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(old)


def directions_side_by_side(T, B, H, I, dtype):
    """Whether a bidirectional layer's backward runs its two directions side by side, one thread each
    (:func:`one_thread_each`), rather than one after the other on all threads: with exactly two
    threads, where training's products take the panels (:func:`panels_gradient_wanted`; not measured
    elsewhere), up to ``DIRECTIONS_MAX_ROWS`` rows T·B, where no step's product calls BLAS
    (:func:`training_steps_off_blas`: OpenBLAS called from both threads at once, set to two threads,
    ran each call several times slower). Each direction's sums are one thread's,
    so the gradients are those of any thread count. Over few rows a direction's own work splits
    badly (a recurrence step's rows, W_hh's transpose and its panels' packing stay on one thread) and
    every split costs hand-offs; two directions need none until both are done.

    Zen 4, two threads, a whole training step (forward_train, backward, Adam; medians of 4–8 rounds
    taking turns in one process, ms, one after the other → side by side; I = H, one layer unless
    said): T = 2, B = 16, I = 1, H = 512, two layers 32.8 → 29.4 (torch 35.0); T = 4, B = 16, H = 512
    17.9 → 16.9; T = 32, B = 16, H = 512 60.4 → 52.7; T = 5, B = 32, I = 64, H = 256 5.36 → 4.97; T = 8,
    B = 64, H = 256 19.3 → 16.7; T = 32, B = 16, H = 256 19.5 → 17.5; T = 10, B = 8, H = 128, two layers
    4.13 → 3.71; T = 16, B = 64, H = 1024 622 → 501. Beyond 1024 rows mixed: T = 128, B = 64, H = 256
    273 → 236, but T = 64, B = 64, H = 256 120 → 151, T = 32, B = 128, H = 512 345–386 → 383–396, T = 128,
    B = 16, H = 128 18.9 → 19.9, T = 32, B = 128, H = 128 36.5 → 35.5.

    float64 over up to ``DIRECTIONS_FEW_ROWS`` rows and ``DIRECTIONS_FEW_ROWS_MAX_HIDDEN`` units only
    from ``DIRECTIONS_MIN_WORK`` multiply-adds a direction, T·B·H·(I + H): below, side by side ran
    slower on average than one after the other on both threads, and unevenly (a direction's task on
    the pool's worker took 1.5× its median in a third of the calls, on a CPU of its own, with no page
    faults or waits counted: not explained).
    Whole steps (forward_train, backward), float64, T, B, I, H, layers, means of 150 calls alternating
    with a copy of b8659ce's code in one process (the first of each pair swapped every call), ms,
    side by side → one after the other: 2, 16, 200, 200, 1 3.33–4.87 → 2.91–2.98; 8, 4, 40, 200, 1
    2.00–3.99 → 1.70–2.20; 2, 16, 40, 128, 3 5.92–7.96 → 4.60–5.46; 4, 8, 40, 200, 2 6.96 → 5.67
    (1.14–1.81×, the medians mixed: side by side is often quicker but has a long tail); at 64 and 80
    rows side by side stayed ahead (2, 32, 200, 200, 1 4.20 against 5.27 one after the other; 10, 8,
    128, 128, 2 6.86 against 8.48), and so it did from H = 256, where each direction's own transpose
    and packing of W_hh weigh more (1, 16, 64, 256, 1 / 4, 4, 64, 256, 1 / 1, 16, 64, 384, 1 / 3, 1,
    64, 640, 1: 0.92× / 0.83× / 0.71× / 0.73× one after the other); float32 ran level either way at
    these sizes (0.96–1.02×)."""
    N = T * B
    few = N <= DIRECTIONS_FEW_ROWS and H <= DIRECTIONS_FEW_ROWS_MAX_HIDDEN and np.dtype(dtype) == np.float64
    return thread_count() == 2 and panels_gradient_wanted(dtype) and N <= DIRECTIONS_MAX_ROWS and \
        not (few and N * H * (I + H) < DIRECTIONS_MIN_WORK) and training_steps_off_blas(T, B, H)


def training_steps_off_blas(T, B, H):
    """Whether every step's product of training's kernels over T steps of up to B rows (the forward's
    h by W_hh (3H, H), the backward's dgh by W_hhᵀ (H, 3H)) stays off BLAS with training's
    ``tiled_max`` (:func:`training_tiled_max`): on W_hh's panels where the kernel packs them
    (:func:`~numgru.kernels.forward.wants_panels` with :func:`~numgru.kernels.forward.panel_steps`,
    which every row count then takes), else by Numba's rows kernels, which take up to ``tiled_max``
    rows (more on Zen 4: :func:`~numgru.kernels.forward.numba_rows_past_l2`), and up to
    ``NUMBA_ROWS_MAX`` where K ≤ ``NUMBA_ROWS_MAX_K`` (one row: the dot-product block where
    :func:`~numgru.kernels.forward.one_row_dot` says). Two threads, T = 3, B = 48, I = 300,
    H = 384, bidirectional: with the backward's 48-row products in OpenBLAS from both directions' threads
    at once the training step took 41–44 ms against torch's 19 (on panels since: 11.7–13.6)."""
    if B <= 1:
        return B == 0 or one_row_dot.py_func(3 * H, training_tiled_max()) or 3 * H <= 256
    tiled = training_tiled_max()
    steps = panel_steps.py_func(T, B, True)
    for M, K in ((3 * H, H), (H, 3 * H)):
        if not (wants_panels.py_func(M, K, B, steps, tiled, False) or numba_rows_past_l2.py_func(B, tiled)
                or (B <= NUMBA_ROWS_MAX and K <= NUMBA_ROWS_MAX_K)):
            return False
    return True


def training_directions_apart(T, B, I, H, valid, dtype):
    """Whether a bidirectional layer's training forward (T steps of B rows, I inputs, H units; ``valid``
    the padded steps' mask or None) runs its two directions side by side, one thread each: where its
    backward does (:func:`directions_side_by_side`, which also sees that no step's product calls
    BLAS), with H up to ``TRAINING_APART_MAX_HIDDEN`` and the input projection off BLAS too, on the panels
    (:func:`training_panels`) or by the dot-product block (:func:`projection_dot`) for the rows it
    multiplies (:func:`input_projection`): OpenBLAS called from both threads at once ran several
    times slower (see :func:`directions_apart`). And from ``TRAINING_APART_MIN_ROWS`` rows and
    ``TRAINING_APART_MIN_WORK`` multiply-adds a direction, T·B·H·(I + H): below, the hand-offs cost more.

    Zen 4, two threads, float32, I = H, one layer unless said, forward_train alone, ms, both threads →
    side by side (medians of five rounds taking turns in one process): T = 5, B = 32, I = 64, H = 256
    2.90 → 1.67; T = 32, B = 16, H = 256 7.91 → 5.82; T = 32, B = 16, H = 512 26.3 → 20.4; T = 8, B = 64,
    H = 256 8.11 → 6.12; T = 4, B = 64, H = 256 4.86 → 3.32; T = 20, B = 16, H = 128 2.67 → 1.79; T = 64,
    B = 16, H = 128, two layers 11.9 → 9.09; T = 16, B = 64, I = 300, H = 256, padded 10.5 → 7.64. Below
    the bounds: T = 10, B = 8, H = 128, two layers 1.41–1.50 → 1.57–2.29; T = 32, B = 8, H = 128 1.49 →
    1.89; T = 16, B = 16, H = 64 0.56 → 0.85.

    Beyond ``TRAINING_APART_WIDE_H`` (512, where the bound stood) from ``TRAINING_APART_WIDE_MIN_ROWS`` rows
    T·B. Whole steps (forward_train, backward), two threads, means of 20–30 calls taking turns in one
    process, both threads → side by side, bits alike, (T, B, I, H, layers): float32 (2, 24, 300, 768,
    2) 1.20×, (2, 16, 640, 640, 1) 1.27×, (2, 16, 64, 1024, 1) 1.16×, (3, 32, 1024, 1024, 1) 1.16×,
    (10, 16, 640, 640, 1) 1.09×, (4, 64, 1024, 1024, 1) 1.10×, (1, 32, 64, 1024, 1) 1.05×; float64
    (3, 32, 640, 640, 1) 1.18×, (2, 64, 768, 768, 1) 1.08×; level where the rows mostly split in
    ranges already (:func:`training_row_ranges`): (16, 32, 640, 640, 1) 1.03×, (5, 64, 640, 640, 1)
    1.02×, (3, 128, 64, 640, 1) 0.99×, (1, 64, 64, 1024, 1) 1.07×, padded (5, 32, 640, 640, 1) 1.04×,
    (10, 64, 64, 768, 1) 1.02×. Fewer rows lost: (1, 16, 64, 1024, 1)
    0.84–0.86× (its forward 0.37 → 0.50 ms: from the zero state it reads no W_hh), (1, 24, 64, 640, 1)
    0.95×, though (1, 16, 300, 768, 1) ran 1.09×."""
    N = T * B
    if H > TRAINING_APART_MAX_HIDDEN or B < TRAINING_APART_MIN_ROWS or \
            (H > TRAINING_APART_WIDE_H and N < TRAINING_APART_WIDE_MIN_ROWS) or \
            N * H * (I + H) < TRAINING_APART_MIN_WORK or not directions_side_by_side(T, B, H, I, dtype):
        return False
    N = projected_rows(N, valid, 3 * H, I)[0]
    return N == 0 or training_panels(N, I, 3 * H, dtype) or \
        projection_dot(N, I, 1, True, np.dtype(dtype).itemsize)


def directions_apart(T, B, I, H, L, dtype):
    """Whether a bidirectional model's inference forward of B rows of T steps (I inputs, H units, L
    layers) on two threads runs each layer's two directions side by side, one thread each
    (:func:`one_thread_each`) by one thread's plan, rather than each direction on both threads: float32
    (float64 measured mixed: T = 128, B = 1, H = 256 4.30 → 4.54 ms, T = 128, B = 16, H = 128 12.3 →
    10.3; at T = 64, B = 4, H = 512 and T = 32, B = 16, H = 256 its one-thread plans project in BLAS),
    where BLAS's vectors are no wider than Numba's (not :data:`WIDE_BLAS`; not measured elsewhere) and a
    direction's work, T·B·H·(I + H) multiply-adds a layer, is at least ``APART_MIN_WORK``, with H up
    to ``APART_MAX_HIDDEN`` and B up to ``APART_MAX_ROWS``, where a step's product stays off BLAS
    (the caller also requires one thread's plan to project off BLAS, :func:`plan_off_blas`): OpenBLAS
    called from both threads at once, set to two threads, ran each call several times slower (T = 2,
    B = 64, H = 256, three layers: 27.8 ms side by side against 5.6 on both threads).

    Zen 4, two threads, float32, I = H, one layer unless said, ms, both threads → side by side
    (medians of four rounds taking turns in one process; two runs where given twice): T = 128, B = 1,
    H = 256 2.37 → 1.97, 2.34 → 2.14; T = 512, B = 1, H = 256 9.87 → 7.11; T = 128, B = 2, H = 256 3.90
    → 2.84; T = 64, B = 4, H = 128, two layers 2.36 → 1.90, 2.30 → 2.10; T = 2, B = 16, H = 512, two
    layers 5.31 → 4.30, 4.28 → 3.78; T = 16, B = 16, H = 256 2.66 → 2.49; T = 32, B = 16, H = 256, two
    layers 12.5 → 11.5, 13.9 → 11.4; T = 128, B = 16, H = 256 19.6 → 19.1; T = 64, B = 4, H = 512 12.7
    → 10.1; T = 128, B = 1, H = 448 7.09 → 5.77; T = 128, B = 1, H = 512 8.95 → 9.68, 8.48 → 7.86.
    Below the work bound the hand-off (75 µs for two empty tasks) loses: T = 32, B = 8, H = 128 1.17 →
    1.49; beyond H = 512: T = 128, B = 64, H = 1024 1119 → 1317."""
    return not WIDE_BLAS and np.dtype(dtype) == np.float32 and H <= APART_MAX_HIDDEN and B <= APART_MAX_ROWS \
        and T * B * H * (I + H) >= APART_MIN_WORK


def training_row_ranges(T, B, H, lengths, dtype):
    """Ranges (b0, b1) of rows in which training's serial forward and backward kernels run side by
    side on several threads (:func:`side_by_side`), or None for one call over all B rows: where
    training's products take the panels (:func:`panels_gradient_wanted`; no AMX, whose tiles split
    rows their own way), with two threads or more, H ≤ ``TRAINING_ROWS_MAX_HIDDEN`` and work enough
    (``PANEL_GRADIENT_POOL_MIN``). One range a thread of whole
    groups of ``BIAS_ROWS`` rows (8; the last group may be partial), so each row's sums are those of
    one call over all rows: a step's product takes the panels for every row count there
    (:func:`~numgru.kernels.forward.use_panels`, K ≤ 512 forward and M ≤ 1024 backward, one thread's
    ``tiled_max``), in blocks of 8 rows counted from each range's first row, and the bias sums run by
    the same groups. Zen 4, two threads, T = 128: B = 64, H = 256, the forward with its tape 37 → 19
    ms, the backward kernel 48 → 26; the step at B = 16, H = 256 (ranges of 8 rows, bias groups of 8
    rather than 32, level on one thread) 38–41 → 29–32 ms. Rows of all T steps are dealt in equal
    shares of groups (the larger last); padded ones (longest first, as training sorts them) are cut
    where their steps reach each equal share of all (:func:`equal_runs`), where they had run on one
    thread: T = 64, B = 128, I = 32, H = 64, two layers, half the steps padding, the step 23.0 → 19.6
    ms (one process taking turns). Either way only where each range multiplies as one call over
    all rows would (:func:`_panels_alike`); padded rows rarely do beyond H = 85 (a step with one row
    left in a range takes the panels only up to K = 256, and the backward's K is 3H). Beyond H = 512
    only Zen 4's rule lets 17+ rows take the panels (:data:`~numgru.kernels.forward.PANELS_PAST_L2_MANY_ROWS`);
    the bound stood at 512 until measured there (two threads, whole steps given h0, forward_train,
    backward, float32 unless said, means of 8–20 calls taking turns in one process with the bound at
    512, bits alike; (T, B, I = H, layers)): (3, 128, 1024, 2) 1.28×, (2, 128, 768, 1) 1.29×, (5, 64,
    640, 1) 1.29×, (10, 32, 1024, 1) 1.35×, (16, 64, 1024, 1) 1.40×, (1, 256, 1024, 1) 1.18×, (4, 48,
    640, 1) 1.09×, (3, 40, 1024, 1) 1.17×; float64 (3, 64, 640, 1) 1.29×, (5, 128, 768, 1) 1.34×; 16–32
    rows over 2–5 steps take no ranges (the batch does not pack W_hh there: :func:`_panels_alike`)."""
    threads = thread_count()
    if threads < 2 or B < 2 * BIAS_ROWS or H > TRAINING_ROWS_MAX_HIDDEN or amx_ready() or \
            not panels_gradient_wanted(dtype) or 6 * int(lengths.sum()) * H * H < PANEL_GRADIENT_POOL_MIN:
        return None
    # the rest, _panels_alike's Python above all, took 0.14 ms a call (T = 1, B = 128, H = 256: twelve
    # calls a training step of three bidirectional layers): kept for the arguments and what it reads
    ranges = _row_ranges((T, B, H, lengths.tobytes(), lengths.dtype.str, threads, training_tiled_max()))
    return None if ranges is None else list(ranges)


@functools.lru_cache(maxsize=64)
def _row_ranges(key):
    """:func:`training_row_ranges` past its first checks for ``key`` (T, B, H, the lengths' bytes and
    dtype, the thread count, :func:`training_tiled_max`): a tuple of ranges, or None."""
    T, B, H, raw, lengths_dtype, threads, _ = key
    lengths = np.frombuffer(raw, lengths_dtype)
    groups = -(-B // BIAS_ROWS)
    n = min(threads, B // BIAS_ROWS)
    if lengths.min() == T:
        # the groups dealt evenly, the larger shares last (the last group may be partial)
        shares = [groups // n + (k >= n - groups % n) for k in range(n)]
        ends = np.minimum(np.cumsum(shares) * BIAS_ROWS, B)
    else:
        work = np.add.reduceat(lengths, np.arange(0, B, BIAS_ROWS)).tolist()
        ends = [min((run[-1][0] + 1) * BIAS_ROWS, B) for run in equal_runs([1] * groups, work, n, 1)]
    ranges = tuple((int(b0), int(b1)) for b0, b1 in zip([0, *ends[:-1]], ends))
    return ranges if len(ranges) > 1 and _panels_alike(ranges, T, H, lengths) else None


def _panels_alike(ranges, T, H, lengths):
    """Whether the training kernels' steps over ``ranges`` of rows (longest first) multiply as one
    call over all rows would, so that each row's sums come out the same: the whole batch packs its
    weights into panels (:func:`~numgru.kernels.forward.wants_panels` over
    :func:`~numgru.kernels.forward.panel_steps`, the forward's W_hh and the
    backward's W_hhᵀ and its blocks), which every range then multiplies on too (the forward's W_hh
    and the backward's W_hhᵀ packed once by :func:`gru_direction_forward` and
    :func:`gru_direction_backward`, the backward's blocks (reset_after=False) by each range by the
    whole batch's rule),
    and each step's rows in a range take the panels (:func:`~numgru.kernels.forward.use_panels`)
    wherever they are not all of the step's rows. A range of 8 rows over 15 steps (the first taken
    apart from the zero state) that had packed by its own rows had not packed W_hh where the whole
    batch of 24 did, and its rows' sums differed in their last bits from one call's (two threads
    against one: T = 16, B = 24, H = 300)."""
    tiled_max = training_tiled_max()
    B = lengths.shape[0]
    shapes = ((3 * H, H), (H, 3 * H), (H, H), (H, 2 * H))
    Tp = panel_steps.py_func(T, B, True)
    if not all(wants_panels.py_func(M, K, B, Tp, tiled_max, False) for M, K in shapes):
        return False
    # the rows each step runs (lengths non-increasing), over all and in each range
    active = np.count_nonzero(lengths[None, :] > np.arange(T)[:, None], axis=1)
    pairs = {(int(a), int(min(max(a - b0, 0), b1 - b0))) for a in np.unique(active) for b0, b1 in ranges}
    return all(r in (0, a) or all(use_panels.py_func(M, K, r, tiled_max, False)
                                  and use_panels.py_func(M, K, a, tiled_max, False) for M, K in shapes)
               for a, r in pairs)


def training_panels(N, K, M, dtype):
    """Whether a training product of N rows by weights (M, K), the input projection (K = I,
    M = 3H) or the input gradient (K = 3H, M = I), runs on packed panels (:func:`pool_projection`,
    rows side by side on several threads) rather than in BLAS: where :func:`panels_gradient_wanted`
    takes the weight gradients, from ``TRAINING_PANELS_MIN_ROWS`` rows (fewer: the dot-product block
    or BLAS, :func:`projection_dot`), whatever K. The rule reads neither the thread count nor the
    precision, so the sums are the same with any number of threads. Then, with the weight gradients,
    nothing in a training step wakes OpenBLAS's threads, whose spinning after each call (~0.1 s)
    took half a core from the products here: two threads, T = 128, B = 16, H = 256, the weight
    gradients side by side 16–19 ms each against 8 alone; T = 32, B = 16, I = 300, H = 512, three
    layers, the step 134 ms with the input gradients (K = 3H = 1536) in BLAS against 76 on the
    panels (torch 125). Zen 4, one thread, N = 8192 (ms, panels against OpenBLAS's sgemm, the
    packing included): K = 256, M = 768 30.9 against 33.7; K = 64, M = 192 2.11 against 2.31; K = 768,
    M = 256 34.6 against 33.8; K = 512, M = 1536 (N = 2048) 29.9 against 31.1; K = 1024 0.87×, which
    whole steps on one thread do not show (T = 16, B = 64, I = H = 1024, two layers 726 against 720 ms;
    T = 32, B = 16, H = 512 level)."""
    return panels_gradient_wanted(dtype) and N >= TRAINING_PANELS_MIN_ROWS and M > 0


def strips_input_gradient(N, dtype):
    """Whether the input gradient of N rows (:func:`input_gradient`) multiplies W_ih as it lies
    (:func:`strips_product`) rather than on its transpose's panels or in BLAS: where the weight
    gradients take the panel block (:func:`panels_gradient_wanted`), up to
    ``STRIPS_INPUT_GRADIENT_MAX_ROWS`` rows, whatever the thread count (the sums do not depend on it).
    Zen 4, one thread, float32, µs, BLAS / the transpose's panels (packing included) / strips, (3H, I):
    (768, 256) N = 8 111 / 178 / 37, N = 32 194 / 287 / 134, N = 64 317 / 408 / 269; (1536, 1024) N = 2
    827 / 1034 / 177, N = 32 1440 / 1955 / 1090, N = 64 2481 / 3158 / 1966; panels / strips at N = 256,
    1024, 4096: (768, 256) 1181 / 1073, 4389 / 4318, 17619 / 17935; (1536, 1024) 9010 / 9116, 34147 /
    35657, 130992 / 157381; a few µs either way at (192, 64) (N = 8: BLAS 2, strips 4). float64 much
    alike (N = 64, (1536, 1024) panels 7450, strips 5197; (1536, 512) N = 128 BLAS 4821, strips 4936)."""
    return panels_gradient_wanted(dtype) and N <= STRIPS_INPUT_GRADIENT_MAX_ROWS


def strips_product(a, b, out):
    """out = a @ b by :func:`~numgru.kernels.backward.input_gradient_strips`, b's columns in runs
    side by side (:func:`side_by_side`, whole strips of 48) where there are several threads and work
    enough (``PANEL_GRADIENT_POOL_MIN``); each column's sums are those of one call on one thread.
    a (N, K), b (K, M), out (N, M) C-contiguous, one float dtype."""
    M = b.shape[1]
    threads = thread_count()
    if threads == 1 or a.shape[0] * a.shape[1] * M < PANEL_GRADIENT_POOL_MIN:
        input_gradient_strips(a, b, out, 0, M)
        return out
    step = -(-M // (threads * 48)) * 48
    side_by_side(input_gradient_strips, [(a, b, out, c0, min(M, c0 + step)) for c0 in range(0, M, step)],
                 threads)
    return out


def pool_projection(x2d, W, bias, use_bias, out, Wp=None):
    """out = x2d @ W.T (+ bias) on W's panels, packed once here (or ``Wp``, W's panels packed by the
    caller: W is then only passed on, as the kernel's unread operand of M·K values), rows in ranges
    side by side (:func:`side_by_side`) where there are several threads and work enough. x2d (N, K),
    W (M, K), out (N, M) C-contiguous. Each row's sums are the same on any range (:func:`panel_rows`)."""
    N = x2d.shape[0]
    if Wp is None:
        # into this thread's scratch: fresh panels each call faulted their pages in (W_ih 768 × 512,
        # float32, profiled in a two-thread training step: 0.18 ms a packing, 0.12 into scratch)
        Wp = packed_panels_into(W, _aligned_scratch("panels_W", (W.shape[0] + 48) * W.shape[1], W.dtype))
    threads = thread_count()
    if threads == 1 or N * W.shape[0] * W.shape[1] < PANEL_GRADIENT_POOL_MIN:
        input_projection_kernel(x2d, W, Wp, bias, use_bias, out, True, False)
        return out
    step = -(-N // (threads * 32)) * 32
    tasks = [(x2d[r0:r0 + step], W, Wp, bias, use_bias, out[r0:r0 + step], True, False)
             for r0 in range(0, N, step)]
    side_by_side(input_projection_kernel, tasks, threads)
    return out


def _sched_getcpu():
    """The C library's ``sched_getcpu`` (Linux), or None where there is none to call."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


_GETCPU = _sched_getcpu()
_WORKER = threading.local()  # a pool worker's CPUs: those it may run on, the one it is kept off


def _cpu_now():
    """The CPU the calling thread runs on now, or −1 where that cannot be asked."""
    return _GETCPU() if _GETCPU is not None else -1


def _off_cpu(cpu, fn, *args):
    """fn(*args) on a :func:`_gradient_pool` worker that may run on any of the process's CPUs but
    ``cpu`` (the caller's, −1: any). Linux placed a worker it woke on the waking thread's CPU and kept
    it there while the other stood idle: on the 2-vCPU Zen 4 the two halves of a split product ran one
    after the other in most rounds, 0.95–1.25 ms against 0.52–0.68 with the worker kept off the
    caller's CPU (128 × 768 by 768 × 512, float32, the halves 0.47 ms each alone). Only the pool's own
    threads are pinned, each to the CPUs it was started with less that one."""
    if cpu >= 0:
        state = _WORKER.__dict__
        if "cpus" not in state:
            state["cpus"], state["off"] = frozenset(os.sched_getaffinity(0)), -1
        if state["off"] != cpu and cpu in state["cpus"] and len(state["cpus"]) > 1:
            try:
                os.sched_setaffinity(0, state["cpus"] - {cpu})
                state["off"] = cpu
            except OSError:  # (a CPU taken away since: left to the scheduler)
                pass
    return fn(*args)


_POOL = [None, 0, 0]  # the executor, its workers, the process that made it
_POOL_LOCK = threading.Lock()


def _gradient_pool(workers):
    """A thread pool of at least ``workers`` threads for :func:`side_by_side`, made on first use, and
    again when more threads are asked for or in a child process forked after it was made (the child
    inherits the pool's bookkeeping but none of its threads: its tasks would never run)."""
    with _POOL_LOCK:
        pid = os.getpid()
        if _POOL[1] < workers or _POOL[2] != pid:
            old = _POOL[0] if _POOL[2] == pid else None
            _POOL[:] = [ThreadPoolExecutor(max_workers=workers, thread_name_prefix="numgru-gradient"),
                        workers, pid]
            if old is not None:
                old.shutdown(wait=False)
        return _POOL[0]


def input_gradient(dG, W_ih, out, accumulate):
    """out = dG @ W_ih (out += with ``accumulate``): the gradient flowing into a layer's input, the
    gate gradients dG (N, 3H) by W_ih (3H, I); out (N, I) C-contiguous. On AMX tiles as the
    projection takes them (W_ih's transpose packed, :func:`amx_projection_wanted` for training, so
    whatever the thread count), at "medium" precision without AMX by AVX512-BF16's bfloat16 products
    (:func:`dpbf16_projection_wanted`), else on the panels (:func:`training_panels`) or in BLAS."""
    target = workspace("dx", out.shape, out.dtype) if accumulate else out
    if _input_gradient_routed(dG, W_ih, target):
        if accumulate:
            out += target
        return out
    matmul_into(dG, W_ih, out, accumulate)
    return out


def _input_gradient_routed(dG, W_ih, target):
    """target = dG @ W_ih on the first of :func:`input_gradient`'s routes before BLAS that wants it
    and takes the values: True, or False where none did (target then partly written or not)."""
    N, M = dG.shape
    threads = thread_count()
    if amx_projection_wanted(N, M, threads, dG.dtype, True, W_ih.shape[1]):
        dG = np.ascontiguousarray(dG)
        # (into this thread's scratch by the blocked transpose: numpy's copy of W_ih.T, fresh pages
        # and a strided walk, took 11.6 ms at 1536 × 1024 against 1.0 on the Intel machine)
        W_T = _transposed(W_ih, "input_gradient_W_T")
        if amx_project_digits(dG, W_T, W_ih[0], False, target, threads, name="amx_ih_T_digits",
                              spread=0.0) or \
                amx_project(dG, W_T, W_ih[0], False, target, threads, amx_pieces("amx_ih_T", W_T, threads)):
            return True
    if dpbf16_projection_wanted(N, M, W_ih.shape[1], dG.dtype, W_ih.dtype, target.dtype) and \
            dpbf16_project(np.ascontiguousarray(dG), W_ih.T, None, False, target, threads, name="dp_ih_T",
                           pool=True):
        return True
    if strips_input_gradient(N, dG.dtype) and dG.dtype == W_ih.dtype == target.dtype:
        strips_product(np.ascontiguousarray(dG), np.ascontiguousarray(W_ih), target)
        return True
    if training_panels(N, M, W_ih.shape[1], dG.dtype) and dG.dtype == W_ih.dtype == target.dtype:
        # W_ih.T's panels straight from W_ih's rows; W_ih itself rides along as the unread operand
        K, M = W_ih.shape
        Wp = packed_panels_of_transpose(W_ih, _aligned_scratch("panels_T", (M + 48) * K, W_ih.dtype))
        pool_projection(np.ascontiguousarray(dG), W_ih, W_ih[0], False, target, Wp)
        return True
    return False


def panels_gradient_wanted(*dtypes):
    """Whether :func:`weight_gradient` runs on the panel block with the operands where they lie
    (:func:`~numgru.kernels.backward.weight_gradient_panels`; :func:`panel_gradients` on several
    threads): one float dtype, where BLAS's vectors are no wider than Numba's (not
    :data:`WIDE_BLAS`: on Intel's AVX-512 OpenBLAS's sgemm was left, not measured against it).

    Zen 4 (one thread, N, M, I, ms, against OpenBLAS's sgemm on the transposed gate gradients): 8192,
    768, 256 35.2 against 39.5; (512 + 256), 256 34.1 against 41.2; 2048, 192, 64 0.44 against 0.61;
    8192, 384, 128 8.0 against 11.2; 4096, 768, 256 15.7 against 19.1; level at 2048, 1536, 512 (32.6 /
    33.7), 8192, 3072, 1024 (516 / 506) and 512, 48, 16. Two threads (X's columns split over both in a
    Numba parallel region, since replaced by :func:`side_by_side`; alone, not inside a training step):
    8192, 768, 256 16.0 against 20.1; 2048, 192, 64 0.23 against 0.33; 8192, 384, 128 4.9 against 10.3;
    8192, 3072, 1024 262 / 259; 2048, 1536, 512 20.2 against 17.7. The sums run in chunks of k, each
    from zero (N = 8192, 768 × 256: largest error 1.5e-4 against sgemm's 1.8e-4 on values near 90)."""
    return not WIDE_BLAS and dtypes[0] in (np.float32, np.float64) and all(d == dtypes[0] for d in dtypes)


def amx_gradient_wanted(N, M, I, dtype):
    """Whether :func:`weight_gradient` of N rows, M gate columns and I inputs runs on AMX tiles
    (:func:`~numgru.kernels.amx.amx_gradient`, to float32 accuracy): float32, where the CPU has AMX,
    wherever OpenBLAS would spread the GEMM over its threads (N·M·I above ``BLAS_THREADED_MNK``).
    The rest of a training step runs on Numba's threads there, and OpenBLAS's idle workers, spinning
    for a while after each call, held the cores its parallel regions then waited for: two threads,
    T = 32, B = 16, H = 64, the step read 8.0–8.4 ms (0.58× torch) with its (192, 64) gradients in
    OpenBLAS, the next projection on tiles waiting 3.8 ms for 512 rows, against 1.0 ms with them on
    tiles (T = 128, B = 64, H = 64: 27.8 against 6.8 ms; one thread 14.0). On one thread the tiles
    run ahead of OpenBLAS's sgemm for the sizes training spends its time on and about level for the
    small ones (the splitting included): N = 8192, (M, I) = (768, 256) 13.6 against 22.4 ms (1.65×),
    (384, 128) 1.22×, (1536, 512) 1.49×, (3072, 1024) 1.26–1.30× (N = 2048 1.02×), (6144, 2048)
    1.04×, (192, 64) 1.64 against 2.12 ms; (96, 32) at N = 4096 0.32 against 0.34 ms; N = 512,
    (768, 256) 1.14×, (192, 64) 128 against 120 µs. Below the bound OpenBLAS runs on one thread,
    and faster (N = 512, (48, 16) 8.2 against 38 µs). The rule reads neither the thread count nor
    the precision, so that gradients are the same with any number of threads.

    From ``AMX_GRADIENT_MIN_ROWS`` rows by I: the tiles' kernel has a fixed cost by M·I (its sums
    C, I × M, and each block's split) that few rows do not repay. On the 2-vCPU Intel machine
    (Sapphire Rapids or later, 2 MB of L2 a core), one thread, ms, tiles against the panel block
    (:func:`few_rows_on_panels`) and OpenBLAS's sgemm on one thread: (M, I) = (1536, 1024) N = 64 /
    160 / 320 / 640 / 2048 13.7 / 16.3 / 18.9 / 24.2 / 44.7 against 2.0 / 3.8 / 10.5 / 18.6 / 77.9 and
    1.8 / 3.7 / 7.1 / 13.9 / 50.9; (3072, 1024) N = 160 29.3 against 9.9 and 8.0; (1536, 512) N = 128 /
    160 / 320 / 640 2.4–2.7 / 2.8–3.0 / 3.8–4.1 / 6.1–6.5 against 1.8–2.1 / 2.1–2.4 / 4.6–5.0 / 9.1–9.9;
    (1152, 384) N = 128 / 512 1.23–1.28 / 2.64–2.76 against 0.86–1.05 / 3.97–4.16; (768, 256) N = 96 /
    192 / 256 / 4096 0.48 / 0.63 / 0.77 / 7.9–8.7 against 0.30 / 0.59 / 0.85 / 14.1–14.4 (BLAS 14.0)."""
    return _tiles_gradient_size(N, M, I, dtype) and N >= _gradient_min_rows(I) and amx_ready()


def _tiles_gradient_size(N, M, I, dtype):
    """The gradients the tiles' rules weigh: float32, where OpenBLAS would thread the GEMM."""
    return dtype == np.float32 and N * M * I > BLAS_THREADED_MNK


def _gradient_min_rows(I):
    """The fewest rows a weight gradient with I inputs takes to AMX tiles (``AMX_GRADIENT_MIN_ROWS``)."""
    return next(rows for i_max, rows in AMX_GRADIENT_MIN_ROWS if I <= i_max)


def few_rows_on_panels(N, M, I, dtype):
    """Whether a float32 weight gradient that :func:`amx_gradient_wanted` leaves off the tiles for
    too few rows, where the CPU has AMX, runs on the panel block (:func:`panel_gradients`, whose
    sums do not depend on the thread count, as the tiles'; OpenBLAS's threaded sgemm summed some
    shapes otherwise on two threads) rather than in BLAS (figures there)."""
    return _tiles_gradient_size(N, M, I, dtype) and N < _gradient_min_rows(I) and amx_ready()

