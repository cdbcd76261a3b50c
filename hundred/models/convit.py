"""A small ConViT whose last block is a class-attention block (DyTox's encoder/decoder split).

Douillard et al., "DyTox: Transformers for Continual Learning with DYnamic TOken eXpansion"
(CVPR 2022) and Cotogni et al., "Exemplar-free Continual Learning of Vision Transformers via
Gated Class-Attention and Cascaded Feature Drift Compensation" (arXiv 2211.12292, 2022) use
the same network: self-attention blocks over the patch tokens (ConViT's gated positional
self-attention, d'Ascoli et al., ICML 2021, in the first ``local_up_to_layer`` of them), then
one class-attention block (CaiT, Touvron et al., ICCV 2021) in which a class token attends to
the patch tokens. The parts are timm's: :class:`timm.models.convit.Block` for the
self-attention blocks, :class:`timm.models.cait.ClassAttn` and timm's ``Mlp`` for the
class-attention block.

The backbone exposes the two halves so that a continual method can run the class-attention
block once per task token (``patch_tokens``, ``class_attention``), and optional *gates* on the
class-attention block's units (GCAB: a vector over the embedding channels, another over the
MLP's hidden units; see :meth:`GatedClassAttentionBlock.forward`). Used as an ordinary
backbone (``forward_features``) it runs the block with its own class token, ungated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Gates = tuple[torch.Tensor, torch.Tensor]


def _init_weights(module: nn.Module) -> None:
    """ViT/DyTox initialisation: truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class GatedClassAttentionBlock(nn.Module):
    """Class-attention block (pre-norm class attention + MLP, both residual on the class token)
    with optional multiplicative gates on its units.

    The gates ``(g, h)`` (``g`` over the ``dim`` embedding channels, ``h`` over the MLP's hidden
    units) sit where GCAB puts them: ``g`` on the inputs and outputs of the query, key, value
    and output projections and of the MLP, ``h`` on the MLP's hidden activations. A unit whose
    gate is 0 neither reads nor writes, so the weights between used units are the only ones a
    task depends on.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        from timm.layers import Mlp
        from timm.models.cait import ClassAttn

        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttn(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)

    @property
    def hidden_dim(self) -> int:
        return self.mlp.fc1.out_features

    def forward(self, tokens: torch.Tensor, class_token: torch.Tensor,
                gates: Gates | None = None) -> torch.Tensor:
        """The class token ``(B, 1, D)`` (or ``(1, 1, D)``) after attending to ``tokens``
        ``(B, N, D)``: ``(B, D)``. ``gates=None`` is the plain block."""
        batch = tokens.shape[0]
        class_token = class_token.expand(batch, -1, -1)
        attn = self.attn
        g, h = gates if gates is not None else (None, None)

        def gated(x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
            return x if gate is None else x * gate.to(x.dtype)

        x = gated(self.norm1(torch.cat((class_token, tokens), dim=1)), g)
        heads, dim = attn.num_heads, x.shape[-1]
        q = gated(attn.q(x[:, :1]), g).reshape(batch, 1, heads, dim // heads).transpose(1, 2)
        k = gated(attn.k(x), g).reshape(batch, -1, heads, dim // heads).transpose(1, 2)
        v = attn.v(x).reshape(batch, -1, heads, dim // heads).transpose(1, 2)
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        attended = gated(attended.transpose(1, 2).reshape(batch, 1, dim), g)
        class_token = class_token + gated(attn.proj_drop(attn.proj(attended)), g)
        mlp = self.mlp
        hidden = gated(mlp.act(mlp.fc1(gated(self.norm2(class_token), g))), h)
        class_token = class_token + gated(mlp.drop2(mlp.fc2(mlp.drop1(hidden))), g)
        return class_token[:, 0]


class ClassAttentionConViT(nn.Module):
    """Patch embedding + ``depth`` self-attention blocks (the first ``local_up_to_layer`` with
    ConViT's GPSA) + one :class:`GatedClassAttentionBlock`. ``forward_features`` gives the
    normalised output of the block's own class token, ``(B, embed_dim)``."""

    def __init__(self, img_size: int = 32, patch_size: int = 4, embed_dim: int = 384,
                 depth: int = 5, num_heads: int = 12, mlp_ratio: float = 4.0,
                 local_up_to_layer: int | None = None, qkv_bias: bool = False,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        from timm.layers import PatchEmbed
        from timm.models.convit import Block

        super().__init__()
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3,
                                      embed_dim=embed_dim)
        self.num_patches = int(self.patch_embed.num_patches)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        local = depth if local_up_to_layer is None else local_up_to_layer
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  act_layer=act_layer, use_gpsa=i < local) for i in range(depth))
        self.class_attention_block = GatedClassAttentionBlock(embed_dim, num_heads, mlp_ratio,
                                                              qkv_bias, act_layer)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.feature_dim = embed_dim
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if hasattr(module, "local_init"):  # GPSA's locality-biased initialisation
                module.local_init()

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The self-attention blocks' output ``(B, num_patches, embed_dim)``."""
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x

    def class_attention(self, tokens: torch.Tensor, class_token: torch.Tensor,
                        gates: Gates | None = None) -> torch.Tensor:
        """``class_token`` after the class-attention block over ``tokens``: ``(B, D)``."""
        return self.class_attention_block(tokens, class_token, gates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.class_attention(self.patch_tokens(x), self.cls_token))


def convit_ca(img_size: int = 32, activation: str | None = None, **options: Any) -> nn.Module:
    """GCAB's CIFAR network: 4x4 patches, width 384, 5 GPSA blocks + 1 class-attention block,
    12 heads, MLP ratio 4 (options override any of them)."""
    return _build(img_size, activation, dict(embed_dim=384, depth=5, num_heads=12), options)


def convit_ca_tiny(img_size: int = 32, activation: str | None = None, **options: Any
                   ) -> nn.Module:
    """A CPU-sized variant: 4x4 patches, width 64, 2 GPSA blocks + 1 class-attention block,
    4 heads, MLP ratio 2."""
    return _build(img_size, activation,
                  dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0), options)


def _build(img_size: int, activation: str | None, defaults: dict[str, Any],
           options: dict[str, Any]) -> nn.Module:
    from hundred.errors import HundredError
    from hundred.models.activations import activation_layer

    settings: dict[str, Any] = {"patch_size": 4, **defaults, **options}
    if activation is not None:
        settings["act_layer"] = activation_layer(activation)
    if img_size % settings["patch_size"]:
        raise HundredError(f"convit_ca: img_size {img_size} is not a multiple of patch_size "
                           f"{settings['patch_size']}")
    side = img_size // settings["patch_size"]
    if settings.get("local_up_to_layer", settings["depth"]) and side < 2:
        raise HundredError("convit_ca: GPSA needs a grid of at least 2x2 patches")
    return ClassAttentionConViT(img_size=img_size, **settings)
