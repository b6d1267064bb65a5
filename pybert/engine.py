"""pybert.Engine: fast batched BERT inference through the C++/CUDA extension pybert._C.

The engine packs the weights of a d2l-style BERT once (fused QKV, contiguous, in the engine's
dtype and device), validates each batch on the host with messages that name the bad argument,
and runs the whole forward pass (embeddings, every layer, the MLM and NSP heads) in one C++
call. Activations are packed (padding removed) inside that call; encodings at padded positions
are returned as zeros.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from . import _C
from .config import BertConfig, config_from_model, state_dict_problems
from .tokenize import WordTokenizer
from .vocab import Vocab

__all__ = ["Engine"]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor, a numpy array or a nested list of numbers, "
                        f"got {type(value).__name__}: {err}") from None


def _integer_ids(value, name: str) -> torch.Tensor:
    t = _as_tensor(value, name)
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.int64)


def pack_d2l_state_dict(state_dict: dict, config: BertConfig) -> dict[str, torch.Tensor]:
    """Map d2l state_dict keys to the engine's packed weights (W_q, W_k, W_v stacked)."""
    problems = state_dict_problems(state_dict, config)
    if problems:
        raise ValueError("state_dict does not match the config: " + "; ".join(problems[:5]))
    sd = state_dict
    packed = {
        "token_embedding": sd["encoder.token_embedding.weight"],
        "segment_embedding": sd["encoder.segment_embedding.weight"],
        "pos_embedding": sd["encoder.pos_embedding"][0],
        "pooler_weight": sd["hidden.0.weight"],
        "pooler_bias": sd["hidden.0.bias"],
        "nsp_weight": sd["nsp.output.weight"],
        "nsp_bias": sd["nsp.output.bias"],
        "mlm_dense_weight": sd["mlm.mlp.0.weight"],
        "mlm_dense_bias": sd["mlm.mlp.0.bias"],
        "mlm_ln_weight": sd["mlm.mlp.2.weight"],
        "mlm_ln_bias": sd["mlm.mlp.2.bias"],
        "mlm_decoder_weight": sd["mlm.mlp.3.weight"],
        "mlm_decoder_bias": sd["mlm.mlp.3.bias"],
    }
    for i in range(config.num_layers):
        p, q = f"encoder.blks.{i}.", f"layers.{i}."
        att = p + "attention."
        packed[q + "qkv_weight"] = torch.cat([sd[att + f"W_{n}.weight"] for n in "qkv"])
        packed[q + "qkv_bias"] = torch.cat([sd[att + f"W_{n}.bias"] for n in "qkv"])
        packed[q + "out_weight"] = sd[att + "W_o.weight"]
        packed[q + "out_bias"] = sd[att + "W_o.bias"]
        packed[q + "ln1_weight"] = sd[p + "addnorm1.ln.weight"]
        packed[q + "ln1_bias"] = sd[p + "addnorm1.ln.bias"]
        packed[q + "ffn1_weight"] = sd[p + "ffn.dense1.weight"]
        packed[q + "ffn1_bias"] = sd[p + "ffn.dense1.bias"]
        packed[q + "ffn2_weight"] = sd[p + "ffn.dense2.weight"]
        packed[q + "ffn2_bias"] = sd[p + "ffn.dense2.bias"]
        packed[q + "ln2_weight"] = sd[p + "addnorm2.ln.weight"]
        packed[q + "ln2_bias"] = sd[p + "addnorm2.ln.bias"]
    return packed


