"""The empirical NTK engine: each block of inputs' features once, a contraction per pair of blocks.

For a model f(θ; x) with outputs (n, *out), the empirical neural tangent kernel is

    K(x, x')[a, b] = Σ_θ ∂f_a(x)/∂θ ∂f_b(x')/∂θ = ⟨J(x)_a, J(x')_b⟩,

with output axes traced (Σ over the diagonal, divided by its length) or kept diagonal as in
neural-tangents' `empirical_ntk_fn` (`empirical_ntk` below). Every implementation splits the
work the same way: the inputs are cut into blocks of b examples, each block's *features* are
computed once, and each pair of blocks is *contracted* to its (b, b, ...) block of K. With
x2 = None the kernel is symmetric and only the pairs j ≥ i are contracted (the rest mirrored).

- ``"jacobian"``: features are the per-example Jacobians J(x) ∈ R^{|out|×P} (`vmap` over the
  examples of `jax.jacrev` of the one-example function, or `jax.jacfwd` when |out| > P), the
  contraction one einsum over P and the traced axes: O(n·|out|·P) memory in features,
  O(n1·n2·|out|·P) contraction.
- ``"products"``: no stored Jacobian. For each output entry (j, b) of the second block,
  v = J(x'_j)ᵀ e_b by one VJP, then J(x_i) v for the whole first block by one JVP: memory
  O(P) per column, time O(n1·n2·|out|) forward passes. For when Jacobians do not fit.
- ``"structured"``: structured derivatives (Novak, Sohl-Dickstein & Schoenholz, *Fast Finite
  Width Neural Tangent Kernel*, ICML 2022) from `jaxntk._structured`: for `dot_general` and
  convolutions the layer's contribution from its input and output cotangents, without the
  weight Jacobian; a convolution followed by elementwise ops and a sum over its pixels (global
  average pooling before a head) forms one matmul for all outputs ("pooled").
- ``"auto"``: the cheapest by an estimate of FLOPs (features n·f plus contraction n1·n2·p,
  from XLA's cost analysis of the lowered functions and the structured plan's count, jacobian's
  on convolutions weighted by `CONV_JACOBIAN_SLOWDOWN`) among those whose features fit the
  memory budget (`choose_method` says what it chose and why).

Blocks are sized from `memory_budget` (bytes; default a quarter of the device's memory, or of
the host's): when every block's features fit, they are all computed once and kept; otherwise
each block row's features are computed once and the column blocks' streamed. One compiled
program per block shape computes a block's features, another contracts a pair; they are called
block by block (inside a caller's `jit` the calls unroll into its program), not looped over
with `lax.map`, whose loop body XLA's CPU backend runs an order of magnitude slower for
convolutions. With several local devices the block rows go round robin over them; with several
processes (`jax.distributed`) process p computes the block rows i ≡ p (mod process count) and
the whole kernel is gathered (`multihost_utils.process_allgather`) and returned on every process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
import numbers
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxntk import host, store
from jaxntk._checks import check_int
from jaxntk.taylor import _memory_bytes

Array = jax.Array
PyTree = Any

__all__ = [
    "CONV_JACOBIAN_SLOWDOWN",
    "METHODS",
    "Choice",
    "Estimate",
    "choose_method",
    "default_memory_budget",
    "empirical_ntk",
    "pseudo_ntk",
]

METHODS = ("auto", "jacobian", "products", "structured")
"""Implementations of `empirical_ntk`: "auto" (the cheapest by estimate), "jacobian"
(per-example Jacobians, contracted), "products" (J(Jᵀv), no stored Jacobian), "structured"
(structured derivatives of dot_general and convolutions)."""

CONV_JACOBIAN_SLOWDOWN = 4.0
"""How much slower per FLOP "jacobian" runs on a model with convolutions than the dense GEMMs of
"structured" (measured: the 3-layer CNN of benchmarks/ntk_speed.py at n = 128, float32, 2 cores:
jacobian 25.9 s, structured 14.2 s for 0.67× its FLOPs)."""
_AUTO = ("jacobian", "products", "structured")  # the implementations "auto" chooses from
_DEFAULT_BLOCK = 128  # rows per block when the budget allows: large enough for efficient GEMMs
_PRODUCT_COLUMNS = 64  # most J(Jᵀv) columns in flight at once
# What "auto" learns from lowering a model (FLOPs, whether it has convolutions) depends only on
# the function and the shapes: kept, so a second call on the same model does not lower it again
# (0.1-0.4 s a call on 2 cores, more than the kernel itself for small n).
_ANALYSES: dict[Any, Any] = {}
_MAX_ANALYSES = 256


class Estimate(NamedTuple):
    """The estimated cost of one implementation for the shapes at hand.

    Attributes:
        flops: estimated floating-point operations of the whole kernel.
        feature_bytes: bytes of the features of one example.
        fits: whether one block's features fit the memory budget.
        cost: flops weighted by how fast they run: "jacobian" of a model with convolutions
            counts `CONV_JACOBIAN_SLOWDOWN` times its FLOPs (the vmapped weight gradients
            become grouped convolutions, slow on XLA's CPU backend), the rest their FLOPs.
    """

    flops: float
    feature_bytes: int
    fits: bool
    cost: float


class Choice(NamedTuple):
    """What `empirical_ntk` runs: the implementation, why, and the block size.

    Attributes:
        method: the implementation ("jacobian", "products" or "structured").
        estimates: the `Estimate` of every implementation considered, by name.
        reason: one line saying why this method.
        batch_size: examples per block.
        memory_budget: the budget in bytes the blocks were sized for.
        resident: whether every block's features are computed once and kept (else the column
            blocks' features are recomputed for each block row).
    """

    method: str
    estimates: dict
    reason: str
    batch_size: int
    memory_budget: int
    resident: bool


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The validated, static description of one kernel: what every program is compiled for."""

    n1: int
    n2: int
    symmetric: bool
    out_shape: tuple[int, ...]  # one example's output shape
    dtype: Any
    num_params: int
    trace: tuple[int, ...]
    diagonal: tuple[int, ...]


def default_memory_budget() -> int:
    """A quarter of the first local device's memory where JAX reports it, else of the host's.

    Returns:
        The budget in bytes.

    Example:
        >>> from jaxntk.ntk import default_memory_budget
        >>> default_memory_budget() > 0
        True
    """
    return _memory_bytes()[0] // 4


def empirical_ntk(
    apply_fn: Callable[[PyTree, Array], Array],
    params0: PyTree,
    x1: Array,
    x2: Array | None = None,
    *,
    trace_axes: Sequence[int] = (-1,),
    diagonal_axes: Sequence[int] = (),
    params_mask: PyTree | Callable[[str, Any], bool] | None = None,
    per_layer: bool | str = False,
    method: str = "auto",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    output: str | Path | None = None,
    progress: bool = False,
) -> Array | np.ndarray | dict[str, Array | np.ndarray]:
    """Empirical NTK K(x, x') = ⟨∇_θ f(x; θ0), ∇_θ f(x'; θ0)⟩ of a model with any output shape.

    For f(x) of shape (n, *out) (axis 0 the batch), the kernel has, as in neural-tangents'
    `empirical_ntk_fn`, nearly the shape zip(f(x1).shape, f(x2).shape): each axis of the output
    appears twice (n1, n2, c1, c2, ...), except that an axis in `trace_axes` is summed over its
    diagonal and divided by its length (absent from the result) and an axis in `diagonal_axes`
    keeps only its diagonal (present once):

        K[i, j, a, b] = Σ_θ ∂f_a(x1_i)/∂θ ∂f_b(x2_j)/∂θ                trace_axes=()
        K[i, j]       = (1/c) Σ_a Σ_θ ∂f_a(x1_i)/∂θ ∂f_a(x2_j)/∂θ     trace_axes=(-1,)
        K[i, j, a]    = Σ_θ ∂f_a(x1_i)/∂θ ∂f_a(x2_j)/∂θ               diagonal_axes=(-1,)

    Axes count on f(x)'s full shape: 0 is the batch axis (allowed in `diagonal_axes`, giving
    K(x1_i, x2_i) for n1 = n2; never traced), −1 the last output axis. A model with one output
    per input, f(x) of shape (n,), has no output axis to trace: `trace_axes` is ignored and the
    kernel is (n1, n2). The implementations (module docstring) give the same values; the
    features of each block of `batch_size` inputs are computed once. The method chosen (and the
    structured plan) is kept for later calls with the same apply_fn, parameter and input shapes
    and arguments: like `jax.jit`, it reads what apply_fn closes over when it first sees it.

    `params_mask` takes the kernel of a subset of the parameter leaves, Σ over those leaves'
    entries only: the other leaves are held at their values (constants of the model; the
    choice of a subset kernel is made anew each call, its programs compiled once per mask).
    `per_layer` splits the kernel into one term per layer or per leaf, which sum to it: each is
    computed as the subset kernel of its leaves, so G groups cost G kernels, each with the whole
    model's forward and backward passes.

    Each example's output must depend on its own input alone: the features are taken one example
    at a time. A model with state, such as flax's BatchNorm, gives the kernel at its running
    statistics in eval mode, with the state either closed over in apply_fn,

        apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x, train=False)

    or passed as an argument bound by `jax.tree_util.Partial`, which JAX reads as an input
    rather than a constant of the function (new statistics, after more training, then need no
    new function; the method is chosen anew at each call),

        def apply(stats, p, x):
            return model.apply({"params": p, "batch_stats": stats}, x, train=False)
        apply_fn = jax.tree_util.Partial(apply, stats)

    and params0 = variables["params"] in both (the statistics are not differentiated). In train
    mode the examples interact through the batch statistics: the first call with a function and
    shapes checks, on two inputs, that a JVP with respect to the first leaves the second's output
    unchanged (for integer inputs, a change of the first), and raises ValueError if not; flax's
    `apply(..., mutable=["batch_stats"])`, which returns (output, state), is refused too.

    Args:
        apply_fn: f(params, x) -> (b, *out) for a batch x of shape (b, ...).
        params0: the parameters θ0 at which the NTK is taken (any pytree of float arrays).
        x1: (n1, ...) inputs.
        x2: (n2, ...) inputs with the trailing shape of x1 (default: x1, and the symmetric
            kernel is computed on the block pairs j ≥ i only).
        trace_axes: output axes to trace over (sum of the diagonal, divided by its length).
        diagonal_axes: output axes of which only the diagonal is kept.
        params_mask: the parameter leaves to differentiate, the others held at their values:
            None for all; a pytree of bools with params0's structure, or a prefix of it (one
            bool for a whole subtree); or a callable (path, leaf) -> bool, path the leaf's keys
            joined by "/" ("params/Conv_0/kernel" for a flax model, "0/1" for a list of pairs).
        per_layer: False for one kernel; True for a dict {layer: its kernel}, a layer the path
            of a leaf without its last key ("params/Conv_0" holds its kernel and bias; "" for
            the leaves at params0's root); "leaves" for a dict {leaf path: its kernel}. Only the
            leaves `params_mask` selects are grouped, in params0's order of leaves.
        method: one of `METHODS`; "auto" picks by estimated cost (`choose_method`).
        batch_size: examples per block (default: from the memory budget, at most 128).
        memory_budget: bytes the features may take (default `default_memory_budget()`).
        output: None for a jax Array; "host" for a numpy array filled block row by block row;
            a folder path for a kernel store on disk (`jaxntk.store`: each block row written and
            recorded with its checksum as it finishes; called again with the same arguments
            after a kill, it computes only the missing rows; several processes each write their
            own rows and nothing is gathered); a path ending in ".npy" for one .npy file
            written as a memmap (no resumption).
        progress: print a line per block row to stderr (with a store: the throughput and the
            time left).

    Returns:
        The kernel: (n1, n2) for scalar outputs or with the output axes traced, (n1, n2, c, c)
        for outputs (n, c) with trace_axes=(), and so on (see above). With several processes
        (`jax.distributed`), each computes its share of the block rows and every process
        returns the whole kernel (a .npy path is written by process 0 only). With a folder
        output, a `jaxntk.store.KernelStore` (every process returns it once all rows are on
        disk). With `per_layer`, a dict of such kernels keyed by layer or leaf path.

    Raises:
        ValueError: for an unknown method or output, axes out of range, repeated or in both
            arguments, a traced batch axis, inputs of different trailing shapes, a diagonal
            batch axis with n1 ≠ n2, a memory_budget too small for one example's features, a
            params_mask that is not bools, does not fit params0's structure or selects no
            leaf, a per_layer other than False, True or "leaves", or per_layer with a path
            output; a store folder holding a kernel of other arguments, another method or block
            size, or rows whose bytes no longer match their checksums (`jaxntk.store`); an
            apply_fn that does not return one array (a tuple: flax's `mutable=`), updates the
            model's state, or mixes the examples of a batch (BatchNorm in train mode).
        TypeError: if an axis, batch_size or memory_budget is not an int, or progress not a bool.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.ntk import empirical_ntk
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=20)
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
        >>> k = empirical_ntk(net.apply_fn, net.w0, x)
        >>> bool(jnp.allclose(k, net.ntk_gram(x), atol=1e-5))  # the closed form of TwoLayer
        True
        >>> empirical_ntk(net.apply_fn, net.w0, x, x[:2], method="products").shape
        (3, 2)
        >>> def f(w, x):                      # a linear model with 4 outputs: J(x) = x ⊗ I
        ...     return x @ w
        >>> w, ones = jnp.zeros((5, 4)), jnp.ones((3, 5))
        >>> empirical_ntk(f, w, ones, output="host")  # traced: (1/4) Σ_a ⟨x_i, x_j⟩, numpy
        array([[5., 5., 5.],
               [5., 5., 5.],
               [5., 5., 5.]], dtype=float32)
        >>> empirical_ntk(f, w, ones, diagonal_axes=(0,), trace_axes=())[0]
        Array([[5., 0., 0., 0.],
               [0., 5., 0., 0.],
               [0., 0., 5., 0.],
               [0., 0., 0., 5.]], dtype=float32)
        >>> def g(p, x):                      # a dense layer with a bias: ⟨x_i, x_j⟩ + 1
        ...     return x @ p["dense"]["w"] + p["dense"]["b"][None, :]
        >>> p = {"dense": {"w": w, "b": jnp.zeros(4)}}
        >>> empirical_ntk(g, p, ones, params_mask={"dense": {"b": True, "w": False}})[0]
        Array([1., 1., 1.], dtype=float32)
        >>> {k: float(v[0, 1]) for k, v in empirical_ntk(g, p, ones, per_layer="leaves").items()}
        {'dense/b': 1.0, 'dense/w': 5.0}
        >>> {k: float(v[0, 1]) for k, v in empirical_ntk(g, p, ones, per_layer=True).items()}
        {'dense': 6.0}
    """
    if per_layer is not False:  # one kernel per group of leaves, each by the branch below
        groups = _groups(params0, params_mask, per_layer, output)
        return {
            name: empirical_ntk(
                apply_fn,
                params0,
                x1,
                x2,
                trace_axes=trace_axes,
                diagonal_axes=diagonal_axes,
                params_mask=mask,
                method=method,
                batch_size=batch_size,
                memory_budget=memory_budget,
                output=output,
                progress=progress,
            )
            for name, mask in groups.items()
        }
    apply_fn, params0 = _restrict(apply_fn, params0, params_mask)
    spec, apply_fn, x1, x2 = _check(apply_fn, params0, x1, x2, trace_axes, diagonal_axes)
    if output is not None and output != "host" and not isinstance(output, (str, Path)):
        raise ValueError(f"output must be None, 'host' or a path, got {output!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    if _is_store(output):
        method, batch_size = _resumed_choice(Path(output), method, batch_size)
        choice, extra = _choose(apply_fn, params0, x1, spec, method, batch_size, memory_budget)
        return _stored_kernel(
            apply_fn, params0, x1, x2, spec, choice, extra, Path(output), progress
        )
    choice, extra = _choose(apply_fn, params0, x1, spec, method, batch_size, memory_budget)
    several = jax.process_count() > 1 or jax.local_device_count() > 1
    if output is None and not progress and not several:
        return _device_kernel(apply_fn, params0, x1, x2, spec, choice, extra)
    return _host_kernel(apply_fn, params0, x1, x2, spec, choice, extra, output, progress)


def choose_method(
    apply_fn: Callable[[PyTree, Array], Array],
    params0: PyTree,
    x1: Array,
    x2: Array | None = None,
    *,
    trace_axes: Sequence[int] = (-1,),
    diagonal_axes: Sequence[int] = (),
    params_mask: PyTree | Callable[[str, Any], bool] | None = None,
    method: str = "auto",
    batch_size: int | None = None,
    memory_budget: int | None = None,
) -> Choice:
    """What `empirical_ntk` runs with these arguments, with its estimates and why.

    Each implementation's cost is n_f·f + n_p·p FLOPs: f the FLOPs of one example's features and
    p of one pair of examples' contraction (XLA's cost analysis of the lowered one-example
    functions, or the structured plan's count), n_f the examples whose features are computed
    (each once when all fit the budget) and n_p the pairs contracted (half for x2 = None).
    With method "auto", the cheapest among those whose features fit `memory_budget` wins (the
    FLOPs are estimated only then: for a named method they are reported as 0).

    Args:
        apply_fn, params0, x1, x2, trace_axes, diagonal_axes, params_mask, method,
            batch_size, memory_budget: as `empirical_ntk`.

    Returns:
        A `Choice`: the method, the estimates of every implementation, a one-line reason, the
        block size and whether the features stay resident.

    Raises:
        ValueError, TypeError: as `empirical_ntk`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk.ntk import choose_method
        >>> choice = choose_method(lambda w, x: jnp.tanh(x @ w), jnp.ones((5, 3)), jnp.ones((8, 5)))
        >>> choice.method in ("jacobian", "products", "structured"), choice.batch_size
        (True, 8)
    """
    apply_fn, params0 = _restrict(apply_fn, params0, params_mask)
    spec, apply_fn, x1, _ = _check(apply_fn, params0, x1, x2, trace_axes, diagonal_axes)
    return _choose(apply_fn, params0, x1, spec, method, batch_size, memory_budget)[0]


def pseudo_ntk(
    apply_fn: Callable[[PyTree, Array], Array],
    params0: PyTree,
    x1: Array,
    x2: Array | None = None,
    *,
    method: str = "auto",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    output: str | Path | None = None,
    progress: bool = False,
) -> Array | np.ndarray:
    """The pseudo-NTK: the kernel of the model's outputs summed, one scalar output per input.

    Mohamadi, Bae & Sutherland, *A Fast, Well-Founded Approximation to the Empirical Neural
    Tangent Kernel* (ICML 2023): for f(x) with c = |out| outputs per input, the empirical NTK of
    f̃(x) = (1/√c) Σ_a f_a(x),

        K_p(x, x') = (1/c) Σ_a Σ_b ⟨∇_θ f_a(x), ∇_θ f_b(x')⟩,

    that is, `empirical_ntk(..., trace_axes=())` summed over both output axes and divided by c,
    where the traced kernel (1/c) Σ_a ⟨∇_θ f_a(x), ∇_θ f_a(x')⟩ keeps only the terms a = b. It
    costs about 1/c of the full kernel's features and contraction: one backward pass per input
    instead of c. The paper bounds the distance of the full kernel to K_p ⊗ I_c, which shrinks
    as the network widens (at initialization).

    Args:
        apply_fn: f(params, x) -> (b, *out) for a batch x of shape (b, ...), as `empirical_ntk`.
        params0: the parameters θ0 at which the kernel is taken.
        x1: (n1, ...) inputs.
        x2: (n2, ...) inputs (default: x1, and the symmetric kernel is computed once).
        method, batch_size, memory_budget, output, progress: as `empirical_ntk`.

    Returns:
        The (n1, n2) kernel, an Array, or a numpy array or memmap as `output` asks.

    Raises:
        ValueError, TypeError: as `empirical_ntk` (its checks of apply_fn, the inputs and the
            arguments).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.ntk import empirical_ntk, pseudo_ntk
        >>> def f(w, x):                      # a linear model with 4 outputs: ∇f_a = x ⊗ e_a
        ...     return x @ w
        >>> w, ones = jnp.zeros((5, 4)), jnp.ones((3, 5))
        >>> pseudo_ntk(f, w, ones)            # (1/4) ⟨x ⊗ 1, x' ⊗ 1⟩ = ⟨x, x'⟩
        Array([[5., 5., 5.],
               [5., 5., 5.],
               [5., 5., 5.]], dtype=float32)
        >>> def mlp(p, x):
        ...     return jnp.tanh(x @ p["w1"]) @ p["w2"]
        >>> keys = jax.random.split(jax.random.PRNGKey(0), 3)
        >>> p = {"w1": jax.random.normal(keys[0], (5, 8)), "w2": jax.random.normal(keys[1], (8, 4))}
        >>> x = jax.random.normal(keys[2], (3, 5))
        >>> full = empirical_ntk(mlp, p, x, trace_axes=())   # (3, 3, 4, 4)
        >>> bool(jnp.allclose(pseudo_ntk(mlp, p, x), full.sum((2, 3)) / 4, rtol=1e-4))
        True
    """
    spec, _, _, _ = _check(apply_fn, params0, x1, x2, (), ())
    summed = _SummedOutputs(apply_fn, math.prod(spec.out_shape))
    return empirical_ntk(
        summed,
        params0,
        x1,
        x2,
        trace_axes=(),
        method=method,
        batch_size=batch_size,
        memory_budget=memory_budget,
        output=output,
        progress=progress,
    )


@dataclasses.dataclass(frozen=True)
class _SummedOutputs:
    """f̃(params, x) = Σ_a f_a(params, x) / √c over every output entry of each example: equal
    (and hashing alike) for the same function, so that `pseudo_ntk` keeps the engine's choice
    and compiled programs from one call to the next."""

    fn: Callable
    outputs: int

    def __call__(self, params, x):
        out = self.fn(params, x)
        return jnp.sum(out.reshape(out.shape[0], -1), axis=1) / math.sqrt(self.outputs)


def _kernel(
    apply_fn: Callable,
    params0: PyTree,
    x1: Array,
    x2: Array | None,
    trace: tuple[int, ...],
    diagonal: tuple[int, ...],
    *,
    method: str = "auto",
    batch_size: int | None = None,
) -> Array:
    """The kernel as one traceable computation, for the library's own users inside `jit`
    (`jaxntk.spectral.gram_matrix`, `jaxntk.predict.ntk_predict`): axes already resolved as
    non-negative, sorted tuples; inputs already checked; the default memory budget."""
    spec, apply_fn, x1, x2 = _check(apply_fn, params0, x1, x2, trace, diagonal)
    choice, extra = _choose(apply_fn, params0, x1, spec, method, batch_size, None)
    return _device_kernel(apply_fn, params0, x1, x2, spec, choice, extra)


# ------------------------------------------------------------------------------ validation


def _check(apply_fn, params0, x1, x2, trace_axes, diagonal_axes):
    """(_Spec, apply_fn as a Partial, x1, x2 or None); ValueError/TypeError on bad input."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {apply_fn!r}")
    x1 = jnp.asarray(x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else jnp.asarray(x2)
    if x1.ndim < 1 or x2.ndim < 1 or x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x1 and x2 must be batches (n, ...) with the same trailing shape, got x1 of shape "
            f"{x1.shape} and x2 of shape {x2.shape}"
        )
    n1, n2 = x1.shape[0], x2.shape[0]
    b = min(2, n1)
    try:
        f = jax.eval_shape(apply_fn, params0, x1[:b])
    except Exception as err:
        if type(err).__name__ != "ModifyScopeVariableError":  # flax: state updated, immutable
            raise
        raise ValueError(f"apply_fn updates the model's state: {_STATEFUL}") from err
    if not hasattr(f, "shape") or len(f.shape) < 1 or f.shape[0] != b:
        returned = f"a tuple of {len(f)}" if isinstance(f, (tuple, list)) else f"{f}"
        hint = (
            f". A tuple is what flax's `apply(..., mutable=[...])` returns, (output, updated "
            f"state): {_STATEFUL}"
            if isinstance(f, (tuple, list))
            else ""
        )
        raise ValueError(
            f"apply_fn(params0, x) must return one array with the batch axis first, (b, *out) for "
            f"b inputs; for {b} inputs it returned {returned}{hint}"
        )
    trace, diagonal = _ntk_axes(trace_axes, diagonal_axes, len(f.shape))
    if 0 in diagonal and n1 != n2:
        raise ValueError(
            f"diagonal_axes with the batch axis 0 needs as many x2 as x1 inputs, got n1 = "
            f"{n1} and n2 = {n2}"
        )
    if not isinstance(apply_fn, Partial):
        apply_fn = Partial(apply_fn)
    leaves = jax.tree_util.tree_leaves(params0)
    spec = _Spec(
        n1=n1,
        n2=n2,
        symmetric=symmetric,
        out_shape=tuple(f.shape[1:]),
        dtype=np.dtype(f.dtype),
        num_params=sum(math.prod(jnp.shape(leaf)) for leaf in leaves),
        trace=trace,
        diagonal=diagonal,
    )
    return spec, apply_fn, x1, None if symmetric else x2


_STATEFUL = (
    "the kernel is taken at fixed state, the model in eval mode with its state closed over "
    "(or bound by jax.tree_util.Partial) and not updated, e.g. lambda p, x: model.apply("
    "{'params': p, 'batch_stats': stats}, x, train=False) with params0 = variables['params'] "
    "(BatchNorm at its running statistics)"
)


def _check_independent(apply_fn, params0, x1) -> None:
    """ValueError where the examples of a batch interact: with two inputs, a change of the first
    (a JVP with respect to it, or for integer inputs another value) must leave the second's output
    exactly unchanged. The kernel's features are taken one example at a time, so a model that
    mixes its batch (BatchNorm in train mode: batch statistics) would get a kernel of a different
    model. Kept per function and shapes (`_analysed`); skipped inside a trace (no values).
    Called by `_choose` once the other arguments are checked (a bad one is named before this
    compiles anything)."""
    leaves = jax.tree_util.tree_leaves((apply_fn, params0, x1))
    if x1.shape[0] == 0 or any(isinstance(v, jax.core.Tracer) for v in leaves):
        return
    pair = x1[:2] if x1.shape[0] >= 2 else jnp.concatenate([x1, x1])
    args = (apply_fn, params0, pair)
    if _analysed(("interacting",), args, lambda: _interacting(*args)):
        raise ValueError(
            "apply_fn mixes the examples of a batch: with two inputs, changing the first changed "
            "the output of the second (BatchNorm in train mode, mutable batch statistics, or a "
            "normalization over the batch axis); the empirical NTK needs each output to depend on "
            f"its own input alone: {_STATEFUL}"
        )


def _interacting(apply_fn, params0, pair) -> bool:
    """Whether the second example's output of apply_fn(params0, pair) moves with the first input:
    its JVP along a tangent on the first example only (floating inputs), else its value when the
    first input is replaced by another (its entries reversed, or shifted by one), each by one
    compiled program (0.3-0.7 s for the ResNet and transformer of benchmarks/ntk_speed.py, 2-3×
    less than op by op). Entries that are NaN count as unmoved (0·∞ in a JVP)."""

    def moved(change) -> bool:
        return bool(jnp.any(jnp.abs(change[1]) > 0))

    if jnp.issubdtype(pair.dtype, jnp.inexact):
        noise = np.random.default_rng(0).standard_normal(pair.shape[1:])
        tangent = jnp.zeros_like(pair).at[0].set(jnp.asarray(noise, pair.dtype))
        try:
            return moved(_input_jvp(apply_fn, params0, pair, tangent))
        except TypeError:  # no forward mode (a custom_vjp): compare values instead
            pass
    first = pair[0]
    other = jnp.flip(first)
    if bool(jnp.all(other == first)):
        other = ~first if pair.dtype == jnp.bool_ else first + jnp.ones((), pair.dtype)
    return moved(_apply(apply_fn, params0, pair.at[0].set(other)) - _apply(apply_fn, params0, pair))


@jax.jit
def _apply(apply_fn, params0, x):
    return apply_fn(params0, x)


@jax.jit
def _input_jvp(apply_fn, params0, x, tangent):
    return jax.jvp(lambda x: apply_fn(params0, x), (x,), (tangent,))[1]


def _ntk_axes(
    trace_axes: Sequence[int], diagonal_axes: Sequence[int], ndim: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Both axis arguments as sorted non-negative axes of an ndim output; ValueError if bad."""
    resolved = {}
    for name, axes in (("trace_axes", trace_axes), ("diagonal_axes", diagonal_axes)):
        if isinstance(axes, numbers.Integral):
            axes = (axes,)
        out = []
        for axis in axes:
            if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
                raise TypeError(f"{name} must hold ints, got {axis!r}")
            if not -ndim <= axis < ndim:
                raise ValueError(
                    f"{name} holds axis {axis}, out of range for outputs with {ndim} axes "
                    f"(batch axis first)"
                )
            out.append(int(axis) % ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"{name} repeats an axis: {tuple(axes)}")
        resolved[name] = out
    trace, diagonal = resolved["trace_axes"], resolved["diagonal_axes"]
    if 0 in trace:
        if ndim > 1:
            raise ValueError("trace_axes cannot hold the batch axis 0 (nor −ndim)")
        trace = []  # one output per input: nothing to trace (empirical_ntk's docstring)
    if set(trace) & set(diagonal):
        raise ValueError(
            f"an axis cannot be both traced and diagonal, got trace_axes={tuple(trace_axes)} and "
            f"diagonal_axes={tuple(diagonal_axes)}"
        )
    return tuple(sorted(trace)), tuple(sorted(diagonal))


# ------------------------------------------------------------------------ parameter subsets


def _leaf_paths(params0) -> list[str]:
    """Each leaf's path in params0, its keys joined by "/" ("params/Conv_0/kernel", "0/1")."""
    flat = jax.tree_util.tree_flatten_with_path(params0)[0]
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in flat]


def _as_bool(value) -> bool | None:
    """value as a bool where it is one (a Python or numpy bool, a 0-d bool array), else None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if (
        isinstance(value, (np.ndarray, jax.Array))
        and value.shape == ()
        and value.dtype == np.bool_
        and not isinstance(value, jax.core.Tracer)
    ):
        return bool(value)
    return None


def _selection(params0, params_mask) -> list[bool]:
    """Whether each leaf of params0 (in flattening order) is differentiated; ValueError for a
    mask that is not bools, does not fit params0's structure or selects nothing."""
    paths = _leaf_paths(params0)
    if callable(params_mask):
        selected = []
        for path, leaf in zip(paths, jax.tree_util.tree_leaves(params0), strict=True):
            answer = params_mask(path, leaf)
            if _as_bool(answer) is None:
                raise ValueError(
                    f"params_mask(path, leaf) must return a bool, got {answer!r} for the leaf "
                    f"{path!r}"
                )
            selected.append(_as_bool(answer))
    else:
        flat, treedef = jax.tree_util.tree_flatten_with_path(params_mask)
        for path, value in flat:
            if _as_bool(value) is None:
                where = jax.tree_util.keystr(path, simple=True, separator="/")
                raise ValueError(
                    f"params_mask must hold one bool per leaf (or per subtree) of params0, got "
                    f"{value!r} at {where or 'its root'!r}"
                )
        try:
            subtrees = treedef.flatten_up_to(params0)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"params_mask must have the structure of params0 or of a prefix of it: {err} "
                f"(params0's leaves: {paths})"
            ) from None
        selected = [
            bool(value)
            for (_, value), sub in zip(flat, subtrees, strict=True)
            for _ in jax.tree_util.tree_leaves(sub)
        ]
    if not any(selected):
        raise ValueError(f"params_mask selects no leaf of params0 (its leaves: {paths})")
    return selected


