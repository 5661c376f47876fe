"""torch.compile(Elmo(...)) on the CPU: one graph, no graph break, the same outputs (issue 13).

The biLM inside runs eagerly (`torch.compiler.disable`: its shapes depend on the data); the rest of
Elmo (scalar mixes, boundary removal, dropout) is compiled. The CUDA kernels' custom ops have fake
implementations, checked here under FakeTensorMode (no GPU needed)."""
import pytest
import torch

from _tiny_model import one_thread, write_tiny_model
from elmo_fast import Elmo, batch_to_ids

BATCHES = [[["The", "cat", "sat", "."], ["a"]], [["Another", "batch", "here"], ["x", "y"]]]


def _elmo(tmp_path, stateful):
    opath, wpath = write_tiny_model(tmp_path, seed=9)
    return Elmo(opath, wpath, 2, dropout=0.0, stateful=stateful, do_layer_norm=True).eval()


def test_one_graph_no_breaks(tmp_path):
    elmo = _elmo(tmp_path, stateful=False)
    with one_thread(), torch.no_grad():
        explained = torch._dynamo.explain(elmo)(batch_to_ids(BATCHES[0]))
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_compiled_equals_eager_aot(tmp_path, stateful):
    eager, compiled = _elmo(tmp_path, stateful), _elmo(tmp_path, stateful)
    fn = torch.compile(compiled, backend="aot_eager")
    with one_thread(), torch.no_grad():
        for batch in BATCHES:  # stateful: the second batch starts from the carried state
            ids = batch_to_ids(batch)
            want, got = eager(ids), fn(ids)
            assert torch.equal(got["mask"], want["mask"])
            for g, w in zip(got["elmo_representations"], want["elmo_representations"]):
                assert torch.equal(g, w)
    if stateful:
        assert torch.equal(compiled._elmo_lstm._states[0], eager._elmo_lstm._states[0])


@pytest.mark.slow
def test_compiled_equals_eager_inductor(tmp_path):
    """The default compiler (inductor: C++ code generation, ~1 minute on a loaded 2-core machine)."""
    eager, compiled = _elmo(tmp_path, False), _elmo(tmp_path, False)
    fn = torch.compile(compiled)
    ids = batch_to_ids(BATCHES[0])
    with one_thread(), torch.no_grad():
        want, got = eager(ids), fn(ids)
    for g, w in zip(got["elmo_representations"], want["elmo_representations"]):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_cuda_custom_ops_have_fake_implementations():
    """Both custom ops trace with fake tensors (what torch.compile does on a GPU machine)."""
    import elmo_fast.lstm_cuda  # noqa: F401  (registers the ops)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        B, T, C, P = 2, 7, 8, 4
        d = [torch.empty(B, T, 4 * C, dtype=torch.bfloat16), torch.empty(4 * C, P, dtype=torch.bfloat16),
             torch.empty(P, C, dtype=torch.bfloat16), torch.empty(B, dtype=torch.int64),
             torch.empty(B, P), torch.empty(B, C)]
        of, hf, cf, ob, hb, cb = torch.ops.elmo_fast.lstm_bidir(*d, *d, 3.0, 3.0)
        out, h, c = torch.ops.elmo_fast.lstm_layer(*d, 3.0, None, True)
    for o in (of, ob, out):
        assert o.shape == (B, T, P) and o.dtype == torch.bfloat16
    for s in (hf, hb, h):
        assert s.shape == (B, P) and s.dtype == torch.float32
    for s in (cf, cb, c):
        assert s.shape == (B, C) and s.dtype == torch.float32
