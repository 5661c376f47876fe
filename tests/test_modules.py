"""Module semantics on a small random model: masking, statefulness, stateless invariance, ScalarMix,
and the Elmo / ElmoEmbedder contracts."""
import numpy as np
import pytest
import torch

from elmo_fast import BiLm, Elmo, ElmoEmbedder, ScalarMix, batch_to_ids
from elmo_fast.synthetic import make_options, write_model
from tolerances import ERR_RATIO, assert_close, err_ratio

SENTENCES = [
    "The quick brown fox jumps .".split(),
    "Hello".split(),
    "A longer sentence with several more tokens than the others here".split(),
    "Ünïcödé wörds and 123 numbers".split(),
    "short one".split(),
]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    return write_model(str(d), make_options(char_dim=4, filters=[[1, 4], [2, 8], [3, 8]], n_highway=1,
                                            dim=24, projection_dim=8), seed=1, scale=0.5)


@pytest.fixture
def bilm(model_files):
    return BiLm(*model_files, stateful=False).eval()


def run(bilm, batch):
    with torch.inference_mode():
        return bilm(batch_to_ids(batch))


def test_output_contract(bilm):
    out = run(bilm, SENTENCES[:2])
    acts, mask = out["activations"], out["mask"]
    T = max(len(s) for s in SENTENCES[:2]) + 2
    assert len(acts) == 3 and all(a.shape == (2, T, 16) for a in acts)
    assert mask.dtype == torch.long and mask.tolist()[1] == [1, 1, 1] + [0] * (T - 3)
    # layer 0 is the token embedding twice, zero at padding
    assert torch.equal(acts[0][..., :8], acts[0][..., 8:])
    for a in acts:
        assert torch.all(a[1, 3:] == 0)


def test_padding_rows_change_no_other_row(bilm):
    alone = run(bilm, [SENTENCES[0]])["activations"]
    padded = run(bilm, [SENTENCES[0], [], SENTENCES[2]])["activations"]
    T = len(SENTENCES[0]) + 2
    for a, b in zip(alone, padded):
        # equal up to GEMM summation order (a different batch size may pick another blocking)
        assert_close(b[0, :T], a[0, :T])
        assert torch.all(b[0, T:] == 0)


def test_stateless_invariant_to_order_and_batching(bilm):
    together = run(bilm, SENTENCES)["activations"]
    reordered = run(bilm, SENTENCES[::-1])["activations"]
    for i, s in enumerate(SENTENCES):
        single = run(bilm, [s])["activations"]
        n = len(s) + 2
        for k in range(3):
            assert_close(together[k][i, :n], single[k][0, :n])
            assert_close(reordered[k][len(SENTENCES) - 1 - i, :n], single[k][0, :n])


def test_stateful_rows_continue_from_their_own_state(model_files):
    bilm = BiLm(*model_files, stateful=True).eval()
    first, second = SENTENCES[:2], SENTENCES[2:4]
    run(bilm, first)
    carried = run(bilm, second)["activations"][2]
    # row b of the second batch continues row b of the first: running row b alone through the same
    # two batches gives the same result (states are per row)
    fresh = BiLm(*model_files, stateful=False).eval()
    for b in range(2):
        alone = BiLm(*model_files, stateful=True).eval()
        run(alone, [first[b]])
        row = run(alone, [second[b]])["activations"][2]
        n = len(second[b]) + 2
        assert_close(carried[b, :n], row[0, :n], msg=f"row {b}")
        # and it differs from a fresh start
        assert (run(fresh, [second[b]])["activations"][2][0, :n] - row[0, :n]).abs().max() > 1e-4


def test_stateful_batch_growth_shrink_and_reset(model_files):
    bilm = BiLm(*model_files, stateful=True).eval()
    run(bilm, SENTENCES[:2])
    grown = run(bilm, SENTENCES[:4])["activations"][2]  # grows: rows 2, 3 start from zeros
    assert bilm._states[0].shape[1] == 4
    # the new rows give what a zero state gives (the stateless model starts every row from zeros) ...
    fresh = BiLm(*model_files, stateful=False).eval()
    for b in (2, 3):
        n = len(SENTENCES[b]) + 2
        assert_close(grown[b, :n], run(fresh, [SENTENCES[b]])["activations"][2][0, :n], msg=f"new row {b}")
    # ... and the old rows continue their own state
    twin = BiLm(*model_files, stateful=True).eval()
    run(twin, SENTENCES[:2])
    again = run(twin, SENTENCES[:2])["activations"][2]
    for b in (0, 1):
        n = len(SENTENCES[b]) + 2
        assert_close(grown[b, :n], again[b, :n], msg=f"old row {b}")
    h4 = bilm._states[0].clone()
    run(bilm, SENTENCES[:1])  # shrinks: rows 1..3 keep their state
    assert bilm._states[0].shape[1] == 4
    assert torch.equal(bilm._states[0][:, 1:], h4[:, 1:])
    assert not torch.equal(bilm._states[0][:, 0], h4[:, 0])
    bilm.reset_states(torch.tensor([True, False, False, True]))
    assert torch.all(bilm._states[0][:, 0] == 0) and torch.all(bilm._states[0][:, 3] == 0)
    assert torch.equal(bilm._states[0][:, 1:3], h4[:, 1:3])
    with pytest.raises(ValueError, match="mask has 2 rows but the state has 4"):
        bilm.reset_states(torch.tensor([True, False]))
    bilm.reset_states()
    assert bilm._states is None


