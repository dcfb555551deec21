"""The empirical NTK of the MNIST-1D CNN by jaxntk and by nngeometry 0.4 (PyTorch), side by side.

The model: `jaxntk.experiments._mnist1d.CNN1D` (25 channels; convolutions of kernel 5, 3, 3,
stride 2, padding 1, each followed by the activation; Dense(10) on the 125 flattened features:
5210 parameters), activation gelu in its tanh form (flax's `nn.gelu` default, torch's
`F.gelu(approximate="tanh")`: the same formula on both sides; torch's default gelu is the erf
form), on the first n training signals of `jaxntk.data.mnist1d` (n, 40). The flax parameters
(PRNGKey(0)) reach the torch model through `--out/inputs.npz`: conv kernels (W, in, out) to
(out, in, W), the dense kernel (in, out) to (out, in) with its rows reordered from flax's
(position, channel) flattening to torch's (channel, position). The torch child checks that its
outputs equal the saved flax outputs (float32, relative 1e-5) before it measures anything.

For each n of --sizes, two kernel forms:

- full: `jaxntk.empirical_ntk(apply, params, x, trace_axes=())`, shape (n, n, 10, 10), against
  nngeometry's `GramMatrix(model, loader)` (an `FMatDense` from the
  `TorchHooksJacobianBackend`'s `get_gram_matrix`), whose `.data` is (10, n, 10, n):
  G[a, i, b, j] = ⟨∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ⟩, compared after a transpose. The loader is
  a `DataLoader` of one batch of n examples (what nngeometry makes from a tuple of tensors;
  --ng-batch-size sets another).
- traced: (1/10) Σ_a K[i, j, a, a], (n, n): jaxntk computes it directly
  (`trace_axes=(-1,)`); nngeometry has no traced kernel (its `implicit_trace` is the scalar
  trace of the Fisher matrix), so its traced row is its full Gram matrix plus the diagonal sum
  `einsum("aiaj->ij") / 10`: its time is the full call's plus the sum's (best of each).

Each side runs in a child process of its own for each n and form (nngeometry: one child for
both forms), so that its peak resident memory is that computation's: the high-water mark of the
child's own address space (VmHWM), not ru_maxrss, which in a child started by exec also holds
its parent's peak when larger (this script's parent, with JAX started: about 0.5 GB; both are
in the JSON). Times are
wall-clock seconds of one call after a warm-up call (jaxntk's first call compiles; the result
ended by `jax.block_until_ready`), best of --repeats. Torch runs with
`torch.set_num_threads(cores)`, the cores this process may use (`os.sched_getaffinity`); XLA's CPU
backend uses them all by default. The values: ‖K_nngeometry − K_jaxntk‖_F / ‖K_jaxntk‖_F on each
form (float32 on both sides: 2e-7 full, 1.5e-7 traced, at every n here). The children pass
their kernels through `--out/kernels/`, removed after the comparison unless --keep-kernels. A
size whose nngeometry call is projected (∝ n², from the size before) to take more than
--ng-max-seconds for its warm-up and repeats is skipped and said so.

nngeometry runs in a virtual environment of its own, never a dependency of jaxntk:
`--build-ng-venv [PATH]` makes one (default ~/.cache/jaxntk-ngvenv) with numpy, torch 2.13.0
and nngeometry 0.4, installed without its declared dependencies: torch is there, and
torchvision, which nngeometry never imports, is built on PyPI for PyPI's CUDA torch.
`--ng-venv PATH` uses an existing one.
Where pip can take a CPU build of torch (PyTorch's own index, given as
`--torch-index https://download.pytorch.org/whl/cpu`, or a local wheel of torch 2.13.0+cpu that
pip is set up to find: a 192 MB wheel), the venv is about 1 GB; PyPI's own torch 2.13.0 for
Linux x86_64 is the CUDA build (a 527 MB wheel, and the CUDA 13 libraries it requires:
cuda-toolkit, nvidia-cudnn-cu13, nvidia-nccl-cu13, triton, several GB), which runs on the CPU
all the same. Usage, from the repository root:

    python benchmarks/nngeometry_side.py --out DIR (--ng-venv PATH | --build-ng-venv [PATH])
        [--sizes 250 500 1000 2000] [--repeats 2] [--ng-max-seconds 180] [--keep-kernels]

The defaults take 3 min on 2 cores (nngeometry's full Gram matrix: 21 s at n = 2000).

It writes `DIR/nngeometry-side.json` (every figure, the machine, the versions, the date) and
`DIR/nngeometry-side.md` (the table, also printed), and nothing outside DIR (--results also
appends the table to benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = (250, 500, 1000, 2000)
FORMS = ("full", "traced")
CLASSES = 10
CHANNELS = 25
ACTIVATION = "gelu"  # flax's nn.gelu (tanh form) = torch's F.gelu(approximate="tanh")
OUTPUT_RTOL = 1e-5  # torch outputs against the saved flax outputs, max |diff| / max |flax|
TORCH_REQUIREMENT = "torch==2.13.0"
NG_REQUIREMENT = "nngeometry==0.4"
DEFAULT_NG_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxntk-ngvenv"
NAME = "nngeometry-side"
CONV_LAYERS = ("Conv_0", "Conv_1", "Conv_2")


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def peak_resident() -> dict:
    """This process's peak resident memory in bytes: "peak_bytes", the high-water mark of its
    own address space (VmHWM of /proc/self/status; ru_maxrss where there is no /proc), and
    "ru_maxrss_bytes". A process started by exec inherits in ru_maxrss the high-water mark of
    the process it was forked from when that is larger (Linux keeps the maximum across exec):
    a child of a parent that has imported JAX reports at least the parent's peak there."""
    maxrss = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as fh:
            hwm = [line.split()[1] for line in fh if line.startswith("VmHWM:")]
    except OSError:
        hwm = []
    return {"peak_bytes": 1024 * int(hwm[0]) if hwm else maxrss, "ru_maxrss_bytes": maxrss}


