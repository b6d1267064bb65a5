"""The CPU benchmark: the engine and its peers in one run, on the same inputs, as ratios.

Workloads (valid lengths uniform in [S/2, S], the longest S): the book's pretraining config
(H 128, 2 layers) at 512 x 64, and BERT-base (12 layers) at 8 x 128 and 1 x 128. Contenders,
all on the same Hugging Face checkpoint (random weights, saved once) except the d2l model:

- d2l eager: pybert's eager d2l BERTModel of the same sizes (inference mode)
- HF SDPA: transformers' BertModel with SDPA attention and an attention mask
- nn.TransformerEncoder: PyTorch's fused fast path (nested tensors for the padding) over the
  same sizes, weights of its own
- torch.compile (freezing): that BertModel compiled by inductor with weight freezing
- ORT fp32 / ORT int8: the BertModel exported to ONNX and run by ONNX Runtime with all graph
  optimisations; int8 through ``onnxruntime.quantization.quantize_dynamic`` (its defaults)
- pybert fp32 / bf16 / int8: ``pybert.load`` of the same directory (bf16 only where the CPU
  has bf16 instructions; int8 is ``quantize="int8"``)

Every contender runs with the same number of intra-op threads (torch.set_num_threads and ORT's
intra_op_num_threads; ORT's inter-op pool at 1), timed in rounds, in order and in reverse
(``time_interleaved``), so that a noisy spell of a shared machine costs each alike; each ratio
is the median of its rounds' ratios.
Peers whose package is not installed are skipped and said so.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..api import load
from ..config import BertConfig
from ..engine.cpu_plan import ALL_ROWS
from ..text import TextModel

__all__ = ["BENCHMARK_ROUNDS", "CPU_WORKLOADS", "CpuWorkload", "embedding_agreement",
           "int8_accuracy",
           "median_seconds", "round_ratios", "run_cpu_benchmark", "run_cpu_texts_benchmark",
           "time_interleaved", "wikitext_sentences"]


@dataclasses.dataclass(frozen=True)
class CpuWorkload:
    name: str
    model: str  # a key of _HF_SHAPES
    batch: int
    seq_len: int


# Hugging Face BertConfig sizes of the two models.
_HF_SHAPES = {
    "book": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, vocab_size=20256, hidden_act="relu"),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, vocab_size=30522, hidden_act="gelu"),
}

CPU_WORKLOADS = (
    CpuWorkload("book config (H 128, 2 layers), 512 x 64", "book", 512, 64),
    CpuWorkload("BERT-base, 8 x 128", "bert-base", 8, 128),
    CpuWorkload("BERT-base, 1 x 128", "bert-base", 1, 128),
)


BENCHMARK_ROUNDS = 4  # run_cpu_benchmark's (bench_cpu.py's and `pybert bench`'s) rounds


def time_interleaved(runs: dict, repeats: int, warmup: int = 2, rounds: int = 2) -> dict:
    """Seconds of each of ``runs`` (label -> fn): per label, the median call of each round
    (``repeats`` calls in all, in ``rounds`` rounds, no more rounds than calls). A round times
    every contender in turn, a block of calls each after ``warmup`` untimed ones, in order, the
    next round in reverse. Blocks, because thread pools spin a while after their work (ONNX
    Runtime's, OpenMP's) and would slow a contender that follows call by call; rounds in
    alternating order, because a shared machine drifts (on a cloud VM one contender's time
    moved by a third within minutes, benchmarks/RESULTS.md): a ratio of two contenders taken
    within a round compares them in the same spell, and its spread over the rounds shows how
    far the machine moved."""
    rounds = max(1, min(rounds, repeats))
    per_round = {label: [] for label in runs}
    for r in range(rounds):
        count = repeats // rounds + (1 if r < repeats % rounds else 0)
        for label in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            fn = runs[label]
            for _ in range(warmup):
                fn()
            calls = []
            for _ in range(count):
                start = time.perf_counter()
                fn()
                calls.append(time.perf_counter() - start)
            per_round[label].append(statistics.median(calls))
    return per_round


def median_seconds(per_round: dict) -> dict:
    """label -> the median of its rounds (time_interleaved's result as one number each)."""
    return {label: statistics.median(values) for label, values in per_round.items()}


def round_ratios(per_round: dict, ours: str, theirs: str) -> list[float]:
    """ours / theirs in each round of time_interleaved's result."""
    return [a / b for a, b in zip(per_round[ours], per_round[theirs])]


def _inputs(workload: CpuWorkload, vocab_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch, seq_len = workload.batch, workload.seq_len
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    tokens = torch.randint(5, vocab_size, (batch, seq_len), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    return tokens * mask, torch.zeros_like(tokens), lengths, mask


def _save_hf_model(folder: Path, model: str):
    import transformers

    config = transformers.BertConfig(**_HF_SHAPES[model], max_position_embeddings=512)
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).eval().save_pretrained(folder)


def _hf_model(folder: Path):
    import transformers

    return transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()


class _LastHiddenState(torch.nn.Module):
    """The BertModel as a function of tensors (what export and compile want)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _export_onnx(folder: Path, example) -> tuple[Path, Path | None]:
    """model.onnx (fp32) and model-int8.onnx (quantize_dynamic's defaults, None if the
    quantiser is missing) in folder."""
    fp32 = folder / "model.onnx"
    tokens, segments, _, mask = example
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(_LastHiddenState(_hf_model(folder)), (tokens, mask, segments), str(fp32),
                      input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
                      opset_version=17, dynamo=False)
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return fp32, None
    int8 = folder / "model-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


def _ort_runner(path: Path, threads: int, example, expected: torch.Tensor, bound: float):
    """A call of the ONNX Runtime session on the example, checked once against ``expected``
    (the Hugging Face model's encodings) at the real tokens: a benchmark of a wrong export
    would mean nothing."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokens, segments, _, mask = example
    feed = {"input_ids": tokens.numpy(), "attention_mask": mask.numpy(),
            "token_type_ids": segments.numpy()}
    _check_close(f"ONNX Runtime ({path.name})", torch.from_numpy(session.run(None, feed)[0]),
                 expected, mask, bound)
    return lambda: session.run(None, feed)


def _check_close(label: str, actual: torch.Tensor, expected: torch.Tensor, mask, bound: float):
    real = mask.bool()
    error = float((actual[real].double() - expected[real].double()).norm()
                  / expected[real].double().norm())
    if not error <= bound:
        raise RuntimeError(f"{label} differs from the Hugging Face model by {error:.2e} "
                           f"(relative L2; at most {bound} expected)")


def _cpu_has_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def _transformer_encoder_peer(shape: dict, tokens, mask):
    """The encoder layers as torch.nn.TransformerEncoder runs them on its fast path (eval,
    inference mode, the padding mask turned into nested tensors), after an embedding lookup;
    the same sizes and activation as the workload's model, weights of its own."""
    layer = torch.nn.TransformerEncoderLayer(shape["hidden_size"], shape["num_attention_heads"],
                                             shape["intermediate_size"], dropout=0.0,
                                             activation=shape["hidden_act"], batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, shape["num_hidden_layers"],
                                          enable_nested_tensor=True).eval()
    embedding = torch.nn.Embedding(shape["vocab_size"], shape["hidden_size"])
    padding = mask == 0

    def run():
        with torch.inference_mode():
            encoder(embedding(tokens), src_key_padding_mask=padding)

    return run


def _contenders(workload: CpuWorkload, folder: Path, example, threads: int,
                compile_peer: bool, ort_peer: bool, skipped: list[str]) -> dict:

    tokens, segments, lengths, mask = example
    shape = _HF_SHAPES[workload.model]
    runs = {}

    d2l = BertConfig(shape["vocab_size"], shape["hidden_size"], shape["intermediate_size"],
                     shape["num_attention_heads"], shape["num_hidden_layers"],
                     max_len=512).build_model().eval()

    def d2l_eager():
        with torch.inference_mode():
            d2l(tokens, segments, lengths)

    runs["d2l eager"] = d2l_eager
    hf = _hf_model(folder)

    def hf_eager():
        with torch.inference_mode():
            hf(input_ids=tokens, attention_mask=mask, token_type_ids=segments)

    runs["HF SDPA"] = hf_eager
    runs["nn.TransformerEncoder"] = _transformer_encoder_peer(shape, tokens, mask)
    with torch.inference_mode():
        expected = hf(input_ids=tokens, attention_mask=mask,
                      token_type_ids=segments).last_hidden_state
    if compile_peer:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(_LastHiddenState(_hf_model(folder)))

        def hf_compiled():
            with torch.no_grad():
                compiled(tokens, mask, segments)

        runs["torch.compile (freezing)"] = hf_compiled
    if ort_peer:
        try:
            fp32, int8 = _export_onnx(folder, example)
            runs["ORT fp32"] = _ort_runner(fp32, threads, example, expected, 1e-4)
            if int8 is not None:
                runs["ORT int8"] = _ort_runner(int8, threads, example, expected, 0.5)
        except ImportError as err:
            skipped.append(f"ONNX Runtime ({err.name} is not installed)")
    for label, options in (("pybert fp32", {}), ("pybert bf16", {"dtype": torch.bfloat16}),
                           ("pybert int8", {"quantize": "int8"})):
        if label == "pybert bf16" and not _cpu_has_bf16():
            skipped.append("pybert bf16 (this CPU has no bf16 instructions)")
            continue
        start = time.perf_counter()
        engine = load(folder, **options)
        print(f"{label}: loaded in {time.perf_counter() - start:.2f} s; "
              f"{describe_plan(engine.cpu_plan)}")
        bound = {"pybert fp32": 1e-4, "pybert bf16": 3e-2}.get(label, 5e-2)
        _check_close(label, engine.encode(tokens, segments, lengths).float(), expected, mask,
                     bound)
        runs[label] = lambda engine=engine: engine.encode(tokens, segments, lengths)
    return runs


def describe_plan(plan) -> str:
    """A CPU plan in one line: each GEMM shape's paths by row count, the attention's kernel
    and limit."""
    if plan is None:
        return "no CPU plan"
    shapes = "; ".join(
        f"{n}x{k}: " + " ".join(path if limit == ALL_ROWS else f"{path}<={limit}"
                                for limit, path in choice)
        for (n, k), choice in plan.gemm.items())
    return (f"plan {plan.source} ({plan.cpu['model']}, {' '.join(plan.cpu['isa'])}): "
            f"{shapes or ('int8 GEMMs' if plan.dtype == 'int8' else 'default GEMMs')}; "
            + describe_attention(plan))


def describe_attention(plan) -> str:
    kernel = plan.attention_kernel
    if kernel == "flash":
        return "float attention by flash"
    named = f"own ({plan.cpu['kernel_isa']})" if kernel == "own" else kernel
    return f"float attention by {named} up to {plan.attention_max_length} tokens, flash beyond"


def run_cpu_benchmark(workloads=CPU_WORKLOADS, repeats: int = 10, compile_peer: bool = True,
                      ort_peer: bool = True, threads: int | None = None,
                      rounds: int = BENCHMARK_ROUNDS) -> list[dict]:
    """Times every contender on every workload (``repeats`` calls each, in ``rounds`` rounds:
    see time_interleaved); prints a table per workload and returns one dict per workload:
    {"workload", "<contender>_ms", ..., each ratio (the median of its rounds' ratios), and
    "<ratio> (rounds)": the ratio in each round}."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    # Which pybert runs matters: a script run from a checkout imports an installed copy unless
    # the checkout is on the path (PYTHONPATH=. after an in-place build).
    print(f"CPU benchmark: {threads} threads, {repeats} calls per contender, torch "
          f"{torch.__version__}, pybert from {Path(__file__).resolve().parent}")
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
            folder = Path(tmp) / workload.model
            if not folder.exists():
                _save_hf_model(folder, workload.model)
            example = _inputs(workload, _HF_SHAPES[workload.model]["vocab_size"])
            runs = _contenders(workload, folder, example, threads, compile_peer, ort_peer,
                               skipped)
            per_round = time_interleaved(runs, repeats, rounds=rounds)
            ms = {label: seconds * 1e3 for label, seconds in median_seconds(per_round).items()}
            row = {"workload": workload.name, **{f"{k}_ms": v for k, v in ms.items()}}
            peers_fp32 = [k for k in ms if not k.startswith("pybert") and k != "ORT int8"]
            best_peer = min(peers_fp32, key=ms.get)
            ratios = {"pybert fp32 / ORT fp32": ("pybert fp32", "ORT fp32"),
                      "pybert bf16 / ORT fp32": ("pybert bf16", "ORT fp32"),
                      "pybert int8 / ORT int8": ("pybert int8", "ORT int8"),
                      "pybert fp32 / best fp32 peer": ("pybert fp32", best_peer)}
            print(f"\n{workload.name}")
            for label, value in ms.items():
                print(f"  {label:<26} {value:9.2f} ms")
            for name, (ours, theirs) in ratios.items():
                if ours not in ms or theirs not in ms:
                    continue
                # The median of the rounds' ratios: each compares the two in the same spell.
                each = round_ratios(per_round, ours, theirs)
                row[name] = statistics.median(each)
                row[f"{name} (rounds)"] = each
                spread = f"   ({min(each):.2f}-{max(each):.2f} over {len(each)} rounds)" \
                    if len(each) > 1 else ""
                print(f"  {name:<30} {row[name]:.2f}{spread}")
            rows.append(row)
    for note in dict.fromkeys(skipped):
        print(f"skipped: {note}")
    return rows


def _mean_pooled(hidden, mask):
    """Mean of the real tokens' vectors, L2-normalised (all-MiniLM-L6-v2's pooling)."""
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _ort_text_runners(model_path: Path, folder: Path, tokenizer, texts: list[str],
                      batch_size: int, threads: int) -> tuple[dict, dict]:
    """({label: encode all texts}, {label: error bound}) for ONNX Runtime fp32 and int8 on the
    exported model, batches of ``batch_size`` texts sorted by length; empty without ORT."""
    import numpy as np
    import transformers

    try:
        import onnxruntime as ort
    except ImportError as err:
        print(f"skipped: ONNX Runtime ({err.name} is not installed)")
        return {}, {}
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    sample = tokenizer(texts[:2], padding=True, return_tensors="pt")
    example = (sample["input_ids"], sample["token_type_ids"], None, sample["attention_mask"])
    model = transformers.BertModel.from_pretrained(model_path).eval()
    model.save_pretrained(folder)
    fp32, int8 = _export_onnx(folder, example)
    runs, bounds = {}, {}
    for label, path, bound in (("ORT fp32", fp32, 1e-4), ("ORT int8", int8, 0.5)):
        if path is None:
            continue
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def ort_encode(session=session):
            out = np.zeros((len(texts), model.config.hidden_size), np.float32)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                  max_length=512, return_tensors="np")
                hidden = session.run(None, {"input_ids": batch["input_ids"],
                                            "attention_mask": batch["attention_mask"],
                                            "token_type_ids": batch["token_type_ids"]})[0]
                out[idx] = _mean_pooled(hidden, batch["attention_mask"])
            return out

        runs[label], bounds[label] = ort_encode, bound
    return runs, bounds


def _check_against_first(runs: dict, bounds: dict) -> None:
    """Every contender's vectors within its bound of the first contender's."""
    import numpy as np

    reference = None
    for label, fn in runs.items():
        vectors = np.asarray(fn(), dtype=np.float32)
        if reference is None:
            reference = vectors
        error = float(np.linalg.norm(vectors - reference) / np.linalg.norm(reference))
        if not error <= bounds[label] + 1e-6:
            raise RuntimeError(f"{label}'s vectors differ from the first contender's by "
                               f"{error:.2e}")


def run_cpu_texts_benchmark(model_path, texts: list[str], repeats: int = 3,
                            batch_size: int = 32, threads: int | None = None) -> dict:
    """Texts in, vectors out on a sentence-transformers checkpoint (mean pooling, normalised,
    e.g. all-MiniLM-L6-v2), tokenisation included: sentence-transformers' encode, ONNX
    Runtime fp32 and int8 (the model exported, the checkpoint's fast tokenizer, batches of
    ``batch_size`` texts sorted by length, as a careful user would write it) and pybert.encode
    in fp32, bf16 and int8. Returns {contender: sentences per second}; each contender's
    vectors are checked against sentence-transformers' first."""
    import transformers

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    model_path = Path(model_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    runs, bounds = {}, {}
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model_path), device="cpu")
        runs["sentence-transformers"] = lambda: st.encode(texts, batch_size=batch_size,
                                                          convert_to_numpy=True)
        bounds["sentence-transformers"] = 0.0
    except ImportError:
        print("skipped: sentence-transformers (not installed)")
    with tempfile.TemporaryDirectory() as tmp:
        ort_runs, ort_bounds = _ort_text_runners(model_path, Path(tmp), tokenizer, texts,
                                                 batch_size, threads)
        runs.update(ort_runs)
        bounds.update(ort_bounds)
        for label, options, bound in (("pybert fp32", {}, 1e-4),
                                      ("pybert bf16", {"dtype": torch.bfloat16}, 3e-2),
                                      ("pybert int8", {"quantize": "int8"}, 0.15)):
            if label == "pybert bf16" and not _cpu_has_bf16():
                continue
            text_model = TextModel.load(model_path, **options)
            runs[label] = lambda text_model=text_model: text_model.encode(texts)
            bounds[label] = bound
        _check_against_first(runs, bounds)
        seconds = median_seconds(time_interleaved(runs, repeats, warmup=0))
    rates = {label: len(texts) / value for label, value in seconds.items()}
    print(f"\ntexts in, vectors out: {len(texts)} texts, {model_path.name}, {threads} threads")
    for label, rate in rates.items():
        print(f"  {label:<26} {rate:9.1f} sentences/s")
    for ours, theirs in (("pybert fp32", "ORT fp32"), ("pybert int8", "ORT int8"),
                         ("pybert bf16", "ORT fp32"),
                         ("pybert fp32", "sentence-transformers")):
        if ours in rates and theirs in rates:
            print(f"  {ours} time / {theirs} time   {rates[theirs] / rates[ours]:.2f}")
    return rates


def wikitext_sentences(path, count: int, min_words: int = 5) -> list[str]:
    """The first ``count`` sentences of at least ``min_words`` words of a WikiText file (lines
    split at " . ", headings skipped)."""
    sentences = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in line.split(" . "):
            if len(sentence.split()) >= min_words:
                sentences.append(sentence.strip() + " .")
                if len(sentences) == count:
                    return sentences
    return sentences


def int8_accuracy(model_path, sentences: list[str], queries: list[str], top: int = 5) -> dict:
    """How close ``quantize="int8"`` stays to float32 on a sentence-embedding checkpoint
    (see :func:`embedding_agreement`)."""
    fp32 = TextModel.load(model_path)
    int8 = TextModel.load(model_path, quantize="int8")
    return embedding_agreement(fp32.encode, int8.encode, sentences, queries, top)


def embedding_agreement(encode_reference, encode_candidate, sentences: list[str],
                        queries: list[str], top: int = 5) -> dict:
    """How close a candidate precision's embeddings (``encode_candidate``: texts to an (N, D)
    array) stay to the reference's: the cosine similarity of each sentence's two embeddings
    (min and mean), and two retrievals over ``sentences``, each query ranking all of them:
    ``queries`` (unrelated sentences, so the top results are near-ties), and the first half of
    each of the first len(queries) sentences (whose own sentence should come first). For each:
    the share of queries whose best result is the same in both, and whose top ``top`` come in
    the same order."""
    import numpy as np

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    docs_ref, docs_new = unit(encode_reference(sentences)), unit(encode_candidate(sentences))
    cosine = (docs_ref * docs_new).sum(axis=1)
    result = {"sentences": len(sentences), "queries": len(queries),
              "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
    halves = [" ".join(s.split()[:max(2, len(s.split()) // 2)])
              for s in sentences[:len(queries)]]
    for name, texts in (("unrelated", queries), ("half-sentence", halves)):
        ranks_ref = np.argsort(-(unit(encode_reference(texts)) @ docs_ref.T), axis=1)[:, :top]
        ranks_new = np.argsort(-(unit(encode_candidate(texts)) @ docs_new.T), axis=1)[:, :top]
        result[f"{name}: same top1"] = float((ranks_ref[:, 0] == ranks_new[:, 0]).mean())
        result[f"{name}: same top{top} order"] = float(
            (ranks_ref == ranks_new).all(axis=1).mean())
    return result
