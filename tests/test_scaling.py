"""The laziness scale and the mean-field network (jaxntk/scaling.py): α = 1 is the model itself,
the scaled NTK's outputs do not depend on α, the network approaches them as O(1/α), and the
mean-field network is the scale α = 1/√m."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk.scaling import Scaled, mean_field, mean_field_lr
from jaxntk.taylor import TaylorModel

D, N, M = 5, 20, 40


@pytest.fixture(scope="module")
def task():
    return jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=60)


def _final_test_outputs(model, task, variant, lr, steps=200):
    run = jn.train(model, task, variant, steps=steps, lr=lr, eval_every=steps, progress=False)
    u = jax.tree.map(lambda a: a[0, 0], run.params)
    prep = model.prepare(task.x_test, order=2)
    return np.asarray(jn.objectives.get_variant(variant).predict(model, u, prep)), run


@pytest.mark.slow
def test_alpha_one_is_the_full_variant_exactly(task):
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M)
    plain = jn.train(net, task, "full", steps=300, eval_every=100, progress=False)
    scaled = jn.train(
        Scaled(net, 1.0),
        task,
        "full",
        steps=300,
        eval_every=100,
        progress=False,
    )
    np.testing.assert_array_equal(np.asarray(scaled.params), np.asarray(plain.params))
    for key in ("train_loss", "test_loss"):
        np.testing.assert_array_equal(scaled.history[key], plain.history[key])
    np.testing.assert_array_equal(scaled.trace["loss"], plain.trace["loss"])


@pytest.mark.slow
def test_gd_on_the_scaled_model_is_gd_on_chizats_objective(task, x64):
    """Three GD steps on (1/α²)(1/n) Σ (y − α f(W0 + U))², by hand in NumPy."""
    task = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, task)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M, dtype=jnp.float64)
    alpha, lr = 7.0, 0.8
    run = jn.train(Scaled(net, alpha), task, "full", steps=3, lr=lr, eval_every=3, progress=False)
    x, y = np.asarray(task.x_train), np.asarray(task.y_train)
    w0, a = np.asarray(net.w0), np.asarray(net.a)
    u = np.zeros_like(w0)
    for _ in range(3):
        pre = x @ (w0 + u).T
        s = 1 / (1 + np.exp(-(pre - 1)))
        resid = y - alpha * (s @ a)
        grad = -(2 / N) * alpha * ((resid[:, None] * s * (1 - s) * a[None, :]).T @ x) / alpha**2
        u = u - lr * grad
    np.testing.assert_allclose(np.asarray(run.params)[0, 0], u, rtol=1e-12, atol=1e-15)


def test_outputs_and_terms_are_alpha_times_the_centered_model(x64):
    """A model with f(θ0) ≠ 0: h_α = α(f − f0), its terms α f_k, against NumPy."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4))
    x = rng.standard_normal((6, 3))
    u = 0.2 * rng.standard_normal((3, 4))

    def apply(p, x):
        return jnp.sum(jnp.tanh(x @ p), axis=1)

    model = Scaled(TaylorModel(apply, jnp.asarray(w)), 2.5)
    prep = model.prepare(jnp.asarray(x), order=3)
    f0, f = np.tanh(x @ w).sum(1), np.tanh(x @ (w + u)).sum(1)
    t, z = np.tanh(x @ w), x @ u
    fl = ((1 - t**2) * z).sum(1)
    fq = (0.5 * (-2 * t * (1 - t**2)) * z**2).sum(1)
    np.testing.assert_allclose(np.asarray(model.full(jnp.asarray(u), prep)), 2.5 * (f - f0))
    np.testing.assert_array_equal(np.asarray(model.initial_output(prep)), np.zeros(6))
    got_l, got_q = model.linear_and_quadratic(jnp.asarray(u), prep)
    np.testing.assert_allclose(np.asarray(got_l), 2.5 * fl, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got_q), 2.5 * fq, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(model.linear_term(jnp.asarray(u), prep)), 2.5 * fl)
    np.testing.assert_allclose(np.asarray(model.quadratic_term(jnp.asarray(u), prep)), 2.5 * fq)
    terms = model.taylor_terms(jnp.asarray(u), prep, 3)
    f3 = ((-2 * (1 - t**2) + 6 * t**2 * (1 - t**2)) * z**3 / 6).sum(1)
    np.testing.assert_allclose(np.asarray(terms[2]), 2.5 * f3, rtol=1e-10)


