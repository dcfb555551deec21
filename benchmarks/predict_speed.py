"""ntk_predict and the traced good directions on the MNIST-1D CNN, against neural-tangents.

The model: MNIST-1D's ConvBase as a flax module (Conv 25 channels kernel 5 stride 2, two Conv 25
kernel 3 stride 2, each padding 1 and relu, Dense(10) on the 125 flattened features: 5210
parameters) on inputs (n, 40, 1), one-hot targets of the 10 classes (mnist1d's make_dataset).

- small (n = 4000, 1000 test inputs): `jaxntk.ntk_predict(..., trace_axes=(-1,), flow=True,
  steps=[100, 1000, inf], ridge=ρ, method="lanczos")` (kernel included) against neural-tangents
  0.6.5: its `empirical_ntk_fn(trace_axes=(-1,))` kernels (implementation 1 and 3, the faster
  counted) and `predict.gradient_descent_mse(k, y, learning_rate=2·lr, diag_reg=ρ,
  diag_reg_absolute_scale=True)` at t = [100, 1000] and t = None (∞). Its flow is
  exp(−λ·lr_nt·t/N) with N = y.size; ntk_predict's is exp(−2·lr·λt/N) (the trainer's loss, no
  ½): learning_rate = 2·lr is the same dynamics. The neural-tangents side runs the same
  network written with lax.conv (checked equal to the flax one) in a virtual environment of
  its own (--nt-venv, or --build-nt-venv as benchmarks/ntk_speed.py builds it).
- large (n = 20000): ntk_predict method "matrix_free" at steps [1000, inf] in one
  call, and the top-100 eigenpairs of the traced kernel (`jaxntk.linalg.top_eigh` on
  `ntk_operator`: what the traced good directions compute), each in a child process of its own
  whose peak resident memory (ru_maxrss) is reported.

Times are wall-clock seconds of one call after a first (compiling) call, best of --repeats;
the large runs are timed once, compile included (what a user waits). Usage:

    python benchmarks/predict_speed.py --out DIR [--nt-venv PATH | --build-nt-venv]
        [--n 4000] [--n-large 20000] [--skip-large] [--skip-small] [--results]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS = [100.0, 1000.0, math.inf]
LR = 1.0
N_TEST = 1000
SMALL_METHOD = "lanczos"  # ntk_predict's method at n = 4000 (the kernel formed, no eigh)
RIDGE_REL = 1e-3  # ρ = RIDGE_REL × the mean diagonal of the traced kernel (n = 4000)
RIDGE_SCALE = {"small": 1.0}  # --ridge-rel / RIDGE_REL: the small run's ρ, set by main
RIDGE_LARGE = 1e-4  # the large run's ρ = RIDGE_LARGE × tr K (kernel ridge regression's n·λ)


# ---------------------------------------------------------------------- the model, both sides


def cnn_apply(params, x):
    """The flax module's function in lax (what neural-tangents' side runs)."""
    import jax
    from jax import lax

    p = params["params"]
    h = x
    for i in range(3):
        conv = p[f"Conv_{i}"]
        h = lax.conv_general_dilated(
            h, conv["kernel"], (2,), [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC")
        )
        h = jax.nn.relu(h + conv["bias"])
    dense = p["Dense_0"]
    return h.reshape(h.shape[0], -1) @ dense["kernel"] + dense["bias"]


def flax_cnn():
    import flax.linen as nn

    class ConvBase(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in (5, 3, 3):
                x = nn.relu(nn.Conv(25, (width,), strides=(2,), padding=[(1, 1)])(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    return ConvBase()


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def unflatten(data) -> dict:
    """The parameter tree saved as `params/...` entries of an npz (`flatten`'s inverse)."""
    tree: dict = {}
    for name in data.files:
        if name.startswith("params/"):
            *parents, leaf = name[len("params/") :].split("/")
            node = tree
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = data[name]
    return tree


def load(path: Path):
    """(params, x, y, x_test, ridge) from the run's npz, as jax arrays."""
    import jax
    import jax.numpy as jnp

    with np.load(path) as data:
        tree = jax.tree.map(jnp.asarray, unflatten(data))
        arrays = [jnp.asarray(data[k]) for k in ("x", "y", "x_test")]
        ridge = float(data["ridge"]) * RIDGE_SCALE["small"]
    return (tree, *arrays, ridge)


def make_data(out: Path, n: int) -> Path:
    """The npz of a run: flax parameters (PRNGKey(0)), MNIST-1D inputs and one-hot targets, and
    the ridge ρ = RIDGE_REL × the mean of the traced kernel's diagonal on 256 inputs."""
    import jax
    import jax.numpy as jnp
    from mnist1d.data import get_dataset_args, make_dataset

    import jaxntk as jn

    path = out / f"data-{n}.npz"
    if path.exists():
        return path
    args = get_dataset_args()
    args.num_samples, args.train_split = n + N_TEST, n / (n + N_TEST)
    data = make_dataset(args)
    inputs = np.concatenate([data["x"], data["x_test"]])[:, :, None]
    labels = np.concatenate([data["y"], data["y_test"]])
    x = jnp.asarray(inputs[:n], jnp.float32)
    x_test = jnp.asarray(inputs[n : n + N_TEST], jnp.float32)
    y = jax.nn.one_hot(labels[:n], 10, dtype=jnp.float32)
    module = flax_cnn()
    params = module.init(jax.random.PRNGKey(0), x[:1])
    gap = float(jnp.max(jnp.abs(module.apply(params, x[:64]) - cnn_apply(params, x[:64]))))
    assert gap < 1e-5, f"the lax network differs from the flax one by {gap}"
    diag = jn.empirical_ntk(module.apply, params, x[:256], diagonal_axes=(0,))
    ridge = RIDGE_REL * float(jnp.mean(diag))
    flat = {f"params/{k}": v for k, v in flatten(params).items()}
    np.savez(path, x=x, y=y, x_test=x_test, ridge=ridge, **flat)
    return path


# ------------------------------------------------------------------------------- children


def _timed(call, repeats: int):
    """(result, first seconds, best seconds)."""
    import jax

    t0 = time.perf_counter()
    result = jax.block_until_ready(call())
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = jax.block_until_ready(call())
        best = min(best, time.perf_counter() - t0)
    return result, first, best


def child_jaxntk_small(data: Path, out: Path, repeats: int) -> dict:
    import jaxntk as jn

    params, x, y, x_test, ridge = load(data)
    apply = flax_cnn().apply

    def call():
        return jn.ntk_predict(
            apply,
            params,
            x,
            y,
            x_test,
            steps=STEPS,
            lr=LR,
            flow=True,
            trace_axes=(-1,),
            ridge=ridge,
            method=SMALL_METHOD,
            tol=1e-6,
        )

    result, first, best = _timed(call, repeats)
    np.savez(out / "jaxntk-small.npz", train=result.train, test=result.test)
    # its kernels, for neural-tangents' predict on the same kernel (not timed)
    k_train, k_test = jn.empirical_ntk(apply, params, x), jn.empirical_ntk(apply, params, x_test, x)
    np.savez(out / "kernels-small.npz", k_train=k_train, k_test=k_test)
    return {"first_s": first, "best_s": best, "method": SMALL_METHOD}


def child_float64(data: Path, out: Path) -> dict:
    """The same prediction in float64 (one call): the reference both float32 runs are held to."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import jaxntk as jn

    params, x, y, x_test, ridge = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if hasattr(a, "dtype") else a, load(data)
    )
    t0 = time.perf_counter()
    result = jn.ntk_predict(
        flax_cnn().apply,
        params,
        x,
        y,
        x_test,
        steps=STEPS,
        lr=LR,
        flow=True,
        trace_axes=(-1,),
        ridge=ridge,
    )
    jax.block_until_ready(result.test)
    seconds = time.perf_counter() - t0
    np.savez(out / "float64-small.npz", train=result.train, test=result.test)
    # its float64 kernels, for neural-tangents' float64 predict on the same kernel (not timed)
    apply = flax_cnn().apply
    k_train = jn.empirical_ntk(apply, params, x, trace_axes=(-1,))
    k_test = jn.empirical_ntk(apply, params, x_test, x, trace_axes=(-1,))
    np.savez(out / "kernels-float64.npz", k_train=k_train, k_test=k_test)
    return {"seconds": seconds}


def child_nt_small(data: Path, out: Path, repeats: int, impls: list[int]) -> dict:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt

    params, x, y, x_test, ridge = load(data)
    rows = {}
    for impl in impls:
        fn = jax.jit(
            nt.empirical_ntk_fn(cnn_apply, trace_axes=(-1,), vmap_axes=0, implementation=impl)
        )

        def call(fn=fn):
            k_train = fn(x, None, params)
            k_test = fn(x_test, x, params)
            predict = nt.predict.gradient_descent_mse(
                k_train,
                y,
                learning_rate=2 * LR,
                diag_reg=ridge,
                diag_reg_absolute_scale=True,
                trace_axes=(-1,),
            )
            f0, f0_test = cnn_apply(params, x), cnn_apply(params, x_test)
            train, test = predict(jnp.asarray(STEPS[:-1]), f0, f0_test, k_test)
            train_inf, test_inf = predict(None, f0, f0_test, k_test)
            return jnp.concatenate([train, train_inf[None]]), jnp.concatenate(
                [test, test_inf[None]]
            )

        try:
            (train, test), first, best = _timed(call, repeats)
        except Exception as err:  # an implementation that fails on this jax: reported
            rows[f"nt {impl}"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            continue
        rows[f"nt {impl}"] = {"first_s": first, "best_s": best}
        np.savez(out / f"nt-small-{impl}.npz", train=train, test=test)
    if (out / "kernels-small.npz").exists():  # its predict on jaxntk's kernels: the algebra alone
        _nt_on_kernels(
            out / "kernels-small.npz", out / "nt-same-kernel.npz", params, x, y, x_test, ridge
        )
    return rows


def _nt_on_kernels(kernels: Path, target: Path, params, x, y, x_test, ridge) -> None:
    """neural-tangents' `gradient_descent_mse` at STEPS on the kernels saved at `kernels` (in
    the dtype JAX gives them), written to `target`."""
    import jax.numpy as jnp
    import neural_tangents as nt

    with np.load(kernels) as saved:
        k_train, k_test = jnp.asarray(saved["k_train"]), jnp.asarray(saved["k_test"])
    predict = nt.predict.gradient_descent_mse(
        k_train, y, learning_rate=2 * LR, diag_reg=ridge, diag_reg_absolute_scale=True
    )
    f0, f0_test = cnn_apply(params, x), cnn_apply(params, x_test)
    train, test = predict(jnp.asarray(STEPS[:-1]), f0, f0_test, k_test)
    train_inf, test_inf = predict(None, f0, f0_test, k_test)
    np.savez(
        target,
        train=jnp.concatenate([train, train_inf[None]]),
        test=jnp.concatenate([test, test_inf[None]]),
    )


def child_nt_float64(data: Path, out: Path) -> dict:
    """neural-tangents' `gradient_descent_mse` in float64 on jaxntk's float64 kernels: the two
    libraries' algebra compared where float32's rounding does not set the difference."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    params, x, y, x_test, ridge = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if hasattr(a, "dtype") else a, load(data)
    )
    _nt_on_kernels(out / "kernels-float64.npz", out / "nt-float64.npz", params, x, y, x_test, ridge)
    return {}


