"""`jaxntk bench --tiny` runs every benchmark row and writes bench.json in the documented schema."""

import json
import math

from jaxntk import cli

KINDS = ("matmul_peak", "step/closed/", "step/taylor/", "baseline/", "compile/", "subspace/")
KINDS += ("scaling/", "sweep/vmapped", "sweep/separate")


def test_bench_tiny_writes_schema(tmp_path):
    out = tmp_path / "bench"
    assert cli.main(["bench", "--tiny", "--no-write", "--out", str(out)]) == 0
    doc = json.loads((out / "bench.json").read_text())

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
            "peak_memory_mb",
        }
        assert isinstance(r["config"], dict)
        time_ = r.get("seconds_per_step", r.get("seconds"))
        assert isinstance(time_, float) and math.isfinite(time_)
        for key in ("gflops", "fraction_of_matmul_peak", "peak_memory_mb"):
            assert r[key] is None or (isinstance(r[key], float) and r[key] >= 0), (r, key)
    peak = next(r for r in doc["rows"] if r["name"] == "matmul_peak")
    assert peak["gflops"] > 0
    step = next(r for r in doc["rows"] if r["name"] == "step/closed/regularized")
    assert step["fraction_of_matmul_peak"] is not None
    scaling = [r for r in doc["rows"] if r["name"].startswith("scaling/")]
    assert all(math.isfinite(r["config"]["loglog_slope"]) for r in scaling)
    compiles = [r["config"]["compiles"] for r in doc["rows"] if r["name"].startswith("compile/")]
    assert compiles and all(c == 1 for c in compiles)
