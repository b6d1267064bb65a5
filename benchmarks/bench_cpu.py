"""CPU benchmark: pybert.Engine against the eager model and torch.compile, same inputs.

    python benchmarks/bench_cpu.py [--batch 32] [--seq-len 128] [--repeats 10]
"""

import argparse

from pybert.bench import run_cpu_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    args = parser.parse_args()
    run_cpu_benchmark(args.batch, args.seq_len, args.repeats, compile_peer=not args.no_compile)
