"""Experiment `variants`: the six variants of docs/science.md §5 on the paper's target, same
data, 3 seeds.

Target f*(x) = ((β·x)² − 1 + β·x)/√3: a linear part of variance 1/3 and a rank-one quadratic part of
variance 2/3. With n ≪ d² the NTK cannot learn the quadratic part (test loss ≈ 2/3); the paper's
claim is that NTK+QuadNTK with the good-direction regularizer learns part of it.

Each seed draws its own data and network; the training program is compiled once per variant and
reused across seeds. Writes `variants.json` (config and one row per variant and seed),
`variants.npz` (test-loss histories) and `variants.png`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxntk import objectives
from jaxntk.experiments._common import config_setup, each_variant, mean_std_by, write_results

NAME = "variants"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the variants experiment (defaults: the `cpu` preset).

    Attributes:
        d: input dimension.
        n: training points.
        m: width of the two-layer network.
        n_test: test points.
        steps: optimizer steps T of plain GD.
        lr: learning rate.
        lambda_bulk: λ_b of the regularized variant, on the per-sample-mean R_bulk.
        eval_every: steps between evaluations.
        seeds: one run per seed; each seed draws its own data and network.
        variants: names in `jaxntk.objectives.VARIANTS`.
        distribution: input distribution, "gaussian" or "sphere".
        activation: a name in `jaxntk.ACTIVATIONS`.
    """

    d: int = 30
    n: int = 164
    m: int = 4000
    n_test: int = 4000
    steps: int = 5000
    lr: float = 1.0
    lambda_bulk: float = 1.6
    eval_every: int = 250
    seeds: tuple[int, ...] = (1, 11, 111)
    variants: tuple[str, ...] = objectives.PAPER_VARIANTS
    distribution: str = "gaussian"
    activation: str = "shifted_sigmoid"


PRESETS = {
    "cpu": Config(),
    "paper": Config(
        d=100, n=1000, m=10_000, n_test=10_000, steps=20_000, lambda_bulk=1.0, eval_every=500
    ),
}
"""cpu: d = 30, n = 164 ≈ d^1.5, m = 4000, T = 5000 (docs/science.md §7's small probe, shorter);
paper: the authors' size."""


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Train every variant for every seed; write variants.json/.npz/.png into `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/variants.json`: config, one row per variant and seed
        (final losses, each part's share carried by f_L and f_Q), and the summary.

    Raises:
        ValueError: for an unknown variant name.
    """
    for v in config.variants:
        objectives.get_variant(v)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    regularized = objectives.Regularizer(bulk=config.lambda_bulk)
    for seed in config.seeds:
        task, net = config_setup(config, seed, config.d, config.n)
        runs = each_variant(net, task, config, seed, progress, f"seed {seed}", regularized)
        for variant, r, seconds in runs:
            final = r.final
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "train_loss": float(final["train_loss"][0, 0]),
                    "test_loss": float(final["test_loss"][0, 0]),
                    "share_linear": dict(
                        zip(task.part_names, final["share_linear"][0, 0].tolist(), strict=True)
                    ),
                    "share_quadratic": dict(
                        zip(task.part_names, final["share_quadratic"][0, 0].tolist(), strict=True)
                    ),
                    "diverged_at_step": int(r.diverged_at_step[0, 0]),
                    "seconds": seconds,
                }
            )
            curves[f"{variant}/{seed}/test_loss"] = r.history["test_loss"][0, 0]
            curves[f"{variant}/{seed}/train_loss"] = r.history["train_loss"][0, 0]
            curves["step"] = r.history["step"]
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "part_variances": dict(
            zip(task.part_names, np.asarray(task.target.variances).tolist(), strict=True)
        ),
        "results": rows,
        "summary": summarize(rows),
    }
    write_results(out, NAME, doc, curves)
    from jaxntk import plots

    plots.variants_chart(out / f"{NAME}.json", out / f"{NAME}.png")
    return doc


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per variant: final test and train loss (mean, std over seeds) and total seconds.

    Args:
        rows: the rows of `run`'s document, one per variant and seed.

    Returns:
        variant -> {"test_loss_mean", "test_loss_std", "train_loss_mean", "train_loss_std",
        "seconds", ...}.
    """
    out = mean_std_by(rows, "variant", ("test_loss", "train_loss"))
    for variant, entry in out.items():
        entry["seconds"] = float(sum(r["seconds"] for r in rows if r["variant"] == variant))
    return out
