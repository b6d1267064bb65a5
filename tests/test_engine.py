"""The whole engine against the eager model in float64 (fp32 bound: relative L2 <= 1e-5)."""

import time

import numpy as np
import pytest
import torch

import pybert
from pybert.config import BertConfig

from conftest import BOUNDS, random_batch, random_model, reference_forward, rel_l2, valid_mask
from d2l_book import load_book_bert

FP32_BOUND = 1e-5

CONFIGS = {
    # The book's example (head dim 192) and its pretraining config (head dim 64).
    "book-example": BertConfig(10000, 768, 1024, 4, 2),
    "book-training": BertConfig(20256, 128, 256, 2, 2, max_len=64),
    "head-dim-8": BertConfig(57, 32, 48, 4, 3, max_len=40),
    "hidden-96-head-dim-32": BertConfig(101, 96, 200, 3, 2, max_len=70),
    "one-head": BertConfig(33, 24, 40, 1, 1, max_len=16),
    "eps-1e-12": BertConfig(64, 64, 128, 4, 2, max_len=32, layer_norm_eps=1e-12),
}
SHAPES = {  # (batch, seq_len) per config
    "book-example": [(2, 8), (3, 33)],
    "book-training": [(8, 64), (5, 17)],
    "head-dim-8": [(4, 1), (6, 40)],
    "hidden-96-head-dim-32": [(7, 23)],
    "one-head": [(1, 1), (3, 16)],
    "eps-1e-12": [(2, 32)],
}
CASES = [(name, b, s) for name, shapes in SHAPES.items() for b, s in shapes]


def assert_matches(engine_out, ref_out, valid_lens, batch, seq_len):
    encoded, mlm, nsp = engine_out
    ref_encoded, ref_mlm, ref_nsp = ref_out
    mask = valid_mask(valid_lens, batch, seq_len)
    assert encoded.dtype == torch.float32 and encoded.shape == ref_encoded.shape
    assert rel_l2(encoded[mask], ref_encoded[mask]) <= FP32_BOUND
    assert torch.count_nonzero(encoded[~mask]) == 0, "padded positions must be zeros"
    assert rel_l2(nsp, ref_nsp) <= FP32_BOUND
    if ref_mlm is None:
        assert mlm is None
    else:
        assert mlm.shape == ref_mlm.shape
        assert rel_l2(mlm, ref_mlm) <= FP32_BOUND


@pytest.mark.parametrize("name,batch,seq_len", CASES)
def test_engine_matches_eager(name, batch, seq_len):
    config = CONFIGS[name]
    net = random_model(config, seed=batch * 100 + seq_len)
    engine = pybert.Engine.from_model(net)
    tokens, segments, valid_lens, pred_positions = random_batch(config, batch, seq_len,
                                                                seed=seq_len)
    ref = reference_forward(net, tokens, segments, valid_lens, pred_positions)
    out = engine(tokens, segments, valid_lens, pred_positions)
    assert_matches(out, ref, valid_lens, batch, seq_len)


@pytest.mark.parametrize("name,batch,seq_len", CASES)
def test_cpu_bf16_engine_matches_eager(name, batch, seq_len):
    """bfloat16 on the CPU (AVX512-BF16/AMX GEMMs where the CPU has them), float32 LayerNorm,
    softmax and accumulation: within the bf16 bound of the float64 model."""
    config = CONFIGS[name]
    net = random_model(config, seed=batch * 100 + seq_len)
    engine = pybert.Engine.from_model(net, dtype=torch.bfloat16)
    tokens, segments, valid_lens, pred = random_batch(config, batch, seq_len, seed=seq_len)
    ref_encoded, ref_mlm, ref_nsp = reference_forward(net, tokens, segments, valid_lens, pred)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, pred)
    assert encoded.dtype == torch.bfloat16 and encoded.device.type == "cpu"
    mask = valid_mask(valid_lens, batch, seq_len)
    assert rel_l2(encoded[mask], ref_encoded[mask]) <= BOUNDS[torch.bfloat16]
    assert torch.count_nonzero(encoded[~mask]) == 0
    assert rel_l2(mlm, ref_mlm) <= BOUNDS[torch.bfloat16]
    assert rel_l2(nsp, ref_nsp) <= BOUNDS[torch.bfloat16]


