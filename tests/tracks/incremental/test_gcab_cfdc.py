"""GCAB + CFDC (Cotogni et al., arXiv 2211.12292): weights that a finished task uses are not
changed by a new one, the annealed gates are binary at s_max, old tasks' tokens attend to
features mapped back through the projectors in order, and the method runs exemplar-free and
resumes between tasks to the same result."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.engine.method import SetupContext
from hundred.engine.trainer import build_optimizer
from hundred.models import create
from hundred.registry import get_method
from hundred.tracks.incremental import TRACK, scenario
from hundred.tracks.incremental.methods.gcab_cfdc import (GCABCFDC, DriftProjector, anneal,
                                                         drift_cascade, soft_gates)
from hundred.tracks.incremental.scenario import build_tasks

BASE = ["track=incremental", "method=gcab_cfdc", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}",
        "model.name=convit_ca_tiny", "model.options={embed_dim: 16, depth: 1, num_heads: 2}",
        "data.batch_size=8", "train.epochs=1", "incremental.memory=0",
        "incremental.scenario=B0-Inc2"]


def config(root: Path, *extra: str):
    return build_config(overrides=[*BASE, f"root={root}", *extra])


def method_at_task(index: int, sizes: list[int], weight_decay: float = 0.0):
    """A method and a convit_ca_tiny model brought to the start of task ``index`` by hand
    (task after task, as the scenario calls the hooks, without training)."""
    torch.manual_seed(0)
    run_config = build_config(overrides=[*BASE, f"optim.weight_decay={weight_decay}"])
    method = GCABCFDC({}, run_config)
    model = create("convit_ca_tiny", sizes[0], img_size=16, embed_dim=16, depth=1, num_heads=2)
    context = SetupContext(run_config, torch.device("cpu"), steps_per_epoch=4, epochs=1)
    tasks = build_tasks(sizes)
    old = None
    for task in tasks[: index + 1]:
        if task.index > 0:
            old = copy.deepcopy(model).eval().requires_grad_(False)
            model.head = model.head.grown(task.num_new)
        method.before_task(task, model, old)
        method.setup(model, context)
        if task.index < index:
            method.after_task(task, model)
    return method, model, run_config


def test_weights_under_the_cumulative_mask_get_no_gradient_and_no_update():
    method, model, run_config = method_at_task(1, [2, 2], weight_decay=0.05)
    fc1 = model.backbone.class_attention_block.mlp.fc1.weight
    protected = method.protected_masks(model)["backbone.class_attention_block.mlp.fc1.weight"]
    channels, hidden = method.cumulative  # task 0's binarised gates
    assert torch.equal(protected, torch.outer(hidden, channels))
    assert 0 < protected.mean() < 1  # some weights are task 0's, some are free
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer([model, method.trainable], run_config.optim)
    images, labels = torch.randn(8, 3, 16, 16), torch.tensor([2, 3] * 4)
    method.on_epoch_start(0)
    method.loss(model, images, labels).backward()
    assert torch.all(fc1.grad[protected.bool()] == 0)
    assert fc1.grad[~protected.bool()].abs().sum() > 0  # the free weights do learn
    old_rows = model.head.weight.grad[:2]
    assert torch.all(old_rows == 0) and model.head.weight.grad[2:].abs().sum() > 0
    optimizer.step()  # SGD with weight decay moves every weight it holds ...
    method.after_optimizer_step(model)  # ... and the protected ones are put back
    assert torch.equal(fc1[protected.bool()], before["backbone.class_attention_block.mlp."
                                                    "fc1.weight"][protected.bool()])
    assert not torch.equal(fc1, before["backbone.class_attention_block.mlp.fc1.weight"])
    assert torch.equal(model.head.weight[:2], before["head.weight"][:2])
    for name in ("q", "k", "v", "proj"):  # attention weights between kept channels
        weight = getattr(model.backbone.class_attention_block.attn, name).weight
        keep = torch.outer(channels, channels).bool()
        assert torch.equal(weight[keep], before[f"backbone.class_attention_block.attn.{name}"
                                                f".weight"][keep])


def test_gates_are_binary_at_s_max_and_soft_early_in_an_epoch():
    method, model, _ = method_at_task(0, [2, 2])
    s_max = method.params.s_max
    schedule = [anneal(b, 100, s_max) for b in range(100)]
    assert schedule[0] == pytest.approx(1 / s_max) and schedule == sorted(schedule)
    assert schedule[-1] == pytest.approx(s_max, rel=0.02)
    embeddings = method.trainable["gate_embeddings"].task(0)
    for embedding in embeddings:
        sharp = soft_gates([embedding], s_max)[0]
        step = (embedding > 0).float()
        decided = embedding.abs() > 0.01  # every unit whose embedding is not within 0.01 of 0
        assert decided.float().mean() > 0.9
        assert (sharp - step)[decided].abs().max() < 1e-3
        assert (soft_gates([embedding], 1 / s_max)[0] - 0.5).abs().max() < 0.01  # s = 1/s_max
    # a finished task's gates are exactly binary, whatever the scale
    method.after_task(method.task, model)
    later, _, _ = method_at_task(1, [2, 2])
    for gate in later.gates(0, 1.0):
        assert set(gate.unique().tolist()) <= {0.0, 1.0}


def test_the_cascade_maps_newest_features_back_through_each_projector_in_order():
    torch.manual_seed(1)
    projectors = [DriftProjector(8, 4) for _ in range(3)]  # P_1, P_2, P_3
    features = torch.randn(2, 4, 8)  # task 3's features
    p1, p2, p3 = projectors
    assert torch.allclose(drift_cascade(features, projectors, 3, 0), p1(p2(p3(features))))
    assert torch.allclose(drift_cascade(features, projectors, 3, 1), p2(p3(features)))
    assert torch.equal(drift_cascade(features, projectors, 3, 3), features)
    assert not torch.allclose(drift_cascade(features, projectors, 3, 0), p3(p2(p1(features))))

    # predict: task 0's head reads the class-attention of its token over P_1(P_2(F))
    method, model, _ = method_at_task(2, [2, 1, 1])
    model.eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        scores, _ = method.predict(model, images)
        tokens = model.backbone.patch_tokens(images)
        parts = method.trainable
        mapped = parts["projectors"][0](parts["projectors"][1](tokens))
        token = model.backbone.class_attention(mapped, parts["class_tokens"][0], method.gates(0, 1))
        expected = model.head(parts["head_norms"][0](token))[:, :2]
        swapped = parts["projectors"][1](parts["projectors"][0](tokens))
        token = model.backbone.class_attention(swapped, parts["class_tokens"][0],
                                               method.gates(0, 1))
        wrong = model.head(parts["head_norms"][0](token))[:, :2]
    assert scores.shape == (3, 4)
    assert torch.allclose(scores[:, :2], expected, atol=1e-6)
    assert not torch.allclose(scores[:, :2], wrong, atol=1e-4)


class SpyLoader(BatchLoader):
    """A training loader that records the sample indices of every batch it yields (as in
    test_exemplar_free.py)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.served_indices: list[int] = []

    def _make_batch(self, images, labels, epoch, batch, generator):
        self.served_indices += self._slice(self.epoch_indices(epoch), batch).tolist()
        return super()._make_batch(images, labels, epoch, batch, generator)


