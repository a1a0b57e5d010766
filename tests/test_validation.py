"""Bad input raises a clear ValueError/TypeError naming the argument, before any kernel runs."""
import numpy as np
import pytest

import numgru as ng


@pytest.fixture
def gru():
    return ng.GRU(3, 4, 2, seed=0)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(input_size=0), ValueError, "input_size"),
    (dict(input_size=2.5), TypeError, "input_size"),
    (dict(input_size=True), TypeError, "input_size"),
    (dict(hidden_size=-1), ValueError, "hidden_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout="a"), TypeError, "dropout"),
    (dict(bidirectional=1), TypeError, "bidirectional"),
    (dict(batch_first="yes"), TypeError, "batch_first"),
    (dict(reset_after=None), TypeError, "reset_after"),
    (dict(gate_activation="relu"), ValueError, "gate_activation"),
    (dict(gate_activation=3), TypeError, "gate_activation"),
    (dict(gate_activation="sigmoid", alpha=0.3), ValueError, "alpha"),
    (dict(gate_activation="hard_sigmoid_keras3", alpha=0.3), ValueError, "alpha"),
    (dict(clip=0.0), ValueError, "clip"),
    (dict(clip=float("nan")), ValueError, "clip"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(dtype="float16"), TypeError, "dtype"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(hidden_size=10**12), ValueError, "hidden_size: .* more than this machine can allocate"),
    (dict(input_size=10**13), ValueError, "input_size, hidden_size: .* more than this machine"),
])
def test_constructor_arguments(kwargs, exc, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ng.GRU(**args)


def test_sizes_past_memory_name_them():
    """numpy's MemoryError for sizes no machine holds becomes a ValueError naming the sizes."""
    with pytest.raises(ValueError, match="hidden_size"):
        ng.GRUCell(3, 10**12)
    with pytest.raises(ValueError, match="in_features, out_features"):
        ng.Linear(10**7, 10**7)


def test_dtype_none_is_the_default_and_torch_dtypes_are_taken():
    """dtype=None means float32, as torch's dtype=None does (np.dtype(None) is float64)."""
    assert ng.GRU(3, 4, dtype=None).dtype == np.float32
    assert ng.GRUCell(3, 4, dtype=None).dtype == np.float32
    assert ng.Linear(3, 4, dtype=None).dtype == np.float32
    torch = pytest.importorskip("torch")
    assert ng.GRU(3, 4, dtype=torch.float64).dtype == np.float64
    assert ng.GRU(3, 4, dtype=torch.float32).state_dict()["weight_ih_l0"].dtype == np.float32
    with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
        ng.GRU(3, 4, dtype=torch.float16)


def test_x_rank(gru):
    with pytest.raises(ValueError, match=r"x: expected a 2-D .* got 4-D"):
        gru(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"x: expected a 2-D .* got 1-D"):
        gru(np.zeros(3))


def test_x_feature_size(gru):
    with pytest.raises(ValueError, match=r"x: expected input_size 3 .* got 5"):
        gru(np.zeros((2, 1, 5)))


@pytest.mark.parametrize("bad", [np.array([["a"]]), np.zeros((2, 1, 3), complex),
                                 np.zeros((2, 1, 3), bool), np.array([[object()]]), "abc"])
def test_x_dtype(gru, bad):
    with pytest.raises(TypeError, match="x: expected a .*numeric array"):
        gru(bad)


def test_lengths_range(gru):
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\].*max 6"):
        gru(x, lengths=[6, 1])
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\].*min -1"):
        gru(x, lengths=[-1, 1])


def test_lengths_shape_and_dtype(gru):
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2,\)"):
        gru(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"lengths: expected shape \(2,\)"):
        gru(x, lengths=[[1, 2]])
    with pytest.raises(TypeError, match="lengths: expected an integer array"):
        gru(x, lengths=[1.0, 2.0])
    with pytest.raises(TypeError, match="lengths: expected an integer array"):
        gru(x, lengths=np.array([True, False]))


def test_lengths_huge_unsigned_is_rejected(gru):
    with pytest.raises(ValueError, match="lengths"):
        gru(np.zeros((5, 2, 3)), lengths=np.array([2**63 + 5, 1], np.uint64))


def test_h0_shape(gru):
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 2, 4\)"):
        gru(x, h0=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 4\)"):
        gru(np.zeros((5, 3)), h0=np.zeros((2, 1, 4)))
    with pytest.raises(TypeError, match="h0"):
        gru(x, h0=np.zeros((2, 2, 4), complex))


def test_state_dict_errors(gru):
    sd = gru.state_dict()
    with pytest.raises(ValueError, match="unexpected.*bogus"):
        gru.load_state_dict({**sd, "bogus": np.zeros(1)})
    missing = dict(sd)
    missing.pop("bias_hh_l1")
    with pytest.raises(ValueError, match="missing.*bias_hh_l1"):
        gru.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"weight_ih_l0.*expected shape \(12, 3\)"):
        gru.load_state_dict({**sd, "weight_ih_l0": np.zeros((12, 4))})
    with pytest.raises(TypeError, match="state_dict"):
        gru.load_state_dict([1, 2])
    before = gru.state_dict()
    with pytest.raises(ValueError):
        gru.load_state_dict({**{k: v + 1 for k, v in sd.items()}, "weight_hh_l1": np.zeros((3, 3))})
    for k in before:  # nothing was written
        np.testing.assert_array_equal(before[k], gru.state_dict()[k])
    missing_ok, unexpected = gru.load_state_dict({"bias_hh_l1": sd["bias_hh_l1"]}, strict=False)
    assert "weight_ih_l0" in missing_ok and unexpected == []


def test_cell_errors():
    c = ng.GRUCell(3, 4)
    with pytest.raises(ValueError, match="x: expected a 1-D"):
        c(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="x: expected input_size 3"):
        c(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"h: expected shape \(2, 4\)"):
        c(np.zeros((2, 3)), np.zeros((3, 4)))


def test_no_kernel_runs_on_bad_input(gru, monkeypatch):
    import numgru.layers as layers

    def boom(*a, **k):
        raise AssertionError("kernel called")

    monkeypatch.setattr(layers, "gru_direction_forward", boom)
    with pytest.raises(ValueError):
        gru(np.zeros((5, 2, 3)), lengths=[9, 9])
