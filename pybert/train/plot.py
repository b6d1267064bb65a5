"""The loss curve of a run (loss.png), drawn from its metrics.jsonl with matplotlib, an
optional dependency (``pip install "pybert-engine[plot]"``): without it the run writes no picture."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_losses"]


def plot_losses(metrics_path: Path, png_path: Path) -> bool:
    """Draw the train and held-out losses of ``metrics_path`` into ``png_path``; False (and no
    file) where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    held_out = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in train], [r["mlm_loss"] for r in train], label="MLM (train)")
    ax.plot([r["step"] for r in train], [r["nsp_loss"] for r in train], label="NSP (train)")
    if held_out:
        ax.plot([r["step"] for r in held_out], [r["mlm_loss"] for r in held_out], "o--",
                label="MLM (held out)")
        ax.plot([r["step"] for r in held_out], [r["nsp_loss"] for r in held_out], "o--",
                label="NSP (held out)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("pybert pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return True
