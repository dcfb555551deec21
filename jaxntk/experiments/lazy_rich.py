"""Experiment `lazy-rich`: where the paper's escape sits between the NTK and feature learning.

On the paper's target ((β·x)² − 1 + β·x)/√3 at the variants experiment's d and n:

1. **α sweep.** The two-layer network in Chizat, Oyallon & Bach's scaling, h_α = α(f(θ) − f(θ0))
   trained on (1/α²)·L (`jaxntk.scaling.Scaled`), for α on a log grid from deep lazy to rich and
   two widths m, every α of one width and seed in one compiled program. Per α: final train and
   test loss, and, at every evaluation, the laziness diagnostics (`jaxntk.diagnostics`: change of
   the tangent kernel from the NTK on a probe of P training inputs, its centered alignment with
   y, ‖U‖/‖W0‖, the test distances of the network to its linearization and order-2 model).
   The `ntk` variant of the scaled model has the same output trajectory for every α; the
   distance of the network's trajectory to it, sup_t ‖h_α(t) − h_ntk(t)‖ / sup_t ‖h_ntk(t)‖ on
   the probe and ‖h_α(T) − h_ntk(T)‖ / ‖h_ntk(T)‖ on the test inputs, is fitted against α over
   α ≥ 1: its rate (theory: O(1/α); O(1/α²) from the symmetric initialization, whose
   pairs cancel f_Q on the NTK's iterates — see `tests/test_scaling.py`).
2. **The variants and one-step** at α = 1 on the same data and width (`variant_width`), with the
   same diagnostics, and Damian, Lee & Soltanolkotabi's one-step network (`jaxntk.onestep`, η
   and λ by cross-validation on the training set).
3. **Sample-complexity slopes** of the network at the scales `slope_alphas` (α = 0.5: features
   move, α√m ≈ 11 at m = 500; α = 1: the `full` variant) and of one-step: n*(d), the smallest n
   on the grid n = d^p whose final test loss is ≤ `threshold` (interpolated in log n), fitted as
   log n* against log d per seed (`jaxntk.experiments.sample_complexity.n_star`, `fit_slopes`),
   for d in `slope_ds`.

The rich end of the sweep is limited by capacity with a bounded σ: |h_α(x)| < α Σ_r |a_r| = α√m
(σ(z) = sigmoid(z − 1) ∈ (0, 1)), so for α√m below the targets' scale (≈ 1) the scaled network
cannot fit the data at all (α = 0.01 at m = 500: |h| < 0.22); its losses there measure that, not
feature learning. The mean-field point α = 1/√m is such a point.

Writes `lazy-rich.json` (config, rows, summary, slopes), `lazy-rich.npz` (curves) and
`lazy-rich.png`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import objectives, onestep, training
from jaxntk.experiments._common import config_setup, labelled_progress, mean_std_by, write_results
from jaxntk.experiments.sample_complexity import fit_slopes, n_star
from jaxntk.scaling import Scaled

NAME = "lazy-rich"

COMPARED = ("ntk", "quadntk", "randomized", "ntk+quadntk", "regularized")
"""The variants trained beside the α sweep (its α = 1 point is the `full` variant itself)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the lazy-rich experiment (defaults: the `cpu` preset).

    Attributes:
        d: input dimension of the α sweep.
        n: training points of the α sweep.
        n_test: test points.
        widths: the widths m of the α sweep (NTK parameterization, a = ±1/√m).
        alphas: the scales α of Chizat et al.
        steps: GD steps T.
        lr: learning rate η on the scaled objective (1/α²)·L.
        eval_every: steps between evaluations (and diagnostics).
        probe: P, the training inputs on which the kernel diagnostics are measured.
        lambda_bulk: λ_b of the regularized variant (per-sample mean).
        seeds: seeds of the α sweep, the variants and one-step (each its own data and network).
        variant_width: the width at which the variants and one-step are trained (None: the
            largest of `widths`).
        etas: one-step's step sizes η.
        ridges: one-step's ridges λ.
        folds: one-step's cross-validation folds.
        slope_ds: the input dimensions of the slopes.
        slope_exponents: the training-set sizes n = round(d^p) of the slopes.
        slope_width: the width of the network in the slopes.
        slope_alphas: the scales α of the network in the slopes, one curve each (all in one
            program per (d, n)).
        slope_steps: GD steps of the rich network in the slopes.
        slope_seeds: seeds of the slopes.
        threshold: n* is where the final test loss crosses this value.
        distribution: input distribution, "gaussian" or "sphere".
        activation: a name in `jaxntk.ACTIVATIONS`.
    """

    d: int = 30
    n: int = 164
    n_test: int = 2000
    widths: tuple[int, ...] = (500, 2000)
    alphas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    steps: int = 2000
    lr: float = 1.0
    eval_every: int = 100
    probe: int = 64
    lambda_bulk: float = 1.6
    seeds: tuple[int, ...] = (1, 11)
    variant_width: int | None = None
    etas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    ridges: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    folds: int = 4
    slope_ds: tuple[int, ...] = (10, 14, 20, 28)
    slope_exponents: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.25)
    slope_width: int = 500
    slope_alphas: tuple[float, ...] = (0.5, 1.0)
    slope_steps: int = 1000
    slope_seeds: tuple[int, ...] = (1, 11, 111)
    threshold: float = 1 / 3
    distribution: str = "gaussian"
    activation: str = "shifted_sigmoid"

    def grid(self, d: int) -> list[int]:
        """The training-set sizes of the slopes at dimension d: round(d^p), distinct, increasing.

        Args:
            d: the input dimension.

        Returns:
            The sizes n, at least 8 each (one-step's folds need points).
        """
        return sorted({max(8, round(d**p)) for p in self.slope_exponents})


PRESETS = {
    "cpu": Config(),
    "paper": Config(
        d=100,
        n=1000,
        n_test=10_000,
        widths=(1000, 10_000),
        alphas=tuple(float(a) for a in np.geomspace(1e-2, 1e2, 13)),
        steps=20_000,
        eval_every=500,
        probe=128,
        lambda_bulk=1.0,
        seeds=(1, 11, 111),
        slope_ds=(10, 14, 20, 28, 40),
        slope_exponents=(1.0, 1.25, 1.5, 1.75, 2.0, 2.25),
        slope_width=4000,
        slope_steps=10_000,
        slope_seeds=(1, 11, 111, 1111, 11111),
    ),
}
"""cpu: d = 30, n = 164, m ∈ {500, 2000}, 9 α from 1e-2 to 1e2, T = 2000, 2 seeds; slopes over
d ∈ {10, 14, 20, 28} and n = d^p, p ∈ {1.25, …, 2.25} (the sample-complexity grid) at m = 500,
α ∈ {0.5, 1}, T = 1000, 3 seeds. paper: the authors' d and n, m up to 10 000 (sized for a
GPU)."""


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """The α sweep, the variants, one-step and the slopes; JSON, NPZ and PNG into `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write lazy-rich.json, .npz and .png into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/lazy-rich.json`.

    Raises:
        ValueError: a scale α ≤ 0, or a probe larger than the training set.
    """
    if any(a <= 0 for a in config.alphas):
        raise ValueError(f"alphas must be > 0, got {config.alphas}")
    if not 0 <= config.probe <= config.n:
        raise ValueError(f"probe must be in [0, n = {config.n}], got {config.probe}")
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, np.ndarray] = {}
    sweep, variants = [], []
    for m in config.widths:
        for seed in config.seeds:
            s_rows, v_rows = _sweep_one(config, m, seed, progress, curves)
            sweep += s_rows
            variants += v_rows
    slope_rows = _slopes(config, progress)
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "sweep": sweep,
        "variants": variants,
        "slope_rows": slope_rows,
    }
    doc.update(summarize(doc))
    write_results(out, NAME, doc, curves)
    from jaxntk import plots

    plots.lazy_rich_figure(out / f"{NAME}.json", out / f"{NAME}.png")
    return doc


_DIAGNOSTICS = ("kernel_change", "alignment", "displacement")
_DISTANCES = ("distance_linear", "distance_quadratic")


def _final(run: training.Run, i: int, key: str) -> float:
    return float(run.history[key][0, i, -1])


def _sweep_one(config: Config, m: int, seed: int, progress, curves: dict):
    """The α sweep for one width and seed, and at the variants' width the variants and
    one-step: (sweep rows, variant rows)."""
    task, net = config_setup(config, seed, config.d, config.n, m)
    common = {
        "steps": config.steps,
        "lr": config.lr,
        "eval_every": config.eval_every,
        "probe": config.probe,
    }
    t0 = time.perf_counter()
    # the scaled ntk's outputs do not depend on α: one run is every α's reference
    ntk = training.train(
        Scaled(net, 1.0),
        task,
        "ntk",
        seeds=[seed],
        progress=labelled_progress(progress, f"ntk m={m} seed {seed}"),
        **common,
    )
    v_rows = [_variant_row("ntk", m, seed, ntk, time.perf_counter() - t0)]
    rows = _alpha_rows(config, task, net, seed, ntk, common, progress, curves)
    if m == (config.variant_width or max(config.widths)):
        v_rows += _compared(config, task, net, seed, common, progress, curves)
    return rows, v_rows


def _alpha_rows(config: Config, task, net, seed: int, ntk, common, progress, curves) -> list:
    """Every α of the sweep trained in one program; a row each, with the distances of its
    trajectory to the ntk run's."""
    m = net.m
    prep_test = net.prepare(task.x_test)
    ntk_test = np.asarray(net.linear_term(ntk.params[0, 0], prep_test))
    ntk_probe = ntk.history["probe_outputs"][0, 0]  # (E, P)
    alphas = list(config.alphas)
    t0 = time.perf_counter()
    # one program: each α is a "seed" with its own model (its α a leaf) on the same task
    sweep = training.train(
        [Scaled(net, a) for a in alphas],
        [task] * len(alphas),
        "full",
        seeds=[seed] * len(alphas),
        progress=labelled_progress(progress, f"full α-sweep m={m} seed {seed}"),
        **common,
    )
    seconds = (time.perf_counter() - t0) / len(alphas)
    rows = []
    for i, alpha in enumerate(alphas):
        f_test = alpha * np.asarray(net.full(sweep.params[0, i], prep_test))
        probe_gap = np.linalg.norm(sweep.history["probe_outputs"][0, i] - ntk_probe, axis=-1)
        rows.append(
            {
                "width": m,
                "seed": seed,
                "alpha": alpha,
                "train_loss": _final(sweep, i, "train_loss"),
                "test_loss": _final(sweep, i, "test_loss"),
                **{k: _final(sweep, i, k) for k in (*_DIAGNOSTICS, *_DISTANCES)},
                "max_kernel_change": float(np.nanmax(sweep.history["kernel_change"][0, i])),
                "distance_to_ntk_test": float(
                    np.linalg.norm(f_test - ntk_test) / np.linalg.norm(ntk_test)
                ),
                "distance_to_ntk_probe": float(
                    probe_gap.max() / np.linalg.norm(ntk_probe, axis=-1).max()
                ),
                "diverged_at_step": int(sweep.diverged_at_step[0, i]),
                "seconds": seconds,
            }
        )
        for key in ("test_loss", "kernel_change"):
            curves[f"full/{m}/{seed}/{alpha:g}/{key}"] = sweep.history[key][0, i]
    curves["step"] = sweep.history["step"]
    return rows


