"""The routes of ``pybert serve``, each a method over one text model, its batcher and the
server's limits: text-embeddings-inference's ``/embed``, OpenAI's ``/v1/embeddings``,
``/fill-mask``, ``/next-sentence``, ``/health``, ``/info`` and ``/metrics``. A route reads the
text model and the engine's public surface (config, heads, device), nothing else."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .batcher import Batcher, QueueFull
from .config import ServeConfig
from .http import ClientGone, HTTPError, flag, read_json, texts_of
from .metrics import Metrics

__all__ = ["Routes"]


class Routes:
    """The handlers of one server. ``ready`` turns true once the model has run a first batch
    (``/health`` answers 503 until then)."""

    def __init__(self, model, config: ServeConfig, batcher: Batcher, metrics: Metrics):
        self.model, self.config, self.batcher, self.metrics = model, config, batcher, metrics
        self.engine = model.engine
        self.ready = False
        # Tokenising is CPU work under the GIL (or in the tokenizers package): a couple of
        # threads keep the event loop free; more would only add memory (an arena each).
        self.tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pybert-tokenize")

    def table(self) -> list[tuple[str, object, list[str]]]:
        """(path, handler, methods) of every route."""
        return [("/embed", self.embed, ["POST"]),
                ("/v1/embeddings", self.openai_embeddings, ["POST"]),
                ("/fill-mask", self.fill_mask, ["POST"]),
                ("/next-sentence", self.next_sentence, ["POST"]),
                ("/health", self.health, ["GET"]),
                ("/info", self.info, ["GET"]),
                ("/metrics", self.prometheus, ["GET"])]

    # -- the steps every embedding route takes ----------------------------------------------

    async def tokenised(self, texts: list, truncate: bool) -> list:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.tokenizing, self.model.tokenizer.encode_all, texts,
                "warn" if truncate else "error")
        except ValueError as err:
            raise HTTPError(413, f"{err}; pass \"truncate\": true to cut long inputs") from None

    async def embedded(self, request: Request | None, encoded: list) -> torch.Tensor:
        """The vectors of ``encoded`` from the batcher; the queued work is dropped if the
        client disconnects first (``request`` None: no client to watch, as at warm-up)."""
        try:
            future = self.batcher.submit(encoded, asyncio.get_running_loop())
        except QueueFull as err:
            raise HTTPError(503, f"overloaded ({err}); retry shortly", "Overloaded",
                            {"Retry-After": "1"}) from None
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

    def normalised(self, vectors: torch.Tensor, normalize: bool | None) -> np.ndarray:
        if normalize if normalize is not None else self.model.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.numpy()

    async def warm_up(self) -> None:
        """One batch through tokenizer, batcher and engine, then ``ready``."""
        await self.embedded(None, await self.tokenised(["warm up"], truncate=True))
        self.ready = True

    # -- the routes ------------------------------------------------------------------------

    async def embed(self, request: Request):
        body = await read_json(request, self.config.max_body_bytes)
        texts = texts_of(body.get("inputs"), "inputs", self.config)
        truncate = flag(body, "truncate", False)
        normalize = flag(body, "normalize", None)
        vectors = await self.embedded(request, await self.tokenised(texts, truncate))
        return JSONResponse(self.normalised(vectors, normalize).tolist())

    async def openai_embeddings(self, request: Request):
        body = await read_json(request, self.config.max_body_bytes)
        texts = texts_of(body.get("input"), "input", self.config)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(422, "encoding_format must be 'float' or 'base64'")
        encoded = await self.tokenised(texts, truncate=False)
        vectors = self.normalised(await self.embedded(request, encoded), None)
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode()
                               if encoding == "base64" else v.tolist())}
                for i, v in enumerate(vectors)]
        tokens = sum(len(ids) for ids, _ in encoded)
        return JSONResponse({"object": "list", "data": data,
                             "model": body.get("model") or self.config.model_id,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def fill_mask(self, request: Request):
        if not self.engine.has_mlm or self.model.tokenizer.mask_id is None:
            raise HTTPError(404, "this model has no MLM head", "NotFound")
        body = await read_json(request, self.config.max_body_bytes)
        texts = texts_of(body.get("inputs"), "inputs", self.config)
        top_k = body.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or \
                not 1 <= top_k <= min(100, self.engine.config.vocab_size):
            raise HTTPError(422, "top_k must be an int in [1, 100]")
        truncate = flag(body, "truncate", False)
        try:
            results = await run_in_threadpool(self.model.fill_mask, texts, top_k,
                                               "warn" if truncate else "error")
        except ValueError as err:
            raise HTTPError(413, str(err)) from None
        return JSONResponse([[[{"token": w, "score": p} for w, p in mask] for mask in text]
                             for text in results])

    async def next_sentence(self, request: Request):
        if not self.engine.has_nsp:
            raise HTTPError(404, "this model has no NSP head", "NotFound")
        body = await read_json(request, self.config.max_body_bytes)
        pairs = texts_of(body.get("inputs"), "inputs", self.config, pairs=True)
        truncate = flag(body, "truncate", False)
        try:
            probs = await run_in_threadpool(self.model.next_sentence, pairs,
                                            "warn" if truncate else "error")
        except ValueError as err:
            raise HTTPError(413, str(err)) from None
        return JSONResponse(np.asarray(probs).tolist())

    async def health(self, request: Request):
        if not self.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request):
        engine, config = self.engine, self.config
        return JSONResponse({
            "model_id": config.model_id, "dim": engine.config.num_hiddens,
            "max_input_length": engine.config.max_len,
            "pooling": self.model.pooling, "normalize": self.model.normalize,
            "has_mlm": engine.has_mlm, "has_nsp": engine.has_nsp,
            "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
            "quantize": engine.quantize,
            "cpu_plan": engine.cpu_plan.summary() if engine.cpu_plan is not None else None,
            "max_batch_tokens": config.batch_tokens, "max_client_batch_size": config.max_inputs,
            "max_text_bytes": config.max_text_bytes})

    async def prometheus(self, request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
