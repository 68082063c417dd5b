"""Binary spikes on CIFAR-10: what keeps them learning (docs/choices.md, "Binary spikes").

    python tools/binary_spikes.py [--out figures/binary_spikes.json] [--threads 1]

Each row trains one network at T = 1 for 3 epochs on the first 10,000 training images (lr 0.0005, the
paper's), tests it on the first 2,000 test images after every epoch, and then counts, per hidden
layer, the units (every position of a feature map) that fire on under 1 % of 1,024 training images
(`dead`) or on over 99 % (`always_on`): at the start no layer has any. The rows change one thing at a
time against the core's defaults: `init_spread` (each hidden channel centred), `label_margin` (the
label's target beyond S_max), both (`tb.FEW_LEVELS`), at S_max = 1, 3 and 15, on the shallow ablation
network and on the 8-layer quick network of notebook 30. Prints a Markdown table; writes the rows,
with the code's commit, to --out. About 12 minutes on one thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mtsnn_core as mt  # noqa: E402
import mtsnn_data as md  # noqa: E402
import mtsnn_runtime as rt  # noqa: E402
import mtsnn_tables as tb  # noqa: E402

SHALLOW, DEEP = tb.QUICK_ABLATION_SPEC, mt.QUICK_CIFAR10_SPEC
BOTH = "both (tb.FEW_LEVELS)"
CHANGES = {"defaults": {}, "init_spread 3": dict(init_spread=3.0), "label_margin 1": dict(label_margin=1),
           BOTH: tb.FEW_LEVELS}
ROWS = ([(SHALLOW, 1, change, 0) for change in CHANGES] + [(SHALLOW, 1, c, 1) for c in ("defaults", BOTH)]
        + [(SHALLOW, s, c, 0) for s in (3, 15) for c in ("defaults", BOTH)]
        + [(DEEP, 1, c, 0) for c in ("defaults", BOTH)])


def unit_states(net, images):
    """Per hidden neuron layer, the share of units firing on under 1 % and on over 99 % of `images`."""
    fired = [(r["s"].sum(0) > 0).float().mean(0).flatten() for r in net.record(images, 1)[:-1]]
    return [round((p < 0.01).float().mean().item(), 3) for p in fired], [round((p > 0.99).float().mean().item(), 3)
                                                                          for p in fired]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "figures" / "binary_spikes.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the JPEG copy's warning: the rows name the variant
        data = md.load_dataset("cifar10", True, subset=10_000), md.load_dataset("cifar10", False, subset=2000)
    rows, start = [], time.time()
    print("| network | S_max | change | seed | test accuracy per epoch (%) | dead units per hidden layer | s |")
    print("|---|---|---|---|---|---|---|")
    for spec, s_max, change, seed in ROWS:
        t0 = time.time()
        r = mt.train(spec, "cifar10", T=1, s_max=s_max, lr=0.0005, seed=seed, epochs=3, data=data, progress=False,
                     **CHANGES[change])
        dead, always_on = unit_states(r["model"], data[0].x[:1024])
        rows.append(dict(spec=spec, s_max=s_max, change=change, seed=seed, config=r["config"],
                         test_accuracy=[h["test_accuracy"] for h in r["history"]],
                         train_accuracy=[round(h["train_accuracy"], 2) for h in r["history"]],
                         silent_outputs=r["history"][-1]["silent_outputs"], dead=dead, always_on=always_on,
                         seconds=round(time.time() - t0, 1)))
        print(f"| {spec} | {s_max} | {change} | {seed} | {' / '.join(f'{a:.2f}' for a in rows[-1]['test_accuracy'])} "
              f"| {' / '.join(f'{d:.0%}' for d in dead)} | {rows[-1]['seconds']:.0f} |", flush=True)
    doc = dict(what=__doc__.split("\n")[0], dataset_variant=data[0].variant, train_images=len(data[0]),
               test_images=len(data[1]), device=rt.device_name(torch.device("cpu")), threads=args.threads,
               provenance=rt.provenance(), runtime_s=round(time.time() - start), rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
