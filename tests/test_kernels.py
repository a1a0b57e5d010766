"""The kernels: one place owns the flags, the compiled code runs, the cache works in a fresh process."""
import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from numba.core.caching import FunctionCache
from numba.core.registry import CPUDispatcher

import numgru as ng
from numgru.kernels import _jit


def _all_kernels():
    import numgru.kernels.dispatch  # noqa: F401  (imports every kernel module)
    import numgru.training.optim  # noqa: F401
    return dict(_jit.REGISTRY)


def test_every_kernel_uses_the_owned_flags():
    kernels = _all_kernels()
    assert {"gru_forward_serial", "gru_forward_rows_parallel",
            "gru_forward_cols_parallel", "gru_backward_serial"} <= set(kernels)
    for name, disp in kernels.items():
        opts = disp.targetoptions
        assert opts["nogil"] is True, name
        assert isinstance(disp._cache, FunctionCache) == _jit.CACHE, name
        assert opts["fastmath"] is not True, name
        assert set(opts["fastmath"]) == set(_jit.FASTMATH), name
        assert not {"nnan", "ninf", "fast"} & set(opts["fastmath"]), name
        assert opts.get("error_model") == "numpy", name
        assert bool(opts.get("parallel", False)) == name.endswith("_parallel"), name
        # a parallel build caches under a name of its own (numba#6845: not keyed by the flags)
        assert disp.py_func.__qualname__.endswith("_parallel") == name.endswith("_parallel"), name


def _calls_wide_vectors_first(body):
    """Whether a function or loop body (a list of ast statements), past any docstring, starts with
    ``wide_vectors()``."""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    first = body[0] if body else None
    return (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
            and getattr(first.value.func, "id", None) == "wide_vectors")


def test_every_kernel_and_prange_body_asks_for_wide_vectors():
    # a kernel without it vectorises at 256 bits on Intel's AVX-512 cores; a prange body is compiled
    # as a function of its own, so it needs its own call
    for name, disp in _all_kernels().items():
        tree = ast.parse(textwrap.dedent(inspect.getsource(disp.py_func)))
        func = tree.body[0]
        assert _calls_wide_vectors_first(func.body), name
        for node in ast.walk(func):
            if (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
                    and getattr(node.iter.func, "id", None) == "prange"):
                assert _calls_wide_vectors_first(node.body), (name, node.lineno)


def test_prange_bodies_hand_called_functions_no_bare_loop_index():
    # a prange index is int64 where Numba types the loop and uint64 in the body it compiles: handed
    # bare to a called (not inlined) function it compiled that function twice (the column routes'
    # workers, 5 s each cold), so the bodies pass np.int64(index)
    for name, disp in _all_kernels().items():
        func = ast.parse(textwrap.dedent(inspect.getsource(disp.py_func))).body[0]
        for loop in ast.walk(func):
            if not (isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call)
                    and getattr(loop.iter.func, "id", None) == "prange"):
                continue
            index = loop.target.id
            for node in ast.walk(loop):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                    continue
                callee = disp.py_func.__globals__.get(node.func.id)
                if not isinstance(callee, CPUDispatcher) or callee.targetoptions.get("inline") == "always":
                    continue
                bare = [a for a in node.args if isinstance(a, ast.Name) and a.id == index]
                assert not bare, (name, node.func.id, node.lineno)


def test_wide_vectors_marks_the_compiled_function():
    @numba.njit(cache=False)
    def f(a):
        _jit.wide_vectors()
        s = 0.0
        for v in a:
            s += v
        return s

    assert f(np.arange(4.0)) == 6.0
    ir = f.inspect_llvm(f.signatures[0])
    groups = {line.split()[1] for line in ir.splitlines()
              if line.startswith("attributes #") and _jit.WIDE_ATTRIBUTE in line}
    # the function's own definition (not the wrappers Numba adds for Python and C callers) carries it
    own = [line for line in ir.splitlines()
           if line.startswith("define") and "@_ZN" in line and "cpython" not in line]
    assert groups and own and all(any(line.endswith(f"{g} {{") for g in groups) for line in own)


def test_compiled_kernel_runs_not_python(monkeypatch):
    from numgru.kernels import forward

    assert isinstance(forward.gru_forward_serial, CPUDispatcher)

    def python_fallback(*args, **kwargs):
        raise AssertionError("the Python body ran instead of the compiled kernel")

    monkeypatch.setattr(forward, "_gru_forward", python_fallback)
    g = ng.GRU(3, 4, seed=0)
    y, _ = g(np.ones((4, 2, 3), np.float32))
    assert np.isfinite(y).all()
    sigs = [str(s) for s in forward.gru_forward_serial.signatures]
    assert any("float32" in s for s in sigs)
    assert forward.gru_forward_serial.nopython_signatures


