"""The models of `ntk_speed.py` as plain JAX functions, and the child process that times kernels.

This file runs under two JAX versions: jaxntk's (0.10) and the separate environment of
neural-tangents 0.6.5 (jax 0.4.30). It imports neither library at module level, only jax and
numpy, so each side's child process can load it:

    python _ntk_runs.py --side jaxntk --model cnn --inputs DIR/inputs/cnn.npz --kernels DIR/k \
        --tasks jacobian:64,jacobian:128 [--repeats 3] [--max-seconds 120] [--float64]
        [--max-memory-gib 8]
    python _ntk_runs.py --side nt ... --tasks 1:64,2:64,3:64

It prints "START impl n" before each kernel and "ROW {json}" after it, so that the parent can
stop a child that overruns its time and go on with the remaining tasks in a new one.

Models (params are nested dicts of arrays, the same pytree on both sides):
- mlp: x → tanh(x W0) → tanh(· W1) → · W2, no biases (the hand-written kernel's form);
- cnn: three 3 × 3 convolutions (SAME, stride 1) with tanh, mean pool, dense, no biases;
- flax_cnn: the same with biases, as flax.linen's Conv/Dense store them ({"params": {"Conv_0":
  {"kernel", "bias"}, ...}}): `flax_cnn_apply` is the plain-JAX function of flax's pytree;
- resnet: a stem convolution and tanh, then h + conv(tanh(conv(h))) through tanh, pool, dense;
- resnet_bn: the resnet with BatchNorm after each convolution, as flax.linen's BatchNorm in eval
  mode (the running statistics): its pytree holds {"params", "batch_stats"}, the kernel is taken
  with respect to "params" at the statistics (`model_function`: closed over on both sides);
- transformer: integer tokens → nn.Embed + learned positions, one pre-LayerNorm block of 2-head
  self-attention and an MLP (gelu), mean over positions, Dense: flax.linen's pytree, as flax_cnn.

`model_function(model, tree)` gives (apply_fn, params) of the plain-JAX function; on jaxntk's
side `flax_function` gives the flax.linen module's (the flax models' kernels come from flax).
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

MODELS = ("mlp", "cnn", "flax_cnn", "resnet", "resnet_bn", "transformer")
FLAX_MODELS = ("flax_cnn", "resnet_bn", "transformer")
BN_EPSILON = 1e-5  # flax.linen.BatchNorm's default
LN_EPSILON = 1e-6  # flax.linen.LayerNorm's default
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


def _batch_norm(z, params, stats):
    """flax.linen.BatchNorm in eval mode (use_running_average=True), in its order of operations."""
    mul = (lax.rsqrt(stats["var"] + BN_EPSILON) * params["scale"])[None, None, None]
    return (z - stats["mean"][None, None, None]) * mul + params["bias"][None, None, None]


def resnet_bn_apply(variables, x):
    """The flax ResNet with BatchNorm at its running statistics ({"params", "batch_stats"})."""
    p, s = variables["params"], variables["batch_stats"]

    def conv_bn(h, i):
        return _batch_norm(
            _conv(h, p[f"Conv_{i}"]["kernel"]), p[f"BatchNorm_{i}"], s[f"BatchNorm_{i}"]
        )

    h = jnp.tanh(conv_bn(x, 0))
    r = conv_bn(jnp.tanh(conv_bn(h, 1)), 2)
    h = jnp.tanh(h + r)
    return jnp.mean(h, axis=(1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None]


def _layer_norm(h, params):
    """flax.linen.LayerNorm over the last axis (its fast variance, E[h²] − E[h]²)."""
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(h * h, axis=-1, keepdims=True) - mean * mean, 0.0)
    mul = lax.rsqrt(var + LN_EPSILON) * params["scale"][None, None]
    return (h - mean) * mul + params["bias"][None, None]


def transformer_apply(variables, tokens):
    """The flax transformer ({"params"}) on integer tokens (b, length)."""
    p = variables["params"]
    h = jnp.take(p["Embed_0"]["embedding"], tokens, axis=0) + p["positions"][None]
    a = _layer_norm(h, p["LayerNorm_0"])
    att = p["MultiHeadDotProductAttention_0"]
    q, k, v = (
        jnp.einsum("bld,dhk->blhk", a, att[name]["kernel"]) + att[name]["bias"][None, None]
        for name in ("query", "key", "value")
    )
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k))
    o = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    h = h + jnp.einsum("bqhd,hdo->bqo", o, att["out"]["kernel"]) + att["out"]["bias"][None, None]
    m = _layer_norm(h, p["LayerNorm_1"])
    m = jax.nn.gelu(m @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, None])
    h = h + m @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None, None]
    return jnp.mean(h, axis=1) @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"][None]


APPLY = {
    "mlp": mlp_apply,
    "cnn": cnn_apply,
    "flax_cnn": flax_cnn_apply,
    "resnet": resnet_apply,
    "resnet_bn": resnet_bn_apply,
    "transformer": transformer_apply,
}


def model_function(model: str, tree):
    """(apply_fn(params, x), params) of the plain-JAX model: the kernel is taken with respect to
    params. For resnet_bn, tree is flax's {"params", "batch_stats"}: the statistics are closed
    over and params is tree["params"]; for the others, the whole tree."""
    if model != "resnet_bn":
        return APPLY[model], tree
    stats = tree["batch_stats"]
    return (lambda p, x: resnet_bn_apply({"params": p, "batch_stats": stats}, x)), tree["params"]


def flax_function(model: str, tree):
    """(apply_fn, params) of the flax.linen module of a flax model (jaxntk's side; flax is not on
    neural-tangents'): for resnet_bn, the module in eval mode with its statistics closed over."""
    module = flax_module_of(model, tree)
    if model != "resnet_bn":
        return module.apply, tree
    stats = tree["batch_stats"]

    def apply_fn(p, x):
        return module.apply({"params": p, "batch_stats": stats}, x, train=False)

    return apply_fn, tree["params"]


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
    cast to `dtype` (integer inputs, tokens, stay integers)."""
    with np.load(path) as data:
        flat = {k[len("params/") :]: data[k] for k in data.files if k.startswith("params/")}
        x = data["x"]
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), unflatten(flat))
    if np.issubdtype(x.dtype, np.integer):  # tokens stay integers
        return params, jnp.asarray(x)
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
    if model in FLAX_MODELS:
        apply_fn, params = flax_function(model, params)
    else:
        apply_fn, params = model_function(model, params)
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

    apply_fn, params = model_function(model, params)
    fns = {}

    def kernel(impl: str, n: int) -> Kernel:
        if impl not in fns:
            fns[impl] = jax.jit(
                nt.empirical_ntk_fn(
                    apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=int(impl)
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


def resnet_bn_module(channels: int, outputs: int, momentum: float = 0.9):
    """The flax.linen ResNet with BatchNorm (train=True: batch statistics, updating the running
    ones when the collection is mutable; train=False: the running statistics)."""
    import flax.linen as nn

    class ResNetBN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            def conv_bn(h):
                h = nn.Conv(channels, (3, 3), padding="SAME", use_bias=False)(h)
                return nn.BatchNorm(use_running_average=not train, momentum=momentum)(h)

            h = jnp.tanh(conv_bn(x))
            h = jnp.tanh(h + conv_bn(jnp.tanh(conv_bn(h))))
            return nn.Dense(outputs)(jnp.mean(h, axis=(1, 2)))

    return ResNetBN()


def transformer_module(vocab: int, length: int, width: int, heads: int, hidden: int, outputs: int):
    """The flax.linen transformer: token embeddings and learned positions, one pre-LayerNorm block
    (self-attention with `heads` heads, an MLP of `hidden` units with gelu), mean pool, Dense."""
    import flax.linen as nn

    class Transformer(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            positions = self.param("positions", nn.initializers.normal(0.02), (length, width))
            h = nn.Embed(vocab, width)(tokens) + positions[None]
            a = nn.LayerNorm()(h)
            h = h + nn.MultiHeadDotProductAttention(num_heads=heads)(a, a)
            m = nn.LayerNorm()(h)
            m = nn.gelu(nn.Dense(hidden)(m))
            h = h + nn.Dense(width)(m)
            return nn.Dense(outputs)(jnp.mean(h, axis=1))

    return Transformer()


def flax_module_of(model: str, tree):
    """The flax.linen module of a flax model, its sizes read from its pytree."""
    p = tree["params"]
    if model == "flax_cnn":
        return flax_cnn_module_of(tree)
    if model == "resnet_bn":
        return resnet_bn_module(p["Conv_0"]["kernel"].shape[-1], p["Dense_0"]["kernel"].shape[-1])
    vocab, width = p["Embed_0"]["embedding"].shape
    length = p["positions"].shape[0]
    heads = p["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape[1]
    hidden, outputs = p["Dense_0"]["kernel"].shape[1], p["Dense_2"]["kernel"].shape[1]
    return transformer_module(vocab, length, width, heads, hidden, outputs)


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
    memory_of = {}  # impl -> [(n, bytes above the loaded child)], for the memory's projection
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
        memory = _projected_memory(memory_of.get(impl, []), n)
        cap = None if args.max_memory_gib is None else args.max_memory_gib * 2**30
        if not skip and memory is not None and cap is not None and memory[0] > cap:
            gib, n0 = memory[0] / 2**30, memory[1]
            note = f"projected {gib:.3g} GiB from n={n0} (growth n²) > --max-memory-gib"
            skip = {"note": f"{note} {args.max_memory_gib:g}", "projected_bytes": memory[0]}
        if skip:
            print("ROW " + json.dumps(row | skip | {"status": "skipped"}), flush=True)
            continue
        try:
            kernel = kernel_of(impl, n)
            row |= kernel.info
            resident = rss_bytes("VmRSS")  # what earlier kernels left resident
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
            "rss_own_increase_bytes": None
            if not reset or peak is None or resident is None
            else peak - resident,
            "peak_rss_since": "this kernel's calls" if reset else "the child's start",
            "xla_bytes": None if kernel.program is None else xla_bytes(*kernel.program),
        }
        times_of.setdefault(impl, []).append((n, best))
        own = row["rss_own_increase_bytes"]  # above what the earlier kernels left resident
        if own is not None and own > 0:
            memory_of.setdefault(impl, []).append((n, own))
        print("ROW " + json.dumps(row), flush=True)


def _environment_allocator() -> str:
    """How the environment sets glibc's malloc for a side that does not set it itself."""
    tuned = sorted(k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if not tuned:
        return "system"
    return "environment: " + ", ".join(f"{k}={os.environ[k]}" for k in tuned)


def _projected_memory(done: list[tuple[int, float]], n: int) -> tuple[float, int] | None:
    """(bytes, from which n): the memory at size n projected from the largest size done as n²
    (a kernel's n × n blocks; the measured growth between sizes is too noisy to extrapolate, the
    allocator reusing what it kept); None before any."""
    if not done:
        return None
    n0, m0 = max(done)
    return m0 * (n / n0) ** 2, n0


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
    p.add_argument("--max-memory-gib", type=float, help="skip a size projected to need more")
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
