"""NAPA-VQ — Malepathirana, Senanayake & Halgamuge, "NAPA-VQ: Neighborhood-Aware Prototype
Augmentation with Vector Quantization for Continual Learning", ICCV 2023 (arXiv 2308.09297;
official code TamashaM/NAPA-VQ). Exemplar-free; builds on PASS (Zhu et al., CVPR 2021).

* Rotation label expansion (PASS): every image is trained at 0/90/180/270 degrees with the
  expanded label ``4 y + r`` (:func:`~hundred.tracks.incremental.prototypes.rotation_expanded`).
* NA-VQ, a learnable codebook classifier: one coding vector ``c_k`` per expanded class; the
  logits are negative distances, ``L_DCE = CE(-||f - c_k|| / T, y)`` with ``T = 0.1``. Coding
  vectors of earlier tasks' classes are frozen; new ones are drawn from N(0, 1) per task.
* Neighbourhood graph by competitive Hebbian learning (neural gas, Martinetz & Schulten 1991):
  for each sample, the winner (nearest coding vector) is connected to its ``k = 15`` nearest
  coding vectors (so always to the second nearest) with strength 1; every other edge of the
  winner decays by ``0.9`` per sample it won without that edge being refreshed, edges below
  ``0.9^10`` are removed, and the graph is symmetrised (:func:`update_neighbourhood_graph`).
* Neighbourhood-aware separation, with squared distances ``d``:
  ``L_NA = mean_i ReLU(d(f_i, c_{y_i}) - sum_j w_ij d(f_i, c_j))`` over the graph neighbours
  ``j`` of ``c_{y_i}``, ``w_ij ∝ exp(-0.001 d(f_i, c_j))`` (no gradient through ``w``)
  (:func:`neighbourhood_aware_loss`).
* NA-PA, prototype augmentation toward neighbouring classes: an old class's prototype ``p``
  (mean feature, rotation 0) is moved toward the prototype of a random graph neighbour,
  ``p~ = g p + (1 - g) p_nb`` with ``g ~ U(0.5, 1)``, and trained with the old class's label
  through the codebook (``L_protoAug``, and ``L_NA`` on ``p~``)
  (:func:`interpolate_toward_neighbours`).
* Feature distillation from the previous task's model: ``L_KD = ||F - F_old||`` (the norm of
  the whole batch's difference, as the official code and PASS compute it).

``L = L_DCE + L_NA + 10 L_protoAug + 10 L_KD``. The coding vectors have their own plain SGD
(lr 5, then 0.5 in later tasks, as in the official code); the backbone trains with the run's
optimiser (the paper's is Adam at lr 1e-3: ``optim.name=adamw optim.lr=0.001``). Inference: the nearest class mean between the
L2-normalised feature and the L2-normalised rotation-0 coding vectors (the official code's
"NCM"), or the stored class prototypes (``inference=prototypes``). docs/incremental.md lists
where the paper leaves a choice open and what is done here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.engine.method import SetupContext
from hundred.engine.trainer import lr_factor
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.incremental.method import IncrementalMethod, Task
from hundred.tracks.incremental.prototypes import (ROTATIONS, class_sums, nearest_mean_scores,
                                                   rotation_expanded)


class NAPAVQParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.1, gt=0, description="T of the distance cross-entropy L_DCE")
    protoaug_weight: float = Field(10.0, ge=0, description="weight of L_protoAug")
    kd_weight: float = Field(10.0, ge=0, description="weight of the feature distillation L_KD")
    na_weight: float = Field(1.0, ge=0, description="weight of L_NA (1 in the paper)")
    neighbours: int = Field(15, ge=2, description="k: the winner connects to its k nearest "
                            "coding vectors (itself included)")
    edge_decay: float = Field(0.9, gt=0, lt=1, description="edge strength decay per miss")
    min_edge_strength: float = Field(0.9 ** 10, gt=0, le=1,
                                     description="edges weaker than this are removed")
    neighbour_weight_scale: float = Field(0.001, ge=0, description="w ∝ exp(-scale * d_neg)")
    gamma_min: float = Field(0.5, ge=0, le=1, description="g ~ U(gamma_min, 1) in NA-PA")
    codebook_init_std: float = Field(1.0, gt=0, description="new coding vectors ~ N(0, std^2)")
    codebook_lr: float = Field(5.0, ge=0, description="SGD learning rate of the coding vectors "
                               "in the first task (their own optimiser, as in the paper)")
    codebook_lr_later: float = Field(0.5, ge=0, description="... in later tasks (paper: x0.1)")
    rotation_expansion: bool = Field(True, description="4x label expansion by rotations")
    inference: Literal["codebook", "prototypes"] = Field(
        "codebook", description="class references of the nearest-class-mean classifier: the "
        "rotation-0 coding vectors (official code) or the stored class prototypes")


class Codebook(nn.Module):
    """Coding vectors of the expanded classes: ``frozen`` rows (earlier tasks' classes, a
    buffer) followed by ``trained`` rows (the current task's classes, a parameter).

    :meth:`start_task` freezes every row so far and appends the new task's rows. A codebook
    built afresh for a resumed run starts a task with zero frozen rows; loading the previous
    task boundary's weights (whose ``frozen`` + ``trained`` rows are exactly this codebook's
    frozen rows) fills them and keeps the new task's rows (see ``_load_from_state_dict``);
    a checkpoint from within the task (same shapes) loads as usual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("frozen", torch.zeros(0, dim))
        self.trained = nn.Parameter(torch.zeros(0, dim))

    @property
    def vectors(self) -> torch.Tensor:
        return torch.cat([self.frozen, self.trained])

    def __len__(self) -> int:
        return len(self.frozen) + len(self.trained)

    @torch.no_grad()
    def start_task(self, num_frozen: int, new_rows: torch.Tensor) -> None:
        rows = torch.cat([self.frozen, self.trained.detach()])
        if len(rows) == 0:  # a resumed run: filled when the previous boundary is loaded
            rows = self.frozen.new_zeros(num_frozen, self.frozen.shape[1])
        if len(rows) != num_frozen:
            raise ValueError(f"the codebook holds {len(rows)} coding vectors, the earlier "
                             f"tasks {num_frozen}")
        self.frozen = rows
        self.trained = nn.Parameter(new_rows.to(rows))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any
                              ) -> None:
        frozen, trained = state_dict.get(prefix + "frozen"), state_dict.get(prefix + "trained")
        if (frozen is not None and trained is not None
                and len(frozen) + len(trained) == len(self.frozen) < len(self)):
            state_dict = {**state_dict, prefix + "frozen": torch.cat([frozen, trained]),
                          prefix + "trained": self.trained.detach()}
        super()._load_from_state_dict(state_dict, prefix, *args)


