"""Unit tests of mtsnn_core against the paper's equations (Xu, Liu & Yang 2022), and of what it
uses and what uses it: mtsnn_data (datasets), mtsnn_runtime (checkpoints, device), mtsnn_runs (sweeps).

Every expected value is written out here by hand (NumPy loops, closed forms, literal numbers from
the datasets); nothing is compared against the implementation itself. Data tests read the files
under $MTSNN_DATA (./data if unset) and are skipped when the dataset is not there.
Run: MTSNN_DATA=/path/to/data .venv/bin/python -m pytest tests/test_core.py
"""
import math
import os
import platform
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtsnn_core as mt
import mtsnn_data as md
import mtsnn_runs as mr
import mtsnn_runtime as rt

HYPO = settings(max_examples=60, deadline=None, derandomize=True, database=None)
DATA = md.data_root()
HAS_MNIST = (DATA / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()
HAS_FMNIST = (DATA / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()
HAS_CIFAR = (DATA / "cifar-10-jpeg75" / "test.tar").exists() or (DATA / "cifar-10-batches-py").exists()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST not under {DATA} (set MTSNN_DATA)")
needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason=f"FashionMNIST not under {DATA} (set MTSNN_DATA)")
needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=f"CIFAR-10 not under {DATA} (set MTSNN_DATA)")


# ----------------------------------------------------------------------------------------------
# Hand-written references (float64 NumPy)
# ----------------------------------------------------------------------------------------------

def ref_neuron(x, v_th, tau_m, s_max):
    """Eqs. 1, 5, 4 step by step: h = (1-1/tau) u + x[t]; s = clamp(floor(h/V), 0, S); u = h - s V."""
    u = np.zeros_like(x[0])
    spikes = np.zeros_like(x)
    for t in range(x.shape[0]):
        h = (1.0 - 1.0 / tau_m) * u + x[t]
        spikes[t] = np.clip(np.floor(h / v_th), 0, s_max)
        u = h - spikes[t] * v_th
    return spikes


def ref_lif(x, v_th, tau_m):
    """Ordinary LIF with soft reset: spike = Heaviside(h - V), u = h - V * spike."""
    u = np.zeros_like(x[0])
    spikes = np.zeros_like(x)
    for t in range(x.shape[0]):
        h = (1.0 - 1.0 / tau_m) * u + x[t]
        spikes[t] = (h >= v_th).astype(x.dtype)
        u = h - v_th * spikes[t]
    return spikes


def ref_f1(u, v_th=10.0, s_max=15, alpha_h=1.0, alpha_w=20.0):
    """Eq. 14, full sum over i = 1..S_max."""
    u = np.asarray(u, dtype=np.float64)
    return sum(i * alpha_h * np.exp(-(u - i * v_th) ** 2 / (alpha_w / i)) for i in range(1, s_max + 1))


def ref_f2(u, v_th=10.0, s_max=15, alpha_h=1.0, alpha_w=20.0):
    """Eq. 15, full sum over i = 1..S_max."""
    u = np.asarray(u, dtype=np.float64)
    return sum(alpha_h * np.exp(-(u - i * v_th) ** 2 / alpha_w) for i in range(1, s_max + 1))


def ref_f3(u, v_th=10.0, s_max=15, alpha_h=1.0, alpha_w=None):
    """Eq. 16, piece by piece in the paper's order."""
    u = np.asarray(u, dtype=np.float64)
    out = np.empty_like(u)
    for k, v in np.ndenumerate(u):
        if v < 0 or v >= (s_max + 1) * v_th:
            out[k] = 0.0
        elif v < v_th:
            out[k] = alpha_h * v / v_th
        elif v < s_max * v_th:
            out[k] = alpha_h
        else:
            out[k] = alpha_h * (s_max + 1 - v / v_th)
    return out


REF_SURROGATES = {"f1": ref_f1, "f2": ref_f2, "f3": ref_f3}


def spikes_of(x, **kw):
    return mt.MultiThresholdLIF(**kw)(torch.as_tensor(x)).detach().numpy()


# ----------------------------------------------------------------------------------------------
# 1. Neuron (eqs. 1, 4, 5)
# ----------------------------------------------------------------------------------------------

NEURON_CONFIGS = [(10.0, 10.0, 15), (1.0, 2.0, 3), (0.5, 1.0, 1), (3.7, 25.0, 7), (10.0, math.inf, 2)]


@pytest.mark.parametrize("v_th,tau_m,s_max", NEURON_CONFIGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_neuron_matches_eqs_1_4_5(v_th, tau_m, s_max, dtype):
    """Spikes of MultiThresholdLIF equal a step-by-step loop of eqs. 1 (charge), 5 (fire), 4 (reset)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-2 * v_th, (s_max + 2) * v_th, size=(6, 4, 3, 5)).astype(dtype)
    out = spikes_of(x, v_th=v_th, tau_m=tau_m, s_max=s_max)
    expected = ref_neuron(x.astype(np.float64), v_th, tau_m, s_max)
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, expected)
    assert 0 < expected.mean() < s_max and (expected == s_max).any()  # the test drives every regime


def test_run_returns_pre_reset_potentials():
    """MultiThresholdLIF.run: the same spikes as forward and h[t] = (1-1/tau) u[t-1] + x[t] (eq. 1)."""
    rng = np.random.default_rng(8)
    x = rng.uniform(-10, 170, size=(4, 6, 5))
    spikes, h = mt.MultiThresholdLIF(v_th=10, tau_m=4, s_max=15).run(torch.from_numpy(x))
    u, h_ref = np.zeros(x.shape[1:]), []
    for t in range(4):
        h_ref.append(0.75 * u + x[t])
        u = h_ref[-1] - 10 * np.clip(np.floor(h_ref[-1] / 10), 0, 15)
    np.testing.assert_allclose(h.numpy(), np.stack(h_ref), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(spikes.numpy(), ref_neuron(x, 10, 4, 15))


def test_neuron_membrane_carries_over_and_resets_by_subtraction():
    """Hand-computed trace (V=10, tau=10, S=15): the residue after reset is carried to the next step."""
    x = torch.tensor([[25.0], [9.0], [0.0], [200.0], [-30.0]]).view(5, 1)
    # h0=25 -> s=2, u=5; h1=4.5+9=13.5 -> s=1, u=3.5; h2=3.15 -> s=0, u=3.15;
    # h3=2.835+200=202.835 -> s=15 (saturated), u=52.835; h4=47.5515-30=17.5515 -> s=1
    out = mt.MultiThresholdLIF(v_th=10, tau_m=10, s_max=15)(x)
    assert out.flatten().tolist() == [2, 1, 0, 15, 1]


def test_neuron_bookkeeping_and_no_state_between_calls():
    """firing_rate / spike_sum describe the last call; every call starts from u[-1] = 0."""
    x = torch.randn(3, 8, 20, generator=torch.Generator().manual_seed(0)) * 30 + 20
    neuron = mt.MultiThresholdLIF()
    first = neuron(x)
    assert neuron.spike_sum.item() == first.sum().item()
    assert neuron.firing_rate.item() == pytest.approx(first.sum().item() / first.numel())
    neuron(torch.full((3, 8, 20), 1000.0))  # a call that saturates: must not leak into the next
    assert torch.equal(neuron(x), first)


def test_s_max_1_is_soft_reset_lif():
    """With S_max = 1 the neuron is the ordinary soft-reset LIF, spike for spike (paper §2)."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-10, 35, size=(8, 50, 7))  # often above 2 V_th: a multi-threshold neuron would differ
    out = spikes_of(x, v_th=10.0, tau_m=10.0, s_max=1)
    np.testing.assert_array_equal(out, ref_lif(x, 10.0, 10.0))
    assert (ref_neuron(x, 10.0, 10.0, 15) > 1).any()


@HYPO
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=24),
       st.integers(1, 6), st.sampled_from([1, 2, 3, 15]), st.sampled_from([0.5, 1.0, 10.0]),
       st.sampled_from([1.0, 2.0, 10.0, math.inf]))
def test_spikes_are_integers_in_0_s_max(values, T, s_max, v_th, tau_m):
    """Eq. 5: the output is an integer number of spikes between 0 and S_max, for any input."""
    x = torch.tensor(values, dtype=torch.float32).repeat(T, 1)  # [T, B]
    s = mt.MultiThresholdLIF(v_th=v_th, tau_m=tau_m, s_max=s_max)(x)
    assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= s_max


@HYPO
@given(st.floats(-50, 400), st.floats(0, 100), st.integers(1, 8), st.sampled_from([1, 3, 15]),
       st.sampled_from([1.0, 1.5, 10.0, math.inf]))
def test_spike_count_grows_with_constant_drive(c, extra, T, s_max, tau_m):
    """With constant input current the total spike count over T steps is non-decreasing in the drive."""
    lo = torch.full((T, 1), c, dtype=torch.float64)
    hi = torch.full((T, 1), c + extra, dtype=torch.float64)
    neuron = mt.MultiThresholdLIF(v_th=10.0, tau_m=tau_m, s_max=s_max)
    assert neuron(lo).sum() <= neuron(hi).sum()


@HYPO
@given(st.lists(st.integers(0, 30), min_size=1, max_size=20), st.integers(1, 10))
def test_integrate_and_fire_conserves_charge(xs, v_th):
    """tau_m = inf (no leak), non-negative input, no saturation: eq. 4 conserves charge, so the total
    spike count is floor(sum(x) / V_th) (the residue stays in [0, V_th))."""
    x = torch.tensor(xs, dtype=torch.float64).view(-1, 1)
    s = mt.MultiThresholdLIF(v_th=v_th, tau_m=math.inf, s_max=100)(x)
    assert s.sum().item() == sum(xs) // v_th


