"""The encoder families other than BERT (RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA;
BERT alongside) and their heads, against transformers itself: small random models built here
with tokenizers trained on the shipped corpus (BPE, Unigram) or built from a vocabulary
(WordPiece); token ids against the transformers tokenizer (the tokenizers package), hidden
states, MLM logits and classifier logits against the model in float64."""

import json

import numpy as np
import pytest
import torch

import pybert
from pybert.checkpoint import CheckpointError

from helpers import BOUNDS, INT8_ENCODING_BOUND, rel_l2

transformers = pytest.importorskip("transformers")

from hf_models import FAMILIES, make_family_dir, sentences  # noqa: E402

TASKS = [(family, task) for family in FAMILIES for task in ("base", "mlm", "classify")
         if not (family == "electra" and task == "mlm")]


def texts_and_pairs(count=12, seed=3):
    """Texts and pairs short enough for the models' 64 tokens."""
    texts = [" ".join(t.split()[:12]) for t in sentences(2 * count, seed=seed)]
    return texts[:count] + [(texts[count + i], texts[i]) for i in range(count)]


def hf_tokenized(tokenizer, items):
    singles = [i for i in items if isinstance(i, str)]
    pairs = [i for i in items if isinstance(i, tuple)]
    out = tokenizer(singles)["input_ids"] if singles else []
    if pairs:
        out += tokenizer([a for a, _ in pairs], [b for _, b in pairs])["input_ids"]
    return out


def hf_forward(model, family, encoded):
    """transformers' float64 output for pybert's (ids, token types), padded as transformers
    pads (attention mask; RoBERTa's positions from the ids)."""
    width = max(len(ids) for ids, _ in encoded)
    pad = model.config.pad_token_id or 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.int64)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for b, (row, segs) in enumerate(encoded):
        ids[b, :len(row)], types[b, :len(row)], mask[b, :len(row)] = \
            torch.tensor(row), torch.tensor(segs), 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family in ("bert", "electra"):
        inputs["token_type_ids"] = types
    with torch.no_grad():
        out = model.double()(**inputs, output_hidden_states=True)
    return out, mask.bool()


@pytest.mark.parametrize("family,task", TASKS)
def test_family_matches_transformers(tmp_path, family, task):
    model, tokenizer = make_family_dir(tmp_path / "hf", family, task,
                                       num_labels=3 if task == "classify" else 1)
    text_model = pybert.TextModel.load(tmp_path / "hf")
    items = texts_and_pairs()
    encoded = text_model.tokenizer.encode_all(items, truncation="error")
    assert [ids for ids, _ in encoded] == hf_tokenized(tokenizer, items)
    if family not in ("bert", "electra"):  # the model takes no token type ids
        assert all(set(segs) == {0} for _, segs in encoded)
    out, mask = hf_forward(model, family, encoded)
    tokens = text_model.encode(items, pooling="tokens", return_type="torch")
    expected = out.hidden_states[-1]
    for b, rows in enumerate(tokens):
        assert rows.shape[0] == int(mask[b].sum())
    assert rel_l2(torch.cat(tokens), expected[mask]) <= BOUNDS[torch.float32]
    if task == "mlm":
        engine = text_model.engine
        positions = torch.tensor([[0, 1, 2]] * len(encoded))
        pad = torch.nn.utils.rnn.pad_sequence
        padded = pad([torch.tensor(row) for row, _ in encoded], batch_first=True)
        segments = pad([torch.tensor(segs) for _, segs in encoded], batch_first=True)
        lengths = torch.tensor([len(row) for row, _ in encoded])
        _, mlm, _ = engine(padded, segments, lengths, positions)
        assert rel_l2(mlm, out.logits[:, :3]) <= BOUNDS[torch.float32]
    if task == "classify":
        logits = text_model.classify(items, raw_scores=True)
        assert np.abs(logits - out.logits.numpy()).max() <= 1e-4
        probs = text_model.classify(items)  # three labels: softmax, as transformers' pipeline
        assert np.allclose(probs, torch.softmax(out.logits, -1).numpy(), atol=1e-5)
        assert text_model.classifier.labels == tuple(model.config.id2label[i] for i in range(3))
    assert ("classify" in text_model.tasks) == (task == "classify")
    assert ("fill_mask" in text_model.tasks) == (task == "mlm")


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "bert"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_matches_the_tokenizer(tmp_path, family, side):
    """Texts and pairs longer than the model are cut as transformers cuts them (longest
    first, from the side asked), and the cut sequences compute as transformers computes."""
    model, tokenizer = make_family_dir(tmp_path / "hf", family)
    text_model = pybert.TextModel.load(tmp_path / "hf")
    long = " ".join(sentences(30, seed=9))
    items = [long, (long, "a short one"), ("short", long)]
    with pytest.warns(UserWarning, match="were cut"):
        encoded = text_model.tokenizer.encode_all(items, side=side)
    tokenizer.truncation_side = side
    limit = text_model.tokenizer.max_len
    expected = [tokenizer(long, truncation=True, max_length=limit)["input_ids"],
                tokenizer(long, "a short one", truncation="longest_first",
                          max_length=limit)["input_ids"],
                tokenizer("short", long, truncation="longest_first",
                          max_length=limit)["input_ids"]]
    assert [ids for ids, _ in encoded] == expected
    assert all(len(ids) == limit for ids, _ in encoded)
    out, mask = hf_forward(model, family, encoded)
    vectors = text_model.encode(items, pooling="cls", return_type="torch", truncation_side=side)
    assert rel_l2(vectors, out.hidden_states[-1][:, 0]) <= BOUNDS[torch.float32]


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, BOUNDS[torch.bfloat16]),
                                         ("int8", INT8_ENCODING_BOUND)])
