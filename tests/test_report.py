"""The report beside summary.md (figures, report.html) and the `report` command's export formats."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from importlib.metadata import version as package_version
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import GRID, SYNTHETIC_CLASSES, copy_experiment, imported_modules, is_ray, run_in_process
from experiment_checks import chosen_trial, ranked_rows
from quickdraw.config import EXPORT_FORMATS
from quickdraw.report_html import MIN_SCALE
from quickdraw.summary import EXPORTERS

pytestmark = pytest.mark.slow  # every test reads a finished search

LRS, BATCH_SIZES, EPOCHS = GRID.lrs, GRID.batch_sizes, GRID.epochs
WHAT_MATTERED = {"hyperparameter_importance.png", "parallel_coordinates.png", "scatter_lr.png",
                 "scatter_batch_size.png"}
FIGURES = {"test_accuracy_heatmap.png", "per_class_accuracy.png", "confusion_matrix.png", "test_probabilities.png",
           *(f"curves_lr={lr:.4g}.png" for lr in LRS), *WHAT_MATTERED}
COLUMNS = ["rank", "model", "lr", "batch_size", "dropout", "weight_decay", "label_smoothing", "ema_decay", "epochs",
           "best_val_loss",
           "best_val_accuracy", "test_accuracy", "train_seconds", "status", "best"]
PAGE_HEADERS = ["Rank", "Validation accuracy", "Test accuracy", "Learning rate", "Batch size", "Epochs",
                "Validation loss", "Training time", "Status"]  # report.html's table: searched hyperparameters only


@pytest.fixture(scope="module")
def experiment(grid_experiment, tmp_path_factory) -> Path:
    """The session's finished grid (conftest.GRID), copied (`report` rewrites its files) and reported where it is."""
    experiment = copy_experiment(grid_experiment, tmp_path_factory.mktemp("report"))
    assert run_in_process("report", experiment).returncode == 0
    return experiment