def test_tau_1_is_memoryless():
    """tau_m = 1: decay 1 - 1/tau = 0, each step fires clamp(floor(x/V), 0, S) alone."""
    x = torch.tensor([[35.0, -5.0, 99.0, 400.0]] * 3)
    x[1] = torch.tensor([5.0, 12.0, 0.0, 31.0])
    s = mt.MultiThresholdLIF(v_th=10, tau_m=1, s_max=15)(x.unsqueeze(-1)).squeeze(-1)
    assert s.tolist() == [[3, 0, 9, 15], [0, 1, 0, 3], [3, 0, 9, 15]]


# ----------------------------------------------------------------------------------------------
# 2. Surrogates (eqs. 14-16)
# ----------------------------------------------------------------------------------------------

def test_surrogates_registry():
    assert set(mt.SURROGATES) == {"f1", "f2", "f3"}


@pytest.mark.parametrize("name", ["f1", "f2", "f3"])
@pytest.mark.parametrize("alpha_w", [0.2, 2.0, 20.0, 200.0, 2000.0])
@pytest.mark.parametrize("s_max", [1, 3, 15])
def test_surrogate_matches_equation(name, alpha_w, s_max):
    """Eqs. 14-16 with the full sum over i = 1..S_max, at thresholds, between them and at random points."""
    v_th, alpha_h = 10.0, 1.0
    rng = np.random.default_rng(s_max)
    grid = np.arange(-3, s_max + 4) * v_th
    u = np.concatenate([rng.uniform(-3 * v_th, (s_max + 3) * v_th, 3000), grid, grid + 0.3, grid - 4.9, grid + 5.0])
    u32 = u.astype(np.float32)
    expected = REF_SURROGATES[name](u32.astype(np.float64), v_th, s_max, alpha_h, alpha_w)
    got = mt.SURROGATES[name](torch.from_numpy(u32), v_th, s_max, alpha_h, alpha_w)
    assert got.dtype == torch.float32 and got.shape == u32.shape
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-6 * s_max)
    got64 = mt.SURROGATES[name](torch.from_numpy(u), v_th, s_max, alpha_h, alpha_w).numpy()
    np.testing.assert_allclose(got64, REF_SURROGATES[name](u, v_th, s_max, alpha_h, alpha_w), rtol=0, atol=1e-9 * s_max)


@pytest.mark.parametrize("name", ["f1", "f2", "f3"])
@pytest.mark.parametrize("v_th,s_max,alpha_h,alpha_w", [(1.0, 3, 1.0, 1.0), (2.5, 7, 0.3, 4.0), (10.0, 15, 2.0, 20.0)])
def test_surrogate_other_scales(name, v_th, s_max, alpha_h, alpha_w):
    """Eqs. 14-16 at other V_th and alpha_H (Fig. 5 uses S_max = 3, alpha_H = alpha_W = 1)."""
    u = np.linspace(-2 * v_th, (s_max + 2) * v_th, 2001)
    got = mt.SURROGATES[name](torch.from_numpy(u), v_th, s_max, alpha_h, alpha_w).numpy()
    np.testing.assert_allclose(got, REF_SURROGATES[name](u, v_th, s_max, alpha_h, alpha_w), rtol=0, atol=1e-9 * s_max)


def test_surrogate_default_values_by_hand():
    """Defaults V_th 10, S_max 15, alpha_H 1, alpha_W 20, at points worked out by hand."""
    u = torch.tensor([10.0, 150.0, 5.0, -40.0, 155.0], dtype=torch.float64)
    f1, f2, f3 = (mt.SURROGATES[k](u).numpy() for k in ("f1", "f2", "f3"))
    e = math.exp
    # f1(10) = 1 + 2 e^{-100*2/20} + 3 e^{-400*3/20} + ...;  f1(150) = 15 + 14 e^{-100*14/20} + ...
    np.testing.assert_allclose(f1[:2], [1 + 2 * e(-10) + 3 * e(-60), 15 + 14 * e(-70)], rtol=1e-12)
    np.testing.assert_allclose(f1[2], e(-25 / 20) + 2 * e(-225 * 2 / 20) + 3 * e(-625 * 3 / 20), rtol=1e-12)
    # f2(10) = f2(150) = 1 + e^{-100/20} + e^{-400/20} + e^{-900/20} + ...;  f2(5) = e^{-25/20} + e^{-225/20} + ...
    top = 1 + e(-5) + e(-20) + e(-45)
    np.testing.assert_allclose(f2[:3], [top, top, e(-25 / 20) + e(-225 / 20) + e(-625 / 20) + e(-1225 / 20)],
                               rtol=1e-12)
    assert f1[3] < 1e-30 and f2[3] < 1e-30
    np.testing.assert_allclose(f3, [1.0, 1.0, 0.5, 0.0, 0.5], rtol=0, atol=1e-12)


def test_f1_exceeds_one_near_high_thresholds_f2_f3_do_not():
    """Paper: f1 can exceed 1 near the higher thresholds (pulse i has height i); f2 and f3 stay <= ~1."""
    u = torch.linspace(-20, 180, 20001, dtype=torch.float64)
    f1, f2, f3 = (mt.SURROGATES[k](u) for k in ("f1", "f2", "f3"))
    for i in (2, 5, 15):
        # + e^{-5} from pulse i-1
        assert mt.surrogate_f1(torch.tensor([10.0 * i], dtype=torch.float64)).item() == pytest.approx(i, abs=0.01)
    assert f1.max().item() == pytest.approx(15.0, rel=1e-3)
    assert f2.max().item() <= 1 + 2 * (math.exp(-5) + math.exp(-20)) + 1e-12  # pulse 1, neighbours e^{-d^2/20}
    assert f3.max().item() == 1.0 and f3.min().item() == 0.0


@pytest.mark.parametrize("s_max", [1, 3, 15])
@pytest.mark.parametrize("alpha_h", [1.0, 2.0])
def test_f3_corners(s_max, alpha_h):
    """Eq. 16 at its corners: 0 at u<0 and u>=(S+1)V, ramp to alpha_H at V, plateau to S V, fall to 0."""
    V = 10.0
    pts = {-1.0: 0.0, -100.0: 0.0, 0.0: 0.0, 2.5: 0.25, V / 2: 0.5, V - 1e-9: 1.0, V: 1.0,
           s_max * V: 1.0, (s_max + 0.5) * V: 0.5, (s_max + 0.75) * V: 0.25,
           (s_max + 1) * V: 0.0, (s_max + 1) * V + 1e-9: 0.0, (s_max + 5) * V: 0.0}
    if s_max > 1:
        pts[(s_max - 0.5) * V] = 1.0  # inside the plateau
    u = torch.tensor(list(pts), dtype=torch.float64)
    got = mt.surrogate_f3(u, V, s_max, alpha_h, alpha_w=123.0)  # alpha_W plays no role in f3
    np.testing.assert_allclose(got.numpy(), alpha_h * np.array(list(pts.values())), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# 3. Gradients (eqs. 9-13, and the two alternative readings of the reset)
# ----------------------------------------------------------------------------------------------

GRAD_NEURONS = [dict(v_th=10.0, tau_m=10.0, s_max=15), dict(v_th=1.0, tau_m=2.0, s_max=3)]


def _ds_du_dh(f, v_th, mode):
    """The mode's local rule: (ds/dh, du/dh) as functions of f = surrogate(h)."""
    if mode == "paper":
        return f / (1 + v_th * f), 1 / (1 + v_th * f)
    if mode == "bptt":
        return f, 1 - v_th * f
    return f, np.ones_like(f)


def _random_current(rng, shape, v_th, s_max):
    return rng.uniform(-1 * v_th, (s_max + 1.5) * v_th, size=shape)


@pytest.mark.parametrize("kw", GRAD_NEURONS, ids=["default", "V1_tau2_S3"])
@pytest.mark.parametrize("mode", ["paper", "bptt", "detach"])
@pytest.mark.parametrize("surrogate", ["f1", "f2", "f3"])
def test_gradient_T1(surrogate, mode, kw):
    """T = 1: d(sum s)/dx = f/(1 + V_th f) for "paper" (eq. 13), f for "bptt" and "detach"."""
    rng = np.random.default_rng(3)
    x_np = _random_current(rng, (1, 400), kw["v_th"], kw["s_max"])
    x = torch.tensor(x_np, requires_grad=True)
    mt.MultiThresholdLIF(surrogate=surrogate, reset_grad=mode, **kw)(x).sum().backward()
    f = REF_SURROGATES[surrogate](x_np, kw["v_th"], kw["s_max"], 1.0, 20.0)
    expected = f / (1 + kw["v_th"] * f) if mode == "paper" else f
    assert x.grad.dtype == torch.float64
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).max() > 0.05  # the test points reach the surrogate's support


