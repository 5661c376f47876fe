"""The bilstm_layer op: its reference schedule against a plain composition of the LSTM reference,
the time chunking (memory bound) against the unchunked computation, and the char encoder's token
chunking. CPU only: every backend here is the reference (the CUDA fused path is tested on a GPU)."""
import pytest
import torch

from elmo_fast import ops
from elmo_fast.reference import bilstm as bilstm_module
from elmo_fast.reference.bilstm import bilstm_layer_ref, default_time_chunk
from elmo_fast.reference.lstm import lstm_layer_inputs_ref, lstm_layer_ref
from tolerances import assert_close

CHUNK_ATOL = 1e-6  # issue 9: chunked == unchunked within 1e-6 in fp32


def make_layer(B, T, D, C, P, lengths, dtype=torch.float32):
    """x pair, per-direction weights, lengths, h0 [B, 2P], c0 [B, 2C]; padding positions of x zero."""
    lens = torch.as_tensor(lengths, dtype=torch.int64)
    real = torch.arange(T).view(1, T) < lens.view(B, 1)
    x = [torch.randn(B, T, D, dtype=dtype) * real.unsqueeze(-1) for _ in range(2)]
    weights = [(torch.randn(4 * C, D, dtype=dtype) / D ** 0.5, 0.1 * torch.randn(4 * C, dtype=dtype),
                torch.randn(4 * C, P, dtype=dtype) / P ** 0.5, 2 * torch.randn(P, C, dtype=dtype) / C ** 0.5)
               for _ in range(2)]
    return x, weights, lens, torch.randn(B, 2 * P, dtype=dtype), torch.randn(B, 2 * C, dtype=dtype)


def composed(x, weights, lens, h0, c0, clip, residual):
    """The definition: full [B, T, 4C] projections, one lstm_layer_ref per direction."""
    P, C = h0.shape[1] // 2, c0.shape[1] // 2
    B, T, _ = x[0].shape
    real = (torch.arange(T).view(1, T) < lens.view(B, 1)).unsqueeze(-1)
    outs, hs, cs = [], [], []
    for d in range(2):
        w_ih, bias, w_hh, w_p = weights[d]
        xproj = (x[d] @ w_ih.t() + bias) * real
        out, h, c = lstm_layer_ref(xproj, w_hh, w_p, lens, h0[:, d * P:(d + 1) * P], c0[:, d * C:(d + 1) * C],
                                   clip, clip, reverse=d == 1)
        outs.append(out + x[d] if residual else out)
        hs.append(h)
        cs.append(c)
    return outs, torch.cat(hs, -1), torch.cat(cs, -1)


@pytest.mark.parametrize("B,T,D,C,P,lengths", [
    pytest.param(1, 1, 4, 8, 4, [1], id="B1-T1"),
    pytest.param(3, 7, 6, 12, 6, [7, 1, 0], id="B3-T7-ragged-empty"),
    pytest.param(4, 13, 8, 20, 8, [13, 5, 13, 2], id="B4-T13-C20"),
])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_reference_equals_composition(B, T, D, C, P, lengths, residual):
    D = P if residual else D  # the residual adds the input: same width
    x, weights, lens, h0, c0 = make_layer(B, T, D, C, P, lengths)
    (of, ob), h, c = bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0, residual)
    (rf, rb), rh, rc = composed(x, weights, lens, h0, c0, 3.0, residual)
    for name, got, want in (("out_fwd", of, rf), ("out_bwd", ob, rb), ("h_T", h, rh), ("c_T", c, rc)):
        assert_close(got, want, msg=name)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_time_chunks_equal_unchunked_long_sentences(chunk):
    """T = 1000 with ragged lengths: the state carried across chunks (both directions) is exact."""
    B, T, D, C, P = 3, 1000, 6, 12, 6
    x, weights, lens, h0, c0 = make_layer(B, T, D, C, P, [1000, 997, 413])
    with torch.no_grad():
        full = bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0, time_chunk=T)
        part = bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0, time_chunk=chunk)
    for name, got, want in zip(("out_fwd", "out_bwd"), part[0], full[0]):
        assert not torch.isnan(got).any(), name
        torch.testing.assert_close(got, want, rtol=0, atol=CHUNK_ATOL, msg=name)
    torch.testing.assert_close(part[1], full[1], rtol=0, atol=CHUNK_ATOL)
    torch.testing.assert_close(part[2], full[2], rtol=0, atol=CHUNK_ATOL)


