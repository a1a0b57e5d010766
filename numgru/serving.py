"""Serving: a threaded dynamic-batching engine and stateful streams. Sits on top of the layers.

Thread safety
-------------
Every kernel releases the GIL. Under Numba's default ``workqueue`` threading layer, two threads that
enter ``parallel=True`` kernels at once abort the process; numgru never lets that happen: parallel
kernels are entered through a non-blocking process-wide slot (:func:`numgru.kernels.dispatch.parallel_slot`)
and a caller that finds it taken runs the serial variant. So any number of threads may call models,
engines and streams at once, on any threading layer.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from ._validation import as_real_array, check_float, check_int
from .kernels._jit import ARRAY_KIND, compiled_entry
from .kernels.dispatch import (aligned, inference_tiled_max, run_step, run_step_digits,
                               step_columns_workspace, step_digits_columns_work, step_layer_stackable,
                               step_layers_plan, thread_count)
from .kernels.stack import gru_step_layers
from .kernels.step import gru_step
from .kernels.vnni import gru_step_vnni, gru_step_vnni_before, step_work_size
from .layers import GRU

__all__ = ["BatchingEngine", "GRUStream", "EngineOverloaded"]


class EngineOverloaded(RuntimeError):
    """Raised by :meth:`BatchingEngine.submit` when the queue stays full past the submit timeout."""


class _Request:
    __slots__ = ("x", "h0", "future", "t_submit", "T")

    def __init__(self, x, h0, future):
        self.x, self.h0, self.future = x, h0, future
        self.t_submit = time.perf_counter()
        self.T = x.shape[0]


class BatchingEngine:
    """Coalesce concurrent single-sequence requests into batched kernel calls.

    Parameters
    ----------
    model : numgru.GRU
        Read live on every call, so weights updated in place take effect; when they will not change
        while the engine runs, pass ``model.freeze()`` (:meth:`numgru.GRU.freeze`), whose weights are
        packed once rather than on each batch's call.
    max_batch_size : int
        Most sequences in one kernel call.
    max_delay_ms : float
        The longest the worker waits, after the first request of a batch arrives, for more to join.
    idle_gap_ms : float or None
        The worker stops waiting early when no new request arrived for this long (default
        max_delay_ms / 4): a burst keeps the batch growing up to max_delay_ms, while a lone client is
        not made to wait the whole delay for requests that cannot come.
    max_queue : int
        Bound of the request queue (backpressure).
    block : bool
        When the queue is full, ``submit`` blocks (True, up to ``submit_timeout`` seconds; None waits
        forever) or raises :class:`EngineOverloaded` at once (False).
    submit_timeout : float or None
    max_padding : float
        A batch is split into groups of similar lengths so that padded steps are at most this fraction
        of a group's steps. Rows are passed longest first with their ``lengths``, so the kernels run
        each step's recurrent GEMM on the still-active rows only: padding costs input-projection work
        and memory, not recurrent work.

    Each request is a sequence ``x`` of shape (T_i, I) (any T_i ≥ 0) and an optional ``h0`` of shape
    (L·D, H); its future resolves to ``(y, h_n)`` of shapes (T_i, D·H) and (L·D, H), equal within float
    rounding (1e-6) to ``model(x, h0)`` run alone.

    Bad requests (wrong rank, feature size or dtype; NaN is not bad) fail only their own future.
    An exception inside a batch is retried request by request, so only the guilty request fails, and
    the worker keeps running.
    """

    def __init__(self, model, max_batch_size=64, max_delay_ms=2.0, max_queue=1024, *, block=True,
                 submit_timeout=None, max_padding=0.5, idle_gap_ms=None):
        if not isinstance(model, GRU):
            raise TypeError(f"model: expected a numgru.GRU, got {type(model).__name__}")
        self.model = model
        self.max_batch_size = check_int("max_batch_size", max_batch_size, minimum=1)
        self.max_delay = check_float("max_delay_ms", max_delay_ms, low=0.0) / 1000.0
        gap = check_float("idle_gap_ms", idle_gap_ms, low=0.0, allow_none=True)
        self.idle_gap = self.max_delay / 4 if gap is None else gap / 1000.0
        self.max_queue = check_int("max_queue", max_queue, minimum=1)
        self.block = bool(block)
        self.submit_timeout = check_float("submit_timeout", submit_timeout, low=0.0, allow_none=True)
        self.max_padding = check_float("max_padding", max_padding, low=0.0, high=1.0)
        self._queue = queue.Queue(maxsize=self.max_queue)
        self._closed = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._stats = collections.Counter()
        self._latencies = collections.deque(maxlen=10000)
        self._worker = threading.Thread(target=self._loop, name="numgru-batching", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------------------------- client side
    def _validate(self, x, h0):
        m = self.model
        x = as_real_array("x", x)
        if x.ndim != 2:
            raise ValueError(f"x: expected one sequence of shape (T, {m.input_size}), got {x.ndim}-D "
                             f"shape {x.shape}")
        if x.shape[1] != m.input_size:
            raise ValueError(f"x: expected input_size {m.input_size} in the last dimension, got "
                             f"{x.shape[1]}")
        x = np.ascontiguousarray(x, dtype=m.dtype)
        if h0 is not None:
            h0 = as_real_array("h0", h0)
            want = (m.num_layers * m.num_directions, m.hidden_size)
            if h0.shape != want:
                raise ValueError(f"h0: expected shape {want}, got {h0.shape}")
            h0 = np.ascontiguousarray(h0, dtype=m.dtype)
        return x, h0

    def submit(self, x, h0=None):
        """Queue one sequence; returns a ``concurrent.futures.Future`` of ``(y, h_n)``."""
        if self._closed.is_set():
            raise RuntimeError("BatchingEngine is closed")
        fut = Future()
        try:
            x, h0 = self._validate(x, h0)
        except (TypeError, ValueError) as exc:
            with self._lock:
                self._stats["rejected"] += 1
            fut.set_exception(exc)
            return fut
        req = _Request(x, h0, fut)
        try:
            if self.block:
                self._queue.put(req, timeout=self.submit_timeout)
            else:
                self._queue.put_nowait(req)
        except queue.Full:
            with self._lock:
                self._stats["overloaded"] += 1
            raise EngineOverloaded(f"BatchingEngine queue full ({self.max_queue} requests)") from None
        if self._closed.is_set() and self._cancel.is_set():  # closed while we were queueing
            fut.cancel()
        with self._lock:
            self._stats["requests"] += 1
        return fut

    def map(self, seqs, h0s=None, timeout=None):
        """Submit every sequence now; return an iterator over their ``(y, h_n)`` in order."""
        seqs = list(seqs)
        h0s = [None] * len(seqs) if h0s is None else list(h0s)
        if len(h0s) != len(seqs):
            raise ValueError(f"h0s: expected {len(seqs)} initial states, got {len(h0s)}")
        futures = [self.submit(x, h) for x, h in zip(seqs, h0s)]

        def results():
            for f in futures:
                yield f.result(timeout)
        return results()

    def stream(self):
        """A stream (stateful, unidirectional models) whose steps go through this engine's batches."""
        return EngineStream(self)

    def close(self, drain=False, timeout=None):
        """Stop accepting requests. Pending requests are cancelled (``drain=False``) or run
        (``drain=True``); the batch in flight always finishes. Returns once the worker has stopped
        (or after ``timeout`` seconds)."""
        if not drain:
            self._cancel.set()
        self._closed.set()
        self._worker.join(timeout)
        if not drain:
            self._cancel_pending()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(drain=exc[0] is None)

    @property
    def closed(self):
        return self._closed.is_set()

    def stats(self):
        """Counters and latency percentiles (milliseconds, submit → result) of recent requests."""
        with self._lock:
            s = dict(self._stats)
            lat = np.array(self._latencies) * 1e3
        batches = s.get("batches", 0)
        steps = s.get("padded_steps", 0)
        return {
            "requests": s.get("requests", 0),
            "completed": s.get("completed", 0),
            "failed": s.get("failed", 0),
            "rejected": s.get("rejected", 0),
            "cancelled": s.get("cancelled", 0),
            "overloaded": s.get("overloaded", 0),
            "batches": batches,
            "mean_batch_size": (s.get("batched_requests", 0) / batches) if batches else 0.0,
            "padding_fraction": (1.0 - s.get("valid_steps", 0) / steps) if steps else 0.0,
            "queue_depth": self._queue.qsize(),
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        }

    # ----------------------------------------------------------------------------------- worker side
    def _cancel_pending(self):
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                return
            if req.future.cancel():
                with self._lock:
                    self._stats["cancelled"] += 1

    def _loop(self):
        while True:
            if self._cancel.is_set():
                self._cancel_pending()
                return
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            batch = [first]
            deadline = time.perf_counter() + self.max_delay
            while len(batch) < self.max_batch_size:
                left = min(deadline - time.perf_counter(), self.idle_gap)
                try:
                    batch.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            with self._lock:
                self._stats["cancelled"] += len(batch) - len(live)
            for group in self._groups(live):
                self._run_group(group)

    def _groups(self, reqs):
        """Split requests, longest first, into groups whose padding stays under max_padding."""
        reqs = sorted(reqs, key=lambda r: -r.T)
        groups, cur, valid = [], [], 0
        for r in reqs:
            if cur:
                t_max = cur[0].T
                if 1.0 - (valid + r.T) / (t_max * (len(cur) + 1)) > self.max_padding:
                    groups.append(cur)
                    cur, valid = [], 0
            cur.append(r)
            valid += r.T
        if cur:
            groups.append(cur)
        return groups

    def _run_group(self, group):
        try:
            results = self._forward(group)
        except Exception as exc:  # noqa: BLE001 - isolate the guilty request, keep the worker alive
            if len(group) == 1:
                self._fail(group[0], exc)
                return
            for r in group:
                self._run_group([r])
            return
        now = time.perf_counter()
        for r, res in zip(group, results):
            r.future.set_result(res)
        with self._lock:
            self._stats["batches"] += 1
            self._stats["batched_requests"] += len(group)
            self._stats["completed"] += len(group)
            self._stats["valid_steps"] += sum(r.T for r in group)
            self._stats["padded_steps"] += group[0].T * len(group)
            self._latencies.extend(now - r.t_submit for r in group)

    def _fail(self, req, exc):
        req.future.set_exception(exc)
        with self._lock:
            self._stats["failed"] += 1

    def _forward(self, group):
        m = self.model
        B = len(group)
        T = group[0].T
        LD, H = m.num_layers * m.num_directions, m.hidden_size
        x = np.zeros((T, B, m.input_size), m.dtype)
        h0 = np.zeros((LD, B, H), m.dtype)
        lengths = np.empty(B, np.int64)
        for b, r in enumerate(group):
            x[:r.T, b] = r.x
            lengths[b] = r.T
            if r.h0 is not None:
                h0[:, b] = r.h0
        # not GRU.forward's multi-threaded routes: their parallel regions wait for the cores that the
        # submitting threads keep busy (2 threads, H = 128, 2000 requests of 1-64 steps: 3400-3900
        # against 6000-8000 requests/s); sorting the rows by length alone gained nothing measurable.
        # y is copied out below, before this thread's next call: scratch
        y, h_n, _ = m._run(x, h0, lengths, store=False, scratch_out=True)
        return [(y[:r.T, b].copy(), h_n[:, b].copy()) for b, r in enumerate(group)]