class Engine:
    """A BERT packed for inference. Build one with :meth:`from_model` or ``pybert.load``.

    ``engine(tokens, segments, valid_lens=None, pred_positions=None)`` returns
    ``(encoded, mlm_Y_hat, nsp_Y_hat)`` with ``BERTModel.forward``'s meaning:
    encoded (B, S, H), zeros at positions >= valid_lens; mlm_Y_hat (B, P, vocab_size) or None
    without pred_positions; nsp_Y_hat (B, 2), or None for a model without an NSP head.

    ``weights`` are the engine's packed tensors (see :func:`pack_d2l_state_dict`); the
    ``tokenizer`` (optional) turns texts into ids; ``pooling`` and ``normalize`` are what
    ``pybert.encode`` does to texts by default (a sentence-transformers model sets them).
    """

    def __init__(self, config: BertConfig, weights: dict, device="cpu",
                 dtype: torch.dtype = torch.float32, tokenizer=None, vocab: Vocab | None = None,
                 pooling: str = "cls", normalize: bool = False, nsp_is_next_label: int = 1,
                 cuda_graphs: bool = False, max_graphs: int = 16):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        # Which NSP class means "b follows a": 1 in d2l, 0 in Hugging Face's BERT.
        self.nsp_is_next_label = nsp_is_next_label
        if self.device.type == "cuda":
            if not _C.cuda_available:
                raise ValueError(f"device {self.device}: this build of pybert has no CUDA "
                                 "kernels (rebuild with nvcc and a CUDA torch, PYBERT_CUDA=1)")
            if not torch.cuda.is_available():
                raise ValueError(f"device {self.device}: no CUDA GPU is available")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            if dtype not in CUDA_DTYPES:
                raise ValueError(f"the CUDA engine computes in {CUDA_DTYPES}, got dtype={dtype}")
        elif self.device.type == "cpu":
            if dtype != torch.float32:
                raise ValueError(f"the CPU engine computes in torch.float32, got dtype={dtype}")
        else:
            raise ValueError(f"device {self.device} is not supported: use cpu or cuda")
        for key, value in weights.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"weight {key} must be a floating-point tensor")
        weights = {name: t.detach().to(self.device, dtype).contiguous()
                   for name, t in weights.items()}
        native_config = {
            "vocab_size": config.vocab_size, "num_hiddens": config.num_hiddens,
            "num_heads": config.num_heads, "ffn_num_hiddens": config.ffn_num_hiddens,
            "num_layers": config.num_layers, "max_len": config.max_len,
            "layer_norm_eps": float(config.layer_norm_eps),
            "ffn_activation": config.ffn_activation,
            "mlm_activation": config.mlm_activation,
        }
        on_gpu = self.device.type == "cuda"
        with torch.cuda.device(self.device) if on_gpu else contextlib.nullcontext():
            self._native = _C.Engine(native_config, weights)
        self.has_nsp = self._native.has_nsp
        self.has_mlm = self._native.has_mlm
        # CUDA graphs (off by default until they have been verified on a GPU): calls without
        # pred_positions replay a captured forward of their shape bucket.
        self._graphs = None
        if cuda_graphs:
            if not on_gpu:
                raise ValueError("cuda_graphs needs device='cuda'")
            from .graphs import GraphCache

            self._graphs = GraphCache(self._native, self.device, config.max_len, max_graphs)

    def capture(self, batch_sizes, seq_lens, with_nsp: bool = True) -> None:
        """Capture the CUDA graphs of these shapes now rather than at their first call."""
        if self._graphs is None:
            raise ValueError("this engine was built without cuda_graphs=True")
        for batch in batch_sizes:
            for seq_len in seq_lens:
                if not 1 <= seq_len <= self.config.max_len:
                    raise ValueError(f"seq_len {seq_len} is outside [1, max_len]")
                self._graphs.capture(batch, seq_len, with_nsp and self.has_nsp)

    @classmethod
    def from_state_dict(cls, state_dict: dict, config: BertConfig, device="cpu",
                        dtype: torch.dtype = torch.float32, vocab: Vocab | None = None,
                        text_format: str = "wikitext") -> "Engine":
        """An engine for a d2l ``state_dict`` (the book's key names). With a ``vocab`` it also
        takes texts, split by the rule of ``text_format`` (see pybert.tokenize)."""
        if vocab is not None and len(vocab) != config.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} tokens but the model's vocab_size is "
                             f"{config.vocab_size}")
        tokenizer = WordTokenizer(vocab, config.max_len, text_format) \
            if vocab is not None else None
        return cls(config, pack_d2l_state_dict(state_dict, config), device=device, dtype=dtype,
                   tokenizer=tokenizer, vocab=vocab)

    @classmethod
    def from_model(cls, net: torch.nn.Module, device="cpu", dtype: torch.dtype = torch.float32,
                   vocab: Vocab | None = None, text_format: str = "wikitext") -> "Engine":
        """Pack the weights of a d2l-style ``BERTModel`` (pybert's or the book's). With a
        ``vocab`` the engine also takes texts (see ``pybert.encode``)."""
        return cls.from_state_dict(net.state_dict(), config_from_model(net), device=device,
                                   dtype=dtype, vocab=vocab, text_format=text_format)

    def __repr__(self) -> str:
        c = self.config
        return (f"Engine(vocab_size={c.vocab_size}, num_hiddens={c.num_hiddens}, "
                f"num_heads={c.num_heads}, num_layers={c.num_layers}, "
                f"device={self.device}, dtype={self.dtype})")

    # -- forward ----------------------------------------------------------------------------

    def __call__(self, tokens, segments=None, valid_lens=None, pred_positions=None):
        if pred_positions is not None and not self.has_mlm:
            raise ValueError("this model has no MLM head, so pred_positions cannot be scored")
        return self._forward(tokens, segments, valid_lens, pred_positions,
                             with_nsp=self.has_nsp)

    def encode(self, tokens, segments=None, valid_lens=None) -> torch.Tensor:
        """Only the encodings (B, S, H): the heads are not run."""
        return self._forward(tokens, segments, valid_lens, None, with_nsp=False)[0]

    def encode_packed(self, tokens, cu_seqlens, segments=None, max_seqlen=None) -> torch.Tensor:
        """Encodings of sequences already packed without padding (flash-attention's varlen form).

        tokens (total_tokens,) holds the sequences one after another; sequence b is
        ``tokens[cu_seqlens[b]:cu_seqlens[b + 1]]``; segments has the shape of tokens (default
        0). ``max_seqlen``, if given, must bound the longest sequence. Returns
        (total_tokens, H): no padding anywhere, in or out."""
        c = self.config
        tokens = self._checked_ids(tokens)
        if tokens.dim() != 1:
            raise ValueError(f"packed tokens must have shape (total_tokens,), got "
                             f"{tuple(tokens.shape)}")
        segments = self._checked_segments(segments, tokens)
        cu = _integer_ids(cu_seqlens, "cu_seqlens")
        if cu.dim() != 1 or cu.numel() < 2:
            raise ValueError(f"cu_seqlens must have shape (batch + 1,) with batch >= 1, got "
                             f"{tuple(cu.shape)}")
        lengths = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or int(cu[-1]) != tokens.numel():
            raise ValueError(f"cu_seqlens must run from 0 to len(tokens) = {tokens.numel()}, "
                             f"got {int(cu[0])}..{int(cu[-1])}")
        if int(lengths.min()) < 1 or int(lengths.max()) > c.max_len:
            raise ValueError(f"every sequence length (cu_seqlens[b+1] - cu_seqlens[b]) must be "
                             f"in [1, max_len={c.max_len}], found {int(lengths.min())}.."
                             f"{int(lengths.max())}")
        longest = int(lengths.max())
        if max_seqlen is not None and not longest <= int(max_seqlen) <= c.max_len:
            raise ValueError(f"max_seqlen {max_seqlen} must be in [{longest} (the longest "
                             f"sequence), max_len={c.max_len}]")
        cu32 = cu.to(torch.int32)
        if self.device.type != "cpu":
            tokens, segments, cu32 = (t.to(self.device, non_blocking=True)
                                      for t in (tokens, segments, cu32))
        return self._native.forward(tokens, segments, cu32, int(cu[-1]), longest, None, True,
                                    False)[0]

    # -- texts ------------------------------------------------------------------------------

    def _encoded_texts(self, texts, truncation: str):
        if self.tokenizer is None:
            raise ValueError("this engine has no vocabulary, so it cannot tokenise text: load "
                             "a checkpoint with a vocab.txt or pass vocab= to from_model")
        items = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        return items, self.tokenizer.encode_all(items, truncation)

    def fill_mask(self, texts, k: int = 5, truncation: str = "warn", batch_tokens: int = 16384):
        """Top-``k`` words for each ``<mask>`` in each text (or (text_a, text_b) pair): a list
        per text of a list per mask of (word, probability)."""
        from .batch import pad_batch, plan_batches

        items, encoded = self._encoded_texts(texts, truncation)
        if not 1 <= k <= self.config.vocab_size:
            raise ValueError(f"k must be in [1, vocab_size={self.config.vocab_size}], got {k}")
        if not self.has_mlm:
            raise ValueError("this model has no MLM head")
        mask_id = self.tokenizer.mask_id
        masks = [[p for p, t in enumerate(ids) if t == mask_id] for ids, _ in encoded]
        results: list = [[] for _ in items]
        for rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
            tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
            width = max(1, max(len(masks[r]) for r in rows))
            positions = torch.zeros((len(rows), width), dtype=torch.int64)
            for j, r in enumerate(rows):
                positions[j, : len(masks[r])] = torch.tensor(masks[r], dtype=torch.int64)
            _, mlm, _ = self(tokens, segments, valid_lens, positions)
            top = torch.topk(torch.softmax(mlm.float(), -1), k, dim=-1)
            probs, ids = top.values.cpu(), top.indices.cpu()
            for j, r in enumerate(rows):
                results[r] = [[(self.tokenizer.id_to_token(int(i)), float(p))
                               for i, p in zip(ids[j, m], probs[j, m])]
                              for m in range(len(masks[r]))]
        return results[0] if isinstance(texts, (str, tuple)) else results

    def next_sentence(self, pairs, truncation: str = "warn",
                      batch_tokens: int = 16384) -> np.ndarray:
        """P(text_b follows text_a) for each (text_a, text_b) pair, from the NSP head."""
        from .batch import pad_batch, plan_batches

        if not self.has_nsp:
            raise ValueError("this model has no NSP head")
        items, encoded = self._encoded_texts(pairs, truncation)
        if not all(isinstance(i, tuple) or (isinstance(i, list) and len(i) == 2)
                   for i in items):
            raise TypeError("next_sentence takes (text_a, text_b) pairs")
        result = np.zeros(len(items), dtype=np.float64)
        for rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
            tokens, segments, valid_lens = pad_batch(encoded, rows, self.tokenizer.pad_id)
            _, _, nsp = self(tokens, segments, valid_lens)
            probs = torch.softmax(nsp.double(), -1)[:, self.nsp_is_next_label]
            result[rows] = probs.cpu().numpy()
        return result[0] if isinstance(pairs, tuple) else result

    def _forward(self, tokens, segments, valid_lens, pred_positions, with_nsp):
        # Validation runs on host tensors; only then do the inputs move to the device, so a
        # GPU forward never waits on a device-to-host copy.
        batch = self._validate(tokens, segments, valid_lens, pred_positions)
        tokens, segments, cu_seqlens, max_seqlen, pred_positions = batch
        if self._graphs is not None and pred_positions is None:
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
            replayed = self._graphs.run(tokens, segments, lengths, with_nsp)
            if replayed is not None:
                return replayed[0], None, replayed[1]
        total_tokens = int(cu_seqlens[-1])
        if self.device.type != "cpu":
            tokens, segments, cu_seqlens = (t.to(self.device, non_blocking=True)
                                            for t in (tokens, segments, cu_seqlens))
            if pred_positions is not None:
                pred_positions = pred_positions.to(self.device, non_blocking=True)
        encoded, mlm, nsp = self._native.forward(tokens, segments, cu_seqlens, total_tokens,
                                                 max_seqlen, pred_positions, True, with_nsp)
        return encoded, mlm, nsp

    def _validate(self, tokens, segments, valid_lens, pred_positions):
        """Check one batch on the host; return the tensors the native forward takes."""
        c = self.config
        tokens = self._checked_ids(tokens)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}")
        batch, seq_len = tokens.shape
        if seq_len > c.max_len:
            raise ValueError(f"tokens has sequence length {seq_len}, longer than the model's "
                             f"max_len {c.max_len}")
        segments = self._checked_segments(segments, tokens)

        lengths = self._validate_valid_lens(valid_lens, batch, seq_len)
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32)
        torch.cumsum(lengths, 0, out=cu_seqlens[1:])

        if pred_positions is not None:
            pred_positions = _integer_ids(pred_positions, "pred_positions")
            if pred_positions.dim() != 2 or pred_positions.shape[0] != batch:
                raise ValueError(f"pred_positions must have shape (batch={batch}, "
                                 f"num_pred_positions), got {tuple(pred_positions.shape)}")
            if pred_positions.numel():
                if int(pred_positions.min()) < 0 or int(pred_positions.max()) >= seq_len:
                    raise ValueError(f"pred_positions must be in [0, seq_len={seq_len}), found "
                                     f"{int(pred_positions.min())}..{int(pred_positions.max())}")
                beyond = pred_positions >= lengths[:, None].to(torch.int64)
                if bool(beyond.any()):
                    b, j = (int(i) for i in beyond.nonzero()[0])
                    raise ValueError(
                        f"pred_positions[{b}, {j}] = {int(pred_positions[b, j])} is a padded "
                        f"position (valid_lens[{b}] = {int(lengths[b])}); predictions are only "
                        "defined at real tokens")
            pred_positions = pred_positions.contiguous()
        return (tokens.contiguous(), segments.contiguous(), cu_seqlens, int(lengths.max()),
                pred_positions)

    def _checked_ids(self, tokens) -> torch.Tensor:
        """tokens as a CPU int64 tensor, every id in [0, vocab_size)."""
        tokens = _integer_ids(tokens, "tokens")
        if tokens.numel() == 0:
            raise ValueError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"tokens must be ids in [0, {self.config.vocab_size}), found {bad}")
        return tokens.contiguous()

    @staticmethod
    def _checked_segments(segments, tokens: torch.Tensor) -> torch.Tensor:
        """segments (default zeros) as a CPU int64 tensor of tokens' shape, each 0 or 1."""
        if segments is None:
            return torch.zeros_like(tokens)
        segments = _integer_ids(segments, "segments")
        if tuple(segments.shape) != tuple(tokens.shape):
            raise ValueError(f"segments must have the shape of tokens {tuple(tokens.shape)}, "
                             f"got {tuple(segments.shape)}")
        bad = (segments != 0) & (segments != 1)
        if bool(bad.any()):
            raise ValueError(f"segments must be 0 or 1, found {int(segments[bad][0])}")
        return segments.contiguous()

    @staticmethod
    def _validate_valid_lens(valid_lens, batch: int, seq_len: int) -> torch.Tensor:
        """valid_lens (B,) of ints or integral floats in [1, seq_len]; None means seq_len."""
        if valid_lens is None:
            return torch.full((batch,), seq_len, dtype=torch.int32)
        lens = _as_tensor(valid_lens, "valid_lens").detach().to("cpu")
        if tuple(lens.shape) != (batch,):
            raise ValueError(f"valid_lens must have shape (batch={batch},), got "
                             f"{tuple(lens.shape)} (the engine takes one length per sequence)")
        if lens.is_floating_point():
            as_float = lens.to(torch.float64)
            if not bool(torch.isfinite(as_float).all()):
                raise ValueError("valid_lens must be finite, found NaN or infinity")
            if bool((as_float != torch.round(as_float)).any()):
                bad = as_float[as_float != torch.round(as_float)][0].item()
                raise ValueError(f"valid_lens must be whole numbers, found {bad}")
            lens = as_float
        elif lens.dtype not in _INT_DTYPES:
            raise TypeError(f"valid_lens must be integers or floats, got dtype {lens.dtype}")
        low, high = lens.min().item(), lens.max().item()
        if low < 1 or high > seq_len:
            bad = low if low < 1 else high
            raise ValueError(f"valid_lens must be in [1, seq_len={seq_len}], found "
                             f"{int(bad) if math.isfinite(bad) else bad}")
        return lens.to(torch.int32)
