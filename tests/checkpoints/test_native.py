"""save / load / load_model: round trips, and every broken checkpoint gives a clear error."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import pybert
from pybert.checkpoint import CheckpointError
from pybert.config import BertConfig
from pybert.tokenization import Vocab

from helpers import random_batch, random_model

CONFIG = BertConfig(40, 32, 64, 2, 2, max_len=24)
VOCAB = Vocab.from_tokens(["<unk>", "<pad>", "<mask>", "<cls>", "<sep>"]
                          + [f"w{i}" for i in range(35)])


@pytest.fixture()
def saved(tmp_path):
    net = random_model(CONFIG, seed=5)
    path = pybert.save(net, tmp_path / "ckpt", vocab=VOCAB)
    return net, path


def test_round_trip(saved):
    net, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors",
                                                      "vocab.txt"]
    engine = pybert.load(path)
    assert engine.config == CONFIG
    assert pybert.text_model_of(engine).vocab.idx_to_token == VOCAB.idx_to_token
    tokens, segments, valid_lens, pred = random_batch(CONFIG, 3, 24)
    expected = pybert.Engine.from_model(net)(tokens, segments, valid_lens, pred)
    for a, e in zip(engine(tokens, segments, valid_lens, pred), expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    model, vocab = pybert.load_model(path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert vocab.idx_to_token == VOCAB.idx_to_token


def test_save_without_vocab_and_with_a_token_list(tmp_path):
    net = random_model(CONFIG)
    with pytest.raises(ValueError, match="this engine has no vocabulary"):
        pybert.text_model_of(pybert.load(pybert.save(net, tmp_path / "a")))
    engine = pybert.load(pybert.save(net, tmp_path / "b", vocab=VOCAB.idx_to_token))
    assert pybert.text_model_of(engine).vocab.idx_to_token == VOCAB.idx_to_token
    with pytest.raises(ValueError, match="vocab has 3 tokens"):
        pybert.save(net, tmp_path / "c", vocab=["<unk>", "a", "b"])


def test_weights_are_plain_safetensors_with_the_book_keys(saved):
    net, path = saved
    state = load_file(str(path / "model.safetensors"))
    assert set(state) == set(net.state_dict())
    document = json.loads((path / "config.json").read_text())
    assert document["model"]["num_hiddens"] == 32 and document["model"]["num_heads"] == 2


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pybert.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pybert.load(tmp_path / "empty")


def test_a_file_instead_of_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="must be a directory"):
        pybert.load(tmp_path / "file")


def test_missing_weights(saved):
    _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        pybert.load(path)


def test_config_that_disagrees_with_the_weights(saved):
    _, path = saved
    document = json.loads((path / "config.json").read_text())
    document["model"]["num_layers"] = 3
    (path / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="missing encoder.blks.2"):
        pybert.load(path)
    document["model"]["num_layers"] = 2
    document["model"]["ffn_num_hiddens"] = 65
    (path / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="has shape"):
        pybert.load_model(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle", "empty"])
def test_corrupt_weights(saved, damage):
    _, path = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x07" * 4096)
    elif damage == "pickle":
        weights.write_bytes(pickle.dumps({"encoder.pos_embedding": [1, 2, 3]}))
    else:
        weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        pybert.load(path)


def test_weights_with_nan_or_integers(saved):
    net, path = saved
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["mlm.mlp.3.bias"][0] = float("nan")
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        pybert.load(path)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["nsp.output.bias"] = torch.tensor([1, 2])
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not floating point"):
        pybert.load(path)


def test_extra_or_missing_tensors(saved):
    net, path = saved
    state = dict(net.state_dict())
    state["surprise"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected surprise"):
        pybert.load(path)
    del state["surprise"], state["hidden.0.bias"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing hidden.0.bias"):
        pybert.load(path)


_HEAD = '{"format": "pybert-d2l-bert", "format_version": 1, '


@pytest.mark.parametrize("name,text,match", [
    ("config.json", "{not json", "not valid JSON"),
    ("config.json", "[]", "not a pybert checkpoint"),
    ("config.json", '{"format": "something-else"}', "not a pybert checkpoint"),
    ("config.json", '{"format": "pybert-d2l-bert", "format_version": 99, "model": {}}',
     "format_version"),
    ("config.json", _HEAD + '"model": {"vocab_size": 40}}', "missing fields"),
    ("config.json", _HEAD + '"model": {"vocab_size": 40, "num_hiddens": 30, '
     '"ffn_num_hiddens": 64, "num_heads": 4, "num_layers": 2}}', "multiple of num_heads"),
    ("config.json", _HEAD + '"model": {"vocab_size": -1, "num_hiddens": 32, '
     '"ffn_num_hiddens": 64, "num_heads": 4, "num_layers": 2}}', "positive integer"),
    ("config.json", _HEAD + '"model": {"vocab_size": 40, "num_hiddens": 32, '
     '"ffn_num_hiddens": 64, "num_heads": 4, "num_layers": 2, "position_offset": -1}}',
     "position_offset"),
    ("vocab.txt", "<unk>\n<pad>\n", "has 2 tokens"),
    ("vocab.txt", "<pad>\n" * 40, "must start with '<unk>'"),
    ("vocab.txt", "<unk>\n" + "a\n" * 39, "repeats tokens"),
    ("vocab.txt", "<unk>\n\nb\n", "empty line"),
])
def test_corrupt_config_or_vocab(saved, name, text, match):
    _, path = saved
    (path / name).write_text(text)
    with pytest.raises(CheckpointError, match=match):
        pybert.load(path)


def test_vocab_file_that_is_not_utf8(saved):
    _, path = saved
    (path / "vocab.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError):
        pybert.load(path)


def test_overwriting_a_checkpoint_replaces_it(tmp_path):
    first, second = random_model(CONFIG, seed=1), random_model(CONFIG, seed=2)
    pybert.save(first, tmp_path / "ckpt", vocab=VOCAB)
    pybert.save(second, tmp_path / "ckpt")
    model, vocab = pybert.load_model(tmp_path / "ckpt")
    assert vocab is None
    torch.testing.assert_close(model.state_dict()["hidden.0.weight"],
                               second.state_dict()["hidden.0.weight"], rtol=0, atol=0)
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]
