"""Training on several devices: the neurons, and optionally the samples, split over a device mesh.

The network is a sum over neurons, so a block of neurons per device leaves every per-neuron
quantity local:

    f(x; W0 + U) = Σ_j Σ_{r ∈ block j} a_r σ((w0_r + u_r) · x)         (j over the neuron shards)
    f_L, f_Q:     Σ_j Σ_{r ∈ block j} a_r σ'(w0_r · x)(u_r · x) [, ½ a_r σ''(w0_r · x)(u_r · x)²]
    ∇_{u_r} L = a_r Σ_i ∂L/∂f_i σ'(w0_r · x_i) x_i (+ the f_Q and regularizer terms)   on r's device

Device j holds rows of W0 and U (and the optimizer's moments) in its block, those entries of a, and
those columns of the cached σ'(X W0ᵀ), σ''(X W0ᵀ). The sum over neurons, one all-reduce of an (n,)
vector per prediction, is the only communication: the gradient rows, R_24's row norms and the
good-direction projector's Jᵀ products (`jaxntk.spectral.project_top`) are per-neuron, and no device
ever holds the m×d matrix U. XLA's SPMD partitioner derives all of this from the placement of the
inputs (`jax.device_put` with a `NamedSharding`); the trainer's compiled loop is the same program.

A second mesh axis, "samples", splits the training and test points as well (data parallelism):
then sums over points (the losses, the gradient Σ_i, U_kᵀ f) add one all-reduce each over that axis.

The symmetric initialization pairs neuron r with r + m/2 (`jaxntk.network`): f(x; W0) = 0 exactly
because the two half-sums are computed alike and cancel. With m/D contiguous neurons per device the
halves split the devices in two groups; each half-sum is reduced within its group the same way, so
they still cancel exactly, provided no shard straddles the halves: the number of neuron shards D
must divide m and be even (or 1).

A generic model (`jaxntk.TaylorModel`) need not be a sum over neurons: it trains data parallel,
its samples split over every device and its parameters replicated (a `Layout` with m = None).

Several processes (`initialize`, on `jax.distributed`) change nothing above: the mesh spans the
devices of every process, each process places the shards it holds, and results are gathered.

Example (on one device here; with N devices `devices=N` or `device_mesh(N, samples=s)` splits
the run, and the result is the same):
    >>> import jax
    >>> import jaxntk as jn
    >>> mesh = jn.sharding.device_mesh(1)       # (samples, neurons) = (1, every device)
    >>> dict(mesh.shape)
    {'samples': 1, 'neurons': 1}
    >>> key = jax.random.PRNGKey(0)
    >>> task = jn.paper_task(key, d=6, n=16, n_test=32)
    >>> net = jn.TwoLayer.init(key, d=6, m=16)
    >>> run = jn.train(net, task, "ntk", steps=10, eval_every=10, devices=mesh, progress=False)
    >>> run.history["test_loss"].shape
    (1, 1, 2)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxntk.network import Prepared, TwoLayer
from jaxntk.spectral import GoodDirections

Array = jax.Array

__all__ = [
    "NEURONS",
    "PREPARED_SPECS",
    "SAMPLES",
    "SAMPLE_AXES",
    "Layout",
    "bytes_per_device",
    "device_mesh",
    "initialize",
    "layout",
]

NEURONS = "neurons"
SAMPLES = "samples"

Devices = int | Sequence[jax.Device] | Mesh | None

#: Where each field of `jaxntk.network.Prepared` lives (f0 = f(X; W0), one value per input).
PREPARED_SPECS = {
    "x": P(SAMPLES, None),
    "d1": P(SAMPLES, NEURONS),
    "d2": P(SAMPLES, NEURONS),
    "f0": P(SAMPLES),
}

#: The sample axis of each per-sample array of `jaxntk.objectives.Data`.
SAMPLE_AXES = {
    "x_train": 0,
    "x_test": 0,
    "x_pop": 0,
    "y_train": 0,
    "y_test": 0,
    "parts_test": 1,
}


def device_mesh(devices: int | Sequence[jax.Device] | None = None, *, samples: int = 1) -> Mesh:
    """A (samples, neurons) mesh over `devices`: samples × (len(devices) / samples) devices.

    Args:
        devices: None (every device of the default backend, `jax.devices()`, all hosts), a count N
            (the first N of them) or a sequence of devices.
        samples: shards of the training and test points; the remaining factor shards the neurons.

    Returns:
        A `jax.sharding.Mesh` with axes ("samples", "neurons") of shape
        (samples, len(devices) / samples).

    Raises:
        ValueError: if the count exceeds the available devices, a device is listed twice, or
            `samples` does not divide the number of devices.
    """
    available = jax.devices()
    if devices is None:
        devs = available
    elif isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices = {devices}, but {len(available)} device(s) are available "
                f"({available[0].platform}); pass a count between 1 and {len(available)}"
            )
        devs = available[: int(devices)]
    elif (
        isinstance(devices, Sequence)
        and devices
        and all(isinstance(x, jax.Device) for x in devices)
    ):
        devs = list(devices)
        if len(set(devs)) != len(devs):
            raise ValueError(f"devices lists a device twice: {devs}")
    else:
        raise ValueError(
            "devices must be None (all available), an int count, a non-empty sequence of "
            f"jax.Device or a jax.sharding.Mesh, got {devices!r}"
        )
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int ≥ 1, got {samples!r}")
    if len(devs) % samples:
        raise ValueError(f"samples = {samples} does not divide the number of devices ({len(devs)})")
    grid = np.asarray(devs, dtype=object).reshape(samples, len(devs) // samples)
    return Mesh(grid, (SAMPLES, NEURONS))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each array of a two-layer training run lives on a (samples, neurons) mesh.

    Neuron-indexed axes (the m rows of W0, U and the optimizer's moments, the entries of a, the
    columns of σ'(X W0ᵀ) and σ''(X W0ᵀ)) are split over "neurons"; sample-indexed axes (inputs,
    labels, target parts, U_k's rows) over "samples"; everything else is replicated.

    A generic model (`jaxntk.TaylorModel`, not a sum over neurons) trains data parallel: m is None,
    the mesh's "neurons" axis has one device, the samples are split over all devices and the
    model and the state are replicated.

    Attributes:
        mesh: a mesh with axes ("samples", "neurons") (`device_mesh`).
        m: the network's width; None for a data-parallel generic model.
    """

    mesh: Mesh
    m: int | None

    @property
    def neuron_shards(self) -> int:
        """Devices along the "neurons" axis (blocks of m / neuron_shards neurons)."""
        return self.mesh.shape[NEURONS]

    @property
    def sample_shards(self) -> int:
        """Devices along the "samples" axis (blocks of the training and test points)."""
        return self.mesh.shape[SAMPLES]

    def model(self, net: Any) -> Any:
        """The network with W0 (m, d) and a (m,) split along m; a generic model replicated.

        Args:
            net: the two-layer network, or a generic model (`m` is None: data parallel).

        Returns:
            The same model, its arrays placed on the mesh.
        """
        if self.m is None:
            return jax.tree_util.tree_map(lambda x: self._put(x, P()), net)
        return dataclasses.replace(
            net,
            w0=self._put(net.w0, P(NEURONS, None)),
            a=self._put(net.a, P(NEURONS)),
        )

    def prepared(self, prep: Prepared, what: str = "inputs") -> Prepared:
        """Prepared inputs with each field split as `PREPARED_SPECS` says: x (n, d) along n over
        "samples", σ'(x W0ᵀ) and σ''(x W0ᵀ) (n, m) along n and m.

        Args:
            prep: the network's `Prepared` inputs.
            what: the name used in the error when n does not split over the sample shards.

        Returns:
            The same fields, placed on the mesh.
        """
        self._check_samples(prep.x.shape[0], f"{what}.x.shape[0]")
        fields = prep._asdict().items()
        return prep._replace(**{k: self._put(v, PREPARED_SPECS[k]) for k, v in fields})

    def data(self, data: Any) -> Any:
        """A `jaxntk.objectives.Data` of a `TwoLayer`, every array placed on the mesh.

        Fields are placed by what they hold: the model, prepared inputs (`Prepared`), the good
        directions, R_pop's pool `pop_inputs` (replicated), and the per-sample arrays named in
        `SAMPLE_AXES`; None stays None.

        Args:
            data: the run's `jaxntk.objectives.Data`.

        Returns:
            A `Data` of the same type with every array placed.

        Raises:
            ValueError: for a model other than `TwoLayer`, or a sample count that the sample
                shards do not divide.
        """
        if self.m is not None and not isinstance(data.model, TwoLayer):
            raise ValueError(
                "sharding over several devices supports the closed-form jaxntk.TwoLayer, got "
                f"{type(data.model).__name__}; train it on one device (devices=1)"
            )
        placed = {}
        for name, value in data._asdict().items():
            if value is None:
                placed[name] = None
            elif name == "model":
                placed[name] = self.model(value)
            elif isinstance(value, Prepared):
                placed[name] = self.prepared(value, name)
            elif isinstance(value, GoodDirections):
                self._check_samples(value.n, "training points n")
                placed[name] = GoodDirections(
                    self._put(value.u_k, P(SAMPLES, None)), self._put(value.s_k, P())
                )
            elif name == "pop_inputs":  # R_pop's pool of inputs: drawn from, whole, by every device
                placed[name] = self._put(value, P())
            elif name in SAMPLE_AXES:
                axis = SAMPLE_AXES[name]
                self._check_samples(value.shape[axis], f"{name}.shape[{axis}]")
                spec = [None] * value.ndim
                spec[axis] = SAMPLES
                placed[name] = self._put(value, P(*spec))
            else:
                raise ValueError(f"sharding: no placement known for Data.{name}")
        return type(data)(**placed)

    def state(self, state: Any) -> Any:
        """Trainer state with leading (L, S) axes: leaves of shape (L, S, m, d) — U and the
        optimizer's moments — split along m, the rest (keys, counters, step sizes) replicated.

        Args:
            state: the trainer's state, a pytree.

        Returns:
            The same pytree, placed on the mesh.
        """

        def place(x):
            if self.m is not None and np.ndim(x) == 4 and np.shape(x)[2] == self.m:
                return self._put(x, P(None, None, NEURONS))
            return self._put(x, P())

        return jax.tree_util.tree_map(place, state)

    def fetch(self, tree: Any) -> Any:
        """The tree as host numpy arrays (gathered from every host when the mesh spans several).

        Args:
            tree: a pytree of arrays placed on the mesh.

        Returns:
            The same pytree of numpy arrays, whole on every host.
        """
        if all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(tree)):
            return jax.device_get(tree)
        return multihost_utils.process_allgather(tree, tiled=True)

    def _put(self, x: Array, spec: P) -> Array:
        sharding = NamedSharding(self.mesh, spec)
        if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, sharding)
        # Several hosts: every process holds the same value (same keys), each places its shards.
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def _check_samples(self, n: int, what: str) -> None:
        if n % self.sample_shards:
            raise ValueError(
                f"devices: {what} = {n} is not divisible by the mesh's {self.sample_shards} "
                "sample shards"
            )