@pytest.mark.parametrize("kw", GRAD_NEURONS, ids=["default", "V1_tau2_S3"])
@pytest.mark.parametrize("mode", ["paper", "bptt", "detach"])
@pytest.mark.parametrize("surrogate", ["f1", "f2", "f3"])
def test_gradient_T2_chain_rule(surrogate, mode, kw):
    """T = 2, chain rule by hand: h0 = x0, u0 = h0 - s0 V, h1 = decay u0 + x1, L = sum(a s0 + b s1)."""
    V, S, decay = kw["v_th"], kw["s_max"], 1 - 1 / kw["tau_m"]
    rng = np.random.default_rng(4)
    x_np = _random_current(rng, (2, 300), V, S)
    a, b = rng.normal(size=300), rng.normal(size=300)
    x = torch.tensor(x_np, requires_grad=True)
    s = mt.MultiThresholdLIF(surrogate=surrogate, reset_grad=mode, **kw)(x)
    (torch.from_numpy(a) * s[0] + torch.from_numpy(b) * s[1]).sum().backward()

    h0 = x_np[0]
    s0 = np.clip(np.floor(h0 / V), 0, S)
    h1 = decay * (h0 - s0 * V) + x_np[1]
    ref = REF_SURROGATES[surrogate]
    ds0, du0 = _ds_du_dh(ref(h0, V, S, 1.0, 20.0), V, mode)
    ds1, _ = _ds_du_dh(ref(h1, V, S, 1.0, 20.0), V, mode)
    dL_dh1 = b * ds1
    dL_dh0 = a * ds0 + decay * dL_dh1 * du0
    np.testing.assert_allclose(x.grad[1].numpy(), dL_dh1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x.grad[0].numpy(), dL_dh0, rtol=1e-9, atol=1e-12)


def test_gradient_T2_float32():
    """The backward also runs in float32 (the training dtype), within float32 tolerance."""
    rng = np.random.default_rng(5)
    x_np = _random_current(rng, (2, 200), 10.0, 15).astype(np.float32)
    x = torch.tensor(x_np, requires_grad=True)
    mt.MultiThresholdLIF()(x).sum().backward()
    x64 = x_np.astype(np.float64)
    s0 = np.clip(np.floor(x64[0] / 10), 0, 15)
    f0, f1 = ref_f2(x64[0]), ref_f2(0.9 * (x64[0] - 10 * s0) + x64[1])
    g1 = f1 / (1 + 10 * f1)
    g0 = f0 / (1 + 10 * f0) + 0.9 * g1 / (1 + 10 * f0)
    np.testing.assert_allclose(x.grad.numpy(), np.stack([g0, g1]), rtol=1e-4, atol=1e-5)


def test_weight_gradient_is_eq10_times_eq13():
    """T = 1, one layer, L = 1/2 sum (y - s)^2: dL/dW_ij = (s_i - y_i) * f/(1 + V_th f) * x_j (eqs. 10, 13)."""
    rng = np.random.default_rng(6)
    x_np = rng.uniform(0, 3, size=(5, 12))
    w_np = rng.normal(2.0, 4.0, size=(7, 12))
    y = rng.integers(0, 16, size=(5, 7)).astype(np.float64)
    w = torch.tensor(w_np, requires_grad=True)
    s = mt.MultiThresholdLIF()((torch.from_numpy(x_np) @ w.T).unsqueeze(0))[0]
    (0.5 * ((torch.from_numpy(y) - s) ** 2).sum()).backward()
    h = x_np @ w_np.T
    f = ref_f2(h)
    s_np = np.clip(np.floor(h / 10), 0, 15)
    expected = ((s_np - y) * f / (1 + 10 * f)).T @ x_np
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# 4. Networks in the paper's notation
# ----------------------------------------------------------------------------------------------

# Parameter counts by hand: conv (C_in*k*k*N + N), linear (in*out + out); 3x3 convs keep the size
# (padding 1), 5x5 convs shrink by 4 (no padding), P2 halves; the 10-way classifier is appended.
PAPER_NETS = {
    "784-800-10": ((1, 28, 28), (784 * 800 + 800) + (800 * 10 + 10)),
    "784-400-400-10": ((1, 28, 28), (784 * 400 + 400) + (400 * 400 + 400) + (400 * 10 + 10)),
    # 28 -5C-> 24 -P2-> 12 -5C-> 8 -P2-> 4
    "15C5-P2-40C5-P2-300": ((1, 28, 28), (1 * 25 * 15 + 15) + (15 * 25 * 40 + 40) + (40 * 4 * 4 * 300 + 300)
                            + (300 * 10 + 10)),
    "32C5-P2-64C5-P2-1024": ((1, 28, 28), (1 * 25 * 32 + 32) + (32 * 25 * 64 + 64) + (64 * 4 * 4 * 1024 + 1024)
                             + (1024 * 10 + 10)),
    # 32 -3C-> 32 -3C-> 32 -P2-> 16 -3C-> 16 -P2-> 8 -3C-> 8 -3C-> 8
    "96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024": (
        (3, 32, 32), (3 * 9 * 96 + 96) + (96 * 9 * 256 + 256) + (256 * 9 * 384 + 384) + (384 * 9 * 384 + 384)
        + (384 * 9 * 256 + 256) + (256 * 8 * 8 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 10 + 10)),
}
N_NEURON_LAYERS = {"784-800-10": 2, "784-400-400-10": 3, "15C5-P2-40C5-P2-300": 4, "32C5-P2-64C5-P2-1024": 4,
                   "96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024": 8}


@pytest.mark.parametrize("spec", list(PAPER_NETS))
def test_build_net_paper_networks_shapes_and_parameter_counts(spec):
    """The five paper networks (Tables 2-6): exact parameter count, output [T, B, 10] of integer spikes."""
    in_shape, n_params = PAPER_NETS[spec]
    torch.manual_seed(0)
    net = mt.build_net(spec, in_shape, 10)
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert len(net.neurons()) == N_NEURON_LAYERS[spec]
    with torch.no_grad():
        out = net(torch.randn(2, *in_shape), 3)
    assert out.shape == (3, 2, 10)
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 15


def test_build_net_classifier_not_duplicated_and_in_shape_flat():
    """A spec ending in n_classes is not given a second classifier; a flat in_shape works too."""
    a = mt.build_net("784-800-10", (784,), 10)
    b = mt.build_net("784-800", (1, 28, 28), 10)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters()) == 636010
    assert a(torch.randn(4, 784), 2).shape == (2, 4, 10)


def test_build_net_rejects_wrong_mlp_input_size():
    """build_net docstring: an MLP spec's first token must equal prod(in_shape). A MNIST spec on
    CIFAR-sized input must not silently become a 3072-784-800-10 network."""
    with pytest.raises(ValueError, match="spec"):
        mt.build_net("784-800-10", (3, 32, 32), 10)


def test_build_net_neuron_kwargs_reach_every_neuron():
    net = mt.build_net("15C5-P2-40C5-P2-300", (1, 28, 28), 10, s_max=3, surrogate="f3", reset_grad="detach")
    assert all((n.s_max, n.surrogate, n.reset_grad) == (3, "f3", "detach") for n in net.neurons())


