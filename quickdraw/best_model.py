"""The search's best model, for use after the search: which trials make it, and `<experiment>/best_model/`, which holds

  weights_<k>.pt      each member's state dict (the weights its trial tested), loadable with weights_only=True
  weights_<k>.safetensors  the same, as safetensors
  model.onnx          the whole model as one ONNX graph, bitmaps to probabilities (quickdraw.portable)
  config.json         the members (their trials, weights in the average, views, hyperparameters and accuracies),
                      the model's validation and test accuracy, model.onnx's input, output and classes, where it
                      came from, and each other file's SHA-256
  classes.txt         the class names, one per line, in the order of the networks' outputs
  preprocessing.json  how a drawing becomes a network's input (quickdraw.images)

and `BestModel` loads it to classify drawings (quickdraw.predict). The members are chosen by ensemble selection on
validation probabilities (quickdraw.ensemble); one member is the single best trial.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quickdraw import strict_json
from quickdraw.catalogue import BEST_VAL_ACCURACY, BEST_VAL_LOSS, DEVICE, HYPERPARAMETERS, PRECISION, TEST_ACCURACY
from quickdraw.compute import Compute, choose, has_native_bf16
from quickdraw.dataset import Split
from quickdraw.ensemble import ChosenModel, Member, average, greedy_selection, mirrored_helps
from quickdraw.errors import UserError
from quickdraw.experiment import PARAMS_FILE
from quickdraw.images import PREPROCESSING
from quickdraw.model import MODELS
from quickdraw.onnx_export import onnx_model, safetensors_weights
from quickdraw.portable import ONNX_FILE, model_card
from quickdraw.predictions import PREDICTED_PARTS, PREDICTIONS_FILE, Predictions
from quickdraw.safe_files import MODEL_LIMIT
from quickdraw.search_record import SearchRecord
from quickdraw.storage import Location, first_line
from quickdraw.summary import best_trial
from quickdraw.training import CHECKPOINT_FILE, predict_probabilities

BEST_MODEL_DIR = "best_model"
CONFIG_FILE, CLASSES_FILE, PREPROCESSING_FILE = "config.json", "classes.txt", "preprocessing.json"
WEIGHTS_PREFIX = "weights_"  # weights_0.pt, weights_0.safetensors, weights_1.pt, ...: the members' in config.json's order
TRIAL_SETTINGS = ("epochs", "seed")  # besides the hyperparameters
SHA256 = "sha256"  # config.json's key: each other file of best_model/ by name, its SHA-256 in hex


def choose_model(experiment: Location, trials: pd.DataFrame, split: Split | None, size: int,
                 no_split: str = "") -> ChosenModel | None:
    """The model best_model/ holds: an ensemble of up to `size` selection steps over the finished trials, chosen on
    their validation probabilities (`split` holds the labels; None when it cannot be read, `no_split` says why).
    The best trial alone when there is nothing to choose from; None when no trial finished."""
    index = best_trial(trials)
    if index is None:
        return None
    best = trials.loc[index]
    if split is None:
        return single_trial(best, size, f"the best trial alone, as {no_split}")
    candidates, left_out = read_candidates(experiment, trials, split)
    if not candidates:
        more = f", and {len(left_out) - 1} more" if len(left_out) > 1 else ""
        return single_trial(best, size, f"the best trial alone, as no finished trial's {PREDICTIONS_FILE} can be "
                                        f"read ({left_out[0]}{more})")
    chosen = greedy_selection([view["validation"] for _, _, view in candidates], split.y_validation, size)
    weights = list(chosen.values())
    probabilities = {part: average([candidates[i][2][part] for i in chosen], weights) for part in PREDICTED_PARTS}
    accuracy = {part: 100 * float((probabilities[part].argmax(1) == split.part(part)[1]).mean())
                for part in PREDICTED_PARTS}
    members = tuple(Member(candidates[i][0], weight, candidates[i][1]) for i, weight in chosen.items())
    note = f"left out of the selection: {'; '.join(left_out)}" if left_out else ""
    return ChosenModel(members, accuracy["validation"], accuracy["test"], size, probabilities["test"], note)


def read_candidates(experiment: Location, trials: pd.DataFrame,
                    split: Split) -> tuple[list[tuple[str, bool, dict]], list[str]]:
    """Each finished trial, in the table's order (ties go to the first), whose predictions.npz can be read, as (its
    folder, whether its mirrored view is taken, the view's probabilities by part); and why the others cannot."""
    shapes = {part: (len(split.part(part)[1]), len(split.classes)) for part in PREDICTED_PARTS}
    candidates, left_out = [], []
    for trial_dir in trials.trial_dir[trials.status == "finished"]:
        try:
            predictions = Predictions.read(experiment / trial_dir / PREDICTIONS_FILE, shapes)
        except ValueError as e:
            left_out.append(str(e))
            continue
        mirrored = bool(predictions.mirrored) and mirrored_helps(
            predictions.plain["validation"], predictions.mirrored["validation"], split.y_validation)
        candidates.append((trial_dir, mirrored, predictions.view(mirrored)))
    return candidates, left_out


