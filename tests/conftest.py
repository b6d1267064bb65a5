import copy

import pytest
import torch

from pybert.config import BertConfig


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=0,
                     help="examples per fuzz property (default: a few seconds' worth)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Relative L2 error bounds on random inputs, by the dtype the engine computes in.
BOUNDS = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


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
