"""The variants as data, the regularizers and the training objective (docs/science.md §5).

A *model* is any pytree with the methods `prepare(x, order)`, `zeros()`, `initial_output(prep)`,
`full(u, prep)`, `linear_term(u, prep)`, `quadratic_term(u, prep)`, `linear_and_quadratic(u,
prep)` and `taylor_terms(u, prep, order)`, where `u` is the displacement U from the initial
parameters and `order` in `prepare` the highest Taylor order that will be asked of that prep (a
hint: what depends on x alone up to that order may be computed there once): `jaxntk.TwoLayer`
(closed forms) and `jaxntk.TaylorModel` (any `apply_fn(params, x)`, exact Taylor terms by Taylor
mode, hoisted by partial evaluation).

Variants (prediction used for training → prediction used for evaluation), with f0 = f(x; W0),
exactly 0 for the two-layer network's symmetric init, kept for models where it is not:

    full         f(x; W0 + U)
    ntk          f0 + f_L(x; U)
    quadntk      f0 + f_Q(x; U)                 starts from a small random U: ∇f_Q = 0 at U = 0
    randomized   f(x; W0 + S U), fresh signs S  evaluated as E_S f = ½[f(W0 + U) + f(W0 − U)]
    ntk+quadntk  f0 + f_L + f_Q
    regularized  f0 + f_L + f_Q, with the good-direction regularizer on by default

Objective, with per-sample means (the scale convention of this library):

    L(U) = (1/n) Σ_i (y_i − f(x_i; U))² + λ_b R_bulk(U) + λ_p R_pop(U) + λ_4 R_24(U)
    R_bulk(U) = (1/n) ‖(I − U_k U_kᵀ) f_L(X; U)‖²       bulk NTK output on the training set
    R_pop(U)  = E_x f_L(x; P_⊥ U)²                        on fresh samples every step
    R_24(U)   = (Σ_r ‖u_r‖⁴)² = ‖U‖_{2,4}^8               rows u_r along each leaf's first axis

The authors' figure weighs R_bulk summed over the training points (docs/science.md §7): their λ_1 is
λ_b / n here; `Regularizer.from_sum_scale` converts.

Models with several outputs per input, f(x) of shape (n, *out), train on either data loss of
`LOSSES` (chosen by `jaxntk.train(..., loss=...)`):

    "mse"            (1/N) Σ (y − f)² over all N = n·|out| output entries; y shaped like f
    "cross_entropy"  (1/n) Σ_i [logsumexp(f(x_i)) − f(x_i)[y_i]], logits on the last output
                     axis, y integer class labels of shape (n, *out[:-1]); also reports accuracy

With one output per input "mse" is the objective above, unchanged. R_24 holds for any model.
R_bulk and R_pop hold for any output shape too: the good directions of outputs (n, *out) with
c = |out| entries per input live in the n·c training output entries (`jaxntk.spectral`,
`Regularizer.outputs`: J's own top k, "full", or the traced kernel's top k per output, "traced"),
and both are means over all output entries, like "mse":

    R_bulk(U) = (1/(n·c)) ‖(I − Π_k) vec f_L(X; U)‖²   Π_k = U_k U_kᵀ ("full"), U_k U_kᵀ ⊗ I_c
    R_pop(U)  = (1/c) E_x ‖f_L(x; P_⊥ U)‖²             ("traced"); c = 1: the formulas above

R_pop's fresh inputs come from the task's input law (`Task.distribution`) or, for a task without
one (a user's data), from held-out unlabelled inputs (`Regularizer.pop_inputs`). The shares of the
target parts are reported only when the task's parts are shaped like the outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import diagnostics, spectral
from jaxntk.targets import sample_inputs

Array = jax.Array

__all__ = [
    "LINEAR_VARIANTS",
    "LOSSES",
    "PAPER_VARIANTS",
    "VARIANTS",
    "Data",
    "Regularizer",
    "Variant",
    "VariantObjective",
    "bulk_penalty",
    "check_targets",
    "cross_entropy_loss",
    "get_variant",
    "mean_squared_error",
    "norm24_penalty",
    "population_penalty",
    "random_signs",
]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the variants table: how a model predicts while training and when evaluated.

    Attributes:
        name: the name in docs/science.md §5.
        train_predict: (model, u, prep, key) -> (n,) prediction inside the training loss.
        predict: (model, u, prep) -> (n,) deterministic prediction for train/test losses.
        quadratic: whether the prediction uses f_Q (needs σ'' ≠ 0).
        random_init: whether ∇ = 0 at U = 0, so training must start from a small random U.
        regularized: whether the good-direction regularizer is on by default.
        uses_terms: whether `predict` is f(W0) + f_L + f_Q, so the loss and the evaluation can
            reuse f_L and f_Q computed once (one Taylor-mode pass on the generic path).
        order: k for the order-k Taylor model f(W0) + f_1 + … + f_k (the rows "taylor-k", k ≥ 3,
            computed by the model's `taylor_terms`); 0 for the other rows.

    Example:
        >>> from jaxntk.objectives import get_variant
        >>> v = get_variant("quadntk")  # f0 + f_Q: ∇f_Q = 0 at U = 0
        >>> v.name, v.quadratic, v.random_init, v.regularized
        ('quadntk', True, True, False)
    """

    name: str
    train_predict: Callable[[Any, Any, Any, Array], Array]
    predict: Callable[[Any, Any, Any], Array]
    quadratic: bool
    random_init: bool = False
    regularized: bool = False
    uses_terms: bool = False
    order: int = 0


