"""Apply each of the five library changes named in issue 18 to a scratch copy and run its test.

    python tools/named_mutations.py            # exit 0 when every change is caught

Each change must make the test named beside it fail; the script copies jaxntk/ and tests/ to a
temporary folder, edits the copy (never the checkout) and runs pytest there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, original text, replacement, test that must fail)
MUTATIONS = [
    (
        "full variant predicts f0 + f_L",
        "jaxntk/objectives.py",
        'Variant("full", _deterministic(_full), _full, quadratic=False)',
        'Variant("full", _deterministic(_linear), _linear, quadratic=False)',
        "tests/test_formulas.py::test_every_variant_predicts_its_formula[full]",
    ),
    (
        "quadntk predicts f(W0 + U)",
        "jaxntk/objectives.py",
        '"quadntk", _deterministic(_quadratic), _quadratic,',
        '"quadntk", _deterministic(_full), _full,',
        "tests/test_formulas.py::test_every_variant_predicts_its_formula[quadntk]",
    ),
    (
        "norm24_penalty without its final square",
        "jaxntk/objectives.py",
        "    return total**2\n",
        "    return total\n",
        "tests/test_formulas.py::test_norm24_penalty_is_the_square_of_the_sum_of_fourth_powers",
    ),
    (
        "Regularizer.from_sum_scale without its factor n",
        "jaxntk/objectives.py",
        "np.asarray(bulk_sum, dtype=np.float64) * n",
        "np.asarray(bulk_sum, dtype=np.float64)",
        "tests/test_formulas.py::test_from_sum_scale_multiplies_the_sum_weight_by_n",
    ),
    (
        "train ignores Regularizer.k",
        "jaxntk/training.py",
        "k = task.d if reg.k is None else reg.k",
        "k = task.d",
        "tests/test_formulas.py::test_k_reaches_training_and_the_logged_penalties",
    ),
]


def main() -> int:
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel, old, new, test in MUTATIONS:
            scratch = Path(tmp) / "tree"
            shutil.rmtree(scratch, ignore_errors=True)
            for part in ("jaxntk", "tests", "pyproject.toml"):
                src = ROOT / part
                copy = shutil.copytree if src.is_dir() else shutil.copy
                copy(src, scratch / part)
            path = scratch / rel
            text = path.read_text()
            if text.count(old) != 1:
                print(f"{name}: the text to change is not found once in {rel}")
                missed.append(name)
                continue
            path.write_text(text.replace(old, new))
            env = {**os.environ, "PYTHONPATH": str(scratch), "JAX_PLATFORMS": "cpu"}
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
            )
            caught = proc.returncode == 1
            print(f"{'caught' if caught else 'MISSED'}: {name} <- {test}")
            if not caught:
                missed.append(name)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
