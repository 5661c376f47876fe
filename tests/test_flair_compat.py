"""What flair's `ELMoEmbeddings` (flair/embeddings/legacy.py) and other allennlp-era code do with an
`ElmoEmbedder` / `Elmo`, reproduced without installing flair or allennlp: construct with
options/weight files and cuda_device, embed_batch, pickle the whole object (torch.save), and on
loading set `ee.cuda_device`, move `ee.elmo_bilm` and every tensor of `ee.elmo_bilm._elmo_lstm._states`."""
from __future__ import annotations

import copy
import io
import pickle
import re

import numpy as np
import pytest
import torch

from elmo_fast import Elmo, ElmoEmbedder, batch_to_ids
from elmo_fast.download import packaged_dir

OPTIONS = f"{packaged_dir('tiny')}/options.json"
WEIGHTS = f"{packaged_dir('tiny')}/weights.hdf5"


class FlairLikeELMoEmbeddings(torch.nn.Module):
    """The calls flair's ELMoEmbeddings makes, in its order (its own code is not copied)."""

    def __init__(self, device: torch.device):
        super().__init__()
        cuda_device = device.index if device.type == "cuda" else -1
        self.ee = ElmoEmbedder(options_file=OPTIONS, weight_file=WEIGHTS, cuda_device=cuda_device)
        self.name = "elmo-tiny-all"
        # flair embeds a dummy sentence to learn the embedding length
        self.embedding_length = int(self.embed([["hello"]])[0][0].shape[0])

    def embed(self, sentences):
        """Per sentence, per token: the three layers concatenated (flair's 'all' mode)."""
        arrays = self.ee.embed_batch(sentences)
        return [[np.concatenate([a[0, t], a[1, t], a[2, t]]) for t in range(len(s))]
                for s, a in zip(sentences, arrays)]

    def __setstate__(self, state):
        self.__dict__ = state
        device = torch.device("cpu")   # flair.device on the loading machine
        cuda_device = int(str(device).split(":")[-1]) if re.fullmatch(r"cuda:[0-9]+", str(device)) else \
            -1 if str(device) == "cpu" else 0
        self.ee.cuda_device = cuda_device
        self.ee.elmo_bilm.to(device=device)
        self.ee.elmo_bilm._elmo_lstm._states = tuple(
            [state.to(device) for state in self.ee.elmo_bilm._elmo_lstm._states])


SENTS = [["The", "cat", "sat", "."], ["Hello", "world"], ["Zürich", "is", "big"]]


def test_flair_usage_pattern_with_pickling_round_trip():
    emb = FlairLikeELMoEmbeddings(torch.device("cpu"))
    assert emb.embedding_length == 3 * 32 == 3 * emb.ee.elmo_bilm.get_output_dim()
    first = emb.embed(SENTS)
    assert len(first) == 3 and first[0][0].shape == (96,)

    buf = io.BytesIO()
    torch.save(emb, buf)  # flair saves whole models; the embedder and its state go with them
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.ee.cuda_device == -1 and loaded.ee.device == torch.device("cpu")
    # the carried state survived the round trip (stateful, as allennlp)
    for a, b in zip(emb.ee.elmo_bilm._elmo_lstm._states, loaded.ee.elmo_bilm._elmo_lstm._states):
        assert torch.equal(a, b)
    # and both continue identically from it
    nxt = [["Another", "sentence", "here"], ["Short"]]
    for x, y in zip(emb.embed(nxt), loaded.embed(nxt)):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    # the state really is carried: a fresh embedder gives different numbers for the same batch
    fresh = ElmoEmbedder(OPTIONS, WEIGHTS)
    assert not np.array_equal(fresh.embed_batch(nxt)[0], emb.ee.embed_batch(nxt)[0])


def test_embedder_pickles_and_deep_copies():
    ee = ElmoEmbedder(OPTIONS, WEIGHTS)
    ee.embed_batch(SENTS)
    for make in (lambda e: pickle.loads(pickle.dumps(e)), copy.deepcopy):
        clone = make(ee)
        for a, b in zip(ee.embed_batch(SENTS), clone.embed_batch(SENTS)):
            np.testing.assert_array_equal(a, b)


