"""Tests for jaxntk.targets: orthonormal polynomials, target parts, the paper's targets, tasks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import hermite_e
from scipy import special

from jaxntk import targets as tg

KEY = jax.random.PRNGKey(0)
D = 8  # one input dimension for most tests: every new shape costs a compilation
MC_SAMPLES = 200_000
N_POINTS = 500
DEGREES = range(9)


def _gram(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_q w_q p_j(z_q) p_k(z_q) for values (K, Q) and weights (Q,)."""
    return (values * weights[None, :]) @ values.T


def _assert_mean(samples: np.ndarray, expected: float, what: str) -> None:
    """|sample mean − expected| within 5 standard errors (from the sample) plus float32 rounding."""
    samples = np.asarray(samples, dtype=np.float64)
    se = samples.std() / math.sqrt(samples.size)
    err = abs(samples.mean() - expected)
    assert err <= 5 * se + 1e-5 * max(1.0, abs(expected)), (what, samples.mean(), expected, se)


def _assert_moments(target: tg.Target, key: jax.Array, n: int = MC_SAMPLES) -> None:
    """Monte Carlo: E[f_i²] = stated variance, E[f_i] = stated mean, and E[f_i f_j] = E f_i E f_j
    for parts of different degree."""
    x = tg.sample_inputs(key, n, target.d, target.distribution)
    values = np.asarray(target.parts(x), dtype=np.float64)
    variances = np.asarray(target.variances, dtype=np.float64)
    means = np.asarray(target.means, dtype=np.float64)
    for i, name in enumerate(target.names):
        _assert_mean(values[i] ** 2, variances[i], f"E[{name}²]")
        _assert_mean(values[i], means[i], f"E[{name}]")
        for j in range(i):
            if target.degrees[i] != target.degrees[j]:
                _assert_mean(values[i] * values[j], means[i] * means[j], f"E[{name}·{j}]")


# ------------------------------------------------------------------------------------------------
# Polynomials


def test_hermite_orthonormal_by_quadrature(x64):
    nodes, weights = hermite_e.hermegauss(30)
    weights = weights / math.sqrt(2 * math.pi)
    values = np.stack([np.asarray(tg.hermite(k, jnp.asarray(nodes))) for k in DEGREES])
    np.testing.assert_allclose(_gram(values, weights), np.eye(len(DEGREES)), atol=1e-12)
    for k in DEGREES:
        he_k = hermite_e.hermeval(nodes, np.eye(k + 1)[k]) / math.sqrt(math.factorial(k))
        np.testing.assert_allclose(values[k], he_k, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3, 5, 20, 100])
def test_gegenbauer_orthonormal_under_sphere_marginal(x64, d):
    # t = v·x/√d has density ∝ (1 − t²)^{(d−3)/2}: Gauss-Jacobi with α = β = (d − 3)/2.
    alpha = (d - 3) / 2
    nodes, weights = special.roots_jacobi(30, alpha, alpha)
    weights = weights / weights.sum()
    values = np.stack([np.asarray(tg.gegenbauer(k, jnp.asarray(nodes), d)) for k in DEGREES])
    np.testing.assert_allclose(_gram(values, weights), np.eye(len(DEGREES)), atol=1e-10)


@pytest.mark.parametrize("d", [2, 3, 7, 50])
def test_legendre_matches_scipy_and_scales_gegenbauer(x64, d):
    t = jnp.linspace(-1.0, 1.0, 41)
    for k in DEGREES:
        p_k = np.asarray(tg.legendre(k, t, d))
        if d == 2:
            expected = np.cos(k * np.arccos(np.asarray(t)))
        else:
            lam = (d - 2) / 2
            expected = special.eval_gegenbauer(k, lam, np.asarray(t)) / special.eval_gegenbauer(
                k, lam, 1.0
            )
        np.testing.assert_allclose(p_k, expected, atol=1e-12)
        assert p_k[-1] == pytest.approx(1.0, abs=1e-12)
        q_k = np.asarray(tg.gegenbauer(k, t, d))
        np.testing.assert_allclose(q_k, math.sqrt(tg.num_harmonics(d, k)) * p_k, rtol=1e-10)


