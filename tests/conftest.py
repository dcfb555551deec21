"""Test configuration: strict dtype promotion and rank promotion errors, float32 by default.

Tests that need float64 enable it locally with `with jax.enable_x64(True):`.
"""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


# Scripts run in subprocesses by the tests, not test modules: `--doctest-modules` must not import
# them (they configure JAX's devices and warnings at import).
collect_ignore_glob = ["*_worker.py"]
