"""The batch job (`pybert encode`): formats, order, and resume after a kill."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import pybert
import pybert.job.output
from pybert.job import run_encode_job

from helpers import TEXT_CONFIG, WORDS, random_texts, write_txt


def read_output(path):
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))["embeddings"]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column("row").to_pylist() == list(range(table.num_rows))
    return np.array(table.column("embedding").to_pylist(), dtype=np.float32)


FORMATS = [".npy", ".safetensors",
           pytest.param(".parquet", marks=pytest.mark.skipif(
               __import__("importlib").util.find_spec("pyarrow") is None,
               reason="pyarrow is not installed"))]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_job_matches_in_memory_encoding(tmp_path, text_checkpoint, suffix, pooling):
    texts = random_texts(70, seed=5)
    write_txt(tmp_path / "in.txt", texts)
    engine = pybert.load(text_checkpoint)
    out = tmp_path / f"out{suffix}"
    result = run_encode_job(engine, tmp_path / "in.txt", out, "m", pooling=pooling,
                            batch_tokens=40, chunk_size=16, progress=False)
    assert result["rows"] == 70 and result["dim"] == TEXT_CONFIG.num_hiddens
    expected = pybert.encode(engine, texts, pooling=pooling)
    np.testing.assert_allclose(read_output(out), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", out.name]


def test_jsonl_forms(tmp_path, text_checkpoint):
    rows = ['"the cat"', '["a dog", "it ran"]', "", '{"text": "the mat"}',
            '{"text": "a", "text_pair": "red"}', '{"text_a": "it", "text_b": "is"}']
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    engine = pybert.load(text_checkpoint)
    run_encode_job(engine, tmp_path / "in.jsonl", tmp_path / "o.npy", "m", progress=False)
    expected = pybert.encode(engine, ["the cat", ("a dog", "it ran"), "the mat", ("a", "red"),
                                      ("it", "is")])
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("line,match", [("{not json", "in.jsonl:2: not valid JSON"),
                                        ("[1, 2]", "in.jsonl:2: expected a string"),
                                        ('{"text": "a", "text_pair": 3}', "must be a string")])
def test_bad_jsonl(tmp_path, text_checkpoint, line, match):
    (tmp_path / "in.jsonl").write_text('"fine"\n' + line + "\n")
    with pytest.raises(ValueError, match=match):
        run_encode_job(pybert.load(text_checkpoint), tmp_path / "in.jsonl", tmp_path / "o.npy", "m",
                       progress=False)
    assert not (tmp_path / "o.npy").exists()


def test_job_refusals(tmp_path, text_checkpoint):
    engine = pybert.load(text_checkpoint)
    write_txt(tmp_path / "in.txt", ["the cat"])
    with pytest.raises(FileNotFoundError):
        run_encode_job(engine, tmp_path / "missing.txt", tmp_path / "o.npy", "m")
    with pytest.raises(ValueError, match="must end in one of"):
        run_encode_job(engine, tmp_path / "in.txt", tmp_path / "o.csv", "m", progress=False)
    with pytest.raises(ValueError, match="pooling"):
        run_encode_job(engine, tmp_path / "in.txt", tmp_path / "o.npy", "m", pooling="tokens")
    run_encode_job(engine, tmp_path / "in.txt", tmp_path / "o.npy", "m", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_encode_job(engine, tmp_path / "in.txt", tmp_path / "o.npy", "m", progress=False)
    run_encode_job(engine, tmp_path / "in.txt", tmp_path / "o.npy", "m", overwrite=True,
                   progress=False)


def test_empty_input(tmp_path, text_checkpoint):
    (tmp_path / "in.txt").write_text("")
    run_encode_job(pybert.load(text_checkpoint), tmp_path / "in.txt", tmp_path / "o.safetensors",
                   "m", progress=False)
    assert read_output(tmp_path / "o.safetensors").shape == (0, TEXT_CONFIG.num_hiddens)


def _encode_cli(text_checkpoint, source, output, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "pybert", "encode", "--model", str(text_checkpoint), "--input",
         str(source), "--output", str(output), "--chunk-size", "500", "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=source.parent,
        env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_job_resumes_without_losing_or_repeating_rows(tmp_path, text_checkpoint, suffix,
                                                             how):
    rng = random.Random(7)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
             for _ in range(30000)]
    source = tmp_path / "in.txt"
    write_txt(source, texts)
    output = tmp_path / f"out{suffix}"
    progress = tmp_path / f"out{suffix}.progress.json"
    proc = _encode_cli(text_checkpoint, source, output)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists():
            try:
                if json.loads(progress.read_text())["done"] >= 1000:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    proc.send_signal(how)
    output_text = proc.communicate(timeout=120)[0]
    assert proc.returncode == (130 if how == signal.SIGTERM else -signal.SIGKILL), output_text
    assert not output.exists(), "an interrupted job must not leave a finished-looking output"
    done = json.loads(progress.read_text())["done"]
    assert 0 < done < len(texts)

    again = _encode_cli(text_checkpoint, source, output)
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0, text
    assert json.loads(text.strip().splitlines()[-1])["resumed_at"] == done
    assert not progress.exists()
    expected = pybert.encode(pybert.load(text_checkpoint), texts)
    np.testing.assert_allclose(read_output(output), expected, rtol=1e-5, atol=1e-6)


def test_a_changed_input_is_not_resumed(tmp_path, text_checkpoint, monkeypatch):
    source = tmp_path / "in.txt"
    write_txt(source, ["the cat"] * 50)
    engine = pybert.load(text_checkpoint)
    flushes = []

    flush = pybert.job.output.NpyWriter.flush

    def flush_then_stop(self):
        flushes.append(1)
        if len(flushes) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C came after the second chunk
        flush(self)

    monkeypatch.setattr(pybert.job.output.NpyWriter, "flush", flush_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_encode_job(engine, source, tmp_path / "o.npy", "m", chunk_size=10, progress=False)
    monkeypatch.undo()
    assert json.loads((tmp_path / "o.npy.progress.json").read_text())["done"] == 10
    write_txt(source, ["a dog"] * 10)
    with pytest.raises(ValueError, match="different job"):
        run_encode_job(engine, source, tmp_path / "o.npy", "m", chunk_size=10, progress=False)
    result = run_encode_job(engine, source, tmp_path / "o.npy", "m", chunk_size=10,
                            overwrite=True, progress=False)
    assert result["resumed_at"] == 0 and np.load(tmp_path / "o.npy").shape[0] == 10


# ---------------------------------------------------------------------------------------------
# Data nobody cleaned, and disks that fill up.

def test_rows_end_at_newlines_only(tmp_path, text_checkpoint):
    """A lone \\r inside a line is text, not a row break: no later row shifts."""
    (tmp_path / "in.txt").write_bytes(b"the cat\rsat\nit is red\r\na dog\n")
    model = pybert.TextModel.load(text_checkpoint)
    run_encode_job(model, tmp_path / "in.txt", tmp_path / "o.npy", "m", progress=False)
    expected = model.encode(["the cat\rsat", "it is red", "a dog"])
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, rtol=1e-5, atol=1e-6)


def test_invalid_utf8_names_file_and_line(tmp_path, text_checkpoint):
    (tmp_path / "in.txt").write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"in.txt:2: not valid UTF-8"):
        run_encode_job(pybert.load(text_checkpoint), tmp_path / "in.txt", tmp_path / "o.npy", "m",
                       progress=False)


@pytest.mark.parametrize("problem", ["output-is-a-directory", "batch-tokens", "chunk-size",
                                     "no-such-folder", "input-is-a-fifo"])
def test_refusals_come_before_any_work_and_leave_nothing(tmp_path, text_checkpoint, problem):
    write_txt(tmp_path / "in.txt", ["the cat"] * 5)
    source, output, options = tmp_path / "in.txt", tmp_path / "o.npy", {}
    if problem == "output-is-a-directory":
        output.mkdir()
    elif problem == "batch-tokens":
        options["batch_tokens"] = 0
    elif problem == "chunk-size":
        options["chunk_size"] = -1
    elif problem == "no-such-folder":
        output = tmp_path / "missing" / "o.npy"
    else:
        source = tmp_path / "fifo.txt"
        os.mkfifo(source)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises((ValueError, FileNotFoundError)):
        run_encode_job(pybert.load(text_checkpoint), source, output, "m", progress=False, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_a_full_disk_is_reported_and_the_job_resumes(tmp_path, text_checkpoint, suffix):
    """A file size limit makes the disk 'full' for the job (EFBIG instead of ENOSPC, the same
    path): a clear message and exit 1, never SIGBUS or a traceback; once there is room, the
    same command finishes the job."""
    import resource

    texts = [" ".join(random.Random(i).choice(WORDS) for _ in range(5)) for i in range(4000)]
    source, output = tmp_path / "in.txt", tmp_path / f"out{suffix}"
    write_txt(source, texts)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = subprocess.run(
        [sys.executable, "-m", "pybert", "encode", "--model", str(text_checkpoint), "--input",
         str(source), "--output", str(output), "--no-progress"], capture_output=True,
        text=True, preexec_fn=small_disk, timeout=300, cwd=tmp_path)
    assert full.returncode == 1, full.stderr
    assert "cannot write" in full.stderr and "run the same command again" in full.stderr
    assert "Traceback" not in full.stderr
    again = _encode_cli(text_checkpoint, source, output)
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    expected = pybert.encode(pybert.load(text_checkpoint), texts)
    np.testing.assert_allclose(read_output(output), expected, rtol=1e-5, atol=1e-6)


def test_a_write_that_fails_midway_keeps_the_rows_done(tmp_path, text_checkpoint, monkeypatch):
    import errno

    source = tmp_path / "in.txt"
    write_txt(source, ["the cat"] * 50)
    model = pybert.TextModel.load(text_checkpoint)
    writes = []
    write = pybert.job.output._RowFile.write

    def fail_third(self, start, block):
        writes.append(start)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, start, block)

    monkeypatch.setattr(pybert.job.output._RowFile, "write", fail_third)
    with pytest.raises(OSError, match="The 20 rows done so far are kept"):
        run_encode_job(model, source, tmp_path / "o.npy", "m", chunk_size=10, progress=False)
    monkeypatch.undo()
    result = run_encode_job(model, source, tmp_path / "o.npy", "m", chunk_size=10,
                            progress=False)
    assert result["resumed_at"] == 20
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), model.encode(["the cat"] * 50),
                               rtol=1e-5, atol=1e-6)


def test_int8_job_from_the_command_line(tmp_path, text_checkpoint):
    """`pybert encode --quantize int8` writes vectors close to the float32 job's."""
    texts = random_texts(200, seed=3)
    source = tmp_path / "in.txt"
    write_txt(source, texts)
    proc = _encode_cli(text_checkpoint, source, tmp_path / "int8.npy", "--quantize", "int8")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    run_encode_job(pybert.TextModel.load(text_checkpoint), source, tmp_path / "fp32.npy", "m",
                   progress=False)
    int8, fp32 = read_output(tmp_path / "int8.npy"), read_output(tmp_path / "fp32.npy")
    cosine = (int8 * fp32).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(fp32, axis=1)
    assert int8.shape == fp32.shape and cosine.min() >= 0.99


