"""ng.dask.predict on a LocalCluster with 2 worker processes equals the in-process result."""
import numpy as np
import pytest

import numgru as ng

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_array_and_bag(client):
    g = ng.GRU(4, 8, 2, bidirectional=True, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 7, 4)).astype(np.float32)
    dx = da.from_array(x, chunks=(8, 7, 4))
    y = ng.dask.predict(g, dx, client=client)
    assert isinstance(y, da.Array) and y.shape == (30, 7, 16)
    ref_y, ref_h = g(x.transpose(1, 0, 2))
    got = y.compute()
    np.testing.assert_allclose(got, ref_y.transpose(1, 0, 2), atol=1e-6)
    h = ng.dask.predict(g, dx, method="h_n", client=client).compute()
    np.testing.assert_allclose(h, ref_h.transpose(1, 0, 2), atol=1e-6)
    seqs = [rng.standard_normal((int(rng.integers(1, 12)), 4)).astype(np.float32) for _ in range(10)]
    out = ng.dask.predict(g, db.from_sequence(seqs, npartitions=3), client=client).compute()
    for s, (yy, hh) in zip(seqs, out):
        ry, rh = g(s)
        np.testing.assert_allclose(yy, ry, atol=1e-6)
        np.testing.assert_allclose(hh, rh, atol=1e-6)


def test_estimator_on_cluster(client):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = (X / 16).reshape(-1, 8, 8)
    clf = ng.GRUClassifier(hidden_size=16, epochs=2, random_state=0).fit(X[:300], y[:300])
    dx = da.from_array(X[:100], chunks=(25, 8, 8))
    np.testing.assert_array_equal(ng.dask.predict(clf, dx, client=client).compute(), clf.predict(X[:100]))
    p = ng.dask.predict(clf, dx, method="predict_proba", client=client).compute()
    np.testing.assert_allclose(p, clf.predict_proba(X[:100]), atol=1e-6)


def test_errors(client):
    g = ng.GRU(4, 8, seed=0)
    with pytest.raises(ValueError, match="x: expected 4 features"):
        ng.dask.predict(g, da.zeros((3, 2, 5), chunks=1), client=client)
    with pytest.raises(TypeError, match="x: expected a dask array or bag"):
        ng.dask.predict(g, np.zeros((3, 2, 4)), client=client)
    with pytest.raises(TypeError, match="model"):
        ng.dask.predict(object(), da.zeros((3, 2, 4), chunks=1), client=client)


def test_embedded_default_cluster_when_no_client_is_given():
    import subprocess
    import sys
    code = ("import numpy as np, numgru as ng, dask.array as da\n"
            "g = ng.GRU(4, 8, seed=0)\n"
            "x = np.random.default_rng(0).random((10, 5, 4)).astype(np.float32)\n"
            "y = ng.dask.predict(g, da.from_array(x, chunks=(3, 5, 4))).compute()\n"
            "from distributed import get_client\n"
            "assert len(get_client().scheduler_info()['workers']) == 2\n"
            "assert np.abs(y - g(x.transpose(1, 0, 2))[0].transpose(1, 0, 2)).max() < 1e-6\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_worker_copy_is_frozen():
    from numgru.interop.persistence import to_bytes
    g = ng.GRU(4, 8, seed=0)
    m = ng.dask._model(to_bytes(g), "test-worker-copy")
    assert m.frozen and not g.frozen
    x = np.random.default_rng(1).standard_normal((5, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(m(x)[0], g(x)[0], atol=1e-6)


def test_bad_arguments_fail_before_any_cluster_starts(monkeypatch):
    """Wrong x, method or an unfitted estimator: the error, and no embedded cluster started first."""
    from sklearn.exceptions import NotFittedError
    started = []
    monkeypatch.setattr(ng.dask, "default_client", lambda *a, **k: started.append(1))
    g = ng.GRU(4, 8, seed=0)
    with pytest.raises(TypeError, match="x: expected a dask array or bag"):
        ng.dask.predict(g, "x")
    with pytest.raises(ValueError, match="x: expected 4 features"):
        ng.dask.predict(g, da.zeros((3, 2, 5), chunks=1))
    with pytest.raises(ValueError, match="method"):
        ng.dask.predict(g, da.zeros((3, 2, 4), chunks=1), method="predict")
    with pytest.raises(ValueError, match="method"):
        ng.dask.predict(g, db.from_sequence([np.zeros((2, 4))]), method="h")
    with pytest.raises(NotFittedError):
        ng.dask.predict(ng.GRURegressor(hidden_size=4), da.zeros((3, 2, 4), chunks=1))
    assert not started
