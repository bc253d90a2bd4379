"""The whole DVC pipeline on the image smoke profile (digits, a tiny U-Net), in a temporary copy of the
repository: its own file, so that pytest's processes build it beside the 2-D smoke run of test_pipeline.py."""

import pytest

from pipeline_runs import REPO, check_comparison, check_report_page, repo_with_profile


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory):
    return repo_with_profile(tmp_path_factory.mktemp("smoke_images"), "smoke_images")


@pytest.mark.slow
def test_the_image_pipeline_writes_the_comparison(image_repo):
    check_comparison(image_repo)


@pytest.mark.slow
def test_the_report_page_of_the_image_run_opens_in_a_browser(image_repo, browser):
    check_report_page(image_repo, browser)


@pytest.mark.slow
def test_a_profile_without_snapshots_shows_the_kept_convergence_study(image_repo):
    kept = (REPO / "reports" / "studies" / "convergence.csv").exists()
    assert ("profiles/convergence.yaml" in (image_repo / "reports" / "summary.md").read_text()) == kept
