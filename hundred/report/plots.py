"""PNG figures for leaderboards of tracks with per-step results (``ReportSpec.steps``): a
curve over the steps with a ± std band, and a heatmap of the step x step matrix per row; and
for tracks that declare per-epoch histograms (``ReportSpec.histograms``), one figure per row
of the histograms its first seed's run logged at its first, middle and last epochs; and for
tracks that declare cost scatters (``ReportSpec.scatters``), a metric against a cost, one
point per run, with the Pareto front drawn.

Figures are drawn on a bare :class:`~matplotlib.figure.Figure` with an explicit Agg canvas
instead of through ``pyplot``: no global backend is switched (a notebook that imports
``hundred`` keeps its own), no display is needed, and no figure outlives its function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hundred.io import atomic_open
from hundred.report.aggregate import GroupRow, curve, mean_matrix, settings_labels
from hundred.report.collect import (Histogram, Warn, finite_number, load_epoch_records,
                                    parse_histogram, print_warning)
from hundred.report.tables import Table
from hundred.track import CostScatter, EpochHistogram, RunImage, StepSeries

DPI = 150
MAX_ANNOTATED_TASKS = 20  # beyond this, numbers in the heatmap cells become unreadable
_MARKERS = "osD^v<>Ph*X"
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Plot:
    """A written figure and the one-line caption that goes under it in the HTML page."""

    path: Path
    caption: str


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``.``, ``_``, ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "unnamed"


def row_label(row: GroupRow, rows: Sequence[GroupRow]) -> str:
    """The method name, plus the model, the track's descriptors (memory, teacher) and the protocol when they tell rows of ``rows`` apart,
    e.g. ``wa (tune-then-evaluate, tuned on synth10)``, and the settings (differing config
    keys, digest) when rows would otherwise share a label: ``wa (optim.lr=0.05 · 3f2a9c1b0d4e)``."""
    def value(of: GroupRow, attr: str) -> Any:
        return of.descriptor(attr) if attr in of.spec.descriptors else getattr(of, attr)

    attrs = ("model", *row.spec.descriptors, "protocol", "tuned_on")
    extras = [str(value(row, attr)) for attr in attrs
              if len({value(other, attr) for other in rows}) > 1 and value(row, attr) is not None]
    if row.tuned_on is not None and extras and extras[-1] == row.tuned_on:
        extras[-1] = f"tuned on {row.tuned_on}"
    settings = _settings_label(row, rows)
    if settings is not None:
        extras.append(settings)
    return row.method + (f" ({', '.join(extras)})" if extras else "")


def _settings_label(row: GroupRow, rows: Sequence[GroupRow]) -> str | None:
    """The row's settings text when another row of ``rows`` looks the same but for its
    settings (see :func:`~hundred.report.aggregate.settings_labels`), else None."""
    labels = settings_labels(rows)
    if labels is None or sum(other.visible == row.visible for other in rows) < 2:
        return None
    return labels[next(i for i, other in enumerate(rows) if other is row)]


def _where(row: GroupRow, rows: Sequence[GroupRow]) -> str:
    """``wa on synth100 B0-Inc10`` for warnings (with the row's distinguishing label)."""
    return f"{row_label(row, rows)} on {_setting(row)}"


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attaches the Agg canvas that renders the PNG
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=DPI)
    return path


def _free_name(out: Path, stem: str, taken: set[str]) -> Path:
    """``out/<stem>.png``, with ``-2``, ``-3``... when two sanitised names collide."""
    name, suffix = f"{stem}.png", 2
    while name in taken:
        name, suffix = f"{stem}-{suffix}.png", suffix + 1
    taken.add(name)
    return out / name


