"""DML — Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning" (CVPR 2018), Sec. 3.1: two
networks learn together from scratch, each from the labels and from the other's predictions,

    L_1 = L_C1 + KL(p_2 || p_1)        (Eq. 4)
    L_2 = L_C2 + KL(p_1 || p_2)        (Eq. 5)

with ``L_Ck`` network k's cross-entropy and ``p_k`` its softmax (temperature 1, no weights:
the paper has no hyperparameter beyond the two architectures). The run's model is network 1
(the student, evaluated and saved); network 2 is the method's peer (``method_params.peer``,
default: the student's own architecture, the paper's main setting of two identical networks,
e.g. two ResNet-32 on CIFAR-100; any other model name gives a mixed pair, e.g. a larger
``resnet56`` peer). DML updates the two networks in turn within each step (Algorithm 1); here
one backward of ``L_1 + L_2`` with each KL target detached gives each network the gradient of
its own loss at the same point, the simultaneous form of those alternating updates.
"""

from __future__ import annotations

import torch

from hundred.registry import register
from hundred.tracks.classify.losses import kd_loss
from hundred.tracks.classify.online import OnlineDistillationMethod, OnlineParams


@register("classify", "dml")
class DML(OnlineDistillationMethod):
    """Student and peer each minimise CE + KL(other's distribution || own distribution)."""

    Params = OnlineParams

    def mutual_terms(self, student_logits: torch.Tensor, peer_logits: torch.Tensor
                     ) -> torch.Tensor:
        # kd_loss(s, t, 1) = KL(softmax(t) || softmax(s)), t detached: Eq. 4 and Eq. 5.
        return kd_loss(student_logits, peer_logits, 1.0) + kd_loss(peer_logits, student_logits,
                                                                   1.0)
