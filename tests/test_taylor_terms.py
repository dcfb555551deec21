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
@pytest.mark.slow
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
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_a_primitive_without_taylor_rule_falls_back_to_nested_jvps(x64):
    """A while loop has no Taylor rule: "auto" falls back to nested jvps, "jet" says so."""

    def f(w, x):
        def body(carry):
            i, acc = carry
            return i + 1, acc + jnp.sin(x @ w) * i

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, jnp.zeros(x.shape[0])))[1]

    w0, x, delta = jnp.array([0.2, -0.4]), jnp.ones((3, 2)), jnp.array([1.0, 0.5])
    auto = taylor_terms(f, w0, delta, x, order=3)
    ref = taylor_terms(f, w0, delta, x, order=3, method="jvp")
    # by hand: f = 3 sin(s), s = x·w, ds = x·δ = 1.5; f_j = 3 sin⁽ʲ⁾(s) dsʲ / j!
    s, ds = -0.2, 1.5
    want = [
        3 * np.sin(s),
        3 * np.cos(s) * ds,
        -3 * np.sin(s) * ds**2 / 2,
        -3 * np.cos(s) * ds**3 / 6,
    ]
    for a, b, w in zip(auto, ref, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
        np.testing.assert_allclose(a, np.full(3, w), rtol=1e-12)
    with pytest.raises(NotImplementedError, match="while"):
        taylor_terms(f, w0, delta, x, order=3, method="jet")


# ---- hoisting: TaylorModel.prepare splits the terms into a params0/x part and a δ part ----

TRANSCENDENTAL = {"tanh", "erf", "exp", "logistic", "log", "log1p", "expm1", "sin", "cos"}


def _recomputing(apply_fn, p0):
    return jn.TaylorModel(apply_fn, p0, max_residual_bytes=0)


@pytest.mark.parametrize("which", ["cnn", "two_layer"])
@pytest.mark.slow
def test_hoisted_terms_equal_the_unhoisted_path_and_nested_jvps(which, request):
    """prepare(x, 4) then the hoisted program: every term of order 1-4 and its gradient equal
    the terms recomputed in full (≤ 1e-12) and the nested-jvp reference (≤ 1e-10)."""
    apply_fn, p0, delta, x = request.getfixturevalue(which)
    model = jn.TaylorModel(apply_fn, p0)
    prep = model.prepare(x, order=4)
    assert prep.terms is not None
    with pytest.warns(UserWarning, match="recomputes"):
        prep_full = _recomputing(apply_fn, p0).prepare(x, order=4)
    assert prep_full.terms is None
    hoisted = model.taylor_terms(delta, prep, 4)
    full = _recomputing(apply_fn, p0).taylor_terms(delta, prep_full, 4)
    ref = taylor_terms(apply_fn, p0, delta, x, order=4, method="jvp")[1:]
    for j in range(4):
        assert _rel(hoisted[j], full[j]) <= 1e-12
        assert _rel(hoisted[j], ref[j]) <= 1e-10
    # lower orders from the same program (its higher outputs unused)
    f_lin, f_quad = model.linear_and_quadratic(delta, prep)
    assert _rel(f_lin, ref[0]) <= 1e-10 and _rel(f_quad, ref[1]) <= 1e-10

    def energy(m, p):
        return lambda d: sum(jnp.sum(t**2) for t in m.taylor_terms(d, p, 4))

    g_hoisted = jax.grad(energy(model, prep))(delta)
    g_full = jax.grad(energy(_recomputing(apply_fn, p0), prep_full))(delta)
    for a, b in zip(jax.tree.leaves(g_hoisted), jax.tree.leaves(g_full), strict=True):
        assert _rel(a, b) <= 1e-12


@pytest.mark.parametrize("which", ["cnn", "two_layer"])
def test_hoisted_program_evaluates_no_activation(which, request):
    """Everything that depends on params0 and x alone is a residual: the step's program never
    evaluates an activation (tanh, gelu's erf/tanh), only products with the stored factors."""
    apply_fn, p0, _, x = request.getfixturevalue(which)
    prep = jn.TaylorModel(apply_fn, p0).prepare(x, order=3)
    names = {prim.name for prim, *_ in prep.terms.func.program._instructions}
    assert "dot_general" in names or "conv_general_dilated" in names
    assert not names & TRANSCENDENTAL


def _primitives(jaxpr) -> set[str]:
    """Every primitive of a jaxpr, sub-jaxprs (pjit, custom rules, ...) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr
                if hasattr(sub, "eqns"):
                    names |= _primitives(sub)
    return names


def test_prepared_terms_are_read_where_they_reach_the_order_asked(two_layer):
    """f_Q, f_L + f_Q and the terms up to the prepared order read the hoisted factors: no
    activation is evaluated; asking for a higher order than prepared recomputes (and does
    evaluate it), with the same values."""
    apply_fn, w0, u, x = two_layer
    model = jn.TaylorModel(apply_fn, w0)
    prep = model.prepare(x, order=2)

    def used(fn, *args):
        return _primitives(jax.make_jaxpr(fn)(u, prep, *args).jaxpr)

    assert not used(model.quadratic_term) & TRANSCENDENTAL
    assert not used(model.linear_and_quadratic) & TRANSCENDENTAL
    assert not used(lambda v, p: model.taylor_terms(v, p, 2)) & TRANSCENDENTAL
    assert used(lambda v, p: model.taylor_terms(v, p, 3)) & TRANSCENDENTAL
    ref = taylor_terms(apply_fn, w0, u, x, order=3, method="jvp")
    got = model.taylor_terms(u, prep, 3)
    for k in (1, 2, 3):
        assert _rel(got[k - 1], ref[k]) <= 1e-12


def test_an_oversized_budget_is_refused_before_the_residuals_are_computed(two_layer, monkeypatch):
    """Outside jit `prepare` sizes the residuals from shapes first: over the budget it never runs
    the partial evaluation that would allocate them."""
    from jaxntk import _staging

    apply_fn, w0, _, x = two_layer

    stage, calls = _staging.stage, []

    def recorded(fn, known, unknown):
        calls.append(any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(known)))
        return stage(fn, known, unknown)

    monkeypatch.setattr(_staging, "stage", recorded)
    with pytest.warns(UserWarning, match="recomputes"):
        assert jn.TaylorModel(apply_fn, w0, max_residual_bytes=100).prepare(x).terms is None
    assert calls == [True]  # sized on abstract values (`residual_bytes`), never run on x
    calls.clear()
    assert jn.TaylorModel(apply_fn, w0).prepare(x).terms is not None
    assert calls == [True, False]  # within the budget: sized, then run on the arrays


def test_a_partial_apply_fn_is_kept_as_given(two_layer):
    """A `jax.tree_util.Partial` is the model's apply_fn as it is (a plain function is wrapped
    once), so models built from one Partial share its identity and their compilations."""
    apply_fn, w0, _, _ = two_layer

    def plain(w, x):
        return apply_fn(w, x)

    partial = jax.tree_util.Partial(plain)
    assert jn.TaylorModel(partial, w0).apply_fn is partial
    wrapped = jn.TaylorModel(plain, w0).apply_fn
    assert isinstance(wrapped, jax.tree_util.Partial) and wrapped.func is plain


def test_two_layer_residuals_are_the_closed_form_factors(two_layer):
    """For f = Σ_r a_r σ(w_r·x)/√m the order-k residuals are σ⁽ʲ⁾(X W0ᵀ)/j!, j = 1..k (k arrays of
    n·m numbers), the m output weights and X broadcast over the two halves of the neurons (2·n·d):
    (k·n·m + m + 2·n·d) float64 numbers, the closed form's constants; `residual_bytes` says so
    from shapes, and the prepared residuals hold that much."""
    apply_fn, w0, _, x = two_layer
    (n, d), m = x.shape, w0.shape[0]
    model = jn.TaylorModel(apply_fn, w0)
    for k in (2, 3, 4):
        want = (k * n * m + m + 2 * n * d) * 8
        assert model.residual_bytes(x, order=k) == want
        prep = model.prepare(x, order=k)
        inputs = {id(a) for a in jax.tree.leaves((w0, x))}
        held = sum(a.size * a.dtype.itemsize for a in prep.terms.args[0] if id(a) not in inputs)
        assert held == want == prep.terms.func.program.residual_bytes
    # the factors themselves: σ'(X W0ᵀ) among the residuals, checked against numpy
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=5, m=12, dtype=jnp.float64)
    d1 = np.asarray(net.sigma.d1(np.asarray(x) @ np.asarray(w0).T))
    stored = [np.asarray(a) for a in model.prepare(x, order=2).terms.args[0] if a.size == n * m]
    assert any(np.allclose(np.sort(s.ravel()), np.sort(d1.ravel()), rtol=1e-14) for s in stored)


def test_residual_budget_falls_back_with_a_warning(two_layer):
    apply_fn, w0, u, x = two_layer
    model = jn.TaylorModel(apply_fn, w0, max_residual_bytes=100)
    with pytest.warns(UserWarning, match=r"order-2 terms' residuals take .* MiB.*recomputes"):
        prep = model.prepare(x, order=2)
    assert prep.terms is None
    ref = taylor_terms(apply_fn, w0, u, x, order=2, method="jvp")
    assert _rel(model.quadratic_term(u, prep), ref[2]) <= 1e-12
    # order 1 keeps only the linear map: nothing to warn about
    assert jn.TaylorModel(apply_fn, w0, max_residual_bytes=0).prepare(x, order=1).terms is None
    for bad in (-1, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="max_residual_bytes"):
            jn.TaylorModel(apply_fn, w0, max_residual_bytes=bad)
    with pytest.raises(ValueError, match="order must be ≥ 2"):
        model.residual_bytes(x, order=1)


@pytest.mark.parametrize("variant", ["quadntk", "ntk+quadntk", "taylor-3"])
@pytest.mark.slow
def test_training_on_hoisted_terms_equals_recomputing_them(x64, variant):
    """The trainer's prepare hoists; the run equals the recomputing one to 1e-12 (float64)."""
    key = jax.random.PRNGKey(5)
    task = jn.paper_task(key, d=4, n=10, n_test=12, dtype=jnp.float64)
    net = jn.TwoLayer.init(key, d=4, m=6, dtype=jnp.float64)
    kw = dict(steps=15, lr=0.5, eval_every=5, progress=False)
    hoisted = jn.train(jn.TaylorModel(net.apply_fn, net.w0), task, variant, **kw)
    with pytest.warns(UserWarning, match="recomputes"):
        full = jn.train(_recomputing(net.apply_fn, net.w0), task, variant, **kw)
    np.testing.assert_allclose(hoisted.params, full.params, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        hoisted.history["train_loss"], full.history["train_loss"], rtol=1e-12
    )
    assert not np.allclose(hoisted.params, 0.0)
