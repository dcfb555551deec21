"""One large gradient step on the first layer, then ridge regression on the second.

The two-stage algorithm of Damian, Lee & Soltanolkotabi (*Neural networks can learn
representations with gradient descent*, COLT 2022), a feature-learning baseline beside the NTK
and the paper's QuadNTK. From the symmetric initialization of `jaxntk.network.init` (rows w0_r used
twice, output signs s_r = sign(a_r) = ±1 opposite in each pair, so f(x; W0) = 0):

    stage 1   W1 = W0 − η [∇_W L(W0) + λ_1 W0]   with λ_1 = 1/η (weight decay that removes the
              initialization):  W1 = −η ∇_W L(W0),
              L(W) = (1/n) Σ_i (y_i − Σ_r s_r σ(w_r · x_i))²,
              i.e. row r of W1 is η (2/n) Σ_i y_i s_r σ'(w0_r · x_i) x_i;
    biases    b_r ~ N(0, bias_scale²), drawn afresh (the paper re-initializes the biases here;
              `jaxntk.TwoLayer` has none in stage 1, its σ keeps its own shift);
    stage 2   a = argmin_a (1/n) ‖y − Φ a‖² + λ ‖a‖²,  Φ_ir = σ(w1_r · x_i + b_r),
              in closed form: a = Φᵀ (Φ Φᵀ + nλ I)⁻¹ y (n ≤ m) or (ΦᵀΦ + nλ I)⁻¹ Φᵀ y (n > m),
              one eigendecomposition per η serving every λ.

The step size η and the ridge λ are chosen on validation splits of the training set, never on the
test set: k-fold cross-validation (k = `folds`), every (η, λ) of the grid fitted on k − 1 folds and
scored by its loss on the k-th, averaged over the folds, in one compiled program (vmap over folds,
η and λ); the best pair is then refitted, both stages, on the whole training set. (One split of
a quarter of a small training set chose badly in our trials: at d = 10, n = 56 its 14 points
picked a pair of test loss 1.37, worse than predicting 0.) With keep_init=True stage 1 is the
plain step W1 = W0 − η ∇_W L(W0) (no weight decay).

Taken from the paper: the symmetric initialization, one full-batch gradient step on W alone
from it with the weight decay that cancels W0, fresh biases, then a convex problem in a (their
second stage runs gradient descent on a ridge-regularized square loss, whose limit is the closed
form here). Ours: the paper's network has a ReLU and unit-norm rows; here σ and W0 are the
network's (σ(z) = sigmoid(z − 1) by default), the loss is the library's per-sample mean, and η,
λ come from the validation grid rather than from the theorem's choices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import network
from jaxntk._checks import check_int

Array = jax.Array

__all__ = ["OneStepFit", "first_step", "one_step"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OneStepFit:
    """A fitted one-step network x ↦ Σ_r a_r σ(w1_r · x + b_r) and how it was chosen.

    Attributes:
        w1: (m, d) first layer after the step.
        bias: (m,) the fresh biases b.
        a: (m,) second layer from the ridge fit.
        eta: () the chosen step size η.
        ridge: () the chosen ridge λ.
        val_loss: (E, R) validation loss of every (η, λ) of the grid.
        etas: (E,) the step sizes tried.
        ridges: (R,) the ridges tried.
        activation: the name of σ (static).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxntk as jn
        >>> from jaxntk.onestep import one_step
        >>> task = jn.paper_task(jax.random.PRNGKey(0), d=5, n=80, n_test=200)
        >>> net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=5, m=64)
        >>> fit = one_step(jax.random.PRNGKey(2), net, task.x_train, task.y_train,
        ...                etas=[1.0, 10.0], ridges=[1e-3, 1e-1])
        >>> fit.val_loss.shape, fit.predict(task.x_test).shape
        ((2, 2), (200,))
    """

    w1: Array
    bias: Array
    a: Array
    eta: Array
    ridge: Array
    val_loss: Array
    etas: Array
    ridges: Array
    activation: str = dataclasses.field(default="shifted_sigmoid", metadata={"static": True})

    def predict(self, x: Array) -> Array:
        """Σ_r a_r σ(w1_r · x + b_r) for inputs x (n, d).

        Args:
            x: (n, d) inputs.

        Returns:
            (n,) outputs.
        """
        return _features(self.w1, self.bias, x, self.activation) @ self.a


def first_step(net: network.TwoLayer, x: Array, y: Array, eta: float, keep_init: bool = False):
    """Stage 1: W1 = −η ∇_W L(W0) (or W0 − η ∇_W L(W0) with keep_init), signs s_r = sign(a_r).

    Args:
        net: the symmetric two-layer network (its W0, σ and the signs of its a).
        x: (n, d) training inputs.
        y: (n,) training targets.
        eta: the step size η (a float or a () array).
        keep_init: keep W0 in W1 (no weight decay).

    Returns:
        (m, d) W1.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxntk as jn
        >>> from jaxntk.onestep import first_step
        >>> net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (10, 3))
        >>> w1 = first_step(net, x, x[:, 0], 2.0)
        >>> bool(jnp.allclose(w1[:2], -w1[2:]))   # paired rows, opposite signs: opposite steps
        True
    """
    signs = dataclasses.replace(net, a=jnp.sign(net.a))

    def loss(w):
        return jnp.mean((y - signs.apply(w, x)) ** 2)

    step = -eta * jax.grad(loss)(net.w0)
    return net.w0 + step if keep_init else step


def _features(w1: Array, bias: Array, x: Array, activation: str) -> Array:
    return network.get_activation(activation).fn(x @ w1.T + bias[None, :])


def _ridge_basis(phi: Array, y: Array):
    """(A, c, λ_k) with the ridge solution a(λ) = A (c / (λ_k + nλ)) for every λ: from the
    eigendecomposition of Φ Φᵀ (n ≤ m) or of ΦᵀΦ (n > m)."""
    n, m = phi.shape
    if n <= m:
        lam, vecs = jnp.linalg.eigh(phi @ phi.T)
        basis, coef = phi.T @ vecs, vecs.T @ y
    else:
        lam, vecs = jnp.linalg.eigh(phi.T @ phi)
        basis, coef = vecs, vecs.T @ (phi.T @ y)
    # rounding can leave a Gram matrix's zero eigenvalues slightly negative
    return basis, coef, jnp.maximum(lam, 0.0)


@functools.partial(jax.jit, static_argnames=("keep_init",))
def _validation_grid(net, x, y, fit_idx, val_idx, bias, etas, ridges, keep_init: bool):
    """(E, R) validation loss of every (η, λ), averaged over the folds (rows of the index
    arrays): every fold, η and λ in one program."""

    def per_fold(fit, val):
        x_fit, y_fit, x_val, y_val = x[fit], y[fit], x[val], y[val]
        n = x_fit.shape[0]

        def per_eta(eta):
            w1 = first_step(net, x_fit, y_fit, eta, keep_init)
            basis, coef, lam = _ridge_basis(_features(w1, bias, x_fit, net.activation), y_fit)
            scores = _features(w1, bias, x_val, net.activation) @ basis

            def per_ridge(r):
                return jnp.mean((scores @ (coef / (lam + n * r)) - y_val) ** 2)

            return jax.vmap(per_ridge)(ridges)

        return jax.vmap(per_eta)(etas)

    return jnp.mean(jax.vmap(per_fold)(fit_idx, val_idx), axis=0)


def _folds(n: int, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) index arrays (folds, n − n//folds) and (folds, n//folds): fold f validates on
    points [f·n//folds, (f+1)·n//folds) and fits on the others."""
    size = n // folds
    every = np.arange(n)
    val = np.stack([every[f * size : (f + 1) * size] for f in range(folds)])
    fit = np.stack([np.setdiff1d(every, v) for v in val])
    return fit, val


