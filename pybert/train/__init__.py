"""Pretraining in PyTorch (the eager model, never the engine): ``data`` (the book's WikiText-2
pipeline: NSP pairs, MLM masks), ``trainer`` (the run: build or resume, step, evaluate,
checkpoint; data parallel under torchrun) and ``plot`` (the loss curve)."""

from .data import Corpus, PretrainingData, build_vocab, builtin_corpus, load_corpus, \
    make_pretraining_data
from .trainer import PretrainResult, RunState, TrainConfig, evaluate, masked_word_samples, \
    mlm_nsp_losses, pretrain, saved_steps

__all__ = ["Corpus", "PretrainingData", "PretrainResult", "RunState", "TrainConfig",
           "build_vocab", "builtin_corpus", "evaluate", "load_corpus", "make_pretraining_data",
           "masked_word_samples", "mlm_nsp_losses", "pretrain", "saved_steps"]
