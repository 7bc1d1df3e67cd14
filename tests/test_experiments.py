"""The experiment scripts, at toy sizes: they run, resume and report, and their pieces compute what they claim."""

import argparse
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import flowkit
from flowkit.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_energy_normaliser_matches_the_closed_form():
    energies = _load("energies")
    # U2 = 0.5 ((z2 - w1) / 0.4)^2 + wall(z1): the z2 integral is 0.4 sqrt(2 pi) for every z1, and
    # the wall's integral over z1 is 8 + 0.2 sqrt(2 pi) (two half-Gaussians of scale 0.2 beyond |z1| = 4)
    exact = math.log(0.4 * math.sqrt(2 * math.pi) * (8 + 0.2 * math.sqrt(2 * math.pi)))
    assert abs(energies.log_z(energies.u2, 8.0, 1000) - exact) < 1e-4
    # U1 is symmetric under z -> -z and peaks on the ring of radius 2, at (+-2, 0)
    z = torch.randn(100, 2, dtype=torch.float64)
    torch.testing.assert_close(energies.u1(z), energies.u1(-z))
    assert energies.u1(torch.tensor([2.0, 0.0])) < energies.u1(torch.tensor([0.0, 2.0]))


def test_energies_script_runs(tmp_path, monkeypatch):
    energies = _load("energies")
    monkeypatch.setattr(sys, "argv", ["energies.py", "--steps", "3", "--samples", "16", "--eval-samples", "10000",
                                      "--grid", "60", "--out", str(tmp_path)])
    threads = torch.get_num_threads()
    try:
        energies.main()               # it sets one thread, as its runs did
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "energies.json").read_text())
    assert set(results["energies"]) == {"U1", "U2", "U3", "U4"}
    for entry in results["energies"].values():
        for scores in entry["flows"].values():
            assert scores["kl"] > -4 * scores["kl_se"] - 0.05   # a KL is not negative
            assert 0 < scores["ess_fraction"] <= 1
    assert (tmp_path / "energies.png").stat().st_size > 0 and (tmp_path / "energies.md").is_file()


def test_vae_bounds_and_training_step():
    vae_mnist = _load("vae_mnist")
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    for steps in (0, 2):
        model = vae_mnist.VAE(latent=4, hidden=16, iaf_steps=steps, iaf_hidden=8, seed=0)
        loss = -model.log_prob(x).mean()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        elbo, iwae = vae_mnist.bounds(model, x, k=30, batch=4, chunk=7)
        assert elbo.shape == iwae.shape == (6,)
        assert (iwae >= elbo - 1e-4).all()          # log-mean-exp >= mean, on the same weights
        assert 0 <= vae_mnist.active_units(model, x) <= 4


def test_bench_train_script_runs(tmp_path, monkeypatch):
    bench_train = _load("bench_train")
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--quick", "--threads", "1", "--out", str(tmp_path)])
    threads = torch.get_num_threads()
    try:
        bench_train.main()
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "bench_train.json").read_text())
    cases = {case["task"].split(" D=")[0]: case for case in results["cases"]}
    expected = {
        "Bernoulli MADE": {"flowkit", "flowkit, validation off", "plain masked MLP", "nflows", "pyro", "zuko"},
        "affine MAF": {"flowkit", "flowkit, validation off", "nflows", "zuko", "normflows", "pyro"},
        "RQ spline MAF": {"flowkit", "flowkit, validation off", "nflows", "zuko", "pyro"},
        "small affine MAF": {"flowkit", "flowkit, validation off", "nflows", "zuko", "normflows", "pyro"},
    }
    assert set(cases) == set(expected)
    for name, implementations in expected.items():
        trained = implementations | {bench_train.FUSED}  # the optimiser's row has no eval figure
        assert set(cases[name]["classes"]) == trained and not cases[name]["unavailable"]
        seconds = cases[name]["seconds"]
        assert set(seconds["train step"]) == trained and set(seconds["eval log_prob"]) == implementations
        for figures in seconds.values():
            assert all(f["median"] > 0 and f["min"] > 0 for f in figures.values())
    assert (tmp_path / "bench_train.md").read_text().count("| flowkit |") == 4