def test_scalar_mix_matches_formula():
    layers = [torch.randn(2, 5, 6) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mix = ScalarMix(3, initial_scalar_parameters=[0.1, -0.5, 2.0], trainable=False)
    w = torch.softmax(torch.tensor([0.1, -0.5, 2.0]), 0)
    torch.testing.assert_close(mix(layers, mask), sum(wk * lk for wk, lk in zip(w, layers)))
    mixn = ScalarMix(3, do_layer_norm=True)
    m = mask.unsqueeze(-1).float()
    n = m.sum() * 6
    normed = []
    for t in layers:
        mean = (t * m).sum() / n
        var = (((t * m) - mean) * m).pow(2).sum() / n
        normed.append((t - mean) / torch.sqrt(var + 1e-12))
    torch.testing.assert_close(mixn(layers, mask), sum(normed) / 3)
    with pytest.raises(ValueError, match="2 tensors were passed"):
        mix(layers[:2])
    with pytest.raises(ValueError, match="one per layer"):
        ScalarMix(3, initial_scalar_parameters=[1.0])


def test_elmo_contract(model_files):
    elmo = Elmo(*model_files, num_output_representations=2, dropout=0.0, stateful=False).eval()
    ids = batch_to_ids(SENTENCES[:3])
    out = elmo(ids)
    reps, mask = out["elmo_representations"], out["mask"]
    assert len(reps) == 2 and reps[0].shape == (3, ids.shape[1], 16) and mask.dtype == torch.long
    assert mask.sum(1).tolist() == [len(s) for s in SENTENCES[:3]]
    # default scalar mix = plain average of the three layers, gamma 1
    with torch.inference_mode():
        bl = elmo._elmo_lstm(ids)
    from elmo_fast.modules import remove_sentence_boundaries

    avg, _ = remove_sentence_boundaries(sum(bl["activations"]) / 3, bl["mask"])
    torch.testing.assert_close(reps[0].detach(), avg, rtol=1e-5, atol=1e-6)
    # 4-D input: [2, 3, T, 50] -> [2, 3, T, 16]
    out4 = elmo(torch.stack([ids, ids]))
    assert out4["elmo_representations"][0].shape == (2, 3, ids.shape[1], 16)
    assert out4["mask"].shape == (2, 3, ids.shape[1])
    torch.testing.assert_close(out4["elmo_representations"][0][1], reps[0], rtol=1e-6, atol=1e-6)
    # keep_sentence_boundaries
    keep = Elmo(*model_files, num_output_representations=1, dropout=0.0, keep_sentence_boundaries=True,
                stateful=False)
    assert keep(ids)["elmo_representations"][0].shape == (3, ids.shape[1] + 2, 16)
    with pytest.raises(ValueError, match="Don't provide options_file or weight_file with module"):
        Elmo(*model_files, num_output_representations=1, module=elmo._elmo_lstm)


def test_elmo_scalar_mix_parameters_and_grad(model_files):
    fixed = Elmo(*model_files, 1, scalar_mix_parameters=[0.0, 0.0, 1.0], stateful=False)
    assert not any(p.requires_grad for p in fixed.scalar_mix_0.parameters())
    trainable = Elmo(*model_files, 1, requires_grad=True, dropout=0.0, stateful=False)
    out = trainable(batch_to_ids(SENTENCES[:2]))["elmo_representations"][0]
    out.sum().backward()
    assert trainable._elmo_lstm.lstm[0][0].w_hh.grad is not None
    assert trainable._elmo_lstm._token_embedder.char_embed.grad is not None
    assert trainable.scalar_mix_0.gamma.grad is not None


def test_dropout_only_in_training(model_files):
    elmo = Elmo(*model_files, 1, dropout=0.5, stateful=False)
    ids = batch_to_ids(SENTENCES[:2])
    elmo.eval()
    a, b = elmo(ids)["elmo_representations"][0], elmo(ids)["elmo_representations"][0]
    assert torch.equal(a, b)
    elmo.train()
    c = elmo(ids)["elmo_representations"][0]
    assert (c == 0).sum() > (a == 0).sum()


def test_vocab_cache_word_inputs_equal_characters(model_files):
    vocab = ["@@PADDING@@"] + sorted({w for s in SENTENCES for w in s})
    index = {w: i for i, w in enumerate(vocab)}
    elmo = Elmo(*model_files, 1, dropout=0.0, vocab_to_cache=vocab, stateful=False).eval()
    ids = batch_to_ids(SENTENCES)
    word_ids = torch.zeros(ids.shape[:2], dtype=torch.long)
    for i, s in enumerate(SENTENCES):
        word_ids[i, : len(s)] = torch.tensor([index[w] for w in s])
    with torch.inference_mode():
        by_chars = elmo(ids)
        by_words = elmo(ids, word_ids)
    torch.testing.assert_close(by_words["elmo_representations"][0], by_chars["elmo_representations"][0],
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(by_words["mask"], by_chars["mask"])


def test_embedder_api(model_files):
    emb = ElmoEmbedder(*model_files, stateful=False)
    one = emb.embed_sentence(SENTENCES[0])
    assert isinstance(one, np.ndarray) and one.shape == (3, len(SENTENCES[0]), 16) and one.dtype == np.float32
    batch = emb.embed_batch(SENTENCES)
    assert [b.shape[1] for b in batch] == [len(s) for s in SENTENCES]
    np.testing.assert_allclose(batch[0], one, rtol=1e-5, atol=1e-6)
    streamed = list(emb.embed_sentences(iter(SENTENCES), batch_size=2))
    for a, b in zip(streamed, batch):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert emb.embed_batch([[]])[0].shape == (3, 0, 16)
    acts, mask = emb.batch_to_embeddings(SENTENCES[:2])
    assert acts.shape == (2, 3, len(SENTENCES[0]), 16) and mask.shape == (2, len(SENTENCES[0]))


def test_embedder_rejects_missing_gpu(model_files):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ElmoEmbedder(*model_files, cuda_device=0)


def test_elmo_built_under_inference_mode(model_files):
    """allennlp users often build and run the model inside torch.inference_mode / no_grad."""
    ids = batch_to_ids(SENTENCES[:3])
    expected = Elmo(*model_files, 1, dropout=0.0, stateful=False).eval()(ids)["elmo_representations"][0]
    with torch.inference_mode():
        elmo = Elmo(*model_files, 1, dropout=0.0, stateful=False).eval()
        got = elmo(ids)["elmo_representations"][0]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)


def test_elmo_multi_dim_inputs_keep_sentence_boundaries(model_files):
    """[..., T, 50] inputs (and [..., T] word inputs) with keep_sentence_boundaries come back as
    [..., T + 2, D] and mask [..., T + 2]."""
    vocab = ["@@PADDING@@"] + sorted({w for s in SENTENCES for w in s})
    elmo = Elmo(*model_files, 1, dropout=0.0, keep_sentence_boundaries=True, vocab_to_cache=vocab,
                stateful=False).eval()
    ids = batch_to_ids(SENTENCES[:3])
    T = ids.shape[1]
    flat = elmo(ids)
    out4 = elmo(torch.stack([ids, ids]))
    assert out4["elmo_representations"][0].shape == (2, 3, T + 2, 16)
    assert out4["mask"].shape == (2, 3, T + 2)
    torch.testing.assert_close(out4["elmo_representations"][0][1], flat["elmo_representations"][0])
    assert torch.equal(out4["mask"][0], flat["mask"])
    index = {w: i for i, w in enumerate(vocab)}
    words = torch.zeros(ids.shape[:2], dtype=torch.long)
    for i, s in enumerate(SENTENCES[:3]):
        words[i, : len(s)] = torch.tensor([index[w] for w in s])
    outw = elmo(torch.stack([ids, ids]), torch.stack([words, words]))
    assert outw["elmo_representations"][0].shape == (2, 3, T + 2, 16)
    assert outw["mask"].shape == (2, 3, T + 2)


def test_elmo_accepts_int32_character_ids(model_files):
    """allennlp's Elmo takes any integer ids; int32 must give the int64 result."""
    elmo = Elmo(*model_files, 1, dropout=0.0, stateful=False).eval()
    ids = batch_to_ids(SENTENCES[:3])
    a, b = elmo(ids), elmo(ids.int())
    torch.testing.assert_close(b["elmo_representations"][0], a["elmo_representations"][0])
    assert torch.equal(a["mask"], b["mask"])


@pytest.mark.gpu
def test_stateful_state_follows_module_to_gpu(model_files):
    """A stateful model run on the CPU and then moved to the GPU carries its state along, with the
    same numbers as a model that ran on the GPU throughout."""
    cpu_then_gpu = BiLm(*model_files, stateful=True).eval()
    gpu = BiLm(*model_files, stateful=True).eval().cuda()
    run(cpu_then_gpu, SENTENCES[:3])
    run(gpu, SENTENCES[:3])
    cpu_then_gpu.cuda()
    with torch.inference_mode():
        a = cpu_then_gpu(batch_to_ids(SENTENCES[1:3]).cuda())["activations"][2]
        b = gpu(batch_to_ids(SENTENCES[1:3]).cuda())["activations"][2]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert cpu_then_gpu._states[0].device.type == "cuda"


def test_empty_batch_and_non_contiguous_4d_input(model_files):
    emb = ElmoEmbedder(*model_files, stateful=False)
    assert emb.embed_batch([]) == []
    elmo = Elmo(*model_files, 1, dropout=0.0, stateful=False).eval()
    ids = batch_to_ids(SENTENCES[:2])
    four_d = torch.stack([ids, ids], 1).transpose(0, 1)  # [2, 2, T, 50], not contiguous
    assert not four_d.is_contiguous()
    with torch.inference_mode():
        out = elmo(four_d)["elmo_representations"][0]
        ref = elmo(ids)["elmo_representations"][0]
    assert out.shape == (2, 2, ids.shape[1], 16)
    assert_close(out[0], ref)


def test_bf16_model_carries_an_fp32_state(model_files):
    """A bf16 model keeps an fp32 state, and its outputs (a first batch, then one continuing the
    carried state and growing it) stay within the bf16 relative error of the fp32 model's."""
    bilm = BiLm(*model_files, stateful=True).eval().to(torch.bfloat16)
    ref = BiLm(*model_files, stateful=True).eval()
    for k, batch in enumerate((SENTENCES[:2], SENTENCES[:3])):
        got = run(bilm, batch)
        out, want, pad = got["activations"], run(ref, batch)["activations"], got["mask"] == 0
        assert all(a.dtype == torch.bfloat16 for a in out)
        assert bilm._states[0].dtype == torch.float32 and bilm._states[1].dtype == torch.float32
        for layer, (a, w) in enumerate(zip(out, want)):
            assert not torch.isnan(a).any() and torch.all(a[pad] == 0)
            assert err_ratio(a, w) <= ERR_RATIO[torch.bfloat16], f"batch {k} layer {layer}: {err_ratio(a, w)}"
    assert bilm._states[0].shape[1] == 3


def test_warm_start_is_deterministic_and_independent_of_batching(model_files):
    warm = BiLm(*model_files, stateful=False, warm_start=True).eval()
    cold = BiLm(*model_files, stateful=False).eval()
    together = run(warm, SENTENCES)["activations"][2]
    for i, s in enumerate(SENTENCES[:3]):
        n = len(s) + 2
        alone = run(warm, [s])["activations"][2]
        assert_close(together[i, :n], alone[0, :n])
        assert (run(cold, [s])["activations"][2][0, :n] - alone[0, :n]).abs().max() > 1e-4
    # a second instance computes the same warm state
    again = BiLm(*model_files, stateful=False, warm_start=True).eval()
    assert torch.equal(run(again, SENTENCES)["activations"][2], together)


def test_warm_start_is_where_stateful_rows_begin(model_files):
    warm_stateless = BiLm(*model_files, stateful=False, warm_start=True).eval()
    warm_stateful = BiLm(*model_files, stateful=True, warm_start=True).eval()
    first = run(warm_stateful, SENTENCES[:2])["activations"][2]
    assert_close(first, run(warm_stateless, SENTENCES[:2])["activations"][2])
    # a row seen for the first time in a later, larger batch also starts from the warm state
    grown = run(warm_stateful, SENTENCES[:4])["activations"][2]
    n = len(SENTENCES[3]) + 2
    assert_close(grown[3, :n], run(warm_stateless, [SENTENCES[3]])["activations"][2][0, :n])


def test_warm_state_equals_reading_the_warmup_text(model_files):
    from elmo_fast.modules import WARMUP_TOKENS

    warm = BiLm(*model_files, stateful=False, warm_start=True).eval()
    reader = BiLm(*model_files, stateful=True).eval()
    run(reader, [WARMUP_TOKENS])  # from zeros, one row
    after = run(reader, [SENTENCES[0]])["activations"][2]
    assert_close(run(warm, [SENTENCES[0]])["activations"][2], after)
