"""Experiment `taylorized`: how far a real network is from its Taylor models, order by order and
width by width, on real data (Lee et al. 2019; Bai, Krause, Wang, Xiong & Socher 2020).

Data: scikit-learn's handwritten digits (`jaxntk.data.load_digits`: 8 × 8 images, 10 classes),
standardized with the training set's statistics, a fixed stratified split. Models (flax linen,
tanh): an MLP with two hidden layers of `width` units and a CNN with two 3 × 3 convolutions of
`width` channels (the second of stride 2) and a dense readout, 10 outputs, each in NTK or in
standard parameterization (`Dense`, `Conv`): from the same key both give the same f_0.

From that initialization θ0 the full network f(θ; x) and its Taylor models of order k,
f_k(θ; x) = Σ_{j ≤ k} f_j(θ − θ0; x) (`jaxntk.TaylorModel`, variants "ntk", "ntk+quadntk",
"taylor-3"), train by the same full-batch optax SGD, on the mean squared error to one-hot targets
and on the softmax cross-entropy. Recorded every `eval_every` steps: test accuracy and loss, the
parameter movement ‖θ − θ0‖ / ‖θ0‖, and the function-space distance to the full network on the
test inputs,

    D_k(t) = ‖f_k(θ_k(t); X_test) − f(θ(t); X_test)‖ / ‖f(θ(t); X_test) − f(θ0; X_test)‖

(Frobenius norms over the n_test × 10 outputs), with θ_k(t) and θ(t) each model's own
parameters after t steps. Lee et al. predict D_1 → 0 as the width grows (NTK parameterization, or
standard parameterization with a learning rate ∝ 1/width: here the rate is divided by the readout
layer's fan-in, which gives that layer the same function-space speed in both parameterizations);
Bai et al. that D_3 < D_2 < D_1 at a fixed width. For the MSE runs the order-1 curve is checked
against `jaxntk.ntk_predict`, the closed form of the same dynamics, at the same steps.

Writes `taylorized.json` (config, one row per run with its curves, the checks), `taylorized.npz`
(the curves as arrays) and the figures `taylorized-distance.png` and `taylorized-accuracy.png`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import data as task_data
from jaxntk import predict, training
from jaxntk.experiments._common import labelled_progress, write_results
from jaxntk.objectives import (
    Data,
    Regularizer,
    VariantObjective,
    _train_order,
    check_targets,
    get_variant,
)
from jaxntk.taylor import TaylorModel

NAME = "taylorized"
MODELS = ("mlp", "cnn")
PARAMETERIZATIONS = ("ntk", "standard")
LOSSES = ("mse", "cross_entropy")
SIGMA_W = 1.0
SIGMA_B = 0.1
CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the taylorized experiment (defaults: the `cpu` preset).

    Attributes:
        models: names in `MODELS`.
        parameterizations: names in `PARAMETERIZATIONS`.
        losses: names in `LOSSES`.
        widths: hidden units of the MLP, one run each.
        channels: channels of the CNN, one run each.
        orders: the Taylor orders k trained beside the full network.
        n_train: training images (stratified, `jaxntk.data.load_digits`).
        n_test: test images.
        steps: full-batch SGD steps T.
        lr: learning rate in NTK parameterization; in standard parameterization lr / fan-in of
            the readout layer.
        eval_every: steps between evaluations.
        seeds: one network initialization per seed.
        split_seed: the seed of the train/test split (the same data for every model).
        check_ntk_predict: at how many of the smallest widths (of each model and
            parameterization) the order-1 MSE curve is compared with `jaxntk.ntk_predict`, whose
            kernel of the 10 n training outputs costs O((10 n)² · parameters).
        check_models: the models whose order-1 curves are checked that way.
        dtype: "float32" or "float64" (the latter needs `jax.enable_x64`).
    """

    models: tuple[str, ...] = MODELS
    parameterizations: tuple[str, ...] = PARAMETERIZATIONS
    losses: tuple[str, ...] = LOSSES
    widths: tuple[int, ...] = (16, 64, 256)
    channels: tuple[int, ...] = (4, 8, 16)
    orders: tuple[int, ...] = (1, 2, 3)
    n_train: int = 300
    n_test: int = 360
    steps: int = 200
    lr: float = 4.0
    eval_every: int = 20
    seeds: tuple[int, ...] = (0,)
    split_seed: int = 0
    check_ntk_predict: int = 1
    check_models: tuple[str, ...] = MODELS
    dtype: str = "float32"


