"""The multi-threshold LIF neuron as two Triton kernels: the forward time loop and the surrogate
backward, one launch each (the plain PyTorch path in `mtsnn_core` takes ~10 launches per step
forward and ~5 + 3*width per step backward, each a full pass over the layer's memory).

Each program holds a block of neurons in registers and walks the T steps itself, so a layer's
forward reads x once and writes s and h once, and its backward reads h and dL/ds once and writes
dL/dh once: 24*T bytes per neuron per training step, the least this algorithm moves. The
arithmetic is `mtsnn_core`'s, term for term (same surrogate window, IEEE division for the firing
threshold); the tests compare the two (`MultiThresholdLIF.run` and `_MultiThresholdFire`).

`mtsnn_core` calls `forward`/`backward` for CUDA tensors (MTSNN_FUSED=off: never; =all: every
device, which on a CPU needs TRITON_INTERPRET=1 and serves the tests). This module does not import
`mtsnn_core`: the core hands `backward` the surrogate's window (`mtsnn_core.comb_window`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
_SURROGATE = {"f1": 1, "f2": 2, "f3": 3}
_RESET = {"paper": 0, "bptt": 1, "detach": 2}


@triton.jit
def _surrogate(h, v_th, s_max, alpha_h, neg_inv_alpha_w, reach, width, KIND: tl.constexpr):
    """f1 / f2 (a window of `width` Gaussians nearest to h, as mtsnn_core._gaussian_comb) or f3."""
    if KIND == 3:
        x = tl.math.div_rn(h, v_th)
        return alpha_h * tl.minimum(tl.maximum(tl.minimum(x, (s_max + 1.0) - x), 0.0), 1.0)
    first = tl.minimum(tl.maximum(tl.floor(h / v_th + 0.5) - reach, 1.0), s_max - width + 1.0)
    offset = h - first * v_th
    total = tl.zeros_like(h)
    for k in range(width):
        d = offset - k * v_th
        if KIND == 1:  # f1: pulse i has height i and width alpha_w / i
            i = first + k
            total += i * tl.exp(tl.maximum(d * d * i * neg_inv_alpha_w, -80.0))
        else:
            total += tl.exp(tl.maximum(d * d * neg_inv_alpha_w, -80.0))
    return total * alpha_h


@triton.jit
def _forward_kernel(x_ptr, s_ptr, h_ptr, n, x_step, T, decay, v_th, s_max, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u = tl.zeros([BLOCK], tl.float32)
    for t in range(T):
        h = decay * u + tl.load(x_ptr + t * x_step + offs, mask=mask, other=0.0)  # charge (eq. 1)
        s = tl.minimum(tl.maximum(tl.floor(tl.math.div_rn(h, v_th)), 0.0), s_max)  # fire (eq. 5)
        u = h - s * v_th  # reset by subtraction (eq. 4)
        tl.store(s_ptr + t * n + offs, s, mask=mask)
        tl.store(h_ptr + t * n + offs, h, mask=mask)


@triton.jit
def _backward_kernel(h_ptr, gs_ptr, gh_ptr, n, T, decay, v_th, s_max, alpha_h, neg_inv_alpha_w, reach, width,
                     KIND: tl.constexpr, RESET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    later = tl.zeros([BLOCK], tl.float32)  # dL/dh[t+1]; zero after the last step
    for step in range(T):
        t = T - 1 - step
        h = tl.load(h_ptr + t * n + offs, mask=mask, other=0.0)
        f = _surrogate(h, v_th, s_max, alpha_h, neg_inv_alpha_w, reach, width, KIND)
        g = tl.load(gs_ptr + t * n + offs, mask=mask, other=0.0) * f
        if RESET == 1:  # bptt: du/dh = 1 - V f
            g += decay * later * (1.0 - v_th * f)
        else:
            g += decay * later
        if RESET == 0:  # paper: implicit reset divides every path through h by 1 + V f
            g = g / (1.0 + v_th * f)
        tl.store(gh_ptr + t * n + offs, g, mask=mask)
        later = g


def dense(t):
    """True if `t` covers one gap-free block of memory (any dimension order, e.g. channels_last)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


def supported(x):
    """The kernels treat x as T rows of one dense block each, or one row repeated (stride 0 in time)."""
    return x.dtype == torch.float32 and dense(x[0]) and x.stride(0) in (0, x[0].numel())


def _like_steps(x):
    """An empty [T, ...] tensor whose every step has x[0]'s memory layout."""
    base = x[0]
    return torch.empty_strided(x.shape, (base.numel(), *base.stride()), dtype=torch.float32, device=x.device)


def forward(x, neuron):
    """(spikes, pre-reset potentials h), both [T, ...] in x[0]'s memory layout."""
    T, n = x.shape[0], x[0].numel()
    spikes, h_all = _like_steps(x), _like_steps(x)
    _forward_kernel[(triton.cdiv(n, BLOCK),)](x, spikes, h_all, n, x.stride(0), T, 1.0 - 1.0 / neuron.tau_m,
                                              neuron.v_th, float(neuron.s_max), BLOCK=BLOCK)
    return spikes, h_all


def backward(h_all, grad_spikes, neuron, window):
    """dL/dh[t] (= dL/dx[t]) for every step, as `mtsnn_core._MultiThresholdFire.backward`. `window`:
    (reach, width) of f1/f2, `mtsnn_core.comb_window(v_th, s_max, alpha_w)` (None for f3)."""
    if grad_spikes.stride() != h_all.stride():
        grad_spikes = torch.empty_like(h_all).copy_(grad_spikes)
    grad_h = torch.empty_like(h_all)
    n = h_all[0].numel()
    reach, width, alpha_w = ((0, 1, 1.0) if neuron.surrogate == "f3" else
                             (*window, neuron.alpha_w))
    _backward_kernel[(triton.cdiv(n, BLOCK),)](
        h_all, grad_spikes, grad_h, n, h_all.shape[0], 1.0 - 1.0 / neuron.tau_m, neuron.v_th, float(neuron.s_max),
        float(neuron.alpha_h), -1.0 / alpha_w, float(reach), width,
        KIND=_SURROGATE[neuron.surrogate], RESET=_RESET[neuron.reset_grad], BLOCK=BLOCK)
    return grad_h
