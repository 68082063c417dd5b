"""ANN -> SNN conversion baseline: plain rate conversion, BSNN's bistable and synchronous neurons,
and a multi-threshold IF conversion target.

The conversion paper (Li, Zhao & Zeng 2021, *BSNN*, arXiv 2105.12917) is known only by its
abstract; every dynamic below is our reading of it and is stated where it is implemented.
Contents, top to bottom:

1. `train_ann`: the ReLU network of `mt.build_net(..., activation=nn.ReLU)` (or `ResNet`) trained
   with cross-entropy + Adam on the on-device data
2. `ResNet`: basic blocks, identity / 1x1 shortcuts, batch norm (folded away before conversion)
3. the spiking layers: `IFLayer` (integrate-and-fire, soft reset, optional multi-threshold and
   bistable phases), `SpikePool`, `Synchronous` (the delay line on a shortcut), `Readout`
4. `convert`: threshold balancing from the p-th percentile of each layer's ANN activations
5. `evaluate_conversion`: one T_max-step run gives the accuracy at every T in `T_READ`, the
   agreement with the ANN and the spikes of inactivated neurons (SIN) per layer

Conventions. A spiking layer's output is its spike count times the value one spike carries,
theta/s_max (theta = the layer's balanced threshold): this is the same as Diehl/Rueckauer weight
normalisation (W_l * theta_{l-1}/theta_l, threshold 1) without touching the weights. Time is run
in chunks of `chunk` steps: every layer runs all steps of a chunk before the next layer, the
synaptic layers once on [steps*batch, ...]; only the neurons loop over time (elementwise).
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import mtsnn_core as mt
import mtsnn_runs as mr
import mtsnn_runtime as rt
from mtsnn_base import _expect

T_READ = tuple(2 ** k for k in range(9))  # 1, 2, 4, ..., 256


# ----------------------------------------------------------------------------------------------
# 1. The ANN
# ----------------------------------------------------------------------------------------------


def ann_net(spec, in_shape, n_classes=10):
    """`mt.build_net(spec, in_shape, n_classes, activation=nn.ReLU)` with the ReLU after the
    classifier removed: its pre-activations are the logits (cross-entropy needs negative logits,
    and the converted SNN reads the classifier's accumulated current, which has no ReLU either)."""
    net = mt.build_net(spec, in_shape, n_classes, activation=nn.ReLU)
    assert isinstance(net.rest[-1], nn.ReLU)
    net.rest[-1] = nn.Identity()
    return net


@torch.no_grad()
def ann_accuracy(net, data, batch_size=1000):
    """Test accuracy (%) of an ANN; `net(x, 1)[0]` are the logits."""
    net.eval()
    correct = sum((net(data.x[i:i + batch_size], 1)[0].argmax(1) == data.y[i:i + batch_size]).sum().item()
                  for i in range(0, len(data), batch_size))
    return 100.0 * correct / len(data)


def cutout(x, size, generator):
    """Cutout (DeVries & Taylor 2017): in every image of the batch `x` [B, C, H, W], a `size` x
    `size` square at a random centre (clipped at the border, so near an edge less is cut) set to 0,
    the dataset mean after normalisation. The centres draw from `generator`, on its device (a
    generator on the GPU spares every step a blocking host-to-device copy)."""
    B, _, H, W = x.shape
    top, left = (torch.randint(0, n, (B, 1), generator=generator, device=generator.device).to(x.device) - size // 2
                 for n in (H, W))
    rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_rows, in_cols = (rows >= top) & (rows < top + size), (cols >= left) & (cols < left + size)
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


class Ensemble(nn.Module):
    """The average prediction of trained networks: forward(x, T=1) gives log(mean of their softmax
    outputs) as logits [1, B, classes] (a distillation teacher; its argmax is the ensemble's)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x, T=1):
        probabilities = torch.stack([net(x, 1)[0].float().softmax(1) for net in self.nets]).mean(0)
        return probabilities.log().unsqueeze(0)


class _TrainingForward(nn.Module):
    """What `train_ann` hands `mt.train_epoch`: the network behind cutout (`generator` is set per
    epoch) and, with `bf16`, bfloat16 autocast with channels-last inputs (the layout oneDNN's
    bf16 convolutions and the CPU's matrix units are fast with: a ResNet-20 step of 128 images on
    this project's 2 threads took 160 ms against 400 in float32). With a `teacher` the output is
    [2, B, classes]: the network's logits, then the teacher's on the same augmented images; the
    teacher stays in eval mode (batch norm on its running statistics) when `train_epoch` sets the
    rest to train mode. Accuracy is always measured on the plain float32 network."""

    def __init__(self, net, cutout_size, bf16, teacher=None):
        super().__init__()
        self.net, self.cutout_size, self.bf16, self.teacher, self.generator = net, cutout_size, bf16, teacher, None

    def train(self, mode=True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x, T=1):
        if self.cutout_size:
            x = cutout(x, self.cutout_size, self.generator)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.net(x, T).float()
            if self.teacher is None:
                return out
            with torch.no_grad():
                target = self.teacher(x, 1).float()
        return torch.cat([out, target])


def _digest(module):
    """A short hash of a module's parameters and buffers (what a checkpoint's config records of a
    teacher or a starting point, so that a run resumes only with the same ones)."""
    h = hashlib.sha1()
    for t in module.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def train_ann(spec, train_ds, test_ds, epochs=2, lr=1e-3, seed=0, batch_size=128, augment=True,
              progress=False, checkpoint=None, optimizer="adam", weight_decay=0.0, cosine_epochs=None, stop_at=None,
              cutout_size=0, bf16=False, init=None, teacher=None, distill_temperature=4.0, distill_weight=0.9,
              average=False):
    """Train the ReLU network `spec` (a string in the paper's notation, or a module such as
    `ResNet` whose `forward(x, 1)[0]` gives logits) with cross-entropy, epoch by epoch with
    `mt.train_epoch` (the spiking nets' loop: same shuffling and crops for the same seed).
    `optimizer`: "adam" (the default, the ReLU twins') or "sgd" (Nesterov momentum 0.9, standard
    for ResNets), with `weight_decay`; `cosine_epochs`: the learning rate follows a cosine from `lr`
    to 0 over that many epochs, set from the epoch number (so a run can be trained in chunks).
    `cutout_size` > 0 adds `cutout` to the crops and flips; `bf16` trains in bfloat16 autocast (see
    `_TrainingForward`). `init`: a trained network of the same shape to start from (fine-tuning).
    `teacher` (a network in eval mode, e.g. an `Ensemble`): knowledge distillation (Hinton et al. 2015),
    the loss is (1 - w) * cross-entropy + w * tau^2 * KL(teacher || network) of the softmax outputs at
    temperature tau = `distill_temperature`, w = `distill_weight`. With `checkpoint` (a file path) it
    saves after every epoch, like `mt.train`, and resumes from there when the file holds the same
    configuration and data. `average`: stochastic weight averaging (Izmailov et al. 2018): the
    learning rate stays at `lr` (`cosine_epochs` is ignored), the network after every epoch joins an
    equal-weight average of the epochs so far, whose batch-norm statistics `recompute_batch_norm`
    sets from the first 10,000 training images, augmented as in training; that average is what is
    tested, checkpointed as "model" and returned (the network being trained is checkpointed as
    "iterate", its test accuracy in the history as "iterate_accuracy").
    `stop_at` (a `time.time()` value): no epoch is started that would end after it, judged by the
    last epoch's duration (a budgeted run stops early; the same call resumes it). Returns (model
    in eval mode, test accuracy % after the last epoch trained, history of per-epoch rows, each with
    the device that trained it: fewer than `epochs` when stopped early)."""
    _expect("optimizer", optimizer, str, lambda v: v in ("adam", "sgd"), '"adam" or "sgd"')
    torch.manual_seed(seed)
    net = (ann_net(spec, train_ds.x.shape[1:]) if isinstance(spec, str) else spec).to(train_ds.x.device)
    opt = (torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay))
    config = dict(spec=spec if isinstance(spec, str) else repr(spec), lr=lr, seed=seed, batch_size=batch_size,
                  augment=augment, data=dict(train=train_ds.fingerprint(), test=test_ds.fingerprint()))
    # recorded only when not the defaults, so that the checkpoints of earlier runs still resume
    cosine_epochs = None if average else cosine_epochs
    config.update({k: v for k, v, default in [("optimizer", optimizer, "adam"), ("weight_decay", weight_decay, 0.0),
                                              ("cosine_epochs", cosine_epochs, None), ("cutout_size", cutout_size, 0),
                                              ("bf16", bf16, False), ("average", average, False)] if v != default})
    if init is not None:
        net.load_state_dict(init.state_dict())
        config["init"] = _digest(init)
    if teacher is not None:
        config["distill"] = dict(teacher=_digest(teacher), temperature=distill_temperature, weight=distill_weight)
        teacher.eval()  # batch norm on its running statistics (kept by _TrainingForward); under no_grad
    state = rt.load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        if state["config"] != config:
            raise ValueError(f"checkpoint {checkpoint} holds another ANN run: {state['config']}, not {config}")
        if len(state["history"]) > epochs:
            raise ValueError(f"checkpoint {checkpoint} holds {len(state['history'])} epochs, more than {epochs}")
        net.load_state_dict(state["iterate" if average else "model"])
        opt.load_state_dict(state["optimizer"])
    history = state["history"] if state else []
    mean = copy.deepcopy(net) if average else None
    if average and state is not None:
        mean.load_state_dict(state["model"])
    if bf16:
        net = net.to(memory_format=torch.channels_last)
        teacher = teacher and teacher.to(memory_format=torch.channels_last)
    forward = _TrainingForward(net, cutout_size, bf16, teacher)

    def loss_fn(out, y):
        loss = F.cross_entropy(out[0], y)
        if teacher is None:
            return loss
        tau = distill_temperature
        kl = F.kl_div((out[0] / tau).log_softmax(1), (out[1] / tau).log_softmax(1), log_target=True,
                      reduction="batchmean")
        return (1 - distill_weight) * loss + distill_weight * tau ** 2 * kl

    for epoch in range(len(history), epochs):
        t0 = time.time()
        if stop_at is not None and history and t0 + history[-1]["seconds"] > stop_at:
            break
        if cosine_epochs:
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(epoch, cosine_epochs) / cosine_epochs))
        # the cutout centres: a stream of their own per (seed, epoch), on the data's device, so that a
        # resumed run cuts the same
        forward.generator = torch.Generator(train_ds.x.device).manual_seed(10 ** 9 + seed * 1_000_003 + epoch)
        losses, correct, _ = mt.train_epoch(forward, opt, train_ds, loss_fn,
                                            lambda out: out[0].argmax(1), epoch=epoch, seed=seed,
                                            batch_size=batch_size, augment=augment)
        row = dict(epoch=epoch + 1, loss=losses.mean().item(), train_accuracy=100.0 * correct / len(train_ds),
                   device=rt.device_name(train_ds.x.device))  # a run resumed on another machine says so per epoch
        if average:
            with torch.no_grad():
                for a, p in zip(mean.parameters(), net.parameters()):
                    a += (p - a) / (epoch + 1)
            g = torch.Generator().manual_seed(2 * 10 ** 9 + seed * 1_000_003 + epoch)
            x = train_ds.x[:10_000]
            x = train_ds.augment(x, train_ds.draw_augmentation([len(x)], g)) if augment else x
            recompute_batch_norm(mean, cutout(x, cutout_size, g) if cutout_size else x)
            row["iterate_accuracy"] = ann_accuracy(net, test_ds)
        tested = mean if average else net
        history.append(dict(row, test_accuracy=ann_accuracy(tested, test_ds), seconds=time.time() - t0))
        if checkpoint:
            iterate = dict(iterate=net.state_dict()) if average else {}
            rt.save_checkpoint(dict(model=tested.state_dict(), **iterate, optimizer=opt.state_dict(), history=history,
                                    config=config, provenance=rt.provenance()), checkpoint)
        if progress:
            print("epoch {epoch:3d}  loss {loss:.4f}  test {test_accuracy:6.2f} %  {seconds:5.1f} s"
                  .format(**history[-1]))
    net = mean if average else net
    return net.to(memory_format=torch.contiguous_format).eval(), history[-1]["test_accuracy"], history


def recompute_batch_norm(net, x, batch_size=500):
    """Set the running statistics of `net`'s batch norms to the mean and variance of their inputs,
    averaged over batches of the images `x`: an average of weights has activations whose statistics
    none of the averaged networks tracked. `x` should be what training sees: with the statistics of
    unaugmented images instead, distilled's ResNet-20 drops from 89.94 to 86.64 % (89.80 % with
    10,000 augmented ones)."""
    norms = {m: m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            net(x[i:i + batch_size], 1)
    for m, momentum in norms.items():
        m.momentum = momentum
    net.eval()


# ----------------------------------------------------------------------------------------------
# 2. A small ResNet (He et al. 2016, CIFAR variant) for the synchronous neurons
# ----------------------------------------------------------------------------------------------


def _conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """relu2(conv2(relu1(conv1(x))) + shortcut(x)); the shortcut is the identity, or a 1x1 conv
    when the block changes width or stride. Residual path: 2 layers; shortcut: 0 or 1."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.relu1 = _conv_bn(cin, cout, 3, stride), nn.ReLU()
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv -> stages of basic blocks (stride 2 between stages) -> global average -> linear.
    `ResNet(3, (16, 32, 64), 3)` is ResNet-20. `stem_stride=2` halves the image first (cheap
    quick runs). `forward(x, T=1)` returns logits of shape [1, B, n_classes], like a SpikingNet."""

    def __init__(self, in_channels=3, widths=(16, 32, 64), blocks_per_stage=3, n_classes=10, stem_stride=1):
        super().__init__()
        self.stem, self.relu = _conv_bn(in_channels, widths[0], 3, stem_stride), nn.ReLU()
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes))

    def forward(self, x, T=1):
        return self.head(self.blocks(self.relu(self.stem(x)))).unsqueeze(0)


class VGG(nn.Module):
    """VGG-style plain network: stages of `convs_per_stage` 3x3 conv + batch norm + ReLU, each
    stage ending in 2x2 max pooling -> global average -> linear. `VGG(3, (64, 128, 256), 2)` is
    the VGG-7 of notebook 51 (6 convolutions + the classifier). `forward(x, T=1)` as `ResNet`."""

    def __init__(self, in_channels=3, widths=(64, 128, 256), convs_per_stage=2, n_classes=10):
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            for _ in range(convs_per_stage):
                layers += [_conv_bn(cin, w, 3, 1), nn.ReLU()]
                cin = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes))

    def forward(self, x, T=1):
        return self.head(self.features(x)).unsqueeze(0)


# The CIFAR-10 ANNs of notebook 51 and their recipes (SGD + Nesterov, weight decay, cosine to 0 over
# `epochs`, crops + flips): `tools/train_conversion_anns.py` trains them, weights/ stores them.
# "standard" is what notebook 51's stored run converts; "long_cutout" (twice the epochs, 8x8
# cutout, bfloat16) is the attempt at the 90 % the standard recipe missed on the jpeg75 copy (it
# ended at 89.24 %); "distilled" fine-tunes long_cutout's network for 20 more epochs (lr 0.01 on a
# new cosine) towards an ensemble of the three stored networks (91.26 % on the 10,000 test images;
# the ResNet-20s alone 88.40 and 89.24 %, VGG-7 89.31 %, float32 on this CPU). "distilled_swa"
# continues from distilled's network with the same teachers for 20 epochs at its peak lr 0.01, held
# constant, and averages the weights of those epochs (stochastic weight averaging). "distilled_long"
# distils from the same teachers from the start, with long_cutout's 200 epochs: 90.28 %, the only one
# at 90 % (distilled 89.94, distilled_swa 89.68 %). docs/conversion.md: results.
CIFAR10_ANNS = {"resnet20": lambda: ResNet(3, (16, 32, 64), 3), "vgg7": lambda: VGG(3, (64, 128, 256), 2)}
ANN_RECIPES = {"standard": dict(epochs=100, lr=0.1, optimizer="sgd", weight_decay=5e-4, batch_size=128, seed=0)}
ANN_RECIPES["long_cutout"] = dict(ANN_RECIPES["standard"], epochs=200, cutout_size=8, bf16=True)
ANN_RECIPES["distilled"] = dict(ANN_RECIPES["long_cutout"], epochs=20, lr=0.01, init="long_cutout",
                                teachers=(("resnet20", "standard"), ("resnet20", "long_cutout"), ("vgg7", "standard")))
ANN_RECIPES["distilled_swa"] = dict(ANN_RECIPES["distilled"], init="distilled", average=True)
ANN_RECIPES["distilled_long"] = dict(ANN_RECIPES["long_cutout"], teachers=ANN_RECIPES["distilled"]["teachers"])


def ann_weights_file(name, recipe="standard"):
    """The file name of a stored CIFAR-10 ANN: cifar10_<name>.pt, or cifar10_<name>_<recipe>.pt."""
    return f"cifar10_{name}.pt" if recipe == "standard" else f"cifar10_{name}_{recipe}.pt"


def train_cifar10_ann(name, train_ds, test_ds, checkpoint=None, progress=False, stop_at=None, recipe="standard",
                      weights_dir=None, **overrides):
    """`train_ann` of `CIFAR10_ANNS[name]` with `ANN_RECIPES[recipe]` (entries overridden by
    `overrides`), initialised from its seed; the cosine schedule spans the recipe's epochs. A
    recipe's `init` (a recipe name) starts from that recipe's stored `name`, its `teachers`
    ((name, recipe) pairs) distil from their `Ensemble`; both load from `weights_dir`."""
    r = dict(ANN_RECIPES[recipe], **overrides)
    device = train_ds.x.device
    if "init" in r:
        r["init"] = load_cifar10_ann(name, weights_dir, device, recipe=r["init"])[0]
    if "teachers" in r:
        r["teacher"] = Ensemble([load_cifar10_ann(n, weights_dir, device, recipe=t)[0] for n, t in r.pop("teachers")])
    torch.manual_seed(r["seed"])
    return train_ann(CIFAR10_ANNS[name](), train_ds, test_ds, cosine_epochs=r["epochs"], checkpoint=checkpoint,
                     progress=progress, stop_at=stop_at, **r)


def load_cifar10_ann(name, weights_dir=None, device="cpu", recipe="standard"):
    """The trained ANN `name` of `recipe` from `weights_dir/ann_weights_file(name, recipe)`
    (default: the repository's weights/, written by tools/train_conversion_anns.py) in eval mode,
    and that file's contents (history, config, provenance, device_setup)."""
    path = Path(weights_dir or Path(__file__).resolve().parent / "weights") / ann_weights_file(name, recipe)
    if not path.exists():
        raise FileNotFoundError(f"no stored ANN at {path}: train it with `python tools/train_conversion_anns.py "
                                f"--nets {name} --recipe {recipe}` (docs/conversion.md, notebook 51)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    net = CIFAR10_ANNS[name]()
    net.load_state_dict(state["model"])
    return net.to(device).eval(), state


def fold_bn(conv_bn):
    """Conv followed by BatchNorm (eval statistics) as one Conv2d with bias."""
    if isinstance(conv_bn, nn.Identity):
        return conv_bn
    conv, bn = conv_bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    out.weight.data = conv.weight * scale.view(-1, 1, 1, 1)
    out.bias.data = bn.bias - bn.running_mean * scale + (conv.bias * scale if conv.bias is not None else 0)
    return out.to(conv.weight.device)


# ----------------------------------------------------------------------------------------------
# 3. Spiking layers. Each is stateful over the chunks of one run; `reset_state` starts a new run.
# ----------------------------------------------------------------------------------------------


def phase_gates(t0, steps, period, depth, device=None):
    """Bistable phases of the layer at `depth` (0 = first spiking layer) for steps t0..t0+steps-1.

    Time is cut into phases of `period` steps, p = t // period. The layer at depth d integrates in
    phases p = d, d+2, d+4, ... and fires in phases d+1, d+3, ...; before phase d it is silent.
    So layer d+1 integrates exactly while layer d fires, and each layer fires only what it
    accumulated over a whole phase of its input. Returns boolean masks (integrate, fire)."""
    rel = torch.arange(t0, t0 + steps, device=device) // period - depth
    return (rel >= 0) & (rel % 2 == 0), (rel > 0) & (rel % 2 == 1)


class IFLayer(nn.Module):
    """Integrate-and-fire neurons (no leak), reset by subtraction, input [steps, B, ...].

    Each spike carries q = theta/s_max; a neuron emits s = clamp(floor(u/q), 0, s_max) spikes per
    step and keeps the residue u - s*q. s_max = 1: the classic IF neuron with threshold theta;
    s_max = S: the multi-threshold neuron of the paper (eq. 5 with tau_m = inf, V_th = theta/S),
    which can pass up to theta per step like the IF neuron but in S levels instead of one.
    The membrane starts at u0*q.

    `period` makes the neuron bistable (BSNN): it integrates only in its integrating phases
    (input arriving during its firing phase is ignored), fires only in its firing phases (at most
    s_max spikes per step, so up to period*s_max per phase); `keep_residue=False` clears the
    membrane at the start of every integrating phase. `constant=True` (first layer, constant input
    current, not bistable) uses the closed form N(t) = clamp(floor((u0*q + (t+1)*I)/q), 0, s_max*(t+1))
    for the spike count up to step t instead of the time loop.

    Statistics: `inactive` (boolean mask [B, ...] of neurons whose ANN activation is zero, set by
    the caller) -> `spikes_total` and `spikes_inactive`, spike counts per step summed over the
    batch and the neurons, accumulated over batches until `clear_stats`.
    """

    def __init__(self, theta, s_max=1, period=None, depth=0, keep_residue=True, constant=False, u0=0.0):
        super().__init__()
        self.theta, self.s_max, self.period, self.depth = float(theta), int(s_max), period, depth
        self.keep_residue, self.constant, self.u0 = keep_residue, constant, u0
        self.inactive, self.mask_pool = None, None
        self.clear_stats()
        self.reset_state()

    def reset_state(self):
        self.u, self.t = None, 0

    def clear_stats(self):
        self.spikes_total = self.spikes_inactive = None

    def forward(self, x):
        q, steps = self.theta / self.s_max, x.shape[0]
        if self.u is None:  # the membrane in units of q: spikes are floor(u), the reset u -= s
            self.u = torch.full_like(x[0], float(self.u0))
        if self.constant and self.period is None:
            s = self._closed_form(x[0] / q, steps)
        else:
            x, s = x / q, torch.empty_like(x)
            if self.period is not None:
                integ, fire = (m.tolist() for m in phase_gates(self.t, steps, self.period, self.depth))
            for k in range(steps):
                if self.period is None:
                    self.u += x[k]
                elif integ[k]:
                    if not self.keep_residue and (self.t + k) % self.period == 0:
                        self.u.zero_()
                    self.u += x[k]
                    s[k].zero_()
                    continue
                elif not fire[k]:
                    s[k].zero_()
                    continue
                torch.floor(self.u, out=s[k]).clamp_(0, self.s_max)
                self.u -= s[k]
        self.t += steps
        self._record(s)
        return s.mul_(q)

    def _closed_form(self, current, steps):
        t = torch.arange(self.t, self.t + steps + 1, device=current.device, dtype=current.dtype)
        t = t.view(-1, *[1] * current.dim())  # N(t0-1), ..., N(t0+steps-1) from t+1 = t0, ..., t0+steps
        count = torch.floor(self.u0 + t * current).clamp_(min=0)
        count = torch.minimum(count, self.s_max * t)
        self.u = self.u0 + (self.t + steps) * current - count[-1]
        return count.diff(dim=0)

    def _record(self, s):
        dims = tuple(range(1, s.dim()))
        total = s.sum(dims).double()
        if self.inactive is None:
            inactive = torch.zeros_like(total)
        else:  # spikes of neurons whose ANN activation is 0, per step, as one matrix product
            inactive = torch.einsum("tbn,bn->t", s.flatten(2), self.inactive.flatten(1)).double()
        if self.spikes_total is None:
            self.spikes_total, self.spikes_inactive = total, inactive
        elif len(self.spikes_total) < self.t:  # a later chunk of the same run
            self.spikes_total = torch.cat([self.spikes_total, total])
            self.spikes_inactive = torch.cat([self.spikes_inactive, inactive])
        else:  # the same steps of another batch
            self.spikes_total[self.t - len(s):self.t] += total
            self.spikes_inactive[self.t - len(s):self.t] += inactive

    def extra_repr(self):
        return (f"theta={self.theta:.4g}, s_max={self.s_max}, period={self.period}, depth={self.depth}, "
                f"keep_residue={self.keep_residue}, constant={self.constant}")


class SpikePool(nn.Module):
    """Max pooling of spike trains: emits, at each step, the increase of the window's largest
    cumulative spike count. Over any T steps it has emitted exactly max(window counts) — the
    spikes of the window's most active neuron, as the ANN's max of rates — and never more than
    one neuron's spikes per step (plain max of spikes per step over-counts)."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.reset_state()

    def reset_state(self):
        self.count = self.pooled = None

    def forward(self, x):
        count = x.cumsum(0) + (self.count if self.count is not None else 0)
        pooled = F.max_pool2d(count.flatten(0, 1), self.k).unflatten(0, x.shape[:2])
        prev = self.pooled if self.pooled is not None else torch.zeros_like(pooled[0])
        self.count, self.pooled = count[-1], pooled[-1]
        return torch.diff(pooled, dim=0, prepend=prev.unsqueeze(0))


class Synchronous(nn.Module):
    """Synchronous neurons (SN): a delay line of `delay` steps on a shortcut. Output at step t is
    the input at step t - delay (zero before), so the shortcut reaches a block's output neurons
    in the same phase as the residual path."""

    def __init__(self, delay):
        super().__init__()
        self.delay = int(delay)
        self.reset_state()

    def reset_state(self):
        self.buffer = None

    def forward(self, x):
        if self.delay == 0:
            return x
        if self.buffer is None:
            self.buffer = torch.zeros_like(x[:1]).expand(self.delay, *x.shape[1:])
        joined = torch.cat([self.buffer, x])
        self.buffer = joined[-self.delay:]
        return joined[:x.shape[0]]


class SpikingBlock(nn.Module):
    """A converted BasicBlock: if_b(conv2(if_a(conv1(x))) + sync(shortcut(x)))."""

    def __init__(self, conv1, if_a, conv2, shortcut, sync, if_b):
        super().__init__()
        self.conv1, self.if_a, self.conv2, self.if_b = mt.TimeFolded(conv1), if_a, mt.TimeFolded(conv2), if_b
        self.shortcut, self.sync = mt.TimeFolded(shortcut), sync

    def forward(self, x):
        return self.if_b(self.conv2(self.if_a(self.conv1(x))) + self.sync(self.shortcut(x)))


class ConvertedSNN(nn.Module):
    """first (run once on the image: constant input current) -> spiking stages -> readout.

    The readout is the classifier's input current summed over the steps (no spiking output). A
    bistable network's readout integrates only in the integrating phases at `readout_depth`."""

    def __init__(self, first, stages, readout, readout_depth, period=None):
        super().__init__()
        self.first, self.stages, self.readout = first, nn.Sequential(*stages), mt.TimeFolded(readout)
        self.readout_depth, self.period = readout_depth, period

    def if_layers(self):
        return [m for m in self.modules() if isinstance(m, IFLayer)]

    @torch.no_grad()
    def forward(self, images, T=256, chunk=32):
        """The accumulated readout after every step: [T, B, n_classes]."""
        for m in self.modules():
            if hasattr(m, "reset_state") and m is not self:
                m.reset_state()
        current, out = self.first(images), []
        for t0 in range(0, T, chunk):
            steps = min(chunk, T - t0)
            y = self.readout(self.stages(current.unsqueeze(0).expand(steps, *current.shape)))
            if self.period is not None:
                integ, _ = phase_gates(t0, steps, self.period, self.readout_depth, y.device)
                y = y * integ.view(-1, 1, 1)
            out.append(y)
        return torch.cat(out).cumsum(0)


# ----------------------------------------------------------------------------------------------
# 4. Conversion: threshold balancing
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def relu_activations(net, x, batch_size=500):
    """{ReLU module: its outputs on x (concatenated over batches)} from one ANN pass."""
    acts, hooks, timed = {}, [], isinstance(net, mt.SpikingNet)  # a SpikingNet's layers see [T=1, B, ...]
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o: acts.setdefault(mod, []).append(o[0] if timed else o)))
    try:
        net.eval()
        for i in range(0, len(x), batch_size):
            net(x[i:i + batch_size], 1)
    finally:
        for h in hooks:
            h.remove()
    return {m: torch.cat(v) for m, v in acts.items()}