def _compared(config: Config, task, net, seed: int, common, progress, curves) -> list:
    """Rows of the other variants (α = 1, with the diagnostics) and of one-step."""
    m = net.m
    rows = []
    for variant in COMPARED[1:]:
        reg = objectives.Regularizer(bulk=config.lambda_bulk) if variant == "regularized" else None
        t0 = time.perf_counter()
        r = training.train(
            net,
            task,
            variant,
            seeds=[seed],
            reg=reg,
            progress=labelled_progress(progress, f"{variant} m={m} seed {seed}"),
            **common,
        )
        rows.append(_variant_row(variant, m, seed, r, time.perf_counter() - t0))
        curves[f"{variant}/{m}/{seed}/test_loss"] = r.history["test_loss"][0, 0]
    t0 = time.perf_counter()
    fit = onestep.one_step(
        jax.random.PRNGKey(seed),
        net,
        task.x_train,
        task.y_train,
        etas=config.etas,
        ridges=config.ridges,
        folds=config.folds,
    )
    rows.append(
        {
            "variant": "one-step",
            "width": m,
            "seed": seed,
            "train_loss": _mse(fit.predict(task.x_train), task.y_train),
            "test_loss": _mse(fit.predict(task.x_test), task.y_test),
            "eta": float(fit.eta),
            "ridge": float(fit.ridge),
            "seconds": time.perf_counter() - t0,
        }
    )
    return rows


