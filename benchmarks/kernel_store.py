"""The empirical NTK at dataset scale, on disk: the MNIST-1D CNN's traced kernel (benchmarks/
predict_speed.py's model and data, 10 outputs, float32) written to a kernel store by several
processes, killed with SIGKILL and resumed, against the kernel in memory; then its top eigenpairs.

1. reference: `jaxntk.empirical_ntk(apply, params, x[:n_ref])`, in memory (the default path), in
   a child process, timed two ways: the kernel's call alone (a first call at 256 inputs compiles
   the block programs beforehand, as a second kernel of a session would find them), and the
   process from its start to its exit, as the store's launches are timed; its kernel is saved.
2. store: --processes workers on `jax.distributed` (localhost coordinator, gloo) each run
   `empirical_ntk(apply, params, x[:n], output=OUT/store, progress=True)`. When the store holds
   each fraction of --kill-at of its block rows, every worker is killed with SIGKILL and all are
   started again; the wall times of all launches add up. Peak resident memory per process is
   VmHWM read from /proc while it runs.
3. checks: the store's leading n_ref × n_ref block against the reference (bit for bit).
4. eigenpairs: `jaxntk.linalg.top_eigh(store, k)` in a child process, timed, peak memory; and at
   --check-n a store's top k against numpy's float64 eigh of the same kernel.
5. rates: the contraction of one pair of blocks (the structured plan's FLOPs over its time, best
   of 5 after warm-up) as a fraction of a large matmul's rate (4096³ float32, best of 3), both in
   the same child process.

Usage:

    python benchmarks/kernel_store.py --out DIR [--n 30000] [--n-ref 20000] [--processes 2]
        [--kill-at 0.3 0.6] [--k 100] [--check-n 4000] [--skip-reference] [--results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARE_CORES = [False]  # --share-cores: each worker with its share of the cores' threads
COMPILE_CACHE: list[Path | None] = [None]  # the workers' persistent compilation cache
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


# ------------------------------------------------------------------------------- children


def _model(data: Path, n: int):
    from predict_speed import flax_cnn, load

    params, x, _, _, _ = load(data)
    return flax_cnn().apply, params, x[:n]


def child_reference(data: Path, out: Path, n: int) -> dict:
    import jax

    import jaxntk as jn

    apply, params, x = _model(data, n)
    jax.block_until_ready(jn.empirical_ntk(apply, params, x[:256]))  # the block programs
    t0 = time.perf_counter()
    k = jax.block_until_ready(jn.empirical_ntk(apply, params, x))
    seconds = time.perf_counter() - t0
    np.save(out / f"reference-{n}.npy", np.asarray(k))
    return {"seconds": seconds, "n": n}


def child_worker(data: Path, store: Path, n: int, args) -> dict:
    import jax

    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jaxntk as jn

    apply, params, x = _model(data, n)
    t0 = time.perf_counter()
    kept = jn.empirical_ntk(apply, params, x, output=store, progress=True)
    return {"seconds": time.perf_counter() - t0, "complete": kept.complete}


def child_eigh(store: Path, k: int) -> dict:
    from jaxntk import linalg
    from jaxntk.store import KernelStore

    kept = KernelStore.open(store)
    t0 = time.perf_counter()
    values, _, info = linalg.top_eigh(kept, k, tol=1e-3, return_info=True)
    values = np.asarray(values)
    seconds = time.perf_counter() - t0
    np.save(store.parent / f"eigenvalues-{kept.n}.npy", values)
    return {"seconds": seconds, "iterations": info.iterations, "residual": info.error, "n": kept.n}


def child_check(store: Path, k: int) -> dict:
    """top_eigh on the store against numpy's float64 eigh of the same kernel."""
    from jaxntk import linalg
    from jaxntk.store import KernelStore

    kept = KernelStore.open(store)
    values = np.asarray(linalg.top_eigh(kept, k, tol=1e-5)[0], np.float64)
    dense = np.linalg.eigvalsh(np.asarray(kept.array(), np.float64))[::-1][:k]
    return {
        "n": kept.n,
        "max_relative_error": float(np.max(np.abs(values - dense) / dense)),
        "top": dense[:3].tolist(),
        "kth": float(dense[-1]),
    }


