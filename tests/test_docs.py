"""Every ```python block of docs/*.md and README.md runs, in order, one namespace per page."""

import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_pages_have_python_blocks():
    assert sum(len(BLOCK.findall(page.read_text())) for page in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs(page, tmp_path, monkeypatch):
    if page.name == "sbi.md":
        pytest.importorskip("sbi")  # the optional extra flowkit[sbi]
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(BLOCK.findall(page.read_text()), 1):
        code = compile(block, f"{page.name}, python block {number}", "exec")
        exec(code, namespace)


def test_the_api_reference_is_what_the_code_says():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_api", ROOT / "docs" / "build_api.py")
    build_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_api)
    assert (ROOT / "docs" / "api.md").read_text() == build_api.build(), "run python docs/build_api.py"
    assert "(undocumented)" not in build_api.build()
