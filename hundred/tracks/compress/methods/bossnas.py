"""BossNAS — Li, Tang, Wang, Zhu, Chang, Liang & Zhang, "BossNAS: Exploring Hybrid
CNN-transformers with Block-wisely Self-supervised Neural Architecture Search" (ICCV 2021,
arXiv:2103.12424), on the HyTra-like space of :mod:`hundred.models.hytra`.

The run's model is the supernet (``model.name=hytra``, ``model.options.supernet=true``).
Training is block-wise and self-supervised (Sec. 3.2), the blocks one after another, each for
an equal share of ``train.epochs``:

* *Siamese supernets*: the online (student) supernet is the run's model; the target (teacher)
  is a copy of it and of block k's projector whose parameters follow the online ones by
  BYOL's EMA, ``xi <- tau xi + (1 - tau) theta`` after every step, ``tau`` on BYOL's cosine
  schedule from ``tau_base`` (0.99) to 1 over the block's steps (restarted per block). The
  teacher is ``add_state`` (checkpointed, never optimised, no gradient).
* *Ensemble bootstrapping* (Eq. 3-4): each step samples ``num_paths`` paths of block k; the
  target of a view is the mean of the teacher's L2-normalised projections of the block's
  output over those paths, ``T(v) = 1/m sum_j norm(g_xi(f_xi(v; a_j)))``
  (:func:`ensemble_target`); the online network with each sampled path predicts the other
  view's target, ``L = 1/m sum_j [2 - 2 cos(q(g(f(v1; a_j))), T(v2)) + (v1 <-> v2)]``
  (BYOL's loss, lightly's heads). Blocks before k run the paths already found (without
  gradient: their search is over), blocks after k are not run.
* *Searching towards the population centre* (Sec. 3.3): at the end of block k's epochs every
  path a of block k is rated by the same distance between its online prediction and the
  teacher ensemble of *all* the block's paths (the population centre), on the last
  ``rate_batches`` training batches of view pairs; the smallest distance wins and is fixed
  for the following blocks (progressive search). A full architecture's rating is the sum of
  its blocks' distances (:func:`path_rating`; lower is better).

The exported model is the chosen path as a plain ``hytra`` network (``model.options.path``)
with weights *inherited* from the online supernet and the online linear probe as its head (its
``val_top1`` is that probe's accuracy: the paper retrains the found architecture from scratch,
here ``hundred run compress dense --set model.name=hytra --set model.options.path=[...]``).
The probe is the ssl track's: the run's linear head trained on detached features of the
currently active path (found blocks, the first sampled path of block k, default later blocks).

Choices the paper leaves to its code, made here: one online path per sampled path on the same
two views (the official code feeds different views to different paths); ratings run in eval
mode after each path's BN statistics are recalibrated on the first rating pair (the official
code's per-path BN update), every buffer restored afterwards; the ensemble target of the
ratings averages normalised teacher projections, as in training (the official rating averages
them unnormalised; the loss normalises the mean); the ranking correlation with stand-alone accuracy
(Kendall tau, Spearman rho, :func:`rank_correlation`, :func:`correlate_runs`) compares
``-rating`` with accuracy.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.models.hytra import HyTraSupernet, block_paths, default_path, extract
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.tracks.compress.method import CompressMethod
from hundred.tracks.ssl.method import SSLMethod
from hundred.tracks.ssl.methods.byol import byol_loss, byol_momentum


class BossNASParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_paths: int = Field(4, ge=1, description="paths sampled per step whose teacher "
                           "projections are averaged into the ensemble target (paper's "
                           "HyTra config: 4, one per view pair)")
    tau_base: float = Field(0.99, ge=0, le=1, description="initial EMA rate of the teacher, "
                            "cosine to 1 over each block's steps (paper: 0.99)")
    proj_hidden_dim: int = Field(128, ge=1, description="projector/predictor hidden width "
                                 "(paper: 4096 at ImageNet scale)")
    proj_output_dim: int = Field(64, ge=1, description="projection width (paper: 256)")
    rate_batches: int = Field(2, ge=1, description="last training batches (view pairs) a "
                              "block's paths are rated on (paper: a held-out train subset)")
    augment: str = Field("byol", description="the two views' recipe "
                         "(hundred.data.augment.view_specs; paper: BYOL's)")


def ensemble_target(backbone: HyTraSupernet, projector: nn.Module, block: int,
                    paths: Sequence[Sequence[str]], x: torch.Tensor) -> torch.Tensor:
    """Eq. (3): the mean over ``paths`` (of block ``block``) of the L2-normalised projections
    of the block's globally pooled output on ``x`` (the block's input), without gradient."""
    with torch.no_grad():
        total = 0
        for path in paths:
            total = total + F.normalize(project(backbone, projector, block, path, x), dim=1)
        return total / len(paths)


def project(backbone: HyTraSupernet, projector: nn.Module, block: int, path: Sequence[str],
            x: torch.Tensor) -> torch.Tensor:
    """The projection of block ``block``'s pooled output of ``path`` on input ``x``."""
    return projector(backbone.forward_block(x, block, path).mean(dim=(2, 3)))


