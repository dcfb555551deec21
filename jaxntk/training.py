"""One compiled training loop for every variant, vmapped over regularizer weights and seeds.

`fit` trains any *objective* — a hashable object with `prepare(data) -> data` (per-input constants,
computed once per compiled chunk), `init(key, data)`, `loss(params, data, hyper, key) -> (scalar,
aux)` and `evaluate(params, data, hyper) -> dict` — with any optax optimizer:

    for t in 0..T-1:   g = ∇_U loss(U_t, data, λ, key_t);   U_{t+1} = U_t + optimizer(g)

as a `lax.scan` over steps, `vmap`ped over the L settings of λ and the S seeds, all in one program
that is compiled once per shape and takes every array (model, data, λ, step counts) as an argument.
Training runs in chunks of `eval_every × evals_per_chunk` steps: after each chunk the host prints
progress, checks for divergence and may save a checkpoint to resume from. With `eval_at` ("log", or
a list of steps; `eval_schedule`) the evaluations happen at exactly those steps instead, inside the
compiled loop (`lax.cond` on the step count within a `lax.scan` over a chunk of equal length), so
curves against log t are measured from t = 1.

`train(model, task, variant, ...)` builds the objective of a named variant (`jaxntk.objectives`).
It knows the model only through the model protocol, so the closed-form `TwoLayer` and the generic
`TaylorModel` train through the same code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxntk import checkpoint as checkpoints
from jaxntk import data as task_data
from jaxntk import network, sharding, spectral
from jaxntk._checks import check_int
from jaxntk.minibatch import BatchData, BatchObjective, Minibatch, permutation_key, right_vectors
from jaxntk.objectives import (
    DEFAULT_BULK,
    Data,
    Regularizer,
    VariantObjective,
    check_targets,
    get_variant,
)

Array = jax.Array

__all__ = ["OPTIMIZERS", "DivergenceWarning", "Run", "eval_schedule", "fit", "train"]

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": functools.partial(optax.sgd, momentum=0.9),
    "adam": optax.adam,
}
"""Optimizers by name; the learning rate is an argument of the compiled program, so runs that
differ only in it share one compilation. `sgd` is the paper's plain full-batch gradient descent."""


BATCHING = ("auto", "vmap", "map")
"""How `train` runs its λ × seed settings in one program (see `train`'s `batching`)."""

POP_EVAL_SAMPLES = 2000
TRACE = "trace_"  # key prefix of per-step records while a run is assembled


class DivergenceWarning(UserWarning):
    """A run's training loss became non-finite; it was stopped and its history kept."""


class TrainState(NamedTuple):
    """Per-run state, every leaf with leading axes (L, S)."""

    params: Any
    opt_state: Any
    key: Array
    diverged_at: Array  # int32; -1 while the loss stays finite


@dataclasses.dataclass
class Run:
    """What a training run returns: plain arrays.

    Attributes:
        params: final parameters (U), every leaf with leading axes (L, S).
        history: "step" (E,) evaluation steps (and, minibatch, "epoch" (E,) their epochs), and
            each metric (L, S, E) or (L, S, E, P).
        config: the settings, JSON-serialisable.
        diverged_at_step: (L, S) step at which the loss became non-finite, −1 where it did not.
        trace: the training objective at every step, free to record since each step computes it:
            "step" (T,) and "loss" (the total), the data loss ("mse" or "cross_entropy") and
            each regularizer in use, (L, S, T), evaluated at U_t before update t + 1 (with the
            training prediction: random signs for "randomized").
        best_epoch: minibatch runs with a validation set: (L, S) the epoch (0 = before
            training) of the best validation score, whose parameters are `params`; else None.
        stopped_at_epoch: minibatch runs: (L, S) the epoch after which early stopping froze the
            setting, −1 where it ran every epoch; else None.
    """

    params: Any
    history: dict[str, np.ndarray]
    config: dict[str, Any]
    diverged_at_step: np.ndarray
    trace: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    best_epoch: np.ndarray | None = None
    stopped_at_epoch: np.ndarray | None = None

    @property
    def final(self) -> dict[str, np.ndarray]:
        """The last evaluation of each metric, name -> (L, S) or (L, S, P) array."""
        return {k: v[:, :, -1] for k, v in self.history.items() if k not in ("step", "epoch")}

    @property
    def diverged(self) -> bool:
        """Whether any run of the grid stopped on a non-finite loss."""
        return bool(np.any(self.diverged_at_step >= 0))


