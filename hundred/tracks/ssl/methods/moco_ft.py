"""MoCo with Feature Transformation (FT) — Zhu, Zhao, Liu, Sun & Chen, "Improving Contrastive
Learning by Visualizing Feature Transformation" (ICCV 2021, arXiv 2108.02982).

The paper watches the distributions of positive and negative pair scores during training
(its visualisation tool: here every MoCo run logs them, see :class:`~hundred.tracks.ssl.
methods.moco.ScoreHistogram`, and the ssl report draws them) and transforms the features
that enter MoCo's InfoNCE (Sec. 4) — the L2-normalised query ``q``, its positive key ``k``
and the queue's negatives ``n_1..n_K``:

* *positive extrapolation* (hard positives): with ``lambda+ = 1 + Beta(a+, a+)`` (in
  [1, 2]), ``q^ = lambda+ q + (1 - lambda+) k`` and ``k^ = lambda+ k + (1 - lambda+) q``:
  both move apart along the line through ``q`` and ``k``, so the positive score drops
  (``q^.k^ = s + 2 lambda+ (1 - lambda+) (1 - s)`` for ``s = q.k``, lower for any
  ``lambda+ > 1``);
* *negative interpolation* (diversified negatives): with ``lambda- ~ Beta(a-, a-)`` and a
  random permutation ``pi`` of the queue, ``n^_i = lambda- n_i + (1 - lambda-) n_pi(i)``;
* the logits are ``[q^.k^, q^.n^_1, ..., q^.n^_K] / tau`` (MoCo's Eq. (1) on the
  transformed features), through :meth:`MoCo.contrastive_logits`.

Read in the official code (DTennant/CL-Visualizing-Feature-Transformation,
``memory/mem_moco.py`` and the README's training commands, ``--mixnorm_target posneg
--sep_alpha --pos_alpha 2.0 --neg_alpha 1.6 --expolation_mask``):

* both ``q`` and ``k`` are extrapolated, each towards the other's opposite, with the same
  lambda; ``q`` is not detached in ``k^``, so the gradient reaches ``q`` through both;
* one scalar lambda+ and one scalar lambda- per iteration (``dim_mask`` ``none``, the
  default); ``lambda_per=sample`` draws one per query pair and one per negative, and
  ``dimension`` one per feature dimension (the official ``dim_mask both``). They are drawn
  per loss term: ``symmetric=true`` draws again for the second view order;
* the transformed features are *not* re-normalised (``--postmix_norm`` is off in the
  published commands, so ``|n^| <= 1`` and ``|q^|`` may exceed 1); ``renormalize`` offers
  ``positives`` (the official ``--postmix_norm``, which re-normalises ``q^`` and ``k^`` only)
  and ``all`` (also the negatives);
* the queue receives the original keys, not ``k^`` (under DDP the official code enqueues the
  gathered, untransformed keys); MoCo's ``after_optimizer_step`` does so here.

Randomness. lambda and pi are drawn from the global torch RNG of the features' device
(the CUDA generator on a GPU): the trainer saves its CPU and CUDA states in every checkpoint
and restores them on resume, so a resumed run draws the same lambdas as an uninterrupted one
(tested). A dedicated per-step generator would need a generator-aware Beta sampler, which
torch does not offer; the global one also costs no host synchronisation.

Histograms. Besides MoCo's ``score_hist`` (the cosine scores before the transformation,
comparable with plain MoCo), ``score_hist_transformed`` counts the scores that enter the
loss, over [-2, 2] with the same bin width (without re-normalisation they can leave
[-1, 1]; the rare scores beyond [-2, 2] count in the edge bins). The scores before the
transformation cost one extra ``N x K`` matrix product per step (no gradient), skipped with
``score_bins=0``.

Defaults: the paper's ImageNet-100 setting on MoCo v2 (tau 0.2, K 65536, m 0.99 from MoCo's
parameters; a+ = 2, a- = 1.6).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.ssl.methods.moco import MoCo, MoCoParams, ScoreHistogram


class MoCoFTParams(MoCoParams):
    model_config = ConfigDict(extra="forbid")
    positive_extrapolation: bool = Field(True, description="hard positives: q^ = l q + (1-l) "
                                         "k, k^ = l k + (1-l) q with l = 1 + Beta(a+, a+)")
    negative_interpolation: bool = Field(True, description="diversified negatives: n^_i = "
                                         "l n_i + (1-l) n_pi(i) with l ~ Beta(a-, a-)")
    positive_alpha: float = Field(2.0, gt=0, description="a+ of lambda+ = 1 + Beta(a+, a+) "
                                  "(paper: 2)")
    negative_alpha: float = Field(1.6, gt=0, description="a- of lambda- ~ Beta(a-, a-) "
                                  "(paper: 1.6)")
    lambda_per: Literal["iteration", "sample", "dimension"] = Field(
        "iteration", description="one lambda+ and one lambda- per iteration (paper), per "
        "query pair and per negative, or per feature dimension (official dim_mask both)")
    renormalize: Literal["none", "positives", "all"] = Field(
        "none", description="project the transformed features back onto the unit sphere: "
        "none (official commands), positives (q^ and k^: official --postmix_norm), all")


def extrapolate_positives(queries: torch.Tensor, keys: torch.Tensor, lam: torch.Tensor | float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lam q + (1 - lam) k, lam k + (1 - lam) q)``: extrapolation for ``lam > 1`` (Sec. 4);
    ``lam`` is a scalar or broadcasts against ``(N, D)``."""
    return lam * queries + (1 - lam) * keys, lam * keys + (1 - lam) * queries


