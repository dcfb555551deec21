"""The notebooks run top to bottom on tiny sizes: every cell executes, and the figures render.

Each notebook's first code cell, tagged `parameters`, holds its sizes; the test replaces that cell's
source with tiny values and executes the notebook with nbclient. The kernel is ipykernel's own
`python3`, which jupyter_client launches with `sys.executable`: it runs in the test's environment,
and a fresh virtual environment with the `[dev]` extra needs no `ipykernel install`.
"""

import ast
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Tiny sizes: a notebook's run time is then mostly compilation, one program per variant trained;
# 01 trains all six variants, 02 and 03 fewer (their code is the same for every variant); 04 one
# small MLP and its Taylor models on both losses.
TRAIN = {"N_TEST": 200, "STEPS": 40, "EVAL_EVERY": 10}
TINY = {
    "01_quickstart.ipynb": {
        "D": 8,
        "M": 64,
        "N_TAYLOR": 16,
        "N": 24,
        **TRAIN,
        "LAMBDA_BULK": 1.6,
        "SEED": 0,
    },
    "02_reproduce_paper.ipynb": {
        "D": 8,
        "N": 24,
        "M": 64,
        **TRAIN,
        "SEEDS": (1, 11),
        "VARIANTS": ("ntk+quadntk", "regularized"),
    },
    "03_good_directions.ipynb": {
        "D_SPECTRUM": 10,
        "N_SPECTRUM": 40,
        "M_SPECTRUM": 200,
        "D": 8,
        "N": 24,
        "M": 64,
        **TRAIN,
        "LAMBDA_BULK": 1.6,
        "VARIANTS": ("ntk", "ntk+quadntk", "regularized"),
        "SEED": 1,
    },
    "05_lazy_rich.ipynb": {
        "RESULTS_DIR": "no-results",
        "D": 5,
        "N": 24,
        "M": 16,
        "N_TEST": 50,
        "ALPHAS": (1.0, 10.0),
        "STEPS": 20,
        "EVAL_EVERY": 10,
        "PROBE": 6,
        "SEED": 1,
    },
    "04_real_data.ipynb": {
        "MODELS": ("mlp",),
        "PARAMETERIZATIONS": ("ntk",),
        "WIDTHS": (8,),
        "CHANNELS": (2,),
        "N_TRAIN": 40,
        "N_TEST": 30,
        "STEPS": 20,
        "EVAL_EVERY": 10,
    },
}

# A Python warning printed by a cell, e.g. "…/x.py:3: UserWarning: …".
WARNING_LINE = re.compile(r"\b\w*Warning: ")


def test_notebooks_are_stored_clean():
    """Stored with outputs cleared, small, valid, and each with a test configuration."""
    stored = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert stored == sorted(TINY), "every notebook needs tiny parameters in TINY"
    for name in stored:
        path = NOTEBOOKS / name
        assert path.stat().st_size < 40_000, f"{name} is large: are outputs stored?"
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: clear outputs"


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged `parameters`"
    return tagged[0]


def assigned_names(source: str) -> list[str]:
    return [t.id for node in ast.parse(source).body for t in getattr(node, "targets", [])]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_executes(name, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    params = dict(TINY[name])
    if name.startswith("02"):
        # no `jaxntk reproduce` output there: the notebook runs both experiments itself, writes them
        # to OUT_DIR and reads them back as it reads reproduce output
        params.update(RESULTS_DIR=str(tmp_path / "no-results"), OUT_DIR=str(tmp_path / "out"))
    cell = parameters_cell(nb)
    assert sorted(assigned_names(cell.source)) == sorted(params), (
        "the test overrides every parameter of the notebook; update TINY to match its cell"
    )
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    # the kernel checks what the test suite checks (tests/conftest.py)
    monkeypatch.setenv("JAX_NUMPY_RANK_PROMOTION", "raise")
    monkeypatch.setenv("JAX_NUMPY_DTYPE_PROMOTION", "strict")

    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=180,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError at the first cell that fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was displayed"
    warned = [
        o["text"]
        for o in outputs
        if o.get("name") == "stderr" and WARNING_LINE.search(o.get("text", ""))
    ]
    assert not warned, f"cells printed warnings: {warned}"
