"""Data sets: the bundled 8x8 digits (the embedded default)."""

from flowkit.data.digits import DIGITS_SHA256, Splits, binarize, digits, load_digits

__all__ = ["DIGITS_SHA256", "Splits", "binarize", "digits", "load_digits"]
