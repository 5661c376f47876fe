"""Weight files: layout and gate order against an independent TF-semantics implementation, option
variants, and a clear error for every kind of bad file."""
import json

import h5py
import numpy as np
import pytest
import torch

from elmo_fast import BiLm, ElmoOptions, WeightsError, batch_to_ids, load_model
from elmo_fast.synthetic import make_options, write_model
from tolerances import TOL

TINY = dict(char_dim=4, filters=[[1, 4], [2, 6], [3, 5]], n_highway=1, dim=12, projection_dim=6)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def tf_bilm_numpy(opts: dict, h5path: str, chars: np.ndarray, n_tokens: int):
    """bilm-tf semantics written straight from the raw file (TF gate order i, j, f, o; forget bias
    +1 at run time; highway g*f(x) + (1-g)*x), float64, one sentence, zero initial state.
    chars: [T, 50] with <S>/</S> already added. Returns the list of layer outputs [T, 2P]."""
    f = h5py.File(h5path, "r")
    cc, ls = opts["char_cnn"], opts["lstm"]
    emb = np.concatenate([np.zeros((1, cc["embedding"]["dim"])), f["char_embed"][...]]).astype(np.float64)
    x = emb[chars]  # [T, 50, E]
    pooled = []
    for i, (w, n) in enumerate(cc["filters"]):
        W, b = f[f"CNN/W_cnn_{i}"][0].astype(np.float64), f[f"CNN/b_cnn_{i}"][...]
        conv = np.stack([np.einsum("twe,wen->tn", x[:, s:s + w], W) for s in range(50 - w + 1)], 1) + b
        pooled.append(conv.max(1))
    h = np.concatenate(pooled, -1)
    h = np.maximum(h, 0) if cc["activation"] == "relu" else np.tanh(h)
    for k in range(cc["n_highway"]):
        g = f[f"CNN_high_{k}"]
        gate = _sig(h @ g["W_carry"][...] + g["b_carry"][...])
        h = gate * np.maximum(h @ g["W_transform"][...] + g["b_transform"][...], 0) + (1 - gate) * h
    tok = h @ f["CNN_proj/W_proj"][...] + f["CNN_proj/b_proj"][...]
    T, C, P = n_tokens, ls["dim"], ls["projection_dim"]
    layers = [np.concatenate([tok, tok], -1)]
    inputs = [tok, tok[::-1]]
    for layer in range(ls["n_layers"]):
        outs = []
        for d in range(2):
            g = f[f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"]
            W0, B, WP = g["W_0"][...], g["B"][...], g["W_P_0"][...]
            hs, c, out = np.zeros(P), np.zeros(C), []
            for t in range(T):
                z = np.concatenate([inputs[d][t], hs]) @ W0 + B
                i, j, fg, o = np.split(z, 4)
                c = _sig(fg + 1.0) * c + _sig(i) * np.tanh(j)
                if ls.get("cell_clip"):
                    c = np.clip(c, -ls["cell_clip"], ls["cell_clip"])
                hs = (_sig(o) * np.tanh(c)) @ WP
                if ls.get("proj_clip"):
                    hs = np.clip(hs, -ls["proj_clip"], ls["proj_clip"])
                out.append(hs)
            out = np.array(out)
            if layer > 0 and ls["use_skip_connections"]:
                out = out + inputs[d]
            outs.append(out)
        inputs = outs
        layers.append(np.concatenate([outs[0], outs[1][::-1]], -1))
    return layers


@pytest.mark.parametrize("variant", [
    pytest.param(dict(), id="relu-skip-2layers"),
    pytest.param(dict(activation="tanh", use_skip_connections=False), id="tanh-noskip"),
    pytest.param(dict(n_layers=3, cell_clip=0.5, proj_clip=0.25), id="3layers-tightclip"),
    pytest.param(dict(n_highway=0, cell_clip=0, proj_clip=0), id="nohighway-noclip"),
])
def test_layout_and_gate_order_against_tf_semantics(tmp_path, variant):
    opts = make_options(**{**TINY, **variant})
    opath, wpath = write_model(str(tmp_path), opts, seed=3, scale=0.5)
    bilm = BiLm(opath, wpath, stateful=False)
    sentence = ["Gate", "order", "ünïcödé", "x" * 60, "."]
    ids = batch_to_ids([sentence])
    with torch.inference_mode():
        ours = [a[0].double().numpy() for a in bilm(ids)["activations"]]
    from elmo_fast.modules import add_sentence_boundaries

    with_bounds, _ = add_sentence_boundaries(ids, (ids > 0).any(-1), bilm._token_embedder.bos_chars,
                                             bilm._token_embedder.eos_chars)
    expected = tf_bilm_numpy(opts, wpath, with_bounds[0].numpy(), len(sentence) + 2)
    assert len(ours) == len(expected) == opts["lstm"]["n_layers"] + 1
    for k, (a, b) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, b, **TOL[torch.float32], err_msg=f"layer {k}")