def test_default_chunk_follows_the_workspace_budget(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_WORKSPACE_MB", "1")
    # 4 (two directions + the packed copy) * B * 4C * 4 bytes per step
    assert default_time_chunk(2, 16, 4) == (1 << 20) // (4 * 2 * 16 * 4)
    monkeypatch.setenv("ELMO_FAST_WORKSPACE_MB", "0.0001")
    assert default_time_chunk(64, 16384, 4) == 1
    monkeypatch.setenv("ELMO_FAST_WORKSPACE_MB", "lots")
    with pytest.raises(ValueError, match="ELMO_FAST_WORKSPACE_MB"):
        default_time_chunk(1, 16, 4)


def test_op_chunks_by_budget_and_matches(monkeypatch):
    """Through the op (reference backend): a tiny budget forces many chunks; same result."""
    B, T, D, C, P = 2, 40, 4, 8, 4
    x, weights, lens, h0, c0 = make_layer(B, T, D, C, P, [40, 17])
    with torch.no_grad():
        want = ops.bilstm_layer(x, weights, lens, h0, c0, 3.0, 3.0, time_chunk=T)
        monkeypatch.setenv("ELMO_FAST_WORKSPACE_MB", str(4 * B * 4 * C * 4 * 3 / (1 << 20)))  # 3 steps
        calls = []

        def counting(real):
            def count(x, *a):
                calls.append(x.shape[1])
                return real(x, *a)
            return count

        # each chunk and direction is projected once: by `project`, or by the reference recurrence
        # that projects its own input (`lstm_layer_inputs_ref`, the no-grad reference path)
        for name in ("project", "lstm_layer_inputs_ref"):
            monkeypatch.setattr(bilstm_module, name, counting(getattr(bilstm_module, name)))
        with ops.use_backend("torch"):
            got = ops.bilstm_layer(x, weights, lens, h0, c0, 3.0, 3.0)
    assert calls == [3] * 26 + [1, 1], calls  # 14 chunks per direction, the last one step
    for g, w in zip(got[0], want[0]):
        torch.testing.assert_close(g, w, rtol=0, atol=CHUNK_ATOL)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=CHUNK_ATOL)


def test_rejects_bad_chunk():
    x, weights, lens, h0, c0 = make_layer(1, 3, 4, 8, 4, [3])
    with pytest.raises(ValueError, match="time_chunk"):
        bilstm_layer_ref(x, weights, lens, h0, c0, time_chunk=-2)


def test_gradients_flow_through_chunks():
    x, weights, lens, h0, c0 = make_layer(2, 9, 4, 8, 4, [9, 4])
    w = [tuple(t.clone().requires_grad_() for t in d) for d in weights]
    (of, ob), h, c = bilstm_layer_ref(x, w, lens, h0, c0, 3.0, 3.0, time_chunk=2)
    (of.sum() + ob.sum()).backward()
    g_chunked = [t.grad.clone() for d in w for t in d]
    w2 = [tuple(t.clone().requires_grad_() for t in d) for d in weights]
    (rf, rb), _, _ = bilstm_layer_ref(x, w2, lens, h0, c0, 3.0, 3.0, time_chunk=9)
    (rf.sum() + rb.sum()).backward()
    for got, want in zip(g_chunked, [t.grad for d in w2 for t in d]):
        assert_close(got, want, msg="grad")


