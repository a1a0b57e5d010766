"""Losses, optimizers and estimators against PyTorch and scikit-learn conventions."""
import numpy as np
import pytest

import numgru as ng

torch = pytest.importorskip("torch")


def _torch_params(arrays):
    return [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]


@pytest.mark.parametrize("name,ng_kwargs,t_cls,t_kwargs", [
    ("sgd", dict(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
    ("sgd_mom", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01), torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd_nesterov", dict(lr=0.05, momentum=0.8, nesterov=True), torch.optim.SGD,
     dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("adam", dict(lr=1e-2), torch.optim.Adam, dict(lr=1e-2)),
    ("adam_wd_ams", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99)), torch.optim.Adam,
     dict(lr=1e-2, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99))),
    ("adamw", dict(lr=1e-2, weight_decay=0.05), torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    ("rmsprop", dict(lr=1e-2), torch.optim.RMSprop, dict(lr=1e-2)),
    ("rmsprop_full", dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.01, alpha=0.9),
     torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.01, alpha=0.9)),
    # torch's defaults (SGD's lr among them) and its maximize, which steps up the gradient
    ("sgd_defaults", {}, torch.optim.SGD, {}),
    ("adam_defaults", {}, torch.optim.Adam, {}),
    ("adamw_defaults", {}, torch.optim.AdamW, {}),
    ("rmsprop_defaults", {}, torch.optim.RMSprop, {}),
    ("sgd_max", dict(lr=0.1, momentum=0.9, weight_decay=0.01, maximize=True), torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, weight_decay=0.01, maximize=True)),
    ("adam_max", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True), torch.optim.Adam,
     dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("adamw_max", dict(lr=1e-2, maximize=True), torch.optim.AdamW, dict(lr=1e-2, maximize=True)),
    ("rmsprop_max", dict(lr=1e-2, momentum=0.5, centered=True, maximize=True), torch.optim.RMSprop,
     dict(lr=1e-2, momentum=0.5, centered=True, maximize=True)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_steps_equal_torch(name, ng_kwargs, t_cls, t_kwargs, dtype):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    ours = [a.copy() for a in arrays]
    cls = {"sgd": ng.optim.SGD, "adam": ng.optim.Adam, "adamw": ng.optim.AdamW,
           "rmsprop": ng.optim.RMSprop}[name.split("_")[0]]
    opt = cls([("a", ours[0]), ("b", ours[1])], **ng_kwargs)
    tparams = _torch_params(arrays)
    topt = t_cls(tparams, **t_kwargs)
    for _ in range(5):
        grads = [rng.standard_normal(a.shape).astype(dtype) for a in arrays]
        opt.step({"a": grads[0], "b": grads[1]})
        for p, g in zip(tparams, grads):
            p.grad = torch.from_numpy(g)
        topt.step()
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for a, p in zip(ours, tparams):
        np.testing.assert_allclose(a, p.detach().numpy(), atol=tol, rtol=tol)


@pytest.mark.parametrize("cls,kwargs", [(ng.optim.SGD, dict(lr=0.1, momentum=0.9)),
                                        (ng.optim.Adam, dict(lr=1e-2, amsgrad=True)),
                                        (ng.optim.RMSprop, dict(lr=1e-2, centered=True, momentum=0.5))])
def test_optimizer_on_two_threads_equals_one(cls, kwargs, monkeypatch):
    # the parameters laid end to end and cut in one run a thread, across and within arrays
    import numba

    from numgru.training import optim
    monkeypatch.setattr(optim, "UPDATE_PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(0)
    shapes = [(37, 29), (5,), (0,), (1000,), (3, 333)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    start[1] = start[1].astype(np.float64)  # (float64 parameters stay on the calling thread)
    grads = [[rng.standard_normal(s).astype(a.dtype) for s, a in zip(shapes, start)] for _ in range(3)]
    results = []
    for threads in (1, 2, 2):
        params = [a.copy() for a in start]
        opt = cls([(f"p{k}", a) for k, a in enumerate(params)], **kwargs)
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            for step in grads:
                opt.step({f"p{k}": g for k, g in enumerate(step)})
        finally:
            numba.set_num_threads(before)
        results.append(params)
    for one, two in zip(results[0], results[1]):
        np.testing.assert_array_equal(one, two)
    assert all(not np.array_equal(a, b) for a, b in zip(start, results[0]) if a.size)
    p = start[0].copy()
    assert not cls([("a", p), ("b", p[:10])], **kwargs)._disjoint  # overlapping: in order, one thread


def test_optimizer_shares_cover_every_value_once():
    from numgru.training.optim import _update_shares
    sizes = (100, 1, 0, 300, 64)
    for threads in (2, 3, 7):
        arrays = [np.zeros(n) for n in sizes]
        shares = _update_shares([(None, (a,), ()) for a in arrays], threads)
        assert len(shares) <= threads
        for share in shares:
            for _, (piece,) in share:
                piece += 1
        for a in arrays:
            np.testing.assert_array_equal(a, np.ones_like(a), err_msg=str(threads))


def test_optimizer_updates_model_in_place_and_validates():
    g = ng.GRU(3, 4, seed=0)
    opt = ng.optim.SGD(g.named_parameters(), lr=1.0)
    before = g.state_dict()
    opt.step({"bias_ih_l0": np.ones(12, np.float32)})
    np.testing.assert_allclose(g.state_dict()["bias_ih_l0"], before["bias_ih_l0"] - 1)
    np.testing.assert_array_equal(g.state_dict()["weight_ih_l0"], before["weight_ih_l0"])
    with pytest.raises(ValueError, match="grads: unknown parameter 'nope'"):
        opt.step({"nope": np.ones(3)})
    with pytest.raises(ValueError, match=r"grads\['bias_ih_l0'\]: expected shape \(12,\)"):
        opt.step({"bias_ih_l0": np.ones(3)})
    with pytest.raises(ValueError, match="lr"):
        ng.optim.Adam(g.named_parameters(), lr=-1)
    with pytest.raises(ValueError, match="params"):
        ng.optim.Adam([], lr=1e-3)
    with pytest.raises(TypeError, match="params: expected a mapping or an iterable"):
        ng.optim.SGD(3, lr=0.1)
    for cls in (ng.optim.SGD, ng.optim.Adam, ng.optim.AdamW, ng.optim.RMSprop):
        with pytest.raises(TypeError, match="maximize"):
            cls(g.named_parameters(), maximize="yes")
    up = ng.optim.SGD(g.named_parameters(), lr=1.0, maximize=True)
    grad = np.ones(12, np.float32)
    up.step({"bias_ih_l0": grad})  # steps up, and leaves the caller's gradient as it was
    np.testing.assert_allclose(g.state_dict()["bias_ih_l0"], before["bias_ih_l0"], atol=1e-6)
    np.testing.assert_array_equal(grad, 1)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3, 0.5, float("inf"), "inf"])
def test_clip_grad_norm_matches_torch(norm_type):
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(7)}
    tparams = _torch_params(list(grads.values()))
    for p, g in zip(tparams, grads.values()):
        p.grad = torch.from_numpy(g.copy())
    total = ng.optim.clip_grad_norm(grads, 0.5, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, 0.5, norm_type=float(norm_type))
    assert abs(total - float(ttotal)) < 1e-12
    for p, g in zip(tparams, grads.values()):
        np.testing.assert_allclose(g, p.grad.numpy(), atol=1e-12)
    small = {"a": np.full(3, 1e-3)}
    ng.optim.clip_grad_norm(small, 10.0, norm_type=norm_type)
    np.testing.assert_array_equal(small["a"], np.full(3, 1e-3))
    for bad, err in ((0, ValueError), (-2.0, ValueError), ("two", TypeError), (None, TypeError)):
        with pytest.raises(err, match="norm_type"):
            ng.optim.clip_grad_norm(small, 1.0, norm_type=bad)


