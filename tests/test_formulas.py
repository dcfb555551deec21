"""Every variant, regularizer and logged metric against its formula, in float64, on a fixed U.

The expected values are computed here in plain numpy from docs/science.md §3 and §5 (the network's
forward pass, its Taylor terms, the feature matrix J and its SVD), never by the function under
test, so that a wrong prediction, a missing factor or a dropped setting fails a test.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import objectives

D, N, M, N_TEST = 4, 16, 10, 30
KEY0 = jax.random.PRNGKey(0)


def _sigma(z, order=0):
    """shifted_sigmoid σ(z) = 1/(1 + e^{1−z}) and its first four derivatives, in numpy
    (the logistic function's derivatives as polynomials in s = σ)."""
    s = 1.0 / (1.0 + np.exp(1.0 - z))
    return (
        s,
        s * (1 - s),
        s * (1 - s) * (1 - 2 * s),
        s * (1 - s) * (1 - 6 * s + 6 * s**2),
        s * (1 - s) * (1 - 2 * s) * (1 - 12 * s + 12 * s**2),
    )[order]


def _np_taylor_sum(w0, a, u, x, k):
    """f_1 + … + f_k, f_j = (1/j!) Σ_r a_r σ⁽ʲ⁾(w0_r·x)(u_r·x)ʲ."""
    return sum(
        a[r] * _sigma(x @ w0[r], j) * (x @ u[r]) ** j / math.factorial(j)
        for j in range(1, k + 1)
        for r in range(w0.shape[0])
    )


def _np_net(net):
    return np.asarray(net.w0, np.float64), np.asarray(net.a, np.float64)


def _np_forward(w, a, x):
    """f(x; W) = Σ_r a_r σ(w_r · x), a loop over neurons."""
    return sum(a[r] * _sigma(x @ w[r]) for r in range(w.shape[0]))


def _np_terms(w0, a, u, x):
    """(f_L, f_Q) = (Σ_r a_r σ'(w0_r·x)(u_r·x), ½ Σ_r a_r σ''(w0_r·x)(u_r·x)²)."""
    fl = sum(a[r] * _sigma(x @ w0[r], 1) * (x @ u[r]) for r in range(w0.shape[0]))
    fq = sum(0.5 * a[r] * _sigma(x @ w0[r], 2) * (x @ u[r]) ** 2 for r in range(w0.shape[0]))
    return fl, fq


def _np_features(w0, a, x):
    """J[i, (r, j)] = ∂f_L(x_i; U)/∂U_rj = a_r σ'(w0_r·x_i) x_ij, (n, m·d)."""
    return (a[None, :, None] * _sigma(x @ w0.T, 1)[:, :, None] * x[:, None, :]).reshape(len(x), -1)


def _np_norm24(u):
    return float(np.sum(np.sum(u**2, axis=1) ** 2) ** 2)


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M, dtype=jnp.float64)
        task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=N_TEST, dtype=jnp.float64)
        u = 0.4 * jax.random.normal(jax.random.PRNGKey(2), (M, D), jnp.float64)
    return net, task, u


@pytest.mark.slow
def test_two_layer_forward_pass_at_u_not_zero_matches_numpy(problem, x64):
    net, task, u = problem
    w0, a = _np_net(net)
    x = np.asarray(task.x_train)
    want = _np_forward(w0 + np.asarray(u), a, x)
    assert np.abs(want).max() > 0.05  # not the zero output of the symmetric init
    np.testing.assert_allclose(net.apply(net.w0 + u, task.x_train), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.apply(net.w0 + u, task.x_train[3]), want[3], rtol=1e-12)
    np.testing.assert_allclose(net.full(u, net.prepare(task.x_train)), want, rtol=1e-12)
    fl, fq = _np_terms(w0, a, np.asarray(u), x)
    prep = net.prepare(task.x_train)
    np.testing.assert_allclose(net.linear_term(u, prep), fl, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.quadratic_term(u, prep), fq, rtol=1e-12, atol=1e-14)


