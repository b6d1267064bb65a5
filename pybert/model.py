"""The eager reference model: a BERT that is checkpoint-compatible with d2l 0.17.6.

Module names, constructor signatures and forward semantics follow the book's BERT
(see shared/docs/d2l-bert.md), so a state_dict saved from the book's ``BERTModel`` loads here
with ``strict=True`` and gives the same numbers. This model is what training uses and what the
engine is tested against; inference at speed goes through ``pybert.Engine``.

One deliberate difference: the book adds ``pos_embedding.data`` in the forward pass, so the
positional embeddings never learn. Here they are added as a parameter and receive gradients;
the forward values are identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BERTEncoder",
    "BERTModel",
    "MaskLM",
    "NextSentencePred",
    "get_tokens_and_segments",
    "masked_softmax",
]

# The score given to masked keys before the softmax. The book uses -1e6 (not -inf) so that a
# row with every key masked still has a defined (uniform) softmax; we keep the same value.
MASKED_SCORE = -1e6


def get_tokens_and_segments(tokens_a, tokens_b=None):
    """Return ``<cls> a <sep> [b <sep>]`` and its segment ids (0 for the first part, 1 for b)."""
    tokens = ["<cls>", *tokens_a, "<sep>"]
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += [*tokens_b, "<sep>"]
        segments += [1] * (len(tokens_b) + 1)
    return tokens, segments


def masked_softmax(scores: torch.Tensor, valid_lens: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis of ``scores`` (N, Q, K), ignoring keys at positions >= valid_len.

    ``valid_lens`` is (N,) (one length per row of the batch) or (N, Q) (one per query).
    """
    if valid_lens is None:
        return F.softmax(scores, dim=-1)
    num_queries, num_keys = scores.shape[1], scores.shape[2]
    if valid_lens.dim() == 1:
        per_query = valid_lens[:, None].expand(-1, num_queries)
    else:
        per_query = valid_lens.reshape(scores.shape[0], num_queries)
    key_index = torch.arange(num_keys, device=scores.device, dtype=torch.float32)
    masked = key_index[None, None, :] >= per_query[:, :, None].to(torch.float32)
    # -1e6 is beyond float16's range: there the most negative finite score does the same.
    fill = max(MASKED_SCORE, torch.finfo(scores.dtype).min)
    return F.softmax(scores.masked_fill(masked, fill), dim=-1)


