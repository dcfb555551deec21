"""The NTK feature subspace: Gram spectrum, top-k singular vectors, good-direction projectors.

The feature matrix J ∈ R^{n×P} (P parameters; P = m·d for the two-layer network) has rows
φ(x_i) = ∇_θ f(x_i; θ0); its Gram matrix is the empirical NTK K = J Jᵀ (docs/science.md §4).
With the thin SVD J = U S Vᵀ, the good directions (docs/science.md §5) are the complement of the
top-k right singular vectors, and V_k = Jᵀ U_k S_k⁻¹ is kept in factored form:

    P_top U = V_k V_kᵀ U = Jᵀ U_k S_k⁻² U_kᵀ (J U),        P_⊥ U = U − P_top U,
    bulk residual = (I − U_k U_kᵀ) f_L(X; U) = J P_⊥ U,    R_bulk = mean(bulk residual²).

J·u is the model's `linear_term(u, prep)` and Jᵀ·c its vector-Jacobian product, so everything here
works for any model with the protocol of `jaxntk.network.TwoLayer` (prepare, zeros, linear_term) and
never forms J.

Several outputs per input, f(X) of shape (n, *out) with c = |out| entries each: J has N = n·c rows,
the output entries in the row-major order of f(X).ravel(), and ``outputs`` picks the kernel whose
top eigenvectors are kept out (docs/science.md §5):

- ``outputs="full"`` (default): the top-k singular pairs of the N × P matrix J itself, K = J Jᵀ
  of size N × N, and everything above holds with n replaced by N; the exact generalization;
- ``outputs="traced"``: the top-k eigenvectors U_k (n × k) of the traced kernel
  K_tr = (1/c) Σ_a J_a J_aᵀ (n × n, J_a the rows of output a; the normalization of
  neural-tangents' ``trace_axes``, `jaxntk.ntk.empirical_ntk`'s default), applied to every
  output: the output-space projector is U_k U_kᵀ ⊗ I_c, on k·c directions. Those are not
  singular vectors of J, so P_top is the orthogonal projector on the span of Jᵀ(U_k ⊗ I_c),
    P_top U = Jᵀ B Bᵀ (J U),  B = (U_k ⊗ I_c) G^{-1/2},  G = (U_k ⊗ I_c)ᵀ K (U_k ⊗ I_c),
  (B is `GoodDirections.top_basis`, from k·c products with K once); the bulk residual
  (I − U_k U_kᵀ ⊗ I_c) f_L is then not J P_⊥ U exactly, but the component of f_L(X; P_⊥ U)
  along the top directions is 0, as for the full form.

With one output both are the one-output directions above. The top-k pairs (U_k, S_k) come from

- ``method="gram"``: K (closed form for `TwoLayer`, the kernel engine `jaxntk.ntk` for a
  `TaylorModel`, n products J(Jᵀ e_i) otherwise) and `eigh`;
  O(n²) memory, the fastest choice while K fits;
- ``method="matrix_free"``: randomized block subspace iteration with Rayleigh-Ritz on K applied as
  J(Jᵀ Q), Q of l = k + oversampling columns; O(n·l + l·P) memory, for n too large for K.

Theory (Montanari & Zhong 2020, arXiv 2007.12826): for x uniform on the sphere of radius √d and
t = x·x'/d, the infinite-width kernel is K(x, x') = d·t·κ(t), κ(t) = E_w[σ'(w·x) σ'(w·x')] ≈
Σ_j c_j² t^j with c_j the orthonormal Hermite coefficients of σ'. It is a dot-product kernel, so
its eigenvalues come in degree blocks: μ_ℓ = E_t[K(t) Q_ℓ(t)] with multiplicity N(d, ℓ) (Q_ℓ the
degree-ℓ Legendre polynomial in d dimensions, Q_ℓ(1) = 1). On n samples the degrees with
N(d, ℓ) ≪ n appear in K/n as spikes near μ_ℓ (spread as Marchenko-Pastur with ratio N(d, ℓ)/n),
and all higher degrees add a self-induced ridge γ·I with γ = (K(1) − Σ_{resolved ℓ} N(d, ℓ) μ_ℓ)/n.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxntk import linalg, ntk
from jaxntk._checks import check_int
from jaxntk.network import TwoLayer, get_activation
from jaxntk.ntk import empirical_ntk  # noqa: F401  (its old home: spectral.empirical_ntk works on)
from jaxntk.targets import legendre, num_harmonics
from jaxntk.taylor import TaylorModel

Array = jax.Array
PyTree = Any

__all__ = [
    "METHODS",
    "OUTPUTS",
    "DegreeBlock",
    "DegreeBlocks",
    "GoodDirections",
    "LearningCurve",
    "ObservedBlock",
    "SpectrumReport",
    "SubspaceInfo",
    "bulk_residual",
    "degree_block_report",
    "good_directions",
    "gram_matrix",
    "hermite_coefficients",
    "learning_curve",
    "predict_degree_blocks",
    "project_good",
    "project_top",
    "right_singular_vectors",
    "target_spectrum",
]

OUTPUTS = ("full", "traced")
"""The kernels whose top eigenvectors `good_directions` keeps out for several outputs per input:
"full" (the (n·c) × (n·c) J Jᵀ, its top-k singular pairs) and "traced" (the n × n mean over the
c outputs of J_a J_aᵀ, k directions applied to every output; see the module docstring)."""

METHODS = ("gram", "matrix_free")
"""Ways to compute the top-k singular pairs of J in `good_directions`: "gram" (eigh of the n×n
NTK Gram matrix) and "matrix_free" (randomized subspace iteration on J(Jᵀ·); see the module
docstring)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GoodDirections:
    """The top-k singular pairs of the feature matrix J on the training inputs (docs/science.md §5).

    J = U S Vᵀ; the right vectors V_k = Jᵀ U_k S_k⁻¹ are implicit (see `right_singular_vectors`).
    The good directions are the complement of span(V_k). A pytree: pass it to `jit` as an argument.
    For outputs (n, *out) of c = |out| entries per input, J has n·c rows (module docstring):
    U_k is (n·c, k) for outputs="full", (n, k) of the traced kernel for outputs="traced".

    Attributes:
        u_k: (rows, k) top-k left singular vectors U_k, orthonormal columns, largest first; rows
            = n·c for "full" (the entries of f(X).ravel()), n for "traced".
        s_k: (k,) singular values S_k, descending (eigenvalues of K = J Jᵀ are S_k²; for
            "traced", of the traced kernel (1/c) Σ_a J_a J_aᵀ).
        top_basis: for "traced" with c > 1, the (n·c, k·c) B with P_top U = Jᵀ B Bᵀ J U (Jᵀ B
            orthonormal, up to zero columns where J has no rank); None otherwise.
        out_shape: the shape of one input's output, () for one output (static).
        outputs: "full" or "traced" (`OUTPUTS`, static).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> dirs.n, dirs.k, dirs.out_shape
        (30, 5, ())
        >>> bool(jnp.allclose(dirs.u_k.T @ dirs.u_k, jnp.eye(5), atol=1e-5))
        True
    """

    u_k: Array
    s_k: Array
    top_basis: Array | None = None
    out_shape: tuple[int, ...] = dataclasses.field(default=(), metadata={"static": True})
    outputs: str = dataclasses.field(default="full", metadata={"static": True})

    @property
    def n(self) -> int:
        """The number of training inputs n (rows of u_k, over c for "full")."""
        rows = self.u_k.shape[0]
        return rows if self.outputs == "traced" else rows // math.prod(self.out_shape)

    @property
    def k(self) -> int:
        """The number of top directions k (columns of u_k; for "traced", per output)."""
        return self.u_k.shape[1]


