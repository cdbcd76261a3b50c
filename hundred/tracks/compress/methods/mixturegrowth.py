"""MixtureGrowth: train two small templated networks, grow them into one of twice the width
whose new weights are new combinations of the learned templates, train on.

Pham, Teterwak, Nelson & Plummer, "MixtureGrowth: Growing Neural Networks by Recombining
Learned Parameters" (WACV 2024, arXiv 2311.04251; official code
github.com/chaudatascience/mixturegrowth, read only, nothing copied). Templated layers and
the growth are in :mod:`hundred.tracks.compress.growth`:

* every conv/linear weight ``W = sum_k alpha_k T_k`` (templates ``T``, coefficients
  ``alpha``); the two small networks (half the width of ``model``) each have their own bank of
  ``templates`` templates per layer and their own coefficients (the official
  ``member_template_sets = [0, 1, 0, 1]``, ``num_templates_each_set = [2, 2]``) and their own
  batch norms;
* epochs ``[0, grow_epoch)`` (default ``train.epochs // 2``): the loss is
  ``CE(small_0(x)) + CE(small_1(x))`` on each batch (the two members trained side by side
  on the same batches; the paper trains them one after the other, which costs the same);
* at ``grow_epoch`` the large network (``config.model``, twice the width) is grown in place:
  per layer ``[[W_0, W_2], [W_3, W_1]]`` with the members' combinations on the diagonal and
  new coefficients for the off-diagonal blocks over the learned banks (``new_blocks``:
  ``orthogonal``, the paper, or ``random``, the baseline); batch norms concatenated; the
  templates are the same parameters, never re-initialised;
* epochs ``[grow_epoch, epochs)``: the grown network is trained as a templated network (the
  banks and all four coefficient rows per layer, the large network's own batch norms and
  biases), its plain weights rewritten after every optimiser step, so evaluation, the
  checkpoints and the export are a plain ``config.model`` network (``model.safetensors``).

Before growth the epoch's validation is that of the two small networks side by side with
summed logits (the grown network without its new blocks), written into ``model`` at the end
of each epoch.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import create
from hundred.registry import register
from hundred.tracks.compress import growth
from hundred.tracks.compress.method import CompressMethod

NORMS = (nn.modules.batchnorm._BatchNorm,)


class MixtureGrowthParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grow_epoch: Optional[int] = Field(
        None, ge=1, description="the epoch (0-based) at whose start the two small networks "
        "are grown into config.model; the small phase is epochs [0, grow_epoch), it must be "
        "below train.epochs. None = train.epochs // 2 (the paper's CIFAR schedule: 200 "
        "epochs per small network, then 40 grown)")
    templates: int = Field(2, ge=1, description="K: templates per bank per layer "
                           "(official num_templates_each_set = [2, 2])")
    new_blocks: Literal["orthogonal", "random"] = Field(
        "orthogonal", description="coefficients of the new off-diagonal blocks at growth: "
        "orthogonal to those before them (the paper) or U(0,1) (the random baseline)")
    scale: float = Field(1.0, gt=0, description="norm of the new coefficients (official "
                         "coefs_noise_growing = 1)")


def small_options(options: dict[str, Any]) -> dict[str, Any]:
    """``model.options`` of a small member: ``width`` (and ``stem_width`` when set) halved."""
    if "width" not in options:
        raise HundredError("compress/mixturegrowth grows config.model from two networks of "
                           "half its width: set model.options.width (the grown width, even), "
                           "e.g. model.options.width=32 model.options.projection=true")
    small = dict(options)
    for name in ("width", "stem_width"):
        if name in small and small[name] is not None:
            if int(small[name]) % 2:
                raise HundredError(f"model.options.{name}={small[name]} must be even: the "
                                   "grown network is twice the small ones")
            small[name] = int(small[name]) // 2
    return small


@register("compress", "mixturegrowth")
class MixtureGrowth(CompressMethod):
    """Two small templated networks, grown at ``grow_epoch`` into ``config.model`` by
    recombining their learned templates (see the module docstring)."""

    Params = MixtureGrowthParams

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.grown = False
        self.num_classes: int | None = None
        self.size: int | None = None

    # -- checks before anything is written ----------------------------------------------------
    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        grow = self.grow_epoch
        if not 1 <= grow < config.train.epochs:
            raise HundredError(f"method_params.grow_epoch={grow} is outside the run: it must "
                               f"be in [1, train.epochs={config.train.epochs}) so both phases "
                               "train (None = train.epochs // 2 needs train.epochs >= 2)")
        if config.train.ema_decay is not None:
            raise HundredError("compress/mixturegrowth does not support train.ema_decay (the "
                               "network changes at growth); leave it unset")
        self.num_classes, self.size = dataset.num_classes, image_size
        with torch.device("meta"):
            large, small = self._networks(config)
        try:
            plans = growth.plan_layers(large, small)
        except ValueError as error:
            raise HundredError(f"compress/mixturegrowth: {error}") from None
        weighted = {f"{plan.name}.{what}" for plan in plans for what in ("weight", "bias")}
        norms = {name for name, module in large.named_modules() if isinstance(module, NORMS)}
        for name, _ in large.named_parameters():
            if name not in weighted and name.rsplit(".", 1)[0] not in norms:
                raise HundredError(f"compress/mixturegrowth: parameter {name} is neither a "
                                   "conv/linear layer nor a batch norm; cannot grow it")
        for name, module in large.named_modules():  # option-A shortcuts pad channels apart
            if getattr(module, "extra_channels", 0) and getattr(module, "projection", 1) is None:
                raise HundredError("compress/mixturegrowth needs projection shortcuts: the "
                                   "zero-padded (option A) ones do not keep the two members' "
                                   "channels in blocks; set model.options.projection=true")

    def _networks(self, config: RunConfig) -> tuple[nn.Module, nn.Module]:
        model = config.model
        large = create(model.name, self.num_classes, head=model.head, img_size=self.size,
                       **model.options)
        small = create(model.name, self.num_classes, head=model.head, img_size=self.size,
                       **small_options(model.options))
        return large, small

    # -- training ---------------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "templates" in self.trainable:
            return
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise HundredError("compress/mixturegrowth runs on one process: its functional "
                               "forward bypasses DDP's gradient averaging (not implemented)")
        if self.num_classes is None:  # a method used outside the scenario (tests)
            self.num_classes = model.head.out_features
        config = self.config
        members = []
        for _ in range(2):
            small = create(config.model.name, self.num_classes, head=config.model.head,
                           img_size=self.size, **small_options(config.model.options))
            members.append(small)
        plans = growth.plan_layers(model, members[0])
        for small in members:  # their conv/linear weights come from the templates
            for plan in plans:
                dict(small.named_modules())[plan.name].weight.requires_grad_(False)
        self.add_trainable("templates", growth.TemplateNet(plans, self.params.templates))
        self.add_trainable("member0", members[0])
        self.add_trainable("member1", members[1])
        for plan in plans:  # the large network's weights come from the templates too
            dict(model.named_modules())[plan.name].weight.requires_grad_(False)
        self._model = model

    @property
    def grow_epoch(self) -> int:
        """The growth epoch: ``method_params.grow_epoch``, else ``train.epochs // 2``."""
        given = self.params.grow_epoch
        return given if given is not None else self.config.train.epochs // 2

    @property
    def members(self) -> tuple[nn.Module, nn.Module]:
        return self.trainable["member0"], self.trainable["member1"]

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        net = self.trainable["templates"]
        smoothing = self.config.train.label_smoothing
        if self.grown:
            logits = functional_call(model, net.grown_weights(), (images,), strict=False)
            return cross_entropy(logits, labels, smoothing)
        total = images.new_zeros((), dtype=torch.float32)
        for member, small in enumerate(self.members):
            logits = functional_call(small, net.member_weights(member), (images,), strict=False)
            total = total + cross_entropy(logits, labels, smoothing)
        return total

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.grow_epoch and not self.grown:
            self.grow(self._model)

    def grow(self, model: nn.Module) -> None:
        """Grow in place: new-block coefficients, then the plain ``model`` written from the
        templates, biases and batch norms of the two members."""
        generator = torch.Generator().manual_seed(self.config.seed + 19)
        net = self.trainable["templates"]
        net.init_new_blocks(self.params.new_blocks, self.params.scale, generator)
        growth.grow_plain(model, self.members, net, new_blocks=True)
        self.grown = True

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self.grown:
            growth.write_weights(model, self.trainable["templates"])

    def on_epoch_end(self, epoch: int) -> None:
        if not self.grown:  # validate the two members side by side (summed logits)
            growth.grow_plain(self._model, self.members, self.trainable["templates"],
                              new_blocks=False)

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        return {"grown": self.grown}

    def state_dict(self) -> dict[str, Any]:
        return {"grown": self.grown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grown = bool(state.get("grown", False))
