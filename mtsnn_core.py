"""Multi-threshold spiking neural networks trained directly by backpropagation through time.

The core of the replication of Xu, Liu & Yang, *Direct training via backpropagation for ultra-low-latency
spiking neural networks with multi-threshold* (Symmetry 2022, arXiv 2112.07426); equation numbers are its:

1. surrogate derivative curves f1, f2, f3 (eqs. 14-16)
2. the multi-threshold LIF neuron (eqs. 1-5) and its backward pass (eqs. 9-13)
3. `build_net`, which parses the paper's network notation ("15C5-P2-40C5-P2-300"); `initialised_net`
4. `train`: Adam + MSE on output spikes (eq. 6), per-epoch evaluation, checkpoint/resume;
   `evaluate`, `train_epoch`, `load_model`, `export_weights`

The paper's settings (Table 1, its networks, learning rates) are named once, below the imports.
Below the core: `mtsnn_base` (argument checks), `mtsnn_data` (`load_dataset`), `mtsnn_runtime` (checkpoints,
device, provenance); above it `mtsnn_runs` (`train_sweep`, result JSON, plots, `energy_report`).
"""
from __future__ import annotations

import math
import os
import re
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtsnn_base import _atomic_save, _check_device, _expect, _positive, _positive_int
from mtsnn_data import _IN_SHAPES, DATASETS, Dataset, load_dataset
from mtsnn_runtime import (claim_checkpoint, compile_neurons, configure_cpu, configure_cuda, device_name, device_setup,
                           load_checkpoint, provenance, save_checkpoint)

# The paper's settings, named once for every notebook: Table 1's neuron and time steps (batch 128,
# Adam beta 0.9/0.999, eps 1e-8 and 200 epochs are `train`'s and the notebooks'), its learning
# rate per dataset, and the network of each results table. QUICK_CIFAR10_SPEC is ours: the paper's
# CIFAR-10 network at 1/6 of its width, for CPU budgets (notebook 30).
TABLE1 = dict(T=2, s_max=15, surrogate="f2", alpha_h=1.0, alpha_w=20.0, v_th=10.0, tau_m=10.0)
PAPER_LR = {"mnist": 0.005, "fmnist": 0.005, "cifar10": 0.0005}
PAPER_NETWORKS = {"Table 2": ("mnist", "784-800-10"), "Table 3": ("mnist", "15C5-P2-40C5-P2-300"),
                  "Table 4": ("fmnist", "784-400-400-10"), "Table 5": ("fmnist", "32C5-P2-64C5-P2-1024"),
                  "Table 6": ("cifar10", "96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024")}
QUICK_CIFAR10_SPEC = "16C3-32C3-P2-64C3-P2-64C3-32C3-256-256"

# ----------------------------------------------------------------------------------------------
# 1. Surrogate derivative curves (eqs. 14-16)
# ----------------------------------------------------------------------------------------------
# The true derivative of the staircase s(u) = clamp(floor(u/V_th), 0, S_max) is a comb of Dirac
# pulses at u = i*V_th, i = 1..S_max (Fig. 4). Each curve below replaces that comb.


def comb_window(v_th, s_max, alpha_w):
    """(reach, width): a Gaussian of f1/f2 further than reach + 1/2 thresholds from u is below
    1e-9*alpha_H there, so the `width` = 2*reach + 1 thresholds nearest to u (at most S_max) suffice."""
    reach = max(0, math.ceil(math.sqrt(alpha_w * math.log(1e9 * s_max)) / v_th - 0.5))
    return reach, min(2 * reach + 1, s_max)


def _gaussian_comb(u, v_th, s_max, alpha_h, alpha_w, narrowing):
    """Sum over thresholds i of a_i * exp(-(u - i*V_th)^2 / w_i): f1 (a_i = i, w_i = alpha_w/i)
    and f2 (a_i = 1, w_i = alpha_w) share this code.

    Only the `width` thresholds nearest to u are summed, one term at a time (no S_max-fold temporaries):
    every Gaussian outside lies at least (reach + 1/2)*V_th from u, below 1e-9*alpha_H there; a window
    covering the comb gives the equation term for term. Clamped to 1..S_max as a whole, it needs no
    masks at the comb's ends. Exponents are clamped at -80: below, exp yields denormal floats, which the
    CPU computes 100-250x more slowly.
    """
    reach, width = comb_window(v_th, s_max, alpha_w)
    first = torch.round(u / v_th).sub_(reach).clamp_(1, s_max - width + 1)  # lowest threshold summed
    offset = torch.add(u, first, alpha=-v_th)  # u - first*V_th
    total, term = torch.zeros_like(u), torch.empty_like(u)
    for k in range(width):  # threshold i = first + k, at distance offset - k*V_th
        torch.sub(offset, k * v_th, out=term).square_()
        if narrowing:
            i = first + k
            total.addcmul_(i, term.mul_(i).mul_(-1.0 / alpha_w).clamp_(min=-80.0).exp_())
        else:
            total.add_(term.mul_(-1.0 / alpha_w).clamp_(min=-80.0).exp_())
    return total.mul_(alpha_h)


def surrogate_f1(u, v_th=10.0, s_max=15, alpha_h=1.0, alpha_w=20.0):
    """Eq. 14: f1(u) = sum_{i=1..S_max} i*alpha_H*exp(-(u - i*V_th)^2 / (alpha_W/i)).

    Pulse i has height i*alpha_H and narrows with i, so f1 exceeds 1 near the high thresholds."""
    _check_neuron_args(v_th=v_th, s_max=s_max)
    return _gaussian_comb(u, v_th, s_max, alpha_h, alpha_w, narrowing=True)