def child_large_predict(data: Path, out: Path) -> dict:
    import jax

    import jaxntk as jn
    from jaxntk import linalg

    params, x, y, x_test, ridge = load(data)
    ridge *= RIDGE_LARGE * x.shape[0] / (RIDGE_REL * RIDGE_SCALE["small"])
    infos, function = [], linalg.matrix_function

    def recorded(*args, **kwargs):  # ntk_predict's Lanczos run, with its KrylovInfo kept
        out, info = function(*args, **kwargs, return_info=True)
        infos.append(info)
        return out

    linalg.matrix_function = recorded
    t0 = time.perf_counter()
    result = jn.ntk_predict(
        flax_cnn().apply,
        params,
        x,
        y,
        x_test,
        steps=[1000.0, math.inf],
        lr=LR,
        flow=True,
        trace_axes=(-1,),
        method="matrix_free",
        ridge=ridge,
        tol=1e-3,
        max_iters=250,
    )
    jax.block_until_ready(result.test)
    seconds = time.perf_counter() - t0
    y_np, test = np.asarray(y), np.asarray(result.test)
    return {
        "seconds": seconds,
        "ridge": ridge,
        "iterations": infos[0].iterations,
        "change": infos[0].error,
        "train_accuracy": [float(np.mean(a.argmax(-1) == y_np.argmax(-1))) for a in result.train],
        "test_outputs_norm": [float(np.linalg.norm(a)) for a in test],
    }


