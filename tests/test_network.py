"""The two-layer network (jaxntk/network.py): symmetric init, activation derivatives, NTK Gram
matrix and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk.network import ACTIVATIONS, TwoLayer, init

# Avoids z = 0, where ReLU has no derivative.
Z = np.linspace(-4.03, 3.97, 41)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_jax_grad(x64, name):
    act = ACTIVATIONS[name]
    z = jnp.asarray(Z)
    d1 = jax.vmap(jax.grad(act.fn))(z)
    d2 = jax.vmap(jax.grad(jax.grad(act.fn)))(z)
    np.testing.assert_allclose(act.d1(z), d1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(act.d2(z), d2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_symmetric_init_outputs_exactly_zero(activation):
    net = TwoLayer.init(jax.random.PRNGKey(0), d=7, m=12, activation=activation)
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (20, 7))
    apply = jax.jit(TwoLayer.apply)
    np.testing.assert_array_equal(apply(net, net.w0, x), np.zeros(20, np.float32))
    np.testing.assert_array_equal(net.apply(net.w0, x[0]), np.float32(0.0))
    np.testing.assert_allclose(jnp.linalg.norm(net.w0, axis=1), np.ones(12), rtol=1e-6)
    np.testing.assert_array_equal(net.w0[:6], net.w0[6:])
    np.testing.assert_array_equal(net.a[:6], -net.a[6:])


def test_ntk_gram_equals_features_times_features_transposed(x64):
    net = TwoLayer.init(jax.random.PRNGKey(2), d=5, m=8, dtype=jnp.float64)
    x1 = jax.random.normal(jax.random.PRNGKey(3), (6, 5), jnp.float64)
    x2 = jax.random.normal(jax.random.PRNGKey(4), (4, 5), jnp.float64)

    @jax.jit
    def grams(net, x1, x2):
        f1, f2 = net.features(x1).reshape(6, -1), net.features(x2).reshape(4, -1)
        return (net.ntk_gram(x1), f1 @ f1.T), (net.ntk_gram(x1, x2), f1 @ f2.T)

    for got, want in grams(net, x1, x2):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 3, "m": 5}, "m must be even"),
        ({"d": 0, "m": 4}, "d must be ≥ 1"),
        ({"d": 3, "m": 0}, "m must be ≥ 1"),
        ({"d": 3, "m": 4, "activation": "swish"}, "unknown activation 'swish'"),
    ],
)
def test_bad_init_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        init(jax.random.PRNGKey(0), **kwargs)


def test_activation_must_be_named_by_a_str():
    with pytest.raises(TypeError, match="activation must be a str"):
        TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4, activation=None)


def test_bad_inputs_raise_naming_the_argument():
    net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
    for x in (jnp.zeros((5, 4)), jnp.zeros((2, 5, 3)), jnp.zeros(())):
        with pytest.raises(ValueError, match=r"^x must have shape \(n, d\) or \(d,\) with d = 3"):
            net.apply(net.w0, x)
    # prepare takes a batch only
    with pytest.raises(ValueError, match=r"^x must have shape \(n, d\) with d = 3 \(the network"):
        net.prepare(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"^w must have shape \(4, 3\)"):
        net.apply(jnp.zeros((4, 2)), jnp.zeros((5, 3)))


def test_apply_accepts_nested_lists(x64):
    net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4, dtype=jnp.float64)
    w = net.w0 + 0.1 * jnp.eye(4, 3, dtype=jnp.float64)
    x = np.array([1.0, 2.0, 3.0])
    # f(x; W) = Σ_r a_r σ(w_r · x), σ(z) = 1/(1 + e^{1−z}), by hand
    want = float(np.asarray(net.a) @ (1.0 / (1.0 + np.exp(1.0 - np.asarray(w) @ x))))
    assert abs(want) > 0.01
    assert float(net.apply(w, [x.tolist()])[0]) == pytest.approx(want, rel=1e-12)
    assert float(net.apply(w, jnp.asarray(x))) == pytest.approx(want, rel=1e-12)


def test_init_keeps_the_activation_and_dtype_it_is_given(x64):
    net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4, activation="tanh", dtype=jnp.float32)
    assert net.activation == "tanh" and net.sigma.name == "tanh"
    assert net.w0.dtype == jnp.float32 and net.a.dtype == jnp.float32
    assert TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4).w0.dtype == jnp.float64
