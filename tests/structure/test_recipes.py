"""The recipes of docs/architecture.md, dry-run: a toy task and a toy precision are served by
their registry entries alone (and a route by its table entry); the toy family is
tests/checkpoints/test_families.py's."""

import asyncio
import json

import numpy as np
import pytest
import torch

import pybert
from pybert.engine import precision
from pybert.tasks import TASKS, Task, register

from helpers import TEXT_CONFIG, VOCAB, random_model, random_texts, rel_l2


@pytest.fixture
def model():
    return pybert.TextModel.from_model(random_model(TEXT_CONFIG), VOCAB)


@pytest.fixture
def toy_task():
    """A task computed from the shared packed forward: each sequence's token count and the
    norm of its last token's encoding."""
    def compute(model, packed, cu_seqlens, options):
        ends = cu_seqlens[1:] - 1
        norms = packed[ends].float().norm(dim=1) * options.get("scale", 1.0)
        return [(int(n), float(v)) for n, v in zip(cu_seqlens[1:] - cu_seqlens[:-1], norms)]

    def check(model, options):
        if set(options) - {"scale"}:
            raise ValueError("last_norm takes scale")
        return options

    entry = register(Task("last_norm", "encoder", "(tokens, norm of the last encoding)",
                          job=False, compute=compute, available=lambda model: True,
                          needs="an encoder", check=check))
    yield entry
    del TASKS["last_norm"]


def expected_last_norms(model, texts, scale=1.0):
    out = []
    for ids, segments in model.tokenizer.encode_all(texts):
        encoded = model.engine.encode(torch.tensor([ids]), torch.tensor([segments]))[0]
        out.append((len(ids), float(encoded[-1].norm()) * scale))
    return out


def test_a_toy_task_runs_through_the_api_and_the_batch_entry_point(model, toy_task):
    texts = random_texts(9, seed=4)
    assert "last_norm" in model.tasks
    rows = [r for chunk in model.iter_task(texts, "last_norm", batch_tokens=64, chunk_size=4)
            for r in chunk]
    expected = expected_last_norms(model, texts)
    assert [n for n, _ in rows] == [n for n, _ in expected]
    np.testing.assert_allclose([v for _, v in rows], [v for _, v in expected], rtol=1e-5)
    encoded = model.tokenizer.encode_all(texts)
    calls = []
    forward = model.engine.encode_packed
    model.engine.encode_packed = lambda *a, **k: calls.append(1) or forward(*a, **k)
    embedded, toy = model.run_tasks([("embed", encoded[:4]),
                                     ("last_norm", encoded[4:], {"scale": 2.0})])
    assert calls == [1]  # the two tasks shared one packed forward
    np.testing.assert_allclose(embedded.numpy(), model.encode(texts[:4]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([v for _, v in toy],
                               [v for _, v in expected_last_norms(model, texts[4:], 2.0)],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="last_norm takes scale"):
        model.run_tasks([("last_norm", encoded, {"bad": 1})])
    with pytest.raises(ValueError, match="registered already"):
        register(toy_task)


def test_a_toy_task_is_served_by_one_route_entry(model, toy_task):
    """A TaskRoute for the toy task answers through the real batcher, parse to render."""
    pytest.importorskip("starlette")
    from starlette.requests import Request

    from pybert.serve.batcher import Batcher
    from pybert.serve.config import ServeConfig
    from pybert.serve.metrics import Metrics
    from pybert.serve.routes import Parsed, Routes, TaskRoute

    class ToyRoutes(Routes):
        def task_routes(self):
            async def parse(request):
                body = await self.body(request)
                return Parsed(await self.tokenised(body["inputs"], True))

            return super().task_routes() + [TaskRoute(
                "/last_norm", "last_norm", parse,
                lambda rows, parsed: [{"tokens": n, "norm": v} for n, v in rows])]

    texts = [t for t in random_texts(8, seed=7) if isinstance(t, str)]

    async def post(handler, body: dict):
        payload = json.dumps(body).encode()
        scope = {"type": "http", "method": "POST", "path": "/last_norm", "query_string": b"",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(payload)).encode())]}
        sent = []

        async def receive():
            if not sent:
                sent.append(1)
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.sleep(3600)  # the client stays

        return await handler(Request(scope, receive))

    config = ServeConfig()
    batcher = Batcher(model, config)
    routes = ToyRoutes(model, config, batcher, Metrics(lambda: 0))
    handler = dict((path, h) for path, h, _ in routes.table())["/last_norm"]
    batcher.start()
    try:
        reply = asyncio.run(post(handler, {"inputs": texts}))
    finally:
        batcher.stop()
        routes.tokenizing.shutdown(wait=False)
    assert reply.status_code == 200
    got = json.loads(reply.body)
    expected = expected_last_norms(model, texts)
    assert [g["tokens"] for g in got] == [n for n, _ in expected]
    np.testing.assert_allclose([g["norm"] for g in got], [v for _, v in expected], rtol=1e-5)
    assert "/last_norm" in routes.served_routes()


def test_a_toy_precision_is_one_spec_entry(monkeypatch):
    """A precision whose weights the backend already stores ("plain": the matrix as given,
    from float32) is asked for by quantize= once it is in PRECISIONS; the C++ engine parses
    its storage name."""
    toy = precision.Precision("plain32", torch.float32, "plain", ("cpu",), quantize=True)
    monkeypatch.setitem(precision.PRECISIONS, "plain32", toy)
    assert "plain32" in precision.quantizations("cpu")
    net = random_model(TEXT_CONFIG)
    reference = pybert.Engine.from_model(net)
    engine = pybert.Engine.from_model(net, quantize="plain32")
    assert engine.quantize == "plain32"
    tokens = torch.randint(5, TEXT_CONFIG.vocab_size, (3, 11))
    segments = torch.randint(0, 2, (3, 11))
    lengths = torch.tensor([11, 4, 1])
    assert rel_l2(engine.encode(tokens, segments, lengths),
                  reference.encode(tokens, segments, lengths)) <= 1e-5
    monkeypatch.setitem(precision.PRECISIONS, "plain32",
                        precision.Precision("plain32", torch.float32, "bogus", ("cpu",),
                                            quantize=True))
    with pytest.raises(ValueError, match="weight_storage must be 'packed', 'plain' or 'int8'"):
        pybert.Engine.from_model(net, quantize="plain32")
