"""Time of all Taylor terms up to order k, k = 1…K: Taylor mode (`jax.experimental.jet`) against
nested jvps, on the same models in one run.

For each model and order, `jaxntk.taylor_terms(apply_fn, params0, delta, x, order=k, method=...)`
is jitted with every array an argument, run once to compile, then timed as the minimum over
`--repeats` runs ending in `block_until_ready`. Writes `taylor_orders.json` and a Markdown table to
`--out`; `--results` also appends the table to benchmarks/RESULTS.md.

    python benchmarks/taylor_orders.py --out results/bench [--max-order 6] [--results]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from _machine import add_output_arguments, cpu_name, write_table

import jaxntk as jn


class CNN(nn.Module):
    """A small CNN on 8×8 images with 10 outputs (the size of the digits data)."""

    channels: int = 16

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(self.channels, (3, 3))(x))
        x = nn.gelu(nn.Conv(self.channels, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def models(size: str):
    """(name, apply_fn, params0, delta, x) for the two-layer network and the CNN."""
    key = jax.random.PRNGKey(0)
    d, n, m = {"full": (50, 354, 4000), "tiny": (5, 8, 16)}[size]
    net = jn.TwoLayer.init(key, d=d, m=m)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, d))
    u = 0.1 * jax.random.normal(jax.random.PRNGKey(2), (m, d)) / math.sqrt(d)
    yield f"two-layer d={d} n={n} m={m}", net.apply_fn, net.w0, u, x
    n_img, channels = {"full": (256, 16), "tiny": (4, 2)}[size]
    cnn = CNN(channels)
    xi = jax.random.normal(jax.random.PRNGKey(3), (n_img, 8, 8, 1))
    p0 = cnn.init(key, xi)
    delta = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), p0)
    yield f"CNN {channels} ch, n={n_img}, 10 outputs", cnn.apply, p0, delta, xi


def hlo_ops(fn, *args) -> list[int]:
    """Instructions of the program as traced and after XLA's optimizations (CSE, fusion)."""
    lowered = fn.lower(*args)
    traced = sum(1 for line in lowered.as_text().splitlines() if " = " in line)
    optimized = sum(1 for line in lowered.compile().as_text().splitlines() if " = " in line)
    return [traced, optimized]


def seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def run(size: str = "full", max_order: int = 6, repeats: int = 5) -> dict:
    rows = []
    for name, apply_fn, p0, delta, x in models(size):
        for k in range(1, max_order + 1):
            row = {"model": name, "order": k}
            for method in ("jet", "jvp"):
                fn = jax.jit(
                    lambda p, dl, xx, f=apply_fn, k=k, method=method: jn.taylor_terms(
                        f, p, dl, xx, order=k, method=method
                    )
                )
                t0 = time.perf_counter()
                row[f"{method}_ops"] = hlo_ops(fn, p0, delta, x)
                row[f"{method}_compile"] = time.perf_counter() - t0
                row[method] = seconds(fn, p0, delta, x, repeats=repeats)
            row["jet/jvp"] = row["jet"] / row["jvp"]
            rows.append(row)
            print(
                f"{name:34s} k={k}  jet {row['jet'] * 1e3:8.2f} ms  nested jvp "
                f"{row['jvp'] * 1e3:8.2f} ms  ratio {row['jet/jvp']:.2f}  ops "
                f"{row['jet_ops']} / {row['jvp_ops']}",
                flush=True,
            )
    return {
        "machine": cpu_name(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "repeats": repeats,
        "rows": rows,
    }


def table(doc: dict) -> str:
    lines = [
        f"## Taylor terms up to order k: Taylor mode against nested jvps "
        f"(benchmarks/taylor_orders.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{doc['machine']}, jax {doc['jax']}, float32, min of {doc['repeats']} runs after "
        "compilation; all terms f_0…f_k of `jn.taylor_terms` in one jitted call.",
        "",
        "Ops: instructions of the program as traced → after XLA's optimizations; compile: "
        "lowering and compiling once.",
        "",
        "| model | k | Taylor mode | nested jvps | Taylor / nested | ops, Taylor | ops, nested "
        "| compile, Taylor | compile, nested |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['model']} | {r['order']} | {r['jet'] * 1e3:.2f} ms | {r['jvp'] * 1e3:.2f} ms "
            f"| {r['jet/jvp']:.2f} | {r['jet_ops'][0]} → {r['jet_ops'][1]} "
            f"| {r['jvp_ops'][0]} → {r['jvp_ops'][1]} | {r['jet_compile']:.2f} s "
            f"| {r['jvp_compile']:.2f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--max-order", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    add_output_arguments(p)
    args = p.parse_args(argv)
    if args.max_order < 1 or args.repeats < 1:
        p.error("--max-order and --repeats must be ≥ 1")
    doc = run(args.size, args.max_order, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "taylor_orders.json").write_text(json.dumps(doc, indent=1))
    write_table(args.out, "taylor_orders", table(doc), args.results)
    return doc


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
