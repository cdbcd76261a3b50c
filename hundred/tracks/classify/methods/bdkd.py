"""BD-KD — Amara, Sepahvand, Meyer, Gross & Clark, "BD-KD: Balancing the Divergences for Online
Knowledge Distillation" (arXiv:2212.12965, v2 2024): online distillation (a teacher trained
together with the student, as in DML) made *student-centred* by changing the distillation
terms of both networks.

Student (the run's model), for each sample i:

    L_S = CE(y, p_S) + T^2 mean_i [ w_f^i KL(p_T^i || p_S^i) + w_r^i KL(p_S^i || p_T^i) ]

the sample-wise balance of forward and reverse KL
(:func:`hundred.tracks.classify.losses.balanced_divergence`): where the student's entropy
exceeds the teacher's (an under-confident student) the mode-seeking reverse KL is multiplied
by ``multiplier`` (delta), where it is below (an over-confident student) the mode-covering
forward KL is; the weights are chosen anew each step from the current outputs (detached).

Online teacher (``method_params.peer``; trained from scratch, never frozen):

    L_T = CE(y, p_T) + T^2 KL(p_T || p_S)          (teacher_divergence="reverse")

the teacher's *reverse* KL towards the (detached) student: the teacher is drawn towards the
student's modes instead of being made to cover the student's whole distribution, which is
DML's teacher term ``KL(p_S || p_T)`` (``teacher_divergence="forward"``).

What was checked, and what was not: the full text of the paper (its equations and their
numbers) could not be read from this workplace; its abstracts (v1 2022, v2 2024) state
online KD, a sample-wise weighting of forward and reverse KL in the student's loss, and
(v2) adjusted losses for both the student and the teacher. The entropy rule (multiplier on
the reverse KL where H(p_S) > H(p_T), on the forward KL where H(p_T) > H(p_S), 1 otherwise,
entropies of the temperature-T outputs) follows the BD-KD baseline of the ABKD code
(ghwang-s/abkd, ``bdkd``, multiplier 2; some of its versions use 3). The teacher's reverse KL
follows a summary of the paper; the temperature (default 1, as DML) and the unit weights of
the CE and KL terms are assumptions. Equation numbers are therefore not cited.
The peer defaults to the student's own architecture (so the method runs with any model);
the paper's setting is a larger teacher, e.g. ``--set method_params.peer=resnet56`` for a
``resnet20`` or ``resnet32`` student on CIFAR.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.classify.losses import balanced_divergence, kd_loss, reverse_kd_loss
from hundred.tracks.classify.online import OnlineDistillationMethod, OnlineParams


class BDKDParams(OnlineParams):
    multiplier: float = Field(2.0, ge=1.0, description="delta: the weight of the favoured KL "
                              "direction of each sample (the other has weight 1); 1 is the "
                              "symmetric KL")
    temperature: float = Field(1.0, gt=0, description="softening temperature T of both "
                               "networks' distributions and entropies (losses scaled by T^2)")
    teacher_divergence: Literal["reverse", "forward"] = Field(
        "reverse", description="the online teacher's KL term: reverse = KL(p_T || p_S) "
        "(BD-KD), forward = KL(p_S || p_T) (DML's)")


@register("classify", "bdkd")
class BDKD(OnlineDistillationMethod):
    """Student: CE + entropy-balanced forward/reverse KL; online teacher: CE + reverse KL."""

    Params = BDKDParams
    search_space = {"method_params.multiplier": Choice((2.0, 3.0))}

    def mutual_terms(self, student_logits: torch.Tensor, peer_logits: torch.Tensor
                     ) -> torch.Tensor:
        p = self.params
        student = balanced_divergence(student_logits, peer_logits, p.multiplier, p.temperature)
        if p.teacher_divergence == "reverse":
            teacher = reverse_kd_loss(peer_logits, student_logits, p.temperature)
        else:
            teacher = kd_loss(peer_logits, student_logits, p.temperature)
        return student + teacher
