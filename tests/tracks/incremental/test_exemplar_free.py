"""Exemplar-free as a scenario option: ``incremental.memory=0`` is valid and reported as
exemplar-free; methods that need exemplars refuse it before anything is written; methods that
declare ``exemplars = "never"`` are never served an image of an old class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.errors import HundredError
from hundred.registry import get_method
from hundred.report import aggregate, collect_runs, markdown_tables
from hundred.tracks.incremental import TRACK, scenario
from hundred.tracks.incremental.memory import exemplar_free
from hundred.tracks.incremental.method import IncrementalMethod
from hundred.tracks.incremental.scenario import EXEMPLAR_FREE

# 4 classes, B0-Inc2: task 0 learns classes 0-1, task 1 classes 2-3 (arrival positions)
BASE = ["track=incremental", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}",
        "model.name=convnet_d3", "data.batch_size=8", "train.epochs=1",
        "incremental.scenario=B0-Inc2", "incremental.selection=random"]


def config(root: Path, method: str, *extra: str):
    return build_config(overrides=[*BASE, f"method={method}", f"root={root}", *extra])


class SpyLoader(BatchLoader):
    """A training loader that records the sample indices and labels of every batch it yields."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.served_indices: list[int] = []
        self.served_labels: list[int] = []

    def _make_batch(self, images, labels, epoch, batch, generator):
        self.served_indices += self._slice(self.epoch_indices(epoch), batch).tolist()
        self.served_labels += labels.tolist()
        return super()._make_batch(images, labels, epoch, batch, generator)


@pytest.fixture
def served(monkeypatch) -> list[tuple[SpyLoader, np.ndarray]]:
    """Every training loader the scenario builds (one a task, in order), with the labels (in
    arrival positions) of the training split it draws from."""
    loaders: list[tuple[SpyLoader, np.ndarray]] = []
    real = scenario.train_loader

    def spy(ctx, dataset, *args, **kwargs):
        loader = real(ctx, dataset, *args, loader_class=SpyLoader, **kwargs)
        loaders.append((loader, dataset.arrays("train").labels))
        return loader

    monkeypatch.setattr(scenario, "train_loader", spy)
    return loaders


def old_class_images(loader: SpyLoader, labels: np.ndarray, num_old: int) -> int:
    """How many images of classes that arrived before the task the loader served."""
    assert loader.served_indices, "the loader served nothing"
    assert labels[loader.served_indices].tolist() == loader.served_labels
    return int((labels[loader.served_indices] < num_old).sum())


def test_a_never_method_reads_no_old_class_image_while_replay_does(tmp_path, served):
    # the scenario keeps a memory (8), but finetune declares exemplars = "never"
    finetune = TRACK.run(config(tmp_path, "finetune", "incremental.memory=8"))
    assert len(served) == 2
    assert old_class_images(*served[1], num_old=2) == 0
    assert len(served[1][0].served_indices) == 16  # every image of classes 2-3, nothing else
    assert finetune["memory"] == EXEMPLAR_FREE and finetune["exemplar_free"] is True
    assert finetune["nme_step_top1"] is None  # no exemplar means: no NME

    served.clear()
    replay = TRACK.run(config(tmp_path, "replay", "incremental.memory=8"))
    assert old_class_images(*served[0], num_old=0) == 0
    assert old_class_images(*served[1], num_old=2) == 8  # 4 exemplars of each old class
    assert replay["memory"] == 8 and replay["exemplar_free"] is False

    table = markdown_tables(aggregate(collect_runs([tmp_path])))
    finetune_row = next(line for line in table.splitlines() if line.startswith("| finetune"))
    replay_row = next(line for line in table.splitlines() if line.startswith("| replay"))
    assert EXEMPLAR_FREE in finetune_row and EXEMPLAR_FREE not in replay_row


class Plain(IncrementalMethod):
    """Cross-entropy; declares nothing, so it uses exemplars when the scenario keeps some."""

    def loss(self, model, images, labels):
        return F.cross_entropy(model(images), labels)


Plain.track, Plain.name = "incremental", "finetune"


def test_memory_zero_runs_an_optional_method_exemplar_free(tmp_path, served):
    assert Plain.exemplars == "optional" and Plain.uses_memory
    run_config = config(tmp_path, "finetune", "incremental.memory=0")
    summary = TRACK.run(run_config, method=Plain({}, run_config))
    assert old_class_images(*served[1], num_old=2) == 0
    assert summary["memory"] == EXEMPLAR_FREE and summary["exemplar_free"] is True
    assert summary["nme_step_top1"] is None
    run_dir = Path(summary["run_dir"])
    assert '"memory_size": 0' in (run_dir / "tasks/task-01/done.json").read_text()


def test_joint_accepts_memory_zero_but_is_the_upper_bound_not_exemplar_free(tmp_path, served):
    summary = TRACK.run(config(tmp_path, "joint", "incremental.memory=0"))
    assert old_class_images(*served[1], num_old=2) == 16  # all data of the old classes
    assert summary["exemplar_free"] is False and summary["memory"] == "all seen data"


@pytest.mark.parametrize("method", ["replay", "icarl", "wa"])
@pytest.mark.parametrize("budget", [["incremental.memory=0"],
                                    ["incremental.memory=2000", "incremental.memory_per_class=0"]])
def test_methods_that_need_exemplars_refuse_an_exemplar_free_scenario(tmp_path, method, budget):
    with pytest.raises(HundredError, match=r"cannot run exemplar-free.*incremental\.memory > 0"):
        TRACK.run(config(tmp_path, method, *budget))
    assert not any(tmp_path.iterdir())  # refused before the run wrote anything


def test_the_scenario_refuses_a_method_built_for_another_memory(tmp_path):
    replay = get_method("incremental", "replay")({}, config(tmp_path, "replay",
                                                             "incremental.memory=8"))
    with pytest.raises(HundredError, match="exemplar-free"):
        TRACK.run(config(tmp_path, "replay", "incremental.memory=0"), method=replay)
    assert not any(tmp_path.iterdir())


def test_declarations():
    needs = {m: get_method("incremental", m).exemplars
             for m in ("finetune", "joint", "replay", "icarl", "wa")}
    assert needs == {"finetune": "never", "joint": "never", "replay": "required",
                     "icarl": "required", "wa": "required"}
    assert not get_method("incremental", "finetune").uses_memory
    assert get_method("incremental", "wa").uses_memory

    class Legacy(Plain):  # a method written before ``exemplars``: ``uses_memory`` alone
        uses_memory = False

    assert Legacy.exemplars == "never"
    with pytest.raises(TypeError, match="must be one of"):
        type("Bad", (Plain,), {"exemplars": "sometimes"})
    with pytest.raises(TypeError, match="contradicts"):
        type("Bad", (Plain,), {"exemplars": "never", "uses_memory": True})


def test_exemplar_free_budgets(tmp_path):
    def section(*extra):
        return config(tmp_path, "finetune", *extra).incremental

    assert exemplar_free(section("incremental.memory=0"))
    assert exemplar_free(section("incremental.memory_per_class=0"))
    assert not exemplar_free(section("incremental.memory=0", "incremental.memory_per_class=5"))
    assert not exemplar_free(section("incremental.memory=20"))