def _variant_row(variant: str, m: int, seed: int, r: training.Run, seconds: float) -> dict:
    return {
        "variant": variant,
        "width": m,
        "seed": seed,
        "train_loss": _final(r, 0, "train_loss"),
        "test_loss": _final(r, 0, "test_loss"),
        **{k: _final(r, 0, k) for k in _DIAGNOSTICS},
        "diverged_at_step": int(r.diverged_at_step[0, 0]),
        "seconds": seconds,
    }


def _slopes(config: Config, progress) -> list[dict]:
    """Final test loss of the network at each of `slope_alphas` and of one-step, for every
    (d, n, seed); all α and seeds of one (d, n) in one program."""
    rows = []
    m = config.slope_width
    seeds, alphas = list(config.slope_seeds), list(config.slope_alphas)
    for d in config.slope_ds:
        for n in config.grid(d):
            setups = [config_setup(config, s, d, n, m) for s in seeds]
            runs = [
                (s, a, task, net)
                for s, (task, net) in zip(seeds, setups, strict=True)
                for a in alphas
            ]
            t0 = time.perf_counter()
            r = training.train(
                [Scaled(net, a) for _, a, _, net in runs],
                [task for _, _, task, _ in runs],
                "full",
                seeds=[s for s, *_ in runs],
                steps=config.slope_steps,
                lr=config.lr,
                eval_every=config.slope_steps,
                probe=0,
                progress=labelled_progress(progress, f"network d={d} n={n}"),
            )
            seconds = (time.perf_counter() - t0) / len(runs)
            for i, (s, a, _, _) in enumerate(runs):
                rows.append(
                    {
                        "variant": f"full α={a:g}",
                        "d": d,
                        "n": n,
                        "seed": s,
                        "test_loss": _final(r, i, "test_loss"),
                        "train_loss": _final(r, i, "train_loss"),
                        "seconds": seconds,
                    }
                )
            for s, (task, net) in zip(seeds, setups, strict=True):
                t0 = time.perf_counter()
                fit = onestep.one_step(
                    jax.random.PRNGKey(s),
                    net,
                    task.x_train,
                    task.y_train,
                    etas=config.etas,
                    ridges=config.ridges,
                    folds=min(config.folds, n),
                )
                rows.append(
                    {
                        "variant": "one-step",
                        "d": d,
                        "n": n,
                        "seed": s,
                        "test_loss": _mse(fit.predict(task.x_test), task.y_test),
                        "train_loss": _mse(fit.predict(task.x_train), task.y_train),
                        "eta": float(fit.eta),
                        "ridge": float(fit.ridge),
                        "seconds": time.perf_counter() - t0,
                    }
                )
    return rows


