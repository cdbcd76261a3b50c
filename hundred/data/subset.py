"""Class subsets, label-fraction subsets and data identity.

Why: the tune-then-evaluate protocol (Cha & Cho, "Hyperparameters in Continual Learning: a
Reality Check", TMLR 2025) tunes on one dataset and evaluates on another with the same
scenario; one way to get two is to split one source into class-disjoint halves (CIFAR-100
classes 0-49 vs 50-99 in the paper). :func:`select_classes` makes such a half a dataset of
its own, and :func:`fingerprint` gives every loaded dataset an identity that runs record, so
"the evaluation never saw the tuning data" can be checked rather than trusted.

:func:`label_fraction_indices` is the semi-supervised protocol's labelled subset (e.g. the 1%
and 10% ImageNet subsets of SimCLR, Chen et al., ICML 2020): the same share of every class,
drawn once from a seed of its own, so that runs of several seeds train on the same images.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from hundred.data.dataset import ArraySplit, Dataset
from hundred.errors import HundredError

# images hashed per split by :func:`fingerprint`: enough to tell datasets apart, cheap at
# ImageNet scale (the labels, class ids and shapes are hashed in full)
FINGERPRINT_SAMPLES = 64


def select_classes(dataset: Dataset, classes: list[int], label: str) -> Dataset:
    """The samples of ``classes`` (dataset labels), relabelled ``0..K-1`` in ascending order.

    The kept images are copied into memory (a boolean index of a memory-mapped array reads
    them once); class ids and names follow the kept classes; the name becomes
    ``<name>[<label>]`` so reports tell the halves of one source apart.
    """
    if not classes:
        raise HundredError(f"data.classes selects no class of {dataset.name}")
    beyond = [c for c in classes if not 0 <= c < dataset.num_classes]
    if beyond:
        raise HundredError(f"data.classes={label}: {dataset.name} has {dataset.num_classes} "
                           f"classes (0..{dataset.num_classes - 1}), so {beyond[:5]} do not exist")
    kept = np.asarray(sorted(classes), dtype=np.int64)
    new_label = np.full(dataset.num_classes, -1, dtype=np.int64)
    new_label[kept] = np.arange(len(kept))
    splits: dict[str, ArraySplit] = {}
    for name in dataset.splits:
        split = dataset.arrays(name)
        mask = new_label[split.labels] >= 0
        splits[name] = ArraySplit(np.ascontiguousarray(split.images[mask]),
                                  new_label[split.labels[mask]])
    info = {**dataset.info, "class_selection": label, "parent": dataset.name}
    return Dataset(f"{dataset.name}[{label}]", [dataset.class_ids[c] for c in kept],
                   [dataset.class_names[c] for c in kept], splits, dataset.skipped, info)


def label_fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted int64 indices of a class-balanced ``fraction`` of the samples with ``labels``.

    Each class ``c`` with ``n_c`` samples keeps ``round(fraction * n_c)`` of them (halves
    rounded up), at least one and at most ``n_c``, chosen by a permutation drawn from a
    generator seeded with ``(seed, c)``. So the subset depends only on the labels, the
    fraction and ``seed`` (never on the run seed); a class's choice does not depend on the
    other classes; and for one seed a smaller fraction is a subset of a larger one. Fraction
    1 keeps every sample.
    """
    if not 0 < fraction <= 1:
        raise HundredError(f"label fraction must lie in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(sizes)[:-1])
    kept = [np.zeros(0, dtype=np.int64)]
    for label, members in zip(classes.tolist(), by_class):  # members: ascending indices
        count = min(len(members), max(1, math.floor(fraction * len(members) + 0.5)))
        order = np.random.default_rng([seed, label]).permutation(len(members))
        kept.append(members[order[:count]])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def fingerprint(dataset: Dataset) -> str:
    """A short sha256 identity of a decoded dataset: its name, class ids, split shapes, every
    label and an evenly spaced sample of images per split. Equal data give equal
    fingerprints; a different class set, subset or source gives a different one."""
    digest = hashlib.sha256()
    header = {"name": dataset.name, "class_ids": list(dataset.class_ids),
              "splits": {name: list(dataset.arrays(name).images.shape)
                         for name in sorted(dataset.splits)}}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(dataset.splits):
        split = dataset.arrays(name)
        digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
        if len(split):
            rows = np.unique(np.linspace(0, len(split) - 1, FINGERPRINT_SAMPLES).astype(np.int64))
            digest.update(np.ascontiguousarray(split.images[rows]).tobytes())
    return digest.hexdigest()[:16]
