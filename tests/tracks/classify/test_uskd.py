"""USKD (Yang et al., ICCV 2023): no teacher; a weak linear head on the penultimate stage's
pooled output ranks the non-target classes; the head is the method's, not the model's. The
loss terms themselves are tested in test_losses.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import create
from hundred.registry import get_method
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.losses import uskd_loss


def _method(model, **params):
    config = build_config(overrides=["track=classify", "method=uskd", "train.device=cpu"])
    method = get_method("classify", "uskd")(params, config)
    method.prepare(config, None, 8)
    method.setup(model, SetupContext(config, torch.device("cpu"), 1, 1))
    return method


def _batch(name="resnet20"):
    torch.manual_seed(0)
    return create(name, 5, img_size=8), torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))


@pytest.mark.parametrize("rank_by", ["probability", "log_probability"])
def test_loss_is_ce_plus_uskd_with_the_weak_head_on_the_penultimate_stage(rank_by):
    model, x, y = _batch()
    method = _method(model, rank_by=rank_by, alpha=0.3, beta=0.2, mu=0.1)
    head = method.trainable["weak_head"]
    assert (head.in_features, head.out_features) == (32, 5)  # stage 2 of 3: 32 channels
    loss = method.loss(model, x, y)

    backbone = model.backbone
    h = backbone.act(backbone.bn1(backbone.conv1(x)))
    middle = backbone.stages[1](backbone.stages[0](h))
    logits = model(x)
    expected = F.cross_entropy(logits, y) + uskd_loss(
        logits, head(middle.mean((2, 3))), y, 0.3, 0.2, 0.1, rank_by)
    assert torch.allclose(loss, expected, atol=1e-6)


def test_the_ranking_choice_matters():
    model, x, y = _batch()
    a = _method(model, rank_by="probability")
    b = _method(model, rank_by="log_probability")
    b.trainable["weak_head"].load_state_dict(a.trainable["weak_head"].state_dict())
    assert not torch.allclose(a.loss(model, x, y), b.loss(model, x, y))


def test_weak_head_trains_and_reaches_only_the_stages_below_it():
    model, x, y = _batch()
    method = _method(model, alpha=0.0, beta=0.0, mu=1.0)
    assert set(method.trainable) == {"weak_head"}
    loss = method.loss(model, x, y) - F.cross_entropy(model(x), y)  # the weak CE alone
    loss.backward()
    assert method.trainable["weak_head"].weight.grad.abs().sum() > 0
    assert model.backbone.stages[0][0].conv1.weight.grad.abs().sum() > 0
    # CE - CE cancels: the last stage gets (numerically) nothing from the weak head
    assert all(p.grad.abs().max() < 1e-6 for p in model.backbone.stages[2].parameters())


def test_the_model_stays_the_plain_architecture():
    model, x, y = _batch()
    method = _method(model)
    method.loss(model, x, y).backward()
    plain = create("resnet20", 5, img_size=8).state_dict()
    state = model.state_dict()
    assert state.keys() == plain.keys()
    assert all(state[k].shape == plain[k].shape for k in plain)
    assert not any(p is q for p in method.trainable.parameters() for q in model.parameters())


def test_a_stage_that_does_not_exist_is_a_clear_error():
    model, _, _ = _batch()
    with pytest.raises(HundredError, match="weak_stage 3"):
        _method(model, weak_stage=3)


def tiny(root: Path, *extra: str):
    return build_config(overrides=[
        "track=classify", "method=uskd", "model.name=resnet20", "train.device=cpu",
        "quiet=true", "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 8}",
        "data.batch_size=16", "train.epochs=2", f"root={root}", *extra])


class Killed(Exception):
    pass


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = run_dir / "checkpoints"
    return load_file(checkpoints / json.loads((checkpoints / "latest.json").read_text())["weights"])


def test_runs_without_a_teacher_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    reference = TRACK.run(tiny(tmp_path, "name=reference"))
    assert reference["teacher"] is None and 0 <= reference["val_top1"] <= 100
    ref_weights = latest_weights(Path(reference["run_dir"]))
    assert {"method.weak_head.weight", "method.weak_head.bias"} <= ref_weights.keys()

    method_class = get_method("classify", "uskd")

    def die(self, epoch):
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(method_class, "on_epoch_start", die)
    with pytest.raises(Killed):
        TRACK.run(tiny(tmp_path, "name=cut"))
    monkeypatch.undo()
    cut = tmp_path / "classify" / "uskd" / "cut"
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["epoch"] == 0
    resumed = TRACK.run(build_config([cut / "config.yaml"]), resume_dir=cut)
    for key in ("val_top1", "val_top5", "val_loss"):
        assert resumed[key] == reference[key], key
    weights = latest_weights(cut)
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
