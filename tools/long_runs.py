"""Long CPU runs in the background, checkpointed every epoch, resumed by the same command.

    python tools/long_runs.py tables [--stems 10_mnist_mlp 20_fmnist_mlp] [--checkpoint-dir DIR] [--threads 1]
    python tools/long_runs.py plateau [--stems 30_cifar10_cnn 42_s_max 43_time_steps] [--threads 1]
    python tools/long_runs.py bsnn [--images 2000] [--nets resnet20 vgg7] [--threads 1]
    python tools/long_runs.py stash      # before work stops: DIR's checkpoints into checkpoints/ (tracked)
    python tools/long_runs.py restore    # on a fresh clone: checkpoints/ back into DIR (`tables` does it first)
    python tools/long_runs.py status     # where each run of DIR stands (docs/long_runs.md's table is made from it)

`plateau`: the plateau profile of notebook 30 (Table 6's quick network) and of notebooks 42 and 43
(Figs. 8 and 9 at the points the paper names, on the shallow ablation network): Table 1's neuron and
learning rate, at most 200 epochs, the last 5,000 training images held out and training stopped once
their accuracy has stopped rising (`tb.PLATEAU`, never the test set), then the ReLU twin on the same
45,000 images for as many epochs, all under the names the notebooks use: run at `--profile plateau`
with `-p CHECKPOINT_DIR DIR`, they find the runs finished and read them back.

`tables`: each table notebook's full profile (the paper's network, 200 epochs, seeds 0-4) and its
ReLU twin, one run after another, with exactly the checkpoint names the notebook uses
(`tb.train_seeds`, `tb.relu_twin`): once they are done, the notebook run at the full profile with
`-p CHECKPOINT_DIR DIR` finds them finished and only reads them back.

`bsnn`: notebook 51's conversions (docs/long_runs.md: the cost), on the stored ANNs `BSNN_ANNS` (ResNet-20
`distilled_long`, VGG-7 `standard`): for each network first K and the threshold percentile of the
phase-coded readings chosen on training images (`mc.select_phase_code`: 256 training images that are
not the 1,000 calibration images), then every reading of `mc.bsnn_readings` with those thresholds on
the first `--images` test images, every step up to the reading's cap (`mc.step_cap`), in chunks of
250 images under DIR/bsnn/<net>/ (a chunk is written when done; the same command goes on from the
chunks there). `summary.json` beside them lists what is done. Notebook 51 at the full profile with
`-p CHECKPOINT_DIR DIR` reads the chunks back (it computes nothing that is stored).

Run it from a git worktree at a pinned commit (`git worktree add ../pinned-<sha> <sha>`), so that
editing the main tree does not mark the runs' provenance dirty; keep DIR outside every work tree
(default ~/.cache/mtsnn/runs). A run outlasts a session, and a session may end on another machine:
`stash` copies every checkpoint of DIR into the tracked folder checkpoints/ (a finished `mt.train`
run as its weights without optimizer state, which `mt.train` reads back as finished; an unfinished
one whole, weights and optimizer), and every finished chunk of DIR/bsnn/ gzip-compressed into
checkpoints/bsnn/ (a chunk's predictions, one byte per image and step, compress ~10-fold), to be
committed; `restore` puts them back where the runs look, unless DIR already holds as many epochs (or
the chunk), and the same `tables` or `bsnn` command then goes on bit for bit (same CPU model and
threads; each epoch and chunk records where it ran).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
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
BSNN_ANNS = {"resnet20": "distilled_long", "vgg7": "standard"}  # the stored ANNs notebook 51 converts (recipes)
BSNN_IMAGES = 2000


def _epochs(path):
    state = rt.load_checkpoint(path)
    # a ReLU twin's checkpoint (mc.train_ann) records no epochs asked: it is stashed whole, finished or not
    return (len(state["history"]), state["config"].get("epochs")) if state else (0, None)


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
    """Copy the stashed checkpoints into `checkpoint_dir` where it holds fewer epochs of the run,
    and the stashed conversion chunks (checkpoints/bsnn/) where it lacks them."""
    Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    for path in sorted(stash_dir.glob("*.pt")):
        target = Path(checkpoint_dir) / path.name
        if not target.exists() or _epochs(target)[0] < _epochs(path)[0]:
            shutil.copyfile(path, target)
            print(f"restored {path.name}: {_epochs(path)[0]} epochs", flush=True)
    restored = 0
    for path in sorted((stash_dir / "bsnn").rglob("chunk_*.pt.gz")):
        target = Path(checkpoint_dir) / path.relative_to(stash_dir).with_suffix("")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            with gzip.open(path, "rb") as f, open(tmp, "wb") as g:
                shutil.copyfileobj(f, g)
            tmp.replace(target)
            restored += 1
    if restored:
        print(f"restored {restored} conversion chunks into {Path(checkpoint_dir) / 'bsnn'}", flush=True)


def stash_chunks(checkpoint_dir, stash_dir=STASH):
    """gzip every conversion chunk of `checkpoint_dir`/bsnn/ (each written whole, atomically, when
    done) into `stash_dir`/bsnn/ at the same place, unless it is there; returns the files written."""
    written = []
    for path in sorted((Path(checkpoint_dir) / "bsnn").rglob("chunk_*.pt")):
        target = stash_dir / path.relative_to(checkpoint_dir).with_name(path.name + ".gz")
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(path, "rb") as f, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as g:
            shutil.copyfileobj(f, g)
        tmp.replace(target)
        written.append(target)
    if written:
        print(f"stashed {len(written)} conversion chunks ({sum(p.stat().st_size for p in written) / 1e6:.1f} MB)",
              flush=True)
    return written


def status(checkpoint_dir):
    """One row per checkpoint of `checkpoint_dir` (run, epochs done / asked, the last epoch's held-out
    and test accuracy, the best held-out one, the plateau rule's gain, minutes per epoch over the last
    5, hours of its epochs so far: wall clock, pauses included) and per reading of bsnn/ (its
    chunks); printed as a markdown table and returned."""
    rows = []
    for path in sorted(Path(checkpoint_dir).glob("*.pt")):
        state = rt.load_checkpoint(path)
        h, config = state["history"], state["config"]
        last, val = (h[-1] if h else {}), [e["val_accuracy"] for e in h if "val_accuracy" in e]
        rule = config.get("plateau")  # the run stops once the gain is under rule["min_gain"]
        gain = mt.plateau_gain([e for e in h if "val_accuracy" in e], rule["window"]) if rule and val else None
        asked = f"/{config['epochs']}" if config.get("epochs") else ""  # a twin (mc.train_ann) records none
        rows.append(dict(run=path.name, spec=config.get("spec"), epochs=f"{len(h)}{asked}",
                         held_out=val[-1] if val else None, best_held_out=max(val) if val else None,
                         test=last.get("test_accuracy"), plateau_gain=None if gain is None else round(gain, 2),
                         min_per_epoch=round(sum(e["seconds"] for e in h[-5:]) / max(len(h[-5:]), 1) / 60, 1),
                         hours=round(sum(e["seconds"] for e in h) / 3600, 2), device=last.get("device")))
    for store in sorted({p.parent for p in (Path(checkpoint_dir) / "bsnn").rglob("chunk_*.pt")}):
        chunks = [torch.load(p, map_location="cpu", weights_only=False) for p in sorted(store.glob("chunk_*.pt"))]
        rows.append(dict(run=str(store.relative_to(checkpoint_dir)), epochs=f"{len(chunks)} chunks",
                         test=f"images 0-{max(c['images'][1] for c in chunks)}",
                         hours=round(sum(c["seconds"] for c in chunks) / 3600, 2), device=chunks[-1]["device"]))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join("" if r.get(k) is None else str(r[k]) for k in keys) + " |")
    return rows


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


def plateau(stems, checkpoint_dir, threads, **overrides):
    """Each notebook's plateau profile and its twin, one run after another (`overrides` of the
    profile's settings: the tests' tiny run). Returns the results and twin accuracy per stem."""
    torch.set_num_threads(threads)
    done = {}
    for stem in stems:
        if stem in tb.TABLES:
            s = dict(tb.settings(stem, "plateau"), **overrides)
            results = tb.train_seeds(s, "cpu", checkpoint_dir=str(checkpoint_dir), processes=1, threads=threads)
            train_ds = md.load_dataset(s["dataset"], True, subset=s["subset"])
            test_ds = md.load_dataset(s["dataset"], False, subset=s["test_subset"])
            twin, _ = tb.relu_twin(s, train_ds, test_ds, str(checkpoint_dir), tb.epochs_run(results))
        else:
            s = dict(tb.ablation_settings(stem, "plateau"), **overrides)
            results, _ = tb.run_ablation(s, "cpu", checkpoint_dir=str(checkpoint_dir), processes=1, threads=threads)
            twin, _ = tb.ablation_twin(s, "cpu", str(checkpoint_dir), results)
        for r in results:
            print(f"{stem} {r['config']['spec']} T {r['config']['T']} S_max {r['config']['s_max']}: "
                  f"{len(r['history'])} epochs, {r['test_accuracy']:.2f} %", flush=True)
        print(f"{stem}: ReLU twin {twin:.2f} %", flush=True)
        done[stem] = (results, twin)
    return done


def bsnn(checkpoint_dir, threads, images=BSNN_IMAGES, nets=tuple(BSNN_ANNS), readings=None, weights_dir=None,
         selection=mc.SELECTION, caps=None, batch_size=50, chunk_images=250, stop_at=None):
    """Notebook 51's conversions in chunks under `checkpoint_dir`/bsnn/<net>/: the selection of K and
    the percentile on training images, then every reading (`readings`: a subset, the tests' tiny
    run) on the first `images` test images. Returns the summary it writes to bsnn/summary.json
    (None for a network whose selection is unfinished when `stop_at` stops it)."""
    torch.set_num_threads(threads)
    root = Path(checkpoint_dir) / "bsnn"
    n_calib = selection["calibration_images"]
    train = md.load_dataset("cifar10", True, subset=n_calib + selection["images"])
    calib_x, select_ds = train.x[:n_calib], train.split(n_calib)[1]
    test = md.load_dataset("cifar10", False, subset=images)
    summary = dict(images=images, anns=dict(BSNN_ANNS), selection=selection, batch_size=batch_size,
                   chunk_images=chunk_images, threads=threads, provenance=rt.provenance(), nets={})
    for net in nets:
        ann = mc.load_cifar10_ann(net, weights_dir, recipe=BSNN_ANNS[net])[0]
        t0 = time.time()
        chosen = mc.select_phase_code(ann, calib_x, select_ds, selection, store=root / net / "selection",
                                      stop_at=stop_at)
        if chosen is None:
            summary["nets"][net] = None
            break
        (best, rows) = chosen
        print(f"{net}: K = {best['K']}, percentile {best['percentile']} chosen on {len(select_ds)} training images "
              f"({time.time() - t0:.0f} s): {rows}", flush=True)
        thresholds = mc.calibrate(ann, calib_x, best["percentile"])
        results = mc.compare_readings(net, ann, thresholds, test, best["K"], readings, caps,
                                      store=root / net / "test", batch_size=batch_size, chunk_images=chunk_images,
                                      stop_at=stop_at)
        summary["nets"][net] = dict(recipe=BSNN_ANNS[net], chosen=best, selection=rows, thresholds=thresholds,
                                    readings={
            name: dict(cap=r["cap"], latency_floor=r["latency_floor"], ann_accuracy=r["ann_accuracy"],
                       steps_within={str(d): mc.steps_within(r["accuracy"], r["ann_accuracy"], d) for d in (1.0, 0.5)},
                       accuracy_at_cap=r["accuracy"][r["cap"]], sops_at_cap=r["sops"][r["cap"]],
                       seconds=r["seconds"]) for name, r in results.items()})
        for name, r in summary["nets"][net]["readings"].items():
            print(f"  {name}: {r}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["tables", "plateau", "bsnn", "stash", "restore", "status"])
    parser.add_argument("--stems", nargs="+", choices=list(tb.TABLES) + list(tb.ABLATIONS),
                        help="tables: 10_mnist_mlp 20_fmnist_mlp; plateau: 30_cifar10_cnn 42_s_max 43_time_steps")
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=BSNN_IMAGES)
    parser.add_argument("--nets", nargs="+", default=list(BSNN_ANNS), choices=list(BSNN_ANNS))
    args = parser.parse_args(argv)
    if args.what == "status":
        status(args.checkpoint_dir)
        return
    if args.what == "stash":
        stash(args.checkpoint_dir)
        stash_chunks(args.checkpoint_dir)
        return
    restore(args.checkpoint_dir)
    if args.what == "tables":
        print(f"code: {mt.__file__}, {rt.provenance()}", flush=True)
        tables(args.stems or ["10_mnist_mlp", "20_fmnist_mlp"], args.checkpoint_dir, args.threads)
    elif args.what == "plateau":
        print(f"code: {mt.__file__}, {rt.provenance()}", flush=True)
        plateau(args.stems or ["30_cifar10_cnn", "42_s_max", "43_time_steps"], args.checkpoint_dir, args.threads)
    elif args.what == "bsnn":
        print(f"code: {mc.__file__}, {rt.provenance()}", flush=True)
        bsnn(args.checkpoint_dir, args.threads, args.images, args.nets)


if __name__ == "__main__":
    main()
