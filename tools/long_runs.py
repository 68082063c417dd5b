"""Long CPU runs in the background, checkpointed every epoch, resumed by the same command.

    python tools/long_runs.py tables [--stems 10_mnist_mlp 20_fmnist_mlp] [--checkpoint-dir DIR] [--threads 1]
    python tools/long_runs.py cifar [--spec SPEC] [--T 2] [--s-max 15] [--seed 0] [--precision float32] [--threads 1]
    python tools/long_runs.py stash      # before work stops: DIR's checkpoints into checkpoints/ (tracked)
    python tools/long_runs.py restore    # on a fresh clone: checkpoints/ back into DIR (`tables` does it first)

`cifar`: a CIFAR-10 network trained to a plateau (Table 1's neuron and learning rate, the paper's 200
epochs at most; the last 5,000 training images held out, and training stops once their accuracy has
stopped rising: `PLATEAU`, never the test set), then its ReLU twin on the same 45,000 images for
the same number of epochs, the spiking network read at T = 1-4, and the twin converted to
multi-threshold IF neurons (S_max = 15) and read at T = 1, 2; a JSON of it all beside the checkpoints.

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
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mtsnn_convert as mc  # noqa: E402
import mtsnn_core as mt  # noqa: E402
import mtsnn_data as md  # noqa: E402
import mtsnn_runtime as rt  # noqa: E402
import mtsnn_tables as tb  # noqa: E402

DEFAULT_DIR = Path.home() / ".cache" / "mtsnn" / "runs"
STASH = ROOT / "checkpoints"
# Stop when the held-out accuracy has stopped rising: after at least 60 epochs, the best of the last
# 20 % of epochs beats the best before by less than 0.2 points.
PLATEAU = dict(min_epochs=60, window=0.2, min_gain=0.2)
HELD_OUT = 5000


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


def cifar(spec, T, s_max, seed, precision, checkpoint_dir, threads, max_epochs=200, plateau=PLATEAU,
          held_out=HELD_OUT, subset=None, test_subset=None):
    """Train the spiking network to a plateau, then its ReLU twin for as many epochs; read both.
    (`subset`, `test_subset` and a small `plateau` make the tests' tiny run.)"""
    torch.set_num_threads(threads)
    name = (f"cifar10_{spec.replace('-', '_')}_T{T}_smax{s_max}_seed{seed}"
            + ("_bf16" if precision == "bfloat16" else "") + (f"_{subset}images" if subset else ""))
    train_ds, test_ds = md.load_dataset("cifar10", True, subset=subset), md.load_dataset("cifar10", False,
                                                                                          subset=test_subset)
    neuron = dict(mt.TABLE1, T=T, s_max=s_max)
    print(f"{name}: {spec}, {neuron}, lr {mt.PAPER_LR['cifar10']}, {precision} -> {checkpoint_dir}", flush=True)
    snn = mt.train(spec, "cifar10", epochs=max_epochs, lr=mt.PAPER_LR["cifar10"], seed=seed, data=(train_ds, test_ds),
                   validation=held_out, plateau=plateau, precision=precision, checkpoint=checkpoint_dir / f"{name}.pt",
                   resume=True, progress=False, **neuron)
    epochs = len(snn["history"])
    fit_ds = train_ds.split(len(train_ds) - held_out)[0]  # the twin trains on the spiking network's images
    ann, twin_accuracy, twin_history = mc.train_ann(spec, fit_ds, test_ds, epochs=epochs, lr=1e-3, seed=seed,
                                                    checkpoint=checkpoint_dir / f"{name}_relu_twin.pt")
    net = snn["model"]
    at_T = {t: mt.evaluate(net, test_ds, t)["accuracy"] for t in (1, 2, 3, 4)}
    converted = mc.evaluate_conversion(mc.convert(ann, fit_ds.x[:1000], s_max=15), ann, test_ds, T_read=(1, 2))
    doc = dict(name=name, config=snn["config"], epochs=epochs, history=snn["history"], twin_accuracy=twin_accuracy,
               twin_history=twin_history, accuracy_at_T=at_T, converted_twin=dict(
                   accuracy=converted["accuracy"], ann_accuracy=converted["ann_accuracy"], s_max=15, percentile=99.9),
               precision=precision, compiled=False, device=snn["device"], provenance=snn["provenance"])
    (checkpoint_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{name}: {epochs} epochs, test {snn['test_accuracy']:.2f} %, twin {twin_accuracy:.2f} %, at T {at_T}, "
          f"converted twin {converted['accuracy']}", flush=True)
    return doc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tables", "cifar", "stash", "restore"])
    parser.add_argument("--stems", nargs="+", default=["10_mnist_mlp", "20_fmnist_mlp"], choices=list(tb.TABLES))
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spec", default=mt.QUICK_CIFAR10_SPEC)
    parser.add_argument("--T", type=int, default=mt.TABLE1["T"])
    parser.add_argument("--s-max", type=int, default=mt.TABLE1["s_max"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--max-epochs", type=int, default=200)
    args = parser.parse_args(argv)
    if args.what == "stash":
        stash(args.checkpoint_dir)
        return
    restore(args.checkpoint_dir)
    if args.what == "tables":
        print(f"code: {mt.__file__}, {rt.provenance()}", flush=True)
        tables(args.stems, args.checkpoint_dir, args.threads)
    elif args.what == "cifar":
        print(f"code: {mt.__file__}, {rt.provenance()}", flush=True)
        cifar(args.spec, args.T, args.s_max, args.seed, args.precision, args.checkpoint_dir, args.threads,
              args.max_epochs)


if __name__ == "__main__":
    main()
