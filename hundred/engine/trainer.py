"""The one training engine every track reuses.

:class:`Trainer` runs epochs of ``method.loss`` -> backward -> optimiser step over a batch
loader, with a per-step learning-rate schedule (warm-up, cosine or step), optional gradient
clipping and EMA of weights, bf16 autocast and channels_last on CUDA, opt-in
``torch.compile``, DDP under torchrun, evaluation every few epochs, and atomic checkpoints
from which ``resume`` continues exactly (bit-identical on CPU).

Randomness is explicit: the model is initialised from the run seed, the loader's order and
augmentation are functions of (seed, epoch), and the global torch RNG (dropout, drop-path)
is saved in every checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from hundred.config import OptimConfig, RunConfig, ScheduleConfig
from hundred.engine.checkpoint import load_checkpoint, save_checkpoint, strip_prefix
from hundred.engine.distributed import DistInfo
from hundred.engine.method import Images, Method, SetupContext
from hundred.engine.metrics import evaluate
from hundred.engine.rundir import append_jsonl, truncate_metrics
from hundred.errors import HundredError


class EpochLoader(Protocol):
    """What the trainer needs of a loader (:class:`hundred.data.loader.BatchLoader` is one)."""

    def __iter__(self) -> Any: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HundredError(f"train.device={name} but CUDA is not available here")
    return device


def build_optimizer(modules: nn.Module | Iterable[nn.Module], config: OptimConfig
                    ) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters of ``modules`` (the model and a method's own
    modules); norm weights and biases (1-d parameters) get no weight decay unless
    ``decay_norm_and_bias`` — the common practice since "Bag of Tricks" (He et al., 2019)."""
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    decay, no_decay = [], []
    for parameter in (p for module in modules for p in module.parameters()):
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim > 1 or config.decay_norm_and_bias else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, config: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_epochs``, then cosine to ``min_lr_ratio``, step decay by
    ``gamma`` at each milestone epoch, constant, or linear to ``min_lr_ratio``, which it
    reaches exactly at the last step. Being a pure function of the step, the schedule needs
    no state of its own to resume.
    """
    total = epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.name == "constant":
        return 1.0
    if config.name == "step":
        epoch = step // steps_per_epoch
        return config.gamma ** sum(epoch >= m for m in config.milestones)
    floor = config.min_lr_ratio
    if config.name == "linear":
        # the warm-up's last step is the peak (factor 1), so the decay starts one step after
        # it; without a warm-up the first step is the peak
        peak = warmup - 1 if warmup else 0
        progress = (step - peak) / max(1, total - 1 - peak)
        return floor + (1 - floor) * (1 - min(1.0, progress))
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` reports."""

    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    images_per_second: float = 0.0