# int8 dynamic quantisation is approximate by design: measured on these random models, the
# encodings are within 6e-3 of the float64 model (cosine >= 0.9999 per token) and the heads'
# logits within 6e-2; the bounds leave about 3x (encodings) and 2x (logits) of room.
INT8_ENCODING_BOUND = 2e-2
INT8_LOGIT_BOUND = 1e-1


@pytest.mark.parametrize("name,batch,seq_len", CASES)
def test_int8_engine_stays_close_to_eager(name, batch, seq_len):
    config = CONFIGS[name]
    net = random_model(config, seed=batch * 100 + seq_len)
    engine = pybert.Engine.from_model(net, quantize="int8")
    assert "quantize='int8'" in repr(engine)
    tokens, segments, valid_lens, pred = random_batch(config, batch, seq_len, seed=seq_len)
    ref_encoded, ref_mlm, ref_nsp = reference_forward(net, tokens, segments, valid_lens, pred)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, pred)
    assert encoded.dtype == torch.float32
    mask = valid_mask(valid_lens, batch, seq_len)
    assert rel_l2(encoded[mask], ref_encoded[mask]) <= INT8_ENCODING_BOUND
    cosine = torch.nn.functional.cosine_similarity(encoded[mask].double(), ref_encoded[mask],
                                                   dim=-1)
    assert float(cosine.min()) >= 0.999
    assert torch.count_nonzero(encoded[~mask]) == 0
    assert rel_l2(mlm, ref_mlm) <= INT8_LOGIT_BOUND
    assert rel_l2(nsp, ref_nsp) <= INT8_LOGIT_BOUND


@pytest.mark.parametrize("weight_format", ["packed", "plain"])
@pytest.mark.parametrize("rows", [1, 37, 128, 256, 257, 300])
def test_cpu_weight_formats_give_the_fp32_results(weight_format, rows):
    """Weights prepacked for MKL (used up to 256 rows, whatever the row count they are used
    with) and plain ones (addmm) both give the float64 model's results, on either side of
    the limit."""
    from pybert import _C
    from pybert.engine import pack_d2l_state_dict

    config = CONFIGS["hidden-96-head-dim-32"]
    net = random_model(config, seed=rows)
    native = _C.Engine(config.native(), pack_d2l_state_dict(net.state_dict(), config),
                       weight_format=weight_format)
    batch = min(5, rows)
    seq_len = -(-rows // batch)
    tokens, segments, _, pred = random_batch(config, batch, seq_len, seed=rows, full=True)
    valid_lens = torch.full((batch,), seq_len)
    valid_lens[-1] = rows - seq_len * (batch - 1)
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(valid_lens, 0)
    pred = pred.clamp(max=int(valid_lens.min()) - 1)
    encoded, mlm, nsp = native.forward(tokens, segments, cu, total_tokens=rows,
                                       max_seqlen=seq_len, pred_positions=pred)
    ref_encoded, ref_mlm, ref_nsp = reference_forward(net, tokens, segments, valid_lens, pred)
    mask = valid_mask(valid_lens, batch, seq_len)
    assert rel_l2(encoded[mask], ref_encoded[mask]) <= FP32_BOUND
    assert rel_l2(mlm, ref_mlm) <= FP32_BOUND
    assert rel_l2(nsp, ref_nsp) <= FP32_BOUND


def test_cpu_engine_options_are_checked():
    net = random_model(CONFIGS["head-dim-8"])
    with pytest.raises(ValueError, match="quantize must be one of"):
        pybert.Engine.from_model(net, quantize="int4")
    with pytest.raises(ValueError, match="float32"):
        pybert.Engine.from_model(net, dtype=torch.bfloat16, quantize="int8")
    with pytest.raises(ValueError, match="CPU engine computes in"):
        pybert.Engine.from_model(net, dtype=torch.float16)


@pytest.mark.parametrize("name", ["book-training", "head-dim-8"])
def test_engine_without_valid_lens_or_positions(name):
    config = CONFIGS[name]
    net = random_model(config, seed=3)
    engine = pybert.Engine.from_model(net)
    tokens, segments, _, _ = random_batch(config, 4, 9, seed=4)
    ref = reference_forward(net, tokens, segments, None, None)
    out = engine(tokens, segments)
    assert_matches(out, ref, None, 4, 9)


def test_valid_lens_forms_agree():
    config = CONFIGS["head-dim-8"]
    engine = pybert.Engine.from_model(random_model(config))
    tokens, segments, valid_lens, _ = random_batch(config, 5, 12, seed=5)
    expected = engine.encode(tokens, segments, valid_lens)
    for form in (valid_lens.long(), valid_lens.int(), valid_lens.double(),
                 valid_lens.numpy(), valid_lens.long().tolist()):
        torch.testing.assert_close(engine.encode(tokens, segments, form), expected,
                                   rtol=0, atol=0)
    torch.testing.assert_close(engine.encode(tokens.numpy(), segments.numpy(), valid_lens),
                               expected, rtol=0, atol=0)


def test_encode_equals_the_forward_encodings():
    config = CONFIGS["book-training"]
    engine = pybert.Engine.from_model(random_model(config))
    tokens, segments, valid_lens, _ = random_batch(config, 3, 20)
    encoded = engine.encode(tokens, segments, valid_lens)
    torch.testing.assert_close(encoded, engine(tokens, segments, valid_lens)[0], rtol=0, atol=0)
    # segments default to 0
    torch.testing.assert_close(engine.encode(tokens, valid_lens=valid_lens),
                               engine.encode(tokens, torch.zeros_like(tokens), valid_lens),
                               rtol=0, atol=0)


def test_a_sequence_does_not_depend_on_its_batch():
    """Packing must keep sequences apart: one sequence alone equals it inside a batch."""
    config = CONFIGS["hidden-96-head-dim-32"]
    engine = pybert.Engine.from_model(random_model(config))
    tokens, segments, valid_lens, pred = random_batch(config, 6, 30, seed=6)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, pred)
    for b in range(6):
        e, m, n = engine(tokens[b:b + 1], segments[b:b + 1], valid_lens[b:b + 1], pred[b:b + 1])
        assert rel_l2(e[0], encoded[b]) <= 1e-6
        assert rel_l2(m[0], mlm[b]) <= 1e-6
        assert rel_l2(n[0], nsp[b]) <= 1e-6


