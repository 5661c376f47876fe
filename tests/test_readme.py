"""Every ```python snippet of the README runs as written (on the packaged `tiny` model); a snippet
that imports a package not installed here (datasets, flair) is skipped, naming it."""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import re
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _imported_roots(code: str):
    roots = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 4  # drop-in, encode, datasets, flair


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs(code, tmp_path, monkeypatch):
    missing = sorted(m for m in _imported_roots(code) - {"allennlp"} if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed here (the tests do not install it)")
    monkeypatch.chdir(tmp_path)
    # the flair snippet's shim registers allennlp modules: sys.modules is left as it was
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n == "allennlp" or n.startswith("allennlp.")}
    try:
        exec(compile(code, "README.md snippet", "exec"), {"__name__": "__readme__"})
    finally:
        for name in [n for n in sys.modules if n == "allennlp" or n.startswith("allennlp.")]:
            del sys.modules[name]
        sys.modules.update(saved)
