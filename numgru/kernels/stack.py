"""A whole inference forward, every layer and direction, in one kernel call: for models whose plan
runs, in every direction, the plain serial kernels or the one-row fused forward, on float weights and
any panels a frozen copy keeps (small models, where those calls are most of the time).

A plan (:func:`~numgru.kernels.dispatch.serial_direction_plan`) makes each direction's choices once,
but running it still costs up to three kernel calls a direction from Python (the input projection,
the first step from the zero state, the other steps), with the glue between them: about 7 µs a
direction on Zen 4, against 1–2 µs of arithmetic at H ≤ 64 and a few steps. :func:`gru_stack_forward`
takes the same kernels with the same arguments from inside one compiled call, so its results are
those of the plan's calls bit for bit; each direction's weights and panels are found by their
addresses, which the plan reads once from the arrays it keeps
(:func:`~numgru.kernels.dispatch.stack_arguments`), so weights changed in place are read as they
are, as by the plan's own calls. The kernels it runs are called by address
(:func:`~numgru.kernels._jit.call_native`), so their code is not compiled again into this one.
"""
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from ._jit import call_native, inline, kernel, wide_vectors

#: columns of :func:`gru_stack_forward`'s ``addresses``: where each direction's W_ih (3H, I_layer), b_ih
#: (3H,), W_hh (3H, H) and b_hh (3H,) start (b_ih zeros without bias), and the packed panels its plan
#: keeps (a frozen model's): W_ih's and W_hh's pair (:func:`~numgru.kernels.step.step_panels`), whose
#: shapes ``panel_shapes`` gives (0 where there are none)
W_IH, B_IH, W_HH, B_HH, WP_IH, WP_A, WP_B = range(7)
#: columns of its ``flags``: the projection's panels and dot-product block, whether it adds b_ih, whether
#: the direction runs backwards in time, the recurrence's ``tiled_max``, whether the direction runs the
#: fused forward (:func:`~numgru.kernels.fused.gru_forward_fused`) rather than the serial kernels
PANELS, DOT, USE_BIAS, REVERSE, TILED_MAX, FUSED = range(6)
#: entries of its ``natives``: the kernels' addresses
PROJECT_FIRST, PROJECT, FIRST_STEP, SERIAL, FUSED_FIRST, FUSED_INNER = range(6)


@intrinsic
def pointer_at(typingctx, address, like):
    """A pointer to values of ``like``'s dtype (an array) at ``address`` (int64): for ``numba.carray``.
    Nothing is checked: the caller guarantees that an array of the shape it asks for lies there."""
    if not isinstance(address, types.Integer) or not isinstance(like, types.Array):
        return None
    ptr = types.CPointer(like.dtype)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(address, like), codegen


@inline
def panels_at(address, shape, like, none):
    """The packed panels (shape[0], shape[1], shape[2]) of like's dtype at ``address``, or ``none`` (an
    empty (0, 0, 0) array) where shape[0] is 0."""
    if shape[0] == 0:
        return none
    return numba.carray(pointer_at(address, like), (shape[0], shape[1], shape[2]))


@inline
def weights_at(a, s_ih, s_a, s_b, like, K, H, none):
    """One layer and direction's ``(W_ih, W_hh, b_ih, b_hh, (Wp_ih, Wp_a, Wp_b))`` as gru_step takes
    them, arrays of like's dtype at the addresses in a (columns :data:`W_IH` … :data:`WP_B`): W_ih
    (3H, K), the panels of shapes s_ih, s_a, s_b or ``none`` (:func:`panels_at`)."""
    M = 3 * H
    return (numba.carray(pointer_at(a[W_IH], like), (M, K)),
            numba.carray(pointer_at(a[W_HH], like), (M, H)),
            numba.carray(pointer_at(a[B_IH], like), (M,)),
            numba.carray(pointer_at(a[B_HH], like), (M,)),
            (panels_at(a[WP_IH], s_ih, like, none), panels_at(a[WP_A], s_a, like, none),
             panels_at(a[WP_B], s_b, like, none)))


