"""The console of a running search (quickdraw.console), a Ray Tune callback, on Trial-like objects: the status
table's rows and cells, and the progress line's count of trial-epochs. The real console, Ctrl-C and resume:
tests/test_search.py."""

import re
import sys
from dataclasses import dataclass, field

from ray.tune.experiment import Trial

from quickdraw.console import MAX_ROWS, Console, progress_line, trial_epochs
from quickdraw.space import space_with


@dataclass
class FakeTrial:
    """What the console reads of a Trial."""

    trial_id: str
    status: str
    config: dict
    last_result: dict = field(default_factory=dict)
    experiment_tag: str = ""
    num_failures: int = 0
    error_file: str | None = None

    def __str__(self):
        return f"train_trial_{self.trial_id}"


def trial(number: int, status: str, epoch: int | None = None, best: float = 0.9, epochs: int = 50, lr=0.001,
          batch_size=32, dropout=0.5) -> FakeTrial:
    result = {} if epoch is None else {"epoch": epoch, "val_accuracy": best - 0.01, "best_val_accuracy": best}
    config = {"model": "seed", "lr": lr, "batch_size": batch_size, "dropout": dropout, "weight_decay": 0.0,
              "epochs": epochs}
    return FakeTrial(f"f00d_{number:05d}", status, config, result, f"{number}_lr={lr},batch_size={batch_size}")


def test_progress_counts_finished_stopped_and_failed_trials_whole_and_waiting_ones_in_the_total():
    trials = [trial(0, Trial.TERMINATED, 50), trial(1, Trial.TERMINATED, 6),  # finished; stopped by ASHA at 6
              trial(2, Trial.RUNNING, 12), trial(3, Trial.ERROR, 3), trial(4, Trial.PENDING)]
    # 6 trials of 50 epochs, one not created yet: 50 + 50 + 12 + 50 + 0 of 300.
    assert trial_epochs(trials, 6) == (162, 300)
    assert trial_epochs(trials, sys.maxsize) == (162, None)  # an endless search has no total
    assert trial_epochs([], 6) == (0, None)
    # 162 in 81 s is 2 a second: the 138 left take 69 s. After a resume only this run's epochs make the rate.
    assert progress_line(trials, 6, 81) == \
        "Progress  54%|#########1       | 162/300 trial-epochs [elapsed 01:21, ETA 01:09]"
    assert progress_line(trials, 6, 81, baseline=81).endswith("[elapsed 01:21, ETA 02:18]")
    assert progress_line(trials, 6, 0).endswith("[elapsed 00:00, ETA ?]")
    assert progress_line(trials, sys.maxsize, 81) == "Progress 162 trial-epochs [elapsed 01:21]"


def test_status_table_shows_the_searched_hyperparameters_epochs_of_the_total_and_accuracies_in_percent(capsys):
    console = Console(space_with(lr=(0.01, 0.001), batch_size=(32,), dropout=(0.3, 0.5)))
    console.setup(total_num_samples=4)
    trials = [trial(0, Trial.RUNNING, 12, best=0.93456, lr=0.01), trial(1, Trial.PENDING)]
    console.on_step_end(0, trials[1:])
    assert capsys.readouterr().out == ""  # no epoch to show yet
    console.on_step_end(1, trials)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "== Status ==" and lines[1].startswith("Current time: ")
    assert lines[2] == "Number of trials: 2/4 (1 PENDING, 1 RUNNING)"
    # lr and batch size always, dropout because it is searched; no weight decay, model, location or "best trial".
    assert re.fullmatch(r"\| trial +\| status +\| +lr \| +batch \| +dropout \| +epoch \| +val acc % "
                        r"\| +best val % \|", lines[4])
    assert re.fullmatch(r"\| 0 +\| RUNNING +\| +0\.01 \| +32 \| +0\.5 \| +12/50 \| +92\.46 "
                        r"\| +93\.46 \|", lines[6])
    assert re.fullmatch(r"\| 1 +\| PENDING +\| +0\.001 \| +32 \| +0\.5 \| +\| +\| +\|", lines[7])
    assert lines[-2].startswith("Progress   6%|") and "| 12/200 trial-epochs [elapsed " in lines[-2] and lines[-1] == ""
    assert not any("best trial" in line.lower() or "loc" in line.split() for line in lines)
    console.on_step_end(2, trials)
    assert capsys.readouterr().out == ""  # every half minute, not every step


def test_status_table_of_many_trials_keeps_the_running_and_the_best_finished_until_the_end(capsys):
    console = Console(space_with())
    console.setup(total_num_samples=30)
    running = [trial(n, Trial.RUNNING, 5) for n in range(4)]
    finished = [trial(n, Trial.TERMINATED, 50, best=0.5 + n / 100) for n in range(4, 30)]
    console.report(running + finished, done=False)
    output = capsys.readouterr().out
    shown = re.findall(r"^\| (\d+) +\| (\w+)", output, re.M)
    assert len(shown) == MAX_ROWS and "... 10 more trials not shown (10 TERMINATED)" in output
    assert sorted(shown[:4]) == [(str(n), "RUNNING") for n in range(4)]  # the trial numbers, as in the folder names
    # The finished trials best first: the last ones made, with the highest accuracies.
    assert [number for number, _ in shown[4:]] == [str(n) for n in reversed(range(4, 30))][:MAX_ROWS - 4]
    console.on_experiment_end(running + finished)
    output = capsys.readouterr().out
    assert len(re.findall(r"^\| \d+ +\| [A-Z]+ ", output, re.M)) == 30 and "more trials not shown" not in output


def test_failed_trials_are_listed_with_their_error_files(capsys):
    console = Console(space_with())
    console.setup(total_num_samples=2)
    failed = trial(1, Trial.ERROR, 3)
    failed.num_failures, failed.error_file = 4, "/results/x/lr=0.001_batch=32_00001/error.txt"
    console.on_experiment_end([trial(0, Trial.TERMINATED, 50), failed])
    output = capsys.readouterr().out
    assert "Number of errored trials: 1" in output
    assert re.search(r"^\| 1 +\| 4 +\| /results/x/lr=0.001_batch=32_00001/error.txt \|$", output, re.M), output


def test_a_console_that_tune_did_not_restore_stops_a_resume_before_any_trial():
    """Tune restores the callbacks' state last: a resume whose console was not restored is one Tune failed."""
    import pytest

    from quickdraw.console import RestoreFailed

    restored, failed = Console(space_with()), Console(space_with())
    restored.set_state(failed.get_state())
    Console.expect_restore = True
    restored.setup(total_num_samples=15)
    assert not Console.expect_restore  # the expectation holds for one setup: the resume's
    Console.expect_restore = True
    with pytest.raises(RestoreFailed):
        failed.setup(total_num_samples=15)
    Console(space_with()).setup(total_num_samples=15)  # a new search is not a resume
