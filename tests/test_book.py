"""`make book`: the static HTML site of every stored notebook, checked in headless Chromium."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    build_book.build(out)
    return out


def _links(page):
    return re.findall(r'href="([^"#:]+\.html)"', page.read_text())


def test_every_notebook_has_a_page_reachable_from_the_index(book):
    index = (book / "index.html").read_text()
    assert "The paper, notebook by notebook" in index and "Claim ledger" in index
    assert {p.stem + ".html" for p in NOTEBOOKS} <= set(_links(book / "index.html"))
    for page in book.glob("*.html"):
        assert all((book / link).exists() for link in _links(page)), page.name
    mapped = {s for _, stems, _ in build_book.PAPER_MAP for s in stems}
    assert mapped <= {p.stem for p in NOTEBOOKS}  # the paper map names only notebooks that exist


def _images(path):
    nb = nbformat.read(path, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("MTSNN_REQUIRE_CHROMIUM"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_pages_render_with_their_figures_in_headless_chromium(book):
    """Each page, loaded by Chromium, reports on <body> how many images rendered (a script the
    book adds): all of them, one per figure the stored notebook holds."""
    assert CHROMIUM, "MTSNN_REQUIRE_CHROMIUM is set but no chromium is on PATH"
    for path in [book / "index.html"] + [book / f"{p.stem}.html" for p in NOTEBOOKS]:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
        rendered = re.search(r'data-images-rendered="(\d+)/(\d+)"', dom)
        assert rendered, f"{path.name}: the page did not load"
        expected = 0 if path.stem == "index" else _images(ROOT / "notebooks" / f"{path.stem}.ipynb")
        assert rendered.groups() == (str(expected), str(expected)), path.name
