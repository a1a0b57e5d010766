"""numgru bench: every installed peer is checked against numgru before it is timed, rows are complete."""
import json
import subprocess
import sys

import numpy as np
import pytest

from numgru import bench


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)


def test_point_times_numgru_and_checked_peers(tmp_path):
    peers = bench.available_peers(["torch", "onnxruntime"])
    row = bench.run_point(5, 2, 8, 1, peers, str(tmp_path), repeat=2, budget=0.01)
    assert row["numgru_ms"] > 0 and row["numgru_gflops"] > 0
    assert row["numgru_seq_per_s"] == pytest.approx(2 / (row["numgru_ms"] / 1e3))
    for p in peers:
        assert row[f"{p}_max_abs_diff"] <= bench.TOL
        assert row[f"speedup_vs_{p}"] == pytest.approx(row[f"{p}_ms"] / row["numgru_ms"])
    table = bench.format_table([row], peers)
    assert table.splitlines()[0].split()[:4] == ["thr", "T", "B", "H"]


def test_point_with_bf16_times_the_quantized_copy(tmp_path):
    peers = bench.available_peers(["onnxruntime"])
    row = bench.run_point(5, 2, 8, 1, peers, str(tmp_path), repeat=2, budget=0.01, bf16=True)
    assert row["numgru_bf16_ms"] > 0
    assert 0 < row["numgru_bf16_max_abs_diff"] < 2e-2
    for p in peers:
        assert row[f"bf16_speedup_vs_{p}"] == pytest.approx(row[f"{p}_ms"] / row["numgru_bf16_ms"])
    assert "bf16 ms" in bench.format_table([row], peers).splitlines()[0]


def test_point_with_frozen_times_the_frozen_copy(tmp_path):
    peers = bench.available_peers(["onnxruntime"])
    row = bench.run_point(5, 2, 8, 1, peers, str(tmp_path), repeat=2, budget=0.01, frozen=True)
    assert row["numgru_frozen_ms"] > 0 and row["numgru_frozen_max_abs_diff"] < 1e-5
    for p in peers:
        assert row[f"frozen_speedup_vs_{p}"] == pytest.approx(row[f"{p}_ms"] / row["numgru_frozen_ms"])
    assert "frozen ms" in bench.format_table([row], peers).splitlines()[0]
    step = bench.run_step_point(2, 8, 1, [], str(tmp_path), calls=3, blocks=2, frozen=True)
    assert step["stream_frozen_us"] > 0 and step["cell_frozen_us"] > 0 and step["forward_frozen_us"] > 0
    assert "frozen stream us" in bench.format_step_table([step], [])
    assert "frozen GRU(x,h) us" in bench.format_step_table([step], [])


def test_point_with_precisions_times_each_and_restores_the_setting(tmp_path):
    import numgru as ng
    peers = bench.available_peers(["onnxruntime"])
    row = bench.run_point(5, 2, 8, 1, peers, str(tmp_path), repeat=2, budget=0.01,
                          precisions=("high", "medium"))
    assert ng.get_float32_matmul_precision() == "highest"
    for q in ("high", "medium"):
        assert row[f"numgru_{q}_ms"] > 0 and 0 <= row[f"numgru_{q}_max_abs_diff"] < 1e-2
        for p in peers:
            assert row[f"{q}_speedup_vs_{p}"] == pytest.approx(row[f"{p}_ms"] / row[f"numgru_{q}_ms"])
    head = bench.format_table([row], peers).splitlines()[0]
    assert "high ms" in head and "medium err" in head


def test_main_names_a_bad_precision():
    from numgru.cli import main
    with pytest.raises(ValueError, match="--precision"):
        main(["bench", "--precision", "low", "--peers", "", "--plot", "", "--json", ""])


