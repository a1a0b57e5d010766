"""``numgru bench``: numgru against every installed peer, side by side in one process.

Peers: torch.nn.GRU (inference_mode), ONNX Runtime (a GRU node built from the same weights, intra-op
threads pinned) and OpenVINO (the same ONNX graph, f32 precision hint, threads pinned). Each peer's
output is checked against numgru's before it is timed; then the backends take turns, three rounds.
Thread counts are pinned for everyone: Numba, the BLAS numgru calls (threadpoolctl), torch, ONNX
Runtime and OpenVINO.

Prints a table (ms per forward, sequences/s, GFLOP/s = 2·T·B·3H·(I+H)/t, speedup against each peer),
writes JSON and, with matplotlib, a PNG of the speedup against torch over seq_len and hidden_size.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import tempfile
import time

import numpy as np

QUICK = dict(seq_len=[32, 128], batch=[1, 16], hidden=[64, 256])
FULL = dict(seq_len=[32, 128, 512], batch=[1, 16, 64], hidden=[64, 256, 1024])
TOL = 1e-4


class BadOption(ValueError):
    """A ``numgru bench`` option out of range or malformed, its message naming the option; the
    ``numgru`` command reports it as argparse reports its own (:func:`numgru.cli.console`)."""


def _ints(s, option):
    """The comma-separated positive ints of ``option``'s value ``s`` (None for an empty value)."""
    if not s:
        return None
    try:
        values = [int(v) for v in s.split(",")]
    except ValueError:
        raise BadOption(f"{option}: expected comma-separated integers, got {s!r}") from None
    if min(values) < 1:
        raise BadOption(f"{option}: expected integers >= 1, got {s!r}")
    return values


def thread_counts(s, option="--threads"):
    """The comma-separated thread counts ``s`` as ints, each from 1 to Numba's thread count
    (NUMBA_NUM_THREADS: numgru could neither run more nor label them); None for an empty value."""
    import numba
    counts = _ints(s, option)
    if counts and max(counts) > numba.config.NUMBA_NUM_THREADS:
        raise BadOption(f"{option}: at most {numba.config.NUMBA_NUM_THREADS} (Numba's thread count, "
                         f"NUMBA_NUM_THREADS), got {s!r}")
    return counts


def check_output(path, option):
    """Fail before the runs, not after them, when ``path`` is a folder or its folder does not exist
    (no path, no check)."""
    if not path:
        return
    if os.path.isdir(path):
        raise BadOption(f"{option}: {path!r} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadOption(f"{option}: folder {folder!r} does not exist")


def point_bytes(T, B, H):
    """About the memory (bytes) one point of the grid takes at its peak (I = H): the input, drawn in
    float64 and kept in float32, the projection and the outputs of numgru and of each peer (float32),
    and the weights (float64 while drawn, float32 in numgru and in each peer's copy)."""
    rows = T * B
    return 8 * rows * H + 4 * rows * H * (1 + 3 + 4) + 8 * 6 * H * H * 4


def physical_memory():
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(need, what):
    """Fail before the runs (rather than with a MemoryError, or the OS's out-of-memory killer, part
    way through) when ``what`` (the options and the point, for the message) needs ``need`` bytes,
    more than half of this machine's memory; no check where the OS does not say how much it has."""
    total = physical_memory()
    if total and need > total // 2:
        raise BadOption(f"{what} needs about {need / 2**30:.3g} GiB, more than half of this machine's "
                        f"{total / 2**30:.3g} GiB")


def _check_memory(grid):
    """:func:`check_fits` for the grid's largest point (:func:`point_bytes`)."""
    T, B, H = max(grid["seq_len"]), max(grid["batch"]), max(grid["hidden"])
    check_fits(point_bytes(T, B, H), f"--seq-len/--batch/--hidden: the point T={T}, B={B}, H={H}")


@contextlib.contextmanager
def pinned_threads(n):
    """Pin Numba, BLAS (threadpoolctl) and torch to ``n`` threads; restore on exit.

    torch is imported first, before Numba's threads may start: torch's CPU build and Numba's OpenMP
    layer share the system's GNU OpenMP, and with Numba's threads launched before torch's import
    torch's two-thread forwards ran 40× slower (T = 128, B = 64, H = 64: 253 against 5.9 ms; one
    thread level), which had inflated the asv suite's two-thread ratios."""
    try:
        import torch
    except ImportError:
        torch = None
    import numba
    old_numba = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    limiter = None
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - load the BLAS numba calls so it is limited too
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(n)
    except ImportError:
        pass
    old_torch = None
    if torch is not None:
        old_torch = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old_numba)
        if limiter is not None:
            limiter.restore_original_limits()
        if old_torch is not None:
            torch.set_num_threads(old_torch)


