"""`jaxntk bench --tiny` runs every benchmark row and writes bench.json in the documented schema."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

from jaxntk import cli

KINDS = (
    "matmul_peak",
    "memory_bandwidth",
    "step/closed/",
    "step/taylor/",
    "baseline/",
    "compile/",
    "subspace/",
)
KINDS += ("scaling/", "sweep/vmapped", "sweep/separate", "batching/vmap", "batching/map")


@pytest.mark.slow
def test_bench_tiny_writes_schema(tmp_path):
    out = tmp_path / "bench"
    results = Path(__file__).parents[1] / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    assert cli.main(["bench", "--tiny", "--out", str(out)]) == 0
    doc = json.loads((out / "bench.json").read_text())
    # the table goes to --out; the tracked RESULTS.md changes only with --results
    assert "| step/closed/regularized |" in (out / "bench.md").read_text()
    assert results.read_bytes() == before

    assert {"machine", "versions", "rows"} <= set(doc)
    assert {"cores", "backend", "load_average"} <= set(doc["machine"])
    assert {"jax", "jaxlib", "numpy"} <= set(doc["versions"])
    names = [r["name"] for r in doc["rows"]]
    for kind in KINDS:
        assert any(name.startswith(kind) for name in names), kind
    for r in doc["rows"]:
        assert set(r) == {
            "name",
            "config",
            "seconds_per_step" if "seconds_per_step" in r else "seconds",
            "gflops",
            "fraction_of_matmul_peak",
            "bound_seconds",
            "fraction_of_bound",
            "peak_memory_mb",
        }
        assert isinstance(r["config"], dict)
        time_ = r.get("seconds_per_step", r.get("seconds"))
        assert isinstance(time_, float) and math.isfinite(time_)
        for key in ("gflops", "fraction_of_matmul_peak", "bound_seconds", "peak_memory_mb"):
            assert r[key] is None or (isinstance(r[key], float) and r[key] >= 0), (r, key)
    peak = next(r for r in doc["rows"] if r["name"] == "matmul_peak")
    assert peak["gflops"] > 0
    triad = next(r for r in doc["rows"] if r["name"] == "memory_bandwidth")
    bandwidth = triad["config"]["gbytes_per_s"]
    assert triad["config"]["bytes"] == 12 * triad["config"]["N"]
    assert bandwidth == round(triad["config"]["bytes"] / triad["seconds"] / 1e9, 3)
    # every step row's bound is max(FLOPs / matmul rate, bytes / bandwidth), recomputed here
    for r in doc["rows"]:
        if r["name"].startswith("step/"):
            c = r["config"]
            want = max(
                c["flops_per_step"] / (peak["gflops"] * 1e9),
                c["bytes_per_step"] / (bandwidth * 1e9),
            )
            assert math.isclose(r["bound_seconds"], want, rel_tol=1e-3), r
            if r["seconds_per_step"] > 0:  # tiny sizes: noise may exceed the work
                assert math.isclose(
                    r["fraction_of_bound"], want / r["seconds_per_step"], rel_tol=1e-3
                )
    assert {"step/closed/taylor-3", "step/taylor/taylor-3"} <= set(names)
    step = next(r for r in doc["rows"] if r["name"] == "step/closed/regularized")
    # a rate wherever the measured time is positive (tiny sizes: noise may exceed the work)
    assert (step["fraction_of_matmul_peak"] is not None) == (step["seconds_per_step"] > 0)
    scaling = [r for r in doc["rows"] if r["name"].startswith("scaling/")]
    # at tiny sizes timing noise can swamp the work; the slope is then None, never NaN
    slopes = [r["config"]["loglog_slope"] for r in scaling]
    assert scaling and all(s is None or math.isfinite(s) for s in slopes)
    compiles = [r["config"]["compiles"] for r in doc["rows"] if r["name"].startswith("compile/")]
    assert compiles and all(c == 1 for c in compiles)


def test_compile_events_are_collected_by_function_name():
    import sys
    from pathlib import Path

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import bench

    def _fresh_function_for_compile_events(x):
        return jnp.sin(x) * 2.0

    with bench.CompileEvents() as events:
        jax.jit(_fresh_function_for_compile_events)(jnp.ones(3)).block_until_ready()
    assert events.seconds("_fresh_function_for_compile_events") > 0
    assert events.total() >= events.seconds("_fresh_function_for_compile_events")
    assert events.seconds("no_such_function") == 0


@pytest.mark.slow
def test_taylor_orders_script_times_both_methods_and_writes_only_to_out(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import taylor_orders

    results = Path(__file__).parents[1] / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    argv = ["--size", "tiny", "--max-order", "2", "--repeats", "1", "--out", str(tmp_path)]
    doc = taylor_orders.main(argv)
    assert [(r["order"], r["model"][:9]) for r in doc["rows"]] == [
        (1, "two-layer"),
        (2, "two-layer"),
        (1, "CNN 2 ch,"),
        (2, "CNN 2 ch,"),
    ]
    for r in doc["rows"]:
        assert r["jet"] > 0 and r["jvp"] > 0
        assert r["jet/jvp"] == r["jet"] / r["jvp"]
        # program sizes as traced and after XLA's optimizations
        assert all(isinstance(n, int) and n > 0 for n in (*r["jet_ops"], *r["jvp_ops"]))
    assert json.loads((tmp_path / "taylor_orders.json").read_text())["rows"] == doc["rows"]
    assert "| 2 |" in (tmp_path / "taylor_orders.md").read_text()
    assert results.read_bytes() == before


def test_least_bytes_lists_the_arrays_a_step_reads_and_writes():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import bench

    d, n, m, k = 50, 354, 4000, 50
    reg = bench.least_bytes("regularized", d, n, m, k)
    # by hand: X twice, U read and written, y and a, σ' and σ'' twice each, U_k twice; float32
    want = 4 * (2 * n * d + 2 * m * d + n + m + 2 * 2 * n * m + 2 * n * k)
    assert sum(reg.values()) == want
    assert sum(bench.least_bytes("ntk", d, n, m).values()) == 4 * (
        2 * n * d + 2 * m * d + n + m + 2 * n * m
    )
    # the full network reads no n × m constant, only W0 beside U
    assert sum(bench.least_bytes("full", d, n, m).values()) == 4 * (2 * n * d + 3 * m * d + n + m)


# 47 s wall at load average 12 on 2 cores, ~16 s of CPU (a Python process, bench, three runs)
@pytest.mark.slow
def test_device_run_script_at_a_tiny_size_writes_everything_to_out(tmp_path):
    """benchmarks/device_run.sh end to end on CPU at a tiny size: the estimate printed first,
    then the bench rows and the λ sweep (6 λ × 2 seeds in one program), everything in OUT and
    nowhere else."""
    import os
    import subprocess

    root = Path(__file__).parents[1]
    results = root / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    out = tmp_path / "run"
    env = dict(
        os.environ,
        D="4",
        N="16",
        M="24",
        N_TEST="24",
        STEPS="6",
        EVAL_EVERY="3",
        SEEDS="1,11",
        BENCH_PRESET="tiny",
        BENCH_VARIANTS="regularized",
        BENCH_STORAGE="float32",
        BENCH_TAYLOR="0",
        BENCH_T1="2",
        BENCH_T2="6",
        BENCH_REPEATS="1",
        OUT=str(out),
        PYTHON=sys.executable,
    )
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "device_run.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert text.index("estimate at") < text.index("step/closed/regularized")
    # the whole sweep, 6 λ × 2 seeds (each with its own task and network), is one program
    assert "memory (vmap path, 12 settings, formula)" in text
    assert "memory (vmap path, 6 settings, formula)" not in text
    doc = json.loads((out / "device_run.json").read_text())
    # the estimate, recomputed from the measured rates: steps, then evaluations every 3 steps
    r, est = doc["rates"], doc["estimate"]
    d, n, m, nt, pop, settings = 4, 16, 24, 24, 24, 12
    step = max(
        4 * n * m * d / (r["matmul_gflops"] * 1e9),
        4 * 8 * n * m / (r["bandwidth_gbytes_per_s"] * 1e9),
    )
    rows = n + nt + pop
    ev = max(
        2 * rows * m * d / (r["matmul_gflops"] * 1e9),
        4 * 4 * rows * m / (r["bandwidth_gbytes_per_s"] * 1e9),
    )
    assert math.isclose(est["total_s"], settings * (6 * step + 3 * ev), rel_tol=1e-9)
    bench = json.loads((out / "bench" / "bench.json").read_text())
    names = [row["name"] for row in bench["rows"]]
    assert names == [
        "matmul_peak",
        "memory_bandwidth",
        "step/closed/regularized",
        "batching/vmap",
        "batching/map",
    ]
    assert (bench["rows"][2]["config"]["d"], bench["rows"][2]["config"]["m"]) == (4, 24)
    sweep = json.loads((out / "lambda-sweep" / "lambda-sweep.json").read_text())
    assert len(sweep["results"]) == 6 * 2 and len(doc["sweep_summary"]) == 6
    assert len({row["seconds_all_settings"] for row in sweep["results"]}) == 1  # one run
    assert all(math.isfinite(row["test_loss"]) for row in sweep["results"])
    assert (out / "lambda-sweep" / "lambda-sweep.png").stat().st_size > 0
    assert results.read_bytes() == before


# 47 s wall at load average 12 on 2 cores, ~16 s of CPU (two training set-ups and compiles)
@pytest.mark.slow
def test_vmap_memory_formula_against_xla_buffer_assignment():
    """The λ sweep's vmapped chunk compiled ahead of time (nothing runs): XLA's own buffer
    assignment within 2 % of the formula where the test set dominates (as at the paper's size,
    n_test = 10 n), within 10 % where the training set does."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import device_run

    for sizes, tol in (
        (device_run.Sizes(d=10, n=50, m=200, n_test=500, settings=6, n_pop=100, seeds=1), 0.02),
        # 2 λ × 3 seeds, each seed with its own task and network: σ', σ'' once per seed
        (device_run.Sizes(d=10, n=50, m=200, n_test=500, settings=6, n_pop=100, seeds=3), 0.02),
        (device_run.Sizes(d=4, n=200, m=200, n_test=50, settings=3, n_pop=50, seeds=1), 0.10),
    ):
        compiled = device_run.compiled_memory(sizes)["total"]
        formula = device_run.vmap_memory_bytes(sizes)
        assert abs(formula - compiled) <= tol * compiled, (sizes, formula, compiled)
    # and where it stops fitting: monotone in m, and the paper's 6 λ × 3 seeds fit in 80 GB
    paper = device_run.Sizes()
    assert device_run.vmap_memory_bytes(paper) < 80e9
    m80 = device_run.largest(paper, "m", 80e9)
    assert device_run.vmap_memory_bytes(dataclasses.replace(paper, m=m80)) <= 80e9
    assert device_run.vmap_memory_bytes(dataclasses.replace(paper, m=m80 + 2)) > 80e9


