"""Orthonormal polynomials of one variable and counts of spherical harmonics (docs/science.md §6).

Each input distribution (`DISTRIBUTIONS`) has its family of orthonormal polynomials of one variable,
evaluated along a unit direction v:

    gaussian:  φ_k(v·x) = h_k(v·x),        h_k = He_k/√(k!)                  (`hermite`)
    sphere:    φ_k(v·x) = q_k(v·x/√d),     q_k = √N(d, k) · P_k              (`gegenbauer`)

with P_k the Legendre polynomial in dimension d (`legendre`, P_k(1) = 1) and N(d, k) the number of
independent degree-k spherical harmonics (`num_harmonics`). For unit v, v' with ρ = v·v', degrees
j ≠ k are orthogonal and

    gaussian:  E[h_k(v·x) h_k(v'·x)]            = ρ^k
    sphere:    E[q_k(v·x/√d) q_k(v'·x/√d)]      = P_k(ρ)        (the addition formula)

Every family is computed by its normalised three-term recurrence, so no factorial or harmonic count
is formed where it would overflow. The target functions built on them are in `jaxntk.targets`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxntk._checks import check_int

Array = jax.Array

__all__ = [
    "DISTRIBUTIONS",
    "gegenbauer",
    "hermite",
    "legendre",
    "num_harmonics",
    "num_harmonics_up_to",
]

DISTRIBUTIONS = ("gaussian", "sphere")
"""The input laws: "gaussian", x ~ N(0, I_d) (the authors' experiments), and "sphere", x uniform
on the sphere of radius √d (the theory), as `jaxntk.targets.sample_inputs` draws them. Each has its
orthonormal family φ_k (module docstring)."""


def hermite(k: int, z: Array) -> Array:
    """Normalised probabilists' Hermite polynomial h_k(z) = He_k(z)/√(k!), elementwise.

    Orthonormal under N(0, 1): E[h_j(z) h_k(z)] = δ_jk. Computed by the normalised three-term
    recurrence h_0 = 1, h_1 = z, h_{j+1} = (z h_j − √j h_{j−1})/√(j+1), which never forms He_k or
    k! (stable for large k). `k` is static: use `jax.jit(hermite, static_argnums=0)`.

    Args:
        k: degree, ≥ 0 (a Python int).
        z: float array of points, any shape.

    Returns:
        h_k(z), same shape and dtype as z.

    Raises:
        TypeError: k is not an int, or z is not a float array.
        ValueError: k < 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.polynomials import hermite
        >>> [round(v, 4) for v in hermite(2, jnp.array([0.0, 1.0, 2.0])).tolist()]  # (z² − 1)/√2
        [-0.7071, 0.0, 2.1213]
    """
    check_int("k", k, 0)
    return _three_term(_as_float(z, "z"), *_hermite_coefficients(k))


def legendre(k: int, t: Array, d: int) -> Array:
    """Legendre polynomial in dimension d, P_k(t) with P_k(1) = 1, elementwise on t ∈ [−1, 1].

    P_k = C_k^{(d−2)/2}/C_k^{(d−2)/2}(1) (Gegenbauer, scaled), from the recurrence P_0 = 1, P_1 = t,
    (j + d − 2) P_{j+1} = (2j + d − 2) t P_j − j P_{j−1}. d = 3 gives the classical Legendre
    polynomials, d = 2 the Chebyshev polynomials T_k. For x uniform on the sphere of radius √d and
    unit v, v': E[P_k(v·x/√d) P_k(v'·x/√d)] = P_k(v·v')/N(d, k). `k` and `d` are static.

    Args:
        k: degree, ≥ 0 (a Python int).
        t: float array of points in [−1, 1], any shape.
        d: dimension, ≥ 2 (a Python int).

    Returns:
        P_k(t), same shape and dtype as t.

    Raises:
        TypeError: k or d is not an int, or t is not a float array.
        ValueError: k < 0 or d < 2.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.polynomials import legendre
        >>> legendre(2, jnp.array([1.0, 0.0]), d=3).tolist()  # (3t² − 1)/2
        [1.0, -0.5]
        >>> legendre(2, jnp.array([0.5]), d=2).tolist()  # Chebyshev T_2(t) = 2t² − 1
        [-0.5]
    """
    check_int("k", k, 0)
    check_int("d", d, 2)
    return _three_term(_as_float(t, "t"), *_legendre_coefficients(k, d))


def gegenbauer(k: int, t: Array, d: int) -> Array:
    """Orthonormal Gegenbauer polynomial q_k(t) = √N(d, k) · P_k(t) in dimension d, elementwise.

    Convention: orthonormal under the law of t = v·x/√d for x uniform on the sphere of radius √d
    and a fixed unit v, whose density on [−1, 1] is ∝ (1 − t²)^{(d−3)/2}: E[q_j(t) q_k(t)] = δ_jk.
    More generally E[q_k(v·x/√d) q_k(v'·x/√d)] = P_k(v·v') (`legendre`), and
    q_k(s/√d) → h_k(s) as d → ∞. The recurrence of `legendre` is run on q_k directly, with
    coefficients scaled by ratios of N(d, ·), so √N(d, k) (huge for large d, k) is never formed.
    `k` and `d` are static.

    Args:
        k: degree, ≥ 0 (a Python int).
        t: float array of points in [−1, 1], any shape (t = v·x/√d).
        d: dimension, ≥ 2 (a Python int).

    Returns:
        q_k(t), same shape and dtype as t.

    Raises:
        TypeError: k or d is not an int, or t is not a float array.
        ValueError: k < 0 or d < 2.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.polynomials import gegenbauer
        >>> gegenbauer(1, jnp.array([0.5]), d=4)  # q_1(t) = √d t
        Array([1.], dtype=float32)
        >>> round(float(gegenbauer(2, jnp.array(1.0), d=3)), 4)  # q_k(1) = √N(d, k) = √5
        2.2361
    """
    check_int("k", k, 0)
    check_int("d", d, 2)
    return _three_term(_as_float(t, "t"), *_gegenbauer_coefficients(k, d))


def num_harmonics(d: int, k: int) -> int:
    """N(d, k): the dimension of the degree-k spherical harmonics in R^d (an exact Python int).

    N(d, k) = C(d + k − 1, k) − C(d + k − 3, k − 2): homogeneous polynomials of degree k modulo
    |x|² times those of degree k − 2. N(d, 0) = 1, N(d, 1) = d, N(d, 2) = (d + 2)(d − 1)/2,
    N(3, k) = 2k + 1, N(2, k) = 2 for k ≥ 1.

    Args:
        d: dimension, ≥ 1.
        k: degree, ≥ 0.

    Returns:
        N(d, k), an exact Python int (no overflow for large d, k).

    Raises:
        TypeError: d or k is not an int.
        ValueError: d < 1 or k < 0.

    Example:
        >>> from jaxntk.polynomials import num_harmonics
        >>> num_harmonics(3, 2), num_harmonics(10, 1), num_harmonics(10, 2)
        (5, 10, 54)
    """
    check_int("d", d, 1)
    check_int("k", k, 0)
    return math.comb(d + k - 1, k) - (math.comb(d + k - 3, k - 2) if k >= 2 else 0)


def num_harmonics_up_to(d: int, k: int) -> int:
    """N(d, ≤ k) = Σ_{ℓ≤k} N(d, ℓ): the number of independent functions of degree ≤ k on the
    sphere in R^d, the size of the top k + 1 degree blocks of the NTK's spectrum, and so the
    number of good directions kept out of the bulk penalty for a target of degree ≤ k
    (docs/science.md §6).

    N(d, ≤ 1) = d + 1, N(d, ≤ 2) = C(d + 2, 2) − 1, and in general N(d, ≤ k) = C(d + k, k) −
    C(d + k − 2, k − 2): the polynomials of degree ≤ k modulo |x|² times those of degree ≤ k − 2.

    Args:
        d: dimension, ≥ 1.
        k: highest degree, ≥ 0.

    Returns:
        N(d, ≤ k), an exact Python int.

    Raises:
        TypeError: d or k is not an int.
        ValueError: d < 1 or k < 0.

    Example:
        >>> from jaxntk.polynomials import num_harmonics_up_to
        >>> num_harmonics_up_to(10, 1), num_harmonics_up_to(10, 2), num_harmonics_up_to(10, 3)
        (11, 65, 275)
    """
    check_int("d", d, 1)
    check_int("k", k, 0)
    return sum(num_harmonics(d, ell) for ell in range(k + 1))


def _three_term(z: Array, a: tuple[float, ...], b: tuple[float, ...]) -> Array:
    """p_0 = 1, p_1 = a_0 z, p_{j+1} = a_j z p_j − b_j p_{j−1}; returns p_k for k = len(a)."""
    prev, cur = jnp.zeros_like(z), jnp.ones_like(z)
    for a_j, b_j in zip(a, b, strict=True):
        prev, cur = cur, a_j * z * cur - b_j * prev
    return cur


@functools.cache
def _hermite_coefficients(k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    a = tuple(1 / math.sqrt(j + 1) for j in range(k))
    b = tuple(math.sqrt(j / (j + 1)) for j in range(k))
    return a, b


@functools.cache
def _legendre_coefficients(k: int, d: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # P_1 = t for every d (the general formula is 0/0 at j = 0, d = 2).
    a = tuple(1.0 if j == 0 else (2 * j + d - 2) / (j + d - 2) for j in range(k))
    b = tuple(0.0 if j == 0 else j / (j + d - 2) for j in range(k))
    return a, b


@functools.cache
def _gegenbauer_coefficients(k: int, d: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # q_j = √N_j P_j turns the Legendre recurrence into one with a_j √(N_{j+1}/N_j) and
    # b_j √(N_{j+1}/N_{j−1}); the ratios of exact ints stay moderate where N itself overflows.
    a_leg, b_leg = _legendre_coefficients(k, d)
    n = [num_harmonics(d, j) for j in range(k + 1)]
    a = tuple(a_leg[j] * math.sqrt(n[j + 1] / n[j]) for j in range(k))
    b = tuple(0.0 if j == 0 else b_leg[j] * math.sqrt(n[j + 1] / n[j - 1]) for j in range(k))
    return a, b


def _as_float(z: Array, name: str) -> Array:
    z = jnp.asarray(z)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{name} must be a float array, got dtype {z.dtype}")
    return z
