"""A class-incremental run resumed at a task boundary continues with the method's own
trainable modules and state as they were, and ends equal to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hundred.config import build_config
from hundred.tracks.incremental import TRACK
from hundred.tracks.incremental.method import IncrementalMethod


class Killed(Exception):
    """Stands in for a kill between two tasks."""


class WithProjector(IncrementalMethod):
    """Cross-entropy plus a small penalty through a trainable projector of the features;
    counts its steps in its own state."""

    uses_memory = False
    die_at_task: int | None = None

    def setup(self, model, ctx):
        if "projector" not in self.trainable:
            self.add_trainable("projector", nn.Linear(model.feature_dim, 3))
        self.steps = getattr(self, "steps", 0)

    def before_task(self, task, model, old_model):
        if task.index == self.die_at_task:
            raise Killed
        super().before_task(task, model, old_model)

    def loss(self, model, images, labels):
        self.steps += 1
        logits, features = model(images, return_features=True)
        return F.cross_entropy(logits, labels) + 0.1 * self.trainable["projector"](features).pow(2).mean()

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])


WithProjector.track, WithProjector.name = "incremental", "finetune"


def config(root: Path, name: str):
    return build_config(overrides=[
        "track=incremental", "method=finetune", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}",
        "model.name=convnet_d3", "data.batch_size=16", "train.epochs=2", "incremental.memory=0",
        "incremental.scenario=B0-Inc2", f"root={root}", f"name={name}"])


def killed_before_task_1(root: Path) -> Path:
    """A run of ``cut`` stopped after its first task; returns its run directory."""
    killed = WithProjector({}, config(root, "cut"))
    killed.die_at_task = 1
    with pytest.raises(Killed):
        TRACK.run(config(root, "cut"), method=killed)
    return root / "incremental/finetune/cut"


def test_resume_between_tasks_restores_the_methods_modules_and_state(tmp_path):
    reference = WithProjector({}, config(tmp_path, "ref"))
    expected = TRACK.run(config(tmp_path, "ref"), method=reference)
    run_dir = killed_before_task_1(tmp_path)
    assert (run_dir / "tasks/task-00/done.json").is_file()
    assert not (run_dir / "tasks/task-01/done.json").exists()
    resumed = WithProjector({}, config(tmp_path, "cut"))
    summary = TRACK.run(config(tmp_path, "cut"), resume_dir=run_dir, method=resumed)
    assert resumed.steps == reference.steps  # the method's state crossed the boundary
    for key, value in reference.trainable.state_dict().items():
        assert torch.equal(value, resumed.trainable.state_dict()[key]), key
    final = load_file(run_dir / "tasks/task-01/final.safetensors")
    for key, value in load_file(Path(expected["run_dir"]) / "tasks/task-01/final.safetensors").items():
        assert torch.equal(value, final[key]), key
    assert any(key.startswith("method.projector.") for key in final)
    assert summary["step_top1"] == expected["step_top1"]


def test_a_corrupt_task_boundary_falls_back_to_the_one_before(tmp_path, capsys):
    expected = TRACK.run(config(tmp_path, "ref"), method=WithProjector({}, config(tmp_path, "ref")))
    run_dir = killed_before_task_1(tmp_path)
    (run_dir / "tasks/task-00/done.json").write_text("{")  # the only finished task, damaged
    summary = TRACK.run(config(tmp_path, "cut"), resume_dir=run_dir,
                        method=WithProjector({}, config(tmp_path, "cut")))
    assert "task-00/done.json is unreadable" in capsys.readouterr().err
    assert summary["step_top1"] == expected["step_top1"]  # redone from the start, same result
