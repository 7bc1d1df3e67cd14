"""Permutations of the features: volume-preserving transforms between autoregressive layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowkit import masks as M
from flowkit.transforms.base import Transform, check_features
from flowkit.validation import check_int, check_permutation

__all__ = ["Permutation", "ReversePermutation", "RandomPermutation"]


class Permutation(Transform):
    r"""Reorders the features: :math:`y_i = x_{\pi(i)}`, :math:`\log|\det J| = 0`.

    Arguments:
        permutation: a permutation of ``0..D-1`` (validated); kept as a buffer.

    Example:
        >>> t = Permutation([2, 0, 1])
        >>> t(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    def __init__(self, permutation: Sequence[int] | Tensor):
        super().__init__()
        perm = check_permutation("permutation", permutation)
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    @property
    def features(self) -> int:
        """The number of features :math:`D`."""
        return self.permutation.numel()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("x", x, self.features)
        # index_select, not x[..., permutation]: the same values, and its backward (index_add) runs
        # several times faster on a CPU than advanced indexing's (index_put with accumulation)
        return x.index_select(-1, self.permutation), x.new_zeros(x.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        return y.index_select(-1, self.inverse_permutation), y.new_zeros(y.shape[:-1])


class ReversePermutation(Permutation):
    """Reverses the features, as between the layers of the MAF paper."""

    def __init__(self, features: int):
        super().__init__(M.ordering(features, "reverse"))


class RandomPermutation(Permutation):
    """A random permutation drawn once from ``seed`` (or torch's global generator)."""

    def __init__(self, features: int, *, seed: int | None = None):
        generator = None if seed is None else torch.Generator().manual_seed(check_int("seed", seed, least=None))
        super().__init__(M.ordering(features, "random", generator=generator))
