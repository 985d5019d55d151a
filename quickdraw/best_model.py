"""The best trial's model, for use after the search: `<experiment>/best_model/` holds

  weights.pt          the network's state dict (the weights that were tested), loadable with weights_only=True
  config.json         the model's name, the trial's hyperparameters and accuracies, and where it came from
  classes.txt         the class names, one per line, in the order of the network's outputs
  preprocessing.json  how a drawing becomes the network's input (quickdraw.images)

and `BestModel` loads it to classify drawings (quickdraw.predict). The best trial is quickdraw.summary's, chosen on
validation accuracy.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from quickdraw.catalogue import BEST_VAL_ACCURACY, BEST_VAL_LOSS, DEVICE, HYPERPARAMETERS, PRECISION, TEST_ACCURACY
from quickdraw.compute import Compute, choose, has_native_bf16
from quickdraw.errors import UserError
from quickdraw.experiment import PARAMS_FILE
from quickdraw.images import PREPROCESSING
from quickdraw.model import MODELS
from quickdraw.search_record import SEARCH_FILE, SearchRecord
from quickdraw.storage import Location, first_line
from quickdraw.summary import best_trial
from quickdraw.training import CHECKPOINT_FILE, predict_logits

BEST_MODEL_DIR = "best_model"
WEIGHTS_FILE, CONFIG_FILE, CLASSES_FILE, PREPROCESSING_FILE = (
    "weights.pt", "config.json", "classes.txt", "preprocessing.json")
TRIAL_SETTINGS = ("epochs", "seed")  # besides the hyperparameters


def export_best_model(experiment: Location, trials: pd.DataFrame,
                      histories: dict[str, pd.DataFrame]) -> Location | None:
    """Write best_model/ for the best trial, chosen on validation (`trials` and `histories` as the report loaded
    them). None when no trial finished, or when the files it needs are gone (a line on stderr says which): the rest
    of the report stands without it."""
    index = best_trial(trials)
    if index is None:
        return None
    best = trials.loc[index]
    trial = experiment / best.trial_dir
    try:
        params = json.loads((trial / PARAMS_FILE).read_text())
        checkpoints = [c for c in trial.children() if c.name.startswith("checkpoint_")]
        last_result = histories[best.trial_dir].iloc[-1]
        classes = SearchRecord.read(experiment).config.data.classes
        state = load_tensors((checkpoints[-1] / CHECKPOINT_FILE).read_bytes())  # the last epoch's
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, UserError) as e:
        print(f"{experiment / BEST_MODEL_DIR} not written: the best trial's files in {trial} or {SEARCH_FILE} "
              f"cannot be read ({type(e).__name__}: {first_line(e)})", file=sys.stderr)
        return None
    config = {
        **{key: params[key] for key in (*(h.name for h in HYPERPARAMETERS), *TRIAL_SETTINGS)},
        # What the trial's --precision resolved to, and where it ran.
        PRECISION: last_result[PRECISION], "precision_asked": params[PRECISION], DEVICE: last_result[DEVICE],
        # Fractions, unrounded, as the trial reported them to Tune.
        **{m.key: float(last_result[m.key]) for m in (TEST_ACCURACY, BEST_VAL_ACCURACY, BEST_VAL_LOSS)},
        "trial": best.trial_dir, "experiment": experiment.uri,
    }
    folder = experiment / BEST_MODEL_DIR
    buffer = io.BytesIO()
    torch.save(state["progress"]["best_weights"], buffer)
    (folder / WEIGHTS_FILE).write_bytes(buffer.getvalue())
    (folder / CLASSES_FILE).write_text("\n".join(classes) + "\n")
    (folder / PREPROCESSING_FILE).write_text(json.dumps(PREPROCESSING, indent=2) + "\n")
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")  # last: its presence means complete
    return folder


def load_tensors(data: bytes):
    """What torch.save wrote, read with torch.load(weights_only=True), which refuses any pickled object but tensors
    and plain containers; and only torch.save's zip archive, not a bare pickle (torch's legacy format). Never
    un-pickles anything else: a ValueError says why the bytes were refused."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError("not a file that torch.save writes (a zip archive)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warnings about pickle protocols: the error below says it all
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError("it holds pickled objects other than tensors, and those are never un-pickled") from None


@dataclass
class BestModel:
    network: torch.nn.Module
    classes: list[str]
    config: dict

    @classmethod
    def load(cls, experiment: Location) -> BestModel:
        folder = experiment / BEST_MODEL_DIR
        if not (folder / CONFIG_FILE).is_file():
            raise UserError(
                f"{experiment} has no {BEST_MODEL_DIR}/{CONFIG_FILE}: give the folder <storage>/<name> of a search "
                f"with a finished trial (if its best_model/ was deleted, `python tune_search.py report {experiment}` "
                "exports it again)")
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            classes = (folder / CLASSES_FILE).read_text().split("\n")[:-1]
            network = MODELS[config["model"]].build(len(classes), config["dropout"])
            weights = load_tensors((folder / WEIGHTS_FILE).read_bytes())
            network.load_state_dict(weights)
        except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
            raise UserError(f"{folder} cannot be loaded ({type(e).__name__}: {first_line(e)}); "
                            f"run `python tune_search.py report {experiment}` to export it again") from None
        return cls(network, classes, config)

    def compute(self) -> Compute:
        """The GPU if there is one, else the CPU, in the precision the trial tested in (bf16 or fp32) where this
        hardware computes bf16 natively, else in fp32."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        trained = self.config[PRECISION]
        return choose(device, "fp32" if trained == "bf16" and not has_native_bf16(device) else trained)

    def describe(self, compute: Compute) -> str:
        """How the model predicts, against how it was trained: a line for the user."""
        return (f"predicting in {compute.precision} on {compute.device_name()}; the model trained in "
                f"{self.config[PRECISION]} on {self.config[DEVICE]}")

    def probabilities(self, drawings: np.ndarray, compute: Compute | None = None) -> np.ndarray:
        """Class probabilities of (N, 28, 28) uint8 drawings, computed as the trial computed its test where the
        hardware allows (see `compute`)."""
        compute = compute or self.compute()
        device = compute.device
        network = compute.prepare(self.network)
        inputs = torch.from_numpy(drawings).to(device).unsqueeze(1)
        return predict_logits(network, inputs, compute).softmax(1).cpu().numpy()
