"""`ElmoEmbedder.encode` and `elmo_fast.encode` against `embed_batch` of a stateless embedder (itself
tested against allennlp and the TensorFlow outputs), on the packaged tiny model."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import elmo_fast
from elmo_fast import ElmoEmbedder
from tolerances import assert_close

WORDS = "the a cat dog sat ran on under mat table quickly , . ! Zürich naïve 2009 e-mail".split()


def _sentences(n, seed=0, max_len=9):
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


@pytest.fixture(scope="module")
def stateless():
    return ElmoEmbedder(model="tiny", stateful=False, progress=False)


def _ref(embedder, sentences):
    """[L, T, D] per sentence, each computed alone (stateless: the batch does not matter)."""
    return [torch.from_numpy(embedder.embed_batch([s])[0]) for s in sentences]


def test_token_embeddings_all_layers_in_input_order(stateless):
    sents = _sentences(11, seed=1)
    out = stateless.encode(sents, batch_size=4)  # sorted into batches of mixed lengths internally
    assert isinstance(out, list) and len(out) == len(sents)
    for got, want, s in zip(out, _ref(stateless, sents), sents):
        assert got.dtype == np.float32 and got.shape == (3, len(s), 32)
        assert_close(torch.from_numpy(got), want)


@pytest.mark.parametrize("layers", ["top", "average", 1, -3, [0.2, -0.5, 1.5]], ids=str)
def test_layer_choice_and_pooling(stateless, layers):
    sents = _sentences(7, seed=2)
    refs = _ref(stateless, sents)
    w = {"top": [0, 0, 1], "average": [1 / 3] * 3, 1: [0, 1, 0], -3: [1, 0, 0]}.get(
        layers if not isinstance(layers, list) else None, layers)
    w = torch.tensor(w, dtype=torch.float32).view(-1, 1, 1)
    tokens = stateless.encode(sents, batch_size=3, layers=layers, convert_to="torch")
    pooled = stateless.encode(sents, batch_size=3, layers=layers, output_value="sentence_embedding",
                              convert_to="torch")
    assert isinstance(pooled, torch.Tensor) and pooled.shape == (len(sents), 32)
    for k, ref in enumerate(refs):
        mixed = (ref * w).sum(0)
        assert_close(tokens[k], mixed)
        assert_close(pooled[k], mixed.mean(0))


def test_pooled_all_layers_and_strings(stateless):
    text = ["The cat sat on the mat .", "Hello   world", "Zürich"]
    pooled = stateless.encode(text, output_value="sentence_embedding")
    assert isinstance(pooled, np.ndarray) and pooled.shape == (3, 3, 32)
    for k, ref in enumerate(_ref(stateless, [t.split() for t in text])):
        assert_close(torch.from_numpy(pooled[k]), ref.mean(1))
    # a single string gives a single result
    one = stateless.encode("Hello   world", output_value="sentence_embedding", layers="top")
    assert one.shape == (32,)
    np.testing.assert_array_equal(one, stateless.encode(["Hello world"], output_value="sentence_embedding",
                                                        layers="top")[0])


def test_independent_of_batch_size_and_order(stateless):
    sents = _sentences(9, seed=3)
    a = stateless.encode(sents, batch_size=2, layers="top")
    perm = list(range(len(sents)))
    random.Random(0).shuffle(perm)
    b = stateless.encode([sents[i] for i in perm], batch_size=5, layers="top")
    for j, i in enumerate(perm):
        assert_close(torch.from_numpy(b[j]), torch.from_numpy(a[i]))


def test_stateful_embedder_encodes_stateless_and_keeps_its_state():
    stateful = ElmoEmbedder(model="tiny", stateful=True, progress=False)
    twin = ElmoEmbedder(model="tiny", stateful=True, progress=False)
    stateless = ElmoEmbedder(model="tiny", stateful=False, progress=False)
    first = _sentences(3, seed=4)
    stateful.embed_batch(first)
    twin.embed_batch(first)
    before = [t.clone() for t in stateful.elmo_bilm._states]
    sents = _sentences(6, seed=5)
    got = stateful.encode(sents, batch_size=4)
    for g, w in zip(got, _ref(stateless, sents)):
        assert_close(torch.from_numpy(g), w)
    for b, a in zip(before, stateful.elmo_bilm._states):  # the carried state was not touched
        assert torch.equal(b, a)
    nxt = _sentences(3, seed=6)
    for g, w in zip(stateful.embed_batch(nxt), twin.embed_batch(nxt)):
        np.testing.assert_array_equal(g, w)


def test_stateful_encode_continues_the_state():
    a = ElmoEmbedder(model="tiny", stateful=True, progress=False)
    b = ElmoEmbedder(model="tiny", stateful=True, progress=False)
    sents = _sentences(7, seed=7)
    got = a.encode(sents, batch_size=3, stateful=True)
    want = list(b.embed_sentences(sents, batch_size=3))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="stateful embedder"):
        ElmoEmbedder(model="tiny", stateful=False, progress=False).encode(sents, stateful=True)


def test_warm_start_is_respected():
    warm = ElmoEmbedder(model="tiny", stateful=False, warm_start=True, progress=False)
    sents = _sentences(4, seed=8)
    for g, w in zip(warm.encode(sents, batch_size=3), _ref(warm, sents)):
        assert_close(torch.from_numpy(g), w)


def test_empty_inputs(stateless):
    assert stateless.encode([]) == []
    assert stateless.encode([], output_value="sentence_embedding", layers="top").shape == (0, 32)
    out = stateless.encode(["", "a cat", []], layers="top")
    assert [o.shape for o in out] == [(0, 32), (2, 32), (0, 32)]
    pooled = stateless.encode(["", "a cat"], output_value="sentence_embedding", layers="top")
    np.testing.assert_array_equal(pooled[0], np.zeros(32, np.float32))  # no tokens: zeros, not NaN
    assert np.isfinite(pooled).all()


def test_bad_arguments(stateless):
    for kwargs, match in [(dict(batch_size=0), "batch_size"), (dict(batch_size=2.5), "batch_size"),
                          (dict(output_value="cls"), "output_value"), (dict(layers="bottom"), "layers"),
                          (dict(layers=3), "out of range"), (dict(layers=[1.0, 2.0]), "3 finite"),
                          (dict(convert_to="list"), "convert_to")]:
        with pytest.raises(ValueError, match=match):
            stateless.encode(["a b"], **kwargs)
    with pytest.raises(TypeError, match="sentence 1"):
        stateless.encode(["a b", [1, 2]])
    with pytest.raises(ValueError, match="refused on the CPU"):
        stateless.encode(["a b"], dtype=torch.bfloat16)


def test_progress_bar(stateless, capsys):
    stateless.encode(_sentences(3), show_progress_bar=True)
    assert "elmo encode" in capsys.readouterr().err
    stateless.encode(_sentences(3), show_progress_bar=False)
    assert capsys.readouterr().err == ""


def test_module_level_encode(stateless):
    elmo_fast.encode.cache_clear()
    sents = ["The cat sat .", "Hello world"]
    got = elmo_fast.encode(sents, "tiny", output_value="sentence_embedding", layers="average", device="cpu")
    want = stateless.encode(sents, output_value="sentence_embedding", layers="average")
    np.testing.assert_array_equal(got, want)
    # the model is loaded once and reused
    from elmo_fast.embedder import _cached_embedder
    elmo_fast.encode(sents, "tiny", device="cpu")
    assert _cached_embedder.cache_info().hits >= 1
    with pytest.raises(ValueError, match="unknown ELMo model"):
        elmo_fast.encode(sents, "no-such-model")


def test_batches_are_formed_by_length(stateless, monkeypatch):
    """Longest first, so each batch pads little (the numbers do not depend on it; the speed does)."""
    seen = []
    real = stateless._run

    def spy(bilm, batch):
        seen.append([len(s) for s in batch])
        return real(bilm, batch)

    monkeypatch.setattr(stateless, "_run", spy)
    sents = _sentences(10, seed=9)
    stateless.encode(sents, batch_size=3)
    flat = [n for batch in seen for n in batch]
    assert [len(b) for b in seen] == [3, 3, 3, 1] and flat == sorted((len(s) for s in sents), reverse=True)
