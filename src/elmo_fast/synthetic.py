"""Random-weight ELMo models in the real file layout (options.json + bilm-tf weights.hdf5), for
tests and benchmarks on machines that cannot download the pretrained files."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import numpy as np

STANDARD_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]

# The architectures of the registry's models (GUIDE section 5); weights are random here.
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "small": dict(n_highway=1, dim=1024, projection_dim=128),
    "medium": dict(n_highway=1, dim=2048, projection_dim=256),
    "original": dict(n_highway=2, dim=4096, projection_dim=512),
}


def model_shapes(arch: str) -> Dict[str, Any]:
    """The sizes the ops see for a standard architecture: E (char embedding), L (chars per token),
    filters [[w, n], ...], F (their total), n_highway, C (LSTM cells), P (projection)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    a = ARCHITECTURES[arch]
    return dict(E=16, L=50, filters=STANDARD_FILTERS, F=sum(n for _, n in STANDARD_FILTERS),
                n_highway=a["n_highway"], C=a["dim"], P=a["projection_dim"])


def make_options(arch: Optional[str] = None, *, char_dim: int = 16, filters=None, n_highway: int = 2,
                 dim: int = 4096, projection_dim: int = 512, n_layers: int = 2, cell_clip: float = 3.0,
                 proj_clip: float = 3.0, use_skip_connections: bool = True,
                 activation: str = "relu") -> Dict[str, Any]:
    """An options.json dict; `arch` ('small' | 'medium' | 'original') fills in a standard shape."""
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        return make_options(**ARCHITECTURES[arch])
    return {
        "lstm": {"cell_clip": cell_clip, "use_skip_connections": use_skip_connections, "n_layers": n_layers,
                 "proj_clip": proj_clip, "projection_dim": projection_dim, "dim": dim},
        "char_cnn": {"embedding": {"dim": char_dim}, "filters": filters or STANDARD_FILTERS,
                     "n_highway": n_highway, "n_characters": 262, "max_characters_per_token": 50,
                     "activation": activation},
    }


def write_model(directory: str, options: Dict[str, Any], seed: int = 0, scale: float = 0.1) -> tuple:
    """Writes options.json and weights.hdf5 with random weights into `directory`.
    Returns (options_path, weights_path)."""
    import h5py

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    cc, ls = options["char_cnn"], options["lstm"]
    E, filters = cc["embedding"]["dim"], cc["filters"]
    F = sum(n for _, n in filters)
    P, C = ls["projection_dim"], ls["dim"]

    def rand(*shape, fan_in=None):
        # weights scaled by 1/sqrt(fan_in) keep activations O(1) through the stack
        std = scale if fan_in is None else 1.0 / np.sqrt(fan_in)
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    opath, wpath = os.path.join(directory, "options.json"), os.path.join(directory, "weights.hdf5")
    with open(opath, "w") as f:
        json.dump(options, f, indent=1)
    with h5py.File(wpath, "w") as h:
        h["char_embed"] = rand(261, E, fan_in=1)
        for i, (w, n) in enumerate(filters):
            h[f"CNN/W_cnn_{i}"] = rand(1, w, E, n)
            h[f"CNN/b_cnn_{i}"] = rand(n)
        for k in range(cc["n_highway"]):
            for name, shape in (("W_carry", (F, F)), ("W_transform", (F, F)), ("b_carry", (F,)),
                                ("b_transform", (F,))):
                h[f"CNN_high_{k}/{name}"] = rand(*shape, fan_in=F if name[0] == "W" else None)
        h["CNN_proj/W_proj"] = rand(F, P, fan_in=F)
        h["CNN_proj/b_proj"] = rand(P)
        for d in range(2):
            for layer in range(ls["n_layers"]):
                g = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
                h[f"{g}/W_0"] = rand(2 * P, 4 * C, fan_in=2 * P)
                h[f"{g}/B"] = rand(4 * C)
                h[f"{g}/W_P_0"] = rand(C, P, fan_in=C)
    return opath, wpath
