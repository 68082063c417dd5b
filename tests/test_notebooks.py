"""Every notebook executed by nbval on a temporary copy, at the tiny "test" profile.

The "test" profile (a few hundred images, one epoch) checks that every cell runs, not what the
method reaches; the stored notebooks are the quick profile's (`make`), and `tests/test_core.py`
holds the learning checks.

The copy gets PROFILE="test" and FIGURES_DIR=<tmp> injected by papermill (replacing whatever a
stored full run injected), so the test never writes to tracked files and never starts the full
profile. Cells marked `# NBVAL_CHECK_OUTPUT` (deterministic values: curves, neuron traces) are
compared with the stored outputs; the rest only have to run without error (--nbval-lax).
"""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _summary_last(path):
    return (path.name.startswith("90"), path.name)


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS, key=_summary_last), ids=lambda p: p.stem)
def test_notebook_runs(notebook, tmp_path):
    figures = tmp_path / "figures"
    # the summary notebook reads the other notebooks' JSON: give it the stored ones
    if notebook.name.startswith("90"):
        figures.mkdir()
        for j in (ROOT / "figures").glob("*.json"):
            (figures / j.name).write_bytes(j.read_bytes())
    nb = parameterize_notebook(nbformat.read(notebook, as_version=4),
                               dict(PROFILE="test", FIGURES_DIR=str(figures)))
    copy = tmp_path / notebook.name
    nbformat.write(nb, copy)
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "--nbval-cell-timeout=1200", str(copy)],
                          cwd=notebook.parent, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_a_quick_regeneration_keeps_a_stored_full_run(tmp_path):
    """tools/run_notebook.py leaves a notebook stored at the full profile untouched when asked for a
    shorter one, and `make PROFILE=full` passes every notebook a checkpoint folder (runs/) and the
    table notebooks their executor."""
    stored = ROOT / "notebooks" / "10_mnist_mlp.ipynb"
    injected = [c.source for c in nbformat.read(stored, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'PROFILE = "full"' in injected[0]  # the stored notebook is a full run
    copy = tmp_path / stored.name
    copy.write_bytes(stored.read_bytes())
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "run_notebook.py"), "--profile", "quick",
                           "--figures", str(tmp_path / "figures"), str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0 and "kept 10_mnist_mlp.ipynb" in proc.stdout, proc.stdout + proc.stderr
    assert copy.read_bytes() == stored.read_bytes() and not (tmp_path / "figures").exists()
    dry = subprocess.run(["make", "-n", "PROFILE=full", "EXECUTOR=slurm", "notebooks/11_mnist_cnn.ipynb",
                          "notebooks/41_alpha_w.ipynb"], cwd=ROOT, capture_output=True, text=True).stdout
    runs = [line for line in dry.splitlines() if "run_notebook.py" in line]
    assert len(runs) == 2 and all("-p CHECKPOINT_DIR ../runs" in r and "-p EXECUTOR slurm" in r for r in runs), dry
