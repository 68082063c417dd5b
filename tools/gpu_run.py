"""A budgeted GPU session: what a short GPU window can do, in priority order, each step resumable.

    python3 tools/gpu_run.py --budget 540 --out OUT [--wheels .whl] [--data-archives .gpu-data]

For a GPU reached in short windows (a notebook service, a debug queue, a borrowed machine without
internet). Every step gets what is left of `--budget` seconds and is stopped when it runs out:

1. installs the carried wheels (`--wheels`: papermill, nbclient, ipykernel, the benchmark's peer
   libraries) into a private folder, if any are carried; unpacks carried data archives
   (`--data-archives`: *.tar.xz of the torchvision folders) into MTSNN_DATA;
2. the CUDA tests (tests/test_cuda.py: the fused neuron against the reference, training on the
   GPU, no host-device synchronisation inside a step, checkpoints that load on a CPU);
3. the GPU benchmark (benchmarks/bench_step.py --device cuda), then its SpikingJelly rows again
   with SpikingJelly's own kernels (--sj-backend auto);
4. full-profile notebooks (`--notebooks`, in that order; those whose data is missing are skipped)
   through tools/run_notebook.py, with their per-epoch checkpoints under `--runs`: the same
   command again resumes each run where it stopped. Each notebook gets an equal share of the time
   left, so that every one is measured even when none can finish;
5. writes to `--out`: log.txt, summary.json (each step's status and seconds; per checkpointed run
   its epochs done, seconds per epoch and the projected time to finish) and results.tar.gz (the
   benchmark JSON, executed notebooks, their JSON and figures; no checkpoints, which can be large).

`--device cpu --profile test` is the dry run that tests/test_gpu_run.py makes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NOTEBOOKS = ["10_mnist_mlp", "20_fmnist_mlp", "11_mnist_cnn", "21_fmnist_cnn", "30_cifar10_cnn"]
DATA_FOLDERS = {"mnist": ["MNIST"], "fmnist": ["FashionMNIST"], "cifar10": ["cifar-10-batches-py", "cifar-10-jpeg75"]}


def dataset_of(stem):
    """The dataset a table or ablation notebook trains on (mtsnn_tables), else None."""
    import mtsnn_tables as tb
    return tb.TABLES[stem].dataset if stem in tb.TABLES else ("cifar10" if stem in tb.ABLATIONS else None)


class Session:
    """The clock, the log and the environment every step runs in."""

    def __init__(self, budget, out, work):
        self.deadline, self.out, self.work = time.time() + budget, out, work
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p))
        self.log = open(out / "log.txt", "a")
        self.steps = []

    def left(self):
        return self.deadline - time.time()

    def say(self, text):
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name, cmd, limit=None, cwd=ROOT):
        """Run `cmd` with at most `limit` seconds (and never past the budget); record the outcome."""
        seconds = min(self.left(), limit or self.left())
        if seconds < 5:
            self.steps.append(dict(step=name, status="skipped: budget spent"))
            self.say(f"== {name}: skipped, budget spent")
            return False
        self.say(f"== {name} ({seconds:.0f} s at most): {' '.join(map(str, cmd))}")
        t0 = time.time()
        proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=seconds)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            stop(proc)
            status = "stopped at its time limit"
        self.steps.append(dict(step=name, status=status, seconds=round(time.time() - t0, 1)))
        self.say(f"== {name}: {status} after {time.time() - t0:.0f} s")
        return status == "ok"


def stop(proc):
    """End `proc` and every process it started: a Jupyter kernel runs in a session of its own, so
    stopping papermill's process group alone would leave the kernel training."""
    import psutil
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        p.kill()
    proc.wait()


def install_wheels(session, wheels):
    site = session.work / "site"
    ok = session.run("install wheels", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                         "--no-compile", "--no-cache-dir", "--upgrade", "--target", site,
                                         *sorted(wheels.glob("*.whl"))], limit=120)
    if ok:
        session.env["PYTHONPATH"] = os.pathsep.join([str(site), session.env["PYTHONPATH"]])


def unpack_data(session, archives, data_root):
    data_root.mkdir(parents=True, exist_ok=True)
    for archive in sorted(archives.glob("*.tar*")):
        done = data_root / f".unpacked-{archive.name}"
        if not done.exists():  # a second command on the same machine skips it
            with tarfile.open(archive) as tar:
                tar.extractall(data_root, filter="data")
            done.touch()
        session.say(f"== {archive.name} unpacked in {data_root}")


