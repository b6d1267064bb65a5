"""A Hugging Face checkpoint's WordPiece tokenizer (the ``tokenizers`` package), with the
interface of :class:`~pybert.tokenization.words.WordTokenizer`: [CLS] a [SEP] (b [SEP]), token
types, longest-first truncation to ``max_len`` with a warning or an error."""

from __future__ import annotations

from .common import check_truncation, text_item, warn_cut

__all__ = ["WordPieceTokenizer"]


class WordPieceTokenizer:
    """Built from the text of a tokenizer.json, or from vocab.txt's tokens in id order with
    tokenizer_config.json's ``settings``. Raises ValueError for a tokenizer that cannot be
    built or lacks [CLS] / [SEP]."""

    def __init__(self, max_len: int, tokenizer_json: str | None = None,
                 vocab_tokens: list[str] | None = None, settings: dict | None = None):
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        settings = settings or {}
        try:
            if tokenizer_json is not None:
                self.tokenizer = Tokenizer.from_str(tokenizer_json)
            elif vocab_tokens is not None:
                self.tokenizer = BertWordPieceTokenizer(
                    {w: i for i, w in enumerate(vocab_tokens)},
                    lowercase=bool(settings.get("do_lower_case", True)),
                    strip_accents=settings.get("strip_accents"),
                    handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True))).\
                    _tokenizer
            else:
                raise ValueError("a WordPiece tokenizer needs tokenizer.json or vocab.txt")
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
        tokens = {name: settings.get(f"{name}_token", default) for name, default in
                  (("pad", "[PAD]"), ("mask", "[MASK]"), ("cls", "[CLS]"), ("sep", "[SEP]"))}
        tokens = {k: v.get("content") if isinstance(v, dict) else v for k, v in tokens.items()}
        ids = {k: self.tokenizer.token_to_id(v) if isinstance(v, str) else None
               for k, v in tokens.items()}
        missing = [tokens[k] for k in ("cls", "sep") if ids[k] is None]
        if missing:
            raise ValueError(f"the tokenizer has no {missing}")
        self.pad_id = ids["pad"] if ids["pad"] is not None else 0
        self.mask_id = ids["mask"]

    def id_to_token(self, index: int) -> str:
        return self.tokenizer.id_to_token(index)

    def encode_all(self, items, truncation: str = "warn", start: int = 0):
        check_truncation(truncation)
        inputs = [text_item(item, start + i) for i, item in enumerate(items)]
        encodings = self.tokenizer.encode_batch(inputs)
        out, cut = [], 0
        for i, (item, enc) in enumerate(zip(inputs, encodings)):
            if len(enc.ids) > self.max_len:
                if truncation == "error":
                    raise ValueError(f"texts[{start + i}] has {len(enc.ids)} tokens, more than "
                                     f"max_len={self.max_len}; pass truncation='warn' to cut "
                                     "it")
                enc = self._truncated(item)
                cut += 1
            out.append((enc.ids, enc.type_ids))
        warn_cut(cut, self.max_len)
        return out

    def _truncated(self, item):
        self.tokenizer.enable_truncation(self.max_len, strategy="longest_first")
        try:
            return self.tokenizer.encode(*item) if isinstance(item, tuple) else \
                self.tokenizer.encode(item)
        finally:
            self.tokenizer.no_truncation()
