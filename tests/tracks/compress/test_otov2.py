"""OTOv2 (Chen et al., ICLR 2023), the uniform baseline and width plans, tiny: removing
zero groups keeps the outputs; DHSPG zeroes G_p until the FLOPs target holds; the half-space
projection's rule; a pruned shape round-trips through ``model.options.pruned_widths``; an
otov2 run exports a smaller model that ``--init`` and ``hundred attack`` load; bad input
writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.cost import count_flops
from hundred.engine.method import SetupContext
from hundred.engine.trainer import build_optimizer
from hundred.errors import HundredError
from hundred.models import create
from hundred.models.widths import structure_of
from hundred.tracks.compress.groups import find_groups
from hundred.tracks.compress.methods.otov2 import OTOv2, _Channels

NETS = [("resnet20", {"width": 4}, 8), ("resnet8x4", {"width": 4, "stem_width": 4}, 8),
        ("test_resnet", {}, 16)]
TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 16}"
SETTINGS = [TINY, "model.name=resnet20", "model.options={width: 4}", "data.batch_size=16",
            "train.epochs=1", "quiet=true", "compress.latency_batch=4",
            "compress.latency_warmup=1", "compress.latency_repeats=2"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def trained_statistics(model: torch.nn.Module, size: int) -> None:
    """Non-trivial batch-norm statistics, then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    model.eval()


@pytest.mark.parametrize("name,options,size", NETS)
def test_removing_zero_groups_keeps_the_outputs_and_shrinks_the_network(name, options, size):
    torch.manual_seed(0)
    model = create(name, 4, img_size=size, **options)
    groups = find_groups(model, size)
    trained_statistics(model, size)
    masks = [torch.rand(group.channels) < 0.5 for group in groups.groups]
    for mask in masks:
        mask[0] = False
    groups.zero(model, masks)
    smaller = groups.remove(model, masks).eval()
    inputs = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert (model(inputs) - smaller(inputs)).abs().max() <= 1e-5
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in model.parameters())
    assert count_flops(smaller, size).flops < count_flops(model, size).flops
    assert groups.macs(masks) < groups.macs()


def test_option_a_shortcuts_leave_the_residual_stream_alone():
    """Torch-Pruning takes resnet20's zero-padding shortcut for an element-wise op: the stream
    group fails the zero-invariance check, the blocks' inner widths remain prunable."""
    groups = find_groups(create("resnet20", 4, img_size=8, width=4), 8)
    assert "backbone.conv1" in groups.rejected
    assert sorted(group.root for group in groups.groups) == sorted(
        f"backbone.stages.{s}.{b}.conv1" for s in range(3) for b in range(3))


