"""Seconds per training step on 1, 2 and 4 processes (jax.distributed), and checkpoint costs.

Processes: each layout PxK starts P processes on localhost (gloo CPU collectives), K emulated host
devices each, that train a `TwoLayer` (neurons split over all P·K devices) through
`jaxntk.train` for T1 and T2 steps after a warm-up; (time(T2) − time(T1)) / (T2 − T1) is the
cost of a step without compilation, set-up and final evaluation, as in benchmarks/sharding.py:
wall time of the slowest process and CPU time of all processes together (less sensitive than wall
time to other work on a shared machine).
On a machine with few cores the processes share them: the table shows the overhead of several
processes, not a speed-up.

Checkpoints: one process trains at the given size (default the paper's, d=100, n=1000, m=10000)
with `checkpoint=`, and reports the seconds of each state save (`jaxntk.checkpoint.save_state`:
orbax, then the checksum seal), of the restore when the run is resumed, and the bytes on disk.

Writes distributed.json to --out and prints a table.

    python benchmarks/distributed.py --out DIR [--layouts 1x1,1x4,2x2,4x1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layouts", default="1x1,1x4,2x2,4x1", help="PxK: P processes, K devices")
    p.add_argument("--d", type=int, default=30)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--m", type=int, default=2000)
    p.add_argument("--t1", type=int, default=10)
    p.add_argument("--t2", type=int, default=110)
    p.add_argument("--checkpoint-size", default="100,1000,10000", help="d,n,m ('' to skip)")
    p.add_argument("--seeds", type=int, default=3, help="seeds in the checkpointed run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        _worker(args)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    results = {"steps": {}, "checkpoint": None}
    for layout in args.layouts.split(","):
        processes, devices = (int(x) for x in layout.split("x"))
        results["steps"][layout] = _launch(args, processes, devices)
        print(f"{layout}: {results['steps'][layout]}", flush=True)
    if args.checkpoint_size:
        results["checkpoint"] = _checkpoint_costs(args)
    (args.out / "distributed.json").write_text(json.dumps(results, indent=1))
    size = f"d={args.d}, n={args.n}, m={args.m}"
    print(f"\nseconds per step, TwoLayer 'ntk', {size} (processes x devices each)")
    for layout, r in results["steps"].items():
        print(
            f"  {layout:>5}: wall {r['wall_s_per_step'] * 1e3:8.2f} ms   "
            f"CPU (all processes) {r['cpu_s_per_step'] * 1e3:8.2f} ms"
        )
    if results["checkpoint"]:
        c = results["checkpoint"]
        print(
            f"\ncheckpoint at d, n, m = {c['size']}, {c['settings']} settings: state "
            f"{c['state_bytes'] / 2**20:.1f} MiB, save {c['save_s']:.3f} s "
            f"(median of {len(c['saves_s'])}), restore {c['restore_s']:.3f} s, "
            f"history per chunk {c['chunk_bytes'] / 1024:.1f} KiB"
        )


def _launch(args, processes: int, devices: int) -> dict:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    base = [sys.executable, __file__, "--out", str(args.out), "--d", str(args.d)]
    base += ["--n", str(args.n), "--m", str(args.m), "--t1", str(args.t1), "--t2", str(args.t2)]
    procs = [
        subprocess.Popen(
            [*base, "--worker", f"localhost:{port},{processes},{i}"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a worker of {processes}x{devices} failed")
    each = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    # wall time: the slowest process; CPU time: the work of all processes together
    return {
        "wall_s_per_step": max(e["wall_s_per_step"] for e in each),
        "cpu_s_per_step": sum(e["cpu_s_per_step"] for e in each),
        "processes": processes,
        "devices": processes * devices,
    }


def _worker(args) -> None:
    coordinator, processes, index = args.worker.split(",")
    import jax

    if int(processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, int(processes), int(index))
    import jaxntk as jn

    task = jn.paper_task(jax.random.PRNGKey(0), d=args.d, n=args.n, n_test=args.n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=args.d, m=args.m)
    kw = dict(seeds=[0], eval_every=args.t2 - args.t1, evals_per_chunk=1, progress=False)

    def timed(steps: int) -> list[float]:
        t0 = [time.perf_counter(), time.process_time()]
        run = jn.train(net, task, "ntk", steps=steps, **kw)
        jax.block_until_ready(run.params)
        return [time.perf_counter() - t0[0], time.process_time() - t0[1]]

    timed(args.t1)  # compile and warm up
    steps = args.t2 - args.t1
    walls, cpus = [], []
    for _ in range(3):
        (w2, c2), (w1, c1) = timed(args.t2), timed(args.t1)
        walls.append((w2 - w1) / steps)
        cpus.append((c2 - c1) / steps)
    print(json.dumps({"wall_s_per_step": min(walls), "cpu_s_per_step": min(cpus)}))


def _checkpoint_costs(args) -> dict:
    import jax

    import jaxntk as jn
    from jaxntk import checkpoint

    d, n, m = (int(x) for x in args.checkpoint_size.split(","))
    task = jn.paper_task(jax.random.PRNGKey(0), d=d, n=n, n_test=n)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=d, m=m)
    folder = args.out / "checkpoint"
    seconds: dict[str, list[float]] = {"save_state": [], "restore": []}

    def timing(name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            seconds[name].append(time.perf_counter() - t0)
            return out

        return timed

    checkpoint.save_state = timing("save_state", checkpoint.save_state)
    checkpoint.restore = timing("restore", checkpoint.restore)
    kw = dict(steps=5, eval_every=1, evals_per_chunk=1, seeds=list(range(args.seeds)))
    jn.train(net, task, "ntk", **kw, progress=False, checkpoint=folder)
    (state,) = folder.glob("state_*[0-9]")
    state_bytes = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    chunk_bytes = max(f.stat().st_size for f in (folder / "history").iterdir())
    jn.train(net, task, "ntk", **kw, progress=False, checkpoint=folder, resume=True)
    saves = sorted(seconds["save_state"])
    return {
        "size": [d, n, m],
        "settings": args.seeds,
        "state_bytes": state_bytes,
        "chunk_bytes": chunk_bytes,
        "saves_s": seconds["save_state"],
        "save_s": saves[len(saves) // 2],
        "restore_s": seconds["restore"][0],
    }


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
