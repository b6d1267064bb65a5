"""Texts to token ids: d2l's word-level tokenizer and vocabulary, and Hugging Face's tokenizers
(WordPiece, BPE, Unigram, through the ``tokenizers`` package), behind one interface
(``encode_all``, ``id_to_token``, ``pad_id``, ``mask_id``, ``max_len``)."""

from .common import TRUNCATION_SIDES, TRUNCATIONS, TruncationCount, check_side, check_text, \
    check_truncation, text_item, warn_cut
from .huggingface import HuggingFaceTokenizer
from .truncation import TooLong
from .vocab import BERT_RESERVED_TOKENS, Vocab
from .words import (TEXT_FORMATS, WordTokenizer, normalize_text, split_sentences,
                    split_words)

__all__ = ["BERT_RESERVED_TOKENS", "TEXT_FORMATS", "TRUNCATIONS", "TRUNCATION_SIDES", "Vocab",
           "HuggingFaceTokenizer", "TooLong", "TruncationCount", "WordTokenizer", "check_side", "check_text",
           "check_truncation", "normalize_text", "split_sentences", "split_words", "text_item",
           "warn_cut"]
