"""BGE-M3's three outputs from one forward (issue 39): dense (CLS, normalised), lexical
weights (ReLU of sparse_linear on each token, the largest per token id, CLS/EOS/pad/UNK
dropped) and multi-vector (colbert_linear on every token but CLS, normalised), against
those definitions (FlagEmbedding's BGEM3FlagModel) written here in float64 over
transformers' own XLM-RoBERTa forward (the routes: tests/serve/test_serve_tasks.py).
The head files are PyTorch files, read by torch's tensors-only loader; a file holding
anything else is refused."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import pybert  # noqa: E402
from pybert.checkpoint import CheckpointError  # noqa: E402

from hf_models import make_bge_m3, sentences  # noqa: E402

TEXTS = [" ".join(t.split()[:n]) for t, n in zip(sentences(6, seed=9), (12, 1, 30, 5, 20, 3))]
TEXTS[1] = TEXTS[1] + " " + TEXTS[1]  # a repeated token: its weight is the larger of the two


def reference(model, tokenizer, heads, text):
    """BGE-M3's outputs of one text, in float64, from the definitions."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model.double()(input_ids=ids).last_hidden_state[0]
    dense = torch.nn.functional.normalize(hidden[0], dim=-1)
    sparse = heads["sparse_linear.pt"]
    weights = torch.relu(hidden @ sparse["weight"].double().T + sparse["bias"].double())[:, 0]
    unused = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
              tokenizer.unk_token_id}
    lexical = {}
    for token, weight in zip(ids[0].tolist(), weights.tolist()):
        if token not in unused and weight > 0:
            lexical[token] = max(lexical.get(token, 0.0), weight)
    colbert = heads["colbert_linear.pt"]
    multi = torch.nn.functional.normalize(
        hidden[1:] @ colbert["weight"].double().T + colbert["bias"].double(), dim=-1)
    return dense, lexical, multi


@pytest.fixture(scope="module")
def bge_m3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bge-m3") / "m3"
    model, tokenizer, heads = make_bge_m3(folder)
    return folder, model, tokenizer, heads


def test_three_outputs_match_the_definitions(bge_m3):
    folder, model, tokenizer, heads = bge_m3
    m3 = pybert.TextModel.load(folder)
    assert {"embed", "lexical", "embed_multi"} <= set(m3.tasks) and "sparse" not in m3.tasks
    dense = m3.encode(TEXTS)
    lexical = m3.encode_sparse(TEXTS)
    multi = m3.encode_multi(TEXTS)
    for i, text in enumerate(TEXTS):
        ref_dense, ref_lexical, ref_multi = reference(model, tokenizer, heads, text)
        cosine = float(np.dot(dense[i], ref_dense.numpy()) / np.linalg.norm(dense[i]))
        assert cosine >= 1 - 1e-5
        assert lexical[i].indices.tolist() == sorted(ref_lexical)
        np.testing.assert_allclose(lexical[i].values, [ref_lexical[t] for t in
                                                       sorted(ref_lexical)], rtol=1e-4,
                                   atol=1e-6)
        assert multi[i].shape == tuple(ref_multi.shape)
        error = np.linalg.norm(multi[i] - ref_multi.numpy()) / np.linalg.norm(ref_multi.numpy())
        assert error <= 1e-5
    assert lexical[1].indices.size < len(tokenizer(TEXTS[1])["input_ids"]) - 2  # repeats merged


def test_one_forward_serves_all_three(bge_m3):
    """run_tasks (the server's batch entry point) computes the three tasks of requests
    batched together from one packed forward, each equal to its own call."""
    folder = bge_m3[0]
    m3 = pybert.TextModel.load(folder)
    encoded = m3.tokenizer.encode_all(TEXTS, "error", 0, None)
    calls = []
    forward = m3.engine.encode_packed
    m3.engine.encode_packed = lambda *a, **k: calls.append(1) or forward(*a, **k)
    dense, lexical, multi = m3.run_tasks([("embed", encoded[:2]), ("lexical", encoded[2:4]),
                                          ("embed_multi", encoded[4:])])
    assert len(calls) == 1
    np.testing.assert_allclose(dense.numpy(), m3.encode(TEXTS[:2]), atol=1e-6)
    assert [v.indices.tolist() for v in lexical] == \
        [v.indices.tolist() for v in m3.encode_sparse(TEXTS[2:4])]
    np.testing.assert_allclose(multi[0].numpy(), m3.encode_multi(TEXTS[4]), atol=1e-6)


@pytest.mark.parametrize("state,match", [
    ({"weight": torch.zeros(1, 48)}, "must hold a Linear layer"),
    ({"weight": torch.zeros(2, 48), "bias": torch.zeros(2)}, r"must be \(1, 48\)"),
    ({"weight": torch.full((1, 48), float("nan")), "bias": torch.zeros(1)}, "NaN"),
    ({"weight": torch.zeros(1, 48, dtype=torch.int64), "bias": torch.zeros(1)},
     "floating-point"),
    ("not a dict", "must hold a Linear layer"),
])
def test_bad_head_files_are_refused(tmp_path, state, match):
    folder = tmp_path / "m3"
    make_bge_m3(folder)
    torch.save(state, folder / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match=match):
        pybert.TextModel.load(folder)


class _Payload:
    def __reduce__(self):  # what an arbitrary pickle would run: never, here
        return (print, ("a pickle ran code",))


def test_a_head_file_with_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "m3"
    make_bge_m3(folder)
    torch.save({"weight": _Payload(), "bias": torch.zeros(1)}, folder / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match="not a PyTorch file of tensors"):
        pybert.TextModel.load(folder)
    assert "a pickle ran code" not in capsys.readouterr().out


def test_rerank_scores_by_maxsim(bge_m3):
    """A multi-vector model without a classifier reranks by late interaction: for each query
    vector its best dot product with the document's vectors, averaged over the query's
    (FlagEmbedding's colbert_score), on the float64 definitions."""
    folder, model, tokenizer, heads = bge_m3
    m3 = pybert.TextModel.load(folder)
    query, documents = TEXTS[0], TEXTS[1:]
    ranked = m3.rerank(query, documents)
    q = reference(model, tokenizer, heads, query)[2]
    expected = [float((q @ reference(model, tokenizer, heads, d)[2].T).max(dim=1).values.mean())
                for d in documents]
    assert [r["index"] for r in ranked] == sorted(range(len(documents)),
                                                  key=lambda i: -expected[i])
    np.testing.assert_allclose([r["score"] for r in ranked],
                               sorted(expected, reverse=True), rtol=1e-5)
    assert len(m3.rerank(query, documents, top_k=2)) == 2
    with pytest.raises(TypeError, match=r"documents\[1\] must be a str"):
        m3.rerank(query, ["a", 3])
