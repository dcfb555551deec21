"""The trainer and the variants table: every variant learns, kernel regression, vmap equivalence,
determinism, resume, compilation count, divergence and bad input."""

import dataclasses
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxntk as jn
from jaxntk import objectives, training

D, N, M = 10, 50, 200


@pytest.fixture(scope="module")
def task():
    return jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=400)


@pytest.fixture(scope="module")
def net():
    return jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M)


@pytest.mark.parametrize("variant", list(objectives.VARIANTS))
@pytest.mark.slow
def test_every_variant_lowers_its_training_loss(net, task, variant):
    run = jn.train(net, task, variant, steps=400, eval_every=100, seeds=[0], progress=False)
    loss = run.history["train_loss"][0, 0]
    assert np.all(np.isfinite(loss))
    assert loss[-1] < 0.6 * loss[0], (variant, loss)
    assert run.history["step"].tolist() == [0, 100, 200, 300, 400]


@pytest.mark.slow
def test_ntk_follows_gradient_flow_of_kernel_regression_and_reaches_the_interpolant(x64):
    """GD from U = 0 on the linear model: f_t(X*) = K*ₓ K⁻¹ (I − (I − 2ηK/n)^t) y, exactly."""
    task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=30, n_test=50)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M, dtype=jnp.float64)
    k_xx = np.asarray(net.ntk_gram(task.x_train))
    k_tx = np.asarray(net.ntk_gram(task.x_test, task.x_train))
    y, n = np.asarray(task.y_train), task.n
    lr = 0.9 * n / (2 * np.linalg.eigvalsh(k_xx).max())
    steps = 3000
    run = jn.train(net, task, "ntk", steps=steps, lr=float(lr), eval_every=steps, progress=False)
    u = run.params[0, 0]
    f_test = np.asarray(net.linear_term(u, net.prepare(task.x_test)))
    evals, vecs = np.linalg.eigh(k_xx)
    decay = (1 - 2 * lr * evals / n) ** steps
    alpha = vecs @ (((1 - decay) / evals) * (vecs.T @ y))
    np.testing.assert_allclose(f_test, k_tx @ alpha, rtol=1e-7, atol=1e-9)
    interpolant = k_tx @ np.linalg.solve(k_xx, y)
    remaining = np.abs(k_tx @ vecs @ ((decay / evals) * (vecs.T @ y))).max()
    assert remaining < 1e-3
    np.testing.assert_allclose(f_test, interpolant, atol=2 * remaining + 1e-9)


@pytest.mark.slow
def test_randomized_signs_kill_the_linear_term_and_keep_the_quadratic(x64):
    m = 6
    net = jn.TwoLayer.init(jax.random.PRNGKey(2), d=4, m=m, dtype=jnp.float64)
    u = 0.3 * jax.random.normal(jax.random.PRNGKey(3), (m, 4), jnp.float64)
    prep = net.prepare(jax.random.normal(jax.random.PRNGKey(4), (7, 4), jnp.float64))
    lin, quad, full = [], [], []
    for signs in itertools.product([-1.0, 1.0], repeat=m):
        su = u * jnp.asarray(signs)[:, None]
        lin.append(net.linear_term(su, prep))
        quad.append(net.quadratic_term(su, prep))
        full.append(net.full(su, prep))
    np.testing.assert_allclose(np.mean(lin, axis=0), 0.0, atol=1e-15)
    for q in quad:
        np.testing.assert_allclose(q, net.quadratic_term(u, prep), rtol=1e-12)
    even = objectives.VARIANTS["randomized"].predict(net, u, prep)
    np.testing.assert_allclose(np.mean(full, axis=0), even, rtol=1e-12, atol=1e-15)


def test_random_signs_are_rademacher_per_row():
    u = jnp.ones((4000, 3))
    su = objectives.random_signs(jax.random.PRNGKey(0), u)
    rows = np.asarray(su)
    assert np.all(rows == rows[:, :1])  # one sign per row
    assert set(np.unique(rows).tolist()) == {-1.0, 1.0}
    assert abs(rows[:, 0].mean()) < 5 / np.sqrt(4000)


