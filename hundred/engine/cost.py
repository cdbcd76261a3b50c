"""What a model costs: parameters, FLOPs and MACs, sparsity, layer widths, latency and the
memory one training step keeps for its backward pass.

These measurements know nothing of tracks or methods, so they live in the engine: the
``compress`` track reports all of them for every run, and any other track (or a later
``hundred cost RUN_DIR``) can call them on any ``nn.Module``. The conventions are those of
the compression literature and are stated with every number:

* **FLOPs and MACs** — counted by fvcore's ``FlopCountAnalysis`` (a JIT trace of one
  forward pass at batch 1, in eval mode, at the run's input size). fvcore counts **one
  fused multiply-add as one flop** for convolutions, linear layers and matrix products, so
  its total is a count of MACs; we report ``macs`` = fvcore's total and ``flops`` = 2 x
  ``macs`` (the multiply and the add counted apart). Many papers quote MAC counts (fvcore,
  thop, ptflops) under the name FLOPs: check which one a paper means before comparing its
  table with ``flops`` or ``macs``. Normalisation and pooling are counted as fvcore counts
  them (about one per element); element-wise activations, additions and biases are not
  counted; the operators fvcore skipped are listed. These are *dense* counts: zeroed weights
  (unstructured sparsity) do not lower them, only physically removed channels do.
* **Sparsity** — the share of exactly-zero entries over the *prunable* weights: the
  ``weight`` of every ``nn.Conv*`` and ``nn.Linear`` (biases and normalisation parameters
  are not pruned by the methods of the literature and are left out).
* **Structure** — the output width of every conv/linear layer, by module name, so a
  structurally pruned network's shape is visible in its summary.
* **Latency** — median wall-clock milliseconds of one forward pass (eval mode, inference
  mode, random inputs) over ``repeats`` timed calls after ``warmup`` untimed ones, at each
  batch size; the device, the thread count (``torch.get_num_threads()``) and the settings are
  recorded. On CUDA every call is synchronised before the clock is read.
* **Saved-activation bytes** — one training step's forward pass under
  ``torch.autograd.graph.saved_tensors_hooks``: the bytes of the tensors autograd packs for
  the backward pass (what Mesa and SlimFit shrink), each underlying storage counted once, at
  its full size (the memory that stays alive). Saved tensors that are views of the model's
  own parameters (a linear layer keeps its weight to compute the input's gradient) are
  counted apart as ``parameter_bytes``: they exist whether or not a step runs, and
  activation-compression methods leave them alone. The input batch, when a layer keeps it,
  is an activation. On CUDA, the peak allocated device memory of training is recorded too
  (:class:`PeakMemory`).
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

FLOP_CONVENTION = ("fvcore: one fused multiply-add = 1 (conv, linear, matmul); macs = fvcore "
                   "total, flops = 2 x macs; norms and pooling as fvcore counts them, "
                   "activations, additions and biases not counted; dense (zeros counted); "
                   "batch 1 at the stated input size")
SPARSITY_CONVENTION = "exact zeros / entries of every Conv and Linear weight"
SAVED_CONVENTION = ("bytes of the storages autograd saves for backward in one training "
                    "forward (each storage once, full size); views of parameters apart")
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameter entries of ``model`` (each shared tensor once); with
    ``trainable_only``, only those that require a gradient."""
    seen: dict[int, int] = {}
    for parameter in model.parameters():
        if not trainable_only or parameter.requires_grad:
            seen[id(parameter)] = parameter.numel()
    return sum(seen.values())


@dataclass(frozen=True)
class FlopCount:
    """fvcore's count of one forward pass (see the module docstring for the convention):
    ``macs`` (fvcore's total), ``flops`` (2 x macs), MACs by operator, the operators fvcore
    could not count (name -> occurrences) and the input shape counted at."""

    macs: int
    flops: int
    by_operator: dict[str, int]
    skipped_operators: dict[str, int]
    input_shape: tuple[int, ...]
    convention: str = FLOP_CONVENTION

    def record(self) -> dict[str, Any]:
        """The count as JSON-able values (for a summary)."""
        return {**asdict(self), "input_shape": list(self.input_shape)}


