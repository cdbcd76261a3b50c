"""The generate scenario: train a class-conditional generator, sample it, measure the samples.

1. Everything is checked before the run directory exists: the data, the denoiser's options,
   the files named in the config (``generate.init``, ``latent``, ``evaluator``,
   ``inception_weights``). The evaluator — the classifier whose features and predictions
   measure the samples — is a finished classify run; without ``generate.evaluator`` one is
   trained once per dataset with fixed settings and cached under
   ``<root>/generate/evaluators`` (:func:`evaluator_run`), so every run on the same data is
   measured with the same network.
2. The denoiser (``generate.denoiser``) is trained with the shared trainer on the method's
   objective (:meth:`GenerateMethod.loss`: EMA of weights with ``train.ema_decay``, bf16 on
   CUDA, exact resume, DDP), then the method trains what it adds
   (:meth:`GenerateMethod.after_training`). With ``generate.init=RUN_DIR`` the finished
   run's networks are loaded instead and nothing trains: sampler settings are tuned this way.
   Methods with objective ``own`` (PPGN) train their own networks (``train_own``).
3. ``generate.samples_per_class`` samples of every class are drawn with the method's sampler
   from a generator seeded by the run's seed, decoded from the VAE's latents in latent
   diffusion, and timed (images/s, network evaluations per sample).
4. They are measured against the val split (:mod:`hundred.tracks.generate.metrics`): the
   Fréchet distance of the evaluator's penultimate features (``fd``, the primary metric,
   lower is better; never called FID), precision and recall (Kynkäänniemi et al.), the
   evaluator's top-1 on the samples (``sample_top1``: do they show their class?), and FID /
   Inception Score when ``generate.inception_weights`` is given. ``samples.png`` shows a
   row of samples per class.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hundred.config import RunConfig, build_config
from hundred.errors import HundredError
from hundred.tracks.generate.method import GenerateMethod, SampleContext, TrainContext
from hundred.tracks.generate.pixels import from_uint8, to_uint8

SAMPLING_STATE = "sampling.safetensors"  # the method's sampling state (refiner, own networks)
DENOISER = "denoiser.safetensors"  # the weights samples were drawn with (EMA when kept)
EVALUATOR_MODEL = "resnet20"


def _path(value: str | None, what: str, kind: str = "file") -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if (kind == "file" and not path.is_file()) or (kind == "dir" and not path.is_dir()):
        raise HundredError(f"{what} {path} does not exist (give a local {kind}; nothing is "
                           "ever downloaded)")
    return path


def evaluator_config(config: RunConfig) -> RunConfig:
    """The classify run that measures samples of ``config.data`` when no evaluator is given:
    ERM of a ResNet-20 (SGD 0.1, ``generate.evaluator_epochs``, seed 0), the same data
    settings (batch size included: runs to be compared share them, or name one evaluator
    with ``generate.evaluator``)."""
    data = config.data.model_dump(mode="json")
    return build_config(base={
        "track": "classify", "method": "erm", "seed": 0, "data": data,
        "model": {"name": EVALUATOR_MODEL}, "train": {"epochs": config.generate.evaluator_epochs,
                                                      "device": config.train.device},
        "root": str(config.root), "quiet": True})


def evaluator_run(config: RunConfig, console: Any) -> Path:
    """The evaluator's run directory: ``generate.evaluator``, or the cached classify run of
    :func:`evaluator_config` under ``<root>/generate/evaluators`` (trained now if missing)."""
    if config.generate.evaluator is not None:
        return Path(config.generate.evaluator)
    from hundred.protocol.phase import phase_run
    from hundred.registry import get_track

    return phase_run(get_track("classify"), evaluator_config(config), {}, "evaluator",
                     "evaluators", Path(config.root) / "generate", console,
                     "to measure the samples (cached: every run on this data reuses it)")


def load_init(run_dir: Path, config: RunConfig, method: GenerateMethod
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The denoiser weights and the method's sampling state of the finished generate run
    ``run_dir``, checked against this run (same data, denoiser, objective and latent space)."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file() or not (run_dir / "config.yaml").is_file():
        raise HundredError(f"generate.init {run_dir} is not a finished run (it needs "
                           "config.yaml and summary.json)")
    found = build_config([run_dir / "config.yaml"])
    if found.track != "generate":
        raise HundredError(f"generate.init {run_dir} is a {found.track} run, not a generate run")
    theirs, ours = found.generate, config.generate
    from hundred.registry import get_method

    objective = get_method("generate", found.method).objective
    mismatches = [f"{key} {getattr(theirs, key)!r} vs {getattr(ours, key)!r}"
                  for key in ("denoiser", "denoiser_options", "latent", "timesteps", "schedule")
                  if getattr(theirs, key) != getattr(ours, key)]
    if objective != method.objective:
        mismatches.append(f"objective {objective} ({found.method}) vs {method.objective} "
                          f"({method.name})")
    elif method.objective == "own" and found.method != method.name:
        mismatches.append(f"method {found.method} vs {method.name}")
    if found.data.source != config.data.source or found.data.options != config.data.options:
        mismatches.append(f"data {found.data.label} vs {config.data.label}")
    if mismatches:
        raise HundredError(f"generate.init {run_dir} does not fit this run: "
                           + "; ".join(mismatches))
    weights: dict[str, torch.Tensor] = {}
    if method.objective != "own":
        if not (run_dir / DENOISER).is_file():
            raise HundredError(f"generate.init {run_dir} has no {DENOISER}")
        weights = load_file(run_dir / DENOISER)
    state = load_file(run_dir / SAMPLING_STATE) if (run_dir / SAMPLING_STATE).is_file() else {}
    return weights, state


def real_images(dataset: Any, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """A split's images as float [-1, 1] NCHW and its labels."""
    arrays = dataset.arrays(split)
    images = torch.from_numpy(np.ascontiguousarray(arrays.images)).permute(0, 3, 1, 2)
    return from_uint8(images), np.asarray(arrays.labels)


