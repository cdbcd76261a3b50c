"""Knowledge-distillation losses of the classification track.

Pure functions of logits and labels: no modules, no state. Every function casts its logits to
float32 first (they may come out of bf16 autocast) and reduces by the mean over the batch.
Soft labels built from a teacher (or from the student itself, in USKD) are detached, so the
gradient flows only through the student's log-probabilities.

The engine's :func:`hundred.engine.losses.distillation_loss` is the *unscaled* cross-entropy
form used by the continual-learning papers; :func:`kd_loss` here is Hinton's form with the
``T**2`` factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "kd_loss",
    "nkd_terms",
    "nkd_loss",
    "uskd_target_weight",
    "uskd_ranking_scores",
    "zipf_non_target_labels",
    "uskd_loss",
    "pld_loss",
    "reverse_kd_loss",
    "balanced_divergence_weights",
    "balanced_divergence",
]


def _labels_column(labels: torch.Tensor) -> torch.Tensor:
    """Integer class labels of shape (B,) as a (B, 1) int64 index."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be class indices of shape (B,), got {tuple(labels.shape)}")
    return labels.long().unsqueeze(1)


def _non_target(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (B, C-1) entries of ``x`` (B, C) with each row's target column removed (order kept)."""
    batch, classes = x.shape
    keep = torch.ones_like(x, dtype=torch.bool).scatter_(1, _labels_column(labels), False)
    return x[keep].reshape(batch, classes - 1)


# --------------------------------------------------------------------------------------- KD


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Knowledge distillation, Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network" (arXiv:1503.02531, 2015), Sec. 2 ("Distillation"):

        T**2 * KL( softmax(t / T) || softmax(s / T) ),   averaged over the batch.

    The ``T**2`` factor (end of Sec. 2: the soft targets' gradients scale as 1/T**2) keeps the
    gradient's magnitude roughly independent of the temperature. The teacher's distribution is
    detached. KL and the cross-entropy differ by the teacher's entropy, a constant for the
    student, so the gradients equal those of ``T**2 * distillation_loss``.
    """
    t = float(temperature)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    return kl.mean() * t * t


# -------------------------------------------------------------------------------------- NKD


def nkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor, temperature: float = 1.0, gamma: float = 1.5
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of Normalized KD, Yang et al., "From Knowledge Distillation to
    Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
    Labels" (ICCV 2023, arXiv:2303.13005), the NKD loss L_NKD:

        target     = -T_t * log S_t                                     (temperature 1)
        non-target = -gamma * tau**2 * sum_{i != t} That_i^tau * log Shat_i^tau

    ``T``/``S`` are the teacher's/student's softmax, ``T_t`` is detached. ``Xhat^tau`` is the
    softmax at temperature ``tau`` over the NON-TARGET logits only (the target removed and the
    rest renormalised), which is what makes the two non-target distributions comparable: both
    sum to one. Both terms are batch means. Defaults are the paper's ImageNet setting
    (tau=1, gamma=1.5); CIFAR-100 uses tau=3, gamma=3.5 (official configs).

    Note: an early version of the official code (yzd-v/cls_KD, before commit 9466b3f,
    Oct 2023) built the non-target mask with ``scatter_(1, label, 1)`` on a tensor of ones,
    i.e. kept every class, so its "non-target" term ran over all classes; the fix scatters 0.
    This implementation follows the paper (target excluded).
    """
    tau = float(temperature)
    s = student_logits.float()
    t = teacher_logits.detach().float()
    index = _labels_column(labels)

    log_s_target = F.log_softmax(s, dim=1).gather(1, index)
    t_target = F.softmax(t, dim=1).gather(1, index)
    target = -(t_target * log_s_target).sum(dim=1).mean()

    log_s_hat = F.log_softmax(_non_target(s, labels) / tau, dim=1)
    t_hat = F.softmax(_non_target(t, labels) / tau, dim=1)
    non_target = -float(gamma) * tau * tau * (t_hat * log_s_hat).sum(dim=1).mean()
    return target, non_target


def nkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor, temperature: float = 1.0, gamma: float = 1.5
             ) -> torch.Tensor:
    """Normalized KD (Yang et al., ICCV 2023, L_NKD): the sum of :func:`nkd_terms`.

    The method adds the student's cross-entropy itself (the paper's total loss is
    ``L_CE + L_NKD``).
    """
    target, non_target = nkd_terms(student_logits, teacher_logits, labels, temperature, gamma)
    return target + non_target


# ------------------------------------------------------------------------------------- USKD


def uskd_target_weight(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """USKD's customised soft target label (Yang et al., ICCV 2023, the soft target label):

        p~_t = 1 + s_t**2 - mean_batch(s_t**2)

    with ``s_t`` the student's (temperature-1) softmax probability of the target. Shape (B,),
    detached; its batch mean is exactly 1 (the "smoothed" target keeps the one-hot label's
    mean weight).
    """
    with torch.no_grad():
        s_t = F.softmax(student_logits.float(), dim=1).gather(1, _labels_column(labels))[:, 0]
        squared = s_t * s_t
        return 1.0 + squared - squared.mean()


def uskd_ranking_scores(student_logits: torch.Tensor, weak_logits: torch.Tensor,
                        labels: torch.Tensor, rank_by: str = "probability",
                        eps: float = 1e-6) -> torch.Tensor:
    """USKD's ranking score of each class (Yang et al., ICCV 2023, the rank behind the soft
    non-target labels):

        r_i = w_i / (1 - w_t) + s_i / (1 - s_t)

    with ``w`` the weak auxiliary head's softmax and ``s`` the student's (each normalised by
    its own non-target mass). Detached, shape (B, C).

    ``rank_by="probability"`` follows the paper. ``rank_by="log_probability"`` reproduces a
    quirk of the official code (yzd-v/cls_KD, ``mmcls/models/dis_losses/uskd.py``): there the
    student's ``s`` has already been overwritten by its *log*-softmax when the score is
    formed, so it ranks by ``w_i / (1 - w_t) + log s_i / (1 - log s_t)`` (the weak head's
    term stays a probability). ``eps`` is added to both denominators, as in the official code.
    """
    if rank_by not in ("probability", "log_probability"):
        raise ValueError(f"rank_by must be 'probability' or 'log_probability', got {rank_by!r}")
    with torch.no_grad():
        index = _labels_column(labels)
        w = F.softmax(weak_logits.float(), dim=1)
        if rank_by == "probability":
            s = F.softmax(student_logits.float(), dim=1)
        else:
            s = F.log_softmax(student_logits.float(), dim=1)
        w_t = w.gather(1, index)
        s_t = s.gather(1, index)
        return w / (1.0 - w_t + eps) + s / (1.0 - s_t + eps)


def zipf_non_target_labels(ranking_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """USKD's soft non-target labels from Zipf's law (Yang et al., ICCV 2023):
    rank the non-target classes by ``ranking_scores`` (descending, ties by class index), give
    the class of rank k (1-based) the value 1/k, the target 0, and renormalise each row to sum
    to one. Shape (B, C), detached.

    The official code differs slightly: it ranks all C classes (the target included), takes
    1/k from that full ranking and only then drops the target and renormalises, so every
    non-target class ranked below the target is shifted by one rank. Here the target never
    takes a rank, as the paper describes ranking the non-target classes.
    """
    with torch.no_grad():
        scores = ranking_scores.detach().float()
        batch, classes = scores.shape
        index = _labels_column(labels)
        # The target sorts last, so the non-target classes take ranks 1 .. C-1.
        scores = scores.scatter(1, index, float("-inf"))
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        ranks = torch.empty_like(order).scatter_(
            1, order, torch.arange(1, classes + 1, device=scores.device).expand(batch, classes))
        zipf = 1.0 / ranks.float()
        zipf = zipf.scatter(1, index, 0.0)
        return zipf / zipf.sum(dim=1, keepdim=True)


def uskd_loss(student_logits: torch.Tensor, weak_logits: torch.Tensor, labels: torch.Tensor,
              alpha: float = 1.0, beta: float = 0.1, mu: float = 0.005,
              rank_by: str = "probability") -> torch.Tensor:
    """Universal Self-KD (Yang et al., ICCV 2023, the total USKD loss), no teacher:

        alpha * L_target + beta * L_non-target + mu * L_weak

    * ``L_target = -p~_t * log s_t`` with ``p~_t`` from :func:`uskd_target_weight`;
    * ``L_non-target = -sum_{i != t} z~_i * log Shat_i`` with ``z~`` from
      :func:`zipf_non_target_labels` over :func:`uskd_ranking_scores` and ``Shat`` the
      student's softmax over the non-target logits;
    * ``L_weak``: cross-entropy of the weak auxiliary head (a linear classifier on an
      intermediate feature, which the method owns) against ``0.9 * one_hot + 0.1 / C``.

    All three are batch means. Defaults are the official ImageNet setting (alpha=1,
    beta=0.1, mu=0.005); CIFAR-100 uses alpha=0.1, beta=0.1, mu=0.1. As in the paper, this
    replaces nothing: the method adds the student's cross-entropy itself. The ranking scores
    and soft labels are detached; the weak head learns only from ``L_weak``.
    """
    s = student_logits.float()
    w = weak_logits.float()
    classes = s.shape[1]
    index = _labels_column(labels)

    log_s = F.log_softmax(s, dim=1)
    target = -(uskd_target_weight(s, labels) * log_s.gather(1, index)[:, 0]).mean()

    zipf = _non_target(zipf_non_target_labels(uskd_ranking_scores(s, w, labels, rank_by),
                                              labels), labels)
    log_s_hat = F.log_softmax(_non_target(s, labels), dim=1)
    non_target = -(zipf * log_s_hat).sum(dim=1).mean()

    smooth = torch.full_like(w, 0.1 / classes).scatter_add_(
        1, index, torch.full_like(index, 0.9, dtype=w.dtype))
    weak = -(smooth * F.log_softmax(w, dim=1)).sum(dim=1).mean()

    return float(alpha) * target + float(beta) * non_target + float(mu) * weak


# -------------------------------------------------------------------------------------- PLD


def pld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Plackett-Luce Distillation, Bassam, Zhu & Bian, "PLD: A Choice-Theoretic List-Wise
    Knowledge Distillation" (arXiv:2506.12542), the weighted list-wise PLD loss L_PLD:

        L = -sum_k alpha_k [ s_{pi*_k} - log sum_{j >= k} exp(s_{pi*_j}) ]

    ``pi*`` is the teacher-optimal order: the ground-truth class first, then the other classes
    by teacher logit, descending (ties by class index). ``alpha_k`` is the teacher's softmax at
    temperature ``tau_T`` (``temperature``) evaluated at class ``pi*_k`` (detached), ``s`` the
    student's raw logits. Each bracket is the log-probability, under the Plackett-Luce model
    with worths ``exp(s)``, of choosing ``pi*_k`` among the classes not yet chosen. Batch mean.

    With all the weight on the first position (a confident teacher whose top class is the
    label) it is the student's cross-entropy; PLD replaces CE + KD, it is not added to CE.
    Vectorised: gather the student logits in the order ``pi*`` and take a reversed cumulative
    logsumexp for the tail normalisers.
    """
    s = student_logits.float()
    t = teacher_logits.detach().float()
    index = _labels_column(labels)

    order_key = t.scatter(1, index, float("inf"))
    order = torch.sort(order_key, dim=1, descending=True, stable=True).indices
    alpha = F.softmax(t / float(temperature), dim=1).gather(1, order)
    ordered = s.gather(1, order)
    tail = torch.logcumsumexp(ordered.flip(1), dim=1).flip(1)
    return -(alpha * (ordered - tail)).sum(dim=1).mean()


# ---------------------------------------------------------------------------- BD-KD (online)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) of two (B, C) log-distributions, shape (B,)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _entropy_rows(log_p: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of a (B, C) log-distribution, shape (B,)."""
    return -(log_p.exp() * log_p).sum(dim=1)


def reverse_kd_loss(learner_logits: torch.Tensor, target_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """The reverse counterpart of :func:`kd_loss`: ``T**2 * KL(p_learner || p_target)``,
    batch mean, at temperature ``T``; the target is detached, the gradient reaches the learner
    through both the weights ``p_learner`` and the log-ratio. Reverse KL is mode-seeking: the
    learner is pushed to put its mass where the target's is, not to cover all of it.
    """
    t = float(temperature)
    log_learner = F.log_softmax(learner_logits.float() / t, dim=1)
    log_target = F.log_softmax(target_logits.detach().float() / t, dim=1)
    return _kl_rows(log_learner, log_target).mean() * t * t


def balanced_divergence_weights(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                multiplier: float = 2.0, temperature: float = 1.0
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-KD's per-sample balance of the two KL directions (Amara et al., arXiv:2212.12965):
    ``(w_forward, w_reverse)``, each of shape (B,), detached.

    For sample i, with H the entropy of the softmax at temperature ``T``:

    * ``H(p_s^i) > H(p_t^i)`` (the student is less confident than the teacher):
      ``w_reverse = multiplier``, ``w_forward = 1`` — more weight on the mode-seeking reverse
      KL, which sharpens the student;
    * ``H(p_s^i) < H(p_t^i)`` (the student is over-confident): ``w_forward = multiplier``,
      ``w_reverse = 1`` — more weight on the mode-covering forward KL, which softens it;
    * equal entropies: both 1.
    """
    t = float(temperature)
    with torch.no_grad():
        h_student = _entropy_rows(F.log_softmax(student_logits.float() / t, dim=1))
        h_teacher = _entropy_rows(F.log_softmax(teacher_logits.float() / t, dim=1))
        one = torch.ones_like(h_student)
        boosted = torch.full_like(h_student, float(multiplier))
        w_reverse = torch.where(h_student > h_teacher, boosted, one)
        w_forward = torch.where(h_teacher > h_student, boosted, one)
    return w_forward, w_reverse


def balanced_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        multiplier: float = 2.0, temperature: float = 1.0) -> torch.Tensor:
    """BD-KD's balanced divergence of the student (Amara et al., arXiv:2212.12965):

        T**2 * mean_i [ w_f^i KL(p_t^i || p_s^i) + w_r^i KL(p_s^i || p_t^i) ]

    forward KL (teacher || student) plus reverse KL (student || teacher), each sample weighted
    by :func:`balanced_divergence_weights` (the multiplier goes to the reverse KL where the
    student's entropy exceeds the teacher's, to the forward KL where it is below). The
    teacher's logits are detached: the gradient reaches the student only. With
    ``multiplier=1`` it is the symmetric (Jeffreys) KL.
    """
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    w_forward, w_reverse = balanced_divergence_weights(student_logits, teacher_logits,
                                                       multiplier, temperature)
    forward = _kl_rows(log_teacher, log_student)
    reverse = _kl_rows(log_student, log_teacher)
    return (w_forward * forward + w_reverse * reverse).mean() * t * t
