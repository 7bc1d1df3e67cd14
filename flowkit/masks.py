r"""Orderings, degrees and masks of a masked autoregressive network (MADE).

Germain et al., *MADE: Masked Autoencoder for Distribution Estimation* (ICML 2015).

Every unit carries a *degree*. Input :math:`d` of the ordering has degree :math:`m^0(d) \in 1..D`;
a hidden unit of degree :math:`m` may depend on the inputs of degree :math:`1..m` only. Context
inputs have degree 0: every unit may see them. A hidden layer connects unit :math:`k` below to
unit :math:`k'` above when :math:`m^l(k') \ge m^{l-1}(k)`; the output of feature :math:`d`
connects to hidden unit :math:`k` when :math:`m^0(d) > m^L(k)`. The product of the masks is
then strictly lower-triangular in the ordering: output :math:`d` depends on the inputs that come
before it and nothing else.

All functions here are pure: tensors in, tensors out, no modules. Randomness comes only from an
explicit :class:`torch.Generator`, so a seed reproduces every mask.

Conventions:
    ``order`` is a permutation of ``0..D-1`` listing the features in generation order:
    ``order[0]`` is generated first. ``degrees[i]`` is the position (1-based) of feature ``i`` in
    the ordering, so ``degrees[order[k]] == k + 1``. Masks have the shape of
    :attr:`torch.nn.Linear.weight`, ``(out_units, in_units)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import BoolTensor, LongTensor, Tensor

from flowkit.errors import FlowkitValueError
from flowkit.validation import check_int, check_ints, check_option, check_permutation

__all__ = [
    "ordering",
    "input_degrees",
    "hidden_degrees",
    "hidden_mask",
    "output_mask",
    "made_masks",
    "connectivity",
    "context_connectivity",
    "allowed_connectivity",
    "key_generator",
]

OrderSpec = Literal["natural", "reverse", "random"] | Sequence[int] | Tensor
DegreeRule = Literal["random", "even"]
RULES = ("random", "even")


def ordering(
    features: int, order: OrderSpec = "natural", *, generator: torch.Generator | None = None
) -> LongTensor:
    r"""Returns an ordering of ``features`` dimensions as a permutation of ``0..features-1``.

    Arguments:
        features: the number of dimensions :math:`D \ge 1`.
        order: ``"natural"`` (``0, 1, ..., D-1``), ``"reverse"``, ``"random"`` (drawn with
            ``generator``) or an explicit sequence, validated as a permutation.
        generator: the source of randomness for ``"random"``.

    Example:
        >>> ordering(4, "reverse").tolist()
        [3, 2, 1, 0]
        >>> ordering(3, [2, 0, 1]).tolist()
        [2, 0, 1]
    """
    features = check_int("features", features, least=1)
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(features)
        if order == "reverse":
            return torch.arange(features - 1, -1, -1)
        if order == "random":
            return torch.randperm(features, generator=generator)
        raise FlowkitValueError(
            f"expected order 'natural', 'reverse', 'random' or a permutation, got {order!r}"
        )
    return check_permutation("order", order, features)


def input_degrees(order: Tensor) -> LongTensor:
    r"""Degrees :math:`m^0` of the inputs: ``degrees[order[k]] = k + 1``.

    Example:
        >>> input_degrees(torch.tensor([2, 0, 1])).tolist()
        [2, 3, 1]
    """
    degrees = torch.empty_like(order)
    degrees[order] = torch.arange(1, order.numel() + 1)
    return degrees


def hidden_degrees(
    width: int,
    features: int,
    lowest: int,
    rule: DegreeRule = "random",
    *,
    generator: torch.Generator | None = None,
) -> LongTensor:
    r"""Degrees of one hidden layer of ``width`` units.

    Degrees lie in :math:`[\text{lowest}, D - 1]`, where ``lowest`` is the smallest degree of the
    layer below (0 when a context feeds the layer). Units of degree :math:`D` or more would feed
    no output, so the range never goes above :math:`D - 1` (for :math:`D = 1` and no context the
    range is empty and every unit gets degree 1: it feeds nothing, as it must).

    Arguments:
        width: the number of units, at least 1.
        features: the number of dimensions :math:`D`.
        lowest: the smallest degree of the layer below.
        rule: ``"random"``, the paper's rule, draws each degree uniformly on the range;
            ``"even"`` spreads the degrees as evenly as possible over it, deterministically,
            so that every degree of the range is present whenever ``width`` allows.
        generator: the source of randomness for ``"random"``.

    Example:
        >>> hidden_degrees(6, 4, 1, "even").tolist()
        [1, 1, 2, 2, 3, 3]
    """
    check_option("hidden degree rule", rule, RULES)
    width = check_int("hidden width", width, least=1, expected=">= 1")
    features = check_int("features", features, least=1)
    lowest = check_int("lowest", lowest, least=0)
    high = max(lowest, features - 1)
    span = high - lowest + 1
    if rule == "random":
        return torch.randint(lowest, high + 1, (width,), generator=generator)
    return lowest + torch.arange(width) * span // width


def hidden_mask(degrees_out: Tensor, degrees_in: Tensor) -> BoolTensor:
    r"""Mask of a hidden layer: :math:`M_{k'k} = 1[m^l(k') \ge m^{l-1}(k)]`, shape ``(out, in)``."""
    return degrees_out[:, None] >= degrees_in[None, :]


def output_mask(degrees_out: Tensor, degrees_in: Tensor) -> BoolTensor:
    r"""Mask into the outputs: :math:`M_{dk} = 1[m^0(d) > m^L(k)]`, shape ``(out, in)``.

    Also the mask of the direct input-to-output connection, where it is strictly lower-triangular
    in the ordering.
    """
    return degrees_out[:, None] > degrees_in[None, :]


def made_masks(
    order: Tensor,
    hidden_features: Sequence[int],
    *,
    num_params: int = 1,
    columns_per_feature: int = 1,
    context_features: int = 0,
    rule: DegreeRule = "random",
    generator: torch.Generator | None = None,
    residual_blocks: int = 0,
    direct: bool = True,
) -> tuple[list[BoolTensor], BoolTensor | None]:
    r"""All masks of one MADE mask set.

    The network's input is ``features * columns_per_feature`` columns (feature ``i`` owns columns
    ``i * columns_per_feature ...``, sharing its degree), followed by ``context_features`` columns
    of degree 0. With a context, the first unit of every hidden layer gets degree 0, so that the
    context reaches every output, the first feature's included. Its output is ``features * num_params``
    rows, feature ``i`` owning rows ``i * num_params ... (i + 1) * num_params - 1``.

    With ``residual_blocks = K > 0`` (one hidden width :math:`H`), the ``2K`` layers of the
    residual blocks come between the first hidden layer and the output, each with the mask
    :func:`hidden_mask` of the first hidden layer's degrees against themselves. That mask holds
    the diagonal (:math:`m \ge m`), so a path through the chain of masks exists exactly where one
    through the blocks and their skip connections does: :func:`connectivity` of the chain is the
    residual network's.

    Returns:
        ``(masks, direct)``: the masks of the ``len(hidden_features) + 2K + 1`` layers in the
        order the input meets them, each of shape ``(out_units, in_units)``, and the mask of the
        direct input-to-output connection, of shape ``(features * num_params, in_columns)`` (``None``
        with ``direct=False``: it is quadratic in the columns, and a categorical MADE over many
        categories could not hold it).

    Example:
        >>> masks, direct = made_masks(torch.arange(3), [4], rule="even")
        >>> [tuple(m.shape) for m in masks]
        [(4, 3), (3, 4)]
        >>> connectivity(masks, 3).int().tolist()
        [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
        >>> masks, _ = made_masks(torch.arange(3), [4], rule="even", residual_blocks=1)
        >>> [tuple(m.shape) for m in masks]
        [(4, 3), (4, 4), (4, 4), (3, 4)]
    """
    order = ordering(order.numel() if isinstance(order, Tensor) else len(order), order)
    features = order.numel()
    hidden_features = check_ints("hidden_features", hidden_features, least=1, each="every hidden width",
                                 expected=">= 1")
    num_params = check_int("num_params", num_params, least=1, expected=">= 1")
    columns_per_feature = check_int("columns_per_feature", columns_per_feature, least=1, expected=">= 1")
    context_features = check_int("context_features", context_features, least=0)
    residual_blocks = check_int("residual_blocks", residual_blocks, least=0)
    check_option("hidden degree rule", rule, RULES)
    if residual_blocks and len(hidden_features) != 1:
        raise FlowkitValueError(
            f"expected one hidden width with residual_blocks={residual_blocks}, got {list(hidden_features)}"
        )
    degrees = input_degrees(order)
    below = torch.cat(
        [degrees.repeat_interleave(columns_per_feature), torch.zeros(context_features, dtype=torch.long)]
    )
    inputs = below
    masks = []
    for width in hidden_features:
        layer = hidden_degrees(width, features, int(below.min()), rule, generator=generator)
        if context_features:
            layer[0] = 0  # a unit that sees only the context carries it to the first output
        masks.append(hidden_mask(layer, below))
        below = layer
    masks.extend(hidden_mask(below, below) for _ in range(2 * residual_blocks))
    outputs = degrees.repeat_interleave(num_params)
    masks.append(output_mask(outputs, below))
    return masks, output_mask(outputs, inputs) if direct else None


def connectivity(
    masks: Sequence[Tensor], features: int, columns_per_feature: int = 1
) -> BoolTensor:
    r"""The ``(features, features)`` dependency matrix implied by a chain of masks.

    Entry ``[i, j]`` is true when some path of unmasked weights leads from an input column of
    feature ``j`` to an output row of feature ``i``. Columns and rows are grouped by feature as
    :func:`made_masks` lays them out; the trailing context columns, if any, are ignored.

    Example:
        >>> masks, _ = made_masks(torch.tensor([1, 0]), [3], rule="even")
        >>> connectivity(masks, 2).int().tolist()
        [[0, 1], [0, 0]]
    """
    first = masks[0][:, : features * columns_per_feature]
    return _reach(masks, features, first.reshape(len(first), features, columns_per_feature).any(dim=2))


def context_connectivity(
    masks: Sequence[Tensor], features: int, columns_per_feature: int = 1
) -> BoolTensor:
    r"""Which features' outputs the trailing context columns reach, shape ``(features,)``.

    Example:
        >>> masks, _ = made_masks(torch.arange(3), [4], context_features=2)
        >>> context_connectivity(masks, 3).tolist()
        [True, True, True]
    """
    return _reach(masks, features, masks[0][:, features * columns_per_feature :]).any(dim=1)


def _reach(masks: Sequence[Tensor], features: int, sources: Tensor) -> BoolTensor:
    """``(features, n)``: whether a path of unmasked weights leads from each of ``n`` sources to an
    output row of each feature, where ``sources`` (``(units of the first layer, n)``) is the first
    mask with its columns already grouped into the sources. Grouping the columns before the chain
    and the output rows (each feature's are consecutive) before the last product keeps every
    product small: a categorical MADE over 256 categories has 256 columns and rows per feature."""
    def by_feature(rows: Tensor) -> Tensor:
        return rows.reshape(features, -1, rows.shape[-1]).any(dim=1)

    if len(masks) == 1:
        return by_feature(sources)
    paths = sources.double()
    for mask in masks[1:-1]:
        paths = (mask.double() @ paths).clamp(max=1.0)
    return (by_feature(masks[-1]).double() @ paths) > 0


def allowed_connectivity(order: Tensor) -> BoolTensor:
    r"""The dependencies an autoregressive model of ``order`` may have: ``[i, j]`` is true when
    feature ``j`` comes before feature ``i``.

    Example:
        >>> allowed_connectivity(torch.tensor([1, 0])).int().tolist()
        [[0, 1], [0, 0]]
    """
    degrees = input_degrees(order)
    return degrees[:, None] > degrees[None, :]


def key_generator(seed: int, key: int) -> torch.Generator:
    r"""A CPU generator seeded by the pair ``(seed, key)``: the source of the masks of mask key ``key``.

    The pair is hashed (SHA-256, so the stream is the same in every process and on every
    machine, unlike Python's ``hash``) to a 63-bit seed; nearby pairs give unrelated streams.

    Arguments:
        seed: the network's mask seed (any integer).
        key: the mask key, an integer >= 0.

    Example:
        >>> a, b = key_generator(0, 7), key_generator(0, 7)
        >>> torch.equal(torch.randperm(5, generator=a), torch.randperm(5, generator=b))
        True
        >>> key_generator(0, 7).initial_seed() != key_generator(0, 8).initial_seed()
        True
    """
    seed = check_int("seed", seed, least=None)
    key = check_int("mask key", key, least=0, expected=">= 0")
    digest = hashlib.sha256(f"flowkit mask key {seed} {key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

