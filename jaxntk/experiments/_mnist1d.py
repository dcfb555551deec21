"""The computations of the MNIST-1D experiment (`jaxntk.experiments.mnist1d`), without files.

Its networks (the published CNN's shape, an MLP, logistic regression), one minibatch training
call for a list of seeds, kernel regression on a network's NTK with the ridge chosen on a
validation split, one large gradient step then ridge regression on the CNN, the laziness
diagnostics of a trained network, the spectrum's prediction of kernel regression's test error,
and the slope and the n at a target accuracy of a learning curve. `mnist1d.py` runs them as the
experiment's sections and writes the results.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import diagnostics, linalg, minibatch, ntk, spectral, training
from jaxntk.objectives import get_variant
from jaxntk.scaling import Scaled
from jaxntk.taylor import TaylorModel

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
        readout: False returns the flattened features (n, 5·channels) instead of the logits
            (the readout's parameters are then not used).

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
    readout: bool = True

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        h = x.reshape(x.shape[0], -1, 1)
        for kernel in (5, 3, 3):
            h = act(nn.Conv(self.channels, (kernel,), strides=2, padding=1)(h))
        h = h.reshape(h.shape[0], -1)
        return nn.Dense(self.classes)(h) if self.readout else h


class MLP1D(nn.Module):
    """A fully connected network on the 40 positions: dense layers of `hidden` widths, each
    followed by the activation, then a dense readout; `hidden=()` is logistic regression.

    Attributes:
        hidden: the hidden layers' widths.
        classes: the outputs (logits) per signal.
        activation: a name in `ACTIVATIONS`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mlp = MLP1D()
        >>> params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 40)))
        >>> sum(leaf.size for leaf in jax.tree.leaves(params))  # 4100 + 10100 + 1010
        15210
    """

    hidden: tuple[int, ...] = (100, 100)
    classes: int = 10
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = ACTIVATIONS[self.activation](nn.Dense(width)(h))
        return nn.Dense(self.classes)(h)


NETWORKS = ("cnn", "mlp", "logistic")
"""The networks by name: the CNN, the MLP, logistic regression (a dense readout alone)."""

_MODULES: dict[tuple, nn.Module] = {}


def network(kind: str, channels: int = 25, activation: str = "gelu", hidden=(100, 100)):
    """The flax module of a network in `NETWORKS`, one object per setting (so that the seeds'
    models, whose apply functions compare equal, stack into one program)."""
    if kind not in NETWORKS:
        raise ValueError(f"network must be one of {list(NETWORKS)}, got {kind!r}")
    key = (kind, channels, activation, tuple(hidden))
    if key not in _MODULES:
        if kind == "cnn":
            _MODULES[key] = CNN1D(channels, 10, activation)
        else:
            _MODULES[key] = MLP1D(tuple(hidden) if kind == "mlp" else (), 10, activation)
    return _MODULES[key]


def taylor_model(module: nn.Module, seed: int, x: Any) -> TaylorModel:
    """The `TaylorModel` of `module` at its initialization from PRNGKey(seed)."""
    return TaylorModel(module.apply, module.init(jax.random.PRNGKey(seed), jnp.asarray(x[:1])))


def train_runs(models, tasks, variant: str, loss: str, seeds, settings: dict, **kwargs):
    """One `jaxntk.train` call: minibatch Adam with early stopping on a validation split.

    settings: batch_size, epochs, lr, validation, patience; kwargs: reg, subspace_method,
    progress (passed on). The validation score is the accuracy for the cross-entropy and the
    loss for the squared error.
    """
    n_fit = tasks[0].n - round(settings["validation"] * tasks[0].n)
    mb = minibatch.Minibatch(
        batch_size=max(1, min(settings["batch_size"], n_fit)),
        epochs=settings["epochs"],
        validation=settings["validation"],
        patience=settings["patience"],
        monitor="accuracy" if loss == "cross_entropy" else "loss",
    )
    kwargs.setdefault("progress", False)
    return training.train(
        list(models),
        list(tasks),
        variant,
        optimizer="adam",
        lr=settings["lr"],
        seeds=list(seeds),
        loss=loss,
        minibatch=mb,
        evals_per_chunk=5,
        **kwargs,
    )


def params_at(run: training.Run, setting: int, seed: int) -> Any:
    """The displacement U of one (setting, seed) of a run: its best validation epoch's."""
    return jax.tree_util.tree_map(lambda leaf: leaf[setting, seed], run.params)


