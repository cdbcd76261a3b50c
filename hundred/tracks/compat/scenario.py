"""The compat scenario: an old embedding model, a new one, retrieval across the two.

1. The old model (``model.name`` + a ``compat.embed_dim``-d normalised projection + a
   bias-free linear classifier) is trained with plain cross-entropy on the train images of
   the first round(``compat.old_classes`` x classes) labels, with the shared trainer
   (checkpoints and metrics in ``old/`` of the run directory), or reused from the finished
   compat run ``compat.old``; its weights are written to ``old_model.safetensors``.
2. Its class prototypes (mean old embedding of each class's train images, without
   augmentation, for every class) and the frozen model go to the method
   (``attach_old``), which then trains the new model on all classes with its ``loss``.
3. Retrieval on val (:mod:`hundred.tracks.compat.retrieval`: each val image a query against
   all the others, cosine distance on the common coordinates): old/old (queries and gallery
   by the old model), new/old (queries by the new model, gallery by the old one: backward
   compatibility) and new/new; top-1 and mAP in %.

The summary records ``{oldold,newold,newnew}_{top1,map}``, ``compatible`` = new/old top-1 >
old/old top-1 (Shen et al.'s empirical compatibility criterion), ``compat_gain_top1`` (their
difference), the new model's classification accuracy on val (``val_top1`` ...) and the old
model's (``old``: on the old classes' val images). Bad input (the class split, a reused run
that does not fit) is a HundredError before the run directory is created.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from hundred.config import RunConfig, build_config
from hundred.data import Dataset
from hundred.engine.init import architecture
from hundred.engine.losses import cross_entropy
from hundred.engine.method import Method
from hundred.engine.run import (RunContext, eval_loader, finish_run, fit, image_size, load_data,
                                running, train_loader)
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.io import atomic_open
from hundred.models import Classifier
from hundred.tracks.compat.embedding import (OldModel, class_prototypes, embedding_model,
                                             linear_classifier)
from hundred.tracks.compat.method import CompatMethod
from hundred.tracks.compat.retrieval import retrieval_metrics

OLD_WEIGHTS = "old_model.safetensors"
SETTINGS = {"oldold": ("old", "old"), "newold": ("new", "old"), "newnew": ("new", "new")}


class OldTraining(Method):
    """The old model's training: plain cross-entropy (``train.label_smoothing`` applied)."""

    track, name = "compat", "old"

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)


def old_class_count(share: float, num_classes: int) -> int:
    """round(share x classes), which must leave at least one class on each side."""
    count = int(round(share * num_classes))
    if not 1 <= count < num_classes:
        raise HundredError(f"compat.old_classes={share} of {num_classes} classes gives {count} "
                           f"old classes: the old model needs at least one class and the new "
                           f"model at least one more (choose a share between "
                           f"{1 / num_classes:.3g} and {1 - 1 / num_classes:.3g})")
    return count


def old_model_of(config: RunConfig, size: int, num_old: int) -> Classifier:
    """The old model: ``model.name`` + ``compat.embed_dim``-d embedding + ``num_old``-way
    classifier."""
    dim = config.compat.embed_dim
    return embedding_model(config.model, size, dim, linear_classifier(dim, num_old))


