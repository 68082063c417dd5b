"""ANN -> SNN conversion baseline: plain rate conversion, multi-threshold IF, phase coding
(Kim et al. 2018), and two readings of BSNN's bistable and synchronous neurons.

The conversion paper (Li, Zhao & Zeng 2021, *BSNN*, arXiv 2105.12917) is known only by its
abstracts and citing texts (paper/bsnn.md); every dynamic below is our reading of them and is
stated where it is implemented. Two readings of its bistable neurons:
- the *rate-coded reading* (`burst_phase` P, `phase_gates`, `IFLayer`): equal-weight spikes in
  gated phases, a layer integrates for P steps, then fires a burst for P steps (designed from the
  abstract alone);
- the *bistable phase-coded reading* (`phase_period` K, `PhaseCode(bistable=True)`,
  `PhaseCodedLayer`): a neuron accumulates for one period of K steps and emits the accumulated
  value in phase code (Kim et al. 2018: a spike at phase k weighs 2^-(k+1)) during the next, each
  layer one period behind the one below (what citing texts suggest BSNN was; not confirmed).
`burst_phase` (P, one phase of the rate-coded reading) and `phase_period` (K, one period of the
phase code) are different things and named apart.

Contents, top to bottom:

1. `train_ann`: the ReLU network of `mt.build_net(..., activation=nn.ReLU)` (or `ResNet`) trained
   with cross-entropy + Adam on the on-device data
2. `ResNet`: basic blocks, identity / 1x1 shortcuts, batch norm (folded away before conversion)
3. the spiking layers: `IFLayer` (integrate-and-fire, soft reset, optional multi-threshold and
   the rate-coded reading's bistable phases), `SpikePool`, `Synchronous` (the delay line on a
   shortcut), `PhaseCode`, `PhaseCodedLayer`, `PhaseSynapse`, `PeriodPool`, `ConvertedSNN`;
   `latency_floor` and `step_cap` (how many steps to run each reading), `trace_phase_neuron`
4. `convert`: threshold balancing from the p-th percentile of each layer's ANN activations
5. `evaluate_conversion`: one T_max-step run (resumable in chunks of images stored on disk) gives
   the accuracy at every T read, the agreement with the ANN and the spikes of inactivated neurons
   (SIN) per layer

Conventions. A spiking IF layer's output is its spike count times the value one spike carries,
theta/s_max (theta = the layer's balanced threshold): this is the same as Diehl/Rueckauer weight
normalisation (W_l * theta_{l-1}/theta_l, threshold 1) without touching the weights; a layer's
value is sent per step. A phase-coded layer's value is its period total (`PhaseCode`). Time is run
in chunks of `chunk` steps: every layer runs all steps of a chunk before the next layer, the
synaptic layers once on [steps*batch, ...]; only the neurons loop over time (elementwise).
"""
from __future__ import annotations

import copy
import hashlib
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import mtsnn_core as mt
import mtsnn_runs as mr
import mtsnn_runtime as rt
from mtsnn_base import _atomic_save, _expect

T_READ = tuple(2 ** k for k in range(9))  # 1, 2, 4, ..., 256
# Steps run per layer call. Small on a CPU: a chunk's [steps*batch, ...] tensors stay in cache, and the
# neurons' elementwise work is most of the cost (ResNet-20, batch 50, one thread: 5.7 ms per image-step
# at 32 steps, 2.3 at 2; VGG-7 10.0 and 6.2: docs/long_runs.md). It changes only float rounding: ResNet-20's
# spikes are the same; on VGG-7, whose convolutions round differently on batches of another size, up to
# 2 in 10^5 spikes differ (the predictions did not, 50 test images x 64 steps).
STEP_CHUNK = 2


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
    state = rt.claim_checkpoint(checkpoint) if checkpoint else None
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


def phase_gates(t0, steps, burst_phase, depth, device=None):
    """Bistable phases of the rate-coded reading (equal-weight spikes in gated phases) for the
    layer at `depth` (0 = first spiking layer) and steps t0..t0+steps-1.

    Time is cut into phases of `burst_phase` steps (P), p = t // P. The layer at depth d integrates in
    phases p = d, d+2, d+4, ... and fires in phases d+1, d+3, ...; before phase d it is silent.
    So layer d+1 integrates exactly while layer d fires, and each layer fires only what it
    accumulated over a whole phase of its input. Returns boolean masks (integrate, fire)."""
    rel = torch.arange(t0, t0 + steps, device=device) // burst_phase - depth
    return (rel >= 0) & (rel % 2 == 0), (rel > 0) & (rel % 2 == 1)


