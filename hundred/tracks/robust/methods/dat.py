"""DAT — dual adversarial training: one network that is a robust classifier and an
energy-based generative model.

Yin, Zhang, Steele, Shavit & Wang, "Joint Discriminative-Generative Modeling via Dual
Adversarial Training" (arXiv 2510.13872, 2025; ICLR 2026 as "Scalable Energy-Based Models via
Adversarial Training"). Only the abstract of the paper was readable where this was written;
the details below follow the authors' code (github.com/xuwangyin/DAT, read, not copied), and
the docs (docs/robust.md, ``### dat``) list each choice.

* **Energy** (JEM, Grathwohl et al., ICLR 2020): the classifier's logits f(x) define
  E(x) = -logsumexp_y f(x)[y] (:func:`energy`), and E(x, y) = -f(x)[y] for one class. Low
  energy = likely under the model.
* **Generative part** (replaces JEM's SGLD): a binary cross-entropy with logit -E(x) between
  the real batch (label 1) and contrastive samples (label 0), :func:`energy_bce`:
  ``L_BCE = -log σ(-E(x_real)) - log σ(E(x_gen))``. The contrastive samples are made by PGD
  from out-of-distribution seeds (noise here; 80M Tiny Images / OpenImages in the paper):
  ``T`` L2-normalised gradient steps that *lower* the energy (ascend f(x)[y] for a label y of
  the real batch, the code's default, or logsumexp f(x)), unbounded ball, clipped to [0, 1]
  (:func:`generate`). The model then learns to raise the energy of what PGD found.
* **Curriculum**: ``T`` starts at ``start_steps`` (0) and grows by one each time the AUC of
  real vs generated samples (scored by -E), averaged over the last ``auc_window_images``
  images, reaches ``auc_threshold`` (0.8): the samples get harder as the energy improves.
* **Discriminative part**: adversarial training (Madry et al.): cross-entropy on PGD
  examples of the batch under the run's threat model (``robust.*``), crafted by the track's
  PGD (:class:`~hundred.tracks.robust.method.AdversarialTraining`); the loss is
  ``CE(f(x_adv), y) + bce_weight * L_BCE``.
* **Two stages** (batch norm vs EBM training): stage 1 is plain adversarial training with
  batch norm learning its statistics; stage 2 adds the BCE and freezes every batch norm in
  eval mode (running statistics fixed; its affine weights still train), since batch
  statistics of a batch of generated samples differ from those of real data. The paper
  starts stage 2 from a pre-trained robust classifier: ``stage1_fraction: 0`` with
  ``--init RUN_DIR`` of a finished ``robust/at`` run is that recipe; the default runs both
  stages in one run. LayerNorm networks need no freezing (there is nothing to freeze).

At the end of a run the scenario calls :meth:`DAT.save_pictures`: a seeded grid of samples
drawn from the model (``samples.png``, one row per class), which ``hundred report`` shows.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from hundred.config import RunConfig
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.robust.attacks import (AttackFn, PixelSpaceModel, adversarial_batch,
                                           build_pgd, seeded)
from hundred.tracks.robust.method import AdversarialTraining, AttackModeParams, training_threat


class DATParams(AttackModeParams):
    bce_weight: float = Field(1.0, ge=0, description="weight of the real-vs-generated BCE "
                              "(the generative part) next to the adversarial cross-entropy")
    gen_step_size: float = Field(0.1, gt=0, description="L2 length of each PGD step that "
                                 "makes the contrastive samples, in pixel units (CIFAR: 0.1)")
    start_steps: int = Field(0, ge=0, description="PGD steps of the contrastive samples at "
                             "the start of stage 2 (T; 0: the seeds themselves)")
    max_steps: int = Field(50, ge=0, description="the most PGD steps T the curriculum reaches")
    auc_threshold: float = Field(0.8, gt=0.5, le=1.0, description="T grows by one when the "
                                 "real-vs-generated AUC, averaged over the window, reaches this")
    auc_window_images: int = Field(1000, ge=1, description="images the AUC is averaged over "
                                   "before T may grow (the window restarts when it does)")
    conditional: bool = Field(True, description="generation ascends the logit f(x)[y] of a "
                              "class y (the real batch's labels in training; one row per class "
                              "in the grid), as the authors' code does; False: logsumexp f(x)")
    seeds: Literal["uniform", "smooth"] = Field(
        "uniform", description="where generation starts: 'uniform' pixel noise, or 'smooth' "
        "noise (uniform at a quarter of the resolution, upsampled bilinearly)")
    stage1_fraction: float = Field(0.5, ge=0, lt=1, description="fraction of the epochs "
                                   "trained as plain adversarial training (stage 1) before the "
                                   "joint stage; 0 with --init of a robust/at run: the paper's "
                                   "recipe")
    sample_steps: Optional[int] = Field(None, ge=0, description="PGD steps of the end-of-run "
                                        "samples; None: the T the curriculum reached")
    sample_step_size: Optional[float] = Field(None, gt=0, description="L2 step of the "
                                              "end-of-run samples; None: gen_step_size")
    sample_classes: int = Field(10, ge=1, description="classes (rows) of the sample grid")
    samples_per_class: int = Field(8, ge=1, description="samples per class in the grid")


def energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = -logsumexp_y f(x)[y] per image (JEM), in float32."""
    return -torch.logsumexp(logits.float(), dim=1)


