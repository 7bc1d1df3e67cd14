r"""Data larger than memory: a ``.npy`` file opened memory-mapped and read batch by batch.

:class:`MemmapDataset` is a map-style :class:`torch.utils.data.Dataset` over the rows of a 2-D
``.npy`` file. Nothing is read when it is opened; a minibatch is read in one call
(``__getitems__``), its rows in file order so that the page cache serves neighbours together.
Splits are views (a row range, or a slice of one :class:`Permutation` of the rows), never copies,
and an optional per-column affine map (standardisation) is applied to each batch as it is read.

Rows are read with positional reads (``os.pread``, one per run of consecutive rows) by default:
what is read stays in the kernel's page cache, not in the process's resident memory, which stays
bounded whatever the file's size. With ``access="map"`` they are read through the memory map
instead, which lets go of its pages every :data:`RELEASE_BYTES` (``madvise(MADV_DONTNEED)``). For
scattered minibatch rows the map is the slower of the two, measured on Linux: every page fault maps
the whole large folio around the row (about 128 KB), so keeping the resident memory bounded means
faulting again and again (0.5 to 1 ms a minibatch of 100 rows, against 0.3 ms for positional reads),
while leaving the pages mapped (30 us) makes the process's resident memory grow to the file's size.

:func:`column_statistics` makes one streaming pass (chunk by chunk) that checks the values and
gathers what preprocessing and kind inference need: the count, mean and standard deviation (Chan et
al.'s pairwise update of chunk moments about the first row, in float64), minimum and maximum, and whether every value is
0/1, integral or non-negative. :func:`load_memmap` is :func:`flowkit.data.load_file` for such files:
the same checks, kinds and messages, in bounded memory.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from flowkit.data.files import MAX_CATEGORIES, Kind, raise_constant_column, split_sizes
from flowkit.data.splits import Splits
from flowkit.errors import FileProblem, FlowkitTypeError, FlowkitValueError

__all__ = ["CHUNK_ELEMENTS", "RELEASE_BYTES", "MemmapDataset", "Permutation", "Statistics", "column_statistics",
           "load_memmap", "split_memmap"]

CHUNK_ELEMENTS = 1 << 19
"""Values per chunk of a streaming pass (rows per chunk: this over the columns, at least one)."""
RELEASE_BYTES = 32 << 20
"""Bytes of the file mapped between two releases of the map's pages from the process's memory."""
FAULT_AROUND = 128 << 10
"""Bytes a page fault of a file map maps around a scattered row (measured on Linux with large folios):
what one such row costs in resident memory until the map's pages are released."""
EXAMPLES = 5
BLOCK = 8
"""Rows per block of a :class:`Permutation`."""


