"""``flowkit fit``: check every option, the device, the data and the run directory, build the model,
and only then write the run directory, train, score and report.

The order is the command's promise: nothing in ``--out`` is created, deleted or written before every
check has passed (:func:`run_fit`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flowkit.atomic import save_torch, write_json
from flowkit.cli.errors import CommandError
from flowkit.cli.registry import (
    AUTOREGRESSIVE,
    DATA_SETS,
    DEFAULT_MODEL,
    DISCRETE_MODELS,
    FLOWS,
    MODEL_SPECS,
    NEEDS,
    build_model,
    english,
)
from flowkit.cli.runs import ARCHITECTURE, _bits_per_dim, _complete, _read_config, _remove_run, _sample, run_state

__all__ = ["check_device", "report", "run_fit"]

TRAINING = ("epochs", "patience", "batch_size", "lr", "optimizer", "weight_decay", "lr_schedule", "clip", "device",
            "compile", "precision")


def run_fit(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Runs ``flowkit fit``; returns the metrics and the lines to print.

    In this order: the options and the device, the data, the state of ``--out`` and, with ``--resume``,
    its checkpoint, then the model; only then is ``--out`` created, its old run removed
    (``--overwrite``) and written. Under ``torchrun`` every rank runs the command and trains its share
    (see :func:`flowkit.train.fit`); only rank 0 writes into ``--out``, and it starts once every rank has
    checked it.
    """
    from flowkit import distributed
    from flowkit.train import fit

    _check_options(args)
    out = Path(args.out)
    saved = _read_config(out) if args.resume and (out / "config.json").is_file() else None  # read once
    args.lr_schedule = _lr_schedule(args, saved)
    distributed.setup(distributed.local_device(args.device or "cpu"))
    splits, info, notes, model_name = _fit_data(args, saved)
    config = _fit_config(args, model_name, info)
    ensemble = args.masks if (args.masks > 1 or args.fresh_masks) and model_name in AUTOREGRESSIVE else None
    options = _training_options(args, ensemble)
    # Everything is checked before anything in --out is deleted or written.
    state = _check_out(args, out, saved, config, splits, options, notes)
    model = build_model(config)
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    main = distributed.is_main()

    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state == "run" and not args.resume:
            _remove_run(out)
        write_json(out / "config.json", config)
    start = time.perf_counter()
    history = fit(model, splits.train, splits.valid, **options, progress=args.progress, compile=args.compile,
                  device=args.device, log=out / "metrics.jsonl", checkpoint=out / "checkpoint.pt", resume=args.resume)
    seconds = time.perf_counter() - start
    if model_name in AUTOREGRESSIVE:
        model.made.use_mask(0)  # with fresh masks, the one mask set holds key 0
    metrics = _score(args, model, model_name, splits, info, config, history, seconds, ensemble)
    if not main:
        return metrics, []
    written = _write_results(args, out, model, model_name, splits, info, config, history, metrics)
    return metrics, notes + [report(metrics, args.out, written)]


# ---------------------------------------------------------------- the checks


def _check_options(args: argparse.Namespace) -> None:
    for option in ("masks", "layers", "components", "bins", "epochs", "patience", "batch_size"):
        value = getattr(args, option)
        least = 0 if option in ("epochs", "patience") else 1
        if value < least:
            raise CommandError(f"--{option.replace('_', '-')} must be at least {least}, got {value}")
    if args.hidden is not None and min(args.hidden) < 1:
        raise CommandError(f"--hidden widths must be at least 1, got {args.hidden}")
    if args.lr <= 0:
        raise CommandError(f"--lr must be positive, got {args.lr}")
    if args.clip is not None and args.clip <= 0:
        raise CommandError(f"--clip must be positive, got {args.clip}")
    if not args.weight_decay >= 0:
        raise CommandError(f"--weight-decay must be at least 0, got {args.weight_decay}")
    if args.residual_blocks < 0:
        raise CommandError(f"--residual-blocks must be at least 0, got {args.residual_blocks}")
    if args.residual_blocks and args.hidden is not None and len(args.hidden) != 1:
        raise CommandError(f"--residual-blocks needs one --hidden width, got {' '.join(map(str, args.hidden))}")
    if not 0 <= args.dropout < 1:
        raise CommandError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.bound is not None and not 0 < args.bound < float("inf"):
        raise CommandError(f"--bound must be positive and finite, got {args.bound}")
    check_device(args.device)


