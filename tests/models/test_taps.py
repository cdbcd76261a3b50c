"""Stage taps: the outputs captured by hooks during ``model(x)`` are those of a manual
stage-by-stage forward, the hooks come off afterwards, wrappers are seen through, and an
unknown architecture is a clear error."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError
from hundred.models import create
from hundred.models.taps import (StageTaps, capture_stages, pool_stage_output, stage_channels,
                                 stage_modules, unwrap)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_cifar_resnet_stages_equal_a_manual_forward_and_hooks_are_removed():
    torch.manual_seed(0)
    model = create("resnet20", 5).eval()
    x = torch.randn(2, 3, 16, 16)
    with capture_stages(model) as outputs:
        logits = model(x)
    backbone = model.backbone
    h = backbone.act(backbone.bn1(backbone.conv1(x)))
    manual = []
    for stage in backbone.stages:
        h = stage(h)
        manual.append(h)
    assert len(outputs) == 3
    for got, want in zip(outputs, manual):
        assert torch.equal(got, want)
    assert torch.allclose(model.head(F.adaptive_avg_pool2d(manual[-1], 1).flatten(1)), logits)
    assert _hooks(model) == 0


def test_convnet_stages_are_its_conv_blocks():
    torch.manual_seed(0)
    model = create("convnet_d3", 4, img_size=8)
    x = torch.randn(2, 3, 8, 8)
    with capture_stages(model) as outputs:
        model(x)
    h, manual = x, []
    layers = list(model.backbone.layers)
    for block in range(3):
        for layer in layers[4 * block: 4 * block + 4]:
            h = layer(h)
        manual.append(h)
    assert [tuple(o.shape) for o in outputs] == [(2, 128, 4, 4), (2, 128, 2, 2), (2, 128, 1, 1)]
    assert all(torch.equal(a, b) for a, b in zip(outputs, manual))
    assert _hooks(model) == 0


def test_stage_channels_leave_batch_norm_statistics_and_mode_alone():
    model = create("resnet20", 5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert stage_channels(model, 8) == [16, 32, 64]
    assert model.training and _hooks(model) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_persistent_taps_record_only_inside_capture_and_keep_the_graph():
    model = create("resnet20", 5)
    taps = StageTaps(model)
    x = torch.randn(2, 3, 8, 8)
    model(x)  # outside capture: nothing recorded, nothing fails
    with taps.capture() as outputs:
        logits = model(x)
    assert len(outputs) == 3 and outputs[1].shape == (2, 32, 4, 4)
    (pool_stage_output(outputs[0]).sum() + logits.sum()).backward()
    assert model.backbone.conv1.weight.grad is not None
    assert _hooks(model) == 3
    taps.remove()
    assert _hooks(model) == 0 and not taps.active


def test_a_stage_that_did_not_run_is_an_error():
    taps = StageTaps(create("resnet20", 5))
    with pytest.raises(HundredError, match="did not run"):
        with taps.capture():
            pass


def test_wrappers_are_seen_through():
    model = create("resnet20", 5)

    class Compiled(nn.Module):  # what torch.compile's OptimizedModule looks like to us
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap(Compiled(model)) is model
    assert stage_modules(Compiled(model)) == list(model.backbone.stages)


def test_timm_resnet_and_vit_stages():
    resnet = create("resnet18", 5)
    assert stage_channels(resnet, 32) == [64, 128, 256, 512]
    vit = create("vit_tiny_p4_32", 5)
    stages = stage_modules(vit)
    blocks = vit.backbone.model.blocks
    assert stages == [blocks[2], blocks[5], blocks[8]]  # depth 9: three groups of three
    assert stage_channels(vit, 32) == [192, 192, 192]
    assert stage_modules(vit, vit_groups=9) == list(blocks)
    with pytest.raises(HundredError, match="equal stages"):
        stage_modules(vit, vit_groups=4)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(HundredError, match="cannot find the stages"):
        stage_modules(nn.Sequential(nn.Linear(3, 3)))
