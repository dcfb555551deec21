"""Experiment `mnist1d`: the paper's variants on MNIST-1D, a 10-class benchmark at its full size.

MNIST-1D (Greydanus, *Scaling down deep learning*, 2020): 4000 training and 1000 test signals
of length 40, 10 classes, generated offline (`jaxntk.data.mnist1d`, the `[mnist1d]` extra).
Published test accuracies: logistic regression 32 ± 1 %, MLP 68 ± 2 %, CNN 94 ± 2 %, GRU
91 ± 2 %, human 96 ± 1 %, the CNN on signals with shuffled positions 56 %.

The network is a 1D CNN of about 5.2k parameters in the published CNN's shape (three
convolutions of 25 channels, kernel 5 then 3, stride 2, then a dense readout), with GELU, a
smooth activation, so that its quadratic Taylor term is not zero almost everywhere as ReLU's
second derivative makes it. Each seed draws its own network (the data are the published split,
the same for every seed); every trained row uses minibatches with Adam, a fresh permutation
per epoch, and stops early on a validation split of the training set (its accuracy for the
cross-entropy, its loss for the squared error): the reported test accuracy is that of the
parameters of the best validation epoch (the argmax of the outputs).

The experiment runs in sections (`SECTIONS`, `Config.sections`), each written to the JSON as
it finishes its units and resumed from there after a kill (a section whose own settings,
`SECTION_FIELDS`, changed starts over; the others are kept):

- **variants**: the CNN trained in full and as its Taylor models (`Config.variants`: full, ntk,
  quadntk, ntk+quadntk; "regularized" with the fixed `lambda_bulk` and `k` if named), with each
  loss of `Config.losses` (the cross-entropy on classes, the squared error on one-hot rows).
- **baselines**: logistic regression and the MLP (`mlp_hidden`), trained in full.
- **kernel**: kernel regression on the CNN's and the MLP's NTK at θ0 (each seed's network),
  `jaxntk.ntk_predict`'s t = ∞ limit with the ridge chosen on the validation split
  (`_mnist1d.kernel_regression`).
- **regularized**: ntk+quadntk with R_bulk, λ_b in `reg_lambdas` (one program) and k in `reg_ks`
  chosen on the validation score of the seeds `reg_select_seeds`, then every seed at the choice.
- **one_step**: one large gradient step on the CNN's convolutions, then ridge regression on its
  readout, (η, λ) chosen on the validation split (`_mnist1d.one_step_cnn`).
- **curves**: test error against n (`curve_ns`, prefixes of one draw) for kernel regression on
  the CNN's NTK, full, ntk+quadntk and regularized (at the regularized section's choice), their
  slopes in log-log and the n at which each reaches `curve_target` accuracy.
- **lazy**: the CNN scaled by Chizat et al.'s α (`jaxntk.Scaled`, Adam at lr/α so that the
  large-α limit is the linearized model's Adam run) at n = `lazy_n`: test accuracy, kernel
  change, alignment, distances to the Taylor models (`_mnist1d.laziness`).
- **width**: the CNN at `widths` channels, trained and as kernel regression on its NTK.
- **spectrum**: eigenvalues and target coefficients of the CNN's NTK on `spectrum_n` signals
  (top `spectrum_k` eigenpairs, block Krylov), `jaxntk.spectral.learning_curve`'s prediction of
  kernel regression's test error at `spectrum_ns`, beside the measurement.

Writes `mnist1d.json` (config, the variants' rows and summary, each section's units and
summary, the table), `mnist1d.npz` (the variants' curves) and `mnist1d.png`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxntk import data, objectives, training
from jaxntk.experiments import _mnist1d as m
from jaxntk.experiments._common import mean_std_by, write_results
from jaxntk.experiments._mnist1d import ACTIVATIONS, CNN1D, MLP1D  # noqa: F401 (re-exported)
from jaxntk.scaling import Scaled
from jaxntk.taylor import TaylorModel

NAME = "mnist1d"

ANCHORS = {
    "logistic regression": (32, 1),
    "MLP": (68, 2),
    "CNN": (94, 2),
    "GRU": (91, 2),
    "human": (96, 1),
    "CNN, shuffled positions": (56, None),
}
"""MNIST-1D's published test accuracies in %, (mean, std) (Greydanus 2020; no std published for
the shuffled signals)."""

SECTIONS = (
    "variants",
    "baselines",
    "kernel",
    "regularized",
    "one_step",
    "curves",
    "lazy",
    "width",
    "spectrum",
)
"""The experiment's sections, in the order they run (module docstring)."""

