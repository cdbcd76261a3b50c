"""Children of a weight-sharing supernet (:mod:`hundred.models.elastic`): the sandwich rule,
extraction of a standalone child, batch-norm recalibration, and the search of the best child
under a cost budget that ``hundred search compress`` and ``compress/bignas`` (with
``compress.flops_target``) run.

* :func:`sandwich` — the children of one BigNAS / OFA step: the largest, the smallest and
  ``n`` random ones (Yu et al., ECCV 2020, Sec. 3.1; Yu & Huang, "Universally Slimmable
  Networks", ICCV 2019, the sandwich rule);
* :func:`extract` — a child as a plain ``Classifier`` (``model.options.child``) holding the
  supernet's sliced weights; its ``model_options`` attribute is what the compress export
  adds to the run's ``model.options``;
* :func:`recalibrate_bn` — BigNAS Sec. 3.2 / OFA: the running statistics of a child are
  reset and re-estimated as a cumulative average over ``batches`` training batches in train
  mode without gradients (no weight changes), since the statistics accumulated while many
  children shared the layers fit none of them;
* :func:`search_child` — random children (deduplicated) measured with the track's cost
  functions (:func:`hundred.engine.cost.count_flops`, ``count_parameters``), those under the
  budget sorted by FLOPs, the ``evaluate`` largest of them BN-recalibrated and scored on the
  evaluation batches; the best is kept (ties: fewer FLOPs).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from hundred.engine.cost import count_flops, count_parameters
from hundred.errors import HundredError
from hundred.models import Classifier
from hundred.models.elastic import Child, ElasticResNet, child_state_dict


def supernet_of(model: nn.Module) -> ElasticResNet:
    """The elastic backbone of ``model`` (a Classifier, possibly wrapped by DDP), or a
    HundredError."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, ElasticResNet):
        raise HundredError("this needs the elastic supernet: model.name=elastic_resnet "
                           f"(got {type(backbone).__name__})")
    return backbone


def sandwich(space: ElasticResNet, rng: random.Random, random_children: int = 2
             ) -> list[Child]:
    """The children of one sandwich step: largest first (the distillation target), then the
    smallest, then ``random_children`` random ones."""
    return [space.largest(), space.smallest(),
            *(space.sample(rng) for _ in range(random_children))]


def extract(model: nn.Module, child: Child) -> nn.Module:
    """A standalone copy of ``child`` of the supernet classifier ``model``: the plain model
    ``model.options.child=child`` builds, holding the supernet's weights sliced to it (the
    head copied); it is in the supernet's train/eval mode. ``model_options`` on it names the
    option that builds it."""
    model = getattr(model, "module", model)
    supernet = supernet_of(model)
    child = supernet.validate(child)
    backbone = ElasticResNet(**supernet.space_options, child=child)
    state = child_state_dict(supernet.state_dict(),
                             {k: v.shape for k, v in backbone.state_dict().items()})
    backbone.load_state_dict(state)
    extracted = Classifier(backbone, copy.deepcopy(model.head))
    # the largest child is the supernet's own shape: it is built without the option
    extracted.model_options = {} if child == supernet.largest() else {"child": child}
    extracted.to(next(supernet.parameters()).device)
    extracted.train(model.training)
    return extracted


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], num_batches: int) -> int:
    """Reset every batch norm's running statistics of ``model`` and re-estimate them as the
    cumulative average (``momentum=None``) over the first ``num_batches`` of ``batches``
    (``(images, labels)`` pairs or image tensors), forward passes in train mode without
    gradients; the weights are untouched, momentum and mode are restored. Returns the
    number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images)
            used += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for module, training in modes:
            module.training = training
    if used == 0:
        raise HundredError("BN recalibration got no batch")
    return used


@dataclass
class Candidate:
    child: Child
    flops: int
    params: int
    top1: float | None = None


@dataclass
class SearchResult:
    best: Candidate
    largest: Candidate
    evaluated: list[Candidate] = field(default_factory=list)
    sampled: int = 0
    under_budget: int = 0

    def record(self) -> dict[str, Any]:
        return {"child": self.best.child, "sampled": self.sampled,
                "under_budget": self.under_budget,
                "largest_flops": self.largest.flops, "largest_params": self.largest.params,
                "evaluated": [{"child": c.child, "flops": c.flops, "params": c.params,
                               "top1": c.top1} for c in self.evaluated]}


def child_cost(model: nn.Module, child: Child, image_size: int) -> tuple[int, int]:
    """FLOPs (2 x fvcore MACs, batch 1) and parameters of ``child``'s standalone model."""
    extracted = extract(model, child).eval()
    return count_flops(extracted, image_size, "cpu").flops, count_parameters(extracted)


