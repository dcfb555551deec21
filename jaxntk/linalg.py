"""The algebra of big kernels: in memory, in a memmap, or matrix-free from NTK-vector products.

A kernel here is a symmetric positive semi-definite N × N matrix K given one of three ways:

- a jax or numpy array (N, N) in memory;
- a `numpy.memmap` (or any numpy array) on disk, e.g. `jaxntk.empirical_ntk(..., output="k.npy")`
  read back with `np.load(path, mmap_mode="r")`: its products stream block rows of it;
- a `jaxntk.store.KernelStore`, what `jaxntk.empirical_ntk(..., output=folder)` returns: its
  products read tiles of rows from disk into memory (no mapping, so the resident set stays at a
  tile and the vectors however large the kernel);
- a linear operator: a callable V ↦ K V on (N, l) blocks, with its size `n` passed alongside,
  e.g. the empirical NTK as J (Jᵀ V) from `ntk_operator`, when K itself is never formed.

On any of them:

- `solve`: (K + ρ I)⁻¹ B by conjugate gradients (every form; one Krylov space per column of B,
  all columns in each product) or by a Cholesky factorization, blocked over tiles of a memmap;
- `lanczos` and `matrix_function`: f(K) B from the Lanczos decomposition K Q ≈ Q T of each column
  (full reorthogonalization): ‖b‖ Q f(T) e₁, the way `jaxntk.predict.ntk_predict` applies
  (1 − aλ)^t, exp(−aλt) and 1/λ without an eigendecomposition of K;
- `top_eigh`: the top-k eigenpairs by randomized block subspace iteration with Rayleigh-Ritz;
- `trace`: tr K, exact from the diagonal of a matrix, by Hutchinson's estimate for an operator;
- `effective_rank`: (tr K)² / ‖K‖_F²; `spectral_density`: the eigenvalue density by stochastic
  Lanczos quadrature; `alignment`: the centred kernel-target alignment, streamed.

Every function that forms or factorizes an N × N matrix estimates its bytes first
(`kernel_bytes`) and raises a ValueError naming `memory_budget` before any work when they exceed
it (`check_budget`). The Krylov methods keep O(N·l·iterations) numbers, never N².

Why our own: lineax (CG, Cholesky; no Lanczos, no matrix functions, its operators jax-only),
matfree (Lanczos, matrix functions; jax-only) and scipy.sparse.linalg (host, float64 inner
products, one column per call) each cover part; none of them runs one Krylov space per column
of a block with a host memmap or a jitted NTK product behind it. What is here is a few dozen
lines of each algorithm on jax.numpy, with no dependency beyond the core ones.
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

from jaxntk import ntk
from jaxntk._checks import check_int
from jaxntk.store import KernelStore

Array = jax.Array
PyTree = Any
Kernel = Any  # a jax/numpy array (N, N), a numpy memmap, a KernelStore, or a callable V ↦ K V

__all__ = [
    "NTK_MODES",
    "SOLVE_METHODS",
    "KrylovInfo",
    "LanczosBasis",
    "NTKOperator",
    "SolveInfo",
    "SpectralDensity",
    "alignment",
    "check_budget",
    "effective_rank",
    "kernel_bytes",
    "lanczos",
    "matrix_function",
    "ntk_operator",
    "solve",
    "spectral_density",
    "top_eigh",
    "trace",
]

SOLVE_METHODS = ("cg", "cholesky")
"""Ways of `solve`: "cg" (conjugate gradients, any kernel form) and "cholesky" (a factorization
of the matrix: jax's in memory, blocked over tiles for a numpy array or memmap)."""

_HOST_TILE_BYTES = 1 << 26  # 64 MiB: rows of a host matrix read per block of a product


def kernel_bytes(rows: int, cols: int | None = None, dtype: Any = jnp.float32, copies=1) -> int:
    """Bytes of `copies` dense (rows, cols) matrices of `dtype` (cols defaults to rows).

    Example:
        >>> from jaxntk.linalg import kernel_bytes
        >>> kernel_bytes(40000) / 1e9        # the full output kernel of n = 4000, 10 outputs
        6.4
        >>> kernel_bytes(100, 10, "float64", copies=2)
        16000
    """
    cols = rows if cols is None else cols
    return int(rows) * int(cols) * np.dtype(dtype).itemsize * int(copies)


def check_budget(what: str, nbytes: int, memory_budget: int | None, *, size: int, ways: str) -> int:
    """The budget in bytes (default `jaxntk.ntk.default_memory_budget()`); a ValueError before any
    work when `nbytes` exceed it, naming `memory_budget`, the matrix size and the ways out.

    Args:
        what: what would be formed, e.g. "the eigendecomposition of the 40000 × 40000 NTK".
        nbytes: its estimated bytes.
        memory_budget: bytes allowed (None: the default budget).
        size: N, the matrix's side (n·|out| for a kernel on n inputs with |out| outputs each).
        ways: the ways out, one sentence.

    Example:
        >>> from jaxntk.linalg import check_budget
        >>> check_budget("a 10 × 10 matrix", 400, 1000, size=10, ways="")
        1000
        >>> check_budget("a matrix", 400, 100, size=10, ways="Use less.")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: a matrix needs about 400 bytes (N = n·|out| = 10), over memory_budget = ...
    """
    budget = ntk.default_memory_budget() if memory_budget is None else memory_budget
    check_int("memory_budget", budget, low=1)
    if nbytes > budget:
        raise ValueError(
            f"{what} needs about {_human(nbytes)} (N = n·|out| = {size}), over memory_budget = "
            f"{_human(budget)}. {ways}".rstrip()
        )
    return budget


def _human(nbytes: int) -> str:
    if nbytes < 1e6:
        return f"{nbytes} bytes"
    return f"{nbytes / 1e9:.3g} GB"


# ------------------------------------------------------------------------------ operators


def _operator(k: Kernel, n: int | None) -> tuple[Callable[[Array], Array], int, Any]:
    """(V ↦ K V on (N, l) blocks, N, dtype) of a kernel in any of its forms."""
    if isinstance(k, KernelStore):
        k._require_square()
        return partial(_store_product, k), k.n, k.dtype
    if callable(k) and not isinstance(k, (np.ndarray, jax.Array)):
        if isinstance(k, NTKOperator):
            return k, k.n, k.dtype
        check_int("n", n, low=1)
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is enabled
        out = jax.eval_shape(k, jax.ShapeDtypeStruct((n, 1), dtype))
        if out.shape != (n, 1):
            raise ValueError(
                f"the operator k must map (n, l) to (n, l), got {out.shape} for (n, 1)"
            )
        return k, n, out.dtype
    if not isinstance(k, (np.ndarray, jax.Array)):
        raise TypeError(f"k must be an array, a numpy memmap or a callable, got {type(k).__name__}")
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k must be a square matrix (N, N), got shape {k.shape}")
    if isinstance(k, jax.Array):
        return partial(_dense_product, k), k.shape[0], k.dtype
    rows = max(1, _HOST_TILE_BYTES // max(1, k.shape[1] * k.dtype.itemsize))
    return partial(_host_product, k, rows), k.shape[0], k.dtype


@jax.jit
def _dense_product(k, v):
    return k @ v.astype(k.dtype)


def _store_product(k: KernelStore, v: Array) -> Array:
    return jnp.asarray(k.matmat(np.asarray(v)))


def _host_product(k: np.ndarray, rows: int, v: Array) -> Array:
    """K V for K a numpy array or memmap, `rows` rows of it read at a time."""
    v = np.asarray(v, dtype=k.dtype)
    out = np.empty((k.shape[0], v.shape[1]), dtype=k.dtype)
    for i in range(0, k.shape[0], rows):
        out[i : i + rows] = np.asarray(k[i : i + rows]) @ v
    return jnp.asarray(out)


def _columns(b: Any, n: int) -> tuple[Array, bool]:
    """B as (N, l) and whether it was one vector (N,)."""
    b = jnp.asarray(b)
    if b.ndim not in (1, 2) or b.shape[0] != n:
        raise ValueError(
            f"b must have shape ({n},) or ({n}, l) for a kernel of size {n}, got {b.shape}"
        )
    if not jnp.issubdtype(b.dtype, jnp.floating):
        b = b.astype(jnp.float32)
    return (b[:, None], True) if b.ndim == 1 else (b, False)


def _check_ridge(ridge: Any) -> float:
    if not (isinstance(ridge, numbers.Real) and math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite float ≥ 0, got {ridge!r}")
    return float(ridge)


def _check_tol(tol: Any, dtype: Any) -> float:
    if tol is None:
        return 10 * float(jnp.finfo(dtype).eps)
    if not (isinstance(tol, numbers.Real) and 0 < tol < 1):
        raise ValueError(f"tol must be a float in (0, 1), got {tol!r}")
    return float(tol)


# ---------------------------------------------------------------------------------- solves


class SolveInfo(NamedTuple):
    """How `solve` went: products with K (0 for "cholesky") and the largest relative residual
    ‖(K + ρI) x − b‖ / ‖b‖ over the columns."""

    iterations: int
    residual: float


def solve(
    k: Kernel,
    b: Any,
    *,
    ridge: float = 0.0,
    method: str = "cg",
    n: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    memory_budget: int | None = None,
    return_info: bool = False,
) -> Array | tuple[Array, SolveInfo]:
    """x = (K + ρ I)⁻¹ b for a symmetric positive semi-definite kernel K in any form.

    "cg" runs conjugate gradients on each column of b, all columns in one product with K per
    iteration, until every relative residual is ≤ tol; it works on an array, a memmap or an
    operator. "cholesky" factorizes K + ρI (jax's Cholesky: the matrix must fit `memory_budget`,
    a numpy array or memmap is read into memory for it); it needs K positive definite with the
    ridge (else the result is NaN).

    Args:
        k: the kernel: an (N, N) array or memmap, or a callable V ↦ K V (then pass n).
        b: (N,) or (N, l) right-hand sides.
        ridge: ρ ≥ 0 added to K's diagonal.
        method: one of `SOLVE_METHODS`.
        n: N, for a callable k.
        tol: relative residual to reach ("cg"; default 10·eps of the dtype).
        max_iters: most products with K ("cg"; default 10·N: in floating point CG may need more
            than N).
        memory_budget: bytes the factorization may take ("cholesky"; default
            `jaxntk.ntk.default_memory_budget()`).
        return_info: also return a `SolveInfo`.

    Returns:
        x shaped like b (and a `SolveInfo` if return_info).

    Raises:
        ValueError: an unknown method, b of the wrong shape, ridge < 0, tol outside (0, 1), or
            "cholesky" over the memory budget (before any work).
        TypeError: k of an unknown kind, or an integer argument that is not an int.

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import solve
        >>> k = np.array([[2.0, 1.0], [1.0, 2.0]], dtype=np.float32)
        >>> solve(k, np.array([4.0, 4.0]), ridge=1.0)             # (K + I) x = b
        Array([1., 1.], dtype=float32)
        >>> solve(lambda v: k @ v, np.array([3.0, 3.0]), n=2, method="cg").round(5)
        Array([1., 1.], dtype=float32)
        >>> solve(k, np.array([3.0, 3.0]), method="cholesky").round(5)
        Array([1., 1.], dtype=float32)
    """
    if method not in SOLVE_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(SOLVE_METHODS)}")
    ridge = _check_ridge(ridge)
    matmat, size, dtype = _operator(k, n)
    rhs, vector = _columns(b, size)
    rhs = rhs.astype(dtype)
    if method == "cholesky":
        if callable(k) and not isinstance(k, (np.ndarray, jax.Array)):
            raise ValueError(
                'method "cholesky" needs the matrix k; use method "cg" for an operator'
            )
        check_budget(
            f"the Cholesky factorization of the {size} × {size} kernel",
            kernel_bytes(size, dtype=dtype, copies=2),
            memory_budget,
            size=size,
            ways='Use method="cg", which streams a memmap or runs matrix-free.',
        )
        dense = k.array() if isinstance(k, KernelStore) else k
        x = _cholesky_solve(jnp.asarray(dense), rhs, ridge)
        info = SolveInfo(0, float(_residual(matmat, x, rhs, ridge)))
    else:
        tol = _check_tol(tol, dtype)
        max_iters = 10 * size if max_iters is None else max_iters
        check_int("max_iters", max_iters, low=1)
        x, info = _cg(matmat, rhs, ridge, tol, max_iters)
    x = x[:, 0] if vector else x
    return (x, info) if return_info else x


@jax.jit
def _cholesky_solve(k, b, ridge):
    factor = jax.scipy.linalg.cho_factor(k + ridge * jnp.eye(k.shape[0], dtype=k.dtype))
    return jax.scipy.linalg.cho_solve(factor, b)


def _residual(matmat, x, b, ridge):
    r = b - matmat(x) - ridge * x
    return jnp.max(jnp.linalg.norm(r, axis=0) / jnp.maximum(jnp.linalg.norm(b, axis=0), 1e-30))


def _cg(matmat, b, ridge, tol, max_iters):
    """Conjugate gradients on each column of b; one product with all columns per iteration."""
    x = jnp.zeros_like(b)
    r, p = b, b
    rs = jnp.sum(r * r, axis=0)
    goal = (tol * jnp.linalg.norm(b, axis=0)) ** 2
    it = 0
    while it < max_iters and bool(jnp.any(rs > goal)):
        x, r, p, rs = _cg_step(x, r, p, rs, matmat(p), ridge)
        it += 1
    return x, SolveInfo(it, float(_residual(matmat, x, b, ridge)))


@jax.jit
def _cg_step(x, r, p, rs, kp, ridge):
    ap = kp + ridge * p
    curvature = jnp.sum(p * ap, axis=0)
    alpha = jnp.where(curvature > 0, rs / jnp.where(curvature > 0, curvature, 1.0), 0.0)[None]
    x = x + alpha * p
    r = r - alpha * ap
    rs_new = jnp.sum(r * r, axis=0)
    p = r + jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)[None] * p
    return x, r, p, rs_new


# ---------------------------------------------------------------------------------- Lanczos


class LanczosBasis(NamedTuple):
    """The Lanczos decomposition K Q ≈ Q T of each column b of a block, T = tridiag(β, α, β).

    Attributes:
        q: (m, N, l) orthonormal Lanczos vectors of each column (zero after a breakdown).
        alpha: (m, l) the diagonals of T.
        beta: (m − 1, l) the off-diagonals of T.
        norm: (l,) ‖b‖ of each column.
    """

    q: Array
    alpha: Array
    beta: Array
    norm: Array


def lanczos(k: Kernel, b: Any, iters: int, *, n: int | None = None) -> LanczosBasis:
    """`iters` steps of Lanczos with full reorthogonalization from each column of b.

    Args:
        k: the kernel: an (N, N) array or memmap, or a callable V ↦ K V (then pass n).
        b: (N,) or (N, l) start vectors (one Krylov space each; one product per step for all).
        iters: steps m, 1 ≤ m ≤ N.
        n: N, for a callable k.

    Returns:
        A `LanczosBasis` (l = 1 for a vector b).

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import lanczos
        >>> k = np.diag([3.0, 2.0, 1.0]).astype(np.float32)
        >>> basis = lanczos(k, np.ones(3), 3)
        >>> a, b = basis.alpha[:, 0], basis.beta[:, 0]
        >>> t = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
        >>> np.round(np.linalg.eigvalsh(t), 4)              # T has K's eigenvalues
        array([1., 2., 3.], dtype=float32)
    """
    matmat, size, dtype = _operator(k, n)
    check_int("iters", iters, low=1, high=size, high_name="N, the kernel's size")
    rhs, _ = _columns(b, size)
    state = _lanczos_start(rhs.astype(dtype), iters)
    for _ in range(iters - 1):
        state = _lanczos_extend(state, matmat)
    return _lanczos_basis(state, matmat)


class _LanczosState(NamedTuple):
    qs: Array  # (capacity, N, l)
    alpha: list
    beta: list
    norm: Array
    steps: int  # Lanczos vectors filled


def _lanczos_start(b, capacity):
    qs, norm = _first_vector(b, capacity)
    return _LanczosState(qs, [], [], norm, 1)


@partial(jax.jit, static_argnums=1)
def _first_vector(b, capacity):
    norm = jnp.linalg.norm(b, axis=0)
    q0 = b / jnp.where(norm > 0, norm, 1.0)[None]
    return jnp.zeros((capacity, *b.shape), b.dtype).at[0].set(q0), norm


def _lanczos_extend(state, matmat):
    """One step: α_j, β_j and q_{j+1} from K q_j (full reorthogonalization, twice)."""
    j = state.steps - 1
    qs, alpha, beta = _lanczos_step(state.qs, j, matmat(_row(state.qs, j)))
    return _LanczosState(qs, [*state.alpha, alpha], [*state.beta, beta], state.norm, j + 2)


def _lanczos_basis(state, matmat, trim=True):
    """The basis of the filled vectors: the last α from one more product. Untrimmed, q keeps
    every row of the state's capacity (zero past the filled ones): one shape for every check."""
    j = state.steps - 1
    q = _row(state.qs, j)
    alpha = _rayleigh(q, matmat(q))
    # the coefficients are small: stacked on the host (an eager stack compiles once per length)
    alphas = jnp.asarray(np.stack([np.asarray(a) for a in [*state.alpha, alpha]]))
    width = (0, alpha.shape[0])
    betas = np.stack([np.asarray(b) for b in state.beta]) if state.beta else np.zeros(width)
    q = _leading(state.qs, j + 1) if trim else state.qs
    return LanczosBasis(q, alphas, jnp.asarray(betas, alpha.dtype), state.norm)


@jax.jit
def _rayleigh(q, w):
    return jnp.sum(q * w, axis=0)


@partial(jax.jit, static_argnums=1)
def _leading(qs, m):
    return qs[:m]


@jax.jit
def _row(qs, j):
    """qs[j] for a traced j: one program for every step (an eager qs[j] compiles one per j)."""
    return jax.lax.dynamic_index_in_dim(qs, j, keepdims=False)


@partial(jax.jit, donate_argnums=0)
def _lanczos_step(qs, j, w):
    q = qs[j]
    alpha = jnp.sum(q * w, axis=0)
    scale = jnp.linalg.norm(w, axis=0)
    for _ in range(2):  # classical Gram-Schmidt twice against every filled vector
        w = w - jnp.einsum("mnl,ml->nl", qs, jnp.einsum("mnl,nl->ml", qs, w))
    beta = jnp.linalg.norm(w, axis=0)
    eps = jnp.finfo(w.dtype).eps
    alive = beta > 10 * eps * math.sqrt(w.shape[0]) * scale  # else: an invariant subspace
    beta = jnp.where(alive, beta, 0.0)
    q_next = jnp.where(alive[None], w / jnp.where(alive, beta, 1.0)[None], 0.0)
    return qs.at[j + 1].set(q_next), alpha, beta


def _tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (θ (l, m), S (l, m, m)) of each column's T, in numpy (float64): small, and no
    program to compile for each new m."""
    m = alpha.shape[0]
    t = np.zeros((alpha.shape[1], m, m))
    index = np.arange(m)
    t[:, index, index] = alpha.T
    t[:, index[:-1], index[1:]] = beta.T
    t[:, index[1:], index[:-1]] = beta.T
    return np.linalg.eigh(t)


def _function_coefficients(basis, fn, capacity):
    """c (l, m) with f(K) b ≈ Q c per column: ‖b‖ S f(θ) S[0] (numpy). f is evaluated on θ padded
    with zeros to `capacity` entries: one shape for every check, one compile of its ops."""
    alpha, beta = np.asarray(basis.alpha, np.float64), np.asarray(basis.beta, np.float64)
    theta, s = _tridiagonal_eigh(alpha, beta)
    m = theta.shape[1]
    padded = np.zeros((theta.shape[0], max(capacity, m)), dtype=basis.alpha.dtype)
    padded[:, :m] = theta
    values = np.asarray(fn(jnp.asarray(padded)), np.float64)[:, :m]
    norm = np.asarray(basis.norm, np.float64)
    return norm[:, None] * np.einsum("lmk,lk,lk->lm", s, values, s[:, 0, :])


def _combine(basis, coeff):
    pad = basis.q.shape[0] - coeff.shape[1]  # an untrimmed basis: zero coefficients past m
    coeff = np.pad(coeff, ((0, 0), (0, pad)))
    return _combined(basis.q, jnp.asarray(coeff, basis.q.dtype))


@jax.jit
def _combined(q, coeff):
    return jnp.einsum("mnl,lm->nl", q, coeff)


class KrylovInfo(NamedTuple):
    """How a Krylov method went: products with K, and its error estimate (`matrix_function`:
    the largest relative change of any result over the last `check_every` steps; `top_eigh`:
    the largest relative residual ‖K u − θ u‖ / θ of the k Ritz pairs)."""

    iterations: int
    error: float


def matrix_function(
    k: Kernel,
    b: Any,
    fns: Callable[[Array], Array] | Sequence[Callable[[Array], Array]],
    *,
    n: int | None = None,
    tol: float = 1e-6,
    max_iters: int | None = None,
    check_every: int = 10,
    return_info: bool = False,
) -> Array | list[Array] | tuple[Any, KrylovInfo]:
    """f(K) b for one or several functions f of the eigenvalues, from one Lanczos run per column.

    f(K) b ≈ ‖b‖ Q f(T) e₁ (`LanczosBasis`), exact once the Krylov space of b is invariant. The
    run stops when every result changed by at most `tol` (relative, per column) over the last
    `check_every` steps, at an invariant subspace, or after max_iters products. For f(λ) =
    1/(λ + ρ) this is conjugate gradients' answer; (1 − aλ)^t and exp(−aλt) converge in far
    fewer steps than t.

    Args:
        k: the kernel: an (N, N) array or memmap, or a callable V ↦ K V (then pass n).
        b: (N,) or (N, l) vectors.
        fns: f or a sequence of them, each mapping an array of eigenvalues to f of each
            (jax.numpy, elementwise).
        n: N, for a callable k.
        tol: relative change at which the run stops, in (0, 1).
        max_iters: most products (default min(N, 300)).
        check_every: steps between convergence checks.
        return_info: also return a `KrylovInfo`.

    Returns:
        f(K) b shaped like b, a list of them for a sequence fns (and a `KrylovInfo`).

    Raises:
        ValueError: b of the wrong shape, tol outside (0, 1), an integer out of range.
        TypeError: k of an unknown kind or a function that is not callable.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from jaxntk.linalg import matrix_function
        >>> k = np.diag([4.0, 1.0]).astype(np.float32)
        >>> matrix_function(k, np.ones(2), jnp.sqrt).round(5)
        Array([2., 1.], dtype=float32)
        >>> fns = [lambda v: 1 / v, lambda v: jnp.exp(-v)]
        >>> inverse, decay = matrix_function(k, np.ones(2), fns)
        >>> inverse.round(5), decay.round(5)
        (Array([0.25, 1.  ], dtype=float32), Array([0.01832, 0.36788], dtype=float32))
    """
    several = not callable(fns)
    fns = list(fns) if several and isinstance(fns, (list, tuple)) else [fns]
    if not fns or not all(callable(f) for f in fns):
        raise TypeError("fns must be a callable or a non-empty sequence of callables")
    matmat, size, dtype = _operator(k, n)
    max_iters = min(size, 300) if max_iters is None else max_iters
    check_int("max_iters", max_iters, low=1, high=size, high_name="N, the kernel's size")
    check_int("check_every", check_every, low=1)
    tol = _check_tol(tol, dtype)
    rhs, vector = _columns(b, size)
    basis, coeffs, error = _run_lanczos(matmat, rhs.astype(dtype), fns, tol, max_iters, check_every)
    out = [_combine(basis, c) for c in coeffs]
    out = [o[:, 0] for o in out] if vector else out
    out = out if several else out[0]
    return (out, KrylovInfo(basis.alpha.shape[0], error)) if return_info else out


def _run_lanczos(matmat, b, fns, tol, max_iters, check_every):
    """(basis, coefficients of each f, error estimate): Lanczos until the coefficients settle."""
    state = _lanczos_start(b, max_iters)
    previous, error = None, math.inf
    while True:
        steps = state.steps
        check = steps == max_iters or steps % check_every == 0
        if check:
            basis = _lanczos_basis(state, matmat, trim=False)
            coeffs = [_function_coefficients(basis, f, max_iters) for f in fns]
            error = _change(previous, coeffs)
            dead = bool(np.all(np.asarray(state.beta[-1]) == 0)) if steps > 1 else False
            if steps == max_iters or error <= tol or dead:
                return basis, coeffs, error
            previous = coeffs
        state = _lanczos_extend(state, matmat)
        if bool(np.all(np.asarray(state.beta[-1]) == 0)) or state.steps == max_iters:
            basis = _lanczos_basis(state, matmat, trim=False)
            coeffs = [_function_coefficients(basis, f, max_iters) for f in fns]
            return basis, coeffs, _change(previous, coeffs)


def _change(previous, coeffs) -> float:
    """The largest relative change of any coefficient vector (Q is orthonormal: of any result)."""
    if previous is None:
        return math.inf
    worst = 0.0
    for old, new in zip(previous, coeffs, strict=True):
        pad = new.shape[1] - old.shape[1]
        diff = np.linalg.norm(new - np.pad(old, ((0, 0), (0, pad))), axis=1)
        rel = diff / np.maximum(np.linalg.norm(new, axis=1), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.where(np.isfinite(rel), rel, np.inf))))
    return worst


# ----------------------------------------------------------------------------- eigenpairs


def top_eigh(
    k: Kernel,
    num: int,
    *,
    n: int | None = None,
    oversampling: int = 10,
    max_iters: int = 20,
    tol: float | None = None,
    key: Array | None = None,
    return_info: bool = False,
) -> tuple[Array, Array] | tuple[Array, Array, KrylovInfo]:
    """The top `num` eigenpairs of a PSD kernel by randomized block Krylov iteration.

    A random start Ω of l = num + oversampling columns; the basis grows by one orthonormal block
    K Q_i per iteration (one product of l columns), and Rayleigh-Ritz on the whole basis gives
    the pairs (Musco & Musco, *Randomized block Krylov methods*, NeurIPS 2015). It stops when
    every relative residual ‖K u − θ u‖ / θ ≤ tol, after max_iters products, or when the basis
    holds N columns. Memory: 2·N·l numbers per iteration, never N².

    Args:
        k: the kernel: an (N, N) array or memmap, or a callable V ↦ K V (then pass n).
        num: pairs wanted, 1 ≤ num ≤ N.
        n: N, for a callable k.
        oversampling: extra columns per block.
        max_iters: most products with K.
        tol: relative residual to reach (default 0.1·√eps: 3e-5 in float32).
        key: PRNG key of the start (default PRNGKey(0)).
        return_info: also return a `KrylovInfo`.

    Returns:
        (eigenvalues (num,) in decreasing order, eigenvectors (N, num)) (and a `KrylovInfo`).

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import top_eigh
        >>> k = np.diag(np.arange(10.0, 0.0, -1.0)).astype(np.float32)
        >>> values, vectors = top_eigh(k, 2, oversampling=2)
        >>> values.round(4), np.abs(vectors[:3]).round(3)
        (Array([10.,  9.], dtype=float32), array([[1., 0.],
               [0., 1.],
               [0., 0.]], dtype=float32))
    """
    matmat, size, dtype = _operator(k, n)
    check_int("num", num, low=1, high=size, high_name="N, the kernel's size")
    check_int("oversampling", oversampling, low=0)
    check_int("max_iters", max_iters, low=1)
    tol = 0.1 * math.sqrt(float(jnp.finfo(dtype).eps)) if tol is None else _check_tol(tol, dtype)
    width = min(num + oversampling, size)
    key = jax.random.PRNGKey(0) if key is None else key
    block = jnp.linalg.qr(jax.random.normal(key, (size, width), dtype))[0]
    basis, products = [], []
    for it in range(1, max_iters + 1):
        basis.append(block)
        products.append(matmat(block).astype(dtype))
        theta, u, error = _ritz(jnp.concatenate(basis, 1), jnp.concatenate(products, 1), num)
        if error <= tol or it == max_iters or it * width >= size:
            break
        block = _next_block(basis, products[-1])[:, : size - it * width]
    return (theta, u, KrylovInfo(it, error)) if return_info else (theta, u)


@jax.jit
def _next_block_of(stacked, w):
    """K's last block orthonormalized against the basis. Once the Krylov space is (nearly)
    invariant, what is left of w after the projections is rounding noise, and QR's columns of
    it need not be orthogonal to the basis: they are projected and orthonormalized once more
    (a low-rank kernel's Ritz values were otherwise off by 1e-6 in float64)."""
    for _ in range(2):
        w = w - stacked @ (stacked.T @ w)
    q = jnp.linalg.qr(w)[0]
    q = q - stacked @ (stacked.T @ q)
    return jnp.linalg.qr(q)[0]


def _next_block(basis, w):
    return _next_block_of(jnp.concatenate(basis, 1), w)


def _ritz(q, y, num):
    theta, u, resid = _ritz_of(q, y, num)
    return theta, u, float(resid)


@partial(jax.jit, static_argnums=2)
def _ritz_of(q, y, num):
    h = q.T @ y
    theta, w = jnp.linalg.eigh(0.5 * (h + h.T))
    theta, w = theta[::-1][:num], w[:, ::-1][:, :num]
    u = q @ w
    resid = jnp.linalg.norm(y @ w - u * theta[None, :], axis=0) / jnp.abs(theta)
    signs = jnp.sign(u[jnp.argmax(jnp.abs(u), axis=0), jnp.arange(num)])
    return theta, u * signs[None, :], jnp.max(resid)


def trace(k: Kernel, *, n: int | None = None, probes: int = 64, key: Array | None = None):
    """tr K: the diagonal's sum for a matrix or an `NTKOperator` (its features' squared norm),
    Hutchinson's estimate E[zᵀ K z] over `probes` Rademacher vectors for another operator.

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import trace
        >>> float(trace(np.eye(3, dtype=np.float32) * 2))
        6.0
        >>> float(trace(lambda v: 2 * v, n=1000, probes=4))   # exact for a multiple of I
        2000.0
    """
    if isinstance(k, NTKOperator):
        return k.trace()
    if isinstance(k, KernelStore):
        _operator(k, n)
        return jnp.asarray(np.sum(k.diagonal(), dtype=np.float64), k.dtype)
    if isinstance(k, (np.ndarray, jax.Array)):
        _operator(k, n)
        return jnp.asarray(np.trace(k) if isinstance(k, np.ndarray) else jnp.trace(k))
    matmat, size, dtype = _operator(k, n)
    check_int("probes", probes, low=1)
    key = jax.random.PRNGKey(0) if key is None else key
    z = jax.random.rademacher(key, (size, probes), dtype)
    return jnp.sum(z * matmat(z)) / probes


def _frobenius_sq(k: Kernel, n, probes, key) -> float:
    """‖K‖_F²: exact for a matrix or a store (streamed), E‖K z‖² over Rademacher z for an
    operator."""
    if isinstance(k, KernelStore):
        return k.frobenius_sq()
    if isinstance(k, (np.ndarray, jax.Array)):
        return float(sum(np.sum(np.square(np.asarray(t), dtype=np.float64)) for t in _tiles(k)))
    matmat, size, dtype = _operator(k, n)
    check_int("probes", probes, low=1)
    z = jax.random.rademacher(jax.random.PRNGKey(0) if key is None else key, (size, probes), dtype)
    return float(jnp.sum(jnp.square(matmat(z))) / probes)


def _tiles(k):
    rows = max(1, _HOST_TILE_BYTES // max(1, k.shape[1] * k.dtype.itemsize))
    for i in range(0, k.shape[0], rows):
        yield k[i : i + rows]


def effective_rank(
    k: Kernel, *, n: int | None = None, probes: int = 64, key: Array | None = None
) -> float:
    """The effective rank (tr K)² / ‖K‖_F² = (Σλ)² / Σλ²: N for K ∝ I, 1 for rank one.

    Exact for a matrix, a memmap or a `KernelStore` (streamed); for an operator, ‖K‖_F² and tr K
    are Hutchinson estimates over `probes` Rademacher vectors (`trace`).

    Args:
        k: the kernel in any form (module docstring).
        n: N, for a callable k.
        probes: probe vectors for an operator.
        key: PRNG key of the probes (default PRNGKey(0)).

    Returns:
        The effective rank, a float in [1, N].

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import effective_rank
        >>> effective_rank(np.diag([1.0, 1.0, 1.0, 1.0]).astype(np.float32))
        4.0
        >>> effective_rank(np.diag([3.0, 1.0]).astype(np.float32))  # 16 / 10
        1.6
    """
    total = float(trace(k, n=n, probes=probes, key=key))
    return total**2 / _frobenius_sq(k, n, probes, key)


class SpectralDensity(NamedTuple):
    """The eigenvalue density of a kernel by stochastic Lanczos quadrature (`spectral_density`).

    Attributes:
        grid: (g,) eigenvalues at which the density is given.
        density: (g,) the smoothed density: ∫ density dλ ≈ N, the number of eigenvalues.
        nodes: (probes, m) Ritz values of each probe's Lanczos run.
        weights: (probes, m) their quadrature weights: Σ_j N·w_pj f(θ_pj) estimates tr f(K), one
            estimate per probe (exact for a diagonal K with Rademacher probes and m ≥ its distinct
            eigenvalues).
    """

    grid: Array
    density: Array
    nodes: Array
    weights: Array


def spectral_density(
    k: Kernel,
    *,
    n: int | None = None,
    probes: int = 8,
    iters: int = 60,
    grid: int | Any = 256,
    width: float | None = None,
    key: Array | None = None,
) -> SpectralDensity:
    """The eigenvalue density of K: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017).

    Each Rademacher probe z gives `iters` Lanczos steps; the eigenpairs (θ_j, s_j) of its
    tridiagonal T are the nodes and s_j[0]² the weights of a Gauss quadrature of
    zᵀ f(K) z / ‖z‖². The density is N/probes · Σ_p Σ_j w_pj · 𝒩(λ; θ_pj, width²) on the grid.
    Costs probes·iters products with K (all probes in each product).

    Args:
        k: the kernel in any form (module docstring).
        n: N, for a callable k.
        probes: Rademacher probe vectors.
        iters: Lanczos steps per probe (at most N).
        grid: number of points from 0 to 1.05 × the largest node, or the points themselves.
        width: the Gaussian's standard deviation (default: 2 grid steps of a uniform grid).
        key: PRNG key of the probes (default PRNGKey(0)).

    Returns:
        A `SpectralDensity`.

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import spectral_density
        >>> k = np.diag([1.0, 1.0, 4.0]).astype(np.float32)
        >>> sd = spectral_density(k, probes=2, iters=3)
        >>> nodes = np.asarray(sd.nodes); w = np.asarray(sd.weights)
        >>> [round(float(3 * np.sum(w[p] * nodes[p] ** 2)), 3) for p in range(2)]  # tr K² = 18
        [18.0, 18.0]
    """
    _, size, dtype = _operator(k, n)
    check_int("probes", probes, low=1)
    check_int("iters", iters, low=1, high=size, high_name="N, the kernel's size")
    key = jax.random.PRNGKey(0) if key is None else key
    z = jax.random.rademacher(key, (size, probes), dtype)
    basis = lanczos(k, z, iters, n=n)
    theta, s = _tridiagonal_eigh(np.asarray(basis.alpha, np.float64), np.asarray(basis.beta))
    weights = s[:, 0, :] ** 2  # (probes, m), each row sums to 1
    if isinstance(grid, numbers.Integral):
        check_int("grid", grid, low=2)
        points = np.linspace(0.0, 1.05 * max(float(theta.max()), 0.0) or 1.0, int(grid))
    else:
        points = np.asarray(grid, np.float64)
        if points.ndim != 1 or points.size < 2:
            raise ValueError(f"grid must be an int ≥ 2 or a 1-D array of points, got {grid!r}")
    sigma = 2 * (points[-1] - points[0]) / (points.size - 1) if width is None else float(width)
    if not sigma > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    gauss = np.exp(-0.5 * ((points[:, None, None] - theta[None]) / sigma) ** 2)
    density = (
        size / probes * np.sum(weights[None] * gauss, axis=(1, 2)) / (sigma * np.sqrt(2 * np.pi))
    )
    return SpectralDensity(
        jnp.asarray(points), jnp.asarray(density), jnp.asarray(theta), jnp.asarray(weights)
    )


def alignment(
    k: Kernel, y: Any, *, n: int | None = None, probes: int = 64, key: Array | None = None
) -> float:
    """The centred kernel-target alignment ⟨K_c, Y_c Y_cᵀ⟩ / (‖K_c‖_F ‖Y_c Y_cᵀ‖_F), streamed.

    K_c = H K H and Y_c = H Y with H = I − 11ᵀ/N (Cortes, Mohri & Rostamizadeh 2012). With one
    product K [Y_c, 1]: ⟨K_c, Y_c Y_cᵀ⟩ = tr(Y_cᵀ K Y_c) and ‖K_c‖_F² = ‖K‖_F² − 2‖K1‖²/N +
    (1ᵀK1)²/N²; ‖K‖_F² exact for a matrix or a store, estimated for an operator (`probes`).
    `jaxntk.diagnostics.centered_alignment` is the same number for a kernel in memory.

    Args:
        k: the kernel in any form (module docstring).
        y: (N,) or (N, c) targets.
        n: N, for a callable k.
        probes: probe vectors for an operator's ‖K‖_F².
        key: PRNG key of the probes.

    Returns:
        The alignment, in [−1, 1].

    Example:
        >>> import numpy as np
        >>> from jaxntk.linalg import alignment
        >>> y = np.array([1.0, -1.0, 2.0, 0.0], dtype=np.float32)
        >>> k = np.outer(y, y) + 3.0        # a constant is centred away
        >>> round(alignment(k, y), 5)
        1.0
    """
    matmat, size, dtype = _operator(k, n)
    cols, _ = _columns(y, size)
    cols = np.asarray(cols, np.float64)
    yc = cols - cols.mean(axis=0, keepdims=True)
    both = np.concatenate([yc, np.ones((size, 1))], axis=1)
    product = np.asarray(matmat(jnp.asarray(both, dtype)), np.float64)
    inner = float(np.sum(yc * product[:, :-1]))
    k1 = product[:, -1]
    kc_sq = (
        _frobenius_sq(k, n, probes, key)
        - 2 * float(k1 @ k1) / size
        + float(k1.sum()) ** 2 / size**2
    )
    yy = float(np.linalg.norm(yc.T @ yc))
    return inner / (math.sqrt(max(kc_sq, 0.0)) * yy)


# ------------------------------------------------------------------------- the NTK operator


class NTKOperator:
    """The empirical NTK on inputs X as a linear operator V ↦ K V, K never formed (`ntk_operator`).

    With G the feature matrix (J(X) with rows φ(x_i)_a for the full kernel, N = n·|out|; for
    the traced kernel the n rows [φ(x_i)_1, …, φ(x_i)_c] / √c, N = n), K = G Gᵀ and K V =
    G (Gᵀ V): two products with G. Mode "features" keeps G in memory (n·|out|·P numbers), mode
    "products" recomputes Gᵀ V and G W by VJPs and JVPs over blocks of the inputs (no memory,
    |out| times the passes when traced). `cross(x)` is K(x, X) as an operator (N → rows of x).

    Attributes:
        n: N, the operator's size.
        dtype: the model's output dtype.
        mode: "features" or "products".
        traced: whether the output axes are traced.
    """

    def __init__(self, apply_fn, params0, x, traced, mode, batch_size):
        self.apply_fn, self.params0, self.x = apply_fn, params0, x
        self.traced, self.mode, self.batch_size = traced, mode, batch_size
        out = jax.eval_shape(apply_fn, params0, x[:1])
        self.outputs = math.prod(out.shape[1:])
        self.dtype = out.dtype
        self.n = x.shape[0] * (1 if traced else self.outputs)
        self.features = self._features(x) if mode == "features" else None

    def __call__(self, v: Array) -> Array:
        """K V for V of shape (N, l)."""
        return self.cross(None)(v)

    def cross(self, x: Array | None) -> Callable[[Array], Array]:
        """V ↦ K(x, X) V: (rows of x, l) for V (N, l); x None: X itself."""

        def product(v):
            w = self._pull(jnp.asarray(v, self.dtype))
            if x is None and self.features is not None:
                return _push_features(self.features, w, self.traced)
            xs = self.x if x is None else jnp.asarray(x)
            return jnp.concatenate([self._push(xb, w) for xb in self._blocks(xs)])

        return product

    def trace(self) -> Array:
        """tr K: the squared norm of the features (over blocks in mode "products")."""
        features = self.features if self.features is not None else self._features(self.x)
        return sum(_squared_norm(f, self.traced) for f in features)

    def _blocks(self, x):
        return [x[i : i + self.batch_size] for i in range(0, x.shape[0], self.batch_size)]

    def _features(self, x):
        """The features of x's blocks, a tuple (kept apart: no concatenated copy)."""
        return tuple(_block_features(self.apply_fn, self.params0, xb) for xb in self._blocks(x))

    def _pull(self, v):
        """Gᵀ V: (|out|·P or P, l) from the features, a pytree of (l, [c,] *leaf) by VJPs."""
        if self.features is not None:
            return _pull_features(self.features, v, self.traced)
        parts = []
        for i, xb in enumerate(self._blocks(self.x)):
            rows = xb.shape[0] * (1 if self.traced else self.outputs)
            vb = v[i * self.batch_size * (rows // xb.shape[0]) :][:rows]
            parts.append(_pull_products(self.apply_fn, self.params0, xb, vb, self.traced))
        return jax.tree_util.tree_map(lambda *a: sum(a), *parts)

    def _push(self, xb, w):
        if self.features is not None:
            return _push_features(
                (_block_features(self.apply_fn, self.params0, xb),), w, self.traced
            )
        return _push_products(self.apply_fn, self.params0, xb, w, self.traced)


@jax.jit
def _block_features(apply_fn, params0, xb):
    """(b, |out|, P) per-example Jacobians (reverse mode), outputs flattened."""
    f = ntk._jacobian_features(apply_fn, params0, xb, True)
    return f.reshape(f.shape[0], -1, f.shape[-1])


def _as_rows(features):
    """F: (n, |out|·P) traced, else (n·|out|, P) — a reshape, no copy; G = F / √|out| traced."""
    b, c, p = features.shape
    return features.reshape(b, c * p), features.reshape(b * c, p)


def _scale(features, traced):
    """1/√|out| for the traced kernel (applied to the small results, never to the features)."""
    return 1.0 / math.sqrt(features[0].shape[1]) if traced else 1.0


@partial(jax.jit, static_argnums=2)
def _pull_features(features, v, traced):
    """Gᵀ V = Σ over blocks of G_bᵀ V_b."""
    total, start = 0.0, 0
    for block in features:
        g = _as_rows(block)[0 if traced else 1]
        vb = v[start : start + g.shape[0]]
        total = total + jax.lax.dot_general(g, vb, (((0,), (0,)), ((), ())))
        start += g.shape[0]
    return total * _scale(features, traced)


@partial(jax.jit, static_argnums=2)
def _push_features(features, w, traced):
    rows = [_as_rows(block)[0 if traced else 1] @ w for block in features]
    return jnp.concatenate(rows) * _scale(features, traced)


@partial(jax.jit, static_argnums=1)
def _squared_norm(features, traced):
    return jnp.sum(jnp.square(features)) / (features.shape[1] if traced else 1)


@partial(jax.jit, static_argnums=4)
def _pull_products(apply_fn, params0, xb, v, traced):
    """Σ_i J(x_i)ᵀ of V's rows: a pytree with leading axes (l,) or, traced, (|out|, l)."""
    out, pullback = jax.vjp(lambda p: apply_fn(p, xb), params0)
    flat = out.reshape(xb.shape[0], -1)
    if traced:  # cotangent v_j ⊗ e_a for each output a and column j
        eye = jnp.eye(flat.shape[1], dtype=v.dtype)
        cot = eye[:, None, None, :] * v.T[None, :, :, None]  # (c, l, b, c)
        pull = jax.vmap(jax.vmap(lambda ct: pullback(ct.reshape(out.shape))[0]))
        return jax.tree_util.tree_map(lambda a: a / math.sqrt(flat.shape[1]), pull(cot))
    cot = v.T.reshape(v.shape[1], *out.shape)
    return jax.vmap(lambda ct: pullback(ct)[0])(cot)


@partial(jax.jit, static_argnums=4)
def _push_products(apply_fn, params0, xb, w, traced):
    """J(xb) W: (rows, l), rows = b (traced: Σ_a of output a's JVP / √|out|) or b·|out|."""

    def jvp(tangent):
        return jax.jvp(lambda p: apply_fn(p, xb), (params0,), (tangent,))[1].reshape(
            xb.shape[0], -1
        )

    if traced:
        pushed = jax.vmap(jax.vmap(jvp))(w)  # (c, l, b, c): output a of the tangents for a
        c = pushed.shape[0]
        return jnp.sum(pushed[jnp.arange(c), :, :, jnp.arange(c)], axis=0).T / math.sqrt(c)
    pushed = jax.vmap(jvp)(w)  # (l, b, c)
    return pushed.reshape(pushed.shape[0], -1).T


NTK_MODES = ("auto", "features", "products")
"""Modes of `ntk_operator`: "features" (the Jacobian features kept in memory), "products" (VJPs
and JVPs over blocks, nothing kept), "auto" (features when they fit the memory budget)."""


def ntk_operator(
    apply_fn: Callable[[PyTree, Array], Array],
    params0: PyTree,
    x: Array,
    *,
    trace_axes: Sequence[int] = (-1,),
    mode: str = "auto",
    batch_size: int = 256,
    memory_budget: int | None = None,
) -> NTKOperator:
    """The empirical NTK of apply_fn at params0 on inputs x as an operator V ↦ K V.

    K is `jaxntk.empirical_ntk(apply_fn, params0, x, trace_axes=...)` flattened to N × N
    (N = n·|out| rows in the row-major order of the outputs (n, *out) for trace_axes=(), N = n
    with every output axis traced), never formed: K V = G (Gᵀ V) (`NTKOperator`). The Krylov
    functions of this module take it in place of a matrix.

    Args:
        apply_fn: f(params, x) -> (b, *out) for a batch x of shape (b, ...).
        params0: the parameters θ0.
        x: (n, ...) inputs.
        trace_axes: () for the full output kernel, or every output axis (e.g. (-1,) for outputs
            (n, c)) for the traced one; a model with scalar outputs (n,) has nothing to trace.
        mode: one of `NTK_MODES`.
        batch_size: examples per block of features, VJPs and JVPs.
        memory_budget: bytes the features may take (default
            `jaxntk.ntk.default_memory_budget()`).

    Returns:
        An `NTKOperator` (mode "features" has computed the features already).

    Raises:
        ValueError: an unknown mode, trace_axes that trace some output axes but not all, or mode
            "features" over the memory budget.
        TypeError: apply_fn not callable, an integer argument that is not an int.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from jaxntk.linalg import ntk_operator
        >>> def f(w, x):                           # J(x) = x ⊗ I for 2 outputs
        ...     return x @ w
        >>> x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
        >>> op = ntk_operator(f, jnp.zeros((2, 2)), x)
        >>> op.n, op(jnp.eye(2)).round(5)           # traced: K = x xᵀ
        (2, Array([[1., 1.],
               [1., 2.]], dtype=float32))
        >>> full = ntk_operator(f, jnp.zeros((2, 2)), x, trace_axes=(), mode="products")
        >>> full.n, np.asarray(full(jnp.eye(4)))[:2]   # K = x xᵀ ⊗ I
        (4, array([[1., 0., 1., 0.],
               [0., 1., 0., 1.]], dtype=float32))
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {apply_fn!r}")
    if mode not in NTK_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {list(NTK_MODES)}")
    check_int("batch_size", batch_size, low=1)
    x = jnp.asarray(x)
    out = jax.eval_shape(apply_fn, params0, x)
    traced = _traced(trace_axes, len(out.shape))
    if not isinstance(apply_fn, Partial):
        apply_fn = Partial(apply_fn)
    params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params0))
    need = kernel_bytes(out.size, params, out.dtype)
    budget = ntk.default_memory_budget() if memory_budget is None else memory_budget
    check_int("memory_budget", budget, low=1)
    if mode == "auto":
        mode = "features" if need <= budget else "products"
    elif mode == "features":
        check_budget(
            f"the Jacobian features of {x.shape[0]} inputs ({params} parameters)",
            need,
            budget,
            size=out.size,
            ways='Use mode="products", which keeps no features.',
        )
    return NTKOperator(apply_fn, params0, x, traced, mode, min(batch_size, x.shape[0]))


def _traced(trace_axes: Sequence[int], ndim: int) -> bool:
    """Whether trace_axes trace every output axis of outputs with `ndim` axes (batch first)."""
    if isinstance(trace_axes, (int, str)) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in trace_axes
    ):
        raise TypeError(f"trace_axes must be a sequence of ints, got {trace_axes!r}")
    axes = sorted({a % ndim for a in trace_axes if -ndim <= a < ndim})
    if len(axes) != len(trace_axes) or 0 in axes:
        raise ValueError(f"trace_axes must be distinct output axes (not 0), got {trace_axes!r}")
    if ndim == 1:
        return False
    if axes and axes != list(range(1, ndim)):
        raise ValueError(
            f"trace_axes must be () or every output axis {tuple(range(1, ndim))}, "
            f"got {trace_axes!r}"
        )
    return bool(axes)