def test_gegenbauer_tends_to_hermite_in_high_dimension(x64):
    s = jnp.linspace(-3.0, 3.0, 13)
    d = 10**6
    for k in DEGREES:
        np.testing.assert_allclose(
            tg.gegenbauer(k, s / math.sqrt(d), d), tg.hermite(k, s), atol=1e-3 * (1 + k)
        )


def test_gegenbauer_large_degree_stays_finite():
    d, k = 1000, 40
    q = tg.gegenbauer(k, jnp.linspace(-3.0, 3.0, 7) / math.sqrt(d), d)
    assert bool(jnp.all(jnp.isfinite(q)))


def test_num_harmonics():
    assert [tg.num_harmonics(3, k) for k in range(6)] == [1, 3, 5, 7, 9, 11]
    assert [tg.num_harmonics(2, k) for k in range(4)] == [1, 2, 2, 2]
    assert [tg.num_harmonics(1, k) for k in range(4)] == [1, 1, 0, 0]
    for d in (4, 10, 100):
        assert tg.num_harmonics(d, 1) == d
        assert tg.num_harmonics(d, 2) == (d + 2) * (d - 1) // 2
        for top in range(6):
            # polynomials of degree ≤ top on the sphere = homogeneous of degree top and top − 1
            total = sum(tg.num_harmonics(d, k) for k in range(top + 1))
            expected = math.comb(d + top - 1, top) + (math.comb(d + top - 2, top - 1) if top else 0)
            assert total == expected


# ------------------------------------------------------------------------------------------------
# Inputs and target parts


@pytest.mark.parametrize("d", [1, 100])
def test_sphere_samples_have_norm_sqrt_d(d):
    x = tg.sample_inputs(KEY, 1000, d, "sphere")
    assert x.shape == (1000, d)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), math.sqrt(d), rtol=1e-5)


@pytest.mark.parametrize("distribution", tg.DISTRIBUTIONS)
@pytest.mark.slow
def test_parts_have_stated_variance_and_are_orthogonal(distribution):
    d = D
    keys = jax.random.split(KEY, 5)
    target = tg.make_target(
        {
            "constant": tg.dense_part(keys[0], d, 0, 0.2, distribution),
            "dense_linear": tg.dense_part(keys[1], d, 1, 0.3, distribution),
            "dense_quadratic": tg.dense_part(keys[2], d, 2, 0.5, distribution),
            "sparse_cubic": tg.sparse_part(keys[3], d, 3, 2, 0.4, distribution),
            "dense_quartic": tg.dense_part(keys[4], d, 4, 0.6, distribution),
        }
    )
    # E[f_i²] from each part's directions and coefficients, by the formula in numpy (not by the
    # library's own normalisation, which would agree with any mistake of its own)
    np.testing.assert_allclose(
        [_mean_square_by_formula(p) for p in target.components],
        [0.2, 0.3, 0.5, 0.4, 0.6],
        rtol=1e-5,
    )
    np.testing.assert_allclose(target.means, [math.sqrt(0.2), 0, 0, 0, 0], atol=1e-7)
    assert target.degrees == (0, 1, 2, 3, 4)
    _assert_moments(target, jax.random.PRNGKey(1))


def _mean_square_by_formula(part: tg.TargetPart) -> float:
    """E[f²] = b_total² + cᵀ G c with G_jl = ρ_jl^k (Gaussian) or the Legendre polynomial of
    dimension d, P_k(ρ) = C_k^{(d−2)/2}(ρ)/C_k^{(d−2)/2}(1) from scipy (sphere)."""
    v = np.asarray(part.directions, np.float64)
    c = np.asarray(part.coefficients, np.float64)
    b = float(part.offset)
    if part.degree == 0:
        return (b + c.sum()) ** 2
    rho = np.clip(v @ v.T, -1.0, 1.0)
    if part.distribution == "gaussian":
        gram = rho**part.degree
    else:
        lam = (part.d - 2) / 2
        gram = special.eval_gegenbauer(part.degree, lam, rho) / special.eval_gegenbauer(
            part.degree, lam, 1.0
        )
    return b**2 + c @ gram @ c