# ------------------------------------------------------------------------ checks at the door


def check_sizes(sizes) -> list[int]:
    """The sizes, checked and sorted: ints ≥ 1 whose full kernels, one per side, fit in a third
    of the machine's memory each. ValueError naming --sizes otherwise."""
    if not sizes:
        raise ValueError("--sizes: give at least one n")
    bad = [n for n in sizes if not isinstance(n, int) or isinstance(n, bool) or n < 1]
    if bad:
        raise ValueError(f"--sizes: each n must be an int ≥ 1, got {bad}")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for n in sizes:
        kernel = 4 * (CLASSES * n) ** 2
        if 3 * kernel > memory:
            raise ValueError(
                f"--sizes: at n = {n} the full float32 kernel is {kernel / 2**30:.1f} GiB, more "
                f"than a third of this machine's {memory / 2**30:.1f} GiB"
            )
    return sorted(set(sizes))


def ng_python(venv: Path) -> Path:
    """The python of nngeometry's virtual environment; SystemExit if it is not one with torch
    and nngeometry."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        raise SystemExit(
            f"--ng-venv {venv}: no virtual environment there ({python} is missing); make one "
            "with --build-ng-venv [PATH]"
        )
    done = subprocess.run(
        [str(python), "-c", "import nngeometry, torch"],
        capture_output=True,
        text=True,
        env=_ng_env(),
    )
    if done.returncode != 0:
        raise SystemExit(
            f"--ng-venv {venv}: its python cannot import nngeometry and torch "
            f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no message'});"
            " rebuild it with --build-ng-venv PATH"
        )
    return python


def build_ng_venv(path: Path, torch_index: str | None = None) -> Path:
    """A virtual environment at `path` with numpy, torch 2.13.0 (from `torch_index` when given)
    and nngeometry 0.4 without its declared dependencies (torch is there; torchvision is never
    imported by it); returns its python. Never a dependency of jaxntk."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(Path(path) / "bin" / "python"), "-m", "pip", "install", "-q"]
    index = ["--index-url", torch_index] if torch_index else []
    subprocess.run([*pip, "numpy"], check=True)
    subprocess.run([*pip, TORCH_REQUIREMENT, *index], check=True)
    subprocess.run([*pip, "--no-deps", NG_REQUIREMENT], check=True)
    return ng_python(path)