def rank_correlation(ratings: Sequence[float], accuracies: Sequence[float],
                     lower_is_better: bool = True) -> dict[str, float]:
    """Kendall's tau and Spearman's rho (scipy.stats) between the supernet's ``ratings`` and
    the stand-alone ``accuracies`` of the same architectures (a BossNAS rating is a distance:
    lower is better, so ``-rating`` is correlated)."""
    from scipy.stats import kendalltau, spearmanr

    if len(ratings) != len(accuracies) or len(ratings) < 2:
        raise HundredError(f"rank correlation needs two equally long lists of >= 2 values "
                           f"(got {len(ratings)} ratings, {len(accuracies)} accuracies)")
    scores = [-r if lower_is_better else r for r in ratings]
    return {"kendall_tau": float(kendalltau(scores, accuracies).statistic),
            "spearman_rho": float(spearmanr(scores, accuracies).statistic),
            "n": len(ratings)}


def path_rating(block_ratings: Sequence[dict[str, float]], path: Sequence[str],
                layers_per_block: int) -> float:
    """A full path's rating: the sum of its blocks' distances (lower is better)."""
    total = 0.0
    for b, ratings in enumerate(block_ratings):
        key = ",".join(path[b * layers_per_block:(b + 1) * layers_per_block])
        if key not in ratings:
            raise HundredError(f"block {b} path {key} was not rated")
        total += ratings[key]
    return total


def correlate_runs(search_run: Path, standalone_runs: Sequence[Path]) -> dict[str, Any]:
    """The ranking quality of a finished bossnas run (``search_run``): its rating of each
    stand-alone run's architecture (``model.options.path`` in the run's config.yaml) against
    that run's ``val_top1`` (e.g. ``hundred run compress dense --set model.name=hytra --set
    model.options.path=[...]``), as Kendall tau and Spearman rho."""
    import yaml

    summary = _read_summary(search_run)
    record = summary.get("bossnas")
    if not record:
        raise HundredError(f"{search_run} is not a finished compress/bossnas run")
    ratings, accuracies, paths = [], [], []
    for run in standalone_runs:
        config = yaml.safe_load((Path(run) / "config.yaml").read_text())
        path = (config.get("model") or {}).get("options", {}).get("path")
        if path is None:
            raise HundredError(f"{run}: model.options.path is not set (not a hytra path run)")
        ratings.append(path_rating(record["block_ratings"], path, record["layers_per_block"]))
        accuracies.append(float(_read_summary(Path(run))["val_top1"]))
        paths.append(path)
    return {**rank_correlation(ratings, accuracies), "paths": paths, "ratings": ratings,
            "accuracies": accuracies}


