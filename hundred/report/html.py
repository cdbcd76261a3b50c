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
.skipped { color: #8a4b00; }
"""


def table_html(table: Table) -> str:
    """A :class:`Table` as an HTML ``<table>`` (cells escaped; numbers right-aligned)."""
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f'<{tag} class="{a}">{escape(v)}</{tag}>' for a, v in zip(table.align, values))

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


def render_page(tables: Sequence[Table], plots: Sequence[Sequence[Plot]], out: Path,
                meta: Sequence[str], skipped: Sequence[str] = (),
                title: str = "hundred report") -> str:
    """The whole page: ``plots[i]`` are the figures of ``tables[i]``; ``meta`` lines go under
    the title (when, from where); ``skipped`` lists summaries left out, so a reader sees them."""
    parts = [f"<h1>{escape(title)}</h1>", *(f'<p class="meta">{escape(line)}</p>' for line in meta)]
    track = None
    for table, figures in zip(tables, plots):
        if table.track != track:
            track = table.track
            parts.append(f"<h2>Track: {escape(track)}</h2>")
        parts += ["<section>", f"<h3>{escape(table.title)}</h3>",
                  f'<p class="note">{escape(table.note)}</p>', table_html(table),
                  *(_figure(plot, out) for plot in figures), "</section>"]
    if skipped:
        parts.append("<h2>Skipped summaries</h2>")
        parts.append("<ul>" + "".join(f'<li class="skipped">{escape(s)}</li>' for s in skipped)
                     + "</ul>")
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")
