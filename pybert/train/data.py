"""The book's BERT pretraining data: paragraphs -> NSP sentence pairs -> MLM masking -> padding.

Faithful to d2l 0.17.6 (see shared/docs/d2l-bert.md):
- a paragraph is a line with at least two sentences (split on " . "), lower-cased;
- the vocabulary keeps words seen >= 5 times, after ``<unk>`` and the reserved tokens;
- NSP: each consecutive sentence pair keeps its true next sentence with p = 0.5 (label 1),
  else takes a random sentence of a random paragraph (label 0); pairs longer than max_len
  (with ``<cls>`` and two ``<sep>``) are dropped;
- MLM: max(1, round(0.15 * len)) positions among the non-``<cls>``/``<sep>`` tokens; each
  becomes ``<mask>`` (p = 0.8), stays (p = 0.1) or becomes a random vocabulary entry (p = 0.1);
- padding to max_len with ``<pad>``; round(0.15 * max_len) prediction slots, padded with
  position 0, label 0 and weight 0.

The masking runs vectorised in numpy over the whole split, so preparing WikiText-2 takes
seconds. Every random choice comes from one seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tokenization.vocab import BERT_RESERVED_TOKENS, Vocab
from ..tokenization.words import normalize_text, split_sentences, split_words

__all__ = ["Corpus", "PretrainingData", "load_corpus", "read_wikitext", "read_plain_text",
           "builtin_corpus", "build_vocab", "make_pretraining_data"]

MASK_RATE = 0.15


@dataclass
class Corpus:
    """Tokenised paragraphs (paragraph -> sentences -> words) for training and evaluation."""

    train: list[list[list[str]]]
    test: list[list[list[str]]]
    text_format: str  # "wikitext" (pre-tokenised) or "plain" (normalised with normalize_text)
    source: str


def _paragraphs_from_lines(lines) -> list[list[list[str]]]:
    # The book tests the raw line (trailing " . \n" included) for two parts, then splits the
    # stripped line: a one-sentence paragraph is kept (for the vocabulary and as a random next
    # sentence) though it gives no pair of its own.
    return [[split_words(s) for s in split_sentences(line)]
            for line in lines if len(line.split(" . ")) >= 2]


def read_wikitext(path: str | Path) -> list[list[list[str]]]:
    """Paragraphs of a ``wiki.*.tokens`` file, by the book's rule (unshuffled)."""
    with open(path, encoding="utf-8") as f:
        return _paragraphs_from_lines(f)


def read_plain_text(path: str | Path) -> list[list[list[str]]]:
    """Paragraphs of a plain-text file, one paragraph per line."""
    with open(path, encoding="utf-8") as f:
        return _paragraphs_from_lines(normalize_text(line) + " \n" for line in f)


def builtin_corpus() -> list[list[list[str]]]:
    """Paragraphs of the Python documentation topics that ship with every Python
    (``pydoc_data.topics``): the default corpus when no data is given. Code samples (indented
    lines) and headings are left out; each remaining block of text is a paragraph."""
    from pydoc_data.topics import topics

    blocks = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            lines = block.split("\n")
            if any(line.startswith(" ") for line in lines) or set(block.strip()) <= set("*=-"):
                continue
            blocks.append(normalize_text(" ".join(lines)) + " \n")
    return _paragraphs_from_lines(blocks)


def load_corpus(data: str | Path | None, seed: int = 0, test_fraction: float = 0.05) -> Corpus:
    """Read a corpus: None (the built-in one), a WikiText-2 folder (wiki.train.tokens and
    wiki.test.tokens), a ``.tokens`` file, or a plain-text file (one paragraph per line).
    Without a test split, ``test_fraction`` of the paragraphs are held out."""
    if data is None:
        paragraphs, text_format, source = builtin_corpus(), "plain", "pydoc_data.topics"
    else:
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"--data {path} does not exist")
        if path.is_dir():
            train, test = path / "wiki.train.tokens", path / "wiki.test.tokens"
            if not train.is_file():
                raise FileNotFoundError(f"{path} has no wiki.train.tokens")
            test_paragraphs = read_wikitext(test) if test.is_file() else None
            paragraphs, text_format, source = read_wikitext(train), "wikitext", str(path)
            if test_paragraphs is not None:
                random.Random(seed).shuffle(paragraphs)
                return Corpus(paragraphs, test_paragraphs, text_format, source)
        elif path.suffix == ".tokens":
            paragraphs, text_format, source = read_wikitext(path), "wikitext", str(path)
        else:
            paragraphs, text_format, source = read_plain_text(path), "plain", str(path)
    if len(paragraphs) < 2:
        raise ValueError(f"{source} has {len(paragraphs)} paragraphs; pretraining needs more")
    random.Random(seed).shuffle(paragraphs)
    num_test = max(1, int(len(paragraphs) * test_fraction))
    return Corpus(paragraphs[num_test:], paragraphs[:num_test], text_format, source)


