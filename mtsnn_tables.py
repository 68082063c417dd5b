"""The paper's results tables (Tables 2-6), shared by notebooks 10, 11, 20, 21 and 30.

Each table notebook tells its table's story by calling these in order:

1. `TABLES` and `settings`: the table's network, the paper's numbers, and what each profile runs
2. `train_seeds`: one `mt.train` per seed through `mt.train_sweep` (local worker processes, or one
   Slurm job per seed), each seed's model reloaded from its checkpoint; `load_pretrained`: the
   stored weights of the table's full-profile run instead, evaluated again in seconds
3. `relu_twin`: the same network with ReLU, trained on the same images for the same epochs
4. reports: `plot_accuracy`, `plot_firing`, `comparison`, `verdict`
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import mtsnn_convert as mc
import mtsnn_core as mt

ROOT = Path(__file__).resolve().parent
WEIGHTS_DIR, STORED_DIR = ROOT / "weights", ROOT / "figures"  # the stored runs: weights, and their JSON
PAPER_EPOCHS, PAPER_SEEDS = 200, [0, 1, 2, 3, 4]  # Table 1; accuracy = mean of 5 runs
PROFILES = ("full", "quick", "test")


@dataclass(frozen=True)
class PaperTable:
    """One results table: the paper's network and numbers, and our quick profile for it."""
    table: str  # "Table 2" ... "Table 6"
    paper_accuracy: float  # mean of 5 runs, T = 2, 200 epochs
    paper_rows: tuple  # the other methods the paper prints: (method, T, accuracy %)
    quick: dict  # the quick profile: spec, subset, epochs, lr (seeds 0-2, all test images)
    paper_best: float | None = None  # Table 6 also prints its best run

    @property
    def dataset(self):
        return mt.PAPER_NETWORKS[self.table][0]

    @property
    def paper_spec(self):
        return mt.PAPER_NETWORKS[self.table][1]


TABLES = {
    "10_mnist_mlp": PaperTable("Table 2", 99.15, (("converted SNN", "20", 98.64), ("STDP", "350", 95.00),
                                                  ("BP", "200–1000", 98.71), ("STBP", "50–300", 98.89)),
                               quick=dict(subset=None, epochs=2)),
    "11_mnist_cnn": PaperTable("Table 3", 99.56, (("SLAYER", "300", 99.36), ("HM2BP", "400", 99.42),
                                                  ("ST-RSBP", "400", 99.57), ("TSSL-BP", "5", 99.47)),
                               quick=dict(subset=None, epochs=1)),
    "20_fmnist_mlp": PaperTable("Table 4", 91.08, (("ANN", "—", 89.01), ("HM2BP", "400", 88.99),
                                                   ("ST-RSBP", "400", 90.13), ("TSSL-BP", "5", 90.19)),
                                quick=dict(subset=None, epochs=2)),
    "21_fmnist_cnn": PaperTable("Table 5", 93.08, (("ANN", "—", 91.60), ("TSSL-BP", "5", 92.45),
                                                   ("converted SNN", "200", 92.62)),
                                quick=dict(subset=40000, epochs=1)),
    "30_cifar10_cnn": PaperTable("Table 6", 87.90, (("ANN", "—", 83.72), ("converted SNN", "—", 83.52),
                                                    ("STBP", "8", 85.24), ("TSSL-BP", "5", 86.78)),
                                 quick=dict(spec=mt.QUICK_CIFAR10_SPEC, subset=20000, epochs=1, lr=0.002),
                                 paper_best=88.17),
}


def settings(stem, profile, epochs=None, seeds=None):
    """What `profile` runs for the table of notebook `stem`: "full" is Table 1 (the paper's network,
    all images, 200 epochs, seeds 0-4), "quick" the table's CPU-minutes profile (3 seeds, all test
    images), "test" a seconds-long check of the cells. `epochs`/`seeds` override the profile's."""
    mt._expect("stem", stem, str, lambda v: v in TABLES, f"one of {tuple(TABLES)}")
    mt._expect("profile", profile, str, lambda v: v in PROFILES, f"one of {PROFILES}")
    if epochs is not None:
        mt._positive_int("epochs", epochs)
    if seeds is not None:
        mt._expect("seeds", seeds, (list, tuple), lambda v: len(v) > 0 and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v), "a non-empty list of integers >= 0")
    table = TABLES[stem]
    full = dict(spec=table.paper_spec, subset=None, test_subset=None, epochs=PAPER_EPOCHS, seeds=PAPER_SEEDS,
                lr=mt.PAPER_LR[table.dataset])
    s = {"full": full,
         "quick": dict(full, seeds=[0, 1, 2], **table.quick),
         "test": dict(full, spec=table.quick.get("spec", table.paper_spec), subset=512, test_subset=256, epochs=1,
                      seeds=[0, 1], lr=table.quick.get("lr", full["lr"]))}[profile]
    s.update({k: v for k, v in dict(epochs=epochs, seeds=list(seeds or []) or None).items() if v is not None})
    return dict(s, stem=stem, table=table.table, dataset=table.dataset, profile=profile, batch_size=128)


def train_seeds(s, device, executor="local", cluster=None, checkpoint_dir=None):
    """Train the table's network once per seed of settings `s` with Table 1's neuron, side by side
    (`mt.train_sweep`: two local worker processes, or one Slurm job per seed with `executor="slurm"`
    and `cluster` the `mt.make_executor` arguments); each run reads the data itself. Every seed
    checkpoints in `checkpoint_dir` (a temporary folder if None) and resumes from it; each result
    gets its `model` back from there."""
    checkpoint_dir = checkpoint_dir or tempfile.mkdtemp(prefix=f"{s['stem']}_")
    common = dict(spec=s["spec"], dataset=s["dataset"], epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
                  subset=s["subset"], test_subset=s["test_subset"], device=device, **mt.TABLE1)
    results = mt.train_sweep([dict(seed=seed) for seed in s["seeds"]], checkpoint_dir=checkpoint_dir,
                             executor=mt.make_executor(executor, **(cluster or {})), **common)
    return [dict(r, model=mt.load_model(r["checkpoint"], device)) for r in results]


def weights_path(stem, seed):
    return WEIGHTS_DIR / f"{stem}_seed{seed}.pt"


def _stored_row(stem):
    mt._expect("stem", stem, str, lambda v: v in TABLES, f"one of {tuple(TABLES)}")
    return json.loads((STORED_DIR / f"{stem}.json").read_text())["rows"][0]


def stored_settings(stem):
    """The settings of the table's stored run (figures/<stem>.json), as `settings` gives them."""
    row = _stored_row(stem)
    cfg = row["config"]
    return dict(settings(stem, row["profile"], epochs=cfg["epochs"], seeds=row["seeds"]),
                **{k: cfg[k] for k in ("spec", "subset", "test_subset", "lr", "batch_size")})


def load_pretrained(stem, test_ds):
    """The stored full-profile run of the table instead of training: each seed's weights from
    weights/, their histories, and the ReLU twin's accuracy (and history, where stored) from the
    table's JSON in figures/. Every network is evaluated again on `test_ds`, which must reproduce
    the stored accuracy exactly. Returns (results as `train_seeds` gives them, twin accuracy,
    twin history or None)."""
    row = _stored_row(stem)
    mt._expect("test_ds", test_ds, mt.Dataset, expected="the test Dataset (from mt.load_dataset)")
    missing = [str(weights_path(stem, seed)) for seed in row["seeds"] if not weights_path(stem, seed).exists()]
    if missing:
        raise FileNotFoundError(f"no stored weights for {stem}: {', '.join(missing)} missing (weights/ holds the "
                                "MNIST and FashionMNIST table runs; train with PRETRAINED = False instead)")
    results = []
    for seed, stored in zip(row["seeds"], row["accuracy"]):
        state = mt.load_checkpoint(weights_path(stem, seed))
        net = mt.load_model(weights_path(stem, seed), test_ds.x.device)
        accuracy = mt.evaluate(net, test_ds, state["config"]["T"])["accuracy"]
        if accuracy != stored:
            raise AssertionError(f"{stem} seed {seed}: the stored weights give {accuracy:.2f} %, "
                                 f"the JSON says {stored:.2f} %")
        results.append(dict(config=state["config"], history=state["history"], test_accuracy=accuracy,
                            dataset_variant=row["dataset"], device=row["run_device"][0], model=net))
    return results, row["relu_twin_accuracy"], row.get("relu_twin_history")


def relu_twin(s, train_ds, test_ds):
    """The same network with ReLU instead of the spiking neuron, trained on the same images for the
    same epochs with cross-entropy and Adam at 1e-3 (first seed): "learns normally" at this budget."""
    _, accuracy, history = mc.train_ann(s["spec"], train_ds, test_ds, epochs=s["epochs"], lr=1e-3, seed=s["seeds"][0])
    return accuracy, history


def history_frame(result):
    """One seed's per-epoch history as a table."""
    hist = pd.DataFrame(result["history"])
    hist["silent outputs"] = hist.silent_outputs.map(lambda s: ", ".join(map(str, s)) or "none")
    return hist[["epoch", "loss", "train_accuracy", "test_accuracy", "silent outputs", "output_tied", "seconds"]]


def plot_accuracy(s, results, twin_accuracy, twin_history, path):
    """Test accuracy per epoch: each seed (thin), their mean with the min-max band over seeds, the
    ReLU twin and the paper's final accuracy."""
    import matplotlib.pyplot as plt
    table = TABLES[s["stem"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    acc = torch.tensor([[h["test_accuracy"] for h in r["history"]] for r in results])
    epochs = [h["epoch"] for h in results[0]["history"]]
    seeds, few = [r["config"]["seed"] for r in results], len(epochs) <= 10
    if len(results) > 1:
        for seed, a in zip(seeds, acc):
            ax.plot(epochs, a, lw=0.6, alpha=0.7, marker="." if few else None, label=f"seed {seed}")
        ax.fill_between(epochs, acc.amin(0), acc.amax(0), color="C3", alpha=0.2, label="min-max over seeds")
    ax.plot(epochs, acc.mean(0), "C3", lw=1.5, marker="o" if few else None, mfc="none",
            label=f"multi-threshold SNN, mean of {len(results)} seeds" if len(results) > 1 else
            f"multi-threshold SNN, seed {seeds[0]}")
    if twin_history:
        ax.plot([h["epoch"] for h in twin_history], [h["test_accuracy"] for h in twin_history], "k-", lw=1,
                marker="s" if few else None, mfc="none", label="ReLU twin (seed 0)")
    else:
        ax.axhline(twin_accuracy, color="k", lw=1, label="ReLU twin (seed 0), last epoch")
    ax.axhline(table.paper_accuracy, color="k", ls=":", label=f"paper, {PAPER_EPOCHS} epochs: {table.paper_accuracy} %")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title=f"{table.table}: {s['dataset']} {s['spec']}, T = 2 ({s['profile']} profile)")
    ax.title.set_fontsize(9)
    if few:  # whole epochs only
        ax.set_xticks(epochs)
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def layer_names(net):
    """ "1: 15C5", "2: FC 300", ...: each neuron layer by the synaptic layer that feeds it."""
    synaptic = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    conv = torch.nn.Conv2d
    return [f"{i}: {m.out_channels}C{m.kernel_size[0]}" if isinstance(m, conv) else f"{i}: FC {m.out_features}"
            for i, m in enumerate(synaptic, 1)]


def plot_firing(s, results, path):
    """Per neuron layer after the last epoch, mean over seeds: spikes per neuron per step, and the
    fraction of the layer's neurons that never fired on the test set."""
    import matplotlib.pyplot as plt
    layers = layer_names(results[0]["model"])
    last = [r["history"][-1] for r in results]
    rates = torch.tensor([h["firing_rate"] for h in last]).mean(0)
    silent = torch.tensor([h["silent_fraction"] for h in last]).mean(0)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.2))
    ax.bar_label(ax.bar(layers, rates.tolist()), fmt="%.2f", fontsize=7)
    ax.set(xlabel="neuron layer", ylabel="spikes per neuron per step",
           title=f"mean firing rate (possible range 0..{mt.TABLE1['s_max']})")
    ax2.bar_label(ax2.bar(layers, silent.tolist(), color="tab:red"), fmt="%.3f", fontsize=7)
    ax2.set(xlabel="neuron layer", ylabel="fraction of the layer's neurons", title="never fired on the test set",
            ylim=(0, 1))
    for a in (ax, ax2):
        a.title.set_fontsize(9)
        a.margins(y=0.15)
        a.tick_params(axis="x", labelsize=7, rotation=30)
    fig.suptitle(f"{s['table']}, mean over {len(results)} seed(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def table_row(s, results, twin_accuracy, twin_history, train_ds, test_ds):
    """The JSON row of our result (`mt.result_row`), with the settings and the twin beside it."""
    table = TABLES[s["stem"]]
    name = "multi-threshold SNN (ours)" + ("" if s["spec"] == table.paper_spec else ", narrower quick network")
    return mt.result_row(name, results, paper_accuracy=table.paper_accuracy, table=table.table, profile=s["profile"],
                         hardware=results[0]["device"], train_images=len(train_ds), test_images=len(test_ds),
                         relu_twin_accuracy=twin_accuracy, relu_twin_history=twin_history,
                         paper_network=table.paper_spec, paper_best=table.paper_best)


def _ours(row):
    n = len(row["accuracy"])
    return f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f} ({n} seeds)" if n > 1 else \
        f"{row['accuracy_mean']:.2f} (n = 1)"


