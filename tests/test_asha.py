"""--scheduler asha on the synthetic classes: lr 0.5 stays at chance (validation loss about ln 3 or far
worse) while lr 0.003 learns them in an epoch or two, so ASHA stops lr 0.5 trials at its rungs."""

import json

import pandas as pd
import pytest
from ray.tune import ExperimentAnalysis

from conftest import SYNTHETIC_CLASSES, run_cli, write_class_files
from experiment_checks import chosen_trial, results, trial_dirs

pytestmark = pytest.mark.slow  # every test reads a search run with ASHA

# ASHA never stops the first trial to reach a rung. Tune starts the grid in order, batch sizes varying
# fastest, two trials at a time on two CPUs: lr 0.003 goes first so that its trials set the bar at each rung.
LRS, BATCH_SIZES, EPOCHS = (0.003, 0.5), (16, 32), 6
GRACE_PERIOD, REDUCTION_FACTOR = 1, 2
RUNGS = {1, 2, 4}  # grace period x reduction factor^k epochs, below --epochs: where ASHA may stop a trial


@pytest.fixture(scope="module")
def asha_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("asha")
    data = write_class_files(root / "data")
    result = run_cli(
        "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "150,30,30",
        "--lrs", ",".join(map(str, LRS)), "--batch-sizes", ",".join(map(str, BATCH_SIZES)), "--epochs", EPOCHS,
        "--scheduler", "asha", "--grace-period", GRACE_PERIOD, "--reduction-factor", REDUCTION_FACTOR,
        "--storage", root / "results", "--name", "asha",
    )
    return result, root / "results" / "asha"


def test_asha_stops_hopeless_trials_and_the_best_runs_every_epoch(asha_run):
    result, experiment = asha_run
    assert result.returncode == 0, result.stderr[-3000:]  # stopped trials are no failure
    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == len(LRS) * len(BATCH_SIZES)
    assert set(table.status) <= {"finished", "stopped"}

    stopped = table[table.status == "stopped"]
    assert (table[table.lr == 0.5].status == "stopped").all(), table
    assert set(stopped.epochs) <= RUNGS and stopped.test_accuracy.isna().all(), table
    finished = table[table.status == "finished"]
    assert (finished.epochs == EPOCHS).all() and finished.test_accuracy.notna().all(), table

    best = chosen_trial(table)
    assert best.lr == 0.003 and best.epochs == EPOCHS and best.test_accuracy > 90, table


def test_tunes_stored_results_agree_with_the_summary(asha_run):
    _, experiment = asha_run
    analysis = ExperimentAnalysis(str(experiment))
    assert {trial.status for trial in analysis.trials} == {"TERMINATED"}  # Tune ends stopped trials normally
    epochs = {(trial.config["lr"], trial.config["batch_size"]): len(analysis.trial_dataframes[trial.trial_id])
              for trial in analysis.trials}
    assert sum(epochs.values()) < len(epochs) * EPOCHS

    table = pd.read_csv(experiment / "summary.csv")
    assert dict(zip(zip(table.lr, table.batch_size), table.epochs)) == epochs
    for trial in trial_dirs(experiment):
        history = results(trial)
        assert [r["epoch"] for r in history] == [r["training_iteration"] for r in history]  # ASHA's time unit
        assert ("test_accuracy" in history[-1]) == (history[-1]["epoch"] == EPOCHS)

    config = json.loads((experiment / "search.json").read_text())["config"]
    assert (config["scheduler"], config["grace_period"], config["reduction_factor"]) == ("asha", 1, 2)


def test_summary_and_report_say_which_trials_asha_stopped(asha_run):
    result, experiment = asha_run
    table = pd.read_csv(experiment / "summary.csv")
    stopped = (table.status == "stopped").sum()
    verb = "was" if stopped == 1 else "were"
    line = f"{stopped} of {len(table)} trials {verb} stopped early by ASHA."
    markdown = (experiment / "summary.md").read_text()
    assert stopped and line in markdown and line in result.stdout
    assert "did not finish" not in markdown
    for row in table[table.status == "stopped"].itertuples():
        assert f"stopped by ASHA ({row.epochs} epoch" in markdown

    page = (experiment / "report.html").read_text()
    assert f"{len(table) - stopped} of {len(table)} trials finished. {stopped} {verb} stopped early by ASHA." in page
    figures = {p.name for p in (experiment / "report").iterdir()}
    assert figures == {"test_accuracy_heatmap.png", "per_class_accuracy.png", "confusion_matrix.png",
                       "test_probabilities.png",
                       *(f"curves_lr={lr:g}.png" for lr in LRS), "hyperparameter_importance.png",
                       "parallel_coordinates.png", "scatter_lr.png", "scatter_batch_size.png"}

    # What mattered counts the stopped trials too, with the validation accuracy they reached.
    summary = json.loads((experiment / "summary.json").read_text())
    assert f"on {len(table)} trials ({stopped} of them stopped by ASHA)" in summary["importance_method"]
    assert max(summary["hyperparameter_importance"], key=summary["hyperparameter_importance"].get) == "lr"


def test_report_rebuilds_the_same_summary(asha_run):
    _, experiment = asha_run
    before = (experiment / "summary.csv").read_text()
    rebuilt = run_cli("report", experiment)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert "stopped early by ASHA" in rebuilt.stdout
    assert (experiment / "summary.csv").read_text() == before
