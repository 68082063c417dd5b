"""Time one training step of each paper network, for our neuron and for its peers.

What is timed: one optimiser step = forward `net(x, T)` + MSE loss against a one-hot target
(broadcast over the T steps) + backward + Adam step, on random-normal images, batch 128, T = 2
(CIFAR-10's network at batch 16 on CPU, see --cifar-batch; --quick uses 32 and 4). Every network is built by
`mtsnn_core.build_net`, so the synaptic layers are identical across variants; only the neuron
after each Conv/Linear layer changes:

    f1, f2, f3     our MultiThresholdLIF, S_max = 15, with surrogate f1 / f2 / f3
    smax1-f2       our MultiThresholdLIF with S_max = 1 (an ordinary soft-reset LIF), f2
    relu-T1        nn.ReLU in place of the neuron, run once at T = 1: the ANN
    spikingjelly   spikingjelly.activation_based.neuron.LIFNode, multi-step, its PyTorch
                   implementation (0.0.0.0.x: backend="torch"; 2.x: SJ_LIF_CUDA_IMPLEMENTATION=torch,
                   which is also what 2.x always runs on CPU; --sj-backend auto for its kernels)
    snntorch       snntorch.Leaky (single-step) in a module that loops over T and stacks
    f2-compiled    (CPU only) f2 with each neuron compiled by torch.compile (`rt.compile_neurons`,
                   the plateau runs' `compiled=True`); its warm-up steps include the compilation
    f2-bf16        (CUDA only, unless asked for with --variants) f2 under bf16 autocast, the neuron
                   and the loss in fp32
    f2-plain       (CUDA only) f2 with the plain PyTorch neuron (MTSNN_FUSED=off), not the Triton kernels
    f2-fp32, relu-T1-fp32   (CUDA only) without TF32 (rt.CUDA_POLICY turns it on for paper runs)
    f2-nondeterministic     (CUDA only) without cuDNN's deterministic algorithms

Per net, all variants are built, warmed up (3 steps each), then timed interleaved: N rounds of
one step per variant, each step timed alone with time.perf_counter (synchronising on CUDA), so a
change of load on the machine hits every variant alike. N adapts to the step times so a cell
takes a few seconds (--budget). The table reports the median.

How to read the ratios (same net, same batch, same machine, same run):
- ratio_relu = median / median of relu-T1. The ANN runs one time step, the SNNs T = 2: every
  synaptic layer after the first sees T*B samples instead of B, so about T x (the ANN) = 2.0 is
  the floor for any spiking neuron (a bit less: the first layer runs once, on B). The target 2.2
  means the neuron and its time loop cost at most ~10% on top of that floor.
- ratio_spikingjelly = median / median of the SpikingJelly LIF: < 1 is faster than SpikingJelly's
  pure-PyTorch neuron on the identical network; the target is <= 1.1.
- saved_mb: bytes held for backward by one forward (every tensor that autograd saves, counted
  once per storage, parameters excluded), measured with torch.autograd.graph.saved_tensors_hooks.
  It is exact and device-independent, unlike the process's RSS. On CUDA, peak_mb is
  torch.cuda.max_memory_allocated during one extra step minus the memory allocated before it
  (parameters and Adam state, resident, excluded; activations, gradients, temporaries included).

On a shared or loaded CPU the medians are noisy; compare ratios only within one run.

    .venv/bin/python benchmarks/bench_step.py                 # everything, figures/bench_step.json
    .venv/bin/python benchmarks/bench_step.py --quick         # smoke run, figures/bench_step.quick.json
    .venv/bin/python benchmarks/bench_step.py --nets fc1,conv2 --variants f2,relu-T1,spikingjelly
    .venv/bin/python benchmarks/bench_step.py --device cuda   # + the CUDA-only rows, figures/bench_step_cuda.json
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SpikingJelly >= 2 picks its neuron implementation by device; "torch" makes it run its
# pure-PyTorch LIF on CUDA too (on CPU it always does), i.e. what 0.0.0.0.14 calls backend="torch".
# Must be set before spikingjelly is imported; --sj-backend auto leaves SpikingJelly's choice.
_SJ_ENV = "SJ_LIF_CUDA_IMPLEMENTATION"

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mtsnn_core as mt  # noqa: E402
import mtsnn_runtime as rt  # noqa: E402

T_STEPS = 2
# CPU: the neuron costs at most ~10% over the T x ANN floor, and no more than SpikingJelly's LIF.
# CUDA (issue 14): no slower than SpikingJelly's fastest LIF backend, at most 2.5 x the ANN's step.
TARGETS_BY_DEVICE = {"cpu": {"max_ratio_relu": 2.2, "max_ratio_spikingjelly": 1.1},
                     "cuda": {"max_ratio_relu": 2.5, "max_ratio_spikingjelly": 1.0}}
OURS = ("f1", "f2", "f3")  # the rows checked against TARGETS_BY_DEVICE

# alias, spec, input shape
NETS = [(alias, mt.PAPER_NETWORKS[table][1], (3, 32, 32) if table == "Table 6" else (1, 28, 28))
        for alias, table in [("fc1", "Table 2"), ("fc2", "Table 4"), ("conv1", "Table 3"), ("conv2", "Table 5"),
                             ("cifar", "Table 6")]]
VARIANTS = ["f1", "f2", "f3", "smax1-f2", "relu-T1", "spikingjelly", "snntorch"]
# CUDA only: f2 under bf16 autocast (neuron and loss stay fp32), f2 with the plain PyTorch neuron
# instead of the fused Triton one, f2 and the ANN without TF32 (CUDA_POLICY's alternative), and f2
# without cuDNN's deterministic algorithms (rt.CUDA_POLICY's alternatives).
CUDA_ONLY = ["f2-bf16", "f2-plain", "f2-fp32", "relu-T1-fp32", "f2-nondeterministic"]
CPU_ONLY = ["f2-compiled"]  # on CUDA the neuron is the fused Triton kernel already

# Peer neurons: our dynamics where the libraries allow: h = (1 - 1/tau) u + x with tau = 10
# (SpikingJelly decay_input=False; snnTorch beta = 0.9), reset by subtraction, gradient through
# the reset not detached, ArcTan surrogate (both libraries' usual choice), threshold 1. Their
# weights get our initialisation scaled to that threshold (`_init_like_ours`), so that every layer
# fires at about the rates ours do; with PyTorch's default initialisation the deeper layers of the
# peers are silent. (Timing barely depends on it: all of this is dense arithmetic.)
PEER_TAU, PEER_VTH = 10.0, 1.0


def _init_like_ours(net, v_th=PEER_VTH):
    """build_net's initialisation for the neuron (W ~ N(V_th/fan_in, V_th/sqrt(fan_in)), b = 0)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, mean=v_th / fan_in, std=v_th / math.sqrt(fan_in))
            nn.init.zeros_(m.bias)
    return net


