"""The MAF paper's Table 1 on POWER (Papamakarios et al., 2017): test log-likelihood, nats,
higher is better. Published: MADE -3.08, MADE MoG 0.40, MAF(5) 0.14, MAF(10) 0.24, MAF MoG(5) 0.30;
the autoregressive RQ-NSF of Durkan et al. (2019) 0.66.

Every model has 2 hidden layers of 100 units, as in the paper; the MAFs have batch norm between
layers; MADE MoG and the MAF MoG base have 10 components; the spline MAF has 5 layers of 8 bins.
Writes experiments/results/maf_power.json and maf_power.md.

    python experiments/maf_power.py                             # reduced: 3 epochs, batch 512, ~10 min
    python experiments/maf_power.py --epochs 1000 --patience 30 --batch-size 100   # the paper's protocol
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import flowkit
from flowkit.data import load_power
from flowkit.train import evaluate, fit

PUBLISHED = {"MADE": -3.08, "MADE MoG": 0.40, "MAF(5)": 0.14, "MAF(10)": 0.24, "MAF MoG(5)": 0.30,
             "spline MAF(5), RQ": 0.66}


def models() -> dict:
    hidden = [100, 100]
    return {
        "MADE": lambda: flowkit.MADEMoG(6, 1, hidden, seed=0),
        "MADE MoG": lambda: flowkit.MADEMoG(6, 10, hidden, seed=0),
        "MAF(5)": lambda: flowkit.MAF(6, 5, hidden, batch_norm=True, seed=0),
        "MAF(10)": lambda: flowkit.MAF(6, 10, hidden, batch_norm=True, seed=0),
        "MAF MoG(5)": lambda: flowkit.MAF(6, 5, hidden, batch_norm=True, base=flowkit.MADEMoG(6, 10, hidden, seed=99), seed=0),
        "spline MAF(5), RQ": lambda: flowkit.MAF(6, 5, hidden, transformer="spline", bins=8, bound=4.0, seed=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    splits = load_power(seed=0)
    reduced = args.epochs == 3 and args.batch_size == 512
    command = "python experiments/maf_power.py" + ("" if reduced else
                                                   f" --epochs {args.epochs} --patience {args.patience} --batch-size {args.batch_size}")
    results = {"command": command, "epochs": args.epochs, "batch_size": args.batch_size,
               "sizes": [len(part) for part in splits], "runs": {}}
    for name, build in models().items():
        torch.manual_seed(0)
        model = build()
        start = time.perf_counter()
        history = fit(model, splits.train, splits.valid, epochs=args.epochs, patience=args.patience,
                      batch_size=args.batch_size, lr=1e-3, seed=0)
        seconds = time.perf_counter() - start
        nll, se = evaluate(model, splits.test, batch_size=10000)
        results["runs"][name] = {"test_log_likelihood": -nll, "se": se, "epochs": len(history.train_nll),
                                 "seconds": round(seconds)}
        print(name, json.dumps(results["runs"][name]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "maf_power.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| model | published | ours (± s.e.) | epochs | wall time |", "| --- | --- | --- | --- | --- |"]
    for name, r in results["runs"].items():
        lines.append(f"| {name} | {PUBLISHED[name]:.2f} | {r['test_log_likelihood']:.2f} ± {r['se']:.2f} | "
                     f"{r['epochs']} | {r['seconds']} s |")
    table = "\n".join(lines) + f"\n\nTest set: {results['sizes'][2]:,} points. Command: `{command}`.\n"
    (out / "maf_power.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