def _recalibrate(modules: Sequence[nn.Module], forward: Any) -> None:
    """Reset the BatchNorm statistics of ``modules`` and re-estimate them (cumulative average)
    from one call of ``forward`` in train mode; the modules are left in eval mode."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        module.train()
    forward()
    for module in modules:
        module.eval()


def _read_summary(run: Path) -> dict[str, Any]:
    file = Path(run) / "summary.json"
    if not file.is_file():
        raise HundredError(f"{run}: no summary.json (not a finished run)")
    return json.loads(file.read_text())


@register("compress", "bossnas")
class BossNAS(CompressMethod):
    """Block-wise ensemble-bootstrapped supernet training, then progressive path search."""

    Params = BossNASParams
    views = 2

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.block = 0              # the block being trained
        self.step = 0               # optimiser steps taken in this block
        self.best: list[list[str]] = []       # found paths of the finished blocks
        self.ratings: list[dict[str, float]] = []
        self.block_ends: list[int] = []       # last epoch (0-based) of each block
        self.steps_per_epoch = 1
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rng = random.Random(0)
        self.image_size = 0
        self.num_classes = 0

    # ---------------------------------------------------------------- checks, set-up
    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        from hundred.data.augment import view_specs

        options = config.model.options
        if config.model.name != "hytra" or not options.get("supernet"):
            raise HundredError("compress/bossnas trains the HyTra supernet: set "
                               "model.name=hytra and model.options.supernet=true")
        if config.train.ema_decay is not None:
            raise HundredError("compress/bossnas keeps its own EMA teacher; leave "
                               "train.ema_decay unset")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise HundredError("compress/bossnas runs in one process: it calls the supernet's "
                               "blocks directly, which DDP would not synchronise")
        with torch.device("meta"):  # the options build a supernet (nothing allocated)
            blocks = self.supernet(create("hytra", dataset.num_classes, img_size=image_size,
                                          **options)).blocks
        if config.train.epochs < blocks:
            raise HundredError(f"compress/bossnas trains {blocks} blocks one after another: "
                               f"train.epochs={config.train.epochs} must be >= {blocks}")
        view_specs(self.params.augment)
        epochs = config.train.epochs
        self.block_ends = [(b + 1) * epochs // blocks - 1 for b in range(blocks)]
        self.rng = random.Random(config.seed)
        self.image_size, self.num_classes = image_size, dataset.num_classes

    def train_loader(self, ctx: Any, dataset: Dataset) -> Any:
        from hundred.data.augment import view_specs
        from hundred.engine.run import train_loader

        return train_loader(ctx, dataset, views=2,
                            view_augments=view_specs(self.params.augment)[:2])

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        net = self.supernet(model)
        if not self.block_ends:  # made outside the scenario (tests): even split
            blocks, epochs = net.blocks, max(ctx.epochs, net.blocks)
            self.block_ends = [(b + 1) * epochs // blocks - 1 for b in range(blocks)]
        p = self.params
        if "projectors" not in self.trainable:
            self.add_trainable("projectors", nn.ModuleList(
                BYOLProjectionHead(net.width * 2**(b + 1), p.proj_hidden_dim, p.proj_output_dim)
                for b in range(net.blocks)))
            self.add_trainable("predictors", nn.ModuleList(
                BYOLPredictionHead(p.proj_output_dim, p.proj_hidden_dim, p.proj_output_dim)
                for b in range(net.blocks)))
        if "teacher" not in self.stateful:
            self.add_state("teacher", nn.ModuleDict({
                "backbone": copy.deepcopy(net),
                "projectors": copy.deepcopy(self.trainable["projectors"])}))
        self.steps_per_epoch = ctx.steps_per_epoch
        self._net = net

    @staticmethod
    def supernet(model: nn.Module) -> HyTraSupernet:
        backbone = unwrap(model).backbone
        if not isinstance(backbone, HyTraSupernet):
            raise HundredError("compress/bossnas needs the hytra supernet "
                               "(model.options.supernet=true)")
        return backbone

    # ---------------------------------------------------------------- training
    def block_steps(self) -> int:
        block = min(self.block, len(self.block_ends) - 1)
        start = self.block_ends[block - 1] + 1 if block else 0
        return self.steps_per_epoch * (self.block_ends[block] - start + 1)

    def sample_paths(self, net: HyTraSupernet) -> list[list[str]]:
        candidates = block_paths(net.layers_per_block)
        return [list(self.rng.choice(candidates)) for _ in range(self.params.num_paths)]

    def block_input(self, net: HyTraSupernet, x: torch.Tensor, block: int) -> torch.Tensor:
        """The input of ``block``: the stem and the found paths of the blocks before it."""
        with torch.no_grad():
            x = net.stem(x)
            for b, path in enumerate(self.best[:block]):
                x = net.forward_block(x, b, path)
        return x

    def active_path(self, net: HyTraSupernet, current: Sequence[str]) -> list[str]:
        found = [t for part in self.best[:self.block] for t in part] + list(current)
        return found + default_path(net.blocks, net.layers_per_block)[len(found):]

    def loss(self, model: nn.Module, images: Any, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            raise HundredError("compress/bossnas needs two views per image")
        v1, v2 = images[0], images[1]
        net = self.supernet(model)
        teacher = self.stateful["teacher"]
        k = min(self.block, net.blocks - 1)
        projector, predictor = self.trainable["projectors"][k], self.trainable["predictors"][k]
        paths = self.sample_paths(net)
        s1, s2 = self.block_input(net, v1, k), self.block_input(net, v2, k)
        t1, t2 = (self.block_input(teacher["backbone"], v, k) for v in (v1, v2))
        target1 = ensemble_target(teacher["backbone"], teacher["projectors"][k], k, paths, t1)
        target2 = ensemble_target(teacher["backbone"], teacher["projectors"][k], k, paths, t2)
        total = 0
        for path in paths:
            q1 = predictor(project(net, projector, k, path, s1))
            q2 = predictor(project(net, projector, k, path, s2))
            total = total + byol_loss(q1, target2) + byol_loss(q2, target1)
        self.cache = [*self.cache[-(self.params.rate_batches - 1):], (v1.detach(), v2.detach())
                      ] if self.params.rate_batches > 1 else [(v1.detach(), v2.detach())]
        if self.block < net.blocks:  # (after the search: the measurement step)
            net.active = self.active_path(net, paths[0])
        with torch.no_grad():
            features = net.forward_features(v1)
        return total / len(paths) + SSLMethod.probe_loss(model, features, labels)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """The teacher's EMA step (supernet and the current block's projector)."""
        from lightly.models.utils import update_momentum

        net = self.supernet(model)
        teacher = self.stateful["teacher"]
        k = min(self.block, net.blocks - 1)
        tau = byol_momentum(self.step, self.block_steps(), self.params.tau_base)
        update_momentum(net, teacher["backbone"], tau)
        update_momentum(self.trainable["projectors"][k], teacher["projectors"][k], tau)
        self.step += 1

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        """The block in training (after this epoch's search) and the teacher's EMA rate."""
        return {"bossnas_block": self.block, "bossnas_tau": byol_momentum(
            self.step, self.block_steps(), self.params.tau_base) if self.block_ends else None}

    # ---------------------------------------------------------------- search
    def on_epoch_end(self, epoch: int) -> None:
        if self.block < len(self.block_ends) and epoch == self.block_ends[self.block]:
            self.search_block(self._net)

    def search_block(self, net: HyTraSupernet) -> None:
        """Rate the current block's paths, fix the best one and move to the next block."""
        ratings = self.rate_block(net, self.block)
        best = min(ratings, key=ratings.get)
        self.ratings.append(ratings)
        self.best.append(best.split(","))
        self.block += 1
        self.step = 0
        net.active = self.active_path(net, []) if self.block < net.blocks else \
            [t for part in self.best for t in part]

    @torch.no_grad()
    def rate_block(self, net: HyTraSupernet, block: int) -> dict[str, float]:
        """Every path of ``block``: its mean BYOL distance to the teacher ensemble of all the
        block's paths (the population centre) on the cached view pairs, in eval mode after
        recalibrating the path's BatchNorm statistics (student and teacher block modules,
        projectors, predictor) on the first cached pair, as the official search does; every
        buffer and mode is restored afterwards."""
        if not self.cache:
            raise HundredError("compress/bossnas: no training batch cached to rate paths on")
        teacher = self.stateful["teacher"]
        projector, predictor = self.trainable["projectors"][block], \
            self.trainable["predictors"][block]
        t_backbone, t_projector = teacher["backbone"], teacher["projectors"][block]
        candidates = [list(p) for p in block_paths(net.layers_per_block)]
        modules = [net, teacher, projector, predictor]
        buffers = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
        modes = [(sub, sub.training) for top in modules for sub in top.modules()]
        norms = [m for top in modules for m in top.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in modules:
            m.eval()
        inputs = [(self.block_input(net, v1, block), self.block_input(net, v2, block),
                   self.block_input(t_backbone, v1, block),
                   self.block_input(t_backbone, v2, block)) for v1, v2 in self.cache]
        predictions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        targets = [[0, 0] for _ in inputs]
        try:
            for path in candidates:
                online = [*net.block_modules(block, path), projector, predictor]
                target = [*t_backbone.block_modules(block, path), t_projector]
                _recalibrate(online + target, lambda: [
                    predictor(project(net, projector, block, path, x))
                    for x in inputs[0][:2]] + [
                    project(t_backbone, t_projector, block, path, x) for x in inputs[0][2:]])
                predictions[",".join(path)] = [
                    (predictor(project(net, projector, block, path, s1)),
                     predictor(project(net, projector, block, path, s2)))
                    for s1, s2, _, _ in inputs]
                for i, (_, _, t1, t2) in enumerate(inputs):
                    targets[i][0] += F.normalize(project(t_backbone, t_projector, block, path, t1),
                                                 dim=1) / len(candidates)
                    targets[i][1] += F.normalize(project(t_backbone, t_projector, block, path, t2),
                                                 dim=1) / len(candidates)
        finally:
            for m, state in zip(modules, buffers):
                m.load_state_dict(state)
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            for m, training in modes:
                m.training = training
        return {key: sum(float(byol_loss(q1, c2) + byol_loss(q2, c1))
                         for (q1, q2), (c1, c2) in zip(pairs, targets)) / len(inputs)
                for key, pairs in predictions.items()}

    # ---------------------------------------------------------------- results
    def chosen_path(self) -> list[str]:
        return [t for part in self.best for t in part]

    def compressed_model(self, model: Classifier) -> Classifier:
        net = self.supernet(model)
        if len(self.best) < net.blocks:
            raise HundredError(f"compress/bossnas searched {len(self.best)} of {net.blocks} "
                               "blocks (the run ended early)")
        path = self.chosen_path()
        head = self.config.model.head
        options = {**net.options(), "path": path}
        child = create("hytra", self.num_classes or unwrap(model).head.weight.shape[0],
                       head=head, img_size=self.image_size or None, **options)
        child.backbone = extract(net, path)
        child.head.load_state_dict(unwrap(model).head.state_dict())
        child.to(next(model.parameters()).device).train(model.training)
        child.model_options = {"supernet": None, "path": path}  # None: key dropped
        return child

    def extra_measurements(self, model: Classifier, loader: Any) -> dict[str, Any]:
        net = self._net
        n = net.layers_per_block
        return {"bossnas": {
            "chosen_path": self.chosen_path(), "block_paths": self.best,
            "block_ratings": [dict(sorted(r.items(), key=lambda item: item[1]))
                              for r in self.ratings], "layers_per_block": n, "blocks": net.blocks,
            "chosen_rating": path_rating(self.ratings, self.chosen_path(), n),
            "exported_weights": "inherited from the online supernet (the paper retrains the "
                                "found architecture from scratch)"}}

    def state_dict(self) -> dict[str, Any]:
        return {"block": self.block, "step": self.step, "best": self.best,
                "ratings": self.ratings, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.block, self.step = int(state["block"]), int(state["step"])
        self.best = [list(p) for p in state["best"]]
        self.ratings = [dict(r) for r in state["ratings"]]
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        net = getattr(self, "_net", None)
        if net is not None:
            net.active = (self.active_path(net, []) if self.block < net.blocks else
                          self.chosen_path())
