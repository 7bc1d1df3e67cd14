"""flowkit.data.memmap: a .npy read from the file as it is needed, its one streaming pass, its split,
and the commands that use it (fit, eval, complete, and sample writing chunk by chunk)."""

import json
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import flowkit
import flowkit.cli.commands as commands
from flowkit.atomic import save_npy_chunks
from flowkit.cli import main
from flowkit.data import MemmapDataset, column_statistics, load_file, load_memmap, split_memmap
from flowkit.data.files import split_sizes
from flowkit.data.memmap import Permutation
from flowkit.errors import FileProblem, FlowkitError
from flowkit.train import evaluate, fit

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("flowkit: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def array(tmp_path):
    x = np.random.default_rng(0).normal(size=(257, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return x


# ------------------------------------------------------------------ the dataset


@pytest.mark.parametrize("access", ["read", "map"])
def test_rows_batches_and_views_equal_the_array(array, tmp_path, access):
    data = MemmapDataset(tmp_path / "x.npy", access=access)
    assert len(data) == 257 and data.shape == (257, 3) and data.features == 3
    assert torch.equal(data[5], torch.from_numpy(array[5])) and torch.equal(data[-1], torch.from_numpy(array[-1]))
    assert torch.equal(data[10:20], torch.from_numpy(array[10:20]))
    order = [200, 3, 3, 150, 0, 256]  # unsorted, with a repeat: rows come back in the order asked
    assert torch.equal(data.__getitems__(order), torch.from_numpy(array[order]))
    assert torch.equal(data.__getitems__(torch.tensor(order)), torch.from_numpy(array[order]))
    assert data.__getitems__([]).shape == (0, 3)
    rows = MemmapDataset(tmp_path / "x.npy", rows=range(100, 200), access=access)
    assert len(rows) == 100 and torch.equal(rows[:], torch.from_numpy(array[100:200]))
    assert torch.equal(rows.view(range(10, 20))[:], torch.from_numpy(array[110:120]))
    index = np.array([7, 1, 250])
    picked = MemmapDataset(tmp_path / "x.npy", index=index, access=access)
    assert torch.equal(picked[:], torch.from_numpy(array[index]))
    assert torch.equal(torch.cat(list(rows.chunks(7))), rows.tensor())
    with pytest.raises(IndexError, match="index 100 is out of range for 100 rows"):
        rows[100]
    with pytest.raises(FlowkitError, match="expected index rows in 0..256"):
        MemmapDataset(tmp_path / "x.npy", index=[0, 257])
    with pytest.raises(FlowkitError, match="step 1"):
        MemmapDataset(tmp_path / "x.npy", rows=range(0, 10, 2))


def test_other_layouts_and_dtypes(tmp_path):
    x = np.arange(40, dtype=np.int16).reshape(10, 4)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.save(tmp_path / "b.npy", x % 2 == 0)
    fortran = MemmapDataset(tmp_path / "f.npy")
    assert torch.equal(fortran.__getitems__([9, 2]), torch.from_numpy(x[[9, 2]].astype(np.float32)))
    codes = MemmapDataset(tmp_path / "f.npy", dtype=torch.int64)
    assert codes[3].dtype == torch.int64 and codes[3].tolist() == x[3].tolist()
    assert MemmapDataset(tmp_path / "b.npy")[0].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_affine_preprocessing_is_applied_per_batch(array, tmp_path):
    stats = column_statistics(array)
    data = MemmapDataset(tmp_path / "x.npy").standardized(stats)
    expected = (array.astype(np.float64) - array.mean(0)) / array.std(0)
    torch.testing.assert_close(data[:], torch.from_numpy(expected.astype(np.float32)))
    assert torch.equal(data.view(range(5, 9))[:], data[5:9])


def test_a_dataloader_with_a_worker_reads_batches(array, tmp_path):
    data = MemmapDataset(tmp_path / "x.npy", rows=range(0, 200))
    sampler = torch.utils.data.BatchSampler(range(200), batch_size=64, drop_last=False)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=1, collate_fn=lambda batch: batch)
    assert torch.equal(torch.cat(list(loader)), torch.from_numpy(array[:200]))


def test_fit_through_the_file_gives_the_weights_of_the_same_rows_in_memory(array, tmp_path):
    train, valid, _ = split_memmap(MemmapDataset(tmp_path / "x.npy"))
    weights = []
    for parts in ((train, valid), (train.tensor(), valid.tensor())):
        model = flowkit.MAF(3, 2, [8, 8], seed=0)
        fit(model, *parts, epochs=2, batch_size=32, seed=3)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


# ------------------------------------------------------------------ the split


@pytest.mark.parametrize("n", [2, 9, 10, 17, 1000, 4099])
def test_the_permutation_is_one_and_its_slices_are_views(n):
    perm = Permutation(n, seed=n)
    rows = perm[np.arange(n)]
    assert sorted(rows.tolist()) == list(range(n))
    assert perm[n // 3:][np.arange(n - n // 3)].tolist() == rows[n // 3:].tolist()
    assert not np.array_equal(rows, Permutation(n, seed=n + 1)[np.arange(n)]) or n < 100


def test_split_has_the_sizes_of_split_and_views_that_cover_the_file(array, tmp_path):
    parts = split_memmap(MemmapDataset(tmp_path / "x.npy"), seed=1)
    assert tuple(map(len, parts)) == split_sizes(257)
    rows = np.concatenate([part[:].numpy() for part in parts])
    assert np.array_equal(np.sort(rows, axis=0), np.sort(array, axis=0))
    again = split_memmap(MemmapDataset(tmp_path / "x.npy"), seed=1)
    assert torch.equal(again.test[:], parts.test[:])
    test = parts.test[:].numpy()  # a test part spread over the whole file, not a block of it
    positions = np.flatnonzero((array[:, None, :] == test[None]).all(-1).any(1))
    assert positions.min() < 257 // 4 and positions.max() > 3 * 257 // 4


# ------------------------------------------------------------------ one streaming pass


@pytest.mark.parametrize("rows", [1, 7, 64, 1000, None])
def test_streaming_statistics_equal_numpys(rows, tmp_path):
    rng = np.random.default_rng(1)
    x = (1e6 + rng.normal(size=(1000, 4)) * np.array([1e-3, 1.0, 10.0, 1e3])).astype(np.float64)
    x[:, 3] = rng.integers(-5, 5, 1000)
    np.save(tmp_path / "s.npy", x)
    for stats in (column_statistics(x, rows=rows), column_statistics(MemmapDataset(tmp_path / "s.npy"), rows=rows)):
        np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-13)
        np.testing.assert_allclose(stats.std, x.std(0), rtol=1e-9)
        assert np.array_equal(stats.minimum, x.min(0)) and np.array_equal(stats.maximum, x.max(0))
        assert stats.rows == 1000 and not stats.binary and not stats.integral and stats.negative
        assert stats.examples["negative"].tolist() == sorted(set(x[x < 0].tolist()))[:6]


def test_the_messages_and_kinds_of_load_file(tmp_path):
    rng = np.random.default_rng(2)
    cases = {"binary.npy": (rng.random((50, 3)) < 0.5).astype(np.uint8), "codes.npy": rng.integers(0, 5, (50, 2)),
             "big.npy": rng.integers(0, 300, (50, 2)), "real.npy": rng.normal(size=(50, 2))}
    for name, x in cases.items():
        np.save(tmp_path / name, x)
        data, kind, message = load_memmap(tmp_path / name)
        tensor, expected_kind, expected = load_file(tmp_path / name)
        assert kind == expected_kind and torch.equal(data[:], tensor)
        assert message == re.sub(r", \.\.\. \(\d+ distinct\)", ", ...", expected)
    assert load_memmap(tmp_path / "codes.npy", kind="continuous")[0][:].dtype == torch.float32
    with pytest.raises(FlowkitError, match="declared binary, but codes.npy holds values other than 0 and 1: 2, 3, 4"):
        load_memmap(tmp_path / "codes.npy", kind="binary")
    with pytest.raises(FlowkitError, match="declared categorical, but real.npy holds non-integer values"):
        load_memmap(tmp_path / "real.npy", kind="categorical")


def _same_refusal(path) -> str:
    """The message with which both loaders, streaming and in memory, refuse ``path`` (the same one)."""
    with pytest.raises(FlowkitError) as streamed:
        load_memmap(path)
    with pytest.raises(FlowkitError) as loaded:
        load_file(path)
    assert str(streamed.value) == str(loaded.value)
    return str(streamed.value)


def test_a_constant_continuous_column_is_refused_as_load_file_does(tmp_path):
    x = np.random.default_rng(3).normal(size=(100, 4))
    x[:, 1], x[:, 3] = 0.5, -2.0
    np.save(tmp_path / "constant.npy", x)
    message = _same_refusal(tmp_path / "constant.npy")
    assert "column 1 of constant.npy is constant (every value is 0.5) and so are 1 more" in message


def test_a_nan_in_a_middle_chunk_is_named_by_its_row(tmp_path, monkeypatch):
    x = np.random.default_rng(4).normal(size=(1000, 3)).astype(np.float32)
    x[613, 2], x[700, 0], x[999, 1] = np.nan, np.inf, np.nan
    np.save(tmp_path / "nan.npy", x)
    monkeypatch.setattr("flowkit.data.memmap.CHUNK_ELEMENTS", 300)  # 100 rows a chunk: row 613 is in the 7th
    assert "got 3 NaN or inf, the first nan at row 613, column 2" in _same_refusal(tmp_path / "nan.npy")


@pytest.mark.parametrize("content,error,expected", [
    (b"\x93NUMPY garbage", FileProblem, "truncated, damaged or not written by numpy.save"),
    (None, FileProblem, "holds Python objects (a pickle)"),
    (np.zeros(10), FlowkitError, "expected a 2-D array (N, D) in bad.npy, got shape (10,)"),
    (np.zeros((1, 3)), FlowkitError, "expected at least 2 rows in bad.npy, got 1"),
    (np.array([["a", "b"], ["c", "d"]]), FlowkitError, "expected numeric values in bad.npy, got dtype <U1"),
])
def test_a_file_that_cannot_be_read_is_named(content, error, expected, tmp_path):
    path = tmp_path / "bad.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(error) as raised:
        load_memmap(path)
    assert expected in str(raised.value)


def test_a_truncated_file_is_named(array, tmp_path):
    path = tmp_path / "x.npy"
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 4)
    with pytest.raises(FileProblem, match=f"cannot read data file {re.escape(str(path))}: truncated"):
        load_memmap(path)


# ------------------------------------------------------------------ writing chunk by chunk


def test_chunks_write_the_bytes_of_numpy_save_or_nothing(tmp_path):
    x = np.random.default_rng(5).normal(size=(100, 3)).astype(np.float32)
    np.save(tmp_path / "whole.npy", x)
    save_npy_chunks(tmp_path / "chunked.npy", (x[i:i + 30] for i in range(0, 100, 30)), rows=100)
    assert (tmp_path / "chunked.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()

    def failing():
        yield x[:30]
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        save_npy_chunks(tmp_path / "partial.npy", failing(), rows=100)
    with pytest.raises(FlowkitError, match="expected 100 rows"):
        save_npy_chunks(tmp_path / "short.npy", [x[:30]], rows=100)
    with pytest.raises(FlowkitError, match="expected chunks of float32"):
        save_npy_chunks(tmp_path / "mixed.npy", [x[:30], x[:70].astype(np.float64)], rows=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.npy", "whole.npy"]


# ------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small MAF fitted through the file path (forced with FLOWKIT_MEMMAP_BYTES=0) on 3-D data."""
    folder = tmp_path_factory.mktemp("memmap")
    x = np.random.default_rng(6).normal(size=(600, 3)).astype(np.float32) * [1.0, 2.0, 0.5]
    np.save(folder / "x.npy", x)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWKIT_MEMMAP_BYTES", "0")
        assert main(["fit", "--data", str(folder / "x.npy"), "--out", str(folder / "run"), "--epochs", "2",
                     "--layers", "2", "--hidden", "16", "--batch-size", "64"]) == 0
    return folder / "run"


def test_fit_reads_a_large_file_as_needed_and_eval_scores_the_same_rows(run, capsys, monkeypatch):
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["split"] == "memmap" and config["features"] == 3
    monkeypatch.delenv("FLOWKIT_MEMMAP_BYTES", raising=False)  # eval follows the run's config, not the size
    assert main(["eval", "--run", str(run)]) == 0
    nll = float(re.search(r"test NLL (\S+) ± ", capsys.readouterr().out).group(1))
    assert abs(nll - metrics["test_nll"]) < 1e-3

    model, _ = flowkit.cli.load_run(str(run))
    splits, _, _ = commands.load_streaming(config["data"], "maf", memmap=True)
    chunked, unchunked = evaluate(model, splits.test, batch_size=7), evaluate(model, splits.test.tensor())
    assert chunked == pytest.approx(unchunked, rel=1e-5)


def test_resume_keeps_the_runs_split(run, tmp_path, capsys):
    resumed = tmp_path / "run"
    resumed.mkdir()
    for path in run.iterdir():
        (resumed / path.name).write_bytes(path.read_bytes())
    config = json.loads((run / "config.json").read_text())
    assert main(["fit", "--data", config["data"], "--out", str(resumed), "--epochs", "3", "--layers", "2",
                 "--hidden", "16", "--batch-size", "64", "--resume"]) == 0
    assert "read from the file as needed" in capsys.readouterr().out
    assert json.loads((resumed / "config.json").read_text())["split"] == "memmap"


def test_sample_streams_chunks_from_one_generator(run, tmp_path, monkeypatch, capsys):
    model, _ = flowkit.cli.load_run(str(run))
    monkeypatch.setattr(commands, "SAMPLE_ROWS", 100)
    assert main(["sample", "--run", str(run), "-n", "100", "--out", str(tmp_path / "one.npy")]) == 0
    with torch.no_grad():  # up to one chunk: the samples of a single model.sample(n), as before
        direct = model.sample(100, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.load(tmp_path / "one.npy"), direct.numpy())

    assert main(["sample", "--run", str(run), "-n", "2550", "--out", str(tmp_path / "many.npy")]) == 0
    assert "wrote 2550 samples of 3 features" in capsys.readouterr().out
    many = np.load(tmp_path / "many.npy")
    assert many.shape == (2550, 3) and many.dtype == np.float32 and np.isfinite(many).all()
    assert np.array_equal(many[:100], direct.numpy())  # the first chunk, from the same generator
    assert not np.array_equal(many[100:200], many[:100])
    with torch.no_grad():  # the rows follow the model: their log-density matches fresh samples'
        fresh = model.sample(2550, generator=torch.Generator().manual_seed(1))
        streamed = model.log_prob(torch.from_numpy(many)).mean()
        reference = model.log_prob(fresh).mean()
    assert abs(float(streamed - reference)) < 0.15
    np.testing.assert_allclose(many.std(0), fresh.numpy().std(0), rtol=0.1)
    assert not list(tmp_path.glob(".*.part"))


def test_a_bad_file_on_the_file_path_is_one_line(tmp_path, capsys, monkeypatch):
    x = np.random.default_rng(7).normal(size=(300, 2)).astype(np.float32)
    x[123, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    monkeypatch.setenv("FLOWKIT_MEMMAP_BYTES", "0")
    assert main(["fit", "--data", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "run")]) == 2
    assert "expected finite values in nan.npy, got 1 NaN or inf, the first nan at row 123, column 1" in one_line(capsys)
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("FLOWKIT_MEMMAP_BYTES", "lots")
    assert main(["fit", "--data", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "run")]) == 2
    assert "FLOWKIT_MEMMAP_BYTES" in one_line(capsys)


def test_small_files_keep_the_in_memory_split(tmp_path, monkeypatch):
    x = np.random.default_rng(8).normal(size=(200, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.delenv("FLOWKIT_MEMMAP_BYTES", raising=False)
    splits, info, _ = commands.load_streaming(str(tmp_path / "x.npy"), None)
    assert "split" not in info and torch.equal(splits.test, flowkit.data.split(torch.from_numpy(x)).test)
