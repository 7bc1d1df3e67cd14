"""Data sets: the bundled 8x8 digits (the embedded default), MNIST, POWER, the user's own files and
2-D toy densities."""

from flowkit.data.digits import DIGITS_SHA256, binarize, digits, load_digits
from flowkit.data.fetch import ChecksumError, DataUnavailableError, cache_dir, fetch_package_file
from flowkit.data.files import load_file, split
from flowkit.data.images import bits_per_dim, dequantize, logit_transform
from flowkit.data.memmap import MemmapDataset, Statistics, column_statistics, load_memmap, split_memmap
from flowkit.data.mnist import binarized_mnist, load_mnist
from flowkit.data.power import load_power
from flowkit.data.shapes import SHAPE_KINDS, draw_shapes, shapes
from flowkit.data.splits import Splits
from flowkit.data.toy import TOY, checkerboard, eight_gaussians, pinwheel, rings, two_moons, two_spirals

__all__ = [
    "DIGITS_SHA256", "TOY", "ChecksumError", "DataUnavailableError", "Splits", "binarize", "binarized_mnist",
    "bits_per_dim", "dequantize", "logit_transform",
    "cache_dir", "checkerboard", "digits", "eight_gaussians", "fetch_package_file", "load_digits", "load_file",
    "load_mnist", "load_power", "pinwheel", "rings", "split", "two_moons", "two_spirals",
    "MemmapDataset", "Statistics", "column_statistics", "load_memmap", "split_memmap",
    "SHAPE_KINDS", "draw_shapes", "shapes",
]
