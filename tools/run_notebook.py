"""Execute notebooks with papermill, in place, with the profile forced.

    python tools/run_notebook.py [--profile quick|full] [--figures DIR] [-p KEY VALUE]... NOTEBOOK...

Papermill injects PROFILE and FIGURES_DIR after the cell tagged `parameters` (replacing an
earlier injected cell, so a notebook stored after a full run is re-run at the profile asked for),
runs it with notebooks/ as working directory and writes it back. The first markdown cell's
"Stored outputs" line is then rewritten with the profile, device, runtime and date. A failure
names the notebook and the cell, and the exit status is 1.

A notebook whose stored outputs come from a longer profile (long, full) than the one asked for is left
as it is, with a message: a quick regeneration never replaces a stored full run. --replace
overrides that.
"""
import argparse
import ast
import datetime
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm

from mtsnn_runtime import device_name, pick_device

STAMP = re.compile(r"^\*\*Stored outputs:\*\*.*$", re.M)
PROFILES = ("test", "quick", "plateau", "long", "full")  # shortest first (docs/glossary.md says what each is)


def stored_profile(path):
    """The PROFILE papermill injected into the stored notebook, or None if it was never run so."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            m = re.search(r'^PROFILE = "(\w+)"', cell.source, re.M)
            return m and m.group(1)
    return None


def stamp(path, profile, overrides):
    """Record in the first cell which profile, device and runtime produced the stored outputs."""
    nb = nbformat.read(path, as_version=4)
    device = device_name(pick_device())
    seconds = nb.metadata.get("papermill", {}).get("duration") or 0
    extra = "".join(f" -p {k} {v!r}" for k, v in overrides.items())
    line = (f"**Stored outputs:** profile `{profile}`{', with ' + extra.strip() if extra else ''}, {device}, "
            f"{seconds / 60:.1f} min, run {datetime.date.today().isoformat()} by "
            f"`python tools/run_notebook.py --profile {profile}{extra} notebooks/{path.name}`.")
    first = nb.cells[0]
    first.source = STAMP.sub(line, first.source) if STAMP.search(first.source) else first.source + "\n\n" + line
    nbformat.write(nb, path)


def run(path, profile, figures, overrides, replace=False):
    path = Path(path).resolve()
    stored = stored_profile(path)
    if not replace and stored in PROFILES and PROFILES.index(stored) > PROFILES.index(profile):
        print(f"kept {path.name}: its stored outputs are the {stored} profile's; "
              f"--replace overwrites them with {profile}")
        return True
    params = dict(PROFILE=profile, **overrides)
    if figures:
        params["FIGURES_DIR"] = os.path.relpath(Path(figures).resolve(), path.parent)  # stored notebooks stay portable
    t0 = time.time()
    try:
        pm.execute_notebook(str(path), str(path), parameters=params, cwd=str(path.parent), progress_bar=False,
                            kernel_name="python3")
    except pm.PapermillExecutionError as exc:
        print(f"FAILED {path.name}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}", file=sys.stderr)
        return False
    stamp(path, profile, overrides)
    print(f"ok {path.name} ({profile}, {time.time() - t0:.0f} s)")
    return True


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--profile", default="quick", choices=PROFILES)
    ap.add_argument("--replace", action="store_true", help="overwrite a notebook stored at a longer profile")
    ap.add_argument("--figures", default=None, help="where figures and JSON go (default: the notebook's own)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="another parameter, e.g. -p EPOCHS 40 (VALUE read as a Python literal)")
    args = ap.parse_args()
    overrides = {k: _literal(v) for k, v in args.param}
    ok = [run(nb, args.profile, args.figures, overrides, args.replace) for nb in args.notebooks]
    sys.exit(0 if all(ok) else 1)
