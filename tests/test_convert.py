"""Unit tests of the ANN -> SNN conversion baseline (mtsnn_convert).

Expected values are written out by hand (a NumPy IF neuron, delays, phase windows); the one
end-to-end check trains a tiny network on 2000 MNIST images (skipped without $MTSNN_DATA).
Run: MTSNN_DATA=/path/to/data .venv/bin/python -m pytest tests/test_convert.py
"""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path
os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before torch: idle threads sleep (shared CPUs)

import numpy as np

import pytest
import torch
import torch.nn as nn

import mtsnn_convert as mc
import mtsnn_data as md
import mtsnn_runtime as rt

DATA = md.data_root()
needs_mnist = pytest.mark.skipif(not (DATA / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists(),
                                 reason=f"MNIST not under {DATA} (set MTSNN_DATA)")


def ref_if(x, theta, s_max=1):
    """IF neuron step by step (float64): u += x[t]; s = clamp(floor(u/q), 0, S); u -= s*q, q = theta/S."""
    q, u, out = theta / s_max, np.zeros_like(x[0]), np.zeros_like(x)
    for t in range(len(x)):
        u = u + x[t]
        out[t] = np.clip(np.floor(u / q), 0, s_max)
        u = u - out[t] * q
    return out


@pytest.mark.parametrize("s_max", [1, 4])
def test_if_layer_matches_hand_written_neuron(s_max):
    x = torch.randn(40, 3, 7, dtype=torch.float64) * 0.8 + 0.2
    layer = mc.IFLayer(theta=1.3, s_max=s_max)
    out = torch.cat([layer(x[:16]), layer(x[16:])])  # two chunks: the membrane carries over
    np.testing.assert_array_equal(out.numpy() / (1.3 / s_max), ref_if(x.numpy(), 1.3, s_max))


@pytest.mark.parametrize("s_max", [1, 3])
def test_constant_input_closed_form_equals_time_loop(s_max):
    current = torch.linspace(-1.0, 5.0, 301, dtype=torch.float64) + 1e-6  # stay off exact integer boundaries
    x = current.expand(50, -1)
    closed = mc.IFLayer(1.0, s_max, constant=True)
    out = torch.cat([closed(x[:20]), closed(x[20:])]).numpy()
    np.testing.assert_array_equal(out * s_max, ref_if(x.numpy(), 1.0, s_max))
    assert out.max() == 1.0  # saturated neurons emit theta per step (s_max spikes of theta/s_max)


def test_threshold_is_the_percentile_of_positive_activations():
    act = torch.cat([torch.zeros(50_000), torch.rand(100_000) * 4.0])  # uniform on (0, 4): p-th percentile = 4p/100
    for p in (90.0, 99.0, 99.9):
        theta = mc.percentile_threshold(act, p)
        assert theta == pytest.approx(4 * p / 100, abs=0.02)
        assert (act[act > 0] <= theta).float().mean().item() == pytest.approx(p / 100, abs=1e-3)
        assert theta == pytest.approx(torch.quantile(act[act > 0], p / 100).item(), rel=1e-6)


def test_threshold_is_exact_beyond_torch_quantiles_size_limit():
    act = torch.rand(20_000_000, generator=torch.Generator().manual_seed(0)) - 0.1  # 18 million positive
    positive = act[act > 0].double().numpy()
    for p in (50.0, 99.9):
        assert mc.percentile_threshold(act, p) == pytest.approx(np.percentile(positive, p), rel=1e-7)


def test_convert_sets_each_layers_threshold_at_the_percentile():
    torch.manual_seed(0)
    ann = mc.ann_net("4C5-P2-16", (1, 12, 12))
    x = torch.randn(300, 1, 12, 12)
    snn = mc.convert(ann, x, percentile=95.0)
    acts = mc.relu_activations(ann, x)
    for layer in snn.if_layers():
        a = acts[snn.relu_of[layer]]
        assert a.shape[0] == 300  # the time dimension of the SpikingNet is dropped
        frac = (a[a > 0] <= layer.theta).float().mean().item()
        assert frac == pytest.approx(0.95, abs=2e-3)


def test_synchronous_neuron_delays_by_exactly_d_steps():
    x = torch.randn(23, 2, 5)
    for d in (0, 1, 4, 9):
        sn = mc.Synchronous(d)
        out = torch.cat([sn(x[:10]), sn(x[10:])])  # across a chunk boundary
        assert torch.equal(out[d:], x[:23 - d])
        assert torch.equal(out[:d], torch.zeros_like(out[:d]))


def test_resnet_shortcut_gets_one_phase_of_delay_only_when_synchronised():
    net = mc.ResNet(1, (4, 8), 1, stem_stride=2).eval()
    x = torch.randn(20, 1, 12, 12)
    delays = lambda snn: [m.delay for m in snn.modules() if isinstance(m, mc.Synchronous)]
    assert delays(mc.convert(net, x, burst_phase=5, sync=True)) == [5, 5]
    assert delays(mc.convert(net, x, burst_phase=5, sync=False)) == [0, 0]
    assert delays(mc.convert(net, x, sync=True)) == [0, 0]


@pytest.mark.parametrize("depth", [0, 2])
def test_bistable_neuron_fires_only_in_its_firing_phase(depth):
    period, T = 4, 48
    layer = mc.IFLayer(theta=1.0, burst_phase=period, depth=depth)
    x = torch.rand(T, 64, generator=torch.Generator().manual_seed(depth)) * 0.9 + 0.3  # a plain IF neuron fires at once
    spikes = torch.cat([layer(x[:13]), layer(x[13:])])
    phase = torch.arange(T) // period - depth
    firing = (phase > 0) & (phase % 2 == 1)
    assert spikes[~firing].abs().sum() == 0  # nothing while integrating, nor before its first input
    assert (spikes[firing].view(-1, period, 64).sum((1, 2)) > 0).all()  # and it does fire in every firing phase
    # it fires what one integrating phase accumulated: spikes in a firing phase <= period (s_max 1)
    assert spikes[firing].view(-1, period, 64).sum(1).max() <= period


def test_bistable_neuron_ignores_negative_net_input():
    """A neuron whose input sums to a negative value over the phase must stay silent, even if the
    positive part arrives first (phase lead: the plain IF neuron fires on it)."""
    x = torch.cat([torch.full((4, 1), 2.0), torch.full((4, 1), -3.0)]).repeat(4, 1)  # mean -0.5
    plain = mc.IFLayer(1.0)(x)
    assert plain.sum() > 0  # spikes of an inactivated neuron (SIN)
    bistable = mc.IFLayer(1.0, burst_phase=8)(x)
    assert bistable.sum() == 0


def test_spike_pool_emits_the_max_count():
    torch.manual_seed(1)
    s = (torch.rand(30, 2, 3, 4, 4) < torch.rand(1, 2, 3, 4, 4)).float()
    pool = mc.SpikePool(2)
    out = torch.cat([pool(s[:11]), pool(s[11:])])
    assert torch.equal(out.cumsum(0), nn.functional.max_pool2d(s.cumsum(0).flatten(0, 1), 2).unflatten(0, (30, 2)))
    assert out.min() >= 0 and out.max() <= 1


@needs_mnist
def test_conversion_reproduces_the_ann_as_T_grows():
    train = md.load_dataset("mnist", True, subset=2000)
    test = md.load_dataset("mnist", False, subset=300)
    ann, acc, _ = mc.train_ann("4C5-P2-32", train, test, epochs=2, lr=3e-3)
    assert acc > 70
    snn = mc.convert(ann, train.x[:500], percentile=100.0)
    r = mc.evaluate_conversion(snn, ann, test, T_read=(1, 4, 16, 64, 256, 1024), batch_size=300, chunk=128)
    agree = r["agreement"]
    assert agree[1] < 90 < agree[64]
    assert agree[16] <= agree[256] + 1 and agree[4] < agree[256]
    assert agree[1024] >= 99.0
    assert r["ann_accuracy"] == pytest.approx(mc.ann_accuracy(ann, test))


@needs_mnist
def test_train_ann_resumes_from_its_checkpoint(tmp_path):
    """An ANN run stopped after one epoch and resumed from its checkpoint ends with the weights and
    history of an uninterrupted run; a checkpoint of another run is refused."""
    data = (md.load_dataset("mnist", True, subset=256), md.load_dataset("mnist", False, subset=128))
    whole, acc, hist = mc.train_ann("784-32-10", *data, epochs=2)
    ckpt = tmp_path / "ann.pt"
    mc.train_ann("784-32-10", *data, epochs=1, checkpoint=ckpt)
    resumed, acc2, hist2 = mc.train_ann("784-32-10", *data, epochs=2, checkpoint=ckpt)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert (acc2, [h["loss"] for h in hist2]) == (acc, [h["loss"] for h in hist])
    assert [h["device"] for h in hist2] == [rt.device_name("cpu")] * 2
    with pytest.raises(ValueError, match="holds another ANN run"):
        mc.train_ann("784-32-10", *data, epochs=2, lr=2e-3, checkpoint=ckpt)


@needs_mnist
def test_train_ann_with_sgd_and_a_cosine_schedule_resumes_in_chunks(tmp_path):
    """SGD + weight decay + cosine schedule: trained in two chunks from a checkpoint, the same
    weights as in one go; the schedule reaches 0 at `cosine_epochs`; the options enter the config."""
    data = (md.load_dataset("mnist", True, subset=256), md.load_dataset("mnist", False, subset=128))
    kw = dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, cosine_epochs=3)
    whole, acc, _ = mc.train_ann("784-32-10", *data, epochs=3, **kw)
    ckpt = tmp_path / "sgd.pt"
    mc.train_ann("784-32-10", *data, epochs=1, checkpoint=ckpt, **kw)
    resumed, acc2, _ = mc.train_ann("784-32-10", *data, epochs=3, checkpoint=ckpt, **kw)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters())) and acc == acc2
    state = rt.load_checkpoint(ckpt)
    assert state["config"]["optimizer"] == "sgd" and state["config"]["cosine_epochs"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    with pytest.raises(ValueError, match="optimizer"):
        mc.train_ann("784-32-10", *data, epochs=1, optimizer="rmsprop")


class _Images:
    """The two fields of a Dataset that evaluate_conversion reads."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)


def test_vgg_converts_with_folded_batch_norm_and_tracks_its_ann():
    """A VGG with trained-looking batch-norm statistics, converted with multi-threshold IF neurons
    (S_max = 15) and thresholds at the calibration maximum: its mean readout over 512 steps is the
    ANN's logits up to the quantisation of a few levels per neuron."""
    torch.manual_seed(0)
    net = mc.VGG(1, (6, 8), 2)
    x = torch.randn(64, 1, 16, 16)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(x)  # running statistics away from their (0, 1) start
    net.eval()
    snn = mc.convert(net, x, percentile=100.0, s_max=15)
    assert len(snn.if_layers()) == 4 and sum(isinstance(m, mc.SpikePool) for m in snn.modules()) == 2
    logits = net(x, 1)[0]
    mean_readout = snn(x, T=512)[-1] / 512
    assert torch.allclose(mean_readout, logits, atol=0.05 * logits.abs().max().item())


def test_no_answer_before_the_bistable_pipeline_reaches_the_readout():
    """Until the first current reaches the readout the prediction is -1 (wrong, whatever the label),
    and layers that have not fired yet are reported silent (nan), not as 0 % SIN."""
    torch.manual_seed(0)
    ann = mc.ann_net("784-20-20-10", (1, 28, 28)).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)
    snn = mc.convert(ann, x, burst_phase=2)
    r = mc.evaluate_conversion(snn, ann, _Images(x, y), T_read=range(1, 17), batch_size=16, chunk=4)
    first = next(t for t in range(1, 17) if (r["predictions"][t - 1] != -1).any())
    assert first == 5  # readout at depth 2 integrates in phase 2: steps 4, 5 (0-based)
    assert (r["predictions"][:first - 1] == -1).all() and all(r["accuracy"][t] == 0 for t in range(1, first))
    assert math.isnan(r["sin"][4][1]) and not math.isnan(r["sin"][4][0])  # layers fire from steps 2 and 4 on
    assert r["predictions"].dtype == torch.int8 and r["predictions"].shape == (16, 16)


