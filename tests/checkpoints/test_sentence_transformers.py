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
