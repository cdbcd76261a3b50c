"""Adversarial attacks for the robust track: a thin layer over torchattacks.

* :class:`ThreatModel` — norm, ε, PGD steps, step size, restarts, random start: recorded with
  every robust number (:meth:`ThreatModel.record`).
* :class:`PixelSpaceModel` — the loaders hand out *normalised* images, but ε is defined on
  images in [0, 1]. The wrapper is ``model(normalise(x01))``: attacks see and perturb pixel
  images, so an L∞ budget of 8/255 is 8/255 of pixel range whatever ``data.std`` is (a
  wrapper that attacked the normalised tensor would give a std-0.25 dataset perturbations 4x
  larger). :meth:`PixelSpaceModel.to_pixels` / :meth:`~PixelSpaceModel.to_model` convert.
* :data:`ATTACKS` — the registry, name -> :class:`AttackSpec`: ``pgd`` (Madry et al., "Towards
  Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018; torchattacks ``PGD`` /
  ``PGDL2``), ``autoattack`` (Croce & Hein, "Reliable evaluation of adversarial robustness
  with an ensemble of diverse parameter-free attacks", ICML 2020; standard version: APGD-CE,
  APGD-T, FAB-T, Square), and ``quscore`` (:mod:`hundred.tracks.robust.quscore`: a
  score-based black-box attack on the model coupled with an interpreter, with options: the
  interpreter, the query budget, the attacker's surrogate; it adds its success rate and query
  counts to the result), ``pdsg`` and ``sda`` (:mod:`hundred.tracks.robust.spiking`: PGD
  through a potential-dependent surrogate gradient, and sparse bit flips of binary event
  frames under an L0 threat, on spiking networks). Another module plugs an attack in with
  :func:`register_attack`.
* :func:`robust_accuracy` — clean and robust top-1 on a split, batch by batch, seeded.

What counts as robust: an image is robust when the model classifies it correctly clean *and*
at every point of its ε-ball the attack evaluated — for PGD every iterate of every restart
(each passes through the wrapper's forward; see :attr:`AttackSpec.queries_inside_ball`),
for the others the point they return. The clean image lies in its own ball, so robust
accuracy never exceeds clean accuracy, and with a fixed seed and step size PGD with more
steps evaluates a superset of the points, so its robust accuracy never rises.

Randomness: every attack runs inside :func:`seeded`, which forks the global torch RNG (CPU
and the attack's CUDA device), seeds it, and restores it afterwards: a fixed model and seed
give a fixed number, and an attack never shifts the randomness of what runs after it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hundred.errors import HundredError
from hundred.tracks.robust.config import eps_label, parse_eps
from hundred.tracks.robust.quscore import QuScoreParams, quscore_attack, summarise_results
from hundred.tracks.robust.spiking import (PDSG_DETAILS, SDA_DETAILS, build_pdsg, build_sda,
                                           summarise_pdsg, summarise_sda)


@dataclass(frozen=True)
class ThreatModel:
    """What an attack may do: ``norm`` (``linf``/``l2``) ball of radius ``eps`` in pixel
    units, and the PGD settings (``step_size`` None: eps / 4, i.e. 2/255 at 8/255, the
    step of the field's PGD-7/10/20 conventions). ``l0`` is the threat of attacks that flip
    bits of binary (bit-packed) inputs: ``eps`` is then the share of the bits that may flip
    (1: unbounded), which :func:`check_budget` counts over the packed bytes."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 20
    step_size: float | None = 2 / 255
    restarts: int = 1
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2", "l0"):
            raise HundredError(f"unknown norm {self.norm!r}: linf, l2 or l0")
        try:
            parse_eps(self.eps, "eps")
            if self.step_size is not None:
                parse_eps(self.step_size, "step size")
        except ValueError as error:
            raise HundredError(str(error)) from None
        if self.steps < 1 or self.restarts < 1:
            raise HundredError(f"steps and restarts must be >= 1, got {self.steps}, "
                               f"{self.restarts}")

    @property
    def alpha(self) -> float:
        """The PGD step size actually used."""
        return self.step_size if self.step_size is not None else self.eps / 4

    def record(self) -> dict[str, Any]:
        """The threat model as a summary records it."""
        # l0: eps is the share of the input's entries that may change, not a pixel size
        label = f"{self.eps:g}" if self.norm == "l0" else eps_label(self.eps)
        return {**asdict(self), "step_size": self.alpha, "eps_label": label}


class PixelSpaceModel(nn.Module):
    """``model`` seen from pixel space: ``forward(x01) = model((x01 - mean) / std)``.

    While :meth:`watching` labels, every forward pass of a batch of that size records which
    images it classified wrongly (``broken``): how PGD's intermediate iterates count."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self._watched: torch.Tensor | None = None
        self.broken: torch.Tensor | None = None

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel images in [0, 1] -> the normalised tensor the model takes."""
        return (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> pixel images, clamped to [0, 1] (float error)."""
        images = images.float()
        return (images * self.std + self.mean).clamp(0.0, 1.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.to_model(pixels))
        if self._watched is not None and len(pixels) == len(self._watched):
            self.broken |= logits.detach().argmax(dim=1) != self._watched
        return logits

    @contextlib.contextmanager
    def watching(self, labels: torch.Tensor) -> Iterator[None]:
        self._watched = labels
        self.broken = torch.zeros_like(labels, dtype=torch.bool)
        try:
            yield
        finally:
            self._watched = None


def plain_module(model: nn.Module) -> nn.Module:
    """The module behind DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers:
    attacks differentiate with respect to the input only, which DDP's gradient hooks do not
    expect, and each rank crafts its own batch's examples anyway."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with the global torch RNG seeded to ``seed`` (CPU, and ``device`` when
    it is a CUDA device), restoring the previous RNG state afterwards."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def kept_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch-norm running statistics stay as they were: forward passes in train mode made
    while crafting examples (Madry et al. craft in train mode) normalise with the batch's
    statistics but must not move the running averages that evaluation uses."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{name: buffer.clone() for name, buffer in m.named_buffers(recurse=False)}
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved):
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


