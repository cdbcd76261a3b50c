"""Group runs that differ only in their seed, and summarise each group as mean ± std.

A row of a leaderboard is one :class:`GroupRow`: every run with the same track, dataset,
scenario, protocol (and tuning dataset), method, model, the track's descriptors (memory budget, teacher), **settings** (the
digest of everything in the run's config that changes results except the seed, which the
engine writes into each ``summary.json``) and data fingerprint (the identity of the images
read, which the config alone does not pin down: a directory re-packed under the same path).
Anything else that differs between runs of a row would make its mean meaningless, so those
fields are the key; the seed is the only thing averaged over, and each seed counts once.

Two rows that differ only in their settings (the same method trained with ``optim.lr=0.05``
and with ``optim.lr=0.1``) are never merged; :func:`settings_labels` says what tells them
apart. A summary written before the engine recorded its settings has ``settings`` None: its
runs are grouped as before (by the other fields only) and the row warns "settings unknown".
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hundred.report.collect import (ReportSpec, Warn, finite_number, load_run_config,
                                    spec_for)

# The fields that identify a row; ``seed`` is deliberately not among them.
# ``descriptors`` holds the track's own descriptor keys and values (``ReportSpec.descriptors``,
# e.g. ``(("memory", 2000),)``).
ROW_KEY = ("track", "data", "scenario", "protocol", "tuned_on", "method", "model", "descriptors",
           "settings", "data_fingerprint")
# What a leaderboard shows of a row besides its settings: rows equal in these but with
# different settings would look identical without a settings column.
VISIBLE_KEY = ("method", "model", "descriptors", "protocol", "tuned_on")
# At most this many differing config keys are spelt out in a settings cell.
MAX_SETTINGS_KEYS = 4
UNKNOWN_SETTINGS = "settings unknown"
UNSET = "(unset)"


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
    ``runs`` are the normalised summaries behind the row, one per seed, ordered by seed.
    ``settings`` is the settings digest its runs share (None: summaries too old to have one),
    ``data_fingerprint`` the identity of the data they read (None when not recorded).
    ``config`` holds the config keys (dotted, from the runs' ``config.yaml``) on which all its
    runs agree; None when no run has a readable config. ``repeated`` are runs left out
    because another run of the row had the same seed (see :func:`aggregate`); ``warnings``
    are what the report says about the row (repeated seeds, unknown settings).
    """

    track: str
    data: str
    scenario: str | None
    protocol: str
    tuned_on: str | None
    method: str
    model: str | None
    descriptors: tuple[tuple[str, Any], ...]
    runs: tuple[dict[str, Any], ...] = field(repr=False)
    metrics: dict[str, Stat]
    rank: int = 0
    settings: str | None = None
    data_fingerprint: str | None = None
    config: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    repeated: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    warnings: tuple[str, ...] = ()

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

    def descriptor(self, key: str) -> Any:
        """The value of the track's descriptor ``key`` (None when the row has none)."""
        return dict(self.descriptors).get(key)

    @property
    def visible(self) -> tuple:
        """What a leaderboard shows of the row besides its settings (:data:`VISIBLE_KEY`)."""
        return tuple(getattr(self, key) for key in VISIBLE_KEY)

    @property
    def description(self) -> str:
        """The row in words, for warnings: ``wa on synth100 — B0-Inc10 (conventional,
        settings 3f2a9c1b0d4e)``."""
        where = self.data + (f" — {self.scenario}" if self.scenario else "")
        extras = [self.protocol_label]
        extras += [f"model {self.model}"] if self.model else []
        extras += [f"{key} {value}" for key, value in self.descriptors if value is not None]
        extras.append(f"settings {self.settings}" if self.settings else UNKNOWN_SETTINGS)
        return f"{self.method} on {where} ({', '.join(extras)})"

    @property
    def notes(self) -> list[str]:
        """Short flags for the table's ``notes`` column (``⚠ seeds repeated ...``)."""
        if not self.repeated:
            return []
        counts: dict[int, int] = {}
        for run in (*self.runs, *self.repeated):
            counts[run["seed"]] = counts.get(run["seed"], 0) + 1
        twice = ", ".join(f"{seed} ×{n}" for seed, n in sorted(counts.items()) if n > 1)
        return [f"⚠ seeds repeated (seed {twice}): each seed counted once, newest run kept"]


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