@pytest.fixture(scope="module")
def mnist_test64():
    return md.load_dataset("mnist", False, subset=64)


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory):
    """A private cache for the decoded CIFAR-10 JPEG copy (first decode ~5 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTSNN_CACHE", str(tmp_path_factory.mktemp("mtsnn_cache")))
        yield


@pytest.fixture(scope="module")
def cifar_test64(cifar_cache):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = md.load_dataset("cifar10", False, subset=64)
    if data.variant == "cifar10-jpeg75":  # the lossy copy is never used silently
        assert any("JPEG" in str(w.message) for w in caught)
    return data


def test_init_means_and_spreads():
    """Our reading of eq. 17: hidden layers Normal(0, (gain V_th/sqrt(N))^2), the output layer
    Normal(V_th/N, same spread); init_mean="all" puts V_th/N everywhere; init_std fixes the std."""
    torch.manual_seed(0)
    syn = lambda net: [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hidden, out = syn(mt.build_net("784-800-10", (784,), 10))
    assert abs(hidden.weight.mean().item()) < 3 * 0.5 * 10 / 28 / math.sqrt(hidden.weight.numel())
    assert hidden.weight.std().item() == pytest.approx(0.5 * 10 / 28, rel=0.01)
    assert out.weight.mean().item() == pytest.approx(10 / 800, abs=3 * 0.5 * 10 / math.sqrt(800) / math.sqrt(8000))
    hidden, out = syn(mt.build_net("784-800-10", (784,), 10, init_mean="all", init_gain=1.0))
    assert hidden.weight.mean().item() == pytest.approx(10 / 784, abs=3 * 10 / 28 / math.sqrt(hidden.weight.numel()))
    assert hidden.weight.std().item() == pytest.approx(10 / 28, rel=0.01)
    hidden, out = syn(mt.build_net("784-800-10", (784,), 10, init_std=0.5))
    assert hidden.weight.std().item() == pytest.approx(0.5, rel=0.01) and (hidden.bias == 0).all()


@pytest.mark.parametrize("spec", [pytest.param(s, marks=needs_cifar if s.startswith("96") else needs_mnist)
                                  for s in PAPER_NETS])
def test_calibrated_layers_fire_at_the_stated_rate(spec, request):
    """`calibrate_init` on 32 images: on those, each layer fires at its target rate (hidden 1,
    output 0.25 spikes per neuron per step, within 5 %); on 32 other images, within a factor 2."""
    data = request.getfixturevalue("cifar_test64" if spec.startswith("96") else "mnist_test64")
    torch.manual_seed(0)
    net = mt.build_net(spec, data.x.shape[1:], 10)
    factors = mt.calibrate_init(net, data.x[:32], rate=1.0, output_rate=0.25)
    targets = [1.0] * (N_NEURON_LAYERS[spec] - 1) + [0.25]
    assert len(factors) == N_NEURON_LAYERS[spec]
    for images, tolerance in ((data.x[:32], 0.05), (data.x[32:], 1.0)):
        with torch.no_grad():
            net(images, 2)
        rates = [n.firing_rate.item() for n in net.neurons()]
        assert all(t / (1 + tolerance) <= r <= t * (1 + tolerance) for r, t in zip(rates, targets)), rates


# ----------------------------------------------------------------------------------------------
# 5. Data
# ----------------------------------------------------------------------------------------------

# Class counts of the canonical files, and the first ten training labels.
COUNTS = {"mnist": ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                    [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
          "fmnist": ([6000] * 10, [1000] * 10, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])}


@pytest.mark.parametrize("name", [pytest.param("mnist", marks=needs_mnist), pytest.param("fmnist", marks=needs_fmnist)])
def test_load_idx_dataset_normalised_with_right_labels(name):
    """Normalised float images (train mean ~0, std ~1), int labels 0..9, 60000/10000 with canonical class counts."""
    train, test = md.load_dataset(name, True), md.load_dataset(name, False)
    train_counts, test_counts, first = COUNTS[name]
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert abs(train.x.mean().item()) < 0.01 and abs(train.x.std().item() - 1) < 0.01
    assert abs(test.x.mean().item()) < 0.05 and abs(test.x.std().item() - 1) < 0.05
    assert torch.bincount(train.y, minlength=10).tolist() == train_counts
    assert torch.bincount(test.y, minlength=10).tolist() == test_counts
    assert train.y[:10].tolist() == first
    pixels = train.x[:100] * train.std[0] + train.mean[0]  # back to [0, 1]: 0 and 1 both present
    assert pixels.min().item() == pytest.approx(0, abs=1e-6) and pixels.max().item() == pytest.approx(1, abs=1e-6)
    assert len(md.load_dataset(name, False, subset=300)) == 300


def _shifted_copies(img, max_shift, background):
    """All translations of img by up to max_shift pixels, the uncovered border filled with background."""
    C, H, W = img.shape
    p = max_shift
    canvas = torch.full((C, H + 2 * p, W + 2 * p), 0.0) + background.view(C, 1, 1)
    canvas[:, p:p + H, p:p + W] = img
    return [canvas[:, dy:dy + H, dx:dx + W] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]


def _matches(out, img, background, max_shift=4):
    return any(torch.allclose(out, c, rtol=0, atol=1e-6) for c in _shifted_copies(img, max_shift, background))


@needs_mnist
def test_augment_mnist_random_crop(mnist_test64):
    """Random cropping (§3.1): same shape, each image a translated copy padded with zero intensity; no flips."""
    d = mnist_test64
    background = torch.tensor([-d.mean[0] / d.std[0]])
    out = d.augment(d.x, d.draw_augmentation([len(d)], torch.Generator().manual_seed(0)))
    assert out.shape == d.x.shape and out.dtype == d.x.dtype
    assert all(_matches(out[b], d.x[b], background) for b in range(len(d)))
    n_moved = sum(not torch.equal(out[b], d.x[b]) for b in range(len(d)))
    assert n_moved > len(d) // 2
    again = d.augment(d.x, d.draw_augmentation([len(d)], torch.Generator().manual_seed(0)))
    assert torch.equal(out, again)  # a seeded generator makes it reproducible


@needs_cifar
def test_augment_cifar_crop_and_flip(cifar_test64):
    """CIFAR-10 augmentation: translated copies, about half of them mirrored left-right."""
    d = cifar_test64
    assert d.x.shape == (64, 3, 32, 32) and d.y.min() >= 0 and d.y.max() <= 9
    background = -torch.tensor(d.mean) / torch.tensor(d.std)
    out = d.augment(d.x, d.draw_augmentation([len(d)], torch.Generator().manual_seed(1)))
    assert out.shape == d.x.shape
    plain = [_matches(out[b], d.x[b], background) for b in range(64)]
    flipped = [_matches(out[b], d.x[b].flip(2), background) for b in range(64)]
    assert all(p or f for p, f in zip(plain, flipped))
    assert 10 < sum(f and not p for p, f in zip(plain, flipped)) < 54
    assert 10 < sum(p and not f for p, f in zip(plain, flipped)) < 54


@needs_cifar
@pytest.mark.filterwarnings("ignore:CIFAR-10. using the lossy JPEG")
def test_cifar_cache_gives_same_tensors(cifar_test64):
    """The decoded CIFAR-10 copy cached on first use loads back identical."""
    again = md.load_dataset("cifar10", False, subset=64)
    assert torch.equal(again.x, cifar_test64.x) and torch.equal(again.y, cifar_test64.y)


@needs_cifar
def test_cifar_cache_is_checked_and_decoded_once(cifar_test64):
    """A corrupt cache file is noticed by its checksum and decoded again; two processes that load at
    the same time decode once (the second waits on the lock and finds a valid cache)."""
    import os
    import subprocess
    import sys
    cache = next(md._cache_dir().glob("cifar10-jpeg75-test-*.pt"))
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="checksum"):
        again = md.load_dataset("cifar10", False, subset=64)
    assert torch.equal(again.x, cifar_test64.x)
    cache.unlink()
    load = "import mtsnn_data as md, warnings; warnings.simplefilter('ignore'); md.load_dataset('cifar10', False)"
    procs = [subprocess.Popen([sys.executable, "-c", load], env=dict(os.environ), stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    assert all(p.wait() == 0 for p in procs), [p.stderr.read()[-1000:] for p in procs]
    assert md.load_dataset("cifar10", False, subset=64).x.equal(cifar_test64.x)
    assert not list(md._cache_dir().glob("*.tmp"))


@needs_mnist
def test_checksum_failure_names_the_file(tmp_path):
    """A flipped byte in one IDX file raises DatasetError naming that file; the intact split still loads."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (DATA / "MNIST" / "raw").iterdir():
        if f.name.endswith("ubyte"):
            shutil.copyfile(f, raw / f.name)
    bad = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(md.DatasetError, match="t10k-labels-idx1-ubyte"):
        md.load_dataset("mnist", False, root=tmp_path)
    assert len(md.load_dataset("mnist", True, root=tmp_path, subset=10)) == 10


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST/raw"), ("fmnist", "FashionMNIST/raw"), ("cifar10", "")])
def test_missing_dataset_names_folder(name, folder, tmp_path, monkeypatch):
    """No files and no network: DatasetError naming the folder searched (no download attempted for real)."""
    calls = []
    monkeypatch.setattr(md, "_try_download", lambda *a: calls.append(a) or False)
    with pytest.raises(md.DatasetError) as err:
        md.load_dataset(name, False, root=tmp_path)
    assert str((tmp_path / folder).resolve()) in str(err.value)
    assert calls  # it tried (the monkeypatched) download before giving up


# ----------------------------------------------------------------------------------------------
# 6. Loss and training
# ----------------------------------------------------------------------------------------------

def test_spike_mse_loss_is_eq6():
    """Eq. 6 summed over steps and classes, batch mean, desired firing S_max for the label, 0 elsewhere."""
    rng = np.random.default_rng(7)
    out = rng.integers(0, 16, size=(2, 3, 10)).astype(np.float64)
    labels = np.array([4, 0, 9])
    y = np.zeros_like(out)
    y[:, np.arange(3), labels] = 15
    expected = sum(0.5 * ((y[:, b] - out[:, b]) ** 2).sum() for b in range(3)) / 3
    got = mt.spike_mse_loss(torch.from_numpy(out), torch.from_numpy(labels), 15)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def _identity_net():
    """A 3-feature, 3-class net whose output neuron j receives feature j as its current."""
    net = mt.build_net("3-3", (3,), 3)
    with torch.no_grad():
        net.first[-1].weight.copy_(torch.eye(3))
        net.first[-1].bias.zero_()
    return net


def test_evaluate_counts_silent_neurons_and_tied_outputs():
    """T = 1, spikes = floor(current / 10): image 0 -> (2, 0, 0); image 1 -> (0, 0, 0), silent;
    image 2 -> (1, 1, 0), tied. Output neuron 2 never fires. Ties are read by the potential left
    after the step (residuals (5, 8, 2) and (5, 7, 0)): class 1 both times, the right one; read
    as the lowest index they would both be class 0."""
    x = torch.tensor([[25.0, 5.0, 0.0], [5.0, 8.0, 2.0], [15.0, 17.0, 0.0]])
    data = md.Dataset("mnist", "mnist", x, torch.tensor([0, 1, 1]))
    e = mt.evaluate(_identity_net(), data, T=1)
    assert e["accuracy"] == 100.0 and e["accuracy_ties_to_lowest"] == pytest.approx(100 / 3)
    assert e["silent_fraction"] == [pytest.approx(1 / 3)]
    assert e["silent_outputs"] == [2]
    assert e["output_silent"] == pytest.approx(1 / 3)
    assert e["output_tied"] == pytest.approx(2 / 3)
    assert e["firing_rate"] == [pytest.approx(4 / 9)]


def test_evaluate_silent_fraction_counts_every_unit_across_batches():
    """A neuron counts as silent only if it fired on no image of any batch, at no step."""
    x = torch.tensor([[15.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 12.0, 0.0]])
    data = md.Dataset("mnist", "mnist", x, torch.tensor([0, 0, 1]))
    e = mt.evaluate(_identity_net(), data, T=2, batch_size=1)
    assert e["silent_outputs"] == [2] and e["silent_fraction"] == [pytest.approx(1 / 3)]
    assert e["output_silent"] == pytest.approx(1 / 3) and e["output_tied"] == pytest.approx(1 / 3)


