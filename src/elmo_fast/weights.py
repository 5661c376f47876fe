"""ELMo model files: `options.json` + `weights.hdf5` (allennlp / bilm-tf layout) -> tensors in the
layout the ops take (PyTorch gate order i, f, g, o; forget bias folded in).

Every problem with a file raises `WeightsError` naming the file and what is wrong with it: a missing
key or dataset, a shape that disagrees with the options, a truncated or non-HDF5 file.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ._support import ACTIVATIONS as _ACTIVATION_IDS

ACTIVATIONS = tuple(_ACTIVATION_IDS)  # the activations the kernels and the reference implement


class WeightsError(ValueError):
    """A model file is missing, malformed, or disagrees with its options."""


@dataclass(frozen=True)
class ElmoOptions:
    """The parts of options.json that shape the network."""

    char_dim: int
    filters: Tuple[Tuple[int, int], ...]  # (width, number of filters) per convolution
    n_highway: int
    n_characters: int
    max_chars: int
    activation: str
    cell_dim: int  # C: LSTM cells
    proj_dim: int  # P: projection (= token embedding size)
    n_layers: int
    cell_clip: Optional[float]
    proj_clip: Optional[float]
    skip_connections: bool

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)

    @property
    def output_dim(self) -> int:
        return 2 * self.proj_dim

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "options") -> "ElmoOptions":
        """Checks every field's type and range; WeightsError names the key and the value."""
        def get(section: str, key: str, default: Any = KeyError):
            sec = d.get(section)
            if not isinstance(sec, dict):
                raise WeightsError(f"{source}: missing section {section!r}")
            if key not in sec:
                if default is KeyError:
                    raise WeightsError(f"{source}: missing key {section}.{key}")
                return default
            return sec[key]

        def integer(name: str, value: Any, lo: int) -> int:
            # JSON has one number type: 64 and 64.0 are the same integer, 64.7 and true are not
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
                    or int(value) < lo:
                raise WeightsError(f"{source}: {name} must be an integer >= {lo}, got {value!r}")
            return int(value)

        emb = get("char_cnn", "embedding")
        if not isinstance(emb, dict) or "dim" not in emb:
            raise WeightsError(f"{source}: missing key char_cnn.embedding.dim")
        raw_filters = get("char_cnn", "filters")
        if not isinstance(raw_filters, list) or not raw_filters or \
                not all(isinstance(f, (list, tuple)) and len(f) == 2 for f in raw_filters):
            raise WeightsError(f"{source}: char_cnn.filters must be a list of [width, count] pairs, got "
                               f"{raw_filters!r}")
        filters = tuple((integer(f"char_cnn.filters[{i}] width", w, 1),
                         integer(f"char_cnn.filters[{i}] count", n, 1))
                        for i, (w, n) in enumerate(raw_filters))
        activation = get("char_cnn", "activation", "relu")
        if activation not in ACTIVATIONS:
            raise WeightsError(f"{source}: char_cnn.activation {activation!r} is not one of {ACTIVATIONS}")

        def clip(key):
            v = get("lstm", key, None)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v):
                raise WeightsError(f"{source}: lstm.{key} must be a number or null, got {v!r}")
            return None if v is None or float(v) <= 0 else float(v)

        skip = get("lstm", "use_skip_connections", False)
        if not isinstance(skip, bool) and skip not in (0, 1):
            raise WeightsError(f"{source}: lstm.use_skip_connections must be true or false, got {skip!r}")
        n_characters = integer("char_cnn.n_characters", get("char_cnn", "n_characters", 262), 1)
        if n_characters not in (261, 262):
            raise WeightsError(f"{source}: char_cnn.n_characters must be 261 or 262 (allennlp character "
                               f"ids), got {n_characters}")
        opts = cls(
            char_dim=integer("char_cnn.embedding.dim", emb["dim"], 1),
            filters=filters,
            n_highway=integer("char_cnn.n_highway", get("char_cnn", "n_highway"), 0),
            n_characters=n_characters,
            max_chars=integer("char_cnn.max_characters_per_token",
                              get("char_cnn", "max_characters_per_token", 50), 1),
            activation=activation,
            cell_dim=integer("lstm.dim", get("lstm", "dim"), 1),
            proj_dim=integer("lstm.projection_dim", get("lstm", "projection_dim"), 1),
            n_layers=integer("lstm.n_layers", get("lstm", "n_layers"), 1),
            cell_clip=clip("cell_clip"),
            proj_clip=clip("proj_clip"),
            skip_connections=bool(skip),
        )
        if opts.max_chars != 50:
            raise WeightsError(f"{source}: max_characters_per_token must be 50 (allennlp character ids), "
                               f"got {opts.max_chars}")
        if max(w for w, _ in filters) > opts.max_chars:
            raise WeightsError(f"{source}: a filter is wider than max_characters_per_token")
        return opts

    @classmethod
    def load(cls, path: str) -> "ElmoOptions":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise WeightsError(f"{path}: options file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WeightsError(f"{path}: not a valid JSON options file ({exc})") from None
        if not isinstance(d, dict):
            raise WeightsError(f"{path}: options file must hold a JSON object")
        return cls.from_dict(d, source=path)


@dataclass
class LstmWeights:
    """One layer of one direction, PyTorch layout and gate order (i, f, g, o)."""

    w_ih: torch.Tensor  # [4C, in]
    w_hh: torch.Tensor  # [4C, P]
    bias: torch.Tensor  # [4C]   (TF's forget_bias 1.0 added to the f block)
    w_p: torch.Tensor  # [P, C]


@dataclass
class ElmoWeights:
    """All parameters of an ELMo biLM as float32 tensors in the ops' layout."""

    options: ElmoOptions
    char_embed: torch.Tensor  # [n_characters, E], row 0 = zeros (id 0 = masked)
    conv_w: List[torch.Tensor]  # [w, E, n] per filter width
    conv_b: List[torch.Tensor]  # [n]
    highway: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]  # Wc, bc, Wt, bt
    w_proj: torch.Tensor  # [F, P]
    b_proj: torch.Tensor  # [P]
    lstm: List[List[LstmWeights]] = field(default_factory=list)  # [direction 0 fwd / 1 bwd][layer]