_PROBE = r"""
import json, numpy as np, numgru as ng
from numgru.kernels import forward
g = ng.GRU(3, 4, seed=0)
y, _ = g(np.ones((4, 2, 3), np.float32))
st = forward.gru_forward_serial.stats
print(json.dumps({"hits": sum(st.cache_hits.values()), "misses": sum(st.cache_misses.values()),
                  "y": float(y.sum())}))
"""


def test_warm_cache_in_fresh_process(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMGRU_CACHE", None)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             check=True, timeout=600)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0]["misses"] >= 1
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0
    assert runs[0]["y"] == runs[1]["y"]


def test_numba_thread_count_is_read_not_changed():
    before = numba.get_num_threads()
    ng.GRU(3, 4, seed=0)(np.ones((3, 70, 3), np.float32))
    assert numba.get_num_threads() == before


def test_thread_count_reads_this_threads_setting():
    """dispatch.thread_count (the lock-free reader) agrees with numba.get_num_threads, which is per
    thread: here, after a change, and in another thread with its own setting."""
    import threading

    from numgru.kernels.dispatch import thread_count
    before = numba.get_num_threads()
    assert thread_count() == before
    numba.set_num_threads(1)
    try:
        assert thread_count() == 1
    finally:
        numba.set_num_threads(before)
    seen = []

    def worker():
        numba.set_num_threads(1)
        seen.append((thread_count(), numba.get_num_threads()))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(1, 1)]
    assert thread_count() == before


def test_thread_count_takes_the_lock_free_reader(monkeypatch):
    """Once Numba's threads are up, thread_count answers without numba.get_num_threads (whose two
    locks cost a microsecond a call, several times per forward)."""
    from numgru.kernels import dispatch
    numba.set_num_threads(numba.get_num_threads())  # launches Numba's threads if nothing has yet
    want = numba.get_num_threads()
    monkeypatch.setattr(dispatch.numba, "get_num_threads", lambda: pytest.fail("took the locked path"))
    assert dispatch.thread_count() == want


def test_parallel_build_caches_apart_from_the_serial_one():
    # Numba keys cache files by qualified name and line, not by flags (numba#6845): without a copy of
    # its own a parallel build would load the serial build's machine code, or the reverse
    def add_one(x):
        return x + 1

    serial = numba.njit(cache=True)(add_one)
    copy = _jit.own_cache_copy(add_one, "parallel")
    parallel = numba.njit(cache=True, parallel=True)(copy)
    assert serial._cache._cache_file._index_name != parallel._cache._cache_file._index_name
    assert copy.__name__ == "add_one" and copy.__code__ is add_one.__code__ and copy(1) == 2


@numba.njit(cache=False)
def _scaled_add(out, pair, scale, r0, r1):
    a, b = pair
    for i in range(r0, r1):
        out[i] = a[i] * scale + b[i]


@numba.njit(cache=False)
def _refuse(out, r0):
    if r0 < 0:
        raise ValueError("r0 is negative")
    out[r0] = 1.0


@numba.njit(cache=False)
def _by_address(address, out, pair, scale, n):
    for c in range(n):
        _jit.call_native(address, (out, pair, scale, np.int64(3 * c), np.int64(3 * c + 3)), None)


@numba.njit(cache=False, parallel=True)
def _by_address_parallel(address, out, pair, scale, n):
    for c in numba.prange(n):
        _jit.call_native(address, (out, pair, scale, np.int64(3 * c), np.int64(3 * c + 3)), None)


@numba.njit(cache=False)
def _refuse_by_address(address, out, r0):
    _jit.call_native(address, (out, r0), None)


@pytest.mark.parametrize("caller", [_by_address, _by_address_parallel])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_kernel_calls_another_by_address(caller, dtype):
    """call_native runs the callee's own machine code (native_address) on the caller's arrays, in a
    prange body too."""
    a = np.arange(12, dtype=dtype)
    b = np.full(12, 0.5, dtype)
    out = np.zeros(12, dtype)
    args = (out, (a, b), 2.0, 0, 0)
    address = _jit.native_address(_scaled_add, args)
    assert _jit.native_address(_scaled_add, args) == address  # kept per argument types
    assert tuple(numba.typeof(v) for v in args) in _scaled_add.signatures
    caller(address, out, (a, b), 2.0, 4)
    np.testing.assert_array_equal(out, a * 2 + 0.5)
    other = np.float64 if dtype is np.float32 else np.float32
    wider = (out.astype(other), (a.astype(other), b.astype(other)), 2.0, 0, 0)
    assert _jit.native_address(_scaled_add, wider) != address


def test_a_kernel_called_by_address_passes_its_errors_on():
    out = np.zeros(4)
    address = _jit.native_address(_refuse, (out, 0))
    _refuse_by_address(address, out, 2)
    assert out[2] == 1.0
    with pytest.raises(ValueError, match="r0 is negative"):
        _refuse_by_address(address, out, -1)


