"""`pybert serve` over the other families and their tasks: text-embeddings-inference's
/rerank, /predict, /embed_sparse, /embed_all, /tokenize, /decode and `dimensions`, each
answer equal to the Python API's on the same model, and a route the model cannot serve
answering 404 with the reason."""

import re

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("transformers")

import pybert  # noqa: E402

from hf_models import make_bge_m3, make_family_dir, sentences  # noqa: E402
from helpers import rel_l2  # noqa: E402
from test_serve import Server, request  # noqa: E402

TEXTS = [" ".join(t.split()[:10]) for t in sentences(8, seed=11)]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reranker") / "hf"
    make_family_dir(folder, "roberta", "classify", num_labels=1)
    server = Server(folder)
    yield server, pybert.TextModel.load(folder)
    server.stop()


@pytest.fixture(scope="module")
def splade(tmp_path_factory):
    folder = tmp_path_factory.mktemp("splade") / "hf"
    make_family_dir(folder, "distilbert", "mlm")
    server = Server(folder)
    yield server, pybert.TextModel.load(folder)
    server.stop()


def test_rerank_and_predict(reranker):
    server, model = reranker
    status, ranked, _ = request(server, "POST", "/rerank",
                                {"query": "a sorted list", "texts": TEXTS, "return_text": True})
    assert status == 200
    expected = model.rerank("a sorted list", TEXTS)
    assert [r["index"] for r in ranked] == [r["index"] for r in expected]
    assert [r["score"] for r in ranked] == pytest.approx([r["score"] for r in expected],
                                                         abs=1e-6)
    assert all(r["text"] == TEXTS[r["index"]] for r in ranked)
    status, raw, _ = request(server, "POST", "/rerank",
                             {"query": "a sorted list", "texts": TEXTS, "raw_scores": True})
    logits = model.classify([("a sorted list", t) for t in TEXTS], raw_scores=True)[:, 0]
    assert sorted(r["score"] for r in raw) == pytest.approx(sorted(logits), abs=1e-5)
    status, single, _ = request(server, "POST", "/predict", {"inputs": ["a", "b c"]})
    assert status == 200 and single[0]["label"] == "LABEL_0"
    assert single[0]["score"] == pytest.approx(float(model.classify(("a", "b c"))[0]), abs=1e-6)
    status, many, _ = request(server, "POST", "/predict", {"inputs": TEXTS[:3]})
    assert status == 200 and len(many) == 3
    assert [m[0]["score"] for m in many] == pytest.approx(model.classify(TEXTS[:3])[:, 0],
                                                          abs=1e-6)
    status, info, _ = request(server, "GET", "/info")
    assert info["architecture"] == "RoBERTa" and "/rerank" in info["routes"] and \
        "classify" in info["tasks"]


def test_predict_takes_teis_batch_grammar(reranker):
    """TEI's /predict: a text, a [a, b] pair, or a batch of 1- and 2-element lists."""
    server, model = reranker
    status, batch, _ = request(server, "POST", "/predict",
                               {"inputs": [[TEXTS[0]], [TEXTS[1], TEXTS[2]], [TEXTS[3]]]})
    assert status == 200 and len(batch) == 3
    expected = [model.classify(TEXTS[0]), model.classify((TEXTS[1], TEXTS[2])),
                model.classify(TEXTS[3])]
    assert [b[0]["score"] for b in batch] == pytest.approx(
        [float(e[0]) for e in expected], abs=1e-6)
    for body, match in (({"inputs": [["a", "b", "c"]]}, r"inputs\[0\] must hold one text or "
                                                       "two"),
                        ({"inputs": [[]]}, r"inputs\[0\] must hold one text or two"),
                        ({"inputs": [["a"], [1]]}, r"inputs\[1\] must be a string"),
                        ({"input": "a"}, r'no "inputs" but has "input"')):
        status, reply, _ = request(server, "POST", "/predict", body)
        assert status == 422 and re.search(match, reply["error"]), (body, reply)
    status, reply, _ = request(server, "POST", "/embed", {"inputs": "a", "prompt_name": [1]})
    assert status == 422 and reply["error"] == "prompt_name must be a string, got list"


@pytest.mark.parametrize("path,body,status,match", [
    ("/rerank", {"query": "q", "texts": []}, 422, "texts must not be empty"),
    ("/rerank", {"query": 3, "texts": ["a"]}, 422, "query must be a string"),
    ("/embed", {"inputs": ["a"], "dimensions": 49}, 422, r"dimensions must be an int in \[1, 48\]"),
    ("/embed_sparse", {"inputs": ["a"]}, 404, "does not serve sparse"),
    ("/decode", {"ids": [1, 10 ** 9]}, 422, "ids must be"),
])
def test_bad_task_requests(reranker, path, body, status, match):
    import re

    got, reply, _ = request(reranker[0], "POST", path, body)
    assert got == status and re.search(match, reply["error"]), reply


