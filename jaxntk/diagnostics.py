"""Laziness measures: how far a run moves from its initial kernel, parameters and Taylor models.

All functions are pure and traceable (they run inside the compiled training loop). With the
trained predictor g(U) of a variant (`Variant.predict`: f(θ0 + U) for "full", f0 + f_L(U) for
"ntk", f0 + f_L(U) + f_Q(U) for "ntk+quadntk", …) and a fixed probe set of P inputs x_1..x_P:

    tangent kernel       K(U)_ij = ⟨∂g(x_i; U)/∂U, ∂g(x_j; U)/∂U⟩       (P × P, at the current U)
    kernel change        ‖K(U_t) − K(U_0)‖_F / ‖K(U_0)‖_F
    alignment            A(K, y) = ⟨K_c, Y_c Y_cᵀ⟩_F / (‖K_c‖_F ‖Y_c Y_cᵀ‖_F),
                         K_c = H K H, Y_c = H Y, H = I − 11ᵀ/P
                         (centered kernel–target alignment, Cortes, Mohri & Rostamizadeh 2012)
    displacement         ‖U_t‖ / ‖θ0‖                                  (norms over all leaves)
    Taylor distances     D_k = ‖f(θ0 + U) − f_k(U)‖ / ‖f(θ0 + U) − f(θ0)‖, k = 1, 2,
                         f_1 = f0 + f_L(U) (the linearization), f_2 = f0 + f_L(U) + f_Q(U),
                         on the test inputs: the share of the network's own movement that its
                         order-k Taylor model at the same U misses (0 when U = 0).

The kernel change is measured from K_0 = J_0 J_0ᵀ, the network's empirical NTK at θ0, for every
variant. For "full" K(U) is the empirical NTK of the network at θ0 + U; for "ntk" it is K_0 at
every U (g is linear in U, so its kernel change is exactly 0); for "ntk+quadntk" the Jacobian is
J_0 + ∂f_Q/∂U = J_0 + (a_r σ''(w0_r·x)(u_r·x) x)_r for the two-layer network. For multi-output
models the kernel is the mean over the output entries of the per-entry kernels (the trace over the
output axes divided by their size) and Y holds the targets as rows.

Cost at P probe points: the network's own kernel ("full") of a `jaxntk.TwoLayer` (or a
`jaxntk.scaling.Scaled` one) is the closed form `network_kernel`, two products. For the other
variants of the two-layer network, whose predictions depend on row u_r of U only through u_r·x,
the per-example gradients are rank one per neuron, ∂g(x_i)/∂u_r = v_ir x_i, so
K = (X Xᵀ) ∘ (V Vᵀ): P per-example gradients (P·m·d) and a P × P × m product. Other models take
the full Jacobian of the P outputs (reverse mode, P backward passes) and its Gram matrix. The
empirical-NTK engine (`jaxntk.ntk`) runs block by block from the host, so it is not used inside
the compiled loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxntk import network
from jaxntk.scaling import Scaled

Array = jax.Array
PyTree = Any

__all__ = [
    "Reference",
    "centered_alignment",
    "displacement",
    "initial_params",
    "kernel_change",
    "measure",
    "network_kernel",
    "network_taylor_distances",
    "reference",
    "tangent_kernel",
    "taylor_distances",
]


def initial_params(model: Any) -> PyTree:
    """θ0 of a model of the protocol: `w0` of a `jaxntk.TwoLayer`, else its `params0`.

    Args:
        model: a `jaxntk.TwoLayer`, `jaxntk.TaylorModel` or `jaxntk.scaling.Scaled`.

    Returns:
        The expansion point θ0 (a pytree shaped like U).

    Raises:
        TypeError: the model has neither `w0` nor `params0`.

    Example:
        >>> import jax
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> initial_params(net).shape
        (4, 3)
    """
    if isinstance(model, network.TwoLayer):
        return model.w0
    if hasattr(model, "params0"):
        return model.params0
    raise TypeError(f"model must have `w0` or `params0`, got {type(model).__name__}")


def tangent_kernel(predict: Callable[[PyTree, Any], Array], u: PyTree, prep: Any) -> Array:
    """K(U): the Gram matrix of the Jacobian of U ↦ predict(U, prep) on the prepared probe, at U.

    `predict` is a variant's prediction of a model (`jaxntk.objectives.Variant.predict` with the
    model bound); see the module docstring for what K is for each variant and how it is computed.

    Args:
        predict: (U, prep) -> (P, ...) outputs on the prepared probe.
        u: the current displacement U.
        prep: `model.prepare(x_probe)` of the P probe inputs.

    Returns:
        (P, P) K(U), symmetric positive semi-definite.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
        >>> k = tangent_kernel(net.linear_term, net.zeros(), prep)   # the empirical NTK at W0
        >>> bool(jnp.allclose(k, net.ntk_gram(prep.x), atol=1e-6))
        True
    """
    if isinstance(prep, network.Prepared):
        return _neuron_rows_kernel(predict, u, prep)
    return _jacobian_kernel(predict, u, prep)


def network_kernel(model: Any, u: Array, prep: Any) -> Array | None:
    """The empirical NTK of a two-layer network at W0 + U in closed form, or None for others.

    K_ij = c² (x_i·x_j) Σ_r a_r² σ'((w0_r + u_r)·x_i) σ'((w0_r + u_r)·x_j), with c = α for a
    `jaxntk.scaling.Scaled` network (c = 1 for a `jaxntk.TwoLayer`): the tangent kernel of the
    "full" variant, from two products and no per-example gradients.

    Args:
        model: a `jaxntk.TwoLayer`, a `Scaled` one (any depth of scaling), or another model.
        u: (m, d) the displacement U.
        prep: `model.prepare(x_probe)`.

    Returns:
        (P, P) K, or None when the model is not a (scaled) `jaxntk.TwoLayer`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (5, 3)))
        >>> u = 0.2 * jnp.ones((4, 3))
        >>> k = network_kernel(net, u, prep)
        >>> bool(jnp.allclose(k, tangent_kernel(net.full, u, prep), atol=1e-6))
        True
    """
    scale = 1.0
    while isinstance(model, Scaled):
        scale, model = scale * model.alpha, model.model
    if not isinstance(model, network.TwoLayer) or not isinstance(prep, network.Prepared):
        return None
    x = prep.x
    d1 = model.sigma.d1(x @ (model.w0 + u).T) * model.a[None, :]
    return scale**2 * (x @ x.T) * (d1 @ d1.T)


def _neuron_rows_kernel(predict, u: Array, prep: network.Prepared) -> Array:
    """K = (X Xᵀ) ∘ (V Vᵀ) with ∂g(x_i)/∂u_r = v_ir x_i, from P per-example gradients."""
    x = prep.x

    def gradient(row):
        one = jax.tree.map(lambda a: a[None], row)
        return jax.grad(lambda w: predict(w, one)[0])(u)

    grads = jax.vmap(gradient)(prep)  # (P, m, d)
    sq = jnp.sum(x * x, axis=1)
    # a zero input has a zero gradient: any divisor gives v = 0 there
    v = jnp.einsum("imd,id->im", grads, x) / jnp.where(sq > 0, sq, jnp.ones_like(sq))[:, None]
    return (x @ x.T) * (v @ v.T)


def _jacobian_kernel(predict, u: PyTree, prep: Any) -> Array:
    """Σ over leaves of J Jᵀ from the reverse-mode Jacobian of the P outputs, traced over the
    output entries (their mean)."""
    shape = jax.eval_shape(lambda w: predict(w, prep), u).shape
    p, o = shape[0], math.prod(shape[1:])
    jac = jax.jacrev(lambda w: jnp.reshape(predict(w, prep), (-1,)))(u)
    gram = sum(
        j.reshape(p * o, -1) @ j.reshape(p * o, -1).T for j in jax.tree_util.tree_leaves(jac)
    )
    return jnp.einsum("iaja->ij", gram.reshape(p, o, p, o)) / o


def kernel_change(k_t: Array, k_0: Array) -> Array:
    """‖K_t − K_0‖_F / ‖K_0‖_F, the relative change of a kernel.

    Args:
        k_t: (P, P) the kernel now.
        k_0: (P, P) the kernel at the start (not all zero).

    Returns:
        () the relative change.

    Raises:
        ValueError: the two are not square matrices of one shape.

    Example:
        >>> import jax.numpy as jnp
        >>> float(kernel_change(jnp.eye(2) * 2.0, jnp.eye(2)))
        1.0
    """
    _check_square("k_t", k_t)
    if k_t.shape != k_0.shape:
        raise ValueError(f"k_t and k_0 must have one shape, got {k_t.shape} and {k_0.shape}")
    return jnp.linalg.norm(k_t - k_0) / jnp.linalg.norm(k_0)


def centered_alignment(k: Array, y: Array) -> Array:
    """Centered kernel–target alignment ⟨K_c, Y_c Y_cᵀ⟩_F / (‖K_c‖_F ‖Y_c Y_cᵀ‖_F).

    K_c = H K H and Y_c = H Y with H = I − 11ᵀ/P (Cortes, Mohri & Rostamizadeh 2012). It lies in
    [−1, 1] and is 1 when K_c is proportional to Y_c Y_cᵀ: a kernel whose only centered direction
    is the target.

    Args:
        k: (P, P) kernel on the probe.
        y: (P,) or (P, c) targets on the probe (not constant).

    Returns:
        () the alignment.

    Raises:
        ValueError: k is not square, or y does not have P rows.

    Example:
        >>> import jax.numpy as jnp
        >>> y = jnp.array([1.0, -2.0, 0.5])
        >>> k = jnp.outer(y, y) + 3.0   # a constant is centered out
        >>> round(float(centered_alignment(k, y)), 6)
        1.0
    """
    _check_square("k", k)
    p = k.shape[0]
    if y.ndim not in (1, 2) or y.shape[0] != p:
        raise ValueError(f"y must have shape (P,) or (P, c) with P = {p}, got {y.shape}")
    yc = y.reshape(p, -1)
    yc = yc - jnp.mean(yc, axis=0, keepdims=True)
    kc = k - jnp.mean(k, axis=0, keepdims=True)
    kc = kc - jnp.mean(kc, axis=1, keepdims=True)
    t = yc @ yc.T
    return jnp.sum(kc * t) / (jnp.linalg.norm(kc) * jnp.linalg.norm(t))


def displacement(u: PyTree, params0: PyTree) -> Array:
    """‖U‖ / ‖θ0‖, the relative parameter displacement (Euclidean norms over all leaves).

    Args:
        u: the displacement U = θ − θ0.
        params0: θ0, shaped like U.

    Returns:
        () the ratio.

    Example:
        >>> import jax.numpy as jnp
        >>> float(displacement(jnp.array([3.0, 4.0]), jnp.array([0.0, 10.0])))
        0.5
    """
    return _norm(u) / _norm(params0)


def _norm(tree: PyTree) -> Array:
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def taylor_distances(f: Array, f0: Array, f_linear: Array, f_quadratic: Array) -> dict[str, Array]:
    """D_1 = ‖f − f0 − f_L‖ / ‖f − f0‖ and D_2 = ‖f − f0 − f_L − f_Q‖ / ‖f − f0‖.

    The share of the network's movement f(θ0 + U) − f(θ0) that its linearization (D_1) and its
    order-2 Taylor model (D_2) at the same U miss; both 0 when the network has not moved.

    Args:
        f: f(θ0 + U) on the inputs.
        f0: f(θ0), shaped like f.
        f_linear: f_L(U), shaped like f.
        f_quadratic: f_Q(U), shaped like f.

    Returns:
        {"linear": D_1, "quadratic": D_2}, () each.

    Example:
        >>> import jax.numpy as jnp
        >>> f0 = jnp.zeros(2)
        >>> f, f_lin, f_quad = jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]), jnp.array([0.0, 0.5])
        >>> d = taylor_distances(f, f0, f_lin, f_quad)
        >>> round(float(d["linear"]), 4), round(float(d["quadratic"]), 4)
        (0.7071, 0.3536)
    """
    moved = jnp.linalg.norm(f - f0)
    safe = jnp.where(moved > 0, moved, jnp.ones_like(moved))
    rest1 = f - f0 - f_linear
    return {
        "linear": jnp.linalg.norm(rest1) / safe,
        "quadratic": jnp.linalg.norm(rest1 - f_quadratic) / safe,
    }


def network_taylor_distances(model: Any, u: PyTree, prep: Any) -> dict[str, Array]:
    """`taylor_distances` of the model's own network at θ0 + U on prepared inputs.

    Args:
        model: a model of the protocol (one output array per input set).
        u: the displacement U.
        prep: `model.prepare(x, order=2)` of the inputs.

    Returns:
        {"linear": D_1, "quadratic": D_2}.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> prep = net.prepare(jax.random.normal(jax.random.PRNGKey(1), (50, 3)))
        >>> u = 1e-2 * jax.random.normal(jax.random.PRNGKey(2), (4, 3))
        >>> d = network_taylor_distances(net, u, prep)   # D_k = O(‖U‖^k) near θ0
        >>> bool(d["quadratic"] < d["linear"] < 0.05)
        True
    """
    f_linear, f_quadratic = model.linear_and_quadratic(u, prep)
    return taylor_distances(model.full(u, prep), model.initial_output(prep), f_linear, f_quadratic)


class Reference(NamedTuple):
    """What the kernel diagnostics compare against, computed once before training.

    A NamedTuple of arrays (a pytree): pass it to the compiled program as an argument.

    Attributes:
        prep: `model.prepare(x_probe)` of the P probe inputs.
        y: (P, ...) the targets on the probe.
        kernel0: (P, P) K_0 = J_0 J_0ᵀ, the network's empirical NTK at θ0 on the probe.
        params0_norm: () ‖θ0‖.
    """

    prep: Any
    y: Array
    kernel0: Array
    params0_norm: Array


def reference(model: Any, x_probe: Array, y_probe: Array, order: int = 2) -> Reference:
    """The `Reference` of a run: the probe prepared, the network's NTK K_0 on it and ‖θ0‖.

    Every variant's kernel is compared with the same K_0, the Gram matrix of ∇f(θ0) (the kernel
    of f_L): 0 change at U = 0 for "full", "ntk" and "ntk+quadntk"; for "quadntk", whose
    f_Q has a zero Jacobian at U = 0, a change near 1 from the start (its kernel is not the NTK).

    Args:
        model: the model trained.
        x_probe: (P, d) probe inputs, e.g. the first P training inputs.
        y_probe: (P, ...) their targets.
        order: the highest Taylor order the predictions on the probe will read (`prepare`'s
            hint).

    Returns:
        The `Reference`.

    Raises:
        ValueError: y_probe without P rows.
    """
    if y_probe.shape[:1] != x_probe.shape[:1]:
        raise ValueError(
            f"y_probe must have {x_probe.shape[0]} rows (one per probe input), got {y_probe.shape}"
        )
    prep = model.prepare(x_probe, order=order)
    kernel0 = tangent_kernel(model.linear_term, model.zeros(), prep)
    return Reference(prep, y_probe, kernel0, _norm(initial_params(model)))


def measure(
    predict: Callable[[PyTree, Any], Array],
    u: PyTree,
    ref: Reference,
    *,
    linear: bool = False,
    kernel: Array | None = None,
) -> dict[str, Array]:
    """The kernel diagnostics at U against the run's `Reference`.

    Args:
        predict: (U, prep) -> outputs, the trained prediction (as for `tangent_kernel`).
        u: the current displacement U.
        ref: `reference(...)` of the run.
        linear: predict is f0 + f_L (the "ntk" variant): its kernel is K_0 at every U by
            linearity and is not recomputed (another program would only measure the rounding of
            two compilations, ~1e-16), so its kernel change is exactly 0.
        kernel: K(U) when the caller has it in closed form (`network_kernel`), else None.

    Returns:
        {"kernel_change": ‖K(U) − K_0‖_F/‖K_0‖_F, "alignment": A(K(U), y),
        "displacement": ‖U‖/‖θ0‖}, () each.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxntk.network import TwoLayer
        >>> net = TwoLayer.init(jax.random.PRNGKey(0), d=3, m=4)
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
        >>> ref = reference(net, x, x[:, 0])
        >>> u = 0.3 * jnp.ones((4, 3))
        >>> float(measure(net.linear_term, u, ref, linear=True)["kernel_change"])
        0.0
        >>> bool(measure(net.full, u, ref)["kernel_change"] > 0.01)   # the network's does move
        True
    """
    if kernel is not None:
        k = kernel
    else:
        k = ref.kernel0 if linear else tangent_kernel(predict, u, ref.prep)
    return {
        "kernel_change": kernel_change(k, ref.kernel0),
        "alignment": centered_alignment(k, ref.y),
        "displacement": _norm(u) / ref.params0_norm,
    }


def _check_square(name: str, k: Array) -> None:
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square (P, P) matrix, got shape {k.shape}")
