"""Held-out NLL of binary MADEs on the bundled 8x8 digits, against independent Bernoullis.

Trains, for several seeds, MADEs with one mask set and connectivity- and order-agnostic MADEs
with R mask sets (scored by one mask set, the one current at the best epoch, and by the ensemble of all R), \
with early stopping on
the validation NLL, and writes ``experiments/results/digits.json`` and ``digits.md``.

    python experiments/digits.py            # about 5 minutes on 2 cores
    python experiments/digits.py --quick    # one seed, fewer epochs, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from flowkit import BernoulliMADE
from flowkit.atomic import write_json, write_text  # noqa: E402
from flowkit.baselines import IndependentBernoulli
from flowkit.data import digits
from flowkit.train import evaluate, fit

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

CONFIGS = [
    ("MADE 1x500, 1 mask", dict(hidden=[500], masks=1)),
    ("MADE 2x500, 1 mask", dict(hidden=[500, 500], masks=1)),
    ("MADE 1x500, 8 masks", dict(hidden=[500], masks=8)),
    ("MADE 1x500, 32 masks", dict(hidden=[500], masks=32)),
]


def run(hidden: list[int], masks: int, seed: int, epochs: int, patience: int, splits) -> dict:
    torch.manual_seed(seed)
    model = BernoulliMADE(64, hidden, num_masks=masks, order_agnostic=masks > 1, seed=seed)
    ensemble = masks if masks > 1 else None
    start = time.perf_counter()
    history = fit(model, splits.train, splits.valid, epochs=epochs, patience=patience, ensemble=ensemble, seed=seed)
    seconds = time.perf_counter() - start
    row = {"seed": seed, "epochs": len(history.train_nll), "seconds": seconds,
           "test_nll_one_mask": evaluate(model, splits.test)[0]}
    if ensemble:
        row["test_nll_ensemble"] = evaluate(model, splits.test, ensemble=ensemble)[0]
    return row


def results_table(results: dict) -> str:
    """The table of ``digits.md``: the independent baseline, then each model's medians over the seeds."""
    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows if key in r]
        if not values:
            return ""
        spread = f" (min {min(values):.2f}, max {max(values):.2f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.2f}{spread}"

    baseline = results["independent_bernoulli"]
    rows = [["independent Bernoullis", f"{baseline['test_nll']:.2f} ± {baseline['test_nll_se']:.2f} (s.e.)", "", "",
             ""]]
    rows += [[name, cell(runs, "test_nll_one_mask"), cell(runs, "test_nll_ensemble"),
              f"{statistics.median(r['epochs'] for r in runs):.0f}",
              f"{statistics.median(r['seconds'] for r in runs):.1f}"]
             for name, runs in results["models"].items()]
    return markdown_table(["model", "test NLL, nats (one mask set: the one current at the best epoch)",
                           "test NLL, nats (ensemble of all mask sets)", "epochs", "seconds per run"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 30
    torch.set_num_threads(2)
    splits = digits("binary")
    independent, independent_se = evaluate(IndependentBernoulli(splits.train), splits.test)
    results = {"command": "python experiments/digits.py" + (" --quick" if args.quick else ""),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "independent_bernoulli": {"test_nll": independent, "test_nll_se": independent_se},
               "models": {}}
    for name, config in CONFIGS:
        rows = [run(config["hidden"], config["masks"], seed, args.epochs, args.patience, splits)
                for seed in range(args.seeds)]
        results["models"][name] = rows
        print(name, json.dumps(rows), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "digits.json", results)
    table = results_table(results)
    note = (f"\nMedian over {args.seeds} seed(s) (min and max beside it); 300 test digits; "
            f"{results['machine']}. Command: `{results['command']}`.\n")
    write_text(out / "digits.md", table + "\n" + note)
    print(table + note)


if __name__ == "__main__":
    main()
