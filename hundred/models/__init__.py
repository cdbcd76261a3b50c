"""Models: ``create(name, num_classes)`` returns a :class:`Classifier` = backbone + head.

Names are the local low-resolution nets (:data:`LOCAL_MODELS`) or any timm model name
(``resnet18``, ``vit_small_patch16_224`` ...; built without pretrained weights since nothing is
downloaded at run time). ``low_res_stem=True`` turns a timm ResNet's 7x7/2 stem and max-pool
into a 3x3/1 stem without pooling, the usual change for 32-64 px inputs.

``activation`` (``model.options.activation``: ``relu``, ``gelu`` or ``crrelu``, see
:mod:`hundred.models.activations`) rebuilds any model with that activation: the local CNNs
thread it through their constructors (their default, ReLU, builds today's nets), the ViTs and
timm models receive it as timm's ``act_layer`` (a timm model that does not take ``act_layer``
is a HundredError). Left unset, every model keeps its own default (ReLU for the CNNs, GELU for
the ViTs).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from hundred.errors import HundredError
from hundred.models.activations import CRReLU, activation_layer
from hundred.models.backbones import CifarResNet, ConvNet
from hundred.models.convit import convit_ca, convit_ca_tiny
from hundred.models.heads import HEADS, CosineHead, LanguageHead, LinearHead
from hundred.models.widths import OPTION as PRUNED_WIDTHS
from hundred.models.widths import apply_widths

__all__ = ["Classifier", "CosineHead", "CRReLU", "LanguageHead", "LinearHead", "LOCAL_MODELS",
           "create", "create_backbone"]


class TimmBackbone(nn.Module):
    """Wraps a timm model built with ``num_classes=0`` so that it returns pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.feature_dim = int(model.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _act_layer_option(name: str, activation: str | None, kwargs: dict[str, Any]
                      ) -> type[nn.Module] | None:
    """The class to pass as timm's ``act_layer`` for ``activation`` (None: the model's own)."""
    if activation is None:
        return None
    if "act_layer" in kwargs:
        raise HundredError(f"model {name}: give activation or act_layer, not both")
    return activation_layer(activation)


def _check_activation(name: str, model: nn.Module, layer: type[nn.Module] | None) -> None:
    """A timm model may swallow an ``act_layer`` it does not use: refuse that clearly."""
    if layer is not None and not any(isinstance(m, layer) for m in model.modules()):
        raise HundredError(f"model {name} does not take timm's act_layer, so its activation "
                           f"cannot be set to {layer.__name__}")


def _timm_backbone(name: str, *, low_res_stem: bool = False, activation: str | None = None,
                   **kwargs: Any) -> nn.Module:
    import timm

    if name not in timm.list_models():
        raise HundredError(f"unknown model {name!r}: not a local model ({', '.join(LOCAL_MODELS)}) "
                           f"nor a timm model name (see timm.list_models())")
    layer = _act_layer_option(name, activation, kwargs)
    if layer is not None:
        kwargs["act_layer"] = layer
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        if layer is not None and "act_layer" in str(error):
            raise HundredError(f"model {name} does not take timm's act_layer, so its activation "
                               f"cannot be set to {activation!r}") from None
        raise
    _check_activation(name, model, layer)
    if low_res_stem:
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
            raise HundredError(f"low_res_stem applies to ResNet-style models, not {name!r}")
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return TimmBackbone(model)


def _vit_32(img_size: int = 32, activation: str | None = None, **kwargs: Any) -> nn.Module:
    """A small ViT for 32 px: 4x4 patches (64 tokens), width 192, depth 9, 3 heads, MLP ratio 2.
    ``activation`` is its MLP activation (GELU unless given)."""
    from timm.models.vision_transformer import VisionTransformer

    options: dict[str, Any] = dict(img_size=img_size, patch_size=4, embed_dim=192, depth=9,
                                   num_heads=3, mlp_ratio=2.0)
    layer = _act_layer_option("vit_tiny_p4_32", activation, kwargs)
    if layer is not None:
        options["act_layer"] = layer
    options.update(kwargs)
    model = VisionTransformer(num_classes=0, **options)
    _check_activation("vit_tiny_p4_32", model, layer)
    return TimmBackbone(model)


def _spiking_vgg(img_size: int = 32, **kwargs: Any) -> nn.Module:
    from hundred.models.spiking import SpikingVGG  # snntorch is imported only when used

    return SpikingVGG(img_size=img_size, **kwargs)


def _cellnet(img_size: int = 32, **kwargs: Any) -> nn.Module:
    from hundred.models.cells import cellnet  # a DARTS-like cell search space (eeea)

    return cellnet(img_size=img_size, **kwargs)


def _elastic(img_size: int = 32, **kwargs: Any) -> nn.Module:
    from hundred.models.elastic import ElasticResNet  # compress/bignas's supernet

    return ElasticResNet(img_size=img_size, **kwargs)


def _hytra(img_size: int = 32, **kwargs: Any) -> nn.Module:
    from hundred.models.hytra import hytra

    return hytra(img_size=img_size, **kwargs)


# the 4x-wide CIFAR ResNets of the distillation benchmarks (Tian et al., ICLR 2020)
_X4 = {"width": 64, "stem_width": 32, "projection": True}

# name -> (builder, description). Builders take the input size ``img_size`` (used by the nets
# whose feature size depends on it, ignored by globally pooled ones) and keyword options.
LOCAL_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet20": (lambda img_size=32, **kw: CifarResNet(20, **kw),
                 "CIFAR ResNet-20, 0.27M params, 64-d features"),
    "resnet32": (lambda img_size=32, **kw: CifarResNet(32, **kw),
                 "CIFAR ResNet-32, 0.46M params (CIL standard)"),
    "resnet56": (lambda img_size=32, **kw: CifarResNet(56, **kw), "CIFAR ResNet-56, 0.85M params"),
    "resnet8x4": (lambda img_size=32, **kw: CifarResNet(8, **{**_X4, **kw}),
                  "CIFAR ResNet-8x4 (CRD's KD student), 1.2M params, 256-d features"),
    "resnet32x4": (lambda img_size=32, **kw: CifarResNet(32, **{**_X4, **kw}),
                   "CIFAR ResNet-32x4 (CRD's KD teacher), 7.4M params, 256-d features"),
    "resnet18_lowres": (lambda img_size=32, **kw: _timm_backbone("resnet18", low_res_stem=True, **kw),
                        "timm ResNet-18 with a 3x3/1 stem and no max-pool, for 32-64 px"),
    "convnet_d3": (lambda **kw: ConvNet(depth=3, **kw), "ConvNet-D3 (width 128, instance norm)"),
    "convnet_d4": (lambda **kw: ConvNet(depth=4, **kw), "ConvNet-D4 (width 128, instance norm)"),
    "elastic_resnet": (lambda img_size=32, **kw: _elastic(img_size, **kw),
                       "elastic ResNet supernet (depth/width/kernel; compress/bignas); "
                       "option child=CHILD builds one standalone child"),
    "spiking_vgg": (_spiking_vgg, "spiking VGG (conv-BN-LIF, snntorch); the ANN twin until a "
                    "spiking method sets its timesteps"),
    "cellnet": (_cellnet, "DARTS-like cell network from a genome (model.options.genome; "
                "the compress track's eeea search exports one)"),
    "vit_tiny_p4_32": (_vit_32, "small ViT for 32 px: patch 4, width 192, depth 9"),
    "convit_ca": (convit_ca,
                  "GCAB/DyTox ConViT: patch 4, width 384, 5 GPSA + 1 class-attention block"),
    "convit_ca_tiny": (convit_ca_tiny,
                       "CPU-sized ConViT: patch 4, width 64, 2 GPSA + 1 class-attention block"),
    "hytra": (_hytra, "BossNAS's hybrid CNN-transformer space at CPU scale: a path of "
              "ResConv/ResAtt layers (options.path), or the supernet (options.supernet)"),
}


