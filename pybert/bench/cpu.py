"""The CPU benchmark: the engine and its peers in one run, on the same inputs, as ratios.

Workloads (valid lengths uniform in [S/2, S], the longest S, unless said): the book's
pretraining config (H 128, 2 layers) at 512 x 64, and BERT-base (12 layers) at ragged 8 x
U[64, 128], 1 x 128 and short 32 x U[8, 48] (the typical embedding request). Contenders, all
on the same Hugging Face checkpoint (random weights, saved once) except the d2l model:

- d2l eager: pybert's eager d2l BERTModel of the same sizes (inference mode)
- HF SDPA: transformers' BertModel with SDPA attention and an attention mask
- nn.TransformerEncoder: PyTorch's fused fast path (nested tensors for the padding) over the
  same sizes, weights of its own
- torch.compile (freezing): that BertModel compiled by inductor with weight freezing
- ORT fp32 / ORT int8: the BertModel exported to ONNX and run by ONNX Runtime with all graph
  optimisations; int8 through ``onnxruntime.quantization.quantize_dynamic`` (its defaults)
- OpenVINO fp32 / int8: the same ONNX export compiled by OpenVINO for the CPU (inference
  precision pinned to f32: on a CPU with bf16 instructions it would take bf16); int8 through
  NNCF's post-training quantisation (``ModelType.TRANSFORMER``), calibrated on the example
- CT2 fp32 / CT2 int8: CTranslate2's encoder converted from the directory by its Transformers
  converter, ``compute_type`` float32 / int8, on each row's real tokens (its ragged form)
- pybert fp32 / bf16 / int8: ``pybert.load`` of the same directory (bf16 only where the CPU
  has bf16 instructions; int8 is ``quantize="int8"``)

Every contender runs with the same number of intra-op threads (torch.set_num_threads, ORT's
intra_op_num_threads with its inter-op pool at 1, OpenVINO's INFERENCE_NUM_THREADS,
CTranslate2's intra_threads with inter_threads 1), timed in rounds, in order and in reverse
(``time_interleaved``), so that a noisy spell of a shared machine costs each alike; each ratio
is the median of its rounds' ratios.
Peers whose package is not installed are skipped and said so.
"""

from __future__ import annotations

import dataclasses
import json
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
           "median_seconds", "round_ratios", "run_cpu_benchmark",
           "time_interleaved", "wikitext_sentences"]


@dataclasses.dataclass(frozen=True)
class CpuWorkload:
    name: str
    model: str  # a key of _HF_SHAPES
    batch: int
    seq_len: int          # the longest sequence (the first one has it)
    min_len: int = 0      # the others' lengths are uniform in [min_len, seq_len] (0: seq_len / 2)


# Hugging Face BertConfig sizes of the two models.
_HF_SHAPES = {
    "book": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, vocab_size=20256, hidden_act="relu"),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, vocab_size=30522, hidden_act="gelu"),
}

