"""Taylor terms of any order: Taylor mode (jet) against nested jvps, finite differences along t and
the t^{k+1} remainder, on a multi-output flax CNN and on the two-layer network (float64); the
closed-form order-k terms of `TwoLayer`; the order-k variants in the trainer and the CLI."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import cli, objectives
from jaxntk.taylor import taylor_terms

ORDERS = (1, 2, 3, 4)
F64 = jnp.float64  # the tests that build these models run with 64-bit floats enabled


class CNN(nn.Module):
    """Two convolutions (tanh, gelu) and a dense layer to 3 outputs: f(params, x) is (n, 3)."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), param_dtype=F64)(x))
        x = nn.gelu(nn.Conv(4, (3, 3), strides=2, param_dtype=F64)(x))
        return nn.Dense(3, param_dtype=F64)(x.reshape(x.shape[0], -1))


class SoftplusMLP(nn.Module):
    """softplus has a custom_jvp rule, which jet cannot expand: it goes through its primal."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, param_dtype=F64)(jax.nn.softplus(nn.Dense(6, param_dtype=F64)(x)))


@pytest.fixture
def cnn(x64):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (2, 6, 6, 1), jnp.float64)
    model = CNN()
    p0 = model.init(key, x)
    delta = jax.tree.map(
        lambda p: 0.3 * jax.random.normal(jax.random.PRNGKey(p.size), p.shape, p.dtype), p0
    )
    return model.apply, p0, delta, x


@pytest.fixture
def two_layer(x64):
    key = jax.random.PRNGKey(1)
    net = jn.TwoLayer.init(key, d=5, m=12, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(2), (7, 5), jnp.float64)
    u = 0.5 * jax.random.normal(jax.random.PRNGKey(3), (12, 5), jnp.float64)
    return net.apply_fn, net.w0, u, x


def _along(apply_fn, p0, delta, x):
    """g(t) = f(p0 + t δ; x) as a numpy function of a float t."""
    return lambda t: np.asarray(apply_fn(jax.tree.map(lambda p, d: p + t * d, p0, delta), x))


def _rel(a, b):
    """max |a − b| / max |b|, and 0 when both are exactly 0 (f(W0) of the symmetric init)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a)))


@pytest.mark.parametrize("which", ["cnn", "two_layer"])
def test_jet_terms_equal_nested_jvps(which, request):
    apply_fn, p0, delta, x = request.getfixturevalue(which)
    jet = taylor_terms(apply_fn, p0, delta, x, order=4)
    ref = taylor_terms(apply_fn, p0, delta, x, order=4, method="jvp")
    assert len(jet) == 5
    for j in range(5):
        assert jet[j].shape == ref[j].shape
        assert _rel(jet[j], ref[j]) <= 1e-10, j
    if which == "cnn":
        assert jet[0].shape == (2, 3)


@pytest.mark.parametrize("which", ["cnn", "two_layer"])
def test_terms_match_finite_differences_along_t(which, request):
    """f_j = g⁽ʲ⁾(0)/j! against central differences of g(t) = f(p0 + tδ) (function values only)."""
    apply_fn, p0, delta, x = request.getfixturevalue(which)
    terms = taylor_terms(apply_fn, p0, delta, x, order=4)
    g = _along(apply_fn, p0, delta, x)
    h = 2e-2
    v = {k: g(k * h) for k in range(-3, 4)}
    # central-difference stencils of order h² (1st, 2nd) and h² (3rd, 4th)
    fd = {
        1: (v[1] - v[-1]) / (2 * h),
        2: (v[1] - 2 * v[0] + v[-1]) / h**2,
        3: (v[2] - 2 * v[1] + 2 * v[-1] - v[-2]) / (2 * h**3),
        4: (v[2] - 4 * v[1] + 6 * v[0] - 4 * v[-1] + v[-2]) / h**4,
    }
    for j, tol in zip(ORDERS, (1e-3, 1e-3, 1e-2, 1e-2), strict=True):
        assert _rel(np.asarray(terms[j]) * math.factorial(j), fd[j]) < tol, j


