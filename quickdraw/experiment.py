"""Reading an experiment folder, `<storage>/<name>`, as data: Ray Tune's experiment state (experiment_state-<time>.json)
and its folder per trial (params.json, result.json), where each trial also writes predictions.npz
(quickdraw.predictions); and checking that what Tune's restore reads is there and whole. Plain JSON and NumPy files only, never a pickle (the state's
pickled fields stay undecoded hex), and no Ray: `report` and `predict` work on folders copied from anywhere.
search.json is quickdraw.search_record's."""

from __future__ import annotations

import json
import pickletools
import sys
from pathlib import PurePosixPath

import pandas as pd

from quickdraw.catalogue import DEVICE, HYPERPARAMETERS, PRECISION
from quickdraw.dataset import DATASETS_DIR, MANIFEST_FILE
from quickdraw.errors import UserError
from quickdraw.safe_files import LOG_LIMIT
from quickdraw.search_record import SEARCH_FILE, SearchRecord
from quickdraw.space import Dimension, Space
from quickdraw.storage import Location, first_line
from quickdraw.summary import trial_row, trial_table

RESULTS_FILE = "result.json"  # in each trial folder, Tune's: a JSON line per reported result
PARAMS_FILE = "params.json"  # in each trial folder, Tune's: the trial's config
STATE_PREFIX, STATE_SUFFIX = "experiment_state-", ".json"  # Tune's experiment state, one file per save
TUNER_FILE = "tuner.pkl"  # Tune's: the Tuner, pickled; `resume` needs it
# Tune's saved search algorithm and callbacks, pickled (whatever the suffix), one file per save; its restore
# un-pickles the newest of each kind (their names sort by time).
SAVED_STATE_PREFIXES = ("basic-variant-state-", "search_gen_state-", "searcher-state-", "callback-states-")


def split_location(experiment: Location) -> Location:
    """Where the search's stored split is: where search.json says, or, when the storage was moved or copied since,
    beside the experiment, where the search stored it (<storage>/datasets/<fingerprint>). A UserError when neither
    holds it."""
    recorded = SearchRecord.read(experiment).dataset
    beside = experiment.parent / DATASETS_DIR / PurePosixPath(recorded.partition("?")[0]).name  # a path's or URI's
    for place in (recorded, beside.uri):
        try:
            location = Location.parse(place)
            if (location / MANIFEST_FILE).is_file():
                return location
        except (OSError, UserError):  # a bucket that is gone, or out of reach, or that these credentials cannot read
            continue
    raise UserError(f"the split that {experiment / SEARCH_FILE} names is gone: not at {recorded}, nor beside the "
                    f"experiment at {beside}; copy the search's {DATASETS_DIR}/ folder beside the experiment")


def check_resumable(experiment: Location) -> SearchRecord:
    """search.json's record, once what Ray Tune's restore reads is there and whole; otherwise a UserError that names
    what is missing or damaged. (Whether the split is whole, load_split checks.)"""
    if not (experiment / SEARCH_FILE).is_file():
        raise UserError(f"resume {experiment}: no {SEARCH_FILE} there; give the folder <storage>/<name> of a search")
    if not (experiment / TUNER_FILE).is_file():
        if not any(f.name.startswith(STATE_PREFIX) for f in experiment.children()):
            raise UserError(f"resume {experiment}: the search stopped before its first trial started; run the same "
                            "command again, which starts it over in this folder")
        raise unresumable(experiment, f"{TUNER_FILE} is missing, and Ray Tune cannot continue a search without it")
    try:
        record = SearchRecord.read(experiment)
    except UserError as e:
        raise unresumable(experiment, str(e)) from None
    if not whole_pickle((experiment / TUNER_FILE).read_bytes(LOG_LIMIT)):
        raise unresumable(experiment, f"{experiment / TUNER_FILE} is damaged (cut short or overwritten)")
    try:
        tune_state(experiment)
    except DamagedState as e:
        raise unresumable(experiment, f"{e}, and Ray Tune cannot continue from it") from None
    except UserError:
        raise unresumable(experiment, "it holds no Ray Tune experiment state (experiment_state-*.json)") from None
    if damaged := damaged_saved_state(experiment):
        raise unresumable(experiment, f"{damaged} is damaged (cut short), and Ray Tune cannot continue from it")
    return record


def unresumable(experiment: Location, problem: str) -> UserError:
    return UserError(f"resume {experiment}: {problem}; `python tune_search.py report {experiment}` still lists its "
                     "trials from their folders")


def damaged_saved_state(experiment: Location) -> Location | None:
    """The newest saved search algorithm or callback state of a kind, when it is not one whole pickle (Ray uploads
    them by copying, which a full disk or a kill can cut short)."""
    children = experiment.children()
    for prefix in SAVED_STATE_PREFIXES:
        saved = [f for f in children if f.name.startswith(prefix)]  # sorted by name
        if saved and not whole_pickle(saved[-1].read_bytes(LOG_LIMIT)):
            return saved[-1]
    return None


def whole_pickle(data: bytes) -> bool:
    """Whether `data` is one whole pickle, read opcode by opcode (pickletools), never run."""
    try:
        return bool(data) and list(pickletools.genops(data))[-1][0].name == "STOP"
    except (ValueError, EOFError, KeyError, IndexError):
        return False


def space_of(experiment: Location, trials: pd.DataFrame) -> tuple[str, Space]:
    """How the search drew its trials ("grid", "random" or "optuna") and the space it drew them from, as search.json
    records them. When search.json cannot be read, the report still stands on the trials alone: a grid of the values
    they took."""
    try:
        config = SearchRecord.read(experiment).config
        return config.search, config.space
    except (OSError, UserError):
        return "grid", tuple(taken_values(trials, h.name) for h in HYPERPARAMETERS)


