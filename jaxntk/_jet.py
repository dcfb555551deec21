"""Taylor mode along a line: the Taylor coefficients of t ↦ fn(x0 + t dx), all orders in one pass.

    fn(x0 + t dx) = c_0 + c_1 t + c_2 t² + … + c_k t^k + O(t^{k+1}),   c_j = (1/j!) dʲ/dtʲ at t = 0

A small interpreter runs fn's jaxpr and carries, beside each value, its coefficients c_1…c_k, with
None for a coefficient known to be zero. Values that do not depend on t (the inputs x, the
parameters' primal values) carry no coefficients at all, so a product with them is one product per
order: a linear layer costs k products, where `jax.experimental.jet`, which instantiates a zero
series for every constant, costs (k + 1)(k + 2)/2. Products of two t-dependent values follow the
Cauchy product; the other nonlinear primitives use jet's own rules (`jet.jet_rules`, which work
on these unscaled coefficients), so the cost grows about as k² rather than the 2^k of k nested
jvps.

Calls with a custom derivative rule (`jax.custom_jvp`, `jax.custom_vjp`: `jax.nn.relu`,
`jax.nn.softplus`, `jnp.logaddexp` ...) and jit calls are inlined: the primal definition is
expanded like any other function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import jet
from jax.extend import core as jex_core

Coefficients = list  # [c_1, …, c_k], each an array or None (known zero); None for a constant

# jaxpr calls whose body is evaluated in place
_INLINED = {
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
}
# primitives linear in the operands at these positions (None: all), the others constant
_LINEAR: dict[str, tuple[int, ...] | None] = {
    name: None
    for name in (
        "neg",
        "add",
        "sub",
        "add_any",
        "convert_element_type",
        "transpose",
        "reduce_sum",
        "squeeze",
        "expand_dims",
        "concatenate",
        "slice",
        "rev",
        "copy",
        "copy_p",
        "real",
        "imag",
        "conj",
        "complex",
        "cumsum",
        "reduce_window_sum",
        "split",
        "reduce_precision",
    )
} | {
    "reshape": (0,),
    "broadcast_in_dim": (0,),
    "pad": (0, 1),
    "dynamic_slice": (0,),
    "dynamic_update_slice": (0, 1),
    "gather": (0,),
    "div": (0,),
}
_BILINEAR = ("mul", "dot_general", "conv_general_dilated")


def taylor_coefficients(
    fn: Callable[..., list], x0: Sequence[jax.Array], dx: Sequence[jax.Array], order: int
) -> list[list[jax.Array]]:
    """[c_0, c_1, …, c_k] of t ↦ fn(*(x0 + t dx)), fn taking arrays and returning a list of them.

    Each c_j is a list with one array per output of fn; c_0 = fn(*x0).

    Raises:
        NotImplementedError: fn uses a primitive that has no Taylor rule here or in jet.
    """
    closed = jax.make_jaxpr(fn)(*x0)
    series = [[d] + [None] * (order - 1) for d in dx]
    outs = _run(closed.jaxpr, closed.consts, list(zip(x0, series, strict=True)), order)
    c0 = [p for p, _ in outs]
    return [c0] + [
        [jnp.zeros_like(p) if s is None or s[j] is None else s[j] for p, s in outs]
        for j in range(order)
    ]


def _run(jaxpr, consts, args: list, order: int) -> list:
    env: dict = {}

    def read(v):
        return (v.val, None) if isinstance(v, jex_core.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = (c, None)
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = _apply(eqn, ins, order)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _apply(eqn, ins: list, order: int):
    prim, params = eqn.primitive, eqn.params
    name = prim.name
    primals = [p for p, _ in ins]
    body = _INLINED.get(name)
    if body is not None and body in params:
        sub = params[body]
        outs = _run(sub.jaxpr, sub.consts, ins, order)
        return outs if prim.multiple_results else outs[0]
    primal_out = prim.bind(*primals, **params)
    moving = [i for i, (_, s) in enumerate(ins) if s is not None]
    if not moving:
        return _pair(prim, primal_out, None)
    if name in _LINEAR and all(i in (_LINEAR[name] or range(len(ins))) for i in moving):
        return _pair(prim, primal_out, _linear(prim, params, ins, moving, order))
    if name in _BILINEAR:
        return _pair(prim, primal_out, _cauchy(prim, params, ins, order))
    rule = jet.jet_rules.get(prim)
    if rule is None:
        raise NotImplementedError(
            f"Taylor mode has no rule for the primitive {name!r}; use method='jvp' (nested jvps)"
        )
    series = [
        [jnp.zeros_like(p) if s is None or s[j] is None else s[j] for j in range(order)]
        for p, s in ins
    ]
    _, terms = rule(primals, series, **params)
    if prim.multiple_results:
        return [(p, _known_zeros(t)) for p, t in zip(primal_out, terms, strict=True)]
    return primal_out, _known_zeros(terms)


def _known_zeros(terms) -> Coefficients | None:
    """jet's symbolic zeros (a whole zero series, or zero terms) as this module's None."""
    if terms is jet.zero_series:
        return None
    return [None if t is jet.zero_term else t for t in terms]


def _pair(prim, primal_out, terms):
    """(primal, coefficients) of one result, or a list of them for a multiple-result primitive."""
    if not prim.multiple_results:
        return primal_out, terms
    if terms is None:
        return [(p, None) for p in primal_out]
    per_out = [[None if t is None else t[i] for t in terms] for i in range(len(primal_out))]
    return [(p, c) for p, c in zip(primal_out, per_out, strict=True)]


def _linear(prim, params, ins, moving, order) -> Coefficients:
    """c_j of a primitive linear in its operands at `_LINEAR`'s positions (zero where constant),
    with the other operands (shapes, indices, a denominator) at their primal values."""
    linear = _LINEAR[prim.name] or range(len(ins))
    out = []
    for j in range(order):
        if all(ins[i][1][j] is None for i in moving):
            out.append(None)
            continue
        args = [
            (jnp.zeros_like(p) if s is None or s[j] is None else s[j]) if i in linear else p
            for i, (p, s) in enumerate(ins)
        ]
        out.append(prim.bind(*args, **params))
    return out


def _cauchy(prim, params, ins, order) -> Coefficients:
    """c_j of a bilinear product a·b: Σ_{i=0..j} a_i · b_{j−i}, skipping the known zeros."""
    (pa, sa), (pb, sb) = ins
    a = [pa] + (sa if sa is not None else [None] * order)
    b = [pb] + (sb if sb is not None else [None] * order)
    out = []
    for j in range(1, order + 1):
        parts = [
            prim.bind(a[i], b[j - i], **params)
            for i in range(j + 1)
            if a[i] is not None and b[j - i] is not None
        ]
        out.append(sum(parts[1:], parts[0]) if parts else None)
    return out
