"""Matplotlib figures of drawings and predictions, for TensorBoard and the report."""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from quickdraw.catalogue import EPOCH, TRAIN_ACCURACY, TRAIN_LOSS, VAL_ACCURACY, VAL_LOSS  # noqa: E402


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
                  color="white" if count > counts.max() / 2 else "black", fontsize=9)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


def misclassified_figure(drawings: np.ndarray, labels: np.ndarray, predictions: np.ndarray, classes,
                         limit: int = 10, columns: int = 5) -> plt.Figure:
    """Up to `limit` wrongly classified test drawings (black on white), spread evenly over the test set's mistakes
    (the set is ordered by class), each captioned with its true class and, below, the predicted one. Sized for
    TensorBoard's image cards, which scale an image, pixel for pixel, to fit their width (350 px in Images, a little
    more in Time Series) and, in Time Series, their height (about 215 px): two rows of five, 350 x 212 px, show
    there at their own size, captions 10 px high."""
    mistakes = np.flatnonzero(labels != predictions)
    wrong = mistakes[np.unique(np.linspace(0, len(mistakes) - 1, min(limit, len(mistakes))).round().astype(int))]
    rows = max(1, -(-len(wrong) // columns))
    width, title, caption, cell = 3.5, 0.24, 0.32, 0.6  # inches: the title's two lines, a caption's, a drawing
    height = title + rows * (caption + cell) + 0.04
    figure = plt.figure(figsize=(width, height), dpi=100)

    def cut(name: str) -> str:  # what fits under a drawing
        return name if len(name) <= 11 else name[:10] + "\u2026"

    for n, index in enumerate(wrong):
        row, column = divmod(n, columns)
        bottom = height - title - (row + 1) * (caption + cell)
        axes = figure.add_axes(((column + 0.5) / columns - cell / 2 / width, bottom / height, cell / width,
                                cell / height))
        show_drawing(axes, drawings[index])
        axes.set(xticks=[], yticks=[])
        axes.spines[:].set_color("lightgrey")
        axes.set_title(f"{cut(classes[labels[index]])}\n\u2192 {cut(classes[predictions[index]])}", fontsize=7.5,
                       pad=2, linespacing=1.1)
    shown = f"; {len(wrong)} shown" if len(wrong) < len(mistakes) else ""
    figure.text(0.5, 1, f"Misclassified: {len(mistakes)} of {len(labels)} test drawings{shown}", ha="center",
                va="top", fontsize=8)
    figure.text(0.5, 1 - 0.13 / height, "true class, \u2192 predicted", ha="center", va="top", fontsize=7,
                color="dimgrey")
    return figure


def accuracy_heatmap_figure(accuracy: np.ndarray, row_labels: list[str], batch_sizes, notes: np.ndarray,
                            best: tuple[int, int] | None = None, tied: bool = False) -> plt.Figure:
    """Test accuracy (%) with learning rates (per model) down and batch sizes across; grey cells have none and show
    their text from `notes` (same shape) instead. The cell `best` (row, column), the trial chosen on validation,
    is outlined in red; `tied`: it tied with another on validation accuracy (the title says how that was broken)."""
    figure, axes = plt.subplots(figsize=(2.5 + 1.2 * len(batch_sizes), 1.5 + 0.7 * len(row_labels)))
    image = axes.imshow(np.ma.masked_invalid(accuracy), cmap=plt.get_cmap("viridis").with_extremes(bad="lightgrey"))
    axes.set(xticks=range(len(batch_sizes)), yticks=range(len(row_labels)), xlabel="batch size", ylabel="learning rate",
             title="Test accuracy (%)\noutlined: the best on validation" + ("\n(tied, see the text)" if tied else ""))
    axes.set_xticklabels(batch_sizes)
    axes.set_yticklabels(row_labels)
    middle = (np.nanmin(accuracy) + np.nanmax(accuracy)) / 2
    for (row, column), value in np.ndenumerate(accuracy):
        if np.isnan(value):
            axes.text(column, row, notes[row, column], ha="center", va="center", fontsize=9)
        else:
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=9,
                      color="white" if value < middle else "black")
    if best is not None:
        row, column = best
        axes.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3,
                                     clip_on=False))
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