def surrogate_f2(u, v_th=10.0, s_max=15, alpha_h=1.0, alpha_w=20.0):
    """Eq. 15: f2(u) = sum_{i=1..S_max} alpha_H*exp(-(u - i*V_th)^2 / alpha_W). The paper's default."""
    _check_neuron_args(v_th=v_th, s_max=s_max)
    return _gaussian_comb(u, v_th, s_max, alpha_h, alpha_w, narrowing=False)


def surrogate_f3(u, v_th=10.0, s_max=15, alpha_h=1.0, alpha_w=None):
    """Eq. 16: a trapezoid. 0 below 0, alpha_H*u/V_th up to V_th, alpha_H up to S_max*V_th, a linear
    fall to 0 at (S_max+1)*V_th, 0 above. alpha_w is unused (kept for a common signature).

    All four pieces are alpha_H * clamp(min(u/V_th, S_max + 1 - u/V_th), 0, 1)."""
    _check_neuron_args(v_th=v_th, s_max=s_max)
    x = u / v_th
    return alpha_h * torch.clamp(torch.minimum(x, (s_max + 1) - x), 0.0, 1.0)


SURROGATES = {"f1": surrogate_f1, "f2": surrogate_f2, "f3": surrogate_f3}
RESET_GRADS = ("paper", "bptt", "detach")


