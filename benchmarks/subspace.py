"""Benchmark: the top-d NTK subspace without J, against forming J and a dense SVD (the authors').

At d = 50, n = 354 ≈ d^1.5, m = 4000 (Gaussian inputs, the default activation, float32) this times
`jaxntk.spectral.good_directions` with method "gram" (closed-form K = J Jᵀ, then eigh) and
"matrix_free" (randomized subspace iteration on J(Jᵀ Q)) against `svd(J)` with J (n × m·d) formed
from the features; then, unless --quick, the two J-free methods at the paper's size d = 100,
n = 1000, m = 10 000, where J alone would take 4 GB.

Each method runs in a subprocess of its own, so its peak resident memory (ru_maxrss) is its own;
the table gives it above a baseline process that builds the same inputs and computes nothing, next
to the bytes of the arrays the method needs. Times: one warm-up call (compilation), then the
minimum over repeats, each ended by block_until_ready. Accuracy: the sine of the largest principal
angle between each method's U_k and the reference's (dense SVD, else "gram"), and the largest
relative error of its singular values.

    python benchmarks/subspace.py            # d = 50 (all three) and the paper's size (J-free)
    python benchmarks/subspace.py --quick    # d = 50 only

Prints a table and writes it, with the machine and versions, to `--out`/subspace.md (appended to
benchmarks/RESULTS.md only with `--results`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import add_output_arguments, cpu_name, write_table

METHODS = ("dense", "gram", "matrix_free")
SIZES = {"issue": (50, 354, 4000), "paper": (100, 1000, 10_000)}


def worker(method: str, d: int, n: int, m: int, repeats: int, batch_size: int, save: str) -> dict:
    """Run one method in this process; return its timings and peak memory."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxntk import spectral
    from jaxntk.network import TwoLayer
    from jaxntk.targets import sample_inputs

    k_net, k_x = jax.random.split(jax.random.PRNGKey(0))
    net = TwoLayer.init(k_net, d=d, m=m)
    x = jax.block_until_ready(sample_inputs(k_x, n, d))
    k = d

    @jax.jit
    def dense(net, x):
        u, s, _ = jnp.linalg.svd(net.features(x).reshape(n, m * d), full_matrices=False)
        return u[:, :k], s[:k]

    def j_free(net, x):
        dirs, info = spectral.good_directions(
            net, net.prepare(x), k, method=method, batch_size=batch_size, return_info=True
        )
        return dirs.u_k, dirs.s_k, info

    fn = dense if method == "dense" else j_free
    times, out = [], None
    if method != "baseline":
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(net, x))
            times.append(time.perf_counter() - start)
        np.savez(save, u_k=np.asarray(out[0]), s_k=np.asarray(out[1]))
    result = {
        "method": method,
        "first_s": times[0] if times else None,
        "times_s": times[1:],
        "maxrss_mib": _peak_rss_mib(),
    }
    if method == "matrix_free":
        result["iterations"] = int(out[2].iterations)
        result["residual"] = float(out[2].residual)
    return result


def array_mib(method: str, d: int, n: int, m: int, batch_size: int) -> float:
    """Bytes (float32) of the arrays a method needs beyond the inputs, in MiB."""
    width = min(d + 10, n)
    floats = {
        "dense": 2 * n * m * d + n * n,  # J, and the thin SVD's Vᵀ
        "gram": 2 * n * m + 2 * n * n,  # σ'(XW0ᵀ), σ''(XW0ᵀ); K and its eigenvectors
        "matrix_free": 2 * n * m + 3 * n * width + min(batch_size, width) * (m * d + n * d),
    }[method]
    return 4 * floats / 2**20


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM (Linux) belongs to the process's own address
    space; ru_maxrss also keeps the high-water mark of a parent it was forked from, so a worker
    started by a large process (bench.py after its paper-size rows) would report the parent's."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_method(method: str, size: tuple[int, int, int], args, tmp: Path) -> dict:
    d, n, m = size
    save = tmp / f"{method}_{d}.npz"
    cmd = [sys.executable, __file__, "--worker", method, "--size", f"{d},{n},{m}"]
    cmd += ["--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
    cmd += ["--save", str(save)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{method} at {size} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["save"] = str(save)
    return result


def compare(result: dict, reference: dict) -> tuple[float, float]:
    """(sin of the largest principal angle, largest relative singular-value error) vs reference."""
    import numpy as np

    a, b = np.load(result["save"]), np.load(reference["save"])
    ua, ub = a["u_k"].astype(np.float64), b["u_k"].astype(np.float64)
    sin = np.linalg.norm(ua - ub @ (ub.T @ ua), ord=2)
    return float(sin), float(np.max(np.abs(a["s_k"] / b["s_k"] - 1)))


def machine() -> str:
    import jax
    import jaxlib
    import numpy as np

    cpu = cpu_name()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores visible, {mem:.0f} GiB RAM, {platform.system()}; "
        f"Python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"numpy {np.__version__}, JAX backend {jax.default_backend()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 50 only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="columns per J/Jᵀ product")
    add_output_arguments(parser)
    parser.add_argument("--worker", choices=(*METHODS, "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        d, n, m = (int(v) for v in args.size.split(","))
        result = worker(args.worker, d, n, m, args.repeats, args.batch_size, args.save)
        print(json.dumps(result))
        return

    plan = [("issue", METHODS)] + ([] if args.quick else [("paper", ("gram", "matrix_free"))])
    header = (
        "| d | n | m | method | time (s, min) | times (s) | first call (s) | peak RSS − baseline "
        "(MiB) | arrays (MiB) | speed-up vs dense | sin∠ vs ref | rel. err. S_k | note |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, methods in plan:
            size = SIZES[name]
            d, n, m = size
            base = run_method("baseline", size, args, Path(tmp))
            results = {meth: run_method(meth, size, args, Path(tmp)) for meth in methods}
            reference = results.get("dense", results["gram"])
            for meth, r in results.items():
                best = min(r["times_s"])
                speedup = (
                    f"{min(results['dense']['times_s']) / best:.0f}×" if "dense" in results else "—"
                )
                accuracy = "— | —"
                if r is not reference:
                    accuracy = "{:.1e} | {:.1e}".format(*compare(r, reference))
                note = (
                    f"{r['iterations']} K-products, residual {r['residual']:.1e}"
                    if meth == "matrix_free"
                    else ("reference" if r is reference else "")
                )
                rows.append(
                    f"| {d} | {n} | {m} | {meth} | {best:.3g} | "
                    f"{', '.join(f'{t:.3g}' for t in r['times_s'])} | {r['first_s']:.3g} | "
                    f"{r['maxrss_mib'] - base['maxrss_mib']:.0f} | "
                    f"{array_mib(meth, d, n, m, args.batch_size):.0f} | {speedup} | "
                    f"{accuracy} | {note} |"
                )
                print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## Top-d NTK subspace without J (benchmarks/subspace.py, {when})\n\n"
        f"Machine: {machine()}. float32, Gaussian inputs, shifted_sigmoid, k = d, "
        f"{args.repeats} timed repeats after a warm-up call, batch_size {args.batch_size}.\n\n"
        f"{table}\n"
    )
    write_table(args.out, "subspace", section, args.results)


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
