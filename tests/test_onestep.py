"""One gradient step then ridge (jaxntk/onestep.py) against a NumPy implementation, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk.onestep import first_step, one_step


def _sig(z):
    return 1.0 / (1.0 + np.exp(-(z - 1.0)))


def _numpy_two_stages(w0, s, x, y, bias, eta, ridge):
    """Row r of W1 = η (2/n) Σ_i y_i s_r σ'(w0_r·x_i) x_i (f(W0) = 0); a from the normal
    equations (ΦᵀΦ + nλ I) a = Φᵀ y."""
    n = x.shape[0]
    g = _sig(x @ w0.T) * (1 - _sig(x @ w0.T))  # (n, m)
    w1 = eta * (2 / n) * s[:, None] * ((g * y[:, None]).T @ x)
    phi = _sig(x @ w1.T + bias[None, :])
    a = np.linalg.solve(phi.T @ phi + n * ridge * np.eye(phi.shape[1]), phi.T @ y)
    return w1, a


@pytest.mark.parametrize("n, m", [(26, 40), (42, 12)])  # dual (n ≤ m) and primal (n > m) paths
@pytest.mark.slow
def test_grid_choice_and_fit_match_numpy(x64, n, m):
    d = 4
    task = jn.paper_task(jax.random.PRNGKey(0), d=d, n=n, n_test=30)
    x = np.asarray(task.x_train, dtype=np.float64)
    y = np.asarray(task.y_train, dtype=np.float64)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=d, m=m, dtype=jnp.float64)
    w0, s = np.asarray(net.w0), np.sign(np.asarray(net.a))
    etas, ridges = [0.5, 3.0, 12.0], [1e-4, 1e-2, 1.0]
    fit = one_step(
        jax.random.PRNGKey(2), net, jnp.asarray(x), jnp.asarray(y), etas=etas, ridges=ridges
    )
    bias = np.asarray(fit.bias)
    assert abs(bias.std() - 1.0) < 0.5 and np.all(bias != 0)
    size = n // 4
    grid = np.zeros((3, 3))
    for f in range(4):
        val = np.arange(f * size, (f + 1) * size)
        fit_ = np.setdiff1d(np.arange(n), val)
        for i, eta in enumerate(etas):
            for j, ridge in enumerate(ridges):
                w1, a = _numpy_two_stages(w0, s, x[fit_], y[fit_], bias, eta, ridge)
                pred = _sig(x[val] @ w1.T + bias) @ a
                grid[i, j] += np.mean((pred - y[val]) ** 2) / 4
    np.testing.assert_allclose(np.asarray(fit.val_loss), grid, rtol=1e-7)
    i, j = np.unravel_index(np.argmin(grid), grid.shape)
    assert (float(fit.eta), float(fit.ridge)) == (etas[i], ridges[j])
    w1, a = _numpy_two_stages(w0, s, x, y, bias, etas[i], ridges[j])
    np.testing.assert_allclose(np.asarray(fit.w1), w1, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(fit.a), a, rtol=1e-6, atol=1e-9)
    xt = np.asarray(task.x_test, dtype=np.float64)
    np.testing.assert_allclose(
        np.asarray(fit.predict(jnp.asarray(xt))), _sig(xt @ w1.T + bias) @ a, rtol=1e-6, atol=1e-9
    )


def test_keep_init_adds_w0(x64):
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=3, m=6, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(2), (9, 3), jnp.float64)
    y = x[:, 0] ** 2
    np.testing.assert_allclose(
        np.asarray(first_step(net, x, y, 2.0, keep_init=True)),
        np.asarray(net.w0 + first_step(net, x, y, 2.0)),
        rtol=1e-14,
    )


def test_bad_input_is_named():
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=3, m=6)
    x, y = jnp.ones((8, 3)), jnp.ones(8)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="etas must be"):
        one_step(key, net, x, y, etas=[], ridges=[1.0])
    with pytest.raises(ValueError, match="ridges must be"):
        one_step(key, net, x, y, etas=[1.0], ridges=[-1.0])
    with pytest.raises(ValueError, match="x_train must have shape"):
        one_step(key, net, jnp.ones((8, 2)), y, etas=[1.0], ridges=[1.0])
    with pytest.raises(ValueError, match="folds must be between 2 and 8"):
        one_step(key, net, x, y, etas=[1.0], ridges=[1.0], folds=9)
    with pytest.raises(TypeError, match="net must be"):
        one_step(key, "net", x, y, etas=[1.0], ridges=[1.0])