def _mse(pred, y) -> float:
    return float(jnp.mean((pred - y) ** 2))


def _log_slope(by_alpha: dict, key: str, low: float) -> float | None:
    """Slope of log(mean of `key`) against log α over the α ≥ low (None below two of them)."""
    alphas = [a for a in by_alpha if a >= low]
    if len(alphas) < 2:
        return None
    values = [by_alpha[a][f"{key}_mean"] for a in alphas]
    return float(np.polyfit(np.log(alphas), np.log(values), 1)[0])


def summarize(doc: dict) -> dict:
    """Means and spreads over seeds, the rate of the distance to the NTK in α, and the slopes.

    Args:
        doc: the document of `run` (its "config", "sweep", "variants" and "slope_rows").

    Returns:
        {"sweep_summary": width -> α -> mean/std of each measure; "variant_summary": variant ->
        width -> mean/std; "rate": width -> the slope of log distance against log α over α ≥ 1
        (test and probe distances), and with the suffix "_large" over α ≥ 10 (the asymptotic
        rate); "n_star", "slopes": as
        `jaxntk.experiments.sample_complexity`}.
    """
    fields = (
        "test_loss",
        "train_loss",
        *_DIAGNOSTICS,
        "distance_linear",
        "distance_quadratic",
        "distance_to_ntk_test",
        "distance_to_ntk_probe",
    )
    sweep_summary, rate = {}, {}
    for m in doc["config"]["widths"]:
        rows = [r for r in doc["sweep"] if r["width"] == m]
        by_alpha = mean_std_by(rows, "alpha", fields)
        sweep_summary[str(m)] = {f"{a:g}": v for a, v in by_alpha.items()}
        rate[str(m)] = {
            f"{key}{suffix}": _log_slope(by_alpha, key, low)
            for key in ("distance_to_ntk_test", "distance_to_ntk_probe")
            for suffix, low in (("", 1.0), ("_large", 10.0))
        }
    variant_summary = {}
    for m in doc["config"]["widths"]:
        rows = [r for r in doc["variants"] if r["width"] == m]
        for variant, entry in mean_std_by(rows, "variant", ("test_loss", "train_loss")).items():
            variant_summary.setdefault(variant, {})[str(m)] = entry
    ns = n_star(doc["slope_rows"], doc["config"]["threshold"], interpolate=True)
    return {
        "sweep_summary": sweep_summary,
        "variant_summary": variant_summary,
        "rate": rate,
        "n_star": ns,
        "slopes": fit_slopes(ns),
    }


