"""The elastic supernet (hundred.models.elastic) and its children (compress/supernet.py), tiny:
an extracted child computes what the supernet configured to it computes, the largest child is
the full network, ``create`` rebuilds a child from its option, BN recalibration changes only
running statistics and makes eval outputs match train-mode statistics on the calibration
data, and the sandwich puts the largest and the smallest child first."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.compress.supernet import extract, recalibrate_bn, sandwich, supernet_of

OPTIONS = {"widths": (8, 16), "depths": (2, 2), "stem_width": 8}


def supernet(zero_init: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = create("elastic_resnet", 4, img_size=8, zero_init_residual=zero_init, **OPTIONS)
    for module in model.modules():  # non-trivial statistics, so slicing them matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def test_extracted_child_equals_the_configured_supernet():
    model = supernet()
    space = supernet_of(model)
    images = torch.randn(3, 3, 8, 8)
    rng = random.Random(1)
    children = [space.smallest(), *(space.sample(rng) for _ in range(6))]
    for child in children:
        space.set_child(child)
        expected = model(images)
        child_model = extract(model, child).eval()
        assert (child_model(images) - expected).abs().max() <= 1e-5
        # the plain model the option builds has exactly the child's shapes
        rebuilt = create("elastic_resnet", 4, img_size=8, child=child, **OPTIONS)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
            {k: v.shape for k, v in child_model.state_dict().items()}
        rebuilt.load_state_dict(child_model.state_dict())
        assert (rebuilt.eval()(images) - expected).abs().max() <= 1e-5
        assert child_model.model_options == {"child": child}
    space.set_child(None)
    assert sum(p.numel() for p in extract(model, space.smallest()).parameters()) < \
        sum(p.numel() for p in model.parameters())


def test_largest_child_is_the_full_network():
    model = supernet()
    space = supernet_of(model)
    largest = extract(model, space.largest()).eval()
    assert largest.model_options == {}  # built without the child option: the supernet itself
    full, mine = model.state_dict(), largest.state_dict()
    assert full.keys() == mine.keys() and all(torch.equal(full[k], mine[k]) for k in full)
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(largest(images), model(images))


def test_bad_child_is_refused():
    with pytest.raises(HundredError, match="depths"):
        create("elastic_resnet", 4, img_size=8, child={"depth": [3, 1], "expand": [[1.0] * 3,
               [1.0]], "kernel": [[3] * 3, [3]]}, **OPTIONS)
    with pytest.raises(HundredError, match="expand"):
        create("elastic_resnet", 4, img_size=8, child={"depth": [1, 1], "expand": [[0.3],
               [1.0]], "kernel": [[3], [3]]}, **OPTIONS)


def test_zero_init_of_the_last_bn_gamma():
    model = create("elastic_resnet", 4, img_size=8, **OPTIONS)
    blocks = [b for stage in supernet_of(model).stages for b in stage.blocks]
    assert blocks and all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)


def test_bn_recalibration_changes_running_stats_only():
    model = supernet()
    space = supernet_of(model)
    child = extract(model, space.sample(random.Random(3)))
    weights = {n: p.detach().clone() for n, p in child.named_parameters()}
    before = {n: b.clone() for n, b in child.named_buffers()}
    torch.manual_seed(1)
    batches = [torch.randn(32, 3, 8, 8) * 2 + 0.5, torch.randn(32, 3, 8, 8) * 2 + 0.5]
    assert recalibrate_bn(child, [(b, None) for b in batches], 2) == 2
    assert not child.training  # mode restored
    assert all(torch.equal(p, weights[n]) for n, p in child.named_parameters())
    assert any(not torch.equal(b, before[n]) for n, b in child.named_buffers())
    # cumulative average: the stem's BN mean is the mean of the two batches' means
    stem_conv = child.backbone.stem[0]
    means = [stem_conv(b).mean(dim=(0, 2, 3)) for b in batches]
    torch.testing.assert_close(child.backbone.stem[1].running_mean, (means[0] + means[1]) / 2,
                               atol=1e-5, rtol=1e-5)
    assert all(m.momentum == 0.1 for m in child.modules() if isinstance(m, nn.BatchNorm2d))


def test_recalibrated_eval_outputs_match_train_mode_statistics():
    model = supernet()
    child = extract(model, supernet_of(model).smallest())
    torch.manual_seed(2)
    data = torch.randn(64, 3, 8, 8) * 3 + 1
    stale = child.eval()(data)
    recalibrate_bn(child, [data], 1)
    with torch.no_grad():
        eval_out = child.eval()(data)
        train_out = child.train()(data)  # batch statistics (running ones updated: not reused)
    # equal up to the unbiased-variance factor n / (n - 1) of the running variance
    assert (eval_out - train_out).abs().max() < 1e-2
    assert (stale - train_out).abs().max() > 10 * (eval_out - train_out).abs().max()


def test_sandwich_puts_largest_and_smallest_first():
    space = supernet_of(supernet())
    rng = random.Random(0)
    for _ in range(5):
        children = sandwich(space, rng, 2)
        assert len(children) == 4
        assert children[0] == space.largest() and children[1] == space.smallest()
