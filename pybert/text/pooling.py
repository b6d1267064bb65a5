"""Packed encodings (total_tokens, H) into one vector per sequence: the pooling ("cls" or
"mean"), a sentence-transformers model's Dense modules, Matryoshka's cut and normalisation;
and the check that an output is finite."""

from __future__ import annotations

import torch

from ..heads import l2_normalize

__all__ = ["POOLINGS", "pooled", "after_pooling", "token_vectors", "finite"]

# "cls" and "mean" pool a sequence to a vector; "tokens" (TextModel.encode) keeps every token's.
POOLINGS = ("cls", "mean", "tokens")


def pooled(packed: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, H) float32 on the encodings' device: each sequence's first row ("cls") or the mean
    of its rows ("mean")."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if pooling == "cls":
        return packed[cu_seqlens[:-1].to(packed.device)].float()
    # Summed in float64: float32 sums of large finite encodings (~3e37) would overflow where
    # their mean does not.
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=packed.device),
                                    torch.tensor(lengths, device=packed.device))
    sums = torch.zeros((len(lengths), packed.shape[1]), device=packed.device,
                       dtype=torch.float64).index_add_(0, owner, packed.double())
    lengths = torch.tensor(lengths, device=packed.device, dtype=torch.float64)
    return (sums / lengths[:, None]).float()


def after_pooling(vectors: torch.Tensor, normalize: bool, dense=None,
                  dimensions: int | None = None) -> torch.Tensor:
    """Pooled vectors through ``dense`` (a LinearHead), cut to their first ``dimensions``
    values, L2-normalised if ``normalize``: float32 on the CPU."""
    if dense is not None:
        vectors = dense(vectors)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError("a pooled vector is not finite in float32 (the encodings are too "
                         "large to pool)")
    if normalize:
        vectors = l2_normalize(vectors)
    return vectors.cpu()


def token_vectors(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Each sequence's (len_b, H) encodings, float32 on the CPU."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    return list(packed.float().cpu().split(lengths))


def finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` if every one is finite; else a ValueError saying which output overflowed
    (never an inf in a file, nor a score of 1.0 made from one)."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} are not finite in float32 (the model's outputs overflow for "
                         "this input)")
    return values
