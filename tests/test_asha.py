"""--scheduler asha on the synthetic classes: lr 0.5 stays at chance (validation loss about ln 3 or far
worse) while lr 0.003 learns them in an epoch or two, so ASHA stops lr 0.5 trials at its rungs. In the same grid
lr 1e10 turns the seed CNN's loss to NaN in its first epoch: those trials end as diverged (issue 28, item 12; the rest
of it is tests/test_diverged.py's), their last result without the validation loss that ASHA ranks by, which Tune's
strict metric check would refuse. One search for both, as a search costs seconds of Ray and Tune however small."""

import json

import pandas as pd
import pytest
from ray.tune import ExperimentAnalysis

from conftest import SYNTHETIC_CLASSES, run_cli, run_in_process, write_class_files
from experiment_checks import chosen_trial, results, strict_json, trial_dirs
from quickdraw.catalogue import DIVERGED
from quickdraw.experiment import SAVED_STATE_PREFIXES

pytestmark = pytest.mark.slow  # every test reads a search run with ASHA

# ASHA never stops the first trial to reach a rung. Tune starts the grid in order, batch sizes varying
# fastest, two trials at a time on two CPUs: lr 0.003 goes first so that its trials set the bar at each rung.
DIVERGING_LR = 1e10
LRS, BATCH_SIZES, EPOCHS = (0.003, 0.5, DIVERGING_LR), (16, 32), 6
GRACE_PERIOD, REDUCTION_FACTOR = 1, 2
RUNGS = {1, 2, 4}  # grace period x reduction factor^k epochs, below --epochs: where ASHA may stop a trial


@pytest.fixture(scope="module")
def asha_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("asha")
    data = write_class_files(root / "data")
    result = run_cli(
        "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "150,30,30",
        "--lrs", ",".join(f"{lr:g}" for lr in LRS), "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--epochs", EPOCHS, "--scheduler", "asha", "--grace-period", GRACE_PERIOD,
        "--reduction-factor", REDUCTION_FACTOR, "--storage", root / "results", "--name", "asha",
    )
    return result, root / "results" / "asha"


def test_asha_stops_hopeless_trials_and_the_best_runs_every_epoch(asha_run):
    result, experiment = asha_run
    assert result.returncode == 0, result.stderr[-3000:]  # stopped trials are no failure
    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == len(LRS) * len(BATCH_SIZES)
    assert set(table[table.lr != DIVERGING_LR].status) <= {"finished", "stopped"}  # lr 1e10's: see below

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
    stopped, finished = (table.status == "stopped").sum(), (table.status == "finished").sum()
    verb = "was" if stopped == 1 else "were"
    line = f"{stopped} of {len(table)} trials {verb} stopped early by ASHA."
    markdown = (experiment / "summary.md").read_text()
    assert stopped and line in markdown and line in result.stdout
    assert "did not finish" not in markdown
    for row in table[table.status == "stopped"].itertuples():
        assert f"stopped by ASHA ({row.epochs} epoch" in markdown

    page = (experiment / "report.html").read_text()
    assert f"{finished} of {len(table)} trials finished. {stopped} {verb} stopped early by ASHA." in page
    figures = {p.name for p in (experiment / "report").iterdir()}
    assert figures == {"test_accuracy_heatmap.png", "per_class_accuracy.png", "confusion_matrix.png",
                       "test_probabilities.png",
                       *(f"curves_lr={lr:g}.png" for lr in LRS if lr != DIVERGING_LR),  # lr 1e10 measured no loss
                       "hyperparameter_importance.png", "parallel_coordinates.png", "scatter_lr.png",
                       "scatter_batch_size.png"}

    # What mattered counts the stopped trials too, with the validation accuracy they reached (a diverged one reached
    # none).
    summary = json.loads((experiment / "summary.json").read_text())
    measured = len(table[table.status != "diverged"])
    assert f"on {measured} trials ({stopped} of them stopped by ASHA)" in summary["importance_method"]
    assert max(summary["hyperparameter_importance"], key=summary["hyperparameter_importance"].get) == "lr"


def test_report_rebuilds_the_same_summary(asha_run):
    _, experiment = asha_run
    before = (experiment / "summary.csv").read_text()
    rebuilt = run_in_process("report", experiment)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert "stopped early by ASHA" in rebuilt.stdout
    assert (experiment / "summary.csv").read_text() == before


# --- lr 1e10's trials, which diverged ---------------------------------------------------------------------------------

def diverged_trials(experiment) -> list:
    return [d for d in trial_dirs(experiment) if d.name.startswith(f"lr={DIVERGING_LR:g}_")]


def test_a_diverged_trial_ends_as_diverged_and_the_search_goes_on(asha_run):
    result, experiment = asha_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # an outcome, not a failure
    assert "Not every trial finished" not in result.stdout

    table = pd.read_csv(experiment / "summary.csv")
    diverged = table[table.lr == DIVERGING_LR]
    assert len(diverged) == len(BATCH_SIZES) and (diverged.status == "diverged").all(), table
    assert (diverged.epochs == 1).all() and not diverged.best.any(), table
    assert diverged[["best_val_loss", "best_val_accuracy", "test_accuracy"]].isna().all(axis=None)

    summary = strict_json((experiment / "summary.json").read_text())
    assert [row["status"] for row in summary["trials"]] == list(table.status)
    tested = {d.name for d in trial_dirs(experiment) if "test_accuracy" in results(d)[-1]}
    members = {m["trial_dir"] for m in summary["chosen_model"]["members"]}
    assert members and members <= tested, (members, tested)  # finished trials only, never a diverged one
    markdown = (experiment / "summary.md").read_text()
    assert "diverged at epoch 1" in markdown and "diverged at epoch 1" in result.stdout  # the printed table too
    assert f"{len(diverged)} of {len(table)} trials diverged" in markdown
    for number in (int(trial.name.rsplit("_", 1)[1]) for trial in diverged_trials(experiment)):
        status_rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {number} ")]
        assert status_rows and "DIVERGED" in status_rows[-1] and "33.33" not in status_rows[-1], status_rows
    assert f"{len(diverged)} DIVERGED, {len(table) - len(diverged)} TERMINATED" in result.stdout
    assert f"{len(diverged)} diverged (a loss became NaN or infinite)" in (experiment / "report.html").read_text()


def test_the_diverged_trial_ended_untested_and_every_json_file_is_strict(asha_run):
    _, experiment = asha_run
    state = strict_json(max(experiment.glob("experiment_state-*.json")).read_text())
    statuses = {json.loads(data)["relative_logdir"]: json.loads(data)["status"] for data, _ in state["trial_data"]}
    for trial in diverged_trials(experiment):
        (last,) = results(trial)
        assert last[DIVERGED] is True and "val_loss" not in last and "test_accuracy" not in last
        assert not any(trial.glob("checkpoint_*")) and not (trial / "predictions.npz").exists()
        assert statuses[trial.name] == "TERMINATED"  # ended as a finished trial ends: never retried as a failure
    for file in experiment.rglob("*.json"):
        if file.name == "result.json":  # a JSON object per line
            [strict_json(line) for line in file.read_text().splitlines()]
        elif not file.name.startswith(SAVED_STATE_PREFIXES):  # Tune's pickles, whatever their suffix
            strict_json(file.read_text())
