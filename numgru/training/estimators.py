"""scikit-learn estimators: ``GRUClassifier`` and ``GRURegressor`` (need scikit-learn).

Model: a :class:`numgru.GRU` over the sequence, the top layer's final state (both directions
concatenated when bidirectional) and a :class:`numgru.Linear` head. Trained with numgru's BPTT kernels
and optimizers; no torch.

X is an (N, T, I) array or a list of N arrays of shape (T_i, I) (padded internally; each sequence's own
length is used through the kernels' ``lengths`` support, so padding never changes a prediction).
"""
from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError

from .._validation import check_int
from ..layers import GRU, Linear
from . import losses
from . import optim as _optim

__all__ = ["GRUClassifier", "GRURegressor"]

_OPTIMIZERS = {"adam": _optim.Adam, "adamw": _optim.AdamW, "sgd": _optim.SGD, "rmsprop": _optim.RMSprop}


def as_sequences(X, dtype, n_features=None):
    """Validate X and return (padded (N, T, I) array, lengths (N,) int64).

    NaN and infinity are refused (as scikit-learn's estimators refuse them): a model fitted on them
    holds NaN weights, and its predictions would be garbage without a word."""
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"X: sparse input is not supported ({type(X).__name__}); pass a dense "
                        "(N, T, I) array or a list of (T_i, I) arrays")
    if isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 3:
        try:  # an object array of numbers, as scikit-learn accepts
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"X: expected real numbers, got an object array that is not ({exc})") from None
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 3:
            raise ValueError(f"X: expected an (N, T, I) array or a list of (T_i, I) arrays, got a "
                             f"{X.ndim}-D array of shape {X.shape}")
        if X.dtype.kind not in "iuf":
            raise TypeError(f"X: expected real numbers, got dtype {X.dtype}")
        arr = np.ascontiguousarray(X, dtype=dtype)
        lengths = np.full(arr.shape[0], arr.shape[1], np.int64)
    else:
        if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
            raise TypeError(f"X: expected an (N, T, I) array or a list of (T_i, I) arrays, got "
                            f"{type(X).__name__}")
        seqs = []
        for i, s in enumerate(X):
            a = np.asarray(s)
            if a.dtype.kind not in "iuf":
                raise TypeError(f"X[{i}]: expected real numbers, got dtype {a.dtype}")
            if a.ndim != 2:
                raise ValueError(f"X[{i}]: expected a (T_i, I) array, got shape {a.shape}")
            seqs.append(a)
        if not seqs:
            raise ValueError("X: expected at least one sequence, got none")
        feats = {a.shape[1] for a in seqs}
        if len(feats) != 1:
            raise ValueError(f"X: every sequence needs the same feature size, got {sorted(feats)}")
        lengths = np.array([a.shape[0] for a in seqs], np.int64)
        arr = np.zeros((len(seqs), int(lengths.max()), feats.pop()), dtype)
        for i, a in enumerate(seqs):
            arr[i, :a.shape[0]] = a
    if arr.shape[0] == 0:
        raise ValueError("X: expected at least one sequence, got none")
    if n_features is not None and arr.shape[2] != n_features:
        raise ValueError(f"X: expected {n_features} features per step (as in fit), got {arr.shape[2]}")
    if not np.isfinite(arr).all():
        raise ValueError("X: contains NaN or infinity")
    return arr, lengths


def _check_y(y, n):
    """y as an array of n rows, or a ValueError naming it (scikit-learn's message for None)."""
    if y is None:
        raise ValueError("y: this estimator requires y to be passed, but the target y is None")
    if hasattr(y, "tocsr") or type(y).__module__.startswith("scipy.sparse"):
        raise TypeError(f"y: sparse targets are not supported ({type(y).__name__})")
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(f"y: expected shape ({n}, ...) (a target per sequence), got {y.shape}")
    return y


def _check_nonempty(lengths):
    """fit needs some sequence with a step: on empty sequences alone the GRU learns nothing."""
    if not lengths.any():
        raise ValueError("X: every sequence is empty (0 steps); fit needs at least one step")


def _seed(random_state):
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_)):
        if random_state < 0:
            raise ValueError(f"random_state: expected an int >= 0, got {random_state}")
        return np.random.default_rng(int(random_state))
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    raise TypeError(f"random_state: expected None, an int or a numpy Generator, got "
                    f"{type(random_state).__name__}")


