"""Drop-in parity: allennlp 0.9's own Elmo / batch_to_ids (loaded from its wheel by
../shared/tools/allennlp_elmo.py) and ours give the same outputs on the same files."""
import sys

import pytest
import torch

from elmo_fast import Elmo, batch_to_ids
from elmo_fast.synthetic import make_options, write_model

SENTENCES = [
    ["The", "cat", "sat", "on", "the", "mat", "."],
    ["Hello"],
    ["Ünïcödé", "and", "a" * 70, "tokens"],
    ["Another", "one", "here"],
]


@pytest.fixture(scope="module")
def allennlp():
    from conftest import ROOT

    tools = ROOT.parent / "shared" / "tools"
    if not (tools / "allennlp_elmo.py").exists():
        pytest.skip(f"{tools}/allennlp_elmo.py not found (../shared is absent)")
    sys.path.insert(0, str(tools))
    try:
        import allennlp_elmo

        return allennlp_elmo.load()
    except Exception as exc:  # no wheel and no network to fetch it
        pytest.skip(f"allennlp 0.9 could not be loaded from its wheel: {exc}")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    return write_model(str(d), make_options(char_dim=4, filters=[[1, 4], [2, 8], [3, 16]], n_highway=2,
                                            dim=32, projection_dim=8), seed=7, scale=0.5)


def test_batch_to_ids_identical(allennlp):
    _, their_batch_to_ids = allennlp
    assert torch.equal(batch_to_ids(SENTENCES), their_batch_to_ids(SENTENCES))


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(), id="default"),
    pytest.param(dict(do_layer_norm=True), id="layer-norm"),
    pytest.param(dict(keep_sentence_boundaries=True), id="keep-boundaries"),
    pytest.param(dict(scalar_mix_parameters=[-1.0, 0.5, 2.0]), id="fixed-mix"),
])
def test_elmo_stateful_sequence_matches_allennlp(allennlp, model_files, kwargs, monkeypatch):
    """Several batches of changing size through both, states carried (allennlp's default)."""
    monkeypatch.setenv("ELMO_FAST_BACKEND", "torch")
    TheirElmo, their_ids = allennlp
    theirs = TheirElmo(*model_files, num_output_representations=2, dropout=0.0, **kwargs).eval()
    ours = Elmo(*model_files, num_output_representations=2, dropout=0.0, **kwargs).eval()
    batches = [SENTENCES[:2], SENTENCES, SENTENCES[1:3], SENTENCES[::-1]]
    with torch.no_grad():
        for batch in batches:
            a = theirs(their_ids(batch))
            b = ours(batch_to_ids(batch))
            assert torch.equal(a["mask"], b["mask"])
            for x, y in zip(a["elmo_representations"], b["elmo_representations"]):
                torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)

