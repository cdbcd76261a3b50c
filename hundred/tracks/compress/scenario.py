"""The compress scenario: train one model with the shared trainer (as the classify and robust
scenarios do), let the method produce its compressed model, then measure that model and
export it.

Every run records, in its summary (conventions in :mod:`hundred.engine.cost`):

* accuracy of the compressed model on val (``val_top1`` ...);
* ``params`` (and ``params_k``), ``macs`` and ``flops`` = 2 x macs (``mflops``) at batch 1
  and the run's input size, with fvcore's per-operator counts and skipped operators in
  ``flop_count``; ``dense_flops`` of the trained model before compression and
  ``flops_ratio`` = flops / dense_flops, next to ``flops_target``;
* ``sparsity_pct`` (exact zeros over conv/linear weights, in %) and ``structure`` (the output
  width of every conv/linear layer);
* ``latency_b1_ms`` and ``latency_large_ms`` (median ms per forward pass at batch 1 and at
  ``compress.latency_batch``) with the device, thread count, warm-up and repeats in
  ``latency``;
* ``saved_activation_bytes`` (``saved_activation_mib``): what one training step's forward
  pass (the method's ``loss`` on one training batch, under the trainer's autocast) saves
  for backward, with ``saved_parameter_bytes`` apart; ``peak_train_bytes`` (``_mib``): the
  peak allocated device memory of training on CUDA (None elsewhere);
* ``export``: the exported model: ``model.safetensors`` in the run directory (the compressed
  model's state dict) and the ``model:`` config that builds it. The run's newest checkpoint
  holds the same weights, so ``--init RUN_DIR`` (classify, robust, compress) and ``hundred
  attack RUN_DIR`` load the compressed model like any finished run.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from hundred.config import ModelConfig, RunConfig
from hundred.engine.checkpoint import load_checkpoint, save_checkpoint
from hundred.engine.cost import (PeakMemory, count_flops, count_parameters, measure_latency,
                                 saved_tensor_bytes, sparsity, structure)
from hundred.engine.init import init_model_weights, resumes_from_checkpoint
from hundred.engine.metrics import evaluate
from hundred.engine.run import (RunContext, eval_loader, finish_run, fit, image_size, load_data,
                                running)
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.io import atomic_open
from hundred.models import Classifier, create
from hundred.models.widths import OPTION as PRUNED_WIDTHS
from hundred.tracks.compress.method import CompressMethod

EXPORT_NAME = "model.safetensors"
MIB = 2**20


def run(config: RunConfig, method: CompressMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Train with ``method`` on ``config.data``, compress, measure and export; returns the
    summary written to the run directory. Everything that can be wrong (a method without its
    FLOPs target, the data, the init run) is checked before the run directory is created."""
    section = config.compress
    if method.needs_flops_target and section.flops_target is None:
        raise HundredError(f"{config.track}/{config.method} prunes to a FLOPs target: set "
                           "compress.flops_target in (0, 1), e.g. compress.flops_target=0.5")
    dataset = load_data(config)
    size = image_size(config, dataset)
    method.prepare(config, dataset, size)
    init_weights, whole_model = None, False
    if section.init is not None and not resumes_from_checkpoint(resume_dir):
        init_weights, whole_model = init_model_weights(
            Path(section.init), config, size, dataset.num_classes, dataset.name)
        _check_shapes(init_weights, config.model, dataset.num_classes, size,
                      f"init {section.init}")
    with running(config, resume_dir) as ctx:
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=size, **config.model.options)
        if init_weights is not None:
            model.load_state_dict(init_weights, strict=whole_model)
        loader = method.train_loader(ctx, dataset)
        memory = PeakMemory(ctx.device)
        memory.start()
        trainer, result = fit(ctx, model, method, loader, dataset)
        peak = memory.stop()
        trained = trainer.ema.module if trainer.ema is not None else model
        summary: dict[str, Any] = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "init": section.init,
            "init_weights": (None if section.init is None else "model" if whole_model else
                             "backbone" if init_weights else "checkpoint"),
            "train_images": loader.num_samples, "epochs": config.train.epochs,
            "flops_target": section.flops_target}
        if ctx.dist.is_main:
            saved = _saved_bytes(method, model, loader, trainer)
            dense_flops = count_flops(method.reference_model(trained), size, ctx.device).flops
            compressed = method.compressed_model(trained)
            final = result.final
            if compressed is not trained:
                final = {f"val_{k}": v for k, v in
                         evaluate(compressed, eval_loader(ctx, dataset), trainer.autocast).items()}
            summary.update(final)
            summary.update(measure(ctx, compressed, size, dense_flops))
            summary.update(method.extra_measurements(compressed, eval_loader(ctx, dataset)))
            summary.update(saved_summary(saved, peak))
            summary["export"] = export(ctx, compressed, dataset.num_classes, size)
        summary.update({"train_seconds": round(result.train_seconds, 2),
                        "images_per_s": round(result.images_per_second, 1)})
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)