@pytest.mark.parametrize("batching", ["vmap", "map"])
@pytest.mark.slow
def test_vmapped_seeds_and_lambdas_equal_separate_runs(net, task, batching):
    """Both ways of putting the λ × seed grid in one program give the separate runs."""
    reg = jn.Regularizer(bulk=[0.0, 0.5], norm24=[0.0, 1e-3])
    common = dict(steps=60, eval_every=20, progress=False)
    grid = jn.train(net, task, "regularized", reg=reg, seeds=[3, 5], batching=batching, **common)
    for i, (b, q) in enumerate([(0.0, 0.0), (0.5, 1e-3)]):
        for j, seed in enumerate([3, 5]):
            single = jn.train(
                net,
                task,
                "regularized",
                reg=jn.Regularizer(bulk=b, norm24=q),
                seeds=[seed],
                **common,
            )
            for key in ("train_loss", "test_loss", "bulk"):
                np.testing.assert_allclose(
                    grid.history[key][i, j], single.history[key][0, 0], rtol=2e-5, atol=1e-7
                )


@pytest.mark.parametrize("batching, eval_at", [("vmap", None), ("map", "log")])
@pytest.mark.slow
def test_one_model_and_task_per_seed_in_one_program_equal_separate_runs(batching, eval_at):
    """A list of models and tasks, one per seed: every seed trains its own network on its own
    task inside one compiled program, exactly as its separate run (each λ too)."""
    seeds = [3, 5]
    tasks = [jn.paper_task(jax.random.PRNGKey(s), d=4, n=14, n_test=30) for s in seeds]
    nets = [jn.TwoLayer.init(jax.random.PRNGKey(10 + s), d=4, m=16) for s in seeds]
    reg = jn.Regularizer(bulk=[0.0, 0.5], pop=[0.0, 0.1], k=3, pop_samples=8)
    common = dict(steps=12, eval_every=4, eval_at=eval_at, eval_points=4, progress=False)
    grid = jn.train(nets, tasks, "regularized", reg=reg, seeds=seeds, batching=batching, **common)
    assert grid.config["data_per_seed"] is True
    for j, (net_s, task_s, seed) in enumerate(zip(nets, tasks, seeds, strict=True)):
        single = jn.train(net_s, task_s, "regularized", reg=reg, seeds=[seed], **common)
        np.testing.assert_array_equal(grid.history["step"], single.history["step"])
        for key in ("train_loss", "test_loss", "bulk", "pop"):
            np.testing.assert_allclose(
                grid.history[key][:, j], single.history[key][:, 0], rtol=2e-5, atol=1e-7
            )
        np.testing.assert_allclose(grid.params[:, j], single.params[:, 0], rtol=2e-5, atol=1e-7)
    # the two seeds really trained on different data
    assert not np.allclose(grid.history["test_loss"][:, 0], grid.history["test_loss"][:, 1])


def test_one_model_and_task_per_seed_rejects_what_cannot_be_stacked():
    tasks = [jn.paper_task(jax.random.PRNGKey(s), d=4, n=14, n_test=30) for s in (1, 2)]
    nets = [jn.TwoLayer.init(jax.random.PRNGKey(s), d=4, m=16) for s in (1, 2)]
    kw = dict(steps=2, progress=False)
    with pytest.raises(ValueError, match="one of each per seed, got 2 models and 2 tasks for 3"):
        jn.train(nets, tasks, seeds=[1, 2, 3], **kw)
    with pytest.raises(TypeError, match="a list of each"):
        jn.train(nets, tasks[0], seeds=[1, 2], **kw)
    wide = [nets[0], jn.TwoLayer.init(jax.random.PRNGKey(2), d=4, m=20)]
    with pytest.raises(ValueError, match=r"model\[1\] differs in structure or shapes"):
        jn.train(wide, tasks, seeds=[1, 2], **kw)
    bigger = [tasks[0], jn.paper_task(jax.random.PRNGKey(2), d=4, n=15, n_test=30)]
    with pytest.raises(ValueError, match=r"task\[1\] differs"):
        jn.train(nets, bigger, seeds=[1, 2], **kw)


