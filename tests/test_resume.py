"""A driver killed with SIGKILL mid-grid, then `resume <storage>/<name>`: finished trials are left as
they were, unfinished ones continue from their checkpoints, and the summary covers every trial."""

import os
import tempfile

import pandas as pd
import pytest

from conftest import SYNTHETIC_CLASSES, run_cli, start_cli, write_class_files
from experiment_checks import finished_trials, kill_driver_when, reported, results, trial_dirs

EPOCHS = 8


@pytest.mark.slow
def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    data = write_class_files(tmp_path / "data", count=1_500)
    experiment = tmp_path / "results" / "killed"
    # Its own Ray temp dir, so that Ray processes the killed driver leaves behind can be found and ended.
    ray_tmp = tempfile.mkdtemp(prefix="qdres-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    # Batch size 512 finishes quickly; batch size 16 takes many more steps per epoch.
    driver = start_cli(
        "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "2000,200,100",
        "--lrs", "0.001", "--batch-sizes", "16,512", "--epochs", EPOCHS,
        "--storage", experiment.parent, "--name", experiment.name, env=env,
    )

    refused = []

    def moment(progress):  # a trial finished, another has run at least two epochs
        if progress and not refused:  # while the driver runs, `resume` is refused: it would undo the driver's work
            refused.append(run_cli("resume", experiment, timeout=60))
        running = [t for t, rows in progress.items() if 2 <= len(rows) and "test_accuracy" not in rows[-1]]
        return finished_trials(progress) and running

    finished = finished_trials(kill_driver_when(driver, experiment, ray_tmp, moment, timeout=180, poll=0.2))
    (live,) = refused
    assert live.returncode == 2 and live.stderr.startswith(
        f"tune_search.py: error: {experiment} is being run by another driver, pid {driver.pid} on "), live.stderr
    assert len(live.stderr.splitlines()) == 1
    before = reported(experiment)
    finished_before = {t: (experiment / t / "result.json").read_bytes() for t in finished}

    left_staged = experiment / finished[0] / ".result.json.tmp-0badc0de"  # as a kill during Tune's sync leaves
    left_staged.write_bytes(b'{"epoch": 1')
    resumed = run_cli("resume", experiment, timeout=300)  # at once: the killed driver's claim is stale
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    assert not left_staged.exists()
    for trial, result_bytes in finished_before.items():
        assert (experiment / trial / "result.json").read_bytes() == result_bytes, f"{trial} ran again"
    for trial in trial_dirs(experiment):
        history = results(trial)
        assert history[-1]["epoch"] == EPOCHS and "test_accuracy" in history[-1]
        earlier = before.get(trial.name, [])
        later = history[len(earlier):]
        if earlier and later:
            # The resumed part starts from the last checkpoint, not from epoch 1.
            assert later[0]["epoch"] > 1 and later[0]["epoch"] <= earlier[-1]["epoch"] + 1, history
            assert {r["pid"] for r in later}.isdisjoint({r["pid"] for r in earlier})
    assert any(before.get(t.name) and len(results(t)) > len(before[t.name]) for t in trial_dirs(experiment))
    table = pd.read_csv(experiment / "summary.csv")
    assert len(table) == 2 and (table.status == "finished").all() and (table.epochs == EPOCHS).all()


def test_resume_help_says_only_trusted_folders(capsys):
    """Tune's restore un-pickles the folder's state: `resume --help` says to resume trusted folders only."""
    from quickdraw.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["resume", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Resume only experiment folders you trust" in text and "un-pickles" in text