def _written(run: Mapping[str, Any]) -> tuple[float, str]:
    """Sort key of "newest": the modification time of the run's summary.json (-inf when it
    is not on disk), then its path."""
    path = run.get("summary_path") or ""
    try:
        written = os.stat(path).st_mtime if path else -math.inf
    except OSError:
        written = -math.inf
    return (written, path)


def _run_dir(run: Mapping[str, Any]) -> str:
    path = run.get("summary_path")
    return os.path.dirname(path) if path else str(run.get("run_dir", "?"))


def one_run_per_seed(runs: Sequence[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(kept, repeated)``: the newest run of each seed (by the modification time of its
    ``summary.json``; ties and summaries not on disk: the last by path), ordered by seed, and
    the other runs of seeds that occur more than once."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], []).append(run)
    kept, repeated = [], []
    for seed in sorted(by_seed):
        members = sorted(by_seed[seed], key=_written)
        kept.append(members[-1])
        repeated += members[:-1]
    return kept, repeated


def _common_config(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The config keys on which every run with a readable ``config.yaml`` agrees."""
    configs = [c for c in (load_run_config(run) for run in runs) if c is not None]
    if not configs:
        return None
    first = configs[0]
    return {key: value for key, value in first.items()
            if all(key in other and other[key] == value for other in configs[1:])}


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def settings_labels(rows: Sequence[GroupRow]) -> list[str] | None:
    """What tells ``rows`` (of one table) apart when some would otherwise look identical.

    None when no two rows share method, model, the track's descriptors and protocol (:data:`VISIBLE_KEY`) with
    different settings or data fingerprints: the table needs no settings column. Otherwise
    one text per row, in order: the settings digest (``settings unknown`` for summaries without one), preceded,
    for rows that clash with another, by the config keys whose values differ between the
    clashing rows' ``config.yaml`` files, e.g. ``optim.lr=0.05 · 3f2a9c1b0d4e`` vs
    ``optim.lr=0.1 · 9d8e7f6a5b4c`` (at most :data:`MAX_SETTINGS_KEYS`, then ``+k more``),
    and followed by ``· data <fingerprint>`` where the clashing rows read different data.
    """
    clashes: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        clashes.setdefault(row.visible, []).append(index)
    clashing = [members for members in clashes.values()
                if len({(rows[i].settings, rows[i].data_fingerprint) for i in members}) > 1]
    if not clashing:
        return None
    labels = [row.settings or UNKNOWN_SETTINGS for row in rows]
    for members in clashing:
        if len({rows[i].data_fingerprint for i in members}) > 1:
            for i in members:
                labels[i] += f" · data {rows[i].data_fingerprint or 'unknown'}"
        configs = [rows[i].config for i in members if rows[i].config is not None]
        keys = sorted({key for config in configs for key in config})
        differing = [key for key in keys
                     if len({json.dumps(c.get(key, UNSET), sort_keys=True) for c in configs}) > 1]
        for i in members:
            config = rows[i].config
            if config is None or not differing:
                continue
            parts = [f"{key}={_format_value(config.get(key, UNSET))}"
                     for key in differing[:MAX_SETTINGS_KEYS]]
            if len(differing) > MAX_SETTINGS_KEYS:
                parts.append(f"+{len(differing) - MAX_SETTINGS_KEYS} more")
            labels[i] = f"{', '.join(parts)} · {labels[i]}"
    return labels


def _warn_changed_data(row: GroupRow, rows: Sequence[GroupRow]) -> GroupRow:
    """``row`` with a warning added when another row has the same key but for the data
    fingerprint: the same settings read different images (a source re-packed or edited)."""
    same = [other.data_fingerprint for other in rows if other is not row
            and all(getattr(other, k) == getattr(row, k) for k in ROW_KEY if k != "data_fingerprint")]
    if not same:
        return row
    others = ", ".join(sorted(f or "unknown" for f in set(same)))
    message = (f"{row.description}: read data with fingerprint {row.data_fingerprint or 'unknown'}, "
               f"other runs of the same settings read {others}: the data behind "
               f"{row.data!r} changed between runs (re-packed or edited?), so they are kept "
               "in separate rows")
    return replace(row, warnings=(*row.warnings, message))


def row_key(run: Mapping[str, Any]) -> tuple:
    """The :data:`ROW_KEY` values of a normalised summary (descriptors from its track's spec)."""
    descriptors = tuple((key, run.get(key)) for key in spec_for(run["track"]).descriptors)
    return tuple(descriptors if key == "descriptors" else run.get(key) for key in ROW_KEY)


def aggregate(runs: Sequence[dict[str, Any]], warn: Warn | None = None) -> list[GroupRow]:
    """Group ``runs`` (from :func:`~hundred.report.collect.collect_runs`) into rows.

    Runs are grouped by :data:`ROW_KEY`, settings digest and data fingerprint included: runs
    trained with different settings, or on different data under the same name, are different
    rows, never averaged together (the latter with a warning: the data changed between runs).

    Within a row each seed counts once: when several runs have the same seed (the same
    experiment run twice), the newest (by the modification time of its ``summary.json``;
    ties, and summaries not on disk, by path: see :func:`one_run_per_seed`) is kept and the
    others are left out of every mean, std, curve and matrix, so the std is always a spread
    of single runs over distinct seeds; the row lists them in ``repeated``, its table flags
    it (``⚠ seeds repeated`` in the notes column) and ``warnings`` says which runs were left
    out. A row whose summaries have no settings digest also gets a
    "settings unknown" warning. ``warn`` (a callable taking a message), when given, hears
    every such warning as well.

    Rows come sorted by table (track, data, scenario), then protocol, then rank (best
    first), then method name, model, the track's descriptors and settings.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(row_key(run), []).append(run)
    rows: list[GroupRow] = []
    for key, members in groups.items():
        kept, repeated = one_run_per_seed(members)
        spec = spec_for(kept[0]["track"])
        metrics = {m.key: Stat.of(finite_number(run.get(m.key)) for run in kept)
                   for m in spec.metrics}
        row = GroupRow(**dict(zip(ROW_KEY, key)), runs=tuple(kept), metrics=metrics,
                       config=_common_config(kept), repeated=tuple(repeated))
        warnings = []
        if repeated:
            seeds = sorted({run["seed"] for run in repeated})
            warnings.append(
                f"{row.description}: {len(members)} runs but only {len(kept)} distinct "
                f"seed{'s' * (len(kept) != 1)} "
                f"(seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} repeated); each "
                f"seed is counted once, keeping its newest run; left out: "
                f"{', '.join(_run_dir(run) for run in repeated)}")
        if row.settings is None:
            warnings.append(
                f"{row.description}: {len(members)} run{'s' * (len(members) != 1)} without a "
                "settings digest (summaries written by an older hundred): runs trained with "
                "different hyperparameters or data options cannot be told apart, and this "
                "row may average them")
        rows.append(replace(row, warnings=tuple(warnings)))
    rows = [_warn_changed_data(row, rows) for row in rows]
    if warn is not None:
        for row in rows:
            for message in row.warnings:
                warn(message)
    rows = _rank(rows)
    rows.sort(key=lambda r: (r.track, r.data, _sort_text(r.scenario), r.protocol,
                             _sort_text(r.tuned_on), r.rank, r.method, _sort_text(r.model),
                             _sort_text(r.descriptors), _sort_text(r.settings)))
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