def tf_to_torch_lstm(W_0: np.ndarray, B: np.ndarray, W_P_0: np.ndarray, input_dim: int) -> LstmWeights:
    """TF LSTMCell tensors -> LstmWeights.

    W_0 [in + P, 4C] (gates i, j, f, o along columns; rows: input then recurrent), B [4C],
    W_P_0 [C, P]. TF adds forget_bias=1.0 at run time; here it is folded into the bias.
    """
    C = W_0.shape[1] // 4
    order = np.concatenate([np.arange(0, C), np.arange(2 * C, 3 * C), np.arange(C, 2 * C),
                            np.arange(3 * C, 4 * C)])
    W = np.ascontiguousarray(W_0.T[order])  # [4C, in + P], rows in i, f, g, o order
    bias = B[order].astype(np.float32).copy()
    bias[C : 2 * C] += 1.0
    return LstmWeights(
        w_ih=torch.from_numpy(np.ascontiguousarray(W[:, :input_dim])),
        w_hh=torch.from_numpy(np.ascontiguousarray(W[:, input_dim:])),
        bias=torch.from_numpy(bias),
        w_p=torch.from_numpy(np.ascontiguousarray(W_P_0.T)),
    )


class _Reader:
    """Reads datasets from an open HDF5 file, checking each against the shape the options imply."""

    def __init__(self, h5, path: str):
        self.h5, self.path = h5, path

    def __call__(self, name: str, shape: Tuple[int, ...]) -> np.ndarray:
        if name not in self.h5:
            raise WeightsError(f"{self.path}: missing dataset {name!r}")
        ds = self.h5[name]
        if not hasattr(ds, "shape"):
            raise WeightsError(f"{self.path}: {name!r} is a group, expected a dataset of shape {shape}")
        if tuple(ds.shape) != tuple(shape):
            raise WeightsError(
                f"{self.path}: dataset {name!r} has shape {tuple(ds.shape)} "
                f"but the options imply {tuple(shape)}"
            )
        try:
            arr = np.asarray(ds[...], dtype=np.float32)
        except OSError as exc:  # truncated file: the header is there, the data is not
            raise WeightsError(f"{self.path}: dataset {name!r} cannot be read, "
                               f"the file looks truncated ({exc})") from None
        if not np.isfinite(arr).all():
            raise WeightsError(f"{self.path}: dataset {name!r} contains NaN or infinite values")
        return arr


