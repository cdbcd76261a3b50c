"""Continual generalized category discovery: the CGCD-* scenario (stage 0 labelled, later
stages unlabelled and mixed), its clustering-accuracy records, and the defining parts of
Happy (Ma et al., NeurIPS 2024) next to the SimGCD baseline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.report import aggregate, collect_runs, markdown_tables
from hundred.report.collect import validate_summary
from hundred.tracks.incremental import TRACK
from hundred.tracks.incremental.discovery import clustering_record, draw_stages
from hundred.tracks.incremental.discovery_method import entropy_gap
from hundred.tracks.incremental.methods.happy import (Happy, hardness_aware_sample,
                                                      kmeans_new_heads, prototype_hardness,
                                                      soft_entropy_regulariser)
from hundred.tracks.incremental.scenario import build_tasks

# 4 classes, CGCD-2-2x1: stage 0 labels classes 0-1, stages 1 and 2 bring classes 2 and 3
BASE = ["track=incremental", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 20, val_per_class: 4, res: 16}",
        "model.name=convnet_d3", "data.batch_size=8", "train.epochs=1",
        "incremental.scenario=CGCD-2-2x1",
        "method_params={projector_hidden: 32, projector_dim: 16}"]


def config(root: Path, method: str, *extra: str):
    return build_config(overrides=[*BASE, f"method={method}", f"root={root}", *extra])


# -- the scenario's data ------------------------------------------------------------------------
def test_stages_follow_the_protocol():
    labels = np.repeat(np.arange(4), 20)
    tasks = build_tasks([2, 1, 1])
    section = build_config(overrides=["track=incremental", "method=simgcd"]).incremental
    stages = draw_stages(labels, tasks, section, seed=0)
    assert [s.labelled for s in stages] == [True, False, False]
    zero = stages[0].indices
    assert sorted(np.bincount(labels[zero]).tolist()) == [16, 16]  # 0.8 of 20 per known class
    for stage, task in zip(stages[1:], tasks[1:]):
        counts = np.bincount(labels[stage.indices], minlength=4)
        assert counts[task.new_classes[0]] == 16  # 0.8 of the new class's images
        assert counts[: task.num_old].tolist() == [1] * task.num_old  # 0.05 of 20 per old class
        assert stage.old_images == task.num_old
        # a known class's unlabelled images are never its labelled ones
        assert not np.isin(stage.indices[labels[stage.indices] < 2], zero).any()
    again = draw_stages(labels, tasks, section, seed=0)  # a function of the seed: resumable
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(stages, again))


def test_clustering_record_uses_one_mapping_for_all_groups():
    task = build_tasks([2, 1, 1])[2]
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    record = clustering_record(labels, np.array([7, 7, 5, 5, 9, 9, 4, 4]), task,
                               build_tasks([2, 1, 1]))
    assert record["all"] == record["old"] == record["new"] == 100.0
    assert record["row"] == [100.0, 100.0, 100.0]
    # cluster 0 holds both of class 2 and one of class 3: the best mapping is 0->2, 1->3
    record = clustering_record(labels, np.array([5, 5, 6, 6, 0, 0, 0, 1]), task,
                               build_tasks([2, 1, 1]))
    assert record["all"] == pytest.approx(100 * 7 / 8)
    assert record["old"] == 100.0 and record["new"] == 50.0  # old: classes 0-2, new: 3
    assert record["row"] == [100.0, 100.0, 50.0]
    assert record["labelled_classes"] == 100.0
    assert record["discovered_classes"] == 75.0


# -- Happy's parts -------------------------------------------------------------------------
def test_hardness_aware_sampling_picks_harder_classes_more_often():
    # classes 0 and 1 nearly coincide (hard: confusable), class 2 is far from both (easy)
    prototypes = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [1.0, -0.1, 0.0],
                                           [-0.2, 0.0, 1.0]]), dim=1)
    hardness = prototype_hardness(prototypes)
    assert hardness[0] > hardness[2] and hardness[1] > hardness[2]
    generator = torch.Generator().manual_seed(0)
    features, classes = hardness_aware_sample(prototypes, hardness, 0.0, 3000, 0.1, generator)
    counts = torch.bincount(classes, minlength=3)
    assert counts[0] > 2 * counts[2] and counts[1] > 2 * counts[2]
    assert torch.allclose(features, prototypes[classes])  # radius 0: the prototypes
    features, classes = hardness_aware_sample(prototypes, hardness, 0.5, 3000, 0.1, generator)
    spread = (features - prototypes[classes]).std().item()
    assert spread == pytest.approx(0.5, rel=0.1)  # N(0, I) r
    # a high temperature samples uniformly
    _, classes = hardness_aware_sample(prototypes, hardness, 0.0, 3000, 100.0, generator)
    assert torch.bincount(classes, minlength=3).min() > 900


def test_soft_entropy_does_not_force_a_proportion_per_class():
    # 8 old heads and 2 new heads, half the mass on each group, spread evenly within it
    mean_prediction = torch.cat([torch.full((8,), 0.5 / 8), torch.full((2,), 0.25)])
    soft = soft_entropy_regulariser(mean_prediction, 8, (1.0, 1.0, 1.0))
    assert float(soft) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy_gap(mean_prediction)) > 0.1  # SimGCD's term wants 1/10 per head
    starved = torch.cat([torch.full((8,), 0.99 / 8), torch.full((2,), 0.005)])
    assert float(soft_entropy_regulariser(starved, 8, (1.0, 1.0, 1.0))) > 0.5


def test_clustering_guided_init_points_new_heads_at_the_unclaimed_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(3)
    features = torch.cat([c + 0.05 * torch.randn(30, 3, generator=generator) for c in centres])
    heads = kmeans_new_heads(features, old_heads=centres[:2], clusters=3, new=1, seed=0)
    assert heads.shape == (1, 3)
    assert float(heads[0] @ centres[2]) > 0.99


# -- whole runs ------------------------------------------------------------------------------
class Spy(Happy):
    """Happy that records every label it is given: in batches and in the stage's images."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[int, list[int]] = {}

    def _record(self, labels):
        self.seen.setdefault(self.task.index, []).extend(labels.tolist())

    def loss(self, model, images, labels):
        self._record(labels)
        return super().loss(model, images, labels)

    def _features(self, model):
        features, labels, predictions = super()._features(model)
        self._record(labels)
        return features, labels, predictions


