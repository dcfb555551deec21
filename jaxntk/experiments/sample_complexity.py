"""Experiment `sample-complexity`: how many samples each variant needs (docs/science.md §6).

On the paper's target ((β·x)² − 1 + β·x)/√3, for each input dimension d and each n on a geometric
grid n = d^p, train the variants and record the final test loss. The NTK needs n ≳ d² to learn the
quadratic part (variance 2/3); the regularized NTK+QuadNTK should need fewer. For each d, seed and
variant, n*(d) is the smallest n on the grid whose test loss is at most `threshold`; the slope of
log n* against log d (fitted per seed, reported as mean ± std over seeds) estimates the exponent.
The grid is coarse (steps of d^¼), so n* is also reported where the test loss crosses the threshold,
interpolated linearly in log n between the two grid points around the crossing
(`n_star_interpolated`, `slopes_interpolated`); the figure shows those. The default threshold,
test loss 1/3, means the linear part (variance 1/3) and at least half of the quadratic part (2/3)
are learned; `slopes_by_threshold` repeats the fit at `other_thresholds` (0.45: a third of the
quadratic part; 0.25: five eighths of it).

The regularized variant's bulk weight is given on the sum scale (λ_1, the authors' figure), so the
per-sample-mean weight λ_b = n·λ_1 grows with n. Writes `sample-complexity.json`, `.npz` and `.png`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxntk import objectives
from jaxntk.experiments._common import config_setup, each_variant, write_results

NAME = "sample-complexity"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the sample-complexity experiment (defaults: the `cpu` preset).

    Attributes:
        ds: the input dimensions d.
        exponents: the training-set sizes n = round(d^p) for p in these exponents.
        m: width of the two-layer network.
        n_test: test points.
        steps: optimizer steps T of plain GD.
        lr: learning rate.
        lambda_sum: the regularized variant's λ_1 on the sum over the training points.
        threshold: n* is where the final test loss crosses this value.
        other_thresholds: further thresholds at which the slopes are also reported.
        eval_every: steps between evaluations.
        seeds: one run per seed.
        variants: names in `jaxntk.objectives.VARIANTS`.
        distribution: input distribution, "gaussian" or "sphere".
        activation: a name in `jaxntk.ACTIVATIONS`.
    """

    ds: tuple[int, ...] = (10, 14, 20, 28)
    exponents: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.25)
    m: int = 2000
    n_test: int = 2000
    steps: int = 4000
    lr: float = 1.0
    lambda_sum: float = 1e-2
    threshold: float = 1 / 3
    other_thresholds: tuple[float, ...] = (0.45, 0.25)
    eval_every: int = 500
    seeds: tuple[int, ...] = (1, 11, 111)
    variants: tuple[str, ...] = ("ntk", "ntk+quadntk", "regularized", "full")
    distribution: str = "gaussian"
    activation: str = "shifted_sigmoid"

    def grid(self, d: int) -> list[int]:
        """The training-set sizes for dimension d: round(d^p), distinct and increasing.

        Args:
            d: the input dimension.

        Returns:
            The sizes n, at least 2 each.
        """
        return sorted({max(2, round(d**p)) for p in self.exponents})


