"""The unlearn scenario: one run = one unlearning method applied to one forget set.

1. The original model: ``unlearn.init`` (a finished run on the same data, classes and model),
   else trained here with the shared trainer on the whole train split (the run's ``train``,
   ``optim``, ``schedule``) into ``RUN_DIR/original`` (its checkpoints, metrics, and a
   ``config.yaml``/``summary.json`` so that ``--set unlearn.init=RUN_DIR/original`` reuses
   it). Retraining needs no original model unless it must select a worst-case set.
2. The forget set: ``unlearn.forget_from`` (exactly that run's), a uniform random sample
   (``forget_fraction``, ``forget_seed``), or the worst-case selection
   (:mod:`hundred.tracks.unlearn.selection`) on the original model; written to
   ``forget_indices.npy`` (rows of the train split; a resumed run reads it back).
3. Unlearning: one more phase with the shared trainer, on the rows and labels the method
   names, under its own epochs and learning rate (retrain: a fresh model on the retained
   rows under the run's schedule); its checkpoints and ``metrics.jsonl`` are the run's own.
4. Measurement (:mod:`hundred.tracks.unlearn.evaluation`): UA, RA, TA, MIA-efficacy of the
   unlearned model (and of the original one, ``original_*``), the unlearning phase's time
   (``unlearn_seconds``: the paper's run-time efficiency, training steps only; the
   selection's own time is ``selection.seconds``) and, with ``unlearn.reference``
   (a retrain run with the same forget set), each metric's gap to it and ``avg_gap``.

Everything that can be wrong (the fraction, the init, forget_from and reference runs, a
reference with another forget set) is checked before the run directory is created.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hundred.config import RunConfig, dump_yaml, with_values
from hundred.data import ArraySplit, Dataset
from hundred.engine.init import init_model_weights, resumes_from_checkpoint
from hundred.engine.run import (RunContext, eval_loader, finish_run, image_size, load_data,
                                running, train_loader)
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.io import write_json, write_text
from hundred.models import create
from hundred.tracks.unlearn.evaluation import (METRICS, accuracy, mia_efficacy,
                                               mia_efficacy_svc, retrain_gap,
                                               true_class_outputs)
from hundred.tracks.unlearn.forget import (FORGET_FILE, forget_count, random_forget_set,
                                           read_forget_set, retain_rows, save_forget_set)
from hundred.tracks.unlearn.method import UnlearnMethod
from hundred.tracks.unlearn.selection import worst_case_forget_set

ORIGINAL = "original"


@dataclasses.dataclass
class _Relabelled:
    """The dataset with other labels for its train split (what ``train_loader`` reads)."""

    dataset: Dataset
    labels: np.ndarray

    def arrays(self, split: str) -> ArraySplit:
        arrays = self.dataset.arrays(split)
        return ArraySplit(arrays.images, self.labels) if split == "train" else arrays


def run(config: RunConfig, method: UnlearnMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Original model, forget set, unlearning, measurement (module docstring); returns the
    summary written to the run directory."""
    section = config.unlearn
    if config.provenance.protocol == "tune-then-evaluate" and section.reference is None:
        raise HundredError("tuning an unlearning method optimises its gap to retraining "
                           "(avg_gap): give unlearn.reference=RUN_DIR (a retrain run with the "
                           "same forget set, e.g. a fixed unlearn.forget_seed)")
    dataset = load_data(config)
    size = image_size(config, dataset)
    train_size = len(dataset.arrays("train"))
    fingerprint = dataset.info.get("fingerprint")
    seed = config.seed if section.forget_seed is None else section.forget_seed
    phase_config = config if method.retrains else with_values(
        config, method.phase_values(), f"{config.method}'s unlearning phase")

    # -- the forget set, as far as it is known before anything runs -------------------------
    forget, kind, source = None, section.forget, None
    count = forget_count(section.forget_fraction, train_size)
    if section.forget_from is not None:
        forget, found = read_forget_set(Path(section.forget_from), "unlearn.forget_from",
                                        train_size, fingerprint)
        kind, source, count = found.get("forget", "given"), section.forget_from, len(forget)
    elif section.forget == "random":
        forget = random_forget_set(train_size, count, seed)
    reference = None
    if section.reference is not None:
        reference, forget, kind, count, source = _reference(
            Path(section.reference), forget, kind, count, source, train_size, fingerprint)
    if kind != section.forget and kind in ("random", "worst_case"):
        # the forget set of another run: config.yaml (and reports) name its kind
        config = with_values(config, {"unlearn.forget": kind}, "the forget set's kind")
        method.config = config
        phase_config = config if method.retrains else with_values(
            config, method.phase_values(), f"{config.method}'s unlearning phase")
    if resume_dir is not None and (resume_dir / FORGET_FILE).is_file():
        forget = np.load(resume_dir / FORGET_FILE, allow_pickle=False)

    # -- the original model --------------------------------------------------------------
    needs_original = not method.retrains or forget is None
    init_weights = None
    if section.init is not None and needs_original:
        init_weights, whole = init_model_weights(Path(section.init), config, size,
                                                 dataset.num_classes, dataset.name)
        if not whole:
            raise HundredError(f"unlearn.init {section.init} was not trained on this run's "
                               f"data and classes ({dataset.name}, {dataset.num_classes} "
                               "classes): unlearning needs the model that saw this train split")

    with running(config, resume_dir) as ctx:
        original = None
        original_seconds = 0.0
        if needs_original:
            original = create(config.model.name, dataset.num_classes, head=config.model.head,
                              img_size=size, **config.model.options)
            if init_weights is not None:
                original.load_state_dict(init_weights)
                original.to(ctx.device)
            else:
                original_seconds = _train_original(ctx, original, method, dataset)
        selection = None
        if forget is None:
            assert original is not None
            ctx.console.print(f"selecting the worst-case forget set ({count} of {train_size} "
                              "train images)", highlight=False)
            started = time.perf_counter()
            forget, selection = worst_case_forget_set(ctx, original, dataset, count, seed)
            selection["seconds"] = round(time.perf_counter() - started, 2)
        if ctx.dist.is_main:
            save_forget_set(ctx.run_dir, forget)
        retain = retain_rows(forget, train_size)

        # -- unlearning --------------------------------------------------------------------
        if method.retrains:
            model = create(config.model.name, dataset.num_classes, head=config.model.head,
                           img_size=size, **config.model.options)
        else:
            assert original is not None
            model = copy.deepcopy(original)
        rows = method.phase_rows(forget, retain)
        labels = method.phase_labels(dataset.arrays("train").labels, forget,
                                     dataset.num_classes, seed)
        source_data: Any = dataset if labels is None else _Relabelled(dataset, labels)
        batch = min(phase_config.data.batch_size, len(rows))
        if batch != phase_config.data.batch_size:
            phase_config = with_values(phase_config, {"data.batch_size": batch},
                                       "the unlearning phase (fewer rows than a batch)")
        phase_ctx = dataclasses.replace(ctx, config=phase_config)
        loader = train_loader(phase_ctx, source_data, indices=rows)
        if method.retrains and np.isin(loader.epoch_indices(0), forget).any():
            raise HundredError("internal error: the retraining loader reads forget rows")
        trainer = Trainer(phase_config, model, method, loader,
                          eval_loader(ctx, dataset) if ctx.dist.is_main else None,
                          ctx.device, ctx.run_dir, ctx.dist, ctx.console)
        if ctx.resumed and resumes_from_checkpoint(ctx.run_dir):
            trainer.resume()
        result = trainer.fit()
        unlearned = trainer.ema.module if trainer.ema is not None else model

        summary: dict[str, Any] = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "forget": kind, "forget_from": source, "forget_count": int(len(forget)),
            "forget_fraction": round(len(forget) / train_size, 6),
            "retain_count": int(len(retain)), "init": section.init,
            "reference": section.reference, "phase_images": loader.num_samples,
            "phase_epochs": phase_config.train.epochs, "phase_lr": phase_config.optim.lr,
            # the paper's run-time efficiency: the unlearning phase's training steps (its
            # per-epoch evaluation on val is not counted; a resumed run counts what it ran)
            "unlearn_seconds": round(result.train_seconds, 2),
            "original_train_seconds": round(original_seconds, 2), **result.final,
            "selection": selection}
        if ctx.dist.is_main:
            metrics = measure(ctx, unlearned, dataset, forget, retain)
            summary.update(metrics)
            if original is not None:
                before = measure(ctx, original, dataset, forget, retain)
                summary.update({f"original_{key}": value for key, value in before.items()})
                if init_weights is None:  # trained here: its summary gets its own row
                    _measured_original(ctx.run_dir / ORIGINAL, before, kind, len(forget))
            if reference is not None:
                summary.update(retrain_gap(metrics, reference))
        title = f"{config.track}/{config.method} on {dataset.name} ({kind} forget set)"
        return finish_run(ctx, summary, title=title, dataset=dataset)