def _full(model, u, prep):
    return model.full(u, prep)


def _linear(model, u, prep):
    return model.initial_output(prep) + model.linear_term(u, prep)


def _quadratic(model, u, prep):
    return model.initial_output(prep) + model.quadratic_term(u, prep)


def _linear_plus_quadratic(model, u, prep):
    fl, fq = model.linear_and_quadratic(u, prep)
    return model.initial_output(prep) + fl + fq


def _taylor_sum(order: int):
    def predict(model, u, prep):
        return model.initial_output(prep) + sum(model.taylor_terms(u, prep, order))

    predict.__name__ = f"_taylor_{order}"
    return predict


def _taylor_row(order: int) -> Variant:
    """The order-k Taylor model f(W0) + f_1 + … + f_k, trained from U = 0 like ntk+quadntk."""
    fn = _taylor_sum(order)
    return Variant(f"taylor-{order}", _deterministic(fn), fn, quadratic=True, order=order)


def _even_part(model, u, prep):
    """E_S f(W0 + S U) for per-row signs of a separable model: ½[f(W0 + U) + f(W0 − U)]."""
    neg = jax.tree_util.tree_map(jnp.negative, u)
    return 0.5 * (model.full(u, prep) + model.full(neg, prep))


def _randomized_train(model, u, prep, key):
    return model.full(random_signs(key, u), prep)


def _deterministic(fn):
    def train_predict(model, u, prep, key):
        del key
        return fn(model, u, prep)

    train_predict.__name__ = f"{fn.__name__}_train"
    return train_predict


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("full", _deterministic(_full), _full, quadratic=False),
        Variant("ntk", _deterministic(_linear), _linear, quadratic=False),
        Variant(
            "quadntk", _deterministic(_quadratic), _quadratic, quadratic=True, random_init=True
        ),
        Variant("randomized", _randomized_train, _even_part, quadratic=True),
        Variant(
            "ntk+quadntk",
            _deterministic(_linear_plus_quadratic),
            _linear_plus_quadratic,
            quadratic=True,
            uses_terms=True,
        ),
        Variant(
            "regularized",
            _deterministic(_linear_plus_quadratic),
            _linear_plus_quadratic,
            quadratic=True,
            regularized=True,
            uses_terms=True,
        ),
        _taylor_row(3),
        _taylor_row(4),
    )
}
"""The variants by name: the six of docs/science.md §5 (`PAPER_VARIANTS`: full, ntk, quadntk,
randomized, ntk+quadntk and regularized; the module docstring gives each one's prediction), then
the order-k Taylor models "taylor-3" and "taylor-4" ("ntk" is order 1, "ntk+quadntk" order 2);
`get_variant` makes "taylor-k" for any k ≥ 3.

Example:
    >>> from jaxntk.objectives import VARIANTS
    >>> list(VARIANTS)
    ['full', 'ntk', 'quadntk', 'randomized', 'ntk+quadntk', 'regularized', 'taylor-3', 'taylor-4']
    >>> [name for name, v in VARIANTS.items() if v.quadratic]  # those that need σ'' ≠ 0
    ['quadntk', 'randomized', 'ntk+quadntk', 'regularized', 'taylor-3', 'taylor-4']
"""

LINEAR_VARIANTS = frozenset({"ntk"})
"""The variants whose prediction f0 + f_L(U) is linear in U: their tangent kernel is the NTK K_0 at
every U (`jaxntk.diagnostics.measure`'s `linear`)."""

PAPER_VARIANTS = ("full", "ntk", "quadntk", "randomized", "ntk+quadntk", "regularized")
"""The six variants of the paper's comparison (docs/science.md §5)."""


def get_variant(name: str) -> Variant:
    """The row of `VARIANTS` called `name`, or the order-k Taylor model for "taylor-k", k ≥ 3.

    Args:
        name: a name in `VARIANTS`, or "taylor-k" with k ≥ 3.

    Returns:
        The `Variant`.

    Raises:
        ValueError: `name` is not a variant; the message lists the choices.

    Example:
        >>> from jaxntk.objectives import get_variant
        >>> v = get_variant("regularized")
        >>> v.regularized, v.uses_terms
        (True, True)
        >>> get_variant("taylor-5").order
        5
        >>> get_variant("lazy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: unknown variant 'lazy'; expected one of ['full', 'ntk', ...] or 'taylor-k' ...3
    """
    if isinstance(name, str) and name in VARIANTS:
        return VARIANTS[name]
    order = _taylor_order(name)
    if order is not None and order >= 3:
        return _taylor_row(order)
    raise ValueError(
        f"unknown variant {name!r}; expected one of {list(VARIANTS)} or 'taylor-k' for k ≥ 3"
    )


def _taylor_order(name: object) -> int | None:
    if isinstance(name, str) and name.startswith("taylor-") and name[7:].isdigit():
        return int(name[7:])
    return None


