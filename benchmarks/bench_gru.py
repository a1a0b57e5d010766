"""numgru against PyTorch CPU: forward throughput, training step, step latency, compile, memory."""
import numpy as np

import numgru as ng
import numgru.bench as nb  # (not "from ... import": asv would collect what it imports)

from .common import data, grid, pin, require_torch, timer, warm_up

BACKENDS = ["numgru", "torch"]
#: the forward also times a frozen copy (GRU.freeze: weights packed once, as ONNX Runtime's session does)
#: and a quantized one (GRU.quantize("bfloat16"): bfloat16 weights, float32 arithmetic), and forward and
#: training the model under ng.set_float32_matmul_precision("high" / "medium") (fewer bfloat16
#: products on AMX tiles; torch stays at its default)
FORWARD_BACKENDS = ["numgru", "numgru_frozen", "numgru_bf16", "numgru_high", "numgru_medium", "torch"]
TRAIN_BACKENDS = ["numgru", "numgru_high", "numgru_medium", "torch"]
PRECISIONS = {"numgru_high": "high", "numgru_medium": "medium"}


def _set_precision(backend):
    """Set the precision ``backend`` runs at; returns the call that restores the one before."""
    return nb.set_precision(PRECISIONS.get(backend, "highest"))


class Forward:
    """One-layer forward, I = H, float32; time per call (throughput = B / time). ``numgru_frozen``:
    the model's ``freeze()`` copy; ``numgru_bf16``: its ``quantize("bfloat16")`` copy;
    ``numgru_high`` / ``numgru_medium``: the model at that float32 matmul precision."""
    params = grid(([16, 64, 256, 1024], [1, 16, 64], [64, 256, 1024], FORWARD_BACKENDS, [1, "all"]),
                  ([64, 256], [1, 64], [64, 256], FORWARD_BACKENDS, [1, "all"]),
                  ([64], [16], [256], FORWARD_BACKENDS, [1]))
    param_names = ["seq_len", "batch", "hidden_size", "backend", "threads"]
    timer = timer

    def setup(self, T, B, H, backend, threads):
        self.undo = pin(threads)
        self.restore = _set_precision(backend)
        self.gru = ng.GRU(H, H, seed=0)
        self.x = data(T, B, H)
        if backend == "numgru_frozen":
            self.gru = self.gru.freeze()
        elif backend == "numgru_bf16":
            self.gru = self.gru.quantize("bfloat16")
        if backend == "torch":
            torch = require_torch()
            self.m = self.gru.to_torch()
            self.tx = torch.from_numpy(self.x)
            self.inference = torch.inference_mode
        warm_up(lambda: self.time_forward(T, B, H, backend, threads))

    def teardown(self, *args):
        getattr(self, "undo", lambda: None)()
        getattr(self, "restore", lambda: None)()

    def time_forward(self, T, B, H, backend, threads):
        if backend != "torch":
            self.gru(self.x)
        else:
            with self.inference():
                self.m(self.tx)


class TrainStep:
    """forward_train + backward (loss = y.sum()), float32, one layer. The input is data: torch's tensor
    does not require grad, so neither library computes dLoss/dx (numgru: ``input_grad=False``).
    ``numgru_high`` / ``numgru_medium``: numgru at that float32 matmul precision."""
    params = grid(([32, 128], [16, 64], [64, 256], TRAIN_BACKENDS),
                  ([32, 128], [64], [64, 256], TRAIN_BACKENDS),
                  ([32], [16], [64], TRAIN_BACKENDS))
    param_names = ["seq_len", "batch", "hidden_size", "backend"]
    timer = timer

    def setup(self, T, B, H, backend):
        self.undo = pin(1)
        self.restore = _set_precision(backend)
        self.gru = ng.GRU(H, H, seed=0)
        self.x = data(T, B, H)
        if backend == "torch":
            torch = require_torch()
            self.m = self.gru.to_torch()
            self.tx = torch.from_numpy(self.x)
        warm_up(lambda: self.time_train_step(T, B, H, backend))

    def teardown(self, *args):
        getattr(self, "undo", lambda: None)()
        getattr(self, "restore", lambda: None)()

    def time_train_step(self, T, B, H, backend):
        if backend != "torch":
            y, h, tape = self.gru.forward_train(self.x)
            self.gru.backward(tape, np.ones_like(y), input_grad=False)
        else:
            self.m.zero_grad()
            self.m(self.tx)[0].sum().backward()


#: consecutive steps per timed call of :class:`StepLatency`. asv's runner times one call per sample
#: after running setup anew (asv#966), and a single µs step right after a fresh setup read 40–50 %
#: above a stream's steady state (B = 1, H = 256, one thread: 27.7–28.2 µs against 17.6–18.5)
STEPS = 64


