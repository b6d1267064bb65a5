"""sentence-transformers model directories: a ``modules.json`` naming a Transformer module (a
Hugging Face encoder folder, :mod:`pybert.checkpoint.huggingface`) and what follows it:

- a SentenceTransformer: Pooling (CLS or mean over real tokens), Dense projections, Normalize;
  prompts and the default prompt from ``config_sentence_transformers.json``;
- a CrossEncoder: the Transformer alone, a sequence classifier, with the activation its config
  names (sigmoid by default for one label);
- a SparseEncoder: the Transformer (a masked-LM model; ``MLMTransformer`` up to 5) and
  SpladePooling.

The Transformer's ``sentence_bert_config.json`` may cap the length. Both on-disk styles are
read: the one of sentence-transformers up to 5 (module types ``sentence_transformers.models.*``;
Pooling's config as ``pooling_mode_<name>`` flags) and the one of 6 (module types under
``sentence_transformers.base.modules`` and the task packages; ``"pooling_mode": "mean"``).
Modules are recognised by their class name, whatever package holds them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .contents import Checkpoint, LinearLayer, SparseSpec
from .files import CheckpointError, SafetensorsHeader, read_json_of
from .huggingface import read_huggingface, st_activation

__all__ = ["is_sentence_transformers_dir", "read_sentence_transformers"]

POOLINGS = {"cls": "cls", "mean": "mean", "pooling_mode_cls_token": "cls",
            "pooling_mode_mean_tokens": "mean"}
# Dense modules' activation_function, by class name.
DENSE_ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh", "ReLU": "relu", "GELU": "gelu",
                     "Sigmoid": "sigmoid"}
SPLADE_POOLINGS, SPLADE_ACTIVATIONS = ("max", "sum"), ("relu", "log1p_relu")


def is_sentence_transformers_dir(path: Path) -> bool:
    return (path / "modules.json").exists()


def _pooling(folder: Path) -> str:
    """'cls' or 'mean' from a Pooling module's config.json, in either style."""
    settings = read_json_of(folder / "config.json")
    if "pooling_mode" in settings:  # sentence-transformers 6: one name
        modes = [settings["pooling_mode"]] if isinstance(settings["pooling_mode"], str) else \
            [repr(settings["pooling_mode"])[:40]]
    else:  # up to 5: a flag per mode, exactly one set
        modes = [k for k, v in settings.items() if k.startswith("pooling_mode") and v]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise CheckpointError(f"{folder}: pooling {modes} is not served (CLS or mean over "
                              "tokens)")
    if settings.get("include_prompt", True) is False and POOLINGS[modes[0]] == "mean":
        raise CheckpointError(f"{folder}: mean pooling without the prompt's tokens "
                              "(include_prompt false) is not served")
    return POOLINGS[modes[0]]


