"""One small training run in its own process, for tests/test_checkpoint.py and
tests/test_distributed.py: killed and resumed, or one of several processes on jax.distributed.

    python train_worker.py OUT.npz [--models twolayer,taylor] [--checkpoint DIR [--stop-at STEP]]
        [--steps T] [--chunk-pause SECONDS]
        [--coordinator HOST:PORT --num-processes N --process-id I]

The parent sets XLA_FLAGS=--xla_force_host_platform_device_count=K for K devices per process.
Prints "ready" once JAX is up, before training; process 0 writes the final parameters and the
history of each model to OUT.npz
(keys "<model>/params", "<model>/history_<metric>", ...). With --checkpoint, the last model
checkpoints there and resumes from it; --stop-at ends the process after the chunk that reaches
STEP (exit status 3), its checkpoint at the chunk before. Same strict settings as
tests/conftest.py, warnings as errors.
"""

import argparse
import sys
import time
import warnings

import jax
import numpy as np

import jaxntk as jn

D, N, N_TEST, M = 5, 16, 32, 16
RUN = dict(steps=40, eval_every=2, evals_per_chunk=1, seeds=[0, 1], lr=0.5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--models", default="twolayer")
    p.add_argument("--stop-at", type=int, default=None)
    p.add_argument("--steps", type=int, default=RUN["steps"])
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--chunk-pause", type=float, default=0.0, help="seconds to sleep after a chunk")
    args = p.parse_args()
    if args.coordinator is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print("ready", flush=True)

    task = jn.paper_task(jax.random.PRNGKey(0), d=D, n=N, n_test=N_TEST)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=D, m=M)
    models = {"twolayer": net, "taylor": jn.TaylorModel(net.apply_fn, net.w0)}
    saved = {}
    names = args.models.split(",")
    for i, name in enumerate(names):
        ckpt = args.checkpoint if i == len(names) - 1 else None
        progress = False
        if ckpt is not None and (args.stop_at is not None or args.chunk_pause > 0):

            def progress(info):
                if args.stop_at is not None and info["step"] >= args.stop_at:
                    sys.exit(3)
                time.sleep(args.chunk_pause)  # a run that lasts: the kill test's window

        run = jn.train(
            models[name],
            task,
            "regularized",
            reg=jn.Regularizer(bulk=[0.0, 1.0]),
            checkpoint=ckpt,
            resume=ckpt is not None,
            progress=progress,
            **{**RUN, "steps": args.steps},
        )
        saved[f"{name}/params"] = np.asarray(run.params)
        saved.update({f"{name}/history_{k}": v for k, v in run.history.items()})
        saved.update({f"{name}/trace_{k}": v for k, v in run.trace.items()})
        if jax.process_index() == 0:
            np.savez(args.out, **saved)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
