"""text-embeddings-inference's gRPC API (``tei.proto``: Info, Embed, Predict, Rerank, Tokenize
and their streams) over grpcio's asyncio server, on the HTTP server's event loop: each rpc is
the HTTP route of the same name run on the message's fields, through the same parsing,
batcher and limits (``pybert serve --grpc-port``; the ``grpc`` extra: grpcio, grpcio-tools).

A message becomes the JSON body the route reads (``Routes.body`` takes it from
``request.state``), so an rpc and its route cannot drift apart. Errors are gRPC statuses with
the route's message (``_STATUS``). The ``model`` metadata key chooses among several served
models (default: the first); ``authorization: Bearer <key>`` is wanted with an API key. A
stream's requests run concurrently (they batch together) and are answered in order."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from types import SimpleNamespace

from .http import HTTPError
from .models import served_as

__all__ = ["start_grpc"]

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
           408: "DEADLINE_EXCEEDED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
           499: "CANCELLED", 503: "RESOURCE_EXHAUSTED"}
# A stream's requests in flight at once (beyond: the next is read when one is answered).
_STREAM_WINDOW = 64


def _proto():
    import grpc

    return grpc.protos_and_services("pybert/serve/tei.proto")


class _Call:
    """What a route reads of a request: its JSON body, already parsed."""

    def __init__(self, body: dict):
        self.state = SimpleNamespace(body=body)


class TeiServicer:
    """Every rpc of tei.proto over the routes of the served models (``routes_by_name``, the
    first the default)."""

    def __init__(self, routes_by_name: dict, api_key: str | None):
        self.protos, _ = _proto()
        self.routes_by_name, self.api_key = routes_by_name, api_key
        self.default = next(iter(routes_by_name.values()))

    # -- what every rpc shares -----------------------------------------------------------

    def routes_for(self, context):
        metadata = dict(context.invocation_metadata() or ())
        if self.api_key is not None:
            given = metadata.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.encode("utf-8", "surrogatepass"),
                    self.api_key.encode("utf-8", "surrogatepass")):
                raise HTTPError(401, "this server wants authorization: Bearer <api key>")
        name = metadata.get("model")
        return self.default if name is None else served_as(self.routes_by_name, name)

    async def run(self, context, path: str, body: dict):
        """The value the HTTP route ``path`` answers to ``body`` (its JSON, as Python), and the
        parsed request of a task route (else None)."""
        routes = self.routes_for(context)
        route = routes.task_route(path)
        if route is None:
            return json.loads((await routes.handlers[path](_Call(body))).body), None
        routes.need(route)
        parsed = await route.parse(_Call(body))
        results = await routes.batched(None, parsed.encoded, routes.task_of(route),
                                       parsed.options)
        value = route.render(results, parsed)
        if callable(value):  # built off the event loop, as the HTTP reply is
            value = await asyncio.get_running_loop().run_in_executor(None, value)
        return value, parsed

    async def answer(self, context, work):
        """``await work()``, an HTTPError (or a failure) turned into the rpc's status."""
        import grpc

        try:
            return await work()
        except HTTPError as err:
            await context.abort(getattr(grpc.StatusCode, _STATUS.get(err.status, "INTERNAL")),
                                err.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as err:  # noqa: BLE001 (a bug or a failed forward: a status, not a hang)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: "
                                f"{type(err).__name__}")

    async def stream(self, requests, context, one):
        """The answers of a stream's requests, in order, up to _STREAM_WINDOW in flight."""
        pending: asyncio.Queue = asyncio.Queue(_STREAM_WINDOW)

        async def read():
            try:
                async for message in requests:
                    await pending.put(asyncio.ensure_future(one(message, context)))
            except Exception as err:  # noqa: BLE001 (the stream broke: its reader says so)
                await pending.put(err)
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                if isinstance(task, Exception):
                    raise task
                yield await task
        finally:
            reader.cancel()
            while not pending.empty():
                task = pending.get_nowait()
                if isinstance(task, asyncio.Future):
                    task.cancel()

    def metadata(self, parsed, started: float, chars: int):
        tokens = sum(len(ids) for ids, _ in parsed.encoded)
        return self.protos.Metadata(compute_chars=chars, compute_tokens=tokens,
                                    total_time_ns=int((time.perf_counter() - started) * 1e9))

    @staticmethod
    def side(message) -> str:
        return "left" if message.truncation_direction == 1 else "right"

    # -- Info ------------------------------------------------------------------------------

    async def Info(self, request, context):  # noqa: N802 (the rpc's name)
        async def work():
            info, _ = await self.run(context, "/info", {})
            labels = info["labels"] or []
            kind = 2 if "/rerank" in info["routes"] else 1 if labels else 0
            return self.protos.InfoResponse(
                version="pybert", model_id=info["model_id"], model_dtype=info["dtype"],
                model_type=kind, max_concurrent_requests=self.default.config.max_connections,
                max_input_length=info["max_input_length"],
                max_batch_tokens=info["max_batch_tokens"],
                max_client_batch_size=info["max_client_batch_size"], tokenization_workers=2)
        return await self.answer(context, work)

    # -- Embed -----------------------------------------------------------------------------

    async def Embed(self, request, context):  # noqa: N802
        async def work():
            started = time.perf_counter()
            body = self._text_body(request)
            for name in ("normalize", "dimensions"):
                if request.HasField(name):
                    body[name] = getattr(request, name)
            vectors, parsed = await self.run(context, "/embed", body)
            return self.protos.EmbedResponse(
                embeddings=vectors[0], metadata=self.metadata(parsed, started,
                                                              len(request.inputs)))
        return await self.answer(context, work)

    async def EmbedSparse(self, request, context):  # noqa: N802
        async def work():
            started = time.perf_counter()
            vectors, parsed = await self.run(context, "/embed_sparse", self._text_body(request))
            return self.protos.EmbedSparseResponse(
                sparse_embeddings=[self.protos.SparseValue(index=v["index"], value=v["value"])
                                   for v in vectors[0]],
                metadata=self.metadata(parsed, started, len(request.inputs)))
        return await self.answer(context, work)

    async def EmbedAll(self, request, context):  # noqa: N802
        async def work():
            started = time.perf_counter()
            rows, parsed = await self.run(context, "/embed_all", self._text_body(request))
            return self.protos.EmbedAllResponse(
                token_embeddings=[self.protos.TokenEmbedding(embeddings=row) for row in rows[0]],
                metadata=self.metadata(parsed, started, len(request.inputs)))
        return await self.answer(context, work)

    def _text_body(self, request) -> dict:
        body = {"inputs": request.inputs, "truncate": request.truncate,
                "truncation_direction": self.side(request)}
        if request.HasField("prompt_name"):
            body["prompt_name"] = request.prompt_name
        return body

    async def EmbedStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.Embed):
            yield answer

    async def EmbedSparseStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.EmbedSparse):
            yield answer

    async def EmbedAllStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.EmbedAll):
            yield answer

    # -- Predict and Rerank ----------------------------------------------------------------

    async def _predict(self, inputs, request, context):
        async def work():
            started = time.perf_counter()
            answer, parsed = await self.run(context, "/predict", {
                "inputs": inputs, "truncate": request.truncate,
                "raw_scores": request.raw_scores})
            return self.protos.PredictResponse(
                predictions=[self.protos.Prediction(score=a["score"], label=a["label"])
                             for a in answer],
                metadata=self.metadata(parsed, started, sum(map(len, [inputs] if isinstance(
                    inputs, str) else inputs))))
        return await self.answer(context, work)

    async def Predict(self, request, context):  # noqa: N802
        return await self._predict(request.inputs, request, context)

    async def PredictPair(self, request, context):  # noqa: N802
        if len(request.inputs) != 2:
            return await self.answer(context, self._refuse(
                f"PredictPair takes two inputs (a pair), got {len(request.inputs)}"))
        return await self._predict(list(request.inputs), request, context)

    async def PredictStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.Predict):
            yield answer

    async def PredictPairStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.PredictPair):
            yield answer

    @staticmethod
    def _refuse(message: str):
        async def work():
            raise HTTPError(422, message)
        return work

    async def Rerank(self, request, context):  # noqa: N802
        async def work():
            started = time.perf_counter()
            ranks, parsed = await self.run(context, "/rerank", {
                "query": request.query, "texts": list(request.texts),
                "truncate": request.truncate, "raw_scores": request.raw_scores,
                "return_text": request.return_text})
            return self.protos.RerankResponse(
                ranks=[self.protos.Rank(**r) for r in ranks],
                metadata=self.metadata(parsed, started, len(request.query) + sum(
                    map(len, request.texts))))
        return await self.answer(context, work)

    async def RerankStream(self, requests, context):  # noqa: N802
        """The stream's (query, text) pairs ranked together; one query for all (TEI takes each
        message's query; pybert's /rerank has one, and a stream of several is refused)."""
        messages = [m async for m in requests]
        if not messages:
            return await self.answer(context, self._refuse("RerankStream got no messages"))
        if any(m.query != messages[0].query for m in messages):
            return await self.answer(context, self._refuse(
                "RerankStream's messages must share one query"))
        first = messages[0]
        request = self.protos.RerankRequest(
            query=first.query, texts=[m.text for m in messages], truncate=first.truncate,
            raw_scores=first.raw_scores, return_text=first.return_text,
            truncation_direction=first.truncation_direction)
        return await self.Rerank(request, context)

    # -- Tokenize --------------------------------------------------------------------------

    async def Tokenize(self, request, context):  # noqa: N802
        async def work():
            body = {"inputs": request.inputs, "add_special_tokens": request.add_special_tokens}
            texts, _ = await self.run(context, "/tokenize", body)
            return self.protos.EncodeResponse(tokens=[self.protos.SimpleToken(
                **{k: v for k, v in t.items() if v is not None}) for t in texts[0]])
        return await self.answer(context, work)

    async def Decode(self, request, context):  # noqa: N802
        async def work():
            text, _ = await self.run(context, "/decode", {
                "ids": list(request.ids), "skip_special_tokens": request.skip_special_tokens})
            return self.protos.DecodeResponse(text=text)
        return await self.answer(context, work)

    async def TokenizeStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.Tokenize):
            yield answer

    async def DecodeStream(self, requests, context):  # noqa: N802
        async for answer in self.stream(requests, context, self.Decode):
            yield answer


async def start_grpc(routes_by_name: dict, port: int, host: str = "127.0.0.1"):
    """A started grpc.aio server of tei.proto's services on ``host:port`` over the routes
    (the caller stops it: ``await server.stop(grace)``)."""
    import grpc

    default = next(iter(routes_by_name.values())).config
    _, services = _proto()
    servicer = TeiServicer(routes_by_name, default.api_key)
    server = grpc.aio.server(maximum_concurrent_rpcs=default.max_connections, options=[
        ("grpc.max_receive_message_length", default.max_body_bytes),
        ("grpc.max_send_message_length", default.max_reply_bytes)])
    for name in ("Info", "Embed", "Predict", "Rerank", "Tokenize"):
        getattr(services, f"add_{name}Servicer_to_server")(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC could not listen on {address}")
    await server.start()
    return server
