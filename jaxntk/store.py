"""A kernel on disk that survives a kill: `empirical_ntk(..., output=PATH)` and `KernelStore`.

A store is a folder:

- ``kernel.npy``: the kernel, a numpy ``.npy`` file of its final shape and dtype, created sparse
  (no bytes written before the blocks) and filled block row by block row;
- ``manifest.json``: the format, shape, dtype, block size, method, symmetry and a fingerprint of
  the arguments (the model function's name, the parameters, the inputs, the axes);
- ``rows/NNNNNN.json``: one record per finished block row, written after its bytes (atomically:
  a temporary file renamed), with the CRC-32 of the bytes the row wrote.

Restarted with the same arguments, `empirical_ntk` checks each finished row's checksum against the
bytes on disk and computes only the rows without a record. Other arguments, or a row whose bytes
do not match its record, raise a ValueError that says what differs and what to delete. A block
row i writes rows i·b … of its block pairs (i, j ≥ i) of a symmetric kernel, and their mirrors
(the columns i·b … of the rows below): with several processes (`jax.distributed`), each writes
its own rows (i ≡ process index, mod the process count) into the one file, and nothing is
gathered; every process returns the store once all rows are done.

Why a plain ``.npy`` with records beside it, and not zarr or tensorstore: it needs nothing beyond
numpy; any tool reads it (``np.load(path / "kernel.npy", mmap_mode="r")``); its rows are
contiguous, so a block row is one write and one read; and the records make resumption and the
checksums independent of the array format. A compressed chunked format buys nothing for a dense
float kernel.

`KernelStore` reads a finished store with bounded memory: `KernelStore.rows` reads a range of
rows into memory (no mapping: the process's resident set does not grow with the file), and the
store is a kernel for every function of `jaxntk.linalg` (`solve` by conjugate gradients,
`matrix_function`, `top_eigh`, `trace`, `effective_rank`, `spectral_density`, `alignment`), which
stream it tile by tile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "KernelStore"]

FORMAT = "jaxntk-kernel-store/1"
"""The manifest's format tag (a store of another format is refused)."""

_TILE_BYTES = 64 << 20  # rows read at a time by `KernelStore.tiles`