@kernel
def gru_stack_forward(x, addresses, panel_shapes, flags, h0, from_zero, ya, yb, y, gx, h_n, lengths, others, padded,
                      reset_after, gate_kind, alpha, beta, use_clip, clip, D, natives):
    """All L layers and D directions of an inference forward, each direction as
    :func:`~numgru.kernels.dispatch.run_serial_direction` (h0 given), :func:`~numgru.kernels.dispatch.
    run_from_zero` (``from_zero``) or, over padded rows (``padded``), :func:`~numgru.kernels.dispatch.
    run_padded_direction` runs its plan: the plain serial kernels, or the fused forward (one row, every
    row running all T steps; from a zero state where ``from_zero``, but for one step from it the
    projection and the first step's gates, which do not read W_hh).

    x (T, B, I) C-contiguous; ``addresses`` (L·D, 7) int64, ``panel_shapes`` (L·D, 3, 3) int64 (the
    shapes of the panels at :data:`WP_IH`, :data:`WP_A`, :data:`WP_B`) and ``flags`` (L·D, 6) int64
    per direction, layer by layer (columns :data:`W_IH` … and :data:`PANELS` …); h0 (L·D, B, H) (any
    array when ``from_zero``); ya, yb (T, B, D·H) scratch for the inner layers' outputs (layer k's in
    ya for k even, yb odd; any arrays for one layer); y (T, B, D·H) out, the top layer's; gx (T·B, 3H)
    scratch; h_n (L·D, B, H) out; lengths (B,) int64, each row's steps (all T unless
    ``padded``, a plan of the serial kernels alone: then non-increasing, 0 … T), others (B,)
    max(lengths − 1, 0). One float dtype; no output aliases an input. The gate scalars as the kernels
    take them. ``natives`` (6,) int64: the addresses of the kernels it runs (:data:`PROJECT_FIRST` …),
    taken for the types they are handed here (:func:`~numgru.kernels._jit.native_address`): the
    projection (:func:`~numgru.kernels.forward.input_projection_kernel`) and the fused forward each for
    layer 0's input and for an inner layer's (the same where x is writeable), the first step
    (:func:`~numgru.kernels.forward.first_step_gates`) and the serial forward."""
    wide_vectors()
    T = x.shape[0]
    B = x.shape[1]
    H = h_n.shape[2]
    M = 3 * H
    L = addresses.shape[0] // D
    empty = np.empty((0, 0, 0), x.dtype)
    h1 = np.empty((B, H), x.dtype)  # (scratch: a state from zeros, the steps after the first)
    g3 = gx.reshape((T, B, M))
    x2d = x.reshape((T * B, x.shape[2]))
    for layer in range(L):
        out = y if layer == L - 1 else (ya if layer % 2 == 0 else yb)
        inp = ya if layer % 2 == 1 else yb  # layer k's input for k ≥ 1: layer k − 1's output
        inner = inp.reshape((T * B, inp.shape[2]))
        K = x.shape[2] if layer == 0 else inp.shape[2]
        for d in range(D):
            i = layer * D + d
            a = addresses[i]
            reverse = flags[i, REVERSE] != 0
            col0 = d * H
            W_ih, W_hh, b_ih, b_hh, (Wp_ih, Wp_a, Wp_b) = weights_at(
                a, panel_shapes[i, 0], panel_shapes[i, 1], panel_shapes[i, 2], x, K, H, empty)
            if flags[i, FUSED] != 0 and not (from_zero and T == 1):  # (one step from zeros: its gates alone)
                if from_zero:
                    h1[:] = 0
                start = h1 if from_zero else h0[i]
                if reset_after and layer == 0:
                    call_native(natives[FUSED_FIRST], (x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_a, b_hh, start, reverse, out,
                                                       col0, h_n[i]), None)
                elif reset_after:
                    call_native(natives[FUSED_INNER], (inner, W_ih, Wp_ih, b_ih, W_hh, Wp_a, b_hh, start, reverse,
                                                       out, col0, h_n[i]), None)
                elif layer == 0:
                    call_native(natives[FUSED_FIRST], (x2d, W_ih, Wp_ih, b_ih, W_hh, Wp_a, Wp_b, b_hh, start,
                                                       reverse, out, col0, h_n[i]), None)
                else:
                    call_native(natives[FUSED_INNER], (inner, W_ih, Wp_ih, b_ih, W_hh, Wp_a, Wp_b, b_hh, start,
                                                       reverse, out, col0, h_n[i]), None)
                continue
            use_bias = flags[i, USE_BIAS] != 0
            panels = flags[i, PANELS] != 0
            dot = flags[i, DOT] != 0
            if layer == 0:
                call_native(natives[PROJECT_FIRST], (x2d, W_ih, Wp_ih, b_ih, use_bias, gx, panels, dot), None)
            else:
                call_native(natives[PROJECT], (inner, W_ih, Wp_ih, b_ih, use_bias, gx, panels, dot), None)
            tiled_max = flags[i, TILED_MAX]
            if not from_zero:
                call_native(natives[SERIAL], (g3, W_hh, (Wp_a, Wp_b), b_hh, h0[i], lengths, np.bool_(True),
                                              reverse, reset_after, gate_kind, alpha, beta, use_clip, clip, out,
                                              col0, h_n[i], np.bool_(False), empty, tiled_max, np.int64(0),
                                              np.int64(B)), None)
                continue
            if padded and reverse:
                # each row starts at its own last step: from zeros, W_hh read from the first
                h1[:] = 0
                call_native(natives[SERIAL], (g3, W_hh, (Wp_a, Wp_b), b_hh, h1, lengths, np.bool_(True),
                                              reverse, reset_after, gate_kind, alpha, beta, use_clip, clip, out,
                                              col0, h_n[i], np.bool_(False), empty, tiled_max, np.int64(0),
                                              np.int64(B)), None)
                continue
            # the first step from the zero state, W_hh not read (the last in reverse), then the others
            first = T - 1 if reverse else 0
            h = h_n[i] if T == 1 else h1
            call_native(natives[FIRST_STEP], (g3[first], b_hh, lengths, reset_after, gate_kind, alpha, beta,
                                              use_clip, clip, out[first:first + 1], col0, h), None)
            if T > 1:
                s0 = 0 if reverse else 1
                call_native(natives[SERIAL], (g3[s0:s0 + T - 1], W_hh, (Wp_a, Wp_b), b_hh, h1, others,
                                              np.bool_(True), reverse, reset_after, gate_kind, alpha, beta, use_clip,
                                              clip, out[s0:s0 + T - 1], col0, h_n[i], np.bool_(False), empty,
                                              tiled_max, np.int64(0), np.int64(B)), None)


