"""Models with several outputs: the empirical NTK's trace and diagonal axes, the closed-form
linearized dynamics (jaxntk/predict.py), and training with MSE over all outputs or softmax
cross-entropy (jaxntk/objectives.py, jaxntk/training.py)."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import ntk, objectives, predict, training

N, N_TEST, D, C = 12, 7, 5, 10


class MLP(nn.Module):
    """A 10-output MLP of width 16 (float64 parameters)."""

    outputs: int = C

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(16, param_dtype=jnp.float64)(x))
        return nn.Dense(self.outputs, param_dtype=jnp.float64)(x)


class GridMLP(nn.Module):
    """Outputs of shape (3, 2) per input."""

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(8, param_dtype=jnp.float64)(x))
        return nn.Dense(6, param_dtype=jnp.float64)(x).reshape(x.shape[0], 3, 2)


def inputs(seed, n):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, D)))


def flax_model(module=None):
    module = MLP() if module is None else module
    return module.apply, module.init(jax.random.PRNGKey(0), inputs(0, 2))


def flat_jacobian(apply_fn, params, x):
    """∂f(x)/∂θ as an array (n, *out, P), by reverse mode over the flattened parameters."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.asarray(jax.jacrev(lambda p: apply_fn(unravel(p), x))(flat))


# (trace_axes, diagonal_axes) -> the explicit contraction of J1 (i a P) with J2 (j b P)
CONTRACTIONS = {
    ((), ()): ("iaP,jbP->ijab", 1),
    ((), (0,)): ("iaP,ibP->iab", 1),
    ((), (-1,)): ("iaP,jaP->ija", 1),
    ((), (0, 1)): ("iaP,iaP->ia", 1),
    ((-1,), ()): ("iaP,jaP->ij", C),
    ((1,), (0,)): ("iaP,iaP->i", C),
}


@pytest.mark.parametrize("method", ["jacobian", "products"])
@pytest.mark.parametrize(("trace", "diagonal"), list(CONTRACTIONS), ids=str)
@pytest.mark.slow
def test_multi_output_ntk_equals_the_jacobian_contraction(x64, trace, diagonal, method):
    apply_fn, params = flax_model()
    x1, x2 = inputs(1, N), inputs(2, N if 0 in diagonal else N_TEST)
    spec, size = CONTRACTIONS[(trace, diagonal)]
    expected = np.einsum(
        spec, flat_jacobian(apply_fn, params, x1), flat_jacobian(apply_fn, params, x2)
    )
    axes = {"trace_axes": trace, "diagonal_axes": diagonal}
    k = jn.empirical_ntk(apply_fn, params, x1, x2, **axes, method=method, batch_size=5)
    assert k.shape == expected.shape
    np.testing.assert_allclose(k, expected / size, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("trace", "diagonal", "spec", "size"),
    [
        ((), (), "iabP,jcdP->ijacbd", 1),
        ((-2,), (), "iabP,jadP->ijbd", 3),
        ((-1,), (1,), "iabP,jabP->ija", 2),
        ((1, 2), (0,), "iabP,iabP->i", 6),
    ],
)
@pytest.mark.slow
def test_ntk_of_outputs_with_two_axes(x64, trace, diagonal, spec, size):
    apply_fn, params = flax_model(GridMLP())
    x1 = inputs(3, 6)
    x2 = x1 if 0 in diagonal else inputs(4, 4)
    j1, j2 = flat_jacobian(apply_fn, params, x1), flat_jacobian(apply_fn, params, x2)
    k = jn.empirical_ntk(
        apply_fn, params, x1, x2, trace_axes=trace, diagonal_axes=diagonal, batch_size=4
    )
    np.testing.assert_allclose(k, np.einsum(spec, j1, j2) / size, rtol=1e-12, atol=1e-12)


