"""GRUClassifier / GRURegressor: real data, scikit-learn conventions, persistence."""
import numpy as np
import pytest

import numgru as ng

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 8, 8)  # 8 rows of 8 features: a sequence of 8 steps
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def test_digits_accuracy(digits):
    Xtr, Xte, ytr, yte = digits
    clf = ng.GRUClassifier(hidden_size=64, epochs=30, random_state=0).fit(Xtr, ytr)
    acc = clf.score(Xte, yte)
    assert acc >= 0.95, acc
    proba = clf.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert list(clf.classes_) == list(range(10)) and clf.n_features_in_ == 8
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_two_layer_gru100_with_clipping_like_the_seeds(digits):
    Xtr, Xte, ytr, yte = digits
    clf = ng.GRUClassifier(hidden_size=100, num_layers=2, epochs=8, optimizer="adam",
                           learning_rate=5e-3, clip_grad_norm=1.0, random_state=1).fit(Xtr, ytr)
    assert clf.score(Xte, yte) > 0.8


def test_sklearn_conventions_clone_pipeline_gridsearch(digits):
    Xtr, Xte, ytr, yte = digits
    est = ng.GRUClassifier(hidden_size=16, epochs=3, random_state=0)
    assert est.get_params()["hidden_size"] == 16
    c = clone(est).set_params(hidden_size=8)
    assert c.hidden_size == 8 and est.hidden_size == 16 and not hasattr(c, "gru_")
    flat = Xtr.reshape(len(Xtr), -1)
    pipe = Pipeline([("shape", FunctionTransformer(lambda a: a.reshape(len(a), 8, 8))),
                     ("gru", ng.GRUClassifier(hidden_size=16, epochs=3, random_state=0))])
    pipe.fit(flat, ytr)
    assert pipe.score(Xte.reshape(len(Xte), -1), yte) > 0.5
    gs = GridSearchCV(ng.GRUClassifier(epochs=2, random_state=0), {"hidden_size": [8, 16]}, cv=2)
    gs.fit(Xtr[:300], ytr[:300])
    assert gs.best_params_["hidden_size"] in (8, 16)


def test_reproducible_with_random_state(digits):
    Xtr, _, ytr, _ = digits
    a = ng.GRUClassifier(hidden_size=8, epochs=2, random_state=3).fit(Xtr[:200], ytr[:200])
    b = ng.GRUClassifier(hidden_size=8, epochs=2, random_state=3).fit(Xtr[:200], ytr[:200])
    np.testing.assert_array_equal(a.predict_proba(Xtr[:50]), b.predict_proba(Xtr[:50]))


def test_variable_length_lists_and_string_labels():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((int(rng.integers(3, 15)), 2)) for _ in range(120)]
    y = np.array(["long" if len(s) > 8 else "short" for s in X])
    clf = ng.GRUClassifier(hidden_size=16, epochs=40, learning_rate=2e-2, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9
    # padding never changes a prediction: a sequence alone equals it inside a padded batch
    p_alone = clf.predict_proba([X[0]])
    np.testing.assert_allclose(p_alone[0], clf.predict_proba(X)[0], atol=1e-6)


def test_early_stopping_and_verbose(digits, capsys):
    Xtr, _, ytr, _ = digits
    clf = ng.GRUClassifier(hidden_size=8, epochs=50, early_stopping=True, n_iter_no_change=2,
                           validation_fraction=0.2, learning_rate=0.2, optimizer="sgd", random_state=0,
                           verbose=0).fit(Xtr, ytr)
    assert len(clf.validation_scores_) == clf.n_iter_ <= 50
    ng.GRUClassifier(hidden_size=4, epochs=1, verbose=1).fit(Xtr[:50], ytr[:50])
    assert "GRUClassifier" in capsys.readouterr().err


def test_regressor_learns_sum():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (400, 6, 1))
    y = X.sum(axis=(1, 2))
    reg = ng.GRURegressor(hidden_size=16, epochs=40, learning_rate=1e-2, random_state=0).fit(X, y)
    assert reg.score(X, y) > 0.9
    assert reg.predict(X[:3]).shape == (3,)
    y2 = np.stack([y, -y], 1)
    reg2 = ng.GRURegressor(hidden_size=8, epochs=2, random_state=0).fit(X, y2)
    assert reg2.predict(X[:3]).shape == (3, 2)


def test_estimator_errors(digits):
    Xtr, _, ytr, _ = digits
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        ng.GRUClassifier().predict(Xtr)
    with pytest.raises(ValueError, match="X: expected an"):
        ng.GRUClassifier().fit(Xtr.reshape(len(Xtr), -1), ytr)
    with pytest.raises(ValueError, match="y: expected shape"):
        ng.GRUClassifier().fit(Xtr, ytr[:5])
    with pytest.raises(ValueError, match="optimizer"):
        ng.GRUClassifier(optimizer="lbfgs").fit(Xtr[:20], ytr[:20])
    with pytest.raises(ValueError, match="random_state: expected an int >= 0"):
        ng.GRUClassifier(random_state=-1).fit(Xtr[:20], ytr[:20])
    with pytest.raises(TypeError, match="early_stopping: expected a bool"):
        ng.GRUClassifier(early_stopping="yes").fit(Xtr[:20], ytr[:20])
    clf = ng.GRUClassifier(hidden_size=4, epochs=1).fit(Xtr[:50], ytr[:50])
    with pytest.raises(ValueError, match="X: expected 8 features"):
        clf.predict(np.zeros((2, 8, 5)))


