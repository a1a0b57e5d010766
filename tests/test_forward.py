"""Forward parity of GRU and GRUCell with tests/reference.py and with torch.nn.GRU / GRUCell."""
import itertools

import numba
import numpy as np
import pytest

import numgru as ng
from conftest import TOL
from reference import cell as ref_cell, gru as ref_gru, random_params

torch = pytest.importorskip("torch")


def _torch_run(tg, x, h0, lengths, batch_first):
    """torch.nn.GRU with packed sequences for lengths; zero-length rows handled as numgru defines."""
    with torch.no_grad():
        tx = torch.from_numpy(x)
        th0 = None if h0 is None else torch.from_numpy(h0)
        if lengths is None:
            y, h = tg(tx, th0)
            return y.numpy(), h.numpy()
        T = x.shape[1] if batch_first else x.shape[0]
        L = torch.from_numpy(np.maximum(lengths, 1))
        packed = torch.nn.utils.rnn.pack_padded_sequence(tx, L, batch_first=batch_first,
                                                         enforce_sorted=False)
        y, h = tg(packed, th0)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=batch_first, total_length=T)
        y, h = y.numpy().copy(), h.numpy().copy()
        zero = lengths == 0  # torch cannot pack length 0: numgru gives zeros and h_n = h0
        if zero.any():
            if batch_first:
                y[zero] = 0
            else:
                y[:, zero] = 0
            h[:, zero] = 0 if h0 is None else h0[:, zero]
        return y, h


GRID = list(itertools.product([1, 2, 3], [False, True], [True, False], [False, True],
                              [np.float32, np.float64]))


