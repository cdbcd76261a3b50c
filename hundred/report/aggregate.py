"""Group runs that differ only in their seed, and summarise each group as mean ± std.

A row of a leaderboard is one :class:`GroupRow`: every run with the same track, dataset,
scenario, protocol (and tuning dataset), method, model and memory budget. Anything else that
differs between runs of a row would make its mean meaningless, so those fields are the key;
the seed is the only thing averaged over.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np

from hundred.report.collect import ReportSpec, Warn, finite_number, spec_for

# The fields that identify a row; ``seed`` is deliberately not among them.
ROW_KEY = ("track", "data", "scenario", "protocol", "tuned_on", "method", "model", "memory")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) of one metric over ``n`` runs.

    ``std`` is None when ``n < 2`` (one seed says nothing about spread); ``mean`` is None
    when no run had a value.
    """

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stat":
        """The statistics of the non-null ``values``."""
        present = [float(v) for v in values if v is not None]
        if not present:
            return cls(None, None, 0)
        mean = math.fsum(present) / len(present)
        std = float(np.std(present, ddof=1)) if len(present) > 1 else None
        return cls(mean, std, len(present))


@dataclass(frozen=True)
class GroupRow:
    """One method's result in one setting, aggregated over seeds.

    ``rank`` is 1 for the best row of its leaderboard (same track, data, scenario and
    protocol — see :attr:`board`), ranked by the track's primary metric; ties share a rank.
    ``runs`` are the normalised summaries behind the row, ordered by seed.
    """

    track: str
    data: str
    scenario: str | None
    protocol: str
    tuned_on: str | None
    method: str
    model: str | None
    memory: int | None
    runs: tuple[dict[str, Any], ...] = field(repr=False)
    metrics: dict[str, Stat]
    rank: int = 0

    @property
    def spec(self) -> ReportSpec:
        return spec_for(self.track)

    @property
    def table(self) -> tuple[str, str, str | None]:
        """The table this row is printed in: (track, data, scenario)."""
        return (self.track, self.data, self.scenario)

    @property
    def board(self) -> tuple[str, str, str | None, str, str | None]:
        """The leaderboard this row is ranked in: its table plus protocol and tuning data."""
        return (*self.table, self.protocol, self.tuned_on)

    @property
    def seeds(self) -> list[int]:
        return sorted({run["seed"] for run in self.runs})

    @property
    def primary(self) -> Stat:
        """The statistic that ranks this row (the track's primary metric)."""
        return self.metrics[self.spec.metrics[0].key]

    @property
    def tuned_params(self) -> str | None:
        """The tuned parameters behind the row, one line (``lr=0.1, epochs=3``); None for
        rows without any, ``differs between runs`` when its runs used different ones."""
        from hundred.space import format_params

        found = {json.dumps(run.get("tuned_params") or {}, sort_keys=True) for run in self.runs}
        if found == {"{}"}:
            return None
        if len(found) > 1:
            return "differs between runs"
        return format_params(json.loads(found.pop()))

    @property
    def protocol_label(self) -> str:
        """``conventional`` or e.g. ``tune-then-evaluate (tuned on synth10)``."""
        return self.protocol + (f" (tuned on {self.tuned_on})" if self.tuned_on else "")


def _sort_text(value: Any) -> str:
    return "" if value is None else str(value)


def _rank(rows: list[GroupRow]) -> list[GroupRow]:
    """Competition ranks (1, 2, 2, 4) by the primary metric within each board."""
    ranked: list[GroupRow] = []
    boards: dict[tuple, list[GroupRow]] = {}
    for row in rows:
        boards.setdefault(row.board, []).append(row)
    for members in boards.values():
        metric = members[0].spec.metrics[0]
        sign = 1.0 if metric.higher_is_better else -1.0
        scores = [sign * row.primary.mean if row.primary.mean is not None else -math.inf
                  for row in members]
        for row, score in zip(members, scores):
            ranked.append(replace(row, rank=1 + sum(other > score for other in scores)))
    return ranked


def aggregate(runs: Sequence[dict[str, Any]], warn: Warn | None = None) -> list[GroupRow]:
    """Group ``runs`` (from :func:`~hundred.report.collect.collect_runs`) into rows.

    Rows come sorted by table (track, data, scenario), then protocol, then rank (best
    first), then method name. ``warn`` (a callable taking a message) hears about a row that
    holds the same seed twice — its mean would over-weight that seed.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(key) for key in ROW_KEY), []).append(run)
    rows: list[GroupRow] = []
    for key, members in groups.items():
        members = sorted(members, key=lambda run: (run["seed"], run.get("summary_path", "")))
        seeds = [run["seed"] for run in members]
        if warn is not None and len(set(seeds)) != len(seeds):
            first = members[0]
            warn(f"{first['method']} on {first['data']}: {len(seeds)} runs but only "
                 f"{len(set(seeds))} distinct seeds ({', '.join(map(str, seeds))}); every run is "
                 "counted")
        settings = {run.get("settings") for run in members}
        if warn is not None and len(settings) > 1:
            first = members[0]
            warn(f"{first['method']} on {first['data']}: the {len(members)} runs of this row were "
                 f"trained with different settings ({len(settings)} distinct configs besides the "
                 "seed); compare their config.yaml files")
        spec = spec_for(members[0]["track"])
        metrics = {m.key: Stat.of(finite_number(run.get(m.key)) for run in members) for m in spec.metrics}
        rows.append(GroupRow(*key, runs=tuple(members), metrics=metrics))
    rows = _rank(rows)
    rows.sort(key=lambda r: (r.track, r.data, _sort_text(r.scenario), r.protocol,
                             _sort_text(r.tuned_on), r.rank, r.method, _sort_text(r.model),
                             _sort_text(r.memory)))
    return rows


def curve(row: GroupRow, key: str, steps: str) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """(step x values, mean, std) of the per-step series ``key`` over the row's seeds; the x
    values are the summaries' ``steps`` entry (e.g. the number of classes after each task).

    None when a run lacks the series or the runs disagree on ``steps`` (averaging step 3 of
    one schedule with step 3 of another would mix different things).
    ``std`` is all zeros for a single seed so the band simply vanishes.
    """
    schedules = {tuple(run[steps]) for run in row.runs}
    if len(schedules) != 1 or any(run.get(key) is None for run in row.runs):
        return None
    series = np.array([run[key] for run in row.runs], dtype=float)
    std = series.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(series.shape[1])
    return list(schedules.pop()), series.mean(axis=0), std


def mean_matrix(row: GroupRow, key: str) -> np.ndarray | None:
    """The element-wise mean of the runs' step x step matrices ``key``, NaN where no run has a
    value (the upper triangle: steps not yet reached). None when any run lacks the matrix or
    the shapes differ."""
    matrices = [run.get(key) for run in row.runs]
    if any(m is None for m in matrices):
        return None
    stack = [np.array([[np.nan if v is None else v for v in r] for r in m], dtype=float)
             for m in matrices]
    if len({m.shape for m in stack}) != 1:
        return None
    stacked = np.stack(stack)
    counts = np.sum(~np.isnan(stacked), axis=0)
    totals = np.nansum(stacked, axis=0)
    # divide only where some run has a value; np.nanmean would warn about the empty cells
    return np.divide(totals, counts, out=np.full(totals.shape, np.nan), where=counts > 0)
