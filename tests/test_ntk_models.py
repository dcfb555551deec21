"""The empirical NTK of models as people write them, against explicit Jacobians (float64).

A flax ResNet with BatchNorm in eval mode (the kernel at the running statistics, the state closed
over or bound by `Partial`), equal to the kernel of the same network with the statistics folded
into an affine layer by hand; in train mode a clear ValueError. A flax transformer on integer
tokens (nn.Embed, whose table the structured method reads by index equality, learned positions,
self-attention, LayerNorm, an MLP). The pseudo-NTK against its formula (1/c) Σ_a Σ_b J_a J_bᵀ.
The models are those of benchmarks/ntk_speed.py (benchmarks/_ntk_runs.py) at tiny widths.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from jaxntk import _structured, ntk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _ntk_runs  # noqa: E402 - the benchmarks folder is not a package

F64 = jnp.float64
N = 5
METHODS = ("auto", "jacobian", "structured")


@pytest.fixture(autouse=True)
def _standard_promotion():
    """JAX's standard dtype promotion, a user's default: flax's normalizations promote float32
    with the float64 of these tests, which the suite's strict promotion refuses."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), F64)


def _init(module, x):
    """flax's initial pytree, made in float32 (flax's defaults do not mix with float64 under the
    suite's strict dtype promotion)."""
    with jax.enable_x64(False):
        return module.init(jax.random.PRNGKey(0), jnp.asarray(np.asarray(x)[:1]))


def _perturbed(variables, seed):
    """Every leaf of flax's initial pytree moved by N(0, 0.1²) (biases off zero, scales off one,
    statistics off their initial values) and cast to float64."""
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    moved = [
        jnp.asarray(leaf, F64) + _normal(seed + i, leaf.shape, 0.1) for i, leaf in enumerate(leaves)
    ]
    return treedef.unflatten(moved)


def resnet_bn():
    """(module, variables with positive variances, images (N, 5, 5, 2)) at tiny widths."""
    module = _ntk_runs.resnet_bn_module(channels=3, outputs=4)
    x = _normal(1, (N, 5, 5, 2))
    variables = _perturbed(_init(module, np.asarray(x, np.float32)), 10)
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
    return module, variables, x


def transformer(vocab=64):
    """(module, variables, tokens (N, 4) with repeats) at tiny widths; a table of 64 rows is read
    by index equality ("lookup"), of 7 rows by its Jacobian (the fallback)."""
    module = _ntk_runs.transformer_module(vocab, 4, width=8, heads=2, hidden=12, outputs=3)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, vocab, (N, 4)), jnp.int32)
    tokens = tokens.at[1, 2].set(tokens[0, 0]).at[3, 0].set(tokens[3, 1])
    return module, _perturbed(_init(module, tokens), 40), tokens


def jacobians(apply_fn, params, x) -> np.ndarray:
    """(n, c, P): each example's Jacobian by reverse mode of the single-example function, its
    leaves flattened and concatenated."""
    rows = []
    for xi in x:
        jac = jax.jacrev(lambda p, xi=xi: apply_fn(p, xi[None])[0])(params)
        leaves = jax.tree_util.tree_leaves(jac)
        c = leaves[0].shape[0]
        rows.append(np.concatenate([np.asarray(leaf).reshape(c, -1) for leaf in leaves], 1))
    return np.stack(rows)


def explicit(j: np.ndarray, trace: bool) -> np.ndarray:
    """(1/c) Σ_a J_a J_aᵀ (traced) or the (n, n, c, c) blocks Σ_P J_a J_bᵀ."""
    if trace:
        return np.einsum("iap,jap->ij", j, j) / j.shape[1]
    return np.einsum("iap,jbp->ijab", j, j)


def assert_close(got, want, tol=1e-10):
    got = np.asarray(got)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))


def _eval_fn(module, stats):
    def apply_fn(p, x):
        return module.apply({"params": p, "batch_stats": stats}, x, train=False)

    return apply_fn


# ------------------------------------------------------------------ ResNet with BatchNorm