PRESETS = {
    # the CNN's closed-form check (its kernel of the 3000 training outputs, `jaxntk.ntk`) costs
    # 19-34 s a width on 2 cores (50 s to over 9 min before the kernel engine); the cpu preset
    # checks the MLP, the paper preset both models at every width
    "cpu": Config(check_models=("mlp",)),
    "paper": Config(
        widths=(64, 256, 1024),
        channels=(16, 64, 256),
        n_train=1437,
        steps=2000,
        eval_every=100,
        seeds=(0, 1, 2),
        check_ntk_predict=3,
    ),
}
"""cpu: 300 of the 1437 training images, widths 16/64/256 (MLP) and 4/8/16 channels (CNN), 200
steps, one seed, the closed-form check at the MLP's smallest width (minutes on 2 cores); paper:
every training image, widths 64/256/1024 and 16/64/256 channels, 2000 steps, 3 seeds, the check
at every width, for a GPU."""


class Dense(nn.Module):
    """x ↦ x W + b in NTK parameterization (W, b ~ N(0, 1), x W σ_w/√fan_in + σ_b b) or in standard
    parameterization (W ~ N(0, σ_w²/fan_in), b ~ N(0, σ_b²)): the same function at initialization
    from the same key.

    Attributes:
        features: outputs.
        parameterization: "ntk" or "standard".
        dtype: the parameters' dtype.
    """

    features: int
    parameterization: str = "ntk"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        w, w_scale, b, b_scale = _layer_parameters(
            self, (fan_in, self.features), fan_in, self.parameterization
        )
        y = x @ (w_scale * w)
        return y + b_scale * b.reshape((1,) * (y.ndim - 1) + b.shape)


