"""Experiment `mnist1d`: the paper's variants on MNIST-1D, a 10-class benchmark at its full size.

MNIST-1D (Greydanus, *Scaling down deep learning*, 2020): 4000 training and 1000 test signals
of length 40, 10 classes, generated offline (`jaxntk.data.mnist1d`, the `[mnist1d]` extra).
Published test accuracies: logistic regression 32 ± 1 %, MLP 68 ± 2 %, CNN 94 ± 2 %, GRU
91 ± 2 %, human 96 ± 1 %.

The network is a 1D CNN of about 5.2k parameters in the published CNN's shape (three
convolutions of 25 channels, kernel 5 then 3, stride 2, then a dense readout), with GELU, a
smooth activation, so that its quadratic Taylor term is not zero almost everywhere as ReLU's
second derivative makes it. Each seed draws its own network (the data are the published split,
the same for every seed); every variant trains on minibatches with Adam, a fresh permutation
per epoch, and stops early on a validation split of the training set (its accuracy for the
cross-entropy, its loss for the squared error): the reported test accuracy is that of the
parameters of the best validation epoch (the argmax of the outputs). Each variant trains with
the cross-entropy on the class labels and with the squared error on one-hot targets.

Writes `mnist1d.json` (config, one row per variant, loss and seed, the summary with the time per
epoch relative to the full network's), `mnist1d.npz` (the curves) and `mnist1d.png`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import data, minibatch, objectives, training
from jaxntk.experiments._common import mean_std_by, write_results
from jaxntk.taylor import TaylorModel

NAME = "mnist1d"

ANCHORS = {
    "logistic regression": (32, 1),
    "MLP": (68, 2),
    "CNN": (94, 2),
    "GRU": (91, 2),
    "human": (96, 1),
}
"""MNIST-1D's published test accuracies in %, (mean, std) (Greydanus 2020)."""

ACTIVATIONS: dict[str, Callable] = {"gelu": nn.gelu, "relu": nn.relu, "tanh": jnp.tanh}