def train(
    model: Any,
    task: Any,
    variant: str = "ntk+quadntk",
    *,
    steps: int | None = None,
    lr: float = 1.0,
    optimizer: str | optax.GradientTransformation = "sgd",
    reg: Regularizer | None = None,
    seeds: Sequence[int] = (0,),
    eval_every: int = 100,
    evals_per_chunk: int = 10,
    eval_at: str | Sequence[int] | None = None,
    eval_points: int = 40,
    init_scale: float | None = None,
    track_directions: bool = False,
    subspace_method: str = "gram",
    progress: bool | Callable[[dict], None] = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    devices: sharding.Devices = None,
    batching: str = "auto",
    loss: str = "mse",
    probe: int = 0,
    minibatch: Minibatch | None = None,
) -> Run:
    """Train one variant of `model` on `task` for several regularizer weights and seeds at once.

    Args:
        model: a model (`jaxntk.TwoLayer`, `jaxntk.TaylorModel`, ...); U is its displacement.
            Or a list of models, one per seed, with `task` a list of tasks: seed s trains
            model[s] on task[s], every seed and λ in one compiled program (the models alike in
            structure and shapes, the tasks too; on one device).
        task: a `jaxntk.targets.Task` (x/y train and test, target parts, distribution), or a
            list of them, one per seed (see `model`).
        variant: a name in `jaxntk.objectives.VARIANTS`.
        steps: number of optimizer steps T ≥ 1 (full batch; leave unset with `minibatch`).
        lr: learning rate of a named optimizer.
        optimizer: a name in `OPTIMIZERS` or an optax GradientTransformation (then `lr` is unused).
        reg: the regularizer weights (sequences sweep); default: none, except for "regularized",
            whose default is λ_b = 1 on the per-sample-mean R_bulk (the authors' figure's 1e-3 on
            the sum over n = 1000 training points).
        seeds: PRNG seeds (initial U, signs, fresh samples), one run each.
        eval_every: evaluate train/test loss and regularizers every this many steps.
        evals_per_chunk: evaluations per compiled chunk (progress/checkpoint granularity).
        eval_at: None (every `eval_every` steps), "log" (`eval_points` steps spaced evenly in
            log t, `eval_schedule`), or an explicit sequence of steps in [1, steps]; the
            evaluations run inside the compiled loop, and t = 0 and t = steps are always
            evaluated. Curves drawn against log t need "log".
        eval_points: the number of log-spaced evaluation steps for eval_at="log".
        init_scale: norm of the rows of a random initial U; default 0.1 for variants whose
            gradient vanishes at U = 0 (quadntk), 0 otherwise.
        track_directions: compute the good directions (and log R_bulk, R_pop) even when no
            regularizer needs them. For a model with several outputs per input (a classifier's
            logits: any loss) they are those of `Regularizer.outputs` ("full" or "traced").
        subspace_method: how `jaxntk.spectral.good_directions` finds the top-k subspace.
        progress: print a line per chunk (True), stay silent (False), or call this with a dict.
        checkpoint: folder to save the state and the history after every chunk
            (`jaxntk.checkpoint`, orbax); with `resume`, continue from its newest complete state,
            on any devices and processes (a corrupted folder or other settings: ValueError).
        devices: where to train: None (every available device), a count N (the first N), a
            list of devices, or a `jaxntk.sharding.device_mesh` (to split the samples too). On
            several devices the neurons are split among them (`jaxntk.sharding`; `TwoLayer` only);
            ValueError if they do not split m into even, half-aligned blocks.
        batching: how the λ × seed settings share one program: "vmap" (batched arrays, best on
            GPU/TPU), "map" (`lax.map`, one setting after another inside the program: on CPU
            XLA's batched products cost ~1.5× the separate ones), or "auto" ("map" on CPU).

        resume: continue from `checkpoint` if it holds a run with the same settings.
        loss: the data loss, a name in `jaxntk.objectives.LOSSES`: "mse", the mean over all
            output entries (y shaped like the model's outputs), or "cross_entropy" (softmax
            over the last output axis, y integer class labels; the history adds
            "train_accuracy" and "test_accuracy").
        probe: P > 0 records the laziness diagnostics at every evaluation, inside the compiled
            loop (`jaxntk.diagnostics`, `VariantObjective.probe`): the history adds
            "kernel_change" (of the tangent kernel on the first P training inputs, from the
            network's NTK at θ0), "alignment", "displacement", "probe_outputs" (L, S, E, P) and,
            for "full", "distance_linear" and "distance_quadratic" on the test inputs. 0 (the
            default): none.
        minibatch: a `jaxntk.Minibatch`: train on batches of its batch_size rows for its
            epochs (a fresh permutation per epoch from each seed, inside the compiled program;
            the objective's batch form, `jaxntk.minibatch`), evaluate after every epoch on the
            whole sets in blocks, optionally hold out a validation set and stop early. Then
            `steps`, `eval_at` and `probe` must stay unset, `eval_every` is unused,
            `evals_per_chunk` counts epochs, the history adds "epoch" (and "val_loss",
            "val_accuracy"), `Run.params` are each setting's best validation epoch's and
            `Run.best_epoch`, `Run.stopped_at_epoch` say when; one device (devices None or
            1). None (the default): full batch.

    Returns:
        A `Run`; history metrics have leading axes (L, S) for L regularizer settings, S seeds.

    Raises:
        ValueError: for an unknown variant, optimizer, batching mode or loss, a non-positive
            step count, a probe out of [0, n], devices that do not fit the model, task labels
            that do not fit the model's outputs and the loss (naming y_train or y_test), a
            `Regularizer` field out of range (k, outputs, pop_inputs), or R_pop on inputs with no
            law to draw from (not (n, d)) and no `Regularizer.pop_inputs`; for lists of models
            and tasks, not one of each per seed, models or tasks that differ in structure or
            shapes, or several devices; for `minibatch`, a batch size, epoch count, validation
            fraction or arrays, patience or monitor that do not fit the task
            (`Minibatch.check`), or steps, eval_at or probe given, or several devices.
        TypeError: if `reg` is not a `Regularizer`, `minibatch` not a `Minibatch`, only one of
            model and task is a list, or steps missing without `minibatch`.

    Example:
        >>> import jax
        >>> import jaxntk as jn
        >>> key = jax.random.PRNGKey(0)
        >>> task = jn.paper_task(key, d=8, n=20, n_test=50)
        >>> net = jn.TwoLayer.init(key, d=8, m=16)
        >>> run = jn.train(net, task, "regularized", steps=40, eval_every=20, seeds=[1, 11, 111],
        ...                reg=jn.Regularizer(bulk=[0.0, 1.0]), progress=False)
        >>> run.history["test_loss"].shape   # 2 weights, 3 seeds, evaluations at t = 0, 20, 40
        (2, 3, 3)
        >>> run.history["step"].tolist()
        [0, 20, 40]

        Each seed with its own task and network, still one program:

        >>> tasks = [jn.paper_task(jax.random.PRNGKey(s), d=8, n=20, n_test=50) for s in (1, 2)]
        >>> nets = [jn.TwoLayer.init(jax.random.PRNGKey(10 + s), d=8, m=16) for s in (1, 2)]
        >>> run = jn.train(nets, tasks, steps=40, eval_every=20, seeds=[1, 2], progress=False)
        >>> run.history["test_loss"].shape, run.config["data_per_seed"]
        ((1, 2, 3), True)

        Minibatches of 4 rows for 3 epochs, 4 of the 20 rows held out, early stopping:

        >>> mb = jn.Minibatch(batch_size=4, epochs=3, validation=0.2, patience=2)
        >>> run = jn.train(net, task, "ntk", minibatch=mb, seeds=[1, 2], progress=False)
        >>> run.history["epoch"].tolist(), run.history["val_loss"].shape, run.best_epoch.shape
        ([0, 1, 2, 3], (1, 2, 4), (1, 2))
    """
    v = get_variant(variant)
    pairs = _pairs(model, task, seeds)
    out_train = _check_tasks(pairs, loss)
    pairs, split, steps = _minibatch_split(minibatch, pairs, loss, steps, eval_at, probe)
    model, task = pairs[0]
    reg, weights = _regularizer_weights(reg, v, task.n, out_train)
    init_scale = _check_model_for_variant(model, variant, v, init_scale)
    check_int("probe", probe, 0, task.n, "the number of training points")
    _batching_mode(batching)  # a bad value fails before any work
    # a minibatch run trains on one device: by default the first, not all of them
    layout, pairs = _place(pairs, 1 if split is not None and devices is None else devices)
    if split is not None and layout is not None:
        raise ValueError("devices: minibatch training runs on one device; pass devices=1")
    use = {name: bool(np.any(w > 0)) for name, w in weights.items()}
    pop_inputs = _pop_inputs(reg, pairs, use["pop"])
    dirs = None
    if use["bulk"] or use["pop"] or track_directions or v.regularized:
        dirs = _directions(pairs, out_train, reg, subspace_method)
    objective = _variant_objective(variant, init_scale, use, reg, task, loss, probe)
    data = _seed_data(pairs, dirs, pop_inputs)
    per_seed = len(pairs) > 1
    config = _train_config(variant, steps, lr, optimizer, reg, weights, init_scale, task, loss)
    if per_seed:
        config["data_per_seed"] = True
    if probe:
        config["probe"] = probe
    common = {
        "hyper": weights,
        "seeds": seeds,
        "lr": lr,
        "optimizer": optimizer,
        "evals_per_chunk": evals_per_chunk,
        "progress": progress,
        "checkpoint": checkpoint,
        "resume": resume,
        "label": variant,
        "config": config,
        "layout": layout,
        "batching": batching,
        "per_seed": per_seed,
    }
    if split is not None:
        config["minibatch"] = minibatch.as_config()
        objective = BatchObjective(objective, minibatch.eval_block)
        # V_k (k·|params| numbers, k products with Jᵀ) only where R_pop is trained or logged
        data = _batch_data(pairs, data, split, per_seed, use["pop"] or track_directions)
        return _fit_minibatch(objective, data, minibatch, split.steps_per_epoch, **common)
    steps_given = {"eval_every": eval_every, "eval_at": eval_at, "eval_points": eval_points}
    return fit(objective, data, steps=steps, **steps_given, **common)


def _variant_objective(variant, init_scale, use, reg, task, loss, probe) -> VariantObjective:
    """The `VariantObjective` of `train`'s settings."""
    return VariantObjective(
        variant=variant,
        init_scale=float(init_scale),
        use_bulk=use["bulk"],
        use_pop=use["pop"],
        use_norm24=use["norm24"],
        pop_samples=reg.pop_samples,
        distribution=task.distribution,
        d=task.d,
        data_loss=loss,
        probe=probe,
    )