class DotProductAttention(nn.Module):
    """Scaled dot-product attention with key masking by valid length."""

    def __init__(self, dropout, **kwargs):
        super().__init__(**kwargs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, keys, values, valid_lens=None):
        scale = 1.0 / math.sqrt(queries.shape[-1])
        scores = torch.bmm(queries, keys.transpose(1, 2)) * scale
        self.attention_weights = masked_softmax(scores, valid_lens)
        return torch.bmm(self.dropout(self.attention_weights), values)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, H) -> (B * num_heads, S, H / num_heads); head h owns columns [h*d, (h+1)*d)."""
    batch, seq, hidden = x.shape
    x = x.reshape(batch, seq, num_heads, hidden // num_heads).permute(0, 2, 1, 3)
    return x.reshape(batch * num_heads, seq, hidden // num_heads)


def _merge_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of :func:`_split_heads`."""
    rows, seq, head_dim = x.shape
    x = x.reshape(rows // num_heads, num_heads, seq, head_dim).permute(0, 2, 1, 3)
    return x.reshape(rows // num_heads, seq, num_heads * head_dim)


class MultiHeadAttention(nn.Module):
    def __init__(self, key_size, query_size, value_size, num_hiddens, num_heads, dropout,
                 bias=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        self.W_q = nn.Linear(query_size, num_hiddens, bias=bias)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=bias)
        self.W_v = nn.Linear(value_size, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)

    def forward(self, queries, keys, values, valid_lens):
        q = _split_heads(self.W_q(queries), self.num_heads)
        k = _split_heads(self.W_k(keys), self.num_heads)
        v = _split_heads(self.W_v(values), self.num_heads)
        if valid_lens is not None:
            # Every head of a sequence sees the same lengths.
            valid_lens = torch.repeat_interleave(valid_lens, self.num_heads, dim=0)
        context = self.attention(q, k, v, valid_lens)
        return self.W_o(_merge_heads(context, self.num_heads))


class PositionWiseFFN(nn.Module):
    def __init__(self, ffn_num_input, ffn_num_hiddens, ffn_num_outputs, **kwargs):
        super().__init__(**kwargs)
        self.dense1 = nn.Linear(ffn_num_input, ffn_num_hiddens)
        self.relu = nn.ReLU()
        self.dense2 = nn.Linear(ffn_num_hiddens, ffn_num_outputs)

    def forward(self, x):
        return self.dense2(self.relu(self.dense1(x)))


class AddNorm(nn.Module):
    """Post-LN residual: ``LayerNorm(x + dropout(y))``."""

    def __init__(self, normalized_shape, dropout, **kwargs):
        super().__init__(**kwargs)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(normalized_shape)

    def forward(self, x, y):
        return self.ln(x + self.dropout(y))


class EncoderBlock(nn.Module):
    def __init__(self, key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input,
                 ffn_num_hiddens, num_heads, dropout, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.attention = MultiHeadAttention(key_size, query_size, value_size, num_hiddens,
                                            num_heads, dropout, use_bias)
        self.addnorm1 = AddNorm(norm_shape, dropout)
        self.ffn = PositionWiseFFN(ffn_num_input, ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(norm_shape, dropout)

    def forward(self, x, valid_lens):
        y = self.addnorm1(x, self.attention(x, x, x, valid_lens))
        return self.addnorm2(y, self.ffn(y))


class BERTEncoder(nn.Module):
    """Token + segment + learned position embeddings, then ``num_layers`` post-LN blocks."""

    def __init__(self, vocab_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens,
                 num_heads, num_layers, dropout, max_len=1000, key_size=768, query_size=768,
                 value_size=768, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        self.blks = nn.Sequential()
        for i in range(num_layers):
            self.blks.add_module(
                f"{i}",
                EncoderBlock(key_size, query_size, value_size, num_hiddens, norm_shape,
                             ffn_num_input, ffn_num_hiddens, num_heads, dropout, True))
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, num_hiddens))

    def forward(self, tokens, segments, valid_lens):
        x = self.token_embedding(tokens) + self.segment_embedding(segments)
        x = x + self.pos_embedding[:, : x.shape[1], :]
        for blk in self.blks:
            x = blk(x, valid_lens)
        return x


class MaskLM(nn.Module):
    """Masked-LM head: gather the encodings at ``pred_positions`` (B, P) and predict tokens."""

    def __init__(self, vocab_size, num_hiddens, num_inputs=768, **kwargs):
        super().__init__(**kwargs)
        self.mlp = nn.Sequential(nn.Linear(num_inputs, num_hiddens), nn.ReLU(),
                                 nn.LayerNorm(num_hiddens), nn.Linear(num_hiddens, vocab_size))

    def forward(self, x, pred_positions):
        batch_size, num_preds = pred_positions.shape
        rows = torch.arange(batch_size, device=x.device).repeat_interleave(num_preds)
        gathered = x[rows, pred_positions.reshape(-1)].reshape(batch_size, num_preds,
                                                               x.shape[-1])
        return self.mlp(gathered)


class NextSentencePred(nn.Module):
    """Next-sentence head: a linear layer to 2 classes (label 1 = b follows a)."""

    def __init__(self, num_inputs, **kwargs):
        super().__init__(**kwargs)
        self.output = nn.Linear(num_inputs, 2)

    def forward(self, x):
        return self.output(x)


class BERTModel(nn.Module):
    """The d2l BERT: encoder, MLM head and NSP head (with its tanh pooler ``hidden``)."""

    def __init__(self, vocab_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens,
                 num_heads, num_layers, dropout, max_len=1000, key_size=768, query_size=768,
                 value_size=768, hid_in_features=768, mlm_in_features=768,
                 nsp_in_features=768):
        super().__init__()
        self.encoder = BERTEncoder(vocab_size, num_hiddens, norm_shape, ffn_num_input,
                                   ffn_num_hiddens, num_heads, num_layers, dropout,
                                   max_len=max_len, key_size=key_size, query_size=query_size,
                                   value_size=value_size)
        self.hidden = nn.Sequential(nn.Linear(hid_in_features, num_hiddens), nn.Tanh())
        self.mlm = MaskLM(vocab_size, num_hiddens, mlm_in_features)
        self.nsp = NextSentencePred(nsp_in_features)

    def forward(self, tokens, segments, valid_lens=None, pred_positions=None):
        encoded_x = self.encoder(tokens, segments, valid_lens)
        mlm_y_hat = self.mlm(encoded_x, pred_positions) if pred_positions is not None else None
        nsp_y_hat = self.nsp(self.hidden(encoded_x[:, 0, :]))
        return encoded_x, mlm_y_hat, nsp_y_hat
