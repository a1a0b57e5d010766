"""A register-blocked matmul on packed weights, written in LLVM's vector IR: the recurrent product of a step.

A GRU step multiplies a few rows of h (B × K) by the same weights (K × M, M = 3H) over and over, so the
weights can be laid out once per call for the product and reused T times; the input projection
multiplies all T·B rows of x by W_ih once (:func:`panel_rows`, in slabs of rows that stay in L1 while
every panel passes over them). :func:`pack_panels` copies
W (M, K) into panels of W.T, each ``NC`` columns wide and stored whole (K × NC contiguous values, the
last panel padded with zeros); :func:`panel_matmul` multiplies by them with a kernel in the shape of
BLIS's and OpenBLAS's GEMM micro-kernels: a block of ``MR`` rows × ``NC`` columns of the output stays in
vector registers while k runs over the whole inner dimension, each step loading one panel row (``NV``
vectors) and broadcasting one value of each of the MR rows of h — no horizontal sums, one load per
``MR`` fused multiply-adds.

Numba's own loops do not get there: a dot-product kernel needs a horizontal sum per output, and LLVM
does not keep an outer-product block in registers when it is written with arrays. So the block is
generated here as LLVM IR (``<L x float>`` vectors, ``llvm.fma``), with the sizes picked for the
machine Numba compiles for:

- 32 vector registers (AVX-512, AArch64): MR = 8 rows × NV = 3 vectors (24 accumulators);
- 16 (AVX2, SSE): MR = 6 × NV = 2 (12 accumulators);

L lanes per vector: 512-, 256- or 128-bit registers (16, 8 or 4 float32; half as many float64). Rows
left over past the last full block of MR run in blocks of 4, then 3 or else 2 and 1 rows, the small
ones with two accumulator sets over even and odd k to hide the FMA latency. (3 rows had run as 2 and
1, each block passing over the panel's chunk: Zen 4, one thread, float32, the product alone against
those blocks in one process, M = 3K, K = 768 / 256, n = 3 1.26× / 1.16×, n = 7 / 11 / 19 1.00–1.03×;
frozen forwards (T, B, I, H) (30, 3, 128, 768) 1.19×, (32, 3, 256, 256) 1.08×, bidirectional
(24, 3, 512, 512) 1.12×; the 3 rows' last bits change, their sums over even and odd k now one.)
Columns past M are never stored (masked stores in the last panel), and a last panel whose columns
fill fewer than NV of its vectors multiplies those alone, summed in the same order (its zero padding
had cost as much as real columns: Zen 4, one thread, one row, K = 256, M = 256 / 240 / 288, µs,
3.09 / 2.50 / 3.67 before, 2.83 / 2.66 / 3.15 after; K = 64, M = 64 0.32 → 0.20; 16 rows, M = 256
22.1 → 19.9). k runs in chunks whose slice of a panel (~24 KB) stays in L1 while every row block
passes over it. Panels start on 64-byte lines: vector loads that straddle two lines ran the one-row
product at half speed.

Measured on the 2-vCPU Intel machine (Emerald Rapids, one thread, float32, per product h @ W.T with
M = 3H, K = H, BLAS pinned to one thread; correctness in tests/test_panel.py): B = 16, H = 256 at
170 GFLOP/s against 69 for Numba's dot-product kernel and 60–79 for OpenBLAS; B = 64, H = 256 168
against 66 and 100–113; B = 1, H = 256 50 against 28 and 22–27. The figures per route are in
:func:`numgru.kernels.forward.use_panels`.

bfloat16 weights (``uint16``, :mod:`numgru.kernels.bf16`) pack into panels of their own, k in pairs
(:func:`pack_panels`); the block loads 2L of them at once and widens them in registers to the two
float32 vectors of a k pair, so the arithmetic is the float32 block's, in the same order: results equal
float32 panels of the widened weights bit for bit. One row, K = 64 / 256: 0.43 / 6.8 µs against 0.51 /
8.0 µs for float32 panels; K = 512 / 1024 (float32 beyond L2): 37 / 286 µs against 111 / 545.

A weight gradient, dW = G.T @ X summed over all T·B rows, runs on the same block with nothing packed
(:func:`gemm_tn`, A.T @ B for two operands with the summed rows first): its rows are one operand's
columns (each value broadcast from its row k), its panels NC-wide strips of the other's columns as they
lie (one vector load per strip row; the last strip's loads masked, so nothing past it is read), and
each k-chunk's sum starts from zero and is added to out, so the error grows with the chunks' count
rather than with T·B. Over many rows the rows are X's columns and the strips G's, writing dW.T a slab
at a time: Zen 4, one thread, T·B = 8192, 768 × 256: 91–102 GFLOP/s against 76–82 for OpenBLAS's sgemm
on the transposed operand (packing G instead first cost 17 ms of copying). Over few rows, where that
transpose would cost more than the products, the rows are G's columns and the strips X's, writing dW
as it lies (:func:`~numgru.kernels.backward.weight_gradient_panels`).
"""
import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._jit import FASTMATH, device, inline, unwrapped


def _shape_for(context, itemsize):
    """(L, MR, NV) for the target Numba compiles for and an element size in bytes."""
    features = getattr(context.codegen(), "_tm_features", "") or ""  # the target's "+avx2,-avx512f,…"
    if "+avx512f" in features:
        bits, regs = 512, 32
    elif "+avx" in features:
        bits, regs = 256, 16
    elif "+neon" in features or ll.get_process_triple().startswith(("aarch64", "arm64")):
        bits, regs = 128, 32
    else:
        bits, regs = 128, 16
    lanes = bits // (8 * itemsize)
    if regs == 32:
        return lanes, 8, 3
    return lanes, 6, 2


def _float_type(t):
    return t in (types.float32, types.float64)


def _wide_size(context, t):
    """Bytes of the float the block computes in for elements of type ``t``: a bfloat16 weight
    (``uint16``) is widened to float32."""
    return 4 if t == types.uint16 else context.get_abi_sizeof(context.get_value_type(t))


@intrinsic
def panel_width(typingctx, x):
    """NC, the width of one panel, for the dtype of the scalar ``x`` on this target (a constant): a
    float, or ``uint16`` for bfloat16 weights (packed as wide as float32's panels)."""
    if not (_float_type(x) or x == types.uint16):
        return None

    def codegen(context, builder, sig, args):
        lanes, _, nv = _shape_for(context, _wide_size(context, sig.args[0]))
        return ir.Constant(cgutils.intp_t, lanes * nv)
    return types.intp(x), codegen


