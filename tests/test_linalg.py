"""Tests for jaxntk.linalg and ntk_predict's traced and matrix-free routes: values against dense
numpy/scipy in float64 (eigh, solve, expm), the budget errors before any work."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jaxntk as jn
from jaxntk import linalg, ntk, predict

N = 24


def psd(n=N, rank=None, seed=0):
    """A PSD matrix with eigenvalues spread over four decades (rank-deficient if rank < n)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.logspace(2, -2, n)
    if rank is not None:
        values[rank:] = 0.0
    return (q * values) @ q.T


def forms(k, tmp_path):
    """The kernel as a jax array, a numpy memmap and a callable (with its n)."""
    path = tmp_path / "k.npy"
    np.save(path, k)
    memmap = np.load(path, mmap_mode="r")
    dense = jnp.asarray(k)
    return [(dense, None), (memmap, None), (lambda v: dense @ v, k.shape[0])]


def mlp():
    def f(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"w1": jax.random.normal(k1, (4, 16)) / 2, "w2": jax.random.normal(k2, (16, 3)) / 4}
    x = jax.random.normal(k3, (12, 4))
    return f, params, x


def dense_ntk(f, params, x1, x2, traced):
    """K as a float64 matrix from explicit Jacobians: (n1·c, n2·c), or traced (n1, n2)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    j1, j2 = (np.asarray(jax.jacrev(lambda w, x=x: f(unravel(w), x))(flat)) for x in (x1, x2))
    if traced:
        return np.einsum("iap,jap->ij", j1, j2) / j1.shape[1]
    return j1.reshape(-1, j1.shape[-1]) @ j2.reshape(-1, j2.shape[-1]).T


def test_solve_by_cg_and_cholesky_is_numpy_solve_on_every_form(x64, tmp_path):
    k = psd(rank=30)  # singular: only the ridge makes it invertible
    b = np.random.default_rng(1).standard_normal((N, 3))
    expected = np.linalg.solve(k + 0.1 * np.eye(N), b)
    for form, n in forms(k, tmp_path):
        x, info = linalg.solve(form, b, ridge=0.1, n=n, tol=1e-12, return_info=True)
        np.testing.assert_allclose(x, expected, rtol=1e-9)
        assert 0 < info.iterations <= 10 * N and info.residual < 1e-11
    for form, _ in forms(k, tmp_path)[:2]:
        x = linalg.solve(form, b[:, 0], ridge=0.1, method="cholesky")
        np.testing.assert_allclose(x, expected[:, 0], rtol=1e-10)


def test_matrix_function_is_scipy_expm_and_the_inverse(x64, tmp_path):
    k = psd()
    b = np.random.default_rng(2).standard_normal((N, 2))
    decay = scipy.linalg.expm(-0.05 * k) @ b
    inverse = np.linalg.solve(k + 0.5 * np.eye(N), b)
    for form, n in forms(k, tmp_path):
        got, info = linalg.matrix_function(
            form,
            b,
            [lambda lam: jnp.exp(-0.05 * lam), lambda lam: 1 / (lam + 0.5)],
            n=n,
            tol=1e-13,
            return_info=True,
        )
        np.testing.assert_allclose(got[0], decay, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[1], inverse, rtol=1e-10)
        assert info.iterations <= N


def test_lanczos_basis_is_orthonormal_and_reproduces_the_spectrum(x64):
    k = psd(n=12)
    basis = linalg.lanczos(k, np.ones(12), 12)
    q = np.asarray(basis.q[:, :, 0])
    np.testing.assert_allclose(q @ q.T, np.eye(12), atol=1e-10)
    a, b = np.asarray(basis.alpha[:, 0]), np.asarray(basis.beta[:, 0])
    t = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    np.testing.assert_allclose(q @ k @ q.T, t, atol=1e-10)
    np.testing.assert_allclose(np.linalg.eigvalsh(t), np.linalg.eigvalsh(k), rtol=1e-9)


def test_top_eigh_is_numpy_eigh(x64, tmp_path):
    k = psd()
    values, vectors = np.linalg.eigh(k)
    values, vectors = values[::-1][:5], vectors[:, ::-1][:, :5]
    for form, n in forms(k, tmp_path):
        got, u, info = linalg.top_eigh(form, 5, n=n, tol=1e-10, return_info=True)
        np.testing.assert_allclose(got, values, rtol=1e-9)
        np.testing.assert_allclose(np.abs(np.asarray(u).T @ vectors), np.eye(5), atol=1e-7)
        assert info.error <= 1e-10


@pytest.mark.slow
def test_trace_exact_for_matrices_and_the_ntk_operator_estimated_for_a_callable(x64):
    k = psd()
    assert float(linalg.trace(k)) == pytest.approx(np.trace(k), rel=1e-12)
    estimate = linalg.trace(lambda v: jnp.asarray(k) @ v, n=N, probes=4000)
    assert float(estimate) == pytest.approx(np.trace(k), rel=0.1)
    f, params, x = mlp()
    for traced in (False, True):
        op = linalg.ntk_operator(f, params, x, trace_axes=(-1,) if traced else ())
        expected = np.trace(dense_ntk(f, params, x, x, traced))
        assert float(linalg.trace(op)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("mode", ["features", pytest.param("products", marks=pytest.mark.slow)])
def test_ntk_operator_is_the_dense_kernel_full_and_traced(x64, mode):
    f, params, x = mlp()
    x_test = x[:5] + 0.1
    for traced in (False, True):
        axes = (-1,) if traced else ()
        op = linalg.ntk_operator(f, params, x, trace_axes=axes, mode=mode, batch_size=5)
        k = dense_ntk(f, params, x, x, traced)
        v = np.random.default_rng(3).standard_normal((k.shape[0], 2))
        assert op.n == k.shape[0] and op.mode == mode
        np.testing.assert_allclose(op(jnp.asarray(v)), k @ v, rtol=1e-10)
        cross = dense_ntk(f, params, x_test, x, traced)
        np.testing.assert_allclose(op.cross(x_test)(jnp.asarray(v)), cross @ v, rtol=1e-10)
    engine = ntk.empirical_ntk(f, params, x)  # the engine's traced kernel, the same K
    np.testing.assert_allclose(engine, dense_ntk(f, params, x, x, True), rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("trace_axes", [(), (-1,)])
@pytest.mark.parametrize("flow", [False, True])
def test_ntk_predict_eigh_and_lanczos_are_the_dense_dynamics(x64, trace_axes, flow):
    f, params, x = mlp()
    x_test, y = x[:5] + 0.1, jnp.sin(x[:, :3])
    traced = bool(trace_axes)
    k, k_test = (dense_ntk(f, params, a, x, traced) for a in (x, x_test))

    def cols(a):
        a = np.asarray(a)
        return a.reshape(a.shape[0], -1) if traced else a.reshape(-1, 1)

    r0, f0_test = cols(f(params, x) - y), cols(f(params, x_test))
    lr, ridge, a = 0.7, 0.05, 2 * 0.7 / y.size
    steps = [0.5, 20.0, math.inf] if flow else [0, 3, 50, math.inf]
    big = k + ridge * np.eye(k.shape[0])
    for method in predict.METHODS:
        out = jn.ntk_predict(
            f,
            params,
            x,
            y,
            x_test,
            steps=steps,
            lr=lr,
            flow=flow,
            trace_axes=trace_axes,
            method=method,
            ridge=ridge,
            tol=1e-12,
        )
        for i, t in enumerate(steps):
            if math.isinf(t):
                decay = np.zeros_like(big)
            elif flow:
                decay = scipy.linalg.expm(-a * t * big)
            else:
                decay = np.linalg.matrix_power(np.eye(len(big)) - a * big, int(t))
            train = cols(y) + decay @ r0
            test = f0_test - k_test @ np.linalg.solve(big, r0 - decay @ r0)
            np.testing.assert_allclose(cols(out.train[i]), train, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(cols(out.test[i]), test, rtol=1e-9, atol=1e-12)


def test_ntk_predict_methods_agree_in_float32():
    f, params, x = mlp()
    y = jnp.sin(x[:, :3])
    outs = [
        jn.ntk_predict(
            f,
            params,
            x,
            y,
            x[:4],
            steps=[10.0, math.inf],
            flow=True,
            trace_axes=(-1,),
            ridge=0.1,
            method=method,
        )
        for method in predict.METHODS
    ]
    for out in outs[1:]:
        np.testing.assert_allclose(out.train, outs[0].train, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.test, outs[0].test, rtol=1e-4, atol=1e-5)


def test_ntk_predict_over_the_budget_raises_before_any_kernel_work(monkeypatch):
    f, params, x = mlp()
    y = jnp.zeros((12, 3))

    def no_kernel(*args, **kwargs):
        raise AssertionError("the kernel was computed")

    monkeypatch.setattr(ntk, "_kernel", no_kernel)
    with pytest.raises(ValueError, match="memory_budget") as err:
        jn.ntk_predict(f, params, x, y, steps=[math.inf], memory_budget=10_000)
    message = str(err.value)
    assert "36 × 36" in message and "N = n·|out| = 36" in message
    assert "trace_axes" in message and 'method="matrix_free"' in message and "memmap" in message
    # the 71 GB case's arithmetic: n = 4000, 10 outputs, full kernel: 3 · 40000² float32
    assert linalg.kernel_bytes(40000, copies=3) == 19_200_000_000


def test_budget_errors_of_solve_and_ntk_operator():
    k = np.eye(30, dtype=np.float32)
    with pytest.raises(ValueError, match="memory_budget"):
        linalg.solve(k, np.ones(30), method="cholesky", memory_budget=1000)
    f, params, x = mlp()
    with pytest.raises(ValueError, match=r"memory_budget.*products"):
        linalg.ntk_operator(f, params, x, mode="features", memory_budget=1000)
    assert linalg.ntk_operator(f, params, x, memory_budget=1000).mode == "products"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda k: linalg.solve(k, np.ones(N), method="lu"), ValueError, "unknown method"),
        (lambda k: linalg.solve(k, np.ones(N), ridge=-1.0), ValueError, "ridge"),
        (lambda k: linalg.solve(k, np.ones(N + 1)), ValueError, "b must have shape"),
        (lambda k: linalg.solve(k[:3], np.ones(N)), ValueError, "square"),
        (lambda k: linalg.solve("k", np.ones(N)), TypeError, "k must be"),
        (lambda k: linalg.solve(lambda v: v, np.ones(N)), TypeError, "n must be an int"),
        (lambda k: linalg.top_eigh(k, N + 1), ValueError, "num must be"),
        (lambda k: linalg.lanczos(k, np.ones(N), 0), ValueError, "iters must be"),
        (lambda k: linalg.matrix_function(k, np.ones(N), 3), TypeError, "fns"),
        (lambda k: linalg.matrix_function(k, np.ones(N), jnp.exp, tol=2.0), ValueError, "tol"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call(np.eye(N, dtype=np.float32))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "qr"}, ValueError, "unknown method"),
        ({"ridge": -0.1}, ValueError, "ridge"),
        ({"trace_axes": (0,)}, ValueError, "trace_axes"),
        ({"trace_axes": 1}, TypeError, "trace_axes"),
        ({"method": "matrix_free", "max_iters": 0}, ValueError, "max_iters"),
    ],
)
def test_ntk_predict_bad_arguments_are_named_before_any_work(kwargs, error, match, monkeypatch):
    f, params, x = mlp()
    monkeypatch.setattr(predict, "_ntk_predict", None)  # nothing may compile
    with pytest.raises(error, match=match):
        jn.ntk_predict(f, params, x, jnp.zeros((12, 3)), steps=[1], **kwargs)


def test_top_eigh_of_a_low_rank_kernel_keeps_its_basis_orthonormal(x64):
    """Rank 8 < n: after the first products the Krylov space is invariant and K's next block is
    rounding noise; the basis must stay orthonormal for the Ritz values to be the eigenvalues."""
    a = np.random.default_rng(3).normal(size=(60, 8))
    k = a @ a.T
    want = np.linalg.eigvalsh(k)[::-1][:4]
    values, vectors, info = linalg.top_eigh(jnp.asarray(k), 4, tol=1e-12, return_info=True)
    np.testing.assert_allclose(np.asarray(values), want, rtol=1e-12)
    assert info.error < 1e-10
    u = np.asarray(vectors)
    np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(k @ u, u * np.asarray(values)[None, :], atol=1e-9 * want[0])
