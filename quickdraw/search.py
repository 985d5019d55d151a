"""The Tuner: Ray (local or a cluster), the conversion once per cluster, the split in the object store,
the search space and algorithm, resources, failures, storage, and resuming a stopped search."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import socket
import tempfile
from datetime import datetime
from pathlib import Path

import ray
from ray import tune
from ray.exceptions import AuthenticationError, RayActorError
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import quickdraw
from quickdraw.config import DataConfig, SearchConfig
from quickdraw.dataset import Conversion, Split, check_inputs, conversion_fingerprint, load_split, prepare_split
from quickdraw.download import fetch_missing
from quickdraw.errors import DiskFull, Interrupted, UserError
from quickdraw.experiment import (SEARCH_FILE, check_resumable, record_what_ran, split_location, tag_number,
                                  unresumable)
from quickdraw.lease import DRIVERS_DIR, STALE_S, claim
from quickdraw.provenance import run_record
from quickdraw.progress import console_reporter, use_on_restored
from quickdraw.space import Dimension, Space, space_of_record
from quickdraw.storage import Location, first_line, full_disk
from quickdraw.trainable import train_trial
from quickdraw.whole_files import remove_staged_files, tune_filesystem

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
CONNECT_TIMEOUT_S = 5
CONVERT_ATTEMPTS = 3
OBJECTIVE = "best_val_accuracy"  # what Optuna maximises: the rule that chooses the best trial (quickdraw.summary)
DIRNAME_TAGS = {"model": "model", "dropout": "dropout", "weight_decay": "wd"}  # searched, they name trials' folders too
# Converters this driver used. Ray ends an actor as soon as no handle to it is left, which would fail
# another driver's call queued on it; holding them until this driver exits keeps that to the rare case.
_converters: list = []


def run_search(config: SearchConfig) -> Location:
    """Run the whole search and return the experiment folder, `<storage>/<name>`."""
    storage = Location.parse(config.storage)
    name = config.name or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    experiment = storage / name
    # Ray's workers do not share our working directory: hand them an absolute --data-dir.
    data = dataclasses.replace(config.data, data_dir=config.data.data_dir.resolve())
    storage.check_writable()
    refuse_existing(experiment)
    fetch_missing(data)
    check_inputs(data, storage)
    connect(config.address)
    # Bad input is refused above, before anything is written; the claim is the first thing written.
    with claim(experiment, "pick another --name, or omit it for a timestamp"):
        refuse_existing(experiment)  # a driver that claimed it first may have run its search since our first look
        conversion, split = convert_once(data, storage)
        print(f"split {conversion.counts} of {len(data.classes)} classes "
              f"{'reused from' if conversion.reused else 'converted into'} {conversion.directory}")
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        resources = trial_resources(config, nodes)
        settings = {key: value for key, value in dataclasses.asdict(config).items() if key != "space"}
        space = config.dimensions
        record = {"config": settings, "space": {d.name: d.as_spec() for d in space},
                  "dataset": conversion.directory.uri, "resources": resources,
                  "run": run_record(ray.cluster_resources(), len(nodes))}
        (experiment / SEARCH_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        fit(build_tuner(config, trainable(split, resources, space), storage, name), experiment)
    return experiment


def refuse_existing(experiment: Location) -> None:
    if experiment.exists() and not never_started(experiment):
        raise UserError(f"{experiment} already exists: pick another --name, or omit it for a timestamp; to continue "
                        f"that search: python tune_search.py resume {experiment}")


def resume_search(experiment: Location, address: str | None) -> Location:
    """Continue a search whose driver stopped: finished trials stay as they are, the others go on
    from their last checkpoints (errored ones too, with a fresh allowance of failures)."""
    record = check_resumable(experiment)
    with claim(experiment, f"wait for it to end; if its machine was lost, resume once the driver has been silent for "
                           f"{STALE_S} s"):
        location = split_location(experiment)
        arrays = load_split(location)  # before Ray starts: a damaged split is refused at once
        connect(address)
        split = ray.put(arrays)  # into the object store: the trials share its copy
        del arrays
        if experiment.is_local:  # only this driver writes here now (its claim aside): the rest was left by a killed one
            remove_staged_files(experiment.path, keep=DRIVERS_DIR)
        print(f"resuming {experiment} with the split in {location}")
        quiet_tune()
        tuner = tune.Tuner.restore(
            experiment.uri, trainable=trainable(split, record["resources"], space_of_record(record)),
            resume_unfinished=True, resume_errored=True, storage_filesystem=tune_filesystem(experiment.is_local),
        )
        use_on_restored(tuner, space_of_record(record))
        with stop_on_failed_restore(experiment):
            fit(tuner, experiment)
    return experiment


@contextlib.contextmanager
def stop_on_failed_restore(experiment: Location):
    """When Ray Tune cannot restore a search's state it logs so, then starts the search over in the same folder (or
    fails to, creating its trials): what check_resumable did not foresee ends the resume in one line instead."""
    def failed_restore(record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to restore the run state"):
            cause = record.exc_info[1] if record.exc_info else None
            raise unresumable(experiment, f"Ray Tune could not restore its state ({type(cause).__name__}: "
                                          f"{first_line(cause)})")
        return True

    logger = logging.getLogger("ray.tune.execution.tune_controller")
    logger.addFilter(failed_restore)
    try:
        yield
    finally:
        logger.removeFilter(failed_restore)


def fit(tuner: tune.Tuner, experiment: Location) -> None:
    """Run the search, then record in search.json what its precision resolved to. Ctrl-C stops Tune gracefully and
    restores Python's handler; a second one becomes Interrupted, which names the command that continues, and a full
    disk DiskFull, which names the disk."""
    try:
        tuner.fit()
        record_what_ran(experiment)
    except KeyboardInterrupt:
        raise Interrupted(experiment) from None
    except Exception as e:  # Ray Tune stops on a full disk with whatever it was writing (or reading back) at the time
        disk = full_disk(experiment.uri, e)
        if disk:
            raise DiskFull(disk, experiment) from None
        raise


def never_started(experiment: Location) -> bool:
    """The folder holds a search that was stopped (Ctrl-C, SIGKILL) before Tune saved any state, after its search.json
    or before, when it holds only drivers' claims: `run` starts it over, as `resume` has nothing to continue."""
    started = (experiment / SEARCH_FILE).is_file() or {f.name for f in experiment.children()} <= {DRIVERS_DIR}
    return started and not tune.Tuner.can_restore(experiment.uri)


