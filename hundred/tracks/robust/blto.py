"""BLTO's trigger generator and its bi-level training (the torch side of
:mod:`hundred.tracks.robust.backdoor`).

Sun, Zhang, Lu, Chen, Wang, Chen & Lin, "Backdoor Contrastive Learning via Bi-level Trigger
Optimization", ICLR 2024 (arXiv 2404.07863), Sec. 4, Algorithm 1.

* Generator: the ResNet generator the BLTO code builds on (Naseer et al., "Cross-Domain
  Transferability of Adversarial Perturbations", NeurIPS 2019): a 7x7 convolution, two
  stride-2 convolutions, residual blocks at a quarter of the resolution (2 for CIFAR-size
  images, with dropout), two transposed convolutions back and a 7x7 convolution to 3
  channels, batch norm and ReLU between. Its output becomes the triggered image
  ``clip(clip((tanh(g(x)) + 1) / 2, x - eps, x + eps), 0, 1)`` (``project``, as the code) or
  ``clip(x + eps * tanh(g(x)), 0, 1)`` (``residual``): always within L∞ ``eps`` of ``x``.
  Inputs are padded (replicate) to a multiple of 4 and the output cropped back.
* Bi-level training (Algorithm 1): per outer step, ``inner_steps`` SGD steps of a surrogate
  SimSiam (:func:`hundred.tracks.ssl.methods.simsiam.simsiam_loss`, Eq. 4 of Chen & He) on
  batches of the poisoned training set (the poisoned rows replaced by the generator's output,
  no gradient to the generator), then one Adam step of the generator that maximises the
  cosine similarity of the surrogate backbone's features of ``t1(g(x))`` (``x`` any training
  image) and ``t2(x_r)`` (``x_r`` a random target-class image), ``t1, t2`` the ssl track's
  views (:func:`hundred.data.augment.build_augment`, differentiable). The surrogate is
  re-initialised every ``reinit_every`` outer steps.
* After training the generator's batch-norm statistics are recomputed on the training
  images with the final weights (its running averages mix every step's weights), and it is
  applied in eval mode; triggered images are rounded to uint8.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hundred.tracks.robust.backdoor import BltoParams

APPLY_BATCH = 256  # images per generator forward pass when applying it
RECALIBRATION_IMAGES = 4096  # training images that re-estimate the batch-norm statistics


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(True), nn.Dropout(dropout),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class TriggerGenerator(nn.Module):
    """``x`` in ``[0, 1]`` ``(B, 3, H, W)`` -> its triggered copy, within L∞ ``eps``."""

    def __init__(self, eps: float, form: str = "project", width: int = 64, blocks: int = 2,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.eps, self.form = float(eps), form

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(True)]

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1,
                                       bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(True), *down(width, 2 * width), *down(2 * width, 4 * width),
            *[_ResidualBlock(4 * width, dropout) for _ in range(blocks)],
            *up(4 * width, 2 * width), *up(2 * width, width),
            nn.ReflectionPad2d(3), nn.Conv2d(width, 3, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % 4, (-width) % 4
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        raw = self.net(padded)[..., :height, :width]
        if self.form == "residual":
            return (x + self.eps * torch.tanh(raw)).clamp(0, 1)
        image = (torch.tanh(raw) + 1) / 2
        return torch.minimum(torch.maximum(image, x - self.eps), x + self.eps).clamp(0, 1)


def build_generator(params: BltoParams) -> TriggerGenerator:
    return TriggerGenerator(params.eps, params.trigger_form, params.generator_width,
                            params.generator_blocks, params.dropout)


def generator_tensors(generator: TriggerGenerator) -> dict[str, np.ndarray]:
    """The generator's state as numpy arrays (for safetensors)."""
    return {name: value.detach().cpu().contiguous().numpy()
            for name, value in generator.state_dict().items()}


def load_generator(params: BltoParams, tensors: dict[str, np.ndarray]) -> TriggerGenerator:
    """A generator of ``params`` with the stored ``tensors``, in eval mode."""
    from hundred.errors import HundredError

    generator = build_generator(params)
    try:
        generator.load_state_dict({name: torch.from_numpy(np.array(value))
                                   for name, value in tensors.items()})
    except (RuntimeError, TypeError) as error:
        raise HundredError(f"the stored trigger generator does not fit its params "
                           f"({str(error).splitlines()[0][:200]})") from None
    return generator.eval()


