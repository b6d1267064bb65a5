"""The pybert command line: ``pybert pretrain``, ``pybert encode``, ``pybert serve``,
``pybert bench``.

``pybert pretrain`` with no arguments trains the book's BERT config on the built-in corpus
(Python's documentation topics) in a few minutes on a CPU, then serves the checkpoint with the
engine and shows its masked-word predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

__all__ = ["main"]

# TEI's launcher flags that name things pybert has no use for: accepted (a TEI launch line
# starts pybert unchanged) and said to be ignored at start.
_TEI_IGNORED = ("--otlp-endpoint", "--otlp-service-name", "--prometheus-port", "--uds-path",
                "--cors-allow-origin", "--max-batch-requests")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    help_text = {
        "data": "a WikiText-2 folder, a .tokens file or a plain-text file (one paragraph per "
                "line); default: the built-in corpus",
        "out": "run folder: checkpoint/, metrics.jsonl, loss.png, samples.txt",
        "steps": "optimizer steps in all (default 200; with --resume, the run's own total)",
        "warmup_steps": "linear warm-up steps (-1: 10%% of --steps)",
        "precision": "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16",
        "device": "auto, cpu, cuda or cuda:N",
        "eval_batches": "held-out batches per periodic evaluation (0: all); the final "
                        "evaluation always uses the whole held-out split",
    }
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text.get(field.name))
            continue
        kind = {"int": int, "float": float}.get(str(field.type), str)
        # --steps defaults to None so that --resume can keep the run's own total.
        default = None if field.name == "steps" else field.default
        parser.add_argument(flag, type=kind, default=default,
                            help=help_text.get(field.name, f"default {field.default}"))
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an --out folder that holds a run")


def _pretrain(args) -> int:
    import os

    import torch

    from .text import TextModel
    from .train import TrainConfig, masked_word_samples, pretrain, saved_steps

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.steps is None and args.resume:
        total = saved_steps(args.out)
        if total is not None:
            values["steps"] = total
    config = TrainConfig(**values)
    try:
        result = pretrain(config, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        return 130
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"pybert pretrain: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps({"step": result.step, **result.metrics,
                      "checkpoint": str(result.checkpoint)}, indent=1))
    if not os.path.exists(os.path.join(config.out, "loss.png")):
        print("loss.png was not drawn: matplotlib is the plot extra (pip install "
              "\"pybert-engine[plot]\")", file=sys.stderr)
    model = TextModel.load(result.checkpoint, device="cpu", dtype=torch.float32)
    samples = masked_word_samples(model, result.corpus.test)
    lines = []
    for s in samples:
        guesses = ", ".join(f"{w} ({p:.2f})" for w, p in s["top_k"])
        lines.append(f"{s['sentence']}\n    answer: {s['answer']}    top-5: {guesses}")
    text = "\n".join(lines)
    print("masked-word predictions of the trained model (served by pybert.Engine):\n" + text)
    with open(os.path.join(config.out, "samples.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser, tei: bool = False) -> None:
    """The arguments that choose a model and how the engine runs it (encode, serve); ``tei``:
    text-embeddings-inference's spelling too (--model-id, and its environment variables)."""
    from .engine.devices import runnable_dtypes

    names = ("--model-id", "--model") if tei else ("--model", "--model-id")
    parser.add_argument(*names, dest="model", required=not tei,
                        action="append" if tei else "store",
                        help="a Hugging Face hub id (e.g. sentence-transformers/all-MiniLM-L6-v2, "
                             "fetched into the hub's cache) or a pybert, Hugging Face or "
                             "sentence-transformers directory" + (
                                 " ($MODEL_ID); given again, one more model served beside it "
                                 "(see --model-config)" if tei else ""))
    parser.add_argument("--revision", default=os.environ.get("REVISION") if tei else None,
                        help="with a hub id: the branch, tag or commit (default: main)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N "
                                                         "(default: %(default)s)")
    dtypes = runnable_dtypes()
    parser.add_argument("--dtype", choices=("auto",) + dtypes,
                        help="default: float16 on a GPU, float32 on the CPU (the numbers of "
                             "sentence-transformers and TEI); auto: on the CPU, bfloat16 where "
                             "it measures faster than float32 on this machine, else float32")
    from .engine.precision import quantizations

    parser.add_argument("--quantize", choices=quantizations(),
                        help="CPU: int8 weights, activations quantised per call")


