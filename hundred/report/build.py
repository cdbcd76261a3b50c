"""``write_report``: run directories in, ``report.md`` + ``index.html`` + PNG figures out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from hundred.io import write_text
from hundred.report.aggregate import GroupRow, aggregate
from hundred.report.collect import Warn, collect_runs, print_warning
from hundred.report.tables import Table, build_tables, display_path, tables_markdown


@dataclass(frozen=True)
class ReportPaths:
    """What :func:`write_report` wrote, plus the rows behind it so callers (the CLI, ``hundred
    check``) can print or compare them without reading the files back."""

    out: Path
    markdown: Path
    html: Path
    plots: list[Path]
    rows: list[GroupRow] = field(repr=False)
    tables: list[Table] = field(repr=False)
    skipped: list[str] = field(default_factory=list)
    # every warning the report files show (skipped summaries first), in that order
    warnings: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Every file written, report files first."""
        return [self.markdown, self.html, *self.plots]


def default_out_dir(root: str | os.PathLike = "reports") -> Path:
    """A new ``reports/<YYYYmmdd-HHMMSS>`` folder (suffixed ``-2``... if that one exists), so a
    report never overwrites an earlier one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in range(1, 1000):
        path = Path(root) / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free report folder name under {root}")


def write_report(paths: Iterable[str | os.PathLike], out: str | os.PathLike | None = None,
                 warn: Warn = print_warning) -> ReportPaths:
    """Collect the runs below ``paths``, aggregate them over seeds and write the report.

    ``out`` defaults to a fresh ``reports/<timestamp>/`` in the current directory. Writes
    ``report.md`` (tables and figure links), ``index.html`` (self-contained page) and, for
    tracks with per-step results, a curve and matrices as PNG (``Track.report.steps``), for
    tracks with per-epoch histograms one figure per row (``Track.report.histograms``). Bad
    paths raise HundredError. Every warning — malformed summaries skipped, seeds repeated,
    settings unknown, figures that could not be drawn — goes to ``warn`` and into the
    Warnings section of both report files.
    """
    paths = [Path(p) for p in paths]
    skipped: list[str] = []
    runs = collect_runs(paths, warn=warn, skipped=skipped)
    rows = aggregate(runs, warn=warn)
    meta = [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(runs)} runs in "
            f"{', '.join(display_path(p) for p in paths)}.",
            "Every number is the mean ± sample standard deviation over seeds (n = number of "
            "seeds, each counted once); runs with different settings are different rows; each "
            "table says which protocol produced it."]
    return render_report(build_tables(rows), rows, out, meta, skipped, warn=warn)


def _unique(messages: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(messages))


def render_report(tables: Sequence[Table], rows: Sequence[GroupRow],
                  out: str | os.PathLike | None, meta: Sequence[str], skipped: Sequence[str] = (),
                  title: str = "hundred report", warn: Warn = print_warning,
                  warnings: Sequence[str] = ()) -> ReportPaths:
    """Write already-built ``tables`` as ``report.md``, ``index.html`` and their figures into
    ``out`` (default: a fresh ``reports/<timestamp>/``); ``meta`` lines go under the title.
    :func:`write_report` and ``hundred check`` (two leaderboards side by side) both use it.

    Both files open with a Warnings section listing, in order: ``skipped`` (summaries left
    out), the ``warnings`` of ``rows`` and of the tables' rows (seeds repeated, settings
    unknown: see :func:`~hundred.report.aggregate.aggregate`), the caller's own
    ``warnings``, and figures that could not be drawn (those also go to ``warn``; the others
    are the caller's to print, as :func:`write_report` does). Each message appears once.
    """
    from hundred.report.html import render_page  # matplotlib loads only when writing figures
    from hundred.report.plots import plot_table

    out_dir = default_out_dir() if out is None else Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    noted = _unique([*skipped,
                     *(message for row in rows for message in row.warnings),
                     *(message for table in tables for row in table.rows
                       for message in row.warnings),
                     *warnings])
    drawing: list[str] = []

    def record(message: str) -> None:
        drawing.append(message)
        warn(message)

    taken: set[str] = set()
    plots = [plot_table(table, out_dir, taken, record) for table in tables]
    figures = {id(table): table_plots for table, table_plots in zip(tables, plots)}
    every = _unique([*noted, *drawing])

    def figure_links(table: Table) -> str:
        return "".join(f"\n![{plot.caption}]({plot.path.name})\n" for plot in figures[id(table)])

    markdown = f"# {title}\n\n" + "\n\n".join(meta) + "\n\n"
    if every:
        markdown += (f"## Warnings\n\n{len(every)} warning{'s' * (len(every) != 1)} about the "
                     "runs behind this report:\n\n" + "".join(f"- ⚠ {w}\n" for w in every) + "\n")
    markdown += tables_markdown(tables, level=2, after=figure_links)
    markdown_path = out_dir / "report.md"
    html_path = out_dir / "index.html"
    write_text(markdown_path, markdown)
    write_text(html_path, render_page(tables, plots, out_dir, meta, title=title, warnings=every))
    return ReportPaths(out=out_dir, markdown=markdown_path, html=html_path,
                       plots=[plot.path for table_plots in plots for plot in table_plots],
                       rows=list(rows), tables=list(tables), skipped=list(skipped),
                       warnings=every)
