"""What the laziness diagnostics add to a training chunk (`VariantObjective(probe=P)`).

For the lazy-rich experiment's programs at its cpu preset's sizes (d = 30, n = 164, the paper's
target; the α sweep of the network at each width, 9 scales in one program; and ntk+quadntk at the
largest width), one chunk of 1000 GD steps with an evaluation every 100 steps is timed with the
diagnostics off (probe = 0) and on (probe = P): the minimum over repeats of the whole call, after
a warm-up call of each that compiles it, the two timed in alternation. The overhead is
on(P) / off − 1. Prints a table and writes it, with the machine and the load, to
`--out`/diagnostics_cost.md.

    python benchmarks/diagnostics_cost.py --out DIR [--probe 64 --widths 500,2000 --repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
from _machine import add_output_arguments, cpu_name, write_table

import jaxntk as jn
from jaxntk.experiments import lazy_rich
from jaxntk.experiments._common import config_setup
from jaxntk.scaling import Scaled


def chunk_seconds(models, tasks, variant: str, probe: int, repeats: int) -> tuple[float, float]:
    """Least time over `repeats` of one 1000-step chunk (10 evaluations) with the diagnostics
    off and on: both compiled first, then timed in alternation, so that a change of the
    machine's load falls on both."""

    def once(p: int) -> float:
        t0 = time.perf_counter()
        run = jn.train(
            models,
            tasks,
            variant,
            seeds=[1] * len(models),
            steps=1000,
            eval_every=100,
            probe=p,
            progress=False,
        )
        jax.block_until_ready(run.params)
        return time.perf_counter() - t0

    once(0), once(probe)
    times = [(once(0), once(probe)) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", type=int, default=64)
    p.add_argument("--widths", default="500,2000")
    p.add_argument("--repeats", type=int, default=4)
    add_output_arguments(p)
    args = p.parse_args()
    cfg = lazy_rich.PRESETS["cpu"]
    widths = [int(w) for w in args.widths.split(",")]
    rows = []
    for m in widths:
        task, net = config_setup(cfg, 1, cfg.d, cfg.n, m)
        cases = [
            (f"full, {len(cfg.alphas)} α, m = {m}", [Scaled(net, a) for a in cfg.alphas], "full")
        ]
        if m == max(widths):
            cases.append((f"ntk+quadntk, m = {m}", [net], "ntk+quadntk"))
        for label, models, variant in cases:
            tasks = [task] * len(models)
            off, on = chunk_seconds(models, tasks, variant, args.probe, args.repeats)
            rows.append((label, off, on))
            print(f"{label:<32} off {off:7.2f} s  on {on:7.2f} s  +{on / off - 1:6.1%}", flush=True)
    table = (
        f"\n## Laziness diagnostics per chunk (`benchmarks/diagnostics_cost.py`), "
        f"{time.strftime('%Y-%m-%d')}\n\n"
        f"d = {cfg.d}, n = {cfg.n}, n_test = {cfg.n_test}, probe P = {args.probe}, one chunk of "
        f"1000 steps with 10 evaluations, float32, min over {args.repeats} alternating "
        f"repeats after a warm-up. Machine: {cpu_name()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__}; load average {os.getloadavg()[0]:.1f} at the end.\n\n"
        "| program | off (s) | on (s) | added |\n|---|---|---|---|\n"
        + "".join(f"| {lab} | {a:.2f} | {b:.2f} | {b / a - 1:+.1%} |\n" for lab, a, b in rows)
    )
    print(table)
    write_table(args.out, "diagnostics_cost", table, args.results)


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
