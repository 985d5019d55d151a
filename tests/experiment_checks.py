"""Assertions about a finished experiment folder, shared by the synthetic and real-drawing runs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from quickdraw.catalogue import HYPERPARAMETERS, METRICS, TEST_ACCURACY
from quickdraw.predictions import PREDICTIONS_FILE
from quickdraw.report_sections import evaluation_split
from quickdraw.storage import Location
from ray_cluster import kill_processes


def strict_json(text: str):
    """JSON as a strict parser reads it: a bare NaN, Infinity or -Infinity token is an error."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("lr="))


def results(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]


def check_experiment(experiment: Path, lrs, batch_sizes, epochs: int) -> pd.DataFrame:
    """Every trial ran all epochs, logged, checkpointed and tested; the summaries agree with it."""
    trials = trial_dirs(experiment)
    assert len(trials) == len(lrs) * len(batch_sizes)
    split, why = evaluation_split(Location.parse(str(experiment)))
    assert split is not None, why
    expected_rows = []
    for trial in trials:
        history = results(trial)
        last = history[-1]
        config = json.loads((trial / "params.json").read_text())
        assert trial.name.startswith(f"lr={config['lr']:g}_batch={config['batch_size']}_")
        assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
        assert 0 <= last["test_accuracy"] <= 1
        check_checkpoint(trial, epochs)
        check_checkpoint_epochs(history)
        check_tensorboard(trial, history)
        check_predictions(trial, history, split.y_validation)
        expected_rows.append((config["lr"], config["batch_size"], round(100 * last["test_accuracy"], 2)))

    table = pd.read_csv(experiment / "summary.csv")
    assert sorted(zip(table.lr, table.batch_size)) == sorted((lr, b) for lr in lrs for b in batch_sizes)
    assert (table.status == "finished").all()
    assert (table.epochs == epochs).all()
    assert sorted(zip(table.lr, table.batch_size, table.test_accuracy)) == sorted(expected_rows)
    assert table.equals(pd.DataFrame(json.loads((experiment / "summary.json").read_text())["trials"]))
    check_markdown((experiment / "summary.md").read_text(), table)
    return table


def check_checkpoint(trial: Path, epochs: int) -> None:
    checkpoints = sorted(trial.glob("checkpoint_*/trial_state.pt"))
    assert checkpoints, f"no checkpoint in {trial}"
    state = torch.load(checkpoints[-1], weights_only=True)
    assert state["progress"]["epoch"] == epochs
    assert state["model"] and state["optimizer"]["state"]


def check_checkpoint_epochs(history: list[dict]) -> None:
    """A checkpoint exactly at the epochs where validation loss improved, and at the last."""
    best = float("inf")
    for row in history:
        improved = row["val_loss"] < best
        best = min(best, row["val_loss"])
        expected = improved or row is history[-1]
        assert (row["checkpoint_dir_name"] is not None) == expected, (row["epoch"], row["val_loss"], row["checkpoint_dir_name"])


def check_tensorboard(trial: Path, history: list[dict]) -> None:
    """The trial's event file, read back with TensorBoard's own reader, holds every epoch's metrics."""
    events = EventAccumulator(str(trial))
    events.Reload()
    for metric in (m for m in METRICS if m.tag and m is not TEST_ACCURACY):
        logged = events.Scalars(metric.tag)
        assert [e.step for e in logged] == [r["epoch"] for r in history]
        assert [e.value for e in logged] == [float(torch.tensor(r[metric.key], dtype=torch.float32)) for r in history]
    assert events.Scalars("accuracy/test")[-1].value == float(torch.tensor(history[-1]["test_accuracy"]))
    assert events.Scalars("speed/images_per_second")[-1].value > 0
    for tag in ("test/confusion_matrix", "test/misclassified"):
        (image,) = events.Images(tag)
        assert image.width > 100 and image.height > 100


def check_predictions(trial: Path, history: list[dict], validation_labels: np.ndarray) -> None:
    """The tested weights' validation and test probabilities are beside the event file; their validation accuracy is
    the best validation result the trial reported, as they are the weights that reached it."""
    with np.load(trial / PREDICTIONS_FILE) as predictions:
        assert sorted(predictions.files) == ["test", "validation"]  # the seed CNN trains on no mirror images
        for part in predictions.files:
            assert np.allclose(predictions[part].sum(1), 1, atol=1e-4)
        accuracy = np.mean(predictions["validation"].argmax(1) == validation_labels)
    assert accuracy == pytest.approx(history[-1]["best_val_accuracy"], abs=1e-6)


