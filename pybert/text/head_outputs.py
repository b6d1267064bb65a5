"""What the MLM and NSP heads give for tokenised sequences, run packed (the encoder computes no
padding; only a head's (batch, positions) table is rectangular): SPLADE's sparse vectors, the
top-k words at each mask, P(b follows a). The vocabulary logits a call holds stay under a
budget of rows (``logit_rows``), so memory does not grow with the input. And BGE-M3's heads
on every token's encoding: its lexical weights and its multi-vector embeddings."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..heads import l2_normalize, sparse_pool
from .batching import pack_batch, plan_batches
from .pooling import finite

__all__ = ["SparseVector", "sparse_vectors", "lexical_vectors", "multi_vectors", "top_words",
           "next_sentence_probs"]


class SparseVector(NamedTuple):
    """A text's sparse lexical vector: the vocabulary ids with a non-zero weight, ascending,
    and their weights."""

    indices: np.ndarray  # int64
    values: np.ndarray   # float32


def sparse_vectors(engine, spec, encoded: list, logit_rows: int) -> list[SparseVector]:
    """SPLADE vectors of sequences: the MLM logits of every token through ``spec``'s
    activation and pooling (a pybert.checkpoint.SparseSpec), in batches of at most
    ``logit_rows`` (sequences x longest) logit rows."""
    out: list = [None] * len(encoded)
    for rows in plan_batches([len(ids) for ids, _ in encoded], logit_rows):
        tokens, segments, cu_seqlens = pack_batch(encoded, rows)
        weights = finite(_sparse_weights(engine, spec, tokens, segments, cu_seqlens, logit_rows),
                         "the sparse weights").cpu()
        for j, r in enumerate(rows):
            nonzero = torch.nonzero(weights[j]).flatten()
            out[r] = SparseVector(nonzero.numpy(), weights[j, nonzero].numpy())
    return out


def _sparse_weights(engine, spec, tokens, segments, cu_seqlens, logit_rows: int) -> torch.Tensor:
    """(B, V) SPLADE weights of a packed batch, its MLM logits computed for at most
    ``logit_rows`` rows at a time: a sequence longer than that, alone in its batch, has its
    positions taken a slice at a time (the encoder runs again for each; its logits would not
    fit), the slices' weights pooled together."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    longest = int(lengths.max())
    step = max(1, logit_rows // len(lengths))
    weights = None
    for start in range(0, longest, step):
        positions = torch.arange(start, min(longest, start + step)).repeat(len(lengths), 1)
        positions[positions >= lengths[:, None]] = 0  # past a sequence's end: scored, ignored
        mlm, _ = engine.heads_packed(tokens, cu_seqlens, segments, positions)
        part = sparse_pool(mlm, (lengths - start).clamp(0, positions.shape[1]), spec.pooling,
                           spec.activation)
        del mlm
        weights = part if weights is None else torch.maximum(weights, part) \
            if spec.pooling == "max" else weights + part
    return weights


def top_words(engine, tokenizer, encoded: list, masks: list[list[int]], k: int,
              batch_tokens: int, logit_rows: int) -> list:
    """For each sequence, for each of its ``masks`` positions, the ``k`` likeliest words and
    their probabilities: [(word, p), ...]. The logits of at most ``logit_rows`` masks are held
    at once, and cut to the top k at once."""
    results: list = [[] for _ in encoded]
    for token_rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
        for rows in plan_batches([max(1, len(masks[r])) for r in token_rows], logit_rows):
            rows = [token_rows[i] for i in rows]
            tokens, segments, cu_seqlens = pack_batch(encoded, rows)
            positions = torch.zeros((len(rows), max(1, max(len(masks[r]) for r in rows))),
                                    dtype=torch.int64)
            for j, r in enumerate(rows):
                positions[j, : len(masks[r])] = torch.tensor(masks[r], dtype=torch.int64)
            mlm, _ = engine.heads_packed(tokens, cu_seqlens, segments, positions)
            top = torch.topk(torch.softmax(finite(mlm.float(), "the MLM logits"), -1), k, dim=-1)
            del mlm
            probs, ids = top.values.cpu(), top.indices.cpu()
            for j, r in enumerate(rows):
                results[r] = [[(tokenizer.id_to_token(int(i)), float(p))
                               for i, p in zip(ids[j, m], probs[j, m])]
                              for m in range(len(masks[r]))]
    return results


def next_sentence_probs(engine, encoded: list, is_next_label: int,
                        batch_tokens: int) -> np.ndarray:
    """P(text_b follows text_a) of each tokenised pair, from the NSP head (``is_next_label``:
    which of its two classes means "follows")."""
    result = np.zeros(len(encoded), dtype=np.float64)
    for rows in plan_batches([len(ids) for ids, _ in encoded], batch_tokens):
        tokens, segments, cu_seqlens = pack_batch(encoded, rows)
        _, nsp = engine.heads_packed(tokens, cu_seqlens, segments, with_nsp=True)
        probs = torch.softmax(finite(nsp.double(), "the NSP logits"), -1)[:, is_next_label]
        result[rows] = probs.cpu().numpy()
    return result


def lexical_vectors(head, packed: torch.Tensor, cu_seqlens: torch.Tensor, tokens: torch.Tensor,
                    special_ids) -> list[SparseVector]:
    """BGE-M3's lexical weights of packed sequences: each token's ReLU(``head``(encoding)),
    the largest per token id, special tokens and zero weights left out (FlagEmbedding's
    rule), as one SparseVector per sequence."""
    weights = finite(torch.relu(head(packed)[:, 0]), "the lexical weights").cpu()
    tokens = tokens.to("cpu", torch.int64)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for special in special_ids:
        keep &= tokens != special
    out, bounds = [], cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        ids, values = tokens[start:end][keep[start:end]], weights[start:end][keep[start:end]]
        unique, where = torch.unique(ids, return_inverse=True)
        largest = torch.zeros(len(unique)).scatter_reduce(0, where, values, "amax",
                                                          include_self=False)
        nonzero = largest > 0
        out.append(SparseVector(unique[nonzero].numpy(), largest[nonzero].numpy()))
    return out


def multi_vectors(head, packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """BGE-M3's multi-vector (ColBERT) embeddings of packed sequences: ``head`` on every
    token's encoding but the first (CLS), each row L2-normalised; a (len - 1, D) float32
    tensor per sequence."""
    vectors = finite(l2_normalize(head(packed)), "the multi-vector embeddings").cpu()
    bounds = cu_seqlens.tolist()
    return [vectors[start + 1:end] for start, end in zip(bounds[:-1], bounds[1:])]
