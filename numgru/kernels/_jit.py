"""The one place that owns Numba's compilation flags.

Every kernel in :mod:`numgru.kernels` is built by :func:`kernel` (serial, ``nogil``) or
:func:`parallel_kernel` (``parallel=True``, ``nogil``), and registers itself in :data:`REGISTRY`
so that a test can audit the flags of all of them.

Flags
-----
cache
    On unless the environment variable ``NUMGRU_CACHE`` is ``0``. Numba names a function's cache files
    by its qualified name and first line, not by its flags (numba#6845), so a serial and a parallel
    build of one function would load each other's machine code from the cache: whichever compiled
    first in the process that filled it. :func:`parallel_kernel` therefore compiles a copy of the
    function whose qualified name ends in ``_parallel``.
nogil
    Always: threads run kernels side by side.
fastmath
    A restricted set, never ``True``: ``{"nsz", "arcp", "contract", "reassoc"}``. ``True`` would add
    ``nnan`` and ``ninf`` ("no NaN, no Inf"), which breaks NaN propagation (DESIGN §4). ``contract``
    allows FMA, ``reassoc`` lets LLVM vectorise the dot-product reductions; ``afn`` is left out so
    that the libm calls left (``sqrt`` in the optimizers) keep their accuracy.
error_model
    ``"numpy"``: division by zero gives IEEE results instead of raising inside a kernel.
vector width
    Not a Numba flag: each kernel calls :func:`wide_vectors` first (and first in each ``prange`` body),
    which asks LLVM for 512-bit vectors where the CPU has them (its tuning for Intel's AVX-512 cores
    would stop at 256).
"""
from __future__ import annotations

import os
import types as types_module

import numba
import numpy as np
from numba import types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic

CACHE: bool = os.environ.get("NUMGRU_CACHE", "1") != "0"
FASTMATH: frozenset = frozenset({"nsz", "arcp", "contract", "reassoc"})
WIDE_ATTRIBUTE = '"prefer-vector-width"="512"'
BASE_FLAGS: dict = {"cache": CACHE, "nogil": True, "fastmath": set(FASTMATH), "error_model": "numpy"}


def target_cpu():
    """(name, features) of the CPU Numba compiles for: ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``
    where set, else the host's as LLVM reads them (features as "+avx2,-avx512f,…"), as Numba's JIT
    takes them: features set empty (Numba's default under ``NUMBA_CPU_NAME=generic``, for caches
    that move between machines) are none, not the host's, so no kernel of an instruction set the
    code is not built for is dispatched to (their intrinsics aborted LLVM there); ("", "") where LLVM
    cannot read this host."""
    import llvmlite.binding as ll
    try:
        name = numba.config.CPU_NAME
        if not name or name == "host":
            name = ll.get_host_cpu_name()
        features = numba.config.CPU_FEATURES
        if features is None:
            features = ll.get_host_cpu_features().flatten()
    except RuntimeError:
        return "", ""
    return name, features


def compiled_entry(dispatcher, args):
    """The machine code ``dispatcher`` has compiled for exactly the Numba types of ``args``, as a
    callable that skips the dispatcher's type resolution (about 0.8 µs of a step kernel's call with
    its 17 arguments: a stream's step at H = 16 / 64 / 256 takes 2.6 / 3.6 / 23 µs), or None where
    it has not compiled them (or this Numba keeps its overloads elsewhere). The entry point unboxes
    its arguments without checking their types: a caller passes it arguments of exactly these types
    (dtype, dimensions, layout, alignment, writeability) on every call, and the dispatcher
    otherwise."""
    try:
        return dispatcher.overloads[tuple(numba.typeof(a) for a in args)].entry_point
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


#: bits of ``ndarray.flags.num``: C-contiguous; and the bits that, with it, tell apart the Numba types
#: of arrays of one dtype and number of axes (C-contiguous, aligned, writeable), a call site's key for
#: :func:`planned_call` read in one attribute access
C_CONTIGUOUS = 0x1
ARRAY_KIND = C_CONTIGUOUS | 0x100 | 0x400