@dataclasses.dataclass(frozen=True)
class _Merged:
    """apply_fn(θ, x) of the selected leaves, the others held at their values: called as
    `Partial(_Merged(treedef, selected), apply_fn, rest)(chosen, x)`. Compared by value, so that
    the block programs compile once per mask, whatever the values held."""

    treedef: Any
    selected: tuple[bool, ...]

    def __call__(self, apply_fn, rest, chosen, x):
        chosen, rest = iter(chosen), iter(rest)
        leaves = [next(chosen) if keep else next(rest) for keep in self.selected]
        return apply_fn(self.treedef.unflatten(leaves), x)


def _restrict(apply_fn, params0, params_mask):
    """(apply_fn, params0) differentiated in the leaves params_mask selects only: a Partial of
    `_Merged` holding the other leaves as arguments (traced by the block programs, constants of
    the structured plan) and the list of the selected leaves. Unchanged for no mask or one that
    selects every leaf. The Partial has arguments: its choice is made anew each call
    (`_choice_key`), never that of the whole kernel."""
    if params_mask is None or not callable(apply_fn):  # _check names a bad apply_fn
        return apply_fn, params0
    selected = _selection(params0, params_mask)
    if all(selected):
        return apply_fn, params0
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    inner = apply_fn if isinstance(apply_fn, Partial) else Partial(apply_fn)
    # jax arrays: the plan's trace stages the ops on them as the block programs' trace does
    rest = [jnp.asarray(leaf) for leaf, keep in zip(leaves, selected, strict=True) if not keep]
    chosen = [leaf for leaf, keep in zip(leaves, selected, strict=True) if keep]
    return Partial(_Merged(treedef, tuple(selected)), inner, rest), chosen


