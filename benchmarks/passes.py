"""Fewer passes over the n × m arrays: the regularized step with σ', σ'' stored and read otherwise.

Each implementation is the closed-form `TwoLayer` with another `prepare` / `linear_and_quadratic`
(subclasses defined here; what pays moves into jaxntk/network.py):

    float32       the library's closed form: σ', σ'' two float32 (n, m) arrays (the reference)
    bfloat16      `TwoLayer(storage="bfloat16")`: σ', σ'' stored in bfloat16, upcast where read
    stacked       σ', σ'' in one (2, n, m) array (one buffer, both read by the same fusions)
    interleaved   σ', σ'' in one (n, m, 2) array (each pair of values adjacent)
    fused_vjp     a custom VJP: the gradient's n × m factor G = a ∘ (g_L σ' + g_Q σ'' ∘ Z) in one
                  pass over the stored Z = X Uᵀ, σ', σ'' (XLA's own VJP may form more passes)
    preact        only X W0ᵀ stored; σ', σ'' recomputed from it in every pass (half the constant
                  traffic, more arithmetic)
    blocked       neurons in blocks of about 1 MB of σ' per block (σ', σ'' stored as (B, n, m/B)),
                  f_L, f_Q accumulated by `lax.scan` over the blocks: each block's Z = X U_bᵀ and
                  products stay in the core's cache instead of going through memory
    blocked_remat blocked, with the scan's body under `jax.checkpoint`: the gradient recomputes
                  each block's Z = X U_bᵀ instead of storing it (traffic down to σ', σ'' read
                  twice: the roofline's least bytes; one more X Uᵀ product)
    blocked_cols  blocked, with σ', σ'' kept as the library's (n, m) arrays: each block is a
                  column slice (rows of m/B contiguous values), so `prepare` is unchanged
    reduce        f_L, f_Q as sums over m of σ' ∘ Z ∘ a and σ'' ∘ Z² ∘ a (one reduction pass
                  each) instead of the products (σ' ∘ Z) a, (σ'' ∘ Z²) a, which XLA's CPU backend
                  runs as an elementwise pass written out and a matrix-vector product

Every implementation is first checked against the reference (f_L, f_Q and the gradient of a
regularized-like loss at a random U); then the regularized step is timed through `jaxntk.train`:
seconds per step = (min over rounds of time(T2) − min over rounds of time(T1)) / (T2 − T1), the
rounds interleaved (each round runs every implementation), after a warm-up run of each; both the
wall clock and the process's CPU time (all threads), the latter less disturbed by other jobs on
a shared machine.

    python benchmarks/passes.py [--size D N M] [--rounds 5] [--t1 20 --t2 120] [--only NAMES]
        [--traffic] [--out DIR] [--results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxntk as jn
from jaxntk.network import TwoLayer, get_activation

sys.path.insert(0, str(Path(__file__).parent))
from _machine import add_output_arguments, cpu_name, write_table

_ACT = get_activation("shifted_sigmoid")


class StackedPrepared(NamedTuple):
    """σ', σ'' in one array: axis 0 (stacked, (2, n, m)) or the last axis (interleaved)."""

    x: jax.Array
    d12: jax.Array
    f0: jax.Array

    @property
    def d1(self):  # for the good directions (jaxntk.spectral reads prep.d1)
        return self.d12[0] if self.d12.shape[0] == 2 and self.d12.ndim == 3 else self.d12[..., 0]

    @property
    def d2(self):
        return self.d12[1] if self.d12.shape[0] == 2 and self.d12.ndim == 3 else self.d12[..., 1]


