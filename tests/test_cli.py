"""The `flowkit` command end to end on the bundled digits."""

import contextlib
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import flowkit
from flowkit.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
@pytest.mark.parametrize("model", ["bernoulli", "categorical"])
def test_fit_writes_a_complete_run_directory(model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--model", model, "--out", str(out), "--epochs", "2", "--hidden", "64",
                 "--masks", "2", "--order-agnostic"]) == 0
    printed = capsys.readouterr().out
    assert "validation NLL" in printed and "test NLL" in printed and "ensemble of 2" in printed
    for name in ["samples.png", "completions.png"]:
        assert (out / name).read_bytes().startswith(PNG)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["epochs_run"] == 2
    assert 0 < metrics["test_nll_ensemble"] < 64 * 3

    saved = torch.load(out / "model.pt", weights_only=True)
    cls = flowkit.BernoulliMADE if model == "bernoulli" else flowkit.CategoricalMADE
    shape = (64, [64]) if model == "bernoulli" else (64, 17, [64])
    restored = cls(*shape, num_masks=2, order_agnostic=True, direct=True, seed=99)  # the default for discrete data
    restored.load_state_dict(saved["state_dict"])
    data = flowkit.data.digits("binary" if model == "bernoulli" else "counts").test
    nll = -restored.log_prob(data).mean().item()
    assert abs(nll - metrics["test_nll"]) < 1e-3


