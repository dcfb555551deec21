"""Minibatch training (jaxntk/minibatch.py and the epoch loop of jaxntk/training.py): one batch of
all n rows is the full-batch run, a hand-rolled optax loop over the same permutations is the
compiled run, early stopping keeps the best validation epoch, resume equals the uninterrupted
run, the R_bulk estimator is unbiased, the blocked evaluation is the whole one, and bad settings
are named before anything compiles."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxntk as jn
from jaxntk import minibatch, objectives, training

D, N, M, EPOCHS = 5, 24, 16, 4


def problem(seed=0, n=N):
    """A float64 task and two-layer network (build inside the x64 fixture)."""
    task = jn.paper_task(jax.random.PRNGKey(seed), d=D, n=n, n_test=30)
    net = jn.TwoLayer.init(jax.random.PRNGKey(seed + 1), d=D, m=M)
    return net, task


def assert_same_run(full, mini):
    """Every step's training objective, every evaluation and the final U agree to 1e-10."""
    assert set(full.trace) == set(mini.trace)
    for key in full.trace:
        np.testing.assert_allclose(mini.trace[key], full.trace[key], rtol=0, atol=1e-10)
    # R_pop is logged by a minibatch run only where it is trained (its V_k costs k products)
    logged = set(full.history) - ({"pop"} if "pop" not in full.trace else set())
    assert set(mini.history) == logged | {"epoch"}
    for key in logged:
        np.testing.assert_allclose(mini.history[key], full.history[key], rtol=0, atol=1e-10)
    for got, want in zip(jax.tree.leaves(mini.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def one_batch_against_full_batch(model, task, variant, reg=None, seeds=(1, 2), **kw):
    kw = dict(seeds=seeds, lr=0.5, progress=False, evals_per_chunk=EPOCHS, reg=reg, **kw)
    full = jn.train(model, task, variant, steps=EPOCHS, eval_every=1, **kw)
    n = task.x_train.shape[0]
    mini = jn.train(model, task, variant, minibatch=jn.Minibatch(n, EPOCHS), **kw)
    assert_same_run(full, mini)
    np.testing.assert_array_equal(mini.history["epoch"], np.arange(EPOCHS + 1))


def test_one_batch_of_all_rows_is_the_full_batch_run_with_the_bulk_penalty(x64):
    net, task = problem()
    one_batch_against_full_batch(net, task, "ntk", jn.Regularizer(bulk=1.0, k=3), seeds=[1])


@pytest.mark.slow
def test_one_batch_of_all_rows_is_the_full_batch_run_with_every_regularizer(x64):
    net, task = problem()
    reg = jn.Regularizer(bulk=[0.0, 1.0], pop=0.5, norm24=0.1, k=3)
    one_batch_against_full_batch(net, task, "regularized", reg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", ["full", "ntk", "quadntk", "randomized", "ntk+quadntk", "taylor-3"]
)
def test_one_batch_of_all_rows_is_the_full_batch_run_for_every_variant(x64, variant):
    net, task = problem()
    one_batch_against_full_batch(net, task, variant)


@pytest.mark.slow
def test_one_batch_of_all_rows_is_the_full_batch_run_for_a_generic_model(x64):
    net, task = problem()
    model = jn.TaylorModel(net.apply_fn, net.w0)
    one_batch_against_full_batch(model, task, "regularized", jn.Regularizer(bulk=1.0, pop=0.5))


@pytest.mark.slow
def test_one_batch_of_all_rows_is_the_full_batch_run_for_cross_entropy(x64):
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((N, D)), rng.standard_normal((9, D))
    task = jn.Task.from_arrays(x, rng.integers(0, 3, N), x_test, rng.integers(0, 3, 9))
    params = {"w": rng.standard_normal((D, 6)), "v": rng.standard_normal((6, 3))}

    def apply_fn(params, x):  # 3 logits per input
        return jnp.tanh(x @ params["w"]) @ params["v"]

    model = jn.TaylorModel(apply_fn, jax.tree_util.tree_map(jnp.asarray, params))
    one_batch_against_full_batch(model, task, "ntk+quadntk", loss="cross_entropy")


def hand_rolled(net, task, seed, batch_size, epochs, lr, patience, split):
    """The NTK model trained by a plain optax loop over `epoch_permutation`'s batches, f_L by a
    jvp of the network, and the early stopping of the docs: (per-epoch val losses, best U, best
    epoch, stop epoch)."""
    fit, val = split
    x, y, xv, yv = task.x_train[fit], task.y_train[fit], task.x_train[val], task.y_train[val]

    def f_lin(u, x):
        return jax.jvp(lambda w: net.apply_fn(w, x), (net.w0,), (u,))[1]

    def loss(u, x, y):
        return jnp.mean((y - f_lin(u, x)) ** 2)

    grad = jax.jit(jax.grad(loss))
    opt = optax.sgd(lr, momentum=0.9)  # the trainer's "momentum"
    u = jnp.zeros_like(net.w0)
    state = opt.init(u)
    scores = [float(loss(u, xv, yv))]
    best, best_u, best_epoch, waited, stopped = scores[0], u, 0, 0, -1
    for epoch in range(epochs):
        perm = np.asarray(minibatch.epoch_permutation(seed, epoch, len(fit)))
        for j in range(len(fit) // batch_size):
            rows = perm[j * batch_size : (j + 1) * batch_size]
            grads = grad(u, x[rows], y[rows])
            updates, state = opt.update(grads, state, u)
            u = optax.apply_updates(u, updates)
        scores.append(float(loss(u, xv, yv)))
        if scores[-1] < best:
            best, best_u, best_epoch, waited = scores[-1], u, epoch + 1, 0
        else:
            waited += 1
            if waited >= patience:
                stopped = epoch + 1
                break
    return np.array(scores), best_u, best_epoch, stopped


def test_compiled_minibatch_run_is_a_hand_rolled_optax_loop_with_early_stopping(x64):
    net, task = problem(seed=3)
    # labels with noise, a large step: the validation loss turns up and patience runs out
    noisy = task.y_train + jax.random.normal(jax.random.PRNGKey(9), task.y_train.shape)
    task = jn.Task.from_arrays(task.x_train, noisy, task.x_test, task.y_test)
    mb = jn.Minibatch(batch_size=5, epochs=12, validation=0.25, patience=2)
    split = mb.split(N)
    seeds = [4, 7]
    run = jn.train(
        net,
        task,
        "ntk",
        minibatch=mb,
        seeds=seeds,
        lr=0.3,
        optimizer="momentum",
        progress=False,
        evals_per_chunk=5,
    )
    # the chunks stop once every setting has: the history ends with the last chunk run
    assert run.history["val_loss"].shape[:2] == (1, 2)
    for s, seed in enumerate(seeds):
        scores, best_u, best_epoch, stopped = hand_rolled(net, task, seed, 5, 12, 0.3, 2, split)
        got = run.history["val_loss"][0, s]
        np.testing.assert_allclose(got[: scores.size], scores, rtol=1e-9, atol=1e-12)
        assert np.all(np.isnan(got[scores.size :]))  # stopped: no later evaluation
        assert run.best_epoch[0, s] == best_epoch
        assert run.stopped_at_epoch[0, s] == stopped
        np.testing.assert_allclose(run.params[0, s], best_u, rtol=1e-9, atol=1e-12)
    assert np.any(run.stopped_at_epoch > 0) and np.any(run.best_epoch > 0)


@pytest.mark.slow
def test_resume_mid_run_equals_the_uninterrupted_run(x64, tmp_path):
    net, task = problem()
    mb = jn.Minibatch(batch_size=7, epochs=6, validation=0.2, patience=4)
    kw = dict(minibatch=mb, seeds=[0, 1], evals_per_chunk=2, reg=jn.Regularizer(bulk=1.0))
    full = jn.train(net, task, "regularized", progress=False, **kw)
    seen = []

    def stop_after_second_chunk(info):
        seen.append(info["epoch"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jn.train(
            net, task, "regularized", progress=stop_after_second_chunk, checkpoint=tmp_path, **kw
        )
    resumed = jn.train(
        net, task, "regularized", progress=False, checkpoint=tmp_path, resume=True, **kw
    )
    assert seen == [2, 4]
    for key in full.history:
        np.testing.assert_array_equal(full.history[key], resumed.history[key])
    for key in full.trace:
        np.testing.assert_array_equal(full.trace[key], resumed.trace[key])
    np.testing.assert_array_equal(full.params, resumed.params)
    np.testing.assert_array_equal(full.best_epoch, resumed.best_epoch)


def test_bulk_estimator_averages_to_the_full_penalty_over_every_batch(x64):
    n, k, b = 7, 2, 3
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((n, k)))[0]
    f = rng.standard_normal(n)
    full = np.mean((f - q @ (q.T @ f)) ** 2)  # (1/n)‖(I − U_k U_kᵀ) f‖², numpy
    est = [
        float(minibatch.bulk_penalty_batch(jnp.asarray(q[list(r)]), jnp.asarray(f[list(r)]), n))
        for r in itertools.combinations(range(n), b)
    ]
    np.testing.assert_allclose(np.mean(est), full, rtol=1e-12)
    assert np.std(est) > 1e-3  # an estimate, not the value itself


@pytest.mark.parametrize("traced", [False, True])
def test_bulk_estimator_of_several_outputs_averages_to_the_full_penalty(x64, traced):
    """c = 3 outputs per row: the projector U_k U_kᵀ on f.ravel() (U_k (n·c, k), "full") or
    U_k U_kᵀ ⊗ I_c on each output's column (U_k (n, k), "traced"), written out in numpy."""
    n, c, k, b = 6, 3, 4, 3
    rng = np.random.default_rng(1)
    f = rng.standard_normal((n, c))
    q = np.linalg.qr(rng.standard_normal((n if traced else n * c, k)))[0]
    top = q @ (q.T @ f) if traced else (q @ (q.T @ f.ravel())).reshape(n, c)
    full = np.mean((f - top) ** 2)
    rows_of_q = q if traced else q.reshape(n, c, k)
    est = [
        float(
            minibatch.bulk_penalty_batch(
                jnp.asarray(rows_of_q[list(r)]), jnp.asarray(f[list(r)]), n, traced=traced
            )
        )
        for r in itertools.combinations(range(n), b)
    ]
    np.testing.assert_allclose(np.mean(est), full, rtol=1e-12)
    whole = minibatch.bulk_penalty_batch(jnp.asarray(rows_of_q), jnp.asarray(f), n, traced=traced)
    np.testing.assert_allclose(float(whole), full, rtol=1e-12)  # b = n: the value itself


@pytest.mark.parametrize("outputs", ["full", pytest.param("traced", marks=pytest.mark.slow)])
def test_one_batch_of_all_rows_is_the_full_batch_run_of_a_classifier(x64, outputs):
    """The regularized variant on a 10-output model with the cross-entropy, R_bulk and R_pop
    from held-out inputs, in both forms of the good directions."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3))
    labels = np.argmax(x @ rng.standard_normal((3, 10)), axis=1).astype(np.int32)
    task = jn.Task.from_arrays(x[:14], labels[:14], x[14:], labels[14:])
    params = {
        "h": jnp.asarray(rng.standard_normal((3, 8)) / 2),
        "o": jnp.asarray(rng.standard_normal((8, 10)) / 3),
    }
    model = jn.TaylorModel(lambda p, x: jnp.tanh(x @ p["h"]) @ p["o"], params)
    pool = jnp.asarray(rng.standard_normal((40, 3)))
    reg = jn.Regularizer(bulk=1.0, pop=0.5, k=4, outputs=outputs, pop_inputs=pool)
    one_batch_against_full_batch(model, task, "regularized", reg, seeds=[1], loss="cross_entropy")


def test_evaluation_in_blocks_equals_the_whole_evaluation(x64):
    net, task = problem()
    dirs = jn.good_directions(net, net.prepare(task.x_train), k=3)
    data = objectives.Data(
        net,
        task.x_train,
        task.x_test,
        task.y_train,
        task.y_test,
        task.parts_test,
        dirs,
        task.x_test[:13],
    )
    obj = objectives.VariantObjective("randomized", use_bulk=True)
    u = 0.3 * jax.random.normal(jax.random.PRNGKey(5), net.w0.shape)
    whole = jax.jit(lambda u, d: obj.evaluate(u, obj.prepare(d), {}))(u, data)
    batched = minibatch.BatchObjective(obj, eval_block=5)
    v_k = minibatch.right_vectors(net, task.x_train, dirs)
    blocks = jax.jit(lambda u, d: batched.evaluate(u, d, {}))(u, minibatch.BatchData(data, v_k=v_k))
    assert set(blocks) == set(whole)
    for key in whole:
        np.testing.assert_allclose(blocks[key], whole[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be between 1 and 24"),
        ({"batch_size": 25}, "batch_size must be between 1 and 24"),
        ({"batch_size": 20, "validation": 0.25}, "batch_size must be between 1 and 18"),
        ({"validation": 1.0}, "validation must be 0 or a fraction in"),
        ({"validation": -0.1}, "validation must be 0 or a fraction in"),
        ({"epochs": 0}, "epochs must be"),
        ({"patience": 3}, "patience needs a validation set"),
        ({"validation": 0.2, "patience": 0}, "patience must be"),
        ({"monitor": "accuracy", "validation": 0.2}, "monitor='accuracy' needs"),
        ({"monitor": "f1"}, "monitor must be one of"),
    ],
)
def test_bad_minibatch_settings_are_named_before_compiling(kwargs, match):
    net, task = problem()
    settings = {"batch_size": 4, "epochs": 2, **kwargs}
    before = training._run_epochs._cache_size()
    with pytest.raises(ValueError, match=match):
        jn.train(net, task, "ntk", minibatch=jn.Minibatch(**settings), progress=False)
    assert training._run_epochs._cache_size() == before


def test_arguments_that_do_not_apply_to_minibatch_runs_are_named():
    net, task = problem()
    mb = jn.Minibatch(4, 2)
    for kwargs, match in (
        ({"steps": 10}, "steps: a minibatch run is counted in epochs"),
        ({"eval_at": "log"}, "eval_at: a minibatch run evaluates after every epoch"),
        ({"probe": 2}, "probe: minibatch runs record no laziness probe"),
    ):
        with pytest.raises(ValueError, match=match):
            jn.train(net, task, "ntk", minibatch=mb, **kwargs)
    with pytest.raises(TypeError, match="steps is required"):
        jn.train(net, task, "ntk")
    with pytest.raises(TypeError, match="minibatch must be a jaxntk"):
        jn.train(net, task, "ntk", minibatch={"batch_size": 4})
    bad = jn.Minibatch(4, 2, validation=(task.x_train[:5], task.y_train[:4]))
    with pytest.raises(ValueError, match="validation's y_val has 4 rows"):
        jn.train(net, task, "ntk", minibatch=bad)


@pytest.mark.slow
def test_divergence_names_its_epoch_and_progress_counts_epochs(capsys):
    net, task = problem()
    with pytest.warns(jn.DivergenceWarning, match=r"at step \d+ \(epoch \d, batch \d of 4\)"):
        run = jn.train(net, task, "ntk", minibatch=jn.Minibatch(6, 3), lr=1e6, seeds=[0])
    assert run.diverged
    err = capsys.readouterr().err
    assert "[ntk] epoch 3/3  train" in err


@pytest.mark.slow
def test_vmapped_settings_and_one_task_per_seed_equal_separate_runs(x64):
    net, task = problem()
    mb = jn.Minibatch(5, 3, validation=0.25, patience=2)
    reg = jn.Regularizer(bulk=[0.0, 1.0], pop=0.3)
    kw = dict(minibatch=mb, reg=reg, progress=False)
    mapped = jn.train(net, task, "regularized", seeds=[1, 2], batching="map", **kw)
    vmapped = jn.train(net, task, "regularized", seeds=[1, 2], batching="vmap", **kw)
    for key in mapped.history:
        np.testing.assert_allclose(vmapped.history[key], mapped.history[key], atol=1e-12)
    np.testing.assert_allclose(vmapped.params, mapped.params, atol=1e-12)
    tasks = [problem(seed=s)[1] for s in (3, 4)]
    nets = [problem(seed=s)[0] for s in (5, 6)]
    both = jn.train(nets, tasks, "regularized", seeds=[1, 2], **kw)
    for i, seed in enumerate((1, 2)):
        alone = jn.train(nets[i], tasks[i], "regularized", seeds=[seed], **kw)
        for key in set(alone.history) - {"step", "epoch"}:
            np.testing.assert_allclose(
                both.history[key][:, i], alone.history[key][:, 0], atol=1e-12
            )
        np.testing.assert_array_equal(both.best_epoch[:, i], alone.best_epoch[:, 0])


@pytest.mark.slow
def test_image_inputs_through_a_cnn_one_batch_is_the_full_batch_run(x64):
    flax = pytest.importorskip("flax.linen")

    class CNN(flax.Module):
        @flax.compact
        def __call__(self, x):
            x = jnp.tanh(flax.Conv(3, (3, 3), param_dtype=jnp.float64)(x))
            return flax.Dense(1, param_dtype=jnp.float64)(x.mean(axis=(1, 2)))[:, 0]

    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((10, 5, 5, 1)), rng.standard_normal((7, 5, 5, 1))
    task = jn.Task.from_arrays(x, x.mean(axis=(1, 2, 3)), x_test, x_test.mean(axis=(1, 2, 3)))
    module = CNN()
    model = jn.TaylorModel(module.apply, module.init(jax.random.PRNGKey(0), x[:1]))
    one_batch_against_full_batch(model, task, "ntk+quadntk")
