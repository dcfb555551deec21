"""Experiment `lambda-sweep`: the authors' figure (docs/science.md §7).

NTK+QuadNTK, f_L + f_Q, trained by plain GD from U = 0 on ((β·x)² − 1 + β·x)/√3 with the bulk
penalty swept over λ_1 ∈ {0, 1e-5, …, 1e-1}. λ_1 weighs the bulk output summed over the training
points — the scale of the authors' figure — so the per-sample-mean weight used by
`jaxntk.Regularizer` is λ_b = n·λ_1 (`Regularizer.from_sum_scale`). The figure's three panels are
drawn against log_d t: the regularizer value n·R_bulk = ‖(I − U_k U_kᵀ) f_L(X; U)‖² (summed over
the training points, as the authors plot it), the training loss, and the test loss, mean ± std over
seeds. Every λ and seed, each seed with its own task and network, trains in one compiled program.

Writes `lambda-sweep.json` (config, final values per λ and seed), `lambda-sweep.npz` (curves) and
`lambda-sweep.png`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxntk import objectives, training
from jaxntk.experiments._common import config_setup, labelled_progress, mean_std_by, write_results

NAME = "lambda-sweep"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the λ sweep (defaults: the `cpu` preset).

    Attributes:
        d: input dimension.
        n: training points.
        m: width of the two-layer network.
        n_test: test points.
        steps: optimizer steps T of plain GD.
        lr: learning rate.
        lambdas: the bulk weights λ_1 on the sum over the n training points (the authors'
            scale); λ_b = n · λ_1 on the per-sample mean.
        lambda_pop: λ_p on R_pop.
        k: top NTK directions kept out of the penalty (default d).
        seeds: one run per seed.
        eval_every: steps between evaluations.
        eval_points: evaluations spaced evenly in log t (`jaxntk.training.eval_schedule`), added
            to those every eval_every steps, so the test-loss panel against log_d t is drawn
            from data from t = 1; 0 adds none.
        distribution: input distribution, "gaussian" or "sphere".
        activation: a name in `jaxntk.ACTIVATIONS`.
    """

    d: int = 30
    n: int = 164
    m: int = 4000
    n_test: int = 4000
    steps: int = 10_000
    lr: float = 1.0
    lambdas: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    lambda_pop: float = 0.0
    k: int | None = None
    seeds: tuple[int, ...] = (1, 11, 111)
    eval_every: int = 250
    eval_points: int = 40
    distribution: str = "gaussian"
    activation: str = "shifted_sigmoid"


PRESETS = {
    "cpu": Config(),
    "paper": Config(d=100, n=1000, m=10_000, n_test=10_000, steps=20_000, eval_every=250),
}
"""cpu: d = 30, n = 164, m = 4000, T = 10 000; paper: the authors' d = 100, n = 1000, m = 10 000,
T = 20 000 (a GPU run)."""