def run_progress(runs):
    """Per checkpointed run: epochs done of those asked, seconds per epoch, time left to finish."""
    import torch
    rows = []
    for path in sorted(runs.glob("*.pt")):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a checkpoint being written when the step was stopped
            rows.append(dict(run=path.name, error=f"{type(exc).__name__}: {exc}"))
            continue
        history, config = state.get("history", []), state.get("config", {})
        seconds = [h["seconds"] for h in history if "seconds" in h]
        per_epoch = sum(seconds) / len(seconds) if seconds else None
        asked = config.get("epochs")
        dataset = config.get("dataset") or str(config.get("data", {}).get("train", "")).split(":")[0] or None
        rows.append(dict(run=path.name, spec=config.get("spec"), dataset=dataset,
                         seed=config.get("seed"), epochs_done=len(history), epochs_asked=asked,
                         seconds_per_epoch=per_epoch, last_test_accuracy=(history[-1].get("test_accuracy")
                                                                          if history else None),
                         seconds_to_finish=(asked - len(history)) * per_epoch if per_epoch and asked else None,
                         device=state.get("device")))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole session (default 540)")
    ap.add_argument("--out", type=Path, required=True, help="folder for log.txt, summary.json, results.tar.gz")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mtsnn_gpu"), help="scratch folder (default /tmp/mtsnn_gpu)")
    ap.add_argument("--runs", type=Path, help="checkpoint folder (default WORK/runs); keep it to resume")
    ap.add_argument("--wheels", type=Path, help="a folder of wheels to install first")
    ap.add_argument("--data-archives", type=Path, help="a folder of *.tar.xz data archives to unpack into MTSNN_DATA")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu for a dry run")
    ap.add_argument("--profile", default="full", choices=["test", "quick", "full"])
    ap.add_argument("--steps", default="tests,bench,notebooks", help="which of tests,bench,notebooks to run")
    ap.add_argument("--notebooks", default=",".join(NOTEBOOKS), help="in priority order (default %(default)s)")
    ap.add_argument("--bench-args", default="", help="extra arguments for bench_step.py, e.g. '--quick'")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    runs = args.runs or args.work / "runs"
    results = args.work / "results"
    for folder in (runs, results / "notebooks", results / "figures"):
        folder.mkdir(parents=True, exist_ok=True)
    session = Session(args.budget, args.out, args.work)
    data_root = Path(session.env.setdefault("MTSNN_DATA", str(ROOT / "data")))
    session.say(f"gpu_run: budget {args.budget:.0f} s, device {args.device}, profile {args.profile}, data {data_root}")
    if args.wheels and any(args.wheels.glob("*.whl")):
        install_wheels(session, args.wheels)
    if args.data_archives:
        unpack_data(session, args.data_archives, data_root)
    steps = args.steps.split(",")
    python = sys.executable

    if "tests" in steps:
        session.run("CUDA tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                    limit=240)
    if "bench" in steps:
        extra = args.bench_args.split()
        session.run("benchmark", [python, "benchmarks/bench_step.py", "--device", args.device, *extra,
                                  "--out", results / "bench_step_device.json"], limit=300)
        session.run("benchmark, SpikingJelly's kernels",
                    [python, "benchmarks/bench_step.py", "--device", args.device, "--sj-backend", "auto",
                     "--variants", "f2,f3,relu-T1,spikingjelly", *extra,
                     "--out", results / "bench_step_device_sj_kernels.json"], limit=180)
    if "notebooks" in steps:
        stems = []
        for stem in [s for s in args.notebooks.split(",") if s]:
            folders = [data_root / f for f in DATA_FOLDERS.get(dataset_of(stem), [])]
            why = ("no such notebook" if not (ROOT / "notebooks" / f"{stem}.ipynb").exists() else
                   f"no data at {folders[0]}" if folders and not any(f.exists() for f in folders) else None)
            if why:
                session.steps.append(dict(step=stem, status=f"skipped: {why}"))
                session.say(f"== {stem}: skipped, {why}")
            else:
                stems.append(stem)
        for i, stem in enumerate(stems):  # an equal share of what is left each: every notebook gets measured
            target = results / "notebooks" / f"{stem}.ipynb"
            shutil.copy(ROOT / "notebooks" / f"{stem}.ipynb", target)
            cmd = [python, ROOT / "tools" / "run_notebook.py", "--profile", args.profile, "--replace",
                   "--figures", results / "figures", "-p", "CHECKPOINT_DIR", runs, "-p", "DEVICE", args.device]
            session.run(stem, cmd + [target], limit=session.left() / (len(stems) - i))

    summary = dict(budget_s=args.budget, device=args.device, profile=args.profile, steps=session.steps,
                   runs=run_progress(runs))
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.copy(results / "summary.json", args.out / "summary.json")
    with tarfile.open(args.out / "results.tar.gz", "w:gz") as tar:
        tar.add(results, arcname="results")
    session.say(f"gpu_run: done, {session.left():.0f} s of the budget left; "
                + "; ".join(f"{s['step']}: {s['status']}" for s in session.steps))
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped: no data") for s in session.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
