"""Continual generalized category discovery (C-GCD): the ``CGCD-<known>-<stages>x<new>``
scenario of the incremental track.

The setting of Ma et al., "Happy: A Debiased Learning Framework for Continual Generalized
Category Discovery", NeurIPS 2024 (Sec. 3; its data protocol as in the official code):

* class order as in the class-incremental scenario (``np.random.seed(1993)`` permutation or
  an explicit list); output ``k`` is the ``k``-th class to arrive;
* stage 0 trains on *labelled* images of the ``known`` first classes: a share
  ``incremental.cgcd_labelled_fraction`` (0.8) of each class's training images; the rest of
  each known class is held back as the pool its unlabelled images are later drawn from;
* each of the ``stages`` later stages gives *unlabelled* images: a share
  ``incremental.cgcd_new_fraction`` (0.8) of each of its ``new`` classes' images, mixed with
  a share ``incremental.cgcd_old_fraction`` (0.05: the mixing proportion) of the images of
  every old class, drawn afresh in every stage (from the held-back pool for a known class,
  from all its images for a class discovered in an earlier stage); the method is told how
  many new classes there are, not which images are new, and no label: the scenario replaces
  every label of these stages by -1 before the method sees a batch;
* nothing of a past stage is kept (rehearsal-free);
* after each stage, clustering accuracy on the val images of every class seen so far: the
  model's prediction over all heads (argmax) is a cluster id, mapped to classes by the one
  Hungarian assignment (:mod:`~hundred.tracks.incremental.clustering`); All, Old (classes
  seen before the stage) and New (the stage's), plus a row of the accuracy matrix (the
  accuracy on each stage's class group under that mapping).

The indices of every stage are drawn once, from the run's seed, before anything trains, so a
resumed run sees the same images. Stage boundaries are checkpoints as in the class-incremental
scenario (``tasks/task-XX/``: ``done.json``, ``final.safetensors``, ``method.state.pt``;
each stage's epochs checkpointed by the engine).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from hundred.config import RunConfig, with_values
from hundred.data import Dataset
from hundred.engine.checkpoint import strip_prefix
from hundred.engine.run import (RunContext, eval_loader, finish_run, image_size, load_data,
                                running, train_loader)
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.tracks.incremental.clustering import cluster_to_class
from hundred.tracks.incremental.config import IncrementalConfig
from hundred.tracks.incremental.discovery_method import UNLABELLED, DiscoveryMethod
from hundred.tracks.incremental.method import IncrementalMethod, Task, TaskData
from hundred.tracks.incremental.metrics import matrix_to_json, summarise
from hundred.tracks.incremental.scenario import (EXEMPLAR_FREE, build_tasks,
                                                 class_order, extract, initial_backbone,
                                                 read_boundary, relabelled, task_config,
                                                 write_boundary)

SCENARIO = re.compile(r"CGCD-(\d+)-(\d+)x(\d+)")


def is_discovery(scenario: str) -> bool:
    """Whether ``scenario`` names the C-GCD scenario (``CGCD-<known>-<stages>x<new>``)."""
    return scenario.startswith("CGCD-")


def stage_sizes(scenario: str, num_classes: int) -> list[int]:
    """``"CGCD-50-5x10"`` -> ``[50, 10, 10, 10, 10, 10]`` (classes new in each stage)."""
    match = SCENARIO.fullmatch(scenario)
    if match is None:
        raise HundredError(f"scenario {scenario!r} is not of the form CGCD-<known>-<stages>x<new>")
    known, stages, new = (int(g) for g in match.groups())
    if known < 1 or stages < 1 or new < 1:
        raise HundredError(f"scenario {scenario}: known classes, stages and new classes per "
                           f"stage must each be at least 1")
    if known + stages * new > num_classes:
        raise HundredError(f"scenario {scenario} needs {known + stages * new} classes; the "
                           f"dataset has {num_classes}")
    return [known] + [new] * stages


def check_pairing(method: type[IncrementalMethod], scenario: IncrementalConfig) -> None:
    """Discovery methods run only in a C-GCD scenario and every other method only in a
    class-incremental one: HundredError otherwise (called before the run writes anything)."""
    discovery = is_discovery(scenario.scenario)
    is_discoverer = issubclass(method, DiscoveryMethod)
    name = f"incremental/{method.name or method.__name__}"
    if discovery and not is_discoverer:
        raise HundredError(
            f"{name} is a class-incremental method: it needs labels in every task, and the "
            f"C-GCD scenario {scenario.scenario} gives unlabelled stages. Choose a discovery "
            f"method (simgcd, happy) or a B<base>-Inc<step> scenario")
    if is_discoverer and not discovery:
        raise HundredError(
            f"{name} is a category-discovery method: it runs in the C-GCD scenario "
            f"(--scenario CGCD-<known>-<stages>x<new>, e.g. CGCD-50-5x10), not in the "
            f"class-incremental {scenario.scenario}")
    if discovery and scenario.language_targets:
        raise HundredError("incremental.language_targets replaces the classifier with named "
                           "class targets; the C-GCD scenario discovers unnamed clusters")


def _share(fraction: float, count: int) -> int:
    """``round(fraction * count)``, at least one image when the fraction is positive."""
    return 0 if fraction == 0 or count == 0 else min(count, max(1, round(fraction * count)))


@dataclass(frozen=True)
class StageImages:
    """The training images (train-split indices) of one stage, and whether it is labelled."""

    indices: np.ndarray
    labelled: bool
    old_images: int  # how many of them belong to classes seen before the stage


def draw_stages(labels: np.ndarray, tasks: list[Task], config: IncrementalConfig,
                seed: int) -> list[StageImages]:
    """Every stage's images, drawn at once from ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, 4127])  # the scenario's own stream
    known = tasks[0].new_classes
    pool: dict[int, np.ndarray] = {}  # what an old class's unlabelled images come from
    stages: list[StageImages] = []
    labelled: list[np.ndarray] = []
    for c in known:
        images = rng.permutation(np.flatnonzero(labels == c))
        cut = _share(config.cgcd_labelled_fraction, len(images))
        labelled.append(images[:cut])
        pool[c] = images[cut:]
    stages.append(StageImages(np.sort(np.concatenate(labelled)), True, 0))
    for task in tasks[1:]:
        parts, old_count = [], 0
        for c in range(task.num_old):
            count = _share(config.cgcd_old_fraction, int((labels == c).sum()))
            drawn = rng.choice(pool[c], size=min(count, len(pool[c])), replace=False)
            parts.append(drawn)
            old_count += len(drawn)
        for c in task.new_classes:
            images = np.flatnonzero(labels == c)
            parts.append(rng.choice(images, size=_share(config.cgcd_new_fraction, len(images)),
                                    replace=False))
            pool[c] = images  # later stages draw a discovered class from all its images
        stages.append(StageImages(np.sort(np.concatenate(parts)).astype(np.int64), False,
                                  old_count))
    return stages


