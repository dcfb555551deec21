"""Laziness diagnostics (jaxntk/diagnostics.py) against NumPy from explicit Jacobians, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxntk import diagnostics
from jaxntk.network import TwoLayer
from jaxntk.objectives import get_variant
from jaxntk.scaling import Scaled
from jaxntk.taylor import TaylorModel

D, M, P = 4, 6, 7


def _sig(z):
    return 1.0 / (1.0 + np.exp(-(z - 1.0)))


def _d1(z):
    s = _sig(z)
    return s * (1 - s)


def _d2(z):
    s = _sig(z)
    return s * (1 - s) * (1 - 2 * s)


def _jacobian(variant, w0, a, u, x):
    """(P, m, d) ∂g(x_i)/∂U by hand for the shifted-sigmoid two-layer network."""
    pre, z = x @ w0.T, x @ u.T
    factor = {
        "full": _d1(x @ (w0 + u).T),
        "ntk": _d1(pre),
        "quadntk": _d2(pre) * z,
        "ntk+quadntk": _d1(pre) + _d2(pre) * z,
        "randomized": 0.5 * (_d1(x @ (w0 + u).T) - _d1(x @ (w0 - u).T)),
    }[variant]
    return (factor * a[None, :])[:, :, None] * x[:, None, :]


@pytest.fixture
def setup(x64):
    rng = np.random.default_rng(0)
    net = TwoLayer.init(jax.random.PRNGKey(0), d=D, m=M, dtype=jnp.float64)
    x = rng.standard_normal((P, D))
    u = 0.3 * rng.standard_normal((M, D))
    y = rng.standard_normal(P)
    return net, x, u, y


def _predict(variant, model):
    v = get_variant(variant)
    return lambda u, prep: v.predict(model, u, prep)


def _gram(j):
    flat = j.reshape(j.shape[0], -1)
    return flat @ flat.T


@pytest.mark.parametrize("variant", ["full", "ntk", "quadntk", "ntk+quadntk", "randomized"])
def test_two_layer_kernel_is_the_gram_matrix_of_the_explicit_jacobian(setup, variant):
    net, x, u, _ = setup
    expected = _gram(_jacobian(variant, np.asarray(net.w0), np.asarray(net.a), u, x))
    kernel = jax.jit(lambda net, u, p: diagnostics.tangent_kernel(_predict(variant, net), u, p))
    k = kernel(net, jnp.asarray(u), net.prepare(jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(k), expected, rtol=1e-12, atol=1e-14)
    if variant == "full":  # the closed form the trainer uses for the network's own kernel
        prep = net.prepare(jnp.asarray(x))
        closed = diagnostics.network_kernel(Scaled(Scaled(net, 2.0), 1.5), jnp.asarray(u), prep)
        np.testing.assert_allclose(np.asarray(closed), 9.0 * expected, rtol=1e-12, atol=1e-14)
        generic = TaylorModel(net.apply_fn, net.w0)
        assert diagnostics.network_kernel(generic, u, generic.prepare(jnp.asarray(x))) is None


@pytest.mark.parametrize("variant", ["full", "ntk+quadntk"])
def test_generic_path_matches_the_explicit_jacobian(setup, variant):
    """A TaylorModel of the same network takes the reverse-mode Jacobian path."""
    net, x, u, _ = setup
    model = TaylorModel(net.apply_fn, net.w0)
    expected = _gram(_jacobian(variant, np.asarray(net.w0), np.asarray(net.a), u, x))
    prep = model.prepare(jnp.asarray(x))
    k = diagnostics.tangent_kernel(_predict(variant, model), jnp.asarray(u), prep)
    np.testing.assert_allclose(np.asarray(k), expected, rtol=1e-11, atol=1e-13)


def test_generic_path_on_a_pytree_model_with_two_outputs(x64):
    """g(x) = tanh(x W) V ∈ R², params {W, V}: the kernel traced over the two outputs."""
    rng = np.random.default_rng(1)
    w, v = rng.standard_normal((D, 5)), rng.standard_normal((5, 2))
    x = rng.standard_normal((P, D))

    def apply(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"]

    model = TaylorModel(apply, {"w": jnp.asarray(w), "v": jnp.asarray(v)})
    u = {"w": jnp.zeros((D, 5)), "v": jnp.zeros((5, 2))}
    k = diagnostics.tangent_kernel(model.full, u, model.prepare(jnp.asarray(x)))
    h = np.tanh(x @ w)  # (P, 5)
    # ∂g_o/∂W_kj = v_jo (1 − h_j²) x_k and ∂g_o/∂V_jo' = h_j δ_oo'
    jw = np.einsum("jo,ij,ik->iokj", v, 1 - h**2, x).reshape(P, 2, -1)
    jv = np.einsum("ij,oq->iojq", h, np.eye(2)).reshape(P, 2, -1)
    jac = np.concatenate([jw, jv], axis=2)
    expected = np.einsum("iaz,jaz->ij", jac, jac) / 2
    np.testing.assert_allclose(np.asarray(k), expected, rtol=1e-12)


def test_alignment_change_and_displacement_against_numpy(setup):
    net, _, u, y = setup
    rng = np.random.default_rng(2)
    a = rng.standard_normal((P, P))
    k0, kt = a @ a.T, a @ a.T + 0.1 * np.eye(P)
    h = np.eye(P) - np.ones((P, P)) / P
    kc, yc = h @ kt @ h, h @ y
    t = np.outer(yc, yc)
    expected = np.sum(kc * t) / (np.linalg.norm(kc) * np.linalg.norm(t))
    got = diagnostics.centered_alignment(jnp.asarray(kt), jnp.asarray(y))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    change = diagnostics.kernel_change(jnp.asarray(kt), jnp.asarray(k0))
    np.testing.assert_allclose(float(change), 0.1 * np.sqrt(P) / np.linalg.norm(k0), rtol=1e-12)
    disp = diagnostics.displacement(jnp.asarray(u), net.w0)
    np.testing.assert_allclose(float(disp), np.linalg.norm(u) / np.sqrt(M), rtol=1e-12)


def test_taylor_distances_against_the_closed_forms(setup):
    net, x, u, _ = setup
    w0, a = np.asarray(net.w0), np.asarray(net.a)
    f = _sig(x @ (w0 + u).T) @ a
    z = x @ u.T
    fl = (_d1(x @ w0.T) * z) @ a
    fq = 0.5 * (_d2(x @ w0.T) * z**2) @ a
    d = diagnostics.network_taylor_distances(net, jnp.asarray(u), net.prepare(jnp.asarray(x)))
    np.testing.assert_allclose(float(d["linear"]), np.linalg.norm(f - fl) / np.linalg.norm(f))
    np.testing.assert_allclose(
        float(d["quadratic"]), np.linalg.norm(f - fl - fq) / np.linalg.norm(f), rtol=1e-10
    )
    zero = diagnostics.network_taylor_distances(net, net.zeros(), net.prepare(jnp.asarray(x)))
    assert float(zero["linear"]) == 0.0 and float(zero["quadratic"]) == 0.0


def test_kernel_change_from_the_ntk_and_exactly_zero_for_ntk_in_a_compiled_loop(setup):
    net, x, u, y = setup
    ref = diagnostics.reference(net, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(
        np.asarray(ref.kernel0),
        _gram(_jacobian("ntk", np.asarray(net.w0), np.asarray(net.a), 0 * u, x)),
    )

    @jax.jit
    def along(net, ref, u):
        def step(c, t):
            out = diagnostics.measure(_predict("ntk", net), t * u, ref, linear=True)
            return c, out["kernel_change"]

        return jax.lax.scan(step, 0, jnp.linspace(0.0, 3.0, 4))[1]

    assert np.asarray(along(net, ref, jnp.asarray(u))).tolist() == [0.0] * 4
    # the kernel it stands for does not move: recomputed at U it is K_0 up to rounding
    k_u = diagnostics.tangent_kernel(_predict("ntk", net), jnp.asarray(u), ref.prep)
    np.testing.assert_allclose(np.asarray(k_u), np.asarray(ref.kernel0), rtol=1e-14)
    w0, a = np.asarray(net.w0), np.asarray(net.a)
    for variant in ("full", "quadntk"):
        k = _gram(_jacobian(variant, w0, a, u, x))
        k0 = np.asarray(ref.kernel0)
        out = diagnostics.measure(_predict(variant, net), jnp.asarray(u), ref)
        np.testing.assert_allclose(
            float(out["kernel_change"]), np.linalg.norm(k - k0) / np.linalg.norm(k0), rtol=1e-10
        )
        h = np.eye(P) - 1 / P
        kc, t = h @ k @ h, np.outer(h @ y, h @ y)
        np.testing.assert_allclose(
            float(out["alignment"]),
            np.sum(kc * t) / np.linalg.norm(kc) / np.linalg.norm(t),
            rtol=1e-10,
        )
        np.testing.assert_allclose(
            float(out["displacement"]), np.linalg.norm(u) / np.linalg.norm(w0), rtol=1e-12
        )


def test_scaled_model_kernel_is_alpha_squared_times(setup):
    net, x, u, _ = setup
    prep = net.prepare(jnp.asarray(x))
    k = diagnostics.tangent_kernel(net.full, jnp.asarray(u), prep)
    k3 = diagnostics.tangent_kernel(Scaled(net, 3.0).full, jnp.asarray(u), prep)
    np.testing.assert_allclose(np.asarray(k3), 9.0 * np.asarray(k), rtol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="y must have shape"):
        diagnostics.centered_alignment(jnp.eye(3), jnp.ones(4))
    with pytest.raises(ValueError, match="k_t must be a square"):
        diagnostics.kernel_change(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="y_probe must have 3 rows"):
        diagnostics.reference(None, jnp.ones((3, 2)), jnp.ones(4))


@pytest.mark.slow
def test_train_records_the_diagnostics_at_every_evaluation(x64):
    """`train(..., probe=P)`: the values recorded inside the compiled loop, against NumPy at the
    run's own parameters; the ntk variant's kernel change is 0 at every evaluation."""
    import jaxntk as jn

    task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=12, n_test=30)
    task = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, task)
    net = TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M, dtype=jnp.float64)
    run = jn.train(net, task, "full", steps=30, eval_every=10, probe=P, progress=False)
    assert run.history["kernel_change"].shape == (1, 1, 4)
    assert run.history["probe_outputs"].shape == (1, 1, 4, P)
    u = np.asarray(run.params[0, 0])
    w0, a = np.asarray(net.w0), np.asarray(net.a)
    x, y = np.asarray(task.x_train)[:P], np.asarray(task.y_train)[:P]
    k, k0 = _gram(_jacobian("full", w0, a, u, x)), _gram(_jacobian("ntk", w0, a, 0 * u, x))
    final = {key: float(val[0, 0]) for key, val in run.final.items() if val.ndim == 2}
    np.testing.assert_allclose(
        final["kernel_change"], np.linalg.norm(k - k0) / np.linalg.norm(k0), rtol=1e-9
    )
    h = np.eye(P) - 1 / P
    kc, t = h @ k @ h, np.outer(h @ y, h @ y)
    expected = np.sum(kc * t) / np.linalg.norm(kc) / np.linalg.norm(t)
    np.testing.assert_allclose(final["alignment"], expected, rtol=1e-9)
    np.testing.assert_allclose(
        final["displacement"], np.linalg.norm(u) / np.linalg.norm(w0), rtol=1e-12
    )
    xt = np.asarray(task.x_test)
    f = _sig(xt @ (w0 + u).T) @ a
    fl = (_d1(xt @ w0.T) * (xt @ u.T)) @ a
    fq = 0.5 * (_d2(xt @ w0.T) * (xt @ u.T) ** 2) @ a
    np.testing.assert_allclose(
        final["distance_linear"], np.linalg.norm(f - fl) / np.linalg.norm(f), rtol=1e-9
    )
    np.testing.assert_allclose(
        final["distance_quadratic"], np.linalg.norm(f - fl - fq) / np.linalg.norm(f), rtol=1e-8
    )
    np.testing.assert_allclose(
        run.history["probe_outputs"][0, 0, -1], _sig(x @ (w0 + u).T) @ a, rtol=1e-10
    )
    ntk = jn.train(net, task, "ntk", steps=30, eval_every=10, probe=P, progress=False)
    assert ntk.history["kernel_change"][0, 0].tolist() == [0.0] * 4
    assert "distance_linear" not in ntk.history
    with pytest.raises(ValueError, match="probe must be between 0 and 12"):
        jn.train(net, task, "ntk", steps=3, probe=13, progress=False)
