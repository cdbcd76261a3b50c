"""Leaderboard tables: aggregated rows -> plain cells -> Markdown (HTML lives in ``html.py``).

A :class:`Table` is format-neutral (a title, a provenance note, a header and string cells),
so the same table prints to the terminal, goes into ``report.md`` and into ``index.html``,
and a later report (tune-then-evaluate with rank changes) can add columns to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hundred.report.aggregate import GroupRow, Stat, settings_labels
from hundred.report.collect import common_root

MISSING = "–"  # en dash: no run of the row reported this metric

# Descriptor columns that may sit between "method" and "seeds": (row attribute, header); the
# track's own descriptors (``ReportSpec.descriptors``) come after the model.
_DESCRIPTORS = (("model", "model"), ("protocol_label", "protocol"),
                ("tuned_params", "tuned params"))
# ... of which these are shown whenever a row has a value (provenance, even if shared)
_SHOWN_WHEN_PRESENT = ("tuned params",)


@dataclass(frozen=True)
class Table:
    """One rendered leaderboard. ``align`` holds "l" or "r" per column; ``rows`` are the
    aggregated rows behind ``body`` (same order), kept so plots and links can follow them."""

    title: str
    note: str
    header: list[str]
    body: list[list[str]]
    align: list[str]
    rows: list[GroupRow]

    @property
    def track(self) -> str:
        return self.rows[0].track


def format_stat(stat: Stat, runs: int | None = None) -> str:
    """``63.1 ± 0.8``; a single value as ``63.1 (n=1)`` (no spread to show); ``(n=k)`` is also
    appended when only ``k`` of the row's ``runs`` reported the metric."""
    if stat.mean is None:
        return MISSING
    if stat.std is None:
        return f"{stat.mean:.1f} (n={stat.n})"
    text = f"{stat.mean:.1f} ± {stat.std:.1f}"
    return text if runs is None or stat.n == runs else f"{text} (n={stat.n})"


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it lies below it, else absolute."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def table_title(row: GroupRow) -> str:
    """``synth100 — B0-Inc10`` (the dataset, then the scenario when the track has one)."""
    return row.data + (f" — {row.scenario}" if row.scenario else "")


def provenance(rows: Sequence[GroupRow]) -> str:
    """Which protocol produced the numbers, from how many runs, seeds and directories."""
    runs = [run for row in rows for run in row.runs]
    by_protocol: dict[str, list[GroupRow]] = {}
    for row in rows:
        by_protocol.setdefault(row.protocol_label, []).append(row)
    parts = [f"{label}: {len(members)} row{'s' * (len(members) != 1)}, "
             f"{sum(len(r.runs) for r in members)} runs" for label, members in by_protocol.items()]
    if len(parts) == 1:
        protocol = f"Protocol: {next(iter(by_protocol))}."
    else:
        protocol = f"Protocols: {'; '.join(parts)}. Ranks are within a protocol."
    seeds = sorted({run["seed"] for run in runs})
    directories = {os.path.dirname(run["summary_path"]) for run in runs}
    root = common_root(runs)
    primary = rows[0].spec.metrics[0]
    repeated = sum(len(row.repeated) for row in rows)
    left_out = (f" {repeated} more run{'s' * (repeated != 1)} repeated a seed and "
                f"{'were' if repeated != 1 else 'was'} left out (see Warnings)." if repeated else "")
    return (f"{protocol} {len(runs)} runs (seeds {', '.join(map(str, seeds))}) from "
            f"{len(directories)} run director{'y' if len(directories) == 1 else 'ies'}"
            f"{f' under {display_path(root)}' if root else ''}. "
            f"Values in %, mean ± sample std over seeds; ranked by {primary.label}.{left_out}")


