"""A real `tensorboard` server on loopback over a finished experiment, asked through its HTTP data API what a user's
browser would show (the runs, their scalars, images and the HParams table), and looked at in a real browser (Chromium
through Playwright): the HParams table, every Time Series card, and the custom train/validation charts."""

import io
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from conftest import GRID
from experiment_checks import results, trial_dirs
from quickdraw.trainable import EPOCH_SCALARS, HPARAM_METRICS
from ray_cluster import free_port

pytestmark = pytest.mark.slow  # every test reads a finished search through a TensorBoard server

SCALAR_TAGS = {metric.tag: metric.key for metric in EPOCH_SCALARS}
LRS, BATCH_SIZES, EPOCHS = GRID.lrs, GRID.batch_sizes, GRID.epochs
IMAGE_TAGS = ("test/confusion_matrix", "test/misclassified")
WAIT_MS = 30_000  # for the browser: TensorBoard loads each dashboard's data in steps


@pytest.fixture(scope="module")
def experiment(grid_experiment):
    return grid_experiment


@pytest.fixture(scope="module")
def tensorboard(experiment):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(experiment), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if len(get(url, "/data/runs")) == len(LRS) * len(BATCH_SIZES):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not list the runs"
        time.sleep(0.5)
    yield url
    server.kill()
    server.wait()


def get(url: str, path: str, **query):
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=10) as response:
        return response.read() if query.get("raw") else json.load(response)


def post(url: str, path: str, body: dict):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_each_trial_is_a_run_with_every_scalar_per_epoch(experiment, tensorboard):
    trials = {t.name: results(t) for t in trial_dirs(experiment)}
    assert sorted(get(tensorboard, "/data/runs")) == sorted(trials)
    tags = get(tensorboard, "/data/plugin/scalars/tags")
    for run, history in trials.items():
        assert set(SCALAR_TAGS) | {"accuracy/test"} <= set(tags[run])
        for tag, key in SCALAR_TAGS.items():
            points = get(tensorboard, "/data/plugin/scalars/scalars", run=run, tag=tag)
            assert [step for _, step, _ in points] == [r["epoch"] for r in history]
            assert [value for *_, value in points] == pytest.approx([r[key] for r in history], rel=1e-6)
        learning_rates = [v for *_, v in get(tensorboard, "/data/plugin/scalars/scalars", run=run,
                                             tag="optimizer/learning_rate")]
        assert learning_rates == pytest.approx([history[0]["learning_rate"]] * EPOCHS)


def test_confusion_matrix_and_misclassified_drawings_are_images(experiment, tensorboard):
    tags = get(tensorboard, "/data/plugin/images/tags")
    for run in get(tensorboard, "/data/runs"):
        assert set(IMAGE_TAGS) <= set(tags[run])
        for tag in IMAGE_TAGS:
            (entry,) = get(tensorboard, "/data/plugin/images/images", run=run, tag=tag)
            query = urllib.parse.parse_qs(entry["query"])
            png = get(tensorboard, "/data/plugin/images/individualImage",
                      **{k: v[0] for k, v in query.items()}, raw=1)
            image = Image.open(io.BytesIO(png)).convert("L")
            assert image.width > 100 and len(np.unique(np.asarray(image))) > 10  # a drawn figure, not a blank


