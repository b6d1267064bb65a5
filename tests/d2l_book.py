"""The book's own BERT code (d2l 0.17.6), for compatibility tests.

d2l/torch.py imports torchvision, pandas, IPython and more at the top, none of which the BERT
chapter needs (and torchvision does not install beside every torch). So we read the installed
d2l/torch.py, keep only the definitions the BERT chapter uses, and execute those, unchanged,
with torch. Returns None when d2l is not installed (`pip install --no-deps d2l==0.17.6`).
"""

import ast
import importlib.util
import math
import types
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

BERT_NAMES = {
    "sequence_mask", "masked_softmax", "DotProductAttention", "transpose_qkv",
    "transpose_output", "MultiHeadAttention", "PositionWiseFFN", "AddNorm", "EncoderBlock",
    "BERTEncoder", "MaskLM", "NextSentencePred", "BERTModel", "get_tokens_and_segments",
}


def load_book_bert():
    spec = importlib.util.find_spec("d2l")
    if spec is None or not spec.submodule_search_locations:
        return None
    source_path = Path(list(spec.submodule_search_locations)[0]) / "torch.py"
    tree = ast.parse(source_path.read_text(encoding="utf-8"))
    keep = [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in BERT_NAMES]
    found = {node.name for node in keep}
    if found != BERT_NAMES:
        raise RuntimeError(f"{source_path} lacks {sorted(BERT_NAMES - found)}")
    book = types.SimpleNamespace()
    namespace = {"torch": torch, "nn": nn, "F": F, "math": math, "d2l": book}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(source_path), "exec"), namespace)
    for name in BERT_NAMES:
        setattr(book, name, namespace[name])
    return book
