"""ONNX: export runs in onnxruntime with the same outputs; onnx's own GRU cases; torch's export."""
import warnings

import numpy as np
import pytest

import numgru as ng

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CONFIGS = [dict(), dict(num_layers=2, bidirectional=True), dict(num_layers=3, batch_first=True),
           dict(reset_after=False), dict(gate_activation="hard_sigmoid_keras2"),
           dict(gate_activation="hard_sigmoid_keras3", clip=2.0, bidirectional=True),
           dict(go_backwards=True, num_layers=2), dict(bias=False), dict(dtype=np.float64)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("with_inputs", [False, True])
def test_export_runs_in_onnxruntime(tmp_path, cfg, with_inputs):
    g = ng.GRU(4, 5, seed=0, **cfg)
    path = ng.onnx.export(g, tmp_path / "m.onnx", with_lengths=with_inputs, with_initial_h=with_inputs)
    # onnxruntime's GRU kernel is float32 only ("GRU operator does not support double yet")
    sess = ort.InferenceSession(path) if g.dtype == np.float32 else None
    rng = np.random.default_rng(0)
    for B, T in [(3, 6), (1, 2)]:  # dynamic batch and sequence axes
        x = rng.standard_normal((B, T, 4) if g.batch_first else (T, B, 4)).astype(g.dtype)
        feeds = {"x": x}
        args = {}
        if with_inputs:
            h0 = rng.standard_normal((g.num_layers * g.num_directions, B, 5)).astype(g.dtype)
            lens = rng.integers(1, T + 1, B).astype(np.int32)
            feeds.update(h0=h0, lengths=lens)
            args = dict(h0=h0, lengths=lens)
        ny, nh = g(x, **args)
        if sess is not None:
            y, h = sess.run(None, feeds)
            np.testing.assert_allclose(y, ny, atol=1e-5)
            np.testing.assert_allclose(h, nh, atol=1e-5)
        # and back: the file imports to the same model
        back = ng.onnx.load(path)
        by, bh = back(**feeds)
        np.testing.assert_allclose(by, ny, atol=1e-6)
        gy, _ = back.to_gru()(x, **args)
        np.testing.assert_allclose(gy, ny, atol=1e-6)


def test_export_declares_the_oldest_ir_version_of_its_opset(tmp_path):
    # a runtime refuses files whose IR version is newer than it knows (onnxruntime 1.30 refused the
    # default of onnx 1.23); opset 14 needs IR version 7 (onnx 1.9)
    path = ng.onnx.export(ng.GRU(2, 3, seed=0), tmp_path / "m.onnx")
    m = onnx.load(path)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 14)]
    assert m.ir_version == 7


@pytest.mark.parametrize("opset", [10, 13, 17])
def test_export_at_other_opsets_runs_in_onnxruntime(tmp_path, opset):
    g = ng.GRU(4, 5, 2, bidirectional=True, seed=0)
    path = ng.onnx.export(g, tmp_path / "m.onnx", opset=opset, with_lengths=True, with_initial_h=True)
    assert [o.version for o in onnx.load(path).opset_import] == [opset]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    lengths = np.array([6, 2, 4], np.int32)
    y, h_n = ort.InferenceSession(path).run(None, {"x": x, "lengths": lengths, "h0": h0})
    want_y, want_h = g(x, h0, lengths=lengths)
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    np.testing.assert_allclose(h_n, want_h, atol=1e-5)


def test_export_arguments_named(tmp_path):
    g = ng.GRU(2, 3, seed=0)
    with pytest.raises(ValueError, match="opset: expected an int >= 10"):
        ng.onnx.export(g, tmp_path / "m.onnx", opset=9)
    with pytest.raises(ValueError, match="opset: expected at most"):
        ng.onnx.export(g, tmp_path / "m.onnx", opset=10_000)
    with pytest.raises(TypeError, match="opset"):
        ng.onnx.export(g, tmp_path / "m.onnx", opset=14.0)
    with pytest.raises(TypeError, match="with_lengths"):
        ng.onnx.export(g, tmp_path / "m.onnx", with_lengths="yes")


def _onnx_cases():
    from onnx.backend.test.case import node
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return node.collect_testcases("GRU")


