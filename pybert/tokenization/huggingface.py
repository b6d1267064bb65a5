"""A Hugging Face checkpoint's tokenizer through the ``tokenizers`` package, whatever its model
(WordPiece, BPE, Unigram) and pair template (``[CLS] a [SEP] b [SEP]``, ``<s> a </s></s> b
</s>``), with the interface of :class:`~pybert.tokenization.words.WordTokenizer`: ids and token
types, longest-first truncation to ``max_len`` from the side the checkpoint names (or the
caller), with a warning or an error."""

from __future__ import annotations

import threading

from .common import TRUNCATION_SIDES, TruncationCount, check_side, check_truncation, \
    split_windows, text_item, warn_cut, wrap_ids
from .truncation import Template, TooLong, keep, longest_first

__all__ = ["HuggingFaceTokenizer"]

# The longest word WordPiece may split (tokenizer.json's max_input_chars_per_word; a longer
# word is one unknown token): its cost for one word grows as the square of the word's length
# (1,000 characters: ~30 ms; 4,000: ~1 s), so a model file may not raise it beyond this.
# Released models use 100.
MAX_INPUT_CHARS_PER_WORD = 1000

# A pair whose two sides both exceed max_len keeps its odd token on the side with more tokens:
# counted exactly up to this many characters a side, beyond by characters.
FULL_COUNT_CHARS = 256 << 10

# A special token's name in tokenizer_config.json and the spellings tried when it names none
# (BERT's, then RoBERTa's).
_SPECIAL = {"pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>"), "cls": ("[CLS]", "<s>"),
            "sep": ("[SEP]", "</s>"), "unk": ("[UNK]", "<unk>")}


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