class SnnTorchLeaky(nn.Module):
    """snntorch.Leaky on [T, B, ...]: loops over T, fresh membrane (zeros) at every call."""

    def __init__(self):
        super().__init__()
        import snntorch
        from snntorch import surrogate
        self.cell = snntorch.Leaky(beta=1.0 - 1.0 / PEER_TAU, threshold=PEER_VTH, spike_grad=surrogate.atan(),
                                   reset_mechanism="subtract", init_hidden=False)

    def forward(self, x):
        mem = torch.zeros_like(x[0])
        spikes = []
        for t in range(x.shape[0]):
            spk, mem = self.cell(x[t], mem)
            spikes.append(spk)
        return torch.stack(spikes)


def spikingjelly_factory():
    import inspect
    from spikingjelly.activation_based import neuron, surrogate
    kwargs = dict(step_mode="m", tau=PEER_TAU, decay_input=False, v_threshold=PEER_VTH, v_reset=None,
                  detach_reset=False, surrogate_function=surrogate.ATan())
    if "backend" in inspect.signature(neuron.LIFNode.__init__).parameters:  # spikingjelly 0.0.0.0.x
        kwargs["backend"] = "torch"
    return lambda: neuron.LIFNode(**kwargs)


def make_net(variant, spec, in_shape):
    """(net, T, reset_fn) for one variant; reset_fn clears neuron state before each forward."""
    if variant in ("f1", "f2", "f3") or variant.startswith("f2-"):
        net = mt.build_net(spec, in_shape, 10, s_max=15, surrogate=variant[:2])
        if variant == "f2-compiled":
            rt.compile_neurons(net.neurons())
        return net, T_STEPS, None
    if variant == "smax1-f2":
        return mt.build_net(spec, in_shape, 10, s_max=1, surrogate="f2"), T_STEPS, None
    if variant in ("relu-T1", "relu-T1-fp32"):
        return mt.build_net(spec, in_shape, 10, activation=nn.ReLU), 1, None
    if variant == "spikingjelly":
        from spikingjelly.activation_based import functional
        net = mt.build_net(spec, in_shape, 10, activation=spikingjelly_factory())
        return _init_like_ours(net), T_STEPS, functional.reset_net
    if variant == "snntorch":
        return _init_like_ours(mt.build_net(spec, in_shape, 10, activation=SnnTorchLeaky)), T_STEPS, None
    raise ValueError(f"unknown variant {variant!r}")


