"""Texts in, vectors out on the CPU, end to end (tokenisation included), with the quality each
contender's precision costs: a sentence-transformers checkpoint (mean pooling, normalised,
e.g. all-MiniLM-L6-v2) through sentence-transformers, ONNX Runtime, OpenVINO and CTranslate2
(fp32 and int8, each through its documented path from the same checkpoint, where installed)
and pybert (fp32, bf16, int8). Speed on real sentences; quality as the Spearman correlation of
cosine similarities with the STS Benchmark's gold scores (test split), so that a speed is only
reported beside the quality it was bought with.

The peers are written as a careful user would: the checkpoint's fast tokenizer, batches of
``batch_size`` texts sorted by length, mean pooling over the real tokens, then L2
normalisation.
"""

from __future__ import annotations

import csv
import gzip
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..text import TextModel

__all__ = ["run_cpu_texts_benchmark", "sts_pairs", "sts_spearman", "text_encoders"]

Encoder = Callable[[list], np.ndarray]  # texts -> (N, D) float32 vectors, normalised


def sts_pairs(path, split: str = "test") -> tuple[list[str], list[str], np.ndarray]:
    """(sentences 1, sentences 2, gold scores) of one split of the STS Benchmark's
    stsbenchmark.tsv.gz."""
    first, second, scores = [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["split"] == split:
                first.append(row["sentence1"])
                second.append(row["sentence2"])
                scores.append(float(row["score"]))
    return first, second, np.array(scores)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values given their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1
    return (first + (counts - 1) / 2)[inverse]


def sts_spearman(encode: Encoder, first: list[str], second: list[str],
                 gold: np.ndarray) -> float:
    """Spearman's rank correlation (x 100) between the cosine of each pair's vectors and the
    gold scores."""
    a, b = encode(first), encode(second)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cosine = (a * b).sum(axis=1)
    return float(np.corrcoef(_ranks(cosine), _ranks(gold))[0, 1] * 100)


def _mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _batched(tokenizer, batch_size: int, run_batch) -> Encoder:
    """An Encoder that tokenises texts in length-sorted batches and pools what ``run_batch``
    (the tokenizer's numpy output -> (B, S, H) hidden states) gives."""
    def encode(texts: list) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=tokenizer.model_max_length, return_tensors="np")
            pooled = _mean_pooled(run_batch(batch), batch["attention_mask"])
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), np.float32)
            out[idx] = pooled
        return out
    return encode


def _onnx_feed(batch) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "token_type_ids": batch["token_type_ids"]}


def _onnx_encoders(onnx_fp32: Path, onnx_int8: Path | None, tokenizer, batch_size: int,
                   threads: int, skipped: list) -> dict:
    """ONNX Runtime (fp32; int8 by its quantize_dynamic) and OpenVINO (fp32 pinned; int8 by
    NNCF's post-training quantisation, calibrated on 300 sentences of the benchmark's own
    kind) on the same export."""
    encoders = {}
    try:
        import onnxruntime as ort
    except ImportError as err:
        skipped.append(f"ONNX Runtime ({err.name} is not installed)")
    else:
        for label, path in (("ORT fp32", onnx_fp32), ("ORT int8", onnx_int8)):
            if path is None:
                continue
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
            encoders[label] = _batched(tokenizer, batch_size, lambda b, s=session:
                                       s.run(None, _onnx_feed(b))[0])
    encoders.update(_openvino_encoders(onnx_fp32, tokenizer, batch_size, threads, skipped))
    return encoders


