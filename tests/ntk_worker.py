"""The empirical NTK in its own process, for tests/test_ntk.py: on several forced host devices, or
as one of several processes on jax.distributed.

    python ntk_worker.py OUT_PREFIX [--coordinator HOST:PORT --num-processes N --process-id I]

The parent sets XLA_FLAGS=--xla_force_host_platform_device_count=K for K devices per process.
Each process writes OUT_PREFIX-<process id>.npz: the kernels of tests/test_ntk.py's `mlp` on
inputs seeded as there (x2 None and given, traced and not, device and host output), the devices
the block features were computed on, and the number of block pairs this process contracted.
Float64, same strict settings as tests/conftest.py.
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    args = p.parse_args()
    if args.coordinator is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")

    import test_ntk

    from jaxntk import ntk

    devices, pairs = set(), [0]
    features, pair = ntk._block_features, ntk._block_pair

    def recorded_features(*a):
        devices.update(str(d) for d in a[2].devices())
        return features(*a)

    def counted_pair(*a):
        pairs[0] += 1
        return pair(*a)

    ntk._block_features, ntk._block_pair = recorded_features, counted_pair
    apply_fn, params, shape = test_ntk.mlp()
    x1 = test_ntk._normal(40, (7, *shape))
    x2 = test_ntk._normal(41, (5, *shape))
    out = {}
    for name, other in (("sym", None), ("given", x2)):
        for trace in ((), (-1,)):
            k = ntk.empirical_ntk(apply_fn, params, x1, other, trace_axes=trace, batch_size=2)
            out[f"{name}{len(trace)}"] = np.asarray(k)
        host = ntk.empirical_ntk(apply_fn, params, x1, other, batch_size=2, output="host")
        out[f"{name}_host"] = host
    np.savez(
        f"{args.out}-{jax.process_index()}.npz",
        devices=np.asarray(sorted(devices)),
        pairs=pairs[0],
        processes=jax.process_count(),
        **out,
    )


if __name__ == "__main__":
    main()