@pytest.mark.slow
def test_pass_variants_agree_with_the_closed_form_and_count_their_traffic():
    """benchmarks/passes.py: every rewritten step gives the library's f_L, f_Q and gradient
    (bfloat16 storage within its rounding, 2⁻⁸ relative, the others to float32 precision), and
    the traffic count of the compiled step sees bfloat16 σ', σ'' read at half the bytes."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import jax
    import jax.numpy as jnp
    import passes

    import jaxntk as jn

    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=5, m=24)
    x = jax.random.normal(jax.random.PRNGKey(0), (12, 5))
    y = jnp.linspace(-1.0, 1.0, 12)
    u = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (24, 5))
    for name, make in passes.IMPLEMENTATIONS.items():
        err = passes.check(make(net), net, x, y, u)
        assert err <= (2.0**-7 if name == "bfloat16" else 1e-5), (name, err)
    # neurons in 4 blocks of 6 (12 × 6 float32 = 288 bytes each): the scan over blocks gives
    # the same terms and gradient, and its σ' reassembles to the library's exactly
    assert passes.blocks_for(12, 24, 288) == 4
    for remat in (False, True):
        blocked = passes.Blocked(net.w0, net.a, net.activation, remat=remat, block_bytes=288)
        assert blocked.prepare(x).d1b.shape == (4, 12, 6)
        assert passes.check(blocked, net, x, y, u) <= 1e-5
        assert jnp.array_equal(blocked.prepare(x).d1, net.prepare(x).d1)
    cols = passes.BlockedCols(net.w0, net.a, net.activation, block_bytes=288)
    assert passes.check(cols, net, x, y, u) <= 1e-5
    r32, w32 = passes.nm_traffic(net, x, y)
    r16, w16 = passes.nm_traffic(passes.IMPLEMENTATIONS["bfloat16"](net), x, y)
    # σ' and σ'' read twice each at least; in bfloat16 those four reads cost half
    assert r32 >= 4 and w32 >= 1
    assert r16 == r32 - 2 and w16 == w32


@pytest.mark.slow
def test_epoch_time_script_times_the_variants_and_writes_only_to_out(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path / "cache"))
    root = Path(__file__).parents[1]
    results = root / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    argv = ["--n-train", "120", "--e1", "1", "--e2", "2", "--repeats", "1"]
    argv += ["--variants", "full,regularized", "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "epoch_time.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "out" / "epoch_time.md").read_text()
    rows = [line.split("|")[1:4] for line in table.splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in rows[1:]] == ["full", "regularized"]
    assert float(rows[1][2]) == 1.0  # full against itself
    assert results.read_bytes() == before
