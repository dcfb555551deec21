"""Structured derivatives of the empirical NTK (`jaxntk._structured`) against explicit Jacobians.

The reference kernel takes each example's Jacobian by `jax.jacfwd` of the single-example function,
forms the full kernel Σ_θ J(x_i)[o] J(x'_j)[o'] with numpy, and only then takes diagonals and traces
axis by axis; every combination of traced and diagonal axes is compared, in float64, on an MLP,
plain-JAX CNNs (strides, SAME/VALID/explicit padding, lhs and rhs dilation, feature groups,
NHWC/HWIO and NCHW/OIHW), a flax model with biases and LayerNorm, models whose parameters have
no rule, and table lookups (embeddings) on integer tokens with repeated and out-of-bounds indices.
"""

import itertools
import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk import _structured as st

F64 = jnp.float64


def _normal(seed, shape):
    """Standard normal float64 entries (numpy's generator: no compilation per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)


def mlp_params():
    return {"w1": _normal(1, (4, 6)), "w2": _normal(2, (5, 6)), "w3": _normal(3, (10, 5))}


def mlp(params, x, out=(10,)):
    """tanh MLP 4-6-5-10 in NTK scaling (the weights scaled by 1/√fan_in, w2 stored transposed);
    the last layer is W·hᵀ (the weight as lhs operand)."""
    h = jnp.tanh(x @ (params["w1"] * (1 / math.sqrt(4))))
    h = jnp.tanh(h @ (params["w2"].T / math.sqrt(6)))
    y = ((1 / math.sqrt(5)) * params["w3"] @ h.T).T
    return y.reshape(x.shape[0], *out)


def mlp_two_axes(params, x):
    return mlp(params, x, out=(2, 5))


@jax.jit
def _dense_layer(w, h):
    return jnp.tanh(h @ w)


def jitted_mlp(params, x):
    """Layers inside jit and checkpoint (sub-jaxprs the plan inlines); one output per input (b,)."""
    h = jax.checkpoint(_dense_layer)(params["w1"], x)
    return jax.jit(lambda w, h: (h @ w.T)[:, 0])(params["w2"], h)


def heads(params, x):
    """Per-head weights: einsum over a head axis shared by activation and weight (dot_general
    batch dimensions, the weight first in one layer), outputs (b, 3, 2)."""
    h = jnp.tanh(jnp.einsum("bi,hij->bhj", x, params["in"]))
    y = jax.lax.dot_general(params["out"], h, (((2,), (2,)), ((0,), (1,))))  # (h, k, b)
    return y.transpose(2, 0, 1)


def conv(x, w, layout, **kwargs):
    lhs, rhs = layout
    return jax.lax.conv_general_dilated(x, w, dimension_numbers=(lhs, rhs, lhs), **kwargs)


def cnn_params(layout):
    shapes = [(3, 3, 3, 4), (3, 2, 2, 6), (2, 2, 6, 4)]  # HWIO; the second conv has 2 groups
    if layout == "NCHW":
        shapes = [(o, i, h, w) for h, w, i, o in shapes]
    return {
        **{f"c{k}": _normal(10 + k, s) for k, s in enumerate(shapes)},
        "dense": _normal(20, (4, 6)),
    }


def make_cnn(layout):
    """Three convolutions (strided SAME; grouped VALID rhs-dilated; explicit padding with lhs
    dilation), tanh, mean pool and a dense head to outputs (b, 2, 3)."""
    dims = ("NHWC", "HWIO") if layout == "NHWC" else ("NCHW", "OIHW")
    spatial = (1, 2) if layout == "NHWC" else (2, 3)

    def apply(params, x):
        h = jnp.tanh(conv(x, params["c0"], dims, window_strides=(2, 1), padding="SAME"))
        h = jnp.tanh(
            conv(
                h,
                params["c1"],
                dims,
                window_strides=(1, 1),
                padding="VALID",
                rhs_dilation=(2, 1),
                feature_group_count=2,
            )
        )
        h = conv(h, params["c2"], dims, window_strides=(1, 2), padding=((1, 2), (0, 1)))
        h = jnp.tanh(h) if layout == "NHWC" else jnp.tanh(h) * 1.0
        pooled = jnp.mean(h, axis=spatial)
        return (pooled @ params["dense"]).reshape(x.shape[0], 2, 3) / 2.0

    return apply


def cnn_lhs_dilated(params, x):
    """One convolution with lhs dilation (a transposed convolution) and a dense head, (b, 3)."""
    h = jax.lax.conv_general_dilated(
        x,
        params["c"],
        window_strides=(1, 1),
        padding=((1, 0), (2, 1)),
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jnp.mean(jnp.tanh(h), axis=(1, 2)) @ params["dense"]


def pooled_net(params, x):
    """A grouped convolution (2 groups) whose output z reaches the model only through the
    elementwise chain tanh(z + h)·2 (a skip h that depends on x) and a plain sum over the pixels,
    then a nonlinear head (∂f/∂sum depends on x), outputs (b, 2, 3): the "pooled" form."""
    dims = ("NHWC", "HWIO")
    h = jnp.tanh(conv(x, params["c0"], dims, window_strides=(1, 1), padding="SAME"))
    z = conv(h, params["c1"], dims, window_strides=(1, 1), padding="SAME", feature_group_count=2)
    s = jnp.sum(jnp.tanh(z + h) * 2.0, axis=(1, 2))
    y = jnp.tanh(s @ params["d1"]) @ params["d2"]
    return y.reshape(x.shape[0], 2, 3)


def partly_pooled_net(params, x):
    """A sum over one spatial axis only: the cotangent of the convolution's output varies along
    the other, so it is not "pooled"."""
    dims = ("NHWC", "HWIO")
    z = conv(x, params["c0"], dims, window_strides=(1, 1), padding="SAME")
    s = jnp.sum(jnp.tanh(z), axis=1).reshape(x.shape[0], -1)
    return s @ params["d"]


def biased_net(params, x):
    """Biases added to convolution and dense outputs (b, 4, 3, 2) -> (b, 3):

    - b0 on a grouped convolution (2 groups), scaled by 0.5 and permuted: folded, jacobian form;
    - bs broadcast along the image's first axis, not the channels: not folded (falls back);
    - b2 negated on a pooled convolution: folded, pooled form;
    - db on the dense head: folded, structured form.
    """
    dims = ("NHWC", "HWIO")
    z0 = conv(x, params["c0"], dims, window_strides=(1, 1), padding="SAME", feature_group_count=2)
    h = jnp.tanh(z0 + 0.5 * params["b0"].reshape(2, 2).T.reshape(1, 1, 1, 4))
    z1 = conv(h, params["c1"], dims, window_strides=(1, 1), padding="SAME")
    h = jnp.tanh(z1 + params["bs"][None, :, None, None])
    z2 = conv(h, params["c2"], dims, window_strides=(1, 1), padding="SAME")
    s = jnp.mean(jnp.tanh(z2 + (-params["b2"])[None, None, None]), axis=(1, 2))
    return s @ params["d"] + params["db"][None]


def _biased_params():
    return {
        "c0": _normal(90, (2, 2, 1, 4)),
        "b0": _normal(91, (4,)),
        "c1": _normal(92, (2, 2, 4, 4)),
        "bs": _normal(93, (4,)),
        "c2": _normal(94, (2, 2, 4, 3)),
        "b2": _normal(95, (3,)),
        "d": _normal(96, (3, 3)),
        "db": _normal(97, (3,)),
    }


def _pooled_params():
    return {
        "c0": _normal(80, (3, 3, 2, 4)),
        "c1": _normal(81, (2, 2, 2, 4)),
        "d1": _normal(82, (4, 5)),
        "d2": _normal(83, (5, 6)),
    }


class FlaxNet(nn.Module):
    """Conv with bias, LayerNorm, Dense with bias to 3 outputs."""

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(param_dtype=F64, force_float32_reductions=False)(
            nn.Conv(4, (3, 3), strides=2, param_dtype=F64)(x)
        )
        return nn.Dense(3, param_dtype=F64)(jnp.tanh(h).reshape(x.shape[0], -1))


def fallback_net(params, x):
    """A weight used twice (tied), one inside a scan, one through sin, an elementwise scale, a
    softplus (custom_jvp) scale and one plain weight: only the plain weight has a rule."""
    h = jnp.tanh(x @ params["tied"])
    h = jnp.tanh(h @ params["tied"]) * params["scale"][None, :]
    h = jax.lax.scan(lambda c, _: (jnp.tanh(c @ params["scanned"]), None), h, None, length=2)[0]
    h = h @ jnp.sin(params["sined"])
    h = h * jax.nn.softplus(params["soft"])[None, :]
    return h @ params["plain"]


def fallback_params():
    return {
        "tied": _normal(30, (4, 4)),
        "scale": _normal(31, (4,)),
        "scanned": _normal(35, (4, 4)),
        "sined": _normal(32, (4, 5)),
        "soft": _normal(33, (5,)),
        "plain": _normal(34, (5, 3)),
    }


VOCAB = 40  # the lookup models' table rows: large enough for the "lookup" form to be chosen


def lookup_net(params, t, mode="fill"):
    """A table (VOCAB, 3), stored transposed and scaled by 0.5, read at tokens t (b, 4) by
    `jnp.take` (out-of-bounds rows filled with 0, or clamped), plus learned positions, tanh, a
    dense layer, mean over positions: outputs (b, 2, 3)."""
    table = 0.5 * params["table_t"].T
    kwargs = {"fill_value": 0.0} if mode == "fill" else {}
    h = jnp.take(table, t, axis=0, mode=mode, **kwargs) + params["positions"][None]
    y = jnp.mean(jnp.tanh(h) @ params["w"], axis=1)
    return y.reshape(t.shape[0], 2, 3)


def _lookup_params():
    return {
        "table_t": _normal(100, (3, VOCAB)),
        "positions": _normal(101, (4, 3)),
        "w": _normal(102, (3, 6)),
    }


# tokens repeated within and across examples; -1 and -40 wrap to rows 39 and 0, while 41, 44
# and -41 are out of bounds (filled with zeros, or clamped)
TOKENS = np.array(
    [[3, 3, 7, -1], [7, 41, 3, 0], [39, -40, 3, 3], [0, 44, 7, 39], [-41, 2, 2, 3]], np.int32
)


def _model(name):
    """(apply_fn, params, input shape of one example)."""
    if name == "lookup":
        return lookup_net, _lookup_params(), (4,)
    if name == "lookup_clip":
        return partial(lookup_net, mode="clip"), _lookup_params(), (4,)
    if name == "mlp":
        return mlp, mlp_params(), (4,)
    if name == "mlp_two_axes":
        return mlp_two_axes, mlp_params(), (4,)
    if name == "heads":
        return heads, {"in": _normal(7, (3, 4, 5)), "out": _normal(8, (3, 2, 5))}, (4,)
    if name == "jitted":
        return jitted_mlp, {"w1": _normal(5, (4, 6)), "w2": _normal(6, (2, 6))}, (4,)
    if name in ("NHWC", "NCHW"):
        shape = (11, 6, 3) if name == "NHWC" else (3, 11, 6)
        return make_cnn(name), cnn_params(name), shape
    if name == "lhs_dilated":
        return (
            cnn_lhs_dilated,
            {"c": _normal(40, (2, 3, 2, 3)), "dense": _normal(41, (3, 3))},
            (4, 3, 2),
        )
    if name == "pooled":
        return pooled_net, _pooled_params(), (4, 3, 2)
    if name == "biased":
        return biased_net, _biased_params(), (4, 3, 2)
    if name == "partly_pooled":
        return (
            partly_pooled_net,
            {"c0": _normal(84, (2, 2, 2, 3)), "d": _normal(85, (9, 4))},
            (
                4,
                3,
                2,
            ),
        )
    if name == "flax":
        model = FlaxNet()
        # random values in every leaf (biases and LayerNorm's scale too), without compiling init
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 2), F64))
        leaves, treedef = jax.tree_util.tree_flatten(shapes)
        params = treedef.unflatten([_normal(70 + i, s.shape) for i, s in enumerate(leaves)])
        return model.apply, params, (6, 6, 2)
    return fallback_net, fallback_params(), (4,)


def _jacobians(apply_fn, params, x):
    """Per-example Jacobians (n, *O, P) by forward mode of the single-example function."""

    def one(xi):
        jac = jax.jacfwd(lambda p: apply_fn(p, xi[None])[0])(params)
        out = apply_fn(params, xi[None])[0].shape
        return jnp.concatenate(
            [leaf.reshape(*out, -1) for leaf in jax.tree_util.tree_leaves(jac)], axis=-1
        )

    return np.asarray(jax.jit(jax.vmap(one))(x))


def _reference(jac1, jac2, trace, diagonal):
    """Full kernel (n1, n2, o1, o1', o2, o2', ...), then per axis its diagonal, kept or averaged."""
    m = jac1.ndim - 1
    k = np.tensordot(jac1, jac2, axes=([-1], [-1]))  # (n1, *O, n2, *O)
    k = k.transpose([a for axis in range(m) for a in (axis, m + axis)])
    for axis in reversed(range(m)):
        if axis in trace or axis in diagonal:
            k = np.diagonal(k, axis1=2 * axis, axis2=2 * axis + 1)
            k = k.mean(axis=-1) if axis in trace else np.moveaxis(k, -1, 2 * axis)
    return k


def _axis_choices(ndim):
    """Every (trace, diagonal): axis 0 free or diagonal, each output axis free/traced/diagonal."""
    for roles in itertools.product(("free", "diag"), *[("free", "trace", "diag")] * (ndim - 1)):
        trace = tuple(a for a, r in enumerate(roles) if r == "trace")
        yield trace, tuple(a for a, r in enumerate(roles) if r == "diag")


MODELS = ["mlp", "mlp_two_axes", "heads", "jitted", "NHWC", "NCHW", "lhs_dilated", "flax"]
MODELS += ["fallback", "biased", "lookup"]  # the pooled models: in the automatic forms only


def _blocks(diagonal):
    """x1 = x[:3]; x2 = x[2:5] on the kernel's diagonal (same size), else x[3:5] (a rectangle)."""
    return slice(0, 3), slice(2, 5) if 0 in diagonal else slice(3, 5)