# datasets of layers: a file holding one the options do not use was written for other options
_LAYER_DATASET = re.compile(r"^(CNN/[Wb]_cnn_(?P<conv>\d+)|CNN_high_(?P<highway>\d+)/.+|"
                            r"RNN_(?P<direction>\d+)/RNN/MultiRNNCell/Cell(?P<layer>\d+)/.+)$")


def _check_unused_layers(h5, options: ElmoOptions, path: str) -> None:
    """WeightsError naming the first dataset of a layer beyond what the options use."""
    names: List[str] = []
    h5.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    for name in sorted(names):
        m = _LAYER_DATASET.match(name)
        if m is None:
            continue
        why = None
        if m["conv"] is not None and int(m["conv"]) >= len(options.filters):
            why = f"char_cnn.filters has {len(options.filters)} entries"
        elif m["highway"] is not None and int(m["highway"]) >= options.n_highway:
            why = f"char_cnn.n_highway is {options.n_highway}"
        elif m["direction"] is not None and int(m["direction"]) > 1:
            why = "a biLM has 2 directions (RNN_0, RNN_1)"
        elif m["layer"] is not None and int(m["layer"]) >= options.n_layers:
            why = f"lstm.n_layers is {options.n_layers}"
        if why:
            raise WeightsError(f"{path}: dataset {name!r} is a layer the options do not use ({why}); the "
                               "options file does not belong to these weights")


def load_weights(options: ElmoOptions, path: str) -> ElmoWeights:
    """Reads an allennlp / bilm-tf weights.hdf5 for the given options; refuses a file holding layers
    the options do not use (running on a subset of a model's weights gives wrong numbers silently)."""
    import h5py

    if not os.path.exists(path):
        raise WeightsError(f"{path}: weights file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path}: not a readable HDF5 file (truncated or another format: {exc})") from None
    o = options
    E, F, P, C = o.char_dim, o.n_filters, o.proj_dim, o.cell_dim
    with h5:
        _check_unused_layers(h5, o, path)
        read = _Reader(h5, path)
        # allennlp's ids run to 261 (padding 260 + 1), so 261 stored rows whatever n_characters says
        # (bilm-tf training options say 261, the released ones 262).
        emb = read("char_embed", (261, E))
        char_embed = torch.from_numpy(np.concatenate([np.zeros((1, E), np.float32), emb]))
        conv_w, conv_b = [], []
        for i, (w, n) in enumerate(o.filters):
            conv_w.append(torch.from_numpy(read(f"CNN/W_cnn_{i}", (1, w, E, n))[0]))
            conv_b.append(torch.from_numpy(read(f"CNN/b_cnn_{i}", (n,))))
        highway = []
        for k in range(o.n_highway):
            g = f"CNN_high_{k}"
            highway.append(tuple(torch.from_numpy(read(f"{g}/{name}", shape)) for name, shape in (
                ("W_carry", (F, F)), ("b_carry", (F,)), ("W_transform", (F, F)), ("b_transform", (F,)))))
        w_proj = torch.from_numpy(read("CNN_proj/W_proj", (F, P)))
        b_proj = torch.from_numpy(read("CNN_proj/b_proj", (P,)))
        lstm = []
        for d in range(2):
            layers = []
            for layer in range(o.n_layers):
                g = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
                layers.append(tf_to_torch_lstm(
                    read(f"{g}/W_0", (P + P, 4 * C)), read(f"{g}/B", (4 * C,)),
                    read(f"{g}/W_P_0", (C, P)), P))
            lstm.append(layers)
    return ElmoWeights(o, char_embed, conv_w, conv_b, highway, w_proj, b_proj, lstm)


def load_model(options_file: str, weight_file: str) -> ElmoWeights:
    """options.json + weights.hdf5 paths -> ElmoWeights (use `elmo_fast.download.resolve_model` first
    for registry names, directories and URLs)."""
    return load_weights(ElmoOptions.load(options_file), weight_file)
