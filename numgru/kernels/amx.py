"""Float32 products on Intel AMX tiles, to float32 accuracy: the input projection, the recurrence
(inference and training's tape-recording forward), the backward's steps and the weight gradients.

Intel's Advanced Matrix Extensions (Sapphire Rapids and later Xeons) multiply bfloat16 tiles into
float32 tiles: one ``TDPBF16PS`` takes a 16 × 32 tile of A and a 32 × 16 tile of B into a 16 × 16
tile of sums, 8192 multiply-adds, where AVX-512 does 32 a cycle. bfloat16 keeps 8 significant bits,
so each float32 value v is split into three bfloat16 pieces, v = v₁ + v₂ + v₃ + e with
|v₂| ≤ 2⁻⁹|v|, |v₃| ≤ 2⁻¹⁸|v| and |e| ≤ 2⁻²⁷|v| (each piece the nearest bfloat16 to what the pieces
before it left; the differences are exact in float32). A product a·w then keeps the six terms of
order 2⁻¹⁸ and above, a₁w₁ + a₁w₂ + a₂w₁ + a₁w₃ + a₂w₂ + a₃w₁; what it drops is below float32's
rounding (2⁻²⁴), so the sums agree with a float32 GEMM's to float32 rounding (``tests/test_amx.py``
measures it against float64; at 64 × 768 × 256 the largest error read 2.2e-6 against OpenBLAS's
sgemm's 4.5e-6). Six products at AMX's rate still run about 1.7× one core's float32 FMA peak
(64 × 768 × 256, one thread: 78 µs, 324 GFLOP/s as float32, against 136 µs at OpenBLAS's best).
The split rounds 16 values an instruction (AVX512-BF16's ``VCVTNEPS2BF16``); it and the tiles read
subnormal values (below 2⁻¹²⁶) as zero, so a term with a subnormal factor is lost: less than 2⁻¹²⁶
times the other factor.

Every kernel takes the products' ``order`` last (but a thread count or a range): 3, the six above;
2, the terms of order 2⁻⁹ and above, a₁w₁ + a₁w₂ + a₂w₁ (each value then counts as two pieces, 16
significant bits: a term's relative error at most about 3·2⁻¹⁸); 1, a₁w₁ alone (8 significant bits,
about 2⁻⁸). Lower orders take fewer tile products for the same splits: the precision a user grants
with :func:`numgru.set_float32_matmul_precision` ("highest", "high", "medium").

The recurrence's products (W_hh by the state, W_hhᵀ by the gate gradients) may read integer digits
instead (:func:`pack_digits`, where the dispatch's ``digits_wanted`` holds): AMX-INT8's ``TDPBSSD``
multiplies int8 tiles into int32 sums, 16384 multiply-adds an instruction in the time a bfloat16
one takes for 8192. Each row of W and each state row is scaled to 24-bit integers (W's largest
magnitude to ``DIGIT_SCALE``, 2²³ − 2¹⁶; a state row's by the power of two that brings its largest
into (``DIGIT_SCALE``/2, ``DIGIT_SCALE``]) held as three balanced base-256 int8 digits; the tiles sum
the six digit products of weight 2⁻¹⁶ and above exactly, in three int32 tiles by weight, and each
sum of the three becomes float32 by one rounding. The rounding of each value to its integer (at
most 2⁻²⁴ of its row's largest magnitude, 2⁻²³ for a state) and the products left out (below about
2⁻²³ of the largest terms) are errors relative to each row's largest value, not to each value: a
small value beside a large one keeps fewer bits. That suits a GRU's state (bounded by 1) and the
backward's gate gradients (a row's sums), not the input projection (features of any scale) or the
weight gradients (sums over every step), which keep the pieces. A row's sums never depend on the
rows beside it, and a state's power-of-two scale multiplies exactly, so the result is the same bits
in any batch, block of rows or thread.

The tiles need the kernel's permission (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, asked once per process
by :func:`amx_ready`) and code that only a CPU with AMX can run: the kernels here are compiled on
their first call, which the dispatch makes only where :func:`amx_ready` is true. ``NUMGRU_AMX=0``
turns the route off.

Layout: weights W (N, K) are packed (:func:`pack_amx`, :func:`pack_amx_into`) into three pieces of
bfloat16 in AMX's pair layout, each piece (Np / 16, Kp / 2, 16, 2) with N and K padded with zeros to
multiples of 32 (Np, Kp): once per call into a per-thread scratch for a plain model, whose weights an
optimizer may change, once per matrix for a frozen or quantized one. A matrix holding only bfloat16
values (a quantized model's) has zero second and third pieces: it packs as its first piece alone, and
the kernels (which tell the two packings apart by their length) take three products a block, a₁, a₂,
a₃ by w₁. Rows of x are split the same way a block at a time, into a scratch the tiles read. A weight
gradient (:func:`amx_gradient`) sums over rows, so both of its operands are split two rows at a time
into pairs, and one of them turned (:func:`~numgru.kernels.panel.transpose16`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import inline, kernel, parallel_kernel, wide_vectors
from .forward import input_projection_kernel, rows_after_fast, rows_after_store
from .panel import _overloaded, aligned_empty, aligned_zeros, pack_panels, prefetch, transpose16

#: largest magnitude split into pieces; larger values, Inf and NaN leave the product to float32
#: (bfloat16 rounding of values near float32's largest would overflow)
SPLIT_LIMIT = np.float32(3.0e38)
#: rows of x split per block: the block's pieces (6·Kp bytes a row) stay in L2 while all of W's
#: pieces pass over them
BLOCK_BYTES = 1 << 19
#: rows of the gate gradients summed per block in :func:`amx_gradient`: both operands' pieces (and
#: X's before they are turned) stay in L2
GRADIENT_BLOCK_BYTES = 1 << 20

_ARCH_REQ_XCOMP_PERM = 0x1023
_ARCH_GET_XCOMP_PERM = 0x1022
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64
_READY = None


def amx_ready():
    """Whether this process may run the AMX kernels: an x86-64 Linux CPU with AMX-TILE and AMX-BF16
    (as LLVM sees it, which decides what the kernels compile to), the kernel's permission to use the
    tile registers (asked for once), and ``NUMGRU_AMX`` not ``0``."""
    global _READY
    if _READY is None:
        _READY = _ask_for_tiles()
    return _READY


def _ask_for_tiles():
    if os.environ.get("NUMGRU_AMX", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        from llvmlite import binding
        features = binding.get_host_cpu_features()
        if not (features.get("amx-tile") and features.get("amx-bf16")):
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        if syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
            return False
        mask = ctypes.c_uint64(0)
        if syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
            return False
        return bool(mask.value & (1 << _XFEATURE_XTILEDATA))
    except (OSError, AttributeError, KeyError):
        return False


# ---------------------------------------------------------------------------- the tile instructions
_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_PTR = ir.IntType(8).as_pointer()


def _call(builder, name, argtypes, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), argtypes), name)
    builder.call(fn, args)


def _tile(t):
    return ir.Constant(_I8, t.literal_value)


@intrinsic
def tile_config(typingctx, cfg):
    """``LDTILECFG``: configure the tiles from cfg, 64 bytes (uint8)."""
    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [builder.bitcast(a.data, _PTR)])
        return context.get_dummy_value()
    return types.none(cfg), codegen


@intrinsic
def tile_release(typingctx):
    """``TILERELEASE``: return the tiles to their initial state (the OS then saves no tile data)."""
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def tile_zero(typingctx, t):
    """``TILEZERO`` tile t (a literal)."""
    if not isinstance(t, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [_tile(sig.args[0])])
        return context.get_dummy_value()
    return types.none(t), codegen


def _tile_memory(name):
    def template(typingctx, t, arr, offset, stride):
        if not isinstance(t, types.IntegerLiteral) or not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[1])(context, builder, args[1])
            ptr = builder.bitcast(builder.gep(a.data, [args[2]]), _PTR)
            _call(builder, name, [_I8, _PTR, _I64], [_tile(sig.args[0]), ptr, args[3]])
            return context.get_dummy_value()
        return types.none(t, arr, types.intp, types.intp), codegen
    return template


tile_load = intrinsic(_tile_memory("llvm.x86.tileloadd64"))
tile_load.__doc__ = """``TILELOADD`` tile t (a literal) from arr's element ``offset`` on, rows ``stride`` bytes
apart (unchecked: the caller keeps every row inside arr)."""
tile_store = intrinsic(_tile_memory("llvm.x86.tilestored64"))
tile_store.__doc__ = """``TILESTORED`` tile t to arr from element ``offset`` on, rows ``stride`` bytes apart
(unchecked, as :func:`tile_load`)."""


@intrinsic
def tile_dot(typingctx, c, a, b):
    """``TDPBF16PS``: tile c (float32) += tile a (bfloat16 rows) · tile b (bfloat16 pairs); literals."""
    if not all(isinstance(v, types.IntegerLiteral) for v in (c, a, b)):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbf16ps", [_I8, _I8, _I8], [_tile(s) for s in sig.args])
        return context.get_dummy_value()
    return types.none(c, a, b), codegen


@intrinsic
def tile_dot_int8(typingctx, c, a, b):
    """``TDPBSSD``: tile c (int32) += tile a (int8 rows of 64) · tile b (int8 quads); literals. Sums of
    integers, exact while they stay inside int32."""
    if not all(isinstance(v, types.IntegerLiteral) for v in (c, a, b)):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbssd", [_I8, _I8, _I8], [_tile(s) for s in sig.args])
        return context.get_dummy_value()
    return types.none(c, a, b), codegen


# ---------------------------------------------------------------------------- splitting and packing
@inline
def padded(n):
    """n rounded up to a multiple of 32."""
    return (n + 31) // 32 * 32


class _BFloat(ir.types.Type):
    """LLVM's ``bfloat``, which llvmlite's IR builder does not name."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


@functools.lru_cache(maxsize=None)
def _native_rounding():
    """Whether to round to bfloat16 by LLVM's ``fptrunc`` to ``bfloat``: AVX512-BF16's
    ``VCVTNEPS2BF16`` (every CPU with AMX has it; a third of the integer sequence's instructions),
    which LLVM 18 and later lower, where Numba compiles for this CPU (with ``NUMBA_CPU_NAME`` or
    ``NUMBA_CPU_FEATURES`` set, LLVM might call a runtime function instead, which Numba does not
    link); else an integer sequence on the bits (add 0x7FFF and the lowest kept bit, keep the upper
    half), which gives the same pieces but for subnormal values."""
    from llvmlite import binding
    from numba.core import config
    if binding.llvm_version_info < (18,) or config.CPU_NAME or config.CPU_FEATURES:
        return False
    return bool(binding.get_host_cpu_features().get("avx512bf16"))


