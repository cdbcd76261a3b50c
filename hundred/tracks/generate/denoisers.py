"""The class-conditional denoisers: diffusers' UNet2DModel and DiTTransformer2DModel behind
one call, ``model(x, t, labels)``.

* ``t`` in [0, 1] is passed to the network as the timestep ``1000 t`` (the sinusoidal
  embedding of both networks expects DDPM-scale timesteps);
* labels in ``[0, num_classes]``: the networks' class tables have ``num_classes + 1`` rows,
  the last one the null label of classifier-free guidance (dropped labels in training);
* the UNet's skip connections can be scaled (``skip_scales``, innermost first; Skip-Tuning):
  a forward pre-hook on each decoder block multiplies the skip features it receives.

DiT's own label embedding drops labels at random in train mode (class_dropout_prob 0.1);
that is switched off here, since the track's loss already drops labels
(``generate.label_dropout``), and twice would change the documented rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hundred.errors import HundredError

UNET_DEFAULTS = {"block_out_channels": (32, 64, 64), "layers_per_block": 1,
                 "attention": (False, True, False), "norm_num_groups": 8}
DIT_DEFAULTS = {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 16,
                "patch_size": 2}


class UNetDenoiser(nn.Module):
    """A class-conditional UNet (DDPM's architecture family: residual blocks, attention at
    chosen resolutions, skip connections from encoder to decoder)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int,
                 block_out_channels: tuple[int, ...] = UNET_DEFAULTS["block_out_channels"],
                 layers_per_block: int = 1,
                 attention: tuple[bool, ...] = UNET_DEFAULTS["attention"],
                 norm_num_groups: int = 8) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        widths = tuple(int(w) for w in block_out_channels)
        attention = tuple(bool(a) for a in attention)
        if len(attention) != len(widths):
            raise HundredError(f"unet: attention {attention} needs one flag per block "
                               f"({len(widths)})")
        if image_size % 2 ** (len(widths) - 1):
            raise HundredError(f"unet: image size {image_size} is not divisible by "
                               f"{2 ** (len(widths) - 1)} ({len(widths)} resolutions)")
        if any(w % norm_num_groups for w in widths):
            raise HundredError(f"unet: widths {widths} must be multiples of norm_num_groups "
                               f"{norm_num_groups}")
        self.num_classes, self.null_label = num_classes, num_classes
        self.in_channels, self.image_size = in_channels, image_size
        self.net = UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=widths, layers_per_block=int(layers_per_block),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D"
                                 for a in reversed(attention)),
            norm_num_groups=norm_num_groups, num_class_embeds=num_classes + 1)
        # one skip tensor per encoder output; decoder block i consumes len(resnets) of them,
        # the last one first, the innermost block first
        self.skip_counts = [len(block.resnets) for block in self.net.up_blocks]
        self.skip_scales: list[float] = [1.0] * sum(self.skip_counts)
        for index, block in enumerate(self.net.up_blocks):
            block.register_forward_pre_hook(self._scale_skips(index))

    def _scale_skips(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            start = sum(self.skip_counts[:index])
            scales = self.skip_scales[start:start + self.skip_counts[index]]
            if all(s == 1.0 for s in scales):
                return None
            sample, skips, *rest = args
            # the block pops skips from the end: the innermost skip is skips[-1]
            scaled = tuple(skip * scale for skip, scale in zip(skips, reversed(scales)))
            return (sample, scaled, *rest)
        return hook

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(x, t * 1000, class_labels=labels).sample


class DiTDenoiser(nn.Module):
    """A class-conditional diffusion transformer (Peebles & Xie 2023: patches, adaLN-Zero
    conditioning on timestep and class)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int,
                 num_layers: int = 4, num_attention_heads: int = 4, attention_head_dim: int = 16,
                 patch_size: int = 2) -> None:
        super().__init__()
        from diffusers import DiTTransformer2DModel
        from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings

        if image_size % patch_size:
            raise HundredError(f"dit: image size {image_size} is not divisible by the patch "
                               f"size {patch_size}")
        self.num_classes, self.null_label = num_classes, num_classes
        self.in_channels, self.image_size = in_channels, image_size
        self.net = DiTTransformer2DModel(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=in_channels, num_layers=num_layers,
            sample_size=image_size, patch_size=patch_size, num_embeds_ada_norm=num_classes,
            norm_num_groups=1)
        for module in self.net.modules():
            if isinstance(module, CombinedTimestepLabelEmbeddings):
                module.class_embedder.dropout_prob = 0.0  # the track drops labels itself

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(x, timestep=t * 1000, class_labels=labels).sample


def build_denoiser(name: str, in_channels: int, image_size: int, num_classes: int,
                   options: dict[str, Any] | None = None) -> nn.Module:
    """The denoiser ``name`` (``unet`` or ``dit``) with ``options`` over its defaults; bad
    options are a HundredError."""
    defaults = {"unet": UNET_DEFAULTS, "dit": DIT_DEFAULTS}
    if name not in defaults:
        raise HundredError(f"generate.denoiser={name!r}: unet or dit")
    options = dict(options or {})
    unknown = set(options) - set(defaults[name])
    if unknown:
        raise HundredError(f"generate.denoiser_options: unknown {sorted(unknown)} for {name} "
                           f"(known: {sorted(defaults[name])})")
    kwargs = {**defaults[name], **options}
    cls = UNetDenoiser if name == "unet" else DiTDenoiser
    try:
        return cls(in_channels, image_size, num_classes, **kwargs)
    except (TypeError, ValueError) as error:
        raise HundredError(f"generate.denoiser_options {options}: {error}") from None