@partial(jax.jit, static_argnums=(0, 1))
def _kernels(apply_fn, cases, params, x):
    """contract(features(x1), features(x2)) for each (trace, diagonal, plan): one program."""
    features, kernels = {}, []
    for trace, diagonal, plan in cases:
        if plan not in features:
            features[plan] = st.features(plan, apply_fn, params, x)
        first, second = _blocks(diagonal)
        feat1, feat2 = (jax.tree.map(lambda a, s=s: a[s], features[plan]) for s in (first, second))
        kernels.append(st.contract(plan, feat1, feat2, trace, diagonal))
    return kernels


def _check_kernels(name, force, choices):
    """The kernels of `_kernels` against the reference for each (trace, diagonal)."""
    apply_fn, params, shape = _model(name)
    x = jnp.asarray(TOKENS) if name.startswith("lookup") else _normal(50, (5, *shape))
    jac = _jacobians(apply_fn, params, x)
    cases = tuple(
        (trace, diagonal, st.make_plan(apply_fn, params, x[:1], trace, diagonal, force=force))
        for trace, diagonal in choices(jac.ndim - 1)
    )
    for (trace, diagonal, _), got in zip(cases, _kernels(apply_fn, cases, params, x), strict=True):
        first, second = _blocks(diagonal)
        want = _reference(jac[first], jac[second], trace, diagonal)
        assert got.shape == want.shape, (trace, diagonal)
        err = np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want))
        assert err < 1e-10, (trace, diagonal, err)