@pytest.mark.parametrize("which", ["cnn", "two_layer"])
def test_remainder_falls_like_t_to_the_k_plus_1(which, request):
    apply_fn, p0, delta, x = request.getfixturevalue(which)
    terms = [np.asarray(t) for t in taylor_terms(apply_fn, p0, delta, x, order=4)]
    g = _along(apply_fn, p0, delta, x)
    ts = np.geomspace(0.04, 0.2, 6)
    for k in ORDERS:
        rem = [np.max(np.abs(g(t) - sum(t**j * terms[j] for j in range(k + 1)))) for t in ts]
        slope = np.polyfit(np.log(ts), np.log(rem), 1)[0]
        assert abs(slope - (k + 1)) <= 0.2, (k, slope)


def test_custom_jvp_activation_goes_through_its_primal(x64):
    key = jax.random.PRNGKey(4)
    x = jax.random.normal(key, (5, 3), jnp.float64)
    model = SoftplusMLP()
    p0 = model.init(key, x)
    delta = jax.tree.map(jnp.ones_like, p0)
    jet = taylor_terms(model.apply, p0, delta, x, order=4)
    ref = taylor_terms(model.apply, p0, delta, x, order=4, method="jvp")
    for a, b in zip(jet, ref, strict=True):
        assert _rel(a, b) <= 1e-10


def test_order_k_model_is_the_sum_of_its_terms(two_layer):
    apply_fn, p0, delta, x = two_layer
    terms = taylor_terms(apply_fn, p0, delta, x, order=3)
    model3 = jn.taylor(apply_fn, p0, 3)
    np.testing.assert_allclose(model3(p0 + delta, x), sum(terms), rtol=1e-12, atol=1e-14)
    # orders 1 and 2 keep their jvp forms and agree with the terms
    for k in (1, 2):
        np.testing.assert_allclose(
            jn.taylor(apply_fn, p0, k)(p0 + delta, x), sum(terms[: k + 1]), rtol=1e-12, atol=1e-14
        )


def test_two_layer_closed_form_terms_equal_a_numpy_formula(x64):
    """f_j = (1/j!) Σ_r a_r σ⁽ʲ⁾(w0_r·x)(u_r·x)ʲ with σ = sigmoid(z − 1), σ⁽ʲ⁾ by hand in numpy."""
    net = jn.TwoLayer.init(jax.random.PRNGKey(5), d=4, m=10, dtype=jnp.float64)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(6), (6, 4), jnp.float64))
    u = np.asarray(0.4 * jax.random.normal(jax.random.PRNGKey(7), (10, 4), jnp.float64))
    s = 1 / (1 + np.exp(-(x @ np.asarray(net.w0).T - 1)))
    # derivatives of the logistic function as polynomials in s
    ds = {
        1: s * (1 - s),
        2: s * (1 - s) * (1 - 2 * s),
        3: s * (1 - s) * (1 - 6 * s + 6 * s**2),
        4: s * (1 - s) * (1 - 2 * s) * (1 - 12 * s + 12 * s**2),
        5: s * (1 - s) * (1 - 30 * s + 150 * s**2 - 240 * s**3 + 120 * s**4),
    }
    z = x @ u.T
    a = np.asarray(net.a)
    closed = net.taylor_terms(jnp.asarray(u), net.prepare(jnp.asarray(x)), 5)
    assert len(closed) == 5
    for j in range(1, 6):
        want = (ds[j] * z**j) @ a / math.factorial(j)
        np.testing.assert_allclose(closed[j - 1], want, rtol=1e-10, atol=1e-14)


def test_generic_and_closed_form_order_k_terms_agree(x64):
    net = jn.TwoLayer.init(jax.random.PRNGKey(8), d=4, m=8, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(9), (5, 4), jnp.float64)
    u = 0.3 * jax.random.normal(jax.random.PRNGKey(10), (8, 4), jnp.float64)
    generic = jn.TaylorModel(net.apply_fn, net.w0)
    a = generic.taylor_terms(u, generic.prepare(x), 4)
    b = net.taylor_terms(u, net.prepare(x), 4)
    for ga, cb in zip(a, b, strict=True):
        np.testing.assert_allclose(ga, cb, rtol=1e-10, atol=1e-14)


