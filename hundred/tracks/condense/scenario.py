"""The condense scenario: learn a small synthetic training set, then measure what it is worth.

1. The synthetic set starts from real images of each class (random, or the method's
   selection) or noise, ``condense.ipc`` per class.
2. For ``condense.iterations`` steps the method fills the gradients of the set's parameters
   (pixels, and a learned lr or soft labels where it has them) and SGD steps them. Every
   ``checkpoint_every`` steps the set, the optimiser, the method's state and the RNG are
   checkpointed (atomic, safetensors + a tensors-only state file) and an image grid is drawn:
   a killed run resumes to the same set.
3. The set is saved as packed data (``<run>/synthetic``: train = the learned images, val = the
   source's val split), so ``hundred run classify erm --data <run>/synthetic`` trains on it;
   learned soft labels and lr go to ``<run>/learned.safetensors``.
4. Fresh networks are trained on the set, ``eval_runs`` times per setting, and tested on the
   held-out split (:mod:`hundred.tracks.condense.evaluation`). The float set is evaluated, as
   the papers do; the packed copy is its uint8 rounding (clamped to [0, 255]).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import save as save_safetensors

from hundred.config import RunConfig
from hundred.data.pack import pack
from hundred.engine.checkpoint import load_checkpoint, save_checkpoint, strip_prefix
from hundred.engine.run import finish_run, image_size, load_data, running
from hundred.engine.trainer import resolve_device
from hundred.errors import HundredError
from hundred.io import atomic_open, write_text
from hundred.tracks.condense.evaluation import Setting, evaluate_settings
from hundred.tracks.condense.method import CondenseContext, CondenseMethod
from hundred.tracks.condense.synthetic import RealImages, SyntheticSet, as_dataset, save_grid

CHECKPOINTS = "checkpoints"


def make_dsa(strategy: str) -> Any:
    from hundred.tracks.condense.dsa import DSA

    return DSA(strategy)


def run(config: RunConfig, method: CondenseMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Condense ``config.data`` with ``method`` and evaluate the set; returns the summary.
    The data and whatever the method needs from outside (expert trajectories) are loaded and
    checked before the run directory is created, so bad input writes nothing."""
    settings = config.condense
    dataset = load_data(config)
    size = image_size(config, dataset)
    device = resolve_device(config.train.device)
    real = RealImages(dataset.arrays("train"), dataset.num_classes, size, device,
                      config.data.mean, config.data.std)
    test = RealImages(dataset.arrays("val"), dataset.num_classes, size, device,
                      config.data.mean, config.data.std, every_class=False)
    dsa = make_dsa(settings.dsa_strategy) if settings.dsa and method.uses_dsa else None
    eval_dsa = make_dsa(settings.dsa_strategy) if "dsa" in settings.eval_augment else None
    if settings.eval_labels == "soft" and not method.optimises:
        raise HundredError(f"condense.eval_labels=soft: {method.name} has no soft labels")
    ctx = CondenseContext(config, device, dataset, real, size, Path(), Console(stderr=True),
                          dsa)
    method.prepare(ctx)  # e.g. expert trajectories, checked before anything is written
    with running(config, resume_dir) as run_ctx:
        if run_ctx.dist.enabled:
            raise HundredError("the condense track runs on one device (no torchrun)")
        ctx.run_dir, ctx.console = run_ctx.run_dir, run_ctx.console
        started = time.perf_counter()
        if method.full_data:  # the upper bound: every real training image
            images, labels = real.all()
            synthetic = None
            targets = {"hard": labels}
            learned_lr = None
        else:
            synthetic = SyntheticSet.initialise(real, settings.ipc, settings.init,
                                                method.select(ctx)).to(device)
            method.setup_set(synthetic, ctx)
            method.checkpointed().to(device)
            if method.optimises and settings.iterations > 0:
                optimise(synthetic, method, ctx, run_ctx.resumed)
            images, targets = synthetic.images.detach(), {"hard": synthetic.labels}
            if synthetic.soft_labels is not None:
                targets["soft"] = synthetic.targets("soft")
            learned_lr = None if synthetic.lr is None else float(synthetic.lr.detach())
            export(synthetic, ctx)
        condense_seconds = time.perf_counter() - started

        label_kinds = {"auto": sorted(targets, reverse=True), "hard": ["hard"],
                       "soft": ["soft"]}[settings.eval_labels]
        if "soft" in label_kinds and "soft" not in targets:
            raise HundredError(f"condense.eval_labels=soft: {method.name} learned no soft labels")
        models = settings.eval_models or [config.model.name]
        lr, lr_source = ((learned_lr, "learned") if learned_lr is not None
                         else (settings.eval_lr, "eval_lr"))
        grid = [Setting(model, augment, kind, lr, lr_source) for model in models
                for augment in settings.eval_augment for kind in label_kinds]
        started = time.perf_counter()
        test_images, test_labels = test.all()
        evaluate_settings(
            grid, images, targets, test_images, test_labels, runs=settings.eval_runs,
            epochs=settings.eval_epochs, batch_size=settings.eval_batch_size,
            weight_decay=settings.eval_weight_decay, num_classes=dataset.num_classes,
            image_size=size, model_options={config.model.name: config.model.options},
            seed=config.seed, dsa=eval_dsa,
            log=lambda line: run_ctx.console.print(line, highlight=False))
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "ipc": None if synthetic is None else settings.ipc,
            "images": len(images), "init": None if synthetic is None else settings.init,
            "iterations": settings.iterations if method.optimises else 0,
            "matching_dsa": dsa is not None, "fyi": bool(getattr(method.params, "fyi", False)),
            **headline(grid, models[0], settings.eval_augment[0], label_kinds[0]),
            "eval_runs": settings.eval_runs, "eval_epochs": settings.eval_epochs,
            "learned_lr": learned_lr,
            "evaluations": [setting.record() for setting in grid],
            "condense_seconds": round(condense_seconds, 2),
            "eval_seconds": round(time.perf_counter() - started, 2),
        }
        return finish_run(run_ctx, summary, dataset=dataset,
                          title=f"{config.track}/{config.method} on {dataset.name}")


