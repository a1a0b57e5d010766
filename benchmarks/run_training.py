"""Training-step benchmark (a script): ``python benchmarks/run_training.py --threads 1,2``.

One step = forward_train + backward + Adam step (loss y.sum()) for numgru, and forward + autograd +
torch.optim.Adam for torch.nn.GRU, timed side by side in one process with threads pinned for both. The
input is data (torch's tensor does not require grad), so neither computes dLoss/dx.

``--shapes 128x64x256,32x16x64`` (the default) gives the points as T x B x H, or T x B x I x H for I
inputs other than H.

``--precision highest,high,medium`` times each precision, set for both libraries alike
(``ng.set_float32_matmul_precision`` and ``torch.set_float32_matmul_precision``): numgru then keeps
fewer bfloat16 products on AMX tiles; torch on the CPU takes bfloat16 matmuls at "medium" and
changes nothing at "high".
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import numgru as ng  # noqa: E402
import numgru.bench as nb  # noqa: E402  (not "from ... import time_it": asv would collect it)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default="1,2")
    p.add_argument("--precision", default="highest", help="comma-separated: highest, high, medium")
    p.add_argument("--shapes", default="128x64x256,32x16x64", help="comma-separated TxBxH or TxBxIxH")
    args = p.parse_args()
    shapes = []
    for item in args.shapes.split(","):
        v = [int(t) for t in item.split("x") if t.isdigit()]
        if len(v) != len(item.split("x")) or len(v) not in (3, 4) or min(v) < 1:
            p.error(f"--shapes: expected TxBxH or TxBxIxH with positive sizes, got {item!r}")
        shapes.append((v[0], v[1], v[2], v[-1]))
    for T, B, I, H in shapes:
        # about: the input (float64 while drawn), and per library the projection, the tape, the
        # gate gradients and the outputs (float32), and the weights with their gradients and moments
        need = 8 * T * B * I + 2 * 4 * T * B * (I + 16 * H) + 2 * 4 * 6 * H * (I + H) * 4
        try:
            nb.check_fits(need, f"--shapes: {T}x{B}x{I}x{H}")
        except ValueError as exc:
            p.error(str(exc))
    try:
        threads = nb.thread_counts(args.threads)
    except ValueError as exc:
        p.error(str(exc))
    if not threads:
        p.error("--threads: expected comma-separated thread counts")
    precisions = args.precision.split(",")
    if not set(precisions) <= set(ng.kernels.dispatch.MATMUL_ORDERS):
        p.error(f"--precision: expected highest, high and/or medium, got {args.precision!r}")
    import torch
    print("precision  thr    T    B    I    H  numgru ms  torch ms  speedup")
    for prec in precisions:
        ng.set_float32_matmul_precision(prec)
        torch.set_float32_matmul_precision(prec)
        for n in threads:
            run(prec, n, torch, shapes)


def run(prec, n, torch, shapes):
    """Time both libraries' step at this precision and thread count, and print the rows."""
    with nb.pinned_threads(n):
        for T, B, I, H in shapes:
            g = ng.GRU(I, H, seed=0)
            m = g.to_torch()
            x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
            tx = torch.from_numpy(x)
            opt = ng.optim.Adam(g.named_parameters(), lr=1e-3)
            topt = torch.optim.Adam(m.parameters(), lr=1e-3)

            def ours():
                y, _, tape = g.forward_train(x)
                _, _, grads = g.backward(tape, np.ones_like(y), input_grad=False)
                opt.step(grads)

            def theirs():
                topt.zero_grad()
                m(tx)[0].sum().backward()
                topt.step()
            a, b = nb.time_it(ours, budget=1.0), nb.time_it(theirs, budget=1.0)
            print(f"{prec:>9s} {n:4d} {T:4d} {B:4d} {I:4d} {H:4d} {a * 1e3:10.2f} {b * 1e3:9.2f} {b / a:8.2f}")


if __name__ == "__main__":
    main()
