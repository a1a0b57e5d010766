"""ng.save / ng.load: round trips per object type, and hostile files."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

import numgru as ng


@pytest.mark.parametrize("obj", [
    ng.GRU(3, 4, 2, bidirectional=True, seed=0),
    ng.GRU(3, 4, reset_after=False, gate_activation="hard_sigmoid", alpha=0.3, beta=0.4, clip=2.0,
           batch_first=True, dtype=np.float64, seed=1),
    ng.GRU(3, 4, 3, go_backwards=True, bias=False, seed=2),
    ng.GRUCell(3, 5, seed=0),
    ng.Linear(4, 2, seed=0),
])
def test_roundtrip(tmp_path, obj):
    path = tmp_path / "m.safetensors"
    ng.save(obj, path)
    back = ng.load(path)
    assert type(back) is type(obj) and back.get_config() == obj.get_config()
    for k, v in obj.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    x = np.random.default_rng(0).standard_normal((2, 6, 3) if isinstance(obj, ng.GRU) else (2, 3 if not isinstance(obj, ng.Linear) else 4))
    out1, out2 = obj(x), back(x)
    np.testing.assert_array_equal(out1[0] if isinstance(out1, tuple) else out1,
                                  out2[0] if isinstance(out2, tuple) else out2)


def test_file_is_plain_safetensors_with_json_config(tmp_path):
    from safetensors import safe_open
    g = ng.GRU(3, 4, seed=0)
    path = ng.save(g, tmp_path / "g.safetensors")
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(g.state_dict())
    assert meta["format"] == "numgru" and meta["format_version"] == "1" and meta["kind"] == "GRU"
    assert json.loads(meta["config"])["hidden_size"] == 4


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/numgru_pwned",))


def test_pickle_is_refused_without_running(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Evil()))
    if os.path.exists("/tmp/numgru_pwned"):
        os.remove("/tmp/numgru_pwned")
    with pytest.raises(ValueError, match="not a numgru safetensors file"):
        ng.load(path)
    assert not os.path.exists("/tmp/numgru_pwned")


def test_random_truncated_and_mismatched_files(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="not a numgru safetensors file"):
        ng.load(p)
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match="only 3 bytes"):
        ng.load(p)
    good = ng.save(ng.GRU(3, 4, seed=0), tmp_path / "g.safetensors")
    data = open(good, "rb").read()
    p.write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="corrupted|truncated"):
        ng.load(p)
    with pytest.raises(ValueError, match="no such file"):
        ng.load(tmp_path / "missing")
    # a safetensors file from elsewhere
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(3, np.float32)}, str(p))
    with pytest.raises(ValueError, match="not written by numgru"):
        ng.load(p)
    # config says H=5 but tensors are for H=4
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    cfg = json.loads(header["__metadata__"]["config"])
    cfg["hidden_size"] = 5
    header["__metadata__"]["config"] = json.dumps(cfg)
    hb = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
    with pytest.raises(ValueError, match="does not match its config"):
        ng.load(p)
    # a few bytes of config asking for gigabytes are refused before anything is allocated
    for key, value in (("hidden_size", 2**40), ("num_layers", 10**6), ("input_size", 10**9)):
        header["__metadata__"]["config"] = json.dumps({**cfg, "hidden_size": 4, key: value})
        hb = json.dumps(header).encode()
        p.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
        with pytest.raises(ValueError, match="config describes .* parameter values, the tensors"):
            ng.load(p)
    header["__metadata__"]["kind"] = "os.system"
    hb = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
    with pytest.raises(ValueError, match="unknown kind"):
        ng.load(p)


def test_save_rejects_unknown_objects(tmp_path):
    with pytest.raises(TypeError, match="obj"):
        ng.save({"a": 1}, tmp_path / "x")


def test_save_and_export_refuse_paths_they_cannot_write(tmp_path):
    g = ng.GRU(3, 4, seed=0)
    for write in (ng.save, ng.onnx.export):
        with pytest.raises(ValueError, match="path: .* is a directory"):
            write(g, tmp_path)
        with pytest.raises(ValueError, match="path: no such directory"):
            write(g, tmp_path / "missing" / "m.bin")
        with pytest.raises(TypeError, match="path: expected a str or os.PathLike"):
            write(g, None)
    with pytest.raises(TypeError, match="path"):
        ng.load(3)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind
