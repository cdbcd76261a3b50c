"""The class-incremental scenario: classes arrive in tasks; after each task, evaluate on all
classes seen so far with the linear head and the nearest-mean-of-exemplars classifier.

Conventions (Rebuffi et al., iCaRL, CVPR 2017; Hou et al., UCIR, CVPR 2019):

* class order: sort the dataset's classes, then ``np.random.seed(1993);
  np.random.permutation(num_classes)`` (or an explicit list); the model's output ``k`` is the
  ``k``-th class to arrive;
* ``B0-Inc10``: ten classes per task from scratch; ``B50-Inc10``: a first task of 50 classes,
  then ten per task; a smaller last task takes the remainder;
* every task trains a fresh optimiser for ``train.epochs`` epochs through the shared engine.

Every task boundary is a checkpoint (``tasks/task-XX/``: ``done.json``, ``final.safetensors``
with the model and the method's trainable and stateful modules, ``method.state.pt``), and each task's
epochs are checkpointed by the engine, so a killed run resumes at the task and epoch where it
stopped and ends with the same result.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from safetensors.torch import save as save_safetensors

from hundred.config import RunConfig, with_values
from hundred.data import ArraySplit, Dataset
from hundred.engine.checkpoint import strip_prefix
from hundred.engine.init import init_backbone_weights
from hundred.engine.method import Method
from hundred.engine.run import (RunContext, eval_loader, finish_run, image_size, load_data,
                                running, train_loader)
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.io import atomic_open, write_json
from hundred.models import Classifier, LanguageHead, create
from hundred.models.language import LanguageTargets, SentenceEncoder
from hundred.tracks.incremental.config import IncrementalConfig
from hundred.tracks.incremental.memory import ExemplarMemory, exemplar_free
from hundred.tracks.incremental.method import (IncrementalMethod, Task, TaskData,
                                               check_exemplars)
from hundred.tracks.incremental.metrics import matrix_to_json, summarise


METHOD_STATE = "method.state.pt"  # a task boundary's method state (read with weights_only)
EXEMPLAR_FREE = "none (exemplar-free)"  # the ``memory`` descriptor of an exemplar-free run


def task_sizes(scenario: str, num_classes: int) -> list[int]:
    """``"B50-Inc10"`` on 100 classes -> ``[50, 10, 10, 10, 10, 10]``; B0 starts with Inc."""
    match = re.fullmatch(r"B(\d+)-Inc(\d+)", scenario)
    if match is None:
        raise HundredError(f"scenario {scenario!r} is not of the form B<base>-Inc<step>")
    base, step = int(match[1]), int(match[2])
    if step < 1:
        raise HundredError(f"scenario {scenario}: the increment must be at least 1")
    if base >= num_classes:
        raise HundredError(f"scenario {scenario}: a base of {base} classes leaves no increment "
                           f"in a dataset of {num_classes} classes")
    sizes = [base] if base else []
    remaining = num_classes - base
    sizes += [step] * (remaining // step) + ([remaining % step] if remaining % step else [])
    return sizes


def class_order(num_classes: int, config: IncrementalConfig) -> np.ndarray:
    """``order[k]`` = the dataset label that arrives k-th."""
    if config.class_order is not None:
        order = np.asarray(config.class_order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(num_classes)):
            raise HundredError(f"incremental.class_order must be a permutation of 0..{num_classes - 1}")
        return order
    np_state = np.random.get_state()
    np.random.seed(config.class_order_seed)  # the community's exact recipe, not default_rng
    order = np.random.permutation(num_classes)
    np.random.set_state(np_state)
    return order.astype(np.int64)


def task_config(config: RunConfig, task: Task) -> RunConfig:
    """The training config of ``task``: the run's, except that the first task trains for
    ``incremental.first_task_epochs`` when set (PyCIL's ``init_epoch``: the base model is
    trained longer than the incremental steps), with step milestones scaled in proportion."""
    epochs = config.incremental.first_task_epochs
    if task.index > 0 or epochs is None or epochs == config.train.epochs:
        return config
    scale = epochs / config.train.epochs
    milestones = sorted({min(epochs - 1, max(1, round(m * scale)))
                         for m in config.schedule.milestones}) if epochs > 1 else []
    return with_values(config, {"train.epochs": epochs, "schedule.milestones": milestones},
                       origin="incremental.first_task_epochs")


def language_targets(config: RunConfig, dataset: Dataset) -> LanguageTargets:
    """LingoCL's frozen targets of ``dataset``'s classes (in arrival order), replacing the
    classifier (``incremental.language_targets``); the model's own head must stay "linear"."""
    inc = config.incremental
    if config.model.head != "linear":
        raise HundredError(f"incremental.language_targets replaces the classifier; leave "
                           f"model.head at linear (got {config.model.head!r})")
    return LanguageTargets(dataset.class_names, SentenceEncoder(inc.language_encoder),
                           inc.language_prompt, inc.language_cache_dir, dataset=dataset.name,
                           option="incremental.language_targets")