class IFLayer(nn.Module):
    """Integrate-and-fire neurons (no leak), reset by subtraction, input [steps, B, ...].

    Each spike carries q = theta/s_max; a neuron emits s = clamp(floor(u/q), 0, s_max) spikes per
    step and keeps the residue u - s*q. s_max = 1: the classic IF neuron with threshold theta;
    s_max = S: the multi-threshold neuron of the paper (eq. 5 with tau_m = inf, V_th = theta/S),
    which can pass up to theta per step like the IF neuron but in S levels instead of one.
    The membrane starts at u0*q.

    `burst_phase` (P steps) makes the neuron bistable in the *rate-coded reading* of BSNN (our
    first reading, from the abstract alone: equal-weight spikes in gated phases): it integrates only
    in its integrating phases of P steps (input arriving during its firing phase is ignored), fires
    only in its firing phases (at most s_max spikes per step, so up to P*s_max per phase);
    `keep_residue=False` clears the membrane at the start of every integrating phase.
    `constant=True` (first layer, constant input current, not bistable) uses the closed form
    N(t) = clamp(floor((u0*q + (t+1)*I)/q), 0, s_max*(t+1)) for the spike count up to step t
    instead of the time loop.

    Statistics: `inactive` (boolean mask [B, ...] of neurons whose ANN activation is zero, set by
    the caller) -> `spikes_total` and `spikes_inactive`, spike counts per step summed over the
    batch and the neurons, accumulated over batches until `clear_stats`.
    """

    def __init__(self, theta, s_max=1, burst_phase=None, depth=0, keep_residue=True, constant=False, u0=0.0):
        super().__init__()
        self.theta, self.s_max, self.burst_phase, self.depth = float(theta), int(s_max), burst_phase, depth
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
        if self.constant and self.burst_phase is None:
            s = self._closed_form(x[0] / q, steps)
        else:
            x, s = x / q, torch.empty_like(x)
            if self.burst_phase is not None:
                integ, fire = (m.tolist() for m in phase_gates(self.t, steps, self.burst_phase, self.depth))
            for k in range(steps):
                if self.burst_phase is None:
                    self.u += x[k]
                elif integ[k]:
                    if not self.keep_residue and (self.t + k) % self.burst_phase == 0:
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
        return (f"theta={self.theta:.4g}, s_max={self.s_max}, burst_phase={self.burst_phase}, depth={self.depth}, "
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


@dataclass(frozen=True)
class PhaseCode:
    """Phase coding (Kim, Kim, Kim & Kim 2018, *Deep neural networks with weighted spikes*,
    Neurocomputing) and our bistable phase-coded reading of BSNN: what every phase-coded module of
    a converted network (`PhaseCodedLayer`, `PhaseSynapse`, `PeriodPool`, the readout) shares.

    Taken from Kim et al. 2018 (as the citing texts and survey quoted in paper/bsnn.md and issue 35
    describe it; its full text was not reachable): time is cut into periods of K = `phase_period`
    steps; a spike at phase k = t mod K (k = 0..K-1) weighs 2^-(k+1), times the layer's threshold
    theta (our scale: the percentile-balanced threshold, as for the IF neurons); the firing
    threshold at phase k follows the weight (theta * 2^-(k+1)); the membrane is reset by subtracting
    that weight. One period of binary spikes so transmits a K-bit value in [0, theta (1 - 2^-K)].

    Taken from BSNN's abstracts (arXiv 2105.12917; Frontiers 16:991851: "more accurate delivery of
    information to the next layer after one cycle") and the citing texts, as issue 35 reads them:
    `bistable=True`, a neuron accumulates its input for one period without firing and emits the
    accumulated value in phase code during the next, each layer one period behind the one below.

    Chosen here (the sources leave it open), each with why:
    - the value a layer carries is its *period total* (sum of its weighted spikes over a period),
      so the ANN's activation a is sent once per period, not once per step;
    - biases enter once per period (`PhaseSynapse`: at phase 0), not every step: with period totals,
      a bias added every step would count K times;
    - `analog_input`: how the first layer's analog current I (the first synaptic layer on the image,
      bias included) enters: "period" (the default) = all of I at phase 0 of every period, so that a
      continuous phase-coded first layer emits I's K-bit code in one period exactly (a bistable one
      sees only the period total, so for it the two are the same); "phase" = I * 2^-(k+1) / (1 - 2^-K)
      at phase k (the period total is I), the analog counterpart of Kim et al.'s phase-coded input;
    - `alternate`: False (the default) = a bistable neuron accumulates the next period's input while
      it emits the last one's (an accumulating compartment beside the emitting register), so every
      period carries a value; True = it alternates between the two states, ignoring input while it
      emits (the strict two-state neuron, half the throughput, as in our rate-coded reading). The
      latency floor, (layers + 1) * K steps, is the same for both;
    - the residue is kept: what a period's spikes did not emit (the part below the K-bit quantum, an
      excess above theta (1 - 2^-K), or a negative total) stays in the register for the next period;
    - max pooling after a bistable layer pools period totals (`PeriodPool`); after a continuous
      phase-coded layer it is `SpikePool` on cumulative weighted sums (no period alignment there);
    - `readout`: "period" (the default) = the classifier's current summed over whole periods: the
      readout at step T counts the periods completed by T (a prediction before the first is "none",
      -1), because a layer's value is its period total and a reading inside a period mixes that
      period's bias (entered at phase 0) with only its first phases' spikes (measured on a
      784-100-100-10 MNIST MLP, bistable, K = 8: read every step, it stays within 1 point of its
      ANN only from T = 35; read per period, from the latency floor T = 24 on);
      "step" = summed over every step so far. In a bistable network the readout integrates only from
      period `readout_depth` on (alternating: only in the periods the last layer emits);
    - ResNet shortcuts with synchronous neurons (`sync=True`): a delay of one whole period (K steps),
      the one spiking layer the residual path has more than the shortcut; none for continuous phase
      coding (no per-layer period delay there), as for plain IF;
    - SIN is counted in spikes (each spike costs the same synaptic operations); `evaluate_conversion`
      also gives it weighted by the spikes' weights (`sin_weighted`, their share of the value sent);
    - K and the threshold percentile are the caller's (notebook 51), chosen on training images,
      never on the test set."""

    phase_period: int
    bistable: bool = False
    alternate: bool = False
    analog_input: str = "period"
    readout: str = "period"

    def __post_init__(self):
        _expect("phase_period", self.phase_period, int, lambda v: v >= 1, "an int >= 1")
        _expect("analog_input", self.analog_input, str, lambda v: v in ("period", "phase"), '"period" or "phase"')
        _expect("readout", self.readout, str, lambda v: v in ("period", "step"), '"period" or "step"')

    def weights(self, t0, steps):
        """The weight of one spike, in units of theta, at steps t0..t0+steps-1: [2^-(k+1)]."""
        return [2.0 ** -((t0 + j) % self.phase_period + 1) for j in range(steps)]

    def gates(self, t0, steps, depth):
        """(accumulate, emit): lists of booleans, per step, for the layer at `depth`. Continuous
        phase coding: always both. Bistable: with rel = t // K - depth, it accumulates from rel = 0
        on and emits from rel = 1 on (alternating: accumulates in even rel, emits in odd rel)."""
        if not self.bistable:
            return [True] * steps, [True] * steps
        rel = [(t0 + j) // self.phase_period - depth for j in range(steps)]
        if self.alternate:
            return [r >= 0 and r % 2 == 0 for r in rel], [r >= 1 and r % 2 == 1 for r in rel]
        return [r >= 0 for r in rel], [r >= 1 for r in rel]

    def input_weights(self, t0, steps, device=None):
        """What multiplies the first layer's analog current at each step (see `analog_input`)."""
        K = self.phase_period
        if self.analog_input == "period":
            w = [1.0 if (t0 + j) % K == 0 else 0.0 for j in range(steps)]
        else:
            w = [v / (1 - 2.0 ** -K) for v in self.weights(t0, steps)]
        return torch.tensor(w, device=device)


class PhaseCodedLayer(IFLayer):
    """Phase-coded neurons (`PhaseCode`, Kim et al. 2018), continuous or bistable, input
    [steps, B, ...] of currents; output the weighted spikes theta * 2^-(k+1) (0 or that, per step).

    The membrane u is kept in units of theta. Continuous (`code.bistable` False): every step
    u += x / theta, then a spike if u >= 2^-(k+1) and u -= 2^-(k+1) (reset by subtraction; one
    spike at most per step). Bistable: an accumulating compartment `acc` sums the input of a period
    (from period `depth` on); at phase 0 of each emitting period it is added to the register u
    (which keeps the residue), and during that period u is emitted greedily in phase code, the same
    rule as above: a register holding v in [0, 1) emits floor(v 2^K) / 2^K exactly; a negative total
    emits nothing (no SIN). Statistics as `IFLayer`'s, in spikes (weights: `spike_weights`)."""

    def __init__(self, theta, code, depth=0):
        super().__init__(theta, 1, None, depth)
        self.code = code

    def reset_state(self):
        super().reset_state()
        self.acc = None

    def spike_weights(self, t0, steps):
        """The value of one spike of this layer at steps t0..: theta * 2^-(k+1)."""
        return [self.theta * w for w in self.code.weights(t0, steps)]

    def forward(self, x):
        steps, bistable = x.shape[0], self.code.bistable
        if self.u is None:
            self.u, self.acc = torch.zeros_like(x[0]), torch.zeros_like(x[0])
        x, s = x / self.theta, torch.zeros_like(x)
        weights = self.code.weights(self.t, steps)
        accumulate, emit = self.code.gates(self.t, steps, self.depth)
        for j, w in enumerate(weights):
            if bistable:
                if emit[j] and w == 0.5:  # phase 0 of an emitting period: the last period's total joins
                    self.u += self.acc
                    self.acc.zero_()
                if accumulate[j]:
                    self.acc += x[j]
                if not emit[j]:
                    continue
            else:
                self.u += x[j]
            s[j] = self.u >= w
            self.u.sub_(s[j], alpha=w)
        self.t += steps
        self._record(s)
        return s.mul_(torch.tensor(weights, dtype=s.dtype, device=s.device).mul_(self.theta)
                      .view(-1, *[1] * (s.dim() - 1)))

    def extra_repr(self):
        return f"theta={self.theta:.4g}, code={self.code}, depth={self.depth}"


class PhaseSynapse(nn.Module):
    """A synaptic layer (conv, linear, or a sequence with one bias at its output such as the head
    pool-flatten-linear) whose bias enters once per period, at phase 0 (`PhaseCode`: a layer's value
    is its period total); its weights act on every step. The bias map is the layer's output for a
    zero input."""

    def __init__(self, layer, code):
        super().__init__()
        linear = copy.deepcopy(layer)
        for m in linear.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias = None
        self.linear, self.affine, self.code = mt.TimeFolded(linear), layer, code
        self.reset_state()

    def reset_state(self):
        self.t = 0

    def forward(self, x):
        steps = x.shape[0]
        y = self.linear(x)
        at = [j for j in range(steps) if (self.t + j) % self.code.phase_period == 0]
        if at:
            y[at] += self.affine(torch.zeros_like(x[0, :1]))
        self.t += steps
        return y


class PeriodPool(nn.Module):
    """Max pooling of period totals (after a bistable phase-coded layer): sums its input over each
    period of K steps and, at the period's last step, emits the max over each window of those
    totals (nothing at the other steps), i.e. the max pooling of the period's values, in the period
    they belong to (the next layer accumulates that period)."""

    def __init__(self, k, code):
        super().__init__()
        self.k, self.code = k, code
        self.reset_state()

    def reset_state(self):
        self.t, self.total = 0, None

    def forward(self, x):
        K = self.code.phase_period
        if self.total is None:
            self.total = torch.zeros_like(x[0])
        out = x.new_zeros(x.shape[0], *F.max_pool2d(x[0], self.k).shape)
        for j in range(x.shape[0]):
            self.total += x[j]
            if (self.t + j) % K == K - 1:
                out[j] = F.max_pool2d(self.total, self.k)
                self.total.zero_()
        self.t += x.shape[0]
        return out


class ConvertedSNN(nn.Module):
    """first (run once on the image: constant input current) -> spiking stages -> readout.

    The readout is the classifier's input current summed over the steps (no spiking output). In
    the rate-coded reading of BSNN (`burst_phase` P) the readout integrates only in the integrating
    phases at `readout_depth`. With a `phase` code (`PhaseCode`) the first layer's current enters as
    its `input_weights` say, a bistable network's readout integrates only where the layer at
    `readout_depth` would accumulate (from period `readout_depth` on), and the readout is read at
    the end of each period (`PhaseCode.readout`)."""

    def __init__(self, first, stages, readout, readout_depth, burst_phase=None, phase=None):
        super().__init__()
        self.first, self.stages = first, nn.Sequential(*stages)
        self.readout = readout if isinstance(readout, PhaseSynapse) else mt.TimeFolded(readout)
        self.readout_depth, self.burst_phase, self.phase = readout_depth, burst_phase, phase

    def if_layers(self):
        return [m for m in self.modules() if isinstance(m, IFLayer)]

    @torch.no_grad()
    def forward(self, images, T=256, chunk=STEP_CHUNK):
        """The accumulated readout after every step: [T, B, n_classes]."""
        for m in self.modules():
            if hasattr(m, "reset_state") and m is not self:
                m.reset_state()
        current, out = self.first(images), []
        for t0 in range(0, T, chunk):
            steps = min(chunk, T - t0)
            self.t0 = t0  # the step the synaptic-operation counters of `_evaluate_images` place this chunk at
            x = current.unsqueeze(0).expand(steps, *current.shape)
            if self.phase is not None:
                x = x * self.phase.input_weights(t0, steps, x.device).view(-1, *[1] * current.dim())
            y = self.readout(self.stages(x))
            if self.burst_phase is not None:
                integ, _ = phase_gates(t0, steps, self.burst_phase, self.readout_depth, y.device)
                y = y * integ.view(-1, 1, 1)
            elif self.phase is not None and self.phase.bistable:
                integ = torch.tensor(self.phase.gates(t0, steps, self.readout_depth)[0], device=y.device)
                y = y * integ.view(-1, 1, 1)
            out.append(y)
        out = torch.cat(out).cumsum(0)
        if self.phase is not None and self.phase.readout == "period":  # what the completed periods brought
            K = self.phase.phase_period
            done = (torch.arange(T, device=out.device) + 1) // K * K  # steps in whole periods by each T
            out = torch.cat([torch.zeros_like(out[:1]), out])[done]
        return out


def latency_floor(snn):
    """Steps until the readout has received one whole period (phase) of the last spiking layer's
    output, L = `snn.readout_depth` spiking layers: (L + 1) * K for bistable phase coding (ResNet-20,
    19 spiking layers, K = 8: 160), (L + 1) * P for the rate-coded reading, K for continuous phase
    coding (one period), 1 for plain and multi-threshold IF."""
    L = snn.readout_depth
    if snn.phase is not None:
        return (L + 1) * snn.phase.phase_period if snn.phase.bistable else snn.phase.phase_period
    return (L + 1) * snn.burst_phase if snn.burst_phase is not None else 1


def step_cap(snn, factor=8, minimum=1024):
    """The number of steps to run a reading for: `factor` times its `latency_floor`, at least
    `minimum`, rounded up to whole periods (phases). A default, stated with the results: a reading
    still short of its ANN at the cap is reported as "> cap"."""
    unit = snn.phase.phase_period if snn.phase is not None else (snn.burst_phase or 1)
    return -(-max(minimum, factor * latency_floor(snn)) // unit) * unit


@torch.no_grad()
def trace_phase_neuron(inputs, theta=1.0, phase_period=4, bistable=False, alternate=False):
    """One phase-coded neuron (`PhaseCodedLayer`, depth 0) step by step, for a figure: `inputs` is
    its input current per step (a sequence; e.g. [I, 0, 0, 0] * 2 for a constant I entering once
    per period over two periods). Returns a dict of per-step lists: step, phase, input, threshold
    (theta 2^-(k+1), the weight a spike at that step carries), membrane (after the step; bistable:
    the emitting register), accumulated (bistable: the accumulating compartment; None otherwise),
    spike (0/1), weight (the spike's value: spike * threshold) and emitted (cumulative)."""
    code = PhaseCode(int(phase_period), bistable, alternate)
    layer = PhaseCodedLayer(theta, code)
    rows = dict(step=[], phase=[], input=[], threshold=[], membrane=[], accumulated=[], spike=[], weight=[])
    for t, i in enumerate(inputs):
        out = layer(torch.tensor([[float(i)]], dtype=torch.float64))[0, 0].item()
        w = theta * code.weights(t, 1)[0]
        for k, v in dict(step=t, phase=t % code.phase_period, input=float(i), threshold=w,
                         membrane=layer.u.item() * theta,
                         accumulated=layer.acc.item() * theta if bistable else None,
                         spike=int(out != 0), weight=out).items():
            rows[k].append(v)
    rows["emitted"] = torch.tensor(rows["weight"], dtype=torch.float64).cumsum(0).tolist()
    return rows



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
def convert(ann, calib_x, percentile=99.9, s_max=1, burst_phase=None, keep_residue=True, sync=True, u0=0.0,
            thresholds=None, phase_period=None, phase_bistable=False, phase_alternate=False, analog_input="period",
            phase_readout="period"):
    """Convert a trained ANN (from `ann_net`/`train_ann`, a `ResNet` or a `VGG`) into a `ConvertedSNN`.

    Every ReLU becomes a spiking layer with threshold theta = `calibrate(ann, calib_x, percentile)`,
    or `thresholds` when given (one per spiking layer, in order: a stored run's; `calib_x` is then
    unused). Readings:
    - plain IF (the default) and multi-threshold IF (`s_max` > 1: spike value theta/s_max): `IFLayer`;
    - the *rate-coded reading* of BSNN: `burst_phase` = P makes the IF neurons bistable, integrating
      for P steps, then firing a burst for P steps (`phase_gates`);
    - phase coding (Kim et al. 2018): `phase_period` = K, `PhaseCodedLayer`s (`PhaseCode`), biases
      once per period (`PhaseSynapse`); `phase_bistable=True` gives the bistable phase-coded reading
      of BSNN (`phase_alternate`, `analog_input`, `phase_readout`: see `PhaseCode`).
    Max pooling becomes `SpikePool` (`PeriodPool` after bistable phase-coded layers). In a ResNet,
    `sync=True` delays each shortcut by the residual path's extra latency, one spiking layer (if_a)
    more than the shortcut: one phase (P steps) in the rate-coded reading, one period (K steps) in
    the bistable phase-coded one, 0 steps otherwise (no per-layer delay)."""
    _expect("burst_phase and phase_period", (burst_phase, phase_period), tuple, lambda v: None in v,
            "not both (the rate-coded reading or phase coding)")
    code = (PhaseCode(int(phase_period), phase_bistable, phase_alternate, analog_input, phase_readout)
            if phase_period else None)
    thetas = list(thresholds) if thresholds is not None else calibrate(ann, calib_x, percentile)
    depth = iter(range(len(thetas)))

    def make(relu, first=False):
        d = next(depth)
        if code is not None:
            return PhaseCodedLayer(thetas[d], code, d)
        return IFLayer(thetas[d], s_max, burst_phase, d, keep_residue, constant=first, u0=u0)

    synapse = (lambda m: PhaseSynapse(m, code)) if code is not None else mt.TimeFolded
    ifs = {}
    if isinstance(ann, ResNet):
        first = fold_bn(ann.stem)
        stages = [make(ann.relu, first=True)]
        for b in ann.blocks:
            if_a = make(b.relu1)
            if_b = make(b.relu2)
            delay = (burst_phase or (phase_period if code is not None and code.bistable else 0)) if sync else 0
            block = SpikingBlock(fold_bn(b.conv1), if_a, fold_bn(b.conv2), fold_bn(b.shortcut),
                                 Synchronous(delay), if_b)
            if code is not None:  # biases once per period
                block.conv1, block.conv2, block.shortcut = (synapse(m.layer) for m in
                                                            (block.conv1, block.conv2, block.shortcut))
            stages.append(block)
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
                stages.append(PeriodPool(m.kernel_size, code) if code is not None and code.bistable
                              else SpikePool(m.kernel_size))
            else:
                stages.append(synapse(m))
        pooled_next = len(stages) > 1 and isinstance(stages[1], SpikePool)
        if pooled_next and code is None and (burst_phase is None or keep_residue):
            # The first layer's cumulative spike count is a non-decreasing function of its constant
            # input current, so max pooling commutes with it: pool the current, then fire (4x fewer
            # neurons). The SIN statistics of that layer then refer to the pooled units.
            first = nn.Sequential(first, nn.MaxPool2d(stages[1].k))
            stages[0].mask_pool = stages.pop(1).k
    assert next(depth, None) is None, f"{len(thetas)} thresholds for {len(ifs)} spiking layers"
    snn = ConvertedSNN(first, stages, synapse(readout) if code is not None else readout, len(thetas), burst_phase,
                       code)
    snn.relu_of = ifs  # IF layer -> the ANN ReLU it replaces (for the SIN statistics)
    snn.source_of = _synapse_sources(snn)
    return snn.eval()


def _synapse_sources(snn):
    """{synaptic module (`mt.TimeFolded` or `PhaseSynapse`) run on spikes: the spiking layer whose
    output it receives} in the order they run (the first layer, run once on the image, is not one of
    them; a ResNet block's shortcut receives what its conv1 receives; pooling passes spikes through).
    What `evaluate_conversion` counts synaptic operations on (a plain dict: not submodules)."""
    sources, last = {}, None
    for stage in snn.stages:
        if isinstance(stage, IFLayer):
            last = stage
        elif isinstance(stage, SpikingBlock):
            sources.update({stage.conv1: last, stage.shortcut: last, stage.conv2: stage.if_a})
            last = stage.if_b
        elif isinstance(stage, (mt.TimeFolded, PhaseSynapse)) and isinstance(
                stage.affine if isinstance(stage, PhaseSynapse) else stage.layer, (nn.Conv2d, nn.Linear)):
            sources[stage] = last  # (a flatten or dropout stage passes spikes through)
    sources[snn.readout] = last
    return sources


def fan_out(layer, shape):
    """Per input neuron of `layer` (shape [C, H, W] or [N]): the number of synapses leaving it, i.e.
    of output neurons one of its spikes changes (a conv: out channels x the kernel positions that
    reach it, fewer at a border or with a stride; a linear layer or the head global-average-pool ->
    linear: its outputs; an identity shortcut: 1)."""
    if isinstance(layer, nn.Identity):
        return torch.ones(shape)
    if isinstance(layer, nn.Linear):
        return torch.full(shape, float(layer.out_features))
    if isinstance(layer, nn.Conv2d):
        ones = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, bias=False, padding_mode=layer.padding_mode)
        nn.init.ones_(ones.weight)
        x = torch.zeros(1, *shape, requires_grad=True)
        with torch.enable_grad():
            ones(x).sum().backward()
        return x.grad[0].detach()
    if isinstance(layer, nn.Sequential):
        rest = [m for m in layer if not isinstance(m, (nn.Flatten, nn.AdaptiveAvgPool2d, nn.Identity))]
        if len(rest) == 1 and isinstance(rest[0], nn.Linear):  # the head: every input feeds every output
            return torch.full(shape, float(rest[0].out_features))
    raise ValueError(f"no fan-out rule for {layer}")



# ----------------------------------------------------------------------------------------------
# 5. Evaluation: every T read from one run, resumable in chunks of images
# ----------------------------------------------------------------------------------------------


def _code_files():
    """This module's source and that of every package module it imports, directly or through another
    (a lazy import inside a function included): the code that computes a chunk's numbers."""
    here, todo, seen = Path(__file__).resolve().parent, [Path(__file__).stem], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += re.findall(r"^\s*(?:import|from)\s+(mtsnn_\w+)", (here / f"{name}.py").read_text(), re.M)
    return [here / f"{name}.py" for name in sorted(seen)]


def _code_digest():
    """A hash of `_code_files`. Chunks of another code are refused even when git's commit is the same
    (a dirty tree) or when MTSNN_COMMIT says otherwise; commits that touch only notebooks, figures,
    text or modules the evaluation does not import (the tables, the gradient study) do not make a
    stored chunk stale."""
    h = hashlib.sha256()
    for path in _code_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _tensor_digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _synaptic_op_hooks(snn, T):
    """Forward pre-hooks on every synaptic module of `snn.source_of` that add, per step, the
    synaptic operations of the spikes arriving there (summed over the batch) to the rows of the
    returned float64 [synapses, T] (whole numbers, so sums over chunks are exact), and the hooks.

    One synaptic operation = one accumulate (AC: a weight added to a membrane). A spike arriving at
    a synaptic module costs its sender's `fan_out` ACs there. A multi-threshold spike of s levels
    (IF layers: s = value / (theta/s_max)) costs s times that, as it counts s in `layer_spikes` (s
    additions of the weight, or one weight times a 4-bit s). A phase-coded spike (weight 2^-(k+1))
    costs one AC per synapse: the receiving neuron adds the weight scaled by 2^-(k+1), a shift in
    fixed point (Kim et al. 2018's weighted spike), so a period of K phases costs at most K ACs per
    synapse. Not counted: the first layer's convolution on the analog image (run once per image:
    multiply-adds, not spikes), biases, the readout's accumulation, max pooling and delays."""
    sources = getattr(snn, "source_of", {})
    counts = torch.zeros(len(sources), T, dtype=torch.float64)
    fans = {}

    def hook(row, module, source):
        layer = module.affine if isinstance(module, PhaseSynapse) else module.layer

        def count(_, inputs):
            x = inputs[0]
            if row not in fans:
                fans[row] = fan_out(layer, tuple(x.shape[2:])).to(x.device, torch.float64).flatten()
            # summed over the batch, then in levels (rounding absorbs float32's error): whole numbers, exact in float64
            if isinstance(source, PhaseCodedLayer):
                events = (x != 0).sum(1).double()
            else:
                events = torch.round(x.sum(1).double() / (source.theta / source.s_max))
            ops = (events.flatten(1) @ fans[row]).cpu()
            counts[row, snn.t0:snn.t0 + len(ops)] += ops
        return count

    hooks = [m.register_forward_pre_hook(hook(row, m, source)) for row, (m, source) in enumerate(sources.items())]
    return counts, hooks


@torch.no_grad()
def _evaluate_images(snn, ann, x, y, T, batch_size, chunk):
    """One run of `snn` for T steps over the images x (labels y), batch by batch: the raw counts
    `evaluate_conversion` combines. predictions int8 [T, images] (-1: the readout has received
    nothing yet), ann_predictions, labels; per spiking layer and step, summed over the images,
    layer_spikes (spikes; a multi-threshold spike of s levels counts s) and layer_sin (those of
    neurons whose ANN activation is 0), float64 [layers, T] holding whole numbers (so sums over
    chunks are exact); neurons and inactive_neurons per layer (summed over the images); layer_sops,
    float64 [synaptic modules, T]: synaptic operations per step summed over the images
    (`_synaptic_op_hooks`)."""
    t0, ifs = time.time(), snn.if_layers()
    preds, ann_preds, neurons, inactive = [], [], [0] * len(ifs), [0] * len(ifs)
    for m in ifs:
        m.clear_stats()
    sops, hooks = _synaptic_op_hooks(snn, T)
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            acts = relu_activations(ann, xb, batch_size)
            for k, m in enumerate(ifs):
                a = acts[snn.relu_of[m]]
                m.inactive = ((F.max_pool2d(a, m.mask_pool) if m.mask_pool else a) <= 0).float()
                neurons[k] += m.inactive[0].numel() * len(xb)
                inactive[k] += int(m.inactive.sum().item())
            ann_preds.append(ann(xb, 1)[0].argmax(1).cpu())
            out = snn(xb, T, chunk)  # [T, B, classes]
            # no current has reached the readout yet (a bistable pipeline filling up): no answer, -1
            preds.append(torch.where((out == 0).all(2), -1, out.argmax(2)).to(torch.int8).cpu())
    finally:
        for h in hooks:
            h.remove()
    result = dict(predictions=torch.cat(preds, 1), ann_predictions=torch.cat(ann_preds), labels=y.cpu(),
                  layer_spikes=torch.stack([m.spikes_total.double().cpu() for m in ifs]),
                  layer_sin=torch.stack([m.spikes_inactive.double().cpu() for m in ifs]),
                  neurons=neurons, inactive_neurons=inactive, layer_sops=sops, seconds=time.time() - t0)
    for m in ifs:
        m.inactive = None
        m.clear_stats()
    return result


def _chunk_key(snn, ann, T, batch_size, chunk, chunk_images, config):
    """What a stored chunk must share with the run that reads it: the caller's `config`, the
    converted network (its modules' description, its spiking layers' thresholds and settings in
    full precision, a hash of its parameters), the ANN's
    parameters, the steps, the batch and time-chunk sizes, the chunk size and the code."""
    layers = [(type(m).__name__, m.theta, m.s_max, m.u0, m.depth, m.keep_residue, m.mask_pool) for m in snn.if_layers()]
    return dict(config=config, snn=repr(snn), layers=layers, snn_digest=_digest(snn), ann_digest=_digest(ann),
                T_max=T, batch_size=batch_size, chunk=chunk, chunk_images=chunk_images, code=_code_digest())


def _run_chunks(snn, ann, data, T, batch_size, chunk, store, chunk_images, config, stop_at, stored_code=False):
    """The chunks of `evaluate_conversion(store=...)`: read the stored ones (refusing any of
    another key), compute the missing ones in order and store each atomically. Returns the
    chunks covering images 0.. in order (fewer when `stop_at` stopped it). `stored_code`: see
    `evaluate_conversion`."""
    _expect("chunk_images", chunk_images, int, lambda v: v >= 1 and v % batch_size == 0,
            f"a positive multiple of batch_size ({batch_size}), so that a chunked run batches as one run")
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    key = _chunk_key(snn, ann, T, batch_size, chunk, chunk_images, config)
    stored, codes = {}, set()
    for path in sorted(store.glob("chunk_*.pt")):
        c = torch.load(path, map_location="cpu", weights_only=False)
        codes.add(c["key"]["code"])
        if c["key"] != key:
            diff = sorted(k for k in key if c["key"].get(k) != key[k] and not (stored_code and k == "code"))
            if not diff:  # the same run, computed by another version of the code
                if len(codes) > 1:
                    raise ValueError(f"{store} holds chunks of more than one version of the code: never mixed")
                stored[c["images"]] = c
                continue
            raise ValueError(f"{path} holds another configuration or code (differs in {diff}): "
                             f"chunks are never mixed; use another store")
        stored[c["images"]] = c
    if len(codes) > 1:
        raise ValueError(f"{store} holds chunks of more than one version of the code: never mixed")
    chunks, last = [], None
    for i in range(0, len(data), chunk_images):
        j = min(i + chunk_images, len(data))
        x, y = data.x[i:j], data.y[i:j]
        digest = _tensor_digest(x, y)
        c = stored.get((i, j))
        if c is not None:
            if c["data_digest"] != digest:
                raise ValueError(f"the stored chunk of images {i}..{j} in {store} holds other images")
        else:
            if stored_code:
                raise ValueError(f"{store} holds no chunk of images {i}..{j}: with stored_code=True nothing is "
                                 f"computed (run the missing chunks with the code that computed the others)")
            if stop_at is not None and last is not None and time.time() + last > stop_at:
                break
            c = dict(_evaluate_images(snn, ann, x, y, T, batch_size, chunk), key=key, images=(i, j),
                     data_digest=digest, provenance=rt.provenance(), device=rt.device_name(x.device))
            _atomic_save(c, store / f"chunk_{i:07d}_{j:07d}.pt")
            last = c["seconds"]
        chunks.append(c)
    return chunks


@torch.no_grad()
def evaluate_conversion(snn, ann, data, T_read=T_READ, batch_size=250, chunk=STEP_CHUNK, store=None, chunk_images=None,
                        config=None, stop_at=None, stored_code=False):
    """Run `snn` for T = max(T_read) steps on every image of `data` and read the accumulated
    output at each T in T_read (e.g. `range(1, step_cap(snn) + 1)`: every step).

    Resumable: with `store` (a folder) the images are run in chunks of `chunk_images` (a multiple
    of `batch_size`, so that the batches are those of one run), each chunk written atomically to
    `store` as soon as it is done, with its per-image predictions at every step (and the ANN's),
    its per-layer per-step spike, SIN and synaptic-operation counts and neuron counts, the configuration (`config`,
    the caller's description, plus the network, its parameters, T, batch and chunk sizes: see
    `_chunk_key`), a hash of the code that computed it and `rt.provenance()` (commit, CPU,
    torch). A later call with the same arguments reads the stored chunks and runs only the
    missing ones; a stored chunk of another configuration or code is refused (ValueError), never
    mixed in. `stop_at` (a time.time() value): no chunk is started that would end after it (judged
    by the last chunk's duration); the result then covers the chunks done (`complete` False).
    `stored_code=True` reads a complete store as it is even when another version of the code
    computed it (all its chunks by one and the same: they are still never mixed; each chunk's
    `provenance` names its commit) and computes nothing (ValueError for a missing chunk): how a
    notebook reads a long run made at a pinned commit. The
    combined result equals one run over all images (same CPU, threads and batch size): counts are
    whole numbers, summed exactly.

    Returns dict(accuracy={T: %}, agreement={T: % same class as the ANN}, ann_accuracy,
    sin={T: [per spiking layer: fraction of its spikes up to T emitted by neurons whose ANN
    activation is 0, nan for a layer that has not spiked yet]} at every T of T_read, sin_weighted
    (the same with each spike weighted by its value: for phase coding the share of the value sent;
    for IF layers the same as sin), sops={T: synaptic operations (accumulates) per image up to T}
    (`_synaptic_op_hooks` says what one costs), layer_sops (float64 [synaptic modules, T], summed
    over the images), rate=[per layer: spikes per neuron per step over T],
    spikes=[spikes per image at each step, all layers], layer_spikes and layer_sin (float64
    [layers, T], summed over the images), neurons and inactive_neurons (per layer, summed over
    the images), predictions (int8 [len(T_read), images], -1 = no answer yet), ann_predictions,
    labels, images, complete, seconds (summed over the chunks) and chunks (per chunk: images,
    seconds, device, provenance))."""
    T_read = list(T_read)
    T = max(T_read)
    if store is None:
        chunks = [dict(_evaluate_images(snn, ann, data.x, data.y, T, batch_size, chunk), images=(0, len(data)))]
    else:
        chunks = _run_chunks(snn, ann, data, T, batch_size, chunk, store, chunk_images or batch_size, config, stop_at,
                             stored_code)
        if not chunks:
            return None
    return _combine(snn, chunks, T_read, complete=chunks[-1]["images"][1] == len(data))


def _combine(snn, chunks, T_read, complete=True):
    """`evaluate_conversion`'s result from its chunks (see there)."""
    T = chunks[0]["predictions"].shape[0]
    all_pred = torch.cat([c["predictions"] for c in chunks], 1)
    ann_pred, y = (torch.cat([c[k] for c in chunks]) for k in ("ann_predictions", "labels"))
    spikes, inactive, sops = (sum(c[k] for c in chunks) for k in ("layer_spikes", "layer_sin", "layer_sops"))
    neurons, inactive_neurons = ([sum(v) for v in zip(*(c[k] for c in chunks))]
                                 for k in ("neurons", "inactive_neurons"))
    n, ifs = len(y), snn.if_layers()
    pred = all_pred[[t - 1 for t in T_read]]
    value = torch.tensor([m.spike_weights(0, T) if isinstance(m, PhaseCodedLayer) else [m.theta / m.s_max] * T
                          for m in ifs], dtype=torch.float64)

    def shares(part, whole):  # {T: per layer, part / whole up to T (nan where whole is 0)}
        part, whole = part.cumsum(1), whole.cumsum(1)
        ratio = torch.where(whole > 0, part / whole.clamp(min=1e-300), float("nan"))
        return {t: ratio[:, t - 1].tolist() for t in T_read}

    return dict(accuracy={t: 100.0 * (p == y).sum().item() / n for t, p in zip(T_read, pred)},
                agreement={t: 100.0 * (p == ann_pred).sum().item() / n for t, p in zip(T_read, pred)},
                ann_accuracy=100.0 * (ann_pred == y).sum().item() / n, sin=shares(inactive, spikes),
                sin_weighted=shares(inactive * value, spikes * value),
                rate=[(s.sum() / (k * T)).item() for s, k in zip(spikes, neurons)],
                spikes=(spikes.sum(0) / n).tolist(), layer_spikes=spikes, layer_sin=inactive, layer_sops=sops,
                sops={t: v for t, v in zip(T_read, (sops.sum(0).cumsum(0)[[t - 1 for t in T_read]] / n).tolist())},
                neurons=neurons,
                inactive_neurons=inactive_neurons, predictions=pred, ann_predictions=ann_pred, labels=y, images=n,
                complete=complete, seconds=sum(c["seconds"] for c in chunks),
                chunks=[dict({k: c.get(k) for k in ("images", "seconds", "device", "provenance")},
                             code=c.get("key", {}).get("code")) for c in chunks])


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


# ----------------------------------------------------------------------------------------------
# 6. Notebook 51's comparison of readings (run in the background by `tools/long_runs.py bsnn`)
# ----------------------------------------------------------------------------------------------

RATE_CODED_PHASE = 4  # P of the rate-coded reading, as notebook 51's first run (not tuned)
MT_S_MAX = 15  # the multi-threshold paper's S_max
# K and the threshold percentile of the phase-coded readings, chosen on training images (`select_phase_code`):
# the candidates, the calibration images (training images 0..999) and the selection images (training
# images 1000..1255: other images than the calibration's, never test images)
SELECTION = dict(K=(4, 6, 8), percentile=(99.9, 99.99), calibration_images=1000, images=256, factor=4, minimum=256)
# each reading's step cap in the comparison: `step_cap(snn, **READING_CAP)`, 4 x its latency floor, at least 512
# steps (ResNet-20 bistable phase-coded at K = 8: 640; every other reading of both networks: 512). Chosen for
# the cost (docs/long_runs.md: ~3 ms per image-step on one uncontended thread, more beside other runs)
READING_CAP = dict(factor=4, minimum=512)


def bsnn_readings(net, K):
    """Notebook 51's readings of network `net` ("resnet20" or "vgg7"): {name: `convert` arguments}.
    The ResNet has each bistable reading with and without synchronous neurons (SN) on its
    shortcuts; a plain network has no shortcut to synchronise."""
    r = {"plain IF": {}, "multi-threshold IF": dict(s_max=MT_S_MAX), "phase coding": dict(phase_period=K)}
    bistable = dict(phase_period=K, phase_bistable=True)
    rate = dict(burst_phase=RATE_CODED_PHASE)
    if net.startswith("resnet"):
        r.update({"bistable phase-coded + SN": dict(bistable, sync=True),
                  "bistable phase-coded": dict(bistable, sync=False),
                  "rate-coded reading + SN": dict(rate, sync=True), "rate-coded reading": dict(rate, sync=False)})
    else:
        r.update({"bistable phase-coded": bistable, "rate-coded reading": rate})
    return r


def reading_slug(name):
    """A folder name for a reading: "bistable phase-coded + SN" -> "bistable_phase-coded_SN"."""
    return "_".join(name.replace("+", " ").split())


def select_phase_code(ann, calib_x, data, selection=SELECTION, store=None, batch_size=64, chunk=STEP_CHUNK,
                      stop_at=None):
    """K and the threshold percentile of the phase-coded readings, chosen on training images `data`
    (never the test set): the bistable phase-coded network (SN on ResNet shortcuts) of every
    candidate pair is run for `step_cap(snn, factor, minimum)` steps; the pair that comes within 1
    point of its ANN (on the same images) in the fewest steps wins, ties to the higher accuracy at
    its cap, then to the smaller K. Resumable (`store`/<K>_<percentile>/; past `stop_at` no
further candidate is started). Returns (the chosen row,
    all rows: K, percentile, cap, steps_within_1, accuracy_at_cap, ann_accuracy), or None while a
    candidate is unfinished (`stop_at`)."""
    rows = []
    for p in selection["percentile"]:
        thetas = calibrate(ann, calib_x, p)
        for K in selection["K"]:
            if rows and stop_at is not None and time.time() > stop_at:
                return None
            snn = convert(ann, None, thresholds=thetas, phase_period=K, phase_bistable=True, sync=True)
            cap = step_cap(snn, selection["factor"], selection["minimum"])
            r = evaluate_conversion(snn, ann, data, range(1, cap + 1), batch_size, chunk,
                                    store=Path(store) / f"K{K}_p{p}" if store else None, chunk_images=batch_size,
                                    config=dict(what="selection of K and percentile", K=K, percentile=p),
                                    stop_at=stop_at)
            if r is None or not r["complete"]:
                return None
            within = steps_within(r["accuracy"], r["ann_accuracy"], 1.0)
            rows.append(dict(K=K, percentile=p, cap=cap, steps_within_1=within,
                             accuracy_at_cap=r["accuracy"][cap], ann_accuracy=r["ann_accuracy"], seconds=r["seconds"]))
    best = min(rows, key=lambda r: (r["steps_within_1"] or math.inf, -r["accuracy_at_cap"], r["K"]))
    return best, rows


def compare_readings(net, ann, thresholds, data, K, readings=None, caps=None, store=None, batch_size=50,
                     chunk=STEP_CHUNK, chunk_images=100, stop_at=None, stored_code=False):
    """Every reading of `bsnn_readings(net, K)` (or those named in `readings`) converted with the
    same `thresholds` and evaluated on `data` at every step up to its cap (`caps`: {name: steps},
    default `step_cap(snn, **READING_CAP)`), each in its own store `store`/<reading_slug> (resumable, chunks of
    `chunk_images`). Returns {name: evaluate_conversion's result + cap, latency_floor, convert
    arguments}, the readings done (a reading left unfinished by `stop_at` ends the list)."""
    out = {}
    for name, kw in bsnn_readings(net, K).items():
        if readings is not None and name not in readings:
            continue
        if out and stop_at is not None and time.time() > stop_at:
            break
        snn = convert(ann, None, thresholds=thresholds, **kw)
        cap = (caps or {}).get(name) or step_cap(snn, **READING_CAP)
        r = evaluate_conversion(snn, ann, data, range(1, cap + 1), batch_size, chunk,
                                store=Path(store) / reading_slug(name) if store else None, chunk_images=chunk_images,
                                config=dict(net=net, reading=name, convert=repr(kw)), stop_at=stop_at,
                                stored_code=stored_code)
        if r is None or not r["complete"]:
            break
        out[name] = dict(r, cap=cap, latency_floor=latency_floor(snn), convert=kw)
    return out