class Trainer:
    """Trains ``model`` with ``method`` on ``train_loader``; evaluates on ``eval_loader``.

    Only rank 0 writes ``run_dir`` (metrics and checkpoints); pass ``run_dir=None`` to train
    without writing anything (e.g. inside a larger scenario that checkpoints by itself).
    """

    def __init__(self, config: RunConfig, model: nn.Module, method: Method,
                 train_loader: EpochLoader, eval_loader: Iterable[Any] | None,
                 device: torch.device, run_dir: Path | None = None,
                 dist_info: DistInfo = DistInfo(), console: Console | None = None) -> None:
        self.config, self.method, self.device = config, method, device
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.run_dir, self.dist = run_dir, dist_info
        self.console = console or Console(stderr=True, quiet=not dist_info.is_main)
        if len(train_loader) == 0:
            raise HundredError("the training loader yields no batch: fewer samples than the "
                               "batch size with drop_last? lower data.batch_size")

        on_cuda = device.type == "cuda"
        model.to(device)
        if on_cuda and config.model.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: checkpoints, EMA, evaluation
        self.ema = None
        if config.train.ema_decay is not None:
            from timm.utils import ModelEmaV3

            # with train.ema_warmup the decay grows as 1 - (1 + step)^(-2/3) up to ema_decay
            # (timm's / diffusers' warm-up): a short run's average is not dominated by the
            # random initialisation (0.995 ** 300 steps still keeps 22 % of it)
            self.ema = ModelEmaV3(model, decay=config.train.ema_decay,
                                  use_warmup=config.train.ema_warmup)
        # the method builds its own modules now, so that they join the optimiser below
        method.setup(model, SetupContext(config, device, len(train_loader), config.train.epochs))
        method.trainable.to(device)
        method.stateful.to(device)
        method.frozen.to(device)
        self.optimizer = build_optimizer([model, method.trainable], config.optim)
        self.mesa = None  # 8-bit saved activations of the training forward (train.mesa)
        if config.train.mesa:
            from hundred.engine.mesa import Mesa

            self.mesa = Mesa(model)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        forward_model: nn.Module = model
        if dist_info.enabled:
            forward_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if on_cuda else None)
        if config.model.compile:
            forward_model = torch.compile(forward_model)
        self.forward_model = forward_model  # what the method calls: DDP sees the forward pass
        amp = config.train.amp
        use_bf16 = amp == "bf16" or (amp == "auto" and on_cuda)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else None
        self.start_epoch = 0

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    def _weights(self) -> dict[str, torch.Tensor]:
        """Model weights, EMA weights (``ema.*``) and the method's trainable and stateful
        modules (``method.*``); frozen modules (teachers) are not the run's to save."""
        weights = dict(self.model.state_dict())
        if self.ema is not None:
            weights.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        weights.update({f"method.{k}": v
                        for k, v in self.method.checkpointed().state_dict().items()})
        return weights

    def _save(self, epoch: int) -> None:
        if self.checkpoint_dir is None or not self.dist.is_main:
            return
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": {"epoch": epoch + 1, "batch": 0},
        }
        if self.mesa is not None:  # Mesa's running quantisation estimates
            state["mesa"] = self.mesa.state_dict()
        save_checkpoint(self.checkpoint_dir, epoch, self._weights(), state,
                        keep=self.config.train.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint of ``run_dir``; False when there is none yet."""
        found = None if self.checkpoint_dir is None else load_checkpoint(
            self.checkpoint_dir, warn=lambda message: self.console.print(f"warning: {message}"))
        if found is None:
            return False
        epoch, weights, state = found
        try:
            self.model.load_state_dict({k: v for k, v in weights.items()
                                        if not k.startswith(("ema.", "method."))})
            if self.ema is not None:
                self.ema.module.load_state_dict(strip_prefix(weights, "ema."))
            self.method.checkpointed().load_state_dict(strip_prefix(weights, "method."))
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state["method"])
            if self.mesa is not None:
                self.mesa.load_state_dict(state.get("mesa", {}))
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise HundredError(f"the checkpoint of epoch {epoch + 1} in {self.checkpoint_dir} "
                               f"does not fit this run: {str(error).splitlines()[0][:300]}"
                               ) from None
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.start_epoch = epoch + 1
        if self.run_dir is not None and self.dist.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl",
                             lambda record: record.get("epoch", 0) <= self.start_epoch)
        return True

    # -- training ----------------------------------------------------------------------------
    def _set_lr(self, step: int, steps_per_epoch: int) -> float:
        factor = lr_factor(step, steps_per_epoch, self.config.train.epochs, self.config.schedule)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def _train_step(self, images: Images, labels: torch.Tensor, step: int = 0) -> torch.Tensor:
        if self.device.type == "cuda" and self.config.model.channels_last:
            images = _channels_last(images)
        with self.mesa.saving() if self.mesa is not None else contextlib.nullcontext():
            if self.autocast is not None:
                with self.autocast:
                    loss = self.method.loss(self.forward_model, images, labels)
            else:
                loss = self.method.loss(self.forward_model, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.dist.enabled:
            self._average_method_gradients()
        if self.config.train.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups
                                      for p in group["params"]], self.config.train.grad_clip)
        self.optimizer.step()
        self.method.after_optimizer_step(self.model)
        if self.ema is not None:  # after the method's own step (e.g. a pruning mask re-applied)
            self.ema.update(self.model, step=step + 1 if self.config.train.ema_warmup else None)
        return loss.detach()

    def _average_method_gradients(self) -> None:
        """DDP averages the model's gradients; the method's own modules are called outside
        the DDP wrapper, so their gradients are averaged over the ranks here. Every rank makes
        the same collective calls even when a module went unused on some of them (a rank
        without a gradient contributes zeros); a parameter no rank used keeps no gradient."""
        parameters = list(self.method.trainable.parameters())
        if not parameters:
            return
        used = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32,
                            device=self.device)
        torch.distributed.all_reduce(used)
        for parameter, count in zip(parameters, used.tolist()):
            if count == 0:
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= self.dist.world_size

    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5/loss of the EMA model if enabled, else of the model, on the eval data."""
        if self.eval_loader is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        return evaluate(model, self.eval_loader, self.autocast)

    def fit(self) -> TrainResult:
        """Train from ``start_epoch`` to ``train.epochs``; returns history and final metrics."""
        config, result = self.config, TrainResult()
        epochs, steps_per_epoch = config.train.epochs, len(self.train_loader)
        first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        seen_images, train_seconds = 0, 0.0
        progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[rate]:.0f} img/s"),
                            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                            console=self.console, transient=True,
                            disable=config.quiet or not self.dist.is_main)
        with progress:
            task = progress.add_task("train", total=steps_per_epoch, epoch=0, rate=0.0, loss="-")
            for epoch in range(self.start_epoch, epochs):
                self.method.on_epoch_start(epoch)
                self.train_loader.set_epoch(epoch)
                self.model.train()
                self.method.trainable.train()
                self.method.stateful.train()
                progress.reset(task, total=steps_per_epoch, epoch=f"{epoch + 1}/{epochs}",
                               rate=0.0, loss="-")
                loss_sum = torch.zeros((), device=self.device)
                epoch_images, start = 0, time.perf_counter()
                for batch, (images, labels) in enumerate(self.train_loader):
                    step = epoch * steps_per_epoch + batch
                    lr = self._set_lr(step, steps_per_epoch)
                    loss = self._train_step(images, labels, step)
                    first_bad_step = torch.where(
                        (first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
                    loss_sum += loss
                    epoch_images += len(labels)
                    if batch % 20 == 0 or batch == steps_per_epoch - 1:
                        self._check_finite(first_bad_step, steps_per_epoch)
                        rate = epoch_images / max(1e-9, time.perf_counter() - start)
                        progress.update(task, completed=batch + 1, rate=rate * self.dist.world_size,
                                        loss=f"{loss.item():.3f}")
                self._check_finite(first_bad_step, steps_per_epoch)
                self.method.on_epoch_end(epoch)
                seconds = time.perf_counter() - start
                seen_images += epoch_images * self.dist.world_size
                train_seconds += seconds
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / steps_per_epoch,
                    "seconds": round(seconds, 3),
                    "images_per_s": round(epoch_images * self.dist.world_size / seconds, 1)}
                if (epoch + 1) % config.train.eval_every == 0 or epoch + 1 == epochs:
                    record.update({f"val_{k}": v for k, v in self.evaluate().items()})
                logged = self.method.epoch_log(epoch)  # every rank: the method may all-reduce
                clash = sorted(set(logged) & set(record))
                if clash:
                    raise HundredError(f"{self.method.track}/{self.method.name}.epoch_log "
                                       f"returns {', '.join(clash)}, which the trainer writes")
                record.update(logged)
                result.history.append(record)
                self._log_epoch(record)
                if self.run_dir is not None and self.dist.is_main:
                    append_jsonl(self.run_dir / "metrics.jsonl", record)
                if (epoch + 1) % config.train.checkpoint_every == 0 or epoch + 1 == epochs:
                    self._save(epoch)
        if result.history:
            result.final = {k: v for k, v in result.history[-1].items() if k.startswith("val_")}
        else:  # resumed after the last epoch's checkpoint: nothing left but the evaluation
            result.final = {f"val_{k}": v for k, v in self.evaluate().items()}
        result.train_seconds = train_seconds
        result.images_per_second = seen_images / train_seconds if train_seconds else 0.0
        return result

    def _check_finite(self, first_bad_step: torch.Tensor, steps_per_epoch: int) -> None:
        bad = int(first_bad_step)
        if bad >= 0:
            raise HundredError(
                f"the loss became NaN or infinite at step {bad} (epoch {bad // steps_per_epoch + 1}"
                f", batch {bad % steps_per_epoch}); try a lower optim.lr, train.grad_clip, or "
                f"train.amp=off. The last checkpoint is untouched.")

    def _log_epoch(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']:>3}/{self.config.train.epochs}",
                 f"loss {record['train_loss']:.4f}", f"lr {record['lr']:.4g}"]
        if "val_top1" in record:
            parts += [f"top1 {record['val_top1']:.2f}", f"top5 {record['val_top5']:.2f}"]
        parts.append(f"{record['images_per_s']:.0f} img/s")
        self.console.print("  ".join(parts), highlight=False)


def _channels_last(images: Images) -> Images:
    if isinstance(images, torch.Tensor):
        return images.contiguous(memory_format=torch.channels_last)
    return [view.contiguous(memory_format=torch.channels_last) for view in images]