class Conv(nn.Module):
    """A 3 × 3 convolution (NHWC, "SAME" padding) with Dense's two parameterizations, fan-in
    9 · channels in.

    Attributes:
        features: output channels.
        stride: the stride along both spatial axes.
        parameterization: "ntk" or "standard".
        dtype: the parameters' dtype.
    """

    features: int
    stride: int = 1
    parameterization: str = "ntk"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = 9 * x.shape[-1]
        w, w_scale, b, b_scale = _layer_parameters(
            self, (3, 3, x.shape[-1], self.features), fan_in, self.parameterization
        )
        y = jax.lax.conv_general_dilated(
            x,
            w_scale * w,
            window_strides=(self.stride, self.stride),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + b_scale * b.reshape((1,) * (y.ndim - 1) + b.shape)


class MLP(nn.Module):
    """x (n, 64) ↦ 10 outputs through two tanh hidden layers of `width` units.

    Attributes:
        width: hidden units per layer.
        parameterization: "ntk" or "standard".
        dtype: the parameters' dtype.
    """

    width: int
    parameterization: str = "ntk"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        layer = dict(parameterization=self.parameterization, dtype=self.dtype)
        h = jnp.tanh(Dense(self.width, **layer)(x))
        h = jnp.tanh(Dense(self.width, **layer)(h))
        return Dense(CLASSES, **layer)(h)


class CNN(nn.Module):
    """x (n, 64), read as 8 × 8 images, ↦ 10 outputs: two tanh 3 × 3 convolutions of `width`
    channels (the second of stride 2, to 4 × 4) and a dense readout.

    Attributes:
        width: channels per convolution.
        parameterization: "ntk" or "standard".
        dtype: the parameters' dtype.
    """

    width: int
    parameterization: str = "ntk"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        layer = dict(parameterization=self.parameterization, dtype=self.dtype)
        h = x.reshape(*x.shape[:-1], 8, 8, 1)
        h = jnp.tanh(Conv(self.width, stride=1, **layer)(h))
        h = jnp.tanh(Conv(self.width, stride=2, **layer)(h))
        return Dense(CLASSES, **layer)(h.reshape(*h.shape[:-3], -1))


def make_model(name: str, width: int, parameterization: str, dtype: Any = jnp.float32) -> nn.Module:
    """The flax module of a model name in `MODELS`.

    Args:
        name: "mlp" or "cnn".
        width: hidden units (MLP) or channels (CNN).
        parameterization: a name in `PARAMETERIZATIONS`.
        dtype: the parameters' dtype.

    Returns:
        An `MLP` or a `CNN`.

    Raises:
        ValueError: for an unknown name or parameterization.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
        )
    classes = {"mlp": MLP, "cnn": CNN}
    if name not in classes:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return classes[name](width, parameterization, dtype)


def readout_fan_in(name: str, width: int) -> int:
    """The fan-in of a model's dense readout layer: width (MLP) or 16 · width (CNN, 4 × 4 × width).

    Args:
        name: "mlp" or "cnn".
        width: hidden units or channels.

    Returns:
        The readout layer's number of inputs.
    """
    return width if name == "mlp" else 16 * width


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Train every model, parameterization, width and loss in full and at every Taylor order;
    write JSON, NPZ and the two figures into `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write taylorized.json, .npz and the figures into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/taylorized.json`: config, one row per run (its curves over
        the evaluation steps), a summary per model, parameterization, loss and width, and the
        `ntk_predict` check.

    Raises:
        ValueError: for an unknown model, parameterization, loss or order below 1.
        ModuleNotFoundError: without scikit-learn (`jaxntk.data.DIGITS_INSTALL`).
    """
    _check_config(config)
    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.dtype(config.dtype)
    tasks = {
        loss: task_data.load_digits(
            n_train=config.n_train,
            n_test=config.n_test,
            seed=config.split_seed,
            one_hot=loss == "mse",
            dtype=dtype,
        )
        for loss in config.losses
    }
    rows, checks = [], []
    for name in config.models:
        widths = config.widths if name == "mlp" else config.channels
        for parameterization in config.parameterizations:
            for width in widths:
                module = make_model(name, width, parameterization, dtype)
                lr = config.lr / (1 if parameterization == "ntk" else readout_fan_in(name, width))
                for seed in config.seeds:
                    x0 = next(iter(tasks.values())).x_train[:1]
                    params0 = module.init(jax.random.PRNGKey(seed), x0)
                    model = TaylorModel(module.apply, params0)
                    theta0 = math.sqrt(
                        sum(float(jnp.sum(p**2)) for p in jax.tree_util.tree_leaves(params0))
                    )
                    for loss, task in tasks.items():
                        label = f"{name} {parameterization} width {width} seed {seed} {loss}"
                        t0 = time.perf_counter()
                        r = train_taylorized(
                            model,
                            task,
                            config.orders,
                            loss=loss,
                            steps=config.steps,
                            lr=lr,
                            eval_every=config.eval_every,
                            progress=labelled_progress(progress, label),
                        )
                        seconds = time.perf_counter() - t0
                        steps = r.history["step"]
                        # (models, evaluations, n_test, classes)
                        outputs = np.moveaxis(r.history["test_output"][0, 0], 1, 0).reshape(
                            -1, len(steps), config.n_test, CLASSES
                        )
                        setting = {
                            "model": name,
                            "parameterization": parameterization,
                            "width": width,
                            "seed": seed,
                            "loss": loss,
                            "lr": lr,
                            "seconds": seconds,
                        }
                        for i, order in enumerate((0, *config.orders)):
                            rows.append(_row(setting, order, i, r, outputs, theta0, task))
                        checked = (
                            name in config.check_models
                            and width in sorted(widths)[: config.check_ntk_predict]
                        )
                        if loss == "mse" and 1 in config.orders and checked:
                            closed = predict.ntk_predict(
                                module.apply,
                                params0,
                                task.x_train,
                                task.y_train,
                                task.x_test,
                                steps=[int(s) for s in steps],
                                lr=lr,
                            ).test
                            checks.append(
                                {
                                    "model": name,
                                    "parameterization": parameterization,
                                    "width": width,
                                    "seed": seed,
                                    "max_relative_deviation": _max_relative_deviation(
                                        outputs[1 + config.orders.index(1)],
                                        np.asarray(closed),
                                        outputs[0, 0],
                                    ),
                                }
                            )
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "results": rows,
        "summary": summarize(rows),
        "ntk_predict_check": checks,
    }
    curves = {
        f"{r['model']}/{r['parameterization']}/{r['width']}/{r['seed']}/{r['loss']}/{r['order']}"
        f"/{key}": np.asarray(r[key], dtype=float)
        for r in rows
        for key in ("distance", "test_accuracy", "test_loss", "movement")
    }
    write_results(out, NAME, doc, curves)
    plot(out / f"{NAME}.json", out)
    return doc


