"""A self-contained HTML page of the report: inline CSS, real tables, figures by relative path.

Nothing is fetched from elsewhere (no CSS or JS links), so the page opens offline and the
report folder can be zipped or copied as one unit; the PNGs sit next to ``index.html``.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Sequence

from hundred.report.plots import Plot
from hundred.report.tables import Table

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
.meta, .note { color: #555; font-size: 0.92rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1.2rem; font-size: 0.95rem; }
th, td { padding: 0.3rem 0.75rem; border-bottom: 1px solid #ddd; }
th { background: #f3f4f6; border-bottom: 2px solid #bbb; text-align: left; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { font-weight: 600; }
figure { display: inline-block; margin: 0.4rem 1rem 1rem 0; vertical-align: top; }
figure img { max-width: 100%; width: 34rem; border: 1px solid #e5e5e5; }
figcaption { color: #555; font-size: 0.85rem; max-width: 34rem; }
.warnings { border: 2px solid #d08700; background: #fff8e6; border-radius: 6px;
            padding: 0.5rem 1rem; margin: 1rem 0 1.5rem; color: #5c3600; }
.warnings h2 { margin: 0.2rem 0 0.4rem; font-size: 1.15rem; }
.warnings li { margin: 0.2rem 0; overflow-wrap: anywhere; }
td.warn { color: #8a4b00; font-weight: 600; }
"""


def table_html(table: Table) -> str:
    """A :class:`Table` as an HTML ``<table>`` (cells escaped; numbers right-aligned)."""
    def cells(tag: str, values: Sequence[str]) -> str:
        # a flagged cell (``⚠ seeds repeated ...``) is set in the warning colour
        return "".join(f'<{tag} class="{a}{" warn" if v.startswith("⚠") else ""}">{escape(v)}</{tag}>'
                       for a, v in zip(table.align, values))

    # the best row of each protocol's leaderboard (rank 1) is set in bold
    best = ' class="best"'
    body = "\n".join(f"<tr{best if row.rank == 1 else ''}>{cells('td', values)}</tr>"
                      for row, values in zip(table.rows, table.body))
    return (f"<table>\n<thead><tr>{cells('th', table.header)}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>")


def _figure(plot: Plot, out: Path) -> str:
    source = plot.path.relative_to(out).as_posix() if plot.path.is_relative_to(out) else plot.path.name
    return (f'<figure><img src="{escape(source)}" alt="{escape(plot.caption)}">'
            f"<figcaption>{escape(plot.caption)}</figcaption></figure>")


def warnings_html(warnings: Sequence[str]) -> str:
    """The Warnings box (empty text when there is nothing to warn about)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    count = f"{len(warnings)} warning{'s' * (len(warnings) != 1)}"
    return (f'<div class="warnings" role="alert">\n<h2>⚠ Warnings</h2>\n'
            f"<p>{count} about the runs behind this report:</p>\n<ul>{items}</ul>\n</div>")


def render_page(tables: Sequence[Table], plots: Sequence[Sequence[Plot]], out: Path,
                meta: Sequence[str], skipped: Sequence[str] = (),
                title: str = "hundred report", warnings: Sequence[str] = ()) -> str:
    """The whole page: ``plots[i]`` are the figures of ``tables[i]``; ``meta`` lines go under
    the title (when, from where); ``skipped`` (summaries left out) and ``warnings`` fill a
    box right under them, so a reader sees them before any number."""
    parts = [f"<h1>{escape(title)}</h1>", *(f'<p class="meta">{escape(line)}</p>' for line in meta)]
    box = warnings_html(list(dict.fromkeys([*skipped, *warnings])))
    if box:
        parts.append(box)
    track = None
    for table, figures in zip(tables, plots):
        if table.track != track:
            track = table.track
            parts.append(f"<h2>Track: {escape(track)}</h2>")
        parts += ["<section>", f"<h3>{escape(table.title)}</h3>",
                  f'<p class="note">{escape(table.note)}</p>', table_html(table),
                  *(_figure(plot, out) for plot in figures), "</section>"]
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")