def _toy_splits(features, rows=(240, 60, 60), binary=False):
    from flowkit.data import Splits

    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, features, generator=generator) for n in rows]
    return Splits(*((part > 0.8).float() if binary else part for part in parts))


def test_made_mnist_trains_resumably_under_a_budget_and_reports(tmp_path, monkeypatch):
    made_mnist = _load("made_mnist")
    monkeypatch.setattr(made_mnist, "binarized_mnist", lambda seed: _toy_splits(784, binary=True))
    monkeypatch.setattr(made_mnist, "RUNS", [("1x500-m1", [8], 1, False), ("1x500-m2", [8], 2, True),
                                                 ("1x500-c2", [8], 2, False), ("1x500-m1-adagrad", [8], 1, False)])
    argv = ["made_mnist.py", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--epochs", "3",
            "--patience", "2", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--budget-minutes", "1e-9"])  # the deadline passes at once
    made_mnist.main()
    assert not (tmp_path / "runs" / "1x500-m1").exists()  # nothing trained, nothing reported
    monkeypatch.setattr(sys, "argv", argv)
    made_mnist.main()
    results = json.loads((tmp_path / "out" / "made_mnist.json").read_text())
    one, two = results["runs"]["1x500-m1"], results["runs"]["1x500-m2"]
    assert one["epochs"] <= 3 and len(one["curve"]) == one["epochs"] and "test_nll_ensemble" not in one
    assert two["test_nll_ensemble"] > 0 and two["test_nll_one_mask"] > 0
    connectivity = results["runs"]["1x500-c2"]
    assert connectivity["test_nll_ensemble"] > 0 and not connectivity["order_agnostic"]
    natural = made_mnist.build([8], 2, False).made.orders  # connectivity only: every mask set in natural order
    assert all(order.tolist() == list(range(784)) for order in natural)
    assert any(order.tolist() != list(range(784)) for order in made_mnist.build([8], 2, True).made.orders)
    assert one["best_valid_nll"] == min(row[2] for row in one["curve"])
    settings = torch.load(tmp_path / "runs" / "1x500-m1-adagrad" / "checkpoint.pt", weights_only=True)["settings"]
    assert (settings["optimizer"], settings["lr"]) == ("adagrad", 0.01)  # the run's own training settings
    table = (tmp_path / "out" / "made_mnist.md").read_text()
    assert "| 1x500-m1-adagrad | 8, Adagrad lr 0.01 | 1 | one random |" in table
    assert "about 94.5 (Figure 2, 1 x 500)" in table and "still training" not in table
    assert (tmp_path / "out" / "made_mnist_masks.png").stat().st_size > 0
    assert (tmp_path / "out" / "made_mnist_samples.png").stat().st_size > 0
    made_mnist.main()  # finished runs are not trained again
    assert json.loads((tmp_path / "out" / "made_mnist.json").read_text())["runs"]["1x500-m1"] == one
    shutil.rmtree(tmp_path / "runs")  # a new machine: the report keeps the committed finished runs
    monkeypatch.setattr(sys, "argv", [*argv, "--report"])
    made_mnist.main()
    assert json.loads((tmp_path / "out" / "made_mnist.json").read_text())["runs"] == results["runs"]


def test_made_mnist_categorical_runs_report_their_reference(tmp_path, monkeypatch):
    made_mnist = _load("made_mnist")
    parts = [torch.rand(n, 784, generator=torch.Generator().manual_seed(n)) for n in (120, 40, 40)]
    monkeypatch.setattr(made_mnist, "load_mnist", lambda: parts)
    monkeypatch.setattr(made_mnist, "binarized_mnist", lambda seed: _toy_splits(784, binary=True))
    monkeypatch.setattr(made_mnist, "RUNS", [("1x500-m1", [8], 1, False)])  # not selected: --only none
    argv = ["made_mnist.py", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--epochs", "2",
            "--patience", "1", "--threads", "1", "--only", "none", "--categorical", "--levels", "3"]
    for variant in ([], ["--no-direct"]):
        monkeypatch.setattr(sys, "argv", [*argv, *variant])
        made_mnist.main()
    rows = json.loads((tmp_path / "out" / "made_mnist.json").read_text())["categorical"]
    assert set(rows) == {"categorical-3", "categorical-3-nodirect"}
    assert rows["categorical-3"]["direct"] and not rows["categorical-3-nodirect"]["direct"]
    weights = torch.load(tmp_path / "runs" / "categorical-3-nodirect" / "checkpoint.pt", weights_only=True)
    assert not any("direct" in key for key in weights["model"])
    for row in rows.values():
        assert row["levels"] == 3 and row["epochs"] <= 2 and math.isfinite(row["test_nll"])
    # the reference, counted by hand: each pixel's level frequencies in train, add-one smoothed
    train, _, test = ((part * 3).long().clamp(max=2) for part in parts)
    by_hand = 0.0
    for d in range(784):
        counts = [int((train[:, d] == k).sum()) + 1 for k in range(3)]
        by_hand -= sum(math.log(counts[int(v)] / sum(counts)) for v in test[:, d])
    assert rows["categorical-3"]["independent_test_nll"] == pytest.approx(by_hand / len(test), rel=1e-9)
    table = (tmp_path / "out" / "made_mnist.md").read_text()
    assert table.count("independent categorical pixels") == 2 and "no direct connection" in table
    for name in rows:
        assert (tmp_path / "out" / f"made_mnist_{name}_samples.png").stat().st_size > 0
    shutil.rmtree(tmp_path / "runs")  # a new machine: the report keeps the committed results
    monkeypatch.setattr(sys, "argv", [*argv, "--report"])
    made_mnist.main()
    assert json.loads((tmp_path / "out" / "made_mnist.json").read_text())["categorical"] == rows


def test_made_mnist_anneal_keeps_the_best_annealed_epoch_and_does_not_rerun(tmp_path, monkeypatch):
    anneal = _load("made_mnist_anneal")
    splits = _toy_splits(784, binary=True)
    monkeypatch.setattr(anneal, "binarized_mnist", lambda seed: splits)
    monkeypatch.setattr(anneal, "RUNS", [("1x500-m2", [8], 2, True)])
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["made_mnist_anneal.py", "--runs-dir", str(runs), "--out", str(out), "--only", "1x500-m2", "--epochs", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="made_mnist.py --only 1x500-m2"):  # no finished run to start from
            anneal.main()
        model = anneal.build([8], 2, True)
        fit(model, splits.train, splits.valid, epochs=2, batch_size=100, ensemble=2, checkpoint=runs / "1x500-m2" /
            "checkpoint.pt")
        anneal.main()
        row = json.loads((out / "made_mnist_anneal.json").read_text())["runs"]["1x500-m2"]
        assert len(row["valid_curve"]) == 3 and row["best_epoch"] == 1 + int(np.argmin(row["valid_curve"]))
        # the figures after are the best annealed epoch's, scored with the ensemble of both mask sets
        assert abs(row["after"]["valid_nll"] - min(row["valid_curve"])) < 1e-3
        assert row["after"]["valid_nll"] < row["before"]["valid_nll"]
        assert "| 1x500-m2 | 2 |" in (out / "made_mnist_anneal.md").read_text()
        (runs / "1x500-m2" / "checkpoint.pt").unlink()  # a finished probe is reported, not trained again
        anneal.main()
        assert json.loads((out / "made_mnist_anneal.json").read_text())["runs"]["1x500-m2"] == row
    finally:
        torch.set_num_threads(threads)


def test_maf_power_reports_a_run_still_training_without_a_test_figure(tmp_path, monkeypatch):
    maf_power = _load("maf_power")
    monkeypatch.setattr(maf_power, "load_power", lambda seed: _toy_splits(6))
    tiny = {"MADE": lambda: flowkit.MADEMoG(6, 1, [8], seed=0), "MAF(5)": lambda: flowkit.MAF(6, 2, [8], seed=0)}
    monkeypatch.setattr(maf_power, "models", lambda: tiny)
    recipe = maf_power.recipe
    monkeypatch.setattr(maf_power, "recipe", lambda name, args: {**recipe(name, args), "compile": False})
    argv = ["maf_power.py", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--threads", "1"]
    epochs = ["--table-epochs", json.dumps({"MADE": 2, "MAF(5)": 50})]
    monkeypatch.setattr(sys, "argv", [*argv, *epochs, "--only", "MADE"])
    maf_power.main()
    folder = tmp_path / "runs" / "MAF-5"  # a run cut after its first epoch, as a session's end leaves it
    options = maf_power.recipe("MAF(5)", argparse.Namespace(epochs=1, table_epochs={"MAF(5)": 1}))
    assert options["lr_schedule"] == "cosine" and options["batch_norm"] == "population"
    fit(tiny["MAF(5)"](), _toy_splits(6).train, _toy_splits(6).valid, checkpoint=folder / "checkpoint.pt",
        log=folder / "log.jsonl", **{k: v for k, v in options.items() if k != "compile"})
    monkeypatch.setattr(sys, "argv", [*argv, *epochs, "--budget-minutes", "1e-9"])
    maf_power.main()  # no time left: nothing trains, both runs are reported
    results = json.loads((tmp_path / "out" / "maf_power.json").read_text())
    finished, running = results["runs"]["MADE"], results["runs"]["MAF(5)"]
    assert finished["epochs"] == 2 and math.isfinite(finished["test_log_likelihood"]) and finished["se"] > 0
    assert running == {**running, "finished": False, "epochs": 1} and "test_log_likelihood" not in running
    table = (tmp_path / "out" / "maf_power.md").read_text()
    assert "| MAF(5) | 0.14 | still training |" in table and "1 so far" in table
    assert (tmp_path / "out" / "maf_power.png").stat().st_size > 0
    # on a machine without the run folders, a report keeps what it finds committed: the finished
    # results, and the unfinished run's curve and epochs, marked as stopped (its checkpoint is gone)
    for run in (tmp_path / "runs").iterdir():
        shutil.rmtree(run)
    monkeypatch.setattr(sys, "argv", [*argv, "--report"])
    maf_power.main()
    kept = json.loads((tmp_path / "out" / "maf_power.json").read_text())["runs"]
    assert kept == {"MADE": finished, "MAF(5)": {**running, "stopped": True}}
    table = (tmp_path / "out" / "maf_power.md").read_text()
    assert "| MAF(5) | 0.14 | stopped, checkpoint lost |" in table and "still training" not in table



def test_power_spline_recipe_counts_the_rows_beyond_each_bound(tmp_path, monkeypatch):
    recipe = _load("power_spline_recipe")
    splits = _toy_splits(6)
    splits.test[:6, 2] = 4.0  # six test rows beyond a bound of 3, none beyond 15
    monkeypatch.setattr(recipe, "load_power", lambda seed: splits)
    monkeypatch.setattr(recipe, "HIDDEN", [8])
    monkeypatch.setattr(sys, "argv", ["power_spline_recipe.py", "--out", str(tmp_path), "--only", "affine",
                                      "spline, bound 3, LU", "spline, bound 15"])
    threads = torch.get_num_threads()
    try:
        recipe.main()
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "power_spline_recipe.json").read_text())["variants"]
    assert set(results) == {"affine", "spline, bound 3, LU", "spline, bound 15"}
    beyond = (splits.test.abs() > 3).any(dim=1).float().mean().item()
    assert results["spline, bound 3, LU"]["test_rows_beyond_bound"] == beyond and beyond >= 6 / 60
    assert results["affine"]["test_rows_beyond_bound"] is None
    assert results["spline, bound 15"]["test_rows_beyond_bound"] == 0
    assert all(math.isfinite(r["test_log_likelihood"]) and r["se"] > 0 for r in results.values())
    assert "| spline, bound 3, LU |" in (tmp_path / "power_spline_recipe.md").read_text()
    monkeypatch.setattr(sys, "argv", ["power_spline_recipe.py", "--out", str(tmp_path), "--only", "affine, LU"])
    try:
        recipe.main()  # one more variant: the others are kept, in the script's order
    finally:
        torch.set_num_threads(threads)
    again = json.loads((tmp_path / "power_spline_recipe.json").read_text())["variants"]
    assert list(again) == ["affine", "affine, LU", "spline, bound 3, LU", "spline, bound 15"]
    assert again["affine"] == results["affine"] and again["affine, LU"]["linear"] == "lu"


