"""What an unlearning run is measured by (Jia et al., NeurIPS 2023; Fan et al., ECCV 2024):

* ``ua`` — unlearning accuracy, 100 - top-1 (%) on the forget set (higher: forgot more);
* ``ra`` — remaining accuracy, top-1 (%) on the retained train data;
* ``ta`` — testing accuracy, top-1 (%) on the val split (the held-out split of the data);
* ``mia`` — MIA-efficacy (%): how much the forget set looks like *non-member* data to a
  membership-inference attack fitted on retain samples (members, label 1) against val
  samples (non-members, label 0), as many of each, on one feature: the softmax probability
  of the true class (the papers' "confidence" attack), as its log-odds. The attack is a
  logistic regression; ``mia`` is the mean, over forget samples, of its probability that the
  sample is a non-member (higher: forgot more). Where members and non-members cannot be told
  apart the attack says 1/2 everywhere and ``mia`` is 50;
* ``mia_svc`` — the papers' own number for comparison: the share of forget samples that
  an RBF support-vector classifier (scikit-learn ``SVC(C=3, gamma="auto")``, the official
  code's) on the true-class probability calls non-members. Its hard decisions make it a coin
  toss per region of the feature where the two groups overlap (measured: anything from 1 to
  98 % over 20 draws of indistinguishable data), which is why ``mia`` is the soft version.

All accuracies are measured on the evaluation view (no augmentation), in eval mode.
:func:`retrain_gap` compares a run with the retrain run of the same forget set: the absolute
difference of each metric and their average (the papers' "Avg. Gap").
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("ua", "ra", "ta", "mia")


@torch.no_grad()
def true_class_outputs(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample of ``batches``, in order: whether the prediction is right, the softmax
    probability of the true class, and the cross-entropy loss (float32, eval mode)."""
    training = model.training
    model.eval()
    correct, confidence, loss = [], [], []
    try:
        for images, labels in batches:
            logits = model(images).float()
            correct.append((logits.argmax(1) == labels).cpu())
            confidence.append(F.softmax(logits, 1).gather(1, labels[:, None])[:, 0].cpu())
            loss.append(F.cross_entropy(logits, labels, reduction="none").cpu())
    finally:
        model.train(training)
    return (torch.cat(correct).numpy(), torch.cat(confidence).numpy(),
            torch.cat(loss).numpy())


def _balanced(members: np.ndarray, non_members: np.ndarray, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Features and member labels of as many members as non-members (the larger group is
    subsampled, seeded; the official code takes as many retain samples as test samples)."""
    count = min(len(members), len(non_members))
    if count < 1:
        raise ValueError("the attack needs members and non-members")
    rng = np.random.default_rng(seed)
    members = members[rng.choice(len(members), count, replace=False)]
    non_members = non_members[rng.choice(len(non_members), count, replace=False)]
    features = np.concatenate([members, non_members]).reshape(2 * count, -1)
    return features, np.concatenate([np.ones(count), np.zeros(count)])


def _log_odds(confidence: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(confidence, dtype=np.float64), 1e-7, 1 - 1e-7)
    return (np.log(p) - np.log1p(-p)).reshape(len(p), -1)


def mia_efficacy(members: np.ndarray, non_members: np.ndarray, target: np.ndarray,
                 seed: int = 0) -> float:
    """MIA-efficacy (%, soft): the mean probability that ``target`` samples are non-members
    under a logistic regression on the log-odds of the true-class probability, fitted on
    ``members`` (label 1) against ``non_members`` (label 0), balanced."""
    from sklearn.linear_model import LogisticRegression

    features, kinds = _balanced(_log_odds(members), _log_odds(non_members), seed)
    if len(target) < 1:
        raise ValueError("the attack needs targets")
    attack = LogisticRegression().fit(features, kinds)
    member = attack.predict_proba(_log_odds(target))[:, list(attack.classes_).index(1.0)]
    return 100.0 * float(1.0 - member.mean())


def mia_efficacy_svc(members: np.ndarray, non_members: np.ndarray, target: np.ndarray,
                     seed: int = 0) -> float:
    """The papers' MIA-efficacy (%, hard): the share of ``target`` samples that an RBF SVC
    (C=3, gamma='auto') on the true-class probability, fitted on ``members`` against
    ``non_members`` (balanced), predicts to be non-members."""
    from sklearn.svm import SVC

    features, kinds = _balanced(np.asarray(members), np.asarray(non_members), seed)
    if len(target) < 1:
        raise ValueError("the attack needs targets")
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, kinds)
    predicted_member = attack.predict(np.asarray(target).reshape(len(target), -1))
    return 100.0 * float(1.0 - predicted_member.mean())


def accuracy(correct: np.ndarray) -> float:
    """Top-1 in %."""
    return 100.0 * float(np.mean(correct)) if len(correct) else float("nan")


def retrain_gap(metrics: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """``gap_<metric>`` = |metric - the retrain run's| for ``ua``, ``ra``, ``ta`` and ``mia``
    (percentage points) and ``avg_gap``, their mean (lower: closer to retraining, the gold
    standard). KeyError names a metric either summary lacks."""
    gaps = {}
    for key in METRICS:
        if metrics.get(key) is None or reference.get(key) is None:
            raise KeyError(key)
        gaps[f"gap_{key}"] = abs(float(metrics[key]) - float(reference[key]))
    gaps["avg_gap"] = float(np.mean(list(gaps.values())))
    return gaps