def _check_neuron_args(v_th=10.0, tau_m=10.0, s_max=15, surrogate="f2", reset_grad="paper"):
    if not (isinstance(s_max, int) and s_max >= 1):
        raise ValueError(f"s_max must be an integer >= 1, got {s_max!r}")
    if not v_th > 0:
        raise ValueError(f"v_th must be > 0, got {v_th!r}")
    if not tau_m >= 1:
        raise ValueError(f"tau_m must be >= 1 (time steps of 1 ms), got {tau_m!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if reset_grad not in RESET_GRADS:
        raise ValueError(f"reset_grad must be one of {RESET_GRADS}, got {reset_grad!r}")


# ----------------------------------------------------------------------------------------------
# 2. The multi-threshold LIF neuron (eqs. 1-5) and its gradient (eqs. 9-13)
# ----------------------------------------------------------------------------------------------


# On CUDA the neuron runs as two Triton kernels (mtsnn_fused.py), the arithmetic of the PyTorch code
# below, which stays the reference and the CPU path. MTSNN_FUSED=off keeps CUDA on the reference; =all
# also sends CPU tensors to the kernels (needs TRITON_INTERPRET=1: the tests use it).
FUSED_NEURON = os.environ.get("MTSNN_FUSED", "cuda")
if FUSED_NEURON not in ("cuda", "off", "all"):
    raise ValueError(f"MTSNN_FUSED must be cuda (the default), off or all, got {FUSED_NEURON!r}")


def _fused_module():
    import mtsnn_fused
    return mtsnn_fused


def _fused(x):
    return FUSED_NEURON != "off" and (FUSED_NEURON == "all" or x.is_cuda) and _fused_module().supported(x)


class _MultiThresholdFire(torch.autograd.Function):
    """The neuron over all T steps as one autograd node: forward runs charge -> fire -> reset,
    backward runs the same loop in reverse. Saves only the pre-reset potentials h[t]."""

    @staticmethod
    def forward(ctx, x, neuron):
        spikes, h_all = neuron.run(x)
        if neuron.keep_residual:  # the output layer's, for the readout's tie rule
            neuron.residual = h_all[-1] - spikes[-1] * neuron.v_th
        ctx.save_for_backward(h_all)
        ctx.neuron = neuron
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (h_all,) = ctx.saved_tensors
        n = ctx.neuron
        if _fused(h_all):
            window = None if n.surrogate == "f3" else comb_window(n.v_th, n.s_max, n.alpha_w)
            return _fused_module().backward(h_all, grad_spikes, n, window), None
        decay, v_th, mode = 1.0 - 1.0 / n.tau_m, n.v_th, n.reset_grad
        grad_h = torch.empty_like(grad_spikes)  # dL/dh[t] = dL/dx[t], since h[t] = decay*u[t-1] + x[t]
        T = h_all.shape[0]
        for t in reversed(range(T)):
            f = n.surrogate_fn(h_all[t])  # f ~ ds/dh at the pre-reset potential
            g = torch.mul(grad_spikes[t], f, out=grad_h[t])
            if t + 1 < T:  # dL/du[t] = decay * dL/dh[t+1]; u[T-1] feeds nothing
                if mode == "bptt":  # du/dh = 1 - V f
                    g.addcmul_(grad_h[t + 1], f.mul(-v_th).add_(1.0), value=decay)
                else:  # "paper" and "detach": du/dh = 1 (paper divides it below)
                    g.add_(grad_h[t + 1], alpha=decay)
            if mode == "paper":  # implicit reset: ds/dh = f/(1+V f), du/dh = 1/(1+V f)
                g.div_(f.mul_(v_th).add_(1.0))
        return grad_h, None


class MultiThresholdLIF(nn.Module):
    """Leaky integrate-and-fire neuron that emits an integer number of spikes, 0..S_max, per step.

    Input: current x of shape [T, B, ...]; output: spikes of the same shape (integer values in a
    float tensor). With u[-1] = 0 at every call, for t = 0..T-1:

        h[t] = (1 - 1/tau_m) u[t-1] + x[t]              charge (eq. 1)
        s[t] = clamp(floor(h[t] / V_th), 0, S_max)      fire   (eq. 5)
        u[t] = h[t] - s[t] V_th                          reset by subtraction (eq. 4)

    With s_max=1 this is the ordinary soft-reset LIF, spike for spike.

    Backward, with f = surrogate(h[t]) standing in for ds/dh, `reset_grad` says how the reset is differentiated:

    - "paper": eqs. 11-13 differentiate eq. 4 implicitly (the reset depends on the membrane it resets):
      every path through h[t] is divided by (1 + V_th f): ds/dh = f/(1 + V_th f), du/dh = 1/(1 + V_th f),
      the error sent to lower layers too (dL/dx[t] = dL/dh[t]; eq. 9 as printed leaves it out). At T = 1
      the output layer's weight gradient is exactly eq. 13 times eq. 10.
    - "bptt": plain autograd through u = h - s V_th: ds/dh = f, du/dh = 1 - V_th f. With V_th = 10
      and f up to ~1 this factor flips sign and amplifies, and training collapses.
    - "detach": the reset as a constant: ds/dh = f, du/dh = 1.

    `run(x)`: the same forward without autograd, with the pre-reset potentials h. After each forward,
    `firing_rate` (spikes per neuron per step) and `spike_sum`; with `keep_residual` (the output
    layer's neuron), `residual`: the potential u[T-1] left after the last step.
    """

    def __init__(self, v_th=10.0, tau_m=10.0, s_max=15, surrogate="f2", alpha_h=1.0, alpha_w=20.0, reset_grad="paper"):
        super().__init__()
        _check_neuron_args(v_th, tau_m, s_max, surrogate, reset_grad)
        self.v_th, self.tau_m, self.s_max = float(v_th), float(tau_m), s_max
        self.surrogate, self.alpha_h, self.alpha_w, self.reset_grad = surrogate, alpha_h, alpha_w, reset_grad
        self.firing_rate = self.spike_sum = self.residual = None
        self.keep_residual = False

    def surrogate_fn(self, h):
        return SURROGATES[self.surrogate](h, self.v_th, self.s_max, self.alpha_h, self.alpha_w)

    def run(self, x):
        """The forward dynamics without autograd: (spikes, pre-reset potentials h), both [T, B, ...]."""
        if _fused(x):
            return _fused_module().forward(x, self)
        decay = 1.0 - 1.0 / self.tau_m
        h_all, spikes = torch.empty_like(x), torch.empty_like(x)
        u = torch.zeros_like(x[0])
        for t in range(x.shape[0]):
            h = torch.add(x[t], u, alpha=decay, out=h_all[t])  # charge:  h = (1 - 1/tau) u + I  (eq. 1)
            s = torch.div(h, self.v_th, out=spikes[t]).floor_().clamp_(0, self.s_max)  # fire (eq. 5)
            torch.sub(h, s, alpha=self.v_th, out=u)  # reset by subtraction:  u = h - s*V_th  (eq. 4)
        return spikes, h_all

    def forward(self, x):
        if x.dim() < 2:
            raise ValueError(f"MultiThresholdLIF expects input of shape [T, B, ...], got {tuple(x.shape)}")
        if x.dtype in (torch.float16, torch.bfloat16):  # under autocast the neuron stays in fp32: floor() needs it
            x = x.float()
        spikes = _MultiThresholdFire.apply(x, self)
        with torch.no_grad():
            self.spike_sum = spikes.sum()
            self.firing_rate = self.spike_sum / spikes.numel()
        return spikes

    def extra_repr(self):
        return (f"v_th={self.v_th}, tau_m={self.tau_m}, s_max={self.s_max}, surrogate={self.surrogate}, "
                f"alpha_h={self.alpha_h}, alpha_w={self.alpha_w}, reset_grad={self.reset_grad}")


# ----------------------------------------------------------------------------------------------
# 3. Networks in the paper's notation
# ----------------------------------------------------------------------------------------------


class TimeFolded(nn.Module):
    """Runs a synaptic layer once on [T*B, ...] and returns [T, B, ...]: only neurons loop over time."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        y = self.layer(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


def readout(out_spikes, residual):
    """The class with the most output spikes over the T steps ([T, B, classes] -> [B]). Classes tied
    on spikes (all silent, say) are told apart by the potential `residual` [B, classes] each has left:
    the one closest to its next spike wins; the class order decides only an exact tie of both. Compared
    as the pair (count, residual): a tie-break term added to the count rounds away in float32."""
    counts = out_spikes.sum(0)
    tied = counts == counts.amax(1, keepdim=True)
    return residual.masked_fill(~tied, -math.inf).argmax(1)


class SpikingNet(nn.Module):
    """A stack of synaptic layers, each Conv/Linear followed by a neuron, in the paper's notation.

    `forward(images, T)` feeds the (normalised, real-valued) image as the same input current at
    every step (direct encoding): the first synaptic layer runs once on [B, ...] and its output
    is repeated over T. Returns the output layer's spikes, shape [T, B, n_classes], integers
    0..S_max per step; `predict` reads them out.
    """

    def __init__(self, spec, first, rest):
        super().__init__()
        self.spec, self.first, self.rest = spec, first, rest
        self.precision = "float32"  # "bfloat16": synaptic layers under autocast; neurons and spikes stay float32

    def forward(self, images, T=2):
        if T < 1:
            raise ValueError(f"T (time steps) must be >= 1, got {T!r}")
        with torch.autocast(images.device.type, torch.bfloat16, enabled=self.precision == "bfloat16"):
            current = self.first(images)
            return self.rest(current.unsqueeze(0).expand(T, *current.shape))

    def predict(self, out_spikes):
        """`readout` of the output spikes with the potentials the output layer has left: call it right
        after the forward pass that produced `out_spikes`."""
        out = self.neurons()[-1]
        if out.residual is None or out.residual.shape != out_spikes.shape[1:]:
            raise ValueError("predict needs the output potentials of the forward pass that produced out_spikes")
        return readout(out_spikes, out.residual)

    def neurons(self):
        return [m for m in self.modules() if isinstance(m, MultiThresholdLIF)]

    @torch.no_grad()
    def record(self, images, T=2):
        """Every neuron layer's input current x, pre-reset potential h and spikes s during one
        forward pass: a list (input side first) of dicts of [T, B, ...] tensors on the CPU."""
        records = []
        hooks = [n.register_forward_hook(lambda n, inputs, s: records.append(
            dict(x=inputs[0].cpu(), h=n.run(inputs[0])[1].cpu(), s=s.cpu()))) for n in self.neurons()]
        try:
            self(images, T)
        finally:
            for hook in hooks:
                hook.remove()
        return records


_TOKEN = re.compile(r"^(?:(\d+)C(\d+)|P(\d+)|(\d+))$")


def build_net(spec, in_shape, n_classes, *, activation=None, init_gain=0.5, init_mean="output", init_std=None,
              **neuron_kwargs):
    """Parse the paper's notation into a `SpikingNet`.

    Tokens, separated by '-': `NCk` a k x k convolution with N filters (stride 1; padding 1 for
    3x3 kernels, none for larger ones, as in the TSSL-BP configurations these networks come
    from), `Pk` k x k max pooling, `N` a fully connected layer of N units. An MLP spec starts with
    the input size (`784-800-10`); its first token must equal prod(in_shape). The classifier
    layer to `n_classes` is appended unless the spec ends with it.

    Every Conv/Linear layer is followed by `MultiThresholdLIF(**neuron_kwargs)`, or by
    `activation()` when given (e.g. `nn.ReLU`, for the ANN baseline and the benchmark). Pooling
    takes the max of each window of spike counts: the result is again an integer spike map, so it
    needs no neuron of its own and the next layer still only accumulates.

    Initialisation, our reading of eq. 17 (W ~ [V_th/N_{l-1}, 0.5]; N_{l-1} the fan-in), bias 0:
    W ~ Normal(mean, std = init_gain * V_th/sqrt(N_{l-1})), so that a layer's current spreads by about
    init_gain * V_th * rms(input) whatever its width (`init_std`: one std for every layer; 0.5 is eq. 17
    read literally). The mean V_th/N_{l-1} goes to the output layer only (`init_mean="output"`): in
    every layer ("all"), the first error, "fewer spikes" on 9 of 10 outputs, reaches every weight with
    one sign (spikes are never negative) and Adam silences whole layers (notebook 45). `train` then
    scales each layer to a firing rate (`calibrate_init`). With `activation`: PyTorch's default init.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string like '784-800-10', got {spec!r}")
    tokens = spec.replace(" ", "").split("-")
    parsed = [_TOKEN.match(t) for t in tokens]
    for tok, m in zip(tokens, parsed):
        if m is None:
            raise ValueError(f"spec {spec!r}: cannot parse {tok!r}; expected NCk (conv), Pk (pool) or N (units)")
    for tok, m in zip(tokens, parsed):
        if any(int(g) < 1 for g in m.groups() if g is not None):
            raise ValueError(f"spec {spec!r}: {tok!r} has a size of 0; every count and kernel size must be >= 1")
    _expect("in_shape", in_shape, (tuple, list, torch.Size),
            lambda v: all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v),
            "a tuple of positive integers, (features,) or (C, H, W)")
    _positive_int("n_classes", n_classes)
    _positive("init_gain", init_gain)
    if init_std is not None:
        _positive("init_std", init_std)
    shape = tuple(in_shape)
    if len(shape) not in (1, 3):
        raise ValueError(f"in_shape must be (features,) or (C, H, W), got {in_shape!r}")
    if all(m.group(4) is not None for m in parsed):  # an MLP: the first token is the input size
        if int(parsed[0].group(4)) != math.prod(shape) or len(parsed) < 2:
            raise ValueError(f"spec {spec!r}: an MLP spec starts with the input size {math.prod(shape)} "
                             f"(in_shape {tuple(in_shape)}) and has at least one layer after it")
        parsed = parsed[1:]
    if parsed[-1].group(4) is None or int(parsed[-1].group(4)) != n_classes:
        parsed.append(_TOKEN.match(str(n_classes)))
    if activation is None:
        neuron_kwargs.setdefault("v_th", 10.0)
        _check_neuron_args(**{k: v for k, v in neuron_kwargs.items()
                              if k in ("v_th", "tau_m", "s_max", "surrogate", "reset_grad")})
        make_neuron = lambda: MultiThresholdLIF(**neuron_kwargs)
    else:
        make_neuron = activation
    if init_mean not in ("output", "all"):
        raise ValueError(f"init_mean must be 'output' or 'all', got {init_mean!r}")

    layers = []
    for m in parsed:
        n_conv, k_conv, k_pool, n_fc = m.groups()
        if n_conv is not None:
            if len(shape) != 3:
                raise ValueError(f"spec {spec!r}: convolution {m.group(0)} after a fully connected layer")
            k = int(k_conv)
            layer = nn.Conv2d(shape[0], int(n_conv), k, padding=1 if k == 3 else 0)
            shape = (int(n_conv), shape[1] + 2 * layer.padding[0] - k + 1, shape[2] + 2 * layer.padding[0] - k + 1)
        elif k_pool is not None:
            if len(shape) != 3:
                raise ValueError(f"spec {spec!r}: pooling {m.group(0)} after a fully connected layer")
            layers.append(nn.MaxPool2d(int(k_pool)))
            shape = (shape[0], shape[1] // int(k_pool), shape[2] // int(k_pool))
            continue
        else:
            if len(shape) == 3:
                layers.append(nn.Flatten())
            layer = nn.Linear(math.prod(shape), int(n_fc))
            shape = (int(n_fc),)
        if min(shape) < 1:
            raise ValueError(f"spec {spec!r} shrinks the input {tuple(in_shape)} to nothing at {m.group(0)}")
        if activation is None:
            fan_in, v_th = layer.weight[0].numel(), neuron_kwargs["v_th"]
            mean = v_th / fan_in if init_mean == "all" or m is parsed[-1] else 0.0
            std = init_std if init_std is not None else init_gain * v_th / math.sqrt(fan_in)
            nn.init.normal_(layer.weight, mean=mean, std=std)
            nn.init.zeros_(layer.bias)
        layers += [layer, make_neuron()]
    if activation is None:
        layers[-1].keep_residual = True  # the output neuron: `SpikingNet.predict` breaks ties with it
    n_first = next(i for i, layer in enumerate(layers) if isinstance(layer, (nn.Conv2d, nn.Linear))) + 1
    first = nn.Sequential(*layers[:n_first])  # runs once on [B, ...]: the input current is the same every step
    rest = nn.Sequential(*[layer if _is_neuron(layer) else TimeFolded(layer) for layer in layers[n_first:]])
    return SpikingNet(spec, first, rest)


def _is_neuron(layer):
    return not isinstance(layer, (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.Flatten))


def output_start(s_max, n_classes=10):
    """The output layer's default starting rate, spikes per neuron per step: 1/6 of the loss's balance
    point S_max/n_classes (0.25 at S_max = 15, 1/60 at S_max = 1)."""
    return s_max / (6 * n_classes)


def _bisect(too_low, lo, hi):
    """Where the monotone test `too_low(v)` turns False in [lo, hi], halved 40 times."""
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if too_low(mid) else (lo, mid)
    return (lo + hi) / 2


@torch.no_grad()
def calibrate_init(net, images, rate=1.0, output_rate=None, T=2, spread=None):
    """Scale each synaptic layer, bottom up, so that the neuron layer it feeds fires `rate` spikes
    per neuron per step on average over `images` (the layers below already scaled), and the
    output layer `output_rate` (None: `output_start`), each at most S_max/4 (with S_max = 1 a rate
    of 1 would have every neuron fire at every step: a saturated layer passes no information).
    Returns the factors (per channel where centred).
    A spike count grows with the current, which is linear in the weights: a bisection on one factor
    per layer finds the rate. The output starts well below S_max/n_classes, the rate the loss asks of
    it: above that, "fewer spikes" on nine wrong classes outweighs "more" on the right one, and Adam
    pushes whole output neurons below threshold, where the surrogate is ~0, for good (docs/choices.md).

    With `spread` (mV per spike level) each hidden channel is centred instead: its current spreads by
    spread*S_max about one mean per layer, the mean that fires `rate`. Binary spikes need it: uncentred,
    channels start at different means, and training pushes them out of the few millivolts where one
    threshold's surrogate is not ~0, below (silent) or above (always firing), for good (docs/choices.md)."""
    _expect("net", net, SpikingNet, expected="a SpikingNet from build_net (with spiking neurons)")
    _expect("images", images, torch.Tensor, lambda v: v.dim() >= 2 and len(v) >= 1, "a tensor [N, ...] of images")
    _positive("rate", rate)
    for name, value in (("output_rate", output_rate), ("spread", spread)):
        if value is not None:
            _positive(name, value)
    _positive_int("T", T)
    current = net.first(images)
    x, factors = current.unsqueeze(0).expand(T, *current.shape), []
    synapse, n_layers = net.first[-1], len(net.neurons())
    for module in net.rest:
        if isinstance(module, MultiThresholdLIF):
            last = len(factors) == n_layers - 1
            out = output_rate or output_start(module.s_max, x.shape[-1])  # x: the output current [T, B, classes]
            target = min(out if last else rate, module.s_max / 4)
            if spread is None or last:  # one factor for the layer, found on its log2
                factor = 2 ** _bisect(lambda e: module.run(x * 2 ** e)[0].mean() < target, -12.0, 12.0)
                synapse.weight.mul_(factor), synapse.bias.mul_(factor)
                x = x * factor
            else:  # x: [T, B, channels, ...]
                dims, channel = [d for d in range(x.dim()) if d != 2], (1, 1, -1) + (1,) * (x.dim() - 3)
                mean, factor = x.mean(dims), spread * module.s_max / x.std(dims).clamp_min(1e-6)
                x = (x - mean.view(channel)) * factor.view(channel)
                shift = _bisect(lambda b: module.run(x + b)[0].mean() < target, -100 * module.v_th, 100 * module.v_th)
                synapse.weight.mul_(factor.view((-1,) + (1,) * (synapse.weight.dim() - 1)))
                synapse.bias.sub_(mean).mul_(factor).add_(shift)
                x = x + shift
            x = module.run(x)[0]
            factors.append(factor)
        else:
            x = module(x)
            synapse = module.layer if isinstance(module, TimeFolded) else synapse
    return factors


def initialised_net(spec, images, n_classes=10, *, T=2, init_rate=1.0, init_output_rate=None, init_spread=None,
                     **kwargs):
    """`build_net` scaled by `calibrate_init` on the first 256 `images` (init_rate=None: not scaled): the
    network `train` starts from. Draws from torch's global RNG."""
    net = build_net(spec, images.shape[1:], n_classes, **kwargs).to(images.device)
    if init_rate is not None:
        calibrate_init(net, images[:256], init_rate, init_output_rate, T, init_spread)
    return net


# ----------------------------------------------------------------------------------------------
# 4. Training: Adam, MSE on output spikes (eq. 6), evaluation every epoch, checkpoint/resume
# ----------------------------------------------------------------------------------------------


def spike_mse_loss(out_spikes, labels, s_max, label_margin=0):
    """Eq. 6 summed over the T steps and the classes, averaged over the batch:
    L = 1/2 sum_t sum_i (y_i[t] - s_i[t])^2, with desired firing y_i[t] = S_max + `label_margin` for the
    labelled class and 0 for every other class, at every step: with no margin the most and the fewest
    spikes an output can emit; a margin beyond reach keeps pushing a firing label's output up while its
    surrogate has slope, which binary spikes need (docs/choices.md)."""
    target = F.one_hot(labels, out_spikes.shape[-1]).to(out_spikes) * (s_max + label_margin)
    return 0.5 * (out_spikes - target).pow(2).sum((0, 2)).mean()


@torch.no_grad()
def evaluate(net, data, T, batch_size=1000):
    """A test pass over `data`: a dict of `accuracy` (%); `accuracy_ties_to_lowest` (ties read as the
    lowest index instead of by their residual potential); per neuron layer
    `firing_rate` (spikes per neuron per step) and `silent_fraction` (of its neurons, every unit of a
    feature map counted, that never fired); `silent_outputs` (classes that never fired); `output_silent`,
    `output_tied`: the fraction of images whose output counts are all zero, or whose largest count two or
    more classes share (silent ones included): the tie rule (`SpikingNet.predict`) picks their class."""
    _expect("data", data, Dataset, expected="a Dataset (from load_dataset)")
    _positive_int("T", T)
    _positive_int("batch_size", batch_size)
    net.eval()
    neurons = net.neurons()
    fired = [None] * len(neurons)

    def record(i):
        def hook(module, inputs, spikes):
            ever = spikes.flatten(0, 1).amax(0) > 0
            fired[i] = ever if fired[i] is None else fired[i] | ever
        return hook

    hooks = [n.register_forward_hook(record(i)) for i, n in enumerate(neurons)]
    correct = lowest = silent = tied = 0
    rates = torch.zeros(len(neurons))
    try:
        for i in range(0, len(data), batch_size):
            out = net(data.x[i:i + batch_size], T)
            correct += (net.predict(out) == data.y[i:i + batch_size]).sum().item()
            rates += torch.stack([n.firing_rate for n in neurons]).cpu() * len(out[0])
            counts = out.sum(0)
            lowest += (counts.argmax(1) == data.y[i:i + batch_size]).sum().item()
            top = counts.amax(1, keepdim=True)
            silent += (top == 0).sum().item()
            tied += ((counts == top).sum(1) > 1).sum().item()
    finally:
        for h in hooks:
            h.remove()
        net.train()
    n = len(data)
    return dict(accuracy=100.0 * correct / n, accuracy_ties_to_lowest=100.0 * lowest / n,
                firing_rate=(rates / n).tolist(), silent_fraction=[1.0 - f.float().mean().item() for f in fired],
                silent_outputs=(~fired[-1]).nonzero().flatten().tolist(),
                output_silent=silent / n, output_tied=tied / n)


def train_epoch(net, optimizer, train_ds, loss_fn, predict, *, epoch, seed, batch_size=128, augment=True,
                on_step=None, T=1):
    """One epoch of minibatch training, shared by `train` and `mtsnn_convert.train_ann`.

    Order and crops draw from a generator seeded with (seed, epoch): an epoch is the same resumed or not.
    `net(x, T)` gives [T, batch, classes];
    `loss_fn(out, labels)` is minimised and `predict(out)` gives the classes counted as correct.
    Returns the per-step losses, the number of correct training predictions and the output summed
    per class over the epoch (a class that never fired is 0). A non-finite loss raises
    FloatingPointError naming the step (checked once per epoch: no device sync per step).
    """
    device = train_ds.x.device
    steps = math.ceil(len(train_ds) / batch_size)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(train_ds), generator=g).to(device)
    sizes = [min(batch_size, len(train_ds) - step * batch_size) for step in range(steps)]
    draws = train_ds.draw_augmentation(sizes, g) if augment else None
    losses = torch.zeros(steps, device=device)
    correct = torch.zeros((), device=device)
    output_sum = 0.0
    net.train()
    for step in range(steps):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        xb, yb = train_ds.x[order[batch]], train_ds.y[order[batch]]
        if augment:
            xb = train_ds.augment(xb, draws[:, batch])
        out = net(xb, T)
        loss = loss_fn(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
        correct += (predict(out.detach()) == yb).sum()
        output_sum = output_sum + out.detach().sum((0, 1))
        if on_step:
            on_step()
    if not torch.isfinite(losses).all():
        bad = int((~torch.isfinite(losses)).nonzero()[0])
        raise FloatingPointError(f"loss became {losses[bad].item()} at epoch {epoch + 1}, step {bad + 1} of {steps}")
    return losses, correct.item(), output_sum


def train(spec, dataset, *, epochs=1, T=2, batch_size=128, lr=0.005, seed=0, device="cpu",
          subset=None, test_subset=None, root=None, data=None, augment=True, checkpoint=None,
          resume=False, progress=True, init_rate=1.0, init_output_rate=None, init_spread=None, label_margin=0,
          validation=None, plateau=None, precision="float32", compiled=False, **neuron_kwargs):
    """Train `build_net(spec, ...)` on `dataset` ("mnist", "fmnist", "cifar10") and return a JSON-able dict.

    The net starts from `initialised_net` on the first 256 training images (`calibrate_init`: hidden
    layers at `init_rate`, the output at `init_output_rate` spikes per neuron per step, hidden channels
    centred with spread `init_spread` mV per spike level where set; the label's target `label_margin`
    spikes beyond S_max, `spike_mse_loss`). Adam (beta 0.9/0.999, eps 1e-8) on `spike_mse_loss`;
    the test set (or `test_subset`) is evaluated after every epoch, each history row with `evaluate`'s
    silent-neuron and tie fractions; an output neuron silent for a whole epoch raises a warning. Shuffling
    and augmentation draw from a generator seeded with (seed, epoch), so a run resumed from its
    checkpoint (`checkpoint=path, resume=True`; written atomically every epoch) ends with the weights of
    an uninterrupted one; resume refuses another configuration (every default filled in), other data,
    or more epochs than asked; a weights file without optimizer state (`export_weights`) stands for a
    finished run. `validation=N` holds the last N training images out (`val_accuracy`); with
    `plateau=dict(min_epochs=, window=, min_gain=)` training stops once `plateaued`. `precision="bfloat16"`
    runs the synaptic layers under autocast; `compiled=True` compiles the neurons. These and the two
    above enter the configuration only when set, so that earlier runs resume. `data=(train, test)`
    reuses loaded `Dataset`s; `neuron_kwargs` go to `build_net` and every `MultiThresholdLIF`.
    """
    _check_train_args(**locals())
    device = _check_device(device)
    if device.type == "cpu":
        configure_cpu()  # denormals flushed, freed memory kept for reuse: speed only
    if device.type == "cuda":
        configure_cuda()
    model_kwargs = {**_keyword_defaults(MultiThresholdLIF.__init__), **_keyword_defaults(build_net), **neuron_kwargs}
    if init_output_rate is None:  # recorded as the number it stands for: 0.25 at S_max = 15, as before
        init_output_rate = output_start(model_kwargs["s_max"])
    config = dict(spec=spec, dataset=dataset, epochs=epochs, T=T, batch_size=batch_size, lr=lr, seed=seed,
                  subset=subset, test_subset=test_subset, augment=augment, init_rate=init_rate,
                  init_output_rate=init_output_rate, **model_kwargs)
    config.update({k: v for k, v, unset in [("init_spread", init_spread, None), ("label_margin", label_margin, 0),
                   ("validation", validation, None),
                   ("plateau", plateau, None), ("precision", precision, "float32"), ("compiled", compiled, False)]
                   if v != unset})  # only when set: earlier runs resume
    train_ds, test_ds = data or (load_dataset(dataset, True, root, device, subset),
                                 load_dataset(dataset, False, root, device, test_subset))
    data_id = dict(train=train_ds.fingerprint(), test=test_ds.fingerprint())
    if validation:
        if validation >= len(train_ds):
            raise ValueError(f"validation={validation} holds out all {len(train_ds)} training images")
        train_ds, val_ds = train_ds.split(len(train_ds) - validation)
    torch.manual_seed(seed)
    net = initialised_net(spec, train_ds.x, 10, T=T, init_rate=init_rate, init_output_rate=init_output_rate,
                          init_spread=init_spread, **model_kwargs)
    net.precision = precision
    loss_fn = partial(spike_mse_loss, s_max=net.neurons()[-1].s_max, label_margin=label_margin)
    if compiled:
        compile_neurons(net.neurons())
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    history, start = [], 0
    state = claim_checkpoint(checkpoint, load=resume) if checkpoint else None
    if state is not None:
        if {**state["config"], "epochs": epochs} != config:  # more epochs may be asked for on resume
            diff = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
            raise ValueError(f"checkpoint {checkpoint} was written by a different configuration: (saved, asked) {diff}")
        if state.get("data") != data_id:
            raise ValueError(f"checkpoint {checkpoint} was trained on other data: {state.get('data')}, not {data_id}")
        if len(state["history"]) > epochs:
            raise ValueError(f"checkpoint {checkpoint} holds {len(state['history'])} epochs, more than the {epochs} "
                             "asked for; ask for at least that many (or start a new checkpoint)")
        net.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        elif len(state["history"]) < epochs:
            raise ValueError(f"{checkpoint} holds weights without optimizer state: a finished run of "
                             f"{len(state['history'])} epochs, which cannot be continued to {epochs}")
        history, start = state["history"], len(state["history"])

    from tqdm import tqdm  # plain text bar: readable in stored notebooks, no widget dependency
    steps = math.ceil(len(train_ds) / batch_size)
    bar = tqdm(total=(epochs - start) * steps, desc=f"{dataset} {spec}", disable=not progress, mininterval=2.0)
    for epoch in range(start, epochs):
        if plateau and plateaued(history, **plateau):
            break
        t0 = time.time()
        try:
            losses, correct, output_spikes = train_epoch(
                net, optimizer, train_ds, loss_fn, net.predict, epoch=epoch, seed=seed,
                batch_size=batch_size, augment=augment, on_step=bar.update, T=T)
        except FloatingPointError as exc:
            bar.close()
            raise FloatingPointError(f"{dataset} {spec}: {exc} (lr={lr}, seed={seed})") from None
        test = evaluate(net, test_ds, T)
        silent = (output_spikes == 0).nonzero().flatten().tolist()
        if silent or test["silent_outputs"]:  # far below threshold the surrogate is ~0: nothing revives them
            said = [f"neuron(s) {n} never fired {when}" for n, when in ((silent, "during the whole training epoch"), (
                test["silent_outputs"], f"on any of the {len(test_ds)} test images")) if n]  # only what happened
            warnings.warn(f"{dataset} {spec}, epoch {epoch + 1}: in the output layer (neuron layer "
                          f"{len(net.neurons())}), {'; '.join(said)}", stacklevel=2)
        val = dict(val_accuracy=evaluate(net, val_ds, T)["accuracy"]) if validation else {}
        history.append(dict(epoch=epoch + 1, loss=losses.mean().item(),
                            train_accuracy=100.0 * correct / len(train_ds), **val,
                            test_accuracy=test.pop("accuracy"), seconds=time.time() - t0, **test,
                            device=device_name(device)))  # a run resumed on another machine says so per epoch
        bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]['loss']:.3f}", test=f"{history[-1]['test_accuracy']:.2f}%")
        if checkpoint:
            save_checkpoint(dict(model=net.state_dict(), optimizer=optimizer.state_dict(), history=history,
                                 config=config, data=data_id, provenance=provenance(), device=device_name(device)),
                            checkpoint)
    bar.close()
    return dict(config=config, data=data_id, dataset_variant=train_ds.variant, history=history,
                test_accuracy=history[-1]["test_accuracy"] if history else None,
                torch=torch.__version__, device=device_name(device), device_setup=device_setup(device, FUSED_NEURON),
                provenance=provenance(), model=net)


