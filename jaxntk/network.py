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
    """An activation σ with its first and second derivatives, each elementwise."""

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
"""Activations by name. The default, shifted_sigmoid σ(z) = sigmoid(z − 1), is neither odd nor even,
so its Hermite coefficients of every degree are non-zero. gelu is the exact (erf) form."""

#: Activations whose second derivative is zero almost everywhere: their quadratic term vanishes.
ZERO_CURVATURE = frozenset({"relu"})


def get_activation(name: str) -> Activation:
    """The activation called `name` (one of `ACTIVATIONS`), with its derivatives."""
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

    x: (n, d) inputs; d1 = σ'(x W0ᵀ) and d2 = σ''(x W0ᵀ), each (n, m); f0 = f(x; W0), (n,)
    (exactly 0 at the symmetric init).
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

    Example:
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=10, m=100)
        >>> net.apply(net.w0, jnp.ones((3, 10)))  # exactly zero at the symmetric init
        Array([0., 0., 0.], dtype=float32)
    """

    w0: Array
    a: Array
    activation: str = dataclasses.field(default="shifted_sigmoid", metadata={"static": True})

    #: f is a sum over neurons, the rows of W: per-row signs give Bai & Lee's randomization.
    rows_are_neurons: ClassVar[bool] = True

    @classmethod
    def init(
        cls,
        key: Array,
        d: int,
        m: int,
        activation: str = "shifted_sigmoid",
        dtype: jnp.dtype | None = None,
    ) -> TwoLayer:
        """Symmetric initialization (docs/science.md §2): f(x; W0) = 0 for every x, exactly."""
        return init(key, d, m, activation=activation, dtype=dtype)

    @property
    def m(self) -> int:
        return self.w0.shape[0]

    @property
    def d(self) -> int:
        return self.w0.shape[1]

    @property
    def sigma(self) -> Activation:
        return get_activation(self.activation)

    def apply(self, w: Array, x: Array) -> Array:
        """f(x; W) = Σ_r a_r σ(w_r · x) for first layer `w` (m, d) and inputs `x` (n, d) or (d,).

        The sum is taken as two half-sums over the paired neurons r and r + m/2, computed by one
        batched product so that at the symmetric init the halves cancel to exactly 0. A reshape
        (m, d) -> (2, m/2, d) rather than slices: with the rows split over devices
        (`jaxntk.sharding`) each half stays on its devices instead of being moved.
        """
        x2 = self._check_inputs(x)
        _check_shape("w", w, (self.m, self.d))
        h = self.m // 2
        pre = jnp.einsum("nd,khd->knh", x2, w.reshape(2, h, self.d))
        halves = jnp.einsum("knh,kh->kn", self.sigma.fn(pre), self.a.reshape(2, h))
        out = jnp.sum(halves, axis=0)
        return out if np.ndim(x) == 2 else out[0]

    @property
    def apply_fn(self) -> jax.tree_util.Partial:
        """`apply` as a pytree function (w, x) -> f(x; w), for the generic paths (jaxntk.taylor)."""
        return jax.tree_util.Partial(TwoLayer.apply, self)

    def zeros(self) -> Array:
        """U = 0, the starting point of training: an (m, d) array of zeros."""
        return jnp.zeros_like(self.w0)

    def full(self, u: Array, prep: Prepared) -> Array:
        """The real network at W0 + U on prepared inputs: f(x; W0 + U), (n,)."""
        return self.apply(self.w0 + u, prep.x)

    def prepare(self, x: Array) -> Prepared:
        """σ'(x W0ᵀ), σ''(x W0ᵀ) and f(x; W0) for the inputs x (n, d): constants of training."""
        x2 = self._check_inputs(x, ndim=2)
        pre = x2 @ self.w0.T
        return Prepared(x2, self.sigma.d1(pre), self.sigma.d2(pre), self.apply(self.w0, x2))

    def initial_output(self, prep: Prepared) -> Array:
        """f(x; W0), the zeroth-order term (0 at the symmetric init), (n,)."""
        return prep.f0

    def linear_term(self, u: Array, prep: Prepared) -> Array:
        """f_L(x; U) = Σ_r a_r σ'(w0_r · x)(u_r · x), on prepared inputs; (n,)."""
        return (prep.d1 * (prep.x @ u.T)) @ self.a

    def quadratic_term(self, u: Array, prep: Prepared) -> Array:
        """f_Q(x; U) = ½ Σ_r a_r σ''(w0_r · x)(u_r · x)², on prepared inputs; (n,)."""
        return 0.5 * ((prep.d2 * (prep.x @ u.T) ** 2) @ self.a)

    def linear_and_quadratic(self, u: Array, prep: Prepared) -> tuple[Array, Array]:
        """(f_L, f_Q) sharing the one n×m×d product x Uᵀ."""
        z = prep.x @ u.T
        return (prep.d1 * z) @ self.a, 0.5 * ((prep.d2 * z**2) @ self.a)

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
        terms = [(prep.d1 * z) @ self.a, 0.5 * ((prep.d2 * z**2) @ self.a)][:order]
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
        """
        prep = self.prepare(x)
        return (prep.d1 * self.a[None, :])[:, :, None] * prep.x[:, None, :]

    def ntk_gram(self, x1: Array, x2: Array | None = None) -> Array:
        """Empirical NTK K(x, x') = (x·x') Σ_r a_r² σ'(w0_r·x) σ'(w0_r·x'), (n1, n2) (§4)."""
        p1 = self.prepare(x1)
        p2 = p1 if x2 is None else self.prepare(x2)
        return (p1.x @ p2.x.T) * ((p1.d1 * (self.a**2)[None, :]) @ p2.d1.T)

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
) -> TwoLayer:
    """Symmetric initialization of the two-layer network (docs/science.md §2).

    Rows g_r ~ N(0, I_d) normalised to unit length, r = 1..m/2, each used twice; a_r = ±1/√m.

    Args:
        key: PRNG key.
        d: input dimension, ≥ 1.
        m: width, even and ≥ 2.
        activation: a name in `ACTIVATIONS`.
        dtype: float dtype of w0 and a (default: JAX's default float).
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
    return TwoLayer(w0=w0, a=a, activation=activation)


def check_curvature(net: TwoLayer, what: str) -> None:
    """ValueError for a quadratic model of an activation with σ'' = 0 a.e. (f_Q cannot move)."""
    if net.activation in ZERO_CURVATURE:
        raise ValueError(
            f"{what} needs the quadratic term, but activation {net.activation!r} has σ'' = 0 "
            "almost everywhere, so f_Q ≡ 0 and cannot be trained; choose a smooth activation "
            f"(one of {sorted(set(ACTIVATIONS) - ZERO_CURVATURE)})"
        )


def _check_shape(name: str, arr: Array, shape: tuple[int, ...]) -> None:
    if tuple(arr.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(arr.shape)}")
