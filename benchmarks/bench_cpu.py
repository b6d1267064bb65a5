"""CPU benchmark: pybert (fp32, bf16, int8) against d2l eager, Hugging Face (SDPA),
torch.compile with freezing and ONNX Runtime (fp32 and dynamic int8), same inputs, same
threads. See pybert/bench.py for the workloads and contenders.

    python benchmarks/bench_cpu.py [--repeats 10] [--threads N] [--no-compile] [--no-ort]
"""

import argparse

from pybert.bench import run_cpu_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for every contender (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    args = parser.parse_args()
    run_cpu_benchmark(repeats=args.repeats, compile_peer=not args.no_compile,
                      ort_peer=not args.no_ort, threads=args.threads)
