"""Several models behind one server: each served under a name with limits of its own, and the
memory they take together held to one budget, checked as they load (a server that cannot hold
them all is refused at start, not killed by the first large batch)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import ServeConfig
from .http import HTTPError

__all__ = ["NamedModel", "MemoryBudget", "check_names", "batch_bytes", "served_as"]

# A name is part of a URL path (/models/{name}/embed): a hub id's characters, no "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


@dataclass(frozen=True)
class NamedModel:
    """One model of a server: its name (what /v1/embeddings' "model" field and the
    /models/{name}/ prefix say), the TextModel, its limits (the server-wide ones are the first
    model's) and its copies on more devices (``--devices``)."""

    name: str
    model: object
    config: ServeConfig
    replicas: tuple = ()


def check_names(names: list[str]) -> None:
    """ValueError unless every name is one a URL path can hold and no two are the same."""
    for name in names:
        if not _NAME.fullmatch(name) or ".." in name:
            raise ValueError(f"a served model's name must be letters, digits, '.', '_', '-' "
                             f"and '/' between them (it is part of a URL), got {name!r}")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two models would be served as {name!r}: give each its own "
                             "\"served-model-name\" in --model-config")
        seen.add(name)


def served_as(served: dict, name):
    """``served[name]`` (the routes of the model a request names, over HTTP or gRPC); a 404
    naming the served models when ``name`` is none of them."""
    if not isinstance(name, str) or name not in served:
        raise HTTPError(404, f"model {str(name)[:200]!r} is not served here; this server serves "
                        f"{', '.join(served)}", "NotFound")
    return served[name]


def batch_bytes(model, batch_tokens: int) -> int:
    """An upper estimate of one engine call's activations at ``batch_tokens`` tokens: the
    layer's widest intermediate values (Q, K, V, the attention's output, the FFN's inner
    width, the residual stream and its copy) in the engine's dtype, with float32 scratch for
    the int8 path's quantised activations."""
    config, engine = model.engine.config, model.engine
    width = 8 * config.num_hiddens + 2 * config.ffn_num_hiddens
    itemsize = torch.empty((), dtype=engine.dtype).element_size()
    return batch_tokens * width * (itemsize + (1 if engine.quantize else 0))


def _resident_bytes(device: torch.device) -> int:
    """What this process holds now: on a GPU, torch's allocations there; on the CPU, its
    resident set (Linux; 0 elsewhere, where the budget cannot be measured)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _free_bytes(device: torch.device) -> int | None:
    """Memory free now on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class MemoryBudget:
    """The bytes the served models may take together on one device: ``limit``, or (0) the
    memory free when the budget is made. ``load`` measures what each model takes as it loads
    (the process's growth, plus one batch's activations at its batch_tokens) and refuses the
    model that would pass the budget, naming what each takes."""

    def __init__(self, limit: int, device: torch.device):
        self.device = device
        self.limit = limit or _free_bytes(device)
        self.taken: list[tuple[str, int]] = []

    def load(self, name: str, loader: Callable, batch_tokens: int):
        """``loader()``'s model, its memory counted against the budget."""
        before = _resident_bytes(self.device)
        model = loader()
        grown = max(0, _resident_bytes(self.device) - before)
        self.taken.append((name, grown + batch_bytes(model, batch_tokens)))
        total = sum(size for _, size in self.taken)
        if self.limit is not None and total > self.limit:
            each = ", ".join(f"{n}: {size / 2**20:.0f} MiB" for n, size in self.taken)
            raise ValueError(f"the models would take {total / 2**20:.0f} MiB on {self.device} "
                             f"(weights and one batch of max_batch_tokens each: {each}), more "
                             f"than the memory budget of {self.limit / 2**20:.0f} MiB: serve "
                             "fewer models, lower their max_batch_tokens, quantize them, or "
                             "raise --memory-budget")
        return model
