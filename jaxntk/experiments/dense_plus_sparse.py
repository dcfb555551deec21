"""Experiment `dense-plus-sparse`: the theorem's own setting beyond k = 1 (docs/science.md §6, §8).

The target (`jaxntk.targets.theorem_target`) is f* = Σ_{ℓ≤k} f_ℓ (dense, degree ℓ, random
directions) + f_sparse (degree k + 1 on r orthonormal directions), each part with a stated
variance. NTK+QuadNTK with the bulk penalty should learn it from about N(d, ≤ k) ~ d^k samples,
where the NTK needs N(d, ≤ k + 1) ~ d^{k+1}. The good directions kept out of the penalty are the
N(d, ≤ k) = `num_harmonics_up_to(d, k)` top NTK directions: the predicted degree blocks 0..k
(`jaxntk.spectral.predict_degree_blocks`), checked against the measured spectrum of K/n (the
ratio of the last kept eigenvalue to the first one left out).

For each k in `ks`, d, n on a geometric grid from N(d, ≤ k) to N(d, ≤ k + 1), seed, r and input
law it trains ntk, quadntk, and the regularized NTK+QuadNTK for λ = 0 (that is ntk+quadntk) and
every bulk weight of the grid, given on both scales (λ_1 on the sum over the training points,
λ_b on the per-sample mean), all λ in one program. Every run is evaluated on a log-spaced
schedule (`jaxntk.training.eval_schedule`), so the curves against log t are measured, and
records the test loss, the train loss, n·R_bulk and the share of each target part carried by f_L
and by f_Q.

Three results (`summarize`):
  (1) at d = `d`, for each k: the test loss and the parts' f_L / f_Q shares against n, and the
      gain (regularized / ntk+quadntk test loss, per λ, mean ± std over seeds) against n and T;
  (2) sample complexity at k = `k_sample`: n*(d), the smallest n (interpolated in log n) whose
      final test loss is at most `threshold` (default: half the sparse part's variance: the dense
      parts and half of the sparse part learned), and the slope of log n* against log d per
      variant, mean ± std over the seeds;
  (3) the race at k = `k_sample`, d = `d`: n·R_bulk, the train loss and f_Q's share of the sparse
      part over time, for λ = 0 and the best λ, at the n where the gain is largest and where it
      is smallest, with the spectrum's bulk level γ (predicted and measured) beside them.

Writes `dense-plus-sparse.json`, `.npz` (curves) and `.png` (`plot` redraws it from the files).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxntk import network, objectives, spectral, targets, training
from jaxntk.experiments._common import train_seed, write_results
from jaxntk.experiments.sample_complexity import fit_slopes, n_star

NAME = "dense-plus-sparse"
BASE = "ntk+quadntk"  # the regularized program's λ = 0 setting


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the dense-plus-sparse experiment (defaults: the `cpu` preset).

    Attributes:
        d: the input dimension of results (1) and (3).
        ks: the dense degrees k of result (1); the sparse part has degree k + 1.
        k_sample: the k of the sample-complexity fit (2) and of the race (3).
        ds: the input dimensions of the sample-complexity fit (2) (d is added to them).
        n_points: training-set sizes per (k, d), geometric from N(d, ≤ k) to N(d, ≤ k + 1).
        rs: numbers of sparse directions r.
        distributions: input laws, "sphere" and/or "gaussian"; (2) and (3) use the first.
        dense_variance: the dense parts' total variance, spread evenly over degrees 1..k.
        sparse_variance: the sparse part's variance.
        m: width of the two-layer network.
        n_test: test points.
        steps: optimizer steps T of plain GD.
        lr: learning rate.
        lambdas_sum: bulk weights λ_1 on the sum over the training points (λ_b = n·λ_1).
        lambdas_mean: bulk weights λ_b on the per-sample mean R_bulk.
        eval_points: log-spaced evaluations per run.
        threshold: n* is where the final test loss crosses this value (default: half the sparse
            variance, i.e. dense parts learned and half of the sparse part).
        seeds: one run per seed (task and network drawn from it).
        activation: a name in `jaxntk.ACTIVATIONS`.
        separate: the variants trained beside the regularized program, a subset of
            ("ntk", "quadntk").
    """

    d: int = 10
    ks: tuple[int, ...] = (1, 2)
    k_sample: int = 2
    ds: tuple[int, ...] = (6, 8, 12, 14)
    n_points: int = 4
    rs: tuple[int, ...] = (1,)
    distributions: tuple[str, ...] = ("sphere",)
    dense_variance: float = 1 / 3
    sparse_variance: float = 2 / 3
    m: int = 1000
    n_test: int = 2000
    steps: int = 3000
    lr: float = 1.0
    lambdas_sum: tuple[float, ...] = (1e-3, 1e-2)
    lambdas_mean: tuple[float, ...] = (0.1, 1.0)
    eval_points: int = 30
    threshold: float = 1 / 3
    seeds: tuple[int, ...] = (1, 11, 111, 1111, 11111)
    activation: str = "shifted_sigmoid"
    separate: tuple[str, ...] = ("ntk", "quadntk")

    def grid(self, d: int, k: int) -> list[int]:
        """The training-set sizes at (d, k): geometric from N(d, ≤ k) to N(d, ≤ k + 1).

        Args:
            d: the input dimension.
            k: the dense degree.

        Returns:
            `n_points` distinct increasing ints (fewer if rounding merges some).
        """
        lo, hi = targets.num_harmonics_up_to(d, k), targets.num_harmonics_up_to(d, k + 1)
        return sorted({round(float(v)) for v in np.geomspace(lo, hi, self.n_points)})

    def labels(self) -> list[str]:
        """The names of the regularized program's settings: ntk+quadntk (λ = 0), then
        "sum:<λ_1>" and "mean:<λ_b>".

        Returns:
            The labels, in the order of the program's λ axis.
        """
        return (
            [BASE]
            + [f"sum:{lam:g}" for lam in self.lambdas_sum]
            + [f"mean:{lam:g}" for lam in self.lambdas_mean]
        )


