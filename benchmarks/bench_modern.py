"""CPU benchmark of a modern encoder: ModernBERT-base's shape (22 layers, hidden 768, 12 heads,
GeGLU 1152, rotary positions, a 128-token local window in two layers of three), random
weights saved once, against transformers' ModernBertModel (SDPA, with its attention mask) and
ONNX Runtime (that model exported, all graph optimisations), same inputs, same threads, timed
interleaved (pybert.bench.cpu.time_interleaved). Every contender's output is checked against
transformers' at the real tokens before it is timed.

Workloads: 8 x 512 ragged (lengths uniform in [256, 512]), 1 x 2,048 and 1 x 8,192.
With --device cuda (bf16): transformers with SDPA against pybert bf16 and fp16, at e.g.
--workloads 32x512,4x8192 (no ONNX Runtime, no int8; CUDA is synchronised around each call).

    python benchmarks/bench_modern.py [--repeats 3] [--threads N] [--no-ort] [--layers 22]
                                      [--workloads 8x512,1x2048,1x8192] [--device cuda]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

import pybert
from pybert.bench.cpu import median_seconds, time_interleaved

SHAPE = dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_attention_heads=12,
             max_position_embeddings=8192, local_attention=128, global_attn_every_n_layers=3,
             pad_token_id=50283, bos_token_id=50281, eos_token_id=50282, cls_token_id=50281,
             sep_token_id=50282)


def inputs(batch, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    tokens = torch.randint(5, 50000, (batch, seq_len), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    return tokens * mask, lengths, mask


def check(label, actual, expected, mask, bound):
    real = mask.bool()
    error = float((actual[real].double() - expected[real].double()).norm()
                  / expected[real].double().norm())
    print(f"  {label}: relative L2 against transformers {error:.2e}")
    if not error <= bound:
        raise RuntimeError(f"{label} differs from transformers by {error:.2e} (bound {bound})")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--no-ort", action="store_true")
    parser.add_argument("--workloads", default="8x512,1x2048,1x8192")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    cuda = args.device == "cuda"
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="pybert-modern-"))
    config = transformers.ModernBertConfig(num_hidden_layers=args.layers, **SHAPE)
    torch.manual_seed(0)
    transformers.ModernBertModel(config).eval().save_pretrained(folder)
    hf = transformers.ModernBertModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    if cuda:
        hf = hf.to("cuda", torch.bfloat16)
        engines = {"pybert bf16": pybert.load(folder, device="cuda", dtype=torch.bfloat16),
                   "pybert fp16": pybert.load(folder, device="cuda", dtype=torch.float16)}
    else:
        engines = {"pybert fp32": pybert.load(folder),
                   "pybert bf16": pybert.load(folder, dtype=torch.bfloat16),
                   "pybert int8": pybert.load(folder, quantize="int8")}
    print(f"ModernBERT-base shape, {args.layers} layers, {threads} threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")
    for workload in args.workloads.split(","):
        batch, seq_len = map(int, workload.split("x"))
        tokens, lengths, mask = inputs(batch, seq_len)
        if cuda:
            tokens, lengths, mask = tokens.cuda(), lengths.cuda(), mask.cuda()
        print(f"{batch} x {seq_len} ({int(lengths.sum())} real tokens)")
        with torch.inference_mode():
            start = time.perf_counter()
            expected = hf(input_ids=tokens, attention_mask=mask).last_hidden_state
            print(f"  reference call {time.perf_counter() - start:.2f} s")
        runs = {}

        def synchronised(fn):
            def call():
                out = fn()
                if cuda:
                    torch.cuda.synchronize()
                return out
            return call

        def hf_call():
            with torch.inference_mode():
                return hf(input_ids=tokens, attention_mask=mask).last_hidden_state
        runs["HF SDPA"] = synchronised(hf_call)
        segments = torch.zeros_like(tokens)
        for label, engine in engines.items():
            bound = {"pybert fp32": 1e-4, "pybert bf16": 3e-2, "pybert int8": 5e-2,
                     "pybert fp16": 3e-2}[label]
            check(label, engine(tokens, segments, lengths)[0].float(), expected.float(), mask,
                  bound)
            runs[label] = synchronised((lambda e: lambda: e(tokens, segments, lengths))(engine))
        if not args.no_ort and not cuda:
            try:
                runs["ORT fp32"] = ort_runner(folder, hf, tokens, mask, threads, expected)
            except Exception as err:  # an export that fails is reported, not fatal
                print(f"  ONNX Runtime skipped: {type(err).__name__}: {str(err)[:200]}")
        seconds = median_seconds(time_interleaved(runs, repeats=args.repeats, warmup=1))
        peers = {k: v for k, v in seconds.items() if not k.startswith("pybert")}
        best = min(peers, key=peers.get)
        for label, value in seconds.items():
            ratio = value / peers[best]
            print(f"  {label:12s} {value * 1e3:10.1f} ms   {ratio:5.2f}x {best}")


class _Hidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def ort_runner(folder, hf, tokens, mask, threads, expected):
    import onnxruntime as ort

    path = folder / f"model-{tokens.shape[1]}.onnx"
    if not path.exists():
        torch.onnx.export(_Hidden(hf), (tokens, mask), str(path),
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "seq"}
                                        for n in ("input_ids", "attention_mask")},
                          opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input_ids": tokens.numpy(), "attention_mask": mask.numpy()}
    check("ORT fp32", torch.from_numpy(session.run(None, feed)[0]), expected, mask, 1e-4)
    return lambda: session.run(None, feed)


if __name__ == "__main__":
    main()