def _quadrature_3d(distribution: str, points: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (Q, 3) and weights (Q,) exact for E[p(x)], p a polynomial of degree < 2·points
    (Gaussian: tensor Gauss-Hermite; sphere of radius √3: Gauss-Legendre in cos θ times a
    uniform grid in φ)."""
    if distribution == "gaussian":
        z, w = hermite_e.hermegauss(points)
        w = w / math.sqrt(2 * math.pi)
        grid = np.stack(np.meshgrid(z, z, z, indexing="ij"), axis=-1).reshape(-1, 3)
        weights = np.einsum("i,j,k->ijk", w, w, w).reshape(-1)
        return grid, weights
    t, wt = np.polynomial.legendre.leggauss(points)
    phi = 2 * np.pi * np.arange(2 * points) / (2 * points)
    tt, pp = np.meshgrid(t, phi, indexing="ij")
    s = np.sqrt(1 - tt**2)
    grid = math.sqrt(3) * np.stack([s * np.cos(pp), s * np.sin(pp), tt], axis=-1).reshape(-1, 3)
    weights = np.repeat(wt / 2, 2 * points) / (2 * points)
    return grid, weights


@pytest.mark.parametrize("distribution", tg.DISTRIBUTIONS)
@pytest.mark.slow
def test_normalised_parts_have_their_variance_by_quadrature(x64, distribution):
    """E[f²] of dense and sparse parts of degree 1..4 in d = 3, by a quadrature rule exact for
    these polynomials, evaluating the part pointwise: the normalisation, checked from outside."""
    x, w = _quadrature_3d(distribution)
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    xj = jnp.asarray(x)
    for degree in (1, 2, 3, 4):
        for part in (
            tg.dense_part(KEY, 3, degree, 0.7, distribution, dtype=jnp.float64),
            tg.sparse_part(KEY, 3, degree, 3, 0.7, distribution, dtype=jnp.float64),
        ):
            values = np.asarray(part(xj))
            assert w @ values**2 == pytest.approx(0.7, rel=1e-9), (degree, distribution)
            assert abs(w @ values) < 1e-9
    target = tg.paper_target(KEY, 3, distribution, dtype=jnp.float64)
    np.testing.assert_allclose((np.asarray(target.parts(xj)) ** 2) @ w, [1 / 3, 2 / 3], rtol=1e-9)


@pytest.mark.parametrize(("d", "degree"), [(3, 2), (D, 4), (D, 3)])
def test_sparse_part_on_sphere_accounts_for_correlated_directions(d, degree):
    # r = d orthonormal directions: on the sphere q_p(β_s·x/√d) are correlated for even p.
    part = tg.sparse_part(jax.random.PRNGKey(d), d, degree, d, 1.0, "sphere")
    target = tg.make_target({"sparse": part})
    assert _mean_square_by_formula(part) == pytest.approx(1.0, rel=1e-5)
    _assert_moments(target, jax.random.PRNGKey(2))


def test_sparse_part_directions_are_orthonormal():
    part = tg.sparse_part(KEY, D, 3, 5, 1.0)
    np.testing.assert_allclose(part.directions @ part.directions.T, np.eye(5), atol=1e-6)


def test_part_evaluates_its_formula():
    d = D
    part = tg.dense_part(KEY, d, 3, 1.0)
    assert part.directions.shape == (2 * d, d)
    x = tg.sample_inputs(jax.random.PRNGKey(3), N_POINTS, d)
    z = np.asarray(x) @ np.asarray(part.directions).T
    expected = ((z**3 - 3 * z) / math.sqrt(6)) @ np.asarray(part.coefficients)
    np.testing.assert_allclose(part(x), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# The paper's targets


def test_paper_target_pointwise_and_variances():
    d = D
    target = tg.paper_target(KEY, d)
    assert target.names == ("linear", "quadratic")
    np.testing.assert_allclose(target.variances, [1 / 3, 2 / 3], rtol=1e-5)
    beta = target.components[0].directions[0]
    np.testing.assert_allclose(jnp.linalg.norm(beta), 1.0, rtol=1e-6)
    x = tg.sample_inputs(jax.random.PRNGKey(4), N_POINTS, d)
    z = x @ beta
    np.testing.assert_allclose(target(x), (z**2 - 1 + z) / math.sqrt(3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target.parts(x)[0], z / math.sqrt(3), rtol=1e-5, atol=1e-6)


def test_paper_target_on_sphere_pointwise():
    d = D
    target = tg.paper_target(KEY, d, "sphere")
    np.testing.assert_allclose(target.variances, [1 / 3, 2 / 3], rtol=1e-5)
    x = tg.sample_inputs(jax.random.PRNGKey(5), N_POINTS, d, "sphere")
    z = x @ target.components[0].directions[0]
    quadratic = math.sqrt(2 / 3 * tg.num_harmonics(d, 2)) * (z**2 - 1) / (d - 1)
    np.testing.assert_allclose(target.parts(x)[0], z / math.sqrt(3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target.parts(x)[1], quadratic, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("distribution", tg.DISTRIBUTIONS)
def test_paper_target_moments(distribution):
    _assert_moments(tg.paper_target(KEY, D, distribution), jax.random.PRNGKey(6))


@pytest.mark.parametrize("d", [7, D])
def test_mlp_target_literal(d):
    target = tg.mlp_target(KEY, d)
    assert target.names == ("dense_quadratic", "sparse_cubic")
    m = d - d // 2
    np.testing.assert_allclose(target.variances, [(m**2 + 2 * m) / 675, 1.0], rtol=1e-5)
    np.testing.assert_allclose(target.means, [m / math.sqrt(675), 0.0], atol=1e-6)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((N_POINTS, d)), jnp.float32)
    a = np.diag((np.arange(1, d + 1) > d / 2).astype(np.float32))
    z = x @ target.components[1].directions[0]
    quad = jnp.einsum("ni,ij,nj->n", x, a, x) / math.sqrt(675)
    np.testing.assert_allclose(target.parts(x)[0], quad, rtol=1e-5, atol=1e-5)
    cubic = (z**3 - 3 * z) / math.sqrt(6)
    np.testing.assert_allclose(target(x), quad + cubic, rtol=1e-4, atol=1e-4)
    if d == D:
        _assert_moments(target, jax.random.PRNGKey(8))


# ------------------------------------------------------------------------------------------------
# Tasks


def test_make_task_shapes_and_labels():
    target = tg.paper_target(KEY, D)
    task = tg.make_task(jax.random.PRNGKey(9), target, n=64, n_test=N_POINTS)
    assert (task.n, task.n_test, task.d) == (64, N_POINTS, D)
    assert task.x_train.shape == (64, D) and task.x_test.shape == (N_POINTS, D)
    assert task.parts_train.shape == (2, 64) and task.parts_test.shape == (2, N_POINTS)
    assert task.part_names == ("linear", "quadratic") and task.distribution == "gaussian"
    beta = np.asarray(target.components[0].directions[0], np.float64)
    for x, y, parts in (
        (task.x_train, task.y_train, task.parts_train),
        (task.x_test, task.y_test, task.parts_test),
    ):
        z = np.asarray(x, np.float64) @ beta
        np.testing.assert_allclose(y, (z**2 - 1 + z) / math.sqrt(3), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(parts[0], z / math.sqrt(3), rtol=1e-5, atol=1e-5)
    assert not np.allclose(task.x_train, task.x_test[:64])


def test_make_task_noise_on_training_labels_only():
    target = tg.paper_target(KEY, D)
    task = tg.make_task(jax.random.PRNGKey(10), target, n=20_000, n_test=64, noise=0.5)
    residual = np.asarray(task.y_train - task.parts_train.sum(axis=0), dtype=np.float64)
    _assert_mean(residual**2, 0.25, "noise variance")
    np.testing.assert_allclose(task.y_test, task.parts_test.sum(axis=0), rtol=1e-6)


def test_make_task_sphere_and_float64(x64):
    target = tg.paper_target(KEY, D, "sphere", dtype=jnp.float64)
    task = tg.make_task(KEY, target, n=64, n_test=N_POINTS)
    assert task.distribution == "sphere" and task.x_train.dtype == jnp.float64
    assert task.y_train.dtype == jnp.float64
    np.testing.assert_allclose(jnp.linalg.norm(task.x_test, axis=1), math.sqrt(D), rtol=1e-12)


@pytest.mark.slow
def test_paper_task_is_a_pytree_that_vmaps_over_keys():
    tasks = jax.jit(jax.vmap(lambda k: tg.paper_task(k, D, 64, N_POINTS)))(jax.random.split(KEY, 3))
    assert tasks.x_train.shape == (3, 64, D) and tasks.parts_test.shape == (3, 2, N_POINTS)
    assert (tasks.n, tasks.n_test, tasks.d) == (64, N_POINTS, D)
    assert not np.allclose(tasks.y_test[0], tasks.y_test[1])


# ------------------------------------------------------------------------------------------------
# jit: one compilation per shape


def test_target_as_jit_argument_does_not_recompile():
    traces = []

    @jax.jit
    def evaluate(target, x):
        traces.append(None)
        return target(x), target.parts(x), target.variances

    x = tg.sample_inputs(KEY, 64, D, "sphere")
    for seed in (0, 1):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        target = tg.make_target(
            {
                "dense": tg.dense_part(k1, D, 2, 0.5, "sphere"),
                "sparse": tg.sparse_part(k2, D, 3, 2, 0.5, "sphere"),
            }
        )
        y, parts, _ = evaluate(target, x + seed)
        np.testing.assert_allclose(y, target(x + seed), rtol=1e-5, atol=1e-6)
        assert parts.shape == (2, 64)
    assert len(traces) == 1


def test_polynomials_and_builders_do_not_recompile():
    traces = []

    @jax.jit
    def polys(z):
        traces.append(None)
        return tg.hermite(5, z) + tg.gegenbauer(5, z / 10, 7) + tg.legendre(3, z / 10, 7)

    polys(jnp.ones(4))
    polys(jnp.zeros(4))
    assert len(traces) == 1

    task_fn = jax.jit(tg.paper_task, static_argnums=(1, 2, 3, 4))
    first = task_fn(jax.random.PRNGKey(0), D, 64, N_POINTS, "sphere")
    second = task_fn(jax.random.PRNGKey(1), D, 64, N_POINTS, "sphere")
    assert task_fn._cache_size() == 1
    assert not np.allclose(first.y_train, second.y_train)


# ------------------------------------------------------------------------------------------------
# Bad input


def _target():
    return tg.paper_target(KEY, 4)


def _part(d, distribution="gaussian"):
    """A degree-1 part built by hand (no random draws, so no compilation)."""
    return tg.TargetPart(
        jnp.ones((1, d)) / math.sqrt(d), jnp.ones(1), jnp.zeros(()), 1, distribution
    )


BAD_INPUTS = {
    "n<1": (lambda: tg.sample_inputs(KEY, 0, 3), ValueError, r"^n must be ≥ 1"),
    "d<1": (lambda: tg.sample_inputs(KEY, 3, 0), ValueError, r"^d must be ≥ 1"),
    "n float": (lambda: tg.sample_inputs(KEY, 2.0, 3), TypeError, r"^n must be an int"),
    "unknown distribution": (
        lambda: tg.sample_inputs(KEY, 3, 3, "cube"),
        ValueError,
        "unknown distribution",
    ),
    "task n<1": (lambda: tg.make_task(KEY, _target(), n=0, n_test=5), ValueError, r"^n must"),
    "task n_test<1": (
        lambda: tg.make_task(KEY, _target(), n=5, n_test=0),
        ValueError,
        r"^n_test must",
    ),
    "paper_task n_test<1": (lambda: tg.paper_task(KEY, 4, 5, 0), ValueError, r"^n_test must"),
    "negative noise": (
        lambda: tg.make_task(KEY, _target(), n=5, n_test=5, noise=-0.1),
        ValueError,
        r"^noise must",
    ),
    "distribution mismatch": (
        lambda: tg.make_task(KEY, _target(), n=5, n_test=5, distribution="sphere"),
        ValueError,
        "distribution 'sphere' does not match",
    ),
    "task unknown distribution": (
        lambda: tg.make_task(KEY, _target(), n=5, n_test=5, distribution="ball"),
        ValueError,
        "unknown distribution",
    ),
    "not a target": (lambda: tg.make_task(KEY, None, n=5, n_test=5), TypeError, r"^target must"),
    "negative variance": (lambda: tg.dense_part(KEY, 4, 2, -1.0), ValueError, r"^variance must"),
    "nan variance": (lambda: tg.dense_part(KEY, 4, 2, math.nan), ValueError, r"^variance must"),
    "sparse negative variance": (
        lambda: tg.sparse_part(KEY, 4, 2, 1, -1.0),
        ValueError,
        r"^variance must",
    ),
    "negative degree": (lambda: tg.dense_part(KEY, 4, -1, 1.0), ValueError, r"^degree must"),
    "sparse negative degree": (
        lambda: tg.sparse_part(KEY, 4, -1, 1, 1.0),
        ValueError,
        r"^degree must",
    ),
    "float degree": (lambda: tg.dense_part(KEY, 4, 1.5, 1.0), TypeError, r"^degree must"),
    "part unknown distribution": (
        lambda: tg.dense_part(KEY, 4, 1, 1.0, "ball"),
        ValueError,
        "unknown distribution",
    ),
    "paper unknown distribution": (
        lambda: tg.paper_target(KEY, 4, "ball"),
        ValueError,
        "unknown distribution",
    ),
    "sphere d=1": (lambda: tg.dense_part(KEY, 1, 1, 1.0, "sphere"), ValueError, r"^d must"),
    "num_directions<1": (
        lambda: tg.dense_part(KEY, 4, 1, 1.0, num_directions=0),
        ValueError,
        r"^num_directions must",
    ),
    "r>d": (lambda: tg.sparse_part(KEY, 4, 2, 5, 1.0), ValueError, r"^r must satisfy"),
    "r<1": (lambda: tg.sparse_part(KEY, 4, 2, 0, 1.0), ValueError, r"^r must"),
    "hermite k<0": (lambda: tg.hermite(-1, jnp.ones(3)), ValueError, r"^k must"),
    "hermite int z": (lambda: tg.hermite(2, jnp.ones(3, jnp.int32)), TypeError, r"^z must"),
    "gegenbauer d<2": (lambda: tg.gegenbauer(2, jnp.ones(3), 1), ValueError, r"^d must"),
    "legendre k<0": (lambda: tg.legendre(-2, jnp.ones(3), 3), ValueError, r"^k must"),
    "num_harmonics d<1": (lambda: tg.num_harmonics(0, 2), ValueError, r"^d must"),
    "x wrong d": (lambda: _target()(jnp.ones((3, 5))), ValueError, r"^x must have shape \(n, d\)"),
    "x 1-D": (lambda: _target()(jnp.ones(4)), ValueError, r"^x must have shape"),
    "x 3-D": (lambda: _target().parts(jnp.ones((2, 3, 4))), ValueError, r"^x must have shape"),
    "x int": (lambda: _target()(jnp.ones((3, 4), jnp.int32)), TypeError, r"^x must be a float"),
    "empty target": (lambda: tg.make_target({}), TypeError, r"^parts must"),
    "parts d mismatch": (
        lambda: tg.make_target({"a": _part(3), "b": _part(4)}),
        ValueError,
        r"^parts must share d",
    ),
    "parts distribution mismatch": (
        lambda: tg.make_target({"a": _part(3), "b": _part(3, "sphere")}),
        ValueError,
        r"^parts must share d and distribution",
    ),
    "part not a TargetPart": (
        lambda: tg.make_target({"a": jnp.ones(3)}),
        TypeError,
        r"must be a TargetPart",
    ),
    "part name not a str": (
        lambda: tg.make_target({1: _part(3)}),
        TypeError,
        r"^part names must be str",
    ),
    "variance a str": (
        lambda: tg.dense_part(KEY, 3, 2, "1.0"),
        TypeError,
        r"^variance must be a real number",
    ),
    "integer dtype": (
        lambda: tg.paper_target(KEY, 3, dtype=jnp.int32),
        TypeError,
        r"^dtype must be a float dtype",
    ),
    "num_harmonics k<0": (lambda: tg.num_harmonics(3, -1), ValueError, r"^k must"),
    "mlp d<1": (lambda: tg.mlp_target(KEY, 0), ValueError, r"^d must"),
    "legendre d<2": (lambda: tg.legendre(1, jnp.zeros(2), 1), ValueError, r"^d must be ≥ 2, got 1"),
    "harmonics up to d<1": (
        lambda: tg.num_harmonics_up_to(0, 2),
        ValueError,
        r"^d must be ≥ 1, got 0",
    ),
    "theorem k<1": (lambda: tg.theorem_target(KEY, 4, 0), ValueError, r"^k must be ≥ 1, got 0"),
    "part x wrong d": (
        lambda: _part(3)(jnp.ones((2, 4))),
        ValueError,
        r"with d = 3 \(the target part's input dimension\), got shape \(2, 4\)",
    ),
    "target x wrong d": (
        lambda: _target().parts(jnp.ones((2, 5))),
        ValueError,
        r"with d = 4 \(the target's input dimension\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises(case):
    fn, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        fn()


def test_mlp_target_keeps_the_dtype_it_is_given(x64):
    """float32 asked for while float64 is the default: every array of both parts is float32."""
    target = tg.mlp_target(KEY, 6, dtype=jnp.float32)
    for part in target.components:
        for array in (part.directions, part.coefficients, part.offset):
            assert array.dtype == jnp.float32


def test_task_from_arrays_defaults_to_gaussian_inputs():
    x = np.asarray(np.random.default_rng(0).standard_normal((6, 3)), np.float32)
    task = tg.Task.from_arrays(x, x[:, 0], x[:4], x[:4, 0])
    assert task.distribution == "gaussian" and task.part_names == ("y",)
    assert task.target is None and (task.n, task.n_test, task.d) == (6, 4, 3)


@pytest.mark.parametrize("builder", [tg.paper_target, tg.mlp_target])
def test_beta_is_uniform_on_the_unit_sphere(builder):
    """Over 2000 keys β has mean 0 and second moment I/d (a law, not one draw's formula)."""
    d, count = 6, 2000
    beta = jax.vmap(lambda k: builder(k, d).components[-1].directions[0])(
        jax.random.split(KEY, count)
    )
    beta = np.asarray(beta, np.float64)
    np.testing.assert_allclose(np.linalg.norm(beta, axis=1), 1.0, rtol=1e-5)
    se = math.sqrt(1 / d / count)  # each coordinate has variance 1/d
    assert np.all(np.abs(beta.mean(axis=0)) < 5 * se), beta.mean(axis=0)
    np.testing.assert_allclose(beta.T @ beta / count, np.eye(d) / d, atol=0.03)


def test_make_task_keeps_the_targets_dtype_and_law_down_to_one_point(x64):
    """float32 target while float64 is the default: both input sets float32, on the sphere of
    radius √d (train and test), and n = n_test = 1 is a valid task."""
    target = tg.paper_target(KEY, D, "sphere", dtype=jnp.float32)
    task = tg.make_task(KEY, target, n=1, n_test=1)
    for x in (task.x_train, task.x_test):
        assert x.shape == (1, D) and x.dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(np.asarray(x, np.float64)), math.sqrt(D), 1e-6)
    assert task.y_train.dtype == task.y_test.dtype == jnp.float32


# ------------------------------------------------------------------------------------------------
# The theorem's target: dense degree ≤ k plus sparse degree k + 1


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
@pytest.mark.parametrize("r", [1, 3])
def test_theorem_target_parts_have_their_stated_variances_by_monte_carlo(distribution, r):
    target = tg.theorem_target(
        jax.random.PRNGKey(r),
        D,
        2,
        r=r,
        dense_variances=(0.2, 0.3),
        sparse_variance=0.5,
        distribution=distribution,
    )
    assert target.names == ("dense1", "dense2", "sparse") and target.degrees == (1, 2, 3)
    assert target.components[2].directions.shape == (r, D)
    # the stated variances, by the numpy formula and by Monte Carlo (5 standard errors of the
    # sample), and the parts orthogonal to each other
    np.testing.assert_allclose(
        [_mean_square_by_formula(p) for p in target.components], [0.2, 0.3, 0.5], rtol=1e-5
    )
    _assert_moments(target, jax.random.PRNGKey(10 + r))


def test_theorem_target_defaults_and_bad_arguments():
    target = tg.theorem_target(KEY, D, 3)
    np.testing.assert_allclose(target.variances, [1 / 9, 1 / 9, 1 / 9, 2 / 3], rtol=1e-5)
    with pytest.raises(ValueError, match="dense_variances"):
        tg.theorem_target(KEY, D, 2, dense_variances=(0.5,))
    with pytest.raises(ValueError, match="k"):
        tg.theorem_target(KEY, D, 0)
    with pytest.raises(ValueError, match="r"):
        tg.theorem_target(KEY, D, 1, r=D + 1)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("d", [5, 8, 12])
def test_kept_directions_equal_the_predicted_degree_blocks(d, k):
    from jaxntk import spectral

    kept = tg.num_harmonics_up_to(d, k)
    # polynomials of degree ≤ k modulo |x|² times those of degree ≤ k − 2, counted by monomials
    by_monomials = math.comb(d + k, k) - (math.comb(d + k - 2, k - 2) if k >= 2 else 0)
    assert kept == by_monomials
    predicted = spectral.predict_degree_blocks("shifted_sigmoid", d, 10 * kept, max_degree=k)
    assert sorted(predicted.degrees) == list(range(k + 1))
    assert sum(b.multiplicity for b in predicted.blocks) == kept


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.slow
def test_kept_directions_are_where_the_measured_spectrum_drops(k):
    from jaxntk import network, spectral

    d, n = 5, 150
    net = network.init(jax.random.PRNGKey(0), d=d, m=2000)
    x = tg.sample_inputs(jax.random.PRNGKey(1), n, d, "sphere")
    ev = np.sort(np.linalg.eigvalsh(np.asarray(net.ntk_gram(x), np.float64) / n))[::-1]
    kept = tg.num_harmonics_up_to(d, k)
    # the N(d, ≤ k) top eigenvalues stand apart from what follows (degree k + 1 and the bulk)
    assert ev[kept - 1] / ev[kept] > 2.0
    # and the degree-k block sits at its predicted level (within a factor 2)
    level = spectral.predict_degree_blocks("shifted_sigmoid", d, n, max_degree=k).block(k).level
    block = ev[kept - tg.num_harmonics(d, k) : kept]
    assert level / 2 < block.mean() < 2 * level
