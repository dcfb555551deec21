"""benchmarks/pntk.py at n = 60: its kernels against explicit Jacobians of the MNIST-1D CNN, its
distance and kernel-regression accuracies recomputed in numpy, and a plain run writes only to
--out."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pntk  # noqa: E402 - the benchmarks folder is not a package

pytest.importorskip("mnist1d")
pytestmark = pytest.mark.slow  # the script in a subprocess: ~12 s


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pntk")
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pntk.py"), "--n", "60", "--n-test", "20"]
    cmd += ["--repeats", "1", "--save-kernels", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert results.read_bytes() == before  # without --results the checkout is left alone
    return out, json.loads((out / "pntk.json").read_text()), np.load(out / "kernels.npz")


def test_kernels_equal_the_explicit_jacobian_formulas(tiny_run):
    """On the first 6 inputs: traced (1/c) Σ_a J_a J_aᵀ and pseudo (1/c) Σ_a Σ_b J_a J_bᵀ, each
    example's Jacobian by reverse mode of the flax module at PRNGKey(0) (float32)."""
    _, doc, saved = tiny_run
    x = jnp.asarray(saved["x"])
    module = pntk.flax_cnn()
    params = module.init(jax.random.PRNGKey(0), x[:1])
    jac = jax.jit(jax.vmap(jax.jacrev(lambda p, xi: module.apply(p, xi[None])[0]), (None, 0)))(
        params, x[:6]
    )
    leaves = [np.asarray(v, np.float64).reshape(6, 10, -1) for v in jax.tree.leaves(jac)]
    j = np.concatenate(leaves, axis=2)  # (6, 10, P)
    traced = np.einsum("iap,jap->ij", j, j) / 10
    pseudo = np.einsum("iap,jbp->ij", j, j) / 10
    for got, want in ((saved["traced"], traced), (saved["pntk"], pseudo)):
        assert np.max(np.abs(got[:6, :6] - want)) <= 1e-4 * np.max(np.abs(want))
    assert doc["parameters"] == j.shape[2] == 5210


def test_distance_and_accuracies_recomputed(tiny_run):
    _, doc, saved = tiny_run
    k_tr, k_p, labels = saved["traced"], saved["pntk"], saved["labels"]
    assert doc["relative_frobenius"] == pytest.approx(
        np.sqrt(np.sum((k_p - k_tr) ** 2) / np.sum(k_tr**2)), rel=1e-9
    )
    n, val = doc["n"], doc["validation"]
    assert (n, doc["n_test"], val, k_tr.shape) == (60, 20, 12, (80, 80))
    onehot = np.eye(10)[labels]
    for name, k in (("traced NTK", k_tr), ("pNTK", k_p)):
        row = doc["kernels"][name]
        # the chosen ridge has the best validation accuracy (ties: the larger ridge)
        scores = {float(r): a for r, a in row["validation_by_ridge"].items()}
        best = max(scores.values())
        assert row["ridge_relative"] == max(r for r, a in scores.items() if a == best)
        rho = row["ridge_relative"] * np.trace(k[:n, :n]) / n
        weights = np.linalg.lstsq(k[:n, :n] + rho * np.eye(n), onehot[:n], rcond=None)[0]
        accuracy = np.mean((k[n:, :n] @ weights).argmax(1) == labels[n:])
        assert row["test_accuracy"] == pytest.approx(accuracy)
        assert row["seconds"] > 0 and row["method"] in ("jacobian", "products", "structured")
    assert doc["accuracy_change"] == pytest.approx(
        doc["kernels"]["pNTK"]["test_accuracy"] - doc["kernels"]["traced NTK"]["test_accuracy"]
    )
