"""`pybert serve` against slow, greedy and odd clients: the body timeout, the bytes held
across connections, the reply size, the masks per request, a failing input batched with good
ones, lone surrogates, the API key's spelling, and the flags that cannot work."""

import asyncio
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import pybert  # noqa: E402

from test_serve import Server, request  # noqa: E402


def raw_connection(server, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head)
    return sock


def read_status(sock) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def post_head(length: int, path="/embed") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.fixture(scope="module")
def limited(text_checkpoint):
    server = Server(text_checkpoint, "--body-timeout", "1", "--max-body-bytes", "1000",
                    "--max-buffered-bytes", "1500", "--max-reply-bytes", "5000",
                    "--max-masks", "3", "--max-inputs", "64")
    yield server
    server.stop()


def test_a_half_sent_body_times_out_and_health_stays_up(limited):
    sock = raw_connection(limited, post_head(100) + b'{"inputs": ["a')
    began = time.monotonic()
    assert request(limited, "GET", "/health")[0] == 200  # answered meanwhile
    assert read_status(sock) == 408
    assert time.monotonic() - began < 10
    sock.close()


def test_bodies_held_at_once_are_bounded(limited):
    first = raw_connection(limited, post_head(950) + b" " * 900)
    time.sleep(0.3)
    second = raw_connection(limited, post_head(950) + b" " * 900)
    assert read_status(second) == 503  # 1,800 bytes held would pass the 1,500 allowed
    first.sendall(b'{"inputs": "a"}'.ljust(50))
    assert read_status(first) == 200
    first.close(), second.close()
    assert request(limited, "POST", "/embed", {"inputs": ["the cat"]})[0] == 200


def test_replies_and_masks_are_bounded(limited):
    status, reply, _ = request(limited, "POST", "/embed", {"inputs": ["the cat sat"] * 40})
    assert status == 413 and "max_reply_bytes=5000" in reply["error"]
    status, reply, _ = request(limited, "POST", "/fill-mask",
                               {"inputs": ["the <mask> <mask> on <mask> <mask>"]})
    assert status == 413 and "max_masks=3" in reply["error"]
    status, reply, _ = request(limited, "POST", "/fill-mask",
                               {"inputs": ["the <mask> sat on the mat ."], "top_k": 2})
    assert status == 200 and len(reply[0][0]) == 2


def test_advice_names_what_the_route_takes(limited):
    status, reply, _ = request(limited, "POST", "/v1/embeddings", {"input": ["cat " * 40]})
    assert status == 413 and "truncate" not in reply["error"]["message"]
    status, reply, _ = request(limited, "POST", "/fill-mask", {"inputs": ["cat " * 40]})
    assert status == 413 and "\"truncate\": true" in reply["error"]
    assert "truncation='warn'" not in reply["error"]


def test_lone_surrogates_answer_422(limited):
    raw = b'{"inputs": ["fine", "bad \\ud800 text"]}'
    status, reply, _ = request(limited, "POST", "/embed", raw=raw)
    assert status == 422 and "inputs[1]" in reply["error"] and "surrogate" in reply["error"]


def test_api_key_scheme_case_and_non_ascii_keys(text_checkpoint):
    server = Server(text_checkpoint, "--api-key", "clé-secrète")
    try:
        body = {"inputs": ["a"]}
        for header in ("Bearer", "bearer", "BEARER"):
            value = f"{header} clé-secrète".encode().decode("latin-1")  # as a client sends it
            assert request(server, "POST", "/embed", body, {"Authorization": value})[0] == 200
        assert request(server, "POST", "/embed", body,
                       {"Authorization": "Basic clé-secrète".encode().decode("latin-1")})[0] \
            == 401
        assert request(server, "POST", "/embed", body, {"Authorization": "Bearer cle"})[0] == 401
    finally:
        server.stop()


def test_flags_that_cannot_work_are_refused(text_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "pybert", "serve", "--model",
                           str(text_checkpoint), "--port", "70000"], capture_output=True,
                          text=True, timeout=120, cwd=text_checkpoint.parent)
    assert proc.returncode == 2 and "--port must be in [0, 65535]" in proc.stderr