def _expected_prediction(variant, w0, a, u, x):
    fl, fq = _np_terms(w0, a, u, x)
    return {
        "full": _np_forward(w0 + u, a, x),
        "ntk": fl,
        "quadntk": fq,
        "randomized": 0.5 * (_np_forward(w0 + u, a, x) + _np_forward(w0 - u, a, x)),
        "ntk+quadntk": fl + fq,
        "regularized": fl + fq,
        "taylor-3": _np_taylor_sum(w0, a, u, x, 3),
        "taylor-4": _np_taylor_sum(w0, a, u, x, 4),
    }[variant]


@pytest.mark.parametrize("variant", list(objectives.VARIANTS))
def test_every_variant_predicts_its_formula(problem, x64, variant):
    """`predict` (evaluation) and `train_predict` (the loss) of each row of the table in
    docs/science.md §5, on a fixed U; the randomized training prediction is f(W0 + S U) for
    one of the 2^m sign patterns S, a different one for different keys."""
    net, task, u = problem
    w0, a = _np_net(net)
    un, x = np.asarray(u), np.asarray(task.x_train)
    v = objectives.VARIANTS[variant]
    prep = net.prepare(task.x_train)
    want = _expected_prediction(variant, w0, a, un, x)
    others = {
        _expected_prediction(o, w0, a, un, x).tobytes() for o in objectives.VARIANTS if o != variant
    }
    np.testing.assert_allclose(v.predict(net, u, prep), want, rtol=1e-12, atol=1e-14)
    if variant != "randomized":
        got = v.train_predict(net, u, prep, jax.random.PRNGKey(0))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        return
    assert want.tobytes() not in others
    seen = set()
    for seed in range(8):
        got = np.asarray(v.train_predict(net, u, prep, jax.random.PRNGKey(seed)))
        signs = np.asarray(objectives.random_signs(jax.random.PRNGKey(seed), jnp.ones((M, 1))))
        assert set(np.unique(signs).tolist()) <= {-1.0, 1.0}
        np.testing.assert_allclose(got, _np_forward(w0 + signs * un, a, x), rtol=1e-12)
        seen.add(tuple(signs[:, 0]))
    assert len(seen) > 1


def _generic_model():
    """f(x; p) = tanh(x w) v + b: f(x; p0) ≠ 0, so the variants' f0 term is visible."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
    p0 = {
        "w": jax.random.normal(k1, (D, 6), jnp.float64) / np.sqrt(D),
        "v": jax.random.normal(k2, (6,), jnp.float64) / 2.0,
        "b": jnp.asarray(0.7, jnp.float64),
    }
    du = jax.tree_util.tree_map(
        lambda leaf: 0.3 * jax.random.normal(k3, leaf.shape, jnp.float64), p0
    )
    return lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"] + p["b"], p0, du


def _np_generic(p, du, x):
    """(f0, f_L, f_Q, f(p0 + δ), f(p0 − δ)) of tanh(x w) v + b, by hand."""
    w, v, b = (np.asarray(p[k]) for k in ("w", "v", "b"))
    dw, dv, db = (np.asarray(du[k]) for k in ("w", "v", "b"))
    z, dz = x @ w, x @ dw
    t = np.tanh(z)
    t1 = 1 - t**2
    t2 = -2 * t * t1
    fl = (t1 * dz) @ v + t @ dv + db
    fq = 0.5 * ((t2 * dz**2) @ v + 2 * (t1 * dz) @ dv)
    return (
        t @ v + b,
        fl,
        fq,
        np.tanh(x @ (w + dw)) @ (v + dv) + b + db,
        np.tanh(x @ (w - dw)) @ (v - dv) + b - db,
    )


@pytest.mark.slow
def test_every_variant_keeps_f0_of_a_generic_model(problem, x64):
    _, task, _ = problem
    apply_fn, p0, du = _generic_model()
    model = jn.TaylorModel(apply_fn, p0)
    x = np.asarray(task.x_train)
    f0, fl, fq, plus, minus = _np_generic(p0, du, x)
    assert np.abs(f0).mean() > 0.1
    want = {
        "full": plus,
        "ntk": f0 + fl,
        "quadntk": f0 + fq,
        "randomized": 0.5 * (plus + minus),
        "ntk+quadntk": f0 + fl + fq,
        "regularized": f0 + fl + fq,
    }
    prep = model.prepare(task.x_train)
    for name in objectives.PAPER_VARIANTS:  # the taylor-k rows: tests/test_taylor_terms.py
        v = objectives.VARIANTS[name]
        np.testing.assert_allclose(v.predict(model, du, prep), want[name], rtol=1e-12)
        if name != "randomized":
            got = v.train_predict(model, du, prep, jax.random.PRNGKey(0))
            np.testing.assert_allclose(got, want[name], rtol=1e-12, err_msg=name)


def _np_top_k(j, k):
    """Left and right top-k singular vectors of J, from numpy's SVD."""
    left, _, right_t = np.linalg.svd(j, full_matrices=False)
    return left[:, :k], right_t[:k].T