@pytest.mark.parametrize("layers,bidir,bias,batch_first,dtype", GRID)
def test_parity_torch_and_reference(layers, bidir, bias, batch_first, dtype):
    seed = hash((layers, bidir, bias, batch_first, dtype == np.float32)) % 2**31
    rng = np.random.default_rng(seed)
    T, B, I, H = 7, 4, 5, 6
    D = 2 if bidir else 1
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(seed)
    tg = torch.nn.GRU(I, H, layers, bias=bias, batch_first=batch_first, bidirectional=bidir,
                      dtype=tdtype)
    g = ng.GRU.from_torch(tg)
    assert g.dtype == dtype
    for use_h0, use_len in [(False, False), (True, False), (True, True), (False, True)]:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
        h0 = rng.standard_normal((layers * D, B, H)).astype(dtype) if use_h0 else None
        lengths = np.array([T, 0, 3, 1]) if use_len else None
        y, h_n = g(x, h0=h0, lengths=lengths)
        assert y.dtype == dtype and h_n.dtype == dtype
        ty, th = _torch_run(tg, x, h0, lengths, batch_first)
        np.testing.assert_allclose(y, ty, **TOL[dtype])
        np.testing.assert_allclose(h_n, th, **TOL[dtype])
        xt = x.transpose(1, 0, 2) if batch_first else x
        ry, rh = ref_gru(xt, g.state_dict(), layers, H, bidir, h0=h0, lengths=lengths)
        ry = ry.transpose(1, 0, 2) if batch_first else ry
        np.testing.assert_allclose(y, ry, **TOL[dtype])
        np.testing.assert_allclose(h_n, rh, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidir", [False, True])
def test_unbatched_matches_torch(dtype, bidir):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    tg = torch.nn.GRU(3, 5, 2, bidirectional=bidir, dtype=tdtype)
    g = ng.GRU.from_torch(tg)
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(dtype)
    h0 = np.random.default_rng(1).standard_normal((2 * (2 if bidir else 1), 5)).astype(dtype)
    y, h = g(x, h0)
    with torch.no_grad():
        ty, th = tg(torch.from_numpy(x), torch.from_numpy(h0))
    assert y.shape == tuple(ty.shape) and h.shape == tuple(th.shape)
    np.testing.assert_allclose(y, ty.numpy(), **TOL[dtype])
    np.testing.assert_allclose(h, th.numpy(), **TOL[dtype])


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"])
@pytest.mark.parametrize("clip", [None, 0.7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variants_against_reference(reset_after, gate, clip, dtype):
    rng = np.random.default_rng(7)
    T, B, I, H, L = 9, 3, 4, 5, 2
    g = ng.GRU(I, H, L, bidirectional=True, reset_after=reset_after, gate_activation=gate,
               clip=clip, dtype=dtype, seed=3)
    params = random_params(I, H, L, bidirectional=True, seed=5)
    g.load_state_dict(params)
    x = (2 * rng.standard_normal((T, B, I))).astype(dtype)
    h0 = rng.standard_normal((2 * L, B, H)).astype(dtype)
    lengths = np.array([9, 4, 0])
    y, h = g(x, h0, lengths)
    alpha = {"sigmoid": 0.2, "hard_sigmoid_keras2": 0.2, "hard_sigmoid_keras3": 1 / 6}[gate]
    kind = "sigmoid" if gate == "sigmoid" else "hard"
    ry, rh = ref_gru(x, params, L, H, True, h0, lengths, reset_after, kind, alpha, 0.5, clip)
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_allclose(h, rh, **TOL[dtype])


def test_hard_sigmoid_custom_alpha_beta():
    g = ng.GRU(3, 4, gate_activation="hard_sigmoid", alpha=0.3, beta=0.4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _ = g(x)
    ry, _ = ref_gru(x, g.state_dict(), 1, 4, gate="hard", alpha=0.3, beta=0.4)
    np.testing.assert_allclose(y, ry, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, I, H", [(3, 4, 6), (20, 5, 300)])  # Numba's small matmul, BLAS
def test_cell_matches_torch(dtype, B, I, H):
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(1)
    tc = torch.nn.GRUCell(I, H, dtype=tdtype)
    c = ng.GRUCell.from_torch(tc)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    with torch.no_grad():
        np.testing.assert_allclose(c(x, h), tc(torch.from_numpy(x), torch.from_numpy(h)).numpy(),
                                   **TOL[dtype])
        np.testing.assert_allclose(c(x), tc(torch.from_numpy(x)).numpy(), **TOL[dtype])
        np.testing.assert_allclose(c(x[0], h[0]), tc(torch.from_numpy(x[0]), torch.from_numpy(h[0])).numpy(),
                                   **TOL[dtype])


def test_cell_reset_before_matches_reference():
    c = ng.GRUCell(4, 6, reset_after=False, dtype=np.float64, seed=2)
    x = np.random.default_rng(0).standard_normal((3, 4))
    h = np.random.default_rng(1).standard_normal((3, 6))
    sd = c.state_dict()
    params = {k + "_l0": v for k, v in sd.items()}
    ry, _ = ref_gru(x[None], params, 1, 6, h0=h[None], reset_after=False)
    np.testing.assert_allclose(c(x, h), ry[0], atol=1e-12)


def test_batch_invariance():
    """A row's output does not depend on the other rows of its batch, within 1e-6 (float32).

    Not bitwise: BLAS runs a GEMV for one row and a GEMM for many, with different reduction orders
    (measured worst difference 6e-8 at B = 16 and B = 100). The fused gate loop itself is row-local.
    """
    rng = np.random.default_rng(0)
    g = ng.GRU(8, 32, 2, bidirectional=True, seed=0)
    X = rng.standard_normal((20, 16, 8)).astype(np.float32)
    lengths = rng.integers(0, 21, 16)
    y, h = g(X, lengths=lengths)
    worst = 0.0
    for b in [0, 5, 15]:
        y1, h1 = g(X[:, b:b + 1], lengths=lengths[b:b + 1])
        worst = max(worst, np.abs(y1[:, 0] - y[:, b]).max(), np.abs(h1[:, 0] - h[:, b]).max())
        y2, _ = g(X[:lengths[b], b])
        np.testing.assert_allclose(y2, y[:lengths[b], b], atol=1e-6)
    assert worst <= 1e-6


def test_lengths_zero_gives_zeros_and_h0():
    g = ng.GRU(3, 4, bidirectional=True, seed=0)
    x = np.ones((5, 2, 3), np.float32)
    h0 = np.full((2, 2, 4), 0.25, np.float32)
    y, h = g(x, h0, lengths=np.array([0, 5]))
    assert np.all(y[:, 0] == 0)
    np.testing.assert_array_equal(h[:, 0], h0[:, 0])


def test_nan_propagates_and_huge_inputs_are_finite():
    g = ng.GRU(3, 4, seed=0)
    x = np.zeros((4, 2, 3), np.float32)
    x[1, 0, 0] = np.nan
    y, _ = g(x)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all()
    assert np.isfinite(y[0, 0]).all()
    for dtype in (np.float32, np.float64):
        g = ng.GRU(3, 4, seed=0, dtype=dtype)
        big = np.array([1e30, -1e30, 1e30], dtype)[None, None, :].repeat(5, 0)
        y, h = g(big)
        assert np.isfinite(y).all() and np.isfinite(h).all()
        g2 = ng.GRU(3, 4, seed=0, dtype=dtype, reset_after=False, gate_activation="hard_sigmoid")
        assert np.isfinite(g2(big)[0]).all()


def test_readonly_and_noncontiguous_inputs():
    g = ng.GRU(3, 4, seed=0, batch_first=True)
    base = np.random.default_rng(0).standard_normal((2, 6, 10)).astype(np.float32)
    x = base[:, :, ::3][:, :, :3]
    assert not x.flags.c_contiguous
    ref, _ = g(np.ascontiguousarray(x))
    xr = np.ascontiguousarray(x)
    xr.setflags(write=False)
    np.testing.assert_array_equal(g(x)[0], ref)
    np.testing.assert_array_equal(g(xr)[0], ref)
    for p in g.parameters():
        p.setflags(write=False)
    np.testing.assert_array_equal(g(xr)[0], ref)


def test_other_input_dtypes_are_cast():
    g = ng.GRU(3, 4, seed=0)
    x = np.arange(24).reshape(4, 2, 3)
    y, _ = g(x)
    np.testing.assert_array_equal(y, g(x.astype(np.float32))[0])
    y64, _ = g(x.astype(np.float64))
    assert y64.dtype == np.float32


def test_init_matches_torch_bounds_and_seed():
    a, b = ng.GRU(5, 16, 2, seed=42), ng.GRU(5, 16, 2, seed=42)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa, pb)
        assert np.abs(pa).max() <= 0.25
    assert a.num_parameters() == sum(p.numel() for p in torch.nn.GRU(5, 16, 2).parameters())
    assert ng.GRU(5, 16, bidirectional=True, bias=False).num_parameters() == 2 * 3 * (5 * 16 + 16 * 16)


def test_state_dict_roundtrip_and_live_parameters():
    g = ng.GRU(3, 4, 2, bidirectional=True, seed=0)
    sd = g.state_dict()
    assert list(sd) == [n for n, _ in g.named_parameters()]
    tsd = torch.nn.GRU(3, 4, 2, bidirectional=True).state_dict()
    assert list(sd) == list(tsd) and all(sd[k].shape == tuple(tsd[k].shape) for k in sd)
    sd["weight_hh_l0"][:] = 0  # a copy: the model is unchanged
    assert np.abs(g.state_dict()["weight_hh_l0"]).sum() > 0
    dict(g.named_parameters())["bias_ih_l1"][:] = 1.5  # live: the model changes
    assert np.all(g.state_dict()["bias_ih_l1"] == 1.5)
    h = ng.GRU(3, 4, 2, bidirectional=True, seed=9)
    h.load_state_dict({k: torch.from_numpy(v) for k, v in g.state_dict().items()})
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(h(x)[0], g(x)[0])


def test_to_torch_roundtrip():
    g = ng.GRU(3, 5, 2, bidirectional=True, batch_first=True, seed=0, dtype=np.float64)
    tg = g.to_torch()
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    with torch.no_grad():
        ty, th = tg(torch.from_numpy(x))
    y, h = g(x)
    np.testing.assert_allclose(y, ty.numpy(), atol=1e-12)
    np.testing.assert_allclose(h, th.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="reset_after"):
        ng.GRU(3, 5, reset_after=False).to_torch()


def test_torch_tensors_of_dtypes_numpy_lacks_are_widened():
    """bfloat16 tensors (a bfloat16 model's weights, or its inputs) are read as float32, as
    ``tensor.float()`` gives them."""
    g = ng.GRU(3, 4, seed=0)
    x = torch.randn(5, 2, 3).bfloat16()
    np.testing.assert_array_equal(g(x)[0], g(x.float().numpy())[0])
    g.load_state_dict({k: torch.from_numpy(v).bfloat16() for k, v in g.state_dict().items()})
    assert g.state_dict()["weight_ih_l0"].dtype == np.float32


def test_from_torch_reads_parametrized_weights():
    """A weight under a parametrization (weight_norm here) is read as the module's forward reads
    it; its state_dict holds only the parametrization's pieces."""
    from torch.nn.utils.parametrizations import weight_norm
    tg = weight_norm(torch.nn.GRU(3, 5, 2), name="weight_hh_l1")
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    with torch.no_grad():
        ty, th = tg(torch.from_numpy(x))
    y, h = ng.GRU.from_torch(tg)(x)
    np.testing.assert_allclose(y, ty.numpy(), atol=1e-5)
    np.testing.assert_allclose(h, th.numpy(), atol=1e-5)


@pytest.mark.parametrize("B,H,reset_after", [(3, 520, True), (3, 520, False), (9, 530, True),
                                             (6, 40, True), (6, 41, False), (17, 24, True),
                                             (20, 8, False), (1, 30, True), (1, 300, True),
                                             (24, 520, True), (32, 520, False), (40, 520, True),
                                             (48, 640, False)])
def test_every_recurrent_matmul_route(B, H, reset_after):
    """One thread: B = 1 takes the register-blocked kernel up to H = 256 and beyond it the dot-product
    block (``one_row_dot``: Zen 4; its blocks of rows last first every other step) or a GEMV,
    B = 2–16 the register-blocked kernel (remainder rows, odd H; in tiles for H > 512), 17–32 rows
    beyond H = 512 the dot-product block on Zen 4 (``numba_rows_past_l2``), larger batches a BLAS
    GEMM (float64 beyond H = 512 asked for as it stands from 33 rows on Zen 4, ``direct_rows``): all
    agree with the reference."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        _check_route(B, H, reset_after)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("B, H, reset_after", [
    (B, H, reset_after) for B in (33, 64, 96, 97, 256, 257)
    for H, reset_after in ((128, True), (300, False))
] + [(33, 640, True), (65, 640, False), (256, 520, True), (257, 640, False), (65, 1030, True)])
def test_many_float32_rows_agree(B, H, reset_after):
    """One thread, float32: from K = 128, 33–96 rows take the dot-product block on Zen 4
    (``many_rows_dot``), 97–256 W's panels packed in the call (``many_rows_packed``), 257 BLAS; beyond
    K = 512 the block up to 64 rows, and to 256 while K ≤ 768 (``many_rows_past_l2``); the GRUCell step
    and a forward of two steps given h0 agree with the reference either way."""
    rng = np.random.default_rng(B + H)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        g = ng.GRU(H, H, reset_after=reset_after, seed=2)
        x = rng.standard_normal((2, B, H)).astype(np.float32)
        h0 = rng.standard_normal((1, B, H)).astype(np.float32)
        y, h = g(x, h0)
        cell = ng.GRUCell(H, H, reset_after=reset_after, seed=2)
        hc = cell(x[0], h0[0])
    finally:
        numba.set_num_threads(before)
    ry, rh = ref_gru(x, g.state_dict(), 1, H, h0=h0, reset_after=reset_after)
    np.testing.assert_allclose(y, ry, atol=2e-5)
    np.testing.assert_allclose(h, rh, atol=2e-5)
    sd = cell.state_dict()
    want = ref_cell(x[0].astype(np.float64), h0[0].astype(np.float64), sd["weight_ih"], sd["weight_hh"],
                    sd["bias_ih"], sd["bias_hh"], reset_after)
    np.testing.assert_allclose(hc, want, atol=2e-5)


def test_many_rows_dot_rule(monkeypatch):
    """Beyond NUMBA_ROWS_MAX rows, float32 products up to ROWS_DOT_MANY rows (Zen 4) from
    ROWS_DOT_MANY_MIN_K to NUMBA_ROWS_MAX_K inner values take the dot-product block, and from there
    up to ROWS_PACKED_MANY rows W's panels packed in the call; elsewhere neither."""
    from numgru.kernels import forward
    rule = forward.many_rows_dot.py_func
    monkeypatch.setattr(forward, "ROWS_DOT_MANY", 96)
    assert rule(33, 128) and rule(96, 512) and rule(64, 256)
    assert not rule(32, 256) and not rule(97, 256) and not rule(64, 64) and not rule(64, 513)
    monkeypatch.setattr(forward, "ROWS_DOT_MANY", 0)
    assert not rule(33, 256) and not rule(64, 128)
    packed = forward.many_rows_packed.py_func
    monkeypatch.setattr(forward, "ROWS_DOT_MANY", 96)
    monkeypatch.setattr(forward, "ROWS_PACKED_MANY", 256)
    assert packed(97, 128) and packed(256, 512) and not packed(96, 256) and not packed(257, 256)
    assert not packed(128, 64) and not packed(128, 513)
    monkeypatch.setattr(forward, "ROWS_DOT_MANY", 0)
    monkeypatch.setattr(forward, "ROWS_PACKED_MANY", 0)
    assert not packed(128, 256)


def test_one_row_dot_rule(monkeypatch):
    """One row beyond L2 takes the dot-product block where ONE_ROW_DOT_PAST_L2 (Zen 4) and BLAS would
    run on one thread (tiled_max of one thread, or −1: the caller on Numba's threads); within L2, on
    several BLAS threads and elsewhere the GEMV."""
    from numgru.kernels import forward
    rule = forward.one_row_dot.py_func
    one = forward.TILED_MAX_ONE_THREAD
    monkeypatch.setattr(forward, "ONE_ROW_DOT_PAST_L2", True)
    assert rule(257, one) and rule(1024, one) and rule(4096, -1)
    assert not rule(256, one) and not rule(512, 4) and not rule(1024, 4)
    monkeypatch.setattr(forward, "ONE_ROW_DOT_PAST_L2", False)
    assert not rule(1024, one) and not rule(512, -1)


def test_numba_rows_past_l2_rule(monkeypatch):
    """Beyond K = 512 Numba's kernels take up to tiled_max rows (all for −1), and where
    ROWS_DOT_PAST_L2 is set (Zen 4) that many with the one-thread tiled_max; BLAS the rest."""
    from numgru.kernels import forward
    rule = forward.numba_rows_past_l2.py_func
    one = forward.TILED_MAX_ONE_THREAD
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2", 32)
    assert rule(2, one) and rule(17, one) and rule(32, one) and rule(4096, -1)
    assert not rule(33, one) and not rule(5, 4) and not rule(17, 4)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2", 0)
    assert rule(16, one) and not rule(17, one) and rule(4, 4) and not rule(5, 4)


def test_direct_rows_rule(monkeypatch):
    """BLAS is asked for h @ W.T as it stands from DIRECT_ROWS_64 float64 rows within K = 512 and from
    DIRECT_ROWS_64_PAST_L2 beyond; float32 from DIRECT_ROWS_32 rows within DIRECT_ROWS_MAX_K_32, never
    beyond."""
    from numgru.kernels import forward
    rule = forward.direct_rows.py_func
    monkeypatch.setattr(forward, "DIRECT_ROWS_64_PAST_L2", 33)
    assert rule(512, 8) == forward.DIRECT_ROWS_64 and rule(513, 8) == 33 and rule(4096, 8) == 33
    assert rule(512, 4) == forward.DIRECT_ROWS_32 and rule(513, 4) > 1 << 40


def test_many_rows_past_l2_rule(monkeypatch):
    """Beyond K = 512, with the one-thread tiled_max, float32 products keep in the dot-product block up
    to ROWS_DOT_PAST_L2_MANY rows, and up to ROWS_DOT_PAST_L2_NARROW while K ≤
    ROWS_DOT_PAST_L2_NARROW_MAX_K (Zen 4); not within K = 512, not with BLAS's tiled_max, nowhere
    where the bounds are 0."""
    from numgru.kernels import forward
    rule = forward.many_rows_past_l2.py_func
    one = forward.TILED_MAX_ONE_THREAD
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2_MANY", 64)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2_NARROW", 256)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2_NARROW_MAX_K", 768)
    assert rule(33, 513, one) and rule(64, 4096, one) and rule(256, 768, one) and rule(200, 640, one)
    assert not rule(65, 769, one) and not rule(257, 640, one) and not rule(64, 512, one)
    assert not rule(40, 640, 4)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2_MANY", 0)
    monkeypatch.setattr(forward, "ROWS_DOT_PAST_L2_NARROW", 0)
    assert not rule(33, 640, one) and not rule(2, 1024, one)


def _check_route(B, H, reset_after):
    rng = np.random.default_rng(B * 1000 + H)
    g = ng.GRU(5, H, reset_after=reset_after, dtype=np.float64, seed=1)
    x = rng.standard_normal((4, B, 5))
    lengths = rng.integers(0, 5, B)
    lengths[0] = 4
    y, h = g(x, lengths=lengths)
    ry, rh = ref_gru(x, g.state_dict(), 1, H, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y, ry, atol=1e-10)
    np.testing.assert_allclose(h, rh, atol=1e-10)



@pytest.mark.parametrize("T,B,H,reset_after,dtype", [
    (9, 1, 448, True, np.float32), (9, 1, 448, False, np.float32),  # GEMV by blocks
    (40, 4, 448, True, np.float32), (40, 3, 448, False, np.float32),  # panels by blocks
    (7, 2, 300, True, np.float64), (7, 20, 300, True, np.float64)])  # blocks; 20 rows: one sweep
def test_products_beyond_l2_in_blocks(one_thread, T, B, H, reset_after, dtype):
    """Weights past ZIGZAG_MIN_BYTES are multiplied block by block, the blocks in reverse order every
    other step (:func:`~numgru.kernels.forward.step_product`): panels and GEMV, an odd step count,
    a last block shorter than the rest, rows finishing early; all agree with the reference."""
    from numgru.kernels.forward import ZIGZAG_MAX_ROWS, ZIGZAG_MIN_BYTES, ZIGZAG_ROWS, zigzag_rows
    nbytes = 3 * H * H * np.dtype(dtype).itemsize
    assert nbytes > ZIGZAG_MIN_BYTES and 3 * H % ZIGZAG_ROWS != 0
    assert zigzag_rows.py_func(3 * H, nbytes, B, True) == (ZIGZAG_ROWS if B <= ZIGZAG_MAX_ROWS else 3 * H)
    assert zigzag_rows.py_func(3 * H, nbytes, B, False) == 3 * H
    assert zigzag_rows.py_func(3 * H, ZIGZAG_MIN_BYTES, B, True) == 3 * H
    rng = np.random.default_rng(T * B + H)
    g = ng.GRU(5, H, reset_after=reset_after, dtype=dtype, seed=4)
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    for kw in ({}, dict(lengths=lengths)):
        for model in (g, g.freeze()):
            y, h = model(x, **kw)
            ry, rh = ref_gru(x, g.state_dict(), 1, H, reset_after=reset_after, **kw)
            np.testing.assert_allclose(y, ry, **TOL[dtype])
            np.testing.assert_allclose(h, rh, **TOL[dtype])


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("backwards", [False, True])
def test_unpacked_products_by_blocks(one_thread, n, backwards):
    """The blocks of unpacked weights (:func:`~numgru.kernels.forward.product_blocks`), which the steps
    take only where :data:`~numgru.kernels.forward.ZIGZAG_UNPACKED` (not on Zen 4), give x @ W.T on
    every machine: a last block shorter than the rest, either order."""
    from numgru.kernels.forward import ZIGZAG_ROWS, product_blocks
    rng = np.random.default_rng(n)
    W = rng.standard_normal((3 * 150, 200)).astype(np.float32)  # 450 rows: 3 blocks and 66
    x = rng.standard_normal((n, 200)).astype(np.float32)
    out = np.full((n, 450), np.nan, np.float32)
    assert 450 % ZIGZAG_ROWS != 0
    blocks = numba.njit(lambda W, x, out, n, b: product_blocks(W, np.empty((0, 0, 0), np.float32), x, out,
                                                                np.empty(450 * n, np.float32), n, 16, b,
                                                                False))
    blocks(W, x, out, n, backwards)
    np.testing.assert_allclose(out, x.astype(np.float64) @ W.T.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_rows_beyond_k512_on_panels_where_zen(one_thread, reset_after, dtype):
    """17+ rows by W_hh past K = 512 take the panels on one thread on Zen 4
    (:data:`~numgru.kernels.forward.PANELS_PAST_L2_MANY_ROWS`), BLAS elsewhere and whenever BLAS may
    thread the product; either way the forward agrees with the reference, with rows finishing early
    (their steps then take fewer rows, down to the one-row product)."""
    from numgru.kernels.forward import PANELS_PAST_L2_MANY_ROWS, TILED_MAX_ONE_THREAD, use_panels
    T, B, H = 8, 20, 520
    assert use_panels.py_func(3 * H, H, B, TILED_MAX_ONE_THREAD, False) == PANELS_PAST_L2_MANY_ROWS
    assert not use_panels.py_func(3 * H, H, B, 4, False)
    assert use_panels.py_func(3 * H, H, B, 4, False) == use_panels.py_func(3 * H, H, 64, 4, False)
    rng = np.random.default_rng(B + H)
    g = ng.GRU(6, H, reset_after=reset_after, dtype=dtype, seed=5)
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[:2] = T
    for kw in ({}, dict(lengths=lengths)):
        y, h = g(x, **kw)
        ry, rh = ref_gru(x, g.state_dict(), 1, H, reset_after=reset_after, **kw)
        np.testing.assert_allclose(y, ry, **TOL[dtype])
        np.testing.assert_allclose(h, rh, **TOL[dtype])


@pytest.mark.parametrize("name, features, want", [
    ("znver4", "+avx2,+avx512f,+fma", True), ("znver5", "+avx2,+avx512f,+fma", True),
    ("znver3", "+avx2,-avx512f,+fma", False), ("sapphirerapids", "+avx2,+avx512f,+fma", False),
])
def test_avx512_zen_reads_the_cpu(monkeypatch, name, features, want):
    from numgru.kernels import _jit
    monkeypatch.setattr(_jit.numba.config, "CPU_NAME", name)
    monkeypatch.setattr(_jit.numba.config, "CPU_FEATURES", features)
    assert _jit.avx512_zen() is want


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,B,H", [(40, 4, 24), (40, 1, 24), (8, 4, 24), (7, 4, 24), (3, 50, 24),
                                   (8, 4, 160), (32, 4, 160)])
def test_forward_on_and_off_panels_matches_reference(reset_after, dtype, T, B, H):
    """Rows × steps enough to pack W_hh into panels (40 × 4 and 8 × 4 at H ≤ 128, 32 × 4 beyond, one
    row of 40 steps at H ≤ 64; :func:`~numgru.kernels.forward.wants_panels`) and too few (7 × 4,
    3 × 50, 8 × 4 at H = 160), with lengths."""
    from numgru.kernels.forward import wants_panels
    packs = wants_panels.py_func(3 * H, H, B, T, 16, False)
    assert packs == (T >= 4 and T * B >= (32 if H <= 128 else 128) or B == 1 and T >= 16)
    rng = np.random.default_rng(T * B)
    g = ng.GRU(7, H, reset_after=reset_after, dtype=dtype, seed=2)
    x = rng.standard_normal((T, B, 7)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    y, h = g(x, lengths=lengths)
    ry, rh = ref_gru(x, g.state_dict(), 1, H, lengths=lengths, reset_after=reset_after)
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_allclose(h, rh, **TOL[dtype])

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B", [4, 1])
def test_input_projection_on_panels_one_thread(dtype, bias, B):
    """One thread, from 16 / 32 / 128 rows for at most 64 / 128 / 256 inputs: the projection runs on
    packed panels of W_ih (a layer of 37 inputs, then one of 2·H); the whole model agrees with the
    reference."""
    from numgru.kernels import dispatch
    if dispatch.ZEN_PROJECTION:  # Zen 4/5: by its own table, from 16 / 24 / 48 / 129 rows
        least = [(16, 64), (24, 128), (48, 256), (129, 768)]
        assert not dispatch.projection_panels(10000, 769, 1)
    else:
        least = [(16, 64), (32, 128), (128, 256)]
        assert not dispatch.projection_panels(1000, 257, 1)
    for rows, inputs in least:
        assert dispatch.projection_panels(rows, inputs, 1)
        assert not dispatch.projection_panels(rows - 1, inputs, 1)
    # with BLAS on several threads, only the few rows where one thread's panels beat it
    for N, I, want in [(128, 64, True), (129, 64, False), (64, 128, True), (65, 128, False),
                       (16, 64, True), (15, 64, False), (100, 129, False)]:
        assert dispatch.serial_projection_panels(N, I, 2) == want
        assert dispatch.serial_projection_panels(N, I, 1) == dispatch.projection_panels(N, I, 1)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert dispatch.projection_panels(40 * B, 37, 1)
        rng = np.random.default_rng(7)
        g = ng.GRU(37, 20, num_layers=2, bidirectional=True, bias=bias, dtype=dtype, seed=3)
        x = rng.standard_normal((40, B, 37)).astype(dtype)
        y, h = g(x)
        ry, rh = ref_gru(x, g.state_dict(), 2, 20, bidirectional=True)
        np.testing.assert_allclose(y, ry, **TOL[dtype])
        np.testing.assert_allclose(h, rh, **TOL[dtype])
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("N, I", [(300, 37), (257, 512), (100, 20), (600, 1000), (2048, 600), (300, 600)])
def test_input_projection_on_numba_threads(two_threads, N, I):
    """The projection on Numba's threads, on packed panels (from 256 rows with ≤ 512 inputs, from 512
    with more) or on tiles of W_ih, agrees with NumPy, with and without a bias."""
    from numgru.kernels import dispatch
    rng = np.random.default_rng(N)
    x2d = rng.standard_normal((N, I))
    W = rng.standard_normal((30, I))
    b = rng.standard_normal(30)
    assert dispatch.projection_panels(N, I, 2) == (N >= 256 and (I <= 512 or N >= 512))
    np.testing.assert_allclose(dispatch.input_projection(x2d, W, b, numba_threads=True), x2d @ W.T + b,
                               atol=1e-10)
    np.testing.assert_allclose(dispatch.input_projection(x2d, W, None, numba_threads=True), x2d @ W.T,
                               atol=1e-10)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, I", [(2, 5), (3, 37), (16, 64), (17, 64), (32, 130), (33, 16), (64, 130),
                                  (65, 256), (40, 300), (100, 600), (140, 300)])
def test_input_projection_few_rows(dtype, N, I, one_thread):
    """Few rows (short sequences, small batches) take the dot-product block instead of BLAS: on one
    thread up to 32 rows (64 for 129–256 inputs; on Zen 4/5 up to 15 / 23 / 47 / 128 / 128 rows for
    at most 64 / 128 / 256 / 768 / more inputs), on more up to 32 rows for at most 128 inputs and
    16 otherwise, in training up to 16 (float32 up to 63 where BLAS is no wider than Numba, below the
    panels' 64); every route agrees with NumPy."""
    from numgru.kernels import dispatch
    if dispatch.ZEN_PROJECTION:
        most = next(rows for inputs, rows in [(64, 15), (128, 23), (256, 47), (768, 128), (1 << 62, 128)]
                    if I <= inputs)
    else:
        most = 64 if 128 < I <= 256 else 32
    assert dispatch.projection_dot(N, I, 1, False) == (2 <= N <= most)
    for threads in (1, 2, 8):  # training's bound is the same for every thread count
        assert dispatch.projection_dot(N, I, threads, True, 8) == (2 <= N <= 16)
        assert dispatch.projection_dot(N, I, threads, True) == (2 <= N <= (16 if dispatch.WIDE_BLAS else 63))
    assert dispatch.projection_dot(N, I, 2, False) == (2 <= N <= (32 if I <= 128 else 16))
    if dispatch.ZEN_PROJECTION and I > 256:  # float64's own: the block to 32 rows, BLAS beyond
        assert dispatch.projection_dot(N, I, 1, False, 8) == (2 <= N <= 32)
        assert not dispatch.projection_panels(N, I, 1, 8)
    # (on one thread: the serial kernel takes the one-thread routes above)
    rng = np.random.default_rng(N * 100 + I)
    x2d = rng.standard_normal((N, I)).astype(dtype)
    W = rng.standard_normal((3 * 24, I)).astype(dtype)
    b = rng.standard_normal(3 * 24).astype(dtype)
    tol = dict(atol=1e-4, rtol=1e-5) if dtype == np.float32 else dict(atol=1e-11)
    want = x2d.astype(np.float64) @ W.T.astype(np.float64)
    for training in (False, True):
        np.testing.assert_allclose(dispatch.input_projection(x2d, W, b, training=training), want + b, **tol)
        np.testing.assert_allclose(dispatch.input_projection(x2d, W, None, training=training), want, **tol)

def test_input_projection_skips_padded_rows(monkeypatch):
    from numgru.kernels import dispatch
    monkeypatch.setattr(dispatch, "PACK_MIN_SAVED", 0)  # gather however little it saves
    rng = np.random.default_rng(0)
    x2d = rng.standard_normal((12, 3)).astype(np.float32)
    W = rng.standard_normal((6, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    valid = np.zeros(12, bool)
    valid[[0, 4, 5]] = True
    gx = dispatch.input_projection(x2d, W, b, valid=valid)
    np.testing.assert_allclose(gx[valid], x2d[valid] @ W.T + b, rtol=1e-5, atol=1e-6)
    assert not gx[~valid].any()
    assert not dispatch.input_projection(x2d, W, b, valid=np.zeros(12, bool)).any()
    full = dispatch.input_projection(x2d, W, b, valid=np.ones(12, bool))  # every row valid
    np.testing.assert_allclose(full, x2d @ W.T + b, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(dispatch, "PACK_MIN_SAVED", 1 << 40)  # too little saved: every row projected
    out = np.full((12, 6), np.nan, np.float32)
    assert dispatch.input_projection(x2d, W, b, valid=valid, out=out) is out
    np.testing.assert_allclose(out, x2d @ W.T + b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("with_h0", [False, True])
def test_padded_steps_unprojected_give_the_same_results(monkeypatch, reset_after, with_h0):
    """Padded steps left out of the projection and of the weight and input gradients (their rows
    gathered) against every step multiplied: the same outputs and gradients."""
    from numgru.kernels import dispatch
    rng = np.random.default_rng(1)
    T, B, I, H = 7, 5, 4, 6
    g = ng.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype=np.float64, seed=2)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((4, B, H)) if with_h0 else None
    lengths = np.array([7, 0, 3, 1, 5])
    monkeypatch.setattr(dispatch, "PACK_MIN_SAVED", 0)  # the valid steps gathered, however few
    monkeypatch.setattr(dispatch, "GRADIENT_GATHER_MIN_SAVED", 0)
    y, h_n, tape = g.forward_train(x, h0, lengths=lengths)
    dy = rng.standard_normal(y.shape)
    dx, _, grads = g.backward(tape, dy)
    monkeypatch.setattr(dispatch, "PACK_BELOW", 0.0)   # project every step, padded ones too
    y_full, h_full = g(x, h0, lengths=lengths)
    _, _, tape_full = g.forward_train(x, h0, lengths=lengths)
    dx_full, _, grads_full = g.backward(tape_full, dy)
    np.testing.assert_allclose(y, y_full, atol=1e-12)
    np.testing.assert_allclose(h_n, h_full, atol=1e-12)
    np.testing.assert_allclose(dx, dx_full, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_full[k], atol=1e-12, err_msg=k)


@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
@pytest.mark.parametrize("gather", [True, False])
def test_padding_values_never_reach_results_or_gradients(monkeypatch, request, threads, gather):
    """NaN and ±Inf on padded steps: the same outputs and gradients as zeros there (W_ih's gradient
    sums over every row of x, where 0 · NaN had made it NaN), gathered or not."""
    from numgru.kernels import dispatch
    request.getfixturevalue(threads)
    monkeypatch.setattr(dispatch, "PACK_MIN_SAVED", 0 if gather else 1 << 40)
    monkeypatch.setattr(dispatch, "GRADIENT_GATHER_MIN_SAVED", 0 if gather else 1 << 40)
    rng = np.random.default_rng(5)
    T, B, I, H = 6, 8, 5, 32
    g = ng.GRU(I, H, 2, bidirectional=True, dtype=np.float64, seed=3)
    lengths = np.array([6, 2, 0, 5, 1, 6, 3, 4])
    x = rng.standard_normal((T, B, I))
    xz, xn = x.copy(), x.copy()
    for b, n in enumerate(lengths):
        xz[n:, b] = 0.0
        xn[n:, b] = [np.nan, np.inf, -np.inf, 1e308, np.nan]
    dy = rng.standard_normal((T, B, 2 * H))
    results = []
    for xs in (xz, xn):
        y, h_n = g(xs, lengths=lengths)
        yt, ht, tape = g.forward_train(xs, lengths=lengths)
        dx, dh0, grads = g.backward(tape, dy)
        results.append((y, h_n, yt, ht, dx, dh0, grads))
    (*want, gw), (*got, gg) = results
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, atol=1e-12)
    for k in gw:
        assert np.isfinite(gg[k]).all(), k
        np.testing.assert_allclose(gg[k], gw[k], atol=1e-12, err_msg=k)


def test_lengths_all_full_match_no_lengths():
    """lengths all T: the unpadded (planned) path, the same results as without lengths."""
    rng = np.random.default_rng(6)
    g = ng.GRU(4, 16, 2, bidirectional=True, seed=1)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    y, h_n = g(x)
    y2, h2 = g(x, lengths=np.full(3, 5))
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h_n)
    yt, ht, _ = g.forward_train(x, lengths=[5, 5, 5])
    np.testing.assert_allclose(yt, y, atol=1e-6)


@pytest.mark.parametrize("threads", ["one_thread", "two_threads"])
def test_padded_outputs_stay_the_callers(monkeypatch, request, threads):
    """A padded multi-layer call's layers and reordered rows run on this thread's scratch: the arrays
    it returns are the caller's, not overwritten by the next call (rows in order or reordered)."""
    from numgru.kernels import dispatch
    request.getfixturevalue(threads)
    monkeypatch.setattr(dispatch, "WORKSPACE_MIN_VALUES", 0)  # scratch at any size
    rng = np.random.default_rng(7)
    T, B, I, H = 12, 16, 8, 64
    g = ng.GRU(I, H, 3, bidirectional=True, seed=2)
    lengths = np.sort(rng.integers(1, T + 1, B))[::-1].copy()
    lengths[0] = T
    xs = [rng.standard_normal((T, B, I)).astype(np.float32) for _ in range(4)]
    outs = [g(x, lengths=lengths if k % 2 else lengths[::-1].copy()) for k, x in enumerate(xs)]
    for k, (x, (y, h)) in enumerate(zip(xs, outs)):  # each still what its call returned
        y_again, h_again = g(x, lengths=lengths if k % 2 else lengths[::-1].copy())
        np.testing.assert_array_equal(y, y_again)
        np.testing.assert_array_equal(h, h_again)
        assert not any(np.shares_memory(y, other) for other, _ in outs[:k])
    y1, x1 = outs[1][0], xs[1]
    del outs  # buffers let go of may serve again, never one still held
    y_next, _ = g(xs[0], lengths=lengths)
    assert not np.shares_memory(y1, y_next)
    ref, _ = g(x1[:, :1], lengths=lengths[:1])
    np.testing.assert_allclose(y1[:, :1], ref, atol=1e-5)
