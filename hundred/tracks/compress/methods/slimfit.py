"""SlimFit: memory-efficient fine-tuning of a Vision Transformer by freezing, at every
iteration, the layers whose weights moved least, and by quantising / pruning the activations
that must be saved regardless of freezing.

Ardakani, Haan, Tan, Popovici, Cheung, Iancu, Sen, "SlimFit: Memory-Efficient Fine-Tuning of
Transformer-based Models Using Training Dynamics" (NAACL 2024, arXiv 2305.18513; official
code github.com/arashardakani/SlimFit, read to understand, nothing copied).

* **Update magnitude** of a layer ``l`` (a weight tensor) after a step, from its weights
  before (``W_prev``) and after (``W``) it::

      d_l = || (W_prev - W) / W_prev ||_1 / numel(W)

  (entries with ``W_prev = 0`` contribute nothing: the ratio is undefined there).
* **Inter-layer scheduler**: before every iteration the ``floor(freeze_fraction * n)``
  candidate layers with the lowest ``d`` are frozen (no gradient, no optimiser update:
  momentum and weight decay leave them exactly as they are); the others are trained and get
  a fresh ``d`` after the step. A frozen layer keeps its last measured ``d``. Layers never
  trained yet rank above every measured one (``d = inf``), in a random order drawn once
  from the run seed, so the first ``ceil(n / (n - frozen))`` iterations train every layer
  once (the official code starts from random values of 1e7 for the same effect). Ties keep
  that random order.
* **Candidates** (the official ViT code): every weight with two or more dimensions (the
  patch embedding, the class token, the position embedding, every linear layer of the
  blocks) and the LayerNorm scales of the transformer blocks; never the classifier head.
  Biases, the final LayerNorm and the head always train.
* **Activations** (the ``static`` ones, needed for the input gradients even when a layer
  is frozen, are compressed; a frozen linear layer saves no input at all, as autograd
  only keeps what the gradients it computes need): the inputs of the trained linear layers in
  ``linear_bits`` bits, GELU inputs in ``gelu_bits`` bits, the attention's saves (q, k,
  softmax output, v) in ``attention_bits`` bits; a *frozen* LayerNorm keeps only the
  ``layer_norm_keep`` share of its normalised input largest in magnitude (the rest zero),
  a trained one its exact input. Quantisation and pruning are
  :class:`hundred.engine.mesa.Mesa` with a policy (per-group min/max ranges with running
  estimates and stochastic rounding, as Mesa).

Choices where the paper / code leave one: docs in /work/notes/compress-slimfit.md.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.mesa import Mesa, Treatment, attention_modules
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.compress.method import CompressMethod


def update_magnitude(previous: torch.Tensor, current: torch.Tensor) -> float:
    """``|| (W_prev - W) / W_prev ||_1 / numel``; entries with ``W_prev = 0`` are skipped."""
    previous, current = previous.detach().double(), current.detach().double()
    nonzero = previous != 0
    ratio = (previous[nonzero] - current[nonzero]) / previous[nonzero]
    return float(ratio.abs().sum() / max(1, previous.numel()))


def candidate_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layers the scheduler may freeze, in model order: every parameter with two or more
    dimensions outside the classifier head, and the weight of every LayerNorm inside a
    transformer block (a module with ``attn`` and ``mlp``)."""
    blocks = [name for name, module in model.named_modules()
              if hasattr(module, "attn") and hasattr(module, "mlp")]
    block_norms = {f"{name}.weight" for name, module in model.named_modules()
                   if isinstance(module, nn.LayerNorm)
                   and any(name.startswith(f"{block}.") for block in blocks)}
    head = getattr(model, "head", None)
    head_parameters = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return [(name, parameter) for name, parameter in model.named_parameters()
            if id(parameter) not in head_parameters
            and (parameter.dim() > 1 or name in block_norms)]