def test_hparams_lists_every_trial_with_its_settings_and_accuracies(experiment, tensorboard):
    info = post(tensorboard, "/data/plugin/hparams/experiment", {"experimentName": ""})
    # Only what the grid varies, with the grid's values as written, as text: a model or dropout shared by every trial
    # would be an axis of one value.
    declared = {h["name"]: h for h in info["hparamInfos"]}
    assert set(declared) == {"lr", "batch_size"}
    assert all(h["type"] == "DATA_TYPE_STRING" for h in declared.values())
    assert sorted(declared["lr"]["domainDiscrete"]) == sorted(f"{lr:g}" for lr in LRS)
    assert sorted(declared["batch_size"]["domainDiscrete"]) == sorted(str(b) for b in BATCH_SIZES)
    assert {m["name"]["tag"] for m in info["metricInfos"]} == {metric.tag for metric in HPARAM_METRICS}
    groups = post(tensorboard, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    })["sessionGroups"]
    trials = {t.name: results(t)[-1] for t in trial_dirs(experiment)}
    assert sorted(g["name"] for g in groups) == sorted(trial_label(experiment, name) for name in trials)
    for group in groups:
        (session,) = group["sessions"]  # a row per trial: its run, named after its folder
        last = trials[session["name"]]
        assert group["name"] == trial_label(experiment, session["name"])
        config = json.loads((experiment / session["name"] / "params.json").read_text())
        assert group["hparams"] == {"lr": f"{config['lr']:g}", "batch_size": str(config["batch_size"])}
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metrics["accuracy/test"] == pytest.approx(last["test_accuracy"])
        assert metrics["accuracy/validation_best"] == pytest.approx(last["best_val_accuracy"])
        assert session["status"] == "STATUS_SUCCESS"


def trial_label(experiment, run: str) -> str:
    """A trial's "Trial ID" in the HParams table: its folder's number, then its experiment."""
    return f"{run.rpartition('_')[2]} ({experiment.name})"


# In a real browser. TensorBoard's pages are Polymer and Angular components in shadow DOM; Playwright's CSS selectors
# pierce open shadow roots. Every wait is on what the page shows, with WAIT_MS as its limit.

@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a fresh local storage each time
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


TABLE_ROWS = """grid => {
    const text = cell => {
        const slot = cell.querySelector("slot"), content = slot && slot.assignedElements()[0];
        return content ? content.innerText.trim() : "";
    };
    const cells = row => [...row.querySelectorAll(":scope > th, :scope > td")].map(text);
    const rows = [...grid.shadowRoot.querySelectorAll("tbody#items > tr")].filter(row => !row.hidden).map(cells);
    return [cells(grid.shadowRoot.querySelector("thead > tr")), ...rows.filter(row => row[0])];
}"""


@pytest.mark.browser
def test_hparams_table_in_the_browser_shows_values_as_written(experiment, tensorboard, page):
    trials = {t.name: (json.loads((t / "params.json").read_text()), results(t)[-1]) for t in trial_dirs(experiment)}
    page.goto(f"{tensorboard}/#hparams")
    grid = page.locator("vaadin-grid#sessionGroupsTable")  # the table view, the dashboard's first
    page.wait_for_function(f"grid => ({TABLE_ROWS})(grid).length > {len(trials)}", arg=grid.element_handle())
    header, *rows = grid.evaluate(TABLE_ROWS)
    assert header[0] == "Trial ID" and {"lr", "batch_size", *(metric.tag for metric in HPARAM_METRICS)} <= set(header)
    table = [dict(zip(header, row)) for row in rows]
    by_label = {trial_label(experiment, name): trial for name, trial in trials.items()}
    assert sorted(row["Trial ID"] for row in table) == sorted(by_label)  # one row per trial
    for row in table:
        config, last = by_label[row["Trial ID"]]
        assert re.fullmatch(r"\d+", row["batch_size"]) and int(row["batch_size"]) == config["batch_size"]  # not 32.000
        assert row["lr"] == f"{config['lr']:g}"  # as the space writes it: 0.001, not 0.0010000
        assert float(row["accuracy/test"]) == pytest.approx(last["test_accuracy"], abs=1e-4)
        assert float(row["accuracy/validation_best"]) == pytest.approx(last["best_val_accuracy"], abs=1e-4)


