"""Screenshots for docs/images: TensorBoard's HParams table and parallel-coordinates views, its custom train/validation
chart, report.html at 1400 and 390 px wide, and `play`'s page at both widths with a test drawing drawn on it, of a real
small search (a 2 x 2 grid of 3 epochs on the six real
classes, under a minute on 2 CPUs) or of a finished experiment you name.

    python scripts/screenshots.py [--data-dir DIR] [--storage DIR] [--experiment PATH] [--output DIR]

Needs Chromium (/usr/bin/chromium, or QUICKDRAW_CHROMIUM) and the real drawings (../shared/quickdraw, or
QUICKDRAW_DATA, or --data-dir) unless --experiment is given."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import Browser, Locator, Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from quickdraw.dataset import load_split  # noqa: E402  (the repository's own modules, found from any folder)
from quickdraw.storage import Location  # noqa: E402
from strokes import draw_with_mouse  # noqa: E402  (a drawing's strokes from its bitmap, as the browser tests draw them)

CHROMIUM = os.environ.get("QUICKDRAW_CHROMIUM", "/usr/bin/chromium")
SEARCH = ["--classes", "apple,bicycle,cat,diamond,eye,fish", "--split", "1200,240,120", "--lrs", "0.01,0.001",
          "--batch-sizes", "32,64", "--epochs", "3"]
WAIT_MS = 60_000


def main() -> None:
    args = parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        experiment = (args.experiment or run_search(args.data_dir, args.storage or Path(scratch))).resolve()
        if not (experiment / "report.html").is_file():
            sys.exit(f"{experiment} has no report.html: give the folder <storage>/<name> of a finished search")
        with tensorboard(experiment) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            for view in (hparams_table, parallel_coordinates, custom_scalars):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(WAIT_MS)
                save(view(page, url), args.output / f"tensorboard_{view.__name__}.png")
                page.close()
            for width in (1400, 390):
                report(browser, experiment, width, args.output / f"report_{width}px.png")
            with play(experiment) as url:
                for width in (1400, 390):
                    play_page(browser, url, first_test_drawing(experiment), width, args.output / f"play_{width}px.png")
            browser.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("QUICKDRAW_DATA", REPO.parent / "shared" / "quickdraw")),
                        help="the real drawings, <class>.npy (default: $QUICKDRAW_DATA or ../shared/quickdraw)")
    parser.add_argument("--storage", type=Path, help="where the search goes (default: a temporary folder, removed)")
    parser.add_argument("--experiment", type=Path, help="a finished experiment to show instead of running a search")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images", help="default: docs/images")
    return parser.parse_args()


def run_search(data_dir: Path, storage: Path) -> Path:
    name = time.strftime("screenshots-%Y-%m-%d_%H-%M-%S")
    command = [sys.executable, "tune_search.py", "--data-dir", str(data_dir.resolve()), *SEARCH,
               "--storage", str(storage.resolve()), "--name", name]
    print("running", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return storage.resolve() / name


@contextlib.contextmanager
def tensorboard(experiment: Path):
    """`tensorboard --logdir EXPERIMENT` on a free loopback port, once it lists the runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(experiment),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not runs_listed(url):
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("tensorboard did not start or list the runs")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait()


def runs_listed(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as response:
            return response.read().strip() not in (b"", b"[]")
    except OSError:
        return False


def hparams_table(page: Page, url: str) -> Page:
    """The HParams dashboard's table view: a row per trial."""
    page.goto(f"{url}/#hparams")
    cells = page.locator("vaadin-grid#sessionGroupsTable vaadin-grid-cell-content")
    cells.filter(has_text=re.compile(r"^\s*\d\.\d{4,}\s*$")).first.wait_for()  # a trial's accuracy
    return page


def parallel_coordinates(page: Page, url: str) -> Locator:
    """The HParams dashboard's parallel-coordinates view: a line per trial across its hyperparameters and metrics."""
    page.set_viewport_size({"width": 1400, "height": 1300})  # the whole plot
    page.goto(f"{url}/#hparams")
    page.get_by_text("Parallel Coordinates View").click()
    page.locator("tf-hparams-parallel-coords-plot g.foreground path").first.wait_for()
    return page.locator("tf-hparams-parallel-coords-view")  # without the tab bar and the click's ripple on it


def custom_scalars(page: Page, url: str) -> Page:
    """The Custom Scalars dashboard: train and validation on one chart per quantity, unsmoothed (the URL sets it),
    outliers not ignored (its checkbox)."""
    page.goto(f"{url}/#custom_scalars&_smoothingWeight=0")
    page.get_by_role("checkbox", name="Ignore outliers in chart scaling").uncheck()
    for chart in page.locator("tf-custom-scalar-multi-line-chart-card").all():
        chart.locator("path.line[d*=L]").first.wait_for(state="attached")
    return page


def report(browser: Browser, experiment: Path, width: int, path: Path) -> None:
    """report.html, the whole page, `width` px wide."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto((experiment / "report.html").as_uri())
    page.wait_for_load_state("load")  # its figures are embedded
    save(page, path, full_page=True)
    page.close()


@contextlib.contextmanager
def play(experiment: Path):
    """`python tune_search.py play EXPERIMENT --port 0`, and the address it serves at."""
    server = subprocess.Popen([sys.executable, "tune_search.py", "play", str(experiment), "--port", "0"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        found = re.search(r"http://\S+/", server.stdout.readline())
        if not found:
            sys.exit("play did not say where it serves")
        yield found[0]
    finally:
        server.terminate()
        server.wait()


def first_test_drawing(experiment: Path):
    """The experiment's first test drawing of its class that comes first in the class list."""
    split = load_split(Location.parse(json.loads((experiment / "search.json").read_text())["dataset"]))
    return split.x_test[list(split.y_test).index(0)]


def play_page(browser: Browser, url: str, bitmap, width: int, path: Path) -> None:
    """The play page, `width` px wide, once the drawing's strokes are drawn on it and guessed."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.locator("#classes li").first.wait_for()
    stroke_count = draw_with_mouse(page, bitmap, share=0.8)
    page.wait_for_function(f"document.body.dataset.guessedStrokes === '{stroke_count}'")
    page.mouse.move(0, 0)
    save(page, path, full_page=True)
    page.close()


def save(shown: Page | Locator, path: Path, full_page: bool = False) -> None:
    """A screenshot as a PNG of at most 256 colours (text and charts lose nothing seen; a full page stays well under
    1 MB, small enough to keep in the repository)."""
    page = shown if isinstance(shown, Page) else shown.page
    page.evaluate("document.fonts.ready")
    png = shown.screenshot(**({"full_page": True} if full_page else {}))
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(path, optimize=True)
    print(path)


if __name__ == "__main__":
    main()
