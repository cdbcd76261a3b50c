"""GCAB + CFDC — Cotogni, Yang, Cusano, Bagdanov & van de Weijer, "Exemplar-free Continual
Learning of Vision Transformers via Gated Class-Attention and Cascaded Feature Drift
Compensation", arXiv 2211.12292 (2022); official code OcraM17/GCAB-CFDC (built on DyTox and
HAT).

The network is DyTox's (``model.name=convit_ca`` or ``convit_ca_tiny``,
:mod:`hundred.models.convit`): self-attention blocks over the patch tokens, then one shared
class-attention block run once per task with that task's class token; task ``j``'s output
token goes through its own LayerNorm and head. With no task id at inference, the heads'
scores are concatenated (classes in arrival order). Exemplar-free.

* **Gated class-attention (GCAB, Sec. 3.2).** Per-task embeddings ``e_t`` give HAT gates
  ``m_t = sigmoid(s e_t)`` (Serra et al., ICML 2018, Eq. 1) on the class-attention block's
  units: one vector over the embedding channels, one over the MLP's hidden units. ``s`` is
  annealed from ``1/s_max`` to ``s_max`` over each epoch's batches (HAT Eq. 3); at inference
  ``s = s_max``, and old tasks' gates are binarised (``m > 0.5``). After each task the
  cumulative mask ``M = max_j m_j`` of the tasks so far marks the block's weights between two
  used units (``min`` of the two gates, HAT Eq. 2): they get no gradient from later tasks.
  A sparsity penalty ``lambda * sum(m_t (1 - M)) / sum(1 - M)`` (HAT Eq. 5) keeps the new
  task from using more units than it needs. The embeddings' gradient is compensated for the
  annealing and the embeddings clamped (HAT Sec. 2.5).
* **Cascaded feature drift compensation (CFDC, Sec. 3.3).** While task ``t > 0`` trains, a
  projector ``P_t`` (linear, LayerNorm, ReLU, linear, on every patch token — the paper's 1x1
  convolutions) learns to map the new backbone's patch tokens into the previous backbone's:
  ``lambda_pfr * ||F_{t-1}(x) - P_t(F_t(x))||`` on the current task's images, a term of the
  training loss (so it also regularises the backbone, as in PFR). At inference the tokens
  that task ``j``'s class token attends to are ``P_{j+1}(... P_{t-1}(P_t(F_t(x))))``: the
  newest space is mapped back one task at a time.
* **Training loss.** Binary cross-entropy over the concatenated scores of all seen classes
  (the official ``bce_loss``), the old tasks' tokens, heads, gates and projectors frozen, the
  backbone's LayerNorms frozen after the first task (as the official code does).

See docs/incremental.md ("GCAB-CFDC") for what was decided where the paper is silent.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.incremental.method import IncrementalMethod, Task

Gates = tuple[torch.Tensor, torch.Tensor]


class GCABParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    s_max: float = Field(800.0, gt=1, description="largest gate scale s (HAT's s_max); the "
                         "scale is annealed from 1/s_max to s_max over each epoch")
    lambda_sparsity: float = Field(0.05, ge=0, description="weight of the gates' sparsity "
                                   "penalty (the paper's lambda_GCAB)")
    lambda_pfr: float = Field(0.001, ge=0, description="weight of the drift projector's loss "
                              "||F_old - P_t(F_new)|| (the paper's lambda_pfr)")
    thres_cosh: float = Field(50.0, gt=0, description="clamp of s*e in the embeddings' "
                              "gradient compensation (HAT)")
    thres_emb: float = Field(6.0, gt=0, description="the gate embeddings are clamped to "
                             "[-thres_emb, thres_emb] after every step (HAT)")
    classification_loss: Literal["bce", "ce"] = Field(
        "bce", description="bce: binary cross-entropy over all seen classes' scores (the "
        "official code); ce: softmax cross-entropy")
    freeze_norms: bool = Field(True, description="freeze the backbone's LayerNorms after the "
                               "first task (the official code)")
    compensate: bool = Field(True, description="at inference, old tasks' tokens attend to the "
                             "drift-compensated tokens (CFDC); false: to the current backbone's "
                             "tokens (GCAB alone, the paper's ablation)")


class GateEmbeddings(nn.Module):
    """HAT's task embeddings: one vector per task over the block's embedding channels
    (``attention``) and one over its MLP's hidden units (``mlp``); N(0, 1) as in HAT."""

    def __init__(self, tasks: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.attention = nn.ParameterList(nn.Parameter(torch.randn(dim)) for _ in range(tasks))
        self.mlp = nn.ParameterList(nn.Parameter(torch.randn(hidden)) for _ in range(tasks))

    def task(self, index: int) -> tuple[nn.Parameter, nn.Parameter]:
        return self.attention[index], self.mlp[index]


class DriftProjector(nn.Module):
    """CFDC's projector on patch tokens ``(B, N, D)``: linear, LayerNorm, ReLU, linear. The
    official code runs 1x1 convolutions on a ``(D, 1, N)`` map with a LayerNorm over the whole
    map; here the LayerNorm normalises over all ``N x D`` values of an image the same way."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm((num_tokens, dim)), nn.ReLU(),
                                 nn.Linear(dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def drift_cascade(features: torch.Tensor, projectors: Sequence[Callable[..., torch.Tensor]],
                  newest: int, target: int) -> torch.Tensor:
    """Features of task ``newest``'s backbone mapped into task ``target``'s feature space:
    ``P_{target+1}(... P_{newest-1}(P_newest(features)))``, where ``projectors[i - 1]`` is
    ``P_i`` (trained in task ``i``, mapping task ``i``'s space to task ``i - 1``'s)."""
    for index in range(newest, target, -1):
        features = projectors[index - 1](features)
    return features


def binary_gates(embeddings: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Old tasks' gates: ``sigmoid(s e) > 0.5``, i.e. ``e > 0``, for any ``s > 0``."""
    return [(e.detach() > 0).float() for e in embeddings]


def soft_gates(embeddings: Sequence[torch.Tensor], s: float) -> list[torch.Tensor]:
    """The training task's gates ``sigmoid(s e)``."""
    return [torch.sigmoid(s * e) for e in embeddings]


def anneal(batch: int, batches: int, s_max: float) -> float:
    """HAT's gate scale at ``batch`` of an epoch of ``batches``: 1/s_max rising to s_max."""
    return (s_max - 1 / s_max) * batch / max(1, batches) + 1 / s_max


@register("incremental", "gcab_cfdc")
class GCABCFDC(IncrementalMethod):
    """Gated class-attention + cascaded feature drift compensation, exemplar-free."""

    Params = GCABParams
    params: GCABParams
    exemplars = "never"  # its point: no image of an old class, no task id
    keeps_old_model = True  # the previous backbone is the projector's target
    classifier = "gcab"  # per-task heads on per-task tokens over drift-compensated features
    search_space = {"method_params.lambda_sparsity": Choice((0.01, 0.05, 0.1)),
                    "method_params.lambda_pfr": Choice((0.0001, 0.001, 0.01))}

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        self.task_sizes: list[int] = []  # classes of each task so far (its head's rows)
        # cumulative binary masks of the finished tasks (attention channels, MLP units)
        self.cumulative: list[torch.Tensor] | None = None
        self._s = 1 / self.params.s_max
        self._batch, self._batches = 0, 1
        self._hooks: list[Any] = []
        self._protected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._log: dict[str, float] = {}

    # -- task bookkeeping ------------------------------------------------------------------
    def before_task(self, task: Task, model: nn.Module, old_model: nn.Module | None) -> None:
        if len(self.task_sizes) < task.index:
            raise HundredError(f"gcab_cfdc: task {task.index + 1} arrives without the sizes of "
                               f"the tasks before it (a restored run lost the method's state?)")
        self.task_sizes = self.task_sizes[: task.index] + [task.num_new]
        super().before_task(task, model, old_model)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        backbone = unwrap(model).backbone
        if not hasattr(backbone, "class_attention_block"):
            raise HundredError("gcab_cfdc needs a ViT with a class-attention block: "
                               "model.name=convit_ca (the paper's) or convit_ca_tiny")
        if "class_tokens" not in self.trainable:
            self._build(backbone, self.task.count)
        self._batches = ctx.steps_per_epoch
        current = self.task.index
        tokens, gates = self.trainable["class_tokens"], self.trainable["gate_embeddings"]
        for j in range(self.task.count):  # only the current task's parts train
            tokens[j].requires_grad_(j == current)
            gates.attention[j].requires_grad_(j == current)
            gates.mlp[j].requires_grad_(j == current)
            self.trainable["head_norms"][j].requires_grad_(j == current)
        for i, projector in enumerate(self.trainable["projectors"]):
            projector.requires_grad_(i == current - 1)
        if current > 0 and self.params.freeze_norms:
            for module in backbone.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(False)
        self._protect(unwrap(model))

    def _build(self, backbone: nn.Module, tasks: int) -> None:
        """Every task's parts at once (the checkpoint then has the same keys at every task
        boundary); a part is used and trained only from its task on."""
        dim, block = backbone.feature_dim, backbone.class_attention_block
        tokens = nn.ParameterList(
            nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
            for _ in range(tasks))
        self.add_trainable("class_tokens", tokens)
        self.add_trainable("gate_embeddings", GateEmbeddings(tasks, dim, block.hidden_dim))
        self.add_trainable("head_norms", nn.ModuleList(nn.LayerNorm(dim) for _ in range(tasks)))
        self.add_trainable("projectors", nn.ModuleList(
            DriftProjector(dim, backbone.num_patches) for _ in range(tasks - 1)))

    def protected_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Parameter name -> 1 where a finished task uses the weight (it must not change): the
        class-attention block's weights between units that the cumulative mask keeps (HAT's
        ``min`` of the two gates) and the old classes' rows of the head."""
        masks: dict[str, torch.Tensor] = {}
        head = model.head
        for name, parameter in head.named_parameters():
            if parameter.ndim and parameter.shape[0] == head.out_features:
                rows = torch.zeros_like(parameter)
                rows[: self.task.num_old] = 1
                masks[f"head.{name}"] = rows
        if self.cumulative is None or self.task.index == 0:
            return masks
        block = model.backbone.class_attention_block
        device = block.norm1.weight.device
        channels, hidden = (m.to(device) for m in self.cumulative)
        prefix = "backbone.class_attention_block."
        for name in ("q", "k", "v", "proj"):
            layer = getattr(block.attn, name)
            masks[f"{prefix}attn.{name}.weight"] = torch.outer(channels, channels)
            if layer.bias is not None:
                masks[f"{prefix}attn.{name}.bias"] = channels
        masks[f"{prefix}mlp.fc1.weight"] = torch.outer(hidden, channels)
        masks[f"{prefix}mlp.fc2.weight"] = torch.outer(channels, hidden)
        if block.mlp.fc1.bias is not None:
            masks[f"{prefix}mlp.fc1.bias"] = hidden
        if block.mlp.fc2.bias is not None:
            masks[f"{prefix}mlp.fc2.bias"] = channels
        return masks

    def _protect(self, model: nn.Module) -> None:
        """Hooks that zero the gradient of protected weights, and their values, which
        :meth:`after_optimizer_step` puts back (weight decay must not move them either)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._protected = [], []
        parameters = dict(model.named_parameters())
        for name, mask in self.protected_masks(model).items():
            parameter, keep = parameters[name], mask.bool()
            free = (~keep).to(parameter.dtype)
            self._hooks.append(parameter.register_hook(lambda grad, free=free: grad * free))
            self._protected.append((parameter, keep, parameter.detach().clone()))
        for embedding in self.trainable["gate_embeddings"].task(self.task.index):
            self._hooks.append(embedding.register_hook(
                lambda grad, e=embedding: grad * self._compensation(e)))

    def _compensation(self, embedding: torch.Tensor) -> torch.Tensor:
        """HAT's gradient compensation of an embedding for the annealed scale ``s``."""
        s, e = self._s, embedding.detach()
        limit = self.params.thres_cosh
        return (self.params.s_max / s * (torch.cosh(torch.clamp(s * e, -limit, limit)) + 1)
                / (torch.cosh(e) + 1))

    # -- training -----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self._batch = 0
        self._log = {"sparsity": 0.0, "drift": 0.0, "batches": 0.0}

    def gates(self, task_index: int, s: float) -> Gates:
        """Task ``task_index``'s gates while task ``self.task`` is current: binary for a
        finished task, ``sigmoid(s e)`` for the current one."""
        embeddings = self.trainable["gate_embeddings"].task(task_index)
        if task_index < self.task.index:
            return tuple(binary_gates(embeddings))  # type: ignore[return-value]
        return tuple(soft_gates(embeddings, s))  # type: ignore[return-value]

    def scores(self, model: nn.Module, tokens: torch.Tensor, s: float, compensate: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores over all seen classes (each task's head on its own token) and the current
        task's token; ``compensate`` maps the tokens into each task's space (inference)."""
        backbone, parts = model.backbone, self.trainable
        current, outputs, start = self.task.index, [], 0
        token = tokens[:, 0]
        for j, size in enumerate(self.task_sizes[: current + 1]):
            features = (drift_cascade(tokens, parts["projectors"], current, j) if compensate
                        else tokens)
            token = backbone.class_attention(features, parts["class_tokens"][j], self.gates(j, s))
            outputs.append(model.head(parts["head_norms"][j](token))[:, start:start + size])
            start += size
        return torch.cat(outputs, dim=1), token

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise HundredError("gcab_cfdc runs its per-task class tokens outside the model's "
                               "forward, which DDP does not see: train it on one process")
        net = unwrap(model)
        self._s = anneal(self._batch, self._batches, self.params.s_max)
        self._batch += 1
        tokens = net.backbone.patch_tokens(images)
        logits, _ = self.scores(net, tokens, self._s, compensate=False)
        logits = logits.float()
        if self.params.classification_loss == "bce":
            targets = F.one_hot(labels, logits.shape[1]).float()
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        else:
            loss = F.cross_entropy(logits, labels,
                                   label_smoothing=self.config.train.label_smoothing)
        sparsity = self.sparsity(self.gates(self.task.index, self._s))
        loss = loss + self.params.lambda_sparsity * sparsity
        drift = torch.zeros((), device=loss.device)
        if self.task.index > 0 and self.old_model is not None:
            with torch.no_grad():
                old_tokens = self.old_model.backbone.patch_tokens(images)
            projected = self.trainable["projectors"][self.task.index - 1](tokens)
            drift = torch.linalg.vector_norm((old_tokens - projected).float())
            loss = loss + self.params.lambda_pfr * drift
        self._log["sparsity"] += float(sparsity.detach())
        self._log["drift"] += float(drift.detach())
        self._log["batches"] += 1
        return loss

    def sparsity(self, gates: Gates) -> torch.Tensor:
        """HAT's Eq. 5: the gates' mass on units no finished task uses, over those units."""
        free = ([1 - m.to(g.device) for m, g in zip(self.cumulative, gates)]
                if self.cumulative is not None and self.task.index > 0
                else [torch.ones_like(g) for g in gates])
        used = sum((g * f).sum() for g, f in zip(gates, free))
        return used / torch.clamp(sum(f.sum() for f in free), min=1.0)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        for parameter, keep, value in self._protected:
            parameter.copy_(torch.where(keep, value, parameter))
        limit = self.params.thres_emb
        for embedding in self.trainable["gate_embeddings"].task(self.task.index):
            embedding.clamp_(-limit, limit)

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        batches = max(1.0, self._log.get("batches", 0.0))
        return {"gcab_sparsity": self._log.get("sparsity", 0.0) / batches,
                "cfdc_drift": self._log.get("drift", 0.0) / batches}

    # -- after the task, inference --------------------------------------------------------------
    def after_task(self, task: Task, model: nn.Module) -> dict[str, Any]:
        """Add the task's binarised gates to the cumulative mask (deterministic, so a resumed
        run that repeats it gets the same mask)."""
        embeddings = self.trainable["gate_embeddings"].task(task.index)
        masks = [m.cpu() for m in binary_gates(embeddings)]
        if self.cumulative is None or task.index == 0:
            self.cumulative = masks
        else:
            self.cumulative = [torch.maximum(c, m) for c, m in zip(self.cumulative, masks)]
        return {"task_units": [float(m.mean()) for m in masks],
                "cumulative_units": [float(m.mean()) for m in self.cumulative]}

    def predict(self, model: nn.Module, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores over all seen classes with ``s = s_max``, each task's token attending to
        the drift-compensated tokens; the current task's token as the features."""
        net = unwrap(model)
        return self.scores(net, net.backbone.patch_tokens(images), self.params.s_max,
                           compensate=self.params.compensate)

    def state_dict(self) -> dict[str, Any]:
        return {"task_sizes": list(self.task_sizes),
                "cumulative": None if self.cumulative is None else [m.clone()
                                                                    for m in self.cumulative]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_sizes = [int(n) for n in state["task_sizes"]]
        cumulative = state["cumulative"]
        self.cumulative = None if cumulative is None else [m.float().cpu() for m in cumulative]

