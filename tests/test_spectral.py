"""Tests for jaxntk.spectral (and the spectrum experiment): the NTK feature subspace without J."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk import spectral
from jaxntk.experiments import spectrum
from jaxntk.network import TwoLayer
from jaxntk.spectral import (
    bulk_residual,
    degree_block_report,
    empirical_ntk,
    good_directions,
    gram_matrix,
    hermite_coefficients,
    predict_degree_blocks,
    project_good,
    project_top,
    right_singular_vectors,
)
from jaxntk.targets import sample_inputs
from jaxntk.taylor import TaylorModel


def _problem(d, n, m, distribution="sphere", seed=0, dtype=None, activation="shifted_sigmoid"):
    k_net, k_x = jax.random.split(jax.random.PRNGKey(seed))
    net = TwoLayer.init(k_net, d=d, m=m, activation=activation, dtype=dtype)
    x = sample_inputs(k_x, n, d, distribution, dtype=dtype)
    return net, x


def _sin_largest_angle(a, b):
    """sin of the largest principal angle between the column spans of a and b (orthonormal)."""
    qa, qb = np.linalg.qr(np.asarray(a))[0], np.linalg.qr(np.asarray(b))[0]
    return np.linalg.norm(qb - qa @ (qa.T @ qb), ord=2)


@pytest.fixture(scope="module")
def small64():
    """A float64 problem small enough for the dense SVD of J: d = 8, n = 60, m = 200."""
    with jax.enable_x64(True):
        d, n, m = 8, 60, 200
        net, x = _problem(d, n, m, dtype=jnp.float64)
        j = np.asarray(net.features(x)).reshape(n, m * d)
        u, s, vt = np.linalg.svd(j, full_matrices=False)
    return net, x, u, s, vt


@pytest.mark.parametrize("method", ["gram", "matrix_free"])
@pytest.mark.slow
def test_top_k_subspace_matches_dense_svd(small64, x64, method):
    net, x, u, s, vt = small64
    k = net.d
    prep = net.prepare(x)
    dirs, info = good_directions(net, prep, k, method=method, return_info=True)
    assert dirs.u_k.shape == (x.shape[0], k) and dirs.s_k.dtype == jnp.float64
    assert _sin_largest_angle(u[:, :k], dirs.u_k) < 1e-4
    np.testing.assert_allclose(dirs.s_k, s[:k], rtol=1e-8)
    v_k = np.asarray(right_singular_vectors(net, prep, dirs)).reshape(k, -1)
    assert _sin_largest_angle(vt[:k].T, v_k.T) < 1e-4
    np.testing.assert_allclose(v_k @ v_k.T, np.eye(k), atol=1e-8)
    assert float(info.residual) < 1e-8
    if method == "matrix_free":
        assert 1 < int(info.iterations) < 100


@pytest.mark.slow
def test_generic_model_gives_the_same_directions(small64, x64):
    """A `TaylorModel` (VJP/JVP path) and the closed-form `TwoLayer` agree, both methods."""
    net, x, u, s, _ = small64
    model = TaylorModel(net.apply_fn, net.w0)
    prep = model.prepare(x)
    np.testing.assert_allclose(gram_matrix(model, prep), net.ntk_gram(x), rtol=1e-10, atol=1e-12)
    for method in spectral.METHODS:
        dirs = good_directions(model, prep, net.d + 1, method=method, batch_size=7)
        assert _sin_largest_angle(u[:, : net.d + 1], dirs.u_k) < 1e-4
        np.testing.assert_allclose(dirs.s_k, s[: net.d + 1], rtol=1e-8)


@pytest.mark.parametrize("method", ["jacobian", "products"])
@pytest.mark.slow
def test_empirical_ntk_equals_closed_form(method):
    net, x = _problem(d=6, n=23, m=40, distribution="gaussian")
    k = empirical_ntk(net.apply_fn, net.w0, x, x[:9], method=method, batch_size=5)
    np.testing.assert_allclose(k, net.ntk_gram(x, x[:9]), rtol=1e-5, atol=1e-6)

    # Both layers as a pytree of parameters: K = K_first_layer + σ(X W0ᵀ) σ(X W0ᵀ)ᵀ.
    def apply_fn(params, xb):
        return TwoLayer(params["w"], params["a"], net.activation).apply(params["w"], xb)

    hidden = net.sigma.fn(x @ net.w0.T)
    both = empirical_ntk(apply_fn, {"w": net.w0, "a": net.a}, x, method=method, batch_size=8)
    np.testing.assert_allclose(both, net.ntk_gram(x) + hidden @ hidden.T, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_projectors_are_complementary_idempotent_and_kill_top_outputs():
    net, x = _problem(d=10, n=40, m=100, distribution="gaussian")
    prep = net.prepare(x)
    dirs = good_directions(net, prep, 10)
    u = jax.random.normal(jax.random.PRNGKey(3), net.w0.shape)
    project_top, project_good = jax.jit(spectral.project_top), jax.jit(spectral.project_good)
    top, good = project_top(net, prep, dirs, u), project_good(net, prep, dirs, u)
    scale = float(jnp.max(jnp.abs(u)))
    # V_k V_kᵀ U from numpy's SVD of J[i, (r, j)] = a_r σ'(w0_r·x_i) x_ij, built by hand
    xn, w0, a = (np.asarray(t, np.float64) for t in (x, net.w0, net.a))
    s = 1.0 / (1.0 + np.exp(1.0 - xn @ w0.T))
    j = (a[None, :, None] * (s * (1 - s))[:, :, None] * xn[:, None, :]).reshape(len(xn), -1)
    v_k = np.linalg.svd(j, full_matrices=False)[2][:10].T
    un = np.asarray(u, np.float64).reshape(-1)
    want_top = (v_k @ (v_k.T @ un)).reshape(u.shape)
    np.testing.assert_allclose(top, want_top, atol=1e-4 * scale)
    np.testing.assert_allclose(good, np.asarray(u) - want_top, atol=1e-4 * scale)
    np.testing.assert_allclose(project_top(net, prep, dirs, top), top, atol=1e-4 * scale)
    np.testing.assert_allclose(project_good(net, prep, dirs, good), good, atol=1e-4 * scale)
    np.testing.assert_allclose(project_top(net, prep, dirs, good), 0.0, atol=1e-4 * scale)
    f_good = net.linear_term(good, prep)
    f = net.linear_term(u, prep)
    # U_kᵀ J P_⊥ U ≈ 0, and J P_⊥ U is the bulk residual of f_L(X; U).
    assert float(jnp.max(jnp.abs(dirs.u_k.T @ f_good))) < 1e-4 * float(jnp.max(jnp.abs(f)))
    np.testing.assert_allclose(f_good, bulk_residual(dirs, f), atol=1e-4 * float(jnp.max(f)))


@pytest.mark.slow
def test_projectors_jit_and_grad_without_recompiling():
    net, x = _problem(d=10, n=40, m=100, distribution="gaussian")
    prep = net.prepare(x)
    dirs = good_directions(net, prep, 10)
    x_fresh = sample_inputs(jax.random.PRNGKey(5), 30, 10)
    traces = []

    @jax.jit
    def pop_and_bulk(u, prep, dirs, x_fresh):
        traces.append(1)
        r_pop = jnp.mean(
            net.linear_term(project_good(net, prep, dirs, u), net.prepare(x_fresh)) ** 2
        )
        r_bulk = jnp.mean(bulk_residual(dirs, net.linear_term(u, prep)) ** 2)
        return r_pop + r_bulk

    grad = jax.grad(pop_and_bulk)
    u = 0.1 * jax.random.normal(jax.random.PRNGKey(6), net.w0.shape)
    g1 = grad(u, prep, dirs, x_fresh)
    g2 = grad(2.0 * u, prep, dirs, x_fresh)
    assert len(traces) == 1
    # Both terms depend on U only through P_⊥ U (J P_⊥ = (I − U_k U_kᵀ) J), so the gradient
    # lies in the good directions: P_top ∇ = 0; and both are quadratic: ∇(2U) = 2 ∇(U).
    scale = float(jnp.max(jnp.abs(g1)))
    assert float(jnp.max(jnp.abs(project_top(net, prep, dirs, g1)))) < 1e-4 * scale
    np.testing.assert_allclose(g2, 2.0 * g1, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow
def test_good_directions_compiles_once_per_shape():
    net, x = _problem(d=5, n=30, m=40, distribution="gaussian")
    before = spectral._good_directions._cache_size()
    for seed in (0, 1):
        x = sample_inputs(jax.random.PRNGKey(seed), 30, 5)
        good_directions(net, net.prepare(x), 5, method="matrix_free")
    assert spectral._good_directions._cache_size() == before + 1


@pytest.mark.parametrize(
    ("d", "n", "min_gap_top", "min_gap_degree0"), [(20, 89, 2.5, 1.3), (40, 252, 3.0, 1.8)]
)
@pytest.mark.slow
def test_sphere_spectrum_shows_degree_blocks(d, n, min_gap_top, min_gap_degree0):
    """n ≈ d^1.5 on the sphere: d eigenvalues (degree 1), then one (degree 0), then the bulk."""
    net, x = _problem(d=d, n=n, m=2000)
    ev = np.linalg.eigvalsh(np.asarray(gram_matrix(net, net.prepare(x)), np.float64) / n)[::-1]
    predicted = predict_degree_blocks("shifted_sigmoid", d, n)
    assert predicted.degrees == (1, 0)  # theory: the degree-1 block is the higher one
    report = degree_block_report(ev, predicted)
    deg1, deg0 = report.blocks
    assert (deg1.start, deg1.stop, deg0.start, deg0.stop, report.bulk_start) == (
        0,
        d,
        d,
        d + 1,
        d + 1,
    )
    assert deg1.gap_ratio > min_gap_top  # d-th eigenvalue / (d+1)-th
    assert deg0.gap_ratio > min_gap_degree0  # (d+1)-th / largest of the bulk
    assert report.separated
    # The levels themselves: block means and the bulk median against μ_ℓ + γ and γ.
    assert deg1.mean == pytest.approx(predicted.block(1).level, rel=0.1)
    assert deg0.mean == pytest.approx(predicted.block(0).level, rel=0.3)
    assert deg1.min > predicted.block(1).low * 0.8
    assert report.bulk_level == pytest.approx(predicted.gamma, rel=0.3)
    assert report.bulk_max < deg0.min


def test_theory_against_closed_forms():
    # erf: σ' = (2/√π) e^{−z²}, so c_0 = E σ' = (2/√π)/√3 and σ' is even (odd c_j = 0).
    c = hermite_coefficients("erf", 4)
    assert c[0] == pytest.approx(2 / math.sqrt(math.pi) / math.sqrt(3), rel=1e-6)
    assert abs(c[1]) < 1e-7 and abs(c[3]) < 1e-7
    # relu: σ' = 1{z > 0}: c_0 = 1/2, c_1 = φ(0) = 1/√(2π).
    c = hermite_coefficients("relu", 1)
    np.testing.assert_allclose(c, [0.5, 1 / math.sqrt(2 * math.pi)], rtol=1e-6)
    # Parseval: Σ c_j² = E σ'(z)² = kernel diagonal / d.
    pred = predict_degree_blocks("shifted_sigmoid", d=30, n=164)
    assert sum(h**2 for h in pred.hermite) == pytest.approx(pred.kernel_diagonal / 30, rel=1e-5)
    # Leading order μ_1 ≈ c_0², μ_0 ≈ c_1² (the factor x·x' shifts degrees by one).
    assert pred.block(1).eigenvalue == pytest.approx(pred.hermite[0] ** 2, rel=0.05)
    assert pred.block(0).eigenvalue == pytest.approx(pred.hermite[1] ** 2, rel=0.05)
    # tanh: σ' is even, c_1 = 0, so the degree-0 spike vanishes into the bulk.
    tanh = predict_degree_blocks("tanh", d=30, n=164)
    assert tanh.degrees == (1, 0) and tanh.block(0).eigenvalue < 0.01 * tanh.gamma
    # n ≫ d²: the degree-2 block is resolved too.
    assert 2 in predict_degree_blocks("shifted_sigmoid", d=10, n=1000).degrees
    # The quadrature for t = cos(angle) on S^{d−1}: E 1 = 1, E t² = 1/d, E t⁴ = 3/(d(d+2)).
    t, w = spectral._sphere_cosine_quadrature(12, 10)
    np.testing.assert_allclose(
        [w.sum(), w @ t**2, w @ t**4], [1, 1 / 12, 3 / (12 * 14)], rtol=1e-12
    )


@pytest.mark.slow
def test_bad_inputs_raise_clear_errors():
    net, x = _problem(d=5, n=12, m=20, distribution="gaussian")
    prep = net.prepare(x)
    with pytest.raises(ValueError, match="k must be between 1 and 12"):
        good_directions(net, prep, 13)
    with pytest.raises(ValueError, match="k must be"):
        good_directions(net, prep, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        good_directions(net, prep, 2.0)
    with pytest.raises(ValueError, match="method"):
        good_directions(net, prep, 3, method="svd")
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(net.apply_fn, net.w0, x, method="svd")
    with pytest.raises(ValueError, match="x must have shape"):
        good_directions(net, net.prepare(jnp.ones((12, 4))), 3)
    with pytest.raises(ValueError, match="x must have shape"):
        empirical_ntk(net.apply_fn, net.w0, jnp.ones((12, 4)))
    with pytest.raises(ValueError, match="x2"):
        empirical_ntk(net.apply_fn, net.w0, x, jnp.ones((3, 4)))
    # a scalar x1 is not a batch, even beside an x2 whose trailing shape () it matches
    with pytest.raises(ValueError, match=r"^x1 and x2 must be batches .* x1 of shape \(\)"):
        empirical_ntk(net.apply_fn, net.w0, jnp.ones(()), jnp.ones(3))
    dirs = good_directions(net, prep, 3)
    with pytest.raises(ValueError, match="f_train"):
        bulk_residual(dirs, jnp.ones(11))
    with pytest.raises(ValueError, match="prep"):
        project_good(net, net.prepare(x[:7]), dirs, net.zeros())
    with pytest.raises(ValueError, match="d must be"):
        predict_degree_blocks("shifted_sigmoid", d=2, n=10)
    with pytest.raises(ValueError, match="activation"):
        predict_degree_blocks("swish", d=10, n=10)
    with pytest.raises(KeyError, match="degree 2 is not among"):
        predict_degree_blocks("shifted_sigmoid", d=10, n=30).block(2)
    assert good_directions(net, prep, 3).k == 3
    with pytest.raises(ValueError, match="eigenvalues"):
        degree_block_report(np.ones(5), predict_degree_blocks("shifted_sigmoid", d=10, n=30))


@pytest.mark.slow
def test_spectrum_experiment_writes_json_and_png(tmp_path):
    config = spectrum.Config(d=8, n=30, m=200)
    doc = spectrum.run(config, tmp_path)
    saved = json.loads((tmp_path / "spectrum.json").read_text())
    assert saved["config"] == dataclasses.asdict(config) == doc["config"]
    assert (saved["config"]["d"], saved["config"]["n"], saved["config"]["m"]) == (8, 30, 200)
    assert len(saved["eigenvalues"]) == 30
    assert saved["eigenvalues"] == sorted(saved["eigenvalues"], reverse=True)
    assert [b["degree"] for b in saved["predicted"]["blocks"]] == [1, 0]
    assert saved["report"]["bulk_start"] == 9
    assert (tmp_path / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(spectrum.PRESETS) == {"cpu", "paper"}


def test_project_top_ignores_zero_singular_values():
    """A zero singular value (k above the rank of J) spans nothing: no division by zero, and the
    projector equals the one built on the non-zero directions alone."""
    net, x = _problem(d=10, n=40, m=100, distribution="gaussian")
    prep = net.prepare(x)
    dirs = good_directions(net, prep, 5)
    padded = spectral.GoodDirections(
        jnp.concatenate([dirs.u_k, jnp.zeros((dirs.n, 1), dirs.u_k.dtype)], axis=1),
        jnp.concatenate([dirs.s_k, jnp.zeros((1,), dirs.s_k.dtype)]),
    )
    u = jax.random.normal(jax.random.PRNGKey(3), net.w0.shape)
    top = project_top(net, prep, padded, u)
    assert bool(jnp.all(jnp.isfinite(top)))
    np.testing.assert_allclose(top, project_top(net, prep, dirs, u), atol=1e-6)


def _np_shifted_sigmoid(z, derivative):
    s = 1.0 / (1.0 + np.exp(1.0 - z))
    return (s, s * (1 - s), s * (1 - s) * (1 - 2 * s))[derivative]


@pytest.mark.parametrize("derivative", [0, 1, 2])
def test_hermite_coefficients_of_sigma_and_its_derivatives(derivative):
    """c_j = E[σ^(derivative)(z) He_j(z)]/√(j!) by numpy's Gauss-Hermite rule; for erf, Stein's
    identity E[g(z) He_j(z)] = E[g^(j)(z)] with E e^{−z²} = 1/√3, E z² e^{−z²} = 1/(3√3)."""
    from numpy.polynomial import hermite_e

    z, w = hermite_e.hermegauss(120)
    w = w / math.sqrt(2 * math.pi)
    he = np.stack(
        [hermite_e.hermeval(z, np.eye(5)[j]) / math.sqrt(math.factorial(j)) for j in range(5)]
    )
    want = he @ (w * _np_shifted_sigmoid(z, derivative))
    got = hermite_coefficients("shifted_sigmoid", 4, derivative=derivative)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    c = 2 / math.sqrt(math.pi)
    third = -2 * c / (3 * math.sqrt(3))  # E erf'''(z)
    erf = hermite_coefficients("erf", 3, derivative=derivative)
    want_erf = {
        0: [0.0, c / math.sqrt(3), 0.0, third / math.sqrt(6)],
        1: [c / math.sqrt(3), 0.0, third / math.sqrt(2), 0.0],
        2: [0.0, third, 0.0, None],
    }[derivative]
    for j, value in enumerate(want_erf):
        if value is not None:
            assert erf[j] == pytest.approx(value, abs=1e-7), j


def test_predicted_eigenvalues_of_every_degree_up_to_max_degree():
    """μ_ℓ = E_t[K(t) P_ℓ(t)], t = cos(angle) on S^{d−1}, with K(t) = d·t·E[σ'(z)σ'(z')] for
    corr(z, z') = t computed by a 2-D Gauss-Hermite rule (no Hermite series), integrated by
    scipy's quad against the density ∝ (1 − t²)^{(d−3)/2}."""
    from numpy.polynomial import hermite_e
    from scipy import integrate, special

    d, n = 12, 60
    z, w = hermite_e.hermegauss(60)
    w = w / math.sqrt(2 * math.pi)

    def kernel(t):
        z2 = t * z[:, None] + math.sqrt(1 - t**2) * z[None, :]
        k = w @ (_np_shifted_sigmoid(z, 1)[:, None] * _np_shifted_sigmoid(z2, 1)) @ w
        return d * t * k

    lam = (d - 2) / 2

    def mu(ell):
        def p(t):
            return special.eval_gegenbauer(ell, lam, t) / special.eval_gegenbauer(ell, lam, 1.0)

        def density(t):
            return (1 - t**2) ** ((d - 3) / 2)

        num = integrate.quad(lambda t: kernel(t) * p(t) * density(t), -1, 1, epsabs=1e-12)[0]
        return num / integrate.quad(density, -1, 1)[0]

    default = predict_degree_blocks("shifted_sigmoid", d, n)
    assert default.degrees == (1, 0)  # n = 60 < 2·(1 + 12 + 77): degree 2 is not a spike
    pred = predict_degree_blocks("shifted_sigmoid", d, n, max_degree=2)
    assert sorted(pred.degrees) == [0, 1, 2]
    assert [pred.block(ell).multiplicity for ell in (0, 1, 2)] == [1, 12, 77]
    for ell in (0, 1, 2):
        assert pred.block(ell).eigenvalue == pytest.approx(mu(ell), rel=1e-4), ell
    only0 = predict_degree_blocks("shifted_sigmoid", d, n, max_degree=0)
    assert only0.degrees == (0,)
    # γ: what the diagonal E K(x, x) = d E σ'(z)² leaves after the predicted blocks, per sample
    diag = d * float(np.sum(w * _np_shifted_sigmoid(z, 1) ** 2))
    assert only0.gamma == pytest.approx((diag - mu(0)) / n, rel=1e-5)


@pytest.mark.slow
def test_matrix_free_reports_its_products_and_residual(x64):
    """Stopped by max_iters: exactly max_iters products with K; the reported residual is
    max_i ‖K u_i − s_i² u_i‖ / s_i² of the returned pairs, with K = J Jᵀ built in numpy."""
    net, x = _problem(d=5, n=30, m=40, distribution="gaussian", dtype=jnp.float64)
    prep = net.prepare(x)
    dirs, info = good_directions(
        net, prep, 5, method="matrix_free", max_iters=4, tol=1e-300, return_info=True
    )
    assert int(info.iterations) == 4
    xn, w0, a = (np.asarray(t, np.float64) for t in (x, net.w0, net.a))
    s = 1.0 / (1.0 + np.exp(1.0 - xn @ w0.T))
    j = (a[None, :, None] * (s * (1 - s))[:, :, None] * xn[:, None, :]).reshape(len(xn), -1)
    u, ev = np.asarray(dirs.u_k), np.asarray(dirs.s_k) ** 2
    resid = np.linalg.norm(j @ (j.T @ u) - u * ev[None, :], axis=0) / ev
    assert float(info.residual) == pytest.approx(resid.max(), rel=1e-6)
    _, gram_info = good_directions(net, prep, 5, return_info=True)
    assert int(gram_info.iterations) == 1


def test_degree_block_report_by_hand_for_one_and_three_blocks():
    """One predicted block (degree 0, one eigenvalue): the report's numbers by hand. Three blocks
    (1 + 12 + 77 eigenvalues): 90 eigenvalues leave no bulk, 91 do."""
    one = predict_degree_blocks("shifted_sigmoid", 12, 60, max_degree=0)
    report = degree_block_report(np.array([0.0, 3.0, 1.0, 4.0, 2.0]), one)
    (block,) = report.blocks
    assert (block.degree, block.start, block.stop, report.bulk_start) == (0, 0, 1, 1)
    assert (block.min, block.max, block.mean, block.gap_ratio) == (4.0, 4.0, 4.0, 4.0 / 3.0)
    assert (report.bulk_level, report.bulk_max) == (1.5, 3.0)  # median of 3, 2, 1, 0
    three = predict_degree_blocks("shifted_sigmoid", 12, 60, max_degree=2)
    assert three.boundaries[-1] == 90
    with pytest.raises(ValueError, match="eigenvalues has 90 values"):
        degree_block_report(np.linspace(2.0, 1.0, 90), three)
    assert degree_block_report(np.linspace(2.0, 1.0, 91), three).bulk_start == 90


def test_predicted_eigenvalues_of_a_truncated_series_and_the_defaults():
    """With terms = 3, K(t) = d·t·(c_0² + c_1² t + c_2² t²): μ_ℓ = E_t[K(t) P_ℓ(t)] by scipy's
    quad against the density ∝ (1 − t²)^{(d−3)/2}. The default series has 40 terms."""
    from scipy import integrate, special

    d, n = 12, 60
    c = hermite_coefficients("shifted_sigmoid", 2)
    lam = (d - 2) / 2

    def mu(ell):
        def integrand(t):
            p = special.eval_gegenbauer(ell, lam, t) / special.eval_gegenbauer(ell, lam, 1.0)
            return d * t * (c[0] ** 2 + c[1] ** 2 * t + c[2] ** 2 * t**2) * p

        density = lambda t: (1 - t**2) ** ((d - 3) / 2)  # noqa: E731
        num = integrate.quad(lambda t: integrand(t) * density(t), -1, 1, epsabs=1e-14)[0]
        return num / integrate.quad(density, -1, 1)[0]

    pred = predict_degree_blocks("shifted_sigmoid", d, n, max_degree=1, terms=3)
    assert len(pred.hermite) == 3
    for ell in (0, 1):
        assert pred.block(ell).eigenvalue == pytest.approx(mu(ell), rel=1e-6), ell  # P_ℓ in f32
    # γ = (d E σ'(z)² − Σ_ℓ N(d, ℓ) μ_ℓ)/n, and the Marchenko-Pastur edges of each block
    from numpy.polynomial import hermite_e

    z, w = hermite_e.hermegauss(60)
    diagonal = d * float(np.sum(w / math.sqrt(2 * math.pi) * _np_shifted_sigmoid(z, 1) ** 2))
    gamma = (diagonal - mu(0) - d * mu(1)) / n
    assert pred.gamma == pytest.approx(gamma, rel=1e-6)
    for ell, mult in ((0, 1), (1, d)):
        b, r = pred.block(ell), math.sqrt(mult / n)
        assert b.multiplicity == mult
        assert b.level == pytest.approx(mu(ell) + gamma, rel=1e-6)
        assert b.low == pytest.approx(mu(ell) * (1 - r) ** 2 + gamma, rel=1e-6)
        assert b.high == pytest.approx(mu(ell) * (1 + r) ** 2 + gamma, rel=1e-6)
    assert len(predict_degree_blocks("shifted_sigmoid", d, n).hermite) == 40
    with pytest.raises(ValueError, match=r"^n must"):
        predict_degree_blocks("shifted_sigmoid", d, 0)
    with pytest.raises(ValueError, match=r"^terms must be ≥ 1, got 0"):
        predict_degree_blocks("shifted_sigmoid", d, n, terms=0)
