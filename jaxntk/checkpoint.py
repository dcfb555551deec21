"""Checkpoints of a training run: the trainer's state with orbax-checkpoint, the history per chunk.

A checkpoint folder holds

    config.json               the run's settings; a resume with other settings is refused
    history/<step>.npz        one file per chunk of evaluations, appended as the run goes
    state_<step>/             the trainer's state after `step` steps (orbax: every process
                              writes its own shards; written under a temporary name, then renamed)
    state_<step>.sha256.json  the seal: the SHA-256 of every file of state_<step>/, written last

Every file is written under a temporary name and renamed, so a process killed at any moment
leaves the last sealed state and the chunks up to it intact; what it left half-written is
removed when the run restarts. A state whose files do not match their seal (a truncated or
altered file) or a history chunk that cannot be read is an error naming the folder: it is never
loaded. The state is restored onto the devices and processes of the resuming run, whatever
they were when it was saved.

Example:
    >>> import tempfile
    >>> import jax.numpy as jnp
    >>> folder = Path(tempfile.mkdtemp())
    >>> state = {"u": jnp.arange(4.0), "key": jnp.zeros(2, jnp.uint32)}
    >>> begin(folder, {"lr": 1.0}, resume=False)
    False
    >>> save_chunk(folder, {"step": np.array([0, 10]), "loss": np.array([[[1.0, 0.5]]])})
    >>> save_state(folder, 10, state)
    >>> begin(folder, {"lr": 1.0}, resume=True)
    True
    >>> restored, step, history = restore(folder, state)
    >>> step, restored["u"].tolist(), history[0]["loss"].tolist()
    (10, [0.0, 1.0, 2.0, 3.0], [[[1.0, 0.5]]])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["begin", "latest_step", "restore", "save_chunk", "save_state"]

CONFIG = "config.json"
HISTORY = "history"
_STATE = re.compile(r"^state_(\d+)$")
_SEAL = ".sha256.json"
_TMP = ".tmp-"  # prefix of our own temporary files
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # marker orbax puts in the name of a state being written


def begin(folder: str | Path, config: dict[str, Any], *, resume: bool) -> bool:
    """Prepare `folder` for a run with `config`; True when there is a sealed state to resume from.

    Removes what a killed run left half-written (temporary files, unsealed states). Without
    `resume` it also removes a previous run's checkpoint (only the files this module writes).
    With `resume` and a previous `config.json`, the settings must be equal (JSON-wise).

    Args:
        folder: the checkpoint folder (created if missing), one that every process sees.
        config: the run's settings, JSON-serialisable (other values are compared as strings).
        resume: keep a previous checkpoint with equal settings to resume from.

    Returns:
        Whether `folder` holds a complete state to `restore`.

    Raises:
        ValueError: the saved settings differ from `config` (the keys that differ are named).
    """
    folder = Path(folder)
    config = json.loads(json.dumps(config, default=str))
    saved = _read_config(folder) if resume else None
    if saved is not None and saved != config:
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(
            f"checkpoint in {folder} was made with other settings ({diff}); "
            "resume needs the same configuration"
        )
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / HISTORY).mkdir(exist_ok=True)
        for path in [*folder.iterdir(), *(folder / HISTORY).iterdir()]:
            stale = path.name.startswith(_TMP) or _ORBAX_TMP in path.name
            if _STATE.match(path.name) and not (resume and _seal(path).exists()):
                stale = True
            if not resume and (path.name.endswith(_SEAL) or path.parent == folder / HISTORY):
                stale = True
            if stale:
                _remove(path)
        if saved is None:
            _write_atomic(folder / CONFIG, json.dumps(config, indent=1).encode())
    _sync("jaxntk-checkpoint-begin")
    return resume and latest_step(folder) is not None


def latest_step(folder: str | Path) -> int | None:
    """The step of the newest sealed state in `folder`, None when there is none.

    Args:
        folder: a checkpoint folder.

    Returns:
        The step count of its newest complete state, or None.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = [
        int(m.group(1))
        for p in folder.iterdir()
        if (m := _STATE.match(p.name)) and _seal(p).exists()
    ]
    return max(steps, default=None)


