"""The report of an experiment, every file of it written from what the folder holds (quickdraw.experiment):
summary.md, summary.csv and summary.json (quickdraw.summary, with what mattered from quickdraw.importance), the
figures and report.html (quickdraw.report_sections, quickdraw.report_html) and best_model/ (quickdraw.best_model,
chosen on validation by quickdraw.ensemble)."""

from __future__ import annotations

from quickdraw import importance
from quickdraw.best_model import choose_model, export_best_model
from quickdraw.config import ENSEMBLE_SIZE
from quickdraw.errors import UserError
from quickdraw.experiment import load_trials, space_of
from quickdraw.report_sections import PAGE_FILE, evaluation_split, write_page
from quickdraw.search_record import SearchRecord
from quickdraw.storage import Location
from quickdraw.summary import Summary, export


def write_report(experiment: Location, ensemble: int | None = None) -> Summary:
    """Rebuild the summary files, the report page and best_model/ in `experiment`, finished or not; return the
    summary (its table, space, what mattered and the chosen model) that they show. `ensemble`: the most steps of the
    ensemble selection (None: the search's own setting)."""
    trials, histories = load_trials(experiment)
    search, space = space_of(experiment, trials)
    split, no_split = evaluation_split(experiment)
    chosen = choose_model(experiment, trials, split, ensemble or recorded_ensemble(experiment), no_split)
    summary = Summary(trials, space, search, importance.assess(trials, space), chosen)
    (experiment / "summary.csv").write_text(export(summary, "csv"))
    (experiment / "summary.json").write_text(export(summary, "json"))
    figures = write_page(experiment, summary, histories, split, no_split)
    export_best_model(experiment, chosen, histories)
    links = ", ".join(f"[{name}]({name})" for name in figures)
    (experiment / "summary.md").write_text(
        export(summary, "md") + f"\nReport with every figure: [{PAGE_FILE}]({PAGE_FILE}). Figures: {links or 'none'}.\n"
    )
    return summary


def recorded_ensemble(experiment: Location) -> int:
    """The search's --ensemble, as search.json records it (the default when it cannot be read)."""
    try:
        return SearchRecord.read(experiment).config.ensemble
    except (OSError, UserError):
        return ENSEMBLE_SIZE
