"""``flowkit eval``, ``flowkit sample``, ``flowkit complete`` and ``flowkit data``: the commands that use a
fitted run or the data sets.

They load runs through ``flowkit.cli.load_run``, looked up when they run, so that replacing that
name (as a test does) reaches every command.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import flowkit.cli
from flowkit.atomic import save_npy, save_npy_chunks
from flowkit.cli.errors import CommandError
from flowkit.cli.registry import AUTOREGRESSIVE, DATA_SETS, FILE_SUFFIXES, english, fetchable, load_data
from flowkit.cli.runs import RUN_FILES, _bits_per_dim, _complete, _read_config

__all__ = ["MEMMAP_BYTES", "SAMPLE_ROWS", "load_streaming", "memmap_threshold", "run_complete",
           "run_data", "run_eval", "run_sample"]

MEMMAP_BYTES = 128 << 20
"""``.npy`` files of at least this many bytes are read from the file as they are needed
(:class:`flowkit.data.memmap.MemmapDataset`) instead of loaded whole; ``$FLOWKIT_MEMMAP_BYTES`` overrides it."""
SAMPLE_ROWS = 8192
"""Samples drawn, and written, at a time by ``flowkit sample``."""


def memmap_threshold() -> int:
    """The size from which a ``.npy`` file is read as needed: ``$FLOWKIT_MEMMAP_BYTES`` or :data:`MEMMAP_BYTES`."""
    value = os.environ.get("FLOWKIT_MEMMAP_BYTES")
    if value is None:
        return MEMMAP_BYTES
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"expected FLOWKIT_MEMMAP_BYTES to be a number of bytes, got {value!r}") from None


def load_streaming(name: str, model: str | None, *, memmap: bool | None = None, tensor_train: bool = False
                   ) -> tuple[Any, dict[str, Any], str | None]:
    """:func:`~flowkit.cli.registry.load_data`, except that a ``.npy`` file of at least
    :func:`memmap_threshold` bytes (or any ``.npy`` file, with ``memmap=True``; none with ``False``)
    is checked in one streaming pass and split into views read from the file as they are needed
    (:func:`flowkit.data.memmap.split_memmap`, whose rows differ from the in-memory split's). Its
    description then says ``split: "memmap"``, which a run's config keeps, so that ``eval``,
    ``complete`` and ``--resume`` read the same rows.

    With ``tensor_train`` (the fit of a ``bernoulli`` model, whose independent-Bernoulli baseline
    needs the training rows as one tensor) binary files are loaded whole as before. For 2-D data
    the test part is held in memory (the density figure draws it).

    A named data set that can be streamed (its :attr:`~flowkit.cli.registry.DataSet.stream`: POWER)
    follows the same rule on the size of its processed rows (:attr:`~flowkit.cli.registry.DataSet.nbytes`,
    49 MB for POWER: in memory unless ``$FLOWKIT_MEMMAP_BYTES`` is lower, or ``memmap=True``), read
    from one cached ``.npy`` file (for POWER :func:`flowkit.data.load_power` with ``memmap=True``: the
    same rows either way).
    """
    from flowkit.data.memmap import load_memmap, split_memmap

    named = DATA_SETS.get(name)
    if named is not None and named.stream is not None and memmap is not False and \
            (memmap or named.nbytes >= memmap_threshold()):
        splits = named.stream()
        info = dict(named.info(named.kinds[0]), features=splits.train.features, split="memmap")
        return splits, info, f"{name}, read from the file as needed"
    path = Path(name)
    if memmap is None:
        memmap = path.suffix.lower() == ".npy" and path.is_file() and path.stat().st_size >= memmap_threshold()
    if name in DATA_SETS or not memmap or path.suffix.lower() != ".npy" or not path.is_file():
        return load_data(name, model)
    data, kind, message = load_memmap(path)
    categories = None
    if kind == "binary" and model == "categorical":
        data, kind, categories = data.as_codes(), "categorical", 2
    elif kind == "binary" and tensor_train:
        return load_data(name, model)
    elif kind == "categorical":
        categories = int(data.statistics.maximum.max()) + 1
    splits = split_memmap(data)
    if data.features == 2:
        splits = splits._replace(test=splits.test.tensor())
    info = dict(kind=kind, categories=categories, image_shape=None, vmax=None, features=data.features, split="memmap")
    return splits, info, f"{message}, read from the file as needed"


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
    splits, _, _ = load_streaming(config["data"], config["model"], memmap=config.get("split") == "memmap")
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
    first: list[torch.Tensor] = []
    save_npy_chunks(out, _draws(model, args.n, args.seed, first), args.n)
    samples = first[0]  # the figure shows the first SAMPLE_ROWS samples at most
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


def _draws(model: torch.nn.Module, n: int, seed: int, first: list[torch.Tensor]) -> Iterator[np.ndarray]:
    """``n`` samples, :data:`SAMPLE_ROWS` at a time, from one generator seeded with ``seed`` (so that
    up to :data:`SAMPLE_ROWS` samples are those of a single ``model.sample(n)``); the first chunk is
    also put in ``first``."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, SAMPLE_ROWS):
        with torch.no_grad():
            chunk = model.sample(min(SAMPLE_ROWS, n - start), generator=generator).cpu()
        if not first:
            first.append(chunk)
        yield chunk.numpy()


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
    splits, _, _ = load_streaming(config["data"], config["model"], memmap=config.get("split") == "memmap")
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