def test_sparse_tokens_dimensions_and_tokenizer_routes(splade):
    server, model = splade
    status, sparse, _ = request(server, "POST", "/embed_sparse", {"inputs": TEXTS[:4]})
    assert status == 200
    for got, expected in zip(sparse, model.encode_sparse(TEXTS[:4])):
        assert [g["index"] for g in got] == expected.indices.tolist()
        assert [g["value"] for g in got] == pytest.approx(expected.values.tolist(), rel=1e-5)
    status, tokens, _ = request(server, "POST", "/embed_all", {"inputs": TEXTS[:2]})
    expected = model.encode(TEXTS[:2], pooling="tokens")
    assert status == 200 and [len(t) for t in tokens] == [len(e) for e in expected]
    assert rel_l2(torch.tensor(tokens[1]), torch.from_numpy(expected[1])) <= 1e-6
    status, cut, _ = request(server, "POST", "/embed",
                             {"inputs": TEXTS[:3], "dimensions": 16, "normalize": True})
    expected = model.encode(TEXTS[:3], dimensions=16)
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert status == 200 and np.allclose(cut, expected, atol=1e-6)
    status, openai, _ = request(server, "POST", "/v1/embeddings",
                                {"input": TEXTS[:1], "dimensions": 8})
    assert status == 200 and len(openai["data"][0]["embedding"]) == 8
    status, described, _ = request(server, "POST", "/tokenize", {"inputs": TEXTS[0]})
    ids = model.tokenizer.encode_all([TEXTS[0]])[0][0]
    assert status == 200 and [t["id"] for t in described[0]] == ids
    assert described[0][0]["special"] and described[0][0]["start"] is None
    word = described[0][1]
    assert TEXTS[0][word["start"]:word["stop"]].lower().startswith(word["text"].lstrip("#"))
    status, text, _ = request(server, "POST", "/decode", {"ids": ids})
    assert status == 200 and text == model.tokenizer.decode(ids)
    status, missing, _ = request(server, "POST", "/rerank", {"query": "q", "texts": ["a"]})
    assert status == 404 and "does not serve rerank" in missing["error"]


def test_a_modern_encoder_is_served(tmp_path):
    """A ModernBERT embedder (rotary, windowed layers) behind the server: /embed and /info
    as the Python API computes them, texts longer than its local window included."""
    from hf_models import family_tokenizer, make_modern

    folder = tmp_path / "modernbert"
    make_modern(folder, "modernbert", tokenizer=family_tokenizer("roberta", tmp_path))
    server = Server(folder)
    try:
        texts = TEXTS[:3] + [" ".join(sentences(30, seed=12))[:2500]]
        status, vectors, _ = request(server, "POST", "/embed", {"inputs": texts})
        assert status == 200
        expected = pybert.TextModel.load(folder).encode(texts, return_type="torch")
        assert rel_l2(torch.tensor(vectors), expected) <= 1e-5
        status, info, _ = request(server, "GET", "/info")
        assert status == 200 and info["architecture"] == "ModernBERT"
        assert info["max_input_length"] == 1100
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_sparse_encoder_refuses_dense_routes_with_the_one_to_use(tmp_path):
    from sentence_transformers import SparseEncoder

    make_family_dir(tmp_path / "hf", "bert", "mlm")
    SparseEncoder(str(tmp_path / "hf"), device="cpu", local_files_only=True).save(
        str(tmp_path / "splade"))
    server = Server(tmp_path / "splade")
    try:
        for path, body in (("/embed", {"inputs": "a"}), ("/v1/embeddings", {"input": "a"})):
            status, reply, _ = request(server, "POST", path, body)
            message = reply["error"]["message"] if path.startswith("/v1") else reply["error"]
            assert status == 422 and "POST /embed_sparse gives its vectors" in message
        status, sparse, _ = request(server, "POST", "/embed_sparse", {"inputs": TEXTS[:2]})
        assert status == 200 and len(sparse) == 2
    finally:
        server.stop()


def test_bge_m3_by_the_embedding_routes(tmp_path):
    """BGE-M3's lexical weights at /embed_sparse and its multi-vector embeddings at
    /embed_multi, as the Python API gives them (the outputs' definitions:
    tests/checkpoints/test_bge_m3.py)."""
    folder = tmp_path / "m3"
    make_bge_m3(folder)
    m3 = pybert.TextModel.load(folder)
    server = Server(folder)
    try:
        status, sparse, _ = request(server, "POST", "/embed_sparse", {"inputs": TEXTS[:2]})
        assert status == 200
        expected = m3.encode_sparse(TEXTS[:2])
        assert [[e["index"] for e in s] for s in sparse] == \
            [v.indices.tolist() for v in expected]
        status, multi, _ = request(server, "POST", "/embed_multi", {"inputs": TEXTS[2]})
        assert status == 200
        np.testing.assert_allclose(np.array(multi[0]), m3.encode_multi(TEXTS[2]), atol=1e-6)
        status, ranked, _ = request(server, "POST", "/rerank",
                                    {"query": TEXTS[0], "texts": TEXTS[1:5], "return_text": True})
        assert status == 200
        expected = m3.rerank(TEXTS[0], TEXTS[1:5])
        assert [r["index"] for r in ranked] == [e["index"] for e in expected]
        np.testing.assert_allclose([r["score"] for r in ranked],
                                   [e["score"] for e in expected], rtol=1e-5)
        assert all(r["text"] == TEXTS[1:5][r["index"]] for r in ranked)
        status, info, _ = request(server, "GET", "/info")
        assert {"/embed", "/embed_sparse", "/embed_multi", "/rerank"} <= set(info["routes"])
    finally:
        server.stop()