@pytest.mark.parametrize("trace", [True, False])
def test_resnet_bn_eval_kernel_equals_explicit_jacobians(trace):
    with jax.enable_x64(True):
        module, variables, x = resnet_bn()
        apply_fn, params = _eval_fn(module, variables["batch_stats"]), variables["params"]
        want = explicit(jacobians(apply_fn, params, x), trace)
        axes = (-1,) if trace else ()
        for method in METHODS:
            assert_close(
                ntk.empirical_ntk(apply_fn, params, x, trace_axes=axes, method=method), want
            )


def test_batchnorm_eval_kernel_is_the_kernel_with_statistics_folded_by_hand():
    """BatchNorm at its statistics (μ, σ²) is the affine layer z ↦ z·(γ s) + (β − μ γ s),
    s = 1/√(σ² + ε): the same function of (kernels, γ, β). The kernel of flax's module in eval
    mode, with the state closed over or passed by `Partial`, is that layer's, whose Jacobians
    are taken here by reverse mode of the hand-written network."""
    with jax.enable_x64(True):
        module, variables, x = resnet_bn()
        params, stats = variables["params"], variables["batch_stats"]
        scales = {
            k: 1.0 / np.sqrt(np.asarray(v["var"]) + _ntk_runs.BN_EPSILON) for k, v in stats.items()
        }

        def conv(h, w):
            return jax.lax.conv_general_dilated(
                h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        def folded(p, x):
            def affine(z, i):
                name = f"BatchNorm_{i}"
                gain = p[name]["scale"] * scales[name]
                shift = p[name]["bias"] - np.asarray(stats[name]["mean"]) * gain
                return z * gain[None, None, None] + shift[None, None, None]

            h = jnp.tanh(affine(conv(x, p["Conv_0"]["kernel"]), 0))
            r = jnp.tanh(affine(conv(h, p["Conv_1"]["kernel"]), 1))
            h = jnp.tanh(h + affine(conv(r, p["Conv_2"]["kernel"]), 2))
            dense = p["Dense_0"]
            return jnp.mean(h, axis=(1, 2)) @ dense["kernel"] + dense["bias"][None]

        want = explicit(jacobians(folded, params, x), trace=True)
        closed = ntk.empirical_ntk(_eval_fn(module, stats), params, x)

        def passed(stats, p, x):  # the statistics an argument: Partial binds arrays only
            return module.apply({"params": p, "batch_stats": stats}, x, train=False)

        passed = ntk.empirical_ntk(Partial(passed, stats), params, x)
        assert_close(closed, want)
        assert_close(passed, want)


def test_batchnorm_in_train_mode_is_refused_with_what_to_do(x64):
    module, variables, x = resnet_bn()
    stats = variables["batch_stats"]

    def train_output(p, x):  # batch statistics; the updated ones dropped
        variables = {"params": p, "batch_stats": stats}
        return module.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    def train_tuple(p, x):  # flax's (output, state)
        return module.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=True)

    def train_immutable(p, x):  # the state may not be updated
        return module.apply({"params": p, "batch_stats": stats}, x, train=True)

    params = variables["params"]
    with pytest.raises(ValueError, match=r"mixes the examples.*BatchNorm in train.*train=False"):
        ntk.empirical_ntk(train_output, params, x)
    with pytest.raises(ValueError, match="mixes the examples"):  # one input, used twice
        ntk.empirical_ntk(train_output, params, x[:1])
    with pytest.raises(ValueError, match=r"tuple of 2.*mutable=.*train=False"):
        ntk.empirical_ntk(train_tuple, params, x)
    with pytest.raises(ValueError, match=r"updates the model's state.*train=False"):
        ntk.choose_method(train_immutable, params, x)
    with pytest.raises(ValueError, match="must return one array"):
        ntk.empirical_ntk(lambda p, x: (x @ p, x @ p), jnp.ones((2, 3)), jnp.ones((4, 2)))


