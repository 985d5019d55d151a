"""Matplotlib figures of drawings and predictions, for TensorBoard and the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]"""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_matrix_figure(labels: np.ndarray, predictions: np.ndarray, classes) -> plt.Figure:
    counts = confusion_matrix(labels, predictions, len(classes))
    size = 1.0 + 0.6 * len(classes)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(counts, cmap="Blues")
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
             title=f"Test confusion matrix ({(labels == predictions).mean():.2%} correct)")
    axes.set_xticklabels(classes, rotation=45, ha="right")
    axes.set_yticklabels(classes)
    for (row, column), count in np.ndenumerate(counts):
        axes.text(column, row, count, ha="center", va="center",
                  color="white" if count > counts.max() / 2 else "black", fontsize=8)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


def misclassified_figure(drawings: np.ndarray, labels: np.ndarray, predictions: np.ndarray, classes,
                         limit: int = 36) -> plt.Figure:
    """A grid of wrongly classified test drawings (black on white), each titled true -> predicted."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    columns = 6
    rows = max(1, -(-len(wrong) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong):
        axes.imshow(255 - drawings[index], cmap="gray", vmin=0, vmax=255)
        axes.set_title(f"{classes[labels[index]]}\n-> {classes[predictions[index]]}", fontsize=8)
    figure.suptitle(f"Misclassified test drawings: {np.sum(labels != predictions)} of {len(labels)}"
                    + (f", first {len(wrong)}" if len(wrong) < np.sum(labels != predictions) else ""))
    figure.tight_layout()
    return figure
