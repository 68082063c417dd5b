"""tools/gpu_run.py's dry run on a CPU: the budgeted GPU session, end to end, on the test profile."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import psutil
import pytest

import mtsnn_data as md

ROOT = Path(__file__).resolve().parent.parent
needs_mnist = pytest.mark.skipif(not (md.data_root() / "MNIST" / "raw").exists(),
                                 reason=f"MNIST not under {md.data_root()}")


def _gpu_run(tmp_path, *args):
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_run.py"), "--device", "cpu", "--profile", "test",
           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    return done, summary


@needs_mnist
def test_dry_run_runs_every_step_and_packs_the_results(tmp_path):
    done, summary = _gpu_run(tmp_path, "--budget", "600", "--notebooks", "10_mnist_mlp",
                             "--bench-args", "--quick --nets fc1 --variants f2,relu-T1")
    assert done.returncode == 0, done.stdout[-3000:]
    assert [s["step"] for s in summary["steps"]] == ["CUDA tests", "benchmark", "benchmark, SpikingJelly's kernels",
                                                     "10_mnist_mlp"]
    assert all(s["status"] == "ok" for s in summary["steps"])
    snn = [r for r in summary["runs"] if r["dataset"] == "mnist" and r["epochs_asked"]]
    assert snn and all(r["epochs_done"] == r["epochs_asked"] and r["seconds_to_finish"] == 0 for r in snn)
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"results/bench_step_device.json", "results/notebooks/10_mnist_mlp.ipynb",
            "results/figures/10_mnist_mlp.json", "results/summary.json"} <= names
    assert not (ROOT / "figures" / "bench_step_device.json").exists()  # nothing written into the repository


@needs_mnist
def test_a_notebook_is_stopped_when_the_budget_is_spent(tmp_path):
    """A budget far too short for the notebook: it is stopped, kernel and all, and the run says so."""
    before = {p.pid for p in psutil.process_iter()}
    done, summary = _gpu_run(tmp_path, "--budget", "10", "--steps", "notebooks", "--notebooks",
                             "10_mnist_mlp,99_no_such_notebook")
    assert done.returncode == 1
    assert summary["steps"][1] == dict(summary["steps"][1], step="10_mnist_mlp", status="stopped at its time limit")
    assert summary["steps"][0]["status"] == "skipped: no such notebook"
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
            and "ipykernel" in " ".join(p.info["cmdline"] or [])]
    assert not left, "the notebook's kernel outlived the stop"