def _chars(item) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


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
        limit = getattr(self.tokenizer.model, "max_input_chars_per_word", None)
        if isinstance(limit, int) and limit > MAX_INPUT_CHARS_PER_WORD:
            raise ValueError(f"tokenizer.json's WordPiece max_input_chars_per_word is {limit}, "
                             f"more than the {MAX_INPUT_CHARS_PER_WORD} pybert allows: a word's "
                             "cost grows as the square of its length (released models use "
                             "100)")
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        model_max = settings.get("model_max_length")
        if isinstance(model_max, int) and 0 < model_max < max_len:
            max_len = model_max
        self.max_len = max_len
        # Items of at most this many characters are tokenised whole, in one batch.
        self._direct_chars = 8 * max_len
        # The tokenizer is never switched to truncating (a shared setting flipped per call
        # would race between a server's threads): texts are cut on their token lists.
        self._templates: dict = {}
        self._lock = threading.Lock()
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
        # What a lexical weight is never given for (FlagEmbedding's BGE-M3: CLS, EOS, pad, UNK)
        self.special_ids = frozenset(ids[name] for name in ("cls", "sep", "pad", "unk")
                                     if ids[name] is not None)

    def _special_id(self, named, spellings) -> int | None:
        named = named.get("content") if isinstance(named, dict) else named
        for token in ([named] if isinstance(named, str) else []) + list(spellings):
            index = self.tokenizer.token_to_id(token)
            if index is not None:
                return index
        return None

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
        longest side first, counted in ``count`` (else with a warning), or raise TooLong with
        truncation="error".

        What this costs is linear in the input and bounded by max_len: short items are
        tokenised whole (in one batch); a longer text is tokenised only as far as its kept
        tokens need (see _bounded_ids), and a pair is cut on the token lists of its two sides,
        never through the tokenizers library's pair truncation (which builds every
        combination of both sides' overflow pieces). The ids are the library's."""
        check_truncation(truncation)
        side = check_side(side, self.truncation_side)
        inputs = [text_item(item, start + i) for i, item in enumerate(items)]
        direct = [i for i, item in enumerate(inputs) if _chars(item) <= self._direct_chars]
        out: list = [None] * len(inputs)
        over = sorted(set(range(len(inputs))) - set(direct))
        for i, enc in zip(direct, self.tokenizer.encode_batch([inputs[i] for i in direct])):
            if len(enc.ids) > self.max_len:
                over.append(i)
            else:
                out[i] = (enc.ids, enc.type_ids if self.token_types else [0] * len(enc.ids))
        if over and truncation == "error":
            first = min(over)
            raise TooLong(f"texts[{start + first}] has more than max_len={self.max_len} "
                          "tokens; pass truncation='warn' to cut it")
        for i, (ids, types) in zip(over, self._cut([inputs[i] for i in over], side)):
            out[i] = (ids, types if self.token_types else [0] * len(ids))
        warn_cut(len(over), self.max_len, len(inputs), count)
        return out

    def _cut(self, items: list, side: str) -> list:
        """(ids, token types) of over-long texts and pairs cut to max_len from ``side``."""
        single, pair = self._template(False), self._template(True)
        texts = sorted({t for item in items for t in (item if isinstance(item, tuple)
                                                      else (item,))})
        room = {False: self.max_len - single.special, True: self.max_len - pair.special}
        if min(room.values()) < 1:
            raise ValueError(f"max_len={self.max_len} leaves no room beside the special tokens")
        # Each distinct text once (a reranker's query is in every pair), as far as needed: a
        # side never keeps more than the room of a pair or a text.
        need = max(room.values()) + 1
        ids = dict(zip(texts, self._bounded_ids(texts, need, side)))
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(single.apply(keep(ids[item], room[False], side)))
                continue
            a, b = ids[item[0]], ids[item[1]]
            if len(a) >= need and len(b) >= need:  # both over: their true lengths decide only
                # which side keeps the odd token (the longer; the second on a tie)
                half, odd = divmod(room[True], 2)
                a_longer = odd and self._first_is_longer(item)
                keep_a, keep_b = (half + odd, half) if a_longer else (half, half + odd)
            else:
                keep_a, keep_b = longest_first(len(a), len(b), room[True])
            out.append(pair.apply(keep(a, keep_a, side), keep(b, keep_b, side)))
        return out

    def _first_is_longer(self, pair: tuple) -> bool:
        """Whether a pair's first side has more tokens than its second. Counted exactly up to
        FULL_COUNT_CHARS characters a side; beyond, by characters (a pair the tokenizers
        library would take gigabytes to cut)."""
        if max(len(t) for t in pair) <= FULL_COUNT_CHARS:
            counts = [len(e.ids) for e in self.tokenizer.encode_batch(
                list(pair), add_special_tokens=False)]
        else:
            counts = [len(t) for t in pair]
        return counts[0] > counts[1]

    def _template(self, pair: bool) -> Template:
        """The special tokens around one text or a pair, read off a probe."""
        with self._lock:
            if pair not in self._templates:
                enc = self.tokenizer.encode("a", "b") if pair else self.tokenizer.encode("a")
                template = Template(enc.ids, enc.type_ids, enc.sequence_ids)
                if template.sides != (2 if pair else 1):
                    raise ValueError("the tokenizer's template could not be read off a probe")
                self._templates[pair] = template
            return self._templates[pair]

    def _bounded_ids(self, texts: list[str], need: int, side: str) -> list[list[int]]:
        """The ids (no special tokens) of each text, at most ``need`` of them from ``side``'s
        end, exactly as tokenising it whole would give: a text is tokenised a prefix (for
        "right"; a suffix for "left") of characters at a time, the budget growing 4x, until
        ``need`` tokens are known that do not depend on where the prefix ends (those of the
        word it cuts through are dropped). Whitespace-heavy text grows the budget up to the
        whole text; a single word longer than ``need`` x 64 characters is cut there (its
        tokens past that would not be kept anyway, up to where that word's merges meet)."""
        results: list = [None] * len(texts)
        todo, budget = list(range(len(texts))), need * 8
        while todo:
            parts = [texts[i] if len(texts[i]) <= budget else
                     texts[i][:budget] if side == "right" else texts[i][len(texts[i]) - budget:]
                     for i in todo]
            left = []
            for i, part, enc in zip(todo, parts, self.tokenizer.encode_batch(
                    parts, add_special_tokens=False)):
                if len(part) == len(texts[i]):
                    results[i] = keep(enc.ids, need, side)
                    continue
                words = enc.word_ids
                edge = words[-1] if side == "right" else words[0] if words else None
                stable = [t for t, w in zip(enc.ids, words) if w != edge or edge is None]
                one_word = len(set(words)) <= 1
                if len(stable) >= need or (one_word and budget >= need * 64):
                    results[i] = keep(stable if len(stable) >= need else enc.ids, need, side)
                else:
                    left.append(i)
            todo, budget = left, budget * 4
        return results
