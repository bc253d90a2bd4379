"""README.md's "Results": the rankings of reports/summary.md copied between two markers
(`pipeline report --readme`), so that the README shows what the last run found and nothing else."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import StageError
from pipeline.io import write_text

BEGIN = "<!-- results: written by `pipeline report --readme` from reports/summary.md; do not edit -->"
END = "<!-- results: end -->"
#: the summary's section the block copies, up to the next section of the same level
SECTION = "## Which method wins, per data set"


def results_block(summary: str) -> str:
    """The summary's ranking section, its headings one level down (the README's Results is a level-2 section)."""
    lines = summary.splitlines()
    if SECTION not in lines:
        raise StageError(f"reports/summary.md has no section '{SECTION}'; run `dvc repro` first")
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    intro = next((line for line in lines if line.startswith("Methods: ")), "")
    body = [("#" + line if line.startswith("#") else line) for line in lines[start:end]]
    body = [line.replace("](figures/", "](reports/figures/") for line in body]
    return "\n".join([intro, "", *body]).strip() + "\n"


def readme_block(readme: str) -> str | None:
    """What README.md holds between the markers (None without them)."""
    if BEGIN not in readme or END not in readme:
        return None
    return readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)].strip("\n") + "\n"


def write_readme(readme_path: Path, summary_path: Path) -> Path:
    """Replace README.md's block between the markers by the summary's rankings."""
    if not summary_path.exists():
        raise StageError(f"{summary_path} is missing; run `dvc repro` first")
    readme = readme_path.read_text() if readme_path.exists() else ""
    if readme_block(readme) is None:
        raise StageError(f"{readme_path} has no results markers; add the two lines\n{BEGIN}\n{END}")
    block = results_block(summary_path.read_text())
    head, tail = readme[:readme.index(BEGIN) + len(BEGIN)], readme[readme.index(END):]
    write_text(readme_path, f"{head}\n{block}{tail}")
    return readme_path
