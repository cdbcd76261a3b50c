"""Dataset reinforcement: store a teacher ensemble's knowledge next to a packed dataset once,
then train any student on it without running a teacher.

Faghri, Pouransari, Mehta, Farajtabar, Farhadi, Rastegari & Tuzel, "Reinforce Data, Multiply
Impact: Improved Model Accuracy and Robustness with Dataset Reinforcement" (ICCV 2023,
arXiv 2303.08983). For every training image, ``NS`` augmentations are drawn; the ensemble's
class distribution for each augmented view (the mean of the teachers' softmax) is stored
sparsely as its top-``k`` probabilities and classes (``k = 10`` in the paper), together with
the augmentation's parameters (not its pixels). Training (``methods/dr.py``) replays one
stored augmentation per image and epoch and fits the densified stored distribution.

``hundred data reinforce PACKED --teacher SPEC[,SPEC...] --samples NS [--topk K]`` writes
``PACKED-reinforced/`` (or ``--out``), a directory of data derived from the pack
(:mod:`hundred.data.pack`, "derived data"):

* ``topk_probs.npy`` float32 ``(N, NS, K)``: the ensemble's top-``K`` probabilities,
  descending; ``topk_classes.npy`` int16/int32 ``(N, NS, K)``: their classes;
* ``aug<i>_<key>.npy`` ``(N, NS, ...)``: parameter ``key`` of augmentation step ``i``, as its
  ``sample`` drew it (e.g. a random-resized-crop's box ``x0, y0, w, h`` and ``flip``);
* ``meta.json``: the format, the pack it belongs to (relative path and fingerprint), the
  teachers, ``NS``, ``K``, the augmentation (spec, output size, normalisation), the seed, and
  the sha256, dtype and shape of every array. Written last, in a sibling ``.partial-<pid>``
  directory renamed into place, so a killed run leaves nothing under the final name.

``--data PACKED-reinforced`` loads the pack it belongs to (``info["derived"]`` points back);
:func:`open_reinforcement` checks every array (size, sha256, dtype, shape), the fields of
meta.json and that the data is the data it was made from (fingerprint), and refuses anything
else with one line.

Why the views replay exactly: every augmentation step of :mod:`hundred.data.augment` is split
into ``sample`` (draw per-image parameters) and ``apply``; :func:`augment_views` draws and
applies, :func:`replay_views` applies stored parameters, and both run the same pipeline code
on the same packed uint8 pixels, so the student sees the very tensor the teachers labelled.
Steps that draw a per-batch choice (colour jitter's random order) cannot be replayed per
image and are refused.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hundred.data.augment import Augment, Params, Resize, build_augment, to_nchw
from hundred.data.loader import BatchLoader, LoaderBatch
from hundred.errors import HundredError
from hundred.io import check_replaceable, publish_directory

FORMAT = "hundred-reinforced"
FORMAT_VERSION = 1
DEFAULT_AUGMENT = "rrc-flip"  # the paper's ImageNet+ "RRC" reinforcement: crop + flip
DEFAULT_TOPK = 10  # the sparsification of the official configs: top-10 of the ensemble
PROBS = "topk_probs.npy"
CLASSES = "topk_classes.npy"
# a per-epoch stream of its own for the replay choices, apart from the loader's other draws
_CHOICE_STREAM = 0x4452


# ------------------------------------------------------------------------------- the views


def _unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as float in [0, 1] (exactly as :class:`~hundred.data.augment.Augment`)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images if images.is_floating_point() else images.to(torch.float32)


def _pipeline(augment: Augment, images: torch.Tensor,
              params_of: Callable[[int, Any, torch.Tensor], Params]
              ) -> tuple[torch.Tensor, list[Params]]:
    """``augment`` on a packed uint8 batch with each step's parameters from ``params_of``:
    the steps of :meth:`Augment.__call__`, in its order, with its float conversion, final
    resize and normalisation; returns the views and the parameters used."""
    views = to_nchw(images)
    used: list[Params] = []
    for index, op in enumerate(augment.ops):
        if op.needs_float:
            views = _unit_float(views)
        params = params_of(index, op, views)
        views = op.apply(views, params)
        used.append(params)
    if tuple(views.shape[-2:]) != augment.out_size:
        views = Resize(augment.out_size).apply(_unit_float(views), {})
    return augment.normalize(views), used


def augment_views(augment: Augment, images: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, list[Params]]:
    """Augmented views of a packed uint8 batch ``(B, H, W, 3)`` and, per step, the per-image
    parameters drawn from ``generator``."""
    return _pipeline(augment, images, lambda _, op, views: op.sample(views, generator))


def replay_views(augment: Augment, images: torch.Tensor, params: Sequence[Params]
                 ) -> torch.Tensor:
    """The views :func:`augment_views` made from ``images`` with these ``params`` (one dict
    per step, each value with a row per image), pixel for pixel."""
    if len(params) != len(augment.ops):
        raise HundredError(f"{len(params)} stored augmentation steps for a pipeline of "
                           f"{len(augment.ops)}")
    return _pipeline(augment, images, lambda index, op, views: params[index])[0]


def check_replayable(augment: Augment, resolution: tuple[int, int]) -> None:
    """Refuse a pipeline that does not run on packed images of ``resolution`` or has a step
    whose parameters are not all per image (a per-batch choice, like colour jitter's random
    order, cannot be stored per image)."""
    generator = torch.Generator().manual_seed(0)
    for batch in (2, 3):  # a per-batch value cannot have a row per image at both sizes
        probe = torch.zeros((batch, *resolution, 3), dtype=torch.uint8)
        try:
            _, used = augment_views(augment, probe, generator)
        except (ValueError, RuntimeError) as error:
            raise HundredError(f"the augmentation does not run: {error}") from None
        for index, params in enumerate(used):
            for key, value in params.items():
                if not isinstance(value, torch.Tensor) or value.ndim == 0 \
                        or value.shape[0] != batch:
                    name = type(augment.ops[index]).__name__
                    raise HundredError(
                        f"augmentation step {index} ({name}) draws {key!r} once per batch, not "
                        f"per image, so its views cannot be stored and replayed per image "
                        f"(for colour jitter: random_order: false does not help, drop the step)")


# ------------------------------------------------------------------------------ the labels


def ensemble_probabilities(teachers: Sequence[torch.nn.Module], views: torch.Tensor
                           ) -> torch.Tensor:
    """The teacher ensemble's class distribution: the mean of the teachers' softmax (float32),
    as the official code's ensemble averages probabilities, not logits."""
    total = None
    for teacher in teachers:
        probabilities = F.softmax(teacher(views).float(), dim=1)
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / len(teachers)


