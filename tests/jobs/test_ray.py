"""pybert on a local Ray cluster (CPU, two workers): the Ray Data callable, and `pybert encode
--ray` against the single-process job, with a killed driver and a killed actor."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402

import pybert  # noqa: E402
from pybert.job import run_encode_job  # noqa: E402

from helpers import random_texts, rel_l2, write_txt  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local two-CPU cluster. Ray's workers start in the driver's folder and import from it:
    started from the checkout they would find the source tree (no compiled extension there),
    so the driver moves to a temporary folder for the module."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-cwd"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.chdir(here)


def rel(actual, expected) -> float:
    return rel_l2(torch.as_tensor(np.asarray(actual, dtype=np.float64)),
                  torch.as_tensor(np.asarray(expected, dtype=np.float64)))


def single_process(text_checkpoint, source, out):
    run_encode_job(pybert.TextModel.load(text_checkpoint), source, out, "m", progress=False)
    return np.load(out)


def shard_vectors(folder):
    """{(file, row): vector} over the shards, each row exactly once."""
    found = {}
    for part in sorted(folder.glob("*.parquet")):
        table = pq.read_table(part)
        for file, row, vector in zip(table.column("file").to_pylist(),
                                     table.column("row").to_pylist(),
                                     table.column("embedding").to_pylist()):
            assert (file, row) not in found, "a row was written twice"
            found[(file, row)] = vector
    return found


def test_the_map_batches_callable(cluster, text_checkpoint):
    from pybert.ray import Embedder

    texts = [t if isinstance(t, str) else t[0] for t in random_texts(30, seed=8)]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = ds.map_batches(Embedder, fn_constructor_kwargs={"model": str(text_checkpoint),
                                                          "device": "cpu"},
                         batch_format="pyarrow", batch_size=7, concurrency=2,
                         num_cpus=1).take_all()
    out.sort(key=lambda r: r["id"])
    assert [r["text"] for r in out] == texts  # the ids and other columns pass through
    got = np.array([r["embedding"] for r in out])
    expected = pybert.TextModel.load(text_checkpoint).encode(texts)
    assert rel(got, expected) <= 1e-6
    # token ids in, bad rows as nulls with their reason
    model = pybert.TextModel.load(text_checkpoint)
    ids = [ids for ids, _ in model.tokenizer.encode_all(texts[:4])] + [[10 ** 6]]
    ds = ray.data.from_items([{"tokens": t} for t in ids])
    out = ds.map_batches(Embedder, fn_constructor_kwargs={
        "model": str(text_checkpoint), "device": "cpu", "tokens_column": "tokens",
        "on_error": "null"}, batch_format="pyarrow", concurrency=1, num_cpus=1).take_all()
    assert out[4]["embedding"] is None and "token ids" in out[4]["error"]
    np.testing.assert_allclose(np.array([r["embedding"] for r in out[:4]]), expected[:4],
                               rtol=1e-5, atol=1e-6)


def test_the_ray_job_equals_the_single_process_job(cluster, text_checkpoint, tmp_path):
    from pybert.ray import run_ray_job

    texts = [t if isinstance(t, str) else "\t".join(t) for t in random_texts(120, seed=9)]
    write_txt(tmp_path / "a.txt", texts[:70])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t, "id": f"b{i}"}) + "\n"
                                              for i, t in enumerate(texts[70:])))
    singles = [t for t in texts if "\t" not in t][:20]
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(20)], "text": singles}),
                   tmp_path / "c.parquet")
    summary = run_ray_job(str(text_checkpoint), [tmp_path / "a.txt", tmp_path / "b.jsonl",
                                            tmp_path / "c.parquet"], tmp_path / "out",
                          rows_per_shard=16, device="cpu")
    assert summary["rows"] == 140 and summary["shards_skipped"] == 0
    assert summary["bad_rows"] == 0 and summary["shards"] == 5 + 4 + 2
    found = shard_vectors(tmp_path / "out")
    expected_a = single_process(text_checkpoint, tmp_path / "a.txt", tmp_path / "a.npy")
    expected_b = single_process(text_checkpoint, tmp_path / "b.jsonl", tmp_path / "b.npy")
    a = np.array([found[(str(tmp_path / "a.txt"), r)] for r in range(70)])
    b = np.array([found[(str(tmp_path / "b.jsonl"), r)] for r in range(50)])
    c = np.array([found[(str(tmp_path / "c.parquet"), r)] for r in range(20)])
    assert rel(a, expected_a) <= 1e-6
    assert rel(b, expected_b) <= 1e-6
    assert rel(c, pybert.TextModel.load(text_checkpoint).encode(singles)) <= 1e-6
    ids = pq.read_table(sorted((tmp_path / "out").glob("00001-*"))[0]).column("id").to_pylist()
    assert ids[:2] == ["b0", "b1"]
    again = run_ray_job(str(text_checkpoint), [tmp_path / "a.txt", tmp_path / "b.jsonl",
                                          tmp_path / "c.parquet"], tmp_path / "out",
                        rows_per_shard=16, device="cpu")
    assert again["shards_skipped"] == 11 and again["rows"] == 0


def test_bad_rows_are_counted_not_fatal(cluster, text_checkpoint, tmp_path):
    from pybert.ray import run_ray_job

    (tmp_path / "in.jsonl").write_bytes(b'"the cat"\n{"text": 3}\n"a \xff dog"\n["it", "is"]\n')
    summary = run_ray_job(str(text_checkpoint), [tmp_path / "in.jsonl"], tmp_path / "out",
                          device="cpu")
    assert summary["rows"] == 4 and summary["bad_rows"] == 2
    table = pq.read_table(next((tmp_path / "out").glob("*.parquet")))
    errors = table.column("error").to_pylist()
    assert errors[0] is None and "in.jsonl:2" in errors[1] and "UTF-8" in errors[2]
    assert table.column("embedding").to_pylist()[1] is None


def test_a_killed_actor_loses_and_repeats_nothing(cluster, text_checkpoint, tmp_path):
    """The first actor to write shard 3 dies (its process exits) midway: Ray restarts it and
    retries the shard; every row is written exactly once."""
    from pybert.ray import ShardWriter, run_ray_job

    marker = tmp_path / "died"

    class DiesOnce(ShardWriter):  # defined here, so Ray ships it by value
        def write(self, shard):
            if shard.start == 48 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().write(shard)

    texts = [t if isinstance(t, str) else t[0] for t in random_texts(100, seed=10)]
    write_txt(tmp_path / "in.txt", texts)
    summary = run_ray_job(str(text_checkpoint), [tmp_path / "in.txt"], tmp_path / "out",
                          rows_per_shard=16, device="cpu", writer=DiesOnce)
    assert marker.exists() and summary["rows"] == 100
    found = shard_vectors(tmp_path / "out")
    expected = single_process(text_checkpoint, tmp_path / "in.txt", tmp_path / "in.npy")
    got = np.array([found[(str(tmp_path / "in.txt"), r)] for r in range(100)])
    assert rel(got, expected) <= 1e-6


def test_a_killed_driver_is_resumed_by_a_rerun(text_checkpoint, tmp_path):
    """`pybert encode --ray` killed midway (SIGKILL to the driver and its local cluster); the
    same command again skips the finished shards and completes, no row lost or repeated."""
    texts = [t if isinstance(t, str) else t[0] for t in random_texts(400, seed=11)]
    write_txt(tmp_path / "in.txt", texts)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pybert", "encode", "--ray", "--model", str(text_checkpoint),
               "--input", str(tmp_path / "in.txt"), "--output", str(out), "--rows-per-shard",
               "10", "--device", "cpu", "--no-progress"]
    first = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None:
        if len(list(out.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[0]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    written = len(list(out.glob("*.parquet")))
    assert 3 <= written < 40
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] >= written and summary["shards"] == 40
    found = shard_vectors(out)
    expected = single_process(text_checkpoint, tmp_path / "in.txt", tmp_path / "in.npy")
    got = np.array([found[(str(tmp_path / "in.txt"), r)] for r in range(400)])
    assert len(found) == 400 and rel(got, expected) <= 1e-6


def test_ray_job_tasks_classify_and_sparse(cluster, tmp_path):
    """--task classify ("scores") and --task sparse ("indices", "values") on the cluster give
    the Python API's answers, a bad row null in each column."""
    from hf_models import make_family_dir, sentences

    from pybert.ray import run_ray_job

    make_family_dir(tmp_path / "ce", "roberta", "classify", num_labels=2)
    make_family_dir(tmp_path / "mlm", "bert", "mlm")
    texts = [" ".join(t.split()[:12]) for t in sentences(30, seed=3)]
    rows = [json.dumps({"text": t}) for t in texts] + ['{"nope": 1}']
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(Exception, match="needs a model with an MLM head"):
        run_ray_job(str(tmp_path / "ce"), [tmp_path / "in.jsonl"], tmp_path / "bad",
                    rows_per_shard=16, device="cpu", task="sparse")
    for task, model in (("classify", "ce"), ("sparse", "mlm")):
        summary = run_ray_job(str(tmp_path / model), [tmp_path / "in.jsonl"],
                              tmp_path / task, rows_per_shard=16, device="cpu", task=task)
        assert summary["bad_rows"] == 1
        table = pa.concat_tables([pq.read_table(p)
                                  for p in sorted((tmp_path / task).glob("*.parquet"))])
        text_model = pybert.TextModel.load(tmp_path / model)
        if task == "classify":
            scores = table.column("scores").to_pylist()
            assert scores[-1] is None
            assert rel(scores[:-1], text_model.classify(texts)) <= 1e-6
        else:
            indices, values = table.column("indices").to_pylist(), table.column("values").to_pylist()
            assert indices[-1] is None and values[-1] is None
            for got_i, got_v, expected in zip(indices, values, text_model.encode_sparse(texts)):
                assert got_i == expected.indices.tolist()
                assert rel(got_v, expected.values) <= 1e-6


