"""The documentation: the site builds strictly, lists every public name, and its guide code runs.

The site is built into a temporary folder with the `docs` extra's mkdocs (the README's test command
installs it); the API pages must carry an anchor for every name of `jaxntk.__all__`.
"""

import argparse
import ast
import importlib
import inspect
import itertools
import json
import re
import subprocess
import sys
import tomllib
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
        "guides/comparison",
        "guides/lazy-rich",
        "guides/kernels",
        "science",
        "notebooks/01_quickstart",
        "notebooks/02_reproduce_paper",
        "notebooks/03_good_directions",
        "notebooks/04_real_data",
        "notebooks/05_lazy_rich",
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
    assert "['params/Dense_0', 'params/Dense_1'] True" in out
    assert "layers sum to the kernel: True" in out
    assert "(3, 64, 3) (3, 256, 3)" in out


# The docs' own code and the facts they state about the code, checked against it.

FENCE = re.compile(r"(?:^(<!-- no-run[^>]*-->)\n)?^```python\n(.*?)^```", flags=re.S | re.M)
# Pages whose code blocks have a test of their own that also checks what they print.
OWN_TEST = {"docs/guides/taylor-models.md": "test_taylor_models_guide_code_runs"}
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def _doc_pages() -> list[Path]:
    """The Markdown a reader sees: the README, CONTRIBUTING and every page under docs/."""
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _python_blocks(path: Path) -> list[tuple[str | None, str]]:
    """(the no-run comment before it or None, the code) for each ```python block of a page."""
    return FENCE.findall(path.read_text())


def _pages_with_code() -> list[str]:
    """The pages with a block to run, but those whose blocks have a test of their own."""
    pages = [p for p in _doc_pages() if any(not no_run for no_run, _ in _python_blocks(p))]
    names = [str(p.relative_to(ROOT)) for p in pages]
    # docs/index.md shows the README's block (test_doc_python_blocks_are_found_...)
    return [n for n in names if n not in OWN_TEST and n != "docs/index.md"]


def test_doc_python_blocks_are_found_and_skipped_sparingly():
    readme = _python_blocks(ROOT / "README.md")
    assert len(readme) == 1 and readme[0][0] == ""
    assert "jn.Task.from_arrays" in readme[0][1] and "run.params" in readme[0][1]
    # the home page shows the README's example as it is
    assert _python_blocks(ROOT / "docs" / "index.md") == readme
    skipped = {
        str(p.relative_to(ROOT)): comment
        for p in _doc_pages()
        for comment, _ in _python_blocks(p)
        if comment
    }
    assert all(re.fullmatch(r"<!-- no-run: \S.* -->", c) for c in skipped.values()), skipped
    assert set(skipped) <= {"docs/guides/devices.md", "docs/guides/reproducing.md"}, skipped
    for page in _doc_pages():  # a skipped block still compiles
        for _, code in _python_blocks(page):
            compile(code, str(page), "exec")
    # a page's blocks are tested, here or by a test of their own
    assert set(OWN_TEST) | set(_pages_with_code()) | {"docs/index.md"} | set(skipped) == {
        str(p.relative_to(ROOT)) for p in _doc_pages() if _python_blocks(p)
    }
    assert all(callable(globals()[name]) for name in OWN_TEST.values())


def test_the_readme_example_draws_each_seed_anew():
    """The README's ± is over independent draws: one model and one task per seed."""
    code = _python_blocks(ROOT / "README.md")[0][1]
    assert re.search(r"jn\.train\(models, tasks, .*seeds=seeds", code)
    assert re.search(r"tasks = MLP\(\), \[my_task\(s\) for s in seeds\]", code)
    assert re.search(r"PRNGKey\(s\).*for s, t in zip\(seeds, tasks\)", code, flags=re.S)


def _package_modules() -> tuple[list[str], list[str]]:
    """jaxntk's modules read from the package folder: the top-level ones (without .py) and the
    experiments' files."""
    package = ROOT / "jaxntk"
    top = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    experiments = sorted(p.name for p in (package / "experiments").glob("*.py"))
    return top, [e for e in experiments if e != "__init__.py"]


def test_module_maps_name_every_module():
    top, experiments = _package_modules()
    assert {"ntk", "_structured", "predict", "checkpoint", "training"} <= set(top)
    assert "variants.py" in experiments
    page = (ROOT / "docs" / "guides" / "comparison.md").read_text()
    where = page[page.index("<!-- module-map") :]
    missing = [f"jaxntk/{m}.py" for m in top if f"`jaxntk/{m}.py`" not in where]
    missing += [e for e in experiments if f"`{e}`" not in where]
    assert not missing, f"docs/guides/comparison.md's module map leaves out {missing}"
    # CONTRIBUTING's picture of the layers
    text = (ROOT / "CONTRIBUTING.md").read_text()
    start = text.index("## The house in one picture")
    picture = text[text.index("```\n", start) : text.index("\n```", text.index("```\n", start) + 4)]
    missing = [
        m for m in top if not re.search(rf"(?<![\w/]){re.escape(m)}(\.py)?(?![\w])", picture)
    ]
    assert not missing and "experiments/" in picture, f"CONTRIBUTING's picture leaves out {missing}"