def _np_bulk_and_pop(net, task, u, k, x_pop):
    """R_bulk = mean(((I − U_k U_kᵀ) J u)²) and R_pop = mean((J_pop (I − V_k V_kᵀ) u)²)."""
    w0, a = _np_net(net)
    un = np.asarray(u).reshape(-1)
    j = _np_features(w0, a, np.asarray(task.x_train))
    left, right = _np_top_k(j, k)
    f = j @ un
    bulk = np.mean((f - left @ (left.T @ f)) ** 2)
    good = un - right @ (right.T @ un)
    pop = np.mean((_np_features(w0, a, np.asarray(x_pop)) @ good) ** 2)
    return float(bulk), float(pop)


@pytest.mark.parametrize("variant", list(objectives.VARIANTS))
@pytest.mark.slow
def test_evaluate_logs_every_metric_by_its_formula(problem, x64, variant):
    """train/test loss, ‖U‖, the f_L and f_Q shares of each target part, R_bulk, R_pop, R_24."""
    net, task, u = problem
    w0, a = _np_net(net)
    un = np.asarray(u)
    k = 3
    dirs = jn.spectral.good_directions(net, net.prepare(task.x_train), k)
    data = objectives.Data(
        net,
        task.x_train,
        task.x_test,
        task.y_train,
        task.y_test,
        task.parts_test,
        dirs,
        task.x_test[:20],
    )
    obj = objectives.VariantObjective(variant)
    hyper = {n: jnp.asarray(0.0) for n in ("bulk", "pop", "norm24")}
    got = obj.evaluate(u, obj.prepare(data), hyper)

    x_tr, x_te = np.asarray(task.x_train), np.asarray(task.x_test)
    y_tr, y_te = np.asarray(task.y_train), np.asarray(task.y_test)
    fl, fq = _np_terms(w0, a, un, x_te)
    parts = np.asarray(task.parts_test)
    bulk, pop = _np_bulk_and_pop(net, task, u, k, task.x_test[:20])
    want = {
        "train_loss": np.mean((y_tr - _expected_prediction(variant, w0, a, un, x_tr)) ** 2),
        "test_loss": np.mean((y_te - _expected_prediction(variant, w0, a, un, x_te)) ** 2),
        "u_norm": np.sqrt(np.sum(un**2)),
        "share_linear": [p @ fl / (p @ p) for p in parts],
        "share_quadratic": [p @ fq / (p @ p) for p in parts],
        "bulk": bulk,
        "pop": pop,
        "norm24": _np_norm24(un),
    }
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("variant", list(objectives.VARIANTS))
def test_training_loss_is_mse_plus_weighted_regularizers(problem, x64, variant):
    """The loss of every variant on a fixed U: its training prediction's MSE + 0.7 R_bulk +
    0.3 R_24; for "randomized" the MSE of f(W0 + S U) for one of the 2^m sign patterns S,
    another one for another key."""
    net, task, u = problem
    w0, a = _np_net(net)
    un = np.asarray(u)
    k = 2
    dirs = jn.spectral.good_directions(net, net.prepare(task.x_train), k)
    data = objectives.Data(
        net, task.x_train, task.x_test, task.y_train, task.y_test, task.parts_test, dirs
    )
    obj = objectives.VariantObjective(variant, use_bulk=True, use_norm24=True)
    hyper = {"bulk": jnp.asarray(0.7), "pop": jnp.asarray(0.0), "norm24": jnp.asarray(0.3)}
    total, parts = obj.loss(u, obj.prepare(data), hyper, KEY0)
    x, y = np.asarray(task.x_train), np.asarray(task.y_train)
    bulk, _ = _np_bulk_and_pop(net, task, u, k, task.x_test)
    r24 = _np_norm24(un)
    if variant == "randomized":
        signs = np.array(list(itertools.product([-1.0, 1.0], repeat=M)))
        every = [np.mean((y - _np_forward(w0 + s[:, None] * un, a, x)) ** 2) for s in signs]
        mse = min(every, key=lambda v: abs(v - float(parts["mse"])))
        other = obj.loss(u, obj.prepare(data), hyper, jax.random.PRNGKey(1))[1]["mse"]
        assert float(other) != float(parts["mse"])
    else:
        mse = np.mean((y - _expected_prediction(variant, w0, a, un, x)) ** 2)
    np.testing.assert_allclose(parts["mse"], mse, rtol=1e-12)
    np.testing.assert_allclose(parts["bulk"], bulk, rtol=1e-9)
    np.testing.assert_allclose(parts["norm24"], r24, rtol=1e-12)
    np.testing.assert_allclose(total, mse + 0.7 * bulk + 0.3 * r24, rtol=1e-9)