class PreactPrepared(NamedTuple):
    """Only the pre-activations X W0ᵀ; σ', σ'' (shifted sigmoid) recomputed where read."""

    x: jax.Array
    pre: jax.Array
    f0: jax.Array

    @property
    def d1(self):
        return _ACT.d1(self.pre)

    @property
    def d2(self):
        return _ACT.d2(self.pre)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stacked(TwoLayer):
    def prepare(self, x, order=None):
        p = TwoLayer.prepare(self, x)
        return StackedPrepared(p.x, jnp.stack([p.d1, p.d2]), p.f0)

    def linear_and_quadratic(self, u, prep):
        z = prep.x @ u.T
        return (prep.d12[0] * z) @ self.a, 0.5 * ((prep.d12[1] * z**2) @ self.a)

    def linear_term(self, u, prep):
        return (prep.d12[0] * (prep.x @ u.T)) @ self.a


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Interleaved(TwoLayer):
    def prepare(self, x, order=None):
        p = TwoLayer.prepare(self, x)
        return StackedPrepared(p.x, jnp.stack([p.d1, p.d2], axis=-1), p.f0)

    def linear_and_quadratic(self, u, prep):
        z = prep.x @ u.T
        return (prep.d12[..., 0] * z) @ self.a, 0.5 * ((prep.d12[..., 1] * z**2) @ self.a)

    def linear_term(self, u, prep):
        return (prep.d12[..., 0] * (prep.x @ u.T)) @ self.a


@jax.custom_vjp
def _lq(x, u, d1, d2, a):
    z = x @ u.T
    return (d1 * z) @ a, 0.5 * ((d2 * z * z) @ a)


def _lq_fwd(x, u, d1, d2, a):
    z = x @ u.T
    return ((d1 * z) @ a, 0.5 * ((d2 * z * z) @ a)), (x, z, d1, d2, a)


def _lq_bwd(res, g):
    x, z, d1, d2, a = res
    gl, gq = g
    big = (gl[:, None] * d1 + gq[:, None] * (d2 * z)) * a[
        None, :
    ]  # one pass: the gradient's n × m factor
    # the constants' cotangents are never used (only U is differentiated): XLA drops them
    zeros = jnp.zeros_like
    return zeros(x), big.T @ x, zeros(d1), zeros(d2), zeros(a)


_lq.defvjp(_lq_fwd, _lq_bwd)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FusedVJP(TwoLayer):
    def linear_and_quadratic(self, u, prep):
        return _lq(prep.x, u, prep.d1, prep.d2, self.a)


class BlockedPrepared(NamedTuple):
    """σ', σ'' as (B, n, m/B): block b holds neurons b·m/B … (b + 1)·m/B − 1."""

    x: jax.Array
    d1b: jax.Array
    d2b: jax.Array
    f0: jax.Array

    @property
    def d1(self):  # (n, m), for the good directions (jaxntk.spectral reads prep.d1)
        return jnp.moveaxis(self.d1b, 0, 1).reshape(self.x.shape[0], -1)

    @property
    def d2(self):
        return jnp.moveaxis(self.d2b, 0, 1).reshape(self.x.shape[0], -1)


