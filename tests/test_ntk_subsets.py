"""Tests for empirical_ntk's parameter subsets (`params_mask`) and per-layer kernels (`per_layer`):
each kernel against the contraction of the explicit Jacobian's columns of its leaves (numpy,
float64), the groups summing to the whole kernel, a subset against the model with the other
parameters closed over by hand, the dictionaries' keys, and bad masks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import ntk

C = 3  # outputs per input
N1, N2 = 5, 4


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def mlp():
    """A plain-JAX MLP with biases, parameters in nested dicts: layers "hidden" and "readout"."""
    params = {
        "hidden": {"w": _normal(1, (4, 6)), "b": _normal(2, (6,))},
        "readout": {"w": _normal(3, (6, C)), "b": _normal(4, (C,))},
    }

    def apply_fn(p, x):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"][None])
        return h @ p["readout"]["w"] + p["readout"]["b"][None]

    return apply_fn, params, (4,)


class CNN(nn.Module):
    """Two convolutions with biases (the second strided), global average pooling, a dense head."""

    @nn.compact
    def __call__(self, x):
        f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
        h = jnp.tanh(nn.Conv(4, (3, 3), **f64)(x))
        h = jnp.tanh(nn.Conv(5, (3, 3), strides=2, **f64)(h))
        return nn.Dense(C, **f64)(h.mean(axis=(1, 2)))


def flax_cnn():
    module = CNN()
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 2), jnp.float64))
    # non-zero biases: flax initializes them to zero
    params = jax.tree.map(lambda p: p + 0.1 * _normal(5, p.shape), params)
    return module.apply, params, (6, 6, 2)


MODELS = {"mlp": mlp, "flax_cnn": flax_cnn}
CNN_LAYERS = ["params/Conv_0", "params/Conv_1", "params/Dense_0"]


def leaf_jacobians(apply_fn, params, x) -> dict[str, np.ndarray]:
    """{leaf path: ∂f(x_i)/∂θ_leaf as (n, C, size of the leaf)}, by jax.jacrev per example."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in flat]
    per_example = []
    for xi in x:
        jac = jax.jacrev(lambda p, xi=xi: apply_fn(p, xi[None])[0])(params)
        per_example.append([np.asarray(j).reshape(C, -1) for j in jax.tree_util.tree_leaves(jac)])
    return {path: np.stack([leaves[k] for leaves in per_example]) for k, path in enumerate(paths)}


def contraction(j1, j2, trace, diagonal):
    """The kernel of Jacobians j1 (n1, C, P) and j2 (n2, C, P) at (trace_axes, diagonal_axes)."""
    spec, size = {
        ((-1,), ()): ("iaP,jaP->ij", C),
        ((), ()): ("iaP,jbP->ijab", 1),
        ((), (0,)): ("iaP,ibP->iab", 1),
        ((), (-1,)): ("iaP,jaP->ija", 1),
    }[(trace, diagonal)]
    return np.einsum(spec, j1, j2) / size


def columns(jacobians: dict, paths) -> np.ndarray:
    """The Jacobian's columns of the leaves at paths, as one (n, C, P) array."""
    return np.concatenate([jacobians[p] for p in paths], axis=-1)


def assert_close(got, want, rtol=1e-10):
    got = np.asarray(got)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want))


@pytest.mark.parametrize("method", ["jacobian", "structured", "auto"])
@pytest.mark.parametrize("model", list(MODELS))
def test_per_layer_kernels_sum_to_the_kernel(x64, model, method):
    apply_fn, params, shape = MODELS[model]()
    x = _normal(10, (N1, *shape))
    whole = np.asarray(jn.empirical_ntk(apply_fn, params, x, trace_axes=(), method=method))
    kernels = jn.empirical_ntk(apply_fn, params, x, trace_axes=(), method=method, per_layer=True)
    assert_close(sum(np.asarray(k) for k in kernels.values()), whole)


