"""Training on a device mesh: the sharded run equals the single-device run for every variant (and
a run checkpointed on 8 devices resumes on 4), the compiled step communicates only sums over
neurons, memory per device falls as 1/devices, and bad device requests raise.

The multi-device checks run tests/sharding_worker.py once, in a subprocess with 8 emulated host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts, and this
process keeps its single device). --xla_backend_optimization_level=0 halves its compile time; the
sharded and the single-device runs it compares are compiled alike.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import cli, objectives, sharding

WORKER = Path(__file__).with_name("sharding_worker.py")
XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
RUNS = [f"{v}/neurons" for v in objectives.VARIANTS] + ["regularized/samples", "ntk/resumed on 4"]
COMPILED = ["full/neurons", "randomized/neurons", "regularized/neurons", "regularized/samples"]


@pytest.fixture(scope="module")
def measured():
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"{WORKER.name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.slow
def test_sharded_run_matches_the_single_device_run(measured, name):
    run = measured["runs"][name]
    for key in ("train_loss", "test_loss"):
        single, sharded = np.asarray(run["single"][key]), np.asarray(run["sharded"][key])
        assert single.shape == sharded.shape and np.all(np.isfinite(single))
        np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=0, err_msg=f"{name} {key}")
    assert run["params_match"]


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.slow
def test_compiled_chunk_only_all_reduces_and_never_gathers_u(measured, name):
    collectives = measured["hlo"][name]
    assert collectives, "a sharded program must reduce over devices"
    assert {c["kind"] for c in collectives} == {"all-reduce"}
    # m = 8 · 13, so a dimension divisible by 13 is a block of neurons
    per_shard = measured["m"] // 8 if name.endswith("neurons") else measured["m"] // 4
    neuron_blocks = [s for c in collectives for s in c["shapes"] if any(x % 13 == 0 for x in s)]
    if name.endswith("neurons"):
        assert neuron_blocks == [], "only sums over neurons may cross devices"
    else:
        # the samples axis adds the data-parallel sum of each device's gradient block (L, S, m/4, d)
        assert neuron_blocks and all(s[-2:] == [per_shard, measured["d"]] for s in neuron_blocks)


@pytest.mark.slow
def test_symmetric_init_is_exactly_zero_when_sharded(measured):
    assert measured["init_output"] == {"neurons": 0.0, "samples": 0.0}


def test_memory_per_device_falls_as_one_over_devices(measured):
    for count, sizes in measured["bytes"].items():
        count = int(count)
        for name in ("model", "prepared", "state"):
            total = sizes[name]["total"]
            assert sizes[name]["per_device"] == [total // count] * count, (name, count)
        other = sizes["other"]
        assert other["per_device"] == [other["total"]] * count  # replicated on the neurons axis


@pytest.mark.parametrize(
    "case, words",
    [
        ("m not divisible", ["devices", "m = 100", "8 equal neuron shards"]),
        ("odd shards", ["devices", "3 neuron shards is odd"]),
        ("too many", ["devices = 9", "8 device(s) are available"]),
        ("zero", ["devices = 0"]),
        ("samples", ["samples = 3", "(8)"]),
        ("n_test", ["devices", "x_test", "49", "2 sample shards"]),
        ("train", ["devices", "m = 100"]),
        ("generic model", ["devices", "TaylorModel", "2 neuron shards"]),
    ],
)
@pytest.mark.slow
def test_bad_device_requests_raise_a_value_error_naming_the_argument(measured, case, words):
    message = measured["errors"][case]
    assert message is not None, f"{case}: no ValueError"
    for w in words:
        assert w in message, (case, message)


# ---------------------------------------------------------------- in this process: one device


def test_one_device_is_the_unsharded_path():
    net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=3, m=10)
    assert jax.device_count() == 1
    assert sharding.layout(net, None) is None
    assert sharding.layout(net, 1) is None
    assert sharding.layout(net, jax.devices()) is None
    mesh = sharding.device_mesh()
    assert mesh.axis_names == (sharding.SAMPLES, sharding.NEURONS) and mesh.size == 1


@pytest.mark.parametrize("devices", [2, 0, True, "2", [], [0]])
def test_train_refuses_devices_it_cannot_use(devices):
    task = jn.paper_task(jax.random.PRNGKey(0), d=3, n=8, n_test=8)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=3, m=8)
    with pytest.raises(ValueError, match="devices"):
        jn.train(net, task, "ntk", steps=1, progress=False, devices=devices)


def test_cli_names_the_bad_device_count(tmp_path, capsys):
    argv = ["train", "--variant", "ntk", "--d", "3", "--n", "8", "--m", "8", "--steps", "1"]
    code = cli.main([*argv, "--n-test", "8", "--out", str(tmp_path), "--devices", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "devices = 2" in err and len(err.strip().splitlines()) == 1