def grid_images(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC, what :func:`hundred.report.grid.save_grid` draws."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def draw_samples(method: GenerateMethod, model: Any, ctx: SampleContext, labels: torch.Tensor,
                 batch: int, decode: Any) -> tuple[torch.Tensor, float, float]:
    """All samples of ``labels`` in batches: [-1, 1] pixels, images/s (sampling and decoding,
    synchronised on CUDA) and network evaluations per sample."""
    outputs, nfe = [], []
    start = time.perf_counter()
    for first in range(0, len(labels), batch):
        ctx.nfe = 0
        x = method.sample(model, labels[first:first + batch], ctx)
        outputs.append(decode(x).float().clamp(-1, 1).cpu())
        nfe.append(ctx.nfe)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - start
    return torch.cat(outputs), len(labels) / max(seconds, 1e-9), float(np.mean(nfe))


def run(config: RunConfig, method: GenerateMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Train (or load) the generator of ``method``, sample it and measure the samples."""
    from rich.console import Console

    from hundred.engine.run import finish_run, image_size, load_data, running, train_loader
    from hundred.engine.trainer import Trainer, resolve_device
    from hundred.report.grid import save_grid
    from hundred.tracks.classify.teacher import load_teacher, teacher_label
    from hundred.tracks.generate import metrics
    from hundred.tracks.generate.denoisers import build_denoiser

    settings = config.generate
    console = Console(stderr=True, quiet=config.quiet)
    init_dir = _path(settings.init, "generate.init", "dir")
    latent_dir = _path(settings.latent, "generate.latent", "dir")
    inception_path = _path(settings.inception_weights, "generate.inception_weights")
    _path(settings.evaluator, "generate.evaluator", "dir")
    # the run is named and reported by its denoiser (model.name has no other use here)
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"name": settings.denoiser})})
    method.config = config
    dataset = load_data(config)
    size = image_size(config, dataset)
    method.prepare(dataset.num_classes, dataset.name, size)
    device = resolve_device(config.train.device)
    codec = None
    if latent_dir is not None:
        from hundred.tracks.generate.vae import Codec

        codec = Codec.load(latent_dir, device)
    method.codec = codec
    shape = (3, size, size) if codec is None else codec.latent_shape(size)
    shape = method.denoiser_shape(shape)  # SFD adds its semantic channels
    denoiser = None
    if method.objective != "own":
        torch.manual_seed(config.seed)
        denoiser = build_denoiser(settings.denoiser, shape[0], shape[1], dataset.num_classes,
                                  settings.denoiser_options)
    init_weights: dict[str, torch.Tensor] = {}
    init_state: dict[str, torch.Tensor] = {}
    if init_dir is not None:
        init_weights, init_state = load_init(init_dir, config, method)
        if denoiser is not None:
            try:
                denoiser.load_state_dict(init_weights)
            except RuntimeError as error:
                raise HundredError(f"generate.init {init_dir}: its denoiser does not fit "
                                   f"({str(error).splitlines()[0]})") from None
    evaluator_dir = evaluator_run(config, console)
    evaluator = load_teacher(str(evaluator_dir), dataset.num_classes, dataset.name, size)
    evaluator_config_ = build_config([evaluator_dir / "config.yaml"])
    inception = (metrics.InceptionFeatures(inception_path) if inception_path is not None
                 else None)

    with running(config, resume_dir) as ctx:
        train_ctx = TrainContext(config, ctx.device, lambda: train_loader(ctx, dataset),
                                 ctx.run_dir, ctx.console,
                                 method.to_model_space, shape, dataset.num_classes)
        if codec is not None:
            codec.to(ctx.device)
        summary: dict[str, Any] = {"data": dataset.name, "model": settings.denoiser,
                                   "classes": dataset.num_classes, "image_size": size,
                                   "objective": method.objective,
                                   "latent": settings.latent, "init": settings.init}
        train_seconds = 0.0
        model: Any = None
        if init_dir is not None:
            method.load_for_sampling({k: v.to(ctx.device) for k, v in init_state.items()})
            model = denoiser.to(ctx.device) if denoiser is not None else None
            if model is not None:  # e.g. FlowTurbo's refiner on another run's flow model
                start = time.perf_counter()
                summary.update(method.after_training(model.eval(), train_ctx))
                train_seconds = time.perf_counter() - start
        elif method.objective == "own":
            start = time.perf_counter()
            model = method.train_own(train_ctx)
            train_seconds = time.perf_counter() - start
            summary.update(method.after_training(model, train_ctx))
        else:
            trainer = Trainer(config, denoiser, method, train_ctx.loader, None, ctx.device,
                              ctx.run_dir, ctx.dist, ctx.console)
            if ctx.resumed and trainer.resume():
                ctx.console.print(f"resumed {ctx.run_dir} after epoch {trainer.start_epoch}")
            result = trainer.fit()
            train_seconds = result.train_seconds
            summary.update(train_loss=(result.history[-1].get("train_loss")
                                       if result.history else None),
                           train_images_per_second=result.images_per_second)
            model = trainer.ema.module if trainer.ema is not None else denoiser
            summary.update(method.after_training(model, train_ctx))
        summary["train_seconds"] = round(train_seconds, 2)
        if model is not None:
            model.eval()
            summary["params"] = sum(p.numel() for p in model.parameters())
        if ctx.dist.is_main:
            if model is not None and init_dir is None:
                save_file({k: v.detach().contiguous().cpu()
                           for k, v in model.state_dict().items()}, ctx.run_dir / DENOISER)
            state = method.state_for_sampling()
            if state:
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                          ctx.run_dir / SAMPLING_STATE)
        # 3. sample every class from a generator seeded by the run's seed
        generator = torch.Generator(device=ctx.device).manual_seed(config.seed)
        sample_ctx = SampleContext(settings, shape, dataset.num_classes, ctx.device, generator)
        labels = torch.arange(dataset.num_classes, device=ctx.device).repeat_interleave(
            settings.samples_per_class)
        decode = codec.decode if codec is not None else (lambda x: x)
        fake, images_per_second, nfe = draw_samples(method, model, sample_ctx, labels,
                                                    settings.sample_batch, decode)
        fake_labels = labels.cpu().numpy()
        # 4. measure against the val split
        real, real_labels = real_images(dataset, "val")
        feature_net = metrics.FeatureNet(evaluator, evaluator_config_.data.mean,
                                         evaluator_config_.data.std,
                                         name=evaluator_config_.model.name).to(ctx.device)
        quality = metrics.quality_report(real, real_labels, fake, fake_labels, feature_net,
                                         inception=inception)
        summary.update(quality)
        summary.update({"evaluator": f"{teacher_label(str(evaluator_dir))}",
                        "evaluator_dir": str(evaluator_dir),
                        "sampler": method.name, "steps": settings.steps,
                        "guidance": method.guidance(), "eta": settings.eta,
                        "nfe": nfe, "images_per_second": round(images_per_second, 2),
                        "samples": len(fake_labels)})
        if ctx.dist.is_main:
            save_grid(grid_images(fake), fake_labels, ctx.run_dir / "samples.png",
                      max_per_class=settings.grid_per_class, max_classes=dataset.num_classes)
        return finish_run(ctx, summary, title=f"generate {method.name}", dataset=dataset)

