"""Mutation testing of the core modules with mutmut, and line + branch coverage of jaxntk/.

    pip install -e ".[dev,mutation]"
    python tools/mutation.py --modules objectives network --hours 1 --out tools/mutation-results
    python tools/mutation.py --coverage-only --out tools/mutation-results
    python tools/mutation.py --modules spectral --sample 8 --hours 0.4 --children 1   # 1/8 of them
    python tools/mutation.py --modules spectral --results-only --recheck-first tests/test_x.py::t

Slow (every mutant re-runs its tests in a fresh process, with JAX's compilations), so it is not
part of the test command. For each module the script copies jaxntk/, tests/ and pyproject.toml to
a scratch folder, writes mutmut's configuration there (the module to mutate, the test files that
exercise it), runs `mutmut run` until done or until its share of the time is spent, and writes
`<out>/<module>.txt`: the status of every mutant and the diff of every survivor. Statements that
only raise or warn (their messages) are not mutated. `--coverage` also runs the whole suite under
pytest-cov and writes `<out>/coverage.txt`.

mutmut runs each mutant in a process forked from a server that has not imported JAX, so no
program compiled from the unmutated code is reused, and selects per mutated function the tests
(among the module's test files) that call it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The test files that exercise each core module (kept small: every mutant reruns the selection).
TESTS = {
    "objectives": ["tests/test_formulas.py"],
    "network": ["tests/test_network.py", "tests/test_formulas.py"],
    "taylor": ["tests/test_taylor.py", "tests/test_taylor_terms.py"],
    "spectral": ["tests/test_spectral.py", "tests/test_outputs.py"],
    "targets": ["tests/test_targets.py"],
    # the whole of these two files takes minutes per mutant of train(): the faster tests that
    # check values (determinism, resume, divergence, trace, optimizers, k) and bad input
    "training": [
        f"tests/test_training.py::test_{t}"
        for t in (
            "same_seed_twice_is_bitwise_identical",
            "resume_after_a_chunk_equals_the_uninterrupted_run",
            "a_diverging_run_is_stopped_with_its_step_and_keeps_its_history",
            "only_the_diverging_setting_of_a_sweep_stops",
            "bad_hyperparameters_raise",
            "progress_prints_one_line_per_chunk",
            "steps_not_a_multiple_of_eval_every",
            "trace_records_the_objective_at_every_step",
            "a_users_optimizer_keeps_its_own_learning_rate",
            "fit_names_a_bad_hyper",
            "bad_argument_types_and_a_single_int_seed",
        )
    ]
    + [
        "tests/test_formulas.py::test_k_reaches_training_and_the_logged_penalties",
        "tests/test_formulas.py::test_named_optimizers_follow_their_update_rules",
        "tests/test_formulas.py::test_init_scale_reaches_training",
        "tests/test_formulas.py::test_track_directions_logs_the_penalties_of_an_unregularized_run",
    ],
}

#: Lines whose statement is not mutated: raising or warning with a message.
SKIP_PATTERNS = [r"^\s*raise ", r"warnings\.warn\("]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", nargs="+", default=list(TESTS), choices=list(TESTS))
    p.add_argument("--hours", type=float, default=6.0, help="wall-time cap for all modules")
    p.add_argument("--children", type=int, default=2, help="mutants run in parallel")
    p.add_argument("--out", type=Path, default=ROOT / "tools" / "mutation-results")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/jaxntk-mutation"))
    p.add_argument(
        "--tests-ref",
        default=None,
        help="take tests/ from this git ref (e.g. main: the score before new tests)",
    )
    p.add_argument("--coverage", action="store_true", help="also measure coverage")
    p.add_argument("--coverage-only", action="store_true")
    p.add_argument(
        "--sample-every",
        type=int,
        default=None,
        help="continue the scratch folder's last run with every K-th mutant not yet checked "
        "(an unbiased sample of the rest when the time cap stopped it)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="K",
        help="a fresh run on every K-th mutant in mutmut's listing order (functions in source "
        "order, then mutant number), "
        "for a module with too many mutants to finish: a systematic sample of 1/K of them, "
        "spread over every mutated function (mutmut still runs the sample fastest first, so "
        "a time cap leaves its slowest mutants unchecked)",
    )
    p.add_argument(
        "--results-only",
        action="store_true",
        help="write the results of the scratch folders' last runs, rerunning the survivors "
        "against the checkout's tests",
    )
    p.add_argument(
        "--recheck-first",
        nargs="+",
        default=[],
        metavar="TEST",
        help="with --results-only: run these tests (node ids, e.g. the new ones) on each "
        "survivor first, and the module's whole selection only if they all pass",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.coverage or args.coverage_only:
        coverage(args.out)
    if args.coverage_only:
        return 0
    if args.results_only:
        for module in args.modules:
            scratch = args.scratch / module
            if args.tests_ref is None:  # survivors meet the checkout's tests as they are now
                for folder in (scratch / "tests", scratch / "mutants" / "tests"):
                    shutil.rmtree(folder)
                    shutil.copytree(ROOT / "tests", folder)
            tests = [t for t in TESTS[module] if (scratch / t.partition("::")[0]).exists()]
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(scratch)}
            write_results(module, tests, scratch, args.out, 0.0, True, env, args.recheck_first)
        return 0
    deadline = time.monotonic() + 3600 * args.hours
    for i, module in enumerate(args.modules):
        share = (deadline - time.monotonic()) / (len(args.modules) - i)
        if share <= 60:
            print(f"{module}: no time left")
            continue
        if args.sample_every:
            sample(module, args.scratch / module, args.out, share, args.children, args.sample_every)
        else:
            mutate(
                module,
                args.scratch / module,
                args.out,
                share,
                args.children,
                args.tests_ref,
                args.sample,
            )
    return 0


def coverage(out: Path) -> None:
    """The whole suite under pytest-cov, lines and branches of jaxntk/: the tests and the
    docstring examples, on the test command's two xdist workers (pytest-cov combines them)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"]
    cmd += ["--dist", "loadfile", "--cov=jaxntk", "--cov-branch", "--cov-report=term-missing"]
    cmd += ["--durations=30"]
    t0 = time.monotonic()
    (ROOT / ".coverage").unlink(missing_ok=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    # pytest prints the coverage table, then the slowest tests and the summary line: keep those
    marks = [i for m in ("coverage: platform", "slowest 30") if (i := proc.stdout.find(m)) >= 0]
    report = proc.stdout[min(marks) :] if marks else proc.stdout[-20000:]
    took = f"(exit {proc.returncode}; {time.monotonic() - t0:.0f} s)"
    (out / "coverage.txt").write_text(f"$ {' '.join(cmd[1:])}\n{took}\n\n{report}")
    print(took, report.strip().splitlines()[-1:])


def mutate(
    module: str,
    scratch: Path,
    out: Path,
    seconds: float,
    children: int,
    tests_ref: str | None,
    sample_k: int | None = None,
) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copytree(
        ROOT / "jaxntk", scratch / "jaxntk", ignore=shutil.ignore_patterns("__pycache__")
    )
    if tests_ref is None:
        shutil.copytree(
            ROOT / "tests", scratch / "tests", ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", tests_ref, "tests"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
    tests = [t for t in TESTS[module] if (scratch / t.partition("::")[0]).exists()]
    # the project's pytest settings, without a [tool.mutmut] table so that setup.cfg is read
    shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
    lines = [
        "[mutmut]",
        "source_paths = jaxntk/",
        f"only_mutate = jaxntk/{module}.py",
        "pytest_add_cli_args_test_selection =",
        *(f"    {t}" for t in tests),
        "pytest_add_cli_args =",
        "    -p",
        "    no:cacheprovider",
        "do_not_mutate_patterns =",
        *(f"    {pat}" for pat in SKIP_PATTERNS),
        "process_isolation = forkserver",
        "forkserver_warmup = none",
        "mutate_only_covered_lines = true",
        # a fresh process imports JAX and compiles before its first test: CPU seconds the
        # in-process timing of the clean run does not count
        "timeout_constant = 60",
        "",
    ]
    (scratch / "setup.cfg").write_text("\n".join(lines))
    if sample_k:
        # generate the mutants and record which tests call what (the clean runs), then stop:
        # mutmut refuses a name that matches no mutant after those steps
        t0 = time.monotonic()
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(scratch)}
        with open(out / f"{module}.log", "a") as log:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mutmut",
                    "run",
                    "--max-children",
                    str(children),
                    "no-such-mutant",
                ],
                cwd=scratch,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        sample(module, scratch, out, seconds - (time.monotonic() - t0), children, sample_k)
        return
    run_mutmut(module, tests, scratch, out, seconds, children, [])


