"""What each part of the vgg-bn recipe adds, on the real drawings: one trial per variant, at the same learning rate,
batch size and epochs, each tested with its lowest-validation-loss weights as a search's trial is.

  seed                   the seed's CNN and recipe (Adam, constant learning rate)
  vgg-bn network         the vgg-bn network alone, constant learning rate, no augmentation
  + one-cycle            and the one-cycle learning-rate schedule
  + augmentation         and random rotation, scaling and shifts
  + mirroring = vgg-bn   and left-right mirroring: the whole vgg-bn recipe

Accuracy, not speed: the numbers hold on any machine up to the nondeterminism of its arithmetic.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor

import common  # puts this checkout's package on the path
import pandas as pd
import torch

from quickdraw import augment
from quickdraw.bitmaps import find_class_files
from quickdraw.compute import choose
from quickdraw.config import DataConfig
from quickdraw.dataset import PARTS, split_drawings
from quickdraw.model import MODELS
from quickdraw.trainable import Progress, Training, evaluate, one_cycle, predict_logits, to_device, train_epoch

VARIANTS = {  # name -> (model, one-cycle, augmentation, mirroring)
    "seed": ("seed", False, False, False),
    "vgg-bn network": ("vgg-bn", False, False, False),
    "+ one-cycle": ("vgg-bn", True, False, False),
    "+ augmentation": ("vgg-bn", True, True, False),
    "+ mirroring = vgg-bn": ("vgg-bn", True, True, True),
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
    model_name, cycled, augmented, mirrored = VARIANTS[name]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    augment.MIRROR = mirrored
    config = DataConfig(data_dir=args.data_dir, classes=args.classes, split=args.split)
    split = split_drawings(config, find_class_files(config.data_dir, config.classes))
    compute = choose(torch.device("cpu"), "auto")
    data = {part: to_device(split.part(part), compute.device) for part in PARTS}
    model = MODELS[model_name].build(len(split.classes), 0.5)
    network = compute.prepare(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    training = Training(optimizer, augmented, one_cycle(optimizer, settings, len(split.y_train)) if cycled else None)
    progress, started = Progress(), time.perf_counter()
    for _ in range(args.epochs):
        train_epoch(network, training, *data["train"], args.batch_size, compute)
        progress.record(*evaluate(network, *data["validation"], compute), model)
    seconds = (time.perf_counter() - started) / args.epochs
    model.load_state_dict(progress.best_weights)
    wrong = int((predict_logits(network, data["test"][0], compute).argmax(1) != data["test"][1]).sum())
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
