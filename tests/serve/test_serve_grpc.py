"""`pybert serve --grpc-port`: text-embeddings-inference's gRPC API (tei.proto) through a real
grpc client, each answer equal to the Python API's (and to the HTTP route's) on the same model;
streams answered in order; errors as gRPC statuses; the API key and the model metadata."""

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("transformers")
grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

import pybert  # noqa: E402

from hf_models import make_family_dir, sentences  # noqa: E402
from test_serve import Server, free_port, request  # noqa: E402

TEXTS = [" ".join(t.split()[:12]) for t in sentences(6, seed=7)]
protos, services = grpc.protos_and_services("pybert/serve/tei.proto")


class GrpcServer(Server):
    def __init__(self, folder, *flags):
        self.grpc_port = free_port()
        super().__init__(folder, "--grpc-port", str(self.grpc_port), *flags)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    def stub(self, name):
        return getattr(services, f"{name}Stub")(self.channel)

    def stop(self):
        self.channel.close()
        return super().stop()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc-embed") / "bert"
    make_family_dir(folder, "bert", seed=5)
    server = GrpcServer(folder, "--api-key", "k3y")
    yield server, pybert.TextModel.load(folder)
    server.stop()


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc-rerank") / "roberta"
    make_family_dir(folder, "roberta", "classify", num_labels=1)
    server = GrpcServer(folder)
    yield server, pybert.TextModel.load(folder)
    server.stop()


KEY = (("authorization", "Bearer k3y"),)


def test_embed_and_its_stream_equal_the_python_api(embedder):
    server, model = embedder
    embed = server.stub("Embed")
    expected = model.encode(TEXTS)
    reply = embed.Embed(protos.EmbedRequest(inputs=TEXTS[0]), metadata=KEY)
    np.testing.assert_allclose(reply.embeddings, expected[0], atol=1e-5)
    assert reply.metadata.compute_tokens > 2 and reply.metadata.total_time_ns > 0
    replies = list(embed.EmbedStream(iter([protos.EmbedRequest(inputs=t) for t in TEXTS]),
                                     metadata=KEY))
    np.testing.assert_allclose([r.embeddings for r in replies], expected, atol=1e-5)
    short = embed.Embed(protos.EmbedRequest(inputs=TEXTS[1], dimensions=8, normalize=False),
                        metadata=KEY)
    assert len(short.embeddings) == 8
    status, http, _ = request(server, "POST", "/embed",
                              {"inputs": TEXTS[1], "dimensions": 8, "normalize": False},
                              headers={"Authorization": "Bearer k3y"})
    np.testing.assert_allclose(short.embeddings, http[0], atol=1e-6)
    rows = embed.EmbedAll(protos.EmbedAllRequest(inputs=TEXTS[2]), metadata=KEY)
    status, http, _ = request(server, "POST", "/embed_all", {"inputs": TEXTS[2]},
                              headers={"Authorization": "Bearer k3y"})
    np.testing.assert_allclose([t.embeddings for t in rows.token_embeddings], http[0],
                               atol=1e-6)


def test_info_tokenize_and_decode(embedder):
    server, model = embedder
    info = server.stub("Info").Info(protos.InfoRequest(), metadata=KEY)
    assert info.model_type == protos.MODEL_TYPE_EMBEDDING and info.max_input_length > 0
    tokens = server.stub("Tokenize").Tokenize(protos.EncodeRequest(
        inputs=TEXTS[0], add_special_tokens=True), metadata=KEY).tokens
    ids = [t.id for t in tokens]
    assert ids == model.tokenizer.encode_all([TEXTS[0]])[0][0]
    assert tokens[0].special and not tokens[1].special
    text = server.stub("Tokenize").Decode(protos.DecodeRequest(ids=ids,
                                                               skip_special_tokens=True),
                                          metadata=KEY).text
    assert text == model.tokenizer.decode(ids, True)


def test_errors_are_grpc_statuses(embedder):
    server, _ = embedder
    embed = server.stub("Embed")
    with pytest.raises(grpc.RpcError) as err:
        embed.Embed(protos.EmbedRequest(inputs="a"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        embed.Embed(protos.EmbedRequest(inputs="word " * 5000), metadata=KEY)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncate" in \
        err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        server.stub("Rerank").Rerank(protos.RerankRequest(query="q", texts=["a"]),
                                     metadata=KEY)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "does not serve rerank" in \
        err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        embed.Embed(protos.EmbedRequest(inputs="a"), metadata=KEY + (("model", "other"),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "is not served" in \
        err.value.details()


def test_rerank_and_predict(reranker):
    server, model = reranker
    rerank = server.stub("Rerank")
    ranks = rerank.Rerank(protos.RerankRequest(query="a sorted list", texts=TEXTS,
                                               return_text=True)).ranks
    expected = model.rerank("a sorted list", TEXTS)
    assert [r.index for r in ranks] == [e["index"] for e in expected]
    np.testing.assert_allclose([r.score for r in ranks], [e["score"] for e in expected],
                               atol=1e-5)
    assert all(r.text == TEXTS[r.index] for r in ranks)
    streamed = rerank.RerankStream(iter([protos.RerankStreamRequest(query="a sorted list",
                                                                    text=t) for t in TEXTS]))
    assert [r.index for r in streamed.ranks] == [r.index for r in ranks]
    predict = server.stub("Predict")
    pair = predict.PredictPair(protos.PredictPairRequest(inputs=TEXTS[:2])).predictions
    assert pair[0].score == pytest.approx(float(model.classify(tuple(TEXTS[:2]))[0]), abs=1e-5)
    singles = list(predict.PredictStream(iter([protos.PredictRequest(inputs=t)
                                               for t in TEXTS[:3]])))
    np.testing.assert_allclose([s.predictions[0].score for s in singles],
                               model.classify(TEXTS[:3])[:, 0], atol=1e-5)
    with pytest.raises(grpc.RpcError) as err:
        predict.PredictPair(protos.PredictPairRequest(inputs=TEXTS[:3]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = server.stub("Info").Info(protos.InfoRequest())
    assert info.model_type == protos.MODEL_TYPE_RERANKER
