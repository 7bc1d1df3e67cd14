r"""The user's own data from ``.npy``, ``.npz`` or ``.csv`` files: validated, typed, split."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from flowkit.data.splits import Splits
from flowkit.errors import FileProblem, FlowkitValueError

__all__ = ["MAX_CATEGORIES", "load_file", "raise_constant_column", "split", "split_sizes"]

Kind = Literal["auto", "binary", "categorical", "continuous"]
MAX_CATEGORIES = 256
"""Non-negative integers below this are taken as categories when the kind is inferred."""


def _read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv"):
        raise FlowkitValueError(f"expected a .npy, .npz or .csv file, got {path.name}")
    if not path.is_file():
        raise FileProblem(f"data file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if len(keys) == 1:
                return archive[keys[0]]
            for key in ("x", "data"):
                if key in keys:
                    return archive[key]
    except FlowkitValueError:
        raise
    except PermissionError as error:
        raise FileProblem(f"cannot read data file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise FileProblem(f"cannot read data file {path}: not a text file of comma-separated numbers") from None
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        if "pickle" in str(error):
            raise FileProblem(f"data file {path} holds Python objects (a pickle), which flowkit does not load; save a "
                              "numeric array with numpy.save") from None
        written = "numpy.save" if suffix == ".npy" else "numpy.savez"
        raise FileProblem(f"cannot read data file {path}: truncated, damaged or not written by {written}") from None
    raise FlowkitValueError(f"{path.name} holds several arrays {keys}: expected one, or one named 'x' or 'data'")


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    with open(path) as file:
        first = file.readline()
    header = not all(_is_number(field) for field in first.strip().split(","))
    try:
        return np.loadtxt(path, delimiter=",", skiprows=int(header), dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise FlowkitValueError(f"expected numeric values in {path.name} (one optional header line): {error}") from None


def _validate(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise FlowkitValueError(f"expected numeric values in {name}, got dtype {x.dtype}")
    if x.ndim != 2:
        raise FlowkitValueError(f"expected a 2-D array (N, D) in {name}, got shape {x.shape}")
    if len(x) < 2:
        raise FlowkitValueError(f"expected at least 2 rows in {name}, got {len(x)}")
    if x.shape[1] < 1:
        raise FlowkitValueError(f"expected at least one column in {name}, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise FlowkitValueError(
                f"expected finite values in {name}, got {int(bad.sum())} NaN or inf, the first {x[row, column]} "
                f"at row {row}, column {column}"
            )
    return x


def _examples(values: np.ndarray) -> str:
    unique = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in unique[:5].tolist())
    return shown + (f", ... ({len(unique)} distinct)" if len(unique) > 5 else "")


def _as_categories(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Integer codes if ``x`` holds only non-negative integers, else the reason it does not."""
    integral = np.equal(x, np.round(x)) if np.issubdtype(x.dtype, np.floating) else np.ones(x.shape, bool)
    if not integral.all():
        return x, f"non-integer values {_examples(x[~integral])}"
    if (x < 0).any():
        return x, f"negative values {_examples(x[x < 0])}"
    return x.astype(np.int64), None


