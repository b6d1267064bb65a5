"""`pybert serve` beyond one model and one engine call per request (issue 39): several models
in one server (chosen by OpenAI's "model" field, the body's "model" on TEI's routes, or a
/models/{name}/ prefix; each with its own limits; one memory budget), TEI's /similarity, and
client batches over --max-client-batch-size split across submissions when asked for. Each
answer is compared with the Python API's on the same model."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("transformers")

import pybert  # noqa: E402

from hf_models import make_family_dir, sentences  # noqa: E402
from test_serve import Server, request, server  # noqa: E402,F401

TEXTS = [" ".join(t.split()[:12]) for t in sentences(10, seed=5)]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-models") / "bert-small"
    make_family_dir(folder, "bert", hidden=32, heads=2, seed=3)
    return folder


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, text_checkpoint, bert_dir):
    """The pybert checkpoint (default, served as "model") and a Hugging Face BERT beside it
    (served as "small", at most 3 texts per request and mean pooling)."""
    config = tmp_path_factory.mktemp("model-config") / "models.json"
    config.write_text(json.dumps([{"model": str(bert_dir), "served-model-name": "small",
                                   "max-client-batch-size": 3, "pooling": "mean"}]))
    server = Server(text_checkpoint, "--model-config", str(config))
    small = pybert.TextModel.load(bert_dir)
    small.configure(pooling="mean")
    yield server, pybert.TextModel.load(text_checkpoint), small
    server.stop()


def test_each_model_by_name_prefix_and_body_field(two_models):
    server, default, small = two_models
    texts = TEXTS[:3]
    for path, body, model in (("/embed", {}, default), ("/embed", {"model": "small"}, small),
                              ("/models/small/embed", {}, small),
                              ("/models/model/embed", {"model": "model"}, default)):
        status, vectors, _ = request(server, "POST", path, {"inputs": texts, **body})
        assert status == 200, vectors
        np.testing.assert_allclose(np.array(vectors), model.encode(texts), atol=1e-5)
    status, models, _ = request(server, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["model", "small"]
    status, info, _ = request(server, "GET", "/info")
    assert info["models"] == ["model", "small"] and info["model_id"] == "model"
    status, info, _ = request(server, "GET", "/models/small/info")
    assert info["model_id"] == "small" and info["max_client_batch_size"] == 3
    assert info["pooling"] == "mean" and info["dim"] == 32


def test_unknown_model_and_conflicts_answer_clearly(two_models):
    server, _, _ = two_models
    status, err, _ = request(server, "POST", "/v1/embeddings", {"input": "a", "model": "big"})
    assert status == 404 and "model, small" in err["error"]["message"]
    status, err, _ = request(server, "POST", "/embed", {"inputs": "a", "model": "big"})
    assert status == 404 and "'big' is not served" in err["error"]
    status, err, _ = request(server, "POST", "/models/small/embed",
                             {"inputs": "a", "model": "model"})
    assert status == 422 and "on a route of 'small'" in err["error"]
    status, _, _ = request(server, "POST", "/models/big/embed", {"inputs": "a"})
    assert status == 404


def test_each_model_keeps_its_own_limits(two_models):
    server, _, _ = two_models
    status, err, _ = request(server, "POST", "/models/small/embed", {"inputs": TEXTS[:4]})
    assert status == 413 and "more than the 3" in err["error"]
    status, _, _ = request(server, "POST", "/embed", {"inputs": TEXTS[:4]})
    assert status == 200


def test_openai_client_with_two_models(two_models):
    openai = pytest.importorskip("openai")
    server, default, small = two_models
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["model", "small"]
    for name, model in (("small", small), ("model", default)):
        reply = client.embeddings.create(model=name, input=TEXTS[:2])
        assert reply.model == name
        np.testing.assert_allclose(np.array([d.embedding for d in reply.data]),
                                   model.encode(TEXTS[:2]), atol=1e-5)
    with pytest.raises(openai.NotFoundError, match="model, small"):
        client.embeddings.create(model="other", input="a")


def _serve_fails(*flags, model) -> str:
    """What `pybert serve` says when it refuses to start (exit status 2)."""
    result = subprocess.run([sys.executable, "-m", "pybert", "serve", "--model", str(model),
                             "--port", "0", *flags], capture_output=True, text=True,
                            timeout=300, cwd=model.parent)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr


def test_a_server_that_cannot_fit_its_models_is_refused(text_checkpoint, bert_dir):
    err = _serve_fails("--model", str(bert_dir), "--memory-budget", "1000000",
                       model=text_checkpoint)
    assert "more than the memory budget of 1 MiB" in err and "(weights and one batch" in err


def test_model_config_mistakes_are_refused(tmp_path, text_checkpoint, bert_dir):
    config = tmp_path / "models.json"
    for entries, message in (
            ([{"model": str(bert_dir), "max-body-bytes": 10}], "unknown setting"),
            ([{"model": str(bert_dir), "quantize": "int4"}], "must be one of"),
            ([{"model": str(bert_dir), "max-client-batch-size": "3"}], "must be int"),
            ([{"served-model-name": "x"}], "\"model\" (a hub id or a directory) is required"),
            ([{"model": str(bert_dir), "served-model-name": "model"}], "two models would be"),
            ({"model": str(bert_dir)}, "must be a JSON list")):
        config.write_text(json.dumps(entries))
        assert message in _serve_fails("--model-config", str(config), model=text_checkpoint)
    assert "names one model" in _serve_fails("--model", str(bert_dir), "--served-model-name",
                                             "x", model=text_checkpoint)


@pytest.fixture(scope="module")
def splitting(text_checkpoint):
    server = Server(text_checkpoint, "--max-client-batch-size", "4", "--split-client-batches")
    yield server
    server.stop()


def test_similarity_is_the_cosine_of_the_vectors(splitting, text_checkpoint):
    model = pybert.TextModel.load(text_checkpoint)
    source, others = TEXTS[0], TEXTS[1:7]  # 7 texts: two submissions of at most 4
    status, scores, _ = request(splitting, "POST", "/similarity",
                                {"inputs": {"source_sentence": source, "sentences": others},
                                 "parameters": {"truncate": True}})
    assert status == 200 and len(scores) == len(others)
    vectors = torch.nn.functional.normalize(
        torch.from_numpy(model.encode([source] + others)).double(), dim=-1)
    np.testing.assert_allclose(scores, (vectors[1:] @ vectors[0]).numpy(), atol=1e-6)
    for body, status_wanted, match in (
            ({"inputs": {"source_sentence": source}}, 422, "inputs must be"),
            ({"inputs": {"source_sentence": 3, "sentences": others}}, 422, "inputs must be"),
            ({"inputs": {"source_sentence": source, "sentences": [source, 3]}}, 422,
             r"inputs.sentences\[1\] must be a string"),
            ({"inputs": {"source_sentence": source, "sentences": others},
              "parameters": {"truncate": "yes"}}, 422, "truncate must be true or false"),
            ({"inputs": {"source_sentence": source, "sentences": [source] * 4096}}, 413,
             "with the source sentence, more than the 4096")):
        status, err, _ = request(splitting, "POST", "/similarity", body)
        assert status == status_wanted and re.search(match, err["error"]), err


def test_client_batches_split_when_asked(splitting, server, text_checkpoint):
    """--split-client-batches: 10 texts at 4 per submission, answered in order, equal to one
    call's vectors; without it (the `server` fixture: 64 per request) more than the limit is
    refused."""
    model = pybert.TextModel.load(text_checkpoint)
    status, vectors, _ = request(splitting, "POST", "/embed", {"inputs": TEXTS})
    assert status == 200
    np.testing.assert_allclose(np.array(vectors), model.encode(TEXTS), atol=1e-5)
    status, reply, _ = request(splitting, "POST", "/v1/embeddings", {"input": TEXTS})
    assert [d["index"] for d in reply["data"]] == list(range(10))
    np.testing.assert_allclose(np.array([d["embedding"] for d in reply["data"]]),
                               model.encode(TEXTS), atol=1e-5)
    status, info, _ = request(splitting, "GET", "/info")
    assert info["max_client_batch_size"] == 4
    status, err, _ = request(server, "POST", "/embed", {"inputs": ["a"] * 65})
    assert status == 413 and "more than the 64" in err["error"]
