"""Run by tests/test_train.py under torchrun: pretrain on every rank, then write this rank's
parameter checksum so the test can check that the ranks agree."""

import json
import os
import sys

import torch

from pybert.train import TrainConfig, pretrain

config = TrainConfig(**json.loads(sys.argv[1]))
result = pretrain(config)
params = torch.cat([p.detach().double().reshape(-1) for p in result.model.parameters()])
rank = int(os.environ["RANK"])
with open(os.path.join(config.out, f"rank{rank}.json"), "w") as f:
    json.dump({"sum": float(params.sum()), "abs_sum": float(params.abs().sum()),
               "head": params[:50].tolist()}, f)