def _groups(params0, params_mask, per_layer, output) -> dict[str, PyTree]:
    """{layer or leaf path: the mask of its selected leaves} for `per_layer`, in the order of
    params0's leaves; ValueError for a bad per_layer or a path output."""
    if not (isinstance(per_layer, bool) or (isinstance(per_layer, str) and per_layer == "leaves")):
        raise ValueError(f"per_layer must be False, True or 'leaves', got {per_layer!r}")
    if output is not None and output != "host":
        raise ValueError(
            f"per_layer gives one kernel per group of parameters: output must be None or "
            f"'host', got {output!r}"
        )
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    selected = [True] * len(leaves) if params_mask is None else _selection(params0, params_mask)
    names = []
    for path in _leaf_paths(params0):
        names.append(path if per_layer == "leaves" else path.rpartition("/")[0])
    groups = {}
    for k, name in enumerate(names):
        if selected[k]:
            groups.setdefault(name, [False] * len(leaves))[k] = True
    return {name: treedef.unflatten(mask) for name, mask in groups.items()}


# ----------------------------------------------------------------------- choice and budget


def _choose(apply_fn, params0, x1, spec, method, batch_size, memory_budget):
    """(`Choice`, the static extra argument of its programs) under the budget."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    if batch_size is not None:
        check_int("batch_size", batch_size, low=1)
    if memory_budget is not None:
        check_int("memory_budget", memory_budget, low=1)
    # the last check of the inputs (`_check` the others), after the arguments': it compiles
    _check_independent(apply_fn, params0, x1)
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    key = _choice_key(apply_fn, params0, x1, spec, method, batch_size, budget)
    if key is not None and key in _CHOICES:
        return _CHOICES[key]
    chosen = _choose_anew(apply_fn, params0, x1, spec, method, batch_size, budget)
    if key is not None:
        if len(_CHOICES) >= _CHOICES_KEPT:
            del _CHOICES[next(iter(_CHOICES))]  # the oldest
        _CHOICES[key] = chosen
    return chosen


# (model function, params' structure and shapes, inputs, spec, method, block, budget) -> the
# choice and its plan: a repeated call (a kernel per checkpoint, per evaluation) neither traces
# the model again nor re-estimates (a flax CNN: 13 ms a call on 2 cores). Like `jax.jit`, keyed
# on the function itself: values it closes over are read when it is first seen.
_CHOICES: dict = {}
_CHOICES_KEPT = 64


def _choice_key(apply_fn, params0, x1, spec, method, batch_size, budget):
    """The cache key of a choice, or None where it cannot be kept (inside a trace, a function
    with bound arguments or one that cannot be hashed)."""
    fn = apply_fn.func if isinstance(apply_fn, Partial) else apply_fn
    if isinstance(apply_fn, Partial) and (apply_fn.args or apply_fn.keywords):
        return None
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    if any(isinstance(v, jax.core.Tracer) for v in (*leaves, x1)):
        return None
    avals = tuple((tuple(jnp.shape(v)), jnp.result_type(v)) for v in leaves)
    key = (fn, treedef, avals, tuple(x1.shape), x1.dtype, spec, method, batch_size, budget)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _choose_anew(apply_fn, params0, x1, spec, method, batch_size, budget):
    structured = _structured_module()
    if method == "structured" and structured is None:
        raise ValueError("method 'structured' needs jaxntk._structured, which is not available")
    names = [method] if method != "auto" else [m for m in _AUTO if m != "structured" or structured]
    extras = {}
    for name in names:
        try:
            extras[name] = _extra(name, apply_fn, params0, x1, spec, budget)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            if method != "auto":
                raise
            # the structured plan folds the model's constants: traced ones (apply_fn's arrays
            # inside a jit) leave it to the other implementations
    names = list(extras)
    estimates = {
        name: _estimate(name, extras[name], apply_fn, params0, x1, spec, budget, method == "auto")
        for name in names
    }
    fitting = [name for name in names if estimates[name].fits]
    if not fitting:
        need = min(_bytes_needed(name, estimates[name], spec) for name in names)
        raise ValueError(
            f"memory_budget = {budget} bytes is too small for one example's features: "
            f"{' or '.join(names)} need at least {need} bytes"
        )
    chosen = min(fitting, key=lambda name: estimates[name].cost)
    b, resident = _block_size(estimates[chosen].feature_bytes, spec, batch_size, budget)
    if method == "auto":
        others = ", ".join(f"{n} {estimates[n].cost:.3g}" for n in names if n != chosen)
        unfit = [n for n in names if not estimates[n].fits]
        reason = (
            f"{chosen}: least estimated cost, {estimates[chosen].cost:.3g} FLOPs (vs {others})"
            + (f"; {', '.join(unfit)} over the budget of {budget} bytes" if unfit else "")
        )
    else:
        reason = f"{chosen}: asked for"
    return Choice(chosen, estimates, reason, b, budget, resident), extras[chosen]


def _structured_module():
    try:
        from jaxntk import _structured
    except ImportError:
        return None
    return _structured


def _extra(name, apply_fn, params0, x1, spec, budget):
    """The static argument of a method's programs: jacrev or jacfwd, the columns of J(Jᵀv) in
    flight, or the structured plan."""
    if name == "jacobian":
        return math.prod(spec.out_shape) <= spec.num_params  # reverse mode
    if name == "products":
        column = max(spec.num_params * spec.dtype.itemsize, 1)
        return max(1, min(_PRODUCT_COLUMNS, budget // (2 * column)))
    return _structured_module().make_plan(apply_fn, params0, x1[:1], spec.trace, spec.diagonal)


def _estimate(name, extra, apply_fn, params0, x1, spec, budget, with_flops) -> Estimate:
    """FLOPs (only when choosing: it lowers the one-example functions) and feature bytes."""
    outputs, itemsize = math.prod(spec.out_shape), spec.dtype.itemsize
    if name == "structured":
        cost = _structured_module().cost(extra, spec.trace, spec.diagonal)
        feature, pair, fb = (
            cost.feature_flops_per_example,
            cost.pair_flops,
            cost.feature_bytes_per_example,
        )
    elif name == "jacobian":
        fb = outputs * spec.num_params * itemsize
        pair = 2.0 * spec.num_params * _kept_size(spec)
        feature = (
            _flops(_jacobian_features, apply_fn, params0, x1[:1], extra) if with_flops else 0.0
        )
    else:
        fb = x1[0].size * x1.dtype.itemsize
        pair = outputs * _flops(_pushed, apply_fn, params0, x1[:1]) if with_flops else 0.0
        feature = outputs * _flops(_pulled, apply_fn, params0, x1[0]) if with_flops else 0.0
    fits = fb <= budget and (name != "products" or spec.num_params * itemsize <= budget)
    b, resident = _block_size(fb, spec, None, budget) if fits else (1, False)
    blocks1 = -(-spec.n1 // b)
    if name == "products":  # the VJP columns are recomputed for every block row
        featured = blocks1 * spec.n2
    elif resident:
        featured = spec.n1 + (0 if spec.symmetric else spec.n2)
    else:
        featured = spec.n1 + blocks1 * spec.n2
    if 0 in spec.diagonal:
        pairs = spec.n1
    elif spec.symmetric:
        pairs = spec.n1 * (spec.n1 + b) / 2
    else:
        pairs = spec.n1 * spec.n2
    flops = float(featured * feature + pairs * pair)
    slow = name == "jacobian" and with_flops and _has_convolution(apply_fn, params0, x1[:1])
    return Estimate(flops, int(fb), bool(fits), flops * (CONV_JACOBIAN_SLOWDOWN if slow else 1.0))


def _has_convolution(apply_fn, params0, xb) -> bool:
    """Whether the model's jaxpr (sub-jaxprs included) holds a convolution."""
    return _analysed(
        ("convolution",),
        (apply_fn, params0, xb),  # keyed on apply_fn's function and its arguments' shapes
        lambda: "conv_general_dilated" in str(jax.make_jaxpr(apply_fn)(params0, xb)),
    )