def build_vocab(paragraphs, min_freq: int = 5) -> Vocab:
    sentences = (sentence for paragraph in paragraphs for sentence in paragraph)
    return Vocab(sentences, min_freq=min_freq, reserved_tokens=BERT_RESERVED_TOKENS)


@dataclass
class PretrainingData:
    """Padded model inputs of every example, as tensors (N rows)."""

    tokens: torch.Tensor          # (N, max_len) int64
    segments: torch.Tensor        # (N, max_len) int64
    valid_lens: torch.Tensor      # (N,) float32, as the book passes them
    pred_positions: torch.Tensor  # (N, P) int64
    mlm_weights: torch.Tensor     # (N, P) float32, 1 for real prediction slots
    mlm_labels: torch.Tensor      # (N, P) int64
    nsp_labels: torch.Tensor      # (N,) int64, 1 = b follows a

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, index) -> tuple[torch.Tensor, ...]:
        return (self.tokens[index], self.segments[index], self.valid_lens[index],
                self.pred_positions[index], self.mlm_weights[index], self.mlm_labels[index],
                self.nsp_labels[index])


def _nsp_pairs(paragraphs, max_len: int, rng: random.Random):
    """(tokens_a, tokens_b, is_next) for every consecutive sentence pair that fits."""
    pairs = []
    for paragraph in paragraphs:
        for a, b in zip(paragraph, paragraph[1:]):
            if rng.random() < 0.5:
                is_next = True
            else:
                b, is_next = rng.choice(rng.choice(paragraphs)), False
            if len(a) + len(b) + 3 <= max_len:
                pairs.append((a, b, is_next))
    return pairs


def make_pretraining_data(paragraphs, vocab: Vocab, max_len: int, seed: int) -> PretrainingData:
    """NSP pairs, MLM masking and padding of the whole corpus, seeded by ``seed``."""
    if max_len < 5:
        raise ValueError(f"max_len must be at least 5 (<cls> a <sep> b <sep>), got {max_len}")
    pairs = _nsp_pairs(paragraphs, max_len, random.Random(seed))
    if not pairs:
        raise ValueError(f"no sentence pair fits in max_len={max_len}")
    n = len(pairs)
    pad, cls, sep, mask = (vocab[t] for t in ("<pad>", "<cls>", "<sep>", "<mask>"))
    tokens = np.full((n, max_len), pad, dtype=np.int64)
    segments = np.zeros((n, max_len), dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    for i, (a, b, _) in enumerate(pairs):
        ids = [cls, *vocab[a], sep, *vocab[b], sep]
        tokens[i, : len(ids)] = ids
        segments[i, len(a) + 2: len(ids)] = 1
        lengths[i] = len(ids)
    nsp_labels = np.array([is_next for _, _, is_next in pairs], dtype=np.int64)

    # MLM: a uniformly random subset of the candidates = the candidates with the smallest
    # random keys; non-candidates get key 2 so they sort last.
    rng = np.random.default_rng(seed)
    max_preds = round(max_len * MASK_RATE)
    num_preds = np.maximum(1, np.round(lengths * MASK_RATE)).astype(np.int64)
    position = np.arange(max_len)[None, :]
    candidate = (position < lengths[:, None]) & (tokens != cls) & (tokens != sep)
    keys = np.where(candidate, rng.random((n, max_len)), 2.0)
    chosen = np.argsort(keys, axis=1, kind="stable")[:, :max_preds]
    slot = np.arange(max_preds)[None, :]
    real = slot < num_preds[:, None]
    # Sort each row's chosen positions; padded slots (position max_len) sort last.
    chosen = np.sort(np.where(real, chosen, max_len), axis=1)
    pred_positions = np.where(real, chosen, 0)
    rows = np.arange(n)[:, None]
    mlm_labels = np.where(real, tokens[rows, pred_positions], 0)

    choice = rng.random((n, max_preds))
    keep_or_random = rng.random((n, max_preds))
    random_ids = rng.integers(0, len(vocab), (n, max_preds))
    replacement = np.where(choice < 0.8, mask,
                           np.where(keep_or_random < 0.5, mlm_labels, random_ids))
    masked_tokens = tokens.copy()
    r, c = np.nonzero(real)
    masked_tokens[r, pred_positions[r, c]] = replacement[r, c]

    return PretrainingData(
        tokens=torch.from_numpy(masked_tokens),
        segments=torch.from_numpy(segments),
        valid_lens=torch.from_numpy(lengths.astype(np.float32)),
        pred_positions=torch.from_numpy(pred_positions.astype(np.int64)),
        mlm_weights=torch.from_numpy(real.astype(np.float32)),
        mlm_labels=torch.from_numpy(mlm_labels.astype(np.int64)),
        nsp_labels=torch.from_numpy(nsp_labels),
    )
