"""The host CPU under XLA: freed buffers stay in the process (glibc, Linux), and jaxntk's own
programs run XLA's multithreaded Eigen kernels for convolutions and matmuls.

XLA's CPU backend allocates a program's buffers anew on every call. Under glibc's default
settings, a large request from any thread but the main one is served by fresh pages from
``mmap`` (a thread's arena holds at most 64 MiB) and handed back to the kernel when freed, so
every call page-faults its whole working set again: about a third of the CPU time of the
empirical NTK's features on a small CNN went to the kernel zeroing and mapping pages (measured
with ``perf``: benchmarks/ntk_speed.py's CNN, 128 inputs, 0.35 s wall of which 0.17 s system
time; 0.24 s and no system time with the settings below; a lone convolution of 1280 images
16 × 16 × 32, 0.083 s → 0.042 s).

`configure_allocator` makes three ``mallopt`` calls, before JAX starts its CPU backend:

- ``M_ARENA_MAX = 1``: every thread allocates from the main heap, which can grow past 64 MiB;
- ``M_MMAP_THRESHOLD = 1 GiB``: requests below it come from the heap, not from ``mmap``;
- ``M_TRIM_THRESHOLD = 1 GiB``: the heap gives memory back only when more than that is free.

The cost: the process keeps up to 1 GiB of freed memory for reuse (its resident set stays near
its peak), and the settings hold for the whole process: a data loader or another library beside
JAX gets them too. So importing jaxntk changes nothing; a program opts in with one call, before
its first JAX computation::

    import jaxntk
    jaxntk.configure_allocator()  # or: jaxntk.host.configure_allocator()

The `jaxntk` command and the benchmark scripts make that call when they start. The same settings
without jaxntk are glibc's environment variables, `ENVIRONMENT` (``MALLOC_ARENA_MAX=1
MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``). `configure_allocator`
does nothing where ``JAXNTK_ALLOCATOR=system`` is set (the opt-out for the command and the
benchmarks), where the environment already tunes malloc (a ``MALLOC_*`` setting,
``GLIBC_TUNABLES``, an allocator in ``LD_PRELOAD``), or where the C library is not glibc. Called
after JAX has run a computation, the arena setting cannot reach the threads JAX has started: the
thresholds are set and `allocator_status` says so.

`cpu_compiler_options` gives the compiler options jaxntk's own jitted programs (the features of
the empirical NTK's blocks) are compiled with on the CPU. JAX 0.10's CPU backend hands
convolutions and matmuls to YNNPACK, which ran each of them at about one core's speed here (two
independent convolutions in one program ran side by side at twice the rate of one); the option
``xla_cpu_experimental_ynn_fusion_type=""`` keeps them in XLA's Eigen kernels, which use every
core. Measured on 2 cores (float32, best of 7): a convolution of 1280 images 16 × 16 × 32 with a
3 × 3 × 32 × 32 kernel 0.049 → 0.041 s, its transpose 0.071 → 0.041 s, 128 matmuls
(288 × 256)·(256 × 320) 0.057 → 0.035 s; the NTK features of a block of 128 inputs of
benchmarks/ntk_speed.py's CNN 0.18 → 0.12 s. (The NTK's contraction, one large matmul per pair
of blocks, keeps XLA's choice: it ran faster there.) Only jaxntk's programs get the option, only
on the CPU backend, only where this jaxlib knows it, and not where ``XLA_FLAGS`` already sets
it; ``JAXNTK_CPU_KERNELS=xla`` leaves XLA's choice.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "CPU_KERNELS_ENV",
    "CPU_OPTIONS",
    "ENV",
    "ENVIRONMENT",
    "allocator_status",
    "configure_allocator",
    "cpu_compiler_options",
]

ENV = "JAXNTK_ALLOCATOR"
"""Environment variable: "system" leaves the C library's allocator as it is."""

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ARENAS, THRESHOLD = 1, 1 << 30
ENVIRONMENT = {
    "MALLOC_ARENA_MAX": str(ARENAS),
    "MALLOC_MMAP_THRESHOLD_": str(THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(THRESHOLD),
}
"""The same settings as glibc environment variables, for a process that does not import jaxntk
(benchmarks/ntk_speed.py gives them to neural-tangents' side for a like-for-like comparison)."""
_MALLOC_ENV = ("GLIBC_TUNABLES", *ENVIRONMENT)
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
_STATUS = ["system: jaxntk.configure_allocator has not run (the C library's own settings)"]


def allocator_status() -> str:
    """What `configure_allocator` did in this process, in one line.

    Example:
        >>> import jaxntk
        >>> jaxntk.allocator_status().split(":")[0] in ("kept", "partly kept", "system")
        True
    """
    return _STATUS[0]


def configure_allocator(
    environ: Mapping[str, str] | None = None,
    libc: Any = None,
    backend_started: bool | None = None,
) -> str:
    """Keep freed host memory for reuse (see the module docstring); returns `allocator_status()`.

    Args:
        environ: the environment to read (default `os.environ`).
        libc: an object with glibc's ``mallopt`` (default: the process's C library).
        backend_started: whether JAX's backends already run (default: asked of JAX).

    Returns:
        One line: "kept: ..." when all three settings were made, "partly kept: ..." when JAX's
        threads were already running or mallopt refused one, "system: <why>" when nothing was
        changed.

    Example:
        A program's first lines (here with a stand-in for the C library, which records the calls):

        >>> from jaxntk import host
        >>> class Libc:
        ...     calls = []
        ...     def mallopt(self, param, value):
        ...         self.calls.append((param.value, value.value))
        ...         return 1
        >>> libc = Libc()
        >>> host.configure_allocator({}, libc=libc, backend_started=False)
        'kept: one arena, large buffers from the heap, freed memory kept up to 1 GiB'
        >>> libc.calls == [(host.M_ARENA_MAX, 1), (host.M_MMAP_THRESHOLD, 2**30),
        ...                (host.M_TRIM_THRESHOLD, 2**30)]
        True
    """
    environ = os.environ if environ is None else environ
    libc = _glibc() if libc is None else libc
    reason = _reason_to_skip(environ) or (None if libc else "the C library is not glibc")
    if reason is not None:
        _STATUS[0] = f"system: {reason}"
        return _STATUS[0]
    if backend_started is None:
        backend_started = _backend_started()
    settings = [(M_MMAP_THRESHOLD, THRESHOLD), (M_TRIM_THRESHOLD, THRESHOLD)]
    if not backend_started:
        settings.insert(0, (M_ARENA_MAX, ARENAS))
    failed = [p for p, value in settings if libc.mallopt(ctypes.c_int(p), ctypes.c_int(value)) != 1]
    if failed:
        _STATUS[0] = f"partly kept: mallopt refused parameters {failed}"
    elif backend_started:
        _STATUS[0] = (
            "partly kept: large buffers from the heap, freed memory kept up to 1 GiB; one arena "
            "not set (JAX's backend started before jaxntk was imported)"
        )
    else:
        _STATUS[0] = "kept: one arena, large buffers from the heap, freed memory kept up to 1 GiB"
    return _STATUS[0]


def _reason_to_skip(environ: Mapping[str, str]) -> str | None:
    if environ.get(ENV, "") == "system":
        return f"{ENV}=system"
    if environ.get(ENV, "") not in ("", "keep"):
        return f"{ENV}={environ[ENV]!r} is neither 'keep' nor 'system'"
    tuned = [name for name in _MALLOC_ENV if environ.get(name)]
    if tuned:
        return f"the environment tunes malloc ({', '.join(tuned)})"
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _PRELOADED):
        return f"LD_PRELOAD holds an allocator ({preload})"
    return None


