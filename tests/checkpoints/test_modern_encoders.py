"""Modern encoders (ModernBERT, NomicBERT, GTE): rotary positions, gated FFNs, pre-norm layers,
absent biases and ModernBERT's windowed layers, against transformers itself. Small random
models of each family are built here; every sequence's float64 reference is run alone (no
padding: transformers' eager attention turns a padded row of a sliding-window layer into NaN,
which its masked softmax then multiplies by zero) and compared with the engine's packed,
ragged batch, lengths from 1 to beyond the local window."""

import json

import pytest
import torch

import pybert
from pybert.checkpoint import CheckpointError
from pybert.checkpoint.huggingface import read_huggingface
from pybert.engine import Engine

from helpers import BOUNDS, INT8_ENCODING_BOUND, rel_l2

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from hf_models import MODERN_MAX_POSITIONS as MAX_POSITIONS  # noqa: E402
from hf_models import family_tokenizer, make_modern, sentences  # noqa: E402

FAMILIES = ("modernbert", "nomic_bert", "gte")
LENGTHS = [1, 17, 127, 129, 300, 1000]  # ModernBERT's window here: |i - j| <= 64


def reference(model, ids):
    """transformers' float64 last hidden state of one unpadded sequence."""
    model = model.double()
    with torch.no_grad():
        return model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def random_sequences(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def engine_rows(engine, sequences):
    """The engine's hidden states of the sequences, one packed ragged batch."""
    width = max(map(len, sequences))
    tokens = torch.zeros((len(sequences), width), dtype=torch.int64)
    for b, ids in enumerate(sequences):
        tokens[b, :len(ids)] = torch.tensor(ids)
    lengths = torch.tensor([len(ids) for ids in sequences])
    encoded, _, _ = engine(tokens, torch.zeros_like(tokens), lengths)
    return [encoded[b, :n] for b, n in enumerate(lengths.tolist())]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_transformers_from_1_to_1000_tokens(tmp_path, family):
    model = make_modern(tmp_path, family)
    checkpoint = read_huggingface(tmp_path)
    engine = Engine(checkpoint.config, checkpoint.weights)
    sequences = random_sequences(model.config.vocab_size, LENGTHS)
    rows = engine_rows(engine, sequences)
    for ids, got in zip(sequences, rows):
        assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32], len(ids)


def test_modernbert_layers_are_read_as_data(tmp_path):
    make_modern(tmp_path, "modernbert")
    config = read_huggingface(tmp_path).config
    assert (config.pre_norm, config.ffn_gated, config.local_window, config.global_every) == \
        (True, True, 64, 3)
    assert (config.rotary_base, config.local_rotary_base) == (160000.0, 10000.0)
    weights = read_huggingface(tmp_path).weights
    assert "layers.0.ln1_weight" not in weights and "layers.1.ln1_weight" in weights
    assert not any(name.endswith("_bias") for name in weights)  # norm_bias, mlp_bias: False


@pytest.mark.parametrize("options", [
    dict(norm_bias=True, attention_bias=True, mlp_bias=True),
    dict(local_attention=16, global_attn_every_n_layers=2, hidden_activation="silu"),
])
def test_modernbert_variants(tmp_path, options):
    model = make_modern(tmp_path, "modernbert", seed=1, **options)
    checkpoint = read_huggingface(tmp_path)
    engine = Engine(checkpoint.config, checkpoint.weights)
    sequences = random_sequences(model.config.vocab_size, [9, 40, 200], seed=2)
    for ids, got in zip(sequences, engine_rows(engine, sequences)):
        assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32]


