"""Does caching the generic Taylor terms pay? Milliseconds per gradient step, float32.

For the two-layer network (d=50, n=354, m=4000 by default) every row runs gradient descent on
mean((y − f_L)²) (order 1) or mean((y − f_L − f_Q)²) (order 2) and is timed two ways:

- scan: `steps` steps inside one jitted `lax.scan`, the inputs prepared inside the jitted function
  (how `jaxntk.train` runs); XLA can hoist loop-invariant work at params0 out of the loop;
- per-step jit: one jitted step called `steps` times from Python with the prepared state passed as
  an argument, so nothing computed at params0 can be shared between steps unless it is cached.

Rows: the closed form (`TwoLayer`), the cached generic form and the uncached one (jvp or jvp of a
jvp at params0 in every step). For the second order the cached form is a second `jax.linearize`, of
the first linearization's residuals r(params0) — f_Q(U) = ½ d/dt L(r(params0 + tU), U) with L the
linear map of `jax.linearize` — which jaxntk does not use because it measured slower; it lives
here only to be measured. Times are the minimum over `repeats` rounds after a warm-up, with
`block_until_ready`; each round runs every row once, so load from other processes hits all rows.

    python benchmarks/taylor_cache.py --out DIR               # the table to DIR/taylor_cache.md
    python benchmarks/taylor_cache.py --out DIR --results     # and appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata

import jax
import jax.numpy as jnp
from _machine import add_output_arguments, cpu_name, write_table

import jaxntk as jn

LR = 0.5


def closed_form(order: int):
    def prepare(net, x):
        return (net, net.prepare(x)), None

    def terms(state, u):
        net, prep = state
        return net.linear_and_quadratic(u, prep) if order == 2 else (net.linear_term(u, prep),)

    return prepare, terms


def taylor_model(order: int):
    """jaxntk's TaylorModel: jax.linearize in `prepare` (order 1), a jvp of a jvp (order 2)."""

    def prepare(net, x):
        model = jn.TaylorModel(net.apply_fn, net.w0)
        return (model, model.prepare(x)), None

    def terms(state, u):
        model, prep = state
        return model.linear_and_quadratic(u, prep) if order == 2 else (model.linear_term(u, prep),)

    return prepare, terms


def jvp_each_step():
    def prepare(net, x):
        return (net.apply_fn, net.w0, x), None

    def terms(state, u):
        return (jn.linear_term(*state[:2], u, state[2]),)

    return prepare, terms


def relinearized_residuals():
    """f_L and f_Q from L(r0, U) and a second jax.linearize giving dr(U) = d/dt r(params0 + tU)."""

    def prepare(net, x):
        treedef = []

        def residuals(w):
            leaves, tree = jax.tree.flatten(jax.linearize(lambda w: net.apply(w, x), w)[1])
            treedef.append(tree)
            return leaves

        r0, d_residuals = jax.linearize(residuals, net.w0)
        return (r0, d_residuals), treedef[0]

    def terms(state, u, treedef):
        r0, d_residuals = state
        f_lin, f_second = jax.jvp(
            lambda r: jax.tree.unflatten(treedef, r)(u), (r0,), (d_residuals(u),)
        )
        return f_lin, 0.5 * f_second

    return prepare, terms


ROWS: list[tuple[int, str, Callable]] = [
    (1, "closed form (TwoLayer.linear_term)", lambda: closed_form(1)),
    (1, "cached: jax.linearize in prepare [default]", lambda: taylor_model(1)),
    (1, "uncached: jax.jvp at W0 every step", jvp_each_step),
    (2, "closed form (TwoLayer.linear_and_quadratic)", lambda: closed_form(2)),
    (2, "cached: linearize of the residuals (rejected)", relinearized_residuals),
    (2, "uncached: jvp of jvp every step [default]", lambda: taylor_model(2)),
]


def bind(terms, static):
    return terms if static is None else (lambda state, u: terms(state, u, static))


def loss_and_step(terms, state, y, u):
    def loss(u):
        return jnp.mean((y - sum(terms(state, u))) ** 2)

    value, grad = jax.value_and_grad(loss)(u)
    return u - LR * grad, value


def scan_runner(make, net, x, y, u0, steps):
    """A call running `steps` steps in one jitted scan, and the final loss."""
    prepare, terms = make()

    @jax.jit
    def run(net, x, y, u0):
        state, static = prepare(net, x)
        step = bind(terms, static)
        return jax.lax.scan(lambda u, _: loss_and_step(step, state, y, u), u0, None, length=steps)

    return lambda: run(net, x, y, u0), run(net, x, y, u0)[1][-1]


def per_step_runner(make, net, x, y, u0, steps):
    """A call running `steps` jitted steps from Python, the prepared state passed in each time."""
    prepare, terms = make()
    state, static = prepare(net, x)
    step = jax.jit(lambda state, y, u: loss_and_step(bind(terms, static), state, y, u)[0])

    def run():
        u = u0
        for _ in range(steps):
            u = step(state, y, u)
        return u

    return run


def best_times(runs, repeats):
    """Min seconds of each call over `repeats` rounds, after a warm-up; rounds interleave the calls
    so that load from other processes on a shared machine hits every row alike."""
    for run in runs:
        jax.block_until_ready(run())
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            jax.block_until_ready(run())
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def machine() -> str:
    cpu = cpu_name()
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("jax", "jaxlib", "flax", "numpy")
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores, "
        f"device {jax.devices()[0].device_kind}; Python {platform.python_version()}, {versions}; "
        f"load average {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--n", type=int, default=354)
    parser.add_argument("--m", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    add_output_arguments(parser)
    args = parser.parse_args()

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    net = jn.TwoLayer.init(keys[0], d=args.d, m=args.m, dtype=jnp.float32)
    x = jax.random.normal(keys[1], (args.n, args.d), jnp.float32)
    y = jax.random.normal(keys[2], (args.n,), jnp.float32)
    u0 = 0.01 * jax.random.normal(keys[3], (args.m, args.d), jnp.float32)

    runs, finals = [], []
    for _, _, make in ROWS:
        scan_run, final = scan_runner(make, net, x, y, u0, args.steps)
        runs += [scan_run, per_step_runner(make, net, x, y, u0, args.steps)]
        finals.append(float(final))
    best = best_times(runs, args.repeats)

    lines = [
        "| order | implementation | scan (ms/step) | per-step jit (ms/step) | final loss |",
        "|---|---|---|---|---|",
    ]
    for i, (order, label, _) in enumerate(ROWS):
        ms = [f"{1e3 * t / args.steps:.2f}" for t in best[2 * i : 2 * i + 2]]
        lines.append(f"| {order} | {label} | {ms[0]} | {ms[1]} | {finals[i]:.6f} |")
    print("\n".join(lines))

    info = machine()
    print(info)
    section = [
        "",
        f"## Taylor terms: cached vs uncached ({datetime.date.today()}, "
        "benchmarks/taylor_cache.py)",
        "",
        f"Two-layer net, shifted sigmoid, d={args.d}, n={args.n}, m={args.m}, float32; "
        "gradient descent on mean((y − f_L [− f_Q])²); "
        f"min over {args.repeats} interleaved runs of {args.steps} steps after a warm-up "
        "(a shared machine: compare rows of one table, not tables). "
        f"Machine: {info}.",
        "",
        *lines,
    ]
    write_table(args.out, "taylor_cache", "\n".join(section) + "\n", args.results)


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
