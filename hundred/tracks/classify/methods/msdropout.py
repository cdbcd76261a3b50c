"""Multi-sample dropout: M dropout masks on the final feature, one shared head, mean loss.

Inoue, "Multi-Sample Dropout for Accelerated Training and Better Generalization" (arXiv
1905.09788, 2019), Sec. 2 and Fig. 1: the dropout layer after the feature extractor and the
layers after it (here the classification head) are duplicated M times; every copy draws its
own dropout mask on the *same* feature and the copies *share* the head's weights; the loss is
the average of the M per-sample losses,

    L = (1/M) sum_{m=1..M} CE(h(mask_m * f(x) / (1-p)), y).

With M = 1 this is ordinary dropout before the head. At inference dropout is off, so the M
copies are identical and the network is the plain one: evaluation is unchanged.

The M copies are computed as one batch: the features are repeated M times, a dropout with an
independent mask per row is applied, and the head runs once on the (M*B, D) tensor; the
cross-entropy averaged over the M*B rows is exactly the mean of the M per-sample means.

Under DDP (and torch.compile) ``model`` is a wrapper: the features come from calling the
wrapper (so DDP sees its forward pass), and the head is then applied through the unwrapped
``Classifier.head``, i.e. outside that forward. DDP's gradient averaging hooks sit on the
parameters themselves, so the head's gradients (which come only from these M applications,
the wrapper's own logits being unused) are still averaged over the ranks; this relies on every
head parameter receiving a gradient each step, as with DDP's default
``find_unused_parameters=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.models.taps import unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.method import ClassifyMethod


class MultiSampleDropoutParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(8, ge=1, description="M, the number of dropout samples (masks) on the "
                                             "final feature; 1 is ordinary dropout (paper: 8)")
    p: float = Field(0.5, ge=0.0, lt=1.0, description="dropout rate of each sample (paper: 0.5)")


@register("classify", "msdropout")
class MultiSampleDropout(ClassifyMethod):
    """Mean cross-entropy of the shared head over M dropout masks of the pooled feature."""

    Params = MultiSampleDropoutParams
    search_space = {"method_params.p": Choice((0.1, 0.3, 0.5))}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        samples, p = self.params.samples, self.params.p
        _, features = model(images, return_features=True)
        dropped = F.dropout(features.repeat(samples, 1), p=p, training=True)
        logits = unwrap(model).head(dropped)
        return cross_entropy(logits, labels.repeat(samples), self.config.train.label_smoothing)