@pytest.mark.parametrize("family", FAMILIES)
def test_mlm_logits(tmp_path, family):
    model = make_modern(tmp_path, family, mlm=True)
    checkpoint = read_huggingface(tmp_path)
    engine = Engine(checkpoint.config, checkpoint.weights)
    ids = random_sequences(model.config.vocab_size, [150])[0]
    positions = torch.tensor([[0, 70, 149]])
    _, mlm, _ = engine(torch.tensor([ids]), torch.zeros((1, 150), dtype=torch.int64),
                       torch.tensor([150]), positions)
    with torch.no_grad():
        logits = model.double()(input_ids=torch.tensor([ids])).logits[0, [0, 70, 149]]
    assert rel_l2(mlm[0], logits) <= BOUNDS[torch.float32]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modernbert_sequence_classifier(tmp_path, pooling):
    """ModernBertForSequenceClassification: cls or mean pooling, then dense, activation,
    LayerNorm and the classifier, as transformers computes them (each text alone)."""
    tokenizer = family_tokenizer("roberta", tmp_path)
    model = make_modern(tmp_path, "modernbert", tokenizer=tokenizer, classify=True,
                        num_labels=3, classifier_pooling=pooling, classifier_bias=True)
    text_model = pybert.TextModel.load(tmp_path)
    assert "classify" in text_model.tasks and "fill_mask" not in text_model.tasks
    texts = sentences(4, seed=5) + [" ".join(sentences(40, seed=6))[:3000]]
    logits = torch.from_numpy(text_model.classify(texts, raw_scores=True))
    model = model.double()
    for text, got in zip(texts, logits):
        ids = tokenizer(text, truncation=True, max_length=MAX_POSITIONS)["input_ids"]
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits[0]
        assert rel_l2(got, expected) <= BOUNDS[torch.float32]
    assert len(tokenizer(texts[-1])["input_ids"]) > 200  # beyond the local window


@pytest.mark.parametrize("family", ["nomic_bert", "gte"])
def test_module_names_on_disk_are_read_too(tmp_path, family):
    """transformers writes NomicBERT's and GTE's tensors under their original names; a file of
    its module names (q_proj, gate_proj, post_attention_layernorm) computes the same."""
    model = make_modern(tmp_path / "a", family)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "b" / "model.safetensors"))
    sequences = random_sequences(model.config.vocab_size, [5, 80])
    outputs = []
    for folder in ("a", "b"):
        checkpoint = read_huggingface(tmp_path / folder)
        outputs.append(engine_rows(Engine(checkpoint.config, checkpoint.weights), sequences))
    for a, b, ids in zip(*outputs, sequences):
        assert torch.equal(a, b)
        assert rel_l2(a, reference(model, ids)) <= BOUNDS[torch.float32]


def test_nomic_own_config_keys(tmp_path):
    """nomic's own config spelling (n_embd, rotary_emb_base, activation_function 'swiglu')
    reads as transformers' does."""
    model = make_modern(tmp_path, "nomic_bert", rope_parameters={"rope_theta": 1000.0,
                                                                 "rope_type": "default"})
    hf = json.loads((tmp_path / "config.json").read_text())
    own = {"model_type": "nomic_bert", "vocab_size": hf["vocab_size"], "n_embd": 64,
           "n_head": 4, "n_layer": 2, "n_inner": 96, "n_positions": MAX_POSITIONS,
           "activation_function": "swiglu", "layer_norm_epsilon": 1e-12,
           "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False,
           "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
           "prenorm": False, "type_vocab_size": 2}
    (tmp_path / "config.json").write_text(json.dumps(own))
    checkpoint = read_huggingface(tmp_path)
    ids = random_sequences(model.config.vocab_size, [33])[0]
    got = engine_rows(Engine(checkpoint.config, checkpoint.weights), [ids])[0]
    assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32]


def test_dynamic_ntk_scaling_is_the_default_within_max_len(tmp_path):
    """transformers' dynamic NTK scaling changes the frequencies only beyond
    max_position_embeddings, which is the longest input served."""
    model = make_modern(tmp_path, "gte", rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                          "rope_theta": 20000.0})
    checkpoint = read_huggingface(tmp_path)
    sequences = random_sequences(model.config.vocab_size, [3, 1000])
    for ids, got in zip(sequences, engine_rows(Engine(checkpoint.config, checkpoint.weights),
                                               sequences)):
        assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32]