PRESETS = {
    "cpu": Config(),
    "paper": Config(ds=(20, 30, 40, 60), m=10_000, n_test=10_000, steps=20_000),
}
"""cpu: d ∈ {10, 14, 20, 28}, m = 2000, T = 4000; paper: d up to 60 at the authors' width and
length."""


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Train every variant for every (d, n, seed); write JSON, NPZ and PNG into `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write sample-complexity.json, .npz and .png into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/sample-complexity.json`: config, one row per run and the
        summary (`summarize`).

    Raises:
        ValueError: for an unknown variant or a threshold that is not positive.
    """
    for v in config.variants:
        objectives.get_variant(v)
    for t in (config.threshold, *config.other_thresholds):
        if not 0 < t:
            raise ValueError(f"threshold must be > 0, got {t}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in config.ds:
        for n in config.grid(d):
            for seed in config.seeds:
                task, net = config_setup(config, seed, d, n)
                regularized = objectives.Regularizer.from_sum_scale(config.lambda_sum, n)
                where = f"d={d} n={n} seed {seed}"
                for variant, r, seconds in each_variant(
                    net, task, config, seed, progress, where, regularized
                ):
                    rows.append(
                        {
                            "d": d,
                            "n": n,
                            "seed": seed,
                            "variant": variant,
                            "test_loss": float(r.final["test_loss"][0, 0]),
                            "train_loss": float(r.final["train_loss"][0, 0]),
                            "diverged_at_step": int(r.diverged_at_step[0, 0]),
                            "seconds": seconds,
                        }
                    )
    doc = {"experiment": NAME, "config": dataclasses.asdict(config), "results": rows}
    doc.update(summarize(rows, config))
    curves = {
        f"{v}/{d}": np.array(
            [
                [
                    r["test_loss"]
                    for r in rows
                    if r["variant"] == v and r["d"] == d and r["seed"] == s
                ]
                for s in config.seeds
            ]
        )
        for v in config.variants
        for d in config.ds
    }
    write_results(out, NAME, doc, curves)
    from jaxntk import plots

    plots.sample_complexity_figure(out / f"{NAME}.json", out / f"{NAME}.png")
    return doc


def summarize(rows: list[dict], config: Config) -> dict:
    """n* and the fitted slopes at `config.threshold` (on the grid and interpolated), and the
    interpolated slopes at each of `config.other_thresholds` as well.

    Args:
        rows: the rows of `run`'s document, one per variant, d, n and seed.
        config: the settings the rows were made with.

    Returns:
        {"n_star", "slopes", "n_star_interpolated", "slopes_interpolated",
        "slopes_by_threshold"}, as `n_star` and `fit_slopes` return them.
    """
    ns = n_star(rows, config.threshold)
    ns_i = n_star(rows, config.threshold, interpolate=True)
    thresholds = sorted({config.threshold, *config.other_thresholds}, reverse=True)
    return {
        "n_star": ns,
        "slopes": fit_slopes(ns),
        "n_star_interpolated": ns_i,
        "slopes_interpolated": fit_slopes(ns_i),
        "slopes_by_threshold": {
            f"{t:.3g}": fit_slopes(n_star(rows, t, interpolate=True)) for t in thresholds
        },
    }


def n_star(
    rows: list[dict], threshold: float, interpolate: bool = False
) -> dict[str, dict[str, dict[str, float | None]]]:
    """`n*[variant][d][seed]`: the smallest n with final test loss ≤ threshold (None: not reached).

    With `interpolate`, n* is where the test loss first crosses the threshold, linear in log n
    between the grid point before the crossing and the first one at or below it (the smallest
    grid n when that one is already below).

    Args:
        rows: dicts with "variant", "d", "n", "seed" and the final "test_loss".
        threshold: the test loss to reach.
        interpolate: interpolate the crossing in log n instead of taking the grid point.

    Returns:
        variant -> str(d) -> str(seed) -> n* (a float, or None where the grid never reaches
        the threshold).

    Example:
        >>> from jaxntk.experiments.sample_complexity import n_star
        >>> rows = [{"variant": "ntk", "d": 10, "seed": 1, "n": n, "test_loss": loss}
        ...         for n, loss in [(10, 0.9), (100, 0.5), (1000, 0.1)]]
        >>> n_star(rows, 0.3)
        {'ntk': {'10': {'1': 1000}}}
        >>> round(n_star(rows, 0.3, interpolate=True)["ntk"]["10"]["1"])   # halfway in log n
        316
    """
    curves: dict = {}
    for r in sorted(rows, key=lambda r: r["n"]):
        slot = curves.setdefault(r["variant"], {}).setdefault(str(r["d"]), {})
        slot.setdefault(str(r["seed"]), []).append((r["n"], r["test_loss"]))
    out: dict = {}
    for variant, by_d in curves.items():
        for d, by_seed in by_d.items():
            for seed, points in by_seed.items():
                out.setdefault(variant, {}).setdefault(d, {})[seed] = _first_crossing(
                    points, threshold, interpolate
                )
    return out


def _first_crossing(points: list[tuple[int, float]], threshold: float, interpolate: bool):
    for i, (n, loss) in enumerate(points):
        if loss <= threshold:
            if not interpolate or i == 0:
                return n
            (n0, l0), (n1, l1) = points[i - 1], (n, loss)
            frac = (l0 - threshold) / (l0 - l1)
            return float(np.exp(np.log(n0) + frac * (np.log(n1) - np.log(n0))))
    return None


def fit_slopes(nstar: dict) -> dict[str, dict[str, float | int | None]]:
    """Per variant: slope of log n* against log d fitted per seed (seeds where every d reached the
    threshold), with its mean and std over those seeds.

    Args:
        nstar: variant -> str(d) -> str(seed) -> n*, as `n_star` returns it.

    Returns:
        variant -> {"slope_mean", "slope_std", "seeds_fitted"}: the fitted slopes' mean and std
        (None where no seed reached the threshold at every d) and how many seeds entered the fit.
    """
    out = {}
    for variant, by_d in nstar.items():
        ds = sorted(by_d, key=int)
        seeds = sorted({s for d in ds for s in by_d[d]}, key=int)
        slopes = []
        for s in seeds:
            ns = [by_d[d].get(s) for d in ds]
            if len(ds) >= 2 and all(x is not None for x in ns):
                slopes.append(float(np.polyfit(np.log([int(d) for d in ds]), np.log(ns), 1)[0]))
        out[variant] = {
            "slope_mean": float(np.mean(slopes)) if slopes else None,
            "slope_std": float(np.std(slopes)) if slopes else None,
            "seeds_fitted": len(slopes),
        }
    return out