# -- the registry -------------------------------------------------------------------------

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Builder = Callable[[PixelSpaceModel, ThreatModel, int, int], AttackFn]


@dataclass(frozen=True)
class AttackSpec:
    """An attack of the registry. ``build(model, threat, num_classes, seed)`` returns a
    function ``(pixels, labels) -> adversarial pixels``; ``queries_inside_ball``: every
    point it evaluates lies in the ε-ball (PGD), so each counts (see the module docstring);
    ``details`` describe it in summaries (e.g. AutoAttack's components); ``norm``: the norm
    the attack works under whatever was asked (``l0`` for bit flips), None: the asked one."""

    build: Builder
    queries_inside_ball: bool = False
    details: dict[str, Any] | None = None
    uses_steps: bool = False
    options: tuple[str, ...] = ()
    summarise: Callable[[AttackFn], dict[str, Any]] | None = None
    norm: str | None = None

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """HundredError when ``options`` names a keyword that ``build`` does not take."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = f"it takes {', '.join(self.options)}" if self.options else \
                "it takes no options"
            raise HundredError(f"attack {name!r} has no option {', '.join(unknown)}; {takes}")


def _torchattacks_norm(norm: str) -> str:
    return {"linf": "Linf", "l2": "L2"}[norm]


def build_pgd(model: PixelSpaceModel, threat: ThreatModel, num_classes: int, seed: int,
              train_mode: bool = False) -> AttackFn:
    """Madry et al.'s PGD on the cross-entropy (torchattacks ``PGD`` for L∞, ``PGDL2`` for
    L2), ``threat.restarts`` times from random starts; the random starts come from the
    global RNG, which the caller seeds (:func:`seeded`). torchattacks puts the model in eval
    mode while it attacks; ``train_mode`` keeps it in train mode (adversarial training as
    Madry et al. craft its examples)."""
    import torchattacks

    cls = torchattacks.PGD if threat.norm == "linf" else torchattacks.PGDL2
    attack = cls(model, eps=threat.eps, alpha=threat.alpha, steps=threat.steps,
                 random_start=threat.random_start)
    if train_mode:
        attack.set_model_training_mode(model_training=True, batchnorm_training=True,
                                       dropout_training=True)

    def run(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best = attack(pixels, labels)
        for _ in range(threat.restarts - 1):  # keep, per image, a point that fools the model
            with torch.no_grad():
                fooled = model(best).argmax(dim=1) != labels
            if bool(fooled.all()):
                break
            candidate = attack(pixels, labels)
            best = torch.where(fooled.view(-1, 1, 1, 1), best, candidate)
        return best

    return run


# AutoAttack's standard version as Croce & Hein run it (fra31/auto-attack, version="standard"):
# APGD-CE and APGD-T with 100 iterations, FAB-T with 100, APGD-T/FAB-T against the 9 most
# likely other classes, Square with 5000 queries, one restart each. torchattacks 3.3.0's own
# ``AutoAttack(version="standard")`` builds the same components with 10 iterations and every
# other class as a target, so the ensemble is assembled here from its components instead.
AUTOATTACK_STANDARD = {"version": "standard", "components": ["apgd-ce", "apgd-t", "fab-t",
                                                             "square"],
                       "iterations": 100, "target_classes": 9, "square_queries": 5000}


def build_autoattack(model: PixelSpaceModel, threat: ThreatModel, num_classes: int, seed: int
                     ) -> AttackFn:
    """AutoAttack, standard version (:data:`AUTOATTACK_STANDARD`), from torchattacks'
    components; each seeds itself with ``seed``. An image counts as broken when any
    component fools the model (torchattacks ``MultiAttack``)."""
    import torchattacks

    if num_classes < 3:
        raise HundredError("AutoAttack's targeted components (APGD-T, FAB-T) need at least 3 "
                           f"classes, the data has {num_classes}")
    norm, eps = _torchattacks_norm(threat.norm), threat.eps
    steps, targets = AUTOATTACK_STANDARD["iterations"], min(AUTOATTACK_STANDARD["target_classes"],
                                                           num_classes - 1)
    apgd = torchattacks.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed,
                             loss="ce")
    apgdt = torchattacks.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed,
                               n_classes=num_classes)
    fab = torchattacks.FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed,
                           multi_targeted=True, n_classes=num_classes)
    apgdt.n_target_classes = fab.n_target_classes = targets
    square = torchattacks.Square(model, norm=norm, eps=eps, n_queries=AUTOATTACK_STANDARD[
        "square_queries"], n_restarts=1, seed=seed)
    return torchattacks.MultiAttack([apgd, apgdt, fab, square])


# QuScore's keywords: what the attacked system and the attacker have, then its GA settings
QUSCORE_OPTIONS = ("interpreter", "max_queries", "surrogate", *QuScoreParams.model_fields)

ATTACKS: dict[str, AttackSpec] = {
    "pgd": AttackSpec(build_pgd, queries_inside_ball=True, uses_steps=True),
    "autoattack": AttackSpec(build_autoattack, details=AUTOATTACK_STANDARD),
    "quscore": AttackSpec(quscore_attack, options=QUSCORE_OPTIONS, summarise=summarise_results,
                          details={"kind": "score-based black-box (microbial GA) on the model "
                                   "and an interpreter, L-inf corners"}),
    "pdsg": AttackSpec(build_pdsg, queries_inside_ball=True, uses_steps=True,
                       options=("surrogate",), summarise=summarise_pdsg, details=PDSG_DETAILS),
    "sda": AttackSpec(build_sda, options=("surrogate", "k_init", "max_iterations", "batch_limit",
                                          "flip_budgets"),
                      summarise=summarise_sda, details=SDA_DETAILS, norm="l0"),
}


def register_attack(name: str, build: Builder, *, queries_inside_ball: bool = False,
                    details: dict[str, Any] | None = None, uses_steps: bool = False,
                    options: Sequence[str] = (),
                    summarise: Callable[[AttackFn], dict[str, Any]] | None = None,
                    norm: str | None = None) -> None:
    """Plug an attack into the registry (``hundred attack --attack NAME``,
    ``robust.eval_attacks``); a name can be registered once. ``options``: the keywords
    ``build`` accepts after its four arguments (``hundred attack -o name=value``);
    ``summarise(attack_fn)``: extra numbers for the result (e.g. query counts); ``norm``:
    the norm it always works under (``l0``), None: the asked one."""
    if name in ATTACKS and ATTACKS[name].build is not build:
        raise HundredError(f"attack {name!r} is registered already")
    ATTACKS[name] = AttackSpec(build, queries_inside_ball, details, uses_steps, tuple(options),
                               summarise, norm)


def attack_spec(name: str) -> AttackSpec:
    """The registered attack ``name``; HundredError listing the known ones otherwise."""
    if name not in ATTACKS:
        raise HundredError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def torchattacks_version() -> str:
    import torchattacks

    return str(torchattacks.__version__)


# -- robust accuracy ----------------------------------------------------------------------

SUBSET_SEED = 0  # the subset an attack limit draws is fixed: every run and attack gets the same


def attack_subset(count: int, limit: int | None) -> np.ndarray | None:
    """The rows of a split of ``count`` images that an attack limited to ``limit`` images
    evaluates: ``limit`` rows drawn uniformly without replacement by a fixed seed, in order
    (None: every row). Packed splits are sorted by class, so the first ``limit`` rows would
    hold only the first classes."""
    if limit is None or limit >= count:
        return None
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(count, size=limit, replace=False))


@torch.no_grad()
def _correct(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(pixels).argmax(dim=1) == labels


def robust_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    mean: Sequence[float], std: Sequence[float], attack: str,
                    threat: ThreatModel, num_classes: int, seed: int = 0,
                    limit: int | None = None, device: torch.device | str | None = None,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Clean and robust top-1 (in %) of ``model`` (in eval mode, float32) on ``batches`` of
    *normalised* images, under ``attack`` with ``threat``; ``limit`` caps the images
    attacked; ``options`` go to the attack's builder (:attr:`AttackSpec.options`). Returns
    ``{"clean_top1", "robust_top1", "images", **threat model...}`` and the attack's own
    numbers (:attr:`AttackSpec.summarise`)."""
    spec = attack_spec(attack)
    options = dict(options or {})
    spec.check_options(attack, options)
    if spec.norm is not None and threat.norm != spec.norm:  # e.g. bit flips: always L0
        threat = ThreatModel(norm=spec.norm, eps=threat.eps, steps=threat.steps,
                             step_size=threat.step_size, restarts=threat.restarts,
                             random_start=threat.random_start)
    was_training = model.training
    model.eval()
    # in eval mode, so torchattacks (which restores a model's train mode after attacking)
    # leaves it there
    pixel_model = PixelSpaceModel(model, mean, std).to(next(model.parameters()).device).eval()
    run = spec.build(pixel_model, threat, num_classes, seed, **options)
    clean = robust = seen = 0
    try:
        with seeded(seed, device or next(model.parameters()).device):
            for images, labels in batches:
                if limit is not None and seen >= limit:
                    break
                if limit is not None:
                    images, labels = images[:limit - seen], labels[:limit - seen]
                pixels = pixel_model.to_pixels(images)
                clean_ok = _correct(pixel_model, pixels, labels)
                if spec.queries_inside_ball:
                    with pixel_model.watching(labels):
                        adversarial = run(pixels, labels)
                    broken = pixel_model.broken
                else:
                    adversarial = run(pixels, labels)
                    broken = torch.zeros_like(clean_ok)
                check_budget(adversarial, pixels, threat)
                robust_ok = clean_ok & ~broken & _correct(pixel_model, adversarial, labels)
                clean += int(clean_ok.sum())
                robust += int(robust_ok.sum())
                seen += len(labels)
    finally:
        model.train(was_training)
    if seen == 0:
        raise HundredError("the split to attack holds no image")
    threat_record = threat.record()
    if not spec.uses_steps:  # its own iterations (``details``), not the PGD settings
        threat_record = {key: threat_record[key] for key in ("norm", "eps", "eps_label")}
    extra = spec.summarise(run) if spec.summarise is not None else {}
    return {"attack": attack, **threat_record, "seed": seed, "images": seen,
            "clean_top1": 100.0 * clean / seen, "robust_top1": 100.0 * robust / seen,
            "torchattacks": torchattacks_version(), **(spec.details or {}), **extra}