@pytest.mark.parametrize(
    "name", ["mlp", "mlp_two_axes", "jitted", "NHWC", "flax", "fallback", "pooled", "lookup"]
)
@pytest.mark.slow
def test_kernel_matches_explicit_jacobians(x64, name):
    _check_kernels(name, None, _axis_choices)


def _some_axis_choices(ndim):
    """Nothing traced; the kernel's diagonal; the last axis traced; the last axis diagonal."""
    last = [((ndim - 1,), ()), ((), (ndim - 1,))] if ndim > 1 else []
    return [((), ()), ((), (0,)), *last]


@pytest.mark.parametrize(
    "name", ["heads", "NCHW", "lhs_dilated", "partly_pooled", "lookup", "lookup_clip"]
)
def test_kernel_matches_explicit_jacobians_on_some_axes(x64, name):
    _check_kernels(name, None, _some_axis_choices)


@pytest.mark.parametrize("force", ["structured", "jacobian"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.slow
def test_both_forms_match_explicit_jacobians(x64, name, force):
    _check_kernels(name, force, _some_axis_choices)


def _leaf_index(params):
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): i for i, (path, _) in enumerate(paths)}


def test_plan_classifies_leaves(x64):
    apply_fn, params, shape = _model("mlp")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (1,), ())
    idx = _leaf_index(params)
    assert {r.leaf for r in plan.rules} == set(idx.values()) and plan.fallback == ()
    scales = {r.leaf: r.scale for r in plan.rules}
    assert scales[idx["['w2']"]] == pytest.approx(1 / math.sqrt(6))
    assert [r.position for r in plan.rules if r.leaf == idx["['w3']"]] == [0]
    assert all(r.form == "structured" for r in plan.rules)

    apply_fn, params, shape = _model("jitted")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (), ())
    assert [r.leaf for r in plan.rules] == [0, 1] and plan.out_shape == ()
    assert [r.position for r in plan.rules] == [1, 1]  # h @ w.T: the transpose is a layout op

    apply_fn, params, shape = _model("heads")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (), ())
    assert [(r.g, r.c, r.f, r.position) for r in plan.rules] == [(1, 4, 15, 1), (3, 5, 2, 0)]

    apply_fn, params, shape = _model("NHWC")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (1, 2), ())
    idx = _leaf_index(params)
    forms = {r.leaf: r.form for r in plan.rules}
    assert forms == {idx["['c0']"]: "jacobian", idx["['c1']"]: "jacobian"} | {
        idx["['c2']"]: "pooled",  # tanh, then the mean over the pixels, then the dense head
        idx["['dense']"]: "structured",
    }
    assert [r.g for r in plan.rules if r.leaf == idx["['c1']"]] == [2]
    assert plan.summary().startswith(
        "4 structured leaves (1 from input and cotangent products, 2 from per-example Jacobians "
        "formed as matmuls, 1 pooled before the head)"
    )
    (pooled,) = [r for r in plan.rules if r.form == "pooled"]
    graph = st._trace(apply_fn, params, jnp.zeros((1, *shape), F64))
    assert graph.eqns[pooled.pool].prim.name == "reduce_sum"
    assert [graph.eqns[k].prim.name for k in pooled.chain] == ["tanh"]
    x = jnp.zeros((1, *shape), F64)
    one = st.make_plan(lambda p, x: apply_fn(p, x)[:, :1, :1], params, x, (), ())
    assert "pooled" not in {r.form for r in one.rules}  # one output: the jacobian form

    apply_fn, params, shape = _model("pooled")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (), ())
    idx = _leaf_index(params)
    forms = {r.leaf: r.form for r in plan.rules}
    assert forms[idx["['c0']"]] == "jacobian" and forms[idx["['c1']"]] == "pooled"
    (pooled,) = [r for r in plan.rules if r.form == "pooled"]
    graph = st._trace(apply_fn, params, jnp.zeros((1, *shape), F64))
    assert [graph.eqns[k].prim.name for k in pooled.chain] == ["add", "tanh", "mul"]
    assert (pooled.g, pooled.f) == (2, 2)

    apply_fn, params, shape = _model("partly_pooled")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (), ())
    assert [r.form for r in plan.rules] == ["jacobian", "structured"]

    apply_fn, params, shape = _model("flax")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (1,), ())
    idx = _leaf_index(params)
    kernels = {idx["['params']['Conv_0']['kernel']"], idx["['params']['Dense_0']['kernel']"]}
    biases = {idx["['params']['Conv_0']['bias']"], idx["['params']['Dense_0']['bias']"]}
    assert {r.leaf for r in plan.rules} == kernels
    assert {r.bias for r in plan.rules} == biases  # added to the ops' outputs: folded
    assert set(plan.fallback) == set(idx.values()) - kernels - biases  # LayerNorm's
    assert "2 biases folded into their ops, 2 fallback" in plan.summary()

    apply_fn, params, shape = _model("biased")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (1,), ())
    idx = _leaf_index(params)
    got = {r.leaf: (r.form, r.bias, r.bias_scale) for r in plan.rules}
    assert got == {
        idx["['c0']"]: ("jacobian", idx["['b0']"], 0.5),  # scaled and permuted
        idx["['c1']"]: ("jacobian", -1, 0.0),  # bs varies along the image, not the channels
        idx["['c2']"]: ("pooled", idx["['b2']"], -1.0),
        idx["['d']"]: ("structured", idx["['db']"], 1.0),
    }
    assert plan.fallback == (idx["['bs']"],)

    # a bias added to an output that has another use is not folded: the cotangent of z differs
    def twice(p, x):
        z = x @ p["w"]
        return z * (z + p["b"][None])

    params = {"b": _normal(99, (3,)), "w": _normal(98, (2, 3))}
    plan = st.make_plan(twice, params, jnp.zeros((1, 2), F64), (1,), ())
    assert [(r.leaf, r.bias) for r in plan.rules] == [(1, -1)] and plan.fallback == (0,)

    apply_fn, params, shape = _model("fallback")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (1,), ())
    idx = _leaf_index(params)
    assert [r.leaf for r in plan.rules] == [idx["['plain']"]]
    assert plan.fallback_flops >= 2 * (2 * 4 * 4)  # at least the two matmuls by the tied weight
    assert set(plan.fallback) == set(idx.values()) - {idx["['plain']"]}


