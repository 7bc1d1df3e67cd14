"""MADE on binarized MNIST: does annealing the learning rate restore Figure 2's trend?

Under Adam at a constant lr 1e-3, our 1 x 500 MADE ensembles stop improving after two mask sets
(``made_mnist.py``: 93.15 with one mask over a random ordering, 92.12 with 2, then 92.33, 93.03,
93.85 and 95.11 with 4 to 32), and a member of the many-mask models sits far above the one-mask
model (103.40 for a member of the 32-mask model). One explanation would be optimisation noise: every
minibatch switches the mask set, and a constant rate leaves the shared weights jittering between
what each set wants. This probe takes the best checkpoint of finished ``made_mnist.py`` runs and
trains each further with the rate annealed from ``--lr`` to zero (cosine) over ``--epochs`` epochs,
the same minibatch order for every run (seed 1), keeping the best validation epoch; it scores the
ensemble of the run's mask sets (the one mask for ``1x500-m1-random``) on validation and test
before and after. If the noise explained the trend, the many-mask runs would gain far more than
the one-mask run.

Needs the runs' folders from ``made_mnist.py`` (``--runs-dir``, same machine); writes
``experiments/results/made_mnist_anneal.{json,md}`` and keeps each finished probe's figures in
``RUNS_DIR/NAME-anneal/result.json`` so that a second call only reports.

    python experiments/made_mnist_anneal.py                       # 1x500-m1-random, -m16, -m32
    python experiments/made_mnist_anneal.py --only 1x500-m16 --epochs 12 --lr 3e-4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import flowkit
from flowkit.atomic import write_json, write_text
from flowkit.data import binarized_mnist
from flowkit.train import evaluate, fit

sys.path.insert(0, str(Path(__file__).parent))
from made_mnist import OPTIONS, RUNS, build  # noqa: E402
from runs import markdown_table  # noqa: E402

warnings.filterwarnings("ignore", category=flowkit.ConnectivityWarning)
RESULTS = Path(__file__).parent / "results"
DEFAULT = ("1x500-m1-random", "1x500-m16", "1x500-m32")


def scores(model, splits, masks: int) -> dict[str, float]:
    """Validation and test NLL (nats) of the ensemble of the model's mask sets (of its one mask)."""
    ensemble = masks if masks > 1 else None
    valid, _ = evaluate(model, splits.valid, ensemble=ensemble)
    test, test_se = evaluate(model, splits.test, ensemble=ensemble)
    return {"valid_nll": valid, "test_nll": test, "test_nll_se": test_se}


def probe(name: str, runs_dir: Path, splits, epochs: int, lr: float) -> dict:
    """Anneals one finished run from its best checkpoint; returns (and stores) its figures."""
    done = runs_dir / f"{name}-anneal" / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    _, hidden, masks, order_agnostic = next(run for run in RUNS if run[0] == name)
    checkpoint = runs_dir / name / "checkpoint.pt"
    if not checkpoint.exists():
        raise SystemExit(f"{checkpoint} not found: train it first (python experiments/made_mnist.py --only {name})")
    model = build(hidden, masks, order_agnostic, **OPTIONS.get(name, {}))
    state = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(state["best_state"])
    model.eval()
    row = {"masks": masks, "epochs": epochs, "lr": lr, "before": scores(model, splits, masks)}
    began = time.perf_counter()
    history = fit(model, splits.train, splits.valid, epochs=epochs, lr=lr, lr_schedule="cosine", patience=epochs,
                  batch_size=100, seed=1, ensemble=masks if masks > 1 else None)
    row["seconds"] = round(time.perf_counter() - began)
    row["best_epoch"], row["valid_curve"] = history.best_epoch + 1, history.valid_nll
    row["after"] = scores(model, splits, masks)
    write_json(done, row)
    return row


def table(results: dict) -> str:
    rows = [[name, str(r["masks"]), f"{r['before']['valid_nll']:.2f}", f"{r['after']['valid_nll']:.2f}",
             f"{r['before']['test_nll']:.2f} ± {r['before']['test_nll_se']:.2f}",
             f"{r['after']['test_nll']:.2f} ± {r['after']['test_nll_se']:.2f}",
             f"{r['before']['test_nll'] - r['after']['test_nll']:.2f}", f"{r['seconds'] / 60:.0f} min"]
            for name, r in results["runs"].items()]
    header = ["run", "masks", "valid NLL before", "valid NLL after", "test NLL before", "test NLL after", "gain",
              "time"]
    settings = next(iter(results["runs"].values()), {})
    return ("# MADE 1 x 500 on binarized MNIST: annealing the finished runs\n\n"
            f"Each run's best checkpoint trained {settings.get('epochs')} epochs more under Adam with the rate "
            f"annealed from {settings.get('lr')} to zero (cosine), the best validation epoch kept; NLL in nats of "
            "the ensemble of the run's mask sets (one mask for 1x500-m1-random), lower is better.\n\n"
            + markdown_table(header, rows) + f"\n\nCommand: `{results['command']}` (one thread).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default=str(Path.home() / ".cache" / "flowkit-runs" / "made_mnist"))
    parser.add_argument("--only", nargs="+", default=list(DEFAULT), help="finished made_mnist.py runs to anneal")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-4, help="the rate the cosine schedule starts from")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = binarized_mnist(seed=0)
    results = {"command": "python experiments/made_mnist_anneal.py", "runs": {}}
    for name in args.only:
        results["runs"][name] = probe(name, Path(args.runs_dir), splits, args.epochs, args.lr)
        print(name, json.dumps({k: results["runs"][name][k] for k in ("before", "after")}), flush=True)
    out = Path(args.out)
    write_json(out / "made_mnist_anneal.json", results)
    write_text(out / "made_mnist_anneal.md", table(results))


if __name__ == "__main__":
    main()
