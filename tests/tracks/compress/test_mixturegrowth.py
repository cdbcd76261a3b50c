"""MixtureGrowth, tiny: a templated layer's weight is its combination of templates; growth
reuses the learned templates (same parameters, same values), puts the small networks' layers
on the diagonal and new combinations off it; the random baseline differs only there; a run
writes a summary and exports the grown network as a plain model; bad input writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.compress import TRACK
from hundred.tracks.compress.growth import LayerPlan, TemplatedLayer
from hundred.tracks.compress.methods.mixturegrowth import MixtureGrowth

CLASSES, WIDTH, SIZE = 4, 8, 8
TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=resnet20", "model.options={width: 8, projection: true}",
            "data.batch_size=16", "train.epochs=2", "method_params.grow_epoch=1", "quiet=true",
            "compress.latency_batch=4", "compress.latency_warmup=1",
            "compress.latency_repeats=2"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def make(new_blocks: str = "orthogonal", templates: int = 2, seed: int = 0):
    """A method set up on a fresh large model, trained a few steps in the small phase."""
    config = build_config(overrides=["track=compress", "method=mixturegrowth",
                                     "model.name=resnet20",
                                     "model.options={width: 8, projection: true}",
                                     "method_params.grow_epoch=1"])
    torch.manual_seed(seed)
    method = MixtureGrowth({"grow_epoch": 1, "new_blocks": new_blocks,
                            "templates": templates}, config)
    method.num_classes, method.size = CLASSES, SIZE
    model = create("resnet20", CLASSES, img_size=SIZE, width=WIDTH, projection=True)
    method.setup(model, SetupContext(config, torch.device("cpu"), 1, 2))
    optimiser = torch.optim.SGD(method.trainable.parameters(), lr=0.05)
    images, labels = torch.randn(8, 3, SIZE, SIZE), torch.arange(8) % CLASSES
    for _ in range(3):
        optimiser.zero_grad()
        method.loss(model, images, labels).backward()
        optimiser.step()
    return method, model


def test_a_templated_weight_is_its_combination_of_templates():
    layer = TemplatedLayer(LayerPlan("conv", (3, 2, 3, 3), True, True), templates=3,
                           fan_out=True)
    for block in range(4):
        bank = layer.bank0 if block in (0, 2) else layer.bank1
        expected = sum(layer.coefficients[block, k] * bank[k] for k in range(3))
        assert torch.allclose(layer.block_weight(block), expected, atol=1e-6)
    grown = layer.grown_weight()
    assert grown.shape == (6, 4, 3, 3)
    assert torch.allclose(grown[:3, :2], layer.block_weight(0), atol=1e-6)
    assert torch.allclose(grown[:3, 2:], layer.block_weight(2), atol=1e-6)
    assert torch.allclose(grown[3:, :2], layer.block_weight(3), atol=1e-6)
    assert torch.allclose(grown[3:, 2:], layer.block_weight(1), atol=1e-6)
    stem = TemplatedLayer(LayerPlan("stem", (3, 3, 3, 3), True, False), 2, True)
    assert torch.equal(stem.grown_weight(), torch.cat((stem.block_weight(0),
                                                        stem.block_weight(1))))


def test_growth_reuses_the_learned_templates_and_the_small_layers():
    method, model = make(templates=4)
    net = method.trainable["templates"]
    banks = {name: (layer.bank0, layer.bank1, layer.bank0.detach().clone(),
                    layer.bank1.detach().clone()) for name, layer in net.layers.items()}
    members = [net.member_weights(m) for m in (0, 1)]
    members = [{k: v.detach().clone() for k, v in weights.items()} for weights in members]
    learned = {name: layer.coefficients[:2].detach().clone()
               for name, layer in net.layers.items()}
    method.on_epoch_start(1)
    assert method.grown
    layers = dict(model.named_modules())
    for name, layer in net.layers.items():
        bank0, bank1, value0, value1 = banks[name]
        assert layer.bank0 is bank0 and layer.bank1 is bank1  # the same parameters
        assert torch.equal(layer.bank0, value0) and torch.equal(layer.bank1, value1)
        assert torch.equal(layer.coefficients[:2], learned[name])
        if layer.plan.blocks == 4:  # new coefficients orthogonal to those before them
            rows = layer.coefficients.detach()
            assert abs(float(rows[2] @ rows[0])) < 1e-5 and abs(float(rows[2] @ rows[1])) < 1e-5
            assert all(abs(float(rows[3] @ rows[j])) < 1e-5 for j in range(3))
    for plan in net.plans.values():
        weight = layers[plan.name].weight
        w0, w1 = members[0][f"{plan.name}.weight"], members[1][f"{plan.name}.weight"]
        o, i = w0.shape[:2]
        if plan.split_out and plan.split_in:
            assert torch.allclose(weight[:o, :i], w0) and torch.allclose(weight[o:, i:], w1)
            assert torch.allclose(weight[:o, i:], net.layer(plan.name).block_weight(2))
        elif plan.split_out:
            assert torch.allclose(weight, torch.cat((w0, w1)))
        else:
            assert torch.allclose(weight, torch.cat((w0, w1), dim=1))
    small = method.members
    assert torch.equal(model.backbone.bn1.running_mean,
                       torch.cat([s.backbone.bn1.running_mean for s in small]))
    model.eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(model(images), functional_call(model, net.grown_weights(), (images,)),
                          atol=1e-5)


def test_without_new_blocks_the_grown_net_is_the_two_small_nets_side_by_side():
    method, model = make()
    method.on_epoch_end(0)  # the small phase's validation model
    net = method.trainable["templates"]
    images = torch.randn(3, 3, SIZE, SIZE)
    model.eval()
    for small in method.members:
        small.eval()
    summed = sum(functional_call(small, net.member_weights(m), (images,))
                 for m, small in enumerate(method.members))
    assert torch.allclose(model(images), summed, atol=1e-4)


def test_the_random_baseline_differs_only_in_the_new_blocks():
    grown = {}
    for mode in ("orthogonal", "random"):
        method, model = make(new_blocks=mode, seed=3)
        method.on_epoch_start(1)
        grown[mode] = (method, model.state_dict())
    net = grown["orthogonal"][0].trainable["templates"]
    plans = net.plans
    different = 0
    for name, value in grown["orthogonal"][1].items():
        other = grown["random"][1][name]
        layer = name.rsplit(".", 1)[0]
        if layer in plans and name.endswith("weight") and plans[layer].blocks == 4:
            o, i = plans[layer].small_shape[:2]
            assert torch.allclose(value[:o, :i], other[:o, :i])
            assert torch.allclose(value[o:, i:], other[o:, i:])
            different += int(not torch.allclose(value[:o, i:], other[:o, i:]))
            different += int(not torch.allclose(value[o:, :i], other[o:, :i]))
        else:
            assert torch.equal(value, other), name
    assert different > 0
    for mode_net in (grown[m][0].trainable["templates"] for m in grown):
        assert mode_net.layer("backbone.conv1").bank0.shape == net.layer(
            "backbone.conv1").bank0.shape


def test_a_tiny_run_writes_a_summary_and_exports_the_grown_net(tmp_path):
    assert main(["run", "compress", "mixturegrowth", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=mg"]) == 0
    run_dir = tmp_path / "compress" / "mixturegrowth" / "mg"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "val_top1" in summary and summary["params"] > 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["grown"] for r in records] == [False, True]
    exported = summary["export"]["model"]
    assert exported["name"] == "resnet20" and "pruned_widths" not in exported["options"]
    model = create("resnet20", CLASSES, img_size=SIZE, **exported["options"])
    model.load_state_dict(load_file(run_dir / summary["export"]["weights"]))
    assert model.backbone.conv1.weight.shape[0] == WIDTH


@pytest.mark.parametrize("setting, message", [
    ("method_params.grow_epoch=2", "outside the run"),
    ("model.options={width: 8}", "projection"),
    ("model.options={width: 7, projection: true}", "even"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, setting, message):
    config = build_config(overrides=["track=compress", "method=mixturegrowth", *SETTINGS,
                                     "train.device=cpu", setting, f"root={tmp_path}"])
    with pytest.raises(HundredError, match=message):
        TRACK.run(config, method=MixtureGrowth(config.method_params, config))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 2])  # at growth (grows on resume), after growth
def test_a_killed_run_resumes_to_the_same_grown_network(tmp_path, monkeypatch, kill_at):
    def config(name: str):
        return build_config(overrides=["track=compress", "method=mixturegrowth", *SETTINGS,
                                       "train.device=cpu", "train.epochs=3",
                                       f"root={tmp_path}", f"name={name}"])

    def run(name: str, resume=None):
        cfg = config(name)
        return TRACK.run(cfg, method=MixtureGrowth(cfg.method_params, cfg), resume_dir=resume)

    reference = run("whole")

    class Killed(Exception):
        pass

    original = MixtureGrowth.on_epoch_start

    def dies(self, epoch):
        if epoch == kill_at:
            raise Killed
        original(self, epoch)

    monkeypatch.setattr(MixtureGrowth, "on_epoch_start", dies)
    with pytest.raises(Killed):
        run("killed")
    monkeypatch.undo()
    killed = tmp_path / "compress" / "mixturegrowth" / "killed"
    resumed = run("killed", resume=killed)
    assert resumed["val_loss"] == reference["val_loss"]
    whole = load_file(tmp_path / "compress" / "mixturegrowth" / "whole" / "model.safetensors")
    again = load_file(killed / "model.safetensors")
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_the_growth_epoch_defaults_to_half_the_run():
    config = build_config(overrides=["track=compress", "method=mixturegrowth",
                                     "train.epochs=6"])
    assert MixtureGrowth({}, config).grow_epoch == 3
    assert MixtureGrowth({"grow_epoch": 5}, config).grow_epoch == 5
