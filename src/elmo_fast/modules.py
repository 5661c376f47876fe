"""allennlp-compatible nn.Modules: CharEncoder, BiLm, ScalarMix, Elmo.

The modules hold parameters and state and call the ops in `elmo_fast.ops`, which pick the fastest
backend for each call (cuda / triton / torch). With the torch backend this is the reference path.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import _config, ops
from ._support import chunk_len
from .chars import BOS_CHARS, EOS_CHARS, batch_to_ids, tokens_to_char_ids
from .dedup import unique_tokens
from .state import CarriedState
from .weights import ElmoOptions, ElmoWeights, load_model

logger = logging.getLogger(__name__)

# Read once from a zero state by BiLm(warm_start=True); the state it ends in is where every
# sentence then starts. Plain newswire-like text, fixed forever: changing it changes outputs.
WARMUP_TOKENS: List[str] = (
    "The committee met on Tuesday to discuss next year 's budget . "
    "Officials said the results were better than expected , but that more work was needed . "
    "In 2009 , the company opened new offices in three cities and hired 200 people ."
).split()


# One lock per stateful BiLm, held for a whole forward: two threads on one stateful module would
# otherwise both read the same carried state and one update would be lost. Kept beside the module
# (not in it) so the module still pickles and deep-copies.
_STATE_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_STATE_LOCKS_GUARD = threading.Lock()


def state_lock(module: nn.Module) -> threading.Lock:
    """The lock that serialises the calls that read and update `module`'s carried state."""
    with _STATE_LOCKS_GUARD:
        return _STATE_LOCKS.setdefault(module, threading.Lock())


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.clone(), requires_grad=requires_grad)


