"""The report's page (reports/index.html) and README's Results block, on a synthetic report; the pipeline
tests open the smoke run's page the same way."""

import pandas as pd
import pytest

from conftest import open_page
from pipeline.config import Params
from pipeline.errors import StageError
from pipeline.report.html import index_html, inline, markdown_html
from pipeline.report.readme import BEGIN, END, readme_block, results_block, write_readme
from pipeline.report.results import COLUMNS

PARAMS = Params.model_validate({"datasets": ["moons"], "seeds": [0, 1, 2],
                                "methods": {"ddpm": {}, "flow_matching": {}}})


def _frame():
    rows = [("moons", "data", "data", 0, 0, "w2", 0.10), ("moons", "data", "data", 0, 0, "w2_sd", 0.01)]
    for seed, jitter in enumerate([0.0, 0.01, -0.01]):
        rows += [("moons", "ddpm", "ancestral_beta", nfe, seed, "w2", value + jitter)
                 for nfe, value in [(10, 0.9), (100, 0.5), (1000, 0.12)]]
        rows += [("moons", "flow_matching", "ode_euler", nfe, seed, "w2", value + jitter)
                 for nfe, value in [(10, 0.3), (100, 0.2), (1000, 0.19)]]
    return pd.DataFrame([dict(zip(COLUMNS, row)) for row in rows], columns=COLUMNS)


def _protocol(frame):
    return frame.drop(columns="value").assign(n_generated=1000, solver="euler", version_torch="2.x")


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    from pipeline.report.figures import quality_figure

    folder = tmp_path_factory.mktemp("page")
    figures = folder / "figures"
    figures.mkdir()
    frame = _frame()
    quality_figure(frame, PARAMS, figures)
    rest = "## Details\n\n| a | b |\n| --- | --- |\n| 2 | x |\n| 10 | y |\n\n![quality](figures/quality_vs_nfe.png)\n"
    page = index_html(frame, PARAMS, "How to **read** it.", rest, "# Grid\n\n| c |\n| --- |\n| 1 |\n", figures,
                      _protocol(frame))
    path = folder / "index.html"
    path.write_text(page)
    return path


def test_the_page_is_self_contained(page_file):
    text = page_file.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "src=\"figures/" not in text
    assert text.count("data:image/png;base64,") == 3  # the overview's, the card's and the one of the rest
    assert 'id="moons"' in text and "<strong>" in text  # flow matching's significant win is bold
    assert 'title="n_generated 1000; solver euler' in text  # the protocol on hover


def test_the_page_loads_in_a_browser_and_its_tables_sort(browser, page_file):
    page, problems = open_page(browser, page_file)
    assert problems == []
    card = page.locator("section#moons")
    assert card.locator("table tbody tr").count() == 2 and card.locator("img").count() == 1
    assert card.locator("tbody tr").first.locator("td").nth(1).inner_text() == "flow_matching"
    # the first screen: every data set's podium and its quality-vs-NFE panel
    overview = page.locator("#overview")
    assert overview.locator("tbody tr").count() == len(PARAMS.datasets)
    assert overview.locator("tbody tr").first.locator("td").nth(2).inner_text().startswith("flow_matching: 0.200")
    box = overview.locator("img").bounding_box()
    assert box["y"] + box["height"] <= 1000, box
    details = page.locator("main table").first
    details.locator("th").first.click()
    assert [c.inner_text() for c in details.locator("tbody tr td:first-child").all()] == ["2", "10"]
    details.locator("th").first.click()
    assert [c.inner_text() for c in details.locator("tbody tr td:first-child").all()] == ["10", "2"]
    page.close()


def test_inline_marks_and_markdown_tables_become_html(tmp_path):
    assert inline("**0.2** <b> `w2`") == "<strong>0.2</strong> &lt;b&gt; <code>w2</code>"
    assert "<table>" in markdown_html("| a |\n| --- |\n| 1 |\n", tmp_path)


SUMMARY = """# Benchmark summary

Methods: ddpm. Data sets: moons. Seeds: 0.

**How to read it.** ...

## Which method wins, per data set

### moons: `w2` (lower is better)

| rank | method |
| --- | --- |
| 1 | ddpm |

![quality against NFE](figures/quality_vs_nfe.png)

## Has each model learned its data?

not copied
"""


def test_the_readme_block_is_the_summarys_ranking(tmp_path):
    block = results_block(SUMMARY)
    assert block.startswith("Methods: ddpm.") and "#### moons: `w2`" in block and "| 1 | ddpm |" in block
    assert "](reports/figures/quality_vs_nfe.png)" in block and "not copied" not in block
    readme, summary = tmp_path / "README.md", tmp_path / "summary.md"
    summary.write_text(SUMMARY)
    readme.write_text(f"# Title\n\n## Results\n\n{BEGIN}\nold\n{END}\n\n## After\n")
    write_readme(readme, summary)
    text = readme.read_text()
    assert readme_block(text) == block and text.startswith("# Title") and text.endswith("## After\n")
    write_readme(readme, summary)
    assert readme.read_text() == text  # idempotent

    readme.write_text("# no markers\n")
    with pytest.raises(StageError, match="no results markers"):
        write_readme(readme, summary)
    with pytest.raises(StageError, match="no section"):
        results_block("# Benchmark summary\n")
