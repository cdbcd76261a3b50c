"""Search spaces and the config additions of the protocol: bad declarations fail up front,
naming the key; class selections and provenance are validated."""

import pytest

from hundred.config import build_config, format_classes, parse_classes
from hundred.errors import HundredError
from hundred.protocol import space as spaces
from hundred.protocol.space import Choice, FloatRange, IntRange
from hundred.registry import get_method, methods

BASE = build_config(overrides=["track=incremental", "method=wa"])
WA = get_method("incremental", "wa")


def validate(space, method=WA, base=BASE):
    spaces.validate_space(space, base, method)


@pytest.mark.parametrize("budget", sorted(spaces.BUDGETS))
@pytest.mark.parametrize("name", sorted(methods("incremental")))
def test_every_declared_space_validates(name, budget):
    method = get_method("incremental", name)
    base = build_config(overrides=["track=incremental", f"method={name}"])
    validate(spaces.space_for(method, budget), method, base)


def test_method_entries_join_the_shared_grid():
    space = spaces.space_for(WA, "paper")
    assert space["method_params.temperature"].values == (0.5, 1.0, 1.5, 2.0, 2.5)
    assert space["optim.lr"].values == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert space["train.epochs"].values == (30, 70, 120, 160, 200)
    assert "method_params.temperature" not in spaces.space_for(get_method("incremental", "replay"))


@pytest.mark.parametrize("key, words", [
    ("optim.lrr", ["optim.lrr", "not a config key", "lr"]),
    ("optimizer.lr", ["optimizer.lr", "not a config key"]),
    ("optim", ["optim", "a section"]),
    ("optim.lr.x", ["optim.lr.x", "is a value"]),
    ("data.source", ["data.source", "not tunable"]),
    ("data.classes", ["data.classes", "not tunable"]),
    ("seed", ["seed", "never tuned"]),
    ("incremental.memory", ["incremental.memory", "scenario"]),
    ("method_params.lambda_kd", ["method_params.lambda_kd", "temperature"]),
])
def test_bad_keys_are_named(key, words):
    with pytest.raises(HundredError) as error:
        validate({key: Choice((1,))})
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("key, value", [
    ("optim.lr", -0.1), ("train.epochs", 0), ("schedule.name", "exponential"),
    ("method_params.temperature", 0.0), ("data.batch_size", "big"), ("schedule.gamma", 2.0),
])
def test_bad_values_are_named(key, value):
    with pytest.raises(HundredError) as error:
        validate({key: Choice((value,))})
    assert key in str(error.value) and repr(value) in str(error.value)


def test_range_ends_are_validated_and_milestones_must_be_counts():
    with pytest.raises(HundredError, match="optim.lr"):
        validate({"optim.lr": FloatRange(-1.0, 0.5)})
    validate({"optim.lr": FloatRange(0.01, 0.5, log=True), "train.epochs": IntRange(1, 5)})
    with pytest.raises(HundredError, match="number of evenly spread milestones"):
        validate({"schedule.milestones": Choice(("3",))})
    with pytest.raises(HundredError, match="empty"):
        validate({})


def test_dimension_constructors_reject_nonsense():
    for make in (lambda: Choice(()), lambda: Choice((1, 1)), lambda: Choice(([1, 2],)),
                 lambda: IntRange(5, 1), lambda: FloatRange(0.0, 1.0, log=True)):
        with pytest.raises(ValueError):
            make()


def test_space_file_lists_ranges_and_drops(tmp_path):
    file = tmp_path / "space.yaml"
    file.write_text("optim.weight_decay: [1e-4, 5e-4]\ntrain.epochs: {low: 1, high: 3}\n"
                    "optim.lr: {low: 1e-3, high: 0.3, log: true}\nschedule.gamma: null\n")
    entries = spaces.load_space_file(file)
    assert entries["optim.weight_decay"] == Choice((1e-4, 5e-4))  # YAML's "1e-4" strings
    assert entries["train.epochs"] == IntRange(1, 3)
    assert entries["optim.lr"] == FloatRange(1e-3, 0.3, log=True)
    space = spaces.space_for(WA, "quick", entries)
    assert "schedule.gamma" not in space and space["train.epochs"] == IntRange(1, 3)
    validate(space)
    file.write_text("optim.lr: {low: 1, hi: 2}\n")
    with pytest.raises(HundredError, match="optim.lr"):
        spaces.load_space_file(file)


def test_milestone_counts_become_evenly_spread_epochs():
    assert spaces.evenly_spread_milestones(200, 3) == [50, 100, 150]
    assert spaces.evenly_spread_milestones(120, 2) == [40, 80]
    assert spaces.evenly_spread_milestones(3, 4) == [1, 2]  # coinciding ones merge
    assert spaces.evenly_spread_milestones(1, 2) == []
    config = spaces.apply(BASE, {"train.epochs": 160, "schedule.name": "step",
                                 "schedule.milestones": 3, "method_params.temperature": 1.5})
    assert config.schedule.milestones == [40, 80, 120]
    assert config.method_params == {"temperature": 1.5}


def test_class_selections_parse_and_print_canonically():
    assert parse_classes("0,3,7-9") == [0, 3, 7, 8, 9]
    assert format_classes([9, 0, 1, 2, 5]) == "0-2,5,9"
    for bad in ("a", "3-1", "1,1", "0-", ""):
        with pytest.raises(ValueError):
            parse_classes(bad)
    config = build_config(overrides=["data.source=synth100[50-99]"])
    assert (config.data.source, config.data.classes, config.data.label) == (
        "synth100", "50-99", "synth100[50-99]")
    assert build_config(overrides=["data.classes=7"]).data.classes == "7"
    with pytest.raises(HundredError, match="data.classes"):
        build_config(overrides=["data.classes=9-2"])
    with pytest.raises(HundredError, match="give them once"):
        build_config(overrides=["data.source=synth100[0-4]", "data.classes=5-9"])


def test_provenance_is_validated():
    assert build_config().provenance.protocol == "conventional"
    with pytest.raises(HundredError, match="conventional run has no phase"):
        build_config(overrides=["provenance.phase=tuning"])
    with pytest.raises(HundredError, match="tuned_on"):
        build_config(overrides=["provenance.protocol=tune-then-evaluate",
                                "provenance.phase=evaluation"])
    build_config(overrides=["provenance.protocol=tune-then-evaluate", "provenance.phase=evaluation",
                            "provenance.tuned_on=synth100[0-49]", "provenance.tuning_fingerprint=ab"])