# ---------------------------------------------------------------------------------------------
# the char encoder's token chunks
# ---------------------------------------------------------------------------------------------
def test_char_encoder_token_chunks_equal(tmp_path):
    from _tiny_model import write_tiny_model
    from elmo_fast import BiLm, batch_to_ids

    bilm = BiLm(*write_tiny_model(tmp_path, seed=3), stateful=False)
    enc = bilm._token_embedder
    words = [["w%d" % (i * 7919 % 2003) for i in range(k, k + 40)] for k in range(0, 400, 40)]
    ids = batch_to_ids(words).view(-1, 50)
    ids = ids[(ids > 0).any(-1)]
    with torch.no_grad():
        whole = enc.encode(ids)
        for n in (1, 7, 64):
            enc.token_chunk = n
            torch.testing.assert_close(enc.encode(ids), whole, rtol=0, atol=CHUNK_ATOL, msg=f"chunk {n}")
    enc.token_chunk = None
    assert enc.token_bytes() > 0


def test_bilm_time_chunk_equals_unchunked(tmp_path):
    from _tiny_model import write_tiny_model
    from elmo_fast import BiLm, batch_to_ids

    bilm = BiLm(*write_tiny_model(tmp_path, seed=4), stateful=False)
    ids = batch_to_ids([["tok%d" % (i % 37) for i in range(150)], ["a", "b", "c"]])
    with torch.no_grad():
        want = bilm(ids)["activations"]
        bilm.time_chunk = 7
        got = bilm(ids)["activations"]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=CHUNK_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk", [None, 7], ids=["whole", "chunk7"])
def test_cuda_fused_directions_match_reference(chunk):
    """The CUDA backend (both directions of each chunk in one persistent launch) against the
    reference schedule, fp32, ragged lengths, residual on."""
    B, T, C, P = 3, 40, 64, 16
    x, weights, lens, h0, c0 = make_layer(B, T, P, C, P, [40, 1, 23])
    cuda = [[t.cuda() for t in x], [tuple(t.cuda() for t in w) for w in weights], lens.cuda(), h0.cuda(),
            c0.cuda()]
    with torch.no_grad():
        want = bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0, True, chunk)
        with ops.record_backends() as seen:
            got = ops.bilstm_layer(*cuda, 3.0, 3.0, True, chunk, backend="cuda")
    assert seen == {"bilstm_layer": "cuda"}
    for name, g, w in (("out_fwd", got[0][0], want[0][0]), ("out_bwd", got[0][1], want[0][1]),
                       ("h_T", got[1], want[1]), ("c_T", got[2], want[2])):
        assert_close(g.cpu(), w, msg=name)


@pytest.mark.parametrize("B,T,D,C,P,lengths", [
    pytest.param(1, 1, 4, 8, 4, [1], id="B1-T1"),
    pytest.param(3, 7, 6, 12, 6, [7, 1, 0], id="B3-T7-ragged-empty"),
    pytest.param(5, 13, 9, 20, 7, [13, 5, 13, 2, 9], id="B5-T13-D9-P7"),
])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "bwd"])
def test_inputs_ref_equals_projection_then_recurrence(B, T, D, C, P, lengths, reverse):
    """lstm_layer_inputs_ref (the no-grad reference: projections in packed order) against its
    definition: the full [B, T, 4C] projections, then lstm_layer_ref. x is a non-contiguous view with
    NaN at every padding position, so a read of padding would show; padding outputs must be zeros."""
    lens = torch.as_tensor(lengths)
    real = (torch.arange(T).view(1, T) < lens.view(B, 1)).unsqueeze(-1)
    x = torch.randn(B, T, 2 * D)[:, :, ::2]
    x = torch.where(real, x, torch.full_like(x, float("nan")))
    w_ih, bias = torch.randn(4 * C, D) / D ** 0.5, 0.1 * torch.randn(4 * C)
    w_hh, w_p = torch.randn(4 * C, P) / P ** 0.5, 2 * torch.randn(P, C) / C ** 0.5
    h0, c0 = torch.randn(B, P), torch.randn(B, C)
    xproj = torch.where(real, torch.nan_to_num(x) @ w_ih.t() + bias, torch.zeros(()))
    with torch.no_grad():
        got = lstm_layer_inputs_ref(x, w_ih, bias, w_hh, w_p, lens, h0, c0, 3.0, 3.0, reverse)
        want = lstm_layer_ref(xproj, w_hh, w_p, lens, h0, c0, 3.0, 3.0, reverse)
    for name, g, w in zip(("out", "h_T", "c_T"), got, want):
        assert_close(g, w, msg=name)
    assert torch.equal(got[0] * ~real, torch.zeros_like(got[0])), "padding outputs are not zeros"


