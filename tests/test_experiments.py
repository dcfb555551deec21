"""Each experiment runs end to end on a tiny configuration and writes valid JSON, NPZ and a PNG."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk import checkpoint, cli, targets, training
from jaxntk.experiments import dense_plus_sparse, lambda_sweep, variants


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_variants_end_to_end(tmp_path):
    cfg = dataclasses.replace(
        variants.PRESETS["cpu"], d=6, n=20, m=40, n_test=100, steps=40, eval_every=20, seeds=(1, 2)
    )
    doc = variants.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "variants.json").read_text())
    assert saved["experiment"] == "variants" and saved["config"]["steps"] == 40
    assert len(saved["results"]) == 6 * 2
    assert {r["variant"] for r in saved["results"]} == set(cfg.variants)
    with np.load(tmp_path / "variants.npz") as z:
        for r in saved["results"]:
            assert set(r["share_quadratic"]) == {"linear", "quadratic"}
            curve = z[f"{r['variant']}/{r['seed']}/test_loss"]
            assert curve.shape == (3,) and r["test_loss"] == pytest.approx(curve[-1], rel=1e-6)
            assert np.all(np.isfinite(curve))
    for name, row in saved["summary"].items():
        losses = [r["test_loss"] for r in saved["results"] if r["variant"] == name]
        assert row["test_loss_mean"] == pytest.approx(np.mean(losses), rel=1e-9)
        assert row["test_loss_std"] == pytest.approx(np.std(losses), rel=1e-9, abs=1e-12)
    assert doc["summary"] == saved["summary"]
    assert _png(tmp_path / "variants.png")


def _tiny_sweep(**kw):
    """The λ sweep on a tiny problem with λ_1 ∈ {0, 0.05}; `kw` sets steps, eval_every, seeds."""
    tiny = dict(d=6, n=20, m=40, n_test=100, lambdas=(0.0, 0.05))
    return dataclasses.replace(lambda_sweep.PRESETS["cpu"], **tiny, **kw)


@pytest.mark.slow
def test_lambda_sweep_end_to_end(tmp_path):
    cfg = _tiny_sweep(steps=40, eval_every=20, seeds=(1, 2))
    lambda_sweep.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "lambda-sweep.json").read_text())
    assert len(saved["results"]) == 2 * 2
    assert set(saved["summary"]) == {"0", "0.05"}
    r = saved["results"][1]
    assert r["lambda_sum"] == 0.05 and r["lambda_bulk_mean"] == 0.05 * 20
    # a positive bulk weight holds the bulk output down
    s = saved["summary"]
    assert s["0.05"]["bulk_sum_mean"] < s["0"]["bulk_sum_mean"]
    assert _png(tmp_path / "lambda-sweep.png")
    with np.load(tmp_path / "lambda-sweep.npz") as z:
        assert z["1/trace_bulk"].shape == (2, 40) and z["trace_step"].tolist() == list(range(40))
        # the test loss is evaluated on the log-spaced schedule: a curve against log t from t = 1
        log = training.eval_schedule(40, "log", cfg.eval_points).tolist()
        assert z["step"].tolist() == [0, *sorted({*log, 20, 40})]
        assert z["1/test_loss"].shape == (2, z["step"].size)


@pytest.mark.slow
def test_reproduce_cli_with_overrides(tmp_path, capsys):
    rc = cli.main(
        [
            "reproduce",
            "--only",
            "lambda-sweep",
            "--steps",
            "3",
            "--seeds",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "lambda-sweep.json").read_text())["config"]
    assert cfg["steps"] == 3 and cfg["seeds"] == [1]


def test_n_star_and_slopes_from_rows():
    from jaxntk.experiments import sample_complexity as sc

    rows = [
        {"variant": "ntk", "d": d, "n": n, "seed": s, "test_loss": 0.2 if n >= d**2 else 0.6}
        for d in (4, 8)
        for n in (d, d**2, d**3)
        for s in (1, 2)
    ]
    nstar = sc.n_star(rows, 0.3)
    assert nstar["ntk"]["4"] == {"1": 16, "2": 16} and nstar["ntk"]["8"]["2"] == 64
    slopes = sc.fit_slopes(nstar)["ntk"]
    assert abs(slopes["slope_mean"] - 2.0) < 1e-9 and slopes["seeds_fitted"] == 2
    rows.append({"variant": "ntk", "d": 8, "n": 8, "seed": 3, "test_loss": 0.9})
    assert sc.n_star(rows, 0.3)["ntk"]["8"]["3"] is None


def test_interpolated_n_star_is_the_crossing_in_log_n():
    from jaxntk.experiments import sample_complexity as sc

    # test loss 0.6 at n = 10 and 0.2 at n = 1000: 0.4 is crossed half-way in log n, at n = 100
    rows = [
        {"variant": "ntk", "d": 5, "n": n, "seed": 1, "test_loss": loss}
        for n, loss in [(1, 0.9), (10, 0.6), (1000, 0.2)]
    ]
    assert sc.n_star(rows, 0.4)["ntk"]["5"]["1"] == 1000
    assert sc.n_star(rows, 0.4, interpolate=True)["ntk"]["5"]["1"] == pytest.approx(100.0)
    assert sc.n_star(rows, 0.95, interpolate=True)["ntk"]["5"]["1"] == 1  # first point already
    assert sc.n_star(rows, 0.1, interpolate=True)["ntk"]["5"]["1"] is None


@pytest.mark.slow
def test_sample_complexity_end_to_end(tmp_path):
    """Thresholds inside the range of the tiny run's test losses (about 0.94 → 0.54 at d = 4,
    0.92 → 0.61 at d = 6): n* is a later grid point, and one threshold is reached at one d only."""
    from jaxntk.experiments import sample_complexity as sc

    cfg = dataclasses.replace(
        sc.PRESETS["cpu"],
        ds=(4, 6),
        exponents=(1.0, 1.5),
        m=20,
        n_test=50,
        steps=20,
        eval_every=20,
        seeds=(1,),
        variants=("ntk",),
        threshold=0.7,
        other_thresholds=(0.58,),
    )
    sc.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "sample-complexity.json").read_text())
    rows = saved["results"]
    assert [(r["d"], r["n"]) for r in rows] == [(4, 4), (4, 8), (6, 6), (6, 15)]
    loss = {(r["d"], r["n"]): r["test_loss"] for r in rows}
    assert loss[4, 4] > 0.7 >= loss[4, 8] and loss[6, 6] > 0.7 >= loss[6, 15]
    assert loss[4, 8] <= 0.58 < loss[6, 15]
    assert saved["n_star"]["ntk"] == {"4": {"1": 8}, "6": {"1": 15}}
    slope = math.log(15 / 8) / math.log(6 / 4)  # two points: the fitted line is exact
    assert saved["slopes"]["ntk"]["slope_mean"] == pytest.approx(slope, rel=1e-9)
    assert saved["slopes"]["ntk"]["seeds_fitted"] == 1
    # interpolated: where the loss crosses 0.7 between the two grid points, linear in log n
    crossing = {
        d: math.exp(
            math.log(n0) + (loss[d, n0] - 0.7) / (loss[d, n0] - loss[d, n1]) * math.log(n1 / n0)
        )
        for d, n0, n1 in ((4, 4, 8), (6, 6, 15))
    }
    got = saved["n_star_interpolated"]["ntk"]
    assert got["4"]["1"] == pytest.approx(crossing[4], rel=1e-9)
    assert got["6"]["1"] == pytest.approx(crossing[6], rel=1e-9)
    slope_i = math.log(crossing[6] / crossing[4]) / math.log(6 / 4)
    assert saved["slopes_interpolated"]["ntk"]["slope_mean"] == pytest.approx(slope_i, rel=1e-9)
    assert list(saved["slopes_by_threshold"]) == ["0.7", "0.58"]
    assert saved["slopes_by_threshold"]["0.7"] == saved["slopes_interpolated"]
    # 0.58 is reached at d = 4 only: no seed has every d, no slope
    assert saved["slopes_by_threshold"]["0.58"]["ntk"]["slope_mean"] is None
    assert saved["slopes_by_threshold"]["0.58"]["ntk"]["seeds_fitted"] == 0
    assert _png(tmp_path / "sample-complexity.png")


@pytest.mark.slow
def test_mlp_end_to_end(tmp_path):
    """Threshold 0.52 inside the tiny run's range (test loss 0.47 at d = 3, n = 9; 0.54, 0.53,
    0.51 at d = 4, n = 16, 32, 48): d = 3 stops at its first n, d = 4 at its third."""
    from jaxntk.experiments import mlp

    cfg = dataclasses.replace(
        mlp.PRESETS["cpu"],
        ds=(3, 4),
        multipliers=(1, 2, 3),
        width=8,
        n_test=50,
        steps=10,
        eval_every=10,
        threshold=0.52,
    )
    doc = mlp.run(cfg, tmp_path, progress=False)
    rows = doc["results"]
    assert [(r["d"], r["n"]) for r in rows] == [(3, 9), (4, 16), (4, 32), (4, 48)]
    assert rows[0]["test_loss"] < 0.52 < min(rows[1]["test_loss"], rows[2]["test_loss"])
    assert rows[3]["test_loss"] < 0.52
    assert doc["n_star"] == {"3": {"1": 9}, "4": {"1": 48}}
    assert doc["slope"] == pytest.approx(math.log(48 / 9) / math.log(4 / 3), rel=1e-9)
    saved = json.loads((tmp_path / "mlp.json").read_text())
    assert saved["experiment"] == "mlp" and saved["n_star"] == doc["n_star"]
    assert _png(tmp_path / "mlp.png")
    with np.load(tmp_path / "mlp.npz") as z:
        assert z["d"].tolist() == [3, 4] and z["n_star"].tolist() == [9, 48]
    # the network really is the flax MLP with PyTorch's init: every first-layer weight in ±1/√d
    params = mlp.MLP(8).init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    assert float(np.abs(params["Dense_0"]["kernel"]).max()) <= 0.5


@pytest.mark.slow
def test_paper_preset_starts_and_runs_a_few_steps(tmp_path, capsys):
    """`--preset paper` is the authors' size (d=100, n=1000, m=10 000, 10 000 test points): here
    it must at least set up, train two steps of the authors' three λ and write its files."""
    out = tmp_path / "paper"
    args = ["reproduce", "--preset", "paper", "--only", "lambda-sweep", "--steps", "2"]
    args += ["--seeds", "1", "--lambdas", "0,1e-3", "--out", str(out)]
    rc = cli.main(args)
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "lambda-sweep.json").read_text())
    cfg = doc["config"]
    assert (cfg["d"], cfg["n"], cfg["m"], cfg["n_test"]) == (100, 1000, 10_000, 10_000)
    assert cfg["steps"] == 2 and cfg["lambdas"] == [0.0, 1e-3]
    assert [r["lambda_bulk_mean"] for r in doc["results"]] == [0.0, 1.0]
    assert all(np.isfinite(r["test_loss"]) for r in doc["results"])
    assert _png(out / "lambda-sweep.png")