def test_table_lookups_by_index_equality(x64, monkeypatch):
    """The table of `lookup_net` is a "lookup" rule (scale 0.5 through its transpose) where that
    costs fewer pair FLOPs than its Jacobian, else (a small table, or force "jacobian") it falls
    back; the positions, added to the lookup's output but not the same at every position, fall
    back. The kernel sliced into small GEMMs (`_LOOKUP_ENTRIES`) is the same."""
    apply_fn, params, _ = _model("lookup")
    idx = _leaf_index(params)
    x = jnp.asarray(TOKENS)
    plan = st.make_plan(apply_fn, params, x[:1], (), ())
    rule = plan.rules[0]
    assert (rule.leaf, rule.form, rule.scale) == (idx["['table_t']"], "lookup", 0.5)
    assert (rule.p, rule.g, rule.c, rule.f, rule.weight_shape) == (4, 1, 1, 3, (VOCAB, 3))
    assert idx["['positions']"] in plan.fallback
    assert "1 table lookups by index equality" in plan.summary()
    # 2·p²·(1 + m·f) against the table's 2·m·V·f, m = 36 output pairs
    assert st._structured_pair_flops(rule, 36) == 2 * 16 * (1 + 36 * 3) < 2 * 36 * VOCAB * 3
    forced = st.make_plan(apply_fn, params, x[:1], (), (), force="jacobian")
    assert idx["['table_t']"] in forced.fallback
    small = {**params, "table_t": params["table_t"][:, :5]}
    assert idx["['table_t']"] in st.make_plan(apply_fn, small, x[:1], (), ()).fallback
    feat = st.features(plan, apply_fn, params, x)
    (rows, _), *_ = feat["lookup"]
    np.testing.assert_array_equal(rows[1], [7, -1, 3, 0])  # 41 reads no row
    whole = st.contract(plan, feat, feat, (), ())
    monkeypatch.setattr(st, "_LOOKUP_ENTRIES", 1)  # one example of the first block at a time
    np.testing.assert_allclose(st.contract(plan, feat, feat, (), ()), whole, rtol=1e-13)
    want = _reference(*[_jacobians(apply_fn, params, x)] * 2, (), ())
    np.testing.assert_allclose(whole, want, rtol=1e-10, atol=1e-12 * np.max(np.abs(want)))


