"""The first epochs of the convolutional networks under the core's defaults and a few variations:
the table of the issue "The convolutional networks barely learn", rerun.

    python tools/start_of_training.py [--out figures/start_of_training.json]

Rows already in --out (same name and dataset) are kept and not rerun, so an interrupted run goes on.

Each row records the commit that ran it (rows made before rows had that field take the file's
provenance of the time). Every run: seed 0, one CPU thread (the 32C5 FashionMNIST run: two), Table 1 settings apart from
the variation named. MNIST/FashionMNIST runs train on all 60 000 images and test on the first
2 000 test images; the CIFAR-10 runs train the quick network on the first 10 000 images of the
cifar10-jpeg75 copy and test on 2 000. Per epoch: test accuracy, the output neurons that never
fired on the test images, and the share of tied test images. Each row records its runtime.
"""
import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import mtsnn_convert as mc
import mtsnn_core as mt
import mtsnn_data as md
import mtsnn_runtime as rt

MNIST_CNN, FMNIST_CNN = mt.PAPER_NETWORKS["Table 3"][1], mt.PAPER_NETWORKS["Table 5"][1]
QUICK_CIFAR = mt.QUICK_CIFAR10_SPEC
NEURON = mt.TABLE1
PROFILE = ("its own, not a notebook profile: seed 0, Table 1 settings with one change per row, tested on the first "
           "2,000 test images; each row gives its training images, epochs and CPU threads")
RUNS = [  # name, dataset, spec, epochs, train images, threads, changes from the defaults
    ("defaults", "mnist", MNIST_CNN, 3, None, 1, {}),
    ("init_gain 2.0", "mnist", MNIST_CNN, 2, None, 1, dict(init_gain=2.0)),
    ("init_gain 1.0", "mnist", MNIST_CNN, 3, None, 1, dict(init_gain=1.0)),
    ("lr 0.0005", "mnist", MNIST_CNN, 2, None, 1, dict(lr=0.0005)),
    ("lr 0.001", "mnist", MNIST_CNN, 2, None, 1, dict(lr=0.001)),
    ("previous default: mean V_th/N everywhere, init_gain 1.0, no scaling", "mnist", MNIST_CNN, 3, None, 1,
     dict(init_mean="all", init_gain=1.0, init_rate=None)),
    ("lr 0.0005 (the paper's CIFAR-10 rate)", "cifar10", QUICK_CIFAR, 3, 10_000, 1, dict(lr=0.0005)),
    ("lr 0.0005, init_gain 1.0", "cifar10", QUICK_CIFAR, 3, 10_000, 1, dict(lr=0.0005, init_gain=1.0)),
    ("lr 0.002 (the quick profile's)", "cifar10", QUICK_CIFAR, 3, 10_000, 1, dict(lr=0.002)),
    ("lr 0.005", "cifar10", QUICK_CIFAR, 3, 10_000, 1, dict(lr=0.005)),
    ("ReLU twin (cross-entropy, Adam 1e-3)", "cifar10", QUICK_CIFAR, 3, 10_000, 1, dict(relu=True)),
    ("defaults", "fmnist", FMNIST_CNN, 1, None, 2, {}),
    # binary spikes (issue 34): the output layer's start relative to S_max against the absolute 0.25 it replaced
    ("S_max 1, T 1: binary spikes, output start S_max/60", "cifar10", QUICK_CIFAR, 3, 10_000, 1,
     dict(lr=0.002, s_max=1, T=1)),
    ("S_max 1, T 1: binary spikes, output start 0.25 (the previous default)", "cifar10", QUICK_CIFAR, 3, 10_000, 1,
     dict(lr=0.002, s_max=1, T=1, init_output_rate=0.25)),
]


def run(name, dataset, spec, epochs, subset, threads, change):
    torch.set_num_threads(threads)
    data = md.load_dataset(dataset, True, subset=subset), md.load_dataset(dataset, False, subset=2000)
    t0 = time.time()
    if change.get("relu"):
        _, _, history = mc.train_ann(spec, *data, epochs=epochs, lr=1e-3, seed=0)
        epochs_out = [dict(epoch=h["epoch"], test_accuracy=h["test_accuracy"]) for h in history]
    else:
        kw = {"lr": 0.005, **NEURON, **change}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # silent outputs are reported in the table instead
            r = mt.train(spec, dataset, epochs=epochs, data=data, seed=0, progress=False, **kw)
        epochs_out = [{k: h[k] for k in ("epoch", "test_accuracy", "silent_outputs", "output_tied", "silent_fraction")}
                      for h in r["history"]]
    return dict(name=name, dataset=data[0].variant, network=spec, train_images=len(data[0]), test_images=len(data[1]),
                threads=threads, change={k: v for k, v in change.items() if k != "relu"}, epochs=epochs_out,
                seconds=round(time.time() - t0, 1), provenance=rt.provenance())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures/start_of_training.json")
    args = ap.parse_args()
    rt.configure_cpu()  # as mt.train does
    out = Path(args.out)
    stored = json.loads(out.read_text()) if out.exists() else dict(rows=[])
    rows = [dict(r, provenance=r.get("provenance", stored.get("provenance"))) for r in stored["rows"]]
    done = {(r["name"], r["dataset"].split("-")[0]) for r in rows}
    for spec in RUNS:
        if spec[:2] in done:
            continue
        rows.append(run(*spec))
        r = rows[-1]
        print(f"{r['dataset']:15s} {r['network']:40s} {r['name']:45s} "
              + "  ".join(f"{e['test_accuracy']:6.2f}" + (f" silent {e['silent_outputs']}" if e.get("silent_outputs")
                                                            else "") for e in r["epochs"])
              + f"  ({r['seconds']:.0f} s)", flush=True)
        Path(args.out).write_text(json.dumps(dict(tool="tools/start_of_training.py", profile=PROFILE,
                                                  torch=torch.__version__, seed=0,
                                                  device=rt.device_name("cpu").split(",")[0] + ")",
                                                  provenance=rt.provenance(), rows=rows), indent=1) + "\n")
