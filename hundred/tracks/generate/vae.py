"""Latent diffusion's autoencoder: a small diffusers ``AutoencoderKL`` trained on the same
data, and the codec the scenario puts between pixels and the denoiser.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022):
a KL-regularised autoencoder compresses images to a latent map (here 4 channels at half or a
quarter of the resolution), the diffusion model works on the latents scaled to unit variance
(``scaling_factor`` = 1 / std of the training latents, Sec. 4 / Appendix G), and the decoder
maps samples back. The loss here is the reconstruction MSE plus ``kl_weight`` x the KL to the
standard normal; LDM adds a perceptual and an adversarial loss, which at 16-32 px and CPU
budgets are left out (documented simplification).

``hundred generate vae --data SRC --out DIR`` trains one with the engine's trainer
(checkpoints under ``DIR/train``; rerun to resume) and writes the diffusers folder ``DIR``
(``config.json`` + safetensors) with its scaling factor and ``hundred-vae.json`` (data,
reconstruction error on val); ``generate.latent=DIR`` uses it. Any diffusers AutoencoderKL
folder with local weights works the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hundred.config import RunConfig
from hundred.engine.method import Method
from hundred.errors import HundredError

META = "hundred-vae.json"


class Codec:
    """Pixels in [-1, 1] <-> scaled latents of a frozen AutoencoderKL."""

    def __init__(self, vae: nn.Module, scale: float) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(scale)

    @classmethod
    def load(cls, directory: Path, device: torch.device | str = "cpu") -> "Codec":
        """The AutoencoderKL in the diffusers folder ``directory`` (local files only)."""
        from diffusers import AutoencoderKL

        if not (Path(directory) / "config.json").is_file():
            raise HundredError(f"generate.latent {directory}: not a diffusers AutoencoderKL "
                               "folder (no config.json); train one with `hundred generate vae`")
        try:
            vae = AutoencoderKL.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as error:
            raise HundredError(f"generate.latent {directory}: the VAE does not load "
                               f"({str(error).splitlines()[0]})") from None
        return cls(vae.to(device), vae.config.scaling_factor)

    def to(self, device: torch.device | str) -> "Codec":
        self.vae.to(device)
        return self

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsampling:
            raise HundredError(f"the VAE downsamples by {self.downsampling}: image size "
                               f"{image_size} is not divisible by it")
        side = image_size // self.downsampling
        return (int(self.vae.config.latent_channels), side, side)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The posterior's mean, scaled (deterministic; LDM samples the posterior, whose
        variance is tiny at a small KL weight)."""
        return self.vae.encode(pixels).latent_dist.mode() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale).sample


def build_vae(image_size: int, widths: tuple[int, ...] = (32, 64), latent_channels: int = 4
              ) -> nn.Module:
    """A small AutoencoderKL: ``len(widths) - 1`` halvings, ``latent_channels`` channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths), layers_per_block=1, norm_num_groups=8,
        sample_size=image_size)


class VAELoss(Method):
    """Reconstruction MSE + ``kl_weight`` x KL(q(z|x) || N(0, I)), per pixel / latent unit."""

    def __init__(self, config: RunConfig, kl_weight: float) -> None:
        super().__init__(None, config)
        self.kl_weight = kl_weight

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from hundred.tracks.generate.pixels import from_loader

        pixels = from_loader(images, self.config.data.mean, self.config.data.std)
        posterior = model.encode(pixels).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return nn.functional.mse_loss(reconstruction.float(), pixels) + self.kl_weight * kl


def train_vae(config: RunConfig, out: Path, widths: tuple[int, ...] = (32, 64),
              latent_channels: int = 4, kl_weight: float = 1e-4,
              console: Any = None) -> dict[str, Any]:
    """Train the VAE of ``config.data`` (``config.train.epochs``, its optimiser) and write the
    diffusers folder ``out``; returns what ``hundred-vae.json`` holds."""
    from rich.console import Console

    from hundred.engine.distributed import DistInfo
    from hundred.engine.run import RunContext, image_size, load_data, train_loader
    from hundred.engine.trainer import Trainer, resolve_device

    console = console or Console(stderr=True)
    if kl_weight < 0:
        raise HundredError(f"--kl-weight {kl_weight} must be >= 0")
    dataset = load_data(config)
    size = image_size(config, dataset)
    if size % 2 ** (len(widths) - 1):
        raise HundredError(f"image size {size} is not divisible by the VAE's downsampling "
                           f"{2 ** (len(widths) - 1)}")
    device = resolve_device(config.train.device)
    torch.manual_seed(config.seed)
    vae = build_vae(size, widths, latent_channels)
    (out / "train").mkdir(parents=True, exist_ok=True)
    ctx = RunContext(config, device, DistInfo(), out, console)
    loader = train_loader(ctx, dataset)
    method = VAELoss(config, kl_weight)
    trainer = Trainer(config, vae, method, loader, None, device, out / "train", console=console)
    if trainer.resume():
        console.print(f"resumed {out} after epoch {trainer.start_epoch}")
    result = trainer.fit()
    vae = (trainer.ema.module if trainer.ema is not None else vae).eval()
    # LDM's scaling: latents of the training images scaled to unit standard deviation
    from hundred.tracks.generate.scenario import real_images

    with torch.no_grad():
        train, _ = real_images(dataset, "train")
        latents = torch.cat([vae.encode(train[i:i + 256].to(device)).latent_dist.mode()
                             for i in range(0, min(len(train), 2048), 256)])
        scale = float(1.0 / latents.float().std())
        val, _ = real_images(dataset, "val")
        val = val[:512].to(device)
        error = float(nn.functional.mse_loss(vae.decode(vae.encode(val).latent_dist.mode()).sample,
                                             val))
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(str(out), safe_serialization=True)
    meta = {"data": dataset.name, "image_size": size, "widths": list(widths),
            "latent_channels": latent_channels, "kl_weight": kl_weight,
            "scaling_factor": scale, "val_mse": error, "epochs": config.train.epochs,
            "train_seconds": round(result.train_seconds, 2)}
    from hundred.io import write_json

    write_json(out / META, meta)
    return meta


def vae_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META
    return json.loads(path.read_text()) if path.is_file() else {}
