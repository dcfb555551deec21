"""A user's arrays as a Task, and the checks `train` runs on every task before compiling."""

import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn

D, N, N_TEST = 4, 12, 6


def arrays(dtype=np.float32):
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(N, D)).astype(dtype), rng.normal(size=(N_TEST, D)).astype(dtype)
    return {"x_train": x, "y_train": x[:, 0] * x[:, 1], "x_test": x_test, "y_test": x_test[:, 0]}


def from_arrays(**changes):
    a = arrays()
    a.update(changes)
    return jn.Task.from_arrays(a["x_train"], a["y_train"], a["x_test"], a["y_test"])


def test_from_arrays_keeps_the_values_and_has_one_part():
    a = arrays()
    task = from_arrays()
    assert (task.n, task.d, task.n_test, task.part_names) == (N, D, N_TEST, ("y",))
    for name, value in a.items():
        np.testing.assert_array_equal(np.asarray(getattr(task, name)), value)
    np.testing.assert_array_equal(np.asarray(task.parts_test), a["y_test"][None])


def test_a_task_from_arrays_trains():
    task = from_arrays()
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=8)
    run = jn.train(net, task, "ntk", steps=20, eval_every=10, progress=False)
    loss = run.history["train_loss"][0, 0]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
    np.testing.assert_allclose(run.history["share_linear"][0, 0, 0], 0.0, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "where", "bad", "message"),
    [
        ("x_train", (3, 1), np.nan, "x_train has 1 non-finite value (row 3)"),
        ("y_train", (5,), np.nan, "y_train has 1 non-finite value (row 5)"),
        ("x_test", (2, 0), np.inf, "x_test has 1 non-finite value (row 2)"),
        ("y_test", (0,), -np.inf, "y_test has 1 non-finite value (row 0)"),
    ],
)
def test_a_non_finite_value_is_named_with_its_row(field, where, bad, message):
    value = arrays()[field].copy()
    value[where] = bad
    with pytest.raises(ValueError) as error:
        from_arrays(**{field: value})
    assert str(error.value) == message


def test_several_non_finite_values_list_their_rows():
    x = arrays()["x_train"].copy()
    x[[1, 1, 7], [0, 2, 3]] = np.nan
    with pytest.raises(ValueError, match=r"x_train has 3 non-finite values \(rows 1, 7\)"):
        from_arrays(x_train=x)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_train": np.zeros(N - 1, np.float32)}, "y_train has 11 rows but x_train has 12"),
        ({"y_test": np.zeros((N_TEST, 1), np.float32)}, r"y_test has shape \(6, 1\), y_train"),
        ({"x_test": np.zeros((N_TEST, D + 1), np.float32)}, "x_test has d = 5 features"),
        ({"x_train": np.zeros(N, np.float32)}, r"x_train must have at least 2 dimensions"),
    ],
)
def test_shapes_that_do_not_match_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(**changes)


@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_half_precision_or_integer_inputs_are_refused(dtype):
    x = arrays()["x_train"].astype(dtype)
    with pytest.raises(TypeError, match=f"x_train must be float32 or float64, got dtype {dtype}"):
        from_arrays(x_train=x)


def test_train_checks_a_task_before_compiling():
    task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=N_TEST)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=8)
    bad = dataclasses.replace(task, x_train=task.x_train.at[4, 2].set(jnp.nan))
    with pytest.raises(ValueError, match=r"x_train has 1 non-finite value \(row 4\)"):
        jn.train(net, bad, "ntk", steps=5, progress=False)
    wide = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D + 2, m=8)
    with pytest.raises(ValueError, match="x_train has d = 4 features per row, but the model"):
        jn.train(wide, task, "ntk", steps=5, progress=False)
    short = dataclasses.replace(task, y_train=task.y_train[:-1])
    with pytest.raises(ValueError, match="y_train has 11 rows but x_train has 12"):
        jn.train(net, short, "ntk", steps=5, progress=False)