_DATA = ("n_test", "channels", "activation")
_TRAIN = ("n_train", *_DATA, "seeds", "batch_size", "epochs", "lr", "validation", "patience")
_FIT = ("batch_size", "epochs", "lr", "validation", "patience")
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "variants": (*_TRAIN, "lambda_bulk", "k", "outputs", "subspace_method"),
    "baselines": (*_TRAIN, "mlp_hidden"),
    "kernel": ("n_train", *_DATA, "seeds", "validation", "mlp_hidden", "kernel_networks", "ridges"),
    "regularized": (
        *_TRAIN,
        "outputs",
        "subspace_method",
        "reg_lambdas",
        "reg_ks",
        "reg_select_seeds",
    ),
    "one_step": ("n_train", *_DATA, "seeds", "validation", "onestep_etas", "onestep_ridges"),
    "curves": (
        *_DATA,
        *_FIT,
        "outputs",
        "subspace_method",
        "ridges",
        "curve_ns",
        "curve_rows",
        "curve_seeds",
        "curve_min_steps",
    ),
    "lazy": (*_DATA, *_FIT, "alphas", "lazy_n", "lazy_probe", "lazy_seeds"),
    "width": ("n_test", "activation", *_FIT, "ridges", "widths", "width_n", "width_seeds"),
    "spectrum": (
        *_DATA,
        "validation",
        "ridges",
        "spectrum_n",
        "spectrum_k",
        "spectrum_ns",
        "spectrum_seed",
        "spectrum_iters",
    ),
}
"""The settings each section's results depend on: a rerun keeps a section's finished units only
while these are unchanged (the variants' rows are also kept per variant and loss)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the MNIST-1D experiment (defaults: the `cpu` preset).

    The `cpu` preset is sized for about 20 minutes on 2 CPU cores; against `paper` it cuts:
    the squared error only (no cross-entropy rows), at most 30 epochs (patience 8) instead of
    200 (40); the regularized choice on one seed over 3 × 2 (λ_b, k) instead of 5 × 3 on every
    seed; learning curves on one seed up to n = 4000 (paper: 3 seeds, 250 … 20 000); α and width
    on one seed, widths 25 and 100 at n = 2000 (paper: 25, 100, 400 at n = 4000). The spectrum
    is the paper's in both: N = 20 000 signals, 2000 eigenpairs by 6 block Krylov iterations,
    predicted at n = 250 … 4000 (about 6.5 minutes and 12 GB of memory here; N = 6000 with 600
    pairs, `spectrum_n=6000, spectrum_k=600, spectrum_iters=4`, takes 15 s and predicts to
    n = 2000).

    Attributes:
        n_train: training signals of the main rows (the published 4000; more draws a new set).
        n_test: test signals (every section).
        channels: the CNN's channels.
        activation: the networks' activation, a name in `ACTIVATIONS`.
        losses: "cross_entropy" (class labels) and/or "mse" (one-hot targets): the variants,
            baselines and regularized rows train with each; the other sections use "mse".
        seeds: one network per seed (variants, baselines, kernel, regularized, one_step).
        batch_size: rows per Adam step.
        epochs: the most epochs a run trains.
        lr: Adam's learning rate, by loss.
        validation: the fraction of the training signals held out (early stopping and every
            choice on validation).
        patience: epochs without a better validation score before a run stops.
        sections: the sections to run, names in `SECTIONS`.
        variants: names in `jaxntk.objectives.VARIANTS` for the variants section.
        lambda_bulk: λ_b of "regularized" in `variants` (and of the curves without the
            regularized section).
        k: its number of top directions, per output of the traced kernel.
        outputs: the good directions' kernel ("traced" or "full").
        subspace_method: how they are found (`jaxntk.spectral.METHODS`): "matrix_free", the
            NTK operator on the CNN's Jacobian features, for n·c = 36 000 output entries.
        mlp_hidden: the MLP's hidden widths (the published MLP's two layers of 100).
        kernel_networks: the networks whose NTK the kernel section regresses with ("cnn", "mlp").
        ridges: the kernel regression's ridges, relative to the kernel's mean diagonal, chosen
            on validation (kernel, curves, width, spectrum).
        reg_lambdas: the regularized section's λ_b grid.
        reg_ks: its grid of top directions k.
        reg_select_seeds: the seeds whose mean validation score chooses (λ_b, k).
        onestep_etas: one-step's step sizes η.
        onestep_ridges: one-step's readout ridges λ (on the per-sample mean loss).
        curve_ns: the learning curves' sample sizes (prefixes of one draw of max(curve_ns)).
        curve_rows: the curves' rows: "kernel" (regression on the CNN's NTK) and variants.
        curve_seeds: the curves' seeds.
        curve_min_steps: the fewest Adam steps a curve's run may take: small n train for
            more epochs (epochs and patience scaled by the same factor).
        curve_target: the accuracy whose n the curves report.
        alphas: the lazy section's scales α.
        lazy_n: its training signals.
        lazy_probe: the signals of its kernel diagnostics (the first training signals).
        lazy_seeds: its seeds.
        widths: the width section's channels.
        width_n: its training signals.
        width_seeds: its seeds.
        spectrum_n: the signals N of the large kernel.
        spectrum_k: the eigenpairs taken from it.
        spectrum_ns: the n at which kernel regression is measured and predicted (≤ N).
        spectrum_seed: the CNN's seed.
        spectrum_iters: the block Krylov iterations at most.
    """

    n_train: int = 4000
    n_test: int = 1000
    channels: int = 25
    activation: str = "gelu"
    losses: tuple[str, ...] = ("mse",)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 100
    epochs: int = 30
    lr: tuple[tuple[str, float], ...] = (("cross_entropy", 0.01), ("mse", 0.01))
    validation: float = 0.1
    patience: int = 8
    sections: tuple[str, ...] = SECTIONS
    variants: tuple[str, ...] = ("full", "ntk", "quadntk", "ntk+quadntk")
    lambda_bulk: float = 1.0
    k: int = 40
    outputs: str = "traced"
    subspace_method: str = "matrix_free"
    mlp_hidden: tuple[int, ...] = (100, 100)
    kernel_networks: tuple[str, ...] = ("cnn", "mlp")
    ridges: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    reg_lambdas: tuple[float, ...] = (0.01, 0.1, 1.0)
    reg_ks: tuple[int, ...] = (10, 40)
    reg_select_seeds: tuple[int, ...] = (0,)
    onestep_etas: tuple[float, ...] = (10.0, 100.0, 1000.0)
    onestep_ridges: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    curve_ns: tuple[int, ...] = (250, 500, 1000, 2000, 4000)
    curve_rows: tuple[str, ...] = ("kernel", "full", "ntk+quadntk", "regularized")
    curve_seeds: tuple[int, ...] = (0,)
    curve_min_steps: int = 600
    curve_target: float = 0.8
    alphas: tuple[float, ...] = (0.3, 1.0, 10.0, 100.0)
    lazy_n: int = 4000
    lazy_probe: int = 100
    lazy_seeds: tuple[int, ...] = (0,)
    widths: tuple[int, ...] = (25, 100)
    width_n: int = 2000
    width_seeds: tuple[int, ...] = (0,)
    spectrum_n: int = 20000
    spectrum_k: int = 2000
    spectrum_ns: tuple[int, ...] = (250, 500, 1000, 2000, 4000)
    spectrum_seed: int = 0
    spectrum_iters: int = 6


