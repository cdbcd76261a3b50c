"""Attacks on spiking networks (``spiking_vgg``): PDSG and SDA.

Lun, Feng, Ni, Liang, Wang, Li, Yu & Cui, "Towards Effective and Sparse Adversarial Attack
on Spiking Neural Networks via Breaking Invisible Surrogate Gradients" (CVPR 2025,
arXiv 2503.03272).

* ``pdsg`` — PGD (CE loss, the robust track's PGD: L∞ or L2 ball, steps, step size, restarts
  from ``hundred attack``) whose backward pass through every spiking neuron uses the
  potential-dependent surrogate gradient (Sec. 4.1; :class:`hundred.models.spiking.
  PotentialDependentSurrogate`): the density of N(0.5σ, σ²) at ``u - threshold``, σ the
  standard deviation of that layer's membrane potential on the batch. Option ``surrogate``:
  ``pdsg`` (default), ``fixed`` (the surrogate the network was trained with — the
  comparison of the paper's Table 3 when the training surrogate is known; equal to ``--attack
  pgd`` on the same run) or another fixed one (``atan``, ``fast_sigmoid``,
  ``piecewise_linear``: an attacker's guess when the training surrogate is invisible).
* ``sda`` — the sparse dynamic attack on binary event frames (Sec. 4.2), one image at a time
  as the official code: *generation* — repeat: the gradient of the C&W margin loss
  ``max(z_y - max_{j != y} z_j, 0)`` (through ``surrogate``, PDSG by default) ranks the bits
  whose flip lowers the loss to first order (a 0 with negative gradient, a 1 with positive;
  zero gradients get a tiny random score), the top ``k = (n + 1) k_init`` unflipped ones are
  each flipped alone and the finite difference of the loss kept, the flips that do not raise
  it join the perturbation; until the model is fooled or ``max_iterations`` pass;
  *reduction* — the flips sorted by |finite difference|, a binary search for the longest
  prefix of least important flips that can be undone with the image still misclassified.
  The perturbation is a set of bit flips (the result stays binary), reduction never adds a
  flip, and only correctly classified images are attacked. The threat model is L0: ``eps``
  is the share of the event entries (frames x 2 x H x W) that may flip; 1 = unbounded (the
  paper's dynamic evaluation, which reports the flips needed). The result adds
  ``attacked``, ``succeeded``, ``success_rate``, ``mean_flips``, ``median_flips`` and
  ``success_within`` (share of attacked images broken with fewer than each of
  ``flip_budgets`` flips: the paper's L0 < 200 / L0 < 800 columns).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from hundred.errors import HundredError

if TYPE_CHECKING:
    from hundred.tracks.robust.attacks import AttackFn, PixelSpaceModel, ThreatModel

ATTACK_SURROGATES = ("pdsg", "fixed", "piecewise_linear", "atan", "fast_sigmoid")
PDSG_DETAILS = {"kind": "PGD through the potential-dependent surrogate gradient (Lun et al., "
                "CVPR 2025): N(0.5 sigma, sigma^2) density at u - threshold, sigma = std of "
                "the layer's membrane potential (per channel, over batch and steps so far)"}
SDA_DETAILS = {"kind": "sparse dynamic attack on binary event frames (Lun et al., CVPR 2025): "
               "gradient + finite-difference generation of bit flips, then binary-search "
               "reduction; C&W margin loss; L0 threat (eps = share of event entries)"}


def _checked_surrogate(name: str) -> str:
    if name not in ATTACK_SURROGATES:
        raise HundredError(f"surrogate {name!r}: choose from {', '.join(ATTACK_SURROGATES)}")
    return name


def _spiking(model: PixelSpaceModel) -> Any:
    from hundred.models.spiking import spiking_backbone

    backbone = spiking_backbone(model.model)
    if not backbone.spiking:
        raise HundredError("the run's model is the ANN twin (timesteps 0), not a spiking "
                           "network: attack a run of compress/iir_snn")
    return backbone


def build_pdsg(model: PixelSpaceModel, threat: ThreatModel, num_classes: int, seed: int,
               surrogate: str = "pdsg") -> AttackFn:
    """PGD on the spiking ``model`` with the attack-time surrogate ``surrogate``."""
    from hundred.models.spiking import attack_surrogate
    from hundred.tracks.robust.attacks import build_pgd

    backbone = _spiking(model)
    surrogate = _checked_surrogate(surrogate)
    pgd = build_pgd(model, threat, num_classes, seed)

    def run(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with attack_surrogate(backbone, surrogate):
            return pgd(pixels, labels)

    run.surrogate = surrogate  # type: ignore[attr-defined]
    return run


def summarise_pdsg(run: Callable[..., Any]) -> dict[str, Any]:
    return {"surrogate": getattr(run, "surrogate", None)}


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """C&W margin per image: ``max(z_y - max_{j != y} z_j, 0)``."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(),
                                float("-inf"))
    return (true - others.amax(dim=1)).clamp_min(0.0)


