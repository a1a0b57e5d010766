"""Random configurations against torch.nn.GRU (a script): ``python benchmarks/run_random.py``.

The grid of ``numgru bench`` and the asv suite covers I = H, one layer, float32, every row running
every step. This draws shapes off that grid — sequence length, batch, input and hidden size, layers,
directions, float32 or float64, variable lengths, batch-first input, one or two threads — and times
numgru's call (``--mode infer``), training step (``--mode train``: forward_train, backward and an
Adam step, against torch's forward, autograd and Adam), ``GRUCell`` step given h (``--mode cell``,
against ``torch.nn.GRUCell``; the draw's B, I, H and dtype, one step) or ``stream.step``
(``--mode stream``: the draw's model made unidirectional, one step of B rows with the state carried,
against ``torch.nn.GRU`` called on one step with its state carried) beside torch's in the same
process, threads pinned for both. Each line ends with torch's time over numgru's; ``<-- TRAILS``
marks a point where numgru is the slower, so that a sweep shows where "faster than PyTorch
everywhere" does not hold yet.

``--seed`` picks the draw (the same seed draws the same configurations), ``--count`` how many.
``--wide`` draws hidden sizes of 640–1024 instead (the grid's H = 1024 row is one layer of I = H
and T ≥ 32), fewer steps and batches up to 128, with h0 given half the time.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import numgru as ng  # noqa: E402
import numgru.bench as nb  # noqa: E402


def draw(rng, wide=False):
    """One configuration: a dict of the sizes and switches (``wide``: H of 640–1024, see ``--wide``)."""
    if wide:
        H = int(rng.choice([640, 768, 1024]))
        B = int(rng.choice([1, 4, 16, 24, 32, 64, 128]))
        return dict(T=int(rng.choice([1, 2, 3, 5, 10])), B=B, I=int(rng.choice([H, 64, 300])), H=H,
                    L=int(rng.choice([1, 1, 2])), D=int(rng.choice([1, 2])), threads=int(rng.choice([1, 2])),
                    f64=bool(rng.random() < 0.3), lengths=bool(B > 1 and rng.random() < 0.2),
                    batch_first=False, h0=bool(rng.random() < 0.5))
    H = int(rng.choice([8, 16, 32, 64, 100, 128, 200, 256, 384, 512]))
    B = int(rng.choice([1, 2, 3, 4, 7, 8, 16, 32, 64, 128]))
    return dict(T=int(rng.choice([1, 2, 5, 10, 32, 100])), B=B, I=int(rng.choice([H, 1, 3, 16, 40, 300])), H=H,
                L=int(rng.choice([1, 1, 2, 3])), D=int(rng.choice([1, 2])), threads=int(rng.choice([1, 2])),
                f64=bool(rng.random() < 0.25), lengths=bool(B > 1 and rng.random() < 0.3),
                batch_first=bool(rng.random() < 0.3), h0=False)


def run_one(c, mode, rng, torch):
    """(numgru's time, torch's time) in seconds for configuration ``c``."""
    if mode == "stream":  # a stream steps a unidirectional model, B rows a step, from the zero state
        c = dict(c, D=1, batch_first=False, lengths=False, h0=False)
    tdt = torch.float64 if c["f64"] else torch.float32
    tm = torch.nn.GRU(c["I"], c["H"], num_layers=c["L"], bidirectional=c["D"] == 2,
                      batch_first=c["batch_first"]).to(tdt)
    g = ng.GRU.from_torch(tm)
    T, B = c["T"], c["B"]
    shape = (B, T, c["I"]) if c["batch_first"] else (T, B, c["I"])
    x = rng.standard_normal(shape).astype(np.float64 if c["f64"] else np.float32)
    xt = torch.from_numpy(x)
    lengths = np.sort(rng.integers(1, T + 1, B))[::-1].copy() if c["lengths"] else None
    h0 = rng.standard_normal((c["L"] * c["D"], B, c["H"])).astype(x.dtype) if c["h0"] else None
    h0t = None if h0 is None else torch.from_numpy(h0)
    if mode == "cell":
        tc = torch.nn.GRUCell(c["I"], c["H"]).to(tdt)
        cell = ng.GRUCell.from_torch(tc)
        xc = rng.standard_normal((B, c["I"])).astype(x.dtype)
        hc = rng.standard_normal((B, c["H"])).astype(x.dtype)
        xct, hct = torch.from_numpy(xc), torch.from_numpy(hc)

        def ours():
            return cell(xc, hc)

        def theirs():
            with torch.inference_mode():
                return tc(xct, hct)
    elif mode == "stream":
        stream = g.stream(batch_size=B)
        xs = x[0]
        xst = torch.from_numpy(xs)[None]
        state = [torch.zeros(c["L"], B, c["H"], dtype=tdt)]

        def ours():
            return stream.step(xs)

        def theirs():
            with torch.inference_mode():
                y, state[0] = tm(xst, state[0])
            return y
    elif mode == "infer":
        def ours():
            return g(x, h0, lengths=lengths)

        def theirs():
            with torch.inference_mode():
                if lengths is None:
                    return tm(xt, h0t)
                return tm(torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                                  batch_first=c["batch_first"]), h0t)
    else:
        opt = ng.optim.Adam(g.named_parameters(), lr=1e-3)
        topt = torch.optim.Adam(tm.parameters(), lr=1e-3)

        def ours():
            y, _, tape = g.forward_train(x, h0, lengths=lengths)
            _, _, grads = g.backward(tape, dy=np.ones_like(y), input_grad=False)
            opt.step(grads)

        def theirs():
            topt.zero_grad()
            if lengths is None:
                tm(xt, h0t)[0].sum().backward()
            else:  # the sum of the valid steps' outputs, as ours (padded outputs are zero)
                tm(torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                           batch_first=c["batch_first"]), h0t)[0].data.sum().backward()
            topt.step()
    a = nb.time_it(ours, budget=0.3)
    b = nb.time_it(theirs, budget=0.3)
    return min(a, nb.time_it(ours, budget=0.3)), b


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--mode", choices=["infer", "train", "cell", "stream"], default="infer")
    p.add_argument("--wide", action="store_true", help="hidden sizes of 640-1024, h0 given half the time")
    args = p.parse_args()
    if args.count < 1:
        p.error(f"--count: expected a positive count, got {args.count}")
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        p.error("needs two Numba threads (NUMBA_NUM_THREADS)")
    import torch
    rng = np.random.default_rng(args.seed)
    trails = 0
    for i in range(args.count):
        c = draw(rng, args.wide)
        with nb.pinned_threads(c["threads"]):
            a, b = run_one(c, args.mode, rng, torch)
        flag = "  <-- TRAILS" if b < a else ""
        trails += b < a
        shown = (("B", "I", "H", "threads", "f64") if args.mode == "cell" else
                 ("B", "I", "H", "L", "threads", "f64") if args.mode == "stream" else c)
        sizes = " ".join(f"{k}={c[k]}" for k in shown)
        print(f"{i:3d} {args.mode} {sizes}: numgru {a * 1e3:.3f} ms, torch {b * 1e3:.3f} ms, x{b / a:.2f}{flag}",
              flush=True)
    print(f"numgru trails torch at {trails} of {args.count}")


if __name__ == "__main__":
    main()
