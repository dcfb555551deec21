"""benchmarks/nngeometry_side.py at n = 8: jaxntk's side against the explicit Jacobian
contraction (float64), the torch layout of the weights against a numpy forward pass, the
comparison and the written table. nngeometry's side runs only where JAXNTK_NG_VENV names a virtual
environment with torch and nngeometry (`nngeometry_side.py --build-ng-venv PATH` makes one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import nngeometry_side as ns  # noqa: E402 - the benchmarks folder is not a package

pytest.importorskip("mnist1d")
N = 8
NG_VENV = os.environ.get("JAXNTK_NG_VENV")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("nngeometry_side")
    return ns.make_inputs(out, N)


@pytest.fixture(scope="module")
def jacobian(inputs):
    """(N, 10, P) float64: each signal's Jacobian by reverse mode of the single-example function
    of the flax module, at the saved parameters."""
    with jax.enable_x64(True):
        params, x = ns.load_flax(inputs, N, np.float64)
        apply = ns.flax_model().apply
        jac = jax.jit(jax.vmap(jax.jacrev(lambda p, xi: apply(p, xi[None])[0]), (None, 0)))
        leaves = jax.tree.leaves(jac(params, x))
    j = np.concatenate([np.asarray(v).reshape(N, ns.CLASSES, -1) for v in leaves], axis=2)
    assert j.shape == (N, ns.CLASSES, 5210)
    return j


@pytest.mark.slow  # two compiles of the kernel: ~4 s
def test_jaxntk_side_equals_the_explicit_jacobian_contraction(inputs, jacobian):
    full = np.einsum("iap,jbp->ijab", jacobian, jacobian)
    traced = np.einsum("iap,jap->ij", jacobian, jacobian) / ns.CLASSES
    with jax.enable_x64(True):
        for form, want in (("full", full), ("traced", traced)):
            row, got = ns.jaxntk_side(inputs, N, form, 1, dtype=np.float64)
            assert got.shape == want.shape and got.dtype == np.float64
            assert np.max(np.abs(got - want)) <= 1e-10 * np.max(np.abs(want)), form
            assert row["shape"] == list(want.shape) and 0 < row["seconds"] <= row["first_seconds"]
            assert row["method"] in ("jacobian", "products", "structured")


def _gelu(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))


@pytest.mark.slow  # the inputs' flax init and MNIST-1D draw: ~4 s
def test_torch_layout_gives_the_flax_outputs_through_a_numpy_forward_pass(inputs):
    """The state dict of `torch_layout`, run as torch runs it (NCW, cross-correlation with
    padding 1 and stride 2, gelu's tanh form, channel-major flattening, x @ Wᵀ + b), written in
    numpy, equals the flax module's saved outputs."""
    data = np.load(inputs)
    state = {k[len("torch/") :]: data[k].astype(np.float64) for k in data.files if "torch/" in k}
    h = data["x"].astype(np.float64)[:, None, :]  # (n, 1, 40)
    for i in range(3):
        w, b = state[f"conv{i}.weight"], state[f"conv{i}.bias"]  # (out, in, W)
        width = w.shape[2]
        padded = np.pad(h, ((0, 0), (0, 0), (1, 1)))
        steps = (padded.shape[2] - width) // 2 + 1
        windows = np.stack([padded[:, :, 2 * t : 2 * t + width] for t in range(steps)], 2)
        h = _gelu(np.einsum("nitk,oik->not", windows, w) + b[:, None])
    assert h.shape[1:] == (ns.CHANNELS, 5)
    out = h.reshape(h.shape[0], -1) @ state["dense.weight"].T + state["dense.bias"]
    flax_out = data["outputs"]
    assert np.max(np.abs(out - flax_out)) <= 1e-5 * np.max(np.abs(flax_out))


def test_relative_difference_reads_nngeometrys_layout():
    rng = np.random.default_rng(0)
    n, c = 70, 3  # more than one block of 64 rows
    ours = rng.standard_normal((n, n, c, c))
    noise = 1e-3 * rng.standard_normal(ours.shape)
    theirs = (ours + noise).transpose(2, 0, 3, 1)  # G[a, i, b, j] = K[i, j, a, b]
    want = np.linalg.norm(noise) / np.linalg.norm(ours)
    assert ns.relative_difference(theirs, ours) == pytest.approx(want, rel=1e-12)
    traced = ours[:, :, 0, 0]
    assert ns.relative_difference(traced + noise[:, :, 0, 0], traced) == pytest.approx(
        np.linalg.norm(noise[:, :, 0, 0]) / np.linalg.norm(traced), rel=1e-12
    )
    with pytest.raises(ValueError, match="shapes differ"):
        ns.relative_difference(theirs[:, :-1], ours)


def test_table_and_json_of_a_synthetic_result(tmp_path):
    def side(seconds, mib):
        return {"seconds": seconds, "first_seconds": 2 * seconds, "peak_bytes": mib * 2**20}

    rows = [
        ns._row(250, "full", side(0.5, 700), side(4.0, 900), 2.5e-7),
        ns._row(250, "traced", side(0.25, 600), side(4.01, 900), 1.5e-7),
        ns._row(2000, "full", side(30.0, 4000), None, None),
    ]
    assert rows[0]["ratio"] == pytest.approx(8.0) and rows[2]["ratio"] is None
    doc = {
        "when": "2026-12-08 00:50 UTC",
        "machine": {"cpu": "a CPU", "cores": 2, "load_average": [0.1, 0.2, 0.3]},
        "versions": {"jax": "J", "flax": "F", "ng_side": {"torch": "T", "nngeometry": "0.4"}},
        "settings": {"repeats": 2, "torch_threads": 2},
        "rows": rows,
        "notes": ["n = 2000: nngeometry skipped."],
    }
    text = ns.write_outputs(doc, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nngeometry-side.json",
        "nngeometry-side.md",
    ]
    assert json.loads((tmp_path / "nngeometry-side.json").read_text()) == doc
    assert (tmp_path / "nngeometry-side.md").read_text() == text
    lines = text.splitlines()
    assert "| 250 | full | 0.5 | 4 | 8.0 | 2.5e-07 | 700 | 900 |" in lines
    assert "| 250 | traced | 0.25 | 4.01 | 16.0 | 1.5e-07 | 600 | 900 |" in lines
    assert "| 2000 | full | 30 | — | — | — | 4000 | — |" in lines
    assert "n = 2000: nngeometry skipped." in lines and "torch T (2 threads)" in text


def test_bad_sizes_and_a_missing_venv_stop_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    for sizes in (["0"], ["8", "-3"]):
        with pytest.raises(ValueError, match="--sizes"):
            ns.main(["--out", str(out), "--sizes", *sizes, "--ng-venv", str(tmp_path)])
    with pytest.raises(ValueError, match="--sizes: at n = 1000000"):
        ns.main(["--out", str(out), "--sizes", "1000000"])
    with pytest.raises(SystemExit, match=r"--ng-venv .*no virtual environment"):
        ns.main(["--out", str(out), "--sizes", "8", "--ng-venv", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="--ng-venv PATH or --build-ng-venv"):
        ns.main(["--out", str(out), "--sizes", "8"])
    assert not out.exists()


@pytest.mark.slow  # torch's import and nngeometry's Gram matrix in a child: ~5 s
@pytest.mark.skipif(not NG_VENV, reason="JAXNTK_NG_VENV names no nngeometry venv")
def test_nngeometry_side_equals_the_explicit_jacobian_contraction(inputs, jacobian):
    python = ns.ng_python(Path(NG_VENV))
    out = inputs.parent
    (out / "kernels").mkdir(exist_ok=True)
    cmd = [str(python), str(ROOT / "benchmarks" / "nngeometry_side.py"), "--child", "nngeometry"]
    cmd += ["--n", str(N), "--data", str(inputs), "--out", str(out), "--repeats", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ns._ng_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["full"]["output_gap"] <= ns.OUTPUT_RTOL and row["peak_bytes"] > 0
    assert row["versions"]["nngeometry"] == "0.4"
    full = np.load(out / "kernels" / f"nngeometry-full-{N}.npy")  # (c, n, c, n)
    traced = np.load(out / "kernels" / f"nngeometry-traced-{N}.npy")
    want = np.einsum("iap,jbp->aibj", jacobian, jacobian)
    assert full.shape == want.shape and full.dtype == np.float32
    assert np.max(np.abs(full - want)) <= 1e-5 * np.max(np.abs(want))
    want_traced = np.einsum("iap,jap->ij", jacobian, jacobian) / ns.CLASSES
    assert np.max(np.abs(traced - want_traced)) <= 1e-5 * np.max(np.abs(want_traced))
