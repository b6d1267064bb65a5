"""The CUDA engine against the eager model in float64 (fp32, fp16, bf16 bounds), its streams and
threads, and its CUDA graphs (the bucket keys are checked on any machine)."""

import pytest
import torch

import pybert
from pybert.config import BertConfig

from engine_cases import CONFIGS, GPU_CASES, GPU_CONFIGS
from helpers import BOUNDS, random_batch, random_model, reference_forward, rel_l2, valid_mask

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name,batch,seq_len", GPU_CASES)
def test_cuda_engine_matches_eager(name, batch, seq_len, dtype):
    from helpers import BOUNDS

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
    from pybert.engine.graphs import GraphCache, GraphKey

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
    from pybert.engine.graphs import row_bucket

    assert [row_bucket(n) for n in (1, 64, 65, 128, 129, 500, 512, 513, 1000, 4097)] == \
        [64, 64, 128, 128, 192, 512, 512, 576, 1024, 4608]
    for n in range(513, 20000, 97):
        assert n <= row_bucket(n) <= n * 9 / 8 + 1


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