def amx_state():
    """Whether numgru's float32 products may run on AMX tiles here (:mod:`numgru.kernels.amx`), and
    where not, whether "medium" precision takes AVX512-BF16's products (:mod:`numgru.kernels.dpbf16`)."""
    from .kernels.amx import amx_ready
    if os.environ.get("NUMGRU_AMX", "1") == "0":
        return "off (NUMGRU_AMX=0)"
    if amx_ready():
        return "on (float32 products on AMX tiles where they pay)"
    from .kernels.dpbf16 import dpbf16_ready
    return ("not available (\"medium\" precision: AVX512-BF16's bfloat16 products)" if dpbf16_ready()
            else "not available")


def blas_info():
    try:
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import threadpool_info
        return [f"{d['internal_api']} {d.get('version')} kernel={d.get('architecture')} "
                f"threads={d.get('num_threads')}" for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        return ["threadpoolctl not installed: BLAS kernel unknown"]


SETTLE_S = 0.3
ROUNDS = 3


def pause_for(threads):
    """The pause (s) before timing a backend pinned to ``threads``: ``SETTLE_S`` where pools run
    (see :func:`time_it`), none on one thread, where every backend is pinned to the calling thread
    and no pool has workers to spin (``--quick``, one thread: 8–9 s against 37–38 s, the ratios
    alike within the machine's noise)."""
    return SETTLE_S if threads > 1 else 0.0


def time_it(fn, budget=0.4, min_repeat=3, max_repeat=50, repeat=None, pause=None):
    """Median wall time (s) of ``fn()`` after a pause (``pause`` s, default ``SETTLE_S``) and one
    warm-up call.

    The pause lets the worker threads of whatever ran before (OpenBLAS, OpenVINO and ONNX Runtime pools
    spin for a while after each call) go idle, so that no backend is timed against another's spinning
    threads: on 2 vCPUs that made the next backend's per-step parallel regions up to 2× slower.
    """
    time.sleep(SETTLE_S if pause is None else pause)
    fn()
    t0 = time.perf_counter()
    fn()
    ts = [time.perf_counter() - t0]
    n = repeat or int(min(max_repeat, max(min_repeat, budget / max(ts[0], 1e-9))))
    for _ in range(n - 1):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _peer_torch(gru, x, threads):
    import torch
    m = gru.to_torch().eval()
    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return m(tx)[0].numpy()
    return run


def _onnx_file(gru, tmpdir):
    """Export once per model object (the object keeps its path: ids are reused after collection)."""
    from .interop.onnx import export
    path = getattr(gru, "_bench_onnx_path", None)
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".onnx", dir=tmpdir)
        os.close(fd)
        export(gru, path)
        gru._bench_onnx_path = path
    return path


def _peer_ort(gru, x, threads, tmpdir):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(_onnx_file(gru, tmpdir), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(["y"], {"x": x})[0]


def _peer_openvino(gru, x, threads, tmpdir):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(_onnx_file(gru, tmpdir))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "INFERENCE_NUM_THREADS": threads,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    out = compiled.output("y")
    return lambda: req.infer({"x": x})[out]


PEERS = {"torch": _peer_torch, "onnxruntime": _peer_ort, "openvino": _peer_openvino}


def threading_layer():
    """The threading layer Numba's threads run on (launching them if no call has), as
    ``numba.threading_layer()`` names it."""
    import numba
    numba.get_num_threads()  # launches Numba's threads (once per process) on the layer it picks now
    return numba.threading_layer()


def keep_threading_layer():
    """Have Numba launch its threads, when it does, on the layer it takes in a fresh process (asked of
    one), whatever the peers load into this one; unless they run already or ``NUMBA_THREADING_LAYER``
    names one. Numba takes its layer when it first launches its threads, and OpenVINO's import
    brings its oneTBB into the process, which Numba then takes before OpenMP: numgru would be timed
    on a layer users without OpenVINO do not get, beside OpenVINO's own TBB pool (on the 2-vCPU
    Intel machine, two threads, B = 1, H = 256, T = 32 / 128: 0.335–0.352 / 1.16–1.31 ms a forward
    with OpenVINO among the peers against 0.206 / 0.72–0.74 without it). Launching Numba's threads
    before importing the peers instead ran torch's two-thread forwards up to 50× slower (its OpenMP
    pool beside Numba's: T = 128, B = 64, H = 64 285 ms against 5.9)."""
    import numba
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        numba.threading_layer()
        return  # launched already: the layer is taken
    except ValueError:
        pass
    layer = _fresh_threading_layer()
    if layer is not None:
        numba.config.THREADING_LAYER = layer


@functools.lru_cache(maxsize=None)
def _fresh_threading_layer():
    """The layer Numba takes in a fresh Python process, or None where that could not be learnt."""
    import subprocess
    import sys
    code = "import numba; numba.get_num_threads(); print(numba.threading_layer())"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    layer = out.stdout.strip()
    return layer if out.returncode == 0 and layer in ("omp", "tbb", "workqueue") else None


def available_peers(names):
    """The peers of ``names`` that import, in order (an unknown name raises ValueError), Numba's
    threading layer kept first (:func:`keep_threading_layer`)."""
    import importlib
    keep_threading_layer()
    out = []
    for name in names:
        mod = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}.get(name)
        if mod is None:
            raise BadOption(f"--peers: unknown peer {name!r} (expected torch, onnxruntime, openvino)")
        try:
            importlib.import_module(mod)
            out.append(name)
        except ImportError:
            pass
    return out


