"""The fused neuron (mtsnn_fused.py, Triton) against the plain PyTorch one, on the CPU.

Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors with NumPy, so their
arithmetic is checked here on every case; tests/test_cuda.py checks them compiled, on a GPU.
The interpreter must be chosen before Triton is imported: each check runs in a fresh process.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import mtsnn_core as mt
import mtsnn_fused

CHECK = r"""
import itertools, json, torch, mtsnn_core as mt
torch.manual_seed(0)
rows = []
for surrogate, reset_grad, s_max, T in itertools.product(["f1", "f2", "f3"], ["paper", "bptt", "detach"],
                                                          [1, 15], [1, 2, 3]):
    base = torch.randn(4, 3, 5, 6) * 40 + 40
    layouts = {"repeated": (base, True), "contiguous": (torch.randn(T, 4, 3, 5, 6) * 40 + 40, False),
               "channels_last": ((torch.randn(T * 4, 3, 5, 6) * 40 + 40)
                                 .contiguous(memory_format=torch.channels_last).unflatten(0, (T, 4)), False)}
    for layout, (x, repeated) in layouts.items():
        neuron = mt.MultiThresholdLIF(s_max=s_max, surrogate=surrogate, reset_grad=reset_grad)
        grad_out = torch.randn(T, *x.shape[-4:])
        out = {}
        for mode in ("off", "all"):
            mt.FUSED_NEURON = mode
            leaf = x.clone().requires_grad_()
            inp = leaf.unsqueeze(0).expand(T, *leaf.shape) if repeated else leaf
            spikes = neuron(inp)
            (spikes * grad_out).sum().backward()
            out[mode] = (spikes.detach(), neuron.run(inp.detach())[1], leaf.grad, spikes.stride())
        (s0, h0, g0, st0), (s1, h1, g1, st1) = out["off"], out["all"]
        rows.append(dict(case=[surrogate, reset_grad, s_max, T, layout], spikes_differ=int((s0 != s1).sum()),
                         h_max_abs=float((h0 - h1).abs().max()), grad_rel=float((g0 - g1).norm() / g0.norm()),
                         same_layout=layout == "repeated" or st1 == st0))
print(json.dumps(rows))
"""


def _interpreted(script):
    env = dict(os.environ, TRITON_INTERPRET="1", MTSNN_FUSED="all")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fused_kernels_compute_the_reference_neuron():
    """Every surrogate x reset reading x S_max 1/15 x T 1..3 x the three input layouts the networks
    give a neuron (the first layer's input repeated over T, contiguous, channels_last): identical
    spikes, potentials and gradients to float rounding."""
    rows = _interpreted(CHECK)
    assert len(rows) == 3 * 3 * 2 * 3 * 3
    for row in rows:
        assert row["spikes_differ"] == 0, row
        assert row["h_max_abs"] < 1e-4, row  # potentials up to ~200 mV: a few ulp
        assert row["grad_rel"] < 1e-5, row
        assert row["same_layout"], row  # channels_last stays channels_last


def test_fused_path_is_chosen_only_where_it_applies():
    x = torch.randn(2, 4, 3, 5, 6)
    assert mtsnn_fused.supported(x)
    assert mtsnn_fused.supported(x[0].unsqueeze(0).expand(2, *x.shape[1:]))  # repeated over T
    assert mtsnn_fused.supported(x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 4)))
    assert not mtsnn_fused.supported(x[:, :, :, :, ::2])  # strided: the plain path takes it
    assert not mtsnn_fused.supported(x.transpose(0, 1))  # time not outermost
    assert not mtsnn_fused.supported(x.double())
    assert not mt._fused(x)  # default "cuda": CPU tensors stay on the plain path


def test_fused_setting_is_checked():
    done = subprocess.run([sys.executable, "-c", "import mtsnn_core"], env=dict(os.environ, MTSNN_FUSED="yes"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "MTSNN_FUSED must be cuda (the default), off or all" in done.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_neuron_runs_in_fp32_whatever_its_input(dtype):
    """Under autocast a layer hands the neuron bf16/fp16 currents; floor(h/V_th) needs fp32."""
    x = torch.randn(2, 8, 50) * 40
    neuron = mt.MultiThresholdLIF()
    low = neuron(x.to(dtype))
    assert low.dtype == torch.float32 and torch.equal(low, neuron(x.to(dtype).float()))