def search_child(model: nn.Module, image_size: int, score: Callable[[nn.Module], float],
                 calibration: Callable[[], Iterable[Any]], calibration_batches: int,
                 flops_ratio: float | None = None, params_ratio: float | None = None,
                 samples: int = 300, evaluate: int = 5, seed: int = 0) -> SearchResult:
    """The best child of the supernet classifier ``model`` under the budget (shares of the
    largest child's FLOPs and/or parameters): ``samples`` random children plus the smallest,
    deduplicated; those under the budget sorted by FLOPs (most first), the ``evaluate`` first
    extracted, BN-recalibrated on ``calibration()``'s batches and scored with ``score`` (top-1
    on :func:`selection_loader`'s training images, never val); the best score wins. A budget
    that not even the smallest child meets is a HundredError."""
    cpu_model = copy.deepcopy(getattr(model, "module", model)).cpu()
    space = supernet_of(cpu_model)
    rng = random.Random(seed)
    largest = Candidate(space.largest(), *child_cost(cpu_model, space.largest(), image_size))
    flops_budget = None if flops_ratio is None else flops_ratio * largest.flops
    params_budget = None if params_ratio is None else params_ratio * largest.params
    seen: dict[str, Child] = {}
    for child in [space.smallest(), *(space.sample(rng) for _ in range(samples))]:
        seen.setdefault(repr(child), child)
    fitting: list[Candidate] = []
    for child in seen.values():
        flops, params = child_cost(cpu_model, child, image_size)
        if ((flops_budget is None or flops <= flops_budget)
                and (params_budget is None or params <= params_budget)):
            fitting.append(Candidate(child, flops, params))
    if not fitting:
        raise HundredError(f"no child of the supernet fits the budget (flops {flops_ratio}, "
                           f"params {params_ratio} of the largest child's)")
    fitting.sort(key=lambda c: (-c.flops, -c.params))
    device = next(getattr(model, "module", model).parameters()).device
    for candidate in fitting[:evaluate]:
        child_model = extract(model, candidate.child).to(device)
        recalibrate_bn(child_model, calibration(), calibration_batches)
        child_model.eval()
        candidate.top1 = float(score(child_model))
    evaluated = fitting[:evaluate]
    best = max(evaluated, key=lambda c: (c.top1, -c.flops))
    return SearchResult(best, largest, evaluated, len(seen), len(fitting))


SELECTION_IMAGES = 1000  # training images the search scores children on


def selection_loader(ctx: Any, dataset: Any, images: int = SELECTION_IMAGES) -> Any:
    """A fixed uniform sample of ``images`` training images, in order and un-augmented, on
    which a search scores children. Never the val split: val reports the chosen child, so
    choosing on it would report a selected maximum (BigNAS and OFA hold out part of the
    training set; here the children saw these images in training, which favours none of
    them in particular)."""
    import numpy as np

    from hundred.engine.run import eval_loader

    count = len(dataset.arrays("train").labels)
    rng = np.random.default_rng(ctx.config.seed)
    rows = np.sort(rng.choice(count, size=min(images, count), replace=False))
    return eval_loader(ctx, dataset, "train", indices=rows)


