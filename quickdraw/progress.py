"""The console while a search runs: Ray Tune's legacy status reporter (`CLIReporter`), set up to show one row per
trial with the hyperparameters that tell trials apart, its epoch out of the total and its validation accuracies,
redrawn every half minute and at the end; under the table one line of overall progress (trial-epochs done, elapsed,
ETA) formatted by tqdm. On Ctrl-C the command that goes on is quickdraw.cli's, not Ray's `Tuner.restore(...)`."""

from __future__ import annotations

import logging
import os
import sys
import time

from ray.tune import CLIReporter
from ray.tune.experiment import Trial
from ray.tune.progress_reporter import _get_progress_table_data, _time_passed_str, _trial_errors_str
from tabulate import tabulate
from tqdm import tqdm

from quickdraw.experiment import tag_number
from quickdraw.space import HYPERPARAMETERS, Space
from quickdraw.summary import value_text

REPORT_EVERY_S = 30
MAX_ROWS = 20  # past that, Ray shows some trials of each status: the running ones, the best finished ones
COLUMN_NAMES = {"model": "model", "lr": "lr", "batch_size": "batch", "dropout": "dropout", "weight_decay": "wd"}
ALWAYS_SHOWN = ("lr", "batch_size")
ACCURACIES = {"val_accuracy": "val acc %", "best_val_accuracy": "best val %"}
SORT_METRIC = "best_val_accuracy"
SETTLED = (Trial.TERMINATED, Trial.ERROR)  # finished, stopped by ASHA, or failed for good: no more epochs this run
PROGRESS_FORMAT = ("{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} trial-epochs "
                   "[elapsed {elapsed}, ETA {remaining}]")
OPEN_ENDED_FORMAT = "{desc} {n_fmt} trial-epochs [elapsed {elapsed}]"  # when the number of trials is unknown


class SearchReporter(CLIReporter):
    """Tune's CLIReporter: its header, its choice and order of rows (all at the end; at most MAX_ROWS before, some
    of each status, finished ones best first) and its table of errors; the cells of this search's columns formatted
    here, and the progress line under the table."""

    def __init__(self, space: Space):
        shown = [d.name for d in space if d.searched or d.name in ALWAYS_SHOWN]
        super().__init__(
            parameter_columns={name: COLUMN_NAMES[name] for name in HYPERPARAMETERS if name in shown},
            metric_columns=["epoch", *ACCURACIES], max_progress_rows=MAX_ROWS, max_report_frequency=REPORT_EVERY_S,
            metric=SORT_METRIC, mode="max", sort_by_metric=True,
        )
        self._baseline: int | None = None  # trial-epochs already done when this run started (a resume)

    def _current_best_trial(self, trials):
        # The metric only sorts the rows: the best trial is quickdraw.summary's to name, by its own rule.
        return None, None

    def should_report(self, trials: list[Trial], done: bool = False) -> bool:
        if self._baseline is None and trials:
            self._baseline = trial_epochs(trials, self._total_samples)[0]
        if not done and not any(t.last_result.get("epoch") for t in trials):
            return False  # no epoch to show yet
        return super().should_report(trials, done)

    def _progress_str(self, trials: list[Trial], done: bool, *sys_info: str, fmt: str = "psql", delim: str = "\n"):
        counts = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        of = f"/{self._total_samples}" if self._total_samples and self._total_samples < sys.maxsize else ""
        lines = ["== Status ==", _time_passed_str(self._start_time, time.time()), *sys_info,
                 f"Number of trials: {len(trials)}{of} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"]
        if trials:
            lines.append(self._table(trials, done, fmt))
        if errors := _trial_errors_str(trials, fmt=fmt, max_rows=None if done else self._max_error_rows):
            lines.append(errors)
        lines.append(progress_line(trials, self._total_samples, time.time() - self._start_time, self._baseline or 0))
        return delim.join(lines) + delim

    def _table(self, trials: list[Trial], done: bool, fmt: str) -> str:
        rows, _, (overflow, overflow_str) = _get_progress_table_data(
            trials, self._metric_columns, self._parameter_columns, max_rows=None if done else self._max_progress_rows,
            metric=self._metric, mode=self._mode, sort_by_metric=self._sort_by_metric,
        )
        by_name = {str(t): t for t in trials}
        headers = ["trial", "status", *self._parameter_columns.values(), "epoch", *ACCURACIES.values()]
        table = tabulate([self._row(by_name[row[0]]) for row in rows], headers=headers, tablefmt=fmt,
                         disable_numparse=True, colalign=("left", "left", *["right"] * (len(headers) - 2)))
        return table + (f"\n... {overflow} more trials not shown ({overflow_str})" if overflow else "")

    def _row(self, trial: Trial) -> list[str]:
        result = trial.last_result
        params = [value_text(trial.config.get(name)) for name in self._parameter_columns]
        epoch = f"{result['epoch']}/{trial.config['epochs']}" if "epoch" in result else ""
        accuracies = [f"{100 * result[key]:.2f}" if key in result else "" for key in ACCURACIES]
        return [trial_number(trial), trial.status, *params, epoch, *accuracies]