def create_backbone(name: str, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """A backbone with ``forward_features(x) -> (B, D)`` and ``feature_dim``.

    ``img_size`` is the input resolution; local nets whose feature size depends on it use it.
    For timm models it is passed on only when given in ``kwargs`` by the user (as timm's own
    ``img_size`` option of ViTs), since most timm models are resolution-agnostic.
    ``pruned_widths`` (a width plan, :mod:`hundred.models.widths`, with the classifier's module
    names) is applied with a stand-in one-class head."""
    widths = kwargs.pop(PRUNED_WIDTHS, None)
    if widths is not None:
        backbone = create_backbone(name, img_size=img_size, **kwargs)
        model = Classifier(backbone, LinearHead(backbone.feature_dim, 1))
        return apply_widths(model, widths, img_size, f"model {name}").backbone
    if name in LOCAL_MODELS:
        try:
            return LOCAL_MODELS[name][0](**({"img_size": img_size} if img_size else {}), **kwargs)
        except TypeError as error:
            raise HundredError(f"model {name}: {error}") from None
    return _timm_backbone(name, **kwargs)


class Classifier(nn.Module):
    """Backbone + head. ``forward`` gives logits; ``features`` gives the backbone's features."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits, or ``(logits, features)``. Methods call the model (not ``features``) so
        that DDP sees the forward pass."""
        features = self.features(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits


def create(name: str, num_classes: int, head: str = "linear", img_size: int | None = None,
           **kwargs: Any) -> Classifier:
    """Build ``name`` (local or timm) with a ``head`` ("linear" or "cosine") for ``num_classes``
    classes and inputs of ``img_size`` pixels. A width plan ``pruned_widths`` (see
    :mod:`hundred.models.widths`) cuts the dense network down to its layer widths."""
    if head not in HEADS:
        raise HundredError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    widths = kwargs.pop(PRUNED_WIDTHS, None)
    backbone = create_backbone(name, img_size=img_size, **kwargs)
    model = Classifier(backbone, HEADS[head](backbone.feature_dim, num_classes))
    if widths is not None:
        apply_widths(model, widths, img_size, f"model {name}")
    return model