class SubspaceInfo(NamedTuple):
    """Convergence of the top-k pairs: K-products used and max_i ‖K u_i − s_i² u_i‖ / s_i².

    Returned by `good_directions(..., return_info=True)`.

    Attributes:
        iterations: () int array, the number of products with K (1 for method "gram").
        residual: () the largest relative residual max_i ‖K u_i − s_i² u_i‖ / s_i².

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> _, info = good_directions(net, prep, k=5, return_info=True)
        >>> int(info.iterations), bool(info.residual < 1e-3)
        (1, True)
    """

    iterations: Array
    residual: Array


def gram_matrix(model: Any, prep: Any, *, batch_size: int = 32, outputs: str = "full") -> Array:
    """K = J Jᵀ on prepared inputs, (n, n) for one output per input, without forming J.

    Closed form K_ij = (x_i·x_j) Σ_r a_r² σ'(w0_r·x_i) σ'(w0_r·x_j) for `TwoLayer`; for a
    `jaxntk.taylor.TaylorModel` of array inputs, the empirical NTK of its apply_fn at params0 by
    the kernel engine (`jaxntk.ntk.empirical_ntk`, method "auto", blocks from the default memory
    budget); for any other model of the protocol, the products J(Jᵀ e_i), batch_size at a time.

    Args:
        model: a model of the protocol (`TwoLayer`, `jaxntk.taylor.TaylorModel`).
        prep: `model.prepare(x)` of the n inputs.
        batch_size: columns per batched product (models other than `TwoLayer` and
            `TaylorModel`).
        outputs: for outputs (n, *out) of c entries each, "full" (the (n·c, n·c) J Jᵀ, rows in
            the order of f(X).ravel()) or "traced" (the (n, n) (1/c) Σ_a J_a J_aᵀ); `OUTPUTS`.

    Returns:
        K, the empirical NTK on the inputs (docs/science.md §4): (n, n), or (n·c, n·c) for
        "full" with c outputs.

    Raises:
        ValueError: an unknown `outputs`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import gram_matrix
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> k = gram_matrix(net, prep)
        >>> k.shape, bool(jnp.allclose(k, net.ntk_gram(prep.x)))
        ((30, 30), True)
    """
    check_int("batch_size", batch_size, low=1)
    _check_outputs(outputs)
    return _gram_matrix(model, prep, batch_size, outputs)