def test_readout_compares_count_then_residual_exactly():
    """S_max = 15, T = 2: both classes saturate at 30 spikes and keep residuals of 133 and 161 mV
    (MNIST MLP test image 684). A tie-break term count + sigmoid(u/V_th)/2 rounds both to 30.5 in
    float32 and the lower index won; the exact comparison reads the larger residual."""
    net = _identity_net()
    x = torch.tensor([[0.0, 150.0 + 133.0 / 2 + 7.0, 150.0 + 161.0 / 2 + 7.0]])
    out = net(x, 2)
    assert out.sum(0).tolist() == [[0.0, 30.0, 30.0]]
    residual = net.neurons()[-1].residual
    assert residual[0, 2] > residual[0, 1] > 100
    old = (out.sum(0) + 0.5 * torch.sigmoid(residual / 10.0))
    assert old[0, 1] == old[0, 2]  # the old rule could not tell them apart
    assert net.predict(out).tolist() == [2]
    # a count difference always wins over any residual; an exact tie of both goes to the lower index
    assert mt.readout(torch.tensor([[[2.0, 1.0]]]), torch.tensor([[-50.0, 9.0]])).tolist() == [0]
    assert mt.readout(torch.tensor([[[1.0, 1.0]]]), torch.tensor([[3.0, 3.0]])).tolist() == [0]


def test_predict_needs_the_forward_pass_of_its_spikes():
    net = _identity_net()
    out = net(torch.tensor([[25.0, 5.0, 0.0]]), 1)
    assert net.predict(out).tolist() == [0]
    with pytest.raises(ValueError, match="forward pass"):
        net.predict(torch.zeros(1, 4, 3))


@pytest.fixture(scope="module")
def mnist_512():
    return md.load_dataset("mnist", True, subset=512), md.load_dataset("mnist", False, subset=512)


@needs_mnist
def test_resume_equals_uninterrupted(mnist_512, tmp_path):
    """A run stopped after epoch 1 and resumed from its checkpoint ends with the same weights and history."""
    kw = dict(epochs=2, subset=512, test_subset=512, data=mnist_512, progress=False, seed=3)
    full = mt.train("784-800-10", "mnist", checkpoint=tmp_path / "p.pt", **kw)
    q = tmp_path / "q.pt"
    first = mt.train("784-800-10", "mnist", checkpoint=q, **{**kw, "epochs": 1})
    resumed = mt.train("784-800-10", "mnist", checkpoint=q, resume=True, **kw)
    assert [h["test_accuracy"] for h in resumed["history"]] == [h["test_accuracy"] for h in full["history"]]
    assert resumed["history"][0]["loss"] == first["history"][0]["loss"]  # epoch 1 came from the checkpoint
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """save_checkpoint keeps the one it replaces; a truncated newest file is reported and skipped."""
    path = tmp_path / "c.pt"
    rt.save_checkpoint({"epoch": 1}, path)
    rt.save_checkpoint({"epoch": 2}, path)
    assert rt.load_checkpoint(path) == {"epoch": 2} and not (tmp_path / "c.pt.tmp").exists()
    path.write_bytes(path.read_bytes()[:100])  # what a kill during a plain torch.save would leave
    with pytest.warns(UserWarning, match="unreadable"):
        assert rt.load_checkpoint(path) == {"epoch": 1}
    assert rt.load_checkpoint(tmp_path / "none.pt") is None


def test_one_process_trains_a_checkpoint(tmp_path):
    """A checkpoint claimed by this process (a run under way) is refused to another process, and
    claimed again here as often as needed; it is free once this process lets go of it."""
    import subprocess
    import sys
    path = tmp_path / "c.pt"
    rt.save_checkpoint({"epoch": 1}, path)
    assert rt.claim_checkpoint(path) == {"epoch": 1} and rt.claim_checkpoint(path, load=False) is None
    other = [sys.executable, "-c", f"import mtsnn_runtime as rt; rt.claim_checkpoint({str(path)!r})"]
    refused = subprocess.run(other, capture_output=True, text=True, cwd=os.path.dirname(rt.__file__))
    assert refused.returncode != 0 and "being trained by another process" in refused.stderr
    os.close(rt._CLAIMED.pop(str(path.resolve())))
    assert subprocess.run(other, cwd=os.path.dirname(rt.__file__)).returncode == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_configure_cpu_keeps_freed_memory_for_reuse():
    """Before `rt.configure_cpu` a 64 MB tensor is a block mapped from the OS (and unmapped when
    freed); after it, a block of the heap, which stays with the process (glibc's mallinfo2)."""
    import subprocess
    import sys
    probe = """
import ctypes, torch, mtsnn_runtime as rt
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None); libc.mallinfo2.restype = Info
def mapped(size=16 * 2**20):  # MB mapped from the OS for a tensor of `size` floats
    before = libc.mallinfo2(); tensor = torch.empty(size); after = libc.mallinfo2()
    return (after.hblkhd - before.hblkhd) >> 20
before = mapped()
rt.configure_cpu()
print(before, mapped())
"""
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=os.path.dirname(rt.__file__))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["64", "0"]  # mapped before, from the heap after


@needs_mnist
def test_a_run_killed_while_saving_resumes(tmp_path):
    """A real training process is killed (SIGKILL) while it writes a checkpoint; rerunning the same
    call resumes from the last complete one and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    ckpt = tmp_path / "run.pt"
    call = (f"import mtsnn_core as mt; r = mt.train('784-800-10', 'mnist', epochs={{}}, subset=256, test_subset=256, "
            f"checkpoint={str(ckpt)!r}, resume=True, progress=False); print(len(r['history']))")
    child = subprocess.Popen([sys.executable, "-c", call.format(40)], env=dict(os.environ))
    deadline, killed_in_save = time.time() + 120, False
    while child.poll() is None and time.time() < deadline:
        if (tmp_path / "run.pt.tmp").exists() and ckpt.exists():  # a save in progress, an older one complete
            child.send_signal(signal.SIGKILL)
            killed_in_save = True
            break
    child.wait()
    assert killed_in_save, "the run ended before a save could be interrupted"
    state = rt.load_checkpoint(ckpt)
    done = len(state["history"])
    assert done >= 1
    finished = subprocess.run([sys.executable, "-c", call.format(done + 1)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip().splitlines()[-1] == str(done + 1)


@needs_mnist
def test_resume_refuses_more_epochs_than_asked_and_other_data(mnist_512, tmp_path):
    kw = dict(subset=512, test_subset=512, progress=False, checkpoint=tmp_path / "c.pt", resume=True)
    mt.train("784-800-10", "mnist", epochs=2, data=mnist_512, **kw)
    with pytest.raises(ValueError, match="holds 2 epochs"):
        mt.train("784-800-10", "mnist", epochs=1, data=mnist_512, **kw)
    other = (md.load_dataset("fmnist", True, subset=512), md.load_dataset("fmnist", False, subset=512))
    with pytest.raises(ValueError, match="other data"):
        mt.train("784-800-10", "mnist", epochs=3, data=other, **kw)
    spelt_out = mt.train("784-800-10", "mnist", epochs=2, data=mnist_512, s_max=15, **kw)  # a default, spelt out
    assert len(spelt_out["history"]) == 2


@needs_mnist
def test_resume_refuses_a_different_configuration(mnist_512, tmp_path):
    """A checkpoint written with another learning rate is not silently resumed."""
    kw = dict(epochs=1, subset=512, test_subset=512, data=mnist_512, progress=False, checkpoint=tmp_path / "c.pt")
    mt.train("784-800-10", "mnist", **kw)
    with pytest.raises(ValueError, match="checkpoint"):
        mt.train("784-800-10", "mnist", lr=0.001, resume=True, **kw)


@needs_mnist
def test_short_training_run_learns():
    """MNIST 784-800-10, 5000 images, one epoch, Table 1 settings: clearly above chance.
    Measured 74.75 % (seed 0) and 75.0 % (seed 1) on 2000 test images; floor set 10 points lower."""
    r = mt.train("784-800-10", "mnist", epochs=1, subset=5000, test_subset=2000, progress=False, seed=0)
    assert r["test_accuracy"] >= 65.0
    assert len(r["history"]) == 1 and r["history"][0]["train_accuracy"] > 30.0
    assert len(r["history"][0]["firing_rate"]) == 2


@needs_mnist
def test_paper_cnn_learns_with_every_output_alive():
    """Regression test of the convolutional networks' failure (an MNIST 15C5-P2-40C5-P2-300 stuck
    near 79 % with output neurons that never fire again). One epoch on 15 000 MNIST images, seed 0,
    Table 1 settings and the core's defaults: measured 90.65 % on 2 000 test images (seed 1: 92.55
    %), every output neuron firing; the previous initialisation (init_mean="all", init_gain=1,
    init_rate=None) gives 62.9 % with output neurons 2, 4 and 6 silent. About 15 s on 2 threads."""
    data = md.load_dataset("mnist", True, subset=15_000), md.load_dataset("mnist", False, subset=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent output neuron's warning fails the test
        r = mt.train("15C5-P2-40C5-P2-300", "mnist", epochs=1, data=data, progress=False, seed=0)
    h = r["history"][-1]
    assert h["silent_outputs"] == [] and h["silent_fraction"][-1] == 0.0
    assert h["test_accuracy"] >= 86.0


@needs_mnist
def test_binary_spikes_train_with_every_output_alive():
    """Regression test of binary spikes losing output neurons (S_max = 1, T = 2, MNIST 784-800-10,
    one epoch on 10,000 images, 2,000 test images). The output layer starting at 0.25 spikes per
    step, above the loss's balance point S_max/10 = 0.1, measured 69.75 % with outputs [5, 8] silent
    (seed 1) and 66.2 % with [5, 9] (seed 2); the default start relative to S_max (1/60) 86.0 % for
    both, every output firing. About 8 s on 2 threads."""
    data = md.load_dataset("mnist", True, subset=10_000), md.load_dataset("mnist", False, subset=2000)
    kw = dict(epochs=1, data=data, progress=False, s_max=1, T=2)
    for seed in (1, 2):
        h = mt.train("784-800-10", "mnist", seed=seed, **kw)["history"][-1]
        assert h["silent_outputs"] == [] and h["test_accuracy"] >= 80.0, (seed, h["silent_outputs"])
    with pytest.warns(UserWarning, match="never fired"):  # the fixed start reproduces the failure
        h = mt.train("784-800-10", "mnist", seed=1, init_output_rate=0.25, **kw)["history"][-1]
    assert h["silent_outputs"]


def test_label_margin_raises_the_labels_target_only():
    """spike_mse_loss(label_margin=m): the labelled class's desired firing is S_max + m, the others' 0."""
    out, y = torch.zeros(2, 3, 10), torch.tensor([1, 4, 9])
    assert mt.spike_mse_loss(out, y, 1).item() == pytest.approx(0.5 * 2 * 1)  # T = 2 steps, (1 - 0)^2
    assert mt.spike_mse_loss(out, y, 1, label_margin=1).item() == pytest.approx(0.5 * 2 * 4)
    out[:, 0, 2] = 1.0  # a wrong class firing costs the same with or without the margin
    assert (mt.spike_mse_loss(out, y, 1, label_margin=1) - mt.spike_mse_loss(out, y, 1)).item() == pytest.approx(
        0.5 * 2 * 3)


@needs_cifar
def test_binary_hidden_layers_stay_alive_when_centred(cifar_cache):
    """Regression test of binary spikes dying in hidden layers (S_max = 1, T = 1, the ablation network
    32C5-P2-64C5-P2-512, lr 0.0005, one epoch on 10,000 jpeg75 images, seed 0). Measured (seeds 0, 1): with
    the defaults, 7-8 % of the second convolution's units and 18-22 % of the 512 fully connected neurons
    fire on under 1 % of 1,024 training images after the epoch (0 % at the start: they died training),
    test accuracy 17.5 / 18.6 % on 2,000 images; centred (init_spread=3) 0 % dead in every layer and
    23.7 / 22.75 %. docs/choices.md, "Binary spikes". About 30 s on 2 threads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the JPEG copy's warning
        train, test = md.load_dataset("cifar10", True, subset=10_000), md.load_dataset("cifar10", False, subset=2000)
    kw = dict(T=1, s_max=1, lr=0.0005, seed=0, epochs=1, data=(train, test), progress=False)
    dead = {}
    for name, extra in (("default", {}), ("centred", dict(init_spread=3.0))):
        net = mt.train("32C5-P2-64C5-P2-512", "cifar10", **kw, **extra)["model"]
        spikes = [r["s"].mean(0) for r in net.record(train.x[:1024], 1)]
        dead[name] = [((s > 0).float().mean(0).flatten() < 0.01).float().mean().item() for s in spikes[:-1]]
    assert max(dead["centred"]) <= 0.01 and dead["default"][2] >= 0.1, dead