def reused_old(run_dir: Path, config: RunConfig, dataset: Dataset, size: int, num_old: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The old model's weights and summary record of the finished compat run ``run_dir``,
    checked against this run (architecture, embedding dimension, data, class split, image
    size, every weight's shape) before anything is written."""
    role = f"compat.old {run_dir}"
    if not run_dir.is_dir():
        raise HundredError(f"{role} does not exist (give a finished compat run directory)")
    missing = [name for name in ("config.yaml", "summary.json", OLD_WEIGHTS)
               if not (run_dir / name).is_file()]
    if missing:
        raise HundredError(f"{role} is not a finished compat run (missing {', '.join(missing)})")
    theirs = build_config([run_dir / "config.yaml"])
    if theirs.track != "compat":
        raise HundredError(f"{role} is a {theirs.track} run, not a compat run")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        record = dict(summary["old"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HundredError(f"{role}: its summary.json is unreadable ({error})") from None
    if (theirs.model.name, theirs.model.options) != (config.model.name, config.model.options):
        raise HundredError(f"{role} trained {architecture(theirs.model)}, but this run's model "
                           f"is {architecture(config.model)}: give the same model.name and "
                           "model.options")
    if theirs.compat.embed_dim != config.compat.embed_dim:
        raise HundredError(f"{role} has a {theirs.compat.embed_dim}-d old embedding, this run "
                           f"asks for compat.embed_dim={config.compat.embed_dim}")
    if summary.get("data_fingerprint") != dataset.info.get("fingerprint"):
        raise HundredError(f"{role} was trained on other data ({summary.get('data')}) than "
                           f"this run's {dataset.name}")
    if record.get("classes") != num_old:
        raise HundredError(f"{role}'s old model knows {record.get('classes')} classes, this "
                           f"run's split gives {num_old}: set compat.old_classes="
                           f"{theirs.compat.old_classes} as that run did")
    if summary.get("image_size") != size:
        raise HundredError(f"{role} saw {summary.get('image_size')} px images, this run "
                           f"{size} px")
    try:
        weights = load_file(run_dir / OLD_WEIGHTS)
    except (OSError, SafetensorError) as error:
        raise HundredError(f"{role}: {OLD_WEIGHTS} is unreadable ({error})") from None
    with torch.device("meta"):
        expected = old_model_of(config, size, num_old).state_dict()
    if {k: tuple(v.shape) for k, v in weights.items()} != {k: tuple(v.shape)
                                                           for k, v in expected.items()}:
        raise HundredError(f"{role}: {OLD_WEIGHTS} does not fit the old model this run builds")
    record["source"] = str(run_dir)
    return weights, record


def train_old(ctx: RunContext, model: Classifier, dataset: Dataset, num_old: int
              ) -> tuple[Classifier, dict[str, Any]]:
    """Train the old model on the old classes' train images with the shared trainer (its
    checkpoints and metrics in ``old/``, validated on the old classes' val images); returns
    the model it evaluated (the EMA one when the run keeps an EMA) and its summary record."""
    config = ctx.config
    epochs = config.compat.old_epochs or config.train.epochs
    old_config = config.model_copy(update={"train": config.train.model_copy(
        update={"epochs": epochs})})
    train_labels = dataset.arrays("train").labels
    val_labels = dataset.arrays("val").labels
    indices = np.flatnonzero(train_labels < num_old)
    loader = train_loader(ctx, dataset, indices=indices)
    evaluation = (eval_loader(ctx, dataset, "val", indices=np.flatnonzero(val_labels < num_old))
                  if ctx.dist.is_main else None)
    directory = ctx.run_dir / "old"
    if ctx.dist.is_main:
        directory.mkdir(exist_ok=True)
    trainer = Trainer(old_config, model, OldTraining(config=old_config), loader, evaluation,
                      ctx.device, directory, ctx.dist, ctx.console)
    if ctx.resumed:
        trainer.resume()
    result = trainer.fit()
    trained = trainer.ema.module if trainer.ema is not None else model
    return trained, {"classes": num_old, "epochs": epochs, "train_images": len(indices),
                     "source": "trained", **result.final}


@torch.no_grad()
def embed(model: Classifier, batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, labels) of every batch, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(model.features(images).float().cpu())
        labels.append(batch_labels.cpu())
    model.train(was_training)
    return torch.cat(features), torch.cat(labels)


def retrieval(ctx: RunContext, old: Classifier, new: Classifier, dataset: Dataset
              ) -> dict[str, Any]:
    """Top-1 and mAP (%) of old/old, new/old and new/new leave-one-out retrieval on val."""
    embeddings: dict[str, torch.Tensor] = {}
    labels = torch.empty(0)
    for name, model in (("old", old), ("new", new)):
        embeddings[name], labels = embed(model, eval_loader(ctx, dataset, "val"))
    results: dict[str, Any] = {}
    for setting, (query, gallery) in SETTINGS.items():
        metrics = retrieval_metrics(embeddings[query], embeddings[gallery], labels)
        results.update({f"{setting}_{key}": value for key, value in metrics.items()})
    results["compat_gain_top1"] = results["newold_top1"] - results["oldold_top1"]
    results["compatible"] = bool(results["newold_top1"] > results["oldold_top1"])
    results["retrieval"] = {
        "protocol": "leave-one-out on val: each image a query against all others; cosine "
                    "distance on the first min(d_query, d_gallery) coordinates",
        "queries": len(labels), "old_dim": embeddings["old"].shape[1],
        "new_dim": embeddings["new"].shape[1]}
    return results


def run(config: RunConfig, method: CompatMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Old model, new model by ``method``, retrieval across them; returns the summary."""
    section = config.compat
    dataset = load_data(config)
    size = image_size(config, dataset)
    num_classes = dataset.num_classes
    num_old = old_class_count(section.old_classes, num_classes)
    stored_old = resume_dir is not None and (resume_dir / OLD_WEIGHTS).is_file()
    reused = None
    if section.old is not None and not stored_old:
        reused = reused_old(Path(section.old), config, dataset, size, num_old)
    with running(config, resume_dir) as ctx:
        old_model = old_model_of(config, size, num_old)
        if stored_old:  # a resumed run whose old model was finished
            old_model.load_state_dict(load_file(ctx.run_dir / OLD_WEIGHTS))
            old_record = json.loads((ctx.run_dir / "old" / "record.json").read_text())
        elif reused is not None:
            old_model.load_state_dict(reused[0])
            old_record = reused[1]
        else:
            old_model, old_record = train_old(ctx, old_model, dataset, num_old)
        if ctx.dist.is_main and not stored_old:
            weights = {k: v.detach().contiguous().cpu() for k, v in old_model.state_dict().items()}
            (ctx.run_dir / "old").mkdir(exist_ok=True)
            with atomic_open(ctx.run_dir / "old" / "record.json", "w") as handle:
                handle.write(json.dumps(old_record))
            with atomic_open(ctx.run_dir / OLD_WEIGHTS, "wb") as handle:
                handle.write(save_safetensors(weights))
        old_model.to(ctx.device).eval().requires_grad_(False)
        prototypes = class_prototypes(old_model, eval_loader(ctx, dataset, "train"), num_classes)
        method.attach_old(OldModel(old_model, section.embed_dim, num_old, prototypes))

        torch.manual_seed(config.seed + 1)  # the new model starts alike whatever came before
        dim = method.embedding_dim(section.embed_dim)
        model = embedding_model(config.model, size, dim, method.build_head(dim, num_classes))
        loader = train_loader(ctx, dataset, views=method.views)
        trainer, result = fit(ctx, model, method, loader, dataset)
        trained = trainer.ema.module if trainer.ema is not None else model
        summary: dict[str, Any] = {
            "data": dataset.name, "model": config.model.name, "classes": num_classes,
            "image_size": size, "old_classes": section.old_classes, "embed_dim": section.embed_dim,
            "new_embed_dim": dim, "train_images": loader.num_samples,
            "epochs": config.train.epochs, "old": old_record}
        if ctx.dist.is_main:
            summary.update(result.final)
            summary.update(retrieval(ctx, old_model, trained, dataset))
        summary.update({"train_seconds": round(result.train_seconds, 2),
                        "images_per_s": round(result.images_per_second, 1)})
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on {dataset.name}",
                          dataset=dataset)