PRESETS = {
    "cpu": Config(),
    "paper": Config(
        losses=("cross_entropy", "mse"),
        epochs=200,
        patience=40,
        reg_lambdas=(0.001, 0.01, 0.1, 1.0, 10.0),
        reg_ks=(10, 40, 160),
        reg_select_seeds=(0, 1, 2),
        curve_ns=(250, 500, 1000, 2000, 4000, 8000, 20000),
        curve_seeds=(0, 1, 2),
        curve_min_steps=2000,
        alphas=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
        lazy_seeds=(0, 1, 2),
        widths=(25, 100, 400),
        width_n=4000,
        width_seeds=(0, 1, 2),
    ),
}
"""cpu: ≈ 20 min on 2 cores (`Config`'s docstring says what it cuts); paper: the full sizes,
for a GPU."""


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Run the sections of `config.sections`; write mnist1d.json/.npz/.png.

    The JSON and NPZ are written after every unit of work (a variant, a seed, an n, a width):
    run again with the same settings and `out`, it computes only what they do not hold yet.

    Args:
        config: the settings (`PRESETS["cpu"]`, `PRESETS["paper"]`, or your own).
        out: the folder to write into (created if missing).
        progress: print a line per epoch chunk and per unit (True), stay silent (False), or
            call this with each training progress dict.

    Returns:
        The document written to `out/mnist1d.json`.

    Raises:
        ValueError: an unknown section, variant, loss, network or activation, or sizes that do
            not fit (`_check`).
        ModuleNotFoundError: without the `[mnist1d]` extra.
    """
    _check(config)
    out.mkdir(parents=True, exist_ok=True)
    results = _Results(config, out)
    for name in config.sections:
        t0 = time.perf_counter()
        _RUNNERS[name](config, results, progress)
        _say(progress, f"== mnist1d {name}: {time.perf_counter() - t0:.0f} s")
    results.write()
    from jaxntk import plots

    plots.mnist1d_chart(out / f"{NAME}.json", out / f"{NAME}.png")
    return results.doc


# ------------------------------------------------------------------------------- results


class _Results:
    """The document and the curves of a run, loaded from `out` and written after each unit."""

    def __init__(self, config: Config, out: Path):
        self.config, self.out = config, out
        self.doc, self.curves = _load(out)
        self.doc.setdefault("sections", {})

    def units(self, name: str, extra: dict | None = None) -> dict:
        """The finished units of a section, emptied when its settings changed."""
        want = _section_config(self.config, name, extra)
        section = self.doc["sections"].get(name)
        if section is None or section.get("config") != want:
            section = self.doc["sections"][name] = {"config": want, "units": {}}
        return section["units"]

    def save(self, name: str, key: str, value) -> None:
        self.doc["sections"][name]["units"][key] = value
        self.write()

    def write(self) -> None:
        cfg = self.config
        rows = _variant_rows(self.doc, cfg)
        self.doc.update(
            experiment=NAME,
            config=dataclasses.asdict(cfg),
            anchors={k: list(v) for k, v in ANCHORS.items()},
            results=rows,
            summary=summarize(rows),
        )
        self.doc["sections"] = {
            k: self.doc["sections"][k] for k in SECTIONS if k in self.doc["sections"]
        }
        _summarize_sections(self.doc)
        self.doc["table"] = table_rows(self.doc)
        write_results(self.out, NAME, self.doc, self.curves)


def _load(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    path, arrays = out / f"{NAME}.json", out / f"{NAME}.npz"
    if not (path.exists() and arrays.exists()):
        return {}, {}
    try:
        doc = json.loads(path.read_text())
        with np.load(arrays) as saved:
            curves = {k: saved[k] for k in saved.files}
    except (OSError, ValueError):
        return {}, {}
    return (doc, curves) if isinstance(doc.get("sections"), dict) else ({}, {})


def _section_config(config: Config, name: str, extra: dict | None = None) -> dict:
    fields = {f: getattr(config, f) for f in SECTION_FIELDS[name]}
    return json.loads(json.dumps({**fields, **(extra or {})}))


def _variant_rows(doc: dict, config: Config) -> list[dict]:
    units = doc["sections"].get("variants", {}).get("units", {})
    keys = [f"{v}/{loss}" for loss in config.losses for v in config.variants]
    keys += [k for k in units if k not in keys]
    return [row for k in keys if k in units for row in units[k]]


def _say(progress, line: str) -> None:
    if progress is True:
        print(line, flush=True)


def _check(config: Config) -> None:
    for name in config.sections:
        if name not in SECTIONS:
            raise ValueError(f"sections: {name!r} is not one of {list(SECTIONS)}")
    for v in config.variants:
        objectives.get_variant(v)
    for row in config.curve_rows:
        if row != "kernel":
            objectives.get_variant(row)
    for loss in config.losses:
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"losses: {loss!r} is not 'cross_entropy' or 'mse'")
    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {list(ACTIVATIONS)}, got {config.activation!r}"
        )
    for kind in config.kernel_networks:
        if kind not in ("cnn", "mlp"):
            raise ValueError(f"kernel_networks: {kind!r} is not 'cnn' or 'mlp'")
    if "spectrum" in config.sections and max(config.spectrum_ns) > config.spectrum_n:
        raise ValueError(
            f"spectrum_ns must be ≤ spectrum_n = {config.spectrum_n}, got {config.spectrum_ns}"
        )
    if "spectrum" in config.sections and not 1 <= config.spectrum_k <= config.spectrum_n:
        raise ValueError(f"spectrum_k must be in [1, spectrum_n], got {config.spectrum_k}")
    for name in ("seeds", "reg_select_seeds", "curve_seeds", "lazy_seeds", "width_seeds"):
        if not getattr(config, name):
            raise ValueError(f"{name} must name at least one seed, got {getattr(config, name)}")
    for name in ("curve_ns", "spectrum_ns", "widths"):
        values = getattr(config, name)
        if not values or not all(isinstance(v, int) and v >= 1 for v in values):
            raise ValueError(f"{name} must be a non-empty tuple of ints ≥ 1, got {values}")
    for name in ("ridges", "reg_lambdas", "onestep_etas", "onestep_ridges", "alphas"):
        values = getattr(config, name)
        if not values or not all(float(v) > 0 for v in values):
            raise ValueError(f"{name} must be a non-empty tuple of numbers > 0, got {values}")


# ----------------------------------------------------------------------------- variants


def _variants(config: Config, res: _Results, progress) -> None:
    units = res.units("variants")
    for loss in config.losses:
        todo = [v for v in config.variants if f"{v}/{loss}" not in units]
        if not todo:
            continue  # finished by an earlier, killed run of the same settings
        task = _task(config.n_train, config.n_test, loss)
        models = [_model(config, seed, task.x_train[:1]) for seed in config.seeds]
        for variant in todo:
            label = f"{variant} {loss}"
            t0, chunks = time.perf_counter(), []
            r = _train(config, models, task, variant, loss, _progress(progress, label, chunks))
            seconds = time.perf_counter() - t0
            rate = epoch_seconds(chunks, r.stopped_at_epoch)
            for name in ("train_loss", "test_loss", "val_loss", "test_accuracy"):
                if name in r.history:
                    res.curves[f"{variant}/{loss}/{name}"] = r.history[name][0]
            rows = _rows(r, models, task, config, variant, loss, seconds, rate)
            res.save("variants", f"{variant}/{loss}", rows)  # a kill loses one variant


def _task(n_train: int, n_test: int, loss: str):
    return data.mnist1d(n_train=n_train, n_test=n_test, one_hot=loss == "mse")


def _prefix(task, n: int):
    return data.task_from_arrays(task.x_train[:n], task.y_train[:n], task.x_test, task.y_test)


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per "variant/loss": test accuracy (mean, std over seeds), epochs, and the time per epoch
    relative to the full network's with the same loss.

    Args:
        rows: the rows of `run`'s document.

    Returns:
        "variant/loss" -> {"test_accuracy_mean", "test_accuracy_std", "best_epoch_mean", ...,
        "seconds_per_epoch", "time_per_epoch_vs_full"}.
    """
    keyed = [{**r, "key": f"{r['variant']}/{r['loss']}"} for r in rows]
    out = mean_std_by(keyed, "key", ("test_accuracy", "best_epoch", "epochs_run"))
    for key, entry in out.items():
        entry["seconds_per_epoch"] = next(r["seconds_per_epoch"] for r in keyed if r["key"] == key)
    for key, entry in out.items():
        full = out.get(f"full/{key.split('/', 1)[1]}")
        if full is not None and full["seconds_per_epoch"] and entry["seconds_per_epoch"]:
            entry["time_per_epoch_vs_full"] = entry["seconds_per_epoch"] / full["seconds_per_epoch"]
    return out