def mean_squared_error(pred: Array, y: Array) -> Array:
    """(1/N) Σ (y − f)², the mean over all N entries of the outputs (any shape).

    Args:
        pred: the model's outputs f, (n, *out).
        y: the targets, shaped like pred.

    Returns:
        The scalar loss.

    Example:
        >>> mean_squared_error(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]))
        Array(2.5, dtype=float32)
    """
    return jnp.mean((y - pred) ** 2)


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
    """(1/n) Σ_i [logsumexp(f(x_i)) − f(x_i)[y_i]], softmax cross-entropy on integer labels.

    Args:
        logits: the model's outputs, (n, *rest, c), classes on the last axis.
        labels: integer class labels in [0, c), (n, *rest).

    Returns:
        The scalar loss, a mean over all labels.

    Example:
        >>> cross_entropy_loss(jnp.zeros((2, 4)), jnp.array([0, 3]))  # uniform: log 4
        Array(1.3862944, dtype=float32)
    """
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def _accuracy(logits: Array, labels: Array) -> Array:
    predicted = jnp.argmax(logits, axis=-1).astype(labels.dtype)
    return jnp.mean((predicted == labels).astype(logits.dtype))


LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "mse": mean_squared_error,
    "cross_entropy": cross_entropy_loss,
}
"""The data losses by name: (outputs, targets) -> scalar."""


