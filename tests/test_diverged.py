"""Trials whose loss becomes NaN or infinite end as diverged (issue 28, item 12): the training core says so
(quickdraw.training), the trial reports it and ends untested, and every reader shows it as such, never as a finished
trial nor as the best model. The real grid in which lr 1e10 turns the seed CNN's loss to NaN in its first epoch is
tests/test_asha.py's, under ASHA, which a diverged trial's result without a validation loss must pass by."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import copy_experiment, run_in_process, synthetic_tensors
from experiment_checks import chosen_trial, ranked_rows, results, strict_json, trial_dirs
from quickdraw.catalogue import DIVERGED
from quickdraw.compute import choose
from quickdraw.experiment import load_trials
from quickdraw.model import MODELS
from quickdraw.storage import Location
from quickdraw.summary import Importance, Summary, to_json, to_markdown, trial_row, trial_table
from quickdraw.training import Hyperparameters, Trainer

DIVERGING_LR, SANE_LR = 1e10, 0.003  # 1e10: NaN in the first epoch, every time; 0.003 learns the synthetic classes
LOSSES_AND_ACCURACIES = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}


# --- the training core ------------------------------------------------------------------------------------------------

def trainer(lr: float) -> tuple[Trainer, dict]:
    torch.manual_seed(0)
    data = {"train": synthetic_tensors(16, seed=0), "validation": synthetic_tensors(4, seed=1)}
    hyperparameters = Hyperparameters(lr=lr, batch_size=16, dropout=0.5, epochs=3)
    return Trainer(MODELS["seed"], 3, hyperparameters, 48, choose(torch.device("cpu"), "fp32", False)), data


def test_an_epoch_whose_loss_is_nan_is_flagged_diverged_and_reports_nothing_it_measured():
    model, data = trainer(DIVERGING_LR)
    metrics, improved = model.run_epoch(data)
    assert metrics[DIVERGED] is True and metrics["epoch"] == 1 and not improved
    # Neither the broken network's losses and accuracies (33.33% from NaN logits) nor a best no epoch measured.
    assert not (LOSSES_AND_ACCURACIES | {"best_val_loss", "best_val_accuracy"}) & set(metrics), metrics
    assert all(math.isfinite(value) for value in metrics.values())


def test_an_epoch_that_diverges_after_an_improvement_keeps_the_best_so_far():
    model, data = trainer(SANE_LR)
    first, improved = model.run_epoch(data)
    assert DIVERGED not in first and improved and math.isfinite(first["val_loss"])
    model.training.optimizer.param_groups[0]["lr"] = DIVERGING_LR
    second, improved = model.run_epoch(data)
    assert second[DIVERGED] is True and second["epoch"] == 2 and not improved
    best = ("best_val_loss", "best_val_accuracy")
    assert [second[key] for key in best] == [first[key] for key in best]
    assert not LOSSES_AND_ACCURACIES & set(second)


def test_optuna_records_a_trial_that_diverged_before_any_validation_result_as_pruned():
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from quickdraw.tuner import optuna_search

    storage = optuna.storages.InMemoryStorage()
    searcher = optuna_search(OptunaSearch)({"lr": tune.loguniform(1e-4, 1e10)}, metric="best_val_accuracy",
                                           mode="max", study_name="diverged", storage=storage)
    searcher.suggest("t0")
    result = {"epoch": 1, DIVERGED: True, "training_iteration": 1}  # a diverged first epoch: no objective
    searcher.on_trial_result("t0", result)  # Ray's OptunaSearch: KeyError 'best_val_accuracy'
    searcher.on_trial_complete("t0", result)
    (trial,) = optuna.load_study(study_name="diverged", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.PRUNED


# --- reading a diverged trial -----------------------------------------------------------------------------------------

CONFIG = {"model": "seed", "batch_size": 16, "dropout": 0.5, "weight_decay": 0.0, "label_smoothing": 0.0,
          "ema_decay": 0.0, "epochs": 5}


def finished_result(accuracy: float) -> dict:
    return {"epoch": 5, "best_val_loss": 0.3, "best_val_accuracy": accuracy, "test_accuracy": 0.9, "train_seconds": 9.0}


def test_the_summary_shows_a_diverged_trial_as_diverged_ranked_by_what_it_reached_and_never_best():
    # Diverged at epoch 3 after reaching 95% validation accuracy, above the finished trial's 90%.
    diverged = {"epoch": 3, DIVERGED: True, "best_val_loss": 0.2, "best_val_accuracy": 0.95, "train_seconds": 5.0}
    rows = [{**trial_row({**CONFIG, "lr": lr}, result, "TERMINATED"), "trial_id": f"t{n}", "trial_number": n,
             "trial_dir": f"lr={lr}_{n:05d}"}
            for n, (lr, result) in enumerate([(0.001, finished_result(0.90)), (DIVERGING_LR, diverged)])]
    table = trial_table(rows)
    assert list(table.status) == ["diverged", "finished"] and list(table.best) == [False, True]
    summary = Summary(table, (), "grid", Importance(reason="planted"))
    markdown = to_markdown(summary)
    assert "1 of 2 trials diverged (a loss became NaN or infinite) and was ended there, untested." in markdown
    assert "Best: **seed, lr 0.001, batch size 16: validation accuracy 90.00%" in markdown
    first, second = ranked_rows(markdown)
    assert (first["Validation accuracy"], first["Test accuracy"]) == ("95.00%", "diverged at epoch 3")
    assert second["Rank"] == "**2**"
    trials = strict_json(to_json(summary))["trials"]
    assert (trials[0]["status"], trials[0]["test_accuracy"], trials[0]["best"]) == ("diverged", None, False)


def test_an_older_searchs_nan_and_infinity_read_as_no_value():
    # What a diverged trial reported before it was detected: NaN losses, and no best loss (infinity).
    result = {"epoch": 2, "best_val_loss": math.inf, "best_val_accuracy": 0.0, "test_accuracy": 0.3333,
              "train_seconds": math.nan}
    row = trial_row({**CONFIG, "lr": DIVERGING_LR}, result, "TERMINATED")
    assert math.isnan(row["best_val_loss"]) and math.isnan(row["train_seconds"])
    assert row["status"] == "finished"  # tested: nothing in its results says it diverged


def test_a_planted_diverged_result_reads_as_diverged_from_the_trial_folders_alone(tmp_path, capsys):
    trial = tmp_path / "lr=1e+10_batch=16_00000"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({**CONFIG, "lr": DIVERGING_LR}))
    (trial / "result.json").write_text(json.dumps({"epoch": 1, DIVERGED: True, "train_seconds": 0.2,
                                                   "training_iteration": 1}) + "\n")
    table, histories = load_trials(Location.parse(str(tmp_path)))  # no Tune state: Tune's status is unknown
    assert "read from their own folders" in capsys.readouterr().err
    (row,) = table.itertuples()
    assert (row.status, row.epochs, row.best) == ("diverged", 1, False) and math.isnan(row.best_val_accuracy)


# --- a finished grid with a planted divergence ------------------------------------------------------------------------

@pytest.mark.slow
def test_a_diverged_trial_with_the_best_validation_accuracy_is_never_chosen(grid_experiment, tmp_path):
    """A finished grid in which one trial's last result is made a divergence at its last epoch, after reaching the
    best validation accuracy of all; its predictions stay, so only its status keeps it out of best_model/."""
    experiment = copy_experiment(grid_experiment, tmp_path)
    trial = trial_dirs(experiment)[0]
    history = results(trial)
    epoch = history[-1]["epoch"]
    history[-1] = {"epoch": epoch, DIVERGED: True, "best_val_loss": 0.001, "best_val_accuracy": 1.0,
                   "train_seconds": history[-1]["train_seconds"], "training_iteration": epoch}
    (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in history))
    report = run_in_process("report", experiment)
    assert report.returncode == 0, report.stderr[-3000:]

    table = pd.read_csv(experiment / "summary.csv")
    first = table.iloc[0]
    assert (first.status, first.best_val_accuracy, first.epochs, first.best) == ("diverged", 100.0, epoch, False)
    assert chosen_trial(table).status == "finished"
    members = json.loads((experiment / "best_model" / "config.json").read_text())["members"]
    assert trial.name not in [member["trial"] for member in members]
    assert f"diverged at epoch {epoch}" in (experiment / "summary.md").read_text()
    assert trial.name not in (experiment / "summary.json").read_text().split('"chosen_model"')[1]
