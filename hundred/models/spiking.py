"""A small spiking VGG (conv -> batch norm -> spiking neuron blocks) that is also its own ANN
twin, with what spiking-network methods and attacks need from a model: the number of
timesteps, spike counts per layer (spike rates, synaptic operations, the energy estimate)
and the membrane potentials (for attack-time surrogate gradients).

* **Neurons** are snntorch ``Leaky`` neurons (leaky integrate-and-fire, soft reset by
  subtraction, learnable leak initialised at 1.0 = integrate-and-fire) behind a learnable
  per-layer threshold θ: a layer feeds ``current / θ`` to a unit-threshold neuron and emits
  ``θ x spike``, so that (as in Chowdhury, Rathi & Roy, "One Timestep is All You Need:
  Training Spiking Neural Networks with Ultra Low Latency", arXiv 2110.05929, and its
  DIET-SNN predecessor) the surrogate gradient acts on ``u / θ - 1`` and a spike carries the
  threshold's weight to the next layer (a per-layer scalar that folds into the next layer's
  synapses: still one accumulate per spike).
* **Surrogates** come from ``snntorch.surrogate``: ``piecewise_linear`` (default; the
  Bellec et al. triangle ``0.3 * max(0, 1 - |u/θ - 1|)`` of the IIR-SNN code, through
  snntorch's ``custom_surrogate``), ``atan`` or ``fast_sigmoid``.
* **ANN twin.** The persistent buffer ``timesteps`` (saved with the weights) is 0 for the ANN:
  conv -> batch norm -> ReLU, trained like any dense model (``hundred run compress dense
  --model spiking_vgg``). A spiking method sets it to T (:meth:`SpikingVGG.to_spiking`), which
  folds each batch norm into its convolution (the SNN has no batch norm, as the converted
  SNNs of the IIR-SNN code) and makes every block conv -> neuron. Because T lives in the
  state dict and not in ``model.options``, the ANN twin, the SNN at T = 5 and the SNN at T = 1
  are one architecture: ``--init RUN_DIR`` chains them and ``hundred attack`` rebuilds the SNN
  a run exported.
* **Inputs.** Images ``(B, 3, H, W)`` are the direct (analog) encoding: the same image
  drives the first convolution at every step. With ``events=F`` the model reads binary event
  frames: ``(B, F, 2, H, W)`` (ON/OFF polarity channels, one frame per step, so T = F), or
  the bit-packed images of the ``synth100-events`` source (:mod:`hundred.data.sources.events`),
  which it unpacks. The ANN twin applies itself to every frame and averages.
* **Read-out.** Features are the time average of the globally pooled last block's output;
  the (linear) head on them equals the time average of per-step logits (the IIR-SNN output
  layer accumulates its membrane potential without firing).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError

SURROGATES = ("piecewise_linear", "atan", "fast_sigmoid")
PIECEWISE_LINEAR_GAMMA = 0.3  # the dampening of Bellec et al.'s triangle in the IIR-SNN code
# 45 nm CMOS energies (Horowitz, ISSCC 2014) used by DIET-SNN and IIR-SNN: a 32-bit float
# multiply-accumulate and accumulate
E_MAC_PJ, E_AC_PJ = 4.6, 0.9
# E_ANN = sum_l MACs_l x E_MAC; E_SNN = MACs_1 x E_MAC (analog first layer: its input is the
# same at every step, so its current is computed once; binary event input: SOPs instead) +
# sum_(l>1) MACs_l x rate_(l-1) x E_AC, rate = spikes per neuron per image over all T steps,
# MACs per image at batch 1 (DIET-SNN / IIR-SNN); the summary records this short form
ENERGY_CONVENTION = ("E_SNN = MACs_1*4.6pJ + sum MACs_l*rate_(l-1)*0.9pJ; E_ANN = MACs*4.6pJ "
                     "(45nm; rate = spikes/neuron over T)")


def _piecewise_linear(input_: torch.Tensor, grad_input: torch.Tensor, spikes: torch.Tensor
                      ) -> torch.Tensor:
    return grad_input * PIECEWISE_LINEAR_GAMMA * (1.0 - input_.abs()).clamp_min(0.0)


def make_surrogate(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The spike function (Heaviside forward, surrogate backward) called ``name``, from
    ``snntorch.surrogate``."""
    from snntorch import surrogate

    if name == "piecewise_linear":
        return surrogate.custom_surrogate(_piecewise_linear)
    if name == "atan":
        return surrogate.atan()
    if name == "fast_sigmoid":
        return surrogate.fast_sigmoid()
    raise HundredError(f"unknown surrogate {name!r}; choose from {', '.join(SURROGATES)}")


