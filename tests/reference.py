"""A plain NumPy GRU written from the equations in DESIGN §2. Imports nothing from numgru.

Parameters are a dict with PyTorch's names (weight_ih_l{k}[_reverse], ...). Everything is computed in
float64 with explicit per-step loops, for clarity over speed.
"""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_gate(kind="sigmoid", alpha=0.2, beta=0.5):
    if kind == "sigmoid":
        return sigmoid
    return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)


def cell(x, h, W_ih, W_hh, b_ih, b_hh, reset_after=True, gate=sigmoid, clip=None):
    """One step for a batch: x (B, I), h (B, H) -> h' (B, H)."""
    H = h.shape[1]
    c = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    gi = x @ W_ih.T + b_ih
    r = gate(c(gi[:, :H] + h @ W_hh[:H].T + b_hh[:H]))
    z = gate(c(gi[:, H:2 * H] + h @ W_hh[H:2 * H].T + b_hh[H:2 * H]))
    if reset_after:
        n = np.tanh(c(gi[:, 2 * H:] + r * (h @ W_hh[2 * H:].T + b_hh[2 * H:])))
    else:
        n = np.tanh(c(gi[:, 2 * H:] + (r * h) @ W_hh[2 * H:].T + b_hh[2 * H:]))
    return (1.0 - z) * n + z * h


def gru(x, params, num_layers, hidden_size, bidirectional=False, h0=None, lengths=None,
        reset_after=True, gate="sigmoid", alpha=0.2, beta=0.5, clip=None):
    """x (T, B, I) time-major. Returns y (T, B, D·H), h_n (L·D, B, H), both float64.

    lengths (B,): steps t >= lengths[b] give zero output and leave the state alone; the reverse
    direction starts at lengths[b] - 1.
    """
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = hidden_size
    g = make_gate(gate, alpha, beta)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h0 = np.zeros((num_layers * D, B, H)) if h0 is None else np.asarray(h0, np.float64)
    h_n = np.zeros((num_layers * D, B, H))
    inp = x
    for layer in range(num_layers):
        out = np.zeros((T, B, D * H))
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            W_ih = np.asarray(params["weight_ih" + sfx], np.float64)
            W_hh = np.asarray(params["weight_hh" + sfx], np.float64)
            b_ih = np.asarray(params.get("bias_ih" + sfx, np.zeros(3 * H)), np.float64)
            b_hh = np.asarray(params.get("bias_hh" + sfx, np.zeros(3 * H)), np.float64)
            for b in range(B):
                h = h0[layer * D + d, b][None, :]
                steps = range(lengths[b]) if d == 0 else range(lengths[b] - 1, -1, -1)
                for t in steps:
                    h = cell(inp[t, b][None, :], h, W_ih, W_hh, b_ih, b_hh, reset_after, g, clip)
                    out[t, b, d * H:(d + 1) * H] = h[0]
                h_n[layer * D + d, b] = h[0]
        inp = out
    return inp, h_n


def random_params(input_size, hidden_size, num_layers, bidirectional=False, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    k = 1 / np.sqrt(hidden_size)
    p = {}
    for layer in range(num_layers):
        I = input_size if layer == 0 else D * hidden_size
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = rng.uniform(-k, k, (3 * hidden_size, I))
            p["weight_hh" + sfx] = rng.uniform(-k, k, (3 * hidden_size, hidden_size))
            if bias:
                p["bias_ih" + sfx] = rng.uniform(-k, k, 3 * hidden_size)
                p["bias_hh" + sfx] = rng.uniform(-k, k, 3 * hidden_size)
    return p