def _checked(row, name, make, ref, what):
    """``make()``'s callable if its output is within TOL of ``ref`` (recorded as
    ``<name>_max_abs_diff``); else None, with ``<name>_error`` saying why (a peer that cannot run a
    point is reported, not fatal)."""
    try:
        fn = make()
        err = float(np.abs(np.asarray(fn()).reshape(ref.shape) - ref).max())
    except Exception as exc:
        row[f"{name}_error"] = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        return None
    row[f"{name}_max_abs_diff"] = err
    if not err <= TOL:
        row[f"{name}_error"] = f"{what} differs from numgru by {err:.2e} (> {TOL})"
        return None
    return fn


def _take_turns(runs, timer):
    """Median time (s) per backend: the backends take turns, ROUNDS times, and each keeps the median of
    its round times, so a slow spell of the shared machine hits every backend alike."""
    per_round = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, fn in runs.items():
            per_round[name].append(timer(fn))
    return {name: float(np.median(v)) for name, v in per_round.items()}


def set_precision(precision):
    """:func:`numgru.set_float32_matmul_precision` (``precision``); returns the call that restores
    the setting before it."""
    import numgru as ng
    before = ng.get_float32_matmul_precision()
    ng.set_float32_matmul_precision(precision)
    return lambda: ng.set_float32_matmul_precision(before)


def at_precision(precision, fn):
    """``fn`` as a callable run under ``precision`` (:func:`set_precision`), the setting before it
    restored after each call."""
    def run():
        restore = set_precision(precision)
        try:
            return fn()
        finally:
            restore()
    return run