@pytest.mark.slow
def test_same_seed_twice_is_bitwise_identical(net, task):
    kw = dict(steps=50, eval_every=10, seeds=[7], progress=False, init_scale=0.05)
    a = jn.train(net, task, "randomized", **kw)
    b = jn.train(net, task, "randomized", **kw)
    for key in a.history:
        np.testing.assert_array_equal(a.history[key], b.history[key])
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.slow
def test_resume_after_a_chunk_equals_the_uninterrupted_run(net, task, tmp_path):
    kw = dict(steps=80, eval_every=10, evals_per_chunk=2, seeds=[0, 1], progress=False)
    full = jn.train(net, task, "regularized", **kw)
    stopped = []

    def stop_after_second_chunk(info):
        stopped.append(info["step"])
        if len(stopped) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jn.train(
            net,
            task,
            "regularized",
            **{**kw, "progress": stop_after_second_chunk},
            checkpoint=tmp_path,
        )
    resumed = jn.train(net, task, "regularized", **kw, checkpoint=tmp_path, resume=True)
    assert stopped == [20, 40]
    for key in full.history:
        np.testing.assert_array_equal(full.history[key], resumed.history[key])
    np.testing.assert_array_equal(full.params, resumed.params)


def test_resume_with_other_settings_is_refused(net, task, tmp_path):
    kw = dict(steps=20, eval_every=10, seeds=[0], progress=False, checkpoint=tmp_path)
    jn.train(net, task, "ntk", **kw)
    with pytest.raises(ValueError, match="other settings"):
        jn.train(net, task, "ntk", **{**kw, "seeds": [1]}, resume=True)


@pytest.mark.slow
def test_second_training_of_the_same_configuration_does_not_recompile(net, task):
    kw = dict(steps=30, eval_every=10, seeds=[0, 1], progress=False)
    jn.train(net, task, "ntk+quadntk", **kw)
    before = training._run_chunk._cache_size()
    jn.train(net, task, "ntk+quadntk", **kw)
    jn.train(net, task, "ntk+quadntk", **{**kw, "steps": 50, "lr": 0.5})
    assert training._run_chunk._cache_size() == before


