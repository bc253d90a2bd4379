"""reports/index.html: the report in one self-contained file (no server, no CDN, every figure inlined).

It opens, per data set, on a card with the ranking of methods and its quality-against-NFE figure; then the
rest of summary.md, the full grid of grid.md (folded), and the protocol of every entry. Tables sort by a
click on a column's header; a ranking cell shows how its number was made on hover.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from pipeline.config import Params
from pipeline.data import DATASETS
from pipeline.metric_table import ranked
from pipeline.report.tables import budget_cap_line, floor_line, overview_table, ranking_picks, ranking_table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
.lead { margin: 0 0 .6rem; color: #444; font-size: .9rem; }
nav a { margin-right: .8rem; font-size: .9rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 1rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .8rem; }
.card h2 { font-size: 1.1rem; margin: .2rem 0 .4rem; }
.card img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .78rem; margin: .3rem 0 .6rem; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td[title] { cursor: help; }
.floor { font-size: .8rem; color: #444; margin: 0 0 .4rem; }
.pick { color: #666; font-size: .72rem; }
details { margin: .8rem 0; } summary { cursor: pointer; font-weight: 600; }
main img { max-width: 100%; height: auto; }
img.overview { max-width: 100%; max-height: 62vh; height: auto; display: block; }
#overview { margin-bottom: 1rem; }
code { background: #f5f5f5; padding: 0 2px; }
"""

#: sorts a table by a clicked header: numbers by their leading value, other cells as text
SCRIPT = """
document.querySelectorAll('table').forEach(function (table) {
  var heads = table.querySelectorAll('thead th');
  heads.forEach(function (th, column) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var ascending = !th.classList.contains('sorted-asc');
      heads.forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
      th.classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
      var key = function (row) {
        var text = (row.cells[column] || {textContent: ''}).textContent.trim();
        var number = parseFloat(text);
        return isNaN(number) ? text : number;
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def inline(text: str) -> str:
    """A table cell or a line of Markdown's inline marks (**bold**, `code`) as escaped HTML."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def markdown_html(text: str, figures: Path) -> str:
    """Markdown (summary.md's and grid.md's dialect: pipe tables) as HTML, its figures inlined."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return re.sub(r'src="figures/([^"]+)"', lambda m: f'src="{data_uri(figures / m.group(1))}"', rendered)


def protocol_summary(protocol: pd.DataFrame) -> pd.DataFrame:
    """The protocol per data set x method x sampler: each setting's values over its NFEs, seeds and metrics."""
    if protocol.empty:
        return protocol
    shown = [c for c in protocol.columns if c not in ("nfe", "seed", "metric") and not c.startswith("version_")]

    def values(column: pd.Series) -> str:
        distinct = [str(v) for v in dict.fromkeys(column.tolist()) if str(v) not in ("", "nan")]
        if len(distinct) > 3:
            return f"{distinct[0]} … {distinct[-1]}"
        return ", ".join(distinct)

    keys = ["dataset", "method", "sampler"]
    rows = [{**dict(zip(keys, key)), **{c: values(group[c]) for c in shown if c not in keys}}
            for key, group in protocol.groupby(keys, sort=False)]
    return pd.DataFrame(rows, columns=shown)


def _hover(protocol: pd.DataFrame, dataset: str, method: str, sampler: str) -> str:
    rows = protocol[(protocol.dataset == dataset) & (protocol.method == method) & (protocol.sampler == sampler)]
    if rows.empty:
        return ""
    row = rows.iloc[0]
    return "; ".join(f"{column} {row[column]}" for column in rows.columns[3:] if row[column] != "")