def test_dhspg_zeroes_groups_of_g_p_until_the_flops_target_holds():
    torch.manual_seed(0)
    config = build_config(overrides=["track=compress", "method=otov2",
                                     "compress.flops_target=0.5", "optim.lr=0.1",
                                     "schedule.name=constant"])
    # lambda above the paper's 1e-3 so that a few steps suffice on this tiny problem
    method = OTOv2({"lmbda": 1.0}, config)
    model = create("resnet8x4", 4, img_size=8, width=4, stem_width=4)
    method.groups = find_groups(model, 8)
    method.setup(model, SetupContext(config, torch.device("cpu"), 200, 1))
    optimizer = build_optimizer(model, config.optim)
    images, labels = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    method.on_epoch_start(0)
    for _ in range(200):
        loss = method.loss(model, images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(model)
        if method.reached_step is not None:
            break
    assert method.reached_step is not None
    zero = torch.cat(method.groups.zero_masks(model))
    assert zero.any() and not (zero & ~method.penalized).any()  # only G_p is zeroed
    assert method.groups.macs(method.groups.zero_masks(model)) <= 0.5 * method.groups.macs()
    model.eval()
    smaller = method.compressed_model(model)
    assert method.forced == 0 and method.removal_difference <= 1e-5
    inputs = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (model(inputs) - smaller(inputs)).abs().max() <= 1e-5


def test_the_half_space_projection_zeroes_a_group_exactly_when_it_leaves_the_half_space():
    config = build_config(overrides=["track=compress", "method=otov2",
                                     "compress.flops_target=0.5", "optim.lr=0.1"])
    epsilon = 0.5
    method = OTOv2({"epsilon": epsilon}, config)
    model = create("resnet8x4", 4, img_size=8, width=4, stem_width=4)
    method.groups = find_groups(model, 8)
    method.channels = _Channels(method.groups, model)
    channels = method.channels
    x = channels.rows()
    norms = channels.dot(x, x).sqrt()
    # after the plain step every group is x scaled by its own factor, grads zero: lambda is
    # the constant lambda, so x_hat = (factor - lr lambda / ||x||) x
    factors = torch.linspace(0.2, 0.9, channels.count)
    after = [rows * factors[index].unsqueeze(1) for rows, (_, _, index)
             in zip(x, channels.parts)]
    grads = [torch.zeros_like(rows) for rows in x]
    method.penalized = torch.ones(channels.count, dtype=torch.bool)
    method.penalized[::3] = False
    result = method._penalize(x, after, grads, norms, lr=0.1)
    zero = channels.dot(result, result) == 0
    hat_over_x = factors - 0.1 * method.lmbda / norms  # <x_hat, x> / ||x||^2
    expected = method.penalized & (hat_over_x < epsilon)
    assert expected.any() and (~expected & method.penalized).any()
    assert torch.equal(zero, expected)


@pytest.mark.parametrize("name,options,size", NETS[1:])
def test_a_width_plan_rebuilds_the_pruned_shape(name, options, size):
    torch.manual_seed(0)
    model = create(name, 4, img_size=size, **options)
    groups = find_groups(model, size)
    trained_statistics(model, size)
    masks = [torch.rand(group.channels) < 0.4 for group in groups.groups]
    for mask in masks:
        mask[-1] = False
    smaller = groups.remove(model, masks).eval()
    dense = structure_of(model)
    plan = {k: v for k, v in structure_of(smaller).items() if v != dense[k]}
    assert plan
    with torch.device("meta"):  # shapes alone, as the export's check builds it
        on_meta = create(name, 4, img_size=size, **options, pruned_widths=plan)
    assert {k: v.shape for k, v in on_meta.state_dict().items()} == {
        k: v.shape for k, v in smaller.state_dict().items()}
    rebuilt = create(name, 4, img_size=size, **options, pruned_widths=plan)
    rebuilt.load_state_dict(smaller.state_dict())
    rebuilt.eval()
    assert rebuilt.feature_dim == smaller.feature_dim
    inputs = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(rebuilt(inputs), smaller(inputs))


def test_an_inconsistent_or_unknown_width_plan_is_refused():
    with pytest.raises(HundredError, match="not a consistent plan"):  # stem couples stage 0
        create("resnet8x4", 4, img_size=8, width=4, stem_width=4,
               pruned_widths={"backbone.conv1": 3, "backbone.stages.2.0.conv2": 10})
    with pytest.raises(HundredError, match="no conv/linear layer"):
        create("resnet20", 4, img_size=8, width=4, pruned_widths={"backbone.nothing": 2})
    with pytest.raises(HundredError, match="can only narrow"):
        create("resnet20", 4, img_size=8, width=4,
               pruned_widths={"backbone.stages.0.0.conv1": 9})


@pytest.fixture(scope="module")
def otov2_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("otov2")
    assert main(["run", "compress", "otov2", *COMMON, "--set", f"root={root}",
                 "--set", "name=pruned", "--set", "compress.flops_target=0.5"]) == 0
    return root / "compress" / "otov2" / "pruned"


def test_an_otov2_run_exports_a_smaller_model_that_init_and_attack_load(tmp_path, otov2_run,
                                                                         capsys):
    summary = summary_of(otov2_run)
    dense = create("resnet20", 4, img_size=16, width=4)
    assert summary["flops_ratio"] <= 0.55
    assert summary["params"] < sum(p.numel() for p in dense.parameters())
    record = summary["compression"]
    assert record["removal_max_abs_difference"] <= 1e-5
    assert "backbone.conv1" in record["rejected_groups"]
    plan = summary["export"]["model"]["options"]["pruned_widths"]
    assert plan and all(summary["structure"][name] == width for name, width in plan.items())
    # --init with the run's dense model: a clear error that names the plan; nothing written
    assert main(["run", "classify", "erm", *COMMON[:-6], "--set", f"root={tmp_path}",
                 "--set", "name=plain", "--init", str(otov2_run)]) == 2
    assert "model.options.pruned_widths=" in capsys.readouterr().err
    assert not (tmp_path / "classify").exists()
    widths = json.dumps(plan)
    assert main(["run", "classify", "erm", *COMMON[:-6], "--set", f"root={tmp_path}",
                 "--set", "name=tuned", "--set", f"model.options.pruned_widths={widths}",
                 "--init", str(otov2_run)]) == 0
    tuned = summary_of(tmp_path / "classify" / "erm" / "tuned")
    assert tuned["init"] == str(otov2_run)
    assert main(["attack", str(otov2_run), "--eps", "8/255", "--steps", "2",
                 "--device", "cpu"]) == 0
    assert summary_of(otov2_run)["pgd_top1"] <= summary_of(otov2_run)["attacks"][0]["clean_top1"]


def test_uniform_thins_every_group_to_the_flops_target(tmp_path):
    assert main(["run", "compress", "uniform", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=thin", "--set", "compress.flops_target=0.5",
                 "--set", "model.name=resnet8x4",
                 "--set", "model.options={width: 16, stem_width: 16}"]) == 0
    summary = summary_of(tmp_path / "compress" / "uniform" / "thin")
    assert 0.44 <= summary["flops_ratio"] <= 0.52  # one factor: coarse at tiny widths
    assert summary["export"]["model"]["options"]["pruned_widths"]


def test_a_model_torch_pruning_cannot_prune_or_trace_writes_nothing(tmp_path, monkeypatch,
                                                                    capsys):
    # ConvNet's GroupNorm(width, width) cannot lose a channel: no removable group
    assert main(["run", "compress", "otov2", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "compress.flops_target=0.5", "--set", "model.name=convnet_d3",
                 "--set", "model.options={width: 8}"]) == 2
    assert "no channel group Torch-Pruning can remove" in capsys.readouterr().err
    import torch_pruning

    def untraceable(*args, **kwargs):
        raise RuntimeError("cannot follow this forward")

    monkeypatch.setattr(torch_pruning.DependencyGraph, "build_dependency", untraceable)
    assert main(["run", "compress", "otov2", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "compress.flops_target=0.5"]) == 2
    assert "Torch-Pruning cannot trace" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
