"""The classify scenario: train one model on the train split, evaluate top-1/top-5 on val."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hundred.config import RunConfig
from hundred.engine.run import eval_loader, finish_run, image_size, load_data, running
from hundred.engine.trainer import Trainer
from hundred.models import create
from hundred.tracks.classify.method import ClassifyMethod


def run(config: RunConfig, method: ClassifyMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Train with ``method`` on ``config.data``; returns the summary written to the run dir.
    The data and whatever the method needs from outside (a teacher) are loaded and checked
    before the run directory is created, so a bad teacher writes nothing."""
    dataset = load_data(config)
    size = image_size(config, dataset)
    method.prepare(config, dataset, size)
    with running(config, resume_dir) as ctx:
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=size, **config.model.options)
        trainer = Trainer(config, model, method, method.train_loader(ctx, dataset),
                          eval_loader(ctx, dataset) if ctx.dist.is_main else None,
                          ctx.device, ctx.run_dir, ctx.dist, ctx.console)
        if ctx.resumed and trainer.resume():
            ctx.console.print(f"resumed {ctx.run_dir} after epoch {trainer.start_epoch}")
        result = trainer.fit()
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "teacher": method.teacher_label(), "teacher_spec": config.classify.teacher,
            "epochs": config.train.epochs, **result.final,
            "train_seconds": round(result.train_seconds, 2),
            "images_per_s": round(result.images_per_second, 1),
        }
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)
