"""Tests for jaxntk.ntk: every implementation against the explicit Jacobian contraction (float64),
blocks, symmetry, the memory budget, "auto"'s choice, host and memmap output, progress lines,
several devices and several processes; the kernel's users (a TaylorModel's gram matrix and good
directions, regularized training of a one-output CNN)."""

import os
import re
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_distributed import _run_processes  # one process per --process-id, a fresh port

import jaxntk as jn
from jaxntk import ntk

C = 3  # outputs per input
N1, N2, BLOCK = 5, 4, 2  # a block size that divides neither n

# (trace_axes, diagonal_axes) of outputs (n, C) -> the contraction of J1 (i a P) with J2 (j b P)
CONTRACTIONS = {
    ((), ()): ("iaP,jbP->ijab", 1),
    ((), (0,)): ("iaP,ibP->iab", 1),
    ((), (1,)): ("iaP,jaP->ija", 1),
    ((), (0, 1)): ("iaP,iaP->ia", 1),
    ((1,), ()): ("iaP,jaP->ij", C),
    ((1,), (0,)): ("iaP,iaP->i", C),
}


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def mlp():
    params = [(_normal(1, (4, 6)), _normal(2, (6,))), (_normal(3, (6, C)), _normal(4, (C,)))]

    def apply_fn(p, x):
        (w1, b1), (w2, b2) = p
        return jnp.tanh(x @ w1 + b1[None]) @ w2 + b2[None]

    return apply_fn, params, (4,)


def cnn():
    """Strided, asymmetrically padded, dilated and grouped convolutions, then a dense layer."""
    params = {
        "c1": _normal(5, (3, 3, 4, 6)),
        "c2": _normal(6, (2, 2, 3, 4)),
        "d": _normal(7, (4, C)),
    }

    def conv(x, w, **kw):
        return jax.lax.conv_general_dilated(x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)

    def apply_fn(p, x):
        h = jnp.tanh(conv(x, p["c1"], window_strides=(2, 1), padding=((1, 2), (0, 1))))
        h = jnp.tanh(
            conv(
                h,
                p["c2"],
                window_strides=(1, 1),
                padding="SAME",
                rhs_dilation=(2, 1),
                feature_group_count=2,
            )
        )
        return h.mean(axis=(1, 2)) @ p["d"]

    return apply_fn, params, (6, 5, 4)


class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
        f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
        x = nn.LayerNorm(force_float32_reductions=False, **f64)(nn.Dense(7, **f64)(x))
        return nn.Dense(C, **f64)(jnp.tanh(x))


def flax_layernorm():
    module = Normed()
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.float64))
    params = jax.tree.map(lambda p: p + 0.1 * _normal(8, p.shape), params)  # non-trivial LayerNorm
    return module.apply, params, (4,)


def unruled():
    """Parameters through ops with no structured rule: an elementwise scale, a cumsum, a sort."""
    params = {"w": _normal(9, (4, C)), "scale": _normal(10, (C,)), "v": _normal(11, (C,))}

    def apply_fn(p, x):
        h = jnp.sin(x @ p["w"]) * p["scale"][None]
        return h + jnp.cumsum(jnp.sort(p["v"]))[None]

    return apply_fn, params, (4,)


MODELS = {"mlp": mlp, "cnn": cnn, "flax_layernorm": flax_layernorm, "unruled": unruled}
IMPLEMENTATIONS = ("jacobian", "products", "structured")


def jacobian(apply_fn, params, x):
    """∂f(x_i)/∂θ as (n, C, P): forward mode of each one-example function, flattened parameters."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    one = jax.jacfwd(lambda q, xi: apply_fn(unravel(q), xi[None])[0])
    return np.stack([np.asarray(one(flat, xi)) for xi in x])


def expected(j1, j2, trace, diagonal):
    spec, size = CONTRACTIONS[(trace, diagonal)]
    return np.einsum(spec, j1, j2) / size


def assert_close(got, want, rtol=1e-10):
    got = np.asarray(got)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want))


@pytest.mark.parametrize("method", IMPLEMENTATIONS)
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.slow
def test_every_method_equals_the_explicit_jacobian_contraction(x64, model, method):
    check_contractions(model, method, list(CONTRACTIONS))


@pytest.mark.parametrize("model", list(MODELS))
def test_auto_equals_the_explicit_jacobian_contraction(x64, model):
    check_contractions(model, "auto", [((1,), ()), ((), (0,))])


def check_contractions(model, method, combinations):
    """K by `method` at each (trace, diagonal) against the contraction of explicit Jacobians,
    with x2 given, and x2 = None for the symmetric kernels with x1's outputs traced."""
    apply_fn, params, shape = MODELS[model]()
    x1, x2 = _normal(20, (N1, *shape)), _normal(21, (N2, *shape))
    j1, j2 = jacobian(apply_fn, params, x1), jacobian(apply_fn, params, x2)
    for trace, diagonal in combinations:
        axes = {"trace_axes": trace, "diagonal_axes": diagonal}
        if 0 in diagonal:
            cases = [(None, j1)]
        elif trace:
            cases = [(x2, j2), (None, j1)]
        else:
            cases = [(x2, j2)]
        for other, j_other in cases:
            k = jn.empirical_ntk(
                apply_fn, params, x1, other, **axes, method=method, batch_size=BLOCK
            )
            assert_close(k, expected(j1, j_other, trace, diagonal))


