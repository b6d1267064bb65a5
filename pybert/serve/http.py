"""HTTP errors and the checks of a request's body, shared by every route: each failure is an
:class:`HTTPError` whose status and message the client sees."""

from __future__ import annotations

import asyncio
import hmac
import json

from ..tokenization import check_text
from .config import ServeConfig

__all__ = ["HTTPError", "ClientGone", "BodyBudget", "read_json", "texts_of", "flag", "field",
           "token_rows",
           "check_api_key", "error_body"]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "Validation",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


class ClientGone(Exception):
    """The client disconnected before its answer was ready (answered 499, to nobody)."""


class BodyBudget:
    """The bytes of request bodies held at once across every connection (the event loop's
    one thread counts them): a body that would take the total beyond ``limit`` answers 503,
    so many slow half-sent bodies cannot exhaust memory."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise HTTPError(503, f"the server holds {self.held} bytes of request bodies "
                            "already; retry shortly", "Overloaded", {"Retry-After": "1"})
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


# Bodies up to this size are parsed on the event loop (microseconds); larger ones off it.
_PARSE_ON_LOOP_BYTES = 64 << 10


async def read_json(request, max_bytes: int, budget: BodyBudget | None = None,
                    timeout_s: float | None = None) -> dict:
    """The JSON object of a request's body of at most ``max_bytes``, read as it streams,
    each piece within ``timeout_s`` (else 408), its bytes counted in ``budget`` while held."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"the body is larger than {max_bytes} bytes")
    body, counted = bytearray(), 0
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise HTTPError(408, f"the body did not arrive (no data for {timeout_s} s)",
                                "Timeout") from None
            if len(body) + len(chunk) > max_bytes:
                raise HTTPError(413, f"the body is larger than {max_bytes} bytes")
            if budget is not None:
                budget.take(len(chunk))
                counted += len(chunk)
            body += chunk
        value = await _parsed(bytes(body))
    finally:
        if budget is not None:
            budget.give_back(counted)
    if not isinstance(value, dict):
        raise HTTPError(422, "the body must be a JSON object")
    return value


async def _parsed(body: bytes):
    def parse():
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as err:
            raise HTTPError(400, f"the body is not valid JSON: {str(err)[:200]}") from None

    if len(body) <= _PARSE_ON_LOOP_BYTES:
        return parse()
    return await asyncio.get_running_loop().run_in_executor(None, parse)


def check_api_key(request, api_key: str | None) -> None:
    """HTTPError 401 unless the request carries ``Authorization: Bearer <api_key>`` (no key:
    every request passes). The scheme is case-insensitive; the key is compared as UTF-8
    bytes (the header's bytes as sent: HTTP headers arrive decoded as Latin-1), in constant
    time."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        sent = token.strip().encode("latin-1")
    except UnicodeEncodeError:
        sent = b""
    if not (hmac.compare_digest(sent, api_key.encode("utf-8")) and scheme.lower() == "bearer"):
        raise HTTPError(401, "a valid API key is required (Authorization: Bearer <key>)",
                        "Unauthorized", {"WWW-Authenticate": "Bearer"})


def error_body(err: HTTPError, openai: bool) -> dict:
    """The JSON of an error: text-embeddings-inference's shape, or OpenAI's for /v1/ routes."""
    if openai:
        return {"error": {"message": err.message, "type": err.kind, "code": err.status}}
    return {"error": err.message, "error_type": err.kind}


def texts_of(value, name: str, config: ServeConfig, pairs: bool | str = False) -> list:
    """A request's texts (a str or a non-empty list), each checked; pairs as tuples
    (``pairs`` True: every item a pair; "either": each item a text or a pair)."""
    single = isinstance(value, str) or (pairs is True and is_pair(value))
    items = [value] if single else value
    if not isinstance(items, list):
        raise HTTPError(422, f"{name} must be a string or a list of strings"
                        + (" or [text_a, text_b] pairs" if pairs else ""))
    if not items:
        raise HTTPError(422, f"{name} must not be empty")
    if len(items) > config.texts_per_request:
        raise HTTPError(413, f"{name} has {len(items)} texts, more than the "
                        f"{config.texts_per_request} a request may have", "Validation")
    out = []
    for i, item in enumerate(items):
        if pairs == "either" and isinstance(item, (list, tuple)):
            if not is_pair(list(item)):
                raise HTTPError(422, f"{name}[{i}] must be a string or a [text_a, text_b] "
                                "pair of strings")
            texts = tuple(item)
        elif pairs is True:
            if not is_pair(item):
                raise HTTPError(422, f"{name}[{i}] must be a [text_a, text_b] pair of strings")
            texts = tuple(item)
        elif isinstance(item, str):
            texts = (item,)
        else:
            raise HTTPError(422, f"{name}[{i}] must be a string, got {type(item).__name__}")
        for text in texts:
            if len(text.encode("utf-8", errors="surrogatepass")) > config.max_text_bytes:
                raise HTTPError(413, f"{name}[{i}] is longer than {config.max_text_bytes} "
                                "bytes")
            try:
                check_text(text, f"{name}[{i}]")
            except ValueError as err:
                raise HTTPError(422, str(err)) from None
        out.append(texts if len(texts) == 2 or pairs is True else texts[0])
    return out


# A field a client may have spelled as the other API does: TEI's routes take "inputs",
# OpenAI's "input".
_OTHER_API = {"inputs": ("input", "OpenAI's field: POST /v1/embeddings takes it"),
              "input": ("inputs", "text-embeddings-inference's field: POST /embed takes it")}


def field(body: dict, name: str):
    """``body[name]`` (None when absent); where the body has the other API's field instead,
    422 saying which field this route takes."""
    other = _OTHER_API.get(name)
    if name not in body and other is not None and other[0] in body:
        raise HTTPError(422, f"the body has no \"{name}\" but has \"{other[0]}\", "
                        f"{other[1]}; this route takes \"{name}\"")
    return body.get(name)


def token_rows(value, vocab_size: int, max_rows: int) -> list | None:
    """OpenAI's token-array input (a list of token ids, or a list of such lists) as a list of
    id lists, each checked; None when ``value`` is not token ids (texts)."""
    def is_ids(v):
        return isinstance(v, list) and len(v) > 0 and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v)

    if is_ids(value):
        rows = [value]
    elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        if not all(is_ids(v) for v in value):
            raise HTTPError(422, "input must be texts, a list of token ids, or a list of "
                            "non-empty lists of token ids")
        rows = value
    else:
        return None
    if len(rows) > max_rows:
        raise HTTPError(413, f"input has {len(rows)} token arrays, more than the {max_rows} "
                        "a request may have")
    for r, row in enumerate(rows):
        bad = next((i for i in row if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise HTTPError(422, f"input[{r}] holds token id {bad}, outside this model's "
                            f"vocabulary [0, {vocab_size})")
    return rows


def is_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def flag(body: dict, name: str, default):
    value = body.get(name, default)
    if value is not default and not isinstance(value, bool):
        raise HTTPError(422, f"{name} must be true or false")
    return value