def densify(probs: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense ``(B, C)`` targets from stored top-``k`` probabilities and classes ``(B, k)``:
    the stored classes keep their probabilities and the mass left over, ``1 - sum(top-k)``,
    is spread evenly over the other ``C - k`` classes (the official code's ``smooth``
    densification). Each row is renormalised to sum to one, which absorbs float rounding
    (where the official code meets a top-``k`` summing above one it takes a softmax of the
    probabilities instead; renormalising is what that case means)."""
    probs = probs.float()
    batch, k = probs.shape
    rest = (1.0 - probs.sum(dim=1, keepdim=True)).clamp_min(0.0)
    others = num_classes - k
    fill = rest / others if others > 0 else torch.zeros_like(rest)
    dense = fill.expand(batch, num_classes).clone()
    dense.scatter_(1, classes.long(), probs)
    return dense / dense.sum(dim=1, keepdim=True)


def replay_choices(seed: int, epoch: int, count: int, samples: int, probability: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For every image index ``0..count-1`` in ``epoch``: which of its ``samples`` stored
    augmentations it uses, and whether it uses one at all (with ``probability``; otherwise it
    is trained on a fresh augmentation and its hard label). A pure function of ``(seed,
    epoch, index)``: independent of the order, the batch and the DDP rank, so exact resume
    holds."""
    rng = np.random.default_rng([seed, epoch, _CHOICE_STREAM])
    chosen = rng.integers(0, samples, size=count)
    replayed = rng.random(count) < probability
    return chosen, replayed


# ------------------------------------------------------------------------- the reinforcement


@dataclass
class Reinforcement:
    """An opened, checked reinforcement: its meta.json and arrays (memory-mapped)."""

    dir: Path
    meta: dict[str, Any]
    probs: np.ndarray
    classes: np.ndarray
    params: list[dict[str, np.ndarray]]

    @property
    def samples(self) -> int:
        return int(self.meta["samples"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.meta["augment"]["image_size"])

    @property
    def teachers(self) -> list[str]:
        return list(self.meta["teachers"])

    def augment(self) -> Augment:
        """The pipeline the stored views were drawn from."""
        spec = self.meta["augment"]
        return build_augment(spec["spec"], spec["image_size"], spec["mean"], spec["std"])

    def views(self, augment: Augment, images: torch.Tensor, indices: np.ndarray,
              chosen: np.ndarray) -> torch.Tensor:
        """Stored view ``chosen[j]`` of image ``indices[j]`` (its uint8 pixels: ``images[j]``)."""
        device = images.device
        params = [{key: torch.from_numpy(np.asarray(array[indices, chosen])).to(device)
                   for key, array in step.items()} for step in self.params]
        return replay_views(augment, images, params)

    def targets(self, indices: np.ndarray, chosen: np.ndarray, device: torch.device
                ) -> torch.Tensor:
        """Dense soft targets ``(B, C)`` of view ``chosen[j]`` of image ``indices[j]``."""
        probs = torch.from_numpy(np.asarray(self.probs[indices, chosen])).to(device)
        classes = torch.from_numpy(np.asarray(self.classes[indices, chosen]).astype(np.int64))
        return densify(probs, classes.to(device), self.num_classes)


def _field(meta: dict[str, Any], key: str, ok: Callable[[Any], bool], expected: str,
           where: Path) -> Any:
    value = meta.get(key)
    if not ok(value):
        raise HundredError(f"{where / 'meta.json'}: {key} must be {expected}, got {value!r} "
                           f"(edited or damaged: reinforce again)")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def open_reinforcement(path: str | os.PathLike, fingerprint: str | None = None
                       ) -> Reinforcement:
    """The reinforcement at ``path``, every array checked against meta.json (size, sha256,
    dtype, shape, via :func:`hundred.data.pack.load_derived`), its fields and shapes checked
    against each other, and, given ``fingerprint``, refused unless it was made from that
    data."""
    from hundred.data.pack import load_derived

    path = Path(path).expanduser()
    meta, arrays = load_derived(path)
    if meta["format"] != FORMAT:
        raise HundredError(f"{path} holds {meta['format']} data, not a dataset reinforcement "
                           f"({FORMAT})")
    version = _field(meta, "format_version", _is_count, "an integer >= 1", path)
    if version > FORMAT_VERSION:
        raise HundredError(f"{path} was written by a newer hundred (format version {version}); "
                           f"upgrade hundred to read it")
    samples = _field(meta, "samples", _is_count, "an integer >= 1", path)
    topk = _field(meta, "topk", _is_count, "an integer >= 1", path)
    classes = _field(meta, "num_classes", _is_count, "an integer >= 1", path)
    _field(meta, "teachers", lambda v: isinstance(v, list) and v
           and all(isinstance(s, str) for s in v), "a non-empty list of teacher specs", path)
    _field(meta, "augment", lambda v: isinstance(v, dict) and {
        "spec", "image_size", "mean", "std"} <= set(v), "an object (spec, image_size, mean, std)",
        path)
    steps = _field(meta, "params", lambda v: isinstance(v, list) and all(
        isinstance(step, dict) and all(isinstance(name, str) for name in step.values())
        for step in v), "a list of {parameter: array file} per augmentation step", path)
    count = meta["packed"].get("count")
    if not _is_count(count):
        raise HundredError(f"{path / 'meta.json'}: packed.count must be an integer >= 1")
    expected = {PROBS: (count, samples, topk), CLASSES: (count, samples, topk)}
    for step in steps:
        for name in step.values():
            if name not in arrays:
                raise HundredError(f"{path / 'meta.json'}: params names {name}, which is not "
                                   f"among its files")
    for name, shape in expected.items():
        if name not in arrays or tuple(arrays[name].shape) != shape:
            found = tuple(arrays[name].shape) if name in arrays else "missing"
            raise HundredError(f"{path}: {name} is {found}, expected {shape} (images, samples, "
                               f"top-k)")
    for step in steps:
        for name in step.values():
            if tuple(arrays[name].shape[:2]) != (count, samples):
                raise HundredError(f"{path}: {name} has shape {list(arrays[name].shape)}, "
                                   f"expected ({count}, {samples}, ...) (images, samples)")
    labels = arrays[CLASSES]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise HundredError(f"{path}: {CLASSES} holds classes outside [0, {classes})")
    if fingerprint is not None and meta["packed"]["fingerprint"] != fingerprint:
        raise HundredError(
            f"{path} was made from data with fingerprint {meta['packed']['fingerprint']} "
            f"({meta['packed'].get('name')}, all classes); this run's data has {fingerprint} "
            f"(a class selection, data.classes, or a different pack): reinforce the data you "
            f"train on")
    reinforcement = Reinforcement(path, meta, arrays[PROBS], arrays[CLASSES],
                                  [{key: arrays[name] for key, name in step.items()}
                                   for step in steps])
    try:
        built = reinforcement.augment()
    except HundredError as error:
        raise HundredError(f"{path / 'meta.json'}: augment: {error}") from None
    if len(built.ops) != len(steps):
        raise HundredError(f"{path / 'meta.json'}: {len(steps)} stored augmentation steps, "
                           f"augment.spec has {len(built.ops)}")
    return reinforcement


# ---------------------------------------------------------------------------- the loader


class ReinforcedLoader(BatchLoader):
    """A :class:`BatchLoader` whose batches are ``(views, soft_targets)``: each image replays
    one of its stored augmentations and gets that view's densified stored distribution,
    ``(B, C)`` float; with probability ``1 - replay_probability`` it gets the run's own
    augmentation and its one-hot label instead (as the official training does). Order,
    sharding, the run's own augmentation and resume are the base loader's; the stored view
    an image uses is drawn by :func:`replay_choices` from ``(seed, epoch, index)``."""

    def __init__(self, *args: Any, reinforcement: Reinforcement, replay_probability: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.num_views != 1:
            raise HundredError("a reinforced dataset yields one view per image")
        self.reinforcement = reinforcement
        self.replay_probability = float(replay_probability)
        self.stored_augment = reinforcement.augment()
        self._choices: tuple[int, np.ndarray, np.ndarray] | None = None
        self._order: tuple[int, np.ndarray] | None = None

    def _epoch_choices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._choices is None or self._choices[0] != epoch:
            count = int(self.reinforcement.probs.shape[0])
            self._choices = (epoch, *replay_choices(self.seed, epoch, count,
                                                    self.reinforcement.samples,
                                                    self.replay_probability))
        return self._choices[1], self._choices[2]

    def batch_indices(self, epoch: int, batch: int) -> np.ndarray:
        """The source indices of batch ``batch`` of ``epoch`` on this rank."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_indices(epoch))
        return self._order[1][batch * self.batch_size:(batch + 1) * self.batch_size]

    def _make_batch(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int,
                    generator: torch.Generator) -> LoaderBatch:
        indices = self.batch_indices(epoch, batch)
        all_chosen, all_replayed = self._epoch_choices(epoch)
        chosen, replayed = all_chosen[indices], all_replayed[indices]
        targets = F.one_hot(labels.long(), self.reinforcement.num_classes).float()
        if replayed.all():  # the common case (p = 0.99): no split, no copy
            views = self.reinforcement.views(self.stored_augment, images, indices, chosen)
            return views, self.reinforcement.targets(indices, chosen, images.device)
        device = images.device
        fresh_rows = torch.from_numpy(np.flatnonzero(~replayed)).to(device)
        generator.manual_seed(self._augment_seed(epoch, batch))
        fresh = self.augment(images[fresh_rows], generator)
        views = fresh.new_empty((len(indices), *fresh.shape[1:]))
        views[fresh_rows] = fresh
        if replayed.any():
            rows = torch.from_numpy(np.flatnonzero(replayed)).to(device)
            views[rows] = self.reinforcement.views(self.stored_augment, images[rows],
                                                   indices[replayed], chosen[replayed])
            targets[rows] = self.reinforcement.targets(indices[replayed], chosen[replayed],
                                                       device)
        return views, targets


# ----------------------------------------------------------------------------- reinforce


def default_out(packed: Path) -> Path:
    """Where ``hundred data reinforce PACKED`` writes without ``--out``: next to the pack."""
    return packed.with_name(f"{packed.name}-reinforced")


def _is_reinforcement(path: Path) -> bool:
    import json

    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _check_out(out: Path, force: bool) -> None:
    check_replaceable(out, force, _is_reinforcement, "dataset reinforcement")


def _sample_seed(seed: int, batch: int, sample: int) -> int:
    words = np.random.SeedSequence([seed, batch, sample]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def reinforce(packed: str | os.PathLike, teachers: Sequence[str], samples: int, *,
              topk: int | None = None, out: str | os.PathLike | None = None,
              augment: str = DEFAULT_AUGMENT, image_size: int | None = None,
              batch_size: int = 256, device: str = "auto", seed: int = 0, force: bool = False,
              quiet: bool = False) -> Path:
    """Reinforce the train split of the packed dataset ``packed``: for every image, ``samples``
    augmentations of ``augment`` (a preset or step list of :mod:`hundred.data.augment`) at
    ``image_size`` (default: the packed resolution), each labelled with the top-``topk``
    probabilities of the mean softmax of ``teachers`` (RUN_DIR or timm:NAME:PATH each;
    ``topk=None``: 10, as the paper, or every class of a smaller dataset).
    Everything is checked (the pack, the teachers, the augmentation, the output path) before
    anything is written; the result is published atomically. Returns the directory."""
    from hundred.config import DataConfig
    from hundred.data import fingerprint
    from hundred.data.pack import is_packed, load_packed, packed_path, record_arrays
    from hundred.engine.trainer import resolve_device
    from hundred.io import write_json
    from hundred.tracks.classify.teacher import load_teacher

    started = time.time()
    for name, value in (("--samples", samples), ("--topk", topk), ("--batch-size", batch_size)):
        if not _is_count(value) and not (name == "--topk" and value is None):
            raise HundredError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HundredError(f"--seed must be an integer >= 0, got {seed!r}")
    specs = [spec.strip() for spec in teachers if spec.strip()]
    if not specs:
        raise HundredError("--teacher: give at least one teacher (RUN_DIR or timm:NAME:PATH)")
    path = packed_path(packed)
    if path is None or not is_packed(path):
        raise HundredError(f"{packed} is not packed data: reinforce a directory written by "
                           f"`hundred data pack SOURCE --res R --out DIR`")
    path = path.absolute()
    dataset = load_packed(path)
    if "train" not in dataset.splits:
        raise HundredError(f"{path} has no train split to reinforce")
    train = dataset.arrays("train")
    if topk is None:
        topk = min(DEFAULT_TOPK, dataset.num_classes)
    if topk > dataset.num_classes:
        raise HundredError(f"--topk {topk} is more than the {dataset.num_classes} classes of "
                           f"{dataset.name}")
    size = int(image_size or train.resolution[0])
    defaults = DataConfig()
    pipeline = build_augment(augment, size, defaults.mean, defaults.std)
    check_replayable(pipeline, train.resolution)
    target = Path(out).expanduser().absolute() if out is not None else default_out(path)
    _check_out(target, force)
    models = [load_teacher(spec, dataset.num_classes, dataset.name, size) for spec in specs]
    run_device = resolve_device(device)
    models = [model.to(run_device) for model in models]

    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as error:
        raise HundredError(f"cannot write next to {target}: {error}") from None
    try:
        meta = _write_reinforcement(
            partial, train.images, models, pipeline, samples, topk, batch_size, run_device,
            seed, dataset.num_classes, quiet)
        files = record_arrays(partial, [PROBS, CLASSES] + [
            name for step in meta["params"] for name in step.values()])
        from hundred import __version__

        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "packed": {"path": os.path.relpath(path, target),
                       "name": dataset.name, "fingerprint": fingerprint(dataset),
                       "split": "train", "count": len(train)},
            "teachers": specs, "samples": samples, "topk": topk,
            "num_classes": dataset.num_classes,
            "augment": {"spec": augment, "image_size": size, "mean": list(defaults.mean),
                        "std": list(defaults.std)},
            "params": meta["params"], "seed": seed, "files": files,
            "hundred_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 2),
        }
        write_json(partial / "meta.json", meta)  # last: its presence marks a finished run
        _publish(partial, target, force)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not quiet:
        print(f"reinforced {dataset.name} train ({len(train)} images x {samples} views, top-"
              f"{topk} of {len(specs)} teacher(s)) into {target} ({meta['seconds']:.1f} s)")
    return target


@torch.inference_mode()
def _write_reinforcement(partial: Path, images: np.ndarray, teachers: list[torch.nn.Module],
                         pipeline: Augment, samples: int, topk: int, batch_size: int,
                         device: torch.device, seed: int, num_classes: int, quiet: bool
                         ) -> dict[str, Any]:
    """Fill the arrays in ``partial`` batch by batch (memory-mapped: bounded memory); returns
    ``{"params": [{key: file} per step]}``."""
    from rich.progress import Progress

    count = len(images)
    class_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
    probs = np.lib.format.open_memmap(partial / PROBS, mode="w+", dtype=np.float32,
                                      shape=(count, samples, topk))
    classes = np.lib.format.open_memmap(partial / CLASSES, mode="w+", dtype=class_dtype,
                                        shape=(count, samples, topk))
    stored: list[dict[str, np.ndarray]] = [{} for _ in pipeline.ops]
    generator = torch.Generator(device=device)
    with Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task("reinforce", total=count * samples)
        for batch, start in enumerate(range(0, count, batch_size)):
            pixels = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)
            rows = slice(start, start + len(pixels))
            for sample in range(samples):
                generator.manual_seed(_sample_seed(seed, batch, sample))
                views, used = augment_views(pipeline, pixels, generator)
                top = ensemble_probabilities(teachers, views).topk(topk, dim=1)
                probs[rows, sample] = top.values.cpu().numpy()
                classes[rows, sample] = top.indices.cpu().numpy().astype(class_dtype)
                for index, params in enumerate(used):
                    for key, value in params.items():
                        value = value.cpu().numpy()
                        if key not in stored[index]:
                            stored[index][key] = np.lib.format.open_memmap(
                                partial / f"aug{index}_{key}.npy", mode="w+", dtype=value.dtype,
                                shape=(count, samples, *value.shape[1:]))
                        stored[index][key][rows, sample] = value
                progress.advance(task, len(pixels))
    for array in (probs, classes, *(a for step in stored for a in step.values())):
        array.flush()
    return {"params": [{key: f"aug{index}_{key}.npy" for key in step}
                       for index, step in enumerate(stored)]}


def _publish(partial: Path, out: Path, force: bool) -> None:
    publish_directory(partial, out, force, _is_reinforcement, "dataset reinforcement")


def run_command(args: Any) -> None:
    """``hundred data reinforce`` (argparse namespace from :mod:`.cli`)."""
    reinforce(args.packed, args.teacher.split(","), args.samples, topk=args.topk, out=args.out,
              augment=args.augment, image_size=args.image_size, batch_size=args.batch_size,
              device=args.device, seed=args.seed, force=args.force, quiet=args.quiet)


__all__ = ["FORMAT", "Reinforcement", "ReinforcedLoader", "augment_views", "check_replayable",
           "densify", "ensemble_probabilities", "open_reinforcement", "reinforce",
           "replay_choices", "replay_views"]
