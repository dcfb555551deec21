"""The `jaxntk` command.

    jaxntk train --variant V --d D --n N --m M --steps T --lr LR --seed S --out DIR [...]
        [--checkpoint DIR] [--coordinator HOST:PORT --num-processes N --process-id I]
    jaxntk bench [--quick | --tiny] [--out DIR] [--results]   (from a source checkout)

Each verb exits 0 on success and non-zero with a one-line reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]


class CLIError(Exception):
    """A reason to stop, shown to the user as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `jaxntk` command on `argv`, as the `jaxntk` executable does.

    Args:
        argv: the arguments after `jaxntk` (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 1 when a verb stops with a reason (printed as one line
        on stderr), 2 when no verb is given (the help is printed). Bad arguments exit with
        status 2 through `SystemExit`, as argparse does, after one line on stderr.

    Example:
        >>> import tempfile
        >>> from jaxntk.cli import main
        >>> out = tempfile.mkdtemp()
        >>> main(["train", "--variant", "ntk", "--d", "5", "--n", "10", "--m", "8",
        ...       "--steps", "5", "--quiet", "--out", out])  # doctest: +ELLIPSIS
        ntk: train ... test ... -> ...
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CLIError as err:
        print(f"jaxntk {args.verb}: {err}", file=sys.stderr)
        return 1


def _processes_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several processes (jax.distributed; default: JAX's cluster detection, else one process)"
    )
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    g.add_argument("--num-processes", type=_positive_int, default=None)
    g.add_argument("--process-id", type=_nonnegative_int, default=None)


def _join_processes(args: argparse.Namespace) -> int:
    """Join the multi-process run the arguments name; this process's index."""
    import jax

    from jaxntk import sharding

    try:
        sharding.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return jax.process_index()


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jaxntk", description="Taylor models of wide networks: NTK, QuadNTK, good directions."
    )
    sub = p.add_subparsers(dest="verb", parser_class=_Parser)
    _add_train(sub)
    _add_reproduce(sub)
    _add_plot(sub)
    _add_bench(sub)
    return p


def _add_train(sub: argparse._SubParsersAction) -> None:
    from jaxntk.network import ACTIVATIONS
    from jaxntk.objectives import VARIANTS
    from jaxntk.targets import DISTRIBUTIONS
    from jaxntk.training import OPTIMIZERS

    t = sub.add_parser("train", help="train one variant on one configuration")
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", choices=list(VARIANTS))
    which.add_argument(
        "--order",
        type=_positive_int,
        help="train the order-K Taylor model f0 + f_1 + … + f_K (1: ntk, 2: ntk+quadntk, "
        "K ≥ 3: taylor-K)",
    )
    t.add_argument("--d", type=_positive_int, required=True, help="input dimension")
    t.add_argument("--n", type=_positive_int, required=True, help="training points")
    t.add_argument("--m", type=_positive_int, required=True, help="width (even)")
    t.add_argument("--steps", type=_positive_int, required=True)
    t.add_argument("--lr", type=_positive_float, default=1.0)
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd")
    t.add_argument(
        "--seed",
        type=_nonnegative_int,
        default=0,
        help="seed of the data, the initialization and the run",
    )
    t.add_argument(
        "--lambda-bulk",
        type=_nonnegative_float,
        default=None,
        help="λ_b on the per-sample mean R_bulk (default: 1 for 'regularized', else 0)",
    )
    t.add_argument("--lambda-pop", type=_nonnegative_float, default=0.0)
    t.add_argument("--lambda-24", type=_nonnegative_float, default=0.0)
    t.add_argument("--k", type=_positive_int, default=None, help="top directions (default d)")
    t.add_argument("--inputs", choices=list(DISTRIBUTIONS), default="gaussian")
    t.add_argument("--target", choices=["paper", "mlp"], default="paper")
    t.add_argument("--activation", choices=list(ACTIVATIONS), default="shifted_sigmoid")
    t.add_argument("--n-test", type=_positive_int, default=2000)
    t.add_argument("--eval-every", type=_positive_int, default=100)
    t.add_argument("--init-scale", type=_nonnegative_float, default=None)
    t.add_argument("--out", type=Path, required=True, help="folder for run.json and history.npz")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.add_argument(
        "--devices",
        type=_positive_int,
        default=None,
        help="devices to split the neurons over (default: all available; m/2 divisible by N/2)",
    )
    t.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="save state here after every chunk; a rerun with the same settings resumes from it",
    )
    _processes_arguments(t)
    t.set_defaults(func=_train)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reproduce", help="run the paper's experiments and draw their figures")
    r.add_argument(
        "--preset",
        choices=["cpu", "paper"],
        default="cpu",
        help="cpu: minutes on 2 cores (default); paper: the authors' size, for a GPU",
    )
    r.add_argument(
        "--only",
        default=None,
        help="comma-separated experiments: variants, lambda-sweep, spectrum (the default set), "
        "sample-complexity, mlp, dense-plus-sparse, lazy-rich, taylorized (needs the digits "
        "extra), mnist1d (needs the mnist1d extra)",
    )
    r.add_argument("--seeds", type=_seed_list, default=None, help="e.g. 1,11,111")
    r.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="override the preset's number of training steps",
    )
    r.add_argument(
        "--lambdas",
        type=_lambda_list,
        default=None,
        help="lambda-sweep: override the λ_1 grid (sum scale), e.g. 0,1e-3,1e-2",
    )
    r.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="lambda-sweep: save state here after every chunk; a rerun resumes from it",
    )
    r.add_argument("--out", type=Path, default=Path("results"))
    _processes_arguments(r)
    r.set_defaults(func=_reproduce)