def test_the_symmetric_kernel_mirrors_the_computed_pairs(x64):
    """x2 = None contracts only the block pairs j ≥ i: the rest must be their mirror images."""
    apply_fn, params, shape = mlp()
    x = _normal(22, (7, *shape))
    j = jacobian(apply_fn, params, x)
    for method in ("jacobian", "products"):
        k = jn.empirical_ntk(apply_fn, params, x, trace_axes=(), method=method, batch_size=3)
        assert_close(k, expected(j, j, (), ()))
        given = jn.empirical_ntk(apply_fn, params, x, x, trace_axes=(), method=method, batch_size=3)
        assert_close(k, np.asarray(given), rtol=1e-13)


def test_host_and_memmap_outputs_equal_the_device_output_with_a_line_per_block_row(
    x64, tmp_path, capsys
):
    apply_fn, params, shape = cnn()
    x1, x2 = _normal(23, (N1, *shape)), _normal(24, (N2, *shape))
    for other in (None, x2):
        device = jn.empirical_ntk(apply_fn, params, x1, other, trace_axes=(), batch_size=BLOCK)
        host = jn.empirical_ntk(
            apply_fn, params, x1, other, trace_axes=(), batch_size=BLOCK, output="host"
        )
        assert isinstance(host, np.ndarray) and not isinstance(host, np.memmap)
        np.testing.assert_allclose(host, device, rtol=1e-13, atol=0)
        path = tmp_path / "k.npy"
        mapped = jn.empirical_ntk(
            apply_fn,
            params,
            x1,
            other,
            trace_axes=(),
            batch_size=BLOCK,
            output=path,
            progress=True,
        )
        assert isinstance(mapped, np.memmap)
        np.testing.assert_allclose(np.load(path), device, rtol=1e-13, atol=0)
        lines = capsys.readouterr().err.strip().splitlines()
        rows = -(-N1 // BLOCK)
        assert [
            re.match(r"\[empirical_ntk\] block row (\d+)/(\d+)", s).groups() for s in lines
        ] == [(str(i), str(rows)) for i in range(1, rows + 1)]


def test_a_budget_too_small_for_one_example_names_memory_budget(x64):
    apply_fn, params, shape = mlp()
    x = _normal(25, (N1, *shape))
    with pytest.raises(ValueError, match=r"memory_budget = 16 bytes .* at least \d+ bytes"):
        jn.empirical_ntk(apply_fn, params, x, memory_budget=16)
    with pytest.raises(ValueError, match="memory_budget = 100 bytes"):
        jn.empirical_ntk(apply_fn, params, x, memory_budget=100, method="jacobian")
    with pytest.raises(TypeError, match="memory_budget must be an int"):
        jn.empirical_ntk(apply_fn, params, x, memory_budget=1e9)


def test_a_small_budget_streams_the_columns_and_gives_the_same_kernel(x64):
    apply_fn, params, shape = mlp()
    x1, x2 = _normal(26, (N1, *shape)), _normal(27, (N2, *shape))
    size = jax.flatten_util.ravel_pytree(params)[0].size
    one = C * size * 8  # bytes of one example's Jacobian in float64
    budget = {"memory_budget": 3 * one, "method": "jacobian"}
    choice = jn.choose_method(apply_fn, params, x1, x2, trace_axes=(), **budget)
    k = jn.empirical_ntk(apply_fn, params, x1, x2, trace_axes=(), **budget)
    assert_close(
        k, expected(jacobian(apply_fn, params, x1), jacobian(apply_fn, params, x2), (), ())
    )
    assert choice.batch_size == 1 and not choice.resident  # a row block and a column block fit
    assert choice.estimates["jacobian"].feature_bytes == one


def test_auto_records_its_choice_and_leaves_out_what_does_not_fit(x64):
    apply_fn, params, shape = mlp()
    x = _normal(28, (N1, *shape))
    choice = jn.choose_method(apply_fn, params, x)
    assert choice.method in choice.estimates and choice.method != "auto"
    assert all(e.flops > 0 and e.fits and e.cost == e.flops for e in choice.estimates.values())
    best = min(choice.estimates, key=lambda m: choice.estimates[m].cost)
    assert choice.method == best and choice.reason.startswith(f"{best}: least estimated cost")
    conv = jn.choose_method(*cnn()[:2], _normal(28, (N1, *cnn()[2])))
    jacobian_cost = conv.estimates["jacobian"]
    assert jacobian_cost.cost == ntk.CONV_JACOBIAN_SLOWDOWN * jacobian_cost.flops
    size = jax.flatten_util.ravel_pytree(params)[0].size
    # the Jacobian of one example (C·P·8 bytes) over the budget, one parameter vector under it
    tight = jn.choose_method(apply_fn, params, x, memory_budget=2 * size * 8)
    assert not tight.estimates["jacobian"].fits and tight.method != "jacobian"
    assert "jacobian" in tight.reason and "over the budget" in tight.reason


def test_auto_lowers_a_model_once_per_shape(x64, monkeypatch):
    """The cost analysis behind "auto" is kept per function and shapes: a second call on new
    values of the same shapes lowers nothing, another function is analysed afresh."""
    apply_fn, params, shape = mlp()
    lowered = []
    analyse = ntk._lowered_flops
    monkeypatch.setattr(ntk, "_lowered_flops", lambda *a: lowered.append(1) or analyse(*a))
    monkeypatch.setattr(ntk, "_ANALYSES", {})
    jn.choose_method(apply_fn, params, _normal(40, (N1, *shape)))
    first = len(lowered)
    assert first > 0
    again = jn.choose_method(apply_fn, params, _normal(41, (N1, *shape)))
    assert len(lowered) == first
    other_fn, other_params, _ = mlp()  # a new closure: nothing known of it
    fresh = jn.choose_method(other_fn, other_params, _normal(42, (N1, *shape)))
    assert len(lowered) == 2 * first
    assert again.estimates["jacobian"].flops > 0 and fresh.method in again.estimates


def test_the_default_budget_is_a_quarter_of_the_memory():
    stats = jax.local_devices()[0].memory_stats() or {}
    total = stats.get("bytes_limit", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    assert ntk.default_memory_budget() == total // 4


def test_the_kernel_compiles_once_per_shape(x64):
    apply_fn, params, shape = mlp()
    programs = ntk._block_programs()
    before = [p._cache_size() for p in programs]
    for seed in (29, 30):
        jn.empirical_ntk(apply_fn, params, _normal(seed, (N1, *shape)), method="jacobian")
    assert [p._cache_size() for p in programs] == [before[0] + 1, before[1] + 1]


def test_the_choice_is_kept_per_function_shapes_and_arguments(x64, monkeypatch):
    """A second call with the same function, shapes and arguments chooses nothing anew (no
    trace of the model, no plan); new shapes, another method or budget, or a call inside a
    trace (values unknown) choose again."""
    apply_fn, params, shape = mlp()
    made = []
    anew = ntk._choose_anew
    monkeypatch.setattr(ntk, "_choose_anew", lambda *a: made.append(a[5:]) or anew(*a))
    monkeypatch.setattr(ntk, "_CHOICES", {})
    x = _normal(43, (N1, *shape))
    first = jn.empirical_ntk(apply_fn, params, x)
    again = jn.empirical_ntk(apply_fn, params, 2.0 * x)  # new values, same shapes
    assert len(made) == 1
    j = jacobian(apply_fn, params, 2.0 * x)
    assert_close(again, expected(j, j, (1,), ()))
    assert not np.allclose(first, again)
    jn.empirical_ntk(apply_fn, params, x[:-1])  # another n
    jn.empirical_ntk(apply_fn, params, x, method="jacobian")
    jn.empirical_ntk(apply_fn, params, x, memory_budget=1 << 20)
    assert len(made) == 4
    inside = jax.jit(lambda x: jn.empirical_ntk(apply_fn, params, x))(x)  # traced: not kept
    assert len(made) == 5 and len(ntk._CHOICES) == 4
    assert_close(inside, first)
    monkeypatch.setattr(ntk, "_CHOICES_KEPT", 4)
    jn.empirical_ntk(apply_fn, params, x[:-2])  # the oldest goes
    assert len(ntk._CHOICES) == 4 and len(made) == 6


def test_bad_arguments_raise_before_anything_compiles(x64):
    apply_fn, params, shape = mlp()
    x = _normal(31, (N1, *shape))
    with pytest.raises(ValueError, match="unknown method 'svd'"):
        jn.empirical_ntk(apply_fn, params, x, method="svd")
    with pytest.raises(ValueError, match="output must be"):
        jn.empirical_ntk(apply_fn, params, x, output=3)
    with pytest.raises(TypeError, match="progress must be a bool"):
        jn.empirical_ntk(apply_fn, params, x, progress=1)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        jn.empirical_ntk(apply_fn, params, x, batch_size=2.0)


class OneOutputCNN(nn.Module):
    """8 × 8 × 1 images ↦ one output: a strided convolution with a bias, tanh, a dense readout."""

    @nn.compact
    def __call__(self, x):
        f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
        h = jnp.tanh(nn.Conv(3, (3, 3), strides=2, **f64)(x.reshape(-1, 8, 8, 1)))
        return nn.Dense(1, **f64)(h.reshape(h.shape[0], -1))[:, 0]


@pytest.mark.slow
def test_a_taylor_models_gram_matrix_and_good_directions_come_from_the_engine(x64):
    module = OneOutputCNN()
    x = _normal(32, (9, 64))
    params = module.init(jax.random.PRNGKey(1), x[:1])
    model = jn.TaylorModel(module.apply, params)
    prep = model.prepare(x)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    j = np.asarray(jax.jacfwd(lambda q: module.apply(unravel(q), x))(flat))  # (n, P)
    assert_close(jn.gram_matrix(model, prep), j @ j.T)
    dirs = jn.good_directions(model, prep, k=3)
    u, s, _ = np.linalg.svd(j, full_matrices=False)
    np.testing.assert_allclose(dirs.s_k, s[:3], rtol=1e-8)
    np.testing.assert_allclose(np.abs(u[:, :3].T @ np.asarray(dirs.u_k)), np.eye(3), atol=1e-6)


@pytest.mark.slow
def test_regularized_training_of_a_one_output_flax_cnn_runs_and_learns(x64):
    module = OneOutputCNN()
    x, x_test = _normal(33, (12, 64)), _normal(34, (6, 64))
    y, y_test = jnp.sign(x[:, 0]), jnp.sign(x_test[:, 0])
    task = jn.data.task_from_arrays(x, y, x_test, y_test)
    model = jn.TaylorModel(module.apply, module.init(jax.random.PRNGKey(2), x[:1]))
    reg = jn.Regularizer(bulk=1.0, k=3)
    run = jn.train(
        model, task, "regularized", steps=40, eval_every=20, lr=0.05, reg=reg, progress=False
    )
    loss = np.asarray(run.history["train_loss"]).ravel()
    assert np.all(np.isfinite(loss)) and loss[-1] < 0.5 * loss[0]


WORKER = Path(__file__).with_name("ntk_worker.py")


def run_workers(out, processes: int, devices: int) -> list[dict]:
    """tests/ntk_worker.py in `processes` processes (jax.distributed on localhost when > 1) of
    `devices` host devices each; each process's saved kernels and counts."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
    }
    command = [sys.executable, str(WORKER), str(out)]
    for attempt in range(2):
        codes, errors = _run_processes(command, processes, env)
        # the coordinator's known gRPC abort at exit, after the results are written
        # (tests/test_distributed.py): run once more
        if attempt == 0 and any(
            c == -6 and "DistributedRuntimeService::Shutdown" in e
            for c, e in zip(codes, errors, strict=True)
        ):
            continue
        break
    for i, (code, err) in enumerate(zip(codes, errors, strict=True)):
        assert code == 0, f"process {i} exited with {code}:\n{err[-3000:]}"
    return [dict(np.load(f"{out}-{i}.npz")) for i in range(processes)]


def check_worker_kernels(result: dict) -> None:
    with jax.enable_x64(True):
        apply_fn, params, shape = mlp()
        x1, x2 = _normal(40, (7, *shape)), _normal(41, (5, *shape))
        j1, j2 = jacobian(apply_fn, params, x1), jacobian(apply_fn, params, x2)
    for name, j_other in (("sym", j1), ("given", j2)):
        assert_close(result[f"{name}0"], expected(j1, j_other, (), ()))
        assert_close(result[f"{name}1"], expected(j1, j_other, (1,), ()))
        assert_close(result[f"{name}_host"], expected(j1, j_other, (1,), ()))


@pytest.mark.slow
def test_block_rows_spread_over_two_devices(tmp_path):
    (result,) = run_workers(tmp_path / "k", processes=1, devices=2)
    check_worker_kernels(result)
    assert len(set(result["devices"])) == 2  # block features computed on both devices


def test_two_processes_share_the_block_rows_and_both_return_the_kernel(tmp_path):
    results = run_workers(tmp_path / "k", processes=2, devices=1)
    for result in results:
        check_worker_kernels(result)
        assert int(result["processes"]) == 2
    # 4 × 3 blocks of 2 rows: 10 pairs j ≥ i for x2 = None, 12 for x2 given, 3 kernels of each;
    # every pair contracted once, by one process or the other
    total = 3 * (10 + 12)
    assert sum(int(r["pairs"]) for r in results) == total
    assert all(0 < int(r["pairs"]) < total for r in results)