def test_ntk_compiles_once_per_shape(x64):
    apply_fn, params = flax_model()
    programs = ntk._block_programs()
    before = [p._cache_size() for p in programs]
    for seed in (5, 6):
        jn.empirical_ntk(apply_fn, params, inputs(seed, N), trace_axes=())
    assert [p._cache_size() for p in programs] == [before[0] + 1, before[1] + 1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"trace_axes": (0,)}, ValueError, "batch axis"),
        ({"trace_axes": (2,)}, ValueError, "out of range"),
        ({"trace_axes": (-1,), "diagonal_axes": (1,)}, ValueError, "both traced and diagonal"),
        ({"diagonal_axes": (1, -1), "trace_axes": ()}, ValueError, "repeats"),
        ({"trace_axes": (1.0,)}, TypeError, "ints"),
        ({"x2": np.ones((3, D)), "diagonal_axes": (0,)}, ValueError, "n1"),
    ],
)
def test_bad_ntk_axes_raise(x64, kwargs, error, match):
    apply_fn, params = flax_model(MLP(outputs=3))
    with pytest.raises(error, match=match):
        jn.empirical_ntk(apply_fn, params, inputs(0, 4), **kwargs)


# ------------------------------------------------------------------ the linearized dynamics


def task_of(x, y, x_test, y_test):
    """A task from arrays (no target parts)."""
    return jn.Task(
        x_train=x,
        y_train=y,
        x_test=x_test,
        y_test=y_test,
        parts_train=jnp.zeros((0, x.shape[0]), x.dtype),
        parts_test=jnp.zeros((0, x_test.shape[0]), x.dtype),
        target=None,
        distribution="gaussian",
        part_names=(),
        input_ndim=x.ndim - 1,
    )


def regression_problem():
    apply_fn, params = flax_model()
    rng = np.random.default_rng(7)
    x, x_test = inputs(1, N), inputs(2, N_TEST)
    y = jnp.asarray(rng.standard_normal((N, C)))
    y_test = jnp.asarray(rng.standard_normal((N_TEST, C)))
    return apply_fn, params, task_of(x, y, x_test, y_test)


# a power of two (the trainer holds the learning rate in float32), with 1 − aλ_max < 0: the top
# eigendirection oscillates and converges
LR = 2.0


def test_linearize_of_a_multi_output_model_is_f0_plus_jacobian_times_delta(x64):
    apply_fn, params = flax_model()
    x = inputs(1, N)
    delta = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    moved = jax.tree.map(jnp.add, params, delta)
    flat_delta = jax.flatten_util.ravel_pytree(delta)[0]
    expected = apply_fn(params, x) + flat_jacobian(apply_fn, params, x) @ np.asarray(flat_delta)
    np.testing.assert_allclose(jn.linearize(apply_fn, params)(moved, x), expected, rtol=1e-12)


@pytest.mark.slow
def test_taylor_model_terms_of_a_multi_output_model_are_the_explicit_derivatives(x64):
    apply_fn, params = flax_model()
    x = inputs(1, 4)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    step = 0.1 * jnp.asarray(np.random.default_rng(8).standard_normal(flat.shape))
    hessian = np.asarray(jax.hessian(lambda p: apply_fn(unravel(p), x))(flat))  # (4, C, P, P)
    model = jn.TaylorModel(apply_fn, params)
    f_lin, f_quad = model.linear_and_quadratic(unravel(step), model.prepare(x))
    np.testing.assert_allclose(f_lin, flat_jacobian(apply_fn, params, x) @ step, rtol=1e-12)
    expected = 0.5 * np.einsum("p,iapq,q->ia", step, hessian, step)
    np.testing.assert_allclose(f_quad, expected, rtol=1e-10, atol=1e-14)
    f_quad_model = jn.taylor(apply_fn, params, 2)(jax.tree.map(jnp.add, params, unravel(step)), x)
    np.testing.assert_allclose(f_quad_model, apply_fn(params, x) + f_lin + f_quad, rtol=1e-12)


