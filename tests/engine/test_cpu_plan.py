"""The CPU plan: every GEMM and attention path, forced, gives the fp32 (and bf16) results; the
chooser keeps the fastest on a fake timing source, skips an absent path and reuses a plan from
its cache; forcing by environment variable works and refuses what is not there."""

import dataclasses
import json

import pytest
import torch

import pybert
from pybert import _C
from pybert.engine import cpu_plan
from pybert.engine.cpu_plan import ALL_ROWS, CpuPlan, choose_attention, choose_gemm, plan_cpu

from engine_cases import CONFIGS, FP32_BOUND, assert_matches
from helpers import BOUNDS, random_batch, random_model, reference_forward, rel_l2, valid_mask

CONFIG = CONFIGS["hidden-96-head-dim-32"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test measures into a cache of its own."""
    monkeypatch.setenv("PYBERT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYBERT_CPU_GEMM", raising=False)
    monkeypatch.delenv("PYBERT_CPU_ATTENTION", raising=False)
    monkeypatch.delenv("PYBERT_CPU_PLAN", raising=False)
    cpu_plan.CACHE.clear_memory()
    yield
    cpu_plan.CACHE.clear_memory()


def forced_plan(dtype: str, gemm: str, attention: str) -> CpuPlan:
    """Every weight shape of CONFIG on `gemm` at every row count, every sequence's attention
    on `attention`."""
    shapes = cpu_plan.gemm_shapes(CONFIG)
    return CpuPlan(cpu_plan.cpu_identity(), dtype,
                   gemm={shape: [(ALL_ROWS, gemm)] for shape in shapes},
                   attention_kernel=attention,
                   attention_max_length=0 if attention == "flash" else 512, source="forced")


AVAILABLE_FP32 = [p for p in cpu_plan.FLOAT_PATHS if _C.cpu_gemm_path_available(
    _C.CPU_GEMM_PATHS[p], "float32")]
AVAILABLE_BF16 = [p for p in cpu_plan.FLOAT_PATHS if _C.cpu_gemm_path_available(
    _C.CPU_GEMM_PATHS[p], "bfloat16")]
INT8_AVAILABLE = _C.cpu_gemm_path_available(_C.CPU_GEMM_PATHS["int8"], "float32")
MKL_ATTENTION = _C.cpu_attention_path_available(_C.CPU_ATTENTION_PATHS["mkl"])


@pytest.mark.parametrize("gemm", cpu_plan.FLOAT_PATHS)
@pytest.mark.parametrize("attention", cpu_plan.ATTENTION_PATHS)
@pytest.mark.parametrize("rows", [3, 60, 300])
def test_every_fp32_path_gives_the_float64_results(gemm, attention, rows):
    if gemm not in AVAILABLE_FP32:
        pytest.skip(f"{gemm} is not available in float32 on this machine")
    if attention == "mkl" and not MKL_ATTENTION:
        pytest.skip("this torch has no MKL")
    net = random_model(CONFIG, seed=rows)
    engine = pybert.Engine.from_model(net, cpu_plan=forced_plan("float32", gemm, attention))
    batch = max(3, -(-rows // 60))
    seq_len = -(-rows // batch)
    tokens, segments, valid_lens, pred = random_batch(CONFIG, batch, seq_len, seed=rows)
    assert_matches(engine(tokens, segments, valid_lens, pred),
                   reference_forward(net, tokens, segments, valid_lens, pred), valid_lens,
                   batch, seq_len)


@pytest.mark.skipif(not INT8_AVAILABLE, reason="this torch has no oneDNN int8 GEMM")
@pytest.mark.parametrize("gemm", cpu_plan.GEMM_PATHS)
def test_an_int8_engine_runs_every_path(gemm):
    """An int8 engine may take the int8 GEMM or a float one per shape and row count (a CPU
    without VNNI runs float faster at small row counts): forced to each, its encodings stay
    within the int8 bound, and forced to a float path they are the float engine's."""
    from helpers import INT8_ENCODING_BOUND

    if gemm != "int8" and gemm not in AVAILABLE_FP32:
        pytest.skip(f"{gemm} is not available on this machine")
    net = random_model(CONFIG, seed=11)
    tokens, segments, valid_lens, pred = random_batch(CONFIG, 4, 30, seed=11)
    ref = reference_forward(net, tokens, segments, valid_lens, pred)
    engine = pybert.Engine.from_model(net, quantize="int8",
                                      cpu_plan=forced_plan("int8", gemm, "own"))
    encoded, _, _ = engine(tokens, segments, valid_lens, pred)
    mask = valid_mask(valid_lens, 4, 30)
    bound = INT8_ENCODING_BOUND if gemm == "int8" else FP32_BOUND
    assert rel_l2(encoded[mask], ref[0][mask]) <= bound


@pytest.mark.skipif(not INT8_AVAILABLE, reason="this torch has no oneDNN int8 GEMM")
def test_an_int8_plan_keeps_float_where_it_is_faster():
    """On a fake timer where oneDNN's float GEMM wins at 16 rows and int8 from 128 on, an
    int8 engine's plan takes each where it wins; a float engine never times int8."""
    timed = []

    def timer(paths, rows, n, k, dtype):
        timed.append(paths)
        return [[1.0 if p == "onednn" else 2.0, *(1.0 if p == "int8" else 2.0
                                                  for _ in rows[1:])] for p in paths]

    def available(path, dtype):
        return path in ("aten", "onednn", "int8")

    plan = plan_cpu(CONFIG, torch.float32, int8=True, gemm_timer=timer,
                    attention_timer=lambda *a: 1.0, path_available=available)
    assert plan.dtype == "int8"
    for choice in plan.gemm.values():
        assert choice[0][1] == "onednn" and (len(choice) == 1 or choice[-1][1] == "int8")
    assert any(len(choice) == 2 for choice in plan.gemm.values())
    timed.clear()
    plan_cpu(CONFIG, torch.float32, gemm_timer=timer, attention_timer=lambda *a: 1.0,
             path_available=available)
    assert timed and all("int8" not in paths for paths in timed)


@pytest.mark.parametrize("gemm", cpu_plan.FLOAT_PATHS)
def test_every_bf16_path_stays_within_the_bf16_bound(gemm):
    if gemm not in AVAILABLE_BF16:
        pytest.skip(f"{gemm} is not available in bfloat16 on this machine")
    net = random_model(CONFIG, seed=2)
    engine = pybert.Engine.from_model(net, dtype=torch.bfloat16,
                                      cpu_plan=forced_plan("bfloat16", gemm, "flash"))
    tokens, segments, valid_lens, pred = random_batch(CONFIG, 4, 30, seed=2)
    encoded, mlm, _ = engine(tokens, segments, valid_lens, pred)
    ref_encoded, ref_mlm, _ = reference_forward(net, tokens, segments, valid_lens, pred)
    mask = valid_mask(valid_lens, 4, 30)
    assert rel_l2(encoded[mask], ref_encoded[mask]) <= BOUNDS[torch.bfloat16]
    assert rel_l2(mlm, ref_mlm) <= BOUNDS[torch.bfloat16]


def fake_gemm_timer(fastest: dict, calls: list):
    """A timer under which fastest[m] is the quickest path at m rows (others 2x slower); the
    shapes it was asked about go to `calls`."""
    def timer(paths, rows, n, k, dtype):
        calls.append((n, k))
        return [[1.0 if fastest[m] == p else 2.0 for m in rows] for p in paths]
    return timer


def test_the_chooser_keeps_the_fastest_path_per_row_bucket():
    calls = []
    timer = fake_gemm_timer({16: "onednn", 128: "mkl"}, calls)
    choice = choose_gemm(768, 768, "float32", ("aten", "mkl", "onednn"), timer)
    assert choice == [(45, "onednn"), (ALL_ROWS, "mkl")]
    same = choose_gemm(768, 768, "float32", ("aten", "mkl", "onednn"),
                       fake_gemm_timer({16: "aten", 128: "aten"}, calls))
    assert same == [(ALL_ROWS, "aten")]  # neighbouring buckets of one path merge


def test_an_absent_path_is_skipped_not_an_error():
    def timer(paths, rows, n, k, dtype):  # mkl "absent": negative, and the fastest otherwise
        return [[-1.0 if p == "mkl" else (1.0 if p == "onednn" else 3.0) for _ in rows]
                for p in paths]
    assert choose_gemm(8, 8, "float32", ("aten", "mkl", "onednn"), timer) == \
        [(ALL_ROWS, "onednn")]
    plan = plan_cpu(CONFIG, torch.float32, gemm_timer=timer,
                    attention_timer=lambda *a: 1.0,
                    path_available=lambda path, dtype: path != "mkl")
    assert {path for choice in plan.gemm.values() for _, path in choice} == {"onednn"}


def test_the_attention_limit_falls_where_flash_starts_winning():
    def timer(kernel_wins_up_to):
        return lambda path, batch, length, heads, d: \
            2.0 if path == "flash" else (1.0 if length <= kernel_wins_up_to else 3.0)
    assert choose_attention(4, 32, timer(10_000))[1] == 512
    assert choose_attention(4, 32, timer(128))[1] == 181  # between 128 (won) and 256 (lost)
    assert choose_attention(4, 32, timer(0)) == ("flash", 0)


def test_the_attention_kernel_is_the_faster_of_those_present():
    """Of MKL's batched GEMMs and the own kernel, the faster over the measured lengths (each
    length counting alike, not the longest most); an absent MKL is skipped."""
    def timer(mkl_factor):
        def seconds(path, batch, length, heads, d):
            base = length * length * 1e-9
            return {"flash": 10 * base, "own": base, "mkl": mkl_factor * base}[path]
        return seconds
    assert choose_attention(4, 32, timer(0.5)) == ("mkl", 512)
    assert choose_attention(4, 32, timer(2.0)) == ("own", 512)
    # MKL faster at 256 tokens by more than it loses at 32 and 128 in seconds, not in ratio.
    lopsided = lambda path, batch, length, heads, d: \
        {"flash": 1.0, "own": 0.1 if length < 256 else 0.5,
         "mkl": 0.3 if length < 256 else 0.2}[path]
    assert choose_attention(4, 32, lopsided) == ("own", 512)
    absent = lambda path, *rest: -1.0 if path == "mkl" else (1.0 if path == "own" else 2.0)
    assert choose_attention(4, 32, absent) == ("own", 512)
    nothing = lambda path, *rest: 1.0 if path == "flash" else -1.0
    assert choose_attention(4, 32, nothing) == ("flash", 0)


def test_a_plan_is_measured_once_then_cached_in_the_process_and_on_disk(tmp_path):
    calls = []
    timer = fake_gemm_timer({16: "aten", 128: "onednn"}, calls)
    everything = dict(gemm_timer=timer, attention_timer=lambda *a: 1.0,
                      path_available=lambda path, dtype: True)
    first = plan_cpu(CONFIG, torch.float32, **everything)
    assert first.source == "measured" and len(calls) == len(cpu_plan.gemm_shapes(CONFIG))
    second = plan_cpu(CONFIG, torch.float32, **everything)
    assert second.source == "cached" and second.gemm == first.gemm
    assert len(calls) == len(cpu_plan.gemm_shapes(CONFIG))  # nothing timed again
    cpu_plan.CACHE.clear_memory()  # a new process: the file is read
    third = plan_cpu(CONFIG, torch.float32, **everything)
    assert third.source == "cached" and third.gemm == first.gemm
    stored = json.loads((tmp_path / "cache" / "cpu_plan.json").read_text())
    assert len(stored) == len(cpu_plan.gemm_shapes(CONFIG)) + 1  # + the attention's limit


def test_a_damaged_cache_is_measured_again(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cpu_plan.json").write_text("{not json")
    calls = []
    plan = plan_cpu(CONFIG, torch.float32,
                    gemm_timer=fake_gemm_timer({16: "mkl", 128: "mkl"}, calls),
                    attention_timer=lambda *a: 1.0, path_available=lambda p, d: True)
    assert plan.source == "measured" and calls


def test_forcing_by_environment(monkeypatch):
    monkeypatch.setenv("PYBERT_CPU_GEMM", "aten")
    monkeypatch.setenv("PYBERT_CPU_ATTENTION", "flash")
    engine = pybert.Engine.from_model(random_model(CONFIG))
    plan = engine.cpu_plan
    assert plan.source == "forced" and plan.attention_kernel == "flash"
    assert plan.attention_max_length == 0
    assert {path for choice in plan.gemm.values() for _, path in choice} == {"aten"}
    summary = plan.summary()
    assert summary["cpu"]["threads"] == torch.get_num_threads() and summary["gemm"]
    monkeypatch.setenv("PYBERT_CPU_ATTENTION", "own")
    plan = pybert.Engine.from_model(random_model(CONFIG)).cpu_plan
    assert (plan.attention_kernel, plan.attention_max_length) == ("own", 512)
    assert plan.summary()["attention"] == {"kernel": "own", "max_length": 512}
    monkeypatch.setenv("PYBERT_CPU_ATTENTION", "batched")
    with pytest.raises(ValueError, match="PYBERT_CPU_ATTENTION='batched'"):
        pybert.Engine.from_model(random_model(CONFIG))
    monkeypatch.setenv("PYBERT_CPU_ATTENTION", "flash")
    monkeypatch.setenv("PYBERT_CPU_GEMM", "fortran")
    with pytest.raises(ValueError, match="PYBERT_CPU_GEMM='fortran'"):
        pybert.Engine.from_model(random_model(CONFIG))
    monkeypatch.setenv("PYBERT_CPU_PLAN", "default")  # the built-in defaults, not measured
    assert pybert.Engine.from_model(random_model(CONFIG)).cpu_plan.source == "default"


def test_a_measured_plan_serves_the_engine():
    """The real timers on this machine: a plan comes out, the engine holds the float64
    results with it, and the plan says what it saw."""
    net = random_model(CONFIG, seed=5)
    engine = pybert.Engine.from_model(net)
    assert engine.cpu_plan.source == "measured"
    assert set(engine.cpu_plan.gemm) == set(cpu_plan.gemm_shapes(CONFIG))
    tokens, segments, valid_lens, pred = random_batch(CONFIG, 5, 40, seed=5)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, pred)
    ref = reference_forward(net, tokens, segments, valid_lens, pred)
    assert rel_l2(mlm, ref[1]) <= FP32_BOUND and rel_l2(nsp, ref[2]) <= FP32_BOUND
    assert pybert.Engine.from_model(net).cpu_plan.source == "cached"
    with pytest.raises(ValueError, match="cpu_plan must be"):
        pybert.Engine.from_model(net, cpu_plan="fastest")


def test_a_gated_ffn_is_timed_at_its_own_shape():
    """A gated FFN's first GEMM gives [a | g], 2F rows: the plan times that shape (a plan
    keyed by (F, H) would leave it on the default path)."""
    import dataclasses

    gated = dataclasses.replace(CONFIG, ffn_gated=True, ffn_activation="silu")
    h, f = gated.num_hiddens, gated.ffn_num_hiddens
    shapes = cpu_plan.gemm_shapes(gated)
    assert (2 * f, h) in shapes and (f, h) not in shapes and (h, f) in shapes


def slower_timer(factor: dict):
    """A fake GEMM timer: every path takes 1 ms at each row count, times ``factor`` of the
    dtype (or of the int8 path)."""
    def timer(paths, rows, n, k, dtype):
        return [[1e-3 * factor.get("int8" if p == "int8" else dtype, 1.0)] * len(rows)
                for p in paths]
    return timer


def test_the_time_ratio_of_a_precision_against_float32():
    timer = slower_timer({"bfloat16": 6.0, "int8": 0.5})
    assert cpu_plan.time_ratio(CONFIG, "bfloat16", timer, lambda p, d: True) == \
        pytest.approx(6.0)
    assert cpu_plan.time_ratio(CONFIG, "int8", timer, lambda p, d: True) == pytest.approx(0.5)
    other_shape = dataclasses.replace(CONFIG, ffn_num_hiddens=208)  # not in the cache
    assert cpu_plan.time_ratio(other_shape, "bfloat16", timer,
                               lambda p, d: d != "bfloat16") is None


def test_a_precision_slower_than_float32_says_so_at_load():
    """bfloat16 on a CPU without bfloat16 instructions (6x slower, as measured on an AVX2
    EPYC) warns with the ratio; one that is faster does not."""
    net = random_model(CONFIG, seed=1)
    slow = plan_cpu(CONFIG, torch.bfloat16, gemm_timer=slower_timer({"bfloat16": 6.0}),
                    attention_timer=lambda *a: 1e-3, path_available=lambda p, d: True)
    assert slow.time_vs_float32 == pytest.approx(6.0)
    assert slow.summary()["time_vs_float32"] == pytest.approx(6.0)
    usable = {p for p in AVAILABLE_BF16}
    slow.gemm = {shape: [(ALL_ROWS, sorted(usable)[0])] for shape in slow.gemm}
    with pytest.warns(pybert.engine.SlowPrecisionWarning, match=r"bfloat16 runs 6\.0x slower "
                                                                r"than float32 on this CPU"):
        pybert.Engine.from_model(net, dtype=torch.bfloat16, cpu_plan=slow)
    slow.time_vs_float32 = 0.5
    with warnings_as_errors():
        pybert.Engine.from_model(net, dtype=torch.bfloat16, cpu_plan=slow)


@pytest.mark.slow  # it times real GEMMs: minutes under qemu, where no speed means anything
def test_bfloat16_on_this_cpu_warns_exactly_when_it_measures_slower():
    """The real measurement: on a CPU without AVX512-BF16/AMX (the GEMM libraries' bfloat16
    instructions) bfloat16 is slower than float32 and the engine says so."""
    isa = set(cpu_plan.cpu_identity()["isa"])
    net = random_model(CONFIG, seed=2)
    with warnings_as_errors(allow=pybert.engine.SlowPrecisionWarning) as caught:
        engine = pybert.Engine.from_model(net, dtype=torch.bfloat16)
    ratio = engine.cpu_plan.time_vs_float32
    assert ratio is not None and ratio > 0
    warned = any(issubclass(w.category, pybert.engine.SlowPrecisionWarning) for w in caught)
    assert warned == (ratio > pybert.engine.engine.SLOW_PRECISION_RATIO)
    if not isa & {"avx512_bf16", "amx_bf16"} and cpu_plan.cpu_identity()["machine"] == "x86_64":
        assert warned, f"bfloat16 measured {ratio:.2f}x float32 on a CPU without bfloat16 " \
                       "instructions"


@pytest.mark.slow  # it times real GEMMs: minutes under qemu, where no speed means anything
def test_auto_takes_bfloat16_only_where_it_measures_faster():
    net = random_model(CONFIG, seed=3)
    ratio = cpu_plan.time_ratio(CONFIG, "bfloat16")
    engine = pybert.Engine.from_model(net, dtype="auto")
    expected = torch.bfloat16 if ratio is not None and \
        ratio <= pybert.engine.engine.AUTO_BFLOAT16_RATIO else torch.float32
    assert engine.dtype == expected


class warnings_as_errors:
    """Every warning but ``allow``'s fails the test; the caught ones are kept."""

    def __init__(self, allow=()):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._allow = allow if isinstance(allow, tuple) else (allow,)

    def __enter__(self):
        import warnings

        caught = self._catch.__enter__()
        warnings.simplefilter("always")
        self._caught = caught
        return caught

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        bad = [w for w in self._caught if not issubclass(w.category, self._allow)]
        assert not bad, [str(w.message) for w in bad]


def test_int8_that_takes_no_int8_gemm_says_so():
    """An int8 plan whose every GEMM went to a float path (float won at every shape) warns:
    int8's accuracy cost for none of its speed."""
    if not INT8_AVAILABLE:
        pytest.skip("no int8 GEMM path in this torch")
    net = random_model(CONFIG, seed=4)
    floats = plan_cpu(CONFIG, torch.float32, int8=True,
                      gemm_timer=slower_timer({"int8": 3.0}),
                      attention_timer=lambda *a: 1e-3, path_available=lambda p, d: True)
    assert all(path != "int8" for choice in floats.gemm.values() for _, path in choice)
    floats.gemm = {shape: [(ALL_ROWS, AVAILABLE_FP32[0])] for shape in floats.gemm}
    with pytest.warns(pybert.engine.SlowPrecisionWarning, match=r"int8' gains nothing .* "
                                                                r"3\.0x float32's time"):
        pybert.Engine.from_model(net, quantize="int8", cpu_plan=floats)
    floats.gemm = {shape: [(ALL_ROWS, "int8")] for shape in floats.gemm}
    with warnings_as_errors():
        pybert.Engine.from_model(net, quantize="int8", cpu_plan=floats)