def fit(
    objective: Any,
    data: Any,
    *,
    hyper: dict[str, Any],
    seeds: Sequence[int],
    steps: int,
    lr: float = 1.0,
    optimizer: str | optax.GradientTransformation = "sgd",
    eval_every: int = 100,
    evals_per_chunk: int = 10,
    eval_at: str | Sequence[int] | None = None,
    eval_points: int = 40,
    progress: bool | Callable[[dict], None] = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    label: str = "run",
    config: dict[str, Any] | None = None,
    layout: sharding.Layout | None = None,
    batching: str = "auto",
    per_seed: bool = False,
) -> Run:
    """Train `objective` on `data` for every setting in `hyper` (each a (L,) array) and seed.

    The generic trainer: it knows nothing about networks (see the module docstring); `train`
    builds its objective from a named variant and calls it.

    Args:
        objective: a hashable object with `prepare(data)`, `init(key, data)`,
            `loss(params, data, hyper, key) -> (scalar, aux)` and
            `evaluate(params, data, hyper) -> dict`, e.g. `jaxntk.objectives.VariantObjective`.
        data: the arrays the objective reads (a pytree, e.g. `jaxntk.objectives.Data`).
        hyper: the settings, name -> (L,) array; every array has the same length L.
        seeds: PRNG seeds, one run each (S of them).
        steps: number of optimizer steps T ≥ 1.
        lr: learning rate of a named optimizer.
        optimizer: a name in `OPTIMIZERS` or an optax GradientTransformation.
        eval_every: call `objective.evaluate` every this many steps.
        evals_per_chunk: evaluations per compiled chunk (progress/checkpoint granularity).
        eval_at: as in `train`: None (every `eval_every` steps), "log", or a sequence of steps.
        eval_points: the number of log-spaced evaluation steps for eval_at="log".
        progress: print a line per chunk (True), stay silent (False), or call this with a dict.
        checkpoint: folder to save the state after every chunk; with `resume`, continue from it.
        resume: continue from `checkpoint` if it holds a run with the same settings.
        label: the name printed on progress lines.
        config: extra JSON-serialisable settings stored in `Run.config` (and checked on resume).
        layout: a `jaxntk.sharding.layout` placing the data and the state on a device mesh; the
            compiled program is the same, partitioned by XLA.
        batching: as in `train`.
        per_seed: `data`'s leaves lead with the seed axis S: seed s trains on data[s] (its
            own task and model), all S in the one compiled program.

    Returns:
        A `Run` whose params and metrics lead with the axes (L, S).

    Raises:
        ValueError: for a bad step count, seeds, optimizer name, batching mode or evaluation
            schedule.
    """
    mode = _batching_mode(batching)
    seeds, opt, schedule = _check_fit(
        data,
        seeds,
        steps,
        lr,
        optimizer,
        eval_every,
        evals_per_chunk,
        eval_at,
        eval_points,
        layout,
        per_seed,
    )
    if layout is not None:
        data = layout.data(data)
    hyper_arrays, n_lambda, dtype = _settings(hyper, data)
    config = dict(config or {})
    config.update(seeds=list(seeds), eval_every=eval_every, evals_per_chunk=evals_per_chunk)
    if schedule is not None:
        config["eval_at"] = schedule.tolist()
    state = _init_state(
        objective,
        opt,
        data,
        jnp.asarray(seeds),
        n_lambda,
        jnp.asarray(lr, dtype),
        isinstance(optimizer, str),
        per_seed,
    )
    if layout is not None:
        state = layout.state(state)
    ckpt = Path(checkpoint) if checkpoint is not None else None

    def first(state):
        return state, _to_host(_evaluate_jit(state.params, data, hyper_arrays, objective, per_seed))

    state, step, history = _resume_or_evaluate(state, ckpt, config, resume, first)
    run_chunk = _chunk_runner(
        objective,
        opt,
        data,
        hyper_arrays,
        steps,
        mode,
        per_seed,
        eval_every,
        evals_per_chunk,
        schedule,
    )
    report = _reporter(progress, label, steps)
    state = _chunk_loop(state, step, steps, history, run_chunk, report, label, seeds, ckpt)
    return _assemble_run(history, state, config, layout)


def _check_fit(
    data: Any,
    seeds: Sequence[int],
    steps: int,
    lr: float,
    optimizer: str | optax.GradientTransformation,
    eval_every: int,
    evals_per_chunk: int,
    eval_at: str | Sequence[int] | None,
    eval_points: int,
    layout: sharding.Layout | None,
    per_seed: bool,
) -> tuple[list[int], optax.GradientTransformation, np.ndarray | None]:
    """`fit`'s arguments checked: the seeds as ints, the optimizer resolved, and the evaluation
    schedule (None for every `eval_every` steps)."""
    check_int("steps", steps, 1)
    check_int("eval_every", eval_every, 1)
    check_int("evals_per_chunk", evals_per_chunk, 1)
    schedule = None if eval_at is None else eval_schedule(steps, eval_at, eval_points)
    seeds = _check_seeds(seeds)
    if per_seed:
        if layout is not None:
            raise ValueError("per_seed data trains on one device: layout must be None")
        lead = {int(np.shape(a)[0]) for a in jax.tree_util.tree_leaves(data)}
        if lead != {len(seeds)}:
            raise ValueError(
                f"per_seed: every leaf of data must lead with the {len(seeds)} seeds, "
                f"got leading sizes {sorted(lead)}"
            )
    named = isinstance(optimizer, str)
    if named and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite float > 0, got {lr!r}")
    return seeds, _resolve_optimizer(optimizer), schedule


def _settings(hyper: dict[str, Any], data: Any) -> tuple[dict[str, Array], int, Any]:
    """The settings as (L,) arrays of the data's float dtype, their number L, and that dtype."""
    # the floats set the dtype of the settings; integer class labels do not take part
    floats = [
        leaf
        for leaf in jax.tree_util.tree_leaves(data)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    ]
    dtype = jnp.result_type(*floats)
    hyper_arrays = {k: jnp.asarray(np.asarray(v), dtype=dtype) for k, v in hyper.items()}
    if any(v.ndim != 1 for v in hyper_arrays.values()):
        raise ValueError(
            "hyper must map names to 1-D arrays of the L settings, got shapes "
            f"{ {k: v.shape for k, v in hyper_arrays.items()} }"
        )
    n_settings = {int(np.shape(v)[0]) for v in hyper.values()} or {1}
    if len(n_settings) != 1:
        raise ValueError(f"hyper arrays must share one length, got {n_settings}")
    return hyper_arrays, n_settings.pop(), dtype


def _resume_or_evaluate(state, ckpt, config, resume, evaluate_first: Callable):
    """(state, step, history) to train from: with `resume`, the checkpoint's newest complete
    state and its history; otherwise the initial state and its evaluation at t = 0,
    `evaluate_first(state) -> (state, metrics on the host)` (saved as the checkpoint's first
    chunk)."""
    history: list[dict[str, np.ndarray]] = []
    step = 0
    if ckpt is not None and checkpoints.begin(ckpt, config, resume=resume):
        state, step, history = checkpoints.restore(ckpt, state)
    if not history:
        state, first = evaluate_first(state)
        first["step"] = np.zeros(1, dtype=np.int64)
        history.append(first)
        if ckpt is not None:
            checkpoints.save_chunk(ckpt, first)
    return state, step, history


def _chunk_runner(
    objective, opt, data, hyper, steps, mode, per_seed, eval_every, evals_per_chunk, schedule
) -> Callable:
    """run(state, step) -> (state', chunk, step', trace): one compiled chunk of training from
    `step`; chunk holds its evaluations on the host (with their "step"), trace its per-step
    records as the program returns them."""
    total = jnp.asarray(steps, jnp.int32)
    compiled = {"objective": objective, "optimizer": opt, "batching": mode, "per_seed": per_seed}
    if schedule is None:

        def run_blocks(state, step):
            state, metrics, at, trace = _run_chunk(
                state,
                jnp.asarray(step, jnp.int32),
                total,
                data,
                hyper,
                eval_every=eval_every,
                n_blocks=evals_per_chunk,
                **compiled,
            )
            metrics, at = _to_host(metrics), np.asarray(at)
            real = at > step  # blocks past the last step are skipped in the program
            chunk = {k: v[:, :, real] for k, v in metrics.items()}
            chunk["step"] = at[real].astype(np.int64)
            return state, chunk, int(chunk["step"][-1]), trace

        return run_blocks

    chunk_len, max_evals = _schedule_chunks(schedule, steps, evals_per_chunk)

    def run_scheduled(state, step):
        mine = schedule[(schedule > step) & (schedule <= step + chunk_len)]
        wanted = np.full(max_evals, -1, np.int32)
        wanted[: mine.size] = mine
        state, metrics, trace = _run_chunk_at(
            state,
            jnp.asarray(step, jnp.int32),
            total,
            jnp.asarray(wanted),
            data,
            hyper,
            length=chunk_len,
            **compiled,
        )
        chunk = {k: v[:, :, : mine.size] for k, v in _to_host(metrics).items()}
        chunk["step"] = mine.astype(np.int64)
        return state, chunk, min(step + chunk_len, steps), trace

    return run_scheduled


