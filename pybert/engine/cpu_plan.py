"""The CPU engine's plan: which library each weight GEMM goes to at each row count, which kernel
runs the float attention (MKL's batched GEMMs or pybert's own tiled kernel) and up to which
length rather than torch's flash attention, chosen by timing the candidates on the machine that
runs.

The fastest path is a property of the CPU, not of the library's name: MKL runs AMD processors
on its AVX2 code (half of what oneDNN gets from the same cores on an EPYC), oneDNN's bfloat16
needs AVX512-BF16 or AMX to be fast, and the answer changes with the row count. So nothing
here asks for a vendor or for which library is present: each candidate that this torch offers
is timed on the model's own GEMM shapes, at a few row counts, and the fastest is kept (as the
GPU's cuBLASLt algorithm choice is made by timing). A plan is measured once per process and
shape, and kept on disk keyed by the CPU model, its ISA flags, torch's version and the thread
count (``$PYBERT_CACHE_DIR``, default ``~/.cache/pybert``; ``PYBERT_CPU_PLAN_CACHE=0`` keeps
it in memory only), so a later load reuses it.

An int8 engine (``quantize="int8"``) times oneDNN's int8 GEMM beside the float paths and keeps
whichever is fastest per shape and row count: on a CPU without VNNI (an AVX2 EPYC) the int8
GEMM is slower than the float ones at small row counts, and the float path is then both
faster and exact.

``PYBERT_CPU_GEMM=aten|mkl|onednn|int8`` and ``PYBERT_CPU_ATTENTION=mkl|own|flash`` force a path
(for tests and bug reports); ``Engine(..., cpu_plan="default")`` (or
``PYBERT_CPU_PLAN=default``) takes the built-in defaults without measuring.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import _C
from ..config import BertConfig

__all__ = ["CpuPlan", "plan_cpu", "time_ratio", "default_plan", "cpu_identity", "GEMM_PATHS",
           "FLOAT_PATHS",
           "ATTENTION_PATHS", "MEASURED_ROWS", "MEASURED_ROWS_INT8", "MEASURED_LENGTHS",
           "ALL_ROWS"]

GEMM_PATHS = tuple(_C.CPU_GEMM_PATHS)       # "aten", "mkl", "onednn", "int8"
FLOAT_PATHS = tuple(p for p in GEMM_PATHS if p != "int8")  # what a float engine may take
ATTENTION_PATHS = tuple(_C.CPU_ATTENTION_PATHS)  # "flash", "mkl", "own"
ATTENTION_KERNELS = tuple(p for p in ATTENTION_PATHS if p != "flash")  # short float sequences
MEASURED_ROWS = (16, 128)                   # a GEMM's row counts timed per weight shape
# An int8 engine's too, and a large batch's: dynamic quantisation costs a pass over the
# activations, which larger GEMMs amortise, so int8 may win only there.
MEASURED_ROWS_INT8 = (16, 128, 512)
MAX_TIMED_COLUMNS = 4096                    # a wider weight (the MLM decoder) is timed at this n
MEASURED_LENGTHS = (32, 128, 256)           # sequence lengths timed for the attention
ATTENTION_BATCH = 2                         # sequences per attention timing
ATTENTION_KERNEL_MAX = _C.CPU_ATTENTION_KERNEL_MAX  # the longest the own kernels take
REPEATS = 2                                 # timed calls per candidate, after a warm-up
ALL_ROWS = 2**63 - 1                        # a bucket's max_rows that covers every row count

# (paths, row counts, n, k, dtype) -> seconds per path and row count, negative where a path
# is not available; and (attention path, batch, length, heads, head_dim) -> seconds, negative
# where the path is not available; and (path, dtype) -> whether this machine has the GEMM path.
# Tests pass fakes.
GemmTimer = Callable[[tuple, tuple, int, int, str], list]
PathCheck = Callable[[str, str], bool]
AttentionTimer = Callable[[str, int, int, int, int], float]


def _time_gemm(paths: tuple, rows: tuple, n: int, k: int, dtype: str) -> list:
    return _C.time_cpu_gemm([_C.CPU_GEMM_PATHS[p] for p in paths], list(rows), n, k, dtype,
                            REPEATS)


def _path_available(path: str, dtype: str) -> bool:
    return _C.cpu_gemm_path_available(_C.CPU_GEMM_PATHS[path], dtype)


def _attention_available(path: str) -> bool:
    return _C.cpu_attention_path_available(_C.CPU_ATTENTION_PATHS[path])


def _time_attention(path: str, batch: int, length: int, heads: int, head_dim: int) -> float:
    return _C.time_cpu_attention(_C.CPU_ATTENTION_PATHS[path], batch, length, heads, head_dim,
                                 REPEATS)


@dataclass
class CpuPlan:
    """What an engine on this CPU uses: ``gemm`` maps each weight shape (n, k) to its paths by
    row count, ``[(max_rows, path), ...]`` (the last entry covers every larger count);
    ``attention_kernel`` ("mkl" or "own") takes the float sequences of up to
    ``attention_max_length`` tokens, torch's flash attention the rest ("flash" and 0: every
    one). ``source``: "measured", "cached", "forced" or "default"."""

    cpu: dict
    dtype: str
    gemm: dict = field(default_factory=dict)
    attention_kernel: str = "mkl"
    attention_max_length: int = ATTENTION_KERNEL_MAX
    source: str = "default"
    # A bfloat16 or int8 plan: its GEMMs' time over float32's on this CPU (time_ratio).
    time_vs_float32: float | None = None

    def native(self) -> dict:
        """The plan as pybert._C.Engine takes it (paths as GemmPath's and AttentionPath's
        values)."""
        return {"gemm": {tuple(shape): [(int(rows), _C.CPU_GEMM_PATHS[path])
                                        for rows, path in choice]
                         for shape, choice in self.gemm.items()},
                "attention_kernel": _C.CPU_ATTENTION_PATHS[self.attention_kernel],
                "attention_max_length": int(self.attention_max_length)}

    def summary(self) -> dict:
        """JSON-ready: the CPU seen, the path per shape and row bucket, the attention's."""
        return {"cpu": self.cpu, "dtype": self.dtype, "source": self.source,
                "gemm": {f"{n}x{k}": [[rows if rows < ALL_ROWS else "more", path]
                                      for rows, path in choice]
                         for (n, k), choice in self.gemm.items()},
                "attention": {"kernel": self.attention_kernel,
                              "max_length": self.attention_max_length},
                "time_vs_float32": self.time_vs_float32}