def comparison(s, row):
    """The rows the paper prints, the paper's own result, ours (last epoch, mean ± standard deviation
    over seeds) and the ReLU twin."""
    table = TABLES[s["stem"]]
    paper = [(m, T, f"{a:.2f}", "", "paper", "") for m, T, a in table.paper_rows]
    best = f", best {table.paper_best:.2f}" if table.paper_best else ""
    run = (s["epochs"], s["profile"], row["hardware"])
    return pd.DataFrame(paper + [
        ("multi-threshold SNN (paper)", "2", f"{table.paper_accuracy:.2f} (5 runs{best})", PAPER_EPOCHS, "paper", ""),
        (row["name"], "2", _ours(row), *run),
        ("ReLU twin (ours)", "—", f"{row['relu_twin_accuracy']:.2f} (n = 1)", *run)],
        columns=["method", "T", "accuracy (%)", "epochs", "source / profile", "hardware"])


def verdict(s, row):
    """Did it learn (every output neuron fires after the last epoch, and the accuracy reaches at
    least 90 % of the ReLU twin's), the gaps, and every way the run differs from the paper's
    setting. Returns (learned, differences) after printing them."""
    table = TABLES[s["stem"]]
    silent = sorted({n for seed in row["silent_outputs"] for n in seed})
    twin = row["relu_twin_accuracy"]
    learned = not silent and row["accuracy_mean"] >= 0.9 * twin
    print(f"paper: {table.paper_accuracy:.2f} %  ({table.paper_spec}, T = 2, {PAPER_EPOCHS} epochs, mean of 5 runs)")
    print(f"ours:  {_ours(row)}  ({s['spec']}, T = 2, {s['epochs']} epochs, {row['train_images']} training images, "
          f"{s['profile']} profile, {row['dataset']}); ReLU twin {twin:.2f} %")
    print("last epoch reported; best epoch per seed: "
          + ", ".join(f"{a:.2f} % at {e}" for a, e in zip(row["accuracy_best"], row["best_epoch"])))
    print(f"gap to the paper: {row['accuracy_mean'] - table.paper_accuracy:+.2f} points; "
          f"to the ReLU twin: {row['accuracy_mean'] - twin:+.2f}")
    print("learned: yes, every output neuron fires and the accuracy is at least 90 % of the ReLU twin's" if learned
          else f"learned: NO (silent output neurons {silent or 'none'}; accuracy vs ReLU twin "
               f"{row['accuracy_mean']:.2f} / {twin:.2f})")
    full = settings(s["stem"], "full")
    differences = [d for d, differs in [
        (f"{len(row['seeds'])} seed(s) instead of 5", len(row["seeds"]) != len(PAPER_SEEDS)),
        (f"{s['epochs']} epochs instead of {PAPER_EPOCHS}", s["epochs"] != PAPER_EPOCHS),
        (f"{row['train_images']} training images", s["subset"] is not None),
        (f"{row['test_images']} test images", s["test_subset"] is not None),
        (f"the network {s['spec']}", s["spec"] != table.paper_spec),
        (f"learning rate {s['lr']}", s["lr"] != full["lr"]),
        (f"dataset variant {row['dataset']}", row["dataset"] == "cifar10-jpeg75")] if differs]
    print("Same setting as the paper: the gap measures the replication." if not differences else
          "Differs from the paper's setting in: " + "; ".join(differences) + ".")
    return learned, differences
