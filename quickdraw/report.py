"""Writing an experiment's results: summary.md, summary.csv and summary.json (quickdraw.summary), the report page
(quickdraw.report_page) and best_model/ (quickdraw.best_model), all from what the folder holds (quickdraw.experiment)."""

from __future__ import annotations

import pandas as pd

from quickdraw.best_model import export_best_model
from quickdraw.experiment import load_trials
from quickdraw.report_page import PAGE_FILE, write_page
from quickdraw.storage import Location
from quickdraw.summary import export, to_markdown


def write_report(experiment: Location) -> pd.DataFrame:
    """Rebuild the summary files, the report page and best_model/ in `experiment`, finished or not; return the
    results table."""
    trials, histories = load_trials(experiment)
    (experiment / "summary.csv").write_text(export(trials, "csv"))
    (experiment / "summary.json").write_text(export(trials, "json"))
    figures = write_page(experiment, trials, histories)
    export_best_model(experiment, trials, histories)
    links = ", ".join(f"[{name}]({name})" for name in figures)
    (experiment / "summary.md").write_text(
        to_markdown(trials) + f"\nReport with every figure: [{PAGE_FILE}]({PAGE_FILE}). Figures: {links or 'none'}.\n"
    )
    return trials