# The variables that cap the instructions the GEMM libraries and ATen use below what the CPU
# has: a plan measured under one cap is not the plan of another.
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
            "ATEN_CPU_CAPABILITY")


def cpu_identity() -> dict:
    """The CPU as a plan's cache key sees it: its model name, its ISA flags (those that decide
    a GEMM's speed) and the caps set on them, the vectors the own attention kernel runs in,
    torch's version and the threads an engine runs on."""
    model, isa = _cpu_model_and_isa()
    identity = {"model": model, "isa": list(isa), "machine": platform.machine(),
                "kernel_isa": _C.cpu_attention_isa(), "torch": torch.__version__,
                "threads": torch.get_num_threads()}
    caps = {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)}
    if caps:
        identity["isa_caps"] = caps
    return identity


@functools.lru_cache(maxsize=1)
def _cpu_model_and_isa() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and the ISA flags that decide a GEMM's speed, read from
    /proc/cpuinfo once per process (it does not change; every engine's plan asks)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
              "amx_bf16", "amx_int8", "avx_vnni", "asimd", "sve", "sve2", "bf16", "i8mm")
    return model, tuple(f for f in wanted if f in flags)


def gemm_shapes(config: BertConfig, int8: bool = False) -> dict[tuple[int, int],
                                                                 tuple[int, ...]]:
    """The distinct weight shapes (n, k) of a model's GEMMs, with the row counts to time each
    at: the layers' and the pooler's at MEASURED_ROWS (an int8 engine's at
    MEASURED_ROWS_INT8); the MLM decoder, which sees only the predicted positions (few rows)
    and is the largest matrix, at the fewest only."""
    h, f = config.num_hiddens, config.ffn_num_hiddens
    ffn_in = 2 * f if config.ffn_gated else f  # a gated FFN's first GEMM gives [a | g]
    rows = MEASURED_ROWS_INT8 if int8 else MEASURED_ROWS
    shapes = {shape: rows for shape in ((3 * h, h), (h, h), (ffn_in, h), (h, f))}
    if config.embedding_size not in (0, h):  # ELECTRA-small's embedding projection
        shapes.setdefault((h, config.embedding_size), rows)
    shapes.setdefault((config.vocab_size, h), rows[:1])
    return shapes


def _bucket_limits(points) -> list[int]:
    """Row-count limits between measured points (geometric midpoints), the last unbounded."""
    limits = [int(math.sqrt(a * b)) for a, b in zip(points, points[1:])]
    return limits + [ALL_ROWS]