def _ng_env() -> dict:
    """The environment of nngeometry's children: this one without PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# ------------------------------------------------------------------------------ the inputs


def torch_layout(params: dict) -> dict[str, np.ndarray]:
    """The flax CNN1D's parameters as the torch model's state dict (numpy arrays): conv kernels
    (W, in, out) → (out, in, W); the dense kernel (in, out) → (out, in), its inputs reordered
    from flax's flattening of (position, channel) to torch's of (channel, position)."""
    p = params["params"]
    state = {}
    for i, name in enumerate(CONV_LAYERS):
        state[f"conv{i}.weight"] = np.ascontiguousarray(np.transpose(p[name]["kernel"], (2, 1, 0)))
        state[f"conv{i}.bias"] = np.asarray(p[name]["bias"])
    kernel = np.asarray(p["Dense_0"]["kernel"])  # (positions · channels, classes)
    positions = kernel.shape[0] // CHANNELS
    kernel = kernel.reshape(positions, CHANNELS, -1).transpose(1, 0, 2).reshape(kernel.shape)
    state["dense.weight"] = np.ascontiguousarray(kernel.T)
    state["dense.bias"] = np.asarray(p["Dense_0"]["bias"])
    return state


def flax_model():
    from jaxntk.experiments._mnist1d import CNN1D

    return CNN1D(channels=CHANNELS, classes=CLASSES, activation=ACTIVATION)


def make_inputs(out: Path, n_max: int) -> Path:
    """`out/inputs.npz`: the first n_max MNIST-1D training signals (n_max, 40), the flax CNN's
    parameters at PRNGKey(0) in both layouts, and its outputs on the signals."""
    import jax

    from jaxntk.data import mnist1d

    x = np.asarray(mnist1d(n_train=n_max, n_test=1, cache_dir=False).x_train, np.float32)
    module = flax_model()
    params = module.init(jax.random.PRNGKey(0), x[:1])
    outputs = np.asarray(module.apply(params, x))
    arrays = {"x": x, "outputs": outputs}
    for layer, leaves in params["params"].items():
        for leaf, value in leaves.items():
            arrays[f"flax/{layer}/{leaf}"] = np.asarray(value)
    arrays |= {f"torch/{k}": v for k, v in torch_layout(params).items()}
    path = out / "inputs.npz"
    np.savez(path, **arrays)
    return path


def load_flax(path: Path, n: int, dtype=np.float32):
    """(params, x[:n]) from inputs.npz, as jax arrays of `dtype`."""
    import jax.numpy as jnp

    tree: dict = {}
    with np.load(path) as data:
        for key in data.files:
            if key.startswith("flax/"):
                _, layer, leaf = key.split("/")
                tree.setdefault(layer, {})[leaf] = jnp.asarray(data[key], dtype)
        x = jnp.asarray(data["x"][:n], dtype)
    return {"params": tree}, x


# ------------------------------------------------------------------------------- the children


def _best(call, repeats: int, block=lambda r: r):
    """(result, first-call seconds, best seconds of `repeats` calls after it). Each call's
    result is let go before the next call, so that the peak memory is one call's."""
    t0 = time.perf_counter()
    result = block(call())
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        result = None
        t0 = time.perf_counter()
        result = block(call())
        best = min(best, time.perf_counter() - t0)
    return result, first, best


def jaxntk_side(path: Path, n: int, form: str, repeats: int, dtype=np.float32):
    """jaxntk's kernel of `form` on the first n signals: (row, kernel as numpy)."""
    import jax

    import jaxntk as jn
    from jaxntk.ntk import choose_method

    params, x = load_flax(path, n, dtype)
    apply = flax_model().apply
    trace_axes = () if form == "full" else (-1,)

    def call():
        return jn.empirical_ntk(apply, params, x, trace_axes=trace_axes)

    kernel, first, best = _best(call, repeats, jax.block_until_ready)
    choice = choose_method(apply, params, x, trace_axes=trace_axes)
    row = {"seconds": best, "first_seconds": first, "shape": list(kernel.shape)}
    row |= {"method": choice.method, "reason": choice.reason}
    return row, np.asarray(kernel)