def percentile_threshold(act, p=99.9):
    """The p-th percentile of the positive values of `act`, exact and interpolated linearly as
    torch.quantile does (which refuses more than 16 million values: ResNet-20's first layers on
    1000 calibration images have more). Zeros are left out, as in Rueckauer et al. 2017's SNN
    toolbox: most ReLU outputs are zero and would drag a percentile of everything down."""
    v = act[act > 0].flatten().float()
    if len(v) == 0:
        return 1.0
    rank = p / 100 * (len(v) - 1)
    below, above = (torch.kthvalue(v, k + 1).values for k in (math.floor(rank), math.ceil(rank)))
    return torch.lerp(below, above, rank - math.floor(rank)).item()


def calibrate(ann, calib_x, percentile=99.9):
    """Threshold balancing: the `percentile`-th percentile of each ReLU's positive outputs on
    `calib_x` (training images), one per ReLU in the order the ANN runs them, which is the order
    of the converted network's spiking layers."""
    return [percentile_threshold(a, percentile) for a in relu_activations(ann, calib_x).values()]


@torch.no_grad()
def convert(ann, calib_x, percentile=99.9, s_max=1, period=None, keep_residue=True, sync=True, u0=0.0,
            thresholds=None):
    """Convert a trained ANN (from `ann_net`/`train_ann`, a `ResNet` or a `VGG`) into a `ConvertedSNN`.

    Every ReLU becomes an `IFLayer` with threshold theta = `calibrate(ann, calib_x, percentile)`,
    or `thresholds` when given (one per spiking layer, in order: a stored run's; `calib_x` is then
    unused). `s_max` > 1 gives multi-threshold neurons (spike value theta/s_max); `period` makes
    them bistable. Max pooling becomes `SpikePool`. In a ResNet, `sync=True` delays each shortcut
    by the residual path's extra latency: one spiking layer (if_a) more than the shortcut, i.e. one
    phase = `period` steps when bistable, 0 steps otherwise (the plain IF network has no per-layer
    delay)."""
    thetas = list(thresholds) if thresholds is not None else calibrate(ann, calib_x, percentile)
    depth = iter(range(len(thetas)))
    make = lambda relu, first=False: IFLayer(thetas[d := next(depth)], s_max, period, d, keep_residue,
                                             constant=first, u0=u0)
    ifs = {}
    if isinstance(ann, ResNet):
        first = fold_bn(ann.stem)
        stages = [make(ann.relu, first=True)]
        for b in ann.blocks:
            if_a = make(b.relu1)
            if_b = make(b.relu2)
            delay = (period or 0) if sync else 0
            stages.append(SpikingBlock(fold_bn(b.conv1), if_a, fold_bn(b.conv2), fold_bn(b.shortcut),
                                       Synchronous(delay), if_b))
            ifs.update({if_a: b.relu1, if_b: b.relu2})
        ifs[stages[0]] = ann.relu
        readout = ann.head
    else:
        if isinstance(ann, VGG):
            first, layers = fold_bn(ann.features[0]), [fold_bn(m) if isinstance(m, nn.Sequential) else m
                                                       for m in ann.features[1:]]
            readout = ann.head
        else:
            first, layers = ann.first, [m.layer if isinstance(m, mt.TimeFolded) else m for m in ann.rest]
            *layers, readout = [m for m in layers if not isinstance(m, nn.Identity)]
        stages = []
        for m in layers:
            if isinstance(m, nn.ReLU):
                stages.append(make(m, first=not stages))
                ifs[stages[-1]] = m
            elif isinstance(m, nn.MaxPool2d):
                stages.append(SpikePool(m.kernel_size))
            else:
                stages.append(mt.TimeFolded(m))
        if isinstance(stages[1], SpikePool) and (period is None or keep_residue):
            # The first layer's cumulative spike count is a non-decreasing function of its constant
            # input current, so max pooling commutes with it: pool the current, then fire (4x fewer
            # neurons). The SIN statistics of that layer then refer to the pooled units.
            first = nn.Sequential(first, nn.MaxPool2d(stages[1].k))
            stages[0].mask_pool = stages.pop(1).k
    assert next(depth, None) is None, f"{len(thetas)} thresholds for {len(ifs)} spiking layers"
    snn = ConvertedSNN(first, stages, readout, len(thetas), period)
    snn.relu_of = ifs  # IF layer -> the ANN ReLU it replaces (for the SIN statistics)
    return snn.eval()


