"""flowkit.data.shapes: deterministic, binary, varied, and each shape is what its label says."""

import pytest
import torch

from flowkit.data import SHAPE_KINDS, Splits, draw_shapes, shapes
from flowkit.errors import FlowkitTypeError, FlowkitValueError

N = 600


@pytest.fixture(scope="module")
def drawn():
    return draw_shapes(N, seed=0)


def _images_of(drawn, kind):
    images, labels = drawn
    chosen = images[labels == SHAPE_KINDS.index(kind)].reshape(-1, 20, 20)
    assert len(chosen) > 40, f"too few {kind}s in {N} draws"
    return chosen


def _box(image):
    rows = image.sum(1).nonzero().flatten()
    cols = image.sum(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _runs(line):
    """The number of maximal runs of ones in a 1-d 0/1 tensor."""
    padded = torch.cat([torch.zeros(1), line, torch.zeros(1)])
    return int((padded[1:] - padded[:-1] == 1).sum())


def _convex_by_lines(image):
    return all(_runs(row) <= 1 for row in image) and all(_runs(col) <= 1 for col in image.T)


def _outside(image):
    """The zero pixels connected (4-neighbours) to the border of the image."""
    free = image == 0
    reached = torch.zeros_like(free)
    reached[0], reached[-1], reached[:, 0], reached[:, -1] = free[0], free[-1], free[:, 0], free[:, -1]
    while True:
        grown = reached.clone()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= free
        if torch.equal(grown, reached):
            return reached
        reached = grown


def _eight_connected(image):
    on = image.bool()
    start = on.nonzero()[0]
    reached = torch.zeros_like(on)
    reached[tuple(start)] = True
    while True:
        padded = torch.nn.functional.pad(reached.float()[None, None], (1, 1, 1, 1))
        grown = (torch.nn.functional.max_pool2d(padded, 3, stride=1)[0, 0] > 0) & on
        if torch.equal(grown, reached):
            return bool(torch.equal(reached, on))
        reached = grown


def test_shape_dtype_and_binary_values(drawn):
    images, labels = drawn
    assert images.shape == (N, 400) and images.dtype == torch.float32
    assert labels.shape == (N,) and labels.dtype == torch.long
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert (images.sum(1) >= 5).all()  # every image shows a shape


def test_deterministic_from_the_seed_and_prefix_stable(drawn):
    images, labels = drawn
    again, labels_again = draw_shapes(N, seed=0)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    short, short_labels = draw_shapes(25, seed=0)
    assert torch.equal(short, images[:25]) and torch.equal(short_labels, labels[:25])
    other, _ = draw_shapes(N, seed=1)
    assert not torch.equal(other, images)


def test_variety(drawn):
    images, labels = drawn
    counts = torch.bincount(labels, minlength=len(SHAPE_KINDS))
    assert (counts > N / len(SHAPE_KINDS) / 2).all()  # every kind, roughly equally often
    assert len({tuple(image.tolist()) for image in images}) > 0.95 * N  # nearly all distinct
    boxes = torch.tensor([_box(image.reshape(20, 20)) for image in images])
    assert len(set(boxes[:, 0].tolist())) > 10 and len(set(boxes[:, 2].tolist())) > 10  # positions vary
    heights = boxes[:, 1] - boxes[:, 0]
    assert heights.min() <= 4 and heights.max() >= 17  # sizes vary
    mean = images.mean(0).reshape(20, 20)
    assert mean.min() > 0  # every pixel is on in some image


def test_rectangles_fill_their_bounding_box(drawn):
    for image in _images_of(drawn, "rectangle"):
        top, bottom, left, right = _box(image)
        assert image.sum() == (bottom - top) * (right - left)
        assert bottom - top >= 3 and right - left >= 3


def test_rectangle_outlines_are_the_border_of_their_box(drawn):
    for image in _images_of(drawn, "rectangle_outline"):
        top, bottom, left, right = _box(image)
        box = torch.zeros(20, 20)
        box[top:bottom, left:right] = 1
        box[top + 1 : bottom - 1, left + 1 : right - 1] = 0
        assert torch.equal(image, box)
        assert (~_outside(image) & (image == 0)).any()  # an inside


def test_ellipses_are_convex_symmetric_and_round(drawn):
    for image in _images_of(drawn, "ellipse"):
        top, bottom, left, right = _box(image)
        crop = image[top:bottom, left:right]
        assert torch.equal(crop, crop.flip(0)) and torch.equal(crop, crop.flip(1))
        assert _convex_by_lines(crop)
        assert crop[0, 0] == 0 and crop[-1, -1] == 0  # the corners are cut
        fraction = float(crop.mean())
        assert 0.6 < fraction < 0.95  # pi / 4 of the box, give or take the pixels


def test_ellipse_outlines_are_thin_closed_curves(drawn):
    for image in _images_of(drawn, "ellipse_outline"):
        top, bottom, left, right = _box(image)
        crop = image[top:bottom, left:right]
        assert torch.equal(crop, crop.flip(0)) and torch.equal(crop, crop.flip(1))
        inside = ~_outside(image) & (image == 0)
        assert inside.any()  # closed: an inside the border cannot reach
        filled = image.bool() | inside
        assert _convex_by_lines(filled.float())
        assert image.sum() < 0.6 * filled.sum()  # a curve, not a disc


def test_triangles_are_convex_and_half_their_box(drawn):
    for image in _images_of(drawn, "triangle"):
        top, bottom, left, right = _box(image)
        crop = image[top:bottom, left:right]
        assert _convex_by_lines(crop)
        assert 0.3 < float(crop.mean()) < 0.8
        sides = [crop[0].all(), crop[-1].all(), crop[:, 0].all(), crop[:, -1].all()]
        assert 1 <= sum(map(bool, sides)) <= 2  # the base, and a second side when the apex is over a corner


def test_lines_are_thin_connected_segments(drawn):
    for image in _images_of(drawn, "line"):
        top, bottom, left, right = _box(image)
        assert image.sum() == max(bottom - top, right - left)  # one pixel per step along the longer axis
        assert image.sum() >= 5  # 6 pixels apart at least: 5 steps on the diagonal
        assert _eight_connected(image)


def test_kinds_selects_and_labels_index_shape_kinds():
    images, labels = draw_shapes(50, seed=3, kinds=["line", "triangle"])
    assert set(labels.tolist()) == {SHAPE_KINDS.index("line"), SHAPE_KINDS.index("triangle")}


def test_other_sizes():
    images, _ = draw_shapes(100, 12, seed=0)
    assert images.shape == (100, 144) and set(images.unique().tolist()) == {0.0, 1.0}
    images, _ = draw_shapes(50, 32, seed=0)
    assert images.shape == (50, 1024)


def test_splits_are_the_draw_cut_in_three():
    parts = shapes(30, 5, 7, seed=2)
    assert isinstance(parts, Splits)
    assert [len(p) for p in parts] == [30, 5, 7]
    images, _ = draw_shapes(42, seed=2)
    assert torch.equal(torch.cat(list(parts)), images)


@pytest.mark.parametrize("call, error, words", [
    (lambda: draw_shapes(-1), FlowkitValueError, "n"),
    (lambda: draw_shapes(3, 8), FlowkitValueError, "size"),
    (lambda: draw_shapes(3, 20.0), FlowkitTypeError, "size"),
    (lambda: draw_shapes(3, seed="0"), FlowkitTypeError, "seed"),
    (lambda: draw_shapes(3, kinds=["hexagon"]), FlowkitValueError, "kinds"),
    (lambda: draw_shapes(3, kinds=[]), FlowkitValueError, "kinds"),
    (lambda: draw_shapes(3, kinds="line"), FlowkitTypeError, "kinds"),
    (lambda: shapes(10, -1, 1), FlowkitValueError, "valid"),
])
def test_errors_name_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()
