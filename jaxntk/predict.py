"""Closed-form dynamics of the linearized model trained by gradient descent on the squared error.

The order-1 Taylor model f_lin(θ; x) = f(θ0; x) + J(x)(θ − θ0) (`jaxntk.linearize`) trained by
full-batch gradient descent on the trainer's loss (`jaxntk.train`, variant "ntk", optimizer
"sgd"), the mean over all N = n·|out| output entries of the training set,

    L(θ) = (1/N) ‖f_lin(θ; X) − Y‖²,      θ_{t+1} = θ_t − η ∇L(θ_t),

moves its outputs by the empirical NTK K = J(X) J(X)ᵀ (`jaxntk.empirical_ntk` with
trace_axes=(), flattened to N × N). With a = 2η/N, r_0 = f(θ0; X) − Y and K = V diag(λ) Vᵀ:

    f_t(X)  = Y + V diag((1 − aλ)^t) Vᵀ r_0
    f_t(X') = f_0(X') − K(X', X) V diag(g_t(λ)) Vᵀ r_0,    g_t(λ) = (1 − (1 − aλ)^t) / λ  (→ a t)

and, for gradient flow dθ/dt = −η ∇L, (1 − aλ)^t becomes exp(−aλt). At t = ∞ the factors tend to
0 and 1/λ on the range of K (when aλ_max < 2, or always for the flow): the train residual keeps
only its part in K's null space, and the test output is kernel regression with the
pseudo-inverse, f_0(X') + K(X', X) K⁺ (Y − f_0(X)). This is the job of neural-tangents'
`predict.gradient_descent_mse`, here with the trainer's learning-rate convention (no ½ in the
loss, a mean over outputs) so that step t here is step t of `jaxntk.train`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxntk import linalg, ntk
from jaxntk._checks import check_int

Array = jax.Array
PyTree = Any

__all__ = ["METHODS", "NTKPrediction", "ntk_predict"]

METHODS = ("eigh", "lanczos", "matrix_free")
"""Ways of `ntk_predict`: "eigh" (the dense kernel's eigendecomposition), "lanczos" (Lanczos on
the dense kernel, Cholesky at t = ∞ with a ridge: no O(N³) eigendecomposition) and "matrix_free"
(Lanczos on the NTK operator J(Jᵀ·): the kernel is never formed)."""


class NTKPrediction(NamedTuple):
    """Outputs of the linearized model at the requested steps (`ntk_predict`).

    Attributes:
        steps: the steps (or times, for the flow) as floats; inf for t = ∞.
        train: f_t(x_train), shaped (*steps.shape, n, *out).
        test: f_t(x_test), shaped (*steps.shape, n_test, *out); None without x_test.
    """

    steps: Array
    train: Array
    test: Array | None


def ntk_predict(
    apply_fn: Callable[[PyTree, Array], Array],
    params0: PyTree,
    x_train: Array,
    y_train: Array,
    x_test: Array | None = None,
    *,
    steps: float | Sequence[float],
    lr: float = 1.0,
    flow: bool = False,
    batch_size: int | None = None,
    trace_axes: Sequence[int] = (),
    method: str = "eigh",
    ridge: float = 0.0,
    memory_budget: int | None = None,
    tol: float = 1e-6,
    max_iters: int | None = None,
) -> NTKPrediction:
    """Outputs of the linearized model after t steps of gradient descent on the MSE, in closed form.

    The model is f(θ0) + J(θ − θ0) trained from θ0 on (x_train, y_train) with the loss
    (1/N) ‖f(X) − Y‖² over all N = y_train.size outputs and learning rate `lr`, exactly the
    steps of `jaxntk.train(jaxntk.TaylorModel(apply_fn, params0), task, "ntk", lr=lr)` with
    the "sgd" optimizer (module docstring). One eigendecomposition of the empirical NTK serves
    every step: the kernels come from the engine's block programs (`jaxntk.empirical_ntk`), the
    algebra is one program compiled once per shape.

    With trace_axes=() the kernel is the full output kernel (N × N, N = n·|out|: the exact
    dynamics); with every output axis traced it is K_tr ⊗ I (K_tr the n × n traced kernel, each
    output column moving on its own), as neural-tangents' `predict.gradient_descent_mse` does
    with a traced kernel: |out|² times less memory, |out|³ less time in the eigendecomposition.
    `ridge` ρ adds ρI to the training kernel (neural-tangents' `diag_reg` in absolute scale).
    method "eigh" forms the kernel and decomposes it: its bytes (three N × N matrices and the
    test kernel) are checked against `memory_budget` before any work. method "lanczos" forms
    the kernel (two N × N matrices checked) but no eigendecomposition: every factor comes from
    one Lanczos run per output column (`jaxntk.linalg.matrix_function`) and t = ∞ with a ridge
    from a Cholesky solve. method "matrix_free" never forms it: the same Lanczos run on the
    operator J(Jᵀ·) (`jaxntk.linalg.ntk_operator`). The Lanczos runs stop when the outputs
    change by at most `tol` (relative) over 10 steps, or after `max_iters` products; at t = ∞
    "matrix_free" needs a ridge > 0 (or a well-conditioned kernel), its iterations growing
    as √(λ_max/ρ).

    Args:
        apply_fn: f(params, x) -> (b, *out) for a batch x of shape (b, ...).
        params0: the parameters θ0 (the linearization point and the start of training).
        x_train: (n, ...) training inputs.
        y_train: (n, *out) float targets, shaped like f(params0, x_train).
        x_test: (n_test, ...) inputs to predict on as well (optional).
        steps: a step count t ≥ 0 or a sequence of them, ints for gradient descent, floats for
            the flow; `math.inf` for the limit t → ∞.
        lr: the learning rate η > 0.
        flow: gradient flow dθ/dt = −η ∇L instead of discrete steps (then t is a time).
        batch_size: examples per block of the NTK (`jaxntk.empirical_ntk`, method "auto"; default
            its own, from its memory budget) and of the "matrix_free" operator (default 256).
        trace_axes: () for the full output kernel, or every output axis (e.g. (-1,)) for the
            traced one.
        method: one of `METHODS`: "eigh" (the dense kernel's eigendecomposition), "lanczos"
            (Lanczos on the dense kernel) or "matrix_free" (Lanczos on NTK-vector products).
        ridge: ρ ≥ 0 added to the training kernel's diagonal.
        memory_budget: bytes the kernel work may take (default
            `jaxntk.ntk.default_memory_budget()`): "eigh" and "lanczos" raise over it,
            "matrix_free" keeps the Jacobian features in memory when they fit it and recomputes
            them otherwise.
        tol: "lanczos", "matrix_free": the relative change of the outputs at which they stop.
        max_iters: "lanczos", "matrix_free": most products with the kernel (default
            min(N, 300)).

    Returns:
        An `NTKPrediction`; its arrays lead with the shape of `steps` (none for one step count).
        At t = ∞ gradient descent has a limit only for lr < N/λ_max (λ_max the NTK's largest
        eigenvalue): otherwise the outputs there are NaN.

    Raises:
        ValueError: if y_train is not a finite float array shaped like the model's outputs on
            x_train (integer class labels: one-hot encode them), steps are negative or, for
            gradient descent, not whole numbers, lr is not a finite float > 0, ridge < 0,
            trace_axes trace some output axes but not all, an unknown method, or method "eigh"
            or "lanczos" over memory_budget (before any kernel work; the message names the ways
            out).
        TypeError: if flow is not a bool.

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxntk as jn
        >>> def f(w, x):                       # a linear model: it is its own linearization
        ...     return x @ w
        >>> x, y = jnp.eye(2), jnp.array([1.0, 3.0])
        >>> out = jn.ntk_predict(f, jnp.zeros(2), x, y, steps=[0, 1, math.inf], lr=0.5)
        >>> out.train                          # K = I, n = 2: each step halves the residual
        Array([[0. , 0. ],
               [0.5, 1.5],
               [1. , 3. ]], dtype=float32)
    """
    if batch_size is not None:
        check_int("batch_size", batch_size, low=1)
    if not isinstance(flow, bool):
        raise TypeError(f"flow must be a bool, got {type(flow).__name__}")
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {apply_fn!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite float > 0, got {lr!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    ridge = linalg._check_ridge(ridge)
    t = _check_steps(steps, flow)
    x_train, f_train, y, x_test = _check_data(apply_fn, params0, x_train, y_train, x_test)
    traced = linalg._traced(trace_axes, f_train.ndim)
    trace = tuple(range(1, f_train.ndim)) if traced else ()
    if not isinstance(apply_fn, Partial):
        apply_fn = Partial(apply_fn)
    y = jnp.asarray(y, dtype=f_train.dtype)
    times = jnp.asarray(t, dtype=f_train.dtype)
    args = (apply_fn, params0, x_train, y, x_test, times.reshape(-1), lr, flow, ridge)
    if method == "matrix_free":
        check_int("max_iters", 1 if max_iters is None else max_iters, low=1)
        op = linalg.ntk_operator(
            apply_fn,
            params0,
            x_train,
            trace_axes=trace,
            batch_size=256 if batch_size is None else batch_size,
            memory_budget=memory_budget,
        )
        f0_test = None if x_test is None else _apply(apply_fn, params0, x_test)
        cross = None if x_test is None else op.cross(x_test)
        f0 = _apply(apply_fn, params0, x_train)
        train, test = _lanczos_predict(op, cross, f0, f0_test, *args[3:], tol, max_iters)
    else:
        _check_eigh_budget(y, x_test, traced, memory_budget, method)
        kernels = _kernels(apply_fn, params0, x_train, x_test, trace, batch_size)
        f0 = _apply(apply_fn, params0, x_train)
        f0_test = None if x_test is None else _apply(apply_fn, params0, x_test)
        cholesky = ridge > 0 and x_test is not None and bool(np.any(np.isinf(t)))
        if method == "eigh":
            lr = jnp.asarray(lr, f_train.dtype)
            train, test = _ntk_predict(
                *kernels, f0, f0_test, y, times.reshape(-1), lr, ridge, flow, trace, cholesky
            )
        else:
            train, test = _dense_lanczos_predict(
                kernels, f0, f0_test, *args[3:], tol, max_iters, cholesky
            )
    lead = times.shape
    train = train.reshape(*lead, *train.shape[1:])
    test = None if test is None else test.reshape(*lead, *test.shape[1:])
    return NTKPrediction(times, train, test)


@jax.jit
def _apply(apply_fn, params0, x):
    """f(θ0; x) as one program (eager, every operation of the model compiles on its own)."""
    return apply_fn(params0, x)


def _check_data(apply_fn, params0, x_train, y_train, x_test):
    """(x_train, the shape of f(x_train), y, x_test): ValueError on bad data, before any work."""
    x_train = jnp.asarray(x_train)
    f_train = jax.eval_shape(apply_fn, params0, x_train)
    y = np.asarray(y_train) if not isinstance(y_train, jax.Array) else y_train
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise ValueError(
            f"y_train must hold float targets for the mean squared error, got dtype {y.dtype} "
            "(one-hot encode integer class labels)"
        )
    if y.ndim < 1 or y.shape[0] != x_train.shape[0]:
        raise ValueError(
            f"y_train has {y.shape[0] if y.ndim else 0} rows but x_train has {x_train.shape[0]}"
        )
    if y.shape != f_train.shape:
        raise ValueError(
            f"y_train has shape {y.shape} but the model's outputs on x_train have shape "
            f"{f_train.shape}"
        )
    if not np.all(np.isfinite(np.asarray(y))):
        raise ValueError("y_train must be finite, got NaN or inf entries")
    if x_test is not None:
        x_test = jnp.asarray(x_test)
        if x_test.ndim < 1 or x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"x_test must have x_train's trailing shape {x_train.shape[1:]}, got {x_test.shape}"
            )
    return x_train, f_train, y, x_test


def _check_eigh_budget(y, x_test, traced, memory_budget, method) -> None:
    """ValueError before any kernel work when the kernel and its algebra would exceed the budget:
    "eigh" the kernel, its symmetrized copy and its eigenvectors (N × N each), "lanczos" the
    kernel and a Cholesky factor; both the test kernel (twice)."""
    n = y.shape[0]
    size = n if traced else y.size
    n_test = 0 if x_test is None else x_test.shape[0] * (size // n)
    copies = 3 if method == "eigh" else 2
    need = linalg.kernel_bytes(size, dtype=y.dtype, copies=copies)
    need += linalg.kernel_bytes(n_test, size, y.dtype, copies=2)
    kind = "traced" if traced else "full output"
    traced_bytes = linalg._human(linalg.kernel_bytes(n, dtype=y.dtype, copies=copies))
    ways = (
        "Ways out: trace_axes=(-1,) (the traced n × n kernel"
        + ("" if traced else f", {traced_bytes}")
        + '), method="matrix_free" (Lanczos on NTK-vector products: the kernel is never '
        "formed), or the kernel in a memmap (jaxntk.empirical_ntk(..., output=path)) and "
        "jaxntk.linalg's solve, matrix_function and top_eigh on it; or a larger memory_budget."
    )
    linalg.check_budget(
        f'method "{method}" on the {kind} kernel ({size} × {size})',
        need,
        memory_budget,
        size=size,
        ways=ways,
    )


def _check_steps(steps: Any, flow: bool) -> np.ndarray:
    t = np.asarray(steps, dtype=np.float64)
    if t.ndim > 1 or np.any(np.isnan(t)) or np.any(t < 0):
        raise ValueError(f"steps must be a number ≥ 0 or a 1-D sequence of them, got {steps!r}")
    finite = t[np.isfinite(t)]
    if not flow and np.any(finite != np.round(finite)):
        raise ValueError(
            f"steps of gradient descent must be whole numbers (or math.inf), got {steps!r}; "
            "pass flow=True for gradient flow at any time"
        )
    return t


def _kernels(apply_fn, params0, x_train, x_test, trace, batch_size):
    """K(X, X) and K(X', X) as matrices, from the engine's block programs (outside any jit: one
    program per block shape, not one unrolled program of every block pair)."""

    def kernel(x1, x2):
        k = ntk.empirical_ntk(apply_fn, params0, x1, x2, trace_axes=trace, batch_size=batch_size)
        return _as_matrix(k)

    return kernel(x_train, None), None if x_test is None else kernel(x_test, x_train)


@partial(jax.jit, static_argnums=(8, 9, 10))
def _ntk_predict(k_train, k_cross, f0, f0_test, y, t, lr, ridge, flow, trace, cholesky):
    """The algebra of method "eigh": one eigendecomposition of K + ρI for every step."""
    evals, evecs = jnp.linalg.eigh(0.5 * (k_train + k_train.T))
    evals = evals + ridge
    cols = _columns(y, trace)  # (N, 1), or (n, |out|) traced: one column per output
    coeff = evecs.T @ (f0.reshape(cols.shape) - cols)
    a = 2.0 * lr / y.size
    cutoff = _cutoff(evals, ridge)
    learned, gain = _factors(evals[None, :], t[:, None], a, flow, cutoff)  # (T, N) each
    train = cols[None] + jnp.einsum("kj,tjc->tkc", evecs, (1.0 - learned)[..., None] * coeff[None])
    train = train.reshape(t.shape[0], *y.shape)
    if k_cross is None:
        return train, None
    gained = jnp.einsum("kj,tjc->tkc", evecs, gain[..., None] * coeff[None])
    if cholesky:  # t = ∞ with a ridge: K + ρI is positive definite, and Cholesky more accurate
        factor = jax.scipy.linalg.cho_factor(k_train + ridge * jnp.eye(k_train.shape[0]))
        limit = jax.scipy.linalg.cho_solve(factor, evecs @ coeff)
        gained = jnp.where(jnp.isinf(t)[:, None, None], limit[None], gained)
    test = _columns(f0_test, trace)[None] - jnp.einsum("kj,tjc->tkc", k_cross, gained)
    return train, test.reshape(t.shape[0], *f0_test.shape)


def _cutoff(evals, ridge):
    """Eigenvalues at or below it count as K's null space (t = ∞): eps-level ones without a
    ridge; none with a ridge (K + ρI is positive definite: every mode learns its target)."""
    eps_level = jnp.max(jnp.abs(evals)) * evals.shape[-1] * jnp.finfo(evals.dtype).eps
    return jnp.where(ridge > 0, 0.0, eps_level)


def _columns(y, trace):
    """Outputs (n, *out) as the kernel's columns: (n·|out|, 1), or (n, |out|) when traced."""
    return y.reshape(y.shape[0], -1) if trace else y.reshape(-1, 1)


def _lanczos_predict(k, cross, f0, f0_test, y, x_test, t, lr, flow, ridge, tol, iters):
    """ntk_predict's outputs from one Lanczos run per column on the kernel k (a matrix or the NTK
    operator); `cross` applies K(X', X)."""
    n = k.n if isinstance(k, linalg.NTKOperator) else k.shape[0]
    trace = (1,) if n == y.shape[0] and y.size > n else ()
    cols = _columns(y, trace)
    residual0 = f0.reshape(cols.shape) - cols
    a = 2.0 * lr / y.size
    fns = []
    for step in np.asarray(t).tolist():
        fns += [partial(_lanczos_factor, step, a, flow, ridge, i) for i in (0, 1)]
    out = linalg.matrix_function(k, residual0, fns, tol=tol, max_iters=iters)
    train = cols[None] + jnp.stack(out[0::2])
    train = train.reshape(t.shape[0], *y.shape)
    if cross is None:
        return train, None
    gains = jnp.concatenate(out[1::2], axis=1)  # (N, T·columns): one pass over the test inputs
    pushed = cross(gains).reshape(-1, t.shape[0], cols.shape[1])
    test = _columns(f0_test, trace)[None] - jnp.moveaxis(pushed, 1, 0)
    return train, test.reshape(t.shape[0], *f0_test.shape)


def _dense_lanczos_predict(kernels, f0, f0_test, y, x_test, t, lr, flow, ridge, tol, iters, chol):
    """method "lanczos": Lanczos on the kernel in memory for the finite steps, and t = ∞ with a
    ridge by a Cholesky solve (`jaxntk.linalg.solve`), as neural-tangents does."""
    k_train, k_cross = kernels
    cross = None if k_cross is None else partial(_dense_product, k_cross)
    finite = np.isfinite(np.asarray(t)) if chol else np.ones(t.shape, bool)
    steps, limits = np.flatnonzero(finite), np.flatnonzero(~finite)
    train = jnp.zeros((t.shape[0], *y.shape), y.dtype)
    test = None if k_cross is None else jnp.zeros((t.shape[0], *f0_test.shape), y.dtype)
    if steps.size:
        part = _lanczos_predict(
            k_train, cross, f0, f0_test, y, x_test, t[steps], lr, flow, ridge, tol, iters
        )
        train = train.at[steps].set(part[0])
        test = None if test is None else test.at[steps].set(part[1])
    if limits.size:  # with a ridge: train at t = ∞ is y, the test output kernel ridge regression
        trace = (1,) if k_train.shape[0] == y.shape[0] and y.size > y.shape[0] else ()
        cols = _columns(y, trace)
        alpha = linalg.solve(
            k_train,
            f0.reshape(cols.shape) - cols,
            ridge=ridge,
            method="cholesky",
            memory_budget=2**62,
        )
        limit = _columns(f0_test, trace) - k_cross @ alpha
        train = train.at[limits].set(jnp.broadcast_to(y, (limits.size, *y.shape)))
        limit = jnp.broadcast_to(limit.reshape(f0_test.shape), (limits.size, *f0_test.shape))
        test = test.at[limits].set(limit)
    return train, test


@jax.jit
def _dense_product(k, v):
    return k @ v


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _lanczos_factor(step, a, flow, ridge, which, theta):
    """The train factor 1 − learned (which 0) or the gain (which 1) at Ritz values θ."""
    lam = theta + ridge
    cutoff = _cutoff(lam, ridge)
    learned, gain = _factors(lam, jnp.asarray(step, lam.dtype), a, flow, cutoff)
    return 1.0 - learned if which == 0 else gain


def _factors(lam, t, a, flow, cutoff):
    """(1 − (1 − aλ)^t, (1 − (1 − aλ)^t)/λ), or with exp(−aλt) for the flow; their limits at t = ∞.

    The fraction learned is computed as −expm1(t log1p(−aλ)) while 1 − aλ > 0, so that small
    eigenvalues keep their precision; 0/0 at λ = 0 is its limit a·t.
    """
    finite = jnp.isfinite(t)
    ts = jnp.where(finite, t, 0.0)
    if flow:
        learned = -jnp.expm1(-a * lam * ts)
    else:
        base = 1.0 - a * lam
        positive = base > 0
        smooth = -jnp.expm1(ts * jnp.log1p(-a * jnp.where(positive, lam, 0.0)))
        odd = jnp.mod(ts, 2.0) == 1.0
        power = jnp.where(odd & (base < 0), -1.0, 1.0) * jnp.power(jnp.abs(base), ts)
        learned = jnp.where(positive, smooth, 1.0 - power)
    nonzero = lam != 0
    gain = jnp.where(nonzero, learned / jnp.where(nonzero, lam, 1.0), a * ts)
    kept = lam > cutoff
    # gradient descent with aλ ≥ 2 oscillates or diverges along λ: no limit
    limit = jnp.where(kept, 1.0, 0.0)
    if not flow:
        limit = jnp.where(a * lam >= 2, jnp.nan, limit)
    learned = jnp.where(finite, learned, limit)
    gain = jnp.where(finite, gain, limit / jnp.where(kept, lam, 1.0))
    return learned, gain


def _as_matrix(k: Array) -> Array:
    """A full kernel (n1, n2, o1, o1', o2, o2', ...) as the (n1·|out|, n2·|out|) matrix whose
    rows and columns follow the row-major order of the outputs (n, *out)."""
    first, second = list(range(0, k.ndim, 2)), list(range(1, k.ndim, 2))
    k = jnp.transpose(k, first + second)
    rows = math.prod(k.shape[: len(first)])
    return k.reshape(rows, -1)
