"""The results table, pure pandas: a row per trial ranked by validation accuracy, with every hyperparameter the
search could vary as a column (quickdraw.catalogue), the trial chosen as best, and the summary's formats
(summary.md, csv, json, html, latex). It reads and writes no files; quickdraw.report does.

The best trial is chosen on validation data, never on test data: of the trials that finished (never one that was
stopped or diverged), the one with the highest best-validation accuracy; on a tie the lower best-validation loss,
then the earlier trial in the search's order (its trial number, from Tune's experiment tag: trial ids of searchers
such as Optuna's are random). Test accuracy is reported for every trial and used for nothing else.

The chosen model, best_model/, is an ensemble of finished trials chosen on validation too (quickdraw.ensemble); the
summary shows it beside the best trial."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from quickdraw import strict_json
from quickdraw.catalogue import (BEST_VAL_ACCURACY, BEST_VAL_LOSS, DIVERGED, EPOCH, HYPERPARAMETER,
                                 HYPERPARAMETERS, TEST_ACCURACY, TRAIN_SECONDS, Metric)
from quickdraw.ensemble import ChosenModel
from quickdraw.space import Space

NAMES = [h.name for h in HYPERPARAMETERS]
MEASURES = (BEST_VAL_LOSS, BEST_VAL_ACCURACY, TEST_ACCURACY, TRAIN_SECONDS)  # the metrics of a trial's row
EPOCHS = "epochs"  # the epochs a trial ran: the last EPOCH it reported
COLUMNS = ["rank", *NAMES, EPOCHS, *(m.key for m in MEASURES), "status", "best"]
# trial_number: the order the search created its trials in (quickdraw.experiment.trial_number)
RANKING = ([BEST_VAL_ACCURACY.key, BEST_VAL_LOSS.key, "trial_number"], [False, True, True])  # columns, ascending
DECIMALS = {m.key: m.decimals for m in MEASURES}
# A trial's status, and what it means (the report's table says it in these words). Only a finished trial can be chosen.
STATUSES = {
    "finished": "tested after its last epoch",
    "stopped": "stopped early by ASHA, untested",
    "diverged": "its training or validation loss became NaN or infinite: ended at that epoch, untested",
    "error": "failed for good",
    "unfinished": "its driver stopped before it ended",
}
COMPLETE = ("finished", "stopped")  # ran as far as the search let them: What mattered counts them
ENDED = (*COMPLETE, "diverged")  # nothing left to run: the exit code is 0 when every trial ended so
CHOICE = "chosen on validation accuracy; test accuracy shown for every trial, never used to choose"
TIE_BREAK = "ties go to the lower validation loss, then to the trial that started first"


def trial_row(config: dict, last_result: dict, tune_status: str) -> dict:
    """A trial's row, from its config, the last result it reported (empty if none) and its status in Tune. A measure
    that is missing or not finite (an older search's NaN or infinity) is NaN: none."""
    measures = {m.key: (100 if m.percent else 1) * finite(last_result.get(m.key)) for m in MEASURES}
    tested = not math.isnan(measures[TEST_ACCURACY.key])
    return {**{name: config[name] for name in NAMES}, EPOCHS: int(last_result.get(EPOCH.key, 0)), **measures,
            "status": status(tune_status, tested, diverged=bool(last_result.get(DIVERGED)))}


def finite(value) -> float:
    """A reported number as a float; NaN when there is none, or it is NaN or infinite."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    return float(number) if math.isfinite(number) else math.nan


def status(tune_status: str, tested: bool, diverged: bool = False) -> str:
    """One of STATUSES."""
    if tested:
        return "finished"
    if diverged:
        return "diverged"  # its last result says so, whatever Tune's status (read from the trial's folder alone too)
    if tune_status == "TERMINATED":
        return "stopped"  # ended untested: only a scheduler (ASHA) ends a trial before its last epoch
    return "error" if tune_status == "ERROR" else "unfinished"


def trial_table(rows: list[dict]) -> pd.DataFrame:
    """The rows (trial_row's, each with the trial's `trial_id`, `trial_number` and folder, `trial_dir`) ranked by
    validation: the
    highest best-validation accuracy first, ties to the lower best-validation loss, then to the earlier trial, trials
    without a validation result last; `rank` numbers them from 1, `best` marks the best trial. Accuracies in percent,
    unrounded."""
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("rank", "best")]
                         + ["trial_id", "trial_number", "trial_dir"])
    columns, ascending = RANKING
    table = table.sort_values(columns, ascending=ascending, na_position="last", kind="stable", ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table.insert(len(COLUMNS) - 1, "best", table.index == best_trial(table))
    return table


@dataclass(frozen=True)
class Importance:
    """What mattered (quickdraw.importance computes it): each assessed hyperparameter's share of the variance in
    validation accuracy (shares sum to 1, largest first) and the method that gave them; no shares and the reason
    when they cannot be computed."""

    shares: dict[str, float] = field(default_factory=dict)
    method: str = ""
    reason: str = ""  # why there are no shares

    def record(self) -> dict:
        """The fields summary.json holds."""
        method = self.method if self.shares else f"not computed: {self.reason}"
        return {"hyperparameter_importance": self.shares, "importance_method": method}


@dataclass(frozen=True)
class Summary:
    """What the summary files say about a search: the ranked table, the space its trials were drawn from, how they
    were drawn ("grid", "random" or "optuna") and what mattered (quickdraw.importance)."""

    table: pd.DataFrame
    space: Space
    search: str
    importance: Importance
    chosen: ChosenModel | None = None  # best_model/'s; None when no trial finished

    @property
    def shown(self) -> list[str]:
        """The hyperparameters that tell trials apart: searched, or different between trials."""
        return shown_hyperparameters(self.table, self.space)


def shown_hyperparameters(table: pd.DataFrame, space: Space = ()) -> list[str]:
    """The hyperparameters the space searched or that differ between the table's trials, in the catalogue's order."""
    searched = {d.name for d in space if d.searched}
    return [name for name in NAMES if name in searched or table[name].nunique() > 1]


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the summary files hold it: its COLUMNS, losses to 4 decimals, percentages to 2."""
    return table[COLUMNS].round(DECIMALS)


def best_trial(table: pd.DataFrame):
    """The row index of the best finished trial, chosen on validation (see the module's docstring); None when no
    trial finished."""
    finished = table[table.status == "finished"]
    if finished.empty:
        return None
    columns, ascending = RANKING
    order = finished.sort_values(columns, ascending=ascending, kind="stable")
    return order.index[0]


def same_for_every_trial(table: pd.DataFrame, shown) -> str:
    """The hyperparameters left out of the tables (not `shown`) with their one value, as a sentence; "" when none."""
    constant = [HYPERPARAMETER[name] for name in NAMES if name not in shown and not table.empty]
    values = ", ".join(f"{h.phrase} {h.text(table[h.name].iloc[0])}" for h in constant)
    return f"Same for every trial: {values}." if constant else ""


def tie_sentence(table: pd.DataFrame, subject: str = "") -> str:
    """How a tie for the best validation accuracy was broken, in words, about `subject` (by default the best trial's
    rank, "#1"); "" when the best trial had none."""
    index = best_trial(table)
    if index is None:
        return ""
    best, finished = table.loc[index], table[table.status == "finished"]
    tied = finished[(finished.best_val_accuracy == best.best_val_accuracy) & (finished.index != index)]
    if tied.empty:
        return ""
    ranks = ", ".join(f"#{rank}" for rank in tied["rank"])
    subject = subject or f"#{best['rank']}"
    if (tied.best_val_loss > best.best_val_loss).all():
        rule = (f"its lower validation loss ({cell(BEST_VAL_LOSS, best.best_val_loss)}, against "
                f"{', '.join(cell(BEST_VAL_LOSS, loss) for loss in tied.best_val_loss)})")
    else:
        rule = "its lower validation loss or, where the losses are equal too, for starting first"
    accuracy = cell(BEST_VAL_ACCURACY, best.best_val_accuracy)
    return (f"{subject} tied with {ranks} on validation accuracy ({accuracy}) and was "
            f"chosen for {rule}")


def describe(row: pd.Series, shown=()) -> str:
    """How the summary names a trial: its model, then `settings`."""
    return f"{row.model}, {settings(row, shown)}"


def settings(row: pd.Series, shown=()) -> str:
    """A trial's learning rate and batch size, and the other hyperparameters among the `shown` ones (searched, or
    different between trials), so that the words tell it apart: "lr 0.001, batch size 64, dropout 0.3"."""
    named = [h for h in HYPERPARAMETERS if h.name != "model" and (h.always_named or h.name in shown)]
    return ", ".join(f"{h.phrase} {h.text(row[h.name])}" for h in named)


def best_sentence(row: pd.Series, shown=()) -> str:
    """The best trial in words: what chose it, and its test accuracy."""
    return (f"{describe(row, shown)}: validation accuracy {cell(BEST_VAL_ACCURACY, row.best_val_accuracy)}, "
            f"test accuracy {cell(TEST_ACCURACY, row.test_accuracy)}")


def best_per_model(table: pd.DataFrame, shown=()) -> list[str]:
    """Each model's best trial in words (chosen as the best overall is), when the search had more than one model."""
    if table["model"].nunique() < 2:
        return []
    bests = []
    for model, group in table.groupby("model"):
        index = best_trial(group)
        if index is not None:
            row = group.loc[index]
            validation = cell(BEST_VAL_ACCURACY, row.best_val_accuracy)
            bests.append(f"{model} {settings(row, shown)} (validation {validation}, "
                         f"test {cell(TEST_ACCURACY, row.test_accuracy)})")
    return bests


def rank_of(table: pd.DataFrame, trial_dir: str) -> int:
    return int(table.loc[table.trial_dir == trial_dir, "rank"].iloc[0])


def chosen_words(summary: Summary) -> str:
    """The chosen model in words: "an ensemble of 3 trials (#1, #2, #5)", or "trial #1 alone"."""
    members = summary.chosen.members
    mirrored = " with mirrored views" if all(m.mirrored for m in members) else ""
    if len(members) == 1:
        return f"trial #{rank_of(summary.table, members[0].trial_dir)} alone{mirrored}"
    ranks = ", ".join(f"#{rank_of(summary.table, m.trial_dir)}" for m in members)
    return f"an ensemble of {len(members)} trials ({ranks}){mirrored}"


def members_sentence(summary: Summary) -> str:
    """How the chosen model was chosen, and its members with their weights and views."""
    chosen = summary.chosen
    members = ", ".join(f"#{rank_of(summary.table, m.trial_dir)} {m.weight:.2f}"
                        + (" (mirrored views)" if m.mirrored else "") for m in chosen.members)
    text = (f"Chosen on validation by greedy ensemble selection with replacement (at most {chosen.size} steps; "
            f"test accuracy is only reported). Members and their weights in the average: {members}.")
    return f"{text} {chosen.note[0].upper()}{chosen.note[1:]}." if chosen.note else text


def comparison(summary: Summary) -> pd.DataFrame:
    """The best trial and the chosen model side by side: their validation and test accuracy, as text."""
    best, chosen = summary.table.loc[best_trial(summary.table)], summary.chosen
    rows = [(f"best trial (#{best['rank']})", best.best_val_accuracy, best.test_accuracy),
            (f"chosen model: {chosen_words(summary)}", chosen.validation_accuracy, chosen.test_accuracy)]
    return pd.DataFrame([(name, cell(BEST_VAL_ACCURACY, validation), cell(TEST_ACCURACY, test))
                         for name, validation, test in rows],
                        columns=["Model", BEST_VAL_ACCURACY.label, TEST_ACCURACY.label])


def chosen_markdown(summary: Summary) -> list[str]:
    if summary.chosen is None:
        return []
    table = comparison(summary).to_markdown(index=False, colalign=["left", "right", "right"], disable_numparse=True)
    return ["## The chosen model (best_model/)", "", table, "", members_sentence(summary), ""]


def chosen_record(summary: Summary) -> dict:
    """summary.json's account of the chosen model: its members (by folder and rank, with weight and view) and its
    accuracies beside the best trial's, in percent."""
    chosen, table = summary.chosen, summary.table
    if chosen is None:
        return {"chosen_model": None}
    best = table.loc[best_trial(table)]
    members = [{"trial_dir": m.trial_dir, "rank": rank_of(table, m.trial_dir), "weight": m.weight,
                "mirrored": m.mirrored} for m in chosen.members]
    return {"chosen_model": {
        "members": members, "ensemble": chosen.size, "note": chosen.note,
        BEST_VAL_ACCURACY.key: round(chosen.validation_accuracy, BEST_VAL_ACCURACY.decimals),
        TEST_ACCURACY.key: round(chosen.test_accuracy, TEST_ACCURACY.decimals),
        "best_trial": {"rank": int(best["rank"]),
                       **{m.key: round(float(best[m.key]), m.decimals) for m in (BEST_VAL_ACCURACY, TEST_ACCURACY)}},
    }}


def to_markdown(summary: Summary) -> str:
    """The best trial in words, then one table of every trial ranked by validation accuracy (the best in bold) with
    the hyperparameters that tell them apart, and a line for those that were the same for every trial."""
    table, shown = summary.table, summary.shown
    lines = ["# Search results", ""]
    if table.empty:  # stopped before Tune started a trial, as a Ctrl-C while it generates a large grid stops it
        return "\n".join(lines + ["No trial has started.", ""])
    best = best_trial(table)
    if best is not None:
        lines += [f"Best: **{best_sentence(table.loc[best], shown)}**.", ""]
    if per_model := best_per_model(table, shown):
        lines += ["Best of each model: " + "; ".join(per_model) + ".", ""]
    lines += chosen_markdown(summary)
    stopped = (table["status"] == "stopped").sum()
    if stopped:
        lines += [f"{stopped} of {len(table)} trials {'was' if stopped == 1 else 'were'} stopped early by ASHA.", ""]
    if diverged := diverged_sentence(table):
        lines += [diverged, ""]
    unfinished = (~table["status"].isin(ENDED)).sum()
    if unfinished:
        lines += [f"{unfinished} of {len(table)} trials did not finish.", ""]
    lines += ["## Every trial, ranked by validation accuracy", "", ranked_markdown(table, shown), ""]
    if same := same_for_every_trial(table, shown):
        lines += [same, ""]
    lines += [f"The best trial is {CHOICE} ({TIE_BREAK})."]
    if tie := tie_sentence(table):
        lines[-1] += f" Here {tie}."
    return "\n".join(lines + [""])


def diverged_sentence(table: pd.DataFrame, whole: bool = True) -> str:
    """How many trials diverged, as a sentence ("1 of 4 trials diverged ..."; without `whole`, "1 diverged ...");
    "" when none did."""
    diverged = (table["status"] == "diverged").sum()
    if not diverged:
        return ""
    count = f"{diverged} of {len(table)} trials" if whole else str(diverged)
    return (f"{count} diverged (a loss became NaN or infinite) and {'was' if diverged == 1 else 'were'} ended "
            "there, untested.")


def ranked_markdown(table: pd.DataFrame, shown: list[str]) -> str:
    """`Rank | <shown hyperparameters> | Validation accuracy | Test accuracy`, a row per trial, the best in bold."""
    best = best_trial(table)
    cells = {"Rank": [str(rank) for rank in table["rank"]]}
    cells |= {HYPERPARAMETER[name].label: [HYPERPARAMETER[name].text(value) for value in table[name]] for name in shown}
    cells[BEST_VAL_ACCURACY.label] = [cell(BEST_VAL_ACCURACY, value) for value in table[BEST_VAL_ACCURACY.key]]
    cells[TEST_ACCURACY.label] = [_test_cell(row) for row in table.itertuples()]
    frame = pd.DataFrame(cells, index=table.index)
    if best is not None:
        frame.loc[best] = [_bold(text, True) for text in frame.loc[best]]
    align = ["right"] * len(frame.columns)
    if "model" in shown:
        align[1] = "left"
    return frame.to_markdown(index=False, colalign=align, disable_numparse=True)


def to_html(table: pd.DataFrame) -> str:
    return rounded(table).to_html(index=False, na_rep="", float_format="{:g}".format, border=0,
                                  classes="summary") + "\n"


def to_json(summary: Summary) -> str:
    """{"trials": the rows, ranked; "hyperparameter_importance": {name: share}; "importance_method": how;
    "chosen_model": best_model/'s members and accuracies beside the best trial's}. Numbers
    keep every digit (pandas' to_json would cut a sampled learning rate to 10 decimals); NaN and infinity are null."""
    rows = rounded(summary.table).to_dict(orient="records")
    record = {"trials": rows, **summary.importance.record(), **chosen_record(summary)}
    return strict_json.dumps(strict_json.nulled(record), indent=2) + "\n"


EXPORTERS = {  # format -> the summary as text; config.EXPORT_FORMATS names them for the CLI
    "md": to_markdown,
    "csv": lambda s: rounded(s.table).to_csv(index=False),
    "json": to_json,
    "html": lambda s: to_html(s.table),
    "latex": lambda s: rounded(s.table).to_latex(index=False, escape=True, na_rep="--", float_format="{:g}".format),
}


def export(summary: Summary, fmt: str) -> str:
    """The summary as md (summary.md's text), csv, json (with what mattered), html or latex (the table)."""
    return EXPORTERS[fmt](summary)


def _test_cell(row) -> str:
    if row.status == "finished":
        return cell(TEST_ACCURACY, row.test_accuracy)
    return untested_words(row.status, row.epochs)


def untested_words(status: str, epochs: int) -> str:
    """What a trial without a test accuracy shows in its place: "stopped by ASHA (6 epochs)", "diverged at epoch 3",
    "unfinished (2 epochs)"."""
    if status == "diverged":
        return f"diverged at epoch {epochs}"
    status_text = "stopped by ASHA" if status == "stopped" else status
    return f"{status_text} ({epochs} epoch{'' if epochs == 1 else 's'})"


def cell(metric: Metric, value: float) -> str:
    """A metric's value in the table (a percentage already in percent) as the tables write it; "" for none."""
    return "" if math.isnan(value) else metric.form.format(value)


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold and text else text