def test_the_embedder_refuses_to_overwrite_a_column(text_checkpoint):
    from pybert.ray import Embedder

    embedder = Embedder(str(text_checkpoint), device="cpu", on_error="null")
    for column in ("embedding", "error"):
        table = pa.table({"text": ["the cat"], column: ["already here"]})
        with pytest.raises(ValueError, match=f"already has a column '{column}'"):
            embedder(table)
    out = embedder(pa.table({"text": ["the cat"], "note": ["kept"]}))
    assert out.column_names == ["text", "note", "embedding", "error"]


def test_overwrite_removes_only_the_jobs_own_shards(cluster, text_checkpoint, tmp_path):
    """--overwrite deletes the shards the previous job's manifest lists, not a user's own
    Parquet file or hidden .tmp file in the folder; an output folder holding the inputs is
    refused before anything is touched."""
    from pybert.ray import run_ray_job

    write_txt(tmp_path / "a.txt", [t for t in random_texts(20, seed=2) if isinstance(t, str)])
    out = tmp_path / "out"
    run_ray_job(str(text_checkpoint), [tmp_path / "a.txt"], out, rows_per_shard=8,
                device="cpu")
    pq.write_table(pa.table({"x": [1]}), out / "mine.parquet")
    (out / ".notes.tmp").write_text("mine")
    summary = run_ray_job(str(text_checkpoint), [tmp_path / "a.txt"], out, rows_per_shard=8,
                          device="cpu", overwrite=True)
    assert summary["shards_skipped"] == 0  # the old shards went, and were written again
    assert (out / "mine.parquet").exists() and (out / ".notes.tmp").read_text() == "mine"
    with pytest.raises(ValueError, match="holds the input"):
        run_ray_job(str(text_checkpoint), [tmp_path / "a.txt"], tmp_path, device="cpu",
                    overwrite=True)
    assert (tmp_path / "a.txt").exists()


