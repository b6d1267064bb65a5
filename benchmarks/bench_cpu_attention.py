"""The CPU's float attention kernels against each other, alone and inside a forward.

    python benchmarks/bench_cpu_attention.py [--repeats 12] [--rounds 4] [--threads N]

kernels  torch.ops.pybert.attention_varlen with kernel="mkl" (MKL's batched sgemm, where this
         torch has MKL), "own" (pybert's tiled kernel, in the ISA it chose: avx512, avx2 or
         baseline) and "torch" (torch's flash attention), on random packed QKV rows of the
         book's and BERT-base's shapes; each output checked against the first before timing.
forward  BERT-base engines (random weights, 12 layers) that differ only in the attention
         kernel of their plan, on the bench_cpu.py workloads: what the kernel's choice is
         worth in a whole forward.

Times are medians per round of alternating calls (pybert.bench.cpu.time_interleaved); each
ratio is the median of its rounds' ratios, printed with their range.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import pybert
from pybert import _C
from pybert.bench.cpu import BENCHMARK_ROUNDS, median_seconds, round_ratios, time_interleaved
from pybert.config import BertConfig



def uniform_lengths(low: int, high: int, count: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (count,), generator=g).tolist()


# (name, heads, head_dim, sequence lengths)
KERNEL_WORKLOADS = [
    ("book (2 x 64), 512 x U[32, 64]", 2, 64, uniform_lengths(32, 64, 512, seed=0)),
    ("BERT-base (12 x 64), 1 x 128", 12, 64, [128]),
    ("BERT-base, 8 x U[64, 128]", 12, 64, uniform_lengths(64, 128, 8, seed=1)),
    ("BERT-base, 4 x 512", 12, 64, [512] * 4),
]
FORWARD_WORKLOADS = [("BERT-base, 1 x 128", 1, 128), ("BERT-base, 8 x U[64, 128]", 8, 128)]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def kernels() -> list[str]:
    have_mkl = _C.cpu_attention_path_available(_C.CPU_ATTENTION_PATHS["mkl"])
    return (["mkl"] if have_mkl else []) + ["own", "torch"]


def report(name: str, per_round: dict, pairs) -> None:
    ms = {label: seconds * 1e3 for label, seconds in median_seconds(per_round).items()}
    print(f"\n{name}")
    for label, value in ms.items():
        print(f"  {label:>12}: {value:9.3f} ms")
    for ours, theirs in pairs:
        if ours in per_round and theirs in per_round:
            ratios = sorted(round_ratios(per_round, ours, theirs))
            middle = ratios[len(ratios) // 2] if len(ratios) % 2 else \
                (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
            print(f"  {ours} / {theirs}: {middle:.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})")


def bench_kernels(repeats: int, rounds: int) -> None:
    for name, heads, head_dim, lengths in KERNEL_WORKLOADS:
        lengths_t = torch.tensor(lengths)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths_t, 0)
        qkv = torch.randn(int(cu[-1]), 3 * heads * head_dim)
        runs = {k: (lambda k=k: torch.ops.pybert.attention_varlen(qkv, cu, max(lengths), heads,
                                                                  kernel=k))
                for k in kernels()}
        first = None
        for label, run in runs.items():
            out = run()
            first = out if first is None else first
            assert rel_l2(out, first) <= 1e-5, f"{label} disagrees with the first kernel"
        report(name, time_interleaved(runs, repeats, rounds=rounds),
               [("own", "mkl"), ("own", "torch"), ("mkl", "torch")])


def bench_forward(repeats: int, rounds: int) -> None:
    config = BertConfig(vocab_size=30522, num_hiddens=768, ffn_num_hiddens=3072, num_heads=12,
                        num_layers=12, max_len=512)
    torch.manual_seed(0)
    net = config.build_model().eval()
    measured = pybert.Engine.from_model(net).cpu_plan
    print(f"\nthe measured plan's attention: {measured.summary()['attention']} "
          f"(own kernel in {measured.cpu['kernel_isa']})")
    engines = {k: pybert.Engine.from_model(net, cpu_plan=dataclasses.replace(
        measured, attention_kernel=k, attention_max_length=512 if k != "flash" else 0))
               for k in [k for k in kernels() if k != "torch"] + ["flash"]}
    for name, batch, seq_len in FORWARD_WORKLOADS:
        g = torch.Generator().manual_seed(batch)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=g) \
            if batch > 1 else torch.tensor([seq_len])
        tokens = torch.randint(5, config.vocab_size, (batch, seq_len), generator=g)
        segments = torch.zeros_like(tokens)
        runs = {k: (lambda e=e: e.encode(tokens, segments, lengths)) for k, e in engines.items()}
        reference = runs["flash"]()
        for label, run in runs.items():
            assert rel_l2(run(), reference) <= 1e-4, f"{label} disagrees with flash"
        report(f"forward, {name}", time_interleaved(runs, repeats, rounds=rounds),
               [("own", "mkl"), ("own", "flash"), ("mkl", "flash")])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=12, help="timed calls per contender")
    parser.add_argument("--rounds", type=int, default=BENCHMARK_ROUNDS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sections", default="kernels,forward")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"CPU attention: {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"own kernel in {_C.cpu_attention_isa()}")
    sections = args.sections.split(",")
    if "kernels" in sections:
        bench_kernels(args.repeats, args.rounds)
    if "forward" in sections:
        bench_forward(args.repeats, args.rounds)
