"""The README's results table, generated from the stored JSON (figures/<table notebook>.json and the
ledger of figures/90_summary.json): `mtsnn_tables.readme_results_table`.

    python tools/readme_table.py            # print it
    python tools/readme_table.py --write    # rewrite README.md between <!-- results:begin --> and <!-- results:end -->

tests/test_tables.py fails while the README's block differs from what this prints, so a rerun that
moves a number or a verdict needs `--write` (and a commit) before the tests pass again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import mtsnn_tables as tb  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite README.md's block instead of printing the table")
    ap.add_argument("--figures", default=str(tb.STORED_DIR), help="the folder of the stored JSON (default figures/)")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    args = ap.parse_args(argv)
    if not args.write:
        print("\n".join(tb.readme_results_table(args.figures)))
        return
    path = Path(args.readme)
    old = path.read_text()
    new = tb.readme_with_results(old, args.figures)
    path.write_text(new)
    print(f"{path}: {'unchanged' if new == old else 'results table rewritten'} ({len(new.encode())} bytes)")


if __name__ == "__main__":
    main()
