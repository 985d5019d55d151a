"""What Ray costs a grid: its wall time against the time its trials spent in their own code, divided by the number
of trials that run at once. Runs the search as `python tune_search.py` does (same module, same Tuner) on the real
drawings, with short trials so that fixed costs show.

    python benchmarks/grid_overhead.py [--data-dir ../shared/quickdraw] [--epochs 5]

Writes benchmarks/results/grid_overhead.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import pandas as pd
import ray

from quickdraw.catalogue import HYPERPARAMETER
from quickdraw.cli import add_hyperparameter_flag
from quickdraw.config import DataConfig, SearchConfig
from quickdraw.report import write_report
from quickdraw.search import run_search
from quickdraw.space import merge


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as storage:
        config = SearchConfig(
            data=DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split),
            space=merge(tuple(d for d in (args.lr, args.batch_size) if d)), epochs=args.epochs, storage=storage,
            name="overhead",
        )
        started = time.perf_counter()
        ray.init(address="local", logging_level="WARNING")
        ray_start = time.perf_counter() - started
        slots = int(ray.cluster_resources()["CPU"])  # trials take one CPU each here
        started = time.perf_counter()
        experiment = run_search(config)
        grid = time.perf_counter() - started
        started = time.perf_counter()
        write_report(experiment)
        report = time.perf_counter() - started
        trial_seconds = trial_times(Path(experiment.path))
    ideal = trial_seconds.sum() / min(slots, len(trial_seconds))
    row = {
        "trials": len(trial_seconds), "epochs": args.epochs, "trials_at_once": min(slots, len(trial_seconds)),
        "ray_start_s": ray_start, "grid_wall_s": grid, "report_s": report,
        "sum_trial_s": float(trial_seconds.sum()), "longest_trial_s": float(trial_seconds.max()),
        "ideal_s": ideal, "overhead": grid / ideal - 1,
    }
    table = pd.DataFrame([row]).rename(columns={"overhead": "overhead (grid / ideal - 1)"})
    common.save(args.output, [row], table,
                f"Grid of {row['trials']} trials x {args.epochs} epochs; ideal = sum of trial times / trials at once",
                floatfmt=(".0f",) * 3 + (".1f",) * 6 + (".1%",))


def trial_times(experiment: Path) -> pd.Series:
    """Each trial's time in its own code (Tune's time_total_s: setup, epochs, checkpoints, test)."""
    analysis = ray.tune.ExperimentAnalysis(str(experiment))
    return pd.Series([trial.last_result["time_total_s"] for trial in analysis.trials])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "grid_overhead")
    for name in ("lr", "batch_size"):  # the seed's grid by default
        add_hyperparameter_flag(parser, HYPERPARAMETER[name])
    parser.add_argument("--epochs", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    main()