def test_bad_option_is_one_line_without_traceback(tmp_path, capsys):
    assert main(["fit", "--masks", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "flowkit: error: --masks must be at least 1, got 0"


def test_module_entry_point_prints_help():
    done = subprocess.run([sys.executable, "-m", "flowkit", "fit", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for option in ["--data", "--model", "--out", "--hidden", "--masks", "--order-agnostic", "--epochs"]:
        assert option in done.stdout
    unknown = subprocess.run([sys.executable, "-m", "flowkit", "fit", "--model", "gauss"],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr and "Traceback" not in unknown.stderr


def fit_args(out, *options):
    return ["fit", "--out", str(out), "--batch-size", "500", *options]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowkit: error: "), err
    return err[0]


@pytest.mark.parametrize("model", ["made-mog", "maf", "iaf", "spline"])
def test_fit_continuous_models_on_a_toy_set(model, tmp_path, capsys):
    out = tmp_path / model
    assert main(fit_args(out, "--data", "two_moons", "--model", model, "--epochs", "1", "--hidden", "16",
                         "--layers", "2", "--components", "3", "--bins", "4")) == 0
    assert "test NLL" in capsys.readouterr().out
    for name in ["density.png", "samples.png", "curves.png"]:
        assert (out / name).read_bytes().startswith(PNG)
    for name in ["config.json", "model.pt", "checkpoint.pt", "metrics.jsonl", "metrics.json"]:
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(metrics[key])) for key in ["valid_nll", "test_nll", "test_nll_se"])
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model and config["features"] == 2 and config["hidden"] == [16]


def test_fit_infers_the_kind_of_a_users_file(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    binary, continuous = tmp_path / "binary.npy", tmp_path / "continuous.npy"
    np.save(binary, (torch.rand(300, 6, generator=generator) < 0.3).numpy().astype(np.uint8))
    np.save(continuous, torch.randn(300, 3, generator=generator).numpy())

    assert main(fit_args(tmp_path / "b", "--data", str(binary), "--epochs", "1", "--hidden", "16")) == 0
    printed = capsys.readouterr().out
    assert "data: binary: every value is 0 or 1 (300 x 6)" in printed and "model: bernoulli" in printed
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model"] == "bernoulli"

    assert main(fit_args(tmp_path / "c", "--data", str(continuous), "--epochs", "1", "--hidden", "16",
                         "--layers", "2")) == 0
    printed = capsys.readouterr().out
    assert "data: continuous" in printed and "model: maf" in printed and "maf flow" in printed
    assert (tmp_path / "c" / "curves.png").read_bytes().startswith(PNG)


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
def test_eval_sample_complete_on_a_digits_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--out", str(run), "--epochs", "2", "--hidden", "32"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_bpd"] == pytest.approx(metrics["test_nll"] / (64 * math.log(2)))

    assert main(["eval", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    nll = float(re.search(r"test NLL (\S+) ± ", printed).group(1))
    assert abs(nll - metrics["test_nll"]) < 1e-3 and "bits/dim" in printed

    assert main(["sample", "--run", str(run), "-n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    assert str(tmp_path / "s.npy") in capsys.readouterr().out
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (7, 64) and set(np.unique(samples)) <= {0.0, 1.0}
    assert (tmp_path / "s.png").read_bytes().startswith(PNG)

    fitted = (run / "completions.png").read_bytes()
    assert main(["complete", "--run", str(run), "-n", "3", "--samples", "2"]) == 0
    completions = np.load(run / "complete-3x2-seed0.npy")
    assert completions.shape == (3, 2, 64)
    test = flowkit.data.digits("binary").test[:3].numpy()
    assert (completions[:, :, :32] == test[:, None, :32]).all()
    assert (run / "complete-3x2-seed0.png").read_bytes().startswith(PNG)
    assert (run / "completions.png").read_bytes() == fitted  # the fit's own figure stays


def test_threads_hold_for_the_command_only(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(fit_args(run, "--data", "two_moons", "--model", "maf", "--epochs", "1", "--hidden", "8",
                         "--layers", "1")) == 0
    assert main(["eval", "--run", str(run)]) == 0
    plain = capsys.readouterr().out.splitlines()[-1]
    before, calls = torch.get_num_threads(), []
    real = torch.set_num_threads

    def recording(count: int) -> None:
        calls.append(count)
        real(count)

    monkeypatch.setattr(torch, "set_num_threads", recording)
    other = 2 if before == 1 else 1
    assert main(["eval", "--run", str(run), "--threads", str(other)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == plain
    assert calls == [other, before] and torch.get_num_threads() == before
    calls.clear()
    assert main(["eval", "--run", str(run)]) == 0  # without the option, torch's count is left alone
    assert calls == []


def test_eval_sample_complete_on_a_toy_made_mog_run(tmp_path, capsys):
    run = tmp_path / "mog"
    assert main(fit_args(run, "--data", "rings", "--model", "made-mog", "--epochs", "1", "--hidden", "16",
                         "--components", "3")) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--split", "valid"]) == 0
    nll = float(re.search(r"valid NLL (\S+) ± ", capsys.readouterr().out).group(1))
    assert abs(nll - json.loads((run / "metrics.json").read_text())["valid_nll"]) < 1e-3
    fitted = (run / "samples.png").read_bytes()
    assert main(["sample", "--run", str(run), "-n", "5"]) == 0
    assert np.load(run / "sample-5-seed0.npy").shape == (5, 2)
    assert (run / "sample-5-seed0.png").read_bytes().startswith(PNG)
    assert (run / "samples.png").read_bytes() == fitted  # the fit's own figure stays
    assert main(["sample", "--run", str(run), "-n", "5", "--out", str(run / "samples.npy")]) == 2
    assert "would overwrite the fit's samples.png" in one_error_line(capsys)
    assert main(["complete", "--run", str(run), "-n", "4", "--samples", "3"]) == 0
    assert np.load(run / "complete-4x3-seed0.npy").shape == (4, 3, 2)


def test_resume_continues_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    base = fit_args(run, "--data", "two_moons", "--model", "maf", "--hidden", "16", "--layers", "2")
    assert main([*base, "--epochs", "2"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main([*base, "--epochs", "4", "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 4
    assert main([*base, "--epochs", "4", "--resume", "--layers", "3"]) == 2
    assert "cannot resume" in one_error_line(capsys)


def test_fit_defaults_to_the_plateau_schedule_and_a_resumed_run_keeps_its_own(tmp_path, capsys):
    run = tmp_path / "run"
    argv = fit_args(run, "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1", "--epochs", "1")
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["training"]["lr_schedule"] == "plateau"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["settings"]["lr_schedule"] == "plateau"
    old = tmp_path / "old"  # a run fitted when constant was the default
    assert main(fit_args(old, "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1", "--epochs",
                         "1", "--lr-schedule", "constant")) == 0
    assert main(fit_args(old, "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1", "--epochs",
                         "2", "--resume")) == 0
    assert json.loads((old / "metrics.json").read_text())["epochs_run"] == 2
    assert json.loads((old / "config.json").read_text())["training"]["lr_schedule"] == "constant"
    assert main(fit_args(old, "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1", "--epochs",
                         "3", "--resume", "--lr-schedule", "plateau")) == 2  # asked for explicitly: refused
    assert "lr_schedule" in one_error_line(capsys)


@pytest.mark.parametrize("optimizer", ["adamw", "adagrad"])
def test_fit_trains_with_the_optimizer_asked_for_and_records_it(optimizer, tmp_path, capsys):
    run = tmp_path / "run"
    argv = fit_args(run, "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1", "--epochs", "1",
                    "--optimizer", optimizer, "--weight-decay", "0.01")
    assert main(argv) == 0
    training = json.loads((run / "config.json").read_text())["training"]
    assert (training["optimizer"], training["weight_decay"]) == (optimizer, 0.01)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["settings"]["optimizer"] == optimizer
    state = next(iter(checkpoint["optimizer"]["state"].values()))
    assert ("sum" in state) == (optimizer == "adagrad") and ("exp_avg" in state) == (optimizer == "adamw")


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    continuous = tmp_path / "x.npy"
    np.save(continuous, np.random.default_rng(0).normal(size=(50, 3)))
    wide = tmp_path / "levels.npy"  # 3000 features of 256 levels: categorical data, the direct connection by default
    np.save(wide, np.random.default_rng(0).integers(0, 256, size=(50, 3000)))
    maf_run = tmp_path / "maf"
    assert main(fit_args(maf_run, "--data", "two_moons", "--model", "maf", "--epochs", "1", "--hidden", "8",
                         "--layers", "1")) == 0
    capsys.readouterr()
    cases = {
        "needs continuous data": ["fit", "--model", "maf", "--out", str(tmp_path / "a")],
        "needs binary data": ["fit", "--data", str(continuous), "--model", "bernoulli", "--out", str(tmp_path / "b")],
        "data file not found": ["fit", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "c")],
        "unknown data set 'nope'": ["fit", "--data", "nope", "--out", str(tmp_path / "d")],
        "completion needs an autoregressive density": ["complete", "--run", str(maf_run)],
        "run directory not found": ["eval", "--run", str(tmp_path / "no-run")],
        "invalid choice": ["fit", "--model", "gauss"],
        "--weight-decay must be at least 0": ["fit", "--weight-decay", "-0.1", "--out", str(tmp_path / "e")],
        "--residual-blocks needs one --hidden width, got 64 64": [
            "fit", "--residual-blocks", "2", "--hidden", "64", "64", "--out", str(tmp_path / "f")],
        "--residual-blocks must be at least 0": ["fit", "--residual-blocks", "-1", "--out", str(tmp_path / "g")],
        "--dropout must be in [0, 1), got 1.5": ["fit", "--dropout", "1.5", "--out", str(tmp_path / "h")],
        "--linear applies to maf, iaf and spline, not bernoulli": [
            "fit", "--linear", "lu", "--model", "bernoulli", "--out", str(tmp_path / "i")],
        "--bound applies to spline, not maf": [
            "fit", "--data", "two_moons", "--model", "maf", "--bound", "4", "--out", str(tmp_path / "j")],
        "--bound must be positive and finite": [
            "fit", "--data", "two_moons", "--model", "spline", "--bound", "0", "--out", str(tmp_path / "k")],
        "--fresh-masks apply to bernoulli, categorical and made-mog, not iaf": [
            "fit", "--data", "two_moons", "--model", "iaf", "--fresh-masks", "--out", str(tmp_path / "l")],
        "--ensemble needs mask sets": ["eval", "--run", str(maf_run), "--ensemble", "2"],
        "--threads must be at least 1, got 0": ["eval", "--run", str(maf_run), "--threads", "0"],
        "pass direct=False (flowkit fit: --no-direct)": ["fit", "--data", str(wide), "--out", str(tmp_path / "m")],
    }
    for expected, argv in cases.items():
        with pytest.raises(SystemExit) if expected == "invalid choice" else contextlib.nullcontext() as done:
            assert main(argv) == 2
        if expected == "invalid choice":
            assert done.value.code == 2
        assert expected in one_error_line(capsys), argv


def test_every_subcommand_explains_its_options(capsys):
    for command, options in {
        "fit": ["--data", "--model", "--layers", "--components", "--bins", "--lr-schedule", "--clip", "--device",
                "--resume", "--progress", "--patience", "--fresh-masks", "--residual-blocks", "--dropout",
                "--linear", "--bound", "--threads"],
        "eval": ["--run", "--ensemble", "--split", "--threads"],
        "sample": ["--run", "-n", "--out"],
        "complete": ["--run", "-n", "--samples"],
    }.items():
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        printed = capsys.readouterr().out
        assert done.value.code == 0 and all(option in printed for option in options), command


def test_data_list_names_every_data_set(capsys):
    assert main(["data", "list"]) == 0
    printed = capsys.readouterr().out
    for name in ["digits", "binarized-mnist", "mnist", "power", *flowkit.data.TOY]:
        assert name in printed


def test_fresh_masks_train_and_score_an_ensemble_of_mask_keys(tmp_path, capsys):
    run = tmp_path / "fresh"
    assert main(fit_args(run, "--epochs", "1", "--hidden", "32", "--masks", "3", "--fresh-masks",
                         "--order-agnostic", "--direct")) == 0
    printed = capsys.readouterr().out
    assert "(mask key 0)" in printed and "ensemble of 3 mask keys" in printed
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["fresh_masks"] is True and metrics["fresh_masks"] is True
    assert torch.load(run / "checkpoint.pt", weights_only=True)["settings"]["masks"] == "fresh"

    saved = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    model = flowkit.BernoulliMADE(64, [32], order_agnostic=True, direct=True, seed=5).eval()  # one mask set
    model.load_state_dict(saved)
    test = flowkit.data.digits("binary").test
    with torch.no_grad():
        assert abs(-model.log_prob(test, keys=3).mean().item() - metrics["test_nll_ensemble"]) < 1e-4
        assert abs(-model.log_prob(test).mean().item() - metrics["test_nll"]) < 1e-4
        many = -model.log_prob(test, keys=10).mean().item()

    assert main(["eval", "--run", str(run), "--ensemble", "3"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 3 mask keys" in printed
    assert abs(float(re.search(r"test NLL (\S+) ± ", printed).group(1)) - metrics["test_nll_ensemble"]) < 1e-3
    assert main(["eval", "--run", str(run), "--ensemble", "10"]) == 0  # keys are not limited to --masks
    assert abs(float(re.search(r"test NLL (\S+) ± ", capsys.readouterr().out).group(1)) - many) < 1e-3
    assert main([*fit_args(run, "--epochs", "2", "--hidden", "32", "--masks", "3", "--order-agnostic", "--direct"),
                 "--resume"]) == 2
    assert "fresh_masks True -> False" in one_error_line(capsys)


def test_residual_blocks_dropout_lu_and_bound_are_recorded_and_rebuilt(tmp_path, capsys):
    run = tmp_path / "spline"
    base = fit_args(run, "--data", "two_moons", "--model", "spline", "--hidden", "16", "--layers", "2", "--bins", "4",
                    "--residual-blocks", "1", "--dropout", "0.1", "--linear", "lu", "--bound", "4")
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    assert (config["residual_blocks"], config["dropout"], config["linear"], config["bound"]) == (1, 0.1, "lu", 4.0)
    model, _ = flowkit.cli.load_run(str(run))
    kinds = [type(t).__name__ for t in model.transform.transforms]
    assert kinds == ["MaskedAutoregressive", "ReversePermutation", "LULinear", "MaskedAutoregressive"]
    layer = model.transform.transforms[0]
    assert (len(layer.made.blocks), layer.made.dropout, layer.transformer.bound) == (1, 0.1, 4.0)
    assert main(["eval", "--run", str(run)]) == 0
    nll = float(re.search(r"test NLL (\S+) ± ", capsys.readouterr().out).group(1))
    assert abs(nll - json.loads((run / "metrics.json").read_text())["test_nll"]) < 1e-3
    for changed, message in [(["--bound", "5"], "bound 4.0 -> 5.0"), (["--dropout", "0"], "dropout 0.1 -> 0.0"),
                             (["--residual-blocks", "2"], "residual_blocks 1 -> 2")]:
        assert main([*base, "--epochs", "2", "--resume", *changed]) == 2
        assert message in one_error_line(capsys)
    assert main([*base, "--epochs", "2", "--resume"]) == 0

    mog = tmp_path / "mog"  # a MADE density: residual blocks with the default single width
    assert main(fit_args(mog, "--data", "rings", "--model", "made-mog", "--epochs", "1", "--components", "2",
                         "--residual-blocks", "1", "--dropout", "0.2")) == 0
    capsys.readouterr()
    assert json.loads((mog / "config.json").read_text())["hidden"] == [128]
    model, _ = flowkit.cli.load_run(str(mog))
    assert (len(model.made.blocks), model.made.dropout) == (1, 0.2)


def test_a_run_written_before_the_new_options_still_loads_and_resumes(tmp_path, capsys):
    run = tmp_path / "old"
    base = fit_args(run, "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1")
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    path = run / "config.json"
    config = json.loads(path.read_text())
    for key in ("fresh_masks", "residual_blocks", "dropout", "linear", "bound"):
        del config[key]
    path.write_text(json.dumps(config))
    saved = torch.load(run / "model.pt", weights_only=True)
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if not k.endswith("mask_seed")}
    torch.save(saved, run / "model.pt")  # nor did its MADEs store their mask seed
    assert main(["eval", "--run", str(run)]) == 0 and "test NLL" in capsys.readouterr().out
    assert main(["sample", "--run", str(run), "-n", "3"]) == 0
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    assert main([*base, "--epochs", "3", "--resume", "--linear", "lu"]) == 2
    assert "linear None -> 'lu'" in one_error_line(capsys)


def test_spline_flows_get_lu_layers_by_default_and_a_run_keeps_its_own(tmp_path, capsys):
    from flowkit.cli import load_run
    from flowkit.transforms.linear import LULinear

    def lu_layers(run):
        return sum(isinstance(m, LULinear) for m in load_run(str(run))[0].modules())

    spline = fit_args(tmp_path / "spline", "--data", "two_moons", "--model", "spline", "--hidden", "8", "--layers", "2")
    assert main([*spline, "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "spline" / "config.json").read_text())["linear"] == "lu"
    assert lu_layers(tmp_path / "spline") > 0
    old = fit_args(tmp_path / "old", "--data", "two_moons", "--model", "spline", "--hidden", "8", "--layers", "2")
    assert main([*old, "--epochs", "1", "--linear", "none"]) == 0  # as a spline run fitted before: no LU
    assert json.loads((tmp_path / "old" / "config.json").read_text())["linear"] is None
    assert lu_layers(tmp_path / "old") == 0
    assert main([*old, "--epochs", "2", "--resume"]) == 0  # no flag: keeps its own
    assert json.loads((tmp_path / "old" / "config.json").read_text())["linear"] is None
    assert main([*old, "--epochs", "3", "--resume", "--linear", "lu"]) == 2
    assert "linear None -> 'lu'" in one_error_line(capsys)
    maf = fit_args(tmp_path / "maf", "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1")
    assert main([*maf, "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "maf" / "config.json").read_text())["linear"] is None


def test_the_direct_connection_is_on_by_default_for_discrete_models_and_a_run_keeps_its_own(tmp_path, capsys):
    from flowkit.cli import load_run

    run = tmp_path / "run"
    assert main(fit_args(run, "--hidden", "16", "--epochs", "1")) == 0
    assert json.loads((run / "config.json").read_text())["direct"] is True
    assert load_run(str(run))[0].made.direct is not None
    old = tmp_path / "old"  # as a run fitted before the default changed: no direct connection
    assert main(fit_args(old, "--hidden", "16", "--epochs", "1", "--no-direct")) == 0
    assert main(fit_args(old, "--hidden", "16", "--epochs", "2", "--resume")) == 0  # no flag: keeps its own
    assert json.loads((old / "config.json").read_text())["direct"] is False
    assert load_run(str(old))[0].made.direct is None
    assert main(fit_args(old, "--hidden", "16", "--epochs", "3", "--resume", "--direct")) == 2
    assert "direct False -> True" in one_error_line(capsys)
    assert main(fit_args(tmp_path / "maf", "--data", "two_moons", "--model", "maf", "--hidden", "8", "--layers", "1",
                         "--epochs", "1")) == 0
    assert json.loads((tmp_path / "maf" / "config.json").read_text())["direct"] is False
