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


def _inputs_of_every_op():
    """Small CPU inputs for each public op."""
    emb = torch.randn(262, 4)
    emb[0] = 0
    char_cnn = dict(chars=torch.randint(1, 262, (5, 50)), char_embed=emb,
                    conv_weights=[torch.randn(1, 4, 3), torch.randn(2, 4, 5)],
                    conv_biases=[torch.randn(3), torch.randn(5)], activation="relu")
    layer = (torch.randn(8, 8), torch.randn(8), torch.randn(8, 8), torch.randn(8))
    highway = dict(x=torch.randn(5, 8), layers=[layer], w_proj=torch.randn(8, 3), b_proj=torch.randn(3))
    scalar_mix = dict(layers=[torch.randn(2, 3, 4) for _ in range(3)], scalars=torch.randn(3),
                      gamma=torch.ones(1), mask=torch.ones(2, 3, dtype=torch.long), do_layer_norm=True)
    B, T, D, C, P = 2, 3, 5, 4, 2
    x = torch.randn(B, T, D)
    weights = tuple((torch.randn(4 * C, D), torch.randn(4 * C), torch.randn(4 * C, P), torch.randn(P, C))
                    for _ in range(2))
    bilstm_layer = dict(x=(x, x), weights=weights, lengths=torch.tensor([3, 1]), h0=torch.zeros(B, 2 * P),
                        c0=torch.zeros(B, 2 * C), cell_clip=3.0, proj_clip=3.0, residual=False)
    return dict(char_cnn=char_cnn, highway=highway, lstm_layer=_lstm_inputs(), bilstm_layer=bilstm_layer,
                scalar_mix=scalar_mix)


def _flat(out):
    """The tensors of an op's result, nested tuples flattened."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


REFERENCES = {
    "char_cnn": "elmo_fast.reference.char_cnn:char_cnn_ref",
    "highway": "elmo_fast.reference.highway:highway_ref",
    "lstm_layer": "elmo_fast.reference.lstm:lstm_layer_ref",
    "bilstm_layer": "elmo_fast.reference.bilstm:bilstm_layer_ref",
    "scalar_mix": "elmo_fast.reference.scalar_mix:scalar_mix_ref",
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_every_op_falls_back_to_torch_on_cpu(name, monkeypatch):
    """On CPU tensors every op picks its torch reference, every other backend says why not, and the
    op's result is the reference's."""
    import importlib

    monkeypatch.setenv("ELMO_FAST_BACKEND", "auto")
    assert set(OPS) == set(REFERENCES)
    inputs = _inputs_of_every_op()[name]
    op = OPS[name]
    assert op.select(**inputs).name == "torch"
    explained = dict(op.explain(**inputs))
    assert explained.pop("torch") == []
    for backend, why in explained.items():
        assert why and all(isinstance(r, str) and r for r in why), f"{name}: {backend} gives no reason"
    module, _, fn = REFERENCES[name].partition(":")
    want = getattr(importlib.import_module(module), fn)(**inputs)
    got = op(**inputs)
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want), name
    for g, w in zip(got, want):
        assert torch.equal(g, w), name


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