def validation_curves_figure(title: str, histories: dict, others: list = ()) -> plt.Figure:
    """Validation accuracy and loss per epoch, one line per trial (histories: legend label -> Tune's per-epoch
    results, with the catalogue's epoch, val_accuracy and val_loss), and the training ones dashed in the same colour where the
    results have them (train_accuracy, train_loss); `others`, more trials' results, are thin grey lines under one
    legend entry, so that the legend of a search with many trials stays readable."""
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    epoch, val_accuracy, val_loss = EPOCH.key, VAL_ACCURACY.key, VAL_LOSS.key
    for n, history in enumerate(others):
        label = f"{len(others)} other trial{'s' if len(others) > 1 else ''}" if n == 0 else None
        accuracy_axes.plot(history[epoch], 100 * history[val_accuracy], color="lightgrey", linewidth=1,
                           label=label, zorder=1)
        loss_axes.plot(history[epoch], history[val_loss], color="lightgrey", linewidth=1, zorder=1)
    for label, history in histories.items():
        line, = accuracy_axes.plot(history[epoch], 100 * history[val_accuracy], marker="o", markersize=3,
                                   label=label)
        loss_axes.plot(history[epoch], history[val_loss], marker="o", markersize=3, color=line.get_color())
        if {TRAIN_ACCURACY.key, TRAIN_LOSS.key} <= set(history.columns):
            accuracy_axes.plot(history[epoch], 100 * history[TRAIN_ACCURACY.key], linestyle="--", linewidth=1,
                               color=line.get_color())
            loss_axes.plot(history[epoch], history[TRAIN_LOSS.key], linestyle="--", linewidth=1,
                           color=line.get_color())
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy: validation solid, training dashed")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="Loss: validation solid, training dashed")
    for axes in (accuracy_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = accuracy_axes.get_legend_handles_labels()
    order = list(range(len(others) > 0, len(labels))) + ([0] if others else [])  # the grey entry last
    figure.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside right upper", fontsize=9)
    figure.suptitle(title)
    return figure


def importance_figure(shares: dict[str, float], method: str) -> plt.Figure:
    """One bar per hyperparameter: its share of the variance in validation accuracy, the largest on top."""
    figure, axes = plt.subplots(figsize=(8, 1.8 + 0.5 * len(shares)))
    bars = axes.barh(range(len(shares)), [100 * share for share in shares.values()], color="tab:blue")
    axes.bar_label(bars, labels=[f"{100 * share:.1f}%" for share in shares.values()], padding=3, fontsize=9)
    axes.set(yticks=range(len(shares)), xlim=(0, 115), xticks=range(0, 101, 20),
             xlabel="share of the variance in validation accuracy (%)",
             title="What mattered to validation accuracy\n" + textwrap.fill(method, 70))
    axes.title.set_fontsize(10)
    axes.set_yticklabels(list(shares))
    axes.invert_yaxis()
    figure.tight_layout()
    return figure


def per_class_accuracy_figure(labels: np.ndarray, predictions: np.ndarray, classes, title: str) -> plt.Figure:
    """One bar per class: the share of its test drawings classified right; the dashed line is overall."""
    matrix = confusion_matrix(labels, predictions, len(classes))
    counts, correct = matrix.sum(1), matrix.diagonal()
    accuracy = 100 * correct / np.maximum(counts, 1)
    figure, axes = plt.subplots(figsize=(8, 1.6 + 0.4 * len(classes)), layout="constrained")
    axes.barh(range(len(classes)), accuracy, color="tab:blue")
    for row, (share, count) in enumerate(zip(accuracy, counts)):  # right of 100%, where no bar or line reaches
        axes.text(102, row, f"{share:.1f}% of {count}", va="center", fontsize=9)
    axes.axvline(100 * np.mean(labels == predictions), color="black", linestyle="--",
                 label=f"all classes: {np.mean(labels == predictions):.2%}")
    axes.set(yticks=range(len(classes)), xlim=(0, 125), xticks=range(0, 101, 20), xlabel="test accuracy (%)",
             title=textwrap.fill(title, 80))
    axes.set_yticklabels(classes)
    axes.invert_yaxis()
    figure.legend(loc="outside lower center")  # below the axes: inside, it would cover a bar's label
    return figure


def probabilities_figure(drawings: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, classes,
                         columns: int = 2) -> plt.Figure:
    """Each drawing (black on white, framed and titled green when classified right, red when wrong)
    beside bars of its class probabilities: the predicted class's bar green or red, the true one blue."""
    rows = max(1, -(-len(labels) // columns))
    figure = plt.figure(figsize=(4.6 * columns, rows * (1.0 + 0.25 * len(classes))), layout="constrained")
    grid = figure.add_gridspec(rows, 2 * columns, width_ratios=[1, 1.6] * columns)
    for n, (drawing, label, shares) in enumerate(zip(drawings, labels, probabilities)):
        predicted = int(shares.argmax())
        colour = "tab:green" if predicted == label else "tab:red"
        image_axes = figure.add_subplot(grid[n // columns, 2 * (n % columns)])
        show_drawing(image_axes, drawing)
        image_axes.set(xticks=[], yticks=[])
        image_axes.spines[:].set(color=colour, linewidth=3)
        verdict = "right" if predicted == label else f"wrong: {classes[predicted]}"
        image_axes.set_title(f"{classes[label]}\n{verdict}", color=colour, fontsize=10)
        bar_colours = ["lightgrey"] * len(classes)
        bar_colours[label] = "tab:blue"
        bar_colours[predicted] = colour
        bar_axes = figure.add_subplot(grid[n // columns, 2 * (n % columns) + 1])
        bar_axes.barh(range(len(classes)), shares, color=bar_colours)
        bar_axes.set(xlim=(0, 1), yticks=range(len(classes)))
        bar_axes.set_yticklabels(classes, fontsize=9)
        bar_axes.tick_params(axis="x", labelsize=9)
        bar_axes.invert_yaxis()
    figure.suptitle(f"{len(labels)} test drawings and their class probabilities, "
                    f"{np.sum(probabilities.argmax(1) != labels)} classified wrong\n"
                    "bars: predicted class green when right, red when wrong; true class blue")
    return figure


def show_drawing(axes, drawing: np.ndarray) -> None:
    """A drawing as users drew it: black strokes on white (the bitmaps are white on black)."""
    axes.imshow(255 - drawing, cmap="gray", vmin=0, vmax=255)


def png_bytes(figure: plt.Figure) -> bytes:
    """The figure as a PNG, and the figure closed (pyplot would keep every figure alive otherwise)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
