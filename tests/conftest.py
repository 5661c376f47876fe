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

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("ELMO_FAST_FIXTURES", ROOT.parent / "shared" / "fixtures" / "elmo"))


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
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:  # the marker, not a folder named gpu
            item.add_marker(skip_gpu)


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
