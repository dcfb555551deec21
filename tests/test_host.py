"""jaxntk.host: the malloc settings made at import, when they are skipped, and their effect
(page faults of a program whose buffers are allocated on every call)."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxntk import host

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    """Records mallopt calls; refuses the parameters in `refuse`."""

    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def mallopt(self, param, value):
        param, value = param.value, value.value
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


def test_three_settings_before_the_backend_starts():
    libc = FakeLibc()
    status = host.configure_allocator({}, libc=libc, backend_started=False)
    assert libc.calls == [(-8, 1), (-3, 1 << 30), (-1, 1 << 30)]  # arena, mmap, trim
    assert status.startswith("kept:") and host.allocator_status() == status


def test_after_the_backend_started_only_the_thresholds():
    libc = FakeLibc()
    status = host.configure_allocator({"JAXNTK_ALLOCATOR": "keep"}, libc=libc, backend_started=True)
    assert libc.calls == [(-3, 1 << 30), (-1, 1 << 30)]
    assert status.startswith("partly kept:") and "backend started" in status


@pytest.mark.parametrize(
    ("environ", "why"),
    [
        ({"JAXNTK_ALLOCATOR": "system"}, "JAXNTK_ALLOCATOR=system"),
        ({"JAXNTK_ALLOCATOR": "fast"}, "neither 'keep' nor 'system'"),
        ({"MALLOC_ARENA_MAX": "4"}, "MALLOC_ARENA_MAX"),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "jemalloc"),
    ],
)
def test_skipped_where_asked_or_where_the_environment_tunes_malloc(environ, why):
    libc = FakeLibc()
    status = host.configure_allocator(environ, libc=libc, backend_started=False)
    assert libc.calls == [] and status.startswith("system:") and why in status


def test_skipped_where_the_c_library_is_not_glibc(monkeypatch):
    monkeypatch.setattr(host, "_glibc", lambda: None)
    assert host.configure_allocator({}, backend_started=False) == (
        "system: the C library is not glibc"
    )


def test_the_environment_form_names_the_same_settings():
    # what benchmarks/ntk_speed.py gives neural-tangents' side: the values mallopt gets here
    assert host.ENVIRONMENT == {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    }
    status = host.configure_allocator(host.ENVIRONMENT, libc=FakeLibc(), backend_started=False)
    assert status.startswith("system: the environment tunes malloc (MALLOC_ARENA_MAX")


def test_a_refused_setting_is_reported():
    status = host.configure_allocator({}, libc=FakeLibc(refuse={-8}), backend_started=False)
    assert status == "partly kept: mallopt refused parameters [-8]"


def _child(code: str, **env) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "JAXNTK_ALLOCATOR"} | env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


FAULTS = """
    import json, resource
    import jaxntk
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):  # a convolution's 64 MiB output, allocated on every call
        w = jnp.ones((3, 3, 16, 16), x.dtype)
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)

    x = jnp.ones((256, 64, 64, 16), jnp.float32)
    jax.block_until_ready(f(x))
    rounds = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            jax.block_until_ready(f(x))
        rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"status": jaxntk.allocator_status(), "faults": min(rounds)}))
"""


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_import_keeps_freed_buffers_so_calls_stop_page_faulting():
    kept = _child(FAULTS)
    system = _child(FAULTS, JAXNTK_ALLOCATOR="system")
    assert kept["status"].startswith("kept:")
    assert system["status"] == "system: JAXNTK_ALLOCATOR=system"
    # the fewest page faults of 4 rounds of 5 calls: 5 × 64 MiB of fresh pages (4 KiB each) under
    # the system settings, every call; kept, the pages are reused (measured here: 82301 against
    # 0 faults; some rounds fault in part, hence the fewest; one run of the whole suite on the
    # CI machine saw 16385 against 81932 in every round, one output's pages per 5 calls)
    one_output = 64 * 256
    assert system["faults"] > 5 * one_output / 2
    assert kept["faults"] <= 1.25 * one_output, (kept, system)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_imported_after_a_computation_the_status_says_partly():
    late = _child(
        """
        import json
        import jax.numpy as jnp
        jnp.ones(3).block_until_ready()
        import jaxntk
        print(json.dumps({"status": jaxntk.allocator_status()}))
        """
    )
    assert late["status"].startswith("partly kept:")


# ---------------------------------------------------------------- compiler options


def test_cpu_options_on_the_cpu_backend_where_the_jaxlib_accepts_them():
    got = host.cpu_compiler_options({}, backend="cpu", accepted=lambda: True)
    assert got == {"xla_cpu_experimental_ynn_fusion_type": ""} == host.CPU_OPTIONS
    assert host.cpu_compiler_options({"JAXNTK_CPU_KERNELS": "eigen"}, "cpu", lambda: True) == got


@pytest.mark.parametrize(
    "environ, backend, accepted",
    [
        ({"JAXNTK_CPU_KERNELS": "xla"}, "cpu", True),  # the opt-out
        ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}, "cpu", True),  # the user's
        ({}, "gpu", True),
        ({}, "cpu", False),  # a jaxlib without the option
    ],
)
def test_no_cpu_options_where_asked_elsewhere_or_unknown(environ, backend, accepted):
    assert host.cpu_compiler_options(environ, backend, lambda: accepted) == {}


def test_an_unknown_cpu_kernels_value_is_refused():
    with pytest.raises(ValueError, match=r"JAXNTK_CPU_KERNELS must be 'eigen' or 'xla'.*'fast'"):
        host.cpu_compiler_options({"JAXNTK_CPU_KERNELS": "fast"}, "cpu", lambda: True)


def test_the_engine_compiles_its_blocks_without_ynn_fusions():
    # XLA's compiled program of one block's features: no YNNPACK fusion under the options
    # (this jaxlib: jax 0.10 fuses convolutions and matmuls into YNNPACK by default)
    import jax
    import jax.numpy as jnp

    from jaxntk import _structured, ntk

    def apply_fn(params, x):
        dims = ("NHWC", "HWIO", "NHWC")
        z = jax.lax.conv_general_dilated(x, params[0], (1, 1), "SAME", dimension_numbers=dims)
        return jnp.tanh(z).mean(axis=(1, 2)) @ params[1]

    params = (jnp.ones((3, 3, 2, 4)) / 6, jnp.ones((4, 3)))
    x = jnp.ones((2, 5, 5, 2))
    plan = _structured.make_plan(apply_fn, params, x[:1], (1,), ())
    args = (jax.tree_util.Partial(apply_fn), params, x, "structured", plan)

    def text(options):
        jitted = ntk._compiled(ntk._features_of_block, (3, 4), options)
        return jitted.lower(*args).compile().as_text()

    options = ntk._cpu_options()
    if not options:
        pytest.skip("no CPU options here (another backend or jaxlib)")
    if "__ynn_fusion" not in text(()):
        pytest.skip("this jaxlib fuses nothing into YNNPACK")
    assert "__ynn_fusion" not in text(options)
    assert options == tuple(host.CPU_OPTIONS.items())