class Permutation:
    r"""A seeded permutation of ``range(n)`` that costs half a byte a row: ``perm[i]`` (``i`` an
    integer array of positions) is the row at those positions, ``perm[a:b]`` a view of positions ``a..b``.

    The rows are cut into :math:`m = \lfloor n / B \rfloor` strided blocks of :math:`B` =
    :data:`BLOCK` rows, block :math:`j` holding rows :math:`j, j + m, \dots, j + (B - 1) m`, and the
    :math:`n - mB` rows left over make one short block; the order is a ``torch.randperm`` of the
    blocks (seeded with ``seed``), each block's rows in turn. Every block spans the whole file, so
    any run of positions (a validation or test part) samples all of it evenly; the order of rows
    within a part does not matter to :func:`flowkit.train.fit`, which shuffles them every epoch.

    Example:
        >>> perm = Permutation(21, seed=0)
        >>> sorted(perm[np.arange(21)].tolist()) == list(range(21))
        True
        >>> perm[3:6][np.arange(3)].tolist() == perm[np.arange(3, 6)].tolist()
        True
    """

    def __init__(self, n: int, seed: int = 0, *, offset: int = 0, start: int = 0, stop: int | None = None,
                 blocks: np.ndarray | None = None):
        self.n, self.seed, self.offset = int(n), int(seed), int(offset)
        self.start, self.stop = int(start), self.n if stop is None else int(stop)
        self.m, self.tail = divmod(self.n, BLOCK)
        if blocks is None:
            count = self.m + (self.tail > 0)
            dtype = torch.int32 if count < 2**31 else torch.int64
            blocks = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed), dtype=dtype).numpy()
        self.blocks = blocks
        where = np.flatnonzero(blocks == self.m) if self.tail else ()
        self.short = int(where[0]) * BLOCK if len(where) else self.n
        """The position where the short block starts."""

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"Permutation(n={self.n}, seed={self.seed}, positions {self.start}..{self.stop})"

    def __getitem__(self, item: slice | np.ndarray) -> Permutation | np.ndarray:
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1:
                raise FlowkitValueError(f"expected a slice with step 1, got step {step}")
            return Permutation(self.n, self.seed, offset=self.offset, start=self.start + start,
                               stop=self.start + max(start, stop), blocks=self.blocks)
        p = np.asarray(item, dtype=np.int64).reshape(-1) + self.start
        if not self.tail:
            block, offset = np.divmod(p, BLOCK)
            rows = offset * self.m + self.blocks[block]
            return rows + self.offset if self.offset else rows
        after = p >= self.short + self.tail
        shifted = np.where(after, p - self.tail, p)
        block, offset = np.divmod(shifted, BLOCK)
        rows = offset * self.m + self.blocks[block + after]
        in_short = (p >= self.short) & ~after
        if in_short.any():
            rows[in_short] = self.m * BLOCK + p[in_short] - self.short
        return rows + self.offset if self.offset else rows


class _Map:
    """One ``.npy`` file's array, opened lazily in each process (a DataLoader worker opens its own)
    and shared by the views of a :class:`MemmapDataset`: rows read by positional reads
    (``access="read"``) or through a memory map whose pages are released as it reads (``"map"``)."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, int], dtype: np.dtype, fortran: bool,
                 access: str = "read"):
        self.path, self.offset, self.shape, self.dtype, self.fortran = path, offset, shape, dtype, fortran
        self.access = "map" if fortran else access  # a Fortran-order row is not contiguous
        self.row_bytes = shape[1] * dtype.itemsize
        self._pid: int | None = None
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        self._read = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": None, "_fd": None, "_map": None, "_array": None, "_read": 0}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _here(self) -> None:
        """Opens the file and its map in this process (once per process)."""
        if self._pid == os.getpid():
            return
        self._fd = os.open(self.path, os.O_RDONLY)
        self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        count = self.shape[0] * self.shape[1]
        flat = np.frombuffer(self._map, dtype=self.dtype, count=count, offset=self.offset)
        self._array = flat.reshape(self.shape, order="F" if self.fortran else "C")
        self._pid, self._read = os.getpid(), 0

    @property
    def array(self) -> np.ndarray:
        """The file's ``(N, D)`` array, read-only, in this process's map."""
        self._here()
        return self._array

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (file rows, ascending) as a new array ``(len(rows), D)``."""
        self._here()
        if self.access == "map":
            values = self._array[rows]
            self._count(len(rows) * (FAULT_AROUND + self.row_bytes))
            return values
        if len(rows) == 0:
            return np.empty((0, self.shape[1]), self.dtype)
        size, fd, pread = self.row_bytes, self._fd, os.pread
        steps = np.diff(rows)
        if (steps != 1).all():  # scattered rows (a shuffled minibatch): one read each
            offsets = (rows * size + self.offset).tolist()
            return self._array_of(b"".join([pread(fd, size, at) for at in offsets]), len(rows))
        breaks = np.flatnonzero(steps != 1) + 1
        starts = rows[np.concatenate([[0], breaks])]
        lengths = np.diff(np.concatenate([[0], breaks, [len(rows)]]))
        data = b"".join([pread(fd, size * count, self.offset + size * start)
                         for start, count in zip(starts.tolist(), lengths.tolist())])
        return self._array_of(data, len(rows))

    def block(self, start: int, stop: int) -> np.ndarray:
        """The file rows ``start..stop`` as a new array."""
        self._here()
        if self.access == "map":
            values = np.array(self._array[start:stop])
            self._count(values.nbytes)
            return values
        return self._array_of(os.pread(self._fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes),
                              stop - start)

    def _array_of(self, data: bytes, rows: int) -> np.ndarray:
        if len(data) != rows * self.row_bytes:
            raise FileProblem(f"data file {self.path} changed while it was read: it is shorter than its header says")
        return np.frombuffer(data, dtype=self.dtype).reshape(rows, self.shape[1])

    def _count(self, nbytes: int) -> None:
        """Counts ``nbytes`` of the map just touched; past :data:`RELEASE_BYTES` the map lets go of them all."""
        self._read += nbytes
        if self._read >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        """Drops the map's pages from this process's resident memory (the page cache keeps them)."""
        self._read = 0
        if self._map is not None and self._pid == os.getpid() and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED)