def test_norm24_penalty_is_the_square_of_the_sum_of_fourth_powers(x64):
    u = np.arange(12.0).reshape(4, 3) / 10 - 0.5
    # rows: |u_r|² = 0.5, 0.05, 0.14, 0.77 → Σ |u_r|⁴ = 0.8650, squared
    assert _np_norm24(u) == pytest.approx(0.8650**2, rel=1e-12)
    assert float(objectives.norm24_penalty(jnp.asarray(u))) == pytest.approx(0.8650**2, rel=1e-12)
    tree = {"w": jnp.asarray(u), "b": jnp.asarray([2.0, 0.0])}  # rows of b: scalars 2 and 0
    assert float(objectives.norm24_penalty(tree)) == pytest.approx((0.8650 + 16.0) ** 2, rel=1e-12)


def test_from_sum_scale_multiplies_the_sum_weight_by_n():
    reg = jn.Regularizer.from_sum_scale(1e-3, n=1000, k=3, norm24=0.5)
    assert reg.bulk == pytest.approx(1.0, rel=1e-12)
    assert (reg.k, reg.norm24, reg.pop) == (3, 0.5, 0.0)
    sweep = jn.Regularizer.from_sum_scale([0.0, 1e-3, 2e-2], n=50)
    np.testing.assert_allclose(sweep.bulk, [0.0, 0.05, 1.0], rtol=1e-12)
    np.testing.assert_allclose(sweep.weights()["bulk"], [0.0, 0.05, 1.0], rtol=1e-12)


@pytest.mark.parametrize("k", [2, None])
@pytest.mark.slow
def test_k_reaches_training_and_the_logged_penalties(problem, x64, k):
    """R_bulk and R_pop logged by `train` use the top-k directions of the given k (default d)."""
    net, task, _ = problem
    run = jn.train(
        net,
        task,
        "regularized",
        reg=jn.Regularizer(bulk=1.0, k=k),
        steps=3,
        lr=0.5,
        eval_every=3,
        init_scale=0.3,
        progress=False,
    )
    u = run.params[0, 0]
    bulk, pop = _np_bulk_and_pop(net, task, u, D if k is None else k, task.x_test)
    other_bulk, _ = _np_bulk_and_pop(net, task, u, D if k is not None else 2, task.x_test)
    assert abs(bulk - other_bulk) > 0.1 * bulk  # the two k tell apart
    np.testing.assert_allclose(run.final["bulk"][0, 0], bulk, rtol=1e-8)
    np.testing.assert_allclose(run.final["pop"][0, 0], pop, rtol=1e-8)
    np.testing.assert_allclose(run.final["norm24"][0, 0], _np_norm24(np.asarray(u)), rtol=1e-10)