def test_output_start_is_relative_to_s_max_and_recorded_as_before():
    """S_max = 15 keeps the start the stored runs recorded (0.25), so their checkpoints resume."""
    assert mt.output_start(15) == 0.25 and mt.output_start(1) == pytest.approx(1 / 60)
    torch.manual_seed(0)
    net, x = mt.build_net("20-30-10", (20,), 10, s_max=1), torch.randn(256, 20)
    mt.calibrate_init(net, x, T=2)
    assert net(x, 2).mean().item() == pytest.approx(1 / 60, rel=0.1)


@pytest.mark.parametrize("s_max", [1, 15])
def test_centred_channels_start_alike_at_the_stated_spread_and_rate(s_max):
    """calibrate_init(spread=3): on the calibration images every hidden channel's current has std 3*S_max
    mV about one mean per layer, each hidden layer fires `rate` (capped at S_max/4), the output its start."""
    torch.manual_seed(0)
    net, x = mt.build_net("8C5-P2-16C5-P2-32", (1, 28, 28), 10, s_max=s_max), torch.randn(64, 1, 28, 28)
    factors = mt.calibrate_init(net, x, rate=1.0, T=2, spread=3.0)
    currents = []
    hooks = [n.register_forward_pre_hook(lambda m, a: currents.append(a[0])) for n in net.neurons()]
    with torch.no_grad():
        net(x, 2)
    for h in hooks:
        h.remove()
    rates = [n.firing_rate.item() for n in net.neurons()]
    for current, rate in zip(currents[:-1], rates[:-1]):
        dims = [d for d in range(current.dim()) if d != 2]
        assert torch.allclose(current.std(dims), torch.tensor(3.0 * s_max), rtol=0.02)  # rounding flips a few spikes
        assert torch.allclose(current.mean(dims), current.mean(), atol=0.03 * s_max)
        assert rate == pytest.approx(min(1.0, s_max / 4), rel=0.02)
    assert [f.shape for f in factors[:-1]] == [(8,), (16,), (32,)] and isinstance(factors[-1], float)
    assert rates[-1] == pytest.approx(mt.output_start(s_max), rel=0.05)


@needs_mnist
def test_a_finished_weights_file_resumes_as_a_finished_run(mnist_512, tmp_path):
    """export_weights drops the optimizer state: train() reads such a file back as the finished run
    it is (nothing trained, same history) and refuses to continue it."""
    kw = dict(subset=512, test_subset=512, data=mnist_512, progress=False, validation=128)
    r = mt.train("784-800-10", "mnist", epochs=2, checkpoint=tmp_path / "c.pt", **kw)
    assert r["config"]["validation"] == 128 and r["config"]["init_output_rate"] == 0.25
    assert all(0.0 <= h["val_accuracy"] <= 100.0 for h in r["history"])
    mt.export_weights(tmp_path / "c.pt", tmp_path / "w.pt")
    again = mt.train("784-800-10", "mnist", epochs=2, checkpoint=tmp_path / "w.pt", resume=True, **kw)
    assert again["history"] == r["history"]
    with pytest.raises(ValueError, match="without optimizer state"):
        mt.train("784-800-10", "mnist", epochs=3, checkpoint=tmp_path / "w.pt", resume=True, **kw)
    assert "validation" not in mt.train("784-800-10", "mnist", epochs=1, data=mnist_512, progress=False)["config"]


def test_plateaued_reads_the_held_out_accuracy_only():
    rising = [dict(val_accuracy=float(a)) for a in range(100)]
    flat = rising[:80] + [dict(val_accuracy=79.1)] * 20  # the last 20 % of epochs gain 0.1 over the best before
    assert not mt.plateaued(rising) and mt.plateaued(flat)
    assert not mt.plateaued(flat, min_gain=0.05)
    assert not mt.plateaued(flat[:59], window=0.01) and mt.plateaued(flat[:60] + flat[-1:] * 5, window=0.01)
    assert mt.plateau_gain(flat) == pytest.approx(0.1) and mt.plateau_gain(rising) == 20
    assert mt.plateau_gain(flat[:1]) is None and mt.plateau_gain(flat[:2], window=0.5) == 1


@needs_mnist
def test_training_stops_at_a_plateau_and_resumes_there(mnist_512, tmp_path):
    kw = dict(epochs=5, data=mnist_512, progress=False, validation=128, checkpoint=tmp_path / "c.pt", resume=True,
              plateau=dict(min_epochs=2, window=0.5, min_gain=100.0))  # no gain of 100 points: stops at epoch 2
    r = mt.train("784-800-10", "mnist", **kw)
    assert len(r["history"]) == 2 and r["config"]["plateau"]["min_gain"] == 100.0
    assert mt.train("784-800-10", "mnist", **kw)["history"] == r["history"]
    with pytest.raises(ValueError, match="plateau"):
        mt.train("784-800-10", "mnist", epochs=1, data=mnist_512, progress=False, plateau=dict(min_epochs=2))


@needs_mnist
def test_bfloat16_precision_is_recorded_and_reloaded(mnist_512, tmp_path):
    r = mt.train("784-800-10", "mnist", epochs=1, data=mnist_512, progress=False, precision="bfloat16",
                 checkpoint=tmp_path / "c.pt")
    assert r["config"]["precision"] == "bfloat16" and r["model"].precision == "bfloat16"
    assert mt.load_model(tmp_path / "c.pt").precision == "bfloat16"
    f32 = mt.train("784-800-10", "mnist", epochs=1, data=mnist_512, progress=False)
    assert "precision" not in f32["config"]  # measured 41.0 % (bfloat16) and 40.8 % (float32), seed 0
    assert abs(r["history"][0]["test_accuracy"] - f32["history"][0]["test_accuracy"]) < 3.0


def test_compiled_neurons_fire_the_same_spikes_and_gradients():
    """torch.compile of the neurons (the plateau runs' `compiled=True`): the same spikes, the same
    gradients up to float rounding (the fused loop may round differently)."""
    x, y = torch.randn(64, 1, 12, 12) * 3, torch.randint(0, 10, (64,))
    nets = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = mt.build_net("4C3-P2-16", (1, 12, 12), 10)
        if compiled:
            rt.compile_neurons(net.neurons())
        out = net(x, 2)
        mt.spike_mse_loss(out, y, 15).backward()
        nets.append((net, out))
    (eager, s0), (fast, s1) = nets
    assert torch.equal(s0, s1) and s0.sum() > 0
    for p0, p1 in zip(eager.parameters(), fast.parameters()):
        assert torch.allclose(p0.grad, p1.grad, rtol=1e-4, atol=1e-6 * p0.grad.abs().max().item())
    for net in (eager, fast):  # beyond max_steps (2) the compiled neurons run eagerly: bit for bit the same
        net.zero_grad()
        mt.spike_mse_loss(net(x, 3), y, 15).backward()
    assert all(torch.equal(p0.grad, p1.grad) for p0, p1 in zip(eager.parameters(), fast.parameters()))


