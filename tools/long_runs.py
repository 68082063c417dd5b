"""Long CPU runs in the background, checkpointed every epoch, resumed by the same command.

    python tools/long_runs.py tables [--stems 10_mnist_mlp 20_fmnist_mlp] [--checkpoint-dir DIR] [--threads 1]

`tables`: each table notebook's full profile (the paper's network, 200 epochs, seeds 0-4) and its
ReLU twin, one run after another, with exactly the checkpoint names the notebook uses
(`tb.train_seeds`, `tb.relu_twin`): once they are done, the notebook run at the full profile with
`-p CHECKPOINT_DIR DIR` finds them finished and only reads them back.

Run it from a git worktree at a pinned commit (`git worktree add ../pinned-<sha> <sha>`), so that
editing the main tree does not mark the runs' provenance dirty; keep DIR outside every work tree
(default ~/.cache/mtsnn/runs). The README's "Long runs" says how to carry an unfinished run to
another machine.
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("what", choices=["tables"])
    parser.add_argument("--stems", nargs="+", default=["10_mnist_mlp", "20_fmnist_mlp"], choices=list(tb.TABLES))
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"code: {mt.__file__}, {rt.provenance()}", flush=True)
    tables(args.stems, args.checkpoint_dir, args.threads)


if __name__ == "__main__":
    main()
