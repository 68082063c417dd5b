"""Build the collection as a static HTML site from the stored notebooks (no re-execution).

    python tools/build_book.py [--out book]        # or: make book

One page per notebook (nbconvert's HTML export of its stored outputs, figures embedded), each with
a bar that links to the index and to the previous and next notebook; one page per text page, the
README (readme.html) and each docs/<topic>.md (docs-<topic>.html), rendered from markdown with their
links to one another and to the notebooks pointed at the book's pages; the first page, index.html,
has the map from the paper's equations, tables and figures to the notebooks and the code, the
claim ledger of notebook 90 (figures/90_summary.json) and the list of text pages. Each page also
records, once loaded in a browser, how many of its images rendered (`data-images-rendered` on
<body>): tests/test_book.py reads it from headless Chromium.
"""
from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path

import mistune
import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent

# paper item -> (notebooks, the code that implements it)
PAPER_MAP = [
    ("Eqs. 1-5, Fig. 1: the multi-threshold LIF neuron", ["01_neuron_dynamics"],
     "mtsnn_core.MultiThresholdLIF (on CUDA: mtsnn_fused)"),
    ("Eq. 6: the loss on output spikes; Figs. 2-3: the graph unrolled in time", ["03_first_mtsnn"],
     "mtsnn_core.spike_mse_loss"),
    ("Eqs. 9-13: the gradient and the implicit reset", ["02_derivative_curves", "44_reset_gradient",
                                                        "46_gradient_readings"],
     "mtsnn_core._MultiThresholdFire, mtsnn_gradients"),
    ("Eqs. 14-16, Figs. 4-5: surrogate curves f1, f2, f3", ["02_derivative_curves"],
     "mtsnn_core.surrogate_f1 / f2 / f3"),
    ("Eq. 17: initialisation", ["45_initialisation"], "mtsnn_core.build_net, mtsnn_core.calibrate_init"),
    ("Table 1: settings", ["10_mnist_mlp"], "mtsnn_core.TABLE1, PAPER_LR, PAPER_NETWORKS"),
    ("Table 2: MNIST MLP", ["10_mnist_mlp"], "mtsnn_core.train, mtsnn_tables"),
    ("Table 3: MNIST CNN", ["11_mnist_cnn"], "mtsnn_core.train, mtsnn_tables"),
    ("Table 4: FashionMNIST MLP", ["20_fmnist_mlp"], "mtsnn_core.train, mtsnn_tables"),
    ("Table 5: FashionMNIST CNN", ["21_fmnist_cnn"], "mtsnn_core.train, mtsnn_tables"),
    ("Table 6: CIFAR-10 CNN", ["30_cifar10_cnn"], "mtsnn_core.train, mtsnn_tables"),
    ("Fig. 6: surrogate curves compared", ["40_surrogate_curves"], "mtsnn_tables.run_ablation"),
    ("Fig. 7: Gaussian width alpha_W", ["41_alpha_w"], "mtsnn_tables.run_ablation"),
    ("Fig. 8: S_max at T = 1", ["42_s_max"], "mtsnn_tables.run_ablation"),
    ("Fig. 9: time steps T", ["43_time_steps"], "mtsnn_tables.run_ablation"),
    ("Converted-SNN rows, BSNN (toy)", ["50_conversion_bsnn"], "mtsnn_convert"),
    ("BSNN at CIFAR-10 scale: ResNet-20, VGG-7", ["51_bsnn_cifar10"], "mtsnn_convert, tools/train_conversion_anns.py"),
    ("The method from scratch (teaching)", ["04_from_scratch"], "written out in the notebook"),
    ("Ours: the stored Table 2-3 networks' spikes; T = 1 as a quantised ReLU", ["05_trained_spikes"],
     "mtsnn_core.load_model, SpikingNet.record, evaluate"),
    ("Every claim with our evidence", ["90_summary"], "mtsnn_tables.claim_ledger"),
]

PAGE_SCRIPT = ("<script>window.addEventListener('load', function () { var im = Array.from(document.images); "
               "document.body.dataset.imagesRendered = im.filter(function (i) { return i.complete && "
               "i.naturalWidth > 0; }).length + '/' + im.length; });</script>")
STYLE = ("<style>.book-nav{font:14px sans-serif;padding:8px 16px;background:#f3f3f3;border-bottom:1px solid #ccc}"
         ".book-nav a{margin-right:16px}table.book{border-collapse:collapse;font:14px sans-serif}"
         "table.book td,table.book th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}</style>")
TEXT_STYLE = ("<style>.book-text{font:15px/1.5 sans-serif;max-width:1100px;margin:16px auto;padding:0 16px}"
              ".book-text table{border-collapse:collapse;font-size:13px;margin:8px 0}"
              ".book-text td,.book-text th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
              ".book-text pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
              ".book-text code{background:#f6f6f6}</style>")


def text_pages(root=ROOT):
    """{book page name: markdown file}: the README, then docs/*.md in name order."""
    pages = {"readme.html": Path(root) / "README.md"}
    pages.update({f"docs-{p.stem}.html": p for p in sorted((Path(root) / "docs").glob("*.md"))})
    return pages


def markdown_title(text, default):
    m = re.search(r"^#\s+(.+)$", text, re.M)
    return re.sub(r"[`*]", "", m.group(1)).strip() if m else default


