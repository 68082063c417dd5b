"""Six readings of the paper's gradient, for notebook 46: a spiking MLP whose backward is written out.

The paper's eqs. 9-13 leave two choices open: how to differentiate the reset u = h - s*V_th
(eq. 4), and whether the factor 1/(1 + V_th f) of eqs. 11-13 also scales the error sent to the layer
below (eq. 9 as printed leaves it out). `mtsnn_core` fixes one reading (`reset_grad="paper"`,
factor included) and offers two others ("bptt", "detach") as neuron options; a reading that splits
the error to the weights from the error to the layer below ("eq9") cannot be an elementwise
neuron option, so here each dense layer and its neuron are one autograd node whose backward is
the few lines of each reading. The forward pass is mtsnn_core's (`MultiThresholdLIF.run`), and
the tests check that the readings the core also has give the core's gradients.

With f = surrogate(h[t]), dL/ds[t] from above and c[t] = dL/dh[t+1] (0 after the last step):

    implicit (ours)  g[t] = (dL/ds f + decay c) / (1 + V_th f)       down[t] = g[t]
    eq9              g[t] as implicit                                down[t] = g[t] (1 + V_th f)
    detach           g[t] =  dL/ds f + decay c                        down[t] = g[t]
    bptt             g[t] =  dL/ds f + decay c (1 - V_th f)           down[t] = g[t]
    bptt-unit-area   bptt with alpha_H = 1/sqrt(pi alpha_W): each Gaussian's area is one spike,
                     the staircase's rise per threshold (f2's is 7.9 spikes at alpha_H = 1)
    ste              bptt with f = 1/V_th on [0, (S_max + 1) V_th): the staircase's mean slope,
                     so 1 - V_th f = 0 and no error flows back in time

g[t] makes the layer's weight gradient (sum over t of g[t] x input[t]); down[t] is multiplied by
W to give the layer below its dL/ds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import mtsnn_core as mt


@dataclass(frozen=True)
class Reading:
    rule: str  # "implicit", "detach" or "bptt": how dL/dh[t] is formed
    down_undivided: bool = False  # eq. 9 as printed: the layer below gets g (1 + V_th f)
    surrogate: str = "f2"  # a curve of mtsnn_core.SURROGATES, or "ste"
    alpha_h: float = mt.TABLE1["alpha_h"]


READINGS = {
    "implicit": Reading("implicit"),
    "eq9": Reading("implicit", down_undivided=True),
    "detach": Reading("detach"),
    "bptt": Reading("bptt"),
    "bptt-unit-area": Reading("bptt", alpha_h=1.0 / math.sqrt(math.pi * mt.TABLE1["alpha_w"])),
    "ste": Reading("bptt", surrogate="ste"),
}
CORE_EQUIVALENT = {"implicit": "paper", "detach": "detach", "bptt": "bptt"}  # reset_grad of mtsnn_core


def surrogate(h, reading, neuron):
    """f(h) of a reading: one of the paper's curves (at the reading's alpha_H) or the clipped STE."""
    if reading.surrogate == "ste":
        return ((h >= 0) & (h < (neuron.s_max + 1) * neuron.v_th)).to(h) / neuron.v_th
    return mt.SURROGATES[reading.surrogate](h, neuron.v_th, neuron.s_max, reading.alpha_h, neuron.alpha_w)


class _DenseSpiking(torch.autograd.Function):
    """x[t] = W input[t] + b, then the neuron; backward by `reading`. input: [T, B, n_in]."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, neuron, reading):
        x = F.linear(inputs, weight, bias)
        spikes, h = neuron.run(x)
        ctx.save_for_backward(inputs, weight, h)
        ctx.neuron, ctx.reading = neuron, reading
        neuron.residual = h[-1] - spikes[-1] * neuron.v_th  # for the readout's tie rule
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        inputs, weight, h = ctx.saved_tensors
        n, r = ctx.neuron, ctx.reading
        decay, v_th = 1.0 - 1.0 / n.tau_m, n.v_th
        g, down = torch.empty_like(h), torch.empty_like(h)
        later = torch.zeros_like(h[0])
        for t in reversed(range(h.shape[0])):
            f = surrogate(h[t], r, n)
            undivided = grad_spikes[t] * f + decay * later * ((1.0 - v_th * f) if r.rule == "bptt" else 1.0)
            g[t] = undivided / (1.0 + v_th * f) if r.rule == "implicit" else undivided
            down[t] = undivided if r.down_undivided else g[t]
            later = g[t]
        grad_in = down @ weight if ctx.needs_input_grad[0] else None
        return grad_in, g.flatten(0, -2).T @ inputs.flatten(0, -2), g.sum((0, 1)), None, None


