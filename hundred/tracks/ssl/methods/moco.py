"""MoCo v2 — He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning" (CVPR 2020), with the v2 changes of Chen, Fan, Girshick & He,
"Improved Baselines with Momentum Contrastive Learning" (arXiv 2003.04297): an MLP projection
head, temperature 0.2 and stronger augmentation (the view recipe, ``ssl.augment``).

* The *query encoder* is the run's backbone followed by a projection MLP (lightly's
  ``MoCoProjectionHead``, v2: ``feature_dim -> 2048 -> 128``); the *key encoder* is a copy of
  both whose parameters follow the momentum update of MoCo's Eq. (2),
  ``theta_k <- m theta_k + (1 - m) theta_q``, and receive no gradient.
* A *queue* of the K most recent keys (L2-normalised) is the dictionary of negatives; the
  keys of each batch are enqueued first-in-first-out after the step (under DDP, the keys of
  every rank, gathered).
* The loss is InfoNCE, MoCo's Eq. (1): ``L_q = -log exp(q.k+ / tau) / sum_{i=0..K} exp(q.k_i
  / tau)`` over the positive key and the K queued negatives, i.e. a (K+1)-way cross-entropy
  on the logits of :meth:`MoCo.contrastive_logits` with the positive in column 0.

Order of updates. MoCo updates the key encoder at the start of each step, before computing
the keys, from the query encoder as the previous optimiser step left it. Here the update runs
in ``after_optimizer_step``, i.e. at the end of the previous step, with the same weights: the
keys of step t are computed by the same key encoder in both orders (at step 0 the key encoder
is an exact copy, and MoCo's update of a copy towards itself is a no-op). The enqueue of the
step's keys runs there too, after the backward pass has used the queue.

Symmetry. MoCo v2 is asymmetric (view 0 -> queries, view 1 -> keys), the default here;
``symmetric=true`` averages the loss of both view orders against the same queue and enqueues
the keys of both views (2N per step), as solo-learn's "MoCo v2+" symmetrises it (solo-learn
keeps one queue per view; one shared queue here).

Shuffle-BN (MoCo Sec. 3.3) is not implemented. On one device it is a no-op: the whole batch
is one BatchNorm group, whatever its order. Under DDP each rank's key batch normalises with
its own statistics, without the cross-rank shuffle; solo-learn and lightly drop it too
(SyncBN or nothing). The leak it prevents is weak at the batch sizes and with the MLP head of
v2; a model built with SyncBN handles it where it matters.

Checkpoint. The key encoder and the queue (keys and pointer) are registered with
:meth:`~hundred.engine.method.Method.add_state`: saved and restored with the run
(``method.key_encoder.*``, ``method.queue.*``), outside the optimiser. BatchNorm running
statistics of the key encoder are its own (from its forward passes in train mode), not
averaged: MoCo and BYOL average parameters only.

Subclasses (Feature Transformation, ``moco_ft``) override :meth:`MoCo.contrastive_logits`,
which receives the normalised queries, positive keys and the queue's negatives.

Score histograms. Zhu et al.'s visualisation tool (ICCV 2021, Sec. 3) follows the
distributions of the positive scores ``q.k+`` and the negative scores ``q.n`` (cosine
similarities) over training. :class:`ScoreHistogram` counts them on the device in
``score_bins`` fixed bins over [-1, 1] (``torch.histc``: no host synchronisation, a few
elementwise passes over the ``N x K`` scores the logits already hold), and
:meth:`MoCo.epoch_log` writes the epoch's counts into ``metrics.jsonl`` (``score_hist``,
summed over the ranks) and resets them; the ssl track's report draws them.

Defaults: MoCo v2 (tau 0.2, head 2048 -> 128), K = 65536 and m = 0.99 as on ImageNet-100
in Zhu et al., "Improving Contrastive Learning by Visualizing Feature Transformation" (ICCV
2021); MoCo uses m = 0.999 on ImageNet-1K. The queue should hold at least a few batches.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.ssl.method import SSLMethod


class MoCoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.2, gt=0, description="tau of InfoNCE (MoCo v2: 0.2)")
    momentum: float = Field(0.99, ge=0, le=1, description="m of the key encoder's update "
                            "theta_k <- m theta_k + (1 - m) theta_q (0.99 on ImageNet-100; "
                            "MoCo's 0.999 on ImageNet-1K)")
    queue_size: int = Field(65536, ge=1, description="K, the number of queued negative keys")
    proj_hidden_dim: int = Field(2048, ge=1, description="hidden width of the projection MLP")
    proj_output_dim: int = Field(128, ge=1, description="output width of the projection MLP")
    symmetric: bool = Field(False, description="average the loss over both view orders "
                            "(solo-learn's MoCo v2+); MoCo v2 is asymmetric")
    score_bins: int = Field(50, ge=0, description="bins over [-1, 1] of the per-epoch "
                            "histograms of positive and negative pair scores written to "
                            "metrics.jsonl (Zhu et al. 2021's visualisation); 0: none")


class ProjectedEncoder(nn.Module):
    """A backbone's pooled features followed by a projector: ``projector(backbone(x))``."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone.forward_features(images))


