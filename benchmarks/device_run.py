"""The GPU run in one command: a time estimate, `jaxntk bench` at the paper's size, the λ sweep.

Called by `benchmarks/device_run.sh` (which sets the sizes from environment variables):

1. Estimate: the matmul rate and the memory bandwidth of the device are measured (the bench's
   `matmul_peak` and `memory_bandwidth` rows) and the run's time is estimated from the FLOPs
   and the bytes of its steps and evaluations, each at max(FLOPs / rate, bytes / bandwidth)
   (`estimate`).
2. Memory: the vmap path's memory for L λ × S seeds in one program, from the sizes of its arrays
   (`vmap_memory_bytes`), with the largest widths m that fit one 80 GB and one 141 GB device; on
   request (`--check-memory`) the same program is compiled and XLA's own buffer assignment
   (`compiled_memory`, `memory_analysis()`) is printed beside the formula.
3. `jaxntk bench` at the given size: the roofline rows, the step rows of the chosen variants and
   the batching rows (vmap and lax.map over 3 λ).
4. The authors' λ sweep (`jaxntk.experiments.lambda_sweep`, 6 λ × 3 seeds, "regularized", plain GD)
   as one program: `jaxntk.train` given one network and task per seed vmaps the 18 settings
   ("auto" batching: vmap on a GPU); lambda-sweep.json, .npz and .png.

Everything is written to `--out` (device_run.json beside the bench's and the sweep's files).
`--memory-table` only writes the memory table (memory.md; with `--results` also appended to
benchmarks/RESULTS.md).

    python benchmarks/device_run.py --out DIR [--d 100 --n 1000 --m 10000 --n-test 10000
        --steps 20000 --eval-every 250 --bench-variants regularized,ntk+quadntk --check-memory]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

F32 = 4
GB = 1e9
DEVICES_GB = {"80 GB (A100/H100)": 80, "141 GB (H200)": 141}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of one λ-sweep program: `settings` = L λ × S seeds vmapped, "regularized" on
    f_L + f_Q, each of the S seeds with its own task and network (`seeds` = S)."""

    d: int = 100
    n: int = 1000
    m: int = 10_000
    n_test: int = 10_000
    settings: int = 18
    k: int | None = None  # good directions kept; default d
    n_pop: int = 2000  # evaluation inputs of R_pop (training.POP_EVAL_SAMPLES, ≤ n_test)
    parts: int = 2  # target parts of the paper's task (linear, quadratic)
    seeds: int = 3  # tasks and networks in the program, one per seed (settings = λ × seeds)


def vmap_memory_terms(s: Sizes) -> dict[str, int]:
    """The arrays of one vmapped λ-sweep chunk, float32 bytes each (see `vmap_memory_bytes`)."""
    k = s.d if s.k is None else s.k
    n_pop = min(s.n_pop, s.n_test)
    # n × m-like arrays per evaluated input set: σ', σ'' (shared) or Z and the term products
    # (per setting), two each on the training, test and R_pop inputs, plus one more test-set
    # array where n_test exceeds 2·n_pop (read off XLA's buffer assignment, `compiled_memory`)
    rows = 2 * (s.n + s.n_test + n_pop) + max(0, s.n_test - 2 * n_pop)
    return {
        "arguments: inputs, labels, parts, U_k, W0, a (per seed)": F32
        * s.seeds
        * (
            (s.n + s.n_test + n_pop) * s.d
            + s.n
            + (1 + s.parts) * s.n_test
            + s.n * k
            + k
            + s.m * (s.d + 1)
        ),
        "arguments and outputs: U of every setting": F32 * 2 * s.settings * s.m * s.d,
        "σ', σ'' of the train, test, R_pop inputs (per seed)": F32 * s.seeds * rows * s.m,
        "per setting: the evaluation's products": F32 * s.settings * rows * s.m,
    }


def vmap_memory_bytes(s: Sizes) -> int:
    """Bytes of device memory one vmapped chunk of the λ sweep needs, from its arrays' sizes.

    With R = 2·(n + n_test + n_pop) + max(0, n_test − 2·n_pop) rows of m float32 values:
    R·m per seed for the prepared σ', σ'' on its training, test and R_pop inputs (shared by
    that seed's λ), R·m per setting for the evaluation's products (Z = X Uᵀ and the term products on
    the same inputs: the evaluation, not the step, sets the peak, since n_test ≫ n), U of every
    setting in and out, and the inputs, labels, target parts, U_k, W0 and a. Checked against
    XLA's buffer assignment (`compiled_memory`) in tests/test_bench.py.

    Args:
        s: the sizes.

    Returns:
        The bytes, an int.

    Example:
        >>> paper = Sizes()  # d=100, n=1000, m=10 000, n_test=10 000, 6 λ × 3 seeds
        >>> round(vmap_memory_bytes(paper) / 1e9, 1)
        27.1
    """
    return sum(vmap_memory_terms(s).values())


