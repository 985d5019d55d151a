"""What ASHA saves: the same grid on the real drawings twice, with Tune's default FIFO scheduler and with
`--scheduler asha`, compared on total trial-epochs, wall time and the test accuracy of the best trial (chosen on
validation accuracy, as the summary chooses it).

    python benchmarks/asha_saving.py [--data-dir ../shared/quickdraw] [--epochs 8] [--grace-period 2] [--reduction-factor 3]
                                     [--lrs 0.01,0.001,0.0001] [--batch-sizes 32,64,128,256,512]

Writes benchmarks/results/asha_saving.json.
"""

from __future__ import annotations

import argparse
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
from quickdraw.space import grid_size, merge
from quickdraw.summary import best_trial


def main() -> None:
    args = parse_args()
    data = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split)
    ray.init(address="local", logging_level="WARNING")
    rows = []
    grid = merge(tuple(d for d in (args.lr, args.batch_size) if d))  # the seed's grid by default
    with tempfile.TemporaryDirectory() as storage:
        for scheduler in ("none", "asha"):
            asha = scheduler == "asha"
            config = SearchConfig(
                data=data, space=grid, epochs=args.epochs, storage=storage, name=scheduler, scheduler=scheduler,
                grace_period=args.grace_period if asha else None, reduction_factor=args.reduction_factor if asha else None,
            )
            rows.append(run_grid(config))
    table = pd.DataFrame(rows)
    table["trial_epochs / FIFO's"] = table.trial_epochs / table.trial_epochs[0]
    table["wall / FIFO's"] = table.wall_s / table.wall_s[0]
    common.save(args.output, rows, table,
                f"Grid of {grid_size(grid)} trials x {args.epochs} epochs, FIFO against ASHA (grace period "
                f"{args.grace_period}, reduction factor {args.reduction_factor:g}), on validation loss",
                floatfmt=("", ".0f", ".0f", ".0f", ".1f", "g", ".0f", ".2f", ".2f", ".2f", ".2f"))


def run_grid(config: SearchConfig) -> dict:
    started = time.perf_counter()
    experiment = run_search(config)
    wall = time.perf_counter() - started
    table, _ = load_trials(experiment)  # the summary's table, as write_report reads it; no report is written
    best = table.loc[best_trial(table)]
    return {
        "scheduler": config.scheduler, "trials": len(table), "stopped": int((table.status == "stopped").sum()),
        "trial_epochs": int(table.epochs.sum()), "wall_s": wall, "best_lr": float(best.lr),
        "best_batch_size": int(best.batch_size), "best_val_accuracy": float(best.best_val_accuracy),
        "best_test_accuracy": float(best.test_accuracy),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "asha_saving")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=3)
    for name in ("lr", "batch_size"):
        add_hyperparameter_flag(parser, HYPERPARAMETER[name])
    return parser.parse_args()


if __name__ == "__main__":
    main()