def test_alibabas_gte_config_with_fixed_ntk_scaling(tmp_path):
    """gte-*-en-v1.5's own config (model_type "new", rope_theta, rope_scaling {"type": "ntk",
    "factor": 2}): Alibaba's NTKScalingRotaryEmbedding always scales, frequencies of
    base * factor divided by factor^(2/d). The reference is transformers' GteModel with those
    frequencies (its architecture is the same)."""
    model = make_modern(tmp_path, "gte", type_vocab_size=0)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.pop("rope_parameters")
    hf.update(model_type="new", architectures=["NewModel"], rope_theta=500000,
              rope_scaling={"type": "ntk", "factor": 2.0}, position_embedding_type="rope",
              layer_norm_type="layer_norm", pack_qkv=True, logn_attention_scale=False)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    d = 64 // 4
    inv_freq = 1.0 / ((500000 * 2.0) ** (torch.arange(0, d, 2).float() / d)) / 2.0 ** (2 / d)
    model.rotary_emb.inv_freq = inv_freq
    checkpoint = read_huggingface(tmp_path)
    assert checkpoint.config.rotary_ntk_factor == 2.0
    sequences = random_sequences(model.config.vocab_size, [5, 700])
    for ids, got in zip(sequences, engine_rows(Engine(checkpoint.config, checkpoint.weights),
                                               sequences)):
        assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32]


def test_gte_without_token_types(tmp_path):
    model = make_modern(tmp_path, "gte", type_vocab_size=0)
    checkpoint = read_huggingface(tmp_path)
    ids = random_sequences(model.config.vocab_size, [21])[0]
    got = engine_rows(Engine(checkpoint.config, checkpoint.weights), [ids])[0]
    assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32]


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, BOUNDS[torch.bfloat16]),
                                         ("int8", INT8_ENCODING_BOUND)])
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_and_int8(tmp_path, family, dtype, bound):
    model = make_modern(tmp_path, family)
    checkpoint = read_huggingface(tmp_path)
    options = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
    engine = Engine(checkpoint.config, checkpoint.weights, **options)
    sequences = random_sequences(model.config.vocab_size, [1, 60, 300])
    got = torch.cat(engine_rows(engine, sequences))
    expected = torch.cat([reference(model, ids) for ids in sequences])
    assert rel_l2(got, expected) <= bound


@pytest.mark.parametrize("family", FAMILIES)
def test_text_model_with_the_family_tokenizer(tmp_path, family):
    """Texts in: the directory's tokenizer gives transformers' ids, the encoder its states."""
    tokenizer = family_tokenizer("bert" if family == "nomic_bert" else "roberta", tmp_path)
    model = make_modern(tmp_path, family, tokenizer=tokenizer)
    text_model = pybert.TextModel.load(tmp_path)
    texts = sentences(6, seed=4)
    encoded = text_model.tokenizer.encode_all(texts)
    assert [ids for ids, _ in encoded] == tokenizer(texts)["input_ids"]
    tokens = text_model.encode(texts, pooling="tokens", return_type="torch")
    for (ids, _), got in zip(encoded, tokens):
        assert rel_l2(got, reference(model, ids)) <= BOUNDS[torch.float32]
    assert text_model.tokenizer.max_len == MAX_POSITIONS


@pytest.mark.parametrize("family,changes,message", [
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                           "rope_theta": 1e4},
                                        "sliding_attention": {"rope_type": "default",
                                                              "rope_theta": 1e4}}},
     "rotary scaling"),
    ("modernbert", {"layer_types": ["sliding_attention", "full_attention",
                                    "sliding_attention", "full_attention"]}, "layer_types"),
    ("modernbert", {"architectures": ["ModernBertForSequenceClassification"]},
     "lack head.dense.weight"),
    ("nomic_bert", {"architectures": ["NomicBertForSequenceClassification"]},
     "sequence-classification head is not served"),
    ("modernbert", {"hidden_activation": "gelu_pytorch_tanh"}, "hidden_activation"),
    ("gte", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "rotary scaling"),
    ("gte", {"model_type": "new", "rope_theta": 1e4, "rope_parameters": None,
             "rope_scaling": {"type": "ntk", "factor": 2.0, "mixed_b": 0.5}}, "rope_scaling"),
    ("gte", {"logn_attention_scale": True}, "logn_attention_scale"),
    ("nomic_bert", {"rotary_emb_fraction": 0.5}, "rotary_emb_fraction"),
    ("nomic_bert", {"rope_parameters": {"rope_theta": "big", "rope_type": "default"}},
     "rope_theta must be a finite number"),
    ("modernbert", {"local_attention": -4}, "local_attention"),
    ("gte", {"num_attention_heads": 5}, "multiple of num_heads"),
    ("gte", {"max_position_embeddings": 10**9}, "positions served with rotary"),
])
def test_variants_it_cannot_compute_are_refused(tmp_path, family, changes, message):
    make_modern(tmp_path, family)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **changes}))
    with pytest.raises(CheckpointError, match=message):
        read_huggingface(tmp_path)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_families_on_the_gpu(tmp_path, family, dtype):
    """The CUDA engine: rotary, gated and pre-norm kernels, FlashAttention-2's window (fp16,
    bf16) and the CUDA-core kernel's (fp32), each dtype within its bound against float64."""
    model = make_modern(tmp_path, family)
    checkpoint = read_huggingface(tmp_path)
    engine = Engine(checkpoint.config, checkpoint.weights, device="cuda", dtype=dtype)
    sequences = random_sequences(model.config.vocab_size, LENGTHS)
    got = torch.cat(engine_rows(engine, sequences)).cpu()
    expected = torch.cat([reference(model, ids) for ids in sequences])
    assert rel_l2(got, expected) <= BOUNDS[dtype]


