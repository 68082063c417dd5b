"""Do today's modules still compute what the stored notebooks show? A check for stale stored runs.

    python tools/check_stored.py [STEM ...]      (default: every notebook but 90, which reads the others' JSON)

A stored notebook is stale when a change to the code after its run reaches its numbers (notebook
50 was, once). Rerunning every quick notebook takes hours; this takes about a minute per notebook.
For each notebook it finds the commit that last wrote its stored JSON (`figures/quick/<stem>.json`
for the tables stored at the full profile, else `figures/<stem>.json`), runs that commit's notebook
and today's at the `test` profile on this machine (the old tree in a temporary git worktree, so the
CPU, threads and data are the same and only the code differs) and compares every value of the two
JSON files but timings and provenance. A notebook whose values differ, or whose outputs gained or
lost values (its source changed without a rerun), is printed with them and makes the exit status
1: rerun it (`tools/run_notebook.py --profile quick`). Equal test-profile values are evidence, not
proof: code that only the quick or full profile reaches is not exercised.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"seconds", "runtime_s", "provenance", "device", "device_setup", "torch"}  # differ run to run


def stored_commit(stem, root=ROOT):
    """The commit that last wrote the stored JSON of notebook `stem`, or None if none is stored."""
    for f in (f"figures/quick/{stem}.json", f"figures/{stem}.json"):
        sha = subprocess.run(["git", "-C", root, "log", "-1", "--format=%H", "--", f],
                             capture_output=True, text=True, check=True).stdout.strip()
        if sha:
            return sha
    return None


def leaves(value, path=""):
    """(path, value) of every leaf of a JSON value, the VOLATILE keys left out."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in VOLATILE:
                yield from leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def differences(old, new):
    """The leaves whose values differ (NaN equals NaN), and those present in only one of the two."""
    a, b = dict(leaves(old)), dict(leaves(new))
    same = lambda x, y: x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
    changed = [(k, a[k], b[k]) for k in a.keys() & b.keys() if not same(a[k], b[k])]
    return sorted(changed), sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def run_test_profile(tree, stem, out):
    """Notebook `stem` of the source tree `tree` at the test profile, its figures in `out`; its JSON."""
    out.mkdir(parents=True)
    notebook = tree / "notebooks" / f"{stem}.ipynb"
    env = dict(os.environ, PYTHONPATH=str(tree), MPLBACKEND="Agg")  # the tree's modules, not the installed ones
    code = ("import sys, papermill as pm; pm.execute_notebook(sys.argv[1], sys.argv[2], cwd=sys.argv[3], "
            "parameters=dict(PROFILE='test', FIGURES_DIR=sys.argv[4]), progress_bar=False)")
    proc = subprocess.run([sys.executable, "-c", code, notebook, out / notebook.name, notebook.parent, out],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{stem} failed in {tree}:\n{proc.stderr[-2000:]}")
    return json.loads((out / f"{stem}.json").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stems", nargs="*", default=sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")
                                                           if not p.name.startswith("90")))
    args = parser.parse_args(argv)
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {}
        try:
            for stem in args.stems:
                sha = stored_commit(stem)
                if sha is None:
                    print(f"{stem}: no stored JSON", flush=True)
                    continue
                if sha not in trees:
                    trees[sha] = tmp / sha[:12]
                    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", trees[sha], sha],
                                   check=True, capture_output=True)
                old = run_test_profile(trees[sha], stem, tmp / stem / "stored")
                new = run_test_profile(ROOT, stem, tmp / stem / "today")
                changed, only_old, only_new = differences(old, new)
                print(f"{stem} (stored by {sha[:7]}): {len(changed)} values differ; {len(only_old)} only in the "
                      f"stored code's output, {len(only_new)} only in today's", flush=True)
                for k, a, b in changed[:10]:
                    print(f"    {k}: {a!r} -> {b!r}")
                for k in only_old[:5]:
                    print(f"    only in the stored code's output: {k}")
                for k in only_new[:5]:
                    print(f"    only in today's: {k}")
                if changed or only_old or only_new:  # a value moved, or the notebook's outputs did
                    stale.append(stem)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
    print("stale: " + (", ".join(stale) if stale else "none"))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