class CNN1D(nn.Module):
    """The published MNIST-1D CNN's shape: signals (n, 40) or (n, 40, 1) ↦ logits (n, classes).

    Three convolutions (kernel 5, then 3 and 3; stride 2; padding 1) of `channels` channels,
    each followed by the activation, then a dense readout of the flattened features: 5210
    parameters at 25 channels and 10 classes.

    Attributes:
        channels: the channels of each convolution.
        classes: the outputs (logits) per signal.
        activation: a name in `ACTIVATIONS`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cnn = CNN1D()
        >>> params = cnn.init(jax.random.PRNGKey(0), jnp.zeros((1, 40)))
        >>> sum(leaf.size for leaf in jax.tree.leaves(params))
        5210
        >>> cnn.apply(params, jnp.zeros((3, 40))).shape
        (3, 10)
    """

    channels: int = 25
    classes: int = 10
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        h = x.reshape(x.shape[0], -1, 1)
        for kernel in (5, 3, 3):
            h = act(nn.Conv(self.channels, (kernel,), strides=2, padding=1)(h))
        return nn.Dense(self.classes)(h.reshape(h.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the MNIST-1D experiment (defaults: the `cpu` preset).

    Attributes:
        n_train: training signals (the published 4000; more draws a new set).
        n_test: test signals.
        channels: the CNN's channels.
        activation: the CNN's activation, a name in `ACTIVATIONS`.
        variants: names in `jaxntk.objectives.VARIANTS`.
        losses: "cross_entropy" (class labels) and/or "mse" (one-hot targets).
        seeds: one network per seed.
        batch_size: rows per Adam step.
        epochs: the most epochs a run trains.
        lr: Adam's learning rate, by loss.
        validation: the fraction of the training signals held out for early stopping.
        patience: epochs without a better validation score before a run stops.
        lambda_bulk: λ_b of the regularized variant.
        k: its number of top directions, per output of the traced kernel.
        outputs: the good directions' kernel ("traced" or "full").
        subspace_method: how they are found (`jaxntk.spectral.METHODS`): "matrix_free", the
            NTK operator on the CNN's Jacobian features, for n·c = 36 000 output entries.
    """

    n_train: int = 4000
    n_test: int = 1000
    channels: int = 25
    activation: str = "gelu"
    variants: tuple[str, ...] = ("full", "ntk", "quadntk", "ntk+quadntk", "regularized")
    losses: tuple[str, ...] = ("cross_entropy", "mse")
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 100
    epochs: int = 60
    lr: tuple[tuple[str, float], ...] = (("cross_entropy", 0.01), ("mse", 0.01))
    validation: float = 0.1
    patience: int = 15
    lambda_bulk: float = 1.0
    k: int = 40
    outputs: str = "traced"
    subspace_method: str = "matrix_free"


PRESETS = {
    "cpu": Config(),
    "paper": Config(epochs=200, patience=40, seeds=(0, 1, 2, 3, 4)),
}
"""cpu: the published split, 3 seeds, at most 60 epochs; paper: 5 seeds, at most 200 epochs."""


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Train every variant with every loss for every seed; write mnist1d.json/.npz/.png.

    The JSON and NPZ are written after every variant; run again with the same settings and
    `out`, it trains only what they do not hold yet.

    Args:
        config: the settings (`PRESETS["cpu"]`, `PRESETS["paper"]`, or your own).
        out: the folder to write into (created if missing).
        progress: print a line per epoch chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/mnist1d.json`.

    Raises:
        ValueError: an unknown variant, loss or activation.
        ModuleNotFoundError: without the `[mnist1d]` extra.
    """
    _check(config)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = _finished(config, out)
    for loss in config.losses:
        if all((v, loss) in {(r["variant"], r["loss"]) for r in rows} for v in config.variants):
            continue
        task = data.mnist1d(n_train=config.n_train, n_test=config.n_test, one_hot=loss == "mse")
        models = [_model(config, seed, task.x_train[:1]) for seed in config.seeds]
        for variant in config.variants:
            if any((r["variant"], r["loss"]) == (variant, loss) for r in rows):
                continue  # finished by an earlier, killed run of the same settings
            label = f"{variant} {loss}"
            t0, chunks = time.perf_counter(), []
            r = _train(config, models, task, variant, loss, _progress(progress, label, chunks))
            seconds = time.perf_counter() - t0
            rate = epoch_seconds(chunks, r.stopped_at_epoch)
            rows += _rows(r, models, task, config, variant, loss, seconds, rate)
            for name in ("train_loss", "test_loss", "val_loss", "test_accuracy"):
                if name in r.history:
                    curves[f"{variant}/{loss}/{name}"] = r.history[name][0]
            doc = _document(config, rows)
            write_results(out, NAME, doc, curves)  # after every variant: a kill loses one
    doc = _document(config, rows)
    write_results(out, NAME, doc, curves)
    from jaxntk import plots

    plots.mnist1d_chart(out / f"{NAME}.json", out / f"{NAME}.png")
    return doc


def _document(config: Config, rows: list[dict]) -> dict:
    return {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "anchors": {k: list(v) for k, v in ANCHORS.items()},
        "results": rows,
        "summary": summarize(rows),
    }


def _finished(config: Config, out: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The rows and curves an earlier run of the same settings wrote to `out`, or none."""
    path, arrays = out / f"{NAME}.json", out / f"{NAME}.npz"
    if not (path.exists() and arrays.exists()):
        return [], {}
    try:
        doc = json.loads(path.read_text())
        with np.load(arrays) as saved:
            curves = {k: saved[k] for k in saved.files}
    except (OSError, ValueError):
        return [], {}
    if doc.get("config") != json.loads(json.dumps(dataclasses.asdict(config))):
        return [], {}
    return doc["results"], curves


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


def _check(config: Config) -> None:
    for v in config.variants:
        objectives.get_variant(v)
    for loss in config.losses:
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"losses: {loss!r} is not 'cross_entropy' or 'mse'")
    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {list(ACTIVATIONS)}, got {config.activation!r}"
        )


def _model(config: Config, seed: int, x: jax.Array) -> TaylorModel:
    cnn = _cnn(config.channels, config.activation)
    return TaylorModel(cnn.apply, cnn.init(jax.random.PRNGKey(seed), x))


_CNNS: dict[tuple[int, str], CNN1D] = {}


def _cnn(channels: int, activation: str) -> CNN1D:
    """One module per setting, so that the seeds' models stack into one program."""
    return _CNNS.setdefault((channels, activation), CNN1D(channels, 10, activation))


def _train(config, models, task, variant, loss, progress) -> training.Run:
    mb = minibatch.Minibatch(
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation=config.validation,
        patience=config.patience,
        monitor="accuracy" if loss == "cross_entropy" else "loss",
    )
    reg = None
    if variant == "regularized":
        reg = objectives.Regularizer(bulk=config.lambda_bulk, k=config.k, outputs=config.outputs)
    return training.train(
        models,
        [task] * len(models),
        variant,
        optimizer="adam",
        lr=dict(config.lr)[loss],
        reg=reg,
        seeds=list(config.seeds),
        loss=loss,
        minibatch=mb,
        progress=progress,
        evals_per_chunk=5,
        subspace_method=config.subspace_method,
    )


def accuracy_at(model, variant: str, u, x_test, labels) -> float:
    """The accuracy on (x_test, labels) of `variant`'s prediction at displacement u (argmax of
    the logits or of the one-hot outputs): the evaluation of the trained `Run.params`.

    Args:
        model: the `TaylorModel` of the CNN at θ0.
        variant: a name in `jaxntk.objectives.VARIANTS`: how the model predicts.
        u: the displacement U, params-shaped (one setting's and seed's leaves of `Run.params`).
        x_test: (n, 40) test signals.
        labels: (n,) integer classes.

    Returns:
        The fraction of signals whose largest output is their class.
    """
    logits = _predict(model, variant, u, x_test)
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


@functools.partial(jax.jit, static_argnums=1)
def _predict(model, variant, u, x):
    return objectives.get_variant(variant).predict(model, u, model.prepare(x))


def _rows(r, models, task, config, variant, loss, seconds, rate) -> list[dict]:
    epochs_run = int(r.history["epoch"][-1])
    labels = task.y_test if loss == "cross_entropy" else np.argmax(task.y_test, axis=-1)
    rows = []
    for s, seed in enumerate(config.seeds):
        best = int(r.best_epoch[0, s])
        u = jax.tree_util.tree_map(lambda leaf, s=s: leaf[0, s], r.params)
        rows.append(
            {
                "variant": variant,
                "loss": loss,
                "seed": seed,
                "test_accuracy": accuracy_at(models[s], variant, u, task.x_test, labels),
                "val_score": float(r.history[_monitored(loss)][0, s, best]),
                "best_epoch": best,
                "epochs_run": epochs_run,
                "seconds": seconds,
                "seconds_per_epoch": rate if np.isfinite(rate) else None,  # JSON: no NaN
                "diverged_at_step": int(r.diverged_at_step[0, s]),
            }
        )
    return rows


def _monitored(loss: str) -> str:
    return "val_accuracy" if loss == "cross_entropy" else "val_loss"


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