def good_directions(
    model: Any,
    prep: Any,
    k: int,
    *,
    outputs: str = "full",
    method: str = "gram",
    key: Array | None = None,
    oversampling: int = 10,
    max_iters: int = 100,
    tol: float | None = None,
    batch_size: int = 32,
    return_info: bool = False,
) -> GoodDirections | tuple[GoodDirections, SubspaceInfo]:
    """Top-k singular pairs (U_k, S_k) of the feature matrix J on the training inputs.

    J = ∂f_L(X; U)/∂U is never formed (module docstring). Columns of U_k are signed so that
    their largest entry is positive; U_k is determined up to that and ties between singular values.
    A model with outputs (n, *out), c = |out| entries per input, has J of n·c rows; `outputs`
    chooses between its own top-k pairs and those of the traced kernel (module docstring).

    Args:
        model: a model of the protocol (`TwoLayer`, `jaxntk.taylor.TaylorModel`).
        prep: `model.prepare(x_train)`.
        k: number of directions, 1 ≤ k ≤ n (the paper uses k = d; d + 1 adds the degree-0 spike);
            with c outputs, 1 ≤ k ≤ n·c for "full" (k directions of the n·c output entries:
            (d + 1)·c keeps d + 1 per class) and 1 ≤ k ≤ n for "traced" (k per output).
        outputs: "full" (J's own top-k pairs, default) or "traced" (the traced kernel's top k,
            applied to every output); the same for one output. `OUTPUTS`.
        method: "gram" (eigh of K) or "matrix_free" (randomized subspace iteration on J(Jᵀ·)).
        key: PRNG key of the random start of "matrix_free" (default PRNGKey(0); the converged
            subspace does not depend on it).
        oversampling: extra columns of the iterated block ("matrix_free"); l = min(k + it, rows).
        max_iters: most K-products ("matrix_free").
        tol: stop once every relative residual ‖K u_i − s_i² u_i‖ / s_i² ≤ tol ("matrix_free";
            default 0.1·√eps of the dtype: 3e-5 in float32, 1.5e-9 in float64).
        batch_size: vectors per batched J / Jᵀ product (bounds the memory of the products).
        return_info: also return a `SubspaceInfo`.

    Returns:
        `GoodDirections` (and `SubspaceInfo` if return_info).

    Raises:
        ValueError: an unknown method or outputs, an integer argument out of range (k above the
            number of rows included), or tol ≤ 0.
        TypeError: an integer argument is not an int.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> dirs.u_k.shape, dirs.s_k.shape
        ((30, 5), (5,))
        >>> free = good_directions(net, prep, k=5, method="matrix_free")
        >>> bool(jnp.allclose(free.s_k, dirs.s_k, rtol=1e-3))  # the same top-k spectrum
        True

        Three outputs per input: J has 3·10 rows ("traced": U_k of 10 rows, `top_basis` of 30).

        >>> from jaxntk.taylor import TaylorModel
        >>> w = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
        >>> model = TaylorModel(lambda w, x: jnp.tanh(x @ w), w)
        >>> prep3 = model.prepare(jax.random.normal(jax.random.PRNGKey(1), (10, 5)), order=1)
        >>> good_directions(model, prep3, k=6).u_k.shape
        (30, 6)
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    _check_outputs(outputs)
    f_shape = jax.eval_shape(lambda: model.linear_term(model.zeros(), prep))
    if len(f_shape.shape) < 1:
        raise ValueError(f"model.linear_term must return outputs (n, *out), got {f_shape}")
    n, out_shape = f_shape.shape[0], tuple(f_shape.shape[1:])
    c = math.prod(out_shape)
    if outputs == "full" and c > 1:
        check_int("k", k, low=1, high=n * c, high_name="n·c, the training outputs' entries")
    else:
        check_int("k", k, low=1, high=n, high_name="n, the number of training inputs")
    check_int("oversampling", oversampling, low=0)
    check_int("max_iters", max_iters, low=1)
    check_int("batch_size", batch_size, low=1)
    if tol is None:
        tol = 0.1 * math.sqrt(float(jnp.finfo(f_shape.dtype).eps))
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    key = jax.random.PRNGKey(0) if key is None else key
    rows = n if outputs == "traced" else n * c
    width = min(k + oversampling, rows)
    if method == "matrix_free" and isinstance(model, TaylorModel) and isinstance(prep.x, jax.Array):
        dirs, info = _good_directions_ntk(
            model, prep, key, k, width - k, max_iters, float(tol), outputs, out_shape
        )
        return (dirs, info) if return_info else dirs
    dirs, info = _good_directions(
        model, prep, key, k, method, width, max_iters, float(tol), batch_size, outputs
    )
    return (dirs, info) if return_info else dirs


def bulk_residual(dirs: GoodDirections, f_train: Array) -> Array:
    """(I − U_k U_kᵀ) f: the part of the training output outside the top-k directions.

    For f = f_L(X_train; U) this is J P_⊥ U, and R_bulk(U) = mean(bulk_residual²)
    (docs/science.md §5). Outputs (n, *out): U_k acts on f.ravel() ("full") or, as
    U_k U_kᵀ ⊗ I_c, on each output's column of f ("traced").

    Args:
        dirs: the top-k directions on the training inputs (`good_directions`).
        f_train: (n, *out) an output on the training inputs, usually f_L(X_train; U), of the
            shape dirs were computed for ((n,) for one output).

    Returns:
        f_train minus its projection on the top directions, shaped like f_train.

    Raises:
        ValueError: f_train is not shaped (n, *out) with the n and outputs of dirs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import bulk_residual, good_directions, project_good
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> u = jax.random.normal(jax.random.PRNGKey(2), (40, 5))
        >>> r = bulk_residual(dirs, net.linear_term(u, prep))
        >>> r.shape, bool(jnp.allclose(dirs.u_k.T @ r, 0.0, atol=1e-4))
        ((30,), True)
        >>> good = project_good(net, prep, dirs, u)  # f_L(X; P_⊥ U) is the bulk residual
        >>> bool(jnp.allclose(r, net.linear_term(good, prep), atol=1e-4))
        True
    """
    expected = (dirs.n, *dirs.out_shape)
    if f_train.shape != expected:
        raise ValueError(
            f"f_train must have shape {expected}, the outputs on the {dirs.n} training inputs "
            f"dirs were computed on, got {f_train.shape}"
        )
    # one output: f.reshape(-1) is f itself, the residual bit for bit the one-output formula
    flat = f_train.reshape(dirs.u_k.shape[0], -1) if _traced(dirs) else f_train.reshape(-1)
    return (flat - dirs.u_k @ (dirs.u_k.T @ flat)).reshape(f_train.shape)


def project_top(model: Any, prep: Any, dirs: GoodDirections, u: PyTree) -> PyTree:
    """P_top U = V_k V_kᵀ U = Jᵀ U_k S_k⁻² U_kᵀ (J U), params-shaped; J is never formed.

    Linear in u; jit- and grad-friendly (one J product and one Jᵀ product). A zero singular
    value (k above the rank of J) contributes nothing. For outputs="traced" (several outputs),
    P_top U = Jᵀ B Bᵀ (J U) with B = `GoodDirections.top_basis`: the orthogonal projector on the
    parameter directions that move the training outputs along U_k ⊗ I_c (module docstring).

    Args:
        model: a model of the protocol (`TwoLayer`, `jaxntk.taylor.TaylorModel`).
        prep: `model.prepare(x_train)`, the inputs dirs were computed on.
        dirs: the top-k directions (`good_directions`).
        u: a params-shaped displacement U ((m, d) for `TwoLayer`).

    Returns:
        P_top U, shaped like u.

    Raises:
        ValueError: prep and dirs have different numbers of inputs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions, project_top
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> top = project_top(net, prep, dirs, jax.random.normal(jax.random.PRNGKey(2), (40, 5)))
        >>> top.shape, bool(jnp.allclose(project_top(net, prep, dirs, top), top, atol=1e-4))
        ((40, 5), True)
    """
    f, pullback = jax.vjp(lambda v: model.linear_term(v, prep), u)
    if f.shape != (dirs.n, *dirs.out_shape):
        raise ValueError(
            f"prep has {f.shape[0]} inputs but dirs were computed on {dirs.n}: pass the training "
            "inputs' prep to project_top / project_good"
        )
    flat = f.reshape(-1)
    if dirs.top_basis is not None:
        (top,) = pullback((dirs.top_basis @ (dirs.top_basis.T @ flat)).reshape(f.shape))
        return top
    # a zero singular value (k above the rank of J) spans no direction of parameter space: drop it
    inv_s2 = jnp.where(dirs.s_k > 0, 1.0 / jnp.where(dirs.s_k > 0, dirs.s_k, 1.0) ** 2, 0.0)
    (top,) = pullback((dirs.u_k @ ((dirs.u_k.T @ flat) * inv_s2)).reshape(f.shape))
    return top


def project_good(model: Any, prep: Any, dirs: GoodDirections, u: PyTree) -> PyTree:
    """P_⊥ U = U − V_k V_kᵀ U: U with its component along the top-k right singular vectors removed.

    R_pop(U) = E_x f_L(x; P_⊥ U)² evaluates `linear_term` of this on fresh inputs
    (docs/science.md §5).

    Args:
        model: a model of the protocol (`TwoLayer`, `jaxntk.taylor.TaylorModel`).
        prep: `model.prepare(x_train)`, the inputs dirs were computed on.
        dirs: the top-k directions (`good_directions`).
        u: a params-shaped displacement U ((m, d) for `TwoLayer`).

    Returns:
        P_⊥ U, shaped like u; P_⊥ U + P_top U = U.

    Raises:
        ValueError: prep and dirs have different numbers of inputs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions, project_good, project_top
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> dirs = good_directions(net, prep, k=5)
        >>> u = jax.random.normal(jax.random.PRNGKey(2), (40, 5))
        >>> good = project_good(net, prep, dirs, u)
        >>> good.shape, bool(jnp.allclose(good + project_top(net, prep, dirs, u), u))
        ((40, 5), True)
    """
    return jax.tree_util.tree_map(jnp.subtract, u, project_top(model, prep, dirs, u))


def right_singular_vectors(model: Any, prep: Any, dirs: GoodDirections) -> PyTree:
    """V_k = Jᵀ U_k S_k⁻¹ as a params-shaped pytree with a leading axis of size k.

    Materializes k·P numbers: for inspection and tests; the projectors do not need it. For
    outputs="traced" with c outputs, the k·c vectors Jᵀ B (`GoodDirections.top_basis`): an
    orthonormal basis of the top subspace, not singular vectors of J.

    Args:
        model: a model of the protocol (`TwoLayer`, `jaxntk.taylor.TaylorModel`).
        prep: `model.prepare(x_train)`, the inputs dirs were computed on.
        dirs: the top-k directions (`good_directions`).

    Returns:
        V_k, a params-shaped pytree with a leading axis k ((k, m, d) for `TwoLayer`; k·c for
        "traced"); its vectors are orthonormal.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import good_directions, right_singular_vectors
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=5, m=40)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (30, 5)))
        >>> v = right_singular_vectors(net, prep, good_directions(net, prep, k=5))
        >>> v.shape
        (5, 40, 5)
        >>> bool(jnp.allclose(jnp.einsum("kmd,lmd->kl", v, v), jnp.eye(5), atol=1e-4))
        True
    """
    _, jt = _feature_products(model, prep)
    coefficients = dirs.u_k / dirs.s_k[None, :] if dirs.top_basis is None else dirs.top_basis
    # one product at a time: vmapped, a convolution's weight gradient becomes a grouped
    # convolution, which XLA's CPU backend runs far slower than k separate ones
    return jax.lax.map(jt, coefficients.T)


# ----------------------------------------------------------------------------------- theory


@dataclasses.dataclass(frozen=True)
class DegreeBlock:
    """A predicted degree block of the spectrum of K/n.

    eigenvalue is μ_ℓ of the kernel operator; level = μ_ℓ + γ where the block sits in K/n, and
    low/high are the Marchenko-Pastur edges μ_ℓ (1 ∓ √(N/n))² + γ of its spread.

    Attributes:
        degree: ℓ, the degree of the spherical harmonics of the block.
        multiplicity: N(d, ℓ), the number of eigenvalues in the block.
        eigenvalue: μ_ℓ = E_t[K(t) Q_ℓ(t)], the kernel operator's eigenvalue.
        level: μ_ℓ + γ, where the block is predicted in the spectrum of K/n.
        low: μ_ℓ (1 − √(N/n))² + γ, the lower Marchenko-Pastur edge.
        high: μ_ℓ (1 + √(N/n))² + γ, the upper Marchenko-Pastur edge.
    """

    degree: int
    multiplicity: int
    eigenvalue: float
    level: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class DegreeBlocks:
    """The predicted block structure of K/n (module docstring): plain data, JSON-ready via asdict.

    blocks are the resolved degrees (those whose cumulative multiplicity is at most n/2), highest
    level first; gamma is the bulk level γ; kernel_diagonal is K(x, x) = d·E[σ'(z)²].

    Attributes:
        activation: the activation's name.
        d: input dimension.
        n: number of samples.
        hermite: the Hermite coefficients c_0, c_1, ... of σ' used in κ(t) ≈ Σ c_j² t^j.
        blocks: the resolved `DegreeBlock`s, highest level first.
        gamma: the bulk level γ = (K(1) − Σ_{resolved ℓ} N(d, ℓ) μ_ℓ)/n (at least 0).
        kernel_diagonal: K(x, x) = d·E[σ'(z)²].

    Example:
        >>> import dataclasses
        >>> from jaxntk.spectral import predict_degree_blocks
        >>> pred = predict_degree_blocks("shifted_sigmoid", d=40, n=252)
        >>> pred.degrees, pred.boundaries
        ((1, 0), (40, 41))
        >>> pred.block(0).multiplicity
        1
        >>> sorted(dataclasses.asdict(pred))[:3]
        ['activation', 'blocks', 'd']
    """

    activation: str
    d: int
    n: int
    hermite: tuple[float, ...]
    blocks: tuple[DegreeBlock, ...]
    gamma: float
    kernel_diagonal: float

    def block(self, degree: int) -> DegreeBlock:
        """The resolved block of the given degree.

        Args:
            degree: ℓ, one of `degrees`.

        Returns:
            The `DegreeBlock` of degree ℓ.

        Raises:
            KeyError: ℓ is not among the resolved degrees.
        """
        for b in self.blocks:
            if b.degree == degree:
                return b
        raise KeyError(f"degree {degree} is not among the resolved blocks {self.degrees}")

    @property
    def degrees(self) -> tuple[int, ...]:
        """The degrees of the resolved blocks, in the order of `blocks` (highest level first)."""
        return tuple(b.degree for b in self.blocks)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Indices (0-based, eigenvalues sorted descending) where each block ends."""
        return tuple(np.cumsum([b.multiplicity for b in self.blocks]).tolist())


@dataclasses.dataclass(frozen=True)
class ObservedBlock:
    """Where a predicted degree block sits in a measured spectrum (eigenvalues sorted descending).

    start:stop are its indices; gap_ratio = min / (largest eigenvalue after the block).

    Attributes:
        degree: ℓ, the degree of the predicted block.
        multiplicity: N(d, ℓ), the number of eigenvalues it takes.
        start: index of its first eigenvalue (sorted descending).
        stop: one past the index of its last eigenvalue.
        predicted_level: μ_ℓ + γ, the predicted level (`DegreeBlock.level`).
        min: its smallest measured eigenvalue.
        max: its largest measured eigenvalue.
        mean: the mean of its measured eigenvalues.
        gap_ratio: min / (the largest eigenvalue after the block); > 1 when it is separated.
    """

    degree: int
    multiplicity: int
    start: int
    stop: int
    predicted_level: float
    min: float
    max: float
    mean: float
    gap_ratio: float


@dataclasses.dataclass(frozen=True)
class SpectrumReport:
    """Degree blocks located in a measured spectrum of K/n, and the bulk level γ (its median).

    Returned by `degree_block_report`.

    Attributes:
        blocks: the `ObservedBlock`s, in the predicted order.
        bulk_start: index (sorted descending) of the first eigenvalue of the bulk.
        bulk_level: the median of the bulk, the measured γ.
        bulk_max: the largest eigenvalue of the bulk.
        predicted_gamma: γ predicted by `predict_degree_blocks`.
    """

    blocks: tuple[ObservedBlock, ...]
    bulk_start: int
    bulk_level: float
    bulk_max: float
    predicted_gamma: float

    @property
    def separated(self) -> bool:
        """Every block lies strictly above everything after it (each gap_ratio > 1)."""
        return all(b.gap_ratio > 1.0 for b in self.blocks)


def hermite_coefficients(
    activation: str, degree: int, *, derivative: int = 1, points: int = 200
) -> np.ndarray:
    """c_j = E_{z~N(0,1)}[σ^{(derivative)}(z) h_j(z)], j = 0..degree, h_j = He_j/√(j!) orthonormal.

    Computed by quadrature (Gauss-Legendre on [−12, 0] and [0, 12], points nodes each, so ReLU's
    step at 0 is integrated exactly too). derivative 0, 1, 2 selects σ, σ', σ''.

    Args:
        activation: a name in `jaxntk.network.ACTIVATIONS`.
        degree: highest j, ≥ 0.
        derivative: 0, 1 or 2: the coefficients of σ, σ' or σ''.
        points: Gauss-Legendre nodes on each half-line.

    Returns:
        (degree + 1,) float64 NumPy array c_0..c_degree.

    Raises:
        ValueError: an unknown activation, or degree / derivative out of range.
        TypeError: degree or derivative is not an int.

    Example:
        >>> from jaxntk.spectral import hermite_coefficients
        >>> c = hermite_coefficients("relu", 1)  # σ' = 1{z > 0}: c_0 = 1/2, c_1 = 1/√(2π)
        >>> [round(float(v), 4) for v in c]
        [0.5, 0.3989]
        >>> hermite_coefficients("shifted_sigmoid", 3, derivative=2).shape
        (4,)
    """
    act = get_activation(activation)
    check_int("degree", degree, low=0)
    check_int("derivative", derivative, low=0, high=2, high_name="2")
    z, w = _normal_quadrature(points)
    values = _evaluate((act.fn, act.d1, act.d2)[derivative], z)
    return _orthonormal_hermite(degree, z) @ (w * values)


def predict_degree_blocks(
    activation: str, d: int, n: int, *, max_degree: int | None = None, terms: int = 40
) -> DegreeBlocks:
    """The degree blocks of the spectrum of K/n, predicted from the Hermite coefficients of σ'.

    Args:
        activation: a name in `jaxntk.network.ACTIVATIONS`.
        d: input dimension, ≥ 3 (inputs on the sphere of radius √d; Gaussian inputs behave alike
            for large d).
        n: number of samples.
        max_degree: highest degree predicted as a spike block (default: the largest ℓ with
            Σ_{j≤ℓ} N(d, j) ≤ n/2, i.e. d^ℓ ≪ n; at least 0).
        terms: Hermite coefficients c_0..c_{terms−1} of σ' in the series κ(t) ≈ Σ c_j² t^j.

    Returns:
        `DegreeBlocks`: the resolved blocks, highest level first, and the bulk level γ.

    Raises:
        ValueError: an unknown activation, or an integer argument out of range.
        TypeError: an integer argument is not an int.

    Example:
        >>> from jaxntk.spectral import predict_degree_blocks
        >>> pred = predict_degree_blocks("shifted_sigmoid", d=40, n=252)
        >>> pred.degrees  # degree 1 (40 eigenvalues) above degree 0 (one)
        (1, 0)
    """
    check_int("d", d, low=3)
    check_int("n", n, low=1)
    check_int("terms", terms, low=1)
    if max_degree is None:
        cumulative, max_degree = 1, 0
        while cumulative + num_harmonics(d, max_degree + 1) <= n / 2:
            max_degree += 1
            cumulative += num_harmonics(d, max_degree)
    check_int("max_degree", max_degree, low=0)
    c = hermite_coefficients(activation, terms - 1)
    t, w = _sphere_cosine_quadrature(d, points=terms + max_degree + 8)
    kernel = d * t * (np.power.outer(t, np.arange(terms)) @ c**2)  # K(t) = d·t·κ(t)
    q = np.stack([_evaluate(partial(legendre, ell, d=d), t) for ell in range(max_degree + 1)])
    mu = q @ (w * kernel)
    mult = [num_harmonics(d, ell) for ell in range(max_degree + 1)]
    z, w_z = _normal_quadrature()
    diagonal = d * float(np.dot(w_z, _evaluate(get_activation(activation).d1, z) ** 2))
    gamma = max((diagonal - float(np.dot(mult, mu))) / n, 0.0)
    blocks = [
        DegreeBlock(
            degree=ell,
            multiplicity=mult[ell],
            eigenvalue=float(mu[ell]),
            level=float(mu[ell]) + gamma,
            low=float(mu[ell]) * (1.0 - math.sqrt(mult[ell] / n)) ** 2 + gamma,
            high=float(mu[ell]) * (1.0 + math.sqrt(mult[ell] / n)) ** 2 + gamma,
        )
        for ell in range(max_degree + 1)
    ]
    blocks.sort(key=lambda b: b.level, reverse=True)
    return DegreeBlocks(
        activation=activation,
        d=d,
        n=n,
        hermite=tuple(float(v) for v in c),
        blocks=tuple(blocks),
        gamma=gamma,
        kernel_diagonal=diagonal,
    )


def degree_block_report(eigenvalues: Array | np.ndarray, predicted: DegreeBlocks) -> SpectrumReport:
    """Locate the predicted degree blocks in a measured spectrum of K/n; measure the bulk level γ.

    The blocks are laid out in the predicted order, each taking as many eigenvalues (sorted
    descending) as its multiplicity; what follows is the bulk, whose median is the measured γ.

    Args:
        eigenvalues: the measured eigenvalues of K/n, any order and shape (flattened).
        predicted: the prediction (`predict_degree_blocks`) for the same activation, d and n.

    Returns:
        `SpectrumReport`: each block's measured extent and gap, and the bulk level.

    Raises:
        ValueError: too few eigenvalues to fill the predicted blocks and leave a bulk.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> from jaxntk.spectral import degree_block_report, predict_degree_blocks
        >>> from jaxntk.targets import sample_inputs
        >>> d, n = 10, 100
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=d, m=1000)
        >>> x = sample_inputs(jax.random.PRNGKey(1), n, d, "sphere")
        >>> eigenvalues = jnp.linalg.eigvalsh(net.ntk_gram(x) / n)
        >>> predicted = predict_degree_blocks("shifted_sigmoid", d, n)
        >>> report = degree_block_report(eigenvalues, predicted)
        >>> [(b.degree, b.start, b.stop) for b in report.blocks], report.bulk_start
        ([(1, 0, 10), (0, 10, 11)], 11)
        >>> report.separated
        True
    """
    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())[::-1]
    stops = predicted.boundaries
    if ev.size <= stops[-1]:
        raise ValueError(
            f"eigenvalues has {ev.size} values, but the predicted blocks take {stops[-1]}: "
            "it needs more than that to leave a bulk"
        )
    starts = (0, *stops[:-1])
    blocks = tuple(
        ObservedBlock(
            degree=b.degree,
            multiplicity=b.multiplicity,
            start=start,
            stop=stop,
            predicted_level=b.level,
            min=float(ev[stop - 1]),
            max=float(ev[start]),
            mean=float(ev[start:stop].mean()),
            gap_ratio=float(ev[stop - 1] / ev[stop]),
        )
        for b, start, stop in zip(predicted.blocks, starts, stops, strict=True)
    )
    bulk = ev[stops[-1] :]
    return SpectrumReport(
        blocks=blocks,
        bulk_start=stops[-1],
        bulk_level=float(np.median(bulk)),
        bulk_max=float(bulk[0]),
        predicted_gamma=predicted.gamma,
    )


class LearningCurve(NamedTuple):
    """The eigenlearning estimate of kernel ridge regression at each n (`learning_curve`).

    Attributes:
        n: (N,) the sample sizes.
        test_mse: (N,) the predicted test mean squared error (mean over the outputs).
        train_mse: (N,) the predicted training mean squared error.
        kappa: (N,) the effective ridge κ.
        overfitting: (N,) the overfitting coefficient E_0 = n / (n − Σ_i L_i²).
        learnability: (N, M) each eigenmode's learnability L_i = λ_i / (λ_i + κ).
    """

    n: np.ndarray
    test_mse: np.ndarray
    train_mse: np.ndarray
    kappa: np.ndarray
    overfitting: np.ndarray
    learnability: np.ndarray


def learning_curve(
    eigenvalues: Any,
    target_coefficients: Any,
    n: Any,
    ridge: float = 0.0,
    *,
    noise: float = 0.0,
) -> LearningCurve:
    """Kernel ridge regression's test error predicted from the kernel's spectrum (eigenlearning).

    For a kernel with eigenvalues λ_i and orthonormal eigenfunctions φ_i under the input law, a
    target y = Σ_i v_i φ_i(x) + ε (ε of variance `noise`, which also carries the target's power
    outside the given modes), and the predictor f̂(x) = k(x)ᵀ (K + δ I)⁻¹ y fitted on n samples
    (K the n × n kernel matrix, δ = `ridge`), the estimate of Bordelon, Canatar & Pehlevan (ICML
    2020), Canatar et al. (2021) and Simon et al.'s eigenlearning framework (TMLR 2023) is

        κ > 0 solves   Σ_i λ_i / (λ_i + κ) + δ / κ = n,     L_i = λ_i / (λ_i + κ),
        E_0 = n / (n − Σ_i L_i²),
        test MSE  = E_0 (Σ_i (1 − L_i)² v_i² + noise),
        train MSE = (δ / (n κ))² · test MSE.

    Exact as n and the number of modes grow together (Gaussian designs); a good estimate at
    moderate n in practice. With δ = 0 and n at least the number of non-zero λ_i, κ = 0: every
    mode is learned and only the noise remains, amplified by E_0 (infinite at n equal to the
    rank). Multi-output targets (coefficients (M, c)) give the mean over the c outputs, the
    convention of `loss="mse"`. `target_spectrum` estimates λ_i, v_i and the noise from the top
    eigenpairs of a kernel matrix on a large sample. Computed in float64 with NumPy.

    Args:
        eigenvalues: (M,) the kernel operator's eigenvalues λ_i ≥ 0, for example the top
            eigenvalues of K_N / N on N ≫ n points.
        target_coefficients: (M,) or (M, c) the target's coefficients v_i on the same modes.
        n: a sample size ≥ 1 or a 1-D sequence of them.
        ridge: δ ≥ 0, added to the diagonal of the n × n kernel matrix.
        noise: the variance ≥ 0 of what no mode carries (label noise, the target's power outside
            the M modes), per output.

    Returns:
        `LearningCurve`, one entry per n.

    Raises:
        ValueError: eigenvalues not a 1-D array of finite values ≥ 0, coefficients of another
            number of rows, n not integers ≥ 1, a negative or non-finite ridge or noise.

    Example:
        A flat spectrum of 50 modes of λ = 0.02, the target on the first 10, a ridge of 0.1:

        >>> import numpy as np
        >>> lam, v = np.full(50, 0.02), np.r_[np.ones(10), np.zeros(40)] / np.sqrt(10)
        >>> curve = learning_curve(lam, v, [10, 100, 1000], ridge=0.1)
        >>> [f"{mse:.3g}" for mse in curve.test_mse]
        ['0.803', '0.0123', '2.88e-05']
        >>> bool(np.all(np.diff(curve.test_mse) < 0))
        True
    """
    lam, coef, sizes = _check_learning_curve(eigenvalues, target_coefficients, n, ridge, noise)
    kappa = np.array([_effective_ridge(lam, float(size), ridge) for size in sizes])
    with np.errstate(divide="ignore", invalid="ignore"):
        learn = np.where(
            kappa[:, None] > 0, lam / (lam + kappa[:, None]), (lam > 0).astype(np.float64)
        )
        overfit = sizes / (sizes - np.sum(learn**2, axis=1))
        overfit = np.where(overfit > 0, overfit, np.inf)
        power = coef**2 if coef.ndim == 1 else np.mean(coef**2, axis=1)
        test = overfit * (np.sum((1 - learn) ** 2 * power, axis=1) + noise)
        train = np.where(kappa > 0, (ridge / (sizes * kappa)) ** 2, 0.0) * test
    return LearningCurve(sizes, test, train, kappa, overfit, learn)


def target_spectrum(eigenvalues: Any, eigenvectors: Any, y: Any) -> tuple[np.ndarray, ...]:
    """The inputs of `learning_curve` estimated from eigenpairs of a kernel matrix on N points.

    With K_N = Σ_i e_i u_i u_iᵀ the N × N kernel matrix of N samples and y (N, *out) the
    targets there, the operator's eigenvalues are λ_i ≈ e_i / N, its eigenfunctions on the
    samples φ_i(x_j) ≈ √N u_ij, and the target's coefficients v_i ≈ u_iᵀ y / √N; what the given
    modes do not carry, mean(y²) − Σ_i v_i² (per output, averaged), is returned as the noise.

    Args:
        eigenvalues: (k,) top eigenvalues e_i of K_N (any order; sorted here, descending).
        eigenvectors: (N, k) the orthonormal eigenvectors u_i, as columns.
        y: (N,) or (N, c) the targets on the same N points (one-hot rows for classes).

    Returns:
        (λ (k,), v (k,) or (k, c), noise): float64 arrays and a float ≥ 0.

    Raises:
        ValueError: shapes that do not fit, or non-finite values.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(400, 3))
        >>> e, u = np.linalg.eigh(x @ x.T)          # a linear kernel: 3 modes of λ = 1
        >>> lam, v, noise = target_spectrum(e[-3:], u[:, -3:], x @ [1.0, 0.0, 0.0])
        >>> np.round(lam, 1).tolist(), round(float(np.sum(v**2)), 3), round(noise, 6)
        ([1.0, 0.9, 0.9], 0.982, 0.0)
    """
    e = np.asarray(eigenvalues, dtype=np.float64).ravel()
    u = np.asarray(eigenvectors, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != e.size or y.ndim not in (1, 2) or y.shape[0] != u.shape[0]:
        raise ValueError(
            f"eigenvectors must be (N, {e.size}) and y (N,) or (N, c) on the same N points, got "
            f"eigenvectors {u.shape} and y {y.shape}"
        )
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(u)) and np.all(np.isfinite(y))):
        raise ValueError("eigenvalues, eigenvectors and y must be finite")
    order = np.argsort(e)[::-1]
    size = u.shape[0]
    coef = u[:, order].T @ y / math.sqrt(size)
    power = np.mean(y**2, axis=0) - np.sum(coef**2, axis=0)
    return e[order] / size, coef, float(max(np.mean(power), 0.0))