#: fields of :func:`gru_step_layers`' ``plan`` (int64): gru_step's addresses for layer 0's input and for
#: an inner layer's (the layer below's new state); where the stream's two (L, B, H) state buffers, the
#: (B, 3H) workspaces gi and gh start; gru_step's ``tiled_max``, ``reset_after``, ``gate_kind``,
#: ``use_clip``; the layers, rows and hidden units; then each layer's :data:`STEP_LAYER` fields from
#: STEP_WEIGHTS on: where its weights and panels start (columns :data:`W_IH` … :data:`WP_B`) and the
#: panels' shapes (three each from :data:`STEP_PANEL_SHAPES`, zeros where there are none)
(STEP_FIRST, STEP_INNER, STATE_A, STATE_B, GI, GH, STEP_TILED_MAX, RESET_AFTER, GATE_KIND, USE_CLIP, LAYERS,
 ROWS, HIDDEN, STEP_WEIGHTS) = range(14)
STEP_PANEL_SHAPES = 7
STEP_LAYER = STEP_PANEL_SHAPES + 9
#: entries of its ``values`` (x's dtype): gru_step's ``alpha``, ``beta`` and ``clip``
ALPHA, BETA, CLIP = range(3)


@inline
def plan_layer(plan, k, like, K, H, none):
    """Layer k's :func:`weights_at` from a step plan's fields (:data:`STEP_WEIGHTS` on)."""
    a = STEP_WEIGHTS + STEP_LAYER * k
    s = a + STEP_PANEL_SHAPES
    return weights_at(plan[a:s], plan[s:s + 3], plan[s + 3:s + 6], plan[s + 6:s + 9], like, K, H, none)


@inline
def step_layer(address, plan, values, k, inp, h, out, gi, gh, backwards, none):
    """Layer k's :func:`~numgru.kernels.step.gru_step` of inp (B, K) and h (B, H) into out (B, H), by
    ``address`` (the plan's :data:`STEP_FIRST` or :data:`STEP_INNER`, compiled for these arrays' types),
    on the weights, panels and scalars of a step plan; gi and gh (B, 3H) its workspaces."""
    W_ih, W_hh, b_ih, b_hh, panels = plan_layer(plan, k, inp, inp.shape[1], plan[HIDDEN], none)
    call_native(address, (inp, h, W_ih, W_hh, b_ih, b_hh, panels, plan[RESET_AFTER] != 0, plan[GATE_KIND],
                          values[ALPHA], values[BETA], plan[USE_CLIP] != 0, values[CLIP], out, gi, gh,
                          plan[STEP_TILED_MAX], backwards), None)