def load_file(path: os.PathLike | str, kind: Kind = "auto") -> tuple[Tensor, str, str]:
    """Load a data set ``(N, D)`` from ``.npy``, ``.npz`` or ``.csv``, check it and settle its kind.

    ``.npz`` files must hold one array, or one named ``x`` or ``data``; ``.csv`` files are
    comma-separated numbers with an optional header line. The array must be 2-D, numeric, finite,
    with at least 2 rows and one column. With ``kind="auto"``: only 0 and 1 makes it ``"binary"``; non-negative
    integers below :data:`MAX_CATEGORIES` make it ``"categorical"`` with ``K = max + 1``; anything
    else is ``"continuous"``. A declared kind that the values contradict raises ``ValueError``.

    Degenerate data: a constant column of binary or categorical data is kept (a model learns a
    conditional that puts all its mass on the one value; the log-likelihood stays finite); a
    constant column of continuous data is refused, since a density on it has no finite
    maximum-likelihood fit (its log-density grows without bound as it narrows onto the value).
    An unreadable, damaged or pickled file raises :class:`flowkit.errors.FileProblem`.

    Returns:
        ``(x, kind, message)``: ``x`` float32 0/1 (binary), ``long`` codes (categorical) or float32
        (continuous); the kind chosen; a sentence saying why.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.save(f"{folder}/x.npy", np.array([[0, 3], [2, 1]]))
        ...     x, kind, message = load_file(f"{folder}/x.npy")
        >>> kind, x.dtype, message
        ('categorical', torch.int64, 'categorical with K = 4: every value is an integer in 0..3 (2 x 2)')
    """
    if kind not in ("auto", "binary", "categorical", "continuous"):
        raise FlowkitValueError(f"expected kind 'auto', 'binary', 'categorical' or 'continuous', got {kind!r}")
    path = Path(path)
    x = _validate(_read(path), path.name)
    size = f"({x.shape[0]} x {x.shape[1]})"
    if kind == "continuous":
        return _continuous(x, path.name), kind, f"continuous (declared) {size}"
    binary = np.isin(x, (0, 1))
    if binary.all() and kind in ("auto", "binary"):
        how = "declared" if kind == "binary" else "every value is 0 or 1"
        return torch.from_numpy(x.astype(np.float32)), "binary", f"binary: {how} {size}"
    if kind == "binary":
        raise FlowkitValueError(f"declared binary, but {path.name} holds values other than 0 and 1: "
                                f"{_examples(x[~binary])}")
    codes, reason = _as_categories(x)
    if kind == "categorical":
        if reason is not None:
            raise FlowkitValueError(f"declared categorical, but {path.name} holds {reason}")
        top = int(codes.max())
        return torch.from_numpy(codes), kind, f"categorical with K = {top + 1} (declared): values in 0..{top} {size}"
    if reason is None and codes.max() < MAX_CATEGORIES:
        top = int(codes.max())
        message = f"categorical with K = {top + 1}: every value is an integer in 0..{top} {size}"
        return torch.from_numpy(codes), "categorical", message
    if reason is None:
        reason = f"integers up to {int(codes.max())}, not below {MAX_CATEGORIES}"
    return _continuous(x, path.name), "continuous", f"continuous: {reason} {size}"


def _continuous(x: np.ndarray, name: str) -> Tensor:
    constant = np.flatnonzero((x == x[:1]).all(axis=0))
    if len(constant):
        raise_constant_column(name, constant, float(x[0, int(constant[0])]))
    return torch.from_numpy(x.astype(np.float32))


def raise_constant_column(name: str, constant: Sequence[int] | np.ndarray, value: float) -> None:
    """Refuses continuous data with constant columns (``constant``, the first holding ``value``)."""
    column = int(constant[0])
    more = f" and so are {len(constant) - 1} more" if len(constant) > 1 else ""
    raise FlowkitValueError(
        f"column {column} of {name} is constant (every value is {value:g}){more}: "
        "a continuous density on it has no finite maximum-likelihood fit; drop the column")


def split(x: Tensor, valid: float = 0.1, test: float = 0.1, *, seed: int = 0) -> Splits:
    """Shuffle the rows of ``x: (N, D)`` with ``seed`` and cut them into train, valid and test.

    ``valid`` and ``test`` are fractions of ``N``, each rounded down; the rest is training data.
    A nonzero fraction that would round to no row at all raises (``N`` is too small to split).

    Example:
        >>> tuple(len(part) for part in split(torch.arange(20).view(10, 2)))
        (8, 1, 1)
    """
    n = len(x)
    n_train, n_valid, _ = split_sizes(n, valid, test)
    x = x[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    return Splits(x[:n_train], x[n_train : n_train + n_valid], x[n_train + n_valid :])


def split_sizes(n: int, valid: float = 0.1, test: float = 0.1) -> tuple[int, int, int]:
    """The rows ``(train, valid, test)`` that :func:`split` cuts ``n`` rows into, checked.

    Example:
        >>> split_sizes(1005)
        (805, 100, 100)
    """
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise FlowkitValueError(f"expected fractions valid, test >= 0 with valid + test < 1, got {valid} and {test}")
    n_valid, n_test = int(valid * n), int(test * n)
    if n - n_valid - n_test < 1:
        raise FlowkitValueError(f"expected at least one training row, got N = {n}")
    for part, fraction, rows in (("validation", valid, n_valid), ("test", test, n_test)):
        if fraction > 0 and rows == 0:
            raise FlowkitValueError(f"expected at least {math.ceil(1 / fraction)} rows, so that the {part} part "
                                    f"({fraction:g} of them) has one, got N = {n}")
    return n - n_valid - n_test, n_valid, n_test