def test_unused_leaf_contributes_nothing(x64):
    params = {"used": _normal(60, (4, 3)), "unused": _normal(61, (7,))}
    plan = st.make_plan(lambda p, x: x @ p["used"], params, jnp.zeros((1, 4), F64), (), ())
    idx = _leaf_index(params)
    assert plan.unused == (idx["['unused']"],) and [r.leaf for r in plan.rules] == [idx["['used']"]]


def test_cost_formulas(x64):
    apply_fn, params, shape = _model("mlp")
    x = jnp.zeros((1, *shape), F64)
    layers = [(4, 6), (6, 5), (5, 10)]  # (in, out) of each dense layer
    for trace, pairs in (((1,), 10), ((), 100)):
        plan = st.make_plan(apply_fn, params, x, trace, (), force="structured")
        got = st.cost(plan, trace, ())
        assert got.pair_flops == sum(2 * (i + pairs * o) for i, o in layers)
        # a forward pass and ten backward passes of at least the matmuls, no fallback
        assert got.feature_flops_per_example >= 11 * sum(2 * i * o for i, o in layers)
        assert plan.fallback_flops == 0
        jac = st.cost(st.make_plan(apply_fn, params, x, trace, (), force="jacobian"), trace, ())
        assert jac.pair_flops == 2 * pairs * sum(i * o for i, o in layers)
        inputs_and_cotangents = sum(i + 10 * o for i, o in layers)
        assert got.feature_bytes_per_example == 8 * inputs_and_cotangents
        assert jac.feature_bytes_per_example == 8 * (
            10 * sum(i * o for i, o in layers) + inputs_and_cotangents
        )
        assert jac.feature_flops_per_example > got.feature_flops_per_example > 0
        # method "auto" of make_plan keeps the cheaper form per op: structured for dense layers
        assert st.cost(st.make_plan(apply_fn, params, x, trace, ()), trace, ()) == got


