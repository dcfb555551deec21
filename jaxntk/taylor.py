"""Exact Taylor models of any `apply_fn(params, *inputs)` around `params0`, for any params pytree.

Along a direction δ (a pytree shaped like params0), with g(t) = f(params0 + t δ):

    f(params0 + δ) = f(params0) + f_L(δ) + f_Q(δ) + … + f_k(δ) + O(‖δ‖^{k+1})
    f_L(δ) = ∇f(params0) · δ          = g'(0)       one `jax.jvp`
    f_Q(δ) = ½ δᵀ ∇²f(params0) δ      = ½ g''(0)
    f_j(δ) = (1/j!) g⁽ʲ⁾(0)

f_L is one jvp. The terms of order 2 and higher come from Taylor mode (`jaxntk._jet`): one pass
that carries, beside every intermediate value, its coefficients along the line params0 + tδ, so
the cost grows about as k²; nested jvps (`method="jvp"`, 2^k work as traced) are the reference of
the tests, and the fallback for a model with a primitive that has no Taylor rule. For the paper's
two-layer network these are the closed forms of docs/science.md §3 (`jaxntk.TwoLayer`, the fast
path and the oracle of the tests): f_L = Σ_r a_r σ'(w0_r·x)(u_r·x) and
f_Q = ½ Σ_r a_r σ''(w0_r·x)(u_r·x)².

`linearize` and `taylor` return f(params0) + f_L(params − params0) [+ f_Q(params − params0)]
with the signature of `apply_fn`, as neural-tangents' `linearize` and `taylor_expand` do.
`TaylorModel` is the generic model of the trainer's protocol (`prepare`, `zeros`, `full`,
`linear_term`, `quadratic_term`, `linear_and_quadratic`), the counterpart of `TwoLayer`'s closed
forms.

What is cached for training (`TaylorModel.prepare`, measured in benchmarks/taylor_cache.py and
the `step/taylor/*` rows of `jaxntk bench`):
- first order: `jax.linearize` at params0, once, so a step evaluates only the linear map;
- order k ≥ 2: the Taylor terms δ ↦ (f_1(δ), …, f_k(δ)) split by partial evaluation
  (`jaxntk._staging`) with params0 and x known: everything they compute from params0 and x alone
  (the forward pass at params0, and for an elementwise σ the factors σ⁽ʲ⁾(x W0ᵀ)/j!) is computed
  once and kept as residuals, and a step runs only the δ-dependent rest. For the two-layer network
  that rest is the closed form's: one product X Uᵀ, then elementwise products with the stored
  factors. `TaylorModel.residual_bytes` gives the residuals' size; above `max_residual_bytes`
  `prepare` warns and the steps recompute instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from jaxntk import _staging
from jaxntk._jet import taylor_coefficients

Array = jax.Array
PyTree = Any

__all__ = [
    "TaylorModel",
    "TaylorPrepared",
    "linear_term",
    "linearize",
    "quadratic_term",
    "taylor",
    "taylor_terms",
]

METHODS = ("auto", "jet", "jvp")
"""How `taylor_terms` differentiates: "jet" (Taylor mode: all terms up to order k in one pass whose
cost grows about as k²), "jvp" (k nested `jax.jvp`s, 2^k work as traced: the reference the tests
hold Taylor mode to), or "auto" (Taylor mode, and nested jvps for a function that uses a
primitive with no Taylor rule)."""


def linear_term(apply_fn: Callable[..., PyTree], params0: PyTree, delta: PyTree, *inputs) -> PyTree:
    """f_L(δ) = ∇f(params0) · δ, the first-order Taylor term of apply_fn(·, *inputs) (one jvp).

    Args:
        apply_fn: (params, *inputs) -> f, f an array or a pytree of arrays.
        params0: the expansion point, any pytree of float arrays.
        delta: the direction δ, a pytree with the structure, shapes and dtypes of params0.
        *inputs: the remaining arguments of apply_fn (e.g. x of shape (n, d)).

    Returns:
        f_L, shaped like f.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk import linear_term
        >>> def f(w, x):
        ...     return jnp.sin(x @ w)
        >>> w0, x = jnp.zeros(2), jnp.array([[1.0, 2.0]])
        >>> linear_term(f, w0, jnp.array([0.5, 0.25]), x)  # cos(0) · (x · δ)
        Array([1.], dtype=float32)
    """
    _check_like("delta", delta, params0)
    return jax.jvp(_at_inputs(apply_fn, inputs), (params0,), (delta,))[1]


def quadratic_term(
    apply_fn: Callable[..., PyTree], params0: PyTree, delta: PyTree, *inputs
) -> PyTree:
    """f_Q(δ) = ½ δᵀ ∇²f(params0) δ, the second-order Taylor term (Taylor mode).

    Args:
        apply_fn: (params, *inputs) -> f, f an array or a pytree of arrays.
        params0: the expansion point, any pytree of float arrays.
        delta: the direction δ, a pytree with the structure, shapes and dtypes of params0.
        *inputs: the remaining arguments of apply_fn (e.g. x of shape (n, d)).

    Returns:
        f_Q, shaped like f.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk import quadratic_term
        >>> def f(w, x):
        ...     return jnp.exp(x @ w)
        >>> w0, x = jnp.zeros(2), jnp.array([[1.0, 2.0]])
        >>> quadratic_term(f, w0, jnp.array([0.5, 0.25]), x)  # ½ exp(0) (x · δ)²
        Array([0.5], dtype=float32)
    """
    _check_like("delta", delta, params0)
    return _terms(_at_inputs(apply_fn, inputs), params0, delta, 2)[2]


def taylor_terms(
    apply_fn: Callable[..., PyTree],
    params0: PyTree,
    delta: PyTree,
    *inputs,
    order: int,
    method: str = "auto",
) -> list[PyTree]:
    """[f(params0), f_1(δ), …, f_k(δ)], the Taylor terms of apply_fn(·, *inputs) up to order k.

        f_j(δ) = (1/j!) dʲ/dtʲ f(params0 + tδ) at t = 0
        f(params0 + δ) = f(params0) + f_1(δ) + … + f_k(δ) + O(‖δ‖^{k+1})

    f_1 = f_L and f_2 = f_Q (`linear_term`, `quadratic_term`). With method "jet" the terms come
    from one pass of Taylor-mode differentiation (`jax.experimental.jet`), whose cost grows
    about as k² rather than the 2^k of k nested jvps; functions with a custom derivative rule
    (`jax.nn.relu`, `jax.nn.softplus`, ...) are differentiated through their primal definition,
    which jet can expand.

    Args:
        apply_fn: (params, *inputs) -> f, f an array or a pytree of arrays of any shape.
        params0: the expansion point, any pytree of float arrays.
        delta: the direction δ, a pytree with the structure, shapes and dtypes of params0.
        *inputs: the remaining arguments of apply_fn (e.g. x of shape (n, d)).
        order: the highest order k ≥ 1.
        method: "auto" (the default), "jet" (Taylor mode) or "jvp" (nested jvps, the
            reference); see `METHODS`.

    Returns:
        A list of k + 1 pytrees shaped like f: f(params0), f_1(δ), …, f_k(δ).

    Raises:
        ValueError: for an order < 1, an unknown method, or a delta unlike params0.
        NotImplementedError: with method "jet", for a primitive that has no Taylor rule.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk import taylor_terms
        >>> def f(w, x):
        ...     return jnp.exp(x @ w)
        >>> terms = taylor_terms(f, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.ones((1, 2)), order=3)
        >>> [round(float(t[0]), 4) for t in terms]   # e^t = 1 + t + t²/2 + t³/6
        [1.0, 1.0, 0.5, 0.1667]
    """
    _check_order(order)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_like("delta", delta, params0)
    fn = _at_inputs(apply_fn, inputs)
    expand = {"auto": _terms, "jet": _jet_terms, "jvp": _nested_terms}[method]
    return expand(fn, params0, delta, order)


def linearize(apply_fn: Callable[..., PyTree], params0: PyTree) -> Partial:
    """The first-order Taylor model: (params, *inputs) -> f(params0) + f_L(params − params0).

    Same as `taylor(apply_fn, params0, 1)`, and the counterpart of neural-tangents' `linearize`.

    Args:
        apply_fn: (params, *inputs) -> f; a plain function or a `jax.tree_util.Partial`.
        params0: the expansion point, any pytree of float arrays.

    Returns:
        A `jax.tree_util.Partial` with apply_fn's signature, (params, *inputs) ->
        f(params0; inputs) + f_L(params − params0).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxntk import linearize
        >>> def f(w, x):
        ...     return jnp.sin(x @ w)
        >>> f_lin = linearize(f, jnp.zeros(2))
        >>> f_lin(jnp.array([0.5, 0.25]), jnp.array([[1.0, 2.0]]))  # sin(0) + cos(0) · 1.0
        Array([1.], dtype=float32)
    """
    return taylor(apply_fn, params0, 1)


def taylor(apply_fn: Callable[..., PyTree], params0: PyTree, order: int) -> Partial:
    """The Taylor model of apply_fn around params0 of the given order, with apply_fn's signature.

        order 1: (params, *inputs) -> f(params0) + f_L(δ)
        order 2: (params, *inputs) -> f(params0) + f_L(δ) + f_Q(δ),     δ = params − params0
        order k: (params, *inputs) -> f(params0) + f_1(δ) + … + f_k(δ)   (`taylor_terms`)

    The result is a `jax.tree_util.Partial`: params0 (and the arrays of apply_fn when it is a
    Partial) are pytree leaves, so it can be passed to jitted code as an argument without
    becoming a compile-time constant or causing a retrace for new values of the same shapes.

    Args:
        apply_fn: (params, *inputs) -> f; a plain function or a `jax.tree_util.Partial`.
        params0: the expansion point, any pytree of float arrays.
        order: k ≥ 1. Order 1 is one jvp; higher orders sum the terms of `taylor_terms`
            (Taylor mode).

    Returns:
        A `jax.tree_util.Partial` (params, *inputs) -> f(params0) + Σ_{j≤k} f_j(params − params0),
        shaped like apply_fn's output.

    Raises:
        ValueError: if order is not an int ≥ 1.
        TypeError: if apply_fn is not callable.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxntk as jn
        >>> net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=5, m=8)
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
        >>> f_quad = jn.taylor(net.apply_fn, net.w0, 2)
        >>> w = net.w0 + 0.01
        >>> gap = jnp.max(jnp.abs(f_quad(w, x) - net.apply_fn(w, x)))  # O(0.01³)
        >>> bool(gap < 1e-5)
        True
    """
    _check_order(order)
    return Partial(_model_of_order(int(order)), _as_partial(apply_fn), params0)


class TaylorPrepared(NamedTuple):
    """What a `TaylorModel` computes once for a fixed input set x (`TaylorModel.prepare`).

    Attributes:
        x: the inputs, as passed to `prepare`.
        f0: f(params0; x), shaped like the model's output.
        linear: the linear map δ ↦ f_L(δ) from `jax.linearize`, a `jax.tree_util.Partial`
            whose residuals are pytree leaves.
        terms: δ ↦ (f_1(δ), …, f_k(δ)) up to the order asked of `prepare`, split by partial
            evaluation so that it runs only the δ-dependent part (a `jax.tree_util.Partial`
            whose residuals are pytree leaves); None for order 1, or when the residuals would
            exceed `TaylorModel.max_residual_bytes` (the terms are then recomputed in full).
    """

    x: PyTree
    f0: PyTree
    linear: Partial
    terms: Partial | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TaylorModel:
    """The generic model for training Taylor terms of any apply_fn(params, x) around params0.

    Implements the trainer's model protocol, with U a pytree shaped like params0:
    `prepare(x)`, `zeros()`, `full(U, prep)` = f(params0 + U; x), `linear_term(U, prep)` = f_L(U),
    `quadratic_term(U, prep)` = f_Q(U), `linear_and_quadratic(U, prep)` = (f_L, f_Q).
    `jaxntk.TwoLayer` implements the same protocol in closed form.

    A pytree: params0 and, when apply_fn is a `jax.tree_util.Partial`, its arrays are leaves, so the
    model passes through `jit` as an argument. A plain function is wrapped in a leafless Partial and
    is part of the compiled program's identity (pass the same function object to avoid retracing).

    Attributes:
        apply_fn: (params, x) -> f(params; x).
        params0: the expansion point, any pytree of float arrays.
        max_residual_bytes: the most bytes `prepare` may keep for the terms of order ≥ 2 (a
            static field); None: a quarter of the device's memory where JAX reports it, else an
            eighth of the host's. Above it `prepare` warns and the steps recompute the terms.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxntk as jn
        >>> net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=5, m=8)
        >>> model = jn.TaylorModel(net.apply_fn, net.w0)         # generic twin of `net`
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
        >>> u = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (8, 5))
        >>> f_lin, f_quad = model.linear_and_quadratic(u, model.prepare(x))
        >>> closed_lin, closed_quad = net.linear_and_quadratic(u, net.prepare(x))
        >>> bool(jnp.allclose(f_quad, closed_quad, atol=1e-6))
        True
    """

    apply_fn: Callable[..., PyTree]
    params0: PyTree
    max_residual_bytes: int | None = dataclasses.field(default=None, metadata={"static": True})

    def __post_init__(self):
        # Unflattening passes the Partial back in (or a placeholder while JAX maps over the tree).
        if callable(self.apply_fn) and not isinstance(self.apply_fn, Partial):
            object.__setattr__(self, "apply_fn", Partial(self.apply_fn))
        budget = self.max_residual_bytes
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0
        ):
            raise ValueError(f"max_residual_bytes must be None or an int ≥ 0, got {budget!r}")

    def prepare(self, x: PyTree, order: int = 2) -> TaylorPrepared:
        """Fix the inputs: f(params0; x), the linear map f_L from one `jax.linearize`, and the
        terms up to `order` with their δ-independent part computed once.

        The maps hold their jaxprs in their tree structure: a jitted function that takes the
        result as an argument traces once per `prepare` call (reuse the result, or call
        `prepare` inside the jitted function, as the trainer does, to compile once).

        Args:
            x: the inputs, as apply_fn takes them (e.g. (n, d)).
            order: the highest order of the terms that will be asked for (an int ≥ 1; 1 keeps
                only the linear map). Higher orders than this are recomputed in every call.

        Returns:
            A `TaylorPrepared` holding x, f0, the linear map and the hoisted terms.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> import jaxntk as jn
            >>> net = jn.TwoLayer.init(jax.random.PRNGKey(0), d=5, m=8)
            >>> model = jn.TaylorModel(net.apply_fn, net.w0)
            >>> x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
            >>> prep = model.prepare(x, order=3)
            >>> u = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (8, 5))
            >>> hoisted = model.taylor_terms(u, prep, 3)
            >>> direct = jn.taylor_terms(net.apply_fn, net.w0, u, x, order=3)[1:]
            >>> all(bool(jnp.allclose(a, b, atol=1e-6)) for a, b in zip(hoisted, direct))
            True
            >>> model.residual_bytes(x, order=3)  # σ⁽ʲ⁾/j! (3 × 24), a (8), x per half (30): × 4 B
            440
        """
        _check_order(order)
        f0, linear = jax.linearize(_at_inputs(self.apply_fn, (x,)), self.params0)
        terms = self._hoist(x, int(order)) if order >= 2 else None
        return TaylorPrepared(x, f0, linear, terms)

    def residual_bytes(self, x: PyTree, order: int = 2) -> int:
        """The bytes that `prepare(x, order)` keeps for the terms of order 2 to `order`,
        beyond params0 and x themselves (from shapes only: nothing is computed).

        Args:
            x: the inputs, or a pytree of `jax.ShapeDtypeStruct` like them.
            order: the highest order (≥ 2; order 1 keeps only `jax.linearize`'s map).

        Returns:
            The number of bytes.
        """
        _check_order(order)
        if order < 2:
            raise ValueError(f"order must be ≥ 2 for the hoisted terms, got {order!r}")
        return _staging.residual_bytes(self._terms_fn(int(order)), (self.params0, x), self.params0)

    def _terms_fn(self, order: int) -> Callable:
        apply_fn = self.apply_fn

        def terms(known, delta):
            params0, x = known
            return tuple(_terms(_at_inputs(apply_fn, (x,)), params0, delta, order)[1:])

        return terms

    def _hoist(self, x: PyTree, order: int) -> Partial | None:
        """The terms up to `order` split by partial evaluation, or None (with a warning) when
        the residuals exceed the budget."""
        fn, known = self._terms_fn(order), (self.params0, x)
        budget = _residual_budget(self.max_residual_bytes)
        traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(known))
        # Eagerly, the residuals are computed as they are found: measure first.
        size = None if traced else _staging.residual_bytes(fn, known, self.params0)
        if size is None or size <= budget:
            residuals, program = _staging.stage(fn, known, self.params0)
            size = program.residual_bytes
            if size <= budget:
                return Partial(_HoistedTerms(program, order), residuals)
        warnings.warn(
            f"TaylorModel.prepare: the order-{order} terms' residuals take {size / 2**20:.1f} MiB, "
            f"more than max_residual_bytes = {budget / 2**20:.1f} MiB; every step recomputes them",
            stacklevel=3,
        )
        return None

    def initial_output(self, prep: TaylorPrepared) -> PyTree:
        """f(params0; x), the zeroth-order term, cached by `prepare`.

        Args:
            prep: the result of `prepare(x)`.

        Returns:
            f(params0; x), shaped like the model's output.
        """
        return prep.f0

    def zeros(self) -> PyTree:
        """U = 0, the trainer's starting point.

        Returns:
            A pytree of zeros with params0's structure, shapes and dtypes.
        """
        return jax.tree.map(jnp.zeros_like, self.params0)

    def full(self, u: PyTree, prep: TaylorPrepared) -> PyTree:
        """The model itself at params0 + U: f(params0 + U; x).

        Args:
            u: the displacement U, shaped like params0.
            prep: the result of `prepare(x)`.

        Returns:
            f(params0 + U; x), shaped like the model's output.
        """
        _check_like("u", u, self.params0)
        return self.apply_fn(_add(self.params0, u), prep.x)

    def linear_term(self, u: PyTree, prep: TaylorPrepared) -> PyTree:
        """f_L(U) = ∇f(params0; x) · U from the map cached by `prepare`.

        Args:
            u: the displacement U, shaped like params0.
            prep: the result of `prepare(x)`.

        Returns:
            f_L(U), shaped like the model's output.
        """
        _check_like("u", u, self.params0)
        return prep.linear(u)

    def quadratic_term(self, u: PyTree, prep: TaylorPrepared) -> PyTree:
        """f_Q(U) = ½ Uᵀ ∇²f(params0; x) U (Taylor mode).

        Args:
            u: the displacement U, shaped like params0.
            prep: the result of `prepare(x)`.

        Returns:
            f_Q(U), shaped like the model's output.
        """
        _check_like("u", u, self.params0)
        return self._terms_of(u, prep, 2)[1]

    def linear_and_quadratic(self, u: PyTree, prep: TaylorPrepared) -> tuple[PyTree, PyTree]:
        """(f_L(U), f_Q(U)) from one Taylor-mode pass, sharing the products with U.

        Args:
            u: the displacement U, shaped like params0.
            prep: the result of `prepare(x)`.

        Returns:
            The pair (f_L(U), f_Q(U)), each shaped like the model's output.
        """
        _check_like("u", u, self.params0)
        f_lin, f_quad = self._terms_of(u, prep, 2)
        return f_lin, f_quad

    def taylor_terms(self, u: PyTree, prep: TaylorPrepared, order: int) -> tuple[PyTree, ...]:
        """(f_1(U), …, f_k(U)) by Taylor mode (`taylor_terms`), for the order-k variants.

        Args:
            u: the displacement U, shaped like params0.
            prep: the result of `prepare(x)`.
            order: the highest order k ≥ 1 (a Python int: it fixes the compiled program).

        Returns:
            A tuple of k arrays shaped like the model's output.
        """
        _check_like("u", u, self.params0)
        _check_order(order)
        return self._terms_of(u, prep, int(order))

    def _terms_of(self, u: PyTree, prep: TaylorPrepared, order: int) -> tuple[PyTree, ...]:
        """(f_1(U), …, f_order(U)): from the hoisted terms when `prepare` kept them to this
        order (XLA drops the unused higher ones), else by Taylor mode in full."""
        if prep.terms is not None and prep.terms.func.order >= order:
            return tuple(prep.terms(u)[:order])
        return tuple(_terms(_at_inputs(self.apply_fn, (prep.x,)), self.params0, u, order)[1:])


class _HoistedTerms:
    """δ ↦ (f_1(δ), …, f_k(δ)) from the residuals of `jaxntk._staging.stage`: the function of a
    `jax.tree_util.Partial` whose arguments are the residuals."""

    def __init__(self, program: _staging.Program, order: int):
        self.program = program
        self.order = order

    def __call__(self, residuals: list, delta: PyTree) -> tuple:
        return self.program(residuals, delta)


def _residual_budget(max_residual_bytes: int | None) -> int:
    """`max_residual_bytes`, or by default a quarter of the device's memory where JAX reports
    it, else an eighth of the host's."""
    if max_residual_bytes is not None:
        return int(max_residual_bytes)
    total, on_device = _memory_bytes()
    return total // (4 if on_device else 8)


def _memory_bytes() -> tuple[int, bool]:
    """(bytes, True) of this process's first device where JAX reports its memory, else (bytes
    of the host's physical memory, False); 2³⁴ bytes of host where neither is known."""
    try:  # this process's own device: another process's cannot report its memory
        stats = jax.local_devices()[0].memory_stats() or {}
    except RuntimeError:
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), True
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), False
    except (ValueError, OSError, AttributeError):
        return 2**34, False


