"""The baseline: one f_L + f_Q + bulk-penalty GD step written the way the authors' code works.

docs/science.md §7: their notebooks build the Taylor model with neural-tangents on the flattened
parameters θ (m·d), so every call re-derives it by nested jvp from f(θ0 + ·, x):

    f_L(x; u) = ∂_t f(θ0 + t u, x)|₀,    f_Q(x; u) = ½ ∂²_t f(θ0 + t u, x)|₀,

hold the dense n × (m·d) feature matrix J (here as the bulk matrix B = (I − U_k U_kᵀ) J, so that
R_bulk = (1/n)‖B u‖²) as a constant captured by the jitted step, evaluate the test loss at every
step, and drive the steps from a Python loop. Written here on purpose, not imported from jaxntk,
so that `bench.py` measures our trainer against it in the same run.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def make_step(w0, a, x_train, y_train, x_test, y_test, *, k: int, lam: float, lr: float = 1.0):
    """A jitted step u ↦ (u − lr ∇L(u), train loss, test loss) with J and B closed over."""
    m, d = w0.shape
    theta0 = w0.reshape(-1)

    def f(theta, x):
        return jax.nn.sigmoid(x @ theta.reshape(m, d).T - 1.0) @ a

    def f_lin(u, x):
        return jax.jvp(lambda t: f(t, x), (theta0,), (u,))[1]

    def f_quad(u, x):
        inner = lambda t: jax.jvp(lambda s: f(s, x), (t,), (u,))[1]  # noqa: E731
        return 0.5 * jax.jvp(inner, (theta0,), (u,))[1]

    jac = jax.jacrev(lambda t: f(t, x_train))(theta0)  # (n, m·d), dense; n cotangents
    _, evecs = jnp.linalg.eigh(jac @ jac.T)
    top = evecs[:, -k:]
    bulk_matrix = jac - top @ (top.T @ jac)

    def loss(u):
        pred = f_lin(u, x_train) + f_quad(u, x_train)
        r_bulk = jnp.mean((bulk_matrix @ u) ** 2)
        return jnp.mean((pred - y_train) ** 2) + lam * r_bulk

    @jax.jit
    def step(u):
        value, grad = jax.value_and_grad(loss)(u)
        test = jnp.mean((f_lin(u, x_test) + f_quad(u, x_test) - y_test) ** 2)
        return u - lr * grad, value, test

    return step, jnp.zeros_like(theta0)


def seconds_per_step(step, u0, *, steps: int, repeats: int) -> float:
    """Min over repeats of the wall time of `steps` Python-loop steps, per step, after warm-up."""
    jax.block_until_ready(step(u0))

    def timed() -> float:
        u = u0
        t0 = time.perf_counter()
        for _ in range(steps):
            u, train_loss, test_loss = step(u)
            # the authors' loop records both losses on the host at every step
            float(train_loss), float(test_loss)
        return (time.perf_counter() - t0) / steps

    return min(timed() for _ in range(repeats))
