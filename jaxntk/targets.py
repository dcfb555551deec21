"""Input distributions, target functions and the tasks drawn from them (docs/science.md §1, §6, §7).

Inputs x ∈ R^d are drawn from N(0, I_d) ("gaussian", the authors' experiments) or uniformly on the
sphere of radius √d ("sphere", the theory). A target part is built on the distribution's
orthonormal polynomials of one variable (`jaxntk.polynomials`), evaluated along unit directions v_j:
φ_k(v·x) = h_k(v·x) (Hermite) on the Gaussian, q_k(v·x/√d) (Gegenbauer) on the sphere. For unit v,
v' with ρ = v·v', degrees j ≠ k are orthogonal and E[φ_k(v·x) φ_k(v'·x)] = ρ^k (Gaussian) or
P_k(ρ) (sphere, P_k the Legendre polynomial in dimension d), so a target part
f(x) = b + Σ_j c_j φ_k(v_j·x) has the exact mean square, computed from its coefficients,

    E[f²] = (E f)² + cᵀ G c,   G_jl = ρ_jl^k or P_k(ρ_jl),   E f = b (+ Σ_j c_j when k = 0).

"Variance" of a part means, as in docs/science.md §6, this mean square E[f_i²]: the test loss left
when exactly that part is not learned. Every part built here has mean 0 when its degree is ≥ 1, so
the two coincide, except the first part of `mlp_target`, which is taken literally and is not
centred. Parts of different degree are orthogonal, so the variances of a target's parts add up
to E[y²].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxntk._checks import check_int

# The polynomials and `Task` moved to modules below this one; their old import path still works.
from jaxntk.data import Task as Task
from jaxntk.polynomials import DISTRIBUTIONS as DISTRIBUTIONS
from jaxntk.polynomials import gegenbauer as gegenbauer
from jaxntk.polynomials import hermite as hermite
from jaxntk.polynomials import legendre as legendre
from jaxntk.polynomials import num_harmonics as num_harmonics
from jaxntk.polynomials import num_harmonics_up_to as num_harmonics_up_to

Array = jax.Array

__all__ = [
    "Target",
    "TargetPart",
    "dense_part",
    "make_target",
    "make_task",
    "mlp_target",
    "paper_target",
    "paper_task",
    "sample_inputs",
    "sparse_part",
    "theorem_target",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def sample_inputs(key: Array, n: int, d: int, distribution: str = "gaussian", dtype=None) -> Array:
    """n inputs in R^d, shape (n, d): x ~ N(0, I_d) or x uniform on the sphere of radius √d.

    Traceable (n, d and distribution are static), so training loops can draw fresh samples.

    Args:
        key: PRNG key.
        n: number of inputs, ≥ 1.
        d: input dimension, ≥ 1.
        distribution: "gaussian" or "sphere" (`DISTRIBUTIONS`).
        dtype (jnp.dtype | None): float dtype of the result (default: JAX's default float).

    Returns:
        (n, d) inputs, one per row.

    Raises:
        TypeError: n or d is not an int, or dtype is not a float dtype.
        ValueError: n or d < 1, or an unknown distribution.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.targets import sample_inputs
        >>> x = sample_inputs(jax.random.PRNGKey(0), 4, 3, "sphere")
        >>> x.shape, x.dtype
        ((4, 3), dtype('float32'))
        >>> bool(jnp.allclose(jnp.sum(x**2, axis=1), 3.0))  # |x|² = d on the sphere
        True
    """
    _check_distribution(distribution)
    check_int("n", n, 1)
    check_int("d", d, 1)
    return _sample_inputs(key, n, d, distribution, _float_dtype(dtype))


# --------------------------------------------------------------------------------------------------
# Target parts and targets


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TargetPart:
    """One part of a target: f(x) = b + Σ_j c_j φ_k(v_j·x), x (n, d) → (n,).

    φ_k = h_k (`hermite`) for Gaussian inputs and φ_k(v·x) = q_k(v·x/√d) (`gegenbauer`) on the
    sphere. A pytree: arrays are leaves, degree and distribution are static. Build parts with
    `dense_part`, `sparse_part`, or the paper's targets.

    Attributes:
        directions: (K, d) unit vectors v_j (K = 0 for a constant).
        coefficients: (K,) c_j.
        offset: () the constant b.
        degree: k ≥ 0.
        distribution: "gaussian" or "sphere", the input law under which the φ_k are orthonormal.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.targets import TargetPart
        >>> v = jnp.array([[1.0, 0.0, 0.0]])
        >>> part = TargetPart(v, jnp.array([2.0]), jnp.array(0.0), 1, "gaussian")  # f(x) = 2 x_1
        >>> part(jnp.array([[1.5, 0.0, 0.0], [-1.0, 3.0, 0.0]])).tolist()
        [3.0, -2.0]
        >>> float(part.variance), float(part.mean)
        (4.0, 0.0)
    """

    directions: Array
    coefficients: Array
    offset: Array
    degree: int = dataclasses.field(metadata={"static": True})
    distribution: str = dataclasses.field(metadata={"static": True})

    @property
    def d(self) -> int:
        """The input dimension d (the last axis of `directions`)."""
        return self.directions.shape[-1]

    @property
    def mean(self) -> Array:
        """E f = b, plus Σ_j c_j for degree 0 (every φ_k with k ≥ 1 has mean 0); a () array."""
        if self.degree == 0:
            return self.offset + jnp.sum(self.coefficients, axis=-1)
        return self.offset

    @property
    def variance(self) -> Array:
        """The part's mean square E[f²] = (E f)² + cᵀ G c (k ≥ 1), exact from the coefficients.

        G_jl = ρ_jl^k (gaussian) or P_k(ρ_jl) (sphere), ρ = V Vᵀ. Equal to Var f when E f = 0.
        A () array.
        """
        return _second_moment(self)

    def __call__(self, x: Array) -> Array:
        """f(x) = b + Σ_j c_j φ_k(v_j·x) for x of shape (n, d); returns (n,) in x's dtype.

        Args:
            x: (n, d) float inputs.

        Returns:
            (n,) values of the part.

        Raises:
            ValueError: x is not (n, d) with the part's d.
            TypeError: x is not a float array.
        """
        return _part_values(self, _check_x(x, self.d, "target part"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """A target function f*(x) = Σ_i f_i(x), a sum of named parts (`TargetPart`).

    A pytree (the parts' arrays are leaves, the names static): pass it to `jit` as an argument.
    Build it with `make_target`, `paper_target` or `mlp_target`.

    Attributes:
        components: the parts f_i (`TargetPart`), all with the same d and distribution.
        names: their names, in the same order.

    Example:
        >>> import jax
        >>> from jaxntk.targets import paper_target, sample_inputs
        >>> key = jax.random.PRNGKey(0)
        >>> target = paper_target(key, d=10)
        >>> x = sample_inputs(key, 5, 10)
        >>> target(x).shape, target.parts(x).shape, target.names
        ((5,), (2, 5), ('linear', 'quadratic'))
    """

    components: tuple[TargetPart, ...]
    names: tuple[str, ...] = dataclasses.field(metadata={"static": True})

    @property
    def d(self) -> int:
        """The input dimension d, shared by the parts."""
        return self.components[0].d

    @property
    def distribution(self) -> str:
        """The input law ("gaussian" or "sphere"), shared by the parts."""
        return self.components[0].distribution

    @property
    def degrees(self) -> tuple[int, ...]:
        """The degree k of each part, in order."""
        return tuple(p.degree for p in self.components)

    @property
    def variances(self) -> Array:
        """(P,) exact mean squares E[f_i²] of the parts; they sum to E[f*²] when the parts are
        orthogonal (different degrees)."""
        return _variances(self)

    @property
    def means(self) -> Array:
        """(P,) exact means E[f_i] of the parts."""
        return jnp.stack([p.mean for p in self.components])

    def parts(self, x: Array) -> Array:
        """(P, n): the value of each part f_i on the inputs x (n, d).

        Args:
            x: (n, d) float inputs.

        Returns:
            (P, n) f_i(x), one row per part, in the order of `names`.

        Raises:
            ValueError: x is not (n, d) with the target's d.
            TypeError: x is not a float array.
        """
        return _parts_values(self, _check_x(x, self.d, "target"))

    def __call__(self, x: Array) -> Array:
        """f*(x) = Σ_i f_i(x), (n,) for x (n, d).

        Args:
            x: (n, d) float inputs.

        Returns:
            (n,) f*(x).
        """
        return jnp.sum(self.parts(x), axis=0)


def dense_part(
    key: Array,
    d: int,
    degree: int,
    variance: float,
    distribution: str = "gaussian",
    *,
    num_directions: int | None = None,
    dtype=None,
) -> TargetPart:
    """Dense degree-k part f(x) = Σ_{j≤K} c_j φ_k(v_j·x), spread over all d coordinates.

    v_j uniform random unit vectors, c ~ N(0, I_K) rescaled so that E[f²] = cᵀ G c = `variance`
    exactly (see `TargetPart.variance`). Degree 0 is the constant √variance; degree 1 is a random
    linear function w·x with |w|² = variance. Traceable in `key` (the other arguments are static).

    Args:
        key: PRNG key.
        d: input dimension, ≥ 1 (≥ 2 on the sphere).
        degree: k ≥ 0.
        variance: E[f²] ≥ 0.
        distribution: "gaussian" or "sphere".
        num_directions: K ≥ 1, default 2d.
        dtype (jnp.dtype | None): float dtype of the part's arrays (default: JAX's default float).

    Returns:
        The `TargetPart`, with directions (K, d) (or (0, d) for degree 0).

    Raises:
        TypeError: an integer argument is not an int, or variance is not a real number.
        ValueError: an argument out of range, or an unknown distribution.

    Example:
        >>> import jax
        >>> from jaxntk.targets import dense_part
        >>> part = dense_part(jax.random.PRNGKey(0), d=5, degree=2, variance=0.5)
        >>> part.directions.shape, part.coefficients.shape, part.degree
        ((10, 5), (10,), 2)
        >>> round(float(part.variance), 4)
        0.5
    """
    _check_part_args(d, degree, variance, distribution)
    k = 2 * d if num_directions is None else num_directions
    check_int("num_directions", k, 1)
    return _random_part(key, variance, d, degree, k, False, distribution, dtype)


def sparse_part(
    key: Array,
    d: int,
    degree: int,
    r: int,
    variance: float,
    distribution: str = "gaussian",
    *,
    dtype=None,
) -> TargetPart:
    """Sparse degree-p part f(x) = Σ_{s≤r} α_s φ_p(β_s·x) on r orthonormal directions β_s.

    β uniformly random orthonormal (QR of a Gaussian d×r matrix), α ~ N(0, I_r) rescaled so that
    E[f²] = αᵀ G α = `variance` exactly. On the Gaussian G = I; on the sphere G has off-diagonal
    entries P_p(0), non-zero for even p (|x| is fixed), which the normalisation accounts for.
    Degree 0 is the constant √variance. Traceable in `key`.

    Args:
        key: PRNG key.
        d: input dimension, ≥ 1 (≥ 2 on the sphere).
        degree: p ≥ 0.
        r: number of directions, 1 ≤ r ≤ d.
        variance: E[f²] ≥ 0.
        distribution: "gaussian" or "sphere".
        dtype (jnp.dtype | None): float dtype of the part's arrays (default: JAX's default float).

    Returns:
        The `TargetPart`, with directions (r, d) (or (0, d) for degree 0).

    Raises:
        TypeError: an integer argument is not an int, or variance is not a real number.
        ValueError: an argument out of range (r > d included), or an unknown distribution.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.targets import sparse_part
        >>> part = sparse_part(jax.random.PRNGKey(0), d=5, degree=3, r=2, variance=1.0)
        >>> part.directions.shape, round(float(part.variance), 4)
        ((2, 5), 1.0)
        >>> v = part.directions
        >>> bool(jnp.allclose(v @ v.T, jnp.eye(2), atol=1e-6))  # orthonormal β_s
        True
    """
    _check_part_args(d, degree, variance, distribution)
    check_int("r", r, 1)
    if r > d:
        raise ValueError(f"r must satisfy 1 ≤ r ≤ d = {d} (orthonormal directions), got r = {r}")
    return _random_part(key, variance, d, degree, r, True, distribution, dtype)


def make_target(parts: Mapping[str, TargetPart]) -> Target:
    """The target f* = Σ_i f_i from named parts; all parts must share d and the distribution.

    Args:
        parts: a non-empty mapping from names (str) to `TargetPart`; the target keeps its order.

    Returns:
        The `Target`, with `names` in the order of `parts`.

    Raises:
        TypeError: parts is not a non-empty mapping of str to `TargetPart`.
        ValueError: the parts differ in d or in distribution.

    Example:
        >>> import jax
        >>> from jaxntk.targets import dense_part, make_target, sparse_part
        >>> k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        >>> target = make_target({
        ...     "dense_linear": dense_part(k1, d=5, degree=1, variance=0.25),
        ...     "sparse_cubic": sparse_part(k2, d=5, degree=3, r=2, variance=0.75),
        ... })
        >>> target.names, target.degrees
        (('dense_linear', 'sparse_cubic'), (1, 3))
        >>> [round(float(v), 4) for v in target.variances]  # they add up to E[f*²] = 1
        [0.25, 0.75]
    """
    if not isinstance(parts, Mapping) or not parts:
        raise TypeError(
            "parts must be a non-empty mapping from names to TargetPart, "
            f"got {type(parts).__name__}"
        )
    for name, part in parts.items():
        if not isinstance(name, str):
            raise TypeError(f"part names must be str, got {name!r}")
        if not isinstance(part, TargetPart):
            raise TypeError(f"parts[{name!r}] must be a TargetPart, got {type(part).__name__}")
    first = next(iter(parts.values()))
    for name, part in parts.items():
        if part.d != first.d or part.distribution != first.distribution:
            raise ValueError(
                f"parts must share d and distribution: parts[{name!r}] has d = {part.d}, "
                f"distribution {part.distribution!r}; the first has d = {first.d}, "
                f"distribution {first.distribution!r}"
            )
    return Target(components=tuple(parts.values()), names=tuple(parts))


def paper_target(key: Array, d: int, distribution: str = "gaussian", *, dtype=None) -> Target:
    """The authors' target f*(x) = ((β·x)² − 1 + β·x)/√3, β a random unit vector
    (docs/science.md §7).

    Two parts: "linear" = h_1(β·x)/√3 (variance 1/3) and "quadratic" = √(2/3) h_2(β·x) =
    ((β·x)² − 1)/√3 (variance 2/3). On the sphere the same variances with q_1(β·x/√d) = β·x and
    q_2(β·x/√d) = √N(d,2) ((β·x)² − 1)/(d − 1) (`gegenbauer`).

    Args:
        key: PRNG key (draws β).
        d: input dimension, ≥ 1 (≥ 2 on the sphere).
        distribution: "gaussian" or "sphere".
        dtype (jnp.dtype | None): float dtype of the target's arrays (default: JAX's default float).

    Returns:
        The `Target` with parts "linear" (degree 1) and "quadratic" (degree 2).

    Raises:
        TypeError: d is not an int.
        ValueError: d out of range, or an unknown distribution.

    Example:
        >>> import jax
        >>> from jaxntk.targets import paper_target
        >>> target = paper_target(jax.random.PRNGKey(0), d=10)
        >>> target.names, target.degrees
        (('linear', 'quadratic'), (1, 2))
        >>> [round(float(v), 4) for v in target.variances]
        [0.3333, 0.6667]
    """
    _check_distribution(distribution)
    _check_dimension(d, distribution)
    beta, _ = _random_ridge(key, d, 1, False, _float_dtype(dtype))
    zero = jnp.zeros((), beta.dtype)

    def part(c: float, degree: int) -> TargetPart:
        return TargetPart(beta, jnp.full((1,), c, beta.dtype), zero, degree, distribution)

    return make_target(
        {"linear": part(math.sqrt(1 / 3), 1), "quadratic": part(math.sqrt(2 / 3), 2)}
    )


def theorem_target(
    key: Array,
    d: int,
    k: int,
    *,
    r: int = 1,
    dense_variances: tuple[float, ...] | None = None,
    sparse_variance: float = 2 / 3,
    distribution: str = "sphere",
    dtype=None,
) -> Target:
    """The theorem's target (docs/science.md §6): dense parts of degrees 1..k plus a sparse part of
    degree k + 1 on r orthonormal directions.

    f* = Σ_{ℓ=1..k} f_ℓ + f_sparse, f_ℓ = `dense_part` of degree ℓ (2d random directions) with
    E[f_ℓ²] = dense_variances[ℓ − 1], and f_sparse = `sparse_part` of degree k + 1 on r directions
    with E[f_sparse²] = sparse_variance. Parts of different degrees are orthogonal, so the
    variances add up to E[f*²]. The defaults spread 1/3 evenly over the dense degrees and give
    the sparse part 2/3: at k = 1, r = 1 the split of the authors' target (linear 1/3, quadratic
    2/3), with a dense instead of a single-direction linear part. The NTK+QuadNTK theory learns
    it from about N(d, ≤ k) ~ d^k samples with the N(d, ≤ k) top directions kept
    (`num_harmonics_up_to`); the NTK needs about d^{k+1}.

    Args:
        key: PRNG key (one subkey per part).
        d: input dimension, ≥ 1 (≥ 2 on the sphere).
        k: the dense degree, ≥ 1; the sparse part has degree k + 1.
        r: number of sparse directions, 1 ≤ r ≤ d.
        dense_variances: E[f_ℓ²] for ℓ = 1..k (k values ≥ 0); default 1/(3k) each.
        sparse_variance: E[f_sparse²] ≥ 0.
        distribution: "sphere" (the theory's inputs) or "gaussian".
        dtype (jnp.dtype | None): float dtype of the target's arrays (default: JAX's default float).

    Returns:
        The `Target` with parts "dense1", ..., f"dense{k}" and "sparse" (degrees 1..k, k + 1).

    Raises:
        TypeError: an integer argument is not an int, or a variance is not a real number.
        ValueError: an argument out of range, dense_variances of the wrong length, or an
            unknown distribution.

    Example:
        >>> import jax
        >>> from jaxntk.targets import theorem_target
        >>> target = theorem_target(jax.random.PRNGKey(0), d=8, k=2, r=3)
        >>> target.names, target.degrees
        (('dense1', 'dense2', 'sparse'), (1, 2, 3))
        >>> [round(float(v), 4) for v in target.variances]
        [0.1667, 0.1667, 0.6667]
    """
    check_int("k", k, 1)
    if dense_variances is None:
        dense_variances = (1 / (3 * k),) * k
    dense_variances = tuple(dense_variances)
    if len(dense_variances) != k:
        raise ValueError(
            f"dense_variances must give one variance per dense degree 1..k = {k}, "
            f"got {len(dense_variances)}"
        )
    keys = jax.random.split(key, k + 1)
    parts = {
        f"dense{ell}": dense_part(keys[ell - 1], d, ell, v, distribution, dtype=dtype)
        for ell, v in zip(range(1, k + 1), dense_variances, strict=True)
    }
    parts["sparse"] = sparse_part(keys[k], d, k + 1, r, sparse_variance, distribution, dtype=dtype)
    return make_target(parts)


def mlp_target(key: Array, d: int, *, dtype=None) -> Target:
    """The authors' second target f*(x) = xᵀAx/√675 + He_3(β·x)/√6, A = diag(1{i > d/2}) (§7).

    Gaussian inputs. Taken literally, so the first part is not centred: with m = #{i ≤ d: i > d/2},
    "dense_quadratic" = Σ_{i>d/2} x_i²/√675 = m/√675 + √(2/675) Σ_{i>d/2} h_2(x_i) has mean m/√675
    and mean square (m² + 2m)/675 (= 1 at d = 50). "sparse_cubic" = He_3(β·x)/√6 = h_3(β·x),
    variance 1, orthogonal to the first.

    Args:
        key: PRNG key (draws β).
        d: input dimension, ≥ 1 (the authors use d = 50).
        dtype (jnp.dtype | None): float dtype of the target's arrays (default: JAX's default float).

    Returns:
        The `Target` with parts "dense_quadratic" (degree 2) and "sparse_cubic" (degree 3).

    Raises:
        TypeError: d is not an int.
        ValueError: d < 1.

    Example:
        >>> import jax
        >>> from jaxntk.targets import mlp_target
        >>> target = mlp_target(jax.random.PRNGKey(0), d=50)
        >>> target.names, target.degrees
        (('dense_quadratic', 'sparse_cubic'), (2, 3))
        >>> [round(float(v), 4) for v in target.variances]  # (m² + 2m)/675 = 1 with m = 25
        [1.0, 1.0]
        >>> round(float(target.means[0]), 4)  # m/√675, not centred
        0.9623
    """
    check_int("d", d, 1)
    beta, _ = _random_ridge(key, d, 1, False, _float_dtype(dtype))
    dtype = beta.dtype
    m = d - d // 2
    quadratic = TargetPart(
        directions=jnp.eye(d, dtype=dtype)[d // 2 :],
        coefficients=jnp.full((m,), math.sqrt(2 / 675), dtype),
        offset=jnp.asarray(m / math.sqrt(675), dtype),
        degree=2,
        distribution="gaussian",
    )
    cubic = TargetPart(beta, jnp.ones((1,), dtype), jnp.zeros((), dtype), 3, "gaussian")
    return make_target({"dense_quadratic": quadratic, "sparse_cubic": cubic})


# --------------------------------------------------------------------------------------------------
# Tasks: train and test sets


def make_task(
    key: Array,
    target: Target,
    *,
    n: int,
    n_test: int,
    distribution: str | None = None,
    noise: float = 0.0,
) -> Task:
    """n training and n_test test points x ~ `distribution`, y = f*(x), y_train += noise · ξ.

    Train inputs, test inputs and the noise ξ ~ N(0, I_n) come from independent subkeys of `key`.
    `distribution` defaults to the target's and must equal it (its variances are exact only under
    that law). The inputs take the target's dtype. Traceable in `key` and `target`.

    Args:
        key: PRNG key.
        target: the `Target` f*.
        n: number of training points, ≥ 1.
        n_test: number of test points, ≥ 1.
        distribution: "gaussian" or "sphere"; must be the target's (default: the target's).
        noise: standard deviation of the Gaussian label noise on y_train, ≥ 0.

    Returns:
        The `Task`.

    Raises:
        TypeError: target is not a `Target`, n or n_test is not an int, or noise is not real.
        ValueError: n or n_test < 1, noise < 0 or not finite, or a distribution other than the
            target's.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.targets import make_task, paper_target
        >>> task = make_task(jax.random.PRNGKey(1), paper_target(jax.random.PRNGKey(0), d=10),
        ...                  n=100, n_test=1000, noise=0.1)
        >>> task.x_train.shape, task.parts_test.shape
        ((100, 10), (2, 1000))
        >>> bool(jnp.allclose(task.y_test, task.parts_test.sum(axis=0)))  # test labels are exact
        True
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target, got {type(target).__name__}")
    check_int("n", n, 1)
    check_int("n_test", n_test, 1)
    if distribution is None:
        distribution = target.distribution
    _check_distribution(distribution)
    if distribution != target.distribution:
        raise ValueError(
            f"distribution {distribution!r} does not match the target's {target.distribution!r} "
            "(its parts are orthonormal, with the stated variances, only under that law)"
        )
    _check_real("noise", noise)
    key_train, key_test, key_noise = jax.random.split(key, 3)
    dtype = target.components[0].offset.dtype
    x_train = _sample_inputs(key_train, n, target.d, distribution, dtype)
    x_test = _sample_inputs(key_test, n_test, target.d, distribution, dtype)
    parts_train, parts_test = target.parts(x_train), target.parts(x_test)
    y_train = jnp.sum(parts_train, axis=0)
    if noise > 0:
        y_train = y_train + noise * jax.random.normal(key_noise, (n,), dtype=dtype)
    return Task(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=jnp.sum(parts_test, axis=0),
        parts_train=parts_train,
        parts_test=parts_test,
        target=target,
        distribution=distribution,
        part_names=target.names,
    )


