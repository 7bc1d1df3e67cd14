"""The documentation site (Sphinx, docs/conf.py) builds with warnings as errors and holds every public
name; the walkthrough script runs; the package builds into an sdist and a wheel that pass twine check
and install in a fresh virtual environment."""

import importlib
import importlib.util
import inspect
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _conf():
    spec = importlib.util.spec_from_file_location("flowkit_docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def _public_objects(conf):
    """(module, name, object) for every name of every ``__all__`` the site documents."""
    for module_name in conf._modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield module_name, name, getattr(module, name)


def _documented(text, module_name, name):
    """Whether the reference text has an entry (not only a link) for ``module_name.name``."""
    entry = rf"(:: {re.escape(module_name)}\.{name}$|:: {name}\n   :module: {re.escape(module_name)}$)"
    return re.search(entry, text, re.M) is not None


def test_the_reference_names_every_public_name():
    pytest.importorskip("sphinx")
    conf = _conf()
    text = conf.reference()
    exports = list(_public_objects(conf))
    for module_name, name, obj in exports:
        if inspect.ismodule(obj):
            assert f"``{module_name}.{name}``" in text
            continue
        same = [(m, n) for m, n, o in exports if conf._key(n, o) == conf._key(name, obj)]
        assert sum(_documented(text, m, n) for m, n in same) == 1, f"{module_name}.{name}: one entry, not {same}"
    for module_name in ("flowkit.sbi", "flowkit.distributed", "flowkit.data.memmap", "flowkit.data.shapes"):
        if importlib.util.find_spec(module_name) is not None:
            assert module_name in conf._modules()


def test_the_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    pages = {p.stem for p in out.glob("*.html")}
    guides = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"api"}
    assert guides | {"index", "reference"} <= pages
    html = (out / "reference.html").read_text()
    ids = set(re.findall(r'id="([\w.]+)"', html))
    conf = _conf()
    for module_name, name, obj in _public_objects(conf):
        if inspect.ismodule(obj):
            continue
        anchors = {f"{m}.{n}" for m, n, o in _public_objects(conf) if o is obj}
        assert anchors & ids, f"{module_name}.{name} has no entry on reference.html"
    pages_text = "".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    for figure in re.findall(r"\(figures/([\w.-]+\.png)\)", pages_text):
        assert (out / "_images" / figure).is_file()


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
def test_the_walkthrough_script_runs_at_toy_size(tmp_path):
    spec = importlib.util.spec_from_file_location("walkthroughs", ROOT / "experiments" / "walkthroughs.py")
    walkthroughs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walkthroughs)
    import torch

    threads = torch.get_num_threads()
    try:
        result = walkthroughs.main(["shapes", "--epochs", "2", "--hidden", "16", "16", "--train", "200",
                                    "--valid", "50", "--test", "50", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert result["epochs"] == 2 and result["test_nll"] < result["test_nll_before"]
    saved = json.loads((tmp_path / "walkthrough-shapes.json").read_text())
    assert saved["test_nll"] == result["test_nll"]
    for name in ("shapes-data.png", "shapes-samples.png", "shapes-curves.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.fetch
def test_the_package_builds_checks_and_installs(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("twine")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels, sdists = sorted(dist.glob("flowkit-*.whl")), sorted(dist.glob("flowkit-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    environment = tmp_path / "venv"
    venv.create(environment, system_site_packages=True, with_pip=True)  # torch and numpy from here
    python = environment / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheels[0])],
                               capture_output=True, text=True, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = ("import flowkit, flowkit.data; print(flowkit.__file__); "
             "print(tuple(flowkit.data.digits().train.shape), tuple(flowkit.data.shapes(3, 1, 1).train.shape))")
    ran = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert str(environment) in ran.stdout and "(1197, 64) (3, 400)" in ran.stdout
    helped = subprocess.run([str(environment / "bin" / "flowkit"), "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert helped.returncode == 0 and "usage: flowkit" in helped.stdout
