"""What the best model a search can make is worth on hard, similar classes with few drawings: the seed CNN's best
trial against vgg-bn's, vgg-bn with an EMA of its weights, with mirrored test-time views, and an ensemble of the
search's trials, every one chosen on validation only (test accuracy reports).

Per repeat (a seed: the split, the training): three 15-trial grids at the same epochs per trial,
  seed:         the seed experiment's grid, lr {0.01, 0.001, 0.0001} x batch {32, ..., 512}
  vgg-bn:       lr {0.001, 0.002, 0.004, 0.008, 0.016} x batch {32, 64, 128}
  vgg-bn + EMA: the same grid with --ema-decay (0.99 by default)
then, from the last grid's saved probabilities (no training): its best single trial with mirrored views where
validation says they help (--ensemble 1), and the ensemble that `report` exports (--ensemble, 10 by default).

    python benchmarks/ensembles.py [--data-dir ../shared/quickdraw] [--epochs 15] [--repeats 2]
                                   [--lrs ... --batch-sizes ...] [--seed-lrs ... --seed-batch-sizes ...]

--lrs and --batch-sizes change the vgg-bn grids, --seed-lrs and --seed-batch-sizes the seed CNN's.

Writes benchmarks/results/ensembles.json, one row per model and repeat.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import common
import pandas as pd
import ray

from quickdraw.best_model import choose_model
from quickdraw.config import ENSEMBLE_SIZE, DataConfig, SearchConfig
from quickdraw.experiment import load_trials
from quickdraw.report_sections import evaluation_split
from quickdraw.search import run_search
from quickdraw.space import space_with
from quickdraw.summary import best_trial

CLASSES = "bear,cat,dog,duck"  # the seed's animals in ../shared/quickdraw with 1,000 drawings (bee has 498)
SPLIT = "2800,600,600"  # 700 / 150 / 150 per class
SEED_LRS, SEED_BATCH_SIZES = (0.01, 0.001, 0.0001), (32, 64, 128, 256, 512)
VGG_LRS, VGG_BATCH_SIZES = (0.001, 0.002, 0.004, 0.008, 0.016), (32, 64, 128)


def main() -> None:
    args = parse_args()
    ray.init(address="local", logging_level="WARNING")
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for repeat in range(args.repeats):
            data = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split, seed=repeat)
            vgg = {"model": ("vgg-bn",), "lr": args.lrs, "batch_size": args.batch_sizes}
            searches = {"seed CNN": {"model": ("seed",), "lr": args.seed_lrs, "batch_size": args.seed_batch_sizes},
                        "vgg-bn": vgg, "vgg-bn + EMA": vgg | {"ema_decay": (args.ema_decay,)}}
            for model, values in searches.items():
                config = SearchConfig(data=data, space=space_with(**values), epochs=args.epochs, storage=storage,
                                      name=f"{model.replace(' + ', '-').replace(' ', '-')}-{repeat}")
                started = time.perf_counter()
                experiment = run_search(config)
                rows.append(best_row(model, repeat, experiment, time.perf_counter() - started))
                print(rows[-1], flush=True)
            for model, size in (("+ mirrored views", 1), ("+ ensemble of the search's trials", args.ensemble)):
                rows.append(chosen_row(model, repeat, experiment, size, rows[-1]["seconds"]))
                print(rows[-1], flush=True)
    table = summarise(pd.DataFrame(rows), args.split.test)
    common.save(args.output, rows, table,
                f"{len(args.lrs) * len(args.batch_sizes)} trials x {args.epochs} epochs per vgg-bn grid, {args.repeats} seeds, {', '.join(args.classes)} "
                f"({args.split.train} / {args.split.validation} / {args.split.test} drawings); mean and range", "")


def best_row(model: str, repeat: int, experiment, seconds: float) -> dict:
    """The grid's best trial, chosen on validation, as the summary chooses it."""
    table, _ = load_trials(experiment)
    best = table.loc[best_trial(table)]
    return {"model": model, "repeat": repeat, "validation_accuracy": float(best.best_val_accuracy),
            "test_accuracy": float(best.test_accuracy), "seconds": seconds, "members": 1,
            "trial": best.trial_dir}


def chosen_row(model: str, repeat: int, experiment, size: int, search_seconds: float) -> dict:
    """The model `report --ensemble size` would export from the experiment: chosen on its validation probabilities."""
    started = time.perf_counter()
    table, _ = load_trials(experiment)
    split, why = evaluation_split(experiment)
    if split is None:
        raise SystemExit(why)
    chosen = choose_model(experiment, table, split, size)
    return {"model": model, "repeat": repeat, "validation_accuracy": chosen.validation_accuracy,
            "test_accuracy": chosen.test_accuracy, "seconds": search_seconds + time.perf_counter() - started,
            "members": len(chosen.members), "mirrored": sum(m.mirrored for m in chosen.members),
            "weights": {m.trial_dir: m.weight for m in chosen.members}}


def summarise(rows: pd.DataFrame, test_size: int) -> pd.DataFrame:
    """A line per model: accuracies and seconds (mean [min-max] over the repeats), test errors as a share of the seed
    CNN's in the same repeat, and the standard error of a test accuracy at this test size."""
    seed = rows[rows.model == "seed CNN"].set_index("repeat").test_accuracy
    rows = rows.assign(error_ratio=(100 - rows.test_accuracy) / (100 - rows.repeat.map(seed)))
    lines = []
    for model, group in rows.groupby("model", sort=False):
        accuracy = group.test_accuracy.mean() / 100
        lines.append({
            "model": model,
            "validation accuracy (%)": common.spread(group.validation_accuracy),
            "test accuracy (%)": common.spread(group.test_accuracy),
            "its standard error (points)": f"{100 * math.sqrt(accuracy * (1 - accuracy) / test_size):.1f}",
            "test errors / seed CNN's": common.spread(group.error_ratio),
            "members": common.spread(group.members, "{:.0f}"),
            "seconds": common.spread(group.seconds, "{:.0f}"),
        })
    return pd.DataFrame(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "ensembles")
    from quickdraw.cli import float_list, int_list, name_list, split_sizes

    parser.set_defaults(classes=name_list(CLASSES), split=split_sizes(SPLIT))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--ensemble", type=int, default=ENSEMBLE_SIZE)
    parser.add_argument("--lrs", type=float_list, default=VGG_LRS)
    parser.add_argument("--batch-sizes", type=int_list, default=VGG_BATCH_SIZES)
    parser.add_argument("--seed-lrs", type=float_list, default=SEED_LRS)
    parser.add_argument("--seed-batch-sizes", type=int_list, default=SEED_BATCH_SIZES)
    return parser.parse_args()


if __name__ == "__main__":
    main()