# -- the other tasks: a classifier's scores, SPLADE vectors, prompts and dimensions ------------

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_a_classify_job_writes_the_scores(tmp_path, suffix):
    from hf_models import make_family_dir, sentences

    make_family_dir(tmp_path / "ce", "roberta", "classify", num_labels=3)
    model = pybert.TextModel.load(tmp_path / "ce")
    texts = sentences(50, seed=2)
    write_txt(tmp_path / "in.txt", texts)
    out = tmp_path / f"scores{suffix}"
    result = run_encode_job(model, tmp_path / "in.txt", out, "ce", task="classify",
                            batch_tokens=200, chunk_size=16, progress=False)
    assert result["dim"] == 3 and result["task"] == "classify"
    scores = np.load(out) if suffix == ".npy" else load_file(str(out))["scores"]
    with pytest.warns(UserWarning, match="were cut"):
        expected = model.classify(texts)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.sum(1), 1, atol=1e-5)  # three labels: softmax
    raw = tmp_path / f"raw{suffix}"
    run_encode_job(model, tmp_path / "in.txt", raw, "ce", task="classify", raw_scores=True,
                   progress=False)
    logits = np.load(raw) if suffix == ".npy" else load_file(str(raw))["scores"]
    np.testing.assert_allclose(logits, model.classify(texts, raw_scores=True), rtol=1e-5,
                               atol=1e-6)


