"""`jaxntk bench`: the library against the hardware and against the authors' way of writing it.

Rows of `DIR/bench.json` and a Markdown table `DIR/bench.md` (appended to benchmarks/RESULTS.md
only with `--results`):

1. matmul_peak: a jitted f32 (N × N) @ (N × N) after warm-up, 2N³ FLOPs; the reference rate.
   memory_bandwidth: a STREAM-like triad a = b + s·c on f32 arrays of N elements, much larger
   than the caches: 3 · 4N bytes moved (read b and c, write a); the reference traffic rate.
   Every step row carries its roofline bound, max(FLOPs / matmul rate, bytes / bandwidth), with
   bytes the least traffic of the step (`least_bytes`: the arrays it must read and write), and
   the fraction of that bound reached ("bound_seconds", "fraction_of_bound").
2. step/<path>/<variant>: seconds per step through `jaxntk.train` (T2 − T1 steps of one
   compiled program, the repeats interleaved over the rows), path "closed" (`TwoLayer`),
   "closed-bfloat16" (`--storage`: σ', σ'' stored in bfloat16, their bytes counted at 2) or
   "taylor" (the generic `TaylorModel` on the same apply_fn); the six variants of the paper and
   the order-3 model.
   FLOPs counted per step as 4·n·m·d for every variant: the forward product Z = X Uᵀ (2·n·m·d)
   and its transpose in the gradient, Gᵀ X (2·n·m·d); f_L and f_Q share Z, the full network
   replaces U by W0 + U, the bulk penalty adds only n·k work, and XW0ᵀ is computed once per chunk.
   Elementwise passes (σ', σ'' on n × m) are not counted.
3. baseline: `baseline.py`, the authors' step (nested jvp each call, dense J closed over, test
   loss every step, Python loop): 4·n·m·d as above, 4·n·m·d for the bulk products B u and Bᵀ r,
   2·n_test·m·d for the test forward pass; its config gives its time over ours (regularized).
4. compile/regularized_chunk: seconds JAX spent tracing, lowering and compiling the training chunk
   (its compile events), with the other programs' compile time and first-minus-second call time.
5. subspace/<method>: `subspace.py`'s subprocess runs (time, peak RSS above a baseline process).
6. scaling/<axis>: seconds per step of ntk+quadntk over a decade of n, m and d; log-log slopes.
7. sweep: 6 λ × 3 seeds of "regularized" in one `train` program (its `batching`, "map" on CPU)
   versus 18 separate calls.
8. batching/vmap, batching/map: 3 λ of "regularized" in one program, the settings batched as
   arrays (vmap) or run one after another inside it (lax.map), seconds per step.

    python benchmarks/bench.py [--quick | --tiny] [--out DIR] [--results]
        [--size D N M] [--only step,batching] [--variants regularized] [--storage float32,bfloat16]
        [--no-taylor] [--steps T1 T2] [--repeats R]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxntk as jn

sys.path.insert(0, str(Path(__file__).parent))
import baseline
import step_time
import subspace
from _machine import add_output_arguments, cpu_name, write_table

LAMBDAS = (0.0, 0.01, 0.1, 1.0, 3.0, 10.0)
SWEEP_SEEDS = (1, 11, 111)
# sign-flipping rows of U is exact only for a sum over neurons, so train refuses it on a TaylorModel
NOT_ON_TAYLOR = ("randomized",)
# the order-3 Taylor model f0 + f_1 + f_2 + f_3 on both paths (the closed form's step also
# computes the third derivative of the activation from X W0ᵀ)
ORDER_VARIANTS = ("taylor-3",)

# sizes: (d, n, m) of the step rows; t1/t2/repeats: step timing; scaling: the decades per axis;
# tiny (for the tests) keeps one variant, one scaling axis, one subspace method and a 2 × 2 sweep
# so that it compiles and starts little
PRESETS = {
    "full": dict(
        matmul=2048,
        triad=2**25,
        sizes=[(50, 354, 4000), (100, 1000, 10_000)],
        # the paper's size: ~0.1 s a step on 2 cores, so fewer steps; no baseline there (its dense
        # n × (m·d) feature matrix would be 4 GB, closed over by jit as a constant)
        large=dict(t1=20, t2=120, repeats=2, baseline=False),
        t1=100,
        t2=600,
        repeats=3,
        baseline_steps=50,
        compile_n=(354, 3540),
        compile_m=(4000, 40_000),
        scaling=dict(n=(100, 316, 1000), m=(1000, 3162, 10_000), d=(10, 32, 100)),
        subspace=(50, 354, 4000),
        sweep_steps=500,
    ),
    "quick": dict(
        matmul=1024,
        triad=2**24,
        sizes=[(20, 90, 1000)],
        t1=20,
        t2=120,
        repeats=2,
        baseline_steps=20,
        compile_n=(90, 900),
        compile_m=(500, 5000),
        scaling=dict(n=(30, 95, 300), m=(200, 632, 2000), d=(5, 16, 50)),
        subspace=(20, 90, 1000),
        sweep_steps=100,
    ),
    "tiny": dict(
        matmul=128,
        triad=2**16,
        sizes=[(6, 20, 40)],
        t1=4,
        t2=200,
        repeats=2,
        baseline_steps=4,
        variants=("regularized",),
        compile_n=(20,),
        compile_m=(40,),
        scaling=dict(n=(20, 40)),
        subspace=(6, 20, 40),
        subspace_methods=("matrix_free",),
        sweep_steps=10,
        sweep=((0.0, 1.0), (1, 11)),
    ),
}


GROUPS = ("step", "baseline", "compile", "subspace", "scaling", "sweep", "batching")
"""Row groups after the roofline rows (matmul_peak, memory_bandwidth), which always run."""


def run(preset: str = "full", only: tuple[str, ...] = GROUPS, **overrides) -> dict:
    """The rows of the benchmark at one preset; returns the bench.json document.

    `only` keeps some of `GROUPS`; `overrides` replace preset entries: sizes ([(d, n, m)], the
    step rows' sizes, the first also the other groups'), variants, t1, t2, repeats, storage
    (σ', σ'' storage dtypes of the closed form's step rows: float32 is "closed", others
    "closed-<dtype>").
    """
    cfg = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("sizes") is not None:
        cfg.pop("large", None)  # the sizes asked for get the same steps and repeats
    rows = [_matmul_row(cfg["matmul"]), _bandwidth_row(cfg["triad"])]
    peak = rows[0]["gflops"]
    bandwidth = rows[1]["config"]["gbytes_per_s"]
    for i, (d, n, m) in enumerate(cfg["sizes"]):
        size_cfg = cfg if i == 0 else {**cfg, **cfg.get("large", {})}
        if "step" in only:
            rows += _step_rows(d, n, m, size_cfg, peak, bandwidth)
        if "baseline" in only and size_cfg.get("baseline", True):
            ours = [r for r in rows if r["name"] == "step/closed/regularized"]
            ours = ours[-1]["seconds_per_step"] if ours else None
            rows.append(_baseline_row(d, n, m, size_cfg, peak, ours))
    if "compile" in only:
        rows += _compile_rows(cfg)
    if "subspace" in only:
        rows += _subspace_rows(cfg["subspace"], cfg.get("subspace_methods", subspace.METHODS))
    if "scaling" in only:
        rows += _scaling_rows(cfg, peak)
    if "sweep" in only:
        rows += _sweep_rows(cfg)
    if "batching" in only:
        rows += _batching_rows(cfg, peak)
    return {"preset": preset, "machine": machine(), "versions": versions(), "rows": rows}


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "backend": jax.default_backend(),
        "devices": [str(dev) for dev in jax.devices()],
        "load_average": list(os.getloadavg()),
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def versions() -> dict:
    import jaxlib
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "optax": optax.__version__,
    }


def markdown(doc: dict) -> str:
    """The rows as a Markdown section, with the machine, versions and load."""
    mach, ver = doc["machine"], doc["versions"]
    lines = [
        f"\n## `jaxntk bench` ({doc['preset']} preset, {mach['when']})\n",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gib']} GiB, backend "
        f"{mach['backend']}; load average {', '.join(f'{x:.1f}' for x in mach['load_average'])} "
        f"at the end. jax {ver['jax']}, jaxlib {ver['jaxlib']}, optax {ver['optax']}.\n",
        "| name | config | time | GFLOP/s | of matmul peak | roofline bound, ms | of bound "
        "| peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if "seconds_per_step" in r:
            t = f"{r['seconds_per_step'] * 1e3:.3g} ms/step"
        else:
            t = f"{r['seconds']:.3g} s"
        conf = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(
            f"| {r['name']} | {conf} | {t} | {_fmt(r['gflops'])} | "
            f"{_fmt(r['fraction_of_matmul_peak'], '.0%')} | "
            f"{_fmt(r['bound_seconds'] and r['bound_seconds'] * 1e3)} | "
            f"{_fmt(r['fraction_of_bound'], '.0%')} | {_fmt(r['peak_memory_mb'])} |"
        )
    return "\n".join(lines) + "\n"


def _row(
    name, config, *, per_step=None, seconds=None, flops=None, peak=None, memory=None, bound=None
):
    row = {"name": name, "config": config}
    if per_step is not None:
        row["seconds_per_step"] = per_step
        elapsed = per_step
    else:
        row["seconds"] = seconds
        elapsed = seconds
    # elapsed ≤ 0: the timing noise exceeded the work (tiny sizes on a busy machine); no rate
    gflops = None if flops is None or elapsed <= 0 else flops / elapsed / 1e9
    row["gflops"] = gflops
    row["fraction_of_matmul_peak"] = None if gflops is None or peak is None else gflops / peak
    row["bound_seconds"] = bound
    row["fraction_of_bound"] = None if bound is None or elapsed <= 0 else bound / elapsed
    row["peak_memory_mb"] = _device_peak_mb() if memory is None else memory
    print(f"{name:<28} {json.dumps(config):<60} {elapsed:.4g} s  {_fmt(gflops)} GFLOP/s")
    return row


# the n × m constants each variant's step reads: σ'(X W0ᵀ), σ''(X W0ᵀ) of the prepared inputs
_NM_ARRAYS = {
    "full": (),
    "randomized": (),
    "ntk": ("d1",),
    "quadntk": ("d2",),
    "ntk+quadntk": ("d1", "d2"),
    "regularized": ("d1", "d2"),
    "taylor-3": ("d1", "d2"),
}


def least_bytes(
    variant: str, d: int, n: int, m: int, k: int | None = None, nm_bytes: int = 4
) -> dict[str, int]:
    """The least traffic of one float32 training step of `variant`, array by array (bytes).

    A step is two passes over the n × m products: the forward pass (Z = X Uᵀ, then f and the
    residual) and the gradient (G, then Gᵀ X). Each n × m constant it reads (σ', σ'' of the
    prepared inputs, `nm_bytes` per value: 2 when stored in bfloat16) is read in both passes;
    Z and G need not be stored (a fused kernel keeps them). X is read in both passes, U and W0
    once, U written once; the labels y, the output weights a and, for the regularizer, U_k
    (n × k) read twice (Pᵀ f_L, then its gradient).
    """
    four = 4
    out = {"X (n·d, twice)": 2 * n * d * four, "U (m·d, read and write)": 2 * m * d * four}
    out["y, a (n + m)"] = (n + m) * four
    for name in _NM_ARRAYS[variant]:
        out[f"{name} (n·m, twice)"] = 2 * n * m * nm_bytes
    if variant in ("full", "randomized", "taylor-3"):  # σ of X (W0 + U)ᵀ or of X W0ᵀ
        out["W0 (m·d)"] = m * d * four
    if variant == "regularized":
        out["U_k (n·k, twice)"] = 2 * n * (d if k is None else k) * four
    return out


def _bound(flops: float, nbytes: float, peak_gflops: float, gbytes_per_s: float) -> float:
    """The roofline bound: max(FLOPs / matmul rate, bytes / bandwidth), seconds."""
    return max(flops / (peak_gflops * 1e9), nbytes / (gbytes_per_s * 1e9))


def _bandwidth_row(size: int) -> dict:
    """A STREAM-like triad a = b + s·c on arrays of `size` float32 values: 12·size bytes."""
    b = jax.random.normal(jax.random.PRNGKey(0), (size,), jnp.float32)
    c = jax.random.normal(jax.random.PRNGKey(1), (size,), jnp.float32)
    triad = jax.jit(lambda b, c, s: b + s * c)
    scale = jnp.float32(3.0)
    jax.block_until_ready(triad(b, c, scale))
    best = np.inf
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(triad(b, c, scale))
        best = min(best, time.perf_counter() - t0)
    nbytes = 3 * 4 * size
    conf = {"N": size, "bytes": nbytes, "gbytes_per_s": round(nbytes / best / 1e9, 3)}
    return _row("memory_bandwidth", conf, seconds=best)


def _matmul_row(size: int) -> dict:
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        best = min(best, time.perf_counter() - t0)
    return _row("matmul_peak", {"N": size, "dtype": "float32"}, seconds=best, flops=2 * size**3)


def _setup(d: int, n: int, m: int):
    task = jn.paper_task(jax.random.PRNGKey(0), d=d, n=n, n_test=n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=d, m=m)
    return task, net


def _step_rows(d, n, m, cfg, peak, bandwidth) -> list[dict]:
    """Seconds per step of every (path, variant), the repeats interleaved: each round times
    T1 and T2 steps of every row in turn, so that a change in the machine's load falls on all
    rows alike; per row (min over rounds of T2 − min over rounds of T1) / (T2 − T1)."""
    task, net = _setup(d, n, m)
    paths = {"closed": net}
    for dtype in cfg.get("storage", ()):
        if dtype != "float32":
            paths[f"closed-{dtype}"] = dataclasses.replace(net, storage=dtype)
    if cfg.get("taylor", True):
        paths["taylor"] = jn.TaylorModel(net.apply_fn, net.w0)
    variants = tuple(cfg.get("variants", jn.objectives.PAPER_VARIANTS))
    variants += tuple(cfg.get("order_variants", ORDER_VARIANTS))
    todo = [
        (path, model, variant)
        for path, model in paths.items()
        for variant in variants
        if not (path == "taylor" and variant in NOT_ON_TAYLOR)
    ]
    t1, t2 = cfg["t1"], cfg["t2"]
    kw = dict(eval_every=t2 - t1, evals_per_chunk=1, progress=False)

    def timed(model, variant, steps):
        t0 = time.perf_counter()
        jax.block_until_ready(jn.train(model, task, variant, steps=steps, **kw).params)
        return time.perf_counter() - t0

    for _, model, variant in todo:  # warm-up: compile (one program serves T1 and T2)
        timed(model, variant, t1)
    short = [[] for _ in todo]
    long = [[] for _ in todo]
    for _ in range(cfg["repeats"]):
        for i, (_, model, variant) in enumerate(todo):
            short[i].append(timed(model, variant, t1))
            long[i].append(timed(model, variant, t2))
    rows = []
    for i, (path, model, variant) in enumerate(todo):
        per_step = (min(long[i]) - min(short[i])) / (t2 - t1)
        flops = (6 if variant == "taylor-3" else 4) * n * m * d
        nm_bytes = jnp.dtype(getattr(model, "storage", None) or "float32").itemsize
        nbytes = sum(least_bytes(variant, d, n, m, nm_bytes=nm_bytes).values())
        conf = {"d": d, "n": n, "m": m, "flops_per_step": flops, "bytes_per_step": nbytes}
        conf["rounds"] = cfg["repeats"]
        rows.append(
            _row(
                f"step/{path}/{variant}",
                conf,
                per_step=per_step,
                flops=flops,
                peak=peak,
                bound=_bound(flops, nbytes, peak, bandwidth),
            )
        )
    return rows


def _baseline_row(d, n, m, cfg, peak, ours: float) -> dict:
    task, net = _setup(d, n, m)
    step, u0 = baseline.make_step(
        net.w0, net.a, task.x_train, task.y_train, task.x_test, task.y_test, k=d, lam=1.0
    )
    per_step = baseline.seconds_per_step(
        step, u0, steps=cfg["baseline_steps"], repeats=cfg["repeats"]
    )
    conf = {"d": d, "n": n, "m": m, "n_test": n, "flops_per_step": "8nmd+2·n_test·md"}
    if ours is not None:
        conf["slowdown_vs_closed_regularized"] = round(per_step / ours, 2)
    return _row(
        "baseline/authors_step",
        conf,
        per_step=per_step,
        flops=8 * n * m * d + 2 * n * m * d,
        peak=peak,
    )


def _compile_rows(cfg) -> list[dict]:
    """Compile time of the training chunk at each size, read from JAX's own compile events.

    `seconds` is what tracing, lowering and XLA compilation of `_run_chunk` took inside a first
    `train` call; the config adds the same for every other program compiled in that call (the
    good-direction set-up, the evaluation) and the first-call-minus-second-call wall time.
    """
    from jaxntk import training

    d, n0, m0 = cfg["sizes"][0]
    rows = []
    for n, m in [(n, m0) for n in cfg["compile_n"]] + [(n0, m) for m in cfg["compile_m"][1:]]:
        task, net = _setup(d, n, m)
        kw = dict(steps=cfg["t1"], eval_every=cfg["t1"], evals_per_chunk=1, progress=False)
        times = []
        before = training._run_chunk._cache_size()
        with CompileEvents() as events:
            for _ in range(2):
                t0 = time.perf_counter()
                jax.block_until_ready(jn.train(net, task, "regularized", **kw).params)
                times.append(time.perf_counter() - t0)
        compiles = training._run_chunk._cache_size() - before
        chunk = events.seconds("_run_chunk")
        conf = {"d": d, "n": n, "m": m, "compiles": compiles}
        conf["other_programs_compile_s"] = round(events.total() - chunk, 3)
        conf["first_minus_second_call_s"] = round(times[0] - times[1], 3)
        rows.append(_row("compile/regularized_chunk", conf, seconds=chunk))
    return rows


class CompileEvents:
    """Collects JAX's trace / lower / XLA-compile durations, by function name, while active."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.durations: list[tuple[str, str, float]] = []

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event in self.EVENTS:
            self.durations.append((event, str(kwargs.get("fun_name", "")), duration))

    def __enter__(self) -> CompileEvents:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)

    def seconds(self, name: str) -> float:
        """Total seconds of the events whose function name contains `name`."""
        return sum(s for _, f, s in self.durations if name in f)

    def total(self) -> float:
        return sum(s for _, _, s in self.durations)


