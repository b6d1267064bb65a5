"""The trainer: the loss falls, checkpoints serve, resume continues exactly, DDP ranks agree."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pybert
from pybert.train import TrainConfig, pretrain

from helpers import rel_l2

# On the CPU, so that the exact-resume and DDP comparisons are deterministic everywhere; the
# GPU path has its own test below.
TINY = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, dropout=0.1,
            max_len=32, batch_size=64, lr=5e-3, eval_every=10, save_every=10, log_every=1,
            eval_batches=2, progress=False, device="cpu")


def read_metrics(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_the_checkpoint_serves(tmp_path):
    out = tmp_path / "run"
    result = pretrain(TrainConfig(out=str(out), steps=40, **TINY))
    rows = [r for r in read_metrics(out) if r["kind"] == "train"]
    first = sum(r["mlm_loss"] for r in rows[:3]) / 3
    last = sum(r["mlm_loss"] for r in rows[-3:]) / 3
    assert last < first - 0.5, (first, last)
    assert all(r["lr"] > 0 and r["pairs_per_s"] > 0 for r in rows)
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert evals and 0.0 <= evals[-1]["mlm_accuracy"] <= 1.0 and evals[-1]["pairs"] > 0
    assert (out / "loss.png").stat().st_size > 1000
    ckpt = Path(result.checkpoint)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "trainer.json",
        "vocab.txt"]

    engine = pybert.load(ckpt)
    net, vocab = pybert.load_model(ckpt)
    assert vocab is not None and len(vocab) == engine.config.vocab_size
    net.eval()
    tokens = torch.randint(0, len(vocab), (4, 20))
    segments = torch.zeros_like(tokens)
    valid_lens = torch.tensor([20.0, 7.0, 13.0, 1.0])
    pred = torch.tensor([[1, 2], [3, 6], [0, 12], [0, 0]])
    with torch.no_grad():
        ref = net.double()(tokens, segments, valid_lens.double(), pred)
    encoded, mlm, nsp = engine(tokens, segments, valid_lens, pred)
    mask = torch.arange(20)[None, :] < valid_lens[:, None]
    assert rel_l2(encoded[mask], ref[0][mask]) <= 1e-5
    assert rel_l2(mlm, ref[1]) <= 1e-5 and rel_l2(nsp, ref[2]) <= 1e-5


def test_an_existing_run_needs_resume_or_overwrite(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), steps=2, **TINY)
    pretrain(config)
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(config)
    pretrain(config, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(TrainConfig(out=str(tmp_path / "other"), steps=2, **TINY), resume=True)


def test_resume_continues_exactly(tmp_path):
    """6 steps, then resume to 12, equals 12 steps straight (constant lr: the schedule does not
    depend on the total)."""
    common = dict(TINY, schedule="constant", warmup_steps=0, save_every=100, eval_every=100)
    straight = pretrain(TrainConfig(out=str(tmp_path / "a"), steps=12, **common)).model
    pretrain(TrainConfig(out=str(tmp_path / "b"), steps=6, **common))
    resumed = pretrain(TrainConfig(out=str(tmp_path / "b"), steps=12, **common),
                       resume=True).model
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    steps = [r["step"] for r in read_metrics(tmp_path / "b") if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def _cli(*args, cwd):
    # cwd outside the checkout: `python -m` puts cwd first on sys.path, and the checkout's
    # pybert/ folder (no compiled extension) must not shadow the installed package.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "pybert", "pretrain", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd)


def _finish(proc, timeout):
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _flags(config: dict) -> list[str]:
    flags = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_killed_run_saves_and_resumes(tmp_path, how):
    out = tmp_path / "run"
    flags = _flags(dict(TINY, save_every=1000, eval_every=1000)) + ["--out", str(out)]
    proc = _cli(*flags, "--steps", "100000", cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(how)
    output = _finish(proc, 120)
    assert proc.returncode == 130, output
    assert "run again with --resume" in output
    state = json.loads((out / "checkpoint" / "trainer.json").read_text())
    assert state["step"] >= 3
    pybert.load(out / "checkpoint")  # the interrupted checkpoint serves

    # A row logged after the checkpoint (as a SIGKILL can leave) must not appear twice.
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": state["step"] + 1, "mlm_loss": 9.0}) + "\n")
    again = _cli(*flags, "--steps", str(state["step"] + 2), "--resume", cwd=tmp_path)
    output = _finish(again, 300)
    assert again.returncode == 0, output
    steps = [r["step"] for r in read_metrics(out) if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == state["step"] + 2
    assert all(r["mlm_loss"] != 9.0 for r in read_metrics(out) if r["kind"] == "train")
    assert '"step": ' + str(state["step"] + 2) in output
    assert "top-5" in output


@pytest.mark.slow
def test_two_process_ddp_agrees(tmp_path):
    # No dropout: its masks are drawn per rank, so only without it is the one-process run
    # the same computation.
    config = dict(TINY, steps=4, out=str(tmp_path / "ddp"), device="cpu", save_every=100,
                  eval_every=100, dropout=0.0)
    worker = Path(__file__).with_name("ddp_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(29500 + os.getpid() % 1000), str(worker), json.dumps(config)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rank0 = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ddp" / "rank1.json").read_text())
    assert rank0 == rank1
    # ...and two ranks compute what one process computes on the whole batch.
    single = pretrain(TrainConfig(**dict(config, out=str(tmp_path / "single")))).model
    params = torch.cat([p.detach().double().reshape(-1) for p in single.parameters()])
    assert abs(float(params.abs().sum()) - rank0["abs_sum"]) <= 1e-6 * rank0["abs_sum"]
    torch.testing.assert_close(params[:50], torch.tensor(rank0["head"], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_training_on_the_gpu_with_bf16(tmp_path):
    out = tmp_path / "run"
    result = pretrain(TrainConfig(out=str(out), steps=40, **dict(TINY, device="cuda")))
    rows = [r for r in read_metrics(out) if r["kind"] == "train"]
    first = sum(r["mlm_loss"] for r in rows[:3]) / 3
    last = sum(r["mlm_loss"] for r in rows[-3:]) / 3
    assert last < first - 0.5, (first, last)
    assert next(result.model.parameters()).device.type == "cuda"
    pybert.load(result.checkpoint, device="cuda", dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# The trainer's parts, each on its own.

def test_run_state_round_trips_the_trainer_file(tmp_path):
    from pybert.train.trainer import TRAINER_STATE, RunState

    state = RunState(step=7, epoch=2, batch_in_epoch=3, config={"steps": 20, "lr": 1e-3},
                     param_groups=[{"lr": 1e-3, "initial_lr": 2e-3, "params": [0, 1]}])
    (tmp_path / TRAINER_STATE).write_text(state.to_json())
    assert RunState.read(tmp_path) == state
    # the files written before RunState existed (the same keys) still read
    legacy = {"step": 7, "epoch": 2, "batch_in_epoch": 3, "config": {"steps": 20},
              "param_groups": []}
    assert RunState.from_json(json.dumps(legacy)).step == 7


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_batch_indices_partition_each_global_batch(world_size):
    from pybert.train.trainer import rank_batch_indices

    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    for batch_in_epoch in range(4):  # the last batch (index 3) is short: 103 = 3 * 32 + 7
        shares = [rank_batch_indices(order, batch_in_epoch, 32, world_size, rank)
                  for rank in range(world_size)]
        global_index = shares[0][0]
        assert all(torch.equal(g, global_index) for g, _ in shares)
        full = order[batch_in_epoch * 32:(batch_in_epoch + 1) * 32]
        assert len(global_index) == len(full) // world_size * world_size
        assert torch.equal(global_index, full[:len(global_index)])
        assert torch.equal(torch.cat([local for _, local in shares]), global_index)
        assert len({len(local) for _, local in shares}) == 1  # equal shards


def test_rank_seeds_differ_by_rank_and_resume_position():
    from pybert.train.trainer import rank_seed

    seeds = {rank_seed(0, rank, step) for rank in range(1, 4) for step in (0, 10, 100)}
    assert len(seeds) == 9
    assert rank_seed(5, 1, 10) == rank_seed(5, 1, 10)


def test_prepare_run_and_its_folder(tmp_path):
    from pybert.train.trainer import prepare_run, prepare_run_folder

    config = TrainConfig(out=str(tmp_path / "run"), steps=2, **TINY)
    assert prepare_run(config, resume=False, overwrite=False) == (config, None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        prepare_run(config, resume=True, overwrite=False)
    pretrain(config)
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_run(config, resume=False, overwrite=False)
    resumed, previous = prepare_run(dataclasses.replace(config, steps=5, lr=1.0),
                                    resume=True, overwrite=False)
    assert previous == tmp_path / "run" / "checkpoint"
    assert resumed.steps == 5 and resumed.lr == TINY["lr"]  # the run's own settings
    rows = read_metrics(tmp_path / "run")
    prepare_run_folder(config, resumed_at=1)
    assert [r for r in read_metrics(tmp_path / "run")] == [r for r in rows if r["step"] <= 1]
    prepare_run_folder(config, resumed_at=None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_train_step_updates_the_weights_and_reports_the_lr():
    from pybert.train.data import builtin_corpus, build_vocab, make_pretraining_data
    from pybert.train.trainer import _lr_lambda, _make_optimizer, train_step

    config = TrainConfig(steps=10, warmup_steps=2, **TINY)
    paragraphs = builtin_corpus()[:200]
    vocab = build_vocab(paragraphs, min_freq=config.min_freq)
    data = make_pretraining_data(paragraphs, vocab, config.max_len, seed=0)
    torch.manual_seed(0)
    net = config.model_config(len(vocab)).build_model().train()
    optimizer = _make_optimizer(net, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    before = net.encoder.token_embedding.weight.detach().clone()
    losses, lr = train_step(net, net, optimizer, scheduler, data.batch(slice(0, 16)), config,
                            lambda: torch.autocast("cpu", enabled=False))
    assert losses.shape == (3,) and bool(torch.isfinite(losses).all())
    assert lr == pytest.approx(config.lr / 2)  # step 0 of a 2-step warm-up
    assert not torch.equal(before, net.encoder.token_embedding.weight)