def step_curve(rows: Sequence[GroupRow], steps: StepSeries, path: Path,
               warn: Warn = print_warning) -> Path | None:
    """The per-step curve (e.g. top-1 on all seen classes vs the number of classes), one line
    per row (mean over seeds, shaded ± std band), best-ranked first in the legend. None when
    no row has a curve."""
    # many methods would cover the curves: widen the figure and put the legend beside the axes
    outside = len(rows) > 6
    figure = Figure(figsize=(8.8 if outside else 7.0, 4.6), layout="constrained")
    ax = figure.add_subplot()
    # a method keeps its colour and marker across protocols; the protocol sets the line style;
    # rows of one method told apart only by their settings get colours of their own
    def colour_key(row: GroupRow) -> tuple[str, str | None]:
        return (row.method, _settings_label(row, rows))

    methods = list(dict.fromkeys(colour_key(row) for row in rows))
    protocols = list(dict.fromkeys(row.protocol_label for row in rows))
    drawn = 0
    for row in rows:
        series = curve(row, steps.curve, steps.steps)
        if series is None:
            missing = sum(run.get(steps.curve) is None for run in row.runs)
            reason = (f"{missing} of its {len(row.runs)} runs lack it" if missing else
                      f"its runs disagree on {steps.steps}")
            warn(f"no {steps.curve} curve drawn for {_where(row, rows)}: {reason}")
            continue
        classes, mean, std = series
        index = methods.index(colour_key(row))
        colour = f"C{index % 10}"
        ax.plot(classes, mean, color=colour, marker=_MARKERS[index % len(_MARKERS)], markersize=5,
                linestyle=_LINESTYLES[protocols.index(row.protocol_label) % len(_LINESTYLES)],
                linewidth=1.8, label=f"{row_label(row, rows)} · n={len(row.runs)}")
        ax.fill_between(classes, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
        drawn += 1
    if not drawn:
        return None
    first = rows[0]
    ax.set_title(_setting(first), fontsize=13)
    ax.set_xlabel(steps.steps_label)
    ax.set_ylabel(steps.curve_label)
    ticks = sorted({c for row in rows for c in row.runs[0][steps.steps]})
    if len(ticks) <= 12:  # one tick per step; more would overlap (the default locator then)
        ax.set_xticks(ticks)
    ax.grid(True, alpha=0.3)
    caption = "mean ± std over seeds" + (f", {protocols[0]}" if len(protocols) == 1 else "")
    ax.legend(title=caption, fontsize=8, title_fontsize=8, loc="upper left" if outside else "best",
              bbox_to_anchor=(1.01, 1.0) if outside else None, framealpha=0.9)
    return _save(figure, path)


def _setting(row: GroupRow) -> str:
    """``B0-Inc10 on synth100`` (the scenario when the track has one, then the data)."""
    return f"{row.scenario} on {row.data}" if row.scenario else row.data


def step_matrix(row: GroupRow, steps: StepSeries, path: Path, label: str | None = None
                ) -> Path | None:
    """Heatmap of the mean step x step matrix a[t][j] (e.g. top-1 on task j's classes after
    task t), lower triangle only, on a fixed 0-100 scale so heatmaps of methods compare."""
    assert steps.matrix is not None
    matrix = mean_matrix(row, steps.matrix)
    if matrix is None:
        return None
    tasks = matrix.shape[0]
    shown = np.ma.masked_invalid(np.where(np.tril(np.ones_like(matrix, dtype=bool)), matrix, np.nan))
    side = min(max(4.8, 0.42 * tasks + 2.4), 11.0)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = figure.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")  # the hidden triangle
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=100.0, interpolation="nearest")
    if tasks <= MAX_ANNOTATED_TASKS:
        size = 9 if tasks <= 8 else 8 if tasks <= 12 else 6.5
        for t in range(tasks):
            for j in range(t + 1):
                value = shown[t, j]
                if value is np.ma.masked:
                    continue
                r, g, b, _ = image.cmap(image.norm(value))
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(j, t, f"{value:.0f}" if tasks > 10 else f"{value:.1f}", ha="center",
                        va="center", color=ink, fontsize=size)
    ticks = range(tasks) if tasks <= MAX_ANNOTATED_TASKS else None
    if ticks is not None:
        ax.set_xticks(list(ticks), [str(i + 1) for i in ticks])
        ax.set_yticks(list(ticks), [str(i + 1) for i in ticks])
    else:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
            axis.set_major_formatter(lambda value, _: f"{int(value) + 1}")
    ax.set_xlabel(steps.matrix_column_label)
    ax.set_ylabel(steps.matrix_row_label)
    seeds, label = len(row.runs), label or row.method
    protocol = "" if row.protocol in label else f", {row.protocol_label}"  # said once is enough
    ax.set_title(f"{label}: {_setting(row)}\n"
                 f"top-1 (%), mean of {seeds} seed{'s' * (seeds != 1)}{protocol}", fontsize=11)
    figure.colorbar(image, ax=ax, shrink=0.85, label="top-1 accuracy (%)")
    return _save(figure, path)