def _subspace_rows(size, methods) -> list[dict]:
    args = types.SimpleNamespace(repeats=2, batch_size=64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = subspace.run_method("baseline", size, args, Path(tmp))
        for method in methods:
            r = subspace.run_method(method, size, args, Path(tmp))
            d, n, m = size
            rows.append(
                _row(
                    f"subspace/{method}",
                    {"d": d, "n": n, "m": m, "k": d, "first_call_s": round(r["first_s"], 4)},
                    seconds=min(r["times_s"]),
                    memory=r["maxrss_mib"] - base["maxrss_mib"],
                )
            )
    return rows


def _scaling_rows(cfg, peak) -> list[dict]:
    d0, n0, m0 = cfg["sizes"][0]
    rows = []
    for axis, values in cfg["scaling"].items():
        times = []
        for v in values:
            size = {"d": d0, "n": n0, "m": m0, axis: v}
            task, net = _setup(size["d"], size["n"], size["m"])
            per_step = step_time.seconds_per_step(
                net, task, "ntk+quadntk", t1=cfg["t1"], t2=cfg["t2"], repeats=cfg["repeats"]
            )
            times.append(per_step)
            flops = 4 * size["n"] * size["m"] * size["d"]
            rows.append(_row(f"scaling/{axis}", size, per_step=per_step, flops=flops, peak=peak))
        # a non-positive time (timing noise larger than the work, at tiny sizes) has no log
        ok = min(times) > 0
        slope = float(np.polyfit(np.log(values), np.log(times), 1)[0]) if ok else None
        for r in rows[-len(values) :]:
            r["config"]["loglog_slope"] = None if slope is None else round(slope, 3)
    return rows


def _sweep_rows(cfg) -> list[dict]:
    from jaxntk import training

    d, n, m = cfg["sizes"][0]
    lambdas, seeds = cfg.get("sweep", (LAMBDAS, SWEEP_SEEDS))
    task, net = _setup(d, n, m)
    kw = dict(steps=cfg["sweep_steps"], eval_every=cfg["sweep_steps"], progress=False)
    conf = {"d": d, "n": n, "m": m, "lambdas": len(lambdas), "seeds": len(seeds)}
    conf["steps"] = cfg["sweep_steps"]
    conf["batching"] = training._batching_mode("auto")

    t0 = time.perf_counter()
    reg = jn.Regularizer(bulk=list(lambdas))
    run = jn.train(net, task, "regularized", reg=reg, seeds=seeds, **kw)
    jax.block_until_ready(run.params)
    vmapped = time.perf_counter() - t0

    t0 = time.perf_counter()
    for lam in lambdas:
        for seed in seeds:
            run = jn.train(
                net, task, "regularized", reg=jn.Regularizer(bulk=lam), seeds=[seed], **kw
            )
            jax.block_until_ready(run.params)
    separate = time.perf_counter() - t0
    return [
        _row(
            "sweep/vmapped",
            {**conf, "programs": 1, "speedup_vs_separate": round(separate / vmapped, 2)},
            seconds=vmapped,
        ),
        _row("sweep/separate", {**conf, "programs": len(lambdas) * len(seeds)}, seconds=separate),
    ]


def _batching_rows(cfg, peak) -> list[dict]:
    """Seconds per step of 3 λ of "regularized" in one program, batched by vmap and by lax.map."""
    d, n, m = cfg["sizes"][0]
    task, net = _setup(d, n, m)
    reg = jn.Regularizer(bulk=[0.0, 1.0, 10.0])
    rows = []
    for mode in ("vmap", "map"):
        per_step = step_time.seconds_per_step(
            net,
            task,
            "regularized",
            t1=cfg["t1"],
            t2=cfg["t2"],
            repeats=cfg["repeats"],
            reg=reg,
            batching=mode,
        )
        conf = {"d": d, "n": n, "m": m, "settings": 3, "flops_per_step": "3·4nmd"}
        rows.append(
            _row(f"batching/{mode}", conf, per_step=per_step, flops=3 * 4 * n * m * d, peak=peak)
        )
    return rows


def _device_peak_mb() -> float | None:
    """Peak device memory in use so far (GPU/TPU); None where the backend does not report it."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def _fmt(x, spec: str = ".3g") -> str:
    return "—" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, ≤ 3 min on 2 cores")
    size.add_argument("--tiny", action="store_true", help="smallest sizes (for the tests)")
    p.add_argument(
        "--size",
        type=int,
        nargs=3,
        action="append",
        metavar=("D", "N", "M"),
        help="step rows at this size instead of the preset's (repeatable)",
    )
    p.add_argument("--only", help=f"comma-separated row groups of {list(GROUPS)}")
    p.add_argument("--variants", help="comma-separated variants of the step rows")
    p.add_argument("--storage", help="comma-separated σ', σ'' dtypes of the closed-form rows")
    p.add_argument("--no-taylor", action="store_true", help="no generic-path step rows")
    p.add_argument("--steps", type=int, nargs=2, metavar=("T1", "T2"), help="step-row T1 T2")
    p.add_argument("--repeats", type=int, help="timing repeats of the step rows")
    add_output_arguments(p)
    args = p.parse_args(argv)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    only = GROUPS if args.only is None else tuple(x.strip() for x in args.only.split(","))
    if set(only) - set(GROUPS):
        p.error(f"--only: unknown group(s) {sorted(set(only) - set(GROUPS))}; choose from {GROUPS}")
    overrides = {
        "sizes": None if args.size is None else [tuple(s) for s in args.size],
        "t1": args.steps and args.steps[0],
        "t2": args.steps and args.steps[1],
        "repeats": args.repeats,
        "storage": args.storage and tuple(x.strip() for x in args.storage.split(",")),
        "taylor": False if args.no_taylor else None,
    }
    if args.variants is not None:
        variants = tuple(x.strip() for x in args.variants.split(","))
        overrides["variants"] = tuple(v for v in variants if v not in ORDER_VARIANTS)
        overrides["order_variants"] = tuple(v for v in variants if v in ORDER_VARIANTS)
    t0 = time.perf_counter()
    doc = run(preset, only, **overrides)
    doc["total_seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(doc, indent=1))
    table = markdown(doc)
    print(table)
    write_table(args.out, "bench", table, args.results)
    print(f"{preset} bench in {doc['total_seconds']:.0f} s -> {args.out / 'bench.json'}")
    return doc


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