def paper_task(
    key: Array,
    d: int,
    n: int,
    n_test: int = 10_000,
    distribution: str = "gaussian",
    *,
    dtype=None,
) -> Task:
    """The authors' task: `paper_target` (β from one subkey of `key`) with n train and n_test test
    points (from another). The paper's size is d = 100, n = 1000, n_test = 10 000
    (docs/science.md §7).

    No label noise. Traceable in `key`, so tasks of several seeds can be made at once by `vmap`.

    Args:
        key: PRNG key.
        d: input dimension, ≥ 1 (≥ 2 on the sphere).
        n: number of training points, ≥ 1.
        n_test: number of test points, ≥ 1.
        distribution: "gaussian" or "sphere".
        dtype (jnp.dtype | None): float dtype of the target and the inputs (default: JAX's
            default float).

    Returns:
        The `Task`, with part names ("linear", "quadratic").

    Raises:
        TypeError: an integer argument is not an int.
        ValueError: an argument out of range, or an unknown distribution.

    Example:
        >>> import jax
        >>> from jaxntk.targets import paper_task
        >>> task = paper_task(jax.random.PRNGKey(0), d=10, n=100, n_test=1000)
        >>> task.x_train.shape, task.y_train.shape, task.parts_test.shape
        ((100, 10), (100,), (2, 1000))
        >>> keys = jax.random.split(jax.random.PRNGKey(0), 3)  # three seeds in one call
        >>> jax.vmap(lambda k: paper_task(k, d=10, n=20, n_test=30))(keys).x_train.shape
        (3, 20, 10)
    """
    key_target, key_data = jax.random.split(key)
    target = paper_target(key_target, d, distribution, dtype=dtype)
    return make_task(key_data, target, n=n, n_test=n_test)


