"""Texts in, vectors out, end to end (tokenisation included): pybert against Hugging Face
transformers (fast tokenizer + BertModel with SDPA, sorted into length buckets as a careful
user would) and SentenceTransformer.encode, on the same texts and the same model.

    python benchmarks/bench_texts.py [--texts FILE] [--count 4000] [--device cuda]

The model is a BERT-base-shaped Hugging Face checkpoint with random weights and a WordPiece
vocabulary built here (no downloads), saved as safetensors; every contender loads that same
directory. Texts: one per line from --texts (e.g. a slice of WikiText-2), else sentences of
Python's documentation topics.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def load_texts(path: str | None, count: int) -> list[str]:
    if path:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
        texts = [s.strip() for ln in lines for s in ln.split(" . ") if len(s.split()) >= 3]
    else:
        from pybert.train.data import builtin_corpus

        texts = [" ".join(s) for p in builtin_corpus() for s in p if len(s) >= 3]
    if not texts:
        raise SystemExit("no texts")
    return (texts * (count // len(texts) + 1))[:count]


def build_checkpoint(folder: Path, texts: list[str], layers: int, hidden: int, heads: int,
                     ffn: int, vocab_size: int = 30522) -> None:
    import transformers

    counts = Counter(w for t in texts for w in t.lower().split())
    chars = sorted({c for w in counts for c in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    tokens += [w for w, _ in counts.most_common()]
    tokens = list(dict.fromkeys(tokens))[:vocab_size]
    tokens += [f"[unused{i}]" for i in range(vocab_size - len(tokens))]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden,
                                     num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=ffn, max_position_embeddings=512,
                                     hidden_act="gelu", attn_implementation="sdpa")
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_run(fn, device, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (and the result to compare)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 on cuda, else float32")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--batch-size", type=int, default=128, help="for the peers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import transformers

    import pybert

    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    texts = load_texts(args.texts, args.count)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_checkpoint(folder, texts, args.layers, args.hidden, args.heads, args.ffn)
        engine = pybert.load(folder, device=args.device, dtype=dtype)
        tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
        model = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa")
        model = model.to(args.device, dtype).eval()

        def ours():
            return pybert.encode(engine, texts, pooling="cls")

        def hugging_face():
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.zeros((len(texts), args.hidden), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(order), args.batch_size):
                    idx = order[start:start + args.batch_size]
                    batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=512, return_tensors="pt").to(args.device)
                    out[idx] = model(**batch).last_hidden_state[:, 0].float().cpu().numpy()
            return out

        contenders = {"pybert": ours, "transformers (sorted buckets)": hugging_face}
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(folder), device=args.device)
            if dtype != torch.float32:
                st = st.to(dtype)
            contenders["SentenceTransformer.encode"] = lambda: st.encode(
                texts, batch_size=args.batch_size, convert_to_numpy=True)
        except ImportError:
            print("(sentence-transformers not installed: its line is skipped)")
        results = {}
        for name, fn in contenders.items():
            seconds, result = time_run(fn, args.device, args.repeats)
            rows[name] = len(texts) / seconds
            results[name] = np.asarray(result, dtype=np.float32)
    reference = results["transformers (sorted buckets)"]
    print(f"{len(texts)} texts, {args.device} {str(dtype).replace('torch.', '')}, "
          f"{args.layers} layers x {args.hidden}")
    for name, rate in sorted(rows.items(), key=lambda kv: -kv[1]):
        err = np.linalg.norm(results[name] - reference) / np.linalg.norm(reference)
        print(f"  {name:<30} {rate:9.1f} sentences/s   x{rate / rows['pybert']:.2f} of pybert"
              f"   rel. diff to transformers {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