def _terms(fn, params0, delta, order: int) -> list:
    """Taylor mode, or nested jvps when fn uses a primitive that has no Taylor rule."""
    try:
        return _jet_terms(fn, params0, delta, order)
    except NotImplementedError:
        return _nested_terms(fn, params0, delta, order)


def _first_order_model(apply_fn, params0, params, *inputs):
    _check_like("params", params, params0)
    f0, f_lin = jax.jvp(_at_inputs(apply_fn, inputs), (params0,), (_sub(params, params0),))
    return _add(f0, f_lin)


def _order_k_model(order, apply_fn, params0, params, *inputs):
    _check_like("params", params, params0)
    terms = _terms(_at_inputs(apply_fn, inputs), params0, _sub(params, params0), order)
    total = terms[0]
    for term in terms[1:]:
        total = _add(total, term)
    return total


@functools.cache
def _model_of_order(order: int) -> Callable:
    """One function object per order, so that `taylor` models of one order share compilations."""
    if order == 1:
        return _first_order_model
    return functools.partial(_order_k_model, order)


def _jet_terms(fn, params0, delta, order: int) -> list:
    """[f(params0), f_1(δ), …, f_k(δ)] by Taylor mode (`jaxntk._jet`): the coefficients of
    t ↦ fn(params0 + tδ), which are the Taylor terms along δ."""
    leaves0, treedef = jax.tree.flatten(params0)
    out_tree = jax.tree.structure(jax.eval_shape(fn, params0))

    def flat(*leaves):
        return jax.tree.leaves(fn(jax.tree.unflatten(treedef, leaves)))

    coefficients = taylor_coefficients(flat, leaves0, jax.tree.leaves(delta), order)
    return [jax.tree.unflatten(out_tree, c) for c in coefficients]


