"""GPU benchmark: pybert.Engine against the peers a speed-minded user would pick, same inputs.

    pybert bench --device cuda [--peers all] [--repeats 30] [--json out.json]
    python benchmarks/bench_gpu.py (the same)

BERT-base shape (vocab 30522, hidden 768, 12 heads, 12 layers, ffn 3072, ReLU), fp16, random
weights. Workloads: 1 x 128, 1 x 512, 8 x 128, 64 x 128, 32 x 512, and 64 sequences with
lengths uniform in [32, 512]. pybert is the engine as a user gets it (CUDA graphs where they
pay), pybert-no-graphs the same with cuda_graphs=False. Peers:
  eager-fp32 / eager-fp16   pybert's d2l-style eager model
  hf-sdpa                   transformers BertModel, attn_implementation="sdpa", eager
  hf-cudagraph              the same forward captured once in a CUDA graph and replayed
  compile-max-autotune      torch.compile(hf, mode="max-autotune-no-cudagraphs")
  compile-reduce-overhead   torch.compile(hf, mode="reduce-overhead")
  nn-transformer            torch.nn.TransformerEncoder's fused fast path (nested tensors)
Each is timed with CUDA events (median of --repeats after warm-up). Useful FLOPs count only real
tokens; the GEMM ceiling is an 8192^3 fp16 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from ..config import BertConfig
from ..engine import Engine

WORKLOADS = {"1x128": (1, 128, False), "1x512": (1, 512, False), "8x128": (8, 128, False),
             "64x128": (64, 128, False), "32x512": (32, 512, False),
             "64xU[32,512]": (64, 512, True)}
ALL_PEERS = ["eager-fp32", "eager-fp16", "hf-sdpa", "hf-cudagraph", "compile-max-autotune",
             "compile-reduce-overhead", "nn-transformer"]
SHAPE = dict(vocab_size=30522, num_hiddens=768, num_heads=12, num_layers=12,
             ffn_num_hiddens=3072, max_len=512)


def cuda_time_ms(fn, repeats: int, warmup: int = 5, inner: int = 1) -> float:
    """Median over `repeats` of the time per call of `inner` back-to-back calls, by CUDA
    events (inner > 1 amortises the host's launch gaps, as inside a forward)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def gemm_ceiling_tflops(dtype=torch.float16) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    ms = cuda_time_ms(lambda: a @ b, repeats=10, warmup=3)
    return 2 * 8192 ** 3 / (ms * 1e-3) / 1e12


def useful_flops(lengths: list[int]) -> float:
    h, f, layers = SHAPE["num_hiddens"], SHAPE["ffn_num_hiddens"], SHAPE["num_layers"]
    tokens = sum(lengths)
    dense = 2 * tokens * (4 * h * h + 2 * h * f)           # QKV, O, FFN1, FFN2
    attention = sum(4 * n * n * h for n in lengths)        # QK^T and PV
    return layers * (dense + attention)


def make_inputs(batch, seq_len, ragged, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, SHAPE["vocab_size"], (batch, seq_len), generator=g)
    if ragged:
        valid_lens = torch.randint(32, seq_len + 1, (batch,), generator=g)
    else:
        valid_lens = torch.full((batch,), seq_len)
    segments = torch.zeros_like(tokens)
    return tokens, segments, valid_lens


def build_hf(dtype):
    from transformers import BertConfig as HFConfig, BertModel

    config = HFConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["num_hiddens"],
                      num_hidden_layers=SHAPE["num_layers"],
                      num_attention_heads=SHAPE["num_heads"],
                      intermediate_size=SHAPE["ffn_num_hiddens"], hidden_act="relu",
                      max_position_embeddings=SHAPE["max_len"], attn_implementation="sdpa")
    return BertModel(config, add_pooling_layer=True).to("cuda", dtype).eval()


