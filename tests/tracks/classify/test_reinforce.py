"""Dataset reinforcement (Faghri et al., ICCV 2023): ``hundred data reinforce`` stores, per
training image, augmentation parameters and the teacher ensemble's top-k labels of each view;
``classify/dr`` replays them without a teacher. The defining claim: the student trains on the
very tensor the teachers labelled, with the teachers' stored labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hundred.tracks.classify.teacher as teacher_module
from hundred.cli import main
from hundred.config import build_config
from hundred.data.pack import load_packed
from hundred.errors import HundredError
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.reinforce import (ReinforcedLoader, densify, open_reinforcement,
                                               replay_choices)

SAMPLES, TOPK = 3, 2


def tiny(root: Path, data: str | Path, *extra: str, classes: int = 4):
    options = [f"data.source={data}"] if data else [
        f"data.options={{classes: {classes}, train_per_class: 8, val_per_class: 4, res: 8}}"]
    return build_config(overrides=[
        "track=classify", "model.name=convnet_d3", "train.device=cpu", "quiet=true",
        "data.batch_size=16", "train.epochs=1", f"root={root}", *options, *extra])


class Recorder(nn.Module):
    """A teacher that records every input it sees and the logits it returns."""

    def __init__(self, teacher: nn.Module, calls: list) -> None:
        super().__init__()
        self.teacher, self.calls = teacher, calls

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.teacher(images)
        self.calls.append((self, images.clone(), logits.clone()))
        return logits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A packed 4-class set, two teachers trained on it, and its reinforcement, made through
    the CLI while recording what each teacher saw."""
    root = tmp_path_factory.mktemp("dr")
    packed = root / "synth"
    assert main(["data", "pack", "synth100", "-o", "classes=4", "-o", "train_per_class=8",
                 "-o", "val_per_class=4", "-o", "res=8", "--res", "8", "--out", str(packed),
                 "-q"]) == 0
    teachers = [TRACK.run(tiny(root / "runs", packed, "method=erm", f"name=t{seed}",
                               f"seed={seed}"))["run_dir"] for seed in (0, 1)]
    calls: list = []
    original = teacher_module.load_teacher
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_module, "load_teacher",
                      lambda *args: Recorder(original(*args), calls))
        assert main(["data", "reinforce", str(packed), "--teacher", ",".join(teachers),
                     "--samples", str(SAMPLES), "--topk", str(TOPK), "--device", "cpu",
                     "--batch-size", "20", "-q"]) == 0
    return {"root": root, "packed": packed, "reinforced": root / "synth-reinforced",
            "teachers": teachers, "calls": calls}


