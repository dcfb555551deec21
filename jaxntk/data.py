"""`Task`, the training and test sets every run reads; a user's own arrays as a checked `Task`, and
the checks every task meets before training.

A `Task` holds inputs, labels and the values of the target's parts, train and test; the synthetic
tasks are drawn in `jaxntk.targets` (`make_task`, `paper_task`), which builds on this module.
`task_from_arrays(x_train, y_train, x_test, y_test)` (also `jaxntk.Task.from_arrays`) wraps plain
arrays in a `Task` with one target part, "y" (the labels themselves), so that the
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

Two real data sets ship as tasks: `load_digits` reads scikit-learn's handwritten digits (an
optional extra, `DIGITS_INSTALL`), split by `stratified_split` and standardized with the training
set's statistics; `mnist1d` generates MNIST-1D's signals offline (an optional extra,
`MNIST1D_INSTALL`) at the published size or larger, and caches them.

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

import dataclasses
import math
import os
import random
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk._checks import check_int
from jaxntk.polynomials import DISTRIBUTIONS

Array = jax.Array

__all__ = [
    "DIGITS_INSTALL",
    "FLOAT_DTYPES",
    "MNIST1D_INSTALL",
    "Task",
    "check_task",
    "load_digits",
    "mnist1d",
    "stratified_split",
    "task_from_arrays",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes a task's arrays may have: half precision loses the small gradients of a wide network,
and integers are no inputs of a smooth model."""

DIGITS_INSTALL = 'pip install -e ".[digits]"'
"""The install that brings scikit-learn, whose bundled digits `load_digits` reads (an optional
extra: the core dependencies do not include it)."""

