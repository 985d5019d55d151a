"""The console of a running search (quickdraw.progress) on Trial-like objects: the status table's rows and cells,
and the progress line's count of trial-epochs. The real console, Ctrl-C and resume: tests/test_search.py."""

import re
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

from ray.tune.experiment import Trial

from quickdraw.config import SearchConfig
from quickdraw.progress import MAX_ROWS, SearchReporter, progress_line, trial_epochs
from quickdraw.space import Dimension


@dataclass
class FakeTrial:
    """What Tune's reporter reads of a Trial."""

    trial_id: str
    status: str
    config: dict
    last_result: dict = field(default_factory=dict)
    experiment_tag: str = ""
    error_file = None
    temporary_state = SimpleNamespace(location="")

    def __str__(self):
        return f"train_trial_{self.trial_id}"


def trial(number: int, status: str, epoch: int | None = None, best: float = 0.9, epochs: int = 50, lr=0.001,
          batch_size=32) -> FakeTrial:
    result = {} if epoch is None else {"epoch": epoch, "val_accuracy": best - 0.01, "best_val_accuracy": best}
    config = {"model": "seed", "lr": lr, "batch_size": batch_size, "dropout": 0.5, "weight_decay": 0.0,
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
    space = SearchConfig(lrs=(0.01, 0.001), batch_sizes=(32,), dropout=0.5).dimensions
    space = tuple(d if d.name != "dropout" else Dimension("dropout", "values", (0.3, 0.5)) for d in space)
    reporter = SearchReporter(space)
    reporter.setup(start_time=0, total_samples=4)
    trials = [trial(0, Trial.RUNNING, 12, best=0.93456, lr=0.01), trial(1, Trial.PENDING)]
    assert not reporter.should_report(trials[1:])  # no epoch to show yet
    reporter.report(trials, False, "Using FIFO scheduling algorithm.")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "== Status ==" and lines[1].startswith("Current time: ")
    assert lines[2] == "Using FIFO scheduling algorithm."
    assert lines[3] == "Number of trials: 2/4 (1 PENDING, 1 RUNNING)"
    # lr and batch size always, dropout because it is searched; no weight decay, model, location or "best trial".
    assert re.fullmatch(r"\| trial +\| status +\| +lr \| +batch \| +dropout \| +epoch \| +val acc % "
                        r"\| +best val % \|", lines[5])
    assert re.fullmatch(r"\| 0 +\| RUNNING +\| +0\.01 \| +32 \| +0\.5 \| +12/50 \| +92\.46 "
                        r"\| +93\.46 \|", lines[7])
    assert re.fullmatch(r"\| 1 +\| PENDING +\| +0\.001 \| +32 \| +0\.5 \| +\| +\| +\|", lines[8])
    assert lines[-2].startswith("Progress   6%|") and "| 12/200 trial-epochs [elapsed " in lines[-2] and lines[-1] == ""
    assert not any("best trial" in line.lower() or "loc" in line.split() for line in lines)


def test_status_table_of_many_trials_keeps_the_running_and_the_best_finished_until_the_end(capsys):
    reporter = SearchReporter(SearchConfig().dimensions)
    reporter.setup(start_time=0, total_samples=30)
    running = [trial(n, Trial.RUNNING, 5) for n in range(4)]
    finished = [trial(n, Trial.TERMINATED, 50, best=0.5 + n / 100) for n in range(4, 30)]
    reporter.report(running + finished, False)
    shown = re.findall(r"^\| (\d+) +\| (\w+)", capsys.readouterr().out, re.M)
    assert len(shown) == MAX_ROWS
    assert shown[:4] == [(str(n), "RUNNING") for n in range(4)]  # the trial numbers, as in the folder names
    # The finished trials best first: the last ones made, with the highest accuracies.
    assert [number for number, _ in shown[4:]] == [str(n) for n in reversed(range(4, 30))][:MAX_ROWS - 4]
    reporter.report(running + finished, True)
    output = capsys.readouterr().out
    assert len(re.findall(r"^\| \d+ +\| [A-Z]+ ", output, re.M)) == 30 and "more trials not shown" not in output