def leaderboard(rows: Sequence[GroupRow], title: str | None = None, note: str | None = None,
                extra_columns: Mapping[str, Callable[[GroupRow], str]] | None = None) -> Table:
    """A table of already-aggregated rows of one track, best first within each protocol.

    Columns: method, the descriptors (model, the track's own such as memory or teacher, protocol) that the track always shows or
    that differ between rows, the tuned parameters when a row has them, ``settings`` when two
    rows would otherwise look identical (see :func:`~hundred.report.aggregate.settings_labels`:
    the config keys that differ, and the settings digest), seeds (distinct seeds counted),
    then each metric of the track that some row reports. ``extra_columns`` (header -> cell
    function) are appended, e.g. a rank change between two leaderboards, and last ``notes``
    when a row is flagged (``⚠ seeds repeated ...``). ``title`` and ``note`` default to the
    dataset/scenario and the provenance.
    """
    if not rows:
        raise ValueError("a leaderboard needs at least one row")
    if len({row.track for row in rows}) != 1:
        raise ValueError("a leaderboard holds rows of one track")
    rows = sorted(rows, key=lambda r: (r.protocol, r.tuned_on or "", r.rank, r.method,
                                       str(r.model), str(r.descriptors), r.settings or ""))
    spec = rows[0].spec
    cells: dict[str, Callable[[GroupRow], Any]] = {
        label: (lambda row, attr=attr: getattr(row, attr)) for attr, label in _DESCRIPTORS}
    cells = {"model": cells.pop("model"),
             **{key: (lambda row, key=key: row.descriptor(key)) for key in spec.descriptors},
             **cells}

    def shown(label: str, cell: Callable[[GroupRow], Any]) -> bool:
        values = {cell(row) for row in rows}
        if len(values) > 1:
            return True
        when_present = label in _SHOWN_WHEN_PRESENT or label in spec.descriptors
        if when_present and values == {None}:
            return False
        return label in spec.always_shown or label in _SHOWN_WHEN_PRESENT

    descriptors = [(cell, label) for label, cell in cells.items() if shown(label, cell)]
    settings = settings_labels(rows)
    metrics = [m for i, m in enumerate(spec.metrics)
               if i == 0 or any(row.metrics[m.key].n for row in rows)]
    extra = dict(extra_columns or {})
    notes = any(row.notes for row in rows)
    header = ["method", *(label for _, label in descriptors), *(["settings"] if settings else []),
              "seeds", *(m.label for m in metrics), *extra, *(["notes"] if notes else [])]
    align = (["l"] * (1 + len(descriptors) + bool(settings)) + ["r"] * (1 + len(metrics))
             + ["l"] * (len(extra) + notes))
    body = []
    for index, row in enumerate(rows):
        cells = [row.method]
        cells += [MISSING if cell(row) is None else str(cell(row)) for cell, _ in descriptors]
        cells += [settings[index]] if settings else []
        cells.append(str(len(row.runs)))
        cells += [format_stat(row.metrics[m.key], len(row.runs)) for m in metrics]
        cells += [cell(row) for cell in extra.values()]
        cells += ["; ".join(row.notes)] if notes else []
        body.append(cells)
    return Table(title=title if title is not None else table_title(rows[0]),
                 note=note if note is not None else provenance(rows),
                 header=header, body=body, align=align, rows=list(rows))


def build_tables(rows: Sequence[GroupRow]) -> list[Table]:
    """One leaderboard per (track, data, scenario), in the order of ``rows``."""
    groups: dict[tuple, list[GroupRow]] = {}
    for row in rows:
        groups.setdefault(row.table, []).append(row)
    return [leaderboard(members) for members in groups.values()]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def table_markdown(table: Table, level: int = 3) -> str:
    """A table as a Markdown heading, its provenance note and a pipe table."""
    rule = {"l": ":---", "r": "---:"}
    lines = [f"{'#' * level} {table.title}", "", table.note, "",
             "| " + " | ".join(map(_escape, table.header)) + " |",
             "| " + " | ".join(rule[a] for a in table.align) + " |"]
    lines += ["| " + " | ".join(map(_escape, cells)) + " |" for cells in table.body]
    return "\n".join(lines) + "\n"


def tables_markdown(tables: Sequence[Table], level: int = 2,
                    after: Callable[[Table], str] | None = None) -> str:
    """Tables as Markdown, one section per track (``## Track: <name>``); ``after`` adds
    Markdown below each table (the report file puts its figures there)."""
    out: list[str] = []
    track = None
    for table in tables:
        if table.track != track:
            track = table.track
            out.append(f"{'#' * level} Track: {track}\n")
        out.append(table_markdown(table, level + 1) + (after(table) if after else ""))
    return "\n".join(out)


def markdown_tables(rows: Sequence[GroupRow], level: int = 2) -> str:
    """Every leaderboard of aggregated ``rows`` as Markdown (what ``hundred report`` prints)."""
    return tables_markdown(build_tables(rows), level)
