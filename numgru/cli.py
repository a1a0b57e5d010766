"""Command line: ``numgru info | bench | convert``."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info_dict():
    """Facts that decide numgru's speed: Numba, threads, BLAS, CPU, cache."""
    import numba
    import numpy as np

    import numgru
    from numgru.kernels import _jit

    out = {
        "numgru": numgru.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": None,
        "numba_num_threads": numba.get_num_threads(),
        "numba_cache": _jit.CACHE,
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
            os.path.dirname(numgru.__file__), "kernels", "__pycache__"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "float32_matmul_precision": numgru.get_float32_matmul_precision(),
        "blas": [],
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                            "OMP_NUM_THREADS", "NUMBA_NUM_THREADS") if k in os.environ},
    }
    try:
        # Numba names its threading layer only after a parallel region ran: run one tiny forward
        from numgru.kernels.dispatch import PARALLEL_MIN_ROWS
        from numgru.layers import GRU
        GRU(2, 2, seed=0)(np.zeros((1, PARALLEL_MIN_ROWS, 2), np.float32))
        out["numba_threading_layer"] = numba.threading_layer()
    except ValueError:
        out["numba_threading_layer"] = "not started (1 Numba thread)"
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (numba's BLAS comes from here)
        from threadpoolctl import threadpool_info
        out["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                               "num_threads", "filepath")}
                       for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        out["blas"] = "install threadpoolctl to see the BLAS library and kernel"
    return out


def cmd_info(args):
    info = info_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if k == "blas" and isinstance(v, list):
            for d in v:
                print(f"{'blas':24s} {d['internal_api']} {d['version']} kernel={d['architecture']} "
                      f"threads={d['num_threads']} ({d['filepath']})")
        else:
            print(f"{k:24s} {v}")
    return 0


def cmd_bench(args):
    from numgru.bench import main as bench_main
    return bench_main(args)


def cmd_convert(args):
    from numgru.interop.convert import convert
    return convert(args.src, args.dst, fmt=args.format)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="numgru", description="Fast CPU GRUs in Numba")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="Numba, threads, BLAS kernel, CPU, cache directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("bench", help="compare numgru with installed peers (torch, onnxruntime, openvino)")
    p.add_argument("--quick", action="store_true", help="a small grid, about 10 s on one thread")
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--seq-len", default=None, help="comma-separated T values")
    p.add_argument("--batch", default=None, help="comma-separated B values")
    p.add_argument("--hidden", default=None, help="comma-separated H values")
    p.add_argument("--peers", default="torch,onnxruntime,openvino",
                   help="comma-separated peers to time beside numgru (torch, onnxruntime, openvino), "
                        "or 'none' for numgru alone")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--bf16", action="store_true",
                   help="also time the model quantized to bfloat16 weights (GRU.quantize)")
    p.add_argument("--frozen", action="store_true",
                   help="also time the frozen copy (GRU.freeze: weights packed once, as a peer's session "
                        "packs them)")
    p.add_argument("--precision", default=None,
                   help="also time numgru under set_float32_matmul_precision: 'high', 'medium' or "
                        "'high,medium' (fewer bfloat16 products on AMX tiles; 'medium' also on "
                        "AVX512-BF16 without AMX; peers stay float32)")
    p.add_argument("--steps", action="store_true",
                   help="also time one step from Python (stream.step, GRUCell) against torch.nn.GRUCell "
                        "and ONNX Runtime, for the grid's batches up to 16 and hidden sizes")
    p.add_argument("--json", default="numgru-bench.json", help="where to write the results")
    p.add_argument("--plot", default="numgru-bench.png", help="where to draw the speedup plot")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("convert", help="convert .onnx / torch state_dict / Keras to numgru safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default=None, help="force the source format: onnx, torch, keras")
    p.set_defaults(func=cmd_convert)
    args = parser.parse_args(argv)
    return args.func(args)


def console(argv=None):
    """The ``numgru`` command: :func:`main`, with a bad ``bench`` option reported as argparse reports
    its own (usage, ``numgru: error: <message>``, exit status 2) rather than as a traceback. Called
    from Python, :func:`main` raises the ValueError instead."""
    from numgru.bench import BadOption
    try:
        return main(argv)
    except BadOption as exc:
        print(f"usage: numgru bench [options] (numgru bench --help)\nnumgru: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