# ----------------------------------------------------------------------------------- helpers


def _check_outputs(outputs: str) -> None:
    if outputs not in OUTPUTS:
        raise ValueError(f"unknown outputs {outputs!r}; expected one of {list(OUTPUTS)}")


def _traced(dirs: GoodDirections) -> bool:
    """Whether dirs act as U_k U_kᵀ ⊗ I_c (traced, several outputs) rather than on f.ravel()."""
    return dirs.outputs == "traced" and math.prod(dirs.out_shape) > 1


def _feature_products(model: Any, prep: Any) -> tuple[Callable, Callable]:
    """(u ↦ J u, c ↦ Jᵀ c) on prepared inputs, from `linear_term` and its VJP; J u and c are
    flat, (n·c,), the outputs' entries in row-major order (for one output: (n,), unchanged)."""

    def jv(u):
        return model.linear_term(u, prep).reshape(-1)

    f, pullback = jax.vjp(lambda u: model.linear_term(u, prep), model.zeros())
    return jv, lambda c: pullback(c.reshape(f.shape))[0]


def _gram_product(model: Any, prep: Any) -> Callable[[Array], Array]:
    """c ↦ K c = J (Jᵀ c) for one column c (n·c,)."""
    if isinstance(model, TwoLayer):
        # Jᵀc = Dᵀ(c ∘ X) and J V = rowsum((D V) ∘ X) with D = σ'(X W0ᵀ) diag(a): batched by
        # vmap, each becomes one GEMM over all columns, with no (columns, n, m) intermediate.
        scaled = prep.d1.astype(model.a.dtype) * model.a[None, :]  # bfloat16 storage: upcast

        def product(c):
            return jnp.sum((scaled @ (scaled.T @ (c[:, None] * prep.x))) * prep.x, axis=1)

        return product
    jv, jt = _feature_products(model, prep)
    return lambda c: jv(jt(c))