def count_flops(model: nn.Module, image_size: int, device: torch.device | str = "cpu",
                channels: int = 3) -> FlopCount:
    """MACs and FLOPs of one forward pass of ``model`` on a single ``channels`` x
    ``image_size`` x ``image_size`` image (batch 1), counted by fvcore in eval mode; the
    model's train/eval mode is restored afterwards."""
    shape = (1, channels, image_size, image_size)
    inputs = torch.zeros(shape, device=device)
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # fvcore traces with torch.jit, which warns that it is deprecated: not the user's doing
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, (inputs,))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        macs = int(analysis.total())
        by_operator = {name: int(count) for name, count in analysis.by_operator().items()}
        skipped = {name: int(count) for name, count in analysis.unsupported_ops().items()}
    return FlopCount(macs=macs, flops=2 * macs, by_operator=by_operator,
                     skipped_operators=skipped, input_shape=shape)


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights pruning acts on: ``<module>.weight`` of every conv and linear layer."""
    return {f"{name}.weight" if name else "weight": module.weight
            for name, module in model.named_modules() if isinstance(module, PRUNABLE)}


def sparsity(model: nn.Module) -> float:
    """The share (0-1) of exactly-zero entries over the prunable weights of ``model``
    (:func:`prunable_weights`); 0 for a model without any."""
    weights = list(prunable_weights(model).values())
    total = sum(weight.numel() for weight in weights)
    if total == 0:
        return 0.0
    zeros = sum(int((weight.detach() == 0).sum()) for weight in weights)
    return zeros / total


def structure(model: nn.Module) -> dict[str, int]:
    """The output width of every conv (``out_channels``) and linear (``out_features``) layer
    of ``model``, by module name, in module order: the shape a structured pruning left."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            widths[name] = int(module.out_features if isinstance(module, nn.Linear)
                               else module.out_channels)
    return widths


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per forward pass, by batch size, and how they were measured."""

    median_ms: dict[int, float]
    device: str
    threads: int
    warmup: int
    repeats: int
    image_size: int

    def record(self) -> dict[str, Any]:
        """JSON-able (batch sizes as strings: JSON object keys)."""
        return {**asdict(self), "median_ms": {str(k): v for k, v in self.median_ms.items()}}


def measure_latency(model: nn.Module, image_size: int, batch_sizes: Sequence[int] = (1, 64),
                    warmup: int = 10, repeats: int = 30, device: torch.device | str = "cpu",
                    channels: int = 3) -> Latency:
    """Median forward-pass time of ``model`` (eval and inference mode, random inputs on
    ``device``) at each of ``batch_sizes``: ``warmup`` untimed calls, then ``repeats`` timed
    ones; CUDA is synchronised around every timed call. The model's mode is restored."""
    if warmup < 0 or repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("latency needs warmup >= 0, repeats >= 1 and batch sizes >= 1")
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    medians: dict[int, float] = {}
    with _eval_mode(model), torch.inference_mode():
        for batch in batch_sizes:
            images = torch.randn((batch, channels, image_size, image_size),
                                 generator=generator).to(device)
            for _ in range(warmup):
                model(images)
            times = []
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(images)
                _synchronize(device)
                times.append((time.perf_counter() - start) * 1000.0)
            medians[int(batch)] = float(statistics.median(times))
    return Latency(median_ms=medians, device=str(device), threads=torch.get_num_threads(),
                   warmup=warmup, repeats=repeats, image_size=image_size)


@dataclass(frozen=True)
class SavedBytes:
    """What one forward pass saved for backward: activation bytes, bytes that are views of
    the given parameters, and how many distinct storages and saved tensors there were."""

    activation_bytes: int
    parameter_bytes: int
    storages: int
    tensors: int
    convention: str = SAVED_CONVENTION

    def record(self) -> dict[str, Any]:
        return asdict(self)


def saved_tensor_bytes(forward: Callable[[], Any],
                       parameters: Iterable[torch.Tensor] = ()) -> SavedBytes:
    """Run ``forward()`` (e.g. a method's training loss on one batch) with
    ``saved_tensors_hooks`` and count what autograd saves for backward: each storage once, at
    its full size; storages of ``parameters`` (the model's weights, which a layer may keep)
    count as ``parameter_bytes``, everything else as ``activation_bytes``. The graph and the
    result are dropped before returning, so nothing saved outlives the call."""
    parameter_storages = {_storage_key(p) for p in parameters}
    found: dict[tuple[str, int], int] = {}
    tensors = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal tensors
        tensors += 1
        found[_storage_key(tensor)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    del result
    parameter_bytes = sum(n for key, n in found.items() if key in parameter_storages)
    activation_bytes = sum(n for key, n in found.items() if key not in parameter_storages)
    return SavedBytes(activation_bytes=activation_bytes, parameter_bytes=parameter_bytes,
                      storages=len(found), tensors=tensors)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    """The identity of the memory behind ``tensor`` (views share it)."""
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


class PeakMemory:
    """The peak allocated CUDA memory between :meth:`start` and :meth:`stop` (None off
    CUDA): what training itself needs on the device, model and optimiser state included."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_bytes: int | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        return self.peak_bytes


class _eval_mode:
    """Put a module in eval mode for a block and restore every submodule's own mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for module, training in self.modes:
            module.training = training


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
