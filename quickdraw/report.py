"""The report of an experiment, every file of it written from what the folder holds (quickdraw.experiment):
summary.md, summary.csv and summary.json (quickdraw.summary, with what mattered from quickdraw.importance), the
figures and report.html (quickdraw.report_sections, quickdraw.report_html) and best_model/ (quickdraw.best_model,
chosen on validation by quickdraw.ensemble)."""

from __future__ import annotations

from quickdraw import importance
from quickdraw.best_model import BEST_MODEL_DIR, best_model_files, choose_model, publish_best_model
from quickdraw.config import ENSEMBLE_SIZE
from quickdraw.errors import UserError
from quickdraw.experiment import load_trials, space_of
from quickdraw.report_sections import PAGE_FILE, REPORT_DIR, evaluation_split, publish_figures, report_page
from quickdraw.search_record import SearchRecord
from quickdraw.storage import Location
from quickdraw.summary import Summary, export


def write_report(experiment: Location, ensemble: int | None = None) -> Summary:
    """Rebuild the summary files, the report page and best_model/ in `experiment`, finished or not; return the
    summary (its table, space, what mattered and the chosen model) that they show. `ensemble`: the most steps of the
    ensemble selection (None: the search's own setting).

    Everything is computed before anything is written, then published part by part, each part whole: best_model/ and
    report/ each swapped in as a folder, then report.html and the summary files, summary.json last (docs/report.md).
    A kill before that leaves the old report; a link in the folder is replaced, never written through."""
    for folder in (BEST_MODEL_DIR, REPORT_DIR):
        (experiment / folder).check_replaceable()  # a file where a folder goes is refused before any work
    trials, histories = load_trials(experiment)
    search, space = space_of(experiment, trials)
    split, no_split = evaluation_split(experiment)
    chosen = choose_model(experiment, trials, split, ensemble or recorded_ensemble(experiment), no_split)
    summary = Summary(trials, space, search, importance.assess(trials, space), chosen)
    figures, page = report_page(experiment, summary, histories, split, no_split)
    model = best_model_files(experiment, chosen, histories)
    links = ", ".join(f"[{REPORT_DIR}/{name}]({REPORT_DIR}/{name})" for name in figures)
    summary_md = (export(summary, "md") + f"\nReport with every figure: [{PAGE_FILE}]({PAGE_FILE}). Figures: "
                  f"{links or 'none'}.\n")
    if model is not None:
        publish_best_model(experiment, model)
    publish_figures(experiment, figures)
    experiment.write_files({PAGE_FILE: page.encode(), "summary.csv": export(summary, "csv").encode(),
                            "summary.md": summary_md.encode(), "summary.json": export(summary, "json").encode()})
    return summary


def recorded_ensemble(experiment: Location) -> int:
    """The search's --ensemble, as search.json records it (the default when it cannot be read)."""
    try:
        return SearchRecord.read(experiment).config.ensemble
    except (OSError, UserError):
        return ENSEMBLE_SIZE
