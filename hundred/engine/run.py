"""Starting and finishing a run: device, distributed setup, run directory, data loaders.

Every track's scenario begins with :func:`start_run` and ends with :func:`finish_run`, so
all runs record the same things in the same places.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hundred.config import RunConfig, build_config, dump_yaml, result_settings
from hundred.data import Dataset, fingerprint, load_selection
from hundred.data.loader import BatchLoader
from hundred.data.subset import label_fraction_indices
from hundred.engine.allocator import keep_freed_memory
from hundred.engine.distributed import DistInfo, barrier, init_distributed, shutdown
from hundred.engine.mesa import check_mesa_config
from hundred.engine.rundir import FAILED, environment, mark_failed, new_run_dir
from hundred.engine.trainer import resolve_device
from hundred.errors import HundredError
from hundred.io import remove_stale_temporaries, write_json, write_text
from hundred.terminal import table_console


@dataclass
class RunContext:
    """Where and how a run executes. ``run_dir`` is known on every rank; rank 0 writes it."""

    config: RunConfig
    device: torch.device
    dist: DistInfo
    run_dir: Path
    console: Console
    resumed: bool = False
    started: float = field(default_factory=time.perf_counter)


def _slug(text: str) -> str:
    text = Path(text).name if ("/" in text or "\\" in text) and ":" not in text else text
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def start_run(config: RunConfig, resume_dir: Path | None = None) -> RunContext:
    """Seed, pick the device, join DDP if under torchrun, and create (or reopen) the run dir.
    On CPU, freed tensor memory is kept for reuse (:mod:`hundred.engine.allocator`)."""
    check_mesa_config(config)  # a model Mesa cannot serve is refused before anything is written
    device = resolve_device(config.train.device)
    keep_freed_memory()
    dist_info = init_distributed(str(device))
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    console = Console(stderr=True, quiet=not dist_info.is_main)
    torch.manual_seed(config.seed)
    if resume_dir is not None:
        run_dir = resume_dir
        if dist_info.is_main:
            for path in remove_stale_temporaries(run_dir):  # left by a write that was killed
                console.print(f"removed {path} (an unfinished write of the stopped run)")
    else:
        name = None
        if dist_info.is_main:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            default = f"{_slug(config.data.source)}-{config.model.name}-s{config.seed}-{stamp}"
            name = str(new_run_dir(config.root, config.track, config.method, config.name, default))
        if dist_info.enabled:
            holder = [name]
            torch.distributed.broadcast_object_list(holder, src=0)
            name = holder[0]
        run_dir = Path(name)
        if dist_info.is_main:
            write_text(run_dir / "config.yaml", dump_yaml(config))
    if dist_info.is_main:
        env = environment(str(device), config.seed, dist_info.world_size)
        env_name = "env.json" if resume_dir is None else f"env.resume-{time.strftime('%Y%m%d-%H%M%S')}.json"
        write_json(run_dir / env_name, env)
    barrier(dist_info)
    return RunContext(config, device, dist_info, run_dir, console, resumed=resume_dir is not None)


@contextlib.contextmanager
def running(config: RunConfig, resume_dir: Path | None = None) -> Iterator[RunContext]:
    """:func:`start_run`, then the caller's work; an error marks the run directory failed
    (``failed.json``: what stopped it, so a re-run with the same name says so and offers
    ``--resume`` or ``--replace``), and the process group is always shut down."""
    ctx = start_run(config, resume_dir)
    try:
        yield ctx
    except BaseException as error:
        if ctx.dist.is_main:
            with contextlib.suppress(OSError):  # the error being raised matters more
                mark_failed(ctx.run_dir, error)
        raise
    finally:
        shutdown(ctx.dist)


def config_for_resume(resume_dir: Path, track: str, method: str) -> RunConfig:
    """The stored configuration of ``resume_dir``; it must belong to ``track/method``."""
    if not (resume_dir / "config.yaml").is_file():
        raise HundredError(f"--resume {resume_dir}: not a run directory (no config.yaml)")
    config = build_config([resume_dir / "config.yaml"])
    if (config.track, config.method) != (track, method):
        raise HundredError(f"--resume {resume_dir} is a {config.track}/{config.method} run, "
                           f"not {track}/{method}")
    return config


def load_data(config: RunConfig) -> Dataset:
    """The run's dataset: a packed directory or a built-in/array source, decoded, restricted to
    ``data.classes``. ``info["fingerprint"]`` records its identity (summaries copy it).

    An evaluation run of the tune-then-evaluate protocol refuses data whose fingerprint is
    that of the data its parameters were tuned on (honest by construction: docs/design.md,
    principle 5).
    """
    dataset = load_selection(config.data.source, config.data.classes, config.data.options)
    dataset.info["fingerprint"] = fingerprint(dataset)
    provenance = config.provenance
    if provenance.phase == "evaluation" and dataset.info["fingerprint"] == provenance.tuning_fingerprint:
        raise HundredError(f"{dataset.name} is the data the parameters were tuned on "
                           f"({provenance.tuned_on}); the evaluation phase must use other data")
    return dataset


def image_size(config: RunConfig, dataset: Dataset) -> int:
    """The model's input size: ``data.image_size``, else the training images' resolution."""
    return config.data.image_size or dataset.arrays("train").resolution[0]


def device_budget_bytes(config: RunConfig) -> int | None:
    budget = config.data.device_budget_gb
    return None if budget is None else int(budget * 2**30)


def train_loader(ctx: RunContext, dataset: Dataset, indices: np.ndarray | None = None,
                 seed_offset: int = 0, views: int = 1,
                 loader_class: type[BatchLoader] = BatchLoader, **loader_options: Any
                 ) -> BatchLoader:
    """Shuffled, augmented batches of the train split (this rank's shard under DDP); with
    ``views`` > 1, each batch holds that many independently augmented views of its images.
    ``loader_class`` (a :class:`BatchLoader` subclass) and its own ``loader_options`` let a
    method yield something else per batch (e.g. stored views and soft targets).

    With ``data.label_fraction`` < 1 only that class-balanced subset of the train split
    (:func:`~hundred.data.subset.label_fraction_indices`) is used; the caller's ``indices``
    (e.g. a task's classes) keep their order and keep only the samples in the subset."""
    config = ctx.config
    # per-view recipes (``view_augments``, one spec per view) replace data.augment
    augment = None if loader_options.get("view_augments") else config.data.augment
    if config.data.batch_size % ctx.dist.world_size:
        raise HundredError(f"data.batch_size={config.data.batch_size} must divide evenly over "
                           f"{ctx.dist.world_size} processes")
    train = dataset.arrays("train")
    if config.data.label_fraction < 1:
        subset = label_fraction_indices(train.labels, config.data.label_fraction,
                                        config.data.label_fraction_seed)
        ctx.console.print(f"data.label_fraction={config.data.label_fraction}: training on "
                          f"{len(subset)} of {len(train)} images", highlight=False)
        if indices is None:
            indices = subset
        else:
            indices = np.asarray(indices, dtype=np.int64)
            indices = indices[np.isin(indices, subset)]
    return loader_class(train,
                        batch_size=config.data.batch_size // ctx.dist.world_size,
                        shuffle=True, drop_last=True, seed=config.seed + seed_offset, views=views,
                        device=ctx.device,
                        augment=augment,
                        out_size=config.data.image_size, mean=config.data.mean,
                        std=config.data.std, indices=indices,
                        rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                        device_budget_bytes=device_budget_bytes(config), **loader_options)


def eval_loader(ctx: RunContext, dataset: Dataset, split_name: str = "val",
                indices: np.ndarray | None = None) -> BatchLoader:
    """Every sample of ``split_name`` once, in order, without augmentation."""
    config = ctx.config
    return BatchLoader(dataset.arrays(split_name), batch_size=config.data.eval_batch_size,
                       shuffle=False, drop_last=False, seed=config.seed, device=ctx.device,
                       train=False, out_size=config.data.image_size, mean=config.data.mean,
                       std=config.data.std, indices=indices,
                       device_budget_bytes=device_budget_bytes(config))


def fit(ctx: RunContext, model: torch.nn.Module, method: Any, loader: Any, dataset: Dataset
        ) -> tuple[Any, Any]:
    """Train ``model`` with ``method`` on ``loader`` under the run's config, validating on
    ``dataset``'s val split (main process only); a resumed run continues from its newest
    checkpoint. Returns the :class:`~hundred.engine.trainer.Trainer` and its fit result."""
    from hundred.engine.trainer import Trainer

    trainer = Trainer(ctx.config, model, method, loader,
                      eval_loader(ctx, dataset) if ctx.dist.is_main else None,
                      ctx.device, ctx.run_dir, ctx.dist, ctx.console)
    if ctx.resumed and trainer.resume():
        ctx.console.print(f"resumed {ctx.run_dir} after epoch {trainer.start_epoch}")
    return trainer, trainer.fit()


def settings_digest(config: RunConfig) -> str:
    """A short hash of everything in ``config`` that changes results, except the seed
    (:func:`~hundred.config.result_settings`): runs with the same digest differ only by seed,
    so reports may average them."""
    from hundred.registry import get_track

    try:  # the upstream runs an experiment takes one of per seed (Track.seed_paired)
        paired = get_track(config.track).seed_paired
    except HundredError:
        paired = ()
    text = json.dumps(result_settings(config, paired), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def finish_run(ctx: RunContext, summary: dict[str, Any], title: str,
               dataset: Dataset | None = None) -> dict[str, Any]:
    """Write ``summary.json`` (rank 0), print the results table; returns the full summary.

    Every summary records the run's scenario (``Track.scenario_label``, None for tracks
    without one), its provenance (protocol, phase, study, trial, tuned_on, tuned_params...)
    and, given ``dataset``, its ``data_fingerprint``."""
    from hundred.registry import get_track

    provenance = ctx.config.provenance.model_dump(mode="json")
    if dataset is not None:
        provenance["data_fingerprint"] = dataset.info.get("fingerprint")
    summary = {"track": ctx.config.track, "method": ctx.config.method,
               "scenario": get_track(ctx.config.track).scenario_label(ctx.config),
               "run_dir": str(ctx.run_dir), "seed": ctx.config.seed,
               "settings": settings_digest(ctx.config),
               "wall_seconds": round(time.perf_counter() - ctx.started, 2), **provenance, **summary}
    if ctx.dist.is_main:
        write_json(ctx.run_dir / "summary.json", summary)
        (ctx.run_dir / FAILED).unlink(missing_ok=True)
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            if isinstance(value, (int, float, str)) and key not in ("track", "method",
                                                                    "data_fingerprint",
                                                                    "tuning_fingerprint"):
                table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
        table_console().print(table)
    return summary
