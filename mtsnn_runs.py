"""What calls `mtsnn_core.train`: sweeps of independent runs, on local worker processes or Slurm, and
their results as table rows, JSON and plots.

- `train_sweep` (with `make_executor` for Slurm via submitit, `_SweepJob` one picklable run,
  `_run_name` its checkpoint's file name) and `to_json`;
- `result_row`: one table row from several seeds; `write_results`: figures/<notebook>.json;
  `plot_history`: accuracy per epoch;
- `energy_report`: synaptic operations of a test pass and the energy they stand for.

It imports `mtsnn_core`; the core never imports it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import mtsnn_core as mt
import mtsnn_data as md
from mtsnn_base import _expect, _positive_int
from mtsnn_runtime import device_setup, pick_device, provenance


class _SweepJob:
    """One run of a sweep as a picklable callable. On a cluster, submitit calls `checkpoint` when
    the job is preempted or reaches its time limit: the job is requeued with the same arguments and
    `train` resumes from the run's own checkpoint (train_sweep's checkpoint_dir)."""

    def __call__(self, job):
        job = dict(job)
        if job.get("device") == "auto":  # a cluster job picks the device of the node it runs on
            job["device"] = pick_device("auto")
        threads = job.pop("threads")
        if os.environ.get("SLURM_CPUS_PER_TASK"):  # a Slurm job uses the CPUs it was given
            threads = int(os.environ["SLURM_CPUS_PER_TASK"])
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return dict(to_json(mt.train(**job)), checkpoint=job.get("checkpoint"))  # load_model reads it back
        finally:
            torch.set_num_threads(before)

    def checkpoint(self, job):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, job)


def make_executor(kind="local", folder="runs/submitit", partition=None, timeout_min=240, gpu_type=None, gpus=1,
                  cpus_per_task=8, **slurm):
    """The executor `train_sweep` sends its runs to, by name.

    "local": None, i.e. train_sweep's own pool of worker processes. "slurm": every run is its own
    Slurm job (submitit) on `partition` with `gpus` GPUs (of `gpu_type`, e.g. "a100", when given),
    `cpus_per_task` CPUs and a time limit of `timeout_min` minutes; a preempted or timed-out job is
    requeued and resumes from its checkpoint. Further sbatch options go in `slurm` (submitit's
    SlurmExecutor parameters, e.g. account="lab"). "submitit-local": submitit's LocalExecutor, the
    same path as "slurm" with subprocesses on this machine (for tests). Job scripts and logs go to
    `folder`, which must be on a filesystem the nodes share, like the data and checkpoints.
    """
    _expect("kind", kind, str, lambda v: v in ("local", "slurm", "submitit-local"),
            '"local", "slurm" or "submitit-local"')
    if kind == "local":
        return None
    import submitit
    if kind == "submitit-local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=timeout_min)
        return executor
    _expect("partition", partition, str, expected="the Slurm partition's name")
    _positive_int("timeout_min", timeout_min)
    _positive_int("gpus", gpus)
    _positive_int("cpus_per_task", cpus_per_task)
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=20)
    gpu = dict(gres=f"gpu:{gpu_type}:{gpus}") if gpu_type else dict(gpus_per_node=gpus)
    executor.update_parameters(partition=partition, time=timeout_min, cpus_per_task=cpus_per_task, ntasks_per_node=1,
                               nodes=1, signal_delay_s=120, **gpu, **slurm)
    return executor


def train_sweep(configs, processes=2, threads=None, executor=None, checkpoint_dir=None, **common):
    """Run `train(**common, **config)` for every config and return the results in the order given,
    without their models (`load_model(result["checkpoint"])` rebuilds one when checkpointed).

    Independent runs share the hardware instead of queueing: by default `processes` worker
    processes (spawned) each train one run with `threads` CPU threads (default: the machine's
    threads split between the workers); a worker that dies raises BrokenProcessPool instead of
    leaving the sweep waiting. processes=1, or any run on CUDA, runs them one after another in this
    process. `executor`,
    any concurrent.futures-style executor (`submit(fn, arg)` returning futures; `make_executor`
    gives a Slurm one), replaces the local pool. With `checkpoint_dir`, every run checkpoints there
    under a name derived from its configuration and resumes from it when the sweep is run again
    (or when a cluster requeues its job).
    """
    _expect("configs", configs, (list, tuple), lambda v: all(isinstance(c, dict) for c in v), "a list of dicts")
    _positive_int("processes", processes)
    if threads is not None:
        _positive_int("threads", threads)
    runs = [dict(common, **c) for c in configs]
    if checkpoint_dir is not None:
        _expect("checkpoint_dir", checkpoint_dir, (str, os.PathLike), expected="a folder path")
        runs = [dict(r, checkpoint=str(Path(checkpoint_dir) / f"{_run_name(r)}.pt"), resume=True) for r in runs]
    if executor is None and any(pick_device(r.get("device", "cpu")).startswith("cuda") for r in runs):
        processes = 1  # one GPU: the runs queue on it in this process (data loaded once, no worker to lose)
    threads = threads or max(1, torch.get_num_threads() // processes)
    jobs = [dict(r, threads=threads, progress=False) for r in runs]
    if executor is not None:
        results = [future.result() for future in [executor.submit(_SweepJob(), job) for job in jobs]]
    elif processes == 1:
        results = [_SweepJob()(job) for job in jobs]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"),
                                 initializer=md.quiet_variant_warnings) as pool:  # the workers stay quiet ...
            results = list(pool.map(_SweepJob(), jobs))
    for variant in {r.get("dataset_variant") for r in results}:
        md.warn_variant(variant, stacklevel=2)  # ... and this process warns, once, for all of them
    return results


def _run_name(run):
    """A file name for one run of a sweep: dataset, network and a hash of its whole configuration."""
    key = json.dumps({k: v for k, v in run.items() if k not in ("data", "progress")}, sort_keys=True, default=str)
    spec = re.sub(r"[^0-9A-Za-z]+", "_", str(run.get("spec")))
    return f"{run.get('dataset')}_{spec}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def to_json(result):
    """The result dict without the model, ready for json.dump."""
    return json.loads(json.dumps({k: v for k, v in result.items() if k != "model"}))


def result_row(name, results, paper_accuracy=None, **extra):
    """One table row from the `train` results of several seeds of the same configuration: the last
    epoch's test accuracy per seed with mean and (n - 1) standard deviation, the best epoch beside
    it, the silent outputs and ties of the last epoch, and every seed's per-epoch history. A result
    without a history (a converted network: no training epochs of its own) gives None for those."""
    cfg = results[0]["config"]
    acc = [r["test_accuracy"] for r in results]
    mean = sum(acc) / len(acc)
    std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) if len(acc) > 1 else 0.0
    histories = [r.get("history") or [{}] for r in results]
    best = [max(h, key=lambda e: e.get("test_accuracy", 0.0)) for h in histories]
    row = dict(name=name, dataset=results[0]["dataset_variant"], network=cfg["spec"], T=cfg["T"],
               s_max=cfg.get("s_max", 15), surrogate=cfg.get("surrogate", "f2"), alpha_w=cfg.get("alpha_w", 20.0),
               epochs=max(len(r.get("history") or []) for r in results) or cfg["epochs"],  # a plateau stops early
               seeds=[r["config"]["seed"] for r in results], reported="last epoch", accuracy=acc,
               accuracy_mean=mean, accuracy_std=std, accuracy_best=[e.get("test_accuracy") for e in best],
               best_epoch=[e.get("epoch") for e in best], paper_accuracy=paper_accuracy,
               silent_outputs=[h[-1].get("silent_outputs") for h in histories],
               output_tied=[h[-1].get("output_tied") for h in histories],
               history=[r.get("history") for r in results], config=cfg,
               precision=cfg.get("precision", "float32"), compiled=cfg.get("compiled", False),
               run_device=[r.get("device") for r in results])  # each run's own device and threads
    return {**row, **extra}  # extra fields, e.g. the swept parameter, may also restate a standard one


def _device_of(name):
    """The device a `device_name` string (or a device) stands for."""
    return "cpu" if str(name).startswith("cpu") else ("cuda" if torch.cuda.is_available() else "cpu")


def write_results(notebook, profile, rows, runtime_s, figures_dir, device, **extra):
    """Write figures/<notebook>.json: where the numbers came from, and one row per result."""
    path = Path(figures_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(notebook=notebook, profile=profile, device=device,
               device_setup=device_setup(_device_of(device), mt.FUSED_NEURON), torch=torch.__version__,
               runtime_s=round(runtime_s, 1), provenance=provenance(), rows=rows, **extra)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def plot_history(results, ax=None, label=""):
    """Train (dashed) and test (solid) accuracy per epoch, one colour per run."""
    import matplotlib.pyplot as plt
    ax = ax or plt.gca()
    for r in results:
        ep = [h["epoch"] for h in r["history"]]
        line, = ax.plot(ep, [h["test_accuracy"] for h in r["history"]], label=f"{label}seed {r['config']['seed']} test")
        ax.plot(ep, [h["train_accuracy"] for h in r["history"]], "--", color=line.get_color(), alpha=0.6,
                label=f"{label}seed {r['config']['seed']} train")
    ax.set(xlabel="epoch", ylabel="accuracy (%)")
    ax.grid(alpha=0.3)
    return ax


# ----------------------------------------------------------------------------------------------
# Energy: synaptic operations of a test pass
# ----------------------------------------------------------------------------------------------
E_AC_PJ, E_MAC_PJ = 0.9, 4.6  # 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014), as commonly used


@torch.no_grad()
def energy_report(net, data, T, batch_size=1000):
    """Synaptic operations per test image of the SNN, beside the same network run as a ReLU ANN.

    SNN: the first layer multiplies the real-valued image (MACs, counted once: the input current
    is the same at every step); every later layer receives integer spikes, and a spike of value k
    costs k accumulates (ACs) on each synapse it fans out to, summed over the T steps. ANN: every
    layer's MACs, once. Energy at E_AC_PJ per AC and E_MAC_PJ per MAC.
    Returns {"layers": [{"layer", "neurons", "firing_rate", "ac", "mac_ann"}], "ac_total",
    "mac_first_layer", "mac_ann_total", "energy_snn_uj", "energy_ann_uj"}.
    """
    synapses = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ops = {m: [0.0, 0.0, 0] for m in synapses}  # m -> [ACs or MACs, ANN MACs, neurons]

    def count(module, inputs, output):
        x = inputs[0]
        per_sample = output[0].numel()
        images = output.shape[0] / (1 if module is synapses[0] else T)
        ops[module][1] += per_sample * module.weight[0].numel() * images
        ops[module][2] = per_sample
        if module is synapses[0]:
            ops[module][0] += per_sample * module.weight[0].numel() * images
        elif isinstance(module, nn.Linear):  # each input spike reaches every output unit
            ops[module][0] += x.sum().item() * module.out_features
        else:  # each spike reaches every output channel at every kernel position covering it
            k = module.kernel_size
            window_sums = F.conv2d(x.sum(1, keepdim=True), x.new_ones(1, 1, *k), padding=module.padding)
            ops[module][0] += window_sums.sum().item() * module.out_channels

    hooks = [m.register_forward_hook(count) for m in synapses]
    try:
        rates = mt.evaluate(net, data, T, batch_size)["firing_rate"]
    finally:
        for h in hooks:
            h.remove()
    n = len(data)
    layers = [dict(layer=f"{type(m).__name__.lower()} {i + 1}", neurons=ops[m][2], firing_rate=rate,
                   ac=0.0 if i == 0 else ops[m][0] / n, mac_ann=ops[m][1] / n)
              for i, (m, rate) in enumerate(zip(synapses, rates))]
    ac = sum(layer["ac"] for layer in layers)
    mac_first, mac_ann = layers[0]["mac_ann"], sum(layer["mac_ann"] for layer in layers)
    return dict(layers=layers, ac_total=ac, mac_first_layer=mac_first, mac_ann_total=mac_ann,
                energy_snn_uj=(ac * E_AC_PJ + mac_first * E_MAC_PJ) * 1e-6, energy_ann_uj=mac_ann * E_MAC_PJ * 1e-6)