def test_steps_within_reads_from_which_T_the_accuracy_stays_near_the_ann():
    acc = {1: 50.0, 2: 89.5, 4: 88.0, 8: 89.6, 16: 90.0}
    assert mc.steps_within(acc, 90.0, 1.0) == 8  # T = 2 touches the band, T = 4 falls out again
    assert mc.steps_within(acc, 90.0, 0.5) == 8
    assert mc.steps_within(acc, 90.0, 0.1) == 16
    assert mc.steps_within(acc, 91.5, 1.0) is None
    assert mc.steps_within({1: 95.0, 2: 96.0}, 95.5, 1.0) == 1


def test_paired_se_is_the_standard_error_of_the_per_image_difference():
    labels = torch.tensor([0, 1, 2, 3])
    ann = torch.tensor([0, 1, 2, 0])  # right, right, right, wrong
    snn = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 0]], dtype=torch.int8)
    diff = [[0, 0, 0, 1], [0, 0, 0, 0], [-1, 0, 0, 0]]
    expected = [100 * float(np.std(d, ddof=1)) / 2 for d in diff]
    assert mc.paired_se(snn, ann, labels) == pytest.approx(expected)


@needs_mnist
@pytest.mark.parametrize("extra", [{}, {"cutout_size": 6, "bf16": True}])
def test_train_ann_stops_before_an_epoch_that_would_overrun_and_resumes(tmp_path, extra):
    """Also with cutout and bfloat16: the cutout centres are drawn per epoch, so a resumed run is
    the same run."""
    data = (md.load_dataset("mnist", True, subset=256), md.load_dataset("mnist", False, subset=128))
    whole, _, _ = mc.train_ann("784-32-10", *data, epochs=3, **extra)
    ckpt = tmp_path / "ann.pt"
    _, _, hist = mc.train_ann("784-32-10", *data, epochs=3, checkpoint=ckpt, stop_at=0.0, **extra)
    assert len(hist) == 1  # the first epoch always runs; the second would end after stop_at
    resumed, _, hist = mc.train_ann("784-32-10", *data, epochs=3, checkpoint=ckpt, **extra)
    assert len(hist) == 3 and all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    assert {k: rt.load_checkpoint(ckpt)["config"].get(k) for k in extra} == extra
    if extra:  # a different run from the plain recipe's
        plain, _, _ = mc.train_ann("784-32-10", *data, epochs=3)
        assert not torch.equal(next(plain.parameters()), next(whole.parameters()))


