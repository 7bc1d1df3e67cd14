"""A run directory is never lost: the command validates before it touches anything, writes every file
atomically, names damaged files with a remedy, fails with one line, and survives being killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import flowkit
from flowkit.cli import main
from flowkit.errors import FileProblem, FlowkitError
from flowkit.train import evaluate, fit

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")

DIGITS = ["--hidden", "16", "--batch-size", "500"]  # a digits run of about a second


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("flowkit: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["fit", "--out", str(run), "--epochs", "2", *DIGITS]) == 0
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    target.mkdir()
    for name, data in snapshot(run).items():
        (target / name).write_bytes(data)
    return target


# ------------------------------------------------------------------ validate, then act


@pytest.mark.parametrize("device", ["gpu0", "cuda:7" if torch.cuda.is_available() else "cuda", "meta", "mps:3"])
@pytest.mark.parametrize("resume", [False, True])
def test_a_bad_device_leaves_the_run_as_it_was(device, resume, digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    before = snapshot(run)
    argv = ["fit", "--out", str(run), "--epochs", "3", *DIGITS, "--device", device]
    argv += ["--resume"] if resume else ["--overwrite", "--hidden", "32"]
    assert main(argv) == 2
    assert "--device" in one_line(capsys)
    assert snapshot(run) == before
    assert main(["eval", "--run", str(run)]) == 0


def test_a_refit_without_resume_or_overwrite_is_refused_and_touches_nothing(digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    before = snapshot(run)
    assert main(["fit", "--out", str(run), "--epochs", "1", "--hidden", "32", "--batch-size", "500"]) == 2
    assert "already holds a run: pass --resume to continue it, --overwrite to replace it" in one_line(capsys)
    assert snapshot(run) == before


def test_a_refused_resume_leaves_config_and_checkpoint_alone(digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    before = snapshot(run)
    for changed, expected in [(["--lr", "0.01"], "lr 0.001 -> 0.01"),
                              (["--batch-size", "400"], "batch_size 500 -> 400"),
                              (["--hidden", "32"], "hidden [16] -> [32]")]:
        argv = ["fit", "--out", str(run), "--epochs", "3", *DIGITS, "--resume", *changed]
        assert main(argv) == 2
        assert expected in one_line(capsys)
        assert snapshot(run) == before


def test_overwrite_replaces_a_run_but_never_a_folder_of_other_files(digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    assert main(["sample", "--run", str(run), "-n", "3"]) == 0
    (run / "notes.txt").write_text("mine")
    assert main(["fit", "--out", str(run), "--epochs", "1", "--hidden", "8", "--batch-size", "500", "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["hidden"] == [8]
    assert log_epochs(run) == [1]
    assert not list(run.glob("sample-*")), "the old model's samples are gone with it"
    assert (run / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(["fit", "--out", str(other), "--epochs", "1", *DIGITS, *extra]) == 2
        one_line(capsys)
        assert snapshot(other) == {"thesis.tex": b"x"}
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["fit", "--out", str(file), "--epochs", "1", *DIGITS]) == 2
    assert "is a file, not a directory" in one_line(capsys)


def test_an_interrupted_first_epoch_can_be_resumed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--out", str(run), "--epochs", "1", *DIGITS]) == 0
    (run / "checkpoint.pt").unlink()  # as if killed before the first checkpoint
    (run / "model.pt").unlink()
    assert main(["fit", "--out", str(run), "--epochs", "1", *DIGITS, "--resume"]) == 0
    assert "starts from epoch 1" in capsys.readouterr().out


# ------------------------------------------------------------------ damaged files


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"not a file at all\n" * 20}[how])


@pytest.mark.parametrize("how", ["truncate", "empty", "garbage"])
def test_a_damaged_model_file_is_named_with_a_remedy(how, digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    damage(run / "model.pt", how)
    for command in (["eval", "--run", str(run)], ["sample", "--run", str(run)], ["complete", "--run", str(run)]):
        assert main(command) == 2
        line = one_line(capsys)
        assert str(run / "model.pt") in line and "--resume" in line and "weights_only" not in line, line
    # the remedy works: a resume of the finished run writes model.pt again
    assert main(["fit", "--out", str(run), "--epochs", "2", *DIGITS, "--resume"]) == 0
    assert main(["eval", "--run", str(run)]) == 0


def test_a_model_file_with_code_in_it_is_refused_without_advice_to_load_it_unsafely(digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    saved = torch.load(run / "model.pt", weights_only=True)
    saved["extra"] = Path("planted")  # an object the weights-only loader refuses
    torch.save(saved, run / "model.pt")
    assert main(["eval", "--run", str(run)]) == 2
    line = one_line(capsys)
    assert "holds objects other than tensors" in line and "weights_only" not in line and "unsafe" not in line.lower()


def test_a_model_file_of_another_architecture_is_named(digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    other = tmp_path / "other"
    assert main(["fit", "--out", str(other), "--epochs", "1", "--hidden", "8", "--batch-size", "500"]) == 0
    (run / "model.pt").write_bytes((other / "model.pt").read_bytes())
    assert main(["eval", "--run", str(run)]) == 2
    assert "does not match the run's config.json" in one_line(capsys)


@pytest.mark.parametrize("content", ['{"model": "bernoulli",', "[1, 2]", '{"model": "bernoulli"}', "\x00\xff"])
def test_a_damaged_config_is_named(content, digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    (run / "config.json").write_bytes(content.encode("latin-1"))
    before = snapshot(run)
    for command in (["eval", "--run", str(run)], ["fit", "--out", str(run), "--epochs", "3", *DIGITS, "--resume"]):
        assert main(command) == 2
        line = one_line(capsys)
        assert str(run / "config.json") in line and "fit the run again" in line, line
    assert snapshot(run) == before


def test_a_damaged_checkpoint_is_named_and_left_alone(digits_run, tmp_path, capsys):
    run = copy_of(digits_run, tmp_path)
    damage(run / "checkpoint.pt", "truncate")
    before = snapshot(run)
    assert main(["fit", "--out", str(run), "--epochs", "3", *DIGITS, "--resume"]) == 2
    line = one_line(capsys)
    assert str(run / "checkpoint.pt") in line and "delete it to train from the start" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("content,expected", [
    (b"\x93NUMPY garbage", "truncated, damaged or not written by numpy.save"),
    (b"", "truncated, damaged or not written by numpy.save"),
    (None, "holds Python objects (a pickle)"),
])
def test_a_data_file_that_is_not_an_array_is_named(content, expected, tmp_path, capsys):
    path = tmp_path / "x.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    assert main(["fit", "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys)
    assert str(path) in line and expected in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ empty and degenerate input


def test_empty_data_is_refused_by_fit_and_evaluate():
    model = flowkit.BernoulliMADE(3, [8], seed=0)
    with pytest.raises(FlowkitError, match=r"expected train data of shape \(N, D\) with N >= 1, got \(0, 3\)"):
        fit(model, torch.zeros(0, 3))
    with pytest.raises(FlowkitError, match=r"expected valid data of shape \(N, D\) with N >= 1, got \(0, 3\)"):
        fit(model, torch.ones(5, 3), torch.zeros(0, 3))
    with pytest.raises(FlowkitError, match="at least one row to score"):
        evaluate(model, torch.zeros(0, 3))
    with pytest.raises(FlowkitError, match="expected data to be a torch.Tensor, got list"):
        evaluate(model, [[0, 1, 0]])
    nll, se = evaluate(model, torch.ones(1, 3))  # one row: a mean, and no standard error
    assert np.isfinite(nll) and np.isnan(se)


@pytest.mark.parametrize("option,value,expected", [
    ("epochs", -1, "expected epochs to be an int >= 0, got -1"),
    ("batch_size", 0, "expected batch_size to be an int >= 1, got 0"),
    ("batch_size", 2.5, "expected batch_size to be an int >= 1, got float 2.5"),
    ("patience", True, "expected patience to be an int >= 0, got bool True"),
    ("lr", 0.0, "expected lr to be a finite number > 0, got 0.0"),
    ("lr", float("nan"), "expected lr to be a finite number > 0, got nan"),
    ("clip", -1.0, "expected clip to be a finite number > 0, got -1.0"),
])
def test_fit_names_a_bad_option(option, value, expected):
    model = flowkit.BernoulliMADE(3, [8], seed=0)
    with pytest.raises(FlowkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        fit(model, torch.ones(5, 3), **{option: value})


def test_degenerate_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, rng.normal(size=(5, 2)))
    assert main(["fit", "--data", str(tiny), "--out", str(tmp_path / "a")]) == 2
    assert "expected at least 10 rows" in one_line(capsys)

    constant = rng.normal(size=(100, 3))
    constant[:, 1] = 0.5
    np.save(tmp_path / "constant.npy", constant)
    assert main(["fit", "--data", str(tmp_path / "constant.npy"), "--out", str(tmp_path / "b")]) == 2
    assert "column 1 of constant.npy is constant (every value is 0.5)" in one_line(capsys)

    binary = (rng.random((200, 4)) < 0.5).astype(np.float32)
    binary[:, 2] = 0  # an all-zero binary column is a defined case: the model learns p -> 0, NLL finite
    np.save(tmp_path / "binary.npy", binary)
    assert main(["fit", "--data", str(tmp_path / "binary.npy"), "--out", str(tmp_path / "c"), "--epochs", "3",
                 "--hidden", "8"]) == 0
    assert np.isfinite(json.loads((tmp_path / "c" / "metrics.json").read_text())["test_nll"])


@pytest.mark.parametrize("argv,expected", [
    (["sample", "-n", "-3"], "-n must be at least 1, got -3"),
    (["sample", "-n", "2.5"], "invalid int value: '2.5'"),
    (["complete", "--samples", "0"], "-n and --samples must be at least 1"),
])
def test_bad_counts_are_one_line(argv, expected, digits_run, capsys):
    with pytest.raises(SystemExit) if "2.5" in argv else _nothing() as done:
        assert main([argv[0], "--run", str(digits_run), *argv[1:]]) == 2
    if done is not None:
        assert done.value.code == 2
    assert expected in one_line(capsys)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_only_the_projects_errors_become_one_line(monkeypatch, digits_run, capsys):
    import flowkit.cli as cli

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "load_run", bug)
    with pytest.raises(KeyError):
        main(["eval", "--run", str(digits_run)])
    monkeypatch.setattr(cli, "load_run", lambda run: (_ for _ in ()).throw(FileProblem("named")))
    assert main(["eval", "--run", str(digits_run)]) == 2
    assert one_line(capsys) == "flowkit: error: named"


# ------------------------------------------------------------------ killed at any point


class Killed(BaseException):
    """A stand-in for SIGKILL: nothing in flowkit catches it."""


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def log_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["fit", "--out", str(run), "--epochs", "2", *DIGITS]) == 0
    replaced = []
    real = os.replace
    os.replace = lambda source, target: (replaced.append(Path(target).name), real(source, target))[1]
    try:
        assert main(["fit", "--out", str(run), "--epochs", "2", *DIGITS, "--overwrite"]) == 0
    finally:
        os.replace = real
    return run, replaced


def test_a_fit_killed_at_any_file_write_resumes_to_the_uninterrupted_result(reference, tmp_path, monkeypatch, capsys):
    run_reference, replaced = reference
    expected = final_weights(run_reference)
    assert replaced == ["config.json", "metrics.jsonl", "checkpoint.pt", "metrics.jsonl", "checkpoint.pt",
                        "metrics.jsonl", "samples.png", "completions.png", "curves.png", "model.pt", "metrics.json"]
    real = os.replace
    for k in range(len(replaced)):
        for before in (True, False):  # killed just before the k-th file lands, or just after
            run = tmp_path / f"run-{k}-{before}"
            calls = []

            def replace(source, target, k=k, before=before, calls=calls):
                calls.append(target)
                if len(calls) == k + 1 and before:
                    raise Killed
                real(source, target)
                if len(calls) == k + 1:
                    raise Killed

            monkeypatch.setattr(os, "replace", replace)
            with pytest.raises(Killed):
                main(["fit", "--out", str(run), "--epochs", "2", *DIGITS])
            monkeypatch.setattr(os, "replace", real)
            assert not [p for p in run.iterdir() if p.name.endswith(".part")]
            if not (run / "config.json").exists():  # killed before anything landed: a fresh fit
                assert main(["fit", "--out", str(run), "--epochs", "2", *DIGITS]) == 0
            else:
                if (run / "model.pt").exists():
                    assert main(["eval", "--run", str(run)]) == 0
                assert main(["fit", "--out", str(run), "--epochs", "2", *DIGITS, "--resume"]) == 0, (k, before)
            capsys.readouterr()
            weights = final_weights(run)
            assert all(torch.equal(weights[key], expected[key]) for key in expected), (k, before)
            assert log_epochs(run) == [1, 2], (k, before)


def fit_command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flowkit", "fit", "--out", str(run), "--epochs", "4", "--hidden", "64",
            "--batch-size", "50", *extra]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the fit wrote no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_fit_killed_at_a_random_moment_loses_no_finished_epoch(seed, tmp_path):
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fit_command(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wait_for(run / "checkpoint.pt", process)
    time.sleep(float(rng.uniform(0.0, 1.5)))
    process.kill()
    process.communicate()
    finished = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]
    assert log_epochs(run) == list(range(1, finished + 1))
    done = subprocess.run(fit_command(run, "--resume"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert log_epochs(run) == [1, 2, 3, 4]
    history = torch.load(run / "checkpoint.pt", weights_only=True)["history"]
    assert len(history["train_nll"]) == 4


def test_ctrl_c_stops_with_one_line_and_a_resumable_run(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fit_command(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(run / "checkpoint.pt", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the fit finished before the interrupt arrived")
    assert process.returncode == 130, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("flowkit: interrupted") and "--resume" in err
    done = subprocess.run(fit_command(run, "--resume"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert log_epochs(run) == [1, 2, 3, 4]


def test_a_last_minibatch_of_one_row_does_not_break_batch_norm():
    model = flowkit.MAF(2, 2, [8], batch_norm=True, seed=0)
    history = fit(model, torch.randn(101, 2), torch.randn(20, 2), epochs=2, batch_size=100)
    assert len(history.train_nll) == 2 and all(np.isfinite(history.train_nll))
    with pytest.raises(FlowkitError, match="at least 2 examples, got 1"):
        fit(flowkit.MAF(2, 2, [8], batch_norm=True, seed=0), torch.randn(1, 2), epochs=1)