def plateau_gain(history, window=0.2, key="val_accuracy"):
    """How far the best accuracy `key` of the last `window` of the epochs beats the best before them (or None)."""
    n, recent = len(history), max(1, math.ceil(window * len(history)))
    return max(h[key] for h in history[-recent:]) - max(h[key] for h in history[:-recent]) if recent < n else None


def plateaued(history, min_epochs=60, window=0.2, min_gain=0.2, key="val_accuracy"):
    """Whether accuracy `key` stopped rising: after `min_epochs` epochs, `plateau_gain` is under `min_gain` points."""
    return len(history) >= min_epochs and (gain := plateau_gain(history, window, key)) is not None and gain < min_gain


def _check_train_args(dataset, epochs, T, batch_size, lr, seed, subset, test_subset, data, checkpoint,
                      init_rate, init_output_rate, init_spread, label_margin, validation, plateau, precision, **flags):
    _expect("dataset", dataset, str, lambda v: v in DATASETS, f"one of {DATASETS}")
    for name, value in (("epochs", epochs), ("T", T), ("batch_size", batch_size)):
        _positive_int(name, value)
    _positive("lr", lr)
    _expect("seed", seed, int, lambda v: v >= 0, "an integer >= 0")
    for name, value in (("subset", subset), ("test_subset", test_subset), ("validation", validation)):
        if value is not None:
            _positive_int(name, value)
    if data is not None:
        _expect("data", data, (tuple, list), lambda v: len(v) == 2 and all(isinstance(d, Dataset) for d in v),
                "a pair (train, test) of Datasets from load_dataset")
    for name in ("augment", "resume", "progress", "compiled"):
        _expect(name, flags[name], bool, expected="True or False")
    if checkpoint is not None:
        _expect("checkpoint", checkpoint, (str, os.PathLike), expected="a file path")
    for name, value in (("init_rate", init_rate), ("init_output_rate", init_output_rate), ("init_spread", init_spread)):
        if value is not None:
            _positive(name, value)
    _expect("plateau", plateau, (dict, type(None)), lambda v: v is None or (validation and set(v) <= {
        "min_epochs", "window", "min_gain"}), "None or a dict of min_epochs, window, min_gain (with validation)")
    _expect("precision", precision, str, lambda v: v in ("float32", "bfloat16"), '"float32" or "bfloat16"')
    _expect("label_margin", label_margin, (int, float), lambda v: v >= 0, "a number of spikes >= 0")


