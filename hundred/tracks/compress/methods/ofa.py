"""OFA progressive shrinking: the once-for-all baseline that DεpS is compared with.

Cai, Gan, Wang, Zhang, Han, "Once-for-All: Train One Network and Specialize it for Efficient
Deployment" (ICLR 2020, arXiv 1908.09791), Sec. 3.2 and Fig. 3, on the elastic ResNet of
:mod:`hundred.models.elastic`. Training is a sequence of phases over shares of the training
steps, each adding one elastic dimension to the children sampled:

1. until ``kernel_start``: the full network alone, on the labels;
2. elastic kernel: each block's kernel drawn from ``kernel_choices`` (depth and width at
   their largest);
3. from ``depth_start``, elastic depth: each stage's depth drawn too;
4. from ``width_start``, elastic width: each block's hidden ratio drawn too (the whole space).

In phases 2-4 every step trains ``children`` children drawn uniformly from the phase's space,
their gradients accumulated into one optimiser step, each on ``CE(labels) + kd_ratio x KD``
where KD is the soft cross-entropy (temperature 1) against a *frozen teacher*: the full
network as it was when phase 1 ended (OFA distils from the trained full model; BigNAS and DεpS
distil in place from the full model of the same step). The teacher is method state, so a
resumed run has the same one.

Defaults put the shrinking point where DεpS puts it (half the steps) and train 4 children a
step, as many forward/backward passes as the sandwich of bignas/deps, so a comparison at
equal steps is one at (nearly) equal compute: OFA adds one teacher forward pass a step.
Simplifications (documented): OFA's phases take more epochs than its full-model phase (here
they share the steps given); OFA samples 1 child a step in the kernel phase and 2 later; it
widens the depth and width choices in two stages each (here the whole choice set at once);
it learns kernel transformation matrices (here the centre crop, as ``elastic_resnet``);
it sorts channels by importance before the width phase (not here). Export and ``hundred
search compress`` are those of bignas.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.models.elastic import Child, ElasticResNet
from hundred.registry import register
from hundred.tracks.compress.methods.bignas import BigNAS, BigNASParams, soft_cross_entropy
from hundred.tracks.compress.supernet import supernet_of

PHASES = ("full", "kernel", "depth", "width")


class OFAParams(BigNASParams):
    kernel_start: float = Field(0.5, ge=0, lt=1, description="share of the training steps at "
                                "which the full-network phase ends and elastic kernel starts")
    depth_start: float = Field(0.6, ge=0, lt=1, description="share of the steps at which "
                               "elastic depth joins")
    width_start: float = Field(0.8, ge=0, lt=1, description="share of the steps at which "
                               "elastic width joins")
    children: int = Field(4, ge=1, description="children drawn from the phase's space each "
                          "step (4: the passes of the bignas/deps sandwich)")
    kd_ratio: float = Field(1.0, ge=0, description="weight of the distillation from the frozen "
                            "full network (OFA: 1)")

    @model_validator(mode="after")
    def phases_in_order(self) -> "OFAParams":
        if not self.kernel_start <= self.depth_start <= self.width_start:
            raise ValueError("the phases must start in order: kernel_start <= depth_start <= "
                             f"width_start (got {self.kernel_start}, {self.depth_start}, "
                             f"{self.width_start})")
        return self


def sample_elastic(space: ElasticResNet, rng: random.Random, elastic: set[str]) -> Child:
    """A child drawn uniformly over the dimensions in ``elastic`` (``kernel``, ``depth``,
    ``expand``), the others at their largest choice."""
    depth = [rng.randint(space.min_depth, d) if "depth" in elastic else d
             for d in space.depths]

    def choose(choices: list, dimension: str) -> list[list]:
        return [[rng.choice(choices) if dimension in elastic else max(choices)
                 for _ in range(d)] for d in depth]

    return {"depth": depth, "expand": choose(space.expand_choices, "expand"),
            "kernel": choose(space.kernel_choices, "kernel")}


@register("compress", "ofa")
class OFA(BigNAS):
    """Progressive shrinking: full network, then elastic kernel, depth and width, with KD from
    the frozen full network."""

    Params = OFAParams

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        super().setup(model, ctx)
        self.teacher = self.add_state("teacher", copy.deepcopy(getattr(model, "module", model)))
        self.teacher_taken = False

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_taken": self.teacher_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher_taken = bool(state.get("teacher_taken", False))

    def phase(self, progress: float) -> str:
        """The phase at ``progress`` (share of the steps done)."""
        starts = (self.params.kernel_start, self.params.depth_start, self.params.width_start)
        return PHASES[sum(progress >= start for start in starts)]

    def elastic(self, phase: str) -> set[str]:
        return {"full": set(), "kernel": {"kernel"}, "depth": {"kernel", "depth"},
                "width": {"kernel", "depth", "expand"}}[phase]

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        return {"ofa_phase": self.phase(max(0, self.step - 1) / self.total_steps)}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        space = supernet_of(model)
        phase = self.phase(self.next_step())
        smoothing = self.config.train.label_smoothing
        if phase == "full":
            self.trace = [{"child": space.largest(), "phase": phase}]
            return cross_entropy(model(images), labels, smoothing)
        if not self.teacher_taken:  # the full network as phase 1 left it
            self.teacher.load_state_dict(getattr(model, "module", model).state_dict())
            self.teacher_taken = True
        with torch.no_grad():
            target = self.teacher.eval()(images)
        self.trace, total = [], None
        try:
            for _ in range(self.params.children):
                child = space.set_child(sample_elastic(space, self.rng, self.elastic(phase)))
                logits = model(images)
                part = cross_entropy(logits, labels, smoothing) + self.params.kd_ratio * \
                    soft_cross_entropy(logits, target)
                self.trace.append({"child": child, "phase": phase, "target": target})
                total = part if total is None else total + part
        finally:
            space.set_child(None)
        return total
