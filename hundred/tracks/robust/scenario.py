"""The robust scenario: train one model on the train split with the shared trainer (as the
classify scenario does), then attack the held-out split under the run's threat model.

The end-of-run evaluation runs every attack of ``robust.eval_attacks`` (default: PGD-20 at
the training ε, step ``eval_step_size``) on the val split, in float32 and eval mode, seeded
with the run seed; ``robust_top1`` is the first attack's robust accuracy. Each number goes
into the summary's ``attacks`` list with its threat model (attack, norm, ε, steps, step size,
restarts, random start, seed, images, torchattacks version), and the summary's
``threat_model`` (``Linf 8/255``) and ``eval_attack`` (``pgd-20, step 2/255``) name it in
reports.

A method's ``save_pictures`` hook (dat: samples drawn from the model) writes its pictures
into the run directory after the attacks; what it returns joins the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hundred.config import RunConfig, with_values
from hundred.data import Dataset
from hundred.engine.init import init_model_weights, resumes_from_checkpoint
from hundred.engine.run import (RunContext, eval_loader, finish_run, fit, image_size, load_data,
                                running)
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.tracks.robust.attacks import (ThreatModel, attack_spec, attack_subset,
                                           robust_accuracy)
from hundred.tracks.robust.config import eps_label
from hundred.tracks.robust.method import AdversarialTraining, RobustMethod, training_threat


def evaluation_threat(config: RunConfig) -> ThreatModel:
    """The threat model of the end-of-run attacks: the training ε and norm, ``eval_steps``
    steps of ``eval_step_size`` (else the training step size), ``eval_restarts``."""
    robust = config.robust
    return ThreatModel(norm=robust.norm, eps=robust.eps, steps=robust.eval_steps,
                       step_size=robust.eval_step_size or robust.step_size,
                       restarts=robust.eval_restarts, random_start=True)


def attack_label(name: str, threat: ThreatModel) -> str:
    """``pgd-20, step 2/255`` (an attack that uses the PGD settings) or ``autoattack``."""
    if not attack_spec(name).uses_steps:
        return name
    restarts = f", {threat.restarts} restarts" if threat.restarts > 1 else ""
    return f"{name}-{threat.steps}, step {eps_label(threat.alpha)}{restarts}"


def run(config: RunConfig, method: RobustMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Train with ``method`` on ``config.data``, attack val; returns the summary written to
    the run directory. Everything that can be wrong (attack names, the init run, the data) is
    checked before the run directory is created, so a bad one writes nothing. A test-time
    adaptation method (``method.scenario == "tta"``) runs :func:`hundred.tracks.robust.tta.run`
    instead: no training, an online pass over a corrupted test stream.

    A method's own schedule (:meth:`RobustMethod.schedule`) replaces ``schedule:`` first, so
    that ``config.yaml`` records what the run used. With ``robust.init`` the model starts
    from that run (the whole model on the same data and classes, else its backbone and a new
    head); a resumed run that has a checkpoint continues from it instead."""
    if method.scenario == "tta":
        from hundred.tracks.robust import tta

        return tta.run(config, method, resume_dir)
    for name in config.robust.eval_attacks:
        attack_spec(name)
    if method.needs_init and config.robust.init is None:
        raise HundredError(f"{config.track}/{config.method} fine-tunes a pre-trained model: give "
                           "--init RUN_DIR (a finished run of the same model, e.g. robust/erm)")
    schedule = method.schedule(config)
    if schedule is not None and schedule != config.schedule:
        config = with_values(config, {"schedule": schedule.model_dump(mode="json")},
                             f"{config.method}'s schedule")
        method.config = config
    dataset = load_data(config)
    size = image_size(config, dataset)
    init_weights, whole_model = None, False
    if config.robust.init is not None and not resumes_from_checkpoint(resume_dir):
        init_weights, whole_model = init_model_weights(
            Path(config.robust.init), config, size, dataset.num_classes, dataset.name)
        _check_fits(init_weights, config, dataset, size)
    with running(config, resume_dir) as ctx:
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=size, **config.model.options)
        if init_weights is not None:
            model.load_state_dict(init_weights, strict=whole_model)
        loader = method.train_loader(ctx, dataset)
        trainer, result = fit(ctx, model, method, loader, dataset)
        evaluated = trainer.ema.module if trainer.ema is not None else model
        attacks = evaluate_attacks(ctx, evaluated, dataset) if ctx.dist.is_main else []
        # pictures of the model for the report (dat: samples.png, ReportSpec.images)
        pictures = (method.save_pictures(evaluated, ctx.run_dir, dataset.num_classes, size)
                    if ctx.dist.is_main else {})
        threat = evaluation_threat(config)
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "init": config.robust.init,
            "init_weights": (None if config.robust.init is None else
                             "model" if whole_model else "backbone" if init_weights else
                             "checkpoint"),
            "train_images": loader.num_samples, "epochs": config.train.epochs, **result.final,
            "robust_top1": attacks[0]["robust_top1"] if attacks else None,
            "threat_model": config.robust.label(),
            "eval_attack": attack_label(config.robust.eval_attacks[0], threat),
            "train_threat": (training_threat(config).record()
                             if isinstance(method, AdversarialTraining) else None),
            "attacks": attacks,
            "train_seconds": round(result.train_seconds, 2),
            "images_per_s": round(result.images_per_second, 1),
            **pictures,
        }
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)


def evaluate_attacks(ctx: RunContext, model: torch.nn.Module, dataset: Dataset
                     ) -> list[dict[str, Any]]:
    """Every attack of ``robust.eval_attacks`` on the val split: one ``attacks`` entry each."""
    config = ctx.config
    threat = evaluation_threat(config)
    entries = []
    for name in config.robust.eval_attacks:
        ctx.console.print(f"attacking val: {attack_label(name, threat)} at "
                          f"{config.robust.label()}", highlight=False)
        rows = attack_subset(len(dataset.arrays("val").labels), config.robust.eval_limit)
        result = robust_accuracy(model, eval_loader(ctx, dataset, indices=rows),
                                 config.data.mean, config.data.std, name, threat,
                                 dataset.num_classes, seed=config.seed, device=ctx.device)
        entries.append({**result, "split": "val", "source": "end of run"})
    return entries


def _check_fits(weights: dict[str, torch.Tensor], config: RunConfig, dataset: Dataset,
                size: int) -> None:
    """The init weights that carry a head must fit this run's head (``model.head`` of both
    runs), checked on the meta device before anything is written."""
    heads = {key: value for key, value in weights.items() if key.startswith("head.")}
    if not heads:
        return
    with torch.device("meta"):
        model: Classifier = create(config.model.name, dataset.num_classes,
                                   head=config.model.head, img_size=size, **config.model.options)
    expected = {f"head.{k}": v.shape for k, v in model.head.state_dict().items()}
    if {k: v.shape for k, v in heads.items()} != expected:
        raise HundredError(f"init {config.robust.init}: its head does not fit this run's "
                           f"{config.model.head} head for {dataset.num_classes} classes")