def test_mixing_the_examples_is_found_once_per_function_and_shapes(x64, monkeypatch):
    """The check runs on the first call with a function and shapes only; without forward mode
    (a custom_vjp) or with integer inputs it compares values; inside a trace it is skipped."""
    w, x = _normal(3, (4, 3)), _normal(4, (6, 4))
    calls = []
    interacting = ntk._interacting
    monkeypatch.setattr(ntk, "_interacting", lambda *a: calls.append(1) or interacting(*a))

    def centred(w, x):
        h = x @ w
        return h - jnp.mean(h, axis=0, keepdims=True)

    @jax.custom_vjp
    def soft(h):
        return jnp.log1p(jnp.exp(h))

    soft.defvjp(lambda h: (soft(h), h), lambda h, g: (g * jax.nn.sigmoid(h),))

    def independent(w, x):
        return soft(x @ w)

    with jax.enable_x64(True):
        for fn in (centred, lambda w, t: centred(w, jnp.take(x, t, axis=0))):
            inputs = x if fn is centred else jnp.arange(6)
            for _ in range(2):
                with pytest.raises(ValueError, match="mixes the examples"):
                    ntk.empirical_ntk(fn, w, inputs)
        assert len(calls) == 2
        want = explicit(jacobians(independent, w, x), trace=True)
        for _ in range(2):  # (auto's estimate of "products" needs forward mode)
            assert_close(ntk.empirical_ntk(independent, w, x, method="jacobian"), want)
        assert len(calls) == 3
        # inside a jit the inputs are traced: nothing to compare, the kernel is computed
        kernel = jax.jit(lambda w, x: ntk._kernel(centred, w, x, None, (1,), ()))(w, x)
        assert kernel.shape == (6, 6)


def test_a_bad_argument_is_named_before_the_check_compiles(x64, monkeypatch):
    def never(*args):
        raise AssertionError("the mixing check ran before the arguments were checked")

    monkeypatch.setattr(ntk, "_interacting", never)
    w, x = _normal(13, (4, 3)), _normal(14, (5, 4))
    with pytest.raises(ValueError, match="unknown method"):
        ntk.empirical_ntk(lambda w, x: x @ w, w, x, method="fast")
    with pytest.raises(ValueError, match="memory_budget"):
        ntk.choose_method(lambda w, x: x @ w, w, x, memory_budget=0)


# ------------------------------------------------------------------------------ transformer


@pytest.mark.parametrize("trace", [True, False])
def test_transformer_kernel_on_tokens_equals_explicit_jacobians(trace):
    with jax.enable_x64(True):
        module, variables, tokens = transformer()
        want = explicit(jacobians(module.apply, variables, tokens), trace)
        axes = (-1,) if trace else ()
        plan = _structured.make_plan(
            Partial(module.apply), variables, tokens[:1], (1,) if trace else (), ()
        )
        (lookup,) = [r for r in plan.rules if r.form == "lookup"]
        assert lookup.weight_shape == (64, 8) and (lookup.p, lookup.f) == (4, 8)
        for method in METHODS:
            got = ntk.empirical_ntk(module.apply, variables, tokens, trace_axes=axes, method=method)
            assert_close(got, want)


def test_transformer_with_a_small_vocabulary_takes_the_table_jacobian():
    with jax.enable_x64(True):
        module, variables, tokens = transformer(vocab=7)
        plan = _structured.make_plan(Partial(module.apply), variables, tokens[:1], (1,), ())
        assert "lookup" not in {r.form for r in plan.rules} and plan.fallback
        want = explicit(jacobians(module.apply, variables, tokens), trace=True)
        assert_close(ntk.empirical_ntk(module.apply, variables, tokens, method="structured"), want)


# ------------------------------------------------------------------------------- pseudo-NTK


def pseudo_explicit(j1: np.ndarray, j2: np.ndarray) -> np.ndarray:
    """(1/c) Σ_a Σ_b ⟨∇f_a(x_i), ∇f_b(x'_j)⟩ from the (n, c, P) Jacobians."""
    return np.einsum("iap,jbp->ij", j1, j2) / j1.shape[1]


def _mlp(outputs):
    params = {"w1": _normal(5, (4, 7)), "b1": _normal(6, (7,)), "w2": _normal(7, (7, 6))}

    def apply_fn(p, x):
        y = jnp.tanh(x @ p["w1"] + p["b1"][None]) @ p["w2"]
        return y.reshape(x.shape[0], *outputs)

    return apply_fn, params


