"""allennlp 0.9's own Elmo, the baseline, loaded by shared/tools/allennlp_elmo.py from the allennlp
0.9.0 wheel (never installed). Looked for: $ELMO_ALLENNLP_TOOL / $ELMO_ALLENNLP_WHEEL, tools/ in
the shared/ folders `inputs.shared_dirs()` finds, then .whl/ in the working directory and the
repository (the folder carried to the GPU machine)."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import List, Optional

from .. import _config
from .inputs import shared_candidates, where_looked
from .report import repo_root

TOOL = "allennlp_elmo.py"
WHEEL = "allennlp-0.9.0-py3-none-any.whl"


def _carried_dirs() -> List[pathlib.Path]:
    dirs = [pathlib.Path.cwd() / ".whl"]
    root = repo_root()
    if root is not None and root / ".whl" not in dirs:
        dirs.append(root / ".whl")
    return dirs


def tool_candidates() -> List[pathlib.Path]:
    env = _config.path_setting("ELMO_ALLENNLP_TOOL")
    return (([pathlib.Path(env)] if env else []) + [d / "tools" / TOOL for d in shared_candidates()]
            + [d / TOOL for d in _carried_dirs()])


def tool_path() -> Optional[pathlib.Path]:
    for c in tool_candidates():
        if c.is_file():
            return c
    return None


def load_allennlp():
    """allennlp 0.9's (Elmo, batch_to_ids). FileNotFoundError saying where it looked."""
    tool = tool_path()
    if tool is None:
        raise FileNotFoundError(f"{TOOL} not found (set ELMO_ALLENNLP_TOOL); looked in "
                                f"{where_looked(tool_candidates())}")
    if not _config.path_setting("ELMO_ALLENNLP_WHEEL"):
        for c in [tool.parent / WHEEL] + [d / WHEEL for d in _carried_dirs()]:
            if c.is_file():
                os.environ["ELMO_ALLENNLP_WHEEL"] = str(c)  # read by the tool itself
                break
    spec = importlib.util.spec_from_file_location("allennlp_elmo", str(tool))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["allennlp_elmo"] = mod
    spec.loader.exec_module(mod)
    return mod.load()


def reset_allennlp_states(elmo) -> None:
    """allennlp's Elmo is stateful: back to a zero state before a call whose output is compared."""
    lstm = getattr(getattr(elmo, "_elmo_lstm", None), "_elmo_lstm", None)
    if lstm is not None and hasattr(lstm, "reset_states"):
        lstm.reset_states()