def test_a_sparse_job_writes_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from hf_models import make_family_dir, sentences

    make_family_dir(tmp_path / "mlm", "distilbert", "mlm")
    model = pybert.TextModel.load(tmp_path / "mlm")
    texts = [" ".join(t.split()[:20]) for t in sentences(40, seed=4)]
    write_txt(tmp_path / "in.txt", texts)
    with pytest.raises(ValueError, match="written to .parquet"):
        run_encode_job(model, tmp_path / "in.txt", tmp_path / "s.npy", "m", task="sparse",
                       progress=False)
    with pytest.raises(ValueError, match="needs a model with a sequence classifier"):
        run_encode_job(model, tmp_path / "in.txt", tmp_path / "s.npy", "m", task="classify",
                       progress=False)
    run_encode_job(model, tmp_path / "in.txt", tmp_path / "s.parquet", "m", task="sparse",
                   chunk_size=7, progress=False)
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column("row").to_pylist() == list(range(40))
    for got_ids, got_values, expected in zip(table.column("indices").to_pylist(),
                                             table.column("values").to_pylist(),
                                             model.encode_sparse(texts)):
        assert got_ids == expected.indices.tolist()
        np.testing.assert_allclose(got_values, expected.values, rtol=1e-6)


def test_a_sparse_job_of_bge_m3_writes_its_lexical_weights(tmp_path):
    """--task sparse on BGE-M3 is its lexical weights (the model's own sparse vectors), in
    the same .parquet columns as SPLADE's."""
    pq = pytest.importorskip("pyarrow.parquet")
    from hf_models import make_bge_m3, sentences

    make_bge_m3(tmp_path / "m3")
    model = pybert.TextModel.load(tmp_path / "m3")
    texts = [" ".join(t.split()[:15]) for t in sentences(12, seed=6)]
    write_txt(tmp_path / "in.txt", texts)
    run_encode_job(model, tmp_path / "in.txt", tmp_path / "s.parquet", "m3", task="sparse",
                   chunk_size=5, progress=False)
    table = pq.read_table(tmp_path / "s.parquet")
    for got_ids, got_values, expected in zip(table.column("indices").to_pylist(),
                                             table.column("values").to_pylist(),
                                             model.encode_sparse(texts)):
        assert got_ids == expected.indices.tolist() and got_ids
        np.testing.assert_allclose(got_values, expected.values, rtol=1e-6)


