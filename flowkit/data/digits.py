r"""The 8x8 handwritten digits bundled with flowkit (UCI optdigits, test part; CC BY 4.0).

1797 images of 64 pixels, each a count 0..16. See ``LICENSE-digits.txt`` beside this file.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from flowkit.data.fetch import ChecksumError
from flowkit.data.splits import Splits
from flowkit.validation import check_int, check_option

__all__ = ["DIGITS_SHA256", "binarize", "digits", "load_digits"]

DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
"""The SHA-256 of the bundled ``digits.csv.gz``, checked on every load."""
SPLIT_SEED = 2015
BINARIZE_SEED = 0
VALID, TEST = 300, 300


def load_digits() -> tuple[Tensor, Tensor]:
    """The raw digits: pixels ``(1797, 64)`` as ``uint8`` in ``0..16`` and labels ``(1797,)``.

    The bundled file's sha256 is checked against :data:`DIGITS_SHA256`.

    Example:
        >>> pixels, labels = load_digits()
        >>> tuple(pixels.shape), int(pixels.max()), labels[:5].tolist()
        ((1797, 64), 16, [0, 1, 2, 3, 4])
    """
    raw = resources.files("flowkit.data").joinpath("digits.csv.gz").read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != DIGITS_SHA256:
        raise ChecksumError(
            f"the bundled digits file is corrupt: sha256 {digest}, expected {DIGITS_SHA256}; reinstall flowkit"
        )
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.int64)
    return torch.from_numpy(table[:, :64].astype(np.uint8)), torch.from_numpy(table[:, 64])


def binarize(
    pixels: Tensor, levels: int = 16, method: Literal["stochastic", "threshold"] = "stochastic",
    *, seed: int = BINARIZE_SEED,
) -> Tensor:
    r"""Binary images from intensities ``0..levels``.

    ``"stochastic"`` draws each pixel once as :math:`\mathrm{Bernoulli}(v / \text{levels})` with a
    fixed seed, as the MADE paper's binarized MNIST was made; ``"threshold"`` keeps
    :math:`v \ge \text{levels} / 2`, an easier, different data set.

    Example:
        >>> binarize(torch.tensor([[0, 16, 8]]), method="threshold").tolist()
        [[0.0, 1.0, 1.0]]
    """
    check_option("method", method, ("stochastic", "threshold"))
    levels = check_int("levels", levels, least=1)
    seed = check_int("seed", seed, least=None)
    if not isinstance(pixels, Tensor):
        pixels = torch.as_tensor(pixels)
    intensity = pixels.double() / levels
    if method == "threshold":
        return (intensity >= 0.5).float()
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(intensity.shape, generator=generator, dtype=torch.float64) < intensity).float()


def digits(kind: Literal["binary", "counts"] = "binary") -> Splits:
    """The digits split 1197 / 300 / 300 with a fixed shuffle (seed 2015).

    Arguments:
        kind: ``"binary"``, pixels binarized stochastically with seed 0 (floats 0/1), or
            ``"counts"``, the raw counts ``0..16`` as ``long`` (17 categories per pixel).

    Example:
        >>> train, valid, test = digits()
        >>> tuple(train.shape), tuple(valid.shape), tuple(test.shape)
        ((1197, 64), (300, 64), (300, 64))
    """
    check_option("kind", kind, ("binary", "counts"))
    pixels, _ = load_digits()
    values = binarize(pixels) if kind == "binary" else pixels.long()
    perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(SPLIT_SEED))
    values = values[perm]
    n_train = len(values) - VALID - TEST
    return Splits(values[:n_train], values[n_train : n_train + VALID], values[n_train + VALID :])