def test_op_takes_the_inputs_path_only_for_the_reference_without_grad(monkeypatch):
    """Through the op on the CPU: the reference recurrence projects its own inputs (no [B, T, 4C]
    projections), reported as lstm_layer -> torch; with grad the composition through `project` runs."""
    x, weights, lens, h0, c0 = make_layer(3, 9, 4, 8, 4, [9, 4, 1])
    calls = {"project": 0, "lstm_layer_inputs_ref": 0}

    def counting(name):
        real = getattr(bilstm_module, name)

        def count(*a):
            calls[name] += 1
            return real(*a)
        return count

    for name in calls:
        monkeypatch.setattr(bilstm_module, name, counting(name))
    with torch.no_grad(), ops.record_backends() as seen:
        fast = ops.bilstm_layer(x, weights, lens, h0, c0, 3.0, 3.0)
    assert calls == {"project": 0, "lstm_layer_inputs_ref": 2} and seen["lstm_layer"] == "torch"
    w_grad = [[w.clone().requires_grad_() for w in ws] for ws in weights]
    slow = ops.bilstm_layer(x, w_grad, lens, h0, c0, 3.0, 3.0)
    assert calls == {"project": 2, "lstm_layer_inputs_ref": 2}
    for g, w in zip(fast[0], slow[0]):
        assert_close(g, w.detach())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_concurrent_directions_equal_in_turn(monkeypatch, mode):
    """At 2 torch threads the two directions run concurrently (one thread each): same values as in
    turn, torch's thread count restored, and the worker ran in the caller's grad / inference mode."""
    x, weights, lens, h0, c0 = make_layer(5, 13, 9, 20, 7, [13, 5, 13, 2, 9])
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    real = bilstm_module.lstm_layer_inputs_ref

    def spy(*a):
        seen.append((a[-1], torch.get_num_threads(), torch.is_grad_enabled(),
                     torch.is_inference_mode_enabled()))
        return real(*a)

    monkeypatch.setattr(bilstm_module, "lstm_layer_inputs_ref", spy)
    try:
        with ctx():
            both = bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0)
            assert torch.get_num_threads() == 2
            monkeypatch.setattr(bilstm_module, "CONCURRENT_DIRECTIONS", False)
            turn = bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0)
    finally:
        torch.set_num_threads(n)
    inference = mode == "inference_mode"
    assert sorted(seen[:2]) == [(False, 1, False, inference), (True, 1, False, inference)]
    assert seen[2:] == [(False, 2, False, inference), (True, 2, False, inference)]
    for g, w in zip((*both[0], both[1], both[2]), (*turn[0], turn[1], turn[2])):
        assert_close(g, w)


def test_concurrent_direction_error_reaches_the_caller(monkeypatch):
    x, weights, lens, h0, c0 = make_layer(2, 5, 4, 8, 4, [5, 3])
    real = bilstm_module.lstm_layer_inputs_ref

    def failing(*a):
        if a[-1]:
            raise RuntimeError("backward direction failed")
        return real(*a)

    monkeypatch.setattr(bilstm_module, "lstm_layer_inputs_ref", failing)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="backward direction failed"):
            bilstm_layer_ref(x, weights, lens, h0, c0, 3.0, 3.0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