def _model(config: Config, seed: int, x: jax.Array) -> TaylorModel:
    return m.taylor_model(_cnn(config.channels, config.activation), seed, x)


def _cnn(channels: int, activation: str) -> CNN1D:
    """One module per setting, so that the seeds' models stack into one program."""
    return m.network("cnn", channels, activation)


def _settings(config: Config, loss: str, **override) -> dict:
    """The trainer's settings of `m.train_runs` from the config."""
    return {
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "lr": dict(config.lr)[loss],
        "validation": config.validation,
        "patience": config.patience,
        **override,
    }


def _train(config, models, task, variant, loss, progress) -> training.Run:
    reg = None
    if variant == "regularized":
        reg = objectives.Regularizer(bulk=config.lambda_bulk, k=config.k, outputs=config.outputs)
    return m.train_runs(
        models,
        [task] * len(models),
        variant,
        loss,
        config.seeds,
        _settings(config, loss),
        reg=reg,
        progress=progress,
        subspace_method=config.subspace_method,
    )


def accuracy_at(model, variant: str, u, x_test, labels) -> float:
    """The accuracy on (x_test, labels) of `variant`'s prediction at displacement u (argmax of
    the logits or of the one-hot outputs): the evaluation of the trained `Run.params`.

    Args:
        model: the `TaylorModel` of the CNN at θ0 (or a `jaxntk.Scaled` one).
        variant: a name in `jaxntk.objectives.VARIANTS`: how the model predicts.
        u: the displacement U, params-shaped (one setting's and seed's leaves of `Run.params`).
        x_test: (n, 40) test signals.
        labels: (n,) integer classes (or one-hot rows).

    Returns:
        The fraction of signals whose largest output is their class.
    """
    return m.accuracy(model, variant, u, x_test, labels)


