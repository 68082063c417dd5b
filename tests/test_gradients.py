"""mtsnn_gradients: the six readings of the paper's gradient (notebook 46)."""
import math

import pytest
import torch

import mtsnn_core as mt
import mtsnn_gradients as mg


def _grads(net, x, y):
    for p in net.parameters():
        p.grad = None
    mg.loss_on(net, x, y).backward()
    return [p.grad.clone() for lin in net.linears for p in (lin.weight, lin.bias)]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)


@pytest.mark.parametrize("reading,reset_grad", list(mg.CORE_EQUIVALENT.items()))
def test_readings_the_core_has_give_the_cores_gradients(batch, reading, reset_grad):
    x, y = batch
    torch.manual_seed(0)
    core = mt.initialised_net("784-100-10", x, 10, T=2, reset_grad=reset_grad)
    out = core(x, 2)
    mt.spike_mse_loss(out, y, 15).backward()
    net = mg.reading_net("784-100-10", x, reading, seed=0)
    assert torch.equal(net(x, 2), out)  # the core's forward
    for ours, theirs in zip(_grads(net, x, y), core.parameters()):
        assert (ours - theirs.grad).norm() <= 1e-5 * theirs.grad.norm() + 1e-12


def test_eq9_differs_from_ours_only_below_the_top_layer(batch):
    """Eq. 9 as printed changes the error sent down, not the top layer's own weight gradient."""
    x, y = batch
    net = mg.reading_net("784-100-10", x, "implicit", seed=0)
    ours = _grads(net, x, y)
    net.reading = mg.READINGS["eq9"]
    printed = _grads(net, x, y)
    assert torch.allclose(printed[2], ours[2]) and torch.allclose(printed[3], ours[3])
    assert not torch.allclose(printed[0], ours[0])


def test_unit_area_surrogate_and_ste_match_the_staircase_slope():
    neuron = mt.MultiThresholdLIF()
    h = torch.linspace(65, 75, 100_001)  # one threshold's period, centred on 7 V_th
    dh = (h[1] - h[0]).item()
    area = (mg.surrogate(h[:-1], mg.READINGS["bptt-unit-area"], neuron).sum() * dh).item()
    assert area == pytest.approx(1.0, rel=1e-2)  # the staircase rises by one spike per threshold
    assert torch.all(mg.surrogate(h, mg.READINGS["ste"], neuron) == 1 / neuron.v_th)
    assert mg.READINGS["bptt-unit-area"].alpha_h == pytest.approx(1 / math.sqrt(math.pi * 20.0))