@pytest.mark.parametrize("option, value, message", [
    ("--seq-len", "0", "--seq-len: expected integers >= 1"),  # (ONNX Runtime aborts on T = 0)
    ("--batch", "-2", "--batch: expected integers >= 1"),
    ("--hidden", "64,x", "--hidden: expected comma-separated integers"),
    ("--threads", "0", "--threads: expected integers >= 1"),
    ("--threads", "100000", "--threads: at most"),
    ("--repeat", "0", "--repeat: expected an integer >= 1"),
    ("--json", "/no/such/folder/b.json", "--json: folder"),
    ("--plot", "/no/such/folder/b.png", "--plot: folder"),
    ("--json", ".", "--json: '.' is a folder"),
    ("--hidden", "10000000", "--seq-len/--batch/--hidden: the point T=3, B=1, H=10000000 needs about"),
])
def test_main_names_a_bad_option_before_running(option, value, message, capsys):
    from numgru.cli import main
    args = {"--seq-len": "3", "--batch": "1", "--hidden": "4", "--peers": "", "--json": "", "--plot": ""}
    args[option] = value
    with pytest.raises(ValueError, match=message):
        main(["bench"] + [a for kv in args.items() for a in kv])
    assert "first call" not in capsys.readouterr().out  # nothing ran


@pytest.mark.parametrize("argv, message", [
    (["bench", "--threads", "0"], "--threads: expected integers >= 1"),
    (["bench", "--peers", "foo", "--seq-len", "2", "--batch", "1", "--hidden", "4"],
     "--peers: unknown peer 'foo'"),
])
def test_console_reports_a_bad_option_as_argparse_does(argv, message, capsys):
    """The ``numgru`` command (``console``): exit status 2 and one error line naming the option, no
    traceback; ``main`` itself still raises (the cases above)."""
    from numgru.cli import console
    assert console(argv) == 2
    err = capsys.readouterr().err
    assert f"numgru: error: {message}" in err and "Traceback" not in err


def test_peers_none_times_numgru_alone(tmp_path, capsys):
    from numgru.cli import main
    out = tmp_path / "b.json"
    assert main(["bench", "--seq-len", "3", "--batch", "1", "--hidden", "4", "--peers", "none",
                 "--repeat", "1", "--json", str(out), "--plot", ""]) == 0
    result = json.loads(out.read_text())
    assert result["peers"] == [] and result["rows"][0]["numgru_ms"] > 0
    assert "peers  none\n" in capsys.readouterr().out


def test_unknown_peer_is_named():
    with pytest.raises(ValueError, match="--peers"):
        bench.available_peers(["tensorflow"])


def test_a_peer_that_disagrees_is_reported_not_timed(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.PEERS, "torch", lambda gru, x, threads: (lambda: np.zeros((5, 2, 8))))
    row = bench.run_point(5, 2, 8, 1, ["torch"], str(tmp_path), repeat=1, budget=0.01)
    assert "differs" in row["torch_error"] and "torch_ms" not in row


@pytest.mark.parametrize("threads", [1, 2])
def test_backends_pause_only_where_pools_may_spin(threads, tmp_path, monkeypatch):
    # the pause before each backend's timing lets other pools' workers go idle: none run on one thread
    monkeypatch.setattr(bench, "SETTLE_S", 0.25)
    pauses = []
    monkeypatch.setattr(bench.time, "sleep", pauses.append)
    bench.run_point(3, 1, 4, threads, [], str(tmp_path), repeat=1, budget=0.01)
    bench.run_step_point(1, 4, threads, [], str(tmp_path), calls=2, blocks=1)
    assert len(pauses) == bench.ROUNDS + 3 * bench.ROUNDS  # numgru; its stream, its cell and its one-step forward
    assert set(pauses) == {0.25 if threads > 1 else 0.0}


def test_main_writes_json(tmp_path, capsys):
    from numgru.cli import main
    out = tmp_path / "b.json"
    assert main(["bench", "--seq-len", "3", "--batch", "1", "--hidden", "4", "--peers", "",
                 "--repeat", "1", "--json", str(out), "--plot", ""]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["T"], r["B"], r["H"]) for r in rows] == [(3, 1, 4)]
    assert "BLAS" in capsys.readouterr().out


