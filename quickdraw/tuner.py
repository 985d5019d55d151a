"""The Tuner, built in one place: the space as Tune's domains, the search algorithm, ASHA, each trial's resources and
folder name, storage, checkpoints and failures, the console; and fitting it, a new search or a restored one."""

from __future__ import annotations

import contextlib
import functools
import logging

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher

from quickdraw.catalogue import HYPERPARAMETER, OBJECTIVE, VAL_LOSS
from quickdraw.config import SearchConfig
from quickdraw.console import Console, RestoreFailed
from quickdraw.dataset import Split
from quickdraw.experiment import tag_number, unresumable
from quickdraw.space import Dimension, Space
from quickdraw.storage import Location, first_line
from quickdraw.trainable import train_trial
from quickdraw.whole_files import tune_filesystem

RESTORE_LOGGER = "ray.tune.execution.tune_controller"  # where Tune logs a restore it could not do, with its cause


def trainable(split: Split, resources: dict, space: Space):
    return tune.with_resources(tune.with_parameters(train_trial, split=split, space=space), resources)


def build_tuner(config: SearchConfig, trainable, storage: Location, name: str) -> tune.Tuner:
    tagged = tuple([d.name for d in config.space if d.hyperparameter.always_named]
                   + [d.name for d in config.space if d.searched and not d.hyperparameter.always_named])
    return tune.Tuner(
        trainable,
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            # No metric here: the best trial is quickdraw.summary's to choose; ASHA and Optuna carry the metrics
            # they use.
            search_alg=search_algorithm(config), num_samples=config.num_samples or 1, scheduler=scheduler(config),
            trial_dirname_creator=functools.partial(trial_dirname, tagged=tagged),
            reuse_actors=True,  # a trial after another of the same resources starts in the same process
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.uri,
            storage_filesystem=tune_filesystem(storage.is_local),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), Console(config.space)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            sync_config=tune.SyncConfig(sync_artifacts=True),
            verbose=0,  # the console is quickdraw.console's
        ),
    )


def restore_tuner(experiment: Location, trainable) -> tune.Tuner:
    """The search in `experiment` as Tune saved it: finished trials stay, the others go on from their checkpoints
    (errored ones too, with a fresh allowance of failures)."""
    return tune.Tuner.restore(experiment.uri, trainable=trainable, resume_unfinished=True, resume_errored=True,
                              storage_filesystem=tune_filesystem(experiment.is_local))


def param_space(config: SearchConfig) -> dict:
    """Tune's config of every trial: the hyperparameters as Tune's domains, and the settings all trials share."""
    hyperparameters = {d.name: tune_domain(d, config.search) for d in config.space}
    return {**hyperparameters, "epochs": config.epochs, "seed": config.data.seed, "precision": config.precision,
            "compile": config.compile}


def tune_domain(dimension: Dimension, search: str):
    """A fixed value (or a list of one) as it is; a list as a grid dimension (grid) or a choice (random, optuna); a
    range as Tune's distribution over it (the space's ranges include `high`, Tune's integer ones do not)."""
    kind, args = dimension.kind, dimension.args
    if kind == "value" or (kind == "values" and len(args) == 1):
        return args[0]
    if kind == "values":
        return tune.grid_search(list(args)) if search == "grid" else tune.choice(list(args))
    low, high = args
    return {"uniform": lambda: tune.uniform(low, high), "loguniform": lambda: tune.loguniform(low, high),
            "randint": lambda: tune.randint(low, high + 1), "lograndint": lambda: tune.lograndint(low, high + 1)}[kind]()


def search_algorithm(config: SearchConfig) -> SearchAlgorithm | Searcher:
    """Tune's variant generator for grid and random (seeded by --seed), or Optuna's TPE through Tune's
    OptunaSearch; each holds at most --max-concurrent-trials running."""
    limit = config.max_concurrent_trials
    if config.search != "optuna":
        return BasicVariantGenerator(max_concurrent=limit or 0, random_state=config.data.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Optuna samples its first 10 trials at random by default, most of a 15-trial budget: TPE starts after a third
    # of it here. The constant liar keeps concurrent trials from being suggested the same point.
    startup = min(10, max(2, config.num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=config.data.seed, n_startup_trials=startup, constant_liar=True)
    searcher = optuna_search(OptunaSearch)(metric=OBJECTIVE.key, mode="max", sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher


def optuna_search(base: type) -> type:
    """Tune's OptunaSearch (`base`, imported only when used), passing by a result without the objective: that of a
    trial that diverged before any epoch had a validation result (quickdraw.training), which OptunaSearch would take
    for an intermediate value and fail on (KeyError). The trial then ends with no value, and Optuna records it as
    pruned, below every trial with one."""

    class Optuna(base):
        def on_trial_result(self, trial_id: str, result: dict):
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return Optuna


def scheduler(config: SearchConfig) -> TrialScheduler | None:
    """ASHA, which stops trials whose validation loss lags; None is Tune's FIFO."""
    if config.scheduler != "asha":
        return None
    # A trial reports once per epoch, so Tune's training_iteration is its epoch (restarts included).
    return ASHAScheduler(metric=VAL_LOSS.key, mode="min", time_attr="training_iteration", max_t=config.epochs,
                         grace_period=config.grace_period, reduction_factor=config.reduction_factor)


def trial_dirname(trial, tagged: tuple[str, ...]) -> str:
    """Folder (and TensorBoard run) name: the `tagged` hyperparameters (the learning rate and batch size, then the
    others the search varies) and the trial's number, which makes it unique: lr=0.001_batch=64_00003,
    lr=0.001_batch=64_model=vgg-bn_00003. Short, so that TensorBoard's run lists show it whole. The number is the
    one Tune's experiment tag starts with: the searcher's count of the trials it created, kept across `resume`
    (from 0 in a grid or a random search; from 1 under Optuna); Tune's trial id where a tag has none."""
    tags = [f"{HYPERPARAMETER[name].short}={HYPERPARAMETER[name].text(trial.config[name])}"
            for name in tagged]
    number = tag_number(trial.experiment_tag)
    return "_".join([*tags, trial.trial_id if number is None else f"{number:05d}"])


def fit(tuner: tune.Tuner, experiment: Location, restored: bool = False) -> None:
    """Run the search. A `restored` search that Tune could not restore stops before a trial runs (see
    quickdraw.console.Console), in one line that names Tune's reason."""
    with restore_watched(restored) as causes:
        try:
            tuner.fit()
        except RestoreFailed:
            cause = f" ({type(causes[0]).__name__}: {first_line(causes[0])})" if causes else ""
            raise unresumable(experiment, f"Ray Tune could not restore its state{cause}") from None


@contextlib.contextmanager
def restore_watched(restored: bool):
    """While a restored search starts, the console tells whether Tune restored it; Tune logs the cause of a failed
    restore with its traceback, which is kept here (not printed) for the one line that names it."""
    causes: list[BaseException] = []
    if not restored:
        yield causes
        return

    def keep_cause(record: logging.LogRecord) -> bool:  # until the console's setup, which ends the expectation
        if Console.expect_restore and record.exc_info and record.levelno >= logging.ERROR and not causes:
            causes.append(record.exc_info[1])
            return False
        return True

    logger = logging.getLogger(RESTORE_LOGGER)
    logger.addFilter(keep_cause)
    Console.expect_restore = True
    try:
        yield causes
    finally:
        Console.expect_restore = False
        logger.removeFilter(keep_cause)
