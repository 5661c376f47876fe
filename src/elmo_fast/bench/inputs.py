"""What the benchmarks run on: random-weight models of the standard shapes, sentences whose lengths
follow the shared fixture's, the fixture and tool folders, FLOPs per token.

Nothing here assumes a source checkout: shared/ (fixtures/elmo, tools/) is found through the
environment (`_config.PATH_SETTINGS`) or by looking beside and above the working directory and the
installed package; when it is missing, built-in sentence lengths and generated words stand in, and
`where_looked()` says which folders were tried.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _config

# Sentence lengths (whitespace tokens) of the shared fixture's 30 sentences, used when the fixture
# itself is not found (e.g. on the GPU machine, where only the repository travels).
# A model far smaller than any real one, for checks of the plumbing (gpu_all.sh --dry-run).
TINY_OPTIONS = dict(char_dim=4, filters=[[1, 4], [2, 8]], n_highway=1, dim=16, projection_dim=8)
FIXTURE_LENGTHS = [50, 51, 27, 3, 37, 11, 43, 29, 24, 20, 16, 11, 26, 13, 43, 13, 24, 13, 53, 5,
                   53, 51, 16, 17, 11, 19, 28, 12, 16, 9]


def _ancestors(p: pathlib.Path) -> List[pathlib.Path]:
    p = p.resolve()
    return [p] + list(p.parents)


def shared_candidates() -> List[pathlib.Path]:
    """Folders that may be the project's shared/ folder, in the order they are tried:
    $ELMO_FAST_SHARED, then shared/ in the working directory and each folder above it, then the
    same above the installed package (an editable install sits inside the checkout)."""
    env = _config.path_setting("ELMO_FAST_SHARED")
    out = [pathlib.Path(env)] if env else []
    for base in _ancestors(pathlib.Path.cwd()) + _ancestors(pathlib.Path(__file__).parent):
        c = base / "shared"
        if c not in out:
            out.append(c)
    return out


def shared_dirs() -> List[pathlib.Path]:
    """The shared/ folders that exist, in preference order."""
    return [d for d in shared_candidates() if d.is_dir()]


def fixtures_candidates() -> List[pathlib.Path]:
    env = _config.path_setting("ELMO_FAST_FIXTURES")
    return ([pathlib.Path(env)] if env else []) + [d / "fixtures" / "elmo" for d in shared_candidates()]


def fixtures_dir() -> Optional[pathlib.Path]:
    """The ELMo fixture folder (the one holding sentences.json), or None."""
    for c in fixtures_candidates():
        if (c / "sentences.json").is_file():
            return c
    return None


def where_looked(candidates: Sequence[pathlib.Path], limit: int = 4) -> str:
    """'a, b, c (+N more)': the first folders tried, for a not-found message."""
    shown = ", ".join(str(c) for c in candidates[:limit])
    more = len(candidates) - limit
    return shown + (f" (+{more} more up to /)" if more > 0 else "")


def sentence_lengths() -> Tuple[List[int], str]:
    """Token counts of the fixture sentences, and where they came from."""
    fx = fixtures_dir()
    if fx is not None:
        with open(fx / "sentences.json") as f:
            sents = json.load(f)
        lengths = [len(s.split()) for group in sents for s in group]
        if lengths:
            return lengths, str(fx / "sentences.json")
    return list(FIXTURE_LENGTHS), ("built-in copy of the fixture sentence lengths (fixture not found; looked "
                                   f"in {where_looked(fixtures_candidates())})")


def vocabulary() -> Tuple[List[str], str]:
    """Words to draw tokens from: the fixture's vocab_test.txt and sentences, else generated."""
    fx = fixtures_dir()
    if fx is not None:
        words = set()
        vt = fx / "vocab_test.txt"
        if vt.exists():
            words.update(w for w in vt.read_text(encoding="utf-8").split("\n") if w)
        with open(fx / "sentences.json") as f:
            for group in json.load(f):
                for s in group:
                    words.update(s.split())
        if words:
            return sorted(words), str(fx)
    rng = np.random.default_rng(1234)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    p = np.linspace(2.0, 0.2, len(letters))
    p /= p.sum()
    words = {"".join(rng.choice(letters, size=int(rng.integers(1, 12)), p=p)) for _ in range(3000)}
    return sorted(words), "generated pseudo-words"