# --------------------------------------------------------------------------------------------------
# Helpers. The public functions validate their arguments (in Python, on static values), then call
# the jitted cores below: one compilation per static configuration, not one per primitive when
# called eagerly (which made the builders several times slower to first call).


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _sample_inputs(key: Array, n: int, d: int, distribution: str, dtype: jnp.dtype) -> Array:
    x = jax.random.normal(key, (n, d), dtype=dtype)
    if distribution == "sphere":
        x = x * (math.sqrt(d) / jnp.linalg.norm(x, axis=1, keepdims=True))
    return x


@jax.jit
def _part_values(part: TargetPart, x: Array) -> Array:
    v, c, b = (a.astype(x.dtype) for a in (part.directions, part.coefficients, part.offset))
    z = jnp.matmul(x, v.T, precision=_HIGHEST)
    phi = _family(part.degree, z, part.d, part.distribution)
    return jnp.matmul(phi, c, precision=_HIGHEST) + b


@jax.jit
def _parts_values(target: Target, x: Array) -> Array:
    return jnp.stack([_part_values(p, x) for p in target.components])


@jax.jit
def _second_moment(part: TargetPart) -> Array:
    second_moment = part.mean**2
    if part.degree >= 1:
        rho = jnp.matmul(part.directions, part.directions.T, precision=_HIGHEST)
        gram = _overlap(part.degree, rho, part.d, part.distribution)
        second_moment = second_moment + part.coefficients @ gram @ part.coefficients
    return second_moment


