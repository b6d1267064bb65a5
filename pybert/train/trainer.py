"""Pretraining: the book's MLM + NSP objective on WikiText-2 (or any corpus), done properly.

Differences from the book's loop, each deliberate:
- the MLM loss is weighted by the prediction weights (padded slots do not count) and the
  positional embeddings learn (see pybert.model);
- AdamW with linear warm-up and decay, gradient clipping, bf16 autocast on GPU;
- masks and NSP pairs are drawn anew each epoch (from the seed and the epoch number);
- held-out evaluation, metrics.jsonl, a loss-curve PNG, checkpoints that pybert.load serves,
  and resume after an interruption;
- data-parallel training under torchrun (DistributedDataParallel): every rank builds the same
  global batch and takes its share; the losses are normalised by the global batch, so N ranks
  compute the same update as one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .._signals import stop_requested
from ..checkpoint import load_model, save
from ..config import BertConfig
from ..engine.devices import resolve_device
from ..tokenization import Vocab
from .data import Corpus, PretrainingData, build_vocab, load_corpus, make_pretraining_data
from .plot import plot_losses

__all__ = ["TrainConfig", "RunState", "PretrainResult", "Ranks", "pretrain", "evaluate",
           "mlm_nsp_losses", "rank_batch_indices", "rank_seed", "prepare_run", "prepare_run_folder", "train_step"]

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer.json"
OPTIMIZER_STATE = "optimizer.safetensors"
EVAL_SEED = 1_000_003  # the held-out masks are fixed, so evaluations compare across runs


@dataclass
class TrainConfig:
    data: str | None = None          # None: the built-in corpus (Python's documentation topics)
    out: str = "runs/pretrain"
    # the book's model and batch
    num_hiddens: int = 128
    ffn_num_hiddens: int = 256
    num_heads: int = 2
    num_layers: int = 2
    dropout: float = 0.2
    max_len: int = 64
    batch_size: int = 512
    min_freq: int = 5
    # optimisation
    steps: int = 200
    optimizer: str = "adamw"         # adamw, or adam (the book's)
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = -1           # -1: 10% of the steps
    schedule: str = "linear"         # linear decay to 0 after warm-up, or constant (the book's)
    clip_norm: float = 1.0           # 0 disables clipping
    precision: str = "auto"          # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    eval_every: int = 100
    save_every: int = 100
    log_every: int = 10
    eval_batches: int = 8            # held-out batches per evaluation (0: the whole test split)
    progress: bool = True

    def model_config(self, vocab_size: int) -> BertConfig:
        return BertConfig(vocab_size=vocab_size, num_hiddens=self.num_hiddens,
                          ffn_num_hiddens=self.ffn_num_hiddens, num_heads=self.num_heads,
                          num_layers=self.num_layers, max_len=self.max_len, dropout=self.dropout)

    def validate(self) -> None:
        positive = ("num_hiddens", "ffn_num_hiddens", "num_heads", "num_layers", "batch_size",
                    "steps", "eval_every", "save_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 5:
            raise ValueError(f"max_len must be >= 5, got {self.max_len}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adamw", "adam"):
            raise ValueError(f"optimizer must be adamw or adam, got {self.optimizer!r}")
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be linear or constant, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        self.model_config(vocab_size=8)  # checks heads divide hidden, dropout range

    @property
    def resolved_warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps < 0 else self.warmup_steps


def mlm_nsp_losses(net, batch, world_size: int = 1, global_mlm_weight: float | None = None,
                   global_batch: int | None = None):
    """(mlm_loss, nsp_loss, mlm_loss_book) of one batch: the MLM cross-entropy averaged over
    real prediction slots (weights), the NSP cross-entropy averaged over pairs, and the book's
    unweighted MLM figure (for comparison only; it has no gradient).

    Under data parallelism each rank passes its shard plus the global normalisers, so that the
    average of the ranks' gradients (what DDP computes) is the gradient of the global batch."""
    tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels, nsp_labels = batch
    _, mlm_y_hat, nsp_y_hat = net(tokens, segments, valid_lens, pred_positions)
    mlm_per_slot = F.cross_entropy(mlm_y_hat.reshape(-1, mlm_y_hat.shape[-1]).float(),
                                   mlm_labels.reshape(-1), reduction="none")
    weights = mlm_weights.reshape(-1)
    mlm_norm = float(weights.sum()) if global_mlm_weight is None else global_mlm_weight
    nsp_norm = tokens.shape[0] if global_batch is None else global_batch
    mlm_loss = (mlm_per_slot * weights).sum() / max(mlm_norm, 1e-8) * world_size
    nsp_loss = F.cross_entropy(nsp_y_hat.float(), nsp_labels, reduction="sum") / nsp_norm \
        * world_size
    # The book's figure, logged only: its loss averages over every slot, padded ones too.
    mlm_loss_book = mlm_per_slot.detach().mean()
    return mlm_loss, nsp_loss, mlm_loss_book


