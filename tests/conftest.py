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


def pytest_collection_modifyitems(items):
    """Files with slow tests (the DVC runs of test_pipeline*.py) first, each file's order kept: with the
    suite split over processes by file (pyproject's `-n auto --dist loadfile`), the longest file starts at
    once instead of last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_postgres_server():
    """A PostgreSQL cluster on the loopback address and `mlflow server` on it (the README's team set-up);
    yields the server's URI. Skipped, saying why, where PostgreSQL or its driver is missing."""
    import glob
    import signal
    import subprocess
    import time
    import urllib.request

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (scripts/setup_tests.sh installs Debian's postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[test]')")
    import shutil
    import tempfile
    from pathlib import Path

    bin_dir = os.path.dirname(found[-1])
    # the cluster's user must reach its folder: pytest's base folder is root's alone
    root = Path(tempfile.mkdtemp(prefix="pipeline-postgres-"))
    os.chmod(root, 0o777)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    data, port = root / "data", _free_port()
    subprocess.run([*as_postgres, f"{bin_dir}/initdb", "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    pg_ctl = [*as_postgres, f"{bin_dir}/pg_ctl", "-D", str(data)]
    subprocess.run([*pg_ctl, "-l", str(root / "postgres.log"), "-w", "-o", f"-p {port} -h 127.0.0.1 -k {root}",
                    "start"], check=True, capture_output=True)
    server = None
    try:
        subprocess.run([*as_postgres, f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "mlflow"],
                       check=True, capture_output=True)
        http_port = _free_port()
        server = subprocess.Popen(
            ["mlflow", "server", "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(http_port),
             "--workers", "1"], stdout=open(root / "mlflow.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        uri = f"http://127.0.0.1:{http_port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start:\n{(root / 'mlflow.log').read_text()[-2000:]}")
        yield uri
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