class _GRUEstimator(BaseEstimator):
    _loss_name = None

    def __init__(self, hidden_size=64, num_layers=1, *, bidirectional=False, reset_after=True,
                 dropout=0.0, epochs=30, batch_size=32, learning_rate=1e-2, optimizer="adam",
                 weight_decay=0.0, clip_grad_norm=None, validation_fraction=0.1, early_stopping=False,
                 n_iter_no_change=5, tol=1e-4, random_state=None, verbose=0, dtype="float32"):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.reset_after = reset_after
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.clip_grad_norm = clip_grad_norm
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype

    def __sklearn_tags__(self):
        # X is (N, T, I) or a list of (T_i, I): three-dimensional, not the 2-D table the default declares
        # (scikit-learn >= 1.6 reads these; older versions do not call this)
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------------------------- helpers
    def _check_params(self):
        from .._validation import check_bool, check_float, check_int
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("n_iter_no_change", self.n_iter_no_change, minimum=1)
        check_bool("early_stopping", self.early_stopping)
        check_float("learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_float("validation_fraction", self.validation_fraction, low=0.0, high=1.0, high_open=True)
        check_float("clip_grad_norm", self.clip_grad_norm, low=0.0, low_open=True, allow_none=True)
        check_float("tol", self.tol, low=0.0)
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {sorted(_OPTIMIZERS)}, got {self.optimizer!r}")

    def _check_fitted(self):
        if not hasattr(self, "gru_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first")

    def _features(self, x, lengths, train):
        """Top layer's final state(s): (B, D·H); with train, also the tapes."""
        if train:
            _, h_n, tape = self.gru_.forward_train(x, lengths=lengths)
        else:
            _, h_n = self.gru_(x, lengths=lengths)
            tape = None
        D = self.gru_.num_directions
        feats = np.concatenate(list(h_n[-D:]), axis=1)
        return feats, tape

    def _decision(self, X):
        self._check_fitted()
        arr, lengths = as_sequences(X, self.gru_.dtype, self.n_features_in_)
        step = 256
        return np.concatenate([self._decision_arr(arr[i:i + step], lengths[i:i + step])
                               for i in range(0, arr.shape[0], step)], axis=0)

    def _loss(self, out, target):
        raise NotImplementedError

    def _fit(self, arr, lengths, target, n_out):
        self._check_params()
        rng = _seed(self.random_state)
        seed = int(rng.integers(0, 2**31 - 1))
        dtype = np.dtype(self.dtype)
        self.gru_ = GRU(arr.shape[2], self.hidden_size, self.num_layers, batch_first=True,
                        bidirectional=self.bidirectional, reset_after=self.reset_after,
                        dropout=self.dropout, dtype=dtype, seed=seed)
        D = self.gru_.num_directions
        self.head_ = Linear(D * self.hidden_size, n_out, dtype=dtype, seed=seed + 1)
        params = [*self.gru_.named_parameters(),
                  *(("head." + n, p) for n, p in self.head_.named_parameters())]
        opt_cls = _OPTIMIZERS[self.optimizer]
        opt = opt_cls(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        N = arr.shape[0]
        idx = rng.permutation(N)
        n_val = int(round(N * self.validation_fraction)) if self.early_stopping else 0
        if self.early_stopping and (n_val < 1 or n_val >= N):
            raise ValueError(f"validation_fraction: {self.validation_fraction} of {N} samples leaves no "
                             "validation or no training data")
        val_idx, tr_idx = idx[:n_val], idx[n_val:]
        self.loss_curve_, self.validation_scores_ = [], []
        best, best_state, stall = np.inf, None, 0
        L, H = self.gru_.num_layers, self.hidden_size
        epochs = range(self.epochs)
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm
            bar = tqdm(epochs, desc=type(self).__name__, unit="epoch")
            epochs = bar
        self.n_iter_ = 0
        for _ in epochs:
            order = rng.permutation(tr_idx)
            total, count = 0.0, 0
            for s in range(0, order.size, self.batch_size):
                b = order[s:s + self.batch_size]
                Tb = max(int(lengths[b].max()), 1)
                feats, tape = self._features(arr[b, :Tb], lengths[b], True)
                out, htape = self.head_.forward_train(feats)
                loss, dout = self._loss(out, target[b])
                dfeats, ghead = self.head_.backward(htape, dout)
                dh_n = np.zeros((L * D, b.size, H), dtype)
                for d in range(D):
                    dh_n[(L - 1) * D + d] = dfeats[:, d * H:(d + 1) * H]
                _, _, grads = self.gru_.backward(tape, None, dh_n, input_grad=False)
                grads.update({"head." + k: v for k, v in ghead.items()})
                if self.clip_grad_norm is not None:
                    _optim.clip_grad_norm(grads, self.clip_grad_norm)
                opt.step(grads)
                total += loss * b.size
                count += b.size
            self.n_iter_ += 1
            self.loss_curve_.append(total / max(count, 1))
            monitor = self.loss_curve_[-1]
            if n_val:
                out = self._decision_arr(arr[val_idx], lengths[val_idx])
                monitor = self._loss(out, target[val_idx])[0]
                self.validation_scores_.append(monitor)
            if bar is not None:
                bar.set_postfix(loss=f"{self.loss_curve_[-1]:.4f}",
                                **({"val": f"{monitor:.4f}"} if n_val else {}))
            if monitor < best - self.tol:
                best, stall = monitor, 0
                if self.early_stopping:
                    best_state = (self.gru_.state_dict(), self.head_.state_dict())
            else:
                stall += 1
                if self.early_stopping and stall >= self.n_iter_no_change:
                    break
        if bar is not None:
            bar.close()
        if best_state is not None:
            self.gru_.load_state_dict(best_state[0])
            self.head_.load_state_dict(best_state[1])
        return self

    def _decision_arr(self, arr, lengths):
        Tb = max(int(lengths.max()), 1)
        feats, _ = self._features(arr[:, :Tb], lengths, False)
        return self.head_(feats)

    # ------------------------------------------------------------------------------- persistence
    def _fitted_meta(self):
        return {}

    def _to_safetensors(self):
        self._check_fitted()
        config = {"params": self.get_params(deep=False),
                  "fitted": {"n_features_in_": int(self.n_features_in_), "n_iter_": int(self.n_iter_),
                             "loss_curve_": [float(v) for v in self.loss_curve_],
                             "gru": self.gru_.get_config(), "head": self.head_.get_config(),
                             **self._fitted_meta()}}
        if not isinstance(config["params"]["random_state"], (int, type(None))):
            config["params"]["random_state"] = None
        tensors = {"gru." + k: v for k, v in self.gru_.state_dict().items()}
        tensors.update({"head." + k: v for k, v in self.head_.state_dict().items()})
        return config, tensors

    @classmethod
    def _from_safetensors(cls, config, tensors):
        est = cls(**config["params"])
        fitted = config["fitted"]
        est.gru_ = GRU(**fitted["gru"])
        est.head_ = Linear(**fitted["head"])
        est.gru_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("gru.")})
        est.head_.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        gru, head = est.gru_, est.head_
        if not gru.batch_first or head.in_features != gru.num_directions * gru.hidden_size:
            raise ValueError("the GRU and its head do not fit together (as fit builds them: "
                             "batch_first, head.in_features = num_directions * hidden_size)")
        est.n_features_in_ = check_int("n_features_in_", fitted["n_features_in_"], minimum=1)
        if est.n_features_in_ != gru.input_size:
            raise ValueError(f"n_features_in_: {est.n_features_in_} but the GRU takes "
                             f"{gru.input_size} features")
        est.n_iter_ = check_int("n_iter_", fitted["n_iter_"], minimum=0)
        curve = fitted["loss_curve_"]
        if not (isinstance(curve, list) and all(isinstance(v, (int, float)) for v in curve)):
            raise ValueError("loss_curve_: expected a list of numbers")
        est.loss_curve_ = [float(v) for v in curve]
        est._set_fitted_meta(fitted)
        return est

    def _set_fitted_meta(self, fitted):
        """Restore (and check against ``head_``) what :meth:`_fitted_meta` stored."""


