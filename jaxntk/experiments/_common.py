"""What the experiments share: progress lines, summaries over seeds, writing results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np

from jaxntk import network, targets, training


def labelled_progress(progress: bool | Callable[[dict], None], label: str, what: str = "test"):
    """The trainer's `progress` argument: a callable passes through, False stays silent, True
    prints one indented line per chunk, tagged with `label`."""
    if callable(progress) or not progress:
        return progress

    def show(info: dict) -> None:
        print(
            f"  [{label}] step {info['step']}/{info['steps']}  {what} {info['test_loss']:.4f}"
            f"  ({info['elapsed_s']:.0f} s)",
            flush=True,
        )

    return show


def train_seed(
    model,
    task: targets.Task,
    variant: str,
    config,
    seed: int,
    progress: bool | Callable[[dict], None],
    label: str,
    **kwargs,
) -> training.Run:
    """One seed's `jaxntk.training.train` run with the experiment config's `steps` and `lr`,
    and its progress lines tagged with `label`; `kwargs` go to `train` (reg, eval_every, ...)."""
    return training.train(
        model,
        task,
        variant,
        steps=config.steps,
        lr=config.lr,
        seeds=[seed],
        progress=labelled_progress(progress, label),
        **kwargs,
    )


def each_variant(model, task, config, seed: int, progress, where: str, regularized=None):
    """(variant, run, seconds) for each of `config.variants` trained by `train_seed` on (model,
    task), evaluated every `config.eval_every` steps: "regularized" with the `Regularizer`
    `regularized`, the others with none. Progress lines read "<variant> <where>"."""
    for variant in config.variants:
        t0 = time.perf_counter()
        run = train_seed(
            model,
            task,
            variant,
            config,
            seed,
            progress,
            f"{variant} {where}",
            reg=regularized if variant == "regularized" else None,
            eval_every=config.eval_every,
        )
        yield variant, run, time.perf_counter() - t0


def mean_std_by(
    rows: list[dict], group: str, fields: Iterable[str]
) -> dict[object, dict[str, float]]:
    """For each value of rows[i][group] (in first-seen order): mean and std of each field."""
    out = {}
    for value in dict.fromkeys(r[group] for r in rows):
        sel = [r for r in rows if r[group] == value]
        entry = {}
        for key in fields:
            vals = np.array([r[key] for r in sel], dtype=float)
            entry[f"{key}_mean"] = float(vals.mean())
            entry[f"{key}_std"] = float(vals.std())
        out[value] = entry
    return out


def write_results(out: Path, name: str, doc: dict, curves: dict[str, np.ndarray]) -> None:
    """`out/name.json` (the document) and `out/name.npz` (the curves): plain data, no pickle."""
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    np.savez(out / f"{name}.npz", **curves)


def paper_setup(
    seed: int, *, d: int, n: int, n_test: int, m: int, distribution: str, activation: str
) -> tuple[targets.Task, network.TwoLayer]:
    """The paper's task and a symmetric two-layer network, both drawn from one seed (its key split
    into the task's and the network's), as every seed of the paper's experiments."""
    k_task, k_net = jax.random.split(jax.random.PRNGKey(seed))
    task = targets.paper_task(k_task, d=d, n=n, n_test=n_test, distribution=distribution)
    return task, network.init(k_net, d=d, m=m, activation=activation)


def config_setup(
    config, seed: int, d: int, n: int, m: int | None = None
) -> tuple[targets.Task, network.TwoLayer]:
    """`paper_setup` at dimension d, n training points and width m (default `config.m`), with
    n_test, the input law and the activation read from an experiment's `config`."""
    return paper_setup(
        seed,
        d=d,
        n=n,
        n_test=config.n_test,
        m=config.m if m is None else m,
        distribution=config.distribution,
        activation=config.activation,
    )