@numba.njit(cache=False)
def _positive(a, i):
    return a[i] > 0


@numba.njit(cache=False, parallel=True)
def _all_positive_by_address(address, a):
    ok = np.ones(a.shape[0], np.bool_)
    for i in numba.prange(a.shape[0]):
        ok[i] = _jit.call_native(address, (a, np.int64(i)), np.bool_(True))
    return ok.all()


def test_a_kernel_called_by_address_gives_what_it_returns():
    a = np.array([1.0, 2.0, 3.0])
    address = _jit.native_address(_positive, (a, 0), np.bool_(True))
    assert _all_positive_by_address(address, a)
    a[1] = -2.0
    assert not _all_positive_by_address(address, a)
    # the result's type is checked against the callee's
    with pytest.raises(TypeError, match="returns bool, not none"):
        _jit.native_address(_positive, (a, 0))
    with pytest.raises(TypeError, match="returns none, not bool"):
        _jit.native_address(_refuse, (a, 0), np.bool_(True))


def test_target_features_follow_numbas(monkeypatch):
    """Under ``NUMBA_CPU_NAME=generic`` Numba sets the features empty and builds generic code: the
    instruction-set kernels must then not be dispatched to (their AVX-512 intrinsics aborted LLVM),
    so the features read are Numba's, not the host's."""
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
    assert _jit.target_cpu() == ("generic", "")
    assert not _jit.cpu_ready("NUMGRU_TEST_SWITCH", ("+avx512f",))
    assert not _jit.avx512_zen()
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma")
    assert _jit.cpu_ready("NUMGRU_TEST_SWITCH", ("+avx2",))
    assert not _jit.cpu_ready("NUMGRU_TEST_SWITCH", ("+avx2", "+avx512f"))
    monkeypatch.setattr(numba.config, "CPU_NAME", None)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    name, features = _jit.target_cpu()
    assert name == "" or features  # the host's, where LLVM reads them


def test_routes_and_inference_copies_reach_the_kernels_with_one_signature(monkeypatch):
    """A signature of the serial forward compiles for about 18 s cold (a step kernel's for several):
    the planned and general paths, training, the rows and chunked routes (which call the serial
    kernel from inside Numba) and frozen or quantized copies must all reach it with the layers'
    argument types. A constant passed in a nested call is typed as a literal, and a read-only array
    (a plan's lengths, a frozen copy's weights) is a type of its own: each had compiled the kernel
    again, 14 of the 15 signatures the test suite compiled."""
    from numgru.kernels import dispatch, forward, step

    rng = np.random.default_rng(0)
    g = ng.GRU(5, 16, seed=0)
    x = rng.standard_normal((6, 10, 5)).astype(np.float32)
    ran = []
    rows = dispatch.gru_forward_rows
    monkeypatch.setattr(dispatch, "gru_forward_rows", lambda *a: ran.append("rows") or rows(*a))
    monkeypatch.setattr(dispatch, "NAMED_ROUTE_MIN_WORK", 0)  # the rows route for this small call
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        g(x)
        g(x, lengths=np.arange(1, 11) % 7)
        g.forward_train(x)
        g.freeze()(x)
        g.quantize()(x)
        cell = ng.GRUCell(5, 16, seed=0)
        cell(x[0])
        cell.freeze()(x[0])
        cell.quantize()(x[0])
        with monkeypatch.context() as m:  # the chunked route, one step at a time
            m.setattr(dispatch, "INTERLEAVE_MIN_BYTES", 0)
            m.setattr(dispatch, "INTERLEAVE_CHUNK_BYTES", 1)
            ng.GRU(5, 16, seed=1)(x)
        if numba.config.NUMBA_NUM_THREADS >= 2:
            numba.set_num_threads(2)
            g(x, lengths=np.arange(1, 11) % 7)
            assert ran
    finally:
        numba.set_num_threads(before)
    for name, kernel in _all_kernels().items():
        for sig in kernel.signatures:
            assert not any(isinstance(t, numba.types.Literal) for t in sig), (name, sig)
    for sig in forward.gru_forward_serial.signatures:
        assert not any(isinstance(t, numba.types.Array) and not t.mutable for t in sig), sig
    # the rows and chunked routes take the serial kernel's address for the types they hand it
    # (_jit.native_address): the same signature as every other path's
    float32 = [sig for sig in forward.gru_forward_serial.signatures
               if sig[0].dtype == numba.float32 and sig[1].dtype == numba.float32]
    assert len(float32) == 1, float32
    for sig in step.gru_step.signatures:  # x and h are the caller's, read-only ones taken as they are
        assert not any(isinstance(t, numba.types.Array) and not t.mutable for t in sig[2:]), sig