def choose_gemm(n: int, k: int, dtype: str, paths, timer: GemmTimer,
                rows=MEASURED_ROWS) -> list[tuple[int, str]]:
    """For a weight (n, k): the fastest available path at each measured row count, as
    [(max_rows, path)], neighbouring buckets with the same path merged. A path that times
    negative (absent on this machine or this shape) is skipped."""
    paths = tuple(paths)
    if len(paths) == 1:  # nothing to choose between: not timed
        return [(ALL_ROWS, paths[0])]
    # A library's speed on a wide weight is its speed on a slice of it: timing all 30,522
    # columns of BERT's decoder would cost more than the rest of the plan.
    by_path = dict(zip(paths, timer(paths, tuple(rows), min(n, MAX_TIMED_COLUMNS), k, dtype)))
    choice: list[tuple[int, str]] = []
    for i, limit in enumerate(_bucket_limits(rows)):
        timings = {p: seconds[i] for p, seconds in by_path.items() if seconds[i] >= 0}
        best = min(timings, key=timings.get) if timings else "aten"
        if choice and choice[-1][1] == best:
            choice[-1] = (limit, best)
        else:
            choice.append((limit, best))
    return choice


def choose_attention(heads: int, head_dim: int, timer: AttentionTimer,
                     lengths=MEASURED_LENGTHS) -> tuple[str, int]:
    """(kernel, max_length): of the kernels this process has ("mkl", "own"), the one with the
    smaller geometric mean time over the measured lengths; it takes the sequences up to the
    first measured length where flash is faster (the limit falls between the two), every one
    up to ATTENTION_KERNEL_MAX if it wins at every length; ("flash", 0) if it loses at the
    first."""
    def times(path):
        return [timer(path, ATTENTION_BATCH, length, heads, head_dim) for length in lengths]
    kernels = {path: seconds for path in ATTENTION_KERNELS
               if min(seconds := times(path)) > 0}
    if not kernels:
        return "flash", 0
    kernel = min(kernels, key=lambda path: sum(math.log(t) for t in kernels[path]))
    flash = times("flash")
    limits = _bucket_limits(lengths)
    for i, seconds in enumerate(kernels[kernel]):
        if flash[i] > 0 and seconds > flash[i]:
            return ("flash", 0) if i == 0 else (kernel, limits[i - 1])
    return kernel, ATTENTION_KERNEL_MAX


