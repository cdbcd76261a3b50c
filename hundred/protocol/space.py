"""Search spaces: what ``hundred tune`` may vary, declared next to each method's defaults.

Cha & Cho ("Hyperparameters in Continual Learning: a Reality Check", TMLR 2025) tune every
method by random search over discrete grids: a grid shared by all methods (epochs,
learning rate, step-decay milestones and factor, batch size, weight decay, schedule) plus
the method's own entries (e.g. a distillation temperature). A space maps config paths to
the dimension types of :mod:`hundred.space` (re-exported here). The shared grid lives once,
in :data:`BUDGETS`, scaled by a *budget* (the paper's 30-200 epochs are days on a CPU); a
method class adds its entries in its ``search_space`` attribute; a YAML file (``--space``)
can replace or drop entries.

One key is derived rather than literal: ``schedule.milestones`` takes a *count* ``n`` (the
paper's grid {2, 3, 4}) and becomes ``n`` step-decay milestones spread evenly over the
sampled number of epochs (:func:`evenly_spread_milestones`).

Nothing here imports torch or Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel

from hundred.config import RunConfig, config_class, read_yaml, with_values
from hundred.errors import HundredError
from hundred.space import (Choice, Dimension, FloatRange, IntRange, SearchSpace, describe,
                           format_params, parse_dimension, short_key, suggest)

if TYPE_CHECKING:
    from hundred.engine.method import Method

__all__ = ["BUDGETS", "Budget", "Choice", "Dimension", "FIXED_KEYS", "FloatRange", "IntRange",
           "MILESTONES_KEY", "PAPER_GRID", "QUICK_GRID", "SearchSpace", "apply", "describe",
           "evenly_spread_milestones", "format_params", "load_space_file", "parse_dimension",
           "resolve", "short_key", "space_for", "suggest", "validate_space"]

MILESTONES_KEY = "schedule.milestones"


# The paper's shared grid (Cha & Cho, TMLR 2025, Sec. 4; the research notes give the
# weight-decay range 1e-4..5e-3 and batch sizes 32..512 — the points inside are ours).
PAPER_GRID: SearchSpace = {
    "train.epochs": Choice((30, 70, 120, 160, 200)),
    "schedule.name": Choice(("step", "cosine")),
    MILESTONES_KEY: Choice((2, 3, 4)),
    "schedule.gamma": Choice((0.1, 0.3, 0.5)),
    "optim.lr": Choice((0.05, 0.1, 0.15, 0.2, 0.3)),
    "data.batch_size": Choice((32, 64, 128, 256, 512)),
    "optim.weight_decay": Choice((1e-4, 5e-4, 1e-3, 5e-3)),
}

# The same axes at CPU scale: a few epochs per task and batches small enough for the small
# tasks of the quick base (a batch larger than a task's data would train on nothing).
QUICK_GRID: SearchSpace = {
    **PAPER_GRID,
    "train.epochs": Choice((3, 4, 5)),
    "data.batch_size": Choice((32, 64)),
}


@dataclass(frozen=True)
class Budget:
    """How big a tuning experiment is: the shared grid, and base settings that sit under the
    user's ``--config``/``--set`` (``synth100_options`` only when the data is the built-in
    ``synth100`` and no options were given)."""

    name: str
    grid: SearchSpace
    base: tuple[str, ...] = ()
    synth100_options: Mapping[str, Any] = field(default_factory=dict)
    about: str = ""


BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        "quick", QUICK_GRID,
        base=("model.name=resnet20", "model.options={width: 8}", "data.eval_batch_size=1000"),
        synth100_options={"train_per_class": 100, "val_per_class": 20, "res": 16},
        about="CPU scale: epochs {3,4,5}, batch {32,64}, ResNet-20 at width 8; synth100 at "
              "16 px, 100 train / 20 val images per class"),
    "paper": Budget("paper", PAPER_GRID,
                    about="the paper's grid: epochs {30,70,120,160,200}, batch 32..512, the "
                          "config's own model and data"),
}

# Keys a search must not touch: they define the data or the run's identity, which the
# protocol holds fixed between tuning and evaluation (each track adds its scenario's keys,
# ``Track.protocol_fixed``).
FIXED_KEYS: dict[str, str] = {
    "track": "the track is the experiment itself",
    "method": "the method is what is being tuned",
    "seed": "seeds are explicit and never tuned",
    "name": "run names are set by the protocol",
    "root": "the output folder is not a hyperparameter",
    "quiet": "output verbosity is not a hyperparameter",
    "provenance": "provenance is written by the protocol",
    "data.source": "the data is fixed by the protocol (tuning data vs evaluation data)",
    "data.classes": "the data is fixed by the protocol (tuning data vs evaluation data)",
    "data.options": "the data is fixed by the protocol (tuning data vs evaluation data)",
    "train.device": "the device is not a hyperparameter",
}


def evenly_spread_milestones(epochs: int, count: int) -> list[int]:
    """``count`` step-decay milestones spread evenly inside ``epochs`` (the paper's
    milestone grid {2, 3, 4} is a number of decays): 200 epochs, 3 -> [50, 100, 150].
    Milestones that would coincide, or fall outside 1..epochs-1, are dropped."""
    points = {round(epochs * k / (count + 1)) for k in range(1, count + 1)}
    return sorted(m for m in points if 0 < m < epochs)


def resolve(params: Mapping[str, Any], base: RunConfig) -> dict[str, Any]:
    """The concrete config values of sampled ``params``: a milestone count becomes the
    milestone list for the sampled (or the base config's) number of epochs."""
    values = dict(params)
    count = values.get(MILESTONES_KEY)
    if isinstance(count, int) and not isinstance(count, bool):
        epochs = int(values.get("train.epochs", base.train.epochs))
        values[MILESTONES_KEY] = evenly_spread_milestones(epochs, count)
    return values


def apply(base: RunConfig, params: Mapping[str, Any], origin: str = "tuned parameters") -> RunConfig:
    """``base`` with ``params`` applied and validated (HundredError names a bad key/value)."""
    return with_values(base, resolve(params, base), origin)


def load_space_file(path: str | Path) -> dict[str, Dimension | None]:
    """Entries of a ``--space`` YAML file; ``None`` drops a key from the search."""
    raw = read_yaml(path)
    return {str(key): None if value is None else parse_dimension(str(key), value)
            for key, value in raw.items()}


def space_for(method: "type[Method]", budget: str = "quick",
              overrides: Mapping[str, Dimension | None] | None = None) -> SearchSpace:
    """The search space of ``method``: the budget's shared grid (or its track's own grid for
    that budget, ``Track.grid``; none when the method does not train, ``shared_grid``), then
    the method's own
    ``search_space`` entries, then ``overrides`` (a ``--space`` file; None drops a key)."""
    if budget not in BUDGETS:
        raise HundredError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    from hundred.registry import get_track

    shared = (get_track(method.track).grid.get(budget, BUDGETS[budget].grid)
              if method.shared_grid else {})
    space: SearchSpace = {**shared, **dict(method.search_space)}
    for key, dimension in (overrides or {}).items():
        if dimension is None:
            space.pop(key, None)
        else:
            space[key] = dimension
    return space


def _check_key(key: str, method: "type[Method]") -> None:
    """HundredError unless ``key`` names a real, tunable config field (or method param)."""
    from hundred.registry import get_track

    fixed_keys = {**FIXED_KEYS, **get_track(method.track).protocol_fixed}
    for fixed, reason in fixed_keys.items():
        if key == fixed or key.startswith(fixed + "."):
            raise HundredError(f"search space {key}: not tunable ({reason})")
    parts = key.split(".")
    if parts[0] == "method_params":
        known = list(method.Params.model_fields)
        if len(parts) != 2 or parts[1] not in known:
            raise HundredError(f"search space {key}: {method.track}/{method.name} has no such "
                               f"parameter; its parameters: {', '.join(known) or 'none'}")
        return
    model: type[BaseModel] = config_class(method.track)
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise HundredError(f"search space {key}: not a config key; allowed in {where}: "
                               f"{', '.join(fields)}")
        annotation = fields[part].annotation
        last = depth == len(parts) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if last:
                raise HundredError(f"search space {key}: a section, not a value; pick one of "
                                   f"{', '.join(annotation.model_fields)}")
            model = annotation
        elif getattr(annotation, "__origin__", None) is dict or annotation is dict:
            return  # keys inside a dict option (model.options.width) are the option's own
        elif not last:
            raise HundredError(f"search space {key}: {'.'.join(parts[:depth + 1])} is a value, "
                               "not a section")


def validate_space(space: Mapping[str, Dimension], base: RunConfig,
                   method: "type[Method]") -> None:
    """Check a space before any trial runs: every key is a real, tunable config path (or a
    parameter of the method's ``Params``), and every value of a grid (the ends of a range)
    passes the run config's and the method's validation on top of ``base``. The error names
    the bad key and value."""
    if not space:
        raise HundredError(f"the search space of {method.track}/{method.name} is empty")
    for key, dimension in space.items():
        if not isinstance(dimension, (Choice, IntRange, FloatRange)):
            raise HundredError(f"search space {key}: expected Choice, IntRange or FloatRange, "
                               f"got {type(dimension).__name__}")
        _check_key(key, method)
        for value in dimension.candidates():
            if key == MILESTONES_KEY and (isinstance(value, bool) or not isinstance(value, int)
                                          or value < 0):
                raise HundredError(f"search space {key}: a number of evenly spread milestones "
                                   f"(an integer >= 0) is expected, got {value!r}")
            try:
                config = apply(base, {key: value}, origin=f"search space {key}={value!r}")
                method(config.method_params, config)  # the method's Params validate it
            except HundredError as error:
                message = str(error)
                if not message.startswith("search space"):
                    message = f"search space {key}={value!r}: {message}"
                raise HundredError(message) from None


