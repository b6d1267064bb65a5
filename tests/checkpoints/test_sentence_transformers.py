"""Directories written by the installed sentence-transformers itself (6.x writes module types
under ``sentence_transformers.base`` and ``"pooling_mode": "mean"``; the hand-written 5.x style
is in test_huggingface.py): pybert.encode gives SentenceTransformer.encode's vectors."""

import json

import numpy as np
import pytest
import torch

import pybert
from pybert.checkpoint import CheckpointError

from helpers import rel_l2

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.models import Normalize, Pooling, Transformer  # noqa: E402

from hf_models import make_hf_dir, sentences  # noqa: E402


def saved_by_sentence_transformers(folder, pooling: str, normalize: bool, max_seq_length=40):
    """A random BERT wrapped by SentenceTransformer (Transformer, Pooling, Normalize) and saved
    by its own save(); the SentenceTransformer is returned too."""
    make_hf_dir(folder / "hf", "base")
    transformer = Transformer(str(folder / "hf"), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), pooling)]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(folder / "st"))
    return model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_a_directory_saved_by_sentence_transformers(tmp_path, pooling, normalize):
    model = saved_by_sentence_transformers(tmp_path, pooling, normalize)
    texts = sentences(40, seed=6)
    expected = model.encode(texts, convert_to_numpy=True, batch_size=8)
    loaded = pybert.TextModel.load(tmp_path / "st")
    assert (loaded.pooling, loaded.normalize) == (pooling, normalize)
    assert loaded.tokenizer.max_len == 40  # tokenizer_config.json's model_max_length
    with pytest.warns(UserWarning, match="longer than max_len=40"):
        vectors = pybert.encode(tmp_path / "st", texts + [" ".join(texts)])
    # SentenceTransformer computes in float32 too: held to the ecosystem parity bound (relative
    # L2 1e-4, cosine 1 - 1e-5), not to the float64 reference's 1e-5.
    assert rel_l2(torch.from_numpy(vectors[:-1]), torch.from_numpy(expected)) <= 1e-4
    cosine = (vectors[:-1] * expected).sum(1) / (np.linalg.norm(vectors[:-1], axis=1)
                                                 * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 1 - 1e-5


def test_a_pooling_it_does_not_serve_is_refused(tmp_path):
    saved_by_sentence_transformers(tmp_path, "mean", False)
    config = tmp_path / "st" / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pooling_mode": "max"}))
    with pytest.raises(CheckpointError, match=r"pooling \['max'\] is not served"):
        pybert.load(tmp_path / "st")


# -- the other model kinds sentence-transformers saves ------------------------------------------

from hf_models import make_family_dir  # noqa: E402


def _pairs(count=10, seed=5):
    texts = [" ".join(t.split()[:10]) for t in sentences(2 * count, seed=seed)]
    return [(texts[i], texts[count + i]) for i in range(count)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("family,num_labels", [("bert", 1), ("roberta", 1), ("electra", 1),
                                               ("distilbert", 2)])
def test_a_cross_encoder_saved_by_sentence_transformers(tmp_path, family, num_labels):
    from sentence_transformers import CrossEncoder

    make_family_dir(tmp_path / "hf", family, "classify", num_labels=num_labels)
    reference = CrossEncoder(str(tmp_path / "hf"), device="cpu", local_files_only=True)
    reference.save(str(tmp_path / "ce"))
    pairs = _pairs()
    expected = reference.predict(pairs, batch_size=4, convert_to_numpy=True)
    text_model = pybert.TextModel.load(tmp_path / "ce")
    scores = text_model.classify(pairs)
    assert np.abs(scores.reshape(expected.shape) - expected).max() <= 1e-4
    if num_labels == 1:
        query, documents = pairs[0][0], [b for _, b in pairs]
        expected_rank = reference.rank(query, documents, batch_size=4)
        ranked = text_model.rerank(query, documents)
        assert [r["index"] for r in ranked] == [r["corpus_id"] for r in expected_rank]
        assert np.abs(np.array([r["score"] for r in ranked]) -
                      np.array([r["score"] for r in expected_rank])).max() <= 1e-4


@pytest.mark.parametrize("style", ["config.json (4-5)", "config.json (<4)"])
def test_an_older_cross_encoders_activation_is_read(tmp_path, style):
    """Before 6, a CrossEncoder was a plain Hugging Face directory whose config.json named the
    activation (identity here: the scores are the logits)."""
    make_family_dir(tmp_path / "hf", "bert", "classify", num_labels=1)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    name = "torch.nn.modules.linear.Identity"
    if style.startswith("config.json (4"):
        config["sentence_transformers"] = {"activation_fn": name, "version": "5.1.0"}
    else:
        config["sbert_ce_default_activation_function"] = name
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    text_model = pybert.TextModel.load(tmp_path / "hf")
    pairs = _pairs(4)
    assert np.array_equal(text_model.classify(pairs), text_model.classify(pairs, raw_scores=True))
    config["sbert_ce_default_activation_function"] = "os.system"
    config.pop("sentence_transformers", None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="activation 'os.system' is not served"):
        pybert.TextModel.load(tmp_path / "hf")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_a_sparse_encoder_saved_by_sentence_transformers(tmp_path, family):
    from sentence_transformers import SparseEncoder

    make_family_dir(tmp_path / "hf", family, "mlm")
    reference = SparseEncoder(str(tmp_path / "hf"), device="cpu", local_files_only=True)
    reference.save(str(tmp_path / "splade"))
    texts = [" ".join(t.split()[:20]) for t in sentences(12, seed=8)]
    expected = reference.encode(texts, batch_size=4, convert_to_tensor=True).to_dense()
    text_model = pybert.TextModel.load(tmp_path / "splade")
    assert "sparse" in text_model.tasks
    with pytest.raises(ValueError, match=r"sparse \(SPLADE\) model: its vectors come from "
                                         "encode_sparse"):
        text_model.encode(texts)  # not a CLS vector no one trained, silently
    assert text_model.encode(texts[:2], pooling="cls").shape[0] == 2
    vectors = text_model.encode_sparse(texts)
    for vector, row in zip(vectors, expected):
        dense = torch.zeros_like(row)
        dense[torch.from_numpy(vector.indices)] = torch.from_numpy(vector.values)
        assert np.all(vector.values > 0) and np.all(np.diff(vector.indices) > 0)
        top = torch.topk(row, 10).indices
        assert set(torch.topk(dense, 10).indices.tolist()) == set(top.tolist())
        assert float(((dense[top] - row[top]).abs() / row[top]).max()) <= 1e-4
        assert rel_l2(dense, row) <= 1e-5
    single = text_model.encode_sparse(texts[0])
    assert np.array_equal(single.indices, vectors[0].indices)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dense_prompts_and_dimensions_match_sentence_transformers(tmp_path):
    """A RoBERTa with mean pooling, a Dense projection (Tanh), Normalize and prompts, saved by
    SentenceTransformer: the prompt named, the default prompt, and Matryoshka dimensions (cut,
    then normalised)."""
    from sentence_transformers.models import Dense

    make_family_dir(tmp_path / "hf", "roberta", "base")
    transformer = Transformer(str(tmp_path / "hf"), max_seq_length=40)
    torch.manual_seed(3)
    modules = [transformer, Pooling(48, "mean"), Dense(48, 32), Normalize()]
    prompts = {"query": "query: ", "passage": "passage: "}
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                                default_prompt_name="passage")
    model.save(str(tmp_path / "st"))
    texts = [" ".join(t.split()[:12]) for t in sentences(10, seed=2)]
    text_model = pybert.TextModel.load(tmp_path / "st")
    assert text_model.dim == 32 and text_model.default_prompt_name == "passage"
    for options in ({}, {"prompt_name": "query"}, {"prompt": "custom: "}):
        expected = model.encode(texts, convert_to_numpy=True, **options)
        vectors = text_model.encode(texts, **options)
        assert vectors.shape == (10, 32)
        assert rel_l2(torch.from_numpy(vectors), torch.from_numpy(expected)) <= 1e-4
    cut = model.encode(texts, convert_to_numpy=True, truncate_dim=16)
    cut = cut / np.linalg.norm(cut, axis=1, keepdims=True)
    vectors = text_model.encode(texts, dimensions=16)
    assert rel_l2(torch.from_numpy(vectors), torch.from_numpy(cut)) <= 1e-4
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        text_model.encode(texts, prompt_name="nope")
