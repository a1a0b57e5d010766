"""Losses. Each returns ``(loss, gradient)`` with the gradient shaped like the prediction."""
from __future__ import annotations

import numpy as np

from .._validation import as_real_array

__all__ = ["cross_entropy", "mse"]


def _reduction(reduction):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    return reduction


def cross_entropy(logits, target, weight=None, reduction="mean"):
    """Softmax cross-entropy on class indices (PyTorch's ``F.cross_entropy``).

    Parameters
    ----------
    logits : (N, C) float array.
    target : (N,) int array of class indices in [0, C).
    weight : optional (C,) class weights; the mean divides by Σ weight[target] as PyTorch does.
    reduction : "mean" or "sum".

    Returns
    -------
    loss : float; grad : (N, C) dLoss/dlogits.
    """
    _reduction(reduction)
    logits = as_real_array("logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected a 2-D (N, C) array, got {logits.ndim}-D")
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    N, C = logits.shape
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected an integer array of class indices, got dtype {target.dtype}")
    if target.shape != (N,):
        raise ValueError(f"target: expected shape ({N},), got {target.shape}")
    if N and (target.min() < 0 or target.max() >= C):
        raise ValueError(f"target: expected class indices in [0, {C}), got min {target.min()}, "
                         f"max {target.max()}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - logsumexp
    rows = np.arange(N)
    nll = -logp[rows, target]
    if weight is None:
        w = np.ones(N, logits.dtype)
    else:
        weight = as_real_array("weight", weight)
        if weight.shape != (C,):
            raise ValueError(f"weight: expected shape ({C},), got {weight.shape}")
        w = weight[target].astype(logits.dtype)
    grad = np.exp(logp)
    grad[rows, target] -= 1.0
    grad *= w[:, None]
    loss = float((w * nll).sum())
    if reduction == "mean":
        denom = float(w.sum())
        loss = loss / denom if denom else float("nan")
        grad = grad / denom if denom else grad * np.nan
    return loss, grad.astype(logits.dtype, copy=False)


def mse(pred, target, reduction="mean"):
    """Mean squared error (PyTorch's ``F.mse_loss``). Returns ``(loss, dLoss/dpred)``."""
    _reduction(reduction)
    pred = as_real_array("pred", pred)
    target = as_real_array("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {pred.shape} (the shape of pred), got {target.shape}")
    if pred.dtype.kind != "f":
        pred = pred.astype(np.float64)
    diff = pred - target.astype(pred.dtype)
    loss = float((diff * diff).sum())
    grad = 2.0 * diff
    if reduction == "mean" and diff.size:
        loss /= diff.size
        grad /= diff.size
    return loss, grad.astype(pred.dtype, copy=False)
