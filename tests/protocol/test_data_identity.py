"""Class-disjoint halves of one source, data fingerprints, and the refusals that keep the
evaluation phase off the tuning data."""

import numpy as np
import pytest

from hundred.config import DataConfig, build_config
from hundred.data import fingerprint, load, load_selection
from hundred.engine.run import load_data
from hundred.errors import HundredError
from hundred.protocol.evaluate import check_disjoint

OPTIONS = {"classes": 20, "train_per_class": 6, "val_per_class": 3, "res": 8}


def test_selection_keeps_relabels_and_names_the_classes():
    full = load("synth100", **OPTIONS)
    half = load_selection("synth100", "10-19", OPTIONS)
    assert half.name == "synth100[10-19]" and half.num_classes == 10
    assert half.class_ids == full.class_ids[10:] and half.class_names == full.class_names[10:]
    train, full_train = half.arrays("train"), full.arrays("train")
    assert sorted(set(train.labels.tolist())) == list(range(10)) and len(train) == 60
    # sample k of class 10 + c in the full set is sample k of class c in the half
    assert np.array_equal(train.images[train.labels == 3], full_train.images[full_train.labels == 13])
    odd = load_selection("synth100", "1,3,5", OPTIONS)
    assert odd.class_ids == [full.class_ids[i] for i in (1, 3, 5)]
    with pytest.raises(HundredError, match="20 classes"):
        load_selection("synth100", "15-24", OPTIONS)


def test_fingerprints_tell_data_apart_and_repeat_for_equal_data():
    first = load_selection("synth100", "0-9", OPTIONS)
    assert fingerprint(first) == fingerprint(load_selection("synth100", "0-9", OPTIONS))
    others = [load_selection("synth100", "10-19", OPTIONS), load_selection("synth100", "0-8", OPTIONS),
              load_selection("synth100", "0-9", {**OPTIONS, "seed": 1}), load("synth100", **OPTIONS)]
    assert len({fingerprint(d) for d in [first, *others]}) == 5


def test_evaluation_run_refuses_the_tuning_data_by_fingerprint():
    tuning = load_selection("synth100", "0-9", OPTIONS)
    overrides = ["data.source=synth100[0-9]", "data.options={classes: 20, train_per_class: 6, "
                 "val_per_class: 3, res: 8}", "provenance.protocol=tune-then-evaluate",
                 "provenance.phase=evaluation", "provenance.tuned_on=synth100[0-9]",
                 f"provenance.tuning_fingerprint={fingerprint(tuning)}"]
    with pytest.raises(HundredError, match="tuned on"):
        load_data(build_config(overrides=overrides))
    other = load_data(build_config(overrides=[*overrides, "data.source=synth100[10-19]"]))
    assert other.info["fingerprint"] != fingerprint(tuning)


@pytest.mark.parametrize("evaluation, ok", [
    ("synth100[50-99]", True), ("digits", True), ("synth100[40-59]", False),
    ("synth100", False), ("synth100[0-49]", False)])
def test_same_source_must_be_class_disjoint(evaluation, ok):
    tuning = DataConfig(source="synth100[0-49]")
    if ok:
        check_disjoint(tuning, tuning.label, DataConfig(source=evaluation))
    else:
        with pytest.raises(HundredError, match="tuning data synth100"):
            check_disjoint(tuning, tuning.label, DataConfig(source=evaluation))
