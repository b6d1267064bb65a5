"""Hugging Face BERT and sentence-transformers checkpoints, served by the engine and compared
with transformers itself (small random models built here: no downloads)."""

import json

import numpy as np
import pytest
import torch

import pybert
from pybert.checkpoint import CheckpointError

from helpers import BOUNDS, rel_l2

transformers = pytest.importorskip("transformers")

from hf_models import hf_reference, make_hf_dir, random_inputs, sentences  # noqa: E402

@pytest.mark.parametrize("kind,hidden_act", [("pretraining", "gelu"), ("pretraining", "relu"),
                                             ("mlm", "gelu"), ("base", "gelu")])
def test_hf_checkpoint_matches_transformers(tmp_path, kind, hidden_act):
    model = make_hf_dir(tmp_path / "hf", kind, hidden_act)
    engine = pybert.load(tmp_path / "hf")
    assert engine.config.embedding_layer_norm and engine.config.ffn_activation == hidden_act
    tokens, segments, valid_lens, positions = random_inputs(engine.config.vocab_size)
    ref_hidden, ref_mlm, ref_nsp = hf_reference(model, tokens, segments, valid_lens)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens,
                               positions if engine.has_mlm else None)
    mask = torch.arange(30)[None, :] < valid_lens[:, None]
    assert rel_l2(encoded[mask], ref_hidden[mask]) <= BOUNDS[torch.float32]
    assert engine.has_mlm == (kind != "base") and engine.has_nsp == (kind == "pretraining")
    if engine.has_mlm:
        rows = torch.arange(5).repeat_interleave(3)
        expected = ref_mlm[rows, positions.reshape(-1)].reshape(5, 3, -1)
        assert rel_l2(mlm, expected) <= BOUNDS[torch.float32]
    if engine.has_nsp:
        assert rel_l2(nsp, ref_nsp) <= BOUNDS[torch.float32]
        # Hugging Face's NSP class 0 means "b follows a"
        tok = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
        pair = ("the list is sorted", "it is returned")
        with torch.no_grad():
            logits = model(**tok(*pair, return_tensors="pt")).seq_relationship_logits
        expected_p = float(torch.softmax(logits[0].double(), -1)[0])
        assert pybert.text_model_of(engine).next_sentence(pair) == pytest.approx(expected_p, rel=1e-5)
    else:
        assert nsp is None
        with pytest.raises(ValueError, match="no NSP head"):
            pybert.text_model_of(engine).next_sentence([("a", "b")])
    if not engine.has_mlm:
        with pytest.raises(ValueError, match="no MLM head"):
            engine(tokens, segments, valid_lens, positions)


@pytest.mark.parametrize("type_vocab_size", [1, 3])
def test_other_numbers_of_token_types_match_transformers(tmp_path, type_vocab_size):
    """A BERT with one token type (as RoBERTa has) or three: its segment ids in [0, n), the
    same numbers as transformers, and an id beyond refused."""
    model = make_hf_dir(tmp_path / "hf", "base", type_vocab_size=type_vocab_size)
    engine = pybert.load(tmp_path / "hf")
    assert engine.config.type_vocab_size == type_vocab_size
    tokens, _, valid_lens, _ = random_inputs(engine.config.vocab_size, seed=3)
    segments = torch.randint(0, type_vocab_size, tokens.shape,
                             generator=torch.Generator().manual_seed(4))
    ref_hidden, _, _ = hf_reference(model, tokens, segments, valid_lens)
    encoded = engine.encode(tokens, segments, valid_lens)
    mask = torch.arange(30)[None, :] < valid_lens[:, None]
    assert rel_l2(encoded[mask], ref_hidden[mask]) <= BOUNDS[torch.float32]
    with pytest.raises(ValueError, match="segments must be"):
        engine.encode(tokens, torch.full_like(tokens, type_vocab_size), valid_lens)