def planned_call(entries, key, kernel, *args):
    """``kernel(*args)`` for a call site ``key`` (a forward plan's, a stream's, a cell's), by the
    kernel's compiled entry once the dispatcher has run it there (:func:`compiled_entry`: resolving
    the types of a kernel's 17–25 arguments cost 0.3–1 µs a call).
    ``entries`` (the caller's dict; None: the dispatcher always) keeps each site's entry, or False where
    none was found; a site's key tells apart every argument type its calls can have (an entry given
    arguments of another type would read them as that type: code compiled for aligned arrays, say,
    given a misaligned one)."""
    if entries is None:
        return kernel(*args)
    entry = entries.get(key)
    if entry:
        return entry(*args)
    out = kernel(*args)
    if entry is None:
        entries[key] = compiled_entry(kernel, args) or False
    return out


def cpu_ready(switch, needed):
    """Whether the environment variable ``switch`` is not ``0`` and the CPU Numba compiles for
    (:func:`target_cpu`) has every LLVM feature in ``needed`` (e.g. ``("+avx512f", "+avx512bf16")``):
    the test each family of instruction-set kernels runs once before it is dispatched to."""
    if os.environ.get(switch, "1") == "0":
        return False
    return set(needed) <= set(target_cpu()[1].split(","))


def avx512_zen():
    """True on AMD's Zen cores with AVX-512 (Zen 4 and later), where LLVM's 512-bit code and OpenBLAS's
    run at the same width and the packed-panel kernels beat OpenBLAS at shapes where Intel's cores
    keep BLAS (:func:`~numgru.kernels.forward.use_panels`)."""
    name, features = target_cpu()
    return "+avx512f" in features.split(",") and name.startswith("znver")


#: name -> compiled dispatcher, for every entry-point kernel
REGISTRY: dict = {}


def kernel(func=None, *, name=None):
    """Compile ``func`` as a serial, GIL-free, cached kernel and register it.

    A kernel compiles once per set of argument types (the serial forward 17–18 s cold on 2 vCPUs), so
    every caller must hand it the same types: a constant passed from inside another kernel reaches it
    as a literal type (``Literal[int](-1)``, ``Literal[bool](True)``), a signature of its own, so such
    calls pass ``np.int64(-1)`` / ``np.bool_(True)``; and read-only arrays are types of their own, so
    the layers keep their own arrays writeable (inference copies hand their users read-only views)."""

    def wrap(f):
        disp = numba.njit(**BASE_FLAGS)(f)
        REGISTRY[name or f.__name__] = disp
        return disp

    return wrap(func) if func is not None else wrap


def own_cache_copy(f, suffix):
    """``f`` as a new function object whose qualified name ends in ``_{suffix}``, so that Numba keeps
    its cache files apart from ``f``'s own (same code, globals, defaults and closure)."""
    g = types_module.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__qualname__ = f"{f.__qualname__}_{suffix}"
    g.__doc__ = f.__doc__
    g.__kwdefaults__ = f.__kwdefaults__
    g.__dict__.update(f.__dict__)
    return g


def parallel_kernel(func=None, *, name=None):
    """Compile ``func`` with ``parallel=True`` (prange), GIL-free and cached, and register it. The
    dispatcher compiles :func:`own_cache_copy` of ``func``, so a serial :func:`kernel` of the same
    function never loads its parallel machine code, nor it the serial one."""

    def wrap(f):
        disp = numba.njit(parallel=True, **BASE_FLAGS)(own_cache_copy(f, "parallel"))
        REGISTRY[name or (f.__name__ + "_parallel")] = disp
        return disp

    return wrap(func) if func is not None else wrap


def inline(func):
    """A device function inlined into kernels (same fastmath; not an entry point, not cached)."""
    return numba.njit(inline="always", nogil=True, fastmath=set(FASTMATH), error_model="numpy")(func)


def device(func):
    """A device function compiled once per signature and called, not inlined (same flags as
    :func:`inline`): for helpers that several kernels or call sites share, whose inlined copies would
    each be typed and optimised again."""
    return numba.njit(nogil=True, fastmath=set(FASTMATH), error_model="numpy")(func)


#: (dispatcher, fingerprint of the arguments) -> native address, for :func:`native_address`
_NATIVE: dict = {}


