"""Search spaces: what ``hundred tune`` may vary, declared next to each method's defaults.

Cha & Cho ("Hyperparameters in Continual Learning: a Reality Check", TMLR 2025) tune every
method by random search over discrete grids: a grid shared by all methods (epochs,
learning rate, step-decay milestones and factor, batch size, weight decay, schedule) plus
the method's own entries (e.g. WA's distillation temperature). Here a space is a mapping
from a config path (``"optim.lr"``, ``"method_params.temperature"``) to a
:class:`Choice` (a grid, as in the paper) or a range (:class:`IntRange`,
:class:`FloatRange`, for TPE). The shared grid lives once, in :data:`BUDGETS`, scaled by a
*budget* (the paper's 30-200 epochs are days on a CPU); a method class adds its entries in
its ``search_space`` attribute; a YAML file (``--space``) can replace or drop entries.

One key is derived rather than literal: ``schedule.milestones`` takes a *count* ``n`` (the
paper's grid {2, 3, 4}) and becomes ``n`` step-decay milestones spread evenly over the
sampled number of epochs (:func:`evenly_spread_milestones`).

Nothing here imports torch or Optuna, so a method module can import the types cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Union

from pydantic import BaseModel

from hundred.config import RunConfig, read_yaml, with_values
from hundred.errors import HundredError

if TYPE_CHECKING:
    import optuna

    from hundred.engine.method import Method

Scalar = Union[bool, int, float, str]
MILESTONES_KEY = "schedule.milestones"


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; take such strings as the numbers they spell."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values (the paper's grids). Values are scalars: Optuna stores
    categorical values as None, bool, int, float or str."""

    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        values = tuple(_number(v) for v in self.values)
        object.__setattr__(self, "values", values)
        if not values:
            raise ValueError("a Choice needs at least one value")
        if any(not isinstance(v, (bool, int, float, str)) for v in values):
            raise ValueError(f"Choice values must be numbers, booleans or strings, got {values}")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"Choice lists a value twice: {list(values)}")

    def suggest(self, trial: "optuna.Trial", key: str) -> Any:
        return trial.suggest_categorical(key, list(self.values))

    def candidates(self) -> tuple[Any, ...]:
        """Values to validate up front (every one, for a grid)."""
        return self.values

    def describe(self) -> Any:
        return list(self.values)


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]`` (with ``step``, or log-uniform)."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step)):
            raise ValueError(f"IntRange bounds and step must be integers, got {self}")
        if self.low >= self.high or self.step < 1:
            raise ValueError(f"IntRange needs low < high and step >= 1, got {self.low}..{self.high}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log IntRange needs low >= 1 and step 1")

    def suggest(self, trial: "optuna.Trial", key: str) -> Any:
        return trial.suggest_int(key, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def describe(self) -> Any:
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]``, uniform or log-uniform."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        low, high = _number(self.low), _number(self.high)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
            raise ValueError(f"FloatRange bounds must be finite numbers, got {low}, {high}")
        if low >= high or (self.log and low <= 0):
            raise ValueError(f"FloatRange needs low < high (and low > 0 when log), got {low}..{high}")

    def suggest(self, trial: "optuna.Trial", key: str) -> Any:
        return trial.suggest_float(key, float(self.low), float(self.high), log=self.log)

    def candidates(self) -> tuple[Any, ...]:
        return (float(self.low), float(self.high))

    def describe(self) -> Any:
        return {"low": self.low, "high": self.high, "log": self.log}


Dimension = Union[Choice, IntRange, FloatRange]
SearchSpace = dict[str, Dimension]


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
        base=("model.name=resnet20", "model.options={width: 8}", "incremental.memory=500",
              "data.eval_batch_size=1000"),
        synth100_options={"train_per_class": 100, "val_per_class": 20, "res": 16},
        about="CPU scale: epochs {3,4,5} per task, batch {32,64}, ResNet-20 at width 8, "
              "memory 500; synth100 at 16 px, 100 train / 20 val images per class"),
    "paper": Budget("paper", PAPER_GRID,
                    about="the paper's grid: epochs {30,70,120,160,200}, batch 32..512, the "
                          "config's own model, memory and data"),
}