def monitored(loss: str) -> str:
    """The history key of the validation score that early stopping reads."""
    return "val_accuracy" if loss == "cross_entropy" else "val_loss"


def labels_of(y: Any) -> np.ndarray:
    """Integer classes of labels, or of one-hot rows."""
    y = np.asarray(y)
    return np.argmax(y, axis=-1) if y.ndim == 2 else y


def accuracy(model, variant: str, u, x, labels) -> float:
    """The fraction of signals whose largest output of `variant`'s prediction at U is their
    class (`mnist1d.accuracy_at`)."""
    logits = np.asarray(_predict(model, variant, u, x))
    return float(np.mean(np.argmax(logits, axis=-1) == labels_of(labels)))


@functools.partial(jax.jit, static_argnums=1)
def _predict(model, variant, u, x):
    return get_variant(variant).predict(model, u, model.prepare(x))


@jax.jit
def _outputs(apply_fn, params, x):
    return apply_fn(params, x)


def outputs(apply_fn, params, x) -> np.ndarray:
    """f(params; x) as float64 numpy, in blocks of 2048 signals."""
    fn = jax.tree_util.Partial(apply_fn)
    x = jnp.asarray(x)
    parts = [_outputs(fn, params, x[i : i + 2048]) for i in range(0, x.shape[0], 2048)]
    return np.concatenate([np.asarray(p, np.float64) for p in parts])


# --------------------------------------------------------------------- kernel regression


def kernel_regression(
    apply_fn: Callable,
    params0: Any,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    ridges: Sequence[float],
    validation: float = 0.1,
    split_seed: int = 0,
) -> dict:
    """Kernel regression on a network's traced NTK at t = ∞, the ridge chosen on a validation
    split: `jaxntk.ntk_predict(apply_fn, params0, x, y, x_test, steps=[inf],
    trace_axes=(-1,), ridge=ρ)`, every ridge of the grid served by one kernel.

    The kernel K(X ∪ X', X) comes from `jaxntk.empirical_ntk` once; the prediction at ridge
    ρ = r·mean(diag K) (r in `ridges`) is f0(X') + K(X', X)(K + ρI)⁻¹(Y − f0(X)), as
    `ntk_predict`'s limit. Each r is fitted on the training rows outside the validation split
    (`jaxntk.Minibatch.split`'s rows, those the trainer holds out) and scored on it; the best
    validation accuracy (ties: the lower validation squared error) is refitted on all rows.

    Args:
        apply_fn: f(params, x) -> (n, c) logits.
        params0: the parameters θ0 of the kernel.
        x_train: (n, ...) training inputs.
        y_train: (n, c) one-hot targets.
        x_test: (n_test, ...) test inputs.
        y_test: (n_test, c) one-hot test targets.
        ridges: the ridges r > 0 relative to the kernel's mean diagonal.
        validation: the held-out fraction of the training rows, in (0, 1).
        split_seed: the seed of the held-out rows.

    Returns:
        {"ridge" ρ, "ridge_relative" r, "val_accuracy" and "val_mse" (one per r),
        "test_accuracy", "test_mse", "test_outputs" (n_test, c)}.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> x = np.random.default_rng(0).normal(size=(40, 3))
        >>> y = np.eye(2)[(x[:, 0] > 0).astype(int)]
        >>> fit = kernel_regression(lambda w, x: x @ w, jnp.zeros((3, 2)), x[:30], y[:30],
        ...                         x[30:], y[30:], ridges=[1e-3, 1.0], validation=0.2)
        >>> fit["test_accuracy"], fit["test_outputs"].shape
        (1.0, (10, 2))
    """
    n = len(x_train)
    x_all = jnp.concatenate([jnp.asarray(x_train), jnp.asarray(x_test)])
    k = ntk.empirical_ntk(apply_fn, params0, x_all, x_all[:n], trace_axes=(-1,), output="host")
    f0 = outputs(apply_fn, params0, x_all)
    fit, val = minibatch.Minibatch(1, 1, validation=validation, split_seed=split_seed).split(n)
    return ridge_fit(k[:n], k[n:], f0[:n], f0[n:], y_train, y_test, ridges, fit, val)