def measure(ctx: RunContext, model: torch.nn.Module, size: int, dense_flops: int
            ) -> dict[str, Any]:
    """Parameters, FLOPs/MACs, sparsity, structure and latency of ``model`` on the run's
    device, as summary entries."""
    section = ctx.config.compress
    flops = count_flops(model, size, ctx.device)
    params = count_parameters(model)
    latency = measure_latency(model, size, (1, section.latency_batch),
                              warmup=section.latency_warmup, repeats=section.latency_repeats,
                              device=ctx.device)
    return {
        "params": params, "params_k": params / 1e3,
        "macs": flops.macs, "flops": flops.flops, "mflops": flops.flops / 1e6,
        "flop_count": flops.record(), "dense_flops": dense_flops,
        "flops_ratio": flops.flops / dense_flops if dense_flops else None,
        "sparsity_pct": 100.0 * sparsity(model), "structure": structure(model),
        "latency_b1_ms": latency.median_ms[1],
        "latency_large_ms": latency.median_ms[section.latency_batch],
        "latency": latency.record(),
    }


def _saved_bytes(method: CompressMethod, model: torch.nn.Module, loader: Any,
                 trainer: Trainer) -> Any:
    """What one training step of ``method`` saves for backward: its ``loss`` on the first
    training batch, in train mode, under the trainer's autocast. The model's weights and
    buffers (batch-norm statistics), its mode and the RNG are restored afterwards, so the
    measurement leaves the trained model exactly as it was."""
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    modes = [(module, module.training) for module in model.modules()]
    rng = torch.get_rng_state()
    parameters = [*model.parameters(), *method.trainable.parameters(),
                  *method.stateful.parameters()]

    def step() -> torch.Tensor:  # the plain module: only rank 0 measures (no DDP forward)
        # with train.mesa, as the trainer's step (estimates read, not updated): the counter
        # sees Mesa's uint8 payloads and their scales and shifts (hundred.engine.mesa)
        mesa = trainer.mesa.saving(update=False) if trainer.mesa is not None else nullcontext()
        with mesa:
            if trainer.autocast is not None:
                with trainer.autocast:
                    return method.loss(model, images, labels)
            return method.loss(model, images, labels)

    model.train()
    try:
        return saved_tensor_bytes(step, parameters)
    finally:
        model.load_state_dict(state)
        for module, training in modes:
            module.training = training
        torch.set_rng_state(rng)


def saved_summary(saved: Any, peak_bytes: int | None) -> dict[str, Any]:
    """Summary entries of the saved-activation count and the CUDA peak (None off CUDA)."""
    return {"saved_activation_bytes": saved.activation_bytes,
            "saved_activation_mib": saved.activation_bytes / MIB,
            "saved_parameter_bytes": saved.parameter_bytes, "saved_tensors": saved.record(),
            "peak_train_bytes": peak_bytes,
            "peak_train_mib": None if peak_bytes is None else peak_bytes / MIB}