def run_point(T, B, H, threads, peers, tmpdir, repeat=None, budget=0.4, bf16=False, frozen=False,
              precisions=()):
    """Time numgru and each peer at one (T, B, H) point; I = H, one layer, float32. With ``bf16``
    also numgru's quantized copy (:meth:`numgru.GRU.quantize`), reported as ``numgru_bf16_*`` with its
    largest difference from the float32 model's output; with ``frozen`` its frozen copy
    (:meth:`numgru.GRU.freeze`, weights packed once, as a peer's session packs them), reported as
    ``numgru_frozen_*`` and ``frozen_speedup_vs_<peer>``; for each of ``precisions`` ("high",
    "medium") the model under :func:`numgru.set_float32_matmul_precision`, as ``numgru_<p>_*`` and
    ``<p>_speedup_vs_<peer>`` (the peers stay at their defaults)."""
    import numgru as ng
    rng = np.random.default_rng(0)
    gru = ng.GRU(H, H, seed=0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    ref = gru(x)[0]
    flops = 2.0 * T * B * 3 * H * (H + H)
    row = {"T": T, "B": B, "H": H, "I": H, "threads": threads}
    runs = {"numgru": lambda: gru(x)}
    if bf16:
        quantized = gru.quantize("bfloat16")
        row["numgru_bf16_max_abs_diff"] = float(np.abs(quantized(x)[0] - ref).max())
        runs["numgru_bf16"] = lambda: quantized(x)
    if frozen:
        fz = gru.freeze()
        row["numgru_frozen_max_abs_diff"] = float(np.abs(fz(x)[0] - ref).max())
        runs["numgru_frozen"] = lambda: fz(x)
    for prec in precisions:
        run = at_precision(prec, lambda: gru(x))
        row[f"numgru_{prec}_max_abs_diff"] = float(np.abs(run()[0] - ref).max())
        runs[f"numgru_{prec}"] = run
    for name in peers:
        fn = _checked(row, name,
                      lambda: PEERS[name](gru, x, threads, *((tmpdir,) if name != "torch" else ())),
                      ref, "output")
        if fn is not None:
            runs[name] = fn
    med = _take_turns(runs, lambda fn: time_it(fn, budget=budget / ROUNDS, min_repeat=1,
                                               max_repeat=50 // ROUNDS, repeat=repeat,
                                               pause=pause_for(threads)))
    t = med["numgru"]
    row["numgru_ms"] = t * 1e3
    row["numgru_seq_per_s"] = B / t
    row["numgru_gflops"] = flops / t / 1e9
    if bf16:
        tq = med["numgru_bf16"]
        row["numgru_bf16_ms"] = tq * 1e3
    if frozen:
        tf = med["numgru_frozen"]
        row["numgru_frozen_ms"] = tf * 1e3
    for prec in precisions:
        row[f"numgru_{prec}_ms"] = med[f"numgru_{prec}"] * 1e3
    for name in runs:
        if not name.startswith("numgru"):
            tp = med[name]
            row[f"{name}_ms"] = tp * 1e3
            row[f"speedup_vs_{name}"] = tp / t
            if bf16:
                row[f"bf16_speedup_vs_{name}"] = tp / tq
            if frozen:
                row[f"frozen_speedup_vs_{name}"] = tp / tf
            for prec in precisions:
                row[f"{prec}_speedup_vs_{name}"] = tp / med[f"numgru_{prec}"]
    return row


STEP_PEERS = ("torch", "onnxruntime")


def time_step(fn, calls=300, blocks=15, block_s=0.005, pause=None):
    """Median time (s) of one call of a µs-scale ``fn``: after a pause (as :func:`time_it`'s) and a
    warm-up block, the median over ``blocks`` blocks of at most ``calls`` calls each (fewer for slow
    calls: about ``block_s`` a block, at least 3 calls)."""
    time.sleep(SETTLE_S if pause is None else pause)
    fn()
    t0 = time.perf_counter()
    fn()
    calls = int(min(calls, max(3, block_s / max(time.perf_counter() - t0, 1e-9))))
    for _ in range(calls):
        fn()
    per_block = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_block.append((time.perf_counter() - t0) / calls)
    return float(np.median(per_block))


def run_step_point(B, H, threads, peers, tmpdir, bf16=False, calls=300, blocks=15, frozen=False):
    """One recurrent step of B rows from Python (I = H, float32): numgru's ``gru.stream(B).step(x)``,
    ``GRUCell(x, h)`` and the GRU's forward of one step from h (``gru(x[None], h[None])``, as a PyTorch
    user decodes: ``forward``) against torch.nn.GRUCell (inference_mode) and ONNX Runtime running the
    model's GRU node on one time step (its state input left at zero), each checked against numgru's
    step first. With ``bf16`` also the stream of the quantized copy; with ``frozen`` the stream, the
    cell and the forward of the frozen copies (``stream_frozen``, ``cell_frozen``,
    ``forward_frozen``). Times in µs; ``step_speedup_vs_<peer>`` is the peer's time over the
    stream's."""
    import numgru as ng
    rng = np.random.default_rng(0)
    gru = ng.GRU(H, H, seed=0)
    cell = ng.GRUCell(H, H)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in gru.state_dict().items()})
    x = rng.standard_normal((B, H)).astype(np.float32)
    h = np.zeros((B, H), np.float32)
    stream = gru.stream(B)
    ref = cell(x, h)
    row = {"B": B, "H": H, "I": H, "threads": threads}
    x3, h3 = x[None], h[None]
    runs = {"stream": lambda: stream.step(x), "cell": lambda: cell(x, h), "forward": lambda: gru(x3, h3)}
    if bf16:
        qstream = gru.quantize("bfloat16").stream(B)
        runs["stream_bf16"] = lambda: qstream.step(x)
    if frozen:
        fgru, fcell = gru.freeze(), cell.freeze()
        fstream = fgru.stream(B)
        runs["stream_frozen"] = lambda: fstream.step(x)
        runs["cell_frozen"] = lambda: fcell(x, h)
        runs["forward_frozen"] = lambda: fgru(x3, h3)
    for name in peers:
        if name in STEP_PEERS:
            fn = _checked(row, name, lambda: _step_peer(name, gru, cell, x, h, threads, tmpdir), ref,
                          "step")
            if fn is not None:
                runs[name] = fn
    med = _take_turns(runs, lambda fn: time_step(fn, calls, blocks, pause=pause_for(threads)))
    for name in runs:
        row[f"{name}_us"] = med[name] * 1e6
    for name in runs:
        if name in STEP_PEERS:
            row[f"step_speedup_vs_{name}"] = row[f"{name}_us"] / row["stream_us"]
    return row


