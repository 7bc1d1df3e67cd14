"""The argument parser of the ``flowkit`` command: one sub-parser per command, its choices and help
texts read from the registries of :mod:`flowkit.cli.registry`."""

from __future__ import annotations

import argparse
from itertools import takewhile

from flowkit.cli.errors import Parser
from flowkit.cli.registry import (
    AUTOREGRESSIVE,
    DATA_SETS,
    DEFAULT_MODEL,
    DISCRETE_MODELS,
    FILE_SUFFIXES,
    FLOWS,
    KINDS,
    MODEL_SPECS,
    MODELS,
    english,
    fetchable,
    model_names,
)
from flowkit.train import OPTIMIZERS, PRECISIONS, SCHEDULES

__all__ = ["build_parser"]

FORMATTER = argparse.ArgumentDefaultsHelpFormatter
RUN_HELP = "a run directory written by flowkit fit"
# how the --model help names the data a default model is for
KIND_PHRASES = {"binary": "binary data", "categorical": "categories", "continuous": "continuous data"}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``flowkit COMMAND ...``; its errors are one ``flowkit: error:`` line, exit status 2."""
    parser = Parser(prog="flowkit", description="Density estimation with masked autoregressive networks (MADE) "
                    "and the flows built on them (MAF, IAF, spline flows).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fit = commands.add_parser(
        "fit", formatter_class=FORMATTER,
        help="train a model, report validation and test NLL, write the run directory",
        description="Train a density with early stopping on validation NLL; print validation and test NLL in nats "
        "(and bits per dimension for images); write config.json, model.pt, checkpoint.pt, metrics.jsonl, "
        "metrics.json, curves.png and figures (samples.png, completions.png for images; density.png, "
        "samples.png for 2-D data) to --out.",
    )
    _add_data_and_model(fit)
    _add_architecture(fit)
    _add_training(fit)
    _add_eval(commands)
    _add_sample(commands)
    _add_complete(commands)
    _add_data(commands)
    for name in ("fit", "eval", "sample", "complete"):
        commands.choices[name].add_argument(
            "--threads", type=int, default=None, metavar="N",
            help="CPU threads torch may use (default: torch's, one per core). On a machine busy with other work, "
            "fewer threads than free cores avoid OpenMP's waits: e.g. --threads 1 beside another run")
    return parser


# ---------------------------------------------------------------- help texts from the registries


def data_help() -> str:
    """The help of ``fit --data``: the data sets, files, and the data sets' notes."""
    notes = "; ".join(dict.fromkeys(data.note for data in DATA_SETS.values() if data.note))
    return (f"a data set ({', '.join(DATA_SETS)}) or a {'/'.join(FILE_SUFFIXES)} file of shape (N, D), whose kind "
            f"({', '.join(KINDS)}) is inferred and which is split 80/10/10. {notes}")


def model_help() -> str:
    """The help of ``fit --model``: every model, the data the last ones need, the defaults."""
    listed = ", ".join(f"{name} {spec.blurb}".strip() for name, spec in MODEL_SPECS.items())
    last = len(list(takewhile(lambda spec: spec.needs == ("continuous",), reversed(MODEL_SPECS.values()))))
    defaults = ", ".join(f"{name} for {KIND_PHRASES[kind]}" for kind, name in DEFAULT_MODEL.items())
    return f"{listed}; the last {NUMBERS[last]} need continuous data. Default: {defaults}"


def _default_widths() -> dict[tuple[int, ...], list[str]]:
    """The models by their default hidden widths."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, spec in MODEL_SPECS.items():
        groups.setdefault(spec.hidden, []).append(name)
    return groups


def hidden_help() -> str:
    """The help of ``fit --hidden``, with each model's default widths."""
    defaults = ", ".join(f"{' '.join(map(str, widths))} for {model_names(names)}"
                         for widths, names in _default_widths().items())
    return f"hidden layer widths of the MADE (of each flow layer); default {defaults}"


# ---------------------------------------------------------------- fit


def _add_data_and_model(fit: argparse.ArgumentParser) -> None:
    fit.add_argument("--data", default="digits", metavar="NAME_OR_PATH", help=data_help())
    fit.add_argument("--model", choices=MODELS, default=None, help=model_help())
    fit.add_argument("--out", default="runs/digits",
                     help="run directory to write: a new or empty directory, or a run with --resume or --overwrite")


