"""benchmarks/ntk_speed.py at tiny size on CPU (no neural-tangents side): its kernels, float64,
equal the explicit Jacobian contraction; a call that overruns is stopped and the rest goes on."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _ntk_runs  # noqa: E402 - the benchmarks folder is not a package
import ntk_speed  # noqa: E402

N = 5  # one size, odd: every kernel is one compile per method and model


def explicit_kernel(apply_fn, params, x) -> np.ndarray:
    """(1/c) Σ_a J_a J_aᵀ, J_a[i] = ∂f_a(x_i)/∂θ flattened: each example's Jacobian by jacfwd of
    the plain single-example function, contracted in numpy."""
    rows = []
    for xi in x:
        jac = jax.jacfwd(lambda p, xi=xi: apply_fn(p, xi[None])[0])(params)
        leaves = jax.tree_util.tree_leaves(jac)
        c = leaves[0].shape[0]
        rows.append(np.concatenate([np.asarray(leaf).reshape(c, -1) for leaf in leaves], 1))
    j = np.stack(rows)  # (n, c, P)
    return np.einsum("iap,jap->ij", j, j) / j.shape[1]


TIMED = ("auto", "jacobian")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ntk_speed")
    watched = (ROOT / "benchmarks" / "RESULTS.md", ntk_speed.FIGURE)
    before = [p.read_bytes() if p.exists() else None for p in watched]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ntk_speed.py"), "--tiny", "--float64"]
    # auto (the engine's choice, structured on most models) and jacobian (the rows' reference):
    # every method of the engine on these models is checked in tests/test_ntk.py and
    # tests/test_ntk_models.py; here, the benchmark's models and wiring
    cmd += ["--sizes", str(N), "--repeats", "1", "--save-kernels", "--out", str(out)]
    cmd += ["--methods", ",".join(TIMED)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    # a plain run writes only to --out
    assert [p.read_bytes() if p.exists() else None for p in watched] == before
    return out, json.loads((out / "ntk_speed.json").read_text())


@pytest.mark.slow  # one compile per model and method: ~40 s of CPU
def test_every_kernel_equals_the_explicit_jacobian_contraction(tiny_run):
    out, doc = tiny_run
    assert doc["dtype"] == "float64" and doc["models"] == list(_ntk_runs.MODELS)
    methods = TIMED if doc["engine"] == "jaxntk.ntk" else ntk_speed.BEFORE_METHODS
    with jax.enable_x64(True):
        for model in _ntk_runs.MODELS:
            params, x = _ntk_runs.load_inputs(out / "inputs" / f"{model}.npz", np.float64)
            # the flax models' kernels come from flax's apply; the plain function must agree
            # (resnet_bn: with respect to "params", its batch statistics closed over)
            want = explicit_kernel(*_ntk_runs.model_function(model, params), x)
            impls = [*methods, *([_ntk_runs.HAND_WRITTEN] if model == "mlp" else [])]
            for impl in impls:
                (row,) = [r for r in doc["rows"] if (r["model"], r["impl"]) == (model, impl)]
                assert row["status"] == "ok" and row["n"] == N, row
                got = np.load(row["kernel_path"])
                assert got.shape == (N, N)
                err = np.max(np.abs(got - want)) / np.max(np.abs(want))
                assert err < 1e-10, (model, impl, err)
                assert row["rel_diff"] < 1e-10 and row["reference"] == "jacobian"
                assert row["kernel_trace"] == pytest.approx(np.trace(want), rel=1e-10)
                assert row["seconds"] > 0 and row["repeats"] == 1
                assert row["rss_increase_bytes"] is None or row["rss_increase_bytes"] >= 0
                if impl in ntk_speed.METHODS and doc["engine"] == "jaxntk.ntk":
                    # what the engine runs for each method: the method itself, auto's pick
                    ran = row["choice"]["method"]
                    assert ran == impl or (impl == "auto" and ran in ntk_speed.METHODS[1:])
                    assert row["choice"]["reason"] and row["choice"]["memory_budget"] > 0
    assert doc["flax_vs_plain_max_abs_diff"] < 1e-12
    assert set(doc["flax_vs_plain_by_model"]) == set(_ntk_runs.FLAX_MODELS)
    tokens = np.load(out / "inputs" / "transformer.npz")["x"]
    assert tokens.dtype == np.int32 and tokens.shape == (N, ntk_speed.DIMS["tiny"]["length"])


@pytest.mark.slow
def test_tables_and_figure(tiny_run):
    out, doc = tiny_run
    assert (out / "ntk_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "ntk_speed.md").read_text()
    for model in _ntk_runs.MODELS:
        assert f"| {model} | {N} |" in table
    assert {"cpu", "cores", "load_average", "when"} <= set(doc["machine"])
    assert {"jax", "jaxlib", "flax", "numpy"} <= set(doc["versions"])


@pytest.mark.slow  # the tiny run
def test_redraw_makes_the_figure_and_tables_again_from_the_json(tiny_run, tmp_path):
    _, doc = tiny_run
    # more curves than a 10-colour palette: the jaxntk rows again as three variants
    variants = ("XLA's CPU kernels", "system malloc", "other")
    rows = doc["rows"] + [r | {"variant": v} for v in variants for r in doc["rows"]]
    (tmp_path / "ntk_speed.json").write_text(json.dumps(doc | {"rows": rows}))
    watched = (ROOT / "benchmarks" / "RESULTS.md", ntk_speed.FIGURE)
    before = [p.read_bytes() if p.exists() else None for p in watched]
    again = ntk_speed.main(["--out", str(tmp_path), "--redraw"])
    assert len({ntk_speed.label(r) for r in again["rows"]}) > 10
    assert (tmp_path / "ntk_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "ntk_speed.md").read_text()
    assert "| auto, XLA's CPU kernels |" in table and f"| cnn | {N} |" in table
    assert [p.read_bytes() if p.exists() else None for p in watched] == before


def _row(impl, n, seconds, side="jaxntk", status="ok"):
    return {
        "model": "cnn",
        "side": side,
        "impl": impl,
        "n": n,
        "status": status,
        "seconds": seconds,
    }


def test_growth_exponents_and_the_table_of_synthetic_rows(tmp_path):
    # jacobian: t = n², except a slower last doubling (×8); nt 1: t = n; a skipped row ignored
    rows = [_row("jacobian", n, 1e-4 * n**2) for n in (64, 128, 256)]
    rows += [_row("jacobian", 512, 8 * rows[-1]["seconds"])]
    rows += [_row("1", n, 1e-3 * n, side="nt") for n in (64, 128, 256)]
    rows += [_row("1", 512, None, side="nt", status="skipped")]
    growth = ntk_speed.growth(rows)["cnn"]
    logs = np.log([64, 128, 256, 512])
    t = np.log([1e-4 * 64**2, 1e-4 * 128**2, 1e-4 * 256**2, 8e-4 * 256**2])
    assert growth["jacobian"]["all"] == round(np.polyfit(logs, t, 1)[0], 2)
    assert growth["jacobian"]["last"] == pytest.approx(3.0, abs=0.005)
    assert growth["nt 1"] == {"all": 1.0, "last": 1.0, "sizes": [64, 128, 256]}
    doc = {"rows": rows, "models": ["cnn"], "growth": {"cnn": growth}}
    table = ntk_speed.markdown(doc)
    assert "| cnn | 512 | 52.4 | skipped |" in table
    ntk_speed.figure(rows, ["cnn"], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_the_time_of_a_size_is_projected_from_the_growth_of_the_last_two():
    # t grows as n³ from n = 4 to 8: n = 16 projects to 8 · 2³ = 64 s
    assert _ntk_runs._projected([(2, 0.5), (4, 1.0), (8, 8.0)], 16) == pytest.approx((64, 8, 3))
    # at least n²: one size of 1 s at n = 4 projects to 16 s at n = 16, as does a flat time
    assert _ntk_runs._projected([(4, 1.0)], 16) == (16.0, 4, 2.0)
    assert _ntk_runs._projected([(2, 1.0), (4, 1.0)], 16) == (16.0, 4, 2.0)
    assert _ntk_runs._projected([], 16) is None


def test_the_memory_of_a_size_is_projected_as_n_squared_from_the_largest():
    # 1 GiB at n = 128 (less at 64: the allocator reused memory) projects to 4 GiB at 256
    done = [(64, 2.0**20), (128, 2.0**30)]
    assert _ntk_runs._projected_memory(done, 256) == (4 * 2.0**30, 128)
    assert _ntk_runs._projected_memory([], 256) is None


@pytest.mark.slow
def test_a_call_that_overruns_is_stopped_and_the_others_go_on(tmp_path):
    """A stand-in child that hangs on "slow" and answers the rest: the slow call is marked
    killed, its larger size skipped, and a new child runs the remaining tasks."""
    fake = tmp_path / "child.py"
    fake.write_text(
        textwrap.dedent(
            """
            import json, os, sys, time
            tasks = sys.argv[sys.argv.index("--tasks") + 1].split(",")
            for task in tasks:
                impl, n = task.split(":")
                print("START", impl, n, flush=True)
                if impl == "slow":
                    time.sleep(60)
                row = {"impl": impl, "n": int(n), "status": "ok", "pid": os.getpid()}
                print("ROW " + json.dumps(row), flush=True)
            """
        )
    )
    tasks = ["fast:4", "slow:4", "slow:8", "other:4", "other:8"]
    cmd = [sys.executable, str(fake), "--side", "jaxntk", "--model", "mlp"]
    rows = ntk_speed.run_child(cmd, tasks, 2.0, tmp_path / "log", None)
    got = {(r["impl"], r["n"]): r["status"] for r in rows}
    assert got == {
        ("fast", 4): "ok",
        ("slow", 4): "killed",
        ("slow", 8): "skipped",
        ("other", 4): "ok",
        ("other", 8): "ok",
    }
    pids = {r["impl"]: r["pid"] for r in rows if "pid" in r}
    assert pids["fast"] != pids["other"]  # the rest ran in a new child


def test_allocator_variants_get_their_own_columns_and_ratios():
    # auto 1.0 s; nt 1 as installed 4.0 s; nt 1 with jaxntk's malloc settings 2.0 s
    rows = [_row("auto", 64, 1.0), _row("auto", 64, 1.5) | {"variant": ntk_speed.SYSTEM_MALLOC}]
    rows += [_row("1", 64, 4.0, side="nt")]
    rows += [_row("1", 64, 2.0, side="nt") | {"variant": ntk_speed.JAXNTK_MALLOC}]
    assert ntk_speed.label(rows[1]) == "auto, system malloc"
    assert ntk_speed.label(rows[3]) == "nt 1, malloc as jaxntk"
    doc = {"rows": rows, "models": ["cnn"], "growth": {}}
    table = ntk_speed.markdown(doc)
    assert "| auto / best nt | auto / best nt, malloc as jaxntk |" in table
    assert "| cnn | 64 | 1 | 1.5 | 4 | 2 | 0.25 | 0.50 |" in table