def _leaky_class() -> type[nn.Module]:
    import snntorch

    class Leaky(snntorch.Leaky):
        """snntorch's ``Leaky`` whose (detached, delayed) reset signal is the Heaviside of the
        previous potential computed directly — the value snntorch gets from its spike function
        — so that the spike function runs exactly once per step (on the potential that fires),
        which an attack-time surrogate that reads the potentials relies on."""

        def mem_reset(self, mem: torch.Tensor) -> torch.Tensor:
            return (mem - self.threshold > 0).to(mem.dtype).detach()

    return Leaky


class SpikingNeuron(nn.Module):
    """One layer of leaky integrate-and-fire neurons with a learnable threshold θ (see the
    module docstring): ``forward(current)`` is one timestep. Counts its spikes while the
    model records (:meth:`SpikingVGG.recording`)."""

    def __init__(self, surrogate: str = "piecewise_linear", leak: float = 1.0) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(1.0))
        # snntorch reads its scalar buffers back while building (Tensor.item()), which the
        # meta device (shape checks build models there) cannot do: its few scalars live on
        # the CPU until the model moves
        with torch.device("cpu"):
            self.lif = _leaky_class()(beta=leak, threshold=1.0,
                                      spike_grad=make_surrogate(surrogate), learn_beta=True,
                                      reset_mechanism="subtract")
        self.mem: torch.Tensor | None = None
        self.recording = False
        self.spikes = 0.0       # spikes counted while recording, summed over images and steps
        self.neurons = 0        # neurons of this layer per image (set while recording)

    def reset(self) -> None:
        """Zero the membrane potential (the start of an input) and an attack-time surrogate's
        memory of the potentials."""
        self.mem = None
        reset = getattr(self.lif.spike_grad, "reset", None)
        if reset is not None:
            reset()

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        theta = self.threshold.clamp_min(1e-3)
        mem = torch.zeros_like(current) if self.mem is None else self.mem
        spikes, self.mem = self.lif(current / theta, mem)
        if self.recording:
            self.spikes += float(spikes.detach().sum())
            self.neurons = spikes[0].numel()
        return spikes * theta


