"""Seconds per epoch of each variant on MNIST-1D's CNN, minibatch, measured through `jaxntk.train`.

The experiment `jaxntk reproduce --only mnist1d` times its epochs from its progress lines, under
whatever else the machine runs at that moment; this script measures the variants side by side
instead. Each variant (the CNN of `jaxntk.experiments.mnist1d`, one seed, the published 4000
signals with 10 % held out, batches of 100, Adam, cross-entropy) is trained for E1 and for E2
epochs with the same compiled program, after a warm-up run; (min time(E2) − min time(E1)) /
(E2 − E1) is the cost of an epoch with compilation, the good directions and the set-up removed.
The variants take turns in every repeat, so a change of load touches them alike. Prints a table
and writes it, with the machine and versions, to `--out`/epoch_time.md (appended to
benchmarks/RESULTS.md only with `--results`).

    python benchmarks/epoch_time.py [--e1 1 --e2 4 --repeats 2 --n-train 4000] --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
from _machine import add_output_arguments, cpu_name, write_table

import jaxntk as jn
from jaxntk.experiments import mnist1d

VARIANTS = ("full", "ntk", "quadntk", "ntk+quadntk", "regularized")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--e1", type=int, default=1)
    p.add_argument("--e2", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    add_output_arguments(p)
    args = p.parse_args()
    config = dataclasses.replace(mnist1d.Config(), n_train=args.n_train, seeds=(0,))
    task = jn.data.mnist1d(n_train=config.n_train, n_test=config.n_test)
    model = mnist1d._model(config, 0, task.x_train[:1])
    variants = args.variants.split(",")

    def timed(variant: str, epochs: int) -> float:
        run_config = dataclasses.replace(config, epochs=epochs, patience=None)
        t0 = time.perf_counter()
        run = mnist1d._train(run_config, [model], task, variant, "cross_entropy", False)
        jax.block_until_ready(run.params)
        return time.perf_counter() - t0

    for v in variants:
        timed(v, args.e1)  # compile
    times = {v: {"short": [], "long": []} for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            times[v]["short"].append(timed(v, args.e1))
            times[v]["long"].append(timed(v, args.e2))
    per_epoch = {
        v: (min(t["long"]) - min(t["short"])) / (args.e2 - args.e1) for v, t in times.items()
    }
    full = per_epoch.get("full")
    header = (
        f"\n## Seconds per epoch on MNIST-1D (`benchmarks/epoch_time.py`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"The CNN of `jaxntk.experiments.mnist1d` ({config.channels} channels), n = "
        f"{config.n_train} (10 % held out), batches of {config.batch_size}, Adam, cross-entropy, "
        f"1 seed, float32; min over {args.repeats} repeats of (E = {args.e2}) − (E = {args.e1}) "
        f"epochs, the variants taking turns.\nMachine: {cpu_name()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__}, load average {os.getloadavg()[0]:.1f} at the end.\n\n"
        "| variant | s / epoch | × full |\n|---|---|---|\n"
    )
    rows = "".join(
        f"| {v} | {s:.3f} | {s / full:.2f} |\n" if full else f"| {v} | {s:.3f} | |\n"
        for v, s in per_epoch.items()
    )
    print(header + rows, flush=True)
    write_table(args.out, "epoch_time", header + rows, args.results)


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
