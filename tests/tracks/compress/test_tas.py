"""TAS (Dong & Yang, NeurIPS 2019), tiny: the expected FLOPs is differentiable in the width
logits and equals the plan's count at a one-hot distribution; the cost loss switches sign
around the target and is zero inside the tolerance band; channel-wise interpolation aligns
feature maps of different widths; Gumbel sampling is seeded; the two halves of the train
split are disjoint and make the split; a tiny search exports a plan inside the FLOPs band
whose removed network computes what the masked one did; the KD command it records runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hundred.cli import main
from hundred.models import create
from hundred.models.widths import structure_of
from hundred.tracks.compress.groups import find_groups
from hundred.tracks.compress.methods.tas import (SearchSpace, TASParams, aggregate,
                                                 channel_interpolate, cost_loss, fit_band,
                                                 gumbel_select, split_halves)

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 16}"
SETTINGS = [TINY, "model.name=resnet8x4", "model.options={width: 4, stem_width: 4}",
            "data.batch_size=8", "train.epochs=1", "quiet=true", "compress.latency_batch=4",
            "compress.latency_warmup=1", "compress.latency_repeats=2"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    model = create("resnet8x4", 4, img_size=8, width=4, stem_width=4)
    return SearchSpace(find_groups(model, 8), TASParams().width_choices)


def test_expected_flops_is_differentiable_and_exact_at_one_hot_logits(space):
    torch.manual_seed(0)
    logits = [torch.randn(len(c), requires_grad=True) for c in space.candidates]
    ratio = space.expected_ratio(logits)
    ratio.backward()
    assert 0 < float(ratio.detach()) < 1
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in logits)
    # gradcheck in double precision on the first group's logits
    first = logits[0].detach().double().requires_grad_(True)
    rest = [a.detach().double() for a in logits[1:]]
    assert torch.autograd.gradcheck(lambda a: space.expected_ratio([a, *rest]), (first,))
    # a (nearly) one-hot distribution: the expected FLOPs is the chosen shape's MAC count,
    # the same count the channel groups give for its removal masks
    choice = [len(c) // 2 for c in space.candidates]
    peaked = [torch.nn.functional.one_hot(torch.tensor(i), len(c)).float() * 60
              for i, c in zip(choice, space.candidates)]
    groups = space.groups
    planned = groups.macs(space.masks(choice)) / groups.macs()
    assert float(space.expected_ratio(peaked)) == pytest.approx(planned, rel=1e-5)
    assert space.ratio(choice) == pytest.approx(planned, rel=1e-6)


def test_the_cost_loss_switches_sign_around_the_target_and_is_zero_inside_the_band():
    def gradient(current: float) -> float:
        expected = torch.tensor(0.6, requires_grad=True)
        loss = cost_loss(expected, current, target=0.5, tolerance=0.05)
        loss.backward()
        return float(expected.grad)

    above, inside, below = gradient(0.6), gradient(0.47), gradient(0.40)
    assert above > 0   # descending the loss lowers the expected FLOPs
    assert below < 0   # ... raises them
    assert inside == 0
    assert float(cost_loss(torch.tensor(0.6), 0.6, 0.5, 0.05)) == pytest.approx(np.log(0.6))
    assert float(cost_loss(torch.tensor(0.6), 0.4, 0.5, 0.05)) == pytest.approx(-np.log(0.6))
    assert float(cost_loss(torch.tensor(0.6), 0.5, 0.5, 0.05)) == 0.0


def test_channel_wise_interpolation_aligns_feature_maps_of_different_widths():
    x = torch.randn(2, 6, 3, 3)
    assert channel_interpolate(x, 6) is x
    # 6 -> 3 channels: averages of channel pairs
    down = channel_interpolate(x, 3)
    assert down.shape == (2, 3, 3, 3)
    assert torch.allclose(down[:, 1], x[:, 2:4].mean(1))
    # 2 -> 4 channels: each channel repeated (adaptive pooling of a shorter map)
    two = torch.randn(2, 2, 3, 3)
    up = channel_interpolate(two, 4)
    assert torch.allclose(up[:, 0], two[:, 0]) and torch.allclose(up[:, 3], two[:, 1])
    # channels last (tokens): the same along the last dimension
    tokens = torch.randn(2, 5, 6)
    assert torch.allclose(channel_interpolate(tokens, 3, dim=-1),
                          channel_interpolate(tokens.transpose(1, 2), 3).transpose(1, 2))
    # the mixture keeps the full width, zero beyond the largest drawn width
    weights = torch.tensor([0.25, 0.75])
    mixed = aggregate(x, [2, 4], weights)
    assert mixed.shape == x.shape
    assert torch.equal(mixed[:, 4:], torch.zeros_like(mixed[:, 4:]))
    expected = 0.25 * channel_interpolate(x[:, :2], 4) + 0.75 * x[:, :4]
    assert torch.allclose(mixed[:, :4], expected)
    # a single candidate with weight 1 is the plain cut: first channels kept, rest zero
    cut = aggregate(x, [3], torch.ones(1))
    assert torch.equal(cut[:, :3], x[:, :3]) and not cut[:, 3:].any()


def test_gumbel_sampling_is_seeded_and_differentiable():
    logits = torch.randn(8, requires_grad=True)

    def draws(seed: int) -> list:
        generator = torch.Generator().manual_seed(seed)
        return [gumbel_select(logits, 1.0, 2, generator)[0] for _ in range(20)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    chosen, weights = gumbel_select(logits, 0.5, 2, torch.Generator().manual_seed(0))
    assert len(set(chosen)) == 2 and float(weights.detach().sum()) == pytest.approx(1.0)
    weights[0].backward()
    assert logits.grad.abs().sum() > 0


def test_the_two_halves_are_disjoint_class_balanced_and_make_the_split():
    labels = np.repeat(np.arange(5), [7, 8, 9, 10, 11])
    first, second = split_halves(labels, seed=1)
    assert not set(first) & set(second)
    assert sorted([*first, *second]) == list(range(len(labels)))
    for label in range(5):
        a, b = (labels[first] == label).sum(), (labels[second] == label).sum()
        assert abs(int(a) - int(b)) <= 1 and b > 0
    assert np.array_equal(split_halves(labels, 1)[0], first)
    assert not np.array_equal(split_halves(labels, 2)[0], first)


def test_fit_band_moves_a_shape_into_the_flops_band(space):
    logits = [torch.zeros(len(c)) for c in space.candidates]
    full = [len(c) - 1 for c in space.candidates]
    choice, steps = fit_band(space, logits, full, 0.5, 0.05)
    assert 0.45 <= space.ratio(choice) <= 0.5 and steps > 0
    smallest = [0] * len(space.candidates)
    choice, _ = fit_band(space, logits, smallest, 0.5, 0.05)
    assert 0.45 <= space.ratio(choice) <= 0.5


@pytest.mark.parametrize("start,sign", [("full", -1), ("smallest", 1)])
def test_the_architecture_step_moves_the_expected_flops_toward_the_target_only(start, sign):
    from hundred.config import build_config
    from hundred.engine.method import SetupContext
    from hundred.tracks.compress.methods.tas import TAS

    torch.manual_seed(0)
    config = build_config(overrides=["track=compress", "method=tas", "compress.flops_target=0.5",
                                     "method_params={arch_lr: 0.05, cost_weight: 10.0}"])
    method = TAS(config.method_params, config)
    model = create("resnet8x4", 4, img_size=8, width=4, stem_width=4)
    method.groups = find_groups(model, 8)
    method.space = SearchSpace(method.groups, method.params.width_choices)
    method.setup(model, SetupContext(config, torch.device("cpu"), 1, 1))
    with torch.no_grad():  # start from the widest (or narrowest) shape
        for logits in method.logits:
            logits.zero_()
            logits[-1 if start == "full" else 0] = 1.0
    batch = (torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))
    method.arch_loader = [batch]
    weights = {k: v.clone() for k, v in model.named_parameters()}
    before = float(method.space.expected_ratio(method.logits).detach())
    for _ in range(5):
        method.after_optimizer_step(model)
    after = float(method.space.expected_ratio(method.logits).detach())
    assert sign * (after - before) > 0
    # the architecture step leaves the weights (and their gradients) alone
    assert all(torch.equal(weights[k], v) and v.grad is None
               for k, v in model.named_parameters())


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tas")
    main(["run", "compress", "dense", *COMMON, "--root", str(root), "--name", "dense"])
    return root / "compress" / "dense" / "dense"


def test_a_tiny_search_exports_the_argmax_plan_inside_the_band_and_kd_trains_it(dense_run,
                                                                              tmp_path):
    root = dense_run.parent.parent.parent
    main(["run", "compress", "tas", *COMMON, "--root", str(root), "--name", "search",
          "--init", str(dense_run), "--flops-target", "0.5", "--set", "train.epochs=2",
          "--set", "method_params.arch_lr=0.05"])
    run_dir = root / "compress" / "tas" / "search"
    summary = summary_of(run_dir)
    record = summary["compression"]
    assert 0.45 <= record["planned_flops_ratio"] <= 0.5
    assert abs(summary["flops_ratio"] - record["planned_flops_ratio"]) < 0.05  # fvcore: + norms
    assert record["removal_max_abs_difference"] < 1e-5
    assert record["train_halves"] == [32, 32]
    plan = summary["export"]["model"]["options"]["pruned_widths"]
    assert plan == record["plan"] and plan
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [round(h["tau"], 3) for h in history] == [10.0, 0.1]
    assert all("argmax_flops_ratio" in h and "expected_flops_ratio" in h for h in history)
    # the second stage: the recorded classify kd command trains the plan from scratch
    args = record["kd_args"]
    assert args[:5] == ["run", "classify", "kd", "--teacher", str(dense_run)]
    main([*args, "--device", "cpu", "--root", str(tmp_path), "--name", "kd",
          "--set", "data.batch_size=8", "--set", "train.epochs=1", "--set", "quiet=true"])
    kd = summary_of(tmp_path / "classify" / "kd" / "kd")
    config = (tmp_path / "classify" / "kd" / "kd" / "config.yaml").read_text()
    assert "pruned_widths" in config and "val_top1" in kd
    built = structure_of(create("resnet8x4", 4, img_size=16, width=4, stem_width=4,
                                pruned_widths=plan))
    assert {name: built[name] for name in plan} == plan


def test_tas_refuses_a_target_out_of_reach_before_writing(tmp_path, capsys):
    code = main(["run", "compress", "tas", *COMMON, "--root", str(tmp_path), "--name", "x",
                 "--flops-target", "0.01"])
    assert code != 0 and "out of reach" in capsys.readouterr().err
    assert not (tmp_path / "compress" / "tas" / "x").exists()
