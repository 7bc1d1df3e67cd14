"""Which learning-rate schedule should ``flowkit fit`` use by default? Measured through the command.

Every run is the ``flowkit fit`` command at its defaults (batch 100, Adam at lr 1e-3, at most 300
epochs, early stopping 30 epochs after the best validation NLL, the best epoch's weights kept, the
default model for the data) except ``--lr-schedule`` and ``--seed``:

- ``constant``: lr 1e-3 throughout;
- ``plateau``: halved after 15 epochs (half the patience) without a better validation NLL;
- ``cosine``: annealed to zero over ``--epochs`` (300).

on three data sets: ``digits`` (the README's first command: a Bernoulli MADE, one layer of 500
units, direct connection), ``digits`` quantised to 17 grey levels (``--model categorical``) and a
30,000-row sample of POWER (the rows drawn with seed 0 from the cached, standardised data set, saved
as ``.npy``; the command splits it 80/10/10 and fits its default ``maf``, 5 layers of MADEs of
2 x 128 units). Test NLL in nats, lower is better; every schedule sees the same splits, initial
weights and minibatches for a given seed, so schedules are compared seed by seed.

    python experiments/fit_schedule.py                  # every run not yet in --runs-dir, then the report
    python experiments/fit_schedule.py --report         # only rewrite the results files

One thread per run (``OMP_NUM_THREADS=1``). Runs live in ``--runs-dir`` (default
``~/.cache/flowkit-runs/fit_schedule``); a finished run (its ``metrics.json``) is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from flowkit.atomic import write_json, write_text

RESULTS = Path(__file__).parent / "results"
SCHEDULES = ("constant", "plateau", "cosine")
POWER_ROWS = 30_000
# name: (fit arguments, seeds)
CASES = {
    "digits, bernoulli": (["--data", "digits"], (0, 1, 2)),
    "digits, categorical": (["--data", "digits", "--model", "categorical"], (0, 1, 2)),
    f"POWER {POWER_ROWS // 1000}k rows, maf": (["--data", "{power}"], (0, 1)),
}


def power_sample(runs: Path) -> Path:
    """POWER's rows (train, valid and test joined), ``POWER_ROWS`` of them drawn with seed 0, as ``.npy``."""
    path = runs / f"power-{POWER_ROWS}.npy"
    if not path.is_file():
        from flowkit.data import load_power

        splits = load_power(seed=0)
        rows = np.concatenate([splits.train.numpy(), splits.valid.numpy(), splits.test.numpy()])
        pick = np.random.default_rng(0).permutation(len(rows))[:POWER_ROWS]
        runs.mkdir(parents=True, exist_ok=True)
        np.save(path, rows[pick])
    return path


def run_name(case: str, schedule: str, seed: int) -> str:
    """The run's folder: the case's first word and its model, e.g. ``digits-bernoulli-plateau-s0``."""
    return f"{case.split(',')[0].split()[0].lower()}-{case.split(', ')[1]}-{schedule}-s{seed}"


def train(runs: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for case, (arguments, seeds) in CASES.items():
        arguments = [a.format(power=power_sample(runs)) if a == "{power}" else a for a in arguments]
        for seed in seeds:
            for schedule in SCHEDULES:
                out = runs / run_name(case, schedule, seed)
                if (out / "metrics.json").is_file():
                    continue
                command = [sys.executable, "-m", "flowkit", "fit", *arguments, "--out", str(out),
                           "--lr-schedule", schedule, "--seed", str(seed), "--overwrite"]
                print(" ".join(command[1:]), flush=True)
                subprocess.run(command, env=env, check=True)


def collect(runs: Path) -> dict:
    cases = {}
    for case, (_, seeds) in CASES.items():
        rows = {}
        for schedule in SCHEDULES:
            metrics = [runs / run_name(case, schedule, seed) / "metrics.json" for seed in seeds]
            if not all(path.is_file() for path in metrics):
                continue
            found = [json.loads(path.read_text()) for path in metrics]
            rows[schedule] = dict(
                test_nll=[m["test_nll"] for m in found], test_nll_se=[m["test_nll_se"] for m in found],
                epochs=[m["epochs_run"] for m in found], best_epoch=[m["best_epoch"] for m in found],
                seconds=[m["train_seconds"] for m in found])
        cases[case] = dict(seeds=list(seeds), schedules=rows)
    return {"command": "python experiments/fit_schedule.py", "cases": cases}


def versus_constant(found: dict, schedule: str) -> list[float]:
    """A case's test NLL under ``schedule`` minus under ``constant``, seed by seed (empty if either is missing)."""
    runs = found["schedules"]
    if schedule not in runs or "constant" not in runs:
        return []
    return [a - b for a, b in zip(runs[schedule]["test_nll"], runs["constant"]["test_nll"])]


def table(results: dict) -> str:
    lines = ["# `flowkit fit`'s learning-rate schedule, measured", "",
             "Test NLL (nats, lower is better) per seed, with its mean; the difference from `constant` seed by "
             "seed; epochs run (best epoch) and training time per run. Every other option at the command's default.",
             "", "| data, model | schedule | test NLL per seed | mean | vs constant, per seed | epochs (best) "
             "| time per run |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for case, found in results["cases"].items():
        for schedule, row in found["schedules"].items():
            nll = row["test_nll"]
            diff = "" if schedule == "constant" else ", ".join(f"{d:+.3f}" for d in versus_constant(found, schedule))
            epochs = ", ".join(f"{e} ({b})" for e, b in zip(row["epochs"], row["best_epoch"]))
            lines.append(f"| {case} | {schedule} | {', '.join(f'{v:.3f}' for v in nll)} | "
                         f"{statistics.fmean(nll):.3f} | {diff} | {epochs} | "
                         f"{statistics.median(row['seconds']) / 60:.1f} min |")
    lines += [""]
    for schedule in SCHEDULES[1:]:
        diffs = [d for found in results["cases"].values() for d in versus_constant(found, schedule)]
        if diffs:
            same = sum(abs(d) <= 5e-4 for d in diffs)
            lines.append(f"- `{schedule}` against `constant`, over {len(diffs)} paired runs: better in "
                         f"{sum(d < -5e-4 for d in diffs)}, within 0.0005 nats in {same}, worse in "
                         f"{sum(d > 5e-4 for d in diffs)}; largest change {min(diffs):+.3f} / {max(diffs):+.3f} nats.")
    lines += ["", f"One thread per run. Command: `{results['command']}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default=str(Path.home() / ".cache" / "flowkit-runs" / "fit_schedule"))
    parser.add_argument("--report", action="store_true", help="only rewrite the results files")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    if not args.report:
        train(runs)
    results = collect(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fit_schedule.json", results)
    write_text(out / "fit_schedule.md", table(results))
    print(table(results))


if __name__ == "__main__":
    main()
