"""Scale-out with Dask: ``ng.dask.predict(model, x)`` on dask arrays and bags.

The model travels to the workers as its safetensors bytes (:func:`numgru.interop.persistence.to_bytes`,
never pickled model objects) and is rebuilt once per worker process (cached by the bytes' hash).

If no ``distributed`` client is active and none is given, :func:`predict` starts the embedded default:
a ``LocalCluster`` of 2 worker processes with 1 thread each (kept for the life of the process, and set
as the default scheduler), so that ``result.compute()`` runs there.
"""
from __future__ import annotations

import atexit
import hashlib
import threading

import numpy as np

from .interop.persistence import from_bytes, to_bytes
from .layers import GRU

__all__ = ["predict", "default_client"]

_MODELS = {}
_MODELS_LOCK = threading.Lock()
_DEFAULT = {}


def _dask():
    try:
        import dask
        import dask.array as da
        import dask.bag as db
    except ImportError as exc:  # pragma: no cover
        raise ImportError("numgru.dask needs dask: pip install 'numgru[dask]'") from exc
    return dask, da, db


def default_client(n_workers=2):
    """The active ``distributed`` client, or the embedded LocalCluster (2 processes) started once."""
    try:
        from distributed import Client, LocalCluster, get_client
    except ImportError as exc:  # pragma: no cover
        raise ImportError("numgru.dask needs distributed: pip install 'numgru[dask]'") from exc
    try:
        return get_client()
    except ValueError:
        pass
    if "client" not in _DEFAULT:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster, set_as_default=True)
        _DEFAULT.update(client=client, cluster=cluster)
        atexit.register(_close_default)
    return _DEFAULT["client"]


def _close_default():
    client, cluster = _DEFAULT.pop("client", None), _DEFAULT.pop("cluster", None)
    for obj in (client, cluster):
        if obj is not None:
            try:
                obj.close()
            except Exception:  # pragma: no cover - best effort at exit
                pass


def _model(blob, key):
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is None:
            m = from_bytes(blob, what="model bytes")
            if isinstance(m, GRU):
                # the worker's own copy only ever runs forwards: pack its weights once (GRU.freeze)
                m = m.freeze()
            _MODELS.clear()  # one model per worker at a time keeps memory bounded
            _MODELS[key] = m
    return m


def _apply(model, x3, method):
    """x3 (n, T, I) batch-major -> output batch-major."""
    if isinstance(model, GRU):
        xin = x3 if model.batch_first else x3.transpose(1, 0, 2)
        y, h_n = model(xin)
        if method == "h_n":
            return h_n.transpose(1, 0, 2)
        return y if model.batch_first else y.transpose(1, 0, 2)
    return getattr(model, method)(x3)


def _block(block, blob, key, method):
    return _apply(_model(blob, key), np.ascontiguousarray(block), method)


def _one(seq, blob, key, method):
    model = _model(blob, key)
    seq = np.asarray(seq)
    if isinstance(model, GRU):
        y, h_n = model(seq)  # unbatched (T, I)
        return (y, h_n) if method == "forward" else (h_n if method == "h_n" else y)
    return getattr(model, method)([seq])[0]


def _shipped(model, client):
    """(the model's safetensors bytes, their SHA-1) for the workers, once the arguments are checked:
    the embedded LocalCluster started first where no client is given and none is active."""
    if client is None:
        default_client()
    blob = to_bytes(model)
    return blob, hashlib.sha1(blob).hexdigest()


def predict(model, x, *, method=None, client=None):
    """Run ``model`` over a dask array or bag, lazily.

    Parameters
    ----------
    model : numgru.GRU or a fitted GRUClassifier / GRURegressor.
    x : dask.array (N, T, I), chunked along N (other axes are merged), or a dask.bag of (T_i, I) arrays.
    method : for a GRU: "y" (default for arrays) → (N, T, D·H), "h_n" → (N, L·D, H), and for bags
        "forward" (default) → (y, h_n) per sequence; for estimators "predict" (default),
        "predict_proba" or "decision_function".
    client : a ``distributed.Client``; default: the active one, else the embedded LocalCluster.

    Returns a dask array (arrays) or a dask bag (bags); call ``.compute()``. Each worker loads the
    model once and, for a GRU, runs a frozen copy of it (:meth:`numgru.GRU.freeze`: its weights packed
    once), since it only ever runs forwards there.
    """
    dask, da, db = _dask()
    from .interop.persistence import _kinds
    if type(model) not in _kinds().values():
        raise TypeError(f"model: expected a numgru GRU or estimator, got {type(model).__name__}")
    is_gru = isinstance(model, GRU)
    if not is_gru:
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(model)
    if not isinstance(x, (db.Bag, da.Array)):
        raise TypeError(f"x: expected a dask array or bag, got {type(x).__name__}")
    # (the arguments checked before the embedded cluster's processes start)
    if isinstance(x, db.Bag):
        method = method or ("forward" if is_gru else "predict")
        allowed = ("forward", "y", "h_n") if is_gru else ("predict", "predict_proba", "decision_function")
        if method not in allowed:
            raise ValueError(f"method: expected one of {allowed} for a bag, got {method!r}")
        return x.map(_one, *_shipped(model, client), method)
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-D (N, T, I) dask array, got {x.ndim}-D")
    I = model.input_size if is_gru else model.n_features_in_
    if x.shape[2] != I:
        raise ValueError(f"x: expected {I} features in the last dimension, got {x.shape[2]}")
    if x.dtype.kind not in "iuf":
        raise TypeError(f"x: expected real numbers, got dtype {x.dtype}")
    if is_gru:
        method = method or "y"
        if method not in ("y", "h_n"):
            raise ValueError(f"method: expected 'y' or 'h_n' for a GRU on a dask array, got {method!r}")
    else:
        method = method or "predict"
        if method not in ("predict", "predict_proba", "decision_function"):
            raise ValueError(f"method: expected predict, predict_proba or decision_function, got {method!r}")
    blob, key = _shipped(model, client)
    x = x.rechunk({1: -1, 2: -1})
    T = x.shape[1]
    if is_gru:
        D, H, L = model.num_directions, model.hidden_size, model.num_layers
        tail = ((T,), (D * H,)) if method == "y" else ((L * D,), (H,))
        return x.map_blocks(_block, blob, key, method, dtype=model.dtype, chunks=(x.chunks[0],) + tail)
    if method == "predict":
        if hasattr(model, "classes_"):
            return x.map_blocks(_block, blob, key, method, dtype=model.classes_.dtype,
                                chunks=(x.chunks[0],), drop_axis=[1, 2])
        if model._y_ndim == 1:
            return x.map_blocks(_block, blob, key, method, dtype=model.gru_.dtype,
                                chunks=(x.chunks[0],), drop_axis=[1, 2])
        k = model.n_outputs_
    else:
        k = model.classes_.size if hasattr(model, "classes_") else model.n_outputs_
    dtype = np.float64 if method == "predict_proba" else model.gru_.dtype
    return x.map_blocks(_block, blob, key, method, dtype=dtype, chunks=(x.chunks[0], (k,)),
                        drop_axis=[2])
