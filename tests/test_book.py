"""`make book`: the static HTML site of every stored notebook, the README and the docs/ pages,
checked in headless Chromium; and the markdown pages' own links."""
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
TEXTS = build_book.text_pages(ROOT)  # {page: markdown file}: README.md and docs/*.md


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


def test_readme_and_docs_pages_are_in_the_book(book):
    """The README and every docs/ page have a page linked from the index; their links to one another
    and to the notebooks point at the book's pages."""
    assert {"readme.html", "docs-results.html", "docs-gpu.html", "docs-choices.html"} <= set(TEXTS)
    assert set(TEXTS) == {"readme.html"} | {f"docs-{p.stem}.html" for p in (ROOT / "docs").glob("*.md")}
    assert set(TEXTS) <= set(_links(book / "index.html"))
    readme = (book / "readme.html").read_text()
    assert "<table>" in readme and 'href="90_summary.html"' in readme and 'href="docs-gpu.html"' in readme
    for page in TEXTS:
        assert not re.search(r'href="[^"]*\.(md|ipynb)(#[^"]*)?"', (book / page).read_text()), page


def _markdown_links(path):
    return re.findall(r"\]\(([^)\s]+)\)", path.read_text())


def test_readme_and_docs_links_resolve():
    """Every relative link of README.md and docs/*.md names a file of the repository (the docs link
    back with ../), and the README links every docs/ page."""
    for path in TEXTS.values():
        for link in _markdown_links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#", link):
                continue
            assert (path.parent / link.split("#")[0]).exists(), f"{path.relative_to(ROOT)}: {link}"
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} <= set(_markdown_links(ROOT / "README.md"))


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
    for path in [book / "index.html"] + [book / f"{p.stem}.html" for p in NOTEBOOKS] + [book / t for t in TEXTS]:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
        rendered = re.search(r'data-images-rendered="(\d+)/(\d+)"', dom)
        assert rendered, f"{path.name}: the page did not load"
        expected = (0 if path.stem == "index" else TEXTS[path.name].read_text().count("![") if path.name in TEXTS
                    else _images(ROOT / "notebooks" / f"{path.stem}.ipynb"))
        assert rendered.groups() == (str(expected), str(expected)), path.name
