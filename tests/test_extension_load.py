"""Loading the CUDA extension (elmo_fast._lstm_ext): a failed JIT build is recorded once and raised
at once after that (issue 16: no nvcc run per call), and `elmo-fast info` reports its state and
build info. A fake nvcc on PATH stands in for the compiler; nothing needs a GPU."""
import importlib.util
import json
import os
import stat
import warnings

import pytest

from elmo_fast import _lstm_ext
from elmo_fast.cli import collect_info, format_info


@pytest.fixture
def no_prebuilt(monkeypatch, tmp_path):
    """The extension as if never built: no prebuilt module, empty JIT cache, fresh load state."""
    def missing():
        raise ImportError("No module named 'elmo_fast._lstm_cuda' (hidden by the test)")

    monkeypatch.setattr(_lstm_ext, "_import_prebuilt", missing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(_lstm_ext, "_ext", None)
    monkeypatch.setattr(_lstm_ext, "_ext_error", None)
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELMO_FAST_JIT", "1")


@pytest.fixture
def failing_nvcc(monkeypatch, tmp_path):
    """A fake nvcc first on PATH that logs each run to a file and fails; returns the log's path."""
    bindir, log = tmp_path / "bin", tmp_path / "nvcc-runs.log"
    bindir.mkdir()
    nvcc = bindir / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho 'fatal error: fake nvcc' >&2\nexit 1\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def _runs(log):
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_failed_build_runs_nvcc_once(no_prebuilt, failing_nvcc):
    if _lstm_ext.csrc_dir() is None:
        pytest.skip("the CUDA sources are not shipped with this installation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="JIT build failed.*fake nvcc"):
            _lstm_ext.load_extension()
    first = _runs(failing_nvcc)
    assert first >= 1  # the compile steps of one build attempt (they run side by side)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="JIT build failed"):
            _lstm_ext.load_extension()
    assert _runs(failing_nvcc) == first, "nvcc ran again after a recorded failure"
    info = _lstm_ext.extension_info()
    assert info["state"] == "failed" and not info["available"] and "fake nvcc" in info["detail"]
    assert _lstm_ext.extension_status().startswith("failed: ")


def test_jit_disabled_never_runs_nvcc(no_prebuilt, failing_nvcc, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_JIT", "0")
    assert _lstm_ext.extension_info()["detail"] == "JIT build disabled (ELMO_FAST_JIT=0)"
    for _ in range(2):
        with pytest.raises(RuntimeError, match="JIT build disabled"):
            _lstm_ext.load_extension()
    assert _runs(failing_nvcc) == 0


def test_info_before_any_build_says_how(no_prebuilt, failing_nvcc):
    info = _lstm_ext.extension_info()
    assert info["state"] == "not built" and "JIT-built on first use" in info["detail"]
    assert "pip install" in info["how"]
    text = format_info(collect_info(arch="small"))
    assert "CUDA LSTM extension: not built" in text and "how: build it with" in text


def test_info_prints_build_info_not_a_repr():
    info = collect_info(arch="small")
    ext = info["cuda_extension"]
    json.dumps(ext)  # JSON-able as it is
    text = format_info(info)
    assert "<function" not in text and "<built-in" not in text
    if ext["state"] == "built":
        assert "arch" in ext["build"] and "cudart_version" in ext["build"]
        assert f"  arch: {ext['build']['arch']}" in text
    else:
        assert ext.get("detail") and ext.get("how")
