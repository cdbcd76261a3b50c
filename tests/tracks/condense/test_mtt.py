"""MTT: the learned lr gets a gradient and stays positive, the experts are checked before the
run starts, and a tiny run goes end to end with the learned lr as the evaluation lr."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from hundred.config import build_config
from hundred.engine.run import image_size, load_data
from hundred.errors import HundredError
from hundred.tracks.condense import TRACK
from hundred.tracks.condense.experts import ExpertSettings, train_experts
from hundred.tracks.condense.method import CondenseContext
from hundred.tracks.condense.synthetic import RealImages, SyntheticSet

DATA = "data.options={classes: 4, train_per_class: 6, val_per_class: 2, res: 8}"
WIDTH = "model.options={width: 8}"


@pytest.fixture(scope="module")
def buffer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mtt") / "experts"
    config = build_config(overrides=["data.source=synth100", DATA, "model.name=convnet_d3",
                                     WIDTH])
    train_experts(config, out, 2, ExpertSettings(epochs=3, batch_size=8, dsa_strategy=None),
                  device=torch.device("cpu"), dsa=None, log=lambda line: None)
    return out


def overrides(buffer: Path | None, *extra: str) -> list[str]:
    found = [] if buffer is None else [f"method_params.experts={buffer}"]
    return ["track=condense", "method=mtt", "data.source=synth100", DATA,
            "model.name=convnet_d3", WIDTH, "condense.ipc=2", "method_params.max_start_epoch=2",
            "method_params.syn_steps=4", "method_params.batch_syn=4", *found, *extra]


def context(tmp_path: Path, *items: str):
    config = build_config(overrides=list(items))
    dataset = load_data(config)
    size = image_size(config, dataset)
    real = RealImages(dataset.arrays("train"), dataset.num_classes, size, torch.device("cpu"),
                      config.data.mean, config.data.std)
    ctx = CondenseContext(config, torch.device("cpu"), dataset, real, size, tmp_path,
                          Console(quiet=True), None)
    return TRACK.method_class("mtt")(config.method_params, config), ctx


def test_learned_lr_gets_a_gradient_and_stays_positive(buffer, tmp_path):
    method, ctx = context(tmp_path, *overrides(buffer))
    method.prepare(ctx)
    torch.manual_seed(0)
    synthetic = SyntheticSet.initialise(ctx.real, 2, "real")
    method.setup_set(synthetic, ctx)
    assert synthetic.lr.item() == pytest.approx(0.01)
    groups = method.optimizer_groups(synthetic, 1000.0, 0.5)
    lr_group = next(g for g in groups if g["params"][0] is synthetic.lr)
    assert lr_group["lr"] == 1e-5 and lr_group["momentum"] == 0.5
    optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"])
    before = synthetic.images.detach().clone()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        logs = method.compute_gradients(synthetic, ctx)
        assert logs["loss"] > 0
        assert synthetic.lr.grad is not None and float(synthetic.lr.grad) != 0
        assert torch.isfinite(synthetic.images.grad).all() and synthetic.images.grad.abs().sum() > 0
        optimizer.step()
        method.after_step(synthetic)
    assert not torch.equal(before, synthetic.images.detach())
    # a step that would drive the lr below zero is clamped to min_lr
    optimizer.zero_grad(set_to_none=True)
    synthetic.lr.grad = torch.tensor(1e6)
    optimizer.step()
    assert synthetic.lr.item() < 0
    method.after_step(synthetic)
    assert synthetic.lr.item() == pytest.approx(method.params.min_lr)


def test_experts_are_required_and_checked_in_prepare(buffer, tmp_path):
    method, ctx = context(tmp_path, *overrides(None))
    with pytest.raises(HundredError, match="hundred condense experts"):
        method.prepare(ctx)
    method, ctx = context(tmp_path, *overrides(buffer, "method_params.max_start_epoch=3"))
    with pytest.raises(HundredError, match="at least 4 epochs"):
        method.prepare(ctx)
    method, ctx = context(tmp_path, *overrides(buffer, "model.options={width: 16}"))
    with pytest.raises(HundredError, match="model.options"):
        method.prepare(ctx)


def test_tiny_run_uses_the_learned_lr_to_evaluate(buffer, tmp_path):
    config = build_config(overrides=overrides(
        buffer, f"root={tmp_path}", "name=tiny", "quiet=true", "condense.ipc=1",
        "condense.iterations=2", "condense.eval_runs=1", "condense.eval_epochs=2",
        "condense.eval_augment=[none]", "train.device=cpu"))
    summary = TRACK.run(config)
    assert summary["learned_lr"] > 0 and summary["learned_lr"] != 0.01
    assert summary["eval_lr"] == summary["learned_lr"]
