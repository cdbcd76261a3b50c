"""Reports a researcher puts in a paper: leaderboards (mean ± std over seeds, with the
protocol that produced them), accuracy curves and accuracy matrices, as Markdown, HTML and PNG.

Typical use::

    runs = collect_runs(["runs/incremental"])   # every valid summary.json below the path
    rows = aggregate(runs)                       # one GroupRow per setting, ranked per protocol
    print(markdown_tables(rows))
    write_report(["runs/incremental"], out="reports/wa")   # what `hundred report` does

Importing this package does not import matplotlib; only writing figures does.
"""

from hundred.report.aggregate import GroupRow, Stat, aggregate, curve, mean_matrix
from hundred.report.build import ReportPaths, render_report, write_report
from hundred.report.collect import TRACK_SPECS, Metric, TrackSpec, collect_runs, spec_for
from hundred.report.tables import (Table, build_tables, format_stat, leaderboard,
                                   markdown_tables, table_markdown, tables_markdown)

__all__ = [
    "GroupRow", "Metric", "ReportPaths", "Stat", "TRACK_SPECS", "Table", "TrackSpec", "aggregate",
    "build_tables", "collect_runs", "curve", "format_stat", "leaderboard", "markdown_tables",
    "mean_matrix", "render_report", "spec_for", "table_markdown", "tables_markdown", "write_report",
]
