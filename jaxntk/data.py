"""A user's own arrays as a checked `Task`, and the checks every task meets before training.

`task_from_arrays(x_train, y_train, x_test, y_test)` (also `jaxntk.Task.from_arrays`) wraps plain
arrays in a `jaxntk.targets.Task` with one target part, "y" (the labels themselves), so that the
trainer's per-part shares read 1 for the whole target. `check_task(task, model)` is what
`jaxntk.train` runs on any task before anything compiles:

    shapes   x_train (n, *in), x_test (n_test, *in), y_train (n, *out), y_test (n_test, *out),
             parts_train (P, n, ...), parts_test (P, n_test, ...); d equal to the model's
             input size where it has one (the labels' shape against the model's output is
             checked with the loss, `jaxntk.objectives.check_targets`);
    dtypes   inputs and parts float32 or float64, all of one dtype, the model's; labels of that
             dtype, or integers (class labels, for a loss that takes them);
    values   every entry finite.

A failure is a ValueError (TypeError for a dtype) that names the field and what was found, e.g.
"x_train has 1 non-finite value (row 3)".

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, x_test = rng.normal(size=(20, 3)), rng.normal(size=(8, 3))
    >>> task = task_from_arrays(x, x[:, 0], x_test, x_test[:, 0])
    >>> task.n, task.d, task.n_test, task.part_names
    (20, 3, 8, ('y',))
    >>> x[3, 1] = np.nan
    >>> task_from_arrays(x, x[:, 0], x_test, x_test[:, 0])
    Traceback (most recent call last):
    ...
    ValueError: x_train has 1 non-finite value (row 3)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk.targets import DISTRIBUTIONS, Task

__all__ = ["FLOAT_DTYPES", "check_task", "task_from_arrays"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes a task's arrays may have: half precision loses the small gradients of a wide network,
and integers are no inputs of a smooth model."""

_FIELDS = ("x_train", "y_train", "x_test", "y_test", "parts_train", "parts_test")
_SHOWN_ROWS = 5


def task_from_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    distribution: str = "gaussian",
) -> Task:
    """A `Task` from a user's arrays: inputs x (n, ...) and labels y (n, ...), train and test.

    Args:
        x_train: the n training inputs, (n, d) or (n, *in), float32 or float64.
        y_train: their labels, (n,) or (n, *out); integers for class labels (cross-entropy).
        x_test: the n_test test inputs, shaped like x_train after the rows.
        y_test: their labels, shaped like y_train after the rows.
        distribution: the law that regularizers drawing fresh inputs (R_pop) sample from, a name
            in `jaxntk.targets.DISTRIBUTIONS`; the trainer uses it nowhere else.

    Returns:
        A checked `Task` with one part "y" (parts_train = y_train[None], likewise for test) and
        no `target` (None): the target function is not known, only its values.

    Raises:
        ValueError, TypeError: as `check_task`, naming the argument.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for name, value in arrays.items():
        _check_array(name, value)
    _check_shapes({k: np.shape(v) for k, v in arrays.items()}, labels_alike=True)
    x_train, y_train, x_test, y_test = (jnp.asarray(v) for v in arrays.values())
    task = Task(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        parts_train=y_train[None],
        parts_test=y_test[None],
        target=None,
        distribution=distribution,
        part_names=("y",),
    )
    check_task(task)
    return task


def check_task(task: Any, model: Any = None) -> None:
    """ValueError or TypeError unless `task` can be trained on (see the module docstring).

    Args:
        task: a `jaxntk.targets.Task`.
        model: when given, the task's d must equal its input size (`model.d`, where the model has
            one) and the arrays must have its float dtype.

    Raises:
        TypeError: `task` is not a Task, or an array is not float32/float64 or not of one dtype
            with the others and the model.
        ValueError: a shape does not match, or a value is not finite (the rows are named).
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a jaxntk.Task, got {type(task).__name__}")
    arrays = {name: getattr(task, name) for name in _FIELDS}
    for name, value in arrays.items():
        _check_array(name, value)
    _check_shapes({k: np.shape(v) for k, v in arrays.items()})
    dtypes = {
        name: np.dtype(v.dtype)
        for name, v in arrays.items()
        if np.dtype(v.dtype) in FLOAT_DTYPES  # integer labels: the loss decides (check_targets)
    }
    if len(set(dtypes.values())) > 1:
        found = ", ".join(f"{k} {v}" for k, v in dtypes.items())
        raise TypeError(f"task arrays must share one float dtype, got {found}")
    if model is not None:
        d_model = getattr(model, "d", None)
        if d_model is not None and d_model != task.d:
            raise ValueError(
                f"x_train has d = {task.d} features per row, but the model takes d = {d_model}"
            )
        floats = [
            np.dtype(leaf.dtype)
            for leaf in jax.tree_util.tree_leaves(model)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
        ]
        if floats and floats[0] != dtypes["x_train"]:
            raise TypeError(
                f"x_train has dtype {dtypes['x_train']}, but the model's parameters are "
                f"{floats[0]}; build both in one dtype"
            )
    for name, value in arrays.items():
        _check_finite(name, np.asarray(value), row_axis=1 if name.startswith("parts") else 0)