# Keys a search must not touch: they define the data, the scenario or the run's identity,
# which the protocol holds fixed between tuning and evaluation.
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
    "incremental": "the scenario (tasks, class order, memory) is the same in both phases",
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


def suggest(trial: "optuna.Trial", space: SearchSpace) -> dict[str, Any]:
    """One point of ``space``, drawn through ``trial`` (so Optuna records it)."""
    return {key: dimension.suggest(trial, key) for key, dimension in space.items()}


def describe(space: SearchSpace) -> dict[str, Any]:
    """A JSON/YAML-able form of ``space`` (stored with the study and the best parameters)."""
    return {key: dimension.describe() for key, dimension in space.items()}


def parse_dimension(key: str, raw: Any) -> Dimension:
    """A dimension from YAML: a list is a :class:`Choice`; ``{low, high[, step][, log]}``
    is an :class:`IntRange` (integer bounds) or a :class:`FloatRange`."""
    try:
        if isinstance(raw, (list, tuple)):
            return Choice(tuple(raw))
        if isinstance(raw, dict) and {"low", "high"} <= set(raw) <= {"low", "high", "step", "log"}:
            low, high = _number(raw["low"]), _number(raw["high"])
            if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                return IntRange(low, high, int(raw.get("step", 1)), bool(raw.get("log", False)))
            if "step" in raw:
                raise ValueError("a float range takes no step; use a list of values")
            return FloatRange(low, high, bool(raw.get("log", False)))
    except ValueError as error:
        raise HundredError(f"search space {key}: {error}") from None
    raise HundredError(f"search space {key}: expected a list of values or "
                       f"{{low, high[, step][, log]}}, got {raw!r}")


def load_space_file(path: str | Path) -> dict[str, Dimension | None]:
    """Entries of a ``--space`` YAML file; ``None`` drops a key from the search."""
    raw = read_yaml(path)
    return {str(key): None if value is None else parse_dimension(str(key), value)
            for key, value in raw.items()}


def space_for(method: "type[Method]", budget: str = "quick",
              overrides: Mapping[str, Dimension | None] | None = None) -> SearchSpace:
    """The search space of ``method``: the budget's shared grid, then the method's own
    ``search_space`` entries, then ``overrides`` (a ``--space`` file; None drops a key)."""
    if budget not in BUDGETS:
        raise HundredError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    space: SearchSpace = {**BUDGETS[budget].grid, **dict(method.search_space)}
    for key, dimension in (overrides or {}).items():
        if dimension is None:
            space.pop(key, None)
        else:
            space[key] = dimension
    return space


def _check_key(key: str, method: "type[Method]") -> None:
    """HundredError unless ``key`` names a real, tunable config field (or method param)."""
    for fixed, reason in FIXED_KEYS.items():
        if key == fixed or key.startswith(fixed + "."):
            raise HundredError(f"search space {key}: not tunable ({reason})")
    parts = key.split(".")
    if parts[0] == "method_params":
        known = list(method.Params.model_fields)
        if len(parts) != 2 or parts[1] not in known:
            raise HundredError(f"search space {key}: {method.track}/{method.name} has no such "
                               f"parameter; its parameters: {', '.join(known) or 'none'}")
        return
    model: type[BaseModel] = RunConfig
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


def short_key(key: str) -> str:
    """``optim.lr`` -> ``lr``, ``schedule.name`` -> ``schedule`` (for narrow tables)."""
    return "schedule" if key == "schedule.name" else key.split(".")[-1]


def format_params(params: Mapping[str, Any]) -> str:
    """``batch_size=64, epochs=3, lr=0.1, ...``: one line for tables, keys shortened by
    :func:`short_key` (the full keys are in the YAML and in each run's config)."""
    def text(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{short_key(key)}={text(params[key])}"
                     for key in sorted(params, key=short_key))