@pytest.mark.parametrize("family", ["modernbert", "nomic_bert"])
def test_a_sentence_transformers_wrapper(tmp_path, family):
    """The family inside a sentence-transformers directory (pooling, normalisation, a prompt)
    gives the vectors sentence-transformers gives."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    tokenizer = family_tokenizer("bert" if family == "nomic_bert" else "roberta", tmp_path)
    make_modern(tmp_path / "hf", family, tokenizer=tokenizer)
    transformer = Transformer(str(tmp_path / "hf"), max_seq_length=256)
    pooling = Pooling(transformer.get_word_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()],
                                prompts={"query": "search_query: "})
    model.save(str(tmp_path / "st"))
    text_model = pybert.TextModel.load(tmp_path / "st")
    texts = sentences(5, seed=7)
    expected = model.encode(texts, prompt_name="query", convert_to_tensor=True)
    got = text_model.encode(texts, prompt_name="query", return_type="torch")
    assert rel_l2(got, expected) <= BOUNDS[torch.float32]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_modernbert_cross_encoder_reranks_as_sentence_transformers(tmp_path):
    """A reranker of gte-reranker-modernbert's form: a CrossEncoder over a one-label
    ModernBertForSequenceClassification (short pairs: inside the local window, where the
    reference's padded rows stay finite)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import CrossEncoder

    tokenizer = family_tokenizer("roberta", tmp_path / "hf")
    make_modern(tmp_path / "hf", "modernbert", tokenizer=tokenizer, classify=True,
                num_labels=1, classifier_pooling="mean")
    reference = CrossEncoder(str(tmp_path / "hf"), device="cpu", local_files_only=True)
    reference.save(str(tmp_path / "ce"))
    texts = [" ".join(t.split()[:8]) for t in sentences(9, seed=8)]
    query, documents = texts[0], texts[1:]
    expected = reference.rank(query, documents, batch_size=4)
    ranked = pybert.TextModel.load(tmp_path / "ce").rerank(query, documents)
    assert [r["index"] for r in ranked] == [r["corpus_id"] for r in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ranked, expected)) <= 1e-4


def test_the_batch_job_encodes_long_texts(tmp_path):
    """`pybert encode`'s job over a ModernBERT with texts beyond its local window: the rows
    the Python API gives, in input order."""
    import numpy as np

    from pybert.job import run_encode_job

    make_modern(tmp_path / "m", "modernbert", tokenizer=family_tokenizer("roberta", tmp_path))
    texts = sentences(6, seed=13) + [" ".join(sentences(30, seed=14))[:2400]] * 2
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    engine = pybert.load(tmp_path / "m")
    result = run_encode_job(engine, tmp_path / "in.txt", tmp_path / "out.npy", "m",
                            pooling="mean", batch_tokens=1200, chunk_size=3, progress=False)
    assert result["rows"] == len(texts)
    expected = pybert.TextModel.load(tmp_path / "m").encode(texts, pooling="mean")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6)
