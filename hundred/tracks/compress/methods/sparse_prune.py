"""Sparse-then-Prune: a sparsity regulariser on a ViT's attention, then global unstructured
magnitude pruning, then fine-tuning with the pruning mask kept.

Prasetyo, Yudistira, Widodo, "Sparse then Prune: Toward Efficient Vision Transformers"
(arXiv 2307.11988, 2023; code github.com/yogiprsty/Sparse-ViT). The training loss is

    L = CE(f(x), y) + lambda * mean_{l, b, h, i, j} log(1 + A_{l,b,h,i,j}^2)

over the softmax attention probabilities ``A`` (lambda = ``reg_weight`` = 0.01, the
official code's value), then the prunable weights are pruned globally by L1 magnitude
(``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``: the ``prune_rate``
share of smallest-magnitude entries over all of them together is zeroed) and made
permanent with ``prune.remove``. The paper's four combinations are settings of this one
method: ``reg_weight`` 0 or 0.01 x ``prune_rate`` 0 or p.

One run does the whole pipeline with the shared trainer: the regularised (or plain)
training runs for ``train.epochs - finetune_epochs`` epochs; at the end of that epoch the
model is pruned (that epoch's evaluation is the pruned model before fine-tuning); the last
``finetune_epochs`` epochs fine-tune it with the same loss, the pruned entries re-zeroed
after every optimiser step, so the exported model has exact zeros at rate ``prune_rate``
over the prunable weights. ``finetune_epochs=0`` prunes after the last epoch and evaluates
the pruned model directly (what the official code's test does).

Choices where the paper/code leave one (docs: /work/notes/compress-sparse_prune.md):

* attention probabilities: timm's ``Attention`` is switched to its explicit softmax path
  (``fused_attn = False``; mathematically the same forward) and the probabilities are read
  by a forward hook on ``attn_drop``, whose input is the softmax output;
* ``reg_layers="all"`` averages the regulariser over every block (equal shapes, so it is
  the mean over all probabilities); the official code returns only the *last* block's term
  (its encoder loop overwrites it): ``reg_layers="last"`` reproduces that;
* ``prune_scope="blocks"`` prunes the linear layers of every block's attention (qkv, proj)
  and MLP (fc1, fc2), the layers the paper discusses; ``"official"`` adds what the official
  ``prune_ViT`` also prunes: the patch-embedding convolution, the blocks' LayerNorm weights
  and the classifier.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.utils.prune as prune
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.compress.method import CompressMethod


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """timm's ``Attention`` modules of ``model`` in forward order."""
    from timm.layers.attention import Attention

    return [module for module in model.modules() if isinstance(module, Attention)]


