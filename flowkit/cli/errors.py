"""The command line's own error, and the argument parser that reports its errors the same way."""

from __future__ import annotations

import argparse
import sys

from flowkit.errors import FlowkitValueError

__all__ = ["CommandError", "Parser"]


class CommandError(FlowkitValueError):
    """A bad request on the command line: printed, like every :class:`flowkit.FlowkitError`, as one
    ``flowkit: error:`` line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``flowkit: error: ...``, and exit status 2."""

    def error(self, message: str):
        print(f"flowkit: error: {message}", file=sys.stderr)
        raise SystemExit(2)
