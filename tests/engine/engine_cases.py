"""The engine test cases shared by the CPU and CUDA engine tests: configs (odd sizes: head dim
8, 32 and 192, hidden 96, one head, eps 1e-12), batch shapes (seq len 1 too) and the fp32 check
against the float64 eager model."""

import torch

from pybert.config import BertConfig

from helpers import rel_l2, valid_mask

FP32_BOUND = 1e-5

CONFIGS = {
    # The book's example (head dim 192) and its pretraining config (head dim 64).
    "book-example": BertConfig(10000, 768, 1024, 4, 2),
    "book-training": BertConfig(20256, 128, 256, 2, 2, max_len=64),
    "head-dim-8": BertConfig(57, 32, 48, 4, 3, max_len=40),
    "hidden-96-head-dim-32": BertConfig(101, 96, 200, 3, 2, max_len=70),
    "one-head": BertConfig(33, 24, 40, 1, 1, max_len=16),
    "eps-1e-12": BertConfig(64, 64, 128, 4, 2, max_len=32, layer_norm_eps=1e-12),
}


SHAPES = {  # (batch, seq_len) per config
    "book-example": [(2, 8), (3, 33)],
    "book-training": [(8, 64), (5, 17)],
    "head-dim-8": [(4, 1), (6, 40)],
    "hidden-96-head-dim-32": [(7, 23)],
    "one-head": [(1, 1), (3, 16)],
    "eps-1e-12": [(2, 32)],
}


CASES = [(name, b, s) for name, shapes in SHAPES.items() for b, s in shapes]


def assert_matches(engine_out, ref_out, valid_lens, batch, seq_len):
    encoded, mlm, nsp = engine_out
    ref_encoded, ref_mlm, ref_nsp = ref_out
    mask = valid_mask(valid_lens, batch, seq_len)
    assert encoded.dtype == torch.float32 and encoded.shape == ref_encoded.shape
    assert rel_l2(encoded[mask], ref_encoded[mask]) <= FP32_BOUND
    assert torch.count_nonzero(encoded[~mask]) == 0, "padded positions must be zeros"
    assert rel_l2(nsp, ref_nsp) <= FP32_BOUND
    if ref_mlm is None:
        assert mlm is None
    else:
        assert mlm.shape == ref_mlm.shape
        assert rel_l2(mlm, ref_mlm) <= FP32_BOUND


GPU_CONFIGS = dict(CONFIGS, **{
    "head-dim-24": BertConfig(77, 72, 100, 3, 2, max_len=300),     # % 8, not % 16
    "head-dim-20-fallback": BertConfig(77, 60, 100, 3, 2, max_len=40),
    "head-dim-256": BertConfig(99, 512, 600, 2, 1, max_len=200),
})


GPU_CASES = CASES + [("head-dim-24", 6, 300), ("head-dim-24", 3, 1),
                     ("head-dim-20-fallback", 5, 40), ("head-dim-256", 4, 200)]