def _rows(r, models, task, config, variant, loss, seconds, rate) -> list[dict]:
    epochs_run = int(r.history["epoch"][-1])
    rows = []
    for s, seed in enumerate(config.seeds):
        best = int(r.best_epoch[0, s])
        u = m.params_at(r, 0, s)
        rows.append(
            {
                "variant": variant,
                "loss": loss,
                "seed": seed,
                "test_accuracy": accuracy_at(models[s], variant, u, task.x_test, task.y_test),
                "val_score": float(r.history[m.monitored(loss)][0, s, best]),
                "best_epoch": best,
                "epochs_run": epochs_run,
                "seconds": seconds,
                "seconds_per_epoch": rate if np.isfinite(rate) else None,  # JSON: no NaN
                "diverged_at_step": int(r.diverged_at_step[0, s]),
            }
        )
    return rows


def epoch_seconds(chunks: list[tuple[int, float]], stopped_at: np.ndarray) -> float:
    """Seconds per epoch of a run, compilation left out: the slope of the elapsed time between
    the first and the last chunk that ended before any seed stopped early (a stopped seed's
    epochs are skipped, so later chunks are cheaper).

    Args:
        chunks: (epoch, elapsed seconds) at the end of each chunk, in order.
        stopped_at: (L, S) `Run.stopped_at_epoch` (−1 where a seed never stopped).

    Returns:
        The seconds per epoch; NaN with fewer than two such chunks.

    Example:
        >>> epoch_seconds([(5, 12.0), (10, 14.0), (15, 16.0), (20, 17.0)], np.array([[17, -1]]))
        0.4
    """
    stops = np.asarray(stopped_at)
    first_stop = int(stops[stops >= 0].min()) if np.any(stops >= 0) else np.inf
    usable = [(e, t) for e, t in chunks if e <= first_stop]
    if len(usable) < 2:
        return float("nan")
    (e0, t0), (e1, t1) = usable[0], usable[-1]
    return (t1 - t0) / (e1 - e0)


def _progress(progress, label, chunks: list):
    """The trainer's progress argument: records (epoch, elapsed) of every chunk in `chunks`
    and prints one line per chunk (True) or passes the dict on (a callable)."""

    def record(info: dict) -> None:
        chunks.append((info["epoch"], info["elapsed_s"]))
        if callable(progress):
            progress(info)
        elif progress:
            print(
                f"  [{label}] epoch {info['epoch']}/{info['epochs']}  test loss "
                f"{info['test_loss']:.4f}  ({info['elapsed_s']:.0f} s)",
                flush=True,
            )

    return record


def _seed_rows(r: training.Run, models, task, variant: str, loss: str, seeds, setting=0) -> list:
    """One row per seed of a run: test accuracy, validation score, best and last epoch."""
    rows = []
    for s, seed in enumerate(seeds):
        best = int(r.best_epoch[setting, s])
        u = m.params_at(r, setting, s)
        rows.append(
            {
                "seed": seed,
                "test_accuracy": m.accuracy(models[s], variant, u, task.x_test, task.y_test),
                "val_score": float(r.history[m.monitored(loss)][setting, s, best]),
                "best_epoch": best,
                "epochs_run": int(r.history["epoch"][-1]),
            }
        )
    return rows


# ------------------------------------------------------------------------------ sections


def _baselines(config: Config, res: _Results, progress) -> None:
    units = res.units("baselines")
    for loss in config.losses:
        for kind in ("logistic", "mlp"):
            key = f"{kind}/{loss}"
            if key in units:
                continue
            task = _task(config.n_train, config.n_test, loss)
            module = m.network(kind, config.channels, config.activation, config.mlp_hidden)
            models = [m.taylor_model(module, s, task.x_train) for s in config.seeds]
            t0 = time.perf_counter()
            r = m.train_runs(
                models,
                [task] * len(models),
                "full",
                loss,
                config.seeds,
                _settings(config, loss),
                progress=_progress(progress, key, []),
            )
            rows = _seed_rows(r, models, task, "full", loss, config.seeds)
            res.save("baselines", key, {"rows": rows, "seconds": time.perf_counter() - t0})


def _kernel(config: Config, res: _Results, progress) -> None:
    units = res.units("kernel")
    for kind in config.kernel_networks:
        module = m.network(kind, config.channels, config.activation, config.mlp_hidden)
        for seed in config.seeds:
            if f"{kind}/{seed}" in units:
                continue
            task = _task(config.n_train, config.n_test, "mse")
            fit = _kernel_fit(config, module, seed, task)
            _say(progress, f"  [kernel {kind} seed {seed}] {fit['test_accuracy']:.3f}")
            res.save("kernel", f"{kind}/{seed}", fit)


def _kernel_fit(config: Config, module, seed: int, task) -> dict:
    t0 = time.perf_counter()
    params = module.init(jax.random.PRNGKey(seed), task.x_train[:1])
    fit = m.kernel_regression(
        module.apply,
        params,
        task.x_train,
        task.y_train,
        task.x_test,
        task.y_test,
        ridges=config.ridges,
        validation=config.validation,
    )
    fit.pop("test_outputs")
    return {**fit, "seed": seed, "seconds": time.perf_counter() - t0}