def interpolate_negatives(negatives: torch.Tensor, lam: torch.Tensor | float,
                          permutation: torch.Tensor) -> torch.Tensor:
    """``lam n_i + (1 - lam) n_pi(i)`` for the rows ``n_i`` of ``negatives`` ``(K, D)``;
    ``lam`` is a scalar or broadcasts against ``(K, D)``."""
    return lam * negatives + (1 - lam) * negatives[permutation]


@register("ssl", "moco_ft")
class MoCoFT(MoCo):
    """MoCo v2 whose InfoNCE sees extrapolated positives and interpolated negatives."""

    Params = MoCoFTParams
    search_space = {"method_params.temperature": Choice((0.1, 0.2, 0.5)),
                    "method_params.positive_alpha": Choice((1.0, 2.0, 4.0)),
                    "method_params.negative_alpha": Choice((1.0, 1.6, 2.0))}

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        super().setup(model, ctx)
        bins = self.params.score_bins
        self.transformed_histogram = (ScoreHistogram(2 * bins, ctx.device, -2.0, 2.0)
                                      if bins and self.transforms else None)

    @property
    def transforms(self) -> bool:
        return self.params.positive_extrapolation or self.params.negative_interpolation

    def draw_lambda(self, alpha: float, like: torch.Tensor) -> torch.Tensor:
        """Beta(alpha, alpha) samples from the global RNG of ``like``'s device: one scalar
        (``lambda_per=iteration``), one per row (``sample``: ``(rows, 1)``) or one per entry
        (``dimension``) of ``like``."""
        shape = {"iteration": (), "sample": (like.shape[0], 1),
                 "dimension": tuple(like.shape)}[self.params.lambda_per]
        concentration = torch.full((), alpha, dtype=torch.float32, device=like.device)
        beta = torch.distributions.Beta(concentration, concentration, validate_args=False)
        return beta.sample(shape)

    def transform(self, queries: torch.Tensor, keys: torch.Tensor, negatives: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transformed ``(q^, k^, n^)`` of normalised queries, keys and negatives."""
        params = self.params
        if params.positive_extrapolation:
            lam = 1 + self.draw_lambda(params.positive_alpha, queries)
            queries, keys = extrapolate_positives(queries, keys, lam)
            if params.renormalize != "none":
                queries, keys = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
        if params.negative_interpolation:
            lam = self.draw_lambda(params.negative_alpha, negatives)
            permutation = torch.randperm(len(negatives), device=negatives.device)
            negatives = interpolate_negatives(negatives, lam, permutation)
            if params.renormalize == "all":
                negatives = F.normalize(negatives, dim=1)
        return queries, keys, negatives

    def contrastive_logits(self, queries: torch.Tensor, keys: torch.Tensor,
                           negatives: torch.Tensor) -> torch.Tensor:
        """``[q^.k^, q^.n^_1, ..., q^.n^_K] / tau`` of the transformed features; the scores
        before the transformation go into ``score_hist``, those after into
        ``score_hist_transformed``."""
        if not self.transforms:
            return super().contrastive_logits(queries, keys, negatives)
        if getattr(self, "score_histogram", None) is not None:
            with torch.no_grad():
                self.count_scores(*self.pair_scores(queries, keys, negatives))
        positive, negative = self.pair_scores(*self.transform(queries, keys, negatives))
        if getattr(self, "transformed_histogram", None) is not None:
            self.transformed_histogram.add(positive, negative)
        return torch.cat([positive, negative], dim=1) / self.params.temperature

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        """MoCo's ``score_hist`` and the transformed scores' ``score_hist_transformed``."""
        logged = super().epoch_log(epoch)
        histogram = getattr(self, "transformed_histogram", None)
        counts = histogram.pop() if histogram is not None else None
        return logged if counts is None else {**logged, "score_hist_transformed": counts}