@torch.no_grad()
def evaluate(net, data: PretrainingData, batch_size: int, device, max_batches: int = 0,
             autocast=None) -> dict:
    """Held-out MLM and NSP loss and accuracy (MLM over real prediction slots only)."""
    was_training = net.training
    net.eval()
    totals = dict(mlm_loss=0.0, nsp_loss=0.0, mlm_correct=0.0, nsp_correct=0.0, slots=0.0,
                  pairs=0)
    num_batches = math.ceil(len(data) / batch_size)
    if max_batches > 0:
        num_batches = min(num_batches, max_batches)
    for i in range(num_batches):
        batch = [t.to(device) for t in data.batch(slice(i * batch_size, (i + 1) * batch_size))]
        tokens, segments, valid_lens, pred_positions, weights, labels, nsp_labels = batch
        with autocast() if autocast else contextlib.nullcontext():
            _, mlm, nsp = net(tokens, segments, valid_lens, pred_positions)
        mlm, nsp = mlm.float(), nsp.float()
        per_slot = F.cross_entropy(mlm.reshape(-1, mlm.shape[-1]), labels.reshape(-1),
                                   reduction="none")
        w = weights.reshape(-1)
        totals["mlm_loss"] += float((per_slot * w).sum())
        totals["mlm_correct"] += float(((mlm.argmax(-1).reshape(-1) == labels.reshape(-1)) * w)
                                       .sum())
        totals["slots"] += float(w.sum())
        totals["nsp_loss"] += float(F.cross_entropy(nsp, nsp_labels, reduction="sum"))
        totals["nsp_correct"] += float((nsp.argmax(-1) == nsp_labels).sum())
        totals["pairs"] += tokens.shape[0]
    net.train(was_training)
    return {
        "mlm_loss": totals["mlm_loss"] / max(totals["slots"], 1.0),
        "nsp_loss": totals["nsp_loss"] / max(totals["pairs"], 1),
        "mlm_accuracy": totals["mlm_correct"] / max(totals["slots"], 1.0),
        "nsp_accuracy": totals["nsp_correct"] / max(totals["pairs"], 1),
        "pairs": totals["pairs"],
    }


def _lr_lambda(config: TrainConfig):
    warmup, total = config.resolved_warmup, config.steps

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _make_optimizer(net: nn.Module, config: TrainConfig):
    if config.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=config.lr)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        # No weight decay on biases, LayerNorms or embeddings (the usual BERT recipe).
        (no_decay if p.dim() < 2 or "embedding" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as flat tensors (for safetensors) plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer_tensors(optimizer, tensors: dict[str, torch.Tensor], groups: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def _write_checkpoint(out: Path, net, vocab: Vocab, optimizer, state: RunState,
                      corpus: Corpus) -> Path:
    """Write out/checkpoint atomically: build it in a temporary folder, then swap it in."""
    final = out / CHECKPOINT_DIR
    tmp = out / f".{CHECKPOINT_DIR}.tmp"
    old = out / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save(net, tmp, vocab=vocab, extra={"text_format": corpus.text_format,
                                       "corpus": corpus.source, "step": state.step})
    tensors, groups = _optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / OPTIMIZER_STATE))
    state = dataclasses.replace(state, param_groups=groups["param_groups"])
    (tmp / TRAINER_STATE).write_text(state.to_json())
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows logged after the checkpoint a run resumes from (a killed run may have
    logged steps it then lost), so each step appears once."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(row + "\n" for row in rows))
    os.replace(tmp, path)


@dataclass
class RunState:
    """Where a run stands, as its checkpoint's trainer.json records it: the steps taken, the
    position in the epochs, the run's settings and the optimizer's param groups."""

    step: int
    epoch: int
    batch_in_epoch: int
    config: dict
    param_groups: list = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "RunState":
        data = json.loads(text)
        return cls(step=int(data["step"]), epoch=int(data["epoch"]),
                   batch_in_epoch=int(data["batch_in_epoch"]), config=dict(data["config"]),
                   param_groups=list(data.get("param_groups", [])))

    @classmethod
    def read(cls, checkpoint: Path) -> "RunState":
        return cls.from_json((checkpoint / TRAINER_STATE).read_text())