def _layers() -> tuple[tuple[str, ...], ...]:
    """LAYERS of tests/test_structure.py, read from its source."""
    tree = ast.parse((ROOT / "tests" / "test_structure.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "LAYERS":
            return ast.literal_eval(node.value)
    raise AssertionError("no LAYERS in tests/test_structure.py")


def _flow(text: str) -> list[list[str]]:
    """The groups of a written flow 'a → b / c → d': [[a], [b, c], [d]]."""
    line = " ".join(text.split())
    start = line.index("host →")
    chain = re.match(r"[\w /→]+", line[start:])[0]
    return [[n.strip() for n in group.split("/")] for group in chain.split("→") if group.strip()]


@pytest.mark.parametrize("where", ["docs/api/index.md", "jaxntk/__init__.py"])
def test_layer_flows_follow_the_structure_test(where):
    layers = _layers()
    index = {m: i for i, layer in enumerate(layers) for m in layer}
    text = jaxntk.__doc__ if where.endswith(".py") else (ROOT / where).read_text()
    groups = _flow(text)
    public = {m for layer in layers for m in layer if not m.startswith("_")}
    assert {m for g in groups for m in g} == public, where
    levels = [{index[m] for m in g} for g in groups]
    assert all(len(level) == 1 for level in levels), f"{where}: a group spans layers: {groups}"
    order = [level.pop() for level in levels]
    assert order == sorted(set(order)), f"{where}: {groups} is not the order of LAYERS"


def _resolve(dotted: str) -> bool:
    """Whether jaxntk.<dotted> exists: its longest prefix that imports as a module of jaxntk,
    then attributes (a module's name wins over a function re-exported under it: the function
    `jaxntk.taylor` and the module `jaxntk.taylor` are both there)."""
    parts = dotted.split(".")
    for i in range(len(parts), -1, -1):
        try:
            obj = importlib.import_module(".".join(["jaxntk", *parts[:i]]))
        except ModuleNotFoundError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def test_every_jaxntk_name_in_the_docs_exists():
    names = re.compile(r"(?<![\w./-])(?:jaxntk|jn)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
    missing = set()
    for page in _doc_pages():
        for name in names.findall(page.read_text()):
            if not _resolve(name):
                missing.add(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def test_the_resolver_rejects_a_missing_name():
    assert _resolve("ntk.empirical_ntk") and _resolve("experiments.taylorized.Dense")
    assert _resolve("taylor.TaylorModel") and _resolve("Task.from_arrays")
    assert not _resolve("spectral.nosuchname") and not _resolve("nosuchmodule.f")


def test_cli_guide_names_every_flag():
    from jaxntk import cli

    parser = cli._parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {
        f"{verb} {flag}"
        for verb, sub in verbs.choices.items()
        for action in sub._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }
    assert {"train --checkpoint", "train --eval-every", "reproduce --only"} <= flags
    text = (ROOT / "docs" / "guides" / "cli.md").read_text()
    missing = sorted(
        f for f in flags if not re.search(rf"{re.escape(f.split()[1])}(?![\w-])", text)
    )
    assert not missing, f"docs/guides/cli.md leaves out {missing}"


def test_experiment_lists_match_the_command():
    from jaxntk import cli

    everything = set(cli._experiments())
    default = list(cli.DEFAULT_EXPERIMENTS)
    text = " ".join((ROOT / "docs" / "guides" / "reproducing.md").read_text().split())
    said_default = re.search(r"Without `--only` it runs (.*?) on the `cpu` preset", text)[1]
    assert re.findall(r"`([\w-]+)`", said_default) == default
    only_named = re.search(r"\); ((?:`[\w-]+`(?:, | and )?)+) run only when named", text)[1]
    assert set(re.findall(r"`([\w-]+)`", only_named)) == everything - set(default)


def test_notebook_lists_and_variant_counts_match_the_code():
    from jaxntk.objectives import PAPER_VARIANTS

    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    home = (ROOT / "docs" / "index.md").read_text()
    assert sorted(set(re.findall(r"notebooks/(\w+\.ipynb)", home))) == notebooks
    nav = (ROOT / "mkdocs.yml").read_text()
    assert sorted(re.findall(r"notebooks/(\w+\.ipynb)", nav)) == notebooks
    count = re.search(r"suite runs all (\w+)", home)[1]
    assert NUMBER_WORDS[count] == len(notebooks)
    # "the six variants": the paper's, which notebook 01 trains
    quick = json.loads((ROOT / "notebooks" / "01_quickstart.ipynb").read_text())
    cells = ["".join(c["source"]) for c in quick["cells"]]
    pages = [ROOT / "README.md", ROOT / "docs" / "index.md", ROOT / "docs/guides/benchmarks.md"]
    texts = [p.read_text() for p in pages] + cells
    counts = [
        NUMBER_WORDS[w.lower()]
        for t in texts
        for w in re.findall(r"(?i)\b(\w+) (?:training )?variants", t)
        if w.lower() in NUMBER_WORDS
    ]
    assert len(counts) >= 5 and set(counts) == {len(PAPER_VARIANTS)}
    assert any("for variant in jn.objectives.PAPER_VARIANTS" in c for c in cells)


def test_license_and_citation_files():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    assert cff["version"] == project["version"]
    paper = cff["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]] == ["Nichani", "Bai", "Lee"]
    assert paper["year"] == 2022 and "arXiv:2206.03688" in str(paper["identifiers"])
    assert "Identifying good directions to escape the NTK regime" in " ".join(
        paper["title"].split()
    )


def test_the_installed_metadata_carries_the_license():
    """What `pip install -e .` wrote: an SPDX expression (setuptools ≥ 77, as a fresh install
    builds it) or, in an environment installed before that change, the License field."""
    import importlib.metadata

    meta = importlib.metadata.metadata("jaxntk")
    assert "Apache-2.0" in (meta.get("License-Expression"), meta.get("License"))