@pytest.mark.parametrize("case", _onnx_cases(), ids=lambda c: c.name)
def test_onnx_backend_gru_cases(tmp_path, case):
    path = tmp_path / "case.onnx"
    onnx.save(case.model, str(path))
    graph = ng.onnx.load(path)
    for inputs, expected in case.data_sets:
        outs = graph(*inputs)
        assert len(outs) == len(expected)
        for got, want in zip(outs, expected):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _gru_node_model(path, attrs, D=1, H=3, I=2, **extra_nodes):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D, 3 * H, I)).astype(np.float32)
    R = rng.standard_normal((D, 3 * H, H)).astype(np.float32)
    B = rng.standard_normal((D, 6 * H)).astype(np.float32)
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], name="g", hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in [(W, "W"), (R, "R"), (B, "B")]])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


@pytest.mark.parametrize("attrs,D", [
    (dict(direction="reverse", linear_before_reset=1), 1),
    (dict(direction="bidirectional", activations=["HardSigmoid", "Tanh", "HardSigmoid", "Tanh"],
          activation_alpha=[0.3, 0.3], activation_beta=[0.4, 0.4], clip=1.5), 2),
    (dict(linear_before_reset=0), 1),  # layout=1: onnxruntime refuses it; onnx's batchwise case covers it
])
def test_node_attributes_against_onnxruntime(tmp_path, attrs, D):
    path = _gru_node_model(tmp_path / "n.onnx", attrs, D=D)
    x = np.random.default_rng(1).standard_normal((4, 2, 2)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"X": x})
    got = ng.onnx.load(path)(x)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_unsupported_operator_and_activation_named(tmp_path):
    from onnx import TensorProto, helper
    node = helper.make_node("Relu", ["X"], ["Y"], name="my_relu")
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "r.onnx"))
    with pytest.raises(ValueError, match="my_relu.*Relu"):
        ng.onnx.load(tmp_path / "r.onnx")
    path = _gru_node_model(tmp_path / "a.onnx", dict(activations=["Relu", "Tanh"]))
    with pytest.raises(ValueError, match="'g'.*Relu"):
        ng.onnx.load(path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="ONNX"):
        ng.onnx.load(tmp_path / "junk.onnx")


def test_hostile_attributes_and_shapes_named(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    with pytest.raises(ValueError, match="'g'.*'layout' must be an int"):
        ng.onnx.load(_gru_node_model(tmp_path / "l.onnx", dict(layout="x")))
    # a ConstantOfShape asking for 40 GB is refused before numpy allocates it
    big = helper.make_node("ConstantOfShape", ["shp"], ["Z"], name="big",
                           value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
    graph = helper.make_graph(
        [big, helper.make_node("GRU", ["X", "W", "R", "", "", "Z"], ["Y"], name="g", hidden_size=3)],
        "t", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([10**5, 10**5], np.int64), "shp"),
         numpy_helper.from_array(np.zeros((1, 9, 2), np.float32), "W"),
         numpy_helper.from_array(np.zeros((1, 9, 3), np.float32), "R")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]),
              str(tmp_path / "big.onnx"))
    model = ng.onnx.load(tmp_path / "big.onnx")
    with pytest.raises(ValueError, match="'big'.*more than"):
        model(np.zeros((4, 2, 2), np.float32))
    ng.onnx.export(ng.GRU(2, 3, seed=0), tmp_path / "l.onnx", with_lengths=True)
    model = ng.onnx.load(tmp_path / "l.onnx")
    with pytest.raises(ValueError, match="sequence_lens: expected integers"):
        model(np.zeros((4, 2, 2), np.float32), np.array([np.nan, 2.0]))


def test_import_torch_onnx_export(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.GRU(4, 5, 2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(tmp_path / "t.onnx"), dynamo=False, input_names=["x"],
                          output_names=["y", "h_n"], dynamic_axes={"x": {0: "b", 1: "t"}})
    graph = ng.onnx.load(tmp_path / "t.onnx")
    with torch.no_grad():
        ty, th = m(x)
    y, h = graph(x.numpy())
    np.testing.assert_allclose(y, ty.numpy(), atol=1e-5)
    np.testing.assert_allclose(h, th.numpy(), atol=1e-5)
    gru = graph.to_gru()
    assert gru.num_layers == 2 and gru.bidirectional and gru.batch_first
    np.testing.assert_allclose(gru(x.numpy())[0], ty.numpy(), atol=1e-5)
