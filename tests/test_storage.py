"""σ', σ'' stored in bfloat16 (`TwoLayer(storage="bfloat16")`), float32 everywhere else.

Tolerance, derived: bfloat16 keeps 8 significant bits, so rounding to nearest moves a value v by
at most u·|v| with u = 2⁻⁸. Only σ' and σ'' are rounded (once, in `prepare`); the products and
sums stay in float32. Hence, for f_L = Σ_r a_r σ'_r z_r (z = X Uᵀ),
    |f_L(bf16) − f_L(f32)| ≤ u · Σ_r |a_r σ'_r z_r|   (+ float32 rounding, ~1e-6 of the same sum),
likewise for f_Q = ½ Σ_r a_r σ''_r z_r² and for each entry of the gradient Gᵀ X, where
G_ir = a_r (g_i σ'_ir + h_i σ''_ir z_ir). The bounds are computed here in float64 with numpy from
σ', σ'' of the shifted sigmoid written out by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk.experiments._common import paper_setup

U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand, round to nearest)
SLACK = 1e-5  # float32 arithmetic on top, relative to the same sums


def _sigmoid_derivatives(pre):
    s = 1.0 / (1.0 + np.exp(-(pre - 1.0)))
    return s * (1 - s), s * (1 - s) * (1 - 2 * s)


@pytest.fixture(scope="module")
def setup():
    d, n, m = 7, 30, 64
    net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=d, m=m)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, d))
    u = 0.3 / np.sqrt(d) * jax.random.normal(jax.random.PRNGKey(2), (m, d))
    return net, x, u


@pytest.mark.slow
def test_prepare_stores_rounded_derivatives(setup):
    net, x, _ = setup
    low = jn.TwoLayer(net.w0, net.a, storage="bfloat16")
    p32, p16 = net.prepare(x), low.prepare(x)
    assert p16.d1.dtype == jnp.bfloat16 and p16.d2.dtype == jnp.bfloat16
    assert p32.d1.dtype == jnp.float32  # the default is unchanged
    d1, d2 = _sigmoid_derivatives(np.asarray(x, np.float64) @ np.asarray(net.w0, np.float64).T)
    for got, want in ((p16.d1, d1), (p16.d2, d2)):
        err = np.abs(np.asarray(got, np.float64) - want)
        assert np.all(err <= U_BF16 * np.abs(want) + 1e-7)
        # and really rounded: not the float32 values
        assert np.max(err) > 1e-4 * np.max(np.abs(want))


def test_terms_and_gradient_within_the_derived_bound(setup):
    net, x, u = setup
    low = jn.TwoLayer(net.w0, net.a, storage="bfloat16")
    x64, u64, a = (np.asarray(v, np.float64) for v in (x, u, net.a))
    d1, d2 = _sigmoid_derivatives(x64 @ np.asarray(net.w0, np.float64).T)
    z = x64 @ u64.T
    fl_scale = np.abs(d1 * z) @ np.abs(a)
    fq_scale = 0.5 * (np.abs(d2) * z**2) @ np.abs(a)
    fl16, fq16 = low.linear_and_quadratic(u, low.prepare(x))
    fl32, fq32 = net.linear_and_quadratic(u, net.prepare(x))
    tol = U_BF16 + SLACK
    assert np.all(np.abs(np.asarray(fl16) - np.asarray(fl32)) <= tol * fl_scale)
    assert np.all(np.abs(np.asarray(fq16) - np.asarray(fq32)) <= tol * fq_scale)
    # the float32 values against the exact ones, so that the bound above is not vacuous
    assert np.allclose(np.asarray(fl32), (d1 * z) @ a, atol=1e-5)

    g, h = np.linspace(-1, 1, x.shape[0]), np.linspace(2, -0.5, x.shape[0])

    def grad(model):
        prep = model.prepare(x)

        def obj(u):
            fl, fq = model.linear_and_quadratic(u, prep)
            return jnp.dot(fl, g) + jnp.dot(fq, h)

        return np.asarray(jax.grad(obj)(u), np.float64)

    big = np.abs(a)[None, :] * (np.abs(g)[:, None] * d1 + np.abs(h)[:, None] * np.abs(d2 * z))
    g_scale = big.T @ np.abs(x64)
    g32, g16 = grad(net), grad(low)
    want = (a[None, :] * (g[:, None] * d1 + h[:, None] * d2 * z)).T @ x64
    assert np.allclose(g32, want, atol=1e-5)
    assert np.all(np.abs(g16 - g32) <= tol * g_scale)


def test_unknown_storage_is_a_value_error():
    with pytest.raises(ValueError, match="storage"):
        jn.TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4, storage="int8")


def test_storage_is_passed_on_by_every_constructor():
    key = jax.random.PRNGKey(0)
    for net in (
        jn.TwoLayer.init(key, d=3, m=4, storage="bfloat16"),
        jn.network.init(key, d=3, m=4, storage="bfloat16"),
    ):
        assert net.storage == "bfloat16"
        assert net.prepare(jnp.ones((2, 3))).d1.dtype == jnp.bfloat16
    net = jn.TwoLayer.init(key, d=3, m=4)
    assert jn.TwoLayer(net.w0, net.a, storage="bfloat16").storage == "bfloat16"
    assert net.storage is None and net.prepare(jnp.ones((2, 3))).d1.dtype == net.w0.dtype


@pytest.mark.slow
def test_small_sweep_final_test_losses_stay_within_the_spread_over_seeds():
    """A tiny cpu-preset-like λ sweep (regularized, f_L + f_Q, plain GD, 3 seeds, each with its
    own task and network): with bfloat16 storage each (λ, seed)'s final test loss moves by less
    than the spread of the float32 losses over the seeds, and the bfloat16 mean over seeds stays
    inside the float32 range."""
    seeds, lambdas = (1, 11, 111), [0.0, 0.1]
    final = {}
    for storage in (None, "bfloat16"):
        per_seed = []
        for seed in seeds:
            task, net = paper_setup(
                seed,
                d=8,
                n=40,
                n_test=200,
                m=200,
                distribution="gaussian",
                activation="shifted_sigmoid",
            )
            if storage is not None:
                net = jn.TwoLayer(net.w0, net.a, storage=storage)
            run = jn.train(
                net,
                task,
                "regularized",
                steps=300,
                reg=jn.Regularizer(bulk=lambdas),
                seeds=[seed],
                eval_every=300,
                progress=False,
            )
            per_seed.append(run.final["test_loss"][:, 0])
        final[storage] = np.stack(per_seed, axis=1)  # (λ, seed)
    f32, bf16 = final[None], final["bfloat16"]
    assert np.all(np.isfinite(bf16))
    spread = f32.max(axis=1) - f32.min(axis=1)
    assert np.all(spread > 0)
    assert np.all(np.abs(bf16 - f32) < spread[:, None])
    mean = bf16.mean(axis=1)
    assert np.all((f32.min(axis=1) <= mean) & (mean <= f32.max(axis=1)))