def blocks_for(n: int, m: int, target_bytes: int = 1 << 20) -> int:
    """The fewest blocks B dividing m whose (n, m/B) float32 block is at most `target_bytes`."""
    for b in range(1, m + 1):
        if m % b == 0 and n * (m // b) * 4 <= target_bytes:
            return b
    return m


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Blocked(TwoLayer):
    remat: bool = dataclasses.field(default=False, metadata=dict(static=True))
    block_bytes: int = dataclasses.field(default=1 << 20, metadata=dict(static=True))

    def prepare(self, x, order=None):
        p = TwoLayer.prepare(self, x)
        n, m = p.d1.shape
        nb = blocks_for(n, m, self.block_bytes)

        def split(v):  # (n, m) -> (B, n, m/B)
            return jnp.moveaxis(v.reshape(n, nb, m // nb), 1, 0)

        return BlockedPrepared(p.x, split(p.d1), split(p.d2), p.f0)

    def _scan(self, u, prep, quadratic: bool):
        nb, n, mb = prep.d1b.shape
        ub = u.reshape(nb, mb, self.d)
        ab = self.a.reshape(nb, mb)

        def body(carry, blk):
            d1, d2, u_b, a_b = blk
            z = prep.x @ u_b.T
            fl = carry[0] + (d1 * z) @ a_b
            fq = carry[1] + (d2 * z * z) @ a_b if quadratic else carry[1]
            return (fl, fq), None

        if self.remat:
            body = jax.checkpoint(body)
        zero = jnp.zeros((n,), u.dtype)
        (fl, fq), _ = jax.lax.scan(body, (zero, zero), (prep.d1b, prep.d2b, ub, ab))
        return fl, 0.5 * fq

    def linear_and_quadratic(self, u, prep):
        return self._scan(u, prep, True)

    def linear_term(self, u, prep):
        return self._scan(u, prep, False)[0]

    def quadratic_term(self, u, prep):
        return self._scan(u, prep, True)[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockedCols(Blocked):
    """Blocked over the library's (n, m) σ', σ'': each block a column slice."""

    def prepare(self, x, order=None):
        return TwoLayer.prepare(self, x)

    def _scan(self, u, prep, quadratic: bool):
        n, m = prep.d1.shape
        nb = blocks_for(n, m, self.block_bytes)
        mb = m // nb
        ub = u.reshape(nb, mb, self.d)
        ab = self.a.reshape(nb, mb)

        def body(carry, blk):
            b, u_b, a_b = blk
            d1 = jax.lax.dynamic_slice_in_dim(prep.d1, b * mb, mb, axis=1)
            z = prep.x @ u_b.T
            fl = carry[0] + (d1 * z) @ a_b
            if quadratic:
                d2 = jax.lax.dynamic_slice_in_dim(prep.d2, b * mb, mb, axis=1)
                fq = carry[1] + (d2 * z * z) @ a_b
            else:
                fq = carry[1]
            return (fl, fq), None

        zero = jnp.zeros((n,), u.dtype)
        (fl, fq), _ = jax.lax.scan(body, (zero, zero), (jnp.arange(nb), ub, ab))
        return fl, 0.5 * fq


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Reduce(TwoLayer):
    """f_L, f_Q as reductions over m (multiply and sum in one fusion) instead of products with
    a: XLA's CPU backend otherwise writes σ' ∘ Z and σ'' ∘ Z² out and reads them back in a
    matrix-vector product."""

    def linear_and_quadratic(self, u, prep):
        z = prep.x @ u.T
        a = self.a[None, :]
        return jnp.sum(prep.d1 * z * a, axis=1), 0.5 * jnp.sum(prep.d2 * z * z * a, axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Preact(TwoLayer):
    def prepare(self, x, order=None):
        p = TwoLayer.prepare(self, x)
        return PreactPrepared(p.x, p.x @ self.w0.T, p.f0)

    def linear_and_quadratic(self, u, prep):
        z = prep.x @ u.T
        s = jax.nn.sigmoid(prep.pre - 1.0)
        d1 = s * (1.0 - s)
        return (d1 * z) @ self.a, 0.5 * ((d1 * (1.0 - 2.0 * s) * z**2) @ self.a)

    def linear_term(self, u, prep):
        return (prep.d1 * (prep.x @ u.T)) @ self.a


IMPLEMENTATIONS = {
    "float32": lambda net: net,
    "bfloat16": lambda net: dataclasses.replace(net, storage="bfloat16"),
    "stacked": lambda net: Stacked(net.w0, net.a, net.activation),
    "interleaved": lambda net: Interleaved(net.w0, net.a, net.activation),
    "fused_vjp": lambda net: FusedVJP(net.w0, net.a, net.activation),
    "preact": lambda net: Preact(net.w0, net.a, net.activation),
    "reduce": lambda net: Reduce(net.w0, net.a, net.activation),
    "blocked": lambda net: Blocked(net.w0, net.a, net.activation),
    "blocked_cols": lambda net: BlockedCols(net.w0, net.a, net.activation),
    "blocked_remat": lambda net: Blocked(net.w0, net.a, net.activation, remat=True),
}


def check(model, ref, x, y, u) -> float:
    """Largest relative difference of (f_L, f_Q, ∇_U loss) between `model` and `ref` at U = u."""

    def loss(net, u):
        prep = net.prepare(x)
        fl, fq = net.linear_and_quadratic(u, prep)
        return jnp.mean((y - fl - fq) ** 2) + jnp.mean(fl**2)

    out = []
    for net in (model, ref):
        prep = net.prepare(x)
        out.append((*net.linear_and_quadratic(u, prep), jax.grad(loss, argnums=1)(net, u)))
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(out[0], out[1], strict=True)
    )


def nm_traffic(model, x, y) -> tuple[int, int]:
    """(reads, writes) of n × m float arrays in the compiled step of f_L + f_Q with a bulk-like
    penalty (one gradient step), counted on XLA's optimized HLO: each instruction of the entry
    computation that writes an n × m array counts one write, each n × m operand one read (a
    (2, n, m) or (n, m, 2) array two); a bfloat16 array counts half."""
    import re

    n, m = x.shape[0], model.m
    prep = model.prepare(x)

    def step(u, prep, model, y):
        def loss(u):
            fl, fq = model.linear_and_quadratic(u, prep)
            return jnp.mean((y - fl - fq) ** 2) + jnp.mean(fl**2)

        return u - jax.grad(loss)(u)

    text = jax.jit(step).lower(model.zeros(), prep, model, y).compile().as_text()
    entry = text[text.index("ENTRY") :].splitlines()[1:]
    pattern = re.compile(r"%(\S+) = (\w+)\[([\d,]*)\]")
    sizes, reads, writes = {}, 0.0, 0.0
    for line in entry:
        found = pattern.search(line)
        if not found:
            continue
        name, dtype, dims = found.groups()
        shape = tuple(int(v) for v in dims.split(",") if v)
        size = int(np.prod(shape))
        count = size / (n * m) if size in (n * m, 2 * n * m) else 0
        weight = count * (0.5 if dtype == "bf16" else 1.0)
        sizes[name] = weight
        if " parameter(" in line or "bitcast(" in line:
            continue
        writes += weight
        operands = re.findall(r"%(\S+?)[,)]", line.split("=", 1)[1].split("(", 1)[1])
        reads += sum(sizes.get(op, 0.0) for op in operands)
    return reads, writes


def run(d, n, m, *, names, rounds, t1, t2, variant="regularized") -> list[dict]:
    """Seconds per step of `variant` for each implementation, rounds interleaved."""
    task = jn.paper_task(jax.random.PRNGKey(0), d=d, n=n, n_test=n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=d, m=m)
    models = {name: IMPLEMENTATIONS[name](net) for name in names}
    u = 0.1 / np.sqrt(d) * jax.random.normal(jax.random.PRNGKey(2), (m, d))
    errors = {
        name: check(model, net, task.x_train, task.y_train, u) for name, model in models.items()
    }
    traffic = {
        name: nm_traffic(model, task.x_train, task.y_train) for name, model in models.items()
    }
    kw = dict(eval_every=t2 - t1, evals_per_chunk=1, progress=False)

    def timed(model, steps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(jn.train(model, task, variant, steps=steps, **kw).params)
        return np.array([time.perf_counter() - t0, time.process_time() - c0])

    for model in models.values():  # compile (one program serves T1 and T2)
        timed(model, t1)
    short = {name: [] for name in models}
    long = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            short[name].append(timed(model, t1))
            long[name].append(timed(model, t2))

    def per_step(name):  # (wall, CPU) seconds per step, each from its own minima
        return (np.min(long[name], axis=0) - np.min(short[name], axis=0)) / (t2 - t1)

    ref = per_step(names[0])
    rows = []
    for name in models:
        wall, cpu = per_step(name)
        rows.append(
            {
                "implementation": name,
                "d": d,
                "n": n,
                "m": m,
                "ms_per_step": wall * 1e3,
                "vs_float32": wall / ref[0],
                "cpu_ms_per_step": cpu * 1e3,
                "cpu_vs_float32": cpu / ref[1],
                "max_rel_diff_vs_float32": errors[name],
                "nm_reads": traffic[name][0],
                "nm_writes": traffic[name][1],
            }
        )
        print(
            f"{name:<12} {wall * 1e3:8.3f} ms/step  {wall / ref[0]:.3f}×   CPU {cpu * 1e3:8.3f} "
            f"ms/step  {cpu / ref[1]:.3f}×  rel diff {errors[name]:.1e}  n×m reads "
            f"{traffic[name][0]:g}, writes {traffic[name][1]:g}",
            flush=True,
        )
    return rows


def _traffic_table(args, names) -> dict:
    d, n, m = args.size
    task = jn.paper_task(jax.random.PRNGKey(0), d=d, n=n, n_test=n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=d, m=m)
    rows = []
    for name in names:
        reads, writes = nm_traffic(IMPLEMENTATIONS[name](net), task.x_train, task.y_train)
        rows.append({"implementation": name, "nm_reads": reads, "nm_writes": writes})
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"\n## n × m arrays a compiled step moves (benchmarks/passes.py --traffic, {when})\n",
        f"d={d}, n={n}, m={m}; one step of f_L + f_Q with a bulk-like penalty, XLA's optimized HLO "
        f"on {jax.default_backend()} (jax {jax.__version__}): n × m arrays read and written by "
        "the entry computation's instructions (bfloat16 counted as half). The least-bytes model "
        "of the roofline counts 4 (σ' and σ'' read in the forward and the gradient pass).\n",
        "| implementation | read | written | total | of the least (4) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["nm_reads"] + r["nm_writes"]
        lines.append(
            f"| {r['implementation']} | {r['nm_reads']:g} | {r['nm_writes']:g} | {total:g} | "
            f"{total / 4:.2f}× |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    write_table(args.out, "traffic", text, args.results)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=3, default=(50, 354, 4000), metavar=("D", "N", "M"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--t1", type=int, default=20)
    p.add_argument("--t2", type=int, default=120)
    p.add_argument("--only", default=",".join(IMPLEMENTATIONS), help="comma-separated names")
    p.add_argument(
        "--traffic",
        action="store_true",
        help="only count the n × m arrays each compiled step reads and writes (nothing timed)",
    )
    add_output_arguments(p)
    args = p.parse_args(argv)
    names = [s.strip() for s in args.only.split(",")]
    bad = [s for s in names if s not in IMPLEMENTATIONS]
    if bad or not names:
        p.error(f"--only: unknown {bad}; choose from {list(IMPLEMENTATIONS)}")
    if args.traffic:
        return _traffic_table(args, names)
    load_before = os.getloadavg()
    rows = run(*args.size, names=names, rounds=args.rounds, t1=args.t1, t2=args.t2)
    doc = {
        "rows": rows,
        "size": list(args.size),
        "rounds": args.rounds,
        "t1": args.t1,
        "t2": args.t2,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {jax.default_backend()}",
        "jax": jax.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "passes.json").write_text(json.dumps(doc, indent=1))
    d, n, m = args.size
    lines = [
        f"\n## Fewer passes over the n × m arrays (benchmarks/passes.py, {doc['when']})\n",
        f"Regularized step through `jaxntk.train`, d={d}, n={n}, m={m}; min over {args.rounds} "
        f"interleaved rounds of (T={args.t2}) − (T={args.t1}) steps. {doc['machine']}, jax "
        f"{doc['jax']}; load average {load_before[0]:.1f} before, "
        f"{doc['load_average_after'][0]:.1f} after.\n",
        "| implementation | ms / step | vs float32 | CPU ms / step | vs float32 (CPU) "
        "| max rel. diff (f_L, f_Q, ∇) | n × m arrays read, written (HLO) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['implementation']} | {r['ms_per_step']:.3g} | {r['vs_float32']:.3f} | "
            f"{r['cpu_ms_per_step']:.3g} | {r['cpu_vs_float32']:.3f} | "
            f"{r['max_rel_diff_vs_float32']:.1e} | {r['nm_reads']:g}, {r['nm_writes']:g} |"
        )
    write_table(args.out, "passes", "\n".join(lines) + "\n", args.results)
    return doc


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
