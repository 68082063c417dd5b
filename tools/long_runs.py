"""Long CPU runs in the background, checkpointed every epoch, resumed by the same command.

    python tools/long_runs.py tables [--stems 10_mnist_mlp 20_fmnist_mlp] [--checkpoint-dir DIR] [--threads 1]
    python tools/long_runs.py stash      # before work stops: DIR's checkpoints into checkpoints/ (tracked)
    python tools/long_runs.py restore    # on a fresh clone: checkpoints/ back into DIR (`tables` does it first)

`tables`: each table notebook's full profile (the paper's network, 200 epochs, seeds 0-4) and its
ReLU twin, one run after another, with exactly the checkpoint names the notebook uses
(`tb.train_seeds`, `tb.relu_twin`): once they are done, the notebook run at the full profile with
`-p CHECKPOINT_DIR DIR` finds them finished and only reads them back.

Run it from a git worktree at a pinned commit (`git worktree add ../pinned-<sha> <sha>`), so that
editing the main tree does not mark the runs' provenance dirty; keep DIR outside every work tree
(default ~/.cache/mtsnn/runs). A run outlasts a session, and a session may end on another machine:
`stash` copies every checkpoint of DIR into the tracked folder checkpoints/ (a finished `mt.train`
run as its weights without optimizer state, which `mt.train` reads back as finished; an unfinished
one whole, weights and optimizer), to be committed; `restore` puts them back where the runs look,
unless DIR already holds as many epochs, and the same `tables` command then goes on bit for bit
(same CPU model and threads; each epoch records where it ran).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mtsnn_core as mt  # noqa: E402
import mtsnn_data as md  # noqa: E402
import mtsnn_runtime as rt  # noqa: E402
import mtsnn_tables as tb  # noqa: E402

DEFAULT_DIR = Path.home() / ".cache" / "mtsnn" / "runs"
STASH = ROOT / "checkpoints"


def _epochs(path):
    state = rt.load_checkpoint(path)
    return (len(state["history"]), state["config"]["epochs"]) if state else (0, None)


def stash(checkpoint_dir, stash_dir=STASH):
    """Copy every checkpoint of `checkpoint_dir` into `stash_dir` that holds more epochs than the copy
    there, a finished `mt.train` run without its optimizer state; returns the files written."""
    stash_dir.mkdir(exist_ok=True)
    written = []
    for path in sorted(Path(checkpoint_dir).glob("*.pt")):
        (done, epochs), target = _epochs(path), stash_dir / path.name
        if target.exists() and _epochs(target)[0] >= done:
            continue
        weights_only = done == epochs and "relu_twin" not in path.name  # train_ann resumes only with its optimizer
        if weights_only:
            mt.export_weights(path, target)
        else:
            shutil.copyfile(path, target)
        written.append(target)
        print(f"stashed {path.name}: {done}/{epochs} epochs{' (weights only)' if weights_only else ''}", flush=True)
    return written


def restore(checkpoint_dir, stash_dir=STASH):
    """Copy the stashed checkpoints into `checkpoint_dir` where it holds fewer epochs of the run."""
    Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    for path in sorted(stash_dir.glob("*.pt")):
        target = Path(checkpoint_dir) / path.name
        if not target.exists() or _epochs(target)[0] < _epochs(path)[0]:
            shutil.copyfile(path, target)
            print(f"restored {path.name}: {_epochs(path)[0]} epochs", flush=True)


def tables(stems, checkpoint_dir, threads):
    torch.set_num_threads(threads)
    for stem in stems:
        s = tb.settings(stem, "full")
        print(f"{stem}: {s['epochs']} epochs x seeds {s['seeds']} -> {checkpoint_dir}", flush=True)
        for r in tb.train_seeds(s, "cpu", checkpoint_dir=str(checkpoint_dir), processes=1, threads=threads):
            print(f"  seed {r['config']['seed']}: {r['test_accuracy']:.2f} %", flush=True)
        train_ds = md.load_dataset(s["dataset"], True, subset=s["subset"])
        test_ds = md.load_dataset(s["dataset"], False, subset=s["test_subset"])
        accuracy, _ = tb.relu_twin(s, train_ds, test_ds, checkpoint_dir=str(checkpoint_dir))
        print(f"  ReLU twin: {accuracy:.2f} %", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tables", "stash", "restore"])
    parser.add_argument("--stems", nargs="+", default=["10_mnist_mlp", "20_fmnist_mlp"], choices=list(tb.TABLES))
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.what == "stash":
        stash(args.checkpoint_dir)
        return
    restore(args.checkpoint_dir)
    if args.what == "tables":
        print(f"code: {mt.__file__}, {rt.provenance()}", flush=True)
        tables(args.stems, args.checkpoint_dir, args.threads)


if __name__ == "__main__":
    main()
