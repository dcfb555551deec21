"""One small training run in its own process, for tests/test_checkpoint.py and
tests/test_distributed.py: killed and resumed, or one of several processes on jax.distributed.

    python train_worker.py OUT.npz [--checkpoint DIR] [--model twolayer|taylor]
        [--coordinator HOST:PORT --num-processes N --process-id I]

The parent sets XLA_FLAGS=--xla_force_host_platform_device_count=K for K devices per process.
Prints "ready" once JAX is up, before training; process 0 writes the final parameters and the
history to OUT.npz. Same strict settings as tests/conftest.py, warnings as errors.
"""

import argparse
import sys
import warnings

import jax
import numpy as np

import jaxntk as jn
from jaxntk import sharding

D, N, N_TEST, M = 5, 16, 32, 16
RUN = dict(steps=40, eval_every=2, evals_per_chunk=1, seeds=[0, 1], lr=0.5, progress=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--model", choices=["twolayer", "taylor"], default="twolayer")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="sample shards of the mesh")
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
    model = net if args.model == "twolayer" else jn.TaylorModel(net.apply_fn, net.w0)
    devices = sharding.device_mesh(samples=args.samples) if jax.device_count() > 1 else 1
    run = jn.train(
        model,
        task,
        "regularized",
        reg=jn.Regularizer(bulk=[0.0, 1.0]),
        checkpoint=args.checkpoint,
        resume=args.checkpoint is not None,
        devices=devices,
        **RUN,
    )
    if jax.process_index() == 0:
        hist = {f"history_{k}": v for k, v in run.history.items()}
        trace = {f"trace_{k}": v for k, v in run.trace.items()}
        np.savez(args.out, params=np.asarray(run.params), **hist, **trace)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
