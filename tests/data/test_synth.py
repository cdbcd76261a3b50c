"""The built-in synth100 source: deterministic, stable class definitions, learnable, not trivial."""

from __future__ import annotations

import numpy as np
import pytest

from hundred.data.dataset import Dataset
from hundred.data.sources import open_source
from hundred.data.sources import synth
from hundred.errors import HundredError

TINY = dict(classes=10, train_per_class=6, val_per_class=3, res=16)


def _tiny(**overrides: object) -> Dataset:
    return open_source("synth100", **{**TINY, **overrides})


def _class_images(dataset: Dataset, split: str, c: int) -> np.ndarray:
    arrays = dataset.arrays(split)
    return arrays.images[arrays.labels == c]


def test_shapes_dtypes_labels_and_metadata() -> None:
    dataset = _tiny()
    assert dataset.name == "synth100"
    assert dataset.class_ids == [f"s{c:03d}" for c in range(10)]
    assert len(set(dataset.class_names)) == 10
    for split, per_class in (("train", 6), ("val", 3)):
        arrays = dataset.arrays(split)
        assert arrays.images.shape == (10 * per_class, 16, 16, 3)
        assert arrays.images.dtype == np.uint8 and arrays.labels.dtype == np.int64
        assert np.array_equal(np.bincount(arrays.labels, minlength=10), [per_class] * 10)
    assert dataset.info == {"seed": 0, "res": 16, "classes": 10, "train_per_class": 6,
                            "val_per_class": 3, "generator": synth.GENERATOR_VERSION}
    # Pixels use the range: not blank, not saturated.
    assert 20 < dataset.arrays("train").images.std() < 120


def test_class_names_are_readable_attribute_combinations() -> None:
    names = _tiny(classes=100, train_per_class=1, val_per_class=1, res=8).class_names
    assert len(set(names)) == 100
    for name in names:
        words = name.split()
        assert words[0] in synth.COLOURS and words[-2] == "on" and words[-1] in synth.BACKGROUNDS
        assert words[-3] in synth.SHAPES


def test_same_seed_gives_identical_arrays() -> None:
    first, second = _tiny(seed=3), _tiny(seed=3)
    assert first.class_names == second.class_names
    for split in ("train", "val"):
        assert np.array_equal(first.arrays(split).images, second.arrays(split).images)
        assert np.array_equal(first.arrays(split).labels, second.arrays(split).labels)


def test_different_seed_gives_different_classes_and_images() -> None:
    first, second = _tiny(seed=0), _tiny(seed=1)
    assert first.class_names != second.class_names
    assert not np.array_equal(first.arrays("train").images, second.arrays("train").images)


def test_train_and_val_are_different_samples() -> None:
    dataset = _tiny(train_per_class=3, val_per_class=3)
    assert not np.array_equal(dataset.arrays("train").images, dataset.arrays("val").images)


def test_class_definition_does_not_depend_on_class_count() -> None:
    few, many = _tiny(classes=4), _tiny(classes=10)
    assert few.class_names == many.class_names[:4]
    for c in range(4):
        assert np.array_equal(_class_images(few, "train", c), _class_images(many, "train", c))
        assert np.array_equal(_class_images(few, "val", c), _class_images(many, "val", c))


def test_smaller_counts_give_a_prefix_of_each_class() -> None:
    small, large = _tiny(train_per_class=2, val_per_class=1), _tiny()
    for c in range(10):
        large_train = _class_images(large, "train", c)
        assert np.array_equal(_class_images(small, "train", c), large_train[:2])
        assert np.array_equal(_class_images(small, "val", c), _class_images(large, "val", c)[:1])


def test_rendering_in_chunks_changes_no_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _tiny(classes=3)
    monkeypatch.setattr(synth, "_CHUNK_PIXELS", 4 * 16 * 16)  # 4 images per chunk
    chunked = _tiny(classes=3)
    assert np.array_equal(whole.arrays("train").images, chunked.arrays("train").images)


def test_string_options_from_the_command_line_are_converted() -> None:
    as_strings = open_source("synth100", classes="10", train_per_class="6", val_per_class="3",
                             res="16", seed="0")
    assert np.array_equal(as_strings.arrays("train").images, _tiny().arrays("train").images)


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"classes": 1}, "classes"),
        ({"classes": 1001}, "classes"),
        ({"train_per_class": 0}, "train_per_class"),
        ({"val_per_class": 0}, "val_per_class"),
        ({"res": 7}, "res"),
        ({"res": 513}, "res"),
        ({"seed": -1}, "seed"),
        ({"classes": "ten"}, "classes"),
        ({"res": 16.5}, "res"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_raise_a_clear_error(options: dict[str, object], option_name: str) -> None:
    with pytest.raises(HundredError, match=option_name):
        open_source("synth100", **options)


def test_an_argument_is_refused() -> None:
    with pytest.raises(HundredError, match="no argument"):
        open_source("synth100:/some/path")


def test_learnable_but_not_trivial() -> None:
    """A nearest-class-mean classifier on pixels beats chance clearly but is far from perfect.

    Guards the difficulty in both directions: a rendering bug that destroys the class signal
    sends accuracy to chance; one that removes the per-sample variation sends it towards 100 %.
    """
    dataset = _tiny(train_per_class=60, val_per_class=30)
    features = lambda split: dataset.arrays(split).images.reshape(  # noqa: E731
        len(dataset.arrays(split)), -1).astype(np.float32)
    train_x, val_x = features("train"), features("val")
    train_y, val_y = dataset.arrays("train").labels, dataset.arrays("val").labels
    means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(10)])
    distances = ((val_x[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    accuracy = float((distances.argmin(axis=1) == val_y).mean())
    assert 0.3 < accuracy < 0.9, accuracy