def connect(address: str | None) -> None:
    """Start a local Ray, or join the cluster at `address` (or RAY_ADDRESS's) and ship it this package."""
    if ray.is_initialized():
        return
    named, instead = f"--address {address}", "leave out --address"
    environment = os.environ.get("RAY_ADDRESS")
    if environment and address in (None, "auto"):
        # ray.init() takes RAY_ADDRESS over these, and would retry a dead one for minutes: it is checked and named
        # as --address is.
        address, named, instead = environment, f"RAY_ADDRESS={environment}", "unset RAY_ADDRESS"
    if address in (None, "local"):
        start_local_ray()
        return
    if address != "auto":
        check_reachable(address, named, instead)
    runtime_env = {
        "py_modules": [str(Path(quickdraw.__file__).parent)],
        "env_vars": {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ},
    }
    try:
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env)
    except AuthenticationError:
        raise UserError(
            f"{named}: the cluster wants its token: export RAY_AUTH_MODE=token and put the "
            "head node's ~/.ray/auth_token in the same place here (or in RAY_AUTH_TOKEN)"
        ) from None
    except ConnectionError as e:
        raise UserError(
            f"{named}: could not join a Ray cluster ({first_line(e)}); start one with "
            "`ray start --head`, export RAY_AUTH_MODE=token if it uses token authentication, "
            f"or {instead} to run on this machine"
        ) from None


def not_auth_notice(record: logging.LogRecord) -> bool:
    """Ray 2.60 notes on every start that token authentication is on by default, its secure setting: not news, and a
    line that would come before a one-line error of start_local_ray."""
    return not record.getMessage().startswith("Token authentication is enabled")