def check_device(name: str | None) -> None:
    """Raises :class:`CommandError` unless ``name`` is a device this machine can train on."""
    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise CommandError(f"unknown --device {name!r}: expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise CommandError(f"--device {name}: CUDA is not available here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                               f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CommandError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise CommandError(f"--device {name}: flowkit trains on cpu, cuda or mps, not {device.type}")


def _check_fits(model: str, name: str, kind: str) -> None:
    if kind not in NEEDS[model]:
        need = " or ".join(NEEDS[model])
        suggestion = DEFAULT_MODEL[kind]
        raise CommandError(f"model {model} needs {need} data, but {name} is {kind}; try --model {suggestion}")


def _check_model_options(args: argparse.Namespace, model: str) -> None:
    if model in FLOWS and (args.masks > 1 or args.order_agnostic or args.fresh_masks):
        raise CommandError(f"--masks, --order-agnostic and --fresh-masks apply to {english(AUTOREGRESSIVE)}, "
                           f"not {model}")
    if args.linear is not None and model not in FLOWS:
        raise CommandError(f"--linear applies to {english(FLOWS)}, not {model}")
    if args.bound is not None and model != "spline":
        raise CommandError(f"--bound applies to spline, not {model}")


def _check_out(args: argparse.Namespace, out: Path, saved: dict[str, Any] | None, config: dict[str, Any],
               splits: Any, options: dict[str, Any], notes: list[str]) -> str:
    """The state of ``--out`` (:func:`run_state`), once it allows this fit; with ``--resume``, also
    checks the saved run (``saved``, its config) and its checkpoint, and may keep the run's ``direct`` and
    ``linear`` in ``config``."""
    from flowkit.train import check_resume

    state = run_state(out)
    if args.resume:
        if state != "run":
            raise CommandError(f"cannot resume: {out} holds no run (no config.json); fit without --resume")
        saved = saved if saved is not None else _read_config(out)  # without config.json: says so
        if args.direct is None:  # a run keeps the connection it was fitted with, whatever today's default
            config["direct"] = saved.get("direct", False)
        if args.linear is None:  # and its linear layers (spline runs before LU became their default had none)
            config["linear"] = saved.get("linear")
        changed = [key for key in ARCHITECTURE if saved.get(key) != config.get(key)]
        if changed:
            details = ", ".join(f"{key} {saved.get(key)!r} -> {config.get(key)!r}" for key in changed)
            raise CommandError(f"cannot resume {out}: the model or data changed ({details})")
        done = check_resume(out / "checkpoint.pt", splits.train, splits.valid, **options)
        if not done:
            notes.append(f"resume: {out} has no finished epoch yet; training starts from epoch 1")
    elif state == "run" and not args.overwrite:
        raise CommandError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                           "or choose another --out")
    elif state == "other":
        raise CommandError(f"--out {out} is not empty and holds no flowkit run; choose a new or empty directory")
    return state


# ---------------------------------------------------------------- the data, the config, the training options


def _fit_data(args: argparse.Namespace, saved: dict[str, Any] | None) -> tuple[Any, dict[str, Any], list[str], str]:
    """The splits and description of ``--data``, the notes to print, and the model (``--model`` or the
    default for the data), checked against the data and the model options; a resumed run (``saved``, its
    config) keeps the way its data was split."""
    from flowkit.cli.commands import load_streaming  # a large .npy file is read from the file as needed

    memmap = None if saved is None else saved.get("split") == "memmap"
    splits, info, message = load_streaming(args.data, args.model, memmap=memmap,
                                           tensor_train=args.model in (None, "bernoulli"))
    notes = [] if message is None else [f"data: {message}"]
    model_name = args.model
    if model_name is None:
        model_name = DEFAULT_MODEL[info["kind"]]
        if args.data != "digits":
            notes.append(f"model: {model_name} (the default for {info['kind']} data)")
    _check_fits(model_name, args.data, info["kind"])
    _check_model_options(args, model_name)
    return splits, info, notes, model_name