class StepLatency:
    """``STEPS`` consecutive recurrent steps of one sequence from Python (a step: the time / STEPS):
    numgru stream (float32, a ``freeze()`` copy and a ``quantize("bfloat16")`` copy) / GRUCell / a
    GRU's forward of one step from h (``y, h = gru(x_t, h)``, as a PyTorch user decodes) against
    torch.nn.GRUCell and torch.nn.GRU's one step, for B rows, threads pinned for both; the cells and
    forwards feed their state back."""
    STEP = ["numgru_stream", "numgru_stream_frozen", "numgru_stream_bf16", "numgru_cell", "numgru_forward_step",
            "torch", "torch_forward_step"]
    params = grid(([128, 256], [1, 8], STEP, [1, "all"]),
                  ([128, 256], [1, 8], STEP, [1, "all"]),
                  ([256], [1], STEP, [1]))
    param_names = ["hidden_size", "batch", "backend", "threads"]
    timer = timer

    def setup(self, H, B, backend, threads):
        self.undo = pin(threads)
        self.x = data(B, H)
        self.h = data(B, H, seed=1)
        if backend == "numgru_stream":
            self.s = ng.GRU(H, H, seed=0).stream(B)
        elif backend == "numgru_stream_frozen":
            self.s = ng.GRU(H, H, seed=0).freeze().stream(B)
        elif backend == "numgru_stream_bf16":
            self.s = ng.GRU(H, H, seed=0).quantize("bfloat16").stream(B)
        elif backend == "numgru_cell":
            self.c = ng.GRUCell(H, H, seed=0)
        elif backend == "numgru_forward_step":
            self.c = ng.GRU(H, H, seed=0)
            self.x, self.h = self.x[None], self.h[None]
        else:
            torch = require_torch()
            if backend == "torch":
                self.c = torch.nn.GRUCell(H, H)
            else:
                self.c = torch.nn.GRU(H, H)
                self.x, self.h = self.x[None], self.h[None]
            self.tx, self.th = torch.from_numpy(self.x), torch.from_numpy(self.h)
            self.inference = torch.inference_mode
        warm_up(lambda: self.time_steps(H, B, backend, threads))

    def teardown(self, *args):
        getattr(self, "undo", lambda: None)()

    def time_steps(self, H, B, backend, threads):
        if backend in ("numgru_stream", "numgru_stream_frozen", "numgru_stream_bf16"):
            step, x = self.s.step, self.x
            for _ in range(STEPS):
                step(x)
        elif backend == "numgru_cell":
            cell, x, h = self.c, self.x, self.h
            for _ in range(STEPS):
                h = cell(x, h)
        elif backend == "numgru_forward_step":
            gru, x, h = self.c, self.x, self.h
            for _ in range(STEPS):
                _, h = gru(x, h)
        elif backend == "torch_forward_step":
            gru, x, h = self.c, self.tx, self.th
            with self.inference():
                for _ in range(STEPS):
                    _, h = gru(x, h)
        else:
            cell, x, h = self.c, self.tx, self.th
            with self.inference():
                for _ in range(STEPS):
                    h = cell(x, h)


class Speedup:
    """numgru and torch timed in the same process; the value is torch time / numgru time (the float32
    model, and its ``quantize("bfloat16")`` copy)."""
    params = grid(([(128, 1, 256), (128, 16, 256), (128, 64, 256), (128, 1, 1024), (128, 64, 1024)],),
                  ([(128, 1, 256), (128, 16, 256), (128, 64, 256), (128, 1, 1024)],),
                  ([(32, 16, 64)],))
    param_names = ["T_B_H"]

    def setup(self, point):
        require_torch()

    def track_speedup_vs_torch(self, point):
        return _torch_over_numgru(point, lambda gru: gru)

    track_speedup_vs_torch.unit = "ratio"

    def track_bf16_speedup_vs_torch(self, point):
        return _torch_over_numgru(point, lambda gru: gru.quantize("bfloat16"))

    track_bf16_speedup_vs_torch.unit = "ratio"


def _torch_over_numgru(point, copy):
    """torch.nn.GRU's time over ``copy(gru)``'s for a one-layer forward at (T, B, H), one thread."""
    import torch

    from numgru.bench import time_it
    T, B, H = point
    undo = pin(1)
    try:
        gru = ng.GRU(H, H, seed=0)
        m = gru.to_torch()
        model = copy(gru)
        x = data(T, B, H)
        tx = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                m(tx)
        return time_it(run_torch, budget=0.3) / time_it(lambda: model(x), budget=0.3)
    finally:
        undo()


class FirstCall:
    """Cold compile and cached first call, each in a fresh interpreter (asv timeraw)."""
    params = (["cold", "cached"],)
    param_names = ["cache"]
    number = 1
    repeat = 1

    def setup(self, cache):
        if cache == "cached":  # warm the on-disk cache from another process first
            import subprocess
            import sys
            subprocess.run([sys.executable, "-c", "import numpy as np, numgru as ng; "
                            "ng.GRU(4, 4, seed=0)(np.ones((8, 2, 4), np.float32))"], check=True)

    def timeraw_first_forward(self, cache):
        setup = "import numpy as np, numgru as ng; x = np.ones((8, 2, 4), np.float32)"
        if cache == "cold":
            setup = "import os, tempfile; os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(); " + setup
        return "ng.GRU(4, 4, seed=0)(x)", setup  # asv: (code, setup), run in a fresh interpreter

    def timeraw_frozen_after_plain(self, cache):
        """A frozen copy's first forward once the plain model has run in the same interpreter: its
        kernels take the plain model's signatures, so even cold nothing big compiles again (a
        read-only copy had compiled the serial forward anew, 18 s)."""
        setup = ("import numpy as np, numgru as ng; x = np.ones((8, 2, 4), np.float32); "
                 "g = ng.GRU(4, 4, seed=0); g(x); f = g.freeze()")
        if cache == "cold":
            setup = "import os, tempfile; os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(); " + setup
        return "f(x)", setup


class Memory:
    """Peak resident memory of a forward (includes the interpreter and numgru's import)."""
    params = grid(([(256, 64, 256), (1024, 16, 1024)],), ([(256, 64, 256), (1024, 16, 1024)],),
                  ([(64, 16, 64)],))
    param_names = ["T_B_H"]

    def setup(self, point):
        T, B, H = point
        self.gru = ng.GRU(H, H, seed=0)
        self.x = data(T, B, H)
        self.gru(self.x[:2])

    def peakmem_forward(self, point):
        self.gru(self.x)
