"""Experiment results -> a table per trial -> summary.md, summary.csv, summary.json and the report
page (quickdraw.report_page); the table exported in other formats for the `report` command."""

from __future__ import annotations

import json
import math
import pandas as pd
from ray.tune import ExperimentAnalysis

from quickdraw.errors import UserError
from quickdraw.storage import Location

COLUMNS = [
    "model", "lr", "batch_size", "epochs", "best_val_loss", "best_val_accuracy", "test_accuracy", "train_seconds",
    "status",
]
# A trial's status: finished (tested), stopped (by ASHA, untested), error, or unfinished (its driver stopped).
# The first two ran as far as the search let them.
COMPLETE = ("finished", "stopped")


def write_report(experiment: Location) -> pd.DataFrame:
    """Rebuild the summary files, the report page and best_model/ in `experiment` from what Tune stored
    there, finished or not."""
    from quickdraw.best_model import export_best_model
    from quickdraw.report_page import PAGE_FILE, write_page

    trials, histories = load_trials(experiment)
    table = trials[COLUMNS]
    (experiment / "summary.csv").write_text(export(table, "csv"))
    (experiment / "summary.json").write_text(export(table, "json"))
    figures = write_page(experiment, trials, histories)
    export_best_model(experiment, trials, histories)
    links = ", ".join(f"[{name}]({name})" for name in figures)
    (experiment / "summary.md").write_text(
        to_markdown(table) + f"\nReport with every figure: [{PAGE_FILE}]({PAGE_FILE}). Figures: {links or 'none'}.\n"
    )
    return table


def summarize(experiment: Location) -> pd.DataFrame:
    """A row per trial, accuracies in percent, sorted by model, learning rate (high to low) and batch size."""
    return load_trials(experiment)[0][COLUMNS]


def load_trials(experiment: Location) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The summary table with each trial's folder name (column trial_dir) added, and each trial's
    per-epoch results by folder name (trials that never reported have none)."""
    try:
        analysis = ExperimentAnalysis(experiment.uri)
    except ValueError:
        raise UserError(
            f"{experiment} holds no Ray Tune experiment: give the folder <storage>/<name> that a search wrote"
        ) from None
    rows, histories = [], {}
    for trial in analysis.trials:
        history = analysis.trial_dataframes.get(trial.trial_id)
        trial_dir = trial.storage.trial_dir_name if trial.storage else None
        rows.append({**_trial_row(trial, history), "trial_dir": trial_dir})
        if trial_dir and history is not None and len(history):
            histories[trial_dir] = history
    table = pd.DataFrame(rows, columns=COLUMNS + ["trial_dir"]).round(
        {"best_val_loss": 4, "best_val_accuracy": 2, "test_accuracy": 2, "train_seconds": 1}
    )
    order = table.sort_values(["model", "lr", "batch_size"], ascending=[True, False, True], ignore_index=True)
    return order, histories


def export(table: pd.DataFrame, fmt: str) -> str:
    """The table as md (summary.md's tables), csv, json, html or latex text."""
    exporters = {
        "md": to_markdown,
        "csv": lambda t: t.to_csv(index=False),
        "json": lambda t: json.dumps(_json_rows(t), indent=2) + "\n",
        "html": to_html,
        "latex": lambda t: t.to_latex(index=False, escape=True, na_rep="--", float_format="{:g}".format),
    }
    return exporters[fmt](table)


def to_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, na_rep="", float_format="{:g}".format, border=0, classes="summary") + "\n"


def _trial_row(trial, history: pd.DataFrame | None) -> dict:
    # The trial's own result log is newer than the experiment snapshot when a driver stopped early.
    last = history.iloc[-1].to_dict() if history is not None and len(history) else (trial.last_result or {})
    test_accuracy = last.get("test_accuracy", math.nan)
    return {
        "model": trial.config.get("model", "seed"),  # experiments from before --model trained the seed's
        "lr": trial.config["lr"],
        "batch_size": trial.config["batch_size"],
        "epochs": int(last.get("epoch", 0)),
        "best_val_loss": last.get("best_val_loss", math.nan),
        "best_val_accuracy": 100 * last.get("best_val_accuracy", math.nan),
        "test_accuracy": 100 * test_accuracy,
        "train_seconds": last.get("train_seconds", math.nan),
        "status": _status(trial.status, tested=not _missing(test_accuracy)),
    }


def _status(tune_status: str, tested: bool) -> str:
    if tested:
        return "finished"
    if tune_status == "TERMINATED":
        return "stopped"  # ended untested: only a scheduler (ASHA) ends a trial before its last epoch
    return "error" if tune_status == "ERROR" else "unfinished"


def best_trial(table: pd.DataFrame):
    """The row index of the trial with the highest test accuracy (the table's first on a tie);
    None when no trial finished."""
    return table["test_accuracy"].idxmax() if table["test_accuracy"].notna().any() else None


def describe(row: pd.Series) -> str:
    """How the summary names a trial: its model, learning rate and batch size."""
    return f"{row.model}, lr {row.lr:g}, batch size {row.batch_size}"


def best_per_model(table: pd.DataFrame) -> list[str]:
    """'model accuracy% (lr, batch size)' of each model's best trial, when the grid had more than one model."""
    if table["model"].nunique() < 2:
        return []
    bests = []
    for model, group in table.groupby("model", sort=False):
        index = best_trial(group)
        if index is not None:
            row = group.loc[index]
            bests.append(f"{model} {row.test_accuracy:.2f}% (lr {row.lr:g}, batch size {row.batch_size})")
    return bests


def to_markdown(table: pd.DataFrame) -> str:
    """One `Batch size | Test accuracy` table per model and learning rate, as in the seed's README; best in bold."""
    best = best_trial(table)
    lines = ["# Test accuracy", ""]
    if best is not None:
        lines += [f"Best: **{table.loc[best].test_accuracy:.2f}%** with {describe(table.loc[best])}.", ""]
    if per_model := best_per_model(table):
        lines += ["Best of each model: " + "; ".join(per_model) + ".", ""]
    stopped = (table["status"] == "stopped").sum()
    if stopped:
        lines += [f"{stopped} of {len(table)} trials {'was' if stopped == 1 else 'were'} stopped early by ASHA.", ""]
    unfinished = (~table["status"].isin(COMPLETE)).sum()
    if unfinished:
        lines += [f"{unfinished} of {len(table)} trials did not finish.", ""]
    for (model, lr), group in table.groupby(["model", "lr"], sort=False):
        cells = pd.DataFrame({
            "Batch size": [_bold(str(b), i == best) for i, b in group["batch_size"].items()],
            "Test accuracy": [_bold(_accuracy_cell(r), i == best) for i, r in group.iterrows()],
        })
        table_text = cells.to_markdown(index=False, colalign=("right", "right"))
        lines += [f"## Learning rate {lr:g}, model {model}", "", table_text, ""]
    return "\n".join(lines)


def _accuracy_cell(row: pd.Series) -> str:
    if row.status == "finished":
        return f"{row.test_accuracy:.2f}%"
    status = "stopped by ASHA" if row.status == "stopped" else row.status
    return f"{status} ({row.epochs} epoch{'' if row.epochs == 1 else 's'})"


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_rows(table: pd.DataFrame) -> list[dict]:
    # NaN is not JSON: unfinished trials get null.
    return json.loads(table.to_json(orient="records"))