def check_targets(loss: str, y: Any, output_shape: tuple[int, ...], name: str, x_name: str) -> None:
    """ValueError naming `name` unless y fits the model's outputs (of `output_shape`) for `loss`.

    "mse" needs float targets shaped like the outputs; "cross_entropy" needs integer labels in
    [0, c) for the outputs' c classes on their last axis, shaped like the outputs without it.
    Runs in Python on concrete values, before anything compiles.

    Args:
        loss: a name in `LOSSES`.
        y: the targets, (n, ...).
        output_shape: the model's outputs on the matching inputs, (n, *out).
        name: the targets' name in the error (e.g. "y_train").
        x_name: the inputs' name in the error (e.g. "x_train").

    Raises:
        ValueError: for an unknown loss or targets that do not fit.

    Example:
        >>> check_targets("cross_entropy", np.array([0, 12]), (2, 10), "y_train", "x_train")
        Traceback (most recent call last):
        ...
        ValueError: y_train holds class 12 but the model has 10 outputs (classes 0 to 9)
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")
    shape, dtype = np.shape(y), np.dtype(y.dtype) if hasattr(y, "dtype") else np.result_type(y)
    n = output_shape[0]
    if len(shape) < 1 or shape[0] != n:
        raise ValueError(f"{name} has {shape[0] if shape else 0} rows but {x_name} has {n}")
    integer = np.issubdtype(dtype, np.integer)
    if loss == "mse":
        if integer:
            raise ValueError(
                f"{name} holds integer labels ({dtype}); integer labels need "
                "loss='cross_entropy' (or one-hot float targets for 'mse')"
            )
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(f"{name} must hold float targets for loss='mse', got {dtype}")
        if shape != tuple(output_shape):
            raise ValueError(
                f"{name} has shape {shape} but the model's outputs on {x_name} have shape "
                f"{tuple(output_shape)}"
            )
        return
    if not integer:
        raise ValueError(
            f"{name} must hold integer class labels for loss='cross_entropy', got {dtype}"
        )
    if len(output_shape) < 2:
        raise ValueError(
            f"loss='cross_entropy' needs logits, outputs (n, ..., c); the model's outputs on "
            f"{x_name} have shape {tuple(output_shape)}"
        )
    if shape != tuple(output_shape[:-1]):
        raise ValueError(
            f"{name} has shape {shape} but the labels of outputs of shape {tuple(output_shape)} "
            f"have shape {tuple(output_shape[:-1])}"
        )
    classes = output_shape[-1]
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels.max() if labels.max() >= classes else labels.min()
        raise ValueError(
            f"{name} holds class {bad} but the model has {classes} outputs "
            f"(classes 0 to {classes - 1})"
        )


def random_signs(key: Array, u: Any) -> Any:
    """S U: every row of every leaf (its first axis: a neuron of an (m, d) layer) times ±1.

    Bai & Lee's randomization: with independent Rademacher signs per neuron, E_S f_L(SU) = 0 and
    f_Q(SU) = f_Q(U) for a model whose Hessian does not couple different neurons.

    Args:
        key: PRNG key (one subkey per leaf).
        u: a params-shaped pytree U; each leaf's rows (first axis) are its neurons.

    Returns:
        S U, shaped like u: each row of each leaf multiplied by an independent ±1.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.objectives import random_signs
        >>> u = jnp.arange(1.0, 7.0).reshape(3, 2)
        >>> su = random_signs(jax.random.PRNGKey(0), u)
        >>> su.shape, bool(jnp.all(jnp.abs(su) == u))
        ((3, 2), True)
        >>> bool(jnp.all(su[:, 0] * su[:, 1] > 0))  # one sign per row
        True
    """
    leaves, treedef = jax.tree_util.tree_flatten(u)
    keys = jax.random.split(key, len(leaves))
    signed = []
    for k, leaf in zip(keys, leaves, strict=True):
        s = jax.random.rademacher(k, leaf.shape[:1], dtype=leaf.dtype)
        signed.append(leaf * s.reshape(s.shape + (1,) * (leaf.ndim - 1)))
    return jax.tree_util.tree_unflatten(treedef, signed)


def bulk_penalty(dirs: Any, f_linear_train: Array) -> Array:
    """R_bulk = (1/n) ‖(I − U_k U_kᵀ) f_L(X; U)‖²: the NTK's training output outside its top-k
    directions, as a per-sample mean.

    The mean square of `jaxntk.spectral.bulk_residual` (docs/science.md §5); for outputs
    (n, *out) of c entries each, the mean over all n·c entries, (1/(n·c)) ‖(I − Π_k) vec f_L‖²,
    as "mse" is (Π_k the projector of dirs: U_k U_kᵀ, or U_k U_kᵀ ⊗ I_c for "traced").

    Args:
        dirs: the top-k directions on the training inputs (`jaxntk.spectral.good_directions`).
        f_linear_train: (n, *out) f_L(X_train; U), (n,) for one output.

    Returns:
        () R_bulk.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions
        >>> from jaxntk.objectives import bulk_penalty
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> round(float(bulk_penalty(dirs, dirs.u_k @ jnp.ones(5))), 6)  # inside the top-k: 0
        0.0
        >>> f = net.linear_term(jax.random.normal(jax.random.PRNGKey(2), (40, 5)), prep)
        >>> bool(0 < bulk_penalty(dirs, f) < jnp.mean(f**2))
        True
    """
    r = spectral.bulk_residual(dirs, f_linear_train)
    return jnp.mean(r**2)


def population_penalty(model: Any, prep_train: Any, dirs: Any, u: Any, prep_pop: Any) -> Array:
    """R_pop = E_x f_L(x; P_⊥ U)², estimated on the prepared samples `prep_pop` (a mean over the
    samples and, for several outputs, over their output entries).

    Args:
        model: a model of the protocol (module docstring).
        prep_train: `model.prepare(x_train)`, the inputs dirs were computed on.
        dirs: the top-k directions (`jaxntk.spectral.good_directions`).
        u: a params-shaped displacement U.
        prep_pop: `model.prepare(x)` of the samples x that estimate E_x.

    Returns:
        () the mean of f_L(x; P_⊥ U)² over the samples.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions
        >>> from jaxntk.objectives import population_penalty
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> prep_pop = net.prepare(jax.random.normal(jax.random.PRNGKey(3), (100, 5)))
        >>> float(population_penalty(net, prep, dirs, net.zeros(), prep_pop))
        0.0
        >>> u = jax.random.normal(jax.random.PRNGKey(2), (40, 5))
        >>> population_penalty(net, prep, dirs, u, prep_pop).shape
        ()
    """
    good = spectral.project_good(model, prep_train, dirs, u)
    return jnp.mean(model.linear_term(good, prep_pop) ** 2)


def norm24_penalty(u: Any) -> Array:
    """R_24 = ‖U‖_{2,4}^8 = (Σ_r ‖u_r‖⁴)², rows along the first axis of every leaf (Bai & Lee).

    The sum Σ_r runs over the rows of all leaves together; a scalar leaf counts as one row.

    Args:
        u: a params-shaped pytree U.

    Returns:
        () R_24.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.objectives import norm24_penalty
        >>> float(norm24_penalty(jnp.array([[1.0, 0.0], [0.0, 2.0]])))  # (1⁴ + 2⁴)² = 17²
        289.0
    """
    total = sum(
        jnp.sum(jnp.sum(leaf.reshape(leaf.shape[0] if leaf.ndim else 1, -1) ** 2, axis=1) ** 2)
        for leaf in jax.tree_util.tree_leaves(u)
    )
    return total**2


#: λ_b of the "regularized" variant when no weight is given: 1 on the per-sample mean, the
#: authors' figure's λ_1 = 1e-3 on the sum over their n = 1000 training points.
DEFAULT_BULK = 1.0


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """Weights of the good-direction regularizer, each on its per-sample-mean term.

    Each weight is a float or a sequence; sequences (broadcast to one length L) define a sweep
    that `jaxntk.train` runs as L vmapped runs in one compiled program.

    Attributes:
        bulk: λ_b on R_bulk = (1/n)‖(I − U_k U_kᵀ) f_L(X; U)‖² (the mean over training points).
        pop: λ_p on R_pop = E_x f_L(x; P_⊥U)², fresh samples every step.
        norm24: λ_4 on R_24 = ‖U‖_{2,4}^8.
        k: number of top NTK directions kept out (default: d, as the authors; for outputs of
            c entries per input, d·c with outputs "full" and d with "traced": d per output).
        pop_samples: fresh samples per step for R_pop.
        outputs: for several outputs per input, the kernel whose top-k directions are kept
            out: "full" (the (n·c) × (n·c) J Jᵀ) or "traced" (the n × n mean over outputs,
            each direction applied to every output); `jaxntk.spectral.OUTPUTS`, docs/science.md
            §5. The same for one output.
        pop_inputs: held-out unlabelled inputs (n_pop, ...) shaped like the training inputs:
            R_pop draws its pop_samples inputs at random from these every step instead of from
            the task's input law; needed for R_pop on a task whose inputs have no law to draw
            from (a user's data of other than (n, d) inputs), and the right choice for real
            data. None (default): the task's law.

    Example:
        >>> from jaxntk.objectives import Regularizer
        >>> reg = Regularizer(bulk=[0.0, 1.0, 10.0], norm24=1e-3)  # a sweep of three runs
        >>> {name: w.tolist() for name, w in reg.weights().items()}
        {'bulk': [0.0, 1.0, 10.0], 'pop': [0.0, 0.0, 0.0], 'norm24': [0.001, 0.001, 0.001]}
    """

    bulk: float | Sequence[float] = 0.0
    pop: float | Sequence[float] = 0.0
    norm24: float | Sequence[float] = 0.0
    k: int | None = None
    pop_samples: int = 100
    outputs: str = "full"
    pop_inputs: Any = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_sum_scale(cls, bulk_sum: float | Sequence[float], n: int, **kwargs) -> Regularizer:
        """Regularizer whose bulk weight is given on the sum over the n training points, the
        scale of the authors' figure (their λ_1): λ_b = n · λ_1 on the per-sample mean.

        Args:
            bulk_sum: λ_1, a float or a sequence (a sweep), on (n R_bulk), the sum over points.
            n: the number of training points.
            **kwargs (Any): the other fields (pop, norm24, k, pop_samples, outputs,
                pop_inputs).

        Returns:
            The `Regularizer` with bulk = n · bulk_sum (a float, or a list for a sequence).

        Example:
            >>> from jaxntk.objectives import Regularizer
            >>> Regularizer.from_sum_scale(1e-3, n=1000).bulk  # the authors' figure
            1.0
            >>> Regularizer.from_sum_scale([1e-4, 1e-3], n=1000, k=5)
            Regularizer(bulk=[0.1, 1.0], pop=0.0, norm24=0.0, k=5, pop_samples=100, outputs='full')
        """
        return cls(bulk=(np.asarray(bulk_sum, dtype=np.float64) * n).tolist(), **kwargs)

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as float arrays of one common length L (a sweep of L settings).

        Floats and length-1 sequences are broadcast to the common length L (1 if none is longer).

        Returns:
            {"bulk": λ_b, "pop": λ_p, "norm24": λ_4}, each an (L,) float64 NumPy array.

        Raises:
            ValueError: a weight that is not a float or 1-D sequence, is negative or not
                finite, or sequences of different lengths (> 1).
        """
        arrs = {}
        for name in ("bulk", "pop", "norm24"):
            v = np.atleast_1d(np.asarray(getattr(self, name), dtype=np.float64))
            if v.ndim != 1 or v.size == 0:
                raise ValueError(f"Regularizer.{name} must be a float or a 1-D sequence, got {v}")
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise ValueError(f"Regularizer.{name} must be finite and ≥ 0, got {v.tolist()}")
            arrs[name] = v
        sizes = {v.size for v in arrs.values()} - {1}
        if len(sizes) > 1:
            raise ValueError(
                "Regularizer weights given as sequences must have one common length, got "
                + ", ".join(f"{k}: {v.size}" for k, v in arrs.items())
            )
        size = sizes.pop() if sizes else 1
        return {k: np.broadcast_to(v, (size,)).copy() for k, v in arrs.items()}

    def validate(self, n: int, outputs: int = 1) -> None:
        """ValueError for a k, pop_samples or outputs out of range (k ≤ the rows of the kernel).

        Args:
            n: the number of training points.
            outputs: the number c of output entries per input: k may reach n·c with
                outputs="full".

        Returns:
            None, when k is None or an int in [1, n] (n·c for "full"), pop_samples an int ≥ 1
            and outputs in `jaxntk.spectral.OUTPUTS`.

        Raises:
            ValueError: k, pop_samples or outputs out of range, or k or pop_samples not an int.

        Example:
            >>> from jaxntk.objectives import Regularizer
            >>> Regularizer(k=5).validate(n=10)
            >>> Regularizer(k=50).validate(n=10)
            Traceback (most recent call last):
                ...
            ValueError: Regularizer.k must be an int in [1, n = 10], got 50
            >>> Regularizer(k=50).validate(n=10, outputs=10)  # 50 of the 100 output entries
        """
        if self.outputs not in spectral.OUTPUTS:
            raise ValueError(
                f"Regularizer.outputs must be one of {list(spectral.OUTPUTS)}, got {self.outputs!r}"
            )
        if self.outputs == "full" and outputs > 1:
            high, what = n * outputs, f"n·c = {n}·{outputs}"
        else:
            high, what = n, f"n = {n}"
        if self.outputs == "traced" and outputs > 1:
            what += ", k per output for outputs='traced'"
        if self.k is not None and (not isinstance(self.k, int) or not 1 <= self.k <= high):
            raise ValueError(f"Regularizer.k must be an int in [1, {what}], got {self.k!r}")
        if not isinstance(self.pop_samples, int) or self.pop_samples < 1:
            raise ValueError(
                f"Regularizer.pop_samples must be an int ≥ 1, got {self.pop_samples!r}"
            )

    def default_k(self, d: int, outputs: int = 1) -> int:
        """k, or its default: d for one output or "traced" (d per output), d·c for "full".

        Args:
            d: the input dimension (the number of degree-1 spikes of the kernel).
            outputs: the number c of output entries per input.

        Returns:
            The number of top directions kept out.

        Example:
            >>> from jaxntk.objectives import Regularizer
            >>> Regularizer().default_k(8, outputs=10)  # d per class
            80
            >>> Regularizer(outputs="traced").default_k(8, outputs=10)  # d, for every class
            8
            >>> Regularizer(k=3).default_k(8, outputs=10)
            3
        """
        if self.k is not None:
            return self.k
        return d * outputs if self.outputs == "full" else d


class Data(NamedTuple):
    """Everything a training run reads, as arrays: passed to the compiled program as arguments.

    A NamedTuple (a pytree). The prep_* fields are filled in by `VariantObjective.prepare` inside
    the compiled program, so that they are computed once per chunk and never enter a jit cache
    key.

    Attributes:
        model: the model (`jaxntk.TwoLayer` or `jaxntk.TaylorModel`).
        x_train: (n, d) training inputs.
        x_test: (n_test, d) test inputs.
        y_train: (n, *out) float targets shaped like the model's outputs on x_train, or, for
            "cross_entropy", integer class labels (n, *out[:-1]) (see `check_targets`).
        y_test: (n_test, ...) test targets, likewise.
        parts_test: (P, n_test, *out) value of each target part on the test inputs (for the
            share of each part learned).
        dirs: the good directions (`jaxntk.spectral.good_directions`) or None.
        x_pop: fixed inputs on which evaluations estimate R_pop (default: the test inputs).
        prep_train: `model.prepare(x_train)`, or None before `VariantObjective.prepare`.
        prep_test: `model.prepare(x_test)`, or None before `VariantObjective.prepare`.
        prep_pop: `model.prepare(x_pop)` when dirs is given, else None.
        laziness: the `jaxntk.diagnostics.Reference` on the first `VariantObjective.probe`
            training inputs, filled in by `VariantObjective.prepare` when probe > 0, else None.
        pop_inputs: held-out unlabelled inputs that R_pop in the training loss draws its
            samples from (`Regularizer.pop_inputs`), or None: fresh draws from
            `VariantObjective.distribution`.
    """

    model: Any
    x_train: Array
    x_test: Array
    y_train: Array
    y_test: Array
    parts_test: Array
    dirs: Any = None
    x_pop: Array | None = None
    prep_train: Any = None
    prep_test: Any = None
    prep_pop: Any = None
    laziness: Any = None
    pop_inputs: Array | None = None


@dataclasses.dataclass(frozen=True)
class VariantObjective:
    """The training objective of one variant: hashable (a static argument of the compiled loop).

    Implements the trainer's objective protocol: `prepare(data)`, `init(key, data)`,
    `loss(u, data, hyper, key)` and `evaluate(u, data, hyper)`, with hyper = {"bulk": λ_b,
    "pop": λ_p, "norm24": λ_4}.

    Attributes:
        variant: a name in `VARIANTS`.
        init_scale: rows of the initial U have norm ≈ init_scale (0: start at U = 0).
        use_bulk: whether R_bulk is computed at all (needs `Data.dirs`).
        use_pop: whether R_pop is computed at all (needs `Data.dirs`).
        use_norm24: whether R_24 is computed at all.
        pop_samples: fresh samples per step for R_pop.
        distribution: the input law of R_pop's fresh samples, "gaussian" or "sphere" (unused
            when `Data.pop_inputs` is given: the samples are drawn from those).
        d: the input dimension of R_pop's fresh samples.
        data_loss: a name in `LOSSES`, the loss on the data ("mse": the history's "mse" term;
            "cross_entropy": its "cross_entropy" term and the accuracies).
        probe: P > 0 records the laziness diagnostics (`jaxntk.diagnostics`) at every
            evaluation, on the first P training inputs; 0 (default) records none.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.objectives import Data, VariantObjective
        >>> from jaxntk.spectral import good_directions
        >>> from jaxntk.targets import paper_task
        >>> task = paper_task(jax.random.PRNGKey(0), d=5, n=30, n_test=50)
        >>> net = TwoLayer.init(jax.random.PRNGKey(1), d=5, m=40)
        >>> dirs = good_directions(net, net.prepare(task.x_train), k=5)
        >>> data = Data(net, task.x_train, task.x_test, task.y_train, task.y_test,
        ...             task.parts_test, dirs=dirs)
        >>> obj = VariantObjective("regularized", use_bulk=True, use_pop=True, pop_samples=20, d=5)
        >>> data = obj.prepare(data)
        >>> u = obj.init(jax.random.PRNGKey(2), data)  # U = 0
        >>> hyper = {"bulk": 1.0, "pop": 0.5, "norm24": 0.0}
        >>> total, terms = obj.loss(u, data, hyper, jax.random.PRNGKey(3))
        >>> sorted(terms), bool(jnp.isclose(total, jnp.mean(task.y_train**2)))
        (['bulk', 'mse', 'pop'], True)
        >>> metrics = obj.evaluate(u, data, hyper)
        >>> metrics["share_linear"].shape, sorted(metrics)[:4]
        ((2,), ['bulk', 'norm24', 'pop', 'share_linear'])
    """

    variant: str
    init_scale: float = 0.0
    use_bulk: bool = False
    use_pop: bool = False
    use_norm24: bool = False
    pop_samples: int = 100
    distribution: str = "gaussian"
    d: int = 1
    data_loss: str = "mse"
    probe: int = 0

    def prepare(self, data: Data) -> Data:
        """`data` with the model's per-input constants (σ'(x W0ᵀ), linearizations) filled in.

        Args:
            data: the run's `Data`.

        Returns:
            `data` with prep_train, prep_test, (when dirs is given) prep_pop and (when probe > 0)
            laziness set.
        """
        model = data.model
        x_pop = data.x_test if data.x_pop is None else data.x_pop
        train_order = _train_order(get_variant(self.variant))
        if self.probe:
            p = self.probe
            ref = diagnostics.reference(model, data.x_train[:p], data.y_train[:p], train_order)
            data = data._replace(laziness=ref)
        return data._replace(
            prep_train=model.prepare(data.x_train, order=train_order),
            # the evaluation's f_L / f_Q shares read the quadratic term of every variant
            prep_test=model.prepare(data.x_test, order=max(2, train_order)),
            # R_pop reads f_L only
            prep_pop=model.prepare(x_pop, order=1) if data.dirs is not None else None,
        )

    def init(self, key: Array, data: Data) -> Any:
        """U at step 0: zeros, or N(0, init_scale²/fan_in) entries (rows of norm ≈ init_scale).

        fan_in is the size of a row of each leaf (the product of its shape after the first axis).

        Args:
            key: PRNG key (one subkey per leaf); unused when init_scale is 0.
            data: the run's `Data` (its model gives the shapes).

        Returns:
            U, shaped like `data.model.zeros()`.
        """
        u = data.model.zeros()
        if self.init_scale == 0.0:
            return u
        leaves, treedef = jax.tree_util.tree_flatten(u)
        keys = jax.random.split(key, len(leaves))
        fan_in = [max(1, int(np.prod(leaf.shape[1:]))) for leaf in leaves]
        new = [
            self.init_scale / np.sqrt(f) * jax.random.normal(k, leaf.shape, leaf.dtype)
            for k, leaf, f in zip(keys, leaves, fan_in, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, new)

    def loss(self, u: Any, data: Data, hyper: dict[str, Array], key: Array) -> tuple[Array, dict]:
        """Training loss: the data loss ((1/n) Σ (y − f)² for "mse", `LOSSES`) + Σ λ R, and its
        parts.

        Args:
            u: the displacement U.
            data: the run's `Data`, after `prepare`.
            hyper: {"bulk": λ_b, "pop": λ_p, "norm24": λ_4}, () each; only the active
                regularizers' weights are read.
            key: PRNG key for the variant's randomness (fresh signs) and R_pop's fresh samples.

        Returns:
            (total, terms): the () loss and a dict with the data loss (under its name, "mse"
            or "cross_entropy") and each active regularizer's value ("bulk", "pop", "norm24"),
            unweighted. A model with a `loss_weight` (`jaxntk.scaling.Scaled`: 1/α²) has its
            total multiplied by it (Chizat, Oyallon & Bach's objective); the terms are not.
        """
        v = get_variant(self.variant)
        model = data.model
        k_pred, k_pop = jax.random.split(key)
        pred, f_linear, _ = _prediction_and_terms(v, model, u, data.prep_train)  # R_bulk reuses f_L
        if pred is None:
            pred = v.train_predict(model, u, data.prep_train, k_pred)
        fit = LOSSES[self.data_loss](pred, data.y_train)
        regs = self._regularizers(u, data, k_pop, f_linear)
        total = fit + sum(hyper[name] * value for name, value in regs.items())
        weight = getattr(model, "loss_weight", None)
        if weight is not None:  # a `jaxntk.scaling.Scaled` model: 1/α² on the whole objective
            total = weight * total
        return total, {self.data_loss: fit, **regs}

    def evaluate(self, u: Any, data: Data, hyper: dict[str, Array]) -> dict[str, Array]:
        """Train/test loss of the evaluation prediction, regularizer values, ‖U‖, the accuracies
        for "cross_entropy", and, for "mse" with parts shaped like the outputs, the share of each
        target part carried by f_L and by f_Q on the test set, (P,) each.

        The share of part p carried by f is ⟨f, part_p⟩ / ⟨part_p, part_p⟩ on the test inputs:
        1 when f carries exactly that part.

        Args:
            u: the displacement U.
            data: the run's `Data`, after `prepare`.
            hyper: the weights (unused: evaluations report the unweighted values).

        Returns:
            A dict of () arrays "train_loss", "test_loss", "u_norm", "norm24", and, when
            `data.dirs` is given, "bulk" and "pop" (R_pop on `data.x_pop`); for "cross_entropy"
            "train_accuracy" and "test_accuracy"; and, for "mse" with `data.parts_test` shaped
            (P, *y_test.shape), the (P,) arrays "share_linear", "share_quadratic". With
            probe > 0 (`Data.laziness` set): "kernel_change", "alignment", "displacement"
            (`jaxntk.diagnostics.measure`), "probe_outputs" (the prediction on the probe, (P,
            ...)) and, for "full", "distance_linear" and "distance_quadratic"
            (`jaxntk.diagnostics.taylor_distances` on the test inputs).
        """
        del hyper
        model = data.model
        v = get_variant(self.variant)
        loss = LOSSES[self.data_loss]
        shares = self.data_loss == "mse" and data.parts_test.shape[1:] == data.y_test.shape
        train_pred, fl_train, _ = _prediction_and_terms(v, model, u, data.prep_train)
        if train_pred is None:
            train_pred = v.predict(model, u, data.prep_train)
            fl_train = model.linear_term(u, data.prep_train) if data.dirs is not None else None
        test_pred, fl, fq = _prediction_and_terms(v, model, u, data.prep_test)
        if test_pred is None:
            test_pred = v.predict(model, u, data.prep_test)
            if shares:
                fl, fq = model.linear_and_quadratic(u, data.prep_test)
        out = {
            "train_loss": loss(train_pred, data.y_train),
            "test_loss": loss(test_pred, data.y_test),
            "u_norm": jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(u))),
        }
        if shares:
            out["share_linear"] = _shares(fl, data.parts_test)
            out["share_quadratic"] = _shares(fq, data.parts_test)
        if self.data_loss == "cross_entropy":
            out["train_accuracy"] = _accuracy(train_pred, data.y_train)
            out["test_accuracy"] = _accuracy(test_pred, data.y_test)
        if data.dirs is not None:
            out["bulk"] = bulk_penalty(data.dirs, fl_train)
            out["pop"] = population_penalty(model, data.prep_train, data.dirs, u, data.prep_pop)
        out["norm24"] = norm24_penalty(u)
        if data.laziness is not None:
            out.update(self._laziness(v, model, u, data, test_pred, fl, fq))
        return out

    def _laziness(self, v, model, u, data, test_pred, fl, fq) -> dict[str, Array]:
        """The diagnostics of `jaxntk.diagnostics` at U: kernel change, alignment, displacement,
        the outputs on the probe, and for "full" the test distances to its Taylor models."""
        ref = data.laziness

        def predict(w, prep):
            return v.predict(model, w, prep)

        # the network's own kernel in closed form where there is one: no per-example gradients
        kernel = diagnostics.network_kernel(model, u, ref.prep) if v.name == "full" else None
        out = diagnostics.measure(predict, u, ref, linear=v.name in LINEAR_VARIANTS, kernel=kernel)
        out["probe_outputs"] = predict(u, ref.prep)
        if v.name == "full":
            if fl is None:
                fl, fq = model.linear_and_quadratic(u, data.prep_test)
            f0 = model.initial_output(data.prep_test)
            dist = diagnostics.taylor_distances(test_pred, f0, fl, fq)
            out["distance_linear"], out["distance_quadratic"] = dist["linear"], dist["quadratic"]
        return out

    def _regularizers(
        self, u: Any, data: Data, key: Array, f_linear: Array | None = None
    ) -> dict[str, Array]:
        """The active regularizers at U; `f_linear` is f_L(X; U) on the training inputs when the
        caller already has it."""
        model = data.model
        regs = {}
        if self.use_bulk:
            if f_linear is None:
                f_linear = model.linear_term(u, data.prep_train)
            regs["bulk"] = bulk_penalty(data.dirs, f_linear)
        if self.use_pop:
            if data.pop_inputs is None:
                x = sample_inputs(key, self.pop_samples, self.d, self.distribution)
                x = x.astype(data.x_train.dtype)  # y_train holds integers for cross-entropy
            else:  # held-out unlabelled inputs: pop_samples of them, drawn with replacement
                rows = jax.random.randint(key, (self.pop_samples,), 0, data.pop_inputs.shape[0])
                x = data.pop_inputs[rows]
            prep_pop = model.prepare(x, order=1)
            regs["pop"] = population_penalty(model, data.prep_train, data.dirs, u, prep_pop)
        if self.use_norm24:
            regs["norm24"] = norm24_penalty(u)
        return regs