@pytest.mark.parametrize("paired, rate", [(True, -2.0), (False, -1.0)])
@pytest.mark.slow
def test_the_scaled_ntk_does_not_depend_on_alpha_and_the_network_approaches_it(
    task, x64, paired, rate
):
    """GD on (1/α²) L(α f_L) moves the outputs by η J Jᵀ(...): the same for every α; the network's
    outputs approach them as α grows (Chizat, Oyallon & Bach 2019). With a generic initialization
    the gap is α f_Q(U) with U = O(1/α): O(1/α). With the symmetric one the NTK's iterates are odd
    in each pair (u_{r+m/2} = −u_r, a_{r+m/2} = −a_r, same w0_r), so f_Q(U) = 0 on them and the
    gap starts at third order: O(1/α²)."""
    task = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, task)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M, dtype=jnp.float64)
    if not paired:  # every row its own draw, signs at random: f(θ0) ≠ 0, no cancellation
        rng = np.random.default_rng(5)
        w0 = rng.standard_normal((M, D))
        a = rng.choice([-1.0, 1.0], M) / np.sqrt(M)
        net = jn.TwoLayer(
            jnp.asarray(w0 / np.linalg.norm(w0, axis=1, keepdims=True)), jnp.asarray(a)
        )
    alphas = (10.0, 100.0, 1000.0)
    lin = [_final_test_outputs(Scaled(net, a), task, "ntk", 1.0)[0] for a in alphas]
    for other in lin[1:]:
        np.testing.assert_allclose(other, lin[0], rtol=1e-9, atol=1e-12)
    gaps = [
        np.linalg.norm(_final_test_outputs(Scaled(net, a), task, "full", 1.0)[0] - g)
        for a, g in zip(alphas, lin, strict=True)
    ]
    slope = np.polyfit(np.log(alphas), np.log(gaps), 1)[0]
    assert abs(slope - rate) < 0.1, (gaps, slope)


@pytest.mark.slow
def test_mean_field_is_the_scale_one_over_root_m(task, x64):
    task = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, task)
    key = jax.random.PRNGKey(3)
    mf = mean_field(key, D, M, dtype=jnp.float64)
    ntk = jn.TwoLayer.init(key, d=D, m=M, dtype=jnp.float64)
    np.testing.assert_array_equal(np.asarray(mf.w0), np.asarray(ntk.w0))
    np.testing.assert_allclose(np.abs(np.asarray(mf.a)), 1.0 / M, rtol=1e-15)
    out_mf, run_mf = _final_test_outputs(mf, task, "full", mean_field_lr(0.5, M))
    scaled = Scaled(ntk, 1.0 / np.sqrt(M))
    out_s, run_s = _final_test_outputs(scaled, task, "full", 0.5)
    np.testing.assert_allclose(out_mf, out_s, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(run_mf.params), np.asarray(run_s.params), rtol=1e-9)
    # and the features do move: the first layer travels O(1) per neuron, the NTK one O(1/√m)
    assert np.linalg.norm(np.asarray(run_mf.params)[0, 0], axis=1).mean() > 0.05


def test_bad_scales_are_named():
    net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=2, m=2)
    with pytest.raises(ValueError, match="alpha must be a finite float > 0"):
        Scaled(net, 0.0)
    with pytest.raises(TypeError, match="alpha must be a float"):
        Scaled(net, "big")
    with pytest.raises(ValueError, match="lr must be"):
        mean_field_lr(-1.0, 10)
