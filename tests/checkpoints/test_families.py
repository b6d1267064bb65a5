"""The family registry: every file of pybert/checkpoint/families that defines FAMILY is
served, and the recipe for a new family (one Architecture value, nothing else changed) is
dry-run with a toy family."""

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("transformers")

import pybert  # noqa: E402
from pybert.checkpoint import CheckpointError, families  # noqa: E402

from hf_models import make_family_dir, sentences  # noqa: E402


def test_every_family_file_is_served():
    names = [a.name for a in families.ARCHITECTURES]
    assert names[0] == "BERT" and len(names) == len(set(names))
    assert set(names) == {"BERT", "DistilBERT", "ELECTRA", "GTE", "ModernBERT", "NomicBERT",
                          "RoBERTa"}
    types = [t for a in families.ARCHITECTURES for t in a.model_types]
    assert len(types) == len(set(types))


def test_a_new_family_is_one_architecture_value(tmp_path):
    """A toy family ("toybert": BERT's weights under another model_type, its config read by
    a reader of its own) served by registering its Architecture: no other code changes."""
    bert = families.family("BERT")
    seen = []

    def read_toy_config(hf, where):
        seen.append(hf["model_type"])
        return bert.read_config({**hf, "model_type": "bert"}, where)

    toy = dataclasses.replace(bert, name="ToyBERT", model_types=("toybert",),
                              read_config=read_toy_config)
    make_family_dir(tmp_path / "bert", "bert")
    texts = [" ".join(t.split()[:12]) for t in sentences(6, seed=2)]
    expected = pybert.TextModel.load(tmp_path / "bert").encode(texts)
    (tmp_path / "bert" / "config.json").write_text(json.dumps(
        {**json.loads((tmp_path / "bert" / "config.json").read_text()),
         "model_type": "toybert"}))
    with pytest.raises(CheckpointError, match="model_type 'toybert' is not served"):
        pybert.TextModel.load(tmp_path / "bert")
    families.register(toy)
    try:
        model = pybert.TextModel.load(tmp_path / "bert")
        assert model.architecture == "ToyBERT" and seen == ["toybert"]
        np.testing.assert_allclose(model.encode(texts), expected, rtol=1e-6, atol=1e-7)
        with pytest.raises(ValueError, match="served already"):
            families.register(toy)
    finally:
        families.ARCHITECTURES.remove(toy)