def build_peers(names, tokens, segments, valid_lens, net32):
    """name -> zero-argument callable running that peer on this workload's inputs."""
    peers = {}
    t, s = tokens.cuda(), segments.cuda()
    vl = valid_lens.cuda()
    mask = (torch.arange(tokens.shape[1], device="cuda")[None, :] < vl[:, None]).long()
    if "eager-fp32" in names:
        peers["eager-fp32"] = lambda: net32(t, s, vl)
    if "eager-fp16" in names:
        net16 = _half_copy(net32)
        peers["eager-fp16"] = lambda: net16(t, s, vl)
    hf = build_hf(torch.float16) if any(n.startswith(("hf", "compile")) for n in names) else None
    if "hf-sdpa" in names:
        peers["hf-sdpa"] = lambda: hf(input_ids=t, attention_mask=mask, token_type_ids=s)
    if "hf-cudagraph" in names:
        static = [t.clone(), mask.clone(), s.clone()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                hf(input_ids=static[0], attention_mask=static[1], token_type_ids=static[2])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            hf(input_ids=static[0], attention_mask=static[1], token_type_ids=static[2])
        # The graph reads its inputs from the static tensors' memory: keep them alive with it.
        # (Bound to graph.replay alone, they were freed when this function returned; the next
        # peer's allocations then overwrote the token ids the graph gathers with.)
        peers["hf-cudagraph"] = lambda graph=graph, static=static: graph.replay()
    for mode, name in (("max-autotune-no-cudagraphs", "compile-max-autotune"),
                       ("reduce-overhead", "compile-reduce-overhead")):
        if name in names:
            compiled = torch.compile(hf, mode=mode)
            peers[name] = lambda c=compiled: c(input_ids=t, attention_mask=mask,
                                               token_type_ids=s)
    if "nn-transformer" in names:
        peers["nn-transformer"] = _nn_transformer_peer(t, vl)
    return peers


def _half_copy(net):
    import copy

    return copy.deepcopy(net).half()


def _nn_transformer_peer(tokens, valid_lens):
    h = SHAPE["num_hiddens"]
    layer = torch.nn.TransformerEncoderLayer(h, SHAPE["num_heads"], SHAPE["ffn_num_hiddens"],
                                             dropout=0.0, activation="relu", batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, SHAPE["num_layers"],
                                          enable_nested_tensor=True).to("cuda",
                                                                        torch.float16).eval()
    embedding = torch.nn.Embedding(SHAPE["vocab_size"], h).to("cuda", torch.float16)
    padding = torch.arange(tokens.shape[1], device="cuda")[None, :] >= valid_lens[:, None]

    def run():
        return encoder(embedding(tokens), src_key_padding_mask=padding)

    return run


def latency(engine, calls: int) -> dict:
    """Wall time of each of `calls` back-to-back engine.encode calls on one 1 x 128 batch from
    the host, each waited for (what a caller of one request sees), and the GPU memory held."""
    import time

    tokens, segments, valid_lens = make_inputs(1, 128, False, seed=1)
    for _ in range(20):
        engine.encode(tokens, segments, valid_lens)
    torch.cuda.synchronize()
    memory_before = torch.cuda.memory_allocated()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.encode(tokens, segments, valid_lens)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    memory_after = torch.cuda.memory_allocated()
    times.sort()
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    print(f"\nlatency, {calls} back-to-back 1 x 128 calls: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
          f"(p99/p50 {p99 / p50:.2f}); GPU memory {memory_before / 2**20:.1f} -> "
          f"{memory_after / 2**20:.1f} MiB")
    return {"calls": calls, "p50_ms": p50, "p99_ms": p99, "memory_before": memory_before,
            "memory_after": memory_after}


def write_json(path, results: dict) -> None:
    """A benchmark's results as an indented JSON file (what RESULTS.md tables are made from)."""
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


# The benchmark's one run read top to bottom (options, engines, a table per workload).
# Long: it runs only on a GPU, where a reshaping could not be checked before its next run.
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="all", help="comma-separated subset of "
                        + ", ".join(ALL_PEERS))
    parser.add_argument("--workloads", default="all", help="comma-separated subset of "
                        + ", ".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--latency-calls", type=int, default=0,
                        help="also time this many back-to-back 1 x 128 calls (p50, p99, memory)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU", file=sys.stderr)
        return 2

    names = ALL_PEERS if args.peers == "all" else args.peers.split(",")
    workloads = list(WORKLOADS) if args.workloads == "all" else args.workloads.split(",")
    torch.manual_seed(0)
    config = BertConfig(**SHAPE)
    net32 = config.build_model().cuda().eval()
    # What a user gets (CUDA graphs where they pay), and every call eager.
    engine = Engine.from_model(net32, device="cuda", dtype=torch.float16)
    eager = Engine.from_model(net32, device="cuda", dtype=torch.float16,
                                     cuda_graphs=False)
    ceiling = gemm_ceiling_tflops()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp16 GEMM ceiling "
          f"{ceiling:.0f} TFLOP/s (8192^3)")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "gemm_ceiling_tflops": ceiling, "workloads": {}}
    for workload in workloads:
        batch, seq_len, ragged = WORKLOADS[workload]
        tokens, segments, valid_lens = make_inputs(batch, seq_len, ragged)
        flops = useful_flops(valid_lens.tolist())
        rows = {}
        with torch.inference_mode():
            for name, fn in build_peers(names, tokens, segments, valid_lens, net32).items():
                try:
                    rows[name] = cuda_time_ms(fn, args.repeats)
                except Exception as err:  # a peer that cannot run this shape is reported
                    print(f"  {name}: failed ({type(err).__name__}: {err})")
            rows["pybert"] = cuda_time_ms(
                lambda: engine.encode(tokens, segments, valid_lens), args.repeats)
            rows["pybert-no-graphs"] = cuda_time_ms(
                lambda: eager.encode(tokens, segments, valid_lens), args.repeats)
        ours = {"pybert", "pybert-no-graphs"}
        best_peer = min((v, k) for k, v in rows.items() if k not in ours)
        best_ours = rows["pybert"]
        print(f"\n{workload}: {sum(valid_lens.tolist())} real tokens, "
              f"{flops / 1e9:.1f} GFLOP useful")
        for name, ms in sorted(rows.items(), key=lambda kv: kv[1]):
            tflops = flops / (ms * 1e-3) / 1e12
            print(f"  {name:<26} {ms:8.3f} ms  {tflops:6.1f} TFLOP/s  "
                  f"{100 * tflops / ceiling:5.1f}% of ceiling  ratio to best peer "
                  f"{ms / best_peer[0]:.2f}")
        results["workloads"][workload] = {"ms": rows, "best_peer": best_peer[1],
                                          "ratio": best_ours / best_peer[0],
                                          "useful_gflop": flops / 1e9}
    if args.latency_calls:
        results["latency"] = latency(engine, args.latency_calls)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