def _chunk_loop(state, step, steps, history, run_chunk, report, label, seeds, ckpt, per_epoch=0):
    """Chunks from `step` to `steps`, or until every run has diverged (or, minibatch, stopped
    early): each chunk's evaluations and per-step trace appended to `history`, a warning for each
    run that newly diverged (with its epoch when `per_epoch` steps make one), the progress
    reported and the checkpoint saved. Returns the last state."""
    latest = next(h for h in reversed(history) if h["step"].size)
    warned = np.asarray(state.diverged_at) >= 0
    t0 = time.perf_counter()
    while step < steps and not np.all(warned | _stopped(state)):
        start = step
        state, chunk, step, trace = run_chunk(state, step)
        for k, v in _to_host(trace).items():
            chunk[f"{TRACE}{k}"] = v[:, :, : step - start]
        chunk[f"{TRACE}step"] = np.arange(start, step, dtype=np.int64)
        history.append(chunk)
        warned = _warn_divergence(np.asarray(state.diverged_at), warned, label, seeds, per_epoch)
        if chunk["step"].size:  # a chunk of a schedule may hold no evaluation
            latest = chunk
        report(step, latest, time.perf_counter() - t0)
        if ckpt is not None:
            checkpoints.save_chunk(ckpt, chunk)
            checkpoints.save_state(ckpt, step, state)
    return state


def _stopped(state) -> np.ndarray:
    """The runs that early stopping froze (a minibatch run's state), else False."""
    return np.asarray(getattr(state, "stopped_at", -1)) >= 0


def _warn_divergence(
    bad: np.ndarray, warned: np.ndarray, label: str, seeds: list[int], per_epoch: int = 0
):
    """A DivergenceWarning for each run that diverged since the last chunk (its step, and its
    epoch and batch, counted from 1, when `per_epoch` steps make one); returns the runs warned
    of so far."""
    fresh = (bad >= 0) & ~warned
    for idx in zip(*np.nonzero(fresh), strict=True):
        at = f"step {int(bad[idx])}"
        if per_epoch:
            epoch, batch = divmod(int(bad[idx]), per_epoch)
            at += f" (epoch {epoch + 1}, batch {batch + 1} of {per_epoch})"
        warnings.warn(
            f"{label}: non-finite training loss at {at} "
            f"(setting {idx[0]}, seed {seeds[idx[1]]}); run stopped, history kept",
            DivergenceWarning,
            stacklevel=4,  # the caller of fit
        )
    return warned | fresh


def _assemble_run(history, state, config, layout) -> Run:
    """The `Run`: the chunks joined along time, the trace apart, metrics after a run's divergence
    masked, and the parameters fetched to the host."""
    hist = _concat(history)
    bad = np.asarray(state.diverged_at)
    trace = {k[len(TRACE) :]: hist.pop(k) for k in list(hist) if k.startswith(TRACE)}
    _mask_after_divergence(hist, bad)
    _mask_after_divergence(trace, bad)
    config["diverged_at_step"] = bad.tolist()
    fetch = jax.device_get if layout is None else layout.fetch
    return Run(fetch(state.params), hist, config, bad, trace)


def _pairs(model: Any, task: Any, seeds: Sequence[int]) -> list[tuple[Any, Any]]:
    """[(model, task)], or for sequences of models and tasks one pair per seed, checked to have
    the same structure and shapes (they are stacked into one program)."""
    if not isinstance(model, list | tuple) and not isinstance(task, list | tuple):
        return [(model, task)]
    if not (isinstance(model, list | tuple) and isinstance(task, list | tuple)):
        raise TypeError(
            "model and task: pass one of each, or a list of each (one per seed), got "
            f"{type(model).__name__} and {type(task).__name__}"
        )
    n_seeds = len(seeds) if isinstance(seeds, Sequence) else 1
    if not len(model) == len(task) == n_seeds or n_seeds == 0:
        raise ValueError(
            f"model and task: one of each per seed, got {len(model)} models and {len(task)} "
            f"tasks for {n_seeds} seeds"
        )
    pairs = list(zip(model, task, strict=True))
    for what, items in (("model", model), ("task", task)):
        shapes = [
            (jax.tree_util.tree_structure(x), [jnp.shape(a) for a in jax.tree_util.tree_leaves(x)])
            for x in items
        ]
        for i, shape in enumerate(shapes[1:], 1):
            if shape != shapes[0]:
                raise ValueError(
                    f"{what}[{i}] differs in structure or shapes from {what}[0]: the models "
                    "and tasks of one run are stacked into one program"
                )
    return pairs


def _output_shapes(model: Any, task: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the model's outputs on the task's training and test inputs (traced, not run)."""

    def shape(x):
        return tuple(jax.eval_shape(lambda x: model.initial_output(model.prepare(x)), x).shape)

    return shape(task.x_train), shape(task.x_test)


def _train_config(
    variant: str,
    steps: int,
    lr: float,
    optimizer: str | optax.GradientTransformation,
    reg: Regularizer,
    weights: dict[str, np.ndarray],
    init_scale: float,
    task: Any,
    loss: str,
) -> dict[str, Any]:
    """`train`'s settings as JSON-serialisable data, for `Run.config` and the checkpoint."""
    return {
        "variant": variant,
        "steps": steps,
        "lr": lr,
        "optimizer": optimizer if isinstance(optimizer, str) else repr(optimizer),
        "regularizer": {
            **{k: w.tolist() for k, w in weights.items()},
            "k": reg.k,
            "pop_samples": reg.pop_samples,
            **_direction_config(reg),
        },
        "init_scale": float(init_scale),
        "n": task.n,
        "d": task.d,
        "distribution": task.distribution,
        "loss": loss,
    }


def _check_tasks(pairs: list[tuple[Any, Any]], loss: str) -> tuple[int, ...]:
    """Each (model, task) pair checked (`check_task`, and its labels against the model's outputs
    and the loss); returns the shape of the model's outputs on x_train."""
    for m_s, t_s in pairs:
        task_data.check_task(t_s, m_s)
        out_train, out_test = _output_shapes(m_s, t_s)
        check_targets(loss, t_s.y_train, out_train, "y_train", "x_train")
        check_targets(loss, t_s.y_test, out_test, "y_test", "x_test")
    return out_train


def _regularizer_weights(
    reg: Regularizer | None, v: Any, n: int, out_train: tuple[int, ...]
) -> tuple[Regularizer, dict[str, np.ndarray]]:
    """`reg` (or the variant's default), checked for n training points with outputs of shape
    out_train, and its (L,) weights."""
    if reg is None:
        reg = Regularizer(bulk=DEFAULT_BULK) if v.regularized else Regularizer()
    if not isinstance(reg, Regularizer):
        raise TypeError(f"reg must be a jaxntk.Regularizer, got {type(reg).__name__}")
    weights = reg.weights()
    reg.validate(n, math.prod(out_train[1:]))
    return reg, weights


def _check_model_for_variant(model: Any, variant: str, v: Any, init_scale: float | None) -> float:
    """What the variant needs of the model (σ'' ≠ 0, rows that are neurons), and the initial
    scale: the given one, checked, or the variant's default."""
    if v.quadratic and isinstance(model, network.TwoLayer):
        network.check_curvature(model, f"variant {variant!r}")
    if variant == "randomized" and not getattr(model, "rows_are_neurons", False):
        raise ValueError(
            "variant 'randomized' flips the sign of each row of U and evaluates "
            "½[f(W0 + U) + f(W0 − U)], exact only for a model whose output is a sum over neurons "
            f"(rows), such as jaxntk.TwoLayer; got {type(model).__name__}"
        )
    if init_scale is None:
        init_scale = 0.1 if v.random_init else 0.0
    if not (isinstance(init_scale, int | float) and math.isfinite(init_scale) and init_scale >= 0):
        raise ValueError(f"init_scale must be a finite float ≥ 0, got {init_scale!r}")
    return init_scale


def _place(
    pairs: list[tuple[Any, Any]], devices: sharding.Devices
) -> tuple[sharding.Layout | None, list[tuple[Any, Any]]]:
    """The layout over `devices` (None on one device) and the pairs with the model placed on it,
    so that everything computed from W0 is split as well."""
    model, task = pairs[0]
    layout = sharding.layout(model, devices)
    if layout is None:
        return None, pairs
    if len(pairs) > 1:
        raise ValueError(
            "devices: one model and task per seed trains on one device; pass devices=1, "
            f"got {devices!r}"
        )
    return layout, [(layout.model(model), task)]


def _directions(
    pairs: list[tuple[Any, Any]], out_train: tuple[int, ...], reg: Regularizer, method: str
) -> list[spectral.GoodDirections]:
    """The top-k good directions of each pair's model on its x_train: k = `reg.k`, or d (d·c
    for c outputs per input with outputs "full"), of the kernel `reg.outputs` names."""
    task, outputs = pairs[0][1], math.prod(out_train[1:])
    k = reg.default_k(task.d, outputs)
    rows = task.n * outputs if reg.outputs == "full" else task.n
    if k > rows:  # only a default can be: `reg.validate` bounds a given k
        per = f" × {outputs} outputs" if reg.outputs == "full" and outputs > 1 else ""
        raise ValueError(
            f"Regularizer.k defaults to d = {task.d}{per} (the input features), more than the "
            f"{rows} rows of the feature matrix (n = {task.n} training points{per}): pass "
            f"Regularizer(k=...) with k ≤ {rows}"
        )
    if method == "matrix_free":  # outside jit: the NTK operator's engine runs its own programs
        return [
            spectral.good_directions(
                m_s, m_s.prepare(t_s.x_train, order=1), k, method=method, outputs=reg.outputs
            )
            for m_s, t_s in pairs
        ]
    return [_good_directions(m_s, t_s.x_train, k, method, reg.outputs) for m_s, t_s in pairs]


def _pop_inputs(reg: Regularizer, pairs: list[tuple[Any, Any]], use_pop: bool) -> Array | None:
    """`reg.pop_inputs` as an array checked against the training inputs, or None (R_pop draws
    from the task's law); ValueError when R_pop is on and the inputs have no law to draw from."""
    x_train = pairs[0][1].x_train
    if reg.pop_inputs is None:
        if use_pop and pairs[0][1].input_ndim != 1:  # inputs that are not (n, d) vectors
            raise ValueError(
                "R_pop (Regularizer.pop > 0) draws fresh inputs from the task's input law, but "
                f"the training inputs have shape {tuple(x_train.shape)}, not (n, d) vectors of "
                "a law in jaxntk.polynomials.DISTRIBUTIONS: pass held-out unlabelled inputs as "
                "Regularizer(pop_inputs=...), or turn R_pop off with Regularizer(pop=0)"
            )
        return None
    pool = jnp.asarray(reg.pop_inputs)
    if pool.ndim < 1 or pool.shape[0] < 1 or pool.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            "Regularizer.pop_inputs must be (n_pop, ...) inputs shaped like x_train's rows "
            f"{tuple(x_train.shape[1:])}, with n_pop ≥ 1, got shape {tuple(pool.shape)}"
        )
    if pool.dtype != x_train.dtype:
        raise ValueError(
            f"Regularizer.pop_inputs must have x_train's dtype {x_train.dtype}, got {pool.dtype}"
        )
    if not bool(jnp.all(jnp.isfinite(pool))):
        raise ValueError("Regularizer.pop_inputs must be finite")
    return pool