def run(
    config: Config,
    out: Path,
    progress: bool | Callable[[dict], None] = True,
    checkpoint: Path | None = None,
) -> dict:
    """Train NTK+QuadNTK for every λ and seed (one program); write JSON, NPZ and PNG to `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write lambda-sweep.json, .npz and .png into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.
        checkpoint: a folder where the run saves its state after every chunk; a rerun with
            the same settings resumes from it.

    Returns:
        The document written to `out/lambda-sweep.json`: config, the scale convention, one row
        per λ and seed, and the summary.
    """
    out.mkdir(parents=True, exist_ok=True)
    reg = objectives.Regularizer.from_sum_scale(
        list(config.lambdas), config.n, pop=config.lambda_pop, k=config.k
    )
    rows, curves = [], {}
    setups = [config_setup(config, seed, config.d, config.n) for seed in config.seeds]
    tasks, nets = [t for t, _ in setups], [net for _, net in setups]
    # every λ and every seed (each with its own task and network) in one compiled program
    t0 = time.perf_counter()
    r = training.train(
        nets,
        tasks,
        "regularized",
        steps=config.steps,
        lr=config.lr,
        reg=reg,
        seeds=list(config.seeds),
        eval_every=config.eval_every,
        eval_at=evaluation_steps(config),
        progress=labelled_progress(progress, "lambda-sweep", "test (mean over λ, seeds)"),
        checkpoint=checkpoint,
        resume=checkpoint is not None,
    )
    seconds = time.perf_counter() - t0
    h, tr = r.history, r.trace
    quad = tasks[0].part_names.index("quadratic")
    for j, seed in enumerate(config.seeds):
        for i, lam in enumerate(config.lambdas):
            rows.append(
                {
                    "lambda_sum": lam,
                    "lambda_bulk_mean": lam * config.n,
                    "seed": seed,
                    "test_loss": float(h["test_loss"][i, j, -1]),
                    "train_loss": float(h["train_loss"][i, j, -1]),
                    "bulk_sum": float(config.n * h["bulk"][i, j, -1]),
                    "bulk_sum_peak": float(config.n * np.nanmax(h["bulk"][i, j])),
                    "share_quadratic_by_fq": float(h["share_quadratic"][i, j, -1, quad]),
                    "share_quadratic_by_fl": float(h["share_linear"][i, j, -1, quad]),
                    "diverged_at_step": int(r.diverged_at_step[i, j]),
                    "seconds_all_settings": seconds,
                }
            )
        for name in ("test_loss", "train_loss", "bulk", "pop", "u_norm"):
            curves[f"{seed}/{name}"] = h[name][:, j]
        for name in ("share_linear", "share_quadratic"):
            curves[f"{seed}/{name}"] = h[name][:, j]
        curves[f"{seed}/trace_mse"] = tr["mse"][:, j]
        curves[f"{seed}/trace_bulk"] = tr["bulk"][:, j]
    curves["step"], curves["trace_step"] = h["step"], tr["step"]
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "scale": "lambda_sum weighs the bulk output summed over the n training points "
        "(the authors' figure); lambda_bulk_mean = n * lambda_sum weighs the per-sample mean",
        "results": rows,
        "summary": summarize(rows),
    }
    write_results(out, NAME, doc, curves)
    from jaxntk import plots

    plots.lambda_sweep_figure(out / f"{NAME}.json", out / f"{NAME}.npz", out / f"{NAME}.png")
    return doc


def evaluation_steps(config: Config) -> list[int] | None:
    """The steps at which the sweep evaluates: every `eval_every` steps and, unless eval_points is
    0, the log-spaced schedule as well (`jaxntk.training.eval_schedule`); None for every
    eval_every steps alone (the trainer's default schedule).

    Args:
        config: the settings.

    Returns:
        The increasing steps in [1, steps], or None when eval_points is 0.

    Example:
        >>> from jaxntk.experiments.lambda_sweep import Config, evaluation_steps
        >>> evaluation_steps(Config(steps=1000, eval_every=250, eval_points=4))
        [1, 10, 100, 250, 500, 750, 1000]
    """
    if not config.eval_points:
        return None
    log = training.eval_schedule(config.steps, "log", config.eval_points)
    every = np.arange(config.eval_every, config.steps + 1, config.eval_every)
    return np.union1d(log, every).astype(int).tolist()


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per λ: final test/train loss and final/peak n·R_bulk, mean and std over seeds.

    Args:
        rows: the rows of `run`'s document, one per λ and seed.

    Returns:
        f"{λ_1:g}" -> {"<field>_mean", "<field>_std"} for test_loss, train_loss, bulk_sum,
        bulk_sum_peak and share_quadratic_by_fq.
    """
    fields = ("test_loss", "train_loss", "bulk_sum", "bulk_sum_peak", "share_quadratic_by_fq")
    return {f"{lam:g}": v for lam, v in mean_std_by(rows, "lambda_sum", fields).items()}