@dataclasses.dataclass(frozen=True)
class KernelStore:
    """A kernel stored on disk by `jaxntk.empirical_ntk(..., output=path)`.

    Attributes:
        path: the store's folder.
        shape: the kernel's shape, as `empirical_ntk` returns it.
        dtype: its numpy dtype.
        block: rows per block row.
        symmetric: whether it is K(x, x) (block pairs j ≥ i computed, the rest mirrored).
        method: the implementation that computed it.
        fingerprint: the SHA-256 of the arguments it was computed from.
        offset: where the kernel's data starts in kernel.npy (after the .npy header).
        diagonal_batch: whether it keeps only K(x_i, x_i) (0 in diagonal_axes): one row per input.

    Example:
        >>> import tempfile, numpy as np, jax.numpy as jnp
        >>> import jaxntk as jn
        >>> from jaxntk.store import KernelStore
        >>> f = lambda w, x: jnp.tanh(x @ w)            # one output per input
        >>> x = jnp.linspace(-1, 1, 12).reshape(6, 2)
        >>> path = tempfile.mkdtemp() + "/k"
        >>> store = jn.empirical_ntk(f, jnp.ones(2), x, output=path, batch_size=4)
        >>> store.shape, store.complete
        ((6, 6), True)
        >>> bool(np.allclose(store.array(), jn.empirical_ntk(f, jnp.ones(2), x)))
        True
        >>> KernelStore.open(path).rows(0, 2).shape
        (2, 6)
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    block: int
    symmetric: bool
    method: str
    fingerprint: str
    offset: int
    diagonal_batch: bool

    # --------------------------------------------------------------------------- reading

    @classmethod
    def open(cls, path: str | Path) -> KernelStore:
        """The store at `path`.

        Args:
            path: the folder `empirical_ntk` wrote.

        Returns:
            A `KernelStore`.

        Raises:
            ValueError: no store there, or one of another format.
        """
        path = Path(path)
        manifest = _read_manifest(path)
        if manifest is None:
            raise ValueError(f"no kernel store at {path} (no manifest.json)")
        return cls._from_manifest(path, manifest)

    @classmethod
    def _from_manifest(cls, path: Path, manifest: dict) -> KernelStore:
        return cls(
            path=path,
            shape=tuple(manifest["shape"]),
            dtype=np.dtype(manifest["dtype"]),
            block=int(manifest["block"]),
            symmetric=bool(manifest["symmetric"]),
            method=str(manifest["method"]),
            fingerprint=str(manifest["fingerprint"]),
            offset=int(manifest["offset"]),
            diagonal_batch=bool(manifest.get("diagonal_batch")),
        )

    @property
    def n(self) -> int:
        """The number of rows (inputs x1)."""
        return self.shape[0]

    @property
    def num_block_rows(self) -> int:
        """Block rows of the computation: ⌈n / block⌉."""
        return -(-self.shape[0] // self.block)

    @property
    def done(self) -> list[int]:
        """The finished block rows (those with a record), sorted."""
        folder = self.path / "rows"
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("[0-9]*.json"))

    @property
    def complete(self) -> bool:
        """Whether every block row is finished."""
        return len(self.done) == self.num_block_rows

    def array(self) -> np.memmap:
        """The whole kernel as a read-only memmap (its pages count toward the resident set as they
        are read: `rows` and `tiles` read without a mapping).

        Returns:
            A `numpy.memmap` of `shape`.

        Raises:
            ValueError: the store is not complete.
        """
        self._require_complete()
        return np.load(self.path / "kernel.npy", mmap_mode="r")

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the kernel, read into memory.

        Args:
            start: first row.
            stop: one past the last row.

        Returns:
            (stop − start, *shape[1:]) array.
        """
        if not 0 <= start <= stop <= self.n:
            raise ValueError(f"rows [{start}, {stop}) out of range for {self.n} rows")
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        with open(self.path / "kernel.npy", "rb") as fh:
            offset = self.offset + start * width * self.dtype.itemsize
            _read_into(fh, out, offset)
        return out

    def tiles(self, tile_bytes: int = _TILE_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """The kernel as consecutive row tiles (start row, rows), each about `tile_bytes`.

        Args:
            tile_bytes: bytes per tile (at least one row).

        Yields:
            (start, rows) pairs covering the kernel in order.
        """
        self._require_complete()
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        step = max(1, tile_bytes // max(row_bytes, 1))
        for start in range(0, self.n, step):
            yield start, self.rows(start, min(start + step, self.n))

    def matmat(self, v: Any) -> np.ndarray:
        """K V for a square 2-D kernel, streamed tile by tile (`jaxntk.linalg`'s product).

        Args:
            v: (N,) or (N, l).

        Returns:
            K V as a numpy array of v's shape, in the kernel's dtype.
        """
        self._require_square()
        v = np.asarray(v, dtype=self.dtype)
        out = np.empty((self.n, *v.shape[1:]), self.dtype)
        for start, tile in self.tiles():
            out[start : start + tile.shape[0]] = tile @ v
        return out

    def diagonal(self) -> np.ndarray:
        """The diagonal of a square 2-D kernel, streamed.

        Returns:
            (N,) array.
        """
        self._require_square()
        out = np.empty(self.n, self.dtype)
        for start, tile in self.tiles():
            index = np.arange(tile.shape[0])
            out[start : start + tile.shape[0]] = tile[index, start + index]
        return out

    def frobenius_sq(self) -> float:
        """‖K‖_F², streamed (float64 accumulation).

        Returns:
            The sum of the squared entries.
        """
        self._require_complete()
        return float(sum(np.sum(np.square(t, dtype=np.float64)) for _, t in self.tiles()))

    def verify(self, rows: Sequence[int] | None = None) -> list[int]:
        """The finished block rows whose bytes on disk no longer match their record's checksum.

        Args:
            rows: the block rows to check (default: every finished one).

        Returns:
            The damaged block rows (empty when all match).
        """
        rows = self.done if rows is None else list(rows)
        layout = _Layout.of(self)
        bad = []
        for i in rows:
            record = _read_record(self.path, i)
            if record is None or record.get("crc32") != layout.checksum_on_disk(self.path, i):
                bad.append(i)
        return bad

    def _require_complete(self) -> None:
        if not self.complete:
            missing = self.num_block_rows - len(self.done)
            raise ValueError(
                f"the kernel store at {self.path} is not complete: {missing} of "
                f"{self.num_block_rows} block rows missing (run empirical_ntk again with the same "
                "arguments to finish it)"
            )

    def _require_square(self) -> None:
        self._require_complete()
        if len(self.shape) != 2 or self.shape[0] != self.shape[1]:
            raise ValueError(
                f"the stored kernel has shape {self.shape}: the linear algebra needs a square "
                "(N, N) kernel (one output per input, or the outputs traced: trace_axes=(-1,))"
            )


# --------------------------------------------------------------------------- the layout


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which bytes of kernel.npy block row i writes, in order: its rows' columns from its first
    computed block on, then (symmetric) the mirrored columns of the rows below."""

    shape: tuple[int, ...]
    dtype: np.dtype
    block: int
    symmetric: bool
    offset: int  # of the data in kernel.npy
    diagonal_batch: bool  # 0 in diagonal_axes: shape (n, *inner), one row per example

    @classmethod
    def of(cls, store: KernelStore) -> _Layout:
        return cls(
            store.shape,
            store.dtype,
            store.block,
            store.symmetric,
            store.offset,
            store.diagonal_batch,
        )

    def regions(self, i: int) -> list[tuple[slice, ...]]:
        """The index regions of the kernel block row i writes, in order: its rows (from its
        first computed column on), then for a symmetric kernel the mirrored columns of the rows
        below. (The symmetric layout has n1 = n2 and one block size for rows and columns.)"""
        r0, r1 = i * self.block, min((i + 1) * self.block, self.shape[0])
        if self.diagonal_batch or not self.symmetric:
            return [(slice(r0, r1),)]
        n2 = self.shape[1]
        return [(slice(r0, r1), slice(r0, n2)), (slice(r1, n2), slice(r0, r1))]

    def mapped(self, path: Path, mode: str) -> np.memmap:
        """The kernel file mapped: a mapping per row, dropped after it, so the process's resident
        set holds one row's pages, not the file's (writes land in the system's page cache: a
        killed process loses none)."""
        kernel = np.memmap(
            path / "kernel.npy", dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape
        )
        advise = getattr(kernel._mmap, "madvise", None)
        if advise is not None and hasattr(mmap, "MADV_RANDOM"):
            # no fault-around: a mirrored column touches one page per row, and the system would
            # otherwise map 16 around each (RSS of 5 GB at n = 30000 for 120 MB written a row)
            advise(mmap.MADV_RANDOM)
        return kernel

    def checksum_on_disk(self, path: Path, i: int) -> int:
        kernel, crc = self.mapped(path, "r"), 0
        for region in self.regions(i):
            crc = zlib.crc32(np.ascontiguousarray(kernel[region]).tobytes(), crc)
        del kernel
        return crc


# --------------------------------------------------------------------------- writing


class _Writer:
    """Writes finished block rows into a store and records them (ntk.py's `_stored_kernel`)."""

    def __init__(self, store: KernelStore, layout: _Layout, mirror: str | None):
        self.store, self.layout, self.mirror = store, layout, mirror

    def close(self) -> None:
        """Nothing is held open between rows."""

    def write_row(self, i: int, strip: np.ndarray) -> None:
        """Block row i from its strip (rows, columns from its first block on, *trailing), then
        its record with the CRC-32 of the bytes in `regions` order. The bytes are in the
        system's page cache once written: a killed process loses none of them. They are not
        forced to disk (a flush per group of rows wrote the mirrored columns' pages again and
        again); after a crash of the machine, a row whose bytes did not reach the disk fails its
        checksum when resumed."""
        pieces = [np.ascontiguousarray(strip, dtype=self.store.dtype)]
        if self.layout.symmetric and not self.layout.diagonal_batch:
            mirrored = np.einsum(self.mirror, strip)  # (n2 − r0, rows, *trailing)
            pieces.append(np.ascontiguousarray(mirrored[strip.shape[0] :], self.store.dtype))
        kernel, crc = self.layout.mapped(self.store.path, "r+"), 0
        for region, data in zip(self.layout.regions(i), pieces, strict=True):
            kernel[region] = data
            crc = zlib.crc32(data.tobytes(), crc)
        del kernel  # unmapped: the pages stay in the page cache, out of this process
        _write_record(self.store.path, i, {"row": i, "crc32": crc})


def open_for_writing(
    path: Path,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    block: int,
    symmetric: bool,
    diagonal_batch: bool,
    method: str,
    fingerprint: str,
    description: dict,
    mirror: str | None,
    create: bool,
) -> tuple[_Writer, list[int]]:
    """The writer of a new or resumed store, and its finished block rows (checked). `create`:
    this process makes a missing store (process 0; the others call after a barrier).

    Raises ValueError for a store of other arguments or with damaged rows."""
    manifest = _read_manifest(path)
    if manifest is None and create:
        if path.exists() and any(path.iterdir()):
            raise ValueError(
                f"output={str(path)!r} is a folder that is not empty and holds no kernel store "
                "(no manifest.json): choose a new path"
            )
        path.mkdir(parents=True, exist_ok=True)
        (path / "rows").mkdir(exist_ok=True)
        mm = np.lib.format.open_memmap(path / "kernel.npy", mode="w+", dtype=dtype, shape=shape)
        offset = mm.offset
        del mm
        manifest = {
            "format": FORMAT,
            "shape": list(shape),
            "dtype": np.dtype(dtype).str,
            "block": block,
            "symmetric": symmetric,
            "diagonal_batch": diagonal_batch,
            "method": method,
            "fingerprint": fingerprint,
            "offset": offset,
            "arguments": description,
        }
        _write_json(path / "manifest.json", manifest)
    elif manifest is None:
        raise ValueError(f"no kernel store at {path} (process 0 should have created it)")
    _check_same(path, manifest, shape, dtype, fingerprint, description)
    store = KernelStore._from_manifest(path, manifest)
    layout = _Layout.of(store)
    return _Writer(store, layout, mirror), store.done


def stored_choice(path: Path) -> tuple[int, str] | None:
    """(block, method) of the store at path, or None where there is none: a resumed run keeps
    them, so that its rows equal the first run's bit for bit."""
    manifest = _read_manifest(path)
    return None if manifest is None else (int(manifest["block"]), str(manifest["method"]))


def _check_same(path, manifest, shape, dtype, fingerprint, description) -> None:
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"the store at {path} has format {manifest.get('format')!r}, expected {FORMAT!r}"
        )
    if manifest["fingerprint"] == fingerprint and tuple(manifest["shape"]) == tuple(shape):
        return
    old = manifest.get("arguments", {})
    differs = [k for k in sorted(set(old) | set(description)) if old.get(k) != description.get(k)]
    raise ValueError(
        f"the kernel store at {path} was computed from other arguments (they differ in: "
        f"{', '.join(differs) or 'the model function'}; stored shape {tuple(manifest['shape'])}, "
        f"dtype {manifest['dtype']}; asked {tuple(shape)}, {np.dtype(dtype).str}): delete it or "
        "choose another output path"
    )


def fingerprint_of(parts: Sequence[Any]) -> str:
    """SHA-256 over strings and arrays (their dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- files


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"the kernel store's manifest {path / 'manifest.json'} is damaged: {err}"
        ) from err


def _record_path(path: Path, i: int) -> Path:
    return path / "rows" / f"{i:06d}.json"


def _read_record(path: Path, i: int) -> dict | None:
    try:
        return json.loads(_record_path(path, i).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_record(path: Path, i: int, record: dict) -> None:
    _write_json(_record_path(path, i), record, sync=False)  # a lost record: the row is redone


def _write_json(target: Path, data: dict, sync: bool = True) -> None:
    """Atomically: a temporary file (flushed to disk when `sync`), renamed over the target."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, target)


def _read_into(fh, out: np.ndarray, offset: int) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    fh.seek(offset)
    got = fh.readinto(view)
    if got != view.nbytes:
        raise ValueError(f"the kernel file ended early: {got} of {view.nbytes} bytes at {offset}")
