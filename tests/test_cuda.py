"""The CUDA path: run on a machine with a GPU (tools/gpu_run.py does); skipped without one.

The fused neuron's arithmetic is also checked on the CPU, through Triton's interpreter
(tests/test_fused.py); these tests check it compiled for the GPU, and what only a GPU shows.
"""
import itertools

import pytest
import torch

import mtsnn_convert as mc
import mtsnn_core as mt
import mtsnn_data as md
import mtsnn_runtime as rt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DATA = md.data_root()
needs_mnist = pytest.mark.skipif(not (DATA / "MNIST" / "raw").exists(), reason=f"MNIST not under {DATA}")


@pytest.fixture
def fused_mode():
    """Restore mt.FUSED_NEURON after a test that switches it."""
    before = mt.FUSED_NEURON
    yield
    mt.FUSED_NEURON = before


def _spikes_and_grad(neuron, x, mode, grad_out):
    mt.FUSED_NEURON = mode
    leaf = x.detach().clone().requires_grad_()
    spikes = neuron(leaf)
    (spikes * grad_out).sum().backward()
    return spikes.detach(), leaf.grad


@pytest.mark.parametrize("surrogate,reset_grad",
                         list(itertools.product(["f1", "f2", "f3"], ["paper", "bptt", "detach"])))
def test_fused_neuron_matches_the_reference_on_cuda(fused_mode, surrogate, reset_grad):
    """Fresh random currents over the range that matters (-3..18 thresholds), every layout the
    networks produce: same spikes, same gradient to float rounding."""
    g = torch.Generator(device="cuda").manual_seed(sum(map(ord, surrogate + reset_grad)))
    for s_max, T in [(15, 1), (15, 2), (1, 2), (15, 4)]:
        layouts = [torch.randn(T, 64, 300, device="cuda", generator=g) * 60 + 60,
                   (torch.randn(T * 32, 16, 12, 12, device="cuda", generator=g) * 60 + 60)
                   .contiguous(memory_format=torch.channels_last).unflatten(0, (T, 32))]
        for x in layouts:
            neuron = mt.MultiThresholdLIF(s_max=s_max, surrogate=surrogate, reset_grad=reset_grad)
            grad_out = torch.randn(x.shape, device="cuda", generator=g)
            s_ref, g_ref = _spikes_and_grad(neuron, x, "off", grad_out)
            s_fused, g_fused = _spikes_and_grad(neuron, x, "cuda", grad_out)
            assert s_fused.stride() == x.stride()  # the kernels keep the layout (channels_last stays)
            assert (s_fused != s_ref).float().mean() < 1e-5  # a flip needs h within an ulp of a threshold
            rel = (g_fused - g_ref).norm() / g_ref.norm()
            assert rel < 1e-4, (s_max, T, tuple(x.shape), float(rel))


def test_fused_neuron_takes_the_repeated_first_input(fused_mode):
    """The first layer's current is one tensor expanded over T (stride 0): read once, same result."""
    current = torch.randn(64, 800, device="cuda") * 40
    x = current.unsqueeze(0).expand(2, *current.shape)
    neuron = mt.MultiThresholdLIF()
    mt.FUSED_NEURON = "off"
    ref = neuron.run(x)
    mt.FUSED_NEURON = "cuda"
    fused = neuron.run(x)
    assert torch.equal(fused[0], ref[0]) and torch.allclose(fused[1], ref[1], rtol=1e-6, atol=1e-5)


