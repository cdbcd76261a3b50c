"""Reports a researcher puts in a paper: leaderboards (mean ± std over seeds, with the
protocol that produced them), per-step curves and matrices, per-epoch histograms of a run's
logged values, as Markdown, HTML and PNG.

Typical use::

    runs = collect_runs(["runs"])    # every valid summary.json below the path
    rows = aggregate(runs)           # one GroupRow per setting (digest included), ranked
    print(markdown_tables(rows))
    write_report(["runs"], out="reports/all")   # what `hundred report` does

What a track's reports show (metrics, columns, per-step plots) is its ``Track.report``.

Importing this package does not import matplotlib; only writing figures does.
"""

from hundred.report.aggregate import (GroupRow, Stat, aggregate, curve, mean_matrix,
                                      one_run_per_seed, settings_labels)
from hundred.report.build import ReportPaths, render_report, write_report
from hundred.report.collect import collect_runs, spec_for
from hundred.report.tables import (Table, build_tables, format_stat, leaderboard,
                                   markdown_tables, table_markdown, tables_markdown)
from hundred.track import Metric, ReportSpec

__all__ = [
    "GroupRow", "Metric", "ReportPaths", "ReportSpec", "Stat", "Table", "aggregate",
    "build_tables", "collect_runs", "curve", "format_stat", "leaderboard", "markdown_tables",
    "mean_matrix", "one_run_per_seed", "render_report", "settings_labels", "spec_for",
    "table_markdown", "tables_markdown", "write_report",
]
