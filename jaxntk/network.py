"""The paper's two-layer network, its symmetric initialization and closed-form Taylor terms.

    f(x; W) = Σ_{r=1..m} a_r σ(w_r · x),        W = W0 + U ∈ R^{m×d},  a fixed.

Symmetric initialization (Nichani, Bai & Lee 2022; Bai & Lee 2020): m/2 unit rows g_r drawn
uniformly on the sphere are used twice, w0_r = w0_{r+m/2}, with a_r = +1/√m on the first half and
−1/√m on the second, so f(x; W0) = 0 exactly for every x.

Closed-form Taylor terms around W0 in the direction U (docs/science.md §3):

    f_L(x; U) = Σ_r a_r σ'(w0_r · x) (u_r · x)
    f_Q(x; U) = ½ Σ_r a_r σ''(w0_r · x) (u_r · x)²

σ'(x W0ᵀ) and σ''(x W0ᵀ) on a fixed data set do not depend on U: `prepare` computes them once and
every training step reuses them (the fast path; the generic path in `taylor.py` is tested
against it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from jaxntk._checks import check_int
from jaxntk._jet import taylor_coefficients

Array = jax.Array

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Prepared",
    "TwoLayer",
    "check_curvature",
    "get_activation",
    "init",
]


class Activation(NamedTuple):
    """An activation σ with its first and second derivatives, each elementwise.

    Attributes:
        name: the key of this activation in `ACTIVATIONS`.
        fn: σ, array -> array of the same shape.
        d1: σ', elementwise.
        d2: σ'', elementwise (zero almost everywhere for relu).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.network import get_activation
        >>> act = get_activation("shifted_sigmoid")  # σ(z) = sigmoid(z − 1)
        >>> z = jnp.array(1.0)
        >>> float(act.fn(z)), float(act.d1(z)), float(act.d2(z))
        (0.5, 0.25, 0.0)
    """

    name: str
    fn: Callable[[Array], Array]
    d1: Callable[[Array], Array]
    d2: Callable[[Array], Array]


def _shifted_sigmoid(z):
    return jax.nn.sigmoid(z - 1.0)


def _shifted_sigmoid_d1(z):
    s = jax.nn.sigmoid(z - 1.0)
    return s * (1.0 - s)


def _shifted_sigmoid_d2(z):
    s = jax.nn.sigmoid(z - 1.0)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


def _tanh_d1(z):
    return 1.0 - jnp.tanh(z) ** 2


def _tanh_d2(z):
    t = jnp.tanh(z)
    return -2.0 * t * (1.0 - t**2)


def _sigmoid_d1(z):
    s = jax.nn.sigmoid(z)
    return s * (1.0 - s)


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu(z):
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


def _gelu_d1(z):
    return 0.5 * (1.0 + erf(z / math.sqrt(2.0))) + z * _INV_SQRT_2PI * jnp.exp(-0.5 * z**2)


def _gelu_d2(z):
    return _INV_SQRT_2PI * jnp.exp(-0.5 * z**2) * (2.0 - z**2)


def _erf_d1(z):
    return (2.0 / math.sqrt(math.pi)) * jnp.exp(-(z**2))


def _erf_d2(z):
    return (-4.0 / math.sqrt(math.pi)) * z * jnp.exp(-(z**2))


def _relu_d1(z):
    return (z > 0).astype(z.dtype)


def _relu_d2(z):
    return jnp.zeros_like(z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("shifted_sigmoid", _shifted_sigmoid, _shifted_sigmoid_d1, _shifted_sigmoid_d2),
        Activation("tanh", jnp.tanh, _tanh_d1, _tanh_d2),
        Activation("softplus", jax.nn.softplus, jax.nn.sigmoid, _sigmoid_d1),
        Activation("gelu", _gelu, _gelu_d1, _gelu_d2),
        Activation("erf", erf, _erf_d1, _erf_d2),
        Activation("relu", jax.nn.relu, _relu_d1, _relu_d2),
    )
}
"""Activations by name (`Activation` with σ, σ', σ''): shifted_sigmoid, tanh, softplus, gelu, erf,
relu. The default, shifted_sigmoid σ(z) = sigmoid(z − 1), is neither odd nor even, so its Hermite
coefficients of every degree are non-zero. gelu is the exact (erf) form. relu has σ'' = 0 almost
everywhere, so its quadratic term vanishes (`check_curvature`).

Example:
    >>> from jaxntk.network import ACTIVATIONS
    >>> sorted(ACTIVATIONS)
    ['erf', 'gelu', 'relu', 'shifted_sigmoid', 'softplus', 'tanh']
"""

#: Activations whose second derivative is zero almost everywhere: their quadratic term vanishes.
ZERO_CURVATURE = frozenset({"relu"})

#: Dtypes in which `TwoLayer.prepare` may store σ' and σ'' (`TwoLayer.storage`).
STORAGE = ("float32", "bfloat16")


def get_activation(name: str) -> Activation:
    """The activation called `name` (one of `ACTIVATIONS`), with its derivatives.

    Args:
        name: a key of `ACTIVATIONS`.

    Returns:
        The `Activation` (σ, σ', σ'').

    Raises:
        TypeError: `name` is not a str.
        ValueError: `name` is not a known activation; the message lists the choices.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.network import get_activation
        >>> tanh = get_activation("tanh")
        >>> float(tanh.d1(jnp.array(0.0)))  # tanh'(0) = 1
        1.0
    """
    if not isinstance(name, str):
        raise TypeError(
            f"activation must be a str naming one of {sorted(ACTIVATIONS)}, got {name!r}"
        )
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


class Prepared(NamedTuple):
    """What the two-layer Taylor terms need on a fixed input set, computed once by `prepare`.

    A NamedTuple of arrays (a pytree). None of them depends on U, so one `Prepared` serves every
    training step.

    Attributes:
        x: (n, d) inputs.
        d1: (n, m) σ'(x W0ᵀ), in the network's `storage` dtype.
        d2: (n, m) σ''(x W0ᵀ), likewise.
        f0: (n,) f(x; W0) (exactly 0 at the symmetric init).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> prep = net.prepare(jnp.ones((5, 3)))
        >>> prep.x.shape, prep.d1.shape, prep.d2.shape, prep.f0.shape
        ((5, 3), (5, 4), (5, 4), (5,))
    """

    x: Array
    d1: Array
    d2: Array
    f0: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TwoLayer:
    """The two-layer network f(x; W0 + U) = Σ_r a_r σ((w0_r + u_r) · x) with fixed second layer.

    A pytree (w0 and a are leaves, the activation name is static), so it can be passed to `jit`
    as an argument. Build it with `TwoLayer.init` (or `jaxntk.network.init`).

    Attributes:
        w0: (m, d) first layer at initialization.
        a: (m,) fixed second layer.
        activation: name of σ in `ACTIVATIONS`.
        storage: the dtype in which `prepare` stores σ'(x W0ᵀ) and σ''(x W0ᵀ), a name in
            `STORAGE` ("bfloat16" halves the traffic of the n × m constants that every step
            reads); None (default) keeps w0's dtype. The Taylor terms multiply them by float32
            values, so the terms upcast them inside the fused products: the products and sums
            accumulate in w0's dtype, only σ' and σ'' are rounded (relative error
            ≤ 2⁻⁸ each for bfloat16's 8-bit significand, round to nearest).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=10, m=100)
        >>> net.m, net.d, net.activation
        (100, 10, 'shifted_sigmoid')
        >>> net.apply(net.w0, jnp.ones((3, 10)))  # exactly zero at the symmetric init
        Array([0., 0., 0.], dtype=float32)
    """

    w0: Array
    a: Array
    activation: str = dataclasses.field(default="shifted_sigmoid", metadata={"static": True})
    storage: str | None = dataclasses.field(default=None, metadata={"static": True})

    rows_are_neurons: ClassVar[bool] = True
    """f is a sum over neurons, the rows of W: per-row signs give Bai & Lee's randomization."""

    def __post_init__(self) -> None:
        if self.storage is not None and self.storage not in STORAGE:
            raise ValueError(
                f"storage must be None or one of {list(STORAGE)}, got {self.storage!r}"
            )

    @classmethod
    def init(
        cls,
        key: Array,
        d: int,
        m: int,
        activation: str = "shifted_sigmoid",
        dtype: jnp.dtype | None = None,
        storage: str | None = None,
    ) -> TwoLayer:
        """Symmetric initialization (docs/science.md §2): f(x; W0) = 0 for every x, exactly.

        The same as `jaxntk.network.init`: m/2 unit rows used twice, a_r = ±1/√m.

        Args:
            key: PRNG key.
            d: input dimension, ≥ 1.
            m: width, even and ≥ 2.
            activation: a name in `ACTIVATIONS`.
            dtype: float dtype of w0 and a (default: JAX's default float).
            storage: dtype of the prepared σ', σ'' (`TwoLayer.storage`; default: w0's).

        Returns:
            The `TwoLayer` network at W0.

        Raises:
            TypeError: d or m is not an int, or activation is not a str.
            ValueError: d or m out of range, m odd, or an unknown activation.

        Example:
            >>> import jax
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> net.w0.shape, net.a.tolist()  # a_r = ±1/√m
            ((4, 3), [0.5, 0.5, -0.5, -0.5])
        """
        return init(key, d, m, activation=activation, dtype=dtype, storage=storage)

    @property
    def m(self) -> int:
        """The width m, the number of neurons (rows of w0)."""
        return self.w0.shape[0]

    @property
    def d(self) -> int:
        """The input dimension d (columns of w0)."""
        return self.w0.shape[1]

    @property
    def sigma(self) -> Activation:
        """The `Activation` (σ, σ', σ'') named by `activation`."""
        return get_activation(self.activation)

    def apply(self, w: Array, x: Array) -> Array:
        """f(x; W) = Σ_r a_r σ(w_r · x) for first layer `w` (m, d) and inputs `x` (n, d) or (d,).

        The sum is taken as two half-sums over the paired neurons r and r + m/2, computed by one
        batched product so that at the symmetric init the halves cancel to exactly 0. A reshape
        (m, d) -> (2, m/2, d) rather than slices: with the rows split over devices
        (`jaxntk.sharding`) each half stays on its devices instead of being moved.

        Args:
            w: (m, d) first layer W (W0 + U for the real network).
            x: (n, d) inputs, or one input (d,).

        Returns:
            (n,) outputs, or a scalar () for one input of shape (d,).

        Raises:
            ValueError: w is not (m, d), or x is not (n, d) / (d,) with the network's d.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
            >>> net.apply(net.w0 + 0.1, x).shape, net.apply(net.w0, x[0]).shape
            ((5,), ())
        """
        x2 = self._check_inputs(x)
        _check_shape("w", w, (self.m, self.d))
        h = self.m // 2
        # a batched product over the halves, so the pre-activations come out as (2, n, m/2) with
        # no transpose: the Taylor terms of this function (jaxntk.taylor) inherit its layout
        x_k = jnp.broadcast_to(x2, (2, *x2.shape))
        pre = jnp.einsum("knd,khd->knh", x_k, w.reshape(2, h, self.d))
        halves = jnp.einsum("knh,kh->kn", self.sigma.fn(pre), self.a.reshape(2, h))
        out = jnp.sum(halves, axis=0)
        return out if np.ndim(x) == 2 else out[0]

    @property
    def apply_fn(self) -> jax.tree_util.Partial:
        """`apply` as a pytree function (w, x) -> f(x; w), for the generic paths (jaxntk.taylor).

        A `jax.tree_util.Partial` holding the network, so it can itself be passed to `jit`.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> net.apply_fn(net.w0, jnp.ones((2, 3)))
            Array([0., 0.], dtype=float32)
        """
        return jax.tree_util.Partial(TwoLayer.apply, self)

    def zeros(self) -> Array:
        """U = 0, the starting point of training: an (m, d) array of zeros.

        Returns:
            (m, d) zeros in the dtype of w0.
        """
        return jnp.zeros_like(self.w0)

    def full(self, u: Array, prep: Prepared) -> Array:
        """The real network at W0 + U on prepared inputs: f(x; W0 + U), (n,).

        Args:
            u: (m, d) displacement U from W0.
            prep: `prepare(x)` of the inputs.

        Returns:
            (n,) f(x; W0 + U).
        """
        return self.apply(self.w0 + u, prep.x)

    def prepare(self, x: Array, order: int | None = None) -> Prepared:
        """σ'(x W0ᵀ), σ''(x W0ᵀ) and f(x; W0) for the inputs x (n, d): constants of training.

        Args:
            x: (n, d) inputs.
            order: the highest Taylor order the caller will ask for (the model protocol's
                hint, `jaxntk.TaylorModel.prepare`); the closed form keeps the same constants for
                every order, so it is not read.

        Returns:
            The `Prepared` tuple (x, d1, d2, f0) that the Taylor terms read.

        Raises:
            ValueError: x is not (n, d) with the network's d.

        Example:
            >>> import jax
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
            >>> prep.d1.shape, prep.f0.tolist()
            ((5, 4), [0.0, 0.0, 0.0, 0.0, 0.0])
        """
        del order
        x2 = self._check_inputs(x, ndim=2)
        pre = x2 @ self.w0.T
        d1, d2 = self.sigma.d1(pre), self.sigma.d2(pre)
        if self.storage is not None:  # rounded once; the terms upcast them where they are read
            d1, d2 = d1.astype(self.storage), d2.astype(self.storage)
        return Prepared(x2, d1, d2, self.apply(self.w0, x2))

    def initial_output(self, prep: Prepared) -> Array:
        """f(x; W0), the zeroth-order term (0 at the symmetric init), (n,).

        Args:
            prep: `prepare(x)` of the inputs.

        Returns:
            (n,) f(x; W0), read from `prep.f0`.
        """
        return prep.f0

    def linear_term(self, u: Array, prep: Prepared) -> Array:
        """f_L(x; U) = Σ_r a_r σ'(w0_r · x)(u_r · x), on prepared inputs; (n,).

        The first-order Taylor term of f around W0 in the direction U (docs/science.md §3):
        the NTK model's output, linear in U.

        Args:
            u: (m, d) displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            (n,) f_L(x; U).

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
            >>> u = 0.01 * jax.random.normal(jax.random.PRNGKey(2), (4, 3))
            >>> bool(jnp.allclose(net.linear_term(2 * u, prep), 2 * net.linear_term(u, prep)))
            True
        """
        return (self._wide(prep.d1) * (prep.x @ u.T)) @ self.a

    def quadratic_term(self, u: Array, prep: Prepared) -> Array:
        """f_Q(x; U) = ½ Σ_r a_r σ''(w0_r · x)(u_r · x)², on prepared inputs; (n,).

        The second-order Taylor term of f around W0 in the direction U (docs/science.md §3):
        the QuadNTK model's output, quadratic in U.

        Args:
            u: (m, d) displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            (n,) f_Q(x; U).

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
            >>> u = 0.01 * jax.random.normal(jax.random.PRNGKey(2), (4, 3))
            >>> fq = net.quadratic_term(u, prep)
            >>> bool(jnp.allclose(net.quadratic_term(2 * u, prep), 4 * fq))
            True
            >>> bool(jnp.allclose(net.quadratic_term(-u, prep), fq))
            True
        """
        return 0.5 * ((self._wide(prep.d2) * (prep.x @ u.T) ** 2) @ self.a)

    def linear_and_quadratic(self, u: Array, prep: Prepared) -> tuple[Array, Array]:
        """(f_L, f_Q) sharing the one n×m×d product x Uᵀ.

        Args:
            u: (m, d) displacement U.
            prep: `prepare(x)` of the inputs.

        Returns:
            (f_L(x; U), f_Q(x; U)), each (n,), equal to `linear_term` and `quadratic_term`.

        Example:
            Near W0 the network is f0 + f_L + f_Q up to third order in U:

            >>> import jax, jax.numpy as jnp
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
            >>> u = 0.01 * jax.random.normal(jax.random.PRNGKey(2), (4, 3))
            >>> fl, fq = net.linear_and_quadratic(u, prep)
            >>> bool(jnp.allclose(net.full(u, prep), prep.f0 + fl + fq, atol=1e-6))
            True
        """
        z = prep.x @ u.T
        d1, d2 = self._wide(prep.d1), self._wide(prep.d2)
        return (d1 * z) @ self.a, 0.5 * ((d2 * z**2) @ self.a)

    def taylor_terms(self, u: Array, prep: Prepared, order: int) -> tuple[Array, ...]:
        """(f_1, …, f_k) in closed form: f_j(x; U) = (1/j!) Σ_r a_r σ⁽ʲ⁾(w0_r · x)(u_r · x)ʲ.

        f_1 and f_2 read σ' and σ'' from `prepare`; the higher derivatives σ⁽ʲ⁾(x W0ᵀ), j ≥ 3,
        come from one Taylor-mode pass of σ on the pre-activations.

        Args:
            u: the displacement U, (m, d).
            prep: the prepared inputs.
            order: the highest order k ≥ 1 (a Python int: it fixes the compiled program).

        Returns:
            A tuple of k arrays (n,), f_1 = f_L, f_2 = f_Q, ….
        """
        check_int("order", order, 1)
        z = prep.x @ u.T
        d1, d2 = self._wide(prep.d1), self._wide(prep.d2)
        terms = [(d1 * z) @ self.a, 0.5 * ((d2 * z**2) @ self.a)][:order]
        if order > 2:
            pre = prep.x @ self.w0.T

            def sigma(p):
                return [self.sigma.fn(p)]

            # coefficient j of σ(pre + t) is σ⁽ʲ⁾(pre)/j!
            coefficients = taylor_coefficients(sigma, [pre], [jnp.ones_like(pre)], order)
            zj = z**2
            for j in range(3, order + 1):
                zj = zj * z
                terms.append((coefficients[j][0] * zj) @ self.a)
        return tuple(terms)

    def features(self, x: Array) -> Array:
        """NTK features φ(x) = ∇_W f(x; W0) = (a_r σ'(w0_r · x) x)_r, shape (n, m, d).

        Materializes n·m·d numbers: for small problems and tests; use `ntk_gram` or the
        matrix-free routines in `jaxntk.spectral` otherwise.

        Args:
            x: (n, d) inputs.

        Returns:
            (n, m, d) φ(x); f_L(x; U) = ⟨φ(x), U⟩.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
            >>> phi = net.features(x)
            >>> phi.shape
            (5, 4, 3)
            >>> bool(jnp.allclose(jnp.einsum("imd,jmd->ij", phi, phi), net.ntk_gram(x), atol=1e-6))
            True
        """
        prep = self.prepare(x)
        return (self._wide(prep.d1) * self.a[None, :])[:, :, None] * prep.x[:, None, :]

    def ntk_gram(self, x1: Array, x2: Array | None = None) -> Array:
        """Empirical NTK K(x, x') = (x·x') Σ_r a_r² σ'(w0_r·x) σ'(w0_r·x'), (n1, n2) (§4).

        The Gram matrix of the NTK features φ(x) = ∇_W f(x; W0) in closed form (docs/science.md
        §4), without materializing them.

        Args:
            x1: (n1, d) inputs.
            x2: (n2, d) inputs (default: x1).

        Returns:
            (n1, n2) K(x1, x2).

        Example:
            >>> import jax
            >>> from jaxntk.network import TwoLayer
            >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
            >>> x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
            >>> net.ntk_gram(x).shape, net.ntk_gram(x, x[:2]).shape
            ((5, 5), (5, 2))
        """
        p1 = self.prepare(x1)
        p2 = p1 if x2 is None else self.prepare(x2)
        d1, d2 = self._wide(p1.d1), self._wide(p2.d1)
        return (p1.x @ p2.x.T) * ((d1 * (self.a**2)[None, :]) @ d2.T)

    def _wide(self, v: Array) -> Array:
        """A prepared σ' or σ'' in w0's dtype (a no-op unless `storage` is narrower): XLA fuses
        the conversion into the pass that reads it, so the narrow array is what is read."""
        return v.astype(self.w0.dtype)

    def _check_inputs(self, x: Array, ndim: int | None = None) -> Array:
        x = jnp.asarray(x)
        allowed = (2,) if ndim == 2 else (1, 2)
        if x.ndim not in allowed or x.shape[-1] != self.d:
            want = "(n, d)" if ndim == 2 else "(n, d) or (d,)"
            raise ValueError(
                f"x must have shape {want} with d = {self.d} (the network's input dimension), "
                f"got shape {x.shape}"
            )
        return x if x.ndim == 2 else x[None, :]


def init(
    key: Array,
    d: int,
    m: int,
    activation: str = "shifted_sigmoid",
    dtype: jnp.dtype | None = None,
    storage: str | None = None,
) -> TwoLayer:
    """Symmetric initialization of the two-layer network (docs/science.md §2).

    Rows g_r ~ N(0, I_d) normalised to unit length, r = 1..m/2, each used twice; a_r = ±1/√m.

    Args:
        key: PRNG key.
        d: input dimension, ≥ 1.
        m: width, even and ≥ 2.
        activation: a name in `ACTIVATIONS`.
        dtype: float dtype of w0 and a (default: JAX's default float).
        storage: dtype in which `TwoLayer.prepare` stores σ', σ'' (a name in `STORAGE`, e.g.
            "bfloat16"; default None: w0's dtype).

    Returns:
        The `TwoLayer` network with w0 (m, d) and a (m,); f(x; W0) = 0 for every x.

    Raises:
        TypeError: d or m is not an int, or activation is not a str.
        ValueError: d or m out of range, m odd, an unknown activation or storage.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import init
        >>> net = init(jax.random.PRNGKey(0), d=3, m=4, activation="tanh")
        >>> net.w0.shape, net.a.shape, net.activation
        ((4, 3), (4,), 'tanh')
        >>> bool(jnp.all(net.w0[:2] == net.w0[2:]))  # rows used twice
        True
        >>> jnp.linalg.norm(net.w0, axis=1).round(4).tolist()  # unit rows
        [1.0, 1.0, 1.0, 1.0]
    """
    check_int("d", d, 1)
    check_int("m", m, 1)
    if m % 2:
        raise ValueError(f"m must be even for the symmetric initialization, got m = {m}")
    get_activation(activation)
    dtype = jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)
    g = jax.random.normal(key, (m // 2, d), dtype=dtype)
    g = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    w0 = jnp.concatenate([g, g], axis=0)
    half = jnp.full((m // 2,), 1.0 / math.sqrt(m), dtype=dtype)
    a = jnp.concatenate([half, -half])
    return TwoLayer(w0=w0, a=a, activation=activation, storage=storage)


def check_curvature(net: TwoLayer, what: str) -> None:
    """ValueError for a quadratic model of an activation with σ'' = 0 a.e. (f_Q cannot move).

    Args:
        net: the network.
        what: what needs the quadratic term (a variant's name), for the error message.

    Returns:
        None, when the activation has curvature.

    Raises:
        ValueError: the activation is in `ZERO_CURVATURE` (relu): f_Q ≡ 0.

    Example:
        >>> import jax
        >>> from jaxntk.network import TwoLayer, check_curvature
        >>> check_curvature(TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4), "quadntk")
        >>> relu = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4, activation="relu")
        >>> check_curvature(relu, "quadntk")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: quadntk needs the quadratic term, but activation 'relu' has σ'' = 0 ...
    """
    if net.activation in ZERO_CURVATURE:
        raise ValueError(
            f"{what} needs the quadratic term, but activation {net.activation!r} has σ'' = 0 "
            "almost everywhere, so f_Q ≡ 0 and cannot be trained; choose a smooth activation "
            f"(one of {sorted(set(ACTIVATIONS) - ZERO_CURVATURE)})"
        )


def _check_shape(name: str, arr: Array, shape: tuple[int, ...]) -> None:
    if tuple(arr.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