@pytest.mark.slow
def test_a_diverging_run_is_stopped_with_its_step_and_keeps_its_history(net, task):
    with pytest.warns(
        training.DivergenceWarning, match=r"ntk: non-finite training loss at step \d+"
    ):
        run = jn.train(net, task, "ntk", steps=500, lr=1e4, eval_every=5, progress=False)
    step = int(run.diverged_at_step[0, 0])
    assert 0 < step < 500
    loss = run.history["train_loss"][0, 0]
    steps = run.history["step"]
    assert np.all(np.isfinite(loss[steps < step]))
    assert np.all(np.isnan(loss[steps > step]))
    assert steps[-1] < 500  # stopped early
    assert run.config["diverged_at_step"] == [[step]]
    # the state is the last finite one: the update from the non-finite loss at `step` was not
    # applied, so U is that of a run stopped after `step` steps
    before = jn.train(net, task, "ntk", steps=step, lr=1e4, eval_every=step, progress=False)
    np.testing.assert_allclose(run.params, before.params, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_only_the_diverging_setting_of_a_sweep_stops(net, task):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = jn.train(
            net,
            task,
            "regularized",
            reg=jn.Regularizer(bulk=[0.0, 1e6]),
            steps=100,
            eval_every=10,
            progress=False,
        )
    assert [w.category for w in caught] == [training.DivergenceWarning]
    assert run.diverged_at_step[0, 0] == -1 and run.diverged_at_step[1, 0] > 0
    assert np.isfinite(run.final["test_loss"][0, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=0), r"^steps must be ≥ 1"),
        (dict(steps=10, eval_every=0), r"^eval_every must be ≥ 1"),
        (dict(steps=10, evals_per_chunk=0), r"^evals_per_chunk must be ≥ 1"),
        (dict(steps=10, seeds=[]), "seeds"),
        (dict(steps=10, variant="lazy"), "unknown variant"),
        (dict(steps=10, optimizer="lbfgs-x"), "unknown optimizer"),
        (dict(steps=10, reg=jn.Regularizer(bulk=-1.0)), "Regularizer.bulk"),
        (dict(steps=10, reg=jn.Regularizer(pop=[0.1, float("nan")])), "Regularizer.pop"),
        (dict(steps=10, reg=jn.Regularizer(bulk=[0, 1], pop=[0, 1, 2])), "common length"),
        (dict(steps=10, reg=jn.Regularizer(bulk=1.0, k=10_000)), "Regularizer.k"),
        (dict(steps=10, lr=-1.0), "lr"),
        (dict(steps=10, init_scale=-0.1), "init_scale"),
        (dict(steps=10, batching="pmap"), "batching"),
    ],
)
def test_bad_hyperparameters_raise(net, task, kwargs, match):
    kwargs = {"variant": "ntk", "progress": False, **kwargs}
    variant = kwargs.pop("variant")
    with pytest.raises(ValueError, match=match):
        jn.train(net, task, variant, **kwargs)


@pytest.mark.slow
def test_relu_cannot_train_a_quadratic_variant(task):
    net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=D, m=20, activation="relu")
    with pytest.raises(ValueError, match="relu"):
        jn.train(net, task, "quadntk", steps=5, progress=False)
    run = jn.train(net, task, "ntk", steps=5, eval_every=5, progress=False)
    assert np.isfinite(run.final["train_loss"]).all()


def test_progress_prints_one_line_per_chunk(net, task, capsys):
    jn.train(net, task, "ntk", steps=40, eval_every=10, evals_per_chunk=2, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("[ntk] step 40/40")


def test_steps_not_a_multiple_of_eval_every(net, task):
    run = jn.train(net, task, "ntk", steps=25, eval_every=10, evals_per_chunk=2, progress=False)
    assert run.history["step"].tolist() == [0, 10, 20, 25]


@pytest.mark.slow
def test_generic_taylor_model_trains_like_the_closed_form(net, task):
    generic = jn.TaylorModel(net.apply_fn, net.w0)
    kw = dict(steps=40, eval_every=20, seeds=[0], progress=False)
    a = jn.train(net, task, "regularized", **kw)
    b = jn.train(generic, task, "regularized", **kw)
    for key in ("train_loss", "test_loss", "bulk"):
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=2e-4, atol=1e-6)


@pytest.mark.slow
def test_trace_records_the_objective_at_every_step(net, task):
    reg = jn.Regularizer(bulk=[0.0, 1.0])
    run = jn.train(
        net,
        task,
        "regularized",
        reg=reg,
        steps=45,
        eval_every=10,
        evals_per_chunk=2,
        seeds=[0, 1],
        progress=False,
    )
    assert run.trace["step"].tolist() == list(range(45))
    assert run.trace["mse"].shape == run.trace["bulk"].shape == (2, 2, 45)
    # step 0 is U = 0: the training MSE is the history's first train loss
    np.testing.assert_allclose(run.trace["mse"][:, :, 0], run.history["train_loss"][:, :, 0])
    np.testing.assert_allclose(
        run.trace["loss"],
        run.trace["mse"] + np.array([0.0, 1.0])[:, None, None] * run.trace["bulk"],
        rtol=1e-6,
    )
    assert np.all(np.diff(run.trace["mse"][0, 0]) < 0)  # plain GD on a smooth loss, small steps