def saved_for_backward_bytes(forward_loss, params):
    """Bytes of every distinct storage autograd saves during one forward, parameters excluded."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return t
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()  # saved tensors stay alive: pointers are unique
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward_loss()
    loss.backward()  # frees the graph
    return sum(seen.values())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Cell:
    """One (net, variant): the model, its optimiser, its data, and its step function."""

    def __init__(self, spec, in_shape, variant, batch, device, args):
        torch.manual_seed(0)
        net, self.T, reset = make_net(variant, spec, in_shape)
        conv = "C" in spec
        channels_last = device.type == "cuda" and args.channels_last and conv
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(device, memory_format=fmt).train()
        self.x = torch.randn(batch, *in_shape, device=device).contiguous(memory_format=fmt)
        labels = torch.randint(0, 10, (batch,), device=device)
        self.target = F.one_hot(labels, 10).float().unsqueeze(0).expand(self.T, batch, 10)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.reset, self.bf16, self.device = reset, variant.endswith("-bf16"), device
        # the process-wide switches this variant runs under, set before each of its steps
        self.fused = "off" if variant.endswith("-plain") else mt.FUSED_NEURON
        self.policy = dict(tf32=not variant.endswith("-fp32"),
                           cudnn_deterministic=not variant.endswith("-nondeterministic"))
        self.times = []

    def forward_loss(self):
        if self.reset is not None:
            self.reset(self.net)
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext():
            out = self.net(self.x, self.T)
            return F.mse_loss(out.float(), self.target)

    def timed_step(self):
        """One optimiser step; returns its wall time in seconds."""
        self.switch()
        sync(self.device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.forward_loss().backward()
        self.opt.step()
        sync(self.device)
        return time.perf_counter() - t0

    def switch(self):
        """Set the process-wide switches (neuron path, TF32, cuDNN) to this variant's."""
        mt.FUSED_NEURON = self.fused
        if self.device.type == "cuda":
            rt.configure_cuda(**self.policy)

    def saved_mb(self):
        self.switch()
        self.opt.zero_grad(set_to_none=True)
        mb = saved_for_backward_bytes(self.forward_loss, list(self.net.parameters())) / 2**20
        self.opt.zero_grad(set_to_none=True)
        return mb


