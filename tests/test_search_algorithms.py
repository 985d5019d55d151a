"""Random and Optuna searches run as users run them: sampled trials within the space, integers kept integers, at most
--max-concurrent-trials at once, ASHA on top, TensorBoard's HParams domains, and `resume` after a SIGKILLed driver
going on with the sampler's saved state instead of starting it again: finished trials left as they were, the running
one going on from its checkpoint, and `resume` refused while the driver still runs.

A search costs seconds of Ray and Tune however small it is, so each one here serves several tests: the random search
whose trials the tests read is the one that was killed and resumed, and the Optuna search under ASHA is the one stored
in S3 and resumed from the bucket."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import (
    BUCKET, SYNTHETIC_CLASSES, copy_from_bucket, run_cli, run_in_process, s3_client, s3_keys, start_cli,
    synthetic_drawings, write_class_files,
)
from experiment_checks import finished_trials, kill_driver_when, results
from quickdraw.experiment import load_trials
from quickdraw.storage import Location

pytestmark = pytest.mark.slow  # real random and Optuna searches

# Batch sizes of 64 to 256 make an epoch of the killed searches' 2,000 drawings about a third of a second here.
SPACE = """\
lr: {loguniform: [1.0e-4, 1.0e-1]}
batch_size: {lograndint: [64, 256]}
dropout: {uniform: [0.1, 0.6]}
weight_decay: {loguniform: [1.0e-6, 1.0e-2]}
label_smoothing: {uniform: [0.0, 0.2]}
"""
SAMPLES, EPOCHS = 3, 3  # of the killed searches


def trial_folders(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("lr="))


def configs(experiment: Path) -> list[dict]:
    return [json.loads((trial / "params.json").read_text()) for trial in trial_folders(experiment)]


# --- a random and an Optuna search, each SIGKILLed mid-search and resumed ---------------------------------------------

def killed_and_resumed(root: Path, algorithm: str) -> SimpleNamespace:
    """A search of SAMPLES trials from SPACE, one at a time, SIGKILLed once a trial has finished and the next has run
    two epochs, so before the last is drawn; then `resume`d. Only a sampler that goes on from its saved state draws the
    last trial's settings anew. 2,000 drawings make each epoch long enough for the kill to land in a running trial.
    While the driver runs, `resume` is tried once (it must be refused); after the kill, a finished trial's folder gets
    a staged file as a kill during Tune's sync leaves one (`resume` must sweep it)."""
    data = write_class_files(root / "data", count=1_500)
    experiment = root / "results" / algorithm
    (root / "space.yaml").write_text(SPACE)
    # Its own Ray temp dir, so that Ray processes the killed driver leaves behind can be found and ended.
    ray_tmp = tempfile.mkdtemp(prefix="qdsam-", dir="/tmp")
    driver = start_cli(
        "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "2000,200,100",
        "--search", algorithm, "--space", root / "space.yaml", "--num-samples", SAMPLES, "--max-concurrent-trials", 1,
        "--epochs", EPOCHS, "--storage", experiment.parent, "--name", experiment.name,
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
    )
    refused = []

    def moment(progress):  # a trial finished, another one has run two epochs of three
        if progress and not refused:
            refused.append(run_in_process("resume", experiment))
            return False  # the progress read before it is seconds old now
        running = [t for t, rows in progress.items() if len(rows) >= 2 and "test_accuracy" not in rows[-1]]
        return finished_trials(progress) and running

    killed_at = kill_driver_when(driver, experiment, ray_tmp, moment, timeout=240, poll=0.1)
    finished = {t: (experiment / t / "result.json").read_bytes() for t in finished_trials(killed_at)}
    staged = experiment / next(iter(finished)) / ".result.json.tmp-0badc0de"
    staged.write_bytes(b'{"epoch": 1')
    resumed = run_cli("resume", experiment, timeout=300)  # at once: the killed driver's claim is stale
    return SimpleNamespace(experiment=experiment, driver=driver, refused=refused, killed_at=killed_at,
                           finished=finished, staged=staged, resumed=resumed)


@pytest.fixture(scope="module")
def killed_random(tmp_path_factory) -> SimpleNamespace:
    return killed_and_resumed(tmp_path_factory.mktemp("random"), "random")


@pytest.fixture(scope="module")
def killed_optuna(tmp_path_factory) -> SimpleNamespace:
    return killed_and_resumed(tmp_path_factory.mktemp("optuna"), "optuna")