def test_empty_pred_positions():
    config = CONFIGS["head-dim-8"]
    engine = pybert.Engine.from_model(random_model(config))
    tokens, segments, valid_lens, _ = random_batch(config, 2, 5)
    _, mlm, _ = engine(tokens, segments, valid_lens, torch.zeros(2, 0, dtype=torch.long))
    assert mlm.shape == (2, 0, config.vocab_size)


def test_engine_from_the_books_own_model():
    book = load_book_bert()
    if book is None:
        pytest.skip("d2l 0.17.6 is not installed")
    torch.manual_seed(0)
    net = book.BERTModel(500, 64, [64], 64, 96, 4, 2, 0.1, max_len=50, key_size=64,
                         query_size=64, value_size=64, hid_in_features=64, mlm_in_features=64,
                         nsp_in_features=64).eval()
    engine = pybert.Engine.from_model(net)
    config = engine.config
    tokens, segments, valid_lens, pred = random_batch(config, 4, 50, seed=8)
    ref = reference_forward(net, tokens, segments, valid_lens, pred)
    assert_matches(engine(tokens, segments, valid_lens, pred), ref, valid_lens, 4, 50)


def test_module_level_encode_takes_an_engine_or_a_path(tmp_path):
    config = CONFIGS["head-dim-8"]
    net = random_model(config)
    tokens, segments, valid_lens, _ = random_batch(config, 3, 10)
    engine = pybert.Engine.from_model(net)
    pybert.save(net, tmp_path / "ckpt")
    expected = engine.encode(tokens, segments, valid_lens)
    for model in (engine, tmp_path / "ckpt", str(tmp_path / "ckpt")):
        torch.testing.assert_close(pybert.encode(model, tokens, segments, valid_lens), expected,
                                   rtol=0, atol=0)