def _dense(folder: Path, width: int) -> LinearLayer:
    """A Dense module: y = activation(x W^T + b) from its config.json and model.safetensors."""
    settings = read_json_of(folder / "config.json")
    if settings.get("use_residual"):
        raise CheckpointError(f"{folder}: a Dense module with use_residual is not served")
    name = str(settings.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if name.rsplit(".", 1)[-1] not in DENSE_ACTIVATIONS:
        raise CheckpointError(f"{folder}: the Dense activation {name[:80]!r} is not served "
                              f"({', '.join(DENSE_ACTIVATIONS)})")
    if not (folder / "model.safetensors").exists():
        raise CheckpointError(f"{folder} has no model.safetensors (pybert reads no pickled "
                              "weights)")
    header = SafetensorsHeader(folder / "model.safetensors")
    names = [n for n in ("linear.weight", "linear.bias") if n in header.tensors]
    tensors = header.load(names)
    weight, bias = tensors.get("linear.weight"), tensors.get("linear.bias")
    if weight is None or weight.dim() != 2 or weight.shape[1] != width or \
            (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        raise CheckpointError(f"{folder}: linear.weight must be (out_features, {width}) with a "
                              "bias of out_features")
    return LinearLayer(weight, bias, DENSE_ACTIVATIONS[name.rsplit(".", 1)[-1]])


def _splade(folder: Path) -> SparseSpec:
    settings = read_json_of(folder / "config.json")
    pooling = settings.get("pooling_strategy", "max")
    activation = settings.get("activation_function", "relu")
    if pooling not in SPLADE_POOLINGS or activation not in SPLADE_ACTIVATIONS:
        raise CheckpointError(f"{folder}: SpladePooling {str(pooling)[:20]!r} / "
                              f"{str(activation)[:20]!r} is not served (pooling_strategy "
                              f"{SPLADE_POOLINGS}, activation_function {SPLADE_ACTIVATIONS})")
    return SparseSpec(pooling, activation)


def _module_folder(path: Path, module) -> Path:
    if not isinstance(module, dict) or not isinstance(module.get("path", ""), str):
        raise CheckpointError(f"{path}/modules.json: each module must be an object with a "
                              "\"path\" string")
    folder = path / module.get("path", "")
    if folder.resolve() != path.resolve() and path.resolve() not in folder.resolve().parents:
        raise CheckpointError(f"{path}/modules.json: module path {module['path']!r} leaves "
                              "the model directory")
    return folder


def _prompts(settings: dict, path: Path) -> tuple[dict, str | None]:
    prompts = settings.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise CheckpointError(f"{path}: prompts must map names to strings")
    default = settings.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise CheckpointError(f"{path}: default_prompt_name {str(default)[:40]!r} is not one of "
                              f"the prompts {sorted(prompts)[:10]}")
    return prompts, default


def read_sentence_transformers(path) -> Checkpoint:
    """A sentence-transformers directory read into a :class:`Checkpoint`: its Transformer's
    Hugging Face encoder, with what the other modules and the model's config add."""
    path = Path(path)
    settings = {}
    if (path / "config_sentence_transformers.json").exists():
        settings = read_json_of(path / "config_sentence_transformers.json")
    transformer, pooling, dense_folders, normalize, sparse = None, "cls", [], False, None
    for module in read_json_of(path / "modules.json", list):
        folder = _module_folder(path, module)
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind in ("Transformer", "MLMTransformer"):
            transformer = folder
        elif kind == "Pooling":
            pooling = _pooling(folder)
        elif kind == "Dense":
            if normalize:
                raise CheckpointError(f"{path}: a Dense module after Normalize is not served "
                                      "(the engine pools, projects, then normalises)")
            dense_folders.append(folder)
        elif kind == "Normalize":
            normalize = True
        elif kind == "SpladePooling":
            sparse = _splade(folder)
        else:
            raise CheckpointError(f"{path}: the sentence-transformers module {kind[:40]!r} is "
                                  "not served (Transformer, Pooling, Dense, Normalize, "
                                  "SpladePooling are)")
    if transformer is None:
        raise CheckpointError(f"{path}/modules.json has no Transformer module")
    max_seq_length = None
    if (transformer / "sentence_bert_config.json").exists():
        max_seq_length = read_json_of(transformer / "sentence_bert_config.json").get(
            "max_seq_length")
    checkpoint = read_huggingface(transformer, max_seq_length)
    dense, width = [], checkpoint.config.num_hiddens
    for folder in dense_folders:
        dense.append(_dense(folder, width))
        width = dense[-1].weight.shape[0]
    classifier = checkpoint.classifier
    if settings.get("model_type") == "CrossEncoder" or classifier is not None:
        if classifier is None:
            raise CheckpointError(f"{path}: a CrossEncoder whose Transformer has no sequence "
                                  "classifier")
        activation = st_activation(settings.get("activation_fn"), len(classifier.labels), path) \
            if "activation_fn" in settings else classifier.score_activation
        classifier = replace(classifier, score_activation=activation)
    if sparse is not None and "mlm_decoder_weight" not in checkpoint.weights:
        raise CheckpointError(f"{path}: SpladePooling needs the Transformer's masked-LM head, "
                              "which its weights lack")
    prompts, default_prompt = _prompts(settings, path)
    return replace(checkpoint, path=path, format="sentence-transformers", pooling=pooling,
                   dense=tuple(dense), normalize=normalize, prompts=prompts,
                   default_prompt_name=default_prompt, classifier=classifier, sparse=sparse)