class KeyQueue(nn.Module):
    """A first-in-first-out queue of ``size`` keys of width ``dim`` (buffers, so they are
    checkpointed). ``pointer`` is the slot of the oldest key, the next to be overwritten; the
    newest keys sit just before it. It starts full of random unit vectors, as MoCo's does."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue ``keys`` (``(n, dim)``) in order, overwriting the ``n`` oldest (as ``n``
        pushes of one key would: with ``n > size`` only the newest ``size`` remain)."""
        size, count = self.keys.shape[0], len(keys)
        kept = keys.detach()[-size:].to(self.keys.dtype)
        start = self.pointer + (count - len(kept))
        self.keys[(start + torch.arange(len(kept), device=self.keys.device)) % size] = kept
        self.pointer.copy_((self.pointer + count) % size)


class ScoreHistogram:
    """Counts of positive and negative pair scores in ``bins`` equal bins over ``[low,
    high]``, accumulated on ``device`` as int64 (exact). Scores outside the range count in
    the edge bins, so the counts of a series always sum to the number of its finite scores.

    ``torch.histc`` (per-block shared-memory histograms on CUDA, no host synchronisation;
    ``bincount`` would synchronise to find its range) counts in float32, exact up to 2**24
    per call, hence the chunks."""

    CHUNK = 1 << 24

    def __init__(self, bins: int, device: torch.device, low: float = -1.0, high: float = 1.0
                 ) -> None:
        self.bins, self.low, self.high = bins, low, high
        self.counts = {name: torch.zeros(bins, dtype=torch.long, device=device)
                       for name in ("positive", "negative")}

    @torch.no_grad()
    def add(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        """Count the scores of ``positive`` and ``negative`` (any shapes)."""
        for name, scores in (("positive", positive), ("negative", negative)):
            values = scores.detach().float().flatten().clamp(self.low, self.high)
            counts = self.counts[name]
            for chunk in values.split(self.CHUNK):
                counts += torch.histc(chunk, self.bins, self.low, self.high).long()

    def pop(self) -> dict[str, Any] | None:
        """The counts so far (summed over the ranks under DDP: call it on every rank) as
        ``{"range": [low, high], "counts": {"positive": [...], "negative": [...]}}``, then
        zero them; None when nothing was counted."""
        import torch.distributed as dist

        stacked = torch.stack([self.counts["positive"], self.counts["negative"]])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stacked)
        for counts in self.counts.values():
            counts.zero_()
        if int(stacked.sum()) == 0:
            return None
        positive, negative = stacked.tolist()
        return {"range": [self.low, self.high],
                "counts": {"positive": positive, "negative": negative}}