@functools.partial(jax.jit, static_argnames=("keep_init",))
def _fit(net, x, y, bias, eta, ridge, keep_init: bool):
    w1 = first_step(net, x, y, eta, keep_init)
    basis, coef, lam = _ridge_basis(_features(w1, bias, x, net.activation), y)
    return w1, basis @ (coef / (lam + x.shape[0] * ridge))


def one_step(
    key: Array,
    net: network.TwoLayer,
    x_train: Array,
    y_train: Array,
    *,
    etas: Sequence[float],
    ridges: Sequence[float],
    folds: int = 4,
    bias_scale: float = 1.0,
    keep_init: bool = False,
) -> OneStepFit:
    """Damian, Lee & Soltanolkotabi's two stages with (η, λ) chosen on a validation split.

    See the module docstring for the equations. The training set is cut into k folds of n // k
    consecutive points; each (η, λ) is scored by its validation loss on every fold when fitted on
    the rest, averaged over the folds; the best pair is refitted on all n.

    Args:
        key: PRNG key of the fresh biases.
        net: the symmetric two-layer network (`jaxntk.TwoLayer`).
        x_train: (n, d) training inputs.
        y_train: (n,) float training targets.
        etas: the step sizes η > 0 to try.
        ridges: the ridges λ > 0 to try.
        folds: the number k of validation folds, 2 ≤ k ≤ n.
        bias_scale: the standard deviation of the fresh biases (0: no biases).
        keep_init: stage 1 without the weight decay that removes W0.

    Returns:
        The `OneStepFit` (chosen η and λ, the fitted layers, the validation grid).

    Raises:
        TypeError: net is not a `jaxntk.TwoLayer`.
        ValueError: inputs or targets of the wrong shape, an empty or non-positive grid, folds
            out of [2, n], or a negative bias_scale.
    """
    if not isinstance(net, network.TwoLayer):
        raise TypeError(f"net must be a jaxntk.TwoLayer, got {type(net).__name__}")
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    if x.ndim != 2 or x.shape[1] != net.d:
        raise ValueError(f"x_train must have shape (n, {net.d}), got {x.shape}")
    if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.floating):
        raise ValueError(f"y_train must be float with shape ({x.shape[0]},), got {y.shape}")
    grids = {}
    for name, values in (("etas", etas), ("ridges", ridges)):
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
            raise ValueError(f"{name} must be a non-empty 1-D sequence of floats > 0, got {values}")
        grids[name] = jnp.asarray(arr, dtype=x.dtype)
    n = x.shape[0]
    check_int("folds", folds, 2, n, "the number of training points")
    if not (math.isfinite(bias_scale) and bias_scale >= 0):
        raise ValueError(f"bias_scale must be a finite float ≥ 0, got {bias_scale!r}")
    bias = bias_scale * jax.random.normal(key, (net.m,), x.dtype)
    fit_idx, val_idx = _folds(n, folds)
    val_loss = _validation_grid(
        net, x, y, fit_idx, val_idx, bias, grids["etas"], grids["ridges"], keep_init
    )
    scores = np.where(np.isfinite(np.asarray(val_loss)), np.asarray(val_loss), np.inf)
    i, j = np.unravel_index(np.argmin(scores), scores.shape)
    eta, ridge = grids["etas"][i], grids["ridges"][j]
    w1, a = _fit(net, x, y, bias, eta, ridge, keep_init)
    return OneStepFit(
        w1, bias, a, eta, ridge, val_loss, grids["etas"], grids["ridges"], net.activation
    )
