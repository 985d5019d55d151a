"""The report of an experiment, every file of it written from what the folder holds (quickdraw.experiment):
summary.md, summary.csv and summary.json (quickdraw.summary, with what mattered from quickdraw.importance), the
figures and report.html (quickdraw.report_sections, quickdraw.report_html) and best_model/ (quickdraw.best_model)."""

from __future__ import annotations

from quickdraw import importance
from quickdraw.best_model import export_best_model
from quickdraw.experiment import load_trials, space_of
from quickdraw.report_sections import PAGE_FILE, write_page
from quickdraw.storage import Location
from quickdraw.summary import Summary, export


def write_report(experiment: Location) -> Summary:
    """Rebuild the summary files, the report page and best_model/ in `experiment`, finished or not; return the
    summary (its table, space and what mattered) that they show."""
    trials, histories = load_trials(experiment)
    search, space = space_of(experiment, trials)
    summary = Summary(trials, space, search, importance.assess(trials, space))
    (experiment / "summary.csv").write_text(export(summary, "csv"))
    (experiment / "summary.json").write_text(export(summary, "json"))
    figures = write_page(experiment, summary, histories)
    export_best_model(experiment, trials, histories)
    links = ", ".join(f"[{name}]({name})" for name in figures)
    (experiment / "summary.md").write_text(
        export(summary, "md") + f"\nReport with every figure: [{PAGE_FILE}]({PAGE_FILE}). Figures: {links or 'none'}.\n"
    )
    return summary
