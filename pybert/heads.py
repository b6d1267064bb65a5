"""The small heads after the encoder, in torch on the engine's device, in float32: a
sentence-transformers Dense projection, a sequence classifier on the first token's encoding,
and SPLADE's pooling of the MLM logits into one sparse vector per text. Built by the loader
from the plain specs a checkpoint reader returns (:mod:`pybert.checkpoint.contents`); the
encoder itself always runs in the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["LinearHead", "Classifier", "sparse_pool", "score", "l2_normalize", "maxsim"]

_ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,  # the exact (erf) form, as BERT's and ELECTRA's
    "silu": torch.nn.functional.silu,
    "sigmoid": torch.sigmoid,
}


class LinearHead:
    """activation(x W^T + b), each followed by its LayerNorm where it has one, layer after
    layer, on (N, in_features) float32 rows."""

    def __init__(self, layers: Sequence, device: torch.device, what: str = "head"):
        self.layers = []
        def tensor(t):
            return None if t is None else t.detach().to(device, torch.float32)

        for i, layer in enumerate(layers):
            weight, bias = tensor(layer.weight), tensor(layer.bias)
            norm = getattr(layer, "norm_weight", None)
            norm = None if norm is None else (tensor(norm), tensor(layer.norm_bias),
                                              float(layer.norm_eps))
            parts = [weight, bias] + ([] if norm is None else list(norm[:2]))
            if not all(bool(torch.isfinite(p).all()) for p in parts if p is not None):
                raise ValueError(f"the {what}'s layer {i} holds NaN or infinity")
            self.layers.append((weight, bias, _ACTIVATIONS[layer.activation], norm))
        self.out_features = self.layers[-1][0].shape[0] if self.layers else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        for weight, bias, activation, norm in self.layers:
            x = activation(torch.nn.functional.linear(x, weight, bias))
            if norm is not None:
                x = torch.nn.functional.layer_norm(x, (x.shape[-1],), norm[0], norm[1], norm[2])
        return x


@dataclass
class Classifier:
    """A sequence classifier: ``head`` on the first token's encoding (``pooling`` "cls") or
    the mean of its tokens' ("mean") gives the logits; ``score_activation`` ("identity",
    "sigmoid", "softmax") turns them into scores."""

    head: LinearHead
    labels: tuple[str, ...]
    score_activation: str
    pooling: str = "cls"


def score(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """A classifier's scores from its (N, labels) logits."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    return logits


def sparse_pool(logits: torch.Tensor, lengths: torch.Tensor, pooling: str = "max",
                activation: str = "relu") -> torch.Tensor:
    """SPLADE: (B, P, V) MLM logits of each sequence's first ``lengths[b]`` tokens (positions
    beyond are ignored) -> (B, V) weights, log(1 + relu(x)) (twice for "log1p_relu") pooled
    over the tokens by "max" or "sum"."""
    weights = torch.log1p(torch.relu(logits.float()))
    if activation == "log1p_relu":
        weights = torch.log1p(weights)
    real = torch.arange(logits.shape[1], device=logits.device)[None, :] < \
        lengths.to(logits.device)[:, None]
    weights = weights * real[:, :, None]  # >= 0, so a zero is neutral for max and sum
    return weights.amax(dim=1) if pooling == "max" else weights.sum(dim=1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (a zero row stays zero), exact for any finite
    values: each row is divided by its largest magnitude first, so the squares cannot
    overflow (float32 squares overflow beyond ~1.8e19)."""
    scale = x.abs().amax(dim=-1, keepdim=True)
    scaled = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.nn.functional.normalize(scaled, dim=-1)


def maxsim(query: torch.Tensor, documents: list) -> torch.Tensor:
    """Late-interaction scores of a query's multi-vector embeddings (q, D) against each
    document's (d_i, D): for each query vector its largest dot product with the document's,
    averaged over the query's vectors (FlagEmbedding's BGE-M3 colbert_score), in float64."""
    query = query.double()
    return torch.stack([(query @ d.double().T).max(dim=1).values.mean() for d in documents])
