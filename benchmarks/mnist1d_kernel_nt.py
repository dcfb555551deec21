"""The MNIST-1D experiment's kernel-regression row on jaxntk's kernel and on neural-tangents'.

`jaxntk reproduce --only mnist1d`'s kernel section regresses on the CNN's traced NTK at θ0
(`jaxntk.experiments._mnist1d.kernel_regression`: t = ∞, the ridge chosen on the validation
split). This script runs that row at one seed and n = 4000 twice, with the kernel from
`jaxntk.empirical_ntk` and with the kernel from neural-tangents 0.6.5's
`empirical_ntk_fn(trace_axes=(-1,), implementation=1)` on the same network, written in lax
(checked equal to the flax module on the same inputs), in a virtual environment of its own
(--nt-venv, or --build-nt-venv as benchmarks/ntk_speed.py builds it). Both go through the same
ridge choice and solve (`_mnist1d.ridge_fit`, float64 NumPy), and neural-tangents' own predictor
(`predict.gradient_descent_mse` at t = None, the ridge jaxntk chose) runs on its kernel too.

Reported: the test accuracy of each, their difference, the chosen ridges, the kernels' relative
Frobenius difference, and each kernel's seconds (one call after a compiling one). Usage:

    python benchmarks/mnist1d_kernel_nt.py --out DIR (--nt-venv PATH | --build-nt-venv)
        [--n 4000] [--seed 0] [--results]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict_speed import flatten, unflatten  # noqa: E402  (numpy only at import)

N_TEST = 1000


def cnn_apply(params, x, channels: int = 25):
    """`jaxntk.experiments._mnist1d.CNN1D` (gelu) in lax: what neural-tangents' side runs."""
    import jax
    from jax import lax

    p = params["params"]
    h = x.reshape(x.shape[0], -1, 1)
    for i in range(3):
        conv = p[f"Conv_{i}"]
        h = lax.conv_general_dilated(
            h, conv["kernel"], (2,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC")
        )
        h = jax.nn.gelu(h + conv["bias"][None, None, :], approximate=True)
    dense = p["Dense_0"]
    return h.reshape(h.shape[0], -1) @ dense["kernel"] + dense["bias"][None, :]


def _timed(call):
    """(result, seconds of a call after a first, compiling one)."""
    import jax

    jax.block_until_ready(call())
    t0 = time.perf_counter()
    result = jax.block_until_ready(call())
    return result, time.perf_counter() - t0


def jaxntk_side(out: Path, n: int, seed: int, n_test: int = N_TEST) -> dict:
    """The experiment's kernel row on jaxntk's kernel; writes out/inputs.npz for the peer."""
    import jax
    import jax.numpy as jnp

    from jaxntk import ntk
    from jaxntk.experiments import _mnist1d as m
    from jaxntk.experiments.mnist1d import PRESETS, _task
    from jaxntk.minibatch import Minibatch

    config = PRESETS["cpu"]
    task = _task(n, n_test, "mse")
    module = m.network("cnn", config.channels, config.activation)
    params = module.init(jax.random.PRNGKey(seed), task.x_train[:1])
    x_all = jnp.concatenate([task.x_train, task.x_test])
    kernel, seconds = _timed(
        lambda: ntk.empirical_ntk(module.apply, params, x_all, x_all[:n], trace_axes=(-1,))
    )
    # the experiment's ridge choice and solve (`kernel_regression` after its kernel), on the
    # timed kernel: the peer's kernel goes through the same call in `compare`
    fit_rows, val_rows = Minibatch(1, 1, validation=config.validation, split_seed=0).split(n)
    kernel = np.asarray(kernel)
    f0 = m.outputs(module.apply, params, x_all)
    y, y_test = np.asarray(task.y_train), np.asarray(task.y_test)
    row = m.ridge_fit(
        kernel[:n], kernel[n:], f0[:n], f0[n:], y, y_test, config.ridges, fit_rows, val_rows
    )
    lax_gap = float(np.max(np.abs(np.asarray(cnn_apply(params, x_all[:256])) - f0[:256])))
    np.savez(
        out / "inputs.npz",
        x=np.asarray(x_all),
        f0=f0,
        n=n,
        ridge=row["ridge"],
        **{f"params/{k}": v for k, v in flatten(params).items()},
    )
    np.save(out / "kernel-jaxntk.npy", kernel)
    np.savez(
        out / "split.npz",
        fit=fit_rows,
        val=val_rows,
        y_train=y,
        y_test=y_test,
    )
    return {
        "test_accuracy": row["test_accuracy"],
        "test_mse": row["test_mse"],
        "ridge_relative": row["ridge_relative"],
        "ridge": row["ridge"],
        "kernel_seconds": seconds,
        "lax_vs_flax_max_abs": lax_gap,
        "ridges": list(config.ridges),
        "n_test": n_test,
    }


def nt_side(out: Path) -> dict:
    """neural-tangents' traced kernel on the same inputs, and its predictor at jaxntk's ridge."""
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt

    with np.load(out / "inputs.npz") as data:
        params = jax.tree.map(jnp.asarray, unflatten(data))
        x, f0, n, ridge = jnp.asarray(data["x"]), data["f0"], int(data["n"]), float(data["ridge"])
    gap = float(np.max(np.abs(np.asarray(cnn_apply(params, x[:256])) - f0[:256])))
    fn = jax.jit(nt.empirical_ntk_fn(cnn_apply, trace_axes=(-1,), vmap_axes=0, implementation=1))
    kernel, seconds = _timed(lambda: fn(x, x[:n], params))
    kernel = np.asarray(kernel)
    np.save(out / "kernel-nt.npy", kernel)
    with np.load(out / "split.npz") as split:
        y = jnp.asarray(split["y_train"])
    predict = nt.predict.gradient_descent_mse(
        jnp.asarray(kernel[:n]), y, diag_reg=ridge, diag_reg_absolute_scale=True
    )
    f0 = jnp.asarray(f0)
    _, test = predict(None, f0[:n], f0[n:], jnp.asarray(kernel[n:]))
    np.save(out / "nt-predict-test.npy", np.asarray(test))
    return {"kernel_seconds": seconds, "flax_vs_lax_max_abs": gap, "jax": jax.__version__}


def compare(out: Path, jx: dict, peer: dict) -> dict:
    """The same ridge choice and solve on neural-tangents' kernel; the differences."""
    from jaxntk.experiments import _mnist1d as m

    with np.load(out / "inputs.npz") as data:
        f0, n = data["f0"], int(data["n"])
    k_j = np.load(out / "kernel-jaxntk.npy")
    k_nt = np.load(out / "kernel-nt.npy")
    with np.load(out / "split.npz") as split:
        fit_rows, val_rows, y, y_test = (split[k] for k in ("fit", "val", "y_train", "y_test"))
    row = m.ridge_fit(
        k_nt[:n], k_nt[n:], f0[:n], f0[n:], y, y_test, jx["ridges"], fit_rows, val_rows
    )
    nt_pred = np.load(out / "nt-predict-test.npy")
    nt_own = float(np.mean(m.labels_of(nt_pred) == m.labels_of(y_test)))
    diff = np.linalg.norm(k_nt.astype(np.float64) - k_j) / np.linalg.norm(k_j.astype(np.float64))
    return {
        "n": n,
        "jaxntk": jx,
        "nt": {
            **peer,
            "test_accuracy": row["test_accuracy"],
            "test_mse": row["test_mse"],
            "ridge_relative": row["ridge_relative"],
            "own_predictor_accuracy": nt_own,
        },
        "accuracy_difference": abs(row["test_accuracy"] - jx["test_accuracy"]),
        "kernel_relative_difference": float(diff),
    }


def report(summary: dict) -> str:
    jx, peer = summary["jaxntk"], summary["nt"]
    return "\n".join(
        [
            f"\n## MNIST-1D kernel regression on jaxntk's and neural-tangents' kernels "
            f"({summary['when']}, {summary['machine']})\n",
            f"CNN (gelu, 25 channels) at θ0 of seed {summary['seed']}, n = {summary['n']}, "
            f"{jx['n_test']} test signals, traced NTK, ridge chosen on the validation split.\n",
            "| kernel | test accuracy | chosen ridge (× mean diag) | kernel seconds |",
            "|---|---|---|---|",
            f"| jaxntk | {jx['test_accuracy']:.2%} | {jx['ridge_relative']:g} "
            f"| {jx['kernel_seconds']:.2f} |",
            f"| neural-tangents impl 1 | {peer['test_accuracy']:.2%} | "
            f"{peer['ridge_relative']:g} | {peer['kernel_seconds']:.2f} |",
            "",
            f"- accuracy difference: {summary['accuracy_difference']:.2%}; neural-tangents' own "
            f"predictor at jaxntk's ridge: {peer['own_predictor_accuracy']:.2%}",
            "- kernels' relative Frobenius difference: "
            f"{summary['kernel_relative_difference']:.2e}",
            "",
        ]
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    p.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    p.add_argument("--n", type=int, default=4000, help="training signals")
    p.add_argument("--seed", type=int, default=0, help="the CNN's initialization seed")
    p.add_argument("--nt-venv", type=Path, help="virtual environment with neural-tangents")
    p.add_argument("--build-nt-venv", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        row = nt_side(args.out)
        row["peak_bytes"] = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(row))
        return
    if args.n < 20:
        p.error(f"--n must be at least 20 (a validation split and a fit), got {args.n}")
    sys.path.insert(0, str(HERE))
    from _machine import configure_host, cpu_name

    if args.build_nt_venv:
        from ntk_speed import DEFAULT_NT_VENV, build_nt_venv

        nt_python = build_nt_venv(args.nt_venv or DEFAULT_NT_VENV)
    elif args.nt_venv is not None:
        nt_python = args.nt_venv / "bin" / "python"
        if not nt_python.exists():
            p.error(f"--nt-venv: no {nt_python}; build one with --build-nt-venv")
    else:
        p.error("give --nt-venv PATH or --build-nt-venv")
    configure_host()
    args.out.mkdir(parents=True, exist_ok=True)
    jx = jaxntk_side(args.out, args.n, args.seed)
    print(json.dumps({"jaxntk": jx}), flush=True)
    cmd = [str(nt_python), str(Path(__file__).resolve()), "--child", "--out", str(args.out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"neural-tangents' side failed:\n{done.stderr[-3000:]}")
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    summary = compare(args.out, jx, peer)
    summary.update(
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=cpu_name(), seed=args.seed
    )
    (args.out / "mnist1d_kernel_nt.json").write_text(json.dumps(summary, indent=1))
    text = report(summary)
    print(text)
    from _machine import write_table

    write_table(args.out, "mnist1d_kernel_nt", text, args.results)


if __name__ == "__main__":
    main()