def _fit_config(args: argparse.Namespace, model_name: str, info: dict[str, Any]) -> dict[str, Any]:
    """The run's ``config.json``: the architecture, the data's description and the training options."""
    hidden = args.hidden or MODEL_SPECS[model_name].default_hidden(args.residual_blocks)
    data_name = args.data
    if Path(args.data).is_file() and args.data not in DATA_SETS:
        data_name = str(Path(args.data).resolve())
    return {
        "data": data_name, "model": model_name, "hidden": hidden, "masks": args.masks,
        "order_agnostic": args.order_agnostic,
        "direct": model_name in DISCRETE_MODELS if args.direct is None else args.direct, "layers": args.layers,
        "components": args.components, "bins": args.bins, "seed": args.seed, "fresh_masks": args.fresh_masks,
        "residual_blocks": args.residual_blocks, "dropout": args.dropout, "linear": _linear(args, model_name),
        "bound": args.bound,
        **info,
        "training": {key: getattr(args, key) for key in TRAINING},
    }


def _linear(args: argparse.Namespace, model_name: str) -> str | None:
    """The linear layer between the flow's layers: ``--linear``, else LU for spline flows (the tails, see
    ``experiments/results/power_spline_recipe.md``) and none for the others."""
    if args.linear is None:
        return "lu" if model_name == "spline" else None
    return None if args.linear == "none" else args.linear


def _lr_schedule(args: argparse.Namespace, saved: dict[str, Any] | None) -> str:
    """``--lr-schedule``; else, resuming, the run's own (runs fitted before ``plateau`` became the default
    were ``constant``); else ``plateau``. In ``experiments/results/fit_schedule.md`` it is never worse
    than ``constant`` and 0.02 nats better on POWER; ``cosine`` does as well there and 0.01 better on
    digits, but it ties the schedule to ``--epochs``, which ``--resume`` then cannot extend."""
    if args.lr_schedule is not None:
        return args.lr_schedule
    if saved is not None:
        return saved.get("training", {}).get("lr_schedule", "constant")
    return "plateau"


def _training_options(args: argparse.Namespace, ensemble: int | None) -> dict[str, Any]:
    """The options of :func:`flowkit.train.fit` (and :func:`~flowkit.train.check_resume`) from the command line."""
    return dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                weight_decay=args.weight_decay, patience=args.patience, ensemble=ensemble,
                masks="fresh" if args.fresh_masks else "cycle", seed=args.seed, lr_schedule=args.lr_schedule,
                clip=args.clip, precision=args.precision)


# ---------------------------------------------------------------- after training


def _score(args: argparse.Namespace, model: torch.nn.Module, model_name: str, splits: Any, info: dict[str, Any],
           config: dict[str, Any], history: Any, seconds: float, ensemble: int | None) -> dict[str, Any]:
    """The metrics of the trained model: validation and test NLL, of the ensemble too, in bits per dim for images."""
    from flowkit.baselines import IndependentBernoulli
    from flowkit.train import evaluate

    valid_nll, valid_se = evaluate(model, splits.valid)
    test_nll, test_se = evaluate(model, splits.test)
    metrics = {
        "data": args.data, "model": model_name, "kind": info["kind"], "features": info["features"],
        "hidden": config["hidden"], "masks": args.masks, "order_agnostic": args.order_agnostic,
        "fresh_masks": args.fresh_masks, "epochs_run": len(history.train_nll), "best_epoch": history.best_epoch + 1,
        "train_seconds": round(seconds, 2), "valid_nll": valid_nll, "valid_nll_se": valid_se,
        "test_nll": test_nll, "test_nll_se": test_se,
    }
    if ensemble and args.masks > 1:
        scoring = dict(keys=ensemble) if args.fresh_masks else dict(ensemble=ensemble)
        metrics["valid_nll_ensemble"], _ = evaluate(model, splits.valid, **scoring)
        metrics["test_nll_ensemble"], metrics["test_nll_ensemble_se"] = evaluate(model, splits.test, **scoring)
    if model_name == "bernoulli":
        metrics["test_nll_independent"] = evaluate(IndependentBernoulli(splits.train), splits.test)[0]
    for key in [key for key in metrics if key.endswith("_nll") or key.endswith("_nll_ensemble")]:
        bits = _bits_per_dim(metrics[key], config)
        if bits is not None:
            metrics[key.replace("nll", "bpd")] = bits
    return metrics


