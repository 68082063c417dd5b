"""The lowest module: what every other mtsnn_* module shares and imports from here.

`_expect`, `_positive_int`, `_positive`: a wrong argument raises TypeError or ValueError naming it
and what it takes. `_check_device`: a device name checked and returned as a torch.device.
`_atomic_save`: torch.save that a kill at any moment never leaves half written (checkpoints, the
decoded CIFAR-10 cache). Imports no other mtsnn_* module.
"""
from __future__ import annotations

import math
import os

import torch


def _expect(name, value, types, ok=lambda v: True, expected=""):
    """Raise TypeError (wrong type) or ValueError (wrong value) naming the argument and what it takes.
    `types`: a type or tuple of types; float means any finite real number. A bool is no number."""
    number = types is float
    if (isinstance(value, bool) and types is not bool) or not isinstance(value, (int, float) if number else types):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if (number and not math.isfinite(value)) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _positive_int(name, value):
    _expect(name, value, int, lambda v: v >= 1, "an integer >= 1")


def _positive(name, value):
    _expect(name, value, float, lambda v: v > 0, "a number > 0")


def _check_device(device):
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def _atomic_save(obj, path, keep_previous=False):
    """torch.save to a temporary file beside `path`, flushed to disk, then renamed over `path` (the
    file it replaces renamed to `path` + ".prev" first, if `keep_previous`)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)