def _regularized(config: Config, res: _Results, progress) -> None:
    units = res.units("regularized")
    select = config.reg_select_seeds
    for loss in config.losses:
        for k in config.reg_ks:
            key = f"select/{loss}/k={k}"
            if key in units:
                continue
            task = _task(config.n_train, config.n_test, loss)
            models = [_model(config, s, task.x_train) for s in select]
            reg = objectives.Regularizer(bulk=list(config.reg_lambdas), k=k, outputs=config.outputs)
            r = m.train_runs(
                models,
                [task] * len(models),
                "regularized",
                loss,
                select,
                _settings(config, loss),
                reg=reg,
                subspace_method=config.subspace_method,
                progress=_progress(progress, key, []),
            )
            grid = [
                _seed_rows(r, models, task, "regularized", loss, select, i)
                for i in range(len(config.reg_lambdas))
            ]
            res.save("regularized", key, {"by_lambda": grid})
        if f"final/{loss}" not in units:
            res.save(
                "regularized", f"final/{loss}", _regularized_final(config, units, loss, progress)
            )


def regularized_choice(config: Config, units: dict, loss: str) -> tuple[float, int, list]:
    """(λ_b, k) of the best mean validation score over `reg_select_seeds` (highest accuracy
    for the cross-entropy, lowest loss for the squared error), and the selection run's rows
    there.

    Args:
        config: the settings.
        units: the regularized section's units (every "select/loss/k=K" present).
        loss: the loss.

    Returns:
        (λ_b, k, the rows of the chosen setting, one per selection seed).
    """
    sign = -1.0 if loss == "cross_entropy" else 1.0
    best = None
    for k in config.reg_ks:
        for i, rows in enumerate(units[f"select/{loss}/k={k}"]["by_lambda"]):
            score = sign * float(np.mean([r["val_score"] for r in rows]))
            if best is None or score < best[0]:
                best = (score, float(config.reg_lambdas[i]), int(k), rows)
    return best[1], best[2], best[3]


def _regularized_final(config: Config, units: dict, loss: str, progress) -> dict:
    lam, k, chosen = regularized_choice(config, units, loss)
    rows = [r for r in chosen if r["seed"] in config.seeds]
    rest = [s for s in config.seeds if s not in config.reg_select_seeds]
    if rest:
        task = _task(config.n_train, config.n_test, loss)
        models = [_model(config, s, task.x_train) for s in rest]
        r = m.train_runs(
            models,
            [task] * len(models),
            "regularized",
            loss,
            rest,
            _settings(config, loss),
            reg=objectives.Regularizer(bulk=lam, k=k, outputs=config.outputs),
            subspace_method=config.subspace_method,
            progress=_progress(progress, f"regularized {loss} λ_b={lam:g} k={k}", []),
        )
        rows += _seed_rows(r, models, task, "regularized", loss, rest)
    return {"lambda_bulk": lam, "k": k, "rows": sorted(rows, key=lambda r: r["seed"])}


def _one_step(config: Config, res: _Results, progress) -> None:
    units = res.units("one_step")
    module = _cnn(config.channels, config.activation)
    for seed in config.seeds:
        if str(seed) in units:
            continue
        task = _task(config.n_train, config.n_test, "mse")
        params = module.init(jax.random.PRNGKey(seed), task.x_train[:1])
        t0 = time.perf_counter()
        fit = m.one_step_cnn(
            module,
            params,
            task.x_train,
            task.y_train,
            task.x_test,
            task.y_test,
            etas=config.onestep_etas,
            ridges=config.onestep_ridges,
            validation=config.validation,
        )
        _say(progress, f"  [one-step seed {seed}] η = {fit['eta']:g}, {fit['test_accuracy']:.3f}")
        res.save("one_step", str(seed), {**fit, "seed": seed, "seconds": time.perf_counter() - t0})


