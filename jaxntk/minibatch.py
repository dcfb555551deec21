"""Minibatch training: the settings, the objective on a batch and the evaluation in blocks.

`jaxntk.train(..., minibatch=Minibatch(batch_size=B, epochs=E))` trains on batches of B training
rows instead of all n: every epoch draws a fresh permutation of the rows from the run's seed
(`epoch_permutation`), inside the compiled program, and takes ⌊n/B⌋ steps on its consecutive
slices (the n mod B rows left over are dropped for that epoch; a different remainder each epoch).
After every epoch the train, test and validation sets are evaluated whole, in blocks of
`eval_block` rows (`lax.map` over blocks: memory bounded by one block's prep).

Nothing is prepared over all n rows while training: the model's per-input constants
(`model.prepare`) are computed on each batch inside the step. The good-direction regularizers
read their constants in batch form (docs/science.md §10):

    R_bulk on a batch B of b rows (unbiased for the full-batch R_bulk, exact at b = n):
        R̂_bulk = (1/b) Σ_{i∈B} f_i² − (1/n) [ (n/b) Σ_{i∈B} ‖a_i‖²
                  + n(n−1)/(b(b−1)) (‖Σ_{i∈B} a_i‖² − Σ_{i∈B} ‖a_i‖²) ],   a_i = U_k[i] f_i
    R_pop: fresh samples every step, as in the full-batch path; the projection P_⊥ U = U −
        V_k V_kᵀ U reads the k right singular vectors V_k (computed once, k × |params| numbers)
        instead of two products with J over all n rows.

`BatchObjective` wraps a `jaxntk.objectives.VariantObjective` with these forms; the trainer
(`jaxntk.training`) runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import spectral
from jaxntk._checks import check_int
from jaxntk.objectives import (
    LOSSES,
    Data,
    VariantObjective,
    _accuracy,
    _prediction_and_terms,
    _shares,
    _train_order,
    bulk_penalty,
    get_variant,
    norm24_penalty,
)
from jaxntk.targets import sample_inputs

Array = jax.Array

__all__ = [
    "MONITORS",
    "BatchData",
    "BatchObjective",
    "Minibatch",
    "bulk_penalty_batch",
    "epoch_permutation",
]

MONITORS = ("loss", "accuracy")
"""What early stopping watches on the validation set: its data loss (lower is better) or, for
loss="cross_entropy", its accuracy (higher is better)."""

PERMUTATION_STREAM = 0x6D62
"""The constant folded into PRNGKey(seed) for the epochs' permutations (`epoch_permutation`): a
stream apart from the initialization's and the steps' keys."""


@dataclasses.dataclass(frozen=True)
class Minibatch:
    """The settings of minibatch training, one argument of `jaxntk.train`.

    Attributes:
        batch_size: rows per step, B in [1, n] (n: the training rows after the validation
            split); ⌊n/B⌋ steps per epoch, the n mod B rows left over dropped for that epoch.
        epochs: number of epochs E ≥ 1; the run evaluates after every epoch.
        validation: 0 (none), a fraction in (0, 1) of the training rows held out (chosen by
            `split_seed`, the same rows for every seed of the run), or a pair (x_val, y_val)
            of arrays.
        patience: with a validation set, stop a setting once its validation score has not
            improved for this many epochs (frozen in the program; the chunks stop when every
            setting has); None: train every epoch. Either way the run returns, for each
            setting, the parameters of its best validation epoch (epoch 0 included).
        monitor: the validation score, a name in `MONITORS`.
        eval_block: rows per block of the whole-set evaluations.
        split_seed: the seed of the validation rows' draw.

    Example:
        >>> from jaxntk.minibatch import Minibatch
        >>> mb = Minibatch(batch_size=8, epochs=3, validation=0.25)
        >>> mb.check(n=40)  # 10 rows held out, 30 trained on: 3 steps per epoch
        (30, 3)
        >>> fit, val = mb.split(40)
        >>> len(fit), len(val), sorted(set(fit) | set(val)) == list(range(40))
        (30, 10, True)
        >>> Minibatch(batch_size=50, epochs=3).check(n=40)
        Traceback (most recent call last):
            ...
        ValueError: batch_size must be between 1 and 40 (the training rows), got 50
    """

    batch_size: int
    epochs: int
    validation: float | tuple[Any, Any] = 0.0
    patience: int | None = None
    monitor: str = "loss"
    eval_block: int = 1024
    split_seed: int = 0

    @property
    def explicit_validation(self) -> bool:
        """Whether `validation` is a pair of arrays (x_val, y_val)."""
        return isinstance(self.validation, tuple | list)

    def held_out(self, n: int) -> int:
        """The number of training rows held out for validation (0 for arrays or none)."""
        if self.explicit_validation or self.validation == 0:
            return 0
        return min(n - 1, max(1, round(float(self.validation) * n)))

    def check(self, n: int) -> tuple[int, int]:
        """ValueError naming the argument unless the settings fit n training rows.

        Args:
            n: the task's training rows.

        Returns:
            (rows trained on after the validation split, steps per epoch).

        Raises:
            ValueError, TypeError: an argument out of range or of the wrong type.
        """
        check_int("epochs", self.epochs, 1)
        check_int("eval_block", self.eval_block, 1)
        check_int("split_seed", self.split_seed, 0)
        if self.explicit_validation:
            if len(self.validation) != 2:
                raise ValueError("validation must be a fraction or a pair (x_val, y_val)")
        else:
            frac = self.validation
            if isinstance(frac, bool) or not isinstance(frac, numbers.Real):
                raise TypeError(f"validation must be a fraction or (x_val, y_val), got {frac!r}")
            if not (frac == 0 or 0 < frac < 1) or not math.isfinite(frac):
                raise ValueError(f"validation must be 0 or a fraction in (0, 1), got {frac!r}")
            if frac and n < 2:
                raise ValueError(f"validation: n = {n} training rows cannot be split")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {list(MONITORS)}, got {self.monitor!r}")
        if self.patience is not None:
            check_int("patience", self.patience, 1)
            if not self.explicit_validation and self.validation == 0:
                raise ValueError("patience needs a validation set: set validation")
        n_fit = n - self.held_out(n)
        check_int("batch_size", self.batch_size, 1, n_fit, "the training rows")
        return n_fit, n_fit // self.batch_size

    def split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows trained on, rows held out), increasing indices into the n training rows.

        Args:
            n: the task's training rows.

        Returns:
            Two int64 arrays partitioning range(n); the second is empty without a fraction.
        """
        held = self.held_out(n)
        order = np.random.default_rng(self.split_seed).permutation(n)
        return np.sort(order[held:]), np.sort(order[:held])

    def as_config(self) -> dict[str, Any]:
        """The settings as JSON-serialisable data (arrays of validation by their shapes and
        SHA-256, so that a resume with other arrays is refused)."""
        out = dataclasses.asdict(self)
        if self.explicit_validation:
            out["validation"] = [
                [list(np.shape(a)), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
                for a in self.validation
            ]
        return out


def epoch_permutation(seed: int | Array, epoch: int | Array, n: int) -> Array:
    """The order of the n training rows in epoch `epoch` (0-based) of the run with `seed`.

    The trainer draws exactly this inside the compiled program; its batches are the consecutive
    slices [jB, (j + 1)B) for j < ⌊n/B⌋.

    Args:
        seed: the run's seed.
        epoch: the epoch, 0 for the first.
        n: the number of rows trained on.

    Returns:
        (n,) int32 permutation of range(n).

    Example:
        >>> from jaxntk.minibatch import epoch_permutation
        >>> p = epoch_permutation(1, 0, 6)
        >>> sorted(p.tolist()), p.tolist() != epoch_permutation(1, 1, 6).tolist()
        ([0, 1, 2, 3, 4, 5], True)
    """
    return _permutation(permutation_key(seed), epoch, n)


def permutation_key(seed: int | Array) -> Array:
    """The key of a seed's epoch permutations (`epoch_permutation`)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), PERMUTATION_STREAM)


def _permutation(key: Array, epoch: int | Array, n: int) -> Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def bulk_penalty_batch(u_k_rows: Array, f_batch: Array, n: int, traced: bool = False) -> Array:
    """R_bulk estimated on a batch of b of the n training rows, unbiased, exact at b = n.

    R_bulk = (1/(n·c))(‖f‖² − ‖Π f‖²) for the projector Π on the top directions and c output
    entries per row. Row i carries a_i, its share of the top coordinates: U_k[i]ᵀ f_i with
    U_k[i] the row's c rows of U_k (one output: U_k[i] f_i; "full"), or U_k[i] ⊗ f_i
    ("traced", Π = U_k U_kᵀ ⊗ I_c), so that ‖Π f‖² = ‖Σ_i a_i‖². With the batch a uniform draw
    of b distinct rows, (1/b) Σ_B ‖f_i‖² estimates ‖f‖²/n, and (n/b) Σ_B ‖a_i‖² +
    n(n−1)/(b(b−1)) Σ_{i≠j∈B} a_i·a_j estimates ‖Σ_i a_i‖² (docs/science.md §10). For b = 1
    the pair term has no estimate and is left out.

    Args:
        u_k_rows: the batch's rows of U_k: (b, k) for one output or "traced", (b, c, k) for
            "full" with c outputs (U_k's rows i·c … i·c + c − 1).
        f_batch: (b,) or (b, *out) f_L on the batch's inputs.
        n: the number of training rows U_k has.
        traced: whether U_k acts on each output alone (`jaxntk.spectral` "traced").

    Returns:
        () the estimate.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.minibatch import bulk_penalty_batch
        >>> q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (6, 2)))
        >>> f = jnp.arange(6.0)
        >>> full = jnp.mean((f - q @ (q.T @ f)) ** 2)
        >>> bool(jnp.isclose(bulk_penalty_batch(q, f, 6), full))  # b = n: exact
        True
    """
    b = f_batch.shape[0]
    f = f_batch.reshape(b, -1)
    if traced:
        a = u_k_rows[:, :, None] * f[:, None, :]
    else:
        a = jnp.einsum("bck,bc->bk", u_k_rows.reshape(b, f.shape[1], -1), f)
    a = a.reshape(b, -1)
    diag = jnp.sum(a**2)
    pairs = jnp.sum(jnp.sum(a, axis=0) ** 2) - diag
    top = (n / b) * diag + (n * (n - 1) / (b * (b - 1)) * pairs if b > 1 else 0.0)
    return (jnp.sum(f**2) / b - top / n) / f.shape[1]


class BatchData(NamedTuple):
    """The arrays of a minibatch run: the `Data` of the rows trained on, the validation set and
    the right singular vectors of R_pop's projection.

    Attributes:
        data: the run's `jaxntk.objectives.Data` (x_train, y_train: the rows trained on).
        x_val: validation inputs, or None.
        y_val: validation targets, or None.
        v_k: V_k, params-shaped with a leading axis k (`jaxntk.spectral.right_singular_vectors`,
            zero where a singular value is 0), when the run trains or logs R_pop; else None
            (the evaluation then has no "pop").
    """

    data: Data
    x_val: Any = None
    y_val: Any = None
    v_k: Any = None


@dataclasses.dataclass(frozen=True)
class BatchObjective:
    """A `VariantObjective` in batch form: the loss on a batch, the evaluation in blocks.

    Hashable (a static argument of the compiled program). Implements `init(key, data)`,
    `loss(u, data, hyper, key, rows)` and `evaluate(u, data, hyper)` on a `BatchData`.

    Attributes:
        objective: the full-batch objective (variant, regularizers, data loss).
        eval_block: rows per block of the evaluations.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.objectives import Data, VariantObjective
        >>> from jaxntk.minibatch import BatchData, BatchObjective
        >>> from jaxntk.targets import paper_task
        >>> task = paper_task(jax.random.PRNGKey(0), d=4, n=12, n_test=10)
        >>> net = TwoLayer.init(jax.random.PRNGKey(1), d=4, m=8)
        >>> data = BatchData(Data(net, task.x_train, task.x_test, task.y_train, task.y_test,
        ...                       task.parts_test))
        >>> obj = BatchObjective(VariantObjective("ntk"), eval_block=5)
        >>> u = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (8, 4))
        >>> loss, _ = obj.loss(u, data, {}, jax.random.PRNGKey(3), jnp.arange(12))
        >>> bool(jnp.isclose(loss, obj.evaluate(u, data, {})["train_loss"]))  # all rows
        True
    """

    objective: VariantObjective
    eval_block: int = 1024

    def init(self, key: Array, data: BatchData) -> Any:
        """U at step 0, as `VariantObjective.init`."""
        return self.objective.init(key, data.data)

    def loss(
        self, u: Any, data: BatchData, hyper: dict[str, Array], key: Array, rows: Array
    ) -> tuple[Array, dict]:
        """The training loss on the training rows `rows`: the batch's data loss and the
        regularizers' batch forms (module docstring), unbiased for `VariantObjective.loss`.

        Args:
            u: the displacement U.
            data: the run's `BatchData`.
            hyper: the weights {"bulk", "pop", "norm24"}; only the active ones are read.
            key: PRNG key (the variant's randomness and R_pop's fresh samples, split as in
                `VariantObjective.loss`).
            rows: (b,) int indices of the batch's rows of data.data.x_train.

        Returns:
            (total, terms) as `VariantObjective.loss`.
        """
        obj, d = self.objective, data.data
        v, model = get_variant(obj.variant), d.model
        k_pred, k_pop = jax.random.split(key)
        x, y = _rows(d.x_train, rows), _rows(d.y_train, rows)
        prep = model.prepare(x, order=_train_order(v))
        pred, f_linear, _ = _prediction_and_terms(v, model, u, prep)
        if pred is None:
            pred = v.train_predict(model, u, prep, k_pred)
        fit = LOSSES[obj.data_loss](pred, y)
        regs = {}
        if obj.use_bulk:
            if f_linear is None:
                f_linear = model.linear_term(u, prep)
            regs["bulk"] = _bulk_on_rows(d.dirs, rows, f_linear)
        if obj.use_pop:
            regs["pop"] = _pop_on_samples(obj, d, data.v_k, u, k_pop)
        if obj.use_norm24:
            regs["norm24"] = norm24_penalty(u)
        total = fit + sum(hyper[name] * value for name, value in regs.items())
        weight = getattr(model, "loss_weight", None)
        if weight is not None:
            total = weight * total
        return total, {obj.data_loss: fit, **regs}

    def evaluate(self, u: Any, data: BatchData, hyper: dict[str, Array]) -> dict[str, Array]:
        """`VariantObjective.evaluate`'s metrics (without the laziness probe), every set
        evaluated whole in blocks of `eval_block` rows, and with a validation set "val_loss"
        (and "val_accuracy" for "cross_entropy").

        Args:
            u: the displacement U.
            data: the run's `BatchData`.
            hyper: unused (the values are unweighted).

        Returns:
            A dict of () arrays (and (P,) shares), as `VariantObjective.evaluate`.
        """
        del hyper
        obj, d = self.objective, data.data
        v, model = get_variant(obj.variant), d.model
        loss = LOSSES[obj.data_loss]
        shares = obj.data_loss == "mse" and d.parts_test.shape[1:] == d.y_test.shape
        order = _train_order(v)
        train = self._outputs(v, u, model, d.x_train, order, linear=d.dirs is not None)
        test = self._outputs(v, u, model, d.x_test, max(2, order), linear=shares, quad=shares)
        out = {
            "train_loss": loss(train["pred"], d.y_train),
            "test_loss": loss(test["pred"], d.y_test),
            "u_norm": jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(u))),
        }
        if shares:
            out["share_linear"] = _shares(test["linear"], d.parts_test)
            out["share_quadratic"] = _shares(test["quadratic"], d.parts_test)
        if obj.data_loss == "cross_entropy":
            out["train_accuracy"] = _accuracy(train["pred"], d.y_train)
            out["test_accuracy"] = _accuracy(test["pred"], d.y_test)
        if d.dirs is not None:
            out["bulk"] = bulk_penalty(d.dirs, train["linear"])
        if data.v_k is not None:  # R_pop trained or asked for (track_directions)
            good = _project_good(data.v_k, u)
            x_pop = d.x_test if d.x_pop is None else d.x_pop
            f_pop = _blocked(
                lambda x: model.linear_term(good, model.prepare(x, order=1)), x_pop, self.eval_block
            )
            out["pop"] = jnp.mean(f_pop**2)
        out["norm24"] = norm24_penalty(u)
        if data.x_val is not None:
            val = self._outputs(v, u, model, data.x_val, order)
            out["val_loss"] = loss(val["pred"], data.y_val)
            if obj.data_loss == "cross_entropy":
                out["val_accuracy"] = _accuracy(val["pred"], data.y_val)
        return out

    def _outputs(self, v, u, model, x, order: int, linear=False, quad=False) -> dict[str, Array]:
        """The evaluation prediction on x ("pred"), with f_L ("linear") and f_Q ("quadratic")
        when asked, computed in blocks of rows."""

        def block(xb):
            prep = model.prepare(xb, order=order)
            pred, fl, fq = _prediction_and_terms(v, model, u, prep)
            if pred is None:
                pred = v.predict(model, u, prep)
                if quad:
                    fl, fq = model.linear_and_quadratic(u, prep)
                elif linear:
                    fl = model.linear_term(u, prep)
            out = {"pred": pred}
            if linear:
                out["linear"] = fl
            if quad:
                out["quadratic"] = fq
            return out

        return _blocked(block, x, self.eval_block)


def _bulk_on_rows(dirs: spectral.GoodDirections, rows: Array, f_linear: Array) -> Array:
    """`bulk_penalty_batch` on the batch `rows` of the training rows dirs were computed on."""
    traced = dirs.outputs == "traced" and math.prod(dirs.out_shape) > 1
    u_k = dirs.u_k if traced else dirs.u_k.reshape(dirs.n, -1, dirs.u_k.shape[-1])
    return bulk_penalty_batch(u_k[rows], f_linear, dirs.n, traced=traced)


def _pop_on_samples(obj: VariantObjective, d: Data, v_k: Any, u: Any, key: Array) -> Array:
    """R_pop on `pop_samples` fresh inputs (the task's law, or held-out inputs drawn with
    replacement: `jaxntk.objectives.Regularizer.pop_inputs`), with P_⊥ U through V_k."""
    if d.pop_inputs is None:
        x = sample_inputs(key, obj.pop_samples, obj.d, obj.distribution).astype(d.x_train.dtype)
    else:
        x = d.pop_inputs[jax.random.randint(key, (obj.pop_samples,), 0, d.pop_inputs.shape[0])]
    prep_pop = d.model.prepare(x, order=1)
    return jnp.mean(d.model.linear_term(_project_good(v_k, u), prep_pop) ** 2)


def _rows(x: Any, rows: Array) -> Any:
    """The rows `rows` of every leaf of x (the inputs may be a pytree)."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, rows, axis=0), x)


