"""`pybert serve`: the real server on a free loopback port, spoken to over HTTP."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import pybert  # noqa: E402

from helpers import random_model, rel_l2  # noqa: E402
from helpers import TEXT_CONFIG, VOCAB, random_texts  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m pybert serve` in a subprocess (run from a temporary folder, so that the
    installed package is imported, not the source tree)."""

    def __init__(self, text_checkpoint, *flags, env=None, model_flag="--model",
                 log_level="warning"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pybert", "serve", model_flag, str(text_checkpoint), "--port",
             str(self.port), "--log-level", log_level, *flags],
            cwd=text_checkpoint.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if request(self, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the server did not become ready")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.communicate(timeout=60)[0]


def request(server, method, path, body=None, headers=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            payload = response.read()
            status, reply_headers = response.status, response.headers
    except urllib.error.HTTPError as err:
        payload, status, reply_headers = err.read(), err.code, err.headers
    try:
        value = json.loads(payload)
    except ValueError:
        value = payload.decode()
    return status, value, reply_headers


@pytest.fixture(scope="module")
def model(text_checkpoint):
    return pybert.TextModel.load(text_checkpoint)


@pytest.fixture(scope="module")
def server(text_checkpoint):
    s = Server(text_checkpoint, "--max-inputs", "64", "--max-text-bytes", "2000")
    yield s
    s.stop()


def test_embed_equals_pybert_encode(server, model):
    texts = [t if isinstance(t, str) else t[0] for t in random_texts(40, seed=3)]
    status, vectors, _ = request(server, "POST", "/embed", {"inputs": texts})
    assert status == 200
    assert rel_l2(torch.tensor(vectors), torch.from_numpy(model.encode(texts))) <= 1e-6
    status, single, _ = request(server, "POST", "/embed", {"inputs": texts[0]})
    assert status == 200 and len(single) == 1
    np.testing.assert_allclose(single[0], vectors[0], rtol=1e-6, atol=1e-7)
    status, unit, _ = request(server, "POST", "/embed", {"inputs": texts[:3], "normalize": True})
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_openai_embeddings(server, model):
    texts = ["the cat sat", "a dog ran on the mat"]
    status, reply, _ = request(server, "POST", "/v1/embeddings",
                               {"input": texts, "model": "mine"})
    assert status == 200 and reply["object"] == "list" and reply["model"] == "mine"
    expected = model.encode(texts)
    got = np.array([d["embedding"] for d in sorted(reply["data"], key=lambda d: d["index"])])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    tokens = sum(len(ids) for ids, _ in model.tokenizer.encode_all(texts))
    assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    status, reply, _ = request(server, "POST", "/v1/embeddings",
                               {"input": texts[0], "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(reply["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[0], rtol=1e-5, atol=1e-6)


def test_concurrent_clients_get_their_own_results(server, model):
    texts = [t if isinstance(t, str) else t[1] for t in random_texts(48, seed=4)]
    expected = model.encode(texts)
    results = [None] * len(texts)

    def client(i):
        results[i] = request(server, "POST", "/embed", {"inputs": [texts[i]]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (status, vectors, _) in enumerate(results):
        assert status == 200
        np.testing.assert_allclose(vectors[0], expected[i], rtol=1e-5, atol=1e-6)
    status, metrics, _ = request(server, "GET", "/metrics")
    assert status == 200 and "pybert_batch_sequences_bucket" in metrics
    assert 'pybert_requests_total{route="/embed",status="200"}' in metrics


def test_the_heads(server, model):
    status, masks, _ = request(server, "POST", "/fill-mask",
                               {"inputs": ["the <mask> sat on the mat ."], "top_k": 3})
    assert status == 200
    expected = model.fill_mask(["the <mask> sat on the mat ."], k=3)
    assert [[(g["token"], pytest.approx(g["score"], rel=1e-5)) for g in m] for m in masks[0]] \
        == [[(w, p) for w, p in m] for m in expected[0]]
    status, probs, _ = request(server, "POST", "/next-sentence",
                               {"inputs": [["the cat sat", "it is red"], ["a dog", "ran"]]})
    assert status == 200
    np.testing.assert_allclose(probs, model.next_sentence([("the cat sat", "it is red"),
                                                           ("a dog", "ran")]), rtol=1e-5)


def test_info_and_health(server):
    status, info, _ = request(server, "GET", "/info")
    assert status == 200 and info["dim"] == TEXT_CONFIG.num_hiddens and info["pooling"] == "cls"
    assert info["max_input_length"] == TEXT_CONFIG.max_len and info["max_client_batch_size"] == 64
    assert info["cpu_plan"]["cpu"]["threads"] >= 1 and info["cpu_plan"]["gemm"]  # what it chose
    assert request(server, "GET", "/health")[:2] == (200, {"status": "ok"})


@pytest.mark.parametrize("path,body,raw,status,match", [
    ("/embed", None, b"{not json", 400, "not valid JSON"),
    ("/embed", [1, 2], None, 422, "JSON object"),
    ("/embed", {}, None, 422, "inputs must be a string"),
    ("/embed", {"inputs": []}, None, 422, "must not be empty"),
    ("/embed", {"inputs": ["a", 3]}, None, 422, r"inputs\[1\] must be a string"),
    ("/embed", {"inputs": ["a"] * 65}, None, 413, "more than the 64"),
    ("/embed", {"inputs": ["a" * 2001]}, None, 413, "longer than 2000 bytes"),
    ("/embed", {"inputs": ["cat " * 40]}, None, 413, "truncate"),
    ("/embed", {"inputs": ["a"], "normalize": "yes"}, None, 422, "normalize must be"),
    ("/v1/embeddings", {"input": ["a"], "encoding_format": "hex"}, None, 422,
     "encoding_format"),
    ("/fill-mask", {"inputs": ["a <mask>"], "top_k": 0}, None, 422, "top_k"),
    ("/next-sentence", {"inputs": ["just one"]}, None, 422, "pair"),
])
def test_bad_requests_get_a_4xx_that_says_why(server, path, body, raw, status, match):
    import re

    got, reply, _ = request(server, "POST", path, body, raw=raw)
    assert got == status
    message = reply["error"]["message"] if path.startswith("/v1/") else reply["error"]
    assert re.search(match, message), message


def test_truncate_cuts_long_inputs(server, model):
    status, vectors, _ = request(server, "POST", "/embed",
                                 {"inputs": ["cat " * 40], "truncate": True})
    assert status == 200
    with pytest.warns(UserWarning):
        expected = model.encode(["cat " * 40])
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


def test_api_key_and_a_full_queue(text_checkpoint):
    server = Server(text_checkpoint, "--max-queue", "2", env={"PYBERT_API_KEY": "s3cret"})
    try:
        assert request(server, "GET", "/health")[0] == 200  # open to probes
        status, reply, headers = request(server, "POST", "/embed", {"inputs": ["a"]})
        assert status == 401 and "API key" in reply["error"]
        assert request(server, "GET", "/metrics")[0] == 401
        key = {"Authorization": "Bearer s3cret"}
        assert request(server, "POST", "/embed", {"inputs": ["a"]}, key)[0] == 200
        assert request(server, "POST", "/embed", {"inputs": ["a"]},
                       {"Authorization": "Bearer wrong"})[0] == 401
        # More texts than the whole queue holds: never servable, so 413 (not 503 forever).
        status, reply, _ = request(server, "POST", "/embed", {"inputs": ["a", "b", "c"]}, key)
        assert status == 413 and "max_queue=2" in reply["error"]
        # Many clients at once: every route goes through the one queue, so some are told to
        # come back (503 + Retry-After) and the others are answered.
        bodies = {"/embed": {"inputs": ["a b", "c d"]},
                  "/fill-mask": {"inputs": ["the <mask> sat", "a <mask>"]},
                  "/next-sentence": {"inputs": [["the cat", "sat"], ["a", "b"]]}}
        answers = []

        def client(path):
            answers.append((path, *request(server, "POST", path, bodies[path], key)))

        threads = [threading.Thread(target=client, args=(path,))
                   for _ in range(20) for path in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {status for _, status, _, _ in answers} <= {200, 503}
        for path in bodies:
            busy = [(r, h) for p, status, r, h in answers if p == path and status == 503]
            assert busy, f"{path} never met the full queue"
            assert all(h["Retry-After"] == "1" and "overloaded" in r["error"] for r, h in busy)
    finally:
        server.stop()


def test_sigterm_finishes_the_requests_in_flight(tmp_path):
    """SIGTERM while requests are being computed: they are all answered in full, then the
    server exits (by the signal, as uvicorn re-raises it once it has shut down)."""
    from pybert.config import BertConfig

    slow = BertConfig(len(VOCAB), 256, 1024, 4, 8, max_len=24)  # ~0.5 s a request here
    pybert.save(random_model(slow, seed=5), tmp_path / "slow", vocab=VOCAB)
    server = Server(tmp_path / "slow", "--batch-tokens", "1500")
    texts = [" ".join(["the cat sat on the mat ."] * 3)] * 64
    results = []

    def client():
        results.append(request(server, "POST", "/embed", {"inputs": texts})[0])

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while time.time() < deadline:  # until the batcher has started on them
        metrics = request(server, "GET", "/metrics")[1]
        if "pybert_batch_sequences_count 2.0" in metrics or \
                "pybert_batch_sequences_count 3.0" in metrics:
            break
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    output = server.stop()
    assert server.proc.returncode in (0, -signal.SIGTERM), output
    assert results == [200] * 6, (results, output)


def test_the_batcher_drops_the_work_of_clients_that_left():
    """A request cancelled while queued (its client disconnected) is never computed."""
    import asyncio

    from pybert.serve import Batcher, ServeConfig

    calls = []
    release = threading.Event()

    class SlowModel:
        def run_tasks(self, requests):
            calls.append(sum(len(encoded) for _, encoded, *_ in requests))
            release.wait(10)
            return [torch.zeros((len(encoded), 4)) for _, encoded, *_ in requests]

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = Batcher(SlowModel(), ServeConfig(batch_tokens=4, max_wait_ms=0))
        batcher.start()
        first = batcher.submit([([1, 2, 3, 4], [0, 0, 0, 0])], loop)  # fills a batch
        await asyncio.sleep(0.2)  # the batcher is busy with it
        gone = batcher.submit([([1, 2], [0, 0])] * 2, loop)
        kept = batcher.submit([([1], [0])], loop)
        gone.cancel()
        release.set()
        assert (await first).shape == (1, 4) and (await kept).shape == (1, 4)
        await asyncio.get_running_loop().run_in_executor(None, batcher.stop)

    asyncio.run(scenario())
    assert calls == [1, 1]  # the cancelled request's two sequences never ran


def test_a_pool_sends_requests_to_the_least_loaded_batcher():
    """`--devices`: one batcher per engine; a request goes to the batcher with the least work
    in flight (queued tokens and those of its running call: a batcher inside a long call has
    none queued, yet is busy), ties in turn, and each answers with its own engine's rows."""
    import asyncio

    from pybert.serve import Batcher, BatcherPool, ServeConfig

    busy = threading.Event()

    class Engine:
        def __init__(self, value, wait=None):
            self.value, self.wait, self.calls = value, wait, 0

        def run_tasks(self, requests):
            self.calls += 1
            if self.wait is not None:
                self.wait.wait(10)
            return [torch.full((len(encoded), 2), self.value) for _, encoded, *_ in requests]

    async def scenario():
        loop = asyncio.get_running_loop()
        config = ServeConfig(batch_tokens=2, max_wait_ms=0)
        first, second = Engine(1.0, wait=busy), Engine(2.0)
        pool = BatcherPool([Batcher(first, config), Batcher(second, config)])
        assert pool.replicas == 2
        pool.start()
        # Ties go in turn: the first request to batcher 0, which then sits in a long call.
        blocked = pool.submit([([1, 2], [0, 0])], loop)
        await asyncio.sleep(0.1)
        assert pool.batchers[0].work_in_flight == 2 and pool.batchers[0].queued_sequences == 0
        # Its queue is empty, but it is busy: every later request goes to the idle batcher.
        answers = [await pool.submit([([3], [0])], loop) for _ in range(8)]
        assert all(a[0, 0] == 2.0 for a in answers)
        busy.set()
        assert (await blocked)[0, 0] == 1.0
        await loop.run_in_executor(None, pool.stop)
        assert pool.batchers[0].work_in_flight == 0
        return first.calls, second.calls

    assert asyncio.run(scenario()) == (1, 8)


def test_a_request_larger_than_the_token_budget_runs_as_several_calls():
    """One request of more than batch_tokens is split into engine calls of at most that (a
    single over-long sequence alone), its answer joined in order."""
    import asyncio

    from pybert.serve import Batcher, ServeConfig

    calls = []

    class Model:
        def run_tasks(self, requests):
            (task, encoded, _), = requests
            calls.append(sum(len(ids) for ids, _ in encoded))
            if task == "embed_all":
                return [[torch.full((len(ids), 2), float(ids[0])) for ids, _ in encoded]]
            return [torch.tensor([[float(ids[0])] for ids, _ in encoded])]

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = Batcher(Model(), ServeConfig(batch_tokens=8, max_wait_ms=0))
        batcher.start()
        encoded = [([i] * length, [0] * length) for i, length in
                   enumerate([3, 3, 3, 12, 1, 5, 4], start=1)]
        vectors = await batcher.submit(encoded, loop)
        tokens = await batcher.submit(encoded, loop, "embed_all")
        await loop.run_in_executor(None, batcher.stop)
        return vectors, tokens

    vectors, tokens = asyncio.run(scenario())
    assert vectors[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert [t.shape[0] for t in tokens] == [3, 3, 3, 12, 1, 5, 4]
    assert calls[:4] == [6, 3, 12, 6] and max(calls[4:8]) <= 12 and len(calls) == 10


def test_serving_on_two_devices(text_checkpoint, model):
    """`pybert serve --devices cpu,cpu`: two engines behind one server, /info lists them, and
    concurrent clients get the answers one engine gives."""
    server = Server(text_checkpoint, "--devices", "cpu,cpu")
    try:
        status, info, _ = request(server, "GET", "/info")
        assert status == 200 and info["devices"] == ["cpu", "cpu"]
        texts = [f"the {w} of a list" for w in ("sort", "copy", "index", "count")]
        results = {}

        def client(i):
            results[i] = request(server, "POST", "/embed", {"inputs": texts[i:i + 2]})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(3):
            status, vectors, _ = results[i]
            assert status == 200
            expected = torch.from_numpy(model.encode(texts[i:i + 2]))
            assert rel_l2(torch.tensor(vectors), expected) <= 1e-6
    finally:
        server.stop()


def test_a_bad_device_list_is_refused(text_checkpoint):
    result = subprocess.run([sys.executable, "-m", "pybert", "serve", "--model",
                             str(text_checkpoint), "--devices", "cpu,,cpu"],
                            cwd=text_checkpoint.parent, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--devices must list" in result.stderr