def _unit(images: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in ``[0, 1]`` on ``device``."""
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8)) \
        if isinstance(images, np.ndarray) else images
    return tensor.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1) \
        .cpu().numpy()


@torch.no_grad()
def apply_generator(generator: TriggerGenerator, images: np.ndarray,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Triggered copies of uint8 ``images`` ``(N, H, W, 3)`` (generator in eval mode), rounded
    to uint8: within ``eps + 0.5/255`` of the input (exactly ``eps`` when ``255 eps`` is an
    integer)."""
    generator = generator.to(device).eval()
    out = np.empty_like(np.asarray(images), dtype=np.uint8)
    for start in range(0, len(images), APPLY_BATCH):
        batch = _unit(images[start:start + APPLY_BATCH], device)
        out[start:start + len(batch)] = _to_uint8(generator(batch))
    return out


@torch.no_grad()
def recalibrate(generator: TriggerGenerator, images: np.ndarray, device: str | torch.device,
                batch: int) -> None:
    """Re-estimate the batch-norm statistics of the final weights (cumulative average over up
    to :data:`RECALIBRATION_IMAGES` training images; dropout off); leaves eval mode."""
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    generator.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    count = min(len(images), RECALIBRATION_IMAGES)
    for start in range(0, count, batch):
        generator(_unit(images[start:min(start + batch, count)], device))
    for norm in norms:
        norm.momentum = 0.1
    generator.eval()


class Surrogate(nn.Module):
    """The surrogate SimSiam: a hundred backbone, lightly's projector and predictor."""

    def __init__(self, params: BltoParams, image_side: int) -> None:
        super().__init__()
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        from hundred.models import create

        self.model = create(params.surrogate, 2, img_size=image_side,
                            **params.surrogate_options)
        self.projector = SimSiamProjectionHead(self.model.feature_dim, params.proj_dim,
                                               params.proj_dim)
        self.predictor = SimSiamPredictionHead(params.proj_dim, params.pred_hidden_dim,
                                               params.proj_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def ssl_loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        from hundred.tracks.ssl.methods.simsiam import simsiam_loss

        projections = [self.projector(self.features(view)) for view in (view1, view2)]
        predictions = [self.predictor(z) for z in projections]
        return simsiam_loss(predictions, projections)


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def views(recipe: str, image_side: int) -> tuple[Augment, Augment]:
    """The ssl track's two view pipelines ``t1, t2`` of ``recipe`` (normalised output)."""
    from hundred.data.augment import build_augment, view_specs

    first, second = view_specs(recipe)[:2]
    return build_augment(first, image_side), build_augment(second, image_side)


def outer_loss(generator: TriggerGenerator, surrogate: Surrogate, images: torch.Tensor,
               references: torch.Tensor, t1: Augment, t2: Augment,
               random: torch.Generator) -> torch.Tensor:
    """BLTO's outer objective as a loss: minus the mean cosine similarity of the surrogate's
    features of ``t1(g(x))`` and ``t2(x_r)`` (``images`` and ``references`` in ``[0, 1]``,
    paired row by row); the references carry no gradient."""
    triggered = surrogate.features(t1(generator(images), random))
    with torch.no_grad():
        anchors = surrogate.features(t2(references, random))
    return -F.cosine_similarity(triggered, anchors, dim=1).mean()


def train_blto(images: np.ndarray, labels: np.ndarray, mask: np.ndarray, params: BltoParams,
               seed: int, device: str) -> tuple[TriggerGenerator, dict[str, Any]]:
    """Algorithm 1: the trained generator (eval mode) and a JSON-safe training record.

    ``images`` uint8 ``(N, H, W, 3)`` and ``labels`` are the clean training split, ``mask``
    the rows that the victim will see poisoned. Deterministic given ``seed`` on a device."""
    started = time.perf_counter()
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        host = np.random.default_rng(seed)
        random = torch.Generator(device=device).manual_seed(seed)
        data = torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)  # resident
        poisoned = torch.as_tensor(mask, dtype=torch.bool).to(device)
        targets = np.flatnonzero(np.asarray(labels) == params.target_class)
        side = int(images.shape[1])
        t1, t2 = views(params.augment, side)
        generator = build_generator(params).to(device).train()
        gen_opt = torch.optim.Adam(generator.parameters(), lr=params.generator_lr,
                                   betas=(0.5, 0.999))

        def fresh() -> tuple[Surrogate, torch.optim.Optimizer]:
            surrogate = Surrogate(params, side).to(device).train()
            return surrogate, torch.optim.SGD(surrogate.parameters(), lr=params.surrogate_lr,
                                              momentum=0.9, weight_decay=5e-4)

        surrogate, sur_opt = fresh()
        batch = min(params.batch_size, len(images))
        losses: list[float] = []
        for step in range(params.steps):
            if step and params.reinit_every and step % params.reinit_every == 0:
                surrogate, sur_opt = fresh()
            for _ in range(params.inner_steps):
                rows = torch.as_tensor(host.choice(len(images), batch, replace=False))
                x = _unit(data[rows.to(device)], device)
                hit = poisoned[rows.to(device)]
                if bool(hit.any()):  # the victim's view of the poisoned set
                    with torch.no_grad():
                        x = torch.where(hit[:, None, None, None], generator(x), x)
                loss = surrogate.ssl_loss(t1(x, random), t2(x, random))
                sur_opt.zero_grad(set_to_none=True)
                loss.backward()
                sur_opt.step()
            rows = torch.as_tensor(host.choice(len(images), batch, replace=False))
            refs = torch.as_tensor(host.choice(targets, batch, replace=True))
            loss = outer_loss(generator, surrogate, _unit(data[rows.to(device)], device),
                              _unit(data[refs.to(device)], device), t1, t2, random)
            gen_opt.zero_grad(set_to_none=True)
            loss.backward()
            gen_opt.step()
            losses.append(float(loss.detach()))
        recalibrate(generator, np.asarray(images), device, batch)
    tenth = max(1, math.ceil(len(losses) / 10))
    history = {
        "outer_steps": params.steps, "inner_steps": params.inner_steps,
        "reinit_every": params.reinit_every,
        "target_similarity_first_tenth": round(-float(np.mean(losses[:tenth])), 4),
        "target_similarity_last_tenth": round(-float(np.mean(losses[-tenth:])), 4),
        "seconds": round(time.perf_counter() - started, 2), "device": str(device),
    }
    return generator, history
