"""benchmarks/mnist1d_kernel_nt.py: the jaxntk side at a tiny size, and the comparison run on a
kernel standing in for neural-tangents' (whose side needs a virtual environment of its own)."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mnist1d")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mnist1d_kernel_nt as bench


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("krr-nt")
    return out, bench.jaxntk_side(out, n=40, seed=0, n_test=20)


def test_the_lax_network_is_the_experiments_cnn(tiny):
    _, row = tiny
    assert row["lax_vs_flax_max_abs"] < 1e-5


def test_the_saved_kernel_is_the_traced_jacobian_contraction(tiny):
    import jax
    import jax.numpy as jnp

    out, _ = tiny
    with np.load(out / "inputs.npz") as data:
        params = jax.tree.map(jnp.asarray, bench.unflatten(data))
        x, n = jnp.asarray(data["x"]), int(data["n"])
    jac = jax.jacrev(lambda p: bench.cnn_apply(p, x))(params)
    flat = np.concatenate(
        [np.asarray(j, np.float64).reshape(x.shape[0], 10, -1) for j in jax.tree.leaves(jac)], -1
    )
    # the traced kernel is the mean over the 10 outputs (neural-tangents' convention too)
    expected = np.einsum("acp,bcp->ab", flat, flat[:n]) / 10
    kernel = np.load(out / "kernel-jaxntk.npy")
    assert kernel.shape == (x.shape[0], n)
    np.testing.assert_allclose(kernel, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def test_the_same_kernel_gives_the_same_row_and_a_perturbed_one_is_measured(tiny, tmp_path):
    import shutil

    out, row = tiny
    for name in ("inputs.npz", "split.npz", "kernel-jaxntk.npy"):
        shutil.copy(out / name, tmp_path / name)
    kernel = np.load(out / "kernel-jaxntk.npy")
    np.save(tmp_path / "kernel-nt.npy", kernel * (1 + 1e-3))  # relative difference 1e-3
    with np.load(out / "split.npz") as split:
        y_test = split["y_test"]
    np.save(tmp_path / "nt-predict-test.npy", y_test)  # a perfect predictor: accuracy 1
    peer = {"kernel_seconds": 1.0, "flax_vs_lax_max_abs": 0.0}
    summary = bench.compare(tmp_path, row, peer)
    assert summary["kernel_relative_difference"] == pytest.approx(1e-3, rel=1e-3)
    # a kernel scaled by 1 + 1e-3 with the ridge scaled alike (relative grid): the same fit
    assert summary["nt"]["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-12)
    assert summary["accuracy_difference"] < 1e-12
    assert summary["nt"]["own_predictor_accuracy"] == 1.0
    summary.update(when="now", machine="cpu", seed=0)
    text = bench.report(summary)
    assert f"{row['test_accuracy']:.2%}" in text and "1.00e-03" in text


def test_a_run_without_a_peer_environment_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path)])
    assert "--nt-venv" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