def test_bad_order_and_method_raise():
    f = jn.TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
    x = jnp.ones((2, 3))
    for order in (0, -2, 1.5, True, "3"):
        with pytest.raises(ValueError, match="order"):
            taylor_terms(f.apply_fn, f.w0, f.w0, x, order=order)
    with pytest.raises(ValueError, match="method"):
        taylor_terms(f.apply_fn, f.w0, f.w0, x, order=2, method="fd")
    with pytest.raises(ValueError, match="unknown variant"):
        objectives.get_variant("taylor-x")
    with pytest.raises(ValueError, match="unknown variant"):
        objectives.get_variant("taylor-2")


def test_order_k_variants_train_alike_on_both_paths(x64):
    """taylor-3 trains the same U on the closed form and on the generic path, and the loss it
    reports is that of f0 + f_1 + f_2 + f_3 computed in numpy from the final U."""
    key = jax.random.PRNGKey(11)
    task = jn.paper_task(key, d=5, n=12, n_test=16, dtype=jnp.float64)
    net = jn.TwoLayer.init(key, d=5, m=8, dtype=jnp.float64)
    kw = dict(steps=30, lr=0.5, eval_every=30, progress=False)
    closed = jn.train(net, task, "taylor-3", **kw)
    generic = jn.train(jn.TaylorModel(net.apply_fn, net.w0), task, "taylor-3", **kw)
    np.testing.assert_allclose(closed.params, generic.params, rtol=1e-9, atol=1e-12)
    u = np.asarray(closed.params[0, 0])
    terms = taylor_terms(net.apply_fn, net.w0, jnp.asarray(u), task.x_test, order=3, method="jvp")
    want = np.mean((np.asarray(task.y_test) - np.asarray(sum(terms))) ** 2)
    np.testing.assert_allclose(closed.final["test_loss"][0, 0], want, rtol=1e-9)
    assert closed.history["train_loss"][0, 0, -1] < closed.history["train_loss"][0, 0, 0]


def test_cli_order_flag_trains_the_order_k_model(tmp_path, capsys):
    common = ["--d", "5", "--n", "10", "--m", "8", "--steps", "20", "--quiet"]
    assert cli.main(["train", "--order", "3", *common, "--out", str(tmp_path / "o3")]) == 0
    assert cli.main(["train", "--order", "2", *common, "--out", str(tmp_path / "o2")]) == 0
    o3 = json.loads((tmp_path / "o3" / "run.json").read_text())
    o2 = json.loads((tmp_path / "o2" / "run.json").read_text())
    assert o3["config"]["variant"] == "taylor-3"
    assert o2["config"]["variant"] == "ntk+quadntk"
    assert o3["final"]["test_loss"] != o2["final"]["test_loss"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--order", "3", "--variant", "ntk", *common, "--out", str(tmp_path)])


def test_no_recompilation_for_new_values_of_the_same_shapes():
    """taylor(…, order=3) is a pytree: new params0 and inputs of the same shapes reuse the program,
    and params0 is an argument of the compiled function, not a constant baked into it."""

    @jax.jit
    def evaluate(model, params, x):
        return model(params, x)

    shapes = []
    for seed in range(3):
        net = jn.TwoLayer.init(jax.random.PRNGKey(seed), d=4, m=6)
        x = jax.random.normal(jax.random.PRNGKey(10 + seed), (5, 4))
        model = jn.taylor(net.apply_fn, net.w0, 3)
        out = evaluate(model, net.w0 + 0.1, x)
        shapes.append(out.shape)
        # the value follows the new params0: the sum of the terms along δ = 0.1
        terms = taylor_terms(net.apply_fn, net.w0, jnp.full_like(net.w0, 0.1), x, order=3)
        np.testing.assert_allclose(out, sum(terms), rtol=1e-5, atol=1e-6)
    assert shapes == [(5,)] * 3
    assert evaluate._cache_size() == 1
    lowered = evaluate.lower(model, net.w0, x).as_text()
    signature = next(line for line in lowered.splitlines() if "func.func public @main" in line)
    # a (6,), params0 (6, 4), params (6, 4), x (5, 4): all arguments, none a baked-in constant
    assert signature.count("tensor<6x4xf32>") == 2 and "tensor<6xf32>" in signature