def child_rates(data: Path) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxntk import _structured, ntk

    apply, params, x = _model(data, 256)
    a = jnp.ones((4096, 4096), jnp.float32)
    matmul = jax.jit(lambda u, v: u @ v)
    jax.block_until_ready(matmul(a, a))
    best = min(_timed(lambda: matmul(a, a)) for _ in range(3))
    matmul_rate = 2 * 4096**3 / best
    choice = ntk.choose_method(apply, params, x)
    plan = _structured.make_plan(jax.tree_util.Partial(apply), params, x[:1], (1,), ())
    cost = _structured.cost(plan, (1,), ())
    b = choice.batch_size
    f = ntk._block_features(jax.tree_util.Partial(apply), params, x[:b], "structured", plan)
    fn = jax.tree_util.Partial(apply)

    def pair():
        return ntk._block_pair(fn, params, f, f, "structured", plan, (1,), ())

    def features():
        return ntk._block_features(fn, params, x[:b], "structured", plan)

    jax.block_until_ready(pair())
    seconds = min(_timed(pair) for _ in range(5))
    jax.block_until_ready(features())
    feature_seconds = min(_timed(features) for _ in range(3))
    contraction_rate = cost.pair_flops * b * b / seconds
    return {
        "method": choice.method,
        "block": b,
        "matmul_gflops": matmul_rate / 1e9,
        "pair_seconds": seconds,
        "pair_gflop": cost.pair_flops * b * b / 1e9,
        "contraction_gflops": contraction_rate / 1e9,
        "fraction_of_matmul": contraction_rate / matmul_rate,
        "features_seconds_per_block": feature_seconds,
    }


def _timed(fn) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- the parent


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return env


def _peak_rss(pid: int) -> int:
    """VmHWM of a running process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(kind: str, extra: list[str], out: Path) -> dict:
    """One child's JSON (its last stdout line) and its peak resident memory."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _peak_rss(proc.pid))
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"error": stderr[-3000:]}
    row = json.loads(stdout.strip().splitlines()[-1])
    row["peak_bytes"] = max(peak, row.get("peak_bytes", 0))
    row["process_seconds"] = wall  # start to exit, as the store's launches are timed
    return row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(store: Path) -> int:
    folder = store / "rows"
    return len(list(folder.glob("[0-9]*.json"))) if folder.is_dir() else 0