def search_run(run_dir: Path, flops: float | None = None, params: float | None = None,
               samples: int = 300, evaluate: int = 5, calibration_batches: int = 16,
               device: str | None = None, name: str | None = None, seed: int | None = None
               ) -> dict[str, Any]:
    """``hundred search compress RUN_DIR``: the best child of the finished supernet run
    ``run_dir`` under the budget (shares of its largest child's FLOPs / parameters), written
    as a new finished compress run (same track and method, ``compress.flops_target`` = the
    FLOPs share): the summary every compress run has (val top-1, params, FLOPs, latency,
    saved activations, the export) plus ``search`` (the sampled, fitting and scored
    children). Everything is checked before the run directory is created."""
    from hundred.engine.cost import saved_tensor_bytes
    from hundred.engine.init import load_finished_run
    from hundred.engine.losses import cross_entropy
    from hundred.engine.metrics import evaluate as evaluate_model
    from hundred.engine.run import (eval_loader, finish_run, image_size, load_data, running,
                                    train_loader)
    from hundred.engine.checkpoint import save_checkpoint
    from hundred.models import create
    from hundred.tracks.compress.scenario import export, measure, saved_summary

    for label, share in (("--flops", flops), ("--params", params)):
        if share is not None and not 0.0 < share <= 1.0:
            raise HundredError(f"{label} {share}: give a share of the largest child's cost in "
                               "(0, 1], e.g. 0.5")
    if flops is None and params is None:
        raise HundredError("hundred search compress needs a budget: --flops and/or --params")
    finished = load_finished_run(Path(run_dir), "search")
    config = finished.config
    if config.track != "compress" or config.model.name != "elastic_resnet":
        raise HundredError(f"search {run_dir}: not a compress run of the elastic supernet "
                           f"(model.name=elastic_resnet; it is {config.track}, "
                           f"{config.model.name})")
    if "child" in config.model.options:
        raise HundredError(f"search {run_dir}: the run exported one child, not the supernet "
                           "(a search result, or a bignas run with compress.flops_target); "
                           "search a run trained without compress.flops_target")
    updates: dict[str, Any] = {"name": name,
                               "compress": config.compress.model_copy(update={
                                   "flops_target": flops if flops is not None and flops < 1
                                   else None, "init": None})}
    if device is not None:
        updates["train"] = config.train.model_copy(update={"device": device})
    if seed is not None:
        updates["seed"] = seed
    config = config.model_copy(update=updates)
    dataset = load_data(config)
    size = image_size(config, dataset)
    model = create(config.model.name, dataset.num_classes, head=config.model.head,
                   img_size=size, **config.model.options)
    try:
        model.load_state_dict(finished.weights)
    except RuntimeError as error:
        raise HundredError(f"search {run_dir}: its weights do not fit its model ({error})"
                           ) from None
    with running(config) as ctx:
        model.to(ctx.device)
        calibration = train_loader(ctx, dataset)
        result = search_child(
            model, size,
            score=lambda m: evaluate_model(m, selection_loader(ctx, dataset))["top1"],
            calibration=lambda: calibration, calibration_batches=calibration_batches,
            flops_ratio=flops, params_ratio=params, samples=samples, evaluate=evaluate,
            seed=config.seed)
        child = extract(model, result.best.child)
        recalibrate_bn(child, calibration, calibration_batches)
        child.eval()
        largest = extract(model, result.largest.child).eval()
        dense_flops = count_flops(largest, size, ctx.device).flops
        summary: dict[str, Any] = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "init": str(run_dir), "init_weights": "supernet",
            "train_images": calibration.num_samples, "epochs": 0,
            "flops_target": config.compress.flops_target, "params_target": params}
        summary.update({f"val_{k}": v for k, v in
                        evaluate_model(child, eval_loader(ctx, dataset)).items()})
        summary.update(measure(ctx, child, size, dense_flops))
        calibration.set_epoch(0)
        images, labels = next(iter(calibration))
        child.train()
        state = {k: v.detach().clone() for k, v in child.state_dict().items()}
        saved = saved_tensor_bytes(lambda: cross_entropy(child(images), labels),
                                   list(child.parameters()))
        child.load_state_dict(state)
        child.eval()
        summary.update(saved_summary(saved, None))
        # a checkpoint of the child (what --init and hundred attack read); nothing to resume
        save_checkpoint(ctx.run_dir / "checkpoints", 0, child.state_dict(),
                        {"epoch": 0, "optimizer": None, "method": {},
                         "torch_rng": torch.get_rng_state(), "cuda_rng": None, "loader": None},
                        keep=config.train.keep_checkpoints)
        summary["export"] = export(ctx, child, dataset.num_classes, size)
        summary["search"] = {"from": str(run_dir), "flops_budget": flops,
                             "params_budget": params, **result.record()}
        summary["supernet"] = {"child": result.best.child, "holds_supernet": False}
        return finish_run(ctx, summary, title=f"search of {run_dir}", dataset=dataset)