def test_a_tiny_run_is_exemplar_free_and_never_reads_an_old_class_image(tmp_path, monkeypatch):
    loaders: list[tuple[SpyLoader, np.ndarray]] = []
    real = scenario.train_loader

    def spy(ctx, dataset, *args, **kwargs):
        loader = real(ctx, dataset, *args, loader_class=SpyLoader, **kwargs)
        loaders.append((loader, dataset.arrays("train").labels))
        return loader

    monkeypatch.setattr(scenario, "train_loader", spy)
    summary = TRACK.run(config(tmp_path, "incremental.memory=8"))  # a memory it must not use
    assert summary["exemplar_free"] is True and summary["classifier"] == "gcab"
    assert summary["nme_step_top1"] is None and len(summary["step_top1"]) == 2
    assert get_method("incremental", "gcab_cfdc").exemplars == "never"
    loader, labels = loaders[1]
    assert loader.served_indices and (labels[loader.served_indices] >= 2).all()
    assert len(set(loader.served_indices)) == 16  # every image of classes 2-3, nothing else
    final = load_file(Path(summary["run_dir"]) / "tasks/task-01/final.safetensors")
    assert "method.projectors.0.net.0.weight" in final


class Killed(Exception):
    """Stands in for a kill between two tasks."""


class Dying(GCABCFDC):
    die_at_task: int | None = None

    def before_task(self, task, model, old_model):
        if task.index == self.die_at_task:
            raise Killed
        super().before_task(task, model, old_model)


def test_a_run_killed_between_tasks_resumes_to_the_same_result(tmp_path):
    extra = ["data.batch_size=16", "train.epochs=2"]
    reference = Dying({}, config(tmp_path, "name=ref", *extra))
    expected = TRACK.run(config(tmp_path, "name=ref", *extra), method=reference)
    killed = Dying({}, config(tmp_path, "name=cut", *extra))
    killed.die_at_task = 1
    with pytest.raises(Killed):
        TRACK.run(config(tmp_path, "name=cut", *extra), method=killed)
    run_dir = Path(expected["run_dir"]).parent / "cut"
    state = torch.load(run_dir / "tasks/task-00/method.state.pt", weights_only=True)
    assert state["task_sizes"] == [2] and len(state["cumulative"]) == 2
    resumed = Dying({}, config(tmp_path, "name=cut", *extra))
    summary = TRACK.run(config(tmp_path, "name=cut", *extra), resume_dir=run_dir, method=resumed)
    assert resumed.task_sizes == reference.task_sizes == [2, 2]
    for mine, theirs in zip(resumed.cumulative, reference.cumulative):
        assert torch.equal(mine, theirs)
    final = load_file(run_dir / "tasks/task-01/final.safetensors")
    for key, value in load_file(Path(expected["run_dir"]) / "tasks/task-01/final.safetensors"
                                ).items():
        assert torch.equal(value, final[key]), key
    assert summary["step_top1"] == expected["step_top1"]