def trial_number(trial: Trial) -> str:
    """The number Tune's experiment tag starts with, as in the trial's folder name; Ray's "train_trial_<id>" otherwise."""
    number = tag_number(trial.experiment_tag)
    return str(trial) if number is None else str(number)


def trial_epochs(trials: list[Trial], total_samples: int | None) -> tuple[int, int | None]:
    """(trial-epochs done, trial-epochs in all): a settled trial (finished, stopped early, failed) counts all its
    epochs as done; trials not created yet count their epochs in the total. The total is None when unknown."""
    done = total = 0
    for trial in trials:
        epochs = trial.config.get("epochs", 0)
        total += epochs
        done += epochs if trial.status in SETTLED else min(epochs, trial.last_result.get("epoch", 0))
    if total_samples is None or total_samples >= sys.maxsize or not trials:
        return done, None
    return done, total + max(0, total_samples - len(trials)) * trials[0].config.get("epochs", 0)


def progress_line(trials: list[Trial], total_samples: int | None, elapsed: float, baseline: int = 0) -> str:
    """`Progress  40%|######         | 48/120 trial-epochs [elapsed 01:12, ETA 01:48]`: the ETA from the rate of
    this run's trial-epochs (those done before a resume, `baseline`, left out)."""
    done, total = trial_epochs(trials, total_samples)
    # A resumed trial may go back a few epochs to its last checkpoint: no rate until it is past the baseline again.
    return tqdm.format_meter(done, total, elapsed, ncols=80, ascii=True, prefix="Progress", initial=min(baseline, done),
                             bar_format=OPEN_ENDED_FORMAT if total is None else PROGRESS_FORMAT)


class _Unhelpful(logging.Filter):
    """Drops two of Ray's log records that mislead here: Tune's "Resume experiment with: Tuner.restore(...)" on
    Ctrl-C (`resume` is the command that goes on, and quickdraw.cli names it), and the experiment analysis's
    "Failed to fetch metrics" when every trial it names merely has no results yet (one that never started, after
    Ctrl-C or at a resume: the summary shows it as unfinished). Other failures to read results still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Experiment has been interrupted"):
            return False
        if message.startswith("Failed to fetch metrics"):
            return not all("FileNotFoundError" in line for line in message.splitlines()[1:])
        return True


def quiet_unhelpful_hints() -> None:
    """Run when this module is imported (by quickdraw.search): Tuner.restore reads results before any reporter runs."""
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Unhelpful) for f in logger.filters):
            logger.addFilter(_Unhelpful())


def console_reporter(space: Space) -> SearchReporter:
    """The reporter for RunConfig. Tune 2.60 ignores a reporter under its newer output (the default), whose
    per-trial config and result boxes it replaces: this selects the legacy output, where the reporter is used."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    return SearchReporter(space)


def use_on_restored(tuner, space: Space) -> None:
    """A restored Tuner keeps the RunConfig it was made with, reporter included; this gives it this module's
    reporter also when the search was started by a version of quickdraw without one (Tune has no public way)."""
    if (local := getattr(tuner, "_local_tuner", None)) is not None:  # absent through Ray Client: the search's own
        local.get_run_config().progress_reporter = console_reporter(space)


quiet_unhelpful_hints()
