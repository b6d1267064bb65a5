"""BertConfig: the sizes of a d2l-style BERT, as stored in a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

__all__ = ["BertConfig", "config_from_model"]

ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    num_hiddens: int
    ffn_num_hiddens: int
    num_heads: int
    num_layers: int
    max_len: int = 1000
    dropout: float = 0.0          # training only; inference ignores it
    layer_norm_eps: float = 1e-5
    ffn_activation: str = "relu"
    # Hugging Face BERT: GELU in the MLM transform, and a LayerNorm after the embeddings
    mlm_activation: str = "relu"
    embedding_layer_norm: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "num_hiddens", "ffn_num_hiddens", "num_heads", "num_layers",
                     "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.num_hiddens % self.num_heads:
            raise ValueError(f"BertConfig.num_hiddens ({self.num_hiddens}) must be a multiple of "
                             f"num_heads ({self.num_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"BertConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.layer_norm_eps) > 0.0:
            raise ValueError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        for name in ("ffn_activation", "mlm_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"BertConfig.{name} must be one of {ACTIVATIONS}, "
                                 f"got {getattr(self, name)!r}")

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

        if (self.ffn_activation, self.mlm_activation, self.embedding_layer_norm) != \
                ("relu", "relu", False):
            raise ValueError("the d2l eager model has ReLU activations and no embedding "
                             "LayerNorm; this config (a Hugging Face BERT?) cannot be built "
                             "as one")
        h = self.num_hiddens
        net = BERTModel(self.vocab_size, h, [h], h, self.ffn_num_hiddens, self.num_heads,
                        self.num_layers, self.dropout, max_len=self.max_len, key_size=h,
                        query_size=h, value_size=h, hid_in_features=h, mlm_in_features=h,
                        nsp_in_features=h)
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = self.layer_norm_eps
        return net


def config_from_model(net: nn.Module) -> BertConfig:
    """Read the sizes of a d2l ``BERTModel`` (ours or the book's) off its modules.

    Raises ValueError for a model the engine cannot run exactly: projections whose sizes differ
    from num_hiddens, LayerNorms with different eps, or a missing part.
    """
    try:
        encoder = net.encoder
        blocks = list(encoder.blks)
        vocab_size, h = encoder.token_embedding.weight.shape
        max_len = encoder.pos_embedding.shape[1]
        first = blocks[0]
        num_heads = int(first.attention.num_heads)
        ffn = first.ffn.dense1.out_features
        dropout = float(first.addnorm1.dropout.p)
    except (AttributeError, IndexError) as err:
        raise ValueError(f"not a d2l-style BERTModel (expected encoder.blks, token_embedding, "
                         f"pos_embedding and attention.num_heads): {err}") from None
    eps_values = {m.eps for m in net.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps_values) != 1:
        raise ValueError(f"every LayerNorm must share one eps, got {sorted(eps_values)}")
    config = BertConfig(vocab_size=int(vocab_size), num_hiddens=int(h), ffn_num_hiddens=int(ffn),
                        num_heads=num_heads, num_layers=len(blocks), max_len=int(max_len),
                        dropout=dropout, layer_norm_eps=float(eps_values.pop()))
    problems = state_dict_problems(net.state_dict(), config)
    if problems:
        raise ValueError("the model's weights do not fit a d2l BERT with num_hiddens="
                         f"{h} everywhere: " + "; ".join(problems[:5]))
    return config


def state_dict_problems(state_dict: dict, config: BertConfig) -> list[str]:
    """What keeps ``state_dict`` from being a d2l BERT of ``config``: missing, unexpected and
    misshapen tensors (empty when it fits)."""
    expected = expected_state_shapes(config)
    problems = [f"missing {k}" for k in expected if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in expected]
    problems += [f"{k} has shape {tuple(state_dict[k].shape)}, expected {expected[k]}"
                 for k in expected
                 if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    return problems


def expected_state_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The d2l state_dict keys of a model of this config, with their shapes."""
    v, h, f = config.vocab_size, config.num_hiddens, config.ffn_num_hiddens
    shapes = {
        "encoder.pos_embedding": (1, config.max_len, h),
        "encoder.token_embedding.weight": (v, h),
        "encoder.segment_embedding.weight": (2, h),
    }
    for i in range(config.num_layers):
        p = f"encoder.blks.{i}."
        for name in "qkvo":
            shapes[f"{p}attention.W_{name}.weight"] = (h, h)
            shapes[f"{p}attention.W_{name}.bias"] = (h,)
        for ln in ("addnorm1", "addnorm2"):
            shapes[f"{p}{ln}.ln.weight"] = (h,)
            shapes[f"{p}{ln}.ln.bias"] = (h,)
        shapes[f"{p}ffn.dense1.weight"] = (f, h)
        shapes[f"{p}ffn.dense1.bias"] = (f,)
        shapes[f"{p}ffn.dense2.weight"] = (h, f)
        shapes[f"{p}ffn.dense2.bias"] = (h,)
    shapes.update({
        "hidden.0.weight": (h, h), "hidden.0.bias": (h,),
        "mlm.mlp.0.weight": (h, h), "mlm.mlp.0.bias": (h,),
        "mlm.mlp.2.weight": (h,), "mlm.mlp.2.bias": (h,),
        "mlm.mlp.3.weight": (v, h), "mlm.mlp.3.bias": (v,),
        "nsp.output.weight": (2, h), "nsp.output.bias": (2,),
    })
    return shapes
