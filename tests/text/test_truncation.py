"""pybert's own truncation (linear in the input) gives the tokenizers library's ids: single
texts and pairs, cut from either side, longest side first, the odd token where the library
puts it, on WordPiece, byte-level BPE and Unigram tokenizers, at odd and even rooms; and the
pure list functions against their definition."""

import random

import pytest

from pybert.tokenization import HuggingFaceTokenizer
from pybert.tokenization.truncation import TooLong, keep, longest_first

pytest.importorskip("transformers")

from hf_models import family_tokenizer, sentences  # noqa: E402


def reference_longest_first(n_a, n_b, room):
    """The library's rule in words: a pair that fits is kept; a shorter side that takes at
    most half the room is kept whole and the longer side gets the rest; otherwise each side
    gets half, the odd token going to the longer side, to the second on a tie."""
    if n_a + n_b <= room:
        return n_a, n_b
    if 2 * min(n_a, n_b) <= room:
        return (n_a, room - n_a) if n_a <= n_b else (room - n_b, n_b)
    half, odd = room // 2, room % 2
    return (half + odd, half) if n_a > n_b else (half, half + odd)


def test_longest_first_against_its_definition():
    for n_a in range(0, 40):
        for n_b in range(0, 40):
            for room in (1, 2, 7, 10, 31):
                assert longest_first(n_a, n_b, room) == reference_longest_first(n_a, n_b, room), \
                    (n_a, n_b, room)
    assert keep([1, 2, 3, 4], 2, "right") == [1, 2] and keep([1, 2, 3, 4], 2, "left") == [3, 4]
    assert keep([1, 2], 5, "left") == [1, 2]


def test_the_word_tokenizers_pair_cut_in_closed_form():
    """d2l's word tokenizer removes one word at a time from the longer text (the first on a
    tie); the closed form that replaced the loop (quadratic on long texts) agrees."""
    from pybert.tokenization.words import _longest_first_words

    def one_at_a_time(a, b, budget):
        while a + b > budget:
            if a >= b:
                a -= 1
            else:
                b -= 1
        return a, b

    for a in range(30):
        for b in range(30):
            for budget in range(2, 40):
                assert _longest_first_words(a, b, budget) == one_at_a_time(a, b, budget)


def random_text(rng, words):
    count = rng.choice([0, 1, 3, 10, 30, 60, 120, 300])
    pieces = []
    for _ in range(count):
        w = rng.choice(words)
        roll = rng.random()
        if roll < 0.05:
            w = w * rng.randint(5, 40)            # a long word
        elif roll < 0.1:
            w = w + rng.choice("!?.,;") * rng.randint(1, 5)
        pieces.append(w + " " * rng.choice([1, 1, 1, 2, 7]))
    return "".join(pieces).strip() or rng.choice(words)


@pytest.fixture(scope="module", params=["bert", "roberta", "xlm-roberta"])
def tokenizer_json(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return family_tokenizer(request.param, folder).backend_tokenizer.to_str()


@pytest.mark.parametrize("max_len", [16, 33, 64])
@pytest.mark.parametrize("side", ["right", "left"])
def test_the_libraries_ids_on_texts_and_pairs(tokenizer_json, max_len, side):
    from tokenizers import Tokenizer

    ours = HuggingFaceTokenizer(max_len, tokenizer_json)
    library = Tokenizer.from_str(tokenizer_json)
    library.enable_truncation(max_len, strategy="longest_first", direction=side)
    rng = random.Random(max_len * 7 + len(side))
    words = " ".join(sentences(200, seed=4)).split()
    items = []
    for _ in range(150):
        a, b = random_text(rng, words), random_text(rng, words)
        items.append(a if rng.random() < 0.4 else (a, b))
    items.append(("same " * 80, "same " * 80))  # both over, a tie
    items.append(("one " * 81, "two " * 80))     # both over, the first longer
    got = ours.encode_all(items, "warn", side=side, count=_Quiet())
    for item, (ids, types) in zip(items, got):
        expected = library.encode(*item) if isinstance(item, tuple) else library.encode(item)
        assert ids == expected.ids, (item, side, max_len)
        assert types == expected.type_ids
    with pytest.raises(TooLong, match=r"texts\[0\] has more than max_len"):
        ours.encode_all(["word " * 200], "error")


class _Quiet:
    """A TruncationCount that counts nothing (the test reads ids, not the count)."""

    def add(self, *args):
        pass