def headline(grid: list[Setting], model: str, augment: str, labels: str) -> dict[str, Any]:
    """The summary's reported numbers: ``eval_top1`` (± ``eval_top1_std``) of the first
    setting; ``eval_nodsa_top1`` without augmentation and ``eval_hard_top1`` with hard labels
    (when those differ from it and were evaluated)."""
    def find(augment: str, labels: str) -> Setting | None:
        return next((s for s in grid if (s.model, s.augment, s.labels) == (model, augment,
                                                                           labels)), None)

    main = find(augment, labels)
    assert main is not None
    nodsa = find("none", labels) if augment != "none" else None
    hard = find(augment, "hard") if labels != "hard" else None
    return {"eval_top1": round(main.mean, 2),
            "eval_top1_std": None if math.isnan(main.std) else round(main.std, 2),
            "eval_augment": augment, "eval_labels": labels, "eval_lr": main.lr,
            "eval_nodsa_top1": None if nodsa is None else round(nodsa.mean, 2),
            "eval_hard_top1": None if hard is None else round(hard.mean, 2)}


def optimise(synthetic: SyntheticSet, method: CondenseMethod, ctx: CondenseContext,
             resumed: bool) -> None:
    """The condensation loop (resumes from the newest checkpoint of a resumed run)."""
    settings = ctx.config.condense
    groups = method.optimizer_groups(synthetic, method.image_lr(ctx.config),
                                     settings.image_momentum)
    optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"])
    start = restore(synthetic, method, optimizer, ctx) if resumed else 0
    metrics = ctx.run_dir / "metrics.jsonl"
    keep_records(metrics, start)
    if start:
        ctx.console.print(f"resumed {ctx.run_dir} after iteration {start}")
    started = time.perf_counter()
    for iteration in range(start, settings.iterations):
        optimizer.zero_grad(set_to_none=True)
        logs = method.compute_gradients(synthetic, ctx)
        optimizer.step()
        method.after_step(synthetic)
        done = iteration + 1
        if done % settings.log_every == 0 or done == settings.iterations:
            record = {"iteration": done, **{k: round(float(v), 6) for k, v in logs.items()},
                      "seconds": round(time.perf_counter() - started, 2)}
            if synthetic.lr is not None:
                record["learned_lr"] = float(synthetic.lr.detach())
            with open(metrics, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if not ctx.config.quiet:
                ctx.console.print(f"iteration {done:>6}/{settings.iterations}  loss "
                                  f"{logs.get('loss', float('nan')):.4f}", highlight=False)
        if done % settings.checkpoint_every == 0 or done == settings.iterations:
            checkpoint(synthetic, method, optimizer, ctx, done)


def checkpoint(synthetic: SyntheticSet, method: CondenseMethod,
               optimizer: torch.optim.Optimizer, ctx: CondenseContext, iteration: int) -> None:
    """Save iteration ``iteration`` (the set, the method's modules and state, the optimiser,
    the RNG) and draw its image grid (``grids/iteration-XXXXXX.png``)."""
    weights = {f"synthetic.{k}": v for k, v in synthetic.state_dict().items()}
    weights.update({f"method.{k}": v for k, v in method.checkpointed().state_dict().items()})
    state = {"epoch": iteration, "optimizer": optimizer.state_dict(),
             "method": method.state_dict(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "loader": {}}
    save_checkpoint(ctx.run_dir / CHECKPOINTS, iteration, weights, state)
    save_grid(synthetic.to_uint8(ctx.real.mean, ctx.real.std), synthetic.labels.cpu().numpy(),
              ctx.run_dir / "grids" / f"iteration-{iteration:06d}.png")


def restore(synthetic: SyntheticSet, method: CondenseMethod,
            optimizer: torch.optim.Optimizer, ctx: CondenseContext) -> int:
    """Load the newest readable checkpoint; returns its iteration (0 when there is none)."""
    found = load_checkpoint(ctx.run_dir / CHECKPOINTS,
                            warn=lambda line: ctx.console.print(line, highlight=False))
    if found is None:
        return 0
    iteration, weights, state = found
    synthetic.load_state_dict(strip_prefix(weights, "synthetic."), strict=True)
    method.checkpointed().load_state_dict(strip_prefix(weights, "method."), strict=True)
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return iteration


def keep_records(metrics: Path, iteration: int) -> None:
    """Drop ``metrics.jsonl`` records after ``iteration`` (written after the checkpoint a
    resumed run restarts from; the resumed run writes them again)."""
    if not metrics.is_file():
        return
    lines = [line for line in metrics.read_text(encoding="utf-8").splitlines()
             if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    write_text(metrics, "".join(line + "\n" for line in lines))


def export(synthetic: SyntheticSet, ctx: CondenseContext) -> None:
    """The learned set as packed data (``<run>/synthetic``), its grid (``<run>/synthetic.png``)
    and what else it learned (``<run>/learned.safetensors``: soft labels, lr)."""
    name = f"{ctx.dataset.name}-{ctx.config.method}-ipc{synthetic.ipc}"
    pack(as_dataset(synthetic, ctx.dataset, ctx.real.mean, ctx.real.std, name),
         out=ctx.run_dir / "synthetic", res=ctx.image_size, force=True, quiet=True)
    save_grid(synthetic.to_uint8(ctx.real.mean, ctx.real.std), synthetic.labels.cpu().numpy(),
              ctx.run_dir / "synthetic.png")
    learned = {name: value.detach().cpu().contiguous()
               for name, value in (("soft_labels", synthetic.soft_labels), ("lr", synthetic.lr))
               if value is not None}
    if learned:
        with atomic_open(ctx.run_dir / "learned.safetensors", "wb") as handle:
            handle.write(save_safetensors({k: v.reshape(-1) if v.ndim == 0 else v
                                           for k, v in learned.items()}))