def _nested_terms(fn, params0, delta, order: int) -> list:
    """[f(params0), f_1(δ), …, f_k(δ)] from k nested jvps along δ (2^k work: the reference)."""
    derivs = _nested_derivatives(fn, params0, delta, order)
    return [jax.tree.map(lambda y, j=j: y / math.factorial(j), d) for j, d in enumerate(derivs)]


def _nested_derivatives(fn, params0, delta, order: int) -> list:
    """[g(0), g'(0), …, g⁽ᵏ⁾(0)] by k nested jvps along δ (2^k work: the reference)."""

    def upto(j):
        if j == 0:
            return lambda p: [fn(p)]
        lower = upto(j - 1)

        def derivs(p):
            primal, tangent = jax.jvp(lower, (p,), (delta,))
            return [*primal, tangent[-1]]

        return derivs

    return upto(order)(params0)


def _check_order(order) -> None:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
        raise ValueError(f"order must be an int ≥ 1, got {order!r}")


def _at_inputs(apply_fn: Callable[..., PyTree], inputs: tuple) -> Callable[[PyTree], PyTree]:
    return lambda params: apply_fn(params, *inputs)


def _as_partial(apply_fn: Callable[..., PyTree]) -> Partial:
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, *inputs), got {apply_fn!r}")
    return apply_fn if isinstance(apply_fn, Partial) else Partial(apply_fn)


def _add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, a, b)


def _sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, a, b)


def _check_like(name: str, tree: PyTree, params0: PyTree) -> None:
    """ValueError unless `tree` has params0's tree structure and each leaf its shape and dtype."""
    structure, expected = jax.tree.structure(tree), jax.tree.structure(params0)
    if structure != expected:
        raise ValueError(
            f"{name} must have the tree structure of params0, {expected}; got {structure}"
        )
    leaves0 = jax.tree.leaves(params0)
    for (path, leaf), leaf0 in zip(jax.tree_util.tree_leaves_with_path(tree), leaves0, strict=True):
        shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
        shape0, dtype0 = jnp.shape(leaf0), jnp.result_type(leaf0)
        if shape != shape0 or dtype != dtype0:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} must have shape {shape0} and dtype {dtype0} "
                f"like params0, got shape {shape} and dtype {dtype}"
            )
