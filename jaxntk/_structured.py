r"""Structured derivatives for the empirical NTK: kernels from layer inputs and output cotangents.

The idea of Novak, Sohl-Dickstein & Schoenholz, *Fast Finite Width Neural Tangent Kernel* (ICML
2022): for a weight W' that enters the model only through one linear op y = a·W' (a `dot_general`,
or a `conv_general_dilated` read as a `dot_general` over image patches), the chain rule gives the
per-example Jacobian without any weight-gradient op,

    ∂f_o/∂W'[g, c, f] = Σ_p A[p, g, c] · G_o[p, g, f],

with A (p, g, c) the op's input (patches for a convolution) over its free positions p (the size-1
batch axis and, for a convolution, the output pixels), groups g (a convolution's feature groups, a
`dot_general`'s batch dimensions) and contracted entries c,
and G_o = ∂f_o/∂y (p, g, f) the cotangent of the op's output for output entry o. Two examples x, x'
then contribute

    Σ_{g,c,f} J_o J'_{o'} = Σ_{p,q,g} (A[p,g]·A'[q,g]) (G_o[p,g]·G'_{o'}[q,g])   ("structured"),

which for a dense layer (p = g = 1) is (A A'ᵀ) ∘ (G G'ᵀ): O(in + |O|·out) per pair of examples in
place of O(|O|·in·out). When p is large (convolutions) the per-example Jacobian
J_o = Σ_p A[p] ⊗ G_o[p] is formed once per example instead (a batched matmul, "jacobian" form) and
contracted like any other.

A convolution whose output z reaches the model only through elementwise ops and then a sum over
all its pixels (global average pooling before a head: s = Σ_p h(z)[p], f = T(s)) is *pooled*:
G_o[p, g, f] = D[p, g, f]·U_o[g, f] with D = ∂h/∂z (one JVP) and U_o = ∂f_o/∂s, so
J_o = M ∘ U_o with M = Σ_p A[p] ⊗ D[p] formed once for all outputs (one matmul, not |O|), and
a pair of examples contributes Σ_{g,f} (Σ_c M M')·(Σ_o U_o U'_o): features g·f·(c + |O|) wide
instead of |O|·g·c·f (`_pooled`).

A bias b added to such an op's output z (z + scale·b broadcast over the positions p, z used only
there: a flax `Conv` or `Dense` with bias) has ∂f_o/∂b = scale·Σ_p G_o[p]: the op's A gains one
column, all `scale`, and the bias needs no backward pass of its own (`_bias`).

A table E (V, *D) read by a row lookup y[p] = E[t_p] (a `gather` of whole rows at integer
indices t that depend on x: `jnp.take(E, tokens, axis=0)`, flax's `nn.Embed`) is the dense rule
with A the one-hot rows of t: ∂f_o/∂E[v] = Σ_{p: t_p = v} G_o[p], and a pair of examples
contributes Σ_{p,q} [t_p = t'_q] (G_o[p]·G'_{o'}[q]) ("lookup", `_lookup_gram`): features
p + |O|·p·|D| wide and 2·p²·(1 + m·|D|) FLOPs a pair, whatever V, where the table's Jacobian is
|O|·V·|D| wide and costs 2·m·V·|D| a pair. It is used where it is the cheaper (p² below about
V); otherwise the table falls back, which forms that Jacobian by the lookup's transpose, a
scatter-add.

W' may reach the op from a parameter leaf W through x-independent layout and scale ops (reshape,
transpose, dtype conversion, multiplication by a constant c, e.g. a 1/√fan_in scale):
W' = c·π(W) for a permutation π, so ⟨J_W, J'_W⟩ = c²⟨J_{W'}, J'_{W'}⟩. Every other parameter leaf
(biases, LayerNorm scales, tied weights, leaves inside custom_jvp/scan/cond or any op without a
rule) *falls back*: its per-example Jacobian is taken by reverse mode and contracted directly.

The cotangents G come from a perturbation: the model's jaxpr (jit and closed_call sub-jaxprs
inlined) is re-evaluated with a zero ε_k added to the output of each structured op k, and one `vjp`
per example with respect to (ε, fallback leaves), vmapped over the |O| output entries, gives
G_k = ∂f/∂ε_k and the fallback Jacobians together. No weight-gradient convolution is ever formed.

`contract` returns the block in the layout of `jaxntk.ntk.empirical_ntk`: for outputs (b, *O)
and resolved `trace`/`diagonal` axes, axis by axis a pair (x1 entry, x2 entry) per free axis, one
shared entry per diagonal axis (axis 0 diagonal: only the pairs i = j), traced axes summed, and the
kernel divided by the product of the traced sizes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

Array = jax.Array

# Sub-jaxprs that are plain function calls: inlined so that the weights inside them are seen.
_INLINE = frozenset({"pjit", "jit", "closed_call", "core_call", "checkpoint", "remat", "remat2"})
# x-independent ops that only move, relabel or re-type a weight's entries.
_LAYOUT = frozenset(
    {"convert_element_type", "reshape", "transpose", "copy", "copy_p", "squeeze", "expand_dims"}
)
_FORMS = ("structured", "jacobian")
# ops whose output at an index depends on the chain's value only at that index (the other
# operand, if any, does not depend on it: the chain's values have one use each)
_ELEMENTWISE = frozenset(
    {
        "tanh", "logistic", "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "tan",
        "sinh", "cosh", "asinh", "acosh", "atanh", "asin", "acos", "atan", "erf", "erfc",
        "neg", "sqrt", "rsqrt", "cbrt", "integer_pow", "square", "abs", "convert_element_type",
        "copy", "copy_p", "reduce_precision", "add", "add_any", "sub", "mul", "div", "max",
        "min", "pow",
    }
)  # fmt: skip


class Cost(NamedTuple):
    """Estimated work of the structured kernel (see `cost`)."""

    feature_flops_per_example: float
    pair_flops: float
    feature_bytes_per_example: float


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter leaf whose derivative is structured.

    The leaf W reaches operand `position` of equation `eqn` (an index into the inlined equation
    list) as W' = scale·π(W). The op reads as a `dot_general` with p free positions, g groups, c
    contracted and f free weight entries per group; `form` is "structured", "jacobian",
    "pooled" or "lookup" (a row lookup in a table of `weight_shape` (V, *D): p rows looked up,
    g = c = 1, f = |D|). A "pooled" convolution's output reaches the model only through the
    elementwise equations `chain` and then equation `pool`, a sum over all its pixels (see
    `_pooled`).
    `bias` is the leaf of a bias added to the op's output (-1: none), as bias_scale·b broadcast
    over the positions p: its Jacobian Σ_p G_o[p] is one more column of A, all bias_scale
    (see `_bias`).
    """

    leaf: int
    eqn: int
    position: int
    scale: float
    form: str
    weight_shape: tuple[int, ...]
    p: int
    g: int
    c: int
    f: int
    pool: int = -1
    chain: tuple[int, ...] = ()
    bias: int = -1
    bias_scale: float = 0.0

    @property
    def width(self) -> int:
        """Entries of A per (position, group): c, and one more for a folded bias."""
        return self.c + (self.bias >= 0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How each parameter leaf's kernel contribution is computed (hashable: a static jit argument).

    `rules` are the structured leaves, `fallback` the leaves whose Jacobians are taken, `unused` the
    leaves the output does not depend on; `out_shape` is O of one example's output (1, *O);
    `forward_flops` estimates one example's forward pass, `fallback_flops` its ops that take a
    fallback leaf (for `cost`).
    `signature` (the inlined equations' primitive names) checks that `features` sees the same model.
    `summed`: every output axis is traced, so the kernel only sums the Jacobian features over
    (outputs, entries) and their order is free (a "jacobian"-form op's Jacobian is not transposed
    to put the outputs first).
    """

    rules: tuple[Rule, ...]
    fallback: tuple[int, ...]
    unused: tuple[int, ...]
    out_shape: tuple[int, ...]
    fallback_sizes: tuple[int, ...]
    forward_flops: float
    fallback_flops: float
    itemsize: int
    signature: tuple[str, ...]
    summed: bool = False

    def summary(self) -> str:
        """One line: how many leaves take each route, e.g. for a report of the method chosen."""
        forms = [r.form for r in self.rules]
        return (
            f"{len(self.rules)} structured leaves ({forms.count('structured')} from input and "
            f"cotangent products, {forms.count('jacobian')} from per-example Jacobians formed "
            f"as matmuls, {forms.count('pooled')} pooled before the head), "
            f"{forms.count('lookup')} table lookups by index equality, "
            f"{sum(r.bias >= 0 for r in self.rules)} biases folded into their ops, "
            f"{len(self.fallback)} fallback, {len(self.unused)} unused"
        )


def make_plan(
    apply_fn: Any,
    params0: Any,
    x_example: Any,
    trace: tuple[int, ...],
    diagonal: tuple[int, ...],
    *,
    force: str | None = None,
) -> Plan:
    """Classify the parameter leaves of apply_fn(params, x) -> (b, *O) and choose each op's form.

    Args:
      apply_fn: the model, examples along axis 0 and treated independently.
      params0: the parameters (arrays or ShapeDtypeStructs).
      x_example: one input with a batch axis of 1, shape (1, ...).
      trace, diagonal: resolved non-negative axes of the (b, *O) output (`spectral._ntk_axes`).
      force: None chooses each structured op's form: "pooled" where `_pooled` applies and the
        model has several outputs, else "structured" or "jacobian" by its pair FLOPs (a table
        lookup: "lookup" or the fallback); "structured" or "jacobian" imposes one form on every
        structured op (on a table lookup: "lookup", or the fallback).

    Returns:
      The Plan. Raises ValueError if x_example's batch axis is not 1 or force is unknown, TypeError
      if the model's output is not one array.
    """
    if force is not None and force not in _FORMS:
        raise ValueError(f"force must be None, 'structured' or 'jacobian', got {force!r}")
    if not x_example.shape or x_example.shape[0] != 1:
        raise ValueError(f"x_example must have a batch axis of 1, got shape {x_example.shape}")
    graph = _trace(apply_fn, params0, x_example)
    out_shape = tuple(graph.out_aval.shape[1:])
    known = _fold_constants(graph)
    uses = _uses(graph)
    pairs = _out_pairs(out_shape, trace, diagonal)
    rules, fallback, unused = [], [], []
    for leaf, var in enumerate(graph.invars[:-1]):
        found = _follow(graph, known, uses, var)
        if found is None:
            fallback.append(leaf)
        elif found == "unused":
            unused.append(leaf)
        elif (rule := _rule(graph, leaf, *found, pairs, force)) is None:
            fallback.append(leaf)  # a table lookup cheaper as the table's Jacobian
        else:
            rules.append(_pooled(graph, uses, rule, force))
    for leaf in list(fallback):
        folded = _bias(graph, known, uses, leaf, rules)
        if folded is not None:
            k, scale = folded
            rules[k] = dataclasses.replace(rules[k], bias=leaf, bias_scale=scale)
            fallback.remove(leaf)
    fallback_ids = {graph.invars[leaf] for leaf in fallback}
    return Plan(
        rules=tuple(rules),
        fallback=tuple(fallback),
        unused=tuple(unused),
        out_shape=out_shape,
        fallback_sizes=tuple(math.prod(graph.invar_shapes[i]) for i in fallback),
        forward_flops=float(sum(_eqn_flops(e) for e in graph.eqns)),
        fallback_flops=float(sum(_eqn_flops(e) for e in graph.eqns if set(e.ins) & fallback_ids)),
        itemsize=np.dtype(graph.out_aval.dtype).itemsize,
        signature=graph.signature,
        summed=all(axis in trace for axis in range(1, 1 + len(out_shape))),
    )


def features(plan: Plan, apply_fn: Any, params0: Any, xb: Array) -> dict[str, Any]:
    """Per-example quantities of a block xb (b, ...), every leaf with the leading axis b.

    Returns {"jacobian": ((b, *O, P_1), ...), "structured": ((A, G), ...), "pooled": ((M, U),
    ...)}: the Jacobians of the
    fallback leaves and "jacobian"-form ops, one array each (scaled by each op's c; kept apart:
    concatenating them copies every entry once more; one empty array where there is none), and
    per "structured"-form op A (b, p, g, c) (scaled by c) and G (b, *O, p, g, f), under
    "pooled", per "pooled"-form op M (b, g, c, f) (scaled by c) and U (b, *O, g, f), and under
    "lookup", per table lookup the row indices t (b, p) (−1 where the lookup reads no row) and
    G (b, *O, p, f) (scaled by c). Jit-able with
    plan and apply_fn static. Raises ValueError if the model traced here differs from the plan's.
    """
    graph = _trace(apply_fn, params0, jax.ShapeDtypeStruct((1, *xb.shape[1:]), xb.dtype))
    if graph.signature != plan.signature:
        raise ValueError(
            "features: the model or input dtype differs from the one the plan was made for"
        )
    leaves = jax.tree_util.tree_leaves(params0)
    return jax.vmap(lambda x: _example_features(plan, graph, leaves, x))(xb)


def contract(
    plan: Plan,
    feat1: dict[str, Any],
    feat2: dict[str, Any],
    trace: tuple[int, ...],
    diagonal: tuple[int, ...],
) -> Array:
    """The kernel block between feat1's examples (b1) and feat2's (b2), laid out as in `spectral`.

    K = Σ_P J1 J2 over each "jacobian" array plus, per "structured" op,
    Σ_{p,q,g} (A1_p·A2_q)(G1_p·G2_q), per "pooled" op Σ_{g,f} (Σ_c M1 M2)(U1 U2), and per
    table lookup Σ_{p,q} [t1_p = t2_q] (G1_p·G2_q); traced
    output axes are summed and the sum divided by their
    total size. With 0 in diagonal, b1 = b2 and only the pairs (i, i) are formed.
    """
    jacobians = zip(feat1["jacobian"], feat2["jacobian"], strict=True)
    total = sum(_gram(j1, j2, trace, diagonal) for j1, j2 in jacobians)
    for (a1, g1), (a2, g2) in zip(feat1["structured"], feat2["structured"], strict=True):
        if a1.shape[1:3] == (1, 1):  # a dense layer: (A1 A2ᵀ) ∘ (G1 G2ᵀ)
            inputs = _gram(a1[:, 0, 0], a2[:, 0, 0], (), tuple(a for a in diagonal if a == 0))
            cotangents = _gram(g1[..., 0, 0, :], g2[..., 0, 0, :], trace, diagonal)
            inputs = inputs.reshape(inputs.shape + (1,) * (cotangents.ndim - inputs.ndim))
            total = total + inputs * cotangents
        else:
            first, second, result = _pair_subscripts(1 + len(plan.out_shape), trace, diagonal)
            spec = f"{first[0]}PGC,{second[0]}QGC,{first}PGF,{second}QGF->{result}"
            total = total + jnp.einsum(spec, a1, a2, g1, g2, optimize="optimal")
    for (m1, u1), (m2, u2) in zip(feat1["pooled"], feat2["pooled"], strict=True):
        total = total + _pooled_gram(plan, m1, u1, m2, u2, trace, diagonal)
    for (t1, g1), (t2, g2) in zip(feat1["lookup"], feat2["lookup"], strict=True):
        total = total + _lookup_gram(t1, g1, t2, g2, trace, diagonal)
    traced = math.prod(plan.out_shape[axis - 1] for axis in trace)
    return total / traced if trace else total


def _pooled_gram(plan: Plan, m1, u1, m2, u2, trace, diagonal) -> Array:
    """Σ_{g,f} Q[i, j, g, f]·U1[i, o, g, f]·U2[j, o', g, f], Q = Σ_c M1[i, g, c, f]·M2[j, g, c, f]
    (Q[i, g, f] for a diagonal batch axis), in the kernel layout before the traced division."""
    first, second, result = _pair_subscripts(1 + len(plan.out_shape), trace, diagonal)
    pair = first[0] + (second[0] if second[0] != first[0] else "")
    q = jnp.einsum(f"{first[0]}GCF,{second[0]}GCF->{pair}GF", m1, m2)
    return jnp.einsum(f"{pair}GF,{first}GF,{second}GF->{result}", q, u1, u2, optimize="optimal")


# entries of a lookup's (b1, p, b2, p, kept outputs) products formed at once (64 MB in float32)
_LOOKUP_ENTRIES = 1 << 24


def _lookup_gram(t1, g1, t2, g2, trace, diagonal) -> Array:
    """Σ_{p,q} [t1_p = t2_q ≥ 0] Σ_f G1[i, o, p, f]·G2[j, o', q, f] in the kernel layout before the
    traced division: the products of all pairs of looked-up rows by one GEMM ((b1·p) × (b2·q)
    over f and the traced outputs, `_gram`), masked by the equal indices and summed; in slices
    of the first block's examples where the products would exceed `_LOOKUP_ENTRIES`."""
    p, q = t1.shape[1], t2.shape[1]
    rows1, rows2 = jnp.moveaxis(g1, -2, 1), jnp.moveaxis(g2, -2, 1)  # (b, p, *O, f)
    if 0 in diagonal:  # the pairs (i, i): per example, all its (p, q)
        inner = tuple(a for a in diagonal if a != 0)
        products = jax.vmap(lambda r1, r2: _gram(r1, r2, trace, inner))(rows1, rows2)
        equal = (t1[:, :, None] == t2[:, None, :]) & (t1[:, :, None] >= 0)
        equal = equal.reshape(equal.shape + (1,) * (products.ndim - 3)).astype(products.dtype)
        return jnp.sum(products * equal, axis=(1, 2))
    b2 = t2.shape[0]
    flat2 = rows2.reshape(b2 * q, *rows2.shape[2:])
    kept = _out_pairs(g1.shape[1:-2], trace, diagonal)
    step = max(1, _LOOKUP_ENTRIES // (p * b2 * q * kept))
    parts = []
    for start in range(0, t1.shape[0], step):
        r1, s1 = rows1[start : start + step], t1[start : start + step]
        products = _gram(r1.reshape(-1, *r1.shape[2:]), flat2, trace, diagonal)
        products = products.reshape(r1.shape[0], p, b2, q, *products.shape[2:])
        equal = (s1[:, :, None, None] == t2[None, None]) & (s1[:, :, None, None] >= 0)
        equal = equal.reshape(equal.shape + (1,) * (products.ndim - 4)).astype(products.dtype)
        parts.append(jnp.sum(products * equal, axis=(1, 3)))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def cost(plan: Plan, trace: tuple[int, ...], diagonal: tuple[int, ...]) -> Cost:
    """FLOPs and bytes of `features` per example and of `contract` per (i, j) pair.

    With |O| outputs, m = Π_{traced or diagonal} d · Π_{other} d² (o, o') pairs per example pair and
    P_J Jacobian entries: pair FLOPs = 2·m·P_J + Σ_structured 2·p²·g·(c + m·f); feature FLOPs =
    (1 + |O|)·forward + |O|·fallback + Σ_jacobian-form 2·|O|·p·g·c·f (each output's backward pass
    forms input cotangents, about one forward, and weight gradients only for the ops that take a
    fallback leaf, `fallback` their forward FLOPs); bytes = itemsize·(|O|·P_J + Σ_structured
    (p·g·c + |O|·p·g·f)): the stored features and, for "jacobian"-form ops, the transient A and
    G they are formed from (the forward pass's own activations are not counted). A "pooled" op
    adds 2·p·g·c·f feature FLOPs (M), 2·g·f·(c + m) pair FLOPs and g·f·(c + |O|) stored plus
    p·g·(c + |O|·f) transient entries (A, and G inside the backward passes). A table lookup
    counts as a "structured" op with g = c = 1: 2·p²·(1 + m·f) pair FLOPs, p + |O|·p·f entries.
    """
    n_out = math.prod(plan.out_shape)
    pairs = _out_pairs(plan.out_shape, trace, diagonal)
    width = sum(plan.fallback_sizes) + sum(
        r.g * r.width * r.f for r in plan.rules if r.form == "jacobian"
    )
    pair_flops = 2.0 * pairs * width
    feature_flops = (1.0 + n_out) * plan.forward_flops + n_out * plan.fallback_flops
    stored = n_out * width
    for r in plan.rules:
        structured = r.form in ("structured", "lookup")
        pair_flops += _structured_pair_flops(r, pairs) if structured else 0.0
        c = r.width
        feature_flops += 2.0 * n_out * r.p * r.g * c * r.f if r.form == "jacobian" else 0.0
        stored += r.p * r.g * c + n_out * r.p * r.g * r.f  # A and G: kept, or transient
        if r.form == "pooled":
            feature_flops += 2.0 * r.p * r.g * c * r.f
            pair_flops += 2.0 * r.g * r.f * (c + pairs)
            stored += r.g * r.f * (c + n_out)
    return Cost(feature_flops, pair_flops, float(plan.itemsize * stored))


class _Eqn(NamedTuple):
    prim: Any
    params: dict
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    in_avals: tuple[Any, ...]
    out_avals: tuple[Any, ...]


@dataclasses.dataclass
class _Graph:
    """The single-example jaxpr with sub-jaxprs inlined; values are integer ids."""

    eqns: list[_Eqn] = dataclasses.field(default_factory=list)
    consts: dict[int, Any] = dataclasses.field(default_factory=dict)
    invars: list[int] = dataclasses.field(default_factory=list)
    invar_shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    out: int = -1
    out_aval: Any = None
    size: int = 0

    def new(self) -> int:
        self.size += 1
        return self.size - 1

    def const(self, value: Any) -> int:
        var = self.new()
        self.consts[var] = value
        return var

    @property
    def signature(self) -> tuple[str, ...]:
        return tuple(e.prim.name for e in self.eqns)


def _trace(apply_fn, params0, x_example) -> _Graph:
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
    closed = jax.make_jaxpr(lambda ls, x: apply_fn(treedef.unflatten(ls), x))(specs, x_example)
    if len(closed.out_avals) != 1:
        raise TypeError(f"apply_fn must return one array, got {len(closed.out_avals)} outputs")
    graph = _Graph()
    graph.invars = [graph.new() for _ in closed.jaxpr.invars]
    graph.invar_shapes = [tuple(v.aval.shape) for v in closed.jaxpr.invars]
    (graph.out,) = _inline(graph, closed, graph.invars)
    graph.out_aval = closed.out_avals[0]
    return graph


def _inline(graph: _Graph, closed: Any, ins: list[int]) -> list[int]:
    env = dict(zip(closed.jaxpr.invars, ins, strict=True))
    env.update(
        {v: graph.const(c) for v, c in zip(closed.jaxpr.constvars, closed.consts, strict=True)}
    )

    def read(v):
        return graph.const(v.val) if isinstance(v, jcore.Literal) else env[v]

    for eqn in closed.jaxpr.eqns:
        args = [read(v) for v in eqn.invars]
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if eqn.primitive.name in _INLINE and sub is not None:
            if not isinstance(sub, jcore.ClosedJaxpr):
                sub = jcore.ClosedJaxpr(sub, ())
            outs = _inline(graph, sub, args)
        else:
            outs = [graph.new() for _ in eqn.outvars]
            graph.eqns.append(
                _Eqn(
                    eqn.primitive,
                    eqn.params,
                    tuple(args),
                    tuple(outs),
                    tuple(v.aval for v in eqn.invars),
                    tuple(v.aval for v in eqn.outvars),
                )
            )
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in closed.jaxpr.outvars]


def _evaluate(graph: _Graph, inputs: list[Any], eps: dict[int, Array], rules: tuple[Rule, ...]):
    """Run the graph; ε_k is added to the output of equation k. Returns the output, and per rule
    the operands of its equation and, for a "pooled" rule, D = ∂h/∂z of its chain (`_pooled`)."""
    env: dict[int, Any] = dict(graph.consts)
    env.update(zip(graph.invars, inputs, strict=True))
    for k, eqn in enumerate(graph.eqns):
        outs = _bind(eqn, [env[i] for i in eqn.ins])
        if k in eps:
            outs = [outs[0] + eps[k]]
        env.update(zip(eqn.outs, outs, strict=True))
    operands = {r.eqn: [env[i] for i in graph.eqns[r.eqn].ins] for r in rules}
    derivatives = {r.eqn: _chain_derivative(graph, r, env) for r in rules if r.form == "pooled"}
    return env[graph.out], (operands, derivatives)


def _bind(eqn: _Eqn, args: list[Any]) -> list[Any]:
    outs = eqn.prim.bind(*args, **eqn.prim.get_bind_params(eqn.params))
    return outs if eqn.prim.multiple_results else [outs]


def _chain_derivative(graph: _Graph, rule: Rule, env: dict[int, Any]) -> Array:
    """D[i] = ∂h[i]/∂z[i] along a pooled rule's elementwise chain z → h: one JVP with tangent 1
    (the chain's other operands held at their values)."""
    z = graph.eqns[rule.eqn].outs[0]

    def h(value):
        local = {z: value}
        for k in rule.chain:
            eqn = graph.eqns[k]
            (local[eqn.outs[0]],) = _bind(eqn, [local.get(i, env[i]) for i in eqn.ins])
        return local[graph.eqns[rule.chain[-1]].outs[0]] if rule.chain else value

    value = jax.lax.stop_gradient(env[z])
    return jax.jvp(h, (value,), (jnp.ones_like(value),))[1]


def _fold_constants(graph: _Graph) -> dict[int, Any]:
    """Concrete values of everything that depends on neither the parameters nor x."""
    # arrays apply_fn closes over inside an outer jit are tracers there: not known
    known = {k: v for k, v in graph.consts.items() if not isinstance(v, jax.core.Tracer)}
    with jax.ensure_compile_time_eval():  # concrete values even when the plan is made under jit
        for eqn in graph.eqns:
            if eqn.ins and all(i in known for i in eqn.ins) and not eqn.prim.multiple_results:
                params = eqn.prim.get_bind_params(eqn.params)
                value = eqn.prim.bind(*(known[i] for i in eqn.ins), **params)
                known[eqn.outs[0]] = np.asarray(value)
    return known


def _uses(graph: _Graph) -> dict[int, list[tuple[int, int]]]:
    uses: dict[int, list[tuple[int, int]]] = {}
    for k, eqn in enumerate(graph.eqns):
        for pos, var in enumerate(eqn.ins):
            uses.setdefault(var, []).append((k, pos))
    uses.setdefault(graph.out, []).append((-1, 0))  # the model's output: no rule applies
    return uses


def _sole_use(uses: dict, var: int) -> tuple[int, int] | None:
    """(equation, operand position) of var's one use; None where it has several, none, or is the
    model's output."""
    users = uses.get(var, [])
    return users[0] if len(users) == 1 and users[0][0] >= 0 else None


def _follow(graph: _Graph, known: dict[int, Any], uses: dict, var: int):
    """(eqn, position, c) of the op a leaf reaches as c·π(W), "unused", or None (fall back)."""
    scale = 1.0
    while True:
        if not uses.get(var):
            return "unused"
        if (use := _sole_use(uses, var)) is None:
            return None
        k, pos = use
        eqn = graph.eqns[k]
        name = eqn.prim.name
        if name in _LAYOUT:
            var = eqn.outs[0]
        elif name in ("mul", "div") and (factor := _uniform(known, eqn.ins[1 - pos])) is not None:
            if name == "div" and pos == 1:
                return None
            scale *= factor if name == "mul" else 1.0 / factor
            var = eqn.outs[0]
        elif name == "neg":
            scale, var = -scale, eqn.outs[0]
        elif _has_rule(eqn, pos):
            return k, pos, scale
        else:
            return None


def _uniform(known: dict[int, Any], var: int) -> float | None:
    """The value of a constant whose entries are all equal, else None."""
    if var not in known:
        return None
    value = np.asarray(known[var])
    flat = value.reshape(-1)
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else None


def _has_rule(eqn: _Eqn, pos: int) -> bool:
    if eqn.prim.name == "dot_general":  # batch dimensions become the groups g
        return True
    if eqn.prim.name == "conv_general_dilated":
        return pos == 1 and eqn.params["batch_group_count"] == 1
    if eqn.prim.name == "gather":
        return pos == 0 and _is_lookup(eqn)
    return False


def _is_lookup(eqn: _Eqn) -> bool:
    """Whether a gather reads whole rows of its table (V, *D) at scalar indices, y[..., :] =
    E[t[...]], the rows' entries last in its output (what `jnp.take(E, t, axis=0)` lowers to)."""
    dims = eqn.params["dimension_numbers"]
    table, indices = eqn.in_avals[0].shape, eqn.in_avals[1].shape
    out_ndim, rest = len(eqn.out_avals[0].shape), len(table) - 1
    return (
        len(table) >= 1
        and len(indices) >= 1
        and indices[-1] == 1
        and tuple(dims.collapsed_slice_dims) == (0,)
        and tuple(dims.start_index_map) == (0,)
        and not tuple(getattr(dims, "operand_batching_dims", ()))
        and tuple(eqn.params["slice_sizes"]) == (1, *table[1:])
        and tuple(dims.offset_dims) == tuple(range(out_ndim - rest, out_ndim))
    )


def _rule(
    graph: _Graph, leaf: int, k: int, pos: int, scale: float, pairs: int, force
) -> Rule | None:
    """The leaf's rule at equation k, with its form; None for a table lookup whose table's
    Jacobian (the fallback) is the cheaper, or with force "jacobian"."""
    eqn = graph.eqns[k]
    w_shape = tuple(eqn.in_avals[pos].shape)
    out_shape = tuple(eqn.out_avals[0].shape)
    if eqn.prim.name == "gather":  # a table lookup: p rows of f entries out of V
        f = math.prod(w_shape[1:])
        rule = Rule(leaf, k, pos, scale, "lookup", w_shape, math.prod(out_shape) // f, 1, 1, f)
        cheaper = _structured_pair_flops(rule, pairs) < 2.0 * pairs * w_shape[0] * f
        return rule if force == "structured" or (force is None and cheaper) else None
    if eqn.prim.name == "dot_general":
        contracting, batch = eqn.params["dimension_numbers"]
        c = math.prod(w_shape[d] for d in contracting[pos])
        g = math.prod(w_shape[d] for d in batch[pos])
        f = math.prod(w_shape) // (c * g)
        p = math.prod(out_shape) // (g * f)
    else:
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec
        g = eqn.params["feature_group_count"]
        c = math.prod(w_shape) // w_shape[rhs_spec[0]]
        f = w_shape[rhs_spec[0]] // g
        p = math.prod(out_shape) // (g * f)
    rule = Rule(leaf, k, pos, scale, "structured", w_shape, p, g, c, f)
    if force is not None:
        return dataclasses.replace(rule, form=force)
    structured = _structured_pair_flops(rule, pairs)
    return (
        rule if structured < 2.0 * pairs * g * c * f else dataclasses.replace(rule, form="jacobian")
    )


def _bias(
    graph: _Graph, known: dict[int, Any], uses: dict, leaf: int, rules: list[Rule]
) -> tuple[int, float] | None:
    """(index into rules, scale) where leaf b reaches, through x-independent layout, broadcast
    and constant-scale ops, an add to a rule's op output z (z's only use) as scale·b[π(g, f)],
    the same at every position p for a permutation π of b's entries; else None.

    Then the cotangent at z is that of z + B, and ∂f_o/∂b = scale·Σ_p G_o[p] (permuted: only
    inner products are taken): the bias is one more column of A, all `scale`. The mapping is
    checked by evaluating the path on b = 1, 2, …, |b|.
    """
    var, path = graph.invars[leaf], []
    while True:
        if (use := _sole_use(uses, var)) is None:
            return None
        k, pos = use
        eqn = graph.eqns[k]
        name = eqn.prim.name
        other = eqn.ins[1 - pos] if len(eqn.ins) == 2 else None
        if name in _LAYOUT or name == "broadcast_in_dim" or name == "neg":
            path.append(k)
        elif name == "mul" and _uniform(known, other) is not None:
            path.append(k)
        elif name in ("add", "add_any"):
            break
        else:
            return None
        var = eqn.outs[0]
    owner = [i for i, r in enumerate(rules) if graph.eqns[r.eqn].outs[0] == other]
    if not owner or rules[owner[0]].bias >= 0 or _sole_use(uses, other) is None:
        return None
    if rules[owner[0]].form == "lookup":  # its A is the indices: no column to add
        return None
    rule = rules[owner[0]]
    op = graph.eqns[rule.eqn]
    if tuple(eqn.out_avals[0].shape) != tuple(op.out_avals[0].shape):
        return None
    size = math.prod(graph.invar_shapes[leaf])
    if size != rule.g * rule.f:
        return None
    var = graph.invars[leaf]  # the path again, on b = 1, …, |b|
    value = np.arange(1.0, size + 1.0).reshape(graph.invar_shapes[leaf])
    for k in path:  # in numpy: no XLA program compiled for these few small ops
        step = graph.eqns[k]
        if any(i != var and i not in known for i in step.ins):
            return None
        value = _numpy_step(step, [value if i == var else known[i] for i in step.ins])
        if value is None:
            return None
        var = step.outs[0]
    # the add may broadcast size-1 axes itself
    added = np.broadcast_to(value, op.out_avals[0].shape)[None]
    added = np.asarray(_canonical_out(rule, op, added))[0]
    if not np.all(added == added[:1]):  # the same at every position p
        return None
    values = added[0].reshape(-1)
    scale = float(values.sum()) / (size * (size + 1) / 2)
    if scale == 0.0 or not np.allclose(np.sort(values / scale), np.arange(1.0, size + 1.0)):
        return None
    return owner[0], scale


def _numpy_step(eqn: _Eqn, args: list[Any]) -> np.ndarray | None:
    """A layout, broadcast or scale equation (those `_bias` follows) on numpy values; None for
    any other."""
    name, params = eqn.prim.name, eqn.params
    x = np.asarray(args[0])
    if name == "reshape" and params.get("dimensions") is None:
        return x.reshape(params["new_sizes"])
    if name == "broadcast_in_dim":
        shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
        kept = [x.shape[dims.index(d)] if d in dims else 1 for d in range(len(shape))]
        return np.broadcast_to(x.reshape(kept), shape)
    if name == "transpose":
        return x.transpose(params["permutation"])
    if name == "squeeze":
        return np.squeeze(x, axis=tuple(params["dimensions"]))
    if name in ("convert_element_type", "copy", "copy_p"):
        return x
    if name == "neg":
        return -x
    if name == "mul":
        return x * np.asarray(args[1])
    return None


def _pooled(graph: _Graph, uses: dict, rule: Rule, force) -> Rule:
    """The rule in "pooled" form where its convolution's output z reaches the model only as
    s = Σ_pixels h(z), h elementwise in z; else the rule unchanged.

    Then ∂f_o/∂z[p, g, f] = D[p, g, f]·U_o[g, f] with D = ∂h/∂z (elementwise) and U_o = ∂f_o/∂s
    (whatever follows the sum: a dense head, an MLP), so the per-example Jacobian is
    J_o[g, c, f] = M[g, c, f]·U_o[g, f] with M = Σ_p A[p, g, c]·D[p, g, f]: one matmul for all
    outputs instead of one per output, and a pair of examples contributes
    Σ_{g,f} (Σ_c M M')·(U_o U'_o'), without forming J.
    """
    eqn = graph.eqns[rule.eqn]
    if force is not None or eqn.prim.name != "conv_general_dilated":
        return rule
    if math.prod(graph.out_aval.shape[1:]) < 2:  # one output: the "jacobian" form is as cheap
        return rule
    spec = eqn.params["dimension_numbers"]
    spatial, batch = set(spec.out_spec[2:]), spec.out_spec[0]
    shape = tuple(eqn.out_avals[0].shape)
    var, chain = eqn.outs[0], []
    while True:
        if (use := _sole_use(uses, var)) is None:
            return rule
        k, _ = use
        user = graph.eqns[k]
        if user.prim.name == "reduce_sum":
            axes = set(user.params["axes"])
            if spatial <= axes <= spatial | {batch}:
                return dataclasses.replace(rule, form="pooled", pool=k, chain=tuple(chain))
            return rule
        if user.prim.name not in _ELEMENTWISE or tuple(user.out_avals[0].shape) != shape:
            return rule
        chain.append(k)
        var = user.outs[0]


def _structured_pair_flops(rule: Rule, pairs: int) -> float:
    return 2.0 * rule.p**2 * rule.g * (rule.width + pairs * rule.f)


def _out_pairs(out_shape: tuple[int, ...], trace, diagonal) -> int:
    """The (o, o') output pairs one example pair needs: d per traced/diagonal axis, else d²."""
    return math.prod(
        d if axis + 1 in trace or axis + 1 in diagonal else d * d
        for axis, d in enumerate(out_shape)
    )


def _eqn_flops(eqn: _Eqn) -> float:
    out = sum(math.prod(a.shape) for a in eqn.out_avals if hasattr(a, "shape"))
    if eqn.prim.name == "dot_general":
        contracting, _ = eqn.params["dimension_numbers"]
        return 2.0 * out * math.prod(eqn.in_avals[0].shape[d] for d in contracting[0])
    if eqn.prim.name == "conv_general_dilated":
        rhs = eqn.in_avals[1].shape
        return 2.0 * out * math.prod(rhs) / rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return float(out)


def _example_features(plan: Plan, graph: _Graph, leaves: list[Array], x: Array) -> dict[str, Any]:
    """Features of one example x (...): vjps of f w.r.t. (ε, fallback leaves), one per output.

    ε sits at each rule's equation output, or for a "pooled" rule at its sum over pixels."""
    eps_at = sorted({r.pool if r.form == "pooled" else r.eqn for r in plan.rules})
    eps0 = {
        k: jnp.zeros(graph.eqns[k].out_avals[0].shape, graph.eqns[k].out_avals[0].dtype)
        for k in eps_at
    }
    fb0 = [leaves[i] for i in plan.fallback]

    def run(eps, fb):
        inputs = list(leaves)
        for i, value in zip(plan.fallback, fb, strict=True):
            inputs[i] = value
        out, aux = _evaluate(graph, [*inputs, x[None]], eps, plan.rules)
        return out.reshape(-1), aux

    out, pullback, (operands, derivatives) = jax.vjp(run, eps0, fb0, has_aux=True)
    basis = jnp.eye(out.size, dtype=out.dtype)
    g_eps, g_fb = jax.vmap(pullback)(basis)
    feats = {"jacobian": [g.reshape(*plan.out_shape, -1) for g in g_fb]}
    feats |= {"structured": [], "pooled": [], "lookup": []}
    for rule in plan.rules:
        eqn = graph.eqns[rule.eqn]
        a = operands[rule.eqn][1 - rule.position]
        if rule.form == "lookup":
            g = rule.scale * g_eps[rule.eqn].reshape(*plan.out_shape, rule.p, rule.f)
            feats["lookup"].append((_lookup_rows(eqn, a), g))
            continue
        if rule.form == "pooled":
            a, d = _canonical(rule, eqn, a, derivatives[rule.eqn][None])
            m = jnp.einsum("pgc,pgf->gcf", _with_bias(rule, rule.scale * a), d[0])
            u = g_eps[rule.pool].reshape(*plan.out_shape, rule.g, rule.f)
            feats["pooled"].append((m, u))
            continue
        a, g = _canonical(rule, eqn, a, g_eps[rule.eqn])
        a = _with_bias(rule, rule.scale * a)
        if rule.form == "jacobian":
            # o in the middle of the GEMM's output, then moved: XLA CPU's GEMM writing o first
            # is slower than this copy
            jacobian = jnp.einsum("pgc,opgf->gcof", a, g)  # o inside: XLA's GEMM writes it so
            if not plan.summed:  # else the entries' order is free: a reshape, not a copy
                jacobian = jacobian.transpose(2, 0, 1, 3)
            feats["jacobian"].append(jacobian.reshape(*plan.out_shape, -1))
        else:
            feats["structured"].append((a, g.reshape(*plan.out_shape, *g.shape[1:])))
    if not feats["jacobian"]:
        feats["jacobian"].append(jnp.zeros((*plan.out_shape, 0), out.dtype))
    return {name: tuple(value) for name, value in feats.items()}


def _lookup_rows(eqn: _Eqn, indices: Array) -> Array:
    """A table lookup's row indices (p,) as int32: clamped into [0, V) where the gather clamps
    (or is promised indices in bounds), −1 where it fills (an index out of bounds reads no row)."""
    rows = eqn.in_avals[0].shape[0]
    t = indices.reshape(-1).astype(jnp.int32)
    mode = jax.lax.GatherScatterMode.from_any(eqn.params.get("mode"))
    if mode == jax.lax.GatherScatterMode.FILL_OR_DROP:
        return jnp.where((t >= 0) & (t < rows), t, -1)
    return jnp.clip(t, 0, rows - 1)


def _canonical(rule: Rule, eqn: _Eqn, a: Array, gy: Array) -> tuple[Array, Array]:
    """The op's input as A (p, g, c) and its output cotangents as G (|O|, p, g, f)."""
    if eqn.prim.name == "conv_general_dilated":
        return _patches(rule, eqn, a), _canonical_out(rule, eqn, gy)
    contracting, batch = eqn.params["dimension_numbers"]
    a_contracting, a_batch = contracting[1 - rule.position], batch[1 - rule.position]
    a_free = [d for d in range(a.ndim) if d not in a_contracting and d not in a_batch]
    a = a.transpose(*a_free, *a_batch, *a_contracting).reshape(rule.p, rule.g, rule.c)
    return a, _canonical_out(rule, eqn, gy)


def _canonical_out(rule: Rule, eqn: _Eqn, gy: Array) -> Array:
    """Arrays shaped like the op's output, stacked along axis 0 (|O|, *out), as (|O|, p, g, f)."""
    n_out = gy.shape[0]
    if eqn.prim.name == "conv_general_dilated":
        spec = eqn.params["dimension_numbers"]
        order = (spec.out_spec[0], *spec.out_spec[2:], spec.out_spec[1])
        gy = gy.transpose(0, *(1 + d for d in order))
        return gy.reshape(n_out, rule.p, rule.g, rule.f)
    # the output's axes: batch (the groups), then lhs free, then rhs free
    if rule.position == 0:
        return gy.reshape(n_out, rule.g, rule.f, rule.p).transpose(0, 3, 1, 2)
    return gy.reshape(n_out, rule.g, rule.p, rule.f).transpose(0, 2, 1, 3)


def _with_bias(rule: Rule, a: Array) -> Array:
    """A (p, g, c) with a column of bias_scale appended where the rule folds a bias."""
    if rule.bias < 0:
        return a
    column = jnp.full((*a.shape[:-1], 1), rule.bias_scale, a.dtype)
    return jnp.concatenate([a, column], axis=-1)


def _patches(rule: Rule, eqn: _Eqn, a: Array) -> Array:
    """A convolution's input of one example as image patches A (p, g, c), by slicing.

    The input (batch 1) is padded as the convolution pads it (lhs dilation as interior padding)
    and one strided slice is taken per window offset (rhs dilation apart); c runs over (channel
    within the group, window offset), with the pixels innermost as the Jacobian's matmul reads
    them (no copy between). Only inner products of A's rows are used, so the order of c is
    free. Slicing moves memory only, where `lax.conv_general_dilated_patches` is a
    convolution with a one-hot kernel: c² multiply-adds per output pixel (measured: 0.067 s
    against 0.021 s for 128 inputs 16 × 16 × 32, 3 × 3 windows, float32, 2 cores).
    """
    spec = eqn.params["dimension_numbers"]
    a = a.transpose(spec.lhs_spec[0], spec.lhs_spec[1], *spec.lhs_spec[2:])[0]  # (C, *spatial)
    window = tuple(rule.weight_shape[d] for d in spec.rhs_spec[2:])
    out = tuple(eqn.out_avals[0].shape[d] for d in spec.out_spec[2:])
    strides, dilation = eqn.params["window_strides"], eqn.params["rhs_dilation"]
    config = [
        (lo, hi, d - 1)
        for (lo, hi), d in zip(eqn.params["padding"], eqn.params["lhs_dilation"], strict=True)
    ]
    a = jax.lax.pad(a, jnp.zeros((), a.dtype), [(0, 0, 0), *config])
    slices = []
    for offset in itertools.product(*(range(w) for w in window)):
        start = [k * d for k, d in zip(offset, dilation, strict=True)]
        stop = [s + (o - 1) * t + 1 for s, o, t in zip(start, out, strides, strict=True)]
        slices.append(jax.lax.slice(a, (0, *start), (a.shape[0], *stop), (1, *strides)))
    stacked = jnp.stack(slices, axis=1)  # (C, K, *out): c = (channel within group, offset)
    return stacked.reshape(rule.g, rule.c, rule.p).transpose(2, 0, 1)


def _gram(j1: Array, j2: Array, trace, diagonal) -> Array:
    """Σ_Z j1[..., Z] j2[..., Z] in the kernel layout, as one batched GEMM.

    j1 (b1, *O, Z) and j2 (b2, *O, Z); diagonal axes become the GEMM's batch, traced axes and Z
    its single contracted axis (XLA's CPU GEMM with several contracted axes is a few times slower).
    """
    ndim = j1.ndim - 1
    diag = [a for a in range(ndim) if a in diagonal]
    free = [a for a in range(ndim) if a not in diagonal and a not in trace]
    summed = [*trace, ndim]

    def matrix(j):
        sizes = [math.prod(j.shape[a] for a in axes) for axes in (diag, free, summed)]
        return j.transpose(*diag, *free, *summed).reshape(sizes)

    k = jax.lax.dot_general(matrix(j1), matrix(j2), (((2,), (2,)), ((0,), (0,))))
    k = k.reshape(*(j1.shape[a] for a in diag + free), *(j2.shape[a] for a in free))
    order = []
    for a in range(ndim):
        if a in diagonal:
            order.append(diag.index(a))
        elif a not in trace:
            order += [len(diag) + free.index(a), len(diag) + len(free) + free.index(a)]
    return k.transpose(order)


def _pair_subscripts(ndim: int, trace, diagonal) -> tuple[str, str, str]:
    """einsum letters (lower case) of two blocks' output axes and of the kernel block.

    Per axis: one shared letter if traced (dropped from the result) or diagonal (kept once), two
    letters (x1's, x2's, both kept in that order) otherwise.
    """
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    first, second, result = "", "", ""
    for axis in range(ndim):
        mine = next(letters)
        theirs = mine if axis in trace or axis in diagonal else next(letters)
        first, second = first + mine, second + theirs
        result += "" if axis in trace else mine if axis in diagonal else mine + theirs
    return first, second, result