def ranking_html(frame: pd.DataFrame, params: Params, dataset: str, protocol: pd.DataFrame) -> str:
    """One data set's ranking table, each cell with its sampler's protocol as a hover title."""
    table = ranking_table(frame, params, dataset)
    if table.empty:
        return "<p>No results.</p>"
    picks = ranking_picks(frame, params, dataset)
    head = "".join(f"<th>{inline(c)}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = [f"<td>{inline(row['rank'])}</td>", f"<td>{inline(row['method'])}</td>"]
        for budget, column in zip(params.report.rank_budgets, table.columns[2:]):
            option = picks[row["method"]][budget]
            if option is None:
                cells.append(f"<td>{inline(row[column])}</td>")
                continue
            title = html.escape(_hover(protocol, dataset, row["method"], option.sampler))
            pick = f" {option.sampler} ({option.nfe_label})"
            value = row[column].replace(pick, "")  # the sampler on its own line, under the number
            cells.append(f'<td title="{title}">{inline(value)}<br><span class="pick">'
                         f"{html.escape(pick.strip())}</span></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def card(frame: pd.DataFrame, params: Params, dataset: str, figures: Path, protocol: pd.DataFrame) -> str:
    metric = ranked(DATASETS[dataset])
    better = "lower" if metric.lower_is_better else "higher"
    figure = figures / f"quality_{dataset}.png"
    image = f'<img alt="{dataset}: quality against NFE" src="{data_uri(figure)}">' if figure.exists() else ""
    floor_note = " ".join(filter(None, [floor_line(frame, params, dataset, metric.name), budget_cap_line(params, dataset)]))
    return (f'<section class="card" id="{dataset}"><h2>{dataset}: <code>{metric.name}</code> ({better} is better)'
            f"</h2>{ranking_html(frame, params, dataset, protocol)}"
            f'<p class="floor">{inline(floor_note)}</p>'
            f"{image}</section>")


def table_html(table: pd.DataFrame) -> str:
    """A frame of cell texts as an HTML table, Markdown's inline marks kept."""
    head = "".join(f"<th>{inline(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{inline(str(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def overview_html(frame: pd.DataFrame, params: Params, figures: Path) -> str:
    """The first screen: every data set's podium (overview_table) and the quality-vs-NFE panels of all of them."""
    table = overview_table(frame, params)
    figure = figures / "quality_vs_nfe.png"
    image = f'<img class="overview" alt="quality against NFE" src="{data_uri(figure)}">' if figure.exists() else ""
    return (f'<section id="overview">{table_html(table) if not table.empty else ""}{image}'
            f'<p class="floor">Each data set in full below: the whole ranking and its figure.</p></section>')


def index_html(frame: pd.DataFrame, params: Params, reading: str, rest: str, grid: str, figures: Path,
               protocol: pd.DataFrame) -> str:
    """The whole page: the cards, summary.md after its rankings (`rest`), grid.md folded, the protocol."""
    versions = "; ".join(f"{c[len('version_'):]} {protocol[c].iloc[0]}" for c in protocol.columns
                         if c.startswith("version_") and len(protocol))
    versions = f"; versions: {html.escape(versions)}" if versions else ""
    protocol = protocol_summary(protocol).fillna("")
    nav = " ".join(f'<a href="#{d}">{d}</a>' for d in params.datasets)
    cards = "".join(card(frame, params, dataset, figures, protocol) for dataset in params.datasets)
    protocol_table = protocol.to_html(index=False, escape=True, border=0) if not protocol.empty else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Benchmark report</title><style>{STYLE}</style></head><body>"
        f"<h1>Benchmark report</h1><p class=\"lead\">Methods: {html.escape(', '.join(params.evaluated_methods()))}. "
        f"Seeds: {html.escape(', '.join(map(str, params.seeds)))}. Each card ranks the methods on one data set; "
        f"hover a cell for how it was made. <a href=\"#protocol\">Protocol</a> · <a href=\"#grid\">Full grid</a>"
        f"</p><nav>{nav}</nav>{overview_html(frame, params, figures)}"
        f'<div class="cards">{cards}</div>'
        f"<details><summary>How to read this report</summary><p>{inline(reading)}</p></details>"
        f"<main>{markdown_html(rest, figures)}</main>"
        f'<details id="grid"><summary>Every method x sampler x NFE (grid.md)</summary>{markdown_html(grid, figures)}'
        f"</details>"
        f'<details id="protocol" open><summary>Protocol of every entry (protocol.csv, per data set x method x '
        f"sampler){versions}</summary>{protocol_table}</details>"
        f"<script>{SCRIPT}</script></body></html>\n")
