"""``data.label_fraction``: training on a class-balanced, seeded share of the train split,
the same for every run seed, in every track (it is applied by ``engine.run.train_loader``);
validation is never subsampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.data.subset import label_fraction_indices
from hundred.engine.distributed import DistInfo
from hundred.engine.run import RunContext, load_data, train_loader
from hundred.errors import HundredError
from hundred.tracks.classify import TRACK
from hundred.engine import run as engine_run
from hundred.tracks.classify.methods.erm import ERM

# classes of 10, 20, 7 and 1 samples, interleaved as a real split is
SIZES = (10, 20, 7, 1)
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(4), SIZES))


def per_class(indices: np.ndarray) -> list[int]:
    return np.bincount(LABELS[indices], minlength=len(SIZES)).tolist()


@pytest.mark.parametrize("fraction, expected", [
    (0.1, [1, 2, 1, 1]),    # 0.7 rounds to 1; a class never drops to none
    (0.5, [5, 10, 4, 1]),   # 3.5 rounds up
    (0.25, [3, 5, 2, 1]),   # 2.5 rounds up to 3, 1.75 to 2, 0.25 to the minimum 1
])
def test_every_class_keeps_its_rounded_share(fraction, expected):
    indices = label_fraction_indices(LABELS, fraction, seed=0)
    assert per_class(indices) == expected
    assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)  # sorted, no repeats


def test_the_subset_is_a_function_of_its_seed():
    first, again = (label_fraction_indices(LABELS, 0.3, seed=7) for _ in range(2))
    assert np.array_equal(first, again)
    other = label_fraction_indices(LABELS, 0.3, seed=8)
    assert per_class(other) == per_class(first) and not np.array_equal(other, first)
    # one seed: a smaller fraction is part of a larger one
    assert set(label_fraction_indices(LABELS, 0.1, seed=7)) <= set(first)


def test_fraction_one_keeps_every_sample_and_others_are_refused():
    assert np.array_equal(label_fraction_indices(LABELS, 1.0), np.arange(len(LABELS)))
    with pytest.raises(HundredError, match=r"\(0, 1\]"):
        label_fraction_indices(LABELS, 0.0)
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(HundredError, match="label_fraction"):
            build_config(overrides=["track=classify", f"data.label_fraction={bad}"])


class Recorded(BatchLoader):
    """A loader that remembers the indices it was given."""

    def __init__(self, *args, **kwargs):
        self.given = kwargs.get("indices")
        super().__init__(*args, **kwargs)


def small(tmp_path: Path, *extra: str):
    return build_config(overrides=[
        "track=classify", "train.device=cpu", "data.batch_size=4", f"root={tmp_path}",
        "data.options={classes: 5, train_per_class: 20, val_per_class: 3, res: 8}", *extra])


def loader_of(tmp_path: Path, *extra: str, indices: np.ndarray | None = None) -> Recorded:
    config = small(tmp_path, *extra)
    context = RunContext(config, torch.device("cpu"), DistInfo(), tmp_path,
                         Console(quiet=True))
    return train_loader(context, load_data(config), indices=indices, loader_class=Recorded)


def train_labels(tmp_path: Path) -> np.ndarray:
    return load_data(small(tmp_path)).arrays("train").labels


def test_train_loader_uses_the_subset_whatever_the_run_seed(tmp_path):
    full = loader_of(tmp_path)
    assert full.given is None and full.num_samples == 100  # fraction 1: the split unchanged
    subsets = [loader_of(tmp_path, "data.label_fraction=0.1", f"seed={seed}")
               for seed in (0, 1)]
    assert [loader.num_samples for loader in subsets] == [10, 10]
    assert np.array_equal(subsets[0].given, subsets[1].given)  # shared by the run seeds
    labels = train_labels(tmp_path)
    assert np.bincount(labels[subsets[0].given], minlength=5).tolist() == [2] * 5
    reseeded = loader_of(tmp_path, "data.label_fraction=0.1", "data.label_fraction_seed=3")
    assert not np.array_equal(reseeded.given, subsets[0].given)


def test_caller_indices_keep_their_order_and_only_the_subset(tmp_path):
    subset = loader_of(tmp_path, "data.label_fraction=0.2").given
    task = np.flatnonzero(train_labels(tmp_path) < 2)[::-1].copy()  # a task: classes 0, 1
    loader = loader_of(tmp_path, "data.label_fraction=0.2", indices=task)
    assert np.array_equal(loader.given, task[np.isin(task, subset)])
    assert loader.num_samples == 8 and np.all(np.diff(loader.given) < 0)


def test_a_classify_run_trains_on_the_fraction_and_evaluates_on_all_of_val(tmp_path,
                                                                           monkeypatch):
    seen, evaluated = [], []

    def counted_loss(self, model, images, labels):
        seen.append(len(labels))
        return original_loss(self, model, images, labels)

    def counted_eval_loader(*args, **kwargs):
        loader = original_eval_loader(*args, **kwargs)
        evaluated.append(loader.num_samples)
        return loader

    original_loss, original_eval_loader = ERM.loss, engine_run.eval_loader
    monkeypatch.setattr(ERM, "loss", counted_loss)
    monkeypatch.setattr(engine_run, "eval_loader", counted_eval_loader)  # what fit() calls
    summary = TRACK.run(build_config(overrides=[
        "track=classify", "method=erm", "model.name=convnet_d3", "train.device=cpu",
        "quiet=true", "data.batch_size=8", "train.epochs=1", f"root={tmp_path}",
        "data.label_fraction=0.1",
        "data.options={classes: 5, train_per_class: 40, val_per_class: 3, res: 8}"]))
    assert summary["train_images"] == 20  # 4 of 40 images of each of 5 classes
    assert seen == [8, 8]  # one epoch of the 20 images: two full batches of 8
    assert evaluated == [15]  # every validation image