class LayerScheduler:
    """SlimFit's inter-layer scheduler over ``count`` layers: which to freeze next."""

    def __init__(self, count: int, freeze_fraction: float, seed: int = 0) -> None:
        self.count = count
        self.frozen_count = int(math.floor(freeze_fraction * count + 1e-9))
        self.magnitudes = torch.full((count,), math.inf, dtype=torch.float64)
        generator = torch.Generator().manual_seed(seed)
        self.tie_order = torch.randperm(count, generator=generator)  # never-trained order
        self.trained = torch.zeros(count, dtype=torch.long)

    def ranking(self) -> torch.Tensor:
        """Layer indices from the lowest update magnitude up (ties: the random order)."""
        by_tie = self.tie_order
        return by_tie[torch.argsort(self.magnitudes[by_tie], stable=True)]

    def choose(self) -> list[int]:
        """The ``frozen_count`` layers to freeze for the next iteration (sorted indices)."""
        return sorted(self.ranking()[:self.frozen_count].tolist())

    def record(self, index: int, magnitude: float) -> None:
        """The update magnitude layer ``index`` showed in the step it was trained in."""
        self.magnitudes[index] = magnitude
        self.trained[index] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"magnitudes": self.magnitudes.clone(), "tie_order": self.tie_order.clone(),
                "trained": self.trained.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.magnitudes = state["magnitudes"].clone().double()
        self.tie_order = state["tie_order"].clone().long()
        self.trained = state["trained"].clone().long()


