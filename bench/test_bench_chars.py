"""Micro-benchmark: elmo_fast.batch_to_ids vs allennlp 0.9's batch_to_ids on ~10k tokens.

    pytest bench/test_bench_chars.py --benchmark-only          (pytest-benchmark table)
    python bench/test_bench_chars.py                            (tokens/s summary)

Batches: 'ascii' = English-like words (the fixture vocabulary when ../shared is present, else
generated), 'unicode' = the same with a third of the tokens made non-ASCII (the slower path).
"""
from __future__ import annotations

import random
import time

import pytest

from elmo_fast.bench import fixtures_dir
from elmo_fast.bench import load_allennlp as bench_load_allennlp
from elmo_fast.chars import batch_to_ids

N_TOKENS = 10_000


def _words():
    fixtures = fixtures_dir()
    vocab = fixtures / "vocab_test.txt" if fixtures else None
    if vocab is not None and vocab.exists():
        words = [w for w in vocab.read_text(encoding="utf-8").split("\n") if w]
        if words:
            return words
    rng = random.Random(0)
    return ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(1, 12)))
            for _ in range(5000)]


def make_batch(kind: str, n_tokens: int = N_TOKENS, seed: int = 0):
    rng = random.Random(seed)
    words = _words()
    extra = ["é", "ü", "中文", "😀", "ß"]
    batch, total = [], 0
    while total < n_tokens:
        n = min(rng.randint(5, 40), n_tokens - total)
        sent = [rng.choice(words) for _ in range(n)]
        if kind == "unicode":
            sent = [w + rng.choice(extra) if rng.random() < 1 / 3 else w for w in sent]
        batch.append(sent)
        total += n
    return batch


def load_allennlp():
    return bench_load_allennlp()[1]


@pytest.fixture(scope="module")
def allennlp_fn():
    try:
        return load_allennlp()
    except Exception as e:
        pytest.skip(f"allennlp 0.9 not available: {type(e).__name__}: {e}")


@pytest.mark.parametrize("kind", ["ascii", "unicode"])
def test_elmo_fast(benchmark, kind):
    batch = make_batch(kind)
    benchmark.extra_info["tokens"] = sum(map(len, batch))
    benchmark.group = f"batch_to_ids {kind}"
    benchmark(batch_to_ids, batch)


@pytest.mark.parametrize("kind", ["ascii", "unicode"])
def test_allennlp(benchmark, kind, allennlp_fn):
    batch = make_batch(kind)
    benchmark.extra_info["tokens"] = sum(map(len, batch))
    benchmark.group = f"batch_to_ids {kind}"
    benchmark.pedantic(allennlp_fn, args=(batch,), rounds=5, iterations=1, warmup_rounds=1)


def _rate(fn, batch, min_time=0.5):
    fn(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        fn(batch)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n * sum(map(len, batch)) / dt


if __name__ == "__main__":
    try:
        reference = load_allennlp()
    except Exception as e:   # pragma: no cover
        print(f"allennlp not available ({e}); timing elmo_fast only")
        reference = None
    for kind in ("ascii", "unicode"):
        batch = make_batch(kind)
        fast = _rate(batch_to_ids, batch)
        line = f"{kind:8s} {sum(map(len, batch))} tokens  elmo_fast {fast / 1e6:6.2f} M tokens/s"
        if reference is not None:
            import torch
            assert torch.equal(batch_to_ids(batch), reference(batch))
            ref = _rate(reference, batch)
            line += f"  allennlp {ref / 1e6:6.3f} M tokens/s  speed-up {fast / ref:5.1f}x"
        print(line)
