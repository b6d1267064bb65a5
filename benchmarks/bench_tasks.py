"""What a task head costs over the embedding call on the same tokens, one run: a RoBERTa of
BERT-base width (random weights, built by transformers; 768 hidden, 12 heads, FFN 3072, a
vocabulary of 30,000) as a cross-encoder, on (query, passage) pairs of WikiText-2 or the
built-in corpus.

    PYTHONPATH=. python benchmarks/bench_tasks.py [--layers 4] [--pairs 64] [--repeats 7]

Prints the median time of `encode` (pooled vectors), `classify` and `rerank` (the classifier
on the first token), and `encode_sparse` (SPLADE over the MLM logits of every token, on a
masked-LM model of the same shape), each as a ratio to `encode`.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(folder: Path, task: str, layers: int):
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    from pybert.train.data import builtin_corpus

    texts = [" ".join(s) for p in builtin_corpus() for s in p][:20000]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=30000,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = transformers.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), num_hidden_layers=layers,
                                        max_position_embeddings=514, type_vocab_size=1,
                                        num_labels=1, pad_token_id=tokenizer.pad_token_id)
    cls = transformers.RobertaForSequenceClassification if task == "classify" else \
        transformers.RobertaForMaskedLM
    cls(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return texts


def median_ms(fn, repeats: int) -> float:
    fn()  # warm: the CPU plan, the workspace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    import pybert

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        texts = build(Path(tmp) / "ce", "classify", args.layers)
        build(Path(tmp) / "mlm", "mlm", args.layers)
        query = texts[0]
        pairs = [(query, texts[i + 1]) for i in range(args.pairs)]  # what rerank scores
        cross = pybert.TextModel.load(Path(tmp) / "ce")
        splade = pybert.TextModel.load(Path(tmp) / "mlm")
        tokens = sum(len(ids) for ids, _ in cross.tokenizer.encode_all(pairs))
        times = {
            "encode": median_ms(lambda: cross.encode(pairs), args.repeats),
            "classify": median_ms(lambda: cross.classify(pairs), args.repeats),
            "rerank": median_ms(lambda: cross.rerank(query, [b for _, b in pairs]),
                                args.repeats),
            "encode (MLM model)": median_ms(lambda: splade.encode(pairs), args.repeats),
            "encode_sparse": median_ms(lambda: splade.encode_sparse(pairs), args.repeats),
        }
    ratios = {"classify / encode": times["classify"] / times["encode"],
              "rerank / encode": times["rerank"] / times["encode"],
              "encode_sparse / encode": times["encode_sparse"] / times["encode (MLM model)"]}
    print(json.dumps({"pairs": args.pairs, "tokens": tokens, "layers": args.layers,
                      "threads": torch.get_num_threads(), "median_ms": times,
                      "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
