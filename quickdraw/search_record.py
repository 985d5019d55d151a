"""search.json, the record of a search that its experiment folder keeps: the settings it ran with (its SearchConfig,
space included), where its split is stored, each trial's resources, what it ran on, and, once the driver ends, what
the trials' precision resolved to. Written and read here only, as plain JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from quickdraw import strict_json
from quickdraw.catalogue import HYPERPARAMETER
from quickdraw.config import DataConfig, SearchConfig, SplitSizes
from quickdraw.errors import UserError
from quickdraw.space import merge, parse_space
from quickdraw.storage import Location, first_line

SEARCH_FILE = "search.json"
CONFIG_HASH_KEY = "config_sha256"  # the config's hash, to tell an edited search.json from the one the search wrote


@dataclass(frozen=True)
class SearchRecord:
    config: SearchConfig
    dataset: str  # the stored split's folder, <storage>/datasets/<fingerprint> (a path or URI)
    resources: dict  # each trial's {"cpu": ..., "gpu": ...}
    run: dict  # the command, its start, the code's commit, package versions and hardware (quickdraw.provenance)
    ran: dict = field(default_factory=dict)  # {"bf16 on cpu": 15}: how many trials ran in which precision, where

    def write(self, experiment: Location) -> None:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        config = config_json(self.config)
        record = {**fields, "config": config, CONFIG_HASH_KEY: config_hash(config)}
        (experiment / SEARCH_FILE).write_text(strict_json.dumps(record, indent=2) + "\n")

    @classmethod
    def read(cls, experiment: Location) -> SearchRecord:
        """The record; a UserError that names the file when it is missing, damaged or its config was edited."""
        file = experiment / SEARCH_FILE
        try:
            record = json.loads(file.read_text())
            recorded_hash = record.pop(CONFIG_HASH_KEY, None)  # none in a search.json written before it was kept
            edited = recorded_hash is not None and recorded_hash != config_hash(record["config"])
            read = cls(**{**record, "config": config_of_json(record["config"])})
        except FileNotFoundError:
            raise UserError(f"{experiment}: no {SEARCH_FILE} there; give the folder <storage>/<name> of a search") \
                from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, UserError) as e:
            raise UserError(f"{file} is damaged ({type(e).__name__}: {first_line(e)})") from None
        if edited:
            raise UserError(f"{file}: its config was edited after the search wrote it (its SHA-256 is not the "
                            f"{CONFIG_HASH_KEY} beside it), and Ray Tune goes on with the settings it saved, not the "
                            "edited ones: put back the original, or run a new search with the settings you want")
        return read


def config_hash(config: dict) -> str:
    """The SHA-256 of a config as search.json holds it, however the file is laid out (keys sorted, no spaces)."""
    return hashlib.sha256(strict_json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_json(config: SearchConfig) -> dict:
    """The config as JSON's types: the space as a space file writes it (quickdraw.space)."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    data = dataclasses.asdict(config.data) | {"data_dir": str(config.data.data_dir)}
    return settings | {"data": data, "space": {d.name: d.as_spec() for d in config.space}}


def config_of_json(settings: dict) -> SearchConfig:
    data = settings["data"]
    data = DataConfig(**data | {"data_dir": Path(data["data_dir"]), "classes": tuple(data["classes"]),
                                "split": SplitSizes(**data["split"])})
    space = parse_space(settings["space"], f"{SEARCH_FILE} space")
    if sorted(d.name for d in space) != sorted(HYPERPARAMETER):
        raise ValueError(f"its space names {', '.join(d.name for d in space)}, not every hyperparameter")
    return SearchConfig(**settings | {"data": data, "space": merge(space)})  # in the catalogue's order
