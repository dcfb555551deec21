"""Test configuration: strict dtype promotion and rank promotion errors, float32 by default.

Tests that need float64 enable it locally with `with jax.enable_x64(True):`.
"""

import gc
import os

# The suite compiles thousands of small programs whose LLVM optimization takes longer than they
# run: at optimization level 0 the suite took 11.9 min instead of 15.8 on 2 cores (2026-12-08),
# with every value still checked against its independent computation. Set before JAX creates
# its backend; subprocesses started with this environment inherit it. A flag given in XLA_FLAGS
# already wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Each compiled CPU program holds about 8 memory mappings until it is released, and a process
    may hold at most vm.max_map_count (65 530) of them: a few thousand programs in one pytest
    process end in a segfault. Clearing per module keeps every process far below that.
    """
    yield
    jax.clear_caches()
    gc.collect()


# Scripts run in subprocesses by the tests, not test modules: `--doctest-modules` must not import
# them (they configure JAX's devices and warnings at import).
collect_ignore_glob = ["*_worker.py"]


#: Docstring examples that take over ~5 s on a quiet 2-core machine: they run in the full suite
#: (the README's test command) and are left out of the fast loop, `pytest -m "not slow"`
#: (CONTRIBUTING.md). Each still has a fast test of its module in the loop.
SLOW_DOCTESTS = {
    "jaxntk.training.train",
    "jaxntk.objectives.VariantObjective",
    "jaxntk.minibatch.BatchObjective",
    "jaxntk.spectral.degree_block_report",
    "jaxntk.sharding",
    "jaxntk.targets.paper_task",
    "jaxntk.cli.main",
}


def pytest_collection_modifyitems(config, items):
    doctests = [item for item in items if isinstance(item, pytest.DoctestItem)]
    for item in doctests:
        if item.name in SLOW_DOCTESTS:
            item.add_marker(pytest.mark.slow)
    # a renamed example would silently join the fast loop: every name must still exist
    # (only among the modules collected: a run of one file does not see the others' examples)
    root = config.rootpath
    modules = {".".join(item.path.relative_to(root).with_suffix("").parts) for item in doctests}
    lost = {
        name
        for name in SLOW_DOCTESTS - {item.name for item in doctests}
        if name in modules or name.rsplit(".", 1)[0] in modules
    }
    if lost:
        raise pytest.UsageError(f"SLOW_DOCTESTS names examples that are gone: {sorted(lost)}")
