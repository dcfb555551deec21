"""The embedding table of a transformer: read by index equality ("lookup") or by its Jacobian.

The transformer of benchmarks/ntk_speed.py (flax: nn.Embed(V, 64) + learned positions over 16
tokens, one pre-LayerNorm block of 2-head self-attention and an MLP of 256, mean pool, Dense(10))
for vocabularies V = 64 ... 32 768; its traced kernel K(x, x) on n uniform tokens by
`jaxntk.ntk.empirical_ntk(..., method="structured")` twice in one process: as the engine runs it
(the table a "lookup" rule where that is the cheaper, `jaxntk._structured`), and with the lookup
rule switched off, so that the table falls back to its per-example Jacobian (|O|·V·64 entries an
example), as before the rule existed. Seconds: best of --repeats after a compile call; feature
bytes of one example from the structured plan's cost; the two kernels' largest difference.

    python benchmarks/embedding_lookup.py --out DIR [--n 128] [--vocabs 64 1024 8192 32768]
        [--repeats 2] [--results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import add_output_arguments, cpu_name, write_table  # noqa: E402


def measure(vocab: int, n: int, repeats: int, lookup: bool) -> dict:
    import _ntk_runs as runs
    import jax

    from jaxntk import _structured, ntk

    module = runs.transformer_module(vocab, 16, 64, 2, 256, 10)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (n, 16), 0, vocab)
    variables = module.init(jax.random.PRNGKey(0), tokens[:1])
    original = _structured._is_lookup
    if not lookup:
        _structured._is_lookup = lambda eqn: False
    try:

        def apply_fn(p, x):  # a new function per measurement: no choice kept from another
            return module.apply(p, x)

        choice = ntk.choose_method(apply_fn, variables, tokens, method="structured")
        plan = _structured.make_plan(
            jax.tree_util.Partial(apply_fn), variables, tokens[:1], (1,), ()
        )

        def call():
            return ntk.empirical_ntk(apply_fn, variables, tokens, method="structured")

        kernel = jax.block_until_ready(call())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times.append(time.perf_counter() - t0)
    finally:
        _structured._is_lookup = original
    cost = _structured.cost(plan, (1,), ())
    return {
        "seconds": min(times),
        "feature_bytes_per_example": cost.feature_bytes_per_example,
        "batch_size": choice.batch_size,
        "resident": choice.resident,
        "lookups": sum(r.form == "lookup" for r in plan.rules),
        "kernel": np.asarray(kernel),
    }


def markdown(doc: dict) -> str:
    lines = [
        f"\n## The embedding table by index equality (benchmarks/embedding_lookup.py, "
        f"{doc['when']})\n",
        f"The transformer of ntk_speed.py with vocabulary V, traced K(x, x) on n = {doc['n']} "
        f"token sequences of 16, method structured, float32, best of {doc['repeats']}; the "
        f"table read by index equality (lookup) or falling back to its Jacobian. "
        f"{doc['machine']}, jax {doc['jax']}.\n",
        "| V | lookup s | fallback s | fallback / lookup | MB an example, lookup | MB, fallback "
        "| max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        look, back = row["lookup"], row["fallback"]
        lines.append(
            f"| {row['vocab']} | {look['seconds']:.3g} | {back['seconds']:.3g} | "
            f"{back['seconds'] / look['seconds']:.1f} | "
            f"{look['feature_bytes_per_example'] / 1e6:.2f} | "
            f"{back['feature_bytes_per_example'] / 1e6:.2f} | {row['rel_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--vocabs", type=int, nargs="+", default=[64, 1024, 8192, 32768])
    p.add_argument("--repeats", type=int, default=2)
    add_output_arguments(p)
    args = p.parse_args(argv)
    import jax

    import jaxntk  # noqa: F401  (its host settings before any array)

    rows = []
    for vocab in args.vocabs:
        look = measure(vocab, args.n, args.repeats, lookup=True)
        back = measure(vocab, args.n, args.repeats, lookup=False)
        k1, k2 = look.pop("kernel"), back.pop("kernel")
        diff = float(np.max(np.abs(k1 - k2)) / np.max(np.abs(k2)))
        rows.append({"vocab": vocab, "lookup": look, "fallback": back, "rel_diff": diff})
        print(json.dumps(rows[-1]), flush=True)
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": cpu_name(),
        "jax": jax.__version__,
        "n": args.n,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embedding_lookup.json").write_text(json.dumps(doc, indent=1))
    table = markdown(doc)
    print(table)
    write_table(args.out, "embedding_lookup", table, args.results)
    return doc


if __name__ == "__main__":
    main()