def _add_plot(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plot", help="redraw the figures of a results folder from its saved files")
    pl.add_argument("dir", type=Path, nargs="?", default=Path("results"))
    pl.set_defaults(func=_plot)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="time the library against the hardware and the baseline")
    size = b.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, minutes on 2 cores")
    size.add_argument("--tiny", action="store_true", help="the smallest sizes (a smoke test)")
    b.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json")
    b.add_argument(
        "--results",
        action="store_true",
        help="also append the table to the checkout's benchmarks/RESULTS.md (default: --out only)",
    )
    b.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    import importlib.util

    # the benchmark scripts live in the source tree's benchmarks/, not in the installed package
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not script.exists():
        raise CLIError(f"{script} not found: bench runs from a source checkout of jaxntk")
    _writable_dir(args.out)
    spec = importlib.util.spec_from_file_location("jaxntk_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--out", str(args.out)] + [
        f"--{flag.replace('_', '-')}"
        for flag in ("quick", "tiny", "results")
        if getattr(args, flag)
    ]
    module.main(argv)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxntk import plots
    from jaxntk.experiments import dense_plus_sparse, spectrum, taylorized

    d = args.dir
    drawers = {
        "variants": lambda: plots.variants_chart(d / "variants.json", d / "variants.png"),
        "lambda-sweep": lambda: plots.lambda_sweep_figure(
            d / "lambda-sweep.json", d / "lambda-sweep.npz", d / "lambda-sweep.png"
        ),
        "spectrum": lambda: spectrum.plot(d / "spectrum.json", d / "spectrum.png"),
        "sample-complexity": lambda: plots.sample_complexity_figure(
            d / "sample-complexity.json", d / "sample-complexity.png"
        ),
        "mlp": lambda: plots.mlp_figure(d / "mlp.json", d / "mlp.png"),
        "taylorized": lambda: taylorized.plot(d / "taylorized.json", d),
        "dense-plus-sparse": lambda: dense_plus_sparse.plot(
            d / "dense-plus-sparse.json", d / "dense-plus-sparse.npz", d / "dense-plus-sparse.png"
        ),
        "lazy-rich": lambda: plots.lazy_rich_figure(d / "lazy-rich.json", d / "lazy-rich.png"),
        "mnist1d": lambda: plots.mnist1d_chart(d / "mnist1d.json", d / "mnist1d.png"),
    }
    found = [name for name in drawers if (d / f"{name}.json").exists()]
    if not found:
        raise CLIError(f"no results in {d} (expected one of {[f'{k}.json' for k in drawers]})")
    for name in found:
        print(f"{name}: {drawers[name]()}")
    return 0