def saved_steps(out) -> int | None:
    """The total steps of the run whose checkpoint is in ``out`` (None: no checkpoint)."""
    found = _find_checkpoint(Path(out))
    return None if found is None else RunState.read(found).config["steps"]


def _find_checkpoint(out: Path) -> Path | None:
    """The last complete checkpoint: out/checkpoint, or the previous one if a swap was cut."""
    for candidate in (out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.old"):
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    return None


def rank_batch_indices(order: torch.Tensor, batch_in_epoch: int, batch_size: int,
                      world_size: int = 1, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the global batch's indices, this rank's share) of batch ``batch_in_epoch`` of an
    epoch whose examples are visited in ``order``. Under data parallelism the global batch is
    cut to a multiple of the ranks (a short last batch of a tiny corpus) and each rank takes
    its contiguous shard."""
    index = order[batch_in_epoch * batch_size:(batch_in_epoch + 1) * batch_size]
    if world_size == 1:
        return index, index
    shard = len(index) // world_size
    index = index[: shard * world_size]
    return index, index[rank * shard:(rank + 1) * shard]


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank ``rank``'s dropout stream from ``step`` on: every rank builds the same
    initial weights from ``seed``, then each draws its own masks (rank 0 keeps the stream a
    checkpoint restores, so it never reseeds)."""
    return seed * 1_000_003 + rank * 7919 + step


def prepare_run(config: TrainConfig, resume: bool, overwrite: bool
                ) -> tuple[TrainConfig, Path | None]:
    """(the config the run goes on with, the checkpoint it resumes from or None). A resumed
    run keeps its own settings; only the total steps, where the files go and the progress bar
    come from the caller. A folder that holds a run needs ``resume`` or ``overwrite``."""
    out = Path(config.out)
    previous = _find_checkpoint(out) if out.exists() else None
    if resume:
        if previous is None:
            raise FileNotFoundError(f"--resume: no checkpoint to resume in {out}")
        saved = RunState.read(previous).config
        config = TrainConfig(**{**saved, "steps": config.steps, "progress": config.progress,
                                "out": config.out})
    elif (previous is not None or (out / "metrics.jsonl").exists()) and not overwrite:
        raise FileExistsError(f"{out} already holds a training run; pass --resume to "
                              "continue it or --overwrite to start again")
    config.validate()
    return config, previous if resume else None


def prepare_run_folder(config: TrainConfig, resumed_at: int | None) -> None:
    """Make the run folder ready (rank 0): a resumed run drops the metrics logged after its
    checkpoint; a new one (or an overwrite) removes everything an old run left."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if resumed_at is not None:
        _truncate_metrics(out / "metrics.jsonl", resumed_at)
    else:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        for name in (CHECKPOINT_DIR, f".{CHECKPOINT_DIR}.old", f".{CHECKPOINT_DIR}.tmp"):
            shutil.rmtree(out / name, ignore_errors=True)
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))


def train_step(model, net, optimizer, scheduler, batch, config: TrainConfig, autocast,
               world_size: int = 1, global_weight: float | None = None,
               global_batch: int | None = None) -> tuple[torch.Tensor, float]:
    """One optimizer step: (the losses (mlm, nsp, the book's mlm) of this rank, detached,
    and the learning rate the step used)."""
    with autocast():
        mlm_loss, nsp_loss, mlm_loss_book = mlm_nsp_losses(model, batch, world_size,
                                                           global_weight, global_batch)
    optimizer.zero_grad(set_to_none=True)
    (mlm_loss + nsp_loss).backward()
    if config.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    return torch.stack([mlm_loss.detach().float(), nsp_loss.detach().float(),
                        mlm_loss_book.float()]), lr


@dataclass(frozen=True)
class Ranks:
    """This process's place under torchrun (WORLD_SIZE, RANK, LOCAL_RANK; one rank without)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device, batch_size: int) -> None:
        """Join the process group (NCCL on GPUs, gloo on CPUs) when there are several ranks."""
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if self.world_size > 1 and batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} must divide evenly over "
                             f"{self.world_size} ranks")


@dataclass
class PretrainResult:
    """What a finished run leaves: its last step, its checkpoint folder, the final held-out
    metrics (empty off rank 0 or without a held-out split), and, for the caller's further
    use, the trained eager model and the corpus it read."""

    step: int
    checkpoint: Path
    metrics: dict
    model: nn.Module
    corpus: Corpus