def train_taylorized(
    model: TaylorModel,
    task: Any,
    orders: tuple[int, ...],
    *,
    loss: str,
    steps: int,
    lr: float,
    eval_every: int,
    progress: bool | Callable[[dict], None] = False,
) -> training.Run:
    """The full network and its Taylor models of the given orders, trained side by side from θ0 by
    optax SGD (`jaxntk.training.fit`, no regularizer), in one compiled program.

    The parameters are a tuple (U_full, U_1, …), one displacement per model, and the objective the
    sum of the models' losses: each U enters only its own model's loss, so its gradient is that
    loss's gradient alone and SGD on the tuple is one independent SGD run per model.

    Args:
        model: the `TaylorModel` to train (each U starts at 0).
        task: a `jaxntk.Task` (one-hot float labels for "mse", integer classes for
            "cross_entropy").
        orders: the Taylor orders k ≥ 1 (variants "ntk", "ntk+quadntk", "taylor-k").
        loss: "mse" or "cross_entropy".
        steps: SGD steps.
        lr: the learning rate.
        eval_every: steps between evaluations.
        progress: as `jaxntk.train`'s.

    Returns:
        A `jaxntk.training.Run` whose history metrics have a last axis over the models (the full
        network, then the orders): `jaxntk.train`'s metrics (1, 1, E, V) and "test_output"
        (1, 1, E, V, n_test · outputs), the evaluation prediction on the test inputs, flattened.

    Raises:
        ValueError: as `jaxntk.train`, for a task that does not fit the model or the loss, or an
            order below 1.
    """
    if not orders or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in orders):
        raise ValueError(f"orders must be ints ≥ 1, got {orders}")
    task_data.check_task(task, model)
    for name in ("train", "test"):
        x = getattr(task, f"x_{name}")
        shape = jax.eval_shape(model.full, model.zeros(), model.prepare(x)).shape
        check_targets(loss, getattr(task, f"y_{name}"), shape, f"y_{name}", f"x_{name}")
    data = Data(model, task.x_train, task.x_test, task.y_train, task.y_test, task.parts_test)
    variants = tuple(_variant(k) for k in (0, *orders))
    return training.fit(
        _SideBySide(tuple(VariantObjective(v, d=task.d, data_loss=loss) for v in variants)),
        data,
        hyper=Regularizer().weights(),
        seeds=[0],
        steps=steps,
        lr=lr,
        optimizer="sgd",
        eval_every=eval_every,
        progress=progress,
        label="full, " + ", ".join(variants[1:]),
        config={"variants": list(variants), "loss": loss, "steps": steps, "lr": lr},
    )


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per model, parameterization, loss and width: each order's final distance, test
    accuracy and movement, means over the seeds.

    Args:
        rows: the run rows of `run`.

    Returns:
        A list of dicts with "model", "parameterization", "loss", "width" and, per order k
        ("full" for the network itself), "distance_k" (not for "full"), "accuracy_k",
        "movement_k".
    """
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["parameterization"], r["loss"], r["width"])
        entry = groups.setdefault(
            key, {"model": key[0], "parameterization": key[1], "loss": key[2], "width": key[3]}
        )
        tag = "full" if r["order"] == 0 else str(r["order"])
        for field, values in (
            ("distance", r["distance"]),
            ("accuracy", r["test_accuracy"]),
            ("movement", r["movement"]),
        ):
            if field == "distance" and r["order"] == 0:
                continue
            entry.setdefault(f"{field}_{tag}", []).append(values[-1])
    return [
        {k: float(np.mean(v)) if isinstance(v, list) else v for k, v in entry.items()}
        for entry in groups.values()
    ]


def table(doc: dict) -> str:
    """The summary as a Markdown table: a row per model, parameterization, loss and width, with
    the final distance D_k of each order, the final test accuracies and the network's movement.

    Args:
        doc: the document `run` returns (or taylorized.json, loaded).

    Returns:
        The table, one line per row, with a mark on the rows where D_3 < D_2 < D_1.
    """
    orders = sorted(int(k.split("_")[1]) for k in doc["summary"][0] if k.startswith("distance_"))
    head = (
        ["model", "param.", "loss", "width"]
        + [f"D_{k}" for k in orders]
        + ["falls with order", "accuracy: network"]
        + [f"order {k}" for k in orders]
        + ["‖θ − θ0‖/‖θ0‖"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in doc["summary"]:
        dist = [s[f"distance_{k}"] for k in orders]
        falls = all(a > b for a, b in itertools.pairwise(dist))
        cells = (
            [s["model"], s["parameterization"], _short(s["loss"]), str(s["width"])]
            + [f"{d:.3g}" for d in dist]
            + ["yes" if falls else "**no**", f"{s['accuracy_full']:.3f}"]
            + [f"{s[f'accuracy_{k}']:.3f}" for k in orders]
            + [f"{s['movement_full']:.3g}"]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(json_path: Path, out: Path) -> tuple[Path, Path]:
    """The two figures of a results file: the distance to the full network against the steps
    (a row per model, parameterization and loss, a panel per width, a curve per order) and the
    final test accuracy by order and width.

    Args:
        json_path: the experiment's JSON file, as `run` writes it (taylorized.json).
        out: the folder to write taylorized-distance.png and taylorized-accuracy.png into.

    Returns:
        The two PNG paths.
    """
    import json

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    doc = json.loads(Path(json_path).read_text())
    rows, summary = doc["results"], doc["summary"]
    combos = list(dict.fromkeys((s["model"], s["parameterization"], s["loss"]) for s in summary))
    n_cols = max(
        sum(1 for s in summary if (s["model"], s["parameterization"], s["loss"]) == c)
        for c in combos
    )
    orders = sorted({r["order"] for r in rows if r["order"] > 0})
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(orders), 1)))

    fig = Figure(figsize=(3.0 * n_cols, 2.1 * len(combos)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(combos), n_cols, squeeze=False))
    for i, combo in enumerate(combos):
        widths = [
            s["width"] for s in summary if (s["model"], s["parameterization"], s["loss"]) == combo
        ]
        for j, width in enumerate(widths):
            ax = axes[i, j]
            for order, color in zip(orders, colors, strict=True):
                sel = [
                    r
                    for r in rows
                    if (r["model"], r["parameterization"], r["loss"]) == combo
                    and r["width"] == width
                    and r["order"] == order
                ]
                dist = np.mean(np.asarray([r["distance"] for r in sel], dtype=float), axis=0)
                steps = np.asarray(sel[0]["step"])
                ax.plot(steps[1:], dist[1:], color=color, label=f"order {order}")
            ax.set_yscale("log")
            ax.set_title(f"{combo[0]} {combo[1]} {_short(combo[2])}, width {width}", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("‖f_k − f‖ / ‖f − f_0‖", fontsize=7)
            if i == len(combos) - 1:
                ax.set_xlabel("step", fontsize=7)
        for j in range(len(widths), n_cols):
            axes[i, j].set_visible(False)
    axes[0, 0].legend(fontsize=7)
    distance_png = Path(out) / f"{NAME}-distance.png"
    fig.savefig(distance_png, dpi=110)

    n_panels = len(combos)
    n_c = min(4, n_panels)
    n_r = math.ceil(n_panels / n_c)
    fig = Figure(figsize=(3.2 * n_c, 2.6 * n_r), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_r, n_c, squeeze=False)).ravel()
    tags = ["full", *[str(k) for k in orders]]
    bar_colors = ["#555555", *colors]
    for ax, combo in zip(axes, combos, strict=False):
        entries = [s for s in summary if (s["model"], s["parameterization"], s["loss"]) == combo]
        pos = np.arange(len(entries))
        width_bar = 0.8 / len(tags)
        for t, (tag, color) in enumerate(zip(tags, bar_colors, strict=True)):
            ax.bar(
                pos + (t - (len(tags) - 1) / 2) * width_bar,
                [e[f"accuracy_{tag}"] for e in entries],
                width_bar,
                color=color,
                label="network" if tag == "full" else f"order {tag}",
            )
        ax.set_xticks(pos, [str(e["width"]) for e in entries], fontsize=7)
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{combo[0]} {combo[1]} {_short(combo[2])}", fontsize=8)
        ax.set_xlabel("width", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    axes[0].set_ylabel("final test accuracy", fontsize=7)
    axes[0].legend(fontsize=6, loc="lower right")
    accuracy_png = Path(out) / f"{NAME}-accuracy.png"
    fig.savefig(accuracy_png, dpi=110)
    return distance_png, accuracy_png


@dataclasses.dataclass(frozen=True)
class _SideBySide:
    """Several variants' objectives on one tuple of displacements: the trainer's objective
    protocol (`jaxntk.training.fit`), with the sum of their losses and their evaluations stacked
    along a last axis, the test outputs (flattened) among them."""

    objectives: tuple[VariantObjective, ...]

    def prepare(self, data: Data) -> Data:
        # by the variant of the highest order, so that every order finds its terms hoisted
        top = max(self.objectives, key=lambda o: _train_order(get_variant(o.variant)))
        return top.prepare(data)

    def init(self, key: jax.Array, data: Data) -> tuple:
        return tuple(o.init(key, data) for o in self.objectives)

    def loss(self, u: tuple, data: Data, hyper: dict, key: jax.Array) -> tuple[jax.Array, dict]:
        losses = [o.loss(ui, data, hyper, key)[0] for o, ui in zip(self.objectives, u, strict=True)]
        return sum(losses), {o.variant: x for o, x in zip(self.objectives, losses, strict=True)}

    def evaluate(self, u: tuple, data: Data, hyper: dict) -> dict[str, jax.Array]:
        each = []
        for o, ui in zip(self.objectives, u, strict=True):
            metrics = o.evaluate(ui, data, hyper)
            test = get_variant(o.variant).predict(data.model, ui, data.prep_test)
            each.append({**metrics, "test_output": test.reshape(-1)})
        return {k: jnp.stack([m[k] for m in each]) for k in each[0]}


def _row(setting: dict, order: int, i: int, r, outputs, theta0: float, task) -> dict:
    """One result row: `setting` (model, parameterization, width, seed, loss, lr, seconds) with
    the order-`order` model's curves; `outputs[i]` is its test output at each evaluation."""
    f = outputs[i]
    full = outputs[0]
    labels = np.asarray(task.y_test)
    classes = labels.argmax(-1) if labels.ndim == 2 else labels
    moved = np.linalg.norm((full - full[0]).reshape(full.shape[0], -1), axis=1)
    gap = np.linalg.norm((f - full).reshape(f.shape[0], -1), axis=1)
    distance = np.divide(gap, moved, out=np.full_like(gap, np.nan), where=moved > 0)
    steps = r.history["step"]
    return {
        **setting,
        "order": order,
        "variant": _variant(order),
        "step": [int(s) for s in steps],
        "distance": [None if not np.isfinite(x) else float(x) for x in distance],
        "test_accuracy": (f.argmax(-1) == classes).mean(axis=1).tolist(),
        "test_loss": np.asarray(r.history["test_loss"][0, 0, :, i], dtype=float).tolist(),
        "movement": (np.asarray(r.history["u_norm"][0, 0, :, i], dtype=float) / theta0).tolist(),
        "diverged": bool(r.diverged),
    }