def test_prompts_and_dimensions_in_a_job_and_its_identity(tmp_path):
    from hf_models import make_family_dir, sentences

    make_family_dir(tmp_path / "hf", "bert", "base")
    model = pybert.TextModel.load(tmp_path / "hf")
    model.prompts = {"query": "query: "}
    texts = [" ".join(t.split()[:10]) for t in sentences(20, seed=1)]
    write_txt(tmp_path / "in.txt", texts)
    out = tmp_path / "v.npy"
    result = run_encode_job(model, tmp_path / "in.txt", out, "m", prompt_name="query",
                            dimensions=16, progress=False)
    assert result["dim"] == 16
    np.testing.assert_allclose(np.load(out), model.encode(texts, prompt_name="query",
                                                          dimensions=16), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        run_encode_job(model, tmp_path / "in.txt", tmp_path / "w.npy", "m", prompt_name="nope",
                       progress=False)
    with pytest.raises(ValueError, match="dimensions must be"):
        run_encode_job(model, tmp_path / "in.txt", tmp_path / "w.npy", "m", dimensions=0,
                       progress=False)


def test_the_command_line_runs_a_classify_job(tmp_path):
    from hf_models import make_family_dir

    make_family_dir(tmp_path / "ce", "electra", "classify", num_labels=1)
    write_txt(tmp_path / "in.txt", ["the list\tis sorted", "a dog\tran away"])
    proc = _encode_cli(tmp_path / "ce", tmp_path / "in.txt", tmp_path / "s.npy", "--task",
                       "classify")
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text
    expected = pybert.TextModel.load(tmp_path / "ce").classify([("the list", "is sorted"),
                                                                ("a dog", "ran away")])
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), expected, rtol=1e-5, atol=1e-6)
    proc = _encode_cli(tmp_path / "ce", tmp_path / "in.txt", tmp_path / "t.npy", "--task",
                       "sparse")
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2 and "needs a model with an MLM head" in text