@pytest.mark.slow
def test_a_task_in_another_dtype_than_the_model_is_refused(x64):
    task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=N_TEST)  # float64 under x64
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=8, dtype=jnp.float32)
    with pytest.raises(TypeError, match="x_train has dtype float64, but the model's parameters"):
        jn.train(net, task, "ntk", steps=5, progress=False)


# --- image-shaped inputs: n is the examples' axis, d the features of one input ----------------


class ImageCNN(nn.Module):
    """8 × 8 × 1 images ↦ one output; `flat` takes the same images flattened to (n, 64)."""

    flat: bool = False

    @nn.compact
    def __call__(self, x):
        f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
        x = x.reshape(-1, 8, 8, 1) if self.flat else x
        h = jnp.tanh(nn.Conv(3, (3, 3), strides=2, **f64)(x))
        return nn.Dense(1, **f64)(h.reshape(h.shape[0], -1))[:, 0]


def image_task(seed, n=80, n_test=20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_test, 8, 8, 1))
    y = np.tanh(x[:, 2:5, 2:5, 0].sum(axis=(1, 2)) / 3) + 0.5 * x[:, 4, 4, 0] ** 2
    return jn.Task.from_arrays(x[:n], y[:n], x[n:], y[n:])


def flattened(task):
    n, n_test = task.x_train.shape[0], task.x_test.shape[0]
    return jn.Task.from_arrays(
        task.x_train.reshape(n, -1), task.y_train, task.x_test.reshape(n_test, -1), task.y_test
    )


CNNS = (ImageCNN(), ImageCNN(flat=True))  # one module each: models alike stack per seed


def image_models(seed):
    params0 = CNNS[0].init(jax.random.PRNGKey(seed), jnp.ones((1, 8, 8, 1), jnp.float64))
    return (jn.TaylorModel(cnn.apply, params0) for cnn in CNNS)


def test_image_inputs_count_examples_on_the_first_axis():
    x = np.zeros((10, 8, 8, 1), np.float32)
    task = jn.Task.from_arrays(x, np.arange(10.0, dtype=np.float32), x[:4], np.zeros(4, np.float32))
    assert (task.n, task.n_test, task.d, task.input_shape) == (10, 4, 64, (8, 8, 1))
    assert (task.seed_axes, task.input_ndim) == (0, 3)
    # a regularizer bounded by n reads 10, not the image width 8
    jn.Regularizer(k=10).validate(task.n)


def test_tasks_stacked_over_seeds_read_n_after_the_seed_axis():
    x = jnp.zeros((3, 10, 8, 8, 1))
    one = jn.Task.from_arrays(x[0], jnp.zeros(10), x[0, :4], jnp.zeros(4))
    stacked = dataclasses.replace(
        one, x_train=x, x_test=x[:, :4], y_train=jnp.zeros((3, 10)), y_test=jnp.zeros((3, 4))
    )
    assert (stacked.seed_axes, stacked.n, stacked.n_test, stacked.d) == (1, 10, 4, 64)
    with pytest.raises(ValueError, match="list of tasks, one per seed"):
        jn.data.check_task(stacked)


