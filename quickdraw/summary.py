"""The results table, pure pandas: a row per trial, the trial chosen as best, and the table's formats (summary.md,
csv, json, html, latex). It reads and writes no files; quickdraw.report does.

The best trial is chosen on validation data, never on test data: of the trials that finished, the one with the
highest best-validation accuracy; on a tie the lower best-validation loss, then the earlier trial in the search's
order (its Tune trial id). Test accuracy is reported for every trial and used for nothing else."""

from __future__ import annotations

import json
import math

import pandas as pd

COLUMNS = [
    "model", "lr", "batch_size", "epochs", "best_val_loss", "best_val_accuracy", "test_accuracy", "train_seconds",
    "status", "best",
]
DECIMALS = {"best_val_loss": 4, "best_val_accuracy": 2, "test_accuracy": 2, "train_seconds": 1}
# A trial's status: finished (tested), stopped (by ASHA, untested), error, or unfinished (its driver stopped).
# The first two ran as far as the search let them.
COMPLETE = ("finished", "stopped")
CHOICE = "chosen on validation accuracy; test accuracy shown for every trial, never used to choose"
TIE_BREAK = "ties go to the lower validation loss, then to the trial that started first"


def trial_row(config: dict, last_result: dict, tune_status: str) -> dict:
    """A trial's row, from its config, the last result it reported (empty if none) and its status in Tune."""
    test_accuracy = last_result.get("test_accuracy", math.nan)
    return {
        "model": config["model"],
        "lr": config["lr"],
        "batch_size": config["batch_size"],
        "epochs": int(last_result.get("epoch", 0)),
        "best_val_loss": last_result.get("best_val_loss", math.nan),
        "best_val_accuracy": 100 * last_result.get("best_val_accuracy", math.nan),
        "test_accuracy": 100 * test_accuracy,
        "train_seconds": last_result.get("train_seconds", math.nan),
        "status": status(tune_status, tested=not math.isnan(test_accuracy)),
    }


def status(tune_status: str, tested: bool) -> str:
    if tested:
        return "finished"
    if tune_status == "TERMINATED":
        return "stopped"  # ended untested: only a scheduler (ASHA) ends a trial before its last epoch
    return "error" if tune_status == "ERROR" else "unfinished"


def trial_table(rows: list[dict]) -> pd.DataFrame:
    """The rows (trial_row's, each with the trial's `trial_id` and folder, `trial_dir`) sorted by model, learning
    rate (high to low) and batch size; accuracies in percent, unrounded; `best` marks the best trial."""
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "best"] + ["trial_id", "trial_dir"])
    table = table.sort_values(["model", "lr", "batch_size", "trial_id"], ascending=[True, False, True, True],
                              ignore_index=True)
    table.insert(len(COLUMNS) - 1, "best", table.index == best_trial(table))
    return table


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the summary files hold it: its COLUMNS, losses to 4 decimals, percentages to 2."""
    return table[COLUMNS].round(DECIMALS)


def best_trial(table: pd.DataFrame):
    """The row index of the best finished trial, chosen on validation (see the module's docstring); None when no
    trial finished."""
    finished = table[table.status == "finished"]
    if finished.empty:
        return None
    order = finished.sort_values(["best_val_accuracy", "best_val_loss", "trial_id"], ascending=[False, True, True],
                                 kind="stable")
    return order.index[0]


def describe(row: pd.Series) -> str:
    """How the summary names a trial: its model, learning rate and batch size."""
    return f"{row.model}, lr {row.lr:g}, batch size {row.batch_size}"


def best_sentence(row: pd.Series) -> str:
    """The best trial in words: what chose it, and its test accuracy."""
    return (f"{describe(row)}: validation accuracy {row.best_val_accuracy:.2f}%, "
            f"test accuracy {row.test_accuracy:.2f}%")


def best_per_model(table: pd.DataFrame) -> list[str]:
    """Each model's best trial in words (chosen as the best overall is), when the search had more than one model."""
    if table["model"].nunique() < 2:
        return []
    bests = []
    for model, group in table.groupby("model", sort=False):
        index = best_trial(group)
        if index is not None:
            row = group.loc[index]
            bests.append(f"{model} lr {row.lr:g}, batch size {row.batch_size} (validation {row.best_val_accuracy:.2f}%, "
                         f"test {row.test_accuracy:.2f}%)")
    return bests


def to_markdown(table: pd.DataFrame) -> str:
    """One `Batch size | Validation | Test accuracy` table per model and learning rate, the best trial in bold."""
    best = best_trial(table)
    lines = ["# Test accuracy", ""]
    if best is not None:
        lines += [f"Best: **{best_sentence(table.loc[best])}**.", ""]
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
            "Validation accuracy": [_bold(_percent(r.best_val_accuracy), i == best) for i, r in group.iterrows()],
            "Test accuracy": [_bold(_test_cell(r), i == best) for i, r in group.iterrows()],
        })
        table_text = cells.to_markdown(index=False, colalign=("right", "right", "right"))
        lines += [f"## Learning rate {lr:g}, model {model}", "", table_text, ""]
    lines += [f"The best trial is {CHOICE} ({TIE_BREAK}).", ""]
    return "\n".join(lines)


def to_html(table: pd.DataFrame) -> str:
    return rounded(table).to_html(index=False, na_rep="", float_format="{:g}".format, border=0,
                                  classes="summary") + "\n"


EXPORTERS = {  # format -> the table as text (summary.md's tables for md); config.EXPORT_FORMATS names them for the CLI
    "md": to_markdown,
    "csv": lambda t: rounded(t).to_csv(index=False),
    "json": lambda t: json.dumps(json.loads(rounded(t).to_json(orient="records")), indent=2) + "\n",  # NaN: null
    "html": to_html,
    "latex": lambda t: rounded(t).to_latex(index=False, escape=True, na_rep="--", float_format="{:g}".format),
}


def export(table: pd.DataFrame, fmt: str) -> str:
    """The table as md, csv, json, html or latex text."""
    return EXPORTERS[fmt](table)


def _test_cell(row: pd.Series) -> str:
    if row.status == "finished":
        return _percent(row.test_accuracy)
    status_text = "stopped by ASHA" if row.status == "stopped" else row.status
    return f"{status_text} ({row.epochs} epoch{'' if row.epochs == 1 else 's'})"


def _percent(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}%"


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold and text else text
