"""Seconds per training step with the neurons split over 1, 2, 4 and 8 devices (`jaxntk.sharding`).

Each count trains through `jaxntk.train(..., devices=N)` for T1 and T2 steps with one compiled
program, after a warm-up run; (time(T2) − time(T1)) / (T2 − T1) is the cost of a step without
compilation, set-up and final evaluation (as in benchmarks/step_time.py), in wall-clock time and in
CPU time of the process (all threads: the work done, less sensitive than wall time to other
processes on a shared machine). Also reports the bytes
each device holds of the m-dependent arrays (W0, a, σ'(X W0ᵀ), σ''(X W0ᵀ) and U), read from the
placed arrays' shards. Without accelerators it emulates the devices on the host
(XLA_FLAGS=--xla_force_host_platform_device_count=8, set here before JAX starts): on a machine with
few cores the emulated devices share them, so the table then shows the overhead of partitioning, not
a speed-up. Prints a table and writes it, with the machine and versions, to `--out`/sharding.md
(appended to benchmarks/RESULTS.md only with `--results`).

    python benchmarks/sharding.py [--d 50 --n 354 --m 4000 --variants ntk+quadntk,full]
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

import argparse
import platform
import time
from importlib import metadata

import jax
import numpy as np
from _machine import add_output_arguments, cpu_name, write_table

import jaxntk as jn
from jaxntk import sharding


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--n", type=int, default=354)
    p.add_argument("--m", type=int, default=4000)
    p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    p.add_argument("--variants", default="ntk+quadntk,full")
    p.add_argument("--t1", type=int, default=20)
    p.add_argument("--t2", type=int, default=220)
    p.add_argument("--repeats", type=int, default=3)
    add_output_arguments(p)
    args = p.parse_args()

    counts = [int(c) for c in args.devices.split(",")]
    variants = args.variants.split(",")
    task = jn.paper_task(jax.random.PRNGKey(0), d=args.d, n=args.n, n_test=args.n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=args.d, m=args.m)
    kw = dict(seeds=[0], eval_every=args.t2 - args.t1, evals_per_chunk=1, progress=False)

    def timed(variant: str, devices: int, steps: int) -> np.ndarray:
        t0 = np.array([time.perf_counter(), time.process_time()])
        run = jn.train(net, task, variant, steps=steps, devices=devices, **kw)
        jax.block_until_ready(run.params)
        return np.array([time.perf_counter(), time.process_time()]) - t0

    steps = args.t2 - args.t1
    per_step: dict[tuple[str, int], list[np.ndarray]] = {}
    for variant in variants:
        for devices in counts:
            timed(variant, devices, args.t1)  # compile and warm up
    for _ in range(args.repeats):  # interleaved, so that a change of load hits every row alike
        for variant in variants:
            for devices in counts:
                t = (timed(variant, devices, args.t2) - timed(variant, devices, args.t1)) / steps
                per_step.setdefault((variant, devices), []).append(t)
    memory = {devices: _m_dependent_bytes(net, task, devices) for devices in counts}

    rows = []
    for variant in variants:
        base = np.min(per_step[(variant, counts[0])], axis=0)
        for devices in counts:
            times = np.asarray(per_step[(variant, devices)])
            wall, cpu = np.min(times, axis=0)
            rows.append(
                f"| {variant} | {devices} | {wall * 1e3:.2f} | {np.median(times[:, 0]) * 1e3:.2f} "
                f"| {base[0] / wall:.2f}× | {cpu * 1e3:.2f} | {memory[devices] / 2**20:.2f} |"
            )
            print(rows[-1], flush=True)
    header = (
        f"\n## Neurons split over host devices (benchmarks/sharding.py, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
        f"d={args.d}, n={args.n}, m={args.m}, float32, 1 seed, plain GD; ms/step = min (and "
        f"median) over {args.repeats} interleaved repeats of (T={args.t2}) − (T={args.t1}) steps, "
        "wall clock and CPU time of the process (all threads); memory = "
        "W0, a, σ'(X W0ᵀ), σ''(X W0ᵀ) on the training inputs and U, per device, from the placed "
        f"arrays' shards. Machine: {_machine()}.\n\n"
        f"| variant | devices | wall ms / step (min) | (median) | wall speed-up vs {counts[0]} | "
        "CPU ms / step | m-dependent MiB / device |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(rows) + "\n"
    write_table(args.out, "sharding", table, args.results)


def _m_dependent_bytes(net, task, devices: int) -> int:
    lay = sharding.Layout(sharding.device_mesh(devices), net.m)
    prep = lay.prepared(net.prepare(task.x_train))
    u = lay.state(jax.numpy.zeros((1, 1, net.m, net.d), net.w0.dtype))
    trees = [lay.model(net), prep.d1, prep.d2, u]
    return max(sharding.bytes_per_device(trees).values())


def _machine() -> str:
    cpu = cpu_name()
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("jax", "jaxlib", "numpy"))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores, "
        f"{jax.device_count()} {jax.devices()[0].platform} devices "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); Python {platform.python_version()}, "
        f"{versions}; load average {load} at the end"
    )


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