def chosen_trial(table: pd.DataFrame) -> pd.Series:
    """The one trial summary.csv marks best, after checking that validation chose it: no finished trial has a
    higher validation accuracy, or the same and a lower validation loss."""
    (best,) = table[table.best].itertuples()
    finished = table[table.status == "finished"]
    assert best.status == "finished"
    assert not ((finished.best_val_accuracy > best.best_val_accuracy)
                | ((finished.best_val_accuracy == best.best_val_accuracy)
                   & (finished.best_val_loss < best.best_val_loss))).any(), table
    return table.loc[best.Index]


def ranked_rows(markdown: str) -> list[dict[str, str]]:
    """summary.md's table of every trial, a dict per row (header -> cell, bold marks kept)."""
    lines = markdown.split("## Every trial, ranked by validation accuracy\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(header, row)) for row in rows]


def check_ranking(table: pd.DataFrame) -> None:
    """summary.csv's rows in rank order: validation accuracy high to low, ties to the lower validation loss."""
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    scored = table.dropna(subset=["best_val_accuracy"])
    assert list(scored.index) == list(range(len(scored)))  # trials without a validation result come last
    for upper, lower in zip(scored.itertuples(), scored.iloc[1:].itertuples()):
        assert (upper.best_val_accuracy, -upper.best_val_loss) >= (lower.best_val_accuracy, -lower.best_val_loss), table


def check_markdown(markdown: str, table: pd.DataFrame) -> None:
    """One table of every trial in summary.csv's rank order, the best trial's row (and only it) in bold."""
    check_ranking(table)
    rows = ranked_rows(markdown)
    assert [row["Rank"].strip("*") for row in rows] == [str(rank) for rank in table["rank"]]
    assert [row["Validation accuracy"].strip("*") for row in rows] == [f"{v:.2f}%" for v in table.best_val_accuracy]
    for column, name in (("Learning rate", "lr"), ("Batch size", "batch_size")):
        if table[name].nunique() > 1:  # a grid shows what it varied
            assert [row[column].strip("*") for row in rows] == [f"{value:.4g}" for value in table[name]]
    best = chosen_trial(table)
    (bold,) = [n for n, row in enumerate(rows) if row["Rank"].startswith("**")]
    assert bold == best.name and all(cell.startswith("**") for cell in rows[bold].values())
    assert rows[bold]["Test accuracy"] == f"**{best.test_accuracy:.2f}%**"
    assert f"Best: **{best.model}, lr {best.lr:g}, batch size {best.batch_size}: validation accuracy " \
           f"{best.best_val_accuracy:.2f}%, test accuracy {best.test_accuracy:.2f}%**." in markdown
    same = [f"{h.phrase} {table[h.name][0]:g}" if h.name != "model" else f"model {table.model[0]}"
            for h in HYPERPARAMETERS if table[h.name].nunique() == 1]  # a grid's single values
    assert f"Same for every trial: {', '.join(same)}." in markdown
    assert "chosen on validation accuracy; test accuracy shown for every trial, never used to choose" in markdown


def reported(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's reported results so far by folder name, skipping a line still being written."""
    found = {}
    for trial in experiment.glob("lr=*"):
        try:
            found[trial.name] = results(trial) if (trial / "result.json").exists() else []
        except ValueError:
            found[trial.name] = []
    return found


def kill_driver_when(driver, experiment: Path, ray_tmp: str, moment, timeout: float, poll: float) -> dict:
    """SIGKILL a running search's driver once `moment(reported(experiment))` holds, then end the Ray processes it
    leaves behind (those under `ray_tmp`); return what the trials had reported when it was killed."""
    try:
        deadline = time.monotonic() + timeout
        while not moment(progress := reported(experiment)):
            assert time.monotonic() < deadline and driver.poll() is None, f"no moment to kill at: {progress}"
            time.sleep(poll)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
        kill_processes(ray_tmp)
    return progress


def finished_trials(progress: dict[str, list[dict]]) -> list[str]:
    return [trial for trial, rows in progress.items() if rows and "test_accuracy" in rows[-1]]