def test_a_failing_input_fails_alone():
    """A batch whose forward fails is run again request by request: the request that broke
    it gets the error, the ones batched with it their answers."""
    from pybert.serve import Batcher, ServeConfig

    class Model:
        calls = 0

        def run_tasks(self, requests):
            Model.calls += 1
            if any(ids == [666] for _, encoded, *_ in requests for ids, _ in encoded):
                raise ValueError("the forward's outputs are not finite")
            return [torch.ones((len(encoded), 2)) for _, encoded, *_ in requests]

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = Batcher(Model(), ServeConfig(max_wait_ms=200))
        batcher.start()
        good = [batcher.submit([([1], [0])], loop) for _ in range(3)]
        bad = batcher.submit([([666], [0])], loop)
        more = batcher.submit([([2], [0]), ([3], [0])], loop)
        results = await asyncio.gather(*good, bad, more, return_exceptions=True)
        await loop.run_in_executor(None, batcher.stop)
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[3], ValueError)
    assert all(isinstance(r, torch.Tensor) for i, r in enumerate(results) if i != 3)
    assert results[4].shape == (2, 2)
    assert Model.calls == 1 + 5  # the batch, then each request alone


def test_a_model_that_overflows_answers_422_and_counts_it(tmp_path):
    """A checkpoint whose embedding row for "dog" is huge: a text with "dog" answers 422 with
    the reason, the others 200, and /metrics counts both."""
    from helpers import TEXT_CONFIG, VOCAB, random_model

    net = random_model(TEXT_CONFIG, seed=4)
    with torch.no_grad():
        net.encoder.token_embedding.weight[VOCAB["dog"]] = 3e38
    pybert.save(net, tmp_path / "model", vocab=VOCAB)
    server = Server(tmp_path / "model", "--max-wait-ms", "100")
    try:
        answers = []

        def client(text):
            answers.append((text, request(server, "POST", "/embed", {"inputs": [text]})))

        threads = [threading.Thread(target=client, args=(t,))
                   for t in ["the cat", "a dog ran", "it is red", "the mat"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for text, (status, reply, _) in answers:
            if "dog" in text:
                assert status == 422 and "cannot compute" in reply["error"], reply
            else:
                assert status == 200 and np.isfinite(reply).all()
        _, metrics, _ = request(server, "GET", "/metrics")
        assert 'status="422"' in metrics and 'status="200"' in metrics
    finally:
        server.stop()


def test_large_replies_are_refused_before_the_work(limited):
    """/embed_all whose floats alone pass max_reply_bytes is refused before the engine runs
    (and /tokenize gives up as soon as its reply passes the limit: below)."""
    status, reply, _ = request(limited, "POST", "/embed_all", {"inputs": ["the cat sat"] * 40})
    assert status == 413 and "max_reply_bytes=5000 allows" in reply["error"]


def test_a_rerank_query_and_tokenize_replies_are_bounded(tmp_path):
    pytest.importorskip("transformers")
    from hf_models import make_family_dir

    make_family_dir(tmp_path / "ce", "roberta", "classify", num_labels=1)
    server = Server(tmp_path / "ce", "--max-text-bytes", "2000", "--max-reply-bytes", "5000")
    try:
        status, reply, _ = request(server, "POST", "/tokenize", {"inputs": ["the cat sat"] * 60})
        assert status == 413 and "max_reply_bytes=5000" in reply["error"]
        status, reply, _ = request(server, "POST", "/tokenize", {"inputs": "the cat"})
        assert status == 200 and reply[0][0]["special"]
        status, reply, _ = request(server, "POST", "/rerank",
                                   {"query": "q" * 3000, "texts": ["a"]})
        assert status == 413 and "query is longer than 2000 bytes" in reply["error"]
        raw = b'{"query": "bad \\ud800 query", "texts": ["a"]}'
        status, reply, _ = request(server, "POST", "/rerank", raw=raw)
        assert status == 422 and reply["error"].startswith("query is not valid Unicode")
        raw = b'{"inputs": [["fine"], ["bad \\ud800 text"]], "truncate": true}'
        status, reply, _ = request(server, "POST", "/predict", raw=raw)
        assert status == 422 and "inputs[1]" in reply["error"]
    finally:
        server.stop()
