"""Happy — Ma, Zhu, Zhong, Liu, Zhang & Liu, "Happy: A Debiased Learning Framework for
Continual Generalized Category Discovery", NeurIPS 2024 (arXiv 2410.06535).

SimGCD (``simgcd``) in stage 0; in every later, unlabelled stage four parts are added
(Sec. 4, Fig. 3):

* **clustering-guided initialisation** (Sec. 4.2): before the stage trains, k-means with
  ``K = classes seen so far + new`` on the normalised features of the stage's images; the
  ``new`` centroids least similar to the old heads (lowest maximum cosine) become the new
  heads' directions;
* **soft entropy regularisation** (Sec. 4.2), replacing SimGCD's mean-entropy term: with
  ``p`` the batch's mean prediction, ``p_old``/``p_new`` its mass on the old/new heads,
  ``L = w_on (log 2 - H(p_old, p_new)) + w_old (log K_old - H(p[old] / p_old))
  + w_new (log K_new - H(p[new] / p_new))`` — the model must give the new classes a share
  of the predictions without forcing them into a fixed proportion;
* **hardness-aware prototype sampling** (Sec. 4.3): each class seen so far keeps a prototype
  ``mu_c`` (the mean normalised feature: of its labelled images after stage 0; of the images
  predicted as it after its own stage); its hardness ``h_c`` is the mean cosine of ``mu_c`` to
  the other prototypes; each step samples classes ``c ~ softmax(h / tau)``, ``tau = 0.1``, and
  features ``mu_c + N(0, I) r`` with ``r`` the square root of the mean per-dimension variance
  of the stage-0 classes' features around their prototypes; the classifier must give them
  their class (cross-entropy), so harder (more confusable) classes are rehearsed more often;
* **feature distillation** from the previous stage's model:
  ``sum_d (f/|f| - f_old/|f_old|)^2``, averaged over the batch.

``L = L_self-distill + L_soft-entropy + L_InfoNCE + w_p L_proto + w_f L_distill`` with all
weights 1 (the paper's CIFAR runs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.incremental.discovery_method import entropy_gap, unwrap
from hundred.tracks.incremental.method import Task
from hundred.tracks.incremental.methods.simgcd import SimGCD, SimGCDParams


class HappyParams(SimGCDParams):
    old_new_entropy_weight: float = Field(1.0, ge=0, description="w_on: entropy of the "
                                          "old/new split of the mean prediction")
    old_entropy_weight: float = Field(1.0, ge=0, description="w_old: entropy within old heads")
    new_entropy_weight: float = Field(1.0, ge=0, description="w_new: entropy within new heads")
    prototype_weight: float = Field(1.0, ge=0, description="w_p: hardness-aware prototype loss")
    distill_weight: float = Field(1.0, ge=0, description="w_f: feature distillation")
    hardness_temperature: float = Field(0.1, gt=0, description="tau of softmax(h / tau)")
    radius_scale: float = Field(1.0, ge=0, description="multiplies the noise radius r")
    init_new_heads: bool = Field(True, description="clustering-guided initialisation")
    kmeans_restarts: int = Field(10, ge=1, description="k-means runs (best inertia kept)")


def prototype_hardness(prototypes: torch.Tensor) -> torch.Tensor:
    """``h_c``: mean cosine similarity of each prototype to the *other* prototypes."""
    normalised = F.normalize(prototypes, dim=1)
    similarity = normalised @ normalised.T
    count = len(prototypes)
    if count < 2:
        return torch.zeros(count, device=prototypes.device)
    return (similarity.sum(1) - similarity.diagonal()) / (count - 1)


def hardness_aware_sample(prototypes: torch.Tensor, hardness: torch.Tensor, radius: float,
                          count: int, temperature: float = 0.1,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` pseudo-features ``mu_c + N(0, I) r`` and their classes ``c``, drawn with
    probabilities ``softmax(h / temperature)`` (harder classes more often)."""
    probabilities = torch.softmax(hardness.float() / temperature, dim=0)
    classes = torch.multinomial(probabilities, count, replacement=True, generator=generator)
    noise = torch.randn(count, prototypes.shape[1], device=prototypes.device,
                        generator=generator)
    return F.normalize(prototypes, dim=1)[classes] + noise * radius, classes


def soft_entropy_regulariser(mean_prediction: torch.Tensor, num_old: int, weights: tuple[
        float, float, float]) -> torch.Tensor:
    """Happy's soft entropy regularisation of the batch's mean prediction (see the module)."""
    old, new = mean_prediction[:num_old], mean_prediction[num_old:]
    mass = torch.stack([old.sum(), new.sum()])
    terms = [entropy_gap(mass), entropy_gap(old / mass[0])]
    terms.append(entropy_gap(new / mass[1]) if len(new) > 1 else mass.new_zeros(()))
    return sum(w * t for w, t in zip(weights, terms))  # type: ignore[return-value]