def _step_peer(name, gru, cell, x, h, threads, tmpdir):
    """A peer's one step: torch.nn.GRUCell under inference_mode, or ONNX Runtime's GRU node on one
    time step (state input left at zero)."""
    if name == "onnxruntime":
        return _peer_ort(gru, x[None], threads, tmpdir)
    import torch
    tc = cell.to_torch()
    tx, th = torch.from_numpy(x), torch.from_numpy(h)

    def run():
        with torch.inference_mode():
            return tc(tx, th).numpy()
    return run


def format_step_table(rows, peers):
    peers = [p for p in peers if p in STEP_PEERS]
    bf16 = any("stream_bf16_us" in r for r in rows)
    frozen = any("stream_frozen_us" in r for r in rows)
    head = ["thr", "B", "H", "stream us", "GRUCell us", "GRU(x,h) us"] + (["bf16 stream us"] if bf16 else [])
    head += ["frozen stream us", "frozen GRUCell us", "frozen GRU(x,h) us"] if frozen else []
    for p in peers:
        head += [f"{p} us", f"x{p}"]
    lines = [head]
    for r in rows:
        line = [str(r["threads"]), str(r["B"]), str(r["H"]), f"{r['stream_us']:.1f}", f"{r['cell_us']:.1f}",
                f"{r['forward_us']:.1f}"]
        if bf16:
            line.append(f"{r['stream_bf16_us']:.1f}")
        if frozen:
            line += [f"{r['stream_frozen_us']:.1f}", f"{r['cell_frozen_us']:.1f}", f"{r['forward_frozen_us']:.1f}"]
        for p in peers:
            if f"{p}_us" in r:
                line += [f"{r[p + '_us']:.1f}", f"{r['step_speedup_vs_' + p]:.2f}"]
            else:
                line += ["n/a", "-"]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in lines)


def format_table(rows, peers):
    bf16 = any("numgru_bf16_ms" in r for r in rows)
    frozen = any("numgru_frozen_ms" in r for r in rows)
    precisions = [p for p in ("high", "medium") if any(f"numgru_{p}_ms" in r for r in rows)]
    head = ["thr", "T", "B", "H", "numgru ms", "seq/s", "GFLOP/s"]
    for p in peers:
        head += [f"{p} ms", f"x{p}"]
    if frozen:
        head += ["frozen ms"] + [f"frozen x{p}" for p in peers]
    if bf16:
        head += ["bf16 ms", "bf16 err"] + [f"bf16 x{p}" for p in peers]
    for q in precisions:
        head += [f"{q} ms", f"{q} err"] + [f"{q} x{p}" for p in peers]
    lines = [head]
    for r in rows:
        line = [str(r["threads"]), str(r["T"]), str(r["B"]), str(r["H"]), f"{r['numgru_ms']:.3f}",
                f"{r['numgru_seq_per_s']:.0f}", f"{r['numgru_gflops']:.1f}"]
        for p in peers:
            if f"{p}_ms" in r:
                line += [f"{r[p + '_ms']:.3f}", f"{r['speedup_vs_' + p]:.2f}"]
            else:
                line += ["n/a", "-"]
        if frozen:
            line += [f"{r['numgru_frozen_ms']:.3f}"]
            line += [f"{r['frozen_speedup_vs_' + p]:.2f}" if f"frozen_speedup_vs_{p}" in r else "-"
                     for p in peers]
        if bf16:
            line += [f"{r['numgru_bf16_ms']:.3f}", f"{r['numgru_bf16_max_abs_diff']:.1e}"]
            line += [f"{r['bf16_speedup_vs_' + p]:.2f}" if f"bf16_speedup_vs_{p}" in r else "-"
                     for p in peers]
        for q in precisions:
            line += [f"{r[f'numgru_{q}_ms']:.3f}", f"{r[f'numgru_{q}_max_abs_diff']:.1e}"]
            line += [f"{r[f'{q}_speedup_vs_{p}']:.2f}" if f"{q}_speedup_vs_{p}" in r else "-"
                     for p in peers]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in lines)


