"""Every bad input gets a clear exception that names the argument, never a crash or a wrong
answer."""

import numpy as np
import pytest
import torch

import pybert
from pybert.config import BertConfig

from helpers import random_model

CONFIG = BertConfig(50, 32, 48, 4, 2, max_len=16)


@pytest.fixture(scope="module")
def engine():
    return pybert.Engine.from_model(random_model(CONFIG))


def good_batch():
    tokens = torch.randint(0, 50, (3, 10))
    segments = torch.zeros_like(tokens)
    return tokens, segments, torch.tensor([10, 4, 7]), torch.tensor([[1, 2], [0, 3], [6, 5]])


def test_the_good_batch_runs(engine):
    encoded, mlm, nsp = engine(*good_batch())
    assert encoded.shape == (3, 10, 32) and mlm.shape == (3, 2, 50) and nsp.shape == (3, 2)


@pytest.mark.parametrize("tokens,match", [
    (torch.randint(0, 50, (10,)), "tokens must have shape"),
    (torch.randint(0, 50, (2, 3, 4)), "tokens must have shape"),
    (torch.zeros(0, 5, dtype=torch.long), "non-empty"),
    (torch.zeros(2, 0, dtype=torch.long), "non-empty"),
    (torch.randint(0, 50, (2, 17)), "max_len 16"),
    (torch.full((2, 5), 50), r"\[0, 50\)"),
    (torch.full((2, 5), -1), r"\[0, 50\)"),
])
def test_bad_tokens(engine, tokens, match):
    with pytest.raises(ValueError, match=match):
        engine(tokens, None)


@pytest.mark.parametrize("tokens", [torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool),
                                    [["a", "b"]]])
def test_tokens_of_the_wrong_type(engine, tokens):
    with pytest.raises(TypeError, match="tokens"):
        engine(tokens, None)


def test_bad_segments(engine):
    tokens, segments, valid_lens, _ = good_batch()
    with pytest.raises(ValueError, match="segments must be 0 or 1"):
        engine(tokens, segments + 2, valid_lens)
    with pytest.raises(ValueError, match="segments must be 0 or 1"):
        engine(tokens, segments - 1, valid_lens)
    with pytest.raises(ValueError, match="segments must have the shape of tokens"):
        engine(tokens, segments[:, :5], valid_lens)
    with pytest.raises(TypeError, match="segments"):
        engine(tokens, segments.float(), valid_lens)


@pytest.mark.parametrize("valid_lens,error,match", [
    (torch.tensor([10, 0, 7]), ValueError, r"valid_lens must be in \[1, seq_len=10\], found 0"),
    (torch.tensor([10, 11, 7]), ValueError, r"valid_lens must be in \[1, seq_len=10\], found 11"),
    (torch.tensor([10, -3, 7]), ValueError, "valid_lens must be in"),
    (torch.tensor([10.0, float("nan"), 7.0]), ValueError, "NaN"),
    (torch.tensor([10.0, float("inf"), 7.0]), ValueError, "NaN or infinity"),
    (torch.tensor([10.0, 4.5, 7.0]), ValueError, "whole numbers"),
    (torch.tensor([10, 4]), ValueError, r"valid_lens must have shape \(batch=3,\)"),
    (torch.full((3, 10), 10), ValueError, "one length per sequence"),
    (torch.tensor([True, True, True]), TypeError, "valid_lens"),
])
def test_bad_valid_lens(engine, valid_lens, error, match):
    tokens, segments, _, _ = good_batch()
    with pytest.raises(error, match=match):
        engine(tokens, segments, valid_lens)


@pytest.mark.parametrize("pred_positions,error,match", [
    (torch.tensor([[1, 10], [0, 3], [6, 5]]), ValueError, r"\[0, seq_len=10\)"),
    (torch.tensor([[1, -1], [0, 3], [6, 5]]), ValueError, r"\[0, seq_len=10\)"),
    (torch.tensor([[1, 2], [0, 4], [6, 5]]), ValueError, r"pred_positions\[1, 1\] = 4 is a padded"),
    (torch.tensor([1, 2, 3]), ValueError, "pred_positions must have shape"),
    (torch.tensor([[1, 2], [0, 3]]), ValueError, "pred_positions must have shape"),
    (torch.tensor([[1.0, 2.0], [0.0, 3.0], [6.0, 5.0]]), TypeError, "pred_positions"),
])
def test_bad_pred_positions(engine, pred_positions, error, match):
    tokens, segments, valid_lens, _ = good_batch()
    with pytest.raises(error, match=match):
        engine(tokens, segments, valid_lens, pred_positions)


def test_unsupported_device_and_dtype():
    net = random_model(CONFIG)
    with pytest.raises(ValueError, match="float32"):
        pybert.Engine.from_model(net, dtype=torch.float16)
    if not pybert._C.cuda_available:
        with pytest.raises(ValueError, match="no CUDA kernels"):
            pybert.Engine.from_model(net, device="cuda")


