"""Helpers shared by the tests that run a tiny random ELMo end to end (test_cli, test_embed_file)."""
from __future__ import annotations

import contextlib
import json

import h5py
import numpy as np
import pytest
import torch

from elmo_fast.synthetic import make_options, write_model


@contextlib.contextmanager
def one_thread():
    """Tiny models are dominated by OpenMP hand-offs on a busy machine; one thread is much faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_module():
    """Imported by a test module, runs all its tests with one torch thread (see one_thread)."""
    with one_thread():
        yield


def write_tiny_model(directory, seed):
    """options.json + weights.hdf5 of a tiny random ELMo (output width 16) written to `directory`."""
    opts = make_options(char_dim=4, filters=[[1, 4], [2, 8]], n_highway=1, dim=16, projection_dim=8)
    return write_model(str(directory), opts, seed=seed)


def read_h5(path):
    """An embed output file: ({key: array} without sentence_to_index, the index or None)."""
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in f.keys() if k != "sentence_to_index"}
        index = json.loads(f["sentence_to_index"][0]) if "sentence_to_index" in f else None
    return data, index


WORDS = "the a of to and in is was he for it with as his on be at by i this had not are but from".split()


def corpus_lines(n, seed=0):
    """n random sentences of 1-11 common words (a corpus for the corpus-job tests)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]


def tiny_model_dir(tmp_path_factory, seed):
    """The folder of a tiny random model (what --model takes)."""
    import os

    return os.path.dirname(write_tiny_model(tmp_path_factory.mktemp("tiny_elmo"), seed=seed)[0])