def _apply_gram(model: Any, prep: Any, q: Array, batch_size: int) -> Array:
    """K Q = J (Jᵀ Q) for Q (n·c, l), batch_size columns at a time."""
    return jax.lax.map(_gram_product(model, prep), q.T, batch_size=batch_size).T


def _apply_traced_gram(model: Any, prep: Any, q: Array, batch_size: int, c: int) -> Array:
    """K_tr Q = (1/c) Σ_a J_a J_aᵀ Q for Q (n, l): each column times every output's e_a."""
    n, width = q.shape
    eye = jnp.eye(c, dtype=q.dtype)
    columns = (q[:, None, :, None] * eye[None, :, None, :]).reshape(n * c, width * c)
    out = _apply_gram(model, prep, columns, batch_size).reshape(n, c, width, c)
    return jnp.einsum("iala->il", out) / c


def _gram_matrix(model: Any, prep: Any, batch_size: int, outputs: str = "full") -> Array:
    if isinstance(model, TwoLayer):
        d1 = prep.d1.astype(model.a.dtype)  # σ' stored in bfloat16 (TwoLayer.storage): upcast
        return (prep.x @ prep.x.T) * ((d1 * (model.a**2)[None, :]) @ d1.T)
    f = jax.eval_shape(lambda: model.linear_term(model.zeros(), prep))
    n, out = f.shape[0], f.shape[1:]
    c, axes = math.prod(out), tuple(range(1, len(f.shape)))
    if isinstance(model, TaylorModel) and isinstance(prep.x, jax.Array):
        # K of f(params0; x) itself, from the kernel engine (features once per block)
        if len(f.shape) == 1 or outputs == "traced":  # the engine divides a trace by c
            return ntk._kernel(model.apply_fn, model.params0, prep.x, None, axes, ())
        # (n, n, o1, o1, o2, o2, ...) → (n, o1, o2, ..., n, o1, o2, ...)
        k = ntk._kernel(model.apply_fn, model.params0, prep.x, None, (), ())
        order = (0, *range(2, 2 * len(out) + 2, 2), 1, *range(3, 2 * len(out) + 2, 2))
        return k.transpose(order).reshape(n * c, n * c)
    full = _apply_gram(model, prep, jnp.eye(n * c, dtype=f.dtype), batch_size)
    if outputs == "traced":
        return jnp.einsum("iaja->ij", full.reshape(n, c, n, c)) / c
    return full


@partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8, 9))
def _good_directions(model, prep, key, k, method, width, max_iters, tol, batch_size, outputs):
    f = jax.eval_shape(lambda: model.linear_term(model.zeros(), prep))
    n, out_shape = f.shape[0], tuple(f.shape[1:])
    c = math.prod(out_shape)
    traced = outputs == "traced" and c > 1
    if method == "gram":
        gram = _gram_matrix(model, prep, batch_size, outputs)
        evals, evecs = jnp.linalg.eigh(gram)
        evals, u = evals[::-1][:k], evecs[:, ::-1][:, :k]
        resid = jnp.linalg.norm(gram @ u - u * evals[None, :], axis=0) / evals
        info = SubspaceInfo(jnp.asarray(1), jnp.max(resid))
    else:
        if traced:
            matmat = partial(_apply_traced_gram, model, prep, batch_size=batch_size, c=c)
        else:
            matmat = partial(_apply_gram, model, prep, batch_size=batch_size)
        start = jax.random.normal(key, (n if traced else n * c, width), dtype=f.dtype)
        evals, u, info = _subspace_iteration(matmat, start, k, max_iters, tol)
    signs = jnp.sign(u[jnp.argmax(jnp.abs(u), axis=0), jnp.arange(k)])
    u = u * signs[None, :]
    s_k = jnp.sqrt(jnp.maximum(evals, 0.0))
    basis = None
    if traced:
        basis = _top_basis(partial(_apply_gram, model, prep, batch_size=batch_size), u, c)
    return GoodDirections(u, s_k, basis, out_shape, outputs), info