def _train_order(v: Variant) -> int:
    """The highest Taylor order that a variant's training prediction reads (the `order` hint of
    the model's `prepare`): its k for taylor-k, 2 for the quadratic terms, else 1."""
    if v.order:
        return v.order
    return 2 if v.uses_terms or v.predict is _quadratic else 1


def _prediction_and_terms(v: Variant, model: Any, u: Any, prep: Any):
    """(f0 + Σ terms, f_L, f_Q) for the variants whose prediction is a sum of Taylor terms, from one
    pass that the loss and the evaluation then share; (None, None, None) for the others."""
    if v.uses_terms:
        f_linear, f_quad = model.linear_and_quadratic(u, prep)
        return model.initial_output(prep) + f_linear + f_quad, f_linear, f_quad
    if v.order:
        terms = model.taylor_terms(u, prep, v.order)
        return model.initial_output(prep) + sum(terms), terms[0], terms[1]
    return None, None, None


def _shares(f: Array, parts: Array) -> Array:
    """⟨f, part_p⟩ / ⟨part_p, part_p⟩ for each part p (over all output entries): 1 when f
    carries exactly that part."""
    parts = parts.reshape(parts.shape[0], f.size)
    return (parts @ f.reshape(f.size)) / jnp.sum(parts**2, axis=1)