# (trace_axes, diagonal_axes, x2 given, method, per_layer): the first two in the fast loop
CASES = [
    ((-1,), (), False, "structured", "leaves"),  # a bias alone: not folded into its op
    ((), (), True, "auto", True),
    pytest.param((), (0,), False, "jacobian", "leaves", marks=pytest.mark.slow),
    pytest.param((), (-1,), True, "products", True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("trace", "diagonal", "given", "method", "per_layer"), CASES)
@pytest.mark.parametrize("model", list(MODELS))
def test_each_group_is_the_contraction_of_its_leaves_jacobian_columns(
    x64, model, trace, diagonal, given, method, per_layer
):
    """Per leaf or per layer, at several axes, with x2 and without, against numpy."""
    apply_fn, params, shape = MODELS[model]()
    x1, x2 = _normal(11, (N1, *shape)), _normal(12, (N2, *shape)) if given else None
    j1 = leaf_jacobians(apply_fn, params, x1)
    j2 = j1 if x2 is None else leaf_jacobians(apply_fn, params, x2)
    axes = {"trace_axes": trace, "diagonal_axes": diagonal, "method": method}
    kernels = jn.empirical_ntk(apply_fn, params, x1, x2, per_layer=per_layer, **axes)
    if per_layer == "leaves":
        assert list(kernels) == list(j1)
    else:
        assert list(kernels) == list(dict.fromkeys(p.rpartition("/")[0] for p in j1))
    for name, k in kernels.items():
        paths = [p for p in j1 if p == name or p.rpartition("/")[0] == name]
        assert len(paths) == (1 if per_layer == "leaves" else 2)  # a layer: weight and bias
        want = contraction(columns(j1, paths), columns(j2, paths), trace, diagonal)
        assert_close(k, want)


def test_a_subset_kernel_is_the_kernel_of_the_model_with_the_rest_closed_over(x64):
    """A prefix mask selecting the first convolution (kernel and bias) of the flax CNN, outputs
    kept (trace_axes=()): the kernel of that convolution's parameters alone, the others held in
    a closure written here, and the contraction of its Jacobian columns."""
    apply_fn, params, shape = flax_cnn()
    x1, x2 = _normal(13, (N1, *shape)), _normal(14, (N2, *shape))
    mask = {"params": {"Conv_0": True, "Conv_1": False, "Dense_0": False}}
    inner = dict(params["params"])

    def closed(conv0, x):
        return apply_fn({"params": {**inner, "Conv_0": conv0}}, x)

    for method in ("jacobian", "structured"):
        k = jn.empirical_ntk(
            apply_fn, params, x1, x2, trace_axes=(), params_mask=mask, method=method
        )
        by_hand = jn.empirical_ntk(closed, inner["Conv_0"], x1, x2, trace_axes=(), method=method)
        assert_close(k, np.asarray(by_hand))
    j1, j2 = leaf_jacobians(apply_fn, params, x1), leaf_jacobians(apply_fn, params, x2)
    conv0 = ["params/Conv_0/bias", "params/Conv_0/kernel"]
    assert_close(k, contraction(columns(j1, conv0), columns(j2, conv0), (), ()))


def test_a_callable_mask_selects_by_path_and_host_output_is_numpy(x64):
    apply_fn, params, shape = mlp()
    x = _normal(15, (N1, *shape))
    j = leaf_jacobians(apply_fn, params, x)
    weights = ["hidden/w", "readout/w"]
    seen = []

    def only_weights(path, leaf):
        seen.append((path, leaf.shape))
        return path.endswith("/w")

    k = jn.empirical_ntk(apply_fn, params, x, params_mask=only_weights, output="host")
    assert isinstance(k, np.ndarray)
    assert_close(k, contraction(columns(j, weights), columns(j, weights), (-1,), ()))
    assert seen == [
        ("hidden/b", (6,)),
        ("hidden/w", (4, 6)),
        ("readout/b", (C,)),
        ("readout/w", (6, C)),
    ]
    # per_layer within the mask: one kernel per layer of its selected leaves
    layers = jn.empirical_ntk(
        apply_fn,
        params,
        x,
        params_mask=lambda p, _: p != "readout/b",
        per_layer=True,
        trace_axes=(),
        output="host",
    )
    assert list(layers) == ["hidden", "readout"]
    assert all(isinstance(v, np.ndarray) for v in layers.values())
    assert_close(layers["readout"], contraction(j["readout/w"], j["readout/w"], (), ()))
    hidden = ["hidden/b", "hidden/w"]
    assert_close(layers["hidden"], contraction(columns(j, hidden), columns(j, hidden), (), ()))


def test_the_choice_of_a_subset_counts_its_parameters_and_is_not_the_whole_kernels(
    x64, monkeypatch
):
    """choose_method sizes the Jacobian of the selected leaves only; a subset kernel after the
    whole kernel of the same function takes no kept choice; one mask compiles once whatever
    the values of the leaves held."""
    apply_fn, params, shape = mlp()
    x = _normal(16, (N1, *shape))
    readout = {"hidden": False, "readout": True}
    choice = jn.choose_method(apply_fn, params, x, params_mask=readout, method="jacobian")
    assert choice.estimates["jacobian"].feature_bytes == C * (6 * C + C) * 8
    monkeypatch.setattr(ntk, "_CHOICES", {})
    jn.empirical_ntk(apply_fn, params, x, method="jacobian")
    sub = jn.empirical_ntk(apply_fn, params, x, method="jacobian", params_mask=readout)
    j = leaf_jacobians(apply_fn, params, x)
    paths = ["readout/b", "readout/w"]
    assert_close(sub, contraction(columns(j, paths), columns(j, paths), (-1,), ()))
    assert len(ntk._CHOICES) == 1  # the whole kernel's
    programs = ntk._block_programs()
    before = [p._cache_size() for p in programs]
    other = jax.tree.map(lambda p: 2.0 * p, params)
    jn.empirical_ntk(apply_fn, other, x, method="jacobian", params_mask=readout)
    assert [p._cache_size() for p in programs] == before


def test_the_keys_are_the_paths_of_layers_and_leaves(x64):
    apply_fn, params, shape = flax_cnn()
    x = _normal(17, (2, *shape))
    assert list(jn.empirical_ntk(apply_fn, params, x, per_layer=True)) == CNN_LAYERS
    head = {"params": {"Conv_0": False, "Conv_1": False, "Dense_0": True}}
    leaves = jn.empirical_ntk(apply_fn, params, x, per_layer="leaves", params_mask=head)
    assert list(leaves) == ["params/Dense_0/bias", "params/Dense_0/kernel"]

    def tuples(p, x):  # parameters as a list of (weight, bias) pairs: keys are indices
        return x @ p[0][0] + p[0][1][None]

    pairs = [(_normal(18, (4, C)), _normal(19, (C,)))]
    xs = _normal(20, (2, 4))
    assert list(jn.empirical_ntk(tuples, pairs, xs, per_layer=True)) == ["0"]
    assert list(jn.empirical_ntk(tuples, pairs, xs, per_layer="leaves")) == ["0/0", "0/1"]


def test_bad_masks_and_per_layer_raise_clear_errors(x64):
    apply_fn, params, shape = mlp()
    x = _normal(21, (N1, *shape))
    nothing = {"hidden": False, "readout": False}
    with pytest.raises(ValueError, match="params_mask selects no leaf of params0"):
        jn.empirical_ntk(apply_fn, params, x, params_mask=nothing)
    with pytest.raises(ValueError, match="selects no leaf"):
        jn.empirical_ntk(apply_fn, params, x, params_mask=lambda path, leaf: False)
    with pytest.raises(ValueError, match=r"structure of params0.*'hidden/b'"):
        jn.empirical_ntk(apply_fn, params, x, params_mask={"hidden": True})
    with pytest.raises(ValueError, match="structure of params0"):
        jn.empirical_ntk(apply_fn, params, x, params_mask=[True, False])
    with pytest.raises(ValueError, match=r"one bool per leaf .* got 1 at 'hidden'"):
        jn.empirical_ntk(apply_fn, params, x, params_mask={"hidden": 1, "readout": True})
    elementwise = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
    with pytest.raises(ValueError, match=r"one bool per leaf .* at 'hidden/b'"):
        jn.empirical_ntk(apply_fn, params, x, params_mask=elementwise)
    with pytest.raises(ValueError, match=r"must return a bool, got 'yes' for the leaf 'hidden/b'"):
        jn.empirical_ntk(apply_fn, params, x, params_mask=lambda path, leaf: "yes")
    with pytest.raises(ValueError, match="selects no leaf"):
        jn.choose_method(apply_fn, params, x, params_mask=nothing)
    with pytest.raises(ValueError, match="per_layer must be False, True or 'leaves', got 'layers'"):
        jn.empirical_ntk(apply_fn, params, x, per_layer="layers")
    with pytest.raises(ValueError, match=r"per_layer .* output must be None or 'host'"):
        jn.empirical_ntk(apply_fn, params, x, per_layer=True, output="k.npy")
    # a mask selecting every leaf, or a bool for the whole tree, is the whole kernel
    whole = jn.empirical_ntk(apply_fn, params, x)
    assert_close(jn.empirical_ntk(apply_fn, params, x, params_mask=True), np.asarray(whole))