def export(ctx: RunContext, model: Classifier, num_classes: int, size: int) -> dict[str, Any]:
    """Write ``model`` as a plain model: its state dict as ``model.safetensors`` in the run
    directory, and the same weights into the newest checkpoint (what ``--init`` and ``hundred
    attack`` read); returns the summary's ``export`` entry (the file and the ``model:``
    config that builds the model). That config is the run's with the compressed model's
    layer widths as a width plan (``model.options.pruned_widths``: the layers narrower than
    in the dense network; none for a dense export); a shape the plan does not rebuild is a
    HundredError, never a silent bad export."""
    config = ctx.config
    weights = {key: value.detach().contiguous().cpu() for key, value in
               model.state_dict().items()}
    exported = exported_model(config.model, model, num_classes, size)
    _check_shapes(weights, exported, num_classes, size, "the compressed model")
    with atomic_open(ctx.run_dir / EXPORT_NAME, "wb") as handle:
        handle.write(save_safetensors(weights))
    _into_checkpoint(ctx.run_dir / "checkpoints", weights, config.train.keep_checkpoints)
    return {"weights": EXPORT_NAME, "image_size": size, "classes": num_classes,
            "model": exported.model_dump(mode="json")}


def exported_model(model_config: ModelConfig, model: Classifier, num_classes: int, size: int
                   ) -> ModelConfig:
    """``model_config`` with ``options.pruned_widths`` = the layers of ``model`` narrower than
    in the dense network ``model_config`` builds without a width plan."""
    options = {key: value for key, value in model_config.options.items()
               if key != PRUNED_WIDTHS}
    # a model that names the options building it (a supernet's child: model.options.child)
    named = getattr(model, "model_options", None) or {}
    options.update(named)
    options = {key: value for key, value in options.items()  # a None there drops the key
               if not (key in named and value is None)}
    with torch.device("meta"):
        dense = structure(create(model_config.name, num_classes, head=model_config.head,
                                 img_size=size, **options))
    plan = {name: width for name, width in structure(model).items() if dense.get(name) != width}
    if plan:
        options[PRUNED_WIDTHS] = plan
    return model_config.model_copy(update={"options": options})


def _into_checkpoint(directory: Path, weights: dict[str, torch.Tensor], keep: int) -> None:
    """Make the newest checkpoint's model (and EMA) weights ``weights``, rewritten atomically
    only when they differ (the dense baseline's already are)."""
    found = load_checkpoint(directory)
    if found is None:
        raise HundredError(f"{directory} holds no checkpoint to export into")
    epoch, stored, state = found
    ema = any(key.startswith("ema.") for key in stored)
    current = {key[4:]: value for key, value in stored.items() if key.startswith("ema.")} \
        if ema else {key: value for key, value in stored.items() if not key.startswith("method.")}
    if current.keys() == weights.keys() and all(torch.equal(current[k], weights[k])
                                                for k in weights):
        return
    updated = {key: value for key, value in stored.items() if key.startswith("method.")}
    updated.update(weights)
    if ema:
        updated.update({f"ema.{key}": value for key, value in weights.items()})
    save_checkpoint(directory, epoch, updated, state, keep=keep)


def _check_shapes(weights: dict[str, torch.Tensor], model_config: ModelConfig,
                  num_classes: int, size: int, what: str) -> None:
    """``weights`` (``backbone.*``, maybe ``head.*``) must fit the model ``model_config``
    builds, checked on the meta device (nothing allocated)."""
    with torch.device("meta"):
        expected = create(model_config.name, num_classes, head=model_config.head,
                          img_size=size, **model_config.options).state_dict()
    given = {key: tuple(value.shape) for key, value in weights.items()}
    wanted = {key: tuple(value.shape) for key, value in expected.items()}
    heads = any(key.startswith("head.") for key in given)
    if not heads:
        wanted = {key: shape for key, shape in wanted.items() if not key.startswith("head.")}
    if given != wanted:
        differing = sorted(key for key in given.keys() | wanted.keys()
                           if given.get(key) != wanted.get(key))
        shown = ", ".join(f"{key} {given.get(key)} vs {wanted.get(key)}" for key in differing[:4])
        raise HundredError(f"{what} does not fit the model {model_config.name} "
                           f"{model_config.options or ''} builds for {num_classes} classes at "
                           f"{size} px ({shown}{' ...' if len(differing) > 4 else ''}): a "
                           "changed shape must be described in model.options")
