r"""Procedural binary images of geometric shapes: filled and outlined rectangles and ellipses,
triangles and lines, one shape per image, at random positions and sizes, drawn from a seed.

Every image is drawn from its own row of uniform numbers, all rows from one
:class:`torch.Generator` seeded with ``seed``, so a data set is deterministic and a longer draw
begins with a shorter one: ``draw_shapes(100)[0][:10]`` equals ``draw_shapes(10)[0]``.

The generator, for an image of ``size`` x ``size`` pixels with rows :math:`r` and columns :math:`c`
counted from the top left corner (all sides and lengths in pixels, chosen uniformly among the
integers in the ranges given, positions uniformly among those that keep the shape inside):

- ``"rectangle"``: an axis-aligned filled rectangle, height and width in ``3..size - 2``.
- ``"rectangle_outline"``: the one-pixel border of such a rectangle, sides in ``4..size - 2``
  (so that it has an inside).
- ``"ellipse"``: the pixels :math:`(r, c)` with
  :math:`((c - c_0) / a)^2 + ((r - r_0) / b)^2 \le 1` for a bounding box of width :math:`2a` and
  height :math:`2b` in ``5..size - 2`` and centre :math:`(r_0, c_0)` at the centre of the box.
- ``"ellipse_outline"``: the pixels of such an ellipse that have one of their four neighbours
  outside it, sides in ``7..size - 2``.
- ``"triangle"``: the pixels whose centres lie in a triangle with its base on one side of a
  bounding box (sides in ``5..size - 2``) and its apex anywhere on the opposite side; the base
  lies at the bottom, top, left or right, one of the four with equal probability.
- ``"line"``: a one-pixel line (a digital differential analyser: one pixel per step along the
  longer axis, the other coordinate rounded) between two end points ``6..size - 1`` pixels apart,
  in a uniformly random direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowkit.data.splits import Splits
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.validation import check_int

__all__ = ["SHAPE_KINDS", "draw_shapes", "shapes"]

SHAPE_KINDS: tuple[str, ...] = ("rectangle", "rectangle_outline", "ellipse", "ellipse_outline", "triangle", "line")
"""The kinds of shape :func:`draw_shapes` draws; a label is an index into this tuple."""

_UNIFORMS = 8  # uniform numbers per image: the kind, then the shape's parameters
_SMALLEST_SIZE = 12


def draw_shapes(
    n: int, size: int = 20, *, seed: int = 0, kinds: Sequence[str] = SHAPE_KINDS
) -> tuple[Tensor, Tensor]:
    r"""``n`` binary images of one shape each and their labels, drawn as the module describes.

    The kind of each image is uniform over ``kinds``; its label is the kind's index in
    :data:`SHAPE_KINDS` (not in ``kinds``).

    Arguments:
        n: the number of images.
        size: the side of an image in pixels, at least 12.
        seed: the seed of the one generator all images are drawn from.
        kinds: the kinds to draw, a non-empty subset of :data:`SHAPE_KINDS`.

    Returns:
        ``(images, labels)``: images ``(n, size * size)`` float32 of 0 and 1, row-major (reshape
        to ``(n, size, size)`` to see them), and labels ``(n,)`` int64.

    Example:
        >>> images, labels = draw_shapes(6, seed=1)
        >>> images.shape, labels.shape, sorted(images.unique().tolist())
        (torch.Size([6, 400]), torch.Size([6]), [0.0, 1.0])
        >>> square = draw_shapes(1, 12, kinds=["rectangle"])[0].reshape(12, 12)
        >>> bool(square.sum() == (square.sum(0) > 0).sum() * (square.sum(1) > 0).sum())   # filled box
        True
    """
    n = check_int("n", n, least=0)
    size = check_int("size", size, least=_SMALLEST_SIZE)
    seed = check_int("seed", seed, least=None)
    labels_allowed = _kind_indices(kinds)
    generator = torch.Generator().manual_seed(seed)
    uniforms = torch.rand(n, _UNIFORMS, generator=generator, dtype=torch.float64).tolist()
    images = torch.zeros(n, size, size)
    labels = torch.zeros(n, dtype=torch.long)
    for i, u in enumerate(uniforms):
        label = labels_allowed[min(int(u[0] * len(labels_allowed)), len(labels_allowed) - 1)]
        images[i] = _DRAW[SHAPE_KINDS[label]](size, u[1:])
        labels[i] = label
    return images.reshape(n, size * size), labels


def shapes(
    train: int = 10000, valid: int = 2000, test: int = 2000, *, size: int = 20, seed: int = 0
) -> Splits:
    """A data set of shape images, :func:`draw_shapes` ``(train + valid + test, size, seed=seed)``
    cut into its first ``train``, next ``valid`` and last ``test`` images.

    Arguments:
        train, valid, test: the number of images in each part.
        size: the side of an image in pixels, at least 12.
        seed: the seed of the draw.

    Returns:
        :class:`~flowkit.data.Splits` of float32 0/1 images ``(N, size * size)``.

    Example:
        >>> train, valid, test = shapes(50, 10, 10)
        >>> train.shape, valid.shape, test.shape
        (torch.Size([50, 400]), torch.Size([10, 400]), torch.Size([10, 400]))
    """
    counts = [check_int(name, value, least=0) for name, value in (("train", train), ("valid", valid), ("test", test))]
    images, _ = draw_shapes(sum(counts), size, seed=seed)
    return Splits(*images.split(counts))


def _kind_indices(kinds: Sequence[str]) -> list[int]:
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise FlowkitTypeError(f"expected kinds to be a sequence of names from {SHAPE_KINDS}, got {kinds!r}")
    unknown = [kind for kind in kinds if kind not in SHAPE_KINDS]
    if unknown or not kinds:
        raise FlowkitValueError(f"expected kinds to be a non-empty subset of {SHAPE_KINDS}, got {list(kinds)!r}")
    return sorted({SHAPE_KINDS.index(kind) for kind in kinds})


def _integer(u: float, low: int, high: int) -> int:
    """The integer in ``low..high`` that the uniform number ``u`` picks."""
    return low + min(int(u * (high - low + 1)), high - low)


def _box(size: int, u: list[float], least: int) -> tuple[int, int, int, int]:
    """A box ``(top, left, height, width)`` with sides in ``least..size - 2`` inside the image."""
    height, width = _integer(u[0], least, size - 2), _integer(u[1], least, size - 2)
    return _integer(u[2], 0, size - height), _integer(u[3], 0, size - width), height, width


def _grid(size: int) -> tuple[Tensor, Tensor]:
    rows = torch.arange(size, dtype=torch.float64)
    return rows[:, None].expand(size, size), rows[None, :].expand(size, size)


def _rectangle(size: int, u: list[float], least: int = 3) -> Tensor:
    top, left, height, width = _box(size, u, least)
    image = torch.zeros(size, size)
    image[top : top + height, left : left + width] = 1
    return image


def _rectangle_outline(size: int, u: list[float]) -> Tensor:
    top, left, height, width = _box(size, u, 4)
    image = torch.zeros(size, size)
    image[top : top + height, left : left + width] = 1
    image[top + 1 : top + height - 1, left + 1 : left + width - 1] = 0
    return image


def _ellipse(size: int, u: list[float], least: int = 5) -> Tensor:
    top, left, height, width = _box(size, u, least)
    r, c = _grid(size)
    centre_r, centre_c = top + (height - 1) / 2, left + (width - 1) / 2
    inside = ((c - centre_c) / (width / 2)) ** 2 + ((r - centre_r) / (height / 2)) ** 2 <= 1
    return inside.float()


def _ellipse_outline(size: int, u: list[float]) -> Tensor:
    filled = _ellipse(size, u, least=7)
    padded = torch.nn.functional.pad(filled, (1, 1, 1, 1))
    neighbours = torch.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    return filled * (neighbours.min(0).values == 0)


def _triangle(size: int, u: list[float]) -> Tensor:
    top, left, height, width = _box(size, u, 5)
    side = _integer(u[5], 0, 3)  # where the base lies: 0 bottom, 1 top, 2 right, 3 left
    rows, cols = (height, width) if side < 2 else (width, height)
    box = _triangle_base_down(rows, cols, apex=_integer(u[4], 0, cols - 1))
    if side >= 2:
        box = box.T  # the base at the bottom becomes the base at the right
    box = box.flip(0) if side == 1 else box.flip(1) if side == 3 else box
    image = torch.zeros(size, size)
    image[top : top + height, left : left + width] = box
    return image


def _triangle_base_down(rows: int, cols: int, apex: int) -> Tensor:
    """The pixels of a ``rows`` x ``cols`` box whose centres lie in the triangle with corners
    (row, column) ``(rows - 1, 0)``, ``(rows - 1, cols - 1)`` and ``(0, apex)``."""
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    corners = [(rows - 1, 0), (rows - 1, cols - 1), (0, apex)]
    signs = torch.stack([(cb - ca) * (r - ra) - (rb - ra) * (c - ca)
                         for (ra, ca), (rb, cb) in zip(corners, corners[1:] + corners[:1])])
    return ((signs >= -1e-9).all(0) | (signs <= 1e-9).all(0)).float()


def _line(size: int, u: list[float]) -> Tensor:
    length = _integer(u[0], 6, size - 1)
    angle = u[1] * math.pi  # a direction with a non-negative row step; the reverse line is the same
    d_row, d_col = round(length * math.sin(angle)), round(length * math.cos(angle))
    d_row, d_col = min(d_row, size - 1), max(min(d_col, size - 1), -(size - 1))
    row0 = _integer(u[2], 0, size - 1 - d_row)
    col0 = _integer(u[3], max(0, -d_col), min(size - 1, size - 1 - d_col))
    steps = max(abs(d_row), abs(d_col))
    t = torch.arange(steps + 1, dtype=torch.float64) / max(steps, 1)
    rows = torch.round(row0 + t * d_row).long()
    cols = torch.round(col0 + t * d_col).long()
    image = torch.zeros(size, size)
    image[rows, cols] = 1
    return image


_DRAW = {"rectangle": _rectangle, "rectangle_outline": _rectangle_outline, "ellipse": _ellipse,
         "ellipse_outline": _ellipse_outline, "triangle": _triangle, "line": _line}