def book_href(href, source, root=ROOT):
    """A link of the markdown file `source` as the book has it: README.md -> readme.html,
    docs/<topic>.md -> docs-<topic>.html, notebooks/<stem>.ipynb -> <stem>.html (anchors kept);
    anything else (another site, a file of the repository) unchanged."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#", href):
        return href
    target, _, anchor = href.partition("#")
    path = (Path(source).parent / target).resolve()
    root = Path(root).resolve()
    if path == root / "README.md":
        page = "readme.html"
    elif path.parent == root / "docs" and path.suffix == ".md":
        page = f"docs-{path.stem}.html"
    elif path.parent == root / "notebooks" and path.suffix == ".ipynb":
        page = f"{path.stem}.html"
    else:
        return href
    return page + (f"#{anchor}" if anchor else "")


def text_page(source, nav_bar, root=ROOT):
    """The HTML page of one markdown file (GitHub's tables, its HTML comments kept as comments)."""
    text = Path(source).read_text()
    body = mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])(text)
    href = lambda m: f'href="{html.escape(book_href(html.unescape(m.group(1)), source, root))}"'
    body = re.sub(r'href="([^"]+)"', href, body)
    title = html.escape(markdown_title(text, Path(source).name))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{STYLE}{TEXT_STYLE}</head>"
            f"<body>{nav_bar}<main class='book-text'>{body}</main>{PAGE_SCRIPT}</body></html>")


def title_of(nb):
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    m = re.search(r"^#\s+(.+)$", first, re.M)
    return m.group(1).strip() if m else ""


def nav(stems, i, suffix=".html"):
    """The bar of page `i` of `stems` (pages named <stem><suffix>): the index, previous, next."""
    links = ['<a href="index.html">index: paper → notebooks, claim ledger</a>']
    if i > 0:
        links.append(f'<a href="{stems[i - 1]}{suffix}">← {stems[i - 1]}</a>')
    if i + 1 < len(stems):
        links.append(f'<a href="{stems[i + 1]}{suffix}">{stems[i + 1]} →</a>')
    return f'<div class="book-nav">{"".join(links)}</div>'


def index_page(titles, ledger, text_titles=None):
    rows = "".join(
        f"<tr><td>{html.escape(item)}</td><td>"
        + "<br>".join(f'<a href="{s}.html">{html.escape(titles.get(s, s))}</a>' for s in stems)
        + f"</td><td><code>{html.escape(code)}</code></td></tr>" for item, stems, code in PAPER_MAP)
    claims = "".join(
        f"<tr><td>{html.escape(e['claim'])}</td><td>{html.escape(str(e['paper']))}</td>"
        f"<td>{html.escape(str(e['evidence']))}</td><td>{html.escape(e['verdict'])}</td>"
        f"<td>{'yes' if e['comparable'] else 'no'}</td>"
        f"<td><a href=\"{e['source']}.html\">{e['source']}</a></td></tr>"
        for e in ledger)
    notebooks = "".join(f'<li><a href="{s}.html">{html.escape(t)}</a></li>' for s, t in titles.items())
    texts = "".join(f'<li><a href="{page}">{html.escape(t)}</a></li>' for page, t in (text_titles or {}).items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mtsnn-replication</title>{STYLE}</head><body>"
            "<h1>mtsnn-replication: the notebooks</h1>"
            "<p>An executable replication of Xu, Liu &amp; Yang, <i>Direct training via backpropagation for "
            "ultra-low-latency spiking neural networks with multi-threshold</i> (Symmetry 2022). Every page is a "
            "notebook as stored in the repository, with the outputs of its last run (each names its profile, "
            "hardware and date in its first cell).</p>"
            f"<h2>Read me first, and the docs</h2><ul>{texts}</ul>"
            "<h2>The paper, notebook by notebook</h2><table class='book'><tr><th>paper</th><th>notebook</th>"
            f"<th>code</th></tr>{rows}</table>"
            "<h2>Claim ledger (notebook 90)</h2><table class='book'><tr><th>claim</th><th>paper</th>"
            f"<th>ours</th><th>verdict</th><th>like for like</th><th>notebook</th></tr>{claims}</table>"
            f"<h2>All notebooks</h2><ul>{notebooks}</ul>{PAGE_SCRIPT}</body></html>")


def build(out, notebooks_dir=ROOT / "notebooks", figures_dir=ROOT / "figures", root=ROOT):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(notebooks_dir).glob("*.ipynb"))
    stems = [p.stem for p in paths]
    exporter = HTMLExporter(template_name="lab")
    titles = {}
    for i, path in enumerate(paths):
        nb = nbformat.read(path, as_version=4)
        titles[path.stem] = title_of(nb) or path.stem
        body, _ = exporter.from_notebook_node(nb)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + STYLE + nav(stems, i), body, count=1)
        body = body.replace("</body>", PAGE_SCRIPT + "</body>", 1)
        (out / f"{path.stem}.html").write_text(body)
    pages = text_pages(root)
    text_titles, names = {}, [page.removesuffix(".html") for page in pages]
    for i, (page, source) in enumerate(pages.items()):
        text_titles[page] = ("README: the results, the two commands, the reading order" if page == "readme.html"
                             else markdown_title(source.read_text(), source.name))
        (out / page).write_text(text_page(source, nav(names, i), root))
    ledger = json.loads((Path(figures_dir) / "90_summary.json").read_text())["ledger"]
    (out / "index.html").write_text(index_page(titles, ledger, text_titles))
    return out / "index.html"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "book"), help="output folder (default book/)")
    print(f"wrote {build(ap.parse_args().out)}")