def _open(path: Path, access: str = "read") -> _Map:
    """The map of ``path``'s array after checking that it is a readable ``.npy`` of a numeric 2-D array."""
    if path.suffix.lower() != ".npy":
        raise FlowkitValueError(f"expected a .npy file to memory-map, got {path.name}")
    if not path.is_file():
        raise FileProblem(f"data file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    damaged = f"cannot read data file {path}: truncated, damaged or not written by numpy.save"
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except PermissionError as error:
        raise FileProblem(f"cannot read data file {path}: {error.strerror}") from None
    except (ValueError, EOFError, OSError) as error:
        if "pickle" in str(error) or "Python objects" in str(error):
            raise FileProblem(f"data file {path} holds Python objects (a pickle), which flowkit does not load; save a "
                              "numeric array with numpy.save") from None
        raise FileProblem(damaged) from None
    name, dtype, shape = path.name, mapped.dtype, mapped.shape
    fortran = mapped.ndim > 1 and mapped.flags.f_contiguous and not mapped.flags.c_contiguous
    offset = mapped.offset
    del mapped
    if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise FlowkitValueError(f"expected numeric values in {name}, got dtype {dtype}")
    if len(shape) != 2:
        raise FlowkitValueError(f"expected a 2-D array (N, D) in {name}, got shape {shape}")
    if shape[0] < 2:
        raise FlowkitValueError(f"expected at least 2 rows in {name}, got {shape[0]}")
    if shape[1] < 1:
        raise FlowkitValueError(f"expected at least one column in {name}, got shape {shape}")
    return _Map(path, offset, (int(shape[0]), int(shape[1])), np.dtype(dtype), fortran, access)


class MemmapDataset(Dataset):
    r"""The rows of a 2-D ``.npy`` file ``(N, D)`` as a map-style dataset, read as they are asked for.

    Item ``i`` is a row tensor ``(D,)``; ``__getitems__(indices)`` (which
    :class:`torch.utils.data.DataLoader` and :func:`flowkit.train.fit` call for a whole minibatch)
    returns the stacked batch ``(B, D)`` in the order asked, the rows read in file order (one
    positional read per run of consecutive rows, or one fancy index of the memory map);
    ``dataset[a:b]`` is a batch too. Values become ``dtype`` (``float32``, or ``int64`` for
    categorical codes) and then, if given, ``(x - shift) / scale`` per column (computed in float64).
    Nothing is held but the file's header, the selection of rows and one batch at a time.

    Arguments:
        path: a ``.npy`` file of a numeric 2-D array (C or Fortran order).
        rows: the file rows this dataset shows, a ``range`` or ``slice`` with step 1 (default: all).
        index: instead of ``rows``, the file rows in the dataset's order: a 1-D integer array
            (kept, not copied: a slice of a shared array makes a view) or a :class:`Permutation`.
        shift, scale: ``(D,)`` per-column affine map, ``(x - shift) / scale``; ``None`` for none.
        dtype: ``torch.float32`` or ``torch.int64``.
        access: ``"read"`` (positional reads, the default) or ``"map"`` (through the memory map); see
            the module's notes. Views share the file and its access.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.save(f"{folder}/x.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
        ...     data = MemmapDataset(f"{folder}/x.npy", rows=range(1, 5))
        ...     len(data), data[0].tolist(), data.__getitems__([3, 0]).tolist()
        (4, [2.0, 3.0], [[8.0, 9.0], [2.0, 3.0]])
    """

    def __init__(self, path: os.PathLike | str, rows: range | slice | None = None, *,
                 index: np.ndarray | Tensor | None = None, shift: Sequence[float] | np.ndarray | None = None,
                 scale: Sequence[float] | np.ndarray | None = None, dtype: torch.dtype = torch.float32,
                 access: str = "read"):
        if access not in ("read", "map"):
            raise FlowkitValueError(f"expected access 'read' or 'map', got {access!r}")
        self._map = path if isinstance(path, _Map) else _open(Path(path), access)
        n, features = self._map.shape
        if dtype not in (torch.float32, torch.int64):
            raise FlowkitValueError(f"expected dtype torch.float32 or torch.int64, got {dtype}")
        if rows is not None and index is not None:
            raise FlowkitValueError("expected rows or index, got both")
        self._start, self._stop, self._index = 0, n, None
        if index is not None:
            if isinstance(index, Permutation):
                if index.offset < 0 or index.offset + index.n > n:
                    raise FlowkitValueError(f"expected a permutation of rows in 0..{n - 1}, got rows "
                                            f"{index.offset}..{index.offset + index.n - 1}")
            else:
                index = np.asarray(index.numpy() if isinstance(index, Tensor) else index)
                if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
                    raise FlowkitValueError(f"expected index to be a 1-D integer array, got {index.dtype} "
                                            f"{index.shape}")
                if len(index) and (index.min() < 0 or index.max() >= n):
                    raise FlowkitValueError(f"expected index rows in 0..{n - 1}, got {index.min()}..{index.max()}")
            self._index = index
        elif rows is not None:
            if not isinstance(rows, (range, slice)):
                raise FlowkitTypeError(f"expected rows to be a range or slice, got {type(rows).__name__}")
            start, stop, step = slice(rows.start, rows.stop, rows.step).indices(n)
            if step != 1:
                raise FlowkitValueError(f"expected rows with step 1, got step {step}")
            self._start, self._stop = start, max(start, stop)
        self.shift = None if shift is None else self._column("shift", shift, features)
        self.scale = None if scale is None else self._column("scale", scale, features)
        if self.scale is not None and not (self.scale > 0).all():
            raise FlowkitValueError(f"expected scale > 0 in every column, got {self.scale.tolist()}")
        self.dtype = dtype
        self.statistics: Statistics | None = None
        """The :class:`Statistics` of the whole file, when :func:`load_memmap` opened it."""

    @staticmethod
    def _column(name: str, values: Any, features: int) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (features,) or not np.isfinite(values).all():
            raise FlowkitValueError(f"expected {name} of shape ({features},), finite, got {values.shape}")
        return values

    @property
    def path(self) -> Path:
        """The ``.npy`` file."""
        return self._map.path

    @property
    def features(self) -> int:
        """``D``, the values per row."""
        return self._map.shape[1]

    @property
    def shape(self) -> torch.Size:
        """``(len(self), D)``, as a tensor of the rows would have."""
        return torch.Size((len(self), self.features))

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else self._stop - self._start

    def __repr__(self) -> str:
        return f"MemmapDataset({self.path.name}, {len(self)} x {self.features}, {self.dtype})"

    def view(self, rows: range | slice | None = None, *, shift: Any = None, scale: Any = None) -> MemmapDataset:
        """The rows ``rows`` (positions in this dataset, step 1) as a new dataset on the same map,
        with this dataset's dtype and affine map unless ``shift`` and ``scale`` replace it."""
        rows = slice(None) if rows is None else slice(rows.start, rows.stop, rows.step)
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise FlowkitValueError(f"expected rows with step 1, got step {step}")
        stop = max(start, stop)
        selection = dict(index=self._index[start:stop]) if self._index is not None else \
            dict(rows=range(self._start + start, self._start + stop))
        return MemmapDataset(self._map, **selection, dtype=self.dtype,
                             shift=self.shift if shift is None else shift, scale=self.scale if scale is None else scale)

    def as_codes(self) -> MemmapDataset:
        """This dataset as ``int64`` codes (categorical data), on the same map, its statistics kept."""
        selection = dict(index=self._index) if self._index is not None else dict(rows=range(self._start, self._stop))
        codes = MemmapDataset(self._map, **selection, dtype=torch.int64)
        codes.statistics = self.statistics
        return codes

    def standardized(self, statistics: Statistics) -> MemmapDataset:
        """This dataset z-scored with ``statistics`` (``(x - mean) / std`` per column)."""
        if (statistics.std <= 0).any():
            column = int(np.flatnonzero(statistics.std <= 0)[0])
            raise FlowkitValueError(f"cannot standardise {self.path.name}: column {column} has standard deviation 0")
        return self.view(shift=statistics.mean, scale=statistics.std)

    def _positions(self, indices: Any) -> np.ndarray:
        positions = indices.numpy() if isinstance(indices, Tensor) else np.asarray(indices)
        if positions.dtype.kind not in "iu":
            if positions.size:
                raise FlowkitTypeError(f"expected integer indices, got {positions.dtype}")
            positions = positions.astype(np.int64)
        positions = positions.reshape(-1).astype(np.int64, copy=False)
        n = len(self)
        if positions.size:
            low, high = positions.min(), positions.max()
            if low < -n or high >= n:
                bad = positions[(positions < -n) | (positions >= n)][0]
                raise IndexError(f"index {bad} is out of range for {n} rows")
            if low < 0:
                positions = np.where(positions < 0, positions + n, positions)
        return positions

    def __getitem__(self, item: int | slice) -> Tensor:
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            return self.__getitems__(np.arange(start, stop, step))
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)) and not (
                isinstance(item, Tensor) and item.dim() == 0 and not item.is_floating_point()):
            raise FlowkitTypeError(f"expected an int or a slice, got {type(item).__name__}")
        return self.__getitems__([int(item)])[0]

    def __getitems__(self, indices: Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """The rows at ``indices`` (positions in this dataset), stacked: ``(len(indices), D)``."""
        positions = self._positions(indices)
        rows = self._index[positions] if self._index is not None else positions + self._start
        if len(rows) > 1 and (rows[1:] < rows[:-1]).any():
            order = np.argsort(rows, kind="stable")
            values = np.empty((len(rows), self.features), dtype=self._map.dtype)
            values[order] = self._map.rows(rows[order])
        else:
            values = self._map.rows(rows)
        return self._finish(values)

    def _finish(self, values: np.ndarray) -> Tensor:
        """Values read from the map as this dataset's dtype, after its affine map; a copy of the map."""
        if self.shift is not None or self.scale is not None:
            result = values.astype(np.float64)
            if self.shift is not None:
                result -= self.shift
            if self.scale is not None:
                result /= self.scale
            values = result
        target = np.int64 if self.dtype == torch.int64 else np.float32
        return torch.from_numpy(np.array(values, dtype=target, copy=True))

    def chunks(self, rows: int | None = None) -> Iterator[Tensor]:
        """The dataset in order, ``rows`` rows at a time (default: about :data:`CHUNK_ELEMENTS` values)."""
        rows = rows or max(1, CHUNK_ELEMENTS // self.features)
        for start in range(0, len(self), rows):
            stop = min(start + rows, len(self))
            if self._index is not None:
                yield self.__getitems__(np.arange(start, stop))
                continue
            yield self._finish(self._map.block(self._start + start, self._start + stop))

    def tensor(self) -> Tensor:
        """All the rows in one tensor ``(len(self), D)`` (for views small enough to hold)."""
        parts = list(self.chunks())
        return torch.cat(parts) if parts else torch.empty(0, self.features, dtype=self.dtype)

    def release(self) -> None:
        """Drops the pages read so far from this process's resident memory now."""
        self._map.release()


# ---------------------------------------------------------------- one streaming pass


@dataclass
class Statistics:
    """What one pass over ``(N, D)`` values found: per-column moments and range, and what the values are.

    ``mean`` and ``std`` (population, ``ddof=0``, as :func:`numpy.std`) are float64 ``(D,)``, ``NaN``
    when the values are not all finite; ``minimum`` and ``maximum`` ``(D,)`` in the file's values.
    """

    rows: int = 0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None
    nonfinite: int = 0
    """NaN and infinite values."""
    first_nonfinite: tuple[int, int, float] | None = None
    """``(row, column, value)`` of the first of them, row-major."""
    binary: bool = True
    """Every value is 0 or 1."""
    integral: bool = True
    """Every value is an integer."""
    negative: bool = False
    """Some value is below 0."""
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    """The smallest distinct values (up to six) that are ``"not_binary"``, ``"not_integral"`` and ``"negative"``."""
    _m2: np.ndarray | None = field(default=None, repr=False)
    _mean: np.ndarray | None = field(default=None, repr=False)
    _origin: np.ndarray | None = field(default=None, repr=False)

    @property
    def constant(self) -> np.ndarray:
        """The columns whose values are all equal."""
        return np.flatnonzero(self.minimum == self.maximum)

    def update(self, chunk: np.ndarray, first_row: int | np.ndarray = 0) -> None:
        """Adds a chunk ``(n, D)`` of rows that start at row ``first_row`` of the whole (or whose rows
        are ``first_row: (n,)``)."""
        if chunk.dtype == np.bool_:
            chunk = chunk.astype(np.uint8)
        n = len(chunk)
        if n == 0:
            return
        low, high = chunk.min(axis=0), chunk.max(axis=0)
        self.minimum = low if self.minimum is None else np.minimum(self.minimum, low)
        self.maximum = high if self.maximum is None else np.maximum(self.maximum, high)
        floating = np.issubdtype(chunk.dtype, np.floating)
        if floating:
            bad = ~np.isfinite(chunk)
            count = int(bad.sum())
            if count:
                if self.first_nonfinite is None:
                    row, column = np.argwhere(bad)[0]
                    at = first_row + int(row) if isinstance(first_row, int) else int(first_row[row])
                    self.first_nonfinite = (at, int(column), float(chunk[row, column]))
                self.nonfinite += count
        if self.nonfinite:
            self.rows += n
            return
        if self._origin is None:  # moments of x - x_0: the merges then add small numbers
            self._origin = chunk[0].astype(np.float64)
        values = chunk.astype(np.float64) - self._origin
        mean = values.mean(axis=0)
        m2 = np.square(values - mean).sum(axis=0)
        if self.rows == 0:
            self._mean, self._m2 = mean, m2
        else:  # Chan, Golub & LeVeque: merge the moments of two parts
            total = self.rows + n
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + m2 + np.square(delta) * (self.rows * n / total)
        self.rows += n
        self.mean = self._origin + self._mean
        self.std = np.sqrt(np.maximum(self._m2, 0) / self.rows)
        not_binary = (chunk != 0) & (chunk != 1)
        if not_binary.any():
            self.binary = False
            self._keep("not_binary", chunk[not_binary])
        if floating:
            fractional = chunk != np.round(chunk)
            if fractional.any():
                self.integral = False
                self._keep("not_integral", chunk[fractional])
        if (low < 0).any():
            self.negative = True
            self._keep("negative", chunk[chunk < 0])

    def _keep(self, name: str, values: np.ndarray) -> None:
        """Keeps the smallest distinct ``values`` seen under ``name`` (up to six)."""
        kept = self.examples.get(name)
        if kept is not None and len(kept) > EXAMPLES:
            values = values[values < kept[-1]]
        if values.size > 64:
            smallest = np.unique(np.partition(values, 63)[:64])
            values = smallest if len(smallest) > EXAMPLES else np.unique(values)
        merged = np.unique(values if kept is None else np.concatenate([kept, values.astype(kept.dtype)]))
        self.examples[name] = merged[: EXAMPLES + 1]

    def finish(self) -> Statistics:
        """Marks the moments undefined when some value was not finite; returns ``self``."""
        if self.nonfinite or self.mean is None:
            features = 0 if self.minimum is None else len(self.minimum)
            self.mean = self.std = np.full(features, np.nan)
        return self


def column_statistics(data: MemmapDataset | np.ndarray, rows: int | None = None) -> Statistics:
    """One streaming pass over ``data: (N, D)``, ``rows`` rows at a time (default: about
    :data:`CHUNK_ELEMENTS` values): a :class:`Statistics` whose mean and standard deviation agree
    with numpy's on the whole array to float64 rounding, whatever the chunks.

    A :class:`MemmapDataset` is read as it is stored in the file (its dtype and affine map aside).

    Example:
        >>> x = np.array([[1.0, 0.0], [2.0, 1.0], [4.0, 1.0]])
        >>> stats = column_statistics(x, rows=2)
        >>> [bool(np.allclose(a, b)) for a, b in ((stats.mean, x.mean(0)), (stats.std, x.std(0)))]
        [True, True]
        >>> stats.binary, stats.integral, stats.minimum.tolist(), stats.maximum.tolist()
        (False, True, [1.0, 0.0], [4.0, 1.0])
    """
    statistics = Statistics()
    if isinstance(data, MemmapDataset):
        rows = rows or max(1, CHUNK_ELEMENTS // data.features)
        for start in range(0, len(data), rows):
            stop = min(start + rows, len(data))
            if data._index is not None:
                first = np.sort(data._index[np.arange(start, stop)])
                chunk = data._map.rows(first)
            else:
                first = data._start + start
                chunk = data._map.block(first, data._start + stop)
            statistics.update(chunk, first)
        return statistics.finish()
    array = np.asarray(data)
    if array.ndim != 2:
        raise FlowkitValueError(f"expected data of shape (N, D), got {array.shape}")
    rows = rows or max(1, CHUNK_ELEMENTS // max(array.shape[1], 1))
    for start in range(0, len(array), rows):
        statistics.update(array[start: start + rows], start)
    return statistics.finish()


# ---------------------------------------------------------------- the user's file, as load_file reads it


def _examples(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:EXAMPLES].tolist())
    return shown + (", ..." if len(values) > EXAMPLES else "")


def load_memmap(path: os.PathLike | str, kind: Kind = "auto", access: str = "read"
                ) -> tuple[MemmapDataset, str, str]:
    """:func:`flowkit.data.load_file` for a ``.npy`` file of any size: the same checks, kinds and
    refusals, made in one streaming pass (:func:`column_statistics`), and the data as a
    :class:`MemmapDataset` (float32, or int64 codes for categorical data) instead of a tensor.

    A NaN or infinity is named by its row and column in the file; the messages match
    :func:`~flowkit.data.load_file`'s, except that example values are the smallest few, without the
    count of distinct values (which would need them all in memory).

    Returns:
        ``(dataset, kind, message)``; ``dataset.statistics`` holds the pass's :class:`Statistics`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.save(f"{folder}/x.npy", np.array([[0, 3], [2, 1]]))
        ...     data, kind, message = load_memmap(f"{folder}/x.npy")
        ...     codes = data[:]
        >>> kind, codes.dtype, message
        ('categorical', torch.int64, 'categorical with K = 4: every value is an integer in 0..3 (2 x 2)')
    """
    if kind not in ("auto", "binary", "categorical", "continuous"):
        raise FlowkitValueError(f"expected kind 'auto', 'binary', 'categorical' or 'continuous', got {kind!r}")
    path = Path(path)
    data = MemmapDataset(path, access=access)
    stats = column_statistics(data)
    name, size = path.name, f"({len(data)} x {data.features})"
    if stats.nonfinite:
        row, column, value = stats.first_nonfinite
        raise FlowkitValueError(f"expected finite values in {name}, got {stats.nonfinite} NaN or inf, the first "
                                f"{value} at row {row}, column {column}")
    data.statistics = stats
    if kind == "continuous":
        return _continuous(data, name), kind, f"continuous (declared) {size}"
    if stats.binary and kind in ("auto", "binary"):
        how = "declared" if kind == "binary" else "every value is 0 or 1"
        return data, "binary", f"binary: {how} {size}"
    if kind == "binary":
        raise FlowkitValueError(f"declared binary, but {name} holds values other than 0 and 1: "
                                f"{_examples(stats.examples['not_binary'])}")
    reason = None
    if not stats.integral:
        reason = f"non-integer values {_examples(stats.examples['not_integral'])}"
    elif stats.negative:
        reason = f"negative values {_examples(stats.examples['negative'])}"
    top = int(stats.maximum.max())
    if kind == "categorical":
        if reason is not None:
            raise FlowkitValueError(f"declared categorical, but {name} holds {reason}")
        return data.as_codes(), kind, f"categorical with K = {top + 1} (declared): values in 0..{top} {size}"
    if reason is None and top < MAX_CATEGORIES:
        return data.as_codes(), "categorical", f"categorical with K = {top + 1}: every value is an integer in " \
            f"0..{top} {size}"
    if reason is None:
        reason = f"integers up to {top}, not below {MAX_CATEGORIES}"
    return _continuous(data, name), "continuous", f"continuous: {reason} {size}"


def _continuous(data: MemmapDataset, name: str) -> MemmapDataset:
    constant = data.statistics.constant
    if len(constant):
        raise_constant_column(name, constant, float(data.statistics.minimum[int(constant[0])]))
    return data


def split_memmap(data: MemmapDataset, valid: float = 0.1, test: float = 0.1, *, seed: int = 0) -> Splits:
    """Train, validation and test views of ``data``: the sizes of :func:`flowkit.data.split`
    (``valid`` and ``test`` fractions of ``N``, rounded down), the rows in the order of a
    :class:`Permutation` seeded with ``seed`` (half a byte a row, where ``split``'s ``randperm``
    would take four or eight), so not the rows ``split`` picks.

    Example:
        >>> import tempfile
        >>> x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.save(f"{folder}/x.npy", x)
        ...     parts = split_memmap(MemmapDataset(f"{folder}/x.npy"))
        ...     rows = np.sort(np.concatenate([part[:].numpy() for part in parts]), axis=0)
        >>> [len(part) for part in parts], bool((rows == np.sort(x, axis=0)).all())
        ([40, 5, 5], True)
    """
    n_train, n_valid, _ = split_sizes(len(data), valid, test)
    if data._index is None:
        order = Permutation(len(data), seed, offset=data._start)
    else:
        order = data._index[Permutation(len(data), seed)[np.arange(len(data))]]
    views = [MemmapDataset(data._map, index=order[a:b], dtype=data.dtype, shift=data.shift, scale=data.scale)
             for a, b in ((0, n_train), (n_train, n_train + n_valid), (n_train + n_valid, len(data)))]
    for view in views:
        view.statistics = data.statistics
    return Splits(*views)


def chunk_rows(features: int) -> int:
    """Rows per chunk of a streaming pass over ``features`` columns."""
    return max(1, CHUNK_ELEMENTS // max(features, 1))