@pytest.mark.slow
def test_generic_model_trained_twice_does_not_recompile(net, task):
    generic = jn.TaylorModel(net.apply_fn, net.w0)
    kw = dict(steps=20, eval_every=10, seeds=[0], progress=False)
    jn.train(generic, task, "ntk+quadntk", **kw)
    before = training._run_chunk._cache_size(), training._evaluate_jit._cache_size()
    jn.train(generic, task, "ntk+quadntk", **kw)
    assert (training._run_chunk._cache_size(), training._evaluate_jit._cache_size()) == before


@pytest.mark.slow
def test_taylor_variants_keep_the_output_at_initialization(task):
    """For a model with f(x; params0) ≠ 0 the Taylor variants are f0 + f_L (+ f_Q)."""

    def apply_fn(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"] + p["b"]

    k1, k2 = jax.random.split(jax.random.PRNGKey(5))
    p0 = {
        "w": jax.random.normal(k1, (D, 16)) / np.sqrt(D),
        "v": jax.random.normal(k2, (16,)) / 4.0,
        "b": jnp.asarray(0.7),
    }
    model = jn.TaylorModel(apply_fn, p0)
    f0 = apply_fn(p0, task.x_train)
    for variant in ("ntk", "ntk+quadntk"):
        run = jn.train(model, task, variant, steps=5, lr=0.01, eval_every=5, progress=False)
        np.testing.assert_allclose(
            run.history["train_loss"][0, 0, 0], jnp.mean((task.y_train - f0) ** 2), rtol=1e-5
        )


@pytest.mark.slow
def test_a_users_optimizer_keeps_its_own_learning_rate(net, task):
    import optax

    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
    run = jn.train(net, task, "ntk", steps=3, optimizer=opt, lr=-1.0, eval_every=3, progress=False)
    ref = jn.train(net, task, "ntk", steps=3, lr=0.05, eval_every=3, progress=False)
    np.testing.assert_allclose(run.history["train_loss"], ref.history["train_loss"], rtol=1e-6)


def test_randomized_needs_a_model_that_is_a_sum_over_neurons(net, task):
    with pytest.raises(ValueError, match="sum over neurons"):
        jn.train(jn.TaylorModel(net.apply_fn, net.w0), task, "randomized", steps=2, progress=False)


def test_fit_names_a_bad_hyper(net, task):
    objective = jn.objectives.VariantObjective("ntk")
    data = jn.objectives.Data(
        net, task.x_train, task.x_test, task.y_train, task.y_test, task.parts_test
    )
    with pytest.raises(ValueError, match="hyper"):
        jn.fit(objective, data, hyper={"bulk": 0.0}, seeds=[0], steps=2, progress=False)


@pytest.mark.parametrize("variant", [v for v, row in objectives.VARIANTS.items() if row.uses_terms])
def test_variants_marked_uses_terms_predict_f0_plus_fl_plus_fq(net, task, variant):
    """The loss and the evaluation reuse f_L and f_Q for these variants: their `predict` and
    `train_predict` must be exactly f(W0) + f_L + f_Q."""
    v = objectives.VARIANTS[variant]
    prep = net.prepare(task.x_train)
    u = 0.3 * jax.random.normal(jax.random.PRNGKey(4), net.w0.shape)
    fl, fq = net.linear_and_quadratic(u, prep)
    want = net.initial_output(prep) + fl + fq
    np.testing.assert_allclose(v.predict(net, u, prep), want, rtol=1e-6, atol=1e-6)
    got = v.train_predict(net, u, prep, jax.random.PRNGKey(0))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bad_argument_types_and_a_single_int_seed(net, task):
    with pytest.raises(TypeError, match=r"reg must be a jaxntk\.Regularizer"):
        jn.train(net, task, "ntk", steps=2, reg={"bulk": 1.0}, progress=False)
    with pytest.raises(ValueError, match="optimizer must be a name"):
        jn.train(net, task, "ntk", steps=2, optimizer=42, progress=False)
    with pytest.raises(ValueError, match="seeds must be ints ≥ 0"):
        jn.train(net, task, "ntk", steps=2, seeds=[-1], progress=False)
    run = jn.train(net, task, "ntk", steps=2, seeds=4, eval_every=2, progress=False)
    assert run.config["seeds"] == [4] and run.history["train_loss"].shape == (1, 1, 2)
    assert not run.diverged


@pytest.mark.slow
def test_run_config_records_the_defaults_and_settings(net, task):
    """Run.config holds what the run used: the default variant and optimizer, the sizes, the
    caller's own optimizer by its repr; the trace's steps are int64."""
    run = jn.train(net, task, steps=3, eval_every=3, progress=False)
    cfg = run.config
    assert (cfg["variant"], cfg["optimizer"], cfg["lr"]) == ("ntk+quadntk", "sgd", 1.0)
    assert (cfg["n"], cfg["d"], cfg["distribution"]) == (task.n, task.d, task.distribution)
    assert cfg["seeds"] == [0] and cfg["steps"] == 3
    assert run.trace["step"].dtype == np.int64 and run.trace["step"].tolist() == [0, 1, 2]
    opt = optax.sgd(0.01)
    assert jn.train(net, task, steps=1, optimizer=opt, progress=False).config["optimizer"] == repr(
        opt
    )


def test_labels_that_do_not_fit_are_named(net, task):
    short = dataclasses.replace(task, y_test=task.y_test[:-1])
    with pytest.raises(ValueError, match=r"^y_test has 399 rows but x_test has 400"):
        jn.train(net, short, "ntk", steps=1, progress=False)
    column = dataclasses.replace(task, y_test=task.y_test[:, None])
    with pytest.raises(ValueError, match=r"^y_test has shape \(400, 1\) but the model's outputs"):
        jn.train(net, column, "ntk", steps=1, progress=False)


def test_auto_batching_is_lax_map_on_cpu_and_vmap_stays_vmap():
    assert training._batching_mode("auto") == ("map" if jax.default_backend() == "cpu" else "vmap")
    assert training._batching_mode("vmap") == "vmap"
    assert training._batching_mode("map") == "map"


@pytest.mark.slow
def test_norm24_penalty_reaches_training(net, task):
    """λ_4 > 0 adds λ_4·R_24(U) to the objective at every step (the trace) and changes U."""
    reg = jn.Regularizer(norm24=[0.0, 0.5])
    run = jn.train(net, task, "ntk", reg=reg, steps=4, eval_every=4, init_scale=0.1, progress=False)
    tr = run.trace
    np.testing.assert_allclose(
        tr["loss"][1, 0], tr["mse"][1, 0] + 0.5 * tr["norm24"][1, 0], rtol=1e-5
    )
    np.testing.assert_allclose(tr["loss"][0, 0], tr["mse"][0, 0], rtol=1e-6)
    assert not np.allclose(run.params[0, 0], run.params[1, 0])


@pytest.mark.slow
def test_progress_callback_gets_each_chunks_summary(net, task):
    """A callable `progress` gets one dict per chunk: label, step, steps, elapsed seconds and the
    last evaluation's train/test loss averaged over the seeds."""
    infos = []
    run = jn.train(
        net,
        task,
        "ntk",
        steps=20,
        eval_every=10,
        evals_per_chunk=1,
        seeds=[0, 1],
        progress=infos.append,
    )
    assert [set(i) for i in infos] == [
        {"label", "step", "steps", "elapsed_s", "train_loss", "test_loss"}
    ] * 2
    assert [(i["label"], i["step"], i["steps"]) for i in infos] == [
        ("ntk", 10, 20),
        ("ntk", 20, 20),
    ]
    assert 0 <= infos[0]["elapsed_s"] <= infos[1]["elapsed_s"]
    for i, info in enumerate(infos, start=1):
        for key in ("train_loss", "test_loss"):
            assert info[key] == pytest.approx(float(np.mean(run.history[key][0, :, i])), rel=1e-6)


def test_fit_reports_under_the_label_run_by_default(net, task):
    objective = jn.objectives.VariantObjective("ntk")
    data = jn.objectives.Data(
        net, task.x_train, task.x_test, task.y_train, task.y_test, task.parts_test
    )
    infos = []
    jn.fit(objective, data, hyper={}, seeds=[0], steps=2, eval_every=2, progress=infos.append)
    assert [(i["label"], i["step"]) for i in infos] == [("run", 2)]


@pytest.mark.parametrize("batching", ["map", "vmap"])
@pytest.mark.slow
def test_eval_at_evaluates_exactly_at_the_requested_steps(net, task, batching):
    # an independent per-step run (eval_every=1, the default path) gives the curve at every step
    kw = dict(steps=23, seeds=[0, 1], progress=False, batching=batching)
    reg = jn.Regularizer(bulk=[0.0, 1.0])
    every = jn.train(net, task, "regularized", reg=reg, eval_every=1, **kw)
    wanted = [1, 2, 5, 6, 17]
    run = jn.train(net, task, "regularized", reg=reg, eval_at=wanted, evals_per_chunk=2, **kw)
    assert run.history["step"].tolist() == [0, 1, 2, 5, 6, 17, 23]
    for key, val in run.history.items():
        if key != "step":
            np.testing.assert_allclose(
                val, every.history[key][:, :, run.history["step"]], rtol=1e-5, atol=1e-7
            )
    np.testing.assert_allclose(run.trace["loss"], every.trace["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(run.trace["step"], np.arange(23))
    np.testing.assert_allclose(run.params, every.params, rtol=1e-5, atol=1e-7)


def test_log_schedule_is_evenly_spaced_in_log_t(net, task):
    at = training.eval_schedule(10_000, "log", points=9)
    assert at.tolist() == [1, 3, 10, 32, 100, 316, 1000, 3162, 10_000]
    run = jn.train(net, task, "ntk", steps=40, eval_at="log", eval_points=6, progress=False)
    expected = np.unique(np.round(40.0 ** (np.arange(6) / 5))).astype(int).tolist()
    assert run.history["step"].tolist() == [0, *expected]
    assert run.config["eval_at"] == expected


def test_default_schedule_is_unchanged_by_eval_at(net, task):
    run = jn.train(net, task, "ntk", steps=25, eval_every=10, evals_per_chunk=2, progress=False)
    assert run.history["step"].tolist() == [0, 10, 20, 25]
    assert "eval_at" not in run.config


@pytest.mark.parametrize(
    "eval_at, match",
    [("linear", "eval_at"), ([0, 5], r"\[1, steps"), ([3, 11], r"\[1, steps"), ([1.5], "ints")],
)
def test_bad_eval_schedule_raises(net, task, eval_at, match):
    with pytest.raises(ValueError, match=match):
        jn.train(net, task, "ntk", steps=10, eval_at=eval_at, progress=False)


@pytest.mark.slow
def test_resume_on_a_log_schedule_equals_the_uninterrupted_run(net, task, tmp_path):
    kw = dict(steps=60, eval_at="log", eval_points=8, evals_per_chunk=3, seeds=[0], progress=False)
    full = jn.train(net, task, "ntk+quadntk", **kw)
    seen = []

    def stop_after_first_chunk(info):
        seen.append(info["step"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jn.train(
            net,
            task,
            "ntk+quadntk",
            **{**kw, "progress": stop_after_first_chunk},
            checkpoint=tmp_path,
        )
    resumed = jn.train(net, task, "ntk+quadntk", **kw, checkpoint=tmp_path, resume=True)
    assert seen == [20]  # 8 evaluation steps, 3 per chunk: three chunks of 20 steps
    for key in full.history:
        np.testing.assert_array_equal(full.history[key], resumed.history[key])
    np.testing.assert_array_equal(full.params, resumed.params)
