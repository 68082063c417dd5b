"""tools/check_stored.py: which commit stored a notebook's JSON, and what counts as a difference."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_stored  # noqa: E402


def test_differences_skip_timings_and_provenance_and_name_what_moved():
    old = dict(runtime_s=12.0, provenance=dict(commit="a"), rows=[dict(accuracy=[91.0], loss=float("nan"),
                                                                       history=[dict(seconds=1.0, test=90.0)])])
    new = dict(runtime_s=15.0, provenance=dict(commit="b"), rows=[dict(accuracy=[91.0], loss=float("nan"),
                                                                       history=[dict(seconds=2.0, test=90.0)])])
    assert check_stored.differences(old, new) == ([], [], [])
    new["rows"][0]["accuracy"] = [10.0]
    new["rows"].append(dict(accuracy=[5.0]))
    del new["rows"][0]["loss"]
    assert check_stored.differences(old, new) == ([(".rows[0].accuracy[0]", 91.0, 10.0)], [".rows[0].loss"],
                                                  [".rows[1].accuracy[0]"])


def test_stored_commit_is_the_last_that_wrote_the_json(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", *a],
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "figures" / "quick").mkdir(parents=True)
    (tmp_path / "figures" / "10_mnist_mlp.json").write_text("{}")
    (tmp_path / "figures" / "01_neuron_dynamics.json").write_text("{}")
    git("add", "."), git("commit", "-qm", "full runs")
    first = git("rev-parse", "HEAD")
    (tmp_path / "mtsnn_core.py").write_text("")
    git("add", "."), git("commit", "-qm", "a code change, no rerun")
    assert check_stored.stored_commit("01_neuron_dynamics", tmp_path) == first
    assert check_stored.stored_commit("10_mnist_mlp", tmp_path) == first
    (tmp_path / "figures" / "quick" / "10_mnist_mlp.json").write_text("{}")
    git("add", "."), git("commit", "-qm", "the quick run of a table stored at the full profile")
    assert check_stored.stored_commit("10_mnist_mlp", tmp_path) == git("rev-parse", "HEAD")
    assert check_stored.stored_commit("99_none", tmp_path) is None