def run_net(spec, in_shape, variants, batch, device, args):
    """All variants of one net, timed interleaved (round-robin, one step each per round), so that
    a change of load on the machine hits every variant alike. Returns {variant: result dict}."""
    results, cells = {}, {}
    for v in variants:
        try:
            cells[v] = Cell(spec, in_shape, v, batch, device, args)
        except Exception as exc:  # one broken peer must not lose the other cells
            traceback.print_exc()
            results[v] = dict(error=f"{type(exc).__name__}: {exc}")

    def rotate(record):
        for v, cell in list(cells.items()):
            try:
                dt = cell.timed_step()
            except Exception as exc:
                traceback.print_exc()
                results[v] = dict(error=f"{type(exc).__name__}: {exc}")
                del cells[v]
                continue
            if record:
                cell.times.append(dt)
            else:
                cell.last = dt

    for _ in range(args.warmup):
        rotate(record=False)
    round_s = sum(c.last for c in cells.values()) if cells else 1.0
    n = max(args.min_steps, min(args.max_steps, math.floor(args.budget * max(len(cells), 1) / max(round_s, 1e-6))))
    for _ in range(n):
        rotate(record=True)
    for v, cell in list(cells.items()):
        try:
            saved = cell.saved_mb()
        except Exception:
            traceback.print_exc()
            saved = None
        results[v] = dict(T=cell.T, n_steps=len(cell.times), median_ms=1e3 * statistics.median(cell.times),
                          min_ms=1e3 * min(cell.times), saved_mb=saved, peak_mb=None)
    if device.type == "cuda":  # one more step per variant, alone, for its memory above what is resident
        for v, cell in cells.items():
            cell.opt.zero_grad(set_to_none=True)
            sync(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            cell.timed_step()
            results[v]["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    cells.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def pick(items, arg, what):
    if not arg:
        return None
    wanted = [w.strip() for w in arg.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in items]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(items)}")
    return wanted


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 32 (CIFAR-10 net 4), 1 warm-up step, >= 2 timed steps per cell")
    p.add_argument("--nets", help="comma-separated aliases or specs: " + ", ".join(a for a, _, _ in NETS))
    p.add_argument("--variants", help="comma-separated: " + ", ".join(VARIANTS + CUDA_ONLY + CPU_ONLY))
    p.add_argument("--batch", type=int, help="batch of the MNIST nets (default 128; 32 with --quick)")
    p.add_argument("--cifar-batch", type=int,
                   help="batch of the CIFAR-10 net (default 128 on CUDA, 16 on CPU, 4 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant before timing (default 3; 1 with --quick)")
    p.add_argument("--budget", type=float,
                   help="seconds of timed steps per cell (default 2.0 CPU, 1.0 CUDA, 0.3 quick)")
    p.add_argument("--min-steps", type=int, help="timed steps per cell at least (default 3 CPU, 5 CUDA, 2 quick)")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="on CUDA, keep the convolutional nets in NCHW (default: channels_last)")
    p.add_argument("--sj-backend", default="torch", choices=["torch", "auto"],
                   help="SpikingJelly LIF implementation on CUDA: torch (its pure-PyTorch one, default) or auto "
                        "(its fused kernels)")
    p.add_argument("--out",
                   help="JSON path (default figures/bench_step.json; figures/bench_step.quick.json with --quick)")
    args = p.parse_args(argv)

    device = torch.device(rt.pick_device(args.device))
    if device.type == "cpu":  # as mt.train does, for every variant alike: denormals flushed, freed memory reused
        rt.configure_cpu()
    if args.sj_backend == "torch":
        os.environ.setdefault(_SJ_ENV, "torch")
    cuda = device.type == "cuda"
    targets = TARGETS_BY_DEVICE["cuda" if cuda else "cpu"]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.budget = args.budget if args.budget is not None else (0.3 if args.quick else (1.0 if cuda else 2.0))
    args.min_steps = args.min_steps if args.min_steps is not None else (2 if args.quick else (5 if cuda else 3))
    args.batch = args.batch or (32 if args.quick else 128)
    if args.warmup < 1 or args.min_steps < 1:
        raise SystemExit("--warmup and --min-steps must be >= 1")
    cifar_batch = args.cifar_batch or (4 if args.quick else (128 if cuda else 16))

    aliases = [a for a, _, _ in NETS] + [s for _, s, _ in NETS]
    nets = pick(aliases, args.nets, "nets")
    nets = [n for n in NETS if nets is None or n[0] in nets or n[1] in nets]
    variants = (pick(VARIANTS + CUDA_ONLY + CPU_ONLY, args.variants, "variants")
                or VARIANTS + (CUDA_ONLY if cuda else CPU_ONLY))

    versions = {"torch": torch.__version__}
    for lib in ("spikingjelly", "snntorch"):
        try:
            from importlib.metadata import version
            versions[lib] = version(lib)
        except Exception:
            versions[lib] = None
    print(f"device: {rt.device_name(device)}  torch {torch.__version__}  spikingjelly {versions['spikingjelly']}  "
          f"snntorch {versions['snntorch']}  T={T_STEPS}  batch {args.batch} (CIFAR-10 net {cifar_batch})"
          f"{'  [quick]' if args.quick else ''}", flush=True)

    rows, t_start = [], time.time()
    for alias, spec, in_shape in nets:
        batch = cifar_batch if alias == "cifar" else args.batch
        results = run_net(spec, in_shape, variants, batch, device, args)
        for variant in variants:
            row = dict(net=spec, variant=variant, batch=batch, **results[variant])
            rows.append(row)
            print(f"  {spec:46s} {variant:13s} " + (f"{row['median_ms']:9.2f} ms  (n={row['n_steps']})"
                  if "median_ms" in row else row["error"]), flush=True)

    for row in rows:  # ratios within a net
        base = {r["variant"]: r.get("median_ms") for r in rows if r["net"] == row["net"]}
        for key, ref in (("ratio_relu", "relu-T1"), ("ratio_spikingjelly", "spikingjelly")):
            row[key] = row["median_ms"] / base[ref] if row.get("median_ms") and base.get(ref) else None

    checks = {}
    for _, spec, _ in nets:
        mine = [r for r in rows if r["net"] == spec and r["variant"] in OURS]
        if not mine:
            continue
        checks[spec] = {}
        for r in mine:
            ok_relu = None if r["ratio_relu"] is None else r["ratio_relu"] <= targets["max_ratio_relu"]
            sj = r["ratio_spikingjelly"]
            ok_sj = None if sj is None else sj <= targets["max_ratio_spikingjelly"]
            checks[spec][r["variant"]] = dict(ratio_relu_ok=ok_relu, ratio_spikingjelly_ok=ok_sj,
                                              ok=bool(ok_relu and ok_sj) if None not in (ok_relu, ok_sj) else None)
        flags = [c["ok"] for c in checks[spec].values()]
        checks[spec]["all_ok"] = None if None in flags else all(flags)

    head = (f"{'net':46s} {'variant':13s} {'batch':>5s} {'T':>2s} {'median ms':>10s} {'x ReLU':>7s} {'x SJ':>6s} "
            f"{'saved MB':>9s}")
    head += f" {'peak MB':>8s}" if cuda else ""
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['net']:46s} {r['variant']:13s} {r['batch']:5d}  ERROR {r['error']}")
            continue
        line = (f"{r['net']:46s} {r['variant']:13s} {r['batch']:5d} {r['T']:2d} {r['median_ms']:10.2f} "
                f"{fmt(r['ratio_relu']):>7s} {fmt(r['ratio_spikingjelly']):>6s} {fmt(r['saved_mb']):>9s}")
        print(line + (f" {fmt(r['peak_mb'], '{:.1f}'):>8s}" if cuda else ""))
    print(f"\ntargets for f1/f2/f3: x ReLU <= {targets['max_ratio_relu']}, x SJ <= {targets['max_ratio_spikingjelly']}")
    for spec, c in checks.items():
        verdict = {True: "ok", None: "n/a", False: "MISSED"}
        parts = [f"{v}: {verdict[c[v]['ok']]}" for v in c if v != "all_ok"]
        print(f"  {spec:46s} " + ", ".join(parts))

    default = "bench_step" + ("_cuda" if cuda else "") + (".quick" if args.quick else "") + ".json"
    out = Path(args.out) if args.out else ROOT / "figures" / default
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("net", "variant", "batch", "T", "median_ms", "ratio_relu", "ratio_spikingjelly", "saved_mb", "peak_mb",
            "min_ms", "n_steps", "error")
    if cuda:
        rt.configure_cuda()  # the policy, not the last variant's switches, is what device_setup records
    doc = dict(device=rt.device_name(device), device_setup=rt.device_setup(device, mt.FUSED_NEURON),
               cuda_policy=rt.CUDA_POLICY,
               torch=torch.__version__, profile=device.type, quick=args.quick,
               batch=args.batch, cifar_batch=cifar_batch, T=T_STEPS, versions=versions,
               spikingjelly_backend=args.sj_backend, channels_last=bool(cuda and args.channels_last),
               runtime_s=round(time.time() - t_start, 1), provenance=rt.provenance(),
               rows=[{k: r[k] for k in keys if k in r} for r in rows], targets=targets, target_check=checks)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {out}  ({doc['runtime_s']} s)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
