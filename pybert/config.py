"""BertConfig: the sizes of a d2l-style BERT, as stored in a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from . import _C

__all__ = ["BertConfig", "check_int", "BATCH_TOKENS"]

# The tokens of one engine call where a caller gives no budget (the API, the job, Ray and the
# server alike): large enough to keep a CPU's or a GPU's GEMMs busy, small enough that a
# batch's activations stay well under a GiB at BERT-base width.
BATCH_TOKENS = 16384

ACTIVATIONS = ("relu", "gelu", "silu")
# The longest sequence a rotary model may claim: its cos/sin tables are computed from the
# config (max_len x head_dim floats each), not read from a file whose size bounds them.
MAX_ROTARY_POSITIONS = 1 << 17


# The largest integer the C++ side takes (int64_t); a larger one from a JSON file or a caller
# would fail in pybind11's conversion with no word of which field.
INT64_MAX = (1 << 63) - 1


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool, not a float) in [minimum, INT64_MAX]; ValueError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind} below 2**63, got {repr(value)[:40]}")
    return value


def _real(value, name: str) -> float:
    """value as a float if it is a real number (an int or a float, not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"BertConfig.{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"BertConfig.{name} is out of range: {str(value)[:20]}...") from None


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    num_hiddens: int
    ffn_num_hiddens: int
    num_heads: int
    num_layers: int
    max_len: int = 1000
    type_vocab_size: int = 2      # segment ids in [0, type_vocab_size)
    position_offset: int = 0      # the position row of a sequence's first token
    embedding_size: int = 0       # embedding width, projected to num_hiddens (ELECTRA); 0: none
    dropout: float = 0.0          # training only; inference ignores it
    layer_norm_eps: float = 1e-5
    ffn_activation: str = "relu"
    # Hugging Face BERT: GELU in the MLM transform, and a LayerNorm after the embeddings
    mlm_activation: str = "relu"
    embedding_layer_norm: bool = False
    # The layer's form, for modern encoders (ModernBERT, NomicBERT, GTE); the defaults are
    # BERT's. Pre-norm layers (x += sublayer(LN(x))) end in a final LayerNorm; a gated FFN's
    # first linear gives [a | g] and the second reads act(a) * g; rotary positions (a base > 0)
    # replace the position table; with local_window > 0, the layers i with i % global_every
    # != 0 attend only to keys within local_window positions (their own rotary base if
    # local_rotary_base is set).
    pre_norm: bool = False
    ffn_gated: bool = False
    rotary_base: float = 0.0
    rotary_ntk_factor: float = 1.0  # GTE's fixed NTK scaling (Python only: it shapes the tables)
    local_rotary_base: float = 0.0
    local_window: int = 0
    global_every: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "num_hiddens", "ffn_num_hiddens", "num_heads", "num_layers",
                     "max_len", "type_vocab_size", "global_every"):
            check_int(getattr(self, name), f"BertConfig.{name}")
        for name in ("position_offset", "embedding_size", "local_window"):
            check_int(getattr(self, name), f"BertConfig.{name}", minimum=0)
        if self.num_hiddens % self.num_heads:
            raise ValueError(f"BertConfig.num_hiddens ({self.num_hiddens}) must be a multiple of "
                             f"num_heads ({self.num_heads})")
        dropout = _real(self.dropout, "dropout")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"BertConfig.dropout must be in [0, 1), got {self.dropout!r}")
        eps = _real(self.layer_norm_eps, "layer_norm_eps")
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"BertConfig.layer_norm_eps must be finite and > 0, got "
                             f"{self.layer_norm_eps!r}")
        for name in ("ffn_activation", "mlm_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"BertConfig.{name} must be one of {ACTIVATIONS}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("embedding_layer_norm", "pre_norm", "ffn_gated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BertConfig.{name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        for name in ("rotary_base", "local_rotary_base"):
            base = _real(getattr(self, name), name)
            if not (math.isfinite(base) and (base == 0.0 or base > 1.0)):
                raise ValueError(f"BertConfig.{name} must be 0 (none) or a finite number > 1, "
                                 f"got {getattr(self, name)!r}")
        ntk = _real(self.rotary_ntk_factor, "rotary_ntk_factor")
        if not (math.isfinite(ntk) and ntk >= 1.0):
            raise ValueError(f"BertConfig.rotary_ntk_factor must be a finite number >= 1, got "
                             f"{self.rotary_ntk_factor!r}")
        if self.rotary_base and self.head_dim % 2:
            raise ValueError(f"BertConfig: rotary positions need an even head dim, got "
                             f"{self.head_dim}")
        if self.rotary_base and self.position_offset:
            raise ValueError("BertConfig: rotary positions count from 0 (position_offset 0)")
        if self.rotary_base and self.max_len > MAX_ROTARY_POSITIONS:
            raise ValueError(f"BertConfig.max_len {self.max_len} is beyond the "
                             f"{MAX_ROTARY_POSITIONS} positions served with rotary positions")

    def native(self) -> dict:
        """The config as pybert._C takes it (Engine, weight_shapes): the fields the C++ side
        lists (``_C.CONFIG_FIELDS``, from ``PYBERT_CONFIG_FIELDS`` in csrc/bert/model.h)."""
        return {name: getattr(self, name) for name in _C.CONFIG_FIELDS}

    @property
    def is_d2l(self) -> bool:
        """Whether d2l's BERT has this form: ReLU activations, no embedding LayerNorm, two
        segments, positions from 0."""
        return (self.ffn_activation, self.mlm_activation, self.embedding_layer_norm,
                self.type_vocab_size, self.position_offset, self.embedding_size, self.pre_norm,
                self.ffn_gated, self.rotary_base, self.local_window) == \
            ("relu", "relu", False, 2, 0, 0, False, False, 0.0, 0)

    @property
    def head_dim(self) -> int:
        return self.num_hiddens // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BertConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a BERT config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BERT config fields: {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"BERT config is missing fields: {missing}")
        return cls(**data)

    def build_model(self):
        """A fresh eager ``BERTModel`` of these sizes (every *_size / *_features = num_hiddens)."""
        from .model import BERTModel

        if not self.is_d2l:
            raise ValueError("the d2l eager model has ReLU activations, no embedding "
                             "LayerNorm, two segments and positions from 0; this config (a "
                             "Hugging Face BERT?) cannot be built as one")
        h = self.num_hiddens
        net = BERTModel(self.vocab_size, h, [h], h, self.ffn_num_hiddens, self.num_heads,
                        self.num_layers, self.dropout, max_len=self.max_len, key_size=h,
                        query_size=h, value_size=h, hid_in_features=h, mlm_in_features=h,
                        nsp_in_features=h)
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = self.layer_norm_eps
        return net