def load_model(path, device="cpu"):
    """The `SpikingNet` stored by `train` in a checkpoint (or by `export_weights`), rebuilt from
    the configuration saved with it, its trained weights loaded, on `device`."""
    _expect("path", path, (str, os.PathLike), expected="a checkpoint or weights file path")
    state = load_checkpoint(path)
    if state is None:
        raise FileNotFoundError(f"no checkpoint or weights file at {path} (nor {path}.prev)")
    cfg = state["config"]
    names = set(_keyword_defaults(MultiThresholdLIF.__init__)) | set(_keyword_defaults(build_net))
    net = build_net(cfg["spec"], _IN_SHAPES[cfg["dataset"]], 10, **{k: v for k, v in cfg.items() if k in names})
    net.load_state_dict(state["model"])
    net.precision = cfg.get("precision", "float32")
    return net.to(_check_device(device))


def export_weights(checkpoint, path, **extra):
    """Write the model of a finished `train` (or `mtsnn_convert.train_ann`) checkpoint without its
    optimizer state (a third of the size): weights, configuration, data fingerprint, per-epoch
    history and provenance, which `load_model` reads, plus the fields in `extra`."""
    _expect("checkpoint", checkpoint, (str, os.PathLike), expected="a checkpoint file path")
    _expect("path", path, (str, os.PathLike), expected="a file path for the weights")
    state = load_checkpoint(checkpoint)
    if state is None:
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({**{k: v for k, v in state.items() if k != "optimizer"}, **extra}, path)


def _keyword_defaults(fn):
    """The keyword arguments of `fn` that have a default, with it (so a config names every setting)."""
    import inspect
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not p.empty and k != "activation"}


# Names that moved out of the core (issue 36): asked for here, an AttributeError says where each lives now.
_MOVED = dict(mtsnn_data="DatasetError data_root _cache_dir _try_download _load_idx _load_cifar10 _cached_decode",
              mtsnn_runtime="pick_device CUDA_POLICY _cpu_model _nvidia_driver",
              mtsnn_runs="train_sweep make_executor _SweepJob _run_name to_json result_row write_results plot_history "
                         "energy_report E_AC_PJ E_MAC_PJ")


def __getattr__(name):
    module = next((m for m, names in _MOVED.items() if name in names.split()), None)
    raise AttributeError(f"mtsnn_core.{name} moved to {module}.{name} (import {module})" if module else
                         f"module 'mtsnn_core' has no attribute {name!r}")