CPU_WORKLOADS = (
    CpuWorkload("book config (H 128, 2 layers), 512 x 64", "book", 512, 64),
    CpuWorkload("BERT-base, ragged 8 x U[64, 128]", "bert-base", 8, 128),
    CpuWorkload("BERT-base, 1 x 128", "bert-base", 1, 128),
    # The typical embedding request: a few dozen short texts.
    CpuWorkload("BERT-base, short 32 x U[8, 48]", "bert-base", 32, 48, min_len=8),
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
    lengths = torch.randint(workload.min_len or max(1, seq_len // 2), seq_len + 1, (batch,),
                            generator=g)
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
    import onnx  # noqa: F401  (torch's exporter needs it: an ImportError here skips the peers)

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


def _ct2_runners(folder: Path, threads: int, example, expected: torch.Tensor) -> dict:
    """CTranslate2's encoder in float32 and int8 (its documented path: the Transformers
    converter, then ``Encoder(compute_type=...)``), on each row's real tokens, checked once
    against the Hugging Face model."""
    import ctranslate2
    import numpy as np

    config = json.loads((folder / "config.json").read_text())
    # The converter (4.x) reads an attribute current transformers no longer writes.
    config.setdefault("position_embedding_type", "absolute")
    source = folder / "ct2-source"
    source.mkdir(exist_ok=True)
    (source / "config.json").write_text(json.dumps(config))
    for path in folder.glob("*.safetensors"):
        (source / path.name).write_bytes(path.read_bytes())
    converted = folder / "ct2"
    if not converted.exists():
        ctranslate2.converters.TransformersConverter(str(source)).convert(str(converted))
    tokens, segments, lengths, mask = example
    ids = [row[:n].tolist() for row, n in zip(tokens, lengths.tolist())]
    types = [row[:n].tolist() for row, n in zip(segments, lengths.tolist())]
    runs = {}
    for precision, bound in (("float32", 1e-4), ("int8", 5e-2)):
        encoder = ctranslate2.Encoder(str(converted), device="cpu", compute_type=precision,
                                      intra_threads=threads, inter_threads=1)
        hidden = np.array(encoder.forward_batch(ids, token_type_ids=types).last_hidden_state)
        _check_close(f"CTranslate2 {precision}", torch.from_numpy(hidden[:, :tokens.shape[1]]),
                     expected[:, :hidden.shape[1]], mask[:, :hidden.shape[1]], bound)
        runs[f"CT2 {'fp32' if precision == 'float32' else precision}"] = \
            lambda encoder=encoder: encoder.forward_batch(ids, token_type_ids=types)
    return runs


def _openvino_runners(onnx_path: Path, threads: int, example, expected: torch.Tensor) -> dict:
    """OpenVINO on the exported ONNX model: float32 (its inference precision pinned to f32:
    on a CPU with bf16 instructions it would take bf16 by default), and int8 through NNCF's
    post-training quantisation (``ModelType.TRANSFORMER``, calibrated on the example) where
    nncf is installed."""
    import openvino as ov

    core = ov.Core()
    tokens, segments, _, mask = example
    feed = {"input_ids": tokens.numpy(), "attention_mask": mask.numpy(),
            "token_type_ids": segments.numpy()}
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY"}
    models = {"OpenVINO fp32": (core.read_model(str(onnx_path)), 1e-4)}
    try:
        import nncf
    except ImportError:
        nncf = None
    if nncf is not None:
        calibration = nncf.Dataset([feed] * 4)
        models["OpenVINO int8"] = (nncf.quantize(core.read_model(str(onnx_path)), calibration,
                                                 model_type=nncf.ModelType.TRANSFORMER,
                                                 subset_size=4), 1e-1)
    runs = {}
    for label, (model, bound) in models.items():
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        output = torch.from_numpy(request.infer(feed)[compiled.output(0)].copy())
        _check_close(label, output, expected, mask, bound)
        runs[label] = lambda request=request: request.infer(feed)
    return runs


def _library_peers(folder: Path, threads: int, example, expected, skipped: list[str]) -> dict:
    """The inference libraries that are installed: ONNX Runtime, OpenVINO (both on the ONNX
    export) and CTranslate2, each in fp32 and int8."""
    runs = {}
    try:
        fp32, int8 = _export_onnx(folder, example)
        runs["ORT fp32"] = _ort_runner(fp32, threads, example, expected, 1e-4)
        if int8 is not None:
            runs["ORT int8"] = _ort_runner(int8, threads, example, expected, 0.5)
    except ImportError as err:
        skipped.append(f"ONNX Runtime ({err.name} is not installed)")
    else:
        try:
            runs.update(_openvino_runners(fp32, threads, example, expected))
        except ImportError as err:
            skipped.append(f"OpenVINO ({err.name} is not installed)")
    try:
        runs.update(_ct2_runners(folder, threads, example, expected))
    except ImportError as err:
        skipped.append(f"CTranslate2 ({err.name} is not installed)")
    return runs


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
        runs.update(_library_peers(folder, threads, example, expected, skipped))
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
            peers = [k for k in ms if not k.startswith("pybert")]
            best_fp32 = min((k for k in peers if "int8" not in k), key=ms.get)
            int8_peers = [k for k in peers if "int8" in k]
            best_int8 = min(int8_peers, key=ms.get) if int8_peers else None
            row["best fp32 peer"], row["best int8 peer"] = best_fp32, best_int8
            ratios = {"pybert fp32 / ORT fp32": ("pybert fp32", "ORT fp32"),
                      "pybert int8 / ORT int8": ("pybert int8", "ORT int8"),
                      "pybert fp32 / best fp32 peer": ("pybert fp32", best_fp32),
                      "pybert bf16 / best fp32 peer": ("pybert bf16", best_fp32),
                      "pybert int8 / best int8 peer": ("pybert int8", best_int8)}
            print(f"\n{workload.name} (best fp32 peer: {best_fp32}; int8: {best_int8})")
            for label, value in ms.items():
                print(f"  {label:<26} {value:9.2f} ms")
            for name, (ours, theirs) in ratios.items():
                if ours not in ms or theirs not in ms or theirs is None:
                    continue
                # The median of the rounds' ratios: each compares the two in the same spell.
                each = round_ratios(per_round, ours, theirs)
                row[name] = statistics.median(each)
                row[f"{name} (rounds)"] = each
                spread = f"   ({min(each):.2f}-{max(each):.2f} over {len(each)} rounds)" \
                    if len(each) > 1 else ""
                print(f"  {name:<50} {row[name]:.2f}{spread}")
            rows.append(row)
    for note in dict.fromkeys(skipped):
        print(f"skipped: {note}")
    return rows


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