@register("ssl", "moco")
class MoCo(SSLMethod):
    """InfoNCE of projected queries against a momentum key encoder's keys and a queue."""

    Params = MoCoParams
    search_space = {"method_params.temperature": Choice((0.1, 0.2, 0.5)),
                    "method_params.momentum": Choice((0.99, 0.999))}

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "projector" not in self.trainable:
            from lightly.models.modules import MoCoProjectionHead

            self.add_trainable("projector", MoCoProjectionHead(
                unwrap(model).feature_dim, self.params.proj_hidden_dim,
                self.params.proj_output_dim))
        if "key_encoder" not in self.stateful:
            self.add_state("key_encoder", copy.deepcopy(self.query_encoder(model)))
            self.add_state("queue", KeyQueue(self.params.queue_size, self.params.proj_output_dim))
        self._pending_keys: torch.Tensor | None = None
        self.score_histogram = (ScoreHistogram(self.params.score_bins, ctx.device)
                                if self.params.score_bins else None)

    def query_encoder(self, model: nn.Module) -> ProjectedEncoder:
        """The query encoder: the model's backbone and the projector (shared modules)."""
        return ProjectedEncoder(unwrap(model).backbone, self.trainable["projector"])

    @staticmethod
    def pair_scores(queries: torch.Tensor, keys: torch.Tensor, negatives: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The positive scores ``q_i.k_i`` (``(N, 1)``) and the negative scores ``q_i.n_j``
        (``(N, K)``) of queries and keys ``(N, D)`` and negatives ``(K, D)``."""
        return (queries * keys).sum(dim=1, keepdim=True), queries @ negatives.t()

    def contrastive_logits(self, queries: torch.Tensor, keys: torch.Tensor,
                           negatives: torch.Tensor) -> torch.Tensor:
        """The InfoNCE logits ``[q.k+, q.n_1, ..., q.n_K] / tau`` (``(N, 1 + K)``, positive in
        column 0) of L2-normalised queries and keys ``(N, D)`` and negatives ``(K, D)``; the
        scores are counted into the epoch's histogram. The hook subclasses override to
        transform queries, keys or negatives."""
        positive, negative = self.pair_scores(queries, keys, negatives)
        self.count_scores(positive, negative)
        return torch.cat([positive, negative], dim=1) / self.params.temperature

    def count_scores(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        """Add the cosine scores of a batch to the epoch's histogram (when enabled)."""
        if getattr(self, "score_histogram", None) is not None:
            self.score_histogram.add(positive, negative)

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        """The epoch's score histogram (``score_hist``, see :class:`ScoreHistogram`)."""
        histogram = getattr(self, "score_histogram", None)
        counts = histogram.pop() if histogram is not None else None
        return {} if counts is None else {"score_hist": counts}

    def info_nce(self, queries: torch.Tensor, keys: torch.Tensor, negatives: torch.Tensor
                 ) -> torch.Tensor:
        """MoCo's Eq. (1): cross-entropy of the logits with the positive as the target."""
        logits = self.contrastive_logits(queries, keys, negatives)
        return F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))

    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        key_encoder, projector = self.stateful["key_encoder"], self.trainable["projector"]
        query_views = (0, 1) if self.params.symmetric else (0,)
        features = [self.encode(model, views[i]) for i in query_views]
        queries = [F.normalize(projector(f), dim=1) for f in features]
        with torch.no_grad():
            keys = [F.normalize(key_encoder(views[1 - i]), dim=1) for i in query_views]
        negatives = self.stateful["queue"].keys.detach()
        losses = [self.info_nce(q, k, negatives) for q, k in zip(queries, keys)]
        self._pending_keys = torch.cat(keys)
        return sum(losses) / len(losses), features[0]

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """Enqueue this step's keys (all ranks'), then the momentum update of Eq. (2)."""
        from lightly.models.utils import update_momentum

        if self._pending_keys is not None:
            self.stateful["queue"].push(gather_from_all_ranks(self._pending_keys))
            self._pending_keys = None
        update_momentum(self.query_encoder(model), self.stateful["key_encoder"],
                        self.params.momentum)


def gather_from_all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The concatenation over the ranks of ``tensor`` (rank order; no gradient), or
    ``tensor`` itself outside DDP. Every rank must pass the same shape."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
