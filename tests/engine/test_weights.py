"""The packed-weight layout: the d2l packer against pybert._C.weight_shapes, and the native
engine's checks of names, shapes, parts and finiteness."""

import dataclasses

import pytest
import torch

import pybert

from engine_cases import CONFIGS
from helpers import random_batch, random_model

def test_the_d2l_packer_gives_the_layout_of_weight_shapes():
    from pybert.d2l import pack_d2l_state_dict
    from pybert.engine.weights import weight_shapes

    config = CONFIGS["hidden-96-head-dim-32"]
    shapes = weight_shapes(config)
    packed = pack_d2l_state_dict(random_model(config).state_dict(), config)
    assert set(packed) == {n for n, (_, part, _) in shapes.items()
                           if part not in ("embedding_norm", "embedding_projection", "rotary",
                                           "local_rotary", "final_norm")}
    assert {n: tuple(t.shape) for n, t in packed.items()} == \
        {n: shapes[n][0] for n in packed}
    assert len([n for n in shapes if n.startswith("layers.")]) == 12 * config.num_layers


def test_the_native_engine_checks_names_shapes_and_parts():
    from pybert.d2l import pack_d2l_state_dict

    config = CONFIGS["head-dim-8"]
    packed = pack_d2l_state_dict(random_model(config).state_dict(), config)
    native = pybert._C.Engine
    partial = {k: v for k, v in packed.items() if k != "nsp_bias"}
    with pytest.raises(RuntimeError, match="part 'nsp' must come together"):
        native(config.native(), partial)
    with pytest.raises(RuntimeError, match="unexpected weight 'layers.3.qkv_weight'"):
        native(config.native(), {**packed, "layers.3.qkv_weight": packed["layers.0.qkv_weight"]})
    with pytest.raises(RuntimeError, match=r"'layers.1.ffn1_weight' must have shape \[48, 32\]"):
        native(config.native(), {**packed, "layers.1.ffn1_weight": packed["layers.1.ffn2_weight"]})
    with pytest.raises(RuntimeError, match="missing weight 'token_embedding'"):
        native(config.native(), {k: v for k, v in packed.items() if k != "token_embedding"})
    without_heads = {k: v for k, v in packed.items()
                     if not k.startswith(("mlm_", "nsp_", "pooler_"))}
    engine = native(config.native(), without_heads)
    assert not engine.has_nsp and not engine.has_mlm


@pytest.mark.parametrize("value,dtype", [(1e300, torch.float64), (float("nan"), torch.float32)])
def test_weights_must_be_finite_in_the_engines_dtype(value, dtype):
    config = CONFIGS["head-dim-8"]
    state = {k: v.to(dtype) for k, v in random_model(config).state_dict().items()}
    state["encoder.blks.1.ffn.dense2.bias"][3] = value
    with pytest.raises(ValueError, match=r"ffn2_bias holds NaN or infinity in torch.float32"):
        pybert.Engine.from_state_dict(state, config)


def test_positions_start_at_the_offset():
    """position_offset k: token s of a sequence reads position row k + s of a table of
    max_len + k rows (RoBERTa's ids start at padding_idx + 1). With k rows put in front of
    its position table, an engine gives exactly what the same engine without offset gives."""
    config = CONFIGS["head-dim-8"]
    packed = pybert.d2l.pack_d2l_state_dict(random_model(config).state_dict(), config)
    k = 3
    shifted = dataclasses.replace(config, position_offset=k)
    assert pybert._C.weight_shapes(shifted.native())["pos_embedding"][0] == \
        (config.max_len + k, config.num_hiddens)
    front = torch.randn(k, config.num_hiddens)
    weights = dict(packed, pos_embedding=torch.cat([front, packed["pos_embedding"]]))
    tokens, segments, valid_lens, pred = random_batch(config, 3, config.max_len, seed=5)
    plain = pybert.Engine(config, packed)(tokens, segments, valid_lens, pred)
    offset = pybert.Engine(shifted, weights)(tokens, segments, valid_lens, pred)
    for a, b in zip(offset, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"'pos_embedding' must have shape \[43, 32\]"):
        pybert.Engine(shifted, packed)  # the table lacks the offset's rows


def test_narrower_embeddings_are_normalised_then_projected():
    """embedding_size e < H (ELECTRA-small): embeddings of width e, their LayerNorm at e, then
    x W^T + b to H. Checked exactly: tables of width H padded with zero columns and a
    projection that drops them reproduce the plain engine; and an engine whose embeddings
    differ in width from H without the projection is refused."""
    config = dataclasses.replace(CONFIGS["head-dim-8"], embedding_layer_norm=False)
    packed = pybert.d2l.pack_d2l_state_dict(random_model(config).state_dict(), config)
    h, e = config.num_hiddens, config.num_hiddens + 8
    wide = dataclasses.replace(config, embedding_size=e)
    pad = lambda t: torch.cat([t, torch.zeros(t.shape[0], e - h)], 1)  # noqa: E731
    weights = dict(packed, **{name: pad(packed[name]) for name in
                              ("token_embedding", "segment_embedding", "pos_embedding")},
                   embedding_project_weight=torch.cat([torch.eye(h), torch.zeros(h, e - h)], 1),
                   embedding_project_bias=torch.zeros(h))
    tokens, segments, valid_lens, pred = random_batch(config, 3, 17, seed=2)
    plain = pybert.Engine(config, packed)(tokens, segments, valid_lens, pred)
    projected = pybert.Engine(wide, weights)(tokens, segments, valid_lens, pred)
    for a, b in zip(projected, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    without = {k: v for k, v in weights.items() if not k.startswith("embedding_project")}
    with pytest.raises(RuntimeError, match="embedding_project weights are needed"):
        pybert.Engine(wide, without)
