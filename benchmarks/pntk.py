"""The pseudo-NTK against the traced empirical NTK on MNIST-1D: time, distance, kernel regression.

The pseudo-NTK (Mohamadi, Bae & Sutherland, ICML 2023) is the NTK of f̃ = (1/√c) Σ_a f_a, one
scalar output: `jaxntk.ntk.pseudo_ntk`. It is compared here with the traced NTK
(1/c) Σ_a ⟨∇f_a, ∇f_a⟩, `jaxntk.ntk.empirical_ntk(..., trace_axes=(-1,))`, on the MNIST-1D CNN
of benchmarks/predict_speed.py (flax ConvBase: Conv 25 channels kernel 5 stride 2, two Conv 25
kernel 3 stride 2, relu, Dense(10); 5210 parameters at PRNGKey(0)) and mnist1d's data (n
training and --n-test test inputs, (·, 40, 1)):

- time: each kernel over all n + n_test inputs in one call (symmetric), one warm-up call (it
  compiles) then the best of --repeats calls, each ended by block_until_ready; the peak resident
  memory above the process's before the calls (the high-water mark reset before each kernel);
- distance: ‖K_p − K_tr‖_F / ‖K_tr‖_F over the whole (n + n_test)² kernel;
- kernel regression at t = ∞ with a ridge, on one-hot targets y: α = (K + ρI)⁻¹ y, predictions
  K(x_test, X) α, accuracy of the argmax (the network's initial outputs are not added: the mean
  predictor of the linearized network from f0 = 0). ρ = r × the mean of the training kernel's
  diagonal, r from --ridges chosen by accuracy on a validation split (the last
  --val-fraction of the training inputs, fitted on the rest), then fitted on all n: each kernel
  its own r. Solves in float64 (numpy).

Writes pntk.json and pntk.md to --out (and with --save-kernels, kernels.npz); --results appends
the table to benchmarks/RESULTS.md.

    python benchmarks/pntk.py --out DIR [--n 4000] [--n-test 1000] [--repeats 2] [--results]
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
from predict_speed import flax_cnn  # noqa: E402  (MNIST-1D's ConvBase, the same model)

RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ρ / mean diag(K_train)
CLASSES = 10


def make_data(n: int, n_test: int):
    """(x (n, 40, 1), labels (n,), x_test, labels_test) from mnist1d's make_dataset (its default
    arguments and seed), float32."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split = n + n_test, n / (n + n_test)
    data = make_dataset(args)
    inputs = np.concatenate([data["x"], data["x_test"]])[:, :, None].astype(np.float32)
    labels = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return inputs[:n], labels[:n], inputs[n : n + n_test], labels[n : n + n_test]


def timed(call, repeats: int) -> dict:
    """The kernel, its first call's seconds, the best of `repeats` more, and the peak resident
    memory above the process's before them (the high-water mark reset first)."""
    import jax
    from _ntk_runs import reset_peak_rss, rss_bytes

    before = rss_bytes("VmRSS")
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    kernel = jax.block_until_ready(call())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    peak = rss_bytes("VmHWM") if reset else None
    return {
        "kernel": np.asarray(kernel, np.float64),
        "first_seconds": first,
        "seconds": min(times) if times else first,
        "times": times,
        "peak_rss_increase_bytes": None if peak is None or before is None else peak - before,
    }


def kernel_regression(k: np.ndarray, labels: np.ndarray, n: int, val: int, ridges) -> dict:
    """Ridge regression on the one-hot targets with kernel k over (training, then test) inputs:
    r chosen on the validation split (the last `val` of the n training inputs), then fitted on
    all n; accuracies of the argmax."""
    y = np.eye(CLASSES)[labels[:n]]
    fit = n - val
    scale = float(np.mean(np.diag(k)[:n]))

    def predict(rows, cols, r):
        alpha = np.linalg.solve(k[:cols, :cols] + r * scale * np.eye(cols), y[:cols])
        return k[rows][:, :cols] @ alpha

    scores = {}
    for r in ridges:
        scores[r] = float(np.mean(predict(np.arange(fit, n), fit, r).argmax(1) == labels[fit:n]))
    best = max(ridges, key=lambda r: (scores[r], r))  # ties: the larger ridge
    test = np.arange(n, k.shape[0])
    accuracy = float(np.mean(predict(test, n, best).argmax(1) == labels[n:]))
    return {
        "ridge_relative": best,
        "ridge": best * scale,
        "validation_accuracy": scores[best],
        "validation_by_ridge": {str(r): a for r, a in scores.items()},
        "test_accuracy": accuracy,
    }


