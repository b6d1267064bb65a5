"""Texts in, vectors out: tokenisation, length buckets, token budgets, order, pooling, the MLM
and NSP heads from text."""

import random

import numpy as np
import pytest
import torch

import pybert
from pybert.text import plan_batches

from helpers import TEXT_CONFIG as CONFIG, VOCAB, random_model, random_texts


@pytest.fixture(scope="module")
def model():
    return pybert.TextModel.from_model(random_model(CONFIG, seed=3), VOCAB, text_format="plain")


def one_by_one(model, item):
    """The reference: tokenise by hand, run the engine on this text alone."""
    a, b = (item, None) if isinstance(item, str) else item
    words_a = pybert.tokenization.normalize_text(a).split()
    words_b = None if b is None else pybert.tokenization.normalize_text(b).split()
    tokens, segments = pybert.get_tokens_and_segments(words_a, words_b)
    encoded = model.engine.encode(torch.tensor([VOCAB[tokens]]), torch.tensor([segments]))
    return encoded[0]


def test_plan_batches_respects_the_budget():
    rng = random.Random(1)
    lengths = [rng.randint(1, 50) for _ in range(500)]
    batches = plan_batches(lengths, batch_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 200
    assert plan_batches([300, 5], batch_tokens=100) == [[0], [1]]  # too long: alone
    with pytest.raises(ValueError):
        plan_batches([1], 0)


@pytest.mark.parametrize("pooling", ["cls", "mean", "tokens"])
def test_texts_match_one_by_one_and_keep_their_order(model, pooling):
    texts = random_texts(60)
    out = pybert.encode(model, texts, pooling=pooling, batch_tokens=64)
    for i, item in enumerate(texts):
        ref = one_by_one(model, item)
        if pooling == "cls":
            expected = ref[0]
        elif pooling == "mean":
            expected = ref.mean(0)
        else:
            expected = ref
        np.testing.assert_allclose(out[i], expected.numpy(), rtol=1e-5, atol=1e-6)
    if pooling != "tokens":
        assert out.shape == (60, 32) and out.dtype == np.float32


def test_chunks_and_budgets_do_not_change_results(model):
    texts = random_texts(50, seed=2)
    expected = pybert.encode(model, texts, batch_tokens=10_000)
    for chunk_size, budget in ((1, 24), (7, 50), (64, 100)):
        rows = [r for chunk in model.iter_encode(iter(texts), "cls", budget, chunk_size)
                for r in chunk]
        np.testing.assert_allclose(torch.stack(rows).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_return_types_and_single_text(model):
    as_torch = pybert.encode(model, ["the cat", "a dog"], return_type="torch")
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (2, 32)
    single = pybert.encode(model, "the cat")
    np.testing.assert_allclose(single, as_torch[0].numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="return_type"):
        pybert.encode(model, ["x"], return_type="list")
    with pytest.raises(ValueError, match="pooling"):
        pybert.encode(model, ["x"], pooling="max")
    with pytest.raises(ValueError, match="segments and valid_lens"):
        pybert.encode(model, ["x"], valid_lens=[1])


def test_truncation(model):
    long_text = " ".join(["cat"] * 40)
    with pytest.warns(UserWarning, match="1 text"):
        out = pybert.encode(model, [long_text, "the cat"], pooling="tokens")
    assert out[0].shape == (24, 32)
    with pytest.raises(ValueError, match=r"texts\[1\] has 40 words"):
        pybert.encode(model, ["cat", long_text], truncation="error")
    with pytest.warns(UserWarning):
        pair = pybert.encode(model, [(long_text, "the dog sat")], pooling="tokens")[0]
    assert pair.shape == (24, 32)


def test_bad_text_inputs(model):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        pybert.encode(model, ["fine", 3])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        pybert.encode(model, [("a", "b", "c")])
    no_vocab = pybert.Engine.from_model(random_model(CONFIG))
    with pytest.raises(ValueError, match="no vocabulary"):
        pybert.encode(no_vocab, ["the cat"])


def test_fill_mask_and_next_sentence(model):
    result = model.fill_mask(["the <mask> sat on the <mask> .", "a dog"], k=3)
    assert len(result) == 2 and len(result[0]) == 2 and result[1] == []
    for guesses in result[0]:
        probs = [p for _, p in guesses]
        assert len(guesses) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    # the same numbers as the MLM head run by hand
    words = "the <mask> sat on the <mask> .".split()
    tokens, segments = pybert.get_tokens_and_segments(words)
    _, mlm, _ = model.engine(torch.tensor([VOCAB[tokens]]), torch.tensor([segments]), None,
                       torch.tensor([[2, 6]]))
    top = torch.topk(torch.softmax(mlm[0, 0], -1), 3)
    assert [w for w, _ in result[0][0]] == VOCAB.to_tokens(top.indices.tolist())

    p = model.next_sentence([("the cat sat", "it is red"), ("a dog", "the mat")])
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    tokens, segments = pybert.get_tokens_and_segments(["the", "cat", "sat"], ["it", "is", "red"])
    _, _, nsp = model.engine(torch.tensor([VOCAB[tokens]]), torch.tensor([segments]))
    assert p[0] == pytest.approx(float(torch.softmax(nsp[0].double(), -1)[1]), rel=1e-6)
    with pytest.raises(TypeError, match="pairs"):
        model.next_sentence(["just one text"])


def test_a_numpy_array_of_texts(model):
    texts = ["the cat", "a dog ran", "it is red"]
    np.testing.assert_allclose(pybert.encode(model, np.array(texts)),
                               pybert.encode(model, texts), rtol=0, atol=0)


def test_long_texts_of_a_d2l_model_in_windows(model):
    """d2l's word tokenizer: windows of <cls> words <sep>, the mean of their <cls> encodings."""
    texts = [t for t in random_texts(60, seed=8) if isinstance(t, str)]
    words = pybert.tokenization.normalize_text(" ".join(texts)).split()
    limit = CONFIG.max_len
    assert len(words) > 2 * limit
    width, overlap = limit - 2, 5
    starts = list(range(0, len(words) - width, width - overlap)) + [len(words) - width]
    expected = torch.stack([one_by_one(model, " ".join(words[s:s + width]))[0]
                            for s in starts]).mean(0)
    got = model.encode_long(" ".join(words), pooling="cls", overlap=overlap,
                            return_type="torch")
    assert torch.allclose(got, expected.float(), atol=1e-5)


def test_pooling_and_normalising_large_finite_encodings(model):
    """Encodings beyond ~1.8e19 (whose float32 squares overflow) normalise to the float64
    answer, not to zero; mean pooling at ~3e37 (whose float32 sum overflows) gives the finite
    mean; a mean that float32 cannot hold raises."""
    g = torch.Generator().manual_seed(0)
    packed = torch.randn(7, 32, generator=g) * 1e20
    cu = torch.tensor([0, 3, 7])
    unit = model.pool_encodings(packed, cu, "cls", normalize=True)
    expected = packed[[0, 3]].double()
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(unit.double(), expected, atol=1e-6)
    big = torch.full((4, 32), 3e37)
    mean = model.pool_encodings(big, torch.tensor([0, 4]), "mean", normalize=False)
    assert torch.isfinite(mean).all() and torch.allclose(mean, big[:1], rtol=1e-6)
    with pytest.raises(ValueError, match="not finite"):
        model.pool_encodings(torch.full((2, 32), float("inf")), torch.tensor([0, 2]), "mean",
                             normalize=False)


def test_encode_takes_what_users_pass(text_checkpoint):
    """pybert.encode with a numpy array of strings (object or unicode), a generator or a
    tuple gives the list's vectors; bytes are refused with the fix."""
    texts = ["the cat sat", "a dog ran", "it is red"]
    expected = pybert.encode(text_checkpoint, texts)
    for given in (np.array(texts, dtype=object), np.array(texts), (t for t in texts),
                  tuple(texts)):
        np.testing.assert_array_equal(pybert.encode(text_checkpoint, given), expected)
    with pytest.raises(TypeError, match="decode them to str"):
        pybert.encode(text_checkpoint, b"the cat")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        pybert.encode(text_checkpoint, ["the cat", b"a dog"])


def test_progress_moves_per_engine_batch_and_cuts_are_said_once(model):
    """A job's bar advances after each engine batch, not once per chunk; the texts cut to
    max_len are counted over the whole run and said once."""
    long_text = " ".join(["cat"] * 40)
    texts = [long_text if i % 7 == 0 else f"the cat sat {i}" for i in range(60)]
    steps, count = [], pybert.tokenization.TruncationCount()
    chunks = list(model.iter_task(texts, batch_tokens=64, chunk_size=30, truncated=count,
                                  on_batch=steps.append))
    assert [len(c) for c in chunks] == [30, 30]
    assert sum(steps) == 60 and len(steps) > 2 * 2  # several batches within each chunk
    assert count.cut == 9 and count.texts == 60
    assert count.summary() == "9 text(s) of 60 were longer than max_len=24 tokens and were " \
                              "cut to 24"
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(model.iter_task(texts, batch_tokens=64, chunk_size=10))
    assert [str(w.message) for w in caught] == [count.summary()]


def test_the_other_packages_names_are_attributes_of_pybert():
    import subprocess
    import sys

    code = ("import pybert, sys; assert 'torch' not in sys.modules; "
            "pybert.tokenization.normalize_text('A'); print(sorted(set(pybert.__all__) - "
            "set(dir(pybert))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_engine_holds_no_pointer_to_its_text_model(text_checkpoint):
    """The text model owns the engine; pybert.load's engine finds its text model through the
    text layer, and an engine no one holds is freed with what made its text model."""
    import gc
    import weakref

    engine = pybert.load(text_checkpoint)
    assert not any(isinstance(v, pybert.TextModel) for v in vars(engine).values())
    text_model = pybert.text_model_of(engine)
    assert text_model.engine is engine
    assert pybert.encode(engine, ["the cat sat"]).shape == (1, CONFIG.num_hiddens)
    gone = weakref.ref(engine)
    del engine, text_model
    gc.collect()
    assert gone() is None
