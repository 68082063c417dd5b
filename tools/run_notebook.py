"""Execute notebooks with papermill, in place, with the profile forced.

    python tools/run_notebook.py [--profile quick|full] [--figures DIR] NOTEBOOK...

Papermill injects PROFILE and FIGURES_DIR after the cell tagged `parameters` (replacing an
earlier injected cell, so a notebook stored after a full run is re-run at the profile asked for),
runs it with notebooks/ as working directory and writes it back. The first markdown cell's
"Stored outputs" line is then rewritten with the profile, device, runtime and date. A failure
names the notebook and the cell, and the exit status is 1.
"""
import argparse
import datetime
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm

from mtsnn_core import device_name, pick_device

STAMP = re.compile(r"^\*\*Stored outputs:\*\*.*$", re.M)


def stamp(path, profile):
    """Record in the first cell which profile, device and runtime produced the stored outputs."""
    nb = nbformat.read(path, as_version=4)
    device = device_name(pick_device())
    seconds = nb.metadata.get("papermill", {}).get("duration") or 0
    line = (f"**Stored outputs:** profile `{profile}`, {device}, {seconds / 60:.1f} min, "
            f"run {datetime.date.today().isoformat()} by `make notebooks PROFILE={profile}`.")
    first = nb.cells[0]
    first.source = STAMP.sub(line, first.source) if STAMP.search(first.source) else first.source + "\n\n" + line
    nbformat.write(nb, path)


def run(path, profile, figures):
    path = Path(path).resolve()
    params = dict(PROFILE=profile)
    if figures:
        params["FIGURES_DIR"] = str(Path(figures).resolve())
    t0 = time.time()
    try:
        pm.execute_notebook(str(path), str(path), parameters=params, cwd=str(path.parent), progress_bar=False,
                            kernel_name="python3")
    except pm.PapermillExecutionError as exc:
        print(f"FAILED {path.name}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}", file=sys.stderr)
        return False
    stamp(path, profile)
    print(f"ok {path.name} ({profile}, {time.time() - t0:.0f} s)")
    return True


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--figures", default=None, help="where figures and JSON go (default: the notebook's own)")
    args = ap.parse_args()
    ok = [run(nb, args.profile, args.figures) for nb in args.notebooks]
    sys.exit(0 if all(ok) else 1)