class GRUClassifier(ClassifierMixin, _GRUEstimator):
    """Sequence classifier: GRU → final state → Linear → softmax, trained with cross-entropy.

    Parameters (all stored as given; checked in ``fit``): hidden_size, num_layers, bidirectional,
    reset_after, dropout, epochs, batch_size, learning_rate, optimizer ("adam", "adamw", "sgd",
    "rmsprop"), weight_decay, clip_grad_norm (None or max norm), validation_fraction, early_stopping,
    n_iter_no_change, tol, random_state, verbose (a tqdm bar per epoch), dtype.

    Attributes after fit: classes_, n_features_in_, gru_, head_, loss_curve_, validation_scores_, n_iter_.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = GRUClassifier(hidden_size=32, epochs=2, random_state=0).fit(X.reshape(-1, 8, 8), y)
    >>> clf.predict(X[:3].reshape(-1, 8, 8)).shape
    (3,)
    """

    def fit(self, X, y):
        """Fit on X ((N, T, I) or a list of (T_i, I)) and labels y (N,)."""
        arr, lengths = as_sequences(X, np.dtype(self.dtype))
        _check_nonempty(lengths)
        y = _check_y(y, arr.shape[0])
        if y.ndim != 1:
            raise ValueError(f"y: expected shape ({arr.shape[0]},), got {y.shape}")
        from sklearn.utils.multiclass import check_classification_targets
        try:
            check_classification_targets(y)  # "Unknown label type: continuous" for real values
            self.classes_, enc = np.unique(y, return_inverse=True)
        except TypeError as exc:
            raise TypeError(f"y: labels of mixed types cannot be ordered ({exc})") from None
        if self.classes_.size < 2:
            raise ValueError(f"y: expected at least 2 classes, got {self.classes_.size}")
        self.n_features_in_ = arr.shape[2]
        return self._fit(arr, lengths, enc.astype(np.int64), self.classes_.size)

    def _loss(self, out, target):
        return losses.cross_entropy(out, target)

    def decision_function(self, X):
        """Logits (N, n_classes)."""
        return self._decision(X)

    def predict_proba(self, X):
        """Class probabilities (N, n_classes), columns in the order of ``classes_``."""
        z = self._decision(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Predicted labels (N,)."""
        scores = self._decision(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def _fitted_meta(self):
        return {"classes_": self.classes_.tolist(), "classes_dtype": self.classes_.dtype.str}

    def _set_fitted_meta(self, fitted):
        dtype = np.dtype(fitted["classes_dtype"])
        if dtype.kind not in "biufUS":
            raise ValueError(f"classes_dtype: expected a bool, number or string dtype, got {dtype}")
        self.classes_ = np.array(fitted["classes_"], dtype=dtype)
        if self.classes_.ndim != 1 or self.classes_.size != self.head_.out_features:
            raise ValueError(f"classes_: expected {self.head_.out_features} labels (the head's "
                             f"outputs), got shape {self.classes_.shape}")


class GRURegressor(RegressorMixin, _GRUEstimator):
    """Sequence regressor: GRU → final state → Linear, trained with mean squared error.

    Same parameters as :class:`GRUClassifier`; y is (N,) or (N, n_outputs). ``score`` is R².
    """

    def fit(self, X, y):
        """Fit on X ((N, T, I) or a list of (T_i, I)) and targets y (N,) or (N, k)."""
        arr, lengths = as_sequences(X, np.dtype(self.dtype))
        _check_nonempty(lengths)
        y = _check_y(y, arr.shape[0])
        if y.dtype.kind not in "iuf":
            raise TypeError(f"y: expected real targets, got dtype {y.dtype}")
        if y.ndim not in (1, 2) or y.shape[0] != arr.shape[0]:
            raise ValueError(f"y: expected shape ({arr.shape[0]},) or ({arr.shape[0]}, k), got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("y: contains NaN or infinity")
        self.n_features_in_ = arr.shape[2]
        self._y_ndim = y.ndim
        y2 = y.reshape(y.shape[0], -1).astype(np.dtype(self.dtype))
        self.n_outputs_ = y2.shape[1]
        return self._fit(arr, lengths, y2, self.n_outputs_)

    def _loss(self, out, target):
        return losses.mse(out, target)

    def predict(self, X):
        """Predictions (N,) or (N, k), as y was in fit."""
        out = self._decision(X)
        return out[:, 0] if self._y_ndim == 1 else out

    def _fitted_meta(self):
        return {"y_ndim": self._y_ndim, "n_outputs_": self.n_outputs_}

    def _set_fitted_meta(self, fitted):
        self._y_ndim = check_int("y_ndim", fitted["y_ndim"], minimum=1)
        self.n_outputs_ = check_int("n_outputs_", fitted["n_outputs_"], minimum=1)
        if self._y_ndim > 2 or self.n_outputs_ != self.head_.out_features or (
                self._y_ndim == 1 and self.n_outputs_ != 1):
            raise ValueError(f"y_ndim, n_outputs_: {self._y_ndim}, {self.n_outputs_} do not fit a "
                             f"head of {self.head_.out_features} outputs")
