"""A user's arrays as a Task, and the checks `train` runs on every task before compiling."""

import dataclasses

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