def sparse_dynamic_attack(forward: Callable[[torch.Tensor], torch.Tensor], events: torch.Tensor,
                          label: torch.Tensor, k_init: int = 10, max_iterations: int = 500,
                          batch_limit: int = 64) -> tuple[torch.Tensor, int, int]:
    """SDA on one image: ``events`` ``(1, F, 2, H, W)`` in {0, 1}, ``label`` ``(1,)``,
    ``forward`` the model on frames (gradients through its current surrogate). Returns the
    adversarial frames (``events`` itself when the attack failed), the flips after
    generation and after reduction (0, 0 on failure)."""
    original = events.detach()
    flat_size = original.numel()
    selected = torch.zeros(flat_size, dtype=torch.bool, device=original.device)
    importance = torch.full((flat_size,), math.inf, device=original.device)
    adversarial = original.clone()

    def losses_of(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return margin_loss(forward(batch), label.expand(len(batch)))

    def fooled(frames: torch.Tensor) -> bool:
        with torch.no_grad():
            return bool(forward(frames).argmax(dim=1)[0] != label[0])

    success = False
    for iteration in range(max_iterations):
        adversarial.requires_grad_(True)
        loss = margin_loss(forward(adversarial), label).sum()
        grad = torch.autograd.grad(loss, adversarial)[0].flatten()
        adversarial = adversarial.detach()
        current = adversarial.flatten()
        # contributing gradients: a flip lowers the loss to first order (0 -> 1 when the
        # gradient is negative, 1 -> 0 when it is positive)
        contributing = ((current == 0) & (grad < 0)) | ((current == 1) & (grad > 0))
        score = grad.abs() * contributing
        smallest = score[score > 0].min() if bool((score > 0).any()) else torch.tensor(1.0)
        score = torch.where(score > 0, score, torch.rand_like(score) * smallest)
        score[selected] = -1.0
        available = int((~selected).sum())
        if available == 0:
            break
        k = min((iteration + 1) * k_init, available)
        candidates = torch.topk(score, k).indices
        trial_losses = []
        for start in range(0, k, batch_limit):
            chunk = candidates[start:start + batch_limit]
            trials = current.repeat(len(chunk), 1)
            rows = torch.arange(len(chunk), device=trials.device)
            trials[rows, chunk] = 1.0 - trials[rows, chunk]
            trial_losses.append(losses_of(trials.view(len(chunk), *original.shape[1:])))
        differences = torch.cat(trial_losses) - loss.detach()
        accepted = differences <= 0  # finite differences: keep the flips that lower the loss
        selected[candidates[accepted]] = True
        importance[candidates[accepted]] = differences[accepted]
        adversarial = torch.where(selected.view_as(original), 1.0 - original, original)
        if fooled(adversarial):
            success = True
            break
    if not success:
        return original, 0, 0
    generated = int(selected.sum())
    order = torch.topk(importance.abs(), generated, largest=False).indices  # least important
    best, low, high = adversarial, 0, generated - 1
    while low <= high:  # the longest prefix of unimportant flips that can be undone
        middle = (low + high) // 2
        trial = adversarial.flatten().clone()
        undo = order[:middle + 1]
        trial[undo] = original.flatten()[undo]
        trial = trial.view_as(original)
        if fooled(trial):
            best, low = trial, middle + 1
        else:
            high = middle - 1
    return best, generated, int((best != original).sum())


def build_sda(model: PixelSpaceModel, threat: ThreatModel, num_classes: int, seed: int,
              surrogate: str = "pdsg", k_init: int = 10, max_iterations: int = 500,
              batch_limit: int = 64, flip_budgets: Sequence[int] = (200, 800)) -> AttackFn:
    """SDA on a spiking model of event frames (``spiking_vgg`` with ``events=F``); the
    pixels it receives and returns are the bit-packed frames (:mod:`hundred.data.sources.
    events`)."""
    from hundred.data.sources.events import pack_events, unpack_events
    from hundred.models.spiking import attack_surrogate

    backbone = _spiking(model)
    if not backbone.events:
        raise HundredError("sda attacks binary event frames: the run's model reads images "
                           "(train spiking_vgg with events=F on synth100-events)")
    surrogate = _checked_surrogate(surrogate)
    for value, what in ((k_init, "k_init"), (max_iterations, "max_iterations"),
                        (batch_limit, "batch_limit")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HundredError(f"sda option {what}={value!r}: expected an integer >= 1")
    budgets = [int(b) for b in flip_budgets]
    classifier = model.model
    stats: dict[str, Any] = {"attacked": 0, "flips": [], "generated": []}

    def run(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        frames = unpack_events(pixels, backbone.events)
        limit = math.floor(threat.eps * frames[0].numel() + 1e-9)
        results = []
        with attack_surrogate(backbone, surrogate):
            for index in range(len(labels)):
                image, label = frames[index:index + 1], labels[index:index + 1]
                with torch.no_grad():
                    correct = bool(classifier(image).argmax(dim=1)[0] == label[0])
                if not correct:
                    results.append(image)
                    continue
                stats["attacked"] += 1
                adversarial, generated, flips = sparse_dynamic_attack(
                    classifier, image, label, k_init, max_iterations, batch_limit)
                if flips > limit:  # outside the L0 budget: a failure
                    adversarial, flips = image, 0
                if flips:
                    stats["flips"].append(flips)
                    stats["generated"].append(generated)
                results.append(adversarial)
        return pack_events(torch.cat(results)).to(pixels.dtype)

    run.stats = stats  # type: ignore[attr-defined]
    run.settings = {"surrogate": surrogate, "k_init": k_init,  # type: ignore[attr-defined]
                    "max_iterations": max_iterations, "flip_budgets": budgets}
    return run


def summarise_sda(run: Callable[..., Any]) -> dict[str, Any]:
    stats, settings = run.stats, run.settings  # type: ignore[attr-defined]
    attacked, flips = stats["attacked"], np.asarray(stats["flips"], dtype=float)
    return {**settings, "attacked": attacked, "succeeded": len(flips),
            "success_rate": len(flips) / attacked if attacked else None,
            "mean_flips": float(flips.mean()) if len(flips) else None,
            "median_flips": float(np.median(flips)) if len(flips) else None,
            "mean_generated_flips": (float(np.mean(stats["generated"])) if len(flips)
                                     else None),
            "success_within": {str(b): (float((flips < b).sum()) / attacked if attacked
                                        else None) for b in settings["flip_budgets"]}}