@pytest.mark.slow
def test_ntk_predict_equals_gradient_descent_of_the_trainer(x64):
    apply_fn, params, task = regression_problem()
    steps = 30
    run = jn.train(
        jn.TaylorModel(apply_fn, params),
        task,
        "ntk",
        steps=steps,
        lr=LR,
        eval_every=10,
        progress=False,
    )
    out = jn.ntk_predict(
        apply_fn, params, task.x_train, task.y_train, task.x_test, steps=[0, 10, 20, 30], lr=LR
    )
    # the trainer's parameters after T steps give the closed form's outputs at step T
    model = jn.TaylorModel(apply_fn, params)
    u = jax.tree.map(lambda leaf: leaf[0, 0], run.params)
    for x, predicted in ((task.x_train, out.train[-1]), (task.x_test, out.test[-1])):
        prep = model.prepare(x)
        trained = model.initial_output(prep) + model.linear_term(u, prep)
        np.testing.assert_allclose(predicted, trained, rtol=1e-10, atol=1e-10)
    # and its losses at every evaluation
    train_loss = np.mean((np.asarray(out.train) - np.asarray(task.y_train)) ** 2, axis=(1, 2))
    test_loss = np.mean((np.asarray(out.test) - np.asarray(task.y_test)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(run.history["train_loss"][0, 0], train_loss, rtol=1e-10)
    np.testing.assert_allclose(run.history["test_loss"][0, 0], test_loss, rtol=1e-10)
    assert train_loss[-1] < 0.5 * train_loss[0]


@pytest.mark.slow
def test_ntk_predict_at_infinity_is_kernel_regression_and_the_flow_is_the_exponential(x64):
    apply_fn, params, task = regression_problem()
    j_train = flat_jacobian(apply_fn, params, task.x_train).reshape(N * C, -1)
    j_test = flat_jacobian(apply_fn, params, task.x_test).reshape(N_TEST * C, -1)
    f0, f0_test = (np.asarray(apply_fn(params, x)).ravel() for x in (task.x_train, task.x_test))
    y = np.asarray(task.y_train).ravel()
    k, k_test = j_train @ j_train.T, j_test @ j_train.T
    out = jn.ntk_predict(
        apply_fn, params, task.x_train, task.y_train, task.x_test, steps=math.inf, lr=LR
    )
    np.testing.assert_allclose(out.train.ravel(), y, rtol=1e-8, atol=1e-8)
    expected_test = f0_test + k_test @ np.linalg.solve(k, y - f0)
    np.testing.assert_allclose(out.test.ravel(), expected_test, rtol=1e-7, atol=1e-8)

    too_fast = jn.ntk_predict(
        apply_fn, params, task.x_train, task.y_train, steps=math.inf, lr=4 * LR
    )
    assert np.all(np.isnan(too_fast.train))

    time = 3.5
    flow = jn.ntk_predict(
        apply_fn, params, task.x_train, task.y_train, task.x_test, steps=time, lr=LR, flow=True
    )
    a = 2 * LR / (N * C)
    residual = jax.scipy.linalg.expm(-a * time * jnp.asarray(k)) @ (f0 - y)
    np.testing.assert_allclose(flow.train.ravel(), y + residual, rtol=1e-9, atol=1e-9)


def test_ntk_predict_compiles_once_per_shape(x64):
    apply_fn, params, task = regression_problem()
    before = predict._ntk_predict._cache_size()
    for scale in (1.0, 2.0):
        jn.ntk_predict(apply_fn, params, task.x_train, scale * task.y_train, steps=[1, 2], lr=LR)
    assert predict._ntk_predict._cache_size() == before + 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_train": np.zeros((N - 1, C))}, "y_train has 11 rows but x_train has 12"),
        ({"y_train": np.zeros((N, C - 1))}, "y_train has shape"),
        ({"y_train": np.zeros(N, dtype=np.int32)}, "y_train must hold float"),
        ({"y_train": np.full((N, C), np.nan)}, "y_train must be finite"),
        ({"steps": [1.5]}, "whole numbers"),
        ({"steps": -1}, "steps"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_ntk_predict_rejects_bad_arguments(x64, kwargs, match):
    apply_fn, params, task = regression_problem()
    args = {"y_train": task.y_train, "steps": 1, "lr": LR, **kwargs}
    with pytest.raises(ValueError, match=match):
        jn.ntk_predict(apply_fn, params, task.x_train, **args)


# ------------------------------------------------------------------ training several outputs


def classification_problem(seed=3):
    apply_fn, params = flax_model()
    rng = np.random.default_rng(seed)
    x, x_test = inputs(1, N), inputs(2, N_TEST)
    labels = jnp.asarray(rng.integers(0, C, N), dtype=jnp.int32)
    labels_test = jnp.asarray(rng.integers(0, C, N_TEST), dtype=jnp.int32)
    return jn.TaylorModel(apply_fn, params), task_of(x, labels, x_test, labels_test)


@pytest.mark.slow
def test_cross_entropy_training_lowers_the_loss_without_recompiling(x64):
    model, task = classification_problem()
    kwargs = {"steps": 40, "lr": 2.0, "eval_every": 20, "progress": False, "loss": "cross_entropy"}
    run = jn.train(model, task, "ntk+quadntk", **kwargs)
    loss = run.history["train_loss"][0, 0]
    assert loss[-1] < 0.5 * loss[0], loss
    np.testing.assert_allclose(loss[0], np.log(C), rtol=0.2)  # near-uniform logits at init
    assert run.history["train_accuracy"][0, 0, -1] > run.history["train_accuracy"][0, 0, 0]
    assert set(run.trace) >= {"loss", "cross_entropy"}
    compiled = training._run_chunk._cache_size()
    _, other = classification_problem(seed=4)
    jn.train(model, other, "ntk+quadntk", **kwargs)
    assert training._run_chunk._cache_size() == compiled


@pytest.mark.slow
def test_order_3_taylor_model_of_a_multi_output_model_trains_on_the_mse(x64):
    apply_fn, params, task = regression_problem()
    model = jn.TaylorModel(apply_fn, params)
    run = jn.train(model, task, "taylor-3", steps=10, lr=1.0, eval_every=10, progress=False)
    loss = run.history["train_loss"][0, 0]
    np.testing.assert_allclose(
        loss[0], np.mean((apply_fn(params, task.x_train) - task.y_train) ** 2)
    )
    assert loss[-1] < 0.5 * loss[0], loss


@pytest.mark.parametrize(
    ("labels", "loss", "match"),
    [
        (np.zeros(N - 1, np.int32), "cross_entropy", "y_train has 11 rows but x_train has 12"),
        (np.full(N, 12, np.int32), "cross_entropy", "y_train holds class 12 but the model has 10"),
        (np.full(N, -1, np.int32), "cross_entropy", "y_train holds class -1"),
        (np.zeros(N), "cross_entropy", "y_train must hold integer class labels"),
        (np.zeros((N, C), np.int32), "cross_entropy", "y_train has shape"),
        (np.zeros(N, np.int32), "mse", "y_train holds integer labels.*loss='cross_entropy'"),
        (np.zeros(N), "mse", r"y_train has shape \(12,\) but the model's outputs"),
        (np.zeros(N, np.int32), "hinge", "unknown loss"),
    ],
)
def test_bad_labels_raise_naming_y(x64, labels, loss, match):
    model, task = classification_problem()
    task = task_of(task.x_train, jnp.asarray(labels), task.x_test, task.y_test)
    with pytest.raises(ValueError, match=match):
        jn.train(model, task, "ntk", steps=1, loss=loss, progress=False)


def test_test_labels_are_checked_too(x64):
    model, task = classification_problem()
    task = task_of(task.x_train, task.y_train, task.x_test, jnp.full(N_TEST, C, jnp.int32))
    with pytest.raises(ValueError, match="y_test holds class 10"):
        jn.train(model, task, "ntk", steps=1, loss="cross_entropy", progress=False)


# ------------------------------------------------- good directions and regularizer, c outputs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generic:
    """A model of the protocol that is no `jn.TaylorModel`: its Gram matrix comes from the
    products J(Jᵀ e_i) (jaxntk.spectral's generic path) instead of the kernel engine."""

    model: jn.TaylorModel

    def prepare(self, x, order=2):
        return self.model.prepare(x, order)

    def zeros(self):
        return self.model.zeros()

    def linear_term(self, u, prep):
        return self.model.linear_term(u, prep)


@functools.cache  # one flax init and one Jacobian per size for the tests below (all in x64)
def three_outputs(n=N, seed=1):
    """A 3-output MLP as a TaylorModel, n inputs, its explicit (n·3) × P Jacobian (rows in the
    order of f(X).ravel(), by forward mode of a plain function) and the parameters' unravel."""
    apply_fn, params = flax_model(MLP(outputs=3))
    x = inputs(seed, n)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = np.asarray(jax.jit(jax.jacfwd(lambda p: apply_fn(unravel(p), x)))(flat)).reshape(
        n * 3, -1
    )
    return jn.TaylorModel(apply_fn, params), x, jac, unravel


def projector(a):
    """The orthogonal projector on the column span of a."""
    q = np.linalg.qr(a)[0]
    return q @ q.T


@pytest.mark.parametrize("generic", [False, True], ids=["engine", "products"])
def test_multi_output_good_directions_and_r_bulk_equal_the_svd_of_the_jacobian(x64, generic):
    """outputs="full": U_k, S_k, V_k of the explicit (n·c) × P J by numpy's SVD; R_bulk the mean
    over the n·c entries of (I − U_k U_kᵀ) vec f_L; P_top = V_k V_kᵀ."""
    model, x, jac, unravel = three_outputs()
    model = Generic(model) if generic else model
    prep, k = model.prepare(x), 7
    u_np, s_np, vt_np = np.linalg.svd(jac, full_matrices=False)
    dirs = jn.good_directions(model, prep, k)
    assert dirs.u_k.shape == (N * 3, k) and (dirs.n, dirs.out_shape) == (N, (3,))
    np.testing.assert_allclose(dirs.s_k, s_np[:k], rtol=1e-10)
    np.testing.assert_allclose(dirs.u_k @ dirs.u_k.T, projector(u_np[:, :k]), atol=1e-10)
    step = np.random.default_rng(5).standard_normal(jac.shape[1])
    f_lin = model.linear_term(unravel(jnp.asarray(step)), prep)
    assert f_lin.shape == (N, 3)
    vec = jac @ step
    residual = vec - u_np[:, :k] @ (u_np[:, :k].T @ vec)
    bulk = objectives.bulk_penalty(dirs, f_lin)
    np.testing.assert_allclose(bulk, residual @ residual / (N * 3), rtol=1e-10)
    top = jax.flatten_util.ravel_pytree(
        jn.spectral.project_top(model, prep, dirs, unravel(jnp.asarray(step)))
    )[0]
    np.testing.assert_allclose(top, vt_np[:k].T @ (vt_np[:k] @ step), atol=1e-10)
    v_k = jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(
        jn.spectral.right_singular_vectors(model, prep, dirs)
    )
    np.testing.assert_allclose(v_k.T @ v_k, projector(vt_np[:k].T), atol=1e-10)


TRACED_BY = {
    "engine": {},
    "products": {"generic": True},
    "matrix_free": {"method": "matrix_free", "tol": 1e-13},
}


@pytest.mark.parametrize(
    "by",
    [
        "engine",
        pytest.param("products", marks=pytest.mark.slow),
        pytest.param("matrix_free", marks=pytest.mark.slow),
    ],
)
def test_traced_directions_equal_their_definition(x64, by):
    """outputs="traced": U_k the top-k eigenvectors of (1/c) Σ_a J_a J_aᵀ (the traced NTK of
    jn.empirical_ntk), applied to every output (U_k U_kᵀ ⊗ I_c); P_top the orthogonal projector
    on span Jᵀ(U_k ⊗ I_c); by the kernel engine, by the products of a generic model, and
    matrix-free."""
    model, x, jac, unravel = three_outputs()
    kwargs = dict(TRACED_BY[by])
    prep, k, c = model.prepare(x), 4, 3
    per_output = jac.reshape(N, c, -1)
    traced = np.einsum("iaP,jaP->ij", per_output, per_output) / c
    np.testing.assert_allclose(
        jn.empirical_ntk(model.apply_fn, model.params0, x), traced, rtol=1e-12, atol=1e-12
    )
    evals, evecs = np.linalg.eigh(traced)
    u_top = evecs[:, ::-1][:, :k]
    w = np.kron(u_top, np.eye(c))
    p_top = projector(jac.T @ w)
    step = np.random.default_rng(6).standard_normal(jac.shape[1])
    vec = jac @ step
    generic = kwargs.pop("generic", False)
    dirs = jn.good_directions(
        Generic(model) if generic else model, prep, k, outputs="traced", **kwargs
    )
    assert dirs.u_k.shape == (N, k) and dirs.top_basis.shape == (N * c, k * c)
    np.testing.assert_allclose(dirs.s_k**2, evals[::-1][:k], rtol=1e-10)
    np.testing.assert_allclose(dirs.u_k @ dirs.u_k.T, u_top @ u_top.T, atol=1e-9)
    f_lin = model.linear_term(unravel(jnp.asarray(step)), prep)
    residual = jn.spectral.bulk_residual(dirs, f_lin)
    np.testing.assert_allclose(residual.ravel(), vec - w @ (w.T @ vec), atol=1e-9)
    np.testing.assert_allclose(
        objectives.bulk_penalty(dirs, f_lin), np.mean((vec - w @ (w.T @ vec)) ** 2), rtol=1e-9
    )
    good = jn.spectral.project_good(model, prep, dirs, unravel(jnp.asarray(step)))
    flat_good = jax.flatten_util.ravel_pytree(good)[0]
    np.testing.assert_allclose(flat_good, step - p_top @ step, atol=1e-9)
    np.testing.assert_allclose(w.T @ (jac @ flat_good), 0.0, atol=1e-9)  # no top output


def test_gram_matrix_of_outputs_with_two_axes_orders_rows_as_ravel(x64):
    """Outputs (n, 3, 2): the full Gram matrix's rows follow f(X).ravel(); the traced one is the
    mean over the 6 outputs."""
    rng = np.random.default_rng(9)
    w = {
        "a": jnp.asarray(rng.standard_normal((D, 8))),
        "b": jnp.asarray(rng.standard_normal((8, 6))),
    }

    def grid(w, x):
        return (jnp.tanh(x @ w["a"]) @ w["b"]).reshape(x.shape[0], 3, 2)

    x = inputs(4, 7)
    flat, unravel = jax.flatten_util.ravel_pytree(w)
    jac = np.asarray(jax.jit(jax.jacfwd(lambda p: grid(unravel(p), x)))(flat)).reshape(7, 6, -1)
    model = jn.TaylorModel(grid, w)
    prep = model.prepare(x, order=1)
    full = jn.spectral.gram_matrix(model, prep)
    expected = jac.reshape(42, -1) @ jac.reshape(42, -1).T
    np.testing.assert_allclose(full, expected, rtol=1e-12, atol=1e-12)
    traced = jn.spectral.gram_matrix(model, prep, outputs="traced")
    expected = np.einsum("iaP,jaP->ij", jac, jac) / 6
    np.testing.assert_allclose(traced, expected, rtol=1e-12, atol=1e-12)


def test_one_output_directions_are_those_of_either_form(x64):
    """With one output per input "traced" and "full" are the same directions, bit for bit."""
    net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=D, m=30, dtype=jnp.float64)
    prep = net.prepare(inputs(3, N))
    full = jn.good_directions(net, prep, 4)
    traced = jn.good_directions(net, prep, 4, outputs="traced")
    assert full.out_shape == traced.out_shape == () and traced.top_basis is None
    np.testing.assert_array_equal(full.u_k, traced.u_k)
    f = net.linear_term(jax.random.normal(jax.random.PRNGKey(1), net.w0.shape), prep)
    np.testing.assert_array_equal(
        jn.spectral.bulk_residual(full, f), jn.spectral.bulk_residual(traced, f)
    )


def test_bad_outputs_and_k_raise_naming_them(x64):
    model, x, _, _ = three_outputs()
    prep = model.prepare(x)
    with pytest.raises(ValueError, match="unknown outputs 'summed'"):
        jn.good_directions(model, prep, 2, outputs="summed")
    with pytest.raises(ValueError, match=r"k must be between 1 and 36 \(n·c"):
        jn.good_directions(model, prep, 37)
    with pytest.raises(ValueError, match=r"k must be between 1 and 12 \(n,"):
        jn.good_directions(model, prep, 13, outputs="traced")
    dirs = jn.good_directions(model, prep, 7)  # compiled by the first test above
    with pytest.raises(ValueError, match=r"f_train must have shape \(12, 3\)"):
        jn.spectral.bulk_residual(dirs, jnp.zeros(N))
    with pytest.raises(ValueError, match=r"Regularizer\.outputs"):
        jn.Regularizer(outputs="summed").validate(4, 3)
    with pytest.raises(ValueError, match=r"Regularizer\.k .*k per output"):
        jn.Regularizer(k=5, outputs="traced").validate(4, 3)
    jn.Regularizer(k=12).validate(4, 3)


def ten_class_problem(one_hot=False):
    """10 Gaussian clusters in R^5, 30 training and 20 test points, and a 10-output MLP of
    width 16."""
    rng = np.random.default_rng(0)
    centers = 2.0 * rng.standard_normal((C, D))
    labels, labels_test = rng.integers(0, C, 30), rng.integers(0, C, 20)
    x = jnp.asarray(rng.standard_normal((30, D)) + centers[labels])
    x_test = jnp.asarray(rng.standard_normal((20, D)) + centers[labels_test])
    params = {
        "hidden": jnp.asarray(rng.standard_normal((D, 16)) / math.sqrt(D)),
        "out": jnp.asarray(rng.standard_normal((16, C)) / 4.0),
    }
    if one_hot:
        y, y_test = jnp.eye(C)[labels], jnp.eye(C)[labels_test]
    else:
        y, y_test = jnp.asarray(labels, jnp.int32), jnp.asarray(labels_test, jnp.int32)
    return jn.TaylorModel(plain_mlp, params), task_of(x, y, x_test, y_test)


def plain_mlp(params, x):
    """A 10-output MLP as a plain function (no flax init to run)."""
    return jnp.tanh(x @ params["hidden"]) @ params["out"]


@pytest.mark.slow
@pytest.mark.parametrize("outputs", ["full", "traced"])
def test_regularized_variant_trains_a_classifier_with_cross_entropy(x64, outputs):
    model, task = ten_class_problem()
    reg = jn.Regularizer(bulk=1.0, pop=0.5, pop_samples=16, outputs=outputs)
    run = jn.train(
        model,
        task,
        "regularized",
        steps=40,
        lr=1.0,
        eval_every=20,
        reg=reg,
        loss="cross_entropy",
        progress=False,
    )
    loss, bulk = run.history["train_loss"][0, 0], run.history["bulk"][0, 0]
    assert loss[-1] < 0.5 * loss[0], loss
    assert bulk[0] == 0.0 and np.all(np.isfinite(bulk)) and np.all(bulk[1:] > 0), bulk
    assert set(run.trace) >= {"cross_entropy", "bulk", "pop"}
    assert run.config["regularizer"].get("outputs", "full") == outputs


@pytest.mark.slow
def test_regularized_variant_trains_on_one_hot_targets_with_held_out_inputs(x64):
    """mse on one-hot targets; R_pop from held-out unlabelled inputs: its value in the loss is
    the mean of f_L(x; P_⊥U)² over pop_samples of them."""
    model, task = ten_class_problem(one_hot=True)
    pool = task.x_test
    reg = jn.Regularizer(bulk=1.0, pop=0.5, pop_inputs=pool)
    run = jn.train(
        model, task, "regularized", steps=40, lr=0.5, eval_every=20, reg=reg, progress=False
    )
    loss = run.history["train_loss"][0, 0]
    assert loss[-1] < 0.5 * loss[0], loss
    assert run.config["regularizer"]["pop_inputs"] == pool.shape[0]
    u = jax.tree.map(lambda leaf: leaf[0, 0], run.params)
    dirs = jn.good_directions(model, model.prepare(task.x_train), D * C)
    good = jn.spectral.project_good(model, model.prepare(task.x_train), dirs, u)
    values = np.mean(np.asarray(model.linear_term(good, model.prepare(pool))) ** 2, axis=1)
    data = objectives.Data(
        model,
        task.x_train,
        task.x_test,
        task.y_train,
        task.y_test,
        task.parts_test,
        dirs,
        pop_inputs=pool,
    )
    obj = objectives.VariantObjective("regularized", use_pop=True, pop_samples=1000)
    hyper = {"bulk": 0.0, "pop": 1.0, "norm24": 0.0}
    _, terms = obj.loss(u, obj.prepare(data), hyper, jax.random.PRNGKey(0))
    se = values.std() / math.sqrt(1000)
    assert abs(float(terms["pop"]) - values.mean()) < 5 * se + 1e-12


def test_r_pop_on_inputs_with_no_law_needs_held_out_inputs(x64):
    """Inputs (n, 5, 1) are no vectors of a law R_pop could draw: an error that names
    Regularizer(pop_inputs=...) and pop=0; held-out inputs of another shape are an error too."""
    model, task = ten_class_problem()

    def apply_fn(params, x):
        return model.apply_fn(params, x[..., 0])

    images = task_of(task.x_train[..., None], task.y_train, task.x_test[..., None], task.y_test)
    image_model = jn.TaylorModel(apply_fn, model.params0)
    kwargs = {"steps": 1, "loss": "cross_entropy", "progress": False}
    with pytest.raises(ValueError, match=r"Regularizer\(pop_inputs=...\).*Regularizer\(pop=0\)"):
        jn.train(image_model, images, "regularized", reg=jn.Regularizer(pop=1.0), **kwargs)
    with pytest.raises(ValueError, match=r"Regularizer.pop_inputs must be .* got shape \(20, 5\)"):
        jn.train(
            image_model,
            images,
            "regularized",
            reg=jn.Regularizer(pop=1.0, pop_inputs=task.x_test),
            **kwargs,
        )


@pytest.mark.parametrize("outputs", ["full", "traced"])
def test_a_classifier_trains_alike_with_either_subspace_method(x64, outputs):
    """`subspace_method="matrix_free"` (the NTK operator on a TaylorModel, found outside the
    compiled program) gives the run of "gram" (the kernel and eigh)."""
    model, task = ten_class_problem()
    reg = jn.Regularizer(bulk=1.0, k=4, outputs=outputs)
    kw = {"steps": 6, "eval_every": 3, "lr": 0.1, "loss": "cross_entropy", "progress": False}
    runs = [
        jn.train(model, task, "regularized", reg=reg, subspace_method=method, **kw)
        for method in ("gram", "matrix_free")
    ]
    assert runs[0].history["bulk"][0, 0, -1] > 1e-6
    for name in ("bulk", "train_loss", "test_loss"):
        np.testing.assert_allclose(runs[1].history[name], runs[0].history[name], rtol=1e-6)