@pytest.mark.parametrize("method", ["gram", "matrix_free"])
@pytest.mark.slow
def test_track_directions_logs_the_penalties_of_an_unregularized_run(problem, x64, method):
    net, task, _ = problem
    kw = dict(steps=2, lr=0.5, eval_every=2, init_scale=0.3, progress=False)
    plain = jn.train(net, task, "ntk", **kw)
    assert "bulk" not in plain.history and "pop" not in plain.history
    run = jn.train(net, task, "ntk", track_directions=True, subspace_method=method, **kw)
    np.testing.assert_array_equal(run.params, plain.params)  # logging only: same trajectory
    bulk, pop = _np_bulk_and_pop(net, task, run.params[0, 0], D, task.x_test)
    np.testing.assert_allclose(run.final["bulk"][0, 0], bulk, rtol=1e-7)
    np.testing.assert_allclose(run.final["pop"][0, 0], pop, rtol=1e-7)


def _np_ntk_gradient(j, y, u):
    """∇_u (1/n)‖y − J u‖² = −(2/n) Jᵀ(y − J u)."""
    return -2.0 / len(y) * j.T @ (y - j @ u)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.slow
def test_named_optimizers_follow_their_update_rules(problem, x64, optimizer):
    """The ntk variant from U = 0, four steps, against each update rule written in numpy:
    sgd u −= η g; momentum (heavy ball, 0.9) t = g + 0.9 t, u −= η t; adam (0.9, 0.999, 1e-8)
    with bias correction."""
    net, task, _ = problem
    w0, a = _np_net(net)
    j = _np_features(w0, a, np.asarray(task.x_train))
    y = np.asarray(task.y_train)
    lr, steps = 0.25, 4
    u, t, m1, m2 = (np.zeros(j.shape[1]) for _ in range(4))
    for i in range(1, steps + 1):
        g = _np_ntk_gradient(j, y, u)
        if optimizer == "sgd":
            u = u - lr * g
        elif optimizer == "momentum":
            t = g + 0.9 * t
            u = u - lr * t
        else:
            m1 = 0.9 * m1 + 0.1 * g
            m2 = 0.999 * m2 + 0.001 * g**2
            mhat, vhat = m1 / (1 - 0.9**i), m2 / (1 - 0.999**i)
            u = u - lr * mhat / (np.sqrt(vhat) + 1e-8)
    # optax's adam raises its decay to an int32 step count: not allowed by the tests' strict
    # dtype promotion (conftest.py), allowed by JAX's default
    with jax.numpy_dtype_promotion("standard" if optimizer == "adam" else "strict"):
        run = jn.train(
            net,
            task,
            "ntk",
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            eval_every=steps,
            progress=False,
        )
    np.testing.assert_allclose(run.params[0, 0].reshape(-1), u, rtol=1e-9, atol=1e-13)


@pytest.mark.slow
def test_initial_u_has_rows_of_norm_init_scale(x64):
    """Entries N(0, s²/d): E‖u_r‖² = s², so ‖U‖²/(m s²) ~ χ²_{md}/(md), within 5 of its standard
    deviations √(2/(md)) of 1; 0 gives U = 0, and quadntk's default scale is 0.1."""
    m, d = 400, 10
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=d, m=m, dtype=jnp.float64)
    data = objectives.Data(net, *(None,) * 5)
    for scale in (0.5, 0.05):
        u = np.asarray(objectives.VariantObjective("ntk", init_scale=scale).init(KEY0, data))
        ratio = np.sum(u**2) / (m * scale**2)
        assert abs(ratio - 1) < 5 * math.sqrt(2 / (m * d)), (scale, ratio)
        assert abs(np.mean(u)) < 5 * scale / math.sqrt(m * d)
    zero = objectives.VariantObjective("ntk").init(KEY0, data)
    np.testing.assert_array_equal(zero, np.zeros((m, d)))


@pytest.mark.slow
def test_init_scale_reaches_training(problem, x64):
    net, task, _ = problem
    kw = dict(steps=1, lr=0.25, eval_every=1, progress=False)
    norm0 = {
        s: jn.train(net, task, "ntk", init_scale=s, **kw).history["u_norm"][0, 0, 0]
        for s in (0.0, 0.2, 0.4)
    }
    assert norm0[0.0] == 0.0 and norm0[0.2] > 0
    assert norm0[0.4] == pytest.approx(2 * norm0[0.2], rel=1e-12)  # same draw, twice the scale
    quad = jn.train(net, task, "quadntk", **kw).history["u_norm"][0, 0, 0]
    quad_01 = jn.train(net, task, "quadntk", init_scale=0.1, **kw).history["u_norm"][0, 0, 0]
    assert quad == quad_01 > 0