@intrinsic
def panel_block_rows(typingctx, x):
    """MR, the rows of one full register block of the panel product, for the dtype of the scalar ``x``
    on this target (a constant): 8 with 32 vector registers, 6 with 16. :func:`panel_block` over a
    range of rows sums each value as over all rows where the range starts and ends (or ends at the last
    row) on multiples of MR if MR divides :data:`SLAB_ROWS`, else of SLAB_ROWS."""
    if not (_float_type(x) or x == types.uint16):
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(cgutils.intp_t, _shape_for(context, _wide_size(context, sig.args[0]))[1])
    return types.intp(x), codegen


def packed_depth(K, Wp):
    """Rows of k in panels for an inner dimension K: K for float panels, K rounded up to even for
    bfloat16 ones (``uint16``: stored in pairs of k, see :func:`pack_panels`)."""
    return K + K % 2 if Wp.dtype == np.uint16 else K


@overload(packed_depth, jit_options={"fastmath": set(FASTMATH)})
def _ol_packed_depth(K, Wp):
    if Wp.dtype == types.uint16:
        return lambda K, Wp: K + K % 2
    return lambda K, Wp: K


def put_row(panel, c, w):
    """Column c of one panel (Kp, NC) = the row w (K values) of W, in :func:`pack_panels`'s layout:
    panel[k, c] = w[k] for float panels; for bfloat16 ones each k pair's two values side by side."""
    if panel.dtype != np.uint16:
        panel[:w.shape[0], c] = w
        return
    pairs = panel.reshape(-1, panel.shape[1], 2)
    for k in range(w.shape[0]):
        pairs[k // 2, c, k % 2] = w[k]


def _writer(panel):
    """(view, put) for a panel of Numba type ``panel``, inlined into the fills: ``view(panel)`` gives
    what ``put(panel, view, k, c, v)`` writes panel[k, c] = v through — the panel itself (float), or
    its (Kp / 2, NC, 2) view of k pairs (bfloat16): :func:`pack_panels`'s layout as the kernels write
    it (:func:`put_row`'s pure-Python body mirrors it)."""
    if panel.dtype == types.uint16:
        def view(panel):
            return panel.reshape((panel.shape[0] // 2, panel.shape[1], 2))

        def put(panel, pairs, k, c, v):
            pairs[k // 2, c, k % 2] = v
    else:
        def view(panel):
            return panel

        def put(panel, pairs, k, c, v):
            panel[k, c] = v
    return inline(view), inline(put)


@overload(put_row, jit_options={"fastmath": set(FASTMATH)})
def _ol_put_row(panel, c, w):
    view, put = _writer(panel)

    def impl(panel, c, w):
        pairs = view(panel)
        for k in range(w.shape[0]):
            put(panel, pairs, k, c, w[k])
    return impl


def fill_panel(panel, W, j0, m, c_off):
    """Columns c_off … c_off+m−1 of one panel (Kp, NC) = rows j0 … j0+m−1 of W (M, K), in
    :func:`pack_panels`'s layout: in tiles of 16 columns by 16 k, whose reads and writes stay in L1
    (a column at a time wrote a line per k: the panels of W_hh at H = 256 / 1024 took 112 µs /
    6.0 ms against 72 µs / 2.4 ms in blocks, one thread; a forward at B = 1 packs once per call).
    The column route fills each block's gate rows at their own columns (``c_off``). float32 tiles are
    transposed in vector registers (:func:`transpose16`): W_hh's panels at H = 64 / 256 in
    1.9 / 21–24 µs against 3.4 / 44 element by element (one thread). float64 in strips of 8
    columns down all of K, as 8 × 8 blocks (:func:`transpose8`; 2-vCPU AMD EPYC, one thread, µs,
    three runs, medians: 768 × 256 38.6–40.7, 1152 × 384 83–85, 1536 × 512 176–178, 2304 × 768
    934–985, 3072 × 1024 2.05–2.43 ms, against 44–45 / 88–90 / 258–270 / 1065–1189 / 2.50–2.97 ms
    in 16 × 16 tiles of four blocks each, and 89 / 198–200 / 689–697 µs / … / 4.2–4.4 ms element
    by element)."""
    for c in range(m):
        put_row(panel, c_off + c, W[j0 + c])


#: rows and columns of one tile of :func:`fill_panel`
TILE = 16


def _transpose_codegen(n, bits):
    """The codegen of an n × n transpose of ``bits``-wide values in n vectors of n lanes (see
    :func:`transpose16`): log2(n) rounds of shuffles, each swapping one bit of the row index with the
    same bit of the column index."""
    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(bits), n)
        s = context.make_array(sig.args[0])(context, builder, args[0])
        d = context.make_array(sig.args[3])(context, builder, args[3])

        def row_ptr(a, off, stride, k):
            idx = builder.add(off, builder.mul(stride, ir.Constant(off.type, k)))
            return builder.bitcast(builder.gep(a.data, [idx]), vec.as_pointer())

        rows = [builder.load(row_ptr(s, args[1], args[2], k), align=bits // 8) for k in range(n)]
        mask = ir.VectorType(ir.IntType(32), n)
        b = n // 2
        while b:
            lo = ir.Constant(mask, [j if j & b == 0 else n + j - b for j in range(n)])
            hi = ir.Constant(mask, [j + b if j & b == 0 else n + j for j in range(n)])
            out = list(rows)
            for r in range(n):
                if r & b == 0:
                    out[r] = builder.shuffle_vector(rows[r], rows[r + b], lo)
                    out[r + b] = builder.shuffle_vector(rows[r], rows[r + b], hi)
            rows = out
            b //= 2
        for i in range(n):
            builder.store(rows[i], row_ptr(d, args[4], args[5], i), align=bits // 8)
        return context.get_dummy_value()
    return codegen


def _transpose_sig(src, dst, bits):
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype.bitwidth == bits and dst.dtype.bitwidth == bits):
        return None
    return types.none(src, types.intp, types.intp, dst, types.intp, types.intp)


@intrinsic
def transpose16(typingctx, src, s0, s_row, dst, d0, d_row):
    """Transpose a 16 × 16 block of 32-bit values: dst[d0 + i·d_row + k] = src[s0 + k·s_row + i]
    (rows in elements; unchecked: the callers keep every index inside the arrays). Sixteen vectors
    and four rounds of shuffles, each swapping one bit of the row index with the same bit of the
    column index. The AMX kernels turn their operands' pairs with it too."""
    sig = _transpose_sig(src, dst, 32)
    return None if sig is None else (sig, _transpose_codegen(16, 32))


@intrinsic
def transpose8(typingctx, src, s0, s_row, dst, d0, d_row):
    """:func:`transpose16` for an 8 × 8 block of 64-bit values (float64): eight vectors, three rounds."""
    sig = _transpose_sig(src, dst, 64)
    return None if sig is None else (sig, _transpose_codegen(8, 64))


def _overloaded(name, pointee):
    """The name of LLVM intrinsic ``name`` overloaded on a pointer to ``pointee`` (an ir type): with
    opaque pointers (LLVM 17 on, which still reads llvmlite's typed spelling as ``ptr``) ".p0", before
    them ".p0" and the pointee's mangling."""
    if ll.llvm_version_info >= (17,):
        return name + ".p0"
    vector = isinstance(pointee, ir.VectorType)
    scalar = pointee.element if vector else pointee
    return (f"{name}.p0" + (f"v{pointee.count}" if vector else "")
            + ("f32" if isinstance(scalar, ir.FloatType) else f"i{scalar.width}"))


@intrinsic
def prefetch(typingctx, arr, i):
    """Ask for the cache line of arr's element i in memory order (``PREFETCHT0``; a hint: never faults)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        i8 = ir.IntType(8)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _overloaded("llvm.prefetch", i8))
        builder.call(fn, [builder.bitcast(builder.gep(a.data, [args[1]]), i8.as_pointer()),
                          ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(arr, types.intp), codegen


def _tile_filler(panel, W, put):
    """``fill(panel, pairs, W, j0, c0, k0, c_off)``: one full tile of :func:`fill_panel` (rows
    j0+c0 … j0+c0+15 of W by k0 … k0+15, into columns c_off+c0 …), inlined into it: transposed in
    registers for float32 (the panel and W C-contiguous), else element by element through ``put``
    (``_writer``'s)."""
    if panel.dtype == types.float32 and _c_arrays(panel, W):
        def fill(panel, pairs, W, j0, c0, k0, c_off):
            K = W.shape[1]
            NC = panel.shape[1]
            transpose16(W, (j0 + c0) * K + k0, K, panel, k0 * NC + c_off + c0, NC)
        return inline(fill)

    def fill(panel, pairs, W, j0, c0, k0, c_off):
        for kk in range(TILE):
            for cc in range(TILE):
                put(panel, pairs, k0 + kk, c_off + c0 + cc, W[j0 + c0 + cc, k0 + kk])
    return inline(fill)


@overload(fill_panel, jit_options={"fastmath": set(FASTMATH)})
def _ol_fill_panel(panel, W, j0, m, c_off):
    if panel.dtype == types.float64 and _c_arrays(panel, W):
        def octets(panel, W, j0, m, c_off):
            # strips of 8 columns down all of K, 8 × 8 blocks transposed in registers (a strip's 8
            # rows of W read side by side); the columns past the last strip one by one
            K = W.shape[1]
            NC = panel.shape[1]
            K8 = K - K % 8
            c = 0
            while c + 8 <= m:
                for k0 in range(0, K8, 8):
                    transpose8(W, (j0 + c) * K + k0, K, panel, k0 * NC + c_off + c, NC)
                for k in range(K8, K):
                    for cc in range(8):
                        panel[k, c_off + c + cc] = W[j0 + c + cc, k]
                c += 8
            for cc in range(c, m):
                put_row(panel, c_off + cc, W[j0 + cc])
        return octets
    view, put = _writer(panel)
    fill = _tile_filler(panel, W, put)

    def impl(panel, W, j0, m, c_off):
        K = W.shape[1]
        K16 = K - K % TILE
        m16 = m - m % TILE
        pairs = view(panel)  # bfloat16: (Kp / 2, NC, 2), the k pairs
        for c0 in range(0, m16, TILE):
            for k0 in range(0, K16, TILE):
                fill(panel, pairs, W, j0, c0, k0, c_off)
            for k in range(K16, K):
                for cc in range(TILE):
                    put(panel, pairs, k, c_off + c0 + cc, W[j0 + c0 + cc, k])
        for c in range(m16, m):
            put_row(panel, c_off + c, W[j0 + c])
    return impl


@device
def aligned_zeros(size, dtype):
    """A 1-D array of ``size`` zeros of ``dtype`` that starts on a 64-byte boundary."""
    buf = np.zeros(size + 32, dtype)  # 32 values cover 64 bytes for itemsizes ≥ 2
    item = buf.itemsize
    off = ((64 - buf.ctypes.data % 64) % 64) // item
    return buf[off:off + size]


@device
def aligned_empty(size, dtype):
    """:func:`aligned_zeros` without the zeros (uninitialised)."""
    buf = np.empty(size + 32, dtype)
    item = buf.itemsize
    off = ((64 - buf.ctypes.data % 64) % 64) // item
    return buf[off:off + size]


@device
def pack_panels(W):
    """W (M, K) → panels (P, K, NC) of W.T: panels[p, k, c] = W[p·NC + c, k], zeros past row M − 1.

    P = ceil(M / NC), NC = :func:`panel_width` for W's dtype; the panels start on a 64-byte boundary.
    One pass over W. W may be bfloat16 (``uint16``); its panels (P, Kp, NC) are bfloat16 too, as wide
    as float32's, with Kp = K rounded up to even and k taken in pairs: seen as (P, Kp / 2, NC, 2),
    panels[p, q, c, s] = W[p·NC + c, 2q + s]. A vector load of 2L values then holds L columns for
    both k of a pair, and gives their two float32 vectors by a shift and a mask (:func:`_emit_gemm`)."""
    Wp = panels_for(W)
    for p in range(Wp.shape[0]):
        fill_panels_of(Wp, W, p)
    return Wp


@device
def panels_for(W):
    """:func:`pack_panels`' array for W (M, K) before its fill: uninitialised but the values the fill
    does not write (the last panel's columns past M, bfloat16's k pad for K odd), which are zero.
    Each panel p is then filled by :func:`fill_panels_of` (W, p), in any order or side by side."""
    M = W.shape[0]
    K = W.shape[1]
    nc = panel_width(W.dtype.type(0))
    P = (M + nc - 1) // nc
    # 64-byte aligned (a cache line, one 512-bit vector): NumPy aligns to 16 bytes, and vector loads
    # that straddle two lines ran the one-row product at half speed (B = 1, H = 256: 11.7 against 6.7 µs)
    Kp = packed_depth(K, W)
    # not zeroed first, which doubled the writes (one thread, W_hh at H = 64 / 256 / 1024: 3.4 / 56 /
    # 1650 µs with the zeros, 2.8 / 41 / 1100 without): the fill writes every value but the last
    # panel's columns past M and bfloat16's k pad (K odd), which are zeroed here
    Wp = aligned_empty(P * Kp * nc, W.dtype).reshape((P, Kp, nc))
    if P * nc > M:
        Wp[P - 1] = 0
    if Kp > K:
        for p in range(P):
            Wp[p, Kp - 2:] = 0
    return Wp


@device
def fill_panels_of(Wp, W, p):
    """Panel p of :func:`panels_for` (W)'s array: rows p·NC … of W, transposed."""
    nc = Wp.shape[2]
    j0 = p * nc
    fill_panel(Wp[p], W, j0, min(W.shape[0], j0 + nc) - j0, 0)


@device
def fill_panel_from(panel, W, j0):
    """One panel (K, NC) of :func:`pack_panels`' layout = rows j0 … j0+NC−1 of float W (M, K)
    transposed, zeros past row M − 1 (a panel packed apart, into a caller's slot)."""
    nc = panel.shape[1]
    m = min(W.shape[0], j0 + nc) - j0
    fill_panel(panel, W, j0, m, 0)
    if m < nc:
        panel[:, m:] = 0


@device
def panel_slots(buf, n, K):
    """n panels (n, K, NC) of buf's dtype on ``buf`` (1-D, at least n·K·NC values past its first
    64-byte line: a caller's scratch), uninitialised: slots that :func:`fill_panel_from` fills."""
    nc = panel_width(buf.dtype.type(0))
    return _buffer_run(buf, n * K * nc).reshape((n, K, nc))


@device
def _buffer_run(buf, n):
    """n values of ``buf`` (1-D) from its first 64-byte line: where the packings into a caller's scratch
    write their panels. ValueError ("buf too small") where buf holds fewer."""
    off = ((64 - buf.ctypes.data % 64) % 64) // buf.itemsize
    if buf.shape[0] < off + n:
        raise ValueError("panels: buf too small")
    return buf[off:off + n]


@device
def pack_panels_of_transpose(W, buf):
    """:func:`pack_panels` (W.T) for W (K, M) C-contiguous, float, written into ``buf`` (1-D, W's
    dtype, at least (M + 48)·K values past its first 64-byte line, panels at most 48 wide: a caller's
    scratch, whose pages are already mapped, where
    fresh panels faulted theirs in on every call) and returned as its view: panels (P, K, NC) from a
    64-byte line, panels[p, k, c] = W[k, p·NC + c], zeros past column M − 1. Each panel row is a run
    of W's row k, so this copies runs where packing a transposed copy would first have transposed W
    (W_ih (768, 512), the input gradient's weights at H = 256, one thread: 0.96 ms for the copy and
    its packing, 0.18 now)."""
    K = W.shape[0]
    M = W.shape[1]
    nc = panel_width(W.dtype.type(0))
    P = (M + nc - 1) // nc
    flat = _buffer_run(buf, P * K * nc)
    for k in range(K):  # W's rows in order, each dealt out to the panels (element loops: a slice
        for j in range(M):  # assignment a run cost more than the run)
            flat[unwrapped(((j // nc) * K + k) * nc + j % nc)] = W[k, j]
        for j in range(M, P * nc):
            flat[unwrapped(((j // nc) * K + k) * nc + j % nc)] = 0
    return flat.reshape((P, K, nc))


@device
def panels_in(W, buf):
    """:func:`panels_for` (W)'s array for float W (M, K) on ``buf`` (1-D, W's dtype, at least
    (M + 48)·K values past its first 64-byte line: a caller's scratch, whose pages are already
    mapped), as its view (P, K, NC) from that line, before its fill (:func:`fill_panels_of`)."""
    M = W.shape[0]
    K = W.shape[1]
    nc = panel_width(W.dtype.type(0))
    P = (M + nc - 1) // nc
    Wp = _buffer_run(buf, P * K * nc).reshape((P, K, nc))
    if P * nc > M:
        Wp[P - 1] = 0
    return Wp


@device
def pack_panels_into(W, buf):
    """:func:`pack_panels` (W) for float W (M, K) C-contiguous, written into ``buf`` (as
    :func:`panels_in` takes it) and returned as its view (P, K, NC) from its first 64-byte line."""
    Wp = panels_in(W, buf)
    for p in range(Wp.shape[0]):
        fill_panels_of(Wp, W, p)
    return Wp


def _splat(builder, x, ty):
    """A vector of type ``ty`` with x in every lane."""
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(ty, ir.Undefined), ir.Constant(ir.VectorType(i32, ty.count), None))


def _vector_calls(builder, fty, L):
    """``(vty, fma, mload, mstore)`` for vectors of L values of the float type ``fty``: the vector type
    and LLVM's fused multiply-add, masked load (pointer, alignment, mask, pass-through) and masked
    store (value, pointer, alignment, mask) declared in the builder's module."""
    vty = ir.VectorType(fty, L)
    vptr_t = vty.as_pointer()
    i32 = ir.IntType(32)
    mask_t = ir.VectorType(ir.IntType(1), L)
    suffix = "f32" if isinstance(fty, ir.FloatType) else "f64"
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma.v%d%s" % (L, suffix))
    mload = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vptr_t, i32, mask_t, vty]),
        _overloaded("llvm.masked.load.v%d%s" % (L, suffix), vty))
    mstore = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vty, vptr_t, i32, mask_t]),
        _overloaded("llvm.masked.store.v%d%s" % (L, suffix), vty))
    return vty, fma, mload, mstore


def _emit_gemm(context, builder, fty, a_ptr, lda, b_ptr, P, o_ptr, ldo, n, M, K, Kp, mc, accumulate, bf16,
               ak=None, ldw=None):
    """Emit out[i, j] (+)= Σ_k A[i, k] · W[j, k] for i < n, j < M, with every size and stride in elements
    (intp values):

    - A[i, k] at ``a_ptr[i·lda + k]``;
    - W's rows in P packed panels of NC (:func:`pack_panels`) of Kp rows: W[p·NC + c, k] at
      ``b_ptr[(p·Kp + k)·NC + c]`` (Kp = K), or for bfloat16 panels (Kp = K rounded up to even) at
      ``b_ptr[p·Kp·NC + (k − k mod 2)·NC + 2c + k mod 2]``;
    - out[i, j] at ``o_ptr[i·ldo + j]``; ``accumulate`` (i1) adds to what out holds instead of writing;
    - ``bf16`` (a Python bool): the panels hold bfloat16 values (``b_ptr`` an i16 pointer; fty float32)
      in k pairs: each load of 2L values is widened in registers to the vectors of k (the low halves,
      shifted up) and k + 1 (the high halves, masked): one integer operation per float32 vector.
    - ``ak`` and ``ldw`` (intp values, both or neither; float only): operands as they lie, not
      packed — A[i, k] at ``a_ptr[i·lda + k·ak]`` and W[j, k] at ``b_ptr[k·ldw + j]`` (W.T row-major,
      its panels NC-wide column strips of it, P = ceil(M / NC)); the last strip's loads past
      column M − 1 are masked, so nothing outside the operands is read (:func:`gemm_tn`).

    Rows run in slabs of ``mc``, then k in chunks (a panel's chunk stays in L1), then the panels, then
    blocks of MR rows: a slab's share of A stays in L1/L2 while all panels pass over it.
    """
    intp = cgutils.intp_t
    size = context.get_abi_sizeof(fty)
    L, MR, NV = _shape_for(context, size)
    NC = L * NV
    unpacked = ldw is not None
    if unpacked:
        P = builder.sdiv(builder.add(M, ir.Constant(intp, NC - 1)), ir.Constant(intp, NC))
    else:
        ak, ldw = ir.Constant(intp, 1), ir.Constant(intp, NC)
    vty, fma, mload, mstore = _vector_calls(builder, fty, L)
    vptr_t = vty.as_pointer()
    i32 = ir.IntType(32)

    def const(v):
        return ir.Constant(intp, v)

    zero = ir.Constant(vty, None)
    vint = ir.VectorType(intp, L)
    lane_ids = ir.Constant(vint, list(range(L)))
    # accumulators: allocas in the entry block, which LLVM promotes to registers
    accs = [[[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(MR)] for _ in range(2)]

    if bf16:
        pty = ir.VectorType(i32, L)  # 2L bfloat16 values: (k, k + 1) per 32-bit lane
        sixteen = ir.Constant(pty, [16] * L)
        high = ir.Constant(pty, [-65536] * L)  # 0xFFFF0000

        def pair_load(ptr):
            """(vector of k, vector of k + 1) from the 2L interleaved values at ptr."""
            d = builder.load(builder.bitcast(ptr, pty.as_pointer()), align=4)
            return builder.bitcast(builder.shl(d, sixteen), vty), builder.bitcast(builder.and_(d, high), vty)

    def splat(x, ty):
        return _splat(builder, x, ty)

    def vec_mask(j):
        """Lanes of the vector at column j that lie inside out (j ≥ 0)."""
        cols = builder.add(lane_ids, splat(j, vint))
        return builder.icmp_signed("<", cols, splat(M, vint))

    def block(wbase, j0, i0, mr, k0, k1, first, nv=NV):
        """Columns j0 … j0+NC−1 of rows i0 … i0+mr−1 of out, over k0 ≤ k < k1 (panel at wbase):
        written when ``first``, else added to what out holds. ``nv`` < NV: only the panel's first nv
        vectors, for a last panel whose columns past M − 1 fill the rest (see the panel loop), summed
        as the whole panel's (the accumulator sets by mr and NV), so its values do not change."""
        sets = 2 if mr * NV < 8 else 1
        # a narrow panel is never whole: its whole-panel branches are not emitted (LLVM drops them)
        full = builder.icmp_signed("<=", builder.add(j0, const(NC)), M) if nv == NV else \
            ir.Constant(ir.IntType(1), 0)
        optrs = [[builder.bitcast(builder.gep(o_ptr, [builder.add(
            builder.add(builder.mul(builder.add(i0, const(r)), ldo), j0), const(v * L))]), vptr_t)
            for v in range(nv)] for r in range(mr)]
        for s in range(sets):
            for r in range(mr):
                for v in range(nv):
                    builder.store(zero, accs[s][r][v])

        def take_out(add):
            """accs[0] = what out holds (``add``: accs[0] += it), unless ``first``."""
            with cgutils.if_unlikely(builder, builder.not_(first)):
                with builder.if_else(full, likely=True) as (whole, part):
                    with whole:
                        for r in range(mr):
                            for v in range(nv):
                                o = builder.load(optrs[r][v], align=size)
                                a = accs[0][r][v]
                                builder.store(builder.fadd(builder.load(a), o) if add else o, a)
                    with part:
                        for v in range(nv):
                            mask = vec_mask(builder.add(j0, const(v * L)))
                            for r in range(mr):
                                o = builder.call(mload, [optrs[r][v], ir.Constant(i32, size), mask, zero])
                                a = accs[0][r][v]
                                builder.store(builder.fadd(builder.load(a), o) if add else o, a)

        # packed: out's values start the sums, a running sum over k; unpacked (sums over the long k of
        # a weight gradient): each chunk's sum from zero, then added to out — the error grows with the
        # chunks' count rather than with K (K = 8192: mean error 2.9e-5 against 1.0e-4)
        if not unpacked:
            take_out(False)
        arows = [builder.mul(builder.add(i0, const(r)), lda) for r in range(mr)]

        def fmas(k, s, ws):
            ka = builder.mul(k, ak)
            for r in range(mr):
                b = splat(builder.load(builder.gep(a_ptr, [builder.add(arows[r], ka)])), vty)
                for v in range(nv):
                    acc = accs[s][r][v]
                    builder.store(builder.call(fma, [b, ws[v], builder.load(acc)]), acc)

        def kstep(k, s, masks=None):
            wrow = builder.gep(wbase, [builder.mul(k, ldw)])
            ptrs = [builder.bitcast(builder.gep(wrow, [const(v * L)]), vptr_t) for v in range(nv)]
            if masks is None:
                ws = [builder.load(q, align=size) for q in ptrs]
            else:
                ws = [builder.call(mload, [q, ir.Constant(i32, size), m, zero]) for q, m in zip(ptrs, masks)]
            fmas(k, s, ws)

        def kloop(masks):
            if sets == 2:  # two accumulator sets (even and odd k) hide the FMA latency of small blocks
                k2 = builder.sub(k1, builder.srem(builder.sub(k1, k0), const(2)))
                with cgutils.for_range_slice(builder, k0, k2, const(2), intp) as (k, _):
                    kstep(k, 0, masks)
                    kstep(builder.add(k, const(1)), 1, masks)
                with cgutils.if_unlikely(builder, builder.icmp_signed("<", k2, k1)):
                    kstep(k2, 0, masks)
            else:
                with cgutils.for_range_slice(builder, k0, k1, const(1), intp) as (k, _):
                    kstep(k, 0, masks)

        def kpair(k, last):
            """k (even) and k + 1 from their interleaved row pair; only k when ``last`` (K odd)."""
            wrow = builder.gep(wbase, [builder.mul(k, const(NC))])
            ws = [pair_load(builder.gep(wrow, [const(2 * v * L)])) for v in range(nv)]
            fmas(k, 0, [w[0] for w in ws])
            if not last:
                fmas(builder.add(k, const(1)), sets - 1, [w[1] for w in ws])

        if bf16:  # k0 is even (chunks of KC, an even number); K odd leaves one row
            k2 = builder.sub(k1, builder.srem(builder.sub(k1, k0), const(2)))
            with cgutils.for_range_slice(builder, k0, k2, const(2), intp) as (k, _):
                kpair(k, False)
            with cgutils.if_unlikely(builder, builder.icmp_signed("<", k2, k1)):
                kpair(k2, True)
        elif unpacked:  # the last strip's loads past column M − 1 masked: W ends there
            with builder.if_else(full, likely=True) as (whole, part):
                with whole:
                    kloop(None)
                with part:
                    kloop([vec_mask(builder.add(j0, const(v * L))) for v in range(nv)])
        else:
            kloop(None)
        if unpacked:
            take_out(True)
        vals = [[builder.load(accs[0][r][v]) for v in range(nv)] for r in range(mr)]
        if sets == 2:
            vals = [[builder.fadd(vals[r][v], builder.load(accs[1][r][v])) for v in range(nv)]
                    for r in range(mr)]
        with builder.if_else(full, likely=True) as (whole, part):
            with whole:
                for r in range(mr):
                    for v in range(nv):
                        builder.store(vals[r][v], optrs[r][v], align=size)
            with part:  # the last panel, past column M − 1
                for v in range(nv):
                    mask = vec_mask(builder.add(j0, const(v * L)))
                    for r in range(mr):
                        builder.call(mstore, [vals[r][v], optrs[r][v], ir.Constant(i32, size), mask])

    # k in chunks of KC, so that each panel's chunk (KC × NC values, ~24 KB) stays in L1 while the row
    # blocks of a slab pass over it; out is written by the first chunk (unless ``accumulate``) and added
    # to by the others
    KC = max(16, (24576 // (NC * size)) // 2 * 2)
    panel_len = const(NC) if unpacked else builder.mul(Kp, const(NC))
    with cgutils.for_range_slice(builder, const(0), n, mc, intp) as (s0, _):
        s1 = builder.select(builder.icmp_signed("<", builder.add(s0, mc), n), builder.add(s0, mc), n)
        rows = builder.sub(s1, s0)
        rem = builder.srem(rows, const(MR))
        s_full = builder.sub(s1, rem)
        with cgutils.for_range_slice(builder, const(0), K, const(KC), intp) as (k0, _):
            k1 = builder.select(builder.icmp_signed("<", builder.add(k0, const(KC)), K),
                                builder.add(k0, const(KC)), K)
            first = builder.and_(builder.icmp_signed("==", k0, const(0)), builder.not_(accumulate))
            with cgutils.for_range(builder, P, intp=intp) as ploop:
                p = ploop.index
                wbase = builder.gep(b_ptr, [builder.mul(p, panel_len)])
                j0 = builder.mul(p, const(NC))

                def row_blocks(nv):
                    with cgutils.for_range_slice(builder, s0, s_full, const(MR), intp) as (i0, _):
                        block(wbase, j0, i0, MR, k0, k1, first, nv)
                    # the rows left over (fewer than MR) in blocks of 4, then 3 or else 2 and 1 rows:
                    # few block variants to compile, whatever MR is. A block of 3 rather than 2 and 1
                    # reads the panel's chunk once: B = 3 had run slower on the panels than the
                    # dot-product block on W as it lies (:mod:`~numgru.kernels.dotblock`)
                    i0 = s_full
                    if MR > 4:
                        take = builder.icmp_signed("!=", builder.and_(rem, const(4)), const(0))
                        with builder.if_then(take):
                            block(wbase, j0, i0, 4, k0, k1, first, nv)
                        i0 = builder.select(take, builder.add(i0, const(4)), i0)
                    low = builder.and_(rem, const(3))
                    with builder.if_else(builder.icmp_signed("==", low, const(3))) as (three, fewer):
                        with three:
                            if MR > 3:
                                block(wbase, j0, i0, 3, k0, k1, first, nv)
                        with fewer:
                            for mr in (2, 1):
                                if mr >= MR:
                                    continue
                                take = builder.icmp_signed("!=", builder.and_(low, const(mr)), const(0))
                                with builder.if_then(take):
                                    block(wbase, j0, i0, mr, k0, k1, first, nv)
                                i0 = builder.select(take, builder.add(i0, const(mr)), i0)

                # a last panel whose columns from j0 fill only nv < NV of its vectors multiplies
                # those alone: its padding (zeros, or nothing for operands as they lie) had cost as
                # much as whole vectors (one row, K = 256, M = 256: 3.09 µs against 2.50 for
                # M = 240, five whole panels)
                by_vectors_filled(builder, builder.sub(M, j0), L, NV, row_blocks)


def by_vectors_filled(builder, left, L, NV, emit):
    """Emit ``emit(nv)`` for the vectors of a panel (NV of L lanes) that ``left`` columns (an intp
    value) fill: NV where more than NV − 1 vectors' worth remain, else the nv < NV they fill (the
    last panel of a matrix whose columns end inside it); each nv in a branch of its own."""
    intp = cgutils.intp_t
    with builder.if_else(builder.icmp_signed(">", left, ir.Constant(intp, (NV - 1) * L)),
                         likely=True) as (wide, narrow):
        with wide:
            emit(NV)
        with narrow:
            for nv in range(1, NV):
                fits = builder.icmp_signed("<=", left, ir.Constant(intp, nv * L))
                if nv > 1:
                    fits = builder.and_(fits, builder.icmp_signed(">", left, ir.Constant(intp, (nv - 1) * L)))
                with builder.if_then(fits):
                    emit(nv)


def _c_arrays(*arrays):
    return all(isinstance(a, types.Array) and a.layout == "C" and _float_type(a.dtype) for a in arrays) \
        and len({a.dtype for a in arrays}) == 1


def _panel_operands(a, Wp, out):
    """Whether ``a`` and ``out`` are C-contiguous arrays of one float dtype and ``Wp`` C-contiguous
    panels of that dtype or, with float32, of bfloat16 (``uint16``)."""
    if not _c_arrays(a, out) or not (isinstance(Wp, types.Array) and Wp.layout == "C"):
        return False
    return Wp.dtype == a.dtype or Wp.dtype == types.uint16 and a.dtype == types.float32


@intrinsic
def _block_gemm(typingctx, a, a0, Wp, p0, p1, out, o0, m, n, accumulate, mc):
    """out.flat[o0 + r·ldo + j] (+)= Σ_k A[r, k] · Wp[p0 + j // NC, k, j % NC] for rows r < n and
    columns j < min(m, (p1 − p0)·NC): panels p0 … p1−1 of Wp = pack_panels(W) (P, Kp, NC), A's row r
    at a.flat[a0 + r·lda] (lda, ldo: the row strides of a and out), K = a.shape[1]; ``accumulate``
    adds to out; rows in slabs of ``mc`` (see :func:`panel_matmul` and :func:`panel_block`, which
    check the bounds). Wp may hold bfloat16 values (``uint16``) for float32 a and out."""
    if not _panel_operands(a, Wp, out) or a.ndim != 2 or Wp.ndim != 3 or out.ndim != 2:
        return None
    if not all(isinstance(x, types.Integer) for x in (a0, p0, p1, o0, m, n, mc)):
        return None
    if not isinstance(accumulate, types.Boolean):
        return None
    sig = types.void(a, types.intp, Wp, types.intp, types.intp, out, types.intp, types.intp, types.intp,
                     types.boolean, types.intp)

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(sig.args[0].dtype)
        A = context.make_array(sig.args[0])(context, builder, args[0])
        Wa = context.make_array(sig.args[2])(context, builder, args[2])
        O = context.make_array(sig.args[5])(context, builder, args[5])
        a0, _, p0, p1, _, o0, M, n, acc, mc = args[1:]
        _, Kp, NC = cgutils.unpack_tuple(builder, Wa.shape, 3)
        K = cgutils.unpack_tuple(builder, A.shape, 2)[1]
        size = ir.Constant(cgutils.intp_t, context.get_abi_sizeof(fty))
        lda = builder.sdiv(cgutils.unpack_tuple(builder, A.strides, 2)[0], size)
        ldo = builder.sdiv(cgutils.unpack_tuple(builder, O.strides, 2)[0], size)
        a_ptr = builder.gep(A.data, [a0])
        o_ptr = builder.gep(O.data, [o0])
        b_ptr = builder.gep(Wa.data, [builder.mul(builder.mul(p0, NC), Kp)])
        _emit_gemm(context, builder, fty, a_ptr, lda, b_ptr, builder.sub(p1, p0), o_ptr, ldo, n, M, K, Kp,
                   mc, acc, sig.args[2].dtype == types.uint16)
        return context.get_dummy_value()
    return sig, codegen


@device
def panel_matmul(h, Wp, out, n):
    """out[:n] = h[:n] @ W.T with Wp = :func:`pack_panels` (W) for W (M, K).

    h (≥ n, K), Wp (P, Kp, NC), out (≥ n, M) C-contiguous, one float dtype (or float32 h and out with
    bfloat16 panels, ``uint16``), M ≤ P·NC, Kp = :func:`packed_depth` (K, Wp). Rows of out past
    n − 1 are not touched. The shapes are checked here: the block reads raw pointers."""
    if n > h.shape[0] or n > out.shape[0] or Wp.shape[1] != packed_depth(h.shape[1], Wp) or \
            out.shape[1] > Wp.shape[0] * Wp.shape[2] or Wp.shape[2] != panel_width(h.dtype.type(0)):
        raise ValueError("panel_matmul: shapes do not match")
    _block_gemm(h, 0, Wp, 0, Wp.shape[0], out, 0, out.shape[1], n, False, max(n, 1))


#: rows per slab in :func:`panel_block`: a slab's rows of x stay in L1 while every panel passes over them
#: (x @ W.T for 8192 × 256 by 768, one thread: 150–154 GFLOP/s for slabs of 8–64 rows, 99–139 for
#: 128–8192 rows in one pass)
SLAB_ROWS = 32
#: weights of at least this many bytes (beyond L2, much of L3) whose product over few rows
#: :func:`~numgru.kernels.forward.input_projection_parallel` splits by ranges of panels, ``WIDE_GROUP``
#: panels at a time
WIDE_PANELS_BYTES = 1 << 22
WIDE_GROUP = 4


@device
def panel_rows(x, Wp, bias, use_bias, out, r0, r1):
    """out[r0:r1] = x[r0:r1] @ W.T (+ bias) with Wp = :func:`pack_panels` (W): the input projection
    (:func:`panel_block` over all of W's panels: out's M columns no more than theirs)."""
    if out.shape[1] > Wp.shape[0] * Wp.shape[2]:
        raise ValueError("panel_rows: shapes do not match")
    panel_block(x, Wp, 0, Wp.shape[0], 0, bias, use_bias, out, r0, r1)


@device
def panel_block(x, Wp, p0, p1, col, bias, use_bias, out, r0, r1):
    """out[r0:r1, col:c1] = x[r0:r1] @ W[col:c1].T (+ bias[col:c1]), c1 = min(M, col + (p1 − p0)·NC),
    where panels p0 … p1−1 of Wp hold W's rows col … c1−1 (:func:`pack_panels` (W) and col = p0·NC; or
    panels packed apart, as :func:`fill_panel` packs W's rows from col).

    x (N, K), Wp (P, K, NC), bias (M,), out (N, M) C-contiguous, one float dtype, 0 ≤ r0 ≤ r1 ≤ N,
    0 ≤ p0 ≤ p1 ≤ P, 0 ≤ col. In slabs of :data:`SLAB_ROWS` rows, each slab's bias written first and
    the product added while the slab is in cache. Each value of out is summed in the block's order (k
    in its chunks) whatever the panels, so where MR is 8 (AVX-512) ranges of rows starting on
    multiples of 8 (:func:`panel_block_rows`), or ranges of panels, on several threads give one call's
    values. (Slabs of 256 rows passed over groups of four panels, so that W would stream from memory
    once per 256 rows, ran the one-thread float32 projection slower where W fits L3: 2-vCPU AMD EPYC,
    I = 768, N = 256 / 1024 / 8192, 92–98 / 99–100 / 102–103 GFLOP/s against 76–82 / 88–93 / 84–90:
    x's rows then broadcast from L2, not L1.)"""
    K = x.shape[1]
    M = out.shape[1]
    NC = Wp.shape[2]
    if r0 < 0 or r1 < r0 or r1 > x.shape[0] or r1 > out.shape[0] or Wp.shape[1] != packed_depth(K, Wp) or \
            NC != panel_width(x.dtype.type(0)) or p0 < 0 or p1 < p0 or p1 > Wp.shape[0] or col < 0 or \
            (use_bias and bias.shape[0] < M):
        raise ValueError("panel_block: shapes do not match")
    if r1 == r0 or min(M, col + (p1 - p0) * NC) <= col:
        return
    ldo = out.shape[1]
    j1 = min(M, col + (p1 - p0) * NC)
    for s0 in range(r0, r1, SLAB_ROWS):
        s1 = min(r1, s0 + SLAB_ROWS)
        if use_bias:
            for i in range(s0, s1):
                row = out[i]
                for j in range(col, j1):
                    row[j] = bias[j]
        if K == 0:
            if not use_bias:
                for i in range(s0, s1):
                    out[i, col:j1] = 0
            continue
        _block_gemm(x, s0 * K, Wp, p0, p1, out, s0 * ldo + col, M - col, s1 - s0, use_bias, SLAB_ROWS)


#: rows of out per slab in :func:`gemm_tn` (a's columns): a slab's k chunk of a stays in L2 while the
#: strips of b pass over it (N = 8192, M = 768, I = 256, one thread: 99 GFLOP/s for 256 and for
#: chunks of 64 k, 83 for slabs of 128)
TN_SLAB = 256


@intrinsic
def _block_gemm_tn(typingctx, a, b, ca, na, cb, nb, out, oi, oj):
    """out[oi + i, oj + j] = Σ_k a[k, ca + i] · b[k, cb + j] for i < na, j < nb: the operands read
    where they lie (:func:`_emit_gemm`'s ``ak``/``ldw``), a (N, ·) and b (N, ·) C-contiguous (see
    :func:`gemm_tn`, which checks the bounds)."""
    if not _c_arrays(a, b, out) or a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        return None
    if not all(isinstance(v, types.Integer) for v in (ca, na, cb, nb, oi, oj)):
        return None
    sig = types.void(a, b, types.intp, types.intp, types.intp, types.intp, out, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(sig.args[0].dtype)
        A = context.make_array(sig.args[0])(context, builder, args[0])
        Bm = context.make_array(sig.args[1])(context, builder, args[1])
        O = context.make_array(sig.args[6])(context, builder, args[6])
        ca, na, cb, nb, _, oi, oj = args[2:]
        N, lda = cgutils.unpack_tuple(builder, A.shape, 2)
        ldb = cgutils.unpack_tuple(builder, Bm.shape, 2)[1]
        ldo = cgutils.unpack_tuple(builder, O.shape, 2)[1]
        one = ir.Constant(cgutils.intp_t, 1)
        o_ptr = builder.gep(O.data, [builder.add(builder.mul(oi, ldo), oj)])
        _emit_gemm(context, builder, fty, builder.gep(A.data, [ca]), one, builder.gep(Bm.data, [cb]), None,
                   o_ptr, ldo, na, nb, N, N, ir.Constant(cgutils.intp_t, TN_SLAB), ir.Constant(ir.IntType(1), 0),
                   False, ak=lda, ldw=ldb)
        return context.get_dummy_value()
    return sig, codegen


@device
def gemm_tn(a, b, ca, na, cb, nb, out, oi, oj):
    """out[oi:oi + na, oj:oj + nb] = a[:, ca:ca + na].T @ b[:, cb:cb + nb], with no operand copied: a
    weight gradient's block, the gate gradients' columns by the inputs' (or a block of its transpose).

    a (N, ·), b (N, ·), out C-contiguous, one float dtype. The sum over the N rows runs in chunks of k
    (:func:`_emit_gemm`'s KC), each chunk's from zero then added: the order depends on N only, never
    on how rows or columns are split."""
    N = a.shape[0]
    if b.shape[0] != N or ca < 0 or na < 0 or ca + na > a.shape[1] or cb < 0 or nb < 0 or \
            cb + nb > b.shape[1] or oi < 0 or oj < 0 or oi + na > out.shape[0] or oj + nb > out.shape[1]:
        raise ValueError("gemm_tn: shapes do not match")
    if N == 0:
        for i in range(oi, oi + na):
            out[i, oj:oj + nb] = 0
        return
    if na > 0 and nb > 0:
        _block_gemm_tn(a, b, ca, na, cb, nb, out, oi, oj)



@intrinsic
def _block_gemm_nn(typingctx, a, b, c0, c1, out):
    """out[i, j] = Σ_k a[i, k] · b[k, j] for every row i of a and c0 ≤ j < c1: the operands read where
    they lie (:func:`_emit_gemm`'s ``ak``/``ldw``), a (n, K), b (K, M) and out (n, M) C-contiguous (see
    :func:`gemm_nn`, which checks the bounds)."""
    if not _c_arrays(a, b, out) or a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        return None
    if not all(isinstance(v, types.Integer) for v in (c0, c1)):
        return None
    sig = types.void(a, b, types.intp, types.intp, out)

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(sig.args[0].dtype)
        A = context.make_array(sig.args[0])(context, builder, args[0])
        Bm = context.make_array(sig.args[1])(context, builder, args[1])
        O = context.make_array(sig.args[4])(context, builder, args[4])
        c0, c1 = args[2], args[3]
        n, K = cgutils.unpack_tuple(builder, A.shape, 2)
        ldb = cgutils.unpack_tuple(builder, Bm.shape, 2)[1]
        ldo = cgutils.unpack_tuple(builder, O.shape, 2)[1]
        one = ir.Constant(cgutils.intp_t, 1)
        _emit_gemm(context, builder, fty, A.data, K, builder.gep(Bm.data, [c0]), None, builder.gep(O.data, [c0]),
                   ldo, n, builder.sub(c1, c0), K, K, ir.Constant(cgutils.intp_t, TN_SLAB),
                   ir.Constant(ir.IntType(1), 0), False, ak=one, ldw=ldb)
        return context.get_dummy_value()
    return sig, codegen


@device
def gemm_nn(a, b, out, c0, c1):
    """out[:, c0:c1] = a @ b[:, c0:c1], with no operand copied or packed: the block's rows are a's, its
    strips b's columns as they lie (one vector load per strip row), as :func:`gemm_tn` reads them; dx
    = dG @ W_ih, the gate gradients by the weights as they lie, where packing W_ih's transpose cost
    more than it saved.

    a (n, K), b (K, M), out (n, M) C-contiguous, one float dtype. The sum over K runs in chunks of k,
    each chunk's from zero then added: the order depends on K only, never on how rows or columns are
    split."""
    n = a.shape[0]
    K = a.shape[1]
    if b.shape[0] != K or out.shape[0] != n or out.shape[1] != b.shape[1] or c0 < 0 or c1 < c0 or \
            c1 > b.shape[1]:
        raise ValueError("gemm_nn: shapes do not match")
    if K == 0:
        for i in range(n):
            out[i, c0:c1] = 0
        return
    if n > 0 and c1 > c0:
        _block_gemm_nn(a, b, c0, c1, out)
