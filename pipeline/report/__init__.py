"""The comparison: reports/results.csv (long form), protocol.csv, summary.md, grid.md, index.html and
figures/ (pipeline.report.results, tables, summary, figures, html).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from pipeline.config import Params
from pipeline.convergence import STUDY as CONVERGENCE_STUDY
from pipeline.convergence import collect_convergence
from pipeline.io import atomic_directory, write_text
from pipeline.protocol import protocol_table
from pipeline.report.figures import write_figures
from pipeline.report.results import collect_results, load_oracle_study
from pipeline.report.html import index_html
from pipeline.report.summary import grid_markdown, reading_paragraph, summary_parts
from pipeline.report.tables import headline_values, quality_table


def _csv(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g")
    return buffer.getvalue()


def run_report(root: Path, params: Params) -> Path:
    """Every file of the report from the stages' outputs; the figures' folder is replaced as a whole."""
    frame = collect_results(root, params)
    reports = root / "reports"
    write_text(reports / "results.csv", _csv(frame))
    protocol = protocol_table(frame, params, root)
    write_text(reports / "protocol.csv", _csv(protocol))
    convergence = collect_convergence(root, params)
    write_text(reports / "convergence.csv", _csv(convergence))
    source = "this run's `train.snapshots`"
    if (convergence.method != "data").sum() == 0 and (root / CONVERGENCE_STUDY).exists():
        convergence = pd.read_csv(root / CONVERGENCE_STUDY)
        source = f"the study profile `profiles/convergence.yaml`, kept as {CONVERGENCE_STUDY}"
    has_curves = (convergence.method != "data").sum() > 0
    write_text(reports / "headline.json", json.dumps(headline_values(frame, params), indent=1, sort_keys=False) + "\n")
    write_text(reports / "quality_vs_nfe.csv", _csv(quality_table(frame, params)))
    with atomic_directory(reports / "figures") as tmp:
        figures = write_figures(root, frame, params, tmp, convergence if has_curves else None)
        opening, rest = summary_parts(frame, params, figures, load_oracle_study(root),
                                      (convergence, source) if has_curves else None)
        grid = grid_markdown(frame, params)
        page = index_html(frame, params, reading_paragraph(params), rest, grid, tmp, protocol)
    write_text(reports / "summary.md", opening + "\n" + rest)
    write_text(reports / "grid.md", grid)
    write_text(reports / "index.html", page)
    return reports / "summary.md"
