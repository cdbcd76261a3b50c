"""The classify scenario: train one model on the train split, evaluate top-1/top-5 on val."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hundred.config import RunConfig
from hundred.engine.method import Method
from hundred.engine.run import (eval_loader, finish_run, image_size, load_data, running,
                                train_loader)
from hundred.engine.trainer import Trainer
from hundred.models import create


def run(config: RunConfig, method: Method, resume_dir: Path | None = None) -> dict[str, Any]:
    """Train with ``method`` on ``config.data``; returns the summary written to the run dir."""
    with running(config, resume_dir) as ctx:
        dataset = load_data(config)
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=image_size(config, dataset), **config.model.options)
        trainer = Trainer(config, model, method, train_loader(ctx, dataset, views=method.views),
                          eval_loader(ctx, dataset) if ctx.dist.is_main else None,
                          ctx.device, ctx.run_dir, ctx.dist, ctx.console)
        if ctx.resumed and trainer.resume():
            ctx.console.print(f"resumed {ctx.run_dir} after epoch {trainer.start_epoch}")
        result = trainer.fit()
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "epochs": config.train.epochs, **result.final,
            "train_seconds": round(result.train_seconds, 2),
            "images_per_s": round(result.images_per_second, 1),
        }
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)