class _PlanCache:
    """Choices by key, in memory for the process and (unless disabled) in one JSON file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._memory: dict[str, object] = {}

    @staticmethod
    def path() -> Path | None:
        if os.environ.get("PYBERT_CPU_PLAN_CACHE", "1") == "0":
            return None
        root = os.environ.get("PYBERT_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "pybert")
        return Path(root) / "cpu_plan.json"

    def _disk(self) -> dict:
        path = self.path()
        try:
            value = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except (OSError, ValueError):
            return {}  # a damaged cache is measured again, not trusted
        return value if isinstance(value, dict) else {}

    def get(self, key: str):
        """The stored choice, or None."""
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            value = self._disk().get(key)
            if value is not None:
                self._memory[key] = value
            return value

    def put(self, key: str, value) -> None:
        with self._lock:
            self._memory[key] = value
            path = self.path()
            if path is None:
                return
            try:
                stored = self._disk()
                stored[key] = value
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(stored, indent=1))
                os.replace(tmp, path)
            except OSError:
                pass  # an unwritable cache only costs the next process a measurement

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()


CACHE = _PlanCache()


def _is_attention_choice(value) -> bool:
    """Whether a cached value is an attention choice [kernel, max_length] (anything else, an
    older or damaged cache, is measured again)."""
    return isinstance(value, list) and len(value) == 2 and (
        value[0] in ATTENTION_KERNELS and isinstance(value[1], int)
        and not isinstance(value[1], bool) and 0 < value[1] <= ATTENTION_KERNEL_MAX
        or value == ["flash", 0])


def _is_choice(value) -> bool:
    """Whether a cached value is a GEMM choice ([(max_rows, path), ...]); anything else (an
    older or damaged cache) is measured again."""
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], int)
        and entry[1] in GEMM_PATHS for entry in value)


def _forced(name: str, allowed) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {tuple(allowed)}")
    return value


def default_plan(dtype: str) -> CpuPlan:
    """The built-in choice, measured on an AVX-512/AMX Xeon: prepacked weights up to 256 rows
    (MKL in float, oneDNN in bfloat16), ATen beyond; float attention by MKL's batched GEMMs
    up to 512 tokens (by the own kernel where this torch has no MKL)."""
    kernel = "mkl" if _attention_available("mkl") else "own"
    return CpuPlan(cpu_identity(), dtype, attention_kernel=kernel)


def plan_cpu(config: BertConfig, dtype: torch.dtype, int8: bool = False,
             gemm_timer: GemmTimer | None = None,
             attention_timer: AttentionTimer | None = None,
             path_available: PathCheck | None = None) -> CpuPlan:
    """The plan of an engine of ``config`` in ``dtype`` on this CPU: measured (or taken from
    the cache), or forced by PYBERT_CPU_GEMM / PYBERT_CPU_ATTENTION. ``int8``: an int8 engine
    (float32 activations), whose GEMMs may also take the int8 path."""
    name = str(dtype).replace("torch.", "")
    cpu = cpu_identity()
    plan = CpuPlan(cpu, "int8" if int8 else name, source="cached")
    forced_gemm = _forced("PYBERT_CPU_GEMM", GEMM_PATHS)
    forced_attention = _forced("PYBERT_CPU_ATTENTION", ATTENTION_PATHS)
    gemm_timer = gemm_timer or _time_gemm
    attention_timer = attention_timer or _time_attention
    available = [p for p in (GEMM_PATHS if int8 else FLOAT_PATHS)
                 if (path_available or _path_available)(p, name)]
    measured = False
    for (n, k), rows in gemm_shapes(config, int8).items():
        if forced_gemm is not None:
            if forced_gemm not in available:
                raise ValueError(f"PYBERT_CPU_GEMM={forced_gemm}: that path is not available "
                                 f"for {name} on this machine (available: {available})")
            plan.gemm[(n, k)] = [(ALL_ROWS, forced_gemm)]
            continue
        key = json.dumps(["gemm", cpu, plan.dtype, n, k])
        choice = CACHE.get(key)
        if not _is_choice(choice):
            choice = choose_gemm(n, k, name, available, gemm_timer, rows)
            CACHE.put(key, choice)
            measured = True
        plan.gemm[(n, k)] = [(int(limit), str(path)) for limit, path in choice]
    if name != "float32":
        choice = ["flash", 0]  # bfloat16 attention is flash's
    elif forced_attention is not None:
        if not _attention_available(forced_attention):
            raise ValueError(f"PYBERT_CPU_ATTENTION={forced_attention}: that kernel is not "
                             "available on this machine")
        choice = ["flash", 0] if forced_attention == "flash" else \
            [forced_attention, ATTENTION_KERNEL_MAX]
    else:
        key = json.dumps(["attention", cpu, config.num_heads, config.head_dim])
        choice = CACHE.get(key)
        if not _is_attention_choice(choice):
            choice = list(choose_attention(config.num_heads, config.head_dim, attention_timer))
            CACHE.put(key, choice)
            measured = True
    plan.attention_kernel, plan.attention_max_length = str(choice[0]), int(choice[1])
    if int8 or name != "float32":
        plan.time_vs_float32 = time_ratio(config, plan.dtype, gemm_timer, path_available)
    plan.source = "forced" if forced_gemm or forced_attention else \
        "measured" if measured else "cached"
    return plan


def time_ratio(config: BertConfig, precision: str, gemm_timer: GemmTimer | None = None,
               path_available: PathCheck | None = None) -> float | None:
    """How long ``precision``'s GEMMs ("bfloat16", or "int8" weights) take on this CPU
    against float32's: the fastest available path of each on the model's largest layer
    weight (the FFN's first), the geometric mean over MEASURED_ROWS; > 1 is slower. None
    where the precision has no path here. Measured once per CPU and shape, then cached."""
    n, k = (2 if config.ffn_gated else 1) * config.ffn_num_hiddens, config.num_hiddens
    key = json.dumps(["time_ratio", cpu_identity(), precision, n, k])
    cached = CACHE.get(key)
    if isinstance(cached, (int, float)) and not isinstance(cached, bool) and cached > 0:
        return float(cached)
    timer, available = gemm_timer or _time_gemm, path_available or _path_available

    def best(paths, dtype):
        paths = tuple(p for p in paths if available(p, dtype))
        if not paths:
            return None
        seconds = timer(paths, MEASURED_ROWS, min(n, MAX_TIMED_COLUMNS), k, dtype)
        at_rows = [min((s[i] for s in seconds if s[i] > 0), default=None)
                   for i in range(len(MEASURED_ROWS))]
        return None if None in at_rows else at_rows

    candidate = best(("int8",), "float32") if precision == "int8" else \
        best(FLOAT_PATHS, precision)
    reference = best(FLOAT_PATHS, "float32")
    if candidate is None or reference is None:
        return None
    ratio = math.exp(sum(math.log(c / r) for c, r in zip(candidate, reference))
                     / len(MEASURED_ROWS))
    CACHE.put(key, ratio)
    return ratio