class GRUStream:
    """Stateful step-by-step inference for a unidirectional :class:`numgru.GRU`.

    ``stream = gru.stream(batch_size=B)``; ``y = stream.step(x)`` with x of shape (B, I) for one step
    (or (I,) when B = 1) returns (B, H); a chunk (T, B, I) — (B, T, I) for a batch_first model —
    returns (T, B, H) (resp. (B, T, H)). ``state`` (L, B, H) is readable and settable;
    ``reset(rows=None)`` zeroes all rows or the given ones.
    """

    def __init__(self, model, batch_size=1):
        if not isinstance(model, GRU):
            raise TypeError(f"model: expected a numgru.GRU, got {type(model).__name__}")
        if model.bidirectional or model.go_backwards:
            raise ValueError("model: streaming needs a unidirectional forward GRU (a reverse direction "
                             "needs the whole sequence)")
        self.model = model
        self.batch_size = B = check_int("batch_size", batch_size, minimum=1)
        self._ones = np.ones(B, np.int64)
        self._stepper = Stepper(model, B)
        # thread count -> whether a step runs as a forward of one step (GRU._one_step_on_rows); None
        # where no thread count would (GRU._may_step_as_forward), so that small steps do not pay for
        # asking
        self._rows = {} if model._may_step_as_forward(B) else None
        # what a step takes without conversion: (B, I), or (I,) when B = 1, of the model's dtype
        self._dtype = model.dtype
        self._step_shape = (B, model.input_size)
        self._vec_shape = (model.input_size,) if B == 1 else None

    def _on_rows(self):
        """Whether this thread count's steps run as forwards of one step (below, in :meth:`step`)."""
        threads = thread_count()
        rows = self._rows.get(threads)
        if rows is None:
            rows = self._rows[threads] = self.model._one_step_on_rows(self.batch_size, threads)
        return rows

    @property
    def state(self):
        return self._stepper.state.copy()

    @state.setter
    def state(self, value):
        value = as_real_array("state", value)
        state = self._stepper.state
        if value.shape != state.shape:
            raise ValueError(f"state: expected shape {state.shape}, got {value.shape}")
        state[...] = value

    def reset(self, rows=None):
        """Zero the state of every row, or of ``rows`` (ints or a boolean mask of length B)."""
        state = self._stepper.state
        if rows is None:
            state[...] = 0
            return
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.batch_size,):
                raise ValueError(f"rows: expected a boolean mask of shape ({self.batch_size},), got "
                                 f"{rows.shape}")
        elif rows.dtype.kind in "iu":
            if rows.size and (rows.min() < -self.batch_size or rows.max() >= self.batch_size):
                raise ValueError(f"rows: expected indices in [0, {self.batch_size}), got {rows.tolist()}")
        else:
            raise TypeError(f"rows: expected ints or a boolean mask, got dtype {rows.dtype}")
        state[:, rows] = 0

    def step(self, x):
        """One step ((B, I), or (I,) when B = 1) or a chunk of steps (3-D); returns the outputs."""
        if type(x) is np.ndarray and x.dtype is self._dtype:
            # fast path: one step, one kernel call per layer, nothing allocated but the result (the
            # stepper makes x contiguous); builtin dtypes are singletons, others take the checks below
            if x.shape == self._step_shape and (self._rows is None or not self._on_rows()):
                return self._stepper(x)
            if x.shape == self._vec_shape:
                return self._stepper(x[None])[0]
        m = self.model
        B, I = self.batch_size, m.input_size
        x = as_real_array("x", x)
        if x.ndim == 1 and B == 1:
            x3, out = x.reshape(1, 1, -1), "vec"
        elif x.ndim == 2:
            x3, out = x[None], "step"
        elif x.ndim == 3:
            x3, out = (x.transpose(1, 0, 2) if m.batch_first else x), "chunk"
        else:
            raise ValueError(f"x: expected (B, I) for one step or a 3-D chunk, got {x.ndim}-D")
        if x3.shape[1:] != (B, I):
            raise ValueError(f"x: expected batch {B} and input_size {I}, got shape {x.shape}")
        x3 = np.ascontiguousarray(x3, dtype=m.dtype)
        lengths = self._ones if x3.shape[0] == 1 else np.full(B, x3.shape[0], np.int64)
        state = self._stepper.state
        y, h_n = m._infer(x3, state, lengths, padded=False)
        state[...] = h_n
        if out == "vec":
            return y[0, 0]
        if out == "step":
            return y[0]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if m.batch_first else y