def native_address(dispatcher, args, returns=None):
    """The address of the machine code ``dispatcher`` runs for exactly the Numba types of ``args``
    (compiled, or loaded from the cache, where it has not been), in Numba's own calling convention:
    what :func:`call_native` calls from inside another kernel. ``returns``: None, or a value of the
    type the callee returns (``np.bool_(True)``), checked against what it does return.

    A kernel that calls a kernel by name links the callee's code into its own and has LLVM optimise
    and emit it all again: the rows route's parallel wrapper of the serial forward took 36 s to
    compile cold on 2 vCPUs, the serial forward's own 20 s of it and 16 s more for its second pass
    (2 s by address). The caller must hand :func:`call_native` arguments of exactly these types.
    Kept per dispatcher and Numba's fingerprint of the values (0.4 µs for 22 arguments), which
    leaves out whether an array is aligned: as for :func:`planned_call`, the arrays are the caller's
    own (numpy's allocations and their slices)."""
    key = (dispatcher, compute_fingerprint((returns, args)))
    address = _NATIVE.get(key)
    if address is None:
        sig = tuple(numba.typeof(a) for a in args)
        dispatcher.compile(sig)
        compiled = dispatcher.overloads[sig]
        if compiled.signature.return_type != numba.typeof(returns):
            raise TypeError(f"{dispatcher.py_func.__name__} returns {compiled.signature.return_type}, "
                            f"not {numba.typeof(returns)}")
        address = _NATIVE[key] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    return address


@intrinsic
def call_native(typingctx, address, args, returns):
    """Call the kernel whose machine code lies at ``address`` (:func:`native_address`, int64) with the
    tuple ``args``, in Numba's calling convention, as a call by name would, without linking the
    callee's code into the caller's (an error it returns is passed on); ``returns`` None, or a value
    of the type it returns, which the call then gives. The types of ``args`` must be those the
    address was taken for: nothing here can check them."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    argtypes = list(args)
    restype = types.unliteral(returns)

    def codegen(context, builder, signature, llargs):
        conv = context.call_conv
        fnty = conv.get_function_type(restype, argtypes)
        callee = builder.inttoptr(llargs[0], fnty.as_pointer())
        retty = conv.get_return_type(restype).pointee
        ret = cgutils.alloca_once(builder, retty)
        builder.store(cgutils.get_null_value(retty), ret)
        excinfo = cgutils.alloca_once(builder, fnty.args[1].pointee, name="excinfo")
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtypes))
        packed = list(conv._get_arg_packer(argtypes).as_arguments(builder, values))
        code = builder.call(callee, [ret, excinfo] + packed)
        status = conv._get_return_status(builder, code, builder.load(excinfo))
        with cgutils.if_unlikely(builder, status.is_error):
            conv.return_status_propagate(builder, status)
        return context.get_returned_value(builder, restype, builder.load(ret))

    return restype(address, args, returns), codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the function it is called in with 512-bit registers where the CPU has them.

    LLVM's tuning for Intel's AVX-512 cores (Skylake-X to Emerald Rapids) caps auto-vectorisation at
    256 bits ("prefer-256-bit"), so Numba's loops there ran at half the width of the registers (and of
    OpenBLAS's kernels). This marks the function being compiled ``"prefer-vector-width"="512"``; on CPUs
    without AVX-512 the widest vectors they have are used, as before. Every kernel calls it first, and
    first in every ``prange`` body (Numba compiles a ``prange`` body as a function of its own).
    """
    def codegen(context, builder, signature, args):
        # llvmlite's attribute set admits a fixed list of names; the "key"="value" form is written
        # into the function's definition as given, so it is added past that check
        set.add(builder.function.attributes, WIDE_ATTRIBUTE)
        return context.get_dummy_value()
    return types.none(), codegen


@inline
def unwrapped(i):
    """``i`` (≥ 0) as an index Numba does not wrap: for an offset plus a loop index in a vectorised
    loop, such as y's column ``col0 + j`` or a gate block's ``H + j``.

    Numba reads a signed index below zero from the end (``i + n`` when ``i < 0``), and where LLVM
    cannot tell the sign (an offset known only at run time) that select stays in every element of the
    loop; an unsigned index takes none. One thread, Zen 4, the serial forward's step at B = 64,
    H = 64 with y's store at ``col0 + j``: 22.2 µs signed, 19.7 unsigned (19.2 with col0 a constant
    0); whole forwards 7–9 % faster at H = 64 (``docs/how-it-works.md``, "Indices Numba may wrap").
    The caller guarantees i ≥ 0: a negative value would index far past the array."""
    return np.uint64(i)