def torch_model(state: dict):
    """The CNN in torch (NCW), its parameters from `state` (numpy arrays, `torch_layout`)."""
    from collections import OrderedDict

    import torch
    from torch import nn

    layers, channels = [], 1
    for i, width in enumerate((5, 3, 3)):
        layers.append((f"conv{i}", nn.Conv1d(channels, CHANNELS, width, stride=2, padding=1)))
        layers.append((f"act{i}", nn.GELU(approximate="tanh")))
        channels = CHANNELS
    positions = state["dense.weight"].shape[1] // CHANNELS
    layers.append(("flatten", nn.Flatten()))
    layers.append(("dense", nn.Linear(CHANNELS * positions, CLASSES)))
    model = nn.Sequential(OrderedDict(layers))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def ng_side(path: Path, n: int, repeats: int, batch_size: int | None, kernels: Path) -> dict:
    """nngeometry's Gram matrix on the first n signals (in nngeometry's venv): the rows of both
    forms; the kernels written to `kernels/`."""
    import torch
    from nngeometry import GramMatrix
    from torch.utils.data import DataLoader, TensorDataset

    threads = cores()
    torch.set_num_threads(threads)
    with np.load(path) as data:
        state = {k[len("torch/") :]: data[k] for k in data.files if k.startswith("torch/")}
        x_np, flax_out = data["x"][:n], data["outputs"][:n]
    model = torch_model(state)
    x = torch.from_numpy(np.ascontiguousarray(x_np[:, None, :]))  # (n, 1 channel, 40)
    with torch.no_grad():
        out = model(x).numpy()
    gap = float(np.max(np.abs(out - flax_out)) / np.max(np.abs(flax_out)))
    if not gap <= OUTPUT_RTOL:
        raise SystemExit(f"the torch outputs differ from flax's by {gap:.2e} (relative)")
    loader = DataLoader(TensorDataset(x), batch_size=batch_size or n)

    def gram():
        return GramMatrix(model, loader).data

    full, first, best = _best(gram, repeats)
    traced, _, reduction = _best(lambda: torch.einsum("aiaj->ij", full) / CLASSES, repeats)
    np.save(kernels / f"nngeometry-full-{n}.npy", full.numpy())
    np.save(kernels / f"nngeometry-traced-{n}.npy", traced.numpy())
    base = {"first_seconds": first, "output_gap": gap, "threads": threads}
    return {
        "full": {**base, "seconds": best, "shape": list(full.shape)},
        "traced": {
            **base,
            "seconds": best + reduction,
            "reduction_seconds": reduction,
            "shape": list(traced.shape),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "nngeometry": metadata.version("nngeometry"),
            "numpy": np.__version__,
        },
    }


def _child(args) -> dict:
    n, kernels = args.n, args.out / "kernels"
    if args.child == "nngeometry":
        return ng_side(args.data, n, args.repeats, args.ng_batch_size, kernels)
    row, kernel = jaxntk_side(args.data, n, args.child, args.repeats)
    np.save(kernels / f"jaxntk-{args.child}-{n}.npy", kernel)
    return row


