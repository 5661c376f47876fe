"""Character ids: hand-checked expectations, and exact equality with allennlp 0.9's batch_to_ids."""
from __future__ import annotations

import json
import pathlib
import random
import sys

import numpy as np
import pytest
import torch

from elmo_fast.chars import (BOS_CHARS, EOS_CHARS, MAX_WORD_LENGTH, batch_to_ids, tokens_to_char_ids)

TOOLS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tools"


@pytest.fixture(scope="module")
def allennlp_batch_to_ids():
    if not (TOOLS / "allennlp_elmo.py").exists():
        pytest.skip(f"allennlp comparison tool not found at {TOOLS}")
    sys.path.insert(0, str(TOOLS))
    try:
        import allennlp_elmo
        _, fn = allennlp_elmo.load()
    except Exception as e:   # no wheel and no network, etc.
        pytest.skip(f"allennlp 0.9 could not be loaded for comparison: {type(e).__name__}: {e}")
    finally:
        sys.path.remove(str(TOOLS))
    return fn


def _word(ids):
    """A row as the hand-computed spec says: ids (before +1) padded with 260, then +1."""
    row = list(ids) + [260] * (MAX_WORD_LENGTH - len(ids))
    return [i + 1 for i in row]


# --------------------------------------------------------------------------- hand-checked
def test_single_ascii_token():
    ids = batch_to_ids([["a"]])
    assert ids.dtype == torch.int64 and ids.shape == (1, 1, 50)
    assert ids[0, 0].tolist() == [259, 98, 260] + [261] * 47


def test_word_layout():
    assert tokens_to_char_ids(["Hello"])[0].tolist() == _word([258, *b"Hello", 259])
    assert tokens_to_char_ids([""])[0].tolist() == _word([258, 259])


def test_sentence_boundary_tokens():
    assert BOS_CHARS.tolist() == _word([258, 256, 259])
    assert EOS_CHARS.tolist() == _word([258, 257, 259])
    ids = tokens_to_char_ids(["<S>", "</S>", "<S", "S>", "<s>", "x<S>"])
    assert ids[0].tolist() == BOS_CHARS.tolist() and ids[1].tolist() == EOS_CHARS.tolist()
    assert ids[2].tolist() == _word([258, *b"<S", 259])
    assert ids[4].tolist() == _word([258, *b"<s>", 259])
    assert ids[5].tolist() == _word([258, *b"x<S>", 259])
    # a token that merely *encodes* like "<S>" (its lone surrogate is dropped) is spelled out
    assert tokens_to_char_ids(["<S\ud800>"])[0].tolist() == _word([258, *b"<S>", 259])


def test_multibyte_and_truncation():
    assert tokens_to_char_ids(["é"])[0].tolist() == _word([258, 0xC3, 0xA9, 259])
    assert tokens_to_char_ids(["😀"])[0].tolist() == _word([258, 0xF0, 0x9F, 0x98, 0x80, 259])
    for n in (47, 48, 49, 60):
        got = tokens_to_char_ids(["x" * n])[0].tolist()
        assert got == _word([258, *(b"x" * min(n, 48)), 259])
    # 47 ASCII bytes + a 2-byte character: cut after its first byte (48 bytes kept)
    got = tokens_to_char_ids(["x" * 47 + "é"])[0].tolist()
    assert got == _word([258, *(b"x" * 47), 0xC3, 259])


def test_padding_and_empty_sentences():
    ids = batch_to_ids([["a", "bc"], [], ["d"]])
    assert ids.shape == (3, 2, 50)
    assert (ids[1] == 0).all() and (ids[2, 1] == 0).all()
    assert ids[2, 0].tolist() == _word([258, ord("d"), 259])
    assert batch_to_ids([[], []]).shape == (2, 0, 50)
    assert batch_to_ids([]).shape == (0, 0, 50)


def test_equivalent_inputs():
    ref = batch_to_ids([["a", "b"], ["c"]])
    assert torch.equal(batch_to_ids((("a", "b"), ("c",))), ref)
    assert torch.equal(batch_to_ids([np.array(["a", "b"]), ["c"]]), ref)
    assert torch.equal(batch_to_ids(iter([["a", "b"], ["c"]])), ref)
    assert np.array_equal(tokens_to_char_ids(("a", "b", "c")), ref[ref.sum(-1) > 0].numpy())


