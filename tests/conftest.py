"""Shared test set-up: device choice, the Triton interpreter, seeding, NaN-poisoned allocations,
markers, and the path of the shared ELMo fixture."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# fp32 references computed on CUDA must be IEEE fp32: cuDNN convolutions use TF32 by default, which
# would make an exact kernel look wrong at fp32 tolerances (and an inexact one look right).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# The interpreter must be chosen before triton is imported anywhere.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from elmo_fast import _config  # noqa: E402  (after TRITON_INTERPRET is set)

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(_config.fixtures_dir(ROOT.parent / "shared" / "fixtures" / "elmo"))


def pytest_configure(config):
    """A source tree on PYTHONPATH without an install has no elmo_fast.kernels (setup.py maps
    kernels/ to it): stop with one line instead of import failures and false 'no triton' skips."""
    import importlib.util

    if importlib.util.find_spec("elmo_fast.kernels") is None:
        import elmo_fast

        raise pytest.UsageError(
            f"elmo_fast is imported from {pathlib.Path(elmo_fast.__file__).parent} without elmo_fast.kernels "
            f"(kernels/ becomes elmo_fast.kernels only when installed): run `pip install -e .` "
            f"in {ROOT}, not PYTHONPATH=src")


def pytest_addoption(parser):
    parser.addoption("--device", default="cuda" if HAS_CUDA else "cpu",
                     help="device the kernel tests run on (cpu = Triton interpreter)")


@pytest.fixture
def device(request) -> str:
    return request.config.getoption("--device")


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    if not (FIXTURES / "options.json").exists():
        pytest.skip(f"ELMo fixture not found at {FIXTURES} (expects ../shared/fixtures/elmo beside the "
                    "checkout, or ELMO_FAST_FIXTURES)")
    return FIXTURES


def pytest_collection_modifyitems(config, items):
    import importlib.util

    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    # only the dependency itself being absent skips: with triton installed, a kernel module that
    # fails to import fails its tests
    skip_triton = pytest.mark.skip(reason="triton is not installed (pip install -e '.[test]')")
    has_triton = importlib.util.find_spec("triton") is not None
    for item in items:
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:  # the marker, not a folder named gpu
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not has_triton:
            item.add_marker(skip_triton)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_empty(monkeypatch):
    """Every floating tensor a launcher allocates with torch.empty / empty_like starts as NaN, so an
    element the kernel forgot to write fails the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