def test_roberta_in_bf16_and_int8(tmp_path, dtype, bound):
    model, _ = make_family_dir(tmp_path / "hf", "roberta", "classify", num_labels=1)
    options = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
    text_model = pybert.TextModel.load(tmp_path / "hf", **options)
    items = texts_and_pairs()
    encoded = text_model.tokenizer.encode_all(items)
    out, mask = hf_forward(model, "roberta", encoded)
    tokens = text_model.encode(items, pooling="tokens", return_type="torch")
    assert rel_l2(torch.cat(tokens), out.hidden_states[-1][mask]) <= bound
    logits = text_model.classify(items, raw_scores=True)
    assert rel_l2(torch.from_numpy(logits), out.logits) <= 10 * bound


def test_rerank_orders_by_the_classifier(tmp_path):
    make_family_dir(tmp_path / "hf", "electra", "classify", num_labels=1)
    text_model = pybert.TextModel.load(tmp_path / "hf")
    documents = sentences(9, seed=4)
    query = "how is a list sorted"
    scores = text_model.classify([(query, d) for d in documents])[:, 0]
    logits = text_model.classify([(query, d) for d in documents], raw_scores=True)[:, 0]
    assert np.allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-6)  # one label: sigmoid
    ranked = text_model.rerank(query, documents)
    assert [r["index"] for r in ranked] == list(np.argsort(-scores, kind="stable"))
    assert [r["score"] for r in ranked] == pytest.approx(sorted(scores, reverse=True))
    assert len(text_model.rerank(query, documents, top_k=3)) == 3
    with pytest.raises(ValueError, match="at least one"):
        text_model.rerank(query, [])
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        text_model.rerank(query, ["a", 5])
    with pytest.raises(ValueError, match="top_k"):
        text_model.rerank(query, documents, top_k=0)


def test_tasks_a_model_lacks_are_refused(tmp_path):
    make_family_dir(tmp_path / "cls3", "roberta", "classify", num_labels=3)
    three = pybert.TextModel.load(tmp_path / "cls3")
    with pytest.raises(ValueError, match="one output"):
        three.rerank("q", ["d"])
    make_family_dir(tmp_path / "base", "distilbert", "base")
    base = pybert.TextModel.load(tmp_path / "base")
    with pytest.raises(ValueError, match="no sequence classifier"):
        base.classify(["a"])
    with pytest.raises(ValueError, match="no MLM head"):
        base.encode_sparse(["a"])
    with pytest.raises(ValueError, match="dimensions"):
        base.encode(["a"], dimensions=base.dim + 1)
    assert base.encode(["a text"], dimensions=8).shape == (1, 8)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family,changes,message", [
    ("roberta", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("bert", {"is_decoder": True}, "a decoder"),
    ("bert", {"model_type": "mpnet"}, "model_type 'mpnet' is not served"),
    ("distilbert", {"activation": "silu"}, "activation 'silu' is not served"),
    ("roberta", {"id2label": {"0": "a", "1": "b"}}, "id2label has 2 labels"),
])
def test_configs_it_cannot_compute_are_refused(tmp_path, family, changes, message):
    make_family_dir(tmp_path / "hf", family, "classify")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(CheckpointError, match=message):
        pybert.TextModel.load(tmp_path / "hf")


