"""The laziness scale of Chizat, Oyallon & Bach and the mean-field two-layer network.

**Laziness scale** (Chizat, Oyallon & Bach, *On lazy training in differentiable programming*,
NeurIPS 2019). For a model h(θ) and a scale α > 0, train

    h_α(θ) = α · (h(θ) − h(θ0))       on the objective     F_α(θ) = (1/α²) · R(h_α(θ)).

With θ = θ0 + U (the trainer's displacement) `Scaled(model, alpha)` is the model h_α: its output is
α·(f(θ0 + U) − f(θ0)), its Taylor terms are α·f_k(U) (k ≥ 1), its initial output is 0. As α → ∞
the trajectory of h_α stays within O(1/α) of that of its linearization α·f_L (the NTK; the `ntk`
variant of the scaled model, whose output trajectory under GD does not depend on α at all); small
α lets the features move. Geiger, Spigler, Jacot & Wyart (2020) put the crossover between the
regimes of the NTK-parameterized two-layer network at α√m of order 1.

The 1/α² on the objective is `Scaled.loss_weight`, which the training objective
(`jaxntk.objectives.VariantObjective.loss`) multiplies into the whole objective, so every optimizer
sees F_α itself. For plain gradient descent (and heavy-ball momentum) that is the same as a
learning rate η/α² on the unweighted loss,

    U_{t+1} = U_t − η ∇_U [(1/α²) L(U_t)] = U_t − (η/α²) ∇_U L(U_t),

up to rounding; Adam is invariant to a constant factor on the loss (up to its ε), so for it the
weight changes nothing while a learning rate η/α² would. The scale is a leaf of the model, and so
is the weight: runs that differ only in α share one compiled program, and `jaxntk.train` with a
list of scaled models (one per "seed") trains several α in one program.

**Mean-field two-layer network** (Mei, Montanari & Nguyen, *A mean field view of the landscape of
two-layer neural networks*, PNAS 2018): f(x) = (1/m) Σ_j a_j σ(w_j · x), trained by (S)GD whose step
on each neuron, θ_j ← θ_j + 2s (y − f(x)) ∇_θ σ_*(x; θ_j), is of order s whatever m: on the
gradient of the loss, which carries the 1/m, that is a learning rate η·m. The m → ∞ limit is then a
non-trivial flow of the distribution of the w_j (the features move), where the NTK
parameterization f(x) = Σ_j (±1/√m) σ(w_j · x) with learning rate η stays lazy. Here
(`mean_field`): the symmetric initialization of `jaxntk.network.init` with a_r = ±1/m instead of
±1/√m, trained at learning rate η·m (`mean_field_lr`). Since f(x; W0) = 0 at this initialization,
the mean-field network is exactly the laziness scale α = 1/√m of the NTK network,
f_MF = (1/√m)·f_NTK, with 1/α² = m on the objective: α√m = 1, Geiger et al.'s crossover. So
`Scaled(ntk_net, 1/√m)` trained at η is the same run as `mean_field(...)` trained at η·m.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from jaxntk import network
from jaxntk._checks import check_int

Array = jax.Array
PyTree = Any

__all__ = ["Scaled", "mean_field", "mean_field_lr"]


def _check_alpha(alpha: object) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float > 0, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite float > 0, got {alpha!r}")


def _scale(alpha, tree):
    return jax.tree.map(lambda v: alpha * v, tree)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scaled:
    """The model h_α(U) = α·(f(θ0 + U) − f(θ0)) of Chizat, Oyallon & Bach, for any model.

    Implements the model protocol of `jaxntk.objectives` on top of `model` (a `jaxntk.TwoLayer`, a
    `jaxntk.TaylorModel`, or another `Scaled`), so every variant trains through it:

        full(U)            = α·(f(θ0 + U) − f(θ0))
        initial_output     = 0
        linear_term(U)     = α·f_L(U),   quadratic_term(U) = α·f_Q(U),   taylor_terms: α·f_k(U)

    The objective reads `loss_weight` = 1/α² and multiplies it into the training loss (the
    module docstring). α = 1 is the model itself (for the symmetric two-layer network, where
    f(θ0) = 0 exactly, the same numbers).

    A pytree: the model's leaves and α (a leaf, so models that differ only in α share one compiled
    program).

    Attributes:
        model: the model being scaled.
        alpha: the scale α > 0 (a float, or a traced () array inside a program).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.scaling import Scaled
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> lazy = Scaled(net, 10.0)
        >>> prep = lazy.prepare(jax.random.normal(jax.random.PRNGKey(1), (2, 3)))
        >>> u = 0.1 * jnp.ones((4, 3))
        >>> bool(jnp.allclose(lazy.full(u, prep), 10.0 * net.full(u, prep)))
        True
        >>> lazy.initial_output(prep)
        Array([0., 0.], dtype=float32)
    """

    model: Any
    alpha: Any

    def __post_init__(self) -> None:
        # unflattening passes tracers or placeholders: only concrete numbers are checked
        if isinstance(self.alpha, numbers.Number | str | bytes):
            _check_alpha(self.alpha)

    @property
    def rows_are_neurons(self) -> bool:
        """Whether the scaled model's output is a sum over the rows of U (Bai & Lee's signs)."""
        return getattr(self.model, "rows_are_neurons", False)

    @property
    def params0(self) -> PyTree:
        """θ0, the expansion point of the scaled model (`w0` of a `TwoLayer`)."""
        inner = self.model
        return inner.w0 if isinstance(inner, network.TwoLayer) else inner.params0

    @property
    def loss_weight(self) -> float | Array:
        """1/α², the factor that `jaxntk.objectives.VariantObjective.loss` puts on the objective:
        F_α = (1/α²) R(h_α)."""
        return 1.0 / self.alpha**2

    def prepare(self, x: PyTree, order: int | None = None) -> Any:
        """The inner model's `prepare(x, order)`: the scale does not change the constants.

        Args:
            x: the inputs.
            order: the highest Taylor order that will be asked (the protocol's hint).

        Returns:
            The inner model's prepared inputs.
        """
        return self.model.prepare(x) if order is None else self.model.prepare(x, order=order)

    def zeros(self) -> PyTree:
        """U = 0, the inner model's `zeros()`.

        Returns:
            The inner model's zero displacement.
        """
        return self.model.zeros()

    def initial_output(self, prep: Any) -> PyTree:
        """h_α(θ0) = 0, shaped like the inner model's outputs.

        Args:
            prep: `prepare(x)` of the inputs.

        Returns:
            Zeros shaped like f(θ0; x).
        """
        return jax.tree.map(jnp.zeros_like, self.model.initial_output(prep))

    def full(self, u: PyTree, prep: Any) -> PyTree:
        """α·(f(θ0 + U; x) − f(θ0; x)).

        Args:
            u: the displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            The scaled model's outputs, shaped like f(θ0; x).
        """
        f0 = self.model.initial_output(prep)
        return jax.tree.map(lambda f, g: self.alpha * (f - g), self.model.full(u, prep), f0)

    def linear_term(self, u: PyTree, prep: Any) -> PyTree:
        """α·f_L(U), the scaled model's first-order term.

        Args:
            u: the displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            α·f_L(x; U).
        """
        return _scale(self.alpha, self.model.linear_term(u, prep))

    def quadratic_term(self, u: PyTree, prep: Any) -> PyTree:
        """α·f_Q(U), the scaled model's second-order term.

        Args:
            u: the displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            α·f_Q(x; U).
        """
        return _scale(self.alpha, self.model.quadratic_term(u, prep))

    def linear_and_quadratic(self, u: PyTree, prep: Any) -> tuple[PyTree, PyTree]:
        """(α·f_L(U), α·f_Q(U)) from the inner model's one shared pass.

        Args:
            u: the displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            The pair (α·f_L, α·f_Q).
        """
        f_lin, f_quad = self.model.linear_and_quadratic(u, prep)
        return _scale(self.alpha, f_lin), _scale(self.alpha, f_quad)

    def taylor_terms(self, u: PyTree, prep: Any, order: int) -> tuple[PyTree, ...]:
        """(α·f_1(U), …, α·f_k(U)).

        Args:
            u: the displacement U.
            prep: `prepare(x)` of the inputs.
            order: the highest order k ≥ 1.

        Returns:
            A tuple of k scaled terms.
        """
        return tuple(_scale(self.alpha, t) for t in self.model.taylor_terms(u, prep, order))


def mean_field(
    key: Array, d: int, m: int, activation: str = "shifted_sigmoid", dtype: Any = None
) -> network.TwoLayer:
    """The mean-field two-layer network f(x) = Σ_r a_r σ(w_r · x), a_r = ±1/m (Mei et al. 2018).

    The symmetric initialization of `jaxntk.network.init` (the same W0 for the same key) with the
    output weights divided by a further √m: f_MF = f_NTK/√m, still exactly 0 at W0. Train it at
    learning rate `mean_field_lr(lr, m)` = η·m.

    Args:
        key: PRNG key (as for `jaxntk.network.init`).
        d: input dimension, ≥ 1.
        m: width, even and ≥ 2.
        activation: a name in `jaxntk.ACTIVATIONS`.
        dtype: float dtype of w0 and a (default: JAX's default float).

    Returns:
        A `jaxntk.TwoLayer` with a_r = +1/m for r ≤ m/2 and −1/m otherwise.

    Raises:
        TypeError, ValueError: as `jaxntk.network.init`.

    Example:
        >>> import jax
        >>> from jaxntk.scaling import mean_field
        >>> mean_field(jax.random.PRNGKey(0), d=3, m=4).a.tolist()
        [0.25, 0.25, -0.25, -0.25]
    """
    net = network.init(key, d, m, activation=activation, dtype=dtype)
    return dataclasses.replace(net, a=jnp.sign(net.a) / m)


def mean_field_lr(lr: float, m: int) -> float:
    """η·m: the learning rate of the mean-field network on the per-sample-mean loss, so that each
    neuron moves by O(η) per step whatever the width (Mei, Montanari & Nguyen 2018).

    Args:
        lr: the width-free rate η, > 0.
        m: the width, ≥ 1.

    Returns:
        η·m.

    Raises:
        TypeError: m is not an int.
        ValueError: m < 1 or lr not finite and > 0.

    Example:
        >>> from jaxntk.scaling import mean_field_lr
        >>> mean_field_lr(0.5, 4000)
        2000.0
    """
    check_int("m", m, 1)
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite float > 0, got {lr!r}")
    return float(lr) * m
