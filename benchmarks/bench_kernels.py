"""Each GPU op of the engine against its peers, and where one forward's time goes.

    python benchmarks/bench_kernels.py [--sections attention,layernorm,gemm,forward]
                                       [--dtype float16] [--json F]

BERT-base shape (12 heads, head dim 64, hidden 768, ffn 3072), on the workloads of
bench_gpu.py. Each op is timed with CUDA events around 20 back-to-back calls (median of 15 such
runs), so launch gaps are amortised as they are inside a forward; inputs are random, never
zeros, and every contender's output is checked against the others before it is timed.

attention  pybert's attention (what the engine runs) and its own kernel, against torch's
           FlashAttention-2 varlen on the packed tokens, cuDNN SDPA and memory-efficient SDPA
           (padded; with a mask where the batch is ragged); TFLOP/s over the real tokens.
layernorm  pybert's add + LayerNorm against the device-to-device copy ceiling (bytes read plus
           written) and against torch's (x + r) then F.layer_norm.
gemm       pybert's gemm_bias_act against F.linear on the four layer GEMMs.
forward    torch.profiler over one engine forward on 64 x 128: GPU time per kernel family,
           and the host<->device copies and memsets of the call.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM, HIDDEN, FFN = 12, 64, 768, 3072
WORKLOADS = {"1x128": (1, 128, False), "64x128": (64, 128, False), "32x512": (32, 512, False),
             "64xU[32,512]": (64, 512, True)}


def time_ms(fn, inner: int = 20, repeats: int = 15) -> float:
    from pybert.bench.gpu import cuda_time_ms

    return cuda_time_ms(fn, repeats, warmup=3, inner=inner)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def lengths_of(batch: int, seq_len: int, ragged: bool, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    if ragged:
        return torch.randint(32, seq_len + 1, (batch,), generator=g).tolist()
    return [seq_len] * batch


def attention_contenders(qkv: torch.Tensor, lengths: list[int]):
    """name -> (callable returning packed (T, H) context). qkv is packed (T, 3H)."""
    dev = qkv.device
    total, max_len, batch = sum(lengths), max(lengths), len(lengths)
    cu = torch.tensor([0] + lengths, device=dev, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    view = qkv.view(total, 3, HEADS, HEAD_DIM)
    q, k, v = view[:, 0], view[:, 1], view[:, 2]
    runs = {"pybert": lambda: torch.ops.pybert.attention_varlen(qkv, cu, max_len, HEADS),
            "pybert-own-kernel": lambda: torch.ops.pybert.attention_varlen(
                qkv, cu, max_len, HEADS, kernel="own")}
    if qkv.dtype != torch.float32:
        runs["fa2-varlen"] = lambda: torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, False, False)[0].view(total, HIDDEN)
    runs["efficient-varlen"] = lambda: torch.ops.aten._efficient_attention_forward(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), None, cu, cu, max_len, max_len, 0.0,
        0)[0].view(total, HIDDEN)

    # Padded contenders: (B, heads, S, d), outputs packed back for the check.
    mask = torch.arange(max_len, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
    padded = torch.zeros(batch, max_len, 3, HEADS, HEAD_DIM, device=dev, dtype=qkv.dtype)
    padded[mask] = view
    pq, pk, pv = (padded[:, :, i].transpose(1, 2) for i in range(3))
    ragged = len(set(lengths)) > 1
    attn_mask = mask[:, None, None, :] if ragged else None

    def sdpa(backend):
        def run():
            with torch.nn.attention.sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=attn_mask)
            return out.transpose(1, 2)[mask].reshape(total, HIDDEN)
        return run

    from torch.nn.attention import SDPBackend

    if not ragged and qkv.dtype != torch.float32:
        runs["cudnn-sdpa-padded"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    runs["efficient-sdpa-padded"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    return runs


def bench_attention(dtype, results):
    print(f"\n== attention ({dtype}; per layer; TFLOP/s over real tokens)")
    for name, (batch, seq_len, ragged) in WORKLOADS.items():
        lengths = lengths_of(batch, seq_len, ragged)
        qkv = torch.randn(sum(lengths), 3 * HIDDEN, device="cuda", dtype=dtype)
        flops = sum(4 * n * n * HIDDEN for n in lengths)
        runs = attention_contenders(qkv, lengths)
        reference = runs["efficient-sdpa-padded"]()
        row = {}
        for label, fn in runs.items():
            try:
                err = rel_l2(fn(), reference)
                ms = time_ms(fn)
            except Exception as exc:  # a contender that refuses this shape is reported
                print(f"  {name:<13} {label:<22} failed: {type(exc).__name__}: {exc}"[:200])
                continue
            row[label] = ms
            print(f"  {name:<13} {label:<22} {ms * 1e3:8.1f} us {flops / ms / 1e9:7.1f} TFLOP/s"
                  f"  rel diff {err:.1e}")
        results.setdefault("attention", {})[name] = row


def copy_ceiling_gbs() -> float:
    src = torch.randn(256 << 20, device="cuda", dtype=torch.float16)  # 512 MB
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), inner=5, repeats=10)
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


def bench_layernorm(dtype, results):
    ceiling = copy_ceiling_gbs()
    print(f"\n== add + LayerNorm ({dtype}); device copy ceiling {ceiling:.0f} GB/s")
    row = {"copy_ceiling_gbs": ceiling}
    for rows in (128, 8192, 16384):
        x = torch.randn(rows, HIDDEN, device="cuda", dtype=dtype)
        r = torch.randn_like(x)
        w = torch.randn(HIDDEN, device="cuda", dtype=dtype)
        b = torch.randn_like(w)
        bytes_moved = 3 * x.numel() * x.element_size()
        ours = lambda: torch.ops.pybert.add_layernorm(x, r, w, b, 1e-5)
        torch_ln = lambda: F.layer_norm(x + r, (HIDDEN,), w, b, 1e-5)
        err = rel_l2(ours(), F.layer_norm((x.double() + r.double()), (HIDDEN,), w.double(),
                                          b.double(), 1e-5))
        for label, fn in (("pybert", ours), ("torch add+layer_norm", torch_ln)):
            ms = time_ms(fn)
            gbs = bytes_moved / (ms * 1e-3) / 1e9
            row[f"{rows}:{label}"] = ms
            print(f"  {rows:>6} rows {label:<22} {ms * 1e3:7.1f} us {gbs:6.0f} GB/s "
                  f"({100 * gbs / ceiling:4.1f}% of copy)" + (f"  rel err {err:.1e}"
                                                             if label == "pybert" else ""))
    results["layernorm"] = row


def bench_gemm(dtype, results):
    print(f"\n== layer GEMMs ({dtype}) with bias: pybert vs F.linear")
    from pybert.engine.ops import ACTIVATIONS

    row = {}
    for tokens in (128, 8192):
        for label, (n, k, act) in {"qkv": (3 * HIDDEN, HIDDEN, "none"),
                                   "out": (HIDDEN, HIDDEN, "none"),
                                   "ffn1+relu": (FFN, HIDDEN, "relu"),
                                   "ffn2": (HIDDEN, FFN, "none")}.items():
            a = torch.randn(tokens, k, device="cuda", dtype=dtype)
            w = torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
            bias = torch.randn(n, device="cuda", dtype=dtype)
            ours = lambda: torch.ops.pybert.gemm_bias_act(a, w, bias, ACTIVATIONS[act])
            peer = (lambda: F.relu(F.linear(a, w, bias))) if act == "relu" else \
                (lambda: F.linear(a, w, bias))
            err = rel_l2(ours(), peer())
            t_ours, t_peer = time_ms(ours), time_ms(peer)
            tflops = 2 * tokens * n * k / (t_ours * 1e-3) / 1e12
            row[f"{tokens}:{label}"] = {"pybert": t_ours, "F.linear": t_peer}
            print(f"  {tokens:>5} x {label:<10} pybert {t_ours * 1e3:7.1f} us ({tflops:5.0f} "
                  f"TFLOP/s)  F.linear {t_peer * 1e3:7.1f} us  ratio {t_ours / t_peer:.2f}  "
                  f"rel diff {err:.1e}")
    results["gemm"] = row


def kernel_family(name: str) -> str:
    lowered = name.lower()
    for family, keys in (("attention", ("flash", "attention", "fmha", "attn")),
                         ("gemm", ("gemm", "sm90", "cutlass", "cublas", "xmma", "nvjet")),
                         ("layernorm", ("layernorm", "layer_norm")),
                         ("memcpy HtoD", ("memcpy htod",)), ("memcpy DtoH", ("memcpy dtoh",)),
                         ("memcpy DtoD", ("memcpy dtod",)), ("memset", ("memset",)),
                         ("embedding", ("embed",))):
        if any(key in lowered for key in keys):
            return family
    return "other"


def bench_forward(dtype, results, workload="64x128"):
    import pybert
    from pybert.config import BertConfig

    batch, seq_len, ragged = WORKLOADS[workload]
    config = BertConfig(vocab_size=30522, num_hiddens=HIDDEN, num_heads=HEADS, num_layers=12,
                        ffn_num_hiddens=FFN, max_len=512)
    torch.manual_seed(0)
    net = config.build_model().eval()
    # Without graphs, so the profile sees each kernel and each copy of the call.
    engine = pybert.Engine.from_model(net, device="cuda", dtype=dtype, cuda_graphs=False)
    tokens = torch.randint(0, 30522, (batch, seq_len))
    lengths = torch.tensor(lengths_of(batch, seq_len, ragged))
    segments = torch.zeros_like(tokens)
    for _ in range(3):
        engine.encode(tokens, segments, lengths)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.encode(tokens, segments, lengths)
        torch.cuda.synchronize()
    families: dict = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        family = kernel_family(event.name)
        total, count = families.get(family, (0.0, 0))
        families[family] = (total + event.device_time, count + 1)
    wall = time_ms(lambda: engine.encode(tokens, segments, lengths), inner=1, repeats=20)
    print(f"\n== one engine.encode forward, {workload} ({dtype}): {wall:.3f} ms wall (events)")
    for family, (us, count) in sorted(families.items(), key=lambda kv: -kv[1][0]):
        print(f"  {family:<12} {us / 1e3:7.3f} ms in {count:4d} launches/copies")
    results["forward"] = {"workload": workload, "wall_ms": wall,
                          "families": {k: {"ms": v[0] / 1e3, "count": v[1]}
                                       for k, v in families.items()}}
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=14,
                                    max_name_column_width=60))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="attention,layernorm,gemm,forward")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU", file=sys.stderr)
        return 2
    import pybert.engine.ops  # noqa: F401  (registers torch.ops.pybert)
    from pybert.bench.gpu import write_json

    dtype = getattr(torch, args.dtype)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "dtype": args.dtype}
    print(f"{results['device']}, torch {results['torch']}")
    sections = {"attention": bench_attention, "layernorm": bench_layernorm, "gemm": bench_gemm,
                "forward": bench_forward}
    with torch.inference_mode():
        for section in args.sections.split(","):
            sections[section](dtype, results)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