class Stepper:
    """A stream's state and one step per layer (:func:`numgru.kernels.step.gru_step` serially, or
    :func:`numgru.kernels.dispatch.run_step` where :func:`~numgru.kernels.dispatch.step_columns` splits
    the step over hidden units, decided like the bfloat16 weights for the thread count at creation; a
    frozen model's one-row steps on its weights' VNNI digits, :func:`numgru.kernels.vnni.gru_step_vnni`
    (:func:`~numgru.kernels.vnni.gru_step_vnni_before` with reset_after=False), or split over units by
    :func:`~numgru.kernels.dispatch.run_step_digits`, where :func:`~numgru.kernels.dispatch.vnni_step_wanted`
    says).

    Two (L, B, H) state buffers take turns: a step reads one and writes the other. So every kernel
    argument but the first layer's input is fixed at creation, and a step copies nothing but the
    output it returns. The layers on the serial step over float weights (and any panels a frozen
    model's step reads) run in one kernel call (:func:`~numgru.kernels.stack.gru_step_layers`), the
    same kernel with the same arguments a layer: one thread, one process against each layer's call
    from Python, bit for bit, B = 1, (I = H, layers) (32, 2) / (32, 3) / (64, 3) / (128, 2) / (256, 2)
    1.27–1.32× / 1.45× / 1.23× / 1.08× / 1.00–1.03×; B = 2, I = 16, H = 48, four layers 1.34–1.36×.
    That call takes x, the plan of addresses (:func:`~numgru.kernels.dispatch.step_layers_plan`) and
    the parity: three arrays and an int to unbox rather than gru_step's eighteen arguments, which
    made one layer's step pay for the call too: ``stream.step``, one thread, against 272d487's
    calls a layer, one process taking turns, B = 1, H = I = 8 / 64 / 128 / 256 1.21× / 1.16–1.17× /
    1.09× / 1.02–1.03× (2.64 against 3.09 µs at H = 64); frozen H = 64, one / two layers 1.19× /
    1.36×."""

    def __init__(self, model, batch_size):
        m = model
        H, B, L = m.hidden_size, batch_size, m.num_layers
        dt = m.dtype
        threads, columns = m._step_plan(B)
        tiled_max = inference_tiled_max(threads, B)
        # per layer (W_ih, W_hh, b_ih, b_hh, panels) as the kernels read them
        self.layers = layers = [m._step_weights(k, B, threads, columns) for k in range(L)]
        scalars = m._kernel_scalars()
        gi, gh = np.empty((B, 3 * H), dt), np.empty((B, 3 * H), dt)
        # on 64-byte lines, as the weights: the one-row products read each state row as it lies
        # rather than copy it to line up with the weights' rows (dot_rows), 0.3 µs a step at H = 256
        self._bufs = tuple(aligned(np.zeros((L, B, H), dt)) for _ in range(2))
        self._cur = 0
        # odd steps sweep the weights the other way (gru_step's ``backwards``), starting on what the
        # step before read last
        # a frozen model's one-row step on its weights' VNNI digits, where every layer takes them
        digits = [m._step_digits(k, B, threads, columns) for k in range(L)]
        if all(d is not None for d in digits):
            split = digits[0][0]
            digits = [d[1] for d in digits]
            work = np.zeros(step_work_size.py_func(max(m.input_size, H), H), np.int32)
            if split:  # over hidden units where the parallel slot is free
                cols_work = step_digits_columns_work(max(m.input_size, H), H, threads)
                self._step = run_step_digits
                args = lambda k, h, out, p: (h[k], digits[k], out[k], gi, gh, work, cols_work, p == 1,
                                             m.reset_after)
            else:
                self._step = gru_step_vnni if m.reset_after else gru_step_vnni_before
                args = lambda k, h, out, p: (h[k], *digits[k], out[k], gi, gh, work, p == 1)
        elif columns:
            acc = step_columns_workspace(B, H, threads, dt)
            self._step = run_step
            args = lambda k, h, out, p: (h[k], layers[k], scalars, out[k], gi, gh, acc, tiled_max, p == 1)
        else:
            self._step = gru_step
            args = lambda k, h, out, p: (h[k], *layers[k], *scalars, out[k], gi, gh, tiled_max, p == 1)
        # every layer on the serial step over float weights (a frozen model's panels too): all of them
        # from one kernel call (gru_step_layers), whose plan of addresses is read on the first step
        # (:meth:`_first_call`) from the arrays this stepper keeps
        self._stacked = (scalars, tiled_max, (gi, gh)) if (
            self._step is gru_step and all(step_layer_stackable(lay, dt) for lay in layers)) else None
        # per parity: (arguments of layer 0 after its input, [arguments of each later layer], top output)
        self._plans = []
        for p in (0, 1):
            h, out = self._bufs[p], self._bufs[1 - p]
            self._plans.append((args(0, h, out, p), [(out[k - 1], *args(k, h, out, p)) for k in range(1, L)],
                                out[-1]))
        # the compiled calls of a step per parity and kind of input x (:meth:`_first_call`), and the
        # split step's compiled entries (run_step's ``entries``)
        self._calls = {}
        self._split_entries = {}

    @property
    def state(self):
        """(L, B, H): the rows' state, live (writing into it sets the state)."""
        return self._bufs[self._cur]

    def __getstate__(self):
        # the compiled calls (machine code, and the layers' addresses for the one-call step) are
        # this object's: a copy or an unpickled stepper finds its own on its first step
        state = self.__dict__.copy()
        state["_calls"], state["_split_entries"] = {}, {}
        return state

    def __call__(self, x):
        """x (B, I) of the model's dtype; steps every layer and returns a copy of the top layer's new
        state."""
        cur = self._cur
        key = x.flags.num & ARRAY_KIND | cur << 16
        calls = self._calls.get(key)
        if calls is None:  # a kind of input not seen yet, or x not C-contiguous (never a key)
            x = np.ascontiguousarray(x)
            key = x.flags.num & ARRAY_KIND | cur << 16
            calls = self._calls.get(key)
            if calls is None:
                return self._first_call(x, key)
        entry, first, rest, top = calls
        entry(x, *first)
        if rest:
            for entry, args in rest:
                entry(*args)
        self._cur = cur ^ 1
        return top.copy()

    def _first_call(self, x, key):
        """:meth:`__call__` for a C-contiguous input of a kind not seen at this parity (``key``): run the step
        through the kernel's dispatcher and keep its calls for the kind, ``(entry, first, rest, top)``:
        ``entry(x, *first)`` steps layer 0 and each ``(entry, args)`` of rest a later layer, by the
        kernel's compiled entries (resolving the types of its 18 arguments took 0.8 µs a call;
        :func:`~numgru.kernels._jit.compiled_entry`), or by the kernel itself where there is none
        (the columns route's Python); top is the top layer's new state."""
        cur = self._cur
        first, rest, top = self._plans[cur]
        step = self._step
        if self._stacked is not None:
            # the plan's addresses read here, from the arrays this stepper holds (a copy's own)
            scalars, tiled_max, work = self._stacked
            first = (*step_layers_plan(x, self._bufs[0][0], self.layers, scalars, tiled_max, self._bufs, work), cur)
            gru_step_layers(x, *first)
            self._calls[key] = (compiled_entry(gru_step_layers, (x, *first)) or gru_step_layers, first, [], top)
            self._cur = cur ^ 1
            return top.copy()
        if step is run_step:  # the split kernel's call sites: layer 0's for this kind of x, each inner layer's
            first = (*first, self._split_entries, key)
            rest = [(*args, self._split_entries, -k) for k, args in enumerate(rest, 1)]
        step(x, *first)
        for args in rest:
            step(*args)
        self._calls[key] = (
            compiled_entry(step, (x, *first)) or step, first,
            [(compiled_entry(step, args) or step, args) for args in rest], top)
        self._cur = cur ^ 1
        return top.copy()


class EngineStream:
    """A single-row stream whose steps are submitted to a :class:`BatchingEngine`, so many streams
    stepping from many threads share kernel calls. ``step(x)`` takes (I,) or a chunk (T, I)."""

    def __init__(self, engine):
        m = engine.model
        if m.bidirectional or m.go_backwards:
            raise ValueError("engine: streaming needs a unidirectional forward GRU")
        self.engine = engine
        self._state = np.zeros((m.num_layers, m.hidden_size), m.dtype)

    @property
    def state(self):
        return self._state.copy()

    def reset(self):
        self._state[...] = 0

    def step(self, x, timeout=None):
        x = as_real_array("x", x)
        single = x.ndim == 1
        y, h_n = self.engine.submit(x[None] if single else x, self._state).result(timeout)
        self._state = h_n
        return y[0] if single else y
