"""Train the CIFAR-10 ANNs that notebook 51 converts, checkpointed, and store their weights.

    python tools/train_conversion_anns.py [--nets resnet20 vgg7] [--recipe standard] [--device auto]
                                          [--budget SECONDS]

Recipes: `mtsnn_convert.ANN_RECIPES`. "standard" (what notebook 51 converts): SGD with Nesterov
momentum 0.9, lr 0.1 on a cosine to 0 over 100 epochs, weight decay 5e-4, batch 128, random crops
and flips, seed 0, on all 50,000 training images; "long_cutout": 200 epochs, 8x8 cutout, bfloat16
autocast; "distilled": 20 epochs fine-tuning long_cutout's ResNet-20 (lr 0.01 on a new cosine) with
knowledge distillation from the ensemble of the stored networks (they must be in `--weights`);
"distilled_swa": from distilled's ResNet-20, the same teachers for 20 epochs at a constant lr 0.01,
the weights of those epochs averaged (`train_ann`'s `average`); "distilled_long": long_cutout's 200
epochs from the start, distilled from distilled's teachers. Every epoch is checkpointed in
`--runs` (the same command resumes a stopped run); a finished run's weights, without the optimizer
state, go to `--weights`/`mc.ann_weights_file` with the per-epoch history, the provenance and the
device they were trained on. On a GPU the networks train at the same time, one process each (a
small network leaves most of the card idle); on a CPU one after the other (ResNet-20 on 2 threads:
about 1.8 min per epoch, ~1.3 with bfloat16). `--budget`: stop, resumably, before an epoch that
would end after that many seconds. `--subset`/`--epochs` make a tiny run (the test's).
"""
from __future__ import annotations

import argparse
import subprocess
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


def train_one(name, args, stop_at):
    """Train (or resume) one network; store its weights once its last epoch is done."""
    device = rt.pick_device(args.device)
    if device.startswith("cuda"):
        rt.configure_cuda()
    train = md.load_dataset("cifar10", True, device=device, subset=args.subset)
    test = md.load_dataset("cifar10", False, device=device, subset=args.subset)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    file = mc.ann_weights_file(name, args.recipe)
    net, accuracy, history = mc.train_cifar10_ann(name, train, test, checkpoint=args.runs / file, progress=True,
                                                  weights_dir=args.weights, stop_at=stop_at, recipe=args.recipe,
                                                  **overrides)
    epochs = overrides.get("epochs", mc.ANN_RECIPES[args.recipe]["epochs"])
    print(f"{name}: {len(history)} of {epochs} epochs, test accuracy {accuracy:.2f} %", flush=True)
    if len(history) == epochs:
        mt.export_weights(args.runs / file, args.weights / file, device_setup=rt.device_setup(device, mt.FUSED_NEURON))
        print(f"{name}: weights written to {args.weights / file}", flush=True)
    return len(history) == epochs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(mc.CIFAR10_ANNS), choices=list(mc.CIFAR10_ANNS))
    parser.add_argument("--recipe", default="standard", choices=list(mc.ANN_RECIPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, default=None, help="seconds")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the recipe's (tiny runs)")
    parser.add_argument("--subset", type=int, default=None, help="the first N training and test images (tiny runs)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch's default otherwise)")
    parser.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=None,
                        help="one process per network (default: on a GPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stop_at = time.time() + args.budget if args.budget else None
    todo = [n for n in args.nets if not (args.weights / mc.ann_weights_file(n, args.recipe)).exists()]
    for n in set(args.nets) - set(todo):
        print(f"{n}: weights already stored in {args.weights}, not retrained")
    parallel = args.parallel if args.parallel is not None else rt.pick_device(args.device).startswith("cuda")
    args.runs.mkdir(parents=True, exist_ok=True)
    if len(todo) > 1 and parallel:  # one process per network, logs in --runs; the parent waits for all
        options = dict(recipe=args.recipe, device=args.device, runs=args.runs, weights=args.weights,
                       epochs=args.epochs, subset=args.subset, threads=args.threads,
                       budget=args.budget and stop_at - time.time())
        logs = {n: args.runs / mc.ann_weights_file(n, args.recipe).replace(".pt", ".log") for n in todo}
        rest = [a for k, v in options.items() if v for a in (f"--{k}", str(v))]
        procs = {n: subprocess.Popen([sys.executable, __file__, "--nets", n, *rest],
                                     stdout=open(logs[n], "a"), stderr=subprocess.STDOUT)
                 for n in todo}
        codes = {n: p.wait() for n, p in procs.items()}
        for n in todo:
            print(logs[n].read_text().splitlines()[-1] if codes[n] == 0 else
                  f"{n}: failed (exit {codes[n]}), see {logs[n]}")
        return 0 if all(c == 0 for c in codes.values()) else 1
    done = [train_one(n, args, stop_at) for n in todo]
    return 0 if all(done) or stop_at else 1


if __name__ == "__main__":
    sys.exit(main())
