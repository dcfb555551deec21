"""The models of `ntk_speed.py` as plain JAX functions, and the child process that times kernels.

This file runs under two JAX versions: jaxntk's (0.10) and the separate environment of
neural-tangents 0.6.5 (jax 0.4.30). It imports neither library at module level, only jax and
numpy, so each side's child process can load it:

    python _ntk_runs.py --side jaxntk --model cnn --inputs DIR/inputs/cnn.npz --kernels DIR/k \
        --tasks jacobian:64,jacobian:128 [--repeats 3] [--max-seconds 120] [--float64]
    python _ntk_runs.py --side nt ... --tasks 1:64,2:64,3:64

It prints "START impl n" before each kernel and "ROW {json}" after it, so that the parent can
stop a child that overruns its time and go on with the remaining tasks in a new one.

Models (params are nested dicts of arrays, the same pytree on both sides):
- mlp: x → tanh(x W0) → tanh(· W1) → · W2, no biases (the hand-written kernel's form);
- cnn: three 3 × 3 convolutions (SAME, stride 1) with tanh, mean pool, dense, no biases;
- flax_cnn: the same with biases, as flax.linen's Conv/Dense store them ({"params": {"Conv_0":
  {"kernel", "bias"}, ...}}): `flax_cnn_apply` is the plain-JAX function of flax's pytree;
- resnet: a stem convolution and tanh, then h + conv(tanh(conv(h))) through tanh, pool, dense.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MODELS = ("mlp", "cnn", "flax_cnn", "resnet")
HAND_WRITTEN = "hand-written"


def _conv(x, kernel):
    """SAME 3 × 3 convolution, stride 1, NHWC inputs, HWIO kernel (flax.linen.Conv's layout)."""
    return lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def mlp_apply(params, x):
    h = jnp.tanh(x @ params["dense_0"]["kernel"])
    h = jnp.tanh(h @ params["dense_1"]["kernel"])
    return h @ params["dense_2"]["kernel"]


def cnn_apply(params, x):
    for i in range(3):
        x = jnp.tanh(_conv(x, params[f"conv_{i}"]["kernel"]))
    return jnp.mean(x, axis=(1, 2)) @ params["dense"]["kernel"]


def flax_cnn_apply(params, x):
    p = params["params"]
    for i in range(3):
        x = jnp.tanh(_conv(x, p[f"Conv_{i}"]["kernel"]) + p[f"Conv_{i}"]["bias"][None, None, None])
    return jnp.mean(x, axis=(1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None]


def resnet_apply(params, x):
    h = jnp.tanh(_conv(x, params["conv_0"]["kernel"]))
    r = _conv(jnp.tanh(_conv(h, params["conv_1"]["kernel"])), params["conv_2"]["kernel"])
    h = jnp.tanh(h + r)
    return jnp.mean(h, axis=(1, 2)) @ params["dense"]["kernel"]


APPLY = {"mlp": mlp_apply, "cnn": cnn_apply, "flax_cnn": flax_cnn_apply, "resnet": resnet_apply}


def mlp_structured_ntk(params, x):
    """The MLP's traced kernel written by hand: Σ_l (H_{l-1} H_{l-1}ᵀ) ∘ mean_c(Δ_lc Δ_lcᵀ).

    H_{l-1} (n, width) is the input of layer l, Δ_lc (n, width_l) the derivative of output c
    with respect to layer l's pre-activation, back-propagated once for all c from Δ_L = I.
    """
    ws = [params[f"dense_{i}"]["kernel"] for i in range(3)]
    hs = [x]
    for w in ws[:-1]:
        hs.append(jnp.tanh(hs[-1] @ w))
    c = ws[-1].shape[1]
    delta = jnp.broadcast_to(jnp.eye(c, dtype=x.dtype), (x.shape[0], c, c))
    kernel = 0.0
    for layer in reversed(range(3)):
        h = hs[layer]
        kernel = kernel + (h @ h.T) * jnp.einsum("ick,jck->ij", delta, delta) / c
        if layer:
            delta = jnp.einsum("ick,mk->icm", delta, ws[layer]) * (1 - hs[layer] ** 2)[:, None]
    return kernel


def flatten(tree, prefix=""):
    """{"a/b": leaf} of a pytree of nested dicts (what np.savez stores)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten(flat):
    tree = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def load_inputs(path: Path, dtype):
    """(params, x) from the npz the parent wrote: x under "x", the params under "params/...",
    cast to `dtype`."""
    with np.load(path) as data:
        flat = {k[len("params/") :]: data[k] for k in data.files if k.startswith("params/")}
        x = data["x"]
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), unflatten(flat))
    return params, jnp.asarray(x, dtype)


def rss_bytes(field: str) -> int | None:
    """VmRSS or VmHWM (the peak since the last reset) of this process from /proc, bytes."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    return None if match is None else 1024 * int(match.group(1))


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident set (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def max_rss_bytes() -> int:
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def time_kernel(call, repeats: int, max_seconds: float):
    """(kernel, first-call seconds, best seconds, times): one warm-up call (it compiles), then the
    best of `repeats` calls, each ended by block_until_ready; fewer repeats where `repeats` calls
    would exceed max_seconds (at least one)."""
    t0 = time.perf_counter()
    kernel = jax.block_until_ready(call())
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, min(repeats, math.floor(max_seconds / max(first, 1e-9))))):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return np.asarray(kernel), first, min(times), times


def xla_bytes(jitted, *args) -> int | None:
    """Bytes of XLA's memory analysis of a jitted function's program (arguments, outputs and
    temporaries), where the backend gives one."""
    try:
        mem = jitted.lower(*args).compile().memory_analysis()
        return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    except Exception:  # not every backend or version reports it
        return None


class Kernel:
    """One implementation's kernel of x_all[:n]: `call()` computes it, `info` describes it and
    `program` is (jitted function, its arguments) where one jitted program computes it."""

    def __init__(self, call, info: dict, program=None):
        self.call, self.info, self.program = call, info, program


def jaxntk_kernels(model: str, params, x_all):
    """(impl, n) -> Kernel for jaxntk's methods (jaxntk.ntk, else jaxntk.spectral before the
    engine existed) and the hand-written MLP kernel."""
    apply_fn = flax_cnn_module_of(params).apply if model == "flax_cnn" else APPLY[model]
    try:
        from jaxntk import ntk

        api = "jaxntk.ntk.empirical_ntk"
    except ImportError:
        from jaxntk import spectral as ntk

        api = "jaxntk.spectral.empirical_ntk"
    hand = jax.jit(mlp_structured_ntk)

    def kernel(impl: str, n: int) -> Kernel:
        x = x_all[:n]
        if impl == HAND_WRITTEN:
            return Kernel(
                lambda: hand(params, x), {"api": "hand-written (jitted)"}, (hand, params, x)
            )
        info = {"api": api}
        if hasattr(ntk, "choose_method"):  # what the engine runs for this method, and why
            choice = ntk.choose_method(apply_fn, params, x, trace_axes=(-1,), method=impl)
            info["choice"] = _jsonable(choice)

        def call():
            return ntk.empirical_ntk(apply_fn, params, x, method=impl, trace_axes=(-1,))

        return Kernel(call, info)

    return kernel


def nt_kernels(model: str, params, x_all):
    """(impl, n) -> Kernel for neural-tangents' empirical_ntk_fn, jitted, implementation impl."""
    import neural_tangents as nt

    fns = {}

    def kernel(impl: str, n: int) -> Kernel:
        if impl not in fns:
            fns[impl] = jax.jit(
                nt.empirical_ntk_fn(
                    APPLY[model], trace_axes=(-1,), vmap_axes=0, implementation=int(impl)
                )
            )
        fn, x = fns[impl], x_all[:n]
        info = {"api": f"neural_tangents {nt.__version__} empirical_ntk_fn (jitted)"}
        return Kernel(lambda: fn(x, None, params), info, (fn, x, None, params))

    return kernel


def flax_cnn_module(channels: int, outputs: int):
    """The flax.linen CNN with biases (flax is imported only on jaxntk's side, where it is)."""
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(3):
                x = jnp.tanh(nn.Conv(channels, (3, 3), padding="SAME")(x))
            return nn.Dense(outputs)(jnp.mean(x, axis=(1, 2)))

    return CNN()


def flax_cnn_module_of(params):
    p = params["params"]
    return flax_cnn_module(p["Conv_0"]["kernel"].shape[-1], p["Dense_0"]["kernel"].shape[-1])


def _jsonable(value):
    """JSON-able form of what `choose_method` returns (named tuples, dicts, numbers, strings)."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if hasattr(value, "__dataclass_fields__"):
        value = {k: getattr(value, k) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def run_tasks(args) -> None:
    allocator, compiler_options = None, None
    if args.side == "jaxntk":  # imported before any array exists, as a user's script does
        import jaxntk

        allocator = getattr(jaxntk, "allocator_status", lambda: "system: not configured")()
        host = getattr(jaxntk, "host", None)
        if host is not None and hasattr(host, "cpu_compiler_options"):
            compiler_options = host.cpu_compiler_options()
    dtype = jnp.float64 if args.float64 else jnp.float32
    params, x_all = load_inputs(args.inputs, dtype)
    kernel_of = (jaxntk_kernels if args.side == "jaxntk" else nt_kernels)(args.model, params, x_all)
    baseline = rss_bytes("VmRSS")
    kernels = Path(args.kernels)
    kernels.mkdir(parents=True, exist_ok=True)
    times_of = {}  # impl -> [(n, seconds)] of its sizes so far, for the projection
    failed = {}  # impl -> the n at which it failed
    for task in args.tasks.split(","):
        impl, n = task.rsplit(":", 1)
        n = int(n)
        print(f"START {impl} {n}", flush=True)
        row = {"model": args.model, "side": args.side, "impl": impl, "n": n, "repeats": 0}
        row["jax"] = jax.__version__
        row["allocator"] = allocator or _environment_allocator()
        if compiler_options is not None:  # jaxntk's own programs' (jaxntk.host)
            row["compiler_options"] = compiler_options
        projected = _projected(times_of.get(impl, []), n)
        skip = None
        if impl in failed:
            skip = {"note": f"failed at n={failed[impl]}"}
        elif projected is not None and projected[0] > args.max_seconds:
            seconds, n0, slope = projected
            note = f"projected {seconds:.3g} s from n={n0} (growth n^{slope:.2f}) > --max-seconds"
            skip = {"note": f"{note} {args.max_seconds:g}", "projected_seconds": seconds}
        if skip:
            print("ROW " + json.dumps(row | skip | {"status": "skipped"}), flush=True)
            continue
        try:
            kernel = kernel_of(impl, n)
            row |= kernel.info
            reset = reset_peak_rss()
            value, first, best, times = time_kernel(kernel.call, args.repeats, args.max_seconds)
        except Exception as err:  # a failing implementation is a result here
            failed[impl] = n
            row |= {"status": "failed", "note": f"{type(err).__name__}: {err}".splitlines()[0]}
            print("ROW " + json.dumps(row), flush=True)
            continue
        peak = rss_bytes("VmHWM") if reset else max_rss_bytes()
        path = kernels / f"{args.model}-{args.side}-{impl}-{n}.npy"
        np.save(path, value)
        row |= {
            "status": "ok",
            "seconds": best,
            "times": times,
            "first_call_seconds": first,
            "repeats": len(times),
            "kernel_path": str(path),
            "kernel_trace": float(np.trace(value)),
            "kernel_shape": list(value.shape),
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": baseline,
            "rss_increase_bytes": None if peak is None or baseline is None else peak - baseline,
            "peak_rss_since": "this kernel's calls" if reset else "the child's start",
            "xla_bytes": None if kernel.program is None else xla_bytes(*kernel.program),
        }
        times_of.setdefault(impl, []).append((n, best))
        print("ROW " + json.dumps(row), flush=True)


def _environment_allocator() -> str:
    """How the environment sets glibc's malloc for a side that does not set it itself."""
    tuned = sorted(k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if not tuned:
        return "system"
    return "environment: " + ", ".join(f"{k}={os.environ[k]}" for k in tuned)


def _projected(done: list[tuple[int, float]], n: int) -> tuple[float, int, float] | None:
    """(seconds, from which n, growth exponent): the time at size n projected from the sizes
    done, growing as n^slope with slope from the last two sizes, at least 2; None before any."""
    if not done:
        return None
    n0, t0 = done[-1]
    slope = 2.0
    if len(done) > 1:
        (na, ta), (nb, tb) = done[-2:]
        slope = max(slope, math.log(tb / ta) / math.log(nb / na))
    return t0 * (n / n0) ** slope, n0, slope


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("jaxntk", "nt"), required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--kernels", type=Path, required=True)
    p.add_argument("--tasks", required=True, help="impl:n,impl:n,... in the order to run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--float64", action="store_true")
    args = p.parse_args(argv)
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    run_tasks(args)


if __name__ == "__main__":
    from _machine import configure_host

    argv = sys.argv[:-1]
    side = sys.argv[argv.index("--side") + 1] if "--side" in argv else "jaxntk"
    if side != "nt":  # jaxntk's side opts in to its malloc settings (jaxntk.host); the peer's not
        configure_host()
    sys.exit(main())
