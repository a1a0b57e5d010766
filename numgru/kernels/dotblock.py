"""A register-blocked matmul on unpacked weights, x @ W.T by dot products: a step's product when the
weights are read live.

A float model's steps (GRUCell, streams) multiply a few rows by weights that optimizers and
``load_state_dict`` change in place, so they cannot keep packed panels (:mod:`~numgru.kernels.panel`)
from one call to the next, and packing per step costs more than the product. This kernel reads W
(M, K) as it lies, row by row, like a dot-product kernel, but keeps a block of ``MR`` rows of x by
``NR`` rows of W in vector registers: each accumulator holds L partial sums over k (L lanes per vector),
one load of x and one of W feed NR and MR fused multiply-adds. A plain dot-product kernel then needs a
horizontal sum per output; here the block has MR·NR = L accumulators, and one tree of shuffles and adds
(L − 1 pairwise steps, each halving the lanes per accumulator) turns all of them into one vector whose
lane r·NR + c is the sum for output (r, c) — about three instructions per output instead of
log2(L) + 1 shuffles and adds each. LLVM's vectoriser does neither (:func:`small_rows_matmul
<numgru.kernels.forward.small_rows_matmul>`, its best arrangement of Numba loops, sums each of its
eight accumulators on its own), so the block is written as LLVM IR, like the panel block.

Blocking: rows of x in groups of :data:`GROUP_ROWS`; for each block of NR rows of W, k in chunks whose
share of the group's rows (:data:`CHUNK_BYTES`) stays in L1 while the W rows' chunk passes over every
block of the group, so W is read once per group from wherever it lies (L2 up to H ≈ 256 in float32) and
x from L1. A chunk after the first adds its sums to the output. Rows of W past M − 1 and rows of x past
n − 1 are clamped to the last one (computed, not stored), columns past M masked at the store, k past K
masked at the load. Vector loads that straddle two 64-byte lines ran the block at 55–75 % of its speed,
and NumPy aligns arrays to 16 bytes only: the block first runs a masked step up to W's first line
(when all W's rows start alike), and :func:`dot_rows` copies x to line up with W when it does not.

Sizes: blocks of MR = 4 rows by NR = L / 4 (4 + NR loads per L multiply-adds), or MR = 2 by L / 2 for
one or two rows, which would leave half a block of 4 idle; L accumulators (AVX-512: 16 of 16 float32 or
8 of 8 float64) fit every target's registers. With 16 lanes, blocks of MR = 3 rows by NR = 5 or of 5 by
3 (15 accumulators, the tree summing a zero vector in the sixteenth) where blocks of 4 would leave more
rows past the end of a group (:func:`_block_rows`): a row past n − 1 is clamped to the last, so its
multiply-adds are spent and its sums thrown away, and 3 rows in blocks of 4 had cost what 4 do, 5 rows
what 8 do. Same sums, the same bits: each output's vector of partial sums is built as in a block of 4
and reduced by the same tree. 2-vCPU AMD EPYC (Zen 4), one thread, float32, the product alone in one
process taking turns with blocks of 4 alone: M = 2304, K = 768 (W from L3), n = 3 / 6 / 9 / 13
1.22–1.34× / 1.25× / 1.30× / 1.18× (blocks of 3); M = 1920, K = 640, n = 3 / 5 / 6 / 10 1.27× / 1.54× /
1.31× / 1.21×; M = 768, K = 256, n = 3 / 5 / 10 1.18× / 1.46× / 1.14×; n = 15 / 25 / 29 1.00–1.04×, the
other row counts level (0.97–1.04 over repeated runs). With 8 lanes (float64 on AVX-512, float32 on
AVX2) blocks of 3 rows by 2 (6 of the 8 accumulators, chains enough for Zen 4's one 512-bit
multiply-add a cycle; not measured on Intel's two FMA ports, which 6 chains would keep three-quarters
busy, about what blocks of 4 computing a clamped row do), not of 5 by 1 (6 loads per 5
multiply-adds): float64, M = 768, K = 256, n = 3 / 5 / 6 / 9 1.17× / 1.24× /
1.23× / 1.23×; M = 1152, K = 384, n = 3 / 6 / 9 1.19× / 1.27× / 1.22×; other row counts 0.97–1.03×.

Measured per product on the 2-vCPU Intel machine (Emerald Rapids, one thread, float32, M = 3K, against
:func:`~numgru.kernels.forward.small_rows_matmul`, whole or in tiles as the shape took it; GFLOP/s):
K = 256, n = 2 / 4 / 8 / 16 / 32 67–96 / 80–118 / 102–123 / 121–137 / 105–121 against 28–34 / 53–71 /
59–89 / 62–91 / 74–95; K = 64, n = 4–32 36–86 against 34–62; K = 1024 (W from L3), n = 2 / 8 / 16 25–30 /
68–85 / 72–98 against 18–20 / 50–60 / 50–77, n = 4 45–56 against 44–56. The packed panels reach
150–170 on the same shapes once packed. Whole steps from Python (``stream.step``, paired against the
small_rows_matmul routes in one process, alternating): 1 thread, H = 256, B = 2 / 4 / 16 / 32 1.47× /
1.31× / 1.58× / 1.30× (reset_after=False: B = 4 / 16 1.35× / 1.60×); H = 64, B = 16 1.41×; H = 1024,
B = 4 / 16 1.10× / 1.39×; a forward of T = 2 steps at B = 16, H = 64 / 256 1.12× / 1.15×. The step split
over two threads (:func:`~numgru.kernels.step.gru_step_cols`) takes it too for several rows, in each
block's slices of W (B = 16, H = 256 / 1024 1.28× / 1.2× over the tiled matmul there); one row keeps the
tiled matmul. A software prefetch of the next chunk's rows of W, for W read from L3, ran no faster
(K = 1024, n = 8 / 16: 89–95 / 122–125 GFLOP/s against 95–97 / 130–132 without).

bfloat16 weights (``uint16`` codes, :mod:`~numgru.kernels.bf16`) by float32 rows: each vector of W is
loaded as 16-bit codes and widened in registers (a code is a float32's upper half), so the sums are
the float32 block's on the widened weights, over half the bytes. The first masked step then aligns
W's loads to their own 32 bytes, and x is not copied to line up with W.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import device
from .panel import _float_type, _overloaded, _shape_for, _splat, aligned_zeros

#: rows of x per group: W is read once per group, a k-chunk of the group's rows stays in L1. 32 rather
#: than 16 reads W once for a projection of 17–32 rows, where W comes from memory: Zen 4, one thread,
#: T = 24 / 32, B = 1, H = 1024, the input projection in the forward 1.94–2.01 / 2.39–2.54 ms against
#: 2.30–2.38 / 2.82–2.88; with W warm in cache the two run level (17–32 rows by K = 64–1024, 1–2 %
#: apart either way)
GROUP_ROWS = 32
#: bytes of one group's k-chunk of x (rows × chunk × item size), which stays in L1 beside W's share
#: (32 KB against 16: K = 512 / 1024, 16–32 rows 1.05–1.13×, fewer sums per output; K = 256 level)
CHUNK_BYTES = 32768


def _tree_sum(builder, vs, L):
    """One vector from L vectors of L lanes: lane q = the sum of vs[q]'s lanes. Each step pairs two
    vectors whose lanes form segments of width w (one segment per input vector) and halves the
    segments: the low and high halves of every segment, gathered by two shuffles, are added."""
    w = L
    while len(vs) > 1:
        half = w // 2
        lo = []
        hi = []
        for base in (0, L):  # first operand's lanes, then the second's
            for s in range(L // w):
                lo += [base + s * w + t for t in range(half)]
                hi += [base + s * w + half + t for t in range(half)]
        i32 = ir.IntType(32)
        lo_c = ir.Constant(ir.VectorType(i32, L), lo)
        hi_c = ir.Constant(ir.VectorType(i32, L), hi)
        vs = [builder.fadd(builder.shuffle_vector(a, b, lo_c), builder.shuffle_vector(a, b, hi_c))
              for a, b in zip(vs[0::2], vs[1::2])]
        w = half
    return vs[0]


def _emit_dot(context, builder, fty, x_ptr, ldx, w_ptr, ldw, o_ptr, ldo, n, M, K, bf16, rev):
    """Emit out[i, j] = Σ_k x[i, k] · W[j, k] for i < n, j < M (sizes and row strides in elements, intp
    values; x[i, k] at x_ptr[i·ldx + k], W[j, k] at w_ptr[j·ldw + k], out[i, j] at o_ptr[i·ldo + j]);
    n, M, K ≥ 1. ``bf16``: W holds bfloat16 values (``w_ptr`` an i16 pointer, fty float32), each vector
    of them widened to float32 in registers after its load. ``rev`` (an i1 value): W's blocks of rows
    last first."""
    intp = cgutils.intp_t
    i32 = ir.IntType(32)
    size = context.get_abi_sizeof(fty)
    L = _shape_for(context, size)[0]
    suffix = "f32" if size == 4 else "f64"
    vty = ir.VectorType(fty, L)
    mask_t = ir.VectorType(ir.IntType(1), L)

    def const(v):
        return ir.Constant(intp, v)

    def fn(name, ret, args):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)

    fma = fn("llvm.fma.v%d%s" % (L, suffix), vty, [vty, vty, vty])
    mload = fn(_overloaded("llvm.masked.load.v%d%s" % (L, suffix), vty), vty, [vty.as_pointer(), i32, mask_t, vty])
    zero = ir.Constant(vty, None)
    accs = [cgutils.alloca_once(builder, vty) for _ in range(L)]  # promoted to registers
    wsize = 2 if bf16 else size  # bytes of one of W's values
    i16v = ir.VectorType(ir.IntType(16), L)
    i32v = ir.VectorType(i32, L)
    wmload = fn(_overloaded("llvm.masked.load.v%di16" % L, i16v), i16v,
                [i16v.as_pointer(), i32, mask_t, i16v]) if bf16 else None

    def widen(v):
        """float32 lanes from a vector of bfloat16 codes (their bits are a float32's upper half)."""
        return builder.bitcast(builder.shl(builder.zext(v, i32v), ir.Constant(i32v, [16] * L)), vty)

    def wload(p):
        """The vector of W's values at p (in W's elements)."""
        if bf16:
            return widen(builder.load(builder.bitcast(p, i16v.as_pointer()), align=2))
        return builder.load(vptr(p), align=size)

    def wmasked(p, mask):
        if bf16:
            return widen(builder.call(wmload, [builder.bitcast(p, i16v.as_pointer()), ir.Constant(i32, 2),
                                               mask, ir.Constant(i16v, None)]))
        return builder.call(mload, [vptr(p), ir.Constant(i32, size), mask, zero])

    def lane_mask(limit, n_lanes):
        """Lanes t < limit (an intp value) of an n_lanes vector."""
        vint = ir.VectorType(intp, n_lanes)
        return builder.icmp_signed("<", ir.Constant(vint, list(range(n_lanes))), _splat(builder, limit, vint))

    def smin(a, b):
        return builder.select(builder.icmp_signed("<", a, b), a, b)

    def vptr(p):
        return builder.bitcast(p, vty.as_pointer())

    G = GROUP_ROWS
    # k per chunk: the group's rows of x for one chunk fill CHUNK_BYTES (fewer rows, longer chunks)
    rows = smin(n, const(G))
    KC = builder.mul(builder.sdiv(builder.sdiv(const(CHUNK_BYTES // size), rows), const(L)), const(L))
    KC = builder.select(builder.icmp_signed("<", KC, const(L)), const(L), KC)
    last_row = builder.sub(n, const(1))
    last_col = builder.sub(M, const(1))
    # the first kh values of k run as one masked step, so that the vector loads of W's rows start on
    # 64-byte lines where all its rows lie alike (row stride a multiple of 64 bytes): NumPy aligns
    # arrays to 16 bytes, and loads that straddle two lines ran the block at 55-65 % of its speed.
    # Narrower vectors (AVX2: 32 bytes) align to their own width, which keeps kh below L: the head is
    # one step of L lanes
    line = const(min(64, L * wsize))
    mis = builder.srem(builder.ptrtoint(w_ptr, intp), line)
    kh = builder.sdiv(builder.srem(builder.sub(line, mis), line), const(wsize))
    alike = builder.icmp_signed("==", builder.srem(builder.mul(ldw, const(wsize)), line), const(0))
    kh = builder.select(builder.and_(alike, builder.icmp_signed("<", kh, K)), kh, const(0))
    head = builder.icmp_signed(">", kh, const(0))
    hmask = lane_mask(kh, L)

    def nest(MR):
        """The loops for blocks of MR rows of x by NR = ⌊L / MR⌋ rows of W (MR·NR of the L accumulators
        in use, the others summed as zeros)."""
        NR = L // MR
        oty = ir.VectorType(fty, NR)
        omask_t = ir.VectorType(ir.IntType(1), NR)
        omload = fn(_overloaded("llvm.masked.load.v%d%s" % (NR, suffix), oty), oty,
                    [oty.as_pointer(), i32, omask_t, oty])
        omstore = fn(_overloaded("llvm.masked.store.v%d%s" % (NR, suffix), oty), ir.VoidType(),
                     [oty, oty.as_pointer(), i32, omask_t])
        ozero = ir.Constant(oty, None)
        with cgutils.for_range_slice(builder, const(0), n, const(G), intp) as (g0, _):
            g1 = smin(builder.add(g0, const(G)), n)
            with cgutils.for_range_slice(builder, const(0), M, const(NR), intp) as (j0f, _):
                # blocks of W's rows last first when rev: the last block starts at NR·⌊(M − 1) / NR⌋
                last_block = builder.mul(builder.sdiv(last_col, const(NR)), const(NR))
                j0 = builder.select(rev, builder.sub(last_block, j0f), j0f)
                wrows = [builder.gep(w_ptr, [builder.mul(smin(builder.add(j0, const(c)), last_col), ldw)])
                         for c in range(NR)]
                cols_left = builder.sub(M, j0)
                full_cols = builder.icmp_signed(">=", cols_left, const(NR))
                omask = lane_mask(cols_left, NR)
                with cgutils.for_range_slice(builder, kh, K, KC, intp) as (k0, _):
                    k1 = smin(builder.add(k0, KC), K)
                    kfull = builder.sub(k1, builder.srem(builder.sub(k1, k0), const(L)))
                    tail = builder.icmp_signed("<", kfull, k1)
                    kmask = lane_mask(builder.sub(k1, kfull), L)
                    first = builder.icmp_signed("==", k0, kh)
                    first_head = builder.and_(first, head)
                    with cgutils.for_range_slice(builder, g0, g1, const(MR), intp) as (i0, _):
                        xrows = [builder.gep(x_ptr, [builder.mul(smin(builder.add(i0, const(r)), last_row), ldx)])
                                 for r in range(MR)]
                        for acc in accs[:MR * NR]:
                            builder.store(zero, acc)

                        def fmas(xs, ws):
                            for r in range(MR):
                                for c in range(NR):
                                    acc = accs[r * NR + c]
                                    builder.store(builder.call(fma, [xs[r], ws[c], builder.load(acc)]), acc)

                        def masked(k, mask):
                            return ([builder.call(mload, [vptr(builder.gep(p, [k])), ir.Constant(i32, size), mask,
                                                          zero]) for p in xrows],
                                    [wmasked(builder.gep(p, [k]), mask) for p in wrows])

                        with cgutils.if_unlikely(builder, first_head):  # k < kh, up to W's first line
                            fmas(*masked(const(0), hmask))
                        with cgutils.for_range_slice(builder, k0, kfull, const(L), intp) as (k, _):
                            xs = [builder.load(vptr(builder.gep(p, [k])), align=size) for p in xrows]
                            ws = [wload(builder.gep(p, [k])) for p in wrows]
                            fmas(xs, ws)
                        with cgutils.if_unlikely(builder, tail):  # k past K: masked loads (zeros)
                            fmas(*masked(kfull, kmask))
                        sums = _tree_sum(builder, [builder.load(a) for a in accs[:MR * NR]] +
                                         [zero] * (L - MR * NR), L)
                        for r in range(MR):
                            i = builder.add(i0, const(r))
                            with builder.if_then(builder.icmp_signed("<", i, n), likely=True):
                                part = builder.shuffle_vector(
                                    sums, ir.Constant(vty, ir.Undefined),
                                    ir.Constant(ir.VectorType(i32, NR), [r * NR + c for c in range(NR)]))
                                optr = builder.bitcast(builder.gep(o_ptr, [builder.add(builder.mul(i, ldo), j0)]),
                                                       oty.as_pointer())
                                with builder.if_else(full_cols, likely=True) as (whole, edge):
                                    with whole:  # the first chunk writes, later ones add
                                        with builder.if_else(first) as (w_first, w_more):
                                            with w_first:
                                                builder.store(part, optr, align=size)
                                            with w_more:
                                                builder.store(builder.fadd(part, builder.load(optr, align=size)),
                                                              optr, align=size)
                                    with edge:  # the last block of columns, past M − 1
                                        old = builder.call(omload, [optr, ir.Constant(i32, size), omask, ozero])
                                        val = builder.select(first, part, builder.fadd(part, old))
                                        builder.call(omstore, [val, optr, ir.Constant(i32, size), omask])

    # blocks of 4 rows (4 + NR loads per L multiply-adds); 2 for two rows, which would leave half a
    # block of 4 idle; with 16 lanes of 3 or 5 rows (by 5 or 3 rows of W, 15 of 16 accumulators),
    # with 8 lanes of 3 (by 2), where blocks of 4 would compute more rows past n − 1 (clamped rows
    # cost their multiply-adds)
    choices = {16: (4, 3, 5), 8: (4, 3)}.get(L, (min(4, L),))

    def nests(sizes):
        """The nest for the block size ``_block_rows`` picked among ``sizes``, each in a branch."""
        if len(sizes) == 1:
            nest(sizes[0])
            return
        this_one = builder.icmp_signed("==", mr, const(sizes[0]))
        with builder.if_else(this_one, likely=True if sizes[0] == 4 else None) as (this, rest):
            with this:
                nest(sizes[0])
            with rest:
                nests(sizes[1:])

    with builder.if_else(builder.icmp_signed("<=", n, const(2))) as (few, many):
        with few:
            nest(min(2, L))
        with many:
            mr = _block_rows(builder, n, G, choices)
            nests(choices)


def _block_rows(builder, n, G, choices):
    """The rows per block, of ``choices`` (ints, the first on a tie), that leave the fewest rows past
    the end of x's groups of G rows (each block's rows past its group clamped to n − 1, computed and
    not stored): an intp value."""
    intp = cgutils.intp_t

    def const(v):
        return ir.Constant(intp, v)
    full = builder.sdiv(n, const(G))
    rest = builder.srem(n, const(G))
    best = past = None
    for mr in choices:
        left = builder.srem(builder.sub(const(mr), builder.srem(rest, const(mr))), const(mr))  # (−rest) mod mr
        waste = builder.add(builder.mul(full, const(-G % mr)), left)
        if best is None:
            best, past = const(mr), waste
        else:
            fewer = builder.icmp_signed("<", waste, past)
            best = builder.select(fewer, const(mr), best)
            past = builder.select(fewer, waste, past)
    return best


def _operand(a, bf16=False):
    return isinstance(a, types.Array) and a.ndim == 2 and a.layout in "CA" and \
        (_float_type(a.dtype) or bf16 and a.dtype == types.uint16)


@intrinsic
def _dot_block(typingctx, x, W, out, n, rev):
    """out[:n, :M] = x[:n] @ W.T for M = W.shape[0], W's blocks of rows last first when ``rev`` (see
    :func:`dot_rows`, which checks the shapes and that rows are contiguous)."""
    bf16 = isinstance(W, types.Array) and W.dtype == types.uint16  # bfloat16 weights, float32 rows
    if not (_operand(x) and _operand(W, bf16) and _operand(out)):
        return None
    if not (x.dtype == out.dtype == types.float32 if bf16 else x.dtype == W.dtype == out.dtype):
        return None
    if not isinstance(n, types.Integer):
        return None
    sig = types.void(x, W, out, types.intp, types.boolean)

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(sig.args[0].dtype)
        X = context.make_array(sig.args[0])(context, builder, args[0])
        Wa = context.make_array(sig.args[1])(context, builder, args[1])
        O = context.make_array(sig.args[2])(context, builder, args[2])

        def ld(a, dtype):  # the row stride in elements
            item = ir.Constant(cgutils.intp_t, context.get_abi_sizeof(context.get_value_type(dtype)))
            return builder.sdiv(cgutils.unpack_tuple(builder, a.strides, 2)[0], item)
        M = cgutils.unpack_tuple(builder, Wa.shape, 2)[0]
        K = cgutils.unpack_tuple(builder, X.shape, 2)[1]
        _emit_dot(context, builder, fty, X.data, ld(X, sig.args[0].dtype), Wa.data, ld(Wa, sig.args[1].dtype),
                  O.data, ld(O, sig.args[2].dtype), args[3], M, K, bf16, args[4])
        return context.get_dummy_value()
    return sig, codegen


@device
def dot_rows(x, W, out, n, rev=False):
    """out[:n, :M] = x[:n] @ W.T for W (M, K), x (≥ n, K), out (≥ n, ≥ M), one float dtype, each with
    contiguous rows (C-contiguous, or a slice of rows or columns of such an array). Nothing else of out
    is written. ``rev``: sweep W's blocks of rows last first (each sum is the same): a step that reads
    weights beyond L2 passes it every other step, so that it starts on the rows the step before read
    last (one row, H = 256: both products 18.3–19.1 µs a step against 18.8–19.7 with the blocks in
    one order). The shapes are checked here: the block reads raw pointers. Where W's rows all start
    alike, the sums' grouping follows where they start within a line (the first masked step runs up
    to it): the same W placed elsewhere may round differently in the last bits, so callers that
    want the same bits on every call keep W where it is (the model's weights) or on a line."""
    M = W.shape[0]
    K = W.shape[1]
    if n < 0 or n > x.shape[0] or n > out.shape[0] or x.shape[1] != K or out.shape[1] < M:
        raise ValueError("dot_rows: shapes do not match")
    if n == 0 or M == 0:
        return
    if K > 0 and (x.strides[1] != x.itemsize or W.strides[1] != W.itemsize or x.strides[0] < 0 or
                  W.strides[0] < 0) or out.strides[1] != out.itemsize or out.strides[0] < 0:
        raise ValueError("dot_rows: shapes do not match (rows must be contiguous)")
    if K == 0:
        for i in range(n):
            for j in range(M):
                out[i, j] = 0
        return
    if lines_up(x, W):
        _dot_block(x, W, out, n, rev)
    else:
        _dot_block(aligned_like(x, W, n), W, out, n, rev)


@device
def lines_up(x, W):
    """Whether x's rows start where W's do within a 64-byte line (or W's rows do not all start alike,
    or x's rows are not as long as W's, or W's values are narrower than x's: bfloat16 weights)."""
    return W.strides[0] % 64 != 0 or x.shape[1] != W.shape[1] or W.itemsize != x.itemsize or \
        x.ctypes.data % 64 == W.ctypes.data % 64 and x.strides[0] % 64 == 0


@device
def aligned_like(x, W, n):
    """x[:n], or a copy of it whose rows start where W's do within a 64-byte line, so that the block
    loads whole lines of both once it has run up to W's first line (x's loads straddling lines ran it
    at 70-75 % of its speed)."""
    if lines_up(x, W):
        return x[:n]
    K = x.shape[1]
    # W's rows all start alike, so K values make whole lines and the copy's rows line up too
    off = W.ctypes.data % 64 // x.itemsize
    xa = aligned_zeros(n * K + 64 // x.itemsize, x.dtype)[off:off + n * K].reshape((n, K))
    for i in range(n):
        xi = x[i]
        ai = xa[i]
        for k in range(K):
            ai[k] = xi[k]
    return xa
