"""Fused optimizer updates on flat (1-D, C-contiguous) parameter arrays, updated in place.

Each kernel follows the update rule of the torch.optim class of the same name (single-tensor form),
so that numgru's steps equal PyTorch's for the same gradients. Hyper-parameters come in as float
arguments; ``step`` is the 1-based step count (bias corrections are computed by the caller).
"""
import math

from ._jit import kernel, wide_vectors


@kernel
def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """p (N,) in/out; g (N,) in; buf (N,) momentum buffer in/out (ignored when momentum == 0)."""
    wide_vectors()
    for i in range(p.shape[0]):
        d = g[i] + weight_decay * p[i]
        if momentum != 0.0:
            if first:
                b = d
            else:
                b = momentum * buf[i] + (1.0 - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] = p[i] - lr * d


@kernel
def adam_update(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
                bias_c1, bias_c2):
    """Adam (decoupled=False) or AdamW (decoupled=True). p, g, m, v, vmax (N,); m, v, vmax in/out.

    bias_c1 = 1 − β1^step, bias_c2 = 1 − β2^step.
    """
    wide_vectors()
    step_size = lr / bias_c1
    sq_c2 = math.sqrt(bias_c2)
    for i in range(p.shape[0]):
        gi = g[i]
        if decoupled:
            p[i] = p[i] * (1.0 - lr * weight_decay)
        else:
            gi = gi + weight_decay * p[i]
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            if vi > vmax[i]:
                vmax[i] = vi
            vi = vmax[i]
        p[i] = p[i] - step_size * mi / (math.sqrt(vi) / sq_c2 + eps)


@kernel
def rmsprop_update(p, g, sq, gavg, buf, lr, alpha, eps, weight_decay, momentum, centered):
    """RMSprop; p, g, sq (square average), gavg (centered mean), buf (momentum) all (N,)."""
    wide_vectors()
    for i in range(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        s = alpha * sq[i] + (1.0 - alpha) * gi * gi
        sq[i] = s
        if centered:
            ga = alpha * gavg[i] + (1.0 - alpha) * gi
            gavg[i] = ga
            avg = math.sqrt(s - ga * ga) + eps
        else:
            avg = math.sqrt(s) + eps
        if momentum > 0.0:
            b = momentum * buf[i] + gi / avg
            buf[i] = b
            p[i] = p[i] - lr * b
        else:
            p[i] = p[i] - lr * gi / avg


@kernel
def sum_of_squares(g):
    """Σ g², accumulated in float64 in index order (deterministic)."""
    wide_vectors()
    s = 0.0
    for i in range(g.shape[0]):
        s += float(g[i]) * float(g[i])
    return s
