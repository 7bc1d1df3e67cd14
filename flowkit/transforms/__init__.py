"""Invertible transforms, data to noise: the protocol, autoregressive layers, permutations, LU-linear
layers, batch norm."""

from flowkit.transforms.autoregressive import Affine, MaskedAutoregressive
from flowkit.transforms.base import Composite, InputOutsideDomain, Inverse, Transform, Transformer
from flowkit.transforms.linear import LULinear
from flowkit.transforms.normalization import BatchNorm, Standardize, set_population_statistics
from flowkit.transforms.permutations import Permutation, RandomPermutation, ReversePermutation
from flowkit.transforms.spline import RationalQuadraticSpline, rational_quadratic_spline

__all__ = [
    "Transform",
    "Transformer",
    "Composite",
    "Inverse",
    "InputOutsideDomain",
    "MaskedAutoregressive",
    "Affine",
    "RationalQuadraticSpline",
    "rational_quadratic_spline",
    "Permutation",
    "ReversePermutation",
    "RandomPermutation",
    "LULinear",
    "BatchNorm",
    "Standardize",
    "set_population_statistics",
]