def test_losses_match_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4)) * 10
    target = rng.integers(0, 4, 6)
    w = rng.uniform(0.5, 2, 4)
    for weight in (None, w):
        loss, grad = ng.losses.cross_entropy(logits, target, weight=weight)
        tl = torch.from_numpy(logits).requires_grad_(True)
        tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target),
                                                  weight=None if weight is None else torch.from_numpy(weight))
        tloss.backward()
        assert abs(loss - tloss.item()) < 1e-12
        np.testing.assert_allclose(grad, tl.grad.numpy(), atol=1e-12)
    pred, tgt = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    loss, grad = ng.losses.mse(pred, tgt)
    tp = torch.from_numpy(pred).requires_grad_(True)
    tl = torch.nn.functional.mse_loss(tp, torch.from_numpy(tgt))
    tl.backward()
    assert abs(loss - tl.item()) < 1e-12
    np.testing.assert_allclose(grad, tp.grad.numpy(), atol=1e-12)
    big, _ = ng.losses.cross_entropy(np.array([[1e4, -1e4]]), np.array([1]))
    assert np.isfinite(big)
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 4\)"):
        ng.losses.cross_entropy(logits, np.full(6, 4))
    with pytest.raises(TypeError, match="target"):
        ng.losses.cross_entropy(logits, np.zeros(6))


def test_truncated_bptt_carries_state():
    """Chunks of a long sequence with h_n carried forward equal one full forward."""
    g = ng.GRU(3, 5, 2, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((40, 2, 3))
    y_full, h_full = g(x)
    h = None
    ys = []
    for s in range(0, 40, 10):
        y, h, tape = g.forward_train(x[s:s + 10], h)
        g.backward(tape, np.ones_like(y))  # a training step would go here
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys), y_full, atol=1e-12)
    np.testing.assert_allclose(h, h_full, atol=1e-12)
