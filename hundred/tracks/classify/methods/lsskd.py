"""LSSKD — Dahri, Memon, Yu, Idris, Khan, Ahmad, Shoman, Aziz & Qureshi, "A Layered
Self-Supervised Knowledge Distillation Framework for Efficient Multimodal Learning on the
Edge" (arXiv 2506.07055, 2025): self-distillation, no pre-trained teacher. Auxiliary
classifiers appended to the intermediate stages learn a self-supervised augmented task and
transfer what they learn one-to-one across the stages; at inference they are removed.

What is implemented, and where it comes from. Only the abstract and secondary summaries of
arXiv 2506.07055 could be read here, not its method section or equations, so the details
follow the template the paper builds on, HSAKD (Yang, An, Cai & Xu, "Hierarchical
Self-supervised Augmented Knowledge Distillation", IJCAI 2021, Sec. 3; official code
winycg/HSAKD), with the teacher replaced by the network's own deeper stages:

* self-supervised augmented task (HSAKD Sec. 3.1): every image is rotated by 0/90/180/270
  degrees (``torch.rot90`` on the augmented batch, on the device); the joint label of image
  ``i`` rotated by ``k`` quarter turns is ``4 * y_i + k`` over ``4C`` classes;
* an auxiliary branch after every stage l = 1..L (HSAKD Sec. 3.2; LSSKD: "after each
  bottleneck stage"): a feature-extraction module (here one 3x3 conv + BN + ReLU to the last
  stage's width; HSAKD copies the later stages, which is heavier and architecture-specific),
  global average pooling, and a linear classifier over the 4C joint classes, trained with
  cross-entropy on the joint labels (``aux_weight``);
* one-to-one transfer across stages: the augmented distribution of each branch, softened at
  temperature ``T`` (3, as HSAKD), is distilled into the branch one stage shallower with
  ``T^2 KL(q_{l+1} || q_l)`` (``transfer="next"``; ``"deepest"``: every shallower branch from
  the deepest one), the deeper side detached (``kd_weight``);
* L2 feature alignment (named by the paper's summaries; its exact form is not known here):
  the mean squared error between each shallower branch's pooled embedding and the pooled
  output of the last stage, detached (``feature_weight``);
* the network's own classifier is trained with cross-entropy on the un-rotated images only,
  as in HSAKD (the rotated copies train the backbone through the branches).

Total: ``L = CE(f(x), y) + aux_weight sum_l CE(c_l(t_k(x)), 4y+k)
+ kd_weight sum_{l<L} T^2 KL(q_{l+1}^T || q_l^T) + feature_weight sum_{l<L} MSE(e_l, sg(e_L))``.
The weights are the template's (all 1); the paper's own weights could not be verified. What
the secondary summaries also mention, a transfer "across iterations" (predictions of an
earlier epoch, as in PS-KD), is not implemented: it needs per-sample memory that the
``loss(model, images, labels)`` hook cannot index.

The branches are the method's trainable modules (``method.aux.*`` in checkpoints), fed by
forward hooks on the stages during the ordinary ``model(images)`` call
(:mod:`hundred.models.taps`), so DDP sees the forward and the model's state dict stays the
plain architecture's. Each step runs the network on 4x the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models.taps import StageTaps, pool_stage_output, stage_shapes, unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.losses import kd_loss
from hundred.tracks.classify.method import ClassifyMethod

ROTATIONS = 4  # 0, 90, 180, 270 degrees


def rotate_batch(images: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch under the four rotations and its joint labels, rotation-major: row
    ``k * B + i`` is image ``i`` turned by ``k`` quarter turns (``torch.rot90`` over H, W),
    with joint label ``4 * y_i + k`` (class-major joint classes, as HSAKD). Rows ``0..B-1``
    are the original batch."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise HundredError(f"rotation labels need square images (B, C, S, S), got "
                           f"{tuple(images.shape)}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    joint = torch.cat([labels.long() * ROTATIONS + k for k in range(ROTATIONS)])
    return rotated, joint


class AuxiliaryBranch(nn.Module):
    """Feature extraction, global pooling and a linear classifier over the joint classes.

    A feature map (B, C, H, W) goes through a 3x3 conv + BN + ReLU to ``width`` channels and
    is then pooled; a token sequence (B, N, D) is mean-pooled first and then goes through
    LayerNorm + Linear + GELU. ``forward`` returns (pooled embedding, logits)."""

    def __init__(self, in_channels: int, width: int, num_outputs: int, tokens: bool) -> None:
        super().__init__()
        self.tokens = tokens
        if tokens:
            self.extract: nn.Module = nn.Sequential(
                nn.LayerNorm(in_channels), nn.Linear(in_channels, width), nn.GELU())
        else:
            self.extract = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(width, num_outputs)

    def forward(self, stage_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokens:
            embedding = self.extract(pool_stage_output(stage_output))
        else:
            embedding = pool_stage_output(self.extract(stage_output))
        return embedding, self.classifier(embedding)


class LSSKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(3.0, gt=0, description="T of the cross-stage KL (HSAKD: 3)")
    aux_weight: float = Field(1.0, ge=0, description="weight of the branches' cross-entropy on "
                                                     "the joint (class, rotation) labels")
    kd_weight: float = Field(1.0, ge=0, description="weight of the T^2-scaled KL from each "
                                                    "deeper branch to the shallower one")
    feature_weight: float = Field(1.0, ge=0, description="weight of the L2 alignment of the "
                                                         "shallower branches' embeddings to the "
                                                         "last stage's pooled output")
    transfer: Literal["next", "deepest"] = Field(
        "next", description="who teaches branch l: branch l+1 (one-to-one, layer by layer) or "
                            "the deepest branch")


@register("classify", "lsskd")
class LSSKD(ClassifyMethod):
    """Rotation-augmented joint-label branches on every stage, deeper ones teaching the
    shallower ones; the plain network's CE on the un-rotated images."""

    Params = LSSKDParams
    search_space = {"method_params.temperature": Choice((1.0, 3.0)),
                    "method_params.feature_weight": Choice((0.0, 1.0))}

    _image_size: int | None = None
    _taps: StageTaps | None = None

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        self._image_size = image_size

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self._taps is None or self._taps.model is not unwrap(model):
            self._taps = StageTaps(model)
        if "aux" in self.trainable:
            return
        size = self._image_size or ctx.config.data.image_size
        if size is None:
            raise HundredError(f"{self.track}/{self.name}: the input size is unknown; call "
                               "prepare() first or set data.image_size")
        shapes = stage_shapes(model, size, self._taps.stages)
        if len(shapes) < 2:
            raise HundredError(f"{self.track}/{self.name} needs at least two stages")
        channels = [s[1] if len(s) == 4 else s[-1] for s in shapes]
        joint_classes = ROTATIONS * unwrap(model).head.out_features
        self.add_trainable("aux", nn.ModuleList(
            AuxiliaryBranch(c, channels[-1], joint_classes, tokens=len(s) == 3)
            for c, s in zip(channels, shapes)))

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._taps is None:
            raise HundredError(f"{self.track}/{self.name}: setup() was not called")
        p = self.params
        rotated, joint = rotate_batch(images, labels)
        with self._taps.capture() as outputs:
            logits = model(rotated)
        loss = cross_entropy(logits[: len(labels)], labels, self.config.train.label_smoothing)

        branches = [branch(out) for branch, out in zip(self.trainable["aux"], outputs)]
        embeddings = [e for e, _ in branches]
        aux_logits = [z for _, z in branches]
        deepest = len(aux_logits) - 1
        if p.aux_weight > 0:
            loss = loss + p.aux_weight * sum(F.cross_entropy(z.float(), joint)
                                             for z in aux_logits)
        if p.kd_weight > 0:
            teachers = [l + 1 if p.transfer == "next" else deepest for l in range(deepest)]
            loss = loss + p.kd_weight * sum(kd_loss(aux_logits[l], aux_logits[t], p.temperature)
                                            for l, t in enumerate(teachers))
        if p.feature_weight > 0:
            target = pool_stage_output(outputs[-1]).detach().float()
            loss = loss + p.feature_weight * sum(F.mse_loss(e.float(), target)
                                                 for e in embeddings[:deepest])
        return loss
