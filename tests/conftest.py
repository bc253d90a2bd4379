import os

import pytest
import torch

torch.set_num_threads(1)  # small networks run faster on one thread while other work shares the 2 cores
# the same for the CLI commands the tests invoke in this process (pipeline.threads would govern the count
# for the rest of the session); the pipeline tests' subprocesses drop it and run the governor
os.environ.setdefault("PIPELINE_NUM_THREADS", "1")

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from pipeline.metrics import w2_exact  # noqa: E402
from pipeline.oracle import oracle_mixture  # noqa: E402


@pytest.fixture(scope="session")
def mixture():
    return oracle_mixture()


@pytest.fixture(scope="session")
def mixture_reference(mixture):
    """Held-out mixture samples and the two-sample W2 floor at the same n."""
    generator = torch.Generator().manual_seed(1234)
    reference = mixture.sample(1500, generator).numpy()
    floor = w2_exact(mixture.sample(1500, generator).numpy(), reference)
    return reference, floor


#: Debian's Chromium (scripts/setup_tests.sh installs it), started as the machine's probe found it must be
#: offline: no background networking, no sandbox for root
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by Playwright; skipped, saying why, where either is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (scripts/setup_tests.sh installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, path):
    """Open a local HTML file; returns (page, problems): console errors, failed requests, page errors,
    requests that left the file, and images that did not load."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    problems = []
    page.on("console", lambda message: problems.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url[:80]}"))
    page.on("request", lambda request: None if request.url.startswith(("file:", "data:"))
            else problems.append(f"external request: {request.url[:80]}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                           ".map(i => i.alt)")
    problems += [f"image not loaded: {alt}" for alt in broken]
    return page, problems
