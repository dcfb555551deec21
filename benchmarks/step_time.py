"""Seconds per training step of every variant, measured through `jaxntk.train` itself.

Each variant is trained for T1 and for T2 steps with the same compiled program (the step count is
an argument, not a constant), after a warm-up run; (time(T2) − time(T1)) / (T2 − T1) is the cost of
a step with compilation, set-up and the final evaluation removed. Prints a table and appends it,
with the machine and versions, to `--out`/step_time.md (appended to benchmarks/RESULTS.md only
with `--results`).

    python benchmarks/step_time.py [--d 50 --n 354 --m 4000 --seeds 1 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from _machine import add_output_arguments, cpu_name, write_table

import jaxntk as jn


def seconds_per_step(
    model, task, variant: str, *, t1: int, t2: int, repeats: int, **train_kw
) -> float:
    """Seconds per step of `jn.train(model, task, variant, ...)`: (min over repeats of time(T2) −
    min over repeats of time(T1)) / (T2 − T1), after a warm-up (compiling) run of T1 steps.

    Each minimum is the least disturbed run, so the difference is the cost of T2 − T1 steps with
    compilation, set-up and the final evaluation removed."""
    kw = dict(eval_every=t2 - t1, evals_per_chunk=1, progress=False, **train_kw)

    def timed(steps: int) -> float:
        t0 = time.perf_counter()
        run = jn.train(model, task, variant, steps=steps, **kw)
        jax.block_until_ready(run.params)
        return time.perf_counter() - t0

    timed(t1)
    short, long = [], []
    for _ in range(repeats):
        short.append(timed(t1))
        long.append(timed(t2))
    return (min(long) - min(short)) / (t2 - t1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--n", type=int, default=354)
    p.add_argument("--m", type=int, default=4000)
    p.add_argument("--seeds", type=int, default=1, help="vmapped seeds per run")
    p.add_argument("--t1", type=int, default=200)
    p.add_argument("--t2", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=3)
    add_output_arguments(p)
    args = p.parse_args()

    key = jax.random.PRNGKey(0)
    task = jn.paper_task(key, d=args.d, n=args.n, n_test=args.n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=args.d, m=args.m)
    seeds = list(range(args.seeds))
    rows = []
    for variant in jn.objectives.PAPER_VARIANTS:
        per_step = seconds_per_step(
            net, task, variant, t1=args.t1, t2=args.t2, repeats=args.repeats, seeds=seeds
        )
        rows.append((variant, per_step))
        print(f"{variant:<12} {per_step * 1e3:8.2f} ms/step", flush=True)

    header = (
        f"\n## Step time per variant (`benchmarks/step_time.py`), {time.strftime('%Y-%m-%d')}\n\n"
        f"d={args.d}, n={args.n}, m={args.m}, float32, {args.seeds} vmapped seed(s), plain GD, "
        f"min over {args.repeats} repeats of (T={args.t2}) − (T={args.t1}) steps.\n"
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform}; jax {jax.__version__}, load average "
        f"{os.getloadavg()[0]:.1f} at the end.\n\n| variant | ms / step |\n|---|---|\n"
    )
    table = "".join(f"| {v} | {s * 1e3:.2f} |\n" for v, s in rows)
    write_table(args.out, "step_time", header + table, args.results)
    print(np.round([s * 1e3 for _, s in rows], 2).tolist())


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