def energy_bce(real_logits: torch.Tensor, generated_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logit -E(x): real images are labelled 1, generated 0."""
    scores = torch.cat([-energy(real_logits), -energy(generated_logits)])
    targets = torch.cat([torch.ones(len(real_logits), device=scores.device),
                         torch.zeros(len(generated_logits), device=scores.device)])
    return F.binary_cross_entropy_with_logits(scores, targets)


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve of scores ``positive`` (label 1) vs ``negative`` (label 0):
    P(positive > negative) + P(tie) / 2 over all pairs (Mann–Whitney)."""
    difference = positive.detach().float().view(-1, 1) - negative.detach().float().view(1, -1)
    return float(((difference > 0).float() + 0.5 * (difference == 0).float()).mean())


def noise_seeds(count: int, shape: tuple[int, int, int], kind: str,
                device: torch.device | str) -> torch.Tensor:
    """``count`` pixel images in [0, 1] to start generation from, from the global RNG."""
    channels, height, width = shape
    if kind == "uniform":
        return torch.rand(count, channels, height, width, device=device)
    coarse = torch.rand(count, channels, max(1, height // 4), max(1, width // 4), device=device)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def generate(pixel_model: nn.Module, seeds: torch.Tensor, steps: int, step_size: float,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """PGD that lowers the energy of ``seeds`` (pixel images): ``steps`` steps of L2 length
    ``step_size`` along the gradient of -E(x, y) = f(x)[y] (``labels`` given) or
    -E(x) = logsumexp f(x), unbounded, clipped to [0, 1]. Only the input is differentiated.

    Hand-written: torchattacks' PGD ascends a cross-entropy inside an ε-ball; this ascends
    the model's log-density without a ball."""
    pixels = seeds.detach().clone()
    for _ in range(steps):
        pixels.requires_grad_(True)
        logits = pixel_model(pixels).float()
        if labels is None:
            objective = torch.logsumexp(logits, dim=1).sum()
        else:
            objective = logits.gather(1, labels.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(objective, pixels)
        with torch.no_grad():
            gradient = gradient.float()
            length = gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            pixels = (pixels + step_size * gradient / length).clamp(0.0, 1.0)
    return pixels.detach()


def freeze_batch_norm(model: nn.Module) -> None:
    """Every batch norm of ``model`` in eval mode: running statistics used, never updated."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@register("robust", "dat")
class DAT(AdversarialTraining):
    """Adversarial cross-entropy plus the BCE of real vs PGD-generated samples (stage 2)."""

    Params: ClassVar[type[BaseModel]] = DATParams
    search_space = {"method_params.auc_threshold": Choice((0.7, 0.8, 0.9)),
                    "method_params.stage1_fraction": Choice((0.25, 0.5, 0.75))}

    def __init__(self, params: dict[str, Any] | None = None,
                 config: RunConfig | None = None) -> None:
        super().__init__(params, config)
        self.generation_steps = self.params.start_steps
        self.auc_window: deque[float] = deque()
        self.last_auc: float | None = None
        self._epoch = 0
        self._stage1_epochs = 0
        self._eval_attack: AttackFn | None = None
        self._logged: dict[str, float] = {"bce": 0.0, "batches": 0.0}

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        super().setup(model, ctx)
        if self._eval_attack is None:
            assert self._pixel_model is not None
            # stage 2 crafts with batch norm frozen: the model in eval mode (torchattacks
            # would put a train-mode attack's batch norms back into train mode)
            self._eval_attack = build_pgd(self._pixel_model, training_threat(ctx.config),
                                          num_classes=0, seed=ctx.config.seed)
        self._stage1_epochs = math.floor(self.params.stage1_fraction * ctx.epochs)
        window = math.ceil(self.params.auc_window_images / ctx.config.data.batch_size)
        self.auc_window = deque(self.auc_window, maxlen=window)

    @property
    def joint(self) -> bool:
        """Stage 2: the BCE is trained and batch norm is frozen."""
        return self._epoch >= self._stage1_epochs

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch
        self._logged = {"bce": 0.0, "batches": 0.0}

    # -- the loss ---------------------------------------------------------------------------
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.joint:  # stage 1: adversarial training, batch norm learning
            adversarial = self.adversarial_examples(images, labels)
            return cross_entropy(model(adversarial), labels, self.config.train.label_smoothing)
        adversarial = self._frozen(lambda: adversarial_batch(
            self._pixel_model, self._eval_attack, images, labels))
        generated = self._frozen(lambda: self.contrastive_samples(labels, images))
        logits = model(torch.cat([adversarial, images, generated]))
        adversarial_logits, real_logits, generated_logits = logits.split(len(labels))
        bce = energy_bce(real_logits, generated_logits)
        self._update_curriculum(-energy(real_logits), -energy(generated_logits))
        self._logged["bce"] += float(bce.detach())
        self._logged["batches"] += 1
        ce = cross_entropy(adversarial_logits, labels, self.config.train.label_smoothing)
        return ce + self.params.bce_weight * bce

    def _frozen(self, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``make`` with the model in eval mode, input gradients on; afterwards the
        model is back in its mode with batch norm frozen."""
        assert self._pixel_model is not None
        model = self._pixel_model.model
        training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                return make()
        finally:
            model.train(training)
            freeze_batch_norm(model)

    def contrastive_samples(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The generated batch (normalised, like ``like``): T PGD steps from noise seeds,
        toward the real batch's ``labels`` when ``conditional``."""
        assert self._pixel_model is not None
        seeds = noise_seeds(len(labels), tuple(like.shape[1:]), self.params.seeds, like.device)
        pixels = generate(self._pixel_model, seeds, self.generation_steps,
                          self.params.gen_step_size,
                          labels if self.params.conditional else None)
        return self._pixel_model.to_model(pixels).to(like.dtype)

    def _update_curriculum(self, real_scores: torch.Tensor, generated_scores: torch.Tensor
                           ) -> None:
        """Record the batch's real-vs-generated AUC (averaged over the ranks); T grows by one
        once the window is full and its mean reaches ``auc_threshold``."""
        value = auc(real_scores, generated_scores)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = torch.tensor([value], device=real_scores.device)
            torch.distributed.all_reduce(shared)
            value = float(shared) / torch.distributed.get_world_size()
        self.last_auc = value
        self.auc_window.append(value)
        full = len(self.auc_window) == self.auc_window.maxlen
        if (full and self.generation_steps < self.params.max_steps
                and sum(self.auc_window) / len(self.auc_window) >= self.params.auc_threshold):
            self.generation_steps += 1
            self.auc_window.clear()

    # -- logs, resume -----------------------------------------------------------------------
    def epoch_log(self, epoch: int) -> dict[str, Any]:
        batches = self._logged.get("batches", 0.0)
        return {"dat_stage": 2 if self.joint else 1, "dat_generation_steps": self.generation_steps,
                "dat_bce": self._logged["bce"] / batches if batches else None,
                "dat_auc": self.last_auc}

    def state_dict(self) -> dict[str, Any]:
        return {"generation_steps": self.generation_steps, "auc_window": list(self.auc_window),
                "last_auc": self.last_auc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation_steps = int(state["generation_steps"])
        self.auc_window = deque((float(v) for v in state["auc_window"]),
                                maxlen=self.auc_window.maxlen)
        self.last_auc = state["last_auc"]

    # -- samples for the report -------------------------------------------------------------
    def save_pictures(self, model: nn.Module, run_dir: Path, num_classes: int,
                      image_size: int) -> dict[str, Any]:
        """Draw a seeded grid of samples from ``model`` (PGD lowering the energy from noise
        seeds, in eval mode and float32) and write it to ``run_dir/samples.png``; returns
        what the summary records of it."""
        from hundred.report.grid import save_grid

        config, params = self.config, self.params
        device = next(model.parameters()).device
        pixel_model = PixelSpaceModel(model, config.data.mean, config.data.std).to(device)
        classes = min(num_classes, params.sample_classes)
        labels = torch.arange(classes, device=device).repeat_interleave(params.samples_per_class)
        steps = self.generation_steps if params.sample_steps is None else params.sample_steps
        shape = (len(config.data.mean), image_size, image_size)
        training = model.training
        model.eval()
        try:
            with seeded(config.seed, device), torch.enable_grad():
                seeds = noise_seeds(len(labels), shape, params.seeds, device)
                pixels = generate(pixel_model, seeds, steps,
                                  params.sample_step_size or params.gen_step_size,
                                  labels if params.conditional else None)
            with torch.no_grad():
                logits = pixel_model(pixels).float()
        finally:
            model.train(training)
        rows = labels if params.conditional else logits.argmax(dim=1)  # else: predicted class
        images = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        save_grid(images, rows.cpu().numpy(), run_dir / "samples.png",
                  max_per_class=params.samples_per_class, max_classes=classes)
        return {"samples": "samples.png", "sample_steps": steps,
                "generation_steps": self.generation_steps,
                "sample_energy": float(energy(logits).mean()),
                "sample_top1": float((logits.argmax(dim=1) == labels).float().mean() * 100)
                if params.conditional else None}