@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_a_killed_sampling_search_resumes_with_its_sampler_s_state(algorithm, request):
    search = request.getfixturevalue(f"killed_{algorithm}")
    experiment = search.experiment
    assert search.resumed.returncode == 0, search.resumed.stderr[-4000:]
    assert len(search.killed_at) == SAMPLES - 1, search.killed_at  # the last trial was drawn after the resume

    for trial, result_bytes in search.finished.items():
        assert (experiment / trial / "result.json").read_bytes() == result_bytes, f"{trial} ran again"
    trials = configs(experiment)
    assert len(trials) == SAMPLES, [t.name for t in trial_folders(experiment)]
    # A sampler started again from its seed would draw the first trial's settings once more.
    drawn = {(c["lr"], c["dropout"]) for c in trials}
    assert len(drawn) == SAMPLES
    assert all(1e-4 <= lr <= 1e-1 and 0.1 <= dropout <= 0.6 for lr, dropout in drawn)
    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == SAMPLES and (table.status == "finished").all() and (table.epochs == EPOCHS).all()
    assert not any(math.isnan(v) for v in table.test_accuracy)


@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_the_killed_searchs_running_trial_goes_on_from_its_checkpoint_in_a_new_process(algorithm, request):
    search = request.getfixturevalue(f"killed_{algorithm}")
    (cut,) = [t for t, rows in search.killed_at.items() if t not in search.finished]
    earlier, history = search.killed_at[cut], results(search.experiment / cut)
    later = history[len(earlier):]
    assert [row["epoch"] for row in history][-1] == EPOCHS and "test_accuracy" in history[-1], history
    # From its last checkpoint (one an epoch that improved validation), not from epoch 1.
    assert 1 < later[0]["epoch"] <= earlier[-1]["epoch"] + 1, history
    assert {row["pid"] for row in later}.isdisjoint({row["pid"] for row in earlier})


@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_resume_is_refused_while_the_driver_runs_and_sweeps_what_the_kill_left_staged(algorithm, request):
    search = request.getfixturevalue(f"killed_{algorithm}")
    (live,) = search.refused  # it would undo the driver's work
    assert live.returncode == 2 and live.stderr.startswith(
        f"tune_search.py: error: {search.experiment} is being run by another driver, pid {search.driver.pid} on "), \
        live.stderr
    assert len(live.stderr.splitlines()) == 1
    assert not search.staged.exists()


# --- the random search's trials ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_search(killed_random) -> Path:
    """The killed random search, resumed: what it leaves must be as whole as what a search that ran straight through
    leaves."""
    assert killed_random.resumed.returncode == 0, killed_random.resumed.stderr[-3000:]
    return killed_random.experiment


def test_random_samples_every_trial_within_the_space_and_keeps_batch_size_an_integer(random_search):
    trials = configs(random_search)
    assert len(trials) == SAMPLES
    for config in trials:
        assert 1e-4 <= config["lr"] <= 1e-1 and 0.1 <= config["dropout"] <= 0.6
        assert 1e-6 <= config["weight_decay"] <= 1e-2 and config["model"] == "seed"
        assert 0 <= config["label_smoothing"] <= 0.2
        assert type(config["batch_size"]) is int and 64 <= config["batch_size"] <= 256
    assert len({config["lr"] for config in trials}) == SAMPLES  # sampled, not one value repeated
    for folder in trial_folders(random_search):
        assert "batch=" in folder.name and "." not in folder.name.split("batch=")[1].split("_")[0]
        assert "_dropout=" in folder.name and "_wd=" in folder.name and "_ls=" in folder.name
    table = pd.read_csv(random_search / "summary.csv")
    assert table.batch_size.dtype.kind == "i"
    assert sorted(table.batch_size) == sorted(config["batch_size"] for config in trials)
    record = json.loads((random_search / "search.json").read_text())
    assert record["config"]["space"]["lr"] == {"loguniform": [1e-4, 0.1]} and record["config"]["search"] == "random"


def test_best_model_and_predict_of_a_sampled_search(random_search, tmp_path):
    members = json.loads((random_search / "best_model" / "config.json").read_text())["members"]
    names = ("lr", "batch_size", "dropout", "weight_decay", "label_smoothing", "ema_decay")
    for member in members:  # each with its own trial's sampled hyperparameters
        params = json.loads((random_search / member["trial"] / "params.json").read_text())
        assert {key: member[key] for key in names} == {key: params[key] for key in names}
    np.save(tmp_path / "drawings.npy", synthetic_drawings(1, 3))
    result = run_in_process("predict", random_search, tmp_path / "drawings.npy")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(name in line for line in lines for name in SYNTHETIC_CLASSES), lines


