"""Sphinx configuration of flowkit's documentation site: the markdown guides and walkthroughs
(MyST) and an API reference built by autodoc from the docstrings (Google-style sections through
napoleon; reStructuredText roles and math as written).

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs /tmp/flowkit-site     # warnings are errors, as in CI

The reference (``reference.rst``) is written here, at build time, from the modules that
``docs/build_api.py`` lists and from every other module of the package that declares ``__all__``
(the command line's internals excepted): each public name is documented once, where it first
appears, and every later appearance links to it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(DOCS.parent))

import flowkit  # noqa: E402

project = "flowkit"
author = "the flowkit authors"
copyright = "the flowkit authors"
release = version = flowkit.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# api.md is the plain-markdown reference for reading on GitHub; the site has its own, from autodoc
exclude_patterns = ["_build", "api.md", "figures/*.json"]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False  # a method without a docstring shows none, not torch's


def _missing(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


# optional dependencies of optional modules (the sbi extra): documented without being installed
autodoc_mock_imports = [name for name in ("sbi",) if _missing(name)]

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"flowkit {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "Density estimation with MADE in PyTorch", "fixed_sidebar": True}

SKIPPED = ("flowkit.__main__", "flowkit.cli")  # the command line's internals: documented by `flowkit --help`


def _import(name: str):
    """A module of flowkit, its optional dependencies mocked as autodoc mocks them."""
    from sphinx.ext.autodoc.mock import mock

    with mock(autodoc_mock_imports):
        return importlib.import_module(name)


def build_api_modules() -> list[str]:
    """The modules of ``docs/build_api.py`` (and of ``docs/api.md``), in its order."""
    import build_api

    return list(build_api.MODULES)


def _modules() -> list[str]:
    """build_api's modules, then every other module of the package with an ``__all__``."""
    names = build_api_modules()
    for info in pkgutil.walk_packages(flowkit.__path__, "flowkit."):
        if info.name in names or info.name.startswith(SKIPPED):
            continue
        module = _import(info.name)
        if getattr(module, "__all__", None):
            names.append(info.name)
    return names