class _Run:
    """One pretraining run: the model built or resumed, then stepped, logged, evaluated and
    checkpointed. ``pretrain`` drives it; each method is one stage."""

    def __init__(self, config: TrainConfig, previous: Path | None, ranks: Ranks):
        self.config, self.ranks = config, ranks
        self.out = Path(config.out)
        self.device = resolve_device(config.device, needs_engine=False,
                                     local_rank=ranks.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        ranks.start(self.device, config.batch_size)
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto"
                                                       and self.device.type == "cuda")
        self.corpus = load_corpus(config.data, seed=config.seed)
        self._build_or_resume(previous)
        try:
            self.test_data = make_pretraining_data(self.corpus.test, self.vocab, config.max_len,
                                                   EVAL_SEED)
        except ValueError:
            self.test_data = None  # a held-out split too small for one pair: no evaluation
        if ranks.is_main:
            prepare_run_folder(config, self.state.step if previous is not None else None)
        self.metrics_file = open(self.out / "metrics.jsonl", "a") if ranks.is_main else None

    def _build_or_resume(self, previous: Path | None) -> None:
        """The model, optimizer, schedule and position of a new run, or of the checkpoint
        ``previous`` (weights, optimizer state, RNG, step and place in the epoch)."""
        config = self.config
        if previous is not None:
            net, self.vocab = load_model(previous)
        else:
            self.vocab = build_vocab(self.corpus.train, min_freq=config.min_freq)
            torch.manual_seed(config.seed)
            net = config.model_config(len(self.vocab)).build_model()
        self.net = net.to(self.device).train()
        self.model = nn.parallel.DistributedDataParallel(self.net) \
            if self.ranks.world_size > 1 else self.net
        self.optimizer = _make_optimizer(self.net, config)
        self.state = RunState(step=0, epoch=0, batch_in_epoch=0,
                              config=dataclasses.asdict(config))
        if previous is not None:
            saved = RunState.read(previous)
            tensors = load_file(str(previous / OPTIMIZER_STATE))
            # load_state_dict moves each state tensor to its parameter's device.
            _load_optimizer_tensors(self.optimizer, tensors,
                                    {"param_groups": saved.param_groups})
            torch.set_rng_state(tensors["rng.torch"])
            self.state = dataclasses.replace(self.state, step=saved.step, epoch=saved.epoch,
                                             batch_in_epoch=saved.batch_in_epoch)
        if self.ranks.rank > 0:
            torch.manual_seed(rank_seed(config.seed, self.ranks.rank, self.state.step))
        # Constructed at last_epoch = step - 1, the scheduler steps once to the run's step and
        # sets the lr of the next step (the saved param groups carry initial_lr).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(config), last_epoch=self.state.step - 1)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _epoch_data(self, epoch: int) -> tuple[PretrainingData, torch.Tensor]:
        seed = self.config.seed * 1000 + epoch
        data = make_pretraining_data(self.corpus.train, self.vocab, self.config.max_len, seed)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        return data, order

    def _log(self, row: dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()

    def _checkpoint(self, step: int) -> None:
        if self.ranks.is_main:
            _write_checkpoint(self.out, self.net, self.vocab, self.optimizer,
                              dataclasses.replace(self.state, step=step), self.corpus)
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")

    def _step(self, data: PretrainingData, order: torch.Tensor, stop_flag: float):
        """One optimizer step on this epoch's next batch: (losses summed over the ranks, lr,
        pairs in the global batch). The losses' fourth entry is > 0 when a signal asked any
        rank to stop, so every rank stops after the same step."""
        ranks = self.ranks
        global_index, index = rank_batch_indices(order, self.state.batch_in_epoch,
                                                 self.config.batch_size, ranks.world_size,
                                                 ranks.rank)
        global_weight = float(data.mlm_weights[global_index].sum())
        batch = [t.to(self.device, non_blocking=True) for t in data.batch(index)]
        losses, lr = train_step(self.model, self.net, self.optimizer, self.scheduler, batch,
                                self.config, self.autocast, ranks.world_size, global_weight,
                                len(global_index))
        self.state = dataclasses.replace(self.state, batch_in_epoch=self.state.batch_in_epoch + 1)
        # Each rank's losses carry a factor world_size (see mlm_nsp_losses); the book's figure
        # is a plain per-rank mean. Divided by world_size, the sum over ranks is the global
        # value for all three.
        losses = torch.cat([losses.to(self.device),
                            torch.tensor([stop_flag], device=self.device)]) / ranks.world_size
        if ranks.world_size > 1:
            dist.all_reduce(losses)
        return losses, lr, len(global_index)

    def loop(self) -> int:
        """Step until config.steps (or a Ctrl-C / SIGTERM, which checkpoints and raises
        KeyboardInterrupt); returns the last step."""
        from tqdm import tqdm

        config, step = self.config, self.state.step
        data, order = self._epoch_data(self.state.epoch)
        pairs_seen, window_start = 0, time.perf_counter()
        bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True,
                   disable=not (self.ranks.is_main and config.progress))
        with stop_requested() as stop, contextlib.closing(bar):
            while step < config.steps:
                if self.state.batch_in_epoch >= max(1, len(data) // config.batch_size):
                    self.state = dataclasses.replace(self.state, epoch=self.state.epoch + 1,
                                                     batch_in_epoch=0)
                    data, order = self._epoch_data(self.state.epoch)
                    continue
                losses, lr, pairs = self._step(data, order, float(stop.requested))
                step += 1
                pairs_seen += pairs
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    self._log_train(step, losses, lr, pairs_seen / max(
                        time.perf_counter() - window_start, 1e-9), bar)
                    pairs_seen, window_start = 0, time.perf_counter()
                if step % config.eval_every == 0 and step != config.steps:
                    self._evaluate(step, config.eval_batches)
                if float(losses[3]) > 0:  # Ctrl-C or SIGTERM: stop between two steps
                    self._interrupted(step, bar)
                if step % config.save_every == 0 and step != config.steps:
                    self._checkpoint(step)
        return step

    def _log_train(self, step: int, losses: torch.Tensor, lr: float, pairs_per_s: float,
                   bar) -> None:
        row = {"kind": "train", "step": step, "mlm_loss": float(losses[0]),
               "nsp_loss": float(losses[1]), "mlm_loss_unweighted": float(losses[2]), "lr": lr,
               "pairs_per_s": pairs_per_s, "epoch": self.state.epoch}
        self._log(row)
        bar.set_postfix(mlm=f"{row['mlm_loss']:.3f}", nsp=f"{row['nsp_loss']:.3f}",
                        pairs_s=f"{pairs_per_s:.0f}")

    def _evaluate(self, step: int, max_batches: int) -> dict:
        """Held-out metrics (rank 0, where there is a held-out split), logged."""
        if not self.ranks.is_main or self.test_data is None:
            return {}
        metrics = evaluate(self.net, self.test_data, self.config.batch_size, self.device,
                           max_batches, self.autocast)
        self._log({"kind": "eval", "step": step, **metrics})
        return metrics

    def _interrupted(self, step: int, bar) -> None:
        bar.close()
        self._checkpoint(step)
        if self.ranks.is_main:
            print(f"\ninterrupted at step {step}/{self.config.steps}; checkpoint saved in "
                  f"{self.out / CHECKPOINT_DIR}; run again with --resume to continue")
        raise KeyboardInterrupt

    def finish(self, step: int) -> PretrainResult:
        """The final evaluation on the whole held-out split, the last checkpoint."""
        metrics = self._evaluate(step, 0)
        self._checkpoint(step)
        if self.ranks.world_size > 1:
            dist.barrier()
        return PretrainResult(step, self.out / CHECKPOINT_DIR, metrics, self.net, self.corpus)

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None


def pretrain(config: TrainConfig, resume: bool = False, overwrite: bool = False
             ) -> PretrainResult:
    """Train, evaluate, checkpoint: the run in ``config.out``, new, resumed (``resume``) or
    started again (``overwrite``).

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 writes the files."""
    config, previous = prepare_run(config, resume, overwrite)
    run = _Run(config, previous, Ranks.from_env())
    try:
        step = run.loop()
        # The final metrics go to metrics.jsonl, as the periodic ones do.
        return run.finish(step)
    finally:
        run.close()


def masked_word_samples(model, paragraphs, count: int = 5, k: int = 5,
                        seed: int = 0) -> list[dict]:
    """Mask one known word in each of ``count`` held-out sentences and ask the MLM head of
    ``model`` (a d2l-style TextModel) for its top-``k`` words: a look at what it has learned."""
    import random

    vocab = model.vocab
    rng = random.Random(seed)
    sentences = [s for p in paragraphs for s in p
                 if 6 <= len(s) <= model.engine.config.max_len - 2]
    rng.shuffle(sentences)
    samples = []
    for words in sentences:
        choices = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 2
                   and vocab[w] != vocab.unk]
        if not choices:
            continue
        position = rng.choice(choices)
        masked = " ".join([*words[:position], "<mask>", *words[position + 1:]])
        samples.append({"sentence": masked, "answer": words[position],
                        "top_k": model.fill_mask(masked, k=k)[0]})
        if len(samples) == count:
            break
    return samples