def start_local_ray() -> None:
    # The same function each time: addFilter adds it once, however often Ray is started in one process.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(not_auth_notice)
    try:
        ray.init(logging_level="WARNING")
    except OSError as e:
        if "AF_UNIX path length" not in str(e):
            raise
        named = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR"
        folder = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
        raise UserError(f"{named}={folder} is too long a path for Ray's sockets, which it puts in a session folder "
                        "there (a socket's path has at most 107 bytes): set RAY_TMPDIR to a short folder, such as "
                        "export RAY_TMPDIR=/tmp") from None


def check_reachable(address: str, named: str | None = None, instead: str = "leave out --address") -> None:
    """Ray retries an unreachable address for minutes; one TCP connection tells in seconds. `named` and `instead`:
    where the address came from and how to do without it, for the errors."""
    named = named or f"--address {address}"
    host, _, port = address.split("://", 1)[-1].rpartition(":")  # ray://host:port (Ray Client's) too
    if not host or not port.isdigit():
        raise UserError(f"{named}: give host:port of the head node (port 6379 by default) or 'auto', "
                        f"or {instead} to run on this machine")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(
            f"{named}: nothing answers there ({e.strerror or e}); start the head node with "
            f"`ray start --head --port {port}`, or {instead} to run on this machine"
        ) from None


@ray.remote(num_cpus=0)
class Converter:
    """One per fingerprint in the cluster (a named actor): drivers that start together queue on it,
    so the first converts and the others read its result from storage."""

    @ray.method(num_returns=2)
    def prepare(self, data: DataConfig, storage: Location):
        # A UserError is returned, not raised: Ray would wrap it in a traceback-bearing RayTaskError.
        try:
            split, conversion = prepare_split(data, storage)
        except UserError as e:
            return e, None
        return conversion, split


def convert_once(data: DataConfig, storage: Location) -> tuple[Conversion, ray.ObjectRef]:
    """Convert (or find) the split on this, the driver's, node, where --data-dir is; the split
    stays in the object store, where every node's trials read it."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    name = f"quickdraw-convert-{conversion_fingerprint(data)}"
    for attempt in range(1, CONVERT_ATTEMPTS + 1):
        converter = Converter.options(
            name=name, namespace="quickdraw", get_if_exists=True, scheduling_strategy=here
        ).remote()
        _converters.append(converter)
        outcome, split = converter.prepare.remote(data, storage)
        try:
            outcome = ray.get(outcome)
        except RayActorError:
            # The converter belonged to another driver, which let go of it while our call waited
            # behind its own; a new converter finds that driver's split in storage.
            if attempt == CONVERT_ATTEMPTS:
                raise
            continue
        if isinstance(outcome, UserError):
            raise outcome
        return outcome, split


def trainable(split: Split | ray.ObjectRef, resources: dict, space: Space):
    return tune.with_resources(tune.with_parameters(train_trial, split=split, space=space), resources)


def quiet_tune() -> None:
    # Trials write their own TensorBoard logs; Ray's TensorBoardX logger would add a second set.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Keeping one checkpoint per trial makes Tune snapshot its experiment state at every checkpoint,
    # on purpose, so that a restore never points at a deleted checkpoint; without this it warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def build_tuner(config: SearchConfig, trainable, storage: Location, name: str) -> tune.Tuner:
    searched = tuple(d.name for d in config.dimensions if d.searched and d.name in DIRNAME_TAGS)
    quiet_tune()
    return tune.Tuner(
        trainable,
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            # No metric here: Tune's console would name a "current best trial" by its own rule, not the report's
            # (quickdraw.summary.best_trial); ASHA and Optuna carry the metrics they use.
            search_alg=search_algorithm(config), num_samples=config.num_samples or 1, scheduler=scheduler(config),
            trial_dirname_creator=functools.partial(trial_dirname, tagged=searched),
            reuse_actors=True,  # a trial after another of the same resources starts in the same process
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.uri,
            storage_filesystem=tune_filesystem(storage.is_local),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            sync_config=tune.SyncConfig(sync_artifacts=True),
            progress_reporter=console_reporter(config.dimensions),  # a status table, no per-trial boxes
            verbose=1,
        ),
    )


def param_space(config: SearchConfig) -> dict:
    """Tune's config of every trial: the hyperparameters as Tune's domains, and the settings all trials share."""
    hyperparameters = {d.name: tune_domain(d, config.search) for d in config.dimensions}
    return {**hyperparameters, "epochs": config.epochs, "seed": config.data.seed, "precision": config.precision,
            "compile": config.compile}


def tune_domain(dimension: Dimension, search: str):
    """A fixed value as it is; a list as a grid dimension (grid) or a choice (random, optuna); a range as Tune's
    distribution over it (the space's ranges include `high`, Tune's integer ones do not)."""
    kind, args = dimension.kind, dimension.args
    if kind == "value":
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
    searcher = OptunaSearch(metric=OBJECTIVE, mode="max", sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher


def scheduler(config: SearchConfig) -> TrialScheduler | None:
    """ASHA, which stops trials whose validation loss lags; None is Tune's FIFO."""
    if config.scheduler != "asha":
        return None
    # A trial reports once per epoch, so Tune's training_iteration is its epoch (restarts included).
    return ASHAScheduler(metric="val_loss", mode="min", time_attr="training_iteration", max_t=config.epochs,
                         grace_period=config.grace_period, reduction_factor=config.reduction_factor)