def _role(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.ismodule(obj):
        return "mod"
    if callable(obj):
        return "func"
    return "data"


def _entry(module: str, name: str, obj) -> list[str]:
    target = f"{module}.{name}"
    if inspect.ismodule(obj):
        return [f"- ``{target}``: the module :mod:`{obj.__name__}`", ""]
    if inspect.isclass(obj):
        return [f".. autoclass:: {target}", "   :members:", "   :show-inheritance:", ""]
    if callable(obj):
        return [f".. autofunction:: {target}", ""]
    # a constant: autodoc would show the docstring of its type (dict, tuple, str) when the module that
    # exports it is not the one that documents it, so the docstring is looked up where it is defined
    value = repr(obj)
    lines = [f".. py:data:: {name}", f"   :module: {module}"]
    lines += [f"   :value: {value}"] if len(value) <= 120 and "\n" not in value else [f"   :type: {type(obj).__name__}"]
    return lines + [""] + [f"   {line}" for line in _attribute_doc(module, name, obj)] + [""]


def _attribute_doc(module: str, name: str, obj) -> list[str]:
    """The docstring written under the assignment of ``name``, in ``module`` or the submodule defining it."""
    from sphinx.pycode import ModuleAnalyzer, PycodeError

    for candidate in [module, *sorted(m for m in sys.modules if m.startswith(module + "."))]:
        if getattr(sys.modules.get(candidate), name, None) is not obj:
            continue
        try:
            found = ModuleAnalyzer.for_module(candidate).find_attr_docs().get(("", name))
        except PycodeError:
            continue
        if found:
            return list(found)
    return ["(no docstring)"]


DOCUMENTED: dict[object, str] = {}  # _key(name, object) -> the full name of its entry, filled by reference()


def reference() -> str:
    """The reStructuredText of the API reference page."""
    lines = ["API reference", "=============", "",
             "Every public name of flowkit (each module's ``__all__``), with its signature and docstring. "
             "A name that several modules export is documented where it first appears below and linked "
             "from the others. The same reference as one markdown file is ``docs/api.md``.", ""]
    documented = DOCUMENTED
    documented.clear()
    for module_name in _modules():
        module = _import(module_name)
        names = list(module.__all__)
        new = [name for name in names if _key(name, getattr(module, name)) not in documented]
        if not new and module_name not in build_api_modules():
            continue  # a submodule whose every name its package exports (and documents)
        title = f"``{module_name}``"
        lines += [title, "-" * len(title), "", f".. automodule:: {module_name}", "   :no-members:", ""]
        seen_here = []
        for name in names:
            obj = getattr(module, name)
            if name not in new:
                seen_here.append(f":{_role(obj)}:`{name} <{documented[_key(name, obj)]}>`")
                continue
            if not inspect.ismodule(obj):
                documented[_key(name, obj)] = f"{module_name}.{name}"
            lines += _entry(module_name, name, obj)
        if seen_here:
            lines += [f"Also exported here, documented above: {', '.join(seen_here)}.", ""]
    return "\n".join(lines) + "\n"


def _key(name: str, obj) -> object:
    """What makes two exports the same object: its identity, or for numbers and strings (whose
    identities are shared by accident) the name and the value."""
    return (name, repr(obj)) if isinstance(obj, (int, float, str, bytes, bool, type(None))) else id(obj)


LINK = re.compile(r"\]\((\.\./[^)\s#]+)\)")


def _outside_links(text: str) -> str:
    """Links from a guide to files of the repository outside ``docs/`` (the site holds ``docs/``
    only) become ``path:`` links: the file is copied into the site as a download. A link to a file
    that does not exist is left alone, for MyST to report."""
    return LINK.sub(lambda m: f"](path:{m[1]})" if (DOCS / m[1]).is_file() else m[0], text)


GUIDES = re.compile(r"(:caption: Guides\n\n)(.*?)(\n```)", re.S)


def _guides_listed(text: str) -> str:
    """The index with its guides toctree holding the guides that exist: a listed page not written
    yet (the sbi guide) is left out, and a page of ``docs/`` that no toctree lists is added at the end."""
    listed = set(re.findall(r"^([\w-]+)$", text, re.M))
    pages = {page.stem for page in DOCS.glob("*.md")} - {"index", "api"}

    def guides(match: re.Match) -> str:
        names = [name for name in match[2].split("\n") if name in pages]
        names += sorted(pages - listed)
        return match[1] + "\n".join(names) + match[3]

    return GUIDES.sub(guides, text, count=1)


def _inject(app, docname: str, source: list[str]) -> None:
    if docname == "reference":
        source[0] = reference()
        return
    if docname == "index":
        source[0] = _guides_listed(source[0])
    if app.env.doc2path(docname).suffix == ".md":
        source[0] = _outside_links(source[0])


def _find(dotted: str):
    """The object a dotted name leads to (a module, then attributes), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _source_module(source: str) -> str | None:
    """The module whose file holds a docstring, from a node's source (``.../flowkit/atomic.py:docstring of ...``)."""
    path = Path(source.split(":docstring of ")[0])
    try:
        parts = path.resolve().relative_to(DOCS.parent).with_suffix("").parts
    except ValueError:
        return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) if path.suffix == ".py" else None


def _resolve(app, env, node, contnode):
    """Links a docstring's reference to a flowkit name that has its entry under another path: the
    module that defines it (``flowkit.data.fetch.cache_dir``, documented as
    ``flowkit.data.cache_dir``) or a name imported into the module of the docstring
    (``:class:`FileProblem``` in ``flowkit.atomic``)."""
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py" or not node.get("reftarget"):
        return None
    if not DOCUMENTED:
        reference()
    target = node["reftarget"].lstrip(".~")
    modules = [node.get("py:module"), _source_module(node.source or "")]
    for dotted in [f"{module}.{target}" for module in modules if module] + [target]:
        obj = _find(dotted) if dotted.startswith("flowkit") else None
        full = None if obj is None else DOCUMENTED.get(_key(dotted.rsplit(".", 1)[-1], obj))
        if full is not None:
            return make_refnode(app.builder, node["refdoc"], "reference", full, contnode, full)
    return None


def setup(app):
    app.connect("source-read", _inject)
    app.connect("missing-reference", _resolve)