def test_bad_input_messages():
    with pytest.raises(TypeError, match="sentence 1 is a bare str .*list of tokens"):
        batch_to_ids([["fine"], "not split"])
    with pytest.raises(TypeError, match="bare str"):
        batch_to_ids("hello world")
    with pytest.raises(TypeError, match=r"sentence 1: token 2 is int"):
        batch_to_ids([["a"], ["b", "c", 3]])
    with pytest.raises(TypeError, match=r"sentence 0: token 0 is bytes"):
        batch_to_ids([[b"x"], ["y"]])
    with pytest.raises(TypeError, match=r"token 1 is NoneType"):
        tokens_to_char_ids(["a", None])
    with pytest.raises(TypeError):
        batch_to_ids(5)
    with pytest.raises(TypeError, match="bare str"):
        tokens_to_char_ids("abc")


def test_vectorised_matches_simple_loop():
    """The numpy path against a direct per-token transcription of the spec."""
    def slow(tok):
        if tok in ("<S>", "</S>"):
            return _word([258, 256 if tok == "<S>" else 257, 259])
        return _word([258, *tok.encode("utf-8", "ignore")[:48], 259])

    rng = random.Random(1)
    toks = [_random_token(rng) for _ in range(3000)] + ["<S>", "</S>"]
    assert tokens_to_char_ids(toks).tolist() == [slow(t) for t in toks]


# --------------------------------------------------------------------------- against allennlp
_ALPHABETS = ["abcXYZ09.,'-", "éüßçñ", "αβγδ", "中文字符", "😀🎉", "\u0301\u200b", "\ud83d\ude00\udc00<>S/"]


def _random_token(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:   # lengths around the 48-byte cut, ending in a multi-byte character
        n = rng.choice([45, 46, 47, 48, 49])
        return "x" * n + rng.choice("é中😀")
    if kind < 0.25:
        return "y" * rng.choice([0, 1, 47, 48, 49, 60, 100])
    alphabet = "".join(rng.sample(_ALPHABETS, rng.randint(1, 3)))
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))


def test_fixture_sentences(fixtures_dir, allennlp_batch_to_ids):
    data = json.loads((fixtures_dir / "sentences.json").read_text())
    for batch in data:
        sents = [s.split() for s in batch]
        assert torch.equal(batch_to_ids(sents), allennlp_batch_to_ids(sents))
    # the same sentences as the fixture's batches of three (sentence k of batch i = data[k][i])
    for i in range(len(data[0])):
        sents = [data[k][i].split() for k in range(len(data))]
        assert torch.equal(batch_to_ids(sents), allennlp_batch_to_ids(sents))


def test_fixture_vocab(fixtures_dir, allennlp_batch_to_ids):
    words = (fixtures_dir / "vocab_test.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in words if w]
    sents = [words[i:i + 37] for i in range(0, len(words), 37)]
    assert torch.equal(batch_to_ids(sents), allennlp_batch_to_ids(sents))


@pytest.mark.parametrize("seed", range(4))
def test_random_unicode(seed, allennlp_batch_to_ids):
    rng = random.Random(seed)
    batch = []
    for _ in range(rng.randint(1, 12)):
        sent = [_random_token(rng) for _ in range(rng.randint(0, 15))]
        for _ in range(rng.randint(0, 2)):
            sent.insert(rng.randint(0, len(sent)), rng.choice(["<S>", "</S>"]))
        batch.append(sent)
    if all(len(s) == 0 for s in batch):
        batch[0].append("z")
    assert torch.equal(batch_to_ids(batch), allennlp_batch_to_ids(batch))


@pytest.mark.parametrize("batch", [
    [["a"]],
    [["<S>", "hello", "</S>"]],
    [["x" * 47, "x" * 48, "x" * 49, "x" * 60], ["é" * 24, "é" * 25, "a" + "é" * 24]],
    [["word"], [], ["two", "words"]],
    [[""], ["", "a"]],
    [["ab"], ["cd"]],   # no padding (in-place path)
    [["a\ud83d", "\ude00b", "\ud83d\ude00", "\udfff", "é\ud800é"], ["<S>\ud800", "\ud800"]],   # surrogates
    [["\u0000", "\x7f\x80", "\u07ff\u0800", "\uffff\U00010000", "\U0010ffff"]],   # width boundaries
])
def test_edge_cases(batch, allennlp_batch_to_ids):
    assert torch.equal(batch_to_ids(batch), allennlp_batch_to_ids(batch))