class HiddenLabels:
    """A loader whose batches carry :data:`UNLABELLED` in place of every label."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        for images, labels in self.loader:
            yield images, torch.full_like(labels, UNLABELLED)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


def clustering_record(labels: np.ndarray, clusters: np.ndarray, task: Task,
                      tasks: list[Task]) -> dict[str, Any]:
    """Clustering accuracy (%) under the one Hungarian mapping: All, Old (classes seen before
    ``task``), New (its classes), the accuracy on each stage's class group (a row of the
    matrix), and the split of the official code's "hard" numbers: the labelled classes of
    stage 0 against all classes discovered since."""
    mapping = cluster_to_class(labels, clusters)
    correct = np.array([mapping.get(int(c), -1) for c in clusters]) == labels

    def percent(mask: np.ndarray) -> float | None:
        return float(100.0 * correct[mask].mean()) if mask.any() else None

    stage_of = np.empty(task.num_seen, dtype=np.int64)
    for earlier in tasks[: task.index + 1]:
        stage_of[list(earlier.new_classes)] = earlier.index
    group = stage_of[labels]
    return {"all": percent(np.ones_like(correct)), "old": percent(labels < task.num_old),
            "new": percent(labels >= task.num_old),
            "labelled_classes": percent(group == 0), "discovered_classes": percent(group > 0),
            "row": [percent(group == j) for j in range(task.index + 1)]}


class DiscoveryRun:
    """One C-GCD run: the stages, their images and the per-stage records."""

    def __init__(self, ctx: RunContext, method: DiscoveryMethod, dataset: Dataset,
                 init_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.ctx, self.config, self.method = ctx, ctx.config, method
        self.init_weights = init_weights  # incremental.init's backbone, for a fresh stage 0
        inc = self.config.incremental
        self.order = class_order(dataset.num_classes, inc)
        self.dataset = relabelled(dataset, self.order)
        self.tasks = build_tasks(stage_sizes(inc.scenario, dataset.num_classes))
        self.train = self.dataset.arrays("train")
        self.val = self.dataset.arrays("val")
        self.stages = draw_stages(self.train.labels, self.tasks, inc, self.config.seed)
        self.records: list[dict[str, Any]] = []
        self.tasks_dir = ctx.run_dir / "tasks"
        self.model: Classifier | None = None
        self.restored_method_weights: dict[str, torch.Tensor] | None = None

    def _new_model(self, num_classes: int) -> Classifier:
        config = self.config.model
        model = create(config.name, num_classes, img_size=image_size(self.config, self.dataset),
                       **config.options)
        model.head = self.method.make_head(model.feature_dim, num_classes)
        return model

    def _task_dir(self, task: Task) -> Path:
        return self.tasks_dir / f"task-{task.index:02d}"

    def _stage_config(self, task: Task) -> RunConfig:
        """The run's training config, stage 0 with ``first_task_epochs``; the unlabelled
        stages at ``optim.lr * cgcd_lr_scale``."""
        config = task_config(self.config, task)
        if task.index == 0:
            return config
        return with_values(config, {"optim.lr": config.optim.lr *
                                    config.incremental.cgcd_lr_scale},
                           origin="incremental.cgcd_lr_scale")

    # -- one stage --------------------------------------------------------------------------
    def run_stage(self, task: Task) -> dict[str, Any]:
        ctx, method, stage = self.ctx, self.method, self.stages[task.index]
        torch.manual_seed(self.config.seed * 1009 + task.index)
        old_model = None
        if self.model is None:
            self.model = self._new_model(task.num_seen)
            if self.init_weights is not None:  # (a restored stage boundary has its own)
                self.model.backbone.load_state_dict(self.init_weights, strict=True)
        else:
            if method.keeps_old_model:
                old_model = copy.deepcopy(self.model).eval().requires_grad_(False).to(ctx.device)
            self.model.head = self.model.head.grown(task.num_new)
        model = self.model.to(ctx.device)
        task_dir = self._task_dir(task)
        if ctx.dist.is_main:
            task_dir.mkdir(parents=True, exist_ok=True)
        indices = stage.indices
        loader: Any = train_loader(ctx, self.dataset, indices=indices, seed_offset=task.index,
                                   views=method.views)

        def plain() -> Any:
            batches = eval_loader(ctx, self.dataset, "train", indices=indices)
            return batches if stage.labelled else HiddenLabels(batches)

        if not stage.labelled:
            loader = HiddenLabels(loader)
        method.task_data = TaskData(loader, plain, indices)
        try:
            method.before_task(task, model, old_model)
            trainer = Trainer(self._stage_config(task), model, method, loader, None,
                              ctx.device, task_dir, ctx.dist, ctx.console)
            if self.restored_method_weights is not None:
                method.checkpointed().load_state_dict(self.restored_method_weights)
                self.restored_method_weights = None
            # the method's setup may have drawn from the global RNG (a resumed run builds the
            # modules it restores): training starts from the same state either way
            torch.manual_seed(self.config.seed * 1009 + task.index + 7919)
            trainer.resume()
            trainer.fit()
            method_log = method.after_task(task, model)
        finally:
            method.task_data = None
        record = {"task": task.index, "classes": task.num_seen,
                  "kind": "labelled" if stage.labelled else "unlabelled",
                  "train_images": int(len(indices)), "old_images": stage.old_images,
                  "cgcd": self.evaluate(task, model), "method_log": method_log}
        if ctx.dist.is_main:
            write_boundary(task_dir, model, method, record)
        return record

    def evaluate(self, task: Task, model: Classifier) -> dict[str, Any]:
        """Clustering accuracy on the val images of all classes seen so far."""
        if not self.ctx.dist.is_main:
            return {}
        seen = np.flatnonzero(self.val.labels < task.num_seen)
        logits, _, labels = extract(
            model, eval_loader(self.ctx, self.dataset, "val", indices=seen), self.method.predict)
        return clustering_record(labels.numpy(), logits.argmax(1).numpy(), task, self.tasks)

    # -- resume -----------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the finished stages of a resumed run; returns the first stage still to do
        (a stage boundary that does not load ends the restore with a warning)."""
        last, weights, state = None, None, None
        for task in self.tasks:
            task_dir = self._task_dir(task)
            if not (task_dir / "done.json").is_file():
                break
            try:
                record, weights, state = read_boundary(task_dir, ("cgcd",))
            except ValueError as error:  # a damaged boundary: resume from the one before
                where = f"after stage {last.index}" if last else "from stage 0"
                self.ctx.console.print(f"warning: {error}; resuming {where}")
                break
            self.records.append(record)
            last = task
        if last is None:
            self.records = []
            return 0
        self.model = self._new_model(last.num_seen)
        self.model.load_state_dict({k: v for k, v in weights.items()
                                    if not k.startswith("method.")})
        self.restored_method_weights = strip_prefix(weights, "method.")
        if state is not None:
            self.method.load_state_dict(state)
        return last.index + 1

    # -- whole run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start = self.restore() if self.ctx.resumed else 0
        for task in self.tasks[start:]:
            record = self.run_stage(task)
            self.records.append(record)
            if self.ctx.dist.is_main:
                self._log(task, record)
        return self.summary()

    def _log(self, task: Task, record: dict[str, Any]) -> None:
        scores = record["cgcd"]

        def text(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        self.ctx.console.print(
            f"stage {task.index}/{task.count - 1} ({record['kind']}, {record['train_images']} "
            f"images, {record['old_images']} of old classes)  classes {task.num_seen}  "
            f"all {text(scores['all'])}  old {text(scores['old'])}  new {text(scores['new'])}",
            highlight=False)

    def summary(self) -> dict[str, Any]:
        """Clustering accuracies per stage, the accuracy matrix and the headline numbers."""
        if not self.ctx.dist.is_main:
            return {}
        inc = self.config.incremental
        scores = [r["cgcd"] for r in self.records]
        matrix = np.full((len(scores),) * 2, np.nan)
        for t, score in enumerate(scores):
            matrix[t, : t + 1] = [np.nan if v is None else v for v in score["row"]]
        step_top1 = [s["all"] for s in scores]
        summary: dict[str, Any] = {
            "data": self.dataset.name, "model": self.config.model.name,
            "memory": EXEMPLAR_FREE, "memory_kind": "none", "exemplar_free": True,
            "class_order": self.order.tolist(), "classifier": self.method.classifier,
            "cgcd_protocol": {"labelled_fraction": inc.cgcd_labelled_fraction,
                              "new_fraction": inc.cgcd_new_fraction,
                              "old_fraction": inc.cgcd_old_fraction,
                              "lr_scale": inc.cgcd_lr_scale},
            "stages": [{k: r[k] for k in ("kind", "train_images", "old_images")}
                       for r in self.records],
            "classes_per_step": [r["classes"] for r in self.records],
            "step_top1": step_top1, "accuracy_matrix": matrix_to_json(matrix),
            **summarise(step_top1, matrix),
            "cgcd_all": step_top1, "cgcd_old": [s["old"] for s in scores],
            "cgcd_new": [s["new"] for s in scores],
            "cgcd_labelled_classes": [s["labelled_classes"] for s in scores],
            "cgcd_discovered_classes": [s["discovered_classes"] for s in scores],
            "cgcd_last_old": scores[-1]["old"], "cgcd_last_new": scores[-1]["new"],
            "nme_step_top1": None, "nme_accuracy_matrix": None,
        }
        summary["old_accuracy"], summary["new_accuracy"] = summary["cgcd_old"], summary["cgcd_new"]
        summary["method_logs"] = [r.get("method_log", {}) for r in self.records]
        return summary


def run(config: RunConfig, method: IncrementalMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Run a discovery ``method`` through the C-GCD scenario; returns the summary."""
    check_pairing(type(method), config.incremental)  # before the run writes anything
    assert isinstance(method, DiscoveryMethod)
    dataset = load_data(config)
    init_weights = initial_backbone(config, dataset, resume_dir)
    with running(config, resume_dir) as ctx:
        summary = DiscoveryRun(ctx, method, dataset, init_weights).run()
        title = f"incremental/{config.method}, {config.incremental.scenario} on {dataset.name}"
        return finish_run(ctx, summary, title, dataset)
