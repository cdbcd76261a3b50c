"""ReservoirTTA — Vray, Tomar, Gao, Thiran, Shelhamer & Bozorgtabar, "ReservoirTTA: Prolonged
Test-time Adaptation for Evolving and Recurring Domains" (NeurIPS 2025, arXiv 2505.14511).

A reservoir of domain-specialist models, each adapted by a plug-in TTA method (``base``:
TENT or EATA here; the paper also plugs in SAR), so that one model never has to follow every
domain of a prolonged stream (the drift and collapse of single-model TTA), and a domain that
recurs finds its specialist again:

1. style: every test batch gets a style vector, the channel-wise mean and standard deviation
   of early-layer features of a frozen network, averaged over the batch;
2. online clustering: the batch joins the nearest cluster centroid when its distance is at
   most ``threshold``, and the centroid moves to the running mean of its batches; when it is
   farther than ``threshold`` from every centroid (a new domain) a new cluster is opened with
   a new specialist, as long as the reservoir holds fewer than ``max_models`` (K_max); a full
   reservoir routes the batch to the nearest cluster;
3. routing: the batch's specialist predicts it and adapts on it with the base method (its
   own optimiser state; EATA's Fisher and anchor are the source's, shared).

Stand-ins and choices where the paper's setting cannot be reproduced here or left it open
(not verified against the official code):

* style network: the paper uses a frozen ImageNet VGG; no weights are downloaded here, so
  the style features come from the *frozen source model's first convolution* (its output's
  per-channel mean and std, 2 x C values per image);
* distance: each style dimension is standardised by its mean and standard deviation over
  ``calibration_images`` clean train images (per-image styles), and the distance is the
  root-mean-square difference of the standardised vectors (a scale-free threshold; the
  paper's tau is for VGG features and does not transfer);
* a new specialist starts from the candidate (the source model, or an existing specialist)
  with the lowest mean prediction entropy on the batch that opened its cluster (``init =
  lowest_entropy``), or always from the source (``init = source``).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.errors import HundredError
from hundred.registry import get_method, register
from hundred.space import Choice
from hundred.tracks.robust.tta import (Learner, TestTimeAdaptation, TTAContext, entropy)


class ReservoirParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: Literal["tent", "eata"] = Field("eata", description="the plug-in TTA method each "
                                          "specialist adapts with (its own defaults)")
    base_params: dict[str, Any] = Field(default_factory=dict, description="the base method's "
                                        "own parameters (e.g. EATA's fisher_alpha); its "
                                        "defaults otherwise")
    max_models: int = Field(16, ge=1, description="K_max, the most specialists the reservoir "
                            "holds (a full reservoir routes new domains to the nearest)")
    threshold: float = Field(0.3, gt=0, description="tau: a batch whose standardised style "
                             "is farther (RMS over dimensions, in units of the clean images' "
                             "per-image style spread) than this from every centroid opens a "
                             "new cluster (our scale, the paper's tau is for VGG features; "
                             "0.3 from synth100 streams at batch 64, where batches of one "
                             "domain lie 0.05-0.18 apart and domains 0.1-1.8)")
    calibration_images: int = Field(512, ge=2, description="clean train images whose style "
                                    "spread standardises the style dimensions")
    init: Literal["lowest_entropy", "source"] = Field(
        "lowest_entropy", description="a new specialist copies the candidate (source or a "
        "specialist) with the lowest mean entropy on the batch, or always the source")


class StyleFeatures:
    """Per-image style vectors from the frozen first convolution of a copy of ``source``:
    channel-wise mean and standard deviation of its output (the forward pass stops there)."""

    class _Stop(Exception):
        pass

    def __init__(self, source: nn.Module) -> None:
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        layer = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if layer is None:
            raise HundredError("reservoir_tta takes its style features from the model's first "
                               "convolution, and this model has none")
        self._output: torch.Tensor | None = None
        layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._output = output
        raise self._Stop

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        try:
            self.model(images)
        except self._Stop:
            pass
        features = self._output
        assert features is not None
        self._output = None
        flat = features.float().flatten(2)
        return torch.cat([flat.mean(2), flat.std(2, unbiased=False)], dim=1)


@register("robust", "reservoir_tta")
class ReservoirTTA(TestTimeAdaptation):
    """A reservoir of specialists, routed by online clustering of batch styles, each adapted
    by the base TTA method."""

    Params: ClassVar[type[BaseModel]] = ReservoirParams
    # tau depends on the style features' scale (our source model's, not the paper's VGG):
    # tuned on the tuning phase's stream, never on the one it is evaluated on
    search_space = {**TestTimeAdaptation.search_space,
                    "method_params.threshold": Choice((0.2, 0.3, 0.5, 1.0))}

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        # the base method and its parameters are checked here, before any run starts
        self.base: TestTimeAdaptation = get_method("robust", self.params.base)(
            self.params.base_params, self.config)

    def start(self, source: nn.Module, ctx: TTAContext) -> None:
        self.base.prepare(source, ctx)
        self.ctx = ctx
        self.source = source
        self.style = StyleFeatures(source)
        styles = torch.cat([self.style(images) for images in ctx.clean_train_batches(
            self.params.calibration_images, ctx.config.robust.tta.batch_size, seed_offset=1)])
        self.style_mean = styles.mean(0)
        self.style_std = styles.std(0).clamp_min(1e-6)
        self.centroids: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.learners: list[Learner] = []
        self.routes: list[int] = []  # the cluster of every batch, in stream order
        self.spawned_from: list[str] = []

    def batch_style(self, images: torch.Tensor) -> torch.Tensor:
        """The batch's standardised style vector."""
        return ((self.style(images) - self.style_mean) / self.style_std).mean(0)

    def distances(self, style: torch.Tensor) -> torch.Tensor:
        """RMS distance of ``style`` to every centroid."""
        centroids = torch.stack(self.centroids)
        return (centroids - style).pow(2).mean(1).sqrt()

    def route(self, images: torch.Tensor) -> int:
        """The cluster of this batch: the nearest within ``threshold`` (its centroid moves to
        the running mean), else a new one with a new specialist (reservoir not full)."""
        style = self.batch_style(images)
        if self.centroids:
            distance = self.distances(style)
            nearest = int(distance.argmin())
            if (float(distance[nearest]) <= self.params.threshold
                    or len(self.centroids) >= self.params.max_models):
                self.counts[nearest] += 1
                self.centroids[nearest] += (style - self.centroids[nearest]) / \
                    self.counts[nearest]
                return nearest
        self.learners.append(self._new_specialist(images))
        self.centroids.append(style.clone())
        self.counts.append(1)
        return len(self.centroids) - 1

    def _new_specialist(self, images: torch.Tensor) -> Learner:
        """A learner on a copy of the source, or of the existing model with the lowest mean
        entropy on ``images`` (``init``)."""
        fresh = self.base.make_learner(copy.deepcopy(self.source), self.ctx)
        if self.params.init == "source" or not self.learners:
            self.spawned_from.append("source")
            return fresh
        candidates = [fresh, *self.learners]
        scores = [float(entropy(c.predict(images)).mean()) for c in candidates]
        best = min(range(len(candidates)), key=scores.__getitem__)
        if best == 0:
            self.spawned_from.append("source")
            return fresh
        self.spawned_from.append(f"specialist {best - 1}")
        return self.base.make_learner(copy.deepcopy(candidates[best].model), self.ctx)

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        cluster = self.route(images)
        self.routes.append(cluster)
        return self.learners[cluster].step(images)

    def label(self) -> str:
        return f"reservoir_tta ({self.params.base})"

    def record(self) -> dict[str, Any]:
        return {"specialists": len(self.learners), "routes": self.routes,
                "spawned_from": self.spawned_from,
                "cluster_batches": list(self.counts)}