PRESETS = {
    "cpu": Config(),
    "paper": Config(
        d=20,
        ds=(10, 14, 20, 28),
        n_points=6,
        rs=(1, 3),
        distributions=("sphere", "gaussian"),
        m=10_000,
        n_test=10_000,
        steps=20_000,
        eval_points=40,
    ),
}
"""cpu: d = 10 (n from 11 to 65 at k = 1, from 65 to 275 at k = 2), the fit over
d ∈ {6, 8, 10, 12, 14}, m = 1000, T = 3000, 5 seeds, r = 1 on the sphere (18.5 min on 2 cores);
paper (a GPU run): d = 20, the fit over d up to 28, r ∈ {1, 3}, both input laws, the authors'
width and length."""


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Train every variant over the grid (module docstring); write JSON, NPZ and PNG into `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write dense-plus-sparse.json, .npz and .png into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/dense-plus-sparse.json`: config, one row per run and
        setting, the spectrum checks and the summary (`summarize`).

    Raises:
        ValueError: for a threshold that is not positive, an unknown distribution, k_sample
            not in ks, or an r larger than a d.
    """
    if not config.threshold > 0:
        raise ValueError(f"threshold must be > 0, got {config.threshold}")
    if config.k_sample not in config.ks:
        raise ValueError(f"k_sample = {config.k_sample} must be one of ks = {config.ks}")
    for dist in config.distributions:
        if dist not in targets.DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {dist!r}; expected {targets.DISTRIBUTIONS}")
    if max(config.rs) > min((config.d, *config.ds)):
        raise ValueError(f"rs = {config.rs} must be at most every d")
    if not set(config.separate) <= {"ntk", "quadntk"}:
        raise ValueError(f"separate must be a subset of ('ntk', 'quadntk'), got {config.separate}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(k, config.d) for k in config.ks]
    jobs += [(config.k_sample, d) for d in sorted(set(config.ds) - {config.d})]
    rows, spectra, curves = [], [], {}
    for dist in config.distributions:
        for k, d in jobs:
            for r in config.rs:
                if (dist, r) != (config.distributions[0], config.rs[0]) and d != config.d:
                    continue  # the fit over d: the first input law and r only
                grid = config.grid(d, k)
                for n in grid:
                    for seed in config.seeds:
                        rows += _train_all(config, dist, k, d, r, n, seed, curves, progress)
                spectra.append(_spectrum_check(config, dist, k, d, max(grid)))
    curves["eval_step"] = np.concatenate(
        [[0], training.eval_schedule(config.steps, "log", config.eval_points)]
    )
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "labels": config.labels(),
        "scale": "sum:<λ_1> weighs n·R_bulk (the sum over the n training points); "
        "mean:<λ_b> weighs the per-sample mean R_bulk; ntk+quadntk is λ = 0",
        "spectra": spectra,
        "results": rows,
    }
    doc["summary"] = summarize(rows, config, curves, spectra)
    write_results(out, NAME, doc, curves)
    plot(out / f"{NAME}.json", out / f"{NAME}.npz", out / f"{NAME}.png")
    return doc


def curve_key(dist: str, k: int, d: int, r: int, n: int, seed: int, label: str) -> str:
    """The NPZ key prefix of one run's curves: "<dist>/k<k>/d<d>/r<r>/n<n>/s<seed>/<label>".

    Args:
        dist: the input law.
        k: the dense degree.
        d: the input dimension.
        r: the number of sparse directions.
        n: the number of training points.
        seed: the seed.
        label: the variant or λ label (`Config.labels`, or "ntk", "quadntk").

    Returns:
        The prefix; the curves are "<prefix>/test_loss", ".../train_loss", ".../bulk_sum",
        ".../share_fq" and ".../share_fl" (the last two (E, P) over the parts).
    """
    return f"{dist}/k{k}/d{d}/r{r}/n{n}/s{seed}/{label}"


def _task_and_net(config: Config, dist: str, k: int, d: int, r: int, n: int, seed: int):
    k_target, k_data, k_net = jax.random.split(jax.random.PRNGKey(seed), 3)
    dense = (config.dense_variance / k,) * k
    target = targets.theorem_target(
        k_target,
        d,
        k,
        r=r,
        dense_variances=dense,
        sparse_variance=config.sparse_variance,
        distribution=dist,
    )
    task = targets.make_task(k_data, target, n=n, n_test=config.n_test)
    return task, network.init(k_net, d=d, m=config.m, activation=config.activation)


def _train_all(config, dist, k, d, r, n, seed, curves, progress) -> list[dict]:
    """ntk, quadntk and the regularized program (λ = 0 and the grid) at one (d, k, r, n, seed)."""
    task, net = _task_and_net(config, dist, k, d, r, n, seed)
    kept = targets.num_harmonics_up_to(d, k)
    labels = config.labels()
    bulk = [0.0, *(n * lam for lam in config.lambdas_sum), *config.lambdas_mean]
    runs = [(v, objectives.Regularizer(k=kept), [v]) for v in config.separate]
    runs.append(("regularized", objectives.Regularizer(bulk=bulk, k=kept), labels))
    rows = []
    for variant, reg, names in runs:
        t0 = time.perf_counter()
        res = train_seed(
            net,
            task,
            variant,
            config,
            seed,
            progress,
            f"{variant} {dist} k={k} d={d} r={r} n={n} s{seed}",
            reg=reg,
            eval_at="log",
            eval_points=config.eval_points,
            track_directions=True,
        )
        seconds = time.perf_counter() - t0
        h = res.history
        for i, label in enumerate(names):
            key = curve_key(dist, k, d, r, n, seed, label)
            curves[f"{key}/test_loss"] = h["test_loss"][i, 0]
            curves[f"{key}/train_loss"] = h["train_loss"][i, 0]
            curves[f"{key}/bulk_sum"] = n * h["bulk"][i, 0]
            curves[f"{key}/share_fl"] = h["share_linear"][i, 0]
            curves[f"{key}/share_fq"] = h["share_quadratic"][i, 0]
            row = {
                "distribution": dist,
                "k": k,
                "d": d,
                "r": r,
                "n": n,
                "seed": seed,
                "variant": label,
                "lambda_bulk_mean": float(bulk[i]) if variant == "regularized" else 0.0,
                "kept_directions": kept,
                "test_loss": float(h["test_loss"][i, 0, -1]),
                "train_loss": float(h["train_loss"][i, 0, -1]),
                "bulk_sum": float(n * h["bulk"][i, 0, -1]),
                "diverged_at_step": int(res.diverged_at_step[i, 0]),
                "seconds_program": seconds,
            }
            for p, part in enumerate(task.part_names):
                row[f"share_{part}_by_fl"] = float(h["share_linear"][i, 0, -1, p])
                row[f"share_{part}_by_fq"] = float(h["share_quadratic"][i, 0, -1, p])
            rows.append(row)
    return rows


def _spectrum_check(config: Config, dist: str, k: int, d: int, n: int) -> dict:
    """The predicted blocks of degree ≤ k against the measured spectrum of K/n (first seed)."""
    task, net = _task_and_net(config, dist, k, d, config.rs[0], n, config.seeds[0])
    ev = np.sort(np.asarray(np.linalg.eigvalsh(np.asarray(net.ntk_gram(task.x_train)) / n)))[::-1]
    kept = targets.num_harmonics_up_to(d, k)
    pred = spectral.predict_degree_blocks(config.activation, d, n, max_degree=k)
    return {
        "distribution": dist,
        "k": k,
        "d": d,
        "n": n,
        "kept_directions": kept,
        "predicted_block_sizes": {str(b.degree): b.multiplicity for b in pred.blocks},
        "predicted_levels": {str(b.degree): b.level for b in pred.blocks},
        "predicted_gamma": pred.gamma,
        "measured_bulk_median": float(np.median(ev[kept:])) if ev.size > kept else None,
        "last_kept_eigenvalue": float(ev[kept - 1]),
        "first_bulk_eigenvalue": float(ev[kept]) if ev.size > kept else None,
        "gap_ratio": float(ev[kept - 1] / ev[kept]) if ev.size > kept else None,
        "top_eigenvalue": float(ev[0]),
    }


def time_scales(activation: str, d: int, n: int, k: int, lr: float) -> dict:
    """The predicted time scales of gradient descent on f_L at (d, n), from the spectrum of K/n.

    With the mean squared error, GD on the NTK model shrinks the residual along an eigenvector
    of K/n with eigenvalue λ by (1 − 2·lr·λ) per step: it fits that direction in about
    t = 1/(2·lr·λ) steps. The kept blocks ℓ ≤ k sit at μ_ℓ + γ; for n < N(d, ≤ k + 1) the
    degree k + 1 functions (the sparse part) are not resolved and share the bulk level γ, so f_L
    fits (memorizes) the training set's remainder, the sparse part included, after about
    1/(2·lr·γ) steps.

    Args:
        activation: a name in `jaxntk.ACTIVATIONS`.
        d: input dimension, ≥ 3.
        n: number of training points.
        k: the dense degree.
        lr: the learning rate.

    Returns:
        {"gamma": γ, "mu": {ℓ: μ_ℓ for ℓ ≤ k + 1}, "t_block": {ℓ: 1/(2·lr·(μ_ℓ + γ)) for ℓ ≤ k},
        "t_bulk": 1/(2·lr·γ) (None when γ = 0)}.
    """
    blocks = spectral.predict_degree_blocks(activation, d, n, max_degree=k)
    mu = spectral.predict_degree_blocks(activation, d, n, max_degree=k + 1)
    gamma = blocks.gamma
    return {
        "gamma": gamma,
        "mu": {str(b.degree): b.eigenvalue for b in mu.blocks},
        "t_block": {str(b.degree): 1 / (2 * lr * b.level) for b in blocks.blocks},
        "t_bulk": 1 / (2 * lr * gamma) if gamma > 0 else None,
    }


def _sel(rows, **kw) -> list[dict]:
    return [r for r in rows if all(r[key] == v for key, v in kw.items())]


def _mean_std(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))}


def summarize(rows: list[dict], config: Config, curves: dict, spectra: list[dict]) -> dict:
    """The three results of the module docstring, from the rows and curves of `run`.

    Args:
        rows: the rows of `run`'s document.
        config: the settings the rows were made with.
        curves: the curves `run` saves (keys from `curve_key`).
        spectra: `run`'s spectrum checks.

    Returns:
        {"by_n": (1) per input law, k, r, n and label: test loss, shares and gain, mean ± std;
        "gain_vs_t": (1) at k_sample the gain per λ at each evaluation step, mean over seeds;
        "sample_complexity": (2) n* per label, d and seed and the fitted slopes;
        "race": (3) the n of largest and smallest gain and their curves' summary}.
    """
    by_n = _by_n(rows, config)
    ns, ns_grid = _n_star(rows, config)
    return {
        "by_n": by_n,
        "gain_vs_t": _gain_vs_t(curves, config),
        "sample_complexity": {
            "threshold": config.threshold,
            "n_star_interpolated": ns,
            "n_star": ns_grid,
            "slopes_interpolated": fit_slopes(ns),
            "slopes": fit_slopes(ns_grid),
        },
        "race": _race(by_n, curves, spectra, config),
    }


def _by_n(rows: list[dict], config: Config) -> dict:
    """(1) per input law, k, r, n and label: test loss, the parts' shares and the gain over
    ntk+quadntk of the same seed, mean ± std over the seeds."""
    labels = ["ntk", "quadntk", *config.labels()]
    by_n: dict = {}
    for dist in config.distributions:
        for k in config.ks:
            for r in config.rs:
                for n in config.grid(config.d, k):
                    base = {
                        s["seed"]: s["test_loss"]
                        for s in _sel(rows, distribution=dist, k=k, d=config.d, r=r, n=n)
                        if s["variant"] == BASE
                    }
                    entry = {}
                    for label in labels:
                        sel = _sel(
                            rows, distribution=dist, k=k, d=config.d, r=r, n=n, variant=label
                        )
                        if not sel:
                            continue
                        e = {
                            "test_loss": _mean_std([s["test_loss"] for s in sel]),
                            "sparse_by_fq": _mean_std([s["share_sparse_by_fq"] for s in sel]),
                            "sparse_by_fl": _mean_std([s["share_sparse_by_fl"] for s in sel]),
                            "gain": _mean_std([s["test_loss"] / base[s["seed"]] for s in sel]),
                        }
                        for ell in range(1, k + 1):
                            e[f"dense{ell}_by_fl"] = _mean_std(
                                [s[f"share_dense{ell}_by_fl"] for s in sel]
                            )
                        entry[label] = e
                    by_n[f"{dist}/k{k}/r{r}/n{n}"] = entry
    return by_n


def _gain_vs_t(curves: dict, config: Config) -> dict:
    """(1) at k_sample and d, the mean over seeds of regularized / ntk+quadntk test loss at each
    evaluation step, per n and λ."""
    dist0, r0, ks = config.distributions[0], config.rs[0], config.k_sample
    gain_t: dict = {}
    for n in config.grid(config.d, ks):
        for label in config.labels()[1:]:
            ratios = [
                curves[f"{curve_key(dist0, ks, config.d, r0, n, s, label)}/test_loss"]
                / curves[f"{curve_key(dist0, ks, config.d, r0, n, s, BASE)}/test_loss"]
                for s in config.seeds
            ]
            gain_t[f"n{n}/{label}"] = np.mean(ratios, axis=0).tolist()
    return gain_t


def _n_star(rows: list[dict], config: Config) -> tuple[dict, dict]:
    """(2) n* at k_sample on the first law and r, interpolated in log n and on the grid."""
    sc_rows = [
        {**r, "test_loss": r["test_loss"]}
        for r in _sel(rows, distribution=config.distributions[0], k=config.k_sample, r=config.rs[0])
        if r["d"] in {config.d, *config.ds}
    ]
    return n_star(sc_rows, config.threshold, interpolate=True), n_star(sc_rows, config.threshold)


def _race(by_n: dict, curves: dict, spectra: list[dict], config: Config) -> dict:
    """(3) the n with the largest gain (best λ, mean over seeds) and the smallest: their curves'
    summary, the time scales, and the spectrum check at k_sample."""
    dist0, r0, ks = config.distributions[0], config.rs[0], config.k_sample
    gains = {}
    for n in config.grid(config.d, ks):
        entry = by_n[f"{dist0}/k{ks}/r{r0}/n{n}"]
        best = min(config.labels()[1:], key=lambda lab: entry[lab]["gain"]["mean"])
        gains[n] = (entry[best]["gain"]["mean"], best)
    n_gain = min(gains, key=lambda n: gains[n][0])
    n_vanish = max(gains, key=lambda n: gains[n][0])
    race = {}
    for which, n in (("largest_gain", n_gain), ("smallest_gain", n_vanish)):
        best = gains[n][1]
        item = {
            "n": n,
            "best_label": best,
            "gain": gains[n][0],
            "time_scales": time_scales(config.activation, config.d, n, ks, config.lr),
        }
        for label in (BASE, best):
            keys = [curve_key(dist0, ks, config.d, r0, n, s, label) for s in config.seeds]
            bulk = np.mean([curves[f"{k_}/bulk_sum"] for k_ in keys], axis=0)
            train = np.mean([curves[f"{k_}/train_loss"] for k_ in keys], axis=0)
            fq = np.mean([curves[f"{k_}/share_fq"][:, -1] for k_ in keys], axis=0)
            item[label] = {
                "bulk_sum_peak": float(np.max(bulk)),
                "bulk_sum_final": float(bulk[-1]),
                "train_loss_final": float(train[-1]),
                "sparse_by_fq_final": float(fq[-1]),
                "step_sparse_by_fq_half": _first_step(curves_step(config), fq, 0.5),
                "step_train_below_0.01": _first_step(curves_step(config), -train, -0.01),
            }
        race[which] = item
    race["spectrum"] = next(
        (s for s in spectra if s["k"] == ks and s["d"] == config.d and s["distribution"] == dist0),
        None,
    )
    return race


def table(doc: dict) -> str:
    """Markdown tables of a saved document: (1) test loss and the sparse part's f_Q share per n
    for each k (ntk, quadntk, ntk+quadntk and the best λ of the grid, with its gain), (2) the
    fitted slopes of n*, (3) the race.

    Args:
        doc: the document `run` writes (dense-plus-sparse.json, loaded).

    Returns:
        The tables, as one markdown string.
    """
    cfg = doc["config"]
    summary = doc["summary"]
    dist0, r0 = cfg["distributions"][0], cfg["rs"][0]
    grid_labels = doc["labels"][1:]
    out = []
    for k in cfg["ks"]:
        out.append(
            f"\n(1) {dist0}, k = {k}, d = {cfg['d']}, r = {r0}: final test loss (mean ± std over "
            f"{len(cfg['seeds'])} seeds), f_Q's share of the sparse part in brackets\n"
        )
        out.append("| n | ntk | quadntk | ntk+quadntk | best λ | regularized | gain |")
        out.append("|---|---|---|---|---|---|---|")
        for key, entry in summary["by_n"].items():
            if not key.startswith(f"{dist0}/k{k}/r{r0}/"):
                continue
            best = min(grid_labels, key=lambda lab: entry[lab]["gain"]["mean"])

            def cell(e):
                if e is None:
                    return "—"
                t, q = e["test_loss"], e["sparse_by_fq"]["mean"]
                return f"{t['mean']:.3f} ± {t['std']:.3f} ({q:.2f})"

            g = entry[best]["gain"]
            out.append(
                f"| {key.rsplit('/n', 1)[1]} | {cell(entry.get('ntk'))} | "
                f"{cell(entry.get('quadntk'))} | "
                f"{cell(entry[BASE])} | {best} | {cell(entry[best])} | "
                f"{g['mean']:.2f} ± {g['std']:.2f} |"
            )
    sc = summary["sample_complexity"]
    out.append(
        f"\n(2) n* (test loss ≤ {sc['threshold']:.3g}, interpolated in log n) against d at "
        f"k = {cfg['k_sample']}: slope of log n* on log d, mean ± std over the seeds fitted\n"
    )
    out.append("| variant | slope | seeds fitted | n* per d (mean over seeds reaching it) |")
    out.append("|---|---|---|---|")
    for label, fit in sc["slopes_interpolated"].items():
        per_d = ", ".join(
            f"d={d}: {np.mean(reached):.0f} ({len(reached)}/{len(v)})"
            if (reached := [x for x in v.values() if x is not None])
            else f"d={d}: —"
            for d, v in sorted(sc["n_star_interpolated"][label].items(), key=lambda kv: int(kv[0]))
        )
        slope = (
            f"{fit['slope_mean']:.2f} ± {fit['slope_std']:.2f}"
            if fit["slope_mean"] is not None
            else "—"
        )
        out.append(f"| {label} | {slope} | {fit['seeds_fitted']} | {per_d} |")
    race = summary["race"]
    out.append(f"\n(3) the race at k = {cfg['k_sample']}, d = {cfg['d']} (means over seeds)\n")
    out.append(
        "| n | setting | gain | peak n·R_bulk | final n·R_bulk | final train loss | "
        "f_Q sparse share | first t with share ≥ 0.5 |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for which in ("largest_gain", "smallest_gain"):
        item = race[which]
        for label in dict.fromkeys((BASE, item["best_label"])):
            v = item[label]
            out.append(
                f"| {item['n']} | {label} | {item['gain']:.2f} | {v['bulk_sum_peak']:.3g} | "
                f"{v['bulk_sum_final']:.3g} | {v['train_loss_final']:.3g} | "
                f"{v['sparse_by_fq_final']:.2f} | {v['step_sparse_by_fq_half']} |"
            )
    spec = race.get("spectrum")
    if spec:
        out.append(
            f"\nspectrum of K/n at d = {spec['d']}, n = {spec['n']}: kept N(d, ≤ {spec['k']}) = "
            f"{spec['kept_directions']} (predicted blocks {spec['predicted_block_sizes']}), "
            f"last kept eigenvalue {spec['last_kept_eigenvalue']:.3g}, next "
            f"{spec['first_bulk_eigenvalue']:.3g} (ratio {spec['gap_ratio']:.2f}); predicted "
            f"levels { ({d: round(v, 4) for d, v in spec['predicted_levels'].items()}) }, "
            f"bulk γ predicted {spec['predicted_gamma']:.2g}, measured median "
            f"{spec['measured_bulk_median']:.2g}"
        )
    return "\n".join(out)


def curves_step(config: Config) -> np.ndarray:
    """The evaluation steps of every run: 0, then the log-spaced schedule.

    Args:
        config: the settings.

    Returns:
        (E,) int array of steps.
    """
    return np.concatenate([[0], training.eval_schedule(config.steps, "log", config.eval_points)])


def _first_step(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    hit = np.nonzero(np.asarray(values) >= level)[0]
    return int(steps[hit[0]]) if hit.size else None


def plot(json_path: Path, npz_path: Path, png_path: Path) -> Path:
    """Draw the experiment's figure from its saved JSON and NPZ.

    Panels: test loss against n at d for each k (one line per variant, the best λ of each
    scale); f_Q's share of the sparse part against n (k_sample); the gain against log_d t at
    each n (k_sample, best λ); n* against d (log-log, slopes in the legend); and the race at the
    n of largest and of smallest gain: n·R_bulk, train loss and f_Q's sparse share against log_d t.

    Args:
        json_path: dense-plus-sparse.json.
        npz_path: dense-plus-sparse.npz beside it.
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    doc = json.loads(Path(json_path).read_text())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["config"].items()})
    summary = doc["summary"]
    with np.load(npz_path) as z:
        curves = {k: z[k] for k in z.files}
    steps = np.maximum(curves["eval_step"], 1).astype(float)
    logt = np.log(steps) / np.log(cfg.d)
    dist0, r0, ks = cfg.distributions[0], cfg.rs[0], cfg.k_sample
    fig = Figure(figsize=(16, 7.5), layout="constrained")
    axes = fig.subplots(2, 4)
    shown = ["ntk", "quadntk", BASE, *cfg.labels()[1:]]
    colors = dict(zip(shown, colormaps["tab10"](np.arange(len(shown))), strict=True))
    by_n = {
        k: [summary["by_n"][f"{dist0}/k{k}/r{r0}/n{n}"] for n in cfg.grid(cfg.d, k)]
        for k in dict.fromkeys((*cfg.ks[:2], ks))
    }
    _plot_loss_against_n(axes[0, :2], cfg, by_n, shown, colors)
    _plot_shares_against_n(axes[0, 2], cfg.grid(cfg.d, ks), by_n[ks], ks, shown, colors)
    _plot_gain_against_t(axes[0, 3], cfg, by_n[ks], summary["gain_vs_t"], logt)
    _plot_n_star(axes[1, 0], summary["sample_complexity"], ks, colors)
    _plot_race(axes[1, 1:], cfg, summary["race"], curves, logt, colors)
    fig.suptitle(
        f"dense (degree ≤ k, variance {cfg.dense_variance:.3g}) + sparse (degree k+1, r = {r0}, "
        f"variance {cfg.sparse_variance:.3g}) on {dist0}: m = {cfg.m}, T = {cfg.steps}, "
        f"lr = {cfg.lr}, {len(cfg.seeds)} seeds",
        fontsize=10,
    )
    fig.savefig(png_path, dpi=110)
    return Path(png_path)


