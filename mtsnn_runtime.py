"""What `mtsnn_core.train` needs besides the method: checkpoints, the device and where a result came from.

- `save_checkpoint` / `load_checkpoint`: written atomically beside the previous one, read back with
  a fallback to it; `claim_checkpoint`: one training process per checkpoint;
- `pick_device`, `device_name`, `configure_cpu`, `CUDA_POLICY` / `configure_cuda` and `device_setup`
  (the device, CUDA, cuDNN, driver and precision flags a result's numbers depend on);
- `provenance`: the git commit (or $MTSNN_COMMIT), torch version and CPU model.

Of the other mtsnn_* modules it imports only `mtsnn_base`; `mtsnn_core` imports it.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import warnings
from pathlib import Path

import torch

from mtsnn_base import _atomic_save, _check_device


def compile_neurons(neurons, max_steps=2):
    """Compile each neuron's forward (and its autograd backward) with torch.compile: the time loop's
    element-wise steps fuse into one loop per step. Same spikes, gradients equal to float rounding
    (~1e-7 relative); one training step of the CIFAR-10 and MNIST CNNs at T = 2 27-40 % shorter on
    one CPU thread, the MLPs slightly longer (docs/long_runs.md). Inputs of more than `max_steps`
    steps run eagerly: Inductor unrolls the loop and recomputes each step's potential from the first
    step on, so at T = 3 a step of the shallow CIFAR-10 network costs the same and at T = 5 25 % more
    than eager (and the big layer's forward alone 3 times as much). Compiles again for each layer,
    batch shape and grad mode (~30 graphs for a CNN trained and tested: a minute or two, once per
    process), so Dynamo's limit of 8 per function is raised."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for n in neurons:
        eager, compiled = n.forward, torch.compile(n.forward, dynamic=False)
        n.forward = lambda x, eager=eager, compiled=compiled: (compiled if len(x) <= max_steps else eager)(x)


def save_checkpoint(state, path):
    """Write `state` to `path` atomically, keeping the checkpoint it replaces as `path` + ".prev": a
    kill at any moment leaves at least one complete checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(state, path, keep_previous=True)


def load_checkpoint(path):
    """The newest readable checkpoint at `path` (else its ".prev"), loaded onto the CPU; None if
    neither exists. An unreadable newest one is reported and skipped."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".prev")):
        if not candidate.exists():
            continue
        try:
            return torch.load(candidate, map_location="cpu")
        except Exception as exc:  # truncated or empty: a kill during a save without os.replace
            warnings.warn(f"checkpoint {candidate} is unreadable ({type(exc).__name__}: {exc}); "
                          "trying the previous one", stacklevel=2)
    return None


_CLAIMED = {}  # resolved checkpoint path -> the descriptor of its lock file, held until the process ends


def claim_checkpoint(path, load=True):
    """Lock `path` for this process's training (a ".lock" file beside it, held until the process ends)
    and return `load_checkpoint(path)` (None without `load`). A second process training the same
    checkpoint, such as a notebook run beside a background run, stops with an error instead of
    interleaving its epochs with the other's."""
    path = Path(path)
    if str(path.resolve()) not in _CLAIMED:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"checkpoint {path} is being trained by another process (it holds {lock}); "
                               "let it finish (tools/long_runs.py status) or train into another folder") from None
        _CLAIMED[str(path.resolve())] = fd
    return load_checkpoint(path) if load else None


