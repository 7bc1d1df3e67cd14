"""The `flowkit` command end to end on the bundled digits."""

import json
import subprocess
import sys

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
    restored = cls(*shape, num_masks=2, order_agnostic=True, seed=99)
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
    unknown = subprocess.run([sys.executable, "-m", "flowkit", "fit", "--model", "gauss"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr and "Traceback" not in unknown.stderr
