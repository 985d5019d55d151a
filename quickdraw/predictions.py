"""predictions.npz, which each finished trial writes beside its event file: the class probabilities that its tested
weights (those with the lowest validation loss) give the validation and the test drawings, and, for a network
trained on mirrored drawings, those of the mean over each drawing and its mirror image. The report's figures show
them and ensembles are chosen from them (quickdraw.ensemble), so no network runs again. Plain arrays, read without
pickle."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quickdraw.safe_files import PREDICTIONS_LIMIT
from quickdraw.storage import Location, first_line

PREDICTIONS_FILE = "predictions.npz"
PREDICTED_PARTS = ("validation", "test")
MIRRORED = "_mirrored"  # the suffix of a part's mirrored view: validation_mirrored


@dataclass(frozen=True)
class Predictions:
    """(drawings, classes) float32 probabilities by part: `plain` of the drawings as they are, `mirrored` of the
    mean over each drawing and its mirror image (empty when the network never trained on mirror images)."""

    plain: dict[str, np.ndarray]
    mirrored: dict[str, np.ndarray]

    def view(self, mirrored: bool) -> dict[str, np.ndarray]:
        return self.mirrored if mirrored else self.plain

    def write(self, path: Path) -> None:
        arrays = self.plain | {part + MIRRORED: probabilities for part, probabilities in self.mirrored.items()}
        np.savez_compressed(path, **arrays)

    @classmethod
    def read(cls, file: Location, shapes: dict[str, tuple[int, int]]) -> Predictions:
        """The file's predictions, each part of the shape `shapes` gives it (the split's drawings by its classes); a
        ValueError that says why when the file is missing, unreadable or of other shapes."""
        if not file.is_file():
            raise ValueError(f"{file} is missing")
        try:
            with np.load(io.BytesIO(file.read_bytes(PREDICTIONS_LIMIT)), allow_pickle=False) as arrays:
                found = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"{file} cannot be read ({first_line(e)})") from None
        plain = {part: found.get(part) for part in PREDICTED_PARTS}
        mirrored = {part: found[part + MIRRORED] for part in PREDICTED_PARTS if part + MIRRORED in found}
        for name, probabilities in [*plain.items(), *((p + MIRRORED, a) for p, a in mirrored.items())]:
            shape = shapes[name.removesuffix(MIRRORED)]
            if probabilities is None or probabilities.shape != shape:
                held = "none" if probabilities is None else f"{probabilities.shape}"
                raise ValueError(f"{file} holds {held} {name} probabilities, but the split has {shape[0]} {name} "
                                 f"drawings of {shape[1]} classes")
        if mirrored and len(mirrored) != len(PREDICTED_PARTS):
            raise ValueError(f"{file} holds mirrored probabilities of some parts only")
        return cls(plain, mirrored)