def largest(s: Sizes, field: str, limit_bytes: float) -> int:
    """The largest even value of `field` ("m", "n_test", "settings", ...) whose
    `vmap_memory_bytes` fits in `limit_bytes`, the other sizes kept."""
    lo, hi = 0, 2
    while vmap_memory_bytes(dataclasses.replace(s, **{field: hi})) <= limit_bytes:
        lo, hi = hi, hi * 2
    while hi - lo > 2:
        mid = (lo + hi) // 4 * 2
        if vmap_memory_bytes(dataclasses.replace(s, **{field: mid})) <= limit_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def compiled_memory(s: Sizes, *, eval_every: int = 5, evals_per_chunk: int = 2) -> dict[str, int]:
    """XLA's buffer assignment for the vmapped training chunk at sizes `s`, on the default backend.

    Builds the λ sweep's chunk exactly as `jaxntk.train` does (settings / seeds λ, and seeds
    tasks and networks, one per seed, batching "vmap"), intercepts its arguments at the first
    chunk call and compiles it ahead of time: `jax.jit(...).lower(...).compile()
    .memory_analysis()`. Nothing of the chunk itself runs.

    Args:
        s: the sizes (s.settings λ in one program).
        eval_every: steps between evaluations of the compiled chunk.
        evals_per_chunk: evaluations per chunk.

    Returns:
        {"argument", "output", "temp", "alias", "total"} bytes (total = argument + output + temp
        − alias).
    """
    import jaxntk as jn
    from jaxntk import training

    class _Got(Exception):
        pass

    got = {}
    original = training._run_chunk

    def intercept(*args, **kwargs):
        got["args"], got["kwargs"] = args, kwargs
        raise _Got

    if s.settings % s.seeds:
        raise ValueError(f"settings = {s.settings} must be a multiple of seeds = {s.seeds}")
    tasks = [
        jn.paper_task(jax.random.PRNGKey(i), d=s.d, n=s.n, n_test=s.n_test) for i in range(s.seeds)
    ]
    nets = [jn.TwoLayer.init(jax.random.PRNGKey(100 + i), d=s.d, m=s.m) for i in range(s.seeds)]
    lambdas = s.settings // s.seeds
    reg = jn.Regularizer(bulk=list(np.linspace(0.0, 1.0, lambdas)), k=s.k)
    training._run_chunk = intercept
    try:
        jn.train(
            nets,
            tasks,
            "regularized",
            seeds=list(range(s.seeds)),
            steps=eval_every * evals_per_chunk,
            reg=reg,
            eval_every=eval_every,
            evals_per_chunk=evals_per_chunk,
            batching="vmap",
            progress=False,
        )
    except _Got:
        pass
    finally:
        training._run_chunk = original
    mem = original.lower(*got["args"], **got["kwargs"]).compile().memory_analysis()
    out = {
        "argument": int(mem.argument_size_in_bytes),
        "output": int(mem.output_size_in_bytes),
        "temp": int(mem.temp_size_in_bytes),
        "alias": int(mem.alias_size_in_bytes),
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def estimate(s: Sizes, steps: int, eval_every: int, gflops: float, gbytes_per_s: float) -> dict:
    """Seconds the λ sweep should take at the measured rates: steps and evaluations, each at
    max(FLOPs / matmul rate, bytes / bandwidth), summed over the settings.

    A step of one setting: 4·n·m·d FLOPs (X Uᵀ and Gᵀ X) and, at least, σ' and σ'' read in the
    forward and the gradient pass plus Z and G written and read (8 n·m floats; the bench's
    `least_bytes` counts only the 4 that cannot be avoided). An evaluation: f_L + f_Q on the
    training, test and R_pop inputs (2·(n + n_test + n_pop)·m·d FLOPs, their σ', σ'' and Z read).

    Args:
        s: the sizes.
        steps: training steps T.
        eval_every: steps between evaluations.
        gflops: the matmul rate, GFLOP/s.
        gbytes_per_s: the memory bandwidth, GB/s.

    Returns:
        {"step_flops", "step_bytes", "step_s", "eval_s", "total_s"} for all settings together.
    """
    n_pop = min(s.n_pop, s.n_test)
    step_flops = 4 * s.n * s.m * s.d
    step_bytes = F32 * 8 * s.n * s.m
    rows = s.n + s.n_test + n_pop
    eval_flops, eval_bytes = 2 * rows * s.m * s.d, F32 * 4 * rows * s.m
    one = max(step_flops / (gflops * GB), step_bytes / (gbytes_per_s * GB))
    ev = max(eval_flops / (gflops * GB), eval_bytes / (gbytes_per_s * GB))
    step_s = s.settings * steps * one
    eval_s = s.settings * (steps // eval_every + 1) * ev
    return {
        "step_flops": step_flops,
        "step_bytes": step_bytes,
        "step_s": step_s,
        "eval_s": eval_s,
        "total_s": step_s + eval_s,
    }


def memory_report(s: Sizes) -> list[str]:
    """Lines on the vmap path's memory at sizes `s` and where it would stop fitting."""
    need = vmap_memory_bytes(s)
    lines = [f"memory (vmap path, {s.settings} settings, formula): {need / GB:.2f} GB"]
    for name, term in vmap_memory_terms(s).items():
        lines.append(f"    {name:<40} {term / GB:8.3f} GB")
    for dev, cap in DEVICES_GB.items():
        verdict = "fits" if need <= cap * GB else "does NOT fit"
        most = ", ".join(f"{f} {largest(s, f, cap * GB):,}" for f in ("m", "n_test", "settings"))
        lines.append(f"  {dev}: {verdict}; the most that fits, the other sizes kept: {most}")
    return lines


def memory_markdown(sizes: list[Sizes], checked: list[tuple[Sizes, dict]]) -> str:
    """A Markdown section: the formula's bytes at each of `sizes` with the device verdicts and
    the most that fits, and the formula against XLA's buffer assignment for `checked`."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"\n## Memory of the vmapped λ sweep (benchmarks/device_run.py --memory-table, {when})\n",
        "`vmap_memory_bytes`: float32, R = 2·(n + n_test + n_pop) + max(0, n_test − 2·n_pop) rows "
        "of m values for σ', σ'' (per seed: each seed has its own task and network) and R per "
        "setting for the evaluation's products, plus U of every setting and the inputs. The most "
        "that fits varies one size, the others kept.\n",
        "| d | n | m | n_test | settings (λ × seeds) | GB | " + " | ".join(DEVICES_GB) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(DEVICES_GB),
    ]
    for s in sizes:
        cells = []
        for cap in DEVICES_GB.values():
            fits = "fits" if vmap_memory_bytes(s) <= cap * GB else "**does not fit**"
            most = ", ".join(f"{f} ≤ {largest(s, f, cap * GB):,}" for f in ("m", "n_test"))
            cells.append(f"{fits} ({most})")
        lines.append(
            f"| {s.d} | {s.n} | {s.m:,} | {s.n_test:,} | {s.settings // s.seeds} × {s.seeds} | "
            f"{vmap_memory_bytes(s) / GB:.2f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Against XLA's buffer assignment of the same chunk (`compiled_memory`, backend "
        f"{jax.default_backend()}, compiled ahead of time):\n",
        "| d | n | m | n_test | settings (λ × seeds) | formula, MB | XLA, MB | formula / XLA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, got in checked:
        f = vmap_memory_bytes(s)
        lines.append(
            f"| {s.d} | {s.n} | {s.m} | {s.n_test} | {s.settings // s.seeds} × {s.seeds} | "
            f"{f / 1e6:.2f} | "
            f"{got['total'] / 1e6:.2f} | {f / got['total']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--d", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seeds", default="1,11,111")
    p.add_argument("--bench-variants", default="regularized,ntk+quadntk")
    p.add_argument("--bench-steps", type=int, nargs=2, default=(20, 120), metavar=("T1", "T2"))
    p.add_argument("--bench-repeats", type=int, default=2)
    p.add_argument("--bench-preset", choices=("full", "quick", "tiny"), default="full")
    p.add_argument("--bench-storage", default="float32,bfloat16")
    p.add_argument("--bench-no-taylor", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--check-memory", action="store_true", help="compile and print XLA's memory")
    p.add_argument(
        "--memory-table",
        action="store_true",
        help="only write memory.md (the formula at the paper's size and beyond, and against "
        "XLA at small sizes) to --out; with --results also append it to benchmarks/RESULTS.md",
    )
    p.add_argument("--results", action="store_true", help="see --memory-table")
    a = p.parse_args(argv)
    if a.memory_table:
        from _machine import write_table

        paper = Sizes()
        sizes = [dataclasses.replace(paper, settings=6, seeds=1), paper]
        sizes += [dataclasses.replace(paper, m=m) for m in (20_000, 40_000, 80_000)]
        sizes += [dataclasses.replace(paper, n_test=nt) for nt in (40_000, 100_000)]
        small = [
            Sizes(d=10, n=50, m=200, n_test=500, settings=6, n_pop=100, seeds=1),
            Sizes(d=10, n=50, m=200, n_test=500, settings=6, n_pop=100, seeds=3),
            Sizes(d=10, n=100, m=400, n_test=1000, settings=18, n_pop=200, seeds=3),
            Sizes(d=4, n=200, m=200, n_test=50, settings=3, n_pop=50, seeds=1),
        ]
        text = memory_markdown(sizes, [(s, compiled_memory(s)) for s in small])
        print(text)
        write_table(a.out, "memory", text, a.results)
        return {"memory_table": text}

    import bench

    from jaxntk.experiments import lambda_sweep

    seeds = tuple(int(x) for x in a.seeds.split(","))
    cfg = dataclasses.replace(
        lambda_sweep.PRESETS["paper"],
        d=a.d,
        n=a.n,
        m=a.m,
        n_test=a.n_test,
        steps=a.steps,
        eval_every=a.eval_every,
        seeds=seeds,
    )
    lambdas = len(cfg.lambdas)
    # the whole sweep is one program: every λ, and every seed with its own task and network
    per_program = Sizes(
        d=a.d, n=a.n, m=a.m, n_test=a.n_test, settings=lambdas * len(seeds), seeds=len(seeds)
    )
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "backend": jax.default_backend(),
        "devices": [str(dev) for dev in jax.devices()],
        "sizes": dataclasses.asdict(per_program) | {"seeds": len(seeds), "steps": a.steps},
    }
    t_start = time.perf_counter()

    # 1. the rates and the estimate
    matmul = bench._matmul_row(4096 if jax.default_backend() != "cpu" else 1024)
    triad = bench._bandwidth_row(2**28 if jax.default_backend() != "cpu" else 2**24)
    gflops, gbs = matmul["gflops"], triad["config"]["gbytes_per_s"]
    est = estimate(per_program, a.steps, a.eval_every, gflops, gbs)
    doc["rates"] = {"matmul_gflops": gflops, "bandwidth_gbytes_per_s": gbs}
    doc["estimate"] = est
    print(
        f"\nestimate at {gflops:.0f} GFLOP/s and {gbs:.0f} GB/s: λ sweep "
        f"{lambdas} λ × {len(seeds)} seeds × T = {a.steps}: a step of one setting "
        f"{est['step_flops'] / 1e9:.2f} GFLOP, {est['step_bytes'] / 1e6:.0f} MB; "
        f"steps {est['step_s']:.0f} s + evaluations {est['eval_s']:.0f} s = "
        f"{est['total_s']:.0f} s (plus compilation)",
        flush=True,
    )

    # 2. memory
    doc["memory_formula_bytes"] = {"one_program": vmap_memory_bytes(per_program)}
    for line in memory_report(per_program):
        print(line)
    if a.check_memory:
        compiled = compiled_memory(per_program)
        doc["memory_compiled_bytes"] = compiled
        print(
            f"XLA buffer assignment, {per_program.settings} settings: "
            f"{compiled['total'] / GB:.2f} GB "
            f"(formula {vmap_memory_bytes(per_program) / GB:.2f} GB)",
            flush=True,
        )

    # 3. the bench at this size
    if not a.skip_bench:
        t0 = time.perf_counter()
        argv = ["--size", str(a.d), str(a.n), str(a.m), "--only", "step,batching"]
        argv += ["--variants", a.bench_variants, "--out", str(a.out / "bench")]
        argv += ["--steps", *map(str, a.bench_steps), "--repeats", str(a.bench_repeats)]
        argv += ["--storage", a.bench_storage]
        argv += [] if a.bench_preset == "full" else [f"--{a.bench_preset}"]
        argv += ["--no-taylor"] if a.bench_no_taylor else []
        bench.main(argv)
        doc["bench_seconds"] = time.perf_counter() - t0

    # 4. the λ sweep
    if not a.skip_sweep:
        t0 = time.perf_counter()
        sweep = lambda_sweep.run(cfg, a.out / "lambda-sweep")  # "auto": vmap on GPU
        doc["sweep_seconds"] = time.perf_counter() - t0
        doc["sweep_summary"] = sweep["summary"]
        print(
            f"λ sweep: {doc['sweep_seconds']:.0f} s (estimated {est['total_s']:.0f} s + "
            "compilation)",
            flush=True,
        )
        if jax.default_backend() != "cpu":
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                doc["peak_device_bytes"] = stats["peak_bytes_in_use"]
                print(f"peak device memory: {stats['peak_bytes_in_use'] / GB:.2f} GB")
    doc["total_seconds"] = time.perf_counter() - t_start
    (a.out / "device_run.json").write_text(json.dumps(doc, indent=1))
    print(f"device run in {doc['total_seconds']:.0f} s -> {a.out}", flush=True)
    return doc


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