@needs_mnist
def test_compiled_is_recorded_only_when_set(mnist_512):
    kw = dict(epochs=1, data=mnist_512, progress=False)
    assert mt.train("784-50-10", "mnist", compiled=True, **kw)["config"]["compiled"] is True
    assert "compiled" not in mt.train("784-50-10", "mnist", **kw)["config"]


@needs_mnist
def test_silent_output_neuron_warns_with_its_index(mnist_512, monkeypatch):
    """An output neuron that never fires, in the training epoch and on the test set, is named."""
    real = mt.initialised_net

    def with_dead_neuron_3(*args, **kwargs):
        net = real(*args, **kwargs)
        with torch.no_grad():
            net.rest[-2].layer.bias[3] = -1e4  # its current stays far below threshold: f ~ 0, no way back
        return net

    monkeypatch.setattr(mt, "initialised_net", with_dead_neuron_3)
    with pytest.warns(UserWarning, match=r"output layer \(neuron layer 2\), neuron\(s\) \[3\] never fired during the "
                                         r"whole training epoch; neuron\(s\) \[3\] never fired on any of the 512 "
                                         r"test images$"):
        r = mt.train("784-800-10", "mnist", epochs=1, subset=512, test_subset=512, data=mnist_512, progress=False)
    assert r["history"][0]["silent_outputs"] == [3]


@needs_mnist
def test_sweep_paths_agree_and_resume(tmp_path):
    """A sweep gives the same rows in this process, in a pool of worker processes, and through a
    concurrent.futures executor (bit for bit on the CPU, one thread each); with checkpoint_dir a
    second call finds every run finished and returns its stored history."""
    import concurrent.futures
    import multiprocessing
    configs = [dict(lr=0.005), dict(lr=0.002)]
    common = dict(spec="784-800-10", dataset="mnist", epochs=1, subset=256, test_subset=256, threads=1)
    acc = lambda rows: [[h["test_accuracy"] for h in r["history"]] for r in rows]
    here = mr.train_sweep(configs, processes=1, **common)
    pooled = mr.train_sweep(configs, processes=2, **common)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        executed = mr.train_sweep(configs, executor=ex, **common)
    assert acc(here) == acc(pooled) == acc(executed)
    assert [r["history"][0]["loss"] for r in here] == [r["history"][0]["loss"] for r in executed]
    first = mr.train_sweep(configs, processes=1, checkpoint_dir=tmp_path, **common)
    assert len(list(tmp_path.glob("mnist_784_800_10_*.pt"))) == 2
    again = mr.train_sweep(configs, processes=1, checkpoint_dir=tmp_path, **common)
    assert [r["history"] for r in again] == [r["history"] for r in first]


@needs_mnist
def test_nan_loss_stops_with_epoch_and_step(mnist_512, monkeypatch):
    """A non-finite loss stops training with a FloatingPointError naming the epoch and step."""
    real, calls = mt.spike_mse_loss, []

    def poisoned(out, labels, s_max, label_margin=0):
        calls.append(1)
        loss = real(out, labels, s_max, label_margin)
        return loss * float("nan") if len(calls) == 6 else loss  # 4 steps per epoch: epoch 2, step 2

    monkeypatch.setattr(mt, "spike_mse_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 2\b"):
        mt.train("784-800-10", "mnist", epochs=3, subset=512, test_subset=512, data=mnist_512, progress=False)


# ----------------------------------------------------------------------------------------------
# 7. Bad input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["784-abc-10", "", "15X5", "   ", None])
def test_bad_spec(spec):
    with pytest.raises(ValueError, match="spec"):
        mt.build_net(spec, (1, 28, 28), 10)


@pytest.mark.parametrize("kw,param", [
    (dict(s_max=0), "s_max"), (dict(s_max=2.5), "s_max"), (dict(s_max=-3), "s_max"),
    (dict(v_th=0), "v_th"), (dict(v_th=-1.0), "v_th"), (dict(v_th=float("nan")), "v_th"),
    (dict(tau_m=0.5), "tau_m"), (dict(tau_m=0), "tau_m"),
    (dict(surrogate="f4"), "surrogate"), (dict(reset_grad="exact"), "reset_grad")])
def test_bad_neuron_arguments(kw, param):
    """Invalid neuron settings raise ValueError naming the parameter, from the neuron and from build_net."""
    with pytest.raises(ValueError, match=param):
        mt.MultiThresholdLIF(**kw)
    with pytest.raises(ValueError, match=param):
        mt.build_net("784-800-10", (1, 28, 28), 10, **kw)


@pytest.mark.parametrize("name", ["f1", "f2", "f3"])
def test_bad_surrogate_arguments(name):
    with pytest.raises(ValueError, match="s_max"):
        mt.SURROGATES[name](torch.zeros(3), 10.0, 0)
    with pytest.raises(ValueError, match="v_th"):
        mt.SURROGATES[name](torch.zeros(3), -10.0, 15)


def test_neuron_input_without_time_dimension():
    with pytest.raises(ValueError, match=r"input|\[T, B"):
        mt.MultiThresholdLIF()(torch.ones(5))


def test_bad_time_steps():
    net = mt.build_net("784-800-10", (784,), 10)
    with pytest.raises(ValueError, match=r"T \(time steps\)"):
        net(torch.zeros(2, 784), 0)


def test_bad_dataset_device_subset():
    with pytest.raises(ValueError, match="dataset"):
        md.load_dataset("cifar100", False)
    with pytest.raises(ValueError, match="device"):
        md.load_dataset("mnist", False, device="banana")
    with pytest.raises(ValueError, match="device"):
        mt.train("784-800-10", "mnist", device="banana", progress=False)
    with pytest.raises(ValueError, match="device"):
        rt.pick_device("gpu!")


@needs_mnist
@pytest.mark.parametrize("subset", [0, -5, 2.5])
def test_bad_subset(subset):
    with pytest.raises(ValueError, match="subset"):
        md.load_dataset("mnist", False, subset=subset)


BAD_ARGUMENTS = [  # (function name, keyword arguments, the argument named, the error)
    ("build_net", dict(spec="15C0-P2-10"), "spec", ValueError),
    ("build_net", dict(spec="15C5-P0-10"), "spec", ValueError),
    ("build_net", dict(in_shape=(1, 0, 28)), "in_shape", ValueError),
    ("build_net", dict(in_shape=28), "in_shape", TypeError),
    ("build_net", dict(n_classes=0), "n_classes", ValueError),
    ("build_net", dict(n_classes=2.5), "n_classes", TypeError),
    ("build_net", dict(init_gain=0), "init_gain", ValueError),
    ("build_net", dict(init_gain="big"), "init_gain", TypeError),
    ("build_net", dict(init_std=-0.5), "init_std", ValueError),
    ("build_net", dict(init_mean="middle"), "init_mean", ValueError),
    ("train", dict(dataset="svhn"), "dataset", ValueError),
    ("train", dict(epochs=0), "epochs", ValueError),
    ("train", dict(epochs=2.0), "epochs", TypeError),
    ("train", dict(T=0), "T", ValueError),
    ("train", dict(batch_size=True), "batch_size", TypeError),
    ("train", dict(lr=-0.1), "lr", ValueError),
    ("train", dict(lr=float("inf")), "lr", ValueError),
    ("train", dict(lr="0.005"), "lr", TypeError),
    ("train", dict(seed=-1), "seed", ValueError),
    ("train", dict(subset=0), "subset", ValueError),
    ("train", dict(test_subset=1.5), "test_subset", TypeError),
    ("train", dict(data=(1, 2)), "data", ValueError),
    ("train", dict(augment="yes"), "augment", TypeError),
    ("train", dict(resume=1), "resume", TypeError),
    ("train", dict(checkpoint=3), "checkpoint", TypeError),
    ("train", dict(init_rate=0), "init_rate", ValueError),
    ("train", dict(init_output_rate=-1), "init_output_rate", ValueError),
    ("evaluate", dict(T=0), "T", ValueError),
    ("evaluate", dict(batch_size=0), "batch_size", ValueError),
    ("evaluate", dict(data=torch.zeros(3, 784)), "data", TypeError),
    ("calibrate_init", dict(rate=0), "rate", ValueError),
    ("calibrate_init", dict(output_rate=float("nan")), "output_rate", ValueError),
    ("calibrate_init", dict(images=torch.zeros(0, 784)), "images", ValueError),
    ("calibrate_init", dict(T=1.5), "T", TypeError),
    ("train_sweep", dict(configs=[1, 2]), "configs", ValueError),
    ("train_sweep", dict(processes=0), "processes", ValueError),
    ("train_sweep", dict(threads=-2), "threads", ValueError),
    ("load_dataset", dict(train="yes"), "train", TypeError),
    ("make_executor", dict(kind="kubernetes"), "kind", ValueError),
    ("make_executor", dict(partition=3), "partition", TypeError),
    ("make_executor", dict(timeout_min=0), "timeout_min", ValueError),
    ("make_executor", dict(gpus=0), "gpus", ValueError),
    ("make_executor", dict(cpus_per_task=1.5), "cpus_per_task", TypeError),
]


