"""tools/long_runs.py: a run stopped on one machine goes on from the committed checkpoints/ on another."""
import importlib.util
from pathlib import Path

import pytest
import torch

import mtsnn_core as mt
import mtsnn_data as md
import mtsnn_tables as tb

ROOT = Path(__file__).resolve().parent.parent
needs_mnist = pytest.mark.skipif(not (md.data_root() / "MNIST" / "raw").exists(),
                                 reason=f"MNIST not under {md.data_root()}")
_spec = importlib.util.spec_from_file_location("long_runs", ROOT / "tools" / "long_runs.py")
long_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(long_runs)


def _without_times(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@needs_mnist
def test_a_stashed_run_resumes_elsewhere_as_if_never_stopped(tmp_path, monkeypatch):
    data = md.load_dataset("mnist", True, subset=512), md.load_dataset("mnist", False, subset=256)
    kw = dict(epochs=2, data=data, progress=False, resume=True)
    whole = mt.train("784-800-10", "mnist", checkpoint=tmp_path / "whole" / "run.pt", **kw)

    here, stash, there = tmp_path / "here", tmp_path / "stash", tmp_path / "there"
    real, calls = mt.evaluate, []

    def stop_in_epoch_2(*args, **kwargs):  # the machine goes away during epoch 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mt, "evaluate", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        mt.train("784-800-10", "mnist", checkpoint=here / "run.pt", **kw)
    monkeypatch.setattr(mt, "evaluate", real)
    assert [p.name for p in long_runs.stash(here, stash)] == ["run.pt"]
    assert "optimizer" in torch.load(stash / "run.pt", weights_only=False)  # unfinished: kept whole
    assert long_runs.stash(here, stash) == []  # nothing newer to stash

    long_runs.restore(there, stash)
    resumed = mt.train("784-800-10", "mnist", checkpoint=there / "run.pt", **kw)
    assert _without_times(resumed["history"]) == _without_times(whole["history"])
    assert all(torch.equal(a, b) for a, b in zip(resumed["model"].state_dict().values(),
                                                  whole["model"].state_dict().values()))

    long_runs.stash(there, stash)  # finished: its weights only, read back as the finished run
    assert "optimizer" not in torch.load(stash / "run.pt", weights_only=False)
    again = mt.train("784-800-10", "mnist", checkpoint=stash / "run.pt", **kw)
    assert again["history"] == resumed["history"]


needs_cifar = pytest.mark.skipif(not (md.data_root() / "cifar-10-jpeg75").exists() and
                                 not (md.data_root() / "cifar-10-batches-py").exists(),
                                 reason=f"CIFAR-10 not under {md.data_root()}")


@needs_cifar
def test_plateau_runs_end_to_end(tmp_path):
    """The plateau command on 600 images: each run stops at the plateau (held-out accuracy), the twin
    trains as many epochs, on the images the network trains on, under the names the notebooks use
    (a rerun trains nothing); the trained network reads at T = 1-4 and its converted twin at T = 1, 2."""
    tiny = dict(spec="8C3-P2-16C3-P2-32", subset=600, test_subset=200, epochs=5, validation=100,
                plateau=dict(min_epochs=2, window=0.5, min_gain=100.0))
    done = long_runs.plateau(["30_cifar10_cnn", "43_time_steps"], tmp_path, 1, **tiny)
    (net_results, twin), (sweep, _) = done["30_cifar10_cnn"], done["43_time_steps"]
    assert [len(r["history"]) for r in net_results + sweep] == [2] * 4  # 30's seed 0; 43's T = 1, 3, 5
    assert all("val_accuracy" in h for h in net_results[0]["history"]) and net_results[0]["config"]["validation"] == 100
    s = dict(tb.settings("30_cifar10_cnn", "plateau"), **tiny)
    train_ds, test_ds = md.load_dataset("cifar10", True, subset=600), md.load_dataset("cifar10", False, subset=200)
    ann, accuracy, history = tb.relu_twin_model(s, train_ds, test_ds, str(tmp_path), 2)
    assert accuracy == twin and len(history) == 2  # the checkpoint the command wrote: read back, finished
    again = tb.train_seeds(s, "cpu", checkpoint_dir=str(tmp_path), processes=1)
    assert again[0]["history"] == net_results[0]["history"]  # resumed: nothing trained again
    readings = tb.trained_readings(again[0]["model"], ann, s, train_ds, test_ds)
    assert set(readings["accuracy_at_T"]) == {1, 2, 3, 4} and set(readings["converted_twin"]["accuracy"]) == {1, 2}
    assert readings["accuracy_at_T"][2] == net_results[0]["test_accuracy"]
    rows = {r["run"]: r for r in long_runs.status(tmp_path)}  # where each run stands, from its checkpoint
    assert len(rows) == len(list(tmp_path.glob("*.pt"))) and all(r["epochs"].startswith("2") for r in rows.values())
    val = [h["val_accuracy"] for h in net_results[0]["history"]]
    assert any(r["best_held_out"] == max(val) and r["plateau_gain"] == round(val[1] - val[0], 2) for r in rows.values())


needs_bsnn_anns = pytest.mark.skipif(not (ROOT / "weights" / "cifar10_vgg7.pt").exists(), reason="no stored VGG-7")


@needs_cifar
@needs_bsnn_anns
def test_bsnn_conversions_choose_on_training_images_stash_and_resume_elsewhere(tmp_path):
    """`bsnn` on 8 test images of the stored VGG-7, two readings: K and the percentile are chosen on
    training images, every chunk is stored; stopped after its first chunk, stashed (gzip) and
    restored elsewhere, the same command finishes there with the same chunks as one run."""
    import mtsnn_convert as mc
    selection = dict(mc.SELECTION, K=(2, 4), percentile=(99.9,), calibration_images=16, images=8, factor=1, minimum=8)
    kw = dict(threads=1, images=8, nets=("vgg7",), readings=("plain IF", "bistable phase-coded"), selection=selection,
              caps={"plain IF": 12, "bistable phase-coded": 40}, batch_size=4, chunk_images=4)
    one = long_runs.bsnn(tmp_path / "one", **kw)
    net = one["nets"]["vgg7"]
    assert net["chosen"]["K"] in (2, 4) and [r["K"] for r in net["selection"]] == [2, 4]
    assert list(net["readings"]) == ["plain IF", "bistable phase-coded"]
    assert net["readings"]["bistable phase-coded"]["latency_floor"] == 7 * net["chosen"]["K"]

    here, stash, there = tmp_path / "here", tmp_path / "stash", tmp_path / "there"
    part = long_runs.bsnn(here, stop_at=0.0, **kw)  # the first chunk of the first candidate only
    assert part["nets"]["vgg7"] is None and len(list((here / "bsnn").rglob("chunk_*.pt"))) == 1
    assert len(long_runs.stash_chunks(here, stash)) == 1 and long_runs.stash_chunks(here, stash) == []
    long_runs.restore(there, stash)
    assert len(list((there / "bsnn").rglob("chunk_*.pt"))) == 1
    resumed = long_runs.bsnn(there, **kw)
    names = lambda d: sorted(str(p.relative_to(d)) for p in (d / "bsnn").rglob("chunk_*.pt"))
    assert names(there) == names(tmp_path / "one")
    strip = lambda s: {k: {r: {k2: v for k2, v in x.items() if k2 != "seconds"} for r, x in n["readings"].items()}
                       for k, n in s["nets"].items()}
    assert strip(resumed) == strip(one)
    stores = {str(p.parent.relative_to(there)) for p in (there / "bsnn").rglob("chunk_*.pt")}
    assert {r["run"]: r["epochs"] for r in long_runs.status(there)} == {
        s: f"{len(list((there / s).glob('chunk_*.pt')))} chunks" for s in stores}
    for a in (there / "bsnn").rglob("chunk_*.pt"):
        b = torch.load(tmp_path / "one" / a.relative_to(there), weights_only=False)
        assert torch.equal(torch.load(a, weights_only=False)["predictions"], b["predictions"])


@needs_mnist
def test_a_relu_twin_checkpoint_is_stashed_whole(tmp_path):
    """mc.train_ann's checkpoint records no epochs asked: stash keeps it whole (with its optimizer)."""
    import mtsnn_convert as mc
    data = (md.load_dataset("mnist", True, subset=64), md.load_dataset("mnist", False, subset=64))
    here, stash = tmp_path / "here", tmp_path / "stash"
    here.mkdir()
    mc.train_ann("784-16-10", *data, epochs=1, lr=1e-3, seed=0, checkpoint=str(here / "x_relu_twin_seed0.pt"))
    assert [p.name for p in long_runs.stash(here, stash)] == ["x_relu_twin_seed0.pt"]
    assert "optimizer" in torch.load(stash / "x_relu_twin_seed0.pt", weights_only=False)