def _top_basis(gram: Callable[[Array], Array], u: Array, c: int) -> Array:
    """B = W G^{-1/2} for W = U_k ⊗ I_c and G = Wᵀ K W (k·c products with the full kernel K,
    `gram`: Q ↦ K Q): Jᵀ B is an orthonormal basis of span(Jᵀ W); directions where G vanishes
    (no rank) get zero columns."""
    w = jnp.kron(u, jnp.eye(c, dtype=u.dtype))  # W[(i, a), (j, b)] = U_k[i, j] δ_ab
    g = w.T @ gram(w)
    lam, q = jnp.linalg.eigh(0.5 * (g + g.T))
    cutoff = jnp.finfo(u.dtype).eps * g.shape[0] * jnp.max(lam)
    scale = jnp.where(lam > cutoff, 1.0 / jnp.sqrt(jnp.where(lam > cutoff, lam, 1.0)), 0.0)
    return w @ (q * scale[None, :])


def _good_directions_ntk(model, prep, key, k, oversampling, max_iters, tol, outputs, out_shape):
    """ "matrix_free" for a `TaylorModel` on array inputs: randomized block Krylov
    (`jaxntk.linalg.top_eigh`) on the NTK operator (the full (n·c) × (n·c) kernel, or the traced
    n × n one), its Jacobian features kept in memory when they fit the default budget
    (`jaxntk.linalg.ntk_operator`); for large n."""
    c = math.prod(out_shape)
    traced = outputs == "traced" and c > 1
    trace_axes = tuple(range(-len(out_shape), 0)) if traced else ()
    op = linalg.ntk_operator(model.apply_fn, model.params0, prep.x, trace_axes=trace_axes)
    values, u, info = linalg.top_eigh(
        op, k, oversampling=oversampling, max_iters=max_iters, tol=tol, key=key, return_info=True
    )
    signs = jnp.sign(u[jnp.argmax(jnp.abs(u), axis=0), jnp.arange(k)])
    u = u * signs[None, :]
    s_k = jnp.sqrt(jnp.maximum(values, 0.0))
    basis = None
    if traced:  # the full (n·c) kernel's products on the k·c columns: matmuls on its features
        full = linalg.ntk_operator(model.apply_fn, model.params0, prep.x, trace_axes=())
        basis = _top_basis(full, u, c)
    dirs = GoodDirections(u, s_k, basis, out_shape, outputs)
    return dirs, SubspaceInfo(jnp.asarray(info.iterations), info.error)


