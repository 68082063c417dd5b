"""The datasets: the whole of MNIST, FashionMNIST or CIFAR-10 on the device as one tensor, augmented
there per batch.

`load_dataset` reads torchvision's layout under `data_root()` ($MTSNN_DATA, else ./data), checks
every file against its published checksum (`DatasetError` names what is missing or wrong), and for
CIFAR-10 falls back to the lossy JPEG-75 copy, decoded once per machine into a checked cache
($MTSNN_CACHE, else ~/.cache/mtsnn). A `Dataset` draws and applies its random crops and flips on the
device. `DATASETS` names the three, `_IN_SHAPES` their image shapes. Of the other mtsnn_* modules it
imports only `mtsnn_base`.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mtsnn_base import _atomic_save, _check_device, _expect

# MD5 of the uncompressed IDX files (torchvision's layout <root>/<Name>/raw/).
_IDX_MD5 = {
    "mnist": ("MNIST", {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}),
    "fmnist": ("FashionMNIST", {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}),
}
_CIFAR_JPEG_SHA256 = {
    "train_1.tar": "50af13e8856f8717906cd5c5f1cb10eac1ced76ccdf1035d70090e6bbdcb2529",
    "train_2.tar": "638c743f0cf7b4638ee21e8120025f1ccb5f750891e20912db6fd078816e8ed2",
    "test.tar": "e48adedee3b04d8030be234342ac61b1d57961c070be4e10380b98c98b8ede40",
}
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean/std of the training images in [0, 1]; crop padding is zero intensity.
_STATS = {"mnist": ((0.1307,), (0.3081,)), "fmnist": ((0.2860,), (0.3530,)),
          "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}
_CROP_PAD = {"mnist": 2, "fmnist": 2, "cifar10": 4}
DATASETS = tuple(_STATS)


class DatasetError(RuntimeError):
    """A dataset is missing or does not match its published checksum."""


@dataclass
class Dataset:
    """Images as one normalised float tensor [N, C, H, W] on the device, labels [N] (int64)."""
    name: str
    variant: str  # "mnist", "fmnist", "cifar10" or "cifar10-jpeg75" (the lossy copy)
    x: torch.Tensor
    y: torch.Tensor
    mean: tuple = ()
    std: tuple = ()
    background: torch.Tensor | None = field(default=None, repr=False)  # the padding's value, on the device

    def __len__(self):
        return len(self.y)

    def split(self, n):
        """(the first n images, the rest), as two Datasets of the same kind."""
        return (replace(self, x=self.x[:n], y=self.y[:n]), replace(self, x=self.x[n:], y=self.y[n:]))

    def fingerprint(self):
        """Variant, size and a hash of the labels and pixels: tells two datasets apart for resume."""
        digest = hashlib.sha256(self.y.cpu().numpy().tobytes())
        digest.update(self.x[:, :, ::4, ::4].float().cpu().numpy().tobytes())  # a pixel sample suffices
        return f"{self.variant}:{len(self)}:{digest.hexdigest()[:16]}"

    def draw_augmentation(self, batch_sizes, generator):
        """The random draws of `augment` for consecutive batches of the given sizes, batch by batch
        from `generator` (crop offsets, then CIFAR-10's flips), moved to the device in one copy:
        `train_epoch` draws a whole epoch at once, so no step waits on a host-to-device copy.
        Returns an int64 tensor [3, sum(batch_sizes)]: row offset, column offset, flip (0/1)."""
        pad, draws = _CROP_PAD[self.name], []
        for B in batch_sizes:
            offsets = torch.randint(0, 2 * pad + 1, (2, B), generator=generator)
            flip = (torch.rand(B, generator=generator) < 0.5 if self.name == "cifar10"
                    else torch.zeros(B, dtype=torch.bool))
            draws.append(torch.cat([offsets, flip.long()[None]]))
        return torch.cat(draws, 1).to(self.x.device)

    def augment(self, xb, draws):
        """Random crop with zero-intensity padding (all datasets) and horizontal flip (CIFAR-10),
        one draw per image (a [3, B] slice of `draw_augmentation`), as batched tensor operations."""
        pad, (B, C, H, W) = _CROP_PAD[self.name], xb.shape
        if self.background is None or self.background.device != xb.device:  # made once, not per step
            self.background = (-torch.tensor(self.mean) / torch.tensor(self.std)).to(xb).view(1, C, 1, 1)
        canvas = self.background.expand(B, C, H + 2 * pad, W + 2 * pad).clone()
        canvas[:, :, pad:pad + H, pad:pad + W] = xb
        dy, dx, flip = draws
        rows = (dy[:, None] + torch.arange(H, device=xb.device))[:, None, :, None].expand(B, C, H, W + 2 * pad)
        canvas = canvas.gather(2, rows)
        cols = (dx[:, None] + torch.arange(W, device=xb.device))[:, None, None, :].expand(B, C, H, W)
        out = canvas.gather(3, cols)
        return torch.where(flip.bool()[:, None, None, None], out.flip(3), out) if self.name == "cifar10" else out


def data_root(root=None):
    """`root`, else $MTSNN_DATA, else ./data."""
    return Path(root or os.environ.get("MTSNN_DATA") or "data")


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _try_download(name, root):
    """Let torchvision fetch the canonical files; returns False when the network does not allow."""
    import torchvision.datasets as tvd
    cls = {"mnist": tvd.MNIST, "fmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
        return True
    except Exception as exc:  # no network, a refused host, a partial file
        warnings.warn(f"could not download {name} with torchvision: {exc}")
        return False


def _missing_error(name, folder, files, how):
    return DatasetError(
        f"{name}: looked in {Path(folder).resolve()} and did not find {', '.join(files)}. "
        f"{how} Set MTSNN_DATA (or pass root=) to the folder that holds it.")


def _read_idx(path):
    raw = path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


def _load_idx(name, train, root):
    folder_name, md5s = _IDX_MD5[name]
    raw = root / folder_name / "raw"
    prefix = "train" if train else "t10k"
    files = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if not all((raw / f).exists() for f in files) and not _try_download(name, root):
        raise _missing_error(name, raw, files, "Download the IDX files (torchvision's "
                             f"datasets.{'MNIST' if name == 'mnist' else 'FashionMNIST'}(root, download=True) does it) "
                             "or copy them from a machine that has them.")
    for f in files:
        if _md5(raw / f) != md5s[f]:
            raise DatasetError(f"{name}: {raw / f} does not match its published MD5 {md5s[f]}; "
                               "the file is corrupt or not the canonical one. Delete it and download again.")
    return _read_idx(raw / files[0]).unsqueeze(1), _read_idx(raw / files[1]).long()


def _cache_dir():
    return Path(os.environ.get("MTSNN_CACHE") or Path.home() / ".cache" / "mtsnn")


def _load_cifar10(train, root):
    """Canonical cifar-10-batches-py when present (or downloadable), else the JPEG-75 copy."""
    import torchvision.datasets as tvd
    canonical = root / "cifar-10-batches-py"
    jpeg = root / "cifar-10-jpeg75"
    if canonical.exists() or (not jpeg.exists() and _try_download("cifar10", root)):
        ds = tvd.CIFAR10(str(root), train=train, download=False)  # checks the published MD5s
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), "cifar10"
    shards = ["train_1.tar", "train_2.tar"] if train else ["test.tar"]
    if not all((jpeg / s).exists() for s in shards):
        raise _missing_error("cifar10", root, ["cifar-10-batches-py/"] + [f"cifar-10-jpeg75/{s}" for s in shards],
                             "With internet, torchvision's datasets.CIFAR10(root, download=True) fetches the canonical "
                             "files.")
    warn_variant("cifar10-jpeg75", stacklevel=3)
    for s in shards:
        if _sha256(jpeg / s) != _CIFAR_JPEG_SHA256[s]:
            raise DatasetError(f"cifar10: {jpeg / s} does not match its sha256 {_CIFAR_JPEG_SHA256[s]} (SHA256SUMS)")
    cache = _cache_dir() / f"cifar10-jpeg75-{'train' if train else 'test'}-{_CIFAR_JPEG_SHA256[shards[0]][:12]}.pt"
    x, y = _cached_decode([jpeg / s for s in shards], cache)
    if not train:  # the copy's test images are sorted by class: a fixed shuffle lets a test subset hold every class
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
    return x, y, "cifar10-jpeg75"


_VARIANT_WARNINGS = {"cifar10-jpeg75": "CIFAR-10: using the lossy JPEG-75 copy (variant 'cifar10-jpeg75'); "
                                      "accuracy may differ slightly from the canonical dataset."}
_warned = set()  # the variants this process has warned about: once each (quiet_variant_warnings: none)


def warn_variant(variant, stacklevel=2):
    """Warn that the data are a variant of the canonical dataset (the JPEG-75 copy of CIFAR-10), once
    per process: a notebook that loads it many times shows it once. Other variants: nothing."""
    if variant in _VARIANT_WARNINGS and variant not in _warned:
        _warned.add(variant)
        warnings.warn(_VARIANT_WARNINGS[variant], stacklevel=stacklevel + 1)


def quiet_variant_warnings():
    """No variant warnings in this process: a sweep's worker processes, whose parent warns for them
    from the results' `dataset_variant` (`mtsnn_runs.train_sweep`)."""
    _warned.update(_VARIANT_WARNINGS)


def _cached_decode(shards, cache):
    """(images, labels) of the shards, decoded once per machine into `cache`: under a file lock (two
    processes never decode at once), written atomically, checked against its sha256 on every load
    and decoded again when it does not match."""
    import fcntl
    cache.parent.mkdir(parents=True, exist_ok=True)
    digest = cache.with_name(cache.name + ".sha256")
    with open(cache.with_name(cache.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.exists() and digest.exists() and _sha256(cache) == digest.read_text().strip():
            return torch.load(cache)
        if cache.exists():
            warnings.warn(f"the decoded CIFAR-10 cache {cache} does not match its checksum: decoding again",
                          stacklevel=3)
        data = _decode_jpeg_shards(shards)
        _atomic_save(data, cache)
        digest.write_text(_sha256(cache) + "\n")
        return data


def _decode_jpeg_shards(shards):
    """Decode the JPEG-75 tar shards into one uint8 image tensor and the labels (class = folder name)."""
    from torchvision.io import decode_jpeg
    images, labels = [], []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders (a warning per image); they still decode the copy
        # exactly as the results so far were made, so they stay, without the 60 000 warnings
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        for s in shards:
            with tarfile.open(s) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".jpg"):
                        data = torch.frombuffer(bytearray(tar.extractfile(member).read()), dtype=torch.uint8)
                        images.append(decode_jpeg(data))
                        labels.append(_CIFAR_CLASSES.index(member.name.split("/")[-2]))
    return torch.stack(images), torch.tensor(labels)


def load_dataset(name, train, root=None, device="cpu", subset=None):
    """Load "mnist", "fmnist" or "cifar10" as a `Dataset` on `device`, normalised per channel.

    Files are read from `root` (default $MTSNN_DATA, then ./data) in torchvision's layout
    (MNIST/raw, FashionMNIST/raw, cifar-10-batches-py) and checked against their published
    checksums. CIFAR-10 falls back to the lossy `cifar-10-jpeg75/` copy (variant
    "cifar10-jpeg75", with a warning). A missing dataset is downloaded by torchvision where the
    network allows; otherwise a DatasetError names the folder searched and the files expected.
    `subset=n` keeps the first n images (the files' own order; the JPEG copy's test set, sorted by
    class there, is put in a fixed shuffled order first).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    _expect("train", train, bool, expected="True (training set) or False (test set)")
    device = _check_device(device)
    root = data_root(root)
    if name == "cifar10":
        x, y, variant = _load_cifar10(train, root)
    else:
        (x, y), variant = _load_idx(name, train, root), name
    if subset is not None:
        if not (isinstance(subset, int) and subset >= 1):
            raise ValueError(f"subset must be a positive integer, got {subset!r}")
        x, y = x[:subset], y[:subset]
    mean, std = _STATS[name]
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = ((x.to(device).float() / 255.0) - m.to(device)) / s.to(device)
    return Dataset(name, variant, x, y.to(device), mean, std)


_IN_SHAPES = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "cifar10": (3, 32, 32)}
