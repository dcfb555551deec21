"""The lazy-rich experiment on a tiny configuration: files, the α = 1 row against the `full`
variant, the distance to the scaled NTK against an independent computation, the slopes from
the rows."""

import dataclasses
import json
import math

import numpy as np
import pytest

import jaxntk as jn
from jaxntk.experiments import lazy_rich
from jaxntk.experiments._common import paper_setup
from jaxntk.experiments.sample_complexity import fit_slopes, n_star

# about twenty small programs to compile (two widths, five variants, one-step, four (d, n))
pytestmark = pytest.mark.slow

TINY = dataclasses.replace(
    lazy_rich.PRESETS["cpu"],
    d=5,
    n=24,
    n_test=50,
    widths=(8, 16),
    alphas=(0.3, 1.0, 10.0),
    steps=20,
    eval_every=10,
    probe=6,
    seeds=(1,),
    slope_ds=(4, 5),
    slope_exponents=(1.5, 2.0),
    slope_width=8,
    slope_steps=20,
    slope_alphas=(1.0,),
    slope_seeds=(1, 11),
    etas=(1.0, 4.0),
    ridges=(1e-2, 1.0),
    folds=2,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("lazy-rich")
    doc = lazy_rich.run(TINY, out, progress=False)
    return doc, out


def test_files_and_rows(saved):
    doc, out = saved
    on_disk = json.loads((out / "lazy-rich.json").read_text())
    assert on_disk["rate"] == doc["rate"] and on_disk["experiment"] == "lazy-rich"
    assert (out / "lazy-rich.png").read_bytes()[:4] == b"\x89PNG"
    assert [(r["width"], r["alpha"]) for r in doc["sweep"]] == [
        (m, a) for m in (8, 16) for a in (0.3, 1.0, 10.0)
    ]
    # the variants and one-step at the largest width, the ntk reference at both
    assert sorted((r["variant"], r["width"]) for r in doc["variants"]) == sorted(
        [("ntk", 8)] + [(v, 16) for v in (*lazy_rich.COMPARED, "one-step")]
    )
    ntk = [r for r in doc["variants"] if r["variant"] == "ntk"]
    assert all(r["kernel_change"] == 0.0 for r in ntk)
    with np.load(out / "lazy-rich.npz") as z:
        for r in doc["sweep"]:
            curve = z[f"full/{r['width']}/1/{r['alpha']:g}/test_loss"]
            assert curve[-1] == pytest.approx(r["test_loss"], rel=1e-6)


def test_alpha_one_row_is_the_full_variant_and_the_distance_is_recomputed(saved):
    doc, _ = saved
    task, net = paper_setup(
        1, d=5, n=24, n_test=50, m=16, distribution="gaussian", activation="shifted_sigmoid"
    )
    full = jn.train(net, task, "full", steps=20, eval_every=10, progress=False)
    ntk = jn.train(net, task, "ntk", steps=20, eval_every=10, progress=False)
    row = next(r for r in doc["sweep"] if r["width"] == 16 and r["alpha"] == 1.0)
    assert row["test_loss"] == pytest.approx(float(full.final["test_loss"][0, 0]), rel=1e-6)
    prep = net.prepare(task.x_test)
    f = np.asarray(net.full(full.params[0, 0], prep))
    g = np.asarray(net.linear_term(ntk.params[0, 0], prep))
    expected = np.linalg.norm(f - g) / np.linalg.norm(g)
    assert row["distance_to_ntk_test"] == pytest.approx(expected, rel=1e-4)


def test_rate_and_slopes_follow_from_the_rows(saved):
    doc, _ = saved
    for m in ("8", "16"):
        by_alpha = doc["sweep_summary"][m]
        xs = [1.0, 10.0]
        ys = [by_alpha[f"{a:g}"]["distance_to_ntk_test_mean"] for a in xs]
        slope = math.log(ys[1] / ys[0]) / math.log(10.0)
        assert doc["rate"][m]["distance_to_ntk_test"] == pytest.approx(slope, rel=1e-9)
        assert slope < -0.5  # the network approaches the scaled NTK as α grows
    rows = doc["slope_rows"]
    assert {r["variant"] for r in rows} == {"full α=1", "one-step"}
    assert len(rows) == 2 * 2 * 2 * 2  # 2 d × 2 n × 2 seeds × (network, one-step)
    assert doc["slopes"] == fit_slopes(n_star(rows, TINY.threshold, interpolate=True))


def test_bad_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="alphas must be > 0"):
        lazy_rich.run(dataclasses.replace(TINY, alphas=(0.0, 1.0)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="probe must be in"):
        lazy_rich.run(dataclasses.replace(TINY, probe=100), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_reproduce_prints_the_table_and_plot_redraws(saved, tmp_path, monkeypatch, capsys):
    from jaxntk import cli

    monkeypatch.setitem(lazy_rich.PRESETS, "cpu", TINY)
    assert cli.main(["reproduce", "--only", "lazy-rich", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "lazy-rich.json").read_text())

    def timeless(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert timeless(doc["sweep"]) == timeless(saved[0]["sweep"])  # the module's runs again
    assert lazy_rich.table(doc) in out
    v = doc["sweep_summary"]["16"]["10"]
    assert f"{v['test_loss_mean']:10.3f}" in out
    (tmp_path / "lazy-rich.png").unlink()
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("lazy-rich: ")
    assert (tmp_path / "lazy-rich.png").read_bytes()[:4] == b"\x89PNG"