def _subspace_iteration(matmat, start, k, max_iters, tol):
    """Top-k eigenpairs of a PSD operator by block subspace iteration with Rayleigh-Ritz.

    Each iteration costs one product with the operator; the relative residuals of the Ritz pairs
    are checked on the product already computed, so convergence is free to test.
    """

    def ritz(q, y):
        b = q.T @ y
        theta, w = jnp.linalg.eigh(0.5 * (b + b.T))
        theta, w = theta[::-1][:k], w[:, ::-1][:, :k]
        u = q @ w
        resid = jnp.linalg.norm(y @ w - u * theta[None, :], axis=0) / jnp.abs(theta)
        return theta, u, jnp.max(resid)

    def cond(state):
        it, _, _, resid = state
        return (it < max_iters) & (resid > tol)

    def body(state):
        it, _, y, _ = state
        q = jnp.linalg.qr(y)[0]
        y = matmat(q)
        return it + 1, q, y, ritz(q, y)[2]

    q = jnp.linalg.qr(start)[0]
    y = matmat(q)
    it, q, y, resid = jax.lax.while_loop(cond, body, (jnp.asarray(1), q, y, ritz(q, y)[2]))
    theta, u, resid = ritz(q, y)
    return theta, u, SubspaceInfo(it, resid)


def _normal_quadrature(points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E_{z~N(0,1)}: Gauss-Legendre on [−12, 0] and [0, 12] (ReLU's step)."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    z = np.concatenate([6.0 * (nodes - 1.0), 6.0 * (nodes + 1.0)])
    w = np.concatenate([weights, weights]) * 6.0 * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return z, w


def _evaluate(fn: Callable[[Array], Array], z: np.ndarray) -> np.ndarray:
    return np.asarray(fn(jnp.asarray(z)), dtype=np.float64)


def _orthonormal_hermite(degree: int, z: np.ndarray) -> np.ndarray:
    """h_j(z) = He_j(z)/√(j!), j = 0..degree, by the normalised recurrence; (degree+1, len)."""
    h = np.empty((degree + 1, z.size))
    h[0] = 1.0
    if degree >= 1:
        h[1] = z
    for j in range(1, degree):
        h[j + 1] = (z * h[j] - math.sqrt(j) * h[j - 1]) / math.sqrt(j + 1)
    return h


def _sphere_cosine_quadrature(d: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule for t = x·x'/(|x||x'|), x, x' uniform on S^{d−1}: density ∝ (1−t²)^{(d−3)/2}.

    Golub-Welsch on the Gegenbauer recurrence (λ = (d−2)/2); exact for polynomials of degree
    < 2·points; the weights sum to 1.
    """
    lam = (d - 2) / 2
    j = np.arange(1, points)
    beta = np.sqrt(j * (j + 2 * lam - 1) / (4.0 * (j + lam) * (j + lam - 1)))
    nodes, vectors = np.linalg.eigh(np.diag(beta, 1) + np.diag(beta, -1))
    return nodes, vectors[0] ** 2


def _check_learning_curve(eigenvalues, coefficients, n, ridge, noise):
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError(
            f"eigenvalues must be a non-empty 1-D array of finite values ≥ 0, got shape {lam.shape}"
        )
    coef = np.asarray(coefficients, dtype=np.float64)
    if coef.ndim not in (1, 2) or coef.shape[0] != lam.size or not np.all(np.isfinite(coef)):
        raise ValueError(
            f"target_coefficients must be finite, ({lam.size},) or ({lam.size}, c) like the "
            f"eigenvalues, got shape {coef.shape}"
        )
    sizes = np.atleast_1d(np.asarray(n))
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) or np.any(sizes < 1):
        raise ValueError(f"n must be an int ≥ 1 or a 1-D sequence of them, got {n!r}")
    for name, value in (("ridge", ridge), ("noise", noise)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite float ≥ 0, got {value!r}")
    return lam, coef, sizes.astype(np.float64)


def _effective_ridge(lam: np.ndarray, n: float, ridge: float) -> float:
    """κ > 0 with Σ λ/(λ + κ) + δ/κ = n (the left side falls from +∞, or from the rank, to 0):
    bisection in log κ; 0 where δ = 0 and n ≥ the rank (no positive root)."""
    if ridge == 0 and np.count_nonzero(lam) <= n:
        return 0.0

    def excess(kappa: float) -> float:
        return float(np.sum(lam / (lam + kappa)) + ridge / kappa - n)

    low, high = 1e-300, max(float(lam.max()), ridge, 1.0)
    while excess(high) > 0:
        high *= 2.0
    for _ in range(2000):
        mid = math.sqrt(low * high)
        if excess(mid) > 0:
            low = mid
        else:
            high = mid
        if high - low <= 1e-15 * high:
            break
    return 0.5 * (low + high)
