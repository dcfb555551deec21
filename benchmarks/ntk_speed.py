"""The empirical NTK's time against n: jaxntk's methods, neural-tangents and a hand-written kernel.

The traced kernel K(x, x) (trace_axes=(-1,), 10 outputs), float32, of six models (params from a
fixed key, Gaussian inputs or uniform tokens; `_ntk_runs.py` defines them as plain JAX functions):

- mlp: 784-512-512-10, tanh, no biases (670k params);
- cnn: three 3 × 3 × 32 convolutions (SAME, stride 1), tanh, 16 × 16 × 3 inputs, mean pool,
  dense 10 (19k params);
- flax_cnn: the same as a flax.linen module with biases (Conv and Dense); neural-tangents gets the
  plain-JAX function of the same params pytree;
- resnet: stem convolution, then h + conv(tanh(conv(h))) through tanh, mean pool, dense 10;
- resnet_bn: the resnet with BatchNorm after each convolution, flax.linen, in eval mode: the kernel
  with respect to "params" at the running statistics (the batch statistics of 64 inputs), closed
  over in apply_fn on both sides;
- transformer: flax.linen, tokens (length 16, vocabulary 64) → nn.Embed(64) + learned positions,
  one pre-LayerNorm block (2-head self-attention, MLP 256 with gelu), mean pool, Dense(10)
  (56k params); neural-tangents differentiates the plain-JAX function with integer inputs.

Rows, for n = 64, 128, ..., 2048 (--sizes):

- jaxntk: `jaxntk.ntk.empirical_ntk(apply_fn, params, x, method=m, trace_axes=(-1,))` for m in
  auto, jacobian, products, structured, with what `choose_method` says auto picks and why (before
  `jaxntk.ntk` existed: `jaxntk.spectral.empirical_ntk` with jacobian and products; each row names
  the API it used);
- hand-written (mlp only): Σ_l (H_{l-1} H_{l-1}ᵀ) ∘ mean_c(Δ_lc Δ_lcᵀ), jitted;
- nt 1, nt 2, nt 3: neural-tangents 0.6.5's `empirical_ntk_fn(apply_fn, trace_axes=(-1,),
  vmap_axes=0, implementation=k)`, jitted, in its own virtual environment (jax 0.4.30) that
  --build-nt-venv makes; params and inputs reach it through an npz in --out. A failing
  implementation is a row with its error message.

With --allocator-variants, two more rows per model: auto with JAXNTK_ALLOCATOR=system (jaxntk
without the malloc settings that `jaxntk.configure_allocator()` makes, `jaxntk.host`: what a
library user who does not opt in gets), and neural-tangents with the same settings given to
glibc as environment variables; the table then has a second ratio, auto over neural-tangents
with jaxntk's malloc settings. The jaxntk child opts in (`configure_allocator()`) before it
creates any array, as the `jaxntk` command and every benchmark script do. With
--kernel-variants, one more row per model: auto with JAXNTK_CPU_KERNELS=xla (jaxntk's programs
compiled with XLA's own choice of CPU kernels, YNNPACK on jax 0.10, instead of Eigen's;
`jaxntk.host.cpu_compiler_options`).

Each (model, implementation, n): one call that compiles, then the best of --repeats calls, each
ended by block_until_ready (fewer repeats where they would exceed --max-seconds). A size whose time,
projected from the previous sizes' growth (at least n²), exceeds --max-seconds is skipped and
marked, as is a size whose memory (the peak above what was resident before its calls), projected
the same way, exceeds --max-memory-gib where given (neural-tangents' implementation 2 needs
2.5-10 GB at n = 64-128 on resnet_bn and the transformer); a call still running after
3 × --max-seconds + 60 s is stopped and marked. Each model's rows run in one child process per
side, the sides one after the other, so ratios are same-run.
Memory: the child's peak resident set during the (model, implementation, n) calls (the kernel's
high-water mark reset before them) above the child's resident set after loading, and where a jitted
program is at hand (hand-written, neural-tangents) XLA's memory analysis of it. Every kernel is
compared with jaxntk's "jacobian" kernel of the same model and n (the hand-written one where that
is missing): max |K − K_ref| / max |K_ref|.

Writes to --out: ntk_speed.json (every row, the growth exponents, machine and versions),
ntk_speed.md (the tables), ntk_speed.png (time against n, log-log, a panel per model), inputs/
(the npz files); with --results also appends the section to benchmarks/RESULTS.md and copies the
figure to docs/figures/ntk-speed.png (a run of some of the models: ntk-speed-<models>.png, so that
the guide's figure of the whole set stays).

    python benchmarks/ntk_speed.py --out DIR [--nt-venv PATH | --build-nt-venv] [--results]
        [--sizes 64 128] [--models mlp,cnn] [--methods auto,jacobian] [--nt-impls 1,2,3]
        [--repeats 3] [--max-seconds 120] [--max-memory-gib 8] [--tiny] [--float64] [--save-kernels]
        [--vocab 64]
        [--allocator-variants] [--kernel-variants]
    python benchmarks/ntk_speed.py --out DIR --redraw [--results]   # from DIR/ntk_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import itertools
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _ntk_runs as runs
from _machine import add_output_arguments, cpu_name, write_table

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "figures" / "ntk-speed.png"


def figure_path(doc: dict) -> Path:
    """Where --results copies the figure: FIGURE for every model at the default sizes, else a
    file of its own (the models, and the transformer's vocabulary where it is not the default)."""
    vocab = doc.get("dims", {}).get("vocab", DIMS["full"]["vocab"])
    other = "transformer" in doc["models"] and vocab not in (DIMS["full"]["vocab"], None)
    if set(doc["models"]) >= set(runs.MODELS) and not other:
        return FIGURE
    name = "-".join(doc["models"]).replace("_", "-") + (f"-vocab{vocab}" if other else "")
    return FIGURE.with_name(f"ntk-speed-{name}.png")


NT_REQUIREMENTS = ("jax==0.4.30", "jaxlib==0.4.30", "neural-tangents==0.6.5", "numpy<2")
DEFAULT_NT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxntk-ntvenv"
METHODS = ("auto", "jacobian", "products", "structured")
BEFORE_METHODS = ("jacobian", "products")  # what jaxntk.spectral.empirical_ntk offers
NT_IMPLS = ("1", "2", "3")
SIZES = (64, 128, 256, 512, 1024, 2048)
# (mlp widths, image side, input channels, conv channels, outputs; the transformer's vocabulary,
# sequence length, width, heads and MLP units)
DIMS = {
    "full": dict(
        mlp=(784, 512, 512, 10), side=16, cin=3, channels=32, outputs=10,
        vocab=64, length=16, width=64, heads=2, hidden=256,
    ),
    "tiny": dict(
        mlp=(12, 16, 16, 3), side=5, cin=2, channels=4, outputs=3,
        vocab=7, length=4, width=8, heads=2, hidden=16,
    ),
}  # fmt: skip
TINY_SIZES = (4, 8)
# --allocator-variants: jaxntk's side without its malloc settings, and neural-tangents' side with
# the same settings made through glibc's environment variables (jaxntk.host.ENVIRONMENT)
SYSTEM_MALLOC, JAXNTK_MALLOC = "system malloc", "malloc as jaxntk"
# --kernel-variants: jaxntk's side compiled with XLA's own choice of CPU kernels
XLA_KERNELS = "XLA's CPU kernels"


def init_params(model: str, dims: dict, key) -> dict:
    """Params of `model` as nested dicts: weights N(0, 1/fan_in); the flax models' as flax
    initializes them except their biases N(0, 0.1²) and normalization scales 1 + N(0, 0.1²) (not
    flax's zeros and ones, so that one wrongly applied would change the kernel); resnet_bn's
    running statistics are the batch statistics of 64 Gaussian inputs (one train-mode pass)."""
    keys = iter(jax.random.split(key, 8))

    def dense(fan_in, fan_out):
        return {"kernel": jax.random.normal(next(keys), (fan_in, fan_out)) / np.sqrt(fan_in)}

    def conv(cin, cout):
        w = jax.random.normal(next(keys), (3, 3, cin, cout)) / np.sqrt(9 * cin)
        return {"kernel": w}

    c, out = dims["channels"], dims["outputs"]
    if model == "mlp":
        widths = dims["mlp"]
        return {f"dense_{i}": dense(a, b) for i, (a, b) in enumerate(itertools.pairwise(widths))}
    if model in ("cnn", "resnet"):  # the same shapes; resnet's conv_1, conv_2 form its block
        cins = (dims["cin"], c, c)
        return {**{f"conv_{i}": conv(cin, c) for i, cin in enumerate(cins)}, "dense": dense(c, out)}
    if model == "transformer":
        d = dims
        module = runs.transformer_module(
            d["vocab"], d["length"], d["width"], d["heads"], d["hidden"], out
        )
    else:
        module = (runs.flax_cnn_module if model == "flax_cnn" else runs.resnet_bn_module)(c, out)
    x = sample_inputs(model, dims, 1, next(keys))
    flat = runs.flatten(jax.tree_util.tree_map(np.asarray, dict(module.init(next(keys), x))))
    noise_key = next(keys)
    for i, path in enumerate(flat):
        noise = 0.1 * np.asarray(
            jax.random.normal(jax.random.fold_in(noise_key, i), flat[path].shape)
        )
        if path.endswith("bias"):
            flat[path] = noise
        elif path.endswith("scale"):
            flat[path] = 1.0 + noise
    variables = runs.unflatten(flat)
    if model == "resnet_bn":  # momentum 0: the running statistics become the batch's
        once = runs.resnet_bn_module(c, out, momentum=0.0)
        x = sample_inputs(model, dims, 64, next(keys))
        _, state = once.apply(variables, x, train=True, mutable=["batch_stats"])
        variables["batch_stats"] = jax.tree_util.tree_map(np.asarray, state["batch_stats"])
    return variables


def input_shape(model: str, dims: dict) -> tuple[int, ...]:
    if model == "mlp":
        return (dims["mlp"][0],)
    if model == "transformer":
        return (dims["length"],)
    return (dims["side"], dims["side"], dims["cin"])


def sample_inputs(model: str, dims: dict, n: int, key) -> np.ndarray:
    """n inputs of `model`: Gaussian, or for the transformer tokens uniform in [0, vocab)."""
    shape = (n, *input_shape(model, dims))
    if model == "transformer":
        return np.asarray(jax.random.randint(key, shape, 0, dims["vocab"]), np.int32)
    return np.asarray(jax.random.normal(key, shape))


def write_inputs(
    out: Path, model: str, dims: dict, n: int, float64: bool = False
) -> tuple[Path, float]:
    """Save the model's params and n inputs to out/inputs/<model>.npz; for a flax model, the
    largest |flax apply − plain function| on those inputs in float64 or float32 (0.0 for the
    others)."""
    params = init_params(model, dims, jax.random.PRNGKey(0))
    x = sample_inputs(model, dims, n, jax.random.PRNGKey(1))
    path = out / "inputs" / f"{model}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, **{f"params/{k}": v for k, v in runs.flatten(params).items()})
    gap = 0.0
    if model in runs.FLAX_MODELS:  # in the kernels' precision
        with jax.enable_x64(float64):
            dtype = jnp.float64 if float64 else jnp.float32
            cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
            flax_fn, p = runs.flax_function(model, cast)
            plain_fn, _ = runs.model_function(model, cast)
            xs = x if model == "transformer" else jnp.asarray(x, dtype)
            gap = float(jnp.max(jnp.abs(flax_fn(p, xs) - plain_fn(p, xs))))
    return path, gap


def build_nt_venv(path: Path) -> Path:
    """A virtual environment at `path` with neural-tangents 0.6.5 on jax 0.4.30 (never a
    dependency of jaxntk); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *NT_REQUIREMENTS], check=True)
    return python


def run_child(cmd: list[str], tasks: list[str], hard_cap: float, log: Path, env) -> list[dict]:
    """Rows of `_ntk_runs.py` children (`cmd` + ["--tasks", ...], with --side and --model in
    `cmd`) running `tasks` ("impl:n" each, ascending n per impl): a call overrunning `hard_cap`
    seconds is stopped and marked, its implementation's larger sizes skipped, and a new child
    goes on with the rest. The children's stderr goes to `log`."""
    rows = []
    base = {"model": cmd[cmd.index("--model") + 1], "side": cmd[cmd.index("--side") + 1]}
    while tasks:
        with (
            log.open("a") as err,
            subprocess.Popen(
                [*cmd, "--tasks", ",".join(tasks)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            ) as proc,
        ):
            got, current, killed = _read_rows(proc, hard_cap)
        rows += got
        done = {f"{r['impl']}:{r['n']}" for r in got}
        remaining = [t for t in tasks if t not in done]
        if not remaining:
            break
        if killed:
            note = f"stopped: no result after {hard_cap:.0f} s"
        else:  # the child died: its log has why
            current = current or remaining[0].split(":")
            note = f"the child exited ({proc.returncode}) during this kernel; see {log}"
        impl, n = current[0], int(current[1])
        rows.append({**base, "impl": impl, "n": n, "status": "killed", "note": note, "repeats": 0})
        for t in remaining:
            t_impl, t_n = t.rsplit(":", 1)
            if t_impl == impl and int(t_n) > n:
                skip = f"after the call at n={n} was stopped"
                rows.append(
                    {**base, "impl": impl, "n": int(t_n), "status": "skipped", "note": skip}
                )
        tasks = [t for t in remaining if t.rsplit(":", 1)[0] != impl]
    return rows


def _read_rows(proc, hard_cap: float) -> tuple[list[dict], list[str] | None, bool]:
    """The rows a child prints, the task it was on when it stopped (None between tasks) and
    whether it was killed for printing nothing for `hard_cap` seconds."""
    lines: queue.Queue = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    rows, current, killed = [], None, False
    while True:
        try:
            line = lines.get(timeout=hard_cap)
        except queue.Empty:
            proc.kill()
            killed = True
            break
        if line is None:
            break
        if line.startswith("START "):
            current = line.split()[1:]
        elif line.startswith("ROW "):
            rows.append(json.loads(line[4:]))
            current = None
    proc.wait()
    pump.join()
    return rows, current, killed


def _pump(stream, lines: queue.Queue) -> None:
    """Put the child's lines on the queue, then None at its end (a thread, so that the parent
    can wait for a line with a timeout)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def compare_kernels(rows: list[dict], keep: bool) -> None:
    """Set each ok row's rel_diff (max |K − K_ref| / max |K_ref|) and reference, per (model, n);
    delete the kernel files unless `keep`."""
    ok = [r for r in rows if r["status"] == "ok"]
    for key in sorted({(r["model"], r["n"]) for r in ok}):
        group = [r for r in ok if (r["model"], r["n"]) == key]
        by = {(r["side"], r["impl"]): r for r in group}
        ref = by.get(("jaxntk", "jacobian")) or by.get(("jaxntk", runs.HAND_WRITTEN)) or group[0]
        k_ref = np.load(ref["kernel_path"])
        scale = float(np.max(np.abs(k_ref)))
        for r in group:
            r["reference"] = label(ref)
            r["rel_diff"] = float(np.max(np.abs(np.load(r["kernel_path"]) - k_ref)) / scale)
    if not keep:
        for r in ok:
            Path(r["kernel_path"]).unlink(missing_ok=True)
            r.pop("kernel_path")


def label(row: dict) -> str:
    base = f"nt {row['impl']}" if row["side"] == "nt" else row["impl"]
    return f"{base}, {row['variant']}" if row.get("variant") else base


def growth(rows: list[dict]) -> dict:
    """Per model and implementation: the slope of log time against log n over every measured
    size ("all") and over the last doubling ("last")."""
    out = {}
    for model, impl in sorted({(r["model"], label(r)) for r in rows}):
        pts = sorted(
            (r["n"], r["seconds"])
            for r in rows
            if r["model"] == model and label(r) == impl and r["status"] == "ok"
        )
        if len(pts) < 2:
            continue
        n, t = np.log([p[0] for p in pts]), np.log([max(p[1], 1e-9) for p in pts])
        last = (t[-1] - t[-2]) / (n[-1] - n[-2])
        out.setdefault(model, {})[impl] = {
            "all": round(float(np.polyfit(n, t, 1)[0]), 2),
            "last": round(float(last), 2),
            "sizes": [p[0] for p in pts],
        }
    return out


def figure(rows: list[dict], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(models))
    lines = -(-len(models) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 3.8 * lines), squeeze=False)
    impls = sorted({label(r) for r in rows}, key=lambda s: (s.startswith("nt"), s))
    palette = plt.cm.tab20.colors if len(impls) > 10 else plt.cm.tab10.colors
    colors = {impl: palette[i % len(palette)] for i, impl in enumerate(impls)}
    for ax in axes.flat[len(models) :]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models, strict=False):
        for impl in impls:
            mine = sorted(
                (r for r in rows if r["model"] == model and label(r) == impl), key=lambda r: r["n"]
            )
            ok = [r for r in mine if r["status"] == "ok"]
            style = "--" if impl.startswith("nt") else "-"
            if ok:
                ax.plot(
                    [r["n"] for r in ok],
                    [r["seconds"] for r in ok],
                    style,
                    marker="o",
                    color=colors[impl],
                    label=impl,
                )
            stopped = [r for r in mine if r["status"] in ("skipped", "killed")]
            if stopped and ok:  # at the projected time where there is one, else the last reached
                ax.plot(
                    [r["n"] for r in stopped],
                    [r.get("projected_seconds", ok[-1]["seconds"]) for r in stopped],
                    "x",
                    color=colors[impl],
                )
        ax.set(xscale="log", yscale="log", xlabel="n", title=model)
        sizes = sorted({r["n"] for r in rows if r["model"] == model})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("seconds (best of repeats)")
    handles = {}
    for ax in axes.flat:
        handles |= dict(zip(*ax.get_legend_handles_labels()[::-1], strict=True))
    ncol = min(len(handles), 5)  # rows of at most 5 entries: every label stays on the page
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(
        "Traced empirical NTK K(x, x); x: skipped (at its projected time) or stopped", fontsize=9
    )
    fig.tight_layout(rect=(0, 0.025 * (1 + -(-len(handles) // ncol)), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    return f"{row['seconds']:.3g}"


def _memory(row: dict | None) -> str:
    if row is None or row["status"] != "ok":
        return ""
    rss = row.get("rss_increase_bytes")
    text = "—" if rss is None else f"{rss / 2**20:.0f}"
    xla = row.get("xla_bytes")
    return text if xla is None else f"{text} [{xla / 2**20:.0f}]"


def markdown(doc: dict) -> str:
    rows, models = doc["rows"], doc["models"]
    impls = sorted({label(r) for r in rows}, key=lambda s: (s.startswith("nt"), s))
    variants = [None, *sorted({r.get("variant") for r in rows if r["side"] == "nt"} - {None})]
    heads = ["auto / best nt" + (f", {v}" if v else "") for v in variants]
    lines = [
        "| model | n | " + " | ".join(impls + heads) + " | max rel. diff |",
        "|---|---|" + "---|" * (len(impls) + len(heads)) + "---|",
    ]
    for model in models:
        for n in sorted({r["n"] for r in rows if r["model"] == model}):
            here = {label(r): r for r in rows if r["model"] == model and r["n"] == n}
            auto = here.get("auto", {}).get("seconds")
            ratios = [_ratio(auto, here, variant) for variant in variants]
            diffs = [r["rel_diff"] for r in here.values() if "rel_diff" in r]
            cells = [*(_cell(here.get(i)) for i in impls), *ratios]
            cells.append(f"{max(diffs):.1e}" if diffs else "")
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
    sizes = sorted({r["n"] for r in rows})
    lines += ["", "Growth exponent of time in n, slope of log t against log n (all sizes; last"]
    lines += [
        "doubling):",
        "",
        "| model | " + " | ".join(impls) + " |",
        "|---|" + "---|" * len(impls),
    ]
    for model in models:
        by_impl = doc["growth"].get(model, {})
        cells = [
            f"{by_impl[i]['all']:.2f}; {by_impl[i]['last']:.2f}" if i in by_impl else ""
            for i in impls
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak memory, MiB: the resident set during a kernel's calls above the child's after",
    ]
    lines += [
        "loading (in brackets: XLA's memory analysis of the jitted program, where there is one):"
    ]
    lines += ["", "| model | impl | " + " | ".join(f"n={n}" for n in sizes) + " |"]
    lines += ["|---|---|" + "---|" * len(sizes)]
    for model in models:
        for impl in impls:
            here = {r["n"]: r for r in rows if (r["model"], label(r)) == (model, impl)}
            if not any(r["status"] == "ok" for r in here.values()):
                continue
            cells = [_memory(here.get(n)) for n in sizes]
            lines.append(f"| {model} | {impl} | " + " | ".join(cells) + " |")
    autos = [r for r in rows if r["impl"] == "auto" and "choice" in r and not r.get("variant")]
    if autos:
        lines += ["", "What auto picked (method, examples per block, features resident; why):", ""]
        lines += [f"- {r['model']}, n={r['n']}: {_choice(r['choice'])}" for r in autos]
    notes = [r for r in rows if r["status"] in ("failed", "killed", "skipped") and r.get("note")]
    if notes:
        lines += ["", "Not measured:", ""]
        lines += [f"- {r['model']} {label(r)} n={r['n']}: {r['note']}" for r in notes]
    return "\n".join(lines) + "\n"


def _ratio(auto: float | None, here: dict, variant: str | None) -> str:
    """auto's time over the best neural-tangents row of this variant (None: as installed)."""
    nt = [
        r["seconds"]
        for r in here.values()
        if r["side"] == "nt" and r.get("variant") == variant and "seconds" in r
    ]
    return f"{auto / min(nt):.2f}" if auto and nt else ""


def _choice(choice: dict) -> str:
    budget = choice.get("memory_budget")
    text = f"{choice.get('method')}, {choice.get('batch_size')} per block"
    if budget:
        text += f" (budget {budget / 2**30:.1f} GiB)"
    text += ", resident" if choice.get("resident") else ", recomputed"
    return text + f"; {choice.get('reason')}"


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "backend": jax.default_backend(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def versions(nt_python: str | None) -> dict:
    out = {"python": platform.python_version()}
    out |= {name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "numpy")}
    if nt_python:
        probe = "import jax, jaxlib, numpy, neural_tangents as nt; print(jax.__version__, "
        probe += "jaxlib.__version__, numpy.__version__, nt.__version__)"
        done = subprocess.run(
            [nt_python, "-c", probe], capture_output=True, text=True, env=_nt_env()
        )
        words = done.stdout.split()
        if done.returncode == 0 and len(words) == 4:
            out["nt_side"] = dict(
                zip(("jax", "jaxlib", "numpy", "neural_tangents"), words, strict=True)
            )
    return out


def _nt_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "3"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", help=f"values of n (default {SIZES})")
    p.add_argument("--models", default=",".join(runs.MODELS), help="comma-separated models")
    p.add_argument("--methods", help=f"comma-separated jaxntk methods (default {METHODS})")
    p.add_argument("--nt-impls", default=",".join(NT_IMPLS), help="neural-tangents impls")
    p.add_argument("--nt-sizes", type=int, nargs="+", help="n for the nt side (default --sizes)")
    p.add_argument("--nt-venv", type=Path, help="virtual environment with neural-tangents")
    p.add_argument(
        "--build-nt-venv", action="store_true", help=f"build it (default {DEFAULT_NT_VENV})"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=120.0, help="time cap of one call")
    p.add_argument(
        "--max-memory-gib",
        type=float,
        help="skip a size whose memory, projected from the smaller sizes, exceeds this",
    )
    p.add_argument("--tiny", action="store_true", help="tiny widths and n = 4, 8 (for the tests)")
    p.add_argument("--vocab", type=int, help="the transformer's vocabulary (default 64)")
    p.add_argument("--float64", action="store_true", help="float64 kernels (for the tests)")
    p.add_argument("--save-kernels", action="store_true", help="keep DIR/kernels/*.npy")
    p.add_argument(
        "--allocator-variants",
        action="store_true",
        help="also auto with JAXNTK_ALLOCATOR=system and neural-tangents with jaxntk's malloc "
        "settings (as environment variables)",
    )
    p.add_argument(
        "--kernel-variants",
        action="store_true",
        help="also auto with JAXNTK_CPU_KERNELS=xla (XLA's own choice of CPU kernels)",
    )
    p.add_argument(
        "--redraw",
        action="store_true",
        help="measure nothing: the figure and tables again from DIR/ntk_speed.json",
    )
    add_output_arguments(p)
    args = p.parse_args(argv)
    if args.redraw:
        return report(json.loads((args.out / "ntk_speed.json").read_text()), args.out, args.results)
    models = [m.strip() for m in args.models.split(",")]
    if set(models) - set(runs.MODELS):
        p.error(f"--models: unknown {sorted(set(models) - set(runs.MODELS))}; from {runs.MODELS}")
    engine = importlib.util.find_spec("jaxntk.ntk") is not None
    methods = args.methods.split(",") if args.methods else METHODS if engine else BEFORE_METHODS
    sizes = sorted(args.sizes or (TINY_SIZES if args.tiny else SIZES))
    nt_sizes = sorted(args.nt_sizes or sizes)
    dims = DIMS["tiny" if args.tiny else "full"]
    if args.vocab is not None:
        dims = dims | {"vocab": args.vocab}
    nt_python = None
    if args.build_nt_venv:
        nt_python = str(build_nt_venv(args.nt_venv or DEFAULT_NT_VENV))
    elif args.nt_venv:
        nt_python = str(args.nt_venv / "bin" / "python")
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    common = ["--repeats", str(args.repeats), "--max-seconds", str(args.max_seconds)]
    if args.max_memory_gib is not None:
        common += ["--max-memory-gib", str(args.max_memory_gib)]
    common += ["--kernels", str(out / "kernels")] + (["--float64"] if args.float64 else [])
    hard_cap = 3 * args.max_seconds + 60
    t_start = time.perf_counter()
    rows, flax_gaps = [], {}
    for model in models:
        path, gap = write_inputs(out, model, dims, max(sizes + nt_sizes), args.float64)
        if model in runs.FLAX_MODELS:
            flax_gaps[model] = gap
        argv_model = ["--model", model, "--inputs", str(path), *common]
        impls = list(methods) + ([runs.HAND_WRITTEN] if model == "mlp" else [])
        tasks = [f"{m}:{n}" for m in impls for n in sizes]
        log = out / "logs" / f"{model}.log"
        child = [str(Path(runs.__file__)), *argv_model]
        rows += run_child([sys.executable, *child, "--side", "jaxntk"], tasks, hard_cap, log, None)
        variants = [(SYSTEM_MALLOC, {"JAXNTK_ALLOCATOR": "system"})] * args.allocator_variants
        variants += [(XLA_KERNELS, {"JAXNTK_CPU_KERNELS": "xla"})] * args.kernel_variants
        for variant, setting in variants:  # auto again, in a child with that setting
            auto = [f"auto:{n}" for n in sizes]
            env = os.environ | setting
            got = run_child([sys.executable, *child, "--side", "jaxntk"], auto, hard_cap, log, env)
            rows += [r | {"variant": variant} for r in got]
        if nt_python:
            tasks = [f"{k}:{n}" for k in args.nt_impls.split(",") for n in nt_sizes]
            rows += run_child([nt_python, *child, "--side", "nt"], tasks, hard_cap, log, _nt_env())
            if args.allocator_variants:
                from jaxntk.host import ENVIRONMENT  # only here: runs before the engine lack it

                env = _nt_env() | ENVIRONMENT
                got = run_child([nt_python, *child, "--side", "nt"], tasks, hard_cap, log, env)
                rows += [r | {"variant": JAXNTK_MALLOC} for r in got]
        print(f"{model}: done at {time.perf_counter() - t_start:.0f} s", flush=True)
    compare_kernels(rows, args.save_kernels)
    doc = {
        "machine": machine(),
        "versions": versions(nt_python),
        "engine": "jaxntk.ntk" if engine else "jaxntk.spectral (before the engine)",
        "models": models,
        "sizes": sizes,
        "nt_sizes": nt_sizes if nt_python else [],
        "dtype": "float64" if args.float64 else "float32",
        "dims": dims,
        "repeats": args.repeats,
        "max_seconds": args.max_seconds,
        "max_memory_gib": args.max_memory_gib,
        "flax_vs_plain_max_abs_diff": max(flax_gaps.values()) if flax_gaps else None,
        "flax_vs_plain_by_model": flax_gaps,
        "rows": rows,
        "growth": growth(rows),
        "total_seconds": time.perf_counter() - t_start,
    }
    (out / "ntk_speed.json").write_text(json.dumps(doc, indent=1))
    return report(doc, out, args.results)


def report(doc: dict, out: Path, results: bool) -> dict:
    """The figure, the tables (printed, in out and with `results` in RESULTS.md) of a run's doc."""
    figure(doc["rows"], doc["models"], out / "ntk_speed.png")
    table = markdown(doc)
    print(table)
    write_table(out, "ntk_speed", section(doc, table), results)
    if results:
        shutil.copyfile(out / "ntk_speed.png", figure_path(doc))
    return doc


def section(doc: dict, table: str) -> str:
    mach, ver = doc["machine"], doc["versions"]
    nt = ver.get("nt_side")
    nt_text = (
        f"; neural-tangents {nt['neural_tangents']} on jax {nt['jax']}, numpy {nt['numpy']}"
        if nt
        else "; neural-tangents not run"
    )
    return (
        f"\n## Empirical NTK against neural-tangents (benchmarks/ntk_speed.py, {mach['when']})\n\n"
        f"Traced kernel K(x, x), {doc['dtype']}, seconds (best of {doc['repeats']} after a "
        f"compile call; cap {doc['max_seconds']:g} s a call); engine {doc['engine']}. Machine: "
        f"{mach['cpu']}, {mach['cores']} cores, backend {mach['backend']}, load average "
        f"{', '.join(map(str, mach['load_average']))} at the end; Python {ver['python']}, jax "
        f"{ver['jax']}, flax {ver['flax']}{nt_text}. Figure: "
        f"{figure_path(doc).relative_to(ROOT)}. Total {doc['total_seconds'] / 60:.1f} min."
        + (
            f" The transformer's vocabulary: {doc['dims']['vocab']} tokens."
            if "transformer" in doc["models"] and "dims" in doc
            else ""
        )
        + "\n\n"
        + table
    )


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
