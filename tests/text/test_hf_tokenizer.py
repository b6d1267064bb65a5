"""The Hugging Face tokenizer under concurrent callers and odd text: truncation is decided per
call (no shared setting flipped between threads), and a lone surrogate is a clear error
everywhere (the Python API, the batch job's file and line)."""

import threading

import pytest

pytest.importorskip("transformers")

import pybert  # noqa: E402
from pybert.job import run_encode_job  # noqa: E402

from hf_models import make_family_dir  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / "hf"
    make_family_dir(folder, "roberta", "base")
    return pybert.TextModel.load(folder)


def test_truncation_is_per_call_under_threads(model):
    """Threads asking to cut and threads asking for an error, on long and short texts at
    once: every call gets exactly its own answer (a shared truncation switch let some of
    them through cut or uncut)."""
    tokenizer = model.tokenizer
    long, short = "word " * 300, "a short text"
    cut_ids = tokenizer.encode_all([long], "warn")[0][0]
    short_ids = tokenizer.encode_all([short], "error")[0][0]
    assert len(cut_ids) == tokenizer.max_len
    wrong = []

    def cutter():
        for _ in range(200):
            if tokenizer.encode_all([long, short], "warn", side="right") != \
                    [(cut_ids, [0] * len(cut_ids)), (short_ids, [0] * len(short_ids))]:
                wrong.append("cut")

    def strict():
        for _ in range(200):
            try:
                tokenizer.encode_all([long], "error")
                wrong.append("uncut long text accepted")
            except ValueError:
                pass
            if tokenizer.encode_all([short], "error")[0][0] != short_ids:
                wrong.append("short")

    with pytest.warns(UserWarning):
        threads = [threading.Thread(target=f) for f in (cutter, strict, cutter, strict)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not wrong


def test_lone_surrogates_are_named(model, tmp_path):
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode: a lone surrogate"):
        model.encode(["fine", "bad \ud800"])
    with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode"):
        model.encode([("fine", "bad \udfff")])
    (tmp_path / "in.jsonl").write_text('"fine"\n"bad \\ud800"\n')
    with pytest.raises(ValueError, match=r"in.jsonl:2 is not valid Unicode: a lone surrogate"):
        run_encode_job(model, tmp_path / "in.jsonl", tmp_path / "out.npy", "m", progress=False)
