"""The ssl scenario: pre-train on the train split's images (no labels but the online
probe's), then evaluate the frozen backbone on the held-out split: a linear probe on
features extracted once, and a weighted kNN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hundred.config import RunConfig
from hundred.data.augment import view_specs
from hundred.engine.run import (eval_loader, finish_run, fit, image_size, load_data, running,
                                train_loader)
from hundred.models import create
from hundred.tracks.ssl.method import SSLMethod


def run(config: RunConfig, method: SSLMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Pre-train with ``method`` on ``config.data``, then probe; returns the summary written
    to the run directory. The pre-trained backbone is the run's model (``backbone.*`` in its
    checkpoints), so ``hundred run classify erm --init RUN_DIR`` fine-tunes it."""
    from hundred.tracks.ssl.evaluation import evaluate_representation

    dataset = load_data(config)
    size = image_size(config, dataset)
    recipes = view_specs(config.ssl.augment)[:method.views] if method.views > 1 else None
    with running(config, resume_dir) as ctx:
        model = create(config.model.name, dataset.num_classes, head="linear", img_size=size,
                       **config.model.options)
        loader = (train_loader(ctx, dataset, views=method.views, view_augments=recipes)
                  if recipes else train_loader(ctx, dataset))
        trainer, result = fit(ctx, model, method, loader, dataset)
        online = {key.replace("val_", "online_"): value for key, value in result.final.items()}
        offline: dict[str, Any] = {}
        if config.ssl.offline_eval and ctx.dist.is_main:
            offline = evaluate_representation(
                trainer.model, eval_loader(ctx, dataset, "train"), eval_loader(ctx, dataset),
                dataset.num_classes, device=ctx.device, probe_epochs=config.ssl.probe_epochs,
                probe_lr=config.ssl.probe_lr, probe_batch_size=config.ssl.probe_batch_size,
                knn_k=tuple(config.ssl.knn_k), knn_temperature=config.ssl.knn_temperature,
                seed=config.seed)
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "epochs": config.train.epochs, "augment": config.ssl.augment, **online, **offline,
            "train_seconds": round(result.train_seconds, 2),
            "images_per_s": round(result.images_per_second, 1),
        }
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)