def layout(model: Any, devices: Devices = None) -> Layout | None:
    """The `Layout` of a training run of `model` on `devices`; None for a single device.

    Args:
        model: the network: a `jaxntk.TwoLayer` is split over neurons (and samples), any other
            model (`jaxntk.TaylorModel`) over samples only (data parallel).
        devices: None (all available devices: neurons axis only for a `TwoLayer`; for another
            model, one device unless the run spans several processes), a count N, a sequence of
            devices, or a mesh from `device_mesh` (to shard the samples too).

    Returns:
        The `Layout` that places the run's arrays, or None when the run uses one device.

    Raises:
        ValueError: `devices` is not available or not understood, or the neuron shards do not
            split m into whole, half-aligned blocks.
    """
    generic = not isinstance(model, TwoLayer)
    if devices is None and generic and jax.process_count() == 1:
        return None  # a generic model splits only its samples: on one host, one device is simpler
    if isinstance(devices, Mesh):
        mesh = devices
    elif generic:
        count = len(jax.devices()) if devices is None else devices
        mesh = device_mesh(devices, samples=count if isinstance(count, int) else len(count))
    else:
        mesh = device_mesh(devices)
    if tuple(mesh.axis_names) != (SAMPLES, NEURONS):
        raise ValueError(
            f"devices: a Mesh must have the axes {(SAMPLES, NEURONS)} (see device_mesh), "
            f"got {mesh.axis_names}"
        )
    if mesh.size == 1:
        return None
    if generic:
        if mesh.shape[NEURONS] > 1:
            raise ValueError(
                f"devices: a {type(model).__name__} is not a sum over neurons; it can only split "
                f"its samples, but the mesh has {mesh.shape[NEURONS]} neuron shards "
                "(use device_mesh(devices, samples=len(devices)))"
            )
        return Layout(mesh, None)
    shards = mesh.shape[NEURONS]
    if shards > 1 and shards % 2:
        raise ValueError(
            f"devices: {shards} neuron shards is odd; the neurons r and r + m/2 of a symmetric "
            "pair lie in opposite halves of the devices, so the count must be even (or 1)"
        )
    if model.m % shards:
        raise ValueError(
            f"devices: m = {model.m} neurons cannot be split into {shards} equal neuron shards "
            f"(m/2 = {model.m // 2} must be divisible by {shards // 2}, the shards per half)"
        )
    return Layout(mesh, model.m)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> int:
    """Join this process to a multi-process run (`jax.distributed`); returns the process count.

    Call before any other JAX work. With `coordinator` ("HOST:PORT" of process 0, reachable from
    every process), `num_processes` and `process_id`, the run is started by hand; on CPU the
    processes talk through JAX's gloo collectives. Without them, JAX's own cluster detection
    is used when the environment names a multi-process job (Slurm's srun with several tasks,
    Open MPI, a multi-host TPU slice), and a lone process stays alone. Every process then runs
    the same program; `device_mesh` and `layout` span the devices of all processes.

    Args:
        coordinator: "HOST:PORT" of process 0; None to use JAX's cluster detection.
        num_processes: the number of processes (with `coordinator`).
        process_id: this process's index in [0, num_processes) (with `coordinator`).

    Returns:
        The number of processes of the run (1 when alone).

    Raises:
        ValueError: only some of the three arguments are given, or one is out of range.

    Example:
        >>> initialize()   # one process, no cluster: nothing to join
        1
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "coordinator, num_processes and process_id go together (got "
            f"coordinator={coordinator!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r})"
        )
    if all(given):
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"coordinator must be HOST:PORT, got {coordinator!r}")
        if not (isinstance(num_processes, int) and num_processes >= 1):
            raise ValueError(f"num_processes must be an int ≥ 1, got {num_processes!r}")
        if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
            raise ValueError(
                f"process_id must be an int in [0, {num_processes}), got {process_id!r}"
            )
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif _in_a_cluster():
        jax.distributed.initialize()
    return jax.process_count()


def _in_a_cluster() -> bool:
    """Whether the environment names a job of several processes that JAX detects by itself."""
    env = os.environ

    def more_than_one(name: str) -> bool:
        return env.get(name, "1").isdigit() and int(env.get(name, "1")) > 1

    return (
        ("SLURM_STEP_ID" in env and more_than_one("SLURM_NTASKS"))
        or more_than_one("OMPI_COMM_WORLD_SIZE")
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
    """Bytes that the arrays of `tree` occupy on each device (from their addressable shards).

    Args:
        tree: a pytree of `jax.Array`.

    Returns:
        device -> bytes, summed over the leaves' shards on that device.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.sharding import bytes_per_device
        >>> list(bytes_per_device({"u": jnp.zeros((4, 8))}).values())   # 32 float32 values
        [128]
    """
    total: dict[jax.Device, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            total[shard.device] = total.get(shard.device, 0) + shard.data.nbytes
    return total
