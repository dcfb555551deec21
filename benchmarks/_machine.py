"""What the benchmark scripts say about the machine they ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RESULTS = Path(__file__).with_name("RESULTS.md")


def write_table(out: Path, name: str, text: str, results: bool) -> Path:
    """Write a script's Markdown table to `out/name.md`; append it to benchmarks/RESULTS.md only
    when `results` (the scripts' `--results` flag) asks: a plain run leaves the checkout alone."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(text)
    if results:
        with RESULTS.open("a") as fh:
            fh.write(text if text.startswith("\n") else "\n" + text)
    return path


def add_output_arguments(parser) -> None:
    """--out DIR (default bench-results) and --results, the same for every benchmark script."""
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument(
        "--results", action="store_true", help="also append the table to benchmarks/RESULTS.md"
    )


def configure_host() -> str:
    """Opt in to jaxntk's host malloc settings (`jaxntk.configure_allocator`) before JAX runs
    anything, as every benchmark script does when started: its timings are those of the settings
    (``JAXNTK_ALLOCATOR=system`` leaves the C library's). A Python without jaxntk (a peer's
    virtual environment running the same script) keeps its own: "system: jaxntk not importable"."""
    try:
        from jaxntk.host import configure_allocator
    except ImportError:
        return "system: jaxntk not importable"
    return configure_allocator()
