"""Backend dispatch: the reference is the fallback, ELMO_FAST_BACKEND forces, reasons are given."""
import pytest
import torch

from elmo_fast import _config
from elmo_fast._support import REFERENCE
from elmo_fast.ops import OPS, BackendUnavailable, lstm_layer
from elmo_fast.ops._dispatch import Backend, Op


def _lstm_inputs(requires_grad=False):
    B, T, C, P = 2, 3, 4, 2
    return dict(xproj=torch.randn(B, T, 4 * C, requires_grad=requires_grad), w_hh=torch.randn(4 * C, P),
                w_p=torch.randn(P, C), lengths=torch.tensor([3, 1]), h0=torch.zeros(B, P),
                c0=torch.zeros(B, C), cell_clip=3.0, proj_clip=3.0, reverse=False)


def test_every_op_falls_back_to_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "auto")
    assert set(OPS) == {"char_cnn", "highway", "lstm_layer", "bilstm_layer", "scalar_mix"}
    assert OPS["lstm_layer"].select(**_lstm_inputs()).name == "torch"
    explained = dict(OPS["lstm_layer"].explain(**_lstm_inputs()))
    assert explained["torch"] == []
    assert explained["cuda"], "the cuda backend must say why it cannot run on CPU tensors"


def test_bad_override_is_named(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="ELMO_FAST_BACKEND='fastest' is not one of"):
        _config.backend_override()


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="ELMO_FAST_BACKEND=cuda but lstm_layer cannot run on it"):
        lstm_layer(**_lstm_inputs())


def test_forced_backend_missing_for_an_op_falls_back(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "cuda")  # scalar_mix has no cuda backend
    out = OPS["scalar_mix"](layers=[torch.ones(1, 2, 3)] * 2, scalars=torch.zeros(2),
                            gamma=torch.ones(1), mask=None, do_layer_norm=False)
    assert torch.equal(out, torch.ones(1, 2, 3))


def test_grad_requires_the_torch_backend(monkeypatch):
    op = Op("probe", [Backend("fast", "elmo_fast.reference.lstm:lstm_layer_ref"),
                      Backend("torch", "elmo_fast.reference.lstm:lstm_layer_ref", REFERENCE)])
    assert op.select(**_lstm_inputs()).name == "fast"
    assert op.select(**_lstm_inputs(requires_grad=True)).name == "torch"
    with torch.no_grad():
        assert op.select(**_lstm_inputs(requires_grad=True)).name == "fast"


def test_import_failure_becomes_a_reason():
    op = Op("probe", [Backend("triton", "elmo_fast.kernels.does_not_exist:fn"),
                      Backend("torch", "elmo_fast.reference.lstm:lstm_layer_ref")])
    (name, why), _ = op.explain(**_lstm_inputs())
    assert name == "triton" and "could not be imported" in why[0]