def _blocked(fn, x: Any, block: int) -> Any:
    """fn over x's rows in blocks of `block` (`lax.map`; the last block padded with the last row
    and cut), its (rows, ...) outputs joined: one call on x when it fits in one block."""
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    if n <= block:
        return fn(x)
    n_blocks = -(-n // block)
    idx = jnp.minimum(jnp.arange(n_blocks * block), n - 1).reshape(n_blocks, block)
    out = jax.lax.map(lambda i: fn(_rows(x, i)), idx)
    return jax.tree_util.tree_map(lambda a: a.reshape(n_blocks * block, *a.shape[2:])[:n], out)


def _project_good(v_k: Any, u: Any) -> Any:
    """P_⊥ U = U − V_k (V_kᵀ U) with the k right singular vectors as a params-shaped pytree."""
    v_leaves, u_leaves = jax.tree_util.tree_leaves(v_k), jax.tree_util.tree_leaves(u)
    coef = sum(
        jnp.tensordot(vl, ul, axes=ul.ndim) for vl, ul in zip(v_leaves, u_leaves, strict=True)
    )
    return jax.tree_util.tree_map(lambda vl, ul: ul - jnp.tensordot(coef, vl, axes=1), v_k, u)


def right_vectors(model: Any, x_train: Any, dirs: spectral.GoodDirections) -> Any:
    """V_k for R_pop's projection: `jaxntk.spectral.right_singular_vectors`, a zero singular
    value's vector set to 0 (it spans no direction, as in `jaxntk.spectral.project_top`).

    Args:
        model: a model of the protocol.
        x_train: the inputs the directions were computed on.
        dirs: the top-k directions.

    Returns:
        V_k, params-shaped with a leading axis k.
    """
    ok = dirs.s_k > 0
    safe = dataclasses.replace(
        dirs, u_k=jnp.where(ok[None, :], dirs.u_k, 0.0), s_k=jnp.where(ok, dirs.s_k, 1.0)
    )
    return spectral.right_singular_vectors(model, model.prepare(x_train, order=1), safe)