def test_a_model_the_engine_cannot_run_exactly():
    net = pybert.BERTModel(50, 32, [32], 32, 48, 4, 1, 0.0)  # key_size etc. left at 768
    with pytest.raises(ValueError, match="do not fit"):
        pybert.Engine.from_model(net)
    with pytest.raises(ValueError, match="not a d2l-style BERTModel"):
        pybert.Engine.from_model(torch.nn.Linear(3, 3))


def test_numpy_inputs_are_validated_too(engine):
    tokens, segments, valid_lens, _ = good_batch()
    with pytest.raises(ValueError, match="valid_lens"):
        engine(tokens.numpy(), segments.numpy(), np.array([10, 0, 7]))


@pytest.mark.parametrize("tokens,cu_seqlens,match", [
    (torch.tensor([1, 2, 3]), torch.tensor([0, 2]), "from 0 to len"),
    (torch.tensor([1, 2, 3]), torch.tensor([1, 3]), "from 0 to len"),
    (torch.tensor([1, 2, 3]), torch.tensor([0, 3, 3]), r"in \[1, max_len=16\]"),
    (torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1, 3]), r"in \[1, max_len=16\]"),
    (torch.arange(17) % 50, torch.tensor([0, 17]), r"in \[1, max_len=16\]"),
    (torch.tensor([1, 2, 3]), torch.tensor([3]), "cu_seqlens must have shape"),
    (torch.tensor([[1, 2, 3]]), torch.tensor([0, 3]), "packed tokens must have shape"),
    (torch.tensor([1, 99, 3]), torch.tensor([0, 3]), r"\[0, 50\)"),
])
def test_bad_packed_inputs(engine, tokens, cu_seqlens, match):
    with pytest.raises(ValueError, match=match):
        engine.encode_packed(tokens, cu_seqlens)


def test_bad_packed_segments_and_max_seqlen(engine):
    tokens, cu = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 4])
    with pytest.raises(ValueError, match="segments must be 0 or 1"):
        engine.encode_packed(tokens, cu, torch.tensor([0, 0, 2, 0]))
    with pytest.raises(ValueError, match="max_seqlen 2 must be in"):
        engine.encode_packed(tokens, cu, max_seqlen=2)
    with pytest.raises(TypeError, match="cu_seqlens"):
        engine.encode_packed(tokens, torch.tensor([0.0, 1.0, 4.0]))


@pytest.mark.parametrize("make,match", [
    (lambda t: t.to_sparse(), "dense"),
    (lambda t: t.to("meta"), "meta"),
    (lambda t: torch.nested.nested_tensor([t[0], t[1, :5]]), "nested"),
])
def test_tensors_that_are_not_dense_are_refused(engine, make, match):
    tokens, segments, valid_lens, _ = good_batch()
    with pytest.raises(TypeError, match=match):
        engine(make(tokens), segments, valid_lens)
    with pytest.raises(TypeError, match=match):
        engine(tokens, make(segments), valid_lens)


def test_the_engine_runs_on_its_own_copy_of_the_inputs(engine, monkeypatch):
    """What was checked is what runs: a caller that changes its tensor after the checks (from
    another thread) cannot slip an unchecked id into the forward."""
    import pybert.engine.inputs

    tokens, segments, valid_lens, _ = good_batch()
    expected = engine.encode(tokens, segments, valid_lens)
    checked = pybert.engine.inputs._checked_tokens

    def check_then_change(value, config):
        copy = checked(value, config)
        value.fill_(10**9)  # the caller's tensor changes right after the check
        return copy

    monkeypatch.setattr(pybert.engine.inputs, "_checked_tokens", check_then_change)
    torch.testing.assert_close(engine.encode(tokens.clone(), segments, valid_lens), expected,
                               rtol=0, atol=0)


def test_byte_views_lay_int_tensors_one_after_another():
    """The one-copy upload's layout (PackedBatch.to, the CUDA graphs' staging): int64 parts,
    a missing one, then int32, each viewed back unchanged from one byte buffer."""
    from pybert.engine.inputs import byte_views, layout_bytes

    parts = [torch.randint(-10**12, 10**12, (3, 5)), None, torch.randint(0, 9, (7,)),
             torch.randint(-2**31, 2**31 - 1, (4,), dtype=torch.int32)]
    layout = [None if t is None else (t.dtype, tuple(t.shape)) for t in parts]
    assert layout_bytes(layout) == 15 * 8 + 7 * 8 + 4 * 4
    buffer = torch.zeros(layout_bytes(layout), dtype=torch.uint8)
    for view, t in zip(byte_views(buffer, layout), parts):
        if t is not None:
            view.copy_(t.t().contiguous().t() if t.dim() == 2 else t)  # any strides in
    for view, t in zip(byte_views(buffer.clone(), layout), parts):
        assert view is None if t is None else torch.equal(view, t)