def pick_device(device="auto", profile=None):
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is checked and returned.
    The full profile (the paper's settings: CPU weeks for Table 6) refuses to fall back to a CPU:
    ask for it by name (device="cpu") to run it there anyway."""
    if device == "auto" and profile == "full" and not torch.cuda.is_available():
        raise RuntimeError("the full profile found no GPU; it takes days to weeks of CPU time (docs/gpu.md, "
                           "'On a GPU'). To run it on this CPU anyway, ask for it: DEVICE='cpu' "
                           "(papermill -p DEVICE cpu, or make PROFILE=full DEVICE=cpu)")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else str(_check_device(device))


def device_name(device):
    """The GPU's name, or "cpu (<model>, <n> threads)" with the threads torch uses now."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({_cpu_model()}, {torch.get_num_threads()} threads)"


def _cpu_model():
    import platform
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def configure_cpu():
    """Process-wide settings for training on a CPU; neither changes a result, only its speed.

    - Tiny gradients in the surrogate's tails become denormal floats, 10-100x slower on x86 (a CNN
      step: 0.15 s -> 1.3 s): they are flushed to zero (the MLP results bit for bit the same).
    - glibc's malloc hands big blocks (over a threshold of at most 32 MB) back to the OS when they
      are freed, so every training step page-faults its big activations and gradients in again: zero-filling the 64 MB
      gradient of the shallow CIFAR-10 network's first pooling at T = 5 took 51 ms, 4 ms in reused
      memory. Freed memory now stays with the process (M_MMAP_MAX = 0, M_TRIM_THRESHOLD 2 GiB, what
      MALLOC_MMAP_MAX_=0 does at start-up): that network's training step with binary spikes, batch
      128, one idle thread, 790-810 -> 626-762 ms at T = 5 and 191 -> 172 ms at T = 1; a ReLU step
      the same. Other C libraries are left as they are.
    """
    torch.set_flush_denormal(True)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this process runs on
    if mallopt is not None:
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
        mallopt(m_mmap_max, 0)
        mallopt(m_trim_threshold, 2**31 - 1)


# How paper runs use a GPU, chosen once and written into every result (`device_setup`): TF32 for
# convolutions and matrix products (tensor cores; a rounding of the synaptic input ~1e-3, far below
# the integer spikes' own granularity; fp32 made the CIFAR-10 step 2.2x slower on an H200), cuDNN's
# autotuner on (fixed shapes) and restricted to deterministic algorithms (at most +5 % per step there):
# with the fused neuron, a GPU run is then bit-reproducible on the same card and software.
# benchmarks/bench_step.py times the alternatives (f2-fp32, f2-nondeterministic).
CUDA_POLICY = dict(tf32=True, cudnn_benchmark=True, cudnn_deterministic=True)


def configure_cuda(tf32=None, cudnn_benchmark=None, cudnn_deterministic=None):
    """Apply CUDA_POLICY (or the settings given) to this process."""
    policy = dict(CUDA_POLICY)
    policy.update({k: v for k, v in dict(tf32=tf32, cudnn_benchmark=cudnn_benchmark,
                                         cudnn_deterministic=cudnn_deterministic).items() if v is not None})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = policy["tf32"]
    torch.backends.cudnn.benchmark = policy["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = policy["cudnn_deterministic"]
    return policy


def device_setup(device, fused_neuron=None):
    """What a result's numbers depend on besides the code: the device and, on CUDA, its CUDA, cuDNN
    and driver versions, the TF32 and cuDNN flags in force and whether the neuron ran fused.
    `fused_neuron`: the neuron's setting (`mtsnn_core.FUSED_NEURON`, which `train` passes); None
    reads $MTSNN_FUSED as the core does when it is imported."""
    if fused_neuron is None:
        fused_neuron = os.environ.get("MTSNN_FUSED", "cuda")
    device = torch.device(device)
    setup = dict(device=device_name(device), torch=str(torch.__version__))
    if device.type == "cuda":
        setup.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=_nvidia_driver(),
                     tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                     cudnn_benchmark=torch.backends.cudnn.benchmark,
                     cudnn_deterministic=torch.backends.cudnn.deterministic, fused_neuron=fused_neuron != "off")
    return setup


def _nvidia_driver():
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance():
    """Which code and software made a result: the git commit (with a flag for uncommitted changes
    to the code outside notebooks/, figures/ and weights/), the torch version and the CPU model.
    $MTSNN_COMMIT ("<sha>" or "<sha>-dirty", e.g. `git describe --always --dirty --abbrev=40` where
    the run is sent from) overrides git: a copy of the tree on a borrowed machine may carry stale git
    metadata."""
    import subprocess
    sent = os.environ.get("MTSNN_COMMIT")
    if sent:
        return dict(commit=sent.removesuffix("-dirty"), dirty=sent.endswith("-dirty"), torch=str(torch.__version__),
                    cpu=_cpu_model(), commit_from="MTSNN_COMMIT")
    here = Path(__file__).resolve().parent
    git = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=10)
    try:
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        # outputs and notebooks (which carry their own source) do not count: a batch rewrites them as it goes
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!figures", ":!notebooks",
                         ":!weights").stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    return dict(commit=commit, dirty=dirty, torch=str(torch.__version__), cpu=_cpu_model())
