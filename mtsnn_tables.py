"""The paper's results tables (Tables 2-6), shared by notebooks 10, 11, 20, 21 and 30.

Each table notebook tells its table's story by calling these in order:

1. `TABLES` and `settings`: the table's network, the paper's numbers, and what each profile runs
2. `train_seeds`: one `mt.train` per seed through `mr.train_sweep` (local worker processes, or one
   Slurm job per seed), each seed's model reloaded from its checkpoint; `load_pretrained`: the
   stored weights of the table's full-profile run instead, evaluated again in seconds
3. `relu_twin`: the same network with ReLU, trained on the same images for the same epochs
4. reports: `plot_accuracy`, `plot_firing`, `comparison`, `verdict`
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import mtsnn_convert as mc
import mtsnn_core as mt
import mtsnn_data as md
import mtsnn_runs as mr
import mtsnn_runtime as rt
from mtsnn_base import _expect, _positive_int

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
    _expect("stem", stem, str, lambda v: v in TABLES, f"one of {tuple(TABLES)}")
    _expect("profile", profile, str, lambda v: v in PROFILES, f"one of {PROFILES}")
    if epochs is not None:
        _positive_int("epochs", epochs)
    if seeds is not None:
        _expect("seeds", seeds, (list, tuple), lambda v: len(v) > 0 and all(
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


def train_seeds(s, device, executor="local", cluster=None, checkpoint_dir=None, processes=2, threads=None):
    """Train the table's network once per seed of settings `s` with Table 1's neuron, side by side
    (`mr.train_sweep`: `processes` local worker processes of `threads` threads, or one Slurm job per
    seed with `executor="slurm"` and `cluster` the `mr.make_executor` arguments); each run reads the
    data itself. Every seed checkpoints in `checkpoint_dir` (a temporary folder if None) and resumes
    from it; each result gets its `model` back from there."""
    checkpoint_dir = checkpoint_dir or tempfile.mkdtemp(prefix=f"{s['stem']}_")
    common = dict(spec=s["spec"], dataset=s["dataset"], epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
                  subset=s["subset"], test_subset=s["test_subset"], device=device, **mt.TABLE1)
    results = mr.train_sweep([dict(seed=seed) for seed in s["seeds"]], processes=processes, threads=threads,
                             checkpoint_dir=checkpoint_dir, executor=mr.make_executor(executor, **(cluster or {})),
                             **common)
    return [dict(r, model=mt.load_model(r["checkpoint"], device)) for r in results]


def weights_path(stem, seed):
    return WEIGHTS_DIR / f"{stem}_seed{seed}.pt"


def _stored_row(stem):
    _expect("stem", stem, str, lambda v: v in TABLES, f"one of {tuple(TABLES)}")
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
    _expect("test_ds", test_ds, md.Dataset, expected="the test Dataset (from md.load_dataset)")
    missing = [str(weights_path(stem, seed)) for seed in row["seeds"] if not weights_path(stem, seed).exists()]
    if missing:
        raise FileNotFoundError(f"no stored weights for {stem}: {', '.join(missing)} missing (weights/ holds the "
                                "MNIST and FashionMNIST table runs; train with PRETRAINED = False instead)")
    results = []
    for seed, stored in zip(row["seeds"], row["accuracy"]):
        state = rt.load_checkpoint(weights_path(stem, seed))
        net = mt.load_model(weights_path(stem, seed), test_ds.x.device)
        accuracy = mt.evaluate(net, test_ds, state["config"]["T"])["accuracy"]
        if accuracy != stored:
            raise AssertionError(f"{stem} seed {seed}: the stored weights give {accuracy:.2f} %, "
                                 f"the JSON says {stored:.2f} %")
        results.append(dict(config=state["config"], history=state["history"], test_accuracy=accuracy,
                            dataset_variant=row["dataset"], device=row["run_device"][0], model=net))
    return results, row["relu_twin_accuracy"], row.get("relu_twin_history")


def relu_twin(s, train_ds, test_ds, checkpoint_dir=None):
    """The same network with ReLU instead of the spiking neuron, trained on the same images for the
    same epochs with cross-entropy and Adam at 1e-3 (first seed): "learns normally" at this budget.
    With `checkpoint_dir` it saves after every epoch there and a rerun resumes."""
    seed = s["seeds"][0]
    checkpoint = checkpoint_dir and str(Path(checkpoint_dir) / f"{s['stem']}_{s['profile']}_relu_twin_seed{seed}.pt")
    _, accuracy, history = mc.train_ann(s["spec"], train_ds, test_ds, epochs=s["epochs"], lr=1e-3, seed=seed,
                                        checkpoint=checkpoint)
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
    """The JSON row of our result (`mr.result_row`), with the settings and the twin beside it."""
    table = TABLES[s["stem"]]
    name = "multi-threshold SNN (ours)" + ("" if s["spec"] == table.paper_spec else ", narrower quick network")
    return mr.result_row(name, results, paper_accuracy=table.paper_accuracy, table=table.table, profile=s["profile"],
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


# ----------------------------------------------------------------------------------------------
# The claim ledger (notebook 90): every paper claim against our stored evidence
# ----------------------------------------------------------------------------------------------
VERDICTS = ("agrees", "agrees in shape", "not shown", "contradicts", "not run yet")
PARTIAL_TOLERANCE = 1.5  # points below the paper that a one-seed or shorter full run may still "agree in shape"


def _entry(claim, paper, notebook, evidence, verdict, comparable, n=None, std=None, gap=None, **numbers):
    assert verdict in VERDICTS, verdict
    return dict(claim=claim, paper=paper, notebook=notebook, evidence=evidence, verdict=verdict,
                comparable=comparable, seeds=n, std=std, gap_to_paper=gap, numbers=numbers)


def _commit(doc):
    """The commit that wrote a notebook's JSON (older JSON files record none)."""
    commit = (doc.get("provenance") or {}).get("commit")
    return f"{commit[:7]}{' (dirty)' if doc['provenance'].get('dirty') else ''}" if commit else "not recorded"


