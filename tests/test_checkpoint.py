"""Checkpoints (jaxntk.checkpoint): a run killed with SIGKILL again and again, some kills during a
save, resumes to the bitwise result of the uninterrupted run; a corrupted or truncated checkpoint
is refused with the folder's name; a run without `resume` starts afresh.

The killed runs are tests/train_worker.py in subprocesses, sharing a compilation cache in the
test's folder so that each restart compiles nothing.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxntk as jn
from jaxntk import checkpoint

WORKER = Path(__file__).with_name("train_worker.py")
KILLS = 6
# 150 chunks of 2 steps, each saved and followed by a pause of 30 ms: at least 4.5 s of training.
# A kill lands a random 0-1 s after the process is up, or at the first save it sees, so the run
# outlasts the 6 kills, on a quiet machine as on a loaded one.
STEPS = ["--steps", "300", "--chunk-pause", "0.03"]


def worker_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "compilation-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def saving(folder: Path) -> bool:
    """Whether a save is under way: a temporary state or history file exists."""
    names = [p.name for d in (folder, folder / "history") if d.is_dir() for p in d.iterdir()]
    return any(".orbax-checkpoint-tmp" in n or n.startswith(".tmp-") for n in names)


@pytest.mark.slow
def test_killed_at_random_moments_the_resumed_run_equals_the_uninterrupted_one(tmp_path):
    env = worker_env(tmp_path)
    subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "full.npz"), *STEPS],
        env=env,
        check=True,
        timeout=300,
    )
    folder, rng = tmp_path / "ck", random.Random(15)
    resume = [sys.executable, str(WORKER), str(tmp_path / "resumed.npz"), *STEPS]
    resume += ["--checkpoint", str(folder)]
    kills = during_save = 0
    while kills < KILLS:
        with subprocess.Popen(
            resume,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as proc:
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + (10.0 if kills % 2 else rng.uniform(0.0, 1.0))
            while time.monotonic() < deadline and proc.poll() is None:
                if kills % 2 and saving(folder):
                    break
                time.sleep(0.001)
            if proc.poll() is not None:
                pytest.fail(f"the run finished after {kills} kills; it must last {KILLS}")
            os.kill(proc.pid, signal.SIGKILL)
        kills += 1
        during_save += saving(folder)
    assert during_save >= 1
    subprocess.run(
        resume,
        env=env,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    with np.load(tmp_path / "full.npz") as full, np.load(tmp_path / "resumed.npz") as resumed:
        assert sorted(full.files) == sorted(resumed.files)
        for key in full.files:
            np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)


@pytest.fixture(scope="module")
def small():
    task = jn.paper_task(jax.random.PRNGKey(0), d=4, n=12, n_test=20)
    net = jn.TwoLayer.init(jax.random.PRNGKey(1), d=4, m=8)
    return net, task


KW = dict(steps=6, eval_every=2, evals_per_chunk=1, seeds=[0], progress=False)


@pytest.mark.slow
def test_a_truncated_state_file_is_refused_naming_the_folder(small, tmp_path):
    jn.train(*small, "ntk", **KW, checkpoint=tmp_path)
    (state,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("state_")]
    biggest = max((f for f in state.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:-7])
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path}: {state.name} is corrupted"):
        jn.train(*small, "ntk", **KW, checkpoint=tmp_path, resume=True)


@pytest.mark.slow
def test_a_corrupted_history_chunk_is_refused_naming_the_folder(small, tmp_path):
    jn.train(*small, "ntk", **KW, checkpoint=tmp_path)
    chunk = tmp_path / "history" / "000000000004.npz"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path}: history chunk {chunk.name}"):
        jn.train(*small, "ntk", **KW, checkpoint=tmp_path, resume=True)


def test_the_history_is_appended_per_chunk_and_one_state_is_kept(small, tmp_path):
    run = jn.train(*small, "ntk", **KW, checkpoint=tmp_path)
    chunks = sorted(p.name for p in (tmp_path / "history").iterdir())
    assert chunks == [f"{s:012d}.npz" for s in (0, 2, 4, 6)]
    assert checkpoint.latest_step(tmp_path) == 6
    assert sorted(p.name for p in tmp_path.glob("state_*")) == [
        "state_000000000006",
        "state_000000000006.sha256.json",
    ]
    with np.load(tmp_path / "history" / chunks[2]) as z:
        np.testing.assert_array_equal(z["train_loss"], run.history["train_loss"][:, :, 2:3])


def test_without_resume_a_previous_checkpoint_is_replaced(small, tmp_path):
    jn.train(*small, "ntk", **{**KW, "seeds": [3]}, checkpoint=tmp_path)
    fresh = jn.train(*small, "ntk", **KW, checkpoint=tmp_path)
    resumed = jn.train(*small, "ntk", **KW, checkpoint=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, fresh.params)
    np.testing.assert_array_equal(resumed.history["test_loss"], fresh.history["test_loss"])