def measure(ctx: RunContext, model: torch.nn.Module, dataset: Dataset, forget: np.ndarray,
            retain: np.ndarray) -> dict[str, float]:
    """UA, RA, TA and MIA-efficacy of ``model`` (:mod:`.evaluation`), in %."""
    section = ctx.config.unlearn
    f_correct, f_conf, _ = true_class_outputs(model, eval_loader(ctx, dataset, "train",
                                                                 indices=forget))
    r_correct, r_conf, _ = true_class_outputs(model, eval_loader(ctx, dataset, "train",
                                                                 indices=retain))
    v_correct, v_conf, _ = true_class_outputs(model, eval_loader(ctx, dataset))
    rng = np.random.default_rng(ctx.config.seed)
    if section.mia_limit is not None and len(v_conf) > section.mia_limit:
        v_conf = v_conf[rng.choice(len(v_conf), section.mia_limit, replace=False)]
    return {"ua": 100.0 - accuracy(f_correct), "ra": accuracy(r_correct),
            "ta": accuracy(v_correct),
            "mia": mia_efficacy(r_conf, v_conf, f_conf, seed=ctx.config.seed),
            "mia_svc": mia_efficacy_svc(r_conf, v_conf, f_conf, seed=ctx.config.seed)}


def _train_original(ctx: RunContext, model: torch.nn.Module, method: UnlearnMethod,
                    dataset: Dataset) -> float:
    """Train the original model on the whole train split into ``RUN_DIR/original`` (a
    finished run of its own afterwards); returns its training seconds."""
    from hundred.tracks.unlearn.methods.retrain import Retrain

    config = ctx.config
    directory = ctx.run_dir / ORIGINAL
    if (directory / "summary.json").is_file() and resumes_from_checkpoint(directory):
        ctx.console.print(f"the original model is in {directory}", highlight=False)
        trainer = Trainer(config, model, Retrain({}, config), train_loader(ctx, dataset),
                          None, ctx.device, directory, ctx.dist, ctx.console)
        trainer.resume()
        return 0.0
    ctx.console.print("training the original model on the whole train split",
                      highlight=False)
    if ctx.dist.is_main:
        directory.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, model, Retrain({}, config), train_loader(ctx, dataset),
                      eval_loader(ctx, dataset) if ctx.dist.is_main else None, ctx.device,
                      directory, ctx.dist, ctx.console)
    if ctx.resumed:
        trainer.resume()
    result = trainer.fit()
    if ctx.dist.is_main:
        write_text(directory / "config.yaml", dump_yaml(config))
        write_json(directory / "summary.json", {
            "track": config.track, "method": "original", "data": dataset.name,
            "classes": dataset.num_classes, "model": config.model.name,
            "data_fingerprint": dataset.info.get("fingerprint"), "seed": config.seed,
            "run_dir": str(directory), "of_run": str(ctx.run_dir), **result.final,
            "train_seconds": round(result.train_seconds, 2)})
    return result.train_seconds


