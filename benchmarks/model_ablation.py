"""What each part of the vgg-bn recipe adds, on the real drawings: one trial per variant, at the same learning rate,
batch size and epochs, trained by the trials' own core (quickdraw.training.Trainer) and tested with its
lowest-validation-loss weights as a search's trial is.

  seed                   the seed's CNN and recipe (Adam, constant learning rate)
  vgg-bn network         the vgg-bn network alone, constant learning rate, no augmentation
  + one-cycle            and the one-cycle learning-rate schedule
  + augmentation         and random rotation, scaling and shifts
  + mirroring = vgg-bn   and left-right mirroring: the whole vgg-bn recipe

Accuracy, not speed: the numbers hold on any machine up to the nondeterminism of its arithmetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from concurrent.futures import ProcessPoolExecutor

import common  # puts this checkout's package on the path
import pandas as pd
import torch

from quickdraw.augment import Augmentation
from quickdraw.bitmaps import find_class_files
from quickdraw.compute import choose
from quickdraw.config import DataConfig
from quickdraw.dataset import split_drawings
from quickdraw.model import MODELS
from quickdraw.training import Hyperparameters, Trainer, split_tensors

VGG_BN = MODELS["vgg-bn"]
VARIANTS = {  # name -> the recipe trained
    "seed": MODELS["seed"],
    "vgg-bn network": dataclasses.replace(VGG_BN, augmentation=None, one_cycle=False),
    "+ one-cycle": dataclasses.replace(VGG_BN, augmentation=None),
    "+ augmentation": dataclasses.replace(VGG_BN, augmentation=Augmentation(mirror=False)),
    "+ mirroring = vgg-bn": VGG_BN,
}


def main() -> None:
    args = parse_args()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_variant, name, args) for name in VARIANTS]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(rows[-1], flush=True)
    common.save(args.output, rows, pd.DataFrame(rows),
                f"One trial per variant: lr {args.lr:g}, batch size {args.batch_size}, {args.epochs} epochs, "
                f"{len(args.classes)} classes, split {args.split}")


def run_variant(name: str, args) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split)
    split = split_drawings(config, find_class_files(config.data_dir, config.classes))
    compute = choose(torch.device("cpu"), "auto")
    data = split_tensors(split, compute.device)
    hyperparameters = Hyperparameters(lr=args.lr, batch_size=args.batch_size, dropout=0.5, epochs=args.epochs)
    trainer = Trainer(VARIANTS[name], len(split.classes), hyperparameters, len(split.y_train), compute)
    started = time.perf_counter()
    while not trainer.finished:
        trainer.run_epoch(data)
    seconds = (time.perf_counter() - started) / args.epochs
    wrong = int((trainer.best_probabilities(data["test"][0]).argmax(1) != split.y_test).sum())
    progress = trainer.progress
    return {"variant": name, "best_val_accuracy": 100 * progress.best_val_accuracy,
            "test_accuracy": 100 * (1 - wrong / len(data["test"][1])), "test_errors": wrong,
            "seconds_per_epoch": round(seconds, 1), "val_loss": round(progress.best_val_loss, 4)
            if math.isfinite(progress.best_val_loss) else None}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_data_flags(parser, "model_ablation")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once, one CPU thread each (default 2)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