def sample(module: str, scratch: Path, out: Path, seconds: float, children: int, k: int) -> None:
    """Continue the last run in `scratch` with every k-th mutant it has not checked."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(scratch)}
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    unchecked = [
        line.strip().rpartition(": ")[0]
        for line in listing.splitlines()
        if line.strip().endswith(": not checked")
    ]
    names = unchecked[::k]
    print(f"{module}: {len(names)} of {len(unchecked)} unchecked mutants (every {k})", flush=True)
    tests = [t for t in TESTS[module] if (scratch / t.partition("::")[0]).exists()]
    run_mutmut(module, tests, scratch, out, seconds, children, names)


def run_mutmut(module, tests, scratch, out, seconds, children, names) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(scratch)}
    t0 = time.monotonic()
    print(f"{module}: mutmut run for at most {seconds / 60:.0f} min in {scratch}", flush=True)
    log = open(out / f"{module}.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names],
        cwd=scratch,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=seconds)
        stopped = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # mutmut stops its workers and keeps its results
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stopped = True
    log.close()
    # survivors are rerun by --results-only, once the tests are final
    write_results(module, tests, scratch, out, time.monotonic() - t0, stopped, env, rerun=False)


def write_results(module, tests, scratch, out, seconds, stopped, env, first=(), rerun=True):
    """`<out>/<module>.txt`: counts, score, every mutant's status and the survivors' diffs.

    mutmut selects the tests of a mutant by the calls it recorded in one clean run, which misses
    calls made at import time (the variants table is built then) and calls inside a program
    JAX compiled for an earlier test; so each survivor is run again against every selected test
    file, and the score is given both ways.
    """

    def mutmut(*a):
        return subprocess.run(
            [sys.executable, "-m", "mutmut", *a],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
        ).stdout

    status = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name:
            status[name] = state
    counts = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    survivors = [k for k, v in status.items() if v == "survived"]
    rechecked = {
        name: (recheck(name, first, scratch, env) if first else None)
        or recheck(name, tests, scratch, env)
        if rerun
        else None
        for name in survivors
    }
    killed = sum(1 for v in status.values() if v in ("killed", "timeout"))
    tested = killed + len(survivors)
    killed_after = killed + sum(1 for v in rechecked.values() if v is not None)

    def score(k):
        return f"{k}/{tested}" + (f" = {100 * k / tested:.1f}%" if tested else "")

    head = [
        f"module: jaxntk/{module}.py    tests: {' '.join(tests)}",
        f"time: {seconds / 60:.1f} min{' (stopped at the time cap)' if stopped else ''}"
        if seconds
        else "time: see the run's log",
        f"mutants: {len(status)}    " + "    ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        f"score, mutmut's test selection, (killed + timeout) / tested: {score(killed)}",
        f"score, survivors rerun against every selected test file: {score(killed_after)}",
        "",
    ]
    body = [f"{k}: {v}" for k, v in sorted(status.items())]
    diffs = ["", "# survivors of mutmut's selection", ""]
    for name in survivors:
        by = rechecked[name]
        diffs.append(f"## {name}: " + (f"killed by {by}" if by else "survives every test file"))
        diffs.append(mutmut("show", name))
    (out / f"{module}.txt").write_text("\n".join(head + body + diffs))
    print("\n".join(head), flush=True)


def recheck(name: str, tests: list[str], scratch: Path, env: dict) -> str | None:
    """The first test of `tests` (files or node ids) that fails with mutant `name`, or None."""
    mutants = scratch / "mutants"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=mutants,
        env={**env, "PYTHONPATH": str(mutants), "MUTANT_UNDER_TEST": name},
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return None
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    return failed[0] if failed else f"pytest exit {proc.returncode}"


if __name__ == "__main__":
    sys.exit(main())
