"""Figures drawn from saved results (JSON/NPZ), never from live training state.

Figures are built on `matplotlib.figure.Figure` without pyplot, so drawing one never changes the
user's backend (a notebook keeps its inline figures) and needs no display.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

__all__ = [
    "lambda_sweep_figure",
    "lazy_rich_figure",
    "mlp_figure",
    "sample_complexity_figure",
    "variants_chart",
]


def variants_chart(json_path: Path, png_path: Path) -> Path:
    """Bar chart of the final test loss of each variant (mean ± std over seeds), with the variance
    of the target's quadratic part marked: the loss of a model that learns only the linear part.

    Args:
        json_path: the experiment's JSON file, as `jaxntk reproduce` writes it (variants.json).
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    doc = json.loads(Path(json_path).read_text())
    summary = doc["summary"]
    names = list(summary)
    mean = np.array([summary[v]["test_loss_mean"] for v in names])
    std = np.array([summary[v]["test_loss_std"] for v in names])
    cfg = doc["config"]
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(names, mean, yerr=std, capsize=4, color="#4c72b0")
    quad = doc.get("part_variances", {}).get("quadratic")
    if quad is not None:
        ax.axhline(quad, color="#c44e52", ls="--", lw=1, label="variance of the quadratic part")
        ax.legend(loc="upper right", fontsize=8)
    for i, (v, s) in enumerate(zip(mean, std, strict=True)):
        ax.text(i, v + s + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("test loss (1 = learned nothing)")
    ax.set_title(
        f"variants on ((β·x)² − 1 + β·x)/√3: d={cfg['d']}, n={cfg['n']}, m={cfg['m']}, "
        f"T={cfg['steps']}, {len(cfg['seeds'])} seeds",
        fontsize=9,
    )
    ax.tick_params(axis="x", labelsize=8)
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


def lambda_sweep_figure(json_path: Path, npz_path: Path, png_path: Path) -> Path:
    """The authors' three panels against log_d t: n·R_bulk (the bulk output summed over the
    training points), training loss and test loss; mean ± std over seeds, one line per λ_1.

    Args:
        json_path: the experiment's JSON file, as `jaxntk reproduce` writes it (lambda_sweep.json).
        npz_path: the run's curves, lambda_sweep.npz beside it.
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    doc = json.loads(Path(json_path).read_text())
    cfg = doc["config"]
    d, n = cfg["d"], cfg["n"]
    seeds, lambdas = cfg["seeds"], cfg["lambdas"]
    with np.load(npz_path) as z:
        curves = {k: z[k] for k in z.files}
    t_trace = curves["trace_step"] + 1.0
    t_eval = np.maximum(curves["step"], 1).astype(float)
    panels = [
        (
            "n·R_bulk (sum over training points)",
            t_trace,
            np.stack([n * curves[f"{s}/trace_bulk"] for s in seeds]),
        ),
        ("train loss", t_trace, np.stack([curves[f"{s}/trace_mse"] for s in seeds])),
        ("test loss", t_eval, np.stack([curves[f"{s}/test_loss"] for s in seeds])),
    ]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(lambdas)))
    for ax, (title, t, vals) in zip(axes, panels, strict=True):
        x = np.log(t) / np.log(d)
        for i, lam in enumerate(lambdas):
            mean, std = vals[:, i].mean(0), vals[:, i].std(0)
            ax.plot(x, mean, color=colors[i], lw=1.2, label=f"λ₁ = {lam:g}")
            ax.fill_between(x, mean - std, mean + std, color=colors[i], alpha=0.2, lw=0)
        ax.set_xlabel(f"log_d t  (d = {d})")
        ax.set_title(title, fontsize=10)
    axes[2].legend(fontsize=7)
    fig.suptitle(
        f"NTK+QuadNTK with the bulk penalty: d={d}, n={n}, m={cfg['m']}, T={cfg['steps']}, "
        f"{len(seeds)} seed(s)",
        fontsize=10,
    )
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


def sample_complexity_figure(json_path: Path, png_path: Path) -> Path:
    """Left: final test loss against n for each variant at the largest d (mean ± std over seeds).
    Right: n* (where the test loss crosses the threshold, interpolated in log n when the file has
    it) against d on log-log axes, mean over seeds, with the slopes fitted per seed (mean ± std).

    Args:
        json_path: the experiment's JSON file (sample_complexity.json from `jaxntk reproduce`).
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    doc = json.loads(Path(json_path).read_text())
    cfg, rows = doc["config"], doc["results"]
    variants, ds = cfg["variants"], cfg["ds"]
    colors = colormaps["tab10"](np.arange(len(variants)))
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    d_big = max(ds)
    reached = False
    for c, v in zip(colors, variants, strict=True):
        sel = [r for r in rows if r["variant"] == v and r["d"] == d_big]
        ns = sorted({r["n"] for r in sel})
        vals = np.array([[r["test_loss"] for r in sel if r["n"] == n] for n in ns])
        left.errorbar(ns, vals.mean(1), yerr=vals.std(1), color=c, marker="o", ms=3, label=v)
        which = "_interpolated" if "n_star_interpolated" in doc else ""
        nstar = doc[f"n_star{which}"][v]
        mean_n = [
            np.mean([x for x in nstar[str(d)].values() if x is not None] or [np.nan]) for d in ds
        ]
        fit = doc[f"slopes{which}"][v]
        slope, spread = fit["slope_mean"], fit["slope_std"]
        label = f"{v}: not reached"
        if slope is not None:
            label = f"{v}: slope {slope:.2f} ± {spread:.2f}"
        right.plot(ds, mean_n, color=c, marker="o", label=label)
        reached = reached or bool(np.isfinite(mean_n).any())
    left.axhline(cfg["threshold"], color="gray", ls=":", lw=1)
    left.set_xscale("log")
    left.set_xlabel(f"n (d = {d_big})")
    left.set_ylabel("test loss")
    left.legend(fontsize=7)
    right.set_xscale("log")
    if reached:  # a log axis with no finite point fails to draw
        right.set_yscale("log")
    right.set_xlabel("d")
    right.set_ylabel(f"n* (test loss ≤ {cfg['threshold']:.3g})")
    right.legend(fontsize=7)
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


def mlp_figure(json_path: Path, png_path: Path) -> Path:
    """n*(d), the smallest n reaching the test-loss threshold, against d (log-log), beside the
    reference lines n = 6d² and n = d³ (the authors' plot).

    Args:
        json_path: the experiment's JSON file, as `jaxntk reproduce` writes it (mlp.json).
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    doc = json.loads(Path(json_path).read_text())
    cfg = doc["config"]
    ds = np.array(cfg["ds"], dtype=float)
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    pts = [
        (int(d), np.mean(list(v.values())))
        for d, v in doc["n_star"].items()
        if all(x is not None for x in v.values())
    ]
    if pts:
        slope = doc["slope"]
        label = "n* measured" + (f" (slope {slope:.2f})" if slope is not None else "")
        ax.plot(*zip(*pts, strict=True), "o-", color="#4c72b0", label=label)
    ax.plot(ds, 6 * ds**2, "--", color="gray", label="n = 6d²")
    ax.plot(ds, ds**3, ":", color="gray", label="n = d³")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("d")
    ax.set_ylabel(f"smallest n with test loss < {cfg['threshold']}")
    ax.legend(fontsize=8)
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


def lazy_rich_figure(json_path: Path, png_path: Path) -> Path:
    """The lazy-rich experiment in four panels against the scale α (log x): final test loss and
    kernel change, one line per width (mean ± std over seeds), the variants and one-step as
    horizontal marks (the largest width); the distance of the network's trajectory to the scaled
    NTK's, with 1/α and 1/α² guides; and n* against d (log-log) for the rich network and one-step
    with their fitted slopes.

    Args:
        json_path: the experiment's JSON file (lazy-rich.json from `jaxntk reproduce`).
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    doc = json.loads(Path(json_path).read_text())
    cfg, sweep = doc["config"], doc["sweep_summary"]
    fig = Figure(figsize=(14, 3.6), layout="constrained")
    loss_ax, kernel_ax, dist_ax, slope_ax = fig.subplots(1, 4)
    shades = colormaps["Blues"](np.linspace(0.5, 0.9, len(sweep)))
    for shade, (m, by_alpha) in zip(shades, sweep.items(), strict=True):
        alphas = np.array([float(a) for a in by_alpha])
        for ax, key in ((loss_ax, "test_loss"), (kernel_ax, "kernel_change")):
            mean = np.array([v[f"{key}_mean"] for v in by_alpha.values()])
            std = np.array([v[f"{key}_std"] for v in by_alpha.values()])
            ax.errorbar(alphas, mean, yerr=std, color=shade, marker="o", ms=3, label=f"m = {m}")
        dist = np.array([v["distance_to_ntk_test_mean"] for v in by_alpha.values()])
        dist_ax.plot(alphas, dist, color=shade, marker="o", ms=3, label=f"m = {m}")
    lazy = alphas[alphas >= 1]
    if lazy.size and np.isfinite(dist[alphas >= 1]).all():
        start = dist[alphas >= 1][0] * lazy[0]
        dist_ax.plot(lazy, start / lazy, "--", color="gray", lw=1, label="∝ 1/α")
        dist_ax.plot(lazy, start * lazy[0] / lazy**2, ":", color="gray", lw=1, label="∝ 1/α²")
    widest = str(cfg.get("variant_width") or max(cfg["widths"]))
    colors = colormaps["tab10"](np.arange(len(doc["variant_summary"])))
    for c, (variant, by_width) in zip(colors, doc["variant_summary"].items(), strict=True):
        if widest in by_width:
            loss_ax.axhline(
                by_width[widest]["test_loss_mean"], color=c, ls="--", lw=1, label=variant
            )
    loss_ax.set_ylabel("final test loss")
    kernel_ax.set_ylabel("‖K_T − K_0‖ / ‖K_0‖ (probe)")
    dist_ax.set_ylabel("‖h_α(T) − h_ntk(T)‖ / ‖h_ntk(T)‖ (test)")
    for ax in (loss_ax, kernel_ax, dist_ax):
        ax.set_xscale("log")
        ax.set_xlabel("α (Chizat et al.'s scale)")
    kernel_ax.set_yscale("log")
    dist_ax.set_yscale("log")
    loss_ax.legend(fontsize=6)
    dist_ax.legend(fontsize=7)
    ds = cfg["slope_ds"]
    reached = False
    slope_colors = colormaps["tab10"](np.arange(len(doc["slopes"])))
    for c, (variant, fit) in zip(slope_colors, doc["slopes"].items(), strict=True):
        nstar = doc["n_star"][variant]
        mean_n = [
            np.mean([x for x in nstar[str(d)].values() if x is not None] or [np.nan]) for d in ds
        ]
        label = f"{variant}: not reached"
        if fit["slope_mean"] is not None:
            label = f"{variant}: slope {fit['slope_mean']:.2f} ± {fit['slope_std']:.2f}"
        slope_ax.plot(ds, mean_n, color=c, marker="o", label=label)
        reached = reached or bool(np.isfinite(mean_n).any())
    slope_ax.set_xscale("log")
    if reached:  # a log axis with no finite point fails to draw
        slope_ax.set_yscale("log")
    slope_ax.set_xlabel("d")
    slope_ax.set_ylabel(f"n* (test loss ≤ {cfg['threshold']:.3g})")
    slope_ax.legend(fontsize=7)
    fig.suptitle(
        f"lazy to rich on ((β·x)² − 1 + β·x)/√3: d = {cfg['d']}, n = {cfg['n']}, "
        f"T = {cfg['steps']}, {len(cfg['seeds'])} seeds",
        fontsize=9,
    )
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


def mnist1d_chart(json_path: Path, png_path: Path) -> Path:
    """MNIST-1D in six panels: the table's test accuracy by row (mean ± std over seeds) with the
    published anchors; the learning curves (test error against n, log-log, fitted slopes and the
    n at the target in the legend); the spectrum's prediction of kernel regression's test error
    beside the measurement; the α axis (test accuracy; kernel change, alignment and distances to
    the Taylor models); and the width (the network and its NTK). Panels of sections that did
    not run say so.

    Args:
        json_path: the experiment's JSON file (mnist1d.json).
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    doc = json.loads(Path(json_path).read_text())
    sections = doc.get("sections", {})
    fig = Figure(figsize=(16, 8.5), layout="constrained")
    axes = fig.subplots(2, 3)
    _mnist1d_bars(axes[0, 0], doc)
    _mnist1d_curves(axes[0, 1], sections.get("curves", {}), doc["config"])
    _mnist1d_spectrum(axes[0, 2], sections.get("spectrum", {}))
    _mnist1d_alpha(axes[1, 0], axes[1, 1], sections.get("lazy", {}))
    _mnist1d_width(axes[1, 2], sections.get("width", {}))
    cfg = doc["config"]
    fig.suptitle(
        f"MNIST-1D, n = {cfg['n_train']}: the CNN ({cfg['channels']} channels), its Taylor models "
        f"and kernels, {len(cfg['seeds'])} seeds",
        fontsize=10,
    )
    fig.savefig(png_path, dpi=110)
    return Path(png_path)


def _not_run(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _mnist1d_bars(ax, doc: dict) -> None:
    rows = doc.get("table") or [
        {"row": key, "loss": "", "mean": v["test_accuracy_mean"], "std": v["test_accuracy_std"]}
        for key, v in doc["summary"].items()
    ]
    labels = [f"{r['row']} ({r['loss']})" if r["loss"] else r["row"] for r in rows]
    mean = np.array([100 * r["mean"] for r in rows])
    std = np.array([100 * r["std"] for r in rows])
    at = np.arange(len(rows))
    colors = ["#4c72b0" if r["loss"] != "cross_entropy" else "#dd8452" for r in rows]
    ax.barh(at, mean, xerr=std, color=colors, capsize=2)
    for y, v in zip(at, mean, strict=True):
        ax.text(v + 1, y, f"{v:.1f}", va="center", fontsize=6)
    styles = (":", "-.", "--", (0, (1, 3)), (0, (5, 1)), (0, (3, 1, 1, 1)))
    for (name, (acc, _)), style in zip(doc["anchors"].items(), styles, strict=False):
        ax.axvline(acc, color="gray", ls=style, lw=1, label=f"published {name} {acc} %")
    ax.set_yticks(at, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("test accuracy (%)")
    # below the axes: inside, it would hide the bars it annotates
    ax.legend(fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)


def _mnist1d_curves(ax, section: dict, cfg: dict) -> None:
    summary = section.get("summary", {})
    if not any(s["n"] for s in summary.values()):
        return _not_run(ax, "learning curves")
    colors = colormaps["tab10"](np.arange(len(summary)))
    for c, (row, s) in zip(colors, summary.items(), strict=True):
        if not s["n"]:
            continue
        label = row if s["slope"] is None else f"{row}: slope {s['slope']:.2f}"
        if s["n_at_target"] is not None:
            label += f", n({100 * cfg['curve_target']:.0f} %) ≈ {s['n_at_target']:.0f}"
        ax.errorbar(
            s["n"], s["error_mean"], yerr=s["error_std"], color=c, marker="o", ms=3, label=label
        )
        if s["slope"] is not None:
            n = np.array(s["n"], dtype=float)
            ax.plot(n, 10 ** (s["intercept"] + s["slope"] * np.log10(n)), "--", color=c, lw=0.8)
    ax.axhline(1 - cfg["curve_target"], color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _n_ticks(ax, sorted({n for s in summary.values() for n in s["n"]}))
    ax.set_xlabel("training signals n")
    ax.set_ylabel("test error")
    ax.set_title("learning curves (dashed: fitted lines)", fontsize=8)
    ax.legend(fontsize=6)


def _mnist1d_spectrum(ax, section: dict) -> None:
    found = section.get("units", {}).get("result")
    if not found:
        return _not_run(ax, "spectrum's prediction")
    rows = found["rows"]
    n = [r["n"] for r in rows]
    ax.plot(n, [r["measured_mse"] for r in rows], "ko-", ms=4, label="measured (kernel regression)")
    ax.plot(
        n,
        [r["predicted_top_k"] for r in rows],
        "s--",
        ms=3,
        label=f"learning_curve, top {found['k']} modes",
    )
    ax.plot(
        n,
        [r["predicted_flat_tail"] for r in rows],
        "^:",
        ms=3,
        label="learning_curve, top modes + flat tail",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _n_ticks(ax, n)
    ax.set_xlabel("training signals n")
    ax.set_ylabel("test MSE (one-hot, mean over outputs)")
    ax.set_title(
        f"the CNN NTK's spectrum (N = {found['n_big']}) predicts kernel regression", fontsize=8
    )
    ax.legend(fontsize=6)


def _n_ticks(ax, ns) -> None:
    """The sizes themselves as the log axis' ticks (matplotlib's minor labels overlap)."""
    ax.set_xticks(ns, [f"{n:g}" for n in ns], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())


def _mnist1d_alpha(acc_ax, diag_ax, section: dict) -> None:
    summary = section.get("summary", {})
    if not summary:
        _not_run(diag_ax, "α axis")
        return _not_run(acc_ax, "α axis")
    alphas = np.array([float(a) for a in summary])
    acc = np.array([100 * v["test_accuracy_mean"] for v in summary.values()])
    acc_std = np.array([100 * v["test_accuracy_std"] for v in summary.values()])
    acc_ax.errorbar(alphas, acc, yerr=acc_std, marker="o", color="#4c72b0")
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title("the CNN scaled by α (jn.Scaled): lazy as α grows", fontsize=8)
    for key, label in (
        ("kernel_change", "‖K_T − K_0‖ / ‖K_0‖ (probe)"),
        ("distance_linear", "D_1: distance to the linear model"),
        ("distance_quadratic", "D_2: to the quadratic model"),
        ("alignment", "centered alignment of K_T"),
        ("alignment_init", "alignment of K_0"),
    ):
        values = np.array([v[f"{key}_mean"] for v in summary.values()])
        diag_ax.plot(alphas, values, marker="o", ms=3, label=label)
    diag_ax.set_yscale("log")
    diag_ax.set_title("laziness diagnostics at the best epoch", fontsize=8)
    diag_ax.legend(fontsize=6)
    for ax in (acc_ax, diag_ax):
        ax.set_xscale("log")
        ax.set_xlabel("α (Chizat et al.'s scale)")


def _mnist1d_width(ax, section: dict) -> None:
    summary = section.get("summary", {})
    if not summary:
        return _not_run(ax, "width")
    widths = np.array([float(w) for w in summary])
    for key, label in (("network", "the CNN, trained"), ("kernel", "kernel regression, its NTK")):
        mean = np.array([100 * v[f"{key}_mean"] for v in summary.values()])
        std = np.array([100 * v[f"{key}_std"] for v in summary.values()])
        ax.errorbar(widths, mean, yerr=std, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(widths, [f"{w:g}" for w in widths])
    ax.minorticks_off()
    ax.set_xlabel("channels")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("does the gap between the network and its NTK close with width?", fontsize=8)
    ax.legend(fontsize=7)
