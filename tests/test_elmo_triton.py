"""Elmo end to end on the Triton backend (char CNN, highway and LSTM kernels; the interpreter on a
CPU machine) against the same model on the torch reference backend. Tiny model, short sentences."""
import pytest
import torch

from _tiny_model import one_thread, write_tiny_model
from elmo_fast import Elmo, batch_to_ids
from elmo_fast.ops import record_backends, use_backend
from tolerances import assert_close

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = pytest.mark.interpreter

SENTENCES = [["The", "cat", "sat", "."], ["Ünïcode", "words"], ["a"]]


@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_elmo_on_triton_matches_torch(tmp_path, device, stateful):
    opath, wpath = write_tiny_model(tmp_path, seed=5)
    ids = batch_to_ids(SENTENCES).to(device)
    outs = {}
    with one_thread(), torch.no_grad():
        for name in ("torch", "triton"):
            elmo = Elmo(opath, wpath, 2, dropout=0.0, stateful=stateful).to(device)
            with use_backend(name), record_backends() as seen:
                runs = [elmo(ids) for _ in range(2 if stateful else 1)]  # stateful: the carried state too
            outs[name] = runs
            if name == "triton":
                assert seen == {"char_cnn": "triton", "highway": "triton", "bilstm_layer": "torch",
                                "lstm_layer": "triton", "scalar_mix": "torch"}, seen
    for k, (want, got) in enumerate(zip(outs["torch"], outs["triton"])):
        assert torch.equal(got["mask"], want["mask"])
        for i, (g, w) in enumerate(zip(got["elmo_representations"], want["elmo_representations"])):
            assert_close(g.cpu(), w.cpu(), torch.float32, msg=f"batch {k} representation {i}")