def test_outputs_are_finite_for_large_inputs():
    config = CONFIGS["head-dim-8"]
    net = random_model(config)
    with torch.no_grad():
        net.encoder.token_embedding.weight.mul_(100.0)
    engine = pybert.Engine.from_model(net)
    tokens, segments, valid_lens, pred = random_batch(config, 3, 20)
    ref = reference_forward(net, tokens, segments, valid_lens, pred)
    out = engine(tokens, segments, valid_lens, pred)
    assert all(bool(torch.isfinite(t).all()) for t in out)
    assert_matches(out, ref, valid_lens, 3, 20)
    assert np.isfinite(out[0].numpy()).all()


# ---------------------------------------------------------------------------------------------
# The CUDA engine (skipped without a GPU): every dtype against the float64 eager model.

GPU_CONFIGS = dict(CONFIGS, **{
    "head-dim-24": BertConfig(77, 72, 100, 3, 2, max_len=300),     # % 8, not % 16
    "head-dim-20-fallback": BertConfig(77, 60, 100, 3, 2, max_len=40),
    "head-dim-256": BertConfig(99, 512, 600, 2, 1, max_len=200),
})
GPU_CASES = CASES + [("head-dim-24", 6, 300), ("head-dim-24", 3, 1),
                     ("head-dim-20-fallback", 5, 40), ("head-dim-256", 4, 200)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name,batch,seq_len", GPU_CASES)
def test_cuda_engine_matches_eager(name, batch, seq_len, dtype):
    from conftest import BOUNDS

    config = GPU_CONFIGS[name]
    net = random_model(config, seed=batch + seq_len)
    engine = pybert.Engine.from_model(net, device="cuda", dtype=dtype)
    tokens, segments, valid_lens, pred = random_batch(config, batch, seq_len, seed=seq_len)
    ref_encoded, ref_mlm, ref_nsp = reference_forward(net, tokens, segments, valid_lens, pred)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, pred)
    assert encoded.device.type == "cuda" and encoded.dtype == dtype
    mask = valid_mask(valid_lens, batch, seq_len)
    bound = BOUNDS[dtype]
    assert rel_l2(encoded.cpu()[mask], ref_encoded[mask]) <= bound
    assert torch.count_nonzero(encoded.cpu()[~mask]) == 0
    assert rel_l2(mlm, ref_mlm) <= bound
    assert rel_l2(nsp, ref_nsp) <= bound


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphs"])
def test_cuda_engine_runs_on_the_current_stream(cuda_graphs):
    """The forward (or its graph's replay) is enqueued on torch's current stream, whichever it
    is."""
    config = CONFIGS["book-training"]
    net = random_model(config)
    engine = pybert.Engine.from_model(net, device="cuda", dtype=torch.float16,
                                      cuda_graphs=cuda_graphs)
    tokens, segments, valid_lens, pred = random_batch(config, 8, 64, seed=1)
    expected = engine(tokens, segments, valid_lens, pred)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        on_side = engine(tokens, segments, valid_lens, pred)
    side.synchronize()
    for a, e in zip(on_side, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("device,dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
])
def test_packed_inputs_give_the_padded_results(device, dtype):
    config = CONFIGS["hidden-96-head-dim-32"]
    engine = pybert.Engine.from_model(random_model(config), device=device, dtype=dtype)
    tokens, segments, valid_lens, _ = random_batch(config, 6, 40, seed=9)
    padded = engine.encode(tokens, segments, valid_lens)
    mask = valid_mask(valid_lens, 6, 40)
    cu_seqlens = torch.zeros(7, dtype=torch.int64)
    cu_seqlens[1:] = torch.cumsum(valid_lens.long(), 0)
    packed = engine.encode_packed(tokens[mask], cu_seqlens, segments[mask])
    assert packed.shape == (int(cu_seqlens[-1]), config.num_hiddens)
    torch.testing.assert_close(packed, padded[mask.to(padded.device)], rtol=0, atol=0)
    again = engine.encode_packed(tokens[mask], cu_seqlens.int(), segments[mask],
                                 max_seqlen=40)
    torch.testing.assert_close(again, packed, rtol=0, atol=0)