@needs_mnist
def test_distillation_starts_from_init_follows_the_teacher_and_resumes(tmp_path):
    """`init` is where training starts (lr 0 keeps it); with distill_weight 1 the labels do not
    matter and the network comes to agree with its teacher; a distilled run resumes to the same
    network and refuses another teacher's checkpoint."""
    train, test = md.load_dataset("mnist", True, subset=2000), md.load_dataset("mnist", False, subset=256)
    teacher, _, _ = mc.train_ann("784-32-10", train, test, epochs=3, seed=1)
    weak, _, _ = mc.train_ann("784-32-10", train, test, epochs=1, seed=2, lr=1e-4)
    ensemble = mc.Ensemble([teacher, weak])
    x = test.x[:16]
    assert torch.allclose(ensemble(x)[0].exp(), (teacher(x, 1)[0].softmax(1) + weak(x, 1)[0].softmax(1)) / 2)
    kept, _, _ = mc.train_ann("784-32-10", train, test, epochs=1, lr=0.0, init=teacher)
    assert all(torch.equal(a, b) for a, b in zip(kept.parameters(), teacher.parameters()))

    def agreement(net):
        return (net(test.x, 1)[0].argmax(1) == ensemble(test.x)[0].argmax(1)).float().mean().item()

    run = dict(epochs=2, lr=3e-3, teacher=ensemble, distill_weight=1.0, init=weak)
    pure, acc, _ = mc.train_ann("784-32-10", train, test, **run)
    assert agreement(pure) > agreement(weak) + 0.3 and acc > 50  # measured: 0.37 -> 0.85, 72 %
    wrong = copy.copy(train)
    wrong.y = (train.y + 1) % 10
    relabelled, _, _ = mc.train_ann("784-32-10", wrong, test, **run)
    assert all(torch.equal(a, b) for a, b in zip(pure.parameters(), relabelled.parameters()))
    mixed, _, _ = mc.train_ann("784-32-10", train, test, **dict(run, distill_weight=0.5))
    assert not torch.equal(next(mixed.parameters()), next(pure.parameters()))
    ckpt = tmp_path / "distilled.pt"
    mc.train_ann("784-32-10", train, test, checkpoint=ckpt, stop_at=0.0, **run)
    resumed, _, hist = mc.train_ann("784-32-10", train, test, checkpoint=ckpt, **run)
    assert len(hist) == 2 and all(torch.equal(a, b) for a, b in zip(pure.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="another ANN run"):
        mc.train_ann("784-32-10", train, test, checkpoint=ckpt, **dict(run, teacher=teacher))


@needs_mnist
def test_the_distillation_teacher_predicts_with_its_running_statistics():
    """Training puts the student in train mode, never the teacher: its batch norms neither use
    the batch's statistics nor update their running ones."""
    train, test = md.load_dataset("mnist", True, subset=256), md.load_dataset("mnist", False, subset=64)
    torch.manual_seed(0)
    teacher = mc.VGG(1, (4, 8), 1).eval()
    before = copy.deepcopy(teacher.state_dict())
    forward = mc._TrainingForward(mc.VGG(1, (4, 8), 1), 0, False, teacher).train()
    assert forward.net.training and not teacher.training
    x = test.x[:16]
    assert torch.equal(forward(x)[1], teacher(x, 1)[0])
    mc.train_ann(mc.VGG(1, (4, 8), 1), train, test, epochs=1, teacher=teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@needs_mnist
def test_weight_averaging_averages_the_epochs_and_recomputes_batch_norm(tmp_path):
    """With `average`, the network returned is the mean of the weights after each epoch of the
    same (constant learning rate) run, with batch-norm statistics recomputed for it; the iterate
    is checkpointed beside it, so a stopped run resumes to the same average."""
    train, test = md.load_dataset("mnist", True, subset=256), md.load_dataset("mnist", False, subset=64)

    def vgg():
        torch.manual_seed(0)
        return mc.VGG(1, (4, 8), 1)

    ckpt = tmp_path / "plain.pt"
    first = [p.clone() for p in mc.train_ann(vgg(), train, test, epochs=1, lr=3e-3, checkpoint=ckpt)[0].parameters()]
    second = mc.train_ann(vgg(), train, test, epochs=2, lr=3e-3, checkpoint=ckpt)[0]
    run = dict(epochs=2, lr=3e-3, average=True, cosine_epochs=2)  # the cosine is ignored when averaging
    mean, acc, hist = mc.train_ann(vgg(), train, test, **run)
    for a, p1, p2 in zip(mean.parameters(), first, second.parameters()):
        assert torch.allclose(a, (p1 + p2) / 2, atol=1e-6)
    assert acc == hist[-1]["test_accuracy"] == mc.ann_accuracy(mean, test) and "iterate_accuracy" in hist[-1]
    norms = [m for m in mean.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.num_batches_tracked == 1 for m in norms)  # recomputed on the 256 images, not tracked in training
    ckpt = tmp_path / "mean.pt"
    mc.train_ann(vgg(), train, test, checkpoint=ckpt, stop_at=0.0, **run)
    resumed, _, hist = mc.train_ann(vgg(), train, test, checkpoint=ckpt, **run)
    assert len(hist) == 2 and all(torch.equal(a, b) for a, b in zip(mean.state_dict().values(),
                                                                      resumed.state_dict().values()))
    state = rt.load_checkpoint(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(state["iterate"].values(), second.state_dict().values()))


def test_recompute_batch_norm_sets_the_statistics_of_the_layer_inputs():
    torch.manual_seed(0)
    net = mc.VGG(1, (4,), 1)
    data = _Images(torch.randn(1000, 1, 8, 8) * 3 + 1, torch.zeros(1000, dtype=torch.long))  # 2 batches of 500
    mc.recompute_batch_norm(net, data.x)
    conv, bn = net.features[0][0], net.features[0][1]
    with torch.no_grad():
        h = conv(data.x).transpose(0, 1).flatten(1)
    assert not net.training and bn.momentum == 0.1
    assert torch.allclose(bn.running_mean, h.mean(1), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(1), rtol=1e-2)


def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.ones(64, 3, 32, 32)
    out = mc.cutout(x, 8, torch.Generator().manual_seed(0))
    assert torch.equal(out, mc.cutout(x, 8, torch.Generator().manual_seed(0)))
    cut = out[:, 0] == 0
    assert torch.equal(cut[:, None].expand_as(out), out == 0)  # the same square in every channel
    rows, cols = cut.any(2), cut.any(1)
    for r, c, n in zip(rows, cols, cut.sum((1, 2))):
        assert r.sum() * c.sum() == n and 1 <= r.sum() <= 8 and 1 <= c.sum() <= 8  # one rectangle
        assert (r.sum() == 8 or r[0] or r[-1]) and (c.sum() == 8 or c[0] or c[-1])  # smaller only at a border
    assert (cut.sum((1, 2)) == 64).float().mean() > 0.3


needs_cifar10 = pytest.mark.skipif(not ((DATA / "cifar-10-jpeg75").exists() or (DATA / "cifar-10-batches-py").exists()),
                                   reason=f"CIFAR-10 not under {DATA} (set MTSNN_DATA)")


@needs_cifar10
def test_train_conversion_anns_stores_weights_that_load(tmp_path):
    """tools/train_conversion_anns.py on 64 images for one epoch, one process per network: both
    weights files are written and load with load_cifar10_ann; a second call retrains nothing; the
    other recipes, "distilled" and "distilled_swa" from the weights the earlier calls stored, and
    "distilled_long" from the start."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "tools" / "train_conversion_anns.py"), "--subset", "64", "--epochs", "1",
           "--runs", str(tmp_path / "runs"), "--weights", str(tmp_path / "w"), "--parallel", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in mc.CIFAR10_ANNS:
        net, state = mc.load_cifar10_ann(name, tmp_path / "w")
        assert len(state["history"]) == 1 and "optimizer" not in state and state["device_setup"]["device"]
        assert state["config"]["cosine_epochs"] == 1 and state["config"]["optimizer"] == "sgd"
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("not retrained") == 2, again.stdout + again.stderr
    with pytest.raises(FileNotFoundError, match="train_conversion_anns.py"):
        mc.load_cifar10_ann("resnet20", tmp_path / "nothing")
    other = subprocess.run(cmd + ["--nets", "resnet20", "--recipe", "long_cutout"], capture_output=True, text=True)
    assert other.returncode == 0 and "not retrained" not in other.stdout, other.stdout + other.stderr
    _, state = mc.load_cifar10_ann("resnet20", tmp_path / "w", recipe="long_cutout")
    assert state["config"]["cutout_size"] == 8 and state["config"]["bf16"] is True
    distilled = subprocess.run(cmd + ["--nets", "resnet20", "--recipe", "distilled"], capture_output=True, text=True)
    assert distilled.returncode == 0, distilled.stdout + distilled.stderr
    _, state = mc.load_cifar10_ann("resnet20", tmp_path / "w", recipe="distilled")
    assert state["config"]["init"] and state["config"]["distill"]["temperature"] == 4.0
    averaged = subprocess.run(cmd + ["--nets", "resnet20", "--recipe", "distilled_swa"], capture_output=True, text=True)
    assert averaged.returncode == 0, averaged.stdout + averaged.stderr
    _, state = mc.load_cifar10_ann("resnet20", tmp_path / "w", recipe="distilled_swa")
    assert state["config"]["average"] and "cosine_epochs" not in state["config"] and "iterate" in state
    long = subprocess.run(cmd + ["--nets", "resnet20", "--recipe", "distilled_long"], capture_output=True, text=True)
    assert long.returncode == 0, long.stdout + long.stderr
    _, state = mc.load_cifar10_ann("resnet20", tmp_path / "w", recipe="distilled_long")
    assert "init" not in state["config"] and state["config"]["distill"]["temperature"] == 4.0
    assert state["config"]["cutout_size"] == 8 and state["config"]["cosine_epochs"] == 1


# ----------------------------------------------------------------------------------------------
# Phase coding (Kim et al. 2018) and the bistable phase-coded reading of BSNN
# ----------------------------------------------------------------------------------------------


def quantise(u, K):
    """What one period of phase-coded spikes emits from a register u (units of theta): its K-bit
    code floor(u 2^K) / 2^K, nothing for u < 0, all K spikes (1 - 2^-K) from 1 - 2^-K up."""
    return np.clip(np.floor(u * 2.0 ** K) / 2.0 ** K, 0.0, 1 - 2.0 ** -K)


@pytest.mark.parametrize("K", [1, 4, 8])
def test_phase_coded_neuron_transmits_a_constant_input_in_one_period(K):
    """A constant input entering once per period (phase 0) is emitted within that period as its
    K-bit code: spike weights theta 2^-(k+1), one spike at most per step; the residue carries the
    rest, so after n periods exactly floor(n v 2^K) / 2^K has been sent."""
    theta, periods = 1.3, 5
    v = torch.cat([torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(K)) * (1 - 2.0 ** -K),
                   torch.tensor([0.0, 0.5, 1 - 2.0 ** -K, 0.999, 1.7], dtype=torch.float64)])  # saturating too
    code = mc.PhaseCode(K)
    x = theta * v * code.input_weights(0, periods * K).to(torch.float64)[:, None]
    layer = mc.PhaseCodedLayer(theta, code)
    out = torch.cat([layer(x[:3]), layer(x[3:])])  # across a chunk boundary
    weights = theta * 2.0 ** -(torch.arange(periods * K) % K + 1).to(torch.float64)
    spikes = out / weights[:, None]
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    u = (x[0] / theta).numpy()  # the register after the input, as the layer computes it
    first = out[:K].sum(0).numpy()
    np.testing.assert_allclose(first, theta * quantise(u, K), rtol=0, atol=1e-12)
    inside = v.numpy() < 1 - 2.0 ** -K
    assert (np.abs(first - theta * v.numpy())[inside] < theta * 2.0 ** -K).all()  # to its K-bit quantum
    sent = out.view(periods, K, -1).sum(1).cumsum(0).numpy() / theta
    n = np.arange(1, periods + 1)[:, None]
    np.testing.assert_allclose(sent[:, inside], np.floor(n * u[inside] * 2.0 ** K) / 2.0 ** K, atol=1e-12)
    np.testing.assert_allclose(sent[:, ~inside], np.broadcast_to(n * (1 - 2.0 ** -K), sent[:, ~inside].shape),
                               atol=1e-12)  # saturated: all K spikes every period


def test_phase_code_settings():
    """Analog input "phase": I 2^-(k+1) / (1 - 2^-K) at phase k, a period total of I; "period": I
    at phase 0. Bistable gates: accumulate from period `depth`, emit from the next."""
    K = 5
    spread, once = (mc.PhaseCode(K, analog_input=a).input_weights(0, 3 * K).view(3, K) for a in ("phase", "period"))
    assert torch.allclose(spread.sum(1), torch.ones(3)) and (spread[:, :-1] / spread[:, 1:] == 2).all()
    assert (once == torch.tensor([1.0] + [0.0] * (K - 1))).all()
    acc, emit = mc.PhaseCode(2, bistable=True).gates(0, 8, 1)
    assert acc == [False] * 2 + [True] * 6 and emit == [False] * 4 + [True] * 4
    acc, emit = mc.PhaseCode(2, bistable=True, alternate=True).gates(0, 10, 1)
    assert acc == [False, False, True, True, False, False, True, True, False, False]
    assert emit == [False, False, False, False, True, True, False, False, True, True]
    with pytest.raises(ValueError, match="analog_input"):
        mc.PhaseCode(4, analog_input="step")


def reference_bistable(x, K, depth, alternate=False):
    """Period totals a bistable phase-coded layer emits (units of theta): it accumulates the input
    of periods depth, depth+1, ... (alternating: depth, depth+2, ...) and emits in the next
    period the K-bit code of that total plus the residue it kept."""
    totals, r = x.reshape(-1, K, *x.shape[1:]).sum(1), np.zeros(x.shape[1:])
    out = np.zeros_like(totals)
    for p in range(depth, len(totals) - 1):
        if alternate and (p - depth) % 2:
            continue
        u = r + totals[p]
        out[p + 1] = quantise(u, K)
        r = u - out[p + 1]
    return out


@pytest.mark.parametrize("depth,alternate", [(0, False), (2, False), (1, True)])
def test_bistable_phase_coded_layer_delivers_its_input_one_period_later(depth, alternate):
    """What a bistable phase-coded layer emits in period p + 1 is the K-bit code of its input's
    total over period p (plus the residue it kept), nothing before; it fires only in emitting
    periods; input arriving before period `depth` (or, alternating, while it emits) is ignored."""
    K, periods, theta = 4, 12, 0.5  # a power of 2: x * theta / theta is x, and sums of the dyadic x are exact
    g = torch.Generator().manual_seed(depth)
    x = torch.round((torch.rand(periods * K, 300, generator=g, dtype=torch.float64) - 0.3) * 2 ** 10) / 2 ** 11
    layer = mc.PhaseCodedLayer(theta, mc.PhaseCode(K, bistable=True, alternate=alternate), depth)
    out = torch.cat([layer(theta * x[:7]), layer(theta * x[7:])])
    emitted = (out.view(periods, K, -1).sum(1) / theta).numpy()
    np.testing.assert_allclose(emitted, reference_bistable(x.numpy(), K, depth, alternate), rtol=0, atol=1e-12)
    assert (out[:(depth + 1) * K] == 0).all()
    if alternate:
        silent = [p for p in range(periods) if p <= depth or (p - depth) % 2 == 0]
        assert (out.view(periods, K, -1)[silent] == 0).all()
    assert emitted[depth + 1:].sum() > 0


def test_bistable_phase_coded_neuron_is_silent_for_a_negative_period_total():
    """The positive part of a period's input arrives first (phase lead): the continuous phase-coded
    neuron, like the IF neuron, fires on it (SIN); the bistable one sees the period's total, which is
    negative, and never fires. No SIN in its statistics either."""
    K = 8
    x = torch.cat([torch.full((4, 1, 1), 0.6), torch.full((4, 1, 1), -0.7)]).repeat(6, 1, 1)  # total -0.4 per period
    continuous = mc.PhaseCodedLayer(1.0, mc.PhaseCode(K))
    continuous.inactive = torch.ones(1, 1)
    assert (continuous(x) > 0).sum() > 0 and continuous.spikes_inactive.sum() > 0
    for alternate in (False, True):
        bistable = mc.PhaseCodedLayer(1.0, mc.PhaseCode(K, bistable=True, alternate=alternate))
        bistable.inactive = torch.ones(1, 1)
        assert bistable(x).abs().sum() == 0 and bistable.spikes_total.sum() == 0
        assert bistable.spikes_inactive.sum() == 0


def test_phase_coded_conversion_delays_resnet_shortcuts_by_one_period():
    net = mc.ResNet(1, (4, 8), 1, stem_stride=2).eval()
    x = torch.randn(20, 1, 12, 12)
    delays = lambda snn: [m.delay for m in snn.modules() if isinstance(m, mc.Synchronous)]
    assert delays(mc.convert(net, x, phase_period=8, phase_bistable=True)) == [8, 8]
    assert delays(mc.convert(net, x, phase_period=8, phase_bistable=True, sync=False)) == [0, 0]
    assert delays(mc.convert(net, x, phase_period=8)) == [0, 0]  # continuous phase coding: no per-layer delay
    with pytest.raises(ValueError, match="not both"):
        mc.convert(net, x, burst_phase=4, phase_period=8)


def _trained_looking(net, x):
    """`net` with batch-norm statistics away from their (0, 1) start, in eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(x)
    return net.eval()


@pytest.mark.parametrize("kind", ["resnet", "vgg"])
@pytest.mark.parametrize("alternate", [False, True])
def test_bistable_phase_coded_network_gives_its_anns_output_in_the_limit(kind, alternate):
    """At K = 16 with thresholds at the calibration maximum, a period's readout of the bistable
    phase-coded network (ResNet with synchronous neurons on both kinds of shortcut; VGG with max
    pooling of period totals) is its ANN's logits: nothing reaches the readout before the pipeline
    is full, and from then on every period (alternating: every other) delivers them."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16)
    net = _trained_looking(mc.ResNet(1, (4, 8), 1, stem_stride=2) if kind == "resnet" else mc.VGG(1, (6, 8), 2), x)
    K = 16
    snn = mc.convert(net, x, percentile=100.0, phase_period=K, phase_bistable=True, phase_alternate=alternate)
    L = snn.readout_depth
    assert mc.latency_floor(snn) == (L + 1) * K
    T = (L + 1 + 4) * K
    out = snn(x, T=T, chunk=40)
    assert (out[:L * K] == 0).all()
    logits = net(x, 1)[0]
    per_period = out.view(-1, K, *out.shape[1:])[:, -1].diff(dim=0)  # the readout gained in each period
    delivering = [p for p in range(L, T // K) if not alternate or (p - L) % 2 == 0]
    tol = 2e-3 * logits.abs().max().item()
    for p in delivering:
        assert torch.allclose(per_period[p - 1], logits, atol=tol), (p, (per_period[p - 1] - logits).abs().max())


def test_bistable_phase_coded_resnet_without_synchronous_neurons():
    """Alternating, a shortcut without SN lands in the block's emitting period and is ignored: the
    output is not the ANN's. Accumulating while emitting, the undelayed shortcut brings the layer
    below's next period, the same value in steady state: the ANN's output again."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16)
    net = _trained_looking(mc.ResNet(1, (4, 8), 1, stem_stride=2), x)
    logits, K = net(x, 1)[0], 16
    for alternate, close in ((True, False), (False, True)):
        snn = mc.convert(net, x, percentile=100.0, phase_period=K, phase_bistable=True, phase_alternate=alternate,
                         sync=False)
        T = (snn.readout_depth + 1 + 4) * K
        out = snn(x, T=T, chunk=40)
        last = (out[-1] - out[-1 - 2 * K]) / (1 if alternate else 2)
        assert torch.allclose(last, logits, atol=2e-3 * logits.abs().max().item()) == close


def test_step_caps_follow_each_readings_latency_floor():
    """ResNet-20 (19 spiking layers) at K = 8: the bistable phase-coded pipeline needs (19 + 1) * 8
    = 160 steps before its first complete period at the readout."""
    net = mc.ResNet(3, (16, 32, 64), 3).eval()
    kw = dict(calib_x=None, thresholds=[1.0] * 19)
    bistable = mc.convert(net, phase_period=8, phase_bistable=True, **kw)
    assert mc.latency_floor(bistable) == 160 and mc.step_cap(bistable) == 1280
    assert mc.step_cap(bistable, factor=4, minimum=0) == 640
    assert mc.latency_floor(mc.convert(net, burst_phase=4, **kw)) == 80
    assert mc.latency_floor(mc.convert(net, phase_period=8, **kw)) == 8
    plain = mc.convert(net, **kw)
    assert mc.latency_floor(plain) == 1 and mc.step_cap(plain) == 1024
    assert mc.step_cap(mc.convert(net, phase_period=12, phase_bistable=True, **kw), minimum=1000) == 1920


def test_trace_of_one_phase_coded_neuron_over_two_periods():
    K, v = 4, 0.7
    r = mc.trace_phase_neuron([v, 0, 0, 0] * 2, theta=1.0, phase_period=K)
    assert r["phase"] == [0, 1, 2, 3] * 2 and r["threshold"] == [0.5, 0.25, 0.125, 0.0625] * 2
    assert r["spike"][:K] == [1, 0, 1, 1]  # 0.7 = 0.5 + 0.125 + 0.0625 + 0.0125
    assert r["emitted"][K - 1] == pytest.approx(0.6875) and r["membrane"][K - 1] == pytest.approx(0.0125)
    assert r["emitted"][-1] == pytest.approx(np.floor(2 * v * 2 ** K) / 2 ** K)
    b = mc.trace_phase_neuron([0.3, 0.4, 0, 0] * 2, theta=2.0, phase_period=K, bistable=True)
    assert b["spike"][:K] == [0] * K and b["accumulated"][K - 1] == pytest.approx(0.7)
    assert b["weight"][K:] == [0.0, 0.5, 0.0, 0.125]  # 0.7 / 2 = 0.35 -> 0.25 + 0.0625 (phases 1, 3), times 2


@pytest.mark.parametrize("reading", [dict(), dict(phase_period=4, phase_bistable=True), dict(burst_phase=2)])
def test_chunked_evaluation_resumes_and_equals_one_run(tmp_path, reading):
    """Stopped after its first chunk and resumed, a chunked evaluation stores one file per chunk and
    gives what one run over all images gives (same process: same CPU, threads, batch size); a store
    of another configuration or code is refused."""
    torch.manual_seed(0)
    ann = mc.ann_net("784-20-20-10", (1, 28, 28)).eval()
    x = torch.rand(48, 1, 28, 28)
    data = _Images(x, ann(x, 1)[0].argmax(1) ^ (torch.arange(48) % 3 == 0))  # some wrong labels
    snn = mc.convert(ann, x, **reading)
    T_read = range(1, 41)
    one = mc.evaluate_conversion(snn, ann, data, T_read, batch_size=8, chunk=16)
    store, kw = tmp_path / "run", dict(batch_size=8, chunk=16, store=tmp_path / "run", chunk_images=16,
                                       config=dict(reading=str(reading)))
    part = mc.evaluate_conversion(snn, ann, data, T_read, stop_at=0.0, **kw)
    assert part["images"] == 16 and not part["complete"] and len(list(store.glob("chunk_*.pt"))) == 1
    whole = mc.evaluate_conversion(snn, ann, data, T_read, **kw)
    assert whole["complete"] and sorted(p.name for p in store.glob("chunk_*.pt")) == [
        "chunk_0000000_0000016.pt", "chunk_0000016_0000032.pt", "chunk_0000032_0000048.pt"]
    for k, v in one.items():
        if k in ("seconds", "chunks"):
            continue
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, whole[k]), k
        else:
            assert repr(v) == repr(whole[k]), k  # nan == nan as text
    assert len(one["sin"]) == 40 and one["layer_spikes"].shape == (2, 40)
    again = mc.evaluate_conversion(snn, ann, data, T_read, **kw)  # everything read back
    assert torch.equal(again["predictions"], one["predictions"]) and again["seconds"] == whole["seconds"]
    with pytest.raises(ValueError, match="another configuration or code"):
        mc.evaluate_conversion(snn, ann, data, T_read, **dict(kw, config=dict(reading="other")))
    with pytest.raises(ValueError, match="another configuration or code"):
        mc.evaluate_conversion(snn, ann, data, range(1, 33), **kw)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        mc.evaluate_conversion(snn, ann, data, T_read, **dict(kw, chunk_images=12))


def test_chunks_of_other_code_are_refused(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ann = mc.ann_net("784-10-10", (1, 28, 28)).eval()
    data = _Images(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    snn = mc.convert(ann, data.x, phase_period=4)
    kw = dict(batch_size=4, store=tmp_path, chunk_images=4)
    chunk = mc.evaluate_conversion(snn, ann, data, range(1, 9), **kw)
    assert chunk["chunks"][0]["provenance"]["commit"] == rt.provenance()["commit"]
    monkeypatch.setattr(mc, "_code_digest", lambda: "edited")
    with pytest.raises(ValueError, match=r"differs in \['code'\]"):
        mc.evaluate_conversion(snn, ann, data, range(1, 9), **kw)


def test_the_code_digest_covers_what_the_evaluation_imports():
    """Editing the tables or the gradient study leaves stored chunks valid; the core, a lazily imported
    module (the fused GPU neuron) and the conversion itself are covered."""
    names = {p.name for p in mc._code_files()}
    assert {"mtsnn_convert.py", "mtsnn_core.py", "mtsnn_runs.py", "mtsnn_base.py", "mtsnn_fused.py"} <= names
    assert not names & {"mtsnn_tables.py", "mtsnn_gradients.py"}


def test_fan_out_counts_the_synapses_leaving_each_neuron():
    conv = nn.Conv2d(2, 5, 3, padding=1)
    f = mc.fan_out(conv, (2, 4, 4))
    assert f[0, 1, 1] == 5 * 9 and f[1, 0, 0] == 5 * 4 and f[0, 0, 1] == 5 * 6  # inside, corner, edge
    assert (mc.fan_out(nn.Conv2d(2, 5, 1, stride=2), (2, 4, 4))[0] == torch.tensor([[5., 0] * 2, [0] * 4] * 2)).all()
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10))
    assert (mc.fan_out(head, (2, 3, 3)) == 10).all() and (mc.fan_out(nn.Identity(), (3,)) == 1).all()


@pytest.mark.parametrize("reading", [dict(), dict(s_max=4), dict(phase_period=4), dict(burst_phase=2),
                                     dict(phase_period=4, phase_bistable=True)])
def test_synaptic_operations_are_spikes_times_fan_out(reading):
    """An MLP 784-20-30-10: per step, the first spiking layer's spikes (levels) reach 30 neurons
    each, the second's 10; a phase-coded spike costs one accumulate whatever its weight."""
    torch.manual_seed(0)
    ann = mc.ann_net("784-20-30-10", (1, 28, 28)).eval()
    x = torch.rand(8, 1, 28, 28)
    snn = mc.convert(ann, x, **reading)
    r = mc.evaluate_conversion(snn, ann, _Images(x, torch.zeros(8, dtype=torch.long)), range(1, 25), batch_size=4,
                               chunk=5)
    expected = r["layer_spikes"][0] * 30 + r["layer_spikes"][1] * 10  # layer_spikes counts levels, one per spike
    assert r["layer_sops"].shape == (2, 24) and torch.equal(r["layer_sops"].sum(0), expected)
    assert expected.sum() > 0
    assert r["sops"][24] == pytest.approx(expected.sum().item() / 8) and r["sops"][1] == expected[0].item() / 8


def test_synaptic_operations_of_a_resnet_count_the_shortcuts():
    """ResNet blocks: conv1 and the shortcut (identity: one synapse; 1x1 conv) both receive the
    block's input spikes; summed over steps, every spiking layer's spikes times its fan-out."""
    torch.manual_seed(0)
    net = mc.ResNet(1, (4, 8), 1, stem_stride=2).eval()
    x = torch.randn(4, 1, 16, 16)
    snn = mc.convert(net, x)
    r = mc.evaluate_conversion(snn, net, _Images(x, torch.zeros(4, dtype=torch.long)), range(1, 17), batch_size=4)
    assert len(snn.source_of) == 2 * 3 + 1  # 2 blocks x (conv1, conv2, shortcut) + readout
    block0 = snn.stages[1]
    assert snn.source_of[block0.shortcut] is snn.stages[0] and snn.source_of[block0.conv2] is block0.if_a
    assert isinstance(block0.shortcut.layer, nn.Identity) and r["layer_sops"][:3].sum() > 0
    assert all(v >= 0 and v == int(v) for v in r["layer_sops"].flatten().tolist())


def test_a_complete_store_of_other_code_is_read_only_when_asked(tmp_path, monkeypatch):
    """stored_code=True reads a store that another version of the code computed, as it is, and
    computes nothing: a missing chunk is an error; chunks of two versions are never mixed."""
    torch.manual_seed(0)
    ann = mc.ann_net("784-10-10", (1, 28, 28)).eval()
    data = _Images(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    snn = mc.convert(ann, data.x)
    kw = dict(batch_size=4, store=tmp_path, chunk_images=4)
    first = mc.evaluate_conversion(snn, ann, data, range(1, 9), **kw)
    monkeypatch.setattr(mc, "_code_digest", lambda: "edited")
    read = mc.evaluate_conversion(snn, ann, data, range(1, 9), stored_code=True, **kw)
    assert torch.equal(read["predictions"], first["predictions"]) and read["sops"] == first["sops"]
    (tmp_path / "chunk_0000004_0000008.pt").unlink()
    with pytest.raises(ValueError, match="nothing is computed"):
        mc.evaluate_conversion(snn, ann, data, range(1, 9), stored_code=True, **kw)
    mc.evaluate_conversion(snn, ann, data, range(1, 9), stop_at=0.0, **dict(kw, store=tmp_path / "new"))
    for p in (tmp_path / "new").glob("*.pt"):
        p.rename(tmp_path / "chunk_0000004_0000008.pt")
    with pytest.raises(ValueError, match="more than one version"):
        mc.evaluate_conversion(snn, ann, data, range(1, 9), stored_code=True, **kw)
