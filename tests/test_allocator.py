"""jaxntk._allocator: the malloc settings made at import, when they are skipped, and their effect
(page faults of a program whose buffers are allocated on every call)."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxntk import _allocator as al

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
    status = al.configure({}, libc=libc, backend_started=False)
    assert libc.calls == [(-8, 1), (-3, 1 << 30), (-1, 1 << 30)]  # arena, mmap, trim
    assert status.startswith("kept:") and al.status() == status


def test_after_the_backend_started_only_the_thresholds():
    libc = FakeLibc()
    status = al.configure({"JAXNTK_ALLOCATOR": "keep"}, libc=libc, backend_started=True)
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
    status = al.configure(environ, libc=libc, backend_started=False)
    assert libc.calls == [] and status.startswith("system:") and why in status


def test_a_refused_setting_is_reported():
    status = al.configure({}, libc=FakeLibc(refuse={-8}), backend_started=False)
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
    def f(x):  # a 128 MiB temporary and output on every call, from XLA's threads
        return jnp.sort(x * 2.0)[::2]

    x = jnp.ones((1 << 25,), jnp.float32)
    jax.block_until_ready(f(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        jax.block_until_ready(f(x))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"status": jaxntk.allocator_status(), "faults": faults}))
"""


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_import_keeps_freed_buffers_so_calls_stop_page_faulting():
    kept = _child(FAULTS)
    system = _child(FAULTS, JAXNTK_ALLOCATOR="system")
    assert kept["status"].startswith("kept:")
    assert system["status"] == "system: JAXNTK_ALLOCATOR=system"
    # 5 calls touch ≥ 5 × 192 MiB of fresh pages (4 KiB each) under the system settings; kept,
    # most pages are reused (measured here: 901144 against 147457 faults)
    assert system["faults"] > 5 * 192 * 256 / 2
    assert kept["faults"] < system["faults"] / 4, (kept, system)


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
