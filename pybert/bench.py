"""Benchmarks: the engine and its peers in one run, on the same inputs, as ratios.

``run_cpu_benchmark`` times the CPU engine against the eager d2l model (fp32, inference mode),
torch.compile of it, and torch.nn.TransformerEncoder's fused fast path (nested tensors for the
padding; the same sizes, post-LN, ReLU), at the book's training config and a BERT-base-like
shape."""

from __future__ import annotations

import statistics
import time

import torch

from .config import BertConfig
from .engine import Engine

__all__ = ["run_cpu_benchmark", "time_call"]

CPU_SHAPES = {
    "book-training (H=128, 2 layers)": BertConfig(20256, 128, 256, 2, 2, max_len=512),
    "BERT-base-like (H=768, 12 heads, 4 layers)": BertConfig(30522, 768, 3072, 12, 4,
                                                             max_len=512),
}


def time_call(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _transformer_encoder_peer(config: BertConfig, tokens, valid_lens):
    """The encoder layers as torch.nn.TransformerEncoder runs them on its fast path (eval,
    inference mode, a padding mask turned into nested tensors), after an embedding lookup."""
    layer = torch.nn.TransformerEncoderLayer(config.num_hiddens, config.num_heads,
                                             config.ffn_num_hiddens, dropout=0.0,
                                             activation="relu", batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, config.num_layers,
                                          enable_nested_tensor=True).eval()
    embedding = torch.nn.Embedding(config.vocab_size, config.num_hiddens)
    padding = torch.arange(tokens.shape[1])[None, :] >= valid_lens[:, None]

    def run():
        with torch.inference_mode():
            encoder(embedding(tokens), src_key_padding_mask=padding)

    return run


def run_cpu_benchmark(batch: int = 32, seq_len: int = 128, repeats: int = 10,
                      compile_peer: bool = True) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    print(f"CPU, fp32, batch {batch} x seq_len {seq_len} (valid lengths uniform in "
          f"[{seq_len // 4}, {seq_len}]), {torch.get_num_threads()} threads, median of "
          f"{repeats}")
    for name, config in CPU_SHAPES.items():
        net = config.build_model().eval()
        engine = Engine.from_model(net)
        tokens = torch.randint(0, config.vocab_size, (batch, seq_len))
        segments = torch.zeros_like(tokens)
        valid_lens = torch.randint(seq_len // 4, seq_len + 1, (batch,))

        def eager():
            with torch.inference_mode():
                net(tokens, segments, valid_lens)

        peers = {"eager d2l model": eager,
                 "nn.TransformerEncoder": _transformer_encoder_peer(config, tokens, valid_lens)}
        if compile_peer:
            compiled = torch.compile(net)

            def compiled_run():
                with torch.inference_mode():
                    compiled(tokens, segments, valid_lens)

            peers["torch.compile(eager)"] = compiled_run
        results = {label: time_call(fn, repeats) for label, fn in peers.items()}
        ours = time_call(lambda: engine(tokens, segments, valid_lens), repeats)
        best = min(results.values())
        print(f"\n{name}")
        for label, seconds in results.items():
            print(f"  {label:<24} {seconds * 1e3:9.2f} ms")
        print(f"  {'pybert.Engine (cpu)':<24} {ours * 1e3:9.2f} ms   ratio to best peer "
              f"{ours / best:.2f}")
        rows.append({"shape": name, "engine_ms": ours * 1e3,
                     **{f"{k}_ms": v * 1e3 for k, v in results.items()},
                     "ratio_to_best_peer": ours / best})
    return rows