_V16 = 16
_VF = ir.VectorType(ir.FloatType(), _V16)
_VI = ir.VectorType(ir.IntType(32), _V16)


def _splat(value):
    return ir.Constant(_VI, [value] * _V16)


def _round16(builder, v):
    """The bfloat16 codes nearest the 16 floats of v (ties to even), as <16 x i32> with the code in
    the low half, and their values as <16 x float>."""
    if _native_rounding():
        h = builder.fptrunc(v, ir.VectorType(_BFloat(), _V16))
        code = builder.zext(builder.bitcast(h, ir.VectorType(ir.IntType(16), _V16)), _VI)
    else:
        u = builder.bitcast(v, _VI)
        odd = builder.and_(builder.lshr(u, _splat(16)), _splat(1))
        code = builder.lshr(builder.add(builder.add(u, _splat(0x7FFF)), odd), _splat(16))
    return code, builder.bitcast(builder.shl(code, _splat(16)), _VF)


def _mask16(builder, j, n):
    """<16 x i1>: lane i is j + i < n. From a 16-bit integer, (1 << clamp(n − j, 0, 16)) − 1 (a shift and
    one move into a mask register; lanes compared in 64 bits took four vector instructions, a sixth of
    :func:`digits16`'s)."""
    i64 = ir.IntType(64)
    left = builder.sub(n, j)
    zero, full = ir.Constant(i64, 0), ir.Constant(i64, _V16)
    left = builder.select(builder.icmp_signed("<", left, zero), zero, left)
    left = builder.select(builder.icmp_signed(">", left, full), full, left)
    ones = builder.sub(builder.shl(ir.Constant(i64, 1), left), ir.Constant(i64, 1))
    return builder.bitcast(builder.trunc(ones, ir.IntType(_V16)), ir.VectorType(ir.IntType(1), _V16))


def _load16(context, builder, aty, arr, j, mask):
    """arr[j : j + 16] as <16 x float>, the lanes off in ``mask`` zero and not read."""
    a = context.make_array(aty)(context, builder, arr)
    return _masked_load16(builder, builder.gep(a.data, [j]), mask)


def _masked_load16(builder, ptr, mask):
    """The 16 floats from ptr on as <16 x float>, the lanes off in ``mask`` zero and not read."""
    fnty = ir.FunctionType(_VF, [_VF.as_pointer(), ir.IntType(32), mask.type, _VF])
    fn = cgutils.get_or_insert_function(builder.module, fnty, _overloaded("llvm.masked.load.v16f32", _VF))
    return builder.call(fn, [builder.bitcast(ptr, _VF.as_pointer()), ir.Constant(ir.IntType(32), 4), mask,
                             ir.Constant(_VF, None)])


def _in_range16(builder, v):
    """Whether every lane of v (<16 x float>) is finite with magnitude at most SPLIT_LIMIT, as an
    i1 (one compare of the magnitude bits: Inf's and NaN's lie above every finite value's)."""
    bits = builder.and_(builder.bitcast(v, _VI), _splat(0x7FFFFFFF))
    over = builder.icmp_unsigned(">", bits, _splat(int(_LIMIT_BITS)))
    return builder.icmp_unsigned("==", builder.bitcast(over, ir.IntType(_V16)), ir.Constant(ir.IntType(_V16), 0))


def _store16(context, builder, aty, arr, j, value, mask=None):
    """arr[j : j + 16] = value (16 lanes), only the lanes on in ``mask`` where one is given."""
    a = context.make_array(aty)(context, builder, arr)
    if mask is None:
        builder.store(value, builder.bitcast(builder.gep(a.data, [j]), value.type.as_pointer()), align=2)
        return
    _masked_store16(builder, value, builder.bitcast(builder.gep(a.data, [j]), value.type.as_pointer()), mask)


