"""Resources per trial, a (pretend) GPU cluster, and an experiment stopped early: its console, and its resume."""

import re
import signal
import subprocess
import sys
import time

import pytest
import ray

from conftest import REPO, SYNTHETIC_CLASSES, run_in_process, start_cli, write_class_files
from experiment_checks import reported
from quickdraw.config import DataConfig, SearchConfig, SplitSizes
from quickdraw.cluster import trial_resources
from quickdraw.search import run_search
from quickdraw.space import space_with


def test_trials_share_gpus_so_all_run_at_once():
    grid = SearchConfig()  # 15 trials; more cluster shapes, and Ray running them, in test_gpu_shares.py
    assert trial_resources(grid, [{"CPU": 2}]) == {"cpu": 1.0, "gpu": 0}
    assert trial_resources(grid, [{"CPU": 16, "GPU": 1}]) == {"cpu": 1.0, "gpu": 0.0666}
    # 8 trials a GPU, as Ray puts a fraction on one GPU (not 2/15 = 0.1333: only 7 of those fit on a GPU)
    assert trial_resources(grid, [{"CPU": 8, "GPU": 2}]) == {"cpu": 0.5333, "gpu": 0.125}
    assert trial_resources(grid, [{"CPU": 64, "GPU": 32}]) == {"cpu": 1.0, "gpu": 1.0}
    explicit = SearchConfig(gpus_per_trial=0.5, cpus_per_trial=2)
    assert trial_resources(explicit, [{"CPU": 16, "GPU": 1}]) == {"cpu": 2, "gpu": 0.5}


@pytest.fixture
def ray_with_a_gpu():
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_grid_on_a_gpu_cluster_gives_each_trial_a_share_and_falls_back_to_cpu(ray_with_a_gpu, tmp_path):
    data = write_class_files(tmp_path / "data")
    config = SearchConfig(
        data=DataConfig(data_dir=data, classes=SYNTHETIC_CLASSES, split=SplitSizes(60, 15, 15)),
        space=space_with(lr=(0.01,), batch_size=(16, 32)), epochs=1, storage=str(tmp_path / "results"), name="gpu",
    )
    experiment = run_search(config)
    trials = ray.tune.ExperimentAnalysis(str(experiment)).trials
    assert len(trials) == 2
    assert {t.status for t in trials} == {"TERMINATED"}
    # 2 trials on 1 GPU and 2 CPUs: 1 / ceil(2 / 1) = half a GPU each, and the node's 2 CPUs over the 2 trials its GPU
    # takes, one each: both fit at once (fractions of a CPU beside a GPU run in test_gpu_shares.py).
    assert [t.placement_group_factory.required_resources for t in trials] == [{"CPU": 1.0, "GPU": 0.5}] * 2
    assert all("test_accuracy" in t.last_result for t in trials)


@pytest.mark.slow
def test_an_experiment_stopped_early_reports_its_unfinished_trials(tmp_path):
    data = write_class_files(tmp_path / "data")
    experiment = tmp_path / "results" / "stopped"
    driver = subprocess.Popen(
        [sys.executable, "tune_search.py", "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES),
         "--split", "300,60,30", "--lrs", "0.001", "--batch-sizes", "16,32", "--epochs", "500",
         "--storage", experiment.parent, "--name", experiment.name],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in experiment.glob("lr=*/result.json")):
        assert time.monotonic() < deadline and driver.poll() is None, "no trial reported an epoch"
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)  # a user's Ctrl-C
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 1, output[-3000:]
    check_console(output, experiment)
    result = run_in_process("report", experiment)
    assert result.returncode == 0, result.stderr
    assert "did not finish" in result.stdout
    import pandas as pd

    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == 2 and (table.status == "unfinished").all()
    assert table.test_accuracy.isna().all() and (table.epochs < 500).all()

    # The line's command goes on, with the same console, until a second Ctrl-C once a trial has gone on.
    epochs = {name: len(history) for name, history in reported(experiment).items()}
    resumed = start_cli("resume", experiment)
    deadline = time.monotonic() + 120
    while not any(len(history) > epochs.get(name, 0) for name, history in reported(experiment).items()):
        assert time.monotonic() < deadline and resumed.poll() is None, "no trial went on after resume"
        time.sleep(0.5)
    resumed.send_signal(signal.SIGINT)
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 1, output[-3000:]
    assert f"resuming {experiment} " in output
    check_console(output, experiment)


def check_console(output: str, experiment) -> None:
    """Ray's legacy status table with this search's columns and the progress line under it; none of the per-trial
    boxes of Ray's newer output; and, last, the one command that goes on (not Ray's `Tuner.restore(...)`)."""
    assert output.splitlines()[-1] == f"Not every trial finished; to go on: python tune_search.py resume {experiment}"
    assert "Tuner.restore" not in output and "Resume experiment with" not in output
    assert not re.search(r"^.*Trial \S+ (config|result)\b|Trial status:", output, re.M), output[-3000:]
    assert re.search(r"^\| trial +\| status +\| +lr \| +batch \| +epoch \| +val acc % \| +best val % \|$",
                     output, re.M), output[-3000:]
    # A row of a trial that reported: its epoch out of 500, its accuracies in percent with two decimals.
    assert re.search(r"^\| \d+ +\| \w+ +\| +0\.001 \| +(16|32) \| +\d+/500 \| +\d+\.\d\d \| +\d+\.\d\d \|$",
                     output, re.M), output[-3000:]
    assert re.search(r"^Progress +\d+%\|[ #\d]*\| \d+/1000 trial-epochs \[elapsed \d\d:\d\d, ETA (\d[\d:]*|\?)\]$",
                     output, re.M), output[-3000:]


def test_a_second_ctrl_c_names_the_resume_command(monkeypatch, capsys, tmp_path):
    """Tune stops on the first Ctrl-C and restores Python's handler: a second one raises KeyboardInterrupt wherever
    the driver is. Once the experiment holds a search, the last line names `resume`, not "the same command", which
    would find the folder taken."""
    from quickdraw import cli
    from quickdraw.errors import Interrupted

    def interrupted(experiment, address):
        raise Interrupted(experiment)

    monkeypatch.setattr("quickdraw.search.resume_search", interrupted)
    assert cli.main(["resume", str(tmp_path / "x"), "--address", "10.0.0.1:6379"]) == 130
    assert capsys.readouterr().err == (f"tune_search.py: interrupted; to go on: python tune_search.py resume "
                                       f"{tmp_path / 'x'} --address 10.0.0.1:6379\n")