def test_a_classifier_config_without_its_weights_is_refused(tmp_path):
    make_family_dir(tmp_path / "hf", "roberta", "base")
    _edit_config(tmp_path / "hf", architectures=["RobertaForSequenceClassification"])
    with pytest.raises(CheckpointError, match="lack classifier.dense.weight"):
        pybert.TextModel.load(tmp_path / "hf")


@pytest.mark.parametrize("task", ["base", "classify"])
def test_electra_with_narrower_embeddings_is_projected(tmp_path, task):
    """ELECTRA-small's form: embeddings of 16 normalised at their width, then projected to the
    hidden 48 (embeddings_project), in fp32 against float64 and in bf16 / int8 bounds."""
    model, _ = make_family_dir(tmp_path / "hf", "electra", task, embedding_size=16)
    text_model = pybert.TextModel.load(tmp_path / "hf")
    assert text_model.engine.config.embedding_size == 16
    items = texts_and_pairs()
    encoded = text_model.tokenizer.encode_all(items, truncation="error")
    out, mask = hf_forward(model, "electra", encoded)
    expected = out.hidden_states[-1][mask]
    tokens = text_model.encode(items, pooling="tokens", return_type="torch")
    assert rel_l2(torch.cat(tokens), expected) <= BOUNDS[torch.float32]
    if task == "classify":
        assert np.abs(text_model.classify(items, raw_scores=True) - out.logits.numpy()).max() \
            <= 1e-4
    for options, bound in (({"dtype": torch.bfloat16}, BOUNDS[torch.bfloat16]),
                           ({"quantize": "int8"}, INT8_ENCODING_BOUND)):
        other = pybert.TextModel.load(tmp_path / "hf", **options)
        tokens = other.encode(items, pooling="tokens", return_type="torch")
        assert rel_l2(torch.cat(tokens), expected) <= bound
    weights = json.loads((tmp_path / "hf" / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    state = {k: v for k, v in state.items() if "embeddings_project" not in k}
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    assert weights["embedding_size"] == 16
    with pytest.raises((CheckpointError, ValueError, RuntimeError),
                       match="embedding_project"):
        pybert.TextModel.load(tmp_path / "hf")


def test_an_electra_discriminator_checkpoint_serves_its_encoder(tmp_path):
    """ElectraForPreTraining (the discriminator of the released checkpoints): its encoder
    served, the replaced-token head ignored."""
    make_family_dir(tmp_path / "hf", "electra", "base")
    model_dir = tmp_path / "disc"
    config = transformers.ElectraConfig.from_pretrained(tmp_path / "hf")
    torch.manual_seed(1)
    disc = transformers.ElectraForPreTraining(config).eval()
    disc.save_pretrained(model_dir)
    transformers.ElectraTokenizerFast.from_pretrained(tmp_path / "hf").save_pretrained(model_dir)
    text_model = pybert.TextModel.load(model_dir)
    items = texts_and_pairs(4)
    out, mask = hf_forward(disc.electra, "electra", text_model.tokenizer.encode_all(items))
    tokens = text_model.encode(items, pooling="tokens", return_type="torch")
    assert rel_l2(torch.cat(tokens), out.last_hidden_state[mask]) <= BOUNDS[torch.float32]
    assert text_model.tasks == ["embed", "embed_all"]


@pytest.mark.parametrize("family,pooling", [("roberta", "mean"), ("bert", "cls")])
def test_long_texts_in_overlapping_windows(tmp_path, family, pooling):
    """encode_long: a text beyond max_len as windows of max_len tokens (the template's special
    tokens around each) overlapping by `overlap`, each run by transformers here, their pooled
    vectors averaged (token-weighted under mean pooling); short texts as encode gives them."""
    model, tokenizer = make_family_dir(tmp_path / "hf", family)
    text_model = pybert.TextModel.load(tmp_path / "hf")
    long = " ".join(sentences(20, seed=12))
    short = "a short text"
    vectors = text_model.encode_long([long, short], pooling=pooling, overlap=10,
                                     return_type="torch")
    ids = tokenizer(long)["input_ids"]
    limit = text_model.tokenizer.max_len
    body, width = ids[1:-1], limit - 2
    assert len(ids) > 3 * limit
    starts = list(range(0, len(body) - width, width - 10)) + [len(body) - width]
    windows = [([ids[0]] + body[s:s + width] + [ids[-1]], [0] * limit) for s in starts]
    out, mask = hf_forward(model, family, windows)
    hidden = out.last_hidden_state
    pooled = hidden.mean(1) if pooling == "mean" else hidden[:, 0]  # every window is full
    assert rel_l2(vectors[0], pooled.mean(0)) <= BOUNDS[torch.float32]
    assert torch.allclose(vectors[1], text_model.encode(short, pooling=pooling,
                                                        return_type="torch"), atol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        text_model.encode_long(long, overlap=limit)
    with pytest.raises(TypeError, match="no pairs"):
        text_model.encode_long([("a", "b")])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_families_on_the_gpu(tmp_path, family, dtype):
    """The same checkpoints on the CUDA engine, each dtype within its bound against float64;
    the classifier's logits and (RoBERTa) its projection-free path, ELECTRA's narrower
    embeddings projected."""
    options = {"embedding_size": 16} if family == "electra" else {}
    model, _ = make_family_dir(tmp_path / "hf", family, "classify", num_labels=2, **options)
    text_model = pybert.TextModel.load(tmp_path / "hf", device="cuda", dtype=dtype)
    items = texts_and_pairs()
    encoded = text_model.tokenizer.encode_all(items, truncation="error")
    out, mask = hf_forward(model, family, encoded)
    tokens = text_model.encode(items, pooling="tokens", return_type="torch")
    assert rel_l2(torch.cat(tokens), out.hidden_states[-1][mask]) <= BOUNDS[dtype]
    logits = torch.from_numpy(text_model.classify(items, raw_scores=True))
    assert rel_l2(logits, out.logits) <= 10 * BOUNDS[dtype]


@pytest.mark.cuda
def test_sparse_and_rerank_on_the_gpu(tmp_path):
    make_family_dir(tmp_path / "mlm", "bert", "mlm")
    cpu = pybert.TextModel.load(tmp_path / "mlm")
    gpu = pybert.TextModel.load(tmp_path / "mlm", device="cuda", dtype=torch.float32)
    texts = [" ".join(t.split()[:20]) for t in sentences(6, seed=8)]
    for a, b in zip(cpu.encode_sparse(texts), gpu.encode_sparse(texts)):
        top_a = a.indices[np.argsort(-a.values)[:10]]
        top_b = b.indices[np.argsort(-b.values)[:10]]
        assert set(top_a) == set(top_b)


def test_a_tokenizer_json_of_xlm_roberta_size_loads(tmp_path):
    """XLM-RoBERTa's tokenizer.json (250k pieces) is 17 MB: a file of that size is read (the
    cap on what reading a stranger's tokenizer may cost is 64 MiB), and one beyond it refused."""
    make_family_dir(tmp_path / "hf", "xlm-roberta", "base")
    path = tmp_path / "hf" / "tokenizer.json"
    text = path.read_text()
    path.write_text(text + " " * (17 << 20))  # whitespace: the same JSON, 17 MB larger
    model = pybert.TextModel.load(tmp_path / "hf")
    assert model.tokenizer.encode_all(["a text"])[0][0][0] == 0  # <s>
    path.write_text(text + " " * (65 << 20))
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        pybert.TextModel.load(tmp_path / "hf")