def build_tasks(sizes: list[int]) -> list[Task]:
    tasks, seen = [], 0
    for index, size in enumerate(sizes):
        tasks.append(Task(index, len(sizes), tuple(range(seen, seen + size)), seen))
        seen += size
    return tasks


def relabelled(dataset: Dataset, order: np.ndarray) -> Dataset:
    """The dataset with label ``order[k]`` renamed ``k`` (images shared, not copied)."""
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    splits = {name: ArraySplit(dataset.arrays(name).images, position[dataset.arrays(name).labels])
              for name in dataset.splits}
    return Dataset(dataset.name, [dataset.class_ids[c] for c in order],
                   [dataset.class_names[c] for c in order], splits, dataset.skipped, dataset.info)


@torch.no_grad()
def extract(model: Classifier, batches: Any,
            predict: Callable[[Classifier, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
            | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, features, labels) over all ``batches``, in eval mode, on the CPU; ``predict``
    (a method's :meth:`~IncrementalMethod.predict`) replaces ``model(images,
    return_features=True)``."""
    was_training = model.training
    model.eval()
    outputs: list[tuple[torch.Tensor, ...]] = []
    for images, labels in batches:
        logits, features = (predict(model, images) if predict is not None else
                            model(images, return_features=True))
        outputs.append((logits.float().cpu(), features.float().cpu(), labels.cpu()))
    model.train(was_training)
    return tuple(torch.cat(parts) for parts in zip(*outputs))  # type: ignore[return-value]


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised mean of the L2-normalised features of each class (iCaRL's mu_y)."""
    normalised = torch.nn.functional.normalize(features, dim=1)
    means = torch.zeros(num_classes, features.shape[1])
    means.index_add_(0, labels, normalised)
    return torch.nn.functional.normalize(means, dim=1)


def accuracy_by_task(predictions: torch.Tensor, labels: torch.Tensor, task: Task,
                     tasks: list[Task]) -> dict[str, Any]:
    """Top-1 on all seen classes, per task (a row of the accuracy matrix), old and new."""
    correct = (predictions == labels).float()
    task_of = torch.empty(task.num_seen, dtype=torch.long)
    for earlier in tasks[: task.index + 1]:
        task_of[list(earlier.new_classes)] = earlier.index
    label_task = task_of[labels]
    row = [100 * float(correct[label_task == j].mean()) for j in range(task.index + 1)]
    old = label_task < task.index
    return {"top1": 100 * float(correct.mean()), "row": row,
            "old": 100 * float(correct[old].mean()) if old.any() else None,
            "new": 100 * float(correct[~old].mean())}


def read_boundary(task_dir: Path, required: tuple[str, ...]
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """``done.json`` (which must hold the ``required`` keys), ``final.safetensors`` and the
    method state of one task boundary; ValueError names the file that does not load."""
    import json

    from safetensors.torch import load as load_safetensors

    done = task_dir / "done.json"
    try:
        record = json.loads(done.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        if missing := sorted(set(required) - set(record)):
            raise ValueError(f"it lacks {', '.join(missing)}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{done} is unreadable ({type(error).__name__}: {error})") from None
    final = task_dir / "final.safetensors"
    try:
        weights = load_safetensors(final.read_bytes())
    except Exception as error:  # safetensors' own error types for bad bytes
        raise ValueError(f"{final} is unreadable ({str(error)[:200]})") from None
    state_file, state = task_dir / METHOD_STATE, None
    if state_file.is_file():
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{state_file} is unreadable ({str(error)[:200]})") from None
    return record, weights, state


def write_boundary(task_dir: Path, model: nn.Module, method: Method,
                   record: dict[str, Any]) -> None:
    """A task boundary: the model with the method's checkpointed modules
    (``final.safetensors``), the method's state, then ``done.json`` last (its presence marks
    the boundary finished); the task's epoch checkpoints are no longer needed."""
    weights = {**model.state_dict(),
               **{f"method.{k}": v for k, v in method.checkpointed().state_dict().items()}}
    with atomic_open(task_dir / "final.safetensors", "wb") as handle:
        handle.write(save_safetensors({k: v.detach().cpu().contiguous()
                                       for k, v in weights.items()}))
    with atomic_open(task_dir / METHOD_STATE, "wb") as handle:
        torch.save(method.state_dict(), handle)
    write_json(task_dir / "done.json", record)
    shutil.rmtree(task_dir / "checkpoints", ignore_errors=True)


class IncrementalRun:
    """One class-incremental run: the tasks, the memory and the per-task records."""

    def __init__(self, ctx: RunContext, method: IncrementalMethod, dataset: Dataset,
                 init_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.ctx, self.config, self.method = ctx, ctx.config, method
        self.init_weights = init_weights  # incremental.init's backbone, for a fresh first task
        inc = self.config.incremental
        self.order = class_order(dataset.num_classes, inc)
        self.dataset = relabelled(dataset, self.order)
        self.language = (language_targets(self.config, self.dataset)
                         if inc.language_targets else None)
        self.tasks = build_tasks(task_sizes(inc.scenario, dataset.num_classes))
        self.train = self.dataset.arrays("train")
        self.val = self.dataset.arrays("val")
        self.class_indices = {c: np.flatnonzero(self.train.labels == c)
                              for c in range(dataset.num_classes)}
        self.memory = ExemplarMemory(inc.memory, inc.memory_per_class, inc.selection,
                                     seed=self.config.seed)
        # no old-class image is kept (memory 0) or the method keeps none (exemplars "never")
        self.keeps_exemplars = method.uses_memory and not exemplar_free(inc)
        self.exemplar_free = not method.trains_on_all_seen and not self.keeps_exemplars
        self.records: list[dict[str, Any]] = []
        self.tasks_dir = ctx.run_dir / "tasks"
        self.model: Classifier | None = None
        # the method's trainable modules of a restored task boundary: loaded once the next
        # task's trainer has called the method's setup (which builds them)
        self.restored_method_weights: dict[str, torch.Tensor] | None = None

    # -- model and data for a task --------------------------------------------------------
    def _new_model(self, num_classes: int) -> Classifier:
        model_config = self.config.model
        model = create(model_config.name, num_classes, head=model_config.head,
                       img_size=image_size(self.config, self.dataset), **model_config.options)
        if self.language is not None:  # its ``grown`` appends the new classes' targets
            model.head = LanguageHead.from_source(model.feature_dim, self.language, num_classes,
                                                  scale=self.config.incremental.language_scale)
        return model

    def _task_seed(self, task: Task) -> int:
        return self.config.seed * 1009 + task.index

    def training_indices(self, task: Task) -> np.ndarray:
        """Task data, plus the memory or all earlier data, as the method declares."""
        if self.method.trains_on_all_seen:
            return np.flatnonzero(self.train.labels < task.num_seen)
        current = np.flatnonzero((self.train.labels >= task.num_old) &
                                 (self.train.labels < task.num_seen))
        if self.keeps_exemplars and len(self.memory):
            current = np.union1d(current, self.memory.indices())
        if self.exemplar_free and (self.train.labels[current] < task.num_old).any():
            raise HundredError(f"task {task.index + 1}: an exemplar-free run was about to "
                               "train on images of old classes")  # the guarantee, enforced
        return current.astype(np.int64)

    def _features_of(self, model: Classifier) -> Callable[[np.ndarray], torch.Tensor]:
        def features(indices: np.ndarray) -> torch.Tensor:
            batches = eval_loader(self.ctx, self.dataset, "train", indices=indices)
            return extract(model, batches)[1]

        return features

    # -- resume ---------------------------------------------------------------------------
    def _task_dir(self, task: Task) -> Path:
        return self.tasks_dir / f"task-{task.index:02d}"

    def restore(self) -> int:
        """Load the finished tasks of a resumed run; returns the first task still to do.

        Task boundaries are read in order; the first one whose files do not load (a corrupt
        or empty ``done.json``, ``final.safetensors`` or method state) ends the restore with a
        warning naming the file, and the run continues from the boundary before it."""
        last: Task | None = None
        for task in self.tasks:
            task_dir = self._task_dir(task)
            if not (task_dir / "done.json").is_file():
                break
            try:
                record, weights, state = read_boundary(task_dir, ("memory", "linear"))
            except ValueError as error:
                where = f"after task {last.index + 1}" if last else "from the first task"
                self.ctx.console.print(f"warning: {error}; resuming {where}")
                break
            self.records.append(record)
            last = task
        if last is None:
            self.records = []
            return 0
        self.memory.load_state_dict(self.records[-1]["memory"])
        self.model = self._new_model(last.num_seen)
        self.model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("method.")})
        self.restored_method_weights = strip_prefix(weights, "method.")
        if state is not None:
            self.method.load_state_dict(state)
        return last.index + 1

    # -- one task -------------------------------------------------------------------------
    def run_task(self, task: Task) -> dict[str, Any]:
        ctx, method = self.ctx, self.method
        torch.manual_seed(self._task_seed(task))
        old_model = None
        if self.model is None:
            self.model = self._new_model(task.num_seen)
            if self.init_weights is not None:  # (a restored task boundary has its own)
                self.model.backbone.load_state_dict(self.init_weights, strict=True)
        else:
            if method.keeps_old_model:
                old_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.model.head = self.model.head.grown(task.num_new)
        model = self.model
        method.before_task(task, model, old_model)
        task_dir = self._task_dir(task)
        if ctx.dist.is_main:
            task_dir.mkdir(parents=True, exist_ok=True)
        indices = self.training_indices(task)
        loader = train_loader(ctx, self.dataset, indices=indices, seed_offset=task.index,
                              views=method.views)
        trainer = Trainer(task_config(self.config, task), model, method, loader, None,
                          ctx.device, task_dir, ctx.dist, ctx.console)
        if self.restored_method_weights is not None:
            method.checkpointed().load_state_dict(self.restored_method_weights)
            self.restored_method_weights = None
        trainer.resume()
        trainer.fit()
        method.task_data = TaskData(
            loader, lambda: eval_loader(ctx, self.dataset, "train", indices=indices), indices)
        method_log = method.after_task(task, model)
        method.task_data = None
        if self.keeps_exemplars:
            self._update_memory(task, model)
        record = {"task": task.index, "classes": task.num_seen, **self.evaluate(task, model),
                  "method_log": method_log, "memory_size": len(self.memory),
                  "memory": self.memory.state_dict()}
        if ctx.dist.is_main:
            write_boundary(task_dir, model, method, record)
        return record

    def _update_memory(self, task: Task, model: Classifier) -> None:
        if self.ctx.dist.is_main:
            self.memory.update(list(task.new_classes), self.class_indices,
                               self._features_of(model))
        if self.ctx.dist.enabled:  # every rank trains on rank 0's selection
            holder = [self.memory.state_dict()]
            torch.distributed.broadcast_object_list(holder, src=0)
            self.memory.load_state_dict(holder[0])

    def evaluate(self, task: Task, model: Classifier) -> dict[str, Any]:
        """Linear-head and NME accuracies on the val samples of all seen classes."""
        if not self.ctx.dist.is_main:
            return {}
        seen = np.flatnonzero(self.val.labels < task.num_seen)
        logits, features, labels = extract(
            model, eval_loader(self.ctx, self.dataset, "val", indices=seen), self.method.predict)
        result: dict[str, Any] = {}
        linear = accuracy_by_task(logits.argmax(1), labels, task, self.tasks)
        top5 = logits.topk(min(5, task.num_seen), dim=1).indices
        linear["top5"] = 100 * float((top5 == labels[:, None]).any(1).float().mean())
        result["linear"] = linear
        if len(self.memory):
            memory_indices = self.memory.indices()
            _, memory_features, memory_labels = extract(
                model, eval_loader(self.ctx, self.dataset, "train", indices=memory_indices))
            means = class_means(memory_features, memory_labels, task.num_seen)
            similarity = torch.nn.functional.normalize(features, dim=1) @ means.T
            nme = accuracy_by_task(similarity.argmax(1), labels, task, self.tasks)
            top5 = similarity.topk(min(5, task.num_seen), dim=1).indices
            nme["top5"] = 100 * float((top5 == labels[:, None]).any(1).float().mean())
            result["nme"] = nme
        return result

    # -- whole run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start = self.restore() if self.ctx.resumed else 0
        for task in self.tasks[start:]:
            record = self.run_task(task)
            self.records.append(record)
            if self.ctx.dist.is_main:
                self._log(task, record)
        return self.summary()

    def _log(self, task: Task, record: dict[str, Any]) -> None:
        linear, nme = record["linear"], record.get("nme")
        parts = [f"task {task.index + 1}/{task.count}", f"classes {task.num_seen}",
                 f"top1 {linear['top1']:.2f}"]
        if nme:
            parts.append(f"nme {nme['top1']:.2f}")
        if linear["old"] is not None:
            parts.append(f"old {linear['old']:.1f} / new {linear['new']:.1f}")
        self.ctx.console.print("  ".join(parts), highlight=False)

    def summary(self) -> dict[str, Any]:
        """Headline numbers (from the method's own classifier) and every curve."""
        if not self.ctx.dist.is_main:
            return {}
        inc = self.config.incremental
        summary: dict[str, Any] = {
            "data": self.dataset.name, "model": self.config.model.name,
            "memory": (EXEMPLAR_FREE if self.exemplar_free else "all seen data"
                       if self.method.trains_on_all_seen else
                       inc.memory if inc.memory_per_class is None else inc.memory_per_class),
            "memory_kind": "per-class" if inc.memory_per_class is not None else "fixed-total",
            "exemplar_free": self.exemplar_free,
            "selection": inc.selection, "class_order": self.order.tolist(),
            "classifier": self.method.classifier,
            "language_targets": self.language.describe() if self.language else None,
            "classes_per_step": [r["classes"] for r in self.records],
        }
        for name in ("linear", "nme"):
            if any(name not in r for r in self.records):
                summary[f"{name}_step_top1"] = summary[f"{name}_accuracy_matrix"] = None
                continue
            matrix = np.full((len(self.records),) * 2, np.nan)
            for t, record in enumerate(self.records):
                matrix[t, : t + 1] = record[name]["row"]
            step_top1 = [r[name]["top1"] for r in self.records]
            summary[f"{name}_step_top1"] = step_top1
            summary[f"{name}_step_top5"] = [r[name]["top5"] for r in self.records]
            summary[f"{name}_accuracy_matrix"] = matrix_to_json(matrix)
            summary[f"{name}_old_accuracy"] = [r[name]["old"] for r in self.records]
            summary[f"{name}_new_accuracy"] = [r[name]["new"] for r in self.records]
            summary[f"{name}_avg_incremental_accuracy"] = summarise(step_top1, matrix)[
                "avg_incremental_accuracy"]
            own = "nme" if self.method.classifier == "nme" else "linear"  # see predict
            if name == own or (name == "linear" and "nme" not in self.records[-1]):
                summary.update(summarise(step_top1, matrix))
                for key in ("step_top1", "step_top5", "accuracy_matrix", "old_accuracy",
                            "new_accuracy"):
                    summary[key] = summary[f"{name}_{key}"]
        summary["method_logs"] = [r.get("method_log", {}) for r in self.records]
        return summary


def initial_backbone(config: RunConfig, dataset: Dataset, resume_dir: Path | None
                     ) -> dict[str, torch.Tensor] | None:
    """The backbone weights of ``incremental.init`` (checked before the run writes
    anything), or None: none given, or a resumed run that finished its first task (its task
    boundaries hold its weights; a first task killed midway loads them, then its checkpoint
    over them)."""
    init = config.incremental.init
    if init is None or (resume_dir is not None and
                        (resume_dir / "tasks" / "task-00" / "done.json").is_file()):
        return None
    return init_backbone_weights(Path(init), config, image_size(config, dataset))


def run(config: RunConfig, method: IncrementalMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Run ``method`` through the class-incremental scenario (or, for a ``CGCD-*`` scenario,
    the continual category-discovery one of :mod:`.discovery`); returns the summary."""
    from hundred.tracks.incremental import discovery

    discovery.check_pairing(type(method), config.incremental)  # before anything is written
    if discovery.is_discovery(config.incremental.scenario):
        return discovery.run(config, method, resume_dir)
    check_exemplars(type(method), config.incremental)  # before the run writes anything
    dataset = load_data(config)
    init_weights = initial_backbone(config, dataset, resume_dir)
    with running(config, resume_dir) as ctx:
        summary = IncrementalRun(ctx, method, dataset, init_weights).run()
        title = f"incremental/{config.method}, {config.incremental.scenario} on {dataset.name}"
        return finish_run(ctx, summary, title, dataset)