# ----------------------------------------------------------------------------------------------
# 5. Evaluation: every T of T_READ from one run
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_conversion(snn, ann, data, T_read=T_READ, batch_size=250, chunk=32):
    """Run `snn` for max(T_read) steps on every image of `data` and read the accumulated output at
    each T in T_read. Returns dict(accuracy={T: %}, agreement={T: % same class as the ANN},
    ann_accuracy, sin={T: [per IF layer: fraction of spikes up to T emitted by neurons whose ANN
    activation is 0, or nan for a layer that has not spiked yet]} for the T of T_READ in T_read,
    rate=[per IF layer: spikes per neuron per step over T_max], spikes=[spikes per image at each
    step, all layers], predictions (int8 [len(T_read), images], -1 = the readout has received nothing
    yet), ann_predictions, seconds)."""
    t0, T_read = time.time(), list(T_read)
    T, ifs = max(T_read), snn.if_layers()
    idx = torch.tensor([t - 1 for t in T_read], device=data.x.device)
    preds, ann_preds, neurons = [], [], [0] * len(ifs)
    for m in ifs:
        m.clear_stats()
    for i in range(0, len(data), batch_size):
        x = data.x[i:i + batch_size]
        acts = relu_activations(ann, x, batch_size)
        for k, m in enumerate(ifs):
            a = acts[snn.relu_of[m]]
            m.inactive = ((F.max_pool2d(a, m.mask_pool) if m.mask_pool else a) <= 0).float()
            neurons[k] += m.inactive[0].numel() * len(x)
        ann_preds.append(ann(x, 1)[0].argmax(1).cpu())
        out = snn(x, T, chunk)[idx]  # [len(T_read), B, classes]
        # no current has reached the readout yet (a bistable pipeline filling up): no answer, -1
        preds.append(torch.where((out == 0).all(2), -1, out.argmax(2)).to(torch.int8).cpu())
    pred, ann_pred, y, n = torch.cat(preds, 1), torch.cat(ann_preds), data.y.cpu(), len(data)
    silent_nan = lambda inactive, total: (inactive / total).item() if total > 0 else float("nan")
    sin = {t: [silent_nan(m.spikes_inactive[:t].sum(), m.spikes_total[:t].sum()) for m in ifs]
           for t in T_READ if t in T_read}
    rate = [(m.spikes_total.sum() / (nn_ * T)).item() for m, nn_ in zip(ifs, neurons)]
    for m in ifs:
        m.inactive = None
    return dict(accuracy={t: 100.0 * (p == y).sum().item() / n for t, p in zip(T_read, pred)},
                agreement={t: 100.0 * (p == ann_pred).sum().item() / n for t, p in zip(T_read, pred)},
                ann_accuracy=100.0 * (ann_pred == y).sum().item() / n, sin=sin, rate=rate,
                spikes=(sum(m.spikes_total for m in ifs) / n).tolist(), predictions=pred,
                ann_predictions=ann_pred, seconds=time.time() - t0)