_FIELDS = ("x_train", "y_train", "x_test", "y_test", "parts_train", "parts_test")
_SHOWN_ROWS = 5


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Task:
    """Training and test sets for a target: y = f*(x) (+ label noise on the training set only).

    A pytree (arrays and the target are leaves; distribution and part names static), so a task can
    be passed to `jit` and stacked with `vmap` over keys.

    The examples' axis is the first axis of x_train, after any seed axes: tasks of several seeds
    made at once by `vmap` carry them in front, (S, n, *in). `input_ndim`, the rank of one input,
    tells them apart, so `n`, `n_test` and `d` read the right axes for any input shape.

    Attributes:
        x_train: (n, *in) training inputs: (n, d) vectors, or (n, height, width, channels)
            images and any other shape.
        y_train: (n, *out) training labels f*(x_train), plus the label noise if any.
        x_test: (n_test, *in) test inputs.
        y_test: (n_test, *out) = f*(x_test), noise-free.
        parts_train: (P, n, *out) each target part on x_train (noise-free).
        parts_test: (P, n_test, *out) each target part on x_test.
        target: the `jaxntk.targets.Target` (None for a task from a user's arrays,
            `Task.from_arrays`).
        distribution: input law, "gaussian" or "sphere".
        part_names: the target's part names, the order of the rows of parts_train / parts_test.
        input_ndim: the rank of one input, len(in): 1 for vectors (the default), 3 for images.

    Example:
        >>> import jax
        >>> from jaxntk.targets import paper_task
        >>> task = paper_task(jax.random.PRNGKey(0), d=10, n=100, n_test=1000)
        >>> task.n, task.n_test, task.d, task.part_names
        (100, 1000, 10, ('linear', 'quadratic'))
        >>> stacked = jax.vmap(lambda k: paper_task(k, d=10, n=100, n_test=30))(
        ...     jax.random.split(jax.random.PRNGKey(0), 3))
        >>> stacked.seed_axes, stacked.n, stacked.n_test, stacked.d
        (1, 100, 30, 10)
    """

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    parts_train: Array
    parts_test: Array
    target: Any  # a jaxntk.targets.Target, or None
    distribution: str = dataclasses.field(metadata={"static": True})
    part_names: tuple[str, ...] = dataclasses.field(metadata={"static": True})
    input_ndim: int = dataclasses.field(default=1, metadata={"static": True})

    @classmethod
    def from_arrays(
        cls, x_train, y_train, x_test, y_test, *, distribution: str = "gaussian"
    ) -> Task:
        """A checked task from a user's arrays (`task_from_arrays`).

        Args:
            x_train: (n, *in) training inputs, float32 or float64, every value finite: vectors
                (n, d) or any other shape, such as images (n, height, width, channels).
            y_train: (n, *out) training labels.
            x_test: (n_test, *in) test inputs.
            y_test: (n_test, *out) test labels.
            distribution: the law R_pop draws fresh inputs from (`DISTRIBUTIONS`).

        Returns:
            A `Task` with one target part, "y", and no `target`; n is x_train's first axis and d
            the number of features of one input.

        Example:
            >>> import numpy as np
            >>> images, labels = np.zeros((10, 8, 8, 1), np.float32), np.zeros(10, np.int32)
            >>> task = Task.from_arrays(images, labels, images[:4], labels[:4])
            >>> task.n, task.n_test, task.input_shape, task.d
            (10, 4, (8, 8, 1), 64)

        Raises:
            ValueError, TypeError: a shape, dtype or value does not fit; the message names the
                array and what was found, e.g. "x_train has 1 non-finite value (row 3)".
        """
        return task_from_arrays(x_train, y_train, x_test, y_test, distribution=distribution)

    @property
    def seed_axes(self) -> int:
        """The number of leading axes before the examples' axis: 0 for one task, 1 for tasks of
        several seeds stacked by `vmap` (x_train (S, n, *in))."""
        return self.x_train.ndim - self.input_ndim - 1

    @property
    def n(self) -> int:
        """The number of training points: x_train's example axis, after any seed axes."""
        return self.x_train.shape[self.seed_axes]

    @property
    def n_test(self) -> int:
        """The number of test points: x_test's example axis, after any seed axes."""
        return self.x_test.shape[self.seed_axes]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, `in`: (d,) for vectors, (height, width, channels) for images."""
        return tuple(self.x_train.shape[self.seed_axes + 1 :])

    @property
    def d(self) -> int:
        """The number of input features, the product of `input_shape` (d for (n, d) inputs)."""
        return math.prod(self.input_shape)


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
            in `jaxntk.polynomials.DISTRIBUTIONS`; the trainer uses it nowhere else.

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
    # the parts are values of the target: integer class labels become floats of the inputs' dtype
    task = Task(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        parts_train=y_train.astype(x_train.dtype)[None],
        parts_test=y_test.astype(x_test.dtype)[None],
        target=None,
        distribution=distribution,
        part_names=("y",),
        input_ndim=x_train.ndim - 1,
    )
    check_task(task)
    return task


def check_task(task: Any, model: Any = None) -> None:
    """ValueError or TypeError unless `task` can be trained on (see the module docstring).

    Args:
        task: a `Task`.
        model: when given, the task's d must equal its input size (`model.d`, where the model has
            one) and the arrays must have its float dtype.

    Raises:
        TypeError: `task` is not a Task, or an array is not float32/float64 or not of one dtype
            with the others and the model.
        ValueError: a shape does not match, or a value is not finite (the rows are named).
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a jaxntk.Task, got {type(task).__name__}")
    if task.seed_axes != 0:
        raise ValueError(
            f"x_train has shape {tuple(task.x_train.shape)}, but the task's inputs have "
            f"input_ndim = {task.input_ndim} axes: build Task(..., input_ndim=len(in)) for "
            "inputs (n, *in) (Task.from_arrays does), and train a task of several seeds stacked "
            "on leading axes as a list of tasks, one per seed"
        )
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


