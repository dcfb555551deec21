"""Measurements for tests/test_sharding.py on 8 emulated host devices; prints one JSON document.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (JAX reads it once,
at start-up, and the main test process keeps its single device). Same strict settings as
tests/conftest.py, warnings as errors.
"""

import json
import re
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jaxntk as jn
from jaxntk import objectives, sharding, training

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
warnings.simplefilter("error")
warnings.filterwarnings("ignore", category=DeprecationWarning)

# m = 8 · 13: a dimension divisible by 13 can only be neuron-indexed, whatever else is flattened
D, N, N_TEST, M, DEVICES = 6, 32, 48, 104, 8
RUN = dict(steps=20, eval_every=10, evals_per_chunk=1, seeds=[0, 1], lr=0.5, progress=False)
REG = jn.Regularizer(bulk=[0.0, 1.0], pop=0.1, norm24=0.01, pop_samples=16)
COLLECTIVE = re.compile(
    r"= (\S+|\([^)]*\)) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(?:-start)?\("
)


def main() -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=N_TEST)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M)
    chunks = _record_chunks()
    out = {"m": M, "d": D, "devices": DEVICES, "runs": {}, "hlo": {}}
    samples_mesh = sharding.device_mesh(DEVICES, samples=2)
    for variant in objectives.VARIANTS:
        kw = dict(RUN, reg=REG) if variant == "regularized" else RUN
        single = jn.train(net, task, variant, devices=1, **kw)
        meshes = {"neurons": DEVICES}
        if variant == "regularized":
            meshes["samples"] = samples_mesh
        for name, devices in meshes.items():
            chunks.clear()
            run = jn.train(net, task, variant, devices=devices, **kw)
            out["runs"][f"{variant}/{name}"] = {
                "single": _losses(single),
                "sharded": _losses(run),
                "params_match": bool(np.allclose(run.params, single.params, rtol=1e-4, atol=1e-6)),
            }
            if variant in ("full", "randomized", "regularized"):
                args, kwargs = chunks[0]
                text = training._run_chunk.lower(*args, **kwargs).compile().as_text()
                out["hlo"][f"{variant}/{name}"] = _collectives(text)
        if variant == "ntk":
            out["runs"]["ntk/resumed on 4"] = _resumed(net, task, single)
    out["init_output"] = _init_output(net, task.x_test, samples_mesh)
    out["bytes"] = _bytes_per_device(net, task, chunks[-1][0])
    out["errors"] = _errors(task)
    json.dump(out, sys.stdout)


def _record_chunks() -> list:
    """Patch the trainer's compiled chunk to remember its arguments (to lower it again)."""
    calls = []
    chunk = training._run_chunk

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return chunk(*args, **kwargs)

    recording.lower = chunk.lower
    training._run_chunk = recording
    return calls


def _losses(run) -> dict:
    return {k: run.history[k].tolist() for k in ("train_loss", "test_loss")}


def _resumed(net, task, single) -> dict:
    """ntk stopped after its first chunk on 8 devices, resumed from the checkpoint on 4."""
    reports = []

    def stop_at_second_report(info):
        reports.append(info["step"])
        if len(reports) == 2:  # the first chunk's checkpoint is written, the second's is not
            raise KeyboardInterrupt

    with tempfile.TemporaryDirectory() as folder:
        try:
            jn.train(
                net,
                task,
                "ntk",
                devices=8,
                checkpoint=folder,
                **{**RUN, "progress": stop_at_second_report},
            )
        except KeyboardInterrupt:
            pass
        run = jn.train(net, task, "ntk", devices=4, checkpoint=folder, resume=True, **RUN)
    assert reports == [10, 20], reports
    return {
        "single": _losses(single),
        "sharded": _losses(run),
        "params_match": bool(np.allclose(run.params, single.params, rtol=1e-4, atol=1e-6)),
    }


def _collectives(text: str) -> list[dict]:
    """Every collective of the compiled per-device program: its kind and result shapes."""
    found = []
    for shapes, kind in COLLECTIVE.findall(text):
        dims = [[int(x) for x in s.split(",") if x] for s in re.findall(r"\[([\d,]*)\]", shapes)]
        found.append({"kind": kind, "shapes": dims})
    return found


def _init_output(net, x, samples_mesh) -> dict:
    """max |f(x; W0)| of the jitted network on W0 split over the neurons / over both axes."""
    apply = jax.jit(jn.TwoLayer.apply)
    result = {}
    for name, devices in (("neurons", DEVICES), ("samples", samples_mesh)):
        lay = sharding.layout(net, devices)
        placed = lay.model(net)
        xs = jax.device_put(x, jax.sharding.NamedSharding(lay.mesh, jax.sharding.PartitionSpec()))
        result[name] = float(jnp.max(jnp.abs(apply(placed, placed.w0, xs))))
    return result


def _bytes_per_device(net, task, chunk_args) -> dict:
    """Bytes per device of the m-dependent arrays (W0, a, σ'/σ'' columns, U and the optimizer
    state) and of the rest of the data, each placed on 1, 2, 4 and 8 devices."""
    state, _, _, data = chunk_args[:4]
    prep = net.prepare(task.x_train)
    leaves = jax.tree_util.tree_leaves
    sizes = {}
    for count in (1, 2, 4, 8):
        lay = sharding.Layout(sharding.device_mesh(count), M)
        placed = lay.data(data)
        placed_prep = lay.prepared(prep)
        trees = {
            "model": placed.model,
            "prepared": [placed_prep.d1, placed_prep.d2],
            "state": [x for x in leaves(lay.state(state)) if x.shape[2:] == (M, D)],
            "other": [placed.x_train, placed.y_train, placed.x_test, placed.parts_test],
        }
        sizes[count] = {
            name: {
                "per_device": sorted(sharding.bytes_per_device(tree).values()),
                "total": sum(x.nbytes for x in jax.tree_util.tree_leaves(tree)),
            }
            for name, tree in trees.items()
        }
    return sizes


def _errors(task) -> dict:
    """The ValueError message of each bad device request, or None when it did not raise."""
    cases = {
        "m not divisible": lambda: sharding.layout(jn.TwoLayer.init(_key(), d=D, m=100), 8),
        "odd shards": lambda: sharding.layout(jn.TwoLayer.init(_key(), d=D, m=96), 3),
        "too many": lambda: sharding.layout(jn.TwoLayer.init(_key(), d=D, m=M), 9),
        "zero": lambda: sharding.layout(jn.TwoLayer.init(_key(), d=D, m=M), 0),
        "samples": lambda: sharding.device_mesh(8, samples=3),
        "n_test": lambda: jn.train(
            jn.TwoLayer.init(_key(), d=D, m=M),
            jn.paper_task(_key(), d=D, n=N, n_test=N_TEST + 1),
            "ntk",
            steps=1,
            progress=False,
            devices=sharding.device_mesh(8, samples=2),
        ),
        "train": lambda: jn.train(
            jn.TwoLayer.init(_key(), d=D, m=100), task, "ntk", steps=1, progress=False, devices=8
        ),
        "generic model": lambda: jn.train(
            jn.TaylorModel(jn.TwoLayer.init(_key(), d=D, m=M).apply_fn, jnp.zeros((M, D))),
            task,
            "ntk",
            steps=1,
            progress=False,
            devices=sharding.device_mesh(2),
        ),
    }
    messages = {}
    for name, case in cases.items():
        try:
            case()
        except ValueError as err:
            messages[name] = str(err)
        else:
            messages[name] = None
    return messages


def _key():
    return jax.random.PRNGKey(3)


if __name__ == "__main__":
    main()