#: What `jaxntk reproduce` runs without --only; sample-complexity, mlp, dense-plus-sparse and
#: lazy-rich (grids of many runs), taylorized and mnist1d (real data, optional extras) are opt-in.
DEFAULT_EXPERIMENTS = ["variants", "lambda-sweep", "spectrum"]


def _experiments() -> dict:
    from jaxntk.experiments import (
        dense_plus_sparse,
        lambda_sweep,
        lazy_rich,
        mlp,
        mnist1d,
        sample_complexity,
        spectrum,
        taylorized,
        variants,
    )

    return {
        "variants": variants,
        "lambda-sweep": lambda_sweep,
        "spectrum": spectrum,
        "sample-complexity": sample_complexity,
        "mlp": mlp,
        "taylorized": taylorized,
        "dense-plus-sparse": dense_plus_sparse,
        "lazy-rich": lazy_rich,
        "mnist1d": mnist1d,
    }


def _reproduce(args: argparse.Namespace) -> int:
    import dataclasses

    exps = _experiments()
    names = DEFAULT_EXPERIMENTS if args.only is None else [x.strip() for x in args.only.split(",")]
    names = [x for x in names if x]
    unknown = [x for x in names if x not in exps]
    if unknown or not names:
        raise CLIError(
            f"--only: unknown experiment(s) {unknown or names}; choose from {list(exps)}"
        )
    for flag, value in (("--lambdas", args.lambdas), ("--checkpoint", args.checkpoint)):
        if value is not None and "lambda-sweep" not in names:
            raise CLIError(f"{flag} applies to the lambda-sweep experiment, not to {names}")
    index = _join_processes(args)
    # every process runs the experiments; processes other than 0 keep their copies apart
    out = _writable_dir(args.out if index == 0 else args.out / f"process-{index}")
    t0 = time.perf_counter()
    docs, seconds = {}, {}
    for name in names:
        module = exps[name]
        config = module.PRESETS[args.preset]
        overrides = {}
        if args.seeds is not None and hasattr(config, "seeds"):
            overrides["seeds"] = tuple(args.seeds)
        elif args.seeds is not None and hasattr(config, "seed"):  # one network draw (spectrum)
            overrides["seed"] = args.seeds[0]
        if args.steps is not None and hasattr(config, "steps"):
            overrides["steps"] = args.steps
        if args.lambdas is not None and name == "lambda-sweep":
            overrides["lambdas"] = tuple(args.lambdas)
        config = dataclasses.replace(config, **overrides)
        kwargs = {}
        if args.checkpoint is not None and name == "lambda-sweep":
            kwargs["checkpoint"] = args.checkpoint
        print(f"== {name} ({args.preset} preset) -> {out}", flush=True)
        t_exp = time.perf_counter()
        try:
            docs[name] = module.run(config, out, **kwargs)
        except (ValueError, ModuleNotFoundError) as err:
            raise CLIError(f"{name}: {err}") from None
        seconds[name] = time.perf_counter() - t_exp
        print(f"== {name} done in {seconds[name]:.0f} s", flush=True)
    took = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    print(f"\ndone in {time.perf_counter() - t0:.0f} s ({took}); results in {out}")
    if "variants" in docs:
        _print_summary(
            docs["variants"]["summary"], "variant", "train loss", "train_loss_mean", ".3f"
        )
    if "lambda-sweep" in docs:
        summary = docs["lambda-sweep"]["summary"]
        _print_summary(summary, "λ_1 (sum scale)", "final n·R_bulk", "bulk_sum_mean", ".3g")
    for name in ("dense-plus-sparse", "lazy-rich", "mnist1d"):
        if name in docs:
            print(exps[name].table(docs[name]))
    return 0


def _print_summary(summary: dict, first: str, last: str, last_key: str, last_fmt: str) -> None:
    """A plain table: a row per key of `summary`, its test loss (mean ± std) and one more field."""
    print(f"\n{first:<16} test loss (mean ± std over seeds)   {last}")
    for name, row in summary.items():
        print(
            f"{name:<16} {row['test_loss_mean']:.3f} ± {row['test_loss_std']:.3f}"
            f"                  {format(row[last_key], last_fmt)}"
        )