def table(doc: dict) -> str:
    """The plain-text tables that `jaxntk reproduce` prints: per width and α the final test loss,
    kernel change, alignment, displacement, distance to the linearization and to the scaled NTK
    (means over seeds); the variants and one-step; the rate in α; the slopes.

    Args:
        doc: the document of `run` (as saved in lazy-rich.json).

    Returns:
        The tables, one string.
    """
    cfg = doc["config"]
    lines = [
        f"\nlazy-rich: h_α = α(f − f0) on (1/α²)·L, d = {cfg['d']}, n = {cfg['n']}, "
        f"T = {cfg['steps']}, {len(cfg['seeds'])} seeds (means)",
        "    m        α  test loss  train loss  kernel change  alignment  ‖U‖/‖W0‖     D_1  to ntk",
    ]
    for m, by_alpha in doc["sweep_summary"].items():
        for alpha, v in by_alpha.items():
            lines.append(
                f"{m:>5} {alpha:>8} {v['test_loss_mean']:10.3f} {v['train_loss_mean']:11.4f} "
                f"{v['kernel_change_mean']:14.3g} {v['alignment_mean']:10.3f} "
                f"{v['displacement_mean']:9.3g} {v['distance_linear_mean']:7.3g} "
                f"{v['distance_to_ntk_test_mean']:7.3g}"
            )
    lines.append("\nvariant          m  test loss (mean ± std)")
    for variant, by_width in doc["variant_summary"].items():
        for m, v in by_width.items():
            lines.append(
                f"{variant:<12} {m:>5}  {v['test_loss_mean']:.3f} ± {v['test_loss_std']:.3f}"
            )
    for m, rate in doc["rate"].items():
        for suffix, low in (("", 1), ("_large", 10)):
            test, probe = (
                rate[f"distance_to_ntk_test{suffix}"],
                rate[f"distance_to_ntk_probe{suffix}"],
            )
            if test is not None:
                lines.append(
                    f"m = {m}: distance to the scaled NTK ∝ α^{test:.2f} (test), "
                    f"α^{probe:.2f} (probe trajectory), over α ≥ {low}"
                )
    lines.append("\nslope of log n* on log d (mean ± std over the seeds that reached it)")
    for variant, fit in doc["slopes"].items():
        slope = (
            "not reached"
            if fit["slope_mean"] is None
            else f"{fit['slope_mean']:.2f} ± {fit['slope_std']:.2f}"
        )
        lines.append(f"{variant:<12} {slope} ({fit['seeds_fitted']} seeds)")
    return "\n".join(lines)