class SpikingVGG(nn.Module):
    """A VGG-style spiking network: ``layers`` lists block widths (conv3x3 -> batch norm ->
    neuron) and ``"A"`` (2x2 average pooling); features are the globally pooled last block.
    ``events=F`` reads F binary ON/OFF frames (see the module docstring); ``surrogate`` and
    ``leak`` set the training surrogate and the leak's initial value."""

    def __init__(self, layers: Sequence[int | str] = (64, "A", 128, 128, "A", 256, 256, "A"),
                 img_size: int = 32, events: int = 0, surrogate: str = "piecewise_linear",
                 leak: float = 1.0) -> None:
        super().__init__()
        if surrogate not in SURROGATES:
            raise HundredError(f"unknown surrogate {surrogate!r}; choose from "
                               f"{', '.join(SURROGATES)}")
        if not 0 <= events <= 8:
            raise HundredError(f"events={events}: 0 (images) or 1..8 frames (one bit each)")
        if not 0.0 < leak <= 1.0:
            raise HundredError(f"leak={leak} must lie in (0, 1]")
        self.events = int(events)
        channels = 2 if events else 3
        self.convs, self.norms, self.neurons = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.plan: list[str] = []
        for entry in layers:
            if entry == "A":
                self.plan.append("A")
                continue
            if not isinstance(entry, int) or isinstance(entry, bool) or entry < 1:
                raise HundredError(f"layers holds {entry!r}: widths (integers >= 1) and 'A'")
            self.convs.append(nn.Conv2d(channels, entry, 3, padding=1, bias=True))
            self.norms.append(nn.BatchNorm2d(entry))
            self.neurons.append(SpikingNeuron(surrogate, leak))
            self.plan.append("C")
            channels = entry
        if not self.convs:
            raise HundredError("layers needs at least one convolution")
        self.feature_dim = channels
        self.register_buffer("timesteps", torch.tensor(0, dtype=torch.long))
        self.input_spikes = 0.0  # binary input events counted while recording
        self.input_entries = 0
        self._recording = False
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    # -- mode ---------------------------------------------------------------------------
    @property
    def spiking(self) -> bool:
        return int(self.timesteps) > 0

    @property
    def steps(self) -> int:
        """Forward steps per input: the event frames, else T (1 for the ANN twin)."""
        return self.events or max(1, int(self.timesteps))

    @torch.no_grad()
    def to_spiking(self, timesteps: int) -> None:
        """Run as an SNN with ``timesteps`` steps; from the ANN twin this first folds every
        batch norm (its running statistics) into the preceding convolution and leaves the
        norms as identities, which the SNN skips."""
        if timesteps < 1:
            raise HundredError(f"timesteps={timesteps} must be >= 1")
        if not self.spiking:
            for conv, norm in zip(self.convs, self.norms):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
                norm.reset_parameters()  # identity: weight 1, bias 0, mean 0, variance 1
        self.timesteps.fill_(int(timesteps))

    # -- forward ------------------------------------------------------------------------
    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """The binary event frames ``(B, F, 2, H, W)`` of an input (packed images are
        unpacked)."""
        if x.dim() == 5:
            return x
        from hundred.data.sources.events import unpack_events

        return unpack_events(x, self.events)

    def _block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        current = self.convs[index](x)
        if not self.spiking:
            return F.relu(self.norms[index](current))
        return self.neurons[index](current)

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        block = 0
        for kind in self.plan:
            if kind == "A":
                x = F.avg_pool2d(x, 2)
            else:
                x = self._block(block, x)
                block += 1
        return x.mean(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for neuron in self.neurons:
            neuron.reset()
        frames = self.frames(x) if self.events else None
        if frames is not None and frames.shape[1] != self.events:
            raise HundredError(f"the model reads {self.events} event frames, the input has "
                               f"{frames.shape[1]}")
        if frames is not None and self._recording:
            self.input_spikes += float(frames.detach().sum())
            self.input_entries = frames[0].numel()
        total = None
        for step in range(self.steps):
            out = self._step(frames[:, step] if frames is not None else x)
            total = out if total is None else total + out
        return total / self.steps

    # -- measurements -------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Count spikes (and binary input events) of every forward pass inside the block,
        from zero."""
        self.input_spikes, self.input_entries, self._recording = 0.0, 0, True
        for neuron in self.neurons:
            neuron.spikes, neuron.neurons, neuron.recording = 0.0, 0, True
        try:
            yield
        finally:
            self._recording = False
            for neuron in self.neurons:
                neuron.recording = False

    def layer_macs(self, image_size: int) -> list[int]:
        """Multiply-accumulates of each convolution for one image at one step (batch 1)."""
        macs: list[int] = []

        def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            kernel = module.kernel_size[0] * module.kernel_size[1]
            macs.append(int(output[0].numel() * module.in_channels // module.groups * kernel))

        hooks = [conv.register_forward_hook(count) for conv in self.convs]
        saved = int(self.timesteps)
        try:
            with torch.no_grad():
                self.timesteps.fill_(0)  # one ANN step: the shapes are the same
                channels = 2 if self.events else 3
                device = self.convs[0].weight.device
                self._step(torch.zeros(1, channels, image_size, image_size, device=device))
        finally:
            self.timesteps.fill_(saved)
            for hook in hooks:
                hook.remove()
        return macs


def spiking_backbone(model: nn.Module) -> SpikingVGG:
    """The :class:`SpikingVGG` inside ``model`` (a Classifier, maybe wrapped); HundredError
    when there is none."""
    for module in model.modules():
        if isinstance(module, SpikingVGG):
            return module
    raise HundredError("the model is not a spiking network (model spiking_vgg)")


@torch.no_grad()
def spiking_cost(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 image_size: int, max_batches: int | None = None) -> dict[str, Any]:
    """Spike rates, synaptic operations and the energy estimate of the spiking ``model`` (a
    Classifier around a :class:`SpikingVGG`) over ``batches`` (eval mode; the mode is
    restored): see :data:`ENERGY_CONVENTION`. ``spike_rate`` is spikes per neuron per image
    over all steps (the rate that multiplies the next layer's MACs); ``spike_rate_per_step``
    divides it by the steps."""
    backbone = spiking_backbone(model)
    if not backbone.spiking:
        raise HundredError("spiking_cost needs a spiking model (timesteps >= 1), not the ANN "
                           "twin")
    was_training = model.training
    model.eval()
    images = 0
    try:
        with backbone.recording():
            for index, (inputs, _) in enumerate(batches):
                if max_batches is not None and index >= max_batches:
                    break
                model(inputs)
                images += len(inputs)
    finally:
        model.train(was_training)
    if images == 0:
        raise HundredError("no image to measure spike rates on")
    rates = [neuron.spikes / (images * neuron.neurons) for neuron in backbone.neurons]
    macs = backbone.layer_macs(image_size)
    head = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    head_macs = int(head.in_features * head.out_features) if head is not None else 0
    if backbone.events:
        input_rate = backbone.input_spikes / (images * backbone.input_entries)
        first_macs, first_sops = 0, macs[0] * input_rate
    else:
        first_macs, first_sops = macs[0], 0.0
    # layer l > 1 receives layer l-1's spikes; the head receives the last layer's (pooling
    # is linear and folds into the synapses)
    sops = first_sops + sum(m * r for m, r in zip(macs[1:], rates[:-1])) + head_macs * rates[-1]
    ann_macs = sum(macs) + head_macs
    energy_snn = first_macs * E_MAC_PJ + sops * E_AC_PJ
    energy_ann = ann_macs * E_MAC_PJ
    steps = backbone.steps
    names = [f"block{i + 1}" for i in range(len(rates))]
    return {
        "timesteps": steps, "spike_rate": dict(zip(names, rates)),
        "spike_rate_mean": sum(rates) / len(rates),
        "spike_rate_per_step": sum(rates) / len(rates) / steps,
        "sops": sops, "first_layer_macs": first_macs, "ann_macs": ann_macs,
        "energy_snn_uj": energy_snn / 1e6, "energy_ann_uj": energy_ann / 1e6,
        "energy_ratio": energy_snn / energy_ann if energy_ann else None,
        "energy_efficiency": energy_ann / energy_snn if energy_snn else math.inf,
        "spike_images": images, "energy_convention": ENERGY_CONVENTION,
    }


# -- attack-time surrogate gradients ------------------------------------------------------

class PotentialDependentSurrogate:
    """PDSG (Lun et al., "Towards Effective and Sparse Adversarial Attack on Spiking Neural
    Networks via Breaking Invisible Surrogate Gradients", CVPR 2025, arXiv 2503.03272,
    Sec. 4.1): the spike function's backward is the density of N(shift x σ, σ²) at
    ``x = u - threshold``, where σ is the standard deviation of this layer's membrane
    potentials over the batch and the steps so far (per channel for convolutions, as the
    official code computes it), 1 where it is 0; ``shift`` = 0.5 is the paper's right-shift
    calibration. Forward is the Heaviside step (snntorch's ``custom_surrogate``)."""

    def __init__(self, shift: float = 0.5) -> None:
        self.shift = shift
        self.potentials: list[torch.Tensor] = []
        self.last_sigma: torch.Tensor | None = None

    def reset(self) -> None:
        self.potentials = []

    def width(self, shifted: torch.Tensor) -> torch.Tensor:
        """σ after recording ``shifted`` (= u - threshold: the same spread as u)."""
        self.potentials.append(shifted.detach())
        stacked = torch.stack(self.potentials)  # (steps, B, ...)
        dims = (0, 1, 3, 4) if shifted.dim() == 4 else tuple(range(stacked.dim()))
        sigma = stacked.std(dim=dims, keepdim=True)[0] if stacked.numel() > 1 else \
            torch.ones_like(stacked[0])
        sigma = torch.where(sigma == 0, torch.ones_like(sigma), sigma)
        self.last_sigma = sigma
        return sigma

    def __call__(self, shifted: torch.Tensor) -> torch.Tensor:
        from snntorch import surrogate

        sigma = self.width(shifted)
        mean = self.shift * sigma

        def gaussian(input_: torch.Tensor, grad_input: torch.Tensor, spikes: torch.Tensor
                     ) -> torch.Tensor:
            density = torch.exp(-0.5 * ((input_ - mean) / sigma) ** 2) / (
                math.sqrt(2 * math.pi) * sigma)
            return grad_input * density

        return surrogate.custom_surrogate(gaussian)(shifted)


@contextlib.contextmanager
def attack_surrogate(backbone: SpikingVGG, name: str) -> Iterator[None]:
    """Inside the block every neuron of ``backbone`` backpropagates through the surrogate
    ``name``: ``pdsg`` (:class:`PotentialDependentSurrogate`), ``fixed`` (the one it was
    trained with) or a named fixed one (:data:`SURROGATES`)."""
    if name == "fixed":
        yield
        return
    saved = [neuron.lif.spike_grad for neuron in backbone.neurons]
    try:
        for neuron in backbone.neurons:
            neuron.lif.spike_grad = (PotentialDependentSurrogate() if name == "pdsg"
                                     else make_surrogate(name))
        yield
    finally:
        for neuron, spike_grad in zip(backbone.neurons, saved):
            neuron.lif.spike_grad = spike_grad