def _plot_loss_against_n(axes, cfg: Config, by_n: dict, shown: list[str], colors: dict) -> None:
    """(1) test loss against n, one panel for each of the first two k."""
    for ax, k in zip(axes, cfg.ks[:2], strict=False):
        grid = cfg.grid(cfg.d, k)
        for label in shown:
            vals = [entry.get(label) for entry in by_n[k]]
            if any(v is None for v in vals):
                continue
            m = [v["test_loss"]["mean"] for v in vals]
            s = [v["test_loss"]["std"] for v in vals]
            ax.errorbar(grid, m, yerr=s, color=colors[label], label=label, marker="o", ms=3)
        ax.axhline(cfg.sparse_variance, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"n (N(d,≤{k}) = {grid[0]} … N(d,≤{k + 1}) = {grid[-1]})")
        ax.set_title(f"test loss, k = {k}, d = {cfg.d}", fontsize=9)
    axes[0].legend(fontsize=6)
    if len(cfg.ks) < 2:
        axes[1].set_visible(False)


def _plot_shares_against_n(ax, grid, entries: list[dict], ks: int, shown, colors) -> None:
    """f_Q's and f_L's shares of the sparse part against n, at k_sample."""
    for label in shown:
        vals = [entry.get(label) for entry in entries]
        if any(v is None for v in vals):
            continue
        ax.plot(grid, [v["sparse_by_fq"]["mean"] for v in vals], color=colors[label], marker="o")
        ax.plot(
            grid, [v["sparse_by_fl"]["mean"] for v in vals], color=colors[label], ls="--", lw=0.8
        )
    ax.set_xscale("log")
    ax.set_title(f"sparse part carried by f_Q (—) and f_L (--), k = {ks}", fontsize=9)
    ax.set_xlabel("n")