def run_child(python: str, kind: str, n: int, args, env: dict) -> dict:
    """One child's JSON row, with its peak resident memory in bytes, or {"error": ...}."""
    cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--n", str(n)]
    cmd += ["--data", str(args.out / "inputs.npz"), "--out", str(args.out)]
    cmd += ["--repeats", str(args.repeats)]
    if args.ng_batch_size:
        cmd += ["--ng-batch-size", str(args.ng_batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: " + (done.stdout + done.stderr)[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the comparison


def relative_difference(ng: np.ndarray, ours: np.ndarray) -> float:
    """‖ng − ours‖_F / ‖ours‖_F in float64, nngeometry's full kernel (c, n, c, n) read in
    jaxntk's layout (n, n, c, c); traced kernels (n, n) as they are. Row blocks at a time."""
    if ng.ndim == 4:
        ng = ng.transpose(1, 3, 0, 2)
    if ng.shape != ours.shape:
        raise ValueError(f"kernel shapes differ: {ng.shape} and {ours.shape}")
    num = den = 0.0
    for start in range(0, ours.shape[0], 64):
        a = np.asarray(ng[start : start + 64], np.float64)
        b = np.asarray(ours[start : start + 64], np.float64)
        num += float(np.sum((a - b) ** 2))
        den += float(np.sum(b**2))
    return math.sqrt(num / den)


def compare(kernels: Path, n: int, form: str, keep: bool) -> float | None:
    paths = [kernels / f"{side}-{form}-{n}.npy" for side in ("nngeometry", "jaxntk")]
    if not all(p.exists() for p in paths):
        return None
    ng, ours = (np.load(p, mmap_mode="r") for p in paths)
    diff = relative_difference(ng, ours)
    del ng, ours
    if not keep:
        for p in paths:
            p.unlink()
    return diff


# ------------------------------------------------------------------------------ the report


def _seconds(row: dict | None) -> str:
    if not row or "seconds" not in row:
        return "—"
    s = row["seconds"]
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"


def _mib(row: dict | None) -> str:
    if not row or not row.get("peak_bytes"):
        return "—"
    return f"{row['peak_bytes'] / 2**20:.0f}"


def markdown(doc: dict) -> str:
    m, v = doc["machine"], doc["versions"]
    ng = v.get("ng_side", {})
    lines = [
        f"\n## Empirical NTK against nngeometry (benchmarks/nngeometry_side.py, {doc['when']})\n"
    ]
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average']} at the start"
        f" ({m.get('load_average_end', '—')} at the end); jax {v['jax']}, flax {v['flax']}; "
        f"torch {ng.get('torch', '—')} "
        f"({doc['settings']['torch_threads']} threads), nngeometry {ng.get('nngeometry', '—')}. "
        f"The MNIST-1D CNN (5210 parameters, 10 outputs, gelu), float32; best of "
        f"{doc['settings']['repeats']} calls after a warm-up. nngeometry's traced kernel is its "
        "full Gram matrix and a diagonal sum. Ratio: nngeometry's seconds over jaxntk's; "
        "rel. difference: ‖K_nngeometry − K_jaxntk‖_F / ‖K_jaxntk‖_F.\n"
    )
    lines.append(
        "| n | kernel | jaxntk (s) | nngeometry (s) | ratio | rel. difference "
        "| jaxntk peak (MiB) | nngeometry peak (MiB) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in doc["rows"]:
        ours, theirs = row.get("jaxntk"), row.get("nngeometry")
        ratio = "—" if row.get("ratio") is None else f"{row['ratio']:.1f}"
        diff = "—" if row.get("rel_diff") is None else f"{row['rel_diff']:.1e}"
        lines.append(
            f"| {row['n']} | {row['form']} | {_seconds(ours)} | {_seconds(theirs)} | {ratio} | "
            f"{diff} | {_mib(ours)} | {_mib(theirs)} |"
        )
    for note in doc.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict, out: Path, results: bool = False) -> str:
    """`out/nngeometry-side.json` and `out/nngeometry-side.md` (appended to
    benchmarks/RESULTS.md only when `results`); returns the table."""
    sys.path.insert(0, str(HERE))
    from _machine import write_table

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(doc, indent=1))
    text = markdown(doc)
    write_table(out, NAME, text, results)
    return text


def machine() -> dict:
    sys.path.insert(0, str(HERE))
    from _machine import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": cores(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    return out | {k: metadata.version(k) for k in ("jax", "jaxlib", "flax", "numpy", "jaxntk")}


# ------------------------------------------------------------------------------------ main


def _row(n: int, form: str, ours: dict | None, theirs: dict | None, diff) -> dict:
    ok = ours and theirs and "seconds" in ours and "seconds" in theirs
    ratio = theirs["seconds"] / ours["seconds"] if ok else None
    return {
        "n": n,
        "form": form,
        "jaxntk": ours,
        "nngeometry": theirs,
        "ratio": ratio,
        "rel_diff": diff,
    }