@pytest.mark.parametrize("fn,kw,param,error", BAD_ARGUMENTS, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_argument_names_itself(fn, kw, param, error):
    """Misuse of a public argument ends in a ValueError or TypeError naming it, before any work."""
    net = mt.build_net("784-10", (784,), 10)
    data = md.Dataset("mnist", "mnist", torch.zeros(4, 784), torch.zeros(4, dtype=torch.long))
    calls = {
        "build_net": lambda **k: mt.build_net(**{"spec": "784-10", "in_shape": (784,), "n_classes": 10, **k}),
        "train": lambda **k: mt.train(**{"spec": "784-10", "dataset": "mnist", "data": (data, data),
                                         "progress": False, **k}),
        "evaluate": lambda **k: mt.evaluate(**{"net": net, "data": data, "T": 2, **k}),
        "calibrate_init": lambda **k: mt.calibrate_init(**{"net": net, "images": torch.zeros(4, 784), **k}),
        "train_sweep": lambda **k: mr.train_sweep(**{"configs": [], **k}),
        "load_dataset": lambda **k: md.load_dataset(**{"name": "mnist", "train": False, **k}),
        "make_executor": lambda **k: mr.make_executor(**{"kind": "slurm", "partition": "gpu", **k}),
    }
    with pytest.raises(error, match=rf"\b{param}\b"):
        calls[fn](**kw)


@needs_mnist
def test_sweep_through_submitit_matches_pool_and_resumes_a_killed_job(tmp_path):
    """submitit's LocalExecutor (real subprocesses, the Slurm path's code) gives the local pool's
    rows bit for bit; a job killed after its first epoch's checkpoint resumes from it when the sweep
    is run again, and ends where an uninterrupted run ends."""
    import time
    pytest.importorskip("submitit")
    configs = [dict(lr=0.005), dict(lr=0.002)]
    common = dict(spec="784-800-10", dataset="mnist", epochs=2, subset=256, test_subset=256, threads=1)
    acc = lambda rows: [[h["test_accuracy"] for h in r["history"]] for r in rows]
    pooled = mr.train_sweep(configs, processes=2, **common)
    submitted = mr.train_sweep(configs, executor=mr.make_executor("submitit-local", folder=tmp_path / "jobs"), **common)
    assert acc(submitted) == acc(pooled)
    assert [r["history"][-1]["loss"] for r in submitted] == [r["history"][-1]["loss"] for r in pooled]

    executor = mr.make_executor("submitit-local", folder=tmp_path / "jobs2")
    job = dict(common, **configs[0], subset=2048, epochs=8, progress=False, checkpoint=str(tmp_path / "run.pt"),
               resume=True)  # epochs enough that the cancel lands mid-run even on a loaded machine
    # cancel() sends SIGINT; a shell's background job (`make test &`) runs with SIGINT ignored, which a
    # job started from here would inherit and so run on: start it with the default disposition
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        running = executor.submit(mr._SweepJob(), job)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 300
    while not os.path.exists(job["checkpoint"]) and time.time() < deadline:
        time.sleep(0.1)
    running.cancel()
    while not running.done() and time.time() < deadline:
        time.sleep(0.1)
    killed_after = len(rt.load_checkpoint(job["checkpoint"])["history"])
    resumed = executor.submit(mr._SweepJob(), job).result()
    whole = mr.train_sweep([configs[0]], processes=1, **dict(common, subset=2048, epochs=8))
    assert 1 <= killed_after < 8
    assert acc([resumed]) == acc(whole)
    assert resumed["history"][-1]["loss"] == whole[0]["history"][-1]["loss"]


def test_slurm_executor_submits_one_job_per_run_with_the_asked_resources(tmp_path, monkeypatch):
    """The Slurm path up to submission, with a fake sbatch on PATH that records the job script (and an
    srun, which submitit looks for):
    the partition, time limit, GPU type and requeue signal are in it."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{tmp_path}/job_$$.sh"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists; it runs on the nodes
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = mr.make_executor("slurm", folder=tmp_path / "jobs", partition="gpu-test", timeout_min=90,
                                gpu_type="h100", cpus_per_task=6)
    job = executor.submit(mr._SweepJob(), dict(spec="784-800-10", dataset="mnist", threads=1))
    assert job.job_id == "4242"
    (script,) = tmp_path.glob("job_*.sh")
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu-test", "#SBATCH --time=90", "#SBATCH --gres=gpu:h100:1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --signal=USR2@120"):
        assert line in text, line
    with pytest.raises(TypeError, match="partition"):
        mr.make_executor("slurm")


def test_result_row_of_a_run_without_history():
    """A converted network has no training epochs: its row has the accuracy and None for the
    per-epoch fields instead of failing."""
    row = mr.result_row("converted, T=4", [dict(config=dict(spec="784-10", T=4, epochs=2, seed=0),
                                                dataset_variant="mnist", test_accuracy=91.0)])
    assert row["accuracy"] == [91.0] and row["accuracy_mean"] == 91.0
    assert row["best_epoch"] == [None] and row["history"] == [None] and row["silent_outputs"] == [None]


def test_record_gives_each_layers_current_potential_and_spikes():
    """SpikingNet.record: per neuron layer, x, h and s of one forward pass, consistent with eqs. 1, 4, 5
    (h[0] = x[0]; s = clamp(floor(h/V), 0, S); h[1] = decay*(h[0] - s[0] V) + x[1]), the last
    layer's s being the forward's output."""
    torch.manual_seed(0)
    net = mt.build_net("8C5-P2-32", (1, 28, 28), 10, init_gain=3.0)
    images = torch.randn(5, 1, 28, 28)
    records = net.record(images, T=2)
    assert len(records) == 3 and [tuple(r["s"].shape) for r in records] == [(2, 5, 8, 24, 24), (2, 5, 32), (2, 5, 10)]
    torch.testing.assert_close(records[-1]["s"], net(images, 2))
    for r in records:
        torch.testing.assert_close(r["h"][0], r["x"][0])
        torch.testing.assert_close(r["s"], torch.clamp(torch.floor(r["h"] / 10.0), 0, 15))
        torch.testing.assert_close(r["h"][1], 0.9 * (r["h"][0] - 10.0 * r["s"][0]) + r["x"][1])
    assert any(r["s"].sum() > 0 for r in records)


@needs_mnist
@pytest.mark.parametrize("s_max, hidden", [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (15, 1.0)])
def test_calibration_rate_is_capped_at_a_quarter_of_s_max(s_max, hidden, mnist_test64):
    """With S_max = 1 a target of 1 spike per step would make every neuron fire at every step;
    calibrate_init caps each layer's rate at S_max/4 (the output layer's 0.25 is already below)."""
    torch.manual_seed(0)
    net = mt.build_net("784-800-10", (1, 28, 28), 10, s_max=s_max)
    mt.calibrate_init(net, mnist_test64.x[:32], rate=1.0, output_rate=0.25)
    with torch.no_grad():
        net(mnist_test64.x[:32], 2)
    rates = [n.firing_rate.item() for n in net.neurons()]
    assert rates[0] == pytest.approx(hidden, rel=0.05)
    assert rates[1] == pytest.approx(0.25, rel=0.05 if s_max > 1 else 0.2)


def test_sweep_on_one_gpu_runs_in_this_process(monkeypatch):
    """train_sweep queues CUDA runs in-process (one GPU, no workers), whatever `processes` says."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, as far as the sweep can tell
    seen = []
    monkeypatch.setattr(mt, "train", lambda **job: seen.append(os.getpid()) or dict(config=job))
    mr.train_sweep([dict(seed=0), dict(seed=1)], processes=2, device="cuda", spec="784-10", dataset="mnist")
    assert seen == [os.getpid()] * 2


def test_full_profile_refuses_a_cpu_unless_asked_for(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="DEVICE='cpu'"):
        rt.pick_device("auto", "full")
    assert rt.pick_device("cpu", "full") == "cpu" and rt.pick_device("auto", "quick") == "cpu"


def test_cuda_policy_is_applied_and_every_result_names_its_setup(tmp_path):
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    try:
        policy = rt.configure_cuda(tf32=False, cudnn_deterministic=True)
        assert policy == dict(rt.CUDA_POLICY, tf32=False, cudnn_deterministic=True)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark == rt.CUDA_POLICY["cudnn_benchmark"]
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = flags
    path = mr.write_results("x", "test", [], 1.0, tmp_path, rt.device_name("cpu"))
    doc = __import__("json").loads(path.read_text())
    assert doc["device_setup"] == rt.device_setup("cpu") and doc["device_setup"]["device"].startswith("cpu")



def test_provenance_takes_the_commit_named_by_the_sender(monkeypatch):
    """On a borrowed machine the tree's git metadata can lag (a GPU copy read the session's first
    commit): $MTSNN_COMMIT, set where the run is sent from, wins."""
    monkeypatch.setenv("MTSNN_COMMIT", "a" * 40 + "-dirty")
    p = rt.provenance()
    assert (p["commit"], p["dirty"], p["commit_from"]) == ("a" * 40, True, "MTSNN_COMMIT")
    monkeypatch.setenv("MTSNN_COMMIT", "b" * 40)
    assert (rt.provenance()["commit"], rt.provenance()["dirty"]) == ("b" * 40, False)
    monkeypatch.delenv("MTSNN_COMMIT")
    assert "commit_from" not in rt.provenance()


def test_the_jpeg_copy_warning_comes_once_per_process(monkeypatch):
    """A notebook loads CIFAR-10 many times and its sweep's workers load it again: one warning. The
    workers are quiet (quiet_variant_warnings); train_sweep's own process warns for them."""
    monkeypatch.setattr(md, "_warned", set())
    with pytest.warns(UserWarning, match="JPEG-75") as caught:
        md.warn_variant("cifar10-jpeg75")
        md.warn_variant("cifar10-jpeg75")
        md.warn_variant("mnist")
    assert len(caught) == 1
    monkeypatch.setattr(md, "_warned", set())
    md.quiet_variant_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md.warn_variant("cifar10-jpeg75")
