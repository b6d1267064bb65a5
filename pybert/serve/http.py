"""HTTP errors and the checks of a request's body, shared by every route: each failure is an
:class:`HTTPError` whose status and message the client sees."""

from __future__ import annotations

import hmac
import json

from .config import ServeConfig

__all__ = ["HTTPError", "ClientGone", "read_json", "texts_of", "flag", "check_api_key",
           "error_body"]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "Validation",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


class ClientGone(Exception):
    """The client disconnected before its answer was ready (answered 499, to nobody)."""


async def read_json(request, max_bytes: int) -> dict:
    """The JSON object of a request's body of at most ``max_bytes``, read as it streams."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPError(413, f"the body is larger than {max_bytes} bytes")
    try:
        value = json.loads(bytes(body))
    except (ValueError, RecursionError) as err:
        raise HTTPError(400, f"the body is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(value, dict):
        raise HTTPError(422, "the body must be a JSON object")
    return value


def check_api_key(request, api_key: str | None) -> None:
    """HTTPError 401 unless the request carries ``Authorization: Bearer <api_key>`` (no key:
    every request passes). Compared in constant time."""
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise HTTPError(401, "a valid API key is required (Authorization: Bearer <key>)",
                        "Unauthorized", {"WWW-Authenticate": "Bearer"})


def error_body(err: HTTPError, openai: bool) -> dict:
    """The JSON of an error: text-embeddings-inference's shape, or OpenAI's for /v1/ routes."""
    if openai:
        return {"error": {"message": err.message, "type": err.kind, "code": err.status}}
    return {"error": err.message, "error_type": err.kind}


def texts_of(value, name: str, config: ServeConfig, pairs: bool = False) -> list:
    """A request's texts (a str or a non-empty list), each checked; pairs as tuples."""
    single = isinstance(value, str) or (pairs and is_pair(value))
    items = [value] if single else value
    if not isinstance(items, list):
        raise HTTPError(422, f"{name} must be a string or a list of strings"
                        + (" or [text_a, text_b] pairs" if pairs else ""))
    if not items:
        raise HTTPError(422, f"{name} must not be empty")
    if len(items) > config.max_inputs:
        raise HTTPError(413, f"{name} has {len(items)} texts, more than the "
                        f"{config.max_inputs} a request may have", "Validation")
    out = []
    for i, item in enumerate(items):
        if pairs:
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
        out.append(texts if pairs else texts[0])
    return out


def is_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def flag(body: dict, name: str, default):
    value = body.get(name, default)
    if value is not default and not isinstance(value, bool):
        raise HTTPError(422, f"{name} must be true or false")
    return value