def _check_array(name: str, value: Any) -> None:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}")
    if name.startswith("y_") and np.issubdtype(np.dtype(dtype), np.integer):
        return  # class labels
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {np.dtype(dtype)}")


def _check_shapes(shapes: dict[str, tuple[int, ...]], labels_alike: bool = False) -> None:
    """Rows and input shapes; with `labels_alike`, y_test shaped like y_train after the rows too
    (`check_task` leaves that to the loss's check, which knows the model's outputs)."""
    for name in ("x_train", "x_test"):
        if len(shapes[name]) < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions (n, features...), got shape {shapes[name]}"
            )
    n, n_test = shapes["x_train"][0], shapes["x_test"][0]
    if n < 1:
        raise ValueError(f"x_train has no rows (shape {shapes['x_train']})")
    if n_test < 1:
        raise ValueError(f"x_test has no rows (shape {shapes['x_test']})")
    if shapes["x_test"][1:] != shapes["x_train"][1:]:
        if len(shapes["x_train"]) == 2 and len(shapes["x_test"]) == 2:
            d, d_test = shapes["x_train"][1], shapes["x_test"][1]
            raise ValueError(f"x_test has d = {d_test} features per row, x_train has {d}")
        raise ValueError(
            f"x_test has shape {shapes['x_test']}, x_train {shapes['x_train']}: the inputs "
            "must have one shape after the rows"
        )
    for name, rows, x_name in (("y_train", n, "x_train"), ("y_test", n_test, "x_test")):
        if len(shapes[name]) < 1 or shapes[name][0] != rows:
            found = shapes[name][0] if shapes[name] else 0
            raise ValueError(f"{name} has {found} rows but {x_name} has {rows}")
    if "parts_train" in shapes:  # (P, n, ...): the shares need (P, n, *out), read only then
        for name, rows in (("parts_train", n), ("parts_test", n_test)):
            shape = shapes[name]
            if len(shape) < 2 or shape[1] != rows or shape[0] != shapes["parts_train"][0]:
                raise ValueError(
                    f"{name} has shape {shape}, expected (P, {rows}, ...) with one P for train "
                    "and test"
                )
    if labels_alike and shapes["y_test"][1:] != shapes["y_train"][1:]:
        raise ValueError(
            f"y_test has shape {shapes['y_test']}, y_train {shapes['y_train']}: the labels must "
            "have one shape after the rows"
        )


def _check_finite(name: str, value: np.ndarray, row_axis: int) -> None:
    bad = ~np.isfinite(value)
    count = int(bad.sum())
    if count == 0:
        return
    rows = np.nonzero(np.moveaxis(bad, row_axis, 0).reshape(value.shape[row_axis], -1).any(1))[0]
    shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS]) + (", ..." if len(rows) > 5 else "")
    values = "value" if count == 1 else "values"
    where = f"row {shown}" if len(rows) == 1 else f"rows {shown}"
    raise ValueError(f"{name} has {count} non-finite {values} ({where})")