Spy.track, Spy.name = "incremental", "happy"


def test_the_method_never_sees_a_label_of_an_unlabelled_stage(tmp_path):
    run_config = config(tmp_path, "happy")
    spy = Spy({"projector_hidden": 32, "projector_dim": 16}, run_config)
    summary = TRACK.run(run_config, method=spy)
    assert set(spy.seen) == {0, 1, 2}
    assert set(spy.seen[0]) == {0, 1}  # stage 0 is labelled
    for stage in (1, 2):  # the k-means, the prototypes and every batch saw -1 only
        assert spy.seen[stage] and set(spy.seen[stage]) == {-1}
    assert [s["old_images"] for s in summary["stages"]] == [0, 2, 3]  # old classes were there


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cgcd")
    return root, {m: TRACK.run(config(root, m, f"name={m}")) for m in ("simgcd", "happy")}


@pytest.mark.parametrize("method", ["simgcd", "happy"])
def test_a_tiny_run_reports_all_old_new_per_stage(runs, method):
    summary = runs[1][method]
    assert summary["scenario"] == "CGCD-2-2x1" and summary["exemplar_free"] is True
    assert summary["classes_per_step"] == [2, 3, 4]
    for key in ("cgcd_all", "cgcd_new", "step_top1"):
        assert len(summary[key]) == 3 and all(0 <= v <= 100 for v in summary[key])
    assert summary["cgcd_old"][0] is None and all(0 <= v <= 100 for v in summary["cgcd_old"][1:])
    assert summary["step_top1"] == summary["cgcd_all"]
    assert summary["last_accuracy"] == summary["cgcd_all"][-1]
    assert summary["avg_incremental_accuracy"] == pytest.approx(np.mean(summary["cgcd_all"]))
    matrix = summary["accuracy_matrix"]
    assert matrix[0][1] is None and all(v is not None for v in matrix[2])
    assert math.isfinite(summary["avg_forgetting"])
    assert summary["cgcd_last_old"] == summary["cgcd_old"][-1]
    validate_summary(summary)  # the track's ReportSpec accepts it


def test_the_report_shows_both_methods(runs):
    table = markdown_tables(aggregate(collect_runs([runs[0]])))
    assert "last old (C-GCD)" in table and "last new (C-GCD)" in table
    assert any(line.startswith("| happy") for line in table.splitlines())
    assert any(line.startswith("| simgcd") for line in table.splitlines())


def test_happy_keeps_prototypes_and_logs_them(runs):
    logs = runs[1]["happy"]["method_logs"]
    assert [log["prototypes"] for log in logs] == [2, 3, 4]
    assert logs[0]["radius"] > 0


class Killed(Exception):
    """Stands in for a kill between two stages."""


class DiesAtStageTwo(Happy):
    def before_task(self, task, model, old_model):
        if task.index == 2:
            raise Killed
        super().before_task(task, model, old_model)


DiesAtStageTwo.track, DiesAtStageTwo.name = "incremental", "happy"


def test_resume_at_a_stage_boundary_ends_with_the_same_result(tmp_path, runs):
    expected = runs[1]["happy"]
    cut = config(tmp_path, "happy", "name=happy")
    with pytest.raises(Killed):
        TRACK.run(cut, method=DiesAtStageTwo(cut.method_params, cut))
    run_dir = tmp_path / "incremental/happy/happy"
    assert (run_dir / "tasks/task-01/done.json").is_file()
    assert not (run_dir / "tasks/task-02/done.json").exists()
    summary = TRACK.run(cut, resume_dir=run_dir)
    for key in ("cgcd_all", "cgcd_old", "cgcd_new", "accuracy_matrix"):
        assert summary[key] == expected[key], key
    final = load_file(run_dir / "tasks/task-02/final.safetensors")
    reference = load_file(Path(expected["run_dir"]) / "tasks/task-02/final.safetensors")
    for key, value in reference.items():
        assert torch.equal(value, final[key]), key


@pytest.mark.parametrize("method, scenario", [("finetune", "CGCD-2-2x1"),
                                              ("wa", "CGCD-2-2x1"),
                                              ("simgcd", "B0-Inc2"), ("happy", "B0-Inc2")])
def test_wrong_scenario_method_pairs_are_refused_before_anything_runs(tmp_path, method,
                                                                      scenario):
    with pytest.raises(HundredError, match="category-discovery|class-incremental method"):
        TRACK.run(config(tmp_path, method, f"incremental.scenario={scenario}",
                         "method_params={}", "incremental.memory=8"))
    assert not any(tmp_path.iterdir())
