"""Data sets: the bundled 8x8 digits (the embedded default) and 2-D toy densities."""

from flowkit.data.digits import DIGITS_SHA256, Splits, binarize, digits, load_digits
from flowkit.data.toy import two_moons

__all__ = ["DIGITS_SHA256", "Splits", "binarize", "digits", "load_digits", "two_moons"]
