"""The parts of a data set: what every loader returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["Splits"]


class Splits(NamedTuple):
    """Training, validation and test parts of a data set, each ``(N, D)``."""

    train: Tensor
    valid: Tensor
    test: Tensor