def test_network_gradients_fused_and_plain_agree(fused_mode):
    """A whole paper CNN, one forward/backward: every parameter's gradient agrees."""
    torch.manual_seed(0)
    net = mt.build_net(mt.PAPER_NETWORKS["Table 5"][1], (1, 28, 28), 10).cuda()
    images, labels = torch.randn(32, 1, 28, 28, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    grads = {}
    for mode in ("off", "cuda"):
        mt.FUSED_NEURON = mode
        net.zero_grad()
        mt.spike_mse_loss(net(images, 2), labels, 15).backward()
        grads[mode] = [p.grad.clone() for p in net.parameters()]
    for ref, fused in zip(grads["off"], grads["cuda"]):
        assert (fused - ref).norm() <= 1e-3 * ref.norm() + 1e-6


def test_neuron_and_loss_stay_fp32_under_bf16_autocast():
    net = mt.build_net("784-100-10", (1, 28, 28), 10).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(torch.randn(8, 1, 28, 28, device="cuda"), 2)
        loss = mt.spike_mse_loss(out, torch.zeros(8, dtype=torch.long, device="cuda"), 15)
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(out, out.round())  # integer spike counts, as in fp32
    loss.backward()


def _synthetic(name, n, shape):
    """A Dataset of random images whose class is the index of the largest of their first 10 values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = (x.flatten(1)[:, :10].argmax(1)).long()
    return md.Dataset(name, name, x.cuda(), y.cuda(), (0.5,) * shape[0], (0.25,) * shape[0])


def test_a_training_step_never_waits_on_the_host():
    """No host-device synchronisation inside train_epoch's steps (augmentation drawn per epoch,
    no .item() per step): sync debug mode turns any into an error from the second step on."""
    data = _synthetic("cifar10", 8 * 16, (3, 32, 32))
    torch.manual_seed(0)
    net = mt.build_net("8C3-P2-32", (3, 32, 32), 10).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = []

    def on_step():
        steps.append(1)
        torch.cuda.set_sync_debug_mode("error" if len(steps) < 8 else "default")

    try:
        mt.train_epoch(net, opt, data, lambda out, y: mt.spike_mse_loss(out, y, 15), net.predict, epoch=0, seed=0,
                       batch_size=16, on_step=on_step, T=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(steps) == 8


def test_an_ann_step_with_cutout_and_a_teacher_never_waits_on_the_host():
    """train_ann's forward (cutout centres from a generator on the GPU, bf16, a teacher ensemble) as
    the test above: no host-device synchronisation from the second step on."""
    data = _synthetic("cifar10", 8 * 16, (3, 32, 32))
    torch.manual_seed(0)
    net, teacher = mc.ann_net("8C3-P2-32", (3, 32, 32)).cuda(), mc.Ensemble([mc.ann_net("8C3-P2-32", (3, 32, 32))])
    forward = mc._TrainingForward(net, 8, True, teacher.cuda().eval())
    forward.generator = torch.Generator("cuda").manual_seed(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    steps = []

    def on_step():
        steps.append(1)
        torch.cuda.set_sync_debug_mode("error" if len(steps) < 8 else "default")

    def loss_fn(out, y):
        return torch.nn.functional.cross_entropy(out[0], y) + torch.nn.functional.mse_loss(out[0], out[1])

    try:
        mt.train_epoch(forward, opt, data, loss_fn, lambda out: out[0].argmax(1), epoch=0, seed=0, batch_size=16,
                       on_step=on_step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(steps) == 8


@needs_mnist
def test_training_on_cuda_learns_and_records_its_setup(tmp_path):
    result = mt.train("784-200-10", "mnist", epochs=1, subset=10_000, test_subset=2_000, device="cuda",
                      checkpoint=tmp_path / "run.pt", progress=False)
    assert result["test_accuracy"] > 60  # 73.55 % on the CPU after this one short epoch; chance is 10 %
    setup = result["device_setup"]
    assert setup["cuda"] and setup["cudnn"] and setup["fused_neuron"]
    assert setup["tf32_matmul"] == rt.CUDA_POLICY["tf32"]
    assert setup["cudnn_benchmark"] == rt.CUDA_POLICY["cudnn_benchmark"]
    state = rt.load_checkpoint(tmp_path / "run.pt")  # onto the CPU, Adam's step counters too
    tensors = [t for t in state["model"].values()] + [v for s in state["optimizer"]["state"].values()
                                                      for v in s.values() if torch.is_tensor(v)]
    assert all(t.device.type == "cpu" for t in tensors)
    resumed = mt.train("784-200-10", "mnist", epochs=2, subset=10_000, test_subset=2_000, device="cuda",
                       checkpoint=tmp_path / "run.pt", resume=True, progress=False)
    assert len(resumed["history"]) == 2 and resumed["test_accuracy"] > 70  # 80.6 % on the CPU