def _analysed(name, args, analyse):
    """analyse(), kept under name and the shapes and dtypes of args while the key is hashable."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (name, treedef, tuple(_aval(a) for a in leaves))
    try:
        hash(key)
    except TypeError:  # an unhashable function or static argument: analysed every time
        return analyse()
    if key not in _ANALYSES:
        if len(_ANALYSES) >= _MAX_ANALYSES:
            _ANALYSES.pop(next(iter(_ANALYSES)))
        _ANALYSES[key] = analyse()
    return _ANALYSES[key]


def _bytes_needed(name, estimate, spec) -> int:
    if name == "products":
        return max(estimate.feature_bytes, spec.num_params * spec.dtype.itemsize)
    return estimate.feature_bytes


def _kept_size(spec) -> int:
    """Entries of one pair of examples' block of K times the traced length (the einsum's work)."""
    size = 1
    for axis, length in enumerate(spec.out_shape, start=1):
        size *= length if axis in spec.trace or axis in spec.diagonal else length * length
    return size


def _block_size(feature_bytes, spec, batch_size, budget) -> tuple[int, bool]:
    """Rows per block, and whether every block's features fit the budget at once (else a block
    row and a column block at a time must)."""
    n = max(spec.n1, spec.n2)
    b = min(n, _DEFAULT_BLOCK if batch_size is None else batch_size)
    b = max(1, min(b, budget // (2 * max(feature_bytes, 1))))
    b1, b2 = min(b, spec.n1), min(b, spec.n2)
    stored = -(-spec.n1 // b1) * b1 + (0 if spec.symmetric else -(-spec.n2 // b2) * b2)
    return b, stored * feature_bytes <= budget


def _flops(fn, *args) -> float:
    """XLA's FLOP count of fn on args' shapes (lowered, not compiled); 0 where unreported."""
    static = tuple(a for a in args if isinstance(a, bool))
    arrays = tuple(a for a in args if not isinstance(a, bool))
    return _analysed(("flops", fn, static), arrays, lambda: _lowered_flops(fn, static, arrays))


def _aval(leaf):
    """A leaf's shape and dtype where it has them, else the leaf itself (a function, say)."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return (tuple(leaf.shape), jnp.dtype(leaf.dtype))
    if isinstance(leaf, (bool, int, float, complex)):
        return (type(leaf), leaf)
    return leaf