def test_regularizer_weights_broadcast_and_validate():
    w = jn.Regularizer(bulk=[0.0, 1.0, 2.0], norm24=0.5).weights()
    assert set(w) == {"bulk", "pop", "norm24"}
    np.testing.assert_array_equal(w["bulk"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(w["pop"], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(w["norm24"], [0.5, 0.5, 0.5])
    assert all(v.dtype == np.float64 for v in w.values())
    np.testing.assert_array_equal(jn.Regularizer(pop=[0, 3]).weights()["pop"], [0.0, 3.0])
    np.testing.assert_array_equal(jn.Regularizer().weights()["bulk"], [0.0])
    for bad in (dict(bulk=[]), dict(pop=[[1.0]]), dict(norm24=-1e-9), dict(bulk=math.inf)):
        with pytest.raises(ValueError, match="Regularizer"):
            jn.Regularizer(**bad).weights()
    with pytest.raises(ValueError, match="common length"):
        jn.Regularizer(bulk=[0, 1], pop=[0, 1, 2]).weights()
    for k in (1, 5, None):
        jn.Regularizer(k=k).validate(5)
    for k in (0, 6, 2.0):
        with pytest.raises(ValueError, match=r"Regularizer\.k"):
            jn.Regularizer(k=k).validate(5)
    jn.Regularizer(pop_samples=1).validate(5)
    for samples in (0, 1.5):
        with pytest.raises(ValueError, match="pop_samples"):
            jn.Regularizer(pop_samples=samples).validate(5)


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_population_penalty_in_the_loss_estimates_its_expectation(problem, x64, distribution):
    """R_pop in the training loss is a mean over `pop_samples` fresh inputs of f_L(x; P_⊥U)²:
    against numpy's Monte-Carlo estimate of E_x on 200 000 inputs of the same law, within five
    standard errors of the two estimates."""
    net, task, u = problem
    w0, a = _np_net(net)
    k, samples = 2, 20_000
    dirs = jn.spectral.good_directions(net, net.prepare(task.x_train), k)
    data = objectives.Data(
        net, task.x_train, task.x_test, task.y_train, task.y_test, task.parts_test, dirs
    )
    obj = objectives.VariantObjective(
        "regularized", use_pop=True, pop_samples=samples, distribution=distribution, d=D
    )
    hyper = {"bulk": jnp.asarray(0.0), "pop": jnp.asarray(2.0), "norm24": jnp.asarray(0.0)}
    total, parts = obj.loss(u, obj.prepare(data), hyper, jax.random.PRNGKey(3))
    j = _np_features(w0, a, np.asarray(task.x_train))
    right = _np_top_k(j, k)[1]
    un = np.asarray(u).reshape(-1)
    good = un - right @ (right.T @ un)
    x = np.random.default_rng(0).standard_normal((200_000, D))
    if distribution == "sphere":
        x *= math.sqrt(D) / np.linalg.norm(x, axis=1, keepdims=True)
    values = (_np_features(w0, a, x) @ good) ** 2
    se = values.std() * math.sqrt(1 / samples + 1 / len(values))
    assert abs(float(parts["pop"]) - values.mean()) < 5 * se, (float(parts["pop"]), values.mean())
    np.testing.assert_allclose(total, parts["mse"] + 2.0 * parts["pop"], rtol=1e-12)


def test_each_variant_prepares_the_taylor_order_its_training_reads():
    """The `order` hint the trainer gives `prepare` for a variant's training terms: 2 where f_Q
    enters (quadntk, ntk+quadntk, regularized), k for taylor-k, 1 where only the network or
    f_L is evaluated (a hoisting `TaylorModel` then keeps just the linearization)."""
    want = {
        "full": 1,
        "ntk": 1,
        "quadntk": 2,
        "randomized": 1,
        "ntk+quadntk": 2,
        "regularized": 2,
        "taylor-3": 3,
        "taylor-4": 4,
    }
    assert {name: objectives._train_order(v) for name, v in objectives.VARIANTS.items()} == want
    assert {name: v.order for name, v in objectives.VARIANTS.items() if v.order} == {
        "taylor-3": 3,
        "taylor-4": 4,
    }