@kernel
def gru_step_layers(x, plan, values, cur):
    """One step of every layer of a stream (:class:`numgru.serving.Stepper`): layer k as
    :func:`~numgru.kernels.step.gru_step` (x, or layer k − 1's new state) with its state in the
    buffer ``cur`` (0 or 1) into the other one, the layers' calls from Python one kernel call, their
    values bit for bit, ``backwards`` when cur is 1.

    x (B, I) C-contiguous; ``plan`` (int64) and ``values`` (x's dtype), fields :data:`STEP_FIRST` …
    and :data:`ALPHA` … (:func:`~numgru.kernels.dispatch.step_layers_plan`): everything else the
    steps read, by address (the buffers' and workspaces', C-contiguous, apart; float weights of x's
    dtype and any panels a frozen model's step reads, C-contiguous), so that a step unboxes three
    arrays rather than gru_step's eighteen arguments."""
    wide_vectors()
    L = plan[LAYERS]
    B = plan[ROWS]
    H = plan[HIDDEN]
    h = numba.carray(pointer_at(plan[STATE_B] if cur else plan[STATE_A], x), (L, B, H))
    out = numba.carray(pointer_at(plan[STATE_A] if cur else plan[STATE_B], x), (L, B, H))
    gi = numba.carray(pointer_at(plan[GI], x), (B, 3 * H))
    gh = numba.carray(pointer_at(plan[GH], x), (B, 3 * H))
    backwards = cur != 0
    none = np.empty((0, 0, 0), x.dtype)
    step_layer(plan[STEP_FIRST], plan, values, 0, x, h[0], out[0], gi, gh, backwards, none)
    for k in range(1, L):
        step_layer(plan[STEP_INNER], plan, values, k, out[k - 1], h[k], out[k], gi, gh, backwards, none)


@kernel
def gru_cell_step(x, h, out, plan, values, backwards):
    """A GRUCell's step (:meth:`numgru.GRUCell.forward`): :func:`~numgru.kernels.step.gru_step` of x
    (B, I) and h (B, H) into out (B, H) on the weights, panels and scalars a one-layer step plan holds
    (:func:`~numgru.kernels.dispatch.step_layers_plan`, no buffers or workspaces: gi and gh are this
    call's own, so that calls from several threads do not share them), bit for bit the step's; six
    arguments to unbox rather than eighteen. The caller checks the shapes against the plan's."""
    wide_vectors()
    H = plan[HIDDEN]
    gi = np.empty((x.shape[0], 3 * H), x.dtype)
    gh = np.empty((x.shape[0], 3 * H), x.dtype)
    step_layer(plan[STEP_FIRST], plan, values, 0, x, h, out, gi, gh, backwards, np.empty((0, 0, 0), x.dtype))


@kernel
def gru_forward_step(x, h0, y, h_n, plan, values, backwards):
    """An inference forward of one step from a given state (:meth:`numgru.GRU.forward` with T = 1 and
    h0, one direction), every layer as a stream steps it: layer k's
    :func:`~numgru.kernels.step.gru_step` of x (B, I), or of layer k − 1's new state, and h0[k]
    (B, H) into h_n[k], on the weights, panels and scalars of a step plan
    (:func:`~numgru.kernels.dispatch.step_layers_plan` made for x's and h0's kinds, no buffers or
    workspaces: gi and gh are this call's own), sweeping the weights last first when ``backwards``;
    y[0] (B, H) receives the top layer's state. h0 (L, B, H) is only read. The caller checks the
    shapes against the plan's."""
    wide_vectors()
    L = plan[LAYERS]
    H = plan[HIDDEN]
    B = x.shape[0]
    gi = np.empty((B, 3 * H), x.dtype)
    gh = np.empty((B, 3 * H), x.dtype)
    none = np.empty((0, 0, 0), x.dtype)
    step_layer(plan[STEP_FIRST], plan, values, 0, x, h0[0], h_n[0], gi, gh, backwards, none)
    for k in range(1, L):
        step_layer(plan[STEP_INNER], plan, values, k, h_n[k - 1], h0[k], h_n[k], gi, gh, backwards, none)
    y[0] = h_n[L - 1]
