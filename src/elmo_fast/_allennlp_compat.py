"""allennlp 0.9 internals that downstream code reaches into, mapped onto elmo_fast's modules.

allennlp's `_ElmoBiLm._elmo_lstm` is an `ElmoLstm` holding the LSTM weights and the carried state;
flair's `ELMoEmbeddings.__setstate__` moves that state with
`ee.elmo_bilm._elmo_lstm._states = tuple(s.to(device) for s in ee.elmo_bilm._elmo_lstm._states)`.
In elmo_fast the state lives on `BiLm` itself, so `BiLm._elmo_lstm` is this view: the same names,
the same meaning (`_states` is `(h [n_layers, B, 2P], c [n_layers, B, 2C])`, forward then backward
halves, or None), reading and writing the BiLm. allennlp names with no counterpart raise an
AttributeError that names the replacement.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

#: allennlp ElmoLstm attributes that have no counterpart, and what to use instead
_REPLACED = {
    "forward_layers": "BiLm.lstm[0][layer] (w_ih, w_hh, bias, w_p in PyTorch gate order i, f, g, o)",
    "backward_layers": "BiLm.lstm[1][layer] (w_ih, w_hh, bias, w_p in PyTorch gate order i, f, g, o)",
    "load_weights": "elmo_fast.load_model(options_file, weight_file) and BiLm(weights=...)",
    "sort_and_run_forward": "BiLm.run_lstm(token_embeddings, mask)",
}


class ElmoLstmView:
    """allennlp's `ElmoLstm` as seen from outside: the carried state and sizes of a `BiLm`."""

    __slots__ = ("_bilm",)

    def __init__(self, bilm):
        object.__setattr__(self, "_bilm", bilm)

    # ---- the state, as allennlp's _EncoderBase keeps it
    @property
    def _states(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return self._bilm._states

    @property
    def stateful(self) -> bool:
        return self._bilm.stateful

    def reset_states(self, mask: Optional[torch.Tensor] = None) -> None:
        self._bilm.reset_states(mask)

    # ---- sizes (allennlp's ElmoLstm constructor arguments)
    @property
    def num_layers(self) -> int:
        return self._bilm.options.n_layers

    @property
    def input_size(self) -> int:
        return self._bilm.options.proj_dim

    @property
    def hidden_size(self) -> int:
        return self._bilm.options.proj_dim

    @property
    def cell_size(self) -> int:
        return self._bilm.options.cell_dim

    @property
    def requires_grad(self) -> bool:
        return self._bilm._requires_grad

    def __setattr__(self, name, value) -> None:
        if name == "_states":
            self._bilm._states = _checked_states(value, self._bilm.options)
        elif name == "stateful":
            self._bilm.stateful = bool(value)
        else:
            raise AttributeError(f"ElmoLstm.{name} cannot be set on elmo_fast's BiLm; only _states and "
                                 "stateful can")

    def __getattr__(self, name):
        if name in _REPLACED:
            raise AttributeError(f"allennlp's ElmoLstm.{name} does not exist in elmo_fast: "
                                 f"use {_REPLACED[name]}")
        raise AttributeError(f"allennlp's ElmoLstm.{name} has no counterpart in elmo_fast's BiLm (which "
                             "holds the char encoder, both LSTM stacks and the carried state: BiLm._states)")

    def __repr__(self) -> str:
        return f"ElmoLstmView(of {type(self._bilm).__name__}, stateful={self.stateful})"


def _checked_states(value, options) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """None, or (h [L, B, 2P], c [L, B, 2C]) as allennlp's ElmoLstm stores them."""
    if value is None:
        return None
    L, P, C = options.n_layers, options.proj_dim, options.cell_dim
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and \
        all(isinstance(t, torch.Tensor) for t in value)
    if ok:
        h, c = value
        ok = (h.dim() == 3 and c.dim() == 3 and h.shape[0] == c.shape[0] == L and h.shape[1] == c.shape[1]
              and h.shape[2] == 2 * P and c.shape[2] == 2 * C)
    if not ok:
        got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in value] \
            if isinstance(value, (tuple, list)) else type(value).__name__
        raise ValueError(f"_states must be None or (h [{L}, batch, {2 * P}], c [{L}, batch, {2 * C}]), "
                         f"got {got}")
    return (value[0].detach(), value[1].detach())


def install_allennlp_shim() -> None:
    """Makes `import allennlp.commands.elmo` / `allennlp.modules.elmo` give elmo_fast's `ElmoEmbedder`,
    `Elmo` and `batch_to_ids`, for libraries that build them by those names (flair's ELMoEmbeddings)
    without allennlp installed. Refused when a real allennlp is importable, so it is never shadowed."""
    import importlib.util
    import sys
    import types

    existing = sys.modules.get("allennlp")
    if existing is not None and getattr(existing, "__elmo_fast_shim__", False):
        return
    if existing is not None or importlib.util.find_spec("allennlp") is not None:
        raise RuntimeError("allennlp is installed: elmo_fast will not shadow it (uninstall it, or use "
                           "elmo_fast's classes directly)")
    from . import Elmo, ElmoEmbedder, batch_to_ids
    from .download import MODELS

    names = ("allennlp", "allennlp.commands", "allennlp.modules")
    root, commands, modules = (types.ModuleType(n) for n in names)
    root.__elmo_fast_shim__ = True
    cmd_elmo = types.ModuleType("allennlp.commands.elmo")
    cmd_elmo.ElmoEmbedder = ElmoEmbedder
    cmd_elmo.DEFAULT_OPTIONS_FILE = MODELS["original"].options_url
    cmd_elmo.DEFAULT_WEIGHT_FILE = MODELS["original"].weights_url
    cmd_elmo.DEFAULT_BATCH_SIZE = 64
    mod_elmo = types.ModuleType("allennlp.modules.elmo")
    mod_elmo.Elmo, mod_elmo.batch_to_ids = Elmo, batch_to_ids
    root.commands, root.modules, commands.elmo, modules.elmo = commands, modules, cmd_elmo, mod_elmo
    modules.Elmo = Elmo
    sys.modules.update({"allennlp": root, "allennlp.commands": commands, "allennlp.commands.elmo": cmd_elmo,
                        "allennlp.modules": modules, "allennlp.modules.elmo": mod_elmo})
