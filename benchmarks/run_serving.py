"""Serving benchmark (a script, not part of the asv suite): ``python benchmarks/run_serving.py``.

1. Throughput and latency of BatchingEngine with 1, 4 and 16 client threads, each submitting single
   sequences (T uniform in [20, 200], I = 64, H = 256) one after another, against (a) each client
   calling the model itself and (b) torch.nn.GRU called per request.
2. Per-step latency of ``stream.step`` at B = 1, H = 128 against torch.nn.GRUCell and an ONNX Runtime
   single-step call.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import numgru as ng  # noqa: E402
import numgru.bench as nb  # noqa: E402


def closed_loop(call, seqs, n_clients):
    """n_clients threads share the sequences; each sends one, waits, sends the next."""
    lat = []
    lock = threading.Lock()
    idx = iter(range(len(seqs)))

    def client():
        while True:
            with lock:
                i = next(idx, None)
            if i is None:
                return
            t0 = time.perf_counter()
            call(seqs[i])
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(lat) * 1e3
    return {"seq_per_s": len(seqs) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def step_latency(fn, n=3000):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.requests < 1:
        p.error(f"--requests: expected an integer >= 1, got {args.requests}")
    try:
        nb.check_output(args.json, "--json")
    except ValueError as exc:
        p.error(str(exc))
    try:  # before numgru's first call starts Numba's threads (see numgru.bench.pinned_threads)
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    gru = ng.GRU(64, 256, seed=0)
    seqs = [rng.standard_normal((int(rng.integers(20, 201)), 64)).astype(np.float32)
            for _ in range(args.requests)]
    gru(seqs[0])
    out = {"engine": {}, "direct": {}, "torch": {}}
    torch_call = None
    if torch is not None:
        tg = gru.to_torch().eval()

        def torch_call(x):
            with torch.inference_mode():
                tg(torch.from_numpy(x))
    for n in (1, 4, 16):
        with ng.BatchingEngine(gru, max_batch_size=64, max_delay_ms=2.0) as eng:
            eng.submit(seqs[0]).result()
            out["engine"][n] = closed_loop(lambda x: eng.submit(x).result(), seqs, n)
            out["engine"][n]["mean_batch_size"] = eng.stats()["mean_batch_size"]
        out["direct"][n] = closed_loop(gru, seqs, n)
        if torch_call is not None:
            out["torch"][n] = closed_loop(torch_call, seqs, n)
    print("clients | engine seq/s p50 p99 (mean batch) | direct seq/s p50 p99 | torch seq/s p50 p99")
    for n in (1, 4, 16):
        e, d = out["engine"][n], out["direct"][n]
        t = out["torch"].get(n)
        print(f"{n:7d} | {e['seq_per_s']:7.0f} {e['p50_ms']:6.2f} {e['p99_ms']:6.2f} ({e['mean_batch_size']:.1f})"
              f" | {d['seq_per_s']:7.0f} {d['p50_ms']:6.2f} {d['p99_ms']:6.2f}"
              + (f" | {t['seq_per_s']:7.0f} {t['p50_ms']:6.2f} {t['p99_ms']:6.2f}" if t else " | n/a"))
    # streaming step latency, B = 1, H = 128
    H = 128
    g = ng.GRU(H, H, seed=0)
    st = g.stream(1)
    x = rng.standard_normal((1, H)).astype(np.float32)
    lat = {"numgru_stream_step_us": step_latency(lambda: st.step(x))}
    cell = ng.GRUCell(H, H, seed=0)
    h = np.zeros((1, H), np.float32)
    lat["numgru_cell_us"] = step_latency(lambda: cell(x, h))
    if torch_call is not None:
        tc = torch.nn.GRUCell(H, H).eval()
        tx, th = torch.from_numpy(x), torch.from_numpy(h)

        def tstep():
            with torch.inference_mode():
                tc(tx, th)
        lat["torch_grucell_us"] = step_latency(tstep)
    try:
        import onnxruntime as ort
        with tempfile.TemporaryDirectory() as d:
            path = ng.onnx.export(g, os.path.join(d, "g.onnx"), with_initial_h=True)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feeds = {"x": x[None], "h0": h[None]}
            lat["onnxruntime_step_us"] = step_latency(lambda: sess.run(None, feeds))
    except ImportError:
        pass
    out["step_latency_B1_H128"] = lat
    for k, v in lat.items():
        print(f"{k:28s} {v:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
