"""Generic Taylor terms (jaxntk/taylor.py): against the two-layer closed forms, finite differences,
the t³ remainder, flax models, compilation counts and bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxntk
from jaxntk.network import TwoLayer
from jaxntk.taylor import TaylorModel, linear_term, linearize, quadratic_term, taylor


def rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def normal(rng, shape, scale=1.0):
    """float64 test data (under x64) from NumPy: no per-shape compilation of random ops."""
    return jnp.asarray(scale * rng.standard_normal(shape))


def mlp_init(rng, d=4, h=7):
    """Two hidden layers of width h, weights and biases in a dict."""
    return {
        "w1": normal(rng, (d, h), 1 / np.sqrt(d)),
        "b1": normal(rng, (h,), 0.1),
        "w2": normal(rng, (h, h), 1 / np.sqrt(h)),
        "b2": normal(rng, (h,), 0.1),
        "w3": normal(rng, (h,), 1 / np.sqrt(h)),
        "b3": normal(rng, (), 0.1),
    }


def mlp_apply(p, x):
    z = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
    z = jax.nn.softplus(z @ p["w2"] + p["b2"][None, :])
    return z @ p["w3"] + p["b3"]


def random_like(rng, tree):
    return jax.tree.map(lambda leaf: normal(rng, jnp.shape(leaf)).astype(leaf.dtype), tree)


def along(p0, delta, t):
    return jax.tree.map(lambda a, b: a + t * b, p0, delta)


def remainder_slope(f_true, f_taylor, p0, delta, ts):
    """Fitted log-log slope of ‖f(p0 + tδ) − taylor(p0 + tδ)‖ against t (one compiled program)."""

    def remainder(t):
        p = along(p0, delta, t)
        return jnp.linalg.norm(f_true(p) - f_taylor(p))

    r = jax.jit(jax.vmap(remainder))(jnp.asarray(ts))
    return np.polyfit(np.log(ts), np.log(np.asarray(r)), 1)[0]


@pytest.fixture
def mlp(x64):
    rng = np.random.default_rng(0)
    return mlp_init(rng), normal(rng, (9, 4)), mlp_init(rng)


@pytest.mark.parametrize("activation", ["shifted_sigmoid", "tanh", "gelu"])
def test_generic_terms_equal_two_layer_closed_forms(x64, activation):
    net = TwoLayer.init(jax.random.PRNGKey(3), d=6, m=10, activation=activation, dtype=jnp.float64)
    rng = np.random.default_rng(1)
    x, u = normal(rng, (11, 6)), normal(rng, (10, 6))

    @jax.jit
    def terms(net, x, u):
        prep = net.prepare(x)
        model = TaylorModel(net.apply_fn, net.w0)
        tprep = model.prepare(x)
        return {
            "closed": (net.linear_term(u, prep), net.quadratic_term(u, prep)),
            "generic": (
                linear_term(net.apply_fn, net.w0, u, x),
                quadratic_term(net.apply_fn, net.w0, u, x),
            ),
            "model": (model.linear_term(u, tprep), model.quadratic_term(u, tprep)),
            "model_both": model.linear_and_quadratic(u, tprep),
            "full": (model.full(u, tprep), net.full(u, prep)),
            "f0": tprep.f0,
        }

    out = terms(net, x, u)
    f_lin, f_quad = out["closed"]
    for key in ("generic", "model", "model_both"):
        assert rel_err(out[key][0], f_lin) <= 1e-10, key
        assert rel_err(out[key][1], f_quad) <= 1e-10, key
    assert rel_err(*out["full"]) <= 1e-12
    np.testing.assert_array_equal(out["f0"], np.zeros(11))
    np.testing.assert_array_equal(TaylorModel(net.apply_fn, net.w0).zeros(), net.zeros())


def test_terms_match_finite_differences_along_t(mlp):
    p0, x, delta = mlp
    t = 1e-3

    @jax.jit
    def differences(p0, delta, x):
        g = {s: mlp_apply(along(p0, delta, s), x) for s in (-t, 0.0, t)}
        fd_lin = (g[t] - g[-t]) / (2 * t)
        fd_quad = 0.5 * (g[t] - 2 * g[0.0] + g[-t]) / t**2
        exact = (linear_term(mlp_apply, p0, delta, x), quadratic_term(mlp_apply, p0, delta, x))
        return (fd_lin, fd_quad), exact

    (fd_lin, fd_quad), (f_lin, f_quad) = differences(p0, delta, x)
    assert rel_err(f_lin, fd_lin) < 1e-5
    assert rel_err(f_quad, fd_quad) < 1e-5


@pytest.mark.parametrize("order", [1, 2])
def test_remainder_falls_like_t_to_order_plus_one(mlp, order):
    p0, x, delta = mlp
    f_taylor = taylor(mlp_apply, p0, order)
    slope = remainder_slope(
        lambda p: mlp_apply(p, x), lambda p: f_taylor(p, x), p0, delta, np.geomspace(1e-1, 1e-3, 9)
    )
    assert abs(slope - (order + 1)) <= 0.2, slope


def test_taylor_is_the_sum_of_its_terms(mlp):
    p0, x, delta = mlp

    @jax.jit
    def models(p0, delta, x):
        p = along(p0, delta, 1.0)
        f0 = mlp_apply(p0, x)
        f_lin = linear_term(mlp_apply, p0, delta, x)
        f_quad = quadratic_term(mlp_apply, p0, delta, x)
        return {
            "linearize": (linearize(mlp_apply, p0)(p, x), f0 + f_lin),
            "taylor": (taylor(mlp_apply, p0, 2)(p, x), f0 + f_lin + f_quad),
            "at_p0": (jaxntk.taylor(mlp_apply, p0, 2)(p0, x), f0),
        }

    for key, (got, want) in models(p0, delta, x).items():
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=key)


@pytest.mark.slow
def test_cached_and_uncached_forms_agree(mlp):
    p0, x, delta = mlp
    model = TaylorModel(mlp_apply, p0)
    prep = model.prepare(x)
    np.testing.assert_allclose(prep.f0, mlp_apply(p0, x), rtol=1e-14)
    f_lin = linear_term(mlp_apply, p0, delta, x)
    f_quad = quadratic_term(mlp_apply, p0, delta, x)
    np.testing.assert_allclose(model.linear_term(delta, prep), f_lin, rtol=1e-12)
    np.testing.assert_allclose(model.quadratic_term(delta, prep), f_quad, rtol=1e-12)
    jitted = jax.jit(lambda m, u, x: m.linear_and_quadratic(u, m.prepare(x)))(model, delta, x)
    np.testing.assert_allclose(jitted[0], f_lin, rtol=1e-12)
    np.testing.assert_allclose(jitted[1], f_quad, rtol=1e-12)


@pytest.mark.slow
def test_model_vmaps_over_params0_and_differentiates(mlp):
    p0, x, delta = mlp
    p0s = jax.tree.map(lambda a, b: jnp.stack([a, a + 0.1 * b]), p0, delta)

    def loss(p0, u):
        model = TaylorModel(mlp_apply, p0)
        prep = model.prepare(x)
        f_lin, f_quad = model.linear_and_quadratic(u, prep)
        return jnp.mean((1.0 - f_lin - f_quad) ** 2) + jnp.mean(model.linear_term(u, prep) ** 3)

    grad = jax.grad(loss, argnums=1)

    @jax.jit
    def batched_and_single(p0s, u):
        single = grad(jax.tree.map(lambda a: a[1], p0s), u)
        return jax.vmap(grad, in_axes=(0, None))(p0s, u), single

    batched, single = batched_and_single(p0s, delta)
    for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(b[1], s, rtol=1e-10)


def test_extra_inputs_are_passed_through(mlp):
    p0, x, delta = mlp

    def scaled(p, x, scale):
        return scale * mlp_apply(p, x)

    s = jnp.asarray(3.0)
    np.testing.assert_allclose(
        linear_term(scaled, p0, delta, x, s), 3.0 * linear_term(mlp_apply, p0, delta, x), rtol=1e-12
    )
    np.testing.assert_allclose(taylor(scaled, p0, 2)(p0, x, s), 3.0 * mlp_apply(p0, x), rtol=1e-12)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = lambda k: nn.Dense(k, param_dtype=jnp.float64)  # noqa: E731
        x = nn.tanh(dense(8)(x))
        x = nn.gelu(dense(8)(x))
        return dense(1)(x)[..., 0]


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 8, param_dtype=jnp.float64, rngs=rngs)
        self.l2 = nnx.Linear(8, 8, param_dtype=jnp.float64, rngs=rngs)
        self.l3 = nnx.Linear(8, 1, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))[..., 0]


def linen_model(x):
    module = LinenMLP()
    return module.apply, jax.jit(module.init)(jax.random.PRNGKey(6), x)


def nnx_model(x):
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(6)))
    return (lambda state, x: nnx.merge(graphdef, state)(x)), state


@pytest.mark.parametrize("build", [linen_model, nnx_model], ids=["linen", "nnx"])
@pytest.mark.slow
def test_flax_mlp_through_its_pure_apply(x64, build):
    rng = np.random.default_rng(2)
    x = normal(rng, (5, 4))
    apply_fn, p0 = build(x)
    delta = random_like(rng, p0)
    f_quad = jaxntk.taylor(apply_fn, p0, 2)
    slope = remainder_slope(
        lambda p: apply_fn(p, x), lambda p: f_quad(p, x), p0, delta, np.geomspace(1e-2, 1e-3, 4)
    )
    assert abs(slope - 3) <= 0.2, slope

    @jax.jit
    def check(model, u, x):
        prep = model.prepare(x)
        generic = (linear_term(apply_fn, p0, u, x), quadratic_term(apply_fn, p0, u, x))
        at_p0 = (f_quad(p0, x), apply_fn(p0, x))
        full = (model.full(u, prep), apply_fn(along(p0, u, 1.0), x))
        return model.linear_and_quadratic(u, prep), generic, at_p0, full

    model_terms, generic_terms, at_p0, full = check(TaylorModel(apply_fn, p0), delta, x)
    np.testing.assert_allclose(model_terms[0], generic_terms[0], rtol=1e-12)
    np.testing.assert_allclose(model_terms[1], generic_terms[1], rtol=1e-12)
    np.testing.assert_allclose(*at_p0, rtol=1e-14)
    np.testing.assert_allclose(*full, rtol=1e-12)


def counting(apply_fn):
    """apply_fn with a count of its Python calls: each trace calls it, a cached program does not."""
    calls = [0]

    def counted(p, x):
        calls[0] += 1
        return apply_fn(p, x)

    return counted, calls


def test_jitted_taylor_does_not_recompile(mlp):
    p0, x, delta = mlp
    counted, calls = counting(mlp_apply)
    f = jax.jit(taylor(counted, p0, 2))
    f(p0, x)
    traced = calls[0]
    assert traced > 0
    f(along(p0, delta, 0.5), x + 1.0)
    assert calls[0] == traced

    # As an argument: new params0 values of the same shapes reuse the compiled program.
    run = jax.jit(lambda f, p, x: f(p, x))
    for scale in (0.0, 0.1, 0.2):
        for order in (1, 2):
            run(taylor(counted, along(p0, delta, scale), order), p0, x)
    assert run._cache_size() == 2


def test_model_in_jit_does_not_recompile(mlp):
    p0, x, delta = mlp
    counted, calls = counting(mlp_apply)

    @jax.jit
    def step(model, u, x):
        prep = model.prepare(x)
        return model.linear_and_quadratic(u, prep), model.linear_term(u, prep), model.full(u, prep)

    step(TaylorModel(counted, p0), delta, x)
    traced = calls[0]
    step(TaylorModel(counted, along(p0, delta, 0.3)), along(delta, delta, 1.0), x - 1.0)
    assert calls[0] == traced and step._cache_size() == 1

    # A prepared input set passed in as an argument is reused without retracing.
    model = TaylorModel(counted, p0)
    prep = model.prepare(x)
    apply_terms = jax.jit(lambda model, u, prep: model.linear_term(u, prep))
    apply_terms(model, delta, prep)
    apply_terms(TaylorModel(counted, along(p0, delta, 0.1)), along(delta, delta, 1.0), prep)
    assert apply_terms._cache_size() == 1


@pytest.mark.parametrize("order", [0, -1, 1.0, True, "2", None])
def test_bad_order_raises(order):
    with pytest.raises(ValueError, match="order"):
        taylor(mlp_apply, {"w": jnp.zeros(2)}, order)


def test_bad_delta_raises(mlp):
    p0, x, delta = mlp
    missing = {k: v for k, v in delta.items() if k != "b3"}
    wrong_shape = {**delta, "w2": jnp.zeros((7, 6), jnp.float64)}
    wrong_dtype = {**delta, "b1": delta["b1"].astype(jnp.float32)}
    for bad in (missing, wrong_shape, wrong_dtype, delta["w1"]):
        for fn in (linear_term, quadratic_term):
            with pytest.raises(ValueError, match="delta"):
                fn(mlp_apply, p0, bad, x)
    with pytest.raises(ValueError, match=r"delta\['w2'\] must have shape \(7, 7\)"):
        linear_term(mlp_apply, p0, wrong_shape, x)
    for order in (1, 2, 3):  # the first-order model and the order-k one name their argument
        with pytest.raises(ValueError, match=r"^params\['w2'\] must have shape \(7, 7\)"):
            taylor(mlp_apply, p0, order)(wrong_shape, x)
    model = TaylorModel(mlp_apply, p0)
    prep = model.prepare(x)
    methods = (model.full, model.linear_term, model.quadratic_term, model.linear_and_quadratic)
    for method in (*methods, lambda v, p: model.taylor_terms(v, p, 3)):
        with pytest.raises(ValueError, match=r"^u must have the tree structure"):
            method(missing, prep)
        with pytest.raises(ValueError, match=r"^u\['b1'\] must have shape"):
            method(wrong_dtype, prep)


def test_apply_fn_must_be_callable():
    with pytest.raises(TypeError, match="apply_fn"):
        linearize(3.0, {"w": jnp.zeros(2)})
