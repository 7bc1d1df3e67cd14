"""The ``flowkit`` command: fit a density to a data set, then evaluate, sample and complete with it.

One module per part: :mod:`~flowkit.cli.registry` (the data sets and the models), :mod:`~flowkit.cli.parser`
(the options), :mod:`~flowkit.cli.fit` (``flowkit fit``), :mod:`~flowkit.cli.commands` (``eval``, ``sample``,
``complete``, ``data``) and :mod:`~flowkit.cli.runs` (run directories). Their public names are importable
from here, as they were from the single module this package replaces.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from flowkit.cli.commands import _drawn_path as _drawn_path
from flowkit.cli.commands import run_complete, run_data, run_eval, run_sample
from flowkit.cli.errors import CommandError, Parser
from flowkit.cli.fit import _check_fits as _check_fits
from flowkit.cli.fit import _check_model_options as _check_model_options
from flowkit.cli.fit import _check_options as _check_options
from flowkit.cli.fit import check_device, report, run_fit
from flowkit.cli.parser import build_parser
from flowkit.cli.registry import (
    AUTOREGRESSIVE,
    DATA_SETS,
    DEFAULT_MODEL,
    DISCRETE_MODELS,
    FILE_SUFFIXES,
    FLOWS,
    MODEL_SPECS,
    MODELS,
    NAMED_DATA,
    NEEDS,
    TOY_SEEDS,
    TOY_SIZES,
    build_model,
    load_data,
)
from flowkit.cli.runs import ARCHITECTURE, DRAWN_FILES, LATER_ARCHITECTURE, RUN_FILES, load_run, run_state
from flowkit.cli.runs import _bits_per_dim as _bits_per_dim
from flowkit.cli.runs import _complete as _complete
from flowkit.cli.runs import _read_config as _read_config
from flowkit.cli.runs import _remove_run as _remove_run
from flowkit.cli.runs import _sample as _sample
from flowkit.errors import FlowkitError

__all__ = [
    "ARCHITECTURE", "AUTOREGRESSIVE", "DATA_SETS", "DEFAULT_MODEL", "DISCRETE_MODELS", "DRAWN_FILES",
    "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "FILE_SUFFIXES", "FLOWS", "LATER_ARCHITECTURE", "MODELS", "MODEL_SPECS",
    "NAMED_DATA", "NEEDS", "RUN_FILES", "TOY_SEEDS", "TOY_SIZES", "CommandError", "Parser", "build_model",
    "build_parser", "check_device", "load_data", "load_run", "main", "report", "run_complete", "run_data",
    "run_eval", "run_fit", "run_sample", "run_state",
]

EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``flowkit`` command; returns its exit status.

    0 on success; 2 for the user's mistakes (a bad option, data or file, any
    :class:`flowkit.FlowkitError`) and for errors of the operating system (a permission, a full
    disk), printed as one ``flowkit: error:`` line; 130 when interrupted (Ctrl-C), with one line saying
    how to continue. Any other exception is a bug in flowkit and keeps its traceback. ``--threads``
    holds for the command only: the caller's thread count is restored when it returns.
    """
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        _set_threads(getattr(args, "threads", None))
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
    finally:
        if torch.get_num_threads() != threads:  # a caller in the same process keeps its own
            torch.set_num_threads(threads)
    if text:  # ranks other than 0 of a distributed fit report nothing
        print(text)
    return 0


def _set_threads(threads: int | None) -> None:
    """Applies ``--threads`` (``None``: torch's default stays)."""
    if threads is None:
        return
    if threads < 1:
        raise CommandError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
