"""The worst-case forget set: Fan, Liu, Jia, Liu, Chen, Liu, "Challenging Forgets: Unveiling
the Worst-Case Forget Sets in Machine Unlearning" (ECCV 2024, arXiv 2403.07362).

Per-sample weights ``w in [0, 1]^N`` with ``1^T w = m`` (the budget: m = the forget set's
size) mark the forget set. The upper level looks for the set that unlearning forgets *least*
(the hardest one to forget: after unlearning the model still fits it), the lower level is
the approximate unlearning itself:

    min_{w in S}  sum_i w_i l_i(theta_u(w)) + gamma ||w||^2,
    theta_u(w) = approximate unlearning of the original model theta_o with forget weights w
                 (fine-tuning: min_theta sum_i (1 - w_i) l_i(theta), the paper's default).

How it is solved here (as the official code does it, at any scale):

* the lower level is truncated: ``select_lower_steps`` sign-SGD steps from theta_o on
  batches of the train split (augmented as in training), each sample's loss weighted by
  ``1 - w_i`` (fine-tuning) or, for random labels, ``w_i`` on a random label plus ``1 - w_i``
  on its own;
* first-order upper gradient: d/dw_i = l_i(theta_u) + 2 gamma w_i; the implicit term through
  theta_u(w) is dropped (the official code's ``optimize_select`` does the same);
* projected gradient step ``w <- P_S(w - select_lr * grad)``; the projection onto
  S = {w in [0, 1]^N, 1^T w = m} is ``clip(v - mu, 0, 1)`` with mu found by bisection;
* w starts uniform (m / N everywhere); each outer iteration restarts the lower level from
  theta_o; after ``select_iterations`` the m largest weights are the forget set (exactly m
  rows, ties broken by row number).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hundred.data import Dataset
from hundred.data.loader import BatchLoader
from hundred.engine.run import RunContext, device_budget_bytes, eval_loader
from hundred.tracks.unlearn.evaluation import true_class_outputs


def project_budget(values: torch.Tensor, budget: float, iterations: int = 100) -> torch.Tensor:
    """The Euclidean projection of ``values`` onto {w in [0, 1]^N, sum(w) = budget}
    (0 <= budget <= N): ``clip(values - mu, 0, 1)`` with the shift ``mu`` found by bisection
    (the sum is non-increasing in mu)."""
    values = values.double()
    low, high = float(values.min()) - 1.0, float(values.max())
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if float((values - middle).clamp(0, 1).sum()) > budget:
            low = middle
        else:
            high = middle
    return (values - 0.5 * (low + high)).clamp(0, 1)


def top_rows(weights: torch.Tensor, count: int) -> np.ndarray:
    """The rows of the ``count`` largest weights (ties: the lower row first), sorted."""
    order = np.lexsort((np.arange(len(weights)), -weights.double().cpu().numpy()))
    return np.sort(order[:count]).astype(np.int64)


def _sign_step(model: nn.Module, lr: float) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= lr * parameter.grad.sign()


def worst_case_forget_set(ctx: RunContext, original: nn.Module, dataset: Dataset, count: int,
                          seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``count`` rows of the train split that the bi-level selection picks (module
    docstring), and a record of it for the summary (settings, the upper objective after each
    outer iteration). ``original`` is left unchanged."""
    config, section = ctx.config, ctx.config.unlearn
    train = dataset.arrays("train")
    size = len(train)
    num_classes = dataset.num_classes
    weights = torch.full((size,), count / size, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    # one process, every batch full: the selection is not sharded over DDP ranks
    loader = BatchLoader(train, batch_size=min(config.data.batch_size, size), shuffle=True,
                         drop_last=True, seed=seed, device=ctx.device,
                         augment=config.data.augment, out_size=config.data.image_size,
                         mean=config.data.mean, std=config.data.std,
                         device_budget_bytes=device_budget_bytes(config))
    random_labels = torch.randint(0, num_classes, (size,), generator=generator)
    objective, epoch = [], 0
    for _ in range(section.select_iterations):
        model = copy.deepcopy(original).to(ctx.device).train()
        step = 0
        while step < section.select_lower_steps:
            loader.set_epoch(epoch)
            rows = torch.from_numpy(loader.epoch_indices(epoch))
            for batch, (images, labels) in enumerate(loader):
                if step == section.select_lower_steps:
                    break
                index = rows[batch * loader.batch_size:(batch + 1) * loader.batch_size]
                w = weights[index].to(ctx.device, torch.float32)
                logits = model(images)
                own = F.cross_entropy(logits, labels, reduction="none")
                if section.select_lower == "finetune":
                    loss = ((1 - w) * own).mean()
                else:  # random labels on the (weighted) forget part, own labels elsewhere
                    other = F.cross_entropy(logits, random_labels[index].to(ctx.device),
                                            reduction="none")
                    loss = (w * other + (1 - w) * own).mean()
                model.zero_grad(set_to_none=True)
                loss.backward()
                _sign_step(model, section.select_lower_lr)
                step += 1
            epoch += 1
        _, _, losses = true_class_outputs(model, eval_loader(ctx, dataset, "train"))
        per_sample = torch.from_numpy(losses).double()
        objective.append(float((weights * per_sample).sum() / count))
        gradient = per_sample + 2 * section.select_gamma * weights
        weights = project_budget(weights - section.select_lr * gradient, count)
    forget = top_rows(weights, count)
    record = {
        "iterations": section.select_iterations, "lower": section.select_lower,
        "lower_steps": section.select_lower_steps, "lower_lr": section.select_lower_lr,
        "lr": section.select_lr, "gamma": section.select_gamma,
        "objective": [round(value, 6) for value in objective],
        "weight_sum": round(float(weights.sum()), 6),
        "selected_weight_mean": round(float(weights[torch.from_numpy(forget)].mean()), 6),
    }
    return forget, record