@torch.no_grad()
def update_neighbourhood_graph(edges: torch.Tensor, distances: torch.Tensor, k: int,
                               decay: float, min_strength: float) -> torch.Tensor:
    """The graph after one batch of competitive Hebbian learning.

    ``edges`` ``(K, K)``: edge strengths among the K coding vectors (diagonal 1);
    ``distances`` ``(N, K)``: each sample's distance to every coding vector. For each sample,
    the winner ``w`` (nearest coding vector) gets edges of strength 1 to its ``k`` nearest
    coding vectors (itself included). Within the batch, order is ignored as in the official
    code: an edge ``(w, j)`` decays by ``decay`` once per sample won by ``w`` whose ``k``
    nearest did not include ``j``. Edges below ``min_strength`` are removed, and the graph is
    symmetrised by averaging with its transpose."""
    num = edges.shape[0]
    nearest = distances.topk(min(k, num), dim=1, largest=False).indices  # column 0: winner
    winners = nearest[:, :1].expand_as(nearest)
    hits = torch.zeros_like(edges).index_put_((winners.flatten(), nearest.flatten()),
                                              torch.ones_like(nearest.flatten(), dtype=edges.dtype),
                                              accumulate=True)
    wins = torch.bincount(nearest[:, 0], minlength=num).to(edges.dtype)
    hits, wins = _summed_over_ranks(hits), _summed_over_ranks(wins)
    edges = torch.maximum(edges, (hits > 0).to(edges.dtype))
    edges = edges * decay ** (wins[:, None] - hits).clamp(min=0)
    edges = edges * (edges >= min_strength)
    return (edges + edges.T) / 2