def plot(rows, path, peer="torch"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if f"speedup_vs_{peer}" in r]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, xkey, fixed in ((axes[0], "T", "H"), (axes[1], "H", "T")):
        fixed_val = sorted({r[fixed] for r in rows})[len({r[fixed] for r in rows}) // 2]
        for (B, thr) in sorted({(r["B"], r["threads"]) for r in rows}):
            pts = sorted((r[xkey], r[f"speedup_vs_{peer}"]) for r in rows
                         if r["B"] == B and r["threads"] == thr and r[fixed] == fixed_val)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"B={B}, {thr} thread(s)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("seq_len T" if xkey == "T" else "hidden_size H (= input_size)")
        ax.set_ylabel(f"speedup vs {peer} (×)")
        ax.set_title(f"{fixed} = {fixed_val}")
        ax.legend(fontsize=8)
    fig.suptitle(f"numgru forward speedup over {peer} (float32, one layer, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args):
    import numba

    import numgru as ng
    from .cli import _cpu_name
    grid = dict(QUICK if args.quick else FULL)
    for key, option in (("seq_len", "--seq-len"), ("batch", "--batch"), ("hidden", "--hidden")):
        values = _ints(getattr(args, key), option)
        if values:
            grid[key] = values
    _check_memory(grid)
    threads = thread_counts(args.threads) or [1]
    if args.repeat is not None and args.repeat < 1:
        raise BadOption(f"--repeat: expected an integer >= 1, got {args.repeat}")
    check_output(args.json, "--json")
    check_output(args.plot, "--plot")
    precisions = [p for p in (getattr(args, "precision", None) or "").split(",") if p]
    for p in precisions:
        if p not in ("high", "medium"):
            raise BadOption(f"--precision: expected 'high' and/or 'medium', got {p!r}")
    asked = [p for p in args.peers.split(",") if p and p != "none"]
    peers = available_peers(asked)
    budget = 0.3 if args.quick else 0.5
    layer = threading_layer()
    print(f"numgru {ng.__version__} | numba {numba.__version__} ({layer} threads) | CPU {_cpu_name()} "
          f"({os.cpu_count()} cores)")
    for line in blas_info():
        print(f"BLAS   {line}")
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(f"env    {env or 'OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset'}")
    amx = amx_state()
    print(f"AMX    {amx}")
    print(f"peers  {', '.join(peers) or ('none installed (pip install numgru[bench])' if asked else 'none')}")
    t0 = time.perf_counter()
    ng.GRU(4, 4, seed=0)(np.zeros((2, 1, 4), np.float32))
    print(f"first call (compile or cache load): {time.perf_counter() - t0:.2f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for n in threads:
            with pinned_threads(n):
                time.sleep(SETTLE_S)  # (once, for the pools of the thread count before)
                for T in grid["seq_len"]:
                    for B in grid["batch"]:
                        for H in grid["hidden"]:
                            row = run_point(T, B, H, n, peers, tmpdir, args.repeat, budget,
                                            bf16=args.bf16, frozen=args.frozen, precisions=precisions)
                            rows.append(row)
                            for p in peers:
                                if f"{p}_error" in row:
                                    print(f"  note: {p} at T={T} B={B} H={H}: {row[p + '_error']}")
        step_rows = []
        if args.steps:
            for n in threads:
                with pinned_threads(n):
                    time.sleep(SETTLE_S)
                    for B in [b for b in grid["batch"] if b <= 16]:
                        for H in grid["hidden"]:
                            row = run_step_point(B, H, n, peers, tmpdir, bf16=args.bf16,
                                                 frozen=args.frozen)
                            step_rows.append(row)
                            for p in STEP_PEERS:
                                if f"{p}_error" in row:
                                    print(f"  note: {p} step at B={B} H={H}: {row[p + '_error']}")
    print()
    print(format_table(rows, peers))
    if step_rows:
        print("\none step from Python (µs; B rows, I = H; xpeer = peer time / stream time):")
        print(format_step_table(step_rows, peers))
    result = {"numgru": ng.__version__, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
              "python": platform.python_version(), "numba_threading_layer": layer, "blas": blas_info(),
              "env": env, "amx": amx,
              "peers": peers,
              "rows": rows, "steps": step_rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    if args.plot:
        p = plot(rows, args.plot)
        print(f"wrote {p}" if p else "no plot (needs matplotlib and the torch peer)")
    return 0