def add_sentence_boundaries(
    x: torch.Tensor, mask: torch.Tensor, bos: torch.Tensor, eos: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Wraps each row in bos ... eos (allennlp's add_sentence_boundary_token_ids).

    x: [B, T, *] with padding after each row's mask.sum() items, mask: [B, T] bool,
    bos/eos: [*] -> ([B, T + 2, *], mask [B, T + 2] bool). Padding positions are zeros.
    """
    B, T = mask.shape
    lengths = mask.sum(1)
    out = x.new_zeros((B, T + 2) + tuple(x.shape[2:]))
    out[:, 1 : T + 1] = torch.where(mask.view(B, T, *([1] * (x.dim() - 2))), x, torch.zeros_like(x))
    out[:, 0] = bos
    out[torch.arange(B, device=x.device), lengths + 1] = eos.to(out.dtype)  # int32 ids
    new_mask = torch.arange(T + 2, device=mask.device).view(1, -1) < (lengths + 2).view(-1, 1)
    return out, new_mask


def remove_sentence_boundaries(x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drops the first and last real position of each row (allennlp's remove_sentence_boundaries).

    x: [B, T, D], mask: [B, T] -> ([B, T - 2, D] zeros beyond each row, mask [B, T - 2] long)
    """
    lengths = mask.long().sum(1)
    T = x.size(1)
    new_mask = torch.arange(max(T - 2, 0), device=x.device).view(1, -1) < (lengths - 2).view(-1, 1)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.where(new_mask.unsqueeze(-1), x[:, 1 : T - 1], zero)
    return out, new_mask.long()


def _check_char_ids(ids: torch.Tensor, n: int) -> None:
    """ValueError naming the character ids outside [0, n) (the embedding's rows) instead of an
    index error deep inside the char CNN."""
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()  # one device sync
    if lo >= 0 and hi < n:
        return
    bad = torch.unique(ids[(ids < 0) | (ids >= n)]).tolist()
    shown = ", ".join(map(str, bad[:10])) + (f", ... ({len(bad)} distinct)" if len(bad) > 10 else "")
    raise ValueError(f"character ids out of range: {shown}; valid ids are 0 (padding) to {n - 1} "
                     "(elmo_fast.batch_to_ids makes them)")


class CharEncoder(nn.Module):
    """Characters -> token vectors: char embedding, convolutions, max-pool, activation, highway,
    projection (allennlp's _ElmoCharacterEncoder). Distinct tokens are encoded once, `token_chunk`
    at a time (None: as many as fit the workspace budget, see `token_bytes`)."""

    token_chunk: Optional[int] = None

    def __init__(self, weights: ElmoWeights, requires_grad: bool = False):
        super().__init__()
        self.options: ElmoOptions = weights.options
        self.char_embed = _param(weights.char_embed, requires_grad)
        self.conv_w = nn.ParameterList([_param(w, requires_grad) for w in weights.conv_w])
        self.conv_b = nn.ParameterList([_param(b, requires_grad) for b in weights.conv_b])
        self.highway = nn.ModuleList()
        for layer in weights.highway:
            self.highway.append(nn.ParameterList([_param(t, requires_grad) for t in layer]))
        self.w_proj = _param(weights.w_proj, requires_grad)
        self.b_proj = _param(weights.b_proj, requires_grad)
        self.register_buffer("bos_chars", torch.tensor(BOS_CHARS, dtype=torch.long).view(-1),
                             persistent=False)
        self.register_buffer("eos_chars", torch.tensor(EOS_CHARS, dtype=torch.long).view(-1),
                             persistent=False)

    def get_output_dim(self) -> int:
        return self.options.proj_dim

    def token_bytes(self) -> int:
        """Scratch bytes per token of the char CNN + highway on the reference path: the gathered
        embeddings [E, L] (twice), the widest filter bank's conv output [n, L - w + 1], the pooled
        [F] and the highway's [F] intermediates (4). The Triton path needs less."""
        o = self.options
        L, E = o.max_chars, self.char_embed.shape[1]
        F = sum(int(w.shape[2]) for w in self.conv_w)
        conv = max(int(w.shape[2]) * (L - int(w.shape[0]) + 1) for w in self.conv_w)
        return (2 * E * L + conv + 5 * F) * self.char_embed.element_size()

    def encode(self, chars: torch.Tensor) -> torch.Tensor:
        """chars [N, 50] -> [N, P]; each distinct row goes through the CNN once, in chunks of tokens
        so the intermediates stay within the workspace budget however long the batch."""
        if chars.numel() == 0:
            return self.w_proj.new_zeros(chars.shape[0], self.options.proj_dim)
        uniq, inverse = unique_tokens(chars)
        n = self.token_chunk or chunk_len(self.token_bytes())
        layers = [tuple(layer) for layer in self.highway]
        pieces = []
        for i in range(0, uniq.shape[0], n):
            x = ops.char_cnn(uniq[i:i + n], self.char_embed, list(self.conv_w), list(self.conv_b),
                             self.options.activation)
            pieces.append(ops.highway(x, layers, self.w_proj, self.b_proj))
        y = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return y[inverse]

    def forward(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """inputs [B, T, 50] character ids -> {'mask': [B, T + 2] long, 'token_embedding': [B, T + 2, P]},
        <S> and </S> added around every row."""
        if not torch.compiler.is_compiling() and inputs.numel():
            _check_char_ids(inputs, self.char_embed.shape[0])
        mask = (inputs > 0).any(-1)
        ids, new_mask = add_sentence_boundaries(inputs, mask, self.bos_chars, self.eos_chars)
        B, T2, L = ids.shape
        flat_mask = new_mask.view(-1)
        emb = self.w_proj.new_zeros(B * T2, self.options.proj_dim)
        emb[flat_mask] = self.encode(ids.view(-1, L)[flat_mask])
        return {"mask": new_mask.long(), "token_embedding": emb.view(B, T2, -1)}


def _eager_under_compile(cls) -> None:
    """torch.compile: the biLM's forward runs eagerly, so a compiled Elmo is one graph around it
    with the same outputs. Its work has data-dependent shapes dynamo cannot trace into one graph
    (token dedup, the length-packed recurrence, real-position GEMMs) and a host-side backend choice;
    the kernels' custom ops have fake implementations for graphs that do contain them. Done on the
    first construction, not at import: it imports torch._dynamo (seconds), which `import elmo_fast`
    should not pay."""
    if "_forward" in cls.__dict__ and not getattr(cls._forward, "_elmo_fast_eager", False):
        eager = torch.compiler.disable(cls.__dict__["_forward"])
        eager._elmo_fast_eager = True
        cls._forward = eager


class _LstmParams(nn.Module):
    def __init__(self, lw, requires_grad: bool):
        super().__init__()
        self.w_ih = _param(lw.w_ih, requires_grad)
        self.w_hh = _param(lw.w_hh, requires_grad)
        self.bias = _param(lw.bias, requires_grad)
        self.w_p = _param(lw.w_p, requires_grad)

    def weights(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w_ih [4C, D], bias [4C], w_hh [4C, P], w_p [P, C]) as `ops.bilstm_layer` takes them."""
        return self.w_ih, self.bias, self.w_hh, self.w_p


class BiLm(nn.Module):
    """The ELMo biLM (allennlp's _ElmoBiLm): char encoder + forward and backward projected-LSTM
    stacks. Returns n_layers + 1 activations of width 2P, with <S>/</S> positions included.

    stateful=True (allennlp's behaviour): row b of each batch starts from the final state row b had
    in the previous batch; `reset_states()` forgets it. stateful=False: every sentence starts from
    the same fixed state, so its output depends on nothing else in the batch or before it.

    warm_start=False: that fixed state (and the state of rows seen for the first time) is zeros, as
    in allennlp. warm_start=True: it is the state the model reaches after reading WARMUP_TOKENS from
    zeros, computed once, on first use, from the weights as they are then. ELMo's LSTMs were trained
    on running text, never from a zero state, so a warmed-up start gives a sentence's first tokens
    vectors much closer to a stateful run's, while staying deterministic.

    backend: None (the current choice, see `elmo_fast.ops.use_backend`) or 'auto' | 'cuda' |
    'triton' | 'torch' for every op this module runs. time_chunk: time steps whose LSTM input
    projections exist at once (None: from the workspace budget; see `ops.bilstm_layer`).

    Memory of one batch, whatever its longest sentence: with N = B * (T + 2) token slots, s bytes
    per element, projection P, L LSTM layers and W the workspace budget (ELMO_FAST_WORKSPACE_MB,
    default 1 GiB), the peak is about
        N * s * (2P * (L + 1) + 3P) + W
    the activations returned (L + 1 layers of 2P), each layer's two direction outputs while the next
    layer reads them, and the token embeddings; the input projections (B * 4C * s per time step and
    direction) exist `time_chunk` steps at a time and the char CNN's intermediates `token_chunk`
    tokens at a time, each within W. Original model, fp32: 18 KB per token slot + W (the unchunked
    input projections alone were 64 KB per token per layer and direction).
    """

    time_chunk: Optional[int] = None

    def __init__(
        self,
        options_file: Optional[str] = None,
        weight_file: Optional[str] = None,
        requires_grad: bool = False,
        vocab_to_cache: Optional[List[str]] = None,
        stateful: bool = True,
        *,
        warm_start: bool = False,
        weights: Optional[ElmoWeights] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        _eager_under_compile(BiLm)
        self.backend = None if backend is None else _config.check_backend(backend, source="backend")
        if weights is None:
            from .download import resolve_model

            weights = load_model(*resolve_model(options_file=options_file, weight_file=weight_file))
        self.options: ElmoOptions = weights.options
        self.stateful = stateful
        self.warm_start = warm_start
        self._warm: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # [L, 1, 2P], [L, 1, 2C]
        self._requires_grad = requires_grad
        self._token_embedder = CharEncoder(weights, requires_grad)
        self.lstm = nn.ModuleList(
            nn.ModuleList(_LstmParams(lw, requires_grad) for lw in direction) for direction in weights.lstm
        )
        self._carried = CarriedState()
        self._word_embedding: Optional[torch.Tensor] = None
        if vocab_to_cache is not None:
            self.create_cached_cnn_embeddings(vocab_to_cache)

    @property
    def num_layers(self) -> int:
        return self.options.n_layers + 1

    @property
    def _elmo_lstm(self):
        """allennlp's `_ElmoBiLm._elmo_lstm` (its ElmoLstm), for code written against allennlp such as
        flair: a view of this module's carried state (`_states`, `stateful`, `reset_states`)."""
        from ._allennlp_compat import ElmoLstmView

        return ElmoLstmView(self)

    def get_output_dim(self) -> int:
        return 2 * self.options.proj_dim

    # ---- vocabulary cache (allennlp's vocab_to_cache / word_inputs)
    def create_cached_cnn_embeddings(self, tokens: List[str]) -> None:
        """Encodes every vocabulary word once; forward(word_inputs=ids) then skips the char CNN."""
        ids = torch.as_tensor(tokens_to_char_ids(list(tokens)), device=self._token_embedder.char_embed.device)
        with torch.set_grad_enabled(self._requires_grad):
            emb = self._token_embedder.encode(ids)
            special = self._token_embedder.encode(torch.stack([self._token_embedder.bos_chars,
                                                               self._token_embedder.eos_chars]))
        self._word_embedding = nn.Parameter(emb.detach().clone(), requires_grad=self._requires_grad)
        self.register_buffer("_bos_embedding", special[0].detach().clone(), persistent=False)
        self.register_buffer("_eos_embedding", special[1].detach().clone(), persistent=False)

    # ---- state
    @property
    def _states(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The carried state (h [L, R, 2P], c [L, R, 2C]) or None (allennlp's _states)."""
        return self._carried.tensors

    @_states.setter
    def _states(self, value: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._carried.tensors = None if value is None else tuple(value)

    def reset_states(self, mask: Optional[torch.Tensor] = None) -> None:
        """Forgets the carried state: of every row, or of the rows where mask [B] is true."""
        with state_lock(self):
            self._carried.reset(mask)

    def _initial_state(self, B: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        L, P, C = self.options.n_layers, self.options.proj_dim, self.options.cell_dim
        # the state stays fp32 when the model runs in bf16/fp16 (the kernels keep c in fp32), so a
        # stateful low-precision model is not rounded to bf16 at every batch boundary
        dtype = torch.float32 if like.dtype in (torch.bfloat16, torch.float16) else like.dtype
        h_start, c_start = self._start_state(like.device, dtype)
        if not self.stateful:
            return h_start.expand(L, B, 2 * P), c_start.expand(L, B, 2 * C)
        return self._carried.take(B, h_start, c_start, like.device, dtype)

    def _start_state(self, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """The state a sentence without a carried state starts from: [L, 1, 2P], [L, 1, 2C]."""
        L, P, C = self.options.n_layers, self.options.proj_dim, self.options.cell_dim
        if not self.warm_start:
            return (torch.zeros(L, 1, 2 * P, device=device, dtype=dtype),
                    torch.zeros(L, 1, 2 * C, device=device, dtype=dtype))
        if self._warm is None or self._warm[0].device != device:
            ids = batch_to_ids([WARMUP_TOKENS]).to(device)
            h = torch.zeros(L, 1, 2 * P, device=device, dtype=dtype)
            c = torch.zeros(L, 1, 2 * C, device=device, dtype=dtype)
            with torch.no_grad():
                enc = self._token_embedder(ids)
                x = enc["token_embedding"]
                _, h, c = self._lstm_stack(x, enc["mask"].bool(), h.to(x.dtype), c.to(x.dtype))
            self._warm = (h.detach().float(), c.detach().float())
        return self._warm[0].to(dtype), self._warm[1].to(dtype)

    # ---- forward
    def run_lstm(self, x: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
        """x [B, T, P] token embeddings, mask [B, T] -> n_layers tensors [B, T, 2P] (fwd ; bwd),
        starting from (and, when stateful, updating) the carried state."""
        h0, c0 = self._initial_state(x.shape[0], x)
        outputs, h, c = self._lstm_stack(x, mask, h0, c0)
        if self.stateful:
            self._carried.store(h, c)
        return outputs

    def _lstm_stack(self, x: torch.Tensor, mask: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
                    ) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The layer schedule: both directions of every layer (one `ops.bilstm_layer` each) from the
        given state h0 [L, B, 2P], c0 [L, B, 2C] -> (n_layers outputs [B, T, 2P], final h [L, B, 2P],
        final c [L, B, 2C]). Layer k of a direction reads layer k - 1 of the same direction."""
        o = self.options
        lengths = mask.long().sum(1)
        inputs = (x, x)
        outputs, finals_h, finals_c = [], [], []
        for layer in range(o.n_layers):
            weights = (self.lstm[0][layer].weights(), self.lstm[1][layer].weights())
            inputs, h, c = ops.bilstm_layer(inputs, weights, lengths, h0[layer], c0[layer], o.cell_clip,
                                            o.proj_clip, residual=layer > 0 and o.skip_connections,
                                            time_chunk=self.time_chunk)
            outputs.append(torch.cat(inputs, -1))
            finals_h.append(h)
            finals_c.append(c)
        return outputs, torch.stack(finals_h), torch.stack(finals_c)

    def forward(self, inputs: torch.Tensor, word_inputs: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """inputs [B, T, 50] character ids (word_inputs [B, T] ids into the cached vocabulary) ->
        {'activations': n_layers + 1 tensors [B, T + 2, 2P], 'mask': [B, T + 2] long}.
        Concurrent calls on one stateful module run one after the other (each continues the state the
        previous one left); stateless calls run concurrently."""
        with ops.use_backend(self.backend):
            if self.stateful and not torch.compiler.is_compiling():
                with state_lock(self):
                    return self._forward(inputs, word_inputs)
            return self._forward(inputs, word_inputs)

    def _forward(self, inputs: torch.Tensor, word_inputs: Optional[torch.Tensor]) -> Dict[str, object]:
        if inputs.dim() != 3 or inputs.size(-1) != self.options.max_chars:
            raise ValueError("BiLm expects character ids of shape "
                             f"[batch, tokens, {self.options.max_chars}], "
                             f"got {tuple(inputs.shape)}")
        embedded = None
        if self._word_embedding is not None and word_inputs is not None:
            vocab_size = self._word_embedding.size(0)
            if word_inputs.numel() and (word_inputs.min() < 0 or word_inputs.max() >= vocab_size):
                logger.warning("word_inputs holds ids outside the cached vocabulary; using the characters")
            else:
                word_mask = word_inputs > 0
                emb = self._word_embedding[word_inputs]
                embedded, mask = add_sentence_boundaries(emb, word_mask, self._bos_embedding,
                                                         self._eos_embedding)
                mask = mask.long()
        if embedded is None:
            enc = self._token_embedder(inputs)
            embedded, mask = enc["token_embedding"], enc["mask"]
        layers = self.run_lstm(embedded, mask.bool())
        token_layer = torch.cat([embedded, embedded], -1) * mask.unsqueeze(-1).to(embedded.dtype)
        return {"activations": [token_layer] + layers, "mask": mask}


class ScalarMix(nn.Module):
    """gamma * sum_k softmax(s)_k * layer_k, optionally with layer norm (allennlp's ScalarMix)."""

    def __init__(self, mixture_size: int, do_layer_norm: bool = False,
                 initial_scalar_parameters: Optional[Sequence[float]] = None, trainable: bool = True):
        super().__init__()
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        elif len(initial_scalar_parameters) != mixture_size:
            raise ValueError(f"initial_scalar_parameters has {len(initial_scalar_parameters)} values, "
                             f"expected {mixture_size} (one per layer)")
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        self.scalar_parameters = nn.ParameterList(
            nn.Parameter(torch.tensor([float(v)]), requires_grad=trainable) for v in initial_scalar_parameters
        )
        self.gamma = nn.Parameter(torch.tensor([1.0]), requires_grad=trainable)

    def forward(self, tensors: List[torch.Tensor], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if len(tensors) != self.mixture_size:
            raise ValueError(f"{len(tensors)} tensors were passed, but the module was initialized to "
                             f"mix {self.mixture_size} tensors.")
        scalars = torch.cat(list(self.scalar_parameters)).to(tensors[0].dtype)
        return ops.scalar_mix(tensors, scalars, self.gamma.to(tensors[0].dtype), mask, self.do_layer_norm)


class Elmo(nn.Module):
    """Drop-in for allennlp's `Elmo`: same constructor, same forward contract.

    forward(inputs [B, T, 50] (or [..., T, 50]), word_inputs=None) ->
        {'elmo_representations': num_output_representations tensors [B, T, 2P], 'mask': [B, T] long}
    `stateful` (default True, as allennlp) carries each row's LSTM state to the next batch; pass
    False for outputs that depend on nothing but the sentence itself. `warm_start=True` starts
    sentences from a fixed warmed-up state instead of zeros (see BiLm). `backend` chooses the op
    backend for this module (see BiLm).
    """

    def __init__(
        self,
        options_file: Optional[str],
        weight_file: Optional[str],
        num_output_representations: int,
        requires_grad: bool = False,
        do_layer_norm: bool = False,
        dropout: float = 0.5,
        vocab_to_cache: Optional[List[str]] = None,
        keep_sentence_boundaries: bool = False,
        scalar_mix_parameters: Optional[List[float]] = None,
        module: Optional[nn.Module] = None,
        stateful: bool = True,
        warm_start: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if module is not None:
            if options_file is not None or weight_file is not None:
                raise ValueError("Don't provide options_file or weight_file with module")
            self._elmo_lstm = module
        else:
            self._elmo_lstm = BiLm(options_file, weight_file, requires_grad=requires_grad,
                                   vocab_to_cache=vocab_to_cache, stateful=stateful, warm_start=warm_start,
                                   backend=backend)
        self._has_cached_vocab = vocab_to_cache is not None
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        self._scalar_mixes: List[ScalarMix] = []
        for k in range(num_output_representations):
            mix = ScalarMix(self._elmo_lstm.num_layers, do_layer_norm=do_layer_norm,
                            initial_scalar_parameters=scalar_mix_parameters,
                            trainable=scalar_mix_parameters is None)
            self.add_module(f"scalar_mix_{k}", mix)
            self._scalar_mixes.append(mix)

    def get_output_dim(self) -> int:
        return self._elmo_lstm.get_output_dim()

    def reset_states(self, mask: Optional[torch.Tensor] = None) -> None:
        self._elmo_lstm.reset_states(mask)

    def _empty_output(self, shape: torch.Size, device: torch.device) -> Dict[str, object]:
        """The outputs for a batch without sentences (inputs [0, T, 50] or [..., 0, ..., T, 50]): empty
        tensors of the shapes a batch has ([..., T, D]; T + 2 with keep_sentence_boundaries)."""
        T = shape[-2] + 2 if self._keep_sentence_boundaries else shape[-2]
        mask = torch.zeros(*shape[:-2], T, dtype=torch.long, device=device)
        param = next(self.parameters())
        reps = [torch.zeros(*shape[:-2], T, self.get_output_dim(), dtype=param.dtype, device=device)
                for _ in self._scalar_mixes]
        return {"elmo_representations": reps, "mask": mask}

    def forward(self, inputs: torch.Tensor, word_inputs: Optional[torch.Tensor] = None
                ) -> Dict[str, Union[torch.Tensor, List[torch.Tensor]]]:
        original_shape = inputs.size()
        if len(original_shape) < 3:
            raise ValueError("Elmo expects character ids of shape [batch, tokens, 50], "
                             f"got {tuple(original_shape)}")
        if original_shape[:-2].numel() == 0:  # no sentences at all, e.g. batch_to_ids([])
            return self._empty_output(original_shape, inputs.device)
        reshaped = inputs.reshape(-1, *original_shape[-2:]) if len(original_shape) > 3 else inputs
        original_word_size = None
        reshaped_words = word_inputs
        if word_inputs is not None:
            original_word_size = word_inputs.size()
            if not self._has_cached_vocab:
                logger.warning("Word inputs were passed to ELMo but it does not have a cached vocab.")
                reshaped_words = None
            elif len(original_word_size) > 2:
                reshaped_words = word_inputs.reshape(-1, original_word_size[-1])
        bilm = self._elmo_lstm(reshaped, reshaped_words)
        layers, mask_bos = bilm["activations"], bilm["mask"]
        representations = []
        for mix in self._scalar_mixes:
            rep = mix(layers, mask_bos)
            if self._keep_sentence_boundaries:
                rep_mask = mask_bos
            else:
                rep, rep_mask = remove_sentence_boundaries(rep, mask_bos)
            representations.append(self._dropout(rep))
        if not representations:
            rep_mask = (mask_bos if self._keep_sentence_boundaries
                        else remove_sentence_boundaries(layers[0], mask_bos)[1])
        # leading dims restored; the time dim is T, or T + 2 with keep_sentence_boundaries
        if word_inputs is not None and len(original_word_size) > 2:
            shape = original_word_size[:-1] + rep_mask.shape[-1:]
            mask = rep_mask.view(shape)
            representations = [r.view(shape + (-1,)) for r in representations]
        elif len(original_shape) > 3:
            shape = original_shape[:-2] + rep_mask.shape[-1:]
            mask = rep_mask.view(shape)
            representations = [r.view(shape + (-1,)) for r in representations]
        else:
            mask = rep_mask
        return {"elmo_representations": representations, "mask": mask}
