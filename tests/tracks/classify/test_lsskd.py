"""LSSKD (arXiv 2506.07055, after HSAKD): rotation joint labels, auxiliary branches on every
stage that are the method's (the deployed model is the plain one), deeper branches teaching
shallower ones, and a tiny end-to-end run without a teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import create
from hundred.registry import get_method
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.methods.lsskd import rotate_batch


def _method(model, size=8, **params):
    config = build_config(overrides=["track=classify", "method=lsskd", "train.device=cpu"])
    method = get_method("classify", "lsskd")(params, config)
    method.prepare(config, None, size)
    method.setup(model, SetupContext(config, torch.device("cpu"), 1, 1))
    return method


def _batch(name="resnet20", classes=5):
    torch.manual_seed(0)
    return (create(name, classes, img_size=8), torch.randn(3, 3, 8, 8),
            torch.tensor([0, 4, 2]))


def test_joint_label_of_image_i_rotated_k_times_is_4y_plus_k():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = torch.tensor([3, 1])
    rotated, joint = rotate_batch(x, y)
    assert rotated.shape == (8, 3, 4, 4)
    for k in range(4):
        for i in range(2):
            assert torch.equal(rotated[k * 2 + i], torch.rot90(x[i], k, dims=(1, 2)))
            assert joint[k * 2 + i] == 4 * y[i] + k
    assert torch.equal(rotated[:2], x)  # the first rows are the original batch
    assert torch.equal(joint // 4, y.repeat(4))  # the class is recoverable from the joint label
    with pytest.raises(HundredError, match="square"):
        rotate_batch(torch.zeros(2, 3, 4, 6), y)


def test_the_model_state_dict_is_the_plain_architectures():
    model, x, y = _batch()
    method = _method(model)
    method.loss(model, x, y).backward()
    plain = create("resnet20", 5, img_size=8).state_dict()
    state = model.state_dict()
    assert state.keys() == plain.keys()
    assert all(state[k].shape == plain[k].shape for k in plain)
    branches = method.trainable["aux"]
    assert len(branches) == 3 and all(b.classifier.out_features == 20 for b in branches)
    assert not any(p is q for p in method.trainable.parameters() for q in model.parameters())


def test_every_branch_and_the_backbone_receive_gradients():
    model, x, y = _batch()
    method = _method(model)
    method.loss(model, x, y).backward()
    for branch in method.trainable["aux"]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("transfer", ["next", "deepest"])
def test_deeper_branches_teach_shallower_ones(transfer):
    model, x, y = _batch()
    method = _method(model, aux_weight=0.0, feature_weight=0.0, transfer=transfer)
    model.eval()  # batch norm on running statistics: the CE on 3 or on 12 images agree
    ce = F.cross_entropy(model(x), y)
    transfer_loss = method.loss(model, x, y) - ce
    assert transfer_loss > 0
    transfer_loss.backward()
    first, second, deepest = method.trainable["aux"]
    assert first.classifier.weight.grad.abs().sum() > 0
    assert second.classifier.weight.grad.abs().sum() > 0
    grad = deepest.classifier.weight.grad  # the deepest branch only teaches
    assert grad is None or not grad.any()


def test_the_head_learns_from_the_unrotated_images_only():
    model, x, y = _batch()
    method = _method(model, aux_weight=0.0, kd_weight=0.0, feature_weight=0.0)
    model.eval()  # batch norm on running statistics: the rotated copies do not shift them
    assert torch.allclose(method.loss(model, x, y), F.cross_entropy(model(x), y), atol=1e-6)


def test_a_vit_gets_token_branches():
    model, x, y = _batch("vit_tiny_p4_32")
    method = _method(model)
    method.loss(model, x, y).backward()
    assert len(method.trainable["aux"]) == 3 and method.trainable["aux"][0].tokens
    assert method.trainable["aux"][0].classifier.weight.grad is not None


def test_a_tiny_run_without_a_teacher(tmp_path):
    config = build_config(overrides=[
        "track=classify", "method=lsskd", "model.name=resnet20", "train.device=cpu",
        "quiet=true", "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 8}",
        "data.batch_size=16", "train.epochs=1", f"root={tmp_path}"])
    summary = TRACK.run(config)
    assert summary["method"] == "lsskd" and summary["teacher"] is None
    assert 0 <= summary["val_top1"] <= 100
    run_dir = Path(summary["run_dir"])
    assert list((run_dir / "checkpoints").glob("*.safetensors"))
