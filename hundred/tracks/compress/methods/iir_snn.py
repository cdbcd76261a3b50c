"""IIR-SNN: Iterative Initialisation and Retraining of spiking networks down to one timestep.

Chowdhury, Rathi & Roy, "One Timestep is All You Need: Training Spiking Neural Networks
with Ultra Low Latency" (arXiv 2110.05929; the same method as their ECCV 2022 paper "Towards
Ultra Low Latency Spiking Neural Networks for Vision and Sequential Tasks Using Temporal
Pruning"). The algorithm:

1. train an ANN; convert it to an SNN with direct (analog) input encoding: copy the weights
   (batch norm folded into the convolutions) and set each layer's firing threshold, layer by
   layer with the earlier layers already spiking, to the ``percentile``-th percentile (90) of
   that layer's input current on training batches, its maximum over the timesteps;
2. train the SNN at T = 5 with surrogate gradients (backpropagation through time; threshold
   and leak are trained too, as in DIET-SNN);
3. initialise an SNN at T - 1 with the trained one and retrain it; repeat down to T = 1.

Here every stage is one run, started from the previous one with ``--init RUN_DIR``
(``compress.init``): the first from the finished ANN twin (``hundred run compress dense
--model spiking_vgg``), whose weights are converted, the next ones from the previous SNN,
whose thresholds and leaks they keep. So each T has its own run directory, summary and
export (accuracy, spike rates, energy at T = 5, 4, ..., 1 are a table of runs), resume and
seeds work as for any run, and ``hundred attack`` reads each stage. The model is
``spiking_vgg`` (:mod:`hundred.models.spiking`: snntorch ``Leaky`` neurons); T is saved with
its weights, so the stages share ``model.options`` as ``--init`` requires.

The summary adds (:func:`hundred.models.spiking.spiking_cost`, on the val split): ``timesteps``,
``spike_rate`` per block and ``spike_rate_mean`` (spikes per neuron per image over all
steps), ``sops`` (synaptic operations per image), the energy estimate ``energy_snn_uj`` /
``energy_ann_uj`` and ``energy_ratio`` = E_SNN / E_ANN (``energy_efficiency`` its inverse,
the paper's "X times more efficient"), with 4.6 pJ per MAC and 0.9 pJ per accumulate (45 nm);
``converted`` (the thresholds were calibrated from a non-spiking model: the ANN twin),
``timesteps_before`` (T of the weights it started from, 0 = the ANN) and the ``thresholds``
and ``leaks``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.registry import register
from hundred.tracks.compress.method import CompressMethod


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timesteps: int = Field(5, ge=1, le=64, description="T of this stage (the paper: 5 from "
                           "the ANN, then 4, 3, 2, 1, each run started with --init from the "
                           "previous stage)")
    percentile: float = Field(90.0, gt=0.0, le=100.0, description="conversion: each layer's "
                              "threshold is this percentile of its input current")
    calibration_batches: int = Field(1, ge=1, description="conversion: training batches the "
                                     "thresholds are computed on (their maximum)")
    spike_batches: int | None = Field(None, ge=1, description="val batches the spike rates "
                                      "and energy are measured on (None: all of val)")


@register("compress", "iir_snn")
class IIRSNN(CompressMethod):
    """Convert (from an ANN twin) or continue (from a previous stage), then train the SNN at
    ``timesteps`` steps with the cross-entropy of its time-averaged output."""

    Params = Params
    search_space: dict = {}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self._loader: Any = None
        self.record: dict[str, Any] = {}

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        from hundred.models import create
        from hundred.models.spiking import SpikingVGG

        backbone = create(config.model.name, dataset.num_classes, img_size=image_size,
                          **config.model.options).backbone
        if not isinstance(backbone, SpikingVGG):
            raise HundredError(f"compress/iir_snn trains a spiking network: model.name="
                               f"spiking_vgg, not {config.model.name}")
        if config.train.ema_decay is not None:
            raise HundredError("compress/iir_snn converts the model when training starts, "
                               "after an EMA copy would be taken: leave train.ema_decay unset")
        if backbone.events:
            frames = dataset.info.get("frames")
            if frames != backbone.events:
                raise HundredError(f"model.options.events={backbone.events}, but the data "
                                   f"{dataset.name} has {frames} event frames")
            if self.params.timesteps != backbone.events:
                raise HundredError(f"on event data T is the number of frames: set "
                                   f"method_params.timesteps={backbone.events}")
            data = config.data
            if tuple(data.mean) != (0, 0, 0) or tuple(data.std) != (1, 1, 1) or \
                    data.augment != "none":
                raise HundredError("event frames reach the model bit-packed: train with "
                                   "data.mean=[0,0,0], data.std=[1,1,1] and data.augment=none")

    def train_loader(self, ctx: Any, dataset: Dataset) -> Any:
        self._loader = super().train_loader(ctx, dataset)
        return self._loader

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        from hundred.models.spiking import spiking_backbone

        backbone = spiking_backbone(model)
        previous = int(backbone.timesteps)
        converted = previous == 0
        backbone.to_spiking(self.params.timesteps)
        if converted:
            self._calibrate(model, ctx.device)
        # a resumed run overwrites this with its checkpoint's record (load_state_dict)
        self.record = {"converted": converted, "timesteps_before": previous}

    def state_dict(self) -> dict[str, Any]:
        return {"record": dict(self.record)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.record = dict(state.get("record") or {})

    @torch.no_grad()
    def _calibrate(self, model: nn.Module, device: torch.device) -> None:
        """Thresholds layer by layer (IIR-SNN's conversion): each is the ``percentile``-th
        percentile of its input current with the earlier layers spiking at their new
        thresholds, the maximum over steps and calibration batches."""
        from hundred.models.spiking import spiking_backbone

        backbone = spiking_backbone(model)
        if self._loader is None:
            raise HundredError("iir_snn converts on training batches: none were given")
        self._loader.set_epoch(0)
        batches = []
        for index, (images, _) in enumerate(self._loader):
            if index >= self.params.calibration_batches:
                break
            batches.append(images.to(device))
        was_training = model.training
        model.eval()
        try:
            for neuron in backbone.neurons:
                peak = torch.tensor(0.0)
                currents: list[torch.Tensor] = []
                hook = neuron.register_forward_pre_hook(
                    lambda module, inputs: currents.append(inputs[0].detach().flatten()))
                try:
                    for images in batches:
                        currents.clear()
                        model(images)
                        for current in currents:  # one per step
                            peak = torch.maximum(peak, _percentile(current, self.params.percentile
                                                                   ).cpu())
                finally:
                    hook.remove()
                neuron.threshold.fill_(float(peak) if float(peak) > 0 else 1.0)
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)

    def extra_measurements(self, model: nn.Module, loader: Any) -> dict[str, Any]:
        from hundred.models.spiking import spiking_backbone, spiking_cost

        backbone = spiking_backbone(model)
        size = self.config.data.image_size or _input_size(loader)
        cost = spiking_cost(model, loader, size, max_batches=self.params.spike_batches)
        return {**cost, **self.record,
                "thresholds": [float(n.threshold.detach()) for n in backbone.neurons],
                "leaks": [float(n.lif.beta.detach().clamp(0, 1)) for n in backbone.neurons]}


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile of a flat tensor (``kthvalue``: no size limit, unlike
    ``torch.quantile``)."""
    k = 1 + round(0.01 * q * (values.numel() - 1))
    return values.float().kthvalue(k).values


def _input_size(loader: Any) -> int:
    images, _ = next(iter(loader))
    return int(images.shape[-1])
