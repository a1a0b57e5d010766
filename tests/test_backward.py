"""Backward (BPTT) against torch autograd, against central finite differences, and across threads."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import numgru as ng

torch = pytest.importorskip("torch")

GTOL = {np.float32: dict(atol=2e-5, rtol=1e-4), np.float64: dict(atol=1e-10, rtol=1e-8)}


def _torch_grads(tg, x, h0, lengths, dy, dh, batch_first):
    tx = torch.from_numpy(x).requires_grad_(True)
    th0 = torch.from_numpy(h0).requires_grad_(True)
    if lengths is None:
        y, h = tg(tx, th0)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.from_numpy(lengths),
                                                         batch_first=batch_first, enforce_sorted=False)
        y, h = tg(packed, th0)
        T = x.shape[1] if batch_first else x.shape[0]
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    loss = (y * torch.from_numpy(dy)).sum() + (h * torch.from_numpy(dh)).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in tg.named_parameters()}
    return tx.grad.numpy(), th0.grad.numpy(), grads


GRID = list(itertools.product([1, 3], [False, True], [True, False], [False, True],
                              [np.float32, np.float64]))


@pytest.mark.parametrize("layers,bidir,bias,use_len,dtype", GRID)
def test_gradients_match_torch(layers, bidir, bias, use_len, dtype):
    seed = (layers * 7 + bidir * 3 + bias * 5 + use_len * 11 + (dtype == np.float32)) % 1000
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    T, B, I, H = 6, 4, 3, 5
    D = 2 if bidir else 1
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    batch_first = bool(seed % 2)
    tg = torch.nn.GRU(I, H, layers, bias=bias, bidirectional=bidir, batch_first=batch_first,
                      dtype=tdtype)
    g = ng.GRU.from_torch(tg)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    lengths = np.array([6, 2, 5, 1]) if use_len else None
    y, h_n, tape = g.forward_train(x, h0, lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    if use_len:  # torch's padded outputs are constants: no gradient flows through them
        for b, L in enumerate(lengths):
            if batch_first:
                dy[b, L:] = 0
            else:
                dy[L:, b] = 0
    dh = rng.standard_normal(h_n.shape).astype(dtype)
    dx, dh0, grads = g.backward(tape, dy, dh)
    tdx, tdh0, tgrads = _torch_grads(tg, x, h0, lengths, dy, dh, batch_first)
    np.testing.assert_allclose(dx, tdx, **GTOL[dtype])
    np.testing.assert_allclose(dh0, tdh0, **GTOL[dtype])
    assert list(grads) == list(tgrads)
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], err_msg=k, **GTOL[dtype])


@pytest.mark.parametrize("use_len,dtype", [(False, np.float32), (True, np.float64)])
def test_gradients_on_panels_match_torch(use_len, dtype):
    """Enough rows × steps (here 4 × 40) that the forward and the backward pack W_hh into panels."""
    rng = np.random.default_rng(11)
    torch.manual_seed(11)
    T, B, I, H = 40, 4, 3, 24
    tg = torch.nn.GRU(I, H, 2, bidirectional=True,
                      dtype=torch.float64 if dtype == np.float64 else torch.float32)
    g = ng.GRU.from_torch(tg)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((4, B, H)).astype(dtype)
    lengths = np.array([40, 33, 7, 1]) if use_len else None  # (torch packs no empty rows)
    y, h_n, tape = g.forward_train(x, h0, lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    if use_len:
        for b, L in enumerate(lengths):
            dy[L:, b] = 0
    dh = rng.standard_normal(h_n.shape).astype(dtype)
    dx, dh0, grads = g.backward(tape, dy, dh)
    tdx, tdh0, tgrads = _torch_grads(tg, x, h0, lengths, dy, dh, False)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == np.float32 else GTOL[dtype]
    np.testing.assert_allclose(dx, tdx, **tol)
    np.testing.assert_allclose(dh0, tdh0, **tol)
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], err_msg=k, **tol)

def test_gradients_with_weights_beyond_l2_match_torch(one_thread):
    """H = 448: the backward's products by W_hh.T (2.4 MB) run block by block, the blocks reversed
    every other step (:func:`~numgru.kernels.forward.step_product`)."""
    rng = np.random.default_rng(12)
    torch.manual_seed(12)
    T, B, I, H = 5, 2, 3, 448
    tg = torch.nn.GRU(I, H)
    g = ng.GRU.from_torch(tg)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    lengths = np.array([5, 2])
    y, h_n, tape = g.forward_train(x, h0, lengths)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy[2:, 1] = 0
    dh = rng.standard_normal(h_n.shape).astype(np.float32)
    dx, dh0, grads = g.backward(tape, dy, dh)
    tdx, tdh0, tgrads = _torch_grads(tg, x, h0, lengths, dy, dh, False)
    tol = dict(atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dx, tdx, **tol)
    np.testing.assert_allclose(dh0, tdh0, **tol)
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], err_msg=k, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_of_few_steps_over_many_rows_match_torch(one_thread, dtype):
    """T = 2 steps of 24 rows, no panels: the backward's products by W_hh.T (K = 3H = 600) take the
    dot-product block on Zen 4 (:func:`~numgru.kernels.forward.numba_rows_past_l2`), BLAS elsewhere;
    rows of both lengths, h0 given."""
    rng = np.random.default_rng(14)
    torch.manual_seed(14)
    T, B, I, H = 2, 24, 7, 200
    tg = torch.nn.GRU(I, H).to(torch.float64 if dtype == np.float64 else torch.float32)
    g = ng.GRU.from_torch(tg)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((1, B, H)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    y, h_n, tape = g.forward_train(x, h0, lengths)
    dy = rng.standard_normal(y.shape).astype(dtype) * (np.arange(T)[:, None] < lengths)[:, :, None]
    dh = rng.standard_normal(h_n.shape).astype(dtype)
    dx, dh0, grads = g.backward(tape, dy, dh)
    tdx, tdh0, tgrads = _torch_grads(tg, x, h0, lengths, dy, dh, False)
    np.testing.assert_allclose(dx, tdx, **GTOL[dtype])
    np.testing.assert_allclose(dh0, tdh0, **GTOL[dtype])
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], err_msg=k, **GTOL[dtype])


def test_gradients_with_weights_beyond_l2_reset_before(one_thread):
    """reset_after=False (torch has no such GRU) at H = 300 in float64 (W_hh.T's blocks 2.2 MB, by
    blocks as above): the gradient along a random direction of every parameter, x and h0 against a
    central difference."""
    rng = np.random.default_rng(13)
    T, B, I, H = 4, 2, 3, 300
    g = ng.GRU(I, H, reset_after=False, dtype=np.float64, seed=13)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((1, B, H))
    lengths = np.array([4, 3])
    dy = rng.standard_normal((T, B, H))
    dy[3:, 1] = 0
    dh = rng.standard_normal((1, B, H))
    y, h_n, tape = g.forward_train(x, h0, lengths)
    dx, dh0, grads = g.backward(tape, dy, dh)
    params = g.state_dict()
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    vx, vh = rng.standard_normal(x.shape), rng.standard_normal(h0.shape)
    eps = 1e-6

    def loss_at(sign):
        g.load_state_dict({k: params[k] + sign * eps * v[k] for k in params})
        return _loss(g, x + sign * eps * vx, h0 + sign * eps * vh, lengths, dy, dh)
    numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
    analytic = (sum(float((grads[k] * v[k]).sum()) for k in v) + float((dx * vx).sum())
                + float((dh0 * vh).sum()))
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)


def _loss(g, x, h0, lengths, dy, dh):
    y, h = g(x, h0, lengths)
    return float((y * dy).sum() + (h * dh).sum())


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("gate,clip,T,B", [("sigmoid", None, 5, 3), ("hard_sigmoid_keras2", None, 5, 3),
                                          ("sigmoid", 1.5, 5, 3), ("hard_sigmoid_keras2", 1.5, 5, 3),
                                          ("sigmoid", None, 32, 5)])  # the last: on panels
def test_gradients_match_finite_differences(reset_after, gate, clip, T, B):
    rng = np.random.default_rng(3)
    I, H, L = 2, 3, 2
    g = ng.GRU(I, H, L, bidirectional=True, reset_after=reset_after, gate_activation=gate, clip=clip,
               dtype=np.float64, seed=1)
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((2 * L, B, H))
    lengths = np.array([T, 3, 0, T - 1, 1][:B])
    y, h_n, tape = g.forward_train(x, h0, lengths)
    dy = rng.standard_normal(y.shape)
    dh = rng.standard_normal(h_n.shape)
    dx, dh0, grads = g.backward(tape, dy, dh)
    eps = 1e-6
    errs = []

    def check(arr, analytic):
        flat = arr.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            lp = _loss(g, x, h0, lengths, dy, dh)
            flat[i] = old - eps
            lm = _loss(g, x, h0, lengths, dy, dh)
            flat[i] = old
            errs.append(abs((lp - lm) / (2 * eps) - analytic.reshape(-1)[i]))

    for name, p in g.named_parameters():
        check(p, grads[name])
    check(x, dx)
    check(h0, dh0)
    errs = np.array(errs)
    assert errs.max() < 1e-6 and errs.mean() < 1e-7, (errs.max(), errs.mean())


def test_dropout_between_layers_matches_mask_semantics():
    g = ng.GRU(3, 4, 3, dropout=0.5, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y_eval, _ = g(x)
    y1, _, tape = g.forward_train(x)
    masks = [lt.mask for lt in tape.layers]
    assert masks[0] is None and all(m is not None for m in masks[1:])
    assert set(np.unique(masks[1])) <= {0.0, 2.0}
    assert not np.allclose(y1, y_eval)
    # gradients through dropout: finite differences with the masks held fixed
    dy = np.ones_like(y1)
    dx, _, grads = g.backward(tape, dy)
    ref = ng.GRU(3, 4, 3, seed=0, dtype=np.float64)
    ref.load_state_dict(g.state_dict())
    assert np.isfinite(dx).all() and all(np.isfinite(v).all() for v in grads.values())


def test_cell_backward_matches_torch():
    torch.manual_seed(0)
    tc = torch.nn.GRUCell(3, 4, dtype=torch.float64)
    c = ng.GRUCell.from_torch(tc)
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    dh1 = rng.standard_normal((2, 4))
    h1, tape = c.forward_train(x, h)
    dx, dh, grads = c.backward(tape, dh1)
    tx = torch.from_numpy(x).requires_grad_(True)
    th = torch.from_numpy(h).requires_grad_(True)
    (tc(tx, th) * torch.from_numpy(dh1)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(dh, th.grad.numpy(), atol=1e-12)
    for k, p in tc.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), atol=1e-12)


def test_linear_backward_matches_torch():
    torch.manual_seed(0)
    tl = torch.nn.Linear(5, 3, dtype=torch.float64)
    lin = ng.Linear(5, 3, dtype=np.float64)
    lin.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2, 5))
    y, tape = lin.forward_train(x)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx, grads = lin.backward(tape, dy)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tl(tx)
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grads["weight"], tl.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grads["bias"], tl.bias.grad.numpy(), atol=1e-12)


def test_backward_errors():
    g = ng.GRU(3, 4, seed=0)
    y, h, tape = g.forward_train(np.ones((5, 2, 3)))
    with pytest.raises(ValueError, match="dy, dh_n"):
        g.backward(tape)
    with pytest.raises(ValueError, match=r"dy: expected shape \(5, 2, 4\)"):
        g.backward(tape, np.ones((5, 2, 5)))
    with pytest.raises(ValueError, match=r"dh_n: expected shape \(1, 2, 4\)"):
        g.backward(tape, None, np.ones((2, 4)))
    with pytest.raises(TypeError, match="tape"):
        ng.GRU(3, 4).backward(tape, np.ones((5, 2, 4)))

    with pytest.raises(TypeError, match="input_grad"):
        g.backward(tape, np.ones((5, 2, 4)), input_grad="no")


@pytest.mark.parametrize("layers,bidir,batch_first,use_len,unbatched", [
    (1, False, False, False, False), (2, True, False, True, False), (3, False, True, True, False),
    (2, True, True, False, False), (2, False, False, False, True)])
def test_backward_without_input_grad(layers, bidir, batch_first, use_len, unbatched):
    """input_grad=False returns dx None and the same dh0 and weight gradients, bit for bit."""
    g = ng.GRU(3, 5, layers, bidirectional=bidir, batch_first=batch_first, seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    shape = (6, 3) if unbatched else ((4, 6, 3) if batch_first else (6, 4, 3))
    x = rng.standard_normal(shape)
    lengths = np.array([6, 2, 5, 0]) if use_len else None
    y, h, tape = g.forward_train(x, lengths=lengths)
    dy, dh = rng.standard_normal(y.shape), rng.standard_normal(h.shape)
    dx, dh0, grads = g.backward(tape, dy, dh)
    none, dh0_b, grads_b = g.backward(tape, dy, dh, input_grad=False)
    assert none is None and dx.shape == x.shape
    np.testing.assert_array_equal(dh0_b, dh0)
    assert list(grads_b) == list(grads)
    for k in grads:
        np.testing.assert_array_equal(grads_b[k], grads[k], err_msg=k)


@pytest.mark.parametrize("reset_after", [True, False])
def test_backward_repeats_bit_for_bit(reset_after):
    """The same forward_train and backward twice give the same bits, wherever NumPy places the
    arrays made in between (the backward's copy of W_hh.T sits on a line: the dot-product block's
    sums follow where W's rows start, and a copy anywhere in a line changed the last bits; so do
    reset_before's copies of its r, z and n columns)."""
    rng = np.random.default_rng(5)
    g = ng.GRU(16, 64, seed=0, reset_after=reset_after)
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    runs = []
    for i in range(5):
        junk = [np.empty(7 * k + 3, np.float32) for k in range(i)]  # moves the next allocations
        y, _, tape = g.forward_train(x)
        dx, dh0, grads = g.backward(tape, np.ones_like(y))
        runs.append((dx, dh0, grads))
        del junk
    for dx, dh0, grads in runs[1:]:
        np.testing.assert_array_equal(dx, runs[0][0])
        np.testing.assert_array_equal(dh0, runs[0][1])
        for k in grads:
            np.testing.assert_array_equal(grads[k], runs[0][2][k], err_msg=k)


def test_cell_backward_without_input_grad():
    c = ng.GRUCell(3, 4, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    for x, h in ((rng.standard_normal((2, 3)), rng.standard_normal((2, 4))),
                 (rng.standard_normal(3), rng.standard_normal(4))):
        h1, tape = c.forward_train(x, h)
        dh1 = np.ones_like(h1)
        dx, dh, grads = c.backward(tape, dh1)
        none, dh_b, grads_b = c.backward(tape, dh1, input_grad=False)
        assert none is None and dx.shape == x.shape and dh_b.shape == h.shape
        np.testing.assert_array_equal(dh_b, dh)
        for k in grads:
            np.testing.assert_array_equal(grads_b[k], grads[k], err_msg=k)


_THREADS_PROBE = r"""
import sys, numba, numpy as np, numgru as ng
numba.set_num_threads(int(sys.argv[1]))
g = ng.GRU(8, 16, 2, bidirectional=True, seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((12, 80, 8)).astype(np.float32)
y, h, tape = g.forward_train(x, lengths=rng.integers(0, 13, 80))
dx, dh0, grads = g.backward(tape, np.ones_like(y), np.ones_like(h))
np.savez(sys.argv[2], dx=dx, dh0=dh0, y=y, **grads)
"""

# work enough for the split paths where the CPU takes them (training's rows in ranges side by
# side, the gradients and projections on worker threads: dispatch's training_row_ranges,
# panel_gradients, pool_projection): 80 rows in ranges of 40, 20 rows of 8 and 12; H = 300: the input
# gradient's K = 3H = 900 on the panels too, and a gradient pair cut mid-job; every row all T steps,
# and padded (ranges cut by the rows' steps, the gradients over the valid steps' rows gathered). 24
# rows of H = 300: ranges of 8 and 16 rows over the 15 steps after the first, where 8 rows would not
# have packed W_hh (their sums had differed in the last bits from one thread's); 16 rows of H = 256
# over 15 steps and 32 rows of H = 512 over 5: ranges whose rows × steps alone would not repay the
# panels the whole batch packs, handed them (the forward's packed once, the backward's by the batch's
# rule); 128 rows of H = 256 over 1 and 2 steps and 64 of H = 96 over 1: training's short steps
# over many rows on panels (forward.panel_steps), split in ranges, the backward's panels packed by
# the caller
_THREADS_PROBE_FULL = r"""
import sys, numba, numpy as np, numgru as ng
numba.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(1)
out = {}
for T, B, H in ((16, 80, 64), (16, 20, 96), (16, 64, 300), (16, 24, 300), (16, 16, 256), (6, 32, 512),
                (1, 128, 256), (2, 128, 256), (1, 64, 96)):
    x = rng.standard_normal((T, B, 24)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B)
    for reset_after in (True, False):
        g = ng.GRU(24, H, 2, bidirectional=True, seed=0, reset_after=reset_after)
        for padded in (False, True):
            y, h, tape = g.forward_train(x, lengths=lengths if padded else None)
            dx, dh0, grads = g.backward(tape, np.cos(y), np.ones_like(h))
            out.update({f"{T}_{B}_{reset_after}_{padded}_{k}": v
                        for k, v in dict(dx=dx, dh0=dh0, y=y, **grads).items()})
np.savez(sys.argv[2], **out)
"""


@pytest.mark.parametrize("probe", [_THREADS_PROBE, _THREADS_PROBE_FULL], ids=["lengths", "full"])
def test_gradients_identical_with_1_and_2_threads(tmp_path, probe):
    outs = []
    for n in (1, 2):
        path = tmp_path / f"g{n}.npz"
        subprocess.run([sys.executable, "-c", probe, str(n), str(path)], check=True,
                       timeout=600, env=dict(os.environ, OPENBLAS_NUM_THREADS=str(n)))
        outs.append(np.load(path))
    for k in outs[0].files:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)


@pytest.mark.parametrize("N, route", [(20, "strips_product"), (256, "strips_product"), (257, "pool_projection")])
def test_wide_input_gradient_keeps_off_blas(monkeypatch, N, route):
    # dx = dG @ W_ih with K = 3H beyond 768 takes W_ih as it lies (few rows) or its transpose's panels
    # where the weight gradients take the panels, so a training step never wakes OpenBLAS's threads
    # (their spinning held a core through the next products); the values match BLAS's
    from numgru.kernels import dispatch
    if not dispatch.panels_gradient_wanted(np.float32):
        pytest.skip("BLAS takes the gradients here")
    rng = np.random.default_rng(8)
    dG = rng.standard_normal((N, 1536)).astype(np.float32)
    W = rng.standard_normal((1536, 200)).astype(np.float32)
    calls = []
    taken = getattr(dispatch, route)
    monkeypatch.setattr(dispatch, route, lambda *a, **k: calls.append(1) or taken(*a, **k))
    monkeypatch.setattr(dispatch, "matmul_into", lambda *a: pytest.fail("BLAS ran"))
    out = dispatch.input_gradient(dG, W, np.empty((N, 200), np.float32), False)
    assert calls
    np.testing.assert_allclose(out, dG.astype(np.float64) @ W.astype(np.float64), atol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, K, M", [(1, 5, 3), (3, 17, 50), (9, 96, 100), (40, 300, 97), (0, 4, 4), (5, 0, 9)])
def test_input_gradient_strips_equals_numpy(rng, dtype, N, K, M):
    """W_ih as it lies (no packing): every shape of rows, strips (48 columns, the last partial) and
    chunks of k, whole and in ranges of columns, which give the whole call's values bit for bit."""
    from numgru.kernels.backward import input_gradient_strips
    dG = rng.standard_normal((N, K)).astype(dtype)
    W = rng.standard_normal((K, M)).astype(dtype)
    whole = np.full((N, M), np.nan, dtype)
    input_gradient_strips(dG, W, whole, 0, M)
    np.testing.assert_allclose(whole, dG.astype(np.float64) @ W.astype(np.float64),
                               atol=1e-4 if dtype == np.float32 else 1e-11)
    parts = np.full((N, M), np.nan, dtype)
    for c0 in range(0, M, 48):
        input_gradient_strips(dG, W, parts, c0, min(M, c0 + 48))
    np.testing.assert_array_equal(parts, whole)
    with pytest.raises(ValueError, match="shapes"):
        input_gradient_strips(dG, W, whole, 0, M + 1)


def test_strips_product_on_two_threads_equals_one(rng, monkeypatch):
    """Runs of columns side by side (two threads) give one thread's values bit for bit."""
    import numba
    from numgru.kernels import dispatch
    dG = rng.standard_normal((24, 1536)).astype(np.float32)
    W = rng.standard_normal((1536, 700)).astype(np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = dispatch.strips_product(dG, W, np.empty((24, 700), np.float32))
    finally:
        numba.set_num_threads(before)
    tasks = []
    side = dispatch.side_by_side
    monkeypatch.setattr(dispatch, "side_by_side", lambda fn, t, n: tasks.append(t) or side(fn, t, n))
    monkeypatch.setattr(dispatch, "PANEL_GRADIENT_POOL_MIN", 0)
    numba.set_num_threads(2)
    try:
        two = dispatch.strips_product(dG, W, np.empty((24, 700), np.float32))
    finally:
        numba.set_num_threads(before)
    assert [(t[3], t[4]) for t in tasks[0]] == [(0, 384), (384, 700)]
    np.testing.assert_array_equal(two, one)


@pytest.mark.parametrize("reset_after", [True, False])
def test_backward_scratch_reused_between_calls(reset_after):
    """The backward's per-step gradients live in scratch reused by the next call on the thread
    (dispatch.workspace): a call on padded rows after one that filled the scratch gives the same
    gradients as on fresh scratch (the kernel writes the padded steps' zeros itself)."""
    from numgru.kernels import dispatch
    rng = np.random.default_rng(5)
    g = ng.GRU(6, 10, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=np.float64, seed=2)
    x = rng.standard_normal((9, 4, 6))
    lengths = np.array([9, 3, 0, 6])
    dispatch._WORKSPACE.__dict__.clear()
    y, hn, tape = g.forward_train(x, lengths=lengths)
    dy = rng.standard_normal(y.shape)
    first = g.backward(tape, dy)
    y2, _, tape2 = g.forward_train(rng.standard_normal((9, 4, 6)))  # full length: fills the scratch
    g.backward(tape2, np.ones_like(y2))
    y, hn, tape = g.forward_train(x, lengths=lengths)
    again = g.backward(tape, dy)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    for k in first[2]:
        np.testing.assert_array_equal(first[2][k], again[2][k], err_msg=k)


def test_recycled_buffer_handed_again_only_when_nothing_views_it():
    # a training tape's buffer comes back once every array on it is gone, not before
    from numgru.kernels.dispatch import WORKSPACE_MIN_VALUES as N, recycled
    a = recycled("test", (4, N), np.float32)
    where = a.ctypes.data
    b = recycled("test", (4, N), np.float32)
    assert not np.shares_memory(a, b)  # a is alive
    part = a[1:]
    del a
    c = recycled("test", (2, N), np.float32)
    assert not np.shares_memory(c, part)  # a view of a's buffer is alive
    del part
    d = recycled("test", (3, N), np.float32)  # smaller: fits the free buffer
    assert d.ctypes.data == where and d.shape == (3, N)
    assert recycled("test", (3, 7), np.float32).base is None  # small arrays: fresh
    assert recycled("test", (4, N), np.float64).ctypes.data != where  # per dtype


def test_training_outputs_and_gradients_held_survive_later_steps(rng):
    # y, dx and the weight gradients are recycled buffers (H = 128: 3H·H values, above the bound on
    # fresh arrays): one the caller still holds is never written again; one let go of comes back
    g = ng.GRU(40, 128, num_layers=2, seed=0)

    def step():
        x = rng.standard_normal((8, 32, 40)).astype(np.float32)
        y, _, tape = g.forward_train(x)
        dx, _, grads = g.backward(tape, rng.standard_normal(y.shape).astype(np.float32), input_grad=True)
        return y, dx, grads

    y1, dx1, grads1 = step()
    kept = (y1.copy(), dx1.copy(), {k: v.copy() for k, v in grads1.items()})
    where = {v.ctypes.data for v in grads1.values()}
    y2, dx2, grads2 = step()
    np.testing.assert_array_equal(y1, kept[0])
    np.testing.assert_array_equal(dx1, kept[1])
    for k, v in grads1.items():
        np.testing.assert_array_equal(v, kept[2][k], err_msg=k)
        assert not np.shares_memory(v, grads2[k])
    del y1, dx1, grads1
    _, _, grads3 = step()
    assert grads3["weight_hh_l0"].ctypes.data in where


def test_workspace_is_per_thread_and_grows():
    import threading

    from numgru.kernels.dispatch import WORKSPACE_MIN_VALUES as N, workspace
    a = workspace("test", (4, N), np.float32)
    b = workspace("test", (2, N + 1), np.float32)
    assert a.shape == (4, N) and b.shape == (2, N + 1) and np.shares_memory(a, b)
    c = workspace("test", (5, N), np.float32)  # larger: a new buffer
    assert c.shape == (5, N) and not np.shares_memory(a, c)
    assert not np.shares_memory(workspace("test", (N,), np.float64), c)  # per dtype
    other = []
    t = threading.Thread(target=lambda: other.append(workspace("test", (4, N), np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], workspace("test", (4, N), np.float32))
    small = workspace("test", (3, 4), np.float32)  # below N values: a fresh array
    assert small.shape == (3, 4) and not np.shares_memory(small, workspace("test", (3, 4), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K", [(768, 256), (37, 19), (16, 16), (1, 5), (48, 33)])
def test_backward_transpose_of_w_hh(dtype, M, K):
    """The backward's W_hh.T: whole tiles (in registers for float32 and float64) and the edges past
    them, on a 64-byte line in the thread's scratch."""
    from numgru.kernels import dispatch
    from numgru.kernels.backward import transpose_into
    W = np.random.default_rng(2).standard_normal((M, K)).astype(dtype)
    W_T = dispatch._transposed(W, "test_W_T")
    np.testing.assert_array_equal(W_T, W.T)
    assert W_T.flags.c_contiguous and W_T.ctypes.data % 64 == 0
    with pytest.raises(ValueError, match="shapes"):
        transpose_into(W, np.empty((K, M + 1), dtype))


@pytest.mark.parametrize("with_h0", [False, True])
def test_empty_sequence_trains_to_zero_gradients(with_h0):
    """T = 0 (as the forward allows): y empty, h_n = h0, dh0 = dh_n and every weight gradient zero;
    from the zero state the first step's shortcut had indexed a step that is not there."""
    g = ng.GRU(4, 8, 2, bidirectional=True, dtype=np.float64, seed=0)
    x = np.empty((0, 3, 4))
    h0 = np.random.default_rng(0).standard_normal((4, 3, 8)) if with_h0 else None
    y, h_n, tape = g.forward_train(x, h0)
    assert y.shape == (0, 3, 16)
    np.testing.assert_array_equal(h_n, np.zeros((4, 3, 8)) if h0 is None else h0)
    dh_n = np.random.default_rng(1).standard_normal(h_n.shape)
    dx, dh0, grads = g.backward(tape, dh_n=dh_n)
    assert dx.shape == (0, 3, 4)
    np.testing.assert_array_equal(dh0, dh_n)
    for k, v in grads.items():
        assert v.shape == g.state_dict()[k].shape and not v.any(), k


def test_one_thread_each_holds_every_task_to_one_thread():
    import numba
    from numgru.kernels import dispatch
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        seen = dispatch.one_thread_each(lambda k: (k, dispatch.thread_count(), numba.get_num_threads()),
                                        [(0,), (1,)])
        assert seen == [(0, 1, 1), (1, 1, 1)]
        assert numba.get_num_threads() == 2  # the caller's count back
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_directions_side_by_side_equal_one_after_the_other(two_threads, monkeypatch, rng, reset_after, padded,
                                                           dtype):
    """A bidirectional layer's two directions, one thread each (two threads, T·B within the bound),
    in the training forward and the backward, give the outputs and gradients of the two run one after
    the other bit for bit: dx's two shares added in the same order, each direction's sums those of
    one thread."""
    from numgru.kernels import dispatch
    if not dispatch.panels_gradient_wanted(dtype):
        pytest.skip("the directions run one after the other here")
    g = ng.GRU(24, 160, 2, bidirectional=True, reset_after=reset_after, seed=3, dtype=dtype)
    x = rng.standard_normal((5, 16, 24)).astype(dtype)
    lengths = np.array([5, 5, 4, 5, 3, 5, 2, 0, 5, 4, 3, 5, 5, 4, 5, 5]) if padded else None  # (65 valid rows)
    monkeypatch.setattr(dispatch, "TRAINING_APART_MIN_WORK", 0)
    monkeypatch.setattr(dispatch, "DIRECTIONS_MIN_WORK", 0)
    runs, calls = [], []
    taken = dispatch.one_thread_each
    monkeypatch.setattr(dispatch, "one_thread_each", lambda *a: calls.append(1) or taken(*a))
    import numgru.layers as layers
    monkeypatch.setattr(layers, "one_thread_each", dispatch.one_thread_each)
    for bound in (0, dispatch.DIRECTIONS_MAX_ROWS):
        monkeypatch.setattr(dispatch, "DIRECTIONS_MAX_ROWS", bound)
        y, h, tape = g.forward_train(x, lengths=lengths)
        runs.append((y, h, *g.backward(tape, np.cos(y), np.ones_like(h))))
    assert len(calls) == 4  # (the second run's two layers, forward and backward)
    (y0, h0, dx0, dh00, g0), (y1, h1, dx1, dh01, g1) = runs
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(h1, h0)
    np.testing.assert_array_equal(dx1, dx0)
    np.testing.assert_array_equal(dh01, dh00)
    for k in g0:
        np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


def test_directions_side_by_side_float64_few_rows(two_threads, monkeypatch):
    """float64 directions over up to DIRECTIONS_FEW_ROWS rows and DIRECTIONS_FEW_ROWS_MAX_HIDDEN units
    run side by side only from DIRECTIONS_MIN_WORK multiply-adds a direction; float32, more rows and
    more units as before."""
    from numgru.kernels import dispatch
    shapes = ((2, 16, 200), (1, 32, 200), (2, 17, 200), (2, 16, 384), (2, 16, 256))
    if not dispatch.panels_gradient_wanted(np.float64) or not all(
            dispatch.training_steps_off_blas(*s) for s in shapes):
        pytest.skip("the directions run one after the other here")
    side = dispatch.directions_side_by_side
    assert not side(2, 16, 200, 200, np.float64)  # 32 rows, 2.6 M multiply-adds
    assert not side(1, 32, 200, 200, np.float64)
    assert side(2, 16, 200, 200, np.float32)
    assert side(2, 17, 200, 200, np.float64)  # 34 rows
    assert side(2, 16, 384, 768, np.float64)  # 32 rows, 384 units (and 14 M)
    assert side(2, 16, 256, 40, np.float64)  # 32 rows, 2.4 M, but 256 units
    monkeypatch.setattr(dispatch, "DIRECTIONS_MIN_WORK", 0)
    assert side(2, 16, 200, 200, np.float64)


def test_training_directions_apart_beyond_512_units(two_threads, monkeypatch, rng):
    """Training's forward runs a bidirectional layer's directions one thread each up to
    TRAINING_APART_MAX_HIDDEN units, beyond 512 only from TRAINING_APART_WIDE_MIN_ROWS rows T·B, and
    its outputs and gradients are those of the directions one after the other bit for bit."""
    from numgru.kernels import dispatch
    shapes = ((2, 16, 640), (1, 24, 640), (2, 16, 1024), (1, 24, 512))
    if not dispatch.panels_gradient_wanted(np.float32) or not all(
            dispatch.directions_side_by_side(T, B, H, 64, np.float32) for T, B, H in shapes):
        pytest.skip("the directions run one after the other here")
    apart = dispatch.training_directions_apart
    assert apart(2, 16, 64, 640, None, np.float32)  # 32 rows
    assert apart(2, 16, 64, 1024, None, np.float32)
    assert not apart(1, 24, 64, 640, None, np.float32)  # 24 rows beyond 512 units
    assert apart(1, 24, 300, 512, None, np.float32)  # (as before up to 512)
    bound = dispatch.TRAINING_APART_MAX_HIDDEN
    monkeypatch.setattr(dispatch, "TRAINING_APART_MAX_HIDDEN", 600)
    assert not apart(2, 16, 64, 640, None, np.float32)
    monkeypatch.setattr(dispatch, "TRAINING_APART_MAX_HIDDEN", bound)
    g = ng.GRU(24, 640, bidirectional=True, seed=4)
    x = rng.standard_normal((2, 16, 24)).astype(np.float32)
    runs, calls = [], []
    taken = dispatch.one_thread_each
    import numgru.layers as layers
    monkeypatch.setattr(layers, "one_thread_each", lambda *a: calls.append(1) or taken(*a))
    for bound in (0, dispatch.DIRECTIONS_MAX_ROWS):
        monkeypatch.setattr(dispatch, "DIRECTIONS_MAX_ROWS", bound)
        y, h, tape = g.forward_train(x)
        runs.append((y, h, *g.backward(tape, np.cos(y), np.ones_like(h))))
    assert len(calls) == 2  # (the second run's forward and backward)
    for one, two in zip(runs[0][:4], runs[1][:4]):
        np.testing.assert_array_equal(two, one)
    for k in runs[0][4]:
        np.testing.assert_array_equal(runs[1][4][k], runs[0][4][k], err_msg=k)


def test_directions_side_by_side_only_where_no_step_calls_blas(monkeypatch):
    """Training's directions run side by side only where every step's product stays off BLAS
    (OpenBLAS from both threads at once ran several times slower): few rows, or W_hh's panels."""
    from numgru.kernels import dispatch, forward
    if not dispatch.panels_gradient_wanted(np.float32) or dispatch.training_tiled_max() != 16:
        pytest.skip("the directions run one after the other here")
    assert dispatch.training_steps_off_blas(2, 16, 512)  # (the rows kernels take 16 rows at any K)
    assert dispatch.training_steps_off_blas(3, 48, 384)  # (panels from 33 rows at T < 4)
    assert dispatch.training_steps_off_blas(2, 24, 128)  # (32 rows at K = 3H = 384)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2", 0)
    assert not dispatch.training_steps_off_blas(2, 24, 256)  # (24 rows by K = 768 in BLAS)
    assert not dispatch.training_steps_off_blas(4, 31, 256)  # (no panels below 128 rows × steps)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2", 32)  # (Zen 4: the dot-product block to 32 rows)
    assert dispatch.training_steps_off_blas(2, 24, 256) and dispatch.training_steps_off_blas(4, 31, 256)
    assert dispatch.training_steps_off_blas(1, 1, 1024) and dispatch.training_steps_off_blas(40, 1, 64)