def shown_epochs(epochs: Sequence[int]) -> list[int]:
    """The first, middle and last of the sorted ``epochs`` (fewer when they coincide)."""
    ordered = sorted(set(epochs))
    if not ordered:
        return []
    return sorted({ordered[0], ordered[(len(ordered) - 1) // 2], ordered[-1]})


def epoch_histograms(row: GroupRow, rows: Sequence[GroupRow], spec: EpochHistogram, path: Path,
                     warn: Warn = print_warning) -> Plot | None:
    """The histograms ``spec.key`` that the run of the row's first seed logged in its
    ``metrics.jsonl``, at its first, middle and last logged epochs (one panel each): every
    series as the fraction of its counts per bin, on shared axes so the epochs compare.
    None when the run logged none (the method keeps no such histogram)."""
    run = row.runs[0]
    logged = [record for record in load_epoch_records(run) if spec.key in record]
    if not logged:
        return None
    found: dict[int, Histogram] = {}
    for record in logged:
        epoch, histogram = record.get("epoch"), parse_histogram(record[spec.key])
        if isinstance(epoch, int) and not isinstance(epoch, bool) and histogram is not None:
            found[epoch] = histogram  # a resumed run rewrote its later epochs: keep the last
    if not found:
        warn(f"no {spec.key} histogram drawn for {_where(row, rows)}: the records of its "
             f"seed-{run['seed']} run hold no well-formed histogram")
        return None
    epochs = shown_epochs(list(found))
    label = row_label(row, rows)
    figure = Figure(figsize=(0.4 + 3.9 * len(epochs), 3.9), layout="constrained")
    axes = figure.subplots(1, len(epochs), sharex=True, sharey=True, squeeze=False)[0]
    for ax, epoch in zip(axes, epochs):
        histogram = found[epoch]
        edges = np.linspace(histogram.low, histogram.high, histogram.bins + 1)
        for index, (name, counts) in enumerate(histogram.counts.items()):
            values = np.asarray(counts, dtype=float)
            total = values.sum()
            fraction = values / total if total > 0 else values
            colour = f"C{index % 10}"
            ax.stairs(fraction, edges, fill=True, alpha=0.22, color=colour)
            ax.stairs(fraction, edges, color=colour, linewidth=1.5,
                      label=f"{name} (n={total:.0f})")
        ax.set_title(f"epoch {epoch}", fontsize=10)
        ax.set_xlabel(spec.label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    axes[0].set_ylabel("fraction of the series per bin")
    figure.suptitle(f"{label}: {spec.title}\n{_setting(row)}, seed {run['seed']}", fontsize=11)
    shown = ", ".join(map(str, epochs))
    caption = (f"{spec.title[:1].upper()}{spec.title[1:]} of {label} (seed {run['seed']}), at "
               f"epoch{'s' * (len(epochs) != 1)} {shown}: the fraction of each series per bin.")
    return Plot(_save(figure, path), caption)


def plot_table(table: Table, out: Path, taken: set[str], warn: Warn = print_warning) -> list[Plot]:
    """The figures of one leaderboard: its track's per-step curve and matrices (none for a
    track without per-step results), then per row the per-epoch histograms its track
    declares (none for a track without, or for rows whose runs logged none).

    ``taken`` holds the file names already used in ``out`` so sanitised names never collide."""
    rows = table.rows
    group = slug(f"{rows[0].data}_{rows[0].scenario}" if rows[0].scenario else rows[0].data)
    plots = _step_plots(rows, group, out, taken, warn)
    for scatter in rows[0].spec.scatters:
        path = _free_name(out, f"{scatter.name}_{group}", taken)
        plot = cost_scatter(rows, scatter, path, warn)
        if plot is not None:
            plots.append(plot)
    for row in rows:
        for spec in row.spec.histograms:
            label = row_label(row, rows)
            name = f"{spec.name}_{group}_{slug(label)}"
            stem, suffix = name, 2
            while f"{stem}.png" in taken:  # claim a name only for a figure that is drawn
                stem, suffix = f"{name}-{suffix}", suffix + 1
            plot = epoch_histograms(row, rows, spec, out / f"{stem}.png", warn)
            if plot is not None:
                taken.add(plot.path.name)
                plots.append(plot)
        for picture in row.spec.images:
            plot = run_image(row, rows, picture, out, group, taken)
            if plot is not None:
                plots.append(plot)
    return plots


def run_image(row: GroupRow, rows: Sequence[GroupRow], picture: RunImage, out: Path,
              group: str, taken: set[str]) -> Plot | None:
    """The picture ``picture.file`` that the run of the row's first seed wrote, copied next to
    the report (atomically); None when that run has none."""
    path = rows and row.runs[0].get("summary_path")
    source = Path(path).parent / picture.file if path else None
    if source is None or not source.is_file():
        return None
    label = row_label(row, rows)
    stem = Path(picture.file).stem
    target = _free_name(out, f"{stem}_{group}_{slug(label)}", taken)
    with atomic_open(target, "wb") as handle:
        handle.write(source.read_bytes())
    caption = f"{picture.caption[:1].upper()}{picture.caption[1:]}: {label} ({_setting(row)}, " \
              f"seed {row.runs[0]['seed']})."
    return Plot(target, caption)


def _step_plots(rows: Sequence[GroupRow], group: str, out: Path, taken: set[str],
                warn: Warn) -> list[Plot]:
    """The per-step curve and matrices of ``rows`` (none without ``ReportSpec.steps``)."""
    steps = rows[0].spec.steps
    if steps is None:
        return []
    curve_name, matrix_name = steps.figure_names
    plots: list[Plot] = []
    path = step_curve(rows, steps, _free_name(out, f"{curve_name}_{group}", taken), warn)
    if path is not None:
        plots.append(Plot(path, f"{steps.curve_label} vs {steps.steps_label}, "
                                f"{_setting(rows[0])} (mean ± std over seeds)."))
    if steps.matrix is None:
        return plots
    for row in rows:
        label = row_label(row, rows)
        path = step_matrix(row, steps, _free_name(out, f"{matrix_name}_{group}_{slug(label)}",
                                                  taken), label)
        if path is None and any(run.get(steps.matrix) is not None for run in row.runs):
            warn(f"no {steps.matrix} heatmap drawn for {_where(row, rows)}: some of its runs "
                 "lack the matrix or the runs disagree on its shape")
        if path is not None:
            plots.append(Plot(path, f"{matrix_name.replace('_', ' ').capitalize()} of {label}: "
                                    f"row t ({steps.matrix_row_label} t), column j "
                                    f"({steps.matrix_column_label} j)."))
    return plots


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True
                 ) -> list[tuple[float, float]]:
    """The points of ``points`` (cost, value) that no other point dominates (a cost as low or
    lower and a value strictly better, or a strictly lower cost and a value as good), by
    increasing cost; of equal points one is kept."""
    sign = 1.0 if higher_is_better else -1.0
    ordered = sorted(points, key=lambda point: (point[0], -sign * point[1]))
    front: list[tuple[float, float]] = []
    for cost, value in ordered:
        if not front or sign * value > sign * front[-1][1]:
            front.append((cost, value))
    return front


_LEGEND_CHARS = 60  # longest row name a scatter legend shows


def cost_scatter(rows: Sequence[GroupRow], scatter: CostScatter, path: Path,
                 warn: Warn = print_warning) -> Plot | None:
    """The metric ``scatter.metric`` (the primary one when None) against the cost
    ``scatter.cost`` of every run of ``rows``: one point per run, a colour and marker per
    row, and the Pareto front of all the points as a staircase. Runs without a finite cost
    (positive on a log axis) or metric are left out, with a warning per row; None when no
    run has both."""
    spec = rows[0].spec
    key = scatter.metric or spec.primary.key
    metric = next((m for m in spec.metrics if m.key == key), None)
    label = metric.label if metric is not None else key
    higher = metric.higher_is_better if metric is not None else True
    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = figure.add_subplot()
    points: list[tuple[float, float]] = []
    for index, row in enumerate(rows):
        mine = []
        for run in row.runs:
            cost, value = finite_number(run.get(scatter.cost)), finite_number(run.get(key))
            if cost is None or value is None or (scatter.log_cost and cost <= 0):
                continue
            mine.append((cost, value))
        if len(mine) < len(row.runs):
            warn(f"{len(row.runs) - len(mine)} of the {len(row.runs)} runs of "
                 f"{_where(row, rows)} lack {scatter.cost} or {key}: left out of the "
                 f"{label}-vs-{scatter.cost_label} plot")
        if not mine:
            continue
        name = row_label(row, rows)
        if len(name) > _LEGEND_CHARS:  # e.g. a supernet child's whole shape
            name = name[:_LEGEND_CHARS - 1] + "…"
        ax.scatter([c for c, _ in mine], [v for _, v in mine], s=36, alpha=0.85,
                   color=f"C{index % 10}", marker=_MARKERS[index % len(_MARKERS)],
                   label=f"{name} · n={len(mine)}", zorder=3)
        points += mine
    if not points:
        return None
    front = pareto_front(points, higher)
    # the staircase runs on to the costliest run: what the front reaches at any cost
    stairs = [*front, (max(c for c, _ in points), front[-1][1])]
    ax.step([c for c, _ in stairs], [v for _, v in stairs], where="post", color="0.25",
            linewidth=1.3, linestyle="--", label="Pareto front", zorder=2)
    ax.scatter([c for c, _ in front], [v for _, v in front], s=110, facecolors="none",
               edgecolors="0.25", linewidths=1.1, zorder=4)
    if scatter.log_cost:
        ax.set_xscale("log")
    ax.set_xlabel(scatter.cost_label + (" (log scale)" if scatter.log_cost else ""))
    ax.set_ylabel(label)
    ax.set_title(_setting(rows[0]), fontsize=13)
    ax.grid(True, alpha=0.3, which="both")
    if len(rows) > 4:  # many rows: the legend beside the axes, not over the points
        figure.set_size_inches(11.0, 4.6)
        ax.legend(title="one point per run", fontsize=7, title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    else:
        ax.legend(title="one point per run", fontsize=8, title_fontsize=8, loc="best",
                  framealpha=0.9)
    better = "higher" if higher else "lower"
    caption = (f"{label} against {scatter.cost_label}, {_setting(rows[0])}: one point per run; "
               f"the dashed line is the Pareto front (no other run has a lower cost and a "
               f"{better} {label}).")
    return Plot(_save(figure, path), caption)