def child_large_directions(data: Path, out: Path, k: int) -> dict:
    """`jaxntk.good_directions(outputs="traced", method="matrix_free")` on the CNN's TaylorModel:
    the traced kernel's top-k eigenvectors and the (n·c) × k basis of J that the regularizer
    uses, timed whole (compile, prepare and the products included)."""
    import jax

    import jaxntk as jn
    from jaxntk.taylor import TaylorModel

    params, x, _, _, _ = load(data)
    t0 = time.perf_counter()
    model = TaylorModel(flax_cnn().apply, params)
    prep = model.prepare(x)
    dirs, info = jn.good_directions(
        model, prep, k, outputs="traced", method="matrix_free", tol=1e-3, return_info=True
    )
    jax.block_until_ready((dirs.u_k, dirs.top_basis))
    seconds = time.perf_counter() - t0
    s2 = np.asarray(dirs.s_k) ** 2
    return {
        "seconds": seconds,
        "iterations": int(info.iterations),
        "residual": float(info.residual),
        "u_k": list(dirs.u_k.shape),
        "top_basis": list(dirs.top_basis.shape),
        "top": [float(v) for v in s2[:3]],
        "kth": float(s2[-1]),
    }


def run_child(python: str, kind: str, data: Path, out: Path, extra: list[str]) -> dict:
    """One child process's JSON, with its peak resident memory in bytes."""
    cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--data", str(data)]
    cmd += ["--out", str(out), "--ridge-rel", repr(RIDGE_SCALE["small"] * RIDGE_REL), *extra]
    env_path = {"PYTHONPATH": str(ROOT)} if not kind.startswith("nt-") else {}
    import os

    env = {**os.environ, **env_path}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _relative(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(‖a − b‖ / ‖b‖, max |a − b| / max |b|)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    return (
        float(np.linalg.norm(diff) / np.linalg.norm(b)),
        float(np.max(np.abs(diff)) / np.max(np.abs(b))),
    )


def compare(out: Path, impls: list[int]) -> dict:
    """Relative differences, per step: jaxntk to each neural-tangents run, and each float32 run
    to the float64 one."""
    runs = {f"nt {impl}": out / f"nt-small-{impl}.npz" for impl in impls}
    pairs = [("jaxntk", name, path) for name, path in runs.items()]
    pairs.append(("jaxntk", "nt on jaxntk's kernel", out / "nt-same-kernel.npz"))
    reference = out / "float64-small.npz"
    for name in ["jaxntk", *runs]:
        pairs.append((name, "float64", reference))
    pairs.append(("jaxntk float64", "nt float64 on the same kernel", out / "nt-float64.npz"))
    runs["jaxntk float64"] = reference
    runs["jaxntk"] = out / "jaxntk-small.npz"
    rows = {}
    for mine, other, path in pairs:
        if not (path.exists() and runs[mine].exists()):
            continue
        ours, ref = np.load(runs[mine]), np.load(path)
        rows[f"{mine} to {other}"] = {
            str(t): {
                "train": _relative(ours["train"][i], ref["train"][i]),
                "test": _relative(ours["test"][i], ref["test"][i]),
            }
            for i, t in enumerate(STEPS)
        }
    return rows


def report(summary: dict) -> str:
    lines = [f"\n## ntk_predict at scale (benchmarks/predict_speed.py, {summary['when']})\n"]
    lines.append(f"Machine: {summary['machine']}.\n")
    small = summary.get("small")
    if small:
        ours = small["jaxntk"]
        lines.append(
            f"n = {small['n']}, 10 outputs, traced, t = 100, 1000, ∞, ρ = {small['ridge']:.3g} "
            f"({small.get('ridge_rel', RIDGE_REL):g} × the mean diagonal):\n"
        )
        lines.append("| run | first call (s) | best (s) | peak RSS (GB) |")
        lines.append("|---|---|---|---|")
        label = f"jaxntk {ours.get('method', 'eigh')}"
        for name, row in [(label, ours), *small["nt"].items()]:
            if "best_s" in row:
                best = "—" if math.isinf(row["best_s"]) else f"{row['best_s']:.1f}"
                lines.append(
                    f"| {name} | {row['first_s']:.1f} | {best} | "
                    f"{row.get('peak_bytes', 0) / 1e9:.2f} |"
                )
        lines.append(
            "\nRelative differences ‖a − b‖ / ‖b‖ of the test outputs (train in brackets) at "
            "t = 100, 1000, ∞:\n"
        )
        lines.append("| a to b | t = 100 | t = 1000 | t = ∞ |")
        lines.append("|---|---|---|---|")
        for name, errs in small["errors"].items():
            cells = [f"{e['test'][0]:.1e} ({e['train'][0]:.1e})" for e in errs.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key in ("large_predict", "large_directions"):
        row = summary.get(key)
        if row:
            lines.append(f"\n{key} (n = {summary['n_large']}): {json.dumps(row)}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    p.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument(
        "--ridge-rel",
        type=float,
        default=RIDGE_REL,
        help="the n = 4000 run's ρ as a multiple of the traced kernel's mean diagonal",
    )
    p.add_argument("--n-large", type=int, default=20000)
    p.add_argument("--k", type=int, default=100, help="eigenpairs of the large run")
    p.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    p.add_argument("--nt-repeats", type=int, default=0, help="neural-tangents': its first call")
    p.add_argument("--nt-venv", type=Path, help="virtual environment with neural-tangents")
    p.add_argument("--build-nt-venv", action="store_true")
    p.add_argument("--nt-impls", default="1")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    RIDGE_SCALE["small"] = args.ridge_rel / RIDGE_REL
    impls = [int(i) for i in args.nt_impls.split(",") if i]
    if args.child:
        row = _child(args, impls)
        row["peak_bytes"] = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(row))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    summary = _parent(args, impls)
    (args.out / "predict_speed.json").write_text(json.dumps(summary, indent=1))
    text = report(summary)
    print(text)
    sys.path.insert(0, str(HERE))
    from _machine import write_table

    write_table(args.out, "predict_speed", text, args.results)


def _child(args, impls) -> dict:
    if args.child == "jaxntk-small":
        return child_jaxntk_small(args.data, args.out, args.repeats)
    if args.child == "nt-small":
        return child_nt_small(args.data, args.out, args.repeats, impls)
    if args.child == "float64":
        return child_float64(args.data, args.out)
    if args.child == "nt-float64":
        return child_nt_float64(args.data, args.out)
    if args.child == "large-predict":
        return child_large_predict(args.data, args.out)
    return child_large_directions(args.data, args.out, args.k)


def _parent(args, impls) -> dict:
    sys.path.insert(0, str(HERE))
    from _machine import cpu_name

    summary = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": cpu_name()}
    summary["n_large"] = args.n_large
    python = sys.executable
    if args.build_nt_venv:
        from ntk_speed import DEFAULT_NT_VENV, build_nt_venv

        nt_python = str(build_nt_venv(args.nt_venv or DEFAULT_NT_VENV))
    else:
        nt_python = str(args.nt_venv / "bin" / "python") if args.nt_venv else None
    if not args.skip_small:
        data = make_data(args.out, args.n)
        ridge = float(np.load(data)["ridge"]) * RIDGE_SCALE["small"]
        extra = ["--repeats", str(args.repeats), "--nt-impls", args.nt_impls]
        nt_extra = ["--repeats", str(args.nt_repeats), "--nt-impls", args.nt_impls]
        small = {"n": args.n, "ridge": ridge, "ridge_rel": args.ridge_rel}
        small["jaxntk"] = run_child(python, "jaxntk-small", data, args.out, extra)
        small["nt"] = {}
        if nt_python:
            rows = run_child(nt_python, "nt-small", data, args.out, nt_extra)
            peak = rows.pop("peak_bytes", 0)
            small["nt"] = {k: {**v, "peak_bytes": peak} for k, v in rows.items() if k != "error"}
            small["nt_error"] = rows.get("error")
        small["float64"] = run_child(python, "float64", data, args.out, extra)
        if nt_python:
            run_child(nt_python, "nt-float64", data, args.out, extra)
        small["errors"] = compare(args.out, impls)
        summary["small"] = small
        print(json.dumps(small, indent=1), flush=True)
    if not args.skip_large:
        data = make_data(args.out, args.n_large)
        for kind, key in (("large-predict", "large_predict"), ("large-dirs", "large_directions")):
            summary[key] = run_child(python, kind, data, args.out, ["--k", str(args.k)])
            print(json.dumps({key: summary[key]}), flush=True)
    return summary


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