def measure(args, ng: str) -> tuple[list[dict], list[str], dict]:
    """Every size's children in turn: (rows, notes, nngeometry's versions)."""
    kernels = args.out / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    rows, notes, ng_versions, last = [], [], {}, None
    for n in args.sizes:
        ours = {form: run_child(sys.executable, form, n, args, env) for form in FORMS}
        for form, got in ours.items():
            if "error" in got:
                notes.append(f"n = {n}: jaxntk's {form} kernel failed: {got['error'][-500:]}")
        theirs: dict = {}
        projected = None if last is None else last[1] * (n / last[0]) ** 2 * (1 + args.repeats)
        if projected is not None and projected > args.ng_max_seconds:
            notes.append(
                f"n = {n}: nngeometry skipped, its {1 + args.repeats} calls projected at "
                f"{projected:.0f} s (∝ n² from n = {last[0]}), over --ng-max-seconds "
                f"{args.ng_max_seconds:g}."
            )
        else:
            got = run_child(ng, "nngeometry", n, args, _ng_env())
            if "error" in got:
                notes.append(f"n = {n}: nngeometry failed: {got['error'][-500:]}")
            else:
                peak = {k: got.pop(k) for k in ("peak_bytes", "ru_maxrss_bytes")}
                ng_versions = got.pop("versions")
                theirs = {form: got[form] | peak for form in FORMS}
                last = (n, theirs["full"]["seconds"])
        for form in FORMS:
            diff = compare(kernels, n, form, args.keep_kernels)
            rows.append(_row(n, form, ours[form], theirs.get(form), diff))
            print(json.dumps(rows[-1]), flush=True)
    if not args.keep_kernels and not any(kernels.iterdir()):
        kernels.rmdir()
    return rows, notes, ng_versions


def _arguments(argv):
    sys.path.insert(0, str(HERE))
    from _machine import add_output_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(p)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="values of n")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up")
    p.add_argument("--ng-venv", type=Path, help="virtual environment with nngeometry and torch")
    p.add_argument(
        "--build-ng-venv",
        nargs="?",
        const=DEFAULT_NG_VENV,
        type=Path,
        metavar="PATH",
        help=f"build that virtual environment (default {DEFAULT_NG_VENV})",
    )
    p.add_argument("--torch-index", help="pip's index for torch when building (a CPU build)")
    p.add_argument("--ng-batch-size", type=int, help="nngeometry's loader batch (default n)")
    p.add_argument(
        "--ng-max-seconds", type=float, default=180.0, help="skip sizes projected past this"
    )
    p.add_argument("--keep-kernels", action="store_true", help="keep the kernels in --out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = _arguments(argv)
    if args.child:
        row = _child(args) | peak_resident()
        print(json.dumps(row))
        return None
    args.sizes = check_sizes(args.sizes)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1, got {args.repeats}")
    if args.ng_batch_size is not None and args.ng_batch_size < 1:
        raise ValueError(f"--ng-batch-size must be ≥ 1, got {args.ng_batch_size}")
    if args.build_ng_venv:
        ng = build_ng_venv(args.build_ng_venv, args.torch_index)
    elif args.ng_venv:
        ng = ng_python(args.ng_venv)
    else:
        raise SystemExit("give --ng-venv PATH or --build-ng-venv [PATH] (nngeometry's side)")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = {"when": when, "machine": machine(), "versions": versions()}
    doc["settings"] = {
        "sizes": args.sizes,
        "repeats": args.repeats,
        "model": f"CNN1D(channels={CHANNELS}, classes={CLASSES}, activation={ACTIVATION!r})",
        "dtype": "float32",
        "torch_threads": cores(),
        "ng_batch_size": args.ng_batch_size,
        "ng_max_seconds": args.ng_max_seconds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    make_inputs(args.out, max(args.sizes))
    doc["rows"], doc["notes"], doc["versions"]["ng_side"] = measure(args, str(ng))
    doc["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(write_outputs(doc, args.out, args.results))
    return doc


if __name__ == "__main__":
    from _machine import configure_host

    configure_host()  # before JAX runs anything (jaxntk.host)
    main()
