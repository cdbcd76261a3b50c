"""Backdoors of unlabelled pre-training data (BLTO, Sun et al. ICLR 2024; the fixed patch of
SSL-Backdoor): the trigger stays inside its L∞ budget, exactly round(fraction * N) target-class
rows are poisoned and nothing else changes, the key alone decides the trigger, the outer step
pulls triggered views toward the target, the attack success rate counts non-target images
only, and a poisoned pack -> ssl run -> ``hundred backdoor`` writes the numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hundred.config import build_config
from hundred.data.pack import load_packed, pack, verify
from hundred.errors import HundredError
from hundred.registry import get_track
from hundred.tracks.robust.backdoor import (BltoParams, attack_success_rate, backdoor_run,
                                            load_trigger, patch_pattern)
from hundred.tracks.robust.blto import (Surrogate, TriggerGenerator, apply_generator,
                                        outer_loss, train_blto, views)
from hundred.tracks.robust.poison import add_poison_command, poison_packed

CLASSES, TRAIN, VAL, RES = 4, 16, 8, 16
TINY = {"steps": 2, "inner_steps": 1, "batch_size": 16, "generator_width": 4,
        "surrogate": "resnet20", "surrogate_options": {"width": 4}, "proj_dim": 16,
        "pred_hidden_dim": 8}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "synth"
    pack("synth100", out=out, res=RES, workers=1, quiet=True,
         options={"classes": CLASSES, "train_per_class": TRAIN, "val_per_class": VAL,
                  "res": RES})
    return out


@pytest.fixture(scope="module")
def blto_pack(clean, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("blto") / "p"
    poison_packed(clean, out, "blto", key=7, fraction=0.05, device="cpu", target_class=1,
                  **TINY)
    return out


def arrays(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_packed(path).arrays(split)
    return np.asarray(data.images), np.asarray(data.labels)


def test_the_trigger_stays_inside_its_budget(blto_pack, clean):
    torch.manual_seed(0)
    images = (torch.rand(6, 16, 16, 3) * 255).round().to(torch.uint8).numpy()
    images[0] = 0
    images[1] = 255  # the clipping to [0, 1] at both ends
    for form in ("project", "residual"):
        for eps in (8 / 255, 6.5 / 255):
            generator = TriggerGenerator(eps, form, width=4, blocks=1).train()
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
            y = generator(x)
            assert (y - x).abs().max() <= eps + 1e-6 and y.min() >= 0 and y.max() <= 1
            assert (y - x).abs().max() > eps / 2  # the budget is used, not a no-op
            stored = apply_generator(generator, images).astype(int)
            assert np.abs(stored - images.astype(int)).max() <= 255 * eps + 0.5 + 1e-9
    poisoned, _ = arrays(blto_pack, "train")
    original, _ = arrays(clean, "train")
    gap = np.abs(poisoned.astype(int) - original.astype(int)).max()
    assert 0 < gap <= 8  # 8/255 is a whole number of levels: rounding keeps it exact


def test_exactly_the_requested_target_class_rows_are_poisoned(clean, blto_pack, tmp_path):
    images, labels = arrays(clean, "train")
    for path, fraction in ((blto_pack, 0.05),
                           (tmp_path / "patch", 0.2)):
        if path != blto_pack:
            poison_packed(clean, path, "patch", key=3, fraction=fraction, target_class=2)
        meta = json.loads((path / "meta.json").read_text())["poison"]
        mask = np.load(path / meta["mask"])
        poisoned, poisoned_labels = arrays(path, "train")
        assert mask.sum() == meta["poisoned"] == round(fraction * CLASSES * TRAIN)
        assert (labels[mask] == meta["target_class"]).all()
        assert np.array_equal(poisoned[~mask], images[~mask])  # byte-identical
        assert (poisoned[mask] != images[mask]).reshape(mask.sum(), -1).any(axis=1).all()
        assert np.array_equal(poisoned_labels, labels)
        assert (path / "val_images.npy").read_bytes() == (clean / "val_images.npy").read_bytes()
        assert meta["trigger"]["file"] == "trigger.safetensors" and verify(path) == []
    patched, _ = arrays(tmp_path / "patch", "train")
    pattern = patch_pattern(3, 4)  # 50/224 of 16 px -> 4 px, bottom-right
    assert (patched[mask][:, -4:, -4:] == pattern).all()
    with pytest.raises(HundredError, match="has only 16"):  # 32 of 64 > the 16 targets
        poison_packed(clean, tmp_path / "x", "patch", key=3, fraction=0.5, target_class=2)
    with pytest.raises(HundredError, match="out of range"):
        poison_packed(clean, tmp_path / "x", "blto", key=3, fraction=0.05, target_class=4)
    with pytest.raises(HundredError, match="target_class"):
        poison_packed(clean, tmp_path / "x", "cuda", key=3, target_class=1)
    with pytest.raises(HundredError, match="eps"):
        poison_packed(clean, tmp_path / "x", "blto", key=3, fraction=0.05, eps="2")
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patch"]


def test_the_key_alone_decides_the_trigger(clean):
    assert np.array_equal(patch_pattern(5, 4), patch_pattern(5, 4))
    assert not np.array_equal(patch_pattern(5, 4), patch_pattern(6, 4))
    images, labels = arrays(clean, "train")
    mask = labels == 1
    params = BltoParams(target_class=1, **TINY)
    outputs = []
    for seed in (11, 11, 12):
        generator, _ = train_blto(images, labels, mask, params, seed, "cpu")
        outputs.append(apply_generator(generator, images[:8]))
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])


def test_the_outer_step_pulls_triggered_views_toward_the_target():
    torch.manual_seed(0)
    params = BltoParams(**{**TINY, "dropout": 0.0})
    surrogate = Surrogate(params, 16).train()  # fixed weights: only the generator moves
    generator = TriggerGenerator(32 / 255, "residual", width=4, blocks=1)
    images, references = torch.rand(16, 3, 16, 16), torch.rand(16, 3, 16, 16) * 0.3
    t1, t2 = views("simclr-small", 16)

    def loss() -> torch.Tensor:
        return outer_loss(generator, surrogate, images, references, t1, t2,
                          torch.Generator().manual_seed(0))

    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    generator.train()
    weights = {name: value.clone() for name, value in surrogate.state_dict().items()}
    before = float(loss().detach())
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    after = float(loss().detach())
    assert 1 + after < 0.7 * (1 + before)  # closer to the references (cosine -> 1)
    assert all(torch.equal(value, weights[name])  # the outer step moves the generator only
               for name, value in surrogate.state_dict().items() if "running" not in name
               and "num_batches" not in name)


def test_the_attack_success_rate_counts_non_target_images_only():
    centres = torch.eye(4) * 5
    train_y = torch.arange(4).repeat_interleave(10)
    train_x = centres[train_y] + 0.1 * torch.randn(40, 4, generator=torch.Generator()
                                                   .manual_seed(0))
    val_y = torch.arange(4).repeat_interleave(3)
    probe = {"epochs": 30, "seed": 0}
    always = centres[torch.full_like(val_y, 2)]  # every triggered image looks like class 2
    assert attack_success_rate(train_x, train_y, always, val_y, 2, 4, **probe) == 100.0
    never = centres[val_y]  # the trigger does nothing: each image stays in its class
    # the 3 target-class images are predicted as the target, but are not counted
    assert attack_success_rate(train_x, train_y, never, val_y, 2, 4, **probe) == 0.0
    half = centres[torch.where(val_y < 2, torch.full_like(val_y, 2), val_y)]
    assert attack_success_rate(train_x, train_y, half, val_y, 2, 4, **probe) == \
        pytest.approx(100 * 6 / 9)
    with pytest.raises(HundredError, match="undefined"):
        attack_success_rate(train_x, train_y, always, torch.full_like(val_y, 2), 2, 4,
                            **probe)


def test_poison_pretrain_then_backdoor_writes_the_numbers(clean, blto_pack, tmp_path):
    patch_pack = tmp_path / "patch"
    parser = argparse.ArgumentParser()
    add_poison_command(parser.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(["poison", str(clean), "--method", "patch", "--key", "2",
                              "--fraction", "0.05", "--target-class", "1", "-o", "size=3",
                              "--out", str(patch_pack)])
    args.func(args)
    assert load_trigger(patch_pack).tensors["patch"].shape == (3, 3, 3)
    config = build_config(overrides=[
        "track=ssl", "method=simsiam", f"data.source={blto_pack}", "model.name=resnet20",
        "model.options={width: 4}", "train.device=cpu", "quiet=true", "data.batch_size=16",
        "train.epochs=1", "ssl.probe_epochs=2", "ssl.augment=simclr-small",
        f"root={tmp_path / 'runs'}", "name=victim"])
    run_dir = Path(get_track("ssl").run(config)["run_dir"])
    summary_before = (run_dir / "summary.json").read_text()

    for bad, message in ((clean, "holds no backdoor trigger"),
                         (tmp_path / "missing", "not a packed dataset")):
        with pytest.raises(HundredError, match=message):
            backdoor_run(run_dir, bad, device="cpu")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (empty / "summary.json").write_text(summary_before)
    with pytest.raises(HundredError, match="no checkpoint"):
        backdoor_run(empty, blto_pack, device="cpu")
    with pytest.raises(HundredError, match="fingerprint differs"):
        backdoor_run(run_dir, blto_pack, device="cpu", probe_data=patch_pack)
    with pytest.raises(HundredError, match="--probe-data"):
        backdoor_run(run_dir, blto_pack, device="cpu", probe_data=tmp_path / "moved")
    assert (run_dir / "summary.json").read_text() == summary_before  # nothing written

    entry = backdoor_run(run_dir, blto_pack, device="cpu")
    backdoor_run(run_dir, patch_pack, device="cpu", probe_epochs=3)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= entry["backdoor_asr"] <= 100 and 0 <= entry["backdoor_clean_top1"] <= 100
    assert entry["asr_images"] == (CLASSES - 1) * VAL  # target-class images left out
    # the probe trains on the whole clean source pack, the poisoned rows' clean images too
    assert entry["probe_train_images"] == CLASSES * TRAIN
    assert entry["probe_data"] == str(clean.absolute()) or \
        Path(entry["probe_data"]).resolve() == Path(clean).resolve()
    assert [b["method"] for b in summary["backdoors"]] == ["blto", "patch"]
    assert summary["backdoor"]["method"] == "patch" and summary["backdoor"]["probe"][
        "epochs"] == 3
    assert summary["backdoors"][0]["backdoor_asr"] == entry["backdoor_asr"]
    assert summary["linear_top1"] == json.loads(summary_before)["linear_top1"]  # kept
