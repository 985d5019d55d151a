"""The best trial is chosen on validation data, never on test data, everywhere a single trial is chosen: summary.md,
summary.csv and .json, every `report --format`, the report page and its best-trial figures, best_model/ and
`predict`. A real grid, in which the trial with the lowest test accuracy is then given the best validation results,
so that choosing on test data would pick another trial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import GRID, copy_experiment, run_in_process
from experiment_checks import chosen_trial, ranked_rows, results
from quickdraw.catalogue import HYPERPARAMETERS
from quickdraw.experiment import load_trials
from quickdraw.predictions import PREDICTIONS_FILE
from quickdraw.report_sections import evaluation_split, grid_cell
from quickdraw.storage import Location
from quickdraw.summary import best_per_model, best_trial, tie_sentence, trial_row, trial_table

# lr 3e-5 stays near chance; lr 0.01 learns: their test accuracies differ.
LRS, BATCH_SIZES = GRID.lrs, GRID.batch_sizes


@pytest.fixture(scope="module")
def experiment(grid_experiment, tmp_path_factory) -> tuple[Path, pd.Series, pd.Series]:
    """(experiment folder, the trial given the best validation results, the trial with the best test accuracy): a
    copy of the session's finished grid, changed."""
    experiment = copy_experiment(grid_experiment, tmp_path_factory.mktemp("best"))
    table = pd.read_csv(experiment / "summary.csv")
    test_winner, validation_winner = table.loc[table.test_accuracy.idxmax()], table.loc[table.test_accuracy.idxmin()]
    assert validation_winner.test_accuracy < test_winner.test_accuracy, table
    give_best_validation_results(experiment, trial_folder(experiment, validation_winner))
    report = run_in_process("report", experiment)
    assert report.returncode == 0, report.stderr[-3000:]
    return experiment, validation_winner, test_winner


def trial_folder(experiment: Path, row: pd.Series) -> Path:
    (folder,) = experiment.glob(f"lr={row.lr:g}_batch={row.batch_size}_[0-9]*")  # one model: not in the name
    return folder


def give_best_validation_results(experiment: Path, trial: Path) -> None:
    """The trial's last reported result and its validation probabilities, as if its validation had gone better than
    every other trial's: right on every drawing, and sure of it (no other trial can add to it in an ensemble)."""
    history = results(trial)
    history[-1].update(best_val_accuracy=1.0, best_val_loss=0.001)
    (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in history))
    labels = evaluation_split(Location.parse(str(experiment)))[0].y_validation
    with np.load(trial / PREDICTIONS_FILE) as predictions:
        arrays = dict(predictions)
    arrays["validation"] = np.eye(arrays["validation"].shape[1], dtype=np.float32)[labels]
    np.savez_compressed(trial / PREDICTIONS_FILE, **arrays)


def same_trial(row, other) -> bool:
    return (row.model, row.lr, row.batch_size) == (other.model, other.lr, other.batch_size)


@pytest.mark.slow
def test_the_summary_files_mark_the_validation_winner(experiment):
    folder, chosen, test_winner = experiment
    table = pd.read_csv(folder / "summary.csv")
    best = chosen_trial(table)
    assert same_trial(best, chosen) and best.best_val_accuracy == 100.0
    assert not same_trial(best, test_winner) and best.test_accuracy < table.test_accuracy.max()
    assert table.equals(pd.DataFrame(json.loads((folder / "summary.json").read_text())["trials"]))

    markdown = (folder / "summary.md").read_text()
    assert f"Best: **seed, lr {chosen.lr:g}, batch size {chosen.batch_size}: validation accuracy 100.00%, " \
           f"test accuracy {chosen.test_accuracy:.2f}%**." in markdown
    bold_rows = [line for line in markdown.splitlines() if line.startswith("|") and "**" in line]
    assert len(bold_rows) == 1 and f"**{chosen.batch_size}**" in bold_rows[0]
    assert f"**{chosen.test_accuracy:.2f}%**" in bold_rows[0]
    first, *others = ranked_rows(markdown)  # ranked by validation: the chosen trial first, in bold
    assert first == {"Rank": "**1**", "Learning rate": f"**{chosen.lr:g}**", "Batch size": f"**{chosen.batch_size}**",
                     "Validation accuracy": "**100.00%**", "Test accuracy": f"**{chosen.test_accuracy:.2f}%**"}
    assert f"{test_winner.test_accuracy:.2f}%" in [row["Test accuracy"] for row in others]
    assert "The best trial is chosen on validation accuracy; test accuracy shown for every trial, never used to " \
           "choose (ties go to the lower validation loss, then to the trial that started first)." in markdown


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["md", "csv", "json", "html", "latex"])
def test_every_export_format_marks_the_validation_winner(experiment, fmt):
    folder, chosen, _ = experiment
    result = run_in_process("report", folder, "--format", fmt)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    if fmt == "md":
        assert f"Best: **seed, lr {chosen.lr:g}, batch size {chosen.batch_size}:" in text
    elif fmt == "json":
        (best,) = [row for row in json.loads(text)["trials"] if row["best"]]
        assert same_trial(pd.Series(best), chosen)
    else:
        lines = text.split("<tr>") if fmt == "html" else text.splitlines()
        rows = [line for line in lines if "True" in line]
        assert len(rows) == 1, text
        assert f"{chosen.lr:g}" in rows[0] and f"{chosen.batch_size}" in rows[0]


