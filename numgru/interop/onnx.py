"""ONNX in and out: ``ng.onnx.export(model, path)`` and ``ng.onnx.load(path)``.

onnx is imported inside the functions. Loading parses the protobuf only (no code runs) and evaluates the
graph with numgru's kernels for GRU nodes and NumPy for the glue that exporters put around them.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .._validation import check_bool, check_int, check_path, check_writable_path
from ..layers import GRU
from . import layout

__all__ = ["export", "load", "OnnxGRUGraph", "SUPPORTED_OPS"]


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:  # pragma: no cover
        raise ImportError("ONNX interop needs onnx: pip install 'numgru[onnx]'") from exc
    return onnx, helper, numpy_helper


# ------------------------------------------------------------------------------------------ export
#: the oldest opset whose operators the exported graph's nodes are written for
MIN_OPSET = 10


def export(model, path, *, opset=14, with_lengths=False, with_initial_h=False):
    """Write ``model`` (a :class:`numgru.GRU`) as an ONNX graph with one GRU node per layer.

    Graph inputs: ``x`` (T, B, I) — (B, T, I) when batch_first — with dynamic ``seq`` and ``batch`` axes;
    ``lengths`` (B,) int32 when ``with_lengths`` (→ the nodes' sequence_lens); ``h0`` (L·D, B, H) when
    ``with_initial_h`` (→ initial_h). Outputs: ``y`` shaped like numgru's y and ``h_n`` (L·D, B, H).
    """
    if not isinstance(model, GRU):
        raise TypeError(f"model: expected a numgru.GRU, got {type(model).__name__}")
    path = check_writable_path("path", path)
    with_lengths = check_bool("with_lengths", with_lengths)
    with_initial_h = check_bool("with_initial_h", with_initial_h)
    onnx, helper, numpy_helper = _onnx()
    # Slice takes its bounds as inputs from opset 10 on; the newest is the installed onnx's
    opset = check_int("opset", opset, minimum=MIN_OPSET)
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"opset: expected at most {onnx.defs.onnx_opset_version()} (the installed onnx's "
                         f"newest), got {opset}")
    TP = onnx.TensorProto
    L, D, H, I = model.num_layers, model.num_directions, model.hidden_size, model.input_size
    elem = TP.DOUBLE if model.dtype == np.float64 else TP.FLOAT
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    inputs = [helper.make_tensor_value_info("x", elem, ["batch", "seq", I] if model.batch_first
                                            else ["seq", "batch", I])]
    x = "x"
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]))
        x = "x_tm"
    seq_lens = ""
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TP.INT32, ["batch"]))
        seq_lens = "lengths"
    if with_initial_h:
        inputs.append(helper.make_tensor_value_info("h0", elem, [L * D, "batch", H]))
    direction = "bidirectional" if D == 2 else ("reverse" if model.go_backwards else "forward")
    attrs = dict(hidden_size=H, direction=direction, linear_before_reset=int(model.reset_after))
    if model.gate_activation != "sigmoid":
        attrs["activations"] = ["HardSigmoid", "Tanh"] * D
        attrs["activation_alpha"] = [model.alpha] * D
        attrs["activation_beta"] = [model.beta] * D
    if model.clip is not None:
        attrs["clip"] = float(model.clip)
    params = model.state_dict()
    hn_parts = []
    for k in range(L):
        dirs = []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            zero = np.zeros(3 * H, model.dtype)
            dirs.append((params[f"weight_ih{sfx}"], params[f"weight_hh{sfx}"],
                         params.get(f"bias_ih{sfx}", zero), params.get(f"bias_hh{sfx}", zero)))
        W, R, B = layout.to_onnx_weights(dirs)
        init_h = ""
        if with_initial_h:
            init_h = f"h0_l{k}"
            nodes.append(helper.make_node("Slice", ["h0", const(f"h0_start_l{k}", np.array([k * D])),
                                                    const(f"h0_end_l{k}", np.array([(k + 1) * D])),
                                                    const(f"h0_axis_l{k}", np.array([0]))], [init_h]))
        nodes.append(helper.make_node(
            "GRU", [x, const(f"W_l{k}", W), const(f"R_l{k}", R), const(f"B_l{k}", B), seq_lens, init_h],
            [f"Y_l{k}", f"Yh_l{k}"], name=f"gru_l{k}", **attrs))
        nodes.append(helper.make_node("Transpose", [f"Y_l{k}"], [f"Yt_l{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt_l{k}", const(f"shape_l{k}", np.array([0, 0, -1]))],
                                      [f"out_l{k}"]))
        x = f"out_l{k}"
        hn_parts.append(f"Yh_l{k}")
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["y"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["y"]))
    nodes.append(helper.make_node("Concat", hn_parts, ["h_n"], axis=0))
    outputs = [helper.make_tensor_value_info("y", elem, ["batch", "seq", D * H] if model.batch_first
                                             else ["seq", "batch", D * H]),
               helper.make_tensor_value_info("h_n", elem, [L * D, "batch", H])]
    graph = helper.make_graph(nodes, "numgru_gru", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="numgru")
    # the oldest IR version that carries this opset, not the installed onnx's newest: runtimes
    # refuse files whose IR version is newer than theirs (onnxruntime 1.30 refused onnx 1.23's)
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


# -------------------------------------------------------------------------------------------- load
SUPPORTED_OPS = ("GRU", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather",
                 "Shape", "Constant", "ConstantOfShape", "Identity", "Cast", "Split", "Expand")


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


#: the most elements a shape-making operator (ConstantOfShape, Expand) may ask for: a GRU graph's
#: states are (L·D, B, H); a hostile file could otherwise ask for more memory than the machine has
MAX_MADE_ELEMENTS = 2**28


def _made_shape(values):
    """The shape ``values`` asks an operator to make, refused past :data:`MAX_MADE_ELEMENTS` (the
    caller names the node)."""
    shape = tuple(int(v) for v in np.asarray(values).reshape(-1))
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_MADE_ELEMENTS:
        raise ValueError(f"shape {shape} is negative or holds more than {MAX_MADE_ELEMENTS} elements")
    return shape


def _int_attr(node, a, key, default):
    """Attribute ``key`` of ``node`` as an int, or a ValueError naming both."""
    try:
        return int(a.get(key, default))
    except (TypeError, ValueError):
        raise ValueError(f"node {node.name or node.op_type!r}: attribute {key!r} must be an int, got "
                         f"{a[key]!r}") from None


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _gate_from_activations(node, acts, alphas, betas, D):
    """ONNX activations (f, g per direction) -> numgru gate_activation kwargs.

    alpha/beta lists are consumed in order by the functions that take them (ONNX Runtime's reading).
    """
    acts = [_s(a) for a in acts] if acts else ["Sigmoid", "Tanh"] * D
    if len(acts) != 2 * D:
        raise ValueError(f"node {node.name!r}: expected {2 * D} activations for {D} direction(s), "
                         f"got {len(acts)}")
    alphas, betas = list(alphas or []), list(betas or [])
    gates = []
    for i, a in enumerate(acts):
        low = a.lower()
        if i % 2 == 1:
            if low != "tanh":
                raise ValueError(f"node {node.name!r}: candidate activation {a!r} is not supported "
                                 "(numgru supports Tanh)")
            continue
        if low == "sigmoid":
            gates.append(("sigmoid", None, None))
        elif low == "hardsigmoid":
            al = alphas.pop(0) if alphas else 0.2
            be = betas.pop(0) if betas else 0.5
            gates.append(("hard_sigmoid", float(al), float(be)))
        else:
            raise ValueError(f"node {node.name!r}: gate activation {a!r} is not supported "
                             "(numgru supports Sigmoid and HardSigmoid)")
    if any(g != gates[0] for g in gates):
        raise ValueError(f"node {node.name!r}: both directions must use the same gate activation, "
                         f"got {gates}")
    return gates[0]


class _GRUNode:
    """One ONNX GRU node as a one-layer numgru GRU (time-major).

    When W, R and B are initializers or constants the GRU is built once; when they are graph inputs
    it is built from the fed arrays at each run.
    """

    def __init__(self, node, consts):
        a = _attrs(node)
        self.node = node
        self.name = node.name or "GRU"
        ins = list(node.input) + [""] * (6 - len(node.input))
        self.w_names = ins[1:4]
        self.x_name, self.len_name, self.h0_name = ins[0], ins[4], ins[5]
        direction = _s(a.get("direction", "forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"node {self.name!r}: unknown direction {direction!r}")
        self.D = 2 if direction == "bidirectional" else 1
        self.direction = direction
        self.gate, self.alpha, self.beta = _gate_from_activations(
            node, a.get("activations"), a.get("activation_alpha"), a.get("activation_beta"), self.D)
        clip = a.get("clip")
        self.clip = None if clip is None else float(clip)
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"node {self.name!r}: clip must be > 0, got {clip}")
        self.layout = _int_attr(node, a, "layout", 0)
        if self.layout not in (0, 1):
            raise ValueError(f"node {self.name!r}: layout must be 0 or 1, got {self.layout}")
        self.reset_after = bool(_int_attr(node, a, "linear_before_reset", 0))
        self.hidden_size = _int_attr(node, a, "hidden_size", 0) if "hidden_size" in a else None
        self.attrs = dict(gate=self.gate, alpha=self.alpha, beta=self.beta, clip=self.clip,
                          reset_after=self.reset_after, direction=direction)
        self.gru = None
        self.constant_weights = all(n in consts for n in self.w_names[:2]) and (
            not self.w_names[2] or self.w_names[2] in consts)
        if self.constant_weights:
            self.gru = self._build(consts[self.w_names[0]], consts[self.w_names[1]],
                                   consts[self.w_names[2]] if self.w_names[2] else None)

    @property
    def H(self):
        return self.gru.hidden_size

    def _build(self, W, R, B):
        W, R = np.asarray(W), np.asarray(R)
        D = self.D
        if W.ndim != 3 or W.shape[0] != D or R.ndim != 3 or R.shape[0] != D:
            raise ValueError(f"node {self.name!r}: W {W.shape} / R {R.shape} do not fit "
                             f"direction={self.direction!r}")
        H = R.shape[2]
        if self.hidden_size is not None and self.hidden_size != H:
            raise ValueError(f"node {self.name!r}: hidden_size {self.hidden_size} but R has H = {H}")
        if W.shape[1] != 3 * H or R.shape[1] != 3 * H or (B is not None and np.shape(B) != (D, 6 * H)):
            raise ValueError(f"node {self.name!r}: weight shapes W {W.shape}, R {R.shape}, "
                             f"B {None if B is None else np.shape(B)} do not match hidden_size {H}")
        dtype = np.float64 if W.dtype == np.float64 else np.float32
        gru = GRU(W.shape[2], H, bidirectional=D == 2, go_backwards=self.direction == "reverse",
                  reset_after=self.reset_after, gate_activation=self.gate, alpha=self.alpha,
                  beta=self.beta, clip=self.clip, dtype=dtype)
        sd = {}
        for d, (W_ih, W_hh, b_ih, b_hh) in enumerate(layout.from_onnx_weights(W, R, B)):
            sfx = "_l0" + ("_reverse" if d else "")
            sd.update({f"weight_ih{sfx}": W_ih, f"weight_hh{sfx}": W_hh, f"bias_ih{sfx}": b_ih,
                       f"bias_hh{sfx}": b_hh})
        gru.load_state_dict(sd)
        return gru

    def run(self, X, W=None, R=None, B=None, seq_lens=None, initial_h=None):
        gru = self.gru if self.constant_weights else self._build(W, R, B)
        if X.ndim != 3:
            raise ValueError(f"node {self.name!r}: X must be 3-D, got shape {X.shape}")
        if self.layout == 1:
            X = X.transpose(1, 0, 2)
            if initial_h is not None:
                initial_h = initial_h.transpose(1, 0, 2)
        y, h_n = gru(X, h0=initial_h, lengths=seq_lens)
        T, Bsz = y.shape[:2]
        Y = y.reshape(T, Bsz, self.D, gru.hidden_size)
        if self.layout == 1:
            return Y.transpose(1, 0, 2, 3), h_n.transpose(1, 0, 2)
        return Y.transpose(0, 2, 1, 3), h_n


class OnnxGRUGraph:
    """An ONNX graph whose compute is GRU nodes, evaluated with numgru.

    ``outputs = graph(x, ...)`` or ``graph.run({"x": x, ...})`` (a dict of output name -> array);
    ``graph.to_gru()`` gives the equivalent :class:`numgru.GRU` when the GRU nodes form a stack.
    """

    def __init__(self, model_proto):
        onnx, helper, numpy_helper = _onnx()
        g = model_proto.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self._proto_inputs = list(g.input)
        self.input_names = [i.name for i in g.input if i.name not in self.consts]
        self.output_names = [o.name for o in g.output]
        self.nodes = list(g.node)
        self.gru_nodes = {}
        for node in self.nodes:
            if node.op_type not in SUPPORTED_OPS or (node.domain not in ("", "ai.onnx")):
                raise ValueError(f"node {node.name or node.output[0]!r}: operator {node.op_type!r} is not "
                                 f"supported (supported: {', '.join(SUPPORTED_OPS)})")
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self._constant(node)
        for node in self.nodes:
            if node.op_type == "GRU":
                self.gru_nodes[id(node)] = _GRUNode(node, self.consts)
        if not self.gru_nodes:
            raise ValueError("graph: contains no GRU node")

    @staticmethod
    def _constant(node):
        from onnx import numpy_helper
        a = _attrs(node)
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for k in ("value_float", "value_int"):
            if k in a:
                return np.array(a[k])
        for k in ("value_floats", "value_ints"):
            if k in a:
                return np.array(list(a[k]))
        raise ValueError(f"node {node.name!r}: unsupported Constant attributes {sorted(a)}")

    def __call__(self, *args, **kwargs):
        feeds = dict(zip(self.input_names, args))
        feeds.update(kwargs)
        out = self.run(feeds)
        return tuple(out[n] for n in self.output_names)

    def run(self, feeds):
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if unknown:
            raise ValueError(f"feeds: unknown inputs {unknown}; the graph takes {self.input_names}")
        env = dict(self.consts)
        for n in self.input_names:
            if n in feeds:
                env[n] = np.asarray(feeds[n])
        if missing:
            raise ValueError(f"feeds: missing inputs {missing}")
        for node in self.nodes:
            ins = [env[i] if i else None for i in node.input]
            for i, name in enumerate(node.input):
                if name and name not in env:
                    raise ValueError(f"node {node.name!r}: input {name!r} is not computed")
            try:
                outs = self._eval(node, ins)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                raise ValueError(f"node {node.name or node.op_type!r} ({node.op_type}): {exc}") from exc
            for name, val in zip(node.output, outs):
                if name:
                    env[name] = val
        return {n: env[n] for n in self.output_names}

    def _eval(self, node, ins):
        op = node.op_type
        a = _attrs(node)
        if op == "GRU":
            gn = self.gru_nodes[id(node)]
            ins = ins + [None] * (6 - len(ins))
            seq = ins[4]
            if seq is not None:
                if seq.dtype.kind not in "iu":  # (ONNX declares int32; a float one would be cast blindly)
                    raise TypeError(f"sequence_lens: expected integers, got dtype {seq.dtype}")
                seq = seq.astype(np.int64)
            return gn.run(ins[0], ins[1], ins[2], ins[3], seq, ins[5])
        if op in ("Identity", "Constant"):
            return [ins[0] if op == "Identity" else self.consts[node.output[0]]]
        if op == "Transpose":
            return [np.transpose(ins[0], a.get("perm"))]
        if op == "Reshape":
            shape = [int(s) for s in ins[1]]
            shape = [ins[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s
                     for i, s in enumerate(shape)]
            return [ins[0].reshape(shape)]
        if op == "Squeeze":
            axes = a.get("axes") if "axes" in a else (ins[1] if len(ins) > 1 and ins[1] is not None else None)
            return [np.squeeze(ins[0], axis=None if axes is None else tuple(int(x) for x in axes))]
        if op == "Unsqueeze":
            axes = a.get("axes") if "axes" in a else ins[1]
            out = ins[0]
            for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
                out = np.expand_dims(out, ax)
            return [out]
        if op == "Concat":
            return [np.concatenate([i for i in ins if i is not None], axis=a["axis"])]
        if op == "Slice":
            data, starts, ends = ins[0], ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else np.arange(len(starts))
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else np.ones(len(starts), int)
            sl = [slice(None)] * data.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[int(ax)] = slice(int(s), int(min(e, 2**62)) if e > 0 else int(e), int(st))
            return [data[tuple(sl)]]
        if op == "Gather":
            return [np.take(ins[0], ins[1].astype(np.int64), axis=a.get("axis", 0))]
        if op == "Shape":
            return [np.array(ins[0].shape, np.int64)]
        if op == "ConstantOfShape":
            from onnx import numpy_helper
            val = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            return [np.full(_made_shape(ins[0]), val.reshape(-1)[0], val.dtype)]
        if op == "Expand":
            shape = np.broadcast_shapes(ins[0].shape, _made_shape(ins[1]))
            return [np.broadcast_to(ins[0], _made_shape(shape)).copy()]
        if op == "Cast":
            from onnx import helper
            return [ins[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))]
        if op == "Split":
            axis = a.get("axis", 0)
            split = a.get("split") if "split" in a else (ins[1] if len(ins) > 1 else None)
            if split is None:
                return np.array_split(ins[0], len(node.output), axis=axis)
            return np.split(ins[0], np.cumsum([int(s) for s in split])[:-1], axis=axis)
        raise ValueError(f"node {node.name!r}: operator {op!r} is not supported")  # pragma: no cover

    def to_gru(self):
        """The equivalent :class:`numgru.GRU`, when the GRU nodes form one stack of identical layers."""
        gru_protos = [n for n in self.nodes if n.op_type == "GRU"]
        order = [self.gru_nodes[id(n)] for n in gru_protos]
        for prev, node in zip(gru_protos, gru_protos[1:]):
            if prev.output[0] not in self._upstream(node.input[0]):
                raise ValueError(f"node {node.name!r}: its input does not come from {prev.name!r}; "
                                 "the graph is not one stacked GRU")
        if not all(gn.constant_weights for gn in order):
            raise ValueError("graph: W, R and B must be initializers to make a numgru.GRU "
                             "(run it with OnnxGRUGraph instead)")
        first = order[0]
        for gn in order[1:]:
            if gn.attrs != first.attrs or gn.H != first.H or gn.layout != first.layout:
                raise ValueError(f"node {gn.name!r}: its attributes differ from {first.name!r}; the "
                                 "graph is not one stacked GRU (run it with OnnxGRUGraph instead)")
            if gn.gru.input_size != first.D * first.H:
                raise ValueError(f"node {gn.name!r}: input size {gn.gru.input_size} is not the previous "
                                 f"layer's D·H = {first.D * first.H}")
        g0 = first.gru
        cfg = g0.get_config()
        cfg.update(num_layers=len(order))
        cfg.pop("seed", None)
        sd = {}
        for k, gn in enumerate(order):
            for name, arr in gn.gru.state_dict().items():
                sd[name.replace("_l0", f"_l{k}")] = arr
        # exporters may transpose x around the nodes: keep the layout that reproduces the graph
        for batch_first in (first.layout == 1, first.layout != 1):
            cfg["batch_first"] = batch_first
            gru = GRU(**cfg)
            gru.load_state_dict(sd)
            if self._reproduces(gru, gru_protos[0]):
                return gru
        raise ValueError("graph: the GRU stack does not reproduce the graph's first output "
                         "(run it with OnnxGRUGraph instead)")

    def _upstream(self, name):
        """Every value name that ``name`` is computed from, ``name`` included."""
        producers = {out: n for n in self.nodes for out in n.output if out}
        seen, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            node = producers.get(cur)
            if node is not None:
                stack.extend(i for i in node.input if i)
        return seen

    def _reproduces(self, gru, first_node):
        """Run the graph and ``gru`` on the same random input; True when the first outputs agree."""
        from onnx import helper
        x_sources = self._upstream(first_node.input[0])
        T, B = 3, 2
        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, T, gru.input_size) if gru.batch_first else (T, B, gru.input_size))
        x = x.astype(gru.dtype)
        feeds = {}
        for inp in (i for i in self._proto_inputs if i.name in self.input_names):
            tt = inp.type.tensor_type
            np_dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if inp.name in x_sources:
                feeds[inp.name] = x.astype(np_dtype)
            elif np.issubdtype(np_dtype, np.integer):
                feeds[inp.name] = np.full(B, T, np_dtype)
            else:
                shape = [d.dim_value if d.HasField("dim_value") else B for d in tt.shape.dim]
                feeds[inp.name] = np.zeros(shape, np_dtype)
        try:
            out = self.run(feeds)[self.output_names[0]]
        except (ValueError, IndexError):
            return False
        y, _ = gru(x)
        D, H = gru.num_directions, gru.hidden_size
        if gru.batch_first:
            forms = [y, y.reshape(B, T, D, H)]
        else:
            forms = [y, y.reshape(T, B, D, H).transpose(0, 2, 1, 3)]
        tol = 1e-5 if gru.dtype == np.float32 else 1e-10
        return any(f.shape == out.shape and np.allclose(f, out, atol=tol, rtol=0) for f in forms)


def load(path):
    """Import an ONNX file whose compute is GRU nodes, as an :class:`OnnxGRUGraph`.

    The graph object runs like the ONNX model itself (same inputs, same outputs, e.g. a bare GRU node's
    Y of shape (T, D, B, H)); ``.to_gru()`` turns a stack of GRU nodes (what ``torch.onnx.export`` and
    :func:`export` write) into a :class:`numgru.GRU` to save or train. Unsupported operators and
    attributes raise ValueError naming the node. Only the protobuf is parsed: no code runs.
    """
    onnx, _, _ = _onnx()
    path = check_path("path", path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file {path!r}")
    try:
        proto = onnx.load(path)
    except Exception as exc:
        raise ValueError(f"path: {path!r} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    if not proto.graph.node:
        raise ValueError(f"path: {path!r} holds no ONNX graph nodes")
    return OnnxGRUGraph(proto)