def _lowered_flops(fn, static, arrays) -> float:
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), arrays)
    lowered = jax.jit(lambda *a: fn(*a, *static)).lower(*shapes)
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


# ---------------------------------------------------------------- features and contractions


def _one(apply_fn, params, x):
    """f(params; x) of one example x (no batch axis)."""
    return apply_fn(params, x[None])[0]


def _jacobian_features(apply_fn, params0, xb, reverse):
    """(b, *out, P): each example's Jacobian, its parameter leaves flattened and concatenated."""

    def jacobian(x):
        jac = (jax.jacrev if reverse else jax.jacfwd)(lambda p: _one(apply_fn, p, x))(params0)
        shape = jax.eval_shape(_one, apply_fn, params0, x).shape
        return jnp.concatenate(
            [leaf.reshape(*shape, -1) for leaf in jax.tree_util.tree_leaves(jac)], axis=-1
        )

    return jax.vmap(jacobian)(xb)


def _pulled(apply_fn, params0, x):
    """J(x)ᵀ e for one output entry e of one example (the cost model's unit of "products")."""
    out, pullback = jax.vjp(lambda p: _one(apply_fn, p, x), params0)
    return pullback(jnp.ones_like(out))[0]


def _pushed(apply_fn, params0, xb):
    """J(xb) v for one parameter direction v (the cost model's unit of "products")."""
    return jax.jvp(lambda p: apply_fn(p, xb), (params0,), (params0,))[1]