def _direction_config(reg: Regularizer) -> dict[str, Any]:
    """The good directions' settings for `Run.config` where they are not the defaults (the
    configuration, and the checkpoints' check of it, of a default run are unchanged)."""
    out = {} if reg.outputs == "full" else {"outputs": reg.outputs}
    if reg.pop_inputs is not None:
        out["pop_inputs"] = int(np.shape(reg.pop_inputs)[0])
    return out


def _seed_data(pairs: list[tuple[Any, Any]], dirs: list | None, pop_inputs=None) -> Data:
    """The arrays the objective reads, one `Data` per pair stacked along a leading seed axis when
    there are several (each seed its own task and model); pop_inputs (shared) for R_pop."""
    # R_pop is logged on at most POP_EVAL_SAMPLES test inputs: enough for its scale, and cheap
    data = [
        Data(
            m_s,
            t_s.x_train,
            t_s.x_test,
            t_s.y_train,
            t_s.y_test,
            t_s.parts_test,
            None if dirs is None else dirs[i],
            t_s.x_test[:POP_EVAL_SAMPLES],
            pop_inputs=pop_inputs,
        )
        for i, (m_s, t_s) in enumerate(pairs)
    ]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *data) if len(data) > 1 else data[0]


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _good_directions(model, x_train, k: int, method: str, outputs: str = "full"):
    # prepared inside the program, so a model whose prep is not a stable cache key (a
    # TaylorModel's linearization) compiles this once per shape, like the rest of the run
    prep = model.prepare(x_train)
    return spectral.good_directions(model, prep, k, method=method, outputs=outputs)


def _resolve_optimizer(optimizer: str | optax.GradientTransformation):
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {list(OPTIMIZERS)}")
        return _named_optimizer(optimizer)
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    raise ValueError(
        f"optimizer must be a name in {list(OPTIMIZERS)} or an optax.GradientTransformation, "
        f"got {type(optimizer).__name__}"
    )


@functools.cache
def _named_optimizer(name: str) -> optax.GradientTransformation:
    # One object per name, with the learning rate in the optimizer state: a second run, at any
    # learning rate, reuses the compiled program.
    return optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=1.0)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 6, 7))
def _init_state(objective, opt, data, seeds, n_lambda, lr, set_lr: bool, per_seed: bool = False):
    def one(seed, data):
        key = jax.random.PRNGKey(seed)
        k_init, k_run = jax.random.split(key)
        params = objective.init(k_init, data)
        opt_state = opt.init(params)
        if set_lr:  # a named optimizer: its learning rate is state, set from `lr`
            hp = dict(opt_state.hyperparams)
            hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
            opt_state = opt_state._replace(hyperparams=hp)
        return TrainState(params, opt_state, k_run, jnp.asarray(-1, jnp.int32))

    states = jax.vmap(one, in_axes=(0, 0 if per_seed else None))(seeds, data)
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n_lambda, *x.shape)), states)


def _evaluate_at(objective):
    """objective.evaluate with _for_each_setting's argument order (params, hyper, data)."""
    return lambda p, h, d: objective.evaluate(p, d, h)


def _prepare(objective, data, per_seed: bool):
    """`objective.prepare(data)`, for each seed's own data when per_seed."""
    return jax.vmap(objective.prepare)(data) if per_seed else objective.prepare(data)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _evaluate_jit(params, data, hyper, objective, per_seed=False):
    evaluate = _chunk_fns(objective, None, data, "vmap", per_seed)[1]
    return jax.tree_util.tree_map(lambda x: x[:, :, None], evaluate(params, hyper))


def _batching_mode(batching: str) -> str:
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {list(BATCHING)}, got {batching!r}")
    if batching == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return batching


def _for_each_setting(fn: Callable, mode: str, data: Any, per_seed: bool = False) -> Callable:
    """fn(x, h, data) applied to every (λ, seed): x's leaves lead with (L, S), h's with (L,);
    `data` is shared, or with per_seed its leaves lead with (S,) and seed s reads data[s].

    "vmap" batches the arrays; "map" runs the L·S settings one after another with `lax.map`
    (no batched products), and a single setting is called directly.
    """
    if mode == "vmap":
        each_seed = jax.vmap(fn, in_axes=(0, None, 0 if per_seed else None))
        return lambda x, h: jax.vmap(each_seed, in_axes=(0, 0, None))(x, h, data)

    def one(x, h, s):
        own = jax.tree_util.tree_map(lambda a: a[s], data) if per_seed else data
        return fn(x, h, own)

    def mapped(x, h):
        n_l, n_s = jax.tree_util.tree_leaves(x)[0].shape[:2]
        flat_x = jax.tree_util.tree_map(lambda a: a.reshape(n_l * n_s, *a.shape[2:]), x)
        flat_h = jax.tree_util.tree_map(lambda a: jnp.repeat(a, n_s, axis=0), h)
        seed = jnp.arange(n_l * n_s) % n_s
        if n_l * n_s == 1:
            out = one(*jax.tree_util.tree_map(lambda a: a[0], (flat_x, flat_h, seed)))
            out = jax.tree_util.tree_map(lambda a: a[None], out)
        else:
            out = jax.lax.map(lambda xhs: one(*xhs), (flat_x, flat_h, seed))
        return jax.tree_util.tree_map(lambda a: a.reshape(n_l, n_s, *a.shape[1:]), out)

    return mapped