class Page(HTMLParser):
    """The tags, images and text of an HTML document; fails on nothing, so the asserts say what is wrong."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_cell = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in ("td", "th"):
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells.append(data.strip())

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def check_not_blank(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()  # a whole, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200, path.name
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10, f"{path.name} is (nearly) one colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path.name} has almost no colours"


def test_every_figure_is_a_png_that_is_not_blank(experiment):
    pngs = sorted((experiment / "report").iterdir())
    assert {p.name for p in pngs} == FIGURES
    assert len([p for p in pngs if p.name.startswith("curves_lr=")]) == len(LRS)
    for png in pngs:
        check_not_blank(png)


def test_report_html_holds_the_table_and_every_figure(experiment):
    page = Page((experiment / "report.html").read_text())
    assert page.tags[0] == "html" and "table" in page.tags
    for header in PAGE_HEADERS:
        assert header in page.cells
    # The trials' table: a header and a row per trial; the chosen model's: a header, the best trial and the model.
    assert page.tags.count("tr") == 1 + len(LRS) * len(BATCH_SIZES) + 3
    assert {image["data-file"] for image in page.images} == FIGURES
    for image in page.images:  # embedded, the same PNG as the file beside it, with words for what it shows
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):]) == (experiment / "report" / image["data-file"]).read_bytes()
        assert len(image["alt"].split()) >= 5 and ".png" not in image["alt"]
    assert "Not shown" not in page.all_text()
    table = pd.read_csv(experiment / "summary.csv")
    best = chosen_trial(table)
    best_text = (f"Best: seed, lr {best.lr:g}, batch size {best.batch_size}: validation accuracy "
                 f"{best.best_val_accuracy:.2f}%, test accuracy {best.test_accuracy:.2f}%.")
    assert best_text in page.all_text() and "Best of each model" not in page.all_text()  # one model: no per-model line
    assert "The chosen trial (highlighted) is chosen on validation accuracy; test accuracy shown for every trial, " \
           "never used to choose" in page.all_text()
    importance = json.loads((experiment / "summary.json").read_text())["hyperparameter_importance"]
    assert set(importance) == {"lr", "batch_size"}
    shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in importance.items())
    assert f"What mattered Each searched hyperparameter's share of the variance in validation accuracy: {shares} " \
           "(fANOVA: optuna 4.9.0 FanovaImportanceEvaluator(seed=0) on 4 trials;" in page.all_text()


@pytest.mark.browser
@pytest.mark.parametrize("width", [390, 1400])  # a phone, a desktop
def test_the_page_reads_in_a_browser(experiment, browser, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto((experiment / "report.html").as_uri())
    images = page.evaluate("[...document.images].map((image) => ({file: image.dataset.file, "
                           "natural: image.naturalWidth, shown: image.getBoundingClientRect().width}))")
    assert {image["file"] for image in images} == FIGURES
    for image in images:  # decoded, and shown large enough to read: a phone scrolls a wide figure, not the page
        assert image["natural"] > 300, image
        assert MIN_SCALE * image["natural"] - 1 <= image["shown"] <= image["natural"], image
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    smallest_text = page.evaluate("Math.min(...[...document.body.querySelectorAll('*')].filter((e) => "
                                  "e.childNodes.length && [...e.childNodes].some((n) => n.nodeType === 3 && "
                                  "n.textContent.trim())).map((e) => parseFloat(getComputedStyle(e).fontSize)))")
    assert smallest_text >= 12

    chosen = chosen_trial(pd.read_csv(experiment / "summary.csv"))
    (row,) = page.locator("tr.chosen").all()
    assert row.locator("td").first.inner_text().split() == ["1", "chosen"]
    assert f"{chosen.best_val_accuracy:.2f}%" in row.inner_text() and f"{chosen.lr:g}" in row.inner_text()

    settings = page.locator("dl.run").inner_text()
    assert f"tensorboard --logdir {experiment}" in settings
    assert f"{len(SYNTHETIC_CLASSES)}: {', '.join(SYNTHETIC_CLASSES)}" in settings
    assert "300 training, 60 validation, 60 test drawings" in settings and "python tune_search.py --data-dir" in settings
    assert re.search(r"git commit [0-9a-f]{40}", settings) and f"torch {package_version('torch')}" in settings
    assert re.search(r"1 node, \d+ CPU, 0 GPU; driver on ", settings)
    for link in page.locator("dl.run a").all():
        assert (experiment / link.get_attribute("href")).is_file()
    page.close()


@pytest.mark.browser
def test_clicking_a_column_header_sorts_the_table(experiment, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto((experiment / "report.html").as_uri())
    table = pd.read_csv(experiment / "summary.csv")

    def column(header: str) -> list[str]:
        index = page.locator("table.sortable th").all_inner_texts().index(header)
        return [row.locator("td").nth(index).inner_text() for row in page.locator("table.sortable tbody tr").all()]

    assert column("Rank")[0].split() == ["1", "chosen"]
    page.get_by_role("button", name="Test accuracy").click()
    assert column("Test accuracy") == [f"{value:.2f}%" for value in sorted(table.test_accuracy)]
    page.get_by_role("button", name="Test accuracy").click()
    assert column("Test accuracy") == [f"{value:.2f}%" for value in sorted(table.test_accuracy, reverse=True)]
    page.get_by_role("button", name="Batch size").click()
    assert column("Batch size") == [str(size) for size in sorted(table.batch_size)]  # as numbers: 16 before 32
    assert page.locator("th[aria-sort=ascending]").inner_text().startswith("Batch size")
    page.close()


def test_summary_md_links_the_page_and_the_figures(experiment):
    markdown = (experiment / "summary.md").read_text()
    assert "[report.html](report.html)" in markdown
    for name in FIGURES:
        assert f"(report/{name})" in markdown
        assert (experiment / "report" / name).is_file()


def test_report_without_format_prints_the_markdown_and_rebuilds_the_page(experiment):
    (experiment / "report.html").unlink()
    shutil.rmtree(experiment / "report")
    result = run_in_process("report", experiment)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = ranked_rows(result.stdout)
    table = pd.read_csv(experiment / "summary.csv")
    assert [row["Validation accuracy"].strip("*") for row in rows] == [f"{v:.2f}%" for v in table.best_val_accuracy]
    assert (experiment / "summary.md").read_text().startswith(result.stdout.rstrip("\n") + "\n")
    assert {p.name for p in (experiment / "report").iterdir()} == FIGURES
    assert len(Page((experiment / "report.html").read_text()).images) == len(FIGURES)


def test_the_cli_names_every_export_format_there_is():
    assert EXPORT_FORMATS == tuple(EXPORTERS)


def test_report_reads_the_experiment_without_ray(experiment):
    """Tune's stored results are JSON: the report reads them without importing Ray (or un-pickling anything)."""
    result, modules = imported_modules("report", experiment, "--format", "csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(io.StringIO(result.stdout)).equals(pd.read_csv(experiment / "summary.csv"))
    assert {"pandas", "quickdraw.report", "quickdraw.experiment"} <= modules
    assert not [module for module in modules if is_ray(module)]


def check_export(fmt: str, text: str, experiment: Path) -> None:
    if fmt == "csv":
        assert pd.read_csv(io.StringIO(text)).equals(pd.read_csv(experiment / "summary.csv"))
        chosen_trial(pd.read_csv(io.StringIO(text)))
    elif fmt == "json":
        summary = json.loads(text)
        assert summary == json.loads((experiment / "summary.json").read_text())
        assert set(summary) == {"trials", "hyperparameter_importance", "importance_method", "chosen_model"}
        assert len(summary["trials"]) == len(LRS) * len(BATCH_SIZES) and list(summary["trials"][0]) == COLUMNS
        assert pd.DataFrame(summary["trials"]).equals(pd.read_csv(experiment / "summary.csv"))
        assert sum(summary["hyperparameter_importance"].values()) == pytest.approx(1)
    elif fmt == "html":
        page = Page(text)
        assert page.tags[0] == "table" and page.tags.count("tr") == 1 + len(LRS) * len(BATCH_SIZES)
        assert page.cells[: len(COLUMNS)] == COLUMNS
        assert page.cells[len(COLUMNS):].count("True") == 1
    elif fmt == "latex":
        assert text.startswith("\\begin{tabular}") and text.rstrip().endswith("\\end{tabular}")
        assert "batch\\_size" in text and text.count("finished & ") == len(LRS) * len(BATCH_SIZES)
        assert text.count("& True \\\\") == 1  # the best trial's row
    else:
        rows = ranked_rows(text)
        assert [list(row) for row in rows] == [["Rank", "Learning rate", "Batch size", "Validation accuracy",
                                                "Test accuracy"]] * len(LRS) * len(BATCH_SIZES)
        assert "Same for every trial: model seed, dropout 0.5, weight decay 0, label smoothing 0, EMA decay 0." in text
        assert (experiment / "summary.md").read_text().startswith(text)


@pytest.mark.parametrize("fmt", ["md", "csv", "json", "html", "latex"])
def test_export_formats_parse(experiment, fmt):
    printed = run_in_process("report", experiment, "--format", fmt)
    assert printed.returncode == 0, printed.stderr[-3000:]
    check_export(fmt, printed.stdout, experiment)


def test_an_export_in_a_file_is_what_standard_output_shows(experiment, tmp_path):
    """--output writes the text that standard output gets, whatever the format (quickdraw.cli.report_command)."""
    printed = run_in_process("report", experiment, "--format", "json")
    output = tmp_path / "table.json"
    written = run_in_process("report", experiment, "--format", "json", "--output", output)
    assert written.returncode == 0, written.stderr[-3000:]
    assert written.stdout == ""
    check_export("json", output.read_text(), experiment)
    assert output.read_text().rstrip("\n") == printed.stdout.rstrip("\n")


@pytest.mark.parametrize("where, message", [
    ("missing/table.csv", "there is no folder"),
    ("summary.csv/table.csv", "there is no folder"),  # its "folder" is a file
    ("report", "is a folder"),
])
def test_bad_output_is_one_line_and_exit_code_2(experiment, where, message):
    output = experiment / where
    result = run_in_process("report", experiment, "--format", "csv", "--output", output)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"tune_search.py: error: --output {output}") and message in line
    assert not (experiment / "missing").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_output_that_cannot_be_written_is_one_line_and_exit_code_2(experiment):
    result = run_in_process("report", experiment, "--format", "json", "--output", "/proc/quickdraw-table.json")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tune_search.py: error: --output /proc/quickdraw-table.json cannot be written")


