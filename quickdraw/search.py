"""The Tuner: conversion as a Ray task, the split in the object store, the grid, resources, storage."""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from quickdraw.config import DataConfig, SearchConfig
from quickdraw.dataset import PreparedSplit, check_inputs, prepare_split
from quickdraw.errors import UserError
from quickdraw.trainable import train_trial


def run_search(config: SearchConfig) -> Path:
    """Run the whole grid and return the experiment folder, `<storage>/<name>`."""
    storage = Path(config.storage).resolve()
    name = config.name or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if (storage / name).exists():
        raise UserError(f"{storage / name} already exists: pick another --name, or omit it for a timestamp")
    check_inputs(config.data, storage)
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    prepared = convert_once(config.data, storage)
    print(f"split {prepared.split.counts()} of {len(prepared.split.classes)} classes "
          f"{'reused from' if prepared.reused else 'converted into'} {prepared.directory}")
    tuner = build_tuner(config, prepared, storage, name)
    tuner.fit()
    return storage / name


def convert_once(data: DataConfig, storage: Path) -> PreparedSplit:
    """Read, validate and split the raw files in a Ray task on this (the driver's) node, where
    --data-dir is; a second run with the same inputs reads the stored split instead."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(_prepare_split_or_error).options(scheduling_strategy=here)
    outcome = ray.get(task.remote(data, storage))
    if isinstance(outcome, UserError):
        raise outcome
    return outcome


def _prepare_split_or_error(data: DataConfig, storage: Path) -> PreparedSplit | UserError:
    # Returned, not raised: Ray would wrap a raised UserError in a traceback-bearing RayTaskError.
    try:
        return prepare_split(data, storage)
    except UserError as e:
        return e


def build_tuner(config: SearchConfig, prepared: PreparedSplit, storage: Path, name: str) -> tune.Tuner:
    resources = trial_resources(config, ray.cluster_resources())
    trainable = tune.with_resources(tune.with_parameters(train_trial, split=prepared.split), resources)
    param_space = {
        "lr": tune.grid_search(list(config.lrs)),
        "batch_size": tune.grid_search(list(config.batch_sizes)),
        "dropout": config.dropout,
        "epochs": config.epochs,
        "seed": config.data.seed,
    }
    # Trials write their own TensorBoard logs; Ray's TensorBoardX logger would add a second set.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Keeping one checkpoint per trial makes Tune snapshot its experiment state at every checkpoint,
    # on purpose, so that a restore never points at a deleted checkpoint; without this it warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            sync_config=tune.SyncConfig(sync_artifacts=True),
            verbose=1,
        ),
    )


def trial_resources(config: SearchConfig, cluster: dict) -> dict:
    """CPUs and GPUs per trial. By default all trials run at once, sharing the GPUs (at most one
    each) and the CPUs beside them; without GPUs each trial takes one CPU."""
    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = min(1.0, _round_down(cluster.get("GPU", 0) / config.num_trials))
    cpus = config.cpus_per_trial
    if cpus is None:
        cpus = min(1.0, _round_down(cluster.get("CPU", 1) / config.num_trials)) if gpus else 1.0
    return {"cpu": cpus, "gpu": gpus}


def _round_down(share: float) -> float:
    # Ray accepts fractional resources in steps of 0.0001; rounding down keeps the sum within the total.
    return math.floor(share * 10_000) / 10_000


def trial_dirname(trial) -> str:
    """Folder (and TensorBoard run) name that says the trial's learning rate and batch size."""
    return f"lr={trial.config['lr']:g}_batch={trial.config['batch_size']}_{trial.trial_id}"