def _table_entry(stem, doc):
    """A table's row: comparable only at the paper's network, data, 200 epochs and 5 seeds."""
    t, r = TABLES[stem], doc["rows"][0]
    n, mean, std = len(r["seeds"]), r["accuracy_mean"], r["accuracy_std"]
    paper = f"{t.paper_accuracy:.2f} % ({t.paper_spec}, T = 2, 200 epochs, mean of 5)"
    workload = (f"{r['dataset']} {r['network']}, {r['epochs']} epochs, {r['train_images']} images, "
                f"{doc['profile']} profile")
    ours = (f"{mean:.2f} %" + (f" ± {std:.2f} (n = {n})" if n > 1 else " (n = 1)")
            + f"; ReLU twin {r['relu_twin_accuracy']:.2f} %")
    at_paper_setting = doc["profile"] == "full" and r["network"] == t.paper_spec
    complete = at_paper_setting and r["epochs"] == PAPER_EPOCHS and n == len(PAPER_SEEDS) and r["dataset"] == t.dataset
    gap = mean - t.paper_accuracy
    if not at_paper_setting:
        verdict = "not run yet"
    elif complete:
        verdict = "agrees" if gap >= -max(2 * std / n ** 0.5, 0.3) else "contradicts"
    else:
        verdict = "agrees in shape" if gap >= -PARTIAL_TOLERANCE else "not shown"
    return _entry(f"{t.table}: {t.dataset} {t.paper_spec} at T = 2", paper, stem, f"{ours}; {workload}", verdict,
                  complete, n=n, std=std, gap=gap, ours=mean, paper_accuracy=t.paper_accuracy)


def _sweep(doc, key):
    """An ablation notebook's rows as one test accuracy per (point, seed), their seeds, their
    workload, and whether it is the paper's (the full profile on CIFAR-10)."""
    rows = doc["rows"]
    runs = pd.DataFrame([{key: r[key], "test": a} for r in rows for a in r["accuracy"]])
    return (runs, min(len(r["seeds"]) for r in rows),
            f"{rows[0]['dataset']} {rows[0]['network']}, {rows[0]['epochs']} epochs, {rows[0]['subset'] or 50_000:,} "
            f"images, {doc['profile']} profile, ReLU twin {rows[0]['relu_twin_accuracy']:.2f} %",
            doc["profile"] == "full" and rows[0]["dataset"].startswith("cifar10"))