def _max_relative_deviation(trained: np.ndarray, closed: np.ndarray, f0: np.ndarray) -> float:
    """max over steps t > 0 of ‖trained_t − closed_t‖ / ‖closed_t − f0‖."""
    gap = np.linalg.norm((trained - closed).reshape(trained.shape[0], -1), axis=1)
    moved = np.linalg.norm((closed - f0).reshape(closed.shape[0], -1), axis=1)
    return float(np.max(gap[1:] / moved[1:]))


def _variant(order: int) -> str:
    return {0: "full", 1: "ntk", 2: "ntk+quadntk"}.get(order, f"taylor-{order}")


def _short(loss: str) -> str:
    return {"mse": "MSE", "cross_entropy": "CE"}.get(loss, loss)


def _layer_parameters(module: nn.Module, shape: tuple[int, ...], fan_in: int, parameterization):
    """(W, its scale, b, its scale) of a layer: NTK scales σ_w/√fan_in and σ_b on N(0, 1)
    parameters, or standard N(0, σ_w²/fan_in) and N(0, σ_b²) parameters with scales 1."""
    ntk = parameterization == "ntk"
    w_std = SIGMA_W / math.sqrt(fan_in)
    w = module.param("w", nn.initializers.normal(1.0 if ntk else w_std), shape, module.dtype)
    b = module.param("b", nn.initializers.normal(1.0 if ntk else SIGMA_B), shape[-1:], module.dtype)
    return w, (w_std if ntk else 1.0), b, (SIGMA_B if ntk else 1.0)


def _check_config(config: Config) -> None:
    for field, allowed in (
        ("models", MODELS),
        ("parameterizations", PARAMETERIZATIONS),
        ("losses", LOSSES),
    ):
        bad = [x for x in getattr(config, field) if x not in allowed]
        if bad or not getattr(config, field):
            raise ValueError(f"{field} must be a non-empty selection of {allowed}, got {bad}")
    if not config.orders or any(not isinstance(k, int) or k < 1 for k in config.orders):
        raise ValueError(f"orders must be ints ≥ 1, got {config.orders}")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {config.dtype!r}")
