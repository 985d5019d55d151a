"""The report's sections and their figures, from an experiment's results: what mattered (quickdraw.importance), the
test-accuracy heatmap of a grid, the validation curves and the chosen model's figures; written as PNGs in report/ and
laid out in report.html by quickdraw.report_html (one self-contained page, figures embedded, so that it works
downloaded from object storage too).

A figure whose input is missing (no finished trial, no trial's predictions.npz, no stored split) is left out, and the
page says why; the rest of the report is written all the same."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quickdraw import figures, importance, report_html
from quickdraw.catalogue import EPOCH, HYPERPARAMETER, TEST_ACCURACY, VAL_ACCURACY, VAL_LOSS
from quickdraw.dataset import Split, SplitChanged, load_split
from quickdraw.errors import UserError
from quickdraw.experiment import split_location, what_ran
from quickdraw.search_record import SEARCH_FILE, SearchRecord
from quickdraw.storage import Location, first_line
from quickdraw.summary import Summary, best_trial, chosen_words, tie_sentence

REPORT_DIR = "report"
PAGE_FILE = "report.html"
SAMPLE_SIZE = 12  # test drawings shown with their class probabilities
CURVE_FIGURES = 6  # at most this many learning rates get a curves figure each; more share one figure
NAMED_CURVES = 8  # the best ranked trials named in a curves figure's legend; the others are drawn grey
CURVE_STYLE = "validation solid, training dashed"
GRID_CELL = ["model", "lr", "batch_size"]  # a heatmap cell
LR = HYPERPARAMETER["lr"]
SAMPLERS = {"random": "a random search", "optuna": "an Optuna search"}  # searches that draw their trials


@dataclass(frozen=True)
class Picture:
    png: bytes
    alt: str  # what it shows, in words, for the page


@dataclass
class Section:
    heading: str
    text: str  # what the figures show
    figures: dict[str, Picture] = field(default_factory=dict)  # file name in report/ -> the figure
    skipped: list[str] = field(default_factory=list)  # why a figure is not there

    def add(self, name: str, figure, alt: str) -> None:
        """A matplotlib figure, as a PNG named `name` in report/."""
        self.figures[name] = Picture(figures.png_bytes(figure), alt)


def report_page(experiment: Location, summary: Summary, histories: dict[str, pd.DataFrame], split: Split | None,
                no_split: str = "") -> tuple[dict[str, bytes], str]:
    """The report's figures (PNGs by file name in report/) and report.html's text; nothing is written yet.

    `summary.table` has each trial's folder name (trial_dir), `histories` each trial's per-epoch results by folder
    name; `split` the validation and test drawings (None when they cannot be read, `no_split` says why)."""
    sections = [what_mattered_section(summary), heatmap_section(summary), curves_section(summary, histories),
                *chosen_model_sections(summary, split, no_split)]
    figures = {name: image.png for section in sections for name, image in section.figures.items()}
    page = report_html.render(experiment.name, summary, sections, search_record(experiment), experiment.uri,
                              what_ran(histories))
    return figures, page


def publish_figures(experiment: Location, figures: dict[str, bytes]) -> None:
    """report/ replaced as a whole by a folder of the figures (Location.write_folder): an earlier report's figure
    whose input is gone goes with it, and a link there is replaced, never written through."""

    def write(staged: Path) -> None:
        for name, png in figures.items():
            (staged / name).write_bytes(png)

    (experiment / REPORT_DIR).write_folder(write, replace=True)


def what_mattered_section(summary: Summary) -> Section:
    result = summary.importance
    shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in result.shares.items())
    section = Section("What mattered",
                      f"Each searched hyperparameter's share of the variance in validation accuracy: {shares} "
                      f"({result.method}; the numbers are in summary.json). Trials stopped by ASHA count with the "
                      "best validation accuracy they reached; trials that diverged do not count. Then every trial as "
                      "a line from its validation accuracy across its hyperparameters, and validation accuracy "
                      "against each hyperparameter, on a log axis where the space is logarithmic.")
    if not result.shares:
        section.skipped.append(f"the hyperparameter importance, parallel coordinates and scatters: {result.reason}")
        return section
    table, space = summary.table, summary.space
    section.add("hyperparameter_importance.png", figures.importance_figure(result.shares, result.method),
                "Bar chart: each searched hyperparameter's share of the variance in validation accuracy")
    section.add("parallel_coordinates.png", importance.parallel_coordinates_figure(table, space),
                "Parallel coordinates: every trial as a line through its hyperparameters, coloured by its validation "
                "accuracy")
    for dimension in importance.assessed_dimensions(table, space):
        label = dimension.hyperparameter.label.lower()
        section.add(f"scatter_{dimension.name}.png", importance.scatter_figure(table, space, dimension.name),
                    f"Scatter plot: validation accuracy of each trial against its {label}")
    return section


def heatmap_section(summary: Summary) -> Section:
    section = Section("Test accuracy over model, learning rate and batch size",
                      "One cell per trial: its test accuracy in percent. The best trial, chosen on validation "
                      "accuracy, is outlined in red; grey cells are trials without one, stopped early by ASHA, "
                      "diverged or unfinished.")
    trials = summary.table
    if summary.search != "grid":
        section.skipped.append(f"the heatmap: {SAMPLERS.get(summary.search, 'this search')} samples its trials "
                               "instead of filling a grid of learning rate and batch size (What mattered compares them)")
        return section
    if trials.duplicated(GRID_CELL).any():
        others = [HYPERPARAMETER[name].label.lower() for name in summary.shown if name not in GRID_CELL]
        section.skipped.append("the heatmap: trials share a cell of model, learning rate and batch size, differing "
                               f"in {' and '.join(others) or 'nothing searched'} (What mattered compares them)")
        return section
    if trials.test_accuracy.isna().all():
        section.skipped.append("the heatmap: no trial finished, so no trial has a test accuracy")
        return section
    trials = trials.assign(note=[untested_note(row) for row in trials.itertuples()])
    accuracy, notes = grid(trials, TEST_ACCURACY.key).astype(float), grid(trials, "note")
    tie = tie_sentence(trials, subject="The outlined trial")
    figure = figures.accuracy_heatmap_figure(accuracy, row_labels(trials), grid_columns(trials), notes,
                                             best=grid_cell(trials, best_trial(trials)), tied=bool(tie))
    if tie:
        section.text += f" {tie}."
    section.add("test_accuracy_heatmap.png", figure,
                "Heatmap: test accuracy in percent for each learning rate (rows) and batch size (columns), the trial "
                "chosen on validation outlined")
    return section


def grid_rows(trials: pd.DataFrame) -> list[tuple[str, float]]:
    """The heatmap's rows, top down: the (model, learning rate) pairs, by model, then learning rate high to low
    (whatever order the table ranks its trials in)."""
    pairs = set(trials[["model", "lr"]].itertuples(index=False, name=None))
    return sorted(pairs, key=lambda pair: (pair[0], -pair[1]))


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
    return [f"{model} {LR.text(lr)}" if several else LR.text(lr) for model, lr in grid_rows(trials)]


def untested_note(trial) -> str:
    """What the heatmap writes in the cell of a trial without a test accuracy, on two lines."""
    if trial.status in ("stopped", "diverged"):
        return f"{trial.status} at\nepoch {trial.epochs}"
    return "not\nfinished"


def curves_section(summary: Summary, histories: dict[str, pd.DataFrame]) -> Section:
    """A figure per learning rate when there are few of them (a grid's), else one figure of every trial (a sampled
    search draws a learning rate per trial)."""
    trials, shown = summary.table, summary.shown
    named = (f"one line per trial, labelled with its rank in the table; past {NAMED_CURVES} trials in a figure, the "
             "best ranked are named and the others drawn grey")
    if trials.lr.nunique() > CURVE_FIGURES:
        section = Section("Accuracy and loss per epoch", f"Every trial in one figure, {named}; {CURVE_STYLE}.")
        if lines := curve_lines(trials, histories, shown):
            section.add("curves.png", figures.validation_curves_figure("Every trial", *lines),
                        "Line charts: validation and training accuracy and loss of every trial, per epoch")
        else:
            section.skipped.append("the curves: no trial reported a validation result")
        return section
    section = Section("Accuracy and loss per epoch", f"One figure per learning rate, {named}; {CURVE_STYLE}.")
    others = [name for name in shown if name != "lr"] or ["batch_size"]
    for lr in sorted(trials.lr.unique(), reverse=True):
        if lines := curve_lines(trials[trials.lr == lr], histories, others):
            section.add(f"curves_lr={LR.text(lr)}.png",
                        figures.validation_curves_figure(f"Learning rate {LR.text(lr)}", *lines),
                        f"Line charts: validation and training accuracy and loss per epoch of the trials with learning "
                        f"rate {LR.text(lr)}")
        else:
            section.skipped.append(f"the curves of learning rate {LR.text(lr)}: none of its trials reported a "
                                   "validation result")
    return section


def curve_lines(trials: pd.DataFrame, histories: dict[str, pd.DataFrame], names) -> tuple[dict, list] | None:
    """The per-epoch results of the trials that reported any, in rank order: the first NAMED_CURVES by legend label
    (rank and the hyperparameters `names`), the rest in a list; None when no trial reported."""
    curves = []
    for _, row in trials.iterrows():
        history = histories.get(row.trial_dir)
        if history is not None and {EPOCH.key, VAL_ACCURACY.key, VAL_LOSS.key} <= set(history.columns):
            # A trial restarted from a checkpoint reports the epochs after it again: keep the last.
            kept = history.drop_duplicates(EPOCH.key, keep="last").sort_values(EPOCH.key)
            curves.append((curve_label(row, names), kept))
    if not curves:
        return None
    return dict(curves[:NAMED_CURVES]), [history for _, history in curves[NAMED_CURVES:]]


def curve_label(row, names) -> str:
    """`#rank` and the trial's hyperparameters `names`, briefly (the model by its name alone), and its status unless
    it finished: "#3 vgg-bn lr 0.001 batch 64"."""
    words = [row.model if name == "model" else f"{HYPERPARAMETER[name].short} {HYPERPARAMETER[name].text(row[name])}"
             for name in names]
    status = "" if row.status == "finished" else f" ({row.status})"
    return " ".join([f"#{row['rank']}", *words]) + status


def chosen_model_sections(summary: Summary, split: Split | None, no_split: str) -> list[Section]:
    chosen = summary.chosen
    model = chosen_words(summary) if chosen else "the chosen model"
    per_class = Section("Per-class test accuracy of the chosen model",
                        f"The share of each class's test drawings that the chosen model ({model}, in best_model/) "
                        "classified right, and which classes it took for which.")
    drawings = Section(f"{SAMPLE_SIZE} test drawings and their class probabilities (chosen model)",
                       "Up to a third of them classified wrong, the rest right, picked with a fixed seed.")
    if chosen is None:
        missing = "no trial finished, so there is no model to show"
    elif split is None:
        missing = no_split
    else:
        missing = chosen.note if chosen.test_probabilities is None else ""
    if missing:
        per_class.skipped.append(f"the per-class accuracy and confusion matrix: {missing}")
        drawings.skipped.append(f"the test drawings: {missing}")
        return [per_class, drawings]
    probabilities = chosen.test_probabilities
    predictions = probabilities.argmax(1)
    title = f"Per-class test accuracy, chosen model: {model}"
    per_class.add("per_class_accuracy.png", figures.per_class_accuracy_figure(split.y_test, predictions, split.classes,
                                                                              title),
                  "Bar chart: the chosen model's test accuracy for each class, and over all classes")
    per_class.add("confusion_matrix.png", figures.confusion_matrix_figure(split.y_test, predictions, split.classes),
                  "Confusion matrix of the chosen model: test drawings counted by true class (rows) and predicted "
                  "class (columns)")
    sample = sample_drawings(split.y_test, predictions)
    figure = figures.probabilities_figure(split.x_test[sample], split.y_test[sample], probabilities[sample],
                                          split.classes)
    drawings.add("test_probabilities.png", figure,
                 f"{len(sample)} test drawings, each beside bars of the class probabilities the chosen model gave it")
    return [per_class, drawings]


def search_record(experiment: Location) -> SearchRecord | None:
    """search.json, for the page's settings; None when it cannot be read (the page says so)."""
    try:
        return SearchRecord.read(experiment)
    except (OSError, UserError):
        return None


def evaluation_split(experiment: Location) -> tuple[Split | None, str]:
    """The validation and test parts of the split the search trained on (the training part stays unread), from where
    its search.json says it is; None and why when they cannot be read. A split that is there but is not the one its
    conversion wrote (dataset.SplitChanged) is refused: the report would test on drawings that are not the search's."""
    try:
        return load_split(split_location(experiment), parts=("validation", "test")), ""
    except SplitChanged:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UserError) as e:
        return None, f"the validation and test drawings cannot be read from the split that {SEARCH_FILE} names " \
                     f"({first_line(e)})"


def sample_drawings(labels: np.ndarray, predictions: np.ndarray, count: int = SAMPLE_SIZE, seed: int = 0):
    """Indices of `count` test drawings, up to a third of them classified wrong, in test order."""
    rng = np.random.default_rng(seed)
    wrong, right = np.flatnonzero(labels != predictions), np.flatnonzero(labels == predictions)
    n_right = min(len(right), count - min(len(wrong), count // 3))
    n_wrong = min(len(wrong), count - n_right)
    chosen = [rng.choice(wrong, n_wrong, replace=False), rng.choice(right, n_right, replace=False)]
    return np.sort(np.concatenate(chosen))