@pytest.mark.parametrize("outputs", [(6,), (2, 3)])
def test_pseudo_ntk_equals_the_summed_jacobian_formula(outputs):
    with jax.enable_x64(True):
        apply_fn, params = _mlp(outputs)
        x1, x2 = _normal(8, (5, 4)), _normal(9, (3, 4))
        j1 = jacobians(lambda p, x: apply_fn(p, x).reshape(x.shape[0], -1), params, x1)
        j2 = jacobians(lambda p, x: apply_fn(p, x).reshape(x.shape[0], -1), params, x2)
        for method in ("auto", "jacobian", "products", "structured"):
            assert_close(
                ntk.pseudo_ntk(apply_fn, params, x1, method=method), pseudo_explicit(j1, j1)
            )
            got = ntk.pseudo_ntk(apply_fn, params, x1, x2, method=method, batch_size=2)
            assert_close(got, pseudo_explicit(j1, j2))
        host = ntk.pseudo_ntk(apply_fn, params, x1, output="host")
        assert isinstance(host, np.ndarray)
        assert_close(host, pseudo_explicit(j1, j1))


def test_pseudo_ntk_of_the_models_and_of_one_output():
    with jax.enable_x64(True):
        module, variables, x = resnet_bn()
        apply_fn = _eval_fn(module, variables["batch_stats"])
        j = jacobians(apply_fn, variables["params"], x)
        assert_close(ntk.pseudo_ntk(apply_fn, variables["params"], x), pseudo_explicit(j, j))
        module, variables, tokens = transformer()
        j = jacobians(module.apply, variables, tokens)
        assert_close(ntk.pseudo_ntk(module.apply, variables, tokens), pseudo_explicit(j, j))
        # one output per input: the pseudo-NTK is the NTK
        w, x = _normal(10, (4,)), _normal(11, (3, 4))
        want = explicit(jacobians(lambda w, x: jnp.tanh(x @ w)[:, None], w, x), trace=True)
        assert_close(ntk.pseudo_ntk(lambda w, x: jnp.tanh(x @ w), w, x), want)


def test_pseudo_ntk_checks_its_arguments_and_keeps_its_choice(x64, monkeypatch):
    apply_fn, params = _mlp((6,))
    x = _normal(12, (4, 4))
    with pytest.raises(ValueError, match=r"tuple of 2.*mutable="):
        ntk.pseudo_ntk(lambda p, x: (apply_fn(p, x), {}), params, x)
    with pytest.raises(ValueError, match="mixes the examples"):
        ntk.pseudo_ntk(
            lambda p, x: apply_fn(p, x) - jnp.mean(apply_fn(p, x), 0, keepdims=True), params, x
        )
    with pytest.raises(ValueError, match="unknown method"):
        ntk.pseudo_ntk(apply_fn, params, x, method="fast")
    with pytest.raises(TypeError):
        ntk.pseudo_ntk(apply_fn, params, x, trace_axes=())  # one output: nothing to trace
    ntk.pseudo_ntk(apply_fn, params, x)
    chosen = []
    choose = ntk._choose_anew
    monkeypatch.setattr(ntk, "_choose_anew", lambda *a: chosen.append(1) or choose(*a))
    ntk.pseudo_ntk(apply_fn, params, x)
    assert not chosen  # the same function again: the engine's choice is kept


@pytest.mark.slow  # the benchmark's full-width transformer, compiled four times: ~15 s
def test_embedding_lookup_benchmark_at_a_tiny_size(tmp_path):
    import embedding_lookup

    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    argv = ["--n", "6", "--vocabs", "1000", "--repeats", "1", "--out", str(tmp_path)]
    (row,) = embedding_lookup.main(argv)["rows"]
    assert results.read_bytes() == before
    assert (row["lookup"]["lookups"], row["fallback"]["lookups"]) == (1, 0)
    assert row["rel_diff"] < 1e-5  # float32: the same kernel both ways
    look, back = row["lookup"], row["fallback"]
    assert look["feature_bytes_per_example"] < back["feature_bytes_per_example"]
    assert (tmp_path / "embedding_lookup.md").read_text().count("| 1000 |") == 1