def _load_text_model(args, device: str | None = None):
    """The TextModel that --model, --revision, --device (or ``device``), --dtype and
    --quantize describe."""
    from .text import load_text_model

    return load_text_model(args.model, args.device if device is None else device, args.dtype,
                           args.quantize, args.revision)


def _encode(args) -> int:
    from ._signals import sigterm_as_interrupt
    from .job import run_encode_job

    if args.ray is not None:
        return _encode_on_ray(args)
    if len(args.input) != 1:
        print("pybert encode: one --input file (several, or folders, need --ray)",
              file=sys.stderr)
        return 2
    try:
        from .checkpoint import locate
        from .checkpoint.files import fingerprint

        args.model = str(locate(args.model, args.revision))  # a hub id: fetched once, here
        args.revision = None
        model = _load_text_model(args)
        # The job is keyed on the checkpoint's content, not its path: a checkpoint replaced at
        # the same path is another job; ./ckpt and ckpt/ are the same one.
        model_id = "sha256:" + fingerprint(args.model)
        with sigterm_as_interrupt():
            result = run_encode_job(model, args.input[0], args.output, model_id,
                                    pooling=args.pooling, batch_tokens=args.batch_tokens,
                                    chunk_size=args.chunk_size, truncation=args.truncation,
                                    overwrite=args.overwrite, progress=args.progress,
                                    task=args.task, prompt_name=args.prompt_name,
                                    dimensions=args.dimensions, raw_scores=args.raw_scores)
    except KeyboardInterrupt:
        print("\npybert encode: interrupted; the rows done so far are kept. Run the same "
              "command again to continue.", file=sys.stderr)
        return 130
    except (FileExistsError, FileNotFoundError, PermissionError, ValueError, TypeError) as err:
        print(f"pybert encode: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: the job can be resumed
        print(f"pybert encode: {err.strerror or err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def _encode_on_ray(args) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("pybert encode --ray needs Ray: pip install \"pybert-engine[ray]\"", file=sys.stderr)
        return 2
    from .ray import run_ray_job

    if not args.progress:
        import os

        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        summary = run_ray_job(args.model, args.input, args.output,
                              address=None if args.ray == "local" else args.ray,
                              pooling=args.pooling, truncation=args.truncation,
                              batch_tokens=args.batch_tokens,
                              rows_per_shard=args.rows_per_shard, actors=args.actors,
                              device=args.device,
                              dtype=args.dtype,
                              overwrite=args.overwrite,
                              quantize=args.quantize, task=args.task,
                              prompt_name=args.prompt_name, dimensions=args.dimensions,
                              raw_scores=args.raw_scores, revision=args.revision)
    except KeyboardInterrupt:
        print("\npybert encode: interrupted; the finished shards are kept. Run the same "
              "command again to continue.", file=sys.stderr)
        return 130
    except (FileNotFoundError, PermissionError, ValueError, TypeError) as err:
        print(f"pybert encode: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _serve(args) -> int:
    try:
        from starlette import __version__  # noqa: F401
        import uvicorn  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        print("pybert serve needs its extra: pip install \"pybert-engine[serve]\" (starlette, "
              "uvicorn, prometheus-client)", file=sys.stderr)
        return 2
    from .serve import serve

    if args.grpc_port:
        try:
            import grpc_tools  # noqa: F401
        except ImportError:
            print("pybert serve --grpc-port needs the grpc extra: pip install "
                  "\"pybert-engine[grpc]\" (grpcio, grpcio-tools)", file=sys.stderr)
            return 2
    if args.hf_token:
        os.environ["HF_TOKEN"] = args.hf_token
    if args.huggingface_hub_cache:
        os.environ["HF_HUB_CACHE"] = args.huggingface_hub_cache
    ignored = [flag for flag in _TEI_IGNORED
               if getattr(args, flag[2:].replace("-", "_")) is not None]
    if ignored:
        print(f"pybert serve: ignoring {', '.join(ignored)} (text-embeddings-inference "
              "options pybert has no use for)", file=sys.stderr)
    try:
        if args.dense_path is not None:
            raise ValueError("--dense-path is not supported: pybert applies the Dense modules "
                             "the model's modules.json names")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {args.port}")
        if args.ray is not None:
            return _serve_on_ray(args)
        served = _served_models(args)
    except (FileNotFoundError, PermissionError, ValueError, TypeError) as err:
        print(f"pybert serve: {err}", file=sys.stderr)
        return 2
    serve(served, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _serve_on_ray(args) -> int:
    """pybert serve --ray: one model's server as replicas behind Ray Serve's proxy."""
    try:
        from ray import serve  # noqa: F401
    except ImportError:
        print("pybert serve --ray needs Ray Serve: pip install \"pybert-engine[ray-serve]\"",
              file=sys.stderr)
        return 2
    from .serve.ray_serve import run

    if len(args.model or ()) + bool(args.model_config) != 1 or args.grpc_port or args.devices:
        raise ValueError("--ray serves one --model over HTTP (not --model-config, several "
                         "models, --grpc-port or --devices): Ray Serve places the replicas")
    for flag, value in (("--ray-replicas", args.ray_replicas),
                        ("--ray-max-replicas", args.ray_max_replicas or 1)):
        if not 1 <= value <= 1024:
            raise ValueError(f"{flag} must be in [1, 1024], got {value}")
    config = _serve_config(argparse.Namespace(**{**vars(args), "model": args.model[0]}))
    load = {"device": args.device, "dtype": args.dtype, "quantize": args.quantize,
            "revision": args.revision, "pooling": args.pooling,
            "default_prompt_name": args.default_prompt_name,
            "default_prompt": args.default_prompt}
    run(args.model[0], config, args.host, args.port,
        address=None if args.ray == "local" else args.ray, replicas=args.ray_replicas,
        max_replicas=args.ray_max_replicas, load_options=load)
    return 0


def _served_models(args) -> list:
    """The models of ``pybert serve``, loaded: each --model (all with the command line's
    settings), then each entry of --model-config (its own settings over those), every one's
    memory counted against one budget."""
    from .engine import resolve_device
    from .serve import ServeConfig
    from .serve.models import MemoryBudget, NamedModel, check_names

    entries = [{"model": m} for m in args.model or ()]
    if not entries and not args.model_config and os.environ.get("MODEL_ID"):
        entries = [{"model": os.environ["MODEL_ID"]}]
    if args.model_config:
        entries += _model_config_entries(args.model_config)
    if not entries:
        raise ValueError("no model: give --model (or --model-id, $MODEL_ID) or --model-config")
    if len(entries) > 1 and args.model_id != ServeConfig.model_id:
        raise ValueError("--served-model-name names one model: with several, give each its "
                         "\"served-model-name\" in --model-config")
    devices = _serve_devices(args)
    specs = [argparse.Namespace(**{**vars(args), **entry}) for entry in entries]
    configs = [_serve_config(spec) for spec in specs]
    check_names([config.model_id for config in configs])
    budget = MemoryBudget(configs[0].memory_budget, resolve_device(devices[0]))
    served = []
    for spec, config in zip(specs, configs):
        first = budget.load(config.model_id, lambda: _load_text_model(spec, devices[0]),
                            config.batch_tokens)
        models = [first] + [_load_text_model(spec, device) for device in devices[1:]]
        for model in models:
            model.configure(pooling=spec.pooling, default_prompt_name=spec.default_prompt_name,
                            default_prompt=spec.default_prompt)
        served.append(NamedModel(config.model_id, first, config, tuple(models[1:])))
    return served


def _serve_config(spec):
    """The ServeConfig of one served model's settings (``spec``: the command line's, with a
    --model-config entry's over them): named by its --served-model-name, else its hub id or
    its folder's name; the API key from --api-key or $PYBERT_API_KEY."""
    from .checkpoint import is_hub_id
    from .serve import ServeConfig

    name = spec.model_id
    if name == ServeConfig.model_id:  # not given
        name = spec.model if is_hub_id(spec.model) else \
            os.path.basename(os.path.normpath(spec.model))
    return ServeConfig(**{**{f.name: getattr(spec, f.name)
                             for f in dataclasses.fields(ServeConfig)}, "model_id": name,
                          "api_key": spec.api_key or os.environ.get("PYBERT_API_KEY") or None})


def _model_config_entries(path: str) -> list[dict]:
    """--model-config's models: a JSON list of objects, each a model's settings under the
    names of pybert serve's flags without their dashes ("model", "quantize",
    "max-batch-tokens", "served-model-name", ...), checked; as argument names."""
    from .checkpoint.files import read_json
    from .serve.config import per_model_options

    value = read_json(path, what="--model-config")
    if not isinstance(value, list) or not value or not all(isinstance(e, dict) for e in value):
        raise ValueError(f"--model-config {path}: must be a JSON list of objects, one per model")
    parser = argparse.ArgumentParser(add_help=False)
    _serve_arguments(parser)
    allowed = {"model", "revision", "dtype", "quantize", "pooling", "default_prompt_name",
               "default_prompt"} | per_model_options()
    actions = {flag[2:]: action for action in parser._actions for flag in action.option_strings
               if flag.startswith("--") and action.dest in allowed}
    entries = []
    for i, entry in enumerate(value):
        where = f"--model-config {path}, model {i}"
        unknown = sorted(set(entry) - set(actions))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; a model takes "
                             f"{sorted(actions)}")
        if not isinstance(entry.get("model"), str):
            raise ValueError(f"{where}: \"model\" (a hub id or a directory) is required")
        out = {}
        for key, setting in entry.items():
            action = actions[key]
            kind = bool if action.type is None and action.nargs == 0 else action.type or str
            if kind is bool and not isinstance(setting, bool) or kind in (int, float) and (
                    isinstance(setting, bool) or not isinstance(setting, (int, float))) or \
                    kind is str and not isinstance(setting, str):
                raise ValueError(f"{where}: \"{key}\" must be {kind.__name__}, got "
                                 f"{setting!r}"[:300])
            if action.choices is not None and setting not in action.choices:
                raise ValueError(f"{where}: \"{key}\" must be one of {list(action.choices)}")
            out[action.dest] = kind(setting) if kind is float else setting
        entries.append(out)
    return entries


def _serve_devices(args) -> list[str]:
    """--devices as a list (one engine and batcher each), else --device alone."""
    if args.devices is None:
        return [args.device]
    devices = [d.strip() for d in args.devices.split(",")]
    if not all(devices) or len(devices) > 64:
        raise ValueError(f"--devices must list 1 to 64 devices, comma-separated, got "
                         f"{args.devices[:80]!r}")
    return devices


def _bench(args, rest) -> int:
    from .engine import resolve_device

    if resolve_device(args.device).type == "cuda":
        from .bench.gpu import main as gpu_main

        return gpu_main(rest)
    if rest:
        print(f"pybert bench: unknown arguments for the CPU benchmark: {rest}", file=sys.stderr)
        return 2
    from .bench.cpu import CPU_WORKLOADS, CpuWorkload, run_cpu_benchmark

    workloads = CPU_WORKLOADS
    if args.batch is not None or args.seq_len is not None:
        batch, seq_len = args.batch or 8, args.seq_len or 128
        workloads = (CpuWorkload(f"BERT-base, {batch} x {seq_len}", "bert-base", batch,
                                 seq_len),)
    run_cpu_benchmark(workloads, repeats=args.repeats, compile_peer=not args.no_compile)
    return 0


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    _add_train_arguments(parser)


def _encode_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--input", required=True, nargs="+",
                        help="a .txt or .jsonl file; with --ray, any number of .txt, .jsonl "
                             "and .parquet files or folders of them")
    parser.add_argument("--output", required=True,
                        help=".npy, .safetensors or .parquet file; with --ray, a folder of "
                             "Parquet shards")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on a Ray cluster: 'auto', an address, or nothing for a "
                             "local one started for the run")
    parser.add_argument("--rows-per-shard", type=int, default=10_000,
                        help="with --ray: rows per output shard")
    parser.add_argument("--actors", type=int,
                        help="with --ray: engine actors (default: one per GPU, else one per "
                             "CPU)")
    from .config import BATCH_TOKENS
    from .tasks import JOB_TASKS

    parser.add_argument("--task", choices=JOB_TASKS, default="embed",
                        help="embed: a vector per row; classify: the classifier's scores per "
                             "row (a *ForSequenceClassification or CrossEncoder model); "
                             "sparse: SPLADE's non-zero ids and weights (.parquet: row, "
                             "indices, values)")
    parser.add_argument("--pooling", choices=("cls", "mean"),
                        help="default: the model's own (cls unless a sentence-transformers "
                             "model says otherwise)")
    parser.add_argument("--prompt-name",
                        help="prepend the model's prompt of this name (sentence-transformers "
                             "prompts; default: the model's default prompt, if any)")
    parser.add_argument("--dimensions", type=int,
                        help="keep the first N values of each vector, then normalise as the "
                             "model does (Matryoshka)")
    parser.add_argument("--raw-scores", action="store_true",
                        help="with --task classify: the logits, not the scores")
    parser.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS,
                        help="padded tokens per engine batch (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="rows read, sorted and committed together (default: "
                             "%(default)s)")
    parser.add_argument("--truncation", choices=("warn", "error"), default="warn")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished output or a partial one")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


