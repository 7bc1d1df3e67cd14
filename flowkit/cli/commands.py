"""``flowkit eval``, ``flowkit sample``, ``flowkit complete`` and ``flowkit data``: the commands that use a
fitted run or the data sets.

They load runs through ``flowkit.cli.load_run``, looked up when they run, so that replacing that
name (as a test does) reaches every command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import flowkit.cli
from flowkit.atomic import save_npy
from flowkit.cli.errors import CommandError
from flowkit.cli.registry import AUTOREGRESSIVE, DATA_SETS, FILE_SUFFIXES, english, fetchable, load_data
from flowkit.cli.runs import RUN_FILES, _bits_per_dim, _complete, _read_config, _sample

__all__ = ["run_complete", "run_data", "run_eval", "run_sample"]


def run_eval(args: argparse.Namespace) -> str:
    """Runs ``flowkit eval``: the NLL of the run's model on its test or validation data."""
    from flowkit.train import evaluate

    model, config = flowkit.cli.load_run(args.run)
    if args.ensemble is not None:
        if config["model"] not in AUTOREGRESSIVE:
            raise CommandError(f"--ensemble needs mask sets, which a {config['model']} flow has none of")
        if config["fresh_masks"] and args.ensemble < 1:
            raise CommandError(f"--ensemble must be at least 1 (mask keys 0..R-1), got {args.ensemble}")
        if not config["fresh_masks"] and not 1 <= args.ensemble <= config["masks"]:
            raise CommandError(f"--ensemble must be in 1..{config['masks']} (the run's mask sets), got {args.ensemble}")
    splits, _, _ = load_data(config["data"], config["model"])
    data = getattr(splits, args.split)
    if config["fresh_masks"] and args.ensemble is not None:
        nll, se = evaluate(model, data, keys=args.ensemble)
    else:
        nll, se = evaluate(model, data, ensemble=args.ensemble)
    members = "mask keys" if config["fresh_masks"] else "mask sets"
    what = "" if args.ensemble is None else f" (ensemble of {args.ensemble} {members})"
    line = f"{args.split} NLL {nll:.4f} ± {se:.4f} nats{what}"
    bits = _bits_per_dim(nll, config)
    return line + ("" if bits is None else f", {bits:.4f} bits/dim")


def _drawn_path(run: Path, given: str | None, default: str, option: str) -> Path:
    """Where sample or complete writes its ``.npy`` (its figure goes beside it, ``.png``): never onto a
    file of the fit."""
    out = Path(given) if given else run / default
    if out.suffix != ".npy":
        raise CommandError(f"expected {option} to end in .npy, got {out}")
    for path in (out, out.with_suffix(".png")):
        if path.name in RUN_FILES and path.parent.resolve() == run.resolve():
            raise CommandError(f"{option} {out} would overwrite the fit's {path.name}; choose another name")
    if out.is_dir():
        raise CommandError(f"{option} {out} is a directory")
    return out


def run_sample(args: argparse.Namespace) -> str:
    """Runs ``flowkit sample``: draws samples from the run's model into a ``.npy`` file (and a figure)."""
    from flowkit.plot import save_image_grid, save_scatter

    if args.n < 1:
        raise CommandError(f"-n must be at least 1, got {args.n}")
    run = Path(args.run)
    model, config = flowkit.cli.load_run(args.run)
    out = _drawn_path(run, args.out, f"sample-{args.n}-seed{args.seed}.npy", "--out")
    samples = _sample(model, args.n, args.seed, torch.device("cpu"))
    save_npy(out, samples.numpy())
    written = [str(out)]
    figure = out.with_suffix(".png")
    if config.get("image_shape"):
        save_image_grid(samples.clamp(0, config["vmax"]), figure, tuple(config["image_shape"]),
                        title="samples", vmax=config["vmax"])
        written.append(str(figure))
    elif config["features"] == 2:
        save_scatter(samples, figure, title=f"{config['model']} samples")
        written.append(str(figure))
    return f"wrote {args.n} samples of {config['features']} features to " + " and ".join(written)


def run_complete(args: argparse.Namespace) -> str:
    """Runs ``flowkit complete``: completes half-observed test examples with the run's autoregressive model."""
    from flowkit.plot import save_completions

    if args.n < 1 or args.samples < 1:
        raise CommandError(f"-n and --samples must be at least 1, got {args.n} and {args.samples}")
    run = Path(args.run)
    config = _read_config(run)
    if config["model"] not in AUTOREGRESSIVE:
        raise CommandError(f"completion needs an autoregressive density ({', '.join(AUTOREGRESSIVE)}); "
                           f"{run} holds a {config['model']} flow")
    model, config = flowkit.cli.load_run(args.run)
    out = _drawn_path(run, None, f"complete-{args.n}x{args.samples}-seed{args.seed}.npy", "the completions")
    splits, _, _ = load_data(config["data"], config["model"])
    originals = splits.test[: args.n]
    observed, completions = _complete(model, originals, args.samples, args.seed, torch.device("cpu"))
    save_npy(out, completions.numpy())
    written = [str(out)]
    if config.get("image_shape"):
        save_completions(originals, observed, completions, out.with_suffix(".png"), tuple(config["image_shape"]),
                         vmax=config["vmax"])
        written.append(str(out.with_suffix(".png")))
    return (f"completed {len(originals)} test examples ({args.samples} each, first {originals.shape[1] // 2} of "
            f"{originals.shape[1]} features observed): wrote " + " and ".join(written))


def run_data(args: argparse.Namespace) -> str:
    """Runs ``flowkit data list`` or ``flowkit data fetch NAME``."""
    return list_data() if args.action == "list" else fetch_data(args.name)


def list_data() -> str:
    """The table of ``flowkit data list``: every data set's name, kind, shape and availability."""
    rows = [data.listing() for data in DATA_SETS.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{n:<{widths[0]}}  {k:<{widths[1]}}  {s:<{widths[2]}}  {c}" for n, k, s, c in rows]
    lines.append(f"or a {'/'.join(FILE_SUFFIXES)} file of shape (N, D): kind inferred, split 80/10/10")
    return "\n".join(lines)


def fetch_data(name: str) -> str:
    """Fetches data set ``name`` into the cache; the line ``flowkit data fetch`` prints."""
    data = DATA_SETS.get(name)
    if data is None:
        raise CommandError(f"unknown data set {name!r}: expected {english(fetchable(), 'or')}")
    if data.source is None:
        return f"{name}: nothing to fetch ({data.origin})"
    return f"{data.source.name}: {data.source.fetch()}"