def trial_dir(experiment: Path, lr: float, batch_size: int) -> Path:
    (folder,) = experiment.glob(f"lr={lr:g}_batch={batch_size}_*")
    return folder


def cut_to_first_epoch(trial: Path) -> None:
    """Leave the trial as a driver that stopped after its first epoch would: one result in its log and,
    in Tune's experiment snapshot, still running. (A trial that Tune ended without a test accuracy
    is one that ASHA stopped.)"""
    (trial / "result.json").write_text((trial / "result.json").read_text().splitlines()[0] + "\n")
    (snapshot,) = trial.parent.glob("experiment_state-*.json")
    state = json.loads(snapshot.read_text())
    (entry,) = [entry for entry in state["trial_data"] if json.loads(entry[0])["relative_logdir"] == trial.name]
    entry[0] = json.dumps({**json.loads(entry[0]), "status": "RUNNING"})
    snapshot.write_text(json.dumps(state))


def test_report_of_a_partial_experiment_skips_only_what_is_missing(experiment, tmp_path):
    """Stopped early: one trial reported a single epoch, and no trial left predictions.npz (as with an older
    version): best_model/ is the best trial alone, and the page says why it has no figures of it."""
    partial = tmp_path / "partial"
    shutil.copytree(experiment, partial)
    cut_to_first_epoch(trial_dir(partial, LRS[0], BATCH_SIZES[1]))
    for predictions in partial.glob("lr=*/predictions.npz"):
        predictions.unlink()

    result = run_in_process("report", partial)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 4 trials did not finish." in result.stdout
    table = pd.read_csv(partial / "summary.csv")
    assert (table.status == "unfinished").sum() == 1

    kept = {"test_accuracy_heatmap.png", *(f"curves_lr={lr:.4g}.png" for lr in LRS), *WHAT_MATTERED}
    assert {p.name for p in (partial / "report").iterdir()} == kept  # the old best-trial figures are gone
    for png in (partial / "report").iterdir():
        check_not_blank(png)
    page = Page((partial / "report.html").read_text())
    assert {image["data-file"] for image in page.images} == kept
    text = page.all_text()
    best = chosen_trial(table)
    alone = (f"the best trial alone, as no finished trial's predictions.npz can be read "
             f"({trial_dir(partial, best.lr, best.batch_size) / 'predictions.npz'} is missing, and 2 more)")
    assert f"Not shown: the per-class accuracy and confusion matrix: {alone}." in text
    assert f"Not shown: the test drawings: {alone}." in text
    config = json.loads((partial / "best_model" / "config.json").read_text())
    assert [member["trial"] for member in config["members"]] == [trial_dir(partial, best.lr, best.batch_size).name]
    assert text.count("Not shown") == 2
    markdown = (partial / "summary.md").read_text()
    assert "(report/test_accuracy_heatmap.png)" in markdown and "per_class_accuracy" not in markdown