def hparams_declared(trial: Path) -> dict:
    """The HParams experiment a trial's event file declares, read with TensorBoard's own reader."""
    events = EventAccumulator(str(trial), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {"infos": {info.name: info for info in experiment.hparam_infos}, "values": start.hparams}


def test_tensorboard_declares_each_searched_hyperparameter_with_its_domain(random_search):
    for trial, config in zip(trial_folders(random_search), configs(random_search)):
        declared = hparams_declared(trial)
        infos = declared["infos"]
        # model is fixed: no axis of one value
        assert set(infos) == {"lr", "batch_size", "dropout", "weight_decay", "label_smoothing"}
        assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (1e-4, 1e-1)
        batch_size = infos["batch_size"].domain_interval
        assert (batch_size.min_value, batch_size.max_value) == (64, 256)
        assert "loguniform" in infos["lr"].description and "lograndint" in infos["batch_size"].description
        assert declared["values"]["batch_size"].number_value == config["batch_size"]
        assert declared["values"]["lr"].number_value == pytest.approx(config["lr"])


# --- an Optuna search under ASHA, stored in S3 ------------------------------------------------------------------------

OPTUNA_SAMPLES = 4  # --seed 0's first (lr 0.0016) learns in an epoch: ASHA stopped 2 or 3 of the others here
STORAGE, NAME = f"s3://{BUCKET}/sampled", "optuna"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_files(tmp_path_factory.mktemp("algorithms") / "data")


@pytest.fixture(scope="module")
def optuna_search(s3_env, data) -> Path:
    """Optuna's TPE under ASHA, at most two trials at once, stored on an S3-compatible server
    (tests/test_s3_storage.py's); returned as a local copy of the experiment, taken before anything resumed it."""
    (data.parent / "optuna.yaml").write_text("lr: {loguniform: [1.0e-5, 1.0e-1]}\nbatch_size: [16, 64]\n")
    result = run_cli("--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "300,60,30",
                     "--search", "optuna", "--space", data.parent / "optuna.yaml", "--num-samples", OPTUNA_SAMPLES,
                     "--max-concurrent-trials", 2, "--scheduler", "asha", "--grace-period", 1, "--epochs", 3,
                     "--storage", STORAGE, "--name", NAME, env=s3_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return copy_from_bucket(s3_env, f"sampled/{NAME}", data.parent / NAME)


def test_optuna_with_asha_at_most_two_at_once(optuna_search):
    experiment = optuna_search
    trials = configs(experiment)
    assert len(trials) == OPTUNA_SAMPLES
    assert all(type(c["batch_size"]) is int and c["batch_size"] in (16, 64) for c in trials)
    assert list(experiment.glob("searcher-state-*.pkl")), "Optuna's study was not saved beside the experiment"
    table = pd.read_csv(experiment / "summary.csv")
    assert set(table.status) <= {"finished", "stopped"} and (table.status == "stopped").any()
    trials, _ = load_trials(Location.parse(str(experiment)))  # Optuna's trial ids are random; their numbers are not
    assert sorted(trials.trial_number) == list(range(1, OPTUNA_SAMPLES + 1))
    spans = [running_span(trial) for trial in trial_folders(experiment)]
    at_once = max(sum(start <= moment <= end for start, end in spans) for moment, _ in spans)
    assert at_once <= 2, spans


def running_span(trial: Path) -> tuple[float, float]:
    """When a trial's event file was opened and when it wrote its last scalar (TensorBoard's wall times)."""
    events = EventAccumulator(str(trial))
    events.Reload()
    last = max(event.wall_time for tag in events.Tags()["scalars"] for event in events.Scalars(tag))
    return events.FirstEventTimestamp(), last


def test_an_optuna_search_on_s3_reports_and_resumes_from_the_bucket(s3_env, optuna_search):
    """The study is saved in the bucket, and a `resume` of the finished search restores it from there and runs no
    trial again: every trial's results, and the summary, stay as the search left them."""
    stored = s3_keys(s3_env, f"sampled/{NAME}/")
    assert any(key.split("/")[-1].startswith("searcher-state-") for key in stored), stored
    assert {f"sampled/{NAME}/summary.csv", f"sampled/{NAME}/best_model/config.json"} <= stored
    trials = {key.split("/")[2] for key in stored if key.startswith(f"sampled/{NAME}/lr=")}
    assert trials == {trial.name for trial in trial_folders(optuna_search)} and len(trials) == OPTUNA_SAMPLES

    resumed = run_cli("resume", f"{STORAGE}/{NAME}", env=s3_env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = s3_keys(s3_env, f"sampled/{NAME}/")
    assert {key.split("/")[2] for key in after if key.startswith(f"sampled/{NAME}/lr=")} == trials
    client = s3_client(s3_env)
    for trial in trials:
        result = client.get_object(Bucket=BUCKET, Key=f"sampled/{NAME}/{trial}/result.json")["Body"].read()
        assert result == (optuna_search / trial / "result.json").read_bytes(), f"{trial} ran again"
    table = pd.read_csv(io.BytesIO(client.get_object(Bucket=BUCKET, Key=f"sampled/{NAME}/summary.csv")["Body"].read()))
    assert table.equals(pd.read_csv(optuna_search / "summary.csv")), table
    assert len(table) == OPTUNA_SAMPLES and table.lr.nunique() == OPTUNA_SAMPLES
