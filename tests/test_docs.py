"""The documentation: the site builds strictly, lists every public name, and its guide code runs.

The site is built into a temporary folder with the `docs` extra's mkdocs (the README's test command
installs it); the API pages must carry an anchor for every name of `jaxntk.__all__`.
"""

import importlib
import inspect
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxntk

ROOT = Path(__file__).resolve().parents[1]
MODULES = (
    "polynomials",
    "targets",
    "data",
    "network",
    "taylor",
    "scaling",
    "ntk",
    "spectral",
    "predict",
    "onestep",
    "diagnostics",
    "objectives",
    "minibatch",
    "training",
    "sharding",
    "checkpoint",
    "host",
)


def _home_module(name: str) -> str:
    """The module of jaxntk whose __all__ defines `name` (a re-exported public name)."""
    obj = getattr(jaxntk, name)
    if inspect.ismodule(obj):
        return obj.__name__.rsplit(".", 1)[-1]
    homes = [m for m in MODULES if name in importlib.import_module(f"jaxntk.{m}").__all__]
    assert len(homes) == 1, f"{name} is exported by {homes}"
    return homes[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    before = sorted(p.name for p in ROOT.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in ROOT.iterdir()) == before, "the build wrote into the checkout"
    return out


@pytest.mark.slow
def test_site_has_an_api_anchor_for_every_public_name(site):
    missing = []
    for name in jaxntk.__all__:
        module = _home_module(name)
        html = (site / "api" / module / "index.html").read_text()
        anchor = (
            f"jaxntk.{module}"
            if inspect.ismodule(getattr(jaxntk, name))
            else (f"jaxntk.{module}.{name}")
        )
        if f'id="{anchor}"' not in html:
            missing.append(anchor)
    assert not missing, f"API pages lack {missing}"


@pytest.mark.slow
def test_site_renders_the_guides_notebooks_and_headline_figure(site):
    for page in (
        "guides/taylor-models",
        "guides/reproducing",
        "guides/regularizer",
        "guides/devices",
        "guides/benchmarks",
        "science",
        "notebooks/01_quickstart",
        "notebooks/02_reproduce_paper",
        "notebooks/03_good_directions",
    ):
        assert (site / page / "index.html").is_file(), page
    assert (site / "figures" / "variants-cpu.png").stat().st_size > 10_000
    # RESULTS.md is included into the benchmarks guide, not copied by hand
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
    heading = next(line for line in results[1:] if line.startswith("## ")).lstrip("# ")
    assert (
        heading.split(" (")[0].split(":")[0] in (site / "guides/benchmarks/index.html").read_text()
    )


def test_api_overview_lists_every_public_name():
    text = (ROOT / "docs" / "api" / "index.md").read_text()
    listed = set(re.findall(r"\[`jn\.(\w+)`\]", text))
    assert listed == set(jaxntk.__all__)


def test_readme_links_point_to_files():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "README links into the docs"
    assert all((ROOT / t).exists() for t in local), [t for t in local if not (ROOT / t).exists()]


@pytest.mark.slow
def test_taylor_models_guide_code_runs(capsys):
    """The guide's code blocks, run in order in one namespace, print what the guide says."""
    text = (ROOT / "docs" / "guides" / "taylor-models.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "taylor-models.md", "exec"), namespace)
    out = capsys.readouterr().out
    # the remainders: order 1 falls like t², order 2 like t³ as t halves
    rem = [
        tuple(map(float, m))
        for m in re.findall(r"remainder ([\d.e+-]+), order-2 remainder ([\d.e+-]+)", out)
    ]
    assert len(rem) == 3
    for (a1, a2), (b1, b2) in itertools.pairwise(rem):
        assert 3.0 < a1 / b1 < 5.0
        assert 6.0 < a2 / b2 < 10.0
    # order k's remainder at t = 5e-3 shrinks with every order
    orders = [float(r) for r in re.findall(r"order \d: remainder ([\d.e+-]+)", out)]
    assert len(orders) == 4
    assert all(b < a / 4 for a, b in itertools.pairwise(orders))
    losses = dict(re.findall(r"^(\S+)\s+test loss ([\d.]+)$", out, flags=re.M))
    assert set(losses) == {"full", "ntk", "ntk+quadntk", "taylor-3"}
    assert "(8, 8) True" in out
    accuracy = [float(a) for a in re.search(r"train accuracy \[([^\]]*)\]", out)[1].split()]
    assert accuracy[-1] > accuracy[0] + 0.3
    assert "(8, 8, 3, 3) (8, 8)" in out
    assert "(3, 64, 3) (3, 256, 3)" in out