def check_budget(adversarial: torch.Tensor, pixels: torch.Tensor, threat: ThreatModel) -> None:
    """An attack's images must stay in [0, 1] and inside the ε-ball (a small float slack):
    a plugged-in attack that breaks the threat model fails loudly instead of reporting a
    robust accuracy under a larger budget. Under ``l0`` the images must stay bit-packed
    (whole byte values) and the flipped bits, counted over the bytes, at most ``eps`` of
    them."""
    if threat.norm == "l0":
        _check_bit_flips(adversarial, pixels, threat)
        return
    delta = (adversarial - pixels).flatten(1)
    size = delta.abs().amax(dim=1) if threat.norm == "linf" else delta.norm(dim=1)
    slack = 1e-4 if threat.norm == "linf" else 1e-3
    if bool((size > threat.eps + slack).any()) or adversarial.min() < -1e-6 or \
            adversarial.max() > 1 + 1e-6:
        raise HundredError(f"the attack left the threat model ({threat.norm} eps "
                           f"{eps_label(threat.eps)}): largest perturbation "
                           f"{float(size.max()):.5f}")


def _check_bit_flips(adversarial: torch.Tensor, pixels: torch.Tensor, threat: ThreatModel
                     ) -> None:
    codes = adversarial.float() * 255
    if bool(((codes - codes.round()).abs() > 1e-3).any()) or adversarial.min() < -1e-6 or \
            adversarial.max() > 1 + 1e-6:
        raise HundredError("the attack left the threat model (l0): its images are not "
                           "bit-packed bytes any more")
    changed = codes.round().to(torch.int32) ^ (pixels.float() * 255).round().to(torch.int32)
    bits = torch.stack([(changed >> bit) & 1 for bit in range(8)]).sum(dim=0).flatten(1)
    flips = bits.sum(dim=1)
    budget = threat.eps * 8 * changed[0].numel()
    if bool((flips > budget + 1e-6).any()):
        raise HundredError(f"the attack left the threat model (l0 eps {threat.eps:g}):"
                           f" {int(flips.max())} bits flipped")


def adversarial_batch(pixel_model: PixelSpaceModel, attack: AttackFn, images: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
    """Adversarial examples of a batch of *normalised* ``images``, returned normalised:
    de-normalise, attack in pixel space, re-normalise (what adversarial training feeds the
    model)."""
    pixels = pixel_model.to_pixels(images.detach())
    adversarial = attack(pixels, labels)
    return pixel_model.to_model(adversarial.detach()).to(images.dtype)
