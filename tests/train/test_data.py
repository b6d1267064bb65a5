"""The book's pretraining data rules: paragraphs, vocabulary, NSP pairs, MLM masking, padding."""

import pytest
import torch

from pybert.tokenization import Vocab
from pybert.train.data import (build_vocab, builtin_corpus, load_corpus, make_pretraining_data,
                               read_plain_text, read_wikitext)

from helpers import WIKITEXT


def test_vocab_order_and_min_freq():
    sentences = [["b", "a", "c"], ["a", "b", "d"], ["c", "a", "b"], ["e"]]
    vocab = Vocab(sentences, min_freq=2, reserved_tokens=["<pad>", "<mask>"])
    # a and b: 3 each (b seen first), c: 2, d and e below min_freq
    assert vocab.idx_to_token == ["<unk>", "<pad>", "<mask>", "b", "a", "c"]
    assert vocab["a"] == 4 and vocab["zzz"] == 0 and vocab[["c", "d"]] == [5, 0]
    assert vocab.to_tokens([3, 5]) == ["b", "c"]


def test_wikitext_paragraph_rule(tmp_path):
    text = (" = Heading = \n"
            " \n"
            " One sentence only . \n"          # two parts on the raw line: kept, 1 sentence
            " First one . Second One . Third \n"
            " no period here \n")
    (tmp_path / "x.tokens").write_text(text)
    paragraphs = read_wikitext(tmp_path / "x.tokens")
    assert paragraphs == [[["one", "sentence", "only", "."]],
                          [["first", "one"], ["second", "one"], ["third"]]]


def test_plain_text_is_normalised(tmp_path):
    (tmp_path / "corpus.txt").write_text("Hello, World. It's fine.\nOne line only\n")
    assert read_plain_text(tmp_path / "corpus.txt") == [
        [["hello", ",", "world"], ["it's", "fine", "."]]]


def test_builtin_corpus_is_real_text():
    paragraphs = builtin_corpus()
    assert len(paragraphs) > 500
    words = sum(len(s) for p in paragraphs for s in p)
    assert words > 30_000
    vocab = build_vocab(paragraphs)
    assert vocab.idx_to_token[:5] == ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]
    assert "the" in vocab.token_to_idx


@pytest.fixture(scope="module")
def corpus_and_data():
    corpus = load_corpus(None, seed=0)
    vocab = build_vocab(corpus.train)
    data = make_pretraining_data(corpus.train, vocab, max_len=48, seed=1)
    return corpus, vocab, data


def test_shapes_and_padding(corpus_and_data):
    _, vocab, data = corpus_and_data
    n = len(data)
    assert n > 1000
    assert data.tokens.shape == (n, 48) and data.segments.shape == (n, 48)
    assert data.pred_positions.shape == (n, round(48 * 0.15)) == data.mlm_weights.shape
    assert data.valid_lens.dtype == torch.float32
    lengths = data.valid_lens.long()
    beyond = torch.arange(48)[None, :] >= lengths[:, None]
    assert bool((data.tokens[beyond] == vocab["<pad>"]).all())
    assert bool((data.segments[beyond] == 0).all())
    # <cls> first, <sep> last, exactly two <sep>
    assert bool((data.tokens[:, 0] == vocab["<cls>"]).all())
    assert bool((data.tokens[torch.arange(n), lengths - 1] == vocab["<sep>"]).all())
    assert bool(((data.tokens == vocab["<sep>"]).sum(1) == 2).all())
    # segments: 0 through the first <sep>, 1 after it up to the end
    first_sep = (data.tokens == vocab["<sep>"]).int().argmax(1)
    pos = torch.arange(48)[None, :]
    expected = ((pos > first_sep[:, None]) & ~beyond).long()
    assert torch.equal(data.segments, expected)


def test_prediction_slots(corpus_and_data):
    _, vocab, data = corpus_and_data
    lengths = data.valid_lens.long()
    real = data.mlm_weights.bool()
    assert torch.equal(real.sum(1), torch.clamp(torch.round(lengths * 0.15), min=1).long())
    # padded slots: position 0, label 0, weight 0
    assert bool((data.pred_positions[~real] == 0).all())
    assert bool((data.mlm_labels[~real] == 0).all())
    for row in range(0, len(data), 97):
        positions = data.pred_positions[row][real[row]]
        assert torch.equal(positions, positions.sort().values)
        assert len(set(positions.tolist())) == len(positions)
        assert bool(((positions >= 1) & (positions < lengths[row] - 1)).all())
        labels = data.mlm_labels[row][real[row]]
        assert not any(t in (vocab["<cls>"], vocab["<sep>"], vocab["<pad>"]) for t in
                       labels.tolist())


def test_masking_ratios(corpus_and_data):
    corpus, vocab, _ = corpus_and_data
    shown, labels = [], []
    for seed in (11, 12, 13):
        data = make_pretraining_data(corpus.train, vocab, max_len=48, seed=seed)
        real = data.mlm_weights.bool()
        rows = torch.arange(len(data))[:, None].expand_as(real)
        shown.append(data.tokens[rows[real], data.pred_positions[real]])
        labels.append(data.mlm_labels[real])
    shown, labels = torch.cat(shown), torch.cat(labels)
    assert len(labels) > 12000
    masked = float((shown == vocab["<mask>"]).float().mean())
    kept = float(((shown == labels) & (labels != vocab["<mask>"])).float().mean())
    other = 1.0 - masked - kept
    # Binomial standard errors here are below 0.004: these bounds are > 7 sigma.
    assert abs(masked - 0.8) < 0.03
    assert abs(kept - 0.1) < 0.03
    assert abs(other - 0.1) < 0.03


def test_nsp_balance(corpus_and_data):
    _, _, data = corpus_and_data
    assert abs(float(data.nsp_labels.float().mean()) - 0.5) < 0.05


def test_reproducible(corpus_and_data):
    corpus, vocab, data = corpus_and_data
    again = make_pretraining_data(corpus.train, vocab, max_len=48, seed=1)
    other = make_pretraining_data(corpus.train, vocab, max_len=48, seed=2)
    assert torch.equal(again.tokens, data.tokens) and torch.equal(again.nsp_labels,
                                                                    data.nsp_labels)
    assert not torch.equal(other.tokens[:100], data.tokens[:100])


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nowhere")
    (tmp_path / "empty.txt").write_text("just one line\n")
    with pytest.raises(ValueError, match="paragraphs"):
        load_corpus(tmp_path / "empty.txt")
    vocab = Vocab([["a"]], reserved_tokens=["<pad>", "<mask>", "<cls>", "<sep>"])
    with pytest.raises(ValueError, match="max_len"):
        make_pretraining_data([[["a"], ["a"]]], vocab, max_len=3, seed=0)


@pytest.mark.skipif(not (WIKITEXT / "wiki.train.tokens").exists(),
                    reason="the shared WikiText-2 is not here")
def test_shared_wikitext2():
    corpus = load_corpus(WIKITEXT)
    assert corpus.text_format == "wikitext" and len(corpus.train) > 15000
    vocab = build_vocab(corpus.train)
    assert len(vocab) == 20256
    data = make_pretraining_data(corpus.train, vocab, max_len=64, seed=0)
    assert len(data) > 40000