def _openvino_encoders(onnx_fp32: Path, tokenizer, batch_size: int, threads: int,
                       skipped: list) -> dict:
    try:
        import openvino as ov
    except ImportError as err:
        skipped.append(f"OpenVINO ({err.name} is not installed)")
        return {}
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY"}
    models = {"OpenVINO fp32": core.read_model(str(onnx_fp32))}
    try:
        import nncf
    except ImportError as err:
        skipped.append(f"OpenVINO int8 ({err.name} is not installed)")
    else:
        from ..train.data import builtin_corpus

        calibration = [" ".join(s) for p in builtin_corpus() for s in p if len(s) >= 5][:300]
        feeds = [_onnx_feed(tokenizer(calibration[i:i + 8], padding=True, return_tensors="np"))
                 for i in range(0, len(calibration), 8)]
        models["OpenVINO int8"] = nncf.quantize(core.read_model(str(onnx_fp32)),
                                                nncf.Dataset(feeds),
                                                model_type=nncf.ModelType.TRANSFORMER,
                                                subset_size=len(feeds))
    encoders = {}
    for label, model in models.items():
        compiled = core.compile_model(model, "CPU", config)
        request, output = compiled.create_infer_request(), compiled.output(0)
        encoders[label] = _batched(tokenizer, batch_size, lambda b, r=request, o=output:
                                   r.infer(_onnx_feed(b))[o])
    return encoders


def _ct2_encoders(model_path: Path, folder: Path, tokenizer, batch_size: int, threads: int,
                  skipped: list) -> dict:
    """CTranslate2's encoder, converted from the checkpoint by its Transformers converter,
    in float32 and int8; ragged ids in (its own form), mean pooled over each row's tokens."""
    try:
        import ctranslate2
    except ImportError as err:
        skipped.append(f"CTranslate2 ({err.name} is not installed)")
        return {}
    source = folder / "ct2-source"
    source.mkdir()
    for path in model_path.iterdir():
        if path.is_file():
            (source / path.name).write_bytes(path.read_bytes())
    config = json.loads((source / "config.json").read_text())
    config.setdefault("position_embedding_type", "absolute")  # read by the 4.x converter
    (source / "config.json").write_text(json.dumps(config))
    ctranslate2.converters.TransformersConverter(str(source)).convert(str(folder / "ct2"))
    encoders = {}
    for label, compute in (("CT2 fp32", "float32"), ("CT2 int8", "int8")):
        model = ctranslate2.Encoder(str(folder / "ct2"), device="cpu", compute_type=compute,
                                    intra_threads=threads, inter_threads=1)

        def run_batch(batch, model=model):
            mask = batch["attention_mask"]
            ids = [row[:n].tolist() for row, n in zip(batch["input_ids"], mask.sum(axis=1))]
            hidden = np.array(model.forward_batch(ids).last_hidden_state)
            return hidden[:, :mask.shape[1]]

        encoders[label] = _batched(tokenizer, batch_size, run_batch)
    return encoders


def text_encoders(model_path: Path, folder: Path, batch_size: int, threads: int,
                  skipped: list) -> dict[str, Encoder]:
    """Every installed contender as texts -> normalised vectors, sentence-transformers first
    (the reference)."""
    import transformers

    from .cpu import _cpu_has_bf16, _export_onnx

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    encoders = {}
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        skipped.append("sentence-transformers (not installed)")
    else:
        st = SentenceTransformer(str(model_path), device="cpu")
        encoders["sentence-transformers"] = lambda texts: st.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    sample = tokenizer(["a first text", "and a second one"], padding=True, return_tensors="pt")
    transformers.BertModel.from_pretrained(model_path).eval().save_pretrained(folder / "hf")
    try:
        onnx_fp32, onnx_int8 = _export_onnx(folder / "hf", (sample["input_ids"],
                                                            sample["token_type_ids"], None,
                                                            sample["attention_mask"]))
    except ImportError as err:
        skipped.append(f"ONNX Runtime and OpenVINO ({err.name} is not installed)")
    else:
        encoders.update(_onnx_encoders(onnx_fp32, onnx_int8, tokenizer, batch_size, threads,
                                       skipped))
    encoders.update(_ct2_encoders(model_path, folder, tokenizer, batch_size, threads, skipped))
    for label, options in (("pybert fp32", {}), ("pybert bf16", {"dtype": torch.bfloat16}),
                           ("pybert int8", {"quantize": "int8"})):
        if label == "pybert bf16" and not _cpu_has_bf16():
            skipped.append("pybert bf16 (this CPU has no bf16 instructions)")
            continue
        text_model = TextModel.load(model_path, **options)
        encoders[label] = lambda texts, m=text_model: m.encode(texts)
    return encoders


