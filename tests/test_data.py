"""The bundled digits: integrity, shapes, binarization and the fixed split."""

import hashlib
from importlib import resources

import pytest
import torch

from flowkit.data import DIGITS_SHA256, binarize, digits, load_digits


def test_bundled_file_matches_recorded_checksum():
    raw = resources.files("flowkit.data").joinpath("digits.csv.gz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == DIGITS_SHA256


def test_raw_digits_are_counts_with_ten_balanced_classes():
    pixels, labels = load_digits()
    assert pixels.shape == (1797, 64) and pixels.dtype == torch.uint8
    assert int(pixels.min()) == 0 and int(pixels.max()) == 16
    counts = torch.bincount(labels, minlength=10)
    assert counts.numel() == 10 and int(counts.min()) >= 170


def test_splits_partition_the_data_with_a_fixed_shuffle():
    train, valid, test = digits("counts")
    assert (len(train), len(valid), len(test)) == (1197, 300, 300)
    pixels, _ = load_digits()
    everything = torch.cat([train, valid, test])
    as_rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert as_rows(everything) == as_rows(pixels.long())
    assert torch.equal(digits("counts").train, train)


def test_binary_digits_are_a_fixed_bernoulli_draw_of_the_intensities():
    binary = digits("binary")
    counts = digits("counts")
    assert torch.equal(binary.train, digits("binary").train)
    assert set(binary.train.unique().tolist()) == {0.0, 1.0}
    zero, full = counts.train == 0, counts.train == 16
    assert not binary.train[zero].any() and binary.train[full].all()
    frequency = binary.train.mean()
    expected = counts.train.double().mean() / 16
    assert abs(float(frequency) - float(expected)) < 0.01


def test_binarize_methods_and_errors():
    x = torch.tensor([[0, 7, 8, 16]])
    assert binarize(x, method="threshold").tolist() == [[0.0, 0.0, 1.0, 1.0]]
    draws = binarize(torch.full((20000, 1), 4), method="stochastic")
    assert abs(float(draws.mean()) - 0.25) < 0.015
    with pytest.raises(ValueError, match="stochastic"):
        binarize(x, method="round")
    with pytest.raises(ValueError, match="kind"):
        digits("colour")