def test_fit_schedule_runs_the_command_per_schedule_and_compares_seed_by_seed(tmp_path, monkeypatch):
    study = _load("fit_schedule")
    toy = tmp_path / "toy.npy"
    np.save(toy, torch.randn(200, 2, generator=torch.Generator().manual_seed(0)).numpy())
    monkeypatch.setattr(study, "power_sample", lambda runs: toy)
    tiny = ["--epochs", "2", "--hidden", "8", "--layers", "1"]
    monkeypatch.setattr(study, "CASES", {"toy 200 rows, maf": (["--data", "{power}", *tiny], (1,))})
    runs, out = tmp_path / "runs", tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["fit_schedule.py", "--runs-dir", str(runs), "--out", str(out)])
    study.main()
    for schedule in study.SCHEDULES:
        config = json.loads((runs / f"toy-maf-{schedule}-s1" / "config.json").read_text())
        assert config["training"]["lr_schedule"] == schedule and config["seed"] == 1
    found = json.loads((out / "fit_schedule.json").read_text())["cases"]["toy 200 rows, maf"]["schedules"]
    assert list(found) == list(study.SCHEDULES)
    metrics = json.loads((runs / "toy-maf-cosine-s1" / "metrics.json").read_text())
    assert found["cosine"]["test_nll"] == [metrics["test_nll"]] and found["cosine"]["epochs"] == [2]
    diff = found["plateau"]["test_nll"][0] - found["constant"]["test_nll"][0]
    assert f"{diff:+.3f}" in (out / "fit_schedule.md").read_text()
    stamp = (runs / "toy-maf-constant-s1" / "metrics.json").stat().st_mtime_ns
    study.main()  # finished runs are not run again
    assert (runs / "toy-maf-constant-s1" / "metrics.json").stat().st_mtime_ns == stamp


