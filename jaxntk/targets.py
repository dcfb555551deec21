"""Input distributions and target functions (PAPER.md §1, §6).

Inputs x ∈ R^d are drawn from N(0, I_d) ("gaussian", the authors' experiments) or uniformly on the
sphere of radius √d ("sphere", the theory).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

DISTRIBUTIONS = ("gaussian", "sphere")


def sample_inputs(key: Array, n: int, d: int, distribution: str = "gaussian", dtype=None) -> Array:
    """n inputs in R^d, shape (n, d): x ~ N(0, I_d) or x uniform on the sphere of radius √d.

    Traceable (n, d and distribution are static), so training loops can draw fresh samples.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {distribution!r}; expected one of {list(DISTRIBUTIONS)}"
        )
    for name, v in (("n", n), ("d", d)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be ≥ 1, got {v}")
    dtype = jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)
    x = jax.random.normal(key, (n, d), dtype=dtype)
    if distribution == "sphere":
        x = x * (math.sqrt(d) / jnp.linalg.norm(x, axis=1, keepdims=True))
    return x