def ridge_fit(k_train, k_test, f0_train, f0_test, y_train, y_test, ridges, fit, val) -> dict:
    """`kernel_regression` on kernels in memory: K (n, n), K(X', X) (n_test, n), the outputs at
    θ0 and the targets; `fit`, `val` the training rows fitted and scored for the choice."""
    y_train, y_test = np.asarray(y_train, np.float64), np.asarray(y_test, np.float64)
    resid = y_train - f0_train
    scale = float(np.mean(np.diag(k_train)))
    k_fit = np.asarray(k_train[np.ix_(fit, fit)], np.float64)
    k_val = np.asarray(k_train[np.ix_(val, fit)], np.float64)
    accs, mses = [], []
    for r in ridges:
        pred = f0_train[val] + k_val @ _solve(k_fit, r * scale, resid[fit])
        accs.append(float(np.mean(labels_of(pred) == labels_of(y_train[val]))))
        mses.append(float(np.mean((pred - y_train[val]) ** 2)))
    best = min(range(len(ridges)), key=lambda i: (-accs[i], mses[i]))
    ridge = float(ridges[best]) * scale
    coef = _solve(np.asarray(k_train, np.float64), ridge, resid)
    pred = f0_test + np.asarray(k_test, np.float64) @ coef
    return {
        "ridge": ridge,
        "ridge_relative": float(ridges[best]),
        "val_accuracy": accs,
        "val_mse": mses,
        "test_accuracy": float(np.mean(labels_of(pred) == labels_of(y_test))),
        "test_mse": float(np.mean((pred - y_test) ** 2)),
        "test_outputs": pred,
    }


def _solve(k: np.ndarray, ridge: float, b: np.ndarray) -> np.ndarray:
    """(K + ρI)⁻¹ b in float64."""
    return np.linalg.solve(k + ridge * np.eye(k.shape[0]), b)


# ------------------------------------------------------------------------------ one step


def one_step_cnn(
    module: CNN1D, params0, x, y, x_test, y_test, *, etas, ridges, validation, split_seed=0
) -> dict:
    """One large gradient step on the CNN's convolutions, then ridge regression on its readout.

    `jaxntk.one_step` (Damian, Lee & Soltanolkotabi) takes the two-layer network only; this is
    its two stages on the CNN: θ1 = θ0 − η ∇L(θ0) on the convolutions' parameters (L the mean
    squared error on one-hot targets, the readout at its initialization; the step keeps θ0, as
    `one_step(keep_init=True)`), then the readout a = (ΦᵀΦ + nλI)⁻¹ΦᵀY on the features Φ of
    θ1 (the flattened last convolution and a constant). (η, λ) are chosen on the validation
    rows (best accuracy, ties by squared error), and both stages refitted on all rows.

    Returns:
        {"eta", "ridge", "val_accuracy" (E, R), "test_accuracy", "test_mse"}.
    """
    x, x_test = jnp.asarray(x), jnp.asarray(x_test)
    y, y_test = np.asarray(y, np.float64), np.asarray(y_test, np.float64)
    fit, val = minibatch.Minibatch(1, 1, validation=validation, split_seed=split_seed).split(len(x))
    scores = np.zeros((len(etas), len(ridges), 2))
    for i, eta in enumerate(etas):
        phi = _stepped_features(module, params0, x[fit], y[fit], float(eta), x)
        for j, lam in enumerate(ridges):
            pred = phi[val] @ _readout(phi[fit], y[fit], float(lam))
            scores[i, j] = (
                np.mean(labels_of(pred) == labels_of(y[val])),
                -np.mean((pred - y[val]) ** 2),
            )
    flat = max(np.ndindex(scores.shape[:2]), key=lambda ij: tuple(scores[ij]))
    eta, lam = float(etas[flat[0]]), float(ridges[flat[1]])
    phi = _stepped_features(module, params0, x, y, eta, jnp.concatenate([x, x_test]))
    pred = phi[len(x) :] @ _readout(phi[: len(x)], y, lam)
    return {
        "eta": eta,
        "ridge": lam,
        "val_accuracy": scores[..., 0].tolist(),
        "test_accuracy": float(np.mean(labels_of(pred) == labels_of(y_test))),
        "test_mse": float(np.mean((pred - y_test) ** 2)),
    }