def test_step_point_times_stream_cell_and_checked_peers(tmp_path):
    peers = bench.available_peers(["torch", "onnxruntime", "openvino"])
    row = bench.run_step_point(2, 8, 1, peers, str(tmp_path), bf16=True, calls=3, blocks=2)
    assert row["stream_us"] > 0 and row["cell_us"] > 0 and row["forward_us"] > 0 and row["stream_bf16_us"] > 0
    for p in set(peers) & set(bench.STEP_PEERS):
        assert "error" not in " ".join(k for k in row if k.startswith(p)), row
        assert row[f"step_speedup_vs_{p}"] == pytest.approx(row[f"{p}_us"] / row["stream_us"])
    assert "openvino_us" not in row
    head = bench.format_step_table([row], peers).splitlines()[0].split()
    assert head[:5] == ["thr", "B", "H", "stream", "us"]


def test_a_step_peer_that_disagrees_is_reported_not_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_peer_ort", lambda gru, x, threads, tmpdir: (lambda: np.zeros((1, 1, 2, 8))))
    row = bench.run_step_point(2, 8, 1, ["onnxruntime"], str(tmp_path), calls=2, blocks=1)
    assert "differs" in row["onnxruntime_error"] and "onnxruntime_us" not in row


def test_main_with_steps_writes_them(tmp_path, capsys):
    from numgru.cli import main
    out = tmp_path / "b.json"
    assert main(["bench", "--seq-len", "3", "--batch", "1,32", "--hidden", "4", "--peers", "", "--steps",
                 "--repeat", "1", "--json", str(out), "--plot", ""]) == 0
    steps = json.loads(out.read_text())["steps"]
    assert [(r["B"], r["H"]) for r in steps] == [(1, 4)]  # batches above 16 are not stepped
    assert "one step from Python" in capsys.readouterr().out


def test_peers_leave_numba_the_layer_it_takes_alone():
    """Numba takes its threading layer when it first launches its threads, and OpenVINO's import
    brings oneTBB, which Numba would then take: after ``available_peers`` Numba launches on the layer
    it takes in a process without the peers, so numgru is timed on the layer its users get. In
    fresh processes, since this one's threads may have started already."""
    def run(code):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    alone = run("import numba; numba.get_num_threads(); print(numba.threading_layer())")
    with_peers = run("import numba; from numgru import bench; "
                     "bench.available_peers(['openvino', 'torch', 'onnxruntime']); "
                     "numba.get_num_threads(); print(numba.threading_layer())")
    assert with_peers == alone


def test_pinned_threads_imports_torch_before_numba_launches():
    """torch's CPU build and Numba's OpenMP layer share GNU OpenMP; with Numba's threads launched
    before torch's import, torch's multi-threaded forwards ran tens of times slower. In a fresh
    process, since this one's threads may have started already."""
    pytest.importorskip("torch")
    code = (
        "import sys\n"
        "import numba.np.ufunc.parallel as parallel\n"
        "from numgru import bench\n"
        "real = parallel._launch_threads\n"
        "seen = []\n"
        "def spy():\n"
        "    seen.append('torch' in sys.modules)\n"
        "    return real()\n"
        "parallel._launch_threads = spy\n"
        "with bench.pinned_threads(2):\n"
        "    pass\n"
        "print(seen[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_table_script_prints_the_json_as_markdown(tmp_path, capsys):
    """benchmarks/table.py (README's "Reproduce"): one row per point and thread count, times of
    1000 ms and more without an exponent, a peer missing from a row marked n/a."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "bench_table", Path(__file__).resolve().parent.parent / "benchmarks" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    row = dict(T=128, B=64, H=1024, threads=1, numgru_ms=1031.2, numgru_gflops=100.2, torch_ms=1295.4,
               speedup_vs_torch=1.256, numgru_frozen_ms=999.7, frozen_speedup_vs_torch=1.296)
    small = dict(row, B=1, H=64, numgru_ms=0.1184, numgru_frozen_ms=0.114)
    del small["torch_ms"], small["speedup_vs_torch"], small["frozen_speedup_vs_torch"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(dict(peers=["torch"], rows=[row, small], cpu="x", cpu_count=2, blas=[],
                                    env="")))
    table.main(str(path), points=[(128, 1, 64), (128, 64, 1024)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| 1 | 128 | 1 | 64 | 0.118 | 100 | n/a | - | 0.114 | - |"
    assert lines[3] == "| 1 | 128 | 64 | 1024 | 1031 | 100 | 1295 | 1.26 | 1000 | 1.30 |"
    assert "e+" not in "\n".join(lines)