def _chunk_fns(objective, optimizer, data, batching: str, per_seed: bool):
    """(step, evaluate) of every (λ, seed) setting on `data`, prepared here once (outside any
    scan): step(state, hyper, t, total) -> (state', trace) runs step t, or skips it with a zero
    trace when t ≥ total; evaluate(params, hyper) -> metrics."""
    data = _prepare(objective, data, per_seed)
    one_step = _step_fn(objective, optimizer)

    def batched_step(s, hyp, t):
        step_one = lambda s1, h1, d1: one_step(s1, h1, t, d1)  # noqa: E731
        return _for_each_setting(step_one, batching, data, per_seed)(s, hyp)

    def step(s, hyp, t, total):
        trace_shape = jax.eval_shape(batched_step, s, hyp, t)[1]

        def skip(s):
            return s, jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), trace_shape)

        return jax.lax.cond(t < total, lambda s: batched_step(s, hyp, t), skip, s)

    def evaluate(p, hyp):
        return _for_each_setting(_evaluate_at(objective), batching, data, per_seed)(p, hyp)

    return step, evaluate


def _step_fn(objective, optimizer) -> Callable:
    """one_step(state, hyper, t, data, *rows) -> (state', trace): one optimizer step of one
    setting (`rows`, a minibatch's rows, passed on to the loss); a run whose loss became
    non-finite keeps its state and records the step."""

    def one_step(s: TrainState, hyp, t, data, *rows):
        key, sub = jax.random.split(s.key)
        (loss, aux), grads = jax.value_and_grad(objective.loss, has_aux=True)(
            s.params, data, hyp, sub, *rows
        )
        updates, opt_state = optimizer.update(grads, s.opt_state, s.params)
        params = optax.apply_updates(s.params, updates)
        stop = (s.diverged_at >= 0) | ~jnp.isfinite(loss)
        keep = functools.partial(jnp.where, stop)
        new = TrainState(
            jax.tree_util.tree_map(keep, s.params, params),
            jax.tree_util.tree_map(keep, s.opt_state, opt_state),
            key,
            jnp.where((s.diverged_at < 0) & ~jnp.isfinite(loss), t, s.diverged_at),
        )
        return new, {"loss": loss, **aux}

    return one_step


@functools.partial(
    jax.jit,
    static_argnames=("objective", "optimizer", "eval_every", "n_blocks", "batching", "per_seed"),
)
def _run_chunk(
    state,
    step,
    total,
    data,
    hyper,
    *,
    objective,
    optimizer,
    eval_every,
    n_blocks,
    batching,
    per_seed=False,
):
    """n_blocks × (eval_every steps, then evaluate); steps at or past `total` are skipped."""
    batched_step, batched_eval = _chunk_fns(objective, optimizer, data, batching, per_seed)

    def inner(carry, _):
        s, t = carry
        s, trace = batched_step(s, hyper, t, total)
        return (s, t + 1), trace

    def block(carry, _):
        s, t = carry
        active = t < total
        (s, t), trace = jax.lax.scan(inner, (s, t), None, length=eval_every)
        metrics = jax.lax.cond(
            active,
            lambda p: batched_eval(p, hyper),
            lambda p: jax.tree_util.tree_map(jnp.zeros_like, batched_eval(p, hyper)),
            s.params,
        )
        return (s, t), (metrics, jnp.where(active, jnp.minimum(t, total), 0), trace)

    (state, _), (metrics, at, trace) = jax.lax.scan(block, (state, step), None, length=n_blocks)
    # scan stacks evaluations on axis 0 (and steps on axes 0, 1); history keeps (L, S, E, ...)
    metrics = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, 2), metrics)
    trace = jax.tree_util.tree_map(
        lambda x: jnp.moveaxis(x.reshape(n_blocks * eval_every, *x.shape[2:]), 0, 2), trace
    )
    return state, metrics, at, trace


def eval_schedule(steps: int, eval_at: str | Sequence[int], points: int = 40) -> np.ndarray:
    """The evaluation steps of a run of `steps` steps: log-spaced, or checked from a list.

    "log" gives the distinct integers round(steps^(i/(points − 1))), i = 0..points − 1, from 1 to
    `steps`: evenly spaced in log t, so a curve against log t is drawn from data down to t = 1
    (fewer than `points` when steps is small, since the early ones coincide). A sequence is
    sorted and its duplicates dropped. `steps` itself is always included (the final evaluation);
    t = 0 is evaluated before training and is not part of the schedule.

    Args:
        steps: the number of optimizer steps T ≥ 1.
        eval_at: "log", or a sequence of ints in [1, steps].
        points: how many log-spaced steps to ask for ("log" only), ≥ 2.

    Returns:
        (E,) int64 NumPy array of increasing steps in [1, steps], ending at `steps`.

    Raises:
        ValueError: eval_at is neither "log" nor a sequence of ints in [1, steps], or points < 2.

    Example:
        >>> from jaxntk.training import eval_schedule
        >>> eval_schedule(1000, "log", points=4).tolist()
        [1, 10, 100, 1000]
        >>> eval_schedule(50, [30, 5, 5]).tolist()
        [5, 30, 50]
    """
    check_int("steps", steps, 1)
    if isinstance(eval_at, str):
        if eval_at != "log":
            raise ValueError(f'eval_at must be None, "log" or a sequence of steps, got {eval_at!r}')
        check_int("eval_points", points, 2)
        at = np.round(np.geomspace(1, steps, points)).astype(np.int64)
    else:
        try:
            at = np.asarray(list(eval_at))
        except TypeError:
            raise ValueError(
                f'eval_at must be None, "log" or a sequence of steps, got {eval_at!r}'
            ) from None
        if at.ndim != 1 or (at.size and not np.issubdtype(at.dtype, np.integer)):
            raise ValueError(f"eval_at must be a 1-D sequence of ints, got {eval_at!r}")
        if at.size and (at.min() < 1 or at.max() > steps):
            raise ValueError(
                f"eval_at steps must lie in [1, steps = {steps}], got {sorted(set(at.tolist()))}"
            )
    return np.unique(np.append(at.astype(np.int64), steps))


def _schedule_chunks(schedule: np.ndarray, steps: int, evals_per_chunk: int) -> tuple[int, int]:
    """(steps per chunk, most evaluations in one chunk) for a schedule: about
    len(schedule)/evals_per_chunk chunks of equal length, so one compiled program serves all."""
    n_chunks = max(1, math.ceil(schedule.size / evals_per_chunk))
    length = math.ceil(steps / n_chunks)
    counts = np.bincount((schedule - 1) // length)
    return length, int(counts.max())


@functools.partial(
    jax.jit, static_argnames=("objective", "optimizer", "length", "batching", "per_seed")
)
def _run_chunk_at(
    state,
    step,
    total,
    wanted,
    data,
    hyper,
    *,
    objective,
    optimizer,
    length,
    batching,
    per_seed=False,
):
    """`length` steps from `step` (those at or past `total` skipped), evaluating after each step
    whose count t + 1 is the next entry of `wanted` (increasing, padded with −1); the
    evaluations are written in order into a buffer of len(wanted) slots."""
    batched_step, batched_eval = _chunk_fns(objective, optimizer, data, batching, per_seed)
    n_wanted = wanted.shape[0]
    shapes = jax.eval_shape(batched_eval, state.params, hyper)
    buffer = jax.tree_util.tree_map(lambda a: jnp.zeros((n_wanted, *a.shape), a.dtype), shapes)

    def inner(carry, _):
        s, t, buf, i = carry
        s, trace = batched_step(s, hyper, t, total)
        t = t + 1
        hit = (i < n_wanted) & (wanted[jnp.minimum(i, n_wanted - 1)] == t) & (t <= total)

        def write(buf):
            m = batched_eval(s.params, hyper)
            return jax.tree_util.tree_map(lambda b, x: b.at[i].set(x), buf, m)

        buf = jax.lax.cond(hit, write, lambda b: b, buf)
        return (s, t, buf, i + hit.astype(i.dtype)), trace

    init = (state, step, buffer, jnp.zeros((), jnp.int32))
    (state, _, buffer, _), trace = jax.lax.scan(inner, init, None, length=length)
    metrics = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, 2), buffer)
    trace = jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, 2), trace)
    return state, metrics, trace