def run(args) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxntk  # noqa: F401  (its host settings before any array, as a user's script)
    from jaxntk import ntk

    t_start = time.perf_counter()
    x, labels, x_test, labels_test = make_data(args.n, args.n_test)
    module = flax_cnn()
    params = module.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]))
    inputs = jnp.asarray(np.concatenate([x, x_test]))
    all_labels = np.concatenate([labels, labels_test])
    val = max(1, round(args.val_fraction * args.n))
    rows = {}
    for name, fn, kwargs in (
        ("traced NTK", ntk.empirical_ntk, {"trace_axes": (-1,)}),
        ("pNTK", ntk.pseudo_ntk, {}),
    ):
        choice = ntk.choose_method(
            module.apply if name == "traced NTK" else ntk._SummedOutputs(module.apply, CLASSES),
            params,
            inputs,
            trace_axes=kwargs.get("trace_axes", ()),
        )
        row = timed(
            lambda fn=fn, kwargs=kwargs: fn(module.apply, params, inputs, **kwargs), args.repeats
        )
        row["method"] = choice.method
        row["reason"] = choice.reason
        row |= kernel_regression(row["kernel"], all_labels, args.n, val, args.ridges)
        rows[name] = row
        print(
            f"{name}: {row['seconds']:.3g} s, test accuracy {row['test_accuracy']:.3f}", flush=True
        )
    k_tr, k_p = rows["traced NTK"]["kernel"], rows["pNTK"]["kernel"]
    distance = float(np.linalg.norm(k_p - k_tr) / np.linalg.norm(k_tr))
    if args.save_kernels:
        np.savez(
            args.out / "kernels.npz", traced=k_tr, pntk=k_p, x=np.asarray(inputs), labels=all_labels
        )
    for row in rows.values():
        row.pop("kernel")
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": cpu_name(),
        "jax": jax.__version__,
        "n": args.n,
        "n_test": args.n_test,
        "validation": val,
        "repeats": args.repeats,
        "parameters": int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))),
        "kernels": rows,
        "relative_frobenius": distance,
        "time_ratio": rows["pNTK"]["seconds"] / rows["traced NTK"]["seconds"],
        "accuracy_change": rows["pNTK"]["test_accuracy"] - rows["traced NTK"]["test_accuracy"],
        "total_seconds": time.perf_counter() - t_start,
    }


def markdown(doc: dict) -> str:
    n, n_test = doc["n"], doc["n_test"]
    lines = [
        f"\n## pNTK against the traced NTK on MNIST-1D (benchmarks/pntk.py, {doc['when']})\n",
        f"MNIST-1D ConvBase (flax, {doc['parameters']} parameters, 10 outputs) at PRNGKey(0); "
        f"n = {n} training and {n_test} test inputs (mnist1d's make_dataset), float32 kernels "
        f"over all {n + n_test} inputs, one call each; seconds: best of {doc['repeats']} after a "
        f"warm-up call. Kernel regression at t = ∞: (K + ρI)⁻¹ y on one-hot targets, ρ = r × "
        f"mean diag(K_train), r chosen on the last {doc['validation']} training inputs (fitted "
        f"on the rest), float64. {doc['machine']}, jax {doc['jax']}; total "
        f"{doc['total_seconds'] / 60:.1f} min.\n",
        "| kernel | method | seconds | first call | peak MiB | ‖K − K_tr‖/‖K_tr‖ | r | "
        "validation acc. | test acc. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in doc["kernels"].items():
        peak = row["peak_rss_increase_bytes"]
        distance = 0.0 if name == "traced NTK" else doc["relative_frobenius"]
        lines.append(
            f"| {name} | {row['method']} | {row['seconds']:.3g} | {row['first_seconds']:.3g} | "
            f"{'—' if peak is None else f'{peak / 2**20:.0f}'} | {distance:.3g} | "
            f"{row['ridge_relative']:g} | {row['validation_accuracy']:.3f} | "
            f"{row['test_accuracy']:.3f} |"
        )
    lines += [
        "",
        f"pNTK / traced time: {doc['time_ratio']:.3f}; test accuracy change (pNTK − traced): "
        f"{100 * doc['accuracy_change']:+.1f} points.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000, help="training inputs")
    p.add_argument("--n-test", type=int, default=1000, help="test inputs")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--ridges", type=float, nargs="+", default=list(RIDGES))
    p.add_argument("--save-kernels", action="store_true", help="also write DIR/kernels.npz")
    add_output_arguments(p)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = run(args)
    (args.out / "pntk.json").write_text(json.dumps(doc, indent=1))
    table = markdown(doc)
    print(table)
    write_table(args.out, "pntk", table, args.results)
    return doc


if __name__ == "__main__":
    main()