def _measured_original(directory: Path, metrics: dict[str, float], kind: str,
                       count: int) -> None:
    """Add the original model's UA/RA/TA/MIA on this run's forget set to its summary, so
    that reports show it as the ``unlearn/original`` row (no unlearning at all)."""
    path = directory / "summary.json"
    summary = json.loads(path.read_text())
    summary.update({**metrics, "scenario": kind, "forget": kind, "forget_count": count,
                    "measured_on": "the forget set of the run that trained it"})
    write_json(path, summary)


def _reference(path: Path, forget: np.ndarray | None, kind: str, count: int,
               source: str | None, train_size: int, fingerprint: str | None
               ) -> tuple[dict[str, Any], np.ndarray, str, int, str | None]:
    """The retrain run ``path`` (its summary) and this run's forget set checked against it:
    equal to it when already known; its own when this run would select a worst-case set."""
    reference_forget, summary = read_forget_set(path, "unlearn.reference", train_size,
                                                fingerprint)
    if summary.get("method") != "retrain":
        raise HundredError(f"unlearn.reference {path} is an unlearn/{summary.get('method')} "
                           "run: the reference is a retrain run")
    missing = [key for key in METRICS if not isinstance(summary.get(key), (int, float))]
    if missing:
        raise HundredError(f"unlearn.reference {path}: its summary lacks {', '.join(missing)}")
    if forget is None:  # a worst-case set: the one the reference retrained without
        if summary.get("forget") != kind:
            raise HundredError(f"unlearn.reference {path} forgot a {summary.get('forget')} "
                               f"set, this run a {kind} one: give unlearn.forget_from")
        return summary, reference_forget, kind, len(reference_forget), str(path)
    if not np.array_equal(np.sort(forget), reference_forget):
        raise HundredError(f"unlearn.reference {path} retrained without a different forget set "
                           f"({len(reference_forget)} rows) than this run's ({len(forget)} "
                           "rows): give the same forget_fraction and forget_seed, or "
                           f"unlearn.forget_from={path}")
    return summary, forget, kind, count, source