def _features(method, extra, apply_fn, params0, xb):
    """One block's features: Jacobians, the inputs themselves ("products"), or structured."""
    if method == "jacobian":
        return _jacobian_features(apply_fn, params0, xb, extra)
    if method == "products":
        return xb
    return _structured_module().features(extra, apply_fn, params0, xb)


def _contract(method, extra, apply_fn, params0, f1, f2, trace, diagonal):
    """One pair of blocks' K block (b1, b2, ...) from their features."""
    if method == "structured":
        return _structured_module().contract(extra, f1, f2, trace, diagonal)
    if method == "jacobian":  # f (b, *out, P)
        first, second, result = _subscripts(f1.ndim - 1, trace, diagonal)
        total = jnp.einsum(f"{first}z,{second}z->{result}", f1, f2)
        shape = f1.shape[:-1]
    else:
        total, shape = _products_block(apply_fn, params0, f1, f2, trace, diagonal, extra)
    return total / _traced_size(shape, trace) if trace else total


def _products_block(apply_fn, params0, xb1, xb2, trace, diagonal, columns):
    """K block by J(xb1) (J(x2_j)ᵀ e) for each output entry e of each example of xb2."""
    out = jax.eval_shape(_one, apply_fn, params0, xb2[0]).shape
    size = math.prod(out)
    basis = jnp.eye(size, dtype=jax.eval_shape(_one, apply_fn, params0, xb2[0]).dtype)

    def column(args):
        x, e = args
        _, pullback = jax.vjp(lambda p: _one(apply_fn, p, x), params0)
        (v,) = pullback(e.reshape(out))
        return jax.jvp(lambda p: apply_fn(p, xb1), (params0,), (v,))[1]

    xs = jnp.repeat(xb2, size, axis=0)
    es = jnp.tile(basis, (xb2.shape[0], 1))
    pushed = jax.lax.map(column, (xs, es), batch_size=columns)  # rows index x2's outputs
    full = pushed.reshape(xb2.shape[0], *out, *pushed.shape[1:])
    first, second, result = _subscripts(1 + len(out), trace, diagonal)
    return jnp.einsum(f"{second}{first}->{result}", full), (xb2.shape[0], *out)


def _subscripts(ndim: int, trace: tuple[int, ...], diagonal: tuple[int, ...]):
    """einsum letters of the two Jacobians' output axes (batch first) and of the result."""
    letters = iter("abcdefghijklmnopqrstuvwxy")
    first, second, result = [], [], []
    for axis in range(ndim):
        a = next(letters)
        b = a if axis in trace or axis in diagonal else next(letters)
        first.append(a)
        second.append(b)
        result.extend([a] if axis in diagonal else [] if axis in trace else [a, b])
    return "".join(first), "".join(second), "".join(result)


def _traced_size(shape: tuple[int, ...], trace: tuple[int, ...]) -> int:
    return math.prod(shape[axis] for axis in trace)


def _mirror(spec: _Spec) -> str:
    """The einsum taking a K(x1, x2) block to the K(x2, x1) block: each pair of axes swapped."""
    first, second, result = _subscripts(1 + len(spec.out_shape), spec.trace, spec.diagonal)
    swap = dict(zip(first + second, second + first, strict=True))
    return f"{result}->{''.join(swap[c] for c in result)}"


# ------------------------------------------------------------------------------- programs


def _device_kernel(apply_fn, params0, x1, x2, spec, choice, extra) -> Array:
    """The kernel as a device array, from one compiled program per block shape (features of a
    block, contraction of a pair) called block by block: traceable, so inside a jit the blocks
    unroll into the caller's program. XLA's CPU backend runs a convolution inside a loop body
    (`lax.map`) an order of magnitude slower than outside one (measured: 10.2 s against 0.64 s
    for the features of 128 inputs of benchmarks/ntk_speed.py's CNN), hence no loop program."""
    blocks1, blocks2, pairs, b1, b2 = _blocks(x1, x2, spec, choice.batch_size)
    rows = list(range(blocks1.shape[0]))
    groups = _row_groups(
        [(apply_fn, params0)], [None], blocks1, blocks2, rows, pairs, choice, extra, spec
    )
    computed = [block for group in groups for _, _, block in group]
    return _assemble(computed, pairs, spec, b1, b2)


def _blocks(x1, x2, spec, b):
    """Both inputs cut into blocks, the block pairs to contract, and the two block sizes."""
    b1, b2 = min(b, spec.n1), min(b, spec.n2)
    blocks1 = _split(x1, b1)
    blocks2 = blocks1 if x2 is None else _split(x2, b2)
    return blocks1, blocks2, _pairs(blocks1.shape[0], blocks2.shape[0], spec), b1, b2


