"""Experiment `mlp`: the authors' second experiment (docs/science.md §7), a standard network
trained in full.

A two-layer ReLU MLP with biases (flax linen, PyTorch-style init: weights and biases uniform in
±1/√fan_in), trained by plain GD on f*(x) = xᵀAx/√675 + He_3(β·x)/√6 with A = diag(1{i > d/2})
(`jaxntk.targets.mlp_target`). For each d, n runs up the grid n = k·d² and n*(d) is the first n
whose final test loss is below `threshold`; the figure sets n* against d beside n = 6d² and n = d³.
The network trains through `jaxntk.TaylorModel` with the "full" variant: f(params0 + U; x).

Writes `mlp.json` and `mlp.png`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import targets
from jaxntk.experiments._common import train_seed, write_results
from jaxntk.taylor import TaylorModel

NAME = "mlp"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the MLP experiment (defaults: the `cpu` preset).

    Attributes:
        ds: the input dimensions d.
        multipliers: the training-set sizes n = c · d² for c in these multipliers.
        width: hidden units of the ReLU network.
        n_test: test points.
        steps: optimizer steps T of plain GD on the full network.
        lr: learning rate.
        threshold: n* is the smallest n whose final test loss is below this value.
        eval_every: steps between evaluations.
        seeds: one run per seed.
    """

    ds: tuple[int, ...] = (6, 8, 10)
    multipliers: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 20)
    width: int = 100
    n_test: int = 2000
    steps: int = 5000
    lr: float = 0.05
    threshold: float = 0.1
    eval_every: int = 500
    seeds: tuple[int, ...] = (1,)


PRESETS = {
    "cpu": Config(),
    "paper": Config(ds=(10, 20, 30, 40, 50, 100), n_test=10_000, steps=30_000),
}
"""cpu: small d and 5000 steps; paper: the authors' d ∈ {10, …, 100} and 30 000 steps."""


class MLP(nn.Module):
    """x ↦ v·relu(W x + b) + c, with PyTorch's default initialization.

    Attributes:
        width: hidden units.
    """

    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        h = nn.relu(nn.Dense(self.width, kernel_init=_uniform(d), bias_init=_uniform(d))(x))
        out = nn.Dense(1, kernel_init=_uniform(self.width), bias_init=_uniform(self.width))(h)
        return out[..., 0]


def run(config: Config, out: Path, progress: bool | Callable[[dict], None] = True) -> dict:
    """Find n*(d) for every d and seed; write JSON, NPZ and PNG into `out`.

    Args:
        config: the settings (`PRESETS["cpu"]` or `PRESETS["paper"]`, or your own).
        out: the folder to write mlp.json, .npz and .png into (created if missing).
        progress: print a line per training chunk (True), stay silent (False), or call this with
            each progress dict.

    Returns:
        The document written to `out/mlp.json`: config, one row per run, n* per d and the
        fitted slope of log n* against log d.

    Raises:
        ValueError: if the threshold is not positive.
    """
    if not config.threshold > 0:
        raise ValueError(f"threshold must be > 0, got {config.threshold}")
    out.mkdir(parents=True, exist_ok=True)
    module = MLP(config.width)
    rows, n_star = [], {}
    for d in config.ds:
        for seed in config.seeds:
            key = jax.random.PRNGKey(seed)
            k_target, k_data, k_init = jax.random.split(key, 3)
            target = targets.mlp_target(k_target, d)
            params0 = module.init(k_init, jnp.zeros((1, d)))
            model = TaylorModel(module.apply, params0)
            n_star.setdefault(str(d), {})[str(seed)] = None
            for k in sorted(config.multipliers):
                n = k * d * d
                task = targets.make_task(k_data, target, n=n, n_test=config.n_test)
                t0 = time.perf_counter()
                r = train_seed(
                    model,
                    task,
                    "full",
                    config,
                    seed,
                    progress,
                    f"mlp d={d} n={n} seed {seed}",
                    eval_every=config.eval_every,
                    devices=1,
                )
                test = float(r.final["test_loss"][0, 0])
                rows.append(
                    {
                        "d": d,
                        "n": n,
                        "seed": seed,
                        "test_loss": test,
                        "train_loss": float(r.final["train_loss"][0, 0]),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                if math.isfinite(test) and test < config.threshold:
                    n_star[str(d)][str(seed)] = n
                    break
    found = [
        (int(d), np.mean(list(v.values())))
        for d, v in n_star.items()
        if all(x is not None for x in v.values())
    ]
    slope = (
        float(np.polyfit(np.log([d for d, _ in found]), np.log([n for _, n in found]), 1)[0])
        if len(found) >= 2
        else None
    )
    doc = {
        "experiment": NAME,
        "config": dataclasses.asdict(config),
        "results": rows,
        "n_star": n_star,
        "slope": slope,
    }
    write_results(
        out,
        NAME,
        doc,
        {"d": np.array([d for d, _ in found]), "n_star": np.array([n for _, n in found])},
    )
    from jaxntk import plots

    plots.mlp_figure(out / f"{NAME}.json", out / f"{NAME}.png")
    return doc


def _uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