def test_reproduce_rejects_bad_lambdas(tmp_path, capsys):
    for bad in ("0,-1", "a,b", "nan"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["reproduce", "--only", "lambda-sweep", "--lambdas", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--lambdas" in err[0]


@pytest.mark.slow
def test_authors_run_table_is_computed_from_the_saved_run(tmp_path, capsys):
    """docs/authors_run.py turns a one-seed lambda-sweep into the README's table and figure."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "authors_run", Path(__file__).parents[1] / "docs" / "authors_run.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = _tiny_sweep(steps=1000, eval_every=250, seeds=(1,))
    lambda_sweep.run(cfg, tmp_path, progress=False)
    table = mod.main(tmp_path, figures=tmp_path / "figs")
    saved = json.loads((tmp_path / "figs" / "authors-run.json").read_text())
    assert saved["step"][-1] == 1000 and len(saved["test_loss"]) == 2
    assert _png(tmp_path / "figs" / "authors-run.png")
    rows = table.strip().splitlines()
    assert rows[0].startswith("| λ_1 | t=250 | t=1000 |") and len(rows) == 2 + 3 * 2
    final = float(rows[2].split("|")[-2])
    assert final == pytest.approx(saved["test_loss"][0][-1], abs=5e-4)


def test_sweep_only_flags_without_the_sweep_fail_before_any_work(tmp_path, capsys):
    for flag, value in (("--lambdas", "0,1e-3"), ("--checkpoint", str(tmp_path / "ck"))):
        out = tmp_path / "r"
        rc = cli.main(["reproduce", "--only", "variants", flag, value, "--out", str(out)])
        assert rc == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "lambda-sweep" in err[0]
        assert not out.exists()


def _tiny_presets(monkeypatch):
    """Every experiment's cpu preset replaced by a tiny one, as `jaxntk reproduce` reads it."""
    from jaxntk.experiments import mlp, sample_complexity, spectrum

    tiny = dict(d=6, n=20, m=40, n_test=100)
    presets = {
        variants: dataclasses.replace(
            variants.PRESETS["cpu"], **tiny, steps=20, eval_every=10, seeds=(1,)
        ),
        # every 2 steps, 10 per chunk (chunks of 20 steps; eval_points=0: no log schedule)
        lambda_sweep: _tiny_sweep(steps=40, eval_every=2, eval_points=0, seeds=(1,)),
        spectrum: spectrum.Config(d=8, n=30, m=200),
        sample_complexity: dataclasses.replace(
            sample_complexity.PRESETS["cpu"],
            ds=(4, 6),
            exponents=(1.0, 1.5),
            m=20,
            n_test=50,
            steps=20,
            eval_every=20,
            seeds=(1,),
            variants=("ntk",),
        ),
        mlp: dataclasses.replace(
            mlp.PRESETS["cpu"], ds=(4,), multipliers=(1,), width=8, n_test=50, steps=10
        ),
    }
    for module, cfg in presets.items():
        monkeypatch.setitem(module.PRESETS, "cpu", cfg)
    return presets


@pytest.mark.slow
def test_reproduce_without_only_runs_the_default_set_and_plot_redraws_every_figure(
    tmp_path, monkeypatch, capsys
):
    _tiny_presets(monkeypatch)
    assert cli.main(["reproduce", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    names = ["variants", "lambda-sweep", "spectrum"]
    assert [
        line.split()[1] for line in out.splitlines() if line.startswith("== ") and "->" in line
    ] == names
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(f"{n}.json" for n in names)
    # the summary tables: a row per variant and per λ
    summary = json.loads((tmp_path / "variants.json").read_text())["summary"]
    for name, row in summary.items():
        assert f"{name:<16} {row['test_loss_mean']:.3f} ± {row['test_loss_std']:.3f}" in out
    assert cli.main(["reproduce", "--only", "sample-complexity,mlp", "--out", str(tmp_path)]) == 0
    drawn = ["variants", "lambda-sweep", "spectrum", "sample-complexity", "mlp"]
    for name in drawn:
        (tmp_path / f"{name}.png").unlink()
    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == drawn
    for name in drawn:
        assert _png(tmp_path / f"{name}.png"), name


@pytest.mark.slow
def test_reproduce_resumes_the_lambda_sweep_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Stopped once its first chunk (20 of 40 steps) is saved, a rerun with the same --checkpoint
    trains only the second chunk and ends where an uninterrupted run ends."""
    _tiny_presets(monkeypatch)
    args = ["reproduce", "--only", "lambda-sweep", "--checkpoint", str(tmp_path / "ck")]
    assert cli.main(["reproduce", "--only", "lambda-sweep", "--out", str(tmp_path / "ref")]) == 0

    def stop_after_first_chunk(progress, label, what="test"):
        def stop(info):  # the checkpoint of a chunk is saved after its progress report
            if info["step"] > 20:
                raise KeyboardInterrupt

        return stop

    with monkeypatch.context() as m:
        m.setattr(lambda_sweep, "labelled_progress", stop_after_first_chunk)
        with pytest.raises(KeyboardInterrupt):
            cli.main([*args, "--out", str(tmp_path / "first")])
    assert checkpoint.latest_step(tmp_path / "ck") == 20  # the first chunk is saved
    capsys.readouterr()
    assert cli.main([*args, "--out", str(tmp_path / "resumed")]) == 0
    steps = [
        line.split("step ")[1].split()[0]
        for line in capsys.readouterr().out.splitlines()
        if "[lambda-sweep] step" in line
    ]
    assert steps == ["40/40"]  # the first chunk was not trained again
    ref = json.loads((tmp_path / "ref" / "lambda-sweep.json").read_text())["results"]
    resumed = json.loads((tmp_path / "resumed" / "lambda-sweep.json").read_text())["results"]
    for a, b in zip(ref, resumed, strict=True):
        for key in ("test_loss", "train_loss", "bulk_sum"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key


@pytest.mark.parametrize(
    "change, words",
    [
        ({"threshold": 0.0}, "threshold must be > 0"),
        ({"k_sample": 3}, "k_sample = 3 must be one of ks"),
        ({"distributions": ("cube",)}, "unknown distribution 'cube'"),
        ({"rs": (7,)}, r"rs = \(7,\) must be at most every d"),
        ({"separate": ("full",)}, "separate must be a subset"),
    ],
)
def test_dense_plus_sparse_rejects_bad_settings_before_any_work(tmp_path, change, words):
    cfg = dataclasses.replace(dense_plus_sparse.PRESETS["cpu"], d=6, ds=(), **change)
    with pytest.raises(ValueError, match=words):
        dense_plus_sparse.run(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~25 s of CPU: six compiled programs (three variants at two n) and a figure
@pytest.mark.slow
def test_dense_plus_sparse_end_to_end(tmp_path):
    cfg = dataclasses.replace(
        dense_plus_sparse.PRESETS["cpu"],
        d=3,
        ks=(1,),
        k_sample=1,
        ds=(),
        n_points=2,
        m=20,
        n_test=100,
        steps=8,
        eval_points=4,
        seeds=(1, 2),
        lambdas_sum=(0.05,),
        lambdas_mean=(1.0,),
    )
    doc = dense_plus_sparse.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "dense-plus-sparse.json").read_text())
    rows = saved["results"]
    labels = ["ntk", "quadntk", "ntk+quadntk", "sum:0.05", "mean:1"]
    # grids from N(d, ≤ 1) = d + 1 to N(d, ≤ 2) = C(d + 2, 2) − 1
    assert cfg.grid(3, 1) == [4, 9] and cfg.grid(4, 1) == [5, 14]
    assert len(rows) == 2 * 2 * len(labels)  # two n, two seeds
    for r in rows:
        assert r["kept_directions"] == r["d"] + 1
        if r["variant"] == "sum:0.05":
            assert r["lambda_bulk_mean"] == pytest.approx(0.05 * r["n"])
    steps = [0, *training.eval_schedule(8, "log", 4)]
    with np.load(tmp_path / "dense-plus-sparse.npz") as z:
        assert z["eval_step"].tolist() == steps
        for r in rows:
            key = dense_plus_sparse.curve_key(
                "sphere", 1, r["d"], 1, r["n"], r["seed"], r["variant"]
            )
            assert z[f"{key}/test_loss"][-1] == pytest.approx(r["test_loss"], rel=1e-6)
            assert z[f"{key}/share_fq"].shape == (len(steps), 2)
    # the gain, recomputed from the rows
    sel = [r for r in rows if r["d"] == 3 and r["n"] == 9]
    base = {r["seed"]: r["test_loss"] for r in sel if r["variant"] == "ntk+quadntk"}
    gain = [r["test_loss"] / base[r["seed"]] for r in sel if r["variant"] == "mean:1"]
    got = saved["summary"]["by_n"]["sphere/k1/r1/n9"]["mean:1"]["gain"]
    assert got["mean"] == pytest.approx(np.mean(gain)) and got["std"] == pytest.approx(np.std(gain))
    # n*: the smallest n whose final test loss is at most the threshold, checked by hand
    ns = saved["summary"]["sample_complexity"]["n_star"]
    for r in rows:
        own = sorted(
            (q["n"], q["test_loss"])
            for q in rows
            if (q["variant"], q["d"], q["seed"]) == (r["variant"], r["d"], r["seed"])
        )
        first = next((n for n, loss in own if loss <= cfg.threshold), None)
        assert ns[r["variant"]][str(r["d"])][str(r["seed"])] == first
    # the spectrum checks: predicted blocks of degree ≤ k fill the kept directions
    for s in saved["spectra"]:
        assert sum(s["predicted_block_sizes"].values()) == targets.num_harmonics_up_to(s["d"], 1)
    race = saved["summary"]["race"]
    assert {race["largest_gain"]["n"], race["smallest_gain"]["n"]} <= {4, 9}
    assert doc["summary"]["by_n"] == saved["summary"]["by_n"]
    # the printed tables: (1) per n, (2) n* and its slope, (3) the race, with the values above
    text = dense_plus_sparse.table(saved)
    for head in ("(1) sphere, k = 1, d = 3, r = 1", "(2) n*", "(3) the race"):
        assert head in text
    base = [r["test_loss"] for r in sel if r["variant"] == "ntk+quadntk"]
    assert f"{np.mean(base):.3f} ± {np.std(base):.3f}" in text
    assert f"{np.mean(gain):.2f} ± {np.std(gain):.2f}" in text
    assert _png(tmp_path / "dense-plus-sparse.png")
    (tmp_path / "dense-plus-sparse.png").unlink()
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert _png(tmp_path / "dense-plus-sparse.png")
