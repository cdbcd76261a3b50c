"""Selfie (Trinh, Luong & Le 2019): the loss picks each masked position's true patch among the
image's masked patches; masked patches never reach the attention pooling; only the patch
network (the backbone's first stages) trains; a pre-training run fine-tunes in classify."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.models import create
from hundred.registry import get_method, get_track
from hundred.tracks.ssl.methods.selfie import (patchify, sample_masks, selfie_loss,
                                               unpatchify)


def tiny(root: Path, *extra: str):
    return build_config(overrides=[
        "track=ssl", "method=selfie", "model.name=resnet20", "model.options={width: 4}",
        "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 16}",
        "data.batch_size=16", "train.epochs=1", "ssl.probe_epochs=2", f"root={root}", *extra])


def built(params: dict | None = None):
    """A Selfie method set up on a tiny CIFAR ResNet-20 (width 4, 16 px images)."""
    torch.manual_seed(0)
    config = build_config(overrides=["track=ssl", "method=selfie"])
    method = get_method("ssl", "selfie")(params or {}, config)
    model = create("resnet20", 4, img_size=16, width=4)
    method.setup(model, SetupContext(config, torch.device("cpu"), steps_per_epoch=1, epochs=1))
    return method, model


def test_loss_is_minimal_when_each_query_is_its_true_patch():
    """v_i = h_i with well-separated patch encodings: the softmax puts probability ~1 on the
    true patch, the loss is ~0 (its minimum); the same queries in another order lose."""
    targets = 10 * torch.eye(8)[:4].expand(2, -1, -1)  # 2 images, 4 masked patches, D = 8
    right = selfie_loss(targets.clone(), targets)
    logits = torch.einsum("bid,bjd->bij", targets, targets)
    assert torch.allclose(logits.softmax(-1).diagonal(dim1=1, dim2=2), torch.ones(2, 4))
    assert 0 <= right.item() < 1e-6
    wrong = selfie_loss(targets.roll(1, dims=1), targets)
    assert wrong.item() > 50
    assert selfie_loss(torch.zeros(2, 4, 8), targets).item() == pytest.approx(math.log(4))


def test_patchify_round_trips_in_row_major_order():
    images = torch.randn(2, 3, 16, 16)
    patches = patchify(images, 4)
    assert patches.shape == (2, 16, 3, 4, 4)
    assert torch.equal(unpatchify(patches, 4), images)
    assert torch.equal(patches[:, 6], images[:, :, 4:8, 8:12])  # row 1, column 2


def test_masks_split_the_positions_per_image():
    masked, visible = sample_masks(5, 16, 4)
    assert masked.shape == (5, 4) and visible.shape == (5, 12)
    for row in torch.cat([masked, visible], dim=1):
        assert sorted(row.tolist()) == list(range(16))
    assert len({tuple(row.tolist()) for row in masked}) > 1  # a mask per image


def test_masked_patches_never_reach_the_attention_pooling():
    """The pooling's input is the visible patches' encodings only: changing the pixels of the
    masked patches leaves every query unchanged (eval mode: no batch statistics, no dropout)
    and changes only the targets; changing one visible patch changes the queries."""
    method, model = built()
    model.eval()
    method.trainable.eval()
    images = torch.randn(2, 3, 16, 16)
    masked, visible = sample_masks(2, 16, method.masked)
    seen = []
    method.trainable["pooling"].register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        queries, targets = method.predict(images, masked, visible)
        patches = patchify(images, 4)
        encodings = method._patch_network(patches.flatten(0, 1)).view(2, 16, -1)
        assert torch.allclose(seen[0], torch.stack([encodings[b, visible[b]] for b in range(2)]))
        assert torch.allclose(targets, torch.stack([encodings[b, masked[b]] for b in range(2)]))

        changed = patches.clone()
        for b in range(2):
            changed[b, masked[b]] = torch.randn_like(changed[b, masked[b]])
        queries2, targets2 = method.predict(unpatchify(changed, 4), masked, visible)
        assert torch.equal(queries2, queries) and not torch.allclose(targets2, targets)

        changed = patches.clone()
        changed[0, visible[0, 0]] += 1.0
        queries3, _ = method.predict(unpatchify(changed, 4), masked, visible)
        assert not torch.allclose(queries3[0], queries[0])


def test_only_the_patch_network_trains_and_every_trainable_parameter_gets_a_gradient():
    """The last stage is frozen (no objective reaches it: a DDP-unused parameter otherwise);
    the stem, first stages, head (probe) and Selfie's modules all receive gradients."""
    method, model = built()
    names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert names and all(n.startswith("backbone.stages.2.") for n in names)
    assert all(p.requires_grad for n, p in model.named_parameters()
               if n.startswith(("backbone.conv1", "backbone.stages.0.", "backbone.stages.1.",
                                "head.")))
    loss = method.loss(model, torch.randn(8, 3, 16, 16), torch.arange(8) % 4)
    loss.backward()
    for name, parameter in [*model.named_parameters(), *method.trainable.named_parameters()]:
        assert (parameter.grad is not None) == parameter.requires_grad, name


def test_the_objective_is_learnable_on_a_fixed_batch():
    """The defining claim at tiny scale: from the visible patches and the position, the
    networks learn to pick the masked patch far better than chance (log M)."""
    method, model = built({"depth": 1, "dropout": 0.0})
    model.train()
    images = torch.randn(4, 3, 16, 16)
    masked, visible = sample_masks(4, 16, method.masked, generator=torch.Generator().manual_seed(1))
    params = [p for p in [*model.parameters(), *method.trainable.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=2e-2)
    first = None
    for _ in range(25):
        loss = selfie_loss(*method.predict(images, masked, visible))
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * math.log(method.masked) < first


def test_pretraining_runs_end_to_end_and_fine_tunes_in_classify(tmp_path):
    summary = get_track("ssl").run(tiny(tmp_path, "name=pre"))
    assert 0 <= summary["linear_top1"] <= 100 and "knn20_top1" in summary
    classify = build_config(overrides=[
        "track=classify", "method=erm", "model.name=resnet20", "model.options={width: 4}",
        "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 16}",
        "data.batch_size=16", "train.epochs=1", "data.label_fraction=0.5",
        f"classify.init={summary['run_dir']}", f"root={tmp_path}", "name=fine"])
    tuned = get_track("classify").run(classify)
    assert tuned["init"] == summary["run_dir"] and 0 <= tuned["val_top1"] <= 100