def test_wordpiece_matches_the_transformers_tokenizer(tmp_path):
    make_hf_dir(tmp_path / "hf")
    engine = pybert.load(tmp_path / "hf")
    reference = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
    texts = sentences(300)
    pairs = list(zip(texts[::2], texts[1::2]))
    items = texts[:150] + pairs
    with pytest.warns(UserWarning, match="longer than max_len=64"):
        ours = pybert.text_model_of(engine).tokenizer.encode_all(items, truncation="warn")
    cut = dict(truncation="longest_first", max_length=64)
    for item, (ids, types) in zip(items, ours):
        expected = reference(*item, **cut) if isinstance(item, tuple) else \
            reference(item, **cut)
        assert ids == expected["input_ids"] and types == expected["token_type_ids"], item
    # vocab.txt alone (no tokenizer.json) gives the same tokens
    (tmp_path / "hf" / "tokenizer.json").unlink()
    with pytest.warns(UserWarning):
        again = pybert.TextModel.load(tmp_path / "hf").tokenizer.encode_all(items)
    assert again == ours


def test_texts_end_to_end_and_truncation(tmp_path):
    model = make_hf_dir(tmp_path / "hf")
    engine = pybert.load(tmp_path / "hf")
    reference = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
    texts = sentences(40, seed=3)
    with pytest.warns(UserWarning, match="cut"):
        vectors = pybert.encode(engine, texts, batch_tokens=200)
    batch = reference(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model.double().bert(**batch).last_hidden_state
    assert rel_l2(torch.from_numpy(vectors), hidden[:, 0]) <= BOUNDS[torch.float32]
    long_text = " ".join(["python"] * 200)
    with pytest.warns(UserWarning, match="cut"):
        out = pybert.encode(engine, [long_text], pooling="tokens")
    assert out[0].shape[0] == 64
    with pytest.raises(ValueError, match="more than max_len=64"):
        pybert.encode(engine, [long_text], truncation="error")


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_sentence_transformers_directory(tmp_path, pooling, normalize):
    model = make_hf_dir(tmp_path / "st", kind="base")
    modules = [{"idx": 0, "name": "0", "path": "", "type":
                "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type":
                "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (tmp_path / "st" / "2_Normalize").mkdir()
    (tmp_path / "st" / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "st" / "1_Pooling").mkdir()
    (tmp_path / "st" / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 48, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False}))
    (tmp_path / "st" / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    texts = sentences(30, seed=4)
    vectors = pybert.encode(tmp_path / "st", texts)
    reference = transformers.BertTokenizerFast.from_pretrained(tmp_path / "st")
    batch = reference(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = model.double()(**batch).last_hidden_state
    if pooling == "mean":
        m = batch["attention_mask"][..., None].double()
        expected = (hidden * m).sum(1) / m.sum(1)
    else:
        expected = hidden[:, 0]
    if normalize:
        expected = torch.nn.functional.normalize(expected, dim=-1)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert rel_l2(torch.from_numpy(vectors), expected) <= BOUNDS[torch.float32]
    # the batch job applies the model's pooling and normalisation too
    from pybert.job import run_encode_job

    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    run_encode_job(pybert.TextModel.load(tmp_path / "st"), tmp_path / "in.txt",
                   tmp_path / "out.npy", "st", progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), vectors, rtol=1e-5, atol=1e-6)


def test_refused_configs_and_weights(tmp_path):
    make_hf_dir(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, match in ((dict(hidden_act="gelu_new"), "hidden_act 'gelu_new'"),
                          (dict(position_embedding_type="relative_key"), "relative_key"),
                          (dict(is_decoder=True), "decoder"),
                          (dict(type_vocab_size=3), r"token_type_embeddings.* \(2, 48\)")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=match):
            pybert.load(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        pybert.load(tmp_path / "hf")
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"junk")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        pybert.load(tmp_path / "hf")


@pytest.mark.parametrize("options,bounds", [
    ({"dtype": torch.bfloat16}, (BOUNDS[torch.bfloat16],) * 3),
    ({"quantize": "int8"}, (2e-2, 1e-1, 1e-1)),  # test_engine.py's int8 bounds
], ids=["bf16", "int8"])
def test_hf_checkpoint_on_the_cpu_in_bf16_and_int8(tmp_path, options, bounds):
    """GELU, the embedding LayerNorm and the MLM transform's GELU in the CPU's reduced
    precisions, against transformers in float64."""
    model = make_hf_dir(tmp_path / "hf", "pretraining", "gelu", heads=3, hidden=96)
    engine = pybert.load(tmp_path / "hf", **options)
    tokens, segments, valid_lens, positions = random_inputs(engine.config.vocab_size)
    ref_hidden, ref_mlm, ref_nsp = hf_reference(model, tokens, segments, valid_lens)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, positions)
    mask = torch.arange(30)[None, :] < valid_lens[:, None]
    assert rel_l2(encoded[mask], ref_hidden[mask]) <= bounds[0]
    rows = torch.arange(5).repeat_interleave(3)
    assert rel_l2(mlm, ref_mlm[rows, positions.reshape(-1)].reshape(5, 3, -1)) <= bounds[1]
    assert rel_l2(nsp, ref_nsp) <= bounds[2]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_hf_checkpoint_on_the_gpu(tmp_path, dtype):
    model = make_hf_dir(tmp_path / "hf", "pretraining", "gelu", heads=3, hidden=96)
    engine = pybert.load(tmp_path / "hf", device="cuda", dtype=dtype)
    tokens, segments, valid_lens, positions = random_inputs(engine.config.vocab_size)
    ref_hidden, ref_mlm, ref_nsp = hf_reference(model, tokens, segments, valid_lens)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, positions)
    mask = torch.arange(30)[None, :] < valid_lens[:, None]
    assert rel_l2(encoded.cpu()[mask], ref_hidden[mask]) <= BOUNDS[dtype]
    rows = torch.arange(5).repeat_interleave(3)
    assert rel_l2(mlm, ref_mlm[rows, positions.reshape(-1)].reshape(5, 3, -1)) <= BOUNDS[dtype]
    assert rel_l2(nsp, ref_nsp) <= BOUNDS[dtype]


_BERT_PARTS = {"embeddings", "position_table", "embedding_norm", "layers"}


@pytest.mark.parametrize("kind,parts", [("pretraining", _BERT_PARTS | {"nsp", "mlm"}),
                                        ("mlm", _BERT_PARTS | {"mlm"}),
                                        ("base", _BERT_PARTS)])
def test_the_hf_packer_gives_the_layout_of_weight_shapes(tmp_path, kind, parts):
    from safetensors.torch import load_file

    from pybert.checkpoint.huggingface import config_from_hf, pack_hf_state_dict
    from pybert.engine.weights import weight_shapes

    make_hf_dir(tmp_path / "hf", kind=kind)
    config = config_from_hf(json.loads((tmp_path / "hf" / "config.json").read_text()), tmp_path)
    packed = pack_hf_state_dict(load_file(str(tmp_path / "hf" / "model.safetensors")), config,
                                tmp_path)
    shapes = weight_shapes(config)
    assert set(packed) == {n for n, (_, part, _) in shapes.items() if part in parts}
    assert all(tuple(t.shape) == shapes[n][0] for n, t in packed.items())


def test_a_post_norm_layer_without_its_first_layernorm_is_refused(tmp_path):
    """Biases may be absent one by one, and ln1 of a pre-norm layer; a post-norm BERT layer
    without its attention LayerNorm is a broken file, refused by name."""
    from safetensors.torch import load_file, save_file

    make_hf_dir(tmp_path / "hf", kind="base")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("layer.1.attention.output.LayerNorm.weight"))
    save_file({k: v for k, v in state.items() if k != key}, str(path))
    with pytest.raises(CheckpointError, match="attention.output.LayerNorm.weight"):
        pybert.load(tmp_path / "hf")