def _curve_settings(config: Config, n: int) -> dict:
    """Epochs (and patience) grown so that a run at n takes at least `curve_min_steps` steps."""
    held = min(n - 1, max(1, round(config.validation * n))) if config.validation else 0
    steps = max(1, (n - held) // min(config.batch_size, n - held))
    factor = max(1, -(-config.curve_min_steps // (steps * config.epochs)))
    patience = None if config.patience is None else config.patience * factor
    return _settings(config, "mse", epochs=config.epochs * factor, patience=patience)


def _regularization(config: Config, res: _Results) -> tuple[float, int]:
    """The curves' (λ_b, k): the regularized section's choice with the squared error, or the
    config's fixed pair."""
    units = res.doc["sections"].get("regularized", {}).get("units", {})
    final = units.get("final/mse")
    if "regularized" in config.sections and final is not None:
        return float(final["lambda_bulk"]), int(final["k"])
    return float(config.lambda_bulk), int(config.k)


def _curves(config: Config, res: _Results, progress) -> None:
    lam, k = _regularization(config, res)
    units = res.units("curves", {"regularized": [lam, k]})
    big = None
    for n in config.curve_ns:
        for row in config.curve_rows:
            key = f"{row}/{n}"
            if key in units:
                continue
            big = big or _task(max(config.curve_ns), config.n_test, "mse")
            task, t0 = _prefix(big, n), time.perf_counter()
            if row == "kernel":
                module = _cnn(config.channels, config.activation)
                accs = [
                    _kernel_fit(config, module, s, task)["test_accuracy"]
                    for s in config.curve_seeds
                ]
            else:
                models = [_model(config, s, task.x_train) for s in config.curve_seeds]
                reg = objectives.Regularizer(bulk=lam, k=k, outputs=config.outputs)
                r = m.train_runs(
                    models,
                    [task] * len(models),
                    row,
                    "mse",
                    config.curve_seeds,
                    _curve_settings(config, n),
                    reg=reg if row == "regularized" else None,
                    subspace_method=config.subspace_method,
                    progress=_progress(progress, f"curve {key}", []),
                )
                rows = _seed_rows(r, models, task, row, "mse", config.curve_seeds)
                accs = [r["test_accuracy"] for r in rows]
            _say(progress, f"  [curve {key}] accuracy {np.mean(accs):.3f}")
            res.save("curves", key, {"test_accuracy": accs, "seconds": time.perf_counter() - t0})


def _lazy(config: Config, res: _Results, progress) -> None:
    units = res.units("lazy")
    task = None
    for seed in config.lazy_seeds:
        for alpha in config.alphas:
            key = f"{seed}/{float(alpha):g}"
            if key in units:
                continue
            task = task or _task(config.lazy_n, config.n_test, "mse")
            model = Scaled(_model(config, seed, task.x_train), float(alpha))
            lr = dict(config.lr)["mse"] / float(alpha)  # Adam: α-free limit (module docstring)
            t0 = time.perf_counter()
            r = m.train_runs(
                [model],
                [task],
                "full",
                "mse",
                [seed],
                _settings(config, "mse", lr=lr),
                progress=_progress(progress, f"α = {float(alpha):g}", []),
            )
            u = m.params_at(r, 0, 0)
            p = config.lazy_probe
            found = m.laziness(model, u, task.x_train[:p], task.y_train[:p], task.x_test)
            acc = m.accuracy(model, "full", u, task.x_test, task.y_test)
            row = {"alpha": float(alpha), "seed": seed, "test_accuracy": acc, **found}
            row.update(best_epoch=int(r.best_epoch[0, 0]), seconds=time.perf_counter() - t0)
            _say(progress, f"  [α = {float(alpha):g}] accuracy {acc:.3f}")
            res.save("lazy", key, row)


def _width(config: Config, res: _Results, progress) -> None:
    units = res.units("width")
    task = None
    for width in config.widths:
        module = m.network("cnn", width, config.activation)
        for seed in config.width_seeds:
            key = f"{width}/{seed}"
            if key in units:
                continue
            task = task or _task(config.width_n, config.n_test, "mse")
            model = m.taylor_model(module, seed, task.x_train)
            t0 = time.perf_counter()
            r = m.train_runs(
                [model],
                [task],
                "full",
                "mse",
                [seed],
                _settings(config, "mse"),
                progress=_progress(progress, f"width {width}", []),
            )
            network = m.accuracy(model, "full", m.params_at(r, 0, 0), task.x_test, task.y_test)
            fit = _kernel_fit(config, module, seed, task)
            size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(model.params0))
            row = {"width": width, "seed": seed, "parameters": int(size), "network": network}
            row.update(kernel=fit["test_accuracy"], ridge_relative=fit["ridge_relative"])
            row["seconds"] = time.perf_counter() - t0
            _say(
                progress, f"  [width {width}] network {network:.3f}, NTK {fit['test_accuracy']:.3f}"
            )
            res.save("width", key, row)


def _spectrum(config: Config, res: _Results, progress) -> None:
    units = res.units("spectrum")
    if "result" in units:
        return
    t0 = time.perf_counter()
    big = _task(config.spectrum_n, config.n_test, "mse")
    module = _cnn(config.channels, config.activation)
    params = module.init(jax.random.PRNGKey(config.spectrum_seed), big.x_train[:1])
    settings = {
        "k": config.spectrum_k,
        "ns": config.spectrum_ns,
        "ridges": config.ridges,
        "validation": config.validation,
        "max_iters": config.spectrum_iters,
    }
    found = m.spectrum_prediction(
        module.apply, params, big.x_train, big.y_train, big.x_test, big.y_test, settings
    )
    found["seconds"] = time.perf_counter() - t0
    res.save("spectrum", "result", found)


_RUNNERS = {
    "variants": _variants,
    "baselines": _baselines,
    "kernel": _kernel,
    "regularized": _regularized,
    "one_step": _one_step,
    "curves": _curves,
    "lazy": _lazy,
    "width": _width,
    "spectrum": _spectrum,
}


# ------------------------------------------------------------------------------ summaries


def _summarize_sections(doc: dict) -> None:
    """Each section's "summary" from its units (the figure and the table read these)."""
    sections = doc["sections"]
    if "curves" in sections:
        sections["curves"]["summary"] = curve_summary(
            sections["curves"], doc["config"]["curve_target"]
        )
    for name, key in (("lazy", "alpha"), ("width", "width")):
        if name in sections:
            rows = list(sections[name]["units"].values())
            fields = [f for f in (rows[0] if rows else {}) if f not in (key, "seed", "seconds")]
            sections[name]["summary"] = {
                f"{k:g}": v for k, v in mean_std_by(rows, key, fields).items()
            }


def curve_summary(section: dict, target: float) -> dict:
    """Per row of the learning curves: n, the mean test error over seeds (and its std), the
    slope and intercept of log10 error on log10 n (`_mnist1d.fit_slope`) and the n at which
    the mean accuracy reaches `target` (`_mnist1d.n_at_accuracy`).

    Args:
        section: the curves section of the document (its config and units).
        target: the accuracy whose n is reported.

    Returns:
        row -> {"n", "error_mean", "error_std", "slope", "intercept", "n_at_target"}.
    """
    out = {}
    for row in section["config"]["curve_rows"]:
        ns = [n for n in section["config"]["curve_ns"] if f"{row}/{n}" in section["units"]]
        accs = [np.asarray(section["units"][f"{row}/{n}"]["test_accuracy"]) for n in ns]
        err = [float(1 - a.mean()) for a in accs]
        slope, intercept = m.fit_slope(ns, err)
        out[row] = {
            "n": ns,
            "error_mean": err,
            "error_std": [float(a.std()) for a in accs],
            "slope": None if np.isnan(slope) else slope,
            "intercept": None if np.isnan(intercept) else intercept,
            "n_at_target": m.n_at_accuracy(ns, [1 - e for e in err], target) if ns else None,
        }
    return out


def _stat(label: str, loss: str, accs: list[float], anchor: str | None = None) -> dict:
    return {
        "row": label,
        "loss": loss,
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "seeds": len(accs),
        "anchor": list(ANCHORS[anchor]) if anchor else None,
    }


def table_rows(doc: dict) -> list[dict]:
    """The experiment's table: one row per method and loss, test accuracy mean ± std over its
    seeds, with the published anchor where one exists.

    Args:
        doc: the document of `run`.

    Returns:
        [{"row", "loss", "mean", "std", "seeds", "anchor" ([mean, std] in % or None)}].
    """
    units = {k: v.get("units", {}) for k, v in doc.get("sections", {}).items()}
    out = []
    for key, (label, anchor) in {
        "logistic": ("logistic regression", "logistic regression"),
        "mlp": ("MLP, full", "MLP"),
    }.items():
        for unit, got in units.get("baselines", {}).items():
            if unit.split("/")[0] == key:
                accs = [r["test_accuracy"] for r in got["rows"]]
                out.append(_stat(label, unit.split("/")[1], accs, anchor))
    for key in doc.get("summary", {}):
        variant, loss = key.split("/")
        label = "CNN, full" if variant == "full" else f"CNN, {variant}"
        accs = [r["test_accuracy"] for r in doc["results"] if f"{r['variant']}/{r['loss']}" == key]
        out.append(_stat(label, loss, accs, "CNN" if variant == "full" else None))
    for kind in ("cnn", "mlp"):
        accs = [
            v["test_accuracy"]
            for k, v in units.get("kernel", {}).items()
            if k.startswith(kind + "/")
        ]
        if accs:
            out.append(_stat(f"kernel regression, {kind.upper()} NTK", "mse", accs))
    for unit, got in units.get("regularized", {}).items():
        if unit.startswith("final/"):
            label = f"CNN, regularized (λ_b = {got['lambda_bulk']:g}, k = {got['k']} on validation)"
            out.append(_stat(label, unit.split("/")[1], [r["test_accuracy"] for r in got["rows"]]))
    if units.get("one_step"):
        accs = [v["test_accuracy"] for v in units["one_step"].values()]
        out.append(_stat("CNN, one step + ridge readout", "mse", accs))
    return out


def table(doc: dict) -> str:
    """The plain-text tables that `jaxntk reproduce` prints: the rows' test accuracy with the
    anchors, the learning curves' slopes and n at the target, the α axis, the widths and the
    spectrum's prediction against the measurement.

    Args:
        doc: the document of `run` (as saved in mnist1d.json).

    Returns:
        The tables, one string.
    """
    lines = ["\nMNIST-1D: test accuracy (%, mean ± std over seeds)"]
    for r in doc.get("table", []):
        anchor = "" if r["anchor"] is None else f"   published {r['anchor'][0]}"
        lines.append(
            f"{r['row']:<58} {r['loss']:<13} {100 * r['mean']:5.1f} ± {100 * r['std']:4.1f}"
            f" ({r['seeds']}){anchor}"
        )
    lines += _section_tables(doc.get("sections", {}), doc["config"])
    return "\n".join(lines)


def _section_tables(sections: dict, cfg: dict) -> list[str]:
    lines = []
    for row, s in sections.get("curves", {}).get("summary", {}).items():
        slope = "—" if s["slope"] is None else f"{s['slope']:.2f}"
        n_at = "not reached" if s["n_at_target"] is None else f"{s['n_at_target']:.0f}"
        errs = ", ".join(
            f"{n}: {100 * e:.1f}" for n, e in zip(s["n"], s["error_mean"], strict=True)
        )
        target = f"{100 * cfg['curve_target']:.0f} %"
        lines.append(f"curve {row:<12} slope {slope}, n at {target}: {n_at} ({errs})")
    for alpha, s in sections.get("lazy", {}).get("summary", {}).items():
        lines.append(
            f"α = {alpha:<6} accuracy {100 * s['test_accuracy_mean']:.1f} %, kernel change "
            f"{s['kernel_change_mean']:.3g}, alignment {s['alignment_mean']:.3f}, D_1 "
            f"{s['distance_linear_mean']:.3g}, D_2 {s['distance_quadratic_mean']:.3g}"
        )
    for width, s in sections.get("width", {}).get("summary", {}).items():
        lines.append(
            f"width {width:<5} network {100 * s['network_mean']:.1f} %, "
            f"NTK {100 * s['kernel_mean']:.1f} %"
        )
    for r in sections.get("spectrum", {}).get("units", {}).get("result", {}).get("rows", []):
        lines.append(
            f"spectrum n = {r['n']:<6} measured MSE {r['measured_mse']:.4f}, predicted "
            f"{r['predicted_top_k']:.4f} (top k, {r['relative_error_top_k']:.0%}), "
            f"{r['predicted_flat_tail']:.4f} (flat tail, {r['relative_error_flat_tail']:.0%})"
        )
    return lines