@jax.jit
def _variances(target: Target) -> Array:
    return jnp.stack([_second_moment(p) for p in target.components])


def _random_part(
    key: Array,
    variance: float,
    d: int,
    degree: int,
    count: int,
    orthonormal: bool,
    distribution: str,
    dtype,
) -> TargetPart:
    """b + Σ_{j≤count} c_j φ_k(v_j·x) with E[f²] = variance: the constant √variance for degree 0,
    else random unit (or orthonormal) v_j and c ~ N(0, I) rescaled."""
    dtype = _float_dtype(dtype)
    if degree == 0:
        return TargetPart(
            directions=jnp.zeros((0, d), dtype),
            coefficients=jnp.zeros((0,), dtype),
            offset=jnp.asarray(math.sqrt(variance), dtype),
            degree=0,
            distribution=distribution,
        )
    v, c = _random_ridge(key, d, count, orthonormal, dtype)
    return _normalised_part(v, c, variance, degree, distribution)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _random_ridge(
    key: Array, d: int, count: int, orthonormal: bool, dtype: jnp.dtype
) -> tuple[Array, Array]:
    """count random unit directions (count, d), orthonormal if asked (QR), and c ~ N(0, I_count).

    Separate from the degree, so that parts of every degree share one compilation.
    """
    key_v, key_c = jax.random.split(key)
    if orthonormal:
        v = jnp.linalg.qr(jax.random.normal(key_v, (d, count), dtype=dtype))[0].T
    else:
        v = _unit_rows(jax.random.normal(key_v, (count, d), dtype=dtype))
    return v, jax.random.normal(key_c, (count,), dtype=dtype)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _normalised_part(
    v: Array, c: Array, variance: float, degree: int, distribution: str
) -> TargetPart:
    part = TargetPart(v, c, jnp.zeros((), c.dtype), degree, distribution)
    return dataclasses.replace(part, coefficients=c * jnp.sqrt(variance / part.variance))


