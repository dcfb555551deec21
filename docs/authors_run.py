"""Turn a finished `lambda-sweep` run at the paper preset into the README's table and figure.

    python docs/authors_run.py results/authors

reads DIR/lambda-sweep.json and .npz (written by
`jaxntk reproduce --preset paper --only lambda-sweep --seeds 1 --lambdas 0,1e-3,1e-2 --out DIR`),
writes docs/figures/authors-run.json (the evaluation curves, one seed) and copies the figure to
docs/figures/authors-run.png, then prints the Markdown table of test loss, n·R_bulk and f_Q's share
of the quadratic part at the steps of the table.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

FIGURES = Path(__file__).with_name("figures")
STEPS = (250, 1000, 2000, 3000, 5000, 8000, 12_000, 16_000, 20_000)


def main(folder: Path, figures: Path = FIGURES) -> str:
    doc = json.loads((folder / "lambda-sweep.json").read_text())
    cfg = doc["config"]
    (seed,) = cfg["seeds"]
    with np.load(folder / "lambda-sweep.npz") as z:
        curves = {k: z[k] for k in z.files}
    step = curves["step"]
    n = cfg["n"]
    quad = 1  # part order of the paper's target: (linear, quadratic)
    out = {
        "description": "lambda-sweep at the paper preset (one seed), from docs/authors_run.py",
        "config": cfg,
        "lambda_sum": cfg["lambdas"],
        "step": step.tolist(),
        "part_names": ["linear", "quadratic"],
    }
    for name in ("test_loss", "train_loss", "bulk", "pop", "u_norm"):
        out[name] = np.round(curves[f"{seed}/{name}"], 6).tolist()
    out["bulk_sum"] = np.round(n * curves[f"{seed}/bulk"], 4).tolist()
    for name in ("share_linear", "share_quadratic"):
        out[name] = np.round(curves[f"{seed}/{name}"], 5).tolist()
    figures.mkdir(exist_ok=True)
    (figures / "authors-run.json").write_text(json.dumps(out, indent=0))
    shutil.copyfile(folder / "lambda-sweep.png", figures / "authors-run.png")

    cols = [t for t in STEPS if t <= step[-1]]
    idx = [int(np.flatnonzero(step == t)[0]) for t in cols]
    head = "| λ_1 | " + " | ".join(f"t={t}" for t in cols) + " |\n"
    head += "|---" * (len(cols) + 1) + "|\n"
    lines = []
    for i, lam in enumerate(cfg["lambdas"]):
        test = curves[f"{seed}/test_loss"][i]
        bulk = n * curves[f"{seed}/bulk"][i]
        share = curves[f"{seed}/share_quadratic"][i][:, quad]
        lines.append(f"| {lam:g} test | " + " | ".join(f"{test[j]:.3f}" for j in idx) + " |")
        lines.append(f"| {lam:g} n·R_bulk | " + " | ".join(f"{bulk[j]:.1f}" for j in idx) + " |")
        lines.append(f"| {lam:g} f_Q share | " + " | ".join(f"{share[j]:.2f}" for j in idx) + " |")
    peak = {
        f"{lam:g}": (
            float(np.nanmax(n * curves[f"{seed}/bulk"][i])),
            int(step[int(np.nanargmax(curves[f"{seed}/bulk"][i]))]),
        )
        for i, lam in enumerate(cfg["lambdas"])
    }
    table = head + "\n".join(lines) + "\n"
    print(table)
    print("peak n·R_bulk (value, step):", peak)
    return table


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/authors"))