def coloured_pixels(png: bytes) -> int:
    """Pixels of a screenshot in colour, not grey: a chart's data, in its runs' colours (its grid, axes and labels are
    grey or black). Even the darkest run colour, slate blue (66, 80, 102), is 36 levels from grey."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) >= 25).sum())


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while not condition():
        assert time.monotonic() < deadline, what


@pytest.mark.browser
def test_time_series_renders_every_scalar_and_image_card(experiment, tensorboard, page):
    runs = sorted(t.name for t in trial_dirs(experiment))
    page.set_viewport_size({"width": 1400, "height": 4500})  # every card on screen: TensorBoard draws those seen
    page.goto(f"{tensorboard}/#timeseries")
    page.locator("scalar-card").first.wait_for()
    collapsed = page.locator("button.group-toolbar:has(mat-icon[svgicon=expand_more_24px])")
    for left in reversed(range(collapsed.count())):  # TensorBoard opens the first groups only
        collapsed.first.click()
        expect(collapsed).to_have_count(left, timeout=WAIT_MS)
    scalar_cards, image_cards = page.locator("scalar-card"), page.locator("image-card")
    scalar_cards.nth(len(SCALAR_TAGS)).wait_for()  # the tags reported each epoch, and accuracy/test
    image_cards.nth(len(IMAGE_TAGS) * len(runs) - 1).wait_for()  # an image card per run and tag
    assert scalar_cards.count() == len(SCALAR_TAGS) + 1 and image_cards.count() == len(IMAGE_TAGS) * len(runs)

    tags = set()
    for card in scalar_cards.all():
        card.scroll_into_view_if_needed()
        tag = card.locator("tb-truncated-path").get_attribute("title")
        tags.add(tag)
        legend = card.locator("tb-data-table-content-row")
        legend.nth(len(runs) - 1).wait_for()  # the card's table: each run's value at the selected step
        assert sorted(line.split()[0] for line in legend.all_inner_texts()) == runs
        chart = card.locator("line-chart")  # drawn on a canvas, by a worker: its pixels say when
        wait_until(lambda: coloured_pixels(chart.screenshot()) > 10, f"nothing drawn in {tag}")
    assert tags == set(SCALAR_TAGS) | {"accuracy/test"}

    shown = set()
    for card in image_cards.all():
        card.scroll_into_view_if_needed()
        image = card.locator("img")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        natural_width, width, height = image.evaluate(
            "img => [img.naturalWidth, img.getBoundingClientRect().width, img.getBoundingClientRect().height]")
        assert width > 0 and height > 0
        text = card.inner_text()
        ((tag, run),) = [(tag, run) for tag in IMAGE_TAGS for run in runs if tag.split("/")[1] in text and run in text]
        if tag == "test/misclassified":  # readable: drawn at its own size, not shrunk
            assert width >= 0.95 * natural_width, (width, natural_width)
        shown.add((tag, run))
    assert shown == {(tag, run) for tag in IMAGE_TAGS for run in runs}


@pytest.mark.browser
def test_custom_scalars_draw_train_and_validation_on_one_chart(experiment, tensorboard, page):
    runs = sorted(t.name for t in trial_dirs(experiment))
    page.goto(f"{tensorboard}/#custom_scalars&_smoothingWeight=0")  # unsmoothed: a line per run and tag, no more
    charts = page.locator("tf-custom-scalar-multi-line-chart-card")
    charts.nth(1).wait_for()
    titles = {}
    for chart in charts.all():
        title = chart.locator(".heading-label.name").inner_text()
        quantity = title.split(":")[0]
        titles[quantity] = title
        series = chart.locator(".match-list-entry")  # under "Matches (n)": a line per run and tag
        series.nth(2 * len(runs) - 1).wait_for(state="attached")
        names = [" ".join(text.split()[1:]) for text in series.all_text_contents()]  # less its marker
        assert sorted(names) == sorted(f"{quantity}/{part} ({run})" for part in ("train", "validation") for run in runs)
        lines = chart.locator("path.line[d*=L]")  # drawn, through each epoch's point
        expect(lines).to_have_count(2 * len(runs), timeout=WAIT_MS)
        assert lines.evaluate_all("paths => paths.map(p => p.getAttribute('d').split('L').length)") == \
            [EPOCHS] * (2 * len(runs))
    assert titles == {"loss": "loss: train and validation", "accuracy": "accuracy: train and validation"}