@partial(jax.jit, static_argnums=1)
def _split(x: Array, b: int) -> Array:
    """(n, ...) -> (ceil(n/b), b, ...), the last block padded with copies of the last input
    (sliced off at the end; a copy keeps a model that fails on zeros finite)."""
    pad = -x.shape[0] % b
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return x.reshape(x.shape[0] // b, b, *x.shape[1:])


def _pairs(blocks1: int, blocks2: int, spec: _Spec) -> np.ndarray:
    """The (i, j) block pairs to contract, row by row: the diagonal for a diagonal batch axis,
    j ≥ i for a symmetric kernel, else all."""
    if 0 in spec.diagonal:
        return np.stack([np.arange(blocks1)] * 2, axis=1)
    i, j = np.meshgrid(np.arange(blocks1), np.arange(blocks2), indexing="ij")
    keep = j >= i if spec.symmetric else np.ones_like(i, dtype=bool)
    return np.stack([i[keep], j[keep]], axis=1)


def _row_groups(placed, devices, blocks1, blocks2, rows, pairs, choice, extra, spec):
    """Per group of len(placed) block rows (row k of a group with placed[k], (apply_fn, params0)
    on devices[k], or None: where JAX puts it), the list of (i, j, K block) of their pairs, all
    dispatched before the group is handed over. Each block's features are computed once when
    they stay resident, else each block row's once and the column blocks' once per row."""
    kept = {}

    def features(blocks, j, k, keep):
        key = (blocks is blocks1, j, k)
        if key in kept:
            return kept[key]
        xb = blocks[j] if devices[k] is None else jax.device_put(blocks[j], devices[k])
        f = _block_features(*placed[k], xb, choice.method, extra)
        if keep:
            kept[key] = f
        return f

    for start in range(0, len(rows), len(placed)):
        group = []
        for k, i in enumerate(rows[start : start + len(placed)]):
            g1 = features(blocks1, i, k, keep=True)
            for j in pairs[pairs[:, 0] == i, 1]:
                g2 = features(blocks2, int(j), k, keep=choice.resident)
                block = _block_pair(
                    *placed[k], g1, g2, choice.method, extra, spec.trace, spec.diagonal
                )
                group.append((i, int(j), block))
            if not choice.resident:  # the row is done: hold one row and one column block only
                kept.pop((True, i, k))
        yield group


def _assemble(computed: list, pairs: np.ndarray, spec: _Spec, b1: int, b2: int) -> Array:
    """The (n1, n2, ...) kernel from the contracted pairs' blocks (mirrored when symmetric),
    each written into place by one program called per block. (One stack of all the blocks, or
    one program taking them all, compiles for minutes: 113 s for the 12403 blocks of n = 20000
    on 2 cores; the writes take 0.9 s.)"""
    if 0 in spec.diagonal:  # (b, ...) per block: the diagonal blocks only, one per block row
        return jnp.concatenate(computed)[: spec.n1]
    blocks1, blocks2 = -(-spec.n1 // b1), -(-spec.n2 // b2)
    if blocks1 == blocks2 == 1:  # one block: no writes (6 ms a call at n = 64 on 2 cores)
        return computed[0][: spec.n1, : spec.n2]
    shape = (blocks1 * b1, blocks2 * b2, *computed[0].shape[2:])
    full = jnp.zeros(shape, computed[0].dtype)
    mirror = _mirror(spec) if spec.symmetric else None
    for (i, j), block in zip(pairs.tolist(), computed, strict=True):
        rows, cols = np.int32(i * b1), np.int32(j * b2)
        full = _put(full, block, rows, cols, mirror if i != j else None)
    return full[: spec.n1, : spec.n2]


@partial(jax.jit, donate_argnums=0, static_argnums=4)
def _put(full, block, rows, cols, mirror):
    """Block (i, j) into the padded kernel at (rows, cols), and its mirror at (cols, rows)."""
    zeros = (jnp.zeros((), rows.dtype),) * (full.ndim - 2)  # one index dtype (x64: int64 zeros)
    full = jax.lax.dynamic_update_slice(full, block, (rows, cols, *zeros))
    if mirror is not None:
        full = jax.lax.dynamic_update_slice(full, jnp.einsum(mirror, block), (cols, rows, *zeros))
    return full


def _block_features(apply_fn, params0, xb, method, extra):
    """One block's features, compiled with the host's options (a block of 128 of the CNN 0.12 s
    against 0.18 s under XLA's own kernels); inside a caller's jit, where a nested jit takes no
    compiler options, without them."""
    args = (apply_fn, params0, xb, method, extra)
    options = _cpu_options()
    if options:
        try:
            return _compiled(_features_of_block, (3, 4), options)(*args)
        except ValueError as err:
            if "compiler_options" not in str(err):
                raise
    return _compiled(_features_of_block, (3, 4), ())(*args)


def _block_pair(apply_fn, params0, f1, f2, method, extra, trace, diagonal):
    # XLA's own kernels: the contraction's one large matmul ran faster under them (a pair of
    # blocks of 128 of the CNN: 0.019 s against 0.025 s with Eigen's; the MLP 1.8 vs 3.0 ms)
    jitted = _compiled(_contract_pair, (4, 5, 6, 7), ())
    return jitted(apply_fn, params0, f1, f2, method, extra, trace, diagonal)


def _features_of_block(apply_fn, params0, xb, method, extra):
    return _features(method, extra, apply_fn, params0, xb)


def _contract_pair(apply_fn, params0, f1, f2, method, extra, trace, diagonal):
    return _contract(method, extra, apply_fn, params0, f1, f2, trace, diagonal)


def _block_programs() -> tuple[Callable, Callable]:
    """The jitted programs of one block's features and of one pair's contraction, as compiled
    outside a caller's jit (their compile caches: tests)."""
    return (
        _compiled(_features_of_block, (3, 4), _cpu_options()),
        _compiled(_contract_pair, (4, 5, 6, 7), ()),
    )


def _cpu_options() -> tuple[tuple[str, str], ...]:
    return tuple(sorted(host.cpu_compiler_options().items()))


@functools.cache
def _compiled(fn, static_argnums, options):
    """fn jitted, compiled with the host's options (`jaxntk.host.cpu_compiler_options`: XLA's
    multithreaded Eigen kernels for convolutions and matmuls on the CPU)."""
    return jax.jit(fn, static_argnums=static_argnums, compiler_options=dict(options) or None)


def _host_kernel(apply_fn, params0, x1, x2, spec, choice, extra, output, progress):
    """Block row by block row into a host array or a memmap; the rows spread over the local
    devices (round robin) and over the processes (row i on process i mod count)."""
    blocks1, blocks2, pairs, b1, b2 = _blocks(x1, x2, spec, choice.batch_size)
    devices = jax.local_devices()
    placed = [jax.device_put((apply_fn, params0), d) for d in devices]
    rows = list(range(jax.process_index(), blocks1.shape[0], jax.process_count()))
    shape = _kernel_shape(spec)
    several = jax.process_count() > 1
    if isinstance(output, (str, Path)) and output != "host" and not several:
        out = np.lib.format.open_memmap(Path(output), mode="w+", dtype=spec.dtype, shape=shape)
    else:
        out = np.zeros(shape, spec.dtype)
    start, done = time.perf_counter(), 0
    for group in _row_groups(placed, devices, blocks1, blocks2, rows, pairs, choice, extra, spec):
        for i, j, block in group:
            _write(out, np.asarray(block), i, j, b1, b2, spec)
        done = min(done + len(placed), len(rows))
        if progress:
            print(
                f"[empirical_ntk] block row {done}/{len(rows)}  {choice.method}  "
                f"({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    if several:
        out = _gather(out, output)
    if isinstance(out, np.memmap):
        out.flush()
        return out
    return out if output is not None else jnp.asarray(out)


# ------------------------------------------------------------------------ the store on disk


def _is_store(output) -> bool:
    """A path that is not a .npy file: a kernel store (`jaxntk.store`)."""
    return isinstance(output, (str, Path)) and output != "host" and Path(output).suffix != ".npy"


def _resumed_choice(path: Path, method: str, batch_size: int | None) -> tuple[str, int | None]:
    """A resumed store keeps its method and block size (its rows then equal the first run's
    bit for bit); asking for others is refused."""
    stored = store.stored_choice(path)
    if stored is None:
        return method, batch_size
    block, stored_method = stored
    if method not in ("auto", stored_method) or batch_size not in (None, block):
        raise ValueError(
            f"the kernel store at {path} was computed with method {stored_method!r} and "
            f"batch_size {block}; got method={method!r}, batch_size={batch_size!r} (leave them "
            "unset to resume it, or choose another output path)"
        )
    return stored_method, block


def _stored_kernel(apply_fn, params0, x1, x2, spec, choice, extra, path, progress):
    """Block rows into a kernel store: this process's rows (i ≡ process index mod count) that
    have no record yet, each written, flushed and recorded as soon as it is done."""
    blocks1, blocks2, pairs, b1, _ = _blocks(x1, x2, spec, choice.batch_size)
    count, index = jax.process_count(), jax.process_index()
    description = _description(apply_fn, params0, x1, x2, spec)
    fingerprint = store.fingerprint_of(sorted(description.items()))
    diagonal_batch = 0 in spec.diagonal
    kwargs = dict(
        block=b1,
        symmetric=spec.symmetric and not diagonal_batch,
        diagonal_batch=diagonal_batch,
        method=choice.method,
        fingerprint=fingerprint,
        description=description,
        mirror=_mirror(spec) if spec.symmetric and not diagonal_batch else None,
    )
    shape = _kernel_shape(spec)
    if index == 0:
        writer, done = store.open_for_writing(path, shape, spec.dtype, create=True, **kwargs)
    _barrier("jaxntk-store-open", count)
    if index != 0:
        writer, done = store.open_for_writing(path, shape, spec.dtype, create=False, **kwargs)
    try:
        mine = list(range(index, blocks1.shape[0], count))
        finished = sorted(set(done) & set(mine))
        damaged = writer.store.verify(finished)
        if damaged:
            raise ValueError(
                f"the kernel store at {path} is damaged: block rows {damaged} no longer match "
                f"their checksums (delete their records, {path / 'rows'}/NNNNNN.json, to compute "
                "them again, or delete the store)"
            )
        todo = [i for i in mine if i not in set(finished)]
        _fill_store(
            apply_fn,
            params0,
            writer,
            todo,
            len(mine),
            (blocks1, blocks2),
            pairs,
            choice,
            extra,
            spec,
            progress,
        )
    finally:
        writer.close()
    _barrier("jaxntk-store-done", count)
    return store.KernelStore.open(path)


def _fill_store(
    apply_fn, params0, writer, todo, mine, blocks, pairs, choice, extra, spec, progress
):
    """Compute the block rows `todo` and write each one into the store; a progress line per row
    with the throughput and the time left (by block pairs, the unit of work)."""
    blocks1, blocks2 = blocks
    devices = jax.local_devices()
    placed = [jax.device_put((apply_fn, params0), d) for d in devices]
    work = {i: int(np.sum(pairs[:, 0] == i)) for i in todo}
    total_pairs, done_pairs, rows_done = sum(work.values()), 0, mine - len(todo)
    start = time.perf_counter()
    plan = _store_plan(choice, spec, blocks1.shape[1], blocks2.shape[1], blocks2.shape[0])

    def report(i: int) -> None:
        nonlocal done_pairs, rows_done
        done_pairs += work[i]
        rows_done += 1
        if progress:
            elapsed = time.perf_counter() - start
            rate = done_pairs / elapsed if elapsed > 0 else math.inf
            left = (total_pairs - done_pairs) / rate if rate > 0 else math.inf
            entries = done_pairs * blocks1.shape[1] * blocks2.shape[1]
            print(
                f"[empirical_ntk] block row {rows_done}/{mine}  {choice.method}  "
                f"{elapsed:.1f} s, {entries / max(elapsed, 1e-9):.3g} kernel entries/s, "
                f"~{left:.0f} s left  (store {writer.store.path.name}, process "
                f"{jax.process_index()})",
                file=sys.stderr,
                flush=True,
            )

    # One thread writes the finished rows (copies, page faults, checksums) while this one goes
    # on computing: XLA's CPU client runs each pair's program inside its call, so the writes
    # would otherwise wait for the computing and the computing for the writes. (Where the
    # cores are all busy computing it gains nothing: 1 process at n = 12000 on 2 cores took
    # 21.1 s with the writes inline, 2.3 s of CPU in them, and 21.3 s with the thread.) At
    # most `_WRITES_QUEUED` rows wait, so that their strips stay within the store's memory.
    pending: collections.deque = collections.deque()
    # (On an error the executor's exit still waits for the rows already handed over: they are
    # written and recorded.)
    sizes = (blocks1.shape[1], blocks2.shape[1])
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxntk-store") as pool:
        rows = _chunked_rows(placed, blocks1, blocks2, todo, pairs, choice, extra, spec, plan)
        for i, row in rows:
            pending.append((i, pool.submit(_write_row, writer, i, row, spec, *sizes)))
            while len(pending) > _WRITES_QUEUED:
                j, written = pending.popleft()
                written.result()
                report(j)
        while pending:
            j, written = pending.popleft()
            written.result()
            report(j)


_STORE_BYTES = 1 << 30  # what a store's process may hold: a chunk's strips, cached features
_WRITES_QUEUED = 2  # finished rows waiting for the store's writing thread


def _store_plan(choice, spec, b1, b2, blocks2) -> tuple[int, int]:
    """(block rows computed together, column blocks whose features stay cached) for a store,
    within `_STORE_BYTES` (or the memory budget): a quarter for the chunk's finished strips (at
    most 8 rows: a kill loses at most a chunk's work), the rest for features."""
    feature = choice.estimates[choice.method].feature_bytes * max(b1, b2)
    strip = b1 * spec.n2 * math.prod(_kernel_shape(spec)[2:]) * spec.dtype.itemsize
    budget = min(_STORE_BYTES, choice.memory_budget)
    chunk = int(max(1, min(8, budget // 4 // max(1, strip + feature))))
    cached = int(max(0, min(blocks2, (budget - chunk * (strip + feature)) // max(1, feature))))
    return chunk, cached


def _chunked_rows(placed, blocks1, blocks2, rows, pairs, choice, extra, spec, plan):
    """(i, [(j, K block)]) for each block row of `rows`, computed `chunk` rows at a time. The
    features of the last `cached` column blocks (those every later row still needs, j ≥ i) are
    computed once and kept; the others once per chunk that needs them, so a process holds a
    bounded set of features and strips, never every block's. A chunk's rows are handed over
    once the next chunk is dispatched: the writing overlaps the computing."""
    chunk, cached = plan
    first_cached = blocks2.shape[0] - cached
    kept: dict[tuple[bool, int, int], Any] = {}

    def features(blocks, j, k, keep):
        key = (blocks is blocks1, j, k)
        if key in kept:
            return kept[key]
        f = _block_features(*placed[k], _on(blocks[j], placed, k), choice.method, extra)
        if keep:
            kept[key] = f
        return f

    previous: dict[int, list] = {}
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        device = {i: k % len(placed) for k, i in enumerate(part)}
        same = spec.symmetric  # a row block's features are a column block's
        row_features = {
            i: features(blocks2 if same else blocks1, i, device[i], same and i >= first_cached)
            for i in part
        }
        wanted = {i: set(pairs[pairs[:, 0] == i, 1].tolist()) for i in part}
        out: dict[int, list] = {i: [] for i in part}
        for j in sorted(set().union(*wanted.values())):
            column: dict[int, Any] = {}  # this column block's features, once per device
            for i in part:
                if j in wanted[i]:
                    k = device[i]
                    if same and j == i:
                        g2 = row_features[i]
                    else:
                        if k not in column:
                            column[k] = features(blocks2, j, k, j >= first_cached)
                        g2 = column[k]
                    block = _block_pair(
                        *placed[k],
                        row_features[i],
                        g2,
                        choice.method,
                        extra,
                        spec.trace,
                        spec.diagonal,
                    )
                    out[i].append((j, block))
        # this chunk is dispatched: the previous one is written while it computes
        yield from previous.items()
        previous = out
    yield from previous.items()


def _on(xb, placed, k):
    """A block of inputs on the k-th local device (where it already is with one device)."""
    return xb if len(placed) == 1 else jax.device_put(xb, jax.local_devices()[k])


def _write_row(writer, i, row, spec, b1, b2) -> None:
    writer.write_row(i, _strip(i, row, spec, b1, b2))


def _strip(i, row, spec, b1, b2) -> np.ndarray:
    """Block row i's computed blocks side by side, cut to the kernel's rows and columns: from
    its first block's column on (j ≥ i for a symmetric kernel)."""
    row = sorted(row, key=lambda pair: pair[0])
    r = min(b1, spec.n1 - i * b1)
    if 0 in spec.diagonal:
        return np.asarray(row[0][1])[:r]
    first = row[0][0] * b2
    strip = np.concatenate([np.asarray(block) for _, block in row], axis=1)
    return strip[:r, : spec.n2 - first]


def _description(apply_fn, params0, x1, x2, spec) -> dict:
    """What a store's kernel was computed from, readable (the manifest's "arguments"): the model
    function by name (a changed body under the same name is not seen), the arrays by SHA-256."""
    fn = apply_fn.func if isinstance(apply_fn, Partial) else apply_fn
    bound = getattr(fn, "__self__", None)
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    bound_args = (apply_fn.args, apply_fn.keywords) if isinstance(apply_fn, Partial) else ()
    leaves, treedef = jax.tree_util.tree_flatten(params0)

    def digest(tree) -> str:
        arrays = [np.asarray(a) if hasattr(a, "shape") else a for a in jax.tree.leaves(tree)]
        return store.fingerprint_of([str(jax.tree.structure(tree)), *arrays])

    return {
        "model": name + (f" of {bound!r}" if bound is not None else ""),
        "model_arguments": digest(bound_args),
        "params": digest(params0),
        "num_params": spec.num_params,
        "x1": f"{tuple(x1.shape)} {x1.dtype} {digest(x1)}",
        "x2": "x1" if x2 is None else f"{tuple(x2.shape)} {x2.dtype} {digest(x2)}",
        "out_shape": list(spec.out_shape),
        "trace_axes": list(spec.trace),
        "diagonal_axes": list(spec.diagonal),
        "dtype": np.dtype(spec.dtype).str,
        "treedef": str(treedef),
        "leaves": len(leaves),
    }


def _barrier(name: str, count: int) -> None:
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _kernel_shape(spec: _Spec) -> tuple[int, ...]:
    shape = [spec.n1] + ([] if 0 in spec.diagonal else [spec.n2])
    for axis, length in enumerate(spec.out_shape, start=1):
        shape += [] if axis in spec.trace else [length] if axis in spec.diagonal else [length] * 2
    return tuple(shape)


def _write(out, block, i, j, b1, b2, spec) -> None:
    """Block (i, j) into the result, and its mirror (j, i) for a symmetric kernel."""
    if 0 in spec.diagonal:
        rows = slice(i * b1, min((i + 1) * b1, spec.n1))
        out[rows] = block[: rows.stop - rows.start]
        return
    rows = slice(i * b1, min((i + 1) * b1, spec.n1))
    cols = slice(j * b2, min((j + 1) * b2, spec.n2))
    out[rows, cols] = block[: rows.stop - rows.start, : cols.stop - cols.start]
    if spec.symmetric and i != j:
        mirrored = np.einsum(_mirror(spec), block)
        out[cols, rows] = mirrored[: cols.stop - cols.start, : rows.stop - rows.start]


def _gather(local: np.ndarray, output):
    """The whole kernel on every process from each process's block rows (the others' entries
    are zero in `local`); a path is written by process 0."""
    from jax.experimental import multihost_utils

    total = np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)
    if isinstance(output, (str, Path)) and output != "host":
        if jax.process_index() == 0:
            np.save(Path(output), total)
    return total