def _summed_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Under DDP, the sum over the ranks (so that every rank's graph sees the global batch)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def neighbourhood_aware_loss(distances: torch.Tensor, labels: torch.Tensor, edges: torch.Tensor,
                             weight_scale: float = 0.001) -> torch.Tensor:
    """``mean_i ReLU(d_i+ - sum_j w_ij d_ij-)`` with squared distances: ``d_i+`` to the coding
    vector of the sample's class, ``d_ij-`` to the graph neighbours ``j`` of that vector (not
    itself), ``w_ij = exp(-weight_scale d_ij-)`` normalised over the neighbours, without
    gradient. ``distances`` ``(N, K)`` are Euclidean; a class without neighbours contributes
    ``d_i+`` (its features are pulled to its coding vector)."""
    squared = distances.pow(2)
    positive = squared.gather(1, labels[:, None]).squeeze(1)
    neighbours = edges[labels] > 0
    neighbours[torch.arange(len(labels), device=labels.device), labels] = False
    with torch.no_grad():
        weights = torch.exp(-weight_scale * squared) * neighbours
        weights = weights / weights.sum(1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
    return F.relu(positive - (weights * squared).sum(1)).mean()


def interpolate_toward_neighbours(prototypes: torch.Tensor, rows: torch.Tensor,
                                  edges: torch.Tensor, available: torch.Tensor,
                                  gamma_min: float = 0.5
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NA-PA: ``(p~, neighbour, gamma)`` with ``p~ = gamma p_row + (1 - gamma) p_neighbour``,
    ``neighbour`` drawn uniformly among the graph neighbours of each row (the row itself
    included, as in the official code) that have a prototype (``available``), and
    ``gamma ~ U(gamma_min, 1)``. Draws from the global torch RNG."""
    candidates = (edges[rows] > 0) & available[None, :]
    candidates[torch.arange(len(rows), device=rows.device), rows] = True
    neighbour = torch.multinomial(candidates.float(), 1).squeeze(1)
    gamma = gamma_min + (1 - gamma_min) * torch.rand(len(rows), device=prototypes.device)
    mixed = gamma[:, None] * prototypes[rows] + (1 - gamma[:, None]) * prototypes[neighbour]
    return mixed, neighbour, gamma


def _grown_graph(edges: torch.Tensor, size: int) -> torch.Tensor:
    """``edges`` padded with unconnected new coding vectors (each connected to itself)."""
    grown = torch.zeros(size, size, dtype=edges.dtype, device=edges.device)
    grown[: len(edges), : len(edges)] = edges
    grown.diagonal()[len(edges):] = 1
    return grown


@register("incremental", "napa_vq")
class NAPAVQ(IncrementalMethod):
    """Codebook classifier with a neural-gas graph, NA loss, NA-PA and feature distillation."""

    Params = NAPAVQParams
    search_space = {
        "method_params.temperature": Choice((0.05, 0.1, 0.2)),
        "method_params.protoaug_weight": Choice((1.0, 5.0, 10.0, 20.0)),
        "method_params.kd_weight": Choice((1.0, 5.0, 10.0, 20.0)),
    }
    exemplars = "never"  # no image of an old class: prototypes and coding vectors only
    keeps_old_model = True
    classifier = "ncm"

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.expansion = ROTATIONS if self.params.rotation_expansion else 1
        self.device = torch.device("cpu")
        self.graph = torch.zeros(0, 0)
        self.prototypes: torch.Tensor | None = None  # (expansion * classes of finished tasks, D)
        # the current task's classes under the previous model (NA-PA neighbours while training)
        self.new_sums: torch.Tensor | None = None
        self.new_counts: torch.Tensor | None = None

    # -- modules and state ----------------------------------------------------------------
    @property
    def codebook(self) -> Codebook:
        return self.stateful["codebook"]  # type: ignore[return-value]

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        """Grows the codebook and the graph by the task's classes. The codebook has its own
        plain SGD (the official code's second optimiser: lr 5 against the backbone's Adam
        at 1e-3), applied in :meth:`after_optimizer_step`; so it is registered as state:
        checkpointed with the model (``method.codebook.*``), outside the shared optimiser."""
        self.device, task, dim = ctx.device, self.task, model.feature_dim
        self.schedule, self.steps_per_epoch, self.epochs = (ctx.config.schedule,
                                                            ctx.steps_per_epoch, ctx.epochs)
        if "codebook" not in self.stateful:
            self.add_state("codebook", Codebook(dim))
        size = self.expansion * task.num_seen
        if len(self.codebook) < size:  # a new task (once per task, also after a resume)
            generator = torch.Generator().manual_seed(self.config.seed * 1009 + task.index)
            rows = torch.randn(self.expansion * task.num_new, dim, generator=generator)
            self.codebook.start_task(self.expansion * task.num_old,
                                     rows * self.params.codebook_init_std)
            self.graph = _grown_graph(self.graph, size)
            self.new_sums = torch.zeros(self.expansion * task.num_new, dim)
            self.new_counts = torch.zeros(self.expansion * task.num_new)
        if self.prototypes is None:
            self.prototypes = torch.zeros(0, dim)
        self._to(self.device)

    def _to(self, device: torch.device) -> None:
        for name in ("graph", "prototypes", "new_sums", "new_counts"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).detach().cpu()
                for name in ("graph", "prototypes", "new_sums", "new_counts")
                if getattr(self, name) is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._to(self.device)

    # -- training -------------------------------------------------------------------------
    def _expanded(self, images: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        return rotation_expanded(images, labels) if self.expansion > 1 else (images, labels)

    def _classify(self, features: torch.Tensor, targets: torch.Tensor, vectors: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_DCE, L_NA) of ``features`` with expanded labels ``targets``; updates the graph
        with them first, as the official code does."""
        params = self.params
        distances = torch.cdist(features, vectors)
        self.graph = update_neighbourhood_graph(self.graph, distances.detach(), params.neighbours,
                                                params.edge_decay, params.min_edge_strength)
        dce = F.cross_entropy(-distances / params.temperature, targets)
        na = neighbourhood_aware_loss(distances, targets, self.graph,
                                      params.neighbour_weight_scale)
        return dce, na

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        params = self.params
        images, targets = self._expanded(images, labels)
        logits, features = model(images, return_features=True)
        features, vectors = features.float(), self.codebook.vectors
        dce, na = self._classify(features, targets, vectors)
        # the model's own head is unused: a zero term gives each of its parameters a gradient,
        # as DDP (find_unused_parameters=False) expects
        loss = dce + params.na_weight * na + 0.0 * logits.float().sum()
        if self.old_model is None:
            return loss
        with torch.no_grad():
            old_features = self.old_model(images, return_features=True)[1].float()
            offset = self.expansion * self.task.num_old
            sums, counts = class_sums(old_features, targets - offset, len(self.new_sums))
            self.new_sums += _summed_over_ranks(sums)
            self.new_counts += _summed_over_ranks(counts)
        kd = torch.linalg.vector_norm(features - old_features)
        rows = self.expansion * torch.randint(self.task.num_old, (len(labels),),
                                              device=features.device)
        table, available = self._prototype_table()
        augmented, _, _ = interpolate_toward_neighbours(table, rows, self.graph, available,
                                                        params.gamma_min)
        proto_dce, proto_na = self._classify(augmented, rows, vectors)
        return (loss + params.na_weight * proto_na + params.protoaug_weight * proto_dce
                + params.kd_weight * kd)

    def on_epoch_start(self, epoch: int) -> None:
        self.step = epoch * self.steps_per_epoch

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """One SGD step of the current task's coding vectors, on the run's schedule."""
        trained = self.codebook.trained
        if trained.grad is not None:
            grad = trained.grad
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                grad = _summed_over_ranks(grad) / torch.distributed.get_world_size()
            base = self.params.codebook_lr if self.task.index == 0 else \
                self.params.codebook_lr_later
            trained -= base * lr_factor(self.step, self.steps_per_epoch, self.epochs,
                                        self.schedule) * grad
            trained.grad = None
        self.step += 1

    def _prototype_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prototypes of every expanded class seen (the current task's: mean features under the
        previous model, as far as seen) and which of them exist yet."""
        assert self.prototypes is not None and self.new_sums is not None
        current = self.new_sums / self.new_counts.clamp(min=1)[:, None]
        available = torch.cat([torch.ones(len(self.prototypes), dtype=torch.bool,
                                          device=current.device), self.new_counts > 0])
        return torch.cat([self.prototypes, current]), available

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        return {"graph_edges": self._edge_count()}

    def _edge_count(self) -> int:
        """Undirected edges between distinct coding vectors."""
        off_diagonal = (self.graph > 0).sum() - (self.graph.diagonal() > 0).sum()
        return int(off_diagonal) // 2

    # -- after a task and at evaluation --------------------------------------------------------
    @torch.no_grad()
    def after_task(self, task: Task, model: nn.Module) -> dict[str, Any]:
        """Stores the prototypes (mean features under the trained model, each rotation) of the
        task's classes, from its unaugmented images (nothing random here)."""
        assert self.task_data is not None and self.prototypes is not None
        was_training = model.training
        model.eval()
        size, offset = self.expansion * task.num_new, self.expansion * task.num_old
        sums = torch.zeros(size, self.prototypes.shape[1], device=self.device)
        counts = torch.zeros(size, device=self.device)
        for images, labels in self.task_data.plain():
            images, targets = self._expanded(images.to(self.device), labels.to(self.device))
            features = model(images, return_features=True)[1].float()
            batch_sums, batch_counts = class_sums(features, targets - offset, size)
            sums, counts = sums + batch_sums, counts + batch_counts
        model.train(was_training)
        self.prototypes = torch.cat([self.prototypes, sums / counts.clamp(min=1)[:, None]])
        self.new_sums = self.new_sums[:0] if self.new_sums is not None else None
        self.new_counts = self.new_counts[:0] if self.new_counts is not None else None
        return {"graph_edges": self._edge_count(), "coding_vectors": len(self.codebook),
                "prototypes": len(self.prototypes)}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest class mean over the seen classes: rotation-0 coding vectors, or prototypes."""
        features = model(images, return_features=True)[1]
        references = (self.codebook.vectors if self.params.inference == "codebook"
                      else self.prototypes)
        assert references is not None
        means = references[:: self.expansion][: self.task.num_seen]
        return nearest_mean_scores(features, means.to(features.device)), features