def _to_host(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in jax.device_get(tree).items()}


def _concat(history: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Chunks joined along time: axis 0 of the step counters, axis 2 of (L, S, time) arrays."""
    keys = dict.fromkeys(k for h in history for k in h)
    return {
        k: np.concatenate(
            [h[k] for h in history if k in h], axis=0 if k.endswith("step") or k == "epoch" else 2
        )
        for k in keys
    }


def _mask_after_divergence(hist: dict[str, np.ndarray], bad: np.ndarray) -> None:
    """Metrics evaluated after a run's divergence step are NaN: the run had stopped."""
    after = (bad[:, :, None] >= 0) & (hist["step"][None, None, :] > bad[:, :, None])
    for key, val in hist.items():
        if key != "step" and np.issubdtype(val.dtype, np.floating):
            mask = after.reshape(after.shape + (1,) * (val.ndim - 3))
            hist[key] = np.where(mask, np.nan, val)


def _reporter(
    progress, label: str, steps: int, per_epoch: int = 0
) -> Callable[[int, dict, float], None]:
    """report(step, chunk, elapsed): the progress line (or callback) of a chunk; with
    `per_epoch` steps to an epoch (minibatch), it counts epochs and adds the validation loss."""

    def report(step: int, chunk: dict[str, np.ndarray], elapsed: float) -> None:
        info = {
            "label": label,
            "step": step,
            "steps": steps,
            "elapsed_s": elapsed,
            "train_loss": _finite_mean(chunk["train_loss"][:, :, -1]),
            "test_loss": _finite_mean(chunk["test_loss"][:, :, -1]),
        }
        at = f"step {step}/{steps}"
        if per_epoch:
            info.update(epoch=step // per_epoch, epochs=steps // per_epoch)
            at = f"epoch {info['epoch']}/{info['epochs']}"
        val = ""
        if "val_loss" in chunk:
            info["val_loss"] = _finite_mean(chunk["val_loss"][:, :, -1])
            val = f"  val {info['val_loss']:.4g}"
        if callable(progress):
            progress(info)
        elif progress:
            print(
                f"[{label}] {at}  train {info['train_loss']:.4g}  "
                f"test {info['test_loss']:.4g}{val}  ({elapsed:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    return report


def _finite_mean(x: np.ndarray) -> float:
    """Mean over the runs still finite (NaN when none is): progress of a partly diverged sweep."""
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if isinstance(seeds, int | np.integer):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must be a non-empty sequence of ints")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
            raise ValueError(f"seeds must be ints ≥ 0, got {s!r}")
    return [int(s) for s in seeds]


# ------------------------------------------------------------------------------- minibatch


class BatchState(NamedTuple):
    """Per-run state of a minibatch run, every leaf with leading axes (L, S).

    best_params is None without a validation set; scores are "lower is better" (an accuracy is
    kept negated)."""

    train: TrainState
    perm_key: Array  # the seed's key of the epochs' permutations
    best_params: Any
    best_score: Array
    best_epoch: Array  # int32; −1 before any evaluation
    waited: Array  # int32: evaluations since the best
    stopped_at: Array  # int32: the epoch after which patience ran out, −1 while running

    @property
    def params(self):
        """The current parameters."""
        return self.train.params

    @property
    def diverged_at(self):
        """The step at which the loss became non-finite, −1 where it did not."""
        return self.train.diverged_at


class _Split(NamedTuple):
    steps_per_epoch: int
    validation: list  # per (model, task) pair: (x_val, y_val), or (None, None)


def _minibatch_split(minibatch, pairs, loss, steps, eval_at, probe):
    """(pairs, split, steps): without `minibatch` the arguments as given (steps required); with
    it, the pairs with their tasks cut to the rows trained on, their validation sets and the
    number of steps, the settings checked against the tasks before anything compiles."""
    if minibatch is None:
        if steps is None:
            raise TypeError("steps is required (an int ≥ 1), or minibatch=Minibatch(...)")
        return pairs, None, steps
    if not isinstance(minibatch, Minibatch):
        raise TypeError(f"minibatch must be a jaxntk.Minibatch, got {type(minibatch).__name__}")
    for name, value, why in (
        ("steps", steps, "a minibatch run is counted in epochs (Minibatch.epochs)"),
        ("eval_at", eval_at, "a minibatch run evaluates after every epoch"),
    ):
        if value is not None:
            raise ValueError(f"{name}: {why}; leave {name} unset, got {value!r}")
    if probe:
        raise ValueError(f"probe: minibatch runs record no laziness probe; got probe={probe}")
    if minibatch.monitor == "accuracy" and loss != "cross_entropy":
        raise ValueError("monitor='accuracy' needs loss='cross_entropy'")
    n = pairs[0][1].x_train.shape[0]
    steps_per_epoch = minibatch.check(n)[1]
    fit_rows, val_rows = minibatch.split(n)
    out, val = [], []
    for m_s, t_s in pairs:
        if minibatch.explicit_validation:
            val.append(_explicit_validation(minibatch, m_s, t_s, loss))
        elif val_rows.size:
            val.append((t_s.x_train[val_rows], t_s.y_train[val_rows]))
            t_s = dataclasses.replace(
                t_s,
                x_train=t_s.x_train[fit_rows],
                y_train=t_s.y_train[fit_rows],
                parts_train=t_s.parts_train[:, fit_rows],
            )
        else:
            val.append((None, None))
        out.append((m_s, t_s))
    return out, _Split(steps_per_epoch, val), minibatch.epochs * steps_per_epoch


def _explicit_validation(minibatch, model, task, loss) -> tuple[Array, Array]:
    """(x_val, y_val) given by the user, checked like the task's arrays."""
    x_val, y_val = (jnp.asarray(a) for a in minibatch.validation)
    if x_val.shape[1:] != task.x_train.shape[1:] or x_val.dtype != task.x_train.dtype:
        raise ValueError(
            f"validation: x_val must be shaped and typed like x_train's rows, "
            f"{task.x_train.shape[1:]} {task.x_train.dtype}, got {x_val.shape[1:]} {x_val.dtype}"
        )
    out = tuple(jax.eval_shape(lambda x: model.initial_output(model.prepare(x)), x_val).shape)
    check_targets(loss, y_val, out, "validation's y_val", "validation's x_val")
    return x_val, y_val


_right_vectors = jax.jit(right_vectors)


def _batch_data(pairs, data: Data, split: _Split, per_seed: bool, with_v: bool) -> BatchData:
    """The `BatchData` of the run: its `Data`, validation sets and (with good directions, where
    `with_v`: R_pop trained or logged) V_k, stacked along the seeds when each has its own task."""
    items = []
    for i, ((m_s, t_s), (x_val, y_val)) in enumerate(zip(pairs, split.validation, strict=True)):
        dirs = data.dirs
        if per_seed and dirs is not None:
            dirs = jax.tree_util.tree_map(lambda a, i=i: a[i], dirs)
        v_k = None if dirs is None or not with_v else _right_vectors(m_s, t_s.x_train, dirs)
        items.append((x_val, y_val, v_k))
    if per_seed:
        stacked = [
            None if parts[0] is None else jax.tree_util.tree_map(lambda *a: jnp.stack(a), *parts)
            for parts in zip(*items, strict=True)
        ]
        return BatchData(data, *stacked)
    return BatchData(data, *items[0])


def _fit_minibatch(
    objective: BatchObjective,
    data: BatchData,
    minibatch: Minibatch,
    steps_per_epoch: int,
    *,
    hyper: dict[str, Any],
    seeds: Sequence[int],
    lr: float,
    optimizer: str | optax.GradientTransformation,
    evals_per_chunk: int,
    progress: bool | Callable[[dict], None],
    checkpoint: str | Path | None,
    resume: bool,
    label: str,
    config: dict[str, Any],
    layout: sharding.Layout | None,
    batching: str,
    per_seed: bool,
) -> Run:
    """`fit` for a minibatch run: `evals_per_chunk` epochs per compiled chunk, each a scan over
    its batches then the evaluation and the early-stopping bookkeeping (one device: `train`
    refuses a layout)."""
    del layout
    mode = _batching_mode(batching)
    steps = minibatch.epochs * steps_per_epoch
    seeds, opt, _ = _check_fit(
        data, seeds, steps, lr, optimizer, 1, evals_per_chunk, None, 2, None, per_seed
    )
    hyper_arrays, n_lambda, dtype = _settings(hyper, data)
    config = dict(config)
    config.update(seeds=list(seeds), evals_per_chunk=evals_per_chunk)
    train_state = _init_state(
        objective,
        opt,
        data,
        jnp.asarray(seeds),
        n_lambda,
        jnp.asarray(lr, dtype),
        isinstance(optimizer, str),
        per_seed,
    )
    state = _batch_state(train_state, seeds, dtype, data.x_val is not None)
    program = {
        "objective": objective,
        "batching": mode,
        "per_seed": per_seed,
        "monitor": minibatch.monitor,
        "patience": minibatch.patience,
    }

    def first(state):
        state, metrics = _evaluate_first(state, data, hyper_arrays, **program)
        metrics = _to_host(metrics)
        metrics["epoch"] = np.zeros(1, dtype=np.int64)
        return state, metrics

    ckpt = Path(checkpoint) if checkpoint is not None else None
    state, step, history = _resume_or_evaluate(state, ckpt, config, resume, first)

    def run_chunk(state, step):
        epoch = step // steps_per_epoch
        state, metrics, trace = _run_epochs(
            state,
            jnp.asarray(epoch, jnp.int32),
            jnp.asarray(minibatch.epochs, jnp.int32),
            data,
            hyper_arrays,
            optimizer=opt,
            n_epochs=evals_per_chunk,
            steps_per_epoch=steps_per_epoch,
            batch_size=minibatch.batch_size,
            **program,
        )
        done = min(evals_per_chunk, minibatch.epochs - epoch)
        chunk = {k: v[:, :, :done] for k, v in _to_host(metrics).items()}
        chunk["epoch"] = np.arange(epoch + 1, epoch + done + 1, dtype=np.int64)
        chunk["step"] = chunk["epoch"] * steps_per_epoch
        return state, chunk, int(chunk["step"][-1]), trace

    report = _reporter(progress, label, steps, steps_per_epoch)
    state = _chunk_loop(
        state, step, steps, history, run_chunk, report, label, seeds, ckpt, steps_per_epoch
    )
    return _assemble_batch_run(history, state, config, steps_per_epoch)


def _batch_state(train: TrainState, seeds: list[int], dtype, validation: bool) -> BatchState:
    """The initial `BatchState` around `train`: each seed's permutation key, no best yet."""
    n_lambda, n_seeds = train.diverged_at.shape
    keys = jnp.stack([permutation_key(s) for s in seeds])
    shape = (n_lambda, n_seeds)
    return BatchState(
        train,
        jnp.broadcast_to(keys, (n_lambda, *keys.shape)),
        jax.tree_util.tree_map(jnp.copy, train.params) if validation else None,
        jnp.full(shape, jnp.inf, dtype),
        jnp.full(shape, -1, jnp.int32),
        jnp.zeros(shape, jnp.int32),
        jnp.full(shape, -1, jnp.int32),
    )


def _track_best(bs: BatchState, metrics, epoch, active, monitor: str, patience: int | None):
    """One setting's early-stopping bookkeeping after the evaluation of `epoch`: the best
    validation score and its parameters kept, the evaluations since counted, and the setting
    stopped once they reach `patience`."""
    if bs.best_params is None:
        return bs
    score = metrics[f"val_{monitor}"]
    score = -score if monitor == "accuracy" else score
    running = active & (bs.stopped_at < 0) & (bs.train.diverged_at < 0)
    better = running & (score < bs.best_score)  # False for a NaN score

    def keep(new, old):
        return jnp.where(better, new, old)

    waited = jnp.where(better, 0, bs.waited + running.astype(jnp.int32))
    stopped = bs.stopped_at
    if patience is not None:
        stopped = jnp.where(running & (waited >= patience), epoch, stopped)
    return bs._replace(
        best_params=jax.tree_util.tree_map(keep, bs.train.params, bs.best_params),
        best_score=keep(score.astype(bs.best_score.dtype), bs.best_score),
        best_epoch=keep(jnp.asarray(epoch, jnp.int32), bs.best_epoch),
        waited=waited,
        stopped_at=stopped,
    )


@functools.partial(
    jax.jit, static_argnames=("objective", "batching", "per_seed", "monitor", "patience")
)
def _evaluate_first(state, data, hyper, *, objective, batching, per_seed, monitor, patience):
    """The evaluation at epoch 0 of every setting, and the best so far set to it."""

    def one(bs, h, d):
        metrics = objective.evaluate(bs.train.params, d, h)
        return _track_best(bs, metrics, 0, jnp.asarray(True), monitor, patience), metrics

    state, metrics = _for_each_setting(one, batching, data, per_seed)(state, hyper)
    return state, jax.tree_util.tree_map(lambda x: x[:, :, None], metrics)


@functools.partial(
    jax.jit,
    static_argnames=(
        "objective",
        "optimizer",
        "n_epochs",
        "steps_per_epoch",
        "batch_size",
        "batching",
        "per_seed",
        "monitor",
        "patience",
    ),
)
def _run_epochs(
    state,
    epoch,
    total,
    data,
    hyper,
    *,
    objective,
    optimizer,
    n_epochs,
    steps_per_epoch,
    batch_size,
    batching,
    per_seed,
    monitor,
    patience,
):
    """`n_epochs` epochs of every setting from epoch `epoch` (those at or past `total` skipped):
    each a fresh permutation, a scan over its batches, the evaluation and the early-stopping
    bookkeeping. Returns (state, metrics (L, S, n_epochs, ...), trace (L, S, steps, ...))."""
    one_step = _step_fn(objective, optimizer)

    def one_epoch(bs, hyp, d, e):
        active = e < total
        n_fit = jax.tree_util.tree_leaves(d.data.x_train)[0].shape[0]
        perm = jax.random.permutation(jax.random.fold_in(bs.perm_key, e), n_fit)

        def batch(s, j):
            rows = jax.lax.dynamic_slice_in_dim(perm, j * batch_size, batch_size)
            return one_step(s, hyp, (e * steps_per_epoch + j).astype(jnp.int32), d, rows)

        def run(s):
            return jax.lax.scan(batch, s, jnp.arange(steps_per_epoch, dtype=jnp.int32))

        def skip(s):
            shapes = jax.eval_shape(run, s)[1]
            return s, jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

        train, trace = jax.lax.cond(active & (bs.stopped_at < 0), run, skip, bs.train)
        evaluate = functools.partial(objective.evaluate, data=d, hyper=hyp)
        metrics = jax.lax.cond(
            active,
            evaluate,
            lambda p: jax.tree_util.tree_map(jnp.zeros_like, evaluate(p)),
            train.params,
        )
        bs = _track_best(bs._replace(train=train), metrics, e + 1, active, monitor, patience)
        return bs, (metrics, trace)

    def one(bs, hyp, d):
        bs, (metrics, trace) = jax.lax.scan(
            lambda b, i: one_epoch(b, hyp, d, epoch + i), bs, jnp.arange(n_epochs, dtype=jnp.int32)
        )
        trace = jax.tree_util.tree_map(
            lambda a: a.reshape(n_epochs * steps_per_epoch, *a.shape[2:]), trace
        )
        return bs, metrics, trace

    return _for_each_setting(one, batching, data, per_seed)(state, hyper)


def _assemble_batch_run(history, state: BatchState, config, steps_per_epoch: int) -> Run:
    """The `Run` of a minibatch run: `_assemble_run`'s, the metrics and trace after a setting
    stopped early masked like those after a divergence, the best validation epoch's
    parameters and the epochs."""
    run = _assemble_run(history, state, config, None)
    stopped = np.asarray(state.stopped_at)
    after = np.where(stopped >= 0, stopped * steps_per_epoch, -1)
    _mask_after_divergence(run.history, after)
    _mask_after_divergence(run.trace, after - 1)  # the trace's step t is U_t, before update t+1
    run.stopped_at_epoch = stopped
    config["stopped_at_epoch"] = stopped.tolist()
    if state.best_params is not None:
        run.params = jax.device_get(state.best_params)
        run.best_epoch = np.asarray(state.best_epoch)
        config["best_epoch"] = run.best_epoch.tolist()
    return run
