"""`numgru convert` from ONNX, torch state_dicts and Keras files."""
import json
import os
import pickle

import numpy as np
import pytest

import numgru as ng
from numgru.cli import main

torch = pytest.importorskip("torch")


def test_torch_state_dict(tmp_path, capsys):
    torch.manual_seed(0)
    m = torch.nn.Sequential()
    m.add_module("enc", torch.nn.GRU(3, 4, 2, bidirectional=True))
    torch.save(m.state_dict(), tmp_path / "m.pt")
    assert main(["convert", str(tmp_path / "m.pt"), str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "2 layer(s), bidirectional" in out and "hidden_size=4" in out
    g = ng.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    with torch.no_grad():
        ty, _ = m.enc(torch.from_numpy(x))
    np.testing.assert_allclose(g(x)[0], ty.numpy(), atol=1e-5)


def test_torch_pickle_with_code_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/numgru_convert_pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"weight_ih_l0": Evil()}, f)
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "o")]) == 2
    assert not os.path.exists("/tmp/numgru_convert_pwned")
    assert "weights-only" in capsys.readouterr().out


def test_onnx(tmp_path, capsys):
    pytest.importorskip("onnx")
    g = ng.GRU(3, 4, 2, reset_after=False, seed=0)
    ng.onnx.export(g, tmp_path / "g.onnx")
    assert main(["convert", str(tmp_path / "g.onnx"), str(tmp_path / "g.safetensors")]) == 0
    assert "reset_after=False" in capsys.readouterr().out
    x = np.ones((4, 1, 3), np.float32)
    np.testing.assert_array_equal(ng.load(tmp_path / "g.safetensors")(x)[0], g(x)[0])


def test_keras_file(tmp_path):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, return_sequences=True),
                              keras.layers.GRU(4)])
    model.save(tmp_path / "k.keras")
    assert main(["convert", str(tmp_path / "k.keras"), str(tmp_path / "k.safetensors")]) == 0
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(ng.load(tmp_path / "k.safetensors")(x)[1][-1],
                               model(x).detach().cpu().numpy(), atol=1e-5)


def test_keras2_h5_weights(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    k, r, b = rng.standard_normal((3, 12)), rng.standard_normal((4, 12)), rng.standard_normal(12)
    with h5py.File(tmp_path / "k2.h5", "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": [
            {"class_name": "GRU", "config": {"name": "gru_1", "units": 4, "reset_after": False,
                                             "recurrent_activation": "hard_sigmoid"}}]}})
        grp = f.create_group("model_weights/gru_1/gru_1")
        grp["kernel:0"], grp["recurrent_kernel:0"], grp["bias:0"] = k, r, b
    assert main(["convert", str(tmp_path / "k2.h5"), str(tmp_path / "k2.safetensors")]) == 0
    g = ng.load(tmp_path / "k2.safetensors")
    assert g.gate_activation == "hard_sigmoid_keras2" and not g.reset_after


def test_bad_sources(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hello")
    assert main(["convert", str(tmp_path / "x.txt"), str(tmp_path / "o")]) == 2
    assert main(["convert", str(tmp_path / "nope.onnx"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().out


def test_sizes_are_read_from_shapes_that_fit(tmp_path, capsys):
    from numgru.interop.convert import model_from_state_dict
    from numgru.interop.keras import gru_from_keras_weights
    # an empty (0, 10**6) array would otherwise ask for a GRU of hidden_size 10**6
    with pytest.raises(ValueError, match=r"weight_hh_l0.*\(3\*H, H\)"):
        model_from_state_dict({"weight_ih_l0": np.zeros((0, 3)), "weight_hh_l0": np.zeros((0, 10**6))})
    with pytest.raises(ValueError, match="weight_ih / weight_hh missing"):
        model_from_state_dict({"weight_ih": np.zeros((12, 3)), "bias_ih": np.zeros(12)})
    with pytest.raises(ValueError, match="recurrent kernel of shape"):
        gru_from_keras_weights([np.zeros((3, 0)), np.zeros((10**6, 0))])
    with pytest.raises(ValueError, match="2-D kernels"):
        gru_from_keras_weights([np.zeros((3, 12)), np.zeros(())])
    torch.save({"weight_ih_l0": torch.zeros(12, 3), "weight_hh_l0": torch.zeros(12, 4)},
               tmp_path / "g.pt")
    assert main(["convert", str(tmp_path / "g.pt"), str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().out
