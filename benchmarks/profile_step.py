"""Where the regularized step's time goes: its parts timed one by one, and the generic Taylor path.

    python benchmarks/profile_step.py [--d 50 --n 354 --m 4000]

Times (jitted, after warm-up, best of 3 × `--reps` calls, ended by block_until_ready):
the two products of a step, X Uᵀ (n×d by d×m) and Gᵀ X (contracting over n); the reduction that
gives f_L and f_Q from σ', σ'' and Z = X Uᵀ; the gradient's elementwise pass; and whole steps of
f_L + f_Q in a bare `lax.scan`, with and without the `lax.cond` the trainer uses to skip steps past
the end, for the closed form (`TwoLayer`) and the generic path (`TaylorModel`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxntk as jn
from jaxntk.taylor import TaylorModel


def best_ms(f, *args, reps: int = 200) -> float:
    jax.block_until_ready(f(*args))
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = f(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e3


def scan_ms(model, x, y, u, steps: int, with_cond: bool) -> float:
    def step(u, prep):
        def loss(u):
            fl, fq = model.linear_and_quadratic(u, prep)
            return jnp.mean((y - fl - fq) ** 2)

        return u - jax.grad(loss)(u)

    @jax.jit
    def run(u, x):
        prep = model.prepare(x)

        def body(c, _):
            u, t = c
            if with_cond:
                u = jax.lax.cond(t < 10**9, lambda u: step(u, prep), lambda u: u, u)
            else:
                u = step(u, prep)
            return (u, t + 1), None

        return jax.lax.scan(body, (u, 0), None, length=steps)[0][0]

    return best_ms(run, u, x, reps=1) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--n", type=int, default=354)
    p.add_argument("--m", type=int, default=4000)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    task = jn.paper_task(jax.random.PRNGKey(0), d=a.d, n=a.n, n_test=a.n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=a.d, m=a.m)
    x, y = task.x_train, task.y_train
    prep = net.prepare(x)
    u = 0.01 * jax.random.normal(jax.random.PRNGKey(2), (a.m, a.d))
    g = jax.random.normal(jax.random.PRNGKey(3), (a.n, a.m))
    flops = 2 * a.n * a.m * a.d
    parts = {
        "X U^T": (jax.jit(lambda x, u: x @ u.T), (x, u), flops),
        "G^T X": (jax.jit(lambda g, x: g.T @ x), (g, x), flops),
        "f_L, f_Q reduction": (
            jax.jit(lambda d1, d2, z: ((d1 * z).sum(1), (d2 * z * z).sum(1))),
            (prep.d1, prep.d2, g),
            None,
        ),
        "gradient elementwise": (
            jax.jit(lambda d1, d2, z, r: (d1 + d2 * z) * r[:, None]),
            (prep.d1, prep.d2, g, y),
            None,
        ),
    }
    print(f"d={a.d}, n={a.n}, m={a.m}, {jax.devices()[0].platform}")
    for name, (f, args, fl) in parts.items():
        ms = best_ms(f, *args, reps=a.reps)
        rate = "" if fl is None else f"  {fl / ms / 1e6:.0f} GFLOP/s"
        print(f"{name:<24} {ms:7.3f} ms{rate}")
    generic = TaylorModel(net.apply_fn, net.w0)
    for name, model in (("closed form", net), ("generic Taylor", generic)):
        for cond in (False, True):
            ms = scan_ms(model, x, y, u, a.steps, cond)
            print(f"{name + ' step' + (' (cond)' if cond else ''):<24} {ms:7.3f} ms")


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