@pytest.mark.slow
def test_the_report_page_and_its_figures_show_the_validation_winner(experiment):
    folder, chosen, test_winner = experiment
    page = (folder / "report.html").read_text()
    assert f"Best: seed, lr {chosen.lr:g}, batch size {chosen.batch_size}: validation accuracy 100.00%" in page
    trials, _ = load_trials(Location.parse(str(folder)))
    index = best_trial(trials)
    assert same_trial(trials.loc[index], chosen) and trials.best.sum() == 1 and trials.loc[index].best
    split, _ = evaluation_split(Location.parse(str(folder)))
    with np.load(folder / trials.loc[index].trial_dir / PREDICTIONS_FILE) as predictions:
        test = predictions["test"]
    assert 100 * np.mean(test.argmax(1) == split.y_test) == pytest.approx(chosen.test_accuracy, abs=0.01)
    # The heatmap's rows go by learning rate, high to low, whatever the table's (ranked) order.
    assert grid_cell(trials, index) == (LRS.index(chosen.lr), sorted(BATCH_SIZES).index(chosen.batch_size))


@pytest.mark.slow
def test_best_model_and_predict_use_the_validation_winner(experiment, tmp_path):
    folder, chosen, test_winner = experiment
    config = json.loads((folder / "best_model" / "config.json").read_text())
    (member,) = config["members"]  # right and sure on every validation drawing: no other trial adds to it
    assert (member["model"], member["lr"], member["batch_size"]) == (chosen.model, chosen.lr, chosen.batch_size)
    assert member["weight"] == 1 and not member["mirrored"]
    assert member["best_val_accuracy"] == 1.0 and round(100 * member["test_accuracy"], 2) == chosen.test_accuracy
    assert config["validation_accuracy"] == 1.0 and config["test_accuracy"] == pytest.approx(member["test_accuracy"])

    split, _ = evaluation_split(Location.parse(str(folder)))
    np.save(tmp_path / "test.npy", split.x_test)
    result = run_in_process("predict", folder, tmp_path / "test.npy", "--top", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = [line.split(": ", 1)[1].rsplit(" ", 1)[0] for line in result.stdout.splitlines()]
    accuracy = 100 * np.mean(np.array(predicted) == np.array(split.classes)[split.y_test])
    assert accuracy == pytest.approx(chosen.test_accuracy, abs=0.01)  # the chosen trial's weights, tested
    assert accuracy != pytest.approx(test_winner.test_accuracy, abs=0.01)


def trials_table(*rows) -> pd.DataFrame:
    """Rows (trial id, status, validation accuracy and loss, test accuracy); the trial number is the id's, as the
    search made them (an Optuna search's ids are random: the number decides)."""
    columns = ["trial_id", "status", "best_val_accuracy", "best_val_loss", "test_accuracy"]
    return pd.DataFrame([{**dict(zip(columns, row)), "trial_number": int(row[0][-5:])} for row in rows])


def test_ties_go_to_the_lower_validation_loss_then_to_the_earlier_trial():
    table = trials_table(
        ("a_00003", "finished", 90.0, 0.30, 99.0),  # the best test accuracy: never what decides
        ("a_00002", "finished", 95.0, 0.20, 80.0),
        ("a_00001", "finished", 95.0, 0.20, 81.0),  # tied with 00002 on both: the earlier trial wins
        ("a_00000", "finished", 95.0, 0.25, 82.0),
        ("a_00004", "stopped", 99.0, 0.10, np.nan),  # stopped by ASHA, untested: not a candidate
        ("a_00005", "unfinished", 99.5, 0.05, np.nan),
    )
    assert table.loc[best_trial(table)].trial_id == "a_00001"
    assert table.loc[best_trial(table.drop(index=2))].trial_id == "a_00002"
    assert table.loc[best_trial(table.drop(index=[1, 2]))].trial_id == "a_00000"
    assert best_trial(table[table.status != "finished"]) is None
    # An Optuna search's trial ids are random: the trial number (the order they were created in) breaks the tie.
    optuna_like = pd.DataFrame([
        {"trial_id": "0b1c2d3e", "trial_number": 2, "status": "finished", "best_val_accuracy": 95.0,
         "best_val_loss": 0.2, "test_accuracy": 90.0},
        {"trial_id": "f9e8d7c6", "trial_number": 1, "status": "finished", "best_val_accuracy": 95.0,
         "best_val_loss": 0.2, "test_accuracy": 80.0},
    ])
    assert optuna_like.loc[best_trial(optuna_like)].trial_id == "f9e8d7c6"


def test_a_tie_for_the_best_says_how_it_was_broken():
    table = trials_table(
        ("a_00000", "finished", 95.0, 0.25, 82.0),
        ("a_00001", "finished", 95.0, 0.20, 81.0),
        ("a_00002", "finished", 90.0, 0.10, 99.0),
        ("a_00003", "stopped", 95.0, 0.15, np.nan),  # untested: not a candidate, so not a tie either
    ).assign(rank=[2, 1, 3, 4])
    assert tie_sentence(table) == ("#1 tied with #2 on validation accuracy (95.00%) and was chosen for its lower "
                                   "validation loss (0.2000, against 0.2500)")
    equal_losses = table.assign(best_val_loss=[0.2, 0.2, 0.1, 0.15])
    assert tie_sentence(equal_losses).endswith("chosen for its lower validation loss or, where the losses are equal "
                                               "too, for starting first")
    assert tie_sentence(table.drop(index=0)) == ""  # no tie: no sentence
    assert tie_sentence(table[table.status != "finished"]) == ""  # no best trial


def test_the_best_of_each_model_is_chosen_on_validation_too():
    rows = [  # model, lr, batch size, validation accuracy, validation loss, test accuracy
        ("seed", 0.01, 32, 90.0, 0.3, 95.0), ("seed", 0.001, 64, 92.0, 0.2, 91.0),
        ("vgg-bn", 0.01, 32, 97.0, 0.1, 96.0), ("vgg-bn", 0.001, 64, 96.0, 0.1, 99.0),
    ]
    table = pd.DataFrame([{"trial_id": f"a_{n:05d}", "trial_number": n, "status": "finished", "model": m, "lr": lr, "batch_size": b,
                           "best_val_accuracy": v, "best_val_loss": loss, "test_accuracy": t}
                          for n, (m, lr, b, v, loss, t) in enumerate(rows)])
    assert best_per_model(table) == ["seed lr 0.001, batch size 64 (validation 92.00%, test 91.00%)",
                                     "vgg-bn lr 0.01, batch size 32 (validation 97.00%, test 96.00%)"]
    assert table.loc[best_trial(table)].test_accuracy == 96.0  # not the 99% trial


def test_the_table_ranks_every_trial_by_validation_accuracy():
    """Highest validation accuracy first, ties to the lower validation loss, then to the earlier trial; trials
    without a validation result last. The best trial is the first that finished, not merely the first row."""
    config = {h.name: h.default[0] for h in HYPERPARAMETERS} | {"batch_size": 32}
    results = [  # trial id, lr, Tune's status, last result
        ("a_00000", 0.1, "TERMINATED", {"epoch": 2, "best_val_accuracy": 0.90, "best_val_loss": 0.3}),  # ASHA
        ("a_00001", 0.01, "TERMINATED", {"epoch": 4, "best_val_accuracy": 0.80, "best_val_loss": 0.4,
                                         "test_accuracy": 0.99}),
        ("a_00002", 0.001, "RUNNING", {}),
        ("a_00003", 0.002, "TERMINATED", {"epoch": 4, "best_val_accuracy": 0.85, "best_val_loss": 0.2,
                                          "test_accuracy": 0.5}),
        ("a_00004", 0.003, "TERMINATED", {"epoch": 4, "best_val_accuracy": 0.85, "best_val_loss": 0.2,
                                          "test_accuracy": 0.6}),
        ("a_00005", 0.004, "TERMINATED", {"epoch": 4, "best_val_accuracy": 0.85, "best_val_loss": 0.1,
                                          "test_accuracy": 0.7}),
    ]
    table = trial_table([{**trial_row({**config, "lr": lr}, last, status), "trial_id": trial_id,
                          "trial_number": int(trial_id[-5:]), "trial_dir": trial_id} for trial_id, lr, status, last in results])
    assert list(table.trial_id) == ["a_00000", "a_00005", "a_00003", "a_00004", "a_00001", "a_00002"]
    assert list(table["rank"]) == [1, 2, 3, 4, 5, 6]
    assert list(table.status) == ["stopped", "finished", "finished", "finished", "finished", "unfinished"]
    assert list(table.best) == [False, True, False, False, False, False]  # rank 1 was stopped by ASHA, untested
    assert (table.weight_decay == 0.0).all() and (table.dropout == 0.5).all()
