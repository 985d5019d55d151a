"""What a search algorithm buys for the same budget of trials: the seed's grid (15 trials) against Tune's random
search, Optuna's TPE sampler and Optuna with ASHA, 15 trials each, sampling the space of spaces/example.yaml (learning
rate, batch size, dropout, weight decay), on the six real classes, repeated with different seeds (the seed sets
the split, the training and the sampler). For each run: the best validation accuracy reached (the trial chosen as
the summary chooses it), that trial's test accuracy, the trial-epochs spent and the wall time.

    python benchmarks/search_efficiency.py [--data-dir ../shared/quickdraw] [--epochs 8] [--repeats 3]
                                           [--lrs 0.01,0.001,0.0001] [--batch-sizes 32,64,128,256,512]

The grid's size (--lrs x --batch-sizes, the seed's 15 by default) is every method's budget of trials.

Writes benchmarks/results/search_efficiency.json, one row per method and repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import common
import pandas as pd
import ray

from quickdraw.catalogue import HYPERPARAMETER
from quickdraw.cli import add_hyperparameter_flag
from quickdraw.config import DataConfig, SearchConfig
from quickdraw.experiment import load_trials
from quickdraw.search import run_search
from quickdraw.space import Space, grid_size, load_space, merge
from quickdraw.summary import best_trial

SPACE_FILE = common.REPO / "spaces" / "example.yaml"
METHODS = {  # name -> the settings that differ from the seed's grid
    "grid": {},
    "random": {"search": "random"},
    "optuna": {"search": "optuna"},
    "optuna + asha": {"search": "optuna", "scheduler": "asha"},
}


def main() -> None:
    args = parse_args()
    ray.init(address="local", logging_level="WARNING")
    rows = []
    grid = merge(tuple(d for d in (args.lr, args.batch_size) if d))
    with tempfile.TemporaryDirectory() as storage:
        for repeat in range(args.repeats):
            data = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split, seed=repeat)
            for method, settings in METHODS.items():
                config = method_config(data, grid, settings, args.epochs, storage, f"{method}-{repeat}")
                rows.append({"method": method, "repeat": repeat, **run(config)})
                print(rows[-1], flush=True)
    common.save(args.output, rows, summarise(pd.DataFrame(rows)),
                f"{grid_size(grid)} trials x {args.epochs} epochs per method, {args.repeats} seeds "
                "(mean, and min-max in brackets)",
                floatfmt="")


def method_config(data: DataConfig, grid: Space, settings: dict, epochs: int, storage: str, name: str) -> SearchConfig:
    """The grid, or a sampler over the example space with the grid's budget of trials."""
    config = SearchConfig(data=data, space=grid, epochs=epochs, storage=storage, name=name.replace(" + ", "-"),
                          **settings)
    if config.search == "grid":
        return config
    return dataclasses.replace(config, space=merge((), load_space(SPACE_FILE)), space_file=str(SPACE_FILE),
                               num_samples=grid_size(grid))


def run(config: SearchConfig) -> dict:
    started = time.perf_counter()
    experiment = run_search(config)
    wall = time.perf_counter() - started
    table, _ = load_trials(experiment)
    best = table.loc[best_trial(table)]
    return {"trials": len(table), "trial_epochs": int(table.epochs.sum()),
            "best_val_accuracy": float(best.best_val_accuracy), "test_accuracy": float(best.test_accuracy),
            "wall_seconds": wall, "best_lr": float(best.lr), "best_batch_size": int(best.batch_size)}


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per method: mean and range over the repeats, and trial-epochs and wall time over the grid's."""
    grid = rows[rows.method == "grid"].set_index("repeat")
    rows = rows.assign(epochs_ratio=rows.trial_epochs / rows.repeat.map(grid.trial_epochs),
                       wall_ratio=rows.wall_seconds / rows.repeat.map(grid.wall_seconds),
                       reached_grid=rows.best_val_accuracy >= rows.repeat.map(grid.best_val_accuracy))
    lines = []
    for method, group in rows.groupby("method", sort=False):
        lines.append({
            "method": method,
            "best validation accuracy (%)": common.spread(group.best_val_accuracy),
            "its test accuracy (%)": common.spread(group.test_accuracy),
            "trial-epochs": common.spread(group.trial_epochs, "{:.0f}"),
            "trial-epochs / grid's": common.spread(group.epochs_ratio),
            "wall / grid's": common.spread(group.wall_ratio),
            "reached the grid's best": f"{group.reached_grid.sum()} of {len(group)}",
        })
    return pd.DataFrame(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "search_efficiency")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    for name in ("lr", "batch_size"):  # the grid's, the seed's by default
        add_hyperparameter_flag(parser, HYPERPARAMETER[name])
    return parser.parse_args()


if __name__ == "__main__":
    main()