def test_encode_by_path_reloads_a_changed_checkpoint(tmp_path):
    config = CONFIGS["head-dim-8"]
    tokens, segments, valid_lens, _ = random_batch(config, 2, 6)
    pybert.save(random_model(config, seed=1), tmp_path / "ckpt")
    first = pybert.encode(tmp_path / "ckpt", tokens, segments, valid_lens)
    torch.testing.assert_close(pybert.encode(tmp_path / "ckpt", tokens, segments, valid_lens),
                               first, rtol=0, atol=0)
    time.sleep(0.01)
    pybert.save(random_model(config, seed=2), tmp_path / "ckpt")
    second = pybert.encode(tmp_path / "ckpt", tokens, segments, valid_lens)
    expected = pybert.Engine.from_model(random_model(config, seed=2)).encode(tokens, segments,
                                                                             valid_lens)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_engine_from_several_threads_and_streams():
    """The GIL is released during a forward: concurrent calls on their own streams must give
    the results of sequential calls (nothing shared is written concurrently)."""
    import threading

    config = CONFIGS["book-training"]
    engine = pybert.Engine.from_model(random_model(config), device="cuda",
                                      dtype=torch.float16)
    batches = [random_batch(config, 16, 64, seed=s) for s in range(4)]
    expected = [engine.encode(t, s, v) for t, s, v, _ in batches]
    torch.cuda.synchronize()
    results = [None] * len(batches)

    def work(i):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(5):
                results[i] = engine.encode(*batches[i][:3])
        stream.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device,dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
])
def test_spare_capacity_gives_the_same_results(device, dtype):
    """The runner computes a fixed number of rows when asked (what a CUDA graph bucket does):
    rows past the real tokens are zeros and empty sequence slots are skipped, so the real
    results are unchanged."""
    config = CONFIGS["head-dim-8"]
    engine = pybert.Engine.from_model(random_model(config), device=device, dtype=dtype)
    tokens, segments, valid_lens, _ = random_batch(config, 3, 20, seed=11)
    expected, _, expected_nsp = engine(tokens, segments, valid_lens)
    batch_cap, seq_cap = 4, 32
    big_tokens = torch.zeros((batch_cap, seq_cap), dtype=torch.int64)
    big_segments = torch.zeros_like(big_tokens)
    big_tokens[:3, :20], big_segments[:3, :20] = tokens, segments
    cu = torch.zeros(batch_cap + 1, dtype=torch.int32)
    cu[1:4] = torch.cumsum(valid_lens.int(), 0)
    cu[4:] = cu[3]
    args = [t.to(device) for t in (big_tokens, big_segments, cu)]
    encoded, _, nsp = engine._native.forward(*args, total_tokens=batch_cap * seq_cap,
                                             max_seqlen=seq_cap, pred_positions=None,
                                             with_encoded=True, with_nsp=True)
    torch.testing.assert_close(encoded[:3, :20], expected, rtol=0, atol=0)
    torch.testing.assert_close(nsp[:3], expected_nsp, rtol=0, atol=0)
    assert torch.count_nonzero(encoded[3]) == 0 and bool(torch.isfinite(nsp).all())