def trial_resources(config: SearchConfig, nodes: list[dict]) -> dict:
    """CPUs and GPUs per trial, from the resources of each of the cluster's nodes (`ray.nodes()`' "Resources").

    By default all trials run at once. Ray puts a fractional GPU request on one GPU, never across two, so the
    trials are spread evenly over the GPUs: ceil(trials / GPUs) on each, every one taking 1 / that of a GPU
    (4 GPUs, 15 trials: 4 a GPU, 0.25 each, not 15 / 4 = 0.2666, of which only 3 fit on a GPU). The CPUs beside
    them are per node: a node with g GPUs takes up to g times as many trials as a GPU does (no more than there
    are), and each gets that share of the node's CPUs, at most 1; with several GPU nodes, the smallest share, so
    that every node fits its trials. Without GPUs each trial takes one CPU. docs/gpus.md has worked examples."""
    trials = config.concurrent_trials
    gpu_nodes = [node for node in nodes if int(node.get("GPU", 0)) >= 1]  # a GPU is a whole device
    gpus = config.gpus_per_trial
    if gpus is None:
        total = sum(int(node["GPU"]) for node in gpu_nodes)
        gpus = _round_down(1 / math.ceil(trials / total)) if total else 0
    cpus = config.cpus_per_trial
    if cpus is None:
        cpus = 1.0
        if gpus and gpu_nodes:
            per_gpu = 10_000 // max(1, round(gpus * 10_000))  # trials that fit on a GPU, in Ray's steps of 0.0001
            cpus = min(min(1.0, _round_down(node.get("CPU", 0) / min(trials, int(node["GPU"]) * per_gpu)))
                       for node in gpu_nodes)
    return {"cpu": cpus, "gpu": gpus}


def _round_down(share: float) -> float:
    # Ray accepts fractional resources in steps of 0.0001; rounding down keeps the sum within the total. A share is
    # a node's resources (whole steps) over a number of trials, so within 1e-9 of a step it is one: floating point.
    return math.floor(share * 10_000 + 1e-9) / 10_000


def trial_dirname(trial, tagged: tuple[str, ...] = ()) -> str:
    """Folder (and TensorBoard run) name: the trial's learning rate and batch size, the `tagged` hyperparameters
    (model, dropout, weight decay) when the search varies them, and the trial's number, which makes it unique:
    lr=0.001_batch=64_00003, lr=0.001_batch=64_model=vgg-bn_00003. Short, so that TensorBoard's run lists show it
    whole. The number is the one Tune's experiment tag starts with: the searcher's count of the trials it created,
    kept across `resume` (from 0 in a grid or a random search, whose Tune trial ids end in it; from 1 under Optuna);
    Tune's trial id where a tag has none."""
    config = trial.config
    tags = "".join(f"_{DIRNAME_TAGS[name]}={config[name]:.3g}" if isinstance(config[name], float)
                   else f"_{DIRNAME_TAGS[name]}={config[name]}" for name in tagged)
    number = tag_number(trial.experiment_tag)
    unique = trial.trial_id if number is None else f"{number:05d}"
    return f"lr={config['lr']:.4g}_batch={config['batch_size']}{tags}_{unique}"