def _total_rows(store: Path) -> int | None:
    try:
        manifest = json.loads((store / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return -(-manifest["shape"][0] // manifest["block"])


def _worker_env(processes: int) -> dict:
    """Each of several workers on one machine gets its share of the cores: XLA's CPU backend
    otherwise gives every process a thread per core, and they crowd each other out."""
    env = _env()
    if processes > 1:
        threads = max(1, (os.cpu_count() or 1) // processes)
        flags = env.get("XLA_FLAGS", "")
        if threads == 1:
            flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = flags.strip()
    return env


def _cache_env(folder: Path) -> dict:
    """JAX's persistent compilation cache in `folder`, every program kept (what a user sets to
    make a relaunch after a kill skip compiling: `jax_compilation_cache_dir`)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(folder),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def launch_store(data: Path, store: Path, n: int, processes: int, kill_at: float | None, log):
    """One launch of the workers: (wall seconds, peak bytes per process, killed, return codes).
    With kill_at, every worker is killed with SIGKILL once that fraction of rows is recorded."""
    port = _free_port()
    procs = []
    for pid in range(processes):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "worker"]
        cmd += ["--data", str(data), "--store", str(store), "--n", str(n)]
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
        cmd += ["--process-id", str(pid), "--out", str(store.parent)]
        env = _worker_env(processes) if SHARE_CORES[0] else _env()
        if COMPILE_CACHE[0] is not None:  # a relaunch reads its programs from disk
            env.update(_cache_env(COMPILE_CACHE[0]))
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env))
    t0, peaks, killed = time.perf_counter(), [0] * processes, False
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            peaks[i] = max(peaks[i], _peak_rss(p.pid))
        total = _total_rows(store)
        if kill_at is not None and total and _records(store) >= kill_at * total:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.25)
    seconds = time.perf_counter() - t0
    for p in procs:
        p.communicate()
    return seconds, peaks, killed, [p.returncode for p in procs]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results/kernel-store"))
    p.add_argument("--n", type=int, default=30000)
    p.add_argument("--n-ref", type=int, default=20000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--kill-at", type=float, nargs="*", default=[0.3, 0.6])
    p.add_argument("--k", type=int, default=100, help="eigenpairs")
    p.add_argument("--check-n", type=int, default=4000, help="n of the float64 eigh check")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-eigh", action="store_true")
    p.add_argument("--skip-rates", action="store_true")
    p.add_argument(
        "--share-cores",
        action="store_true",
        help="each worker one thread per core it gets (at n = 8000: 14.1 s against 12.6 s)",
    )
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="workers without a persistent compilation cache (each launch compiles again)",
    )
    p.add_argument("--results", action="store_true", help="append to benchmarks/RESULTS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--coordinator", help=argparse.SUPPRESS)
    p.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        row = _child(args)
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so a child would
        # report its parent's peak where that is larger
        row["peak_bytes"] = _peak_rss(os.getpid())
        print(json.dumps(row), flush=True)
        return row
    args.out.mkdir(parents=True, exist_ok=True)
    SHARE_CORES[0] = args.share_cores
    if not args.no_compile_cache:  # emptied: the first launch compiles, as a user's first
        COMPILE_CACHE[0] = args.out / "xla-cache"
        shutil.rmtree(COMPILE_CACHE[0], ignore_errors=True)
    summary = _parent(args)
    (args.out / "kernel_store.json").write_text(json.dumps(summary, indent=1))
    text = report(summary)
    print(text)
    from _machine import write_table

    write_table(args.out, "kernel_store", text, args.results)
    return summary


def _child(args) -> dict:
    if args.child == "reference":
        return child_reference(args.data, args.out, args.n_ref)
    if args.child == "worker":
        return child_worker(args.data, args.store, args.n, args)
    if args.child == "eigh":
        return child_eigh(args.store, args.k)
    if args.child == "check":
        return child_check(args.store, args.k)
    return child_rates(args.data)


def _parent(args) -> dict:
    from _machine import cpu_name
    from predict_speed import make_data

    summary = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": cpu_name(),
        "n": args.n,
        "processes": args.processes,
        "compile_cache": COMPILE_CACHE[0] is not None,
    }
    data = make_data(args.out, args.n)
    common = ["--data", str(data), "--n", str(args.n), "--n-ref", str(args.n_ref)]
    if not args.skip_reference:
        summary["reference"] = run_child("reference", common, args.out)
        print(json.dumps({"reference": summary["reference"]}), flush=True)
    store = args.out / f"store-{args.n}"
    launches = []
    with open(args.out / f"store-{args.n}.log", "a") as log:
        for kill_at in [*args.kill_at, None]:
            seconds, peaks, killed, codes = launch_store(
                data, store, args.n, args.processes, kill_at, log
            )
            launches.append(
                {
                    "kill_at": kill_at,
                    "seconds": seconds,
                    "peaks": peaks,
                    "killed": killed,
                    "codes": codes,
                    "records": _records(store),
                }
            )
            print(json.dumps({"launch": launches[-1]}), flush=True)
    summary["launches"] = launches
    if not args.skip_reference:  # again after the store: the machine's load changes over a run
        again = run_child("reference", common, args.out)
        summary["reference_after"] = again
        if "seconds" in again and "seconds" in summary["reference"]:
            first = summary["reference"]
            summary["reference"] = {
                **first,
                "seconds_runs": [first["seconds"], again["seconds"]],
                "seconds": (first["seconds"] + again["seconds"]) / 2,
                "process_seconds_runs": [first["process_seconds"], again["process_seconds"]],
                "process_seconds": (first["process_seconds"] + again["process_seconds"]) / 2,
            }
    summary["store_seconds"] = sum(row["seconds"] for row in launches)
    summary["peak_bytes"] = max(max(row["peaks"]) for row in launches)
    summary["bitwise"] = _compare(store, args.out, args.n_ref, args.skip_reference)
    if not args.skip_eigh:
        summary["eigh"] = run_child("eigh", ["--store", str(store), "--k", str(args.k)], args.out)
        check_store = args.out / f"store-{args.check_n}"
        if args.check_n != args.n:
            launch_store(data, check_store, args.check_n, 1, None, subprocess.DEVNULL)
        summary["check"] = run_child(
            "check", ["--store", str(check_store), "--k", str(args.k)], args.out
        )
    if not args.skip_rates:
        summary["rates"] = run_child("rates", common, args.out)
    return summary


def _compare(store: Path, out: Path, n_ref: int, skipped: bool) -> dict | None:
    reference = out / f"reference-{n_ref}.npy"
    if skipped or not reference.exists():
        return None
    from jaxntk.store import KernelStore

    kept, ref = KernelStore.open(store), np.load(reference, mmap_mode="r")
    worst, equal = 0.0, True
    for start in range(0, n_ref, 1024):
        stop = min(start + 1024, n_ref)
        got = kept.rows(start, stop)[:, :n_ref]
        want = np.asarray(ref[start:stop])
        equal &= bool(np.array_equal(got, want))
        worst = max(worst, float(np.max(np.abs(got - want))))
    return {"equal": equal, "max_abs_diff": worst, "n_ref": n_ref}


def report(summary: dict) -> str:
    lines = [f"\n## The kernel on disk (benchmarks/kernel_store.py, {summary['when']})\n"]
    lines.append(f"Machine: {summary['machine']}, 2 cores.\n")
    n, ref = summary["n"], summary.get("reference")
    kills = ", ".join(str(r["kill_at"]) for r in summary["launches"] if r["kill_at"])
    lines.append(
        f"MNIST-1D CNN (5210 parameters), traced over 10 outputs, float32; n = {n} written by "
        f"{summary['processes']} processes, "
        + (
            f"killed with SIGKILL at {kills} of its block rows and resumed"
            if kills
            else "in one launch"
        )
        + (
            " (the workers with JAX's persistent compilation cache: a relaunch reads its "
            "programs from disk).\n"
            if summary.get("compile_cache")
            else " (no compilation cache: every launch compiles).\n"
        )
    )
    lines.append("| run | seconds | peak RSS per process (GB) |")
    lines.append("|---|---|---|")
    if ref and "seconds" in ref:
        runs = ", ".join(f"{v:.1f}" for v in ref.get("seconds_runs", []))
        lines.append(
            f"| in memory, n = {ref['n']} (mean of the runs before and after: {runs}) | "
            f"{ref['seconds']:.1f} | {ref['peak_bytes'] / 1e9:.2f} |"
        )
    for row in summary["launches"]:
        what = f"killed at {row['kill_at']}" if row["killed"] else "to the end"
        peaks = ", ".join(f"{v / 1e9:.2f}" for v in row["peaks"])
        lines.append(
            f"| store launch, {what} ({row['records']} rows) | {row['seconds']:.1f} | {peaks} |"
        )
    lines.append(f"| store, all launches | {summary['store_seconds']:.1f} | |")
    if ref and "seconds" in ref:
        scaled = (n / ref["n"]) ** 2 * ref["seconds"]
        lines.append(
            f"\nStore time / ((n / n_ref)² × in-memory time) = {summary['store_seconds']:.1f} / "
            f"{scaled:.1f} = {summary['store_seconds'] / scaled:.2f}, the in-memory time being "
            "the kernel's call alone (its programs compiled beforehand)."
        )
    if ref and "process_seconds" in ref:
        runs = ", ".join(f"{v:.1f}" for v in ref.get("process_seconds_runs", []))
        scaled = (n / ref["n"]) ** 2 * ref["process_seconds"]
        lines.append(
            "Timed as the store's launches are, each a process from its start to its exit "
            f"(start-up, compilation, the warm-up call included; runs {runs}): "
            f"{summary['store_seconds']:.1f} / {scaled:.1f} = "
            f"{summary['store_seconds'] / scaled:.2f}."
        )
    if summary.get("bitwise"):
        b = summary["bitwise"]
        lines.append(
            f"\nLeading {b['n_ref']} × {b['n_ref']} block of the store against the in-memory "
            f"kernel: bit for bit {b['equal']}, max |diff| {b['max_abs_diff']:.3g}."
        )
    if summary.get("eigh"):
        e, c = summary["eigh"], summary.get("check", {})
        lines.append(
            f"\nTop eigenpairs of the stored kernel (`linalg.top_eigh`, tol 1e-3): "
            f"{json.dumps(e)}; at n = {c.get('n')} against float64 eigh: {json.dumps(c)}."
        )
    rates = summary.get("rates") or {}
    if rates:
        lines.append(f"\nRates: {json.dumps(rates)}.")
    if "pair_gflop" in rates and "block" in rates:
        blocks = -(-n // rates["block"])
        total = blocks * (blocks + 1) // 2 * rates["pair_gflop"]  # the symmetric kernel's pairs
        rate = total / summary["store_seconds"]
        lines.append(
            f"The whole store's contraction rate: {blocks * (blocks + 1) // 2} block pairs × "
            f"{rates['pair_gflop']:.3g} GFLOP in {summary['store_seconds']:.1f} s = "
            f"{rate:.0f} GFLOP/s, {rate / rates['matmul_gflops']:.2f} of the large matmul's "
            f"{rates['matmul_gflops']:.0f} GFLOP/s (every launch's start-up, writes and "
            "features included)."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
