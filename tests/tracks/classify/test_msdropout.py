"""Multi-sample dropout (Inoue 2019): M masks on the pooled feature, one shared head, mean CE."""

import json

import pytest
import torch
import torch.nn.functional as F

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.models import create
from hundred.registry import get_method


def _method(**params):
    return get_method("classify", "msdropout")(params)


def _batch():
    torch.manual_seed(0)
    model = create("convnet_d3", 5, img_size=8)
    return model, torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))


def test_one_sample_is_ordinary_dropout_before_the_head():
    model, x, y = _batch()
    torch.manual_seed(123)
    loss = _method(samples=1, p=0.5).loss(model, x, y)
    torch.manual_seed(123)
    features = model.features(x)
    expected = F.cross_entropy(model.head(F.dropout(features, 0.5, training=True)), y)
    assert torch.allclose(loss, expected, atol=1e-6)
    # and it is not the dropout-free loss
    assert not torch.allclose(loss, F.cross_entropy(model(x), y))


def test_loss_is_the_mean_of_per_mask_losses():
    model, x, y = _batch()
    samples, p = 4, 0.3
    torch.manual_seed(7)
    loss = _method(samples=samples, p=p).loss(model, x, y)
    torch.manual_seed(7)
    features = model.features(x)
    masks = F.dropout(torch.ones(samples * len(x), features.shape[1]), p, training=True)
    per_mask = [F.cross_entropy(model.head(features * masks[m * len(x):(m + 1) * len(x)]), y)
                for m in range(samples)]
    assert torch.allclose(loss, torch.stack(per_mask).mean(), atol=1e-5)


@pytest.mark.parametrize("samples", [1, 3, 8])
def test_no_dropout_is_plain_cross_entropy(samples):
    model, x, y = _batch()
    loss = _method(samples=samples, p=0.0).loss(model, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y), atol=1e-6)


def test_label_smoothing_is_used():
    model, x, y = _batch()
    config = build_config(overrides=["track=classify", "method=msdropout",
                                     "train.label_smoothing=0.2"])
    method = get_method("classify", "msdropout")({"p": 0.0}, config)
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2)
    assert torch.allclose(method.loss(model, x, y), expected, atol=1e-6)


def test_gradients_reach_backbone_and_head():
    model, x, y = _batch()
    _method().loss(model, x, y).backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.backbone.parameters())


@pytest.mark.parametrize("params", [{"p": 1.0}, {"p": -0.1}, {"samples": 0}, {"masks": 2}])
def test_bad_params_are_clear_errors(params):
    with pytest.raises(HundredError, match="method_params"):
        _method(**params)


def test_short_run_writes_a_summary(tmp_path):
    from hundred.tracks.classify import TRACK

    config = build_config(overrides=[
        "track=classify", "method=msdropout", "model.name=convnet_d3", "train.device=cpu",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 8}",
        "data.batch_size=16", "train.epochs=1", "quiet=true", f"root={tmp_path}"])
    summary = TRACK.run(config)
    written = list(tmp_path.rglob("summary.json"))
    assert len(written) == 1
    assert json.loads(written[0].read_text())["method"] == "msdropout"
    assert 0 <= summary["val_top1"] <= 100