def _masked_store16(builder, value, ptr, mask):
    """The 16 lanes of value (<16 x i32>) to ptr on, only those on in ``mask``."""
    fnty = ir.FunctionType(ir.VoidType(), [value.type, ptr.type, ir.IntType(32), mask.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty,
                                        _overloaded("llvm.masked.store.v16i32", value.type))
    builder.call(fn, [value, ptr, ir.Constant(ir.IntType(32), 4), mask])


@intrinsic
def split16(typingctx, src, r, j, n, dst, i):
    """src[r, j : j + 16] (float32 (·, ·) C-contiguous, the values at and past column n read as
    zero) into its three bfloat16 pieces dst[p, i, j : j + 16] (uint16 (3, ·, ·) C-contiguous codes;
    the caller keeps j + 16 inside them). Returns whether those values are all finite with magnitude
    at most SPLIT_LIMIT (the pieces of one that is not mean nothing). Indexes where the rows lie, as
    :func:`split_pairs16`."""
    if not (_array_of(src, types.float32, 2) and _array_of(dst, types.uint16, 3)):
        return None

    def codegen(context, builder, sig, args):
        _, r, j, n, _, i = args
        intp = r.type
        s = context.make_array(sig.args[0])(context, builder, args[0])
        width = builder.extract_value(s.shape, 1)
        v = _masked_load16(builder, builder.gep(s.data, [builder.add(builder.mul(r, width), j)]),
                           _mask16(builder, j, n))
        ok = _in_range16(builder, v)
        o = context.make_array(sig.args[4])(context, builder, args[4])
        rows = builder.extract_value(o.shape, 1)
        cols = builder.extract_value(o.shape, 2)
        at = builder.add(builder.mul(i, cols), j)
        i16 = ir.VectorType(ir.IntType(16), _V16)
        for k in range(3):
            code, value = _round16(builder, v)
            ptr = builder.gep(o.data, [builder.add(builder.mul(ir.Constant(intp, k), builder.mul(rows, cols)), at)])
            builder.store(builder.trunc(code, i16), builder.bitcast(ptr, i16.as_pointer()), align=2)
            if k < 2:
                v = builder.fsub(v, value)
        return ok
    return types.boolean(src, types.intp, types.intp, types.intp, dst, types.intp), codegen


@intrinsic
def split_pairs16(typingctx, src, r, two, j, n, dst, k, d):
    """src[r, j : j + 16] and, with ``two``, src[r + 1, j : j + 16] (else zeros) (float32 (·, ·)
    C-contiguous; only the columns before n are read) into three bfloat16 pieces in pairs:
    dst[p, k, d + l] (uint32 (3, ·, ·) C-contiguous) holds piece p of row r's column j + l in its low
    half and of row r + 1's in its high half, for j + l < n (the rest of dst is left as it is).
    Returns whether those values are all finite with magnitude at most SPLIT_LIMIT, as
    :func:`split16`. Indexes where the rows lie: views of them took and dropped reference counts,
    atomically, a dozen a pair of rows (unchecked, as :func:`tile_load`)."""
    if not (_array_of(src, types.float32, 2) and _array_of(dst, types.uint32, 3)):
        return None

    def codegen(context, builder, sig, args):
        _, r, two, j, n, _, k, d = args
        intp = r.type
        s = context.make_array(sig.args[0])(context, builder, args[0])
        width = builder.extract_value(s.shape, 1)
        mask = _mask16(builder, j, n)
        none = ir.Constant(mask.type, None)
        row = builder.add(builder.mul(r, width), j)
        u = _masked_load16(builder, builder.gep(s.data, [row]), mask)
        v = _masked_load16(builder, builder.gep(s.data, [builder.add(row, width)]),
                           builder.select(two, mask, none))
        ok = builder.and_(_in_range16(builder, u), _in_range16(builder, v))
        o = context.make_array(sig.args[5])(context, builder, args[5])
        rows = builder.extract_value(o.shape, 1)
        cols = builder.extract_value(o.shape, 2)
        at = builder.add(builder.mul(k, cols), d)
        fnty = ir.FunctionType(ir.VoidType(), [_VI.as_pointer(), ir.IntType(32), mask.type])
        for p in range(3):
            cu, fu = _round16(builder, u)
            cv, fv = _round16(builder, v)
            ptr = builder.gep(o.data, [builder.add(builder.mul(ir.Constant(intp, p), builder.mul(rows, cols)), at)])
            _masked_store16(builder, builder.or_(cu, builder.shl(cv, _splat(16))),
                            builder.bitcast(ptr, _VI.as_pointer()), mask)
            if p < 2:
                u = builder.fsub(u, fu)
                v = builder.fsub(v, fv)
        return ok
    return types.boolean(src, types.intp, types.boolean, types.intp, types.intp, dst, types.intp,
                         types.intp), codegen


def _array_of(a, dtype, ndim):
    """Whether a is a C-contiguous array of dtype with ndim axes."""
    return isinstance(a, types.Array) and a.ndim == ndim and a.layout == "C" and a.dtype == dtype


def _row_of(a, dtype):
    """Whether a is a C-contiguous 1-D array of dtype (the split's loads and stores are unit-stride)."""
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == dtype


@inline
def _split_into(src, r, n, dst, i):
    """Split src[r, :n] (float32) into three bfloat16 pieces dst[p, i, :n] (uint16 codes), 16 values
    at a time (:func:`split16`; the pieces up to the next multiple of 16 past n are zero). Returns
    whether src[r, :n] is all finite with magnitude at most SPLIT_LIMIT (else its pieces mean
    nothing: the product is float32's)."""
    ok = True
    for j in range(0, n, _V16):
        ok &= split16(src, r, j, n, dst, i)
    return ok


_LIMIT_BITS = np.uint32(np.array([SPLIT_LIMIT], np.float32).view(np.uint32)[0])


@inline
def _pack_into(W, out):
    """W's pieces into ``out`` in the pair layout :func:`pack_amx` describes, 16 rows at a time:
    their pieces split into a zero-padded scratch, then turned by pairs into place
    (:func:`transpose16`). Returns how many pieces it wrote: 3, or 1 where W holds only bfloat16
    values (a quantized model's weights: their second and third pieces are zero, and the first
    piece's place is the same either way), or 0 where W holds a value :func:`_split_into`
    refuses."""
    _check_packing(W, out)
    return _pack_blocks_into(W, out, 0, padded(W.shape[0]) // 16)


@inline
def _check_packing(W, out):
    if out.shape[0] != 3 * padded(W.shape[0]) * padded(W.shape[1]):
        raise ValueError("pack_amx: shapes do not match")


@inline
def _pack_blocks_into(W, out, nb0, nb1):
    """:func:`_pack_into`'s work on W's blocks of 16 rows nb0 … nb1 − 1 (its own scratch): 3, 1 where
    their values are all bfloat16, 0 where one is refused."""
    N, K = W.shape
    Np = padded(N)
    Kp = padded(K)
    KH = Kp // 2
    rows = aligned_zeros(3 * 16 * Kp, np.uint16)
    r3 = rows.reshape(3, 16, Kp)
    r32 = rows.view(np.uint32)
    o32 = out.view(np.uint32)
    second = r32[8 * Kp:16 * Kp]  # piece 2 of the 16 rows (zero with piece 3 where v is bfloat16)
    beyond = np.uint32(0)
    for nb in range(nb0, nb1):
        for c in range(16):
            n = nb * 16 + c
            if n < N:
                if not _split_into(W, n, K, r3, c):  # (columns K … Kp−1 zero)
                    return 0
            else:
                r3[:, c, :] = 0
        for k in range(8 * Kp):
            beyond |= second[k]
        for p in range(3):
            for k2 in range(0, KH, 16):
                transpose16(r32, p * 16 * KH + k2, KH, o32, ((p * (Np // 16) + nb) * KH + k2) * 16, 16)
    return 3 if beyond != 0 else 1


@kernel
def pack_amx(W):
    """W (N, K) float32 → its three bfloat16 pieces in AMX's pair layout, one flat uint16 array of
    3·Np·Kp values (Np, Kp: N, K rounded up to multiples of 32), 64-byte aligned: piece p's value of
    W[n, k] at p·Np·Kp + ((n // 16)·Kp + k − k % 2)·16 + (n % 16)·2 + k % 2; the padding is zero.
    Where W holds only bfloat16 values (a quantized model's), its first piece alone (Np·Kp values):
    the kernels then take three products a block instead of six and read a third of the bytes. An
    empty array where W holds a value :func:`_split_into` refuses."""
    wide_vectors()
    size = padded(W.shape[0]) * padded(W.shape[1])
    out = aligned_empty(3 * size, np.uint16)
    return out[:_pack_into(W, out) * size]


@kernel
def pack_amx_into(W, out):
    """:func:`pack_amx` into ``out`` (3·Np·Kp uint16, 64-byte aligned: a caller's scratch); returns
    how many pieces it wrote (its first that many · Np·Kp values are the packing): 3, 1 for
    bfloat16 values, 0 where W holds a value the split refuses."""
    wide_vectors()
    return _pack_into(W, out)


@inline
def _block_ranges(N, n_threads):
    """``(nb, per, nc)`` for a packing of N rows on ``n_threads`` threads: nb blocks of 16 rows (N
    padded), ``per`` blocks a range, nc ranges (range c: blocks c·per … min(nb, (c + 1)·per) − 1)."""
    nb = padded(N) // 16
    n = max(n_threads, 1)
    per = max(1, (nb + n - 1) // n)
    return nb, per, (nb + per - 1) // per


@parallel_kernel(name="pack_amx_into_parallel")
def pack_amx_into_parallel(W, out, n_threads):
    """:func:`pack_amx_into` on Numba's threads, ``n_threads`` ranges of W's blocks of 16 rows: the
    same packing and return value. A plain model packs W_ih on every call: at 3072 × 1024 one
    thread took 1.6 ms of a 25 ms two-thread forward (T = 32, B = 16, H = 1024)."""
    wide_vectors()
    _check_packing(W, out)
    nb, per, nc = _block_ranges(W.shape[0], n_threads)
    got = np.ones(max(nc, 1), np.int64)  # no blocks (an empty W): one piece, as _pack_into says
    for c in prange(nc):
        wide_vectors()
        got[c] = _pack_blocks_into(W, out, c * per, min(nb, (c + 1) * per))
    return 0 if got.min() == 0 else got.max()


@inline
def _pieces_of(Wv, Np, Kp):
    """How many pieces a packing of an (Np, Kp) padded matrix holds: 3, 1 (bfloat16 values),
    ``DIGITS`` (integer digits, :func:`pack_digits`) or 0 (none of these: a wrong array)."""
    n = Wv.shape[0]
    if n == 3 * Np * Kp:
        return 3
    if n == Np * Kp:
        return 1
    return DIGITS if n == digits_size(Np, Kp) else 0


# ---------------------------------------------------------------------------- integer digits
#: the packing kind :func:`_pieces_of` reports for a matrix's integer digits (:func:`pack_digits`)
DIGITS = 8
#: the integer a row's largest magnitude is scaled to, 2²³ − 2¹⁶: its leading digit then stays
#: within int8 (127·2¹⁶ plus the rounding of the lower digits' 2¹⁵)
DIGIT_SCALE = np.float32(2.0 ** 23 - 2.0 ** 16)
#: rows whose largest magnitude is nonzero and outside [2⁻⁶⁰, 2⁶⁰] are refused: every scale, sum and
#: product then stays well inside float32's range
DIGIT_LO = np.float32(2.0 ** -60)
DIGIT_HI = np.float32(2.0 ** 60)
#: W's digits (bytes) from which rows take 32 at a time (:func:`_thirty_two_rows_digits`): beyond
#: L2, W's tiles come from L3 and loading each once for 32 rows repays the rows' reloads (one thread,
#: T = 128, whole forwards: H = 1024, B = 64 / 32 415–420 / 215 ms against 444–450 / 225–241 by 16
#: rows; H = 512, B = 64 the same; H = 256, B = 64 31.1–31.3 against 29.6–29.8)
DIGIT_WIDE_BYTES = 1 << 21
#: bytes of L1 (data) a column of :func:`_sixteen_rows_digits`' tiles may fill before the summed
#: index runs in chunks
DIGIT_L1_BYTES = 48 * 1024
#: the longest chunk of the summed index (:func:`_digit_chunk`)
DIGIT_CHUNK = 384
#: the longest row the digits take: each of the three sums of digit products, at most 3·2¹⁴ a term,
#: stays inside int32
DIGIT_MAX_K = 32768


@inline
def padded64(n):
    """n rounded up to a multiple of 64 (an int8 tile's row)."""
    return (n + 63) // 64 * 64


@inline
def digits_size(Np, Kp):
    """The length (uint16 values) of :func:`pack_digits`'s packing of an (Np, Kp) padded matrix: three
    int8 digits of Np · Kq values (Kq: Kp rounded up to 64) and Np float32 scales."""
    return (3 * Np * padded64(Kp) + 4 * Np) // 2


@intrinsic
def _bits_of(typingctx, v):
    """A float32's bits as int32 (a bitcast, which vectorises where ``view`` of a scalar cannot)."""
    if v != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(v), codegen


@intrinsic
def _magnitude_bits(typingctx, v):
    """A float32's bits without the sign, as int32 (Inf's and NaN's lie above every finite value's).
    In 32 bits: the same masking written in Python took Numba's int64 (a row's largest magnitude
    then ran in four 64-bit lanes a vector, 3.7× the time of sixteen 32-bit ones)."""
    if v != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        return builder.and_(builder.bitcast(args[0], i32), ir.Constant(i32, 0x7FFFFFFF))
    return types.int32(v), codegen


@intrinsic
def _float_of(typingctx, v):
    """The float32 whose bits are v's low 32."""
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        if v.bitwidth != 32:
            x = builder.trunc(x, ir.IntType(32)) if v.bitwidth > 32 else builder.zext(x, ir.IntType(32))
        return builder.bitcast(x, ir.FloatType())
    return types.float32(v), codegen


@intrinsic
def digits16(typingctx, src, j, n, c, d0, d1, d2):
    """src[j : j + 16] (float32, the values at and past n read as zero) times c, rounded to the
    nearest integers (ties away from zero; each |src·c| below 2²³), into their balanced base-256
    digits d0, d1, d2[j : j + 16] (int8: the integer is d0·2¹⁶ + d1·2⁸ + d2, d1 and d2 in
    [−128, 127]; the caller keeps j + 16 inside them). In 16-lane vectors of 32 bits: the loop Numba wrote
    from the same arithmetic ran in 64-bit lanes (a state of 16 rows by 256, its largest magnitudes
    found too, 2.6 µs against 2.1)."""
    if not (_row_of(src, types.float32) and c == types.float32
            and all(_row_of(d, types.int8) for d in (d0, d1, d2))):
        return None

    def codegen(context, builder, sig, args):
        v = _load16(context, builder, sig.args[0], args[0], args[1], _mask16(builder, args[1], args[2]))
        cv = builder.insert_element(ir.Constant(_VF, None), args[3], ir.Constant(ir.IntType(32), 0))
        y = builder.fmul(v, builder.shuffle_vector(cv, cv, ir.Constant(_VI, [0] * _V16)))
        half = builder.or_(builder.and_(builder.bitcast(y, _VI), _splat(-0x80000000)), _splat(0x3F000000))
        n = builder.fptosi(builder.fadd(y, builder.bitcast(half, _VF)), _VI)
        # n + 0x808080's bytes, each less 128 (its top bit flipped), are the balanced digits low, mid,
        # top, each taken out by a byte shuffle (finding them one by one, subtracting each and
        # shifting, took 11.7 µs for 64 rows of 768 values against 8.1)
        i8 = ir.IntType(8)
        b = builder.bitcast(builder.xor(builder.add(n, _splat(0x808080)), _splat(0x808080)),
                            ir.VectorType(i8, 4 * _V16))
        for k in range(3):  # top, mid, low: bytes 2, 1, 0 of each lane
            lanes = ir.Constant(_VI, [4 * i + 2 - k for i in range(_V16)])
            _store16(context, builder, sig.args[4 + k], args[4 + k], args[1],
                     builder.shuffle_vector(b, ir.Constant(b.type, None), lanes))
        return context.get_dummy_value()
    return types.none(src, types.intp, types.intp, c, d0, d1, d2), codegen


@intrinsic
def digit_quads16(typingctx, W, n0, rows, k0, cs, o32, off, plane):
    """The digits of W[n0 : n0 + rows, k0 : k0 + 16] (float32, C-contiguous; rows ≤ 16, the rows past
    ``rows`` and the values past W's width read as zero) times their rows' scales cs[:16], rounded as
    :func:`digits16` rounds, straight into :func:`pack_digits`'s layout: the 16 rows' four quads of
    k (16 × 4 bytes, 64 bytes a quad) of digit p at o32[off + p·plane + 16·q :][:16] (uint32; the
    caller keeps them inside o32). Each row's four floats of a quad are gathered into one vector
    before rounding (4 × 4 blocks of 128 bits turned across four rows), so that a lane's digits
    land in their place by two byte shuffles a digit and no 16 × 16 transposes of the digits follow:
    768 × 256 packed in 43 against 83–86 µs, the same bytes."""
    if not (isinstance(W, types.Array) and W.ndim == 2 and W.layout == "C" and W.dtype == types.float32
            and _row_of(cs, types.float32) and _row_of(o32, types.uint32)):
        return None

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        w = context.make_array(sig.args[0])(context, builder, args[0])
        c = context.make_array(sig.args[4])(context, builder, args[4])
        o = context.make_array(sig.args[5])(context, builder, args[5])
        n0, rows, k0, off, plane = args[1], args[2], args[3], args[6], args[7]
        K = builder.extract_value(w.shape, 1)
        kmask = _mask16(builder, k0, K)
        no_lanes = ir.Constant(kmask.type, [0] * _V16)
        R = []
        for i in range(_V16):
            here = builder.icmp_signed("<", ir.Constant(i64, i), rows)
            row = builder.add(builder.mul(builder.add(n0, ir.Constant(i64, i)), K), k0)
            R.append(_masked_load16(builder, builder.gep(w.data, [row]),
                                    builder.select(here, kmask, no_lanes)))
        scales = builder.load(builder.bitcast(c.data, _VF.as_pointer()), align=4)

        def lanes(quarters):  # the 16 lanes of the given quarters (4 lanes each) of two vectors
            return ir.Constant(_VI, [4 * u + j for u in quarters for j in range(4)])

        def bytes_of(idx):
            return ir.Constant(ir.VectorType(i32, len(idx)), idx)

        v64 = ir.VectorType(ir.IntType(8), 64)
        B = [[None] * 4 for _ in range(4)]  # B[g][q]: rows 4g … 4g + 3, quad q, as 64 bytes
        for g in range(4):
            r0, r1, r2, r3 = R[4 * g:4 * g + 4]
            lo01 = builder.shuffle_vector(r0, r1, lanes([0, 1, 4, 5]))
            hi01 = builder.shuffle_vector(r0, r1, lanes([2, 3, 6, 7]))
            lo23 = builder.shuffle_vector(r2, r3, lanes([0, 1, 4, 5]))
            hi23 = builder.shuffle_vector(r2, r3, lanes([2, 3, 6, 7]))
            quads = (builder.shuffle_vector(lo01, lo23, lanes([0, 2, 4, 6])),
                     builder.shuffle_vector(lo01, lo23, lanes([1, 3, 5, 7])),
                     builder.shuffle_vector(hi01, hi23, lanes([0, 2, 4, 6])),
                     builder.shuffle_vector(hi01, hi23, lanes([1, 3, 5, 7])))
            cg = builder.shuffle_vector(scales, ir.Constant(_VF, None),
                                        ir.Constant(_VI, [4 * g + j // 4 for j in range(_V16)]))
            for q in range(4):  # lane j: row 4g + j // 4, k = k0 + 4q + j % 4 (digits16's arithmetic)
                y = builder.fmul(quads[q], cg)
                half = builder.or_(builder.and_(builder.bitcast(y, _VI), _splat(-0x80000000)),
                                   _splat(0x3F000000))
                n = builder.fptosi(builder.fadd(y, builder.bitcast(half, _VF)), _VI)
                B[g][q] = builder.bitcast(builder.xor(builder.add(n, _splat(0x808080)), _splat(0x808080)),
                                          v64)

        def pick(b):  # byte b of each lane of two vectors
            return [4 * j + b for j in range(_V16)] + [64 + 4 * j + b for j in range(_V16)]

        for q in range(4):
            top_mid01 = builder.shuffle_vector(B[0][q], B[1][q], bytes_of(pick(2) + pick(1)))
            top_mid23 = builder.shuffle_vector(B[2][q], B[3][q], bytes_of(pick(2) + pick(1)))
            low = builder.shuffle_vector(builder.shuffle_vector(B[0][q], B[1][q], bytes_of(pick(0))),
                                         builder.shuffle_vector(B[2][q], B[3][q], bytes_of(pick(0))),
                                         bytes_of(list(range(64))))
            top = builder.shuffle_vector(top_mid01, top_mid23, bytes_of([*range(32), *range(64, 96)]))
            mid = builder.shuffle_vector(top_mid01, top_mid23, bytes_of([*range(32, 64), *range(96, 128)]))
            for p, digits in enumerate((top, mid, low)):
                at = builder.add(builder.add(off, builder.mul(plane, ir.Constant(i64, p))),
                                 ir.Constant(i64, 16 * q))
                builder.store(digits, builder.bitcast(builder.gep(o.data, [at]), v64.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(W, types.intp, types.intp, types.intp, cs, o32, types.intp, types.intp), codegen


@inline
def _digits_into(src, K, d0, d1, d2, fine, spread):
    """src[:K] (float32) as integers n of a common scale in three signed int8 digits d0, d1, d2[:K],
    n = d0·2¹⁶ + d1·2⁸ + d2 (balanced base 256: d0 in [−127, 127], d1 and d2 in [−128, 127];
    :func:`digits16`), each value rounded to the nearest integer, src·c with c from
    :func:`_digit_scale` (``fine``, ``spread``: its). Returns the scale s with src ≈ s·2⁻⁸·n (the
    2⁻⁸ taken out of each side of a product of digits, whose sums :func:`_combine_digits` puts
    together), 0 for a row of zeros, or −1 where the row is refused."""
    c, s = _digit_scale(src, K, fine, spread)
    if s > 0:
        for j in range(0, K, _V16):
            digits16(src, j, K, c, d0, d1, d2)
    return s


@inline
def _digit_scale(src, K, fine, spread):
    """``(c, s)``: the factor c that takes src[:K] (float32) to the integers of its digits and the
    scale s = 2⁸/c that takes them back (:func:`_digits_into`); (0, 0) for a row of zeros, (0, −1)
    where a value is not finite or the largest magnitude m is nonzero and outside [``DIGIT_LO``,
    ``DIGIT_HI``] (the digits then mean nothing). ``fine``: m scaled to ``DIGIT_SCALE`` (an error of at
    most m·2⁻²⁴ a value; a weight row's), else by the largest power of two that keeps it at most
    ``DIGIT_SCALE`` (m·2⁻²³; a state row's, whose scale then multiplies exactly, in any order).
    ``spread`` (0: none): refuse a row whose largest magnitude is more than ``spread`` times its mean
    magnitude (an input row of mixed scales, whose small values the digits would keep to fewer bits
    than float32 does)."""
    top = np.int32(0)  # the largest magnitude's bits (NaN's and Inf's lie above every finite one's)
    for k in range(K):
        top = max(top, _magnitude_bits(src[k]))
    m = _float_of(top)
    if top >= np.int32(0x7F800000) or m > DIGIT_HI or (m < DIGIT_LO and m != 0):
        return np.float32(0.0), np.float32(-1.0)
    if spread > 0 and m != 0:
        total = np.float32(0.0)
        for k in range(K):
            total += abs(src[k])
        if m * np.float32(K) > spread * total:
            return np.float32(0.0), np.float32(-1.0)
    if m == 0:
        return np.float32(0.0), np.float32(0.0)
    if fine:
        return DIGIT_SCALE / m, m / DIGIT_SCALE * np.float32(256.0)
    # the largest power of two that scales m to at most DIGIT_SCALE: its products are exact
    c = _float_of(_bits_of(DIGIT_SCALE / m) & np.int32(0x7F800000))
    return c, np.float32(256.0) / c


@inline
def _check_digits_packing(W, out):
    if out.shape[0] != digits_size(padded(W.shape[0]), padded(W.shape[1])) or W.shape[1] > DIGIT_MAX_K:
        raise ValueError("pack_digits: shapes do not match")


@inline
def _pack_digit_blocks_into(W, out, spread, nb0, nb1):
    """W's digits (a row of W a scale, :func:`_digit_scale`) into ``out`` as :func:`pack_digits` lays
    them out, for W's blocks of 16 rows nb0 … nb1 − 1: their digits and scales. Returns 1, or 0
    where a row is refused."""
    N, K = W.shape
    Np = padded(N)
    Kq = padded64(K)
    KQ = Kq // 4
    o32 = out[:3 * Np * Kq // 2].view(np.uint32)
    scales = out[3 * Np * Kq // 2:].view(np.float32)
    cs = np.zeros(_V16, np.float32)  # the 16 rows' factors (0 past N: those rows' digits are zero)
    plane = (Np // 16) * KQ * 16  # uint32 between one digit's packing and the next's
    for nb in range(nb0, nb1):
        rows = min(16, N - nb * 16)
        for i in range(16):
            c, s = np.float32(0.0), np.float32(0.0)
            if i < rows:
                c, s = _digit_scale(W[nb * 16 + i], K, True, spread)
                if s < 0:
                    return 0
            cs[i] = c
            scales[nb * 16 + i] = s
        for k0 in range(0, Kq, 16):
            digit_quads16(W, nb * 16, rows, k0, cs, o32, (nb * KQ + k0 // 4) * 16, plane)
    return 1


def pack_digits(W, spread=0.0):
    """W (N, K) float32, C-contiguous → its integer digits for the recurrence's products (one flat
    uint16 array, 64-byte aligned, of ``digits_size`` values; empty where a row is refused): each row
    of W scaled to 24-bit integers in three signed int8 digits (:func:`_digits_into`), digit p of
    W[n, k] at byte p·Np·Kq + ((n // 16)·Kq + k − k % 4)·16 + (n % 16)·4 + k % 4 (AMX's int8 quads;
    Np: N rounded up to 32, Kq: K to 64, the padding zero), then the rows' scales as Np float32.
    ``spread``: refuse rows of mixed scales (:func:`_digit_scale`; 0, none). Made by
    :func:`pack_digits_into` or :func:`pack_digits_into_parallel`, which write the same bytes (both
    round by :func:`digit_quads16`'s one sequence of instructions and take the scales from the same
    few operations on m; ``test_digit_packing_on_threads_equals_one_thread``)."""
    W = np.ascontiguousarray(W)
    size = digits_size.py_func(padded.py_func(W.shape[0]), padded.py_func(W.shape[1]))
    buf = np.empty(size + 32, np.uint16)
    out = buf[(-buf.ctypes.data % 64) // 2:][:size]
    return out[:pack_digits_into(W, out, np.float32(spread)) * size]


@kernel
def pack_digits_into(W, out, spread):
    """:func:`pack_digits` into ``out`` (``digits_size`` uint16, 64-byte aligned: a caller's
    scratch); returns 1, or 0 where a row of W is refused (``spread``: as :func:`_digit_scale`'s)."""
    wide_vectors()
    _check_digits_packing(W, out)
    return _pack_digit_blocks_into(W, out, spread, 0, padded(W.shape[0]) // 16)


@parallel_kernel(name="pack_digits_into_parallel")
def pack_digits_into_parallel(W, out, spread, n_threads):
    """:func:`pack_digits_into` on Numba's threads, ``n_threads`` ranges of W's blocks of 16 rows: the
    same packing and return value (as :func:`pack_amx_into_parallel` for the pieces)."""
    wide_vectors()
    _check_digits_packing(W, out)
    nb, per, nc = _block_ranges(W.shape[0], n_threads)
    got = np.ones(max(nc, 1), np.int64)
    for c in prange(nc):
        wide_vectors()
        got[c] = _pack_digit_blocks_into(W, out, spread, c * per, min(nb, (c + 1) * per))
    return got.min()


@inline
def spread_rows(n, itemsize):
    """Values between the rows of a tile operand's scratch whose rows hold n values of ``itemsize``
    bytes (n·itemsize a multiple of 64): n, or one cache line more where a row is a multiple of 8
    lines, so that a tile's 16 rows fall in 16 sets of L1 rather than 8 or fewer, where W's tiles
    streaming past evict them (1024 digits a row: every fourth row in one set; the product of 64 rows
    by 1024 into 3072 sums, a step of the forward at H = 1024, took 1.47 ms against 1.19 with the rows
    1088 bytes apart). The rows' digits, the split's bfloat16 pieces and the weight gradient's pieces
    of G take it."""
    return n + 64 // itemsize if (n * itemsize // 64) % 8 == 0 else n


@inline
def _digit_chunk(Kq, Np):
    """The summed index's chunk (a multiple of 64) for :func:`_sixteen_rows_digits`: all of Kq where
    16 rows' digits and a column of tiles of W's (96·Kq bytes) fit L1 (48 KB) or where W's digits lie
    beyond L2 (``DIGIT_WIDE_BYTES``), else equal chunks of at most ``DIGIT_CHUNK`` values."""
    if 96 * Kq <= DIGIT_L1_BYTES or 3 * Np * Kq > DIGIT_WIDE_BYTES:
        return Kq
    n = (Kq + DIGIT_CHUNK - 1) // DIGIT_CHUNK
    return padded64((Kq + n - 1) // n)


@inline
def _sixteen_rows_digits(A8, Wq, S, Kq, Np, Ks):
    """S[p] (16, Np) int32 = the sums of digit products of weight 2⁻⁸ᵖ: p = 0 d₀e₀, 1 d₀e₁ + d₁e₀, 2 d₀e₂ +
    d₁e₁ + d₂e₀, for the digits d of 16 rows of A8 (digit p at p·16·Ks, rows Ks bytes apart:
    :func:`spread_rows`) and e of W's (:func:`pack_digits`), 64 values of the summed index a tile
    product. The products of lower weight (below 2⁻²⁴ of the leading ones) are left out. Tiles 0–2 sum,
    3–5 hold the rows' digits, 6–7 W's. The summed index runs in chunks (:func:`_digit_chunk`), every
    column of tiles of a chunk before the next, the sums stored and loaded back between them, so that
    the rows' digits of a chunk stay in L1 while W's stream past (the backward's product at H = 256, 16
    rows by 768 summed values into 256 sums, read the rows' 36 KB of digits again for every column of
    W's tiles: 64 rows 70–73 µs against 87–89 by chunks of 384; integer sums, so the bits are the same)."""
    step = Np * Kq
    md = 16 * Ks
    C = _digit_chunk(Kq, Np)
    for c0 in range(0, Kq, C):
        for n0 in range(0, Np, 16):
            w0 = (n0 // 16) * Kq * 16
            if c0 == 0:
                tile_zero(0)
                tile_zero(1)
                tile_zero(2)
            else:
                tile_load(0, S, n0, Np * 4)
                tile_load(1, S, 16 * Np + n0, Np * 4)
                tile_load(2, S, 32 * Np + n0, Np * 4)
            for k0 in range(c0, min(Kq, c0 + C), 64):
                tile_load(3, A8, k0, Ks)
                tile_load(4, A8, md + k0, Ks)
                tile_load(5, A8, 2 * md + k0, Ks)
                b = w0 + k0 * 16
                tile_load(6, Wq, b, 64)
                tile_dot_int8(0, 3, 6)
                tile_dot_int8(1, 4, 6)
                tile_dot_int8(2, 5, 6)
                tile_load(7, Wq, b + step, 64)
                tile_dot_int8(1, 3, 7)
                tile_dot_int8(2, 4, 7)
                tile_load(6, Wq, b + 2 * step, 64)
                tile_dot_int8(2, 3, 6)
            tile_store(0, S, n0, Np * 4)
            tile_store(1, S, 16 * Np + n0, Np * 4)
            tile_store(2, S, 32 * Np + n0, Np * 4)


@inline
def _thirty_two_rows_digits(A8, Wq, S, Kq, Np, Ks):
    """:func:`_sixteen_rows_digits` for 32 rows (A8's digit p at p·32·Ks), into S (6, 16, Np): S[3g + p]
    the sums of weight 2⁻⁸ᵖ of rows 16g … 16g + 15. Each of W's tiles is loaded once for both groups of
    16 rows (from L3 at large H, where it bounds the step); tiles 0–5 sum, 6 holds the rows' digits, 7
    W's."""
    step = Np * Kq
    md = 32 * Ks
    half = 16 * Ks
    for n0 in range(0, Np, 16):
        w0 = (n0 // 16) * Kq * 16
        tile_zero(0)
        tile_zero(1)
        tile_zero(2)
        tile_zero(3)
        tile_zero(4)
        tile_zero(5)
        for k0 in range(0, Kq, 64):
            b = w0 + k0 * 16
            tile_load(7, Wq, b, 64)
            tile_load(6, A8, k0, Ks)
            tile_dot_int8(0, 6, 7)
            tile_load(6, A8, half + k0, Ks)
            tile_dot_int8(3, 6, 7)
            tile_load(6, A8, md + k0, Ks)
            tile_dot_int8(1, 6, 7)
            tile_load(6, A8, md + half + k0, Ks)
            tile_dot_int8(4, 6, 7)
            tile_load(6, A8, 2 * md + k0, Ks)
            tile_dot_int8(2, 6, 7)
            tile_load(6, A8, 2 * md + half + k0, Ks)
            tile_dot_int8(5, 6, 7)
            tile_load(7, Wq, b + step, 64)
            tile_load(6, A8, k0, Ks)
            tile_dot_int8(1, 6, 7)
            tile_load(6, A8, half + k0, Ks)
            tile_dot_int8(4, 6, 7)
            tile_load(6, A8, md + k0, Ks)
            tile_dot_int8(2, 6, 7)
            tile_load(6, A8, md + half + k0, Ks)
            tile_dot_int8(5, 6, 7)
            tile_load(7, Wq, b + 2 * step, 64)
            tile_load(6, A8, k0, Ks)
            tile_dot_int8(2, 6, 7)
            tile_load(6, A8, half + k0, Ks)
            tile_dot_int8(5, 6, 7)
        tile_store(0, S, n0, Np * 4)
        tile_store(1, S, 16 * Np + n0, Np * 4)
        tile_store(2, S, 32 * Np + n0, Np * 4)
        tile_store(3, S, 48 * Np + n0, Np * 4)
        tile_store(4, S, 64 * Np + n0, Np * 4)
        tile_store(5, S, 80 * Np + n0, Np * 4)


@inline
def _digit_rows_product(src, nb, Wv, A, acc, acc3, Np, wide_bytes, spread):
    """acc[:nb, :Np] = src[:nb] @ W.T from W's digits (Wv = :func:`pack_digits` (W)), 16 rows at a
    time: each row's digits (:func:`_digits_into`) into A's bytes, their products' sums into acc3's
    (as int32), then put together (:func:`_combine_digits`). False where a row is refused."""
    K = src.shape[1]
    Kq = padded64(K)
    A8 = A.view(np.int8)
    Wq = Wv.view(np.int8)
    sw = Wv[3 * Np * Kq // 2:].view(np.float32)
    Sf = acc3.reshape(acc3.size).view(np.int32)
    Ks = spread_rows(Kq, 1)
    wide = (nb > 16 and 3 * Np * Kq > wide_bytes and Sf.shape[0] >= 6 * 16 * Np
            and A8.shape[0] >= 3 * 32 * Ks)
    G = 32 if wide else 16
    S = Sf[:2 * 3 * 16 * Np].reshape(6, 16, Np) if wide else Sf[:3 * 16 * Np].reshape(3, 16, Np)
    D = A8[:3 * G * Ks].reshape(3, G, Ks)
    sa = np.empty(32, np.float32)
    for g0 in range(0, nb, G):
        rows = min(G, nb - g0)
        for i in range(rows):
            s = _digits_into(src[g0 + i], K, D[0, i], D[1, i], D[2, i], False, spread)
            if s < 0:
                return False
            sa[i] = s
        if wide:
            _thirty_two_rows_digits(A8, Wq, Sf, Kq, Np, Ks)
        else:
            _sixteen_rows_digits(A8, Wq, Sf, Kq, Np, Ks)
        for i in range(rows):
            g = 3 * (i // 16)
            r = i % 16
            _combine_digits(S[g, r], S[g + 1, r], S[g + 2, r], sw, sa[i], acc[g0 + i])
    return True


@inline
def _combine_digits(s0, s1, s2, sw, sa, out):
    """out[j] = (s0[j]·2¹⁶ + s1[j]·2⁸ + s2[j]) · sw[j] · sa: a row's sums of digit products
    (:func:`_sixteen_rows_digits`) as the float32 product, by the weights' scales sw and the row's sa
    (a power of two). The sum is exact in int64 and rounds once to float32, and the scales multiply
    exactly (but for underflow), so no order the compiler picks changes the bits."""
    for j in range(out.shape[0]):
        v = (np.int64(s0[j]) << 16) + (np.int64(s1[j]) << 8) + np.int64(s2[j])
        out[j] = np.float32(v) * sw[j] * sa


# ---------------------------------------------------------------------------- the product
@inline
def _six(A, a0, a_piece, a_down, a_row, Bm, b0, b_piece, b_right, b_row, one, order):
    """The bfloat16 products of one 32 × 32 block of sums over 32 values of the summed index into
    tiles 0–3: aᵢ by wⱼ for every i + j < ``order`` (3: the six, a₁ by w₁, w₂, w₃, a₂ by w₂, w₁, a₃
    by w₁, to float32 accuracy; 2: a₁w₁, a₁w₂, a₂w₁; 1: a₁w₁; the module docstring). A's tiles (rows
    of the sums): piece p at a0 + p·a_piece, its second 16 rows a_down further, rows a_row bytes
    apart; Bm's (pairs of the summed index, columns of the sums): piece p at b0 + p·b_piece, its
    second 16 columns b_right further, rows b_row bytes apart (offsets in the arrays' elements).
    ``one``: Bm holds one piece (bfloat16 values, w₂ = w₃ = 0): a₁ … a_order by w₁, whose tiles
    load once."""
    if one:
        tile_load(6, Bm, b0, b_row)
        tile_load(7, Bm, b0 + b_right, b_row)
        for pa in range(order):
            tile_load(4, A, a0 + pa * a_piece, a_row)
            tile_load(5, A, a0 + pa * a_piece + a_down, a_row)
            tile_dot(0, 4, 6)
            tile_dot(1, 4, 7)
            tile_dot(2, 5, 6)
            tile_dot(3, 5, 7)
        return
    loaded = -1
    for q in range(6):
        pa = 0 if q < 3 else (1 if q < 5 else 2)
        pb = q if q < 3 else (4 - q if q < 5 else 0)  # 0 1 2 1 0 0
        if pa + pb >= order:
            continue
        if pa != loaded:
            tile_load(4, A, a0 + pa * a_piece, a_row)
            tile_load(5, A, a0 + pa * a_piece + a_down, a_row)
            loaded = pa
        b = b0 + pb * b_piece
        tile_load(6, Bm, b, b_row)
        tile_load(7, Bm, b + b_right, b_row)
        tile_dot(0, 4, 6)
        tile_dot(1, 4, 7)
        tile_dot(2, 5, 6)
        tile_dot(3, 5, 7)


@inline
def _tile_config():
    """The tile configuration every kernel here loads (palette 1, 8 tiles of 16 rows × 64 bytes),
    64 bytes, 64-byte aligned."""
    cfg = aligned_zeros(64, np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64
        cfg[48 + t] = 16
    return cfg


@inline
def _project_rows(x, Wv, N, biasp, out, r0, r1, order):
    """out[r0:r1] = x[r0:r1] @ W.T + biasp[:N] on tiles (:func:`amx_projection`'s work on a range of
    rows, with its own scratch and tile configuration, so that threads may take ranges side by
    side); False where a row holds a value the split refuses."""
    K = x.shape[1]
    Np = padded(N)
    Kp = padded(K)
    MB = max(32, min(256, BLOCK_BYTES // (6 * Kp) // 32 * 32))
    Ks = spread_rows(Kp, 2)
    A = aligned_zeros(3 * MB * Ks, np.uint16)
    A3 = A.reshape(3, MB, Ks)
    edge = aligned_zeros(32 * 32, np.float32)
    one = _pieces_of(Wv, Np, Kp) == 1
    tile_config(_tile_config())
    ok = True
    for q0 in range(r0, r1, MB):
        rows = min(MB, r1 - q0)
        for i in range(rows):
            if not _split_into(x, q0 + i, K, A3, i):
                ok = False
                break
        if not ok:
            break
        for i in range(rows, padded(rows)):
            A3[:, i, :] = 0
        for n0 in range(0, Np, 32):
            w0 = (n0 // 16) * Kp * 16
            for m0 in range(0, rows, 32):
                tile_load(0, biasp, n0, 0)
                tile_load(1, biasp, n0 + 16, 0)
                tile_load(2, biasp, n0, 0)
                tile_load(3, biasp, n0 + 16, 0)
                for k0 in range(0, Kp, 32):
                    _six(A, m0 * Ks + k0, MB * Ks, 16 * Ks, 2 * Ks, Wv, w0 + 16 * k0, Np * Kp, 16 * Kp, 64,
                         one, order)
                if m0 + 32 <= rows and n0 + 32 <= N:
                    o = (q0 + m0) * N + n0
                    tile_store(0, out, o, N * 4)
                    tile_store(1, out, o + 16, N * 4)
                    tile_store(2, out, o + 16 * N, N * 4)
                    tile_store(3, out, o + 16 * N + 16, N * 4)
                else:
                    tile_store(0, edge, 0, 128)
                    tile_store(1, edge, 16, 128)
                    tile_store(2, edge, 512, 128)
                    tile_store(3, edge, 528, 128)
                    for i in range(min(32, rows - m0)):
                        orow = out[q0 + m0 + i]
                        for j in range(min(32, N - n0)):
                            orow[n0 + j] = edge[i * 32 + j]
    tile_release()
    return ok


@inline
def _projection_args(x, Wv, N, bias, use_bias, out, digits):
    """Check :func:`amx_projection`'s shapes (:func:`amx_digit_projection`'s with ``digits``: Wv
    then holds W's digits, else its pieces); the bias padded to whole tiles (zeros without)."""
    R, K = x.shape
    kind = _pieces_of(Wv, padded(N), padded(K))
    if kind == 0 or (kind == DIGITS) != digits or out.shape[0] != R or out.shape[1] != N or \
            (use_bias and bias.shape[0] < N):
        raise ValueError("amx_projection: shapes do not match")
    biasp = aligned_zeros(padded(N), np.float32)
    if use_bias:
        for j in range(N):
            biasp[j] = bias[j]
    return biasp


@kernel
def amx_projection(x, Wv, N, bias, use_bias, out, order):
    """out = x @ W.T (+ bias) on AMX tiles, from ``Wv = pack_amx(W)`` for W (N, K) float32, the
    products of pieces of ``order`` (module docstring; 3: to float32 accuracy).

    x (R, K), out (R, N) C-contiguous float32, bias (N,) float32. Returns False, with out partly
    written, where a row of x holds a value that :func:`_split_into` refuses: the caller
    then computes the product in float32. The caller checks that the CPU runs AMX
    (:func:`amx_ready`) and that Wv is W's packing (nonempty)."""
    wide_vectors()
    biasp = _projection_args(x, Wv, N, bias, use_bias, out, False)
    return _project_rows(x, Wv, N, biasp, out, 0, x.shape[0], order)


@inline
def _row_ranges(R, n_threads):
    """The parallel projections' ranges of R rows for ``n_threads``: (rows a range, a multiple of 32
    but the last's; how many ranges)."""
    per = max(32, (R + 32 * n_threads - 1) // (32 * n_threads) * 32)
    return per, (R + per - 1) // per


@parallel_kernel(name="amx_projection_parallel")
def amx_projection_parallel(x, Wv, N, bias, use_bias, out, n_threads, order):
    """:func:`amx_projection` on Numba's threads: ``n_threads`` ranges of rows (multiples of 32 but
    the last), each on its own core's tiles."""
    wide_vectors()
    biasp = _projection_args(x, Wv, N, bias, use_bias, out, False)
    R = x.shape[0]
    per, nc = _row_ranges(R, n_threads)
    ok = np.ones(nc, np.bool_)
    for c in prange(nc):
        wide_vectors()
        ok[c] = _project_rows(x, Wv, N, biasp, out, c * per, min(R, (c + 1) * per), order)
    return ok.all()


@inline
def _project_digit_rows(x, Wd, N, biasp, out, r0, r1, spread):
    """out[r0:r1] = x[r0:r1] @ W.T + biasp[:N] from W's digits (:func:`amx_digit_projection`'s work
    on a range of rows, with its own scratch and tile configuration); False where a row is refused."""
    K = x.shape[1]
    Np = padded(N)
    A, _, _, acc3 = _amx_scratch(32, K, N, False)  # (the sums go straight into out's rows)
    tile_config(_tile_config())
    ok = True
    for q0 in range(r0, r1, 32):
        nb = min(32, r1 - q0)
        if not _digit_rows_product(x[q0:q0 + nb], nb, Wd, A, out[q0:q0 + nb], acc3, Np, 0, spread):
            ok = False
            break
        for i in range(nb):  # (indexed where the rows lie, as the splits)
            for j in range(N):
                out[q0 + i, j] += biasp[j]
    tile_release()
    return ok


@kernel
def amx_digit_projection(x, Wd, N, bias, use_bias, out, spread):
    """out = x @ W.T (+ bias) on AMX's int8 tiles from ``Wd = pack_digits(W, spread)`` for W (N, K)
    float32: each row of x split into integer digits as a state is (module docstring), 32 rows at a
    time. x (R, K), out (R, N) C-contiguous float32, bias (N,) float32. Returns False, with out partly
    written, where a row of x is refused (NaN, ±Inf, a largest magnitude outside [2⁻⁶⁰, 2⁶⁰], or more
    than ``spread`` times the row's mean magnitude): the caller then takes another route."""
    wide_vectors()
    biasp = _projection_args(x, Wd, N, bias, use_bias, out, True)
    return _project_digit_rows(x, Wd, N, biasp, out, 0, x.shape[0], spread)


@parallel_kernel(name="amx_digit_projection_parallel")
def amx_digit_projection_parallel(x, Wd, N, bias, use_bias, out, spread, n_threads):
    """:func:`amx_digit_projection` on Numba's threads: ``n_threads`` ranges of rows (multiples of
    32 but the last), each on its own core's tiles (each row's result is the same bits on any)."""
    wide_vectors()
    biasp = _projection_args(x, Wd, N, bias, use_bias, out, True)
    R = x.shape[0]
    per, nc = _row_ranges(R, n_threads)
    ok = np.ones(nc, np.bool_)
    for c in prange(nc):
        wide_vectors()
        ok[c] = _project_digit_rows(x, Wd, N, biasp, out, c * per, min(R, (c + 1) * per), spread)
    return ok.all()


@inline
def _sixteen_rows_product(A, Wv, acc3, Kp, Np, one, order, Ks):
    """acc3[p] (16, Np) = piece p of A's 16 rows (rows Ks apart, pieces 16·Ks apart) times W's
    pieces as :func:`_six` pairs them for ``order`` (3: a₁ by w₁, w₂, w₃; a₂ by w₁, w₂; a₃ by w₁),
    for a batch of up to 16 rows: each of W's tiles is loaded once and feeds every product it takes
    part in (the pairing of :func:`_six` loads w₁'s tiles three times, and at 16 rows the step then
    waited on L2). Tiles 0–2 sum, 3–5 hold a₁, a₂, a₃, 6–7 W's pieces; the sums of pieces the order
    leaves out are zero. ``one``: Wv holds one piece (bfloat16 values): a₁ … a_order by w₁."""
    row = Ks * 2
    step = Np * Kp
    ma = 16 * Ks
    for n0 in range(0, Np, 16):
        w0 = (n0 // 16) * Kp * 16
        tile_zero(0)
        tile_zero(1)
        tile_zero(2)
        for k0 in range(0, Kp, 32):
            tile_load(3, A, k0, row)
            if order > 1:
                tile_load(4, A, ma + k0, row)
            if order > 2:
                tile_load(5, A, 2 * ma + k0, row)
            b = w0 + k0 * 16
            tile_load(6, Wv, b, 64)
            tile_dot(0, 3, 6)
            if order > 1:
                tile_dot(1, 4, 6)
            if order > 2:
                tile_dot(2, 5, 6)
            if one or order == 1:
                continue
            tile_load(7, Wv, b + step, 64)
            tile_dot(0, 3, 7)
            if order == 2:
                continue
            tile_dot(1, 4, 7)
            tile_load(6, Wv, b + 2 * step, 64)
            tile_dot(0, 3, 6)
        tile_store(0, acc3, n0, Np * 4)
        tile_store(1, acc3, 16 * Np + n0, Np * 4)
        tile_store(2, acc3, 32 * Np + n0, Np * 4)


@inline
def _tile_rows_product(src, nb, Wv, A, A3, acc, acc3, order):
    """acc[:nb, :N] = src[:nb] @ W.T on the tiles (configured by the caller) for W (N, K) packed in
    Wv, src (≥ nb, K) float32, through the scratch :func:`_amx_scratch` makes (one 16-row tile,
    or blocks of 32 rows). False where a row holds a value :func:`_split_into` refuses."""
    K = src.shape[1]
    Kp = padded(K)
    Ks = A3.shape[2]  # (the pieces' rows apart: :func:`spread_rows`)
    Mp = A3.shape[1]
    Np = acc.shape[1]
    kind = _pieces_of(Wv, Np, Kp)
    if kind == DIGITS:
        return _digit_rows_product(src, nb, Wv, A, acc, acc3, Np, DIGIT_WIDE_BYTES, np.float32(0.0))
    one = kind == 1
    for i in range(nb):
        if not _split_into(src, i, K, A3, i):
            return False
    if Mp == 16:
        _sixteen_rows_product(A, Wv, acc3, Kp, Np, one, order, Ks)
        for i in range(nb):  # the pieces' sums, largest first (indexed where they lie)
            for j in range(Np):
                acc[i, j] = acc3[0, i, j] + (acc3[1, i, j] + acc3[2, i, j])
        return True
    for n0 in range(0, Np, 32):
        w0 = (n0 // 16) * Kp * 16
        for m0 in range(0, Mp, 32):
            tile_zero(0)
            tile_zero(1)
            tile_zero(2)
            tile_zero(3)
            for k0 in range(0, Kp, 32):
                _six(A, m0 * Ks + k0, Mp * Ks, 16 * Ks, 2 * Ks, Wv, w0 + 16 * k0, Np * Kp, 16 * Kp, 64, one,
                     order)
            o = m0 * Np + n0
            tile_store(0, acc, o, Np * 4)
            tile_store(1, acc, o + 16, Np * 4)
            tile_store(2, acc, o + 16 * Np, Np * 4)
            tile_store(3, acc, o + 16 * Np + 16, Np * 4)
    return True


@inline
def _amx_steps(g3, t_first, n, reverse, Whv, b_hh, h_a, h_b, s, y, col0, b0, A, A3, acc, acc3, tape,
               order):
    """Steps t_first … t_first+n−1 of g3 (in reverse order when ``reverse``) for the state rows h_a /
    h_b (nb rows, taking turns from global step s on), which are rows b0 … b0+nb−1 of g3 and y (y's
    steps as g3's). Scratch A (pieces of the state), acc (sums), acc3 (each piece's sums, for 16-row
    tiles) as :func:`gru_forward_amx` makes them. A nonempty ``tape`` (indexed as y) receives each
    row's r, z, n and W_hn h + b_hn (training). Returns the next global step, or −1 where a state
    held a value the split refuses."""
    nb = h_a.shape[0]
    tile_config(_tile_config())
    for q in range(n):
        t = t_first + (n - 1 - q if reverse else q)
        hc = h_a if s % 2 == 0 else h_b
        hn = h_b if s % 2 == 0 else h_a
        if not _tile_rows_product(hc, nb, Whv, A, A3, acc, acc3, order):
            tile_release()
            return -1
        if tape.shape[0] > 0:
            rows_after_store(g3, t, acc, b_hh, hc, hn, y, col0, b0, 0, nb, tape)
        else:
            rows_after_fast(g3, t, acc, b_hh, hc, hn, y, col0, b0, 0, nb)
        s += 1
    tile_release()
    return s


@inline
def _amx_scratch(nb, K, N, few):
    """:func:`_tile_rows_product`'s scratch for nb rows of K values by W (N, K): (A, A3, acc, acc3);
    ``few``: one 16-row tile (nb ≤ 16), else blocks of 32 rows. acc3 holds each piece's sums of a
    16-row tile (3 × 16 rows), or the digits' int32 sums (as 3 or 6 × 16 rows of float32, viewed)."""
    Np = padded(N)
    Ks = spread_rows(padded(K), 2)
    Mp = 16 if few else padded(nb)
    A = aligned_zeros(3 * Mp * Ks, np.uint16)
    acc3 = aligned_zeros((3 if Mp == 16 else 6) * 16 * Np, np.float32).reshape(-1, 16, Np)
    return A, A.reshape(3, Mp, Ks), aligned_zeros(Mp * Np, np.float32).reshape(Mp, Np), acc3


@inline
def _steps_shapes_ok(gx, Whv, b_hh, h0, y, col0, h_n, gx_rows):
    """The shapes the AMX recurrences read (raw pointers past this check): Whv W_hh's packing for
    h0's H, h_n like h0, y's rows and columns, b_hh and gx of 3H columns, gx at least gx_rows rows."""
    B, H = h0.shape
    G = 3 * H
    return (_pieces_of(Whv, padded(G), padded(H)) > 0 and h_n.shape[0] == B and h_n.shape[1] == H
            and y.shape[1] == B and 0 <= col0 and col0 + H <= y.shape[2] and b_hh.shape[0] == G
            and gx.shape[1] == G and gx.shape[0] >= gx_rows)


@inline
def _tape_ok(tape, y, H):
    """An empty tape, or one of y's steps and rows with 4H columns."""
    return tape.shape[0] == 0 or (tape.shape[0] == y.shape[0] and tape.shape[1] == y.shape[1]
                                  and tape.shape[2] == 4 * H)


@kernel
def gru_forward_amx(x2d, W_ih, Wp_ih, b_ih, use_bias, proj_panels, proj_dot, gx, Whv, b_hh, h0, reverse,
                    y, col0, h_n, steps, tape, order):
    """One direction of a reset_after GRU layer's inference forward with sigmoid gates and no clip,
    every row running all T steps, each step's W_hh product on AMX tiles (to float32 accuracy).

    Whv = :func:`pack_amx` (W_hh) for W_hh (3H, H); b_hh (3H,); h0 (B, H) in; y (T, B, D·H) out,
    columns col0 … col0+H−1 receive h_t; h_n (B, H) out. ``steps`` 0: gx (T·B, 3H) holds the input
    projection x_t W_ih.T + b_ih of every step. Else gx (≥ steps·B, 3H) is scratch and the projection
    of x2d (T·B, I) runs here ``steps`` steps at a time, just before the steps that read it, by
    :func:`~numgru.kernels.forward.input_projection_kernel` with the arguments it takes (as
    :func:`~numgru.kernels.forward.gru_forward_chunked`). tape (T, B, 4H) out for training (r, z, n,
    W_hn h + b_hn of every step, as the float32 kernels store them), else (0, 0, 0). All float32 and
    C-contiguous. ``order``: the products' (module docstring; 3: to float32 accuracy).

    Each step splits the state into its three pieces, multiplies them into a (B, 3H) block of sums
    (padded to 16 rows, or to a multiple of 32, and 32 columns) and runs the forward's gate loop on it
    (:func:`~numgru.kernels.forward.rows_after_fast`). The tiles are configured per chunk of steps and
    released before anything else runs. Returns False, with y and h_n partly written, where a state
    holds a value :func:`_split_into` refuses (NaN from the input, say): the caller then runs
    the float32 kernels. The caller checks that the CPU runs AMX (:func:`amx_ready`) and that Whv is
    nonempty."""
    wide_vectors()
    T = y.shape[0]
    B, H = h0.shape
    G = 3 * H
    if not _steps_shapes_ok(gx, Whv, b_hh, h0, y, col0, h_n, (T if steps == 0 else min(steps, T)) * B) \
            or (steps > 0 and (x2d.shape[0] != T * B or W_ih.shape[0] != G)) or not _tape_ok(tape, y, H):
        raise ValueError("gru_forward_amx: shapes do not match")
    if proj_panels and steps > 0 and Wp_ih.shape[0] == 0:
        Wp_ih = pack_panels(W_ih)
    A, A3, acc, acc3 = _amx_scratch(B, H, G, B <= 16)
    h_a = h0.copy()
    h_b = np.empty_like(h0)
    chunk = T if steps == 0 else steps
    nc = (T + chunk - 1) // chunk
    s = 0
    for k in range(nc):
        c = nc - 1 - k if reverse else k
        t0 = c * chunk
        t1 = min(T, t0 + chunk)
        n = t1 - t0
        if steps > 0:
            g = gx[:n * B]
            input_projection_kernel(x2d[t0 * B:t1 * B], W_ih, Wp_ih, b_ih, use_bias, g, proj_panels,
                                    proj_dot)
            s = _amx_steps(g.reshape((n, B, G)), 0, n, reverse, Whv, b_hh, h_a, h_b, s, y[t0:t1], col0,
                           0, A, A3, acc, acc3, tape[t0:t1] if tape.shape[0] > 0 else tape, order)
        else:
            s = _amx_steps(gx[:T * B].reshape((T, B, G)), t0, n, reverse, Whv, b_hh, h_a, h_b, s, y,
                           col0, 0, A, A3, acc, acc3, tape, order)
        if s < 0:
            return False
    h_n[:] = h_a if s % 2 == 0 else h_b
    return True


@parallel_kernel(name="gru_forward_amx_rows_parallel")
def gru_forward_amx_rows(gx, Whv, b_hh, h0, reverse, y, col0, h_n, n_chunks, tape, order):
    """:func:`gru_forward_amx` with ``steps`` 0 on Numba's threads: the B rows in ``n_chunks`` ranges
    (multiples of 16 but the last; of 32 with a tape, so that every range takes the tiles' 32-row
    products and each row's sums are those of one thread's), each running the whole sequence on its
    own core's tiles (rows of a GRU never interact, as on the rows route). gx (T·B, 3H) holds the
    projection; tape as in :func:`gru_forward_amx`. Returns False where any range met a value the
    split refuses."""
    wide_vectors()
    T = y.shape[0]
    B, H = h0.shape
    G = 3 * H
    if not _steps_shapes_ok(gx, Whv, b_hh, h0, y, col0, h_n, T * B) or not _tape_ok(tape, y, H):
        raise ValueError("gru_forward_amx_rows: shapes do not match")
    unit = 32 if tape.shape[0] > 0 else 16
    per = (B + unit * n_chunks - 1) // (unit * n_chunks) * unit
    nc = (B + per - 1) // per
    g3 = gx[:T * B].reshape((T, B, G))
    ok = np.ones(nc, np.bool_)
    for c in prange(nc):
        wide_vectors()
        b0 = c * per
        b1 = min(B, b0 + per)
        # (with a tape, 16-row tiles only where the whole batch takes them, as on one thread)
        A, A3, acc, acc3 = _amx_scratch(b1 - b0, H, G, b1 - b0 <= 16 and (unit == 16 or B <= 16))
        h_a = h0[b0:b1].copy()
        h_b = np.empty_like(h_a)
        s = _amx_steps(g3, 0, T, reverse, Whv, b_hh, h_a, h_b, 0, y, col0, b0, A, A3, acc, acc3, tape,
                       order)
        if s < 0:
            ok[c] = False
        else:
            h_n[b0:b1] = h_a if s % 2 == 0 else h_b
    return ok.all()


# ---------------------------------------------------------------------------- weight gradients
@inline
def _split_pairs(src, r, two, j0, j1, dst, k, d0):
    """Rows r and r + 1 of src (float32; with ``two`` False, row r and zeros), columns j0 … j1−1,
    split into three bfloat16 pieces, each piece's two rows interleaved in pairs: dst[p, k, d0 + j −
    j0] holds piece p of src[r, j] (low half) and of src[r + 1, j] (high half), 16 values at a time
    (:func:`split_pairs16`; nothing else of dst is written). Returns whether those values are all
    finite with magnitude at most SPLIT_LIMIT, as :func:`_split_into`."""
    ok = True
    for j in range(j0, j1, _V16):
        ok &= split_pairs16(src, r, two, j, j1, dst, k, d0 + j - j0)
    return ok


@inline
def _gradient_columns(X, D, D2, M, C, c0, c1, KB, order):
    """C[:, c0:c1] = (X.T @ G)[:, c0:c1] on tiles for X (N, I) and the gate gradients G (N, M): D's
    first M − M2 columns, then D2's M2 (D (N, ≥ M − M2), D2 (N, M2) float32; C (Ip, Mp) float32,
    I and M padded to multiples of 32; c0, c1 multiples of 32), summing over N a block of KB rows (a
    multiple of 32) at a time: each block's rows split into pieces, in pairs of rows, X's then
    turned so that its columns are the tiles' rows. False where a value is refused."""
    N, I = X.shape
    Ip, Mp = C.shape
    m1 = M - D2.shape[1]
    W = c1 - c0
    KH = KB // 2
    A = aligned_zeros(3 * Ip * KH, np.uint32)
    A3 = A.reshape(3, Ip, KH)
    Vf = aligned_zeros(3 * KH * Ip, np.uint32)
    V = Vf.reshape(3, KH, Ip)
    # G's pieces' rows spread over L1's sets (:func:`spread_rows`; W = 768, 3072 bytes a row, put every
    # fourth row in one set: the gradient at N = 8192, 768 × 256 read 15.8–16.1 ms against 15.2–15.5)
    WB = spread_rows(W, 4)
    Bv = aligned_zeros(3 * KH * WB, np.uint32)
    B3 = Bv.reshape(3, KH, WB)
    Cf = C.reshape(Ip * Mp)
    nd = D.shape[1]
    arow = KH * 4
    brow = WB * 4
    crow = Mp * 4
    piece_a = Ip * KH
    piece_b = KH * WB
    tile_config(_tile_config())
    for k0 in range(0, N, KB):
        kn = min(KB, N - k0)
        kh = padded(kn) // 2
        for k in range(kh):
            r = k0 + 2 * k
            if r >= N:
                V[:, k, :] = 0
                B3[:, k, :] = 0
                continue
            if r + 3 < N:  # the next pair's columns of D: where the split reads rows in part
                for j in range(c0, min(c1, m1), 16):  # (dW_hh's r and z blocks of dgx, or a thread's
                    prefetch(D, (r + 2) * nd + j)  # range), the hardware's prefetchers lose them
                    prefetch(D, (r + 3) * nd + j)  # (N = 8192, 768 × 256, dW_hh: 17.2 ms against
            two = r + 1 < N  # 14.0; whole rows 13.6 → 12.6)
            if not (_split_pairs(X, r, two, 0, I, V, k, 0)
                    and _split_pairs(D, r, two, c0, min(c1, m1), B3, k, 0)
                    and _split_pairs(D2, r, two, max(c0, m1) - m1, min(c1, M) - m1, B3, k, max(c0, m1) - c0)):
                tile_release()
                return False
        for p in range(order):  # (the pieces the products read)
            for i0 in range(0, Ip, 16):
                for kk in range(0, kh, 16):
                    transpose16(Vf, (p * KH + kk) * Ip + i0, Ip, A, (p * Ip + i0) * KH + kk, KH)
        for i0 in range(0, Ip, 32):
            for m0 in range(0, W, 32):
                o = i0 * Mp + c0 + m0
                if k0 == 0:
                    tile_zero(0)
                    tile_zero(1)
                    tile_zero(2)
                    tile_zero(3)
                else:
                    tile_load(0, Cf, o, crow)
                    tile_load(1, Cf, o + 16, crow)
                    tile_load(2, Cf, o + 16 * Mp, crow)
                    tile_load(3, Cf, o + 16 * Mp + 16, crow)
                for kk in range(0, kh, 16):
                    _six(A, i0 * KH + kk, piece_a, 16 * KH, arow, Bv, kk * WB + m0, piece_b, 16, brow, False,
                         order)
                tile_store(0, Cf, o, crow)
                tile_store(1, Cf, o + 16, crow)
                tile_store(2, Cf, o + 16 * Mp, crow)
                tile_store(3, Cf, o + 16 * Mp + 16, crow)
    tile_release()
    return True


@inline
def _gradient_whole(D, D2, X, out, C, KB, order):
    """:func:`amx_gradient`'s work with its scratch C and block KB (:func:`_gradient_scratch`)."""
    M = out.shape[0]
    if D.shape[0] > 0 and not _gradient_columns(X, D, D2, M, C, 0, C.shape[1], KB, order):
        return False
    _turn_into(C, out, 0, M)
    return True


@kernel
def amx_gradient(D, D2, X, out, order):
    """out = G.T @ X on AMX tiles (to float32 accuracy): a weight gradient, the gate gradients G
    (N, M) by the layer's inputs X (N, I) over all N = T·B rows, out (M, I). G is D's first
    M − M2 columns followed by D2 (N, M2) (D2 (N, 0): G is D; reset_after's dW_hh takes the n
    block from its own array without a copy of the r and z blocks); all float32 and C-contiguous.
    ``order``: the products' (module docstring; 3: to float32 accuracy).
    Returns False, out untouched, where G or X holds a value the split refuses (the caller then
    takes float32's GEMM)."""
    wide_vectors()
    C, KB = _gradient_scratch(D, D2, X, out)
    return _gradient_whole(D, D2, X, out, C, KB, order)


@parallel_kernel(name="amx_gradient_pair_parallel")
def amx_gradient_pair(D, D2, X, out, E, E2, Y, out2, order):
    """Two :func:`amx_gradient` calls side by side on two of Numba's threads, (D, D2, X, out) and
    (E, E2, Y, out2), each summed by one thread as :func:`amx_gradient` sums it, so both results
    equal its bit for bit (a layer's dW_ih and dW_hh: on two threads the pair takes 16.7–17.0 ms
    at N = 8192, 768 × 256, where each split over both threads' columns, X split on both, takes
    19.1–19.4). Returns a (2,) bool array: False where that gradient's values were refused (its out
    untouched)."""
    wide_vectors()
    C, KB = _gradient_scratch(D, D2, X, out)
    C2, KB2 = _gradient_scratch(E, E2, Y, out2)
    ok = np.ones(2, np.bool_)
    for c in prange(2):
        wide_vectors()
        if c == 0:
            ok[0] = _gradient_whole(D, D2, X, out, C, KB, order)
        else:
            ok[1] = _gradient_whole(E, E2, Y, out2, C2, KB2, order)
    return ok


@parallel_kernel(name="amx_gradient_parallel")
def amx_gradient_parallel(D, D2, X, out, n_threads, order):
    """:func:`amx_gradient` on Numba's threads: ``n_threads`` ranges of out's rows (multiples of 32),
    each thread splitting its own columns of D and all of X. Each sum runs in the same order as on
    one thread, so the result does not depend on the thread count."""
    wide_vectors()
    C, KB = _gradient_scratch(D, D2, X, out)
    Mp = C.shape[1]
    M = out.shape[0]
    per = max(32, (Mp // 32 + n_threads - 1) // n_threads * 32)
    nc = (Mp + per - 1) // per
    ok = np.ones(nc, np.bool_)
    if D.shape[0] > 0:
        for c in prange(nc):
            wide_vectors()
            ok[c] = _gradient_columns(X, D, D2, M, C, c * per, min(Mp, (c + 1) * per), KB, order)
    if not ok.all():
        return False
    for c in prange(nc):
        wide_vectors()
        _turn_into(C, out, min(M, c * per), min(M, (c + 1) * per))
    return True


@inline
def _gradient_scratch(D, D2, X, out):
    """Check :func:`amx_gradient`'s shapes; its sums C (I, M padded to 32, zero) and the rows of G
    and X it splits a block at a time."""
    N = D.shape[0]
    M, I = out.shape
    if (X.shape[0] != N or D2.shape[0] != N or X.shape[1] != I or D2.shape[1] > M
            or D.shape[1] < M - D2.shape[1]):
        raise ValueError("amx_gradient: shapes do not match")
    Ip = padded(I)
    Mp = padded(M)
    KB = max(32, min(1024, GRADIENT_BLOCK_BYTES // (6 * (2 * Ip + Mp)) // 32 * 32))
    return aligned_zeros(Ip * Mp, np.float32).reshape(Ip, Mp), KB


@inline
def _turn_into(C, out, m0, m1):
    """out[m0:m1] = C[:I, m0:m1].T."""
    I = out.shape[1]
    for m in range(m0, m1):
        orow = out[m]
        for i in range(I):
            orow[i] = C[i, m]