def _stepped_features(module, params0, x, y, eta, x_out) -> np.ndarray:
    """Φ(x_out) with a constant column, after the step of size η on (x, y)."""
    features = CNN1D(module.channels, module.classes, module.activation, readout=False)
    phi = _step_features(module, features, params0, x, jnp.asarray(y, x.dtype), eta, x_out)
    phi = np.asarray(phi, np.float64)
    return np.concatenate([phi, np.ones((phi.shape[0], 1))], axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step_features(module, features, params0, x, y, eta, x_out):
    inner = params0["params"]
    convs = {k: v for k, v in inner.items() if k.startswith("Conv")}

    def loss(c):
        return jnp.mean((module.apply({"params": {**inner, **c}}, x) - y) ** 2)

    stepped = jax.tree_util.tree_map(lambda p, g: p - eta * g, convs, jax.grad(loss)(convs))
    return features.apply({"params": {**inner, **stepped}}, x_out)


def _readout(phi: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin_a (1/n)‖Φa − Y‖² + λ‖a‖²."""
    n, p = phi.shape
    return np.linalg.solve(phi.T @ phi + n * lam * np.eye(p), phi.T @ y)


# --------------------------------------------------------------------------- lazy to rich


def laziness(model: Scaled, u, x_probe, y_probe, x_test) -> dict[str, float]:
    """The diagnostics of the trained network h(θ0 + U) (`jaxntk.diagnostics`): the change of
    its tangent kernel on the probe from the NTK at θ0, the centered alignment of both with the
    probe's one-hot targets, the distances D_1, D_2 of its movement on the test inputs to its
    linear and quadratic Taylor models at the same U, and ‖U‖/‖θ0‖."""
    out = _laziness(model, u, jnp.asarray(x_probe), jnp.asarray(y_probe), jnp.asarray(x_test))
    return {k: float(v) for k, v in out.items()}


@jax.jit
def _laziness(model, u, x_probe, y_probe, x_test):
    prep = model.prepare(x_probe, order=1)
    k0 = diagnostics.tangent_kernel(model.linear_term, model.zeros(), prep)
    ku = diagnostics.tangent_kernel(model.full, u, prep)
    dist = diagnostics.network_taylor_distances(model, u, model.prepare(x_test, order=2))
    return {
        "kernel_change": diagnostics.kernel_change(ku, k0),
        "alignment": diagnostics.centered_alignment(ku, y_probe),
        "alignment_init": diagnostics.centered_alignment(k0, y_probe),
        "distance_linear": dist["linear"],
        "distance_quadratic": dist["quadratic"],
        "displacement": diagnostics.displacement(u, diagnostics.initial_params(model)),
    }


# ------------------------------------------------------------------------------- spectrum


def spectrum_prediction(apply_fn, params0, x_big, y_big, x_test, y_test, settings: dict) -> dict:
    """Kernel regression's test error predicted from the NTK's spectrum, against the measured.

    The traced NTK K_N on N = len(x_big) signals and its top k eigenpairs (`jaxntk.linalg.
    top_eigh`, block Krylov) give λ_i, the coefficients v_i of the target Y − f0 and the power
    left outside the k modes (`jaxntk.spectral.target_spectrum`). For each n of settings["ns"]
    kernel regression on the first n signals (`ridge_fit`, ridge chosen on validation) is
    measured on the test set and predicted by `jaxntk.spectral.learning_curve` at the same n
    and ridge two ways: "top_k" (the rest of the target's power as noise, never learned) and
    "flat_tail" (the rest spread evenly over the other N − k modes, whose eigenvalues share the
    trace that the top k leave).

    settings: k, ns, ridges, validation, max_iters.
    """
    n_big, ns = len(x_big), [int(n) for n in settings["ns"]]
    k_big = ntk.empirical_ntk(
        apply_fn, params0, jnp.asarray(x_big), trace_axes=(-1,), output="host"
    )
    k_test = ntk.empirical_ntk(
        apply_fn, params0, jnp.asarray(x_test), jnp.asarray(x_big[: max(ns)]), output="host"
    )
    f0_big, f0_test = outputs(apply_fn, params0, x_big), outputs(apply_fn, params0, x_test)
    resid = np.asarray(y_big, np.float64) - f0_big
    values, vectors, info = linalg.top_eigh(
        k_big, settings["k"], max_iters=settings["max_iters"], return_info=True
    )
    lam, coef, noise = spectral.target_spectrum(np.asarray(values), np.asarray(vectors), resid)
    tail = max(float(np.trace(k_big, dtype=np.float64)) / n_big - lam.sum(), 0.0)
    rest = n_big - lam.size
    lam_all = np.concatenate([lam, np.full(rest, tail / max(rest, 1))])
    coef_all = np.concatenate(
        [coef, np.full((rest, coef.shape[1]), math.sqrt(noise / max(rest, 1)))]
    )
    rows = []
    for n in ns:
        split = minibatch.Minibatch(1, 1, validation=settings["validation"]).split(n)
        krr = ridge_fit(
            k_big[:n, :n],
            k_test[:, :n],
            f0_big[:n],
            f0_test,
            y_big[:n],
            y_test,
            settings["ridges"],
            *split,
        )
        top = spectral.learning_curve(lam, coef, n, krr["ridge"], noise=noise).test_mse[0]
        flat = spectral.learning_curve(lam_all, coef_all, n, krr["ridge"]).test_mse[0]
        rows.append(_spectrum_row(n, krr, float(top), float(flat)))
    return {
        "n_big": n_big,
        "k": int(lam.size),
        "eigenvalues": lam.tolist(),
        "target_power": np.mean(coef**2, axis=1).tolist(),
        "noise": noise,
        "tail_trace": tail,
        "krylov_iterations": int(info.iterations),
        "krylov_residual": float(info.error),
        "rows": rows,
    }


def _spectrum_row(n: int, krr: dict, top: float, flat: float) -> dict:
    measured = krr["test_mse"]
    return {
        "n": n,
        "ridge": krr["ridge"],
        "measured_mse": measured,
        "measured_accuracy": krr["test_accuracy"],
        "predicted_top_k": top,
        "predicted_flat_tail": flat,
        "relative_error_top_k": abs(top - measured) / measured,
        "relative_error_flat_tail": abs(flat - measured) / measured,
    }


# ------------------------------------------------------------------------- learning curves


def fit_slope(n: Sequence[float], error: Sequence[float]) -> tuple[float, float]:
    """The least-squares line log error = slope · log n + intercept of a learning curve.

    Args:
        n: the sample sizes.
        error: the test error at each (points ≤ 0 or not finite are left out).

    Returns:
        (slope, intercept); (nan, nan) with fewer than two usable points.

    Example:
        >>> fit_slope([100, 1000], [1.0, 0.1])   # error = 100 / n
        (-1.0, 2.0)
    """
    n, err = np.asarray(n, np.float64), np.asarray(error, np.float64)
    keep = np.isfinite(err) & (err > 0) & (n > 0)
    if np.count_nonzero(keep) < 2:
        return float("nan"), float("nan")
    a = np.stack([np.log10(n[keep]), np.ones(np.count_nonzero(keep))], axis=1)
    slope, intercept = np.linalg.lstsq(a, np.log10(err[keep]), rcond=None)[0]
    return round(float(slope), 12), round(float(intercept), 12)


def n_at_accuracy(n: Sequence[float], accuracy: Sequence[float], target: float = 0.8):
    """The n at which a learning curve first reaches `target` accuracy, interpolated linearly
    in (log n, log error) between the last n below it and the first at or above.

    Args:
        n: increasing sample sizes.
        accuracy: the test accuracy at each.
        target: the accuracy to reach, in (0, 1).

    Returns:
        The interpolated n (the first n if it is reached there already), or None if never.

    Example:
        >>> round(n_at_accuracy([100, 1000], [0.6, 0.9], 0.8))   # error 0.4 → 0.1, at 0.2
        316
    """
    n, acc = np.asarray(n, np.float64), np.asarray(accuracy, np.float64)
    reached = np.flatnonzero(acc >= target)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(n[0])
    e0, e1, goal = 1 - acc[i - 1], 1 - acc[i], 1 - target
    if e1 <= 0:
        return float(n[i])
    t = (math.log(goal) - math.log(e0)) / (math.log(e1) - math.log(e0))
    return float(10 ** (math.log10(n[i - 1]) + t * (math.log10(n[i]) - math.log10(n[i - 1]))))
