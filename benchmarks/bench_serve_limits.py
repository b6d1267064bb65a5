"""What the server's limits cost and what they hold, on loopback: the peak memory of the worst
request of each route (the probes of issue 38: pairs of two 64 KiB texts cut, a long reranker
query, an 8 MiB body of long texts cut, per-token vectors and /tokenize of the largest
bodies, SPLADE on the longest sequence, 32 texts x 510 masks), each in a fresh server with
/health timed during it; and /health's latency while 1,000 half-open connections are held.

    PYTHONPATH=. python benchmarks/bench_serve_limits.py            # this checkout
    python benchmarks/bench_serve_limits.py --checkout DIR           # another checkout (built
                                                                     # in place): before/after
    python benchmarks/bench_serve_limits.py --installed              # the installed pybert

The model is a random Hugging Face BertForMaskedLM (64 hidden, 2 layers) with a vocabulary
of 30,522 WordPiece tokens, so the MLM logits are as wide as BERT-base's. The server runs as
`python -m pybert serve` in a subprocess, from the checkout (PYTHONPATH) or from the installed
package (--installed: a before/after comparison against an older install).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def model_dir(folder: Path, classifier: bool = False) -> Path:
    import torch
    import transformers

    words = [f"w{i}" for i in range(30522 - 5 - 26)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        [chr(c) for c in range(ord("a"), ord("z") + 1)] + words
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    config = transformers.BertConfig(vocab_size=len(tokens), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128,
                                     max_position_embeddings=512)
    torch.manual_seed(0)
    kind = transformers.BertForSequenceClassification if classifier else \
        transformers.BertForMaskedLM
    if classifier:
        config.num_labels = 1
    kind(config).eval().save_pretrained(folder)
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


CHECKOUT = HERE  # whose pybert the servers run (--checkout)


def start(model: Path, installed: bool, *flags) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if not installed:
        env["PYTHONPATH"] = str(CHECKOUT)
    server = subprocess.Popen([sys.executable, "-m", "pybert", "serve", "--model", str(model),
                               "--port", str(port), "--log-level", "warning", *flags],
                              cwd=model.parent, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=_memory_cap)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise TimeoutError("the server did not start")


def _memory_cap() -> None:
    """The server's data segment capped at MEMORY_CAP (what goes past it fails there: a
    request that once took a server past 8 GiB must not take this machine with it)."""
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))


MEMORY_CAP = 8 << 30


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(port: int, path: str, body: dict, timeout=600) -> tuple[int, int]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, len(response.read())
    except urllib.error.HTTPError as err:
        return err.code, len(err.read())


def fill_mask_peak(model: Path, installed: bool) -> dict:
    flags = () if installed else ("--max-masks", "16384")  # the checkout's default refuses it
    server, port = start(model, installed, *flags)
    try:
        before = peak_rss_mb(server.pid)
        began = time.perf_counter()
        status, size = post(port, "/fill-mask", {"inputs": ["[MASK] " * 600] * 32,
                                                  "truncate": True, "top_k": 5})
        return {"status": status, "reply_mb": round(size / 2**20, 1),
                "seconds": round(time.perf_counter() - began, 1),
                "peak_rss_mb_before": round(before), "peak_rss_mb_after": round(
                    peak_rss_mb(server.pid))}
    finally:
        server.terminate()
        server.wait(60)


def health_ms(port: int) -> float | None:
    """One /health's latency in ms, or None if it failed or took past 30 s."""
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
            r.read()
    except OSError:
        return None
    return (time.perf_counter() - began) * 1000


def health_during(port: int, stop) -> list[float]:
    """/health's latencies (ms) sampled every 50 ms until ``stop`` is set (a failed or
    timed-out probe counts as 30,000 ms)."""
    times = []
    while not stop.is_set():
        latency = health_ms(port)
        times.append(30_000.0 if latency is None else latency)
        stop.wait(0.05)
    return times


# route, body, which model: the worst request of each route (issue 38's probes)
WORST = {
    "/predict 2 x 64 KiB pair, cut": ("/predict", {"inputs": ["w1 " * 21000, "w2 " * 21000],
                                                   "truncate": True}, "classifier"),
    "/rerank 60 KB query x 256 texts": ("/rerank", {"query": "w3 " * 20000,
                                                    "texts": ["a short text"] * 256,
                                                    "truncate": True}, "classifier"),
    "/embed 8 MiB of long texts, cut": ("/embed", {"inputs": ["!" * 32000] * 256,
                                                   "truncate": True}, "mlm"),
    "/embed_all 256 x 254 tokens": ("/embed_all", {"inputs": ["w4 " * 254] * 256,
                                                   "truncate": True}, "mlm"),
    "/tokenize 8 MiB": ("/tokenize", {"inputs": ["w5 " * 10000] * 256}, "mlm"),
    "/embed_sparse 256 x 510 tokens": ("/embed_sparse", {"inputs": ["w6 " * 600] * 256,
                                                         "truncate": True}, "mlm"),
}


def worst_requests(models: dict, installed: bool) -> dict:
    """Each route's worst request in a fresh server: status, seconds, peak RSS before and
    after, and /health's latency during it."""
    import threading

    out = {}
    for name, (path, body, which) in WORST.items():
        server, port = start(models[which], installed, "--max-body-bytes", str(9 << 20),
                             "--max-buffered-bytes", str(32 << 20))
        try:
            before = peak_rss_mb(server.pid)
            stop = threading.Event()
            probes: list = []
            prober = threading.Thread(target=lambda: probes.extend(health_during(port, stop)))
            prober.start()
            began = time.perf_counter()
            status, size = post(port, path, body, timeout=300)
            seconds = time.perf_counter() - began
            stop.set()
            prober.join()
            out[name] = {"status": status, "seconds": round(seconds, 2),
                         "reply_mb": round(size / 2**20, 2),
                         "peak_rss_mb_before": round(before),
                         "peak_rss_mb_after": round(peak_rss_mb(server.pid)),
                         "health_ms_max": round(max(probes), 1) if probes else None}
        finally:
            server.terminate()
            server.wait(60)
        print(name, out[name], flush=True)
    return out


def health_under_half_open(model: Path, installed: bool, connections: int) -> dict:
    server, port = start(model, installed)
    held = []
    try:
        head = (f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: 1000\r\n\r\n{{\"inputs\": [\"a").encode()
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(head)
            held.append(sock)
        probes = []
        for _ in range(20):
            probes.append(health_ms(port))
            time.sleep(0.05)
        times = [t for t in probes if t is not None]
        failures = len(probes) - len(times)
        return {"held": len(held), "health_ms_p50": round(statistics.median(times), 2)
                if times else None, "health_ms_max": round(max(times), 2) if times else None,
                "health_failures": failures}
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        server.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--installed", action="store_true",
                        help="run the installed pybert, not this checkout")
    parser.add_argument("--checkout", help="run this checkout's pybert (built in place)")
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    if args.checkout:
        global CHECKOUT
        CHECKOUT = Path(args.checkout).resolve()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        model = model_dir(Path(tmp) / "model")
        models = {"mlm": model, "classifier": model_dir(Path(tmp) / "ce", classifier=True)}
        result = {"pybert": "installed" if args.installed else str(CHECKOUT),
                  "worst_requests": worst_requests(models, args.installed),
                  "fill_mask_worst": fill_mask_peak(model, args.installed),
                  "health_under_half_open": health_under_half_open(model, args.installed,
                                                                   args.connections)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