def _family(k: int, z: Array, d: int, distribution: str) -> Array:
    """φ_k(z) for z = v·x: h_k(z) on the Gaussian, q_k(z/√d) on the sphere."""
    if distribution == "sphere":
        return gegenbauer(k, z / math.sqrt(d), d)
    return hermite(k, z)


def _overlap(k: int, rho: Array, d: int, distribution: str) -> Array:
    """E[φ_k(v·x) φ_k(v'·x)] as a function of ρ = v·v': ρ^k (Gaussian) or P_k(ρ) (sphere)."""
    if distribution == "sphere":
        return legendre(k, rho, d)
    return rho**k


def _unit_rows(g: Array) -> Array:
    return g / jnp.linalg.norm(g, axis=1, keepdims=True)


def _check_part_args(d: object, degree: object, variance: object, distribution: object) -> None:
    _check_distribution(distribution)
    _check_dimension(d, distribution)
    check_int("degree", degree, 0)
    _check_real("variance", variance)


def _check_dimension(d: object, distribution: str) -> None:
    # The sphere of radius 1 in R^1 is two points: no density for v·x/√d, no Gegenbauer family.
    check_int("d", d, 2 if distribution == "sphere" else 1)


def _check_distribution(distribution: object) -> None:
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {distribution!r}; expected one of {list(DISTRIBUTIONS)}"
        )


def _check_real(name: str, value: object) -> None:
    """A finite real number ≥ 0 (a variance or a noise level)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and ≥ 0, got {value}")


def _check_x(x: Array, d: int, what: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(
            f"x must have shape (n, d) with d = {d} (the {what}'s input dimension), "
            f"got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    return x


def _float_dtype(dtype) -> jnp.dtype:
    """The given dtype, or JAX's default float (float32, float64 under x64)."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a float dtype, got {dtype}")
    return dtype