def single_trial(row: pd.Series, size: int, note: str) -> ChosenModel:
    return ChosenModel((Member(row.trial_dir, 1.0, False),), row[BEST_VAL_ACCURACY.key], row[TEST_ACCURACY.key], size,
                       note=note)


def best_model_files(experiment: Location, chosen: ChosenModel | None,
                     histories: dict[str, pd.DataFrame]) -> dict[str, bytes] | None:
    """The files of best_model/ for the chosen model (`histories` as the report loaded them), by name, config.json
    last. Every member's files are read first: when one is missing or damaged, a line on stderr says which, and None
    is returned (best_model/ stays as it was; the rest of the report stands without it)."""
    if chosen is None:
        return None
    try:
        classes = SearchRecord.read(experiment).config.data.classes
        members = [read_member(experiment, member, f"{WEIGHTS_PREFIX}{k}", len(classes), histories)
                   for k, member in enumerate(chosen.members)]
        config = model_config(experiment, chosen, [entry for entry, _, _ in members], classes)
        files = {**weights_files(members), CLASSES_FILE: ("\n".join(classes) + "\n").encode(),
                 PREPROCESSING_FILE: (strict_json.dumps(PREPROCESSING, indent=2) + "\n").encode()}
        files[ONNX_FILE] = (previous_onnx(experiment, config, files)
                            or onnx_model([network for _, _, network in members], config["members"], classes))
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, UserError) as e:  # the exporter's: RuntimeError
        print(f"{experiment / BEST_MODEL_DIR} not written (left as it was): {first_line(e)}", file=sys.stderr)
        return None
    config[SHA256] = {name: sha256(data) for name, data in sorted(files.items())}
    # Last: its presence means complete. A number no trial measured (NaN) is null.
    return {**files, CONFIG_FILE: (strict_json.dumps(config, indent=2) + "\n").encode()}


def model_config(experiment: Location, chosen: ChosenModel, entries: list[dict], classes: list[str]) -> dict:
    """config.json's content but the files' SHA-256, as strict JSON takes it (a number no trial measured is null)."""
    first = entries[0]
    config = {
        "members": entries,
        # In percent in the report; fractions here, as the trials reported theirs to Tune.
        "validation_accuracy": chosen.validation_accuracy / 100, "test_accuracy": chosen.test_accuracy / 100,
        "ensemble_size": chosen.size,
        "onnx": model_card(classes),
        # What the first member's --precision resolved to, and where it ran: predict computes so where it can.
        PRECISION: first[PRECISION], "precision_asked": first["precision_asked"], DEVICE: first[DEVICE],
        "experiment": experiment.uri,
    }
    return strict_json.nulled(config)


def previous_onnx(experiment: Location, config: dict, files: dict[str, bytes]) -> bytes | None:
    """The model.onnx that best_model/ holds when exporting again would give the same model (the same config.json, the
    same weights and files, and model.onnx as config.json's SHA-256 says it was written), else None. The exporter
    takes seconds; a report of a search that trained no further chooses the same model."""
    folder = experiment / BEST_MODEL_DIR
    try:
        previous = json.loads((folder / CONFIG_FILE).read_text())
        hashes = previous.pop(SHA256)
        same_files = all(hashes.get(name) == sha256(data) for name, data in files.items())
        if not same_files or previous != json.loads(strict_json.dumps(config)):
            return None
        onnx = (folder / ONNX_FILE).read_bytes(MODEL_LIMIT)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return onnx if hashes.get(ONNX_FILE) == sha256(onnx) else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish_best_model(experiment: Location, files: dict[str, bytes]) -> Location:
    """best_model/ replaced as a whole by a folder of `files` (Location.write_folder): a kill leaves the old model or
    the new one, never a mix, and a link there is replaced, never written through."""
    folder = experiment / BEST_MODEL_DIR

    def write(staged: Path) -> None:
        for name, data in files.items():
            (staged / name).write_bytes(data)

    folder.write_folder(write, last=CONFIG_FILE, replace=True)
    return folder


def weights_files(members: list[tuple[dict, dict, torch.nn.Module]]) -> dict[str, bytes]:
    """The bytes of each member's weights files, by file name."""
    files = {}
    for entry, weights, _ in members:
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        files[entry["weights_file"]] = buffer.getvalue()
        files[entry["safetensors_file"]] = safetensors_weights(weights)
    return files


