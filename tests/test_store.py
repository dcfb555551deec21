"""jaxntk.store: `empirical_ntk(..., output=folder)` writes a kernel store that equals the kernel
in memory bit for bit, resumes after a kill (SIGKILL, several processes), refuses other arguments
and damaged rows; `jaxntk.linalg` analyses it streamed, against numpy's dense answers."""

import json
import os
import re
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import linalg
from jaxntk.store import KernelStore

N, N2, BLOCK = 23, 13, 5
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3,), strides=(2,))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def model():
    cnn = CNN()
    x = jax.random.normal(jax.random.PRNGKey(0), (N, 8, 1))
    x2 = jax.random.normal(jax.random.PRNGKey(2), (N2, 8, 1))
    return cnn.apply, cnn.init(jax.random.PRNGKey(1), x), x, x2


CASES = {
    "traced": dict(),
    "full outputs": dict(trace_axes=()),
    "x2 traced": dict(second=True),
    "x2 full outputs": dict(second=True, trace_axes=()),
    "diagonal batch": dict(diagonal_axes=(0,), trace_axes=()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_store_equals_the_kernel_in_memory_bit_for_bit(model, tmp_path, case):
    apply, params, x, x2 = model
    kwargs = dict(CASES[case])
    second = x2 if kwargs.pop("second", False) else None
    memory = np.asarray(jn.empirical_ntk(apply, params, x, second, batch_size=BLOCK, **kwargs))
    kept = jn.empirical_ntk(
        apply, params, x, second, batch_size=BLOCK, output=tmp_path / "k", **kwargs
    )
    assert isinstance(kept, KernelStore) and kept.complete
    assert kept.shape == memory.shape and kept.dtype == memory.dtype
    assert np.array_equal(np.asarray(kept.array()), memory)
    assert np.array_equal(kept.rows(3, 9), memory[3:9])
    assert kept.verify() == []
    manifest = json.loads((tmp_path / "k" / "manifest.json").read_text())
    assert manifest["block"] == BLOCK and manifest["shape"] == list(memory.shape)


def test_a_resumed_store_computes_only_the_missing_rows(model, tmp_path, monkeypatch):
    apply, params, x, _ = model
    memory = np.asarray(jn.empirical_ntk(apply, params, x, batch_size=BLOCK))
    path = tmp_path / "k"
    jn.empirical_ntk(apply, params, x, batch_size=BLOCK, output=path)
    for row in (1, 3):  # as if killed before these rows were recorded
        (path / "rows" / f"{row:06d}.json").unlink()
    offset = json.loads((path / "manifest.json").read_text())["offset"]
    with open(path / "kernel.npy", "r+b") as fh:  # and row 1's bytes half written
        fh.seek(offset + (1 * BLOCK * N + BLOCK) * 4)
        fh.write(b"\0" * 40)
    written = []
    from jaxntk import store

    original = store._Writer.write_row

    def counted(self, i, strip):
        written.append(i)
        return original(self, i, strip)

    monkeypatch.setattr(store._Writer, "write_row", counted)
    kept = jn.empirical_ntk(apply, params, x, output=path)  # block size and method from the store
    assert written == [1, 3]
    assert np.array_equal(np.asarray(kept.array()), memory)


def test_other_arguments_or_a_damaged_row_are_refused(model, tmp_path):
    apply, params, x, _ = model
    path = tmp_path / "k"
    kept = jn.empirical_ntk(apply, params, x, batch_size=BLOCK, output=path)
    with pytest.raises(ValueError, match=r"computed from other arguments \(they differ in: x1"):
        jn.empirical_ntk(apply, params, x[:-1], batch_size=BLOCK, output=path)
    other = jax.tree.map(lambda a: a + 1, params)
    with pytest.raises(ValueError, match=r"differ in: params"):
        jn.empirical_ntk(apply, other, x, batch_size=BLOCK, output=path)
    with pytest.raises(ValueError, match=r"differ in: .*trace_axes"):
        jn.empirical_ntk(apply, params, x, batch_size=BLOCK, output=path, trace_axes=())
    with pytest.raises(ValueError, match=r"batch_size 5; got method='auto', batch_size=4"):
        jn.empirical_ntk(apply, params, x, batch_size=4, output=path)
    # one entry of block row 2 changed on disk: its checksum no longer matches
    offset = json.loads((path / "manifest.json").read_text())["offset"]
    with open(path / "kernel.npy", "r+b") as fh:
        fh.seek(offset + (2 * BLOCK * N + 2 * BLOCK) * 4)
        fh.write(np.float32(123.0).tobytes())
    assert kept.verify() == [2]
    with pytest.raises(ValueError, match=r"damaged: block rows \[2\].*rows"):
        jn.empirical_ntk(apply, params, x, output=path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no kernel store"):
        jn.empirical_ntk(apply, params, x, output=busy)


def test_an_unfinished_store_and_a_non_square_one_say_so(model, tmp_path):
    apply, params, x, _ = model
    path = tmp_path / "k"
    kept = jn.empirical_ntk(apply, params, x, batch_size=BLOCK, output=path)
    (path / "rows" / "000004.json").unlink()
    with pytest.raises(ValueError, match="not complete: 1 of 5 block rows missing"):
        KernelStore.open(path).array()
    assert kept.done == [0, 1, 2, 3]
    full = jn.empirical_ntk(apply, params, x, trace_axes=(), output=tmp_path / "full")
    with pytest.raises(ValueError, match=r"square \(N, N\) kernel"):
        linalg.top_eigh(full, 2)
    with pytest.raises(ValueError, match="no kernel store"):
        KernelStore.open(tmp_path / "nothing")


def test_progress_gives_throughput_and_time_left(model, tmp_path, capsys):
    apply, params, x, _ = model
    jn.empirical_ntk(apply, params, x, batch_size=BLOCK, output=tmp_path / "k", progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    pattern = (
        r"\[empirical_ntk\] block row (\d)/5  \w+  [\d.]+ s, [\d.e+]+ kernel entries/s, "
        r"~\d+ s left  \(store k, process 0\)"
    )
    assert [re.match(pattern, line).group(1) for line in lines] == ["1", "2", "3", "4", "5"]


# ----------------------------------------------------------------- analysis of a stored kernel


@pytest.fixture(scope="module")
def stored(model, tmp_path_factory):
    """A float64 traced kernel on disk, and the same kernel in memory (numpy)."""
    apply, params, x, _ = model
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(jnp.concatenate([x, -x, 0.5 * x]), jnp.float64)  # 69 inputs
        path = tmp_path_factory.mktemp("analysis") / "k"
        kept = jn.empirical_ntk(apply, p64, x64, batch_size=8, output=path)
        dense = np.asarray(kept.array(), np.float64)
    return kept, dense


def test_a_stored_kernel_streams_its_products_and_diagonal(stored):
    kept, dense = stored
    v = np.random.default_rng(0).normal(size=(kept.n, 3))
    np.testing.assert_allclose(kept.matmat(v), dense @ v, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(kept.diagonal(), np.diag(dense))
    tiles = list(kept.tiles(tile_bytes=10 * kept.n * 8))
    assert [start for start, _ in tiles] == list(range(0, kept.n, 10))
    np.testing.assert_array_equal(np.concatenate([t for _, t in tiles]), dense)
    assert kept.frobenius_sq() == pytest.approx(np.sum(dense**2), rel=1e-13)


def test_linear_algebra_on_a_stored_kernel_against_numpy(stored):
    kept, dense = stored
    with jax.enable_x64(True):
        values, vectors = linalg.top_eigh(kept, 4, tol=1e-9)
        expected_values, expected_vectors = np.linalg.eigh(dense)
        np.testing.assert_allclose(values, expected_values[::-1][:4], rtol=1e-8)
        overlap = np.abs(np.sum(np.asarray(vectors) * expected_vectors[:, ::-1][:, :4], axis=0))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-6)
        b = np.random.default_rng(1).normal(size=(kept.n, 2))
        ridge = 1e-2 * np.trace(dense) / kept.n
        x = linalg.solve(kept, b, ridge=ridge, method="cg", tol=1e-12)
        np.testing.assert_allclose(x, np.linalg.solve(dense + ridge * np.eye(kept.n), b), rtol=1e-8)
        assert float(linalg.trace(kept)) == pytest.approx(np.trace(dense), rel=1e-12)
        eig = np.linalg.eigvalsh(dense)
        rank = linalg.effective_rank(kept)
        assert rank == pytest.approx(eig.sum() ** 2 / np.sum(eig**2), rel=1e-12)
        y = np.random.default_rng(2).normal(size=(kept.n, 3))
        h = np.eye(kept.n) - 1.0 / kept.n
        kc, yc = h @ dense @ h, h @ y
        want = np.sum(kc * (yc @ yc.T)) / (np.linalg.norm(kc) * np.linalg.norm(yc @ yc.T))
        assert linalg.alignment(kept, y) == pytest.approx(want, rel=1e-10)


def test_the_spectral_density_is_a_quadrature_of_the_spectrum():
    # a diagonal K with Rademacher probes: zᵀ f(K) z = Σ f(λ_i) exactly, and Lanczos with as
    # many steps as distinct eigenvalues is exact for polynomials of degree 2m − 1
    with jax.enable_x64(True):
        spectrum = np.array([5.0, 3.0, 3.0, 1.0, 0.5, 0.5, 0.5, 0.1])
        sd = linalg.spectral_density(np.diag(spectrum), probes=3, iters=5)
        nodes, weights = np.asarray(sd.nodes), np.asarray(sd.weights)
        for power in (1, 2, 3, 5):
            estimates = spectrum.size * np.sum(weights * nodes**power, axis=1)
            np.testing.assert_allclose(estimates, np.sum(spectrum**power), rtol=1e-10)
        grid, density = np.asarray(sd.grid), np.asarray(sd.density)
        assert np.trapezoid(density, grid) == pytest.approx(spectrum.size, rel=0.05)
        # half the eigenvalues (4 of 8) lie below 0.75: the smoothed density's mass there
        below = grid < 0.75 + 1e-12
        assert np.trapezoid(density[below], grid[below]) == pytest.approx(4, abs=0.5)


# ------------------------------------------------------------- several processes, SIGKILL


@pytest.mark.slow
def test_two_processes_killed_twice_resume_to_the_kernel_in_memory(tmp_path):
    # benchmarks/kernel_store.py at a tiny size: 2 processes on jax.distributed write the store,
    # are killed with SIGKILL twice and resumed; the reference is the kernel in memory
    sys.path.insert(0, str(BENCHMARKS))
    import kernel_store

    argv = ["--out", str(tmp_path), "--n", "700", "--n-ref", "700", "--processes", "2"]
    argv += ["--kill-at", "0.2", "0.5", "--skip-eigh", "--skip-rates"]
    # the parent makes the data with flax, as a user's script would (its children run apart)
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        summary = kernel_store.main(argv)
    launches = summary["launches"]
    assert [row["killed"] for row in launches] == [True, True, False]
    assert [row["codes"] for row in launches[:2]] == [[-9, -9], [-9, -9]]
    assert launches[-1]["codes"] == [0, 0]
    assert summary["bitwise"] == {"equal": True, "max_abs_diff": 0.0, "n_ref": 700}
    kept = KernelStore.open(tmp_path / "store-700")
    assert kept.complete and kept.verify() == []
    assert os.path.exists(tmp_path / "kernel_store.md")