# -- a job's output is its own: content-keyed resume, one writer, no links followed ------------

def test_a_replaced_checkpoint_is_not_resumed_and_its_spelling_does_not_matter(tmp_path):
    """Killed, then rerun: with another checkpoint at the same path it is a different job
    (never 5,000 rows of one model and the rest of another); with the same checkpoint named
    ./model instead of model/ it resumes."""
    from helpers import TEXT_CONFIG, VOCAB, random_model

    model = tmp_path / "model"
    pybert.save(random_model(TEXT_CONFIG, seed=4), model, vocab=VOCAB)
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
             for _ in range(30000)]
    source, output = tmp_path / "in.txt", tmp_path / "out.npy"
    write_txt(source, texts)
    progress = tmp_path / "out.npy.progress.json"
    proc = _encode_cli(model, source, output)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("done", 0) >= 1000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = json.loads(progress.read_text())["done"]
    original = {p.name: p.read_bytes() for p in model.iterdir()}
    pybert.save(random_model(TEXT_CONFIG, seed=5), model, vocab=VOCAB)  # replaced in place
    text = _encode_cli(model, source, output).communicate(timeout=120)[0]
    assert "different job" in text and not output.exists()
    for name, data in original.items():  # the first checkpoint back, spelled otherwise
        (model / name).write_bytes(data)
    again = subprocess.Popen(
        [sys.executable, "-m", "pybert", "encode", "--model", "./model/", "--input",
         str(source), "--output", str(output), "--chunk-size", "500", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0, text
    assert json.loads(text.strip().splitlines()[-1])["resumed_at"] == done


def test_a_second_job_on_the_same_output_refuses_at_once(tmp_path, text_checkpoint):
    from pybert.job.files import output_lock

    write_txt(tmp_path / "in.txt", ["the cat"] * 5)
    engine = pybert.load(text_checkpoint)
    with output_lock(tmp_path / "out.npy"):  # as a running job holds it
        with pytest.raises(ValueError, match="another job is writing"):
            run_encode_job(engine, tmp_path / "in.txt", tmp_path / "out.npy", "m",
                           progress=False)
    run_encode_job(engine, tmp_path / "in.txt", tmp_path / "out.npy", "m", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.npy"]


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_links_planted_where_a_job_writes_are_not_followed(tmp_path, text_checkpoint, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    write_txt(tmp_path / "in.txt", ["the cat"] * 5)
    victim = tmp_path / "victim"
    victim.mkdir() if suffix == ".parquet" else victim.write_text("precious")
    output = tmp_path / f"out{suffix}"
    (tmp_path / f"out{suffix}.partial").symlink_to(victim)
    with pytest.raises(ValueError, match="symbolic link"):
        run_encode_job(pybert.load(text_checkpoint), tmp_path / "in.txt", output, "m",
                       progress=False)
    assert (list(victim.iterdir()) == []) if suffix == ".parquet" else \
        victim.read_text() == "precious"
    assert not output.exists()
