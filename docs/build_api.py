"""Writes docs/api.md, the API reference, from the docstrings and signatures of flowkit's public names.

    python docs/build_api.py          # rewrite docs/api.md
    python docs/build_api.py --check  # exit 1 if docs/api.md is not what the code says (CI runs this)

Every module below is documented through its ``__all__``: each name with its signature and its
docstring as written (reStructuredText roles and math kept verbatim), classes with their public
methods and properties. Nothing is imported from outside flowkit.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    "flowkit", "flowkit.masks", "flowkit.made", "flowkit.heads", "flowkit.density", "flowkit.flows",
    "flowkit.bases", "flowkit.builders", "flowkit.transforms", "flowkit.engine", "flowkit.train", "flowkit.vi",
    "flowkit.validation", "flowkit.errors",
    "flowkit.checks", "flowkit.derived", "flowkit.embedding", "flowkit.distributed",
    "flowkit.atomic", "flowkit.data", "flowkit.plot", "flowkit.interop.nflows",
]
TARGET = Path(__file__).resolve().parent / "api.md"


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else "(undocumented)"


def _signature(name: str, obj) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _members(cls) -> list[tuple[str, object]]:
    own = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            own.append((name, value))
    return own


def _entry(module: str, name: str, obj) -> list[str]:
    lines = [f"### `{module}.{name}`", ""]
    if inspect.isclass(obj):
        bases = [b.__name__ for b in obj.__bases__ if b is not object]
        lines += [f"`class {_signature(name, obj)}`" + (f" (subclass of {', '.join(bases)})" if bases else ""), "",
                  _doc(obj), ""]
        for member, value in _members(obj):
            if member == "__init__":
                continue
            if isinstance(value, property):
                lines += [f"- **`{member}`** (property): {_doc(value).splitlines()[0]}"]
            else:
                first = _doc(value).splitlines()[0] if value.__doc__ else ""
                lines += [f"- **`{_signature(member, value)}`**" + (f": {first}" if first else "")]
        lines.append("")
    elif callable(obj):
        lines += [f"`{_signature(name, obj)}`", "", _doc(obj), ""]
    elif inspect.ismodule(obj):
        lines += [f"module: see `{obj.__name__}`", ""]
    else:
        lines += [f"`{name} = {obj!r}`", ""]
    return lines


def build() -> str:
    """The text of docs/api.md."""
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/build_api.py`; `tests/test_docs.py` checks that "
             "it matches the code. The guides are [getting-started.md](getting-started.md), [made.md](made.md), "
             "[flows.md](flows.md), [engine.md](engine.md) and [vi.md](vi.md).", ""]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", [])
        lines += [f"## `{module_name}`", "", inspect.cleandoc(module.__doc__ or "").split("\n\n")[0], ""]
        for name in names:
            lines += _entry(module_name, name, getattr(module, name))
    text = "\n".join(lines).rstrip() + "\n"
    return re.sub(r"<(function|class|built-in function) ([\w.]+) at 0x[0-9a-f]+>", r"<\1 \2>", text)  # no addresses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/api.md is up to date")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python docs/build_api.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
