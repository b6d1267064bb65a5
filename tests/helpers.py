"""What the tests share: error bounds, the float64 reference, random models and batches, the
small text model's vocabulary and texts, and where the shared corpus lies. (Fixtures are in
conftest.py.)"""

import copy
import random
from pathlib import Path

import torch

from pybert.config import BertConfig
from pybert.tokenization import BERT_RESERVED_TOKENS, Vocab

# The shared WikiText-2 (tests that need it skip where it is absent).
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"

# Relative L2 error bounds on random inputs, by the dtype the engine computes in.
BOUNDS = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# int8 weights and per-call activations (CPU): encodings and logits against float64.
INT8_ENCODING_BOUND = 2e-2
INT8_LOGIT_BOUND = 1e-1


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, computed in float64."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.norm()
    if scale == 0:  # e.g. a ReLU of all-negative values: compare absolutely
        return float(actual.norm())
    return float((actual - expected).norm() / scale)


def random_model(config: BertConfig, seed: int = 0):
    """An eval-mode eager BERTModel whose every weight is random (LayerNorms too, so that a
    kernel that ignores gamma or beta fails)."""
    torch.manual_seed(seed)
    net = config.build_model()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("ln.weight") or name == "mlm.mlp.2.weight":
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("ln.bias") or name == "mlm.mlp.2.bias":
                p.copy_(0.2 * torch.randn_like(p))
    return net.eval()


def random_batch(config: BertConfig, batch: int, seq_len: int, seed: int = 0,
                 num_preds: int = 3, full: bool = False):
    """tokens, segments, valid_lens (float32, as the book passes them), pred_positions inside
    each sequence's valid tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)
    if full:
        valid_lens = torch.full((batch,), seq_len)
    else:
        valid_lens = torch.randint(1, seq_len + 1, (batch,), generator=g)
        valid_lens[0] = seq_len
    split = (torch.rand(batch, generator=g) * valid_lens).long()
    segments = (torch.arange(seq_len)[None, :] >= split[:, None]).long()
    pred_positions = (torch.rand(batch, num_preds, generator=g) * valid_lens[:, None]).long()
    return tokens, segments, valid_lens.float(), pred_positions


def reference_forward(net, tokens, segments, valid_lens, pred_positions):
    """The eager model in float64: the reference every engine output is held to."""
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        vl = None if valid_lens is None else valid_lens.double()
        return ref(tokens, segments, vl, pred_positions)


def valid_mask(valid_lens, batch, seq_len):
    if valid_lens is None:
        return torch.ones(batch, seq_len, dtype=torch.bool)
    return torch.arange(seq_len)[None, :] < valid_lens[:, None]


# A small word-level text model: its words, vocabulary and config.
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", ",", ".", "it", "is", "red"]
VOCAB = Vocab.from_tokens(["<unk>", *BERT_RESERVED_TOKENS, *WORDS])
TEXT_CONFIG = BertConfig(len(VOCAB), 32, 48, 4, 2, max_len=24)


def random_texts(n, seed=0):
    """n texts and (text_a, text_b) pairs of WORDS (and an unknown word), of 0 to 15 words."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = [rng.choice(WORDS + ["zebra"]) for _ in range(rng.randint(0, 15))]
        text = " ".join(words).capitalize()
        if i % 3 == 0:
            other = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            texts.append((text, other))
        else:
            texts.append(text)
    return texts


def write_txt(path, items):
    """A .txt input of a job: a text per line, a tab between the two texts of a pair."""
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write("\t".join(item) if isinstance(item, tuple) else item)
            f.write("\n")