def test_forget_bias_and_gate_permutation(tmp_path):
    opath, wpath = write_model(str(tmp_path), make_options(**TINY))
    w = load_model(opath, wpath)
    C = TINY["dim"]
    with h5py.File(wpath, "r") as f:
        B = f["RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/B"][...]
        W0 = f["RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"][...]
    lw = w.lstm[1][0]
    np.testing.assert_array_equal(lw.bias[:C].numpy(), B[:C])                  # i
    np.testing.assert_array_equal(lw.bias[C:2 * C].numpy(), B[2 * C:3 * C] + 1)  # f (+1 forget bias)
    np.testing.assert_array_equal(lw.bias[2 * C:3 * C].numpy(), B[C:2 * C])      # g (TF's j)
    np.testing.assert_array_equal(lw.bias[3 * C:].numpy(), B[3 * C:])            # o
    P = TINY["projection_dim"]
    np.testing.assert_array_equal(lw.w_ih.numpy(), W0[:P][:, np.r_[0:C, 2 * C:3 * C, C:2 * C, 3 * C:4 * C]].T)
    np.testing.assert_array_equal(lw.w_hh.numpy(), W0[P:][:, np.r_[0:C, 2 * C:3 * C, C:2 * C, 3 * C:4 * C]].T)
    assert w.char_embed.shape == (262, 4) and torch.all(w.char_embed[0] == 0)


# ---- bad files: every one gets a WeightsError naming the file and the problem

def _model(tmp_path):
    return write_model(str(tmp_path), make_options(**TINY))


def test_missing_dataset(tmp_path):
    opath, wpath = _model(tmp_path)
    with h5py.File(wpath, "a") as f:
        del f["CNN_high_0/W_carry"]
    with pytest.raises(WeightsError, match=r"weights\.hdf5.*missing dataset 'CNN_high_0/W_carry'"):
        load_model(opath, wpath)


def test_shape_disagrees_with_options(tmp_path):
    opath, wpath = _model(tmp_path)
    opts = json.loads(open(opath).read())
    opts["lstm"]["dim"] = 16
    json.dump(opts, open(opath, "w"))
    with pytest.raises(WeightsError, match=r"W_0' has shape \(12, 48\) but the options imply \(12, 64\)"):
        load_model(opath, wpath)


def test_truncated_file(tmp_path):
    opath, wpath = _model(tmp_path)
    data = open(wpath, "rb").read()
    open(wpath, "wb").write(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"weights\.hdf5.*(truncated|cannot be read)"):
        load_model(opath, wpath)


def test_not_hdf5(tmp_path):
    opath, wpath = _model(tmp_path)
    open(wpath, "w").write("this is not an hdf5 file")
    with pytest.raises(WeightsError, match=r"weights\.hdf5: not a readable HDF5 file"):
        load_model(opath, wpath)


def test_missing_weights_file(tmp_path):
    opath, _ = _model(tmp_path)
    with pytest.raises(WeightsError, match="nope.hdf5: weights file not found"):
        load_model(opath, str(tmp_path / "nope.hdf5"))


@pytest.mark.parametrize("mutate, pattern", [
    pytest.param(lambda o: o["lstm"].pop("projection_dim"), r"missing key lstm\.projection_dim",
                 id="missing-key"),
    pytest.param(lambda o: o.pop("char_cnn"), r"missing section 'char_cnn'", id="missing-section"),
    pytest.param(lambda o: o["char_cnn"].update(activation="gelu"),
                 r"char_cnn.activation 'gelu' is not one of", id="activation"),
    pytest.param(lambda o: o["char_cnn"].update(filters=[[1]]), r"char_cnn.filters must be a list of",
                 id="filters"),
])
def test_bad_options(tmp_path, mutate, pattern):
    opath, wpath = _model(tmp_path)
    opts = json.loads(open(opath).read())
    mutate(opts)
    json.dump(opts, open(opath, "w"))
    with pytest.raises(WeightsError, match=r"options\.json: " + pattern):
        ElmoOptions.load(opath)


def test_options_not_json(tmp_path):
    opath, wpath = _model(tmp_path)
    open(opath, "w").write("{not json")
    with pytest.raises(WeightsError, match=r"options\.json: not a valid JSON options file"):
        load_model(opath, wpath)


def test_nan_weights_rejected(tmp_path):
    opath, wpath = _model(tmp_path)
    with h5py.File(wpath, "a") as f:
        f["CNN_proj/b_proj"][0] = np.nan
    with pytest.raises(WeightsError, match=r"'CNN_proj/b_proj' contains NaN"):
        load_model(opath, wpath)