def make_sentences(n: int, lengths: Sequence[int], vocab: Sequence[str], seed: int = 0) -> List[List[str]]:
    """n sentences whose lengths are drawn from `lengths`, words drawn Zipf-like from `vocab`."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    order = rng.permutation(len(vocab))  # which word gets which rank
    out = []
    for k in rng.choice(np.asarray(lengths), size=n):
        idx = order[rng.choice(len(vocab), size=int(k), p=p)]
        out.append([vocab[i] for i in idx])
    return out


def cache_root() -> pathlib.Path:
    """$ELMO_FAST_BENCH_CACHE, else $ELMO_FAST_CACHE/bench, else ~/.cache/elmo_fast/bench."""
    env = _config.path_setting("ELMO_FAST_BENCH_CACHE")
    return pathlib.Path(env) if env else pathlib.Path(_config.cache_root("bench"))


def model_files(arch: str, seed: int = 0, cache_dir: Optional[str] = None) -> Tuple[str, str]:
    """(options.json, weights.hdf5) of a random-weight model of `arch` (small | medium | original, or
    tiny for plumbing checks), written once and cached
    (a COMPLETE marker is written last, so a run killed half-way writes it again)."""
    from .. import synthetic

    d = pathlib.Path(cache_dir) if cache_dir else cache_root() / f"{arch}-seed{seed}"
    opath, wpath = d / "options.json", d / "weights.hdf5"
    done = d / "COMPLETE"
    if not done.exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=str(d.parent)))
        options = synthetic.make_options(**TINY_OPTIONS) if arch == "tiny" else synthetic.make_options(arch)
        synthetic.write_model(str(tmp), options, seed=seed)
        d.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "options.json", opath)
        os.replace(tmp / "weights.hdf5", wpath)
        tmp.rmdir()
        done.write_text("written by elmo_fast.bench.model_files\n")
    return str(opath), str(wpath)


def flops_per_token(options: Dict[str, Any], chars: int = 50) -> Dict[str, float]:
    """FLOPs (2 per multiply-add) per token for every window of a `chars`-long token (GUIDE 6)."""
    cc, ls = options["char_cnn"], options["lstm"]
    E = cc["embedding"]["dim"]
    F = sum(n for _, n in cc["filters"])
    P, C, L = ls["projection_dim"], ls["dim"], ls["n_layers"]
    cnn = sum(2.0 * (chars - w + 1) * w * E * n for w, n in cc["filters"])
    highway = cc["n_highway"] * 2 * 2.0 * F * F
    proj = 2.0 * F * P
    per_dir_layer_in = 2.0 * P * 4 * C
    per_dir_layer_rec = 2.0 * P * 4 * C + 2.0 * C * P
    lstm = 2 * L * (per_dir_layer_in + per_dir_layer_rec)
    return {"char_cnn": cnn, "highway": highway, "projection": proj, "lstm": lstm,
            "lstm_recurrent": 2 * L * per_dir_layer_rec, "total": cnn + highway + proj + lstm}


def batch_flops(options: Dict[str, Any], positions: Sequence[int], distinct: Optional[int] = None,
                chars: int = 50) -> Dict[str, Any]:
    """FLOPs (2 per multiply-add) of one forward over a batch, per op family, from the options and the
    real positions the model runs: `positions` [B] = tokens + 2 (<S>, </S>) per sentence.

    'model': the work of the model on those positions, whatever the implementation: every real
    position through the char CNN (all chars - w + 1 windows, as the reference convolves), highway
    and projection, and through each layer and direction of the biLSTM (input projection,
    recurrent GEMM, cell projection). The same count serves every implementation, so its FLOP rate
    is comparable across them.
    'executed': what elmo_fast's reference runs: the char encoder on the `distinct` token rows only
    (it deduplicates; default: no dedup), the LSTM on real positions only (as 'model').
    'padded': the model's work on the padded [B, max(positions)] grid (what an implementation that
    computes padding, e.g. allennlp's char CNN, would do there).
    Element-wise work (gates, cell update, highway gate) is not counted: a GEMM ceiling compares GEMMs."""
    fpt = flops_per_token(options, chars)
    n = float(sum(positions))
    padded = float(len(positions) * max(positions, default=0))
    enc = ("char_cnn", "highway", "projection")
    ls = options["lstm"]
    P, C, L = ls["projection_dim"], ls["dim"], ls["n_layers"]
    per_pos = {"lstm_input": 2 * L * 2.0 * P * 4 * C, "lstm_recurrent": 2 * L * 2.0 * P * 4 * C,
               "lstm_cell_projection": 2 * L * 2.0 * C * P}

    def count(enc_rows: float, lstm_rows: float) -> Dict[str, float]:
        out = {k: fpt[k] * enc_rows for k in enc}
        out.update({k: v * lstm_rows for k, v in per_pos.items()})
        out["total"] = sum(out.values())
        return out

    return {"positions": int(n), "padded_positions": int(padded),
            "distinct_tokens": int(n if distinct is None else distinct),
            "model": count(n, n), "executed": count(n if distinct is None else float(distinct), n),
            "padded": count(padded, padded)}
