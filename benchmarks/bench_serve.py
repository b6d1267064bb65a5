"""Load test of `pybert serve` on loopback: N concurrent clients, each sending one-sentence
/embed requests on a kept-alive connection for a fixed time, then it stops. Prints
requests/s, p50/p99 latency, errors and the server's memory at start and end, beside the
sentences/s of calling pybert.encode in-process on the same sentences (what HTTP and batching
cost).

    python benchmarks/bench_serve.py --clients 64 --seconds 60            # a small random model
    python benchmarks/bench_serve.py --model DIR --clients 256 --device cuda
    python benchmarks/bench_serve.py --two-models --clients 32 --seconds 30
    python benchmarks/bench_serve.py --ray-replicas 2 --clients 16 --seconds 20   # Ray Serve

--two-models: two models (random, MiniLM-sized, different weights) served by one server
(`--model A --model B`, each client sending to /models/{name}/embed) against two servers of one
model each (half the clients each): requests/s, latency and the servers' memory together.

Sentences come from WikiText-2 (../shared/data/wikitext-2) where present, else from Python's
documentation topics.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import pybert


def sentences(count: int) -> list[str]:
    wiki = Path(__file__).resolve().parents[1].parent / "shared/data/wikitext-2/wiki.test.tokens"
    if wiki.exists():
        lines = [line.strip() for line in wiki.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if 20 < len(line) < 400 and not line.startswith("=")]
    else:
        from pybert.train.data import builtin_corpus

        lines = [" ".join(s) for p in builtin_corpus() for s in p if 4 <= len(s) <= 60]
    return (lines * (count // max(len(lines), 1) + 1))[:count]


def small_model(folder: Path, name: str = "model", seed: int = 0) -> Path:
    """A random BERT of MiniLM's width (384, 6 layers) with the built-in corpus's vocabulary."""
    from pybert.config import BertConfig
    from pybert.train.data import build_vocab, builtin_corpus

    vocab = build_vocab(builtin_corpus(), min_freq=2)
    config = BertConfig(len(vocab), 384, 1536, 12, 6, max_len=128)
    torch.manual_seed(seed)
    net = config.build_model().eval()
    path = folder / name
    pybert.save(net, path, vocab=vocab, extra={"text_format": "plain"})
    return path


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(port, texts: list[str], clients: int, seconds: float, path="/embed"):
    """``clients`` threads posting one text each to ``path`` for ``seconds``; ``port`` and
    ``path`` may be lists, client i taking entry i % len."""
    latencies, errors, lock = [], [0], threading.Lock()
    stop_at = time.perf_counter() + seconds
    ports = port if isinstance(port, list) else [port]
    paths = path if isinstance(path, list) else [path]

    def client(index: int):
        port, path = ports[index % len(ports)], paths[index % len(paths)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = index
        mine, failed = [], 0
        while time.perf_counter() < stop_at:
            body = json.dumps({"inputs": texts[i % len(texts)], "truncate": True})
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed += 1
                else:
                    mine.append(time.perf_counter() - start)
            except OSError:
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            i += clients
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - begin


def start_server(models: list[Path], cwd: str, device: str, max_wait_ms: float,
                 ray_replicas: int = 0):
    """`pybert serve` of ``models`` on a free port (through Ray Serve with ``ray_replicas``),
    once healthy: (process, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [arg for m in models for arg in ("--model", str(m))]
    server = subprocess.Popen(
        [sys.executable, "-m", "pybert", "serve", *flags, "--port", str(port), "--device",
         device, "--log-level", "warning", "--max-wait-ms", str(max_wait_ms),
         *(["--ray", "--ray-replicas", str(ray_replicas)] if ray_replicas else [])], cwd=cwd)
    deadline = time.time() + 300
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.2)


def summary(latencies: list[float], errors: int, elapsed: float) -> dict:
    latencies = sorted(latencies)
    p50 = statistics.median(latencies) * 1e3
    return {"requests": len(latencies), "errors": errors,
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(p50, 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1e3, 2)}


def two_models(args) -> dict:
    """One server of two models against two servers of one each, the same clients."""
    texts = sentences(4096)
    out = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = small_model(Path(tmp), "a", seed=0), small_model(Path(tmp), "b", seed=1)
        for kind in ("one server, two models", "two servers"):
            servers = [start_server([a, b], tmp, args.device, args.max_wait_ms)] \
                if kind.startswith("one") else \
                [start_server([m], tmp, args.device, args.max_wait_ms) for m in (a, b)]
            try:
                if len(servers) == 1:
                    ports, paths = [servers[0][1]], ["/models/a/embed", "/models/b/embed"]
                else:
                    ports, paths = [port for _, port in servers], ["/embed"]
                load(ports, texts, args.clients, min(5.0, args.seconds), paths)  # warm-up
                result = summary(*load(ports, texts, args.clients, args.seconds, paths))
                result["servers_rss_mb"] = round(sum(rss_kb(p.pid) for p, _ in servers)
                                                 / 1024, 1)
                out[kind] = result
            finally:
                for process, _ in servers:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=120)
    one, two = out["one server, two models"], out["two servers"]
    out["one_over_two"] = {"requests_per_s": round(one["requests_per_s"] /
                                                   two["requests_per_s"], 2),
                           "rss": round(one["servers_rss_mb"] / two["servers_rss_mb"], 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random MiniLM-sized "
                                        "model made here)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--ray-replicas", type=int, default=0,
                        help="serve through Ray Serve with this many replicas (pybert serve "
                             "--ray); the memory reported is then the driver's alone")
    parser.add_argument("--two-models", action="store_true",
                        help="one server of two models against two servers of one")
    args = parser.parse_args(argv)
    if args.two_models:
        print(json.dumps(two_models(args), indent=1))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else small_model(Path(tmp))
        texts = sentences(4096)
        server, port = start_server([model_dir], tmp, args.device, args.max_wait_ms,
                                    args.ray_replicas)
        try:
            load(port, texts, args.clients, min(5.0, args.seconds))  # warm-up
            start_kb = rss_kb(server.pid)
            samples, sampling = [], threading.Event()

            def sample():  # the server's memory every tenth of the run
                while not sampling.wait(args.seconds / 10):
                    samples.append(round(rss_kb(server.pid) / 1024, 1))

            sampler = threading.Thread(target=sample)
            sampler.start()
            latencies, errors, elapsed = load(port, texts, args.clients, args.seconds)
            sampling.set()
            sampler.join()
            end_kb = rss_kb(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)

        model = pybert.TextModel.load(model_dir, device=args.device,
                                      dtype=torch.float16 if args.device.startswith("cuda")
                                      else torch.float32)
        sample = texts[:2048]
        model.encode(sample[:64], truncation="warn")
        began = time.perf_counter()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.encode(sample)
        in_process = len(sample) / (time.perf_counter() - began)

    result = {"clients": args.clients, "seconds": round(elapsed, 1),
              **summary(latencies, errors, elapsed)}
    rate = result["requests_per_s"]
    result.update({"p99_over_p50": round(result["p99_ms"] / result["p50_ms"], 2),
                   "server_rss_mb_start": round(start_kb / 1024, 1),
                   "server_rss_mb_end": round(end_kb / 1024, 1),
                   "server_rss_mb_during": samples,
                   "in_process_sentences_per_s": round(in_process, 1),
                   "server_over_in_process": round(rate / in_process, 2),
                   "ray_replicas": args.ray_replicas,
                   "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count()})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