@register("compress", "slimfit")
class SlimFit(CompressMethod):
    """Fine-tuning (``compress.init``) with the lowest-update ``freeze_fraction`` of the layers
    frozen at each iteration, and quantised / pruned saved activations."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        freeze_fraction: float = Field(0.9, ge=0, lt=1, description="share of the candidate "
                                       "layers frozen at each iteration (floor of share x "
                                       "count), those with the lowest update magnitude")
        linear_bits: Optional[Literal[2, 4, 8]] = Field(
            8, description="bits of the saved inputs of the trained linear layers; null = "
            "exact")
        linear_layers: Literal["all", "mlp_out"] = Field(
            "all", description="which linear layers' inputs are quantised: all, or only the "
            "MLP's second layer (fc2, whose input is the GELU output: the official code)")
        gelu_bits: Optional[Literal[2, 4, 8]] = Field(
            4, description="bits of the saved GELU inputs; null = exact")
        attention_bits: Optional[Literal[2, 4, 8]] = Field(
            8, description="bits of the attention's saved q, k, softmax output and v "
            "(per head); null = exact")
        layer_norm_keep: Optional[float] = Field(
            0.1, gt=0, le=1, description="share of a frozen LayerNorm's normalised input kept "
            "(largest magnitudes; the rest zero in the backward pass); null = exact")

    search_space = {"method_params.freeze_fraction": Choice((0.5, 0.8, 0.9, 0.95))}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.layers: list[tuple[str, nn.Parameter]] = []
        self.scheduler: LayerScheduler | None = None
        self.compressor: Mesa | None = None
        self.frozen_layers: list[int] | None = None  # the set of the next (or current) iteration
        self._previous: dict[int, torch.Tensor] = {}
        self.steps = 0
        self._epoch_steps = 0
        self._epoch_frozen_entries = 0
        self._mlp_out: set[int] = set()

    # -- checks and setup ---------------------------------------------------------------
    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        from hundred.models import create

        if config.train.mesa:
            raise HundredError("compress/slimfit quantises the saved activations itself: "
                               "drop train.mesa=true")
        if config.model.compile:
            raise HundredError("compress/slimfit changes which weights need gradients at "
                               "every step and works through module hooks: it cannot run "
                               "with model.compile=true")
        with torch.device("meta"):
            model = create(config.model.name, dataset.num_classes, head=config.model.head,
                           img_size=image_size, **config.model.options)
        if not attention_modules(model):
            raise HundredError(f"compress/slimfit fine-tunes a Vision Transformer: model "
                               f"{config.model.name} has no timm Attention (use e.g. "
                               "model.name=vit_tiny_p4_32)")
        if not candidate_layers(model):
            raise HundredError("compress/slimfit found no layer to schedule")

    def setup(self, model: nn.Module, ctx: SetupContext | None) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise HundredError("compress/slimfit freezes different weights at every step, "
                               "which DistributedDataParallel cannot follow: train on one "
                               "device")
        if self.scheduler is None:  # once (a resumed run loads its state afterwards)
            self.layers = candidate_layers(model)
            self.scheduler = LayerScheduler(len(self.layers), self.params.freeze_fraction,
                                            self.config.seed)
        self._mlp_out = {id(module) for name, module in model.named_modules()
                         if isinstance(module, nn.Linear) and name.endswith("mlp.fc2")}
        if self.compressor is None and self._compresses():
            self.compressor = Mesa(model, policy=self._treatment)

    def _compresses(self) -> bool:
        p = self.params
        return any(value is not None for value in
                   (p.linear_bits, p.gelu_bits, p.attention_bits, p.layer_norm_keep))

    def _treatment(self, module: nn.Module, kind: str) -> Treatment | None:
        """How ``module``'s saved activations are kept this step (None: exact)."""
        p = self.params
        if kind == "attention":
            return None if p.attention_bits is None else Treatment(bits=p.attention_bits)
        if isinstance(module, nn.Linear):
            if p.linear_bits is None or (p.linear_layers == "mlp_out"
                                         and id(module) not in self._mlp_out):
                return None
            return Treatment(bits=p.linear_bits)
        if isinstance(module, nn.LayerNorm):
            weight = module.weight
            if p.layer_norm_keep is None or (weight is not None and weight.requires_grad):
                return None  # a trained LayerNorm needs its exact input for its own gradient
            return Treatment(keep=p.layer_norm_keep)
        return None if p.gelu_bits is None else Treatment(bits=p.gelu_bits)  # GELU

    # -- one iteration ------------------------------------------------------------------
    def apply_freezing(self) -> list[int]:
        """Freeze the scheduler's choice for this iteration (``requires_grad`` off: the
        weight gets no gradient, so SGD/AdamW leave it, its momentum and its decay alone);
        the others train. Remembers the trained layers' weights for the update magnitude."""
        assert self.scheduler is not None
        if self.frozen_layers is None:
            self.frozen_layers = self.scheduler.choose()
        frozen = set(self.frozen_layers)
        self._previous = {}
        for index, (_, parameter) in enumerate(self.layers):
            parameter.requires_grad_(index not in frozen)
            if index not in frozen:
                self._previous[index] = parameter.detach().clone()
        return self.frozen_layers

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        self.apply_freezing()
        if self.compressor is not None:
            with self.compressor.saving():
                logits = model(images)
        else:
            logits = model(images)
        return cross_entropy(logits, labels, self.config.train.label_smoothing)

    def after_optimizer_step(self, model: nn.Module) -> None:
        assert self.scheduler is not None and self.frozen_layers is not None
        for index, previous in self._previous.items():
            self.scheduler.record(index, update_magnitude(previous, self.layers[index][1]))
        self._previous = {}
        frozen = set(self.frozen_layers)
        self.steps += 1
        self._epoch_steps += 1
        self._epoch_frozen_entries += sum(self.layers[i][1].numel() for i in frozen)
        self.frozen_layers = self.scheduler.choose()  # the next iteration's set

    # -- records ------------------------------------------------------------------------
    def _candidate_entries(self) -> int:
        return sum(parameter.numel() for _, parameter in self.layers)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch_steps, self._epoch_frozen_entries = 0, 0

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        assert self.scheduler is not None
        steps = max(1, self._epoch_steps)
        return {"slimfit_frozen_fraction": self.scheduler.frozen_count / self.scheduler.count,
                "slimfit_frozen_entry_share": self._epoch_frozen_entries
                / (steps * max(1, self._candidate_entries())),
                "slimfit_layers_never_trained": int((self.scheduler.trained == 0).sum())}

    def extra_measurements(self, model: nn.Module, loader: Any) -> dict[str, Any]:
        assert self.scheduler is not None
        scheduler = self.scheduler
        magnitudes = {name: (None if math.isinf(value) else value) for (name, _), value in
                      zip(self.layers, scheduler.magnitudes.tolist())}
        trained = scheduler.trained.tolist()
        return {"slimfit": {
            "layers": scheduler.count, "frozen_per_step": scheduler.frozen_count,
            "frozen_fraction": scheduler.frozen_count / scheduler.count,
            "freeze_fraction": self.params.freeze_fraction,
            "candidate_params": self._candidate_entries(),
            "steps": self.steps,
            "trained_steps": {name: count for (name, _), count in zip(self.layers, trained)},
            "update_magnitude": magnitudes,
            "activations": {"linear_bits": self.params.linear_bits,
                            "linear_layers": self.params.linear_layers,
                            "gelu_bits": self.params.gelu_bits,
                            "attention_bits": self.params.attention_bits,
                            "layer_norm_keep": self.params.layer_norm_keep}}}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"frozen": self.frozen_layers, "steps": self.steps}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.compressor is not None:
            state["estimates"] = self.compressor.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.frozen_layers = state.get("frozen")
        self.steps = int(state.get("steps", 0))
        if self.compressor is not None:
            self.compressor.load_state_dict(state.get("estimates", {}))