def steps_within(accuracy, ceiling, points):
    """The smallest T from which the accuracy stays within `points` of `ceiling` at every later T
    read ({T: %}), or None if it is not within at the last T."""
    ts = sorted(accuracy)
    below = [t for t in ts if accuracy[t] < ceiling - points]
    if not below:
        return ts[0]
    return next((t for t in ts if t > below[-1]), None)


def paired_se(predictions, ann_predictions, labels):
    """Sampling error (percentage points) of accuracy(SNN) - accuracy(ANN) on the same images, per
    row of `predictions` [len(T), images]: the standard error of the mean per-image difference."""
    diff = (predictions == labels).double() - (ann_predictions == labels).double()
    return (100.0 * diff.std(1, correction=1) / math.sqrt(diff.shape[1])).tolist()


def first_T_reaching(accuracy, target):
    """The smallest T whose accuracy is >= target, or None."""
    return next((t for t, a in sorted(accuracy.items()) if a >= target), None)


def result_rows(method, result, spec, dataset_variant, epochs, s_max=1, **extra):
    """One `mr.result_row` per T of an `evaluate_conversion` result, with "method" and "T"."""
    rows = []
    for T, acc in result["accuracy"].items():
        run = dict(config=dict(spec=spec, T=T, epochs=epochs, seed=0, s_max=s_max, surrogate=None, alpha_w=None),
                   dataset_variant=dataset_variant, test_accuracy=acc)
        rows.append(mr.result_row(f"{method}, T={T}", [run], method=method, agreement=result["agreement"][T], **extra))
    return rows
