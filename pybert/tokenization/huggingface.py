"""A Hugging Face checkpoint's tokenizer through the ``tokenizers`` package, whatever its model
(WordPiece, BPE, Unigram) and pair template (``[CLS] a [SEP] b [SEP]``, ``<s> a </s></s> b
</s>``), with the interface of :class:`~pybert.tokenization.words.WordTokenizer`: ids and token
types, longest-first truncation to ``max_len`` from the side the checkpoint names (or the
caller), with a warning or an error."""

from __future__ import annotations

import threading

from .common import TRUNCATION_SIDES, TruncationCount, check_side, check_truncation, \
    split_windows, text_item, warn_cut, wrap_ids

__all__ = ["HuggingFaceTokenizer"]

# A special token's name in tokenizer_config.json and the spellings tried when it names none
# (BERT's, then RoBERTa's).
_SPECIAL = {"pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>"), "cls": ("[CLS]", "<s>"),
            "sep": ("[SEP]", "</s>")}


def _build(tokenizer_json, vocab_tokens, settings):
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    if tokenizer_json is not None:
        return Tokenizer.from_str(tokenizer_json)
    if vocab_tokens is not None:  # a BERT vocab.txt
        return BertWordPieceTokenizer(
            {w: i for i, w in enumerate(vocab_tokens)},
            lowercase=bool(settings.get("do_lower_case", True)),
            strip_accents=settings.get("strip_accents"),
            handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)))._tokenizer
    raise ValueError("a Hugging Face tokenizer needs tokenizer.json or vocab.txt")


class HuggingFaceTokenizer:
    """Built from the text of a tokenizer.json, or from vocab.txt's tokens in id order, with
    tokenizer_config.json's ``settings`` (special tokens, lower-casing, model_max_length,
    truncation_side). ``token_types`` False gives every token type 0 (models that take no token
    type ids: RoBERTa, DistilBERT). Raises ValueError for a tokenizer that cannot be built or
    lacks its classification / separator tokens."""

    def __init__(self, max_len: int, tokenizer_json: str | None = None,
                 vocab_tokens: list[str] | None = None, settings: dict | None = None,
                 token_types: bool = True):
        settings = settings or {}
        try:
            self.tokenizer = _build(tokenizer_json, vocab_tokens, settings)
        except ValueError:
            raise
        except Exception as err:  # the tokenizers package raises plain Exceptions
            raise ValueError(f"the tokenizer cannot be read: {str(err)[:300]}") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        model_max = settings.get("model_max_length")
        if isinstance(model_max, int) and 0 < model_max < max_len:
            max_len = model_max
        self.max_len = max_len
        # One cutting copy per side, made at its first use and never changed after: a shared
        # tokenizer whose truncation setting were switched per call would race between threads
        # (a server's).
        self._cutting: dict = {}
        self._cutting_lock = threading.Lock()
        self.token_types = token_types
        side = settings.get("truncation_side", "right")
        self.truncation_side = side if side in TRUNCATION_SIDES else "right"
        ids = {name: self._special_id(settings.get(f"{name}_token"), spellings)
               for name, spellings in _SPECIAL.items()}
        missing = [name for name in ("cls", "sep") if ids[name] is None]
        if missing:
            raise ValueError(f"the tokenizer has no {' or '.join(missing)} token (tried "
                             f"{[_SPECIAL[n] for n in missing]} and tokenizer_config.json)")
        self.pad_id = ids["pad"] if ids["pad"] is not None else 0
        self.mask_id = ids["mask"]

    def _special_id(self, named, spellings) -> int | None:
        named = named.get("content") if isinstance(named, dict) else named
        for token in ([named] if isinstance(named, str) else []) + list(spellings):
            index = self.tokenizer.token_to_id(token)
            if index is not None:
                return index
        return None

    def _cutter(self, side: str):
        """The copy of the tokenizer that cuts to max_len from ``side``."""
        with self._cutting_lock:
            if side not in self._cutting:
                cutter = type(self.tokenizer).from_str(self.tokenizer.to_str())
                cutter.enable_truncation(self.max_len, strategy="longest_first",
                                         direction=side)
                self._cutting[side] = cutter
            return self._cutting[side]

    def id_to_token(self, index: int) -> str:
        return self.tokenizer.id_to_token(index)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _split_template(self, text: str) -> tuple[list, list, list]:
        """(prefix, body, suffix): the ids of ``text`` and the special tokens the template
        puts before and after one text."""
        enc = self.tokenizer.encode(text)
        special = enc.special_tokens_mask
        head = next((i for i, s in enumerate(special) if not s), len(special))
        tail = next((i for i, s in enumerate(reversed(special)) if not s), 0)
        ids = enc.ids
        return ids[:head], ids[head:len(ids) - tail], ids[len(ids) - tail:]

    def windows(self, text: str, overlap: int) -> list:
        """(ids, token types) of the overlapping windows of max_len tokens that cover
        ``text``, each with the special tokens the template puts around one text."""
        return split_windows(*self._split_template(text), self.max_len, overlap)

    def encode_ids(self, rows: list, truncation: str = "warn", side: str | None = None,
                   count: TruncationCount | None = None) -> list:
        """(ids, token types) of token-id sequences given without special tokens, each with
        those the template puts around one text (see wrap_ids)."""
        prefix, _, suffix = self._split_template("a")
        return wrap_ids(rows, prefix, suffix, self.max_len, truncation,
                        check_side(side, self.truncation_side), count)

    def describe(self, texts: list, add_special_tokens: bool = True) -> list:
        """Each text's tokens as text-embeddings-inference's /tokenize reports them: id, text,
        whether special, and the character span [start, stop) in the text (None for a
        special token's)."""
        out = []
        for enc in self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens):
            out.append([{"id": i, "text": t, "special": bool(s),
                         "start": None if s else a, "stop": None if s else b}
                        for i, t, s, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask,
                                                   enc.offsets)])
        return out

    def encode_all(self, items, truncation: str = "warn", start: int = 0,
                   side: str | None = None, count: TruncationCount | None = None):
        """(ids, token types) of each text or (text_a, text_b) pair of ``items``; texts over
        ``max_len`` tokens are cut from ``side`` (default: the checkpoint's, else "right"),
        counted in ``count`` (else with a warning)."""
        check_truncation(truncation)
        side = check_side(side, self.truncation_side)
        inputs = [text_item(item, start + i) for i, item in enumerate(items)]
        encodings = self.tokenizer.encode_batch(inputs)
        out, cut = [], 0
        for i, (item, enc) in enumerate(zip(inputs, encodings)):
            if len(enc.ids) > self.max_len:
                if truncation == "error":
                    raise ValueError(f"texts[{start + i}] has {len(enc.ids)} tokens, more than "
                                     f"max_len={self.max_len}; pass truncation='warn' to cut "
                                     "it")
                cutter = self._cutter(side)
                try:
                    enc = cutter.encode(*item) if isinstance(item, tuple) else \
                        cutter.encode(item)
                except Exception as err:  # the tokenizers package raises plain Exceptions
                    raise ValueError(f"texts[{start + i}] cannot be cut to max_len="
                                     f"{self.max_len}: {str(err)[:200]}") from None
                cut += 1
            out.append((enc.ids, enc.type_ids if self.token_types else [0] * len(enc.ids)))
        warn_cut(cut, self.max_len, len(inputs), count)
        return out
