"""The routes of ``pybert serve`` over one text model, its batcher and the server's limits:
text-embeddings-inference's ``/embed``, ``/similarity``, ``/embed_all``, ``/embed_sparse``,
``/predict``, ``/rerank``, ``/tokenize`` and ``/decode`` (its request and response shapes),
OpenAI's ``/v1/embeddings``, ``/embed_multi`` (multi-vector embeddings), ``/fill-mask``,
``/next-sentence``, ``/health``, ``/info`` and ``/metrics``. A route that runs a task is a
table entry (``TaskRoute``: parse the request, the task of pybert.tasks the batcher runs,
render the reply); a route reads the model only through the interface of
``serve/interface.py``, and one the model cannot serve answers 404 saying why."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as field_of

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .batcher import Batcher, QueueFull, RequestTooLarge, joined
from .config import ServeConfig
from ..engine.devices import CUDA_LAST_RUN
from ..heads import maxsim
from ..tasks import TASKS, model_task
from ..tokenization import TooLong, TruncationCount, check_text
from .http import BodyBudget, ClientGone, HTTPError, field, flag, is_pair, read_json, texts_of, \
    token_rows
from .metrics import Metrics

__all__ = ["Routes"]

logger = logging.getLogger("pybert.serve")

# What a value takes in a reply's JSON, for refusing a reply that would pass max_reply_bytes
# before building it: a float of a vector (a float32 value written as the shortest double that
# reads back as it: 17-20 characters and a comma, almost always), an entry of a sparse vector
# ({"index":...,"value":...}, at the least).
FLOAT_BYTES = 18
SPARSE_ENTRY_BYTES = 30


@dataclass(frozen=True)
class TaskRoute:
    """A route that runs a task of pybert.tasks: ``parse`` (async: the request -> a Parsed),
    ``task`` (the batcher runs it on the parsed sequences), ``render`` (the task's results and
    the Parsed -> the reply's JSON value, or a callable that builds it). A model without the
    task gets a 404 saying why; ``check(model)`` may refuse it for a reason of the route's."""

    path: str
    task: str | Callable  # a task's name, or model -> the name (the model's own kind of a task)
    parse: Callable
    render: Callable
    check: Callable = lambda model: None  # the route's own refusal (an HTTPError), beyond its task's
    name: str = ""  # what a refusal calls it (default: its task's name)


@dataclass
class Parsed:
    """A task route's request, read and tokenised: its sequences, the task's options, and what
    the reply needs from the request."""

    encoded: list
    options: dict = field_of(default_factory=dict)
    context: dict = field_of(default_factory=dict)


class Routes:
    """The handlers of one server. ``ready`` turns true once the model has run a first batch
    (``/health`` answers 503 until then)."""

    def __init__(self, model, config: ServeConfig, batcher: Batcher, metrics: Metrics,
                 bodies: BodyBudget | None = None):
        self.model, self.config, self.batcher, self.metrics = model, config, batcher, metrics
        self.engine = model.engine
        self.ready = False
        # Tokenising is CPU work under the GIL (or in the tokenizers package): a couple of
        # threads keep the event loop free; more would only add memory (an arena each).
        self.tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pybert-tokenize")
        # The bodies held at once: one budget for the server (shared by its models' routes).
        self.bodies = bodies or BodyBudget(config.max_buffered_bytes)
        self.handlers = {path: handler for path, handler, _ in self.table()}
        self._task_routes = {route.path: route for route in self.task_routes()}

    def table(self) -> list[tuple[str, object, list[str]]]:
        """(path, handler, methods) of every route."""
        return [(route.path, self.task_handler(route), ["POST"]) for route in self.task_routes()] \
            + [("/tokenize", self.tokenize, ["POST"]),
               ("/decode", self.decode, ["POST"]),
               ("/health", self.health, ["GET"]),
               ("/info", self.info, ["GET"]),
               ("/metrics", self.prometheus, ["GET"])]

    def served_routes(self) -> list[str]:
        """The task routes this model answers."""
        served = []
        for route in self.task_routes():
            try:
                self.need(route)
            except HTTPError:
                continue
            served.append(route.path)
        return served

    # -- the steps every route takes ---------------------------------------------------------

    async def body(self, request: Request) -> dict:
        """The request's JSON object (read once: a server of several models reads it to choose
        the model, then hands it on in ``request.state``)."""
        read = getattr(request.state, "body", None)
        if read is not None:
            return read
        return await read_json(request, self.config.max_body_bytes, self.bodies,
                               self.config.body_timeout_s)

    async def reply(self, content) -> Response:
        """``content`` (or what the callable ``content`` builds) as JSON, built and rendered
        off the event loop (a large reply would stall every other connection), at most
        max_reply_bytes."""
        def render() -> bytes:
            value = content() if callable(content) else content
            return json.dumps(value, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")

        body = await asyncio.get_running_loop().run_in_executor(None, render)
        if len(body) > self.config.max_reply_bytes:
            raise HTTPError(413, f"the answer would be {len(body)} bytes, more than "
                            f"max_reply_bytes={self.config.max_reply_bytes}: send fewer texts "
                            "(or a smaller top_k)")
        return Response(body, media_type="application/json")

    async def tokenised(self, texts: list, truncate: bool, side: str | None = None,
                        advice: str = "pass \"truncate\": true to cut long inputs",
                        token_ids: bool = False) -> list:
        """The (ids, token types) of texts (or, with ``token_ids``, of token-id sequences
        without their special tokens), tokenised off the event loop."""
        count = TruncationCount()
        tokenizer = self.model.tokenizer
        try:
            encoded = await asyncio.get_running_loop().run_in_executor(
                self.tokenizing, functools.partial(
                    tokenizer.encode_ids, texts, "warn" if truncate else "error", side, count)
                if token_ids else functools.partial(
                    tokenizer.encode_all, texts, "warn" if truncate else "error", 0, side,
                    count))
        except TooLong as err:
            message = str(err).split("; pass truncation=")[0]  # the Python API's advice
            raise HTTPError(413, f"{message}; {advice}") from None
        except ValueError as err:  # not a text the tokenizer takes (a lone surrogate)
            raise HTTPError(422, str(err)) from None
        if count.cut:
            logger.info("a request's %s", count.summary())
        return encoded

    async def batched(self, request: Request | None, encoded: list, task: str = "embed",
                      options: dict | None = None):
        """The result of ``task`` on ``encoded`` from the batcher (vectors, by default); the
        queued work is dropped if the client disconnects first (``request`` None: no client
        to watch, as at warm-up). A request of more than max_inputs sequences (taken with
        split_client_batches) is queued as parts of at most that many, its results joined in
        order. An input the model cannot compute (a non-finite output) answers 422; it fails
        alone, not the requests batched with it."""
        size = self.config.max_inputs
        futures = []
        try:
            for start in range(0, len(encoded), size):
                futures.append(self.batcher.submit(encoded[start:start + size],
                                                   asyncio.get_running_loop(), task, options))
        except (QueueFull, RequestTooLarge) as err:
            for future in futures:
                future.cancel()
            if isinstance(err, RequestTooLarge):
                raise HTTPError(413, str(err)) from None
            raise HTTPError(503, f"overloaded ({err}); retry shortly", "Overloaded",
                            {"Retry-After": "1"}) from None
        whole = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        try:
            results = await self._settled(request, whole)
        except ValueError as err:
            raise HTTPError(422, f"the model cannot compute this input: {err}") from None
        finally:
            for future in futures:  # a part that failed: the others' queued work is dropped
                future.cancel()
        return results if len(futures) == 1 else joined(results)

    async def _settled(self, request: Request | None, future: asyncio.Future):
        if request is None:
            return await future

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({future, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if future not in done:
            future.cancel()
            raise ClientGone()
        return future.result()

    def options(self, body: dict) -> tuple:
        """(dimensions, prompt_name, truncation side) of an embedding request, checked."""
        dimensions = body.get("dimensions")
        try:
            self.model.check_dimensions(dimensions)
            prompt_name = body.get("prompt_name")
            if prompt_name is not None and not isinstance(prompt_name, str):
                raise TypeError(f"prompt_name must be a string, got "
                                f"{type(prompt_name).__name__}")
            if prompt_name is not None:
                self.model.prompted([], prompt_name)
        except (TypeError, ValueError) as err:
            raise HTTPError(422, str(err)) from None
        side = body.get("truncation_direction", "right")
        if not isinstance(side, str) or side.lower() not in ("right", "left"):
            raise HTTPError(422, "truncation_direction must be 'Right' or 'Left'")
        return dimensions, prompt_name, side.lower()

    async def warm_up(self) -> None:
        """One batch through tokenizer, batcher and each engine, then ``ready`` (the batches
        of a pool of idle batchers go to each in turn)."""
        encoded = await self.tokenised(["warm up"], truncate=True)
        for _ in range(self.batcher.replicas):
            await self.batched(None, encoded, "embed_all")  # every model has it
        self.ready = True

    # -- the task routes: (parse, task, render) ----------------------------------------------

    def task_routes(self) -> list[TaskRoute]:
        """Every route that runs a task of pybert.tasks."""
        return [
            TaskRoute("/embed", "embed", self.parse_embed, self.render_vectors, self.dense_only),
            TaskRoute("/v1/embeddings", "embed", self.parse_openai, self.render_openai,
                      self.dense_only),
            TaskRoute("/similarity", "embed", self.parse_similarity, self.render_similarity,
                      self.dense_only, name="similarity"),
            TaskRoute("/embed_all", "embed_all", self.parse_embed_all, self.render_token_vectors),
            TaskRoute("/embed_sparse", functools.partial(model_task, name="sparse"),
                      self.parse_sparse, self.render_sparse, name="sparse"),
            TaskRoute("/embed_multi", "embed_multi", self.parse_embed_multi,
                      self.render_token_vectors),
            TaskRoute("/predict", "classify", self.parse_predict, self.render_predict),
            TaskRoute("/rerank", self.rerank_task, self.parse_rerank, self.render_rerank,
                      self.one_label, name="rerank"),
            TaskRoute("/fill-mask", "fill_mask", self.parse_fill_mask, self.render_fill_mask),
            TaskRoute("/next-sentence", "next_sentence", self.parse_next_sentence,
                      lambda probs, parsed: [float(p) for p in probs]),
        ]

    def task_route(self, path: str) -> TaskRoute | None:
        """The task route at ``path`` (None: a route of another kind)."""
        return self._task_routes.get(path)

    def task_of(self, route: TaskRoute) -> str:
        """The name of the task ``route`` runs on this model."""
        return route.task(self.model) if callable(route.task) else route.task

    def task_handler(self, route: TaskRoute):
        """The handler of a task route: the model's check, parse, the batcher, render."""
        async def handle(request: Request):
            self.need(route)
            parsed = await route.parse(request)
            results = await self.batched(request, parsed.encoded, self.task_of(route),
                                         parsed.options)
            return await self.reply(route.render(results, parsed))
        return handle

    def need(self, route: TaskRoute) -> None:
        """404 (or the route's own refusal) unless this model serves the route's task."""
        entry = TASKS[self.task_of(route)]
        if not entry.available(self.model):
            raise HTTPError(404, f"this model does not serve {route.name or entry.name} "
                            f"({route.path} needs a model with {entry.needs}; it serves "
                            f"{', '.join(self.model.tasks)})", "NotFound")
        route.check(self.model)

    @staticmethod
    def dense_only(model) -> None:
        """A sparse (SPLADE) model's vectors are /embed_sparse's, not a pooled CLS vector."""
        if model.sparse_model:
            raise HTTPError(422, "this is a sparse (SPLADE) model: POST /embed_sparse gives "
                            "its vectors")

    @staticmethod
    def rerank_task(model) -> str:
        """A cross-encoder's scores, or a multi-vector model's embeddings (for MaxSim)."""
        return "embed_multi" if model.reranks_by_maxsim else "classify"

    @staticmethod
    def one_label(model) -> None:
        if model.reranks_by_maxsim:
            return
        if len(model.labels) != 1:
            raise HTTPError(404, f"this model does not serve rerank: its classifier has "
                            f"{len(model.labels)} labels, not one relevance score (POST "
                            "/predict gives them)", "NotFound")

    async def parse_embedding(self, request: Request) -> Parsed:
        """Text-embeddings-inference's embedding request: the inputs tokenised with their
        prompt; options dimensions and normalize (the embed task's)."""
        body = await self.body(request)
        texts = texts_of(field(body, "inputs"), "inputs", self.config)
        dimensions, prompt_name, side = self.options(body)
        encoded = await self.tokenised(self.model.prompted(texts, prompt_name),
                                       flag(body, "truncate", self.config.auto_truncate), side)
        return Parsed(encoded, {"dimensions": dimensions,
                                "normalize": flag(body, "normalize", None)})

    async def parse_embed(self, request: Request) -> Parsed:
        parsed = await self.parse_embedding(request)
        parsed.options = {k: v for k, v in parsed.options.items() if v is not None}
        return parsed

    async def parse_similarity(self, request: Request) -> Parsed:
        """Text-embeddings-inference's /similarity: {"inputs": {"source_sentence": a text,
        "sentences": texts}, "parameters": {truncate, truncation_direction, prompt_name}}."""
        body = await self.body(request)
        inputs, parameters = field(body, "inputs"), body.get("parameters") or {}
        if not isinstance(inputs, dict) or not isinstance(inputs.get("source_sentence"), str) \
                or not isinstance(inputs.get("sentences"), list):
            raise HTTPError(422, "inputs must be {\"source_sentence\": a text, \"sentences\": "
                            "a list of texts}")
        if not isinstance(parameters, dict):
            raise HTTPError(422, "parameters must be an object (truncate, "
                            "truncation_direction, prompt_name)")
        source = texts_of(inputs["source_sentence"], "inputs.source_sentence", self.config)
        sentences = texts_of(inputs["sentences"], "inputs.sentences", self.config)
        if len(sentences) + 1 > self.config.texts_per_request:
            raise HTTPError(413, f"inputs.sentences has {len(sentences)} texts: with the source "
                            f"sentence, more than the {self.config.texts_per_request} a request "
                            "may have", "Validation")
        dimensions, prompt_name, side = self.options(parameters)
        encoded = await self.tokenised(
            self.model.prompted(source + sentences, prompt_name),
            flag(parameters, "truncate", self.config.auto_truncate), side)
        options = {"normalize": True, **({} if dimensions is None else
                                         {"dimensions": dimensions})}
        return Parsed(encoded, options)

    @staticmethod
    def render_similarity(vectors, parsed: Parsed):
        """The cosine of each sentence's vector with the source sentence's (both unit)."""
        return (vectors[1:].double() @ vectors[0].double()).tolist()

    async def parse_sparse(self, request: Request) -> Parsed:
        return Parsed((await self.parse_embedding(request)).encoded)

    async def parse_embed_all(self, request: Request) -> Parsed:
        parsed = await self.parse_embedding(request)
        tokens = sum(len(ids) for ids, _ in parsed.encoded)
        self.check_reply_size(tokens * self.engine.config.num_hiddens, FLOAT_BYTES, "numbers")
        return Parsed(parsed.encoded)

    async def parse_embed_multi(self, request: Request) -> Parsed:
        parsed = await self.parse_embedding(request)
        tokens = sum(len(ids) for ids, _ in parsed.encoded)
        self.check_reply_size(tokens * self.model.multi_vector_dim, FLOAT_BYTES, "numbers")
        return Parsed(parsed.encoded)

    @staticmethod
    def render_vectors(vectors, parsed: Parsed):
        return lambda: vectors.numpy().tolist()

    @staticmethod
    def render_token_vectors(rows, parsed: Parsed):
        return lambda: [r.tolist() for r in rows]

    def render_sparse(self, vectors, parsed: Parsed):
        self.check_reply_size(sum(len(v.indices) for v in vectors), SPARSE_ENTRY_BYTES,
                              "sparse entries")
        return lambda: [[{"index": int(i), "value": float(v)}
                         for i, v in zip(vector.indices, vector.values)] for vector in vectors]

    async def parse_openai(self, request: Request) -> Parsed:
        body = await self.body(request)
        value = field(body, "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(422, "encoding_format must be 'float' or 'base64'")
        dimensions, _, _ = self.options({"dimensions": body.get("dimensions")})
        advice = "shorten the input"
        rows = token_rows(value, self.engine.config.vocab_size,
                          self.config.texts_per_request)
        if rows is not None:  # OpenAI's token arrays: this model's ids, no special tokens
            encoded = await self.tokenised(rows, self.config.auto_truncate, advice=advice,
                                           token_ids=True)
        else:
            texts = texts_of(value, "input", self.config)
            encoded = await self.tokenised(self.model.prompted(texts),
                                           self.config.auto_truncate, advice=advice)
        options = {} if dimensions is None else {"dimensions": dimensions}
        return Parsed(encoded, options, {"encoding": encoding,
                                         "model": body.get("model") or self.config.model_id})

    @staticmethod
    def render_openai(vectors, parsed: Parsed):
        def content():
            data = [{"object": "embedding", "index": i,
                     "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode()
                                   if parsed.context["encoding"] == "base64" else v.tolist())}
                    for i, v in enumerate(vectors.numpy())]
            tokens = sum(len(ids) for ids, _ in parsed.encoded)
            return {"object": "list", "data": data, "model": parsed.context["model"],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return content

    def check_reply_size(self, values: int, bytes_each: int, what: str) -> None:
        """413 before the reply is built (or the work done) when ``values`` values of about
        ``bytes_each`` bytes each in JSON would take more than max_reply_bytes."""
        if values * bytes_each > self.config.max_reply_bytes:
            raise HTTPError(413, f"the answer would hold {values} {what}, more than "
                            f"max_reply_bytes={self.config.max_reply_bytes} allows: send fewer "
                            "or shorter texts")

    async def parse_scored(self, items: list, body: dict, context: dict) -> Parsed:
        """Texts or pairs for the classifier: its scores, or logits with "raw_scores"."""
        encoded = await self.tokenised(items, flag(body, "truncate", self.config.auto_truncate))
        return Parsed(encoded, {"raw_scores": flag(body, "raw_scores", False)}, context)

    async def parse_predict(self, request: Request) -> Parsed:
        body = await self.body(request)
        value = field(body, "inputs")
        # TEI's grammar: a text, a [text_a, text_b] pair, or a batch of 1- and 2-element
        # lists; and pybert's list of texts.
        single = isinstance(value, str) or is_pair(value)
        items = [value] if single else value
        if isinstance(items, list) and not single and items and \
                all(isinstance(i, list) for i in items):
            bad = next((i for i, v in enumerate(items) if len(v) not in (1, 2)), None)
            if bad is not None:
                raise HTTPError(422, f"inputs[{bad}] must hold one text or two (a pair), got "
                                f"{len(items[bad])} items")
            items = [v[0] if len(v) == 1 else v for v in items]
        items = texts_of(items, "inputs", self.config, pairs="either")
        return await self.parse_scored(items, body, {"single": single})

    def render_predict(self, scores, parsed: Parsed):
        labels = self.model.labels
        answers = [sorted(({"label": label, "score": float(s)} for label, s in zip(labels, row)),
                          key=lambda a: -a["score"]) for row in scores.numpy()]
        return answers[0] if parsed.context["single"] else answers

    async def parse_rerank(self, request: Request) -> Parsed:
        body = await self.body(request)
        query = body.get("query")
        if not isinstance(query, str):
            raise HTTPError(422, "query must be a string")
        if len(query.encode("utf-8", errors="surrogatepass")) > self.config.max_text_bytes:
            raise HTTPError(413, f"query is longer than {self.config.max_text_bytes} bytes")
        try:
            check_text(query, "query")
        except ValueError as err:
            raise HTTPError(422, str(err)) from None
        texts = texts_of(body.get("texts"), "texts", self.config)
        context = {"texts": texts, "return_text": flag(body, "return_text", False)}
        if self.model.reranks_by_maxsim:  # the query and each text alone
            encoded = await self.tokenised([query] + texts,
                                           flag(body, "truncate", self.config.auto_truncate))
            return Parsed(encoded, {}, {**context, "maxsim": True})
        return await self.parse_scored([(query, t) for t in texts], body, context)

    @staticmethod
    def render_rerank(scores, parsed: Parsed):
        scores = maxsim(scores[0], scores[1:]).numpy() if parsed.context.get("maxsim") else \
            scores.numpy()[:, 0]
        texts, with_text = parsed.context["texts"], parsed.context["return_text"]
        return [{"index": int(i), "score": float(scores[i]),
                 **({"text": texts[i]} if with_text else {})}
                for i in np.argsort(-scores, kind="stable")]

    async def parse_fill_mask(self, request: Request) -> Parsed:
        body = await self.body(request)
        texts = texts_of(field(body, "inputs"), "inputs", self.config)
        top_k = body.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or \
                not 1 <= top_k <= min(100, self.engine.config.vocab_size):
            raise HTTPError(422, "top_k must be an int in [1, 100]")
        encoded = await self.tokenised(texts, flag(body, "truncate", self.config.auto_truncate))
        masks = sum(len(m) for m in self.model.mask_positions(encoded))
        if masks > self.config.max_masks:
            raise HTTPError(413, f"the inputs hold {masks} mask tokens, more than max_masks="
                            f"{self.config.max_masks} a request may have")
        return Parsed(encoded, {"k": top_k})

    @staticmethod
    def render_fill_mask(results, parsed: Parsed):
        return [[[{"token": w, "score": p} for w, p in mask] for mask in text]
                for text in results]

    async def parse_next_sentence(self, request: Request) -> Parsed:
        body = await self.body(request)
        pairs = texts_of(field(body, "inputs"), "inputs", self.config, pairs=True)
        return Parsed(await self.tokenised(pairs, flag(body, "truncate",
                                                       self.config.auto_truncate)))

    # -- the other routes --------------------------------------------------------------------

    async def tokenize(self, request: Request):
        tokenizer = self.model.tokenizer
        if not hasattr(tokenizer, "describe"):
            raise HTTPError(404, "this model's tokenizer (d2l's word tokenizer) reports no "
                            "token offsets", "NotFound")
        body = await self.body(request)
        texts = texts_of(field(body, "inputs"), "inputs", self.config)
        special = flag(body, "add_special_tokens", True)
        limit = self.config.max_reply_bytes

        def render() -> bytes:
            """The reply, a text at a time (a text's tokens as dicts at most at once), given
            up as soon as it passes max_reply_bytes."""
            out = bytearray(b"[")
            for i, text in enumerate(texts):
                piece = json.dumps(tokenizer.describe([text], special)[0], ensure_ascii=False,
                                   separators=(",", ":")).encode("utf-8")
                out += (b"," if i else b"") + piece
                if len(out) > limit:
                    return b""
            return bytes(out + b"]")

        body = await asyncio.get_running_loop().run_in_executor(self.tokenizing, render)
        if not body:
            raise HTTPError(413, f"the answer would be more than max_reply_bytes={limit} "
                            "bytes: send fewer or shorter texts")
        return Response(body, media_type="application/json")

    async def decode(self, request: Request):
        tokenizer = self.model.tokenizer
        if not hasattr(tokenizer, "decode"):
            raise HTTPError(404, "this model's tokenizer (d2l's word tokenizer) does not "
                            "decode", "NotFound")
        body = await self.body(request)
        ids = body.get("ids")
        single = isinstance(ids, list) and all(isinstance(i, int) for i in ids)
        rows = [ids] if single else ids
        vocab = self.engine.config.vocab_size
        if not isinstance(rows, list) or not rows or \
                len(rows) > self.config.texts_per_request or \
                not all(isinstance(r, list) and len(r) <= self.engine.config.max_len and all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab
                    for i in r) for r in rows):
            raise HTTPError(422, f"ids must be a list of token ids in [0, {vocab}) (at most "
                            f"max_len of them), or a list of such lists")
        skip = flag(body, "skip_special_tokens", True)
        texts = [tokenizer.decode(r, skip) for r in rows]
        return await self.reply(texts[0] if single else texts)

    async def health(self, request: Request):
        if not self.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request):
        engine, config = self.engine, self.config
        return JSONResponse({
            "model_id": config.model_id, "dim": self.model.dim,
            "max_input_length": self.model.max_input_length,
            "architecture": self.model.architecture, "tasks": self.model.tasks,
            "routes": self.served_routes(),
            "pooling": self.model.pooling, "normalize": self.model.normalize,
            "prompts": self.model.prompts,
            "labels": self.model.labels,
            "has_mlm": engine.has_mlm, "has_nsp": engine.has_nsp,
            "device": str(engine.device), "devices": self.batcher.devices,
            "dtype": str(engine.dtype).replace("torch.", ""),
            "quantize": engine.quantize,
            "cpu_plan": engine.cpu_plan.summary() if engine.cpu_plan is not None else None,
            "max_batch_tokens": config.batch_tokens, "max_client_batch_size": config.max_inputs,
            "max_text_bytes": config.max_text_bytes,
            "cuda_last_run_on_gpu": CUDA_LAST_RUN})

    async def prometheus(self, request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
