"""`predict`: drawing files classified by an experiment's best model, one answer line per drawing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from quickdraw.best_model import BestModel
from quickdraw.errors import UserError
from quickdraw.images import read_drawings
from quickdraw.storage import Location


def predict(experiment: Location, paths: list[Path], top: int = 3) -> list[str]:
    """`name: class p%, class p%, ...` with the `top` likeliest classes of each drawing, in the order given (a .npy
    gives a line per drawing, named `file.npy[n]`). Every file is read before any answer, so a bad one costs none."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    model = BestModel.load(experiment)
    drawings = [(path, read_drawings(path)) for path in paths]  # a file given twice is answered twice
    compute = model.compute()
    print(model.describe(compute), file=sys.stderr)
    probabilities = iter(model.probabilities(np.concatenate([bitmaps for _, bitmaps in drawings]), compute))
    lines = []
    for path, bitmaps in drawings:
        for n in range(len(bitmaps)):
            name = f"{path}[{n}]" if path.suffix.lower() == ".npy" else str(path)
            lines.append(f"{name}: {top_classes(next(probabilities), model.classes, top)}")
    return lines


def top_classes(probabilities: np.ndarray, classes: list[str], count: int) -> str:
    best = probabilities.argsort()[::-1][:count]
    return ", ".join(f"{classes[i]} {100 * probabilities[i]:.2f}%" for i in best)