def _train(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import jaxntk as jn
    from jaxntk.objectives import DEFAULT_BULK

    if args.order is not None:
        args.variant = {1: "ntk", 2: "ntk+quadntk"}.get(args.order, f"taylor-{args.order}")

    out = _writable_dir(args.out)
    writer = _join_processes(args) == 0
    key = jax.random.PRNGKey(args.seed)
    k_task, k_net = jax.random.split(key)
    try:
        task = _make_task(k_task, args)
        net = jn.TwoLayer.init(k_net, d=args.d, m=args.m, activation=args.activation)
        reg = jn.Regularizer(
            bulk=(DEFAULT_BULK if args.variant == "regularized" else 0.0)
            if args.lambda_bulk is None
            else args.lambda_bulk,
            pop=args.lambda_pop,
            norm24=args.lambda_24,
            k=args.k,
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jn.DivergenceWarning)
            run = jn.train(
                net,
                task,
                args.variant,
                steps=args.steps,
                lr=args.lr,
                optimizer=args.optimizer,
                reg=reg,
                seeds=[args.seed],
                eval_every=args.eval_every,
                init_scale=args.init_scale,
                progress=not args.quiet and writer,
                devices=args.devices,
                checkpoint=args.checkpoint,
                resume=args.checkpoint is not None,
            )
        seconds = time.perf_counter() - t0
    except ValueError as err:
        raise CLIError(str(err)) from None

    if not writer:
        return 0  # process 0 writes the results; every process took part in the run
    hist = {k: v[0, 0] if k != "step" else v for k, v in run.history.items()}
    np.savez(out / "history.npz", **hist)
    config = {**vars(args), "out": str(args.out), "m": args.m, "activation": args.activation}
    config["checkpoint"] = None if args.checkpoint is None else str(args.checkpoint)
    config.pop("func", None)
    final = {k: _num(hist[k][-1]) for k in ("train_loss", "test_loss")}
    doc = {
        "config": config,
        "final": final,
        "seconds": seconds,
        "history": {
            k: [_num(x) for x in np.asarray(v).tolist()]
            for k, v in hist.items()
            if np.asarray(v).ndim == 1
        },
    }
    bad = int(run.diverged_at_step[0, 0])
    if bad >= 0:
        doc["diverged_at_step"] = bad
    (out / "run.json").write_text(json.dumps(doc, indent=1))
    if bad >= 0:
        raise CLIError(
            f"variant {args.variant!r} diverged (non-finite loss) at step {bad}; "
            f"history up to there written to {out}"
        )
    print(
        f"{args.variant}: train {final['train_loss']:.4g}  test {final['test_loss']:.4g}  "
        f"({seconds:.1f} s) -> {out}"
    )
    return 0


def _make_task(key, args):
    import jax

    import jaxntk as jn

    if args.target == "paper":
        return jn.paper_task(key, d=args.d, n=args.n, n_test=args.n_test, distribution=args.inputs)
    k_target, k_data = jax.random.split(key)
    target = jn.targets.mlp_target(k_target, args.d)
    return jn.targets.make_task(
        k_data, target, n=args.n, n_test=args.n_test, distribution=args.inputs
    )


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # one probe per process: the processes of a multi-process run check the same folder
        probe = path / f".jaxntk-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CLIError(f"--out {path} is not a writable folder ({err.strerror})") from None
    return path


def _seed_list(s: str) -> list[int]:
    return _comma_list(s, int, "ints", "ints")


def _lambda_list(s: str) -> list[float]:
    return _comma_list(s, float, "numbers", "finite numbers")


def _comma_list(s: str, parse: Callable, what: str, checked: str) -> list:
    """The comma-separated values of `s`, each parsed, all finite and ≥ 0."""
    try:
        values = [parse(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {s!r}") from None
    if not values or not all(math.isfinite(x) for x in values) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated {checked} ≥ 0, got {s!r}")
    return values


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an int ≥ 1, got {s}")
    return v


def _nonnegative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an int ≥ 0, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def _nonnegative_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {s}")
    return v


def entry() -> int:
    """The `jaxntk` executable: opts in to the host malloc settings (`jaxntk.configure_allocator`,
    before any computation; ``JAXNTK_ALLOCATOR=system`` leaves them), then runs `main`.

    Returns:
        `main`'s exit status.
    """
    from jaxntk import host

    host.configure_allocator()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