def test_report_when_no_trial_finished(experiment, tmp_path):
    partial = tmp_path / "unfinished"
    shutil.copytree(experiment, partial)
    for trial in partial.glob("lr=*"):
        cut_to_first_epoch(trial)

    result = run_in_process("report", partial)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 of 4 trials did not finish." in result.stdout
    assert {p.name for p in (partial / "report").iterdir()} == {f"curves_lr={lr:.4g}.png" for lr in LRS}
    text = Page((partial / "report.html").read_text()).all_text()
    assert "0 of 4 trials finished." in text
    assert "Not shown: the heatmap: no trial finished" in text
    assert "Not shown: the hyperparameter importance, parallel coordinates and scatters: 0 trials finished or were " \
           "stopped by ASHA with a validation result; comparing hyperparameters takes 2 or more." in text
    assert json.loads((partial / "summary.json").read_text())["hyperparameter_importance"] == {}
    assert "Not shown: the per-class accuracy and confusion matrix: no trial finished, so there is no model to show." \
        in text
    assert "Not shown: the test drawings: no trial finished, so there is no model to show." in text


def test_report_when_the_stored_split_is_gone(experiment, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(experiment, moved)
    record = json.loads((moved / "search.json").read_text())
    record["dataset"] = str(tmp_path / "datasets" / "deleted")
    (moved / "search.json").write_text(json.dumps(record))

    result = run_in_process("report", moved)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = {"test_accuracy_heatmap.png", *(f"curves_lr={lr:.4g}.png" for lr in LRS), *WHAT_MATTERED}
    assert {p.name for p in (moved / "report").iterdir()} == kept
    text = Page((moved / "report.html").read_text()).all_text()
    assert "Not shown: the per-class accuracy and confusion matrix: the validation and test drawings cannot be read " \
           "from the split " \
           f"that search.json names (the split that {moved / 'search.json'} names is gone: not at " \
           f"{tmp_path / 'datasets' / 'deleted'}, nor beside the experiment at {tmp_path / 'datasets' / 'deleted'}; " \
           "copy the search's datasets/ folder beside the experiment)" in text
    assert text.count("Not shown") == 2


def test_report_finds_the_split_beside_a_moved_experiment(experiment, tmp_path):
    """Storage moved or copied elsewhere: search.json's absolute location of the split is gone, but the split is
    beside the experiment, in <storage>/datasets/, where the search stored it."""
    record = json.loads((experiment / "search.json").read_text())
    split = Path(record["dataset"])
    moved = tmp_path / "elsewhere" / "grid"
    shutil.copytree(experiment, moved)
    shutil.copytree(split, tmp_path / "elsewhere" / "datasets" / split.name)
    record["dataset"] = str(tmp_path / "gone" / "datasets" / split.name)  # where it was before the move
    (moved / "search.json").write_text(json.dumps(record))

    result = run_in_process("report", moved)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Not shown" not in Page((moved / "report.html").read_text()).all_text()
    assert {p.name for p in (moved / "report").iterdir()} == FIGURES  # the best trial's figures too


def test_report_of_a_truncated_experiment_state_reads_the_trial_folders(experiment, tmp_path):
    """A full disk cut Tune's experiment state short: the trials' own folders still say what they did."""
    damaged = tmp_path / "damaged"
    shutil.copytree(experiment, damaged)
    (state,) = damaged.glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    result = run_in_process("report", damaged, "--format", "csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines()[0].startswith(f"{state} is damaged (")
    assert result.stderr.splitlines()[0].endswith("; the trials are read from their own folders instead")
    table, before = pd.read_csv(io.StringIO(result.stdout)), pd.read_csv(experiment / "summary.csv")
    assert table.equals(before)  # every trial, ranked as before, finished ones with their results


def test_report_without_the_best_trials_checkpoint_writes_all_but_best_model(experiment, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(experiment, moved)
    shutil.rmtree(moved / "best_model")
    table = pd.read_csv(moved / "summary.csv")
    best = chosen_trial(table)
    for checkpoint in trial_dir(moved, best.lr, best.batch_size).glob("checkpoint_*"):
        shutil.rmtree(checkpoint)

    result = run_in_process("report", moved)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    folder = trial_dir(moved, best.lr, best.batch_size)
    assert line.startswith(f"{moved / 'best_model'} not written (left as it was): the member {folder.name} cannot be "
                           f"read from {folder} (ValueError: the folder holds no checkpoint)")
    assert not (moved / "best_model").exists() and (moved / "report.html").is_file()
    assert "# Search results" in result.stdout