def save_chunk(folder: str | Path, chunk: dict[str, np.ndarray]) -> None:
    """Append one chunk of history: `chunk["step"]`'s last entry names the file (process 0).

    Args:
        folder: the checkpoint folder (`begin` prepared it).
        chunk: the chunk's arrays by name, with "step" the (E,) steps it evaluated at.
    """
    if jax.process_index() != 0:
        return
    path = Path(folder) / HISTORY / f"{int(chunk['step'][-1]):012d}.npz"
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=_TMP, delete=False) as f:
        np.savez(f, **chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def save_state(folder: str | Path, step: int, state: Any) -> None:
    """Save `state` (any pytree of arrays, sharded or not) as the state after `step` steps.

    Every process writes its shards (orbax); process 0 then seals the state with its checksums
    and removes the older states. Every process must call it.

    Args:
        folder: the checkpoint folder (`begin` prepared it).
        step: the number of steps the state has taken.
        state: the trainer's state.
    """
    folder = Path(folder)
    path = folder / f"state_{step:012d}"
    leaves = jax.tree_util.tree_leaves(state)
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path.absolute(), _as_dict(leaves))
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        sums = {
            str(f.relative_to(path)): _sha256(f) for f in sorted(path.rglob("*")) if f.is_file()
        }
        _write_atomic(_seal(path), json.dumps(sums, indent=0).encode())
        for old in folder.iterdir():
            m = _STATE.match(old.name)
            if m and int(m.group(1)) < step:
                _remove(_seal(old))
                _remove(old)
    _sync("jaxntk-checkpoint-save")


def restore(folder: str | Path, like: Any) -> tuple[Any, int, list[dict[str, np.ndarray]]]:
    """The newest sealed state, restored like `like`, its step, and the history chunks up to it.

    Args:
        folder: a checkpoint folder (`begin` returned True for it).
        like: a pytree of arrays with the structure, shapes, dtypes and shardings wanted: the
            state is placed on `like`'s devices, whatever the devices that saved it.

    Returns:
        (state, step, history): the state shaped and placed like `like`, its step, and the
        history chunks (dicts of arrays) in order, the last ending at `step`.

    Raises:
        ValueError: the state does not match its seal, a history chunk is missing or unreadable,
            or the state's arrays do not have `like`'s shapes; the message names the folder.
    """
    folder = Path(folder)
    step = latest_step(folder)
    if step is None:
        raise ValueError(f"checkpoint {folder} holds no complete state to resume from")
    path = folder / f"state_{step:012d}"
    _verify(path)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    target = _as_dict(
        [
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            for x in leaves
        ]
    )
    checkpointer = ocp.StandardCheckpointer()
    try:
        loaded = checkpointer.restore(path.absolute(), target)
    except Exception as err:  # orbax and tensorstore raise many types; say which folder failed
        raise ValueError(
            f"checkpoint {folder}: state_{step:012d} could not be read ({type(err).__name__}: "
            f"{err}); it is corrupted or was written by other settings"
        ) from err
    finally:
        checkpointer.close()
    state = jax.tree_util.tree_unflatten(treedef, [loaded[k] for k in sorted(loaded)])
    return state, step, _read_history(folder, step)


def _read_history(folder: Path, step: int) -> list[dict[str, np.ndarray]]:
    chunks = []
    for path in sorted((folder / HISTORY).glob("*.npz")):
        if int(path.stem) > step:
            continue  # a chunk whose state was not saved: the resumed run computes it again
        try:
            with np.load(path, allow_pickle=False) as z:
                chunks.append({k: z[k] for k in z.files})
        except Exception as err:  # zipfile, zlib, OSError, ValueError: all mean the same here
            raise ValueError(
                f"checkpoint {folder}: history chunk {path.name} is corrupted or truncated "
                f"({type(err).__name__}: {err})"
            ) from err
    ends = [int(c["step"][-1]) for c in chunks]
    if not ends or ends[-1] != step:
        raise ValueError(
            f"checkpoint {folder}: the history chunks end at step {ends[-1] if ends else None}, "
            f"the state is at step {step}; the folder is incomplete"
        )
    return chunks


def _verify(path: Path) -> None:
    sums = json.loads(_seal(path).read_text())
    found = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()}
    missing = sorted(set(sums) - found)
    if missing:
        raise ValueError(f"checkpoint {path.parent}: {path.name} is missing files {missing}")
    changed = sorted(name for name, digest in sums.items() if _sha256(path / name) != digest)
    if changed:
        raise ValueError(
            f"checkpoint {path.parent}: {path.name} is corrupted or truncated (the files "
            f"{changed} do not match their checksums); delete the folder to start over"
        )


def _read_config(folder: Path) -> dict | None:
    path = folder / CONFIG
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"checkpoint {folder}: {CONFIG} is corrupted ({err})") from err


def _as_dict(leaves: list) -> dict[str, Any]:
    # numbered keys that sort in leaf order: the tree structure comes from the resuming run
    return {f"leaf_{i:05d}": x for i, x in enumerate(leaves)}


def _seal(state_dir: Path) -> Path:
    return state_dir.with_name(state_dir.name + _SEAL)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, content: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=_TMP, delete=False) as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
