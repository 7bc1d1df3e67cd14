"""Files flowkit writes and reads.

Every file is written atomically: into a temporary file beside the target, flushed to disk, then
moved onto the target with :func:`os.replace`, so that a reader (or a process killed half-way)
sees the old file or the new one, never a partial one. Every file is read through a check that,
when the file is missing, damaged or foreign, raises :class:`flowkit.errors.FileProblem` naming
the file, what is wrong with it and what to do; a model file is never loaded unsafely.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flowkit.errors import FileProblem

__all__ = ["atomic_path", "write_text", "write_json", "save_torch", "save_npy", "save_npy_chunks", "save_figure",
           "read_json", "load_torch"]


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write into; flushed to disk and moved onto ``target``
    (:func:`os.replace`) if the block succeeds, deleted if it raises.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with atomic_path(Path(folder) / "x.txt") as partial:
        ...         _ = partial.write_text("done")
        ...     sorted(p.name for p in Path(folder).iterdir())
        ['x.txt']
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(descriptor)
    partial = Path(name)
    try:
        yield partial
        with open(partial, "rb+") as written:
            os.fsync(written.fileno())
        partial.chmod(0o644)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as partial:
        partial.write_text(text)
    return Path(path)


def write_json(path: str | Path, value: Any) -> Path:
    """Writes ``value`` as indented JSON (and a final newline) to ``path`` atomically.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = write_json(Path(folder) / "c.json", {"a": 1})
        ...     read_json(Path(folder) / "c.json", "a config")
        {'a': 1}
    """
    return write_text(path, json.dumps(value, indent=2) + "\n")


def save_torch(value: Any, path: str | Path) -> Path:
    """``torch.save(value, path)``, atomically."""
    import torch

    with atomic_path(path) as partial:
        torch.save(value, partial)
    return Path(path)


def save_npy(path: str | Path, array) -> Path:
    """``numpy.save(path, array)``, atomically (``path`` should end in ``.npy``)."""
    import numpy as np

    with atomic_path(path) as partial, open(partial, "wb") as file:
        np.save(file, array)
    return Path(path)


def save_npy_chunks(path: str | Path, chunks: Iterable[Any], rows: int) -> Path:
    """Writes the arrays ``chunks`` (each ``(n_i, *shape)``, one dtype, ``sum(n_i) = rows``) one after
    another as the rows of one ``.npy`` file, atomically, holding one chunk in memory at a time.

    The header comes first, then each chunk as it arrives; the file is the one ``numpy.save`` writes
    for their concatenation. Chunks that disagree in dtype or shape, or do not add up to ``rows``,
    raise :class:`flowkit.errors.FlowkitValueError` and leave nothing at ``path``.

    Example:
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "x.npy"
        ...     _ = save_npy_chunks(path, (np.full((k, 2), k, np.float32) for k in (2, 1)), rows=3)
        ...     np.load(path).tolist()
        [[2.0, 2.0], [2.0, 2.0], [1.0, 1.0]]
    """
    import numpy as np

    from flowkit.errors import FlowkitValueError

    with atomic_path(path) as partial, open(partial, "wb") as file:
        first, written = None, 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk)
            if first is None:
                first = chunk
                header = {"descr": np.lib.format.dtype_to_descr(chunk.dtype), "fortran_order": False,
                          "shape": (rows, *chunk.shape[1:])}
                try:
                    np.lib.format.write_array_header_1_0(file, header)
                except ValueError:  # a header too long for format 1.0
                    np.lib.format.write_array_header_2_0(file, header)
            elif chunk.dtype != first.dtype or chunk.shape[1:] != first.shape[1:]:
                raise FlowkitValueError(f"expected chunks of {first.dtype} (n, {', '.join(map(str, first.shape[1:]))})"
                                        f" for {path}, got {chunk.dtype} {chunk.shape}")
            written += len(chunk)
            if written > rows:
                raise FlowkitValueError(f"expected {rows} rows for {path}, got more")
            file.write(chunk.data if chunk.size else b"")
        if first is None or written != rows:
            raise FlowkitValueError(f"expected {rows} rows for {path}, got {written}")
    return Path(path)


def save_figure(figure, path: str | Path, **options: Any) -> Path:
    """``figure.savefig(path)``, atomically; the format comes from the suffix of ``path``."""
    path = Path(path)
    with atomic_path(path) as partial:
        figure.savefig(partial, format=path.suffix.lstrip(".") or "png", **options)
    return path


def _remedy(remedy: str | None) -> str:
    return f"; {remedy}" if remedy else ""


def read_json(path: str | Path, what: str, remedy: str | None = None) -> Any:
    """The JSON value in ``path``; a missing, unreadable or malformed file raises
    :class:`FileProblem` naming ``what`` the file is and the ``remedy``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileProblem(f"{what} {path} does not exist{_remedy(remedy)}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FileProblem(f"cannot read {what} {path}: {_reason(error)}{_remedy(remedy)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FileProblem(f"{what} {path} is damaged: not valid JSON (line {error.lineno}, column {error.colno})"
                          f"{_remedy(remedy)}") from None


def load_torch(path: str | Path, what: str, remedy: str | None = None) -> Any:
    """The tensors and plain data in a file written by ``torch.save``, loaded with
    ``weights_only=True`` onto the CPU. A missing, truncated or damaged file, or one that holds
    objects other than tensors and plain data (refused: loading them could run code), raises
    :class:`FileProblem` naming ``what`` the file is and the ``remedy``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileProblem(f"{what} {path} does not exist{_remedy(remedy)}")
    damaged = f"cannot read {what} {path}: truncated, damaged or not written by torch.save{_remedy(remedy)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            raise FileProblem(f"cannot read {what} {path}: it holds objects other than tensors and plain data, "
                              f"which flowkit does not load{_remedy(remedy)}") from None
        raise FileProblem(damaged) from None
    except IsADirectoryError:
        raise FileProblem(f"{what} {path} is a directory, not a file{_remedy(remedy)}") from None
    except PermissionError as error:
        raise FileProblem(f"cannot read {what} {path}: {_reason(error)}{_remedy(remedy)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            IndexError, TypeError):
        raise FileProblem(damaged) from None


def _reason(error: BaseException) -> str:
    """The first line of an error's message, short, without torch's advice."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."