def test_bad_arguments(x64):
    apply_fn, params, shape = _model("mlp")
    with pytest.raises(ValueError, match="batch axis of 1"):
        st.make_plan(apply_fn, params, jnp.zeros((2, *shape), F64), (), ())
    with pytest.raises(ValueError, match="force"):
        st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (), (), force="fast")
    plan = st.make_plan(apply_fn, params, jnp.zeros((1, *shape), F64), (), ())
    with pytest.raises(ValueError, match="differs"):
        st.features(plan, fallback_net, fallback_params(), jnp.zeros((2, 4), F64))


def test_plan_made_under_jit(x64):
    """Inside jit the constants (here 1/√4 computed by jnp) still fold to a concrete scale."""
    params = _normal(80, (4, 3))

    def apply_fn(w, x):
        return x @ (w / jnp.sqrt(jnp.asarray(4.0, F64)))

    x = jnp.zeros((1, 4), F64)
    plans = []
    jax.jit(lambda w, x: plans.append(st.make_plan(apply_fn, w, x, (1,), ())) or x)(params, x)
    assert plans == [st.make_plan(apply_fn, params, x, (1,), ())]
    assert [r.scale for r in plans[0].rules] == [0.5]


def test_scale_traced_by_an_outer_jit_falls_back(x64):
    """A scale apply_fn closes over inside jit is unknown to the plan: the weight falls back."""
    w, x = _normal(81, (4, 3)), _normal(82, (2, 4))

    @jax.jit
    def kernel(w, x, s):
        def apply_fn(w, x):
            return x @ (w * s)

        plan = st.make_plan(apply_fn, w, x[:1], (1,), ())
        assert plan.rules == () and plan.fallback == (0,)
        feat = st.features(plan, apply_fn, w, x)
        return st.contract(plan, feat, feat, (1,), ())

    # f_o(x) = s Σ_i x_i w_io: ∂f_o/∂w_io' = s x_i δ_oo', so K(x, x') = s² x·x' (every o alike)
    np.testing.assert_allclose(kernel(w, x, jnp.asarray(0.5, F64)), 0.25 * np.asarray(x @ x.T))


def test_features_trace_once_per_plan(x64):
    """Equal plans hash alike: a second plan and new inputs of the same shape reuse the program."""
    traces = []

    def apply_fn(params, x):
        traces.append(x.shape)
        return mlp(params, x)

    params, x = mlp_params(), _normal(90, (3, 4))
    features = jax.jit(st.features, static_argnums=(0, 1))
    features(st.make_plan(apply_fn, params, x[:1], (1,), ()), apply_fn, params, x)
    before = len(traces)
    features(st.make_plan(apply_fn, params, x[:1], (1,), ()), apply_fn, params, x + 1.0)
    assert len(traces) == before + 1  # the new plan's own trace only