def sparsity_regulariser(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """``mean log(1 + a^2)`` over the attention probabilities of each layer, averaged over
    the layers (the paper's sparse regulariser)."""
    return torch.stack([torch.log1p(p.float().square()).mean() for p in probabilities]).mean()


def prunable_parameters(model: nn.Module, scope: str = "blocks"
                        ) -> list[tuple[nn.Module, str, str]]:
    """(module, ``"weight"``, qualified parameter name) of the weights pruning acts on:
    ``blocks`` = the linear layers of every transformer block (attention qkv/proj, MLP
    fc1/fc2); ``official`` adds the patch embedding, the blocks' LayerNorms and the head."""
    chosen: list[tuple[nn.Module, str, str]] = []
    block_names = [name for name, module in model.named_modules()
                   if hasattr(module, "attn") and hasattr(module, "mlp")]
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{block}.") for block in block_names)
        if isinstance(module, nn.Linear) and inside:
            chosen.append((module, "weight", f"{name}.weight"))
        elif scope == "official" and (
                (isinstance(module, nn.LayerNorm) and inside and module.weight is not None)
                or (isinstance(module, nn.Conv2d) and "patch_embed" in name)
                or (isinstance(module, nn.Linear) and name.split(".")[0] == "head")):
            chosen.append((module, "weight", f"{name}.weight"))
    return chosen


@register("compress", "sparse_prune")
class SparsePrune(CompressMethod):
    """CE + ``reg_weight`` x mean log(1 + a^2) over the attention probabilities; global L1
    magnitude pruning at ``prune_rate`` ``finetune_epochs`` before the end, then fine-tuning
    with the mask kept."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        reg_weight: float = Field(0.01, ge=0, description="lambda of the attention sparsity "
                                  "regulariser mean log(1 + a^2); 0 = plain cross-entropy")
        prune_rate: float = Field(0.0, ge=0, lt=1, description="share of the prunable "
                                  "weights zeroed by global L1 magnitude pruning; 0 = none")
        finetune_epochs: int = Field(1, ge=0, description="epochs of fine-tuning after "
                                     "pruning (the last ones of train.epochs); 0 = prune after "
                                     "the last epoch")
        reg_layers: Literal["all", "last"] = Field(
            "all", description="blocks whose attention is regularised: all (mean over them) "
            "or the last one (the official code's behaviour)")
        prune_scope: Literal["blocks", "official"] = Field(
            "blocks", description="blocks: the linear layers of the attention and MLP of "
            "every block; official: also the patch embedding, LayerNorms and head")

    search_space = {"method_params.reg_weight": Choice((0.0, 0.001, 0.01, 0.1))}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self._model: nn.Module | None = None
        self._probabilities: list[torch.Tensor] = []
        self._collecting = False
        self._hooked: set[int] = set()
        self.masks: dict[str, torch.Tensor] = {}

    @property
    def prune_epoch(self) -> int | None:
        """The 0-based epoch after which the model is pruned (None: no pruning)."""
        if self.params.prune_rate == 0:
            return None
        return self.config.train.epochs - 1 - self.params.finetune_epochs

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        from hundred.models import create

        if self.params.prune_rate > 0 and self.params.finetune_epochs >= config.train.epochs:
            raise HundredError(
                f"compress/sparse_prune: method_params.finetune_epochs="
                f"{self.params.finetune_epochs} leaves no epoch to train before pruning "
                f"(train.epochs={config.train.epochs})")
        with torch.device("meta"):
            model = create(config.model.name, dataset.num_classes, head=config.model.head,
                           img_size=image_size, **config.model.options)
        if not attention_blocks(model):
            raise HundredError(f"compress/sparse_prune regularises a Vision Transformer's "
                               f"attention: model {config.model.name} has no timm Attention "
                               "(use e.g. model.name=vit_tiny_p4_32)")

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        self._model = model
        for attention in attention_blocks(model):
            attention.fused_attn = False  # the explicit path computes the probabilities
            if id(attention) not in self._hooked:
                attention.attn_drop.register_forward_hook(self._keep_probabilities)
                self._hooked.add(id(attention))

    def _keep_probabilities(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...],
                            _output: torch.Tensor) -> None:
        if self._collecting:
            self._probabilities.append(inputs[0])

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        self._collecting, self._probabilities = self.params.reg_weight > 0, []
        try:
            logits = model(images)
        finally:
            self._collecting = False
        loss = cross_entropy(logits, labels, self.config.train.label_smoothing)
        if self.params.reg_weight > 0:
            kept = self._probabilities
            if not kept:
                raise HundredError("compress/sparse_prune saw no attention probabilities")
            if self.params.reg_layers == "last":
                kept = kept[-1:]
            loss = loss + self.params.reg_weight * sparsity_regulariser(kept)
        self._probabilities = []
        return loss

    # -- pruning -------------------------------------------------------------------------
    def prune(self, model: nn.Module) -> None:
        """Global unstructured L1 pruning of ``model``'s prunable weights at ``prune_rate``,
        made permanent; the masks (True = kept) are remembered for fine-tuning."""
        chosen = prunable_parameters(model, self.params.prune_scope)
        prune.global_unstructured([(module, name) for module, name, _ in chosen],
                                  pruning_method=prune.L1Unstructured,
                                  amount=self.params.prune_rate)
        for module, name, _ in chosen:
            prune.remove(module, name)
        self.masks = {qualified: module.weight.detach() != 0 for module, _, qualified in chosen}

    def on_epoch_end(self, epoch: int) -> None:
        if epoch == self.prune_epoch and not self.masks and self._model is not None:
            self.prune(self._model)

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self.masks:
            _apply_masks(model, self.masks)

    def compressed_model(self, model: nn.Module) -> nn.Module:
        """The trained model with the pruned entries exactly zero (an EMA model, which may
        have drifted off them, is masked on a copy)."""
        if not self.masks:
            return model
        parameters = dict(model.named_parameters())
        if all(bool((parameters[name].detach()[~mask] == 0).all())
               for name, mask in self.masks.items()):
            return model
        masked = copy.deepcopy(model)
        _apply_masks(masked, self.masks)
        return masked

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = dict(state.get("masks", {}))


@torch.no_grad()
def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        weight = parameters[name]
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
