"""MADE on binarized MNIST: the MADE paper's Table 6 and Figures 2 and 3, and a categorical MADE
on MNIST quantised to K grey levels.

Germain et al. (2015), Table 6, test NLL in nats: MADE 1 hidden layer 88.40 (1 mask), 88.04
(32 masks); 2 hidden layers 89.59 (1 mask), 86.64 (32 masks). Our binarization draws each pixel
once as Bernoulli(intensity) with seed 0, not the fixed binarization of Salakhutdinov & Murray
(2008) the paper used: the numbers are comparable in spirit, not identical data.

Writes experiments/results/made_mnist.json, made_mnist.md, made_mnist_masks.png (Figure 2) and
made_mnist_samples.png (Figure 3: samples beside their nearest training images).

    python experiments/made_mnist.py                          # reduced: 15 epochs per model, ~15 min
    python experiments/made_mnist.py --epochs 1000 --patience 30   # the full protocol (days on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import flowkit  # noqa: E402
from flowkit.data import binarized_mnist, bits_per_dim, load_mnist  # noqa: E402
from flowkit.plot import save_image_grid  # noqa: E402
from flowkit.train import evaluate, fit  # noqa: E402

warnings.filterwarnings("ignore", category=flowkit.ConnectivityWarning)
PUBLISHED = {("1 hidden layer", 1): 88.40, ("1 hidden layer", 32): 88.04,
             ("2 hidden layers", 1): 89.59, ("2 hidden layers", 32): 86.64}


def run(hidden, masks, splits, args):
    torch.manual_seed(0)
    model = flowkit.BernoulliMADE(784, hidden, num_masks=masks, order_agnostic=masks > 1, seed=0)
    start = time.perf_counter()
    history = fit(model, splits.train, splits.valid, epochs=args.epochs, patience=args.patience,
                  batch_size=100, lr=1e-3, seed=0)
    seconds = time.perf_counter() - start
    row = {"hidden": hidden, "masks": masks, "epochs": len(history.train_nll), "seconds": round(seconds),
           "test_nll_one_mask": evaluate(model, splits.test)[0]}
    if masks > 1:
        row["test_nll_ensemble"], row["test_nll_ensemble_se"] = evaluate(model, splits.test, ensemble=masks)
    print(json.dumps(row), flush=True)
    return model, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--levels", type=int, default=4, help="grey levels of the categorical run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = binarized_mnist(seed=0)
    command = "python experiments/made_mnist.py" + ("" if args.epochs == 15 else f" --epochs {args.epochs} --patience {args.patience}")
    results = {"command": command, "epochs": args.epochs, "runs": []}

    models = {}
    for hidden, name in (([500], "1 hidden layer"), ([500, 500], "2 hidden layers")):
        for masks in ((1, 2, 4, 8, 16, 32) if len(hidden) == 1 else (1, 32)):
            model, row = run(hidden, masks, splits, args)
            row["name"] = name
            results["runs"].append(row)
            models[(name, masks)] = model

    # Figure 3: samples of the one-mask, one-layer model beside their nearest training images.
    model = models[("1 hidden layer", 1)]
    samples = model.sample(10, generator=torch.Generator().manual_seed(0))
    nearest = splits.train[torch.cdist(samples, splits.train).argmin(dim=1)]
    save_image_grid(torch.stack([samples, nearest], 1).reshape(20, 784), out / "made_mnist_samples.png", (28, 28),
                    columns=2, title="samples | nearest training image")

    # Figure 2: test NLL against the number of masks (1 hidden layer).
    one_layer = [r for r in results["runs"] if r["name"] == "1 hidden layer"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([r["masks"] for r in one_layer], [r.get("test_nll_ensemble", r["test_nll_one_mask"]) for r in one_layer], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of masks (ensemble at test time)")
    ax.set_ylabel("test NLL, nats")
    ax.set_title(f"MADE 1x500 on binarized MNIST, {args.epochs} epochs", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "made_mnist_masks.png", dpi=110)

    # Categorical MADE on MNIST quantised to K grey levels.
    intensities = load_mnist()
    quantise = lambda x: (x * args.levels).long().clamp(max=args.levels - 1)  # noqa: E731
    train, valid, test = (quantise(part) for part in intensities)
    torch.manual_seed(0)
    categorical = flowkit.CategoricalMADE(784, args.levels, [500], seed=0)
    start = time.perf_counter()
    history = fit(categorical, train, valid, epochs=args.epochs, patience=args.patience, batch_size=100, seed=0)
    nll, se = evaluate(categorical, test)
    results["categorical"] = {"levels": args.levels, "epochs": len(history.train_nll),
                              "seconds": round(time.perf_counter() - start), "test_nll": nll, "test_nll_se": se,
                              "bits_per_dim": bits_per_dim(nll, 784)}
    print(json.dumps(results["categorical"]), flush=True)
    (out / "made_mnist.json").write_text(json.dumps(results, indent=2) + "\n")

    lines = ["| model | masks | published test NLL | ours, one mask set | ours, ensemble | epochs | wall time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        published = PUBLISHED.get((r["name"], r["masks"]))
        cells = [f"MADE {r['name']} (500 units)", str(r["masks"]),
                 "" if published is None else f"{published:.2f}", f"{r['test_nll_one_mask']:.2f}",
                 f"{r['test_nll_ensemble']:.2f}" if "test_nll_ensemble" in r else "",
                 str(r["epochs"]), f"{r['seconds']} s"]
        lines.append("| " + " | ".join(cells) + " |")
    c = results["categorical"]
    table = "\n".join(lines) + (
        f"\n\nCategorical MADE (1x500) on MNIST quantised to {c['levels']} grey levels: test NLL "
        f"{c['test_nll']:.2f} ± {c['test_nll_se']:.2f} nats, {c['bits_per_dim']:.3f} bits/dim "
        f"({c['epochs']} epochs, {c['seconds']} s).\n\nCommand: `{command}`.\n")
    (out / "made_mnist.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