def test_the_recipes_page_quotes_the_committed_results():
    # docs/recipes.md justifies the defaults with these runs: its figures must be theirs
    page = (ROOT / "docs" / "recipes.md").read_text()
    results = ROOT / "experiments" / "results"
    cases = json.loads((results / "fit_schedule.json").read_text())["cases"]
    diffs = {case: [a - b for a, b in zip(found["schedules"]["plateau"]["test_nll"],
                                          found["schedules"]["constant"]["test_nll"])]
             for case, found in cases.items()}
    every = [d for case in diffs.values() for d in case]
    assert len(every) == 8 and max(every) <= 5e-4 and "never worse than a constant rate in 8 paired runs" in page
    power = next(case for case in diffs if case.startswith("POWER"))
    assert round(-sum(diffs[power]) / len(diffs[power]), 2) == 0.02 and "0.02 nats better on POWER" in page
    spline = json.loads((results / "power_spline_recipe.json").read_text())["variants"]
    for name, quoted in [("spline, bound 3", "-0.45"), ("spline, bound 3, LU", "0.32"), ("spline, bound 15", "0.11")]:
        assert f"{spline[name]['test_log_likelihood']:.2f}" == quoted and quoted in page
    mnist = json.loads((results / "made_mnist.json").read_text())["runs"]
    for name in ("1x8000-m1", "1x8000-m1-d3", "1x8000-m1-d5", "1x500-m1-adagrad", "1x500-m1-random"):
        assert f"{mnist[name]['test_nll_one_mask']:.2f}" in page