def _plot_gain_against_t(ax, cfg: Config, entries: list[dict], gain_vs_t: dict, logt) -> None:
    """The gain of the best λ against log_d t, one line per n, at k_sample."""
    from matplotlib import colormaps

    grid = cfg.grid(cfg.d, cfg.k_sample)
    cmap = colormaps["viridis"](np.linspace(0, 0.9, len(grid)))
    for c, n, entry in zip(cmap, grid, entries, strict=True):
        best = min(cfg.labels()[1:], key=lambda lab: entry[lab]["gain"]["mean"])
        ax.plot(logt, gain_vs_t[f"n{n}/{best}"], color=c, label=f"n={n} ({best})")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel(f"log_d t (d = {cfg.d})")
    ax.set_title(f"gain: regularized / ntk+quadntk test loss, k = {cfg.k_sample}", fontsize=9)
    ax.legend(fontsize=6)


def _plot_n_star(ax, sc: dict, ks: int, colors: dict) -> None:
    """(2) n* against d, log-log, with each variant's fitted slope in the legend."""
    for label, by_d in sc["n_star_interpolated"].items():
        ds = sorted(by_d, key=int)
        pts = [
            (int(d), np.mean([v for v in by_d[d].values() if v is not None]))
            for d in ds
            if any(v is not None for v in by_d[d].values())
        ]
        if pts:
            fit = sc["slopes_interpolated"][label]
            slope = (
                f"{fit['slope_mean']:.2f} ± {fit['slope_std']:.2f}"
                if fit["slope_mean"] is not None
                else "n/a"
            )
            ax.plot(
                *zip(*pts, strict=True),
                marker="o",
                color=colors.get(label),
                label=f"{label}: {slope}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("d")
    ax.set_title(f"n* (test loss ≤ {sc['threshold']:.3g}), k = {ks}; slope ± std", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _plot_race(axes, cfg: Config, race: dict, curves: dict, logt, colors: dict) -> None:
    """(3) the race at the n of largest and of smallest gain: n·R_bulk, train loss and f_Q's
    share of the sparse part against log_d t."""
    dist0, r0, ks = cfg.distributions[0], cfg.rs[0], cfg.k_sample
    panels = (
        ("bulk_sum", "n·R_bulk"),
        ("train_loss", "train loss"),
        ("share_fq", "f_Q share of sparse"),
    )
    for ax, (field, title) in zip(axes, panels, strict=True):
        for which, ls in (("largest_gain", "-"), ("smallest_gain", "--")):
            item = race[which]
            for label in dict.fromkeys((BASE, item["best_label"])):
                keys = [curve_key(dist0, ks, cfg.d, r0, item["n"], s, label) for s in cfg.seeds]
                vals = np.stack([curves[f"{k_}/{field}"] for k_ in keys])
                if field == "share_fq":
                    vals = vals[..., -1]
                ax.plot(
                    logt, vals.mean(0), ls=ls, color=colors[label], label=f"n={item['n']} {label}"
                )
        ax.set_xlabel(f"log_d t (d = {cfg.d})")
        ax.set_title(f"race, k = {ks}: {title}", fontsize=9)
        if field != "share_fq":
            ax.set_yscale("log")
    axes[-1].legend(fontsize=6)
