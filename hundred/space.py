"""Search-space types: what ``hundred tune`` may vary, declared by each method next to its
defaults (``Method.search_space``) and by the protocol's shared grids.

A space maps a config path (``"optim.lr"``, ``"method_params.temperature"``) to a
:class:`Choice` (a grid, as Cha & Cho, TMLR 2025, search), an :class:`IntRange` or a
:class:`FloatRange` (for TPE). These types sit below the engine and the protocol and import
neither torch nor Optuna, so a method module imports them cheaply and the engine never
imports the protocol. :func:`format_params` prints a point of a space in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Union

from hundred.errors import HundredError

if TYPE_CHECKING:
    import optuna

Scalar = Union[bool, int, float, str]

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
