"""Small random Hugging Face BERT directories built with transformers (no downloads), the
inputs to run them on and their float64 reference outputs: what the checkpoint tests share."""

import json
import random

import torch
import transformers

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences(count=300, seed=0):
    """Real English sentences: Python's documentation topics."""
    from pybert.train.data import builtin_corpus

    rng = random.Random(seed)
    words = [" ".join(s) for p in builtin_corpus() for s in p if 3 <= len(s) <= 40]
    rng.shuffle(words)
    return words[:count]


def build_vocab_file(path):
    from collections import Counter

    counts = Counter(w for s in sentences(2000, seed=1) for w in s.split())
    chars = sorted({c for w in counts for c in w})
    words = [w for w, n in counts.most_common(400) if len(w) > 1]
    tokens = SPECIAL + chars + ["##" + c for c in chars] + words
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return len(dict.fromkeys(tokens))


def make_hf_dir(path, kind="pretraining", hidden_act="gelu", heads=3, hidden=48,
                type_vocab_size=2):
    """A random Hugging Face BERT saved as safetensors, with its WordPiece tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = build_vocab_file(path / "vocab.txt")
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden,
                                     num_hidden_layers=2, num_attention_heads=heads,
                                     intermediate_size=80, max_position_embeddings=64,
                                     hidden_act=hidden_act, type_vocab_size=type_vocab_size,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    cls = {"pretraining": transformers.BertForPreTraining, "mlm": transformers.BertForMaskedLM,
           "base": transformers.BertModel}[kind]
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    transformers.BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    return model


def hf_reference(model, tokens, segments, valid_lens):
    """last hidden state, MLM logits at every position (or None), NSP logits (or None), in
    float64."""
    ref = model.double()
    mask = (torch.arange(tokens.shape[1])[None, :] < valid_lens[:, None]).long()
    with torch.no_grad():
        out = ref(input_ids=tokens, attention_mask=mask, token_type_ids=segments,
                  output_hidden_states=True)
    hidden = out.hidden_states[-1] if hasattr(out, "hidden_states") and out.hidden_states \
        else out.last_hidden_state
    mlm = getattr(out, "prediction_logits", getattr(out, "logits", None))
    nsp = getattr(out, "seq_relationship_logits", None)
    return hidden, mlm, nsp


def random_inputs(vocab_size, batch=5, seq_len=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, vocab_size, (batch, seq_len), generator=g)
    valid_lens = torch.randint(1, seq_len + 1, (batch,), generator=g)
    valid_lens[0] = seq_len
    segments = (torch.arange(seq_len)[None, :] >= valid_lens[:, None] // 2).long()
    positions = (torch.rand(batch, 3, generator=g) * valid_lens[:, None]).long()
    return tokens, segments, valid_lens, positions


# -- the other encoder families -----------------------------------------------------------------

FAMILY_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_TRAINED: dict = {}


def _trained_tokenizer(kind: str):
    """A tokenizer trained here on the shipped corpus: "bpe" (byte-level, RoBERTa's) or
    "unigram" (SentencePiece's, XLM-R's and CamemBERT's); cached per process."""
    if kind not in _TRAINED:
        from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer

        texts = sentences(2000, seed=1)
        if kind == "bpe":
            tokenizer = ByteLevelBPETokenizer()
            tokenizer.train_from_iterator(texts, vocab_size=600, special_tokens=FAMILY_SPECIAL)
        else:
            tokenizer = SentencePieceUnigramTokenizer()
            tokenizer.train_from_iterator(texts, vocab_size=600, special_tokens=FAMILY_SPECIAL,
                                          unk_token="<unk>")
        _TRAINED[kind] = tokenizer._tokenizer.to_str()
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_TRAINED[kind])


def family_tokenizer(family: str, folder):
    """The family's transformers tokenizer, built from a vocabulary or trained here."""
    if family in ("bert", "distilbert", "electra"):
        build_vocab_file(folder / "vocab.txt")
        cls = {"bert": transformers.BertTokenizerFast,
               "distilbert": transformers.DistilBertTokenizerFast,
               "electra": transformers.ElectraTokenizerFast}[family]
        return cls(str(folder / "vocab.txt"))
    if family == "roberta":
        return transformers.RobertaTokenizerFast(tokenizer_object=_trained_tokenizer("bpe"))
    cls = {"xlm-roberta": transformers.XLMRobertaTokenizerFast,
           "camembert": transformers.CamembertTokenizerFast}[family]
    return cls(tokenizer_object=_trained_tokenizer("unigram"))


FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra")
_MODELS = {
    "bert": (transformers.BertConfig, "Bert"),
    "roberta": (transformers.RobertaConfig, "Roberta"),
    "xlm-roberta": (transformers.XLMRobertaConfig, "XLMRoberta"),
    "camembert": (transformers.CamembertConfig, "Camembert"),
    "distilbert": (transformers.DistilBertConfig, "DistilBert"),
    "electra": (transformers.ElectraConfig, "Electra"),
}


def make_family_dir(path, family: str, task: str = "base", num_labels: int = 1, hidden=48,
                    heads=3, seed=0, **config_options):
    """A random Hugging Face model of ``family`` (task "base", "mlm" or "classify") saved as
    safetensors with its tokenizer; the model (eval mode) and the tokenizer are returned."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = family_tokenizer(family, path)
    config_cls, prefix = _MODELS[family]
    sizes = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2,
                 num_attention_heads=heads, intermediate_size=80, max_position_embeddings=64)
    if family == "distilbert":
        sizes = dict(vocab_size=len(tokenizer), dim=hidden, n_layers=2, n_heads=heads,
                     hidden_dim=80, max_position_embeddings=64)
    if family in ("roberta", "xlm-roberta", "camembert"):
        sizes.update(max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                     type_vocab_size=1)
    if family == "electra":
        sizes.update(embedding_size=config_options.pop("embedding_size", hidden))
    config = config_cls(**sizes, num_labels=num_labels, attn_implementation="eager",
                        **config_options)
    suffix = {"base": "Model", "mlm": "ForMaskedLM", "classify": "ForSequenceClassification"}
    torch.manual_seed(seed)
    model = getattr(transformers, prefix + suffix[task])(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif "classifier" in name or "out_proj" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return model, tokenizer


# -- modern encoders (ModernBERT, NomicBERT, GTE) -------------------------------------------------

MODERN_MAX_POSITIONS = 1100


def make_modern(path, family, seed=0, tokenizer=None, **options):
    """A random ``family`` model (its base model, or ForMaskedLM with mlm=True) saved by
    transformers; the model (eval, eager attention) is returned."""
    mlm = options.pop("mlm", False)
    classify = options.pop("classify", False)
    vocab = len(tokenizer) if tokenizer is not None else 120
    sizes = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                 max_position_embeddings=MODERN_MAX_POSITIONS, attn_implementation="eager")
    if family == "modernbert":
        ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                   sep_token_id=2)
        if tokenizer is not None:
            ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                       eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id,
                       sep_token_id=tokenizer.sep_token_id)
        config = transformers.ModernBertConfig(
            **ids, **{"num_hidden_layers": 4, "local_attention": 128, **sizes, **options})
        cls = transformers.ModernBertForMaskedLM if mlm else \
            transformers.ModernBertForSequenceClassification if classify else \
            transformers.ModernBertModel
    elif family == "nomic_bert":
        config = transformers.NomicBertConfig(**{"num_hidden_layers": 2, **sizes, **options})
        cls = transformers.NomicBertForMaskedLM if mlm else transformers.NomicBertModel
    else:
        config = transformers.GteConfig(**{"num_hidden_layers": 2, **sizes, **options})
        cls = transformers.GteForMaskedLM if mlm else transformers.GteModel
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # norms and biases away from their initial ones and zeros
        for name, p in model.named_parameters():
            module = name.rsplit(".", 2)[-2].lower() if name.count(".") else ""
            if "norm" in module or module.endswith("ln"):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
            elif name.startswith("classifier") or name.startswith("head"):
                p.normal_(0, 0.3)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def make_bge_m3(folder, width=48, multi_width=32, seed=0):
    """A random XLM-RoBERTa in BGE-M3's layout (sentence-transformers modules: CLS pooling,
    Normalize; sparse_linear.pt and colbert_linear.pt beside them); (model, tokenizer, heads)."""
    model, tokenizer = make_family_dir(folder, "xlm-roberta", hidden=width, seed=seed)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": width, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    (folder / "2_Normalize").mkdir()
    generator = torch.Generator().manual_seed(seed + 1)
    heads = {"sparse_linear.pt": {"weight": torch.randn(1, width, generator=generator) * 0.3,
                                  "bias": torch.tensor([0.05])},
             "colbert_linear.pt": {"weight": torch.randn(multi_width, width,
                                                         generator=generator) * 0.2,
                                   "bias": torch.randn(multi_width, generator=generator) * 0.1}}
    for name, state in heads.items():
        torch.save(state, folder / name)
    return model, tokenizer, heads