def _add_architecture(fit: argparse.ArgumentParser) -> None:
    masked = ", ".join(AUTOREGRESSIVE)
    fit.add_argument("--hidden", type=int, nargs="+", default=None, metavar="WIDTH", help=hidden_help())
    fit.add_argument("--masks", type=int, default=1,
                     help=f"mask sets for connectivity-agnostic training ({masked}); the test NLL is also reported "
                     "for their ensemble")
    fit.add_argument("--order-agnostic", action="store_true",
                     help="give every mask set after the first its own random ordering (with --fresh-masks: "
                     "every mask key)")
    fit.add_argument("--fresh-masks", action="store_true",
                     help="draw a new mask for every minibatch from a mask key (the step), none stored, as in the "
                     "MADE paper; --masks R then scores the validation and test data with the ensemble of mask keys "
                     f"0..R-1 ({masked})")
    first_widths = english([str(widths[0]) for widths in _default_widths()], "or")
    fit.add_argument("--residual-blocks", type=int, default=0, metavar="K",
                     help="residual blocks after the first hidden layer of every MADE (ResMADE); needs one --hidden "
                     f"width (default {first_widths})")
    fit.add_argument("--dropout", type=float, default=0.0, metavar="P",
                     help="probability of dropping a hidden activation of every MADE in training, in [0, 1)")
    fit.add_argument("--linear", choices=("lu", "none"), default=None,
                     help=f"lu: a learned LU-decomposed linear map between the layers of {english(FLOWS)}; none: "
                     "without it; default lu for spline (it lets the spline reach the tails beyond its bound: on "
                     "POWER at equal steps, test log-likelihood 0.32 with it, -0.45 without; "
                     "experiments/power_spline_recipe.py), none for the others")
    fit.add_argument("--bound", type=float, default=None, metavar="B",
                     help="the spline acts on [-B, B] and is the identity outside (spline; default: the library's, 3)")
    fit.add_argument("--direct", action=argparse.BooleanOptionalAction, default=None,
                     help=f"the direct input-to-output connection of the MADE; default on for "
                     f"{english(DISCRETE_MODELS)} (the MADE paper's MNIST recipe: 1x500 on binarized MNIST reaches a "
                     "validation NLL of 93.7 after 13 epochs with it, 104.2 without), off for the others")
    fit.add_argument("--layers", type=int, default=5, help=f"autoregressive layers of {english(FLOWS)}")
    fit.add_argument("--components", type=int, default=10, help="mixture components per conditional of made-mog")
    fit.add_argument("--bins", type=int, default=8, help="bins of each spline (spline)")


def _add_training(fit: argparse.ArgumentParser) -> None:
    fit.add_argument("--epochs", type=int, default=300, help="maximum number of epochs")
    fit.add_argument("--patience", type=int, default=30, help="epochs without validation improvement before stopping")
    fit.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    fit.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    fit.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                     help="adam (--weight-decay is an L2 penalty), adamw (decoupled weight decay) or adagrad (the "
                     "MADE authors' optimiser, used with --lr 0.01; --weight-decay is an L2 penalty)")
    fit.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    fit.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                     help="learning rate schedule: plateau (halved after patience/2 epochs without a better "
                     "validation NLL; the default, and with --resume the run's own), constant, or cosine (annealed "
                     "to zero over --epochs)")
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
    fit.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                     help="precision of the training forward passes: bf16 or fp16 run them under autocast (fp16 with "
                     "a gradient scaler), log-probabilities and log-determinants stay float32")
    fit.add_argument("--progress", action="store_true", help="show a progress bar")


# ---------------------------------------------------------------- eval, sample, complete, data


def _add_eval(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval", formatter_class=FORMATTER, help="score a fitted run on its test or validation data",
        description="Rebuild the model of a run from config.json and model.pt and print its NLL in nats "
        "± standard error (and bits per dimension for images).",
    )
    evaluate.add_argument("--run", required=True, help=RUN_HELP)
    evaluate.add_argument("--ensemble", type=int, default=None, metavar="R",
                          help="score the ensemble of the first R mask sets (needs a run with --masks >= R); for a "
                          "--fresh-masks run, of the mask keys 0..R-1 (any R)")
    evaluate.add_argument("--split", choices=("test", "valid"), default="test", help="the data to score")


def _add_sample(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample", formatter_class=FORMATTER, help="draw samples from a fitted run",
        description="Draw N samples from the model of a run, write them to a .npy file and, for images and "
        "2-D data, a figure beside it (same name, .png).",
    )
    sample.add_argument("--run", required=True, help=RUN_HELP)
    sample.add_argument("-n", type=int, default=100, help="number of samples")
    sample.add_argument("--out", default=None, metavar="FILE",
                        help="the .npy file to write (default RUN/sample-N-seedS.npy; never one of the fit's files)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampling")


def _add_complete(commands: argparse._SubParsersAction) -> None:
    complete = commands.add_parser(
        "complete", formatter_class=FORMATTER, help="complete half-observed test examples",
        description="Complete the first n test examples with the top half (the first half of the features) "
        "observed, drawing the rest from the model; write RUN/complete-NxS-seedK.npy (n, samples, D) and, for "
        "images, a figure beside it (.png); the fit's own completions.png stays. Needs an autoregressive density "
        f"({', '.join(AUTOREGRESSIVE)}).",
    )
    complete.add_argument("--run", required=True, help=RUN_HELP)
    complete.add_argument("-n", type=int, default=10, help="number of test examples")
    complete.add_argument("--samples", type=int, default=8, help="completions per example")
    complete.add_argument("--seed", type=int, default=0, help="seed of the completions")


def _add_data(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="list or fetch data sets",
                               description="List the data sets, or fetch one into the cache.")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="names, kinds, shapes and whether cached",
                       description="Print every data set with its kind, shape and whether it is available offline.")
    names = english(fetchable(), "or")
    fetch = actions.add_parser("fetch", help="fetch a data set into the cache",
                               description=f"Fetch {names} into the cache ($FLOWKIT_DATA or ~/.cache/flowkit) and "
                               "print the path.")
    fetch.add_argument("name", help=names)
