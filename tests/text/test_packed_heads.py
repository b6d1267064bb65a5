"""Every task runs packed: the MLM and NSP heads too (no padded engine call), with the answers
of the padded reference."""

import numpy as np
import pytest
import torch

import pybert

from helpers import TEXT_CONFIG, VOCAB, random_model


@pytest.fixture
def model():
    return pybert.TextModel.from_model(random_model(TEXT_CONFIG, seed=3), VOCAB)


def padded_reference(model, encoded, positions=None, nsp=False):
    """The padded engine call of one sequence at a time: (mlm logits, nsp logits)."""
    out = []
    for i, (ids, segments) in enumerate(encoded):
        pred = None if positions is None else torch.tensor([positions[i]])
        _, mlm, nsp_logits = model.engine(torch.tensor([ids]), torch.tensor([segments]),
                                          torch.tensor([len(ids)]), pred)
        out.append((mlm, nsp_logits))
    return out


def test_the_heads_never_pad(model, monkeypatch):
    texts = ["the cat sat on the mat", "a dog", "it is red . the dog ran"]
    pairs = [("the cat sat", "it is red"), ("a dog ran", "the mat"), ("red", "cat")]
    masked = ["the <mask> sat on the <mask>", "a <mask>", "<mask>"]
    encoded_pairs = model.tokenizer.encode_all(pairs)
    expected_nsp = [torch.softmax(nsp.double(), -1)[0, model.nsp_is_next_label].item()
                    for _, nsp in padded_reference(model, encoded_pairs)]
    encoded_masked = model.tokenizer.encode_all(masked)
    masks = model.mask_positions(encoded_masked)
    expected_words = [torch.softmax(mlm.float(), -1)[0].topk(3, dim=-1)
                      for mlm, _ in padded_reference(model, encoded_masked, masks)]

    def refuse(*args, **kwargs):
        raise AssertionError("a padded engine call")

    monkeypatch.setattr(type(model.engine), "__call__", refuse)
    monkeypatch.setattr(type(model.engine), "encode", refuse)
    np.testing.assert_allclose(model.next_sentence(pairs), expected_nsp, rtol=1e-5)
    filled = model.fill_mask(masked, k=3)
    for text, top in zip(filled, expected_words):
        for m, guesses in enumerate(text):
            assert [w for w, _ in guesses] == [model.tokenizer.id_to_token(int(i))
                                               for i in top.indices[m]]
            np.testing.assert_allclose([p for _, p in guesses], top.values[m].numpy(),
                                       rtol=1e-5)
    sparse = model.encode_sparse(texts)
    assert len(sparse) == 3 and all(len(v.indices) > 0 for v in sparse)