# Every route of pybert serve, for its --help (the table is pybert.serve.routes.Routes.table).
SERVE_ROUTES = """routes:
  POST /embed            text-embeddings-inference: vectors of texts
  POST /similarity       TEI: cosine similarity of a source sentence to each of sentences
  POST /embed_all        TEI: every token's vector
  POST /embed_sparse     TEI: sparse vectors (SPLADE's, or BGE-M3's lexical weights)
  POST /embed_multi      multi-vector (ColBERT) token embeddings (BGE-M3)
  POST /predict          TEI: a sequence classifier's scores of texts or pairs
  POST /rerank           TEI: a cross-encoder's scores of (query, text) pairs
  POST /tokenize         TEI: tokens with their offsets
  POST /decode           TEI: token ids back to text
  GET  /v1/models        OpenAI: the served models (several: --model A --model B, or
                         --model-config; /models/NAME/ before any route chooses one)
  POST /v1/embeddings    OpenAI's embeddings API (its Python client works)
  POST /fill-mask        the MLM head's words at each mask token
  POST /next-sentence    the NSP head's probability that b follows a
  GET  /health, /info, /metrics (Prometheus)
  --ray: the same routes through Ray Serve's proxy, --ray-replicas copies of the server
  gRPC (--grpc-port): text-embeddings-inference's tei.proto (Info, Embed, Predict, Rerank,
                         Tokenize and their streams)

The text-embeddings-inference launcher's flags are taken with their meanings: a TEI launch
line starts pybert with the program's name changed (--hostname, --port, --model-id,
--revision, --max-batch-tokens, --max-client-batch-size, --max-concurrent-requests,
--auto-truncate, --payload-limit, --api-key, --pooling, --default-prompt-name,
--default-prompt, --served-model-name, --json-output, --hf-token, --huggingface-hub-cache).
Two defaults differ on purpose: pybert listens on 127.0.0.1 (TEI: 0.0.0.0; pass --hostname
0.0.0.0 to be reached from other machines), and takes 256 texts per request (TEI: 32)."""


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    _add_model_arguments(parser, tei=True)
    parser.add_argument("--hostname", "--host", dest="host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, loopback only)")
    # A default from the environment stays a string: argparse converts it (and says what is
    # wrong with it) as it does a flag's value.
    parser.add_argument("--port", type=int, default=env("PORT", "3000"),
                        help="($PORT; default: %(default)s, as TEI's)")
    parser.add_argument("--model-config", default=None,
                        help="a JSON file of models to serve beside --model's: a list of "
                             "objects, each a model's settings named as these flags without "
                             "dashes: model, served-model-name, revision, dtype, quantize, "
                             "pooling, default-prompt-name, default-prompt and the "
                             "per-model limits (the README lists them)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="serve through Ray Serve: --ray-replicas copies of the server "
                             "behind its HTTP proxy, on a local Ray cluster (no ADDRESS) or "
                             "the cluster at ADDRESS (the ray-serve extra)")
    parser.add_argument("--ray-replicas", type=int, default=2,
                        help="replicas with --ray (default: %(default)s)")
    parser.add_argument("--ray-max-replicas", type=int, default=None,
                        help="with --ray: scale from --ray-replicas up to this many by the "
                             "requests waiting per replica (default: a fixed count)")
    parser.add_argument("--devices", help="serve on several devices, e.g. cuda:0,cuda:1: one "
                                          "engine and batcher each, a request going to the "
                                          "least loaded (replaces --device)")
    parser.add_argument("--pooling", choices=("cls", "mean"), default=env("POOLING"),
                        help="override the model's pooling (default: the model's own)")
    parser.add_argument("--default-prompt-name", default=env("DEFAULT_PROMPT_NAME"),
                        help="the model's prompt (sentence-transformers prompts) prepended to "
                             "every text that names none")
    parser.add_argument("--default-prompt", default=env("DEFAULT_PROMPT"),
                        help="a prompt string prepended to every text that names none")
    parser.add_argument("--dense-path", default=env("DENSE_PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--hf-token", "--hf-api-token", default=None,
                        help="a Hugging Face token for gated or private models (default: "
                             "$HF_TOKEN)")
    parser.add_argument("--huggingface-hub-cache", default=None,
                        help="the hub cache to load models from (default: $HF_HUB_CACHE)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    _add_limit_arguments(parser)
    for flag in _TEI_IGNORED:
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--disable-spans", action="store_const", const=True, default=None,
                        dest="disable_spans", help=argparse.SUPPRESS)


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's limits and identity as ServeConfig declares them (flags, environment
    variable, default, help): written once there."""
    from .serve.config import cli_options

    for name, flags, variable, default, kind, help_text in cli_options():
        value = os.environ.get(variable) if variable else None
        where = f"${variable}; " if variable else ""
        if kind is bool:
            parser.add_argument(*flags, dest=name, action="store_true",
                                default=(value or "").lower() in ("1", "true") or default,
                                help=f"{help_text} ({where.rstrip('; ') or 'off by default'})")
            continue
        parser.add_argument(*flags, dest=name, type=kind,
                            default=value if value is not None else default,
                            help=f"{help_text} ({where}default: %(default)s)")


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")


# name: (help, description, arguments, run)
COMMANDS = {
    "pretrain": ("pretrain a BERT (MLM + NSP)", None, _pretrain_arguments, _pretrain),
    "encode": ("embed every text of a file (a batch job that resumes)",
               "Embed each row of --input (.txt: a text per line, a tab between the two texts "
               "of a pair; .jsonl: a string, a [a, b] pair or {\"text\": ...}) into --output "
               "(.npy, .safetensors or .parquet), in input order; or score it with the model's "
               "classifier (--task classify), or write its SPLADE vectors (--task sparse, to "
               ".parquet). An interrupted job continues where it stopped when run again with "
               "the same arguments.", _encode_arguments, _encode),
    "serve": ("serve a model over HTTP (text-embeddings-inference's and OpenAI's APIs)",
              "Serve a model over HTTP with dynamic batching: concurrent requests are packed "
              "into shared engine calls. SIGTERM finishes the requests in flight, then exits.",
              _serve_arguments, _serve),
    "bench": ("time the engine against its peers on the same inputs",
              "On a GPU (--device cuda, the default where one is present): the BERT-base fp16 "
              "benchmark against Hugging Face, torch.compile and TransformerEncoder; its "
              "options (--peers, --workloads, --repeats, --json) pass through. On the CPU: the "
              "engine in fp32, bf16 and int8 against the d2l and Hugging Face eager models, "
              "torch.compile, ONNX Runtime, OpenVINO and CTranslate2 (where installed: the "
              "'bench' extra), on the book config at 512 x 64 and BERT-base at ragged 8 x "
              "U[64, 128], 1 x 128 and short 32 x U[8, 48], or on BERT-base at --batch x "
              "--seq-len.", _bench_arguments, _bench),
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line for a person at a terminal (not the module and line that
    raised it)."""
    print(f"pybert: {category.__name__}: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    import warnings

    warnings.showwarning = _show_warning
    parser = argparse.ArgumentParser(prog="pybert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    # Only the command asked for builds its arguments (some import torch): `pybert --help`
    # stays fast.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (help_text, description, add_arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=description,
                                  epilog=SERVE_ROUTES if name == "serve" else None,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            add_arguments(sub)
        sub.set_defaults(run=run)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":  # the GPU benchmark's own options pass through
        return args.run(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