def taken_values(trials: pd.DataFrame, name: str) -> Dimension:
    """A hyperparameter as the values the trials took: a list of them, or the one value."""
    values = tuple(sorted(trials[name].dropna().unique().tolist()))
    return Dimension(name, "value", values) if len(values) == 1 else Dimension(name, "values", values)


def load_trials(experiment: Location) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The results table (quickdraw.summary's, with each trial's id, number and folder: trial_id, trial_number and
    trial_dir), and each trial's per-epoch results by folder name (trials that never reported have none). When
    Tune's experiment state cannot be read (a full disk truncated it), from the trial folders alone, saying so."""
    try:
        state = tune_state(experiment)
    except DamagedState as e:
        print(f"{e}; the trials are read from their own folders instead", file=sys.stderr)
        return trials_from_folders(experiment)
    except UserError:
        if not trial_folders(experiment):
            raise
        print(f"{experiment} holds no Ray Tune experiment state; the trials are read from their own folders instead",
              file=sys.stderr)
        return trials_from_folders(experiment)
    rows, histories = [], {}
    for position, trial in enumerate(state["trial_data"], start=1):
        state, run = (json.loads(part) for part in trial)
        folder = state["relative_logdir"]
        history = read_results(experiment / folder)
        # The trial's own result log is newer than the experiment state when a driver stopped early.
        last = history[-1] if history else (run.get("last_result") or {})
        rows.append({**trial_row(state["config"], last, state["status"]),
                     "trial_id": state["trial_id"], "trial_number": trial_number(state, position), "trial_dir": folder})
        if history:
            histories[folder] = pd.DataFrame(history)
    return trial_table(rows), histories


def trials_from_folders(experiment: Location) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """load_trials from each trial folder's params.json and result.json, without Tune's state: a trial that was
    tested is finished, one whose last result says it diverged diverged, any other unfinished (whether ASHA stopped it
    is in the state only)."""
    rows, histories = [], {}
    for position, folder in enumerate(trial_folders(experiment), start=1):
        history = read_results(folder)
        config = json.loads((folder / PARAMS_FILE).read_text())
        number = folder.name.rpartition("_")[2]  # quickdraw.search.trial_dirname ends with the trial's number
        rows.append({**trial_row(config, history[-1] if history else {}, "UNKNOWN"), "trial_id": folder.name,
                     "trial_number": int(number) if number.isdigit() else position, "trial_dir": folder.name})
        if history:
            histories[folder.name] = pd.DataFrame(history)
    return trial_table(rows), histories


def trial_folders(experiment: Location) -> list[Location]:
    return [f for f in experiment.children() if (f / PARAMS_FILE).is_file()]


def what_ran(histories: dict[str, pd.DataFrame]) -> dict[str, int]:
    """How many trials ran in each precision on each device, as they reported it: {"bf16 on cpu": 15}. Trials that
    never reported it are not counted."""
    counts: dict[str, int] = {}
    for history in histories.values():
        if {PRECISION, DEVICE} <= set(history.columns):
            last = history.iloc[-1]
            ran = f"{last[PRECISION]} on {last[DEVICE]}"
            counts[ran] = counts.get(ran, 0) + 1
    return counts


def trial_number(state: dict, position: int) -> int:
    """The order in which the search created the trial (tag_number); the state lists trials in no such order."""
    number = tag_number(state.get("experiment_tag", ""))
    return position if number is None else number


def tag_number(experiment_tag) -> int | None:
    """The number Tune's experiment tag starts with ("3_lr=0.01,..."): the order in which the search created the
    trial, for a grid and for a searcher alike, whose trial ids are random; None for a tag without one."""
    number = str(experiment_tag).partition("_")[0]
    return int(number) if number.isdigit() else None


def tune_state(experiment: Location) -> dict:
    """Tune's newest experiment state (its file names sort by time) as plain JSON."""
    states = [f for f in experiment.children() if f.name.startswith(STATE_PREFIX) and f.name.endswith(STATE_SUFFIX)]
    if not states:
        raise UserError(
            f"{experiment} holds no Ray Tune experiment: give the folder <storage>/<name> that a search wrote"
        )
    try:
        return json.loads(states[-1].read_text(LOG_LIMIT))
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedState(f"{states[-1]} is damaged ({first_line(e)})") from None


class DamagedState(UserError):
    """Tune's experiment state is there but cannot be read."""


def read_results(trial: Location) -> list[dict]:
    """The results a trial reported, one per epoch (a restarted trial reports the epochs after its checkpoint
    again); none when it never reported."""
    file = trial / RESULTS_FILE
    if not file.is_file():
        return []
    results = []
    for line in file.read_bytes(LOG_LIMIT).decode(errors="replace").splitlines():
        if result := whole_result(line):
            results.append(result)
    return results


def whole_result(line: str) -> dict | None:
    """A result line as JSON. A full disk can cut a line short, and a resumed trial then appends its next result to
    that piece: the whole result at its end is kept, the piece dropped."""
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(line) if c == "{"):
        try:
            result, end = decoder.raw_decode(line, start)
        except ValueError:
            continue
        # Past the line's start, an object that ends the line may be a nested one (the config) of a cut result.
        if not line[end:].strip() and isinstance(result, dict) and (start == 0 or "training_iteration" in result):
            return result
    return None
