"""The console while a search runs, as a Ray Tune callback (Tune's own output is silenced, verbose=0): a status table
with one row per trial (the hyperparameters that tell trials apart, its epoch out of the total, its validation
accuracies) every half minute and at the end, and under it one line of overall progress (trial-epochs done, elapsed,
ETA) formatted by tqdm. The callback's saved state is also how a resume learns that Tune restored the search."""

from __future__ import annotations

import sys
import time
from datetime import datetime

from ray import tune
from ray.tune.experiment import Trial
from tabulate import tabulate
from tqdm import tqdm

from quickdraw.catalogue import BEST_VAL_ACCURACY, DIVERGED, EPOCH, VAL_ACCURACY
from quickdraw.errors import UserError
from quickdraw.experiment import tag_number
from quickdraw.space import Space

REPORT_EVERY_S = 30
MAX_ROWS = 20  # before the end, past that: the running trials, then the best of the others
ACCURACIES = (VAL_ACCURACY, BEST_VAL_ACCURACY)
SETTLED = (Trial.TERMINATED, Trial.ERROR)  # finished, stopped by ASHA, diverged, or failed for good: no more epochs
PROGRESS_FORMAT = ("{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} trial-epochs "
                   "[elapsed {elapsed}, ETA {remaining}]")
OPEN_ENDED_FORMAT = "{desc} {n_fmt} trial-epochs [elapsed {elapsed}]"  # when the number of trials is unknown


class RestoreFailed(UserError):
    """Ray Tune could not restore a search's state, and would start it over in its folder."""


class Console(tune.Callback):
    """Prints the status table and the progress line. `expect_restore` is set around a resume's fit: Tune restores
    a search's callbacks from their saved state last, after its trials and search algorithm, so a resume whose
    console was not restored is one that Tune failed, and would start over; it stops before any trial runs."""

    expect_restore = False

    def __init__(self, space: Space):
        self.columns = [d.hyperparameter for d in space if d.searched or d.hyperparameter.always_named]
        self.started = time.time()
        self.last_report = 0.0
        self.total: int | None = None  # trials the search makes; None: unknown (endless)
        self.baseline: int | None = None  # trial-epochs done when this run started (after a resume, not 0)
        self.trial_epochs = 0
        self.restored = False

    def setup(self, total_num_samples: int | None = None, **info):
        expected, Console.expect_restore = Console.expect_restore, False
        if expected and not self.restored:
            raise RestoreFailed("Ray Tune could not restore its state")
        self.started, self.total = time.time(), total_num_samples

    def get_state(self) -> dict:
        return {"trial_epochs": self.trial_epochs}

    def set_state(self, state: dict) -> None:
        """Tune restored the search: the ETA counts only the trial-epochs done after this."""
        self.baseline, self.restored = state["trial_epochs"], True

    def on_step_end(self, iteration: int, trials: list[Trial], **info):
        if self.baseline is None and trials:
            self.baseline = trial_epochs(trials, self.total)[0]
        self.trial_epochs = trial_epochs(trials, self.total)[0]
        due = time.time() - self.last_report >= REPORT_EVERY_S
        if due and any(t.last_result.get(EPOCH.key) for t in trials):
            self.report(trials, done=False)

    def on_experiment_end(self, trials: list[Trial], **info):
        if trials:
            self.report(trials, done=True)

    def report(self, trials: list[Trial], done: bool) -> None:
        self.last_report = time.time()
        print(self.status(trials, done), flush=True)

    def status(self, trials: list[Trial], done: bool) -> str:
        counts = count_statuses(trials)
        of = f"/{self.total}" if self.total and self.total < sys.maxsize else ""
        elapsed = time.time() - self.started
        lines = ["== Status ==", f"Current time: {datetime.now():%Y-%m-%d %H:%M:%S} "
                 f"(running for {tqdm.format_interval(elapsed)})",
                 f"Number of trials: {len(trials)}{of} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})",
                 self.table(trials, done)]
        if errors := errors_table(trials):
            lines.append(errors)
        lines.append(progress_line(trials, self.total, elapsed, self.baseline or 0))
        return "\n".join(lines) + "\n"

    def table(self, trials: list[Trial], done: bool) -> str:
        shown = trials if done else rows_shown(trials)
        ranked = sorted(shown, key=lambda t: t.last_result.get(BEST_VAL_ACCURACY.key, -1.0), reverse=True)
        headers = ["trial", "status", *(h.short for h in self.columns), "epoch", *(m.short for m in ACCURACIES)]
        table = tabulate([self.row(trial) for trial in ranked], headers=headers, tablefmt="psql",
                         disable_numparse=True, colalign=("left", "left", *["right"] * (len(headers) - 2)))
        if hidden := [t for t in trials if t not in shown]:
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(count_statuses(hidden).items()))
            table += f"\n... {len(hidden)} more trials not shown ({statuses})"
        return table

    def row(self, trial: Trial) -> list[str]:
        result = trial.last_result
        params = [h.text(trial.config[h.name]) for h in self.columns]
        epoch = f"{result[EPOCH.key]}/{trial.config['epochs']}" if EPOCH.key in result else ""
        accuracies = [f"{100 * result[m.key]:.2f}" if m.key in result else "" for m in ACCURACIES]
        return [trial_cell(trial), trial_status(trial), *params, epoch, *accuracies]


def rows_shown(trials: list[Trial]) -> list[Trial]:
    """At most MAX_ROWS trials: the running ones, then the others with the best validation accuracy."""
    running = [t for t in trials if t.status == Trial.RUNNING]
    others = sorted((t for t in trials if t.status != Trial.RUNNING),
                    key=lambda t: t.last_result.get(BEST_VAL_ACCURACY.key, -1.0), reverse=True)
    return (running + others)[:MAX_ROWS]


def count_statuses(trials: list[Trial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial_status(trial)] = counts.get(trial_status(trial), 0) + 1
    return counts


def trial_status(trial: Trial) -> str:
    """Tune's status of the trial (RUNNING, TERMINATED, ...), or DIVERGED for one its loss ended (Tune's TERMINATED:
    quickdraw.trainable)."""
    return "DIVERGED" if trial.last_result.get(DIVERGED) else trial.status


def errors_table(trials: list[Trial]) -> str:
    """The failed trials, with how often they failed and where their error is written."""
    failed = [t for t in trials if t.status == Trial.ERROR]
    if not failed:
        return ""
    rows = [[trial_cell(t), t.num_failures, t.error_file] for t in failed]
    return f"Number of errored trials: {len(failed)}\n" + tabulate(
        rows, headers=["trial", "# failures", "error file"], tablefmt="psql", disable_numparse=True)


def trial_cell(trial: Trial) -> str:
    """The number Tune's experiment tag starts with, as the trial's folder name ends; Tune's trial name otherwise."""
    number = tag_number(trial.experiment_tag)
    return str(trial) if number is None else str(number)


def trial_epochs(trials: list[Trial], total_samples: int | None) -> tuple[int, int | None]:
    """(trial-epochs done, trial-epochs in all): a settled trial (finished, stopped early, failed) counts all its
    epochs as done; trials not created yet count their epochs in the total. The total is None when unknown."""
    done = total = 0
    for trial in trials:
        epochs = trial.config.get("epochs", 0)
        total += epochs
        done += epochs if trial.status in SETTLED else min(epochs, trial.last_result.get(EPOCH.key, 0))
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
