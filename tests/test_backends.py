"""Choosing a backend (use_backend, per call, per module, ELMO_FAST_BACKEND) and the declared
support rules every backend derives its reasons from."""
import ast
import pathlib
import sys
import threading
import types

import pytest
import torch

from elmo_fast import ops
from elmo_fast._support import ANY, REFERENCE, Support, lstm_sizes
from elmo_fast.ops import BackendUnavailable, current_backend, record_backends, use_backend
from elmo_fast.ops._dispatch import Backend, Op
from elmo_fast.reference.scalar_mix import scalar_mix_ref

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mix_inputs():
    return dict(layers=[torch.ones(1, 2, 3)] * 2, scalars=torch.zeros(2), gamma=torch.ones(1), mask=None,
                do_layer_norm=False)


def _probe(calls):
    """An op with two backends that record which one ran."""
    def fast(**kw):
        calls.append("triton")
        return scalar_mix_ref(**kw)

    def ref(**kw):
        calls.append("torch")
        return scalar_mix_ref(**kw)

    mod = types.ModuleType("_probe_backends")
    mod.fast, mod.ref = fast, ref
    sys.modules["_probe_backends"] = mod
    return Op("probe", [Backend("triton", "_probe_backends:fast", Support(devices=ANY, dtypes=ANY)),
                        Backend("torch", "_probe_backends:ref", REFERENCE)])


def test_use_backend_overrides_the_environment_and_nests(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "triton")
    calls = []
    op = _probe(calls)
    op(**_mix_inputs())
    with use_backend("torch"):
        assert current_backend() == ("torch", "use_backend('torch')")
        op(**_mix_inputs())
        with use_backend("triton"):
            op(**_mix_inputs())
        op(**_mix_inputs())
    op(**_mix_inputs())
    assert calls == ["triton", "torch", "triton", "torch", "triton"]
    assert current_backend() == ("triton", "ELMO_FAST_BACKEND")


def test_per_call_choice_beats_use_backend():
    calls = []
    op = _probe(calls)
    with use_backend("triton"):
        op("torch", **_mix_inputs())
        op(**_mix_inputs())
    assert calls == ["torch", "triton"]


def test_choice_is_per_thread():
    seen = {}

    def other():
        seen["other"] = current_backend()[0]

    with use_backend("torch"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        seen["here"] = current_backend()[0]
    assert seen == {"other": "auto", "here": "torch"}


def test_bad_names_are_named():
    with pytest.raises(ValueError, match="use_backend='fastest' is not one of"):
        with use_backend("fastest"):
            pass
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        ops.scalar_mix(**_mix_inputs(), backend="gpu")


def test_chosen_backend_that_cannot_run_says_where_the_choice_came_from():
    args = dict(xproj=torch.randn(2, 3, 16), w_hh=torch.randn(16, 2), w_p=torch.randn(2, 4),
                lengths=torch.tensor([3, 1]), h0=torch.zeros(2, 2), c0=torch.zeros(2, 4))
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' but lstm_layer cannot run on it"):
        ops.lstm_layer(**args, backend="cuda")
    with use_backend("cuda"), pytest.raises(BackendUnavailable,
                                            match=r"use_backend\('cuda'\) but lstm_layer"):
        ops.lstm_layer(**args)


def test_record_backends_and_composite_passes_the_choice_on():
    """A per-call choice on bilstm_layer reaches the lstm_layer calls its composite backend makes."""
    B, T, C, P = 2, 3, 4, 2
    w = (torch.randn(4 * C, P), torch.randn(4 * C), torch.randn(4 * C, P), torch.randn(P, C))
    x = torch.randn(B, T, P)
    with record_backends() as seen:
        ops.bilstm_layer((x, x), (w, w), torch.tensor([3, 2]), torch.zeros(B, 2 * P), torch.zeros(B, 2 * C),
                         backend="torch")
    assert seen == {"bilstm_layer": "torch", "lstm_layer": "torch"}


def test_bilm_backend_choice(tmp_path):
    from _tiny_model import write_tiny_model
    from elmo_fast import BiLm, batch_to_ids

    bilm = BiLm(*write_tiny_model(tmp_path, seed=1), stateful=False, backend="torch")
    with record_backends() as seen, use_backend("cuda"):  # the module's own choice wins
        bilm(batch_to_ids([["a", "b"]]))
    assert set(seen.values()) == {"torch"}
    assert {"char_cnn", "highway", "bilstm_layer", "lstm_layer"} <= set(seen)
    with pytest.raises(ValueError, match="backend='fast'"):
        BiLm(*write_tiny_model(tmp_path, seed=1), backend="fast")


# ---------------------------------------------------------------------------------------------
# declared support
# ---------------------------------------------------------------------------------------------
def _lstm(**over):
    args = dict(xproj=torch.randn(2, 3, 16), w_hh=torch.randn(16, 2), w_p=torch.randn(2, 4),
                lengths=torch.tensor([3, 1]), h0=torch.zeros(2, 2), c0=torch.zeros(2, 4))
    args.update(over)
    return args


def test_support_derives_the_common_reasons(monkeypatch):
    s = Support(devices=frozenset({"cpu"}), dtype_of="xproj", rule=lstm_sizes, limits={"P": 1})
    assert s.not_supported_reasons(_lstm(w_hh=torch.randn(16, 1), w_p=torch.randn(1, 4),
                                         h0=torch.zeros(2, 1))) == []
    why = s.not_supported_reasons(_lstm())
    assert why == ["P=2 is over this backend's limit 1"]
    why = s.not_supported_reasons(_lstm(xproj=torch.randn(2, 3, 16, dtype=torch.float64)))
    assert any("float64" in r for r in why)  # dtype not declared (and w_hh no longer matches)
    grad = _lstm(w_hh=torch.randn(16, 1, requires_grad=True), w_p=torch.randn(1, 4), h0=torch.zeros(2, 1))
    assert s.not_supported_reasons(grad) == ["inputs require grad and this backend has no backward pass"]
    with torch.no_grad():
        assert s.not_supported_reasons(grad) == []
    assert "not CUDA" in Support(dtype_of="xproj").not_supported_reasons(_lstm())[0]


def test_interpreter_only_when_forced(monkeypatch):
    s = Support(interpreter=True, dtypes=ANY)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert s.not_supported_reasons(_lstm(), forced=True) == []
    assert "only when forced" in s.not_supported_reasons(_lstm(), forced=False)[0]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert s.not_supported_reasons(_lstm(), forced=True)


def test_rule_problems_are_reasons_not_exceptions():
    s = Support(devices=ANY, rule=lstm_sizes)
    assert any("w_p" in r for r in s.not_supported_reasons(_lstm(w_p=torch.zeros(4, 9))))
    assert any("lengths" in r for r in s.not_supported_reasons(_lstm(lengths=[3, 1])))


def test_backends_import_the_rules_not_the_dispatcher():
    """Kernels and lstm_cuda import elmo_fast._support, never elmo_fast.ops (no import circle)."""
    files = list((ROOT / "kernels").glob("*.py")) + [ROOT / "src/elmo_fast/lstm_cuda.py",
                                                     ROOT / "src/elmo_fast/_support.py",
                                                     ROOT / "src/elmo_fast/_lstm_ext.py"]
    files += list((ROOT / "src/elmo_fast/reference").glob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert "ops" not in name.split("."), f"{path.name} imports {name}"