@torch.no_grad()
def kmeans_new_heads(features: torch.Tensor, old_heads: torch.Tensor, clusters: int,
                     new: int, seed: int, restarts: int = 10) -> torch.Tensor:
    """Clustering-guided initialisation: k-means (scikit-learn) with ``clusters`` centres on
    the L2-normalised ``features``; the ``new`` normalised centroids with the lowest maximum
    cosine to ``old_heads`` (rows) are returned as the new heads' directions."""
    from sklearn.cluster import KMeans

    points = F.normalize(features.float(), dim=1).cpu().numpy().astype(np.float64)
    clusters = max(new, min(clusters, len(points)))
    kmeans = KMeans(n_clusters=clusters, n_init=restarts, random_state=seed).fit(points)
    centroids = F.normalize(torch.from_numpy(kmeans.cluster_centers_).float(), dim=1)
    closest = (centroids @ F.normalize(old_heads.float().cpu(), dim=1).T).max(dim=1).values
    chosen = torch.topk(closest, k=min(new, clusters), largest=False).indices
    return centroids[chosen]


@register("incremental", "happy")
class Happy(SimGCD):
    """SimGCD + clustering-guided init, soft entropy, hardness-aware prototypes, feature KD."""

    Params = HappyParams
    search_space = {"method_params.hardness_temperature": Choice((0.05, 0.1, 0.2, 0.5)),
                    "method_params.distill_weight": Choice((0.5, 1.0, 2.0))}
    keeps_old_model = True

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        self.prototypes: torch.Tensor | None = None  # (classes seen, feature dim), unit rows
        self.radius = 0.0

    # -- stage boundaries --------------------------------------------------------------------
    def before_task(self, task: Task, model: nn.Module, old_model: nn.Module | None) -> None:
        super().before_task(task, model, old_model)
        if task.index == 0 or not self.params.init_new_heads or self.task_data is None:
            return
        features = self._features(model)[0]
        head = model.head
        directions = kmeans_new_heads(features, head.weight[: task.num_old].detach(),
                                      task.num_seen, task.num_new, seed=self._seed(task),
                                      restarts=self.params.kmeans_restarts)
        with torch.no_grad():
            fresh = head.weight[task.num_old:]
            norm = fresh.norm(dim=1).mean()
            fresh[: len(directions)] = directions.to(fresh) * norm

    def after_task(self, task: Task, model: nn.Module) -> dict[str, Any]:
        """Update the prototypes: stage 0 from the labelled images (and the radius r), later
        stages from the images predicted as each new class (the head's direction when none
        is)."""
        if self.task_data is None:
            return {}
        features, labels, predictions = self._features(model)
        if task.index == 0:
            classes = labels
        else:
            classes = predictions
        rows, empty = [], 0
        for c in task.new_classes:
            members = features[classes == c]
            if len(members):
                rows.append(members.mean(0))
            else:  # no image predicted as this class: its classifier weight stands in
                rows.append(F.normalize(model.head.weight[c].detach().float().cpu(), dim=0))
                empty += 1
        if task.index == 0:
            variances = [features[labels == c].var(0, unbiased=False).mean()
                         for c in task.new_classes if (labels == c).any()]
            self.radius = float(torch.stack(variances).mean().sqrt())
        new = F.normalize(torch.stack(rows), dim=1)
        self.prototypes = new if self.prototypes is None else torch.cat([self.prototypes, new])
        return {"prototypes": len(self.prototypes), "radius": self.radius,
                "classes_without_images": empty}

    @torch.no_grad()
    def _features(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised features, labels as given (-1 when hidden) and predictions of the
        stage's images (unaugmented, in order), on the CPU."""
        was_training = model.training
        model.eval()
        features, labels, predictions = [], [], []
        for images, batch_labels in self.task_data.plain():
            logits, batch_features = model(images, return_features=True)
            features.append(F.normalize(batch_features.float(), dim=1).cpu())
            labels.append(batch_labels.cpu())
            predictions.append(logits.argmax(1).cpu())
        model.train(was_training)
        return torch.cat(features), torch.cat(labels), torch.cat(predictions)

    def _seed(self, task: Task) -> int:
        return int(self.config.seed) * 1009 + task.index

    # -- the unlabelled stages' terms --------------------------------------------------------
    def entropy_regulariser(self, mean_prediction: torch.Tensor) -> torch.Tensor:
        p = self.params
        return soft_entropy_regulariser(
            mean_prediction, self.task.num_old,
            (p.old_new_entropy_weight, p.old_entropy_weight, p.new_entropy_weight))

    def unlabelled_extra(self, model: nn.Module, images: torch.Tensor,
                         features: torch.Tensor) -> torch.Tensor:
        p, total = self.params, features.new_zeros((), dtype=torch.float32)
        if self.prototypes is not None and p.prototype_weight > 0:
            prototypes = self.prototypes.to(features.device)
            sampled, classes = hardness_aware_sample(
                prototypes, prototype_hardness(prototypes), self.radius * p.radius_scale,
                len(images), p.hardness_temperature)
            logits = unwrap(model).head(sampled.to(features.dtype)).float()
            total = total + p.prototype_weight * F.cross_entropy(logits, classes)
        if self.old_model is not None and p.distill_weight > 0:
            with torch.no_grad():
                old = self.old_model(images, return_features=True)[1]
            drift = F.normalize(features.float(), dim=1) - F.normalize(old.float(), dim=1)
            total = total + p.distill_weight * drift.pow(2).sum(1).mean()
        return total

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes, "radius": self.radius}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prototypes = state.get("prototypes")
        self.prototypes = None if prototypes is None else prototypes.float().cpu()
        self.radius = float(state.get("radius", 0.0))