def _glibc() -> Any:
    """The process's C library where it is glibc (it exports gnu_get_libc_version), else None.

    The symbols of the running process itself: no search for the library on disk at import."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else True


CPU_KERNELS_ENV = "JAXNTK_CPU_KERNELS"
"""Environment variable: "xla" compiles jaxntk's programs with XLA's own choice of CPU kernels."""

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""The compiler options `cpu_compiler_options` gives: no YNNPACK fusions (Eigen's kernels)."""


def cpu_compiler_options(
    environ: Mapping[str, str] | None = None,
    backend: str | None = None,
    accepted: Callable[[], bool] | None = None,
) -> dict[str, str]:
    """Compiler options for jaxntk's own jitted programs (see the module docstring).

    Args:
        environ: the environment to read (default `os.environ`).
        backend: JAX's default backend (default: asked of JAX).
        accepted: whether this jaxlib compiles with `CPU_OPTIONS` (default: tried once on a
            one-element program, the answer kept for the process).

    Returns:
        `CPU_OPTIONS` on the CPU backend, else {}: {} too where ``JAXNTK_CPU_KERNELS=xla``, where
        ``XLA_FLAGS`` names the option, or where this jaxlib refuses it. Raises ValueError for
        another value of ``JAXNTK_CPU_KERNELS``.

    Example:
        >>> import jax
        >>> from jaxntk import host
        >>> options = host.cpu_compiler_options()
        >>> options in ({}, host.CPU_OPTIONS)
        True
        >>> f = jax.jit(lambda x: 2 * x, compiler_options=options)
        >>> float(f(1.5))
        3.0
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(CPU_KERNELS_ENV, "")
    if choice not in ("", "eigen", "xla"):
        raise ValueError(f"{CPU_KERNELS_ENV} must be 'eigen' or 'xla' (or unset), got {choice!r}")
    if choice == "xla" or any(name in environ.get("XLA_FLAGS", "") for name in CPU_OPTIONS):
        return {}
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend != "cpu":
        return {}
    return dict(CPU_OPTIONS) if (accepted or _options_accepted)() else {}


@functools.cache
def _options_accepted() -> bool:
    """Whether this jaxlib compiles a program with `CPU_OPTIONS` (an older one names no such
    option and refuses it)."""
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros(1)).compile()
    except Exception:  # jaxlib's error types differ between versions
        return False
    return True
