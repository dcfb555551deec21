"""Figures drawn from saved results (JSON/NPZ), never from live training state."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["variants_chart"]


def variants_chart(json_path: Path, png_path: Path) -> Path:
    """Bar chart of the final test loss of each variant (mean ± std over seeds), with the variance
    of the target's quadratic part marked: the loss of a model that learns only the linear part."""
    doc = json.loads(Path(json_path).read_text())
    summary = doc["summary"]
    names = list(summary)
    mean = np.array([summary[v]["test_mean"] for v in names])
    std = np.array([summary[v]["test_std"] for v in names])
    cfg = doc["config"]
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    ax.bar(names, mean, yerr=std, capsize=4, color="#4c72b0")
    quad = doc.get("part_variances", {}).get("quadratic")
    if quad is not None:
        ax.axhline(quad, color="#c44e52", ls="--", lw=1, label="variance of the quadratic part")
        ax.legend(loc="upper right", fontsize=8)
    for i, v in enumerate(mean):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("test loss (1 = learned nothing)")
    ax.set_title(
        f"variants on ((β·x)² − 1 + β·x)/√3: d={cfg['d']}, n={cfg['n']}, m={cfg['m']}, "
        f"T={cfg['steps']}, {len(cfg['seeds'])} seeds",
        fontsize=9,
    )
    ax.tick_params(axis="x", labelsize=8)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)