def test_states_view_meaning():
    ee = ElmoEmbedder(OPTIONS, WEIGHTS)
    lstm = ee.elmo_bilm._elmo_lstm
    assert lstm._states is None and lstm.stateful
    assert (lstm.num_layers, lstm.input_size, lstm.hidden_size, lstm.cell_size) == (2, 16, 16, 64)
    ee.embed_batch(SENTS)
    h, c = lstm._states   # allennlp's layout: [layers, batch, 2 * projection], [layers, batch, 2 * cells]
    assert h.shape == (2, 3, 32) and c.shape == (2, 3, 128)
    # writing the state is reading it back: zeroing it equals a reset
    lstm._states = (torch.zeros_like(h), torch.zeros_like(c))
    after_zero = ee.embed_batch(SENTS)
    ee.reset_states()
    assert lstm._states is None
    for a, b in zip(after_zero, ee.embed_batch(SENTS)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"_states must be None or \(h \[2, batch, 32\]"):
        lstm._states = (torch.zeros(2, 3, 31), torch.zeros(2, 3, 128))
    lstm.reset_states()
    assert lstm._states is None
    lstm.stateful = False
    assert not ee.elmo_bilm.stateful


def test_allennlp_names_without_counterpart_say_what_to_use():
    ee = ElmoEmbedder(OPTIONS, WEIGHTS)
    with pytest.raises(AttributeError, match="batch_to_ids"):
        ee.indexer
    with pytest.raises(AttributeError, match=r"BiLm\.lstm\[0\]"):
        ee.elmo_bilm._elmo_lstm.forward_layers
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        ee.nonsense


def test_elmo_internals():
    elmo = Elmo(OPTIONS, WEIGHTS, 2, dropout=0.0)
    assert elmo.get_output_dim() == 32 == elmo._elmo_lstm.get_output_dim()
    assert elmo._elmo_lstm.num_layers == 3
    elmo(batch_to_ids(SENTS))
    h, c = elmo._elmo_lstm._elmo_lstm._states
    assert h.shape == (2, 3, 32)
    elmo._elmo_lstm._elmo_lstm.reset_states()
    assert elmo._elmo_lstm._elmo_lstm._states is None


def test_cuda_device_setter_moves_the_model():
    ee = ElmoEmbedder(OPTIONS, WEIGHTS)
    ee.cuda_device = -1
    assert ee.cuda_device == -1 and next(ee.elmo_bilm.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            ee.cuda_device = 0
        assert ee.cuda_device == -1


@pytest.fixture
def clean_allennlp_modules():
    """No allennlp module loaded during the test (other tests may hold the real one, loaded from its
    wheel by shared/tools/allennlp_elmo.py); afterwards sys.modules is as it was."""
    import sys

    def ours():
        return [n for n in sys.modules if n == "allennlp" or n.startswith("allennlp.")]

    saved = {n: sys.modules.pop(n) for n in ours()}
    yield
    for n in ours():
        del sys.modules[n]
    sys.modules.update(saved)


def test_allennlp_shim_gives_flair_its_names(clean_allennlp_modules):
    import importlib.util

    if importlib.util.find_spec("allennlp") is not None:
        pytest.skip("a real allennlp is installed here")
    import elmo_fast
    elmo_fast.install_allennlp_shim()
    elmo_fast.install_allennlp_shim()  # twice is fine
    import allennlp.commands.elmo   # what flair's ELMoEmbeddings imports
    from allennlp.modules.elmo import Elmo as ShimElmo, batch_to_ids as shim_ids
    assert allennlp.commands.elmo.ElmoEmbedder is ElmoEmbedder
    assert ShimElmo is Elmo and shim_ids is batch_to_ids
    assert allennlp.commands.elmo.DEFAULT_WEIGHT_FILE.endswith(
        "elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5")
    ee = allennlp.commands.elmo.ElmoEmbedder(options_file=OPTIONS, weight_file=WEIGHTS, cuda_device=-1)
    assert ee.embed_batch([["hello"]])[0].shape == (3, 1, 32)


def test_allennlp_shim_never_shadows_a_real_allennlp(monkeypatch, clean_allennlp_modules):
    import importlib.util

    import elmo_fast
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "allennlp" else real(name, *a))
    with pytest.raises(RuntimeError, match="allennlp is installed"):
        elmo_fast.install_allennlp_shim()