class ReadingMLP(nn.Module):
    """A spiking MLP trained by one reading. Built from a `mtsnn_core` MLP (so it starts from the
    same calibrated weights); `forward(images, T)` gives the output spikes [T, B, classes]."""

    def __init__(self, core_net, reading):
        super().__init__()
        self.linears = nn.ModuleList(m for m in core_net.modules() if isinstance(m, nn.Linear))
        self.neurons = core_net.neurons()
        self.reading = READINGS[reading] if isinstance(reading, str) else reading

    def forward(self, images, T=2):
        s = images.flatten(1).unsqueeze(0).expand(T, len(images), -1)
        for linear, neuron in zip(self.linears, self.neurons):
            s = _DenseSpiking.apply(s, linear.weight, linear.bias, neuron, self.reading)
        return s

    def predict(self, out_spikes):
        """mtsnn_core's readout: most spikes, ties to the output neuron closest to its next spike."""
        return mt.readout(out_spikes, self.neurons[-1].residual)


def reading_net(spec, images, reading, seed, **neuron):
    """The ReadingMLP of `spec`, initialised as `mtsnn_core.train` initialises it for `seed`."""
    torch.manual_seed(seed)
    return ReadingMLP(mt.initialised_net(spec, images, 10, T=2, **neuron), reading)


@torch.no_grad()
def test_pass(net, data, T=2, batch_size=1000):
    """Test accuracy (%) and the share of test images given the most frequent class (%): near 100
    when a network has collapsed onto one answer."""
    predicted = torch.cat([net.predict(net(data.x[i:i + batch_size], T)) for i in range(0, len(data), batch_size)])
    return (100.0 * (predicted == data.y).float().mean().item(),
            100.0 * torch.bincount(predicted).max().item() / len(data))


def loss_on(net, x, y, T=2):
    return mt.spike_mse_loss(net(x, T), y, net.neurons[-1].s_max)


def directional_check(net, x, y, readings, directions=32, relative_step=0.02, seed=0):
    """Does each reading's gradient point where the loss really falls? For random directions d in
    weight space (each tensor's part scaled to `relative_step` of its norm), the loss's central
    finite difference along d (the staircase loss, so a finite step) against each reading's g.d:
    their correlation over the directions and the share of matching signs. Also the loss change
    after one step of that relative size against each gradient (negative: downhill)."""
    params = [p for lin in net.linears for p in (lin.weight, lin.bias)]
    base = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def loss_at(step):
        for p, b, s in zip(params, base, step):
            p.copy_(b + s)
        value = loss_on(net, x, y).item()
        for p, b in zip(params, base):
            p.copy_(b)
        return value

    grads = {}
    for name in readings:
        net.reading = READINGS[name]
        for p in params:
            p.grad = None
        loss_on(net, x, y).backward()
        grads[name] = [p.grad.clone() for p in params]
    loss0 = loss_at([torch.zeros_like(b) for b in base])
    finite, predicted = [], {name: [] for name in readings}
    for _ in range(directions):
        d = [torch.randn(b.shape, generator=gen) for b in base]
        d = [di * relative_step * b.norm() / di.norm() for di, b in zip(d, base)]
        finite.append((loss_at(d) - loss_at([-di for di in d])) / 2)
        for name in readings:
            predicted[name].append(sum((g * di).sum().item() for g, di in zip(grads[name], d)))
    finite = torch.tensor(finite)
    rows = []
    for name in readings:
        pred = torch.tensor(predicted[name])
        corr = torch.corrcoef(torch.stack([pred, finite]))[0, 1].item()
        step = [-g * relative_step * b.norm() / g.norm().clamp(min=1e-30) for g, b in zip(grads[name], base)]
        agree = (pred.sign() == finite.sign()).float().mean().item()
        change = (loss_at(step) - loss0) / loss0
        rows.append(dict(reading=name, correlation=corr, signs_agree=agree, loss_change=change))
    return rows


def train_reading(reading, seed, train_ds, test_ds, spec="784-800-10", epochs=2, lr=mt.PAPER_LR["mnist"], T=2):
    """Train `spec` by one reading as `mtsnn_core.train` trains it (same initialisation, Adam, loss
    of eq. 6, order and crops of `train_epoch`); the test accuracy after each epoch. A run whose
    loss stops being finite ends there, marked `diverged`."""
    net = reading_net(spec, train_ds.x, reading, seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    s_max, history = net.neurons[-1].s_max, []
    for epoch in range(epochs):
        try:
            losses, _, _ = mt.train_epoch(net, optimizer, train_ds, lambda out, y: mt.spike_mse_loss(out, y, s_max),
                                          net.predict, epoch=epoch, seed=seed, T=T)
        except FloatingPointError:
            history.append(dict(reading=reading, seed=seed, epoch=epoch + 1, diverged=True))
            break
        accuracy, top_class_share = test_pass(net, test_ds, T)
        history.append(dict(reading=reading, seed=seed, epoch=epoch + 1, loss=losses.mean().item(),
                            test_accuracy=accuracy, top_class_share=top_class_share, diverged=False))
    return history
