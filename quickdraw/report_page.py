"""The report beside summary.md: figures as PNGs in report/, and report.html, one self-contained page
holding the table and every figure (embedded, so it works downloaded from object storage too).

A figure whose input is missing (no finished trial, no test_predictions.npz, no stored split) is left
out, and the page says why; the rest of the report is written all the same."""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass, field
from html import escape

import numpy as np
import pandas as pd

from quickdraw import figures
from quickdraw.dataset import Split, load_split
from quickdraw.errors import UserError
from quickdraw.experiment import PREDICTIONS_FILE, SEARCH_FILE, read_search
from quickdraw.storage import Location, first_line
from quickdraw.summary import CHOICE, TIE_BREAK, best_per_model, best_sentence, best_trial, describe, to_html

REPORT_DIR = "report"
PAGE_FILE = "report.html"
SAMPLE_SIZE = 12  # test drawings shown with their class probabilities
STYLE = "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em} img{max-width:100%} " \
        "table.summary{border-collapse:collapse} table.summary td,table.summary th{padding:.2em .8em;" \
        "border-bottom:1px solid #ccc;text-align:right} .skipped{color:#a33}"


class Missing(Exception):
    """An input a figure needs is not there; the message says which, for the page."""


@dataclass
class Section:
    heading: str
    text: str  # what the figures show
    figures: dict[str, bytes] = field(default_factory=dict)  # file name in report/ -> PNG
    skipped: list[str] = field(default_factory=list)  # why a figure is not there


