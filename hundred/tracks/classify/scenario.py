"""The classify scenario: train one model on the train split, evaluate top-1/top-5 on val."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hundred.config import RunConfig
from hundred.engine.init import init_backbone_weights, resumes_from_checkpoint
from hundred.engine.run import finish_run, fit, image_size, load_data, running
from hundred.models import Classifier, create
from hundred.tracks.classify.method import ClassifyMethod


def run(config: RunConfig, method: ClassifyMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Train with ``method`` on ``config.data``; returns the summary written to the run dir.
    The data and whatever the run needs from outside (a teacher, the ``classify.init`` run)
    are loaded and checked before the run directory is created, so a bad one writes nothing.

    With ``classify.init`` the model starts from that run's backbone and a new head; a resumed
    run that has a checkpoint continues from it and does not read the init run again."""
    dataset = load_data(config)
    size = image_size(config, dataset)
    method.prepare(config, dataset, size)
    init_weights = None
    if config.classify.init is not None and not resumes_from_checkpoint(resume_dir):
        init_weights = init_backbone_weights(Path(config.classify.init), config, size)
    with running(config, resume_dir) as ctx:
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=size, **config.model.options)
        if init_weights is not None:
            model.backbone.load_state_dict(init_weights, strict=True)
        if config.classify.freeze_backbone:
            freeze_backbone(model)
        loader = method.train_loader(ctx, dataset)
        trainer, result = fit(ctx, model, method, loader, dataset)
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "teacher": method.teacher_label(), "teacher_spec": config.classify.teacher,
            "init": config.classify.init, "train_images": loader.num_samples,
            "epochs": config.train.epochs, **result.final,
            "train_seconds": round(result.train_seconds, 2),
            "images_per_s": round(result.images_per_second, 1),
        }
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)


def freeze_backbone(model: Classifier) -> None:
    """Linear evaluation: the backbone of ``model`` gets no gradient (so it joins no optimiser)
    and runs in eval mode in every forward pass of ``model``, whatever mode the trainer set,
    so its normalisation statistics and dropout stay those of the weights it started from."""
    model.backbone.requires_grad_(False)
    model.register_forward_pre_hook(_backbone_in_eval_mode)


def _backbone_in_eval_mode(model: Classifier, args: Any) -> None:
    model.backbone.eval()
