"""The eager reference model: d2l's shapes, state_dict keys and numbers."""

import pytest
import torch

from pybert.config import BertConfig
from pybert.d2l import config_from_model, expected_state_shapes
from pybert.model import BERTModel, get_tokens_and_segments

from helpers import random_batch
from d2l_book import load_book_bert

BOOK = load_book_bert()
needs_book = pytest.mark.skipif(BOOK is None, reason="d2l 0.17.6 is not installed")

# The book's example: vocab 10000, hidden 768, ffn 1024, 4 heads, 2 layers.
EXAMPLE_ARGS = (10000, 768, [768], 768, 1024, 4, 2, 0.2)
EXAMPLE_KW = dict(key_size=768, query_size=768, value_size=768, hid_in_features=768,
                  mlm_in_features=768, nsp_in_features=768)
# The book's pretraining config: hidden 128, ffn 256, 2 heads, 2 layers.
TRAIN_ARGS = (20256, 128, [128], 128, 256, 2, 2, 0.2)
TRAIN_KW = dict(key_size=128, query_size=128, value_size=128, hid_in_features=128,
                mlm_in_features=128, nsp_in_features=128)


def test_example_shapes():
    net = BERTModel(*EXAMPLE_ARGS, **EXAMPLE_KW)
    tokens = torch.randint(0, 10000, (2, 8))
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    encoded, mlm, nsp = net(tokens, segments, None, torch.tensor([[1, 5, 2], [6, 1, 5]]))
    assert encoded.shape == (2, 8, 768)
    assert mlm.shape == (2, 3, 10000)
    assert nsp.shape == (2, 2)
    assert net(tokens, segments)[1] is None


def test_state_dict_keys_match_the_book():
    net = BERTModel(*TRAIN_ARGS, max_len=64, **TRAIN_KW)
    config = config_from_model(net)
    assert config == BertConfig(20256, 128, 256, 2, 2, max_len=64, dropout=0.2)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == expected_state_shapes(config)
    assert "encoder.blks.1.attention.W_o.bias" in shapes
    assert "mlm.mlp.3.weight" in shapes and "hidden.0.weight" in shapes


def test_get_tokens_and_segments():
    tokens, segments = get_tokens_and_segments(["a", "b"], ["c"])
    assert tokens == ["<cls>", "a", "b", "<sep>", "c", "<sep>"]
    assert segments == [0, 0, 0, 0, 1, 1]
    assert get_tokens_and_segments(["x"]) == (["<cls>", "x", "<sep>"], [0, 0, 0])


def test_positional_embeddings_learn():
    net = BERTModel(50, 16, [16], 16, 32, 2, 1, 0.0, max_len=10, key_size=16, query_size=16,
                    value_size=16, hid_in_features=16, mlm_in_features=16, nsp_in_features=16)
    tokens = torch.randint(0, 50, (3, 6))
    encoded, _, nsp = net(tokens, torch.zeros_like(tokens), torch.tensor([6, 4, 2]))
    (encoded.sum() + nsp.sum()).backward()
    grad = net.encoder.pos_embedding.grad
    assert grad is not None and grad[0, :6].abs().sum() > 0
    assert grad[0, 6:].abs().sum() == 0


def test_two_dimensional_valid_lens():
    """d2l's masked_softmax also takes one length per query; ours follows it."""
    torch.manual_seed(0)
    net = BERTModel(30, 16, [16], 16, 32, 2, 1, 0.0, key_size=16, query_size=16, value_size=16,
                    hid_in_features=16, mlm_in_features=16, nsp_in_features=16).eval()
    tokens = torch.randint(0, 30, (2, 5))
    lens = torch.tensor([3, 5])
    per_query = lens[:, None].expand(2, 5).contiguous()
    with torch.no_grad():
        a = net(tokens, torch.zeros_like(tokens), lens)[0]
        b = net(tokens, torch.zeros_like(tokens), per_query)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_softmax_in_half_precision(dtype):
    """The book's masked score, -1e6, overflows float16: a half-precision model (bench_gpu's
    eager-fp16 peer) masks with the dtype's most negative value instead, to the same result."""
    from pybert.model import masked_softmax

    torch.manual_seed(0)
    scores = torch.randn(3, 4, 6)
    lens = torch.tensor([6, 2, 4])
    expected = masked_softmax(scores, lens)
    actual = masked_softmax(scores.to(dtype), lens)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected, rtol=0, atol=1e-2)
    assert float(actual[1, :, 2:].abs().max()) == 0.0


@needs_book
@pytest.mark.parametrize("args,kwargs,max_len", [(EXAMPLE_ARGS, EXAMPLE_KW, 1000),
                                                 (TRAIN_ARGS, TRAIN_KW, 64)])
def test_book_state_dict_loads_strict_and_matches(args, kwargs, max_len):
    torch.manual_seed(1)
    book_net = BOOK.BERTModel(*args, max_len=max_len, **kwargs).eval()
    net = BERTModel(*args, max_len=max_len, **kwargs).eval()
    net.load_state_dict(book_net.state_dict(), strict=True)
    book_net.load_state_dict(net.state_dict(), strict=True)
    config = config_from_model(net)
    tokens, segments, valid_lens, pred_positions = random_batch(config, 3, 12, seed=2)
    with torch.no_grad():
        expected = book_net(tokens, segments, valid_lens, pred_positions)
        actual = net(tokens, segments, valid_lens, pred_positions)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


@needs_book
def test_book_input_format_matches():
    assert BOOK.get_tokens_and_segments(["a", "b"], ["c"]) == \
        get_tokens_and_segments(["a", "b"], ["c"])