@pytest.mark.cuda
def test_cuda_graphs_replay_the_eager_results():
    """Graphs are on by default on the GPU, bucketed by rows, sequence slots and length: every
    kind of call (padded, packed from the host or the GPU, with MLM positions, with NSP) gives
    the float64 reference's results through them, and the cache stays bounded."""
    config = CONFIGS["book-training"]
    net = random_model(config)
    eager = pybert.Engine.from_model(net, device="cuda", dtype=torch.float16, cuda_graphs=False)
    graphed = pybert.Engine.from_model(net, device="cuda", dtype=torch.float16, max_graphs=2)
    assert eager._graphs is None and graphed._graphs is not None
    graphed.capture([1, 8], [64])
    assert len(graphed._graphs.graphs) == 2
    bound = BOUNDS[torch.float16]
    for batch, seq_len, seed in ((1, 64, 0), (1, 64, 1), (7, 50, 2), (8, 64, 3), (2, 9, 4),
                                 (1, 64, 5), (3, 1, 6)):
        tokens, segments, valid_lens, pred = random_batch(config, batch, seq_len, seed=seed)
        ref_encoded, ref_mlm, ref_nsp = reference_forward(net, tokens, segments, valid_lens,
                                                          pred)
        mask = valid_mask(valid_lens, batch, seq_len)
        encoded, mlm, nsp = graphed(tokens, segments, valid_lens)
        assert mlm is None and encoded.shape == (batch, seq_len, config.num_hiddens)
        assert rel_l2(encoded.cpu()[mask], ref_encoded[mask]) <= bound
        assert torch.count_nonzero(encoded.cpu()[~mask]) == 0
        assert rel_l2(nsp, ref_nsp) <= bound
        _, mlm, _ = graphed(tokens, segments, valid_lens, pred)
        assert rel_l2(mlm, ref_mlm) <= bound
        cu = torch.zeros(batch + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(valid_lens.int(), 0)
        packed = graphed.encode_packed(tokens[mask], cu, segments[mask])
        assert rel_l2(packed.cpu(), ref_encoded[mask]) <= bound
        on_gpu = graphed.encode_packed(tokens[mask].cuda(), cu.cuda(), segments[mask].cuda(),
                                       max_seqlen=seq_len)
        torch.testing.assert_close(on_gpu, packed, rtol=0, atol=0)
    assert len(graphed._graphs.graphs) <= 2  # bounded
    with pytest.raises(ValueError, match="cuda_graphs needs"):
        pybert.Engine.from_model(net, cuda_graphs=True)


@pytest.mark.cuda
def test_cuda_graphs_captured_under_inference_mode_serve_later_calls():
    """A graph captured by a call under torch.inference_mode is replayed by a later call outside
    it (its static inputs are normal tensors, refilled in place)."""
    config = CONFIGS["book-training"]
    engine = pybert.Engine.from_model(random_model(config), device="cuda", dtype=torch.float16)
    tokens, segments, valid_lens, _ = random_batch(config, 2, 16, seed=4)
    with torch.inference_mode():
        first = engine.encode(tokens, segments, valid_lens)
    second = engine.encode(tokens, segments, valid_lens)
    assert len(engine._graphs.graphs) == 1
    torch.testing.assert_close(second, first, rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_graphs_only_where_launches_dominate():
    """A batch of more tokens than the graphs' limit (the GPU's work outlasts the launches
    there) runs eagerly with no graph captured, and the same results."""
    config = CONFIGS["hidden-96-head-dim-32"]
    net = random_model(config)
    engine = pybert.Engine.from_model(net, device="cuda", dtype=torch.float16)
    assert engine._graphs.max_tokens == 16384
    engine._graphs.max_tokens = limit = 256  # a lower limit keeps the test quick
    batch = limit // config.max_len + 1
    tokens, segments, valid_lens, _ = random_batch(config, batch, config.max_len, seed=3)
    valid_lens[:] = config.max_len
    assert batch * config.max_len > limit
    encoded = engine.encode(tokens, segments, valid_lens)
    assert len(engine._graphs.graphs) == 0
    ref_encoded, _, _ = reference_forward(net, tokens, segments, valid_lens, None)
    assert rel_l2(encoded.cpu(), ref_encoded) <= BOUNDS[torch.float16]
    with pytest.raises(ValueError, match="runs without a graph"):
        engine.capture([batch], [config.max_len])


def test_cuda_graph_keys():
    """A graph's key (pure: no GPU needed): slots to a power of two, the length to a multiple
    of 32 within max_len, the rows to their bucket, with a spare row whenever a slot is empty
    (an empty slot's <cls> row is row `total`), and no graph above the token limit."""
    from pybert.graphs import GraphCache, GraphKey

    config = BertConfig(50, 32, 64, 2, 1, max_len=100)
    cache = GraphCache(None, "cuda", config, max_graphs=4)
    assert cache.key_for(256, 3, 90, 5, False, True) == GraphKey(4, 96, 320, 5, False, True)
    assert cache.key_for(64, 1, 64, 0, True, False) == GraphKey(1, 64, 64, 0, True, False)
    assert cache.key_for(1, 1, 1, 0, True, False) == GraphKey(1, 32, 64, 0, True, False)
    # the bucket never takes the rows past what the slots can hold
    assert cache.key_for(200, 2, 100, 0, False, False) == GraphKey(2, 100, 200, 0, False, False)
    assert cache.key_for(16384, 256, 64, 0, True, False).rows == 16384
    assert cache.key_for(16385, 256, 100, 0, True, False) is None


def test_cuda_graphs_row_buckets():
    """Row buckets: multiples of 64 up to 512, then eight steps per power of two, so a batch
    pays at most 1/8 spare rows above 512 tokens."""
    from pybert.graphs import row_bucket

    assert [row_bucket(n) for n in (1, 64, 65, 128, 129, 500, 512, 513, 1000, 4097)] == \
        [64, 64, 128, 128, 192, 512, 512, 576, 1024, 4608]
    for n in range(513, 20000, 97):
        assert n <= row_bucket(n) <= n * 9 / 8 + 1


# ---------------------------------------------------------------------------------------------
# The packed-weight layout (defined once, in csrc/bert/weights.h) and the engine's checks of it.

def test_the_d2l_packer_gives_the_layout_of_weight_shapes():
    from pybert.engine import pack_d2l_state_dict
    from pybert.weights import weight_shapes

    config = CONFIGS["hidden-96-head-dim-32"]
    shapes = weight_shapes(config)
    packed = pack_d2l_state_dict(random_model(config).state_dict(), config)
    assert set(packed) == {n for n, (_, part) in shapes.items() if part != "embedding_norm"}
    assert {n: tuple(t.shape) for n, t in packed.items()} == \
        {n: shapes[n][0] for n in packed}
    assert len([n for n in shapes if n.startswith("layers.")]) == 12 * config.num_layers


def test_the_native_engine_checks_names_shapes_and_parts():
    from pybert.engine import pack_d2l_state_dict

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


def test_the_old_text_api_still_works_with_a_warning():
    from pybert.vocab import BERT_RESERVED_TOKENS, Vocab

    vocab = Vocab.from_tokens(["<unk>", *BERT_RESERVED_TOKENS,
                               *[f"w{i}" for i in range(52)]])
    net = random_model(CONFIGS["head-dim-8"])
    with pytest.warns(DeprecationWarning, match="TextModel"):
        engine = pybert.Engine.from_model(net, vocab=vocab)
    model = pybert.TextModel.from_model(net, vocab)
    with pytest.warns(DeprecationWarning, match="fill_mask"):
        old = engine.fill_mask("w1 <mask> w2", k=3)
    assert old == model.fill_mask("w1 <mask> w2", k=3)
    with pytest.warns(DeprecationWarning, match="next_sentence"):
        np.testing.assert_array_equal(engine.next_sentence([("w1", "w2")]),
                                      model.next_sentence([("w1", "w2")]))
    with pytest.warns(DeprecationWarning, match="pybert.job.run_encode_job"):
        from pybert.batch import run_encode_job
    from pybert.job import run_encode_job as moved
    assert run_encode_job is moved
    with pytest.warns(DeprecationWarning, match="TextModel.encode"):
        vectors = pybert.batch.encode_texts(engine, ["w1 w2", "w3"])
    np.testing.assert_array_equal(vectors, model.encode(["w1 w2", "w3"]))


@pytest.mark.cuda
def test_packed_inputs_on_the_gpu_stay_there():
    """encode_packed on GPU tensors: checked on the device (one small read-back), or not at
    all with validate=False; either way the result is the host path's."""
    config = CONFIGS["hidden-96-head-dim-32"]
    engine = pybert.Engine.from_model(random_model(config), device="cuda", dtype=torch.float16)
    tokens, segments, valid_lens, _ = random_batch(config, 6, 40, seed=9)
    mask = valid_mask(valid_lens, 6, 40)
    cu = torch.zeros(7, dtype=torch.int32)
    cu[1:] = torch.cumsum(valid_lens.int(), 0)
    expected = engine.encode_packed(tokens[mask], cu, segments[mask])
    on_gpu = [t.cuda() for t in (tokens[mask], cu, segments[mask])]
    got = engine.encode_packed(*on_gpu[:2], on_gpu[2], max_seqlen=40)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    unchecked = engine.encode_packed(*on_gpu[:2], on_gpu[2], max_seqlen=40, validate=False)
    torch.testing.assert_close(unchecked, expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="max_seqlen must be given"):
        engine.encode_packed(*on_gpu)
    bad = on_gpu[0].clone()
    bad[3] = config.vocab_size
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 101\)"):
        engine.encode_packed(bad, on_gpu[1], max_seqlen=40)
    with pytest.raises(ValueError, match="max_seqlen=20"):
        engine.encode_packed(on_gpu[0], on_gpu[1], max_seqlen=20)