def test_shards_read_only_their_rows(tmp_path):
    """A text shard starts at its byte offset (no rescan from the top) and gives the rows a
    full scan gives; a Parquet shard reads only its row groups; bad strings in Parquet are
    that row's error; a Parquet file without "text" is named at planning, not in a
    traceback."""
    from pybert.job import parse_rows
    from pybert.ray import _parquet_rows, plan_shards

    lines = ['{"text": "a"}', "", '{"text": "b"}', "not json", '{"text": "c"}'] * 7
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    shards = plan_shards([tmp_path / "in.jsonl"], 4)
    full = list(parse_rows(tmp_path / "in.jsonl"))
    assert sum(s.stop - s.start for s in shards) == len(full) == 28
    for shard in shards:
        read = list(parse_rows(shard.path, shard.start, shard.stop,
                               (shard.start, shard.offset, shard.line)))
        assert [(r, t, str(e), i) for r, t, e, i in read] == \
            [(r, t, str(e), i) for r, t, e, i in full[shard.start:shard.stop]]
    texts = pa.array([b"ok", b"bad \xff bytes", b"fine"] * 10, pa.binary())
    pq.write_table(pa.table({"text": texts.cast(pa.string(), safe=False)}),
                   tmp_path / "in.parquet", row_group_size=7)
    rows = list(_parquet_rows(str(tmp_path / "in.parquet"), 10, 17))  # row groups 1 and 2
    assert [r for r, *_ in rows] == list(range(10, 17))
    assert [r for r, _, e, _ in rows if e is not None] == [10, 13, 16]  # the bad bytes
    assert all("invalid UTF-8 at byte 4" in str(e) for _, _, e, _ in rows if e is not None)
    assert [t for _, t, e, _ in rows if e is None] == ["fine", "ok", "fine", "ok"]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "notext.parquet")
    with pytest.raises(ValueError, match=r"notext.parquet: a Parquet input needs a \"text\""):
        plan_shards([tmp_path / "notext.parquet"], 4)
    (tmp_path / "garbled.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    with pytest.raises(ValueError, match="garbled.parquet: not a readable Parquet file"):
        plan_shards([tmp_path / "garbled.parquet"], 4)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the reaper reads /proc (Linux)")
def test_a_killed_drivers_local_cluster_ends_with_it(tmp_path, text_checkpoint):
    """SIGKILL to `pybert encode --ray` (a local cluster started for the run): the cluster's
    processes (GCS, raylet, agents, workers) are gone within seconds, not left running."""
    from pybert._reaper import descendants, processes

    write_txt(tmp_path / "in.txt", [t for t in random_texts(3000, seed=1) if isinstance(t, str)])
    driver = subprocess.Popen(
        [sys.executable, "-m", "pybert", "encode", "--model", str(text_checkpoint), "--input",
         str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"), "--ray",
         "--rows-per-shard", "50", "--device", "cpu", "--no-progress"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, tree = time.time() + 120, []
    while time.time() < deadline and driver.poll() is None:
        table = processes()
        tree = [(pid, table[pid][1]) for pid in descendants([(driver.pid,
                                                              table[driver.pid][1])], table)
                if pid != driver.pid]
        if len(tree) >= 3 and list((tmp_path / "out").glob("*.parquet")):
            break  # the cluster is up and writing
        time.sleep(0.2)
    assert driver.poll() is None and tree, "the job ended before it could be killed"
    driver.kill()
    driver.wait(30)
    deadline = time.time() + 20
    while time.time() < deadline:
        table = processes()
        left = [pid for pid, start in tree if table.get(pid, (0, None))[1] == start]
        if not left:
            break
        time.sleep(0.2)
    names = [open(f"/proc/{p}/cmdline", "rb").read()[:40] for p in left]
    assert not left, f"{len(left)} of the {len(tree)} processes outlived the driver: {names}"