# How far a contender's vectors may be from sentence-transformers' (relative L2), by precision:
# a wrong export or conversion would make the speed meaningless. A peer's int8 is its own
# scheme (ONNX Runtime's default quantize_dynamic moves all-MiniLM-L6-v2's vectors by ~0.28):
# only a gross error is refused here, and the STS score says what the scheme costs.
VECTOR_BOUNDS = {"fp32": 1e-4, "bf16": 3e-2, "pybert int8": 0.15, "int8": 0.5}


def check_vectors(encoders: dict, texts: list[str]) -> dict:
    """Each contender's relative L2 distance from the first's vectors on ``texts``;
    RuntimeError where one is past its precision's bound."""
    reference, distances = None, {}
    for label, encode in encoders.items():
        vectors = np.asarray(encode(texts), dtype=np.float64)
        if reference is None:
            reference = vectors
        distances[label] = float(np.linalg.norm(vectors - reference) / np.linalg.norm(reference))
        bound = next((b for p, b in VECTOR_BOUNDS.items() if p in label), 1e-4)
        if not distances[label] <= bound:
            raise RuntimeError(f"{label}'s vectors differ from {next(iter(encoders))}'s by "
                               f"{distances[label]:.2e} (relative L2; at most {bound})")
    return distances


def run_cpu_texts_benchmark(model_path, texts: list[str], repeats: int = 3,
                            batch_size: int = 32, threads: int | None = None,
                            sts_path=None) -> dict:
    """Sentences per second of every contender on ``texts`` (the median of ``repeats``
    interleaved calls), and, where ``sts_path`` (stsbenchmark.tsv.gz) is given, each one's STS
    Benchmark Spearman x 100 and its difference from sentence-transformers'. Returns
    {contender: {"sentences_per_s", "sts", "sts_loss"}}."""
    from .cpu import median_seconds, time_interleaved

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    model_path, skipped = Path(model_path), []
    with tempfile.TemporaryDirectory() as tmp:
        encoders = text_encoders(model_path, Path(tmp), batch_size, threads, skipped)
        check_vectors(encoders, texts[:256])
        seconds = median_seconds(time_interleaved(
            {label: (lambda e=encode: e(texts)) for label, encode in encoders.items()},
            repeats, warmup=1))
        quality = {}
        if sts_path is not None and Path(sts_path).exists():
            pairs = sts_pairs(sts_path)
            quality = {label: sts_spearman(encode, *pairs) for label, encode in encoders.items()}
    reference = quality.get("sentence-transformers")
    result = {label: {"sentences_per_s": len(texts) / seconds[label],
                      "sts": quality.get(label),
                      "sts_loss": None if reference is None or label not in quality
                      else reference - quality[label]} for label in encoders}
    _print_texts_result(result, len(texts), model_path.name, threads, skipped)
    return result


def _print_texts_result(result: dict, count: int, model: str, threads: int,
                        skipped: list) -> None:
    print(f"\ntexts in, vectors out: {count} texts, {model}, {threads} threads")
    print(f"  {'contender':<24} {'sentences/s':>12} {'STS x100':>9} {'loss':>6}")
    for label, row in result.items():
        sts = "" if row["sts"] is None else f"{row['sts']:9.2f} {row['sts_loss']:6.2f}"
        print(f"  {label:<24} {row['sentences_per_s']:12.1f} {sts}")
    rate = {label: row["sentences_per_s"] for label, row in result.items()}
    for precision in ("fp32", "int8"):
        ours = f"pybert {precision}"
        peers = [k for k in rate if not k.startswith("pybert") and
                 (precision in k or (precision == "fp32" and k == "sentence-transformers"))]
        if ours in rate and peers:
            best = max(peers, key=rate.get)
            print(f"  {ours} sentences/s / best {precision} peer's ({best}): "
                  f"{rate[ours] / rate[best]:.2f}")
    for note in dict.fromkeys(skipped):
        print(f"skipped: {note}")