def _write_results(args: argparse.Namespace, out: Path, model: torch.nn.Module, model_name: str, splits: Any,
                   info: dict[str, Any], config: dict[str, Any], history: Any, metrics: dict[str, Any]) -> list[str]:
    """Writes the figures, model.pt and metrics.json; returns the names of the files the fit wrote."""
    from flowkit.plot import save_curves

    written = [*_write_figures(args, out, model, model_name, splits, info), "metrics.json", "model.pt"]
    save_curves(history.train_nll, history.valid_nll, out / "curves.png", history.best_epoch)
    weights = {key: value.cpu() for key, value in model.state_dict().items()}
    save_torch({"state_dict": weights, "config": config}, out / "model.pt")
    write_json(out / "metrics.json", metrics)
    return written + ["config.json", "checkpoint.pt", "metrics.jsonl", "curves.png"]


def _write_figures(args: argparse.Namespace, out: Path, model: torch.nn.Module, model_name: str, splits: Any,
                   info: dict[str, Any]) -> list[str]:
    """Samples and completions for images, the density and samples for 2-D data; returns the files written."""
    from flowkit.plot import save_completions, save_density_2d, save_image_grid, save_scatter

    device = next(model.parameters()).device
    image_shape = info["image_shape"]
    if image_shape:
        samples = _sample(model, 100, args.seed, device)
        save_image_grid(samples.clamp(0, info["vmax"]), out / "samples.png", tuple(image_shape),
                        title="samples", vmax=info["vmax"])
        if model_name not in AUTOREGRESSIVE:
            return ["samples.png"]
        originals = splits.test[:10]
        observed, completions = _complete(model, originals, 8, args.seed, device)
        save_completions(originals, observed, completions, out / "completions.png", tuple(image_shape),
                         vmax=info["vmax"])
        return ["samples.png", "completions.png"]
    if info["features"] == 2:
        with torch.no_grad():
            save_density_2d(splits.test, lambda z: model.log_prob(z.to(device)).cpu(), out / "density.png")
        save_scatter(_sample(model, 2000, args.seed, device), out / "samples.png", title=f"{model_name} samples")
        return ["density.png", "samples.png"]
    return []


def report(metrics: dict, out: str, written: Sequence[str]) -> str:
    """The lines ``flowkit fit`` prints: the model and data, the NLLs and the files written."""
    family = "MADE" if metrics["model"] in DISCRETE_MODELS else ("" if metrics["model"] in AUTOREGRESSIVE else "flow")
    bits = lambda key: f" ({metrics[key]:.3f} bits/dim)" if key in metrics else ""  # noqa: E731
    fresh = metrics.get("fresh_masks", False)
    single, members = (" (mask key 0)", "mask keys") if fresh else (" (mask set 0)", "mask sets")
    lines = [
        f"{metrics['model']}{' ' + family if family else ''} on {metrics['data']}: {metrics['epochs_run']} epochs "
        f"(best {metrics['best_epoch']}), {metrics['train_seconds']:.1f} s",
        f"validation NLL  {metrics['valid_nll']:8.3f} nats{bits('valid_bpd')}",
        f"test NLL        {metrics['test_nll']:8.3f} ± {metrics['test_nll_se']:.3f} nats"
        f"{single if metrics['model'] in AUTOREGRESSIVE else ''}{bits('test_bpd')}",
    ]
    if "test_nll_ensemble" in metrics:
        lines.append(f"test NLL        {metrics['test_nll_ensemble']:8.3f} ± {metrics['test_nll_ensemble_se']:.3f}"
                     f" nats (ensemble of {metrics['masks']} {members}){bits('test_bpd_ensemble')}")
    if "test_nll_independent" in metrics:
        lines.append(f"test NLL        {metrics['test_nll_independent']:8.3f} nats "
                     "(independent Bernoullis, for reference)")
    lines.append("wrote " + ", ".join(f"{out}/{name}" for name in written[:4]))
    if len(written) > 4:
        lines.append("  and " + ", ".join(f"{out}/{name}" for name in written[4:]))
    return "\n".join(lines)