def test_save_load_fitted_estimators(tmp_path, digits):
    Xtr, Xte, ytr, _ = digits
    clf = ng.GRUClassifier(hidden_size=8, epochs=2, random_state=0).fit(Xtr[:200], ytr[:200])
    ng.save(clf, tmp_path / "clf.safetensors")
    back = ng.load(tmp_path / "clf.safetensors")
    assert type(back) is ng.GRUClassifier and back.get_params() == clf.get_params()
    np.testing.assert_array_equal(back.predict_proba(Xte), clf.predict_proba(Xte))
    np.testing.assert_array_equal(back.classes_, clf.classes_)
    reg = ng.GRURegressor(hidden_size=4, epochs=1, random_state=0).fit(Xtr[:50], ytr[:50] * 0.1)
    ng.save(reg, tmp_path / "reg.safetensors")
    np.testing.assert_array_equal(ng.load(tmp_path / "reg.safetensors").predict(Xte), reg.predict(Xte))


def test_fitted_estimator_files_that_do_not_fit_together_are_refused(tmp_path, digits):
    import json
    import struct
    Xtr, _, ytr, _ = digits
    clf = ng.GRUClassifier(hidden_size=4, epochs=1, random_state=0).fit(Xtr[:50], ytr[:50])
    data = open(ng.save(clf, tmp_path / "clf.safetensors"), "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for change, match in [(lambda f: f.update(n_features_in_=7), "n_features_in_"),
                          (lambda f: f.update(classes_=[0, 1]), "classes_: expected 10 labels"),
                          (lambda f: f.update(classes_dtype="O"), "classes_dtype"),
                          (lambda f: f.update(loss_curve_="abc"), "loss_curve_"),
                          (lambda f: f["head"].update(out_features=10**9), "parameter values"),
                          (lambda f: f.pop("gru"), "does not match its config")]:
        cfg = json.loads(header["__metadata__"]["config"])
        change(cfg["fitted"])
        bad = {**header, "__metadata__": {**header["__metadata__"], "config": json.dumps(cfg)}}
        hb = json.dumps(bad).encode()
        (tmp_path / "bad").write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
        with pytest.raises(ValueError, match=match):
            ng.load(tmp_path / "bad")


def test_scikit_learn_input_conventions():
    """What scikit-learn's own estimators refuse or accept, the same way."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5, 3)).astype(np.float32)
    y = np.arange(20) % 2
    clf = ng.GRUClassifier(hidden_size=4, epochs=1, random_state=0)
    reg = ng.GRURegressor(hidden_size=4, epochs=1, random_state=0)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 2, 1] = bad
        for est in (clf, reg):
            with pytest.raises(ValueError, match="X: contains NaN or infinity"):
                est.fit(Xb, y)
        with pytest.raises(ValueError, match="X: contains NaN or infinity"):
            ng.GRUClassifier(hidden_size=4, epochs=1).fit(X, y).predict(Xb)
    with pytest.raises(ValueError, match="y: contains NaN"):
        reg.fit(X, np.where(y, np.nan, 1.0))
    for est in (clf, reg):
        with pytest.raises(ValueError, match="requires y to be passed"):
            est.fit(X, None)
        with pytest.raises(TypeError, match="X: sparse input is not supported"):
            est.fit(scipy_sparse.csr_matrix(X.reshape(20, -1)), y)
        with pytest.raises(ValueError, match="every sequence is empty"):
            est.fit([np.zeros((0, 3))] * 20, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X, np.linspace(0, 1, 20))
    with pytest.raises(TypeError, match="y: labels of mixed types"):
        clf.fit(X, np.array(["a", 1] * 10, dtype=object))
    # an object array of numbers is numbers, as scikit-learn reads it
    a = ng.GRUClassifier(hidden_size=4, epochs=1, random_state=0).fit(X.astype(object), y)
    b = ng.GRUClassifier(hidden_size=4, epochs=1, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_tags_declare_three_dimensional_input():
    """scikit-learn's tags say what X the estimators take: (N, T, I), not a 2-D table."""
    utils = pytest.importorskip("sklearn.utils")
    if not hasattr(utils, "get_tags"):
        pytest.skip("scikit-learn < 1.6 has no estimator tags API")
    for est in (ng.GRUClassifier(), ng.GRURegressor()):
        tags = utils.get_tags(est)
        assert tags.input_tags.three_d_array and not tags.input_tags.two_d_array
        assert tags.estimator_type == ("classifier" if isinstance(est, ng.GRUClassifier) else "regressor")