def write_page(experiment: Location, trials: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> list[str]:
    """Write report/*.png and report.html; return the figures' paths relative to the experiment.

    `trials` is the summary table with each trial's folder name (trial_dir), `histories` each
    trial's per-epoch results by folder name."""
    sections = [heatmap_section(trials), curves_section(trials, histories), *best_trial_sections(experiment, trials)]
    folder = experiment / REPORT_DIR
    written = []
    for section in sections:
        for name, png in section.figures.items():
            (folder / name).write_bytes(png)
            written.append(f"{REPORT_DIR}/{name}")
    for old in folder.children():
        if old.name.endswith(".png") and f"{REPORT_DIR}/{old.name}" not in written:
            old.delete()  # an earlier report's figure whose input is gone
    (experiment / PAGE_FILE).write_text(render(experiment.name, trials, sections))
    return written


def heatmap_section(trials: pd.DataFrame) -> Section:
    section = Section("Test accuracy over model, learning rate and batch size",
                      "One cell per trial: its test accuracy in percent. The best trial, chosen on validation "
                      "accuracy, is outlined in red; grey cells are trials without one, stopped early by ASHA or "
                      "unfinished.")
    if trials.test_accuracy.isna().all():
        section.skipped.append("the heatmap: no trial finished, so no trial has a test accuracy")
        return section
    trials = trials.assign(note=[untested_note(row) for row in trials.itertuples()])
    accuracy, notes = grid(trials, "test_accuracy").astype(float), grid(trials, "note")
    figure = figures.accuracy_heatmap_figure(accuracy, row_labels(trials), grid_columns(trials), notes,
                                             best=grid_cell(trials, best_trial(trials)))
    section.figures["test_accuracy_heatmap.png"] = figures.png_bytes(figure)
    return section


def grid_rows(trials: pd.DataFrame) -> list[tuple[str, float]]:
    """The heatmap's rows, top down: the (model, learning rate) pairs in table order."""
    return list(trials[["model", "lr"]].drop_duplicates().itertuples(index=False, name=None))


def grid_columns(trials: pd.DataFrame) -> list[int]:
    """The heatmap's columns, left to right: the batch sizes, ascending."""
    return sorted(trials.batch_size.unique())


def grid(trials: pd.DataFrame, column: str) -> np.ndarray:
    """A column of the table laid out as the heatmap: grid_rows down by grid_columns across."""
    cells = trials.pivot(index=["model", "lr"], columns="batch_size", values=column)
    rows = pd.MultiIndex.from_tuples(grid_rows(trials), names=["model", "lr"])
    return cells.reindex(index=rows, columns=grid_columns(trials)).to_numpy()


def grid_cell(trials: pd.DataFrame, index) -> tuple[int, int] | None:
    """Where the trial at row `index` of the table is in `grid`'s array: (row, column)."""
    if index is None:
        return None
    trial = trials.loc[index]
    return grid_rows(trials).index((trial.model, trial.lr)), grid_columns(trials).index(trial.batch_size)


def row_labels(trials: pd.DataFrame) -> list[str]:
    """The heatmap's rows: learning rates, with the model's name when the grid had more than one."""
    several = trials.model.nunique() > 1
    return [f"{model} {lr:g}" if several else f"{lr:g}" for model, lr in grid_rows(trials)]


def untested_note(trial) -> str:
    """What the heatmap writes in the cell of a trial without a test accuracy."""
    return f"stopped at\nepoch {trial.epochs}" if trial.status == "stopped" else "not\nfinished"


def curves_section(trials: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> Section:
    section = Section("Validation accuracy and loss per epoch",
                      "One figure per learning rate, one line per batch size (and model).")
    for lr, group in trials.groupby("lr", sort=False):
        lines = {}  # legend label -> per-epoch results
        several_models = trials.model.nunique() > 1
        for row in group.itertuples():
            history = histories.get(row.trial_dir)
            if history is not None and {"epoch", "val_accuracy", "val_loss"} <= set(history.columns):
                label = (f"{row.model} " if several_models else "") + f"batch {row.batch_size}" + ("" if row.status == "finished" else f" ({row.status})")
                # A trial restarted from a checkpoint reports the epochs after it again: keep the last.
                lines[label] = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
        if lines:
            section.figures[f"curves_lr={lr:g}.png"] = figures.png_bytes(figures.validation_curves_figure(lr, lines))
        else:
            section.skipped.append(f"the curves of learning rate {lr:g}: none of its trials reported an epoch")
    return section


def best_trial_sections(experiment: Location, trials: pd.DataFrame) -> list[Section]:
    per_class = Section("Per-class test accuracy of the best trial",
                        "The share of each class's test drawings that the best trial (chosen on validation "
                        "accuracy) classified right.")
    drawings = Section(f"{SAMPLE_SIZE} test drawings and their class probabilities (best trial)",
                       "Up to a third of them classified wrong, the rest right, picked with a fixed seed.")
    try:
        best, split, probabilities = best_trial_predictions(experiment, trials)
    except Missing as e:
        per_class.skipped.append(f"the per-class accuracy: {e}")
        drawings.skipped.append(f"the test drawings: {e}")
        return [per_class, drawings]
    predictions = probabilities.argmax(1)
    title = f"Per-class test accuracy, best trial: {describe(best)}"
    figure = figures.per_class_accuracy_figure(split.y_test, predictions, split.classes, title)
    per_class.figures["per_class_accuracy.png"] = figures.png_bytes(figure)
    chosen = sample_drawings(split.y_test, predictions)
    figure = figures.probabilities_figure(
        split.x_test[chosen], split.y_test[chosen], probabilities[chosen], split.classes
    )
    drawings.figures["test_probabilities.png"] = figures.png_bytes(figure)
    return [per_class, drawings]


def best_trial_predictions(experiment: Location, trials: pd.DataFrame) -> tuple[pd.Series, Split, np.ndarray]:
    """The best trial (quickdraw.summary.best_trial), the split it was tested on, and its test probabilities."""
    index = best_trial(trials)
    if index is None:
        raise Missing("no trial finished, so there is no best trial")
    best = trials.loc[index]
    name = f"the best trial ({describe(best)})"
    file = experiment / best.trial_dir / PREDICTIONS_FILE if best.trial_dir else None
    if file is None or not file.is_file():
        raise Missing(f"{name} has no {PREDICTIONS_FILE}")
    split = stored_split(experiment)
    try:
        with np.load(io.BytesIO(file.read_bytes()), allow_pickle=False) as arrays:
            probabilities = arrays["probabilities"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise Missing(f"the {PREDICTIONS_FILE} of {name} cannot be read ({first_line(e)})") from None
    if probabilities.shape != (len(split.y_test), len(split.classes)):
        raise Missing(f"the {PREDICTIONS_FILE} of {name} holds {probabilities.shape} probabilities, but the split "
                      f"has {len(split.y_test)} test drawings of {len(split.classes)} classes")
    return best, split, probabilities


def stored_split(experiment: Location) -> Split:
    """The split the search trained on, from where its search.json says it is."""
    try:
        return load_split(Location.parse(read_search(experiment)["dataset"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UserError) as e:
        raise Missing(
            f"the test drawings cannot be read from the split that {SEARCH_FILE} names ({first_line(e)})"
        ) from None


def sample_drawings(labels: np.ndarray, predictions: np.ndarray, count: int = SAMPLE_SIZE, seed: int = 0):
    """Indices of `count` test drawings, up to a third of them classified wrong, in test order."""
    rng = np.random.default_rng(seed)
    wrong, right = np.flatnonzero(labels != predictions), np.flatnonzero(labels == predictions)
    n_right = min(len(right), count - min(len(wrong), count // 3))
    n_wrong = min(len(wrong), count - n_right)
    chosen = [rng.choice(wrong, n_wrong, replace=False), rng.choice(right, n_right, replace=False)]
    return np.sort(np.concatenate(chosen))


def render(title: str, trials: pd.DataFrame, sections: list[Section]) -> str:
    summary = f"{(trials.status == 'finished').sum()} of {len(trials)} trials finished."
    stopped = (trials.status == "stopped").sum()
    if stopped:
        summary += f" {stopped} {'was' if stopped == 1 else 'were'} stopped early by ASHA."
    index = best_trial(trials)
    if index is not None:
        best = trials.loc[index]
        summary += f" Best: {best_sentence(best)}."
    if per_model := best_per_model(trials):
        summary += " Best of each model: " + "; ".join(per_model) + "."
    body = [f"<h1>Experiment {escape(title)}</h1>", f"<p>{escape(summary)}</p>",
            "<h2>Every trial</h2>", to_html(trials), f"<p>The best trial is {escape(CHOICE)} ({escape(TIE_BREAK)}).</p>"]
    for section in sections:
        body.append(f"<h2>{escape(section.heading)}</h2>")
        if section.figures:
            body.append(f"<p>{escape(section.text)}</p>")
        for name, png in section.figures.items():
            body.append(f'<p><img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{escape(name)}" '
                        f'title="{escape(name)}"></p>')
        body += [f'<p class="skipped">Not shown: {escape(note)}.</p>' for note in section.skipped]
    head = f'<head>\n<meta charset="utf-8">\n<title>{escape(title)}: report</title>\n<style>{STYLE}</style>\n</head>'
    return f'<!DOCTYPE html>\n<html lang="en">\n{head}\n<body>\n' + "\n".join(body) + "\n</body>\n</html>\n"
