"""Defining behaviour of the class-incremental methods, at tiny scale on real digits."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.tracks.incremental import TRACK
from hundred.tracks.incremental.methods.wa import WA

BASE = ["track=incremental", "train.device=cpu", "quiet=true", "data.source=digits",
        "data.options={res: 16}", "model.name=resnet20", "model.options={width: 8}",
        "data.batch_size=32", "data.augment=flip", "optim.lr=0.1", "train.epochs=5",
        "incremental.scenario=B0-Inc5", "incremental.memory=100", "incremental.class_order_seed=0"]


def config(tmp_path, method, *extra):
    return build_config(overrides=BASE + [f"method={method}", f"root={tmp_path}", *extra])


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    return {m: TRACK.run(config(root, m)) for m in ("finetune", "replay", "icarl", "wa", "joint")}


def test_finetune_forgets_while_memory_methods_keep_old_classes(summaries):
    finetune_old = summaries["finetune"]["old_accuracy"][-1]
    assert finetune_old < 10  # catastrophic forgetting: old classes are near 0
    for method in ("replay", "icarl", "wa"):
        assert summaries[method]["old_accuracy"][-1] > finetune_old + 30, method


def test_joint_is_the_upper_bound(summaries):
    joint = summaries["joint"]["last_accuracy"]
    for method in ("finetune", "replay", "icarl", "wa"):
        assert joint >= summaries[method]["last_accuracy"] - 1.0, method


def test_summary_holds_matrix_curves_and_headline_metrics(summaries):
    wa = summaries["wa"]
    assert wa["classes_per_step"] == [5, 10]
    assert wa["accuracy_matrix"][0][1] is None and wa["accuracy_matrix"][1][0] is not None
    assert wa["avg_incremental_accuracy"] == pytest.approx(sum(wa["step_top1"]) / 2)
    assert wa["nme_step_top1"] is not None and summaries["finetune"]["nme_step_top1"] is None
    assert summaries["icarl"]["classifier"] == "nme"
    assert summaries["icarl"]["step_top1"] == summaries["icarl"]["nme_step_top1"]


def test_wa_clips_weights_and_logs_alignment(summaries):
    run_dir = Path(summaries["wa"]["run_dir"])
    weights = load_file(run_dir / "tasks" / "task-01" / "final.safetensors")
    assert (weights["head.weight"] >= 0).all()
    logs = summaries["wa"]["method_logs"]
    assert logs[0] == {"weight_clipping": True} and "gamma" in logs[1]


def test_wa_without_clipping_is_switchable_and_logged(tmp_path):
    summary = TRACK.run(config(tmp_path, "wa", "method_params={weight_clipping: false}",
                                  "train.epochs=1", "incremental.first_task_epochs=2"))
    assert summary["method_logs"][1]["weight_clipping"] is False
    tasks = Path(summary["run_dir"]) / "tasks"
    epochs = [len((tasks / t / "metrics.jsonl").read_text().splitlines())
              for t in ("task-00", "task-01")]
    assert epochs == [2, 1]  # the first task trains for first_task_epochs, the rest for epochs


def test_resume_mid_task_ends_equal(tmp_path, monkeypatch):
    reference = TRACK.run(config(tmp_path, "wa", "name=ref", "train.epochs=2"))

    class Killed(Exception):
        pass

    def die(self, epoch):
        if self.task.index == 1 and epoch == 1:
            raise Killed

    monkeypatch.setattr(WA, "on_epoch_start", die)
    with pytest.raises(Killed):
        TRACK.run(config(tmp_path, "wa", "name=cut", "train.epochs=2"))
    monkeypatch.undo()
    cut = tmp_path / "incremental" / "wa" / "cut"
    assert (cut / "tasks" / "task-00" / "done.json").is_file()
    assert not (cut / "tasks" / "task-01" / "done.json").exists()
    resumed = TRACK.run(build_config([cut / "config.yaml"]), resume_dir=cut)
    for key in ("step_top1", "accuracy_matrix", "nme_step_top1", "avg_forgetting"):
        assert resumed[key] == reference[key], key
    a = load_file(Path(reference["run_dir"]) / "tasks/task-01/final.safetensors")
    b = load_file(cut / "tasks/task-01/final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "summary.json").read_text())["last_accuracy"] == reference["last_accuracy"]