def read_member(experiment: Location, member: Member, weights_name: str, num_classes: int,
                histories: dict[str, pd.DataFrame]) -> tuple[dict, dict[str, torch.Tensor], torch.nn.Module]:
    """A member's entry in config.json (its weights to be written as `weights_name`.pt and .safetensors), its weights
    and its network holding them; a ValueError that names the trial and the file when they cannot be loaded."""
    trial = experiment / member.trial_dir
    file = trial / PARAMS_FILE
    try:
        params = json.loads(file.read_text())
        checkpoints = [c for c in trial.children() if c.name.startswith("checkpoint_")]
        if not checkpoints:
            file = trial
            raise ValueError("the folder holds no checkpoint")
        file = checkpoints[-1] / CHECKPOINT_FILE
        state = load_tensors(file.read_bytes(MODEL_LIMIT))  # the last epoch's
        weights = state["progress"]["best_weights"]
        network = MODELS[params["model"]].build(num_classes, params["dropout"])
        network.load_state_dict(weights)
        last_result = histories[member.trial_dir].iloc[-1]
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, TypeError) as e:
        raise ValueError(f"the member {member.trial_dir} cannot be read from {file} ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    entry = {
        "weights_file": f"{weights_name}.pt", "safetensors_file": f"{weights_name}.safetensors",
        "weight": member.weight, "mirrored": member.mirrored, "trial": member.trial_dir,
        **{key: params[key] for key in (*(h.name for h in HYPERPARAMETERS), *TRIAL_SETTINGS)},
        # What the trial's --precision resolved to, and where it ran.
        PRECISION: last_result[PRECISION], "precision_asked": params[PRECISION], DEVICE: last_result[DEVICE],
        # Fractions, unrounded, as the trial reported them to Tune.
        **{m.key: float(last_result[m.key]) for m in (TEST_ACCURACY, BEST_VAL_ACCURACY, BEST_VAL_LOSS)},
    }
    return entry, weights, network


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


def exported_folder(experiment: Location) -> Location:
    """The experiment's best_model/, once an export completed it (config.json is written last); a UserError that says
    what to give, or how to export it again, when it is not there."""
    folder = experiment / BEST_MODEL_DIR
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(
            f"{experiment} has no {BEST_MODEL_DIR}/{CONFIG_FILE}: give the folder <storage>/<name> of a search "
            f"with a finished trial (if its best_model/ was deleted, `python tune_search.py report {experiment}` "
            "exports it again)")
    return folder


@dataclass
class BestModel:
    networks: list[torch.nn.Module]  # config["members"]'s, in its order
    classes: list[str]
    config: dict

    @classmethod
    def load(cls, experiment: Location) -> BestModel:
        folder = exported_folder(experiment)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            classes = (folder / CLASSES_FILE).read_text().split("\n")[:-1]
            networks = []
            for member in config["members"]:
                network = MODELS[member["model"]].build(len(classes), member["dropout"])
                network.load_state_dict(load_tensors((folder / member["weights_file"]).read_bytes(MODEL_LIMIT)))
                networks.append(network)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
            raise UserError(f"{folder} cannot be loaded ({type(e).__name__}: {first_line(e)}); "
                            f"run `python tune_search.py report {experiment}` to export it again") from None
        return cls(networks, classes, config)

    @property
    def members(self) -> list[dict]:
        return self.config["members"]

    def compute(self) -> Compute:
        """The GPU if there is one, else the CPU, in the precision the trials tested in (bf16 or fp32) where this
        hardware computes bf16 natively, else in fp32."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        trained = self.config[PRECISION]
        return choose(device, "fp32" if trained == "bf16" and not has_native_bf16(device) else trained)

    def describe(self, compute: Compute) -> str:
        """How the model predicts, against how it was trained: a line for the user."""
        several = f"with {len(self.members)} networks, averaged, " if len(self.members) > 1 else ""
        return (f"predicting {several}in {compute.precision} on {compute.device_name()}; the model trained in "
                f"{self.config[PRECISION]} on {self.config[DEVICE]}")

    def probabilities(self, drawings: np.ndarray, compute: Compute | None = None) -> np.ndarray:
        """Class probabilities of (N, 28, 28) uint8 drawings: each member's, computed as its trial computed its
        test where the hardware allows (see `compute`), in its view, then averaged with the members' weights."""
        compute = compute or self.compute()
        inputs = torch.from_numpy(drawings).to(compute.device).unsqueeze(1)
        each = [predict_probabilities(compute.prepare(network), inputs, compute, member["mirrored"]).cpu().numpy()
                for network, member in zip(self.networks, self.members)]
        return average(each, [member["weight"] for member in self.members])