def stratified_split(
    labels: Any, *, n_train: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train and test indices whose class proportions follow those of `labels`.

    The rows are shuffled by `seed`, then interleaved class by class: row r of class c (in the
    shuffled order) gets the position (r + ½)/n_c, n_c the size of class c, and the rows are
    sorted by position. Every prefix of that order then holds each class within about one row of
    its share of the prefix; the test set is the first n_test rows, the training set the next
    n_train. The same seed gives the same split.

    Args:
        labels: (n,) integer class labels ≥ 0.
        n_train: training rows ≥ 1.
        n_test: test rows ≥ 1, with n_train + n_test ≤ n.
        seed: the shuffle's seed (a `numpy.random.default_rng` seed).

    Returns:
        (train, test): int64 index arrays of n_train and n_test rows, without a row in common.

    Raises:
        ValueError: if labels are not a 1-D array of integers ≥ 0 or the sizes do not fit.

    Example:
        >>> labels = np.array([0] * 6 + [1] * 3)
        >>> train, test = stratified_split(labels, n_train=6, n_test=3, seed=0)
        >>> np.bincount(labels[train]).tolist(), np.bincount(labels[test]).tolist()
        ([4, 2], [2, 1])
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or np.any(labels < 0):
        raise ValueError(
            f"labels must be a 1-D array of integer classes ≥ 0, got shape {labels.shape} and "
            f"dtype {labels.dtype}"
        )
    n = labels.shape[0]
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    if n_train + n_test > n:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {n} rows of labels")
    shuffled = np.random.default_rng(seed).permutation(n)
    classes = labels[shuffled]
    counts = np.bincount(classes)
    by_class = np.argsort(classes, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    order = shuffled[np.argsort((rank + 0.5) / counts[classes], kind="stable")]
    return order[n_test : n_test + n_train].astype(np.int64), order[:n_test].astype(np.int64)


def load_digits(
    *,
    n_train: int | None = None,
    n_test: int = 360,
    seed: int = 0,
    one_hot: bool = False,
    dtype: Any = np.float32,
) -> Task:
    """scikit-learn's handwritten digits (1797 images of 8 × 8 pixels, 10 classes) as a `Task`.

    The data ship inside scikit-learn (no download). The split is `stratified_split` by `seed`;
    each pixel is standardized with the training set's mean and standard deviation (a pixel
    constant on the training set is only centred):

        x ↦ (x − mean_train) / std_train,     x of shape (64,), pixels in row-major order

    Args:
        n_train: training images; default: all the images the test set leaves.
        n_test: test images.
        seed: the split's seed.
        one_hot: labels as one-hot float rows (n, 10) of `dtype`, for the mean squared error;
            default: integer classes (n,), for the cross-entropy.
        dtype: the float dtype of the inputs (and of one-hot labels).

    Returns:
        A `Task` (`task_from_arrays`): x_train (n_train, 64), x_test (n_test, 64), labels as above.

    Raises:
        ModuleNotFoundError: without scikit-learn, in one line naming the install
            (`DIGITS_INSTALL`).
        ValueError: if the sizes do not fit the 1797 images (`stratified_split`).
    """
    try:
        from sklearn import datasets
    except ImportError:
        raise ModuleNotFoundError(
            f"the digits data set needs scikit-learn, an optional extra: {DIGITS_INSTALL}"
        ) from None
    images, labels = datasets.load_digits(return_X_y=True)
    labels = labels.astype(np.int32)
    if n_train is None:
        check_int("n_test", n_test, 1)
        n_train = labels.shape[0] - n_test
    train, test = stratified_split(labels, n_train=n_train, n_test=n_test, seed=seed)
    mean = images[train].mean(axis=0)
    std = images[train].std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    x = ((images - mean) / scale).astype(dtype)
    y = np.eye(10, dtype=dtype)[labels] if one_hot else labels
    return task_from_arrays(x[train], y[train], x[test], y[test])


def mnist1d(
    *,
    n_train: int = 4000,
    n_test: int = 1000,
    seed: int = 42,
    one_hot: bool = False,
    signal: bool = False,
    shuffle_seq: bool = False,
    dtype: Any = np.float32,
    cache_dir: str | os.PathLike | bool | None = None,
) -> Task:
    """MNIST-1D (Greydanus, *Scaling down deep learning*, 2020): 1D signals of length 40, 10
    classes, generated offline by the `mnist1d` package (an optional extra, `MNIST1D_INSTALL`).

    The package draws num_samples = n_train + n_test signals (rounded up to a multiple of 10: it
    makes the same number per class), shuffles them and standardizes the whole set to mean 0 and
    standard deviation 1; the first n_train are the training set, the next n_test the test set.
    The defaults are the published split: 5000 signals of seed 42, 4000 for training and 1000 for
    testing. A larger n_train draws a new set (its first 4000 are other signals than the
    published ones); for learning curves over n, draw the largest set once and take prefixes.

    The generation takes about 2 s for 5000 signals; the arrays are cached as `.npz` under
    `cache_dir` (default: `$JAXNTK_CACHE`, else `$XDG_CACHE_HOME/jaxntk`, else
    `~/.cache/jaxntk`; False: no cache), one file per setting, written atomically. The package
    seeds NumPy's and Python's global generators; their states are restored afterwards.

    Args:
        n_train: training signals ≥ 1.
        n_test: test signals ≥ 1.
        seed: the generator's seed (42: the published data set).
        one_hot: labels as one-hot float rows (n, 10) of `dtype`, for the squared error; default:
            integer classes (n,), for the cross-entropy.
        signal: inputs as (n, 40, 1), a signal with one channel for a 1D convolution; default
            (n, 40).
        shuffle_seq: the package's variant with the 40 positions permuted (the same permutation
            for every signal): a CNN's spatial bias no longer helps.
        dtype: the inputs' float dtype (and the one-hot labels').
        cache_dir: where to cache the generated arrays, see above.

    Returns:
        A checked `Task` (`task_from_arrays`), distribution "gaussian" (the only law R_pop has;
        the signals follow none).

    Raises:
        ModuleNotFoundError: without the `mnist1d` package, in one line naming the install.
        ValueError: n_train or n_test not an int ≥ 1.

    Example:
        >>> task = mnist1d(cache_dir=False)
        >>> task.n, task.n_test, task.input_shape, task.y_train.dtype.name
        (4000, 1000, (40,), 'int32')
        >>> np.bincount(np.asarray(task.y_test)).tolist()[:3]
        [102, 104, 89]
    """
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    settings = {"n": -(-(n_train + n_test) // 10) * 10, "seed": seed, "shuffle": shuffle_seq}
    x, labels = _mnist1d_arrays(settings, cache_dir)
    end = n_train + n_test
    x = x[:end].astype(dtype)[..., None] if signal else x[:end].astype(dtype)
    labels = labels[:end].astype(np.int32)
    y = np.eye(10, dtype=dtype)[labels] if one_hot else labels
    return task_from_arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


MNIST1D_INSTALL = 'pip install -e ".[mnist1d]"'
"""The install that brings the `mnist1d` package, whose generator `mnist1d` calls (an optional
extra: the core dependencies do not include it)."""


def _mnist1d_arrays(settings: dict, cache_dir: Any) -> tuple[np.ndarray, np.ndarray]:
    """The standardized signals (num_samples, 40) and labels of one setting, from the cache or
    generated (and cached)."""
    path = None
    if cache_dir is not False:
        root = Path(cache_dir) if cache_dir not in (None, True) else _cache_root()
        path = root / "mnist1d-{n}-{seed}{shuffle}.npz".format(
            n=settings["n"],
            seed=settings["seed"],
            shuffle="-shuffled" if settings["shuffle"] else "",
        )
        if path.exists():
            try:
                with np.load(path) as cached:
                    return cached["x"], cached["y"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged file is generated again
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ModuleNotFoundError(
            f"MNIST-1D needs the mnist1d package, an optional extra: {MNIST1D_INSTALL}"
        ) from None
    args = get_dataset_args()
    args.num_samples, args.train_split = settings["n"], 1.0
    args.seed, args.shuffle_seq = settings["seed"], settings["shuffle"]
    states = random.getstate(), np.random.get_state()  # noqa: NPY002 (the package's)
    try:
        data = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])  # noqa: NPY002
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.int64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(partial, x=x, y=y)
        os.replace(partial, path)
    return x, y


def _cache_root() -> Path:
    if os.environ.get("JAXNTK_CACHE"):
        return Path(os.environ["JAXNTK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxntk"


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