def seen_by_teachers(world) -> tuple[torch.Tensor, torch.Tensor]:
    """What the teachers saw, ``(N, NS, 3, H, W)``, and the ensemble's mean softmax
    ``(N, NS, C)``, from the recorded calls (batches of 20 images, then samples, then
    teachers, in that order)."""
    calls = world["calls"]
    views, ensemble = {}, {}
    per_batch = SAMPLES * 2
    for position in range(0, len(calls), 2):
        (first, images, logits_a), (second, same, logits_b) = calls[position:position + 2]
        assert first is not second and torch.equal(images, same)  # one view, both teachers
        batch, sample = divmod(position // 2, SAMPLES)
        assert position // per_batch == batch
        views[batch, sample] = images
        ensemble[batch, sample] = (F.softmax(logits_a, 1) + F.softmax(logits_b, 1)) / 2
    batches = max(b for b, _ in views) + 1
    stack = lambda d: torch.cat([torch.stack([d[b, s] for s in range(SAMPLES)], 1)  # noqa: E731
                                 for b in range(batches)])
    return stack(views), stack(ensemble)


def test_stored_labels_are_the_ensembles_top_k_of_the_view_it_saw(world):
    reinforcement = open_reinforcement(world["reinforced"])
    views, ensemble = seen_by_teachers(world)
    assert views.shape[:2] == (32, SAMPLES)
    top = ensemble.topk(TOPK, dim=2)
    assert torch.equal(torch.from_numpy(reinforcement.classes.astype(np.int64)), top.indices)
    assert torch.allclose(torch.from_numpy(np.asarray(reinforcement.probs)), top.values,
                          atol=1e-6)
    # the views differ between samples (the stored parameters are really drawn per view)
    assert not torch.equal(views[:, 0], views[:, 1])
    assert reinforcement.teachers == world["teachers"]


def test_training_replays_the_view_the_teachers_labelled_pixel_for_pixel(world, monkeypatch):
    """The defining test: the tensor the student trains on equals, element for element, the
    one the teachers saw in ``reinforce``, and its target is the densified stored label."""
    views, ensemble = seen_by_teachers(world)
    batches = []
    original = ReinforcedLoader._make_batch

    def recorded(self, images, labels, epoch, batch, generator):
        output = original(self, images, labels, epoch, batch, generator)
        chosen, replayed = replay_choices(self.seed, epoch, 32, SAMPLES,
                                          self.replay_probability)
        batches.append((self.batch_indices(epoch, batch), chosen, *output))
        return output

    monkeypatch.setattr(ReinforcedLoader, "_make_batch", recorded)
    TRACK.run(tiny(world["root"] / "runs", world["reinforced"], "method=dr", "name=replay",
                   "method_params.replay_probability=1.0", "train.epochs=2"))
    assert len(batches) == 4  # 32 images, batches of 16, 2 epochs
    used = set()
    for indices, chosen, images, targets in batches:
        for row, index in enumerate(indices):
            sample = chosen[index]
            used.add(int(sample))
            assert torch.equal(images[row], views[index, sample])
            top = ensemble[index, sample].topk(TOPK)
            expected = torch.full((4,), float(1 - top.values.sum()) / (4 - TOPK))
            expected[top.indices] = top.values
            assert torch.allclose(targets[row], expected / expected.sum(), atol=1e-6)
    assert used == set(range(SAMPLES))  # each epoch draws among all stored views


def test_a_dr_run_never_runs_a_teacher(world, monkeypatch):
    def no_teacher(*args):
        raise AssertionError("dr must not load or run a teacher")

    monkeypatch.setattr(teacher_module, "load_teacher", no_teacher)
    calls_before = len(world["calls"])
    summary = TRACK.run(tiny(world["root"] / "runs", world["reinforced"], "method=dr",
                             "name=e2e", "train.epochs=2"))
    assert len(world["calls"]) == calls_before  # the recorded teachers never ran again
    assert summary["method"] == "dr" and summary["teacher"].startswith("stored: convnet_d3")
    assert 0 <= summary["val_top1"] <= 100 and np.isfinite(summary["val_loss"])


def test_replay_choices_resume_and_shards_are_exact(world):
    reinforcement = open_reinforcement(world["reinforced"])
    split = load_packed(world["packed"]).arrays("train")

    def loader(**options):
        return ReinforcedLoader(split, batch_size=4, shuffle=True, drop_last=True, seed=3,
                                augment="crop-flip", reinforcement=reinforcement,
                                replay_probability=0.5, **options)

    whole = loader()
    whole.set_epoch(1)
    full = list(whole)
    peaks = torch.cat([targets for _, targets in full]).max(dim=1).values
    assert (peaks < 1).any() and (peaks == 1).any()  # stored soft labels and hard ones
    resumed = loader()
    resumed.load_state_dict({**whole.state_dict(), "epoch": 1, "batch": 5})
    for (images, targets), (again, again_targets) in zip(full[5:], resumed, strict=True):
        assert torch.equal(images, again) and torch.equal(targets, again_targets)
    # under DDP a rank replays the same stored view of an image as a single process does
    chosen, replayed = replay_choices(3, 1, 32, SAMPLES, 0.5)
    shard = loader(rank=1, world_size=2)
    shard.set_epoch(1)
    single = {int(i): (img, t) for b, (views, targets) in enumerate(full)
              for i, img, t in zip(whole.batch_indices(1, b), views, targets)}
    for b, (views, targets) in enumerate(shard):
        for i, img, t in zip(shard.batch_indices(1, b), views, targets):
            if replayed[i] and int(i) in single:
                assert torch.equal(img, single[int(i)][0]) and torch.equal(t, single[int(i)][1])
    assert not np.array_equal(replay_choices(3, 1, 32, SAMPLES, 0.5)[0],
                              replay_choices(3, 2, 32, SAMPLES, 0.5)[0])


def test_densify_spreads_the_left_over_mass_over_the_other_classes():
    probs = torch.tensor([[0.5, 0.3], [0.7, 0.300001]])
    classes = torch.tensor([[2, 0], [1, 3]])
    dense = densify(probs, classes, 5)
    assert torch.allclose(dense[0], torch.tensor([0.3, 0.2 / 3, 0.5, 0.2 / 3, 0.2 / 3]))
    assert torch.allclose(dense.sum(1), torch.ones(2)) and (dense[1, [0, 2, 4]] == 0).all()


def copy_pair(world, where: Path) -> Path:
    """A copy of the pack and its reinforcement, side by side (to damage freely)."""
    shutil.copytree(world["packed"], where / "synth")
    shutil.copytree(world["reinforced"], where / "synth-reinforced")
    return where / "synth-reinforced"


def test_a_tampered_or_truncated_reinforcement_is_refused(world, tmp_path, capsys):
    assert main(["data", "verify", str(world["reinforced"])]) == 0
    assert main(["data", "info", str(world["reinforced"])]) == 0
    assert "hundred-reinforced" in capsys.readouterr().out
    tampered = copy_pair(world, tmp_path)
    data = bytearray((tampered / "topk_probs.npy").read_bytes())
    data[-3] ^= 0xFF
    (tampered / "topk_probs.npy").write_bytes(bytes(data))
    with pytest.raises(HundredError, match="topk_probs.npy: sha256 mismatch"):
        open_reinforcement(tampered)
    runs = tmp_path / "runs"
    with pytest.raises(HundredError, match="sha256 mismatch"):
        TRACK.run(tiny(runs, tampered, "method=dr", "name=x"))
    assert not runs.exists()
    with pytest.raises(SystemExit):
        main(["data", "verify", str(tampered)])
    assert "FAIL topk_probs.npy: sha256 mismatch" in capsys.readouterr().err

    truncated = copy_pair(world, tmp_path / "cut")
    file = truncated / "aug0_x0.npy"
    file.write_bytes(file.read_bytes()[:-8])
    with pytest.raises(HundredError, match=r"aug0_x0.npy: \d+ bytes, meta.json says"):
        open_reinforcement(truncated)
    shutil.rmtree(truncated.parent / "synth")
    with pytest.raises(HundredError, match="missing or not packed data"):
        open_reinforcement(truncated)


def test_dr_refuses_data_it_was_not_made_for(world, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(HundredError, match="trains on a reinforced dataset"):
        TRACK.run(tiny(runs, world["packed"], "method=dr", "name=x"))
    with pytest.raises(HundredError, match="fingerprint"):
        TRACK.run(tiny(runs, world["reinforced"], "method=dr", "name=x", "data.classes=0-2"))
    with pytest.raises(HundredError, match="image size 16"):
        TRACK.run(tiny(runs, world["reinforced"], "method=dr", "name=x", "data.image_size=16"))
    assert not runs.exists()


def test_a_bad_teacher_or_argument_writes_nothing(world, tmp_path, capsys):
    wrong = TRACK.run(tiny(tmp_path / "runs", "", "method=erm", "name=six", classes=6))
    out = tmp_path / "out"

    def refused(*arguments: str, match: str) -> None:
        assert main(["data", "reinforce", str(world["packed"]), "--out", str(out),
                     "--device", "cpu", "-q", *arguments]) == 2
        assert match in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob("out.partial-*"))

    good = world["teachers"][0]
    refused("--teacher", str(tmp_path / "nowhere"), "--samples", "2", match="does not exist")
    refused("--teacher", f"{good},{wrong['run_dir']}", "--samples", "2",
            match="has 4 classes")
    refused("--teacher", good, "--samples", "0", match="--samples must be")
    refused("--teacher", good, "--samples", "2", "--topk", "5", match="more than the 4")
    refused("--teacher", good, "--samples", "2", "--augment", "rrc-flip-jitter",
            match="once per batch")
    refused("--teacher", good, "--samples", "2", "--out", str(world["packed"]),
            match="already exists")