def claim_ledger(figures_dir):
    """One entry per claim of the paper (Tables 2-6, Figs. 1, 4-9, the reset gradient, the
    conversion argument): the paper's evidence, ours (notebook, workload, seeds, spread) read from
    the notebooks' JSON in `figures_dir`, a verdict computed from those numbers (VERDICTS), and
    whether the comparison is like for like. A notebook without JSON gives "not run yet"."""
    docs = {p.stem: json.loads(p.read_text()) for p in Path(figures_dir).glob("*.json")}
    ledger = [_table_entry(stem, docs[stem]) if stem in docs else
              _entry(f"{t.table}: {t.dataset} {t.paper_spec} at T = 2", f"{t.paper_accuracy:.2f} %", stem,
                     "no JSON yet", "not run yet", False) for stem, t in TABLES.items()]

    if "01_neuron_dynamics" in docs:  # Fig. 1: s = clamp(floor(h/V_th), 0, S_max) at T = 1
        one_step = [(float(c["case"].split()[2]), c["mt_spikes"], c["lif_spikes"])
                    for c in docs["01_neuron_dynamics"]["rows"] if c["case"].startswith("T=1 input")]
        ok = all(mt_ == min(int(mv // 10), 15) and lif == 1 for mv, mt_, lif in one_step)
        ledger.append(_entry("Fig. 1: a multi-threshold neuron fires floor(h/V_th) spikes in one step, a LIF one",
                             "Fig. 1 (illustration)", "01_neuron_dynamics",
                             "; ".join(f"{mv:g} mV: {m} spikes (LIF {lif})" for mv, m, lif in one_step),
                             "agrees" if ok else "contradicts", True))
    u = torch.linspace(-10.0, 170.0, 18001)
    peaks = {name: fn(u).max().item() for name, fn in mt.SURROGATES.items()}  # Table 1's settings
    ledger.append(_entry("Figs. 4-5: f1 exceeds 1 near the higher thresholds; f2 and f3 stay near or below 1",
                         "eqs. 14-16, Figs. 4-5", "02_derivative_curves",
                         ", ".join(f"max {k} = {v:.2f}" for k, v in peaks.items()),
                         "agrees" if peaks["f1"] > 1.5 and peaks["f2"] < 1.05 and peaks["f3"] <= 1.0 else "contradicts",
                         True, **peaks))

    if "40_surrogate_curves" in docs:
        runs, n, workload, comparable = _sweep(docs["40_surrogate_curves"], "surrogate")
        pairs = {(a, b): compare_points(runs, "surrogate", a, b) for a, b in [("f2", "f1"), ("f2", "f3"), ("f1", "f3")]}
        means = runs.groupby("surrogate").test.mean()
        clear = [f"{a} - {b} {p['difference']:+.2f}" for (a, b), p in pairs.items() if p["clear"]]
        ledger.append(_entry("Fig. 6: f1, f2 and f3 train to about the same accuracy", "Fig. 6 (CIFAR-10, curves)",
                             "40_surrogate_curves",
                             f"{workload}, n = {n}: " + ", ".join(f"{k} {v:.2f} %" for k, v in means.items())
                             + f"; clear differences: {', '.join(clear) or 'none'}",
                             "agrees in shape" if n >= 2 and not clear else "not shown", comparable, n=n))
    if "41_alpha_w" in docs:
        runs, n, workload, comparable = _sweep(docs["41_alpha_w"], "alpha_w")
        small = [compare_points(runs, "alpha_w", a, 20.0) for a in (0.2, 2.0)]
        means = runs.groupby("alpha_w").test.mean()
        shape = all(c["clear"] and c["difference"] < 0 for c in small)
        ledger.append(_entry("Fig. 7: alpha_W = 20 is best; small alpha_W clearly worse, larger slightly worse",
                             "Fig. 7 (CIFAR-10, 100 epochs)", "41_alpha_w",
                             f"{workload}, n = {n}: best mean at alpha_W = {means.idxmax():g}; 0.2 vs 20: "
                             f"{small[0]['difference']:+.2f}, 2 vs 20: {small[1]['difference']:+.2f}, 2000 vs 20: "
                             f"{means[2000.0] - means[20.0]:+.2f} points",
                             "agrees in shape" if shape else "not shown", comparable, n=n))
    if "42_s_max" in docs:
        runs, n, workload, comparable = _sweep(docs["42_s_max"], "s_max")
        chance = point_summary(runs, "s_max")["near_chance"]
        low = min(k for k in chance.index if not chance[k])  # the rise is measured from the first S_max that trains
        rise = compare_points(runs, "s_max", 15, low)
        ledger.append(_entry("Fig. 8: at T = 1 accuracy rises with S_max", "Fig. 8 (CIFAR-10; S_max = 15: 87.82 %)",
                             "42_s_max", f"{workload}, n = {n}: S_max 15 vs {low}: {rise['difference']:+.2f} ± "
                             f"{rise['standard_error']:.2f} points; near chance (not trained at this budget) at S_max "
                             f"{', '.join(str(k) for k in chance[chance].index) or 'none'}",
                             "agrees in shape" if rise["clear"] and rise["difference"] > 0 and low < 15
                             else "not shown", comparable, n=n))
    if "43_time_steps" in docs:
        runs, n, workload, comparable = _sweep(docs["43_time_steps"], "T")
        rise, chance = compare_points(runs, "T", 3, 1), point_summary(runs, "T")["near_chance"]
        ledger.append(_entry("Fig. 9: with S_max = 1, accuracy rises with T", "Fig. 9 (CIFAR-10; T = 1: 73.6 %, "
                             "T = 5: 87.55 %)", "43_time_steps", f"{workload}, n = {n}: T = 3 vs 1: "
                             f"{rise['difference']:+.2f} ± {rise['standard_error']:.2f} points",
                             "agrees in shape" if rise["clear"] and rise["difference"] > 0 and not chance.any()
                             else "not shown", comparable, n=n))
    if "44_reset_gradient" in docs:
        rows = {r["name"]: r for r in docs["44_reset_gradient"]["rows"]}
        ours, bptt = rows["reset_grad paper, S_max 15"], rows["reset_grad bptt, S_max 15"]
        ledger.append(_entry("Eqs. 11-13: the implicitly differentiated reset trains (where autograd's does not)",
                             "eqs. 11-13 (no experiment)", "44_reset_gradient",
                             f"{ours['dataset']} {ours['network']}, {ours['epochs']} epochs, n = {len(ours['seeds'])}: "
                             f"implicit {ours['accuracy_mean']:.2f} %, plain BPTT {bptt['accuracy_mean']:.2f} %",
                             "agrees" if ours["accuracy_mean"] > 50 > bptt["accuracy_mean"] else "not shown", False,
                             n=len(ours["seeds"])))
    if "46_gradient_readings" in docs:
        rows = {r["name"]: r for r in docs["46_gradient_readings"]["rows"]}
        ours, printed, bptt = rows["implicit"], rows["eq9"], rows["bptt"]
        spread = pd.Series(ours["accuracy"]).std(ddof=1) if len(ours["accuracy"]) > 1 else None
        shown = (ours["accuracy_mean"] > 50 > bptt["accuracy_mean"]
                 and bptt["correlation_mean"] < 0 < ours["correlation_mean"])
        ledger.append(_entry("Eqs. 9-13: why the paper's gradient trains where autograd through the reset does not",
                             "eqs. 9-13 (no experiment)", "46_gradient_readings",
                             f"{ours['dataset']} {ours['network']}, {ours['epochs']} epochs, n = {len(ours['seeds'])}: "
                             f"implicit {ours['accuracy_mean']:.2f} % (gradient's correlation with the loss's "
                             f"finite differences {ours['correlation_mean']:.2f}), eq. 9 as printed "
                             f"{printed['accuracy_mean']:.2f} %, plain BPTT {bptt['accuracy_mean']:.2f} % "
                             f"({bptt['correlation_mean']:.2f}: uphill)",
                             "agrees" if shown else "not shown", False, n=len(ours["seeds"]), std=spread))
    if "50_conversion_bsnn" in docs:
        rows = docs["50_conversion_bsnn"]["rows"]
        ann = next(r["accuracy_mean"] for r in rows if r["name"] == "ANN")
        plain = {r["T"]: r["accuracy_mean"] for r in rows if r.get("method") == "plain IF"}
        direct = next(r for r in rows if r["name"].startswith("direct MT-SNN"))
        need = next((T for T in sorted(plain) if plain[T] >= ann - 1.0), None)
        shape = need is not None and need > direct["T"] and direct["accuracy_mean"] >= ann - 5.0
        ledger.append(_entry("Conversion needs tens to hundreds of steps; direct training at T = 2 does not",
                             "Tables 2, 5, 6 (converted SNN rows), BSNN", "50_conversion_bsnn",
                             f"{rows[0]['dataset']} {rows[0]['network']} (toy), ANN {ann:.2f} %: plain IF within 1 "
                             f"point from T = {need}; direct T = 2: {direct['accuracy_mean']:.2f} %",
                             "agrees in shape" if shape else "not shown", False, n=len(direct["seeds"])))
    if "51_bsnn_cifar10" in docs:
        ledger += _bsnn_entries(docs["51_bsnn_cifar10"])
    for entry in ledger:
        entry["code"] = _commit(docs[entry["notebook"]]) if entry["notebook"] in docs else "—"
    return ledger


def _bsnn_entries(doc):
    """Notebook 51's ledger rows: BSNN's claims and the conversion-latency argument, on ResNet-20
    and VGG-7 (cifar10-jpeg75, our reading of the bistable neuron: not like for like)."""
    m, n, T = doc["methods"], doc["images"], len(doc["methods"]["resnet20/IF"]["accuracy"])
    within = lambda key: m[key]["steps_within"]["1.0"]
    steps = lambda key: within(key) or T + 1  # never within by T_max: counted as T_max + 1
    show = lambda key: within(key) or f"> {T}"
    workload = f"cifar10-jpeg75, {n} test images, ANN ResNet-20 {doc['ann_accuracy']['resnet20']:.2f} % / VGG-7 " \
               f"{doc['ann_accuracy']['vgg7']:.2f} %"
    bsnn = {"resnet20": "resnet20/bistable + SN", "vgg7": "vgg7/bistable"}
    ratios = {net: steps(f"{net}/IF") / steps(key) for net, key in bsnn.items()}
    faster = [r >= 4 and within(bsnn[net]) for net, r in ratios.items()]
    entries = [_entry("BSNN: nearly lossless conversion in 1/4-1/10 of the steps of earlier conversion",
                      "BSNN abstract (VGG16, ResNet-20/34, CIFAR-10 95.16 %)", "51_bsnn_cifar10",
                      f"{workload}; within 1 point of the ANN from T = " + ", ".join(
                          f"{show(f'{net}/IF')} (plain IF) vs {show(key)} ({key.split('/')[1]}) on {net}"
                          for net, key in bsnn.items()) + "; our reading of the bistable neuron (P = 4)",
                      "agrees" if all(faster) else "contradicts" if all(r < 1 for r in ratios.values())
                      else "not shown", False)]
    a_sn, a_no = m["resnet20/bistable + SN"]["accuracy"][-1], m["resnet20/bistable"]["accuracy"][-1]
    se = 100 * math.sqrt((a_sn / 100 * (1 - a_sn / 100) + a_no / 100 * (1 - a_no / 100)) / n)
    entries.append(_entry("BSNN: ResNets need synchronous neurons on their shortcuts", "BSNN abstract",
                          "51_bsnn_cifar10", f"{workload}; ResNet-20 bistable at T = {T}: with SN {a_sn:.2f} %, "
                          f"without {a_no:.2f} % (± {se:.2f})",
                          "agrees" if a_sn - a_no > 2 * se else "not shown", False))
    mean_sin = lambda key: pd.Series(m[key]["sin"][str(T)], dtype=float).mean()  # silent layers (None) left out
    lower = [mean_sin(key) < mean_sin(f"{net}/IF") for net, key in bsnn.items()]
    entries.append(_entry("BSNN: bistable neurons remove the spikes of inactivated neurons (SIN)", "BSNN abstract",
                          "51_bsnn_cifar10", f"{workload}; SIN up to T = {T}, mean over spiking layers: " + ", ".join(
                              f"{net} plain IF {100 * mean_sin(f'{net}/IF'):.2f} %, {key.split('/')[1]} "
                              f"{100 * mean_sin(key):.2f} %" for net, key in bsnn.items()),
                          "agrees" if all(lower) else "contradicts" if not any(lower) else "not shown", False))
    plain = {net: within(f"{net}/IF") for net in bsnn}
    entries.append(_entry("Conversion needs tens to hundreds of steps (CIFAR-10 networks)",
                          "Table 6 (converted SNN 83.52 %, ANN 83.72 %; direct T = 2: 87.90 %)", "51_bsnn_cifar10",
                          f"{workload}; plain IF within 1 point from T = "
                          + ", ".join(f"{show(f'{net}/IF')} ({net})" for net in bsnn) + "; at T = 2: "
                          + ", ".join(f"{m[f'{net}/IF']['accuracy'][1]:.2f} % ({net})" for net in bsnn),
                          "agrees" if all(t is None or t >= 10 for t in plain.values()) else "contradicts", False))
    return entries


def full_profile_cost(figures_dir, bench_json):
    """What the full profile still needs per table, in CPU hours on this project's machine: the
    stored full runs' own seconds per epoch (one thread) for the epochs and seeds not yet run, and
    for a table without a full run the benchmark's step time of the paper's network (2 threads)."""
    docs = {p.stem: json.loads(p.read_text()) for p in Path(figures_dir).glob("*.json")}
    bench = {r["net"]: r for r in json.loads(Path(bench_json).read_text())["rows"] if r["variant"] == "f2"}
    rows = []
    for stem, t in TABLES.items():
        r = docs.get(stem, {}).get("rows", [{}])[0]
        todo = PAPER_EPOCHS * len(PAPER_SEEDS)
        if docs.get(stem, {}).get("profile") == "full" and r.get("network") == t.paper_spec:
            seconds = [e["seconds"] for h in r["history"] for e in h]
            done = len(seconds)
            per_epoch, source = sum(seconds) / done, "its full run's mean epoch (1 thread)"
        else:
            b = bench[t.paper_spec]
            done, per_epoch = 0, b["median_ms"] / 1000 / b["batch"] * {"cifar10": 50_000}.get(t.dataset, 60_000)
            source = f"the benchmark's training step, batch {b['batch']} (2 threads)"
        rows.append(dict(table=t.table, notebook=stem, epochs_done=done, epochs_to_run=todo - done,
                         cpu_hours=(todo - done) * per_epoch / 3600, estimated_from=source))
    return rows


def gpu_profile_cost(gpu_run_json, bench_json):
    """Hours one GPU needs for the long full-profile notebooks (the tables and Figs. 6-9), from
    tools/gpu_run.py's record (`gpu_run_json`) and the GPU benchmark of the same card (`bench_json`).

    A network that gpu_run trained at the full profile costs its measured seconds per epoch
    (whole epochs: steps, evaluation, bookkeeping). Any other costs the benchmark's step (f2; the
    ablations' T scales it by T/2) times its steps per epoch, times `epoch_over_steps`: the mean
    ratio of the measured epochs to that step-only estimate on the measured networks. The ReLU
    twin of each table and ablation is always estimated so, from the benchmark's ReLU step."""
    runs = json.loads(Path(gpu_run_json).read_text())["runs"]
    bench = [r for r in json.loads(Path(bench_json).read_text())["rows"] if "median_ms" in r]
    step_s = {(r["net"], r["variant"]): r["median_ms"] / 1000 for r in bench}
    steps = {(r["net"], d): -(-{"cifar10": 50_000}.get(d, 60_000) // r["batch"]) for r in bench
             for d in ("mnist", "fmnist", "cifar10")}
    measured = {(r["spec"], r["dataset"]): r["seconds_per_epoch"] for r in runs
                if r.get("epochs_asked") and r.get("seconds_per_epoch")}
    ratios = [sec / (step_s[(spec, "f2")] * steps[(spec, d)]) for (spec, d), sec in measured.items()]
    epoch_over_steps = sum(ratios) / len(ratios)

    def estimate(spec, dataset, variant="f2", T=2):
        return step_s[(spec, variant)] * T / 2 * steps[(spec, dataset)] * epoch_over_steps

    rows = []
    for stem, t in TABLES.items():
        s = settings(stem, "full")
        snn = measured.get((s["spec"], t.dataset)) or estimate(s["spec"], t.dataset)
        twin = estimate(s["spec"], t.dataset, "relu-T1", T=2)  # T=2: the ReLU step is already a T = 1 step
        rows.append(dict(notebook=stem, what=t.table, runs=len(s["seeds"]), epochs=s["epochs"],
                         snn_epoch_s=snn, twin_epoch_s=twin,
                         snn_epoch_from="measured" if (s["spec"], t.dataset) in measured else "benchmark",
                         gpu_hours=(len(s["seeds"]) * snn + twin) * s["epochs"] / 3600))
    for stem, a in ABLATIONS.items():
        s = ablation_settings(stem, "full")
        epochs_s = [estimate(s["spec"], "cifar10", T=p if a.key == "T" else s["fixed"]["T"]) for p in s["points"]]
        twin = estimate(s["spec"], "cifar10", "relu-T1", T=2)
        rows.append(dict(notebook=stem, what=a.figure, runs=len(epochs_s) * len(s["seeds"]), epochs=s["epochs"],
                         snn_epoch_s=sum(epochs_s) / len(epochs_s), twin_epoch_s=twin, snn_epoch_from="benchmark",
                         gpu_hours=(sum(epochs_s) * len(s["seeds"]) + twin) * s["epochs"] / 3600))
    return rows, epoch_over_steps


# ----------------------------------------------------------------------------------------------
# The ablations (notebooks 40-43, Figs. 6-9): one setting swept on CIFAR-10, several seeds a point
# ----------------------------------------------------------------------------------------------


# The quick ablations train a shallow CIFAR-10 network (Table 5's shape with 512 hidden units) at
# lr 0.003: one epoch on 10,000 images, 1 thread, gives 39.0 % at T = 2 in 58 s (its ReLU twin 42.5 %)
# and 22.1 % with binary spikes (S_max = 1, T = 1; at lr 0.001 19.2 %, at 0.01 19.7 %), where the
# 8-layer QUICK_CIFAR10_SPEC reaches 32 % at T = 2 (twin 25.9 %) and stays at chance with S_max = 1.
QUICK_ABLATION_SPEC, QUICK_ABLATION_LR = "32C5-P2-64C5-P2-512", 0.003


@dataclass(frozen=True)
class Ablation:
    """One of the paper's CIFAR-10 ablation figures: the swept setting, its values, the settings
    held fixed (the rest is Table 1), and our quick profile's training images (sized so that the
    notebook fits 10 minutes on 2 threads)."""
    figure: str
    key: str  # the train() argument swept
    points: tuple
    fixed: dict
    quick_subset: int
    full_epochs: int = PAPER_EPOCHS


ABLATIONS = {
    "40_surrogate_curves": Ablation("Fig. 6", "surrogate", ("f1", "f2", "f3"), dict(T=2, s_max=15), 10_000),
    "41_alpha_w": Ablation("Fig. 7", "alpha_w", (0.2, 2.0, 20.0, 200.0, 2000.0), dict(T=2, s_max=15), 8_000, 100),
    "42_s_max": Ablation("Fig. 8", "s_max", (1, 2, 3, 7, 15), dict(T=1), 15_000),
    "43_time_steps": Ablation("Fig. 9", "T", (1, 2, 3, 5), dict(s_max=1), 8_000),
}


def ablation_settings(stem, profile):
    """The sweep of notebook `stem` at `profile`: "full" is the paper's (its CIFAR-10 network, all
    images, Table 1's rate, the figure's epochs, seeds 0-2), "quick" the CPU-sized one
    (QUICK_ABLATION_SPEC at QUICK_ABLATION_LR, part of the images, one epoch, 5 000 test images,
    seeds 0-2), "test" a seconds-long check."""
    _expect("stem", stem, str, lambda v: v in ABLATIONS, f"one of {tuple(ABLATIONS)}")
    _expect("profile", profile, str, lambda v: v in PROFILES, f"one of {PROFILES}")
    a = ABLATIONS[stem]
    quick = dict(spec=QUICK_ABLATION_SPEC, lr=QUICK_ABLATION_LR, subset=a.quick_subset, test_subset=5_000, epochs=1,
                 seeds=[0, 1, 2])
    s = {"full": dict(spec=mt.PAPER_NETWORKS["Table 6"][1], lr=mt.PAPER_LR["cifar10"], subset=None, test_subset=None,
                      epochs=a.full_epochs, seeds=[0, 1, 2]),
         "quick": quick,
         "test": dict(quick, subset=256, test_subset=256, seeds=[0, 1])}[profile]
    return dict(s, stem=stem, figure=a.figure, key=a.key, points=list(a.points), dataset="cifar10", profile=profile,
                batch_size=128, fixed=dict(mt.TABLE1, **a.fixed))


def run_ablation(s, device, executor="local", cluster=None, checkpoint_dir=None):
    """Train every point of the sweep `s` with every seed (`mr.train_sweep`; the costliest runs
    first, so that the two local workers finish together). Returns the results, and a table of
    the last epoch's test and training accuracy per point and seed."""
    configs = [{s["key"]: p, "seed": seed} for p in s["points"] for seed in s["seeds"]]
    cost = lambda c: c.get("T", s["fixed"]["T"])  # a run costs about T times one at T = 1
    order = sorted(range(len(configs)), key=lambda i: -cost(configs[i]))
    fixed = {k: v for k, v in s["fixed"].items() if k != s["key"]}
    runs = mr.train_sweep([configs[i] for i in order], executor=mr.make_executor(executor, **(cluster or {})),
                          checkpoint_dir=checkpoint_dir, spec=s["spec"], dataset=s["dataset"], epochs=s["epochs"],
                          lr=s["lr"], subset=s["subset"], test_subset=s["test_subset"], batch_size=s["batch_size"],
                          device=device if executor == "local" else "auto", **fixed)
    results = [None] * len(configs)
    for i, r in zip(order, runs):
        results[i] = r
    frame = pd.DataFrame([{s["key"]: c[s["key"]], "seed": c["seed"], "test": r["history"][-1]["test_accuracy"],
                           "train": r["history"][-1]["train_accuracy"]} for c, r in zip(configs, results)])
    return results, frame


def ablation_twin(s, device, checkpoint_dir=None):
    """`relu_twin` of the sweep `s`: the ReLU network of the same shape, trained on the same images
    for the same epochs (first seed) and tested on the same test images; every point is held
    against it. Returns its accuracy and history."""
    train_ds = md.load_dataset(s["dataset"], True, device=device, subset=s["subset"])
    test_ds = md.load_dataset(s["dataset"], False, device=device, subset=s["test_subset"])
    return relu_twin(s, train_ds, test_ds, checkpoint_dir)


def ablation_rows(s, results, hardware, twin_accuracy):
    """One JSON row per point (`mr.result_row` over its seeds), each with the ReLU twin's accuracy."""
    by_point = {}
    for r in results:
        by_point.setdefault(r["config"][s["key"]], []).append(r)
    return [mr.result_row(f"{s['key']} {p}", by_point[p], profile=s["profile"], hardware=hardware, swept=s["key"],
                          subset=s["subset"], relu_twin_accuracy=twin_accuracy) for p in s["points"]]


CHANCE = 10.0  # per cent, ten classes


def point_summary(frame, key, twin_accuracy=None):
    """Mean and standard deviation over seeds of the last epoch's test accuracy, per point, and
    whether the mean is within 5 points of chance (such a point shows that this budget does not
    train the setting, not what the setting reaches); with `twin_accuracy`, the mean minus the
    ReLU twin's accuracy."""
    summary = frame.groupby(key, sort=False).test.agg(["mean", "std", "count"])
    summary = summary.assign(near_chance=summary["mean"] < CHANCE + 5)
    return summary if twin_accuracy is None else summary.assign(minus_relu_twin=summary["mean"] - twin_accuracy)


def compare_points(frame, key, a, b):
    """Test accuracy of point `a` minus point `b` (means over seeds) with its standard error from the
    seeds' spread; `clear` when the difference is more than twice that."""
    g = frame.groupby(key).test
    diff = g.mean()[a] - g.mean()[b]
    se = (g.var()[a] / g.count()[a] + g.var()[b] / g.count()[b]) ** 0.5
    return dict(difference=diff, standard_error=se, clear=bool(abs(diff) > 2 * se))


def plot_ablation(s, frame, path, xlabel, twin_accuracy, log=False):
    """The figure's sweep: each seed (dots), mean ± standard deviation over seeds (bars), the ReLU
    twin and chance."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    summary = point_summary(frame, s["key"]).reindex(s["points"])
    x = list(range(len(s["points"]))) if isinstance(s["points"][0], str) else s["points"]
    position = dict(zip(s["points"], x))
    ax.plot([position[p] for p in frame[s["key"]]], frame.test, ".", color="0.6", label="one seed")
    ax.errorbar(x, summary["mean"], yerr=summary["std"], fmt="o-", capsize=4, color="C0",
                label=f"mean ± sd over {int(summary['count'].min())} seeds")
    ax.axhline(twin_accuracy, color="k", lw=1, label=f"ReLU twin (seed {s['seeds'][0]})")
    ax.axhline(CHANCE, color="0.5", ls=":", lw=1, label="chance (10 classes)")
    ax.set_xticks(x, [str(p) for p in s["points"]])
    if log:
        ax.set_xscale("log")
        ax.set_xticks(x, [str(p) for p in s["points"]])
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)",
           title=f"{s['figure']}: {s['dataset']} {s['spec']}, {s['epochs']} epoch(s), {s['profile']} profile")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
