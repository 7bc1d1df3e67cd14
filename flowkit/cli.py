"""The ``flowkit`` command: ``flowkit fit`` trains a MADE density and writes its figures."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["main"]

DATA = ("digits",)
MODELS = ("bernoulli", "categorical")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowkit", description="Density estimation with masked autoregressive networks (MADE)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit",
        help="train a model, report validation and test NLL, write samples and completions",
        description="Train a MADE density with early stopping on validation NLL; print validation "
        "and test NLL in nats; write model.pt, metrics.json, samples.png and completions.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fit.add_argument("--data", default="digits", choices=DATA,
                     help="data set: the bundled 8x8 digits (binarized for bernoulli, 17 grey levels for categorical)")
    fit.add_argument("--model", default="bernoulli", choices=MODELS, help="the conditional family")
    fit.add_argument("--out", default="runs/digits", help="run directory to write")
    fit.add_argument("--hidden", type=int, nargs="+", default=[500], metavar="WIDTH",
                     help="hidden layer widths")
    fit.add_argument("--masks", type=int, default=1,
                     help="mask sets for connectivity-agnostic training; the test NLL is also reported for their ensemble")
    fit.add_argument("--order-agnostic", action="store_true", help="give every mask set after the first its own random ordering")
    fit.add_argument("--direct", action="store_true", help="add the direct input-to-output connection")
    fit.add_argument("--epochs", type=int, default=300, help="maximum number of epochs")
    fit.add_argument("--patience", type=int, default=30, help="epochs without validation improvement before stopping")
    fit.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    fit.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    fit.add_argument("--seed", type=int, default=0, help="seed of the masks, initial weights, shuffling and sampling")
    fit.add_argument("--progress", action="store_true", help="show a progress bar")
    return parser


def run_fit(args: argparse.Namespace) -> dict:
    from flowkit import BernoulliMADE, CategoricalMADE
    from flowkit.baselines import IndependentBernoulli
    from flowkit.data import digits
    from flowkit.plot import save_completions, save_image_grid
    from flowkit.train import evaluate, fit

    if args.masks < 1:
        raise ValueError(f"--masks must be at least 1, got {args.masks}")
    torch.manual_seed(args.seed)
    options = dict(num_masks=args.masks, order_agnostic=args.order_agnostic, direct=args.direct, seed=args.seed)
    if args.model == "bernoulli":
        splits, vmax = digits("binary"), 1.0
        model = BernoulliMADE(64, args.hidden, **options)
    else:
        splits, vmax = digits("counts"), 16.0
        model = CategoricalMADE(64, 17, args.hidden, **options)
    ensemble = args.masks if args.masks > 1 else None

    start = time.perf_counter()
    history = fit(model, splits.train, splits.valid, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, patience=args.patience, ensemble=ensemble, seed=args.seed, progress=args.progress)
    seconds = time.perf_counter() - start
    model.made.use_mask(0)
    metrics = {
        "data": args.data, "model": args.model, "hidden": args.hidden, "masks": args.masks,
        "order_agnostic": args.order_agnostic, "epochs_run": len(history.train_nll),
        "best_epoch": history.best_epoch + 1, "train_seconds": round(seconds, 2),
        "valid_nll": evaluate(model, splits.valid, ensemble=ensemble)[0],
        "test_nll": evaluate(model, splits.test)[0], "test_nll_se": evaluate(model, splits.test)[1],
    }
    if ensemble:
        metrics["test_nll_ensemble"], metrics["test_nll_ensemble_se"] = evaluate(model, splits.test, ensemble=ensemble)
    if args.model == "bernoulli":
        metrics["test_nll_independent"] = evaluate(IndependentBernoulli(splits.train), splits.test)[0]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    save_image_grid(model.sample(100, generator=generator), out / "samples.png", (8, 8),
                    title="samples", vmax=vmax)
    originals = splits.test[:10]
    observed = torch.zeros_like(originals, dtype=torch.bool)
    observed[:, :32] = True  # the top half; the natural ordering makes these completions exact
    completions = torch.stack([model.complete(originals, observed, generator=generator) for _ in range(8)], 1)
    save_completions(originals, observed, completions, out / "completions.png", (8, 8), vmax=vmax)
    torch.save({"state_dict": model.state_dict(), "args": vars(args)}, out / "model.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def report(metrics: dict, out: str) -> str:
    lines = [
        f"{metrics['model']} MADE on {metrics['data']}: {metrics['epochs_run']} epochs "
        f"(best {metrics['best_epoch']}), {metrics['train_seconds']:.1f} s",
        f"validation NLL  {metrics['valid_nll']:8.3f} nats",
        f"test NLL        {metrics['test_nll']:8.3f} ± {metrics['test_nll_se']:.3f} nats (mask set 0)",
    ]
    if "test_nll_ensemble" in metrics:
        lines.append(f"test NLL        {metrics['test_nll_ensemble']:8.3f} ± {metrics['test_nll_ensemble_se']:.3f}"
                     f" nats (ensemble of {metrics['masks']} mask sets)")
    if "test_nll_independent" in metrics:
        lines.append(f"test NLL        {metrics['test_nll_independent']:8.3f} nats (independent Bernoullis, for reference)")
    lines.append(f"wrote {out}/samples.png, {out}/completions.png, {out}/metrics.json, {out}/model.pt")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run_fit(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"flowkit: error: {error}", file=sys.stderr)
        return 2
    print(report(metrics, args.out))
    return 0