def test_regularized_cnn_on_images_equals_the_run_on_flattened_inputs(x64):
    task = image_task(0)
    runs = [
        jn.train(model, t, "regularized", steps=30, lr=0.05, eval_every=10, progress=False)
        for model, t in zip(image_models(0), (task, flattened(task)), strict=True)
    ]
    for run in runs:
        assert (run.config["n"], run.config["d"]) == (80, 64)
    # the default k = d = 64 good directions on both: the penalty is on (R_bulk > 0) and equal
    assert runs[0].history["bulk"][0, 0, -1] > 1e-6
    for name in ("train_loss", "test_loss", "bulk"):
        np.testing.assert_allclose(runs[0].history[name], runs[1].history[name], rtol=1e-6)
    for a, b in zip(*(jax.tree_util.tree_leaves(r.params) for r in runs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_ten_images_take_k_up_to_ten_and_train_like_their_flattened_rows(x64):
    """The issue's own case, x (10, 8, 8, 1): k = 9 fits n = 10 (not the image width 8)."""
    task = image_task(0, n=10, n_test=4)
    reg, kw = jn.Regularizer(k=9), {"steps": 10, "lr": 0.05, "eval_every": 5, "progress": False}
    runs = [
        jn.train(model, t, "regularized", reg=reg, **kw)
        for model, t in zip(image_models(0), (task, flattened(task)), strict=True)
    ]
    assert runs[0].config["n"] == 10
    np.testing.assert_allclose(
        runs[0].history["test_loss"], runs[1].history["test_loss"], rtol=1e-6
    )


def test_default_k_larger_than_n_is_named(x64):
    task = image_task(0, n=40)
    model, _ = image_models(0)
    with pytest.raises(ValueError, match=r"Regularizer.k defaults to d = 64.*n = 40"):
        jn.train(model, task, "regularized", steps=2, progress=False)


@pytest.mark.slow
def test_per_seed_image_tasks_train_the_regularized_variant_like_separate_runs(x64):
    tasks = [image_task(s) for s in (1, 2)]
    models = [next(image_models(s)) for s in (1, 2)]
    kw = {"steps": 20, "lr": 0.05, "eval_every": 10, "progress": False}
    together = jn.train(models, tasks, "regularized", seeds=[1, 2], **kw)
    assert together.config["n"] == 80
    for i, (model, task) in enumerate(zip(models, tasks, strict=True)):
        alone = jn.train(model, task, "regularized", seeds=[i + 1], **kw)
        np.testing.assert_allclose(
            together.history["test_loss"][:, i], alone.history["test_loss"][:, 0], rtol=1e-10
        )


# --- MNIST-1D ----------------------------------------------------------------------------------


def test_mnist1d_defaults_are_the_published_split(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # noqa: NPY002 (the global one the package seeds)
    task = jn.data.mnist1d(cache_dir=tmp_path)
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002 (restored)
    ref = make_dataset(get_dataset_args())  # the package's own 4000 / 1000 split of seed 42
    np.testing.assert_array_equal(np.asarray(task.x_train), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(task.x_test), ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(task.y_train), ref["y"])
    np.testing.assert_array_equal(np.asarray(task.y_test), ref["y_test"])
    assert (task.n, task.n_test, task.d, task.x_train.dtype) == (4000, 1000, 40, jnp.float32)


def test_mnist1d_is_cached_and_regenerated_when_damaged(tmp_path, monkeypatch):
    first = jn.data.mnist1d(n_train=30, n_test=10, seed=3, cache_dir=tmp_path)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    import mnist1d.data

    def refuse(args):
        raise AssertionError("generated again")

    with monkeypatch.context() as patch:
        patch.setattr(mnist1d.data, "make_dataset", refuse)
        again = jn.data.mnist1d(n_train=30, n_test=10, seed=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(again.x_train), np.asarray(first.x_train))
    path.write_bytes(b"not an npz")
    mended = jn.data.mnist1d(n_train=30, n_test=10, seed=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(mended.x_test), np.asarray(first.x_test))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left


def test_mnist1d_shapes_one_hot_and_other_sizes(tmp_path):
    task = jn.data.mnist1d(n_train=25, n_test=7, one_hot=True, signal=True, cache_dir=tmp_path)
    assert task.x_train.shape == (25, 40, 1) and task.x_test.shape == (7, 40, 1)
    labels = np.asarray(task.y_train)
    assert labels.shape == (25, 10) and np.all(labels.sum(1) == 1) and set(labels.ravel()) <= {0, 1}
    # 32 signals are drawn as 40 (whole classes): 25 train, the next 7 test
    whole = jn.data.mnist1d(n_train=33, n_test=7, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(task.x_test)[..., 0], np.asarray(whole.x_train)[25:32])


def test_mnist1d_bad_sizes_and_a_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="n_train"):
        jn.data.mnist1d(n_train=0, cache_dir=False)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[mnist1d\]"'):
        jn.data.mnist1d(n_train=10, n_test=10, cache_dir=False)
