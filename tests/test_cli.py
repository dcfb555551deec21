"""The `jaxntk` command: train writes its files; bad input and divergence exit non-zero."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxntk import cli

TINY = [
    "--d",
    "6",
    "--n",
    "20",
    "--m",
    "40",
    "--steps",
    "30",
    "--n-test",
    "100",
    "--eval-every",
    "10",
    "--quiet",
]


@pytest.mark.slow
def test_train_writes_run_json_and_history(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--variant",
            "regularized",
            *TINY,
            "--seed",
            "3",
            "--lr",
            "0.5",
            "--lambda-bulk",
            "0.5",
            "--k",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads((out / "run.json").read_text())
    assert set(doc) >= {"config", "final", "history"}
    assert doc["config"]["variant"] == "regularized" and doc["config"]["lambda_bulk"] == 0.5
    assert doc["history"]["step"] == [0, 10, 20, 30]
    assert len(doc["history"]["train_loss"]) == len(doc["history"]["test_loss"]) == 4
    assert doc["final"]["test_loss"] == doc["history"]["test_loss"][-1]
    assert doc["history"]["train_loss"][-1] < doc["history"]["train_loss"][0]
    with np.load(out / "history.npz") as z:
        np.testing.assert_allclose(z["test_loss"], doc["history"]["test_loss"], rtol=1e-6)
        assert z["share_quadratic"].shape == (4, 2)
    assert "regularized: train" in capsys.readouterr().out


@pytest.mark.parametrize("inputs", ["gaussian", "sphere"])
@pytest.mark.slow
def test_train_on_both_input_laws(tmp_path, inputs):
    rc = cli.main(["train", "--variant", "ntk", *TINY, "--inputs", inputs, "--out", str(tmp_path)])
    assert rc == 0
    assert json.loads((tmp_path / "run.json").read_text())["config"]["inputs"] == inputs


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "jaxntk.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )


def test_unknown_variant_exits_non_zero_with_one_line(tmp_path):
    p = _run("train", "--variant", "lazy", *TINY, "--out", str(tmp_path))
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--variant" in lines[0] and "lazy" in lines[0]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lr", "-1"), ("--m", "0"), ("--lambda-bulk", "-0.1"), ("--steps", "abc")],
)
def test_bad_values_exit_non_zero_with_one_line(tmp_path, capsys, flag, value):
    argv = ["train", "--variant", "ntk", *TINY, "--out", str(tmp_path)]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


def test_odd_width_is_a_one_line_error(tmp_path, capsys):
    rc = cli.main(
        [
            "train",
            "--variant",
            "ntk",
            "--d",
            "4",
            "--n",
            "10",
            "--m",
            "7",
            "--steps",
            "5",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m must be even" in err[0]


def test_diverged_run_writes_what_it_had_and_exits_non_zero(tmp_path, capsys):
    rc = cli.main(["train", "--variant", "ntk", *TINY, "--lr", "1e5", "--out", str(tmp_path)])
    assert rc == 1
    doc = json.loads((tmp_path / "run.json").read_text())
    step = doc["diverged_at_step"]
    assert 0 < step <= 30
    assert "diverged" in capsys.readouterr().err
    finite = [
        x
        for s, x in zip(doc["history"]["step"], doc["history"]["train_loss"], strict=True)
        if s < step
    ]
    assert finite and all(x is not None for x in finite)


def test_reproduce_rejects_unknown_experiment_before_any_work(tmp_path, capsys):
    rc = cli.main(["reproduce", "--only", "variants,nonsense", "--out", str(tmp_path / "r")])
    assert rc == 1
    assert "nonsense" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_reproduce_rejects_an_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = cli.main(["reproduce", "--only", "variants", "--out", str(blocker / "sub")])
    assert rc == 1
    assert "--out" in capsys.readouterr().err


def test_plot_redraws_from_saved_files(tmp_path, capsys):
    assert cli.main(["reproduce", "--only", "spectrum", "--out", str(tmp_path)]) == 0
    (tmp_path / "spectrum.png").unlink()
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["plot", str(tmp_path / "empty")]) == 1
    assert "no results" in capsys.readouterr().err


def test_train_with_a_checkpoint_resumes_when_rerun(tmp_path, capsys):
    argv = ["train", "--variant", "ntk", *TINY, "--checkpoint", str(tmp_path / "ck")]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    first, rerun = (json.loads((tmp_path / x / "run.json").read_text()) for x in "ab")
    assert rerun["history"] == first["history"]
    assert cli.main([*argv, "--lr", "0.5", "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (['lr'])" in err[0] and str(tmp_path / "ck") in err[0]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--coordinator", "localhost:1234"], ["go together", "num_processes=None"]),
        (["--num-processes", "2", "--process-id", "0"], ["go together", "coordinator=None"]),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], ["HOST:PORT"]),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], ["[0, 2)"]),
    ],
)
def test_bad_process_flags_are_a_one_line_error(tmp_path, capsys, flags, words):
    argv = ["train", "--variant", "ntk", *TINY, "--out", str(tmp_path), *flags]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_no_verb_prints_the_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxntk") and "train" in out and "reproduce" in out


def _train_history(tmp_path, name, *flags):
    out = tmp_path / name
    base = ["train", "--variant", "regularized", *TINY, "--lambda-bulk", "0.5", "--lr", "0.5"]
    assert cli.main([*base, *flags, "--out", str(out)]) == 0
    doc = json.loads((out / "run.json").read_text())
    return doc["config"], {k: np.asarray(v, dtype=float) for k, v in doc["history"].items()}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _train_history(tmp_path_factory.mktemp("base"), "base")[1]


@pytest.mark.parametrize(
    ("flags", "effect"),
    [
        (["--target", "mlp"], "loss"),
        (["--activation", "tanh"], "loss"),
        (["--optimizer", "momentum"], "loss"),
        (["--init-scale", "0.5"], "u_norm0"),
        (["--lambda-pop", "50"], "pop"),
        (["--lambda-24", "1e4"], "norm24"),
        (["--k", "2"], "loss"),
    ],
)
@pytest.mark.slow
def test_each_train_flag_changes_the_run(tmp_path, baseline, flags, effect):
    """Not only the saved config: the run itself differs from the same command without it."""
    config, hist = _train_history(tmp_path, "run", *flags)
    saved = config[flags[0][2:].replace("-", "_")]
    assert saved == (flags[1] if isinstance(saved, str) else float(flags[1]))
    assert not np.allclose(hist["train_loss"], baseline["train_loss"], rtol=1e-3)
    if effect == "u_norm0":  # the run starts away from U = 0
        assert baseline["u_norm"][0] == 0.0 and hist["u_norm"][0] > 0.1
    elif effect in ("pop", "norm24"):  # the penalised quantity ends lower
        assert hist[effect][-1] < 0.9 * baseline[effect][-1]


def test_reproduce_seeds_reach_the_spectrum_and_its_errors_are_one_line(
    tmp_path, monkeypatch, capsys
):
    from jaxntk.experiments import spectrum

    monkeypatch.setitem(spectrum.PRESETS, "cpu", spectrum.Config(d=8, n=30, m=200))
    rc = cli.main(["reproduce", "--only", "spectrum", "--seeds", "3,4", "--out", str(tmp_path)])
    assert rc == 0
    assert json.loads((tmp_path / "spectrum.json").read_text())["config"]["seed"] == 3
    monkeypatch.setitem(spectrum.PRESETS, "cpu", spectrum.Config(d=8, n=30, m=201))
    capsys.readouterr()
    assert cli.main(["reproduce", "--only", "spectrum", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxntk reproduce: spectrum:") and "even" in err[0]
    for bad in ("a", "-1", ","):
        with pytest.raises(SystemExit) as exc:
            cli.main(["reproduce", "--only", "spectrum", "--seeds", bad])
        assert exc.value.code == 2
        assert "--seeds" in capsys.readouterr().err


def test_reproduce_runs_mnist1d_sections_and_prints_its_table(tmp_path, monkeypatch, capsys):
    import dataclasses

    from jaxntk.experiments import mnist1d

    monkeypatch.setenv("JAXNTK_CACHE", str(tmp_path / "cache"))
    tiny = dataclasses.replace(
        mnist1d.Config(),
        n_train=40,
        n_test=20,
        channels=2,
        sections=("kernel", "one_step"),
        kernel_networks=("cnn",),
        ridges=(1e-2, 1.0),
        onestep_etas=(1.0,),
        onestep_ridges=(1e-2,),
    )
    monkeypatch.setitem(mnist1d.PRESETS, "cpu", tiny)
    rc = cli.main(["reproduce", "--only", "mnist1d", "--seeds", "3", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "mnist1d.json").read_text())
    assert doc["config"]["seeds"] == [3] and set(doc["sections"]["kernel"]["units"]) == {"cnn/3"}
    printed = capsys.readouterr().out
    assert "kernel regression, CNN NTK" in printed and "one step + ridge readout" in printed
    assert (tmp_path / "mnist1d.png").stat().st_size > 0
