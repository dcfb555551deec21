"""Experiment `spectrum`: the eigenvalues of the empirical NTK Gram matrix K/n and its blocks.

With n ≈ d^1.5 inputs on the sphere and the default activation, theory (docs/science.md §4,
`jaxntk.spectral.predict_degree_blocks`) predicts d eigenvalues on top (degree 1), then one
(degree 0), then a flat bulk at the self-induced ridge γ. This experiment measures the spectrum of
K/n at symmetric initialization, lays the predicted blocks over it and reports where they sit
(`jaxntk.spectral.degree_block_report`). Writes `spectrum.json` (config, eigenvalues, prediction,
report) and `spectrum.png` (eigenvalues on a log scale, predicted block boundaries marked), drawn
from the saved JSON.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxntk import network, spectral, targets

NAME = "spectrum"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the spectrum experiment (defaults: the `cpu` preset, seconds on 2 cores).

    Attributes:
        d: input dimension.
        n: number of inputs (the NTK Gram matrix is n × n).
        m: width of the two-layer network.
        distribution: input distribution, "sphere" (the theory's setting) or "gaussian".
        activation: a name in `jaxntk.ACTIVATIONS`.
        seed: seed of the network and the inputs.
    """

    d: int = 40
    n: int = 252
    m: int = 4000
    distribution: str = "sphere"
    activation: str = "shifted_sigmoid"
    seed: int = 0


PRESETS = {
    "cpu": Config(),
    "paper": Config(d=100, n=1000, m=10_000, distribution="gaussian"),
}
"""cpu: d = 40, n = 252 ≈ d^1.5, m = 4000 on the sphere (the theory's setting); paper: the
authors' training set (Gaussian inputs, d = 100, n = 1000, m = 10 000)."""


def run(config: Config, out: Path | str) -> dict:
    """Measure the spectrum of K/n, compare it with the predicted degree blocks, save JSON + PNG.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write spectrum.json and spectrum.png into (created if missing).

    Returns:
        The document written to `out/spectrum.json`: the eigenvalues of K/n, the predicted
        degree blocks and the comparison of the two.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    k_net, k_x = jax.random.split(jax.random.PRNGKey(config.seed))
    net = network.init(k_net, d=config.d, m=config.m, activation=config.activation)
    x = targets.sample_inputs(k_x, config.n, config.d, config.distribution)
    gram = np.asarray(spectral.gram_matrix(net, net.prepare(x)), dtype=np.float64)
    eigenvalues = np.linalg.eigvalsh(gram / config.n)[::-1]
    predicted = spectral.predict_degree_blocks(config.activation, config.d, config.n)
    report = spectral.degree_block_report(eigenvalues, predicted)
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "eigenvalues": eigenvalues.tolist(),
        "predicted": dataclasses.asdict(predicted),
        "report": dataclasses.asdict(report),
        "separated": report.separated,
        "seconds": time.perf_counter() - start,
    }
    json_path = out / f"{NAME}.json"
    json_path.write_text(json.dumps(doc, indent=1))
    plot(json_path, out / f"{NAME}.png")
    return doc


def plot(json_path: Path | str, png_path: Path | str) -> Path:
    """Draw the saved spectrum: eigenvalues of K/n (log scale) with the predicted blocks marked.

    Args:
        json_path: spectrum.json as `run` writes it.
        png_path: where to write the figure.

    Returns:
        png_path, as a `pathlib.Path`.
    """
    from matplotlib.figure import Figure

    doc = json.loads(Path(json_path).read_text())
    ev = np.asarray(doc["eigenvalues"])
    cfg, predicted = doc["config"], doc["predicted"]
    index = np.arange(1, ev.size + 1)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    ax.semilogy(index, ev, ".", ms=4, color="k", label="eigenvalues of K/n")
    start = 0
    for block in predicted["blocks"]:
        stop = start + block["multiplicity"]
        ax.axvline(stop + 0.5, color="C0", ls="--", lw=0.8)
        ax.fill_between(
            [start + 0.5, stop + 0.5], block["low"], block["high"], color="C1", alpha=0.15, lw=0
        )
        ax.hlines(block["level"], start + 0.5, stop + 0.5, color="C1", lw=2)
        ax.annotate(
            f"degree {block['degree']} (×{block['multiplicity']})",
            (stop + 0.5, block["level"]),
            xytext=(4, 2),
            textcoords="offset points",
            fontsize=8,
            color="C1",
        )
        start = stop
    ax.axhline(predicted["gamma"], color="C2", ls=":", lw=1.2, label="predicted bulk level γ")
    ax.plot([], [], color="C1", lw=2, label="predicted block level μ_ℓ + γ (band: its spread)")
    ax.plot([], [], color="C0", ls="--", lw=0.8, label="predicted block boundary")
    ax.set_xscale("log")
    ax.set_xlabel("index (eigenvalues sorted descending)")
    ax.set_ylabel("eigenvalue of K/n")
    ax.set_title(
        f"NTK spectrum: d = {cfg['d']}, n = {cfg['n']}, m = {cfg['m']}, "
        f"{cfg['distribution']}, {cfg['activation']}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    return png_path
